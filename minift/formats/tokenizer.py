"""Byte-level BPE, GPT-2's tokenizer scheme, through the `tokenizers` package.

Byte-level means text is first turned into UTF-8 bytes, and each of the 256 byte values has a token of its own, so
any string at all (any valid Unicode: not a lone surrogate, which has no UTF-8 bytes) can be encoded and
`decode(encode(s)) == s` exactly: no unknown token, no normalisation. BPE then merges the most frequent adjacent
pairs into new tokens until the vocabulary is full (2048 for the `demo` preset).

    tok = Tokenizer.train(texts, vocab_size=2048)          # minift's own, as shipped in data/tokenizer.json
    tok = Tokenizer.load("data/tokenizer.json")            # any tokenizer.json (GPT-2's too), or a folder holding one
    tok = Tokenizer.from_gpt2_files("gpt2/")               # GPT-2's vocab.json + merges.txt
    ids = tok.encode("Mila lives in Oakford.")             # list[int]; no special tokens are added
    tok.decode(ids)                                        # the same string back
    tok.fingerprint()                                      # a short hash of the vocabulary and merges

Special tokens: `<|endoftext|>` separates documents (GPT-2's name for it) and `<|pad|>` fills batches. minift's own
tokenizer has both, at ids 0 and 1. GPT-2's has only `<|endoftext|>` (id 50256), and, as Hugging Face does, minift
pads with it there: padding is masked out anyway, so its id never matters.

Determinism: training is deterministic for the same texts (checked across processes in tests/formats/test_tokenizer.py).
The `tokenizers` BPE trainer counts words in parallel hash maps, but sums are order-free; the base alphabet is sorted;
merges are chosen by (count, pair ids), so ties break the same way every time. The one known source of run-to-run
differences in that trainer is the lazily numbered continuing-subword tokens (huggingface/tokenizers#1794), which
byte-level BPE does not use.
"""
from __future__ import annotations

import hashlib
import json
import operator
from pathlib import Path

from ..errors import MiniftError

EOT = "<|endoftext|>"
PAD = "<|pad|>"


def _tk():
    """The `tokenizers` package, imported on first use (importing minift stays light)."""
    try:
        import tokenizers
    except ImportError as e:                            # a dependency of minift, so only a broken install lands here
        raise MiniftError("the 'tokenizers' package is needed for tokenization: pip install tokenizers") from e
    return tokenizers


def _byte_level(tok):
    """GPT-2's pipeline around a BPE model: split on its regex at byte level, no prefix space, byte-level decoding."""
    tk = _tk()
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tk.decoders.ByteLevel()
    return tok


def as_token_ids(ids, what="ids") -> list[int]:
    """`ids` as a list of Python ints. Integers of any kind (int, NumPy's int64) pass; anything else (a float: 3.7
    would become 3 under int(); a string) is refused, naming `what` and the position, rather than turned silently
    into another token."""
    out = []
    for i, x in enumerate(ids):
        try:
            out.append(operator.index(x))
        except TypeError:
            raise MiniftError(f"{what}: item {i} is {x} ({type(x).__name__}); token ids must be integers") from None
    return out


def _check_unicode(texts) -> None:
    """Refuse, by name, a text holding a lone surrogate: it has no UTF-8 bytes, and `tokenizers` would raise a
    TypeError that does not say which text. (One arrives from a command-line argument that was not UTF-8, or from
    JSON's escape "\\ud83d" without its other half.)"""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise MiniftError(f"text {i} is not valid Unicode: a lone surrogate at character {e.start} (half of an "
                              "escaped emoji, or bytes that were not UTF-8)") from None


