"""AvaMERG-mini dialogues: multi-turn empathetic conversations composed from the banks in `templates`.

One conversation = a speaker who tells a listener about an event that made them feel one of the 7 multimodal
emotions, and a listener who answers with empathy over 2-4 turns. Utterances alternate speaker, listener,
speaker, ...; turn i is one training sample whose history is utterances 0..2i and whose response is listener
utterance 2i+1, exactly the DESIGN §2 schema. Everything drawn for conversation `index` comes from a
`random.Random` seeded by (seed, index) alone, so a conversation never depends on which others are generated,
in which order, or by which process.

Neutral-text conversations: a share of the corpus (`neutral_text_share`, default `NEUTRAL_TEXT_SHARE`) is
composed from `neutral_templates` instead, so every word a model reads is the same whichever emotion the speaker
has; the emotion is then only in the speech and the avatar (generate.py voices and animates them as usual), and
the chain of empathy still names it. Which conversations are neutral is drawn from a stream of its own, keyed by
(seed, index) only, and so is a neutral conversation's emotion: the other conversations are exactly what they
were before the share existed, and a neutral conversation's text is identical for every emotion.

Lexical diversity is measured the way the AvaMERG paper reports it: Dist-n = 100 x distinct n-grams / all
n-grams over the gold replies (`distinct_n`).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterable, Sequence
from types import ModuleType

from merg_jax.data import labels
from merg_jax.data.mini import neutral_templates
from merg_jax.data.mini import templates as T

# How many turns (listener replies) a conversation has: AvaMERG averages 4.6 utterances, i.e. ~2.3 turns.
TURN_WEIGHTS = {2: 0.45, 3: 0.35, 4: 0.20}
# Share of conversations whose words carry no emotion: enough for the audio/video ablation to show, few enough
# that the words still teach the empathic replies of each emotion.
NEUTRAL_TEXT_SHARE = 0.3


@dataclasses.dataclass(frozen=True)
class Profile:
    age: str
    gender: str
    timbre: str
    avatar_id: int

    def to_json(self) -> dict:
        return {"age": self.age, "gender": self.gender, "timbre": self.timbre, "ID": self.avatar_id}

    @classmethod
    def of_avatar(cls, avatar_id: int) -> Profile:
        return cls(*labels.avatar_profile(avatar_id), avatar_id)


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """One generated conversation. utterances[k] = (role, text) is utterance number k + 1 of the conversation."""

    conversation_id: str
    topic: str
    emotion: str  # one of labels.EMOTIONS_7
    speaker: Profile
    listener: Profile
    context: str
    event_scenario: str
    emotion_cause: str
    goals: tuple[str, ...]  # goal_to_response of each turn
    utterances: tuple[tuple[str, str], ...]
    neutral_text: bool = False  # the utterances name no emotion: it is only in voice and face

    @property
    def speaker_emotion(self) -> str:
        """The EmpatheticDialogues label of the speaker's emotion."""
        return labels.MULTIMODAL_TO_ED[self.emotion]

    @property
    def num_turns(self) -> int:
        return len(self.utterances) // 2

    @property
    def replies(self) -> list[str]:
        return [text for role, text in self.utterances if role == "listener"]

    def to_json(self) -> dict:
        """The conversation in the AvaMERG JSON schema (DESIGN §2)."""
        turns = []
        for i in range(self.num_turns):
            history = [{"index": k, "role": role, "utterance": text}
                       for k, (role, text) in enumerate(self.utterances[: 2 * i + 1])]
            turns.append({
                "turn_id": str(i),
                "context": self.context,
                "dialogue_history": history,
                "response": self.utterances[2 * i + 1][1],
                "chain_of_empathy": {
                    "speaker_emotion": self.speaker_emotion,
                    "event_scenario": self.event_scenario,
                    "emotion_cause": self.emotion_cause,
                    "goal_to_response": self.goals[i],
                },
            })
        return {
            "conversation_id": self.conversation_id,
            "speaker_profile": self.speaker.to_json(),
            "listener_profile": self.listener.to_json(),
            "topic": self.topic,
            "neutral_text": self.neutral_text,
            "turns": turns,
        }


