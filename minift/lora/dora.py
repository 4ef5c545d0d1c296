"""DoRA: weight-decomposed low-rank adaptation, with the forward and the backward written out.

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (arXiv 2402.09353), eq. (5), as Hugging Face PEFT
implements it (peft/tuners/lora/dora.py, DoraLinearLayer; LoraConfig(use_dora=True)). minift: LoRAConfig(use_dora=True).

Letters as in minift/lora/op.py: N token positions, I in features, O out features, R the rank.

DoRA splits the adapted weight into a direction and a learned magnitude per output feature:

    V  = W0 + s · Aᵀ Bᵀ            [I, O]   the LoRA-updated weight (op.py's ΔW, GPT-2's [in, out] layout)
    n  = ‖V‖_c                     [O]      the norm of each output column over the input axis (axis 0 here;
                                            PEFT's dim=1 of the nn.Linear-layout [O, I] weight)
    W' = V · (m / n)               [I, O]   m [O] = lora_magnitude_vector, trained; each column of V rescaled
    y  = x W' + b                           (the bias is not rescaled)

m starts at ‖W0‖_c, and B = 0, so W' = W0 at init. Trained: A, B and m (R·(I + O) + O numbers per matrix).

Adapter dropout, as PEFT's forward does it: the base path sees x, the DoRA path the dropped x_d,
    y = x W0 + b + x_d (W' − W0)  =  (m/n) ⊙ (x_d V) + (x − x_d) W0 + b        (= x W' + b without dropout)

Backward, with k = m/n [O] and z = x_d V [N, O] (cached by the forward), y = k ⊙ z + (x − x_d) W0 + b:
    dz = dy ⊙ k                                     [N, O]
    dk = Σ_N dy ⊙ z                                 [O]
    dm = dk / n                                     [O]
    dn = −dk ⊙ m / n²                               [O]      (k = m/n)
    dV = x_dᵀ dz + V ⊙ (dn / n)                     [I, O]   (∂n_j/∂V_ij = V_ij / n_j: the norm's own path)
    dA = s · Bᵀ dVᵀ = s · (dz B)ᵀ x_d + s · Bᵀ (V ⊙ dn/n)ᵀ           [R, I]
    dB = s · dVᵀ Aᵀ = s · dzᵀ (x_d Aᵀ) + s · (V ⊙ dn/n)ᵀ Aᵀ          [O, R]
    dx = dy W0ᵀ + dropout_backward(dz Vᵀ − dy W0ᵀ)  [N, I]   (= dz Vᵀ without dropout)
    dW0 = dV + (x − x_d)ᵀ dy                        [I, O]   only when W0 trains (never under LoRA)
dV itself is never formed: x_dᵀ dz would be the full [I, O] weight-gradient matmul that LoRA exists to skip, and
dA, dB only need it multiplied by B or A, which the low-rank products above do for 4·N·R·(I + O) FLOPs (2 per
multiply-add), plus ~6·I·O·R for rebuilding V and the norm's path.

The norm: exact or detached. DoRA §4.3 proposes to treat n = ‖V‖_c as a constant in the backward ("detached from
the gradient graph") to save training memory, and PEFT does so (weight_norm.detach()). That drops the terms with dn:
dm is unchanged, but dA and dB lose the norm path, so the detached backward is NOT the derivative of the forward —
finite differences disagree with it by design. minift's default (LoRAConfig(dora_norm="exact")) is the exact
derivative: it is what the gradient checks verify (tests/lora/test_dora.py), and a learner can compare the two.
dora_norm="detached" gives PEFT's training gradients. Both run the same forward.

merge(): W ← (W0 + ΔW) · (m/n), remembering n; unmerge(): W ← W · (n/m) − ΔW (PEFT caches the norm the same way:
after merging, W0 can no longer be read off W, so n could not be recomputed).
"""
from __future__ import annotations

from ..backend import xp_of
from ..ops import dropout_backward, dropout_forward
from .op import LoRALinear


def column_norm(v):
    """‖v‖_c: the L2 norm of each output column of an [I, O] weight, over the input axis. [I, O] -> [O]."""
    return xp_of(v).sqrt((v * v).sum(axis=0))                          # (O,)


def dora_forward(x, w, b, A, B, m, s, p=0.0, rng=None):
    """y = x W0 + b + x_d (W' − W0) with W' = m · V/‖V‖_c, V = W0 + s Aᵀ Bᵀ (= x W' + b without dropout).
    x [..., I], W0 [I, O], b [O] or None, A [R, I], B [O, R], m [O] -> y [..., O]. Returns (y, cache)."""
    I, O = w.shape
    x2 = x.reshape(-1, I)                                              # (N, I)
    xd, mask = dropout_forward(x2, p, rng, train=rng is not None)      # (N, I) the DoRA path's input
    V = w + s * (A.T @ B.T)                                            # (I, O) W0 + ΔW
    n = column_norm(V)                                                 # (O,) ‖V‖_c
    k = m / n                                                          # (O,) the magnitude per unit direction
    z = xd @ V                                                         # (N, O)
    y = z * k                                                          # (N, O) x_d W'
    if mask is not None:
        y += (x2 - xd) @ w                                             # (N, O) the base path sees the undropped x
    if b is not None:
        y += b                                                         # (N, O)
    # V is not cached: a weight-sized [I, O] array per adapter kept to the backward; it is rebuilt there (2·I·O·R FLOPs)
    return y.reshape(*x.shape[:-1], O), (x2, xd, mask, z, n, w, A, B, m, s, b is not None, x.shape)


