"""The `minift` command: pretrain | finetune | compare | generate | inspect | bench | memory.

Every subcommand is a thin layer over library functions a tutorial can call directly. Mistakes print one line,
`minift: error: ...`, and exit non-zero: status 2 for an option the parser refuses (a value out of range, an unknown
option: the usual status of a usage error), 1 for what is found once the command runs (a missing file, a bad task).
"""
from __future__ import annotations

import argparse
import contextlib
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


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a seed, an integer >= 0")          # NumPy's generators take integers >= 0


def _learning_rate(text):
    """A learning rate on the command line: positive and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a learning rate, a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a learning rate, a positive finite number, got {value}")
    return value


def _refuse_unused(given: dict, why: str) -> None:
    """given: option -> whether it was given. Options the command would ignore are an error, not silently dropped."""
    named = ", ".join(k for k, v in given.items() if v)
    if named:
        raise MiniftError(f"{named}: {why}")


def _add_device(p):
    p.add_argument("--device", default=None, choices=["cpu", "gpu", "auto"],
                   help="where to run (default: $MINIFT_DEVICE or cpu)")


def _add_run_options(p, out_default):
    """The options every training command shares: output folder (and what to do with an earlier run there), seed,
    progress bar, device, BLAS threads, workers."""
    p.add_argument("--out", default=out_default, help=f"output folder (default {out_default}); it must be new or "
                                                      "empty, unless --resume or --overwrite")
    p.add_argument("--resume", action="store_true",
                   help="continue the run stopped in --out (Ctrl-C or SIGTERM saves a checkpoint after the step "
                        "under way), with the same settings; --steps may grow")
    p.add_argument("--overwrite", action="store_true", help="delete the earlier run in --out first")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="numpy's BLAS threads (default: the environment's, e.g. OPENBLAS_NUM_THREADS); use 1 when "
                        "the cores are busy with other work: OpenBLAS's threads then wait for each other at every "
                        "matmul (measured 3-15x slower with 2 threads on a loaded 2-core machine)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="split each batch across this many CPU threads, each with one BLAS thread (data "
                        "parallelism, minift/fast/parallel.py): on 2+ cores faster than BLAS threads alone, since NumPy's "
                        "elementwise ops run on one core; needs dropout 0")
    _add_device(p)
    p.set_defaults(prepare=_prepare_training)


def _prepare_training(a):
    """Before a training command: the BLAS thread count asked for, and freed memory kept for the next step.

    reuse_freed_memory (minift/measure/bench.py) stops glibc handing each step's large activations back to the OS only to
    fault them in again on the next step (16-25% of a demo step's time went to those page faults).
    """
    from ..measure.bench import reuse_freed_memory, set_blas_threads
    from .outdir import RunFolder
    inputs = {f"--{name}": getattr(a, name) for name in ("base", "task", "tokenizer", "files") if hasattr(a, name)}
    a.run_folder = RunFolder(a.out, a.command, a.resume, a.overwrite, inputs, argv=a.argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if a.threads is not None and cores and a.threads * a.workers > cores:
        raise MiniftError(f"--threads {a.threads} x --workers {a.workers} = {a.threads * a.workers} BLAS threads on "
                          f"{cores} cores: they would wait for each other at every matmul (slower, not faster); give "
                          f"at most {cores} in all")
    a.run_folder.open()                   # before any work: --out checked, an earlier run set aside by --overwrite
    if a.threads is not None:
        set_blas_threads(a.threads)
    elif a.workers > 1:
        set_blas_threads(1)          # the cores go to the workers: one BLAS thread each
    reuse_freed_memory()


# ---- pretrain ----------------------------------------------------------------------------------------------------

def cmd_pretrain(a):
    from pathlib import Path

    from ..training.pretrain import pretrain
    from ..training.train import TrainConfig, resumed_warmup
    if a.files and a.corpus:
        raise MiniftError(f"--files replaces the embedded corpus: drop --corpus {a.corpus}, or --files")
    if a.chars is not None and (a.files or a.corpus == "pydoc"):
        reader = "--files" if a.files else "--corpus pydoc"
        raise MiniftError(f"--chars sizes the generated world corpus, which {reader} does not read: drop --chars")
    a.corpus, a.chars = a.corpus or "world", a.chars or 8_000_000
    if a.warmup is not None and a.warmup > a.steps:      # before the corpus is built (train() checks it too)
        raise MiniftError(f"--warmup {a.warmup} is longer than the run, --steps {a.steps}: give a smaller --warmup")
    warmup = (resumed_warmup(Path(a.out) / "checkpoints", a.resume, min(100, a.steps // 10)) if a.warmup is None
              else a.warmup)                    # derived from --steps once, when the run starts
    tcfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, warmup=warmup, weight_decay=a.weight_decay,
                       eval_every=a.eval_every, save_every=a.save_every, seed=a.seed, workers=a.workers)
    _, tok, s = pretrain(a.preset, a.corpus, a.files, a.chars, tcfg, a.out, a.tokenizer, a.device, a.seed,
                         a.resume, progress=not a.quiet)
    print(f"pretrained {s['preset']} for {tcfg.steps} steps ({s['tokens_seen']:,} tokens) in "
          f"{s['train_seconds']:.0f} s: train loss {s['final_train_loss']:.3f}, validation loss {s['val_loss']:.3f}")
    print(f"model and tokenizer: {a.out}/model   summary: {a.out}/pretrain.json")


def add_pretrain(sub):
    p = sub.add_parser("pretrain", help="pretrain a GPT from scratch on the embedded corpus or your text files")
    p.add_argument("--preset", default="demo", choices=["tiny", "demo", "small", "gpt2"])
    p.add_argument("--corpus", default=None, choices=["world", "pydoc", "both"],
                   help="embedded corpus: the generated world (default), the interpreter's docs, or both")
    p.add_argument("--files", nargs="+", default=None, help="your own UTF-8 text files instead of a corpus")
    p.add_argument("--chars", type=_positive_int, default=None,
                   help="size of the generated world corpus in characters (default 8000000)")
    p.add_argument("--steps", type=_positive_int, default=2000)
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--lr", type=_learning_rate, default=3e-3)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: min(100, steps/10))")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: data/tokenizer.json if it fits)")
    _add_run_options(p, "runs/pretrain")
    p.set_defaults(func=cmd_pretrain)


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
        if model.head == "classification":
            raise MiniftError(f"the adapter {a.adapter} was trained for classification (labels {model.labels}): it "
                              "carries a classification head, and generation needs the language-model head")
    for i in range(a.samples):
        text = generate(model, tok, a.prompt, a.max_new_tokens, a.temperature, a.top_k, a.seed + i)
        print(a.prompt + text)
        if i + 1 < a.samples:
            print("---")


def add_generate(sub):
    p = sub.add_parser("generate", help="sample text from a model folder (default: the shipped demo base)")
    p.add_argument("--model", default=None, help="model folder (default: data/base-demo)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter folder (finetune's --out/adapter), applied to --model, the base it was "
                        "trained on")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=80)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_positive_int, default=None,
                   help="sample only among the k likeliest tokens (default: all)")
    p.add_argument("--samples", type=_positive_int, default=1)
    p.add_argument("--seed", type=_seed, default=0)
    _add_device(p)
    p.set_defaults(func=cmd_generate)


# ---- finetune ----------------------------------------------------------------------------------------------------

METHOD_HELP = ("what trains: every weight (full); all but the embeddings and the first blocks (freeze); only a "
               "classification head (head); low-rank adapters and the head (lora)")


def _lora_from_args(a):
    from ..lora import LoRAConfig
    targets = "all-linear" if a.targets == "all-linear" else tuple(t.strip() for t in a.targets.split(","))
    return LoRAConfig(r=a.rank, alpha=a.alpha if a.alpha is not None else 2 * a.rank, targets=targets,
                      rslora=a.rslora, use_dora=a.dora, init=a.init, dropout=a.lora_dropout)


# finetune's options that decide what a run starts from (the checkpoint's start fingerprint, finetune._start)
START_OPTIONS = ("method", "head", "rank", "alpha", "targets", "rslora", "dora", "init", "lora_dropout")


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


def cmd_finetune(a):
    from ..base import load_base, shipped_base_dir
    from ..training.finetune import FinetuneConfig, finetune
    changed = _started_with(a, START_OPTIONS) if a.resume else {}      # read before the defaults are filled in
    if a.method != "lora":
        _refuse_unused({"--rank": a.rank is not None, "--alpha": a.alpha is not None,
                        "--targets": a.targets is not None, "--rslora": a.rslora, "--dora": a.dora,
                        "--init": a.init is not None, "--lora-dropout": a.lora_dropout is not None,
                        "--merge": a.merge}, f"LoRA options, but --method is {a.method!r}")
    if a.freeze_blocks is not None and a.method != "freeze":
        raise MiniftError(f"--freeze-blocks needs --method freeze (got {a.method!r})")
    if a.targets is not None and not a.targets.strip(" ,"):
        raise MiniftError("--targets is empty: name the linears to adapt (c_attn,attn.c_proj,c_fc,mlp.c_proj), or "
                          "all-linear, or leave the option out")
    a.rank, a.targets, a.init = a.rank or 8, a.targets or "all-linear", a.init or "default"
    a.lora_dropout = a.lora_dropout or 0.0
    base, tok = load_base(a.base, device=a.device)
    fcfg = FinetuneConfig(method=a.method, task=a.task, steps=a.steps, batch_size=a.batch, lr=a.lr,
                          head_lr=a.head_lr, train_size=a.train_size, freeze_blocks=a.freeze_blocks,
                          eval_every=a.eval_every, save_every=a.save_every, seed=a.seed, workers=a.workers,
                          lora=_lora_from_args(a) if a.method == "lora" else None, merge=a.merge, head=a.head)
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
    if s["head"] == "kept":
        print(f"the base's trained classification head (labels {', '.join(base.labels)}) was kept and trained "
              "further (--head new for a fresh one)")
    elif s["head"] == "new" and base.head == "classification":
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


def add_finetune(sub):
    p = sub.add_parser("finetune", help="fine-tune the base model on a task with one method")
    p.add_argument("--method", default="lora", choices=["full", "freeze", "head", "lora"], help=METHOD_HELP)
    p.add_argument("--task", default="sentiment", help="sentiment | facts | a task folder | a JSONL/CSV file")
    p.add_argument("--base", default=None, help="model folder (default: the shipped data/base-demo)")
    p.add_argument("--steps", type=_positive_int, default=600)
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--lr", type=_learning_rate, default=None, help="default depends on the method")
    p.add_argument("--head-lr", type=_learning_rate, default=None,
                   help="the classification head's learning rate (default: depends on the method)")
    p.add_argument("--train-size", type=_positive_int, default=None,
                   help="train on only this many examples, labels kept balanced (default: all)")
    p.add_argument("--freeze-blocks", type=int, default=None,
                   help="method freeze: how many of the first blocks to freeze, besides the embeddings (default: "
                        "half of them)")
    p.add_argument("--rank", type=_positive_int, default=None, help="LoRA rank r (default 8)")
    p.add_argument("--alpha", type=float, default=None,
                   help="LoRA alpha; the update is scaled by s = alpha / r (default 2r, so s = 2; PEFT's own default "
                        "is 8)")
    p.add_argument("--targets", default=None,
                   help="LoRA targets: all-linear (default) or a comma list of c_attn,attn.c_proj,c_fc,mlp.c_proj")
    p.add_argument("--rslora", action="store_true", help="scale alpha/sqrt(r) (rank-stabilised LoRA)")
    p.add_argument("--dora", action="store_true", help="DoRA: learned magnitude and normalised direction")
    p.add_argument("--init", default=None, choices=["default", "gaussian", "pissa"],
                   help="LoRA initialisation (default: A random, B = 0)")
    p.add_argument("--lora-dropout", type=float, default=None, help="dropout on the adapters' input (default 0)")
    p.add_argument("--merge", action="store_true",
                   help="LoRA: also save the merged model (the adapters folded into the weights, W + s·BA; DoRA's "
                        "m·V/‖V‖) in --out/model, to deploy as one folder or to fine-tune on with --base (default: "
                        "the adapter only)")
    p.add_argument("--head", default="auto", choices=["auto", "keep", "new"],
                   help="a base that ends in a classification head over the task's labels: train on from it (auto, "
                        "keep: keep refuses any other base) or start a fresh head (new)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=0,
                   help="checkpoint every N steps into --out/checkpoints (default 0: at the end, and when stopped)")
    _add_run_options(p, "runs/finetune")
    p.set_defaults(func=cmd_finetune)


# ---- compare -----------------------------------------------------------------------------------------------------

def _int_list(text, lo=1):
    if "" in (items := [v.strip() for v in text.split(",")]) and text.strip():
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}: give integers separated by single commas")
    try:
        values = tuple(int(v) for v in items if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < lo for v in values):
        raise argparse.ArgumentTypeError(f"expected integers ≥ {lo}, got {text!r}")
    return values


def _seed_list(text):
    return _int_list(text, lo=0)


def cmd_compare(a):
    from .compare import CompareConfig, compare
    from .report import main_table, memory_table, seeds_table
    if a.preset not in (None, "demo") and a.base is None:
        raise MiniftError(f"only the demo base is shipped; for --preset {a.preset}, pretrain one (minift pretrain "
                          f"--preset {a.preset} --out runs/base-{a.preset}) and pass --base runs/base-{a.preset}/model")
    if a.methods is None:             # head-only needs a classification task; a generation task compares the other two
        from ..data import load_task
        a.methods = "full,lora,head" if load_task(a.task, "train").type == "classification" else "full,lora"
    methods = tuple(m.strip() for m in a.methods.split(","))
    kw = dict(task=a.task, methods=methods, ranks=a.ranks or (), rslora=a.rslora, dora=a.dora,
              base=a.base, preset=a.preset, device=a.device, seed=a.seed, workers=a.workers)
    for name in ("steps", "train_size", "batch", "alpha"):
        if getattr(a, name) is not None:
            kw["batch_size" if name == "batch" else name] = getattr(a, name)
    if a.lora_lr is not None:
        kw["lr"] = {"lora": a.lora_lr}
    if a.lora_head_lr is not None:
        kw["head_lr"] = {"lora": a.lora_head_lr}
    if a.seeds:
        kw["seeds"] = a.seeds
    if "lora" not in kw["methods"] and not kw["ranks"]:
        _refuse_unused({"--alpha": a.alpha is not None, "--rslora": a.rslora, "--dora": a.dora,
                        "--lora-lr": a.lora_lr is not None, "--lora-head-lr": a.lora_head_lr is not None},
                       f"LoRA options, but --methods {a.methods} runs no LoRA (add lora, or --ranks)")
    ccfg = CompareConfig.quick_config(**kw) if a.quick else CompareConfig(**kw)
    results = compare(ccfg, out=a.out, progress=not a.quiet, resume=a.resume)
    print(main_table(results))
    print()
    print("Peak training memory, MiB (measured; predicted in the last column):")
    print(memory_table(results))
    if results.get("seeds"):
        print(f"\nOver seeds {', '.join(map(str, results['seeds']['seeds']))} (every run repeated):")
        print(seeds_table(results))
    print(f"\nreport: {a.out}/report.md   numbers: {a.out}/results.json   ({results['seconds']:.0f} s)")


def add_compare(sub):
    p = sub.add_parser("compare", help="full fine-tuning vs LoRA vs head-only, measured (the article's question)")
    p.add_argument("--task", default="sentiment", help="sentiment | facts | a task folder | a JSONL/CSV file")
    p.add_argument("--methods", default=None,
                   help="comma list of full,freeze,head,lora (default full,lora,head; full,lora for a generation task)")
    p.add_argument("--ranks", type=_int_list, default=None, help="LoRA rank sweep, e.g. 1,2,4,8,16,64")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha for the main rank (default 16 = 2r)")
    p.add_argument("--seeds", type=_seed_list, default=None,
                   help="extra seeds, e.g. 1,2: every run repeated, accuracy / forgetting / intruders over seeds")
    p.add_argument("--lora-lr", type=_learning_rate, default=None,
                   help="the LoRA runs' adapter learning rate (default 2e-3)")
    p.add_argument("--lora-head-lr", type=_learning_rate, default=None,
                   help="the LoRA runs' classification-head learning rate (default 3e-4)")
    p.add_argument("--rslora", action="store_true", help="the LoRA runs scale by alpha/sqrt(r) (rank-stabilised)")
    p.add_argument("--dora", action="store_true", help="the LoRA runs are DoRA (learned magnitude, normalised "
                                                       "direction)")
    p.add_argument("--train-size", type=_positive_int, default=None,
                   help="train every run on only this many examples (the small-data question; default: all, 64 "
                        "with --quick)")
    p.add_argument("--steps", type=_positive_int, default=None, help="default 600 (8 with --quick)")
    p.add_argument("--batch", type=_positive_int, default=None, help="batch size of every run (default 16, 8 with "
                                                                      "--quick)")
    p.add_argument("--base", default=None, help="model folder (default: the shipped data/base-demo)")
    p.add_argument("--preset", default=None, choices=["tiny", "demo", "small", "gpt2"],
                   help="model size: demo is shipped; for another, pretrain a base and pass --base")
    p.add_argument("--quick", action="store_true", help="a tiny budget: seconds, for tests and CI")
    _add_run_options(p, "compare-report")
    p.set_defaults(func=cmd_compare)


# ---- inspect -----------------------------------------------------------------------------------------------------

def _inspect_setup(a):
    """(model, lora, batch): the base with the task's head and LoRA attached, trained a.steps steps, and the next
    batch of the task's training data."""
    from ..base import load_base
    from ..data import load_task
    from ..data.sources import task_source
    from ..lora import LoRAConfig, attach_lora
    from ..methods import check_base_fits_task, task_head
    from ..training.finetune import FinetuneConfig
    from ..training.train import TrainConfig, train
    model, tok = load_base(a.base, dtype=a.dtype, device=a.device)
    split = load_task(a.task, "train")
    check_base_fits_task(model, a.task, split)
    task_head(model, split, seed=a.seed)                                  # as finetune does
    targets = "all-linear" if a.targets == "all-linear" else tuple(t.strip() for t in a.targets.split(","))
    lora = attach_lora(model, LoRAConfig(r=a.rank, alpha=a.alpha if a.alpha is not None else 2 * a.rank,
                                         targets=targets), seed=a.seed)
    if a.module is not None and a.module not in lora.modules:            # before the training steps, not after
        raise MiniftError(f"--module {a.module!r} is not one of the adapted matrices of this {model.cfg.n_layer}-"
                          f"block model: {', '.join(lora.modules[:4])}, ... (see --targets)")
    max_len = min(FinetuneConfig.max_len, model.cfg.n_ctx)
    source = task_source(split, tok, max_len=max_len, batch_size=a.batch, seed=a.seed)
    if a.steps:
        train(model, source, TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.train_lr, warmup=0,
                                         schedule="constant", seed=a.seed),
              progress=not a.quiet, desc=f"LoRA warm-up ({a.steps} steps)")
    return model, lora, source.next_batch()


