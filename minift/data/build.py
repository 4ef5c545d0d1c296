"""Regenerating everything shipped in data/: the tokenizer and the task files. `python -m minift.data` runs this.

    data/tokenizer.json           byte-level BPE, 2048 tokens (the demo preset's vocabulary), trained on
                                  world_corpus(3,000,000 characters, seed 0) + pydoc_corpus()
    data/tasks/<task>/*.jsonl     train / validation / test records (tasks.py)
    data/tasks/<task>/task.json   type, labels, sizes, generator and seeds, what is held out
    data/README.md                what these files are and how they were made
    data/manifest.json            size and sha256 of each file, and the versions that produced the tokenizer

Every file is a pure function of minift's code, except the tokenizer, which also depends on the Python version
(pydoc_corpus reads the interpreter's own docs) and on the `tokenizers` version (its JSON layout). The manifest
records both, so a test can tell "changed" from "made elsewhere".
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from ..formats.io import atomic_write_text
from .pydoc_corpus import pydoc_corpus
from .tasks import SIZES, TASK_NAMES, write_tasks
from .world import WORLD_SEED, world_corpus

TOKENIZER_VOCAB = 2048                       # GPTConfig.preset("demo").vocab_size
TOKENIZER_WORLD_CHARS = 3_000_000

README = """\
# data/ — generated, do not edit

Everything here is written by minift's own code, deterministically; nothing is downloaded. Regenerate with

    python -m minift.data            # or: python -m minift.data --out some/other/folder

- `tokenizer.json`: byte-level BPE with {vocab} tokens (`<|endoftext|>` = 0, `<|pad|>` = 1, then the 256 bytes,
  then merges), trained on {chars:,} characters of the world corpus (`minift.data.world_corpus`, world seed
  {world_seed}) plus the Python interpreter's own documentation (`minift.data.pydoc_corpus`).
- `tasks/sentiment/`: compositional review classification (negative/positive); test uses held-out templates and
  adjective pairings. Records: text, label, kind, template.
- `tasks/facts/`: questions about the world's people, prompt -> completion; the splits ask about different people.
  Records: prompt, completion, relation, person.
- `manifest.json`: size and sha256 of each file; the Python and `tokenizers` versions the tokenizer was made with.
- `base-demo/`: the pretrained `demo` model (a Hugging Face GPT-2 folder + its tokenizer and `pretrain.json`). It is
  not made by this command but by `minift pretrain --preset demo --chars 16000000 --steps 2000 --out runs/base-demo`
  (about 13 minutes on 2 CPU cores), then copying `runs/base-demo/model/*` and `pretrain.json` here.

Splits: {sizes}. The world corpus used for pretraining is not stored: `world_corpus(n_chars=...)` makes it in about
a third of a second per million characters.
"""


def tokenizer_corpus() -> list[str]:
    """The texts data/tokenizer.json is trained on: simple world English plus the interpreter's real English."""
    return world_corpus(n_chars=TOKENIZER_WORLD_CHARS, seed=0, world_seed=WORLD_SEED) + pydoc_corpus()


def build_tokenizer(vocab_size: int = TOKENIZER_VOCAB):
    from ..formats.tokenizer import Tokenizer
    return Tokenizer.train(tokenizer_corpus(), vocab_size=vocab_size)


def versions() -> dict[str, str]:
    import tokenizers
    return {"python": platform.python_version(), "tokenizers": tokenizers.__version__}


def _manifest(out: Path, files: list[Path], made_with: dict) -> str:
    entries = {p.relative_to(out).as_posix(): {"bytes": p.stat().st_size,
                                              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
               for p in sorted(files)}
    return json.dumps({"made_with": made_with, "files": entries}, indent=2) + "\n"


def regenerate(out_dir="data", tokenizer: bool = True, verbose: bool = True) -> list[Path]:
    """Write every shipped file under out_dir and return their paths. tokenizer=False skips the tokenizer (and
    leaves any existing tokenizer.json alone)."""
    out = Path(out_dir)
    say = print if verbose else (lambda *a, **k: None)
    made_with = _warn_if_made_elsewhere(out, say)
    t0 = time.perf_counter()
    written = write_tasks(out / "tasks")
    say(f"tasks {', '.join(TASK_NAMES)}: {time.perf_counter() - t0:.1f}s")
    if tokenizer:
        t1 = time.perf_counter()
        tok = build_tokenizer()
        written.append(tok.save(out / "tokenizer.json"))
        made_with = versions()
        say(f"tokenizer: vocab {tok.vocab_size}, {time.perf_counter() - t1:.1f}s")
    sizes = ", ".join(f"{k} {v}" for k, v in SIZES.items())
    written.append(atomic_write_text(out / "README.md", README.format(
        vocab=TOKENIZER_VOCAB, chars=TOKENIZER_WORLD_CHARS, world_seed=WORLD_SEED, sizes=sizes)))
    if (out / "tokenizer.json").is_file() and (out / "tokenizer.json") not in written:
        written.append(out / "tokenizer.json")
    written.append(atomic_write_text(out / "manifest.json", _manifest(out, written, made_with or {})))
    for p in written:
        say(f"  wrote {p}  ({p.stat().st_size:,} bytes)")
    say(f"done in {time.perf_counter() - t0:.1f}s")
    return written


def _warn_if_made_elsewhere(out: Path, say) -> dict | None:
    """The versions the existing tokenizer was made with (from the manifest), saying so if they are not ours."""
    try:
        made = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["made_with"]
    except (OSError, ValueError, KeyError):
        return None
    if made and made != versions():
        say(f"note: {out}/tokenizer.json was made with {made}; this is {versions()}, so the new tokenizer may "
            "differ (models trained with the old one need the old one)")
    return made