class Tokenizer:
    """A byte-level BPE tokenizer with an end-of-text and a padding token."""

    def __init__(self, tok, source: str = "<memory>"):
        self._tok = tok
        self.source = source
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise MiniftError(f"tokenizer {source} has no {EOT} token; minift needs it to separate documents")
        pad = tok.token_to_id(PAD)
        self._eot, self._pad = eot, (eot if pad is None else pad)

    # ---- making one ----------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts, vocab_size: int = 2048, seed: int | None = None) -> "Tokenizer":
        """Train byte-level BPE on an iterable of strings.

        vocab_size counts everything: the 2 special tokens, the 256 bytes, then vocab_size - 258 merges (fewer if the
        texts run out of pairs to merge). `seed` is accepted for symmetry with the rest of minift and ignored: BPE
        training has no randomness, the same texts give the same tokenizer.
        """
        tk = _tk()
        texts = list(texts)
        if not texts or not any(texts):
            raise MiniftError("Tokenizer.train: no text to train on")
        if not isinstance(vocab_size, int) or vocab_size < 258:
            raise MiniftError(f"vocab_size={vocab_size!r}: must be an int of at least 258 (2 special tokens + 256 "
                              "bytes)")
        tok = _byte_level(tk.Tokenizer(tk.models.BPE()))
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, PAD], min_frequency=2,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tok, source=f"<trained, vocab {vocab_size}>")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """A tokenizer.json, or a folder holding tokenizer.json (else GPT-2's vocab.json + merges.txt)."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file():
                return cls.from_gpt2_files(path)
            else:
                raise MiniftError(f"{path} is a folder without tokenizer.json or vocab.json + merges.txt")
        if not path.is_file():
            raise MiniftError(f"tokenizer file {path} does not exist")
        from .io import read_bytes
        data = read_bytes(path, "tokenizer file")       # read here: an unreadable file says why ("permission denied")
        try:
            tok = _tk().Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:                          # the Rust side raises a plain Exception for bad JSON
            raise MiniftError(f"{path} is not a valid tokenizer.json ({type(e).__name__}: {e})") from e
        return cls(tok, source=str(path))

    @classmethod
    def from_gpt2_files(cls, folder) -> "Tokenizer":
        """GPT-2's own tokenizer from a local folder with vocab.json and merges.txt (nothing is downloaded)."""
        tk = _tk()
        folder = Path(folder)
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        for f in (vocab, merges):
            if not f.is_file():
                raise MiniftError(f"{f} does not exist: a GPT-2 tokenizer folder needs vocab.json and merges.txt")
        try:
            with open(vocab, encoding="utf-8") as f:
                has_eot = EOT in json.load(f)
            model = tk.models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:
            raise MiniftError(f"{folder}: vocab.json / merges.txt could not be read ({type(e).__name__}: {e})") from e
        if not has_eot:
            raise MiniftError(f"{vocab} has no {EOT} entry; GPT-2's vocab.json has it (id 50256)")
        tok = _byte_level(tk.Tokenizer(model))
        tok.add_special_tokens([EOT])                   # already in the vocabulary: this only marks it special
        return cls(tok, source=str(folder))

    def save(self, path) -> Path:
        """Write tokenizer.json atomically (temp file in the same folder, fsync, rename)."""
        from .io import atomic_write_text
        return atomic_write_text(path, self.to_json())

    def to_json(self) -> str:
        """The tokenizer.json text (the format Hugging Face's tokenizers and transformers read)."""
        return self._tok.to_str(pretty=True) + "\n"

    def fingerprint(self) -> str:
        """A short hash of what decides the ids: the vocabulary (every token, special ones included, in id order) and
        the BPE merges. Two tokenizers with the same fingerprint encode every text the same way. It does not hash
        tokenizer.json's text, whose layout changes between versions of `tokenizers` (merges were "a b" strings,
        now ["a", "b"] pairs): the same tokenizer keeps its fingerprint across them. pretrain.json records it, so
        that load_base can tell the tokenizer a model was pretrained with from another of the same size."""
        vocab = sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
        merges = json.loads(self._tok.to_str()).get("model", {}).get("merges") or []
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
        canonical = json.dumps([[token for token, _ in vocab], merges], ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    # ---- using one -----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids for `text`. Special tokens are not added; the literal text "<|endoftext|>" maps to its id."""
        if not isinstance(text, str):
            raise MiniftError(f"encode expects a str, got {type(text).__name__}")
        _check_unicode([text])
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts) -> list[list[int]]:
        """encode for many texts at once (in parallel inside `tokenizers`; the result is in order)."""
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise MiniftError(f"encode_batch: item {bad} is a {type(texts[bad]).__name__}, expected str")
        _check_unicode(texts)
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """The text of token ids, special tokens included (so decode(encode(s)) == s for every string)."""
        ids = as_token_ids(ids, "decode")
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise MiniftError(f"decode: token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary entry for an id, in byte-level spelling ('Ġ' stands for a leading space)."""
        return self._tok.id_to_token(int(i))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included: the model's embedding needs this many rows (at least)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self._eot

    @property
    def pad_id(self) -> int:
        return self._pad

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, pad_id={self.pad_id}, " \
               f"source={self.source!r})"
