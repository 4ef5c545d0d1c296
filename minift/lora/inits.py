"""How A and B start (LoRAConfig.init, PEFT's init_lora_weights): PEFT's default and gaussian inits, and PiSSA.

PEFT's peft/tuners/lora/layer.py (reset_lora_parameters, pissa_init); PiSSA: Meng et al. 2024, "PiSSA: Principal
Singular Values and Singular Vectors Adaptation of Large Language Models" (arXiv 2404.02948).

Letters: I in features, O out features, R the rank r, s the scale (minift/lora/op.py).

    "default"   A ~ U(-1/√I, 1/√I), B = 0. PEFT's kaiming_uniform_(a=√5) on A [R, I]: gain √(2/(1+a²)) = √(1/3),
                bound = gain · √(3/fan_in) = 1/√I (fan_in = I). This is nn.Linear's default init.
    "gaussian"  A ~ N(0, σ²) with σ = 1/R (PEFT: nn.init.normal_(std=1/r)), B = 0.
    "pissa"     W = U S Vᵀ, keep the top R singular triplets:
                Aᵀ = U_R √(S_R/s), Bᵀ = √(S_R/s) V_Rᵀ, so s · Aᵀ Bᵀ = U_R S_R V_Rᵀ (the top-R part of W), and the
                frozen W is REPLACED by the residual W − U_R S_R V_Rᵀ: the output at init is unchanged (up to
                rounding) but training moves the principal directions. PEFT's pissa_init (sqrt(S) split between A and
                B, divided by the scale) written for GPT-2's [I, O] layout; the SVD runs on the host in float64, so
                NumPy and CuPy get the same factors.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import randn, to_numpy, uniform, xp_of


def init_factors(w, r: int, s: float, init: str, rng):
    """(A [R, I], B [O, R], residual [I, O] or None) for a weight W [I, O]; the residual replaces W (PiSSA only)."""
    I, O = w.shape
    xp, dtype = xp_of(w), w.dtype
    B = xp.zeros((O, r), dtype=dtype)                                  # (O, R)
    if init == "default":
        bound = 1.0 / math.sqrt(I)                                     # PEFT: kaiming_uniform_(a=√5), fan_in = I
        return uniform(rng, (r, I), -bound, bound, dtype, xp), B, None
    if init == "gaussian":
        return randn(rng, (r, I), dtype, xp, std=1.0 / r), B, None     # PEFT: normal_(std=1/r)
    return pissa_factors(w, r, s)


def pissa_factors(w, r: int, s: float):
    """PiSSA: (A [R, I], B [O, R], W_res [I, O]) with s · Aᵀ Bᵀ = the top-R part of W and W_res = W − s · Aᵀ Bᵀ."""
    xp, dtype = xp_of(w), w.dtype
    w64 = to_numpy(w).astype(np.float64)                               # (I, O) host float64: same SVD on any backend
    U, S, Vt = np.linalg.svd(w64, full_matrices=False)                 # (I, K), (K,), (K, O), K = min(I, O)
    root = np.sqrt(S[:r] / s)                                          # (R,) √(S_R / s): half the spectrum each
    A = (root[:, None] * U[:, :r].T).astype(dtype)                     # (R, I)  Aᵀ = U_R √(S_R/s)
    B = (Vt[:r].T * root[None, :]).astype(dtype)                       # (O, R)  Bᵀ = √(S_R/s) V_Rᵀ
    residual = w64 - s * (A.astype(np.float64).T @ B.astype(np.float64).T)   # (I, O) from the stored factors
    return xp.asarray(A), xp.asarray(B), xp.asarray(residual.astype(dtype))