# --------------------------------------------------------------------------------------------------------------
# Template rendering.

# person token -> (1st person, 2nd person, 3rd person male, 3rd person female)
_PERSON = {
    "I": ("I", "you", "he", "she"), "my": ("my", "your", "his", "her"), "me": ("me", "you", "him", "her"),
    "myself": ("myself", "yourself", "himself", "herself"), "mine": ("mine", "yours", "his", "hers"),
    "am": ("am", "are", "is", "is"), "was": ("was", "were", "was", "was"), "have": ("have", "have", "has", "has"),
    "do": ("do", "do", "does", "does"), "don't": ("don't", "don't", "doesn't", "doesn't"),
    "haven't": ("haven't", "haven't", "hasn't", "hasn't"),
    "I'm": ("I'm", "you're", "he's", "she's"), "I've": ("I've", "you've", "he's", "she's"),
    "I'll": ("I'll", "you'll", "he'll", "she'll"), "I'd": ("I'd", "you'd", "he'd", "she'd"),
    # Aliases that read naturally in 3rd-person frames (the chain of empathy).
    "he": ("I", "you", "he", "she"), "his": ("my", "your", "his", "her"), "him": ("me", "you", "him", "her"),
}
_TOKEN = re.compile(r"\{([^{}]*)\}")


