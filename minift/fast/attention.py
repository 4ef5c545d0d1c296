"""Blocked causal attention: ops/attention.py's math with the queries taken ATTENTION_BLOCK rows at a time.

Shapes:  B batch, T time, C channels, H heads, D = C / H; a block has n query rows (r0..r1-1) against r1 keys.

Why. Under the causal mask query t sees keys 0..t: the upper triangle of the T×T square is computed only to be
masked, and then costs exp, the softmax's passes and about half of each T×T matmul (q kᵀ, att v and their
backward). With block = b the queries are taken b rows at a time, rows r0..r1-1 against keys 0..r1-1 only (the keys
they can see); only the b×b square on the diagonal needs the causal mask. The work falls to (1 + b/T)/2 of the
square's (75% for T = 128, b = 64).
  forward, per block:   pre = (q_rows · scale) k_{:r1}ᵀ  ->  mask  ->  softmax (in place)  ->  y_rows = att v_{:r1}
  backward, per block:  ops/attention.py's five steps on the block's rows; dk_{:r1} and dv_{:r1} add up over the
                        blocks, since every block's queries read those keys and values.
The cache keeps each block's probabilities as they are, [B, H, n, r1], not a T×T square padded with zeros:
B·H·Σ n·r1 numbers, (1 + b/T)/2 of the square (measure/memory.py counts it so). Scaling q (T·D numbers) instead
of the scores (T·T) changes rounding only: ~1e-7 relative in float32 (tests/fast/test_fast_attention.py).
On a GPU every array line is a kernel launch, so this path avoids lines that cost launches for nothing (`a[idx] += b`
ends in a copy back into a[idx]; adding through a view does not), and its softmax runs fused (fast/softmax.py).

`attention_forward` / `attention_backward` below are what the model runs (minift/dispatch.py): the blocked pair when
T > ATTENTION_BLOCK, the reference square otherwise; the cache starts with the backward that reads it.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import xp_of
from ..ops import attention as reference
from .softmax import softmax_backward, softmax_rows_

# Queries per block. None: always the reference square (ops/attention.py).
ATTENTION_BLOCK = 64


def attention_forward(qkv, n_head, attention_mask=None):
    """qkv [B, T, 3C] -> y [B, T, C]: blocked when T > ATTENTION_BLOCK, else the reference. Returns (y, cache) with
    cache = (the backward to call, its cache)."""
    if ATTENTION_BLOCK is None or getattr(qkv, "ndim", 0) != 3 or qkv.shape[1] <= ATTENTION_BLOCK:
        y, cache = reference.attention_forward(qkv, n_head, attention_mask)
        return y, (reference.attention_backward, cache)
    y, cache = blocked_attention_forward(qkv, n_head, attention_mask, ATTENTION_BLOCK)
    return y, (blocked_attention_backward, cache)


def attention_backward(dy, cache):
    """dy [B, T, C] -> dqkv [B, T, 3C], by the backward the forward chose."""
    backward, inner = cache
    return backward(dy, inner)


def query_blocks(T, b):
    """(r0, r1) row ranges of the query blocks: [0, b), [b, 2b), ..., the last one possibly shorter."""
    return [(r0, min(r0 + b, T)) for r0 in range(0, T, b)]


def _key_bias(attention_mask, dtype, xp):
    """Padding as an additive bias on the scores: [B, 1, 1, T], 0 at real keys and -inf at padded ones (or None)."""
    if attention_mask is None:
        return None
    real = xp.asarray(attention_mask) != 0                 # (B, T)
    bias = xp.where(real, xp.asarray(0, dtype=dtype), xp.asarray(-np.inf, dtype=dtype))  # (B, T)
    return bias[:, None, None, :]                          # (B, 1, 1, T)


def _causal_bias(n, dtype, xp):
    """The causal mask as an additive bias [n, n]: 0 where key s <= query t, -inf where s > t."""
    future = xp.triu(xp.ones((n, n), dtype=bool), 1)       # (n, n)
    return xp.where(future, xp.asarray(-np.inf, dtype=dtype), xp.asarray(0, dtype=dtype))   # (n, n)


def blocked_attention_forward(qkv, n_head, attention_mask, block):
    """qkv [B, T, 3C] -> y [B, T, C], the queries `block` rows at a time. Returns (y, cache)."""
    B, T, C, D = reference.check_attention_inputs(qkv, n_head, attention_mask)
    xp, H, b = xp_of(qkv), n_head, int(block)
    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)   # 1. each (B, H, T, D), views
    scale = 1.0 / math.sqrt(D)
    causal = _causal_bias(b, qkv.dtype, xp)                # (b, b)  its top-left n×n corner serves a shorter block
    padding = _key_bias(attention_mask, qkv.dtype, xp)     # (B, 1, 1, T) or None
    atts = []                                              # each block's att [B, H, n, r1], cached as computed
    y = xp.empty((B, T, H, D), dtype=qkv.dtype)            # (B, T, H, D)  6. heads merged as they are written
    for r0, r1 in query_blocks(T, b):
        n = r1 - r0
        pre = (q[:, :, r0:r1] * scale) @ k[:, :, :r1].transpose(0, 1, 3, 2)   # 2. (B, H, n, r1)
        diagonal = pre[..., r0:]                           #    (B, H, n, n)  a view: no copy-back
        diagonal += causal[:n, :n]                         # 3. causal, on the diagonal square only
        if padding is not None:
            pre += padding[..., :r1]                       # 3. padded keys
        softmax_rows_(pre)                                 # 4. (B, H, n, r1)
        atts.append(pre)                                   #    cached for the backward (keys after r1: never seen)
        y[:, r0:r1] = (pre @ v[:, :, :r1]).transpose(0, 2, 1, 3)   # 5. (B, n, H, D)
    return y.reshape(B, T, C), (q, k, v, atts, scale, b)


def blocked_attention_backward(dy, cache):
    """dy [B, T, C] -> dqkv [B, T, 3C] block by block: dq of a block's rows from its keys; dk, dv summed over blocks."""
    q, k, v, atts, scale, b = cache
    xp = xp_of(dy)
    B, H, T, D = q.shape
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)      # (B, H, T, D)  6.
    dqkv = xp.empty((B, T, 3, H, D), dtype=dy.dtype)       # (B, T, 3, H, D)  1. [dq | dk | dv], written in place
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # each (B, H, T, D), views
    # the last block reads every key, so it writes dk and dv whole; the earlier ones add to their first r1 keys
    for i, ((r0, r1), a) in enumerate(zip(reversed(query_blocks(T, b)), reversed(atts))):   # a: (B, H, n, r1)
        dyb = dy[:, :, r0:r1]                              # (B, H, n, D)
        dpre = dyb @ v[:, :, :r1].transpose(0, 1, 3, 2)    # 5. datt = dy vᵀ              (B, H, n, r1)
        dv_b = a.transpose(0, 1, 3, 2) @ dyb               # 5. dv = attᵀ dy              (B, H, r1, D)
        dpre = softmax_backward(dpre, a)                   # 4. (B, H, n, r1); 3: 0 where masked already
        xp.multiply(dpre @ k[:, :, :r1], scale, out=dq[:, :, r0:r1])   # 2. dq = dpre k / √D  (B, H, n, D)
        dk_b = dpre.transpose(0, 1, 3, 2) @ q[:, :, r0:r1]  # 2. dk = dpreᵀ q / √D        (B, H, r1, D)
        dk_b *= scale
        if i == 0:
            dk[...], dv[...] = dk_b, dv_b
        else:
            dk_seen, dv_seen = dk[:, :, :r1], dv[:, :, :r1]   # views of the keys this block saw
            dk_seen += dk_b
            dv_seen += dv_b
    return dqkv.reshape(B, T, 3 * H * D)                   # (B, T, 3C)

