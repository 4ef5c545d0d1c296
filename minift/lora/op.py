"""The LoRA op: the forward and the backward of one adapted linear, written out (dA, dB, dx, and the skipped dW);
and LoRALinear, the adapter that runs them for one module of the model (its A and B, merge and unmerge).

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685), §4.1, as Hugging Face PEFT
implements it (peft/tuners/lora/layer.py). The article minift is read with (README.md: 微调与LoRA, "Fine-tuning and
LoRA"), §3.1 ("the core idea of LoRA") and §3.2 ("LoRA in practice"). Tutorial 07 reads this file.

Letters: N token positions (any leading dimensions, B·T), I in features, O out features, R the rank r.

The adapted linear, in GPT-2's layout (W [I, O], y = x W + b, see minift/ops/linear.py):

    y = x W + b + s · dropout(x) Aᵀ Bᵀ          A [R, I] = lora_A.weight,  B [O, R] = lora_B.weight
    s = α / R                                     (α / √R with rsLoRA: Kalajdzievski 2023, arXiv 2312.03732;
                                                   why either, minift/lora/config.py)

W and b are frozen; only A and B train. B = 0 at init, so the adapted model starts as the base model, exactly.

One update, three notations. What LoRA adds to the weight, ΔW:

    LoRA paper, PEFT (nn.Linear layout, W [O, I], h = W x):   ΔW = s · B A                  [O, I]
    minift (GPT-2's Conv1D layout, W [I, O], y = x W):       ΔW = (s · B A)ᵀ = s · Aᵀ Bᵀ    [I, O]
    the article (§3.1): W' = W + A' B'ᵀ, with no scale; its A', B' are ours with s folded into one of them:
        on minift's [I, O] weight:   A' = s · Aᵀ  [I, R],  B' = B   [O, R]      (A' B'ᵀ = s Aᵀ Bᵀ)
        on PEFT's   [O, I] weight:   A' = s · B   [O, R],  B' = Aᵀ  [I, R]      (A' B'ᵀ = s B A)
      so in the paper's layout the article's "A" is the paper's B and vice versa: read the shapes, not the letters.
minift stores A and B exactly as PEFT does ([R, I] and [O, R]), so a saved adapter is a PEFT adapter.

Backward (lora_backward), from y = x W + b + s · h Bᵀ with h = x_d Aᵀ and x_d = dropout(x):
    dx = dy Wᵀ + dropout_backward(s · dy B A)       both paths reach x: their gradients add
    dB = s · dyᵀ h  = s · dyᵀ (x_d Aᵀ)               [O, N] @ [N, R]
    dA = s · (dy B)ᵀ x_d                             [R, N] @ [N, I]
    dW = xᵀ dy                                       NOT computed when W is frozen (the only FLOP LoRA saves)
With G = xᵀ dy, the full fine-tuning gradient of W, and no dropout: dB = s · Gᵀ Aᵀ and dA = s · Bᵀ Gᵀ: LoRA's
gradients are the full gradient read through the adapter's r input directions (A's rows) and r output directions
(B's columns) -- coordinates of projections onto those subspaces when the directions are orthonormal
(tests/lora/test_lora.py checks the identities).

Adapter dropout (PEFT's lora_dropout) drops the branch's input only, never the base path's.

The layer (LoRALinear, below the op) is PEFT's LoraLayer / Linear (peft/tuners/lora/layer.py): the model calls its
forward and backward in place of the plain linear's, and one delta_weight helper serves merge and unmerge.
"""
from __future__ import annotations

from ..errors import MiniftError
from ..ops import dropout_backward, dropout_forward, linear_forward


def lora_forward(x, w, b, A, B, s, p=0.0, rng=None):
    """y = x W + b + s · dropout(x) Aᵀ Bᵀ.  x [..., I], W [I, O], b [O] or None, A [R, I], B [O, R] -> y [..., O].

    Dropout with probability p drops the branch's input only, and only in a training call (an rng given).
    Returns (y, cache); the cache holds x (the plain linear keeps it too), x_d (x itself without dropout) and
    s · h = s · x_d Aᵀ (N·R numbers: LoRA's only extra activation). Scaling h, not h Bᵀ, keeps the one N×O
    temporary the branch needs (h Bᵀ, added into y) from becoming two.
    """
    I, O = w.shape
    x2 = x.reshape(-1, I)                                              # (N, I)
    xd, mask = dropout_forward(x2, p, rng, train=rng is not None)      # (N, I) the branch's input
    y = x2 @ w                                                         # (N, O) the frozen base still costs its matmul
    if b is not None:
        y += b                                                         # (N, O)
    hs = xd @ A.T                                                      # (N, R) down-projection h = x_d Aᵀ
    hs *= s                                                            # (N, R) scaled here, where it costs N·R
    y += hs @ B.T                                                      # (N, O) up-projection: + s · h Bᵀ
    return y.reshape(*x.shape[:-1], O), (x2, xd, mask, hs, w, A, B, s, b is not None, x.shape)


