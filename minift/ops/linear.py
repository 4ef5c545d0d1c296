"""Linear layer in GPT-2's layout: y = x W + b, with W stored [in, out].

GPT-2 (and Hugging Face's `Conv1D`) keeps W as [in, out], so the forward is `x @ W` with no transpose; PyTorch's
nn.Linear keeps [out, in] and computes x Wᵀ. A head stored in nn.Linear's layout (e.g. `score.weight`
[num_labels, C]) is used here by passing its transpose.

Shapes:  N = any leading dimensions (B, T, ...), I = in features, O = out features.

Backward, from y = x W + b with upstream gradient dy = dL/dy:
  dx = dy Wᵀ                 [N, O] @ [O, I]  -> [N, I]
  dW = xᵀ dy                 summed over every leading position: [I, N] @ [N, O] -> [I, O]
  db = Σ_N dy                [O]
Each is one matmul (or a sum) and each can be skipped: a frozen W never pays for its xᵀ dy — this skipped matmul is
exactly where LoRA saves time (see minift/lora/op.py).
"""
from __future__ import annotations


def linear_forward(x, w, b=None):
    """[..., I] @ [I, O] (+ [O]) -> [..., O]. Returns (y, cache)."""
    I, O = w.shape
    x2 = x.reshape(-1, I)                                  # (N, I): one big matmul instead of a batched one
    y2 = x2 @ w                                            # (N, O)
    if b is not None:
        y2 += b                                            # (N, O), broadcast over rows
    y = y2.reshape(*x.shape[:-1], O)                       # (..., O)
    return y, (x2, w, b is not None, x.shape)


def linear_backward(dy, cache, need_dx=True, need_dw=True, need_db=True):
    """dy [..., O] -> (dx [..., I], dw [I, O], db [O]); a gradient not needed (or b absent) is returned as None."""
    x2, w, has_b, x_shape = cache
    I, O = w.shape
    dy2 = dy.reshape(-1, O)                                # (N, O)
    dx = (dy2 @ w.T).reshape(x_shape) if need_dx else None  # (..., I)
    dw = x2.T @ dy2 if need_dw else None                  # (I, O)
    db = dy2.sum(axis=0) if (has_b and need_db) else None  # (O,)
    return dx, dw, db
