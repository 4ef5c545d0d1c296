"""Causal multi-head self-attention over GPT-2's fused q/k/v (Vaswani et al. 2017, §3.2; GPT-2's `attn`).

Shapes:  B = batch, T = time (sequence length), C = channels (n_embd), H = heads (n_head), D = head size = C / H.

GPT-2's `c_attn` is one linear layer C -> 3C; its output qkv [B, T, 3C] is laid out [q | k | v] along the last axis,
each C wide, and head h uses channels h*D:(h+1)*D of each (HF `GPT2Attention._split_heads`, nanoGPT `model.py`).

Forward, for every (b, h) at once as batched matmuls (no loop over heads or time):
  1. q, k, v = split(qkv)                          3 x [B, H, T, D]
  2. scores = q kᵀ / √D                            [B, H, T, T]   query t (row) against key s (column)
  3. scores[t, s] = -inf  where s > t (causal: no peeking at the future), or where key s is padding
  4. att = softmax(scores) over keys (last axis)   [B, H, T, T]   each visible row sums to 1
  5. y = att v                                     [B, H, T, D]
  6. y = merge(y)                                  [B, T, C]      heads side by side again: the input of c_proj
The padding mask (attention_mask [B, T], 1/True = real token, 0/False = padding) hides padded *keys*, as Hugging Face
does. With left padding a padded query t can see no key at all (every key s <= t is padding): its row of scores is all
-inf, and minift's softmax gives that row zeros (see softmax.py), so its output is 0 and it gets zero gradient. What
sits at padded query positions is never read by a correct loss, so those zeros change nothing real.

Backward: the forward's steps in reverse; each step quotes the forward line it differentiates (as llm.c's
`attention_backward`). With the scores' gradient named dpre (llm.c's "preatt"):
  5.  y = att v               ->  datt = dy vᵀ,          dv = attᵀ dy
  4.  att = softmax(scores)   ->  dpre = att ⊙ (datt - Σ_s datt ⊙ att)         (softmax.py; uses the cached att)
  3.  masking                 ->  nothing to do: masked entries have att = 0, so dpre = 0 there already
  2.  scores = q kᵀ / √D      ->  dq = dpre k / √D,      dk = dpreᵀ q / √D
  1.  split                   ->  dqkv = [dq | dk | dv], heads merged back

Blocked (`block=`, the model's fast path; the same math, tested equal to the above in
tests/test_op_attention_blocked.py).
Under the causal mask, query t sees keys 0..t: the upper triangle of the T×T square is computed only to be masked,
and then costs exp, the softmax's passes and about half of each T×T matmul (q kᵀ, att v and their backward). With block = b, the queries are
taken b rows at a time, rows r0..r1-1 against keys 0..r1-1 only (the keys they can see); only the b×b square on
the diagonal needs the causal mask. The work falls to (1 + b/T)/2 of the square's (62.5% for T = 128, b = 32).
  forward, per block:   pre = (q_rows · scale) k_{:r1}ᵀ  ->  mask  ->  softmax (in place)  ->  y_rows = att v_{:r1}
  backward, per block:  the five steps above on the block's rows; dk_{:r1} and dv_{:r1} add up over the blocks,
                        since every block's queries read those keys and values.
The cache keeps each block's probabilities as they are, [B, H, n, r1], not a T×T square padded with zeros: the
blocks hold B·H·Σ n·r1 numbers, (1 + b/T)/2 of the square (memory.py counts it so), and the backward reads them
back block by block. attention_probabilities(cache) rebuilds the full [B, H, T, T] array from either cache, for
inspection and for the tests. Scaling q (T·D numbers) instead of the scores (T·T) changes rounding only: ~1e-7
relative in float32.

On a GPU every array line is a kernel launch, so the blocked path avoids lines that cost launches for nothing
(`a[idx] += b` ends in a copy of the result back into a[idx]; adding through a view does not), and its softmax's
`pre -= m; exp(pre)` runs as one fused CUDA kernel (SHIFTED_EXP: the same operations in the same order; the lines
are the reference, what NumPy runs; minift/fast/kernels.py).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import xp_of
from ..errors import MiniftError
from ..fast.kernels import FusedKernel
from .softmax import softmax_backward, softmax_forward

# _softmax_rows_'s `pre -= m; exp(pre)` as one CUDA kernel, in place (minift/fast/kernels.py)
SHIFTED_EXP = FusedKernel("minift_shifted_exp", "T m", "T e", """
    e = exp(e - m);
