"""Every tutorial runs as a script in fast mode, and keeps the tutorial format.

Discovery: every `tutorials/[0-9][0-9]_*.py` is one test, named by its file, so a new tutorial is tested the moment
it exists. Each runs the way a reader runs it, `python tutorials/NN_name.py`, in a subprocess with

    MINIFT_FAST=1                    tiny sizes, few steps (a tutorial must finish in well under a minute)
    MPLBACKEND=Agg                   no display; `show()` saves the PNG and closes the figure
    MINIFT_TUTORIAL_OUT=<tmp_path>   figures and training runs go to pytest's temporary folder
    PYTHONDONTWRITEBYTECODE=1        no __pycache__ beside the tutorials
    cwd=<tmp_path>                   anything written to a relative path lands there too
    OPENBLAS_NUM_THREADS=1 (and OMP_, MKL_), unless already set: fast mode's matrices are too small to gain from
                                     BLAS threads, and on a busy machine (the rest of the suite running beside it)
                                     OpenBLAS's spinning threads made one tutorial 6x slower (29 s instead of 5 s)

so nothing a tutorial writes touches the repository. Exit status 0 is the test: every check cell asserts.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 120          # per tutorial, in fast mode; they take seconds on 2 CPU cores
TAIL = 4000              # characters of output shown when one fails


def _tail(text: str) -> str:
    return text if len(text) <= TAIL else "…" + text[-TAIL:]


def test_tutorials_are_found():
    assert TUTORIALS, f"no tutorials/[0-9][0-9]_*.py under {ROOT}"


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs_in_fast_mode(path, tmp_path):
    pytest.importorskip("matplotlib", reason="the tutorials plot with matplotlib: pip install -e '.[plot]'")
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **os.environ,
           "MINIFT_FAST": "1", "MPLBACKEND": "Agg", "MINIFT_TUTORIAL_OUT": str(tmp_path / "out"),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{path.name} did not finish within {TIMEOUT_S} s in fast mode\n"
                    f"--- stdout ---\n{_tail(out)}\n--- stderr ---\n{_tail(err)}")
    assert done.returncode == 0, (f"{path.name} exited with status {done.returncode}\n"
                                  f"--- stdout ---\n{_tail(done.stdout)}\n--- stderr ---\n{_tail(done.stderr)}")


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_format(path):
    """The shape every tutorial shares (tutorials/README.md, "Writing a tutorial")."""
    text = path.read_text(encoding="utf-8")
    cells = re.split(r"^# %%", text, flags=re.M)
    assert text.startswith("# ---\n# jupyter:"), "start with the jupytext header (format_name: percent)"
    assert len(cells) > 3 and cells[1].startswith(" [markdown]"), "the first cell is a markdown header"
    header = cells[1]
    for needed in ("**Article:**", "**Time:**", "You will learn"):
        assert needed in header, f"the header cell must say {needed}"
    assert re.search(r"[\u4e00-\u9fff]", header), "quote the article's Chinese section title in the header"
    assert re.search(r"^# ## 1\. ", text, flags=re.M), "numbered sections: '## 1. ...'"
    assert re.search(r"^# ## Exercises", text, flags=re.M), "end with '## Exercises'"
    assert "$" in text, "state the formulas (LaTeX in markdown cells)"
    assert "assert " in text, "check cells assert on computed values"
