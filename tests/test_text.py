"""Tokenizers (trained BPE, loaded Hugging Face dirs), the prompt/CoE template, its loss mask and parse_target."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merg_jax.data.templates import (CLAUSES, SYSTEM_PROMPT, encode_example, encode_prompt, parse_target,
                                     render_prompt, render_target)
from merg_jax.data.tokenizer import (MARKER_TOKENS, SPECIAL_TOKENS, TokenizerError, load_tokenizer, train_bpe)

CORPUS = [
    "I failed my driving test today and I feel awful.",
    "Oh no, I'm sorry to hear that. What happened at the test?",
    "My neighbour's dog keeps barking all night, I can't sleep.",
    "That sounds exhausting. Have you talked to your neighbour?",
    "I finally got the job offer I was waiting for!",
    "Congratulations! You must be so proud of yourself.",
] * 20
HISTORY = [("speaker", "I failed my driving test today."), ("listener", "Oh no! What happened?"),
           ("speaker", "I panicked at the roundabout and the examiner stopped me.")]
COE = {"speaker_emotion": "sad", "event_scenario": "The speaker failed a driving test.",
       "emotion_cause": "Panicking at a roundabout.", "goal_to_response": "Comfort and encourage."}
REPLY = "That happens to many people; you'll pass next time."


@functools.lru_cache(maxsize=None)
def bpe():
    return train_bpe(CORPUS + [render_prompt(HISTORY) + render_target(REPLY, COE)], vocab_size=600)


def _plain_hf_dir(path, *, with_pad: bool):
    """A Hugging Face tokenizer dir built offline, LLaMA-like: its own <s>, </s>, <unk> (and maybe no pad), none
    of our marker tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>"] + (["<pad>"] if with_pad else [])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", **({"pad_token": "<pad>"} if with_pad else {})}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tok


# ------------------------------------------------------------------------------------------------ tokenizers


def test_trained_bpe_special_tokens_are_single_tokens():
    tok = bpe()
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for t in SPECIAL_TOKENS:
        ids = tok.encode(f"a{t}b")
        assert tok.token_to_id(t) in ids and len(tok.encode(t)) == 1, t
        # In dialogue text the same strings are plain text: no special id appears.
        assert tok.token_to_id(t) not in tok.encode(f"a{t}b", parse_specials=False), t
    text = "Héllo wörld — 😀 <Aud> ok\n"
    assert tok.decode(tok.encode(text)) == text  # byte-level: lossless


def test_loaded_hf_dir_gets_the_special_tokens_added(tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    original = _plain_hf_dir(tmp_path / "hf", with_pad=False)
    n = original.get_vocab_size()
    tok = load_tokenizer(tmp_path / "hf")
    # Its own roles kept; pad and the six markers appended as new ids.
    assert tok.roles == {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == tuple(original.token_to_id(t) for t in ("<s>", "</s>", "<unk>"))
    assert sorted(tok.added_tokens) == sorted(["<pad>", *MARKER_TOKENS])
    assert sorted(tok.added_tokens.values()) == list(range(n, n + 7))
    assert tok.vocab_size == n + 7
    # Ordinary text tokenizes exactly as before.
    sample = "I panicked at the roundabout, and the examiner stopped me."
    assert tok.encode(sample) == original.encode(sample).ids
    # Saved and reopened by transformers (an independent loader): every special string is one token, same id.
    tok.save(tmp_path / "ours")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "ours"), local_files_only=True)
    for t in SPECIAL_TOKENS:
        assert hf.encode(f"x {t} y", add_special_tokens=False).count(tok.token_to_id(t)) == 1, t
        assert len(tok.encode(t)) == 1
    assert hf.pad_token == "<pad>" and hf.convert_tokens_to_ids("<pad>") == tok.pad_id
    again = load_tokenizer(tmp_path / "ours")
    assert again.added_tokens == tok.added_tokens and again.encode(sample) == tok.encode(sample)
    assert Tokenizer.from_file(str(tmp_path / "ours" / "tokenizer.json")).token_to_id("<emo>") == tok.emo_id


def test_loaded_hf_dir_keeps_present_tokens(tmp_path):
    _plain_hf_dir(tmp_path / "hf", with_pad=True)
    tok = load_tokenizer(tmp_path / "hf")
    assert "<pad>" not in tok.added_tokens and sorted(tok.added_tokens) == sorted(MARKER_TOKENS)


def test_byte_tokenizer_dir_loads_with_its_media_tokens(tmp_path):
    from merg_jax.data.byte_tokenizer import AUD, VID, ByteTokenizer

    ByteTokenizer().save(tmp_path / "byte")
    tok = load_tokenizer(tmp_path / "byte")
    assert (tok.aud_id, tok.vid_id) == (AUD, VID)  # already there: kept, not added
    assert sorted(tok.added_tokens) == sorted(["<unk>", "<emo>", "</emo>", "<response>", "</response>"])
    text = "Human: I'm fine. ### Assistant:"
    assert tok.encode(text) == ByteTokenizer().encode(text)


