"""The training loop: batches in, AdamW steps out, with evaluation, progress, checkpoints and exact resume.

One loop serves pretraining and every fine-tuning method: what differs is the batch source (next-token windows,
classification batches, prompt/completion batches) and which parameters train (model.frozen, adapters). A step:

    lr    = schedule(step)                              warmup, then cosine/linear decay (optim.lr_schedule)
    batch = source.next_batch()                         host arrays: input_ids, targets, attention_mask
    loss, grads = model.loss_and_grads(**batch)         forward + hand-written backward
    norm  = clip_grad_norm(grads, max)                  guard: a non-finite loss/gradient stops the run here
    opt.step(grads, lr)                                 in-place update of the trainable arrays only

Checkpoints (`out_dir/step-000100/`) hold the weights (model and adapters), the optimizer state, and `state.json`
with the step, the data position, the dropout generators (model and adapters) and the history, plus each file's
SHA-256. A checkpoint folder is complete before `out_dir/latest` (written atomically) points at it, so a crash during
a save leaves the previous checkpoint in force. Resuming restores all of it: the resumed run ends bitwise identical to an
uninterrupted one.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backend import to_numpy, xp_of
from .errors import MiniftError
from .io import atomic_write, load_json, load_safetensors, save_json, save_safetensors
from .optim import AdamW, clip_grad_norm, lr_schedule
from .parallel import check_splittable, split_loss_and_grads

CHECKPOINT_KEEP = 2      # how many checkpoint folders to keep (older ones are deleted after a newer one is in force)


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 10
    schedule: str = "cosine"        # "cosine" | "linear" | "constant"
    min_lr: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0   # global-norm clipping; None disables
    eval_every: int = 0             # 0: evaluate only at the end
    save_every: int = 0             # 0: save only at the end (and on interruption)
    seed: int = 0                   # dropout generator
    lr_scale: dict | None = None    # name -> factor: those parameters step at factor · lr (optim.py), e.g. a fresh head
    workers: int = 1                # >1: each batch split across that many CPU threads (minift/parallel.py)

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise MiniftError(f"{name}={getattr(self, name)} must be positive")
        if self.lr <= 0:
            raise MiniftError(f"lr={self.lr} must be positive")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise MiniftError(f"grad_clip={self.grad_clip} must be positive (or None to disable)")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise MiniftError(f"workers={self.workers!r} must be a positive integer")


@dataclass
class TrainResult:
    history: list = field(default_factory=list)     # one dict per step: step, loss, lr, grad_norm, ms
    evals: list = field(default_factory=list)       # one dict per evaluation: step + the metrics
    steps_done: int = 0
    seconds: float = 0.0
    tokens: int = 0

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


class TrainingDiverged(MiniftError):
    """A loss, a gradient or (after an update) a weight became NaN or infinite. In the first two cases the weights
    are still the last good ones and were saved before this was raised; in the third they are not, nothing was saved,
    and the last checkpoint on disk is the good state."""


def find_nonfinite(loss, grads) -> str | None:
    """Name what is not finite: "loss" or the first gradient tensor with a NaN/inf, else None."""
    return "loss" if not np.isfinite(loss) else first_nonfinite(grads)


def first_nonfinite(arrays: dict) -> str | None:
    """The name of the first array holding a NaN or inf, else None: one pass over each array, and the answers read
    back together. On a GPU each read-back waits for all queued work; one per tensor (148 for GPT-2, every step)
    would leave the device idle as often."""
    if not arrays:
        return None
    xp = xp_of(next(iter(arrays.values())))
    finite = to_numpy(xp.stack([xp.isfinite(a).all() for a in arrays.values()]))   # (n,) bool, one transfer
    bad = np.flatnonzero(~finite)                                                   # indices of the failing arrays
    return list(arrays)[bad[0]] if bad.size else None


# ---- checkpoints -------------------------------------------------------------------------------------------------

def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(out_dir, model, opt, step, source, dropout_rng, result: TrainResult, tcfg: TrainConfig):
    """Write out_dir/step-NNNNNN/ completely, then point out_dir/latest at it (atomically)."""
    out_dir = Path(out_dir)
    folder = out_dir / f"step-{step:06d}"
    if folder.exists():
        shutil.rmtree(folder)          # a leftover from a crash during an earlier save of this same step
    folder.mkdir(parents=True)
    save_safetensors({k: to_numpy(v) for k, v in model.all_params().items()}, folder / "weights.safetensors")
    sd = opt.state_dict()
    save_safetensors(sd.pop("arrays"), folder / "optimizer.safetensors")
    adapter_rng = _adapter_rng(model)
    state = dict(step=step, optimizer=sd, data=source.state(), dropout_rng=dropout_rng.bit_generator.state,
                 adapter_rng=adapter_rng.bit_generator.state if adapter_rng is not None else None,
                 train_config=asdict(tcfg), model_config=model.cfg.to_dict(), head=model.head, labels=model.labels,
                 frozen=sorted(model.frozen), base_fingerprint=model.fingerprint(),
                 history=result.history, evals=result.evals, seconds=result.seconds, tokens=result.tokens,
                 sha256={name: _sha256(folder / name) for name in ("weights.safetensors", "optimizer.safetensors")})
    save_json(state, folder / "state.json")
    with atomic_write(out_dir / "latest", "w") as f:
        f.write(folder.name + "\n")
    for old in sorted(out_dir.glob("step-*"))[:-CHECKPOINT_KEEP]:
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir) -> Path | None:
    pointer = Path(out_dir) / "latest"
    if not pointer.is_file():
        return None
    folder = Path(out_dir) / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise MiniftError(f"{pointer} points at {folder}, which is not a complete checkpoint")
    return folder


def load_checkpoint(folder, model, opt, source, dropout_rng) -> dict:
    """Restore weights, optimizer, data position and generator from a checkpoint folder; return its state.json."""
    folder = Path(folder)
    state = load_json(folder / "state.json", "checkpoint state")
    for name, digest in state["sha256"].items():
        if _sha256(folder / name) != digest:
            raise MiniftError(f"checkpoint file {folder / name} does not match its recorded SHA-256 (corrupted?)")
    if state["model_config"] != model.cfg.to_dict():
        raise MiniftError(f"checkpoint {folder} is for model config {state['model_config']}, "
                          f"not this model's {model.cfg.to_dict()}")
    weights, _ = load_safetensors(folder / "weights.safetensors", "checkpoint weights")
    arrays = model.all_params()
    if set(weights) != set(arrays):
        raise MiniftError(f"checkpoint {folder} holds parameters {sorted(set(weights) ^ set(arrays))[:5]} that do "
                          "not match this model's (different method, adapters or head?)")
    for name, a in arrays.items():
        a[...] = model.xp.asarray(weights[name])     # in place: the optimizer holds these same arrays
    opt_arrays, _ = load_safetensors(folder / "optimizer.safetensors", "checkpoint optimizer state")
    opt.load_state_dict(dict(state["optimizer"], arrays=opt_arrays))
    source.restore(state["data"])
    dropout_rng.bit_generator.state = state["dropout_rng"]
    adapter_rng = _adapter_rng(model)
    if adapter_rng is not None and state.get("adapter_rng") is not None:
        adapter_rng.bit_generator.state = state["adapter_rng"]
    return state


def _adapter_rng(model):
    """The generator that draws the adapters' dropout masks (LoRA's handle gives all its adapters one), or None."""
    return next((a.rng for a in model.adapters.values() if getattr(a, "rng", None) is not None), None)


# ---- the loop ----------------------------------------------------------------------------------------------------

def make_optimizer(model, tcfg: TrainConfig):
    return AdamW(model.trainable_params(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, lr_scale=tcfg.lr_scale)


def train(model, source, tcfg: TrainConfig, out_dir=None, evaluate=None, resume=False, progress=True,
          desc="train") -> TrainResult:
    """Train `model` on batches from `source` for tcfg.steps steps.

    source:   an object with next_batch() -> dict(input_ids=..., targets=..., [attention_mask=...]) of host
              arrays, and state() / restore(state) for its position (see minift/data/sources.py).
    evaluate: optional callable(model) -> dict of metrics, run every tcfg.eval_every steps and at the end.
    out_dir:  where checkpoints go; with resume=True the latest checkpoint there is restored first.
    """
    from tqdm.auto import tqdm
    if not model.trainable_params():
        raise MiniftError("nothing to train: every parameter is frozen and no adapter is attached")
    check_splittable(model, tcfg.workers)
    opt = make_optimizer(model, tcfg)
    dropout_rng = np.random.default_rng(tcfg.seed)
    result, start = TrainResult(), 0
    if resume and out_dir is not None and (folder := latest_checkpoint(out_dir)) is not None:
        state = load_checkpoint(folder, model, opt, source, dropout_rng)
        start = state["step"]
        result = TrainResult(state["history"], state["evals"], start, state["seconds"], state["tokens"])

    def checkpoint(step):
        if out_dir is not None:
            save_checkpoint(out_dir, model, opt, step, source, dropout_rng, result, tcfg)

    bar = tqdm(range(start, tcfg.steps), initial=start, total=tcfg.steps, desc=desc, disable=not progress,
               dynamic_ncols=True, leave=False)
    step = start
    try:
        for step in bar:
            lr = lr_schedule(step, tcfg.lr, tcfg.steps, tcfg.warmup, tcfg.schedule, tcfg.min_lr)
            t0 = time.perf_counter()
            batch = source.next_batch()
            if tcfg.workers > 1:      # the same loss and gradients, the batch's rows shared out to CPU threads
                loss, grads = split_loss_and_grads(model, **batch, workers=tcfg.workers)
            else:
                loss, grads = model.loss_and_grads(**batch, rng=dropout_rng if model.cfg.dropout > 0 else None)
            norm = clip_grad_norm(grads, tcfg.grad_clip) if tcfg.grad_clip else _norm(grads)
            if not (np.isfinite(loss) and np.isfinite(norm)):
                bad = find_nonfinite(loss, grads) or "gradient norm"
                checkpoint(step)       # the parameters are still those of the last good step: keep them
                raise TrainingDiverged(f"step {step}: {bad} is not finite (loss={loss}); the last good state "
                                       f"was kept{' in ' + str(out_dir) if out_dir else ''}. Try a lower lr.")
            opt.step(grads, lr=lr)
            if (bad := first_nonfinite(opt.params)) is not None:   # finite gradients, but a step that overflowed
                raise TrainingDiverged(f"step {step}: the update made {bad} non-finite (lr={lr:g}); this step's "
                                       "parameters were not saved"
                                       + (f", the last checkpoint in {out_dir} is intact" if out_dir else "")
                                       + ". Try a lower lr.")
            dt = time.perf_counter() - t0
            ntok = int(np.asarray(batch["input_ids"]).size)
            result.history.append(dict(step=step, loss=loss, lr=lr, grad_norm=norm, ms=dt * 1e3))
            result.seconds += dt
            result.tokens += ntok
            result.steps_done = step + 1
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{ntok / dt:,.0f}")
            done = step + 1
            if evaluate is not None and tcfg.eval_every and done % tcfg.eval_every == 0 and done < tcfg.steps:
                result.evals.append(dict(step=done, **evaluate(model)))
            if tcfg.save_every and done % tcfg.save_every == 0 and done < tcfg.steps:
                checkpoint(done)
    except KeyboardInterrupt:
        checkpoint(result.steps_done)  # nothing is lost: resume continues from here
        raise
    finally:
        bar.close()
    if evaluate is not None:
        result.evals.append(dict(step=tcfg.steps, **evaluate(model)))
    checkpoint(tcfg.steps)
    return result


def _norm(grads) -> float:
    from .optim import global_grad_norm
    return global_grad_norm(grads)
