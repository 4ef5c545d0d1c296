"""The `minift` command: pretrain | finetune | compare | generate | inspect | bench | memory.

Every subcommand is a thin layer over library functions a tutorial can call directly. Mistakes (a missing file,
an option out of range) print one line, `minift: error: ...`, and exit with status 1.
"""
from __future__ import annotations

import argparse
import sys

from .errors import MiniftError


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_device(p):
    p.add_argument("--device", default=None, choices=["cpu", "gpu", "auto"],
                   help="where to run (default: $MINIFT_DEVICE or cpu)")


# ---- pretrain ----------------------------------------------------------------------------------------------------

def cmd_pretrain(a):
    from .pretrain import pretrain
    from .train import TrainConfig
    warmup = min(100, a.steps // 10) if a.warmup is None else a.warmup
    tcfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, warmup=warmup, weight_decay=a.weight_decay,
                       eval_every=a.eval_every, save_every=a.save_every, seed=a.seed)
    _, tok, s = pretrain(a.preset, a.corpus, a.files, a.chars, tcfg, a.out, a.tokenizer, a.device, a.seed,
                         a.resume, progress=not a.quiet)
    print(f"pretrained {s['preset']} for {tcfg.steps} steps ({s['tokens_seen']:,} tokens) in "
          f"{s['train_seconds']:.0f} s: train loss {s['final_train_loss']:.3f}, validation loss {s['val_loss']:.3f}")
    print(f"model and tokenizer: {a.out}/model   summary: {a.out}/pretrain.json")


def add_pretrain(sub):
    p = sub.add_parser("pretrain", help="pretrain a GPT from scratch on the embedded corpus or your text files")
    p.add_argument("--preset", default="demo", choices=["tiny", "demo", "small", "gpt2"])
    p.add_argument("--corpus", default="world", choices=["world", "pydoc", "both"],
                   help="embedded corpus: the generated world (default), the interpreter's docs, or both")
    p.add_argument("--files", nargs="+", default=None, help="your own UTF-8 text files instead of a corpus")
    p.add_argument("--chars", type=_positive_int, default=8_000_000, help="size of the generated world corpus")
    p.add_argument("--steps", type=_positive_int, default=2000)
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: min(100, steps/10))")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: data/tokenizer.json if it fits)")
    p.add_argument("--out", default="runs/pretrain")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(p)
    p.set_defaults(func=cmd_pretrain)


# ---- generate ----------------------------------------------------------------------------------------------------

def cmd_generate(a):
    from .generate import generate
    from .pretrain import load_base
    model, tok = load_base(a.model, device=a.device)
    for i in range(a.samples):
        text = generate(model, tok, a.prompt, a.max_new_tokens, a.temperature, a.top_k, a.seed + i)
        print(a.prompt + text)
        if i + 1 < a.samples:
            print("---")


def add_generate(sub):
    p = sub.add_parser("generate", help="sample text from a model folder (default: the shipped demo base)")
    p.add_argument("--model", default=None, help="model folder (default: data/base-demo)")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=80)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--samples", type=_positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)
    p.set_defaults(func=cmd_generate)


# ---- entry point -------------------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(prog="minift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_pretrain, add_generate):
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MiniftError as e:
        print(f"minift: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minift: interrupted (a checkpoint was saved where the command keeps them; rerun with --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
