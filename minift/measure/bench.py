"""`minift bench`: time one training step, count its FLOPs, and say where the time goes.

A training step is what ../shared/bench/torch_ref.py times for the same model in eager PyTorch: forward, the
hand-written backward and one AdamW step (lr 1e-3, weight decay 0), float32, on seeded random tokens at the preset's
bench batch (config.BENCH_BATCH) and full context n_ctx. `--method lora` attaches LoRA with r = 8 (`--rank`),
α = 2r, on all four linears of every block ("all-linear": torch_ref's c_attn, c_proj, c_fc, mlp_proj); `--method
qlora` the same on an NF4 base (torch_ref has no twin: compare it with lora's step; the difference is the
dequantising). The step time is the median of `--steps` timed steps after `--warmup` untimed ones (the median as
torch_ref takes it: the middle one of the sorted times, the upper one for an even count).

Letters: B batch, T time (n_ctx), N = B·T tokens, C channels, V vocab, L blocks, H heads, D = C/H, R LoRA rank.

FLOPs of one step (`count_flops`): matmuls only, 2 FLOPs per multiply-add, the usual convention (Kaplan et al. 2020,
§2.1; PaLM's MFU, Chowdhery et al. 2022, appendix B). Elementwise work (softmax, GELU, LayerNorm, AdamW) is not
counted: it is time without FLOPs, which is what lowers MFU.
    a linear [I, O]       forward 2·N·I·O; backward dx 2·N·I·O, dW 2·N·I·O only if W trains:
                          6·N·I·O trained, 4·N·I·O frozen (LoRA skips the weight gradient, lora/op.py)
    per block             linears c_attn [C, 3C], attn.c_proj [C, C], c_fc [C, 4C], mlp.c_proj [4C, C]: 12·C² weights
    a LoRA adapter        h = x Aᵀ, h Bᵀ forward; dB, dh, dA, dx_d backward: 6·N·R·(I + O)
    attention             q kᵀ and att v: 2·2·B·H·T²·D forward, twice that backward (datt, dv, dq, dk):
                          12·B·H·T²·D = 12·B·T²·C per block: the full T×T square, the usual convention. The
                          model's blocked attention (ops/attention.py) skips the blocks above the diagonal, as a
                          causal sdpa kernel may: it multiplies (1 + 64/T)/2 of this (62.5% at T = 256), so on
                          small the count is ~4% above the matmul work really done
    LM head               h wteᵀ [C, V]: 6·N·C·V with wte trained (full), 4·N·C·V frozen (LoRA)
So full fine-tuning is 6·N·(12·L·C² + C·V) + 12·L·B·T²·C: the "6 × parameters × tokens" rule for the matmul weights
(the embedding gathers do no matmul), plus attention.

MFU (model FLOPs utilisation) = (FLOPs per step / seconds per step) / peak, with the peak measured in each run as
../shared/bench/gemm_peak.py does: the best of a few square float32 matmuls (n = 512, 1024, 2048; on a GPU 2048,
4096, 8192) on the same array module and thread count, before and after the timed steps (the better of the two: a
burst of load from another process during one of them would lower the peak and inflate MFU), so "100%" means "as
fast as this machine's BLAS multiplies big square matrices".

Breakdown: after the timed steps, `--profile-steps` more steps run with every op call the model makes wrapped in a
timer (`OpProfiler`: the free op functions minift.model calls, and GPT's linear and head methods, patched for the
duration of those steps only, so the timed steps and normal training run the plain code). Only the outermost timed
call counts (the LM head's matmul is "lm_head", not also "linear"); an adapted linear's time (base + LoRA branch)
is "linear". What no wrapper sees (residual adds, Python between calls) is "other". On a GPU each wrapper
synchronises before and after its call, so the breakdown's step is slower than the timed one; the shares hold.

Process conditions, reported in the output because they change the numbers a lot on a CPU:
    --threads N      numpy's BLAS threads for the run (default: the environment's, OPENBLAS_NUM_THREADS). On a
                     machine whose cores are busy with other work, OpenBLAS's threads wait for each other at every
                     matmul: on a loaded 2-core machine 2 threads were measured 3-15x slower than 1.
    --malloc reuse   (default) keep freed memory mapped between steps (reuse_freed_memory): without it every step
                     page-faults its activations in again: 16-25% of a demo step's CPU time spent in the kernel.
    --clock cpu      time with the process's CPU time instead of wall time: steadier on a shared machine with one
                     BLAS thread (it adds up every thread's time, so it is not a wall time with more threads).

--json prints exactly one JSON line on stdout (and nothing else), with these keys:
    impl             "minift"
    preset, method   as given ("full" | "lora" | "qlora": LoRA on an NF4 base);  rank: R for (q)lora, null for
                     full;  alpha: α or null
    device           "cpu" | "gpu";  dtype "float32";  batch, seq: B and T;  steps, warmup
    clock            "wall" | "cpu";  malloc: "reuse" | "system" (what was in force)
    ms_per_step      the median step time, ms;  ms_min, ms_max: the fastest and slowest timed step
    tokens_per_s     B·T / median step time
    flops_per_step   the count above, an integer;  flops: the same split {"linear", "lora", "attention", "lm_head"}
    achieved_gflops  flops_per_step / median step time / 1e9
    peak_gflops      the measured float32 matmul peak, GFLOP/s;  peak_n: the matrix size that gave it
    mfu              achieved_gflops / peak_gflops, a fraction (0.42 = 42%)
    trainable, total parameter counts (total includes adapters, as torch_ref counts them)
    threads          the thread count numpy's BLAS reports (OpenBLAS/MKL/BLIS, read through threadpoolctl), null if
                     unknown
    workers          threads the batch was split across (1: the one-thread path; see minift/fast/parallel.py): what
                     --workers asked, or what auto (the default) decided
    reference        true when every op ran its reference (MINIFT_REFERENCE=1: dispatch.py), false for the fast twins
    fused            true when the GPU ran minift's fused elementwise kernels (minift/fast/kernels.py; --no-fused or
                     MINIFT_FUSED=0 runs the reference lines instead, to measure what fusion buys); false on the CPU
    blas             the BLAS numpy was built with (name and version);  numpy: its version
    loss             the last timed step's loss (a sanity check: finite, about ln V at init)
    breakdown        {"forward": {op: ms}, "backward": {op: ms}, "optimizer": ms, "other": ms, "step": ms,
                      "steps": k}: per-step medians over k profiled steps; ops are among embedding, layernorm,
                      linear, attention, gelu, dropout, lm_head, cross_entropy. null with --profile-steps 0.
                      Always the one-thread path's, also with --workers.
"""
from __future__ import annotations

