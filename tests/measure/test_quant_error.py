"""Quantisation error made visible (minift/measure/quant_error.py): zero error on the code's own grid, NF4 below int4
and FP4 on normal weights, the loss of the quantised base equal to that of a model built from the dequantised
weights, the levels' usage, plain JSON data, bad input refused, and the two figures drawn."""
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minift
from minift import GPT, MiniftError
from minift.backend import to_numpy
from minift.measure.analysis import linear_weight_names
from minift.measure.quant_error import (block_normalised, code_fit, code_usage, error_summary, gaussian_error,
                                        loss_effect, matrix_error, matrix_errors, quant_error_report,
                                        quantised_model, variants, window_losses)
from minift.quant import CODES, code_values, dequantize, quantize
from minift.training.evaluate import lm_loss

from helpers import tiny_model

RTOL = 2e-6      # results are rounded to 6 significant digits (quant_error._g): 5e-6 relative at most, seen ≤ 1e-6


def on_grid(rng, code, n_blocks, block, scales):
    """W [n_blocks, block] whose every block is c · v[q] with one element at ±c: exactly representable."""
    levels = np.unique(code_values(code)[np.abs(code_values(code)) <= 1])   # (U,) what x/c can round to
    q = levels[rng.integers(0, levels.size, (n_blocks, block))]               # (NB, K)  in [-1, 1]
    q[np.arange(n_blocks), rng.integers(0, block, n_blocks)] = rng.choice([-1.0, 1.0], n_blocks)   # the absmax
    return (q.astype(np.float32) * scales[:, None]).astype(np.float32)       # (NB, K)  float32 products, as deq


def token_stream(model, windows=3, seed=0):
    return np.random.default_rng(seed).integers(0, model.cfg.vocab_size, windows * model.cfg.n_ctx + 1)   # (N,)


# ---- 1. reconstruction error ------------------------------------------------------------------------------------

@given(code=st.sampled_from(CODES), n_blocks=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_a_matrix_on_the_code_grid_has_zero_error(xp, code, n_blocks, seed):
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(-6, 3, n_blocks)).astype(np.float32)         # (NB,) any positive absmax
    W = on_grid(rng, code, n_blocks, 64, scales)                              # (NB, 64)
    assert matrix_error(xp.asarray(W), code) == dict(rel_error=0.0, mae_std=0.0)


@given(code=st.sampled_from(CODES), n_blocks=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_double_quantisation_is_exact_when_every_block_has_the_same_power_of_two_scale(code, n_blocks, seed):
    rng = np.random.default_rng(seed)
    scales = np.full(n_blocks, 2.0 ** int(rng.integers(-8, 4)), np.float32)  # (NB,) μ = c, every d = 0
    W = on_grid(rng, code, n_blocks, 64, scales)                              # (NB, 64)
    assert matrix_error(W, code, double_quant=True) == dict(rel_error=0.0, mae_std=0.0)


@given(rows=st.integers(64, 160), cols=st.sampled_from([64, 96, 128]), scale=st.floats(1e-3, 1e2),
       seed=st.integers(0, 2**16))
def test_nf4_has_less_error_than_int4_and_fp4_on_normal_weights(rows, cols, scale, seed):
    W = (np.random.default_rng(seed).standard_normal((rows, cols)) * scale).astype(np.float32)   # ≥ 4096 weights
    e = {c: matrix_error(W, c) for c in CODES}
    for other in ("int4", "fp4"):   # seen on N(0, 1): rel 9.2% vs 10.8% / 10.6%, mae 0.073 vs 0.092 / 0.080
        assert e["nf4"]["rel_error"] < 0.95 * e[other]["rel_error"]
        assert e["nf4"]["mae_std"] < 0.95 * e[other]["mae_std"]


def test_matrix_error_is_what_its_docstring_says(xp):
    W = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)   # (in, out)
    Wt = to_numpy(dequantize(quantize(W, "fp4"))).astype(np.float64)         # (in, out)
    e = matrix_error(xp.asarray(W), "fp4")
    assert e["rel_error"] == pytest.approx(np.linalg.norm(W - Wt) / np.linalg.norm(W), rel=RTOL)
    assert e["mae_std"] == pytest.approx(np.abs(W - Wt).mean() / W.std(), rel=RTOL)
    assert matrix_error(np.zeros((4, 64), np.float32)) == dict(rel_error=0.0, mae_std=0.0)   # no 0/0


def test_matrix_errors_cover_every_adapted_linear_in_model_order_and_the_summary_pools_them():
    model = tiny_model(dtype="float32")
    rows = matrix_errors(model.params)
    assert [r["name"] for r in rows] == linear_weight_names(model.params) and len(rows) == 4 * model.cfg.n_layer
    keys = [k for k, _, _ in variants()]
    assert keys == ["nf4", "nf4+dq", "int4", "int4+dq", "fp4", "fp4+dq"]
    assert all(set(r["errors"]) == set(keys) for r in rows)
    summary = error_summary(rows, model.params)
    W = [to_numpy(model.params[r["name"]]).astype(np.float64) for r in rows]
    E = [to_numpy(dequantize(quantize(model.params[r["name"]], "int4", double_quant=True))) - w
         for r, w in zip(rows, W)]
    pooled = math.sqrt(sum(np.sum(e ** 2) for e in E) / sum(np.sum(w ** 2) for w in W))
    assert summary["int4+dq"]["rel_error_all"] == pytest.approx(pooled, rel=1e-5)
    assert summary["nf4"]["bits_per_parameter"] == 4.5 and summary["nf4+dq"]["bits_per_parameter"] < 4.13


