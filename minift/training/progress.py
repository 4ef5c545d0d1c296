"""Progress of long work (pretraining, fine-tuning, compare), shown on stderr in the form its reader can use.

    bar = progress_bar(range(start, steps), total=steps, initial=start, desc="train", disable=quiet)
    for step in bar:
        ...
        bar.set_postfix(loss="2.345", tok_s="12,345", refresh=False)
    bar.close()

Where stderr goes decides the form:
    a terminal          tqdm's bar, redrawn in place with carriage returns
    a Jupyter notebook  tqdm's widget where ipywidgets is installed, else its text bar (which the notebook redraws in
                        place too). tqdm.auto would make the same choice, but warns "IProgress not found" first.
    a file or a pipe    one plain line at every tenth of the work (`LineProgress`): a bar's frames would fill a log
                        (`minift compare ... > log 2>&1` of 300 steps made 78 KB of frames around a 15-line result)
"""
from __future__ import annotations

import importlib.util
import math
import sys
import time

LINE_EVERY = 0.1           # LineProgress prints a line at every 10% of the total


def progress_bar(iterable, total: int, initial: int = 0, desc: str = "", disable: bool = False, file=None):
    """An iterator over `iterable` (total items, the first `initial` of them already done before, as when a run
    resumes) that shows its progress on `file` (default: sys.stderr) as the module docstring says. It has
    set_postfix(refresh=False, **values), shown with the progress, and close()."""
    file = file if file is not None else sys.stderr
    if disable or not (_is_terminal(file) or _is_notebook(file)):
        return LineProgress(iterable, total, initial, desc, file, disable)
    return _tqdm_class()(iterable, total=total, initial=initial, desc=desc, file=file, dynamic_ncols=True,
                         leave=False)


def _is_terminal(file) -> bool:
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


def _is_notebook(file) -> bool:
    """True when `file` is a Jupyter kernel's output stream (ipykernel's OutStream, not a terminal, but shown by a
    notebook that redraws carriage returns in place)."""
    return type(file).__module__.startswith("ipykernel")


def _tqdm_class():
    """tqdm.auto's class (the notebook widget in a notebook, else the text bar) where ipywidgets is installed; else
    the text bar, which tqdm.auto would fall back to anyway, after its "IProgress not found" warning."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


class LineProgress:
    """Progress as whole lines, one each time another LINE_EVERY of the total is done, for logs:
        train: 30/300 (10%), 0:12 elapsed, 1:48 left, loss=2.345, tok_s=12,345
    Nothing is printed when disabled, nor for work that stops early (its error says where it stopped)."""

    def __init__(self, iterable, total: int, initial: int = 0, desc: str = "", file=None, disable: bool = False):
        self.iterable, self.total, self.n, self.desc = iterable, total, initial, desc
        self.file, self.disable = file if file is not None else sys.stderr, disable
        self.postfix: dict = {}
        self._start_n, self._t0 = initial, time.perf_counter()
        self._step = max(1, math.ceil(total * LINE_EVERY))            # items between two lines
        self._next = min(total, (initial // self._step + 1) * self._step)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1                                  # the caller's work on `item` is done when it asks for more
            if self.n >= self._next:
                self._print()
                self._next = math.inf if self._next >= self.total else min(self.total, self._next + self._step)

    def set_postfix(self, refresh: bool = True, **values):
        """Values shown after the progress (as tqdm's set_postfix; `refresh` is accepted and has no effect)."""
        self.postfix = values

    def close(self):
        """Nothing to clear: every line printed is complete."""

    def _print(self):
        if self.disable:
            return
        elapsed = time.perf_counter() - self._t0
        done = self.n - self._start_n
        left = elapsed / done * (self.total - self.n) if done else 0.0
        parts = [f"{self.n}/{self.total} ({self.n / max(self.total, 1):.0%})", f"{_clock(elapsed)} elapsed",
                 f"{_clock(left)} left"] + [f"{k}={v}" for k, v in self.postfix.items()]
        print(f"{self.desc}: " * bool(self.desc) + ", ".join(parts), file=self.file, flush=True)


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
