"""QLoRA attached to a model (attach_lora with LoRAConfig(quant=...)): the model keeps each adapted W in 4 bits and
no float copy, computes exactly what LoRA computes on the dequantised base (logits, loss, every gradient, dropout
included), never computes a dW, refuses to merge in place, and gives back floats on detach and in merged_model."""
import numpy as np
import pytest

from minift import LoRAConfig, attach_lora
from minift.errors import MiniftError
from minift.methods import setup_method
from minift.quant import CODES, Quantized, dequantize, quantize

from helpers import batch, randomize, tiny_model

CASES = [(code, dq) for code in CODES for dq in (False, True)]


def qlora_and_lora(code="nf4", double_quant=False, dropout=0.0, targets="all-linear"):
    """The same tiny base twice: QLoRA on one, plain LoRA on the other after its adapted W are replaced by
    deq(quant(W)); the same seed draws the same A, B and dropout stream for both."""
    q_model, l_model = tiny_model(), tiny_model()
    qlora = randomize(attach_lora(q_model, LoRAConfig(r=3, quant=code, double_quant=double_quant, dropout=dropout,
                                                      targets=targets), seed=5))
    for m in qlora.modules:
        l_model.params[m + ".weight"][...] = dequantize(q_model.params[m + ".weight"])    # [I, O] float64
    lora = randomize(attach_lora(l_model, LoRAConfig(r=3, dropout=dropout, targets=targets), seed=5))
    return qlora, lora


def test_the_model_keeps_the_adapted_weights_in_4_bits_only():
    model = tiny_model()
    floats = {k: v.nbytes for k, v in model.params.items()}
    lora = attach_lora(model, LoRAConfig(r=2, quant="nf4", targets=("c_attn", "mlp.c_proj")))
    for name, p in model.params.items():
        adapted = name.removesuffix(".weight") in lora.modules and name.endswith(".weight")
        assert isinstance(p, Quantized) == adapted, name
        if adapted:      # float64 base: 64 bits a weight become 4 + 32/64
            assert p.nbytes * 64 == pytest.approx(floats[name] * 4.5, rel=0.02), name
            assert model.adapters[name.removesuffix(".weight")].Qw is p   # one object: the adapter's and the model's
    assert model.num_params() == tiny_model().num_params() + sum(a.size for a in lora.params.values())
    assert not any(isinstance(v, Quantized) for v in model.trainable_params().values())


