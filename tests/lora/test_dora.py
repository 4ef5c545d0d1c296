"""DoRA (minift/lora/dora.py): exact gradients of m, A, B and x, the detached variant, init, merge, counts.

Tolerances as in test_lora.py: op-level TOL = 1e-6 (a correct float64 backward scores ~1e-9), whole model
MODEL_TOL = 1e-4. Gradient checks use the EXACT backward (dora_norm="exact"): the detached one (DoRA §4.3, PEFT)
ignores how ‖V‖_c moves with A and B, so it is not the derivative of the forward and would fail by design; it is
checked against torch autograd with the norm detached instead.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift import LoRAConfig, MiniftError, attach_lora
from minift.backend import to_numpy
from minift.lora.dora import column_norm, dora_backward, dora_forward
from minift.gradcheck import check_function, check_op

from helpers import batch, rand, randomize, tiny_model, to_torch, torch_or_skip

TOL = 1e-6
MODEL_TOL = 1e-4
dims = st.integers(1, 5)


def dora_inputs(xp, rng, B, T, I, O, R, bias):
    """x, W0, b, A, B ≠ 0, and m near the column norms (as after init, but off the neutral m = ‖V‖_c)."""
    x, w, A, Bm = rand(xp, rng, B, T, I), rand(xp, rng, I, O), rand(xp, rng, R, I), rand(xp, rng, O, R)
    m = column_norm(w) * xp.asarray(1 + 0.3 * rng.standard_normal(O))
    return x, w, rand(xp, rng, O) if bias else None, A, Bm, m


@given(B=dims, T=dims, I=dims, O=dims, R=st.integers(1, 3), bias=st.booleans(), need_dw=st.booleans(),
       p=st.sampled_from([0.0, 0.4]), seed=st.integers(0, 2**16))
def test_dora_op_gradcheck_exact(xp, B, T, I, O, R, bias, need_dw, p, seed):
    rng = np.random.default_rng(seed)
    inputs = list(dora_inputs(xp, rng, B, T, I, O, R, bias))
    keep = (True, need_dw, bias, True, True, True)          # which of (x, W0, b, A, B, m) get a gradient

    def forward(x, w, b, A, Bm, m):
        return dora_forward(x, w, b, A, Bm, m, 0.8, p, np.random.default_rng(seed) if p else None)

    def backward(dy, cache):
        return tuple(g for g, k in zip(dora_backward(dy, cache, need_dw=need_dw), keep) if k)

    check_op(forward, backward, inputs, names=["x", "W0", "b", "A", "B", "m"],
             wrt=[i for i, k in enumerate(keep) if k], tol=TOL, seed=seed).assert_ok()


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_dora_matches_torch_autograd_exact_and_detached(p):
    """Both variants against autograd of PEFT's formula: exact = no detach; detached = weight_norm.detach()."""
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x, w, b, A, B, m = dora_inputs(np, rng, 2, 4, 5, 6, 2, True)
    s, dy = 1.3, rng.standard_normal((2, 4, 6))
    for detach in (False, True):
        y, cache = dora_forward(x, w, b, A, B, m, s, p, np.random.default_rng(9) if p else None)
        mask = cache[2]
        tx, tw, tb, tA, tB, tm = (to_torch(torch, a) for a in (x, w, b, A, B, m))
        txd = tx * torch.tensor(mask.reshape(x.shape) if mask is not None else 1.0)   # the same mask
        V = tw + s * tA.T @ tB.T                                           # PEFT: weight + scaling * lora_weight
        n = torch.linalg.norm(V, dim=0)
        n = n.detach() if detach else n
        ty = tx @ tw + tb + (tm / n - 1) * (txd @ tw) + (tm / n) * s * (txd @ tA.T @ tB.T)   # PEFT's forward
        (ty * torch.tensor(dy)).sum().backward()
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        mine = dora_backward(dy, cache, need_dw=True, detach_norm=detach)
        for g, t in zip(mine, (tx, tw, tb, tA, tB, tm)):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_detached_norm_changes_only_the_factors_gradients():
    rng = np.random.default_rng(0)
    x, w, b, A, B, m = dora_inputs(np, rng, 2, 3, 4, 5, 2, True)
    _, cache = dora_forward(x, w, b, A, B, m, 1.0)
    dy = rng.standard_normal((2, 3, 5))
    exact, detached = dora_backward(dy, cache), dora_backward(dy, cache, detach_norm=True)
    assert exact[1] is None and detached[1] is None                           # bare: W0 frozen, no dW0 (DoRA's case)
    np.testing.assert_array_equal(exact[5], detached[5])                      # dm: m never went through n
    assert not np.allclose(exact[3], detached[3]) and not np.allclose(exact[4], detached[4])   # dA, dB


