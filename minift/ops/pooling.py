"""Last-token pooling: the read-out of Hugging Face's GPT2ForSequenceClassification.

A causal model's hidden state at position t has seen tokens 0..t only, so the one that has seen the whole sequence is
the last real (non-pad) token's. The classifier reads that state: pooled[b] = x[b, last[b]].

Shapes:  B = batch, T = time, C = channels.

The last real token of a row is found by HF's rule (transformers `modeling_gpt2.py`,
GPT2ForSequenceClassification.forward: `(token_indices * non_pad_mask).argmax(-1)`), applied to attention_mask: multiply
each position index by the mask and take the argmax. (HF builds its mask from `input_ids != pad_token_id` instead, so
the two differ when a real token is the pad id, as GPT-2's eos often is; minift's batches always carry the mask.)
That is the largest index whose mask is 1, for right padding, left padding, or any pattern of holes. A row with no
real token has nothing to read: HF silently picks position 0, minift raises.

Backward: pooling copies one row per sequence, so dx is zero everywhere except dx[b, last[b]] = dpooled[b].
"""
from __future__ import annotations

from ..backend import to_numpy, xp_of
from ..errors import MiniftError


def last_token_index(attention_mask):
    """mask [B, T] (1/True = real token, 0/False = pad) -> last [B] int, the position of each row's last real token."""
    if not hasattr(attention_mask, "ndim") or attention_mask.ndim != 2:
        shape = getattr(attention_mask, "shape", None)
        raise MiniftError(f"attention_mask must be a 2-D (B, T) array, got shape {shape}")
    xp = xp_of(attention_mask)
    real = attention_mask != 0                             # (B, T) bool, works for bool, int and float masks
    has_real = to_numpy(real.any(axis=1))                  # (B,) on the host, for the error message
    if not has_real.all():
        empty = [int(i) for i in (~has_real).nonzero()[0][:10]]
        raise MiniftError(f"attention_mask row(s) {empty} have no real token (all 0): "
                          "there is no last token to read")
    positions = xp.arange(real.shape[1])                   # (T,)  0, 1, ..., T-1
    return (positions * real).argmax(axis=1)               # (B,)  largest position where the mask is 1


def pool_last_forward(x, attention_mask):
    """x [B, T, C], mask [B, T] -> pooled [B, C], each row's state at its last real token. Returns (pooled, cache)."""
    if getattr(x, "ndim", None) != 3:
        raise MiniftError(f"x must be a 3-D (B, T, C) array of hidden states, got shape {getattr(x, 'shape', None)}")
    last = last_token_index(attention_mask)                # (B,)  validates the mask
    if tuple(attention_mask.shape) != tuple(x.shape[:2]):
        raise MiniftError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected (B, T) = "
                          f"{tuple(x.shape[:2])} to match x {tuple(x.shape)}")
    xp = xp_of(x)
    last = xp.asarray(last)                                # (B,)  on x's device
    rows = xp.arange(x.shape[0])                           # (B,)
    pooled = x[rows, last]                                 # (B, C), a gather: one row per sequence
    return pooled, (rows, last, x.shape)


def pool_last_backward(dpooled, cache):
    """dpooled [B, C] -> dx [B, T, C], zero except at the pooled positions."""
    rows, last, x_shape = cache
    dx = xp_of(dpooled).zeros(x_shape, dtype=dpooled.dtype)    # (B, T, C)
    dx[rows, last] = dpooled                               # one position per row, so assigning is summing
    return dx
