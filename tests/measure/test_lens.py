"""The lens (minift/measure/lens.py): full fine-tuning's gradient G and LoRA's dA, dB, step and subspaces on one batch.

Tolerances (float64): the identities dA = s·BᵀGᵀ, dB = s·GᵀAᵀ only reorder the same products of one backward:
~1e-15 relative, checked at 1e-10. G against a separate full fine-tuning backward of the merged model goes through a
different forward (W + ΔW summed once instead of the branch added to x W): agreement ~1e-12, checked at 1e-9.
Every check except the init test runs with B ≠ 0 (at B = 0, dA = 0 whatever the code).
"""
import argparse
import json

import numpy as np
import pytest

from minift import LoRAConfig, MiniftError, attach_lora
from minift.app.cli import add_inspect
from minift.measure.lens import (LINEAR_INPUTS, activations, format_lens, format_module, gradient_from_record, lens,
                                 lora_step)
from minift.optim import SGD
from minift.base import shipped_base_dir

from helpers import batch as lm_batch, host, randomize, tiny_model

ETA = 0.05


def lm_dict(cfg, **kw):
    ids, targets = lm_batch(cfg, **kw)
    return {"input_ids": ids, "targets": targets}


def classification_dict(cfg):
    ids, _ = lm_batch(cfg, B=3, T=5)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    return {"input_ids": ids, "targets": np.array([2, 0, 1]), "attention_mask": mask}


def adapted(head_kind="lm", r=3, targets="all-linear", dtype="float64", **lora_kw):
    """(model, lora, batch): the perturbed tiny GPT with LoRA on `targets`, every A and B random (B ≠ 0)."""
    model = tiny_model(dtype=dtype)
    if head_kind == "classification":
        model.add_classification_head(["a", "b", "c"], seed=2)
        model.params["score.weight"] *= 10                       # a head that matters: gradients are not tiny
    lora = randomize(attach_lora(model, LoRAConfig(r=r, alpha=5, targets=targets, **lora_kw)))
    data = classification_dict(model.cfg) if head_kind == "classification" else lm_dict(model.cfg)
    return model, lora, data


@pytest.fixture(scope="module")
def looked():
    """One lens report on the LM-head model, with the model, handle and batch it came from."""
    model, lora, data = adapted()
    return model, lora, data, lens(model, lora, data, lr=ETA)


# ---- the identities and G --------------------------------------------------------------------------------------------

def test_identities_hold_to_rounding(looked):
    _, lora, _, report = looked
    assert [row.module for row in report.rows] == lora.modules and not report.at_init
    for row in report.rows:
        assert not row.b_zero
        assert row.dA_err < 1e-10 and row.dB_err < 1e-10, row
        assert row.dA_norm > 0 and row.dB_norm > 0


@pytest.mark.parametrize("head_kind", ["lm", "classification"])
def test_g_is_the_full_finetuning_gradient_of_the_merged_model(head_kind):
    """A separate full fine-tuning backward of the same function — a copy of the model without adapters, weights
    W + ΔW (what lora.merge() writes), nothing frozen — gives the same dW as the lens's G."""
    model, lora, data = adapted(head_kind)
    report = lens(model, lora, data, lr=ETA)
    full = model.to()                                            # a copy: params, head, frozen; no adapters
    for name, w_eff in lora.effective_weights().items():
        full.params[name][...] = w_eff
    full.frozen = set()
    _, grads = full.loss_and_grads(**data)
    for m in lora.modules:
        G, ref = report.tensors[m]["G"], host(grads[m + ".weight"])
        assert np.abs(G - ref).max() <= 1e-9 * np.abs(ref).max(), m


def test_g_rebuilt_from_the_record_equals_the_lens_g(looked):
    """activations() exposes the pass's tensors: x and dy of every linear, so G = xᵀ dy can be rebuilt from them."""
    model, lora, data, report = looked
    record = activations(model, data)
    assert {"embedding", "logits", "dlogits", "h.0.ln_1", "dh.0.attn.c_attn", "dh.1.in"} <= set(record)
    for m in lora.modules:
        np.testing.assert_allclose(gradient_from_record(record, m), report.tensors[m]["G"], rtol=1e-10, atol=1e-14)
    assert set(LINEAR_INPUTS) == {m.split(".", 2)[2] for m in lora.modules}
    with pytest.raises(MiniftError, match="not a linear"):
        gradient_from_record(record, "h.0.ln_1")


# ---- the step -------------------------------------------------------------------------------------------------------

