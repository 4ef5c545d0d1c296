"""The `minift` command: pretrain | finetune | compare | generate | inspect | bench | memory.

Every subcommand is a thin layer over library functions a tutorial can call directly. Mistakes print one line,
`minift: error: ...`, and exit non-zero: status 2 for what the parser refuses (an unknown option, text that is not a
number: the usual status of a usage error), 1 for a value the command's configuration refuses or what is found once
the command runs (a missing file, a bad task).

Defaults and checks are set once, in the configuration that owns the value (FinetuneConfig, LoRAConfig,
CompareConfig, PretrainConfig, generate's signature, the lens's DEFAULT_*), never here: an option for such a value
has the argparse default None, the command passes on only the options given (_given), and the configuration fills in
the rest and checks what it gets. Each option names its owner and field once, where it is added (_owned, which notes
the pair on the parser for _given to read back). `--help` shows the owner's default (_owned, _say_defaults).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import re
import signal
import sys
import threading
import warnings

from ..errors import MiniftError
from ..training.train import StartMismatch, TrainingInterrupted


def _int_at_least(lo: int, what: str):
    """An argparse type: an integer >= lo, named `what` in the error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")     # for values no configuration owns (--threads, --chars)
_seed = _int_at_least(0, "a seed, an integer >= 0")          # NumPy's generators take integers >= 0


def _read_as(kind, what: str):
    """An argparse type that only reads the text as `kind` (int or float): whether the value is in range is for the
    configuration that owns it to say, in its own words."""
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    return parse


_integer = _read_as(int, "an integer")
_number = _read_as(float, "a number")


def _workers(text):
    """--workers: "auto" or an integer (its range is the configuration's to check)."""
    from ..fast.parallel import AUTO
    return text if text == AUTO else _read_as(int, f"an integer or {AUTO!r}")(text)


def default_of(owner, name: str):
    """The default of `name` where it is set once: a dataclass's field, an entry of a table of defaults, or a
    parameter of a function (generate's sampling options)."""
    if isinstance(owner, dict):
        return owner[name]
    if not dataclasses.is_dataclass(owner):
        return inspect.signature(owner).parameters[name].default
    field = owner.__dataclass_fields__[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _owned(p, flag: str, owner, name: str | None = None, read=None, **kw):
    """Add option `flag` for `owner`'s field `name` (default: the option's own name). Its argparse default is None,
    so that only a value given reaches the owner, which fills in the rest; the help shows the owner's default.
    The pair is written here only: the parser keeps it (its default `owned`: argparse name -> (owner, field, read))
    and _given reads it back. read: turns the text given into the field's value inside the command, where a
    MiniftError is one line (an argparse `type` would let it escape the parser as a traceback)."""
    action = p.add_argument(flag, default=None, **kw)
    field = name or action.dest
    action.owner_default = default_of(owner, field)
    if p.get_default("owned") is None:
        p.set_defaults(owned={})
    p.get_default("owned")[action.dest] = (owner, field, read)
    return action


def _given(a=None, owner=None, /, **options) -> dict:
    """The options given on the command line (not None), under the owner's field names: those _owned added for
    `owner`, read from the parsed arguments `a`, and `options` (field=value: values the command reads itself)."""
    given = {name: value for name, value in options.items() if value is not None}
    for dest, (of, field, read) in (getattr(a, "owned", None) or {}).items():
        value = getattr(a, dest)
        if of is owner and value is not None and field not in given:
            given[field] = read(value) if read is not None else value
    return given


def _refuse_unused(given: dict, why: str) -> None:
    """given: option -> whether it was given. Options the command would ignore are an error, not silently dropped."""
    named = ", ".join(k for k, v in given.items() if v)
    if named:
        raise MiniftError(f"{named}: {why}")


def _add_device(p):
    p.add_argument("--device", default=None, choices=["cpu", "gpu", "auto"],
                   help="where to run (default: $MINIFT_DEVICE or cpu)")


def _add_run_options(p, out_default, owner):
    """The options every training command shares: output folder (and what to do with an earlier run there), seed,
    progress bar, device, BLAS threads, workers. owner: the configuration whose seed and workers they set."""
    p.add_argument("--out", default=out_default, help=f"output folder (default {out_default}); it must be new or "
                                                      "empty, unless --resume or --overwrite")
    p.add_argument("--resume", action="store_true",
                   help="continue the run stopped in --out (Ctrl-C or SIGTERM saves a checkpoint after the step "
                        "under way), with the same settings; --steps may grow")
    p.add_argument("--overwrite", action="store_true", help="delete the earlier run in --out first")
    _owned(p, "--seed", owner, type=_seed)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="numpy's BLAS threads (default: the environment's, e.g. OPENBLAS_NUM_THREADS); use 1 when "
                        "the cores are busy with other work: OpenBLAS's threads then wait for each other at every "
                        "matmul (measured 3-15x slower with 2 threads on a loaded 2-core machine)")
    _owned(p, "--workers", owner, type=_workers,
           help="split each batch across this many CPU threads, each with cores // workers BLAS threads (one on 2 "
                "cores) unless --threads says otherwise (data parallelism, "
                "minift/fast/parallel.py): on 2+ cores faster than BLAS threads alone, since NumPy's elementwise "
                "ops run on one core; needs dropout 0. auto: 2 where that applies (the CPU, 2+ cores, no dropout, "
                "no --threads), else 1")
    _add_device(p)
    p.set_defaults(prepare=_prepare_training)


def _prepare_training(a):
    """Before a training command (after its configuration is made: a.config): the output folder opened, the BLAS
    thread count asked for, and freed memory kept for the next step.

    reuse_freed_memory (minift/measure/bench.py) stops glibc handing each step's large activations back to the OS only
    to fault them in again on the next step (16-25% of a demo step's time went to those page faults).
    """
    from ..measure.bench import reuse_freed_memory, set_blas_threads
    from .outdir import RunFolder
    inputs = {f"--{name}": getattr(a, name) for name in ("base", "task", "tokenizer", "files") if hasattr(a, name)}
    a.run_folder = RunFolder(a.out, a.command, a.resume, a.overwrite, inputs, argv=a.argv)
    from ..fast.parallel import AUTO, cpu_cores
    cores = cpu_cores()
    if a.threads is not None and a.config.workers == AUTO:         # --threads chooses BLAS threading instead
        a.config = dataclasses.replace(a.config, workers=1)
    workers = a.config.workers                                       # the command's configuration (configure)
    if a.threads is not None and cores and a.threads * workers > cores:
        raise MiniftError(f"--threads {a.threads} x --workers {workers} = {a.threads * workers} BLAS threads on "
                          f"{cores} cores: they would wait for each other at every matmul (slower, not faster); give "
                          f"at most {cores} in all")
    a.run_folder.open()                   # before any work: --out checked, an earlier run set aside by --overwrite
    if a.threads is not None:
        set_blas_threads(a.threads)       # (with workers and no --threads, train shares the cores out itself)
    reuse_freed_memory()


