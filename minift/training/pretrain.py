"""Pretraining a small GPT from scratch on the embedded corpora (article §1.2: the model fine-tuning starts from).

    texts  = corpus_texts("world", n_chars=...)          generated English about a small world (minift.data.world)
    tok    = the shipped tokenizer, or one trained here  byte-level BPE, vocab <= the preset's
    stream = <|endoftext|>-joined token ids              97% for training, the last 3% (at least 8 windows) held
                                                         out; val_loss scores its first 16 windows of n_ctx tokens
    train(model, LMSource(stream, n_ctx), ...)           next-token cross-entropy, AdamW, cosine schedule
    save:  out/model/ (config.json, model.safetensors, tokenizer.json), out/pretrain.json (what was done)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..backend import resolve_device
from ..base import base_pretraining
from ..config import GPTConfig
from ..data import concat_documents, data_dir, load_text_files, pydoc_corpus, world_corpus
from ..data.sources import LMSource
from ..errors import MiniftError
from ..formats.io import drop_summary, save_json
from ..formats.tokenizer import Tokenizer
from ..measure.memory import available_host_bytes, check_fits
from ..model import GPT
from ..optim import check_lr
from .evaluate import lm_loss
from .train import TrainConfig, resumed_warmup, train

CORPORA = ("world", "pydoc", "both")
HELDOUT_SEED = 12345          # the world-document stream used for held-out text (forgetting, validation)
DEFAULT_CHARS = 8_000_000     # size of the generated world corpus


@dataclass
class PretrainConfig:
    """The training settings of a pretraining run. The defaults are `minift pretrain`'s (the CLI reads them from
    here), so PretrainConfig() is the run that command makes with no options. Every value is checked here, when the
    config is made: the rate finite too, the rest by the TrainConfig it becomes (train_config)."""
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int | None = None        # None: derived from steps (derived_warmup), and kept by a resumed run
    weight_decay: float = 0.1
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0
    workers: int | str = "auto"      # >1: each batch split across CPU threads (fast/parallel.py);
                                     # "auto": where it is the fastest measured (dispatch.workers_for)

    def __post_init__(self):
        check_lr(self.lr, "lr", " (--lr)")     # finite too (TrainConfig alone lets ∞ through: tutorial 06)
        self.train_config()                    # raises now, before any corpus is built
        if self.warmup is not None and self.warmup > self.steps:
            raise MiniftError(f"warmup={self.warmup} (--warmup) is longer than the run, steps={self.steps} (--steps): "
                              "give a smaller warmup")

    @property
    def derived_warmup(self) -> int:
        """The warmup a run starts with when none is given: a tenth of the run, at most 100 steps."""
        return min(100, self.steps // 10)

    def train_config(self, checkpoints=None, resume: bool = False) -> TrainConfig:
        """The training loop's settings for this run. A warmup derived from steps is fixed when the run starts: resumed
        from a checkpoint in `checkpoints`, the run keeps the one it started with (resumed_warmup), so that a larger
        steps extends the run instead of changing its start. A warmup given is used as it is."""
        warmup = self.warmup if self.warmup is not None else resumed_warmup(checkpoints, resume, self.derived_warmup)
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=warmup,
                           weight_decay=self.weight_decay, eval_every=self.eval_every, save_every=self.save_every,
                           seed=self.seed, workers=self.workers)


def corpus_texts(corpus: str = "world", n_chars: int = DEFAULT_CHARS, files=None, seed: int = 0) -> list:
    """The pretraining texts: user files if given, else the world corpus, the pydoc corpus, or both."""
    if files:
        return load_text_files(files)
    if corpus not in CORPORA:
        raise MiniftError(f"corpus {corpus!r} is not one of {CORPORA} (or pass text files)")
    texts = []
    if corpus in ("world", "both"):
        if seed == HELDOUT_SEED:             # the seed picks the document stream as well as the initial weights
            raise MiniftError(f"seed {seed} draws the held-out world text that forgetting and validation are "
                              "measured on; pretraining on it would measure nothing: choose another --seed")
        texts += world_corpus(n_chars=n_chars, seed=seed)
    if corpus in ("pydoc", "both"):
        texts += pydoc_corpus()
    return texts


def heldout_world_ids(tokenizer, n_chars=200_000) -> np.ndarray:
    """Held-out world text (a document stream pretraining never saw), as one token stream."""
    return concat_documents(tokenizer.encode_batch(world_corpus(n_chars=n_chars, seed=HELDOUT_SEED)),
                            tokenizer.eot_id)


CORPUS_BYTES_PER_CHAR = 64   # peak memory of building and tokenising a corpus, per character (measured: ~50 for
#                              the world corpus, the texts and then their token lists as Python ints; rounded up)


def check_corpus_fits(n_chars: int, files=None) -> None:
    """Refuse a corpus (--chars of the world corpus, or --files) whose building would not fit this machine's memory,
    before anything is built: the process would otherwise grow for minutes and then be killed without a word."""
    size = n_chars + sum(Path(f).stat().st_size for f in files or () if Path(f).is_file())
    need, have = size * CORPUS_BYTES_PER_CHAR, available_host_bytes()
    if have is not None and need > have:
        what = "--files" if files else f"--chars {n_chars:,}"
        raise MiniftError(f"{what}: building and tokenising {size:,} characters of text needs about "
                          f"{need / 2**30:,.0f} GiB, but only {have / 2**30:.1f} GiB is available: at most about "
                          f"{have // CORPUS_BYTES_PER_CHAR:,} characters fit")


def split_stream(stream, n_ctx: int):
    """(train ids, validation ids) of a pretraining stream: the last 3% (at least 8 windows and one token) held
    out."""
    n_val = max(n_ctx * 8 + 1, int(0.03 * stream.size))
    if stream.size < n_val + n_ctx + 1:
        raise MiniftError(f"the corpus has only {stream.size} tokens: too little to train a context of "
                          f"{n_ctx} and hold out a validation part; give more text (a larger --chars, or more --files)")
    return stream[:-n_val], stream[-n_val:]


def heldout_for_base(base_dir, tokenizer, n_chars=200_000) -> tuple[np.ndarray, str]:
    """(token stream, what it is): text like the base's pretraining text that the base never trained on, for
    measuring forgetting. A base pretrained on the world corpus (or world + pydoc) gets held-out world documents
    (another seed of the generator); one pretrained on its own files or on pydoc alone gets the validation part its
    pretraining held out of that very stream; a base without a pretrain.json gets held-out world text, said so."""
    info = base_pretraining(base_dir)
    corpus = info.get("corpus", "world") if info else None
    if corpus in (None, "world", "both"):
        what = ("held-out world text (documents from another seed of the corpus pretraining read)" if info else
                "held-out world text (this base has no pretrain.json, so what it read is unknown)")
        return heldout_world_ids(tokenizer, n_chars), what
    files = corpus if isinstance(corpus, list) else None
    if files and any(not Path(f).is_absolute() and not Path(f).exists() for f in files):
        # a pretrain.json written before paths were recorded whole: from here they point nowhere
        return heldout_world_ids(tokenizer, n_chars), ("held-out world text (the base's own pretraining files are "
                                                       "recorded as relative paths that do not resolve from here)")
    seed = info.get("train_config", {}).get("seed", 0)
    try:
        texts = corpus_texts(files=files) if files else corpus_texts(corpus, info.get("n_chars") or 0, seed=seed)
    except MiniftError as e:
        raise MiniftError(f"forgetting is measured on the part of the base's pretraining text that pretraining held "
                          f"out, but that text cannot be read again ({e}); put the files named in its pretrain.json "
                          "back where they were") from None
    _, val_ids = split_stream(concat_documents(tokenizer.encode_batch(texts), tokenizer.eot_id),
                              info["model_config"]["n_ctx"])
    source = corpus if files is None else "files " + ", ".join(files)
    return val_ids, f"the validation part pretraining held out of its own text ({source})"


def tokenizer_for(cfg: GPTConfig, texts, tokenizer_path=None) -> Tokenizer:
    """The shipped tokenizer (or the one given) when it fits the preset's vocabulary, else a new one trained here."""
    path = Path(tokenizer_path) if tokenizer_path else data_dir() / "tokenizer.json"
    if path.is_file() or tokenizer_path:
        tok = Tokenizer.load(path)
        if tok.vocab_size <= cfg.vocab_size:
            return tok
        if tokenizer_path:
            raise MiniftError(f"tokenizer {path} has {tok.vocab_size} tokens but the model's vocab_size is "
                              f"{cfg.vocab_size}")
    return Tokenizer.train(texts, vocab_size=cfg.vocab_size)


