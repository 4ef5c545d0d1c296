"""Training memory, predicted from the code and measured: where the bytes of one training step go.

The article (README.md) §5.1 claims "LoRA: ~80% less memory". This module counts what minift really holds during a step
(forward + hand-written backward + optimizer) and measures it, so a learner can see when that claim holds.

Letters: B batch, T time (seq), N = B·T token positions, C channels (n_embd), F = 4C the MLP's width, V vocab,
H heads, L blocks (n_layer), P positions (n_ctx), K labels, R LoRA rank, f bytes per float (4 for float32; per kind
of array under mixed precision, see Precision below).

What a step holds (`predict_memory`; every count below is read off the code, in elements, times f bytes):

| term        | formula (elements; x f bytes)                      | where it lives in minift                       |
|-------------|----------------------------------------------------|------------------------------------------------|
| parameters  | Σ every weight, + R·(in + out) per LoRA adapter    | model.all_params()                             |
| gradients   | Σ trainable weights only                           | grads: a frozen weight gets none (no xᵀ dy)    |
| optimizer   | 2·Σ trainable (AdamW m, v); SGD 0, momentum 1·     | optim.AdamW.state                              |
| activations | per block: 20·N·C + 2·N + B·H·T² (op by op below)  | the forward's caches, kept to the backward end |
|             | (only the blocks the backward visits, see below)   |                                                |
|             | + ln_f: 2·N·C + N (x̂, rstd; h, the head's input)   | layernorm and linear caches                    |
|             | + LM head: 2·N·V (logits; softmax p) + 17·N bytes  | loss_and_grads' logits; cross_entropy's cache  |
|             | + LoRA: N·R per adapted linear (x·Aᵀ)              | the adapter's cache (x is the linear's already)|
|             | + dropout (cfg.dropout > 0): (2L + 1)·N·C masks    | dropout caches                                 |
| workspace   | the backward's temporaries at the peak (below)     | locals of the backward functions               |
| total       | the sum: the predicted peak of one step            |                                                |

(LoRA dropout > 0 would add a mask and the dropped input, N·in each, per adapter: not counted; its default is 0.)

Activations of one block, op by op (what each forward's cache keeps alive):

    ln_1          x̂ (N·C) and rstd (N)                          layernorm_forward's cache
    c_attn        its input a = ln_1(x): N·C                     linear caches x; LayerNorm keeps x̂, not its output
    attention     qkv: 3·N·C (q, k, v are views of it), att: B·H·T² (the softmax probabilities); for T > b, the
                  blocked path (ATTENTION_BLOCK = b) keeps only each query block against the keys it sees:
                  B·H·Σ n·r1 = B·H·T²·(1 + b/T)/2 when b divides T (attention_cached)
    attn.c_proj   its input, the merged heads: N·C               a copy: merging heads is a transposed reshape
    ln_2          x̂ (N·C) and rstd (N);  mlp.c_fc's input m: N·C
    GELU          its input f (F·N = 4·N·C) and tanh(u) (4·N·C)  gelu_forward's cache (x, t)
    mlp.c_proj    its input g = gelu(f): 4·N·C
    sum           (1 + 1 + 3 + 1 + 1 + 1 + 4 + 4 + 4)·N·C + 2·N + B·H·T² = 20·N·C + 2·N + B·H·T²

The residual stream x is never cached (LayerNorm keeps x̂ instead), and neither are the outputs of the two c_proj.

Which blocks count: the backward goes down only to the lowest tensor that trains (model.backward_floor). The blocks
below it run their forward and drop their caches at once, and have no backward; above it every block caches all of
the table. So freezing the lowest k blocks (method "freeze") removes k blocks of activations as well as their
gradients and optimizer state, and a classification head alone (method "head") keeps almost nothing: its peak is
the forward of one block, that block's caches while it runs plus 5·N·C (the residual stream in and out, residual 1,
and the outputs o and y of the two c_proj). LoRA on every block visits every block.

Within a visited block every linear caches its input whether its weight trains or not: the forward knows the floor,
not which weights of a visited block will skip their xᵀ dy. A frozen *plain* linear only needs W for dx = dy Wᵀ, so
that input is kept for nothing (PyTorch's autograd does not save it); a LoRA-adapted frozen linear does need it, for
dA = s·(dy B)ᵀ x.

Workspace: the backward keeps every cache until it returns (GPT.loss_and_grads holds them all), so the peak comes
late, inside the lowest visited block's attention backward (block 0 unless the lowest blocks are frozen), when
almost every gradient already exists. At that moment it holds
dlogits (N·V, a copy of p), dh (N·C), the block's locals dx, dm, dx', datt (4·N·C) and dg, df (2·N·F), and inside
attention_backward datt, dpre (2·B·H·T²) and dq, dk, dv, their stack and its merged copy (9·N·C):
    A = N·V + 22·N·C + 2·B·H·T²  −  the gradients not yet made (that block's c_attn and ln_1, wpe)
That is the reference attention. The model runs the blocked fast path when T > ATTENTION_BLOCK = b
(minift/fast/attention.py), which never holds a T×T temporary: its backward holds dqkv (3·N·C), and for one query
block of n rows against r1 keys its dv and dk parts (B·r1·C each) and its datt and dpre (B·H·n·r1 each), never all
four at once: dv with datt and dpre, then dv with dk and dpre.
So A = N·V + 16·N·C + max(B·r1·C + 2·B·H·n·r1, 2·B·r1·C + B·H·n·r1) − ...
at the block where that is largest (attention_workspace); with heads of up to b dims the first term wins. Its cached
att is the blocks only, B·H·T²·(1 + b/T)/2 (attention_cached).
Five other moments can be higher. Right after attention, that block's ln_1 backward holds dqkv (3·N·C), da (N·C),
and dx̂ with one temporary (2·N·C): N·V + 19·N·C − (ln_1, wpe); it wins when the attention's blocks are small next
to N·C (few, wide heads) and c_attn's gradient is large. The embedding backward when wte trains (dwte, its sum with
the LM head's share, and np.add.at's int64 index array: E = N·V + 2·N·C + V·C + max(V·C, 8/f·N·C)). And the
optimizer step, where the caches are gone but AdamW needs one scratch array as large as the largest trainable
tensor (on a GPU its fused kernel, minift/fast/adamw.py, needs none: the prediction keeps the scratch, which can only
overstate that moment, and it is the peak only when the caches are tiny). The forward of a block below the
backward's floor (above). And when no block is visited but ln_f trains, ln_f's backward: dlogits, dh, and dx̂ with
a temporary, N·V + 3·N·C. workspace is the largest of these, counted above the four persistent terms.

Why LoRA's saving depends on the regime. gradients and optimizer state scale with the number of *trainable
parameters* (3 floats per weight under AdamW, and full fine-tuning trains all of them; LoRA trains R·(in + out) per
adapted matrix); activations scale with *tokens* (N = B·T) and are the same for both methods (LoRA adds only N·R per
adapter). So LoRA's saving is at most (gradients + optimizer) / total of full fine-tuning. That share grows with model
size at a fixed batch·seq (parameters grow as L·C², activations as L·N·C) and shrinks as batch·seq grows. The
article's "~80% less memory" therefore needs weights and optimizer state to dominate -- large models, small batches,
short sequences -- and more: in one dtype the saving stops at 75% (weights, gradients, m, v -> weights), so 80% also
needs mixed precision (optimizer state wider than the frozen weights) or a quantised base (method "qlora").
`memory_saving(cfg, batch, seq, rank)` returns the ratio to sweep, `saving_table` full, LoRA and QLoRA over a range
of batch x seq with the article's 80% marked, `paper_checks` the LoRA and QLoRA papers' figures. For GPT-2
(124M, float32, AdamW; LoRA and QLoRA r=8 on all four linears of every block, QLoRA's base NF4), predicted peaks:

    batch x seq      full       LoRA       saving   QLoRA      saving
    1 x 128          2.31 GiB   0.66 GiB   72%      0.39 GiB   83%    weights, gradients and AdamW's m, v dominate
    8 x 1024        14.96 GiB  13.60 GiB    9%     13.33 GiB   11%    activations (11.1 GiB, the same for all) dominate

Precision (`precision`, PRECISIONS): every term is its elements times the bytes of its kind of array, one row each:

| precision              | compute | master | gradient | optimizer state | a trainable / frozen weight, AdamW |
|------------------------|---------|--------|----------|-----------------|------------------------------------|
| float32, float64       | 4, 8    | -      | 4, 8     | 4, 8            | 16 / 4, 32 / 8: what minift runs   |
| bf16-mixed, fp16-mixed | 2       | 4      | 2        | 4               | 16 / 2 (ZeRO's 2 + 2 + 4 + 4 + 4)  |
| bf16-no-master         | 2       | -      | 2        | 4               | 12 / 2                             |
| bf16-true              | 2       | -      | 2        | 2               | 8 / 2                              |

compute: weights as the matmuls read them, activations (logits and softmax included), backward temporaries; master:
a float32 copy of a trainable weight that the update is applied to; the update's scratch is in the state's dtype;
int64 indices stay 8 B. The mixed rows are ZeRO's accounting (Rajbhandari et al. 2020, §3.1), a frozen weight held in
16 bits only (as PEFT and QLoRA load a frozen base), fp16's loss scale one number; bf16-no-master is QLoRA's "16-bit
full finetuning" (65B x 12 B = 780 GB). Not counted: a float32 copy of the logits for the loss (+4·N·V B). minift
computes in float32 or float64 only: the 16-bit rows are predictions, never measured.

QLoRA (method "qlora", Dettmers et al. 2023): LoRA's adapters, trainables and activations; each adapted W held as a
minift.quant.Quantized (any code, nf4, int4 or fp4: the same bytes), everything else in the compute dtype:

    W [n weights], NB = ⌈n/64⌉ blocks          bytes (quant.quantized_nbytes)            bits a weight as n grows
    4-bit codes + a float32 absmax a block     NB·(32 + 4)                               4 + 32/64 = 4.5
    double_quant: int8 absmax, float32 / 256   NB·(32 + 1) + 4·⌈NB/256⌉ + 4 (μ)          4 + 8/64 + 32/(64·256) ≈ 4.127

Each adapted linear dequantises W̃ = deq(W) [I, O] where it is used and drops it on return, which adds a phase per
linear of block k's backward: what the block holds when that linear starts (dlogits, BACKWARD_HELD) plus the larger of
dequantisation's peak (dequantize_nbytes: W̃ padded to 64·NB and ≤ 256 KiB of chunk for minift's chunked path,
fast/dequant.py; 9 B a float32 weight for the reference, quant.dequantize) and W̃ with lora_backward's dx, dx_d
(2·N·I) and s·dy B (N·R). The forward's W̃ comes with fewer activations and no dlogits: never the peak. A fused kernel
(bitsandbytes', minift's on CuPy) holds W̃ alone.

Measuring (`measure_memory`): one real step on the model, with NumPy's allocations traced by `tracemalloc` (NumPy
reports its array buffers to it) or, on CuPy, the memory pool's used bytes followed by a memory hook. Parameters are
counted by their nbytes (they exist before tracing starts); the optimizer state is what building the optimizer
allocates; activations are what the forward half of the step leaves allocated; the step's peak is measured above
parameters + optimizer state. The model's weights are restored afterwards, so measuring does not train it.
"""
from __future__ import annotations