import ctypes
import math
import platform
import statistics
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .. import model as model_module
from ..backend import resolve_device
from ..config import BENCH_BATCH, PRESETS, GPTConfig
from ..errors import MiniftError
from ..dispatch import reference_only
from ..fast.kernels import fused_enabled, use_fused
from ..fast.parallel import AUTO, blas_threads_shared

METHODS = ("full", "lora", "qlora")
PEAK_SIZES = (512, 1024, 2048)
# A GPU reaches its float32 peak only on products big enough to fill all its multiprocessors (an H200 has 132):
# n = 8192 is 1.1 TFLOP per product, tens of milliseconds even there. run_bench picks one of the two by device.
GPU_PEAK_SIZES = (2048, 4096, 8192)
# wall: elapsed time (what torch_ref reports). cpu: this process's CPU time, user + system, all threads — steadier
# on a shared machine with one BLAS thread; with more threads it adds theirs up, spin-waiting included.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
MALLOC = ("reuse", "system")     # reuse: reuse_freed_memory() first (glibc only); system: malloc as it comes
OP_ORDER = ("embedding", "layernorm", "linear", "attention", "gelu", "dropout", "lm_head", "cross_entropy")

# glibc mallopt parameters (malloc.h) and the values reuse_freed_memory sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2 ** 20, 2 ** 30

