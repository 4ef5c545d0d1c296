"""A model folder's weights, config and tokenizer are checked against each other on load (issue 19, class 3): each
mismatch is one MiniftError (one CLI line) that names the file, never a model that trains or generates nonsense."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from minift import GPT, GPTConfig, MiniftError
from minift.app.cli import main
from minift.data import data_dir
from minift.formats.io import load_safetensors
from minift.base import load_base
from minift.formats.tokenizer import Tokenizer


def shipped_tokenizer():
    return Tokenizer.load(data_dir() / "tokenizer.json")


def model_folder(path, with_tokenizer=True, vocab_size=2048):
    """A tiny random model saved as a complete folder (config.json, model.safetensors, tokenizer.json)."""
    model = GPT(GPTConfig.preset("tiny", vocab_size=vocab_size), seed=0)
    model.save_pretrained(path, shipped_tokenizer() if with_tokenizer else None)
    return path


def edit_weight(folder, name, change):
    """Rewrite one tensor of the folder's model.safetensors: `change` maps the array to its replacement."""
    tensors, metadata = load_safetensors(folder / "model.safetensors")
    tensors[name] = change(tensors[name].copy())
    save_file(tensors, folder / "model.safetensors", metadata=metadata)


def write_pretrain_json(folder, **record):
    (folder / "pretrain.json").write_text(json.dumps(record))


def small_tokenizer():
    """Another tokenizer, with a vocabulary of its own (fewer than 300 tokens: the text runs out of pairs to merge)."""
    return Tokenizer.train(["the cat sat on the mat, and the dog sat on the log"] * 20, vocab_size=300)


# ---- weights against config.json --------------------------------------------------------------------------------

def test_a_complete_folder_loads_with_its_own_tokenizer(tmp_path):
    model, tok = load_base(model_folder(tmp_path / "m"))
    assert tok.fingerprint() == shipped_tokenizer().fingerprint() and model.cfg.vocab_size == 2048
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.json"]


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, dtype):
    folder = model_folder(tmp_path / "m")
    edit_weight(folder, "h.1.mlp.c_fc.weight", lambda w: w.astype(dtype))
    with pytest.raises(MiniftError, match=rf"model\.safetensors: tensor h\.1\.mlp\.c_fc\.weight has dtype {dtype}"):
        load_base(folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_weight_that_is_not_finite_is_refused(tmp_path, bad):
    folder = model_folder(tmp_path / "m")

    def poison(w):
        w[3, 5] = bad
        return w
    edit_weight(folder, "h.0.attn.c_attn.weight", poison)
    with pytest.raises(MiniftError, match=r"model\.safetensors: tensor h\.0\.attn\.c_attn\.weight holds 1 value"):
        GPT.from_pretrained(folder)


def test_float16_weights_still_load(tmp_path):
    folder = model_folder(tmp_path / "m")
    tensors, metadata = load_safetensors(folder / "model.safetensors")
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, folder / "model.safetensors", metadata=metadata)
    model, _ = load_base(folder)
    assert model.params["wte.weight"].dtype == np.float32


def test_duplicate_labels_in_config_json_are_refused(tmp_path):
    model = GPT(GPTConfig.preset("tiny"), seed=0)
    model.add_classification_head(["no", "yes"])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "yes", "1": "yes"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MiniftError, match=r"config\.json: id2label .* the label 'yes' appears twice"):
        GPT.from_pretrained(tmp_path)


# ---- the tokenizer ----------------------------------------------------------------------------------------------

def test_a_folder_without_a_tokenizer_is_refused(tmp_path):
    folder = model_folder(tmp_path / "m", with_tokenizer=False)
    with pytest.raises(MiniftError, match=r"m has no tokenizer\.json .*put the tokenizer\.json the model was trained"):
        load_base(folder)


def test_the_shipped_tokenizer_stands_in_only_where_pretrain_json_proves_it(tmp_path):
    """pretrain.json records the fingerprint of the tokenizer pretraining used: the shipped one's, and only then,
    is the shipped tokenizer provably the model's."""
    folder = model_folder(tmp_path / "m", with_tokenizer=False)
    write_pretrain_json(folder, tokenizer_vocab=2048, tokenizer_fingerprint=shipped_tokenizer().fingerprint())
    _, tok = load_base(folder)
    assert tok.fingerprint() == shipped_tokenizer().fingerprint()
    write_pretrain_json(folder, tokenizer_vocab=2048, tokenizer_fingerprint="0123456789abcdef")
    with pytest.raises(MiniftError, match="has no tokenizer.json"):
        load_base(folder)
    write_pretrain_json(folder, tokenizer_vocab=2048)              # the size alone proves nothing
    with pytest.raises(MiniftError, match="has no tokenizer.json"):
        load_base(folder)


def test_a_tokenizer_of_another_size_than_pretrain_json_records_is_refused(tmp_path):
    folder = model_folder(tmp_path / "m")
    n = Tokenizer.load(small_tokenizer().save(folder / "tokenizer.json")).vocab_size
    write_pretrain_json(folder, tokenizer_vocab=2048)
    with pytest.raises(MiniftError, match=rf"tokenizer .*m/tokenizer\.json has {n} tokens, but .*pretrain\.json "
                                          r"records that the model was pretrained with 2048"):
        load_base(folder)