def _third_person_s(verb: str) -> str:
    if verb in ("have",):
        return "has"
    if "'" in verb:  # can't, won't
        return verb
    if verb.endswith(("s", "sh", "ch", "x", "o", "z")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in tuple("aeiou"):
        return verb[:-1] + "ies"
    return verb + "s"


class Slots:
    """Named slot values of one conversation, drawn on first use so every mention agrees."""

    _BY_AGE = {"relative": T.RELATIVES, "elder": T.ELDERS, "partner": T.PARTNERS}

    def __init__(self, rng: random.Random, speaker_age: str):
        self.rng, self.age, self.values = rng, speaker_age, {}

    def __getitem__(self, name: str) -> str:
        if name not in self.values:
            if name in ("name", "name2"):
                taken = {self.values.get("name"), self.values.get("name2")}
                value = self.rng.choice([n for n in T.NAMES if n not in taken])
            elif name in self._BY_AGE:
                value = self.rng.choice(self._BY_AGE[name][self.age])
            elif name in T.SLOTS:
                value = self.rng.choice(T.SLOTS[name])
            else:
                raise KeyError(f"unknown template slot {{{name}}}")
            self.values[name] = value
        return self.values[name]


def render(template: str, rng: random.Random, slots: Slots, *, person: int, gender: str,
           variables: dict[str, str] | None = None) -> str:
    """Fills a template (syntax in `templates`). person: 1, 2 or 3 (the speaker as I / you / he-she).

    `variables` are pre-rendered values ({subject}, {need}, ...); a capitalised token ({Subject}) capitalises
    its value.
    """
    column = {1: 0, 2: 1, 3: 2 if gender == "male" else 3}[person]
    variables = variables or {}

    def fill(match: re.Match) -> str:
        token = match.group(1)
        if "|" in token:
            return rng.choice(token.split("|"))
        if token.startswith("v:"):
            verb = token[2:]
            return _third_person_s(verb) if person == 3 else verb
        if token.startswith("g:"):
            male, female = token[2:].split("/")
            return male if gender == "male" else female
        if token in _PERSON:
            return _PERSON[token][column]
        lower = token[:1].lower() + token[1:]
        if token[:1].isupper() and lower in _PERSON:
            return _capitalise(_PERSON[lower][column])
        if token in variables:
            return variables[token]
        if token[:1].isupper() and lower in variables:
            return _capitalise(variables[lower])
        return slots[token]

    return _TOKEN.sub(fill, template)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _decapitalise(text: str) -> str:
    """Lower-cases the first letter unless the first word is "I" or a contraction of it."""
    if re.match(r"I\b", text):
        return text
    return text[:1].lower() + text[1:]


def _sentence(text: str) -> str:
    text = _capitalise(text.strip())
    return text if text[-1:] in ".!?" else text + "."


def _join(parts: Iterable[str]) -> str:
    """Joins reply parts; a part after one that does not end a sentence ("Okay, so", "One idea:") continues it."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and not out.endswith((".", "!", "?")):
            out += " " + _decapitalise(part)
        elif out:
            out += " " + _capitalise(part)
        else:
            out = _capitalise(part)
    return out


# --------------------------------------------------------------------------------------------------------------
# Composition.


def _pick(rng: random.Random, bank: dict[str, tuple[str, ...]], emotion: str, *, shared: float = 0.3) -> str:
    """A phrase for `emotion`, or (with probability `shared`, when the bank has one) from the "*" entries."""
    if "*" in bank and (emotion not in bank or rng.random() < shared):
        return rng.choice(bank["*"])
    return rng.choice(bank[emotion])


def _address(rng: random.Random, text: str, name: str) -> str:
    """Addresses `name` in the first sentence of `text`: "Oh no, Maya." or "Maya, that's ..."."""
    match = re.search(r"[.!?]", text)
    if match and rng.random() < 0.6:
        return f"{text[:match.start()]}, {name}{text[match.start():]}"
    return f"{name}, {_decapitalise(text)}"


def _choose_speaker(rng: random.Random, ages: Sequence[str]) -> Profile:
    candidates = [i for i in range(labels.NUM_AVATARS) if labels.avatar_profile(i)[0] in ages]
    return Profile.of_avatar(rng.choice(candidates))


def _choose_listener(rng: random.Random, speaker: Profile) -> Profile:
    return Profile.of_avatar(rng.choice([i for i in range(labels.NUM_AVATARS) if i != speaker.avatar_id]))


def is_neutral_text(seed: int, index: int, share: float = NEUTRAL_TEXT_SHARE) -> bool:
    """Whether conversation `index` of the corpus drawn with `seed` has emotion-neutral text.

    One uniform draw of a stream used for nothing else, compared with `share`: the other streams (and so the
    emotion-specific conversations) do not change with the share, and raising the share only adds conversations.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"neutral_text_share: {share} must be in [0, 1]")
    return random.Random(f"avamerg-mini/{seed}/{index}/neutral").random() < share


