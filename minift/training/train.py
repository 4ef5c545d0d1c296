"""The training loop: batches in, AdamW steps out, with evaluation, progress, checkpoints and exact resume.

One loop serves pretraining and every fine-tuning method: what differs is the batch source (next-token windows,
classification batches, prompt/completion batches) and which parameters train (model.frozen, adapters). A step:

    lr    = schedule(step)                              warmup, then cosine/linear decay (optim.lr_schedule)
    batch = source.next_batch()                         host arrays: input_ids, targets, attention_mask
    loss, grads = model.loss_and_grads(**batch)         forward + hand-written backward
    norm  = clip_grad_norm(grads, max)                  guard: a diverged loss or broken gradient stops the run
    opt.step(grads, lr)                                 in-place update of the trainable arrays only

Divergence: a run stops with TrainingDiverged when a loss (a step's, or an evaluation's) is NaN or infinite or more
than BLOWUP_NATS above the run's first step loss (the model then gives the right tokens e^-100 times the probability
it gave at the start: weights thrown far off, never a model that is merely learning badly; tutorial 06 §6), when a
gradient is not finite, when a step's forward, backward or update overflows its dtype (`Overflows`), or when an
update leaves a weight that is not finite. Nothing new is saved then, and what is kept has been checked: a
checkpoint holds the weights after a step, which only the next step's loss (or an evaluation) checks, so the
checkpoints of the weights found broken, and any after them, are removed, and the one left in force is a state whose
loss was computed and was sane. (A gradient that is not finite on a sane loss leaves those weights in force.)

Checkpoints (`out_dir/step-000100/`) hold the weights (model and adapters), the optimizer state, and `state.json`
with the step, the data position, the dropout generators (model and adapters) and the history, plus each file's
SHA-256. A checkpoint is written into a hidden `.step-000100.partial/` and renamed when complete, and only then does
`out_dir/latest` (written atomically) point at it, so a crash during a save leaves the previous checkpoint in force
and no half-written step folder (a process killed between the rename and `latest` leaves `latest` naming the previous
checkpoint, which stays in force, or at the first save no `latest`: then the newest step folder is the one in force).
Resuming restores all of it: the resumed run ends bitwise identical to an uninterrupted one.

Stopping: the first Ctrl-C (SIGINT) or SIGTERM during train() lets the step under way finish, then writes a
checkpoint and raises TrainingInterrupted. A step cut in half would leave weights with half an update and a data
source that has handed out a batch no step used; a checkpoint of that could not resume to the uninterrupted run. A
second signal stops at once and saves nothing new (the last checkpoint stays in force).

Resuming checks that the checkpoint belongs to this run: the same model configuration, the same base model when the
caller names one (`start_fingerprint`), the same data (the source's state carries a hash of its token ids), and the
same training settings except `steps` (which may grow: the schedule stretches to the new total), `eval_every`,
`save_every` and `workers`.
"""
from __future__ import annotations

import contextlib
import hashlib
import numbers
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backend import find_nonfinite, first_nonfinite, to_numpy
from ..errors import MiniftError
from ..dispatch import workers_for
from ..fast.parallel import blas_threads_shared, check_splittable, check_workers, split_loss_and_grads
from ..formats.io import atomic_write, load_json, load_safetensors, save_json, save_safetensors
from ..lora import adapter_rng
from ..optim import AdamW, check_lr, clip_grad_norm, lr_schedule
from ..quant import Quantized
from .progress import progress_bar

CHECKPOINT_KEEP = 2      # how many checkpoint folders to keep (older ones are deleted after a newer one is in force)
PARTIAL_GLOB = ".step-*.partial"      # a checkpoint being written; one that is not being written was cut short
# TrainConfig fields a resumed run may change: they do not alter what a step computes (workers: only the order of a
# sum, see parallel.py). `steps` is checked separately (it may not fall below the checkpoint's step).
RESUMABLE_CHANGES = frozenset({"steps", "eval_every", "save_every", "workers"})
NOTHING_SAVED = "at the very first step, before any training, so nothing was saved"   # a divergence at step 0
BLOWUP_NATS = 100.0      # a loss this far above the run's first step loss has diverged (module docstring)
SETTING_HINTS = {"lr_scale": " (the head's learning rate, --head-lr, over --lr)", "batch_size": " (--batch)",
                 "warmup": " (pretrain's --warmup)"}      # fields whose option has another name
