"""QLoRA's adapted linear: LoRA on a frozen base stored in 4 bits (NF4, int4 or FP4), dequantised where it is used.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv 2305.14314), §3 eq. (5): the frozen W
is kept as a `Quantized` (minift/quant.py: 4-bit patterns and block scales) and dequantised, W̃ = deq(W), each time
the layer computes with it; A and B are LoRA's (minift/lora/op.py), trained in the compute dtype.

Letters as in minift/lora/op.py: N token positions, I in features, O out features, R the rank.

    forward    W̃ = deq(W)                          [I, O]  a transient: made, used, dropped
               y = x W̃ + b + s · dropout(x) Aᵀ Bᵀ   = lora_forward(x, W̃, b, A, B, s)
    backward   W̃ = deq(W)                          [I, O]  dequantised again, not kept from the forward
               dx, dA, dB (and db)                  = lora_backward(dy, cache with W̃), need_dw=False
               dW                                   never: W is frozen, and a 4-bit W has no float to update

One mechanism: the op calls lora_forward / lora_backward on W̃, so dA, dB, dx are LoRA's exactly (bitwise those of
LoRA run on deq(W), tests/lora/test_qlora.py). The only change is what the cache keeps: lora_forward's cache holds
W; here that slot is emptied and the Quantized kept instead (0.5625 bytes a weight, 4 + 32/64 bits; 0.516 with
double quantisation).

What the memory holds, per adapted linear (b_w the compute dtype's bytes, 4 for float32):
    between forward and backward   x [N, I] (x_d too with dropout), s·h [N, R], the dropout mask; the Quantized.
                                   No array of W's size (the float W̃ is gone).
    peak inside forward/backward   the above, y or dx, plus W̃ [I, O] and the dequantisation's workspace.
                                   dispatch.dequantize runs the fast twin (fast/dequant.py): W̃ written straight
                                   into its one array, a chunk of blocks at a time (one CUDA kernel on CuPy), so
                                   the workspace is at most 256 KiB (the gather's indices, a float32 chunk) plus,
                                   with double quantisation, the scales c̃ (4 bytes a block). tracemalloc measures
                                   1.07 float32 copies of W̃ for a 512 × 1024 W (1.08 with double quantisation;
                                   tests/lora/test_qlora.py, bound W̃ + that workspace + W̃/20). The reference
                                   (quant.dequantize, MINIFT_REFERENCE=1) works on the whole tensor: unpacked
                                   patterns (1 byte a weight), their int32 indices (4), gathered values v[q] and
                                   v[q]·c in float32 (4 each), then the cast to the compute dtype (b_w): 2.3 float32
                                   copies of W̃ (bound 3).
"""
from __future__ import annotations

from .. import dispatch
from ..errors import MiniftError
from ..quant import BLOCK, Quantized, quantize
from .op import LoRALinear, lora_backward, lora_forward

W_SLOT = 4      # where lora_forward's cache keeps W: (x2, xd, mask, hs, w, A, B, s, has_b, x_shape)


def qlora_forward(x, Qw, b, A, B, s, p=0.0, rng=None):
    """y = x deq(W) + b + s · dropout(x) Aᵀ Bᵀ.  x [..., I], Qw: Quantized of W [I, O], b [O] or None, A [R, I],
    B [O, R] -> y [..., O]. Returns (y, cache): lora_forward's cache with W's slot emptied, and Qw.

    W̃ = deq(W) is made in x's dtype (the compute dtype), used for x W̃, and dropped when this returns."""
    check_qlora_inputs(x, Qw, b, A, B)
    w = dispatch.dequantize(Qw, dtype=x.dtype)                         # (I, O) the transient W̃
    y, cache = lora_forward(x, w, b, A, B, s, p, rng)                  # (..., O) LoRA's forward on W̃
    assert cache[W_SLOT] is w, "lora_forward's cache layout changed: update W_SLOT"
    cache = cache[:W_SLOT] + (None,) + cache[W_SLOT + 1:]              # W̃ is not kept to the backward
    return y, (cache, Qw)


def qlora_backward(dy, cache, need_db=True):
    """dy [..., O] -> (dx [..., I], None, db [O] or None, dA [R, I], dB [O, R]), in the order of qlora_forward's
    array inputs (x, Qw, b, A, B). Qw's slot is always None: W is frozen and quantised, so no dW = xᵀ dy is computed
    (lora_backward with need_dw=False); W̃ is dequantised again for dx = dy W̃ᵀ + the branch's s · dy B A."""
    lora_cache, Qw = cache
    x2 = lora_cache[0]                                                 # (N, I) the input, its dtype the compute one
    w = dispatch.dequantize(Qw, dtype=x2.dtype)                        # (I, O) W̃ again, as the forward made it
    full = lora_cache[:W_SLOT] + (w,) + lora_cache[W_SLOT + 1:]
    dx, dw, db, dA, dB = lora_backward(dy, full, need_dw=False, need_db=need_db)   # dw is None: never computed
    return dx, dw, db, dA, dB


