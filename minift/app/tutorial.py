"""Plumbing shared by the tutorials — no math lives here.

Every tutorial imports what it needs of `from minift.app.tutorial import FAST, pick, out_dir, show, exercise`, from
the installed package, so a tutorial runs the same as a script, as a notebook opened on its own, or in Colab:

    MINIFT_FAST=1             fast mode: tiny sizes and few steps, so a tutorial runs in well under a minute
                              (the test suite runs every tutorial this way: tests/test_tutorials.py)
    MINIFT_TUTORIAL_OUT=dir   where figures (dir/figures/*.png) and training runs go; default out/ beside the
                              script that runs (tutorials/out/, which git ignores), or in the notebook's folder

    pick(normal, fast)        the value for the current mode
    out_dir("runs", "x")      a folder under the output directory, created if needed
    show(fig, "name")         save fig as PNG, then display it inline (in a notebook) or close it (as a script)
    exercise(name, check, yours, reference)
                              run check(yours); while `yours` still raises NotImplementedError, run the check on
                              the reference solution instead, so the check itself is known to work
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

FAST = os.environ.get("MINIFT_FAST", "").strip() not in ("", "0", "false", "no")


def _default_out() -> Path:
    """out/ beside the script being run (`python tutorials/NN_name.py`), else in the current folder (a notebook's
    kernel starts in the notebook's folder)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else None
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