# ---- pretrain ----------------------------------------------------------------------------------------------------

def pretrain_config_from_args(a):
    """The PretrainConfig of pretrain's options: those given, PretrainConfig's defaults for the rest; and the corpus
    options, checked against each other. (A warmup derived from --steps is settled when the run starts, by pretrain:
    a resumed run keeps its own.)"""
    from ..training.pretrain import DEFAULT_CHARS, PretrainConfig
    if a.files and a.corpus:
        raise MiniftError(f"--files replaces the embedded corpus: drop --corpus {a.corpus}, or --files")
    if a.chars is not None and (a.files or a.corpus == "pydoc"):
        reader = "--files" if a.files else "--corpus pydoc"
        raise MiniftError(f"--chars sizes the generated world corpus, which {reader} does not read: drop --chars")
    a.corpus, a.chars = a.corpus or "world", a.chars or DEFAULT_CHARS
    return PretrainConfig(**_given(a, PretrainConfig))


def cmd_pretrain(a):
    from ..training.pretrain import pretrain
    pcfg = a.config
    _, tok, s = pretrain(a.preset, a.corpus, a.files, a.chars, pcfg, a.out, a.tokenizer, a.device, pcfg.seed,
                         a.resume, progress=not a.quiet)
    print(f"pretrained {s['preset']} for {pcfg.steps} steps ({s['tokens_seen']:,} tokens) in "
          f"{s['train_seconds']:.0f} s: train loss {s['final_train_loss']:.3f}, validation loss {s['val_loss']:.3f}")
    print(f"model and tokenizer: {a.out}/model   summary: {a.out}/pretrain.json")


def add_pretrain(sub):
    from ..training.pretrain import DEFAULT_CHARS, PretrainConfig
    p = sub.add_parser("pretrain", help="pretrain a GPT from scratch on the embedded corpus or your text files")
    p.add_argument("--preset", default="demo", choices=["tiny", "demo", "small", "gpt2"])
    p.add_argument("--corpus", default=None, choices=["world", "pydoc", "both"],
                   help="embedded corpus: the generated world (default), the interpreter's docs, or both")
    p.add_argument("--files", nargs="+", default=None, help="your own UTF-8 text files instead of a corpus")
    p.add_argument("--chars", type=_positive_int, default=None,
                   help=f"size of the generated world corpus in characters (default {DEFAULT_CHARS})")
    _owned(p, "--steps", PretrainConfig, type=_integer)
    _owned(p, "--batch", PretrainConfig, "batch_size", type=_integer)
    _owned(p, "--lr", PretrainConfig, type=_number)
    _owned(p, "--warmup", PretrainConfig, type=_integer,
           help="warmup steps (default: a tenth of --steps, at most 100, PretrainConfig.derived_warmup; a resumed "
                "run keeps the warmup it started with)")
    _owned(p, "--weight-decay", PretrainConfig, type=_number)
    _owned(p, "--eval-every", PretrainConfig, type=_integer)
    _owned(p, "--save-every", PretrainConfig, type=_integer)
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: data/tokenizer.json if it fits)")
    _add_run_options(p, "runs/pretrain", PretrainConfig)
    p.set_defaults(func=cmd_pretrain, configure=pretrain_config_from_args)


# ---- generate ----------------------------------------------------------------------------------------------------

def cmd_generate(a):
    from ..base import load_base
    from ..generate import generate
    try:
        a.prompt.encode("utf-8")
    except UnicodeEncodeError:         # bytes the shell passed that are not UTF-8 arrive as lone surrogates
        raise MiniftError("--prompt holds bytes that are not UTF-8 text; give the prompt in UTF-8") from None
    model, tok = load_base(a.model, device=a.device)
    if a.adapter is not None:
        from ..lora import load_peft
        load_peft(model, a.adapter)                     # on top of --model, the base it was trained on; eval mode
        if model.head_kind == "classification":
            raise MiniftError(f"the adapter {a.adapter} was trained for classification (labels {model.labels}): it "
                              "carries a classification head, and generation needs the language-model head")
    sampling = _given(a, generate)              # max_new_tokens, temperature, top_k: those given; generate's defaults
    for i in range(a.samples):
        text = generate(model, tok, a.prompt, seed=a.seed + i, **sampling)
        print(a.prompt + text)
        if i + 1 < a.samples:
            print("---")


def add_generate(sub):
    from ..generate import generate
    p = sub.add_parser("generate", help="sample text from a model folder (default: the shipped demo base)")
    p.add_argument("--model", default=None, help="model folder (default: data/base-demo)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter folder (finetune's --out/adapter), applied to --model, the base it was "
                        "trained on")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    _owned(p, "--max-new-tokens", generate, type=_positive_int)
    _owned(p, "--temperature", generate, type=_number, help="T < 1 sharpens the distribution, T > 1 flattens it; "
                                                           "0: always the likeliest token")
    _owned(p, "--top-k", generate, type=_positive_int, help="sample only among the k likeliest tokens (default: all)")
    p.add_argument("--samples", type=_positive_int, default=1)
    p.add_argument("--seed", type=_seed, default=0)
    _add_device(p)
    p.set_defaults(func=cmd_generate)


# ---- finetune ----------------------------------------------------------------------------------------------------

METHOD_HELP = ("what trains: every weight (full); all but the embeddings and the first blocks (freeze); only a "
               "classification head (head); low-rank adapters and the head (lora); the same on a base stored in "
               "4 bits (qlora)")
METHOD_CHOICES = ["full", "freeze", "head", "lora", "qlora"]


def _targets(text):
    """--targets as LoRAConfig reads it: None (not given), "all-linear", or a tuple of module names."""
    if text is None or text == "all-linear":
        return text
    if not text.strip(" ,"):
        raise MiniftError("--targets is empty: name the linears to adapt (c_attn,attn.c_proj,c_fc,mlp.c_proj), or "
                          "all-linear, or leave the option out")
    return tuple(t.strip() for t in text.split(","))


def _lora_from_args(a):
    """The LoRAConfig of finetune's options: what was given, and LoRAConfig's defaults for the rest."""
    from ..lora import LoRAConfig
    return LoRAConfig(**_given(a, LoRAConfig), rslora=a.rslora, use_dora=a.dora, double_quant=a.double_quant)