def cmd_inspect(a):
    import json

    from ..measure.lens import DEFAULT_TRAIN_LR, format_lens, format_module, lens, module_spectra
    if a.train_lr is not None and a.steps == 0:
        raise MiniftError("--train-lr is the learning rate of the --steps training steps, and --steps is 0")
    a.train_lr = a.train_lr or DEFAULT_TRAIN_LR
    model, lora, batch = _inspect_setup(a)
    report = lens(model, lora, batch, lr=a.lr)
    trained = (f"after {a.steps} LoRA training steps (AdamW, lr {a.train_lr:g}, so B ≠ 0)" if a.steps
               else "at init (--steps 0: B = 0)")
    if a.json:
        out = {"task": a.task, "steps": a.steps, **report.to_dict()}
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
    from ..measure.lens import DEFAULT_LR, DEFAULT_STEPS, DEFAULT_TRAIN_LR
    p = sub.add_parser("inspect", help="one batch, full fine-tuning's gradient vs LoRA's, matrix by matrix (§4.1)")
    p.add_argument("--base", default=None, help="model folder (default: the shipped data/base-demo)")
    p.add_argument("--task", default="sentiment", help="sentiment | facts | a task folder | a JSONL/CSV file")
    p.add_argument("--rank", type=_positive_int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2r)")
    p.add_argument("--targets", default="all-linear",
                   help="LoRA targets: all-linear or a comma list of c_attn,attn.c_proj,c_fc,mlp.c_proj")
    p.add_argument("--steps", type=_int_at_least(0, "a number of steps >= 0"), default=DEFAULT_STEPS,
                   help=f"train LoRA this many steps first, so B ≠ 0 (default {DEFAULT_STEPS}; 0 = look at init)")
    p.add_argument("--train-lr", type=_learning_rate, default=None,
                   help=f"AdamW learning rate of those steps (default {DEFAULT_TRAIN_LR:g})")
    p.add_argument("--lr", type=_learning_rate, default=DEFAULT_LR, help=f"η of the SGD step the lens shows "
                                                                f"(default {DEFAULT_LR:g})")
    p.add_argument("--batch", type=_positive_int, default=8)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
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
    if a.rank is not None and a.method != "lora":
        raise MiniftError(f"--rank {a.rank} is a LoRA option, but --method is {a.method!r}")
    r = run_bench(a.preset, a.method, rank=8 if a.rank is None else a.rank, steps=a.steps, warmup=a.warmup,
                  device=a.device, seed=a.seed, profile_steps=a.profile_steps, clock=a.clock, malloc=a.malloc,
                  threads=a.threads, workers=a.workers, fused=False if a.no_fused else None)
    print(json.dumps(r) if a.json else format_report(r))


