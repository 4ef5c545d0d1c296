"""Byte-level BPE: exact round trips, special tokens, deterministic training, atomic save/load, GPT-2's files."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from minift.data import data_dir, world_corpus
from minift.errors import MiniftError
from minift.formats.tokenizer import EOT, PAD, Tokenizer


@pytest.fixture(scope="module")
def texts():
    return world_corpus(n_chars=60_000) + ["def f(x):\n    return x  # Python's docs, too: ü, 日本, 🎉"]


@pytest.fixture(scope="module")
def tok(texts):
    return Tokenizer.train(texts, vocab_size=400)


@settings(max_examples=200)
@given(s=st.text())
def test_round_trip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@given(parts=st.lists(st.text(max_size=20), max_size=5))
def test_round_trip_with_special_tokens_in_text(tok, parts):
    s = EOT.join(parts)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert ids.count(tok.eot_id) == len(parts) - 1 if parts else ids == []


def test_special_tokens_and_sizes(tok):
    assert (tok.eot_id, tok.pad_id) == (0, 1)                  # the trainer puts special tokens first
    assert tok.vocab_size == 400
    assert tok.encode(EOT) == [0] and tok.encode(PAD) == [1]
    assert tok.encode("") == []
    assert tok.encode_batch(["Mila", "", "lives"]) == [tok.encode("Mila"), [], tok.encode("lives")]
    # every single byte has a token of its own (ids 2..257), so no text is ever unknown
    assert len({tok.encode(bytes([b]).decode("latin-1"))[0] for b in range(128)}) == 128


def test_bad_inputs(tok):
    with pytest.raises(MiniftError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(MiniftError, match="expects a str"):
        tok.encode(b"bytes")
    with pytest.raises(MiniftError, match="item 1"):
        tok.encode_batch(["ok", 3])
    with pytest.raises(MiniftError, match="at least 258"):
        Tokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(MiniftError, match="no text"):
        Tokenizer.train([], vocab_size=300)


def test_training_is_deterministic_in_process(texts, tok):
    assert Tokenizer.train(texts, vocab_size=400).to_json() == tok.to_json()
    assert Tokenizer.train(list(reversed(texts)), vocab_size=400).to_json() == tok.to_json()   # order-free counts


def test_training_is_deterministic_across_processes(tok):
    """Hash maps are seeded per process; two fresh interpreters (different hash seeds) must still agree."""
    code = ("import hashlib; from minift.data import world_corpus; from minift.formats.tokenizer import Tokenizer; "
            "t = Tokenizer.train(world_corpus(n_chars=60_000) + [\"def f(x):\\n    return x  # Python's docs, "
            "too: \\u00fc, \\u65e5\\u672c, \\U0001f389\"], 400); print(hashlib.sha256(t.to_json().encode())"
            ".hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in (1, 2)}
    assert outs == {hashlib.sha256(tok.to_json().encode()).hexdigest()}


def test_save_load_identical(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    assert os.listdir(tmp_path) == ["tokenizer.json"]         # no temporary file left behind
    loaded = Tokenizer.load(path)
    assert loaded.to_json() == tok.to_json()
    assert (loaded.eot_id, loaded.pad_id, loaded.vocab_size) == (tok.eot_id, tok.pad_id, tok.vocab_size)
    text = "Mila has a dog called Pip. 🎉\n\tEnd."
    assert loaded.encode(text) == tok.encode(text)
    assert Tokenizer.load(tmp_path).to_json() == tok.to_json()  # a folder holding tokenizer.json


def test_save_is_atomic(tok, tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    path.write_text("old contents")

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        tok.save(path)
    assert path.read_text() == "old contents"                  # the old file is intact...
    assert os.listdir(tmp_path) == ["tokenizer.json"]          # ...and the temporary file is gone


def test_load_missing_or_corrupt(tmp_path):
    with pytest.raises(MiniftError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(MiniftError, match=str(bad).replace("\\", "\\\\")):
        Tokenizer.load(bad)
    with pytest.raises(MiniftError, match="without tokenizer.json"):
        Tokenizer.load(tmp_path)


def _gpt2_files(folder, with_eot=True):
    """A tiny GPT-2-format vocabulary: the 256 byte symbols, five merges, and <|endoftext|> last (as in GPT-2)."""
    from tokenizers.pre_tokenizers import ByteLevel
    symbols = sorted(ByteLevel.alphabet())
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w")]
    vocab = {s: i for i, s in enumerate(symbols)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    if with_eot:
        vocab[EOT] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab


def test_gpt2_files(tmp_path):
    vocab = _gpt2_files(tmp_path)
    tok = Tokenizer.from_gpt2_files(tmp_path)
    assert tok.vocab_size == len(vocab)
    assert tok.eot_id == tok.pad_id == vocab[EOT]              # GPT-2 pads with <|endoftext|>, as HF does
    ids = tok.encode("hello world")
    assert [tok.id_to_token(i) for i in ids] == ["hello", "Ġw", "o", "r", "l", "d"]
    assert tok.decode(ids) == "hello world"
    assert tok.encode(f"hi{EOT}") == [vocab["h"], vocab["i"], vocab[EOT]]
    assert Tokenizer.load(tmp_path).encode("hello world") == ids   # load() on a folder with only GPT-2's files


def test_gpt2_files_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers not installed: cross-check skipped")
    _gpt2_files(tmp_path)
    ref = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    tok = Tokenizer.from_gpt2_files(tmp_path)
    for text in ("hello world", "Hello, hello well!  whole\nworld 🎉", "hellohello wow"):
        assert tok.encode(text) == ref.encode(text)


def test_gpt2_files_errors(tmp_path):
    with pytest.raises(MiniftError, match="vocab.json"):
        Tokenizer.from_gpt2_files(tmp_path)
    _gpt2_files(tmp_path, with_eot=False)
    with pytest.raises(MiniftError, match="no <\\|endoftext\\|>"):
        Tokenizer.from_gpt2_files(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nzz qq\n")
    with pytest.raises(MiniftError):
        Tokenizer.from_gpt2_files(tmp_path)


def test_shipped_tokenizer():
    path = data_dir() / "tokenizer.json"
    if not path.is_file():
        pytest.skip("data/tokenizer.json not generated (python -m minift.data)")
    tok = Tokenizer.load(path)
    assert (tok.vocab_size, tok.eot_id, tok.pad_id) == (2048, 0, 1)
    text = world_corpus(n_docs=3, seed=99)[2]
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text) / 3     # real compression on world text