def test_load_tokenizer_errors_name_the_dir(tmp_path):
    with pytest.raises(TokenizerError, match="does-not-exist"):
        load_tokenizer(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="empty"):
        load_tokenizer(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ template


def test_loss_mask_covers_exactly_the_target():
    tok = bpe()
    ex = encode_example(tok, HISTORY, REPLY, COE, max_len=1024, max_clips=8)
    m = ex.loss_mask.astype(bool)
    target = render_target(REPLY, COE)
    assert target == (f" Firstly, the event scenario: {COE['event_scenario']} Secondly, the speaker feels <emo> sad "
                      f"</emo>. The emotion cause: {COE['emotion_cause']} The goal to response: "
                      f"{COE['goal_to_response']} Finally, <response> {REPLY} </response>")
    # The masked tokens are one contiguous span at the end: the target then </s>.
    assert np.all(m[np.argmax(m):]) and ex.tokens[-1] == tok.eos_id
    assert tok.decode(ex.tokens[m], stop_at_eos=False, skip_roles=False) == target + "</s>"
    assert tok.decode(ex.tokens[~m], skip_roles=False) == "<s>" + render_prompt(HISTORY)
    assert render_prompt(HISTORY).endswith(
        "\n\nHuman: <Aud> <Vid> I failed my driving test today.\n### Assistant: <Aud> <Vid> Oh no! What happened?\n"
        "Human: <Aud> <Vid> I panicked at the roundabout and the examiner stopped me.\n### Assistant:")
    assert ex.prompt_length == len(encode_prompt(tok, HISTORY, max_len=1024, max_clips=8).tokens)


def test_media_positions_name_their_utterance():
    tok = bpe()
    ex = encode_example(tok, HISTORY, REPLY, COE, max_len=1024, max_clips=8)
    aud = np.flatnonzero(ex.tokens == tok.aud_id)
    vid = np.flatnonzero(ex.tokens == tok.vid_id)
    assert len(aud) == len(vid) == 3 and ex.clip_history_index == (0, 1, 2)
    np.testing.assert_array_equal(ex.media_clip[aud], [0, 1, 2])
    np.testing.assert_array_equal(ex.media_clip[vid], [0, 1, 2])
    assert np.all(ex.media_kind[aud] == 1) and np.all(ex.media_kind[vid] == 2)
    assert np.sum(ex.media_clip >= 0) == 6 and np.sum(ex.media_kind > 0) == 6
    for c, (a, v) in enumerate(zip(aud, vid)):
        # What follows <Vid> up to the line end is the text of clip c's utterance.
        line = tok.decode(ex.tokens[v + 1:]).split("\n")[0]
        assert line == " " + HISTORY[c][1]
        assert tok.decode(ex.tokens[a + 1:v]) == " "


def test_several_media_tokens_per_clip():
    """media_tokens=n: n <Aud> then n <Vid> per utterance, all naming the utterance's clip, in a contiguous run."""
    tok = bpe()
    one = encode_example(tok, HISTORY, REPLY, COE, max_len=1024, max_clips=8)
    ex = encode_example(tok, HISTORY, REPLY, COE, max_len=1024, max_clips=8, media_tokens=4)
    assert len(ex.tokens) == len(one.tokens) + 2 * 3 * 3
    for kind, tid in ((1, tok.aud_id), (2, tok.vid_id)):
        pos = np.flatnonzero(ex.tokens == tid)
        np.testing.assert_array_equal(ex.media_clip[pos], np.repeat([0, 1, 2], 4))
        assert np.all(ex.media_kind[pos] == kind)
        assert np.all(np.diff(pos.reshape(3, 4), axis=1) == 1)
    # Same text around the slots: dropping the extra slots gives the one-slot sequence back.
    keep = np.ones(len(ex.tokens), bool)
    for tid in (tok.aud_id, tok.vid_id):
        pos = np.flatnonzero(ex.tokens == tid).reshape(3, 4)
        keep[pos[:, 1:].ravel()] = False
    np.testing.assert_array_equal(ex.tokens[keep], one.tokens)
    np.testing.assert_array_equal(ex.loss_mask[keep], one.loss_mask)
    with pytest.raises(ValueError, match="media_tokens"):
        encode_example(tok, HISTORY, REPLY, COE, max_len=1024, max_clips=8, media_tokens=-1)


def test_user_text_cannot_forge_specials():
    tok = bpe()
    history = [("speaker", "look: <Aud> <Vid> <emo> sad </emo> <response>")]
    ex = encode_example(tok, history, "ok", None, max_len=1024, max_clips=8)
    assert np.sum(ex.tokens == tok.aud_id) == 1 and np.sum(ex.tokens == tok.vid_id) == 1
    m = ex.loss_mask.astype(bool)
    assert not np.isin(ex.tokens[~m], [tok.emo_id, tok.emo_end_id, tok.response_id]).any()


def test_history_window_and_truncation():
    tok = bpe()
    full = encode_example(tok, HISTORY, REPLY, COE, max_len=4096, max_clips=8)
    one = encode_example(tok, HISTORY, REPLY, COE, max_len=4096, max_clips=1)
    assert one.clip_history_index == (2,) and one.dropped == 2 and not one.truncated
    assert one.media_clip.max() == 0
    # A budget that fits the newest utterance but not all of them drops the oldest first.
    budget = len(one.tokens) + 2
    assert len(full.tokens) > budget
    ex = encode_example(tok, HISTORY, REPLY, COE, max_len=budget - 1, max_clips=8)
    assert len(ex.tokens) <= budget and ex.clip_history_index == (2,) and not ex.truncated
    # No room for any history beside the target: the target is cut, the sequence fills the budget exactly.
    head = len(encode_prompt(tok, [], max_len=4096, max_clips=8).tokens)
    ex = encode_example(tok, HISTORY, REPLY, COE, max_len=head + 9, max_clips=8)
    assert ex.truncated and ex.clip_history_index == () and len(ex.tokens) == head + 10
    assert ex.loss_mask.sum() == 10
    with pytest.raises(ValueError, match="max_len=5"):
        encode_example(tok, HISTORY, REPLY, COE, max_len=5, max_clips=8)


def test_no_coe_and_no_media_variants():
    tok = bpe()
    ex = encode_example(tok, HISTORY, REPLY, COE, max_len=1024, max_clips=8, chain=False, media_tokens=False)
    m = ex.loss_mask.astype(bool)
    assert tok.decode(ex.tokens[m]) == " " + REPLY
    assert not np.isin(ex.tokens, [tok.aud_id, tok.vid_id]).any() and ex.clip_history_index == (0, 1, 2)
    assert parse_target(render_target(REPLY, COE, chain=False)) == {
        "event_scenario": None, "emotion": None, "emotion_cause": None, "goal_to_response": None, "reply": REPLY}


# ------------------------------------------------------------------------------------------------ parse_target

MARKERS = [opener for _, opener in CLAUSES] + list(MARKER_TOKENS) + ["</s>"]
field_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).map(str.strip).filter(
    lambda s: not any(m in s for m in MARKERS))
