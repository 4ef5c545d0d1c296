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

Its fast twin (minift/fast/attention.py, chosen by minift/dispatch.py) runs this square for T <= 64 and, for longer
sequences, the queries a block at a time against the keys they can see: half the work, tested against this one.
With MINIFT_REFERENCE=1 the model runs this square at every length.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import xp_of
from ..errors import MiniftError
from .softmax import softmax_backward, softmax_forward


def check_attention_inputs(qkv, n_head, attention_mask):
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


def attention_forward(qkv, n_head, attention_mask=None):
    """qkv [B, T, 3C], attention_mask [B, T] (1 = real token) or None -> y [B, T, C]. Returns (y, cache)."""
    B, T, C, D = check_attention_inputs(qkv, n_head, attention_mask)
    xp = xp_of(qkv)
    H = n_head
    # 1. split: [B, T, 3C] -> [B, T, 3, H, D] -> [3, B, H, T, D]; views, nothing is copied
    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # each (B, H, T, D)
    # 2. scores; math.sqrt gives a Python float, which keeps float32 (np.sqrt's float64 would upcast: NEP 50)
    scale = 1.0 / math.sqrt(D)
    pre = (q @ k.transpose(0, 1, 3, 2)) * scale            # (B, H, T, T)  pre[t, s] = q_t · k_s / √D
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
    # backward of 2. "pre = (q @ kᵀ) * scale"
    dpre = dpre * scale                                    # (B, H, T, T)
    dq = dpre @ k                                          # (B, H, T, D)
    dk = dpre.transpose(0, 1, 3, 2) @ q                    # (B, H, T, D)
    # backward of 1. "q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)": the inverse permutation
    dqkv = xp.stack([dq, dk, dv])                          # (3, B, H, T, D)
    return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H * D)  # (B, T, 3C)


def attention_probabilities(cache):
    """The attention weights [B, H, T, T] an attention_forward cache holds: row t is query t's distribution over
    keys, 0 where it cannot look."""
    return cache[3]