def dora_backward(dy, cache, need_dw=False, need_db=True, detach_norm=False):
    """dy [..., O] -> (dx [..., I], dW0 [I, O] or None, db [O] or None, dA [R, I], dB [O, R], dm [O]), in the order
    of dora_forward's array inputs. need_dw=False, the default, is DoRA's case: W0 is frozen, no dW0 is computed (as
    lora_backward). detach_norm=True treats n = ‖V‖_c as a constant (DoRA §4.3, PEFT): not the exact derivative, see
    the module docstring."""
    x2, xd, mask, z, n, w, A, B, m, s, has_b, x_shape = cache
    O = w.shape[1]
    dy2 = dy.reshape(-1, O)                                            # (N, O)
    V = w + s * (A.T @ B.T)                                            # (I, O) rebuilt, as the forward made it
    k = m / n                                                          # (O,)
    # y = k ⊙ z (+ (x − x_d) W0 + b)
    dz = dy2 * k                                                       # (N, O)
    dk = (dy2 * z).sum(axis=0)                                         # (O,)
    dm = dk / n                                                        # (O,) k = m / n
    # n = ‖V‖_c: dV gets V ⊙ (dn / n), the norm path (left out when the norm is detached)
    dV_norm = None if detach_norm else V * (-dk * m / n ** 2 / n)      # (I, O) V ⊙ (dn / n), dn = −dk m / n²
    # z = x_d V with V = W0 + s Aᵀ Bᵀ: dA = s Bᵀ dVᵀ, dB = s dVᵀ Aᵀ, never forming dV = x_dᵀ dz + dV_norm
    dzB = dz @ B                                                       # (N, R)
    dA = s * (dzB.T @ xd)                                              # (R, I) s (dz B)ᵀ x_d
    dB = s * (dz.T @ (xd @ A.T))                                       # (O, R) s dzᵀ (x_d Aᵀ); x_d Aᵀ is (N, R)
    if dV_norm is not None:
        dA += s * (B.T @ dV_norm.T)                                    # (R, I) s Bᵀ (V ⊙ dn/n)ᵀ
        dB += s * (dV_norm.T @ A.T)                                    # (O, R) s (V ⊙ dn/n)ᵀ Aᵀ
    dxd = dz @ V.T                                                     # (N, I) through x_d (z = x_d V)
    if mask is None:
        dx = dxd                                                       # (N, I) no dropout: x_d is x
    else:
        dyw = dy2 @ w.T                                                # (N, I) the (x − x_d) W0 term
        dx = dyw + dropout_backward(dxd - dyw, mask)                   # (N, I) x directly, and through x_d
    dw = None
    if need_dw:
        dw = xd.T @ dz + (dV_norm if dV_norm is not None else 0)       # (I, O) dV
        if mask is not None:
            dw += (x2 - xd).T @ dy2                                    # (I, O) the (x − x_d) W0 term
    db = dy2.sum(axis=0) if (has_b and need_db) else None              # (O,)
    return dx.reshape(x_shape), dw, db, dA, dB, dm


class DoRALinear(LoRALinear):
    """The DoRA adapter of one module: LoRA's A and B plus the magnitude m ("...lora_magnitude_vector" [O], PEFT's
    saved name), running dora_forward / dora_backward. norm: "exact" | "detached" (the backward's treatment of n)."""

    def __init__(self, module, A, B, w, scale, dropout, rng, norm="exact"):
        super().__init__(module, A, B, scale, dropout, rng)
        self.params[module + ".lora_magnitude_vector"] = column_norm(w + self.delta_weight())   # (O,) ‖W0 + ΔW‖_c
        self.norm = norm
        self._merged_norm = None

    @property
    def m(self):
        return self.params[self.module + ".lora_magnitude_vector"]    # (O,)

    def forward(self, x, w, b, train=None):
        if self.merged:
            return super().forward(x, w, b)
        return dora_forward(x, w, b, self.A, self.B, self.m, self.scale, self.dropout, self._rng(train))

    def backward(self, dy, cache, grads, need_dw, need_db):
        self._refuse_if_merged()
        dx, dw, db, dA, dB, dm = dora_backward(dy, cache, need_dw=need_dw, need_db=need_db,
                                               detach_norm=self.norm == "detached")
        grads[self.module + ".lora_A.weight"] = dA
        grads[self.module + ".lora_B.weight"] = dB
        grads[self.module + ".lora_magnitude_vector"] = dm
        return dx, dw, db

    def effective_weight(self, w):
        """W' = m · V / ‖V‖_c [I, O] (W itself while merged)."""
        if self.merged:
            return w
        V = w + self.delta_weight()                                    # (I, O)
        return V * (self.m / column_norm(V))                           # (I, O)

    def _merge(self, w):
        V = w + self.delta_weight()                                    # (I, O)
        self._merged_norm = column_norm(V)                             # (O,) kept: unmerge cannot recompute it
        w[...] = V * (self.m / self._merged_norm)                      # (I, O) in place

    def _unmerge(self, w):
        w[...] = w * (self._merged_norm / self.m) - self.delta_weight()   # (I, O) in place, up to rounding
        self._merged_norm = None
