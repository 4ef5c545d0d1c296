"""The tutorials as real notebooks: build `.ipynb` files from the jupytext percent scripts, and execute them.

    python -m minift.app.notebooks [PATHS ...] [--out DIR] [--execute] [--fast] [--timeout S]

PATHS are tutorial scripts or folders of them (a folder gives its `[0-9][0-9]_*.py`, not its subfolders); without
PATHS, every tutorial of the checkout (tutorials/, tutorials/zh/, tutorials/core/, tutorials/core/zh/). Each notebook
is written beside its script (git ignores `tutorials/**/*.ipynb`), or under DIR with the same relative layout
(DIR/core/zh/01_backprop_by_hand.ipynb). `--execute` runs each one top to bottom in a fresh Jupyter kernel, started
in the notebook's folder as Jupyter would, and saves it with its outputs; `--fast` runs it with MINIFT_FAST=1 (the
tutorials' smoke-run mode). A notebook that fails is saved up to the failing cell, its error is printed, the others
still run, and the command exits 1. Needs the `notebooks` extra: pip install -e '.[notebooks]'.

What the build adds to the script's cells, so that a notebook opened on its own (Jupyter, VS Code, Colab) works:
  - a setup cell first among the code cells: where minift is not importable, it installs minift (`pip install -e`,
    with the plot extra) from a checkout found around the notebook's folder (it, a folder above, a folder just
    below: Colab's /content after unzipping the repository) or the checkout it was built from; with none, it says
    the one command to run and stops. minift is not on PyPI, so there is no other place to install it from;
  - on every reference solution (a cell marked `jupyter={"source_hidden": true}` in the script), Colab's folding
    too: `cellView: "form"` and a first line `# @title ... { display-mode: "form" }`, so Colab shows the title and
    hides the code until it is double-clicked, as JupyterLab does with `source_hidden`.
A Chinese twin (tutorials/zh/, tutorials/core/zh/) gets those two added lines' words in Chinese; the code is the
same.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

TUTORIAL_GLOB = "[0-9][0-9]_*.py"
SOLUTION_TITLE = {                  # Colab shows a folded cell's @title line; the code shows on a double-click
    "en": '# @title Reference solution: try the exercise first (double-click to show) { display-mode: "form" }',
    "zh": '# @title 参考答案:请先自己做练习(双击显示代码) { display-mode: "form" }',
}
SETUP_TITLE = "# Setup: minift, where it is missing"
NEEDS = "the notebooks extra: pip install -e '.[notebooks]' (jupytext, nbclient, ipykernel)"


def checkout_root() -> Path | None:
    """The repository this module was imported from, when it is a checkout (it has tutorials/ and pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "tutorials").is_dir() else None


def find_tutorials(paths=()) -> list[Path]:
    """The tutorial scripts named by `paths` (files, or folders of NN_name.py); by default the checkout's all."""
    if not paths:
        root = checkout_root()
        if root is None:
            raise SystemExit("error: no tutorials given, and minift is not run from a checkout: name the scripts or "
                             "folders")
        base = root / "tutorials"
        paths = [p for p in (base, base / "zh", base / "core", base / "core" / "zh") if p.is_dir()]
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.glob(TUTORIAL_GLOB))
        elif p.is_file() and p.suffix == ".py":
            found.append(p)
        else:
            raise SystemExit(f"error: not a tutorial script or a folder of them: {p}")
    return [p.resolve() for p in found]


SETUP_COMMENT = {
    "en": """# minift comes from the installed package. Where it is missing (a fresh kernel, Colab), install it from a
# minift checkout: the folder this notebook runs in or one above it, a folder just below it, or the checkout the
# notebook was built from. minift is not on PyPI; with no checkout at hand, this cell says what to run and stops.""",
    "zh": """# 设置:minift 取自已安装的包。若尚未安装(新的内核、Colab),就从 minift 的代码仓库安装:
# 本 notebook 所在的文件夹或其上层、其下一层的文件夹,或构建本 notebook 时所用的仓库。minift 不在 PyPI 上;
# 若找不到仓库,本单元会说明该运行的命令,然后停下。""",
}