def test_gaussian_error_orders_the_codes_as_the_paper_says():
    g = {c: gaussian_error(c) for c in CODES}
    assert g["nf4"]["rel_error"] < g["fp4"]["rel_error"] and g["nf4"]["rel_error"] < g["int4"]["rel_error"]
    assert g == {c: gaussian_error(c) for c in CODES}                        # seeded: the same numbers every time


# ---- 2. the loss, before fine-tuning -----------------------------------------------------------------------------

@pytest.mark.parametrize("code, dq", [("nf4", False), ("int4", True), ("fp4", False)])
def test_the_quantised_loss_is_the_loss_of_a_model_built_from_the_dequantised_weights(code, dq):
    model = tiny_model(dtype="float32")
    before = {k: to_numpy(v).copy() for k, v in model.params.items()}
    ids = token_stream(model)
    params = dict(model.params)
    for name in linear_weight_names(params):                                 # by hand: W -> deq(quant(W))
        params[name] = dequantize(quantize(model.params[name], code, double_quant=dq))
    by_hand = GPT(model.cfg, dtype="float32", params=params)
    got = loss_effect(model, ids, codes=code, double_quant=dq)
    key = code + ("+dq" if dq else "")
    assert got["quantised"][key]["loss"] == pytest.approx(lm_loss(by_hand, ids, max_windows=None), rel=RTOL)
    assert got["float"] == pytest.approx(lm_loss(model, ids, max_windows=None), rel=RTOL)
    assert got["quantised"][key]["delta"] == pytest.approx(got["quantised"][key]["loss"] - got["float"], abs=1e-5)
    assert got["tokens"] == 3 * model.cfg.n_ctx and got["windows"] == 3 and got["quantised"][key]["delta_se"] > 0
    assert all(np.array_equal(to_numpy(v), before[k]) for k, v in model.params.items())   # the base untouched


def test_quantised_model_replaces_only_the_adapted_linears_and_window_losses_average_to_lm_loss(xp):
    model = tiny_model(xp, dtype="float32")
    qm = quantised_model(model, "nf4")
    linears = set(linear_weight_names(model.params))
    for name, W in model.params.items():
        assert (qm.params[name] is W) == (name not in linears)               # the rest shared, not copied
    ids = token_stream(model, windows=2)
    assert window_losses(qm, ids).mean() == pytest.approx(lm_loss(qm, ids, max_windows=None), rel=1e-6)


def test_modules_restrict_every_measurement_to_the_linears_qlora_would_quantise():
    """compare passes its LoRA targets: the errors, the quantised loss and the histogram are then of those only."""
    model = tiny_model(dtype="float32")
    r = quant_error_report(model, token_stream(model, windows=2), codes=("nf4",), double_quant=False,
                           modules=("c_attn",))
    assert [m["name"] for m in r["matrices"]] == [f"h.{i}.attn.c_attn.weight" for i in range(model.cfg.n_layer)]
    assert r["code_fit"]["matrix"].endswith("attn.c_attn.weight")
    qm = quantised_model(model, "nf4", modules=("c_attn",))
    assert all((qm.params[n] is w) == (not n.endswith("c_attn.weight")) for n, w in model.params.items())


def test_a_classifier_is_measured_through_its_lm_head():
    model = tiny_model(dtype="float32")
    ids = token_stream(model, windows=2)
    lm = loss_effect(model, ids, codes="nf4", double_quant=False)
    model.add_classification_head(["a", "b"])
    assert loss_effect(model, ids, codes="nf4", double_quant=False) == lm


# ---- 3. the levels against the values they must represent --------------------------------------------------------