@pytest.mark.parametrize("code, double_quant", CASES)
def test_qlora_computes_what_lora_computes_on_the_dequantised_base(code, double_quant):
    qlora, lora = qlora_and_lora(code, double_quant)
    ids, targets = batch(qlora.model.cfg)
    np.testing.assert_allclose(qlora.model.forward(ids), lora.model.forward(ids), rtol=1e-12, atol=1e-12)
    q_loss, q_grads = qlora.model.loss_and_grads(ids, targets)
    l_loss, l_grads = lora.model.loss_and_grads(ids, targets)
    assert q_loss == pytest.approx(l_loss, rel=1e-13)
    assert set(q_grads) == set(l_grads) and not any(n.endswith("attn.c_attn.weight") for n in q_grads)
    for name in l_grads:
        np.testing.assert_allclose(q_grads[name], l_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_adapter_dropout_draws_the_same_masks_as_lora():
    qlora, lora = qlora_and_lora(dropout=0.3)
    ids, targets = batch(qlora.model.cfg, seed=3)
    for _ in range(2):                       # the second step draws new masks from the same stream
        q_loss, q_grads = qlora.model.loss_and_grads(ids, targets)
        l_loss, l_grads = lora.model.loss_and_grads(ids, targets)
        assert q_loss == pytest.approx(l_loss, rel=1e-13)
        for name in l_grads:
            np.testing.assert_allclose(q_grads[name], l_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_merging_in_place_is_refused_and_merged_model_is_the_dequantised_base_plus_delta():
    qlora, lora = qlora_and_lora("nf4", True, targets=("c_fc",))
    with pytest.raises(MiniftError, match="cannot merge into its 4-bit base"):
        qlora.merge()
    merged = qlora.merged_model()
    assert not merged.adapters and not any(isinstance(v, Quantized) for v in merged.params.values())
    ids, _ = batch(merged.cfg)
    np.testing.assert_allclose(merged.forward(ids), qlora.model.forward(ids), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(merged.forward(ids), lora.merged_model().forward(ids), rtol=1e-11, atol=1e-12)


def test_detach_puts_the_dequantised_weights_back_and_unfreezes():
    qlora, lora = qlora_and_lora("int4")
    model, fingerprint = qlora.model, qlora.base_fingerprint
    qlora.detach()
    assert not model.adapters and not model.frozen
    for m in qlora.modules:
        w = model.params[m + ".weight"]
        assert isinstance(w, np.ndarray) and w.dtype == model.dtype
        np.testing.assert_array_equal(w, lora.model.params[m + ".weight"])
    assert model.fingerprint() == fingerprint          # the fingerprint of a 4-bit base is its dequantised one's
    lora.detach()
    ids, _ = batch(model.cfg)
    np.testing.assert_array_equal(model.forward(ids), lora.model.forward(ids))


def test_a_copy_of_a_4_bit_model_is_dequantised():
    qlora, lora = qlora_and_lora("fp4")
    copy = qlora.model.to(dtype="float32")
    for m in qlora.modules:
        assert copy.params[m + ".weight"].dtype == np.float32
        np.testing.assert_array_equal(copy.params[m + ".weight"], lora.model.params[m + ".weight"].astype("f4"))


def test_method_qlora_defaults_to_nf4_and_lora_refuses_a_quantised_config():
    model = tiny_model()
    handle = setup_method(model, "qlora", LoRAConfig(r=2))
    assert handle.config.quant == "nf4" and "nf4 base" in repr(handle)
    with pytest.raises(MiniftError, match="that is method 'qlora'"):
        setup_method(tiny_model(), "lora", LoRAConfig(r=2, quant="int4"))
    kept = setup_method(tiny_model(), "qlora", LoRAConfig(r=2, quant="fp4", double_quant=True))
    assert (kept.config.quant, kept.config.double_quant) == ("fp4", True)


@pytest.mark.parametrize("kwargs, match", [(dict(quant="nf8"), "quant='nf8' is not one of"),
                                           (dict(double_quant=True), "it needs quant"),
                                           (dict(quant="nf4", use_dora=True), "QLoRA with DoRA"),
                                           (dict(quant="nf4", double_quant="yes"), "double_quant='yes'")])
def test_bad_quantisation_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(MiniftError, match=match):
        LoRAConfig(**kwargs)


def test_pissa_quantises_the_residual():
    """PiSSA takes the top-r part of W into B A; what is left, W − B A, is what QLoRA stores in 4 bits."""
    model, plain = tiny_model(), tiny_model()
    qlora = attach_lora(model, LoRAConfig(r=2, init="pissa", quant="nf4", targets=("c_attn",)))
    pissa = attach_lora(plain, LoRAConfig(r=2, init="pissa", targets=("c_attn",)))
    for m in qlora.modules:
        residual = plain.params[m + ".weight"]
        np.testing.assert_array_equal(dequantize(model.params[m + ".weight"]), dequantize(quantize(residual)))
        np.testing.assert_array_equal(qlora.adapters[m].B, pissa.adapters[m].B)


def test_a_4_bit_model_is_not_saved_as_a_gpt2_folder(tmp_path):
    qlora, _ = qlora_and_lora()
    with pytest.raises(MiniftError, match=r"holds 8 weights in 4 bits \(h\.0\.attn\.c_attn\.weight"):
        qlora.model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model").exists()
    qlora.merged_model().save_pretrained(tmp_path / "merged")           # floats: a plain GPT-2 folder


@pytest.mark.parametrize("init", ["default", "pissa"])
def test_tuned_weights_are_the_float_base_before_any_training(init):
    """What QLoRA has learned is ΔW − ΔW at the start: nothing yet. tuned_weights gives W0 back (PiSSA's top-r part
    and the quantisation error are no update), where effective_weights gives deq(W) + s·BA."""
    base = tiny_model()
    qlora = attach_lora(base.to(), LoRAConfig(r=3, init=init, quant="nf4", targets=("c_attn", "mlp.c_fc")))
    for name, w in qlora.tuned_weights(base.params).items():
        np.testing.assert_allclose(w, base.params[name], rtol=0, atol=1e-12, err_msg=name)
        assert np.abs(qlora.effective_weights()[name] - base.params[name]).max() > 1e-3   # the 4-bit base's error


def test_a_double_quantised_adapter_on_the_dequantised_base_says_which_base_it_sits_on(tmp_path):
    """On the original base load_peft rebuilds the 4 bits exactly; on the dequantised one double-quantised scales
    are derived again: the outputs differ by a little, and the handle keeps the model's own fingerprint."""
    from minift import load_peft
    base = tiny_model()
    qlora = randomize(attach_lora(base.to(), LoRAConfig(r=3, quant="nf4", double_quant=True)))
    qlora.save_peft(tmp_path / "adapter")
    ids, _ = batch(base.cfg)
    exact = load_peft(base.to(), tmp_path / "adapter")
    np.testing.assert_array_equal(exact.model.forward(ids), qlora.model.forward(ids))
    assert exact.base_fingerprint == qlora.base_fingerprint == exact.model.fingerprint()
    again = load_peft(qlora.model.to(), tmp_path / "adapter")                  # the dequantised base
    close, same = again.model.forward(ids), qlora.model.forward(ids)
    np.testing.assert_allclose(close, same, rtol=0, atol=1e-2)       # logits of size ~1: scales within 8-bit steps
    assert not np.array_equal(close, same)
    assert again.base_fingerprint == again.model.fingerprint()
