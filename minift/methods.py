"""The article's fine-tuning methods as one mechanism: the task head (§1.1 step 2) and which parameters train,
`model.frozen` (step 3).

Article §1.1 step 3 ("freeze part of the parameters") and §2 (full fine-tuning) and §3 (LoRA) differ only in which
arrays receive gradients and updates:

    method    trains                                                        frozen
    full      every parameter (+ the task head)                             nothing
    freeze    the last blocks, ln_f and a classification head               wte, wpe, the first k blocks (+ LayerNorms
                                                                            if asked)
    head      only the classification head `score.weight` (a linear probe)  the whole transformer
    lora      the adapters' A and B (+ the head, as PEFT's modules_to_save) the whole transformer (minift/lora/)
    qlora     as lora                                                       as lora, the adapted W stored in 4 bits

A frozen parameter is in `model.frozen`: the backward never computes its weight gradient (no xᵀ dy matmul), the
optimizer is never given it, and its array is bitwise unchanged by training. Below the lowest trainable tensor the
backward stops altogether (model.backward_floor): "freeze" skips the whole backward of its k frozen blocks and keeps
no activations for them, "head" runs a forward and the head's backward only.
"""
from __future__ import annotations

from dataclasses import replace

from .config import HEAD_WEIGHT
from .errors import MiniftError

METHODS = ("full", "freeze", "head", "lora", "qlora")
ADAPTER_METHODS = ("lora", "qlora")      # the methods that attach adapters (attach_lora) instead of freezing


def check_task_fits(method: str, task, train_split, batch_size: int, option="--method") -> None:
    """Refuse, before any work, a method the task cannot take and a batch larger than its training set."""
    if method == "head" and train_split.type != "classification":
        raise MiniftError(f"{option}: method 'head' trains only a classification head, and task {str(task)!r} is a "
                          f"{train_split.type} task with no such head; choose another method")
    if batch_size > len(train_split):
        raise MiniftError(f"batch size {batch_size} is more than the {len(train_split)} training examples of "
                          f"{task}: every batch would be the whole set; give a batch of at most {len(train_split)}")


def freeze_plan(model, method: str, freeze_blocks: int | None = None, freeze_embeddings: bool = True,
                freeze_layernorm: bool = False) -> set:
    """The set of parameter names `method` freezes (LoRA's and QLoRA's is made by attach_lora)."""
    names = set(model.params)
    if method == "full":
        return set()
    if method == "head":
        if HEAD_WEIGHT not in model.params:
            raise MiniftError("method 'head' trains only a classification head, and this model has none "
                              "(the language-model head is tied to wte); use a classification task")
        return names - {HEAD_WEIGHT}
    if method == "freeze":
        k = model.cfg.n_layer // 2 if freeze_blocks is None else freeze_blocks
        if not 0 <= k <= model.cfg.n_layer:
            raise MiniftError(f"freeze_blocks={k} (--freeze-blocks) must be between 0 and n_layer={model.cfg.n_layer}")
        frozen = {n for n in names if any(n.startswith(f"h.{i}.") for i in range(k))}
        if freeze_embeddings:
            frozen |= {"wte.weight", "wpe.weight"}
        if freeze_layernorm:
            frozen |= {n for n in names if ".ln_" in n or n.startswith("ln_f.")}
        return frozen
    raise MiniftError(f"method {method!r} is not one of {METHODS}")


def adapter_config(method: str, lora_config=None):
    """The LoRAConfig of an adapter method: "lora" plain (no quant), "qlora" with a 4-bit base (quant "nf4" unless
    the config names another code)."""
    from .lora import LoRAConfig
    config = lora_config or LoRAConfig()
    if method == "qlora" and config.quant is None:
        return replace(config, quant="nf4")
    if method == "lora" and config.quant is not None:
        raise MiniftError(f"the LoRA config quantises the base (quant={config.quant!r}): that is method 'qlora'")
    return config


def adapter_memory_options(config) -> dict:
    """predict_memory's (minift/measure/memory.py) keywords for the adapters of a LoRAConfig."""
    options = dict(rank=config.r, targets=config.targets, dora=config.use_dora)
    if config.quant is not None:
        options.update(quant=config.quant, double_quant=config.double_quant)
    return options


def setup_method(model, method: str, lora_config=None, seed: int = 0, **freeze_options):
    """Prepare `model` for fine-tuning with `method`; returns the LoRA handle for "lora" and "qlora", else None."""
    if model.adapters:
        raise MiniftError("this model already has adapters attached; start from a fresh base model")
    if method in ADAPTER_METHODS:
        from .lora import attach_lora
        return attach_lora(model, adapter_config(method, lora_config), seed=seed)
    if lora_config is not None:
        raise MiniftError(f"LoRA options were given but method is {method!r}; use method 'lora' or 'qlora'")
    model.frozen = freeze_plan(model, method, **freeze_options)
    return None


def trainable_summary(model) -> dict:
    """Counts for the table: trainable and total parameters (base + adapters) and the trainable share."""
    total = model.num_params()
    trainable = model.num_params(trainable_only=True)
    return dict(trainable=trainable, total=total, percent=100.0 * trainable / total)


HEAD_MODES = ("auto", "keep", "new")     # FinetuneConfig.head_mode (--head): what task_head does with a base's head


def task_head(model, train_split, seed: int = 0, head_mode: str = "auto") -> str:
    """Step 2 (article §1.1, "add a task-specific layer"): the head the task trains, on `model` in place.

    A classification task needs a head over its labels. A base that already ends in one over the same labels -- a
    model fine-tuned on this task before, now trained on with new data (article §1.2's "continual improvement") --
    keeps its trained head by default (head_mode "auto"), its rows put in the task's label order: throwing it away
    would start the task over. Any other base gets a fresh head. head_mode "new" always draws a fresh one (the same
    label names can mean another task: "0"/"1"); head_mode "keep" refuses a base without a head over these labels. A
    generation task trains the tied LM head. Returns where the head came from (the run's head origin): "kept", "new"
    or "lm".
    """
    if head_mode not in HEAD_MODES:
        raise MiniftError(f"head_mode={head_mode!r} (--head) is not one of {HEAD_MODES}")
    if train_split.type != "classification":
        if head_mode != "auto":
            raise MiniftError(f"head_mode={head_mode!r} (--head) chooses a classification head, and this is a "
                              f"{train_split.type} task (it trains the tied LM head); leave it at 'auto'")
        return "lm"
    labels = list(train_split.label_names)
    matches = model.head_kind == "classification" and sorted(model.labels) == sorted(labels)
    if head_mode == "keep" and not matches:
        has = f"a head over {model.labels}" if model.head_kind == "classification" else "no classification head"
        raise MiniftError(f"head_mode='keep' (--head keep) trains on the base's head, but the base has {has} and the "
                          f"task's labels are {labels}; use --head new (or auto)")
    if matches and head_mode != "new":
        rows = [model.labels.index(name) for name in labels]                 # the base's row of each task label
        model.params[HEAD_WEIGHT] = model.params[HEAD_WEIGHT][rows]          # [K, C] (indexing by a list copies)
        model.labels = labels
        return "kept"
    model.add_classification_head(labels, seed=seed)
    return "new"


def check_base_fits_task(base, task, train_split) -> None:
    """A generation task trains the language-model head, which a base ending in a classification head lacks."""
    if train_split.type != "classification" and base.head_kind == "classification":
        raise MiniftError(f"task {str(task)!r} is a {train_split.type} task, which trains the language-model head, "
                          f"but this base model ends in a classification head (labels {base.labels}); start from a "
                          "base without one, such as the pretrained model")