# finetune's options that decide what a run starts from (the checkpoint's start fingerprint, finetune._start), by
# their argparse names, as typed (--head is FinetuneConfig.head_mode)
START_OPTIONS = ("method", "head", "rank", "alpha", "targets", "rslora", "dora", "init", "lora_dropout", "quant",
                 "double_quant")


def _started_with(a, names) -> dict:
    """--resume: {option: (as the run started, as given now)} for the options in `names` that differ from the command
    line recorded in --out's run.json (empty when it has none, or one this version cannot read)."""
    import io
    import json
    from pathlib import Path
    try:
        argv = json.loads((Path(a.out) / "run.json").read_text())["argv"]
        with contextlib.redirect_stderr(io.StringIO()):
            before = build_parser().parse_args(argv[1:])
    except (OSError, ValueError, KeyError, TypeError, SystemExit):
        return {}
    if before.command != a.command:
        return {}
    return {name: (getattr(before, name), getattr(a, name)) for name in names
            if getattr(before, name, None) != getattr(a, name, None)}


def _shown(value) -> str:
    return "(default)" if value is None else str(value)


def finetune_config_from_args(a):
    """The FinetuneConfig of finetune's options: those given, FinetuneConfig's (and LoRAConfig's) defaults for the
    rest. Options the method would ignore are refused by name."""
    from ..training.finetune import FinetuneConfig
    from ..methods import ADAPTER_METHODS
    method = default_of(FinetuneConfig, "method") if a.method is None else a.method
    if method not in ADAPTER_METHODS:
        _refuse_unused({"--rank": a.rank is not None, "--alpha": a.alpha is not None,
                        "--targets": a.targets is not None, "--rslora": a.rslora, "--dora": a.dora,
                        "--init": a.init is not None, "--lora-dropout": a.lora_dropout is not None,
                        "--merge": a.merge}, f"LoRA options, but --method is {method!r}")
    if method != "qlora":
        _refuse_unused({"--quant": a.quant is not None, "--double-quant": a.double_quant},
                       f"QLoRA options (the 4-bit base), but --method is {method!r}; use --method qlora")
    if a.freeze_blocks is not None and method != "freeze":
        raise MiniftError(f"--freeze-blocks needs --method freeze (got {method!r})")
    return FinetuneConfig(**_given(a, FinetuneConfig, lora=_lora_from_args(a) if method in ADAPTER_METHODS else None),
                          merge=a.merge)


def cmd_finetune(a):
    from ..base import load_base, shipped_base_dir
    from ..training.finetune import finetune
    changed = _started_with(a, START_OPTIONS) if a.resume else {}
    fcfg = a.config
    base, tok = load_base(a.base, device=a.device)
    try:
        _, _, s = finetune(base, tok, fcfg, out_dir=a.out, progress=not a.quiet, resume=a.resume,
                           base_dir=a.base or shipped_base_dir())
    except StartMismatch as e:     # the checkpoint decides; run.json's command line names what differs
        if not changed:
            raise
        diff = ", ".join(f"--{k.replace('_', '-')} {_shown(old)} -> {_shown(new)}" for k, (old, new) in changed.items())
        raise MiniftError(f"{e} (against the command line in run.json: {diff})") from None
    print(f"{s['method']} on {s['task']}: {s['trainable']:,} trainable of {s['total']:,} ({s['percent']:.2f}%), "
          f"{s['ms_per_step']:.0f} ms/step")
    print(f"validation accuracy {s['val_accuracy']:.3f}, test accuracy {s['test_accuracy']:.3f} "
          f"(loss {s['test_loss']:.3f}); saved to {a.out}")
    head_origin = s["head"]              # the summary's (and finetune.json's) key for task_head's answer
    if head_origin == "kept":
        print(f"the base's trained classification head (labels {', '.join(base.labels)}) was kept and trained "
              "further (--head new for a fresh one)")
    elif head_origin == "new" and base.head_kind == "classification":
        print(f"the base's classification head (labels {', '.join(base.labels)}) was replaced by a new one for the "
              f"task's labels ({', '.join(s['labels'])})")
    if a.merge:
        print(f"merged model (adapters folded into the weights): {a.out}/model -- deploy it, or give it as --base "
              "to fine-tune on")
    if s["train_examples_cut"]:
        how = ("each keeps only its last {} tokens" if s["task_type"] == "classification" else
               "their prompts lose tokens from the start to fit {} (and a longer completion its end)")
        print(f"note: {s['train_examples_cut']} of {s['train_examples']} training examples are longer than the "
              f"{s['max_len']} tokens the model reads; {how.format(s['max_len'])}; evaluation cuts them the same way")


def _rates_help(rates: dict) -> str:
    """"full 0.001, lora 0.002, ...": a table of learning rates by method, for a help text."""
    return ", ".join(f"{method} {rate:g}" for method, rate in rates.items())


def add_finetune(sub):
    from ..lora import LoRAConfig
    from ..training.finetune import DEFAULT_HEAD_LR, DEFAULT_LR, FinetuneConfig
    p = sub.add_parser("finetune", help="fine-tune the base model on a task with one method")
    _owned(p, "--method", FinetuneConfig, choices=METHOD_CHOICES, help=METHOD_HELP)
    _owned(p, "--task", FinetuneConfig, help="sentiment | facts | a task folder | a JSONL/CSV file")
    p.add_argument("--base", default=None, help="model folder (default: the shipped data/base-demo)")
    _owned(p, "--steps", FinetuneConfig, type=_integer)
    _owned(p, "--batch", FinetuneConfig, "batch_size", type=_integer)
    _owned(p, "--lr", FinetuneConfig, type=_number, help=f"default by method: {_rates_help(DEFAULT_LR)}")
    _owned(p, "--head-lr", FinetuneConfig, type=_number,
           help=f"the classification head's learning rate (default: {_rates_help(DEFAULT_HEAD_LR)}; --lr for the "
                "other methods)")
    _owned(p, "--train-size", FinetuneConfig, type=_integer,
           help="train on only this many examples, labels kept balanced (default: all)")
    _owned(p, "--freeze-blocks", FinetuneConfig, type=_integer,
           help="method freeze: how many of the first blocks to freeze, besides the embeddings (default: half of "
                "them)")
    _owned(p, "--rank", LoRAConfig, "r", type=_integer, help="LoRA rank r")
    _owned(p, "--alpha", LoRAConfig, type=_number,
           help="LoRA alpha; the update is scaled by s = alpha / r (default 2r, so s = 2; PEFT's own default is 8)")
    _owned(p, "--targets", LoRAConfig, read=_targets,
           help="LoRA targets: all-linear or a comma list of c_attn,attn.c_proj,c_fc,mlp.c_proj")
    p.add_argument("--rslora", action="store_true", help="scale alpha/sqrt(r) (rank-stabilised LoRA)")
    p.add_argument("--dora", action="store_true", help="DoRA: learned magnitude and normalised direction")
    _owned(p, "--init", LoRAConfig, choices=["default", "gaussian", "pissa"],
           help="LoRA initialisation (default: A random, B = 0)")
    _owned(p, "--lora-dropout", LoRAConfig, "dropout", type=_number, help="dropout on the adapters' input")
    _owned(p, "--quant", LoRAConfig, choices=["nf4", "int4", "fp4"],
           help="qlora: the 4-bit code the frozen base is stored in (default nf4, QLoRA's NormalFloat)")
    p.add_argument("--double-quant", action="store_true",
                   help="qlora: quantise the block scales too (8 bits each: 4.127 bits a weight instead of 4.5)")
    p.add_argument("--merge", action="store_true",
                   help="LoRA: also save the merged model (the adapters folded into the weights, W + s·BA; DoRA's "
                        "m·V/‖V‖; QLoRA's into the dequantised base, deq(W) + s·BA) in --out/model, to deploy as one "
                        "folder or to fine-tune on with --base (default: the adapter only)")
    _owned(p, "--head", FinetuneConfig, "head_mode", choices=["auto", "keep", "new"],     # a.head -> head_mode
           help="a base that ends in a classification head over the task's labels: train on from it (auto, keep: "
                "keep refuses any other base) or start a fresh head (new)")
    _owned(p, "--eval-every", FinetuneConfig, type=_integer,
           help="validation accuracy every N steps (0: only at the end)")
    _owned(p, "--save-every", FinetuneConfig, type=_integer,
           help="checkpoint every N steps into --out/checkpoints (0: at the end, and when stopped)")
    _add_run_options(p, "runs/finetune", FinetuneConfig)
    p.set_defaults(func=cmd_finetune, configure=finetune_config_from_args)


