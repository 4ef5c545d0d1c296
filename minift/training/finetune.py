"""One fine-tuning run, end to end: the article's five steps (§1.1) with a method from minift/methods.py, the data
of a task, the training loop, evaluation, and what is saved (the adapter, or the whole model).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..config import HEAD_WEIGHT
from ..errors import MiniftError
from ..lora import LoRAConfig
from ..methods import (ADAPTER_METHODS, HEAD_MODES, METHODS, adapter_config, adapter_memory_options,
                       check_base_fits_task, check_task_fits, setup_method, task_head, trainable_summary)
from ..optim import check_lr
from .train import TrainConfig, resumed_warmup

# Chosen on the sentiment task's validation split from the shipped demo base (tutorials 05-07), 600 steps.
# LoRA's adapters and the fresh classification head want different rates, as torch parameter groups allow: with one
# shared rate, r = 8 and α = 16 on all linears stayed near chance (val 0.70 at 1e-3), and a rate large enough for the
# adapters made the random head collapse. Grid over adapters {1, 2, 3, 5}e-3 × head {3e-4, 1e-3}, seed 0, then
# seeds 1 and 2 for the two best: adapters 2e-3 with the head at 3e-4 gave val 0.896 / 0.902 / 0.852 (test 0.899 /
# 0.870 / 0.760); with the head at 1e-3, 0.872 / 0.652 / 0.948. One seed moves accuracy by several points here.
DEFAULT_LR = {"full": 1e-3, "freeze": 1e-3, "head": 1e-2, "lora": 2e-3, "qlora": 2e-3}
DEFAULT_HEAD_LR = {"lora": 3e-4, "qlora": 3e-4}   # methods whose head trains at its own rate; the others use lr for it


@dataclass
class FinetuneConfig:
    """One fine-tuning run. The defaults are `minift finetune`'s (the CLI reads them from here), so FinetuneConfig()
    is the run that command makes with no options. Every value is checked here, when the config is made: the
    training settings by the TrainConfig they become (train_config), LoRA's by its LoRAConfig."""
    method: str = "lora"
    task: str = "sentiment"          # a built-in task name, a task folder or a JSONL/CSV file
    steps: int = 600
    batch_size: int = 16
    lr: float | None = None          # default: DEFAULT_LR[method]
    head_lr: float | None = None     # the classification head's rate (default: DEFAULT_HEAD_LR, else lr)
    warmup: int = 20
    weight_decay: float = 0.0
    max_len: int = 128               # tokens per example (capped at the model's n_ctx)
    train_size: int | None = None    # use only this many training examples (the small-data question)
    eval_size: int | None = None     # evaluate on only this many validation/test examples (quick runs)
    freeze_blocks: int | None = None  # for method "freeze" (default: half of the blocks)
    eval_every: int = 100            # validation accuracy every this many steps (0: only at the end)
    save_every: int = 0              # checkpoint every this many steps (0: only at the end and when stopped)
    seed: int = 0
    lora: LoRAConfig | None = None   # methods "lora", "qlora": the adapters (None: LoRAConfig(), with quant "nf4" for
                                     # qlora, filled in when made: methods.adapter_config)
    workers: int | str = "auto"      # >1: each batch split across CPU threads (fast/parallel.py);
                                     # "auto": where it is the fastest measured (dispatch.workers_for)
    merge: bool = False              # LoRA: also save the merged model (W + ΔW, no adapters) in out_dir/model;
                                     # QLoRA: deq(W) + ΔW in float32
    head_mode: str = "auto"          # a base's classification head over the task's labels: "auto"/"keep" it, or "new"
                                     # (HEAD_MODES; the CLI's --head)

    def __post_init__(self):
        if self.method not in METHODS:
            raise MiniftError(f"method {self.method!r} is not one of {METHODS}")
        for name in ("lr", "head_lr"):
            if getattr(self, name) is not None:
                check_lr(getattr(self, name), name)
        self.train_config(self.method_lr)                          # raises now, before any data is loaded
        if self.lora is not None and not isinstance(self.lora, LoRAConfig):
            raise MiniftError(f"lora must be a LoRAConfig, got {type(self.lora).__name__}")
        if self.method in ADAPTER_METHODS:
            self.lora = adapter_config(self.method, self.lora)
        if self.head_mode not in HEAD_MODES:
            raise MiniftError(f"head_mode={self.head_mode!r} (--head) is not one of {HEAD_MODES}")
        if self.merge and self.method not in ADAPTER_METHODS:
            raise MiniftError(f"merge folds LoRA's adapters into the weights, and method {self.method!r} has none "
                              "(its whole model is saved already); drop it, or use method 'lora' or 'qlora'")
        if self.train_size is not None and self.train_size <= 0:
            raise MiniftError(f"train_size={self.train_size} (--train-size) must be positive")

    @property
    def method_lr(self) -> float:
        """lr, or the method's default rate (DEFAULT_LR)."""
        return self.lr or DEFAULT_LR[self.method]

    @property
    def derived_warmup(self) -> int:
        """The warmup a run starts with: `warmup` steps, at most a fifth of the run."""
        return min(self.warmup, self.steps // 5)

    def train_config(self, lr: float, head_lr: float | None = None, warmup: int | None = None) -> TrainConfig:
        """The training loop's settings for this run, checked by TrainConfig (steps, batch size, rate, intervals,
        workers). lr, head_lr: the rates learning_rates() picked; warmup: default min(warmup, steps / 5)."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=lr,
                           warmup=self.derived_warmup if warmup is None else warmup,
                           weight_decay=self.weight_decay, eval_every=self.eval_every, save_every=self.save_every,
                           seed=self.seed, workers=self.workers,
                           lr_scale={HEAD_WEIGHT: head_lr / lr} if head_lr is not None and head_lr != lr else None)


def learning_rates(model, fcfg: FinetuneConfig):
    """(lr, head_lr): the rate of the method's trainable weights, and the classification head's (None when there is
    no trainable head). The head is the only trainable tensor of method "head", so there it takes lr itself."""
    lr = fcfg.method_lr
    if HEAD_WEIGHT not in model.trainable_params():
        if fcfg.head_lr is not None:
            raise MiniftError(f"head_lr={fcfg.head_lr} is the classification head's rate, but task {fcfg.task!r} "
                              "trains no classification head (a generation task uses the tied LM head); drop it")
        return lr, None
    if fcfg.method == "head":
        if fcfg.head_lr is not None:
            raise MiniftError("method 'head' trains only the classification head: give its rate as lr, not head_lr")
        return lr, lr
    return lr, fcfg.head_lr or DEFAULT_HEAD_LR.get(fcfg.method, lr)


def load_task_splits(task, train_size=None, eval_size=None):
    """(train, validation, test) TaskSplits of a task; train cut to train_size and validation/test to eval_size
    examples (labels kept balanced)."""
    from ..data import load_task
    train = load_task(task, "train")
    splits = [train] + [load_task(task, name, labels=train.label_names or None) for name in ("validation", "test")]
    one_file = splits[0].path == splits[1].path
    if one_file:                                  # one file for every split: hold out 10% + 10% of it
        splits = _split_one_file(splits[0])
    if train_size is not None and train_size > len(splits[0]):
        raise MiniftError(f"train size {train_size} (--train-size) is more than the {len(splits[0])} training "
                          f"examples of task {str(task)!r}; give at most {len(splits[0])}")
    sizes = (train_size, eval_size, eval_size)         # eval_size: at most that many (all when the split is smaller)
    splits = tuple(split.subset(n) if n is not None else split for split, n in zip(splits, sizes))
    _check_every_label_trains(splits[0], task, one_file)
    return splits


def _check_every_label_trains(train, task, one_file: bool) -> None:
    """A label with no training example cannot be learned, and would be scored as if it could."""
    if train.type != "classification":
        return
    seen = set(train.label_ids)
    missing = [name for i, name in enumerate(train.label_names) if i not in seen]
    if missing:
        where = f"the 80% of {train.path.name} kept for training" if one_file else "the training split"
        raise MiniftError(f"task {str(task)!r}: the label(s) {missing} have no example in {where} (of "
                          f"{len(train)} examples); give more examples of them, or a larger --train-size")


def _split_one_file(split, seed=0):
    """A single user file -> (train 80%, validation 10%, test 10%) by a seeded shuffle, so a model is never scored
    on the examples it was trained on."""
    import dataclasses

    import numpy as np
    n = len(split)
    if n < 10:
        raise MiniftError(f"{split.path}: {n} examples are too few to hold out validation and test examples; give "
                          "at least 10, or a folder with train/validation/test files")
    order = np.random.default_rng(seed).permutation(n)
    cut1, cut2 = int(0.8 * n), int(0.9 * n)

    def part(idx, name):
        pick = lambda xs: [xs[i] for i in idx] if xs else []                       # noqa: E731
        return dataclasses.replace(split, split=name, texts=pick(split.texts), label_ids=pick(split.label_ids),
                                   prompts=pick(split.prompts), completions=pick(split.completions))
    return part(order[:cut1], "train"), part(order[cut1:cut2], "validation"), part(order[cut2:], "test")


@dataclass
class Run:
    """One fine-tune, set up and checked, before its first step (setup_run)."""
    model: object
    lora: object
    head_origin: str         # where the head came from (task_head): "kept" | "new" | "lm"
    source: object
    tcfg: object             # the TrainConfig
    head_lr: float | None
    max_len: int
    train_split: object
    val_split: object
    test_split: object


def setup_run(base, tokenizer, fcfg: FinetuneConfig, checkpoints=None, resume=False) -> Run:
    """The article's steps 1-3 and everything the training loop needs, with every input checked against the base
    and the task: what finetune() does before its first step (checkpoints, resume: where a resumed run's warmup is
    read from). compare calls it for every planned run before the
    first one trains, so that a bad option is found in seconds, not after an hour of other runs."""
    from ..data.sources import task_source
    from ..measure.memory import check_fits
    train_split, val_split, test_split = load_task_splits(fcfg.task, fcfg.train_size, fcfg.eval_size)
    check_task_fits(fcfg.method, fcfg.task, train_split, fcfg.batch_size)
    check_base_fits_task(base, fcfg.task, train_split)
    model = base.to()                                                      # 1. a private copy of the base
    head_origin = task_head(model, train_split, seed=fcfg.seed, head_mode=fcfg.head_mode)   # 2. the task head
    freeze = {"freeze_blocks": fcfg.freeze_blocks} if fcfg.method == "freeze" else {}
    lora = setup_method(model, fcfg.method, fcfg.lora if fcfg.method in ADAPTER_METHODS else None, seed=fcfg.seed,
                        **freeze)                                                                 # 3. freeze
    max_len = min(fcfg.max_len, model.cfg.n_ctx)
    check_fits(model.cfg, fcfg.method, fcfg.batch_size, max_len, device=model.device,
               head_kind=model.head_kind,
               num_labels=len(model.labels or []) or 2,
               **(adapter_memory_options(lora.config) if lora is not None else {}), **freeze)
    source = task_source(train_split, tokenizer, max_len=max_len, batch_size=fcfg.batch_size, seed=fcfg.seed)
    lr, head_lr = learning_rates(model, fcfg)
    warmup = resumed_warmup(checkpoints, resume, fcfg.derived_warmup)           # fixed once the run starts
    tcfg = fcfg.train_config(lr, head_lr, warmup)
    return Run(model, lora, head_origin, source, tcfg, head_lr, max_len, train_split, val_split, test_split)


def finetune(base, tokenizer, fcfg: FinetuneConfig, out_dir=None, progress=True, resume=False, checkpoints=None,
             base_dir=None):
    """Fine-tune a copy of `base` on fcfg.task with fcfg.method; returns (model, lora or None, summary dict).

    The article's five steps (§1.1): 1 load the pretrained model (`base`, copied so it stays untouched), 2 add a
    task head (classification tasks), 3 freeze what the method freezes, 4 train with backprop, 5 evaluate on the
    validation and test splits. With out_dir, the result is saved there: the adapter (LoRA) or the whole model.

    checkpoints: the folder for training checkpoints (default out_dir/checkpoints; none without either). With
    resume, training continues from the latest one there, which must come from the same base, task and settings.
    base_dir: the folder `base` was loaded from, when known: finetune.json names it, and a saved whole model carries
    its pretraining record along (out_dir/model/pretrain.json), so that forgetting measured on the fine-tuned model
    later (compare --base out_dir/model) uses the text the original base was pretrained on.
    """
    from .evaluate import split_metrics
    from .train import train
    if checkpoints is None and out_dir is not None:
        checkpoints = Path(out_dir) / "checkpoints"
    run = setup_run(base, tokenizer, fcfg, checkpoints, resume)                           # 1.-3., checked
    model, lora = run.model, run.lora

    def evaluate(m, split=run.val_split, prefix="val_"):  # (split_metrics turns adapter dropout off itself)
        return {prefix + k: v for k, v in split_metrics(m, split, tokenizer, run.max_len).items()}

    result = train(model, run.source, run.tcfg, out_dir=checkpoints, progress=progress, evaluate=evaluate,   # 4.
                   resume=resume, desc=f"finetune {fcfg.method}", start_fingerprint=_start(base, lora, run.head_origin))
    test = evaluate(model, run.test_split, prefix="")                                         # 5. evaluate
    summary = dict(method=fcfg.method, task=fcfg.task, task_type=run.train_split.type,
                   head=run.head_origin,        # finetune.json's key "head" (kept: files written before the rename)
                   labels=model.labels, train_examples=len(run.train_split),
                   max_len=run.max_len, train_examples_cut=run.source.cut_examples(),
                   **trainable_summary(model), steps=fcfg.steps, lr=run.tcfg.lr, head_lr=run.head_lr,
                   ms_per_step=1e3 * result.seconds / max(1, len(result.history)), workers=result.workers,
                   tokens_per_s=result.tokens / max(result.seconds, 1e-9),
                   final_train_loss=result.final_loss, history=result.history, evals=result.evals,
                   val_accuracy=result.evals[-1]["val_accuracy"], val_loss=result.evals[-1]["val_loss"],
                   test_accuracy=test["accuracy"], test_loss=test["loss"],
                   base=str(Path(base_dir).resolve()) if base_dir is not None else None,
                   base_fingerprint=base.fingerprint())
    if out_dir is not None:
        _save_result(model, lora, tokenizer, summary, Path(out_dir), merge=fcfg.merge, base_dir=base_dir)
    return model, lora, summary


def _start(base, lora, head_origin: str = "new") -> str:
    """What a fine-tune starts from, for resume to check: the base's fingerprint (which leaves any classification
    head out), "+kept-head" when the base's trained head was kept (task_head), and the adapters' configuration (rank,
    alpha, rsLoRA, DoRA, init, dropout, targets), which the checkpoint's weights alone do not all pin down. (A fresh
    head adds nothing: checkpoints made before heads could be kept still resume.)"""
    start = base.fingerprint() + ("+kept-head" if head_origin == "kept" else "")
    if lora is None:
        return start
    config = lora.config
    if float(config.alpha).is_integer():   # alpha=16 and 16.0 are one configuration (the CLI's default is 2r, an int;
        config = dataclasses.replace(config, alpha=int(config.alpha))   # an --alpha is a float): one fingerprint
    text = repr(config)
    if config.quant is None:               # plain LoRA hashes as before quant existed: its checkpoints still resume
        text = text.replace(", quant=None, double_quant=False", "")
    return start + "+lora-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def _save_result(model, lora, tokenizer, summary, out_dir: Path, merge=False, base_dir=None):
    """out_dir/adapter (LoRA: PEFT's files) and/or out_dir/model (a whole model folder: full fine-tuning's result,
    or LoRA's merged into the base with merge=True, with the base's pretrain.json), and finetune.json."""
    from ..base import base_pretraining
    from ..formats.io import drop_summary, save_json
    drop_summary(out_dir, "finetune.json")      # written again last: then the folder is complete
    if lora is not None:
        lora.save_peft(out_dir / "adapter")
    whole = model if lora is None else lora.merged_model() if merge else None
    if whole is not None:
        whole.save_pretrained(out_dir / "model", tokenizer)            # tokenizer.json included
        pretraining = base_pretraining(base_dir) if base_dir is not None else None
        if pretraining is not None:                  # what the original base read, carried down the line
            save_json({**pretraining, "carried_from": str(Path(base_dir).resolve())},
                      out_dir / "model" / "pretrain.json")
    save_json(summary, out_dir / "finetune.json")
