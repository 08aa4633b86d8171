"""colab/merg_jax_demo.ipynb executes under nbclient (a real Jupyter kernel), cell by cell, on the shrunk tiny recipe
whose stages are already trained (its train cell resumes them), with fake real-weights files for its last cell; any
cell error fails the test."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import pytest

from tests.trainer_testing import SMALL

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_notebook_executes(trained_run, mini_root, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    run, _ = trained_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    vicuna = tmp_path / "vicuna"
    vicuna.mkdir()
    (vicuna / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                                                    "num_hidden_layers": 32, "vocab_size": 32000}))
    (tmp_path / "imagebind_huge.pth").write_bytes(b"\0" * 1000)
    for key, value in {"MERG_NOTEBOOK_OUT": out, "MERG_NOTEBOOK_DATA": mini_root, "MERG_NOTEBOOK_DIALOGUES": 8,
                       "MERG_NOTEBOOK_QUICK": 1,
                       "MERG_NOTEBOOK_OVERRIDES": json.dumps([o.removeprefix("--") for o in SMALL]),
                       "MERG_VICUNA_DIR": vicuna, "MERG_IMAGEBIND": tmp_path / "imagebind_huge.pth",
                       "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}.items():
        monkeypatch.setenv(key, str(value))
    nb = nbformat.read(REPO_ROOT / "colab" / "merg_jax_demo.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}}).execute()

    def text(cell) -> str:
        return "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in cell.get("outputs", []))

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.outputs)
    assert "48.51" in text(code[4])  # the metrics table beside the paper's
    answer = text(code[5])
    assert '"response"' in answer and "<audio" in answer and "video/mp4" in answer  # played inline
    reply = json.loads((out / "replies" / "notebook" / "reply.json").read_text())
    asked = json.loads((out / "my_dialogue.json").read_text())["turns"][0]["dialogue_history"][0]["utterance"]
    assert "house feels empty" in asked and reply["conversation_id"] == "demo_written"  # the notebook's own dialogue
    assert reply["video"]["portrait"] == "--portrait" and reply["speech"]["style"]["emotion7"] == reply["emotion7"]
    assert "32 layers, hidden 4096" in text(code[6]) and "--config.init.llm=" in text(code[6])