def setup_cell_source(built_from: Path | None, language: str = "en") -> str:
    """The first code cell: nothing to do where minift imports; else install it from a checkout, or stop and say how.
    `language` ("en", "zh") is the language of its comments; its code is the same in both.

    minift is not on PyPI, so there is no `pip install minift` to fall back on: the checkout is the source."""
    hint = repr(str(built_from)) if built_from is not None else "None"
    return f'''{SETUP_TITLE}
{SETUP_COMMENT[language]}
import importlib.util
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("minift") is None:
    def _is_checkout(p):
        return (p / "pyproject.toml").is_file() and (p / "minift" / "__init__.py").is_file()
    _here = Path.cwd().resolve()
    _built_from = {hint}
    _below = sorted(p for p in _here.iterdir() if p.is_dir())     # Colab: a checkout unzipped into /content
    _places = [_here, *_here.parents, *_below] + ([Path(_built_from)] if _built_from else [])
    _root = next((p for p in _places if _is_checkout(p)), None)
    if _root is None:
        raise ModuleNotFoundError(
            "minift is not installed and no minift checkout was found around this notebook. minift is not on PyPI: "
            "get the repository (clone or upload it), then run: pip install -e '<the repository>[plot]'")
    print(f"installing minift from {{_root}} ...")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", f"{{_root}}[plot]"])
    sys.path.insert(0, str(_root))                   # this kernel imports it now; a restarted one finds it installed
    importlib.invalidate_caches()
import minift

print(f"minift {{minift.__version__}} from {{Path(minift.__file__).parent}}")'''


def build(script: Path, built_from: Path | None = None):
    """The notebook (an nbformat node) of one percent script, with the setup cell and Colab's folding added."""
    import jupytext
    import nbformat

    nb = jupytext.read(script)
    language = "zh" if script.parent.name == "zh" else "en"              # tutorials/core/zh/: the Chinese twins
    nb.metadata.pop("jupytext", None)                      # a built notebook stands alone; the .py stays the source
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata.pop("lines_to_next_cell", None)
        if cell.cell_type == "code" and cell.metadata.get("jupyter", {}).get("source_hidden"):
            cell.metadata["cellView"] = "form"                # Colab: show the @title line, fold the code
            cell.source = f"{SOLUTION_TITLE[language]}\n{cell.source}"
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    setup = nbformat.v4.new_code_cell(setup_cell_source(built_from, language), metadata={"tags": ["setup"]})
    nb.cells.insert(first_code, setup)
    for i, cell in enumerate(nb.cells):                    # stable ids, so rebuilding gives the same file
        cell["id"] = f"{script.stem[:40]}-{i}"
    return nb


@contextmanager
def _kernel_env(fast: bool):
    """The environment the kernel inherits: MINIFT_FAST as asked; no MPLBACKEND, so figures are shown inline."""
    keys = ("MINIFT_FAST", "MPLBACKEND")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.pop("MPLBACKEND", None)
    if fast:
        os.environ["MINIFT_FAST"] = "1"
    else:
        os.environ.pop("MINIFT_FAST", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(nb, folder: Path, timeout: int = 600, fast: bool = False):
    """Run every cell of `nb` in a fresh python3 kernel started in `folder`; raises nbclient's CellExecutionError."""
    from nbclient import NotebookClient

    with _kernel_env(fast):
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def target(script: Path, out: Path | None) -> Path:
    """Where the notebook of `script` goes: beside it, or under `out` as it sits under tutorials/."""
    if out is None:
        return script.with_suffix(".ipynb")
    root = checkout_root()
    try:
        rel = script.relative_to(root / "tutorials") if root else Path(script.name)
    except ValueError:
        rel = Path(script.name)
    return Path(out) / rel.with_suffix(".ipynb")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minift.app.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="tutorial scripts or folders (default: every tutorial)")
    parser.add_argument("--out", type=Path, help="write the notebooks under this folder (default: beside each script)")
    parser.add_argument("--execute", action="store_true", help="run each notebook and save it with its outputs")
    parser.add_argument("--fast", action="store_true", help="execute with MINIFT_FAST=1 (a smoke run)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    args = parser.parse_args(argv)
    try:
        import jupytext  # noqa: F401
        import nbclient  # noqa: F401
        import nbformat
    except ImportError as e:
        print(f"error: {e.name} is not installed; building notebooks needs {NEEDS}", file=sys.stderr)
        return 2
    failed = []
    for script in find_tutorials(args.paths):
        path = target(script, args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        nb = build(script, built_from=checkout_root())
        t0 = time.perf_counter()
        try:
            if args.execute:
                execute(nb, path.parent, args.timeout, args.fast)
        except Exception as e:                             # CellExecutionError, a timeout, a dead kernel
            failed.append(path)
            print(f"FAILED {path} ({type(e).__name__}):\n{e}", file=sys.stderr)
        nbformat.write(nb, path)
        how = f"executed{' (fast)' * args.fast} in {time.perf_counter() - t0:.1f} s" if args.execute else "built"
        print(f"{path}: {how}" + (", FAILED" if path in failed else ""))
    if failed:
        print(f"{len(failed)} notebook(s) failed: " + ", ".join(map(str, failed)), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