def lora_backward(dy, cache, need_dw=False, need_db=True):
    """dy [..., O] -> (dx [..., I], dW [I, O] or None, db [O] or None, dA [R, I], dB [O, R]),
    in the order of lora_forward's array inputs (x, W, b, A, B). need_dw=False, the default, is LoRA's case:
    W is frozen and its xᵀ dy is not computed (dW comes back None); need_dw=True also trains W (a gradient
    check of all five, or W unfrozen beside the adapter)."""
    x2, xd, mask, hs, w, A, B, s, has_b, x_shape = cache
    O = w.shape[1]
    dy2 = dy.reshape(-1, O)                                            # (N, O)
    # the base path, y = x W + b. A frozen W still costs the forward's x W and this dx matmul (2 of its 3)...
    dx = dy2 @ w.T                                                     # (N, I)
    # ...but its weight gradient xᵀ dy is skipped: that one matmul, ~1/3 of the layer's training FLOPs
    # (2·N·I·O of 6·N·I·O), is the only compute LoRA saves in the backward.
    dw = x2.T @ dy2 if need_dw else None                               # (I, O)
    db = dy2.sum(axis=0) if (has_b and need_db) else None              # (O,)
    # the branch, y += s · h Bᵀ with h = x_d Aᵀ
    dB = dy2.T @ hs                                                    # (O, R)  s · dyᵀ (x_d Aᵀ)
    dh = s * (dy2 @ B)                                                 # (N, R)  s · dy B
    dA = dh.T @ xd                                                     # (R, I)  s · (dy B)ᵀ x_d
    dxd = dh @ A                                                       # (N, I)  s · dy B A
    dx += dropout_backward(dxd, mask)                                  # (N, I) x feeds both paths: gradients add
    return dx.reshape(x_shape), dw, db, dA, dB


class LoRALinear:
    """The adapter of one module ("h.0.attn.c_attn"): owns A and B and runs lora_forward / lora_backward.

    The model calls forward(x, W, b) instead of linear_forward and backward(dy, cache, grads, need_dw, need_db)
    instead of linear_backward (GPT._linear_forward / _linear_backward); the backward writes dA and dB into grads.

    merge() / unmerge(): delta_weight() = s · Aᵀ Bᵀ [I, O] is added to W in place by merge and subtracted by
    unmerge. While merged the adapter's forward is the plain linear (adding the branch again would count it twice),
    and a backward is refused; a double merge is refused too. W after merge + unmerge equals the original up to
    float rounding (W + Δ − Δ is exact only when no bit of W is lost in the addition): about one ulp of |W| + |Δ|.

    Train or eval: the model does not tell an adapter whether a call is training (loss_and_grads) or evaluation
    (forward, loss), so an adapter has a mode, `training`, which the handle sets (minift/lora/attach.py). Adapter
    dropout is applied only when dropout > 0 and in train mode; forward(..., train=True/False) overrides the mode.
    """

    def __init__(self, module: str, A, B, scale: float, dropout: float, rng):
        self.module, self.scale, self.dropout, self.rng = module, scale, dropout, rng
        self.params = {module + ".lora_A.weight": A, module + ".lora_B.weight": B}
        self.training = True
        self.merged = False

    @property
    def A(self):
        return self.params[self.module + ".lora_A.weight"]            # (R, I)

    @property
    def B(self):
        return self.params[self.module + ".lora_B.weight"]            # (O, R)

    def trainable_params(self) -> dict:
        return dict(self.params)

    def _rng(self, train):
        """The dropout generator in a training call, None otherwise (then the branch sees x itself)."""
        active = self.training if train is None else train
        return self.rng if (active and self.dropout > 0) else None

    def forward(self, x, w, b, train=None):
        if self.merged:                   # the branch is inside W now: adding it again would count it twice
            return linear_forward(x, w, b)
        return lora_forward(x, w, b, self.A, self.B, self.scale, self.dropout, self._rng(train))

    def backward(self, dy, cache, grads, need_dw, need_db):
        self._refuse_if_merged()
        dx, dw, db, dA, dB = lora_backward(dy, cache, need_dw=need_dw, need_db=need_db)
        self._keep_grads(grads, dA, dB)
        return dx, dw, db

    def _keep_grads(self, grads, dA, dB):
        """dA and dB into the model's grads, under the adapter's parameter names."""
        grads[self.module + ".lora_A.weight"] = dA
        grads[self.module + ".lora_B.weight"] = dB

    def _refuse_if_merged(self):
        if self.merged:
            raise MiniftError(f"the adapter of {self.module} is merged into its base weight, so it has no gradient "
                              "of its own: call lora.unmerge() before training")

    def delta_weight(self):
        """ΔW = s · Aᵀ Bᵀ [I, O]: PEFT's get_delta_weight (s · B A, [O, I]) in GPT-2's layout."""
        return self.scale * (self.A.T @ self.B.T)                      # (I, O)

    def effective_weight(self, w):
        """The weight the adapted linear computes with, W + ΔW [I, O] (W itself while merged)."""
        return w if self.merged else w + self.delta_weight()           # (I, O)

    def merge(self, w):
        if self.merged:
            raise MiniftError(f"the adapter of {self.module} is already merged (merging twice would add ΔW twice)")
        self._merge(w)
        self.merged = True

    def unmerge(self, w):
        if not self.merged:
            raise MiniftError(f"the adapter of {self.module} is not merged: nothing to unmerge")
        self._unmerge(w)
        self.merged = False

    def _merge(self, w):
        w += self.delta_weight()                                       # (I, O) in place: W + s Aᵀ Bᵀ

    def _unmerge(self, w):
        w -= self.delta_weight()                                       # (I, O) in place: back to W, up to rounding