def test_a_tokenizer_of_the_right_size_but_another_vocabulary_is_refused(tmp_path):
    folder = model_folder(tmp_path / "m")
    write_pretrain_json(folder, tokenizer_vocab=2048, tokenizer_fingerprint="0123456789abcdef")
    with pytest.raises(MiniftError, match=r"m/tokenizer\.json is not the one the model was pretrained with: its "
                                          rf"fingerprint is {shipped_tokenizer().fingerprint()}, .*pretrain\.json "
                                          r"records 0123456789abcdef; put the tokenizer\.json"):
        load_base(folder)


def test_pretrain_json_beside_the_folder_counts_too(tmp_path):
    """`minift pretrain` writes out/model/ and out/pretrain.json beside it."""
    folder = model_folder(tmp_path / "run" / "model")
    small_tokenizer().save(folder / "tokenizer.json")
    write_pretrain_json(tmp_path / "run", tokenizer_vocab=2048)
    with pytest.raises(MiniftError, match=r"run/pretrain\.json records"):
        load_base(folder)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    folder = model_folder(tmp_path / "m", vocab_size=512)
    with pytest.raises(MiniftError, match=r"m/tokenizer\.json has 2048 tokens, more than the model's vocab_size 512"):
        load_base(folder)


def test_gpt2_vocab_and_merges_files_are_the_folder_tokenizer(tmp_path):
    """A Hugging Face GPT-2 folder may hold vocab.json + merges.txt instead of tokenizer.json: those are its
    tokenizer (before, the shipped one was used in their place)."""
    from tokenizers.pre_tokenizers import ByteLevel
    folder = model_folder(tmp_path / "m", with_tokenizer=False, vocab_size=512)
    vocab = {s: i for i, s in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    _, tok = load_base(folder)
    assert tok.vocab_size == 257 and tok.source == str(folder)


def test_the_fingerprint_ignores_how_tokenizer_json_spells_the_merges(tmp_path):
    """Older `tokenizers` wrote merges as "a b" strings, newer ones as ["a", "b"]: the same tokenizer, the same
    fingerprint (pretrain.json's record stays valid across versions); another vocabulary, another fingerprint."""
    tok = shipped_tokenizer()
    data = json.loads(tok.to_json())
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert Tokenizer.load(tmp_path).fingerprint() == tok.fingerprint() != small_tokenizer().fingerprint()


# ---- the command line: one line naming the file, exit 1, nothing left behind ------------------------------------

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("minift: error:") and "\n" not in err, err
    return err


def test_generate_with_a_nan_weight_is_one_line(tmp_path, capsys):
    folder = model_folder(tmp_path / "m")

    def poison(w):
        w[0, 0] = np.nan
        return w
    edit_weight(folder, "wte.weight", poison)
    assert main(["generate", "--model", str(folder), "--max-new-tokens", "4"]) == 1
    err = _one_error_line(capsys)
    assert str(folder / "model.safetensors") in err and "wte.weight" in err


def test_finetune_on_a_base_with_another_tokenizer_is_refused_and_leaves_nothing(tmp_path, capsys):
    folder = model_folder(tmp_path / "m")
    small_tokenizer().save(folder / "tokenizer.json")
    write_pretrain_json(folder, tokenizer_vocab=2048)
    out = tmp_path / "run"
    assert main(["finetune", "--base", str(folder), "--steps", "2", "--out", str(out), "--quiet"]) == 1
    err = _one_error_line(capsys)
    assert str(folder / "tokenizer.json") in err and "pretrain.json" in err
    assert not out.exists()


def test_finetune_on_a_base_without_a_tokenizer_is_refused_and_leaves_nothing(tmp_path, capsys):
    folder = model_folder(tmp_path / "m", with_tokenizer=False)
    out = tmp_path / "run"
    assert main(["finetune", "--base", str(folder), "--steps", "2", "--out", str(out), "--quiet"]) == 1
    assert f"{folder} has no tokenizer.json" in _one_error_line(capsys)
    assert not out.exists()


# ---- config.json and pretrain.json against the weights (a second round of attacks) --------------------------------

@pytest.mark.parametrize("key, value, says", [("n_head", True, "n_head=True"), ("n_layer", 4.0, "n_layer=4.0"),
                                              ("n_embd", -128, "n_embd=-128"), ("layer_norm_epsilon", "x", "epsilon"),
                                              ("model_type", "llama", "model_type='llama'")])
def test_a_bad_config_json_is_named(tmp_path, key, value, says):
    folder = model_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MiniftError, match="config.json") as e:
        load_base(folder)
    assert says in str(e.value)


def test_a_pretrain_json_that_records_another_model_is_refused(tmp_path):
    folder = model_folder(tmp_path / "m")
    write_pretrain_json(folder, model_config=dict(GPTConfig.preset("tiny", vocab_size=2048, n_layer=7).to_dict()))
    with pytest.raises(MiniftError, match="pretrain.json records a model of another shape"):
        load_base(folder)
