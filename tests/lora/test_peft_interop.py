"""minift adapters and Hugging Face PEFT read each other's files and compute the same logits (float64, rtol 1e-9).

A random transformers GPT-2 is saved, loaded into minift with GPT.from_pretrained, adapted (all four linears of every
block, A and B random: B = 0 would make any adapter "agree"), saved with save_peft and loaded by
peft.PeftModel.from_pretrained onto a fresh copy of the same transformers model — and the other way round. Skipped
cleanly where torch, transformers or peft is missing.
"""
import warnings

import numpy as np
import pytest

from minift import GPT, GPTConfig, LoRAConfig, attach_lora, load_peft

from helpers import randomize

torch = pytest.importorskip("torch", reason="torch not installed: PEFT cross-check skipped")
transformers = pytest.importorskip("transformers", reason="transformers not installed: PEFT cross-check skipped")
peft = pytest.importorskip("peft", reason="peft not installed: PEFT cross-check skipped")

RTOL, ATOL = 1e-9, 1e-12
CFG = GPTConfig.preset("tiny")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")   # PEFT: "unexpected
# keyword ['minift']" (our fingerprint key) and Conv1D fan_in_fan_out notes


def hf_gpt2(classes=0):
    """A random transformers GPT-2 in float64, off the neutral init (LayerNorms and biases random), eval mode."""
    torch.manual_seed(0)
    hcfg = transformers.GPT2Config(vocab_size=CFG.vocab_size, n_positions=CFG.n_ctx, n_embd=CFG.n_embd,
                                   n_layer=CFG.n_layer, n_head=CFG.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, num_labels=max(classes, 2), pad_token_id=CFG.vocab_size - 1)
    cls = transformers.GPT2ForSequenceClassification if classes else transformers.GPT2LMHeadModel
    ref = cls(hcfg).double().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return ref


def ids_batch():
    return np.random.default_rng(0).integers(0, CFG.vocab_size - 1, (2, 7))          # no pad token