def add_bench(sub):
    from ..config import BENCH_BATCH
    p = sub.add_parser("bench", help="time a training step (forward + backward + AdamW): ms, tokens/s, MFU, per op")
    p.add_argument("--preset", default="demo",
                   help="tiny | demo | small | gpt2; the batch is the preset's bench batch, rows of n_ctx tokens: "
                        + ", ".join(f"{name} {rows}" for name, rows in BENCH_BATCH.items()))
    p.add_argument("--method", default="full", help="full | lora (r=--rank, alpha=2r, all linears)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank r (default 8); --method lora only")
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
    p.add_argument("--workers", type=int, default=1, help="split each step's batch across this many CPU threads, "
                   "one BLAS thread each unless --threads says otherwise (minift/fast/parallel.py); the breakdown is "
                   "of the one-thread path")
    p.add_argument("--device", default=None, help="cpu | gpu (CuPy) | auto (default: $MINIFT_DEVICE or cpu)")
    p.add_argument("--no-fused", action="store_true", help="on a GPU, run the reference lines instead of the fused "
                   "elementwise kernels (minift/fast/kernels.py), to measure what fusion buys")
    p.add_argument("--json", action="store_true", help="print one JSON line (keys: see minift/measure/bench.py)")
    p.set_defaults(func=cmd_bench)


