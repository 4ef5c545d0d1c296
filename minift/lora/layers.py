"""LoRALinear: the adapter of one linear -- its A and B, the op's forward and backward, merge and unmerge.

PEFT's LoraLayer / Linear (peft/tuners/lora/layer.py): one delta_weight helper serves merge and unmerge, and a
double merge is refused. The math is minift/lora/op.py's.

merge() / unmerge(): delta_weight() = s · Aᵀ Bᵀ [I, O] is added to W in place by merge and subtracted by unmerge.
While merged the adapter's forward is the plain linear (adding the branch again would count it twice), and a backward
is refused. W after merge + unmerge equals the original up to float rounding (W + Δ − Δ is exact only when no bit of
W is lost in the addition): about one ulp of |W| + |Δ|.

Train or eval: the model does not tell an adapter whether a call is training (loss_and_grads) or evaluation
(forward, loss), so an adapter has a mode, `training`, which the handle sets (minift/lora/attach.py). Adapter dropout
is applied only when dropout > 0 and in train mode; forward(..., train=True/False) overrides the mode.
"""
from __future__ import annotations

from ..errors import MiniftError
from ..ops import linear_forward
from .op import lora_backward, lora_forward


class LoRALinear:
    """The adapter of one module ("h.0.attn.c_attn"): owns A and B and runs lora_forward / lora_backward.

    The model calls forward(x, W, b) instead of linear_forward and backward(dy, cache, grads, need_dw, need_db)
    instead of linear_backward (GPT._linear_forward / _linear_backward); the backward writes dA and dB into grads.
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
        grads[self.module + ".lora_A.weight"] = dA
        grads[self.module + ".lora_B.weight"] = dB
        return dx, dw, db

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
