"""Real English from inside the Python interpreter: the reference topics behind `help()` and stdlib docstrings.

Nothing is downloaded: `pydoc_data.topics` (the language reference sections that `help("if")` prints) ships with
CPython, and so do the docstrings of the standard library. The text is technical English with some code, a useful
contrast to the world corpus's simple stories, and it gives the tokenizer real-world words.

The corpus depends on the Python version (docstrings change between releases), which is why data/manifest.json
records the version the shipped tokenizer was trained with. It is read in a fresh interpreter, so it does not depend
on anything else: what the calling process imported or patched, or its -OO flag (which strips docstrings).
"""
from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import warnings

# Pure-Python or always-built stdlib modules whose import has no side effects. Platform-specific ones (os, posix,
# msvcrt) are left out so the corpus is the same on every OS for one Python version.
MODULES = (
    "abc", "argparse", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions",
    "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "inspect",
    "io", "ipaddress", "itertools", "json", "keyword", "logging", "math", "mimetypes", "numbers", "operator",
    "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "shutil", "statistics",
    "string", "struct", "textwrap", "threading", "timeit", "tokenize", "traceback", "types", "typing",
    "unicodedata", "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile", "zlib",
)


class _Elided:
    """Stands in for a default value whose repr is not a plain literal."""
    def __repr__(self):
        return "..."


def _signature(obj) -> str:
    """"(text, width=70, *, tabsize=8)": names and literal defaults only. Other defaults print as "...", because
    their repr can change from run to run ("<object at 0x7f...>", or logging's list of live handlers, which pytest
    extends), and the corpus must not."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    plain = (type(None), bool, int, float, str)
    params = [p.replace(annotation=p.empty, default=p.default if p.default is p.empty or
                        (type(p.default) in plain and len(repr(p.default)) < 40) else _Elided())
              for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=sig.empty))


def _topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:                                  # some distributions strip pydoc_data
        return []
    return [topics[key].strip() for key in sorted(topics) if topics[key].strip()]


def _defined_in(obj, module) -> bool:
    """False for methods other libraries patched onto a stdlib class (transformers adds Logger.warning_once):
    the corpus must not depend on what else the process has imported."""
    return getattr(obj, "__module__", None) in (None, module.__name__)


def _members(module) -> list[tuple[str, object]]:
    """Public classes and functions defined in the module itself, by name; their own methods after each."""
    out = []
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            out.append((name, obj))
            if inspect.isclass(obj):
                out += [(f"{name}.{m}", v) for m, v in sorted(vars(obj).items())
                        if not m.startswith("_") and callable(v) and _defined_in(v, module)]
    return out


def _module_text(name: str) -> str | None:
    """Module docstring, then "name(signature)" and the docstring of each member that has one."""
    try:
        module = importlib.import_module(name)
    except Exception:                                    # missing optional C extension (zlib, _decimal...)
        return None
    parts = [f"Module {name}\n\n{inspect.cleandoc(module.__doc__ or '')}".rstrip()]
    seen = set()
    for member, obj in _members(module):
        doc = getattr(obj, "__doc__", None)
        doc = doc if isinstance(doc, str) else None
        if not doc or doc in seen:
            continue
        seen.add(doc)
        parts.append(f"{member}{_signature(obj)}\n{inspect.cleandoc(doc)}")
    return "\n\n".join(parts) if len(parts) > 1 or module.__doc__ else None


def collect() -> list[str]:
    """The corpus as this process sees it: one document per help() topic (sorted by name), then one per module."""
    docs = _topics()
    with warnings.catch_warnings():                     # typing.io & co. warn when touched; we only read docs
        warnings.simplefilter("ignore", DeprecationWarning)
        docs += [text for text in map(_module_text, MODULES) if text]
    return docs


def pydoc_corpus(fresh: bool = True) -> list[str]:
    """The corpus, read in a fresh interpreter (`fresh=True`) so that it depends on the Python version only.

    In a process that has imported other libraries the stdlib is not pristine: torch replaces inspect.getfile,
    transformers adds methods to logging.Logger, pytest adds logging handlers. Running this file as a script with
    `python -I` (isolated: no user site, no PYTHON* variables) sees the standard library as shipped.
    """
    if not fresh or not sys.executable:                 # no interpreter to start (embedded Python): read it here
        return collect()
    done = subprocess.run([sys.executable, "-I", __file__], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reading the pydoc corpus in a fresh interpreter failed:\n"
                           f"{done.stderr.decode(errors='replace')}")
    return json.loads(done.stdout.decode("ascii"))


if __name__ == "__main__":                               # the fresh interpreter of pydoc_corpus()
    json.dump(collect(), sys.stdout, ensure_ascii=True)