""")


def _check_attention_inputs(qkv, n_head, attention_mask):
    """Raise a MiniftError naming the bad input; return (B, T, C, D)."""
    if not hasattr(qkv, "ndim") or qkv.ndim != 3 or qkv.shape[-1] % 3 != 0:
        raise MiniftError(f"qkv must be a 3-D array (B, T, 3C) holding [q | k | v] along its last axis, "
                          f"got shape {tuple(getattr(qkv, 'shape', ()))}")
    if not np.issubdtype(qkv.dtype, np.floating):
        raise MiniftError(f"qkv must be a floating-point array, got dtype {qkv.dtype}")
    B, T, C3 = qkv.shape
    C = C3 // 3
    if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)) or n_head < 1 or C % n_head != 0:
        raise MiniftError(f"n_head={n_head!r} must be a positive integer that divides C={C} "
                          f"(qkv is {tuple(qkv.shape)})")
    if attention_mask is not None and tuple(np.shape(attention_mask)) != (B, T):
        raise MiniftError(f"attention_mask must have shape (B, T) = {(B, T)} like qkv's first two axes, "
                          f"got {tuple(np.shape(attention_mask))}")
    return B, T, C, C // n_head


def _visible(T, attention_mask, xp):
    """Which key s each query t may attend to: [1, 1, T, T] (causal only) or [B, 1, T, T] (causal and not padding)."""
    causal = xp.tril(xp.ones((T, T), dtype=bool))          # (T, T)  row t: True for keys s <= t
    visible = causal[None, None]                           # (1, 1, T, T), broadcast over B and H
    if attention_mask is not None:
        real = xp.asarray(attention_mask) != 0             # (B, T)  True at real tokens
        visible = visible & real[:, None, None, :]         # (B, 1, T, T)  padded keys hidden from every query
    return visible


def attention_forward(qkv, n_head, attention_mask=None, block=None):
    """qkv [B, T, 3C], attention_mask [B, T] (1 = real token) or None -> y [B, T, C]. Returns (y, cache).

    block: None computes the whole T×T square (the reference, below); an integer b < T takes the queries b at a time
    against the keys they can see ("Blocked" in the module docstring): the same result, about half the work."""
    B, T, C, D = _check_attention_inputs(qkv, n_head, attention_mask)
    if block is not None and block < T:
        return _blocked_forward(qkv, n_head, attention_mask, int(block))
    xp = xp_of(qkv)
    H = n_head
    # 1. split: [B, T, 3C] -> [B, T, 3, H, D] -> [3, B, H, T, D]; views, nothing is copied
    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # each (B, H, T, D)
    # 2. scores; math.sqrt gives a Python float, which keeps float32 (np.sqrt's float64 would upcast: NEP 50)
    scale = 1.0 / math.sqrt(D)
    pre = q @ k.transpose(0, 1, 3, 2)                      # (B, H, T, T)  pre[t, s] = q_t · k_s
    pre *= scale                                           # (B, H, T, T)
    # 3. mask: hidden entries become -inf, so softmax gives them probability exactly 0
    neg_inf = xp.asarray(-np.inf, dtype=qkv.dtype)         # ()  typed, so `where` keeps qkv's dtype
    pre = xp.where(_visible(T, attention_mask, xp), pre, neg_inf)  # (B, H, T, T)
    # 4. softmax over keys; an all -inf row (no visible key) gives zeros
    att, _ = softmax_forward(pre)                          # (B, H, T, T)
    # 5. weighted sum of the values
    y = att @ v                                            # (B, H, T, D)
    # 6. merge heads: [B, H, T, D] -> [B, T, H, D] -> [B, T, C]
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)           # (B, T, C)
    return y, (q, k, v, att, scale)


def attention_backward(dy, cache):
    """dy [B, T, C] -> dqkv [B, T, 3C] (the mask is not differentiable, so qkv's gradient is the only one)."""
    if len(cache) == 6:
        return _blocked_backward(dy, cache)
    q, k, v, att, scale = cache
    xp = xp_of(dy)
    B, H, T, D = q.shape
    # backward of 6. "y = y.transpose(0, 2, 1, 3).reshape(B, T, C)": split the heads again
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)      # (B, H, T, D)
    # backward of 5. "y = att @ v"
    datt = dy @ v.transpose(0, 1, 3, 2)                    # (B, H, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dy                    # (B, H, T, D)
    # backward of 4. "att, _ = softmax_forward(pre)": uses the cached att, no softmax is recomputed
    dpre = softmax_backward(datt, att)                     # (B, H, T, T)
    # backward of 3. "pre = xp.where(_visible(...), pre, neg_inf)": att = 0 where hidden, so dpre = 0 there already
    # backward of 2. "pre = q @ kᵀ; pre *= scale"
    dpre *= scale                                          # (B, H, T, T)
    dq = dpre @ k                                          # (B, H, T, D)
    dk = dpre.transpose(0, 1, 3, 2) @ q                    # (B, H, T, D)
    # backward of 1. "q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)": the inverse permutation
    dqkv = xp.stack([dq, dk, dv])                          # (3, B, H, T, D)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)  # (B, T, 3C)