def peft_logits(ref, adapter_dir, ids):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(ref, adapter_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("kwargs", [dict(), dict(rslora=True), dict(use_dora=True),
                                    dict(use_dora=True, rslora=True, dropout=0.1, targets=("c_attn", "c_proj"))])
def test_minift_adapter_loads_in_peft(tmp_path, kwargs):
    hf_gpt2().save_pretrained(tmp_path / "base", safe_serialization=True)
    model = GPT.from_pretrained(tmp_path / "base", dtype="float64")
    config = LoRAConfig(**{"r": 4, "alpha": 8, "targets": "all-linear", **kwargs})
    lora = randomize(attach_lora(model, config), seed=2).eval()
    lora.save_peft(tmp_path / "adapter")
    ids = ids_batch()
    np.testing.assert_allclose(model.forward(ids), peft_logits(hf_gpt2(), tmp_path / "adapter", ids),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("code, double_quant", [("nf4", False), ("nf4", True), ("int4", False), ("fp4", True)])
def test_qlora_adapter_loads_in_peft_over_the_dequantised_base(tmp_path, code, double_quant):
    """A QLoRA adapter is a plain LoRA file for PEFT: on the dequantised base, which a copy of the 4-bit model writes
    (GPT.to() dequantises), PEFT computes minift's QLoRA logits; load_peft on the original float base quantises it
    again and gives the same logits bit for bit."""
    hf_gpt2().save_pretrained(tmp_path / "base", safe_serialization=True)
    model = GPT.from_pretrained(tmp_path / "base", dtype="float64")
    config = LoRAConfig(r=4, alpha=8, quant=code, double_quant=double_quant)
    lora = randomize(attach_lora(model, config), seed=2).eval()
    lora.save_peft(tmp_path / "adapter")
    model.to().save_pretrained(tmp_path / "dequantised")
    ids = ids_batch()
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "dequantised").double().eval()
    np.testing.assert_allclose(model.forward(ids), peft_logits(ref, tmp_path / "adapter", ids), rtol=RTOL, atol=ATOL)
    again = load_peft(GPT.from_pretrained(tmp_path / "base", dtype="float64"), tmp_path / "adapter")
    assert again.config == config
    np.testing.assert_array_equal(again.model.forward(ids), model.forward(ids))


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_adapter_loads_in_minift(tmp_path, use_dora):
    ref = hf_gpt2()
    ref.save_pretrained(tmp_path / "base", safe_serialization=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(ref, peft.LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn", "c_proj", "c_fc"],
                                                      use_dora=use_dora, fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.2)                     # B ≠ 0, m moved
    pm.save_pretrained(tmp_path / "adapter")
    ids = ids_batch()
    with torch.no_grad():
        expected = pm.eval()(torch.tensor(ids)).logits.numpy()
    model = GPT.from_pretrained(tmp_path / "base", dtype="float64")
    lora = load_peft(model, tmp_path / "adapter")
    assert len(lora.modules) == 4 * CFG.n_layer and lora.config.use_dora == use_dora
    np.testing.assert_allclose(model.forward(ids), expected, rtol=RTOL, atol=ATOL)


def test_classification_head_travels_as_modules_to_save(tmp_path):
    """A SEQ_CLS adapter: the trained head goes with it (PEFT's modules_to_save ["score"])."""
    ref = hf_gpt2(classes=3)
    ref.save_pretrained(tmp_path / "base", safe_serialization=True)
    model = GPT.from_pretrained(tmp_path / "base", dtype="float64")
    assert model.head_kind == "classification"
    lora = randomize(attach_lora(model, LoRAConfig(r=2, targets=("c_attn", "mlp.c_proj"))), seed=4)
    model.params["score.weight"] += np.random.default_rng(5).standard_normal(model.params["score.weight"].shape)
    lora.save_peft(tmp_path / "adapter")
    ids = ids_batch()
    np.testing.assert_allclose(model.forward(ids), peft_logits(hf_gpt2(classes=3), tmp_path / "adapter", ids),
                               rtol=RTOL, atol=ATOL)


def test_pissa_adapters_mean_the_original_base_in_both_directions(tmp_path):
    """PEFT reads init_lora_weights="pissa" as: make the residual from the base you are given, then load A and B.
    Both sides must therefore pair a PiSSA file with the ORIGINAL base. float32: PEFT refuses PiSSA in float64."""
    ids, rtol, atol = ids_batch(), 1e-4, 1e-5
    base = hf_gpt2().float()
    base.save_pretrained(tmp_path / "base", safe_serialization=True)

    def original():
        return transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    model = GPT.from_pretrained(tmp_path / "base")                            # minift -> PEFT
    lora = attach_lora(model, LoRAConfig(r=4, alpha=8, targets="all-linear", init="pissa"))
    for a in lora.params.values():
        a *= 1.1                                                                # trained a little: A, B moved
    lora.eval().save_peft(tmp_path / "ours")
    np.testing.assert_allclose(model.forward(ids), peft_logits(original(), tmp_path / "ours", ids), rtol, atol)
    with warnings.catch_warnings():                                             # PEFT -> minift
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(original(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                             init_lora_weights="pissa", fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.mul_(1.1)
        expected = pm.eval()(torch.tensor(ids)).logits.numpy()
    pm.save_pretrained(tmp_path / "theirs")
    model = GPT.from_pretrained(tmp_path / "base")
    load_peft(model, tmp_path / "theirs")
    np.testing.assert_allclose(model.forward(ids), expected, rtol, atol)


def test_peft_and_the_hub_read_the_model_card_and_peft_version(tmp_path):
    """The files save_peft writes beside the weights, read by PEFT (peft_version) and by huggingface_hub, which
    parses README.md's front matter as a model card, as it does for the cards PEFT writes."""
    from minift.lora import PEFT_FORMAT_VERSION
    hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub not installed")
    model = GPT(CFG, seed=0)
    attach_lora(model, LoRAConfig(r=2)).save_peft(tmp_path, base_model_name_or_path="gpt2")
    assert peft.PeftConfig.from_pretrained(tmp_path).peft_version == PEFT_FORMAT_VERSION
    card = hub.ModelCard.load(tmp_path / "README.md")
    assert (card.data.library_name, card.data.base_model, card.data.pipeline_tag) == ("peft", "gpt2",
                                                                                         "text-generation")
    assert "lora" in card.data.tags