def test_exact_step_is_what_one_sgd_step_on_a_and_b_does():
    model, lora, data = adapted(targets=("c_attn", "mlp.c_proj"))
    report = lens(model, lora, data, lr=ETA)
    before = {k: host(v).copy() for k, v in lora.effective_weights().items()}
    _, grads = model.loss_and_grads(**data)                      # the ordinary LoRA pass: no dW
    for m in lora.modules:                                       # the lens's extra dW changes nothing in dA, dB
        np.testing.assert_array_equal(report.tensors[m]["dA"], host(grads[m + ".lora_A.weight"]))
        np.testing.assert_array_equal(report.tensors[m]["dB"], host(grads[m + ".lora_B.weight"]))
    SGD(lora.params, lr=ETA, momentum=0.0).step(grads)
    after = lora.effective_weights()
    for m in lora.modules:
        change = host(after[m + ".weight"]) - before[m + ".weight"]                    # (I, O)
        np.testing.assert_allclose(change, report.tensors[m]["delta_exact"], rtol=1e-9, atol=1e-14)


def test_first_order_step_is_off_by_eta_squared():
    """ΔW_step − ΔW₁ = η² s dAᵀ dBᵀ: halving η quarters the gap."""
    model, lora, data = adapted()
    big, small = lens(model, lora, data, lr=ETA), lens(model, lora, data, lr=ETA / 2)
    s = lora.config.scale
    for m in lora.modules:
        t, u = big.tensors[m], small.tensors[m]
        gap_big = np.linalg.norm(t["delta_exact"] - t["delta_first_order"])
        gap_small = np.linalg.norm(u["delta_exact"] - u["delta_first_order"])
        assert gap_big > 0 and gap_small / gap_big == pytest.approx(0.25, rel=1e-3), m
        np.testing.assert_allclose(t["delta_exact"] - t["delta_first_order"], ETA ** 2 * s * t["dA"].T @ t["dB"].T,
                                   rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(u["delta_first_order"], t["delta_first_order"] / 2, rtol=1e-12, atol=1e-16)


def test_lora_step_of_the_identities():
    """ΔW₁ = −η s² (AᵀA G + G BBᵀ): full fine-tuning's gradient through the two PSD maps."""
    rng = np.random.default_rng(0)
    I, O, R, s = 5, 7, 2, 1.5
    G, A, B = rng.standard_normal((I, O)), rng.standard_normal((R, I)), rng.standard_normal((O, R))
    dA, dB = s * B.T @ G.T, s * G.T @ A.T
    exact, first = lora_step(A, B, dA, dB, s, 0.1)
    np.testing.assert_allclose(first, -0.1 * s ** 2 * (A.T @ A @ G + G @ B @ B.T), rtol=1e-12)
    np.testing.assert_allclose(exact, s * ((A - 0.1 * dA).T @ (B - 0.1 * dB).T - A.T @ B.T), rtol=1e-12)


# ---- shares and cosines ---------------------------------------------------------------------------------------------

def test_shares_lie_in_the_unit_interval_and_respect_their_bounds(looked):
    _, _, _, report = looked
    for row in report.rows + [argparse.Namespace(**report.overall)]:
        for name in ("share_span", "share_tangent", "share_best_r", "share_best_2r"):
            assert 0.0 <= getattr(row, name) <= 1.0 + 1e-12, (name, row)
        assert row.share_span <= row.share_best_r + 1e-12          # a rank-r projection holds at most G_r
        assert row.share_span <= row.share_tangent + 1e-12
        assert row.share_tangent <= row.share_best_2r + 1e-12      # the tangent space has rank ≤ 2r
        assert 0.0 <= row.cos_first <= row.share_tangent + 1e-12   # ΔW₁ lies in the tangent space, never uphill


def test_shares_by_hand(looked):
    """The span share of one matrix from explicit projection matrices (PEFT's layout: ‖P_B G_peft P_A‖/‖G‖)."""
    _, lora, _, report = looked
    m = lora.modules[0]
    t = report.tensors[m]
    G_peft, A, B = t["G"].T, t["A"], t["B"]                      # (O, I), (R, I), (O, R)
    P_B, P_A = B @ np.linalg.pinv(B), np.linalg.pinv(A) @ A      # (O, O), (I, I)
    span = np.linalg.norm(P_B @ G_peft @ P_A) / np.linalg.norm(G_peft)
    tangent = np.linalg.norm(G_peft - (np.eye(len(P_B)) - P_B) @ G_peft @ (np.eye(len(P_A)) - P_A))
    assert report.row(m).share_span == pytest.approx(span, rel=1e-9)
    assert report.row(m).share_tangent == pytest.approx(tangent / np.linalg.norm(G_peft), rel=1e-9)
    sv = np.linalg.svd(G_peft, compute_uv=False)
    assert report.row(m).share_best_r == pytest.approx(np.sqrt((sv[:3] ** 2).sum() / (sv ** 2).sum()), rel=1e-12)


# ---- at init --------------------------------------------------------------------------------------------------------

def test_at_init_only_b_moves():
    model = tiny_model()
    lora = attach_lora(model, LoRAConfig(r=2, targets="all-linear"), seed=1)
    data = lm_dict(model.cfg)
    report = lens(model, lora, data, lr=ETA)
    s = lora.config.scale
    assert report.at_init and "B = 0" in format_lens(report)
    for row in report.rows:
        t = report.tensors[row.module]
        assert not t["dA"].any() and row.dA_err == 0.0 and row.dB_err < 1e-10
        assert row.share_span == 0.0 and row.share_tangent > 0 and row.cos_first > 0
        np.testing.assert_allclose(t["delta_exact"], -ETA * s ** 2 * t["A"].T @ t["A"] @ t["G"], rtol=1e-10,
                                   atol=1e-16)
        np.testing.assert_allclose(t["delta_exact"], t["delta_first_order"], rtol=1e-12, atol=1e-18)


# ---- the model is left as it was -----------------------------------------------------------------------------------

def test_lens_leaves_the_model_unchanged():
    model, lora, data = adapted("classification", dropout=0.3)   # adapter dropout: the lens turns it off
    params = {k: host(v).copy() for k, v in model.all_params().items()}
    frozen_object, frozen = model.frozen, set(model.frozen)
    rng_state = lora.rng_state()
    report = lens(model, lora, data, lr=ETA)
    assert model.frozen is frozen_object and model.frozen == frozen
    assert lora.training and lora.rng_state() == rng_state and model.record is None
    for k, v in model.all_params().items():
        np.testing.assert_array_equal(host(v), params[k])
    assert max(max(row.dA_err, row.dB_err) for row in report.rows) < 1e-10   # dropout off: identities hold
    bad = dict(data, targets=np.array([0, 1]))                    # a failing backward restores the frozen set too
    with pytest.raises(MiniftError, match="targets"):
        lens(model, lora, bad)
    assert model.frozen is frozen_object and model.frozen == frozen


def test_refusals():
    model, lora, data = adapted(targets="c_attn")
    for bad_lr in (0, -1.0, float("nan"), True):
        with pytest.raises(MiniftError, match="lr"):
            lens(model, lora, data, lr=bad_lr)
    with pytest.raises(MiniftError, match="batch"):
        lens(model, lora, (data["input_ids"], data["targets"]))
    lora.merge()
    with pytest.raises(MiniftError, match="merged"):
        lens(model, lora, data)
    lora.unmerge()
    other = tiny_model()
    with pytest.raises(MiniftError, match="handle"):
        lens(other, lora, data)
    dora_model = tiny_model()
    dora = attach_lora(dora_model, LoRAConfig(r=2, targets="c_attn", use_dora=True))
    with pytest.raises(MiniftError, match="DoRA"):
        lens(dora_model, dora, data)
    q_model = tiny_model()
    qlora = attach_lora(q_model, LoRAConfig(r=2, targets="c_attn", quant="nf4"))
    with pytest.raises(MiniftError, match="QLoRA's 4-bit base"):
        lens(q_model, qlora, data)


def test_a_model_too_large_to_compute_with_is_named_not_an_svd_traceback():
    """Finite weights an overshooting update left at ~1e30: the forward overflows float32, the loss is NaN."""
    model, lora, data = adapted(targets="c_attn", dtype="float32")
    model.params["h.0.mlp.c_fc.weight"][:] = 1e30
    with np.errstate(all="ignore"), pytest.raises(MiniftError, match="not finite"):
        lens(model, lora, data)


def test_float32_identities_are_at_rounding_level():
    model, lora, data = adapted(targets=("c_fc",), dtype="float32")
    report = lens(model, lora, data, lr=ETA)
    assert report.dtype == "float32"
    assert all(row.dA_err < 1e-5 and row.dB_err < 1e-5 for row in report.rows)


# ---- printing and the command ---------------------------------------------------------------------------------------

def test_format_lens_has_a_header_and_a_row_per_matrix(looked):
    _, lora, _, report = looked
    text = format_lens(report)
    for word in ("‖G‖", "erank", "‖dA‖", "‖dB‖", "id.err", "cos", "span", "tangent", "best-r", "B ≠ 0",
                 "all matrices"):
        assert word in text
    assert all(m in text for m in lora.modules)
    detail = format_module(report, lora.modules[0])
    assert "s·BᵀGᵀ" in detail and "singular values" in detail
    with pytest.raises(MiniftError, match="not adapted"):
        report.row("h.9.attn.c_attn")
    json.dumps(report.to_dict())                                   # JSON-able


def _inspect(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_inspect(sub)
    args = p.parse_args(["inspect", *argv])
    args.func(args)


@pytest.mark.skipif(not shipped_base_dir().is_dir(), reason="the shipped base model is missing")
def test_cli_inspect_on_the_shipped_base(capsys):
    _inspect(["--steps", "2", "--batch", "2", "--quiet", "--module", "h.0.attn.c_attn"])
    out = capsys.readouterr().out
    assert "after 2 LoRA training steps" in out and "columns:" in out and "id.err" in out
    assert "h.3.mlp.c_proj" in out and "h.0.attn.c_attn: W [128, 384]" in out
    _inspect(["--steps", "0", "--batch", "2", "--targets", "c_attn", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["at_init"] and len(result["rows"]) == 4
    with pytest.raises(MiniftError, match="--module"):
        _inspect(["--steps", "0", "--batch", "2", "--targets", "c_attn", "--module", "h.0.mlp.c_fc"])
