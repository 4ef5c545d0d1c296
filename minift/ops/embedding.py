"""Token + position embedding, GPT-2's input layer: x = wte[ids] + wpe[:T].

Each token id picks a row of the token table wte, each position t picks row t of the learned position table wpe,
and the two vectors are added (GPT-2, Radford et al. 2019; nanoGPT `model.py`: `tok_emb + pos_emb`).

Shapes:  B = batch, T = time (sequence length), C = channels (n_embd), V = vocab size, P = n_ctx (rows of wpe).

Backward, from x[b, t] = wte[ids[b, t]] + wpe[t] with upstream gradient dx = dL/dx:
  dwte[v] = Σ_{b,t : ids[b,t] = v} dx[b, t]      a token that appears k times receives the sum of its k gradients
  dwpe[t] = Σ_b dx[b, t]   for t < T,   0 for T <= t < P (those positions were not used)
The ids are integers and have no gradient. In GPT-2 wte is also the LM head (tied weights): the model adds the head's
gradient to this dwte, since a tensor used twice gets its gradients summed.
"""
from __future__ import annotations

import numpy as np

from ..backend import scatter_add, xp_of
from ..errors import MiniftError


def _check_embedding_inputs(ids, wte, wpe):
    """Raise a MiniftError naming the bad input: ids must be a 2-D integer array of valid ids that fits in n_ctx."""
    if not hasattr(ids, "dtype") or not np.issubdtype(ids.dtype, np.integer):
        raise MiniftError(f"ids must be an integer array of token ids, got dtype {getattr(ids, 'dtype', type(ids))}")
    if ids.ndim != 2:
        raise MiniftError(f"ids must be 2-D (B, T), got shape {tuple(ids.shape)}")
    (V, C), (P, Cp) = wte.shape, wpe.shape
    if C != Cp:
        raise MiniftError(f"wte {tuple(wte.shape)} and wpe {tuple(wpe.shape)} must have the same width C")
    if ids.size and bool(((ids < 0) | (ids >= V)).any()):    # one read-back from a GPU, not two (min and max)
        raise MiniftError(f"ids must lie in [0, {V}) (the vocab size, rows of wte), "
                          f"got values from {int(ids.min())} to {int(ids.max())}")
    if ids.shape[1] > P:
        raise MiniftError(f"ids has T={ids.shape[1]} positions but wpe only has n_ctx={P} rows")


def embedding_forward(ids, wte, wpe):
    """ids [B, T] int, wte [V, C], wpe [P, C] -> x [B, T, C]. Returns (x, cache)."""
    _check_embedding_inputs(ids, wte, wpe)
    ids = xp_of(wte).asarray(ids)                          # (B, T), on wte's device (host ids are fine)
    T = ids.shape[1]
    x = wte[ids]                                           # (B, T, C): a gather, one row per token
    x += wpe[:T]                                           # (B, T, C), positions broadcast over the batch
    return x, (ids, wte.shape[0], wpe.shape[0])


def embedding_backward(dx, cache, need_dwte=True, need_dwpe=True):
    """dx [B, T, C] -> (dwte [V, C], dwpe [P, C]); a gradient not needed is returned as None."""
    ids, V, P = cache
    xp = xp_of(dx)
    B, T, C = dx.shape
    dwte = dwpe = None
    if need_dwte:
        dwte = xp.zeros((V, C), dtype=dx.dtype)            # (V, C): rows of tokens not in the batch stay 0
        # A plain `dwte[ids] += dx` is wrong for repeated ids: it is buffered, computing dwte[ids] + dx once and then
        # writing the rows back, so a token seen k times keeps only the last of its k contributions instead of their
        # sum. scatter_add (np.add.at / cupyx.scatter_add) accumulates every one. It is given 1-D arrays, the flat
        # index of each element dwte[ids[b, t], c], because np.add.at has a fast path for 1-D (3-6x faster than rows).
        flat = ids.reshape(-1, 1).astype(xp.int64) * C + xp.arange(C)     # (B*T, C) positions in dwte.reshape(-1)
        scatter_add(dwte.reshape(-1), flat.reshape(-1), dx.reshape(-1))   # dwte.reshape(-1) is a view: fills dwte
    if need_dwpe:
        dwpe = xp.zeros((P, C), dtype=dx.dtype)            # (P, C): positions >= T were not used, gradient 0
        dx.sum(axis=0, out=dwpe[:T])                       # (T, C) written into the first T rows, no temporary
    return dwte, dwpe
