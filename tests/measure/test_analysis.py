"""Spectral analysis (the MIT paper's measurements): intruder dimensions on constructed matrices, the random
baseline, effective/stable rank, the λ-scaling mitigation, the per-model table, and the subspace similarity of two
updates (are full fine-tuning's and LoRA's the same kind of change?)."""
import math

import numpy as np
import pytest

import minift
from minift import GPT, GPTConfig, MiniftError
from minift.measure.analysis import (compare_updates, effective_rank, format_intruders, format_update_comparison,
                                     intruder_dimensions, intruder_sweep, linear_weight_names, model_intruders,
                                     random_baseline, random_subspace_similarity, scale_intruders, singular_values,
                                     spectrum_compare, stable_rank, subspace_similarity)

from helpers import randomize, tiny_model


def orthonormal(rng, n, m):
    """n x m with orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((n, m)))[0]


def pretrained_like(rng, d_out, d_in, top=10.0, bottom=0.1):
    """W0 [out, in] with a decaying spectrum (top ... bottom, geometric) and random singular vectors.
    Returns (W0, U0) with U0 the left singular vectors (output space)."""
    m = min(d_out, d_in)
    U0, V0 = orthonormal(rng, d_out, m), orthonormal(rng, d_in, m)
    return (U0 * np.geomspace(top, bottom, m)) @ V0.T, U0


def unit(rng, n):
    v = rng.standard_normal(n)
    return v / np.linalg.norm(v)


# ---- intruder dimensions -------------------------------------------------------------------------------------------

@pytest.fixture
def spike_case():
    """A rectangular W0 [96, 32] (out > in, like c_attn or c_fc), whose 32 left singular vectors leave 64 dims of the
    output space free, and a direction u in that complement: |cos(u, u0_i)| = 0 for every i."""
    rng = np.random.default_rng(0)
    W0, U0 = pretrained_like(rng, 96, 32)
    u = rng.standard_normal(96)
    u -= U0 @ (U0.T @ u)                                          # remove W0's output space
    return W0, u / np.linalg.norm(u), unit(rng, 32)


def test_orthogonal_spike_is_one_intruder_once_it_ranks_top(spike_case):
    W0, u, v = spike_case                                         # paper layout [out, in]; top singular value 10
    small = intruder_dimensions(W0, W0 + 0.5 * np.outer(u, v), layout="out_in")
    assert small["count"] == 0                                    # below the 10th singular value: not in the top-k
    assert small["max_cos"].min() > 0.99                          # the top-10 are W0's own directions
    big = intruder_dimensions(W0, W0 + 20.0 * np.outer(u, v), layout="out_in")   # 2x W0's top singular value
    assert big["count"] == 1 and list(big["indices"]) == [0]      # a new top singular vector...
    assert big["max_cos"][0] < 0.2                                # ...nearly orthogonal to all of W0's
    assert np.all(big["max_cos"][1:] > 0.9)                       # the others still match W0's
    assert big["singular_values"][0] == pytest.approx(20.0, rel=0.05)


def test_nearly_orthogonal_spike_in_a_complete_basis():
    """Square W0: its singular vectors span everything, so the best one can do is u with |cos| = 1/√d with each."""
    rng = np.random.default_rng(1)
    W0, U0 = pretrained_like(rng, 64, 64)
    u = U0 @ np.full(64, 1 / 8)                                   # cos(u, u0_i) = 1/8 for every i
    r = intruder_dimensions(W0, W0 + 50.0 * np.outer(u, unit(rng, 64)), layout="out_in")
    assert r["count"] == 1 and list(r["indices"]) == [0]
    assert 1 / 8 - 1e-9 <= r["max_cos"][0] < 0.2                  # never below 1/√d against a complete basis


def test_small_multiplicative_perturbation_has_no_intruders():
    rng = np.random.default_rng(2)
    W0, _ = pretrained_like(rng, 64, 48)
    W_tuned = W0 @ (np.eye(48) + 1e-3 * rng.standard_normal((48, 48)))      # full-FT-like: W0 barely rotated
    r = intruder_dimensions(W0, W_tuned, layout="out_in")
    assert r["count"] == 0 and r["max_cos"].min() > 0.99


def test_layout_switch_compares_the_same_output_space(spike_case):
    W0, u, v = spike_case
    W_tuned = W0 + 20.0 * np.outer(u, v)
    paper = intruder_dimensions(W0, W_tuned, layout="out_in")
    mine = intruder_dimensions(W0.T, W_tuned.T)                   # minift's [in, out] is the default layout
    assert mine["count"] == paper["count"] == 1
    np.testing.assert_allclose(mine["max_cos"], paper["max_cos"], atol=1e-10)
    np.testing.assert_array_equal(mine["indices"], paper["indices"])
    with pytest.raises(MiniftError, match="layout"):
        intruder_dimensions(W0, W_tuned, layout="nn.Linear")


def test_sweep_matches_single_thresholds_and_grows_with_eps(spike_case):
    rng = np.random.default_rng(3)
    W0, _, _ = spike_case
    W_tuned = W0 + 2.0 * rng.standard_normal(W0.shape)            # a large dense update: partial matches
    sweep = intruder_sweep(W0.T, W_tuned.T, k=10)
    assert np.all(np.diff(sweep["counts"]) >= 0)                  # a looser threshold never finds fewer
    for eps, count in zip(sweep["eps"], sweep["counts"]):
        assert intruder_dimensions(W0.T, W_tuned.T, k=10, eps=eps)["count"] == count


def test_bad_inputs_are_named():
    with pytest.raises(MiniftError, match="same shape"):
        intruder_dimensions(np.zeros((4, 3)), np.zeros((3, 4)))
    with pytest.raises(MiniftError, match="W0 must be"):
        intruder_dimensions(np.zeros(4), np.zeros(4))
    with pytest.raises(MiniftError, match="k="):
        intruder_dimensions(np.eye(3), np.eye(3), k=0)
    from minift.quant import quantize
    with pytest.raises(MiniftError, match=r"W_tuned is a 4-bit weight .*lora.tuned_weights"):
        intruder_dimensions(np.ones((4, 64)), quantize(np.ones((4, 64))))


# ---- the random baseline -------------------------------------------------------------------------------------------

def test_random_baseline_against_the_rough_formula_at_d64():
    """GUIDE's sqrt(2 ln(2d)/d) (0.389 at d=64) is the Gaussian-maximum *upper* estimate: the simulated mean max|cos|
    is 0.326, so the formula sits 10-30% above the mean (it is 1.19x here), between the median and the 95th
    percentile."""
    r = random_baseline(64, k=10, trials=2000, seed=0)
    assert r["formula"] == pytest.approx(0.3894, abs=1e-4)
    assert 1.1 < r["formula"] / r["mean"] < 1.3
    assert r["quantiles"][0.5] < r["formula"] < r["quantiles"][0.95]
    assert r["max_cos"].min() >= 1 / 8 - 1e-12                    # against a complete basis, never below 1/√d
    assert r["false_intruders"][0.5] > 9.9                        # at d=64, ε=0.5 calls random directions intruders


def test_incomplete_basis_lowers_the_floor():
    """A rectangular W0 [out, in] with out > in has only `in` left singular vectors: random directions in R^out
    match them less."""
    full = random_baseline(192, trials=500, seed=1)
    thin = random_baseline(192, trials=500, seed=1, basis_dim=64)
    assert thin["mean"] < full["mean"]
    assert thin["mean"] < thin["formula"] < 1.3 * thin["mean"]
    assert thin["floor"] == 0.0


# ---- ranks, spectra ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_and_stable_rank_of_equal_singular_values(r):
    rng = np.random.default_rng(r)
    M = 2.5 * orthonormal(rng, 40, r) @ orthonormal(rng, 30, r).T       # rank r, every singular value 2.5
    assert effective_rank(M) == pytest.approx(r, rel=1e-9)
    assert stable_rank(M) == pytest.approx(r, rel=1e-9)


def test_ranks_of_unequal_spectra():
    M = np.diag([3.0, 1.0, 0.0])
    assert stable_rank(M) == pytest.approx(10 / 9)                       # (9 + 1) / 9
    p = np.array([0.75, 0.25])
    assert effective_rank(M) == pytest.approx(math.exp(-(p * np.log(p)).sum()))   # between 1 and the rank 2
    assert effective_rank(np.zeros((3, 3))) == 0.0 and stable_rank(np.zeros((3, 3))) == 0.0


def test_spectrum_compare_of_a_rank_one_update(spike_case):
    W0, u, v = spike_case
    d = spectrum_compare(W0.T, (W0 + 3.0 * np.outer(u, v)).T)
    np.testing.assert_allclose(d["s0"], singular_values(W0))
    assert d["s_delta"][0] == pytest.approx(3.0) and d["s_delta"][1] < 1e-9
    assert d["effective_rank_delta"] == pytest.approx(1.0, abs=1e-6)
    assert d["stable_rank_delta"] == pytest.approx(1.0)
    assert d["relative_change"] == pytest.approx(3.0 / np.linalg.norm(W0))


# ---- mitigation ----------------------------------------------------------------------------------------------------

def test_scale_intruders_lambda_one_is_identity(spike_case):
    W0, u, v = spike_case
    W_tuned = (W0 + 20.0 * np.outer(u, v)).T                      # minift layout
    np.testing.assert_allclose(scale_intruders(W0.T, W_tuned, lam=1.0), W_tuned, atol=1e-12)


def test_scale_intruders_scales_only_the_intruder(spike_case):
    W0, u, v = spike_case
    W_tuned = (W0 + 20.0 * np.outer(u, v)).T.astype(np.float32)   # minift layout and dtype
    found = intruder_dimensions(W0.T, W_tuned)
    W_new = scale_intruders(W0.T, W_tuned, lam=0.75)
    assert W_new.dtype == np.float32 and W_new.shape == W_tuned.shape
    expected = singular_values(W_tuned)
    expected[found["indices"]] *= 0.75
    np.testing.assert_allclose(np.sort(singular_values(W_new)), np.sort(expected), rtol=1e-5)
    again = intruder_dimensions(W0.T, W_new)                      # 0.75 x 20 = 15 > 10: still ranks first
    assert again["count"] == 1 and again["max_cos"][0] == pytest.approx(found["max_cos"][0], abs=1e-5)
    W_plain = (W0 @ (np.eye(32) + 1e-3)).T                        # no intruder: nothing changes
    np.testing.assert_allclose(scale_intruders(W0.T, W_plain, lam=0.5), W_plain, atol=1e-12)


# ---- a whole model -------------------------------------------------------------------------------------------------

def test_model_intruders_finds_the_one_edited_matrix():
    cfg = GPTConfig.preset("tiny")
    base = GPT(cfg, seed=0, dtype="float64").params
    tuned = {k: v.copy() for k, v in base.items()}
    name = "h.1.attn.c_attn.weight"                               # [in=64, out=192]
    Wp = base[name].T                                             # paper layout [192, 64]: 64 of 192 output dims used
    U0 = np.linalg.svd(Wp, full_matrices=False)[0]
    rng = np.random.default_rng(0)
    u = rng.standard_normal(192)
    u -= U0 @ (U0.T @ u)
    tuned[name] = (Wp + 5.0 * np.outer(u / np.linalg.norm(u), unit(rng, 64))).T
    result = model_intruders(base, tuned, k=10, eps=0.5)
    assert len(result["rows"]) == 4 * cfg.n_layer
    assert result["total"] == 1
    assert [r["name"] for r in result["rows"] if r["count"]] == [name]
    only = model_intruders(base, tuned, modules=["attn.c_attn"])
    assert [r["name"] for r in only["rows"]] == ["h.0.attn.c_attn.weight", name]
    assert "total" in format_intruders(result)
    assert linear_weight_names(base, "mlp.c_proj") == ["h.0.mlp.c_proj.weight", "h.1.mlp.c_proj.weight"]
    del tuned[name]
    with pytest.raises(MiniftError, match="tuned_params has no"):
        model_intruders(base, tuned)


# ---- are two updates alike? ----------------------------------------------------------------------------------------

def test_same_output_subspace_gives_one():
    """Identical, rescaled and right-rotated updates (paper layout [out, in]: ΔW R keeps the left singular vectors
    and values) span the same top-k output subspace; so do two rank-4 updates U B1, U B2 with one column space, where
    k = 10 is clipped to their rank 4 (a null-space direction would be arbitrary)."""
    rng = np.random.default_rng(0)
    dW = rng.standard_normal((48, 32))                                  # full rank: the top-5 subspace is unique
    for other in (dW, -3.0 * dW, dW @ orthonormal(rng, 32, 32)):
        assert subspace_similarity(dW, other, k=5, layout="out_in") == pytest.approx(1.0, abs=1e-12)
    U = rng.standard_normal((48, 4))
    low_a, low_b = U @ rng.standard_normal((4, 32)), U @ rng.standard_normal((4, 32))
    assert subspace_similarity(low_a, low_b, k=10, layout="out_in") == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_output_subspaces_give_zero_and_a_zero_update_none():
    rng = np.random.default_rng(1)
    Q = orthonormal(rng, 48, 8)                                         # Q[:, :4] ⟂ Q[:, 4:]
    a, b = Q[:, :4] @ rng.standard_normal((4, 32)), Q[:, 4:] @ rng.standard_normal((4, 32))
    assert subspace_similarity(a, b, k=4, layout="out_in") == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(subspace_similarity(a, np.zeros_like(a), k=4, layout="out_in"))   # no update: no subspace


def test_truncated_update_keeps_its_top_k_subspace():
    """A rank-k truncation of an update (what the best rank-k LoRA could hold, Eckart–Young) shares its top-k
    subspace: φ = 1 at that k, and less at a larger k that the truncation cannot fill."""
    rng = np.random.default_rng(2)
    dW = rng.standard_normal((64, 40))                                  # minift layout [in, out]
    U, S, Vt = np.linalg.svd(dW, full_matrices=False)
    top3 = (U[:, :3] * S[:3]) @ Vt[:3]
    assert subspace_similarity(dW, top3, k=3) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(dW, top3, k=8) == pytest.approx(1.0, abs=1e-12)   # k clipped to the truncation's 3


def test_independent_random_updates_sit_near_k_over_dim():
    """Gaussian rank-k updates have uniformly random column spaces: φ's mean over 50 pairs is k/dim = 1/16; one φ
    has a standard deviation of about sqrt(2)/dim = 0.022, the mean of 50 about 0.003 (tolerance: 5 of those)."""
    dim, k = 64, 4
    phis = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        a, b = (rng.standard_normal((dim, k)) @ rng.standard_normal((k, 24)) for _ in range(2))
        phis.append(subspace_similarity(a, b, k=k, layout="out_in"))
    assert random_subspace_similarity(dim, k) == k / dim
    assert np.mean(phis) == pytest.approx(k / dim, abs=0.015)


def test_random_expectation_matches_monte_carlo():
    rng = np.random.default_rng(3)
    dim, k, trials = 32, 5, 4000
    Q1, Q2 = (np.linalg.qr(rng.standard_normal((trials, dim, k)))[0] for _ in range(2))   # (trials, dim, k)
    phi = (np.einsum("tdi,tdj->tij", Q1, Q2) ** 2).sum(axis=(1, 2)) / k                   # (trials,)
    assert phi.mean() == pytest.approx(random_subspace_similarity(dim, k), abs=0.004)   # std of the mean ≈ 0.0007
    assert random_subspace_similarity(dim, 99) == 1.0                                   # k clipped to dim


def test_layout_compares_output_spaces():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((40, 24)), rng.standard_normal((40, 24))
    a += 3 * b                                                         # related, so φ is not near its floor
    mine = subspace_similarity(a, b, k=3)                               # minift's [in, out]
    assert mine == pytest.approx(subspace_similarity(a.T, b.T, k=3, layout="out_in"), abs=1e-12)
    assert mine != pytest.approx(subspace_similarity(a, b, k=3, layout="out_in"), abs=1e-6)   # the input space


def test_bad_inputs_to_the_similarity_are_named():
    ok = np.ones((4, 3))
    with pytest.raises(MiniftError, match="same shape"):
        subspace_similarity(ok, np.ones((3, 4)), k=1)
    with pytest.raises(MiniftError, match="k=0"):
        subspace_similarity(ok, ok, k=0)
    with pytest.raises(MiniftError, match="dW2 has NaN"):
        subspace_similarity(ok, np.full((4, 3), np.inf), k=1)
    with pytest.raises(MiniftError, match="dW1 must be"):
        subspace_similarity(np.ones(4), ok, k=1)
    with pytest.raises(MiniftError, match="layout"):
        subspace_similarity(ok, ok, k=1, layout="nn.Linear")
    with pytest.raises(MiniftError, match="dim=0"):
        random_subspace_similarity(0, 1)
    with pytest.raises(MiniftError, match="k=2.5"):
        random_subspace_similarity(8, 2.5)


def test_compare_updates_of_a_run_with_itself_and_with_lora():
    base = tiny_model().params                                          # float64
    rng = np.random.default_rng(5)
    full = {n: w + 0.01 * rng.standard_normal(w.shape) for n, w in base.items()}
    rows = compare_updates(base, full, full, k=4)
    assert [r["name"] for r in rows] == linear_weight_names(base) and rows[0]["module"] == "attn.c_attn"
    for r in rows:
        assert r["similarity"] == pytest.approx(1.0, abs=1e-12) and r["k"] == 4
        assert r["random"] == 4 / r["shape"][1] and r["rel_norm_a"] == r["rel_norm_b"] > 0   # output dim: [in, out]
    model = tiny_model()
    lora = randomize(minift.attach_lora(model, minift.LoRAConfig(r=2, targets=("c_attn",)), seed=0))
    tuned = {**model.params, **lora.effective_weights()}                # LoRA folded in; the rest is the base
    rows = compare_updates(base, full, tuned, k=4, modules="attn.c_attn")
    assert [(r["block"], r["k"]) for r in rows] == [(0, 2), (1, 2)]     # k clipped to LoRA's rank 2
    assert all(r["eff_rank_b"] <= 2 + 1e-9 and 0 <= r["similarity"] < 0.5 for r in rows)
    rows = compare_updates(base, full, tuned, k=4)
    untouched = [r for r in rows if r["module"] != "attn.c_attn"]
    assert all(r["k"] == 0 and math.isnan(r["similarity"]) and r["eff_rank_b"] == 0 for r in untouched)
    table = format_update_comparison(rows, "full", "lora r=2")
    assert table.count("no update") == len(untouched) and "mean (8 matrices)" in table
    with pytest.raises(MiniftError, match="tuned_b has no 'h.0.attn.c_proj.weight'"):
        compare_updates(base, full, lora.effective_weights(), k=2)


def test_update_stats_is_the_update_spectrum_compare_reports():
    """One SVD of ΔW gives its size, effective rank and spectrum, the same numbers spectrum_compare shows."""
    from minift.measure.analysis import matrix_position, update_stats
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((12, 20))
    Wt = W0 + np.outer(rng.standard_normal(12), rng.standard_normal(20))     # a rank-1 update
    u, full = update_stats(W0, Wt), spectrum_compare(W0, Wt)
    np.testing.assert_allclose(u["singular_values"], full["s_delta"], rtol=1e-12, atol=1e-12)   # (zeros: rounding)
    assert u["rel_norm"] == pytest.approx(np.linalg.norm(Wt - W0) / np.linalg.norm(W0), rel=1e-12)
    assert u["eff_rank"] == pytest.approx(1.0, abs=1e-9) and update_stats(W0, W0)["eff_rank"] == 0.0
    assert matrix_position("h.3.mlp.c_fc.weight") == (3, "mlp.c_fc")
    with pytest.raises(MiniftError, match="wte.weight"):
        matrix_position("wte.weight")