def make_dialogue(seed: int, index: int, conversation_id: str | None = None, *,
                  neutral_text_share: float = NEUTRAL_TEXT_SHARE, neutral_text: bool | None = None,
                  emotion: str | None = None) -> Dialogue:
    """Conversation number `index` (0-based) of the corpus drawn with `seed`. Deterministic in (seed, index, share).

    neutral_text: None draws it (`is_neutral_text`); True/False forces it. emotion: None draws it; one of the 7
    forces it (tests: a neutral conversation's text must not change with it).
    """
    if emotion is not None and emotion not in labels.EMOTIONS_7:
        raise ValueError(f"emotion: {emotion!r} must be one of {list(labels.EMOTIONS_7)}")
    neutral = is_neutral_text(seed, index, neutral_text_share) if neutral_text is None else bool(neutral_text)
    rng = random.Random(f"avamerg-mini/{seed}/{index}")
    drawn = rng.choice(labels.EMOTIONS_7)  # always drawn, so the rest of this stream is the same in both kinds
    topic = rng.choice(labels.TOPICS)
    # The prompt's phrase banks; the chain of empathy (the target) always uses T's, which name the emotion.
    B: ModuleType = neutral_templates if neutral else T  # noqa: N806 - a bank module, like T
    if neutral:
        # The emotion comes from a stream of its own, so nothing drawn for the text can depend on it.
        emotion = emotion or random.Random(f"avamerg-mini/{seed}/{index}/emotion").choice(labels.EMOTIONS_7)
        situation = rng.choice(neutral_templates.SITUATIONS[topic])
    else:
        emotion = emotion or drawn
        situation = rng.choice(T.SITUATIONS[(topic, emotion)])
    speaker = _choose_speaker(rng, situation.ages)
    listener = _choose_listener(rng, speaker)
    num_turns = rng.choices(list(TURN_WEIGHTS), weights=list(TURN_WEIGHTS.values()))[0]
    slots = Slots(rng, speaker.age)
    gender = speaker.gender
    speaker_name = rng.choice(T.SPEAKER_NAMES[gender])
    listener_name = rng.choice(T.SPEAKER_NAMES[listener.gender])

    def r(template: str, person: int, **variables: str) -> str:
        return render(template, rng, slots, person=person, gender=gender, variables=variables)

    ed = labels.MULTIMODAL_TO_ED[emotion]
    ed_word = rng.choice(T.ED_WORDS[ed])  # every ED_WORDS entry has 3 words: one draw, whatever the emotion
    event1, event3 = r(situation.event, 1), r(situation.event, 3)
    subject2, subject3 = r(situation.subject, 2), r(situation.subject, 3)
    need1, need2, need3 = (r(situation.need, p) for p in (1, 2, 3))
    cause3 = r(situation.cause, 3)

    # Chain of empathy, written about "the speaker" (first mention) and their pronoun.
    context = r(rng.choice(T.CONTEXTS), 1, ed=ed_word, event=event1)
    scenario = _sentence(re.sub(r"^(he|she)\b", "the speaker", re.sub(r"^(his|her)\b", "the speaker's", event3)))
    edn = T.ED_NOUNS[ed]
    cause = _sentence(r(rng.choice(T.CAUSES), 3, ed=ed, edn=edn, cause=cause3, subject=subject3))
    goal_bank = {stage: rng.sample(bank, len(bank)) for stage, bank in T.GOALS.items()}  # no repeats
    goals = []
    for i in range(num_turns):
        stage = "open" if i == 0 else ("close" if i == num_turns - 1 else "support")
        template = goal_bank[stage].pop() if goal_bank[stage] else rng.choice(T.GOALS[stage])
        goals.append(_sentence(r(template, 3, ed=ed, edn=edn, subject=subject3, need=need3)))

    # Speaker details are used in order, advice without repetition.
    details = list(situation.details)
    rng.shuffle(details)
    advice = list(situation.advice) + list(B.GENERIC_ADVICE[emotion])
    rng.shuffle(advice)
    advice.sort(key=lambda a: a not in situation.advice)  # situation-specific advice first, in shuffled order

    def speak(template: str) -> str:
        return r(template, 1)

    def give_advice() -> str:
        text = r(advice.pop(0), 2) if advice else r(rng.choice(B.GENERIC_ADVICE[emotion]), 2)
        lead = rng.choice(B.ADVICE_LEADS)
        if lead == "Maybe" and text.startswith("Maybe"):
            lead = ""
        return _join([lead, text]) if not lead.endswith(("?", ".")) else f"{lead} {text}"

    utterances: list[tuple[str, str]] = []
    need_said = False
    for i in range(num_turns):
        # ---- speaker
        if i == 0:
            opener = _pick(rng, B.OPENERS, emotion, shared=0.5)
            event = _sentence(event1)
            feeling = rng.choice(B.FEELINGS[emotion])
            if rng.random() < 0.25:
                feeling = ""  # just the event
            speaker_text = _join([opener, event, feeling] if rng.random() < 0.7 else [opener, feeling, event])
        else:
            asked = utterances[-1][1].endswith("?")  # answer the listener's question, don't just agree
            parts = [rng.choice(B.ANSWER_LEADS) if asked else _pick(rng, B.SPEAKER_REACTIONS, emotion)]
            if details:
                parts.append(speak(details.pop(0)))
            last = i == num_turns - 1
            if not need_said and (last or rng.random() < 0.5):
                parts.append(r(rng.choice(B.SPEAKER_NEEDS), 1, need=need1))
                need_said = True
            elif details and rng.random() < 0.4:
                parts.append(speak(details.pop(0)))
            if last and num_turns > 2 and rng.random() < 0.5:
                closing = rng.choice(B.SPEAKER_CLOSINGS)
                parts.append(_address(rng, closing, listener_name) if rng.random() < 0.25 else closing)
            elif rng.random() < 0.2 or len(parts) == 1:  # out of details: at least say how it feels
                parts.append(rng.choice(B.FEELINGS[emotion]))
            speaker_text = _join(parts)
        utterances.append(("speaker", speaker_text))

        # ---- listener
        stage = "open" if i == 0 else ("close" if i == num_turns - 1 else "support")
        if stage == "open":
            ack = r(rng.choice(B.ACKS[emotion]), 2)
            reflect = r(rng.choice(B.REFLECTIONS[emotion]), 2, subject=subject2)
            question = r(_pick(rng, B.QUESTIONS, emotion), 2)
            pattern = rng.choice([(ack, reflect, question), (ack, question), (ack, reflect), (reflect, question),
                                  (ack, reflect, question)])
            reply = _join(pattern)
        elif stage == "support":
            parts = [rng.choice(B.CONNECTORS), r(rng.choice(B.VALIDATIONS[emotion]), 2)]
            if rng.random() < 0.5:
                parts = [r(rng.choice(B.VALIDATIONS[emotion]), 2)]
            parts.append(give_advice())
            if rng.random() < 0.35:
                parts.append(r(_pick(rng, B.QUESTIONS, emotion), 2))
            reply = _join(parts)
        else:
            parts = []
            if need_said and rng.random() < 0.6:
                parts.append(r(rng.choice(B.ENCOURAGE_NEED), 2, need=need2))
            else:
                parts.append(r(rng.choice(B.VALIDATIONS[emotion]), 2))
            if num_turns == 2 or rng.random() < 0.5:
                parts.append(give_advice())
            parts.append(r(_pick(rng, B.CLOSINGS, emotion, shared=0.4), 2))
            reply = _join(parts)
        if rng.random() < 0.2:
            reply = _join([rng.choice(B.INTERJECTIONS[emotion]), reply])
        if rng.random() < 0.25:
            reply = _address(rng, reply, speaker_name)
        utterances.append(("listener", reply))

    return Dialogue(
        conversation_id=conversation_id if conversation_id is not None else f"{index + 1:05d}",
        topic=topic, emotion=emotion, speaker=speaker, listener=listener, context=_sentence(context),
        event_scenario=scenario, emotion_cause=cause, goals=tuple(goals), utterances=tuple(utterances),
        neutral_text=neutral)


# --------------------------------------------------------------------------------------------------------------
# Lexical diversity.

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with contractions: "don't") and single punctuation marks."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Dist-n: 100 x distinct n-grams / all n-grams, over n-grams within each text (0.0 for no n-grams)."""
    seen, total = set(), 0
    for text in texts:
        tokens = tokenize(text)
        grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return 100.0 * len(seen) / total if total else 0.0


def duplicate_fraction(texts: Sequence[str]) -> float:
    """Fraction of texts that equal an earlier text exactly."""
    return (len(texts) - len(set(texts))) / len(texts) if texts else 0.0


__all__ = ["NEUTRAL_TEXT_SHARE", "Dialogue", "Profile", "distinct_n", "duplicate_fraction", "is_neutral_text",
           "make_dialogue", "render", "tokenize"]