# ---- the blocked fast path ------------------------------------------------------------------------------------------

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


def _softmax_rows_(pre, xp):
    """softmax over the last axis, in place (pre is the block's own buffer); an all -inf row gives zeros, as
    softmax.py's softmax does. The two guards are clamps rather than masked assignments (`m[m == -inf] = 0`): the
    same numbers, one pass each instead of a comparison and a scatter (which on a GPU are several kernels)."""
    m = pre.max(axis=-1, keepdims=True)                    # (..., 1)  -inf for a fully masked row
    xp.maximum(m, float(np.finfo(pre.dtype).min), out=m)   # that row is shifted by a finite number and stays -inf
    fused = SHIFTED_EXP.get(xp)
    if fused is not None:                                  # CuPy: the next two lines as one kernel
        fused(m, pre)
    else:
        pre -= m                                           # (..., K)
        xp.exp(pre, out=pre)                               # (..., K)  exactly 0 where masked
    s = pre.sum(axis=-1, keepdims=True)                    # (..., 1)  >= 1 (the max gives exp(0) = 1), 0 if all masked
    xp.maximum(s, 1.0, out=s)                              #           so this changes only the all-masked rows' 0
    pre /= s                                               # (..., K)
    return pre


def _blocked_forward(qkv, H, attention_mask, b):
    """attention_forward with the queries taken b rows at a time: steps 1-6, each block against keys 0..r1-1."""
    xp = xp_of(qkv)
    B, T, C3 = qkv.shape
    C, D = C3 // 3, C3 // 3 // H
    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)   # 1. each (B, H, T, D), views
    scale = 1.0 / math.sqrt(D)
    causal = _causal_bias(b, qkv.dtype, xp)                # (b, b)  its top-left n×n corner serves a shorter block
    padding = _key_bias(attention_mask, qkv.dtype, xp)     # (B, 1, 1, T) or None
    atts = []                                              # each block's att [B, H, n, r1], cached as computed
    y = xp.empty((B, T, H, D), dtype=qkv.dtype)            # (B, T, H, D)  6. heads merged as they are written
    for r0, r1 in query_blocks(T, b):
        n = r1 - r0
        pre = (q[:, :, r0:r1] * scale) @ k[:, :, :r1].transpose(0, 1, 3, 2)   # 2. (B, H, n, r1)
        diagonal = pre[..., r0:]                           #    (B, H, n, n)  a view (module docstring: no copy-back)
        diagonal += causal[:n, :n]                         # 3. causal, on the diagonal square only
        if padding is not None:
            pre += padding[..., :r1]                       # 3. padded keys
        _softmax_rows_(pre, xp)                            # 4. (B, H, n, r1)
        atts.append(pre)                                   #    cached for the backward (keys after r1: never seen)
        y[:, r0:r1] = (pre @ v[:, :, :r1]).transpose(0, 2, 1, 3)   # 5. (B, n, H, D)
    return y.reshape(B, T, C), (q, k, v, atts, scale, b)


def _blocked_backward(dy, cache):
    """attention_backward block by block: dq of a block's rows from its keys; dk, dv summed over the blocks."""
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


def attention_probabilities(cache):
    """The attention weights [B, H, T, T] an attention_forward cache holds (reference or blocked), as one array:
    row t is query t's distribution over keys, 0 where it cannot look. A copy for the blocked cache."""
    if len(cache) != 6:
        return cache[3]                                    # the reference caches the square itself
    q, atts = cache[0], cache[3]
    B, H, T, _ = q.shape
    xp = xp_of(q)
    att = xp.zeros((B, H, T, T), dtype=q.dtype)            # (B, H, T, T)
    for (r0, r1), a in zip(query_blocks(T, cache[5]), atts):
        att[:, :, r0:r1, :r1] = a
    return att
