"""AdamW's fast twin: optim.adamw_update's step in torch.optim.AdamW's order, with one scratch array on the CPU and
as one fused CUDA kernel on CuPy (ADAMW_STEP; minift/fast/kernels.py).

The reference writes the bias corrections as m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t), a new array per step of the
formula. This computes the same update rearranged as torch does, p ← p − (η / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε):
two scalars and one pass over one scratch array, so the two agree to rounding (tests/fast/test_fast_ops.py).
"""
from __future__ import annotations

import math

from ..backend import xp_of
from .kernels import FusedKernel

# adamw_update's CPU lines as one CUDA kernel: the same operations in the same order, p, m and v updated in place.
# decay = 1 − η λ (exactly 1 without decay, where p · 1 = p leaves p's bits unchanged).
ADAMW_STEP = FusedKernel(
    "minift_adamw_step",
    "T g, T decay, T b1, T one_minus_b1, T b2, T one_minus_b2, T sqrt_bc2, T eps, T step_size", "T p, T m, T v", """
    p = p * decay;                                         // decoupled decay
    m = m * b1 + g * one_minus_b1;                         // first moment
    v = v * b2 + g * g * one_minus_b2;                     // second moment
    p = p - m / (sqrt(v) / sqrt_bc2 + eps) * step_size;    // the Adam step
""")


def adamw_update(p, g, m, v, lr, weight_decay, betas, eps, t):
    """One AdamW step on p [...] with its moments m, v [...], all in place (as optim.adamw_update)."""
    xp, (b1, b2) = xp_of(p), betas
    decay, sqrt_bc2, step_size = 1.0 - lr * weight_decay, math.sqrt(1.0 - b2 ** t), lr / (1.0 - b1 ** t)
    fused = ADAMW_STEP.get(xp)
    if fused is not None:                                  # CuPy: the lines below as one kernel, p m v in place
        fused(g, *ADAMW_STEP.scalars(p, decay, b1, 1.0 - b1, b2, 1.0 - b2, sqrt_bc2, eps, step_size), p, m, v)
        return
    tmp = xp.empty_like(p)
    if weight_decay:
        p *= decay                                         # p ← p − η λ p        (decoupled decay)
    m *= b1                                                # m ← β1 m + (1 − β1) g
    m += xp.multiply(g, 1.0 - b1, out=tmp)
    v *= b2                                                # v ← β2 v + (1 − β2) g²
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - b2
    v += tmp
    xp.sqrt(v, out=tmp)                                    # √v̂ + ε = √v / √(1 − β2^t) + ε
    tmp /= sqrt_bc2
    tmp += eps
    xp.divide(m, tmp, out=tmp)                             # η m̂ / (√v̂ + ε), with m̂ = m / (1 − β1^t)
    tmp *= step_size
    p -= tmp                                               # p ← p − η m̂ / (√v̂ + ε)