# The free op functions minift.model calls (module attribute -> phase, op) and the GPT methods timed as one op.
MODEL_OPS = {
    "embedding_forward": ("forward", "embedding"), "embedding_backward": ("backward", "embedding"),
    "layernorm_forward": ("forward", "layernorm"), "layernorm_backward": ("backward", "layernorm"),
    "attention_forward": ("forward", "attention"), "attention_backward": ("backward", "attention"),
    "gelu_forward": ("forward", "gelu"), "gelu_backward": ("backward", "gelu"),
    "dropout_forward": ("forward", "dropout"), "dropout_backward": ("backward", "dropout"),
    "cross_entropy_forward": ("forward", "cross_entropy"), "cross_entropy_backward": ("backward", "cross_entropy"),
}
MODEL_METHODS = {
    "_linear_forward": ("forward", "linear"), "_linear_backward": ("backward", "linear"),
    "_head_forward": ("forward", "lm_head"), "_head_backward": ("backward", "lm_head"),
}


# ---- what a step costs ---------------------------------------------------------------------------------------------

def count_flops(cfg: GPTConfig, batch: int, seq: int, method: str = "full", rank: int = 8) -> dict:
    """Matmul FLOPs of one training step, split {"linear", "lora", "attention", "lm_head", "total"} (module
    docstring). method "lora": every block linear and the tied LM head frozen, an adapter of rank R on each linear;
    "qlora" the same matmuls (its dequantisation is elementwise work, not counted)."""
    _check_method(method)
    N, C, V, L = batch * seq, cfg.n_embd, cfg.vocab_size, cfg.n_layer
    per_weight = 6 if method == "full" else 4                 # forward, dx, and dW only if the weight trains
    linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]    # c_attn, attn.c_proj, c_fc, mlp.c_proj: [I, O]
    flops = {
        "linear": L * sum(per_weight * N * I * O for I, O in linears),
        "lora": L * sum(6 * N * rank * (I + O) for I, O in linears) if method != "full" else 0,
        "attention": L * 12 * batch * seq * seq * C,          # 2·2·B·H·T²·D forward, twice that backward
        "lm_head": per_weight * N * C * V,
    }
    flops["total"] = sum(flops.values())
    return flops


