"""Training memory, predicted from the code and measured: where the bytes of one training step go.

The article (README.md) §5.1 claims "LoRA: ~80% less memory". This module counts what minift really holds during a step
(forward + hand-written backward + optimizer) and measures it, so a learner can see when that claim holds.

Letters: B batch, T time (seq), N = B·T token positions, C channels (n_embd), F = 4C the MLP's width, V vocab,
H heads, L blocks (n_layer), P positions (n_ctx), K labels, R LoRA rank, f bytes per float (4 for float32).

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
needs mixed precision (optimizer state wider than the frozen weights) or a quantised base (tutorial 09).
`memory_saving(cfg, batch, seq, rank)` returns the ratio to sweep. For GPT-2
(124M, float32, AdamW; LoRA r=8 on all four linears of every block), predicted peaks:

    batch x seq      full       LoRA       saving
    1 x 128          2.31 GiB   0.66 GiB   72%      weights, gradients and AdamW's m, v dominate
    8 x 1024        14.96 GiB  13.60 GiB    9%      activations (11.1 GiB, the same for both) dominate

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

import numpy as np

from ..backend import resolve_dtype
from ..config import GPTConfig
from ..errors import MiniftError
from ..fast.attention import ATTENTION_BLOCK, query_blocks
from ..methods import METHODS, freeze_plan
from ..model import backward_floor, param_shapes

OPTIMIZERS = {"adamw": 2, "sgd": 0, "sgd-momentum": 1}     # floats of optimizer state per trainable parameter
HEAD_KINDS = ("lm", "classification")   # GPT.head_kind
TERMS = ("parameters", "gradients", "optimizer", "activations", "workspace", "total")
INDEX_BYTES = 8                                           # int64: NumPy's default integer (arange, argmax, where)
MiB = 2 ** 20


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
    if method == "lora":
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
    f = resolve_dtype(dtype).itemsize
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
    f = resolve_dtype(dtype).itemsize
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
                    dtype="float32", head_kind="lm", num_labels=2, block=ATTENTION_BLOCK, floor=-1) -> dict:
    """Bytes above parameters + gradients + optimizer + activations at the candidate peaks (module docstring):
    "attention backward of block k" and "LayerNorm backward of block k's ln_1" for the lowest block k the backward
    visits (backward floor), "ln_f backward" (when it visits none but ln_f trains), "embedding backward", "forward
    of a block below the floor" (only when there is one), "optimizer step". `sizes`: name -> element count."""
    f = resolve_dtype(dtype).itemsize
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
        phases[f"attention backward of block {k}"] = (dlogits + 13 * N * C + attention_workspace(B, H, T, C, block)
                                                      - missing) * f
        still_missing = sum(sizes[n] for n in late & trainable if "c_attn" not in n)   # c_attn's gradient is made
        phases[f"LayerNorm backward of block {k}'s ln_1"] = (dlogits + 19 * N * C - still_missing) * f
    if floor == cfg.n_layer:          # only ln_f (and the head) train: the backward ends in ln_f's
        phases["ln_f backward"] = (dlogits + 3 * N * C) * f
    if floor > 0:                     # block 0 runs without keeping caches: they live only until it returns
        one_block = sum(block_activation_terms(cfg, batch, seq, dtype, block).values())
        masks = 2 * N * C * f if cfg.dropout > 0 else 0
        # + the residual stream in and out, residual 1, and the two c_proj outputs o and y: 5·N·C
        phases["forward of a block below the floor"] = one_block + masks + 5 * N * C * f - activations
    if trainable & {"wte.weight", "wpe.weight"}:
        index = INDEX_BYTES * N * C                                   # np.add.at's flat int64 positions
        if "wte.weight" not in trainable:
            wte = 0
        elif head_kind == "lm":       # dwte beside the head's share, then their sum as a new array
            wte = V * C * f + max(V * C * f, index)
        else:                         # dwte *is* wte's gradient (counted in gradients); only the index array
            wte = index
        phases["embedding backward"] = (dlogits + 2 * N * C) * f + wte
    largest = max((sizes[n] for n in trainable), default=0)
    phases["optimizer step"] = largest * f - activations              # the caches are freed by then
    return phases