@given(rows=st.integers(1, 40), cols=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_block_normalised_values_lie_in_unit_range_with_one_at_the_absmax(rows, cols, seed):
    W = np.random.default_rng(seed).standard_normal((rows, cols))           # (rows, cols)
    xhat = block_normalised(W)                                               # (N,)
    n = W.size
    blocks = np.pad(xhat, (0, -n % 64)).reshape(-1, 64)                      # (NB, 64)
    assert xhat.shape == (n,) and np.allclose(np.abs(blocks).max(axis=1), 1.0)
    c = np.abs(np.pad(W.reshape(-1), (0, -n % 64)).reshape(-1, 64)).max(axis=1)   # (NB,)
    np.testing.assert_allclose(xhat * np.repeat(c, 64)[:n], W.reshape(-1), rtol=1e-12)


@pytest.mark.parametrize("code, n_levels", [("nf4", 16), ("int4", 15), ("fp4", 15)])
def test_code_usage_counts_every_value_once(code, n_levels):
    xhat = block_normalised(np.random.default_rng(0).standard_normal((64, 64)))   # (4096,)
    u = code_usage(xhat, code)
    assert len(u["levels"]) == len(u["usage"]) == n_levels
    assert sum(u["usage"]) == pytest.approx(1.0, abs=1e-5)
    assert 0 < u["entropy_bits"] <= math.log2(n_levels) and 0 < u["levels_in_middle_90"] <= n_levels


def test_nf4_uses_its_levels_more_evenly_than_int4_on_normal_weights():
    fit = code_fit({"h.0.mlp.c_fc.weight": np.random.default_rng(0).standard_normal((128, 512))})
    u = fit["codes"]
    assert u["nf4"]["entropy_bits"] > u["int4"]["entropy_bits"]             # seen: 3.87 vs 3.48 bits
    assert max(u["nf4"]["usage"]) < max(u["int4"]["usage"])                  # seen: 9% vs 15%
    assert u["nf4"]["levels_in_middle_90"] > u["int4"]["levels_in_middle_90"]
    widths = np.diff(fit["edges"])                                           # (bins,)
    assert np.sum(np.array(fit["density"]) * widths) == pytest.approx(1.0, abs=1e-4)
    assert np.sum(np.array(fit["gaussian_density"]) * widths) == pytest.approx(1.0, abs=1e-4)


def test_code_fit_picks_the_first_of_the_largest_matrices_unless_told():
    model = tiny_model(dtype="float32")
    assert code_fit(model.params)["matrix"] == "h.0.mlp.c_fc.weight"         # [C, 4C], tied with mlp.c_proj
    assert code_fit(model.params, "h.1.attn.c_proj.weight", codes="nf4")["matrix"] == "h.1.attn.c_proj.weight"


# ---- all of it: plain data, bad input ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report():
    model = tiny_model(dtype="float32")
    return quant_error_report(model, token_stream(model), text="random tokens")


def test_the_report_is_plain_json(report):
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert set(report) == {"block", "dq_block", "codes", "variants", "measures", "matrices", "summary", "loss",
                           "code_fit"}
    assert report["loss"]["text"] == "random tokens" and report["codes"] == list(CODES)


@pytest.mark.parametrize("call, named", [
    (lambda m, ids: matrix_errors({}), "params has no adapted linear"),
    (lambda m, ids: matrix_errors([1, 2]), "params must be a dict"),
    (lambda m, ids: matrix_errors(m.params, codes=("nf5",)), "codes="),
    (lambda m, ids: matrix_errors(m.params, codes=()), "codes="),
    (lambda m, ids: matrix_errors(m.params, double_quant="yes"), "double_quant="),
    (lambda m, ids: matrix_errors(m.params, double_quant=(True, True)), "double_quant="),
    (lambda m, ids: matrix_error(np.arange(64), "nf4"), "dtype"),
    (lambda m, ids: matrix_error(np.ones((4, 64), np.float32), block=3), "block=3"),
    (lambda m, ids: code_fit(m.params, matrix="wte.weight"), "matrix='wte.weight'"),
    (lambda m, ids: loss_effect("model", ids), "model must be a minift GPT"),
    (lambda m, ids: loss_effect(m, ids[:10]), "token_ids (shape (10,) dtype int64) must be a 1-D integer array"),
    (lambda m, ids: loss_effect(m, ids.astype(float)), "token_ids"),
    (lambda m, ids: loss_effect(m, list(ids)), "token_ids (list)"),
])
def test_bad_input_is_refused_with_its_name(call, named):
    model = tiny_model(dtype="float32")
    with pytest.raises(MiniftError, match=re.escape(named)):
        call(model, token_stream(model))


def test_a_model_with_adapters_is_refused():
    model = tiny_model(dtype="float32")
    minift.attach_lora(model, minift.LoRAConfig(r=2, targets=("c_attn",)), seed=0)
    with pytest.raises(MiniftError, match="adapters"):
        loss_effect(model, token_stream(model))


# ---- the figures ---------------------------------------------------------------------------------------------------

def test_the_figures_are_drawn_with_their_findings(report, tmp_path):
    pytest.importorskip("matplotlib", reason="figures need matplotlib: pip install -e '.[plot]'")
    from minift.app.figures import _figures, quant_error, quant_levels, write_quantization_figures
    names = write_quantization_figures(report, tmp_path / "figs")
    assert names == ["quant_error.png", "quant_levels.png"]
    for name in names:
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with _figures() as figs:
        title = quant_error(figs, report)._suptitle.get_text()
        assert "NF4" in title and f"{report['loss']['quantised']['int4']['delta']:+.4f}" in title
        no_loss = quant_error(figs, {k: v for k, v in report.items() if k != "loss"})
        assert len(no_loss.axes) == 1
        levels = quant_levels(figs, report)
        assert len(levels.axes) == 3 and report["code_fit"]["matrix"] in levels._suptitle.get_text()