def matmul_peak(xp=np, sizes=PEAK_SIZES, reps: int = 3, sync=lambda: None, clock=time.perf_counter,
                copies: int = 1) -> tuple[float, int]:
    """(GFLOP/s, n): the best float32 n×n matmul rate over `sizes`, timed as gemm_peak.py does (one untimed call,
    then the fastest of `reps`). copies > 1: that many products at once, one per thread (the peak of `workers`
    threads with one BLAS thread each, see minift/fast/parallel.py), their FLOPs added."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(0)
    best = (0.0, 0)
    with ThreadPoolExecutor(max_workers=copies) as pool:
        for n in sizes:
            a = xp.asarray(rng.random((n, n), dtype=np.float32))  # (n, n)
            b = xp.asarray(rng.random((n, n), dtype=np.float32))  # (n, n)

            def products():
                if copies == 1:
                    a @ b
                else:
                    list(pool.map(lambda _: a @ b, range(copies)))

            products()
            sync()
            for _ in range(reps):
                t0 = clock()
                products()
                sync()
                gflops = copies * 2 * n ** 3 / max(clock() - t0, 1e-9) / 1e9
                best = max(best, (gflops, n))
    return best


def blas_info() -> dict:
    """{"blas": name and version numpy was built with, "threads": the BLAS's thread count or None}."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:      # an unusual numpy build: the name is only informative
        name = "unknown"
    lib = _numpy_blas()
    return {"blas": name, "threads": lib.num_threads if lib else None}


def _numpy_blas():
    """threadpoolctl's controller of the BLAS library numpy calls (num_threads, set_num_threads), None if none is
    loaded or threadpoolctl does not know it. threadpoolctl finds every BLAS loaded into the process, on Linux,
    macOS and Windows; a wheel's numpy brings its own (in numpy.libs/ or numpy/.dylibs/), which is preferred over
    another package's (scipy's, torch's); a numpy linked to the system's BLAS gets the first one found."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:        # an environment installed before minift depended on it
        raise MiniftError("the 'threadpoolctl' package is needed to read and set numpy's BLAS threads: "
                          "pip install threadpoolctl") from None
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    own = [lib for lib in libs if any(part.startswith("numpy") for part in Path(lib.filepath or "").parts)]
    return (own or libs or [None])[0]


def set_blas_threads(n: int):
    """Make numpy's BLAS use n threads from now on (what OPENBLAS_NUM_THREADS=n does at start-up)."""
    _check_count("threads", n, 1)
    lib = _numpy_blas()
    if lib is None:
        raise MiniftError("--threads: cannot find numpy's BLAS library in this process to set its thread count; "
                          "set OPENBLAS_NUM_THREADS (or MKL_NUM_THREADS) in the environment instead")
    lib.set_num_threads(n)


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS after every step.

    A training step allocates and frees the same large arrays (activations, logits) every time. By default glibc
    serves allocations above a threshold with fresh mmap pages, and trims the heap's free top, so each step pays a
    page fault per 4 KiB of them again: on demo, ~24,000 faults and 16-25% of the step's CPU time, in the kernel.
    Raising the mmap threshold to its maximum (32 MiB on 64-bit) and the trim threshold to 1 GiB keeps those pages
    mapped: the process holds its peak, which it reaches every step anyway. The same as the environment
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 (what benchmarks/run.sh gives torch_ref too).
    Returns False where it cannot apply (not glibc: macOS, Windows, musl): nothing changes there.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


# ---- where the time goes -------------------------------------------------------------------------------------------

class OpProfiler:
    """Time every op call a model makes, by phase and op, while the `with` block runs; restore everything after.

    with OpProfiler(model, sync) as prof:  ...steps...;  prof.pop() -> {("forward", "linear"): seconds, ...}
    Only the outermost timed call is charged (depth counter), so nested ops are not counted twice.
    """

    def __init__(self, model, sync=lambda: None, clock=time.perf_counter):
        self.model, self.sync, self.clock = model, sync, clock
        self.times = defaultdict(float)
        self._depth = 0
        self._saved = {}

    def _wrap(self, fn, key):
        def timed(*args, **kwargs):
            if self._depth:                    # inside another timed op: its time belongs to the outer one
                return fn(*args, **kwargs)
            self._depth += 1
            self.sync()
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.times[key] += self.clock() - t0
                self._depth -= 1
        return timed

    def __enter__(self):
        for name, key in MODEL_OPS.items():
            if hasattr(model_module, name):
                self._saved[name] = getattr(model_module, name)
                setattr(model_module, name, self._wrap(self._saved[name], key))
        for name, key in MODEL_METHODS.items():      # instance attributes shadow the class's methods
            setattr(self.model, name, self._wrap(getattr(self.model, name), key))
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(model_module, name, fn)
        for name in MODEL_METHODS:
            self.model.__dict__.pop(name, None)
        return False

    def pop(self) -> dict:
        """The times gathered since the last pop, and a fresh start."""
        times, self.times = dict(self.times), defaultdict(float)
        return times


def _breakdown(samples: list) -> dict:
    """Per-step medians (ms) from a list of {"times": {(phase, op): s}, "optimizer": s, "step": s}."""
    def med(values):
        return round(statistics.median(values) * 1e3, 3)
    keys = {k for s in samples for k in s["times"]}
    out = {"forward": {}, "backward": {}}
    for phase in ("forward", "backward"):
        for op in OP_ORDER:
            if (phase, op) in keys:
                out[phase][op] = med([s["times"].get((phase, op), 0.0) for s in samples])
    out["optimizer"] = med([s["optimizer"] for s in samples])
    out["other"] = med([s["step"] - s["optimizer"] - sum(s["times"].values()) for s in samples])
    out["step"] = med([s["step"] for s in samples])
    out["steps"] = len(samples)
    return out


# ---- the benchmark -------------------------------------------------------------------------------------------------

def _check_method(method):
    if method not in METHODS:
        raise MiniftError(f"method {method!r} is not one of {list(METHODS)}")


def _check_count(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise MiniftError(f"{name}={value!r} must be an integer ≥ {lo}")


def _check_model_args(preset, method, rank):
    if preset not in PRESETS:
        raise MiniftError(f"preset {preset!r} is not one of {sorted(PRESETS)}")
    _check_method(method)
    _check_count("rank", rank, 1)


def build_step(preset: str, method: str = "full", rank: int = 8, device: str = "cpu", seed: int = 0,
               workers: int | str = 1):
    """The model, a `step()` that runs one training step (forward, backward, AdamW) on fixed seeded random tokens,
    and a dict whose "optimizer" entry is the last step's optimizer time. workers > 1: the step's forward and
    backward run on that many row shards at once (minift/fast/parallel.py), "auto" as training decides
    (dispatch.workers_for; step.workers says what it decided); `step(split=False)` runs the one-thread path."""
    from ..dispatch import workers_for
    from ..fast.parallel import check_splittable, split_loss_and_grads
    from ..lora import LoRAConfig, attach_lora
    from ..optim import AdamW
    _check_model_args(preset, method, rank)
    cfg = GPTConfig.preset(preset)
    model = model_module.GPT(cfg, seed=seed, dtype="float32", device=device)
    if method in ("lora", "qlora"):
        attach_lora(model, LoRAConfig(r=rank, alpha=2 * rank, targets="all-linear",
                                      quant="nf4" if method == "qlora" else None), seed=seed)
    B, T = BENCH_BATCH[preset], cfg.n_ctx
    workers = workers_for(workers, model, rows=B)
    check_splittable(model, workers, rows=B, rows_option=f"{preset}'s bench batch")
    opt = AdamW(model.trainable_params(), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    ids = model.xp.asarray(rng.integers(0, cfg.vocab_size, (B, T)))       # (B, T)
    targets = model.xp.asarray(rng.integers(0, cfg.vocab_size, (B, T)))   # (B, T)
    timer = {"optimizer": 0.0}

    def step(sync=lambda: None, clock=time.perf_counter, split=True):
        if split and workers > 1:
            loss, grads = split_loss_and_grads(model, ids, targets, workers=workers)
        else:
            loss, grads = model.loss_and_grads(ids, targets)
        sync()
        t0 = clock()
        opt.step(grads)
        sync()
        timer["optimizer"] = clock() - t0
        return loss

    step.workers = workers
    return model, step, timer


def _synchroniser(model):
    """A function that waits for the device to finish its queued work (a no-op on the CPU)."""
    if model.device == "gpu":
        device = model.xp.cuda.Device()        # model.xp is cupy here; backend.py is the module that imported it
        return device.synchronize
    return lambda: None


def _time_steps(step, n, sync, clock):
    """Seconds of n steps, each fenced by a device synchronisation; and the last loss."""
    times, loss = [], math.nan
    for _ in range(n):
        sync()
        t0 = clock()
        loss = step()
        sync()
        times.append(clock() - t0)
    return times, loss


def _profile_steps(model, step, timer, n, sync, clock):
    """The breakdown of n more steps, every op call timed (OpProfiler); None for n = 0."""
    if n == 0:
        return None
    samples = []
    with OpProfiler(model, sync, clock) as prof:
        for _ in range(n):
            sync()
            t0 = clock()
            step(sync, clock)
            sync()
            samples.append({"step": clock() - t0, "optimizer": timer["optimizer"], "times": prof.pop()})
    return _breakdown(samples)


def run_bench(preset: str, method: str = "full", rank: int = 8, steps: int = 10, warmup: int = 2,
              device: str | None = "cpu", seed: int = 0, profile_steps: int = 3, peak_sizes=None,
              clock: str = "wall", malloc: str = "reuse", threads: int | None = None, workers: int | str = "auto",
              fused: bool | None = None) -> dict:
    """Benchmark one preset and method; returns the dict that --json prints (keys in the module docstring).
    peak_sizes: the n of the n×n matmuls that measure the peak (default PEAK_SIZES, GPU_PEAK_SIZES on a GPU).
    workers: > 1 splits each step's batch across that many CPU threads (minift/fast/parallel.py), with one BLAS thread
    each on 2 cores (cores // workers: fast.parallel.blas_threads_shared) unless `threads` says otherwise; "auto"
    (default) decides as training does (dispatch.workers_for), 1 when `threads` is given. The peak is then measured
    with `workers` matmuls at once, the most those threads together could do, and the per-op breakdown is of the
    one-thread path (ops of two threads interleave).
    fused: False runs the reference lines on a GPU instead of the fused kernels (minift/fast/kernels.py), True the
    kernels; None (default) leaves the process's setting ($MINIFT_FUSED, on unless it says 0)."""
    _check_model_args(preset, method, rank)
    if clock not in CLOCKS:
        raise MiniftError(f"clock {clock!r} is not one of {list(CLOCKS)}")
    if malloc not in MALLOC:
        raise MiniftError(f"malloc {malloc!r} is not one of {list(MALLOC)}")
    _check_count("steps", steps, 1)
    _check_count("warmup", warmup, 0)
    _check_count("profile_steps", profile_steps, 0)
    if workers == AUTO and threads is not None:
        workers = 1                     # --threads chooses BLAS threading, as in training
    if workers != AUTO:
        _check_count("workers", workers, 1)
    device = resolve_device(device)
    if peak_sizes is None:
        peak_sizes = GPU_PEAK_SIZES if device == "gpu" else PEAK_SIZES
    before = blas_info()["threads"]
    if threads is not None and device == "cpu":
        set_blas_threads(threads)
    try:
        with use_fused(fused) if fused is not None else nullcontext():
            result = _run(preset, method, rank, steps, warmup, device, seed, profile_steps, peak_sizes, clock,
                          malloc, workers, threads)
    finally:
        if threads is not None and device == "cpu" and before:
            set_blas_threads(before)        # a library call leaves the process's BLAS as it found it
    return result


def _run(preset, method, rank, steps, warmup, device, seed, profile_steps, peak_sizes, clock, malloc,
         workers, threads=None) -> dict:
    """run_bench's work, its arguments checked."""
    reused = reuse_freed_memory() if malloc == "reuse" else False
    model, step, timer = build_step(preset, method, rank, device, seed, workers)
    with blas_threads_shared(step.workers) if threads is None else nullcontext():     # --threads: as asked
        return _measure(preset, method, rank, steps, warmup, device, profile_steps, peak_sizes, clock, reused,
                        model, step, timer)


def _measure(preset, method, rank, steps, warmup, device, profile_steps, peak_sizes, clock, reused, model, step,
             timer) -> dict:
    """_run's timing and its result, with the BLAS threads the workers leave."""
    workers = step.workers
    sync = _synchroniser(model)
    read = CLOCKS[clock]
    first_peak = matmul_peak(model.xp, peak_sizes, sync=sync, clock=read, copies=workers)
    _time_steps(step, warmup, sync, read)
    times, loss = _time_steps(step, steps, sync, read)
    one_thread_step = lambda s, c: step(s, c, split=False)                # noqa: E731  the profiled path
    breakdown = _profile_steps(model, one_thread_step, timer, profile_steps, sync, read)
    # measured before and after the steps, the better kept: a moment of load on a shared machine lowers one of them
    peak, peak_n = max(first_peak, matmul_peak(model.xp, peak_sizes, sync=sync, clock=read, copies=workers))
    med = sorted(times)[len(times) // 2]
    B, T = BENCH_BATCH[preset], model.cfg.n_ctx
    flops = count_flops(model.cfg, B, T, method, rank)
    achieved = flops["total"] / med / 1e9
    info = blas_info() if device == "cpu" else {"blas": "cuBLAS", "threads": None}
    return {
        "impl": "minift", "preset": preset, "method": method, "rank": rank if method != "full" else None,
        "alpha": 2 * rank if method != "full" else None, "device": device, "dtype": "float32",
        "batch": B, "seq": T, "steps": steps, "warmup": warmup, "clock": clock,
        "malloc": "reuse" if reused else "system",
        "ms_per_step": round(med * 1e3, 2), "ms_min": round(min(times) * 1e3, 2), "ms_max": round(max(times) * 1e3, 2),
        "tokens_per_s": round(B * T / med), "flops_per_step": int(flops["total"]),
        "flops": {k: int(v) for k, v in flops.items() if k != "total"},
        "achieved_gflops": round(achieved, 2), "peak_gflops": round(peak, 2), "peak_n": peak_n,
        "mfu": round(achieved / peak, 4), "trainable": model.num_params(trainable_only=True),
        "total": model.num_params(), "threads": info["threads"], "workers": workers,
        "fused": device == "gpu" and fused_enabled(), "reference": reference_only(), "blas": info["blas"],
        "numpy": np.__version__,
        "loss": round(float(loss), 4), "breakdown": breakdown,
    }


# ---- the report ----------------------------------------------------------------------------------------------------

def format_report(r: dict) -> str:
    """The human-readable summary of run_bench's result."""
    what = "full fine-tuning" if r["method"] == "full" else \
        f"{'QLoRA (NF4 base)' if r['method'] == 'qlora' else 'LoRA'} r={r['rank']} alpha={r['alpha']} all-linear"
    threads = f", {r['threads']} BLAS thread{'s' if r['threads'] > 1 else ''}" if r["threads"] else ""
    if r.get("workers", 1) > 1:
        threads += f", batch split across {r['workers']} worker threads"
    if r["device"] == "gpu":
        threads += ", fused elementwise kernels" if r.get("fused") else ", no fused kernels (reference lines)"
    if r.get("reference"):
        threads += ", reference ops only (MINIFT_REFERENCE=1)"
    clock = "" if r["clock"] == "wall" else " (process CPU time)"
    f, total = r["flops"], r["flops_per_step"]
    split = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in f.items() if v)
    lines = [
        f"minift bench: {r['preset']}, {what}, {r['dtype']} on {r['device']} ({r['blas']}{threads})",
        f"  batch {r['batch']} x {r['seq']} tokens; {r['steps']} timed steps after {r['warmup']} warm-up; "
        f"malloc {r['malloc']}",
        f"  step        {r['ms_per_step']:.1f} ms{clock}  (median; fastest {r['ms_min']:.1f}, "
        f"slowest {r['ms_max']:.1f})",
        f"  throughput  {r['tokens_per_s']:,} tokens/s",
        f"  FLOPs       {total / 1e9:.2f} GFLOP per step ({split})",
        f"  achieved    {r['achieved_gflops']:.1f} GFLOP/s = MFU {100 * r['mfu']:.1f}% of the measured float32 "
        f"matmul peak {r['peak_gflops']:.1f} GFLOP/s (n={r['peak_n']})",
        f"  parameters  {r['trainable']:,} trainable of {r['total']:,}",
    ]
    if r["breakdown"]:
        lines += ["", _format_breakdown(r["breakdown"])]
    return "\n".join(lines)


def _format_breakdown(b: dict) -> str:
    step = b["step"] or 1.0
    rows = [f"where the time goes: ms per step, median of {b['steps']} profiled steps ({b['step']:.1f} ms each)",
            f"  {'op':<16}{'forward':>9}{'backward':>10}{'total':>9}{'share':>8}"]
    ops = [op for op in OP_ORDER if op in b["forward"] or op in b["backward"]]
    for op in ops:
        fw, bw = b["forward"].get(op, 0.0), b["backward"].get(op, 0.0)
        rows.append(f"  {op:<16}{fw:>9.1f}{bw:>10.1f}{fw + bw:>9.1f}{100 * (fw + bw) / step:>7.1f}%")
    for name, label in (("optimizer", "optimizer"), ("other", "other")):
        rows.append(f"  {label:<16}{'':>9}{'':>10}{b[name]:>9.1f}{100 * b[name] / step:>7.1f}%")
    rows.append("  (other: what no op wrapper sees: residual adds, Python between the calls)")
    return "\n".join(rows)