OPTION_FIELDS = {"steps", "lr", "weight_decay", "eval_every", "save_every", "seed", "workers"}   # --same-name
# state.json's keys, each with the type a checkpoint written by save_checkpoint gives it
STATE_KEYS = dict(step=int, optimizer=dict, data=dict, dropout_rng=dict, train_config=dict, model_config=dict,
                  frozen=list, history=list, evals=list, seconds=(int, float), tokens=int, sha256=dict)


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
    workers: int | str = 1          # >1: each batch split across that many CPU threads (minift/fast/parallel.py);
    #                                 "auto": the fastest measured where it applies (dispatch.workers_for), the
    #                                 default of every configuration above this loop (FinetuneConfig, ...)

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise MiniftError(f"{name}={getattr(self, name)}{option_of(name)} must be positive")
        check_lr(self.lr, "lr", option_of("lr"), finite=False)   # ∞ passes: tutorial 06 uses it to trip the guard
        for name in ("eval_every", "save_every", "warmup"):
            if getattr(self, name) < 0:
                raise MiniftError(f"{name}={getattr(self, name)}{option_of(name)} must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise MiniftError(f"grad_clip={self.grad_clip} must be positive (or None to disable)")
        check_workers(self.workers, self.batch_size)


@dataclass
class TrainResult:
    history: list = field(default_factory=list)     # one dict per step: step, loss, lr, grad_norm, ms
    evals: list = field(default_factory=list)       # one dict per evaluation: step + the metrics
    steps_done: int = 0
    seconds: float = 0.0
    tokens: int = 0
    workers: int = 1                                # the threads that shared each batch (this call's steps; a
    #                                                 finished run only resumed: the workers its checkpoint saved)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


class StartMismatch(MiniftError):
    """--resume of a checkpoint whose run started from another base model, head or adapter configuration."""


class TrainingInterrupted(KeyboardInterrupt):
    """train() was stopped by a signal. checkpoint: the folder --resume would continue from (saved on the way out,
    or after a second signal the last one saved before; None if there is none); steps_done: the steps completed;
    at_step_end: False when a second signal cut a step."""

    def __init__(self, signum, steps_done=None, checkpoint=None, at_step_end=True, out_dir=None,
                 cut="in the middle of a step"):
        super().__init__(signum)
        self.signum, self.steps_done, self.checkpoint = signum, steps_done, checkpoint
        self.at_step_end, self.out_dir, self.cut = at_step_end, out_dir, cut

    def __str__(self):
        what = "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        resume = "run the same command with --resume to continue"
        if not self.at_step_end:
            cut = f"stopped at once by a second {what}, {self.cut}"
            if self.checkpoint is None:
                return f"{cut}: nothing was saved" + (f" in {self.out_dir}" if self.out_dir else " (no output folder)")
            return f"{cut}: the last checkpoint, {self.checkpoint}, is intact; {resume} from it"
        done = f"stopped by {what} after {self.steps_done} steps"
        if self.checkpoint is None:
            return f"{done}; nothing was saved" + (f" in {self.out_dir}" if self.out_dir else " (no output folder)")
        return f"{done}; checkpoint saved in {self.checkpoint}: {resume}"


class _StopAtStepEnd:
    """Within `with`: the first SIGINT/SIGTERM is noted (`signum`) for the loop to act on between steps; a second
    raises TrainingInterrupted at once. Signal handlers can only be set from the main thread; elsewhere (a thread
    pool, some notebook setups) this does nothing and signals keep their usual effect. A signal the process was told
    to ignore stays ignored (a shell starts background jobs, `cmd &`, with SIGINT ignored; Python keeps that too)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet=False):
        self.signum, self.quiet, self._old = None, quiet, {}
        self.doing = "in the middle of a step"            # what a second signal cuts short, for its message

    @contextlib.contextmanager
    def during(self, doing: str):
        """Within `with`: a second signal says it cut `doing` short (an evaluation, a checkpoint save)."""
        before, self.doing = self.doing, doing
        try:
            yield
        finally:
            self.doing = before

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise TrainingInterrupted(signum, at_step_end=False, cut=self.doing)
        self.signum = signum
        if not self.quiet:
            print("\nminift: finishing this step, then saving and stopping (again to stop at once)",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) != signal.SIG_IGN:
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        return False


class TrainingDiverged(MiniftError):
    """The run diverged (module docstring): a loss NaN, infinite or blown up, a gradient or (after an update) a
    weight not finite. The message says which state was kept: the last one whose loss was checked."""


def option_of(name: str) -> str:
    """" (--eval-every)": the command-line option of a TrainConfig field, for messages ("" for a field no command
    sets, such as schedule or grad_clip)."""
    if name in SETTING_HINTS:
        return SETTING_HINTS[name]
    return f" (--{name.replace('_', '-')})" if name in OPTION_FIELDS else ""


# ---- checkpoints -------------------------------------------------------------------------------------------------

def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(out_dir, model, opt, step, source, dropout_rng, result: TrainResult, tcfg: TrainConfig,
                    start_fingerprint=None):
    """Write out_dir/.step-NNNNNN.partial/ completely, rename it to step-NNNNNN/, then point out_dir/latest at it
    (each move atomic): a crash or a second Ctrl-C at any moment leaves either no step-NNNNNN/ or a complete one,
    and `latest` always names a complete one. start_fingerprint: what the run started from (train()'s argument),
    for resume to check."""
    out_dir = Path(out_dir)
    folder = out_dir / f"step-{step:06d}"
    for stale in out_dir.glob(PARTIAL_GLOB):           # left by a save that was cut short
        shutil.rmtree(stale, ignore_errors=True)
    partial = out_dir / f".{folder.name}.partial"
    partial.mkdir(parents=True)
    try:
        _write_checkpoint(partial, model, opt, step, source, dropout_rng, result, tcfg, start_fingerprint)
        if folder.exists():
            shutil.rmtree(folder)      # this step saved by an earlier run that was then resumed from before it
        os.rename(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    with atomic_write(out_dir / "latest", "w") as f:
        f.write(folder.name + "\n")
    for old in step_folders(out_dir)[:-CHECKPOINT_KEEP]:
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def checkpoint_arrays(model) -> dict:
    """What a checkpoint's weights file holds: every parameter and adapter array, but not a 4-bit base weight
    (QLoRA's Quantized): it is frozen and made again, bit for bit, by quantising the same base, which the start
    fingerprint pins."""
    return {k: v for k, v in model.all_params().items() if not isinstance(v, Quantized)}


def _write_checkpoint(folder, model, opt, step, source, dropout_rng, result, tcfg, start_fingerprint):
    """The three files of a checkpoint: weights, optimizer moments, and state.json with everything else."""
    save_safetensors({k: to_numpy(v) for k, v in checkpoint_arrays(model).items()}, folder / "weights.safetensors")
    sd = opt.state_dict()
    save_safetensors(sd.pop("arrays"), folder / "optimizer.safetensors")
    a_rng = adapter_rng(model)
    state = dict(step=step, optimizer=sd, data=source.state(), dropout_rng=dropout_rng.bit_generator.state,
                 adapter_rng=a_rng.bit_generator.state if a_rng is not None else None,
                 train_config=asdict(tcfg), model_config=model.cfg.to_dict(),
                 head=model.head_kind,       # the key stays "head", as in checkpoints written before the rename
                 labels=model.labels,
                 frozen=sorted(model.frozen), start_fingerprint=start_fingerprint,
                 history=result.history, evals=result.evals, seconds=result.seconds, tokens=result.tokens,
                 sha256={name: _sha256(folder / name) for name in ("weights.safetensors", "optimizer.safetensors")})
    save_json(state, folder / "state.json")


def resumed_warmup(out_dir, resume: bool, derived: int) -> int:
    """The warmup of a run whose warmup is derived from --steps: the one it started with, when it is resumed from a
    checkpoint in out_dir (so that a larger --steps extends the run instead of changing its start), else `derived`."""
    folder = latest_checkpoint(out_dir) if resume and out_dir is not None else None
    if folder is None:
        return derived
    saved = load_json(folder / "state.json", "checkpoint state")
    warmup = saved.get("train_config", {}).get("warmup") if isinstance(saved, dict) else None
    return warmup if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0 else derived


def step_folders(out_dir) -> list[Path]:
    """The checkpoints in out_dir, oldest step first: complete when renamed from .partial (an old one whose
    deletion was cut short may lack files; load_checkpoint's checksums name it)."""
    done = [f.parent for f in Path(out_dir).glob("step-*/state.json") if f.parent.name[5:].isdigit()]
    return sorted(done, key=lambda f: int(f.name[5:]))


def latest_checkpoint(out_dir) -> Path | None:
    """The checkpoint in force: the one `latest` names (edit it to resume from another), else the newest step folder
    (a save killed between its rename and writing `latest`), else None."""
    pointer = Path(out_dir) / "latest"
    if not pointer.is_file():
        done = step_folders(out_dir)
        return done[-1] if done else None
    folder = Path(out_dir) / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise MiniftError(f"{pointer} points at {folder}, which is not a complete checkpoint")
    return folder


def check_resumable(folder, state: dict, tcfg: TrainConfig, start_fingerprint: str | None) -> None:
    """Raise a MiniftError unless the checkpoint in `folder` (its state.json) continues this run: the same starting
    weights and training settings (module docstring); `steps` at least the checkpoint's step."""
    if start_fingerprint is not None and state.get("start_fingerprint") not in (None, start_fingerprint):
        raise StartMismatch(f"checkpoint {folder} continues a run that started from another base model, head or "
                          f"adapter configuration ({state['start_fingerprint']}, this one is {start_fingerprint}); "
                          "resume with the --base, --head and LoRA options it was started with, or start afresh")
    if state["step"] > tcfg.steps:        # first: fewer steps also change what is derived from them (warmup)
        raise MiniftError(f"checkpoint {folder} is at step {state['step']}, beyond steps={tcfg.steps}: "
                          f"resume with --steps {state['step']} or more")
    saved = state.get("train_config", {})
    now = asdict(tcfg)
    changed = sorted(k for k in now if k in saved and k not in RESUMABLE_CHANGES and saved[k] != now[k])
    if changed:
        diff = ", ".join(f"{k}{option_of(k)}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise MiniftError(f"checkpoint {folder} was trained with other settings ({diff}); resume with the same "
                          "ones (only --steps may change), or start afresh")


def load_checkpoint(folder, model, opt, source, dropout_rng, tcfg: TrainConfig | None = None,
                    start_fingerprint=None) -> dict:
    """Restore weights, optimizer, data position and generator from a checkpoint folder; return its state.json.
    With tcfg, first check that the checkpoint belongs to this run (check_resumable)."""
    folder = Path(folder)
    state = load_json(folder / "state.json", "checkpoint state")
    fields = state if isinstance(state, dict) else {}
    bad = [k for k, kind in STATE_KEYS.items() if not isinstance(fields.get(k), kind) or isinstance(fields[k], bool)]
    if bad:
        raise MiniftError(f"checkpoint {folder}/state.json is damaged or not minift's: {', '.join(bad)} missing or "
                          "of the wrong type; resume from another checkpoint (edit `latest`) or start afresh")
    for name in ("weights.safetensors", "optimizer.safetensors"):
        if name not in state["sha256"] or not (folder / name).is_file():
            raise MiniftError(f"checkpoint {folder} is incomplete: {name} is missing")
    for name, digest in state["sha256"].items():
        if _sha256(folder / name) != digest:
            raise MiniftError(f"checkpoint file {folder / name} does not match its recorded SHA-256 (corrupted?)")
    if state["model_config"] != model.cfg.to_dict():
        raise MiniftError(f"checkpoint {folder} is for model config {state['model_config']}, "
                          f"not this model's {model.cfg.to_dict()}")
    if tcfg is not None:
        check_resumable(folder, state, tcfg, start_fingerprint)
    weights, _ = load_safetensors(folder / "weights.safetensors", "checkpoint weights")
    arrays = checkpoint_arrays(model)
    if set(weights) != set(arrays):
        raise MiniftError(f"checkpoint {folder} holds parameters {sorted(set(weights) ^ set(arrays))[:5]} that do "
                          "not match this model's (different method, adapters or head?)")
    wrong = [n for n, a in arrays.items() if tuple(weights[n].shape) != tuple(a.shape)]
    if wrong:
        raise MiniftError(f"checkpoint {folder}: {wrong[0]} has shape {tuple(weights[wrong[0]].shape)}, this model's "
                          f"is {tuple(arrays[wrong[0]].shape)} (another LoRA rank?); resume with the same settings")
    for name, a in arrays.items():
        a[...] = model.xp.asarray(weights[name])     # in place: the optimizer holds these same arrays
    opt_arrays, _ = load_safetensors(folder / "optimizer.safetensors", "checkpoint optimizer state")
    opt.load_state_dict(dict(state["optimizer"], arrays=opt_arrays))
    source.restore(state["data"])
    dropout_rng.bit_generator.state = state["dropout_rng"]
    a_rng = adapter_rng(model)
    if a_rng is not None and state.get("adapter_rng") is not None:
        a_rng.bit_generator.state = state["adapter_rng"]
    return state


# ---- the loop ----------------------------------------------------------------------------------------------------

def make_optimizer(model, tcfg: TrainConfig):
    return AdamW(model.trainable_params(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, lr_scale=tcfg.lr_scale)


def train(model, source, tcfg: TrainConfig, out_dir=None, evaluate=None, resume=False, progress=True,
          desc="train", start_fingerprint=None) -> TrainResult:
    """Train `model` on batches from `source` for tcfg.steps steps.

    source:   an object with next_batch() -> dict(input_ids=..., targets=..., [attention_mask=...]) of host
              arrays, and state() / restore(state) for its position (see minift/data/sources.py).
    evaluate: optional callable(model) -> dict of metrics, run every tcfg.eval_every steps and at the end.
    out_dir:  where checkpoints go; with resume=True the latest checkpoint there is restored first (after checking
              that it belongs to this run: check_resumable).
    start_fingerprint: what the run starts from (fine-tuning: the base model's fingerprint), kept in checkpoints;
              resume refuses a checkpoint whose run started from something else.
    A first Ctrl-C or SIGTERM ends the run after the current step, with a checkpoint: TrainingInterrupted.
    """
    if not model.trainable_params():
        raise MiniftError("nothing to train: every parameter is frozen and no adapter is attached")
    tcfg = replace(tcfg, workers=workers_for(tcfg.workers, model, tcfg.batch_size))    # "auto" decided
    check_splittable(model, tcfg.workers)
    opt = make_optimizer(model, tcfg)
    dropout_rng = np.random.default_rng(tcfg.seed)
    result, start = TrainResult(), 0
    saved = {}                                   # step -> the checkpoint folder this call saved or resumed from
    if resume and out_dir is not None and (folder := latest_checkpoint(out_dir)) is not None:
        state = load_checkpoint(folder, model, opt, source, dropout_rng, tcfg, start_fingerprint)
        start = state["step"]
        result = TrainResult(state["history"], state["evals"], start, state["seconds"], state["tokens"])
        saved[start] = folder
    result.workers = tcfg.workers
    if start >= tcfg.steps and start:         # a finished run, only resumed: its steps ran with the workers it saved
        saved_workers = state["train_config"].get("workers", 1)
        result.workers = saved_workers if isinstance(saved_workers, int) and saved_workers >= 1 else 1
    if tcfg.warmup > tcfg.steps:      # after the resume checks: a checkpoint beyond --steps is the clearer message
        more = "this run's warmup was fixed when it started" if start else "or a smaller warmup"
        raise MiniftError(f"warmup={tcfg.warmup} is longer than the run, steps={tcfg.steps}: give --steps "
                          f"{tcfg.warmup} or more ({more})")
    stop = _StopAtStepEnd(quiet=not progress)

    def checkpoint(step):
        """Save once per step: saving again would first delete the folder `latest` points at."""
        if out_dir is not None and step not in saved:
            with stop.during("while saving a checkpoint"):
                saved[step] = save_checkpoint(out_dir, model, opt, step, source, dropout_rng, result, tcfg,
                                              start_fingerprint)
        return saved.get(step)

    def evaluated(step):
        with stop.during("during an evaluation"):
            return dict(step=step, **_evaluated(evaluate, model, step, out_dir, result))

    bar = progress_bar(range(start, tcfg.steps), total=tcfg.steps, initial=start, desc=desc, disable=not progress)
    with stop, blas_threads_shared(tcfg.workers):
        try:
            for step in bar:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # the guards in _step check
                    _step(model, source, opt, tcfg, step, dropout_rng, result, bar, out_dir)
                done = step + 1
                if evaluate is not None and tcfg.eval_every and done % tcfg.eval_every == 0 and done < tcfg.steps:
                    result.evals.append(evaluated(done))
                if tcfg.save_every and done % tcfg.save_every == 0 and done < tcfg.steps:
                    checkpoint(done)
                if stop.signum is not None:          # asked to stop during this step: it is complete now
                    raise TrainingInterrupted(stop.signum)
            # the final evaluation (a resumed finished run has it already)
            if evaluate is not None and not (result.evals and result.evals[-1]["step"] == tcfg.steps):
                result.evals.append(evaluated(tcfg.steps))
            checkpoint(tcfg.steps)
            if stop.signum is not None:              # arrived during the final evaluation or save: both finished
                raise TrainingInterrupted(stop.signum)
        except TrainingInterrupted as e:
            if e.at_step_end:
                try:
                    e.checkpoint = checkpoint(result.steps_done)    # a state the uninterrupted run also passes through
                except TrainingInterrupted as second:               # a second signal cut that save short
                    e = second
            e.out_dir, e.steps_done = out_dir, result.steps_done
            if not e.at_step_end and out_dir is not None:
                with contextlib.suppress(MiniftError):
                    e.checkpoint = latest_checkpoint(out_dir)   # what is really on disk, from this run or before
            raise e from None
        finally:
            bar.close()
    return result


def _evaluated(evaluate, model, step, out_dir, result) -> dict:
    """evaluate(model), refused when a loss it reports has diverged (`_diverged_loss`): finite weights can still be
    too large to compute with (an update that overshot), which only the next forward shows; this state is not
    saved."""
    metrics = evaluate(model)
    for key, value in metrics.items():
        if "loss" in key and isinstance(value, numbers.Real) and (what := _diverged_loss(value, result)):
            raise TrainingDiverged(f"after step {step}: {key} {what}; {_keep_checked(out_dir, step)}. Try a "
                                   "lower lr.")
    return metrics


def _diverged_loss(loss, result) -> str | None:
    """What is wrong with this loss, or None: not finite, or more than BLOWUP_NATS above the run's first."""
    if not np.isfinite(loss):
        return f"is not finite ({loss})"
    first = result.history[0]["loss"] if result.history else None
    if first is not None and loss > first + BLOWUP_NATS:
        return f"is {loss:.4g}, more than {BLOWUP_NATS:g} above the first step's {first:.4g}: the run has diverged"
    return None


def _keep_checked(out_dir, broken_step: int) -> str:
    """Remove the checkpoints from broken_step on (its weights were found broken; a later one cannot be better) and
    put the newest one before it in force; say what is kept."""
    if broken_step == 0:
        return NOTHING_SAVED
    if out_dir is None:
        return "nothing was saved (no checkpoint folder)"
    for folder in step_folders(out_dir):
        if int(folder.name[5:]) >= broken_step:
            shutil.rmtree(folder)
    left = step_folders(out_dir)
    if left:
        with atomic_write(Path(out_dir) / "latest", "w") as f:
            f.write(left[-1].name + "\n")
        return f"the last checkpoint in {out_dir}, {left[-1].name}, is intact and in force (its loss was checked)"
    (Path(out_dir) / "latest").unlink(missing_ok=True)
    return f"no checkpoint was kept in {out_dir} (the run diverged before one it could check)"


class Overflows:
    """NumPy's floating-point errors during a step, noted instead of printed (np.errstate's "call" mode): an overflow
    or an invalid operation means numbers left float32's range, and a LayerNorm downstream can hide it (x / √var
    with var = inf is a finite 0), leaving a loss that looks sane from weights that are not. The `--workers` threads
    are watched too (NumPy's error state is per thread: split_loss_and_grads runs each shard under this one's); not
    seen: work on a GPU (CuPy does not report them)."""

    def __init__(self):
        self.first = None                       # the first kind noted: "overflow" or "invalid value"

    def __call__(self, kind, flag):
        self.first = self.first or kind

    def watching(self):
        return np.errstate(over="call", invalid="call", call=self)

    MEANING = {"overflow": "a number beyond its dtype's range",
               "invalid value": "a NaN from an undefined operation such as inf - inf"}

    def said(self) -> str | None:
        """What to say of the noted error, or None if there was none."""
        return None if self.first is None else (f"went through a floating-point {self.first} "
                                                f"({self.MEANING.get(self.first, 'NumPy says')}): the run has diverged")


def _step(model, source, opt, tcfg, step, dropout_rng, result, bar, out_dir):
    """One training step: a batch, the loss and gradients, the non-finite guards, the update, the books."""
    lr = lr_schedule(step, tcfg.lr, tcfg.steps, tcfg.warmup, tcfg.schedule, tcfg.min_lr)
    t0 = time.perf_counter()
    a_rng = adapter_rng(model)
    before = (source.state(), dropout_rng.bit_generator.state,             # to rewind a step that fails
              a_rng.bit_generator.state if a_rng is not None else None)
    batch = source.next_batch()
    overflow = Overflows()
    with overflow.watching():
        if tcfg.workers > 1:      # the same loss and gradients, the batch's rows shared out to CPU threads
            loss, grads = split_loss_and_grads(model, **batch, workers=tcfg.workers)
        else:
            loss, grads = model.loss_and_grads(**batch, rng=dropout_rng if model.cfg.dropout > 0 else None)
    norm = clip_grad_norm(grads, tcfg.grad_clip) if tcfg.grad_clip else _norm(grads)
    broken = _diverged_loss(loss, result)
    if broken or overflow.first or not np.isfinite(norm):
        source.restore(before[0])                       # as before this step: its batch and dropout not drawn
        dropout_rng.bit_generator.state = before[1]
        if a_rng is not None:
            a_rng.bit_generator.state = before[2]
        advice = "Try a lower lr" + (" (or check the inputs: a LoRA alpha, a learning-rate scale)" if step == 0 else
                                     " in a new run (--overwrite or another --out: a checkpoint resumes only with its "
                                     "own settings)" if out_dir else "")
        if broken or overflow.first:   # these weights are broken: keep only what an earlier step checked
            what = f"loss {broken}" if broken else f"the forward or backward {overflow.said()}"
            raise TrainingDiverged(f"step {step}: {what}; {_keep_checked(out_dir, step)}. {advice}.")
        bad = find_nonfinite(loss, grads) or "the gradient norm"      # a sane loss: these weights stay in force
        kept = NOTHING_SAVED if step == 0 else _keep_checked(out_dir, step + 1)
        raise TrainingDiverged(f"step {step}: {bad} is not finite (loss={loss:.4g}); {kept}. {advice}.")
    with overflow.watching():
        opt.step(grads, lr=lr)
    bad = first_nonfinite(opt.params)                       # finite gradients, but a step that overflowed
    if bad is not None or overflow.first:
        what = f"made {bad} non-finite" if bad is not None else overflow.said()
        raise TrainingDiverged(f"step {step}: the update {what} (lr={lr:g}); "
                               f"{NOTHING_SAVED if step == 0 else _keep_checked(out_dir, step + 1)}. Try a lower lr.")
    dt = time.perf_counter() - t0
    ntok = int(np.asarray(batch["input_ids"]).size)
    result.history.append(dict(step=step, loss=loss, lr=lr, grad_norm=norm, ms=dt * 1e3))
    result.seconds += dt
    result.tokens += ntok
    result.steps_done = step + 1
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{ntok / dt:,.0f}", refresh=False)   # shown at the bar's pace


def _norm(grads) -> float:
    from ..optim import global_grad_norm
    return global_grad_norm(grads)