def pretrain(preset="demo", corpus="world", files=None, n_chars=DEFAULT_CHARS,
             tcfg: PretrainConfig | TrainConfig | None = None, out_dir="runs/pretrain", tokenizer_path=None,
             device="cpu", seed=0, resume=False, progress=True):
    """Pretrain a fresh GPT; returns (model, tokenizer, summary dict). Everything lands in out_dir.

    tcfg: a PretrainConfig (default PretrainConfig(seed=seed)), whose warmup is settled here (a resumed run keeps
    its own: PretrainConfig.train_config), or a TrainConfig, used as it is."""
    cfg = GPTConfig.preset(preset) if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    tcfg = tcfg or PretrainConfig(seed=seed)
    if isinstance(tcfg, PretrainConfig):
        tcfg = tcfg.train_config(out_dir / "checkpoints", resume)
    check_fits(cfg, "full", tcfg.batch_size, cfg.n_ctx, device=resolve_device(device))   # before any long work
    check_corpus_fits(n_chars if not files and corpus != "pydoc" else 0, files)
    t0 = time.time()
    texts = corpus_texts(corpus, n_chars, files, seed)
    tok = tokenizer_for(cfg, texts, tokenizer_path)
    stream = concat_documents(tok.encode_batch(texts), tok.eot_id)              # (N,)
    train_ids, val_ids = split_stream(stream, cfg.n_ctx)                       # (N - n_val,), (n_val,)
    model = GPT(cfg, seed=seed, device=device)
    source = LMSource(train_ids, cfg.n_ctx, tcfg.batch_size, seed=seed)
    name = preset if isinstance(preset, str) else "custom"
    result = train(model, source, tcfg, out_dir=out_dir / "checkpoints",
                   evaluate=lambda m: {"val_loss": lm_loss(m, val_ids, max_windows=16)},
                   resume=resume, progress=progress, desc=f"pretrain {name}")
    drop_summary(out_dir, "pretrain.json")      # written again last: then the folder is complete
    model.save_pretrained(out_dir / "model", tok)          # config.json, model.safetensors, tokenizer.json
    summary = dict(preset=name, model_config=cfg.to_dict(),
                   corpus=corpus if not files else [str(Path(f).resolve()) for f in files],
                   n_chars=n_chars if not files and corpus != "pydoc" else None,
                   train_tokens=int(train_ids.size), val_tokens=int(val_ids.size), train_config=asdict(tcfg),
                   final_train_loss=result.final_loss, val_loss=result.evals[-1]["val_loss"],
                   evals=result.evals, losses=[h["loss"] for h in result.history], tokens_seen=result.tokens,
                   workers=result.workers,
                   train_seconds=round(result.seconds, 1),
                   wall_seconds=round(time.time() - t0, 1), tokenizer_vocab=tok.vocab_size,
                   tokenizer_fingerprint=tok.fingerprint())       # load_base checks the model folder's against it
    save_json(summary, out_dir / "pretrain.json")
    return model, tok, summary
