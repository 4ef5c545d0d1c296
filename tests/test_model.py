"""The whole model: gradient check of every parameter, invariants, freezing, heads, and GPT-2 folders."""
import json

import numpy as np
import pytest

import minift
from minift import GPT, GPTConfig, MiniftError
from minift.backend import to_numpy
from minift.gradcheck import check_function
from minift.model import param_shapes

# Whole-model check in float64: centered differences with h = 1e-5 through ~20 ops; a correct backward scores
# ~1e-7 at worst (sampled entries), a wrong one ~1e-1. 1e-4 leaves room for the longer chain of roundings.
MODEL_TOL = 1e-4


def tiny64(**overrides):
    return GPTConfig.preset("tiny", **overrides)


def batch(cfg, B=2, T=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    return ids, targets


def perturbed(model, seed=1, scale=0.1):
    """Move every parameter off GPT-2's init (LayerNorm gains 1, biases 0 are neutral points that hide bugs)."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        v += model.xp.asarray(rng.standard_normal(v.shape) * scale).astype(v.dtype)
    return model


def test_whole_model_gradcheck_every_parameter(xp):
    cfg = tiny64()
    model = perturbed(GPT(cfg, seed=0, dtype="float64", device="gpu" if xp is not np else "cpu"))
    ids, targets = batch(cfg)
    targets[0, :2] = -100                                     # some positions without a loss
    loss, grads = model.loss_and_grads(ids, targets)
    assert set(grads) == set(model.params)
    report = check_function(lambda: model.loss(ids, targets), model.params, grads, max_entries=6, tol=MODEL_TOL)
    report.assert_ok()


def test_classification_head_gradcheck_with_padding():
    cfg = tiny64()
    model = perturbed(GPT(cfg, seed=0, dtype="float64"))
    model.add_classification_head(["negative", "positive", "neutral"], seed=3)
    model.params["score.weight"] *= 10                        # a head that matters, so its gradient is not tiny
    ids, _ = batch(cfg, B=3, T=5)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    labels = np.array([2, 0, 1])
    loss, grads = model.loss_and_grads(ids, labels, attention_mask=mask)
    assert "score.weight" in grads and grads["score.weight"].shape == (3, cfg.n_embd)
    report = check_function(lambda: model.loss(ids, labels, attention_mask=mask), model.all_params(), grads,
                            max_entries=5, tol=MODEL_TOL)
    report.assert_ok()


def test_tied_wte_gradient_is_the_sum_of_both_uses():
    cfg = tiny64()
    model = perturbed(GPT(cfg, seed=0, dtype="float64"))
    ids, targets = batch(cfg)
    _, grads = model.loss_and_grads(ids, targets)
    model.frozen = {"wpe.weight"}                             # freezing wpe must not change wte's gradient
    _, grads2 = model.loss_and_grads(ids, targets)
    np.testing.assert_allclose(grads["wte.weight"], grads2["wte.weight"], rtol=1e-12)
    # token ids that never occur get gradient only from the LM head (softmax over every vocab entry)
    unused = np.setdiff1d(np.arange(cfg.vocab_size), ids)[0]
    assert np.abs(grads["wte.weight"][unused]).sum() > 0


def test_frozen_parameters_get_no_gradient():
    cfg = tiny64()
    model = GPT(cfg, seed=0, dtype="float64")
    frozen = {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.ln_2.bias"}
    model.frozen = set(frozen)
    _, grads = model.loss_and_grads(*batch(cfg))
    assert set(grads) == set(model.params) - frozen
    assert model.num_params(trainable_only=True) == model.num_params() - sum(model.params[k].size for k in frozen)


def test_backward_floor_from_what_trains():
    from minift.model import backward_floor
    assert backward_floor([], 4) == 5                                         # nothing trains
    assert backward_floor(["score.weight"], 4) == 5                           # a classification head alone
    assert backward_floor(["score.weight", "ln_f.bias"], 4) == 4
    assert backward_floor(["h.3.mlp.c_fc.weight", "h.2.ln_1.bias", "ln_f.weight"], 4) == 2
    assert backward_floor(["h.1.attn.c_attn.lora_A.weight", "h.3.attn.c_attn.weight"], 4) == 1   # adapters count
    assert backward_floor(["h.3.ln_2.weight", "wpe.weight"], 4) == -1          # an embedding: all the way down
    assert backward_floor(["h.10.ln_2.weight", "h.2.ln_2.weight"], 12) == 2    # block numbers, not strings


@pytest.mark.parametrize("frozen_blocks,head", [(2, "lm"), (1, "classification"), (4, "classification")])
def test_the_backward_stops_at_the_lowest_block_that_trains(monkeypatch, frozen_blocks, head):
    """Below the lowest trainable tensor nothing needs a gradient: those blocks get no backward (counted through
    attention_backward) and keep no caches, and every gradient that is computed is bitwise what the whole backward
    (record=True goes all the way down) gives."""
    import minift.model
    cfg = GPTConfig.preset("tiny", n_layer=4)
    model = perturbed(GPT(cfg, seed=0, dtype="float64"))
    ids, targets = batch(cfg, B=3, T=5)
    if head == "classification":
        model.add_classification_head(["a", "b"], seed=1)
        targets = np.array([0, 1, 1])
    model.frozen = {"wte.weight", "wpe.weight"} | {n for n in model.params
                                                  if n.startswith(tuple(f"h.{i}." for i in range(frozen_blocks)))}
    if frozen_blocks == 4:
        model.frozen |= {"ln_f.weight", "ln_f.bias"}          # the head alone trains: no block backward at all
    calls = []
    real = minift.model.attention_backward
    monkeypatch.setattr(minift.model, "attention_backward", lambda dy, c: calls.append(1) or real(dy, c))
    _, grads = model.loss_and_grads(ids, targets)
    assert len(calls) == 4 - frozen_blocks
    assert model.backward_floor() == (frozen_blocks if frozen_blocks < 4 else 5)
    calls.clear()
    _, whole = model.loss_and_grads(ids, targets, record=True)
    assert len(calls) == 4
    assert set(grads) == set(whole) == set(model.trainable_params())
    for name in grads:
        np.testing.assert_array_equal(grads[name], whole[name], err_msg=name)


def test_causality_of_the_model():
    cfg = tiny64()
    model = perturbed(GPT(cfg, seed=0, dtype="float64"))
    ids, _ = batch(cfg, B=1, T=10)
    logits = model.forward(ids)
    changed = ids.copy()
    changed[0, 6:] = (changed[0, 6:] + 1) % cfg.vocab_size
    logits2 = model.forward(changed)
    np.testing.assert_array_equal(logits[:, :6], logits2[:, :6])
    assert not np.allclose(logits[:, 6:], logits2[:, 6:])


def test_gpt2_initialisation_statistics():
    cfg = GPTConfig.preset("demo")
    model = GPT(cfg, seed=0)
    P = model.params
    assert P["wte.weight"].dtype == np.float32
    assert abs(P["wte.weight"].std() - 0.02) < 1e-3
    assert abs(P["h.0.mlp.c_proj.weight"].std() - 0.02 / np.sqrt(2 * cfg.n_layer)) < 1e-3
    assert (P["h.0.ln_1.weight"] == 1).all() and (P["h.0.attn.c_attn.bias"] == 0).all()
    assert {k: v.shape for k, v in P.items()} == param_shapes(cfg)
    same = GPT(cfg, seed=0)
    assert all(np.array_equal(P[k], same.params[k]) for k in P)


def test_float32_forward_and_grads_stay_float32():
    cfg = tiny64()
    model = GPT(cfg, seed=0)
    loss, grads = model.loss_and_grads(*batch(cfg))
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())
    assert abs(loss - np.log(cfg.vocab_size)) < 0.1           # near-uniform predictions at init


def test_presets_and_config_errors():
    assert GPTConfig.preset("gpt2").vocab_size == 50257
    with pytest.raises(MiniftError, match="preset 'huge'"):
        GPTConfig.preset("huge")
    with pytest.raises(MiniftError, match="divisible by n_head"):
        GPTConfig(n_embd=10, n_head=3)


def test_bad_inputs_are_named():
    cfg = tiny64()
    model = GPT(cfg, seed=0)
    with pytest.raises(MiniftError, match="n_ctx=64"):
        model.forward(np.zeros((1, 65), dtype=np.int64))
    with pytest.raises(MiniftError, match="input_ids"):
        model.forward(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(MiniftError, match="targets"):
        model.loss_and_grads(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(MiniftError, match="attention_mask"):
        model.forward(np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 4)))
    with pytest.raises(MiniftError, match="dtype"):
        GPT(cfg, dtype="float16")


# ---- Hugging Face GPT-2 folders ----------------------------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    model = perturbed(GPT(tiny64(), seed=0))
    model.save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["n_positions"] == 64 and hf["architectures"] == ["GPT2LMHeadModel"]
    loaded = GPT.from_pretrained(tmp_path)
    assert all(np.array_equal(model.params[k], loaded.params[k]) for k in model.params)
    assert loaded.fingerprint() == model.fingerprint()


def test_load_accepts_transformer_prefix_and_ignores_buffers(tmp_path):
    from minift.formats.io import save_json, save_safetensors
    cfg = tiny64()
    model = perturbed(GPT(cfg, seed=0))
    tensors = {"transformer." + k: to_numpy(v) for k, v in model.params.items()}
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), dtype=np.float32))
    tensors["lm_head.weight"] = to_numpy(model.params["wte.weight"])
    save_json(cfg.to_hf(), tmp_path / "config.json")
    save_safetensors(tensors, tmp_path / "model.safetensors")
    loaded = GPT.from_pretrained(tmp_path, dtype="float64")
    assert loaded.params["h.1.mlp.c_fc.weight"].dtype == np.float64
    np.testing.assert_allclose(loaded.forward([[1, 2, 3]]), model.forward([[1, 2, 3]]), atol=1e-5)


def test_load_refuses_mismatched_shapes_and_missing_files(tmp_path):
    model = GPT(tiny64(), seed=0)
    model.save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["n_embd"] = 32
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(MiniftError, match="shape"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(MiniftError, match="not found"):
        GPT.from_pretrained(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:1000])
    hf["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(MiniftError, match="truncated or corrupted"):
        GPT.from_pretrained(tmp_path)


def _hf_gpt2(transformers, torch, cfg, seed=0):
    torch.manual_seed(seed)
    hcfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.n_embd,
                                   n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0)
    ref = transformers.GPT2LMHeadModel(hcfg).double().eval()
    with torch.no_grad():                                     # off the neutral init: LayerNorms and biases random
        for name, p in ref.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return ref


def test_logits_and_every_gradient_match_transformers(tmp_path):
    torch = pytest.importorskip("torch", reason="oracle extra not installed")
    transformers = pytest.importorskip("transformers", reason="oracle extra not installed")
    cfg = tiny64()
    ref = _hf_gpt2(transformers, torch, cfg)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model = GPT.from_pretrained(tmp_path, dtype="float64")
    ids, targets = batch(cfg, B=2, T=7)
    out = ref(torch.tensor(ids))
    np.testing.assert_allclose(model.forward(ids), out.logits.detach().numpy(), rtol=1e-9, atol=1e-9)
    loss, grads = model.loss_and_grads(ids, targets)
    ref_loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), torch.tensor(targets).flatten())
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) < 1e-10
    ref_grads = {k.removeprefix("transformer."): p.grad.numpy() for k, p in ref.named_parameters()}
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-7, atol=1e-10, err_msg=name)


def test_saved_folder_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch", reason="oracle extra not installed")
    transformers = pytest.importorskip("transformers", reason="oracle extra not installed")
    model = perturbed(GPT(tiny64(), seed=0, dtype="float64"))
    model.save_pretrained(tmp_path)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, torch_dtype=torch.float64).eval()
    ids = np.array([[5, 9, 2, 7]])
    np.testing.assert_allclose(model.forward(ids), ref(torch.tensor(ids)).logits.detach().numpy(), rtol=1e-9,
                               atol=1e-9)


def test_saved_config_uses_transformers_dtype_key_and_both_keys_load(tmp_path):
    """transformers writes "dtype" since 4.56 ("torch_dtype" before); minift writes "dtype" too, and a folder with
    either key loads (the shipped base still says torch_dtype). Where transformers is installed, it reads ours."""
    GPT(tiny64(), seed=0, dtype="float64").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "float64" and "torch_dtype" not in config
    reference = GPT.from_pretrained(tmp_path).forward(np.array([[1, 2, 3]]))
    config["torch_dtype"] = config.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    np.testing.assert_array_equal(GPT.from_pretrained(tmp_path).forward(np.array([[1, 2, 3]])), reference)
    config["dtype"] = config.pop("torch_dtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch = pytest.importorskip("torch", reason="oracle extra not installed")
    transformers = pytest.importorskip("transformers", reason="oracle extra not installed")
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56):
        assert transformers.AutoConfig.from_pretrained(tmp_path).dtype == torch.float64


def test_public_facade_names():
    for name in ("GPT", "GPTConfig", "check_op", "check_function", "MiniftError"):
        assert hasattr(minift, name)


def test_hugging_face_options_that_change_gpt2s_function_are_refused(tmp_path):
    """An untied LM head or another attention scaling would load 'fine' and compute a different model."""
    from minift.formats.io import load_safetensors, save_safetensors
    GPT(GPTConfig.preset("tiny"), seed=0).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in (("tie_word_embeddings", False), ("scale_attn_weights", False),
                       ("scale_attn_by_inverse_layer_idx", True), ("activation_function", "relu")):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(MiniftError, match=key):
            GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors, _ = load_safetensors(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["wte.weight"] + 1.0
    save_safetensors(tensors, tmp_path / "model.safetensors")
    with pytest.raises(MiniftError, match="lm_head.weight differs from wte.weight"):
        GPT.from_pretrained(tmp_path)
    tensors["lm_head.weight"] = tensors["wte.weight"].copy()                      # a stored tied copy is fine
    save_safetensors(tensors, tmp_path / "model.safetensors")
    GPT.from_pretrained(tmp_path)


def test_an_exported_classifier_names_its_pad_and_end_of_text_ids(tmp_path):
    """transformers' GPT2ForSequenceClassification reads a row's last token as the last id != pad_token_id, and
    refuses batches larger than one without it."""
    from minift.formats.tokenizer import Tokenizer
    from minift.data import data_dir
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size), seed=0)
    model.add_classification_head(["no", "yes"])
    model.save_pretrained(tmp_path, tok)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["pad_token_id"], config["eos_token_id"]) == (tok.pad_id, tok.eot_id)
    assert GPT.from_pretrained(tmp_path).labels == ["no", "yes"]


def test_whole_model_gradcheck_with_dropout():
    """GPT-2's residual and embedding dropout in the backward: the same generator seed gives the same masks on every
    call, so the loss is a fixed function of the weights that centered differences can check."""
    cfg = GPTConfig.preset("tiny", dropout=0.3)
    model = perturbed(GPT(cfg, seed=0, dtype="float64"))
    ids, targets = batch(cfg)
    loss, grads = model.loss_and_grads(ids, targets, rng=np.random.default_rng(7))
    assert loss != model.loss(ids, targets)                   # dropout really is applied
    report = check_function(lambda: model.loss_and_grads(ids, targets, rng=np.random.default_rng(7))[0],
                            model.params, grads, max_entries=6, tol=MODEL_TOL)
    report.assert_ok()


def test_a_padded_row_classifies_as_the_unpadded_sequence_does():
    """The head reads the last real token: padding (whatever ids it holds) changes nothing. A gradient check cannot
    see a head that reads the wrong position, since the backward would follow the same wrong forward."""
    cfg = tiny64()
    model = perturbed(GPT(cfg, seed=0, dtype="float64"))
    model.add_classification_head(["a", "b", "c"], seed=3)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, (3, 6))
    mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=bool)
    logits = model.forward(ids, attention_mask=mask)
    for b in range(3):
        n = int(mask[b].sum())
        np.testing.assert_allclose(logits[b], model.forward(ids[b:b + 1, :n])[0], rtol=1e-10, atol=1e-12)
    junk = ids.copy()
    junk[~mask] = (junk[~mask] + 7) % cfg.vocab_size
    np.testing.assert_array_equal(model.forward(junk, attention_mask=mask), logits)


def test_a_later_loss_call_leaves_a_kept_record_alone():
    """loss_and_grads(record=True) fills model.record; a later forward-only loss() (a gradient check's) must not write
    its own activations into that dict, which a reader is still using to rebuild gradients."""
    model = GPT(GPTConfig.preset("tiny"), seed=0, dtype="float64")
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 5))
    model.loss_and_grads(ids, ids, record=True)
    kept = model.record
    before = {k: np.array(v, copy=True) for k, v in kept.items()}
    model.loss(np.roll(ids, 1), ids)
    assert model.record is None and kept.keys() == before.keys()
    assert all(np.array_equal(kept[k], before[k]) for k in before)
