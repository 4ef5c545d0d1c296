"""Fused elementwise kernels for the GPU: one CUDA launch where the readable code makes a chain of passes.

Why. On a GPU every line of array code (`t *= a`, `t += 1.0`, ...) is a kernel launch that reads and writes the
whole array. A demo training step (full fine-tuning, as `minift bench` runs it) makes 1,288 launches with the
fast twins' CPU lines, 676 of them AdamW's (13 per parameter; 14 with weight decay), and 527 with the kernels of this
module, 52 of them AdamW's (counted on the test suite's CPU stand-in for CuPy: `python benchmarks/launches.py`).
A launch costs CuPy several microseconds of host time whatever the array's size, so at demo size the GPU is
expected to wait mostly for Python; at GPT-2 size each extra pass costs memory bandwidth instead.
llm.c's CUDA code fuses its elementwise work for the same reasons. CuPy's `ElementwiseKernel` compiles a few lines
of CUDA C into one kernel that reads each input once and writes each output once.

The rule that keeps the fast path honest: a kernel performs exactly the operations of the CPU lines it replaces, in
the same order, with the same scalars (computed in Python as those lines compute them). The kernel is defined in the
fast twin's module (fast/gelu.py, layernorm.py, softmax.py, adamw.py), beside those lines, and checked against them
twice:
  - in every test run, on tests/fakecupy.py, whose `ElementwiseKernel` evaluates the kernel's body with NumPy, one
    statement over whole arrays at a time: there the fused path must equal the CPU lines **bit for bit** (the
    training, resume and compare tests on the fake compare the GPU path with the CPU path exactly);
  - on a real GPU (tests/fast/test_kernels.py's `cupy` cases, and every op test's), to float rounding: CUDA contracts
    `a * b + c` into one fused multiply-add and its tanh differs from NumPy's in the last bits.
Reductions (means, sums over a row) stay CuPy's own; only the elementwise chains around them are fused.

Where they run: on CuPy only (NumPy has no kernel fusion; on the CPU the twins run their lines). They are on by
default there; `MINIFT_FUSED=0` in the environment, or `use_fused(False)`, runs those lines on CuPy instead, to
measure what fusion buys (`minift bench --no-fused`) or to rule it out when debugging. MINIFT_REFERENCE=1
(minift/dispatch.py) goes further: no twin at all, the reference ops of minift/ops.

The body language (a subset of CUDA C that the fake can evaluate, enforced there and by tests/fast/test_kernels.py;
the fake also reads fast/dequant.py's raw-array kernel, whose language is wider):
  - one statement per `;`: `T name = expression;`, `name = expression;`, or `const T name = number;`; inputs
    are read-only (outputs passed in by the caller are read and written);
  - expressions use + - * /, parentheses, the functions tanh, sqrt, exp, parameters and earlier names;
  - numeric constants are declared `const T`: a bare `0.5` in an expression would be a C double and would turn
    float32 arithmetic into float64 arithmetic (integers, like the 1 in `1 - t * t`, are fine, but not beside a
    `/`: `1 / 2` is 0 in C);
  - `// comments` to the end of a line; ASCII only.
Scalar parameters are typed T and passed as scalars of the arrays' dtype (`FusedKernel.scalars`), so a float32 step
stays float32 and a float64 gradient check stays float64.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

FUSED_ENV = "MINIFT_FUSED"
REGISTRY = {}            # name -> FusedKernel: every kernel defined, for the tests that check them all
_enabled = os.environ.get(FUSED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def fused_enabled() -> bool:
    """Whether CuPy arrays take the fused kernels (default yes; $MINIFT_FUSED=0 or use_fused(False): no)."""
    return _enabled


@contextmanager
def use_fused(on: bool):
    """`with use_fused(False): ...` runs the twins' CPU lines on CuPy too; the previous setting comes back after."""
    global _enabled
    before, _enabled = _enabled, bool(on)
    try:
        yield
    finally:
        _enabled = before


class FusedKernel:
    """One CUDA elementwise kernel: `in_params` and `out_params` in CuPy's notation ("T x, T t"), `body` in the subset
    of CUDA C above. Compiled lazily, once per array module, the first time a CuPy array asks for it."""

    def __init__(self, name: str, in_params: str, out_params: str, body: str):
        if name in REGISTRY:
            raise ValueError(f"two fused kernels are named {name!r}")
        self.name, self.in_params, self.out_params, self.body = name, in_params, out_params, body
        self._compiled = {}                      # the module's ElementwiseKernel class -> the compiled kernel
        REGISTRY[name] = self

    def get(self, xp):
        """The kernel for arrays of module `xp`, or None where the caller should run its CPU lines: on NumPy,
        on an array module without ElementwiseKernel, and when fusion is switched off."""
        make = getattr(xp, "ElementwiseKernel", None)
        if xp is np or make is None or not _enabled:
            return None
        kernel = self._compiled.get(make)
        if kernel is None:
            kernel = self._compiled[make] = make(self.in_params, self.out_params, self.body, self.name)
        return kernel

    @staticmethod
    def scalars(like, *values):
        """Python numbers -> scalars of `like`'s dtype, as a T parameter needs them (NumPy would cast a Python float
        to the array's dtype in the CPU lines; this is the same rounding, done once on the host)."""
        return tuple(like.dtype.type(v) for v in values)

    def __repr__(self):
        return f"FusedKernel({self.name!r}: ({self.in_params}) -> ({self.out_params}))"
