"""API edges (issue 19, class 5): each bad argument or file fault is a MiniftError that names the input, never an
empty result, a silent conversion or a bare exception from deep inside a library."""
import numpy as np
import pytest
from safetensors.numpy import save_file

import minift.formats.io
from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora, load_peft
from minift.data import data_dir
from minift.generate import generate, generate_ids
from minift.formats.io import load_json, load_safetensors
from minift.formats.tokenizer import Tokenizer


def tiny(**kw):
    return GPT(GPTConfig.preset("tiny", n_ctx=16, **kw), seed=0)


def shipped_tokenizer():
    return Tokenizer.load(data_dir() / "tokenizer.json")


# ---- load_peft: the adapter's values -----------------------------------------------------------------------------

def saved_adapter(path):
    """A LoRA adapter (B made non-zero) saved by save_peft; returns the folder."""
    model = tiny()
    lora = attach_lora(model, LoRAConfig(r=2, alpha=4, targets=("c_attn",)), seed=0)
    for name, value in lora.params.items():
        value[...] = 0.01 * np.arange(value.size).reshape(value.shape)
    lora.save_peft(path)
    return path


@pytest.mark.parametrize("fault", ["nan", "inf", "int32"])
def test_load_peft_refuses_an_adapter_with_a_bad_tensor_before_touching_the_model(tmp_path, fault):
    folder = saved_adapter(tmp_path / "adapter")
    file = folder / "adapter_model.safetensors"
    tensors, metadata = load_safetensors(file)
    name = sorted(tensors)[1]
    if fault == "int32":
        tensors[name] = tensors[name].astype(np.int32)
    else:
        tensors[name] = tensors[name].copy()
        tensors[name][0, 1] = float(fault)
    save_file(tensors, file, metadata=metadata)
    model = tiny()
    before = model.fingerprint()
    with pytest.raises(MiniftError, match=rf"adapter_model\.safetensors: tensor {name.replace('.', '[.]')} "):
        load_peft(model, folder)
    assert model.adapters == {} and model.head_kind == "lm" and model.fingerprint() == before


# ---- generate: its options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, named", [
    (dict(max_new_tokens=-1), "max_new_tokens=-1"),
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(max_new_tokens=2.5), "max_new_tokens=2.5"),
    (dict(max_new_tokens=True), "max_new_tokens=True"),
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(temperature=float("nan")), "temperature=nan"),
    (dict(temperature=float("inf")), "temperature=inf"),
    (dict(temperature="hot"), "temperature='hot'"),
    (dict(top_k=0), "top_k=0"),
    (dict(top_k=-3), "top_k=-3"),
    (dict(top_k=1.5), "top_k=1.5"),
])
def test_generate_refuses_meaningless_options_by_name(options, named):
    model = tiny(vocab_size=2048)
    with pytest.raises(MiniftError, match=named.replace(".", "[.]")):
        generate(model, shipped_tokenizer(), "Ida is", **{"max_new_tokens": 3, **options})


def test_generate_accepts_numpy_integers_and_greedy_sampling():
    model, tok = tiny(vocab_size=2048), shipped_tokenizer()
    text = generate(model, tok, "Ida is", max_new_tokens=np.int64(3), temperature=0, top_k=np.int32(5))
    assert isinstance(text, str)


def test_float_token_ids_are_refused_not_truncated():
    model, tok = tiny(), shipped_tokenizer()
    with pytest.raises(MiniftError, match=r"prompt_ids: item 1 is 2\.7 \(float\)"):
        generate_ids(model, [5, 2.7, 3], max_new_tokens=2)
    with pytest.raises(MiniftError, match=r"prompt_ids: item 0 is 5\.0"):
        generate_ids(model, np.array([5.0, 3.0]), max_new_tokens=2)
    assert len(generate_ids(model, np.array([5, 3]), max_new_tokens=2, temperature=0)) == 2
    with pytest.raises(MiniftError, match=r"decode: item 0 is 40\.5"):
        tok.decode([40.5])


def test_non_finite_logits_are_refused_before_sampling():
    """A model whose weights were set to NaN in Python (not loaded from a file, so not checked there)."""
    model = tiny(vocab_size=2048)
    model.params["ln_f.weight"][0] = np.nan
    with pytest.raises(MiniftError, match="logits hold NaN or infinite values"):
        generate(model, shipped_tokenizer(), "Ida is", max_new_tokens=2)


# ---- forward / loss_and_grads: token ids -------------------------------------------------------------------------

@pytest.mark.parametrize("ids, named", [
    (np.array([[1.0, 2.0]]), "input_ids must be a 2-D integer array .* dtype float64"),
    (np.array([[True, False]]), "input_ids must be a 2-D integer array .* dtype bool"),
    (np.array([["1", "2"]]), "input_ids must be a 2-D integer array"),
    (np.array([[1, 512]]), r"ids must lie in \[0, 512\)"),
    (np.array([[-1, 2]]), r"ids must lie in \[0, 512\)"),
])
def test_forward_and_loss_refuse_ids_that_are_not_tokens(ids, named):
    model = tiny()
    with pytest.raises(MiniftError, match=named):
        model.forward(ids)
    with pytest.raises(MiniftError, match=named):
        model.loss_and_grads(ids, np.zeros(ids.shape, dtype=np.int64))


