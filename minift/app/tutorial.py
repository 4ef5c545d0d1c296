"""Plumbing shared by the tutorials — no math lives here.

Every tutorial imports what it needs of `from minift.app.tutorial import FAST, pick, out_dir, show, exercise`, from
the installed package, so a tutorial runs the same as a script, as a notebook opened on its own, or in Colab:

    MINIFT_FAST=1             fast mode: tiny sizes and few steps, so a tutorial runs in well under a minute
                              (the test suite runs every tutorial this way: tests/test_tutorials.py)
    MINIFT_TUTORIAL_OUT=dir   where figures (dir/figures/*.png) and training runs go; default out/ beside the
                              script that runs (tutorials/out/, tutorials/core/out/: git ignores them), or in the
                              notebook's folder (a Jupyter kernel starts there)

    pick(normal, fast)        the value for the current mode
    out_dir("runs", "x")      a folder under the output directory, created if needed
    show(fig, "name")         save fig as PNG, then display it inline (in a notebook) or close it (as a script)
    exercise(name, check, yours, reference)
                              run check(yours); while `yours` still raises NotImplementedError, run the check on
                              the reference solution instead, so the check itself is known to work

The notebooks are built from the scripts, and executed, by `python -m minift.app.notebooks` (app/notebooks.py).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

FAST = os.environ.get("MINIFT_FAST", "").strip() not in ("", "0", "false", "no")


def _quiet_tqdm_auto() -> None:
    """In a notebook without ipywidgets, `tqdm.auto` (imported by transformers, huggingface_hub, PEFT) warns
    "IProgress not found" and falls back to its text bar — the bar minift's own progress uses there
    (minift/training/progress.py). The warning only says what is already chosen, so a tutorial run in a notebook
    does not show it; with ipywidgets installed there is nothing to silence."""
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is None:
        warnings.filterwarnings("ignore", message="IProgress not found")


_quiet_tqdm_auto()


def _default_out() -> Path:
    """out/ beside the script being run (`python tutorials/NN_name.py`), else in the current folder (a notebook's
    kernel starts in the notebook's folder). A script is told by its __main__ module's file: in a Jupyter kernel
    __main__ has none, and sys.argv[0] is ipykernel's launcher, inside site-packages."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    script = Path(main_file) if main_file and main_file.endswith(".py") else None
    return (script.resolve().parent if script is not None and script.is_file() else Path.cwd()) / "out"


OUT = Path(os.environ.get("MINIFT_TUTORIAL_OUT") or _default_out())


def pick(normal, fast):
    """`fast` under MINIFT_FAST=1, else `normal`."""
    return fast if FAST else normal


def out_dir(*parts) -> Path:
    """OUT/parts..., created if needed."""
    path = OUT.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _interactive_backend() -> bool:
    import matplotlib
    backend = matplotlib.get_backend().lower()
    return backend not in ("agg", "pdf", "ps", "svg", "cairo", "template")


def show(fig, name: str) -> Path:
    """Save `fig` as OUT/figures/<name>.png and display it (notebook) or close it (script, Agg backend)."""
    import matplotlib.pyplot as plt
    path = out_dir("figures") / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"figure saved: {path}")
    if _interactive_backend():
        plt.show()
    else:
        plt.close(fig)
    return path


def exercise(name: str, check, yours, reference) -> None:
    """Check your answer; until you have written one, check the reference solution (and say so)."""
    try:
        check(yours)
    except NotImplementedError:
        check(reference)
        print(f"{name}: not attempted yet — the reference solution passes this check. Now write yours.")
        return
    print(f"{name}: your answer passes the check.")