# ---- memory ------------------------------------------------------------------------------------------------------

def cmd_memory(a):
    from ..config import GPTConfig
    from ..measure.memory import format_memory, predict_memory
    cfg = GPTConfig.preset(a.preset)
    if a.n_embd or a.n_layer or a.n_head or a.n_ctx:
        from dataclasses import replace
        cfg = replace(cfg, n_embd=a.n_embd or cfg.n_embd, n_layer=a.n_layer or cfg.n_layer,
                      n_head=a.n_head or cfg.n_head, n_ctx=a.n_ctx or cfg.n_ctx)
    if a.rank is not None and a.method != "lora":
        raise MiniftError(f"--rank is a LoRA option, but --method is {a.method!r}")
    a.rank = a.rank or 8
    if a.method == "lora" and a.rank > cfg.n_embd:
        raise MiniftError(f"--rank {a.rank} is larger than the smallest side of the adapted matrices "
                          f"(n_embd = {cfg.n_embd}): a rank-r update needs r <= min(in, out)")
    seq = a.seq or cfg.n_ctx
    # method head trains a classification head (a linear probe); the others are shown with the LM head
    head = dict(head="classification", num_labels=2) if a.method == "head" else {}
    d = predict_memory(cfg, a.method, a.batch, seq, rank=a.rank, **head)
    print(f"{a.preset} ({cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads), {a.method}"
          f"{f' r={a.rank}' if a.method == 'lora' else ''}{' (2-label classification head)' if head else ''}, "
          f"batch {a.batch} x {seq} tokens, float32, AdamW:")
    if a.method != "full":
        full = predict_memory(cfg, "full", a.batch, seq, **head)
        print(format_memory(d, full, labels=(a.method, "full")))
        saving = f"{a.method} needs {1 - d['total'] / full['total']:.0%} less than full fine-tuning here. "
        share = f"{full['activations'] / full['total']:.0%} of full's total"
        if a.method == "lora":     # its backward runs through every block: the same activations as full's
            print(saving + f"Activations, {share}, grow with batch x tokens and are the same for both: the saving "
                  "grows as batch x tokens shrink" + (" (try --batch 1 --seq 128)." if a.batch * seq > 128 else "."))
        else:                      # the backward stops above the frozen blocks, which keep no activations
            print(saving + f"Activations ({share}) are kept only for the blocks the backward visits, from the "
                  "lowest one that trains up: freezing the lowest blocks saves their activations too.")
    else:
        print(format_memory(d))


def add_memory(sub):
    p = sub.add_parser("memory", help="the analytic training-memory breakdown for any size")
    p.add_argument("--preset", default="gpt2", choices=["tiny", "demo", "small", "gpt2"])
    p.add_argument("--method", default="lora", choices=["full", "freeze", "head", "lora"], help=METHOD_HELP)
    p.add_argument("--rank", type=_positive_int, default=None, help="LoRA rank (default 8)")
    p.add_argument("--batch", type=_positive_int, default=8)
    p.add_argument("--seq", type=_positive_int, default=None, help="tokens per sequence (default n_ctx)")
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
    """Each option's help ends with its default, unless the help already speaks of it or there is none to speak of
    (None: decided later, from other options; False: a flag)."""
    for action in parser._actions:
        default, text = action.default, action.help or ""
        if (not action.option_strings or default is None or default is False or argparse.SUPPRESS in (default, text)
                or "default" in text):
            continue
        action.help = f"{text} (default: %(default)s)" if text else "default: %(default)s"


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