def test_loss_refuses_targets_that_are_not_tokens():
    model, ids = tiny(), np.array([[1, 2, 3]])
    with pytest.raises(MiniftError, match="targets must be integer .* dtype float64"):
        model.loss_and_grads(ids, ids.astype(np.float64))
    with pytest.raises(MiniftError, match=r"targets must lie in \[0, 512\)"):
        model.loss_and_grads(ids, np.array([[1, 2, 600]]))


# ---- add_classification_head: the labels -------------------------------------------------------------------------

@pytest.mark.parametrize("labels, named", [
    (["a", "a"], "the label 'a' appears twice"),
    (["yes", "no", "yes"], "the label 'yes' appears twice"),
    ([], "at least 2 labels"),
    (["only"], "at least 2 labels"),
    (["a", ""], "every label must be a non-empty string, got ''"),
    (["a", None], "every label must be a non-empty string, got None"),
    (["a", 1], "every label must be a non-empty string, got 1"),
    ("ab", "must be a list of label names, got 'ab'"),
])
def test_add_classification_head_refuses_bad_labels(labels, named):
    model = tiny()
    with pytest.raises(MiniftError, match=named):
        model.add_classification_head(labels)
    assert model.head_kind == "lm" and "score.weight" not in model.params       # refused before anything changed


# ---- saving onto a file ------------------------------------------------------------------------------------------

def test_save_pretrained_and_save_peft_onto_a_file_are_refused(tmp_path):
    afile = tmp_path / "taken"
    afile.write_text("mine")
    model = tiny()
    with pytest.raises(MiniftError, match=rf"model folder {afile} is a file"):
        model.save_pretrained(afile)
    with pytest.raises(MiniftError, match=rf"model folder {afile / 'sub'} cannot be made: {afile} is a file"):
        model.save_pretrained(afile / "sub")
    lora = attach_lora(model, LoRAConfig(r=2, targets=("c_attn",)))
    with pytest.raises(MiniftError, match=rf"adapter folder {afile} is a file"):
        lora.save_peft(afile)
    assert afile.read_text() == "mine"


def test_save_pretrained_with_a_tokenizer_writes_a_complete_folder(tmp_path):
    from minift.base import load_base
    tok = shipped_tokenizer()
    tiny(vocab_size=2048).save_pretrained(tmp_path / "m", tok)
    _, loaded = load_base(tmp_path / "m")
    assert loaded.to_json() == tok.to_json()


# ---- files that are there but cannot be read ---------------------------------------------------------------------

def _deny(monkeypatch, path):
    """Fault injection (tests run as root here, where chmod 000 does not stop a read): minift.formats.io's open() of
    `path` fails as it would for a file without read permission."""
    def fake_open(file, *args, **kw):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, *args, **kw)
    monkeypatch.setattr(minift.formats.io, "open", fake_open, raising=False)


def test_unreadable_files_say_permission_denied_naming_the_file(tmp_path, monkeypatch):
    model = tiny(vocab_size=2048)
    model.save_pretrained(tmp_path, shipped_tokenizer())
    for name, read, what in (("config.json", lambda p: load_json(p, "model config"), "model config"),
                             ("model.safetensors", load_safetensors, "weights file"),
                             ("tokenizer.json", Tokenizer.load, "tokenizer file")):
        with monkeypatch.context() as m:
            _deny(m, tmp_path / name)
            with pytest.raises(MiniftError) as e:
                read(tmp_path / name)
        assert str(e.value) == f"{what} {tmp_path / name} cannot be read: permission denied"


def test_an_unreadable_model_folder_is_named_by_from_pretrained(tmp_path, monkeypatch):
    tiny().save_pretrained(tmp_path)
    _deny(monkeypatch, tmp_path / "model.safetensors")
    with pytest.raises(MiniftError, match=r"model weights .*model\.safetensors cannot be read: permission denied"):
        GPT.from_pretrained(tmp_path)


def test_training_sources_refuse_float_ids_instead_of_truncating_them():
    from minift.data.sources import ClassificationSource, LMSource
    with pytest.raises(MiniftError, match="LMSource: token_ids must be integers, got an array of dtype float64"):
        LMSource(np.arange(200) + 0.5, block_size=8, batch_size=2)
    with pytest.raises(MiniftError, match="ClassificationSource: label_ids must be integers"):
        ClassificationSource([[1, 2], [3]], [0.0, 1.0], pad_id=0, max_len=8, batch_size=2)
    assert LMSource(list(range(200)), block_size=8, batch_size=2).token_ids.dtype == np.int64


# ---- a second round: arguments of the wrong kind -----------------------------------------------------------------

@pytest.mark.parametrize("call, says", [
    (lambda: GPTConfig.preset(["tiny"]), "preset ['tiny']"),
    (lambda: tiny().forward([[1, 2], [3]]), "input_ids must be a 2-D integer array"),
    (lambda: attach_lora(tiny(), LoRAConfig(), seed=-1), "seed=-1"),
    (lambda: attach_lora(None, LoRAConfig()), "model must be a minift.GPT"),
    (lambda: load_peft(None, "."), "model must be a minift.GPT"),
    (lambda: GPT.from_pretrained(None), "model folder None"),
    (lambda: tiny().save_pretrained(""), "model folder ''"),
])
def test_arguments_of_the_wrong_kind_are_named(call, says):
    with pytest.raises(MiniftError, match=None) as e:
        call()
    assert says in str(e.value)


def test_an_adapter_config_that_is_not_an_object_is_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(MiniftError, match="adapter_config.json holds a JSON list"):
        load_peft(tiny(), tmp_path)
    with pytest.raises(MiniftError, match="is a file"):
        load_peft(tiny(), tmp_path / "adapter_config.json")