def test_whole_model_dora_gradcheck(xp):
    model = tiny_model(xp)
    lora = randomize(attach_lora(model, LoRAConfig(r=2, alpha=3, targets="all-linear", use_dora=True)))
    ids, targets = batch(model.cfg)
    _, grads = model.loss_and_grads(ids, targets)
    assert set(grads) == set(lora.params)
    report = check_function(lambda: model.loss(ids, targets), lora.params, {k: grads[k] for k in lora.params},
                            max_entries=5, tol=MODEL_TOL)
    report.assert_ok()


def test_dora_init_is_the_base_model_and_m_is_the_column_norm(xp):
    model = tiny_model(xp)
    ids, _ = batch(model.cfg)
    base = to_numpy(model.forward(ids))
    lora = attach_lora(model, LoRAConfig(r=4, targets="all-linear", use_dora=True))
    for m in lora.modules:
        np.testing.assert_array_equal(to_numpy(lora.params[m + ".lora_magnitude_vector"]),
                                      to_numpy(column_norm(model.params[m + ".weight"])))
    np.testing.assert_array_equal(to_numpy(model.forward(ids)), base)


def test_effective_weight_has_the_magnitudes_as_column_norms():
    """W' = m · V/‖V‖_c: every output column of the adapted weight has norm m_j, whatever A and B are."""
    model = tiny_model()
    lora = randomize(attach_lora(model, LoRAConfig(r=3, targets=("c_attn", "c_fc"), use_dora=True)))
    for name, w_eff in lora.effective_weights().items():
        m = lora.params[name.removesuffix(".weight") + ".lora_magnitude_vector"]
        np.testing.assert_allclose(column_norm(w_eff), m, rtol=1e-12)


def test_dora_merge_and_unmerge():
    model = tiny_model()
    lora = randomize(attach_lora(model, LoRAConfig(r=3, targets="all-linear", use_dora=True)))
    ids, _ = batch(model.cfg)
    out = model.forward(ids)
    W = {k: v.copy() for k, v in model.params.items()}
    lora.merge()
    np.testing.assert_allclose(model.forward(ids), out, rtol=1e-10, atol=1e-12)
    with pytest.raises(MiniftError, match="already merged"):
        lora.merge()
    lora.unmerge()
    for k, v in model.params.items():
        np.testing.assert_allclose(v, W[k], rtol=0, atol=1e-13)           # W·(n/m) − Δ: a few roundings of ~1


def test_dora_counts_and_detached_training_gradients():
    model = tiny_model()
    r, C = 2, model.cfg.n_embd
    lora = randomize(attach_lora(model, LoRAConfig(r=r, targets="c_attn", use_dora=True)))
    assert model.num_params(trainable_only=True) == model.cfg.n_layer * (r * (C + 3 * C) + 3 * C)   # + m [O]
    ids, targets = batch(model.cfg)
    _, exact = model.loss_and_grads(ids, targets)
    detached = tiny_model()
    lora2 = attach_lora(detached, LoRAConfig(r=r, targets="c_attn", use_dora=True, dora_norm="detached"))
    for k, v in lora2.params.items():
        v[...] = lora.params[k]
    _, grads = detached.loss_and_grads(ids, targets)
    for k in exact:
        same = np.allclose(exact[k], grads[k], rtol=1e-12, atol=0)
        assert same == k.endswith("lora_magnitude_vector"), k


def test_dora_with_pissa_starts_as_the_base_and_m_is_the_original_column_norm():
    """PiSSA moves W0's top singular directions into A and B; DoRA's magnitude must be the norm of what the layer
    computes with, W_res + s·ΔW = W0, so the adapted model starts exactly as the base (as PEFT initialises it)."""
    model = tiny_model()
    ids, _ = batch(model.cfg)
    base, W0 = model.forward(ids), {k: v.copy() for k, v in model.params.items()}
    lora = attach_lora(model, LoRAConfig(r=4, targets="all-linear", init="pissa", use_dora=True))
    for m in lora.modules:
        np.testing.assert_allclose(lora.params[m + ".lora_magnitude_vector"], column_norm(W0[m + ".weight"]),
                                   rtol=1e-12)
    np.testing.assert_allclose(model.forward(ids), base, rtol=1e-10, atol=1e-12)