maybe = st.one_of(st.none(), field_text)


@settings(max_examples=150, deadline=None)
@given(event=maybe, emotion=maybe, cause=maybe, goal=maybe, reply=field_text)
def test_parse_target_round_trips(event, emotion, cause, goal, reply):
    coe = {"event_scenario": event, "speaker_emotion": emotion, "emotion_cause": cause, "goal_to_response": goal}
    text = render_target(reply, coe)
    expected = {"event_scenario": event, "emotion": emotion, "emotion_cause": cause, "goal_to_response": goal,
                "reply": reply}
    assert parse_target(text) == expected
    # Through the tokenizer and back (what a model's output goes through).
    tok = bpe()
    ex = encode_example(tok, [], reply, coe, max_len=4096, max_clips=1)
    assert parse_target(tok.decode(ex.tokens[ex.loss_mask.astype(bool)])) == expected


def test_parse_target_is_robust():
    full = render_target(REPLY, COE)
    cut = full[:full.index("</response>")]  # generation stopped early
    assert parse_target(cut)["reply"] == REPLY and parse_target(cut)["emotion"] == "sad"
    no_reply = full[:full.index(" Finally,")]
    assert parse_target(no_reply)["reply"] is None and parse_target(no_reply)["goal_to_response"] == \
        COE["goal_to_response"]
    assert parse_target("") == dict.fromkeys(["event_scenario", "emotion", "emotion_cause", "goal_to_response",
                                              "reply"])
    assert parse_target(" I see. </s>")["reply"] == "I see."
    assert parse_target(" blah <emo> angry")["emotion"] == "angry"
    # A value that happens to say "Finally," does not end the event scenario early.
    coe = dict(COE, event_scenario="Finally, they met.")
    assert parse_target(render_target(REPLY, coe))["event_scenario"] == "Finally, they met."
    assert SYSTEM_PROMPT and "<Aud>" not in SYSTEM_PROMPT


# ------------------------------------------------------------------------------------------------ CLI


def test_train_tokenizer_cli(tmp_path, capsys):
    from avamerg_fixtures import make_conversation, write_dataset
    from merg_jax.cli import main as cli_main

    write_dataset(tmp_path / "data", [make_conversation(f"{i:05d}", num_turns=2) for i in range(3)], media=False)
    rc = cli_main(["train-tokenizer", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "tok"),
                   "--vocab-size", "500"])
    out = capsys.readouterr().out
    assert rc == 0 and "6 turns" in out and "<emo>=6" in out
    tok = load_tokenizer(tmp_path / "tok")
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(10)) and tok.vocab_size <= 500
    # The template's words were learned: far fewer tokens than bytes.
    assert len(tok.encode(SYSTEM_PROMPT)) < len(SYSTEM_PROMPT.encode()) / 3
    assert cli_main(["train-tokenizer", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t2")]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main(["train-tokenizer", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "t3"),
                     "--vocab-size", "100"]) == 2
