"""4-bit quantisation of a frozen weight, written out: NormalFloat-4 (NF4), plain int4 and FP4, blockwise absmax
scaling, two codes packed per byte, and double quantisation of the scales.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv 2305.14314), §3 ("4-bit NormalFloat
Quantization", "Double Quantization"); the published NF4 table is the paper's Appendix E and bitsandbytes'
`csrc/kernels.cu` (tests/test_quant.py checks ours against it). QLoRA (minift/lora/qlora.py) keeps each adapted
linear's frozen W as a `Quantized`.

Letters: N the number of weights (W.size), K the block size (64), NB = ⌈N / K⌉ blocks, L the block size of the
second quantisation (256), ND = ⌈NB / L⌉ second-level blocks.

A 4-bit code is a table of 16 values v[0..15] in [-1, 1] (int4's v[8] = -8/7 is the one exception, never chosen).
Blockwise absmax quantisation of a block x ∈ R^K (the paper's §2, eq. 1-2, with the code's table in place of int8;
the paper's constant is 127/absmax for int8, here it is absmax itself, as bitsandbytes stores it):

    c = max_k |x_k|                          the block's absmax, one float32 per block
    q_k = argmin_j |x_k / c - v[j]|          the nearest code value: a 4-bit index
    x̃_k = v[q_k] · c                         dequantised

so each element's error is at most half the gap between the two code values around x_k / c, times c.
Two 4-bit indices share a byte: the first element of a pair in the high nibble, as bitsandbytes packs them.

Double quantisation (§3): the NB scales c are themselves quantised. What this module does, exactly:

    μ = mean(c)                              one float32 for the whole tensor (bitsandbytes keeps one per tensor)
    per block of L = 256 centred scales  d = c - μ  (the last block padded with zeros):
        s = max |d|                          one float32 per 256 scales (the paper's c_1^FP32)
        e = round(127 · d / s)               int8 in [-127, 127] (the paper's c_2^FP8)
    c̃ = e · s / 127 + μ                      what dequantize multiplies the 4-bit codes by

The paper quantises d to "8-bit Floats"; bitsandbytes uses its dynamic 8-bit map. Here the 8-bit code is symmetric
int8 absmax, the simplest 8-bit code, with the same memory (8 bits a scale plus 32 bits per 256): each c̃ is within
half a step, s/254, of c (tests/test_quant.py), and a scale that small a step above zero may round to c̃ ≤ 0.
Bits per parameter, the paper's sums:

    4 + 32/64 = 4.5                          without double quantisation
    4 + 8/64 + 32/(64·256) ≈ 4.127           with it (plus 32 bits for μ per tensor, which the paper leaves out)

Arrays stay where W lives (NumPy or CuPy, `backend.xp_of`); a code table (16 numbers) is built on the host and
moved to the device where it is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .backend import xp_of
from .errors import MiniftError

CODES = ("nf4", "int4", "fp4")
BLOCK = 64              # K, QLoRA's block size for the weights
DQ_BLOCK = 256          # L, QLoRA's block size for the second quantisation
NF4_OFFSET = 0.9677083  # δ: the probability of the outermost NF4 quantile (bitsandbytes' create_normal_map)
INT8_MAX = 127          # the second quantisation's grid: e ∈ [-127, 127]


# ----------------------------------------------------------------------------------------------------------------
# the three 4-bit codes: 16 values each, indexed by the 4-bit pattern that stores them

def nf4_values() -> np.ndarray:
    """[] -> [16] float64, ascending: NormalFloat-4 from the quantiles of N(0, 1) (QLoRA §3).

    A symmetric type from 16 quantiles has no exact zero, so the paper builds two halves and joins them: 2^(k-1) + 1
    = 9 quantiles for the positive half and 2^(k-1) = 8 for the negative one, each at evenly spaced probabilities from
    δ down to ½ (where the quantile is 0), then drops one of the two zeros: 8 positive values, 7 negative, one 0.
    Q(1) = ∞, so the outermost probability is δ = 0.9677083 (bitsandbytes' number; it equals, to 7 digits,
    ½[(1 - 1/32) + (1 - 1/30)], the centre of the last of 16 and of 15 equal-probability bins, averaged -- that
    reading is ours). Dividing by Q(δ) puts both ends at exactly -1 and 1.
    """
    Q = NormalDist().inv_cdf                                        # the quantile function of N(0, 1)
    positive = [Q(p) for p in np.linspace(NF4_OFFSET, 0.5, 9)[:-1]]    # 8 values > 0 (p = ½ gives the 0 dropped)
    negative = [-Q(p) for p in np.linspace(NF4_OFFSET, 0.5, 8)[:-1]]   # 7 values < 0
    v = np.sort(np.array(positive + [0.0] + negative))             # (16,) one exact zero, at index 7
    return v / Q(NF4_OFFSET)                                        # (16,) normalised to [-1, 1]


def int4_values() -> np.ndarray:
    """[] -> [16] float64 by pattern: the signed 4-bit integers k = -8..7 (two's complement, pattern k mod 16),
    scaled by 1/7 so that the symmetric absmax maps to ±7. Level -8/7 lies outside [-1, 1] and is never chosen:
    symmetric int4 uses 15 of its 16 patterns, evenly spaced 1/7 apart."""
    k = np.arange(16)                                               # (16,) patterns 0..15
    return np.where(k < 8, k, k - 16) / 7.0                         # (16,) k/7, pattern 8 is -8/7


def fp4_values() -> np.ndarray:
    """[] -> [16] float64 by pattern: FP4 e2m1 (1 sign, 2 exponent bits with bias 1, 1 mantissa bit; the OCP
    microscaling FP4), divided by its largest value 6. Patterns 0000..0111 are 0, 0.5, 1, 1.5, 2, 3, 4, 6 and
    1000..1111 their negatives (1000 is -0): 15 distinct values, fine near zero, coarse at the ends."""
    p = np.arange(16)                                               # (16,) patterns s e1 e0 m
    s, e, m = p >> 3, (p >> 1) & 3, p & 1                           # (16,) sign, exponent, mantissa bits
    magnitude = np.where(e == 0, m * 0.5, (1.0 + m * 0.5) * 2.0 ** (e - 1))   # (16,) subnormal when e = 0
    return np.where(s == 1, -magnitude, magnitude) / 6.0            # (16,) normalised to [-1, 1]


_TABLES = {"nf4": nf4_values, "int4": int4_values, "fp4": fp4_values}


def code_values(code: str = "nf4") -> np.ndarray:
    """[] -> [16] float32 host array: the code's value for each 4-bit pattern, as dequantize looks them up."""
    if code not in _TABLES:
        raise MiniftError(f"code={code!r} is not one of {CODES}")
    return _TABLES[code]().astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# the quantised tensor

@dataclass(frozen=True)
class QuantizedScales:
    """The block scales c after double quantisation: c̃ = e · s / 127 + μ."""
    codes: object       # [NB] int8, e
    scale: object       # [ND] float32, s: the absmax of each block of L centred scales
    mean: object        # [] float32, μ
    block: int          # L


@dataclass(frozen=True)
class Quantized:
    """A weight in 4 bits: what QLoRA keeps of a frozen W instead of W itself."""
    packed: object      # [NB, K/2] uint8: two 4-bit patterns a byte, the first of each pair in the high nibble
    absmax: object      # [NB] float32, c; None when double-quantised (then `scales` holds them)
    scales: QuantizedScales | None
    shape: tuple        # W's shape
    dtype: str          # W's dtype: what dequantize returns by default
    code: str           # "nf4" | "int4" | "fp4"
    block: int          # K

    @property
    def size(self) -> int:
        """The number of weights it stores: W.size (as an array's, so parameter counts include it)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: the packed codes and the scales (with double quantisation: e, s and μ)."""
        if self.scales is None:
            return self.packed.nbytes + self.absmax.nbytes
        return self.packed.nbytes + self.scales.codes.nbytes + self.scales.scale.nbytes + self.scales.mean.nbytes


# ----------------------------------------------------------------------------------------------------------------
# quantize / dequantize

def quantize(W, code: str = "nf4", block: int = BLOCK, double_quant: bool = False,
             dq_block: int = DQ_BLOCK) -> Quantized:
    """W [any shape], float -> Quantized: 4-bit patterns [NB, K/2] packed, absmax [NB] (or double-quantised).

    W is read in float32 (the dtype the scales are kept in), flattened, and zero-padded to whole blocks.
    """
    _check(W, code, block, dq_block)
    xp = xp_of(W)
    x = _blocks(W.astype(xp.float32).reshape(-1), block)            # (NB, K)
    c = xp.abs(x).max(axis=1)                                       # (NB,)  absmax per block
    xhat = x / xp.where(c > 0, c, 1.0)[:, None]                     # (NB, K)  in [-1, 1]; a zero block stays 0
    q = nearest(xhat, code_values(code))                            # (NB, K)  uint8 patterns
    scales = quantize_scales(c, dq_block) if double_quant else None
    return Quantized(packed=pack_nibbles(q), absmax=None if double_quant else c, scales=scales,
                     shape=tuple(W.shape), dtype=str(W.dtype), code=code, block=block)


def dequantize(Qw: Quantized, dtype=None):
    """Quantized -> W̃ [Qw.shape] in `dtype` (default W's): x̃ = v[q] · c, block by block, computed in float32."""
    xp = xp_of(Qw.packed)
    q = unpack_nibbles(Qw.packed)                                   # (NB, K)  uint8 patterns
    v = xp.asarray(code_values(Qw.code))                            # (16,)
    c = Qw.absmax if Qw.scales is None else dequantize_scales(Qw.scales, q.shape[0])   # (NB,)
    x = v[q.astype(xp.int32)] * c[:, None]                          # (NB, K)  x̃ = v[q] · c
    n = math.prod(Qw.shape)
    return x.reshape(-1)[:n].reshape(Qw.shape).astype(dtype or Qw.dtype)   # (shape)  the padding dropped


def nearest(xhat, values: np.ndarray):
    """xhat [...] in [-1, 1], values [16] host -> [...] uint8: the pattern of the nearest code value.

    The distinct values, sorted, split the line at their midpoints; searchsorted counts the midpoints below x̂, which
    is the rank of the nearest value (a tie goes to the lower). -0 and 0 are one value: pattern 0 wins.
    """
    xp = xp_of(xhat)
    levels, pattern = np.unique(values, return_index=True)          # (U,) ascending, (U,) first pattern of each
    mids = xp.asarray((levels[1:] + levels[:-1]) / 2)               # (U-1,)  the decision boundaries
    rank = xp.searchsorted(mids, xhat)                              # (...)  index into levels
    return xp.asarray(pattern.astype(np.uint8))[rank]               # (...)  4-bit patterns


def pack_nibbles(q):
    """q [..., 2P] uint8 in 0..15 -> [..., P] uint8: byte = 16 · q[2i] + q[2i+1]."""
    return (q[..., 0::2] << 4) | q[..., 1::2]                       # (..., P)


def unpack_nibbles(packed):
    """packed [..., P] uint8 -> [..., 2P] uint8: the high nibble first, then the low one."""
    xp = xp_of(packed)
    pairs = xp.stack([packed >> 4, packed & 15], axis=-1)           # (..., P, 2)
    return pairs.reshape(*packed.shape[:-1], -1)                    # (..., 2P)


def quantize_scales(c, block: int = DQ_BLOCK) -> QuantizedScales:
    """c [NB] float32 -> QuantizedScales: e [NB] int8, s [ND] float32, μ [] float32 (double quantisation)."""
    xp = xp_of(c)
    mu = xp.asarray(c.mean(), dtype=xp.float32)                     # ()  one per tensor
    d = _blocks(c - mu, block)                                      # (ND, L)  centred, zero-padded
    s = xp.abs(d).max(axis=1)                                       # (ND,)  absmax per block of scales
    e = xp.rint(INT8_MAX * d / xp.where(s > 0, s, 1.0)[:, None])    # (ND, L)  in [-127, 127]
    return QuantizedScales(codes=e.reshape(-1)[:c.shape[0]].astype(xp.int8), scale=s,
                           mean=mu, block=block)


def dequantize_scales(Qc: QuantizedScales, n_blocks: int):
    """QuantizedScales -> c̃ [NB] float32: c̃ = e · s / 127 + μ."""
    xp = xp_of(Qc.scale)
    s = xp.repeat(Qc.scale, Qc.block)[:n_blocks]                    # (NB,)  each scale's block's s
    return Qc.codes.astype(xp.float32) * (s / INT8_MAX) + Qc.mean   # (NB,)


def _blocks(flat, block: int):
    """flat [N] -> [⌈N/block⌉, block], the last block padded with zeros."""
    xp = xp_of(flat)
    pad = -flat.shape[0] % block
    if pad:
        flat = xp.concatenate([flat, xp.zeros(pad, dtype=flat.dtype)])   # (NB·block,)
    return flat.reshape(-1, block)                                  # (NB, block)


# ----------------------------------------------------------------------------------------------------------------
# memory

def bits_per_parameter(block: int = BLOCK, double_quant: bool = False, dq_block: int = DQ_BLOCK) -> float:
    """Bits a weight costs in the limit of a large tensor: 4 for its pattern plus its share of the scales.

    4 + 32/K without double quantisation; 4 + 8/K + 32/(K·L) with it (the per-tensor μ is not counted, as in the
    paper). For one tensor, padding and μ included, use `stored_bits_per_parameter`.
    """
    _check_block(block, "block")
    _check_block(dq_block, "dq_block", even=False)
    return 4 + (8 / block + 32 / (block * dq_block) if double_quant else 32 / block)


def quantized_nbytes(n: int, double_quant: bool = False, block: int = BLOCK, dq_block: int = DQ_BLOCK) -> int:
    """Bytes a Quantized of n weights stores (its .nbytes), from n alone: NB = ⌈n/K⌉ blocks of K/2 packed bytes,
    and a float32 absmax per block, or with double quantisation an int8 per block, a float32 per L of them and one
    float32 μ (what the memory model counts for QLoRA's base)."""
    NB = -(-n // block)
    if double_quant:
        return NB * (block // 2 + 1) + 4 * -(-NB // dq_block) + 4
    return NB * (block // 2 + 4)


def stored_bits_per_parameter(Qw: Quantized) -> float:
    """The bits one quantised tensor actually stores, per weight of W (its padding and μ included)."""
    return 8 * Qw.nbytes / math.prod(Qw.shape)


# ----------------------------------------------------------------------------------------------------------------
# input checks

def _check(W, code, block, dq_block):
    if not hasattr(W, "dtype") or not hasattr(W, "reshape"):
        raise MiniftError(f"quantize: W must be a NumPy or CuPy array, got {type(W).__name__}")
    if W.dtype.kind != "f":
        raise MiniftError(f"quantize: W has dtype {W.dtype}; expected a floating-point array")
    if W.size == 0:
        raise MiniftError(f"quantize: W has shape {tuple(W.shape)}: nothing to quantise")
    if code not in _TABLES:
        raise MiniftError(f"quantize: code={code!r} is not one of {CODES}")
    _check_block(block, "block")
    _check_block(dq_block, "dq_block", even=False)
    if not bool(xp_of(W).isfinite(W).all()):
        raise MiniftError("quantize: W holds NaN or inf; a block's absmax would be meaningless")


def _check_block(block, name, even=True):
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block <= 0 or (even and block % 2):
        why = "a positive even integer (two 4-bit codes share a byte)" if even else "a positive integer"
        raise MiniftError(f"{name}={block!r} must be {why}")