import gc
import math
import tracemalloc
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from ..config import GPTConfig
from ..dispatch import reference_only
from ..errors import MiniftError
from ..fast.attention import ATTENTION_BLOCK, query_blocks
from ..fast.dequant import CHUNK
from ..methods import ADAPTER_METHODS, METHODS, freeze_plan
from ..model import backward_floor, param_shapes
from ..quant import BLOCK, CODES, quantized_nbytes

OPTIMIZERS = {"adamw": 2, "sgd": 0, "sgd-momentum": 1}     # floats of optimizer state per trainable parameter
HEAD_KINDS = ("lm", "classification")   # GPT.head_kind
TERMS = ("parameters", "gradients", "optimizer", "activations", "workspace", "total")
INDEX_BYTES = 8                                           # int64: NumPy's default integer (arange, argmax, where)
MiB = 2 ** 20
GB = 10 ** 9                                              # the papers' unit
DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


class Precision(NamedTuple):
    """The dtype of each kind of array a training step holds (module docstring, "Precision"); None: not held."""
    compute: str          # weights as the matmuls read them, activations, the backward's temporaries
    master: str | None    # a copy of each trainable weight that the update is applied to
    gradient: str
    state: str            # each optimizer float per trainable weight, and the update's scratch

    def nbytes(self, kind: str) -> int:
        """Bytes per element of one kind of array: "compute" | "master" | "gradient" | "state"."""
        dtype = getattr(self, kind)
        return 0 if dtype is None else DTYPE_BYTES[dtype]


PRECISIONS = {   # the module docstring's table
    "float32": Precision("float32", None, "float32", "float32"),
    "float64": Precision("float64", None, "float64", "float64"),
    "bf16-mixed": Precision("bfloat16", "float32", "bfloat16", "float32"),
    "fp16-mixed": Precision("float16", "float32", "float16", "float32"),
    "bf16-no-master": Precision("bfloat16", None, "bfloat16", "float32"),
    "bf16-true": Precision("bfloat16", None, "bfloat16", "bfloat16"),
}
MEASURABLE = ("float32", "float64")                       # the precisions minift computes in
DEQUANTIZE_PATHS = ("chunked", "reference")               # dispatch.dequantize's fast twin, and quant.dequantize


def precision_of(name: str) -> Precision:
    if name not in PRECISIONS:
        raise MiniftError(f"precision={name!r} is not one of {tuple(PRECISIONS)}")
    return PRECISIONS[name]


