"""Which function runs each op: the reference (minift/ops: the formulas) or its fast twin (minift/fast).

The model (model.py), the optimizer (optim.py) and QLoRA's linear (lora/qlora.py) call the ops that have a twin
through an `Op` below. A call runs the fast twin, or the reference when MINIFT_REFERENCE=1 is in the environment
(read once, at import) or inside `with use_reference():`. The reference path is the math alone (no blocked
attention, no fused kernels, no in-place chains), for a learner who wants to step into it in a debugger; it is
slower and holds more memory.

    op               reference               fast twin               what the twin changes
    layernorm        ops/layernorm.py        fast/layernorm.py       in place; fused kernels on CuPy (the same order)
    attention        ops/attention.py        fast/attention.py       T > 64: 64 queries at a time, against the keys
                                                                     they can see (its softmax: fast/softmax.py)
    gelu             ops/gelu.py             fast/gelu.py            in place, another order; one kernel on CuPy
    AdamW's update   optim.adamw_update      fast/adamw.py           torch's order, one scratch; one kernel on CuPy
                     (paired in optim.py, which imports this module)
    dequantize       quant.dequantize        fast/dequant.py         W̃ alone, no temporary of W's size: a chunk of
                     (QLoRA's W̃ = deq(W))                            blocks at a time; one kernel on CuPy

The other ops (linear, embedding, dropout, cross-entropy, pooling) have no twin: the model calls them from ops/.
Each twin is tested against its reference (tests/fast/: bitwise where the order of operations is the same,
to a stated tolerance where not), and a short training run gives the same numbers both ways to that tolerance
(tests/test_dispatch.py). Finer switches keep the rest fast: MINIFT_FUSED=0 (fast/kernels.py) runs the twins' CPU
lines on CuPy instead of their kernels; fast.attention.ATTENTION_BLOCK = None keeps the attention square.
Flip a switch between steps, not inside one: a forward's cache is read by the same implementation's backward.

The step as a whole has a twin too: `workers_for` decides whether a training batch is split across CPU threads
(fast/parallel.py). workers="auto", every configuration's default, takes the fastest configuration measured
(benchmarks/RESULTS.md) where it applies, and the plain path (the whole batch in one `loss_and_grads`) elsewhere
and always on the reference path (one thread for a debugger to step through). Each shard runs the model's ordinary
`loss_and_grads`, so the ops it calls are chosen as above.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from . import ops, quant
from .fast import attention, dequant, gelu, layernorm
from .fast.parallel import AUTO, cpu_cores, uses_randomness

# Measured on 2 cores (benchmarks/RESULTS.md, run G): a demo step with two workers of one BLAS thread each took
# 0.68x the time of the whole batch on two BLAS threads, 0.56x that on one (full fine-tuning and LoRA alike).
AUTO_WORKERS = 2

REFERENCE_ENV = "MINIFT_REFERENCE"
_reference = os.environ.get(REFERENCE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def reference_only() -> bool:
    """Whether every Op runs its reference ($MINIFT_REFERENCE=1 or use_reference(True)); default no."""
    return _reference


@contextmanager
def use_reference(on: bool = True):
    """`with use_reference(): ...` runs the reference ops; the previous setting comes back after."""
    global _reference
    before, _reference = _reference, bool(on)
    try:
        yield
    finally:
        _reference = before


class Op:
    """One op, two implementations: a call runs `fast`, or `reference` while reference_only()."""

    def __init__(self, reference, fast):
        self.reference, self.fast = reference, fast
        self.__name__, self.__doc__ = reference.__name__, reference.__doc__

    def __call__(self, *args, **kwargs):
        return (self.reference if _reference else self.fast)(*args, **kwargs)

    def __repr__(self):
        return f"Op({self.__name__}: {self.reference.__module__} | {self.fast.__module__})"


layernorm_forward = Op(ops.layernorm_forward, layernorm.layernorm_forward)
layernorm_backward = Op(ops.layernorm_backward, layernorm.layernorm_backward)
attention_forward = Op(ops.attention_forward, attention.attention_forward)
attention_backward = Op(ops.attention_backward, attention.attention_backward)
gelu_forward = Op(ops.gelu_forward, gelu.gelu_forward)
gelu_backward = Op(ops.gelu_backward, gelu.gelu_backward)


def fast_dequantize(Qw, dtype=None):
    """quant.dequantize's twin (fast/dequant.py), taking the same Quantized; the scales c̃ [NB] of a double-quantised
    W (4 bytes a block of K weights) are dequantised by the reference first."""
    c = Qw.absmax if Qw.scales is None else quant.dequantize_scales(Qw.scales, Qw.packed.shape[0])   # (NB,)
    return dequant.dequantize(Qw.packed, quant.code_values(Qw.code), c, Qw.shape, dtype or Qw.dtype)


dequantize = Op(quant.dequantize, fast_dequantize)


def workers_for(workers, model, rows: int | None = None) -> int:
    """How many CPU threads share each training batch. A number is kept as given; "auto" is AUTO_WORKERS where a
    step can be split that way (the CPU, at least AUTO_WORKERS cores, no random numbers drawn in the step, a batch of
    at least AUTO_WORKERS rows), and 1 otherwise or on the reference path (one thread to step through)."""
    if workers != AUTO:
        return workers
    splittable = (model.device == "cpu" and cpu_cores() >= AUTO_WORKERS and uses_randomness(model) is None
                  and (rows is None or rows >= AUTO_WORKERS) and not _reference)
    return AUTO_WORKERS if splittable else 1