# ---- prediction ----------------------------------------------------------------------------------------------------

def predict_memory(cfg: GPTConfig, method: str, batch: int, seq: int, rank: int = 8, targets="all-linear",
                   dtype="float32", optimizer="adamw", head_kind="lm", num_labels=2, block=ATTENTION_BLOCK,
                   dora=False, **freeze_options) -> dict:
    """Bytes of one training step, term by term (module docstring), from arithmetic only: instant for any preset.

    method: "full" | "freeze" | "head" | "lora", with finetune.py's rules (freeze_options such as freeze_blocks=1
    go to its freeze_plan). rank, targets: LoRA's (targets: "all-linear" or module names, see lora_modules).
    dora: DoRA adapters (their magnitudes m and cache z = x_d V; the backward's transient V-sized temporaries are
    not counted).
    head_kind: "lm" (tied to wte) or "classification" (score.weight [num_labels, C], read at the last token).
    block: the attention block size the model runs with (fast.attention.ATTENTION_BLOCK; None: the reference).

    Returns {"parameters", "gradients", "optimizer", "activations", "workspace", "total"} in bytes, plus
    "trainable" (parameter count), "activation_terms" and "workspace_phases" (name -> bytes) and "peak_phase".
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
    f = resolve_dtype(dtype).itemsize
    shapes, trainable, modules = _shapes(cfg, method, rank, targets, head_kind, num_labels, freeze_options, dora)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    n_train = sum(sizes[n] for n in trainable)
    floor = backward_floor(trainable, cfg.n_layer)
    acts = activation_terms(cfg, batch, seq, dtype, head_kind, num_labels, modules, rank, block, dora, floor)
    out = dict(parameters=sum(sizes.values()) * f, gradients=n_train * f, optimizer=OPTIMIZERS[optimizer] * n_train * f,
               activations=sum(acts.values()))
    phases = workspace_terms(cfg, batch, seq, sizes, trainable, out["activations"], dtype, head_kind, num_labels, block,
                             floor)
    peak_phase = max(phases, key=phases.get)
    out["workspace"] = max(0, phases[peak_phase])
    out["total"] = sum(out[t] for t in TERMS[:-1])
    out.update(trainable=n_train, activation_terms=acts, workspace_phases=phases, peak_phase=peak_phase)
    return out


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


def memory_saving(cfg: GPTConfig, batch: int, seq: int, rank: int = 8, targets="all-linear", **options) -> float:
    """Predicted peak of a LoRA step divided by that of a full fine-tuning step (the saving is 1 − ratio).

    Sweep it: it falls (LoRA saves more) as the model grows at fixed batch·seq, and rises toward 1 as batch·seq
    grows, because activations, the same for both methods, take over (module docstring)."""
    lora = predict_memory(cfg, "lora", batch, seq, rank=rank, targets=targets, **options)
    full = predict_memory(cfg, "full", batch, seq, rank=rank, **options)
    return lora["total"] / full["total"]


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

def format_memory(d: dict, other: dict | None = None, labels=("predicted", "measured")) -> str:
    """A table in MiB of the terms of one result (predict_memory or measure_memory), or of two side by side."""
    cols = [d] if other is None else [d, other]
    header = (["MiB"] + list(labels[:2])) if other is not None else ["term", "MiB"]
    rows = [[t] + [f"{c[t] / MiB:,.2f}" for c in cols] for t in TERMS if all(t in c for c in cols)]
    if other is not None and d.get("total"):            # each total divided by the first column's
        rows.append([f"total/{labels[0]}"] + ["1.00", f"{other['total'] / d['total']:.3f}"])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(r):
        return "  ".join(x.ljust(widths[i]) if i == 0 else x.rjust(widths[i]) for i, x in enumerate(r))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