def _itemsize(dtype) -> int:
    """Bytes of one element of `dtype`: a name of DTYPE_BYTES (bfloat16 too, which NumPy lacks) or a NumPy dtype."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPE_BYTES:
        raise MiniftError(f"dtype={dtype!r} is not one of {tuple(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


# ---- what trains ---------------------------------------------------------------------------------------------------

def lora_modules(cfg: GPTConfig, targets="all-linear") -> list:
    """The adapted linears, e.g. ["h.0.attn.c_attn", ...], by the same suffix rule attach_lora uses."""
    from ..lora import resolve_modules
    return resolve_modules(cfg.n_layer, targets)


def _shapes(cfg, method, rank, targets, head_kind, num_labels, freeze_options, dora=False):
    """(name -> shape of every parameter incl. adapters, set of trainable names, adapted modules)."""
    if head_kind not in HEAD_KINDS:
        raise MiniftError(f"head_kind={head_kind!r} is not one of {HEAD_KINDS}")
    shapes = param_shapes(cfg)
    if head_kind == "classification":
        shapes["score.weight"] = (num_labels, cfg.n_embd)             # nn.Linear layout, no bias
    if method not in METHODS:
        raise MiniftError(f"method {method!r} is not one of {METHODS}")
    modules = []
    if method in ADAPTER_METHODS:     # lora, qlora: the same adapters (qlora's Ws are quantised, see predict_memory)
        modules = lora_modules(cfg, targets)
        frozen = set(shapes) - {"score.weight"}       # the head trains with LoRA (PEFT's modules_to_save)
        for m in modules:
            d_in, d_out = shapes[m + ".weight"]                       # GPT-2's [in, out]
            shapes[m + ".lora_A.weight"] = (rank, d_in)               # PEFT's layout: A [R, in], B [out, R]
            shapes[m + ".lora_B.weight"] = (d_out, rank)
            if dora:
                shapes[m + ".lora_magnitude_vector"] = (d_out,)       # DoRA's m, one per output feature
    else:   # the very rule finetune.py applies to a model, run on names only
        frozen = freeze_plan(SimpleNamespace(params=shapes, cfg=cfg), method, **freeze_options)
    return shapes, set(shapes) - frozen, modules


# ---- activations ---------------------------------------------------------------------------------------------------

def _block_areas(T: int, block) -> list:
    """n·r1 of every query block the attention computes: n query rows against the r1 keys they see; one T×T square
    for the reference (block None, or block ≥ T)."""
    if block is None or block >= T:
        return [T * T]
    return [(r1 - r0) * r1 for r0, r1 in query_blocks(T, block)]


def attention_cached(T: int, block=ATTENTION_BLOCK) -> int:
    """Attention probabilities one (batch row, head) keeps: T² for the reference; for the blocked path each query
    block's n rows against the r1 keys it sees, Σ n·r1 = (1 + b/T)/2 · T² when b divides T (fast/attention.py)."""
    return sum(_block_areas(T, block))


def visited_blocks(cfg: GPTConfig, floor: int) -> int:
    """How many blocks the backward visits (and the forward caches) for a backward floor (model.backward_floor)."""
    return max(0, cfg.n_layer - max(floor, 0))


def block_activation_terms(cfg: GPTConfig, batch: int, seq: int, dtype="float32", block=ATTENTION_BLOCK) -> dict:
    """name -> bytes one block's forward caches (the module docstring's table, without dropout and adapters)."""
    f = _itemsize(dtype)
    B, T, C, H = batch, seq, cfg.n_embd, cfg.n_head
    N, F = B * T, 4 * C
    return {
        "LayerNorm x̂, rstd (ln_1, ln_2)": 2 * (N * C + N) * f,
        "linear inputs (c_attn, attn.c_proj, c_fc, mlp.c_proj)": (3 * N * C + N * F) * f,
        "qkv (attention's q, k, v)": 3 * N * C * f,
        "attention probabilities": B * H * attention_cached(T, block) * f,
        "GELU input and tanh": 2 * N * F * f,
    }


def activation_terms(cfg: GPTConfig, batch: int, seq: int, dtype="float32", head_kind="lm", num_labels=2,
                     adapted=(), rank=0, block=ATTENTION_BLOCK, dora=False, floor=-1) -> dict:
    """name -> bytes of everything the forward caches for the backward (see the module docstring's table).
    dora: DoRA adapters cache z = x_d V [N, out] (and the norm n [out]) where LoRA's cache x·Aᵀ [N, R] (lora/dora.py).
    floor: the backward's floor (model.backward_floor): blocks below it, and ln_f when it is above ln_f, cache
    nothing."""
    f = _itemsize(dtype)
    B, T, C, V = batch, seq, cfg.n_embd, cfg.vocab_size
    N, L = B * T, visited_blocks(cfg, floor)
    terms = {name: L * size for name, size in block_activation_terms(cfg, batch, seq, dtype, block).items()}
    terms["ln_f x̂, rstd and h"] = (2 * N * C + N if floor <= cfg.n_layer else N * C) * f   # h: the head's input
    if head_kind == "lm":
        terms["logits and softmax p"] = 2 * N * V * f
        terms["loss indices (rows, targets, valid)"] = N * (2 * INDEX_BYTES + 1)
    else:
        terms["pooled h, logits and p"] = (B * C + 2 * B * num_labels) * f
        terms["pool and loss indices"] = B * (4 * INDEX_BYTES + 1)
    if cfg.dropout > 0:
        terms["dropout masks"] = (2 * L + (floor == -1)) * N * C * f
    if adapted and dora:
        outs = [param_shapes(cfg)[m + ".weight"][1] for m in adapted]
        terms["DoRA z = x_d V and n"] = sum(outs) * (N + 1) * f
    elif adapted:
        terms["LoRA x·Aᵀ"] = len(adapted) * N * rank * f
    return terms


# ---- a 4-bit base (QLoRA) ------------------------------------------------------------------------------------------

