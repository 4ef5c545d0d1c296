"""Data parallelism inside one process: a batch split across CPU threads, each shard's gradient weighted and summed.

Why. On a CPU, NumPy runs every elementwise op (softmax, GELU, LayerNorm, the loss, the adds) on one core; only the
matmuls use more, through OpenBLAS's threads, which meet at the end of every matmul. With two cores, half of a
demo step then runs on one core while the other waits. Splitting the *batch* instead keeps every core busy for the
whole step: each thread runs the ordinary forward and backward (`GPT.loss_and_grads`, unchanged) on its own rows,
with one BLAS thread, and NumPy releases the interpreter lock inside its loops and BLAS calls, so the threads truly
run at once. This is what data-parallel training (PyTorch's DistributedDataParallel) does across GPUs, here across
the cores of one CPU.

The math. The loss is a mean over the N targets that count (cross_entropy.py: ignore_index -100 excluded). A shard i
holding N_i of them has its own mean loss L_i, and

    L = (1/N) Σ_n ℓ_n = Σ_i (N_i / N) · L_i        so        ∇L = Σ_i (N_i / N) · ∇L_i

(weights N_i / N, not 1 / shards: shards can hold different numbers of counted targets, e.g. padding). That is the
same identity gradient accumulation rests on. The result equals one whole-batch `loss_and_grads` up to float
rounding (the sums are grouped differently), and is reproducible: shards are fixed by row order and summed in order.

Floating-point errors: NumPy keeps its error state (np.errstate: warn, raise, ignore or call on an overflow) per
thread, and a pool's threads start with the default one. Each shard runs under the state of the thread that split
the batch (_in_callers_errstate), so an overflow inside a worker is seen as one in that thread would be: the
training loop's watch (train.py, Overflows) stops the run either way.

What it needs: a step that draws no random numbers (dropout 0, adapter dropout 0), since shards sharing one
generator would draw in an order the threads decide; and the CPU (on a GPU one stream already runs every op on all
its cores). Call `check_splittable` first; `train(..., TrainConfig(workers=2))` and `minift ... --workers 2` do.
The readable path is `GPT.loss_and_grads`; tests/fast/test_parallel.py checks this one against it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..errors import MiniftError

IGNORE_INDEX = -100
AUTO = "auto"               # workers="auto": the fastest configuration measured (dispatch.workers_for)
SHARDS_PER_WORKER = 2       # each thread takes two smaller shards in turn (why: split_loss_and_grads' docstring)
_POOLS: dict = {}           # workers -> a ThreadPoolExecutor kept for the process (threads are reused every step)


def uses_randomness(model) -> str | None:
    """What in a training step of `model` would draw random numbers (a description), or None."""
    if model.cfg.dropout > 0:
        return f"dropout={model.cfg.dropout}"
    for module, adapter in getattr(model, "adapters", {}).items():
        if getattr(adapter, "dropout", 0) > 0:
            return f"LoRA dropout={adapter.dropout} on {module}"
    return None


def check_splittable(model, workers: int, rows: int | None = None, rows_option: str = "--batch"):
    """Raise a MiniftError naming the reason if a batch of `model` (of `rows` rows, when given) cannot be split
    across `workers` threads."""
    check_workers(workers, rows, rows_option)
    if workers == 1:
        return
    if model.device != "cpu":
        raise MiniftError(f"workers={workers} splits a batch across CPU threads; the model is on the {model.device}, "
                          "where one device already runs each op on all its cores: use workers=1")
    if (why := uses_randomness(model)) is not None:
        raise MiniftError(f"workers={workers} needs a training step without randomness, but the model has {why}: "
                          "threads sharing one generator would draw in an order they decide. Use workers=1")


def check_workers(workers, rows: int | None = None, rows_option: str = "--batch") -> None:
    """workers is "auto" (dispatch.workers_for decides) or a positive integer, and no more than the rows of a batch
    (each worker takes at least one)."""
    if workers == AUTO:
        return
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise MiniftError(f"workers={workers!r} must be a positive integer or {AUTO!r}")
    if rows is not None and workers > rows:
        raise MiniftError(f"workers={workers} (--workers) is more than the {rows} rows of a batch ({rows_option}): "
                          "each worker takes rows of the batch, so some would have none")


def cpu_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def blas_threads_shared(workers: int):
    """While the block runs, at most cpu_cores() // workers BLAS threads per worker, when there are more: `workers`
    threads each calling a BLAS that starts a thread per core would put several threads on every core, which wait
    for each other at every matmul. A setting that already fits (one BLAS thread, or --threads) is left alone."""
    if workers <= 1:
        yield
        return
    from threadpoolctl import threadpool_info, threadpool_limits
    share = max(1, cpu_cores() // workers)
    if max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1) <= share:
        yield
        return
    with threadpool_limits(limits=share, user_api="blas"):
        yield


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minift-shard")
    return _POOLS[workers]


def _in_callers_errstate(fn):
    """fn, wrapped to run in a worker thread under the floating-point error state of the thread calling this now
    (np.geterr(): what to do on overflow, invalid, divide, underflow; np.geterrcall(): the function "call" calls)."""
    state, call = np.geterr(), np.geterrcall()

    def run(*args):
        with np.errstate(**state, call=call):
            return fn(*args)
    return run


def counted_targets(targets) -> int:
    """N: how many targets count in the loss (those not equal to ignore_index)."""
    return int((np.asarray(targets) != IGNORE_INDEX).sum())


def split_loss_and_grads(model, input_ids, targets, attention_mask=None, workers: int = 2,
                         shards: int | None = None):
    """`model.loss_and_grads` on row shards of the batch, `workers` at a time; returns (loss, grads) as it does.

    input_ids: (B, T) host ints; targets: (B, T) or (B,) with -100 where nothing counts; attention_mask: (B, T) or
    None. shards: how many consecutive row blocks (np.array_split) the batch is cut into, default 2 per worker (at
    most B): each thread takes them in turn, so a thread that another process slows down leaves more to the others,
    and a smaller shard's activations sit better in cache (demo, 16 rows on 2 threads: 83-86 ms with 4 shards
    against 91-95 with 2, alternating runs in one process; small: no clear difference). Shards without a counted
    target are skipped (their gradient is zero). Gradients are folded into the sum in shard order as they finish.
    The caller sets numpy's BLAS to one thread (the CLI's --workers does): workers × BLAS threads should not exceed
    the cores.
    """
    check_splittable(model, workers)
    if shards is not None and (not isinstance(shards, (int, np.integer)) or shards < 1):
        raise MiniftError(f"shards={shards!r} must be a positive integer")
    input_ids, targets = np.asarray(input_ids), np.asarray(targets)
    if workers == 1 or len(input_ids) < 2:
        return model.loss_and_grads(input_ids, targets, attention_mask=attention_mask)
    n_shards = min(shards or SHARDS_PER_WORKER * workers, len(input_ids))
    rows = np.array_split(np.arange(len(input_ids)), n_shards)
    mask = None if attention_mask is None else np.asarray(attention_mask)
    parts = [(r, counted_targets(targets[r])) for r in rows]          # (rows, N_i) per shard
    parts = [(r, n) for r, n in parts if n > 0]
    if not parts:                                 # nothing counts anywhere: let the model raise its own error
        return model.loss_and_grads(input_ids, targets, attention_mask=attention_mask)
    n_total = sum(n for _, n in parts)
    shard = _in_callers_errstate(model.loss_and_grads)              # an overflow in a shard reaches the caller
    futures = [_pool(workers).submit(shard, input_ids[r], targets[r], None if mask is None else mask[r])
               for r, _ in parts]
    loss = 0.0
    grads = {}
    for (_, n), future in zip(parts, futures):   # in shard order, so the sum is reproducible
        loss_i, grads_i = future.result()          # L_i, ∇L_i
        w = n / n_total                            # N_i / N
        loss += w * loss_i
        for name, g in grads_i.items():
            g *= g.dtype.type(w)                   # in place: ∇L_i is this shard's own array
            if name in grads:
                grads[name] += g
            else:
                grads[name] = g
    return loss, grads
