"""Portability (issue 19): what a non-editable install packages, and progress shown in the form its reader can use
(a bar on a terminal, a few whole lines in a log, no warning in a notebook).

The rest of that issue is tested where its code is tested: BLAS threads through threadpoolctl (test_bench.py),
data_dir in an installed package (test_data.py), the adapter's model card and peft_version (test_lora.py,
test_peft_interop.py), config.json's dtype key (test_model.py). `.ci/run` installs the package non-editable into a
fresh virtual environment and runs `minift compare --quick` from outside the checkout.
"""
import io
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from minift.training.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parent.parent


# ---- packaging ---------------------------------------------------------------------------------------------------

def test_pyproject_packages_every_package_and_the_data_folder():
    """pyproject.toml lists its packages by hand (setuptools' find cannot add data/ as minift._data): every folder
    of minift/ with an __init__.py must be listed, or a non-editable install would lack it."""
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")
    setuptools = pytest.importorskip("setuptools")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = setuptools.find_packages(str(ROOT), include=["minift", "minift.*"])
    assert sorted(tool["packages"]) == sorted(code + ["minift._data"])
    assert tool["package-dir"] == {"minift._data": "data"}
    assert tool["package-data"]["minift._data"] == ["**/*"]
    assert "threadpoolctl" in " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


# ---- progress ----------------------------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


class KernelStream(io.StringIO):
    """Stands for ipykernel's OutStream, which a notebook shows (and which is not a terminal)."""


KernelStream.__module__ = "ipykernel.iostream"


def test_a_log_gets_a_line_at_every_tenth():
    log = io.StringIO()
    bar = progress_bar(range(300), total=300, desc="train", file=log)
    assert isinstance(bar, LineProgress)
    for step in bar:
        bar.set_postfix(loss=f"{3 - step / 100:.3f}", tok_s="1,000", refresh=False)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("train: 30/300 (10%), ") and lines[0].endswith("loss=2.710, tok_s=1,000")
    assert lines[-1].startswith("train: 300/300 (100%), ") and "0:00 left" in lines[-1]


def test_a_resumed_or_short_run_and_a_quiet_one():
    log = io.StringIO()
    for _ in progress_bar(range(11, 14), total=14, initial=11, desc="train", file=log):    # resumed at 11 of 14
        pass                                                                # a line every 2 steps (ceil of 1.4)
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == ["train: 12/14 (86%)",
                                                                           "train: 14/14 (100%)"]
    quiet = io.StringIO()
    assert list(progress_bar(range(5), total=5, file=quiet, disable=True)) == [0, 1, 2, 3, 4]
    assert quiet.getvalue() == ""


def test_a_terminal_gets_tqdm_and_a_notebook_gets_no_ipywidgets_warning(monkeypatch):
    from tqdm.std import tqdm
    term = Terminal()
    bar = progress_bar(range(3), total=3, desc="train", file=term)
    assert isinstance(bar, tqdm)
    list(bar)
    bar.close()
    assert "\r" in term.getvalue()                       # drawn in place
    import minift.training.progress
    real_find_spec = minift.training.progress.importlib.util.find_spec
    monkeypatch.setattr(minift.training.progress.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # tqdm.auto would warn "IProgress not found" here
        bar = progress_bar(range(3), total=3, file=KernelStream())
        assert type(bar) is tqdm
        bar.close()


def test_training_logged_to_a_file_is_a_handful_of_lines(tmp_path):
    """A real training run in a fresh process whose stderr is a file, as in `minift compare ... > log 2>&1`."""
    script = textwrap.dedent("""
        import numpy as np
        from minift import GPT, GPTConfig
        from minift.data.sources import LMSource
        from minift.training.train import TrainConfig, train
        ids = np.tile(np.arange(2, 40), 60)
        train(GPT(GPTConfig.preset("tiny", n_ctx=16), seed=0), LMSource(ids, 16, 4, seed=0),
              TrainConfig(steps=50, batch_size=4, lr=3e-3, warmup=2), desc="pretrain tiny")
    """)
    log = tmp_path / "log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", script], stderr=f, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = log.read_text()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 10, text
    assert all(line.startswith("pretrain tiny: ") and "loss=" in line and "tok_s=" in line for line in lines)