def dequantize_nbytes(n: int, dtype="float32", double_quant: bool = False, path: str = "chunked",
                      block: int = BLOCK) -> int:
    """Bytes dequantising n weights holds at its peak, the returned W̃ included (module docstring).

    chunked (fast/dequant.py): W̃ [NB, K] in `dtype`, the gather's intp indices for one chunk of r ≤ CHUNK/K blocks'
    K/2 bytes, and a float32 chunk of CHUNK weights when W̃ is not float32. reference (quant.dequantize): the
    patterns q (1 B a weight, padded) with their int32 indices and the gathered v[q] (4 + 4), then q, v[q]·c and W̃
    (n·b); NumPy's 64 KiB buffer for the int32 index is not counted. Double quantisation adds the scales c̃ [NB]."""
    if path not in DEQUANTIZE_PATHS:
        raise MiniftError(f"dequantize={path!r} is not one of {DEQUANTIZE_PATHS}")
    b, NB = _itemsize(dtype), -(-n // block)
    scales = 4 * NB if double_quant else 0                            # c̃ = e·s/127 + μ, float32
    if path == "reference":
        return scales + max(NB * block * (1 + 4 + 4), NB * block * (1 + 4) + n * b)
    blocks = max(1, CHUNK // block)                                   # R: the blocks of one chunk
    indices = min(blocks, NB) * (block // 2) * INDEX_BYTES            # take() turns a chunk's bytes into intp
    work = blocks * block * 4 if b != 4 else 0                        # float32 chunk before the cast
    return scales + NB * block * b + indices + work


# The backward of one block (model._block_backward), linear by linear: what it holds, beyond dlogits, when that
# linear's backward starts, in N·C and N·F elements (no dropout): dh and the block's dx; then dg and df; then dm and
# dx' (ln_2's sum); then datt and dqkv (3·N·C).
BACKWARD_HELD = {"mlp.c_proj": (2, 0), "mlp.c_fc": (2, 2), "attn.c_proj": (4, 2), "attn.c_attn": (8, 2)}


def dequantize_phases(cfg: GPTConfig, batch: int, seq: int, shapes: dict, trainable: set, quantized: set, rank: int,
                      k: int, dlogits: int, precision="float32", double_quant=False, path="chunked") -> dict:
    """Bytes above the four persistent terms while block k's backward dequantises each quantised linear: the
    larger of dequantisation's peak and W̃ with lora_backward's dx, dx_d and s·dy B (module docstring, QLoRA).
    The gradients of that linear (at the dequantisation) and of those below it in the block are not made yet.
    shapes: name -> shape (GPT-2's [in, out] for a linear); quantized: the names of the quantised weights."""
    p = precision_of(precision)
    b, g = p.nbytes("compute"), p.nbytes("gradient")
    N, C = batch * seq, cfg.n_embd
    order = list(BACKWARD_HELD)                                       # the backward's order within a block
    phases = {}
    for j, module in enumerate(order):
        name = f"h.{k}.{module}"
        if name + ".weight" not in quantized:
            continue
        n_C, n_F = BACKWARD_HELD[module]
        held = (dlogits + n_C * N * C + n_F * N * 4 * C) * b
        made_after = order[j:] + ["ln_1"] + (["ln_2"] if j <= 1 else [])    # this linear's, and what follows it
        later = {n for n in trainable if n.startswith("wpe.") or any(n.startswith(f"h.{k}.{m}.") for m in made_after)}
        own = {n for n in later if n.startswith(name + ".")}
        I, O = shapes[name + ".weight"]
        unmade = sum(math.prod(shapes[n]) for n in later)             # gradients not made at the dequantisation
        dequant = dequantize_nbytes(I * O, p.compute, double_quant, path)
        compute = (I * O + 2 * N * I + N * rank) * b                 # W̃, dx, dx_d and s·dy B
        phases[f"dequantised W̃ in block {k}'s {module} backward"] = held + max(
            dequant - g * unmade, compute - g * (unmade - sum(math.prod(shapes[n]) for n in own)))
    return phases


# ---- the backward's temporaries ------------------------------------------------------------------------------------

def attention_workspace(B: int, H: int, T: int, C: int, block=ATTENTION_BLOCK) -> int:
    """Elements attention_backward holds at its peak (module docstring). The reference (block None, or T ≤ block):
    datt and dpre, B·H·T² each, and dq, dk, dv, their stack and its merged copy, 9·N·C. The blocked path: dqkv
    (3·N·C, written in place) and, for the query block of n rows against r1 keys where this is largest, either its
    dv part (B·r1·C) with datt and dpre (2·B·H·n·r1) or its dv and dk parts (2·B·r1·C) with dpre."""
    N = B * T
    if block is None or block >= T:
        return 9 * N * C + 2 * B * H * T * T
    return 3 * N * C + max(max(B * r1 * C + 2 * B * H * (r1 - r0) * r1, 2 * B * r1 * C + B * H * (r1 - r0) * r1)
                           for r0, r1 in query_blocks(T, block))


def workspace_terms(cfg: GPTConfig, batch: int, seq: int, sizes: dict, trainable: set, activations: int,
                    precision="float32", head_kind="lm", num_labels=2, block=ATTENTION_BLOCK, floor=-1) -> dict:
    """Bytes above parameters + gradients + optimizer + activations at the candidate peaks (module docstring):
    "attention backward of block k" and "LayerNorm backward of block k's ln_1" for the lowest block k the backward
    visits (backward floor), "ln_f backward" (when it visits none but ln_f trains), "embedding backward", "forward
    of a block below the floor" (only when there is one), "optimizer step". `sizes`: name -> element count.
    Temporaries in the compute dtype, gradients not made yet in the gradient's, the update's scratch in the state's."""
    p = precision_of(precision)
    f, g = p.nbytes("compute"), p.nbytes("gradient")
    B, T, C, V, H = batch, seq, cfg.n_embd, cfg.vocab_size, cfg.n_head
    N = B * T
    dlogits = N * V if head_kind == "lm" else B * num_labels
    phases = {}
    if floor < cfg.n_layer:           # the backward visits block k and below it only what trains there
        k = max(floor, 0)
        late = {f"h.{k}.{name}" for name in ("attn.c_attn.weight", "attn.c_attn.bias", "ln_1.weight", "ln_1.bias",
                                             "attn.c_attn.lora_A.weight", "attn.c_attn.lora_B.weight")}
        late.add("wpe.weight")
        if head_kind != "lm":
            late.add("wte.weight")    # no LM head: wte's gradient is made by the embedding backward only
        missing = sum(sizes[n] for n in late & trainable)
        phases[f"attention backward of block {k}"] = ((dlogits + 13 * N * C + attention_workspace(B, H, T, C, block))
                                                      * f - missing * g)
        still_missing = sum(sizes[n] for n in late & trainable if "c_attn" not in n)   # c_attn's gradient is made
        phases[f"LayerNorm backward of block {k}'s ln_1"] = (dlogits + 19 * N * C) * f - still_missing * g
    if floor == cfg.n_layer:          # only ln_f (and the head) train: the backward ends in ln_f's
        phases["ln_f backward"] = (dlogits + 3 * N * C) * f
    if floor > 0:                     # block 0 runs without keeping caches: they live only until it returns
        one_block = sum(block_activation_terms(cfg, batch, seq, p.compute, block).values())
        masks = 2 * N * C * f if cfg.dropout > 0 else 0
        # + the residual stream in and out, residual 1, and the two c_proj outputs o and y: 5·N·C
        phases["forward of a block below the floor"] = one_block + masks + 5 * N * C * f - activations
    if trainable & {"wte.weight", "wpe.weight"}:
        index = INDEX_BYTES * N * C                                   # np.add.at's flat int64 positions
        if "wte.weight" not in trainable:
            wte = 0
        elif head_kind == "lm":       # dwte beside the head's share, then their sum as a new array
            wte = V * C * g + max(V * C * g, index)
        else:                         # dwte *is* wte's gradient (counted in gradients); only the index array
            wte = index
        phases["embedding backward"] = (dlogits + 2 * N * C) * f + wte
    largest = max((sizes[n] for n in trainable), default=0)
    phases["optimizer step"] = largest * p.nbytes("state") - activations   # the caches are freed by then
    return phases


# ---- prediction ----------------------------------------------------------------------------------------------------

def predict_memory(cfg: GPTConfig, method: str, batch: int, seq: int, rank: int = 8, targets="all-linear",
                   precision="float32", optimizer="adamw", head_kind="lm", num_labels=2, block=ATTENTION_BLOCK,
                   dora=False, quant="nf4", double_quant=False, dequantize=None, **freeze_options) -> dict:
    """Bytes of one training step, term by term (module docstring), from arithmetic only: instant for any preset.

    method: "full" | "freeze" | "head" | "lora" | "qlora", with finetune.py's rules (freeze_options such as
    freeze_blocks=1 go to its freeze_plan). rank, targets: LoRA's and QLoRA's (targets: "all-linear" or module names,
    see lora_modules). dora: DoRA adapters (their magnitudes m and cache z = x_d V; the backward's transient V-sized
    temporaries are not counted).
    precision: "float32" | "float64" (what minift runs) | "bf16-mixed" | "fp16-mixed" | "bf16-no-master" |
    "bf16-true" (predictions only), PRECISIONS.
    quant, double_quant: QLoRA's 4-bit code ("nf4" | "int4" | "fp4": the same bytes) and double quantisation of the
    scales. dequantize: "chunked" | "reference", the dequantisation QLoRA's workspace follows (None: the one
    minift.dispatch runs now).
    head_kind: "lm" (tied to wte) or "classification" (score.weight [num_labels, C], read at the last token).
    block: the attention block size the model runs with (fast.attention.ATTENTION_BLOCK; None: the reference).

    Returns {"parameters", "gradients", "optimizer", "activations", "workspace", "total"} in bytes, plus
    "trainable" (parameter count), "activation_terms" and "workspace_phases" (name -> bytes), "peak_phase" and
    "precision".
    """
    if not isinstance(cfg, GPTConfig):
        raise MiniftError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
    for name, value in (("batch", batch), ("seq", seq), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise MiniftError(f"{name}={value!r} must be a positive integer")
    if seq > cfg.n_ctx:
        raise MiniftError(f"seq={seq} is longer than the model's context n_ctx={cfg.n_ctx}")
    if optimizer not in OPTIMIZERS:
        raise MiniftError(f"optimizer={optimizer!r} is not one of {tuple(OPTIMIZERS)}")
    _check_quant(quant, double_quant, dequantize)
    if dora and method == "qlora":
        raise MiniftError("dora=True with method 'qlora': QLoRA with DoRA is not written in minift")
    p = precision_of(precision)
    shapes, trainable, modules = _shapes(cfg, method, rank, targets, head_kind, num_labels, freeze_options, dora)
    quantized = {m + ".weight" for m in modules} if method == "qlora" else set()
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    n_train = sum(sizes[n] for n in trainable)
    floor = backward_floor(trainable, cfg.n_layer)
    acts = activation_terms(cfg, batch, seq, p.compute, head_kind, num_labels, modules, rank, block, dora, floor)
    stored = sum(quantized_nbytes(sizes[n], double_quant) if n in quantized else sizes[n] * p.nbytes("compute")
                 for n in sizes)
    out = dict(parameters=stored + n_train * p.nbytes("master"), gradients=n_train * p.nbytes("gradient"),
               optimizer=OPTIMIZERS[optimizer] * n_train * p.nbytes("state"), activations=sum(acts.values()))
    phases = workspace_terms(cfg, batch, seq, sizes, trainable, out["activations"], precision, head_kind, num_labels,
                             block, floor)
    if quantized and floor < cfg.n_layer:
        dlogits = batch * seq * cfg.vocab_size if head_kind == "lm" else batch * num_labels
        path = dequantize or ("reference" if reference_only() else "chunked")
        phases.update(dequantize_phases(cfg, batch, seq, shapes, trainable, quantized, rank, max(floor, 0), dlogits,
                                        precision, double_quant, path))
    peak_phase = max(phases, key=phases.get)
    out["workspace"] = max(0, phases[peak_phase])
    out["total"] = sum(out[t] for t in TERMS[:-1])
    out.update(trainable=n_train, activation_terms=acts, workspace_phases=phases, peak_phase=peak_phase,
               precision=precision)
    return out


def _check_quant(quant, double_quant, dequantize):
    if quant not in CODES:
        raise MiniftError(f"quant={quant!r} is not one of {CODES}")
    if not isinstance(double_quant, (bool, np.bool_)):
        raise MiniftError(f"double_quant={double_quant!r} must be True or False")
    if dequantize is not None and dequantize not in DEQUANTIZE_PATHS:
        raise MiniftError(f"dequantize={dequantize!r} is not one of {DEQUANTIZE_PATHS} (or None: minift's own)")


def available_host_bytes() -> int | None:
    """The memory the OS says a new allocation can get now (Linux: MemAvailable in /proc/meminfo), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(cfg: GPTConfig, method: str, batch: int, seq: int, device: str = "cpu", **options) -> None:
    """Before training on the CPU: raise a MiniftError if predict_memory's total for one step is more than the
    machine has available, instead of letting the OS kill the process mid-run without a word. (On a GPU the
    device's own out-of-memory error is already clear.)"""
    if device != "cpu":
        return
    need, have = predict_memory(cfg, method, batch, seq, **options)["total"], available_host_bytes()
    if have is not None and need > have:
        raise MiniftError(f"a training step with batch {batch} x {seq} tokens needs about {need / 2**30:.1f} GiB "
                          f"(minift.measure.memory.predict_memory), but only {have / 2**30:.1f} GiB is available: "
                          "lower --batch")


def memory_saving(cfg: GPTConfig, batch: int, seq: int, rank: int = 8, targets="all-linear", method="lora",
                  **options) -> float:
    """Predicted peak of a LoRA (or QLoRA: method="qlora") step divided by that of a full fine-tuning step (the
    saving is 1 − ratio); options (precision, quant, ...) go to predict_memory for both.

    Sweep it: it falls (LoRA saves more) as the model grows at fixed batch·seq, and rises toward 1 as batch·seq
    grows, because activations, the same for both methods, take over (module docstring)."""
    if method not in ADAPTER_METHODS:
        raise MiniftError(f"method={method!r} is not one of {ADAPTER_METHODS}")
    lora = predict_memory(cfg, method, batch, seq, rank=rank, targets=targets, **options)
    full = predict_memory(cfg, "full", batch, seq, rank=rank, **options)
    return lora["total"] / full["total"]


# ---- where the article's "~80% less memory" holds ------------------------------------------------------------------

CLAIM = 0.80                          # the article's §5.1: "LoRA: ~80% less memory"
CLAIM_METHODS = ("full", "lora", "qlora")
CLAIM_BATCHES = (1, 8)


def claim_shapes(cfg: GPTConfig) -> list:
    """The (batch, seq) a saving table sweeps by default: batch 1 and 8, at n_ctx/8 and n_ctx tokens."""
    return [(b, t) for t in sorted({max(1, cfg.n_ctx // 8), cfg.n_ctx}) for b in CLAIM_BATCHES]


def saving_table(cfg: GPTConfig, shapes=None, rank: int = 8, targets="all-linear", precision="float32",
                 quant="nf4", double_quant=False, **options) -> dict:
    """Full fine-tuning, LoRA and QLoRA predicted for each (batch, seq) of `shapes` (default claim_shapes(cfg)), and
    the saving of each adapter method against full: where the article's 80% holds (CLAIM). Plain data:

        {"model": {n_layer, n_embd, n_head, vocab_size, n_ctx, parameters}, "precision", "measurable" (whether
         minift computes in it), "rank", "targets", "quant", "double_quant", "claim",
         "rows": [{"batch", "seq", "tokens", "terms": {method: {term: bytes}}, "saving": {"lora", "qlora"},
                   "holds": {"lora": bool, "qlora": bool}}]}

    options go to predict_memory (optimizer, head_kind, num_labels, block, dequantize). format_saving_table prints it.
    """
    shapes = claim_shapes(cfg) if shapes is None else list(shapes)
    if not shapes or not all(isinstance(s, (tuple, list)) and len(s) == 2 for s in shapes):
        raise MiniftError(f"shapes={shapes!r} must be a non-empty list of (batch, seq) pairs")
    rows = []
    for batch, seq in shapes:
        terms = {m: predict_memory(cfg, m, batch, seq, rank=rank, targets=targets, precision=precision, quant=quant,
                                   double_quant=double_quant, **options) for m in CLAIM_METHODS}
        terms = {m: {t: int(d[t]) for t in TERMS} for m, d in terms.items()}
        saving = {m: 1 - terms[m]["total"] / terms["full"]["total"] for m in CLAIM_METHODS[1:]}
        rows.append(dict(batch=int(batch), seq=int(seq), tokens=int(batch * seq), terms=terms, saving=saving,
                         holds={m: s >= CLAIM for m, s in saving.items()}))
    model = dict(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, vocab_size=cfg.vocab_size,
                 n_ctx=cfg.n_ctx, parameters=sum(math.prod(s) for s in param_shapes(cfg).values()))
    return dict(model=model, precision=precision, measurable=precision in MEASURABLE, rank=rank,
                targets=targets if isinstance(targets, str) else list(targets), quant=quant,
                double_quant=bool(double_quant), claim=CLAIM, rows=rows)


# ---- the papers' headline figures ----------------------------------------------------------------------------------

# GPT-shaped configs for the papers' models. GPT-3 175B (Brown et al. 2020, Table 2.1) is GPT-2's layout at this
# shape (its locally banded sparse layers, every other one, would keep fewer of the attention probabilities, 29% of
# the activations counted here at 1 x 2048; the parameters are the same). LLaMA-65B (Touvron et al.
# 2023) is not: its block has a SwiGLU MLP of 3 matrices [8192, 22016], RMSNorm (one vector, no bias), no biases,
# rotary positions (no table) and an untied head. The stand-in keeps its depth, width, heads, context and
# vocabulary; its GPT-2 block holds 12·C² + 13·C = 805.4M numbers where LLaMA's holds 4·C² + 3·C·22016 + 2·C =
# 809.5M, so it has 64.71B parameters where LLaMA has 65.29B (llama_parameters), 0.9% fewer.
PAPER_MODELS = {
    "gpt3-175b": GPTConfig(vocab_size=50257, n_ctx=2048, n_embd=12288, n_layer=96, n_head=96),
    "llama-65b": GPTConfig(vocab_size=32000, n_ctx=2048, n_embd=8192, n_layer=80, n_head=64),
}
LLAMA_65B = dict(n_layer=80, n_embd=8192, ffn=22016, vocab_size=32000)
CLAIM_MODELS = ("demo", "gpt2", "gpt3-175b", "llama-65b")       # what `minift memory --claim` shows by default
DEFAULT_BATCH = 8                                               # sequences a step `minift memory` shows by default


def config_named(name: str) -> GPTConfig:
    """A preset of GPTConfig ("tiny" | "demo" | "small" | "gpt2") or a paper's model (PAPER_MODELS)."""
    if name in PAPER_MODELS:
        return PAPER_MODELS[name]
    from ..config import PRESETS
    if name not in PRESETS:
        raise MiniftError(f"model {name!r} is not one of {sorted(PRESETS) + sorted(PAPER_MODELS)}")
    return GPTConfig.preset(name)


FULL_CONVENTIONS = ("bf16-true", "bf16-no-master", "bf16-mixed")   # 8, 12 and 16 B a trainable weight

# Each figure, as the paper states it; the batch x seq is ours (neither paper gives one for these figures).
PAPER_FIGURES = (
    dict(paper="Hu et al. 2021, LoRA (arXiv 2106.09685), §4.2", model="gpt3-175b", method="full", figure=1.2e12,
         relation="=", states="1.2 TB of VRAM to train GPT-3 175B, full fine-tuning with Adam", shape=(1, 2048),
         options={}, conventions=FULL_CONVENTIONS,
         why="the paper gives neither its precision nor its batch, and no convention that holds a gradient and "
             "Adam's two moments for every weight comes that low"),
    dict(paper="Hu et al. 2021, LoRA (arXiv 2106.09685), §4.2", model="gpt3-175b", method="lora", figure=350e9,
         relation="=", states="350 GB with LoRA, r = 4 on Wq and Wv (here c_attn: the same number of adapter weights)",
         shape=(1, 2048), options=dict(rank=4, targets=("c_attn",)), conventions=FULL_CONVENTIONS,
         why="350 GB is the frozen weights in 16 bits (175B x 2 B): the figure counts no activations"),
    dict(paper="Dettmers et al. 2023, QLoRA (arXiv 2305.14314), §1", model="llama-65b", method="full", figure=780e9,
         relation=">", states="more than 780 GB for 16-bit full finetuning of LLaMA 65B", shape=(1, 512),
         options={}, conventions=FULL_CONVENTIONS,
         why="780 GB is 65B x 12 B: 16-bit weights and gradients and float32 Adam m, v, no master copy "
             "(bf16-no-master); the stand-in has 0.9% fewer parameters than LLaMA-65B"),
    dict(paper="Dettmers et al. 2023, QLoRA (arXiv 2305.14314), §1", model="llama-65b", method="qlora", figure=48e9,
         relation="<", states="less than 48 GB with QLoRA (NF4, double quantisation, r = 64 on every linear)",
         shape=(1, 512), options=dict(rank=64, quant="nf4", double_quant=True), conventions=("bf16-mixed",),
         why="QLoRA trains with gradient checkpointing (and pages optimizer state to the CPU at spikes); minift keeps "
             "every block's caches. LLaMA's 7 linears a block carry 800M adapter weights at r = 64, the stand-in's "
             "4 carry 671M (+2 GB at 16 B each)"),
)


def llama_parameters(n_layer: int, n_embd: int, ffn: int, vocab_size: int) -> int:
    """LLaMA's parameter count: an untied embedding and head (2·V·C), per block 4·C² (q, k, v, o) + 3·C·ffn (SwiGLU)
    + 2·C (two RMSNorms), and the final RMSNorm."""
    C = n_embd
    return 2 * vocab_size * C + n_layer * (4 * C * C + 3 * C * ffn + 2 * C) + C


def checkpointed_activations(cfg: GPTConfig, d: dict, batch: int, seq: int, precision="float32") -> int:
    """An estimate, not a step minift runs: the activations of predict_memory's `d` under gradient checkpointing (as
    QLoRA trains), for a model whose every block is visited and adapted alike: each block keeps only its input
    x [N, C], and one block's caches (with its adapters' x·Aᵀ) are recomputed at a time in the backward."""
    p = precision_of(precision)
    blocks = (cfg.n_layer * sum(block_activation_terms(cfg, batch, seq, p.compute).values())
              + d["activation_terms"].get("LoRA x·Aᵀ", 0))
    inputs = cfg.n_layer * batch * seq * cfg.n_embd * p.nbytes("compute")     # x [N, C] at every block
    return d["activations"] - blocks + blocks // cfg.n_layer + inputs


def longest_seq_under(cfg: GPTConfig, method: str, budget: float, batch: int = 1, **options) -> int:
    """The most tokens a sequence (up to n_ctx) for which predict_memory's total stays under `budget` bytes at
    `batch`; 0 when not even one token fits. The total grows with seq, so a bisection finds it."""
    def fits(seq):
        return predict_memory(cfg, method, batch, seq, **options)["total"] < budget
    lo, hi = 0, cfg.n_ctx
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def paper_checks() -> list:
    """Each of PAPER_FIGURES beside minift's prediction under each convention that could have produced it. Plain
    data, one dict per figure: the figure's fields, plus "parameters" (of the config), "predictions":
    {precision: {"persistent": parameters + gradients + optimizer, "activations", "workspace", "total" at the
    figure's batch x seq, "checkpointed": the total with checkpointed_activations}} in bytes, and "closest"
    (the precision whose persistent bytes come nearest the figure), and for a "<" figure "longest_seq": the most
    tokens of one sequence whose total (every cache kept) stays under it. format_paper_checks prints it."""
    checks = []
    for fig in PAPER_FIGURES:
        cfg, (batch, seq) = PAPER_MODELS[fig["model"]], fig["shape"]
        predictions = {}
        for precision in fig["conventions"]:
            d = predict_memory(cfg, fig["method"], batch, seq, precision=precision, **fig["options"])
            persistent = d["parameters"] + d["gradients"] + d["optimizer"]
            ckpt = checkpointed_activations(cfg, d, batch, seq, precision)
            predictions[precision] = dict(persistent=persistent, gradients=d["gradients"],
                                          activations=d["activations"], workspace=d["workspace"], total=d["total"],
                                          checkpointed=d["total"] - d["activations"] + ckpt, trainable=d["trainable"])
        closest = min(predictions, key=lambda p: abs(predictions[p]["persistent"] - fig["figure"]))
        check = dict(fig, options=dict(fig["options"]), predictions=predictions, closest=closest,
                     parameters=sum(math.prod(s) for s in param_shapes(cfg).values()))
        if fig["relation"] == "<":
            check["longest_seq"] = longest_seq_under(cfg, fig["method"], fig["figure"], batch, precision=closest,
                                                     **fig["options"])
        checks.append(check)
    return checks


# ---- measurement ---------------------------------------------------------------------------------------------------

class _HostTracker:
    """Allocated bytes and their peak from tracemalloc (NumPy reports every array buffer to it)."""
    name = "tracemalloc"

    def __enter__(self):
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        return self

    def __exit__(self, *exc):
        if self._started:
            tracemalloc.stop()

    def current(self) -> int:
        return tracemalloc.get_traced_memory()[0]

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1]

    def reset_peak(self):
        tracemalloc.reset_peak()


class _PoolTracker:
    """The CuPy memory pool's used bytes, and their peak followed by a memory hook on every pool malloc."""
    name = "cupy memory pool"

    def __init__(self, cupy):
        self.pool = cupy.get_default_memory_pool()
        tracker = self

        class PeakHook(cupy.cuda.MemoryHook):
            name = "minift_peak"

            def malloc_postprocess(self, **kwargs):
                tracker._peak = max(tracker._peak, tracker.pool.used_bytes())

        self._hook, self._peak = PeakHook(), 0

    def __enter__(self):
        self._hook.__enter__()
        self.reset_peak()
        return self

    def __exit__(self, *exc):
        self._hook.__exit__(*exc)

    def current(self) -> int:
        return self.pool.used_bytes()

    def peak(self) -> int:
        return max(self._peak, self.current())

    def reset_peak(self):
        self._peak = self.current()


def _batch_arrays(model, batch) -> dict:
    """input_ids, targets (and attention_mask) as arrays on the model's device, made before any measuring."""
    if callable(batch):
        batch = batch()
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        batch = dict(zip(("input_ids", "targets", "attention_mask"), batch))
    if not isinstance(batch, dict) or not {"input_ids", "targets"} <= set(batch):
        raise MiniftError("batch must be (input_ids, targets), a dict with input_ids and targets, or a callable "
                          "returning one (such as a data source's next_batch)")
    return {k: (None if v is None else model.xp.asarray(v)) for k, v in batch.items()}


def _forward_half(model, input_ids, targets, attention_mask=None, rng=None):
    """What GPT.loss_and_grads holds when its backward starts: the same calls, results kept alive and returned."""
    from ..ops import cross_entropy_forward
    ids = model._as_ids(input_ids)
    mask = model._as_mask(attention_mask, ids)
    targets = model._check_targets(targets, ids)
    h, c_body = model._body_forward(ids, mask, rng, model.backward_floor())   # (B, T, C)
    logits, c_head = model._head_forward(h, mask)                         # (B, T, V) or (B, K)
    loss, c_ce = cross_entropy_forward(logits, targets)
    return h, c_body, logits, c_head, c_ce


def _make_optimizer(model, optimizer):
    from ..optim import SGD, AdamW
    params = model.trainable_params()
    if optimizer == "adamw":
        return AdamW(params)
    if optimizer in ("sgd", "sgd-momentum"):
        return SGD(params, momentum=0.9 if optimizer == "sgd-momentum" else 0.0)
    raise MiniftError(f"optimizer={optimizer!r} is not one of {tuple(OPTIMIZERS)}")


def measure_memory(model, batch, optimizer="adamw", grad_clip=1.0) -> dict:
    """Measure one training step of `model` (loss_and_grads, clip_grad_norm, optimizer step), in bytes.

    batch: (input_ids, targets), a dict with those keys (and attention_mask), or a callable returning one.
    Returns the keys of predict_memory (measured) plus "step_peak" (forward + backward, above parameters +
    optimizer state), "optimizer_step_peak" (above parameters + optimizer + gradients) and "backend". workspace is
    the measured peak minus the four persistent terms (slightly negative when the peak comes before the last
    gradients exist and the temporaries are small).
    The trainable weights and the adapters' dropout generator are restored afterwards: measuring leaves the model
    exactly as it was.
    """
    from ..optim import clip_grad_norm
    if not model.trainable_params():
        raise MiniftError("nothing to measure: every parameter is frozen and no adapter is attached")
    arrays = _batch_arrays(model, batch)
    rng = np.random.default_rng(0) if model.cfg.dropout > 0 else None   # dropout on, as train() does
    saved = {k: v.copy() for k, v in model.trainable_params().items()}
    from ..lora import adapter_rng
    rng_a = adapter_rng(model)                        # adapter dropout draws from it in train mode
    rng_a_state = rng_a.bit_generator.state if rng_a is not None else None
    gc.collect()
    tracker = _HostTracker() if model.xp is np else _PoolTracker(model.xp)
    try:
        with tracker:
            out = _measure_step(model, arrays, rng, optimizer, grad_clip, tracker, clip_grad_norm)
    finally:
        for k, v in model.trainable_params().items():
            v[...] = saved[k]
        if rng_a is not None:
            rng_a.bit_generator.state = rng_a_state
    out["parameters"] = int(sum(a.nbytes for a in model.all_params().values()))
    out["total"] = out["parameters"] + out["optimizer"] + max(out["step_peak"],
                                                              out["gradients"] + out["optimizer_step_peak"])
    out["workspace"] = out["total"] - sum(out[t] for t in TERMS[:4])
    out["backend"] = tracker.name
    return out


def _measure_step(model, arrays, rng, optimizer, grad_clip, tracker, clip_grad_norm) -> dict:
    """The step under `tracker`: optimizer state, retained forward caches, the step's peak, the update's peak."""
    start = tracker.current()
    opt = _make_optimizer(model, optimizer)
    base = tracker.current()
    opt_bytes = base - start
    held = _forward_half(model, **arrays, rng=rng)
    activations = tracker.current() - base
    del held
    gc.collect()
    tracker.reset_peak()
    base = tracker.current()
    loss, grads = model.loss_and_grads(**arrays, rng=rng)
    step_peak = tracker.peak() - base
    gradients = int(sum(g.nbytes for g in grads.values()))
    tracker.reset_peak()
    base = tracker.current()
    if grad_clip:
        clip_grad_norm(grads, grad_clip)
    opt.step(grads)
    opt_peak = tracker.peak() - base
    return dict(optimizer=opt_bytes, gradients=gradients, activations=activations,
                step_peak=step_peak, optimizer_step_peak=opt_peak)


# ---- display -------------------------------------------------------------------------------------------------------

UNITS = {"MiB": MiB, "GiB": 2 ** 30, "GB": GB}


def format_memory(d: dict, *others: dict, labels=("predicted", "measured"), unit="MiB") -> str:
    """A table of the terms of one result (predict_memory or measure_memory), or of several side by side with each
    total divided by the first's. unit: one of UNITS."""
    if unit not in UNITS:
        raise MiniftError(f"unit={unit!r} is not one of {tuple(UNITS)}")
    cols = [d, *others]
    header = ([unit] + list(labels[:len(cols)])) if others else ["term", unit]
    rows = [[t] + [f"{c[t] / UNITS[unit]:,.2f}" for c in cols] for t in TERMS if all(t in c for c in cols)]
    if others and d.get("total"):
        rows.append([f"total/{labels[0]}"] + [f"{c['total'] / d['total']:.3f}" for c in cols])
    return _table(header, rows)


def _table(header: list, rows: list) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(r):
        return "  ".join(x.ljust(widths[i]) if i == 0 else x.rjust(widths[i]) for i, x in enumerate(r))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def unit_for(nbytes: float) -> str:
    """The binary unit for a table whose largest value is `nbytes`: MiB below 1 GiB, else GiB."""
    return "MiB" if nbytes < 2 ** 30 else "GiB"


def _count(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def _amount(nbytes: float, unit: str) -> str:
    return f"{nbytes / UNITS[unit]:,.{0 if unit == 'GB' else 2}f} {unit}"


def predicted_only(precision: str) -> str:
    """The note a printed 16-bit prediction carries ("" for the precisions minift runs)."""
    if precision in MEASURABLE:
        return ""
    return (f"{precision}: predicted only -- minift computes in float32 or float64; the bytes follow the convention "
            "in minift.measure.memory's docstring")


def format_saving_table(table: dict, title: str | None = None) -> str:
    """saving_table's result as text: the totals of full fine-tuning, LoRA and QLoRA for each batch x seq, and each
    saving against full, * where it reaches the article's 80%."""
    m = table["model"]
    targets = table["targets"] if isinstance(table["targets"], str) else ",".join(table["targets"])
    head = (f"{title + ': ' if title else ''}{m['n_layer']} layers, width {m['n_embd']}, {m['n_head']} heads, vocab "
            f"{m['vocab_size']} ({_count(m['parameters'])} parameters); {table['precision']}; LoRA and QLoRA "
            f"r={table['rank']} on {targets}, QLoRA's base {table['quant']}"
            f"{' double-quantised' if table['double_quant'] else ''}")
    unit = unit_for(max(r["terms"]["full"]["total"] for r in table["rows"]))
    rows = [[f"{r['batch']} x {r['seq']}", f"{r['tokens']:,}", _amount(r["terms"]["full"]["total"], unit)]
            + [x for k in ("lora", "qlora") for x in (_amount(r["terms"][k]["total"], unit),
                                                      f"{r['saving'][k]:.1%}{'*' if r['holds'][k] else ' '}")]
            for r in table["rows"]]
    body = _table(["batch x seq", "tokens", "full", "LoRA", "saving", "QLoRA", "saving"], rows)
    holds = {k: [r for r in table["rows"] if r["holds"][k]] for k in ("lora", "qlora")}
    summary = f'* at least the article\'s "~{table["claim"]:.0%} less memory" (§5.1): ' + "; ".join(
        f"{name} in {len(holds[k])} of {len(table['rows'])} shapes"
        + (f", up to {max(r['tokens'] for r in holds[k]):,} tokens a step" if holds[k] else "")
        for k, name in (("lora", "LoRA"), ("qlora", "QLoRA")))
    note = predicted_only(table["precision"])
    return "\n".join([head, body, summary] + ([note] if note else []))


def format_paper_checks(checks: list) -> str:
    """paper_checks' result as text, in the papers' unit (GB = 10^9 bytes): each figure, minift's prediction under
    each convention, how close the nearest comes, and why the rest differs."""
    out = []
    for c in checks:
        cfg, (batch, seq) = PAPER_MODELS[c["model"]], c["shape"]
        out += [f"{c['paper']}: {c['states']}",
                f"  {c['model']} as a GPT config ({cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, vocab "
                f"{cfg.vocab_size}): {_count(c['parameters'])} parameters; method {c['method']}; "
                f"batch {batch} x {seq} (ours: the paper states none)"]
        rows = [[p, _amount(v["persistent"], "GB"), _amount(v["total"], "GB"), _amount(v["checkpointed"], "GB"),
                 f"{v['persistent'] / c['figure'] - 1:+.1%}"] for p, v in c["predictions"].items()]
        table = _table(["precision", "weights+grads+optimizer", "total", "checkpointed (est.)", "vs paper"], rows)
        out += ["  " + line for line in table.splitlines()]
        out += ["  " + _verdict(c), ""]
    out.append("weights+grads+optimizer: the persistent terms; total: predict_memory's peak, activations and "
               "workspace included, no checkpointing; checkpointed: the same with each block keeping only its input "
               "(an estimate, checkpointed_activations). The 16-bit precisions are predictions only.")
    return "\n".join(out)


def _verdict(c: dict) -> str:
    """How close the prediction comes to one paper figure, and why it differs (the figure's `why`)."""
    best, figure = c["predictions"][c["closest"]], c["figure"]
    persistent, total, ckpt = best["persistent"], best["total"], best["checkpointed"]
    off = persistent / figure - 1
    if c["relation"] == "=" and abs(off) <= 0.02:
        return (f"reproduced by {c['closest']} to {abs(off):.1%} with weights, gradients and optimizer state alone; "
                f"one {c['shape'][0]} x {c['shape'][1]} step's activations would add "
                f"{best['activations'] / GB:,.0f} GB: {c['why']}.")
    if c["relation"] == "=":
        per = figure / c["parameters"]
        held = persistent - best["gradients"]
        return (f"not reproduced: the nearest, {c['closest']}, is {off:+.0%}; {c['why']}. The figure is {per:.1f} B a "
                f"parameter; it would take e.g. gradients applied as they are made, never held whole: "
                f"{held / GB:,.0f} GB, {(held + best['activations']) / GB:,.0f} GB with one step's activations.")
    if c["relation"] == ">":
        ok = "holds" if persistent > figure else "holds with the step's activations" if total > figure else "fails"
        return (f"'> {figure / GB:,.0f} GB' {ok}: {c['closest']} gives {persistent / GB:,.0f} GB persistent "
                f"({off:+.1%}), {total / GB:,.0f} GB with one step's activations; {c['why']}.")
    fits = [name for name, v in (("persistent", persistent), ("checkpointed", ckpt), ("total", total)) if v < figure]
    return (f"'< {figure / GB:,.0f} GB': {persistent / GB:,.1f} GB persistent, {ckpt / GB:,.1f} GB checkpointed, "
            f"{total / GB:,.1f} GB as minift runs (every cache kept): below the figure: {', '.join(fits) or 'none'}; "
            f"as minift runs, batch {c['shape'][0]} fits up to {c['longest_seq']:,} tokens. {c['why']}.")