def check_qlora_inputs(x, Qw, b, A, B):
    """MiniftError naming the input, for what qlora_forward cannot use: a W that is not a 2-D Quantized, a non-float
    x, or shapes of x, b, A, B that do not fit W's [I, O]."""
    if not isinstance(Qw, Quantized):
        raise MiniftError(f"qlora: Qw must be a minift.quant.Quantized (quantize(W)), got {type(Qw).__name__}")
    if len(Qw.shape) != 2:
        raise MiniftError(f"qlora: Qw holds a W of shape {Qw.shape}; a linear's W is 2-D [in, out]")
    I, O = Qw.shape
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise MiniftError(f"qlora: x must be a floating-point array, got "
                          f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 1 or x.shape[-1] != I:
        raise MiniftError(f"qlora: x has shape {tuple(x.shape)}; its last axis must be Qw's in features I = {I}")
    if A.ndim != 2 or A.shape[1] != I:
        raise MiniftError(f"qlora: A has shape {tuple(A.shape)}, expected [R, {I}] for Qw of shape {Qw.shape}")
    if B.shape != (O, A.shape[0]):
        raise MiniftError(f"qlora: B has shape {tuple(B.shape)}, expected [{O}, {A.shape[0]}] for Qw of shape "
                          f"{Qw.shape} and A of shape {tuple(A.shape)}")
    if b is not None and tuple(b.shape) != (O,):
        raise MiniftError(f"qlora: b has shape {tuple(b.shape)}, expected [{O}] for Qw of shape {Qw.shape}")


class QLoRALinear(LoRALinear):
    """The QLoRA adapter of one module: W quantised once at construction (quantize(W, code, block, double_quant)),
    A, B and s as LoRALinear's, running qlora_forward / qlora_backward.

    The base weight lives here, in 4 bits (`Qw`); the model's call forward(x, w, b) / effective_weight(w) passes
    its `w` for LoRALinear's signature, and it must be None or this Qw (a float W beside the 4-bit one would be the
    memory QLoRA exists to save, and which of the two computes would be ambiguous).

    Merging: a 4-bit W cannot take ΔW in place (ΔW is far below a code step, and the sum is not on the code's grid),
    so merge() / unmerge() are refused. merged_weight() gives the merged weight deq(W) + s · Aᵀ Bᵀ in the compute
    dtype: the dequantised base (W's quantisation error stays in it: it is not the original W + ΔW) plus ΔW, the sum
    rounded once (each entry within half an ulp of deq(W) + ΔW, ΔW carrying its matmul's rounding), so it equals
    the adapted forward's weight up to reassociation. quantize(merged_weight()) is a 4-bit merged model at a
    second quantisation error, which can round most of a small ΔW away.
    """

    def __init__(self, module, w, A, B, scale, dropout, rng, code="nf4", block=BLOCK, double_quant=False):
        super().__init__(module, A, B, scale, dropout, rng)
        if getattr(w, "ndim", None) != 2:
            raise MiniftError(f"QLoRALinear({module}): w must be a 2-D float array [in, out], got "
                              f"{getattr(w, 'shape', type(w).__name__)}")
        self.Qw = quantize(w, code=code, block=block, double_quant=double_quant)    # frozen, 4 bits a weight

    def _check_w(self, w):
        if w is not None and w is not self.Qw:
            raise MiniftError(f"the QLoRA adapter of {self.module} holds its base weight in 4 bits (adapter.Qw); "
                              f"pass w=None or adapter.Qw, not a {type(w).__name__}")

    def dequantized_weight(self, dtype="float32"):
        """W̃ = deq(W) [I, O] in `dtype`: the frozen weight the layer computes with."""
        return dispatch.dequantize(self.Qw, dtype=dtype)               # (I, O)

    def forward(self, x, w=None, b=None, train=None):
        self._check_w(w)
        return qlora_forward(x, self.Qw, b, self.A, self.B, self.scale, self.dropout, self._rng(train))

    def backward(self, dy, cache, grads, need_dw=False, need_db=True):
        if need_dw:
            raise MiniftError(f"the base weight of {self.module} is quantised and frozen: it has no gradient "
                              "(QLoRA trains A and B only)")
        dx, _, db, dA, dB = qlora_backward(dy, cache, need_db=need_db)
        self._keep_grads(grads, dA, dB)
        return dx, None, db

    def merged_weight(self):
        """deq(W) + s · Aᵀ Bᵀ [I, O] in the compute dtype (A's; float32 in training): the dequantised base plus ΔW."""
        return self.dequantized_weight(self.A.dtype) + self.delta_weight()   # (I, O)

    def effective_weight(self, w=None):
        """The weight the adapted linear computes with: merged_weight() (the compute dtype)."""
        self._check_w(w)
        return self.merged_weight()

    def merge(self, w=None):
        raise MiniftError(f"the QLoRA adapter of {self.module} cannot merge into its 4-bit base in place: "
                          "merged_weight() returns deq(W) + ΔW in the compute dtype (quantize it again for 4 "
                          "bits, at a second rounding)")

    def unmerge(self, w=None):
        raise MiniftError(f"the QLoRA adapter of {self.module} is never merged: nothing to unmerge")
