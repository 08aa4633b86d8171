"""colab/quickstart.ipynb runs top to bottom (its code cells, in order, in one namespace)."""

import json
import os
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_notebook_runs(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    nb = json.loads((REPO_ROOT / "colab" / "quickstart.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    diff = re.search(r"max \|logits difference\| after the round trip: ([\d.e+-]+)", out)
    assert diff and float(diff.group(1)) < 1e-4, out  # sharded vs one-device sums: rounding only
    history = namespace["history"]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert os.getcwd() == str(REPO_ROOT)
