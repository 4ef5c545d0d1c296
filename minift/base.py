"""The base model a fine-tune starts from (article §1.1 step 1, "load a pretrained model"): the shipped demo base or
any model folder, loaded with the tokenizer it was trained with, its parts checked against each other.

A model folder is a Hugging Face GPT-2 folder (config.json + model.safetensors, minift/formats/hf.py) with its
tokenizer.json; `minift pretrain` writes its pretrain.json (what it was pretrained on, and the tokenizer's
fingerprint) in or beside it.
"""
from __future__ import annotations

from pathlib import Path

from .data import data_dir
from .errors import MiniftError
from .formats.io import load_json
from .formats.tokenizer import Tokenizer
from .model import GPT


def shipped_base_dir() -> Path:
    """data/base-demo: the pretrained `demo` model shipped with minift (made by `minift pretrain`, see README)."""
    return data_dir() / "base-demo"


def load_base(path=None, dtype="float32", device="cpu"):
    """(model, tokenizer) from a model folder (default: the shipped demo base), its parts checked against each other,
    so that a mismatch is one error naming the file instead of a model that trains or generates nonsense:

      weights vs config.json   floating point, finite, the shapes the config implies (GPT.from_pretrained);
      the tokenizer            the folder's own: tokenizer.json, else GPT-2's vocab.json + merges.txt. A folder
                               with neither gets the shipped data/tokenizer.json only where that is provably the
                               model's: its pretrain.json records that tokenizer's fingerprint. Otherwise it is
                               refused: another tokenizer of the right size would be accepted and give nonsense;
      tokenizer vs model       no more tokens than config.json's vocab_size (their ids would have no row in wte),
                               and the vocabulary size and fingerprint pretrain.json records, where it does.
    """
    path = Path(path) if path else shipped_base_dir()
    if not path.exists():                        # (a file: GPT.from_pretrained says it is not a folder)
        hint = (" (the shipped base is made by `minift pretrain --preset demo --chars 16000000 --steps 2000 "
                "--out runs/base-demo`, then copying runs/base-demo/model/* and pretrain.json into data/base-demo)"
                if path == shipped_base_dir() else "")
        raise MiniftError(f"model folder not found: {path}{hint}")
    model = GPT.from_pretrained(path, dtype=dtype, device=device)
    summary = pretrain_json(path)
    pretraining = base_pretraining(path) or {}
    tok = _folder_tokenizer(path, pretraining)
    _check_tokenizer_fits(tok, model, pretraining, summary, path)
    recorded = pretraining.get("model_config")
    if isinstance(recorded, dict) and {k: recorded.get(k) for k in model.cfg.to_dict()} != model.cfg.to_dict():
        raise MiniftError(f"{summary} records a model of another shape ({recorded}) than {path / 'config.json'} "
                          f"({model.cfg.to_dict()}): the folder's files do not belong together")
    return model, tok


def _folder_tokenizer(folder: Path, pretraining: dict) -> Tokenizer:
    """The model folder's tokenizer (see load_base); the shipped one only where pretrain.json proves it is the one."""
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        return Tokenizer.load(folder)
    recorded = pretraining.get("tokenizer_fingerprint")
    if recorded is not None:
        shipped = Tokenizer.load(data_dir() / "tokenizer.json")
        if shipped.fingerprint() == recorded:
            return shipped
    raise MiniftError(f"{folder} has no tokenizer.json (nor GPT-2's vocab.json + merges.txt): put the tokenizer.json "
                      "the model was trained with into the folder (minift's own, if it was that one, is "
                      f"{data_dir() / 'tokenizer.json'}; from Python, model.save_pretrained(folder, tokenizer) "
                      "writes it)")


def _check_tokenizer_fits(tok: Tokenizer, model: GPT, pretraining: dict, summary, folder: Path) -> None:
    """Refuse a tokenizer the model cannot use: more tokens than its embedding has rows, or not the tokenizer its
    pretrain.json (`summary`) records (another vocabulary size, or the same size with another fingerprint)."""
    if tok.vocab_size > model.cfg.vocab_size:
        raise MiniftError(f"tokenizer {tok.source} has {tok.vocab_size} tokens, more than the model's vocab_size "
                          f"{model.cfg.vocab_size} ({folder / 'config.json'}): it is not the model's tokenizer")
    size, fingerprint = pretraining.get("tokenizer_vocab"), pretraining.get("tokenizer_fingerprint")
    if size is not None and size != tok.vocab_size:
        why = f"has {tok.vocab_size} tokens, but {summary} records that the model was pretrained with {size}"
    elif fingerprint is not None and fingerprint != tok.fingerprint():
        why = (f"is not the one the model was pretrained with: its fingerprint is {tok.fingerprint()}, {summary} "
               f"records {fingerprint}")
    else:
        return
    raise MiniftError(f"tokenizer {tok.source} {why}; put the tokenizer.json the model was trained with into {folder}")


def pretrain_json(base_dir=None) -> Path | None:
    """Where a base model folder's pretrain.json is: in the folder (the shipped base, a fine-tune's merged model) or
    beside it (`minift pretrain` writes out/model/ and out/pretrain.json); None when there is none (a Hugging Face
    GPT-2, say)."""
    folder = Path(base_dir) if base_dir else shipped_base_dir()
    return next((p for p in (folder / "pretrain.json", folder.parent / "pretrain.json") if p.is_file()), None)


def base_pretraining(base_dir=None) -> dict | None:
    """The pretrain.json of a base model folder (see pretrain_json), or None when it has none."""
    path = pretrain_json(base_dir)
    if path is None:
        return None
    info = load_json(path, "pretraining summary")
    if not isinstance(info, dict):
        raise MiniftError(f"{path} holds a JSON {type(info).__name__}, not the object `minift pretrain` writes")
    return info