# ---- compare -----------------------------------------------------------------------------------------------------

def _int_list(text, lo=None):
    """Comma-separated integers (at least lo, when the option's own rule says so)."""
    if "" in (items := [v.strip() for v in text.split(",")]) and text.strip():
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}: give integers separated by single commas")
    try:
        values = tuple(int(v) for v in items if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or (lo is not None and any(v < lo for v in values)):
        raise argparse.ArgumentTypeError(f"expected integers ≥ {lo}, got {text!r}" if values else
                                         f"expected comma-separated integers, got {text!r}")
    return values


def _seed_list(text):
    return _int_list(text, lo=0)


def _names(text):
    """Comma-separated names, each stripped: which they may be is for the configuration to say."""
    return tuple(name.strip() for name in text.split(","))


def cmd_compare(a):
    from .compare import compare
    from .report import main_table, memory_table, seeds_table
    results = compare(a.config, out=a.out, progress=not a.quiet, resume=a.resume)
    print(main_table(results))
    print()
    print("Peak training memory, MiB (measured; predicted in the last column):")
    print(memory_table(results))
    if results.get("seeds"):
        print(f"\nOver seeds {', '.join(map(str, results['seeds']['seeds']))} (every run repeated):")
        print(seeds_table(results))
    print(f"\nreport: {a.out}/report.md   numbers: {a.out}/results.json   ({results['seconds']:.0f} s)")


def compare_config_from_args(a):
    """The CompareConfig of compare's options: those given, CompareConfig's defaults (--quick: QUICK's) for the
    rest. LoRA options with no LoRA run to use them are refused by name."""
    from .compare import CompareConfig
    if a.preset not in (None, "demo") and a.base is None:
        raise MiniftError(f"only the demo base is shipped; for --preset {a.preset}, pretrain one (minift pretrain "
                          f"--preset {a.preset} --out runs/base-{a.preset}) and pass --base runs/base-{a.preset}/model")
    given = _given(a, CompareConfig, device=a.device,
                   lr=None if a.lora_lr is None else {"lora": a.lora_lr, "qlora": a.lora_lr},
                   head_lr=None if a.lora_head_lr is None else {"lora": a.lora_head_lr, "qlora": a.lora_head_lr})
    ccfg = (CompareConfig.quick_config if a.quick else CompareConfig)(**given, rslora=a.rslora, dora=a.dora,
                                                                      double_quant=a.double_quant)
    if not {"lora", "qlora"} & set(ccfg.methods) and not ccfg.ranks:
        _refuse_unused({"--alpha": a.alpha is not None, "--rslora": a.rslora, "--dora": a.dora,
                        "--lora-lr": a.lora_lr is not None, "--lora-head-lr": a.lora_head_lr is not None},
                       f"LoRA options, but --methods {','.join(ccfg.methods)} runs no LoRA (add lora, or --ranks)")
    if "qlora" not in ccfg.methods:
        _refuse_unused({"--quant": a.quant is not None, "--double-quant": a.double_quant},
                       f"QLoRA options, but --methods {','.join(ccfg.methods)} runs no QLoRA (add qlora)")
    if a.dora and "qlora" in ccfg.methods:
        print("note: --dora applies to the lora run; the qlora run stays plain LoRA on its 4-bit base "
              "(QLoRA with DoRA is not written in minift)", file=sys.stderr)
    return ccfg


def add_compare(sub):
    from ..training.finetune import DEFAULT_HEAD_LR, DEFAULT_LR
    from .compare import QUICK, QUICK_TRAIN_SIZE, CompareConfig
    p = sub.add_parser("compare", help="full fine-tuning vs LoRA vs head-only, measured (the article's question)")
    _owned(p, "--task", CompareConfig, help="sentiment | facts | a task folder | a JSONL/CSV file")
    _owned(p, "--methods", CompareConfig, type=_names,
           help="comma list of full,freeze,head,lora,qlora (default full,lora,head; full,lora for a generation "
                "task)")
    _owned(p, "--ranks", CompareConfig, type=_int_list, help="LoRA rank sweep, e.g. 1,2,4,8,16,64")
    _owned(p, "--alpha", CompareConfig, type=_number,
           help=f"LoRA alpha for the main rank (default 2r = {2 * default_of(CompareConfig, 'rank')})")
    _owned(p, "--seeds", CompareConfig, type=_seed_list,
           help="extra seeds, e.g. 1,2: every run repeated, accuracy / forgetting / intruders over seeds")
    p.add_argument("--lora-lr", type=_number, default=None,
                   help=f"the LoRA runs' adapter learning rate (default {DEFAULT_LR['lora']:g})")
    p.add_argument("--lora-head-lr", type=_number, default=None,
                   help=f"the LoRA runs' classification-head learning rate (default {DEFAULT_HEAD_LR['lora']:g})")
    p.add_argument("--rslora", action="store_true", help="the LoRA runs scale by alpha/sqrt(r) (rank-stabilised)")
    p.add_argument("--dora", action="store_true", help="the LoRA runs are DoRA (learned magnitude, normalised "
                                                       "direction)")
    _owned(p, "--quant", CompareConfig, choices=["nf4", "int4", "fp4"],
           help="the qlora run's 4-bit code for the frozen base (default nf4)")
    p.add_argument("--double-quant", action="store_true", help="the qlora run quantises the block scales too")
    _owned(p, "--train-size", CompareConfig, type=_integer,
           help=f"train every run on only this many examples (the small-data question; default: all, "
                f"{QUICK_TRAIN_SIZE} with --quick)")
    _owned(p, "--steps", CompareConfig, type=_integer,
           help=f"default {default_of(CompareConfig, 'steps')} ({QUICK['steps']} with --quick)")
    _owned(p, "--batch", CompareConfig, "batch_size", type=_integer,
           help=f"batch size of every run (default {default_of(CompareConfig, 'batch_size')}, "
                f"{QUICK['batch_size']} with --quick)")
    _owned(p, "--base", CompareConfig, help="model folder (default: the shipped data/base-demo)")
    _owned(p, "--preset", CompareConfig, choices=["tiny", "demo", "small", "gpt2"],
           help="model size: demo is shipped; for another, pretrain a base and pass --base")
    p.add_argument("--quick", action="store_true", help="a tiny budget: seconds, for tests and CI")
    _add_run_options(p, "compare-report", CompareConfig)
    p.set_defaults(func=cmd_compare, configure=compare_config_from_args)


# ---- inspect -----------------------------------------------------------------------------------------------------

def _inspect_configs(a):
    """(LoRAConfig, the warm-up's TrainConfig or None with --steps 0, the batch size, the lens's η): inspect's options
    given, LoRAConfig's and InspectConfig's defaults for the rest, each checked by its owner before any work."""
    from ..lora import LoRAConfig
    from ..measure.lens import InspectConfig
    from ..training.train import TrainConfig
    s = InspectConfig(**_given(a, InspectConfig))
    if a.train_lr is not None and s.steps == 0:
        raise MiniftError("--train-lr is the learning rate of the --steps training steps, and --steps is 0")
    lcfg = LoRAConfig(**_given(a, LoRAConfig))
    tcfg = None
    if s.steps:
        tcfg = TrainConfig(steps=s.steps, batch_size=s.batch, lr=s.train_lr, warmup=0, schedule="constant",
                           seed=a.seed)
    return lcfg, tcfg, s.batch, s.lr


def _inspect_setup(a, lcfg, tcfg, batch_size):
    """(model, lora, batch): the base with the task's head and LoRA attached, trained tcfg.steps steps, and the next
    batch of the task's training data."""
    from ..base import load_base
    from ..data import load_task
    from ..data.sources import task_source
    from ..lora import attach_lora
    from ..methods import check_base_fits_task, task_head
    from ..training.finetune import FinetuneConfig
    from ..training.train import train
    model, tok = load_base(a.base, dtype=a.dtype, device=a.device)
    split = load_task(a.task, "train")
    check_base_fits_task(model, a.task, split)
    task_head(model, split, seed=a.seed)                                  # as finetune does
    lora = attach_lora(model, lcfg, seed=a.seed)
    if a.module is not None and a.module not in lora.modules:            # before the training steps, not after
        raise MiniftError(f"--module {a.module!r} is not one of the adapted matrices of this {model.cfg.n_layer}-"
                          f"block model: {', '.join(lora.modules[:4])}, ... (see --targets)")
    max_len = min(FinetuneConfig.max_len, model.cfg.n_ctx)
    source = task_source(split, tok, max_len=max_len, batch_size=batch_size, seed=a.seed)
    if tcfg is not None:
        train(model, source, tcfg, progress=not a.quiet, desc=f"LoRA warm-up ({tcfg.steps} steps)")
    return model, lora, source.next_batch()


_LENS_PLAIN = dict(task="sentiment", dtype="float32", seed=0)     # the lens's options with plain argparse defaults


def _run_weights(run, base, base_name):
    """(label, name -> tuned weight as a host array, LoRA rank or None) of a folder `minift finetune --out` wrote,
    fine-tuned from `base` (named `base_name` in errors): LoRA's adapter/ loaded onto a copy of the base and folded in
    (effective_weights: W0 + ΔW, the rest the base's), else its model/ as it is (full, freeze, head)."""
    from pathlib import Path

    from ..backend import to_numpy
    from ..formats.io import load_json
    from ..lora import load_peft
    from ..model import GPT
    run = Path(run)
    if not run.is_dir():
        raise MiniftError(f"--compare: {run} is a file, not a run folder" if run.exists() else
                          f"--compare: run folder not found: {run}")
    if not (run / "finetune.json").is_file():
        what = ("a model folder" if (run / "config.json").is_file() else "a pretrain run" if
                (run / "pretrain.json").is_file() else "not a finished fine-tune (no finetune.json)")
        raise MiniftError(f"--compare: {run} is {what}: give two folders `minift finetune --out` wrote")
    summary = load_json(run / "finetune.json", "fine-tuning summary")
    summary = summary if isinstance(summary, dict) else {}
    recorded, fp = summary.get("base_fingerprint"), base.fingerprint()
    if recorded is not None and recorded != fp:
        raise MiniftError(f"--compare: {run} was fine-tuned from another base (fingerprint {recorded}) than "
                          f"{base_name} (fingerprint {fp}): give the base it was trained on with --base")
    if summary.get("method") in ("lora", "qlora"):
        model = base.to()                                           # a copy: PiSSA would replace its weights
        lora = load_peft(model, run / "adapter")
        weights = {**base.params, **lora.tuned_weights(base.params)}
        label, r = f"{summary['method']} r={lora.config.r}", lora.config.r
    else:
        model = GPT.from_pretrained(run / "model", dtype=base.dtype, device=base.device)
        weights, label, r = model.params, str(summary.get("method", "model")), None
    return label, {k: to_numpy(v) for k, v in weights.items()}, r


def _inspect_compare(a):
    """inspect --compare RUN_A RUN_B: the two runs' updates ΔW = W_tuned − W0, matrix by matrix (analysis.py)."""
    import json
    import math

    from ..backend import to_numpy
    from ..base import load_base
    from ..measure.analysis import SUBSPACE_K, compare_updates, format_update_comparison
    _refuse_unused({"--task": a.task != _LENS_PLAIN["task"], "--rank": a.rank is not None,
                    "--alpha": a.alpha is not None, "--targets": a.targets is not None, "--steps": a.steps is not None,
                    "--train-lr": a.train_lr is not None, "--lr": a.lr is not None, "--batch": a.batch is not None,
                    "--seed": a.seed != _LENS_PLAIN["seed"], "--dtype": a.dtype != _LENS_PLAIN["dtype"],
                    "--module": a.module is not None, "--quiet": a.quiet},
                   "options of the lens, which --compare does not run (it reads two finished runs)")
    base, _ = load_base(a.base, dtype="float64", device=a.device)  # float64: W0 + ΔW − W0 leaves ΔW's rank alone
    base_name = f"--base {a.base}" if a.base else "the shipped base data/base-demo (no --base)"
    (label_a, tuned_a, r_a), (label_b, tuned_b, r_b) = (_run_weights(run, base, base_name) for run in a.compare)
    columns = (label_a, label_b) if label_a != label_b else ("A " + label_a, "B " + label_b)
    ranks = [r for r in (r_a, r_b) if r is not None]
    k = a.k if a.k is not None else min(ranks) if ranks else SUBSPACE_K
    rows = compare_updates({n: to_numpy(w) for n, w in base.params.items()}, tuned_a, tuned_b, k=k)
    both = [r for r in rows if r["k"]]
    if a.json:
        plain = [{n: None if isinstance(v, float) and not math.isfinite(v) else v for n, v in r.items()}
                 for r in rows]                                      # JSON has no NaN: "no update" is null
        print(json.dumps({"run_a": str(a.compare[0]), "run_b": str(a.compare[1]), "label_a": label_a,
                          "label_b": label_b, "k": k, "rows": plain}, indent=2))
        return
    print(f"minift inspect --compare: A = {a.compare[0]} ({label_a}), B = {a.compare[1]} ({label_b}), "
          f"top-{k} output subspaces of ΔW = W_tuned − W0")
    print(format_update_comparison(rows, *columns))
    if not both:
        print("No matrix was changed by both runs: there is no pair of updates to compare.")
        return
    mean, floor = (sum(r[key] for r in both) / len(both) for key in ("similarity", "random"))
    print(f"mean similarity {mean:.3f} over the {len(both)} matrices both runs changed; random subspaces: {floor:.3f}, "
          "the same output directions: 1")


def cmd_inspect(a):
    import json

    from ..measure.lens import format_lens, format_module, lens, module_spectra
    if a.compare is not None:
        return _inspect_compare(a)
    if a.k is not None:
        raise MiniftError("--k is the subspace size of --compare RUN_A RUN_B, which was not given")
    lcfg, tcfg, batch_size, lr = _inspect_configs(a)
    model, lora, batch = _inspect_setup(a, lcfg, tcfg, batch_size)
    report = lens(model, lora, batch, lr=lr)
    steps = tcfg.steps if tcfg is not None else 0
    trained = (f"after {steps} LoRA training steps (AdamW, lr {tcfg.lr:g}, so B ≠ 0)" if steps
               else "at init (--steps 0: B = 0)")
    if a.json:
        out = {"task": a.task, "steps": steps, **report.to_dict()}
        if a.module is not None:
            out["module_detail"] = module_spectra(report, a.module)
        print(json.dumps(out, indent=2))
        return
    print(f"minift inspect: task {a.task}, {trained}")
    print(format_lens(report))
    if a.module is not None:
        print()
        print(format_module(report, a.module))


def add_inspect(sub):
    from ..lora import LoRAConfig
    from ..measure.analysis import SUBSPACE_K
    from ..measure.lens import InspectConfig
    p = sub.add_parser("inspect", help="one batch, full fine-tuning's gradient vs LoRA's, matrix by matrix (§4.1); "
                       "with --compare, two finished runs' updates (§4.2)")
    p.add_argument("--base", default=None, help="model folder (default: the shipped data/base-demo)")
    p.add_argument("--compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                   help="instead of the lens: two folders `minift finetune --out` wrote on --base (e.g. full and "
                        "LoRA); print each matrix's ‖ΔW‖/‖W0‖, effective rank of ΔW, and how much the two updates' "
                        "top-k output subspaces overlap (1 = the same, random subspaces ≈ k/dim)")
    p.add_argument("--k", type=_positive_int, default=None,
                   help=f"--compare's subspace size k (default: the LoRA run's r, else {SUBSPACE_K})")
    p.add_argument("--task", default=_LENS_PLAIN["task"], help="sentiment | facts | a task folder | a JSONL/CSV file")
    _owned(p, "--rank", LoRAConfig, "r", type=_integer, help="LoRA rank r")
    _owned(p, "--alpha", LoRAConfig, type=_number, help="LoRA alpha (default 2r)")
    _owned(p, "--targets", LoRAConfig, read=_targets,
           help="LoRA targets: all-linear or a comma list of c_attn,attn.c_proj,c_fc,mlp.c_proj")
    _owned(p, "--steps", InspectConfig, type=_integer,
           help="train LoRA this many steps first, so B ≠ 0 (0 = look at init)")
    _owned(p, "--train-lr", InspectConfig, type=_number, help="AdamW learning rate of those steps")
    _owned(p, "--lr", InspectConfig, type=_number, help="η of the SGD step the lens shows")
    _owned(p, "--batch", InspectConfig, type=_integer)
    p.add_argument("--seed", type=_seed, default=_LENS_PLAIN["seed"])
    p.add_argument("--dtype", default=_LENS_PLAIN["dtype"], choices=["float32", "float64"],
                   help="float64: the identity errors drop to ~1e-15")
    p.add_argument("--module", default=None, help="show one matrix in detail, e.g. h.0.attn.c_attn")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar for the training steps")
    _add_device(p)
    p.set_defaults(func=cmd_inspect)


# ---- bench -------------------------------------------------------------------------------------------------------

def cmd_bench(a):
    import json

    from ..measure.bench import format_report, run_bench
    if a.rank is not None and a.method not in ("lora", "qlora"):
        raise MiniftError(f"--rank {a.rank} is a LoRA option, but --method is {a.method!r}")
    from ..lora import LoRAConfig
    rank = LoRAConfig(**_given(a, LoRAConfig)).r                   # --rank, or LoRAConfig's; checked there
    r = run_bench(a.preset, a.method, rank=rank, steps=a.steps, warmup=a.warmup,
                  device=a.device, seed=a.seed, profile_steps=a.profile_steps, clock=a.clock, malloc=a.malloc,
                  threads=a.threads, workers=a.workers, fused=False if a.no_fused else None)
    print(json.dumps(r) if a.json else format_report(r))


def add_bench(sub):
    from ..config import BENCH_BATCH
    from ..lora import LoRAConfig
    p = sub.add_parser("bench", help="time a training step (forward + backward + AdamW): ms, tokens/s, MFU, per op")
    p.add_argument("--preset", default="demo",
                   help="tiny | demo | small | gpt2; the batch is the preset's bench batch, rows of n_ctx tokens: "
                        + ", ".join(f"{name} {rows}" for name, rows in BENCH_BATCH.items()))
    p.add_argument("--method", default="full",
                   help="full | lora (r=--rank, alpha=2r, all linears) | qlora (the same on an NF4 base)")
    _owned(p, "--rank", LoRAConfig, "r", type=int, help="LoRA rank r; --method lora or qlora only")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--profile-steps", type=int, default=3, help="extra steps timed op by op (0: no breakdown)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--threads", type=int, default=None, help="BLAS threads for this run (default: as the "
                   "environment says, OPENBLAS_NUM_THREADS or all cores)")
    p.add_argument("--clock", default="wall", help="wall (default) | cpu: process CPU time, steadier on a shared "
                   "machine with OPENBLAS_NUM_THREADS=1")
    p.add_argument("--malloc", default="reuse", help="reuse (default): keep freed memory mapped between steps "
                   "(glibc mallopt, see reuse_freed_memory) | system: leave malloc as it is")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="split each step's batch across this many CPU threads, one BLAS thread each unless --threads "
                        "says otherwise (minift/fast/parallel.py); auto (default): as training does, 2 where that "
                        "applies and --threads is not given; the breakdown is of the one-thread path")
    p.add_argument("--device", default=None, help="cpu | gpu (CuPy) | auto (default: $MINIFT_DEVICE or cpu)")
    p.add_argument("--no-fused", action="store_true", help="on a GPU, run the reference lines instead of the fused "
                   "elementwise kernels (minift/fast/kernels.py), to measure what fusion buys")
    p.add_argument("--json", action="store_true", help="print one JSON line (keys: see minift/measure/bench.py)")
    p.set_defaults(func=cmd_bench)


# ---- memory ------------------------------------------------------------------------------------------------------

def cmd_memory(a):
    from dataclasses import replace
    from ..lora import LoRAConfig
    from ..measure import memory as M
    from ..methods import ADAPTER_METHODS
    if a.papers:
        _refuse_unused({f"--{k.replace('_', '-')}": getattr(a, k) not in (None, False)
                        for k in ("preset", "method", "rank", "batch", "seq", "precision", "quant", "double_quant",
                                  "claim", "n_embd", "n_layer", "n_head", "n_ctx")},
                       "--papers prints the papers' own settings, with no other option")
        print(M.format_paper_checks(M.paper_checks()))
        return
    method = a.method or "lora"
    if a.claim and a.method is not None:
        raise MiniftError("--claim compares full, lora and qlora: leave --method out")
    if a.rank is not None and method not in ADAPTER_METHODS and not a.claim:
        raise MiniftError(f"--rank is a LoRA option, but --method is {method!r}")
    if (a.quant is not None or a.double_quant) and method != "qlora" and not a.claim:
        raise MiniftError(f"--quant and --double-quant describe QLoRA's 4-bit base, but --method is {method!r}; "
                          "use --method qlora (or --claim)")
    rank = LoRAConfig(**_given(a, LoRAConfig)).r                   # --rank, or LoRAConfig's
    options = dict(_given(a, M.predict_memory), double_quant=a.double_quant)   # --precision, --quant
    names = [a.preset] if a.preset else list(M.CLAIM_MODELS) if a.claim else ["gpt2"]
    for name in names:
        cfg = M.config_named(name)
        cfg = replace(cfg, n_embd=a.n_embd or cfg.n_embd, n_layer=a.n_layer or cfg.n_layer,
                      n_head=a.n_head or cfg.n_head, n_ctx=a.n_ctx or cfg.n_ctx)
        if rank > cfg.n_embd and (a.claim or method in ADAPTER_METHODS):
            raise MiniftError(f"--rank {rank} is larger than the smallest side of the adapted matrices "
                              f"(n_embd = {cfg.n_embd}): a rank-r update needs r <= min(in, out)")
        if a.claim:
            seqs = [a.seq] if a.seq else sorted({t for _, t in M.claim_shapes(cfg)})
            batches = [a.batch] if a.batch else list(M.CLAIM_BATCHES)
            table = M.saving_table(cfg, [(b, t) for t in seqs for b in batches], rank=rank, **options)
            print(M.format_saving_table(table, title=name) + "\n")
            continue
        batch, seq = a.batch or M.DEFAULT_BATCH, a.seq or cfg.n_ctx
        # method head trains a classification head (a linear probe); the others are shown with the LM head
        head = dict(head_kind="classification", num_labels=2) if method == "head" else {}
        shown = [method] + (["lora"] if method == "qlora" else []) + (["full"] if method != "full" else [])
        ds = [M.predict_memory(cfg, m, batch, seq, rank=rank, **options, **head) for m in shown]
        quant = f" ({options.get('quant', 'nf4')}{' double-quantised' if a.double_quant else ''} base)"
        print(f"{name} ({cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads), {method}"
              f"{f' r={rank}' if method in ADAPTER_METHODS else ''}{quant if method == 'qlora' else ''}"
              f"{' (2-label classification head)' if head else ''}, batch {batch} x {seq} tokens, "
              f"{ds[0]['precision']}, AdamW:")
        print(M.format_memory(*ds, labels=shown, unit=M.unit_for(ds[-1]["total"])))
        if method != "full":
            full = ds[-1]
            print(" ".join(f"{m} needs {1 - d['total'] / full['total']:.1%} less than full fine-tuning here."
                           for m, d in zip(shown[:-1], ds)))
            share = f"{full['activations'] / full['total']:.0%} of full's total"
            if method in ADAPTER_METHODS:  # the backward runs through every block: the same activations as full's
                print(f"Activations, {share}, grow with batch x tokens and are the same for both: the saving grows "
                      "as batch x tokens shrink" + (" (try --batch 1 --seq 128)." if batch * seq > 128 else ".")
                      + " --claim shows where the article's 80% holds.")
            else:                          # the backward stops above the frozen blocks, which keep no activations
                print(f"Activations ({share}) are kept only for the blocks the backward visits, from the lowest one "
                      "that trains up: freezing the lowest blocks saves their activations too.")
        note = M.predicted_only(ds[0]["precision"])
        if note:
            print(note)


def add_memory(sub):
    from ..lora import LoRAConfig
    from ..measure import memory as M
    from ..config import PRESETS
    p = sub.add_parser("memory", help="the analytic training-memory breakdown for any size, and where LoRA's and "
                                      "QLoRA's savings reach the article's 80%%")
    p.add_argument("--preset", default=None, choices=list(PRESETS) + list(M.PAPER_MODELS),
                   help="the model (default gpt2; with --claim: " + ", ".join(M.CLAIM_MODELS) + "); gpt3-175b is "
                        "GPT-3's shape, llama-65b a GPT-2-shaped stand-in for LLaMA-65B (predictions only)")
    p.add_argument("--method", default=None, choices=METHOD_CHOICES, help=METHOD_HELP + " (default lora)")
    _owned(p, "--rank", LoRAConfig, "r", type=_positive_int, help="LoRA rank")
    _owned(p, "--precision", M.predict_memory, choices=list(M.PRECISIONS),
           help="bytes per term: float32/float64 (what minift runs), or a 16-bit convention, predicted only: "
                "bf16-mixed/fp16-mixed (16-bit weights, activations and gradients, float32 master weights and AdamW "
                "state), bf16-no-master (float32 AdamW state only), bf16-true (all 16-bit)")
    _owned(p, "--quant", M.predict_memory, choices=list(M.CODES),
           help="qlora: the 4-bit code of the frozen base (all cost 4.5 bits a weight)")
    p.add_argument("--double-quant", action="store_true",
                   help="qlora: quantise the block scales too (4.127 bits a weight)")
    p.add_argument("--batch", type=_positive_int, default=None,
                   help=f"sequences a step (default {M.DEFAULT_BATCH}; --claim: " +
                        " and ".join(map(str, M.CLAIM_BATCHES)) + ")")
    p.add_argument("--seq", type=_positive_int, default=None,
                   help="tokens per sequence (default n_ctx; --claim: n_ctx/8 and n_ctx)")
    p.add_argument("--claim", action="store_true",
                   help="full vs LoRA vs QLoRA over batch x seq, each saving marked where it reaches the article's "
                        "'~80%% less memory'")
    p.add_argument("--papers", action="store_true",
                   help="the LoRA paper's GPT-3 and the QLoRA paper's LLaMA-65B figures beside the predictions")
    p.add_argument("--n-embd", type=_positive_int, default=None, help="custom width")
    p.add_argument("--n-layer", type=_positive_int, default=None, help="custom depth")
    p.add_argument("--n-head", type=_positive_int, default=None, help="custom heads")
    p.add_argument("--n-ctx", type=_positive_int, default=None, help="custom context length (the longest --seq)")
    p.set_defaults(func=cmd_memory)


# ---- entry point -------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in minift's one-line form (argparse prints the whole usage first), and an
    unknown option blamed on the subcommand it was given to (argparse's top-level parser reports it)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.commands = {}                      # subcommand name -> its parser (build_parser fills it)

    def error(self, message):
        self.exit(2, f"minift: error: {message} (`{self.prog} --help` lists the options)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.commands.get(getattr(parsed, "command", None), self).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def build_parser():
    from ..version import __version__
    parser = _Parser(prog="minift", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"minift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_pretrain, add_finetune, add_compare, add_generate, add_inspect, add_bench, add_memory):
        add(sub)
    for command in sub.choices.values():
        _say_defaults(command)
    parser.commands = sub.choices
    return parser


def _say_defaults(parser):
    """Each option's help ends with its default -- its owner's (_owned), or argparse's -- unless the help already
    speaks of it or there is none to speak of (None: decided later, from other options; False: a flag)."""
    for action in parser._actions:
        default, text = getattr(action, "owner_default", action.default), action.help or ""
        if (not action.option_strings or default is None or default is False or default in ((), "")
                or argparse.SUPPRESS in (default, text) or "default" in text):
            continue
        shown = (",".join(default) if isinstance(default, tuple) else str(default)).replace("%", "%%")
        action.help = f"{text} (default: {shown})" if text else f"default: {shown}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler) outside train(), which handles it itself: stop as Ctrl-C would, with
    a message and exit status 143, not silently."""


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv                      # run.json records the command line a --resume should repeat
    terminate = (signal.signal(signal.SIGTERM, _raise_terminated)
                 if threading.current_thread() is threading.main_thread() else None)
    try:
        with _FloatingPointWarnings() as fp:
            status = _run(args)
        fp.report(status)
        return status
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


class _FloatingPointWarnings:
    """NumPy's floating-point warnings ("overflow encountered in multiply") come from a run that is blowing up, and
    print NumPy's own source lines. Within `with` they are counted instead; every other warning is shown at once, as
    Python would show it. report(): a run that failed has said why in its error line (the training loop stops at the
    step where the loss or a gradient stops being finite); one that finished gets one line."""

    PATTERN = re.compile(r"(overflow|invalid value|divide by zero|underflow) encountered")

    def __enter__(self):
        self.count, self.first, self._context = 0, {}, warnings.catch_warnings()    # first: kind -> message
        self._context.__enter__()
        warnings.filterwarnings("always", category=RuntimeWarning, message=self.PATTERN.pattern)   # each one counted
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            kind = self.PATTERN.match(str(message)) if issubclass(category, RuntimeWarning) else None
            if kind:
                self.count += 1
                self.first.setdefault(kind.group(1), str(message))
            else:
                shown(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def report(self, status) -> None:
        if not self.count or status != 0:
            return
        overflow = self.first.get("overflow")
        why = ("numbers beyond float32's range, so the results above may mean little; a smaller --lr usually cures it"
               if overflow else "some numbers above may be NaN")
        print(f"minift: warning: NumPy reported {self.count} floating-point problem(s) during the run (first: "
              f"{overflow or next(iter(self.first.values()))}): {why}", file=sys.stderr)


def _run(args):
    try:
        try:
            if getattr(args, "configure", None) is not None:
                args.config = args.configure(args)   # every value checked by its owner, before any folder or work
            if getattr(args, "prepare", None) is not None:
                args.prepare(args)
            args.func(args)
        finally:
            if getattr(args, "run_folder", None) is not None:
                note = args.run_folder.close()   # keeps the new run, or puts back the one --overwrite set aside
                if note:
                    print(f"minift: {note}", file=sys.stderr)
    except MiniftError as e:
        print(f"minift: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:               # `minift generate | head -1`: the reader has what it wanted; be quiet
        with contextlib.suppress(OSError, ValueError):   # as a C program killed by SIGPIPE is (status 128 + 13)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # Python's flush at exit would fail
        return 141
    except OSError as e:                  # a folder that cannot be written, a disk that is full: say which
        print(f"minift: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:      # stopped between two steps: e says what was saved and how to go on
        print(f"minift: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt as e:
        signum = signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        saved = (" (checkpoints already in --out, if any, are intact)" if getattr(args, "run_folder", None) is not None
                 else "")
        print(f"minift: stopped by {what}; nothing new was saved{saved}", file=sys.stderr)
        return 128 + int(signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
