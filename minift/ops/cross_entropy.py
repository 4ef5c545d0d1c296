"""Softmax cross-entropy with an ignore index: the language-model loss (PyTorch's F.cross_entropy, ignore_index=-100).

Shapes:  N = any leading dimensions (B, T, ...), flattened to one axis of N rows; V = vocab size (classes).

Forward, per row x ∈ R^V with target class y (rows whose target equals ignore_index are left out):
  loss_n = -log p_y = -log( exp(x_y) / Σ_v exp(x_v) ) = log Σ_v exp(x_v) - x_y
  loss   = (1 / N_valid) Σ_{valid n} loss_n                 (the mean over the targets that count)
Stability (the log-sum-exp trick, as in softmax.py): with m = max_v x_v and z = x - m,
  loss_n = log Σ_v exp(z_v) - z_y
every exp(z_v) <= 1 cannot overflow, and the sum is >= 1 (the max contributes exp(0)), so its log is finite. Logits of
±1e4 give a finite loss of about 2e4, where exp(1e4) itself would be inf. The probabilities p = exp(z) / Σ exp(z) are
made on the way and cached, so the backward does not compute a softmax again.

ignore_index: positions whose target equals it (padding, the prompt in instruction tuning) add nothing to the loss and
get exactly zero gradient; the mean divides by the number of the others (PyTorch's reduction="mean" does the same).

Backward, from loss_n = log Σ_v exp(x_v) - x_y with upstream gradient dloss (a scalar):
  ∂loss_n/∂x_v = exp(x_v) / Σ exp(x) - [v = y] = p_v - onehot(y)_v
  dlogits_n = dloss · (p_n - onehot(y_n)) / N_valid  at valid rows,   0 at ignored rows
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from ..errors import MiniftError


def _check_cross_entropy_inputs(logits, targets, ignore_index):
    """Raise a MiniftError naming the bad input; return targets as an integer array on logits' device."""
    if not hasattr(logits, "ndim") or logits.ndim < 1 or not np.issubdtype(logits.dtype, np.floating):
        raise MiniftError(f"logits must be a floating-point array (..., V), "
                          f"got {getattr(logits, 'dtype', type(logits).__name__)} of shape {np.shape(logits)}")
    targets = xp_of(logits).asarray(targets)               # (...)  host targets are fine
    if not np.issubdtype(targets.dtype, np.integer):
        raise MiniftError(f"targets must be an integer array of class ids, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise MiniftError(f"targets must have logits' shape without its last axis, {tuple(logits.shape[:-1])}, "
                          f"got {tuple(targets.shape)}")
    V = logits.shape[-1]
    valid = targets != ignore_index                        # (...)
    if not bool(valid.any()):
        raise MiniftError(f"no target to learn from: every entry of targets equals ignore_index={ignore_index}")
    bad = valid & ((targets < 0) | (targets >= V))         # (...)
    if bool(bad.any()):
        value = int(targets[bad].ravel()[0])
        raise MiniftError(f"targets must lie in [0, {V}) (V = logits' last axis) or equal "
                          f"ignore_index={ignore_index}, got {value}")
    return targets


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """logits [..., V] float, targets [...] int -> loss [] (mean over non-ignored targets). Returns (loss, cache)."""
    targets = _check_cross_entropy_inputs(logits, targets, ignore_index)
    xp = xp_of(logits)
    V = logits.shape[-1]
    x = logits.reshape(-1, V)                              # (N, V)
    valid = targets.reshape(-1) != ignore_index            # (N,)  True where the target counts
    n_valid = int(valid.sum())
    y = xp.where(valid, targets.reshape(-1), 0)            # (N,)  ignored rows point at class 0, masked out below
    rows = xp.arange(x.shape[0])                           # (N,)
    z = x - x.max(axis=-1, keepdims=True)                  # (N, V)  shifted logits, the largest is 0
    z_y = z[rows, y]                                       # (N,)    shifted logit of the target (a copy)
    p = xp.exp(z, out=z)                                   # (N, V)  exp(z) in (0, 1], in z's buffer
    s = p.sum(axis=-1, keepdims=True)                      # (N, 1)  >= 1
    p /= s                                                 # (N, V)  softmax, cached for the backward
    nll = xp.log(s[:, 0]) - z_y                            # (N,)    -log p_y = log Σ exp(z) - z_y
    nll = xp.where(valid, nll, xp.zeros_like(nll))         # (N,)    ignored rows add exactly 0
    loss = xp.asarray(nll.sum() / n_valid, dtype=logits.dtype)  # ()  0-d array, logits' dtype
    return loss, (p, rows, y, valid, n_valid, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dloss [] -> dlogits [..., V] = dloss · (softmax - onehot) / N_valid, exactly 0 at ignored positions."""
    p, rows, y, valid, n_valid, shape = cache
    dx = p.copy()                                          # (N, V)  a copy: the cache stays valid for another call
    dx[rows, y] -= 1                                       # (N, V)  p - onehot(y)
    w = valid.astype(dx.dtype)                             # (N,)    1 at counted rows, 0 at ignored ones
    w *= dloss / n_valid                                   # (N,)    the mean's 1/N_valid, times the upstream scalar
    dx *= w[:, None]                                       # (N, V)  ignored rows become exactly 0
    return dx.reshape(shape)                               # (..., V)
