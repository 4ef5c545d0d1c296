"""LoRA (minift/lora/): the op's gradient, the adapted model's gradients and invariants, merge, inits, files.

Tolerances (float64): op-level centered differences score ~1e-9 for a correct backward, so TOL = 1e-6 (as the
linear op's test); whole-model checks go through ~20 ops, MODEL_TOL = 1e-4 (as tests/test_model.py). Identities that
only reorder the same float64 products (dB = s·Gᵀ Aᵀ, merged == unmerged) hold to ~1e-13 relative: rtol 1e-10.
Every gradient check runs with B ≠ 0: at B = 0, dA = s·(dy B)ᵀ x is zero whatever the code, hiding any bug in it.
"""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minift
from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora, load_peft
from minift.gradcheck import check_function, check_op
from minift.formats.io import load_safetensors
from minift.lora import PEFT_HEAD_KEY, PEFT_PREFIX, lora_backward, lora_forward, resolve_modules
from minift.config import LINEAR_MODULES
from minift.optim import SGD, AdamW

from helpers import batch, host, rand, randomize, tiny_model

TOL = 1e-6
MODEL_TOL = 1e-4
dims = st.integers(1, 5)


# ---- the op ---------------------------------------------------------------------------------------------------------

@given(B=dims, T=dims, I=dims, O=dims, R=st.integers(1, 3), bias=st.booleans(), need_dw=st.booleans(),
       p=st.sampled_from([0.0, 0.4]), seed=st.integers(0, 2**16))
def test_lora_op_gradcheck(xp, B, T, I, O, R, bias, need_dw, p, seed):
    """x, A, B (and W, b when they train) against centered differences; with dropout the same mask every call."""
    rng = np.random.default_rng(seed)
    x, w, A, Bm = rand(xp, rng, B, T, I), rand(xp, rng, I, O), rand(xp, rng, R, I), rand(xp, rng, O, R)
    b = rand(xp, rng, O) if bias else None
    keep = (True, need_dw, bias, True, True)               # which of (x, W, b, A, B) get a gradient

    def forward(x, w, b, A, Bm):
        return lora_forward(x, w, b, A, Bm, 1.7, p, np.random.default_rng(seed) if p else None)

    def backward(dy, cache):
        grads = lora_backward(dy, cache, need_dw=need_dw)
        return tuple(g for g, k in zip(grads, keep) if k)

    wrt = [i for i, k in enumerate(keep) if k]
    check_op(forward, backward, [x, w, b, A, Bm], names=["x", "W", "b", "A", "B"], wrt=wrt, tol=TOL,
             seed=seed).assert_ok()


def test_lora_backward_skips_dw_for_a_frozen_w(xp):
    rng = np.random.default_rng(0)
    x, w, b, A, B = (rand(xp, rng, *s) for s in ((2, 3, 4), (4, 5), (5,), (2, 4), (5, 2)))
    y, cache = lora_forward(x, w, b, A, B, 2.0)
    dy = rand(xp, rng, *y.shape)
    dx, dw, db, dA, dB = lora_backward(dy, cache, need_dw=False, need_db=False)
    assert dw is None and db is None
    full = lora_backward(dy, cache, need_dw=True)
    for mine, ref in zip((dx, dA, dB), (full[0], full[3], full[4])):
        np.testing.assert_array_equal(host(mine), host(ref))


def test_lora_backward_called_bare_is_loras_case():
    """The default is a frozen W: a learner calling lora_backward(dy, cache) gets no dW and pays no xᵀ dy."""
    rng = np.random.default_rng(0)
    x, w, b, A, B = (rng.standard_normal(s) for s in ((3, 4), (4, 5), (5,), (2, 4), (5, 2)))
    y, cache = lora_forward(x, w, b, A, B, 2.0)
    dy = rng.standard_normal(y.shape)
    bare, trained = lora_backward(dy, cache), lora_backward(dy, cache, need_dw=True)
    assert bare[1] is None and trained[1] is not None
    for i in (0, 2, 3, 4):                                   # dx, db, dA, dB: the same either way
        np.testing.assert_array_equal(bare[i], trained[i])


def test_model_backward_returns_no_base_gradient():
    """With LoRA attached, grads holds the adapters only: no base weight or bias (no xᵀ dy was computed)."""
    model = tiny_model()
    lora = randomize(attach_lora(model, LoRAConfig(r=2, targets="all-linear")))
    _, grads = model.loss_and_grads(*batch(model.cfg))
    assert set(grads) == set(lora.params)
    assert not any(k in grads for k in model.params)


# ---- the adapted model ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_zero_b_output_equals_the_base_model_exactly(xp, init):
    model = tiny_model(xp)
    ids, targets = batch(model.cfg)
    base_logits, base_loss = model.forward(ids), model.loss(ids, targets)
    lora = attach_lora(model, LoRAConfig(r=4, targets="all-linear", init=init), seed=3)
    assert all(not host(a).any() for k, a in lora.params.items() if "lora_B" in k)
    assert all(host(a).any() for k, a in lora.params.items() if "lora_A" in k)
    np.testing.assert_array_equal(host(model.forward(ids)), host(base_logits))
    assert model.loss(ids, targets) == base_loss


def test_whole_model_gradcheck_of_every_adapter_parameter(xp):
    model = tiny_model(xp)
    lora = randomize(attach_lora(model, LoRAConfig(r=2, alpha=3, targets="all-linear")))
    ids, targets = batch(model.cfg)
    _, grads = model.loss_and_grads(ids, targets)
    report = check_function(lambda: model.loss(ids, targets), lora.params, {k: grads[k] for k in lora.params},
                            max_entries=6, tol=MODEL_TOL)
    report.assert_ok()


def test_gradcheck_with_a_classification_head_that_trains():
    model = tiny_model()
    model.add_classification_head(["a", "b", "c"], seed=2)
    model.params["score.weight"] *= 10
    lora = randomize(attach_lora(model, LoRAConfig(r=2, targets=("c_attn", "mlp.c_proj"))))
    ids, _ = batch(model.cfg, B=3, T=5)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    labels = np.array([2, 0, 1])
    _, grads = model.loss_and_grads(ids, labels, attention_mask=mask)
    assert set(grads) == set(lora.params) | {"score.weight"}
    report = check_function(lambda: model.loss(ids, labels, attention_mask=mask), lora.trainable_params(), grads,
                            max_entries=5, tol=MODEL_TOL)
    report.assert_ok()


def test_lora_gradients_are_projections_of_the_full_gradient():
    """With G = xᵀ dy [I, O] the full fine-tuning gradient of W (GPT-2's layout) and no dropout:

        y = x W + b + s · x Aᵀ Bᵀ, so with h = x Aᵀ:
        dB = s · dyᵀ h     = s · dyᵀ x Aᵀ   = s · Gᵀ Aᵀ        [O, I] @ [I, R]
        dA = s · (dy B)ᵀ x = s · Bᵀ dyᵀ x   = s · Bᵀ Gᵀ        [R, O] @ [O, I]
    (in PEFT's [O, I] layout, G_peft = Gᵀ: dB = s · G_peft Aᵀ, dA = s · Bᵀ G_peft.)

    What is exactly equal: the identity needs G and dA, dB from the SAME dy. Unfreezing W (with LoRA attached)
    makes the same backward also return dW = xᵀ dy = G: then the identity holds up to float64 reassociation.
    A full fine-tuning run of the merged model (W + s Aᵀ Bᵀ, no adapter) computes the same function, so its G
    agrees too, but only up to the rounding of a different forward: checked with a looser tolerance.
    """
    model = tiny_model()
    lora = randomize(attach_lora(model, LoRAConfig(r=3, alpha=5, targets="all-linear")))
    s = lora.config.scale
    ids, targets = batch(model.cfg)
    model.frozen -= {m + ".weight" for m in lora.modules}          # G from the same pass
    _, grads = model.loss_and_grads(ids, targets)
    for m, a in lora.adapters.items():
        G = grads[m + ".weight"]                                   # (I, O)
        np.testing.assert_allclose(grads[m + ".lora_B.weight"], s * G.T @ a.A.T, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(grads[m + ".lora_A.weight"], s * a.B.T @ G.T, rtol=1e-10, atol=1e-14)
    merged = tiny_model()                                          # the same base, no adapter, weights W + ΔW
    for name, w_eff in lora.effective_weights().items():
        merged.params[name][...] = w_eff
    _, full = merged.loss_and_grads(ids, targets)
    for m in lora.modules:
        np.testing.assert_allclose(full[m + ".weight"], grads[m + ".weight"], rtol=1e-8, atol=1e-12)


def test_one_sgd_step_moves_the_weight_by_a_low_rank_product():
    """SGD (no momentum, no decay) on A, B: A' = A − η dA, B' = B − η dB. In PEFT's [O, I] layout
    W_eff = W + s B A, so W_eff' − W_eff = s (B' A' − B A) = −η s (dB A + B dA) + η² s dB dA: rank ≤ 2R, and, by
    the identities above, to first order −η s² (Gᵀ Aᵀ A + B Bᵀ Gᵀ) — the full step −η Gᵀ seen through the adapter.
    minift's [I, O] weights are the transposes."""
    model = tiny_model()
    lora = randomize(attach_lora(model, LoRAConfig(r=2, targets=("c_attn", "c_fc"))))
    s, eta = lora.config.scale, 0.05
    before = lora.effective_weights()
    old = {k: v.copy() for k, v in lora.params.items()}
    _, grads = model.loss_and_grads(*batch(model.cfg))
    SGD(model.trainable_params(), lr=eta).step(grads)
    after = lora.effective_weights()
    for m in lora.modules:
        A, B = old[m + ".lora_A.weight"], old[m + ".lora_B.weight"]
        A2, B2 = A - eta * grads[m + ".lora_A.weight"], B - eta * grads[m + ".lora_B.weight"]
        np.testing.assert_array_equal(lora.params[m + ".lora_A.weight"], A2)
        change = after[m + ".weight"] - before[m + ".weight"]                       # (I, O)
        np.testing.assert_allclose(change, (s * (B2 @ A2 - B @ A)).T, rtol=1e-9, atol=1e-15)
        assert np.linalg.matrix_rank(change, tol=1e-12) <= 2 * lora.config.r


def test_frozen_parameters_are_bitwise_unchanged_by_adamw():
    model = tiny_model(dtype="float32")
    base = {k: v.copy() for k, v in model.params.items()}
    lora = attach_lora(model, LoRAConfig(r=4, targets="all-linear"))
    opt = AdamW(model.trainable_params(), lr=1e-2, weight_decay=0.1)
    start = {k: v.copy() for k, v in lora.params.items()}
    for step in range(3):
        _, grads = model.loss_and_grads(*batch(model.cfg, seed=step))
        opt.step(grads)
    assert all(np.array_equal(model.params[k], base[k]) for k in base)
    assert all(not np.array_equal(lora.params[k], start[k]) for k in start)       # every A and B moved


# ---- what trains --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets, modules", [
    ("c_attn", ["attn.c_attn"]),
    (("attn.c_proj",), ["attn.c_proj"]),
    (("mlp.c_proj",), ["mlp.c_proj"]),
    (("c_proj",), ["attn.c_proj", "mlp.c_proj"]),          # bare c_proj: both, as PEFT's suffix match
    (("c_attn", "c_fc"), ["attn.c_attn", "mlp.c_fc"]),
    ("all-linear", list(LINEAR_MODULES)),
    (("h.1.mlp.c_fc",), None),
])
def test_targets_and_trainable_parameter_count(targets, modules):
    """r·(in + out) per adapted matrix, and nothing else trains (+ the head, K·C, when there is one)."""
    model = tiny_model(perturb=False)
    r = 3
    lora = attach_lora(model, LoRAConfig(r=r, targets=targets))
    expected = ["h.1.mlp.c_fc"] if modules is None else [f"h.{i}.{m}" for i in range(2) for m in LINEAR_MODULES
                                                        if m in modules]   # model order
    assert lora.modules == expected
    count = sum(r * sum(model.params[m + ".weight"].shape) for m in expected)
    assert model.num_params(trainable_only=True) == count == sum(a.size for a in lora.params.values())
    assert set(model.trainable_params()) == set(lora.params)
    assert model.frozen == set(model.params)


def test_a_classification_head_keeps_training():
    model = tiny_model(perturb=False)
    model.add_classification_head(["no", "yes"])
    lora = attach_lora(model, LoRAConfig(r=2, targets=("c_attn",)))
    assert "score.weight" not in model.frozen and model.frozen == set(model.params) - {"score.weight"}
    C = model.cfg.n_embd
    assert model.num_params(trainable_only=True) == 2 * 2 * (C + 3 * C) + 2 * C
    assert set(lora.trainable_params()) == set(lora.params) | {"score.weight"}


def test_rslora_scale():
    assert LoRAConfig(r=4, alpha=8).scale == 2.0
    assert LoRAConfig(r=4, alpha=8, rslora=True).scale == 4.0                 # α/√r
    plain = attach_lora(tiny_model(), LoRAConfig(r=4, alpha=8))
    rs = attach_lora(tiny_model(), LoRAConfig(r=4, alpha=8, rslora=True))
    randomize(plain, seed=5), randomize(rs, seed=5)
    for m in plain.modules:
        np.testing.assert_allclose(rs.adapters[m].delta_weight(), 2.0 * plain.adapters[m].delta_weight(), rtol=1e-13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "rank r=0"), (dict(r=2.5), "rank r=2.5"), (dict(r=True), "rank"), (dict(alpha=0), "alpha"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"), (dict(init="olora"), "init"),
    (dict(targets=("c_attn", "q_proj")), "unknown LoRA target 'q_proj'.*'attn.c_proj'.*'mlp.c_proj'"),
    (dict(targets=()), "targets"), (dict(targets=("all-linear", "c_fc")), "all-linear"),
    (dict(dora_norm="approx"), "dora_norm"),
])
def test_config_errors_name_the_input(kwargs, match):
    with pytest.raises(MiniftError, match=match):
        LoRAConfig(**kwargs)


def test_numpy_scalar_options_are_saved_as_plain_numbers(tmp_path):
    """np.float32(16) is a valid alpha, and must not break the JSON half of save_peft after its weights are written."""
    model = tiny_model(perturb=False)
    lora = attach_lora(model, LoRAConfig(r=np.int64(2), alpha=np.float32(16), dropout=np.float64(0.1)))
    lora.save_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 16.0, 0.1)


def test_attach_errors():
    model = tiny_model(perturb=False)
    with pytest.raises(MiniftError, match=r"r=65 exceeds min\(in, out\) = 64"):
        attach_lora(model, LoRAConfig(r=65))
    with pytest.raises(MiniftError, match="matches no module"):
        attach_lora(model, LoRAConfig(targets="h.7.attn.c_attn"))
    assert not model.adapters and not model.frozen                              # a refused attach changes nothing
    attach_lora(model)
    with pytest.raises(MiniftError, match="already has adapters"):
        attach_lora(model)
    assert resolve_modules(2, "c_proj") == ["h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"]


def test_detach_restores_the_base_model():
    model = tiny_model()
    model.frozen = {"wpe.weight"}
    ids, _ = batch(model.cfg)
    base = model.forward(ids)
    lora = randomize(attach_lora(model, LoRAConfig(targets="all-linear")))
    assert not np.allclose(model.forward(ids), base)
    lora.detach()
    assert model.adapters == {} and model.frozen == {"wpe.weight"}
    np.testing.assert_array_equal(model.forward(ids), base)
    with pytest.raises(MiniftError, match="detached"):
        lora.merge()


# ---- merge ------------------------------------------------------------------------------------------------------

def test_merged_equals_unmerged_and_unmerge_restores_w(xp):
    """float64: merged vs unmerged logits differ only by the reassociation x(W + Δ) vs xW + xΔ (~1e-15
    relative); unmerge gives W + Δ − Δ, equal to W up to one rounding of |W| + |Δ| (|W|, |Δ| ~ 1): atol 1e-14."""
    model = tiny_model(xp)
    lora = randomize(attach_lora(model, LoRAConfig(r=4, targets="all-linear")))
    ids, _ = batch(model.cfg)
    unmerged = host(model.forward(ids))
    W = {k: host(v).copy() for k, v in model.params.items()}
    arrays = {k: id(v) for k, v in model.params.items()}
    lora.merge()
    assert lora.merged
    np.testing.assert_allclose(host(model.forward(ids)), unmerged, rtol=1e-10, atol=1e-12)
    changed = {m + ".weight" for m in lora.modules}
    assert all(not np.array_equal(host(model.params[k]), W[k]) for k in changed)
    with pytest.raises(MiniftError, match="already merged"):
        lora.merge()
    with pytest.raises(MiniftError, match="unmerge"):
        model.loss_and_grads(*batch(model.cfg))                                # no training while merged
    lora.unmerge()
    for k, v in model.params.items():
        np.testing.assert_allclose(host(v), W[k], rtol=0, atol=1e-14)
        assert id(v) == arrays[k]                                              # in place: optimizers keep working
    with pytest.raises(MiniftError, match="not merged"):
        lora.unmerge()



@pytest.mark.parametrize("dora", [False, True])
def test_merged_model_is_a_plain_copy_that_computes_the_same(xp, dora):
    """merged_model() (PEFT's merge_and_unload, on a copy): no adapters, nothing frozen by LoRA, W + ΔW in the
    adapted matrices, the same logits (float64, up to reassociation); the adapted model is left as it was."""
    model = tiny_model(xp)
    model.frozen = {"wpe.weight"}                                              # frozen before LoRA: stays frozen
    lora = randomize(attach_lora(model, LoRAConfig(r=4, targets="all-linear", use_dora=dora)))
    ids, _ = batch(model.cfg)
    before = {k: host(v).copy() for k, v in model.params.items()}
    merged = lora.merged_model()
    assert merged.adapters == {} and merged.frozen == {"wpe.weight"} and not lora.merged
    np.testing.assert_allclose(host(merged.forward(ids)), host(model.forward(ids)), rtol=1e-10, atol=1e-12)
    for name, w in lora.effective_weights().items():
        np.testing.assert_array_equal(host(merged.params[name]), host(w))
    assert all(np.array_equal(host(v), before[k]) for k, v in model.params.items())   # the original, untouched
    for name, w in merged.params.items():                                            # and nothing shared:
        w[...] = 0                                                                   # zeroing the copy leaves
    assert all(np.array_equal(host(v), before[k]) for k, v in model.params.items())  # the original as it was

# ---- initialisation -----------------------------------------------------------------------------------------

def test_default_and_gaussian_init_follow_peft(xp):
    cfg = GPTConfig.preset("demo")
    model = GPT(cfg, seed=0, device="cpu" if xp is np else "gpu")
    lora = attach_lora(model, LoRAConfig(r=8, targets=("c_attn", "mlp.c_proj")), seed=7)
    A = host(lora.params["h.0.mlp.c_proj.lora_A.weight"])                     # (8, 512): fan_in = 4C
    bound = 1 / np.sqrt(4 * cfg.n_embd)                                       # kaiming_uniform(a=√5) = 1/√in
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.99 * bound
    assert abs(A.std() - bound / np.sqrt(3)) < 0.03 * bound
    gauss = attach_lora(GPT(cfg, seed=0), LoRAConfig(r=8, init="gaussian"), seed=7)
    assert abs(host(gauss.params["h.1.attn.c_attn.lora_A.weight"]).std() - 1 / 8) < 0.01   # PEFT: std = 1/r
    same = attach_lora(GPT(cfg, seed=0), LoRAConfig(r=8, targets=("c_attn", "mlp.c_proj")), seed=7)
    assert all(np.array_equal(host(lora.params[k]), same.params[k]) for k in same.params)  # and NumPy == CuPy


def test_pissa_keeps_the_output_and_moves_the_principal_part_into_the_adapter():
    model = tiny_model()
    ids, _ = batch(model.cfg)
    base = model.forward(ids)
    W0 = {k: v.copy() for k, v in model.params.items()}
    lora = attach_lora(model, LoRAConfig(r=4, alpha=8, targets=("h.0.attn.c_attn", "h.1.mlp.c_proj"),
                                         init="pissa"))
    np.testing.assert_allclose(model.forward(ids), base, rtol=1e-10, atol=1e-12)
    s = lora.config.scale
    for m, a in lora.adapters.items():
        W = W0[m + ".weight"]
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        np.testing.assert_allclose(a.delta_weight(), (U[:, :4] * S[:4]) @ Vt[:4], atol=1e-12)   # the top-r part
        residual = model.params[m + ".weight"]
        np.testing.assert_allclose(np.linalg.svd(residual, compute_uv=False)[:len(S) - 4], S[4:], atol=1e-12)
        np.testing.assert_allclose(a.A @ a.A.T, np.diag(S[:4] / s), atol=1e-12)  # √(S/s) split between A and B
        np.testing.assert_allclose(a.B.T @ a.B, np.diag(S[:4] / s), atol=1e-12)
    assert lora.base_fingerprint != lora.original_fingerprint
    assert m + ".weight" in model.frozen                                        # the residual stays frozen


# ---- adapter dropout ------------------------------------------------------------------------------------------

def test_adapter_dropout_is_seeded_restorable_and_off_in_eval():
    model = tiny_model()
    ids, targets = batch(model.cfg)
    lora = randomize(attach_lora(model, LoRAConfig(r=2, targets="all-linear", dropout=0.3), seed=4))
    assert lora.training                                                        # attach_lora: train mode
    state = lora.rng_state()
    json.dumps(state)                                                           # checkpointable
    loss1, grads1 = model.loss_and_grads(ids, targets)
    loss2, _ = model.loss_and_grads(ids, targets)
    assert loss1 != loss2                                                       # a new mask each call
    lora.set_rng_state(state)
    loss3, grads3 = model.loss_and_grads(ids, targets)
    assert loss3 == loss1 and all(np.array_equal(grads1[k], grads3[k]) for k in grads1)
    # eval mode: exactly the same adapters without dropout
    lora.eval()
    plain = tiny_model()
    no_dropout = attach_lora(plain, LoRAConfig(r=2, targets="all-linear"))
    for k, v in no_dropout.params.items():
        v[...] = lora.params[k]
    assert model.loss(ids, targets) == plain.loss(ids, targets)
    # an adapter's forward takes train= to override the mode
    a, w = lora.adapters["h.0.attn.c_attn"], model.params["h.0.attn.c_attn.weight"]
    x = np.ones((3, model.cfg.n_embd))
    assert not np.array_equal(a.forward(x, w, None, train=True)[0], a.forward(x, w, None)[0])


def test_dropout_leaves_the_base_path_alone():
    """At B = 0 the branch adds nothing, so even a training call with adapter dropout equals the base model:
    the mask touches the branch's input only."""
    model = tiny_model()
    ids, targets = batch(model.cfg)
    base_loss, _ = model.loss_and_grads(ids, targets)
    attach_lora(model, LoRAConfig(r=2, targets="all-linear", dropout=0.5))
    loss, _ = model.loss_and_grads(ids, targets)
    assert loss == base_loss


# ---- files -----------------------------------------------------------------------------------------------------

def test_save_peft_layout(tmp_path):
    model = tiny_model(dtype="float32")
    lora = randomize(attach_lora(model, LoRAConfig(r=4, alpha=8, targets=("c_attn", "c_proj"), dropout=0.1)))
    lora.save_peft(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["fan_in_fan_out"] is True
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["use_rslora"], cfg["use_dora"]) == \
        (4, 8, 0.1, False, False)
    assert cfg["target_modules"] == ["c_attn", "c_proj"] and cfg["init_lora_weights"] is True
    assert cfg["bias"] == "none" and cfg["modules_to_save"] is None
    assert cfg["minift"]["base_fingerprint"] == model.fingerprint()
    from safetensors.numpy import load_file
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (192, 4)
    assert tensors["base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight"].shape == (4, 256)
    assert len(tensors) == 2 * 3 * 2 and all(k.startswith(PEFT_PREFIX) for k in tensors)


def test_save_peft_writes_what_peft_writes_a_model_card_and_peft_version(tmp_path):
    """PEFT's save_pretrained also writes README.md (a model card: YAML front matter with library_name peft) and
    adapter_config.json's peft_version; minift records the PEFT format version its files follow."""
    from minift.lora import PEFT_FORMAT_VERSION
    model = tiny_model(dtype="float32")
    model.add_classification_head(["neg", "pos"], seed=1)
    attach_lora(model, LoRAConfig(r=4, alpha=8, targets="all-linear", rslora=True)).save_peft(
        tmp_path, base_model_name_or_path="runs/base")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_version"] == PEFT_FORMAT_VERSION
    card = (tmp_path / "README.md").read_text()
    front = card.split("---\n")[1]
    assert card.startswith("---\n") and "library_name: peft" in front and 'base_model: "runs/base"' in front
    assert "pipeline_tag: text-classification" in front
    for fact in ("rank r = 4", "lora_alpha = 8", "α/√r (rsLoRA) = 4", "every linear", "['neg', 'pos']",
                 model.fingerprint(), "GPT2ForSequenceClassification", f"PEFT {PEFT_FORMAT_VERSION}"):
        assert fact in card, fact


@pytest.mark.parametrize("kwargs", [dict(), dict(use_dora=True, rslora=True, init="gaussian"), dict(with_head=True)])
def test_save_and_load_round_trip(tmp_path, kwargs):
    kwargs = dict(kwargs)
    with_head = kwargs.pop("with_head", False)
    model = tiny_model(dtype="float32")
    if with_head:
        model.add_classification_head(["neg", "pos", "mixed"], seed=1)
    lora = randomize(attach_lora(model, LoRAConfig(r=3, targets="all-linear", **kwargs)))
    ids, _ = batch(model.cfg)
    out = model.forward(ids)
    lora.save_peft(tmp_path / "adapter")
    fresh = tiny_model(dtype="float32")                                   # the same base, no head
    loaded = load_peft(fresh, tmp_path / "adapter")
    assert loaded.config == lora.config and not loaded.training            # eval mode, as PEFT's from_pretrained
    np.testing.assert_array_equal(fresh.forward(ids), out)
    assert set(fresh.trainable_params()) == set(model.trainable_params())
    if with_head:
        assert fresh.labels == ["neg", "pos", "mixed"]
        tensors = load_safetensors(tmp_path / "adapter" / "adapter_model.safetensors")[0]
        assert PEFT_HEAD_KEY in tensors


def test_load_refuses_another_base_and_broken_files(tmp_path):
    model = tiny_model()
    attach_lora(model, LoRAConfig(r=2)).save_peft(tmp_path)
    other = tiny_model(seed=1)
    with pytest.raises(MiniftError, match="different base model"):
        load_peft(other, tmp_path)
    assert not other.adapters and not other.frozen                         # refused: untouched
    with pytest.raises(MiniftError, match="not found"):
        load_peft(tiny_model(), tmp_path / "nope")
    small = GPT(GPTConfig(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_ctx=64), dtype="float64")
    with pytest.raises(MiniftError, match="different base|shape"):
        load_peft(small, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(MiniftError, match="truncated or corrupted"):
        load_peft(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{ not json")
    with pytest.raises(MiniftError, match="not valid JSON"):
        load_peft(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(MiniftError, match="adapter config not found"):
        load_peft(tiny_model(), tmp_path)


def test_load_refuses_mismatched_tensors_and_unsupported_config(tmp_path):
    model = tiny_model()
    attach_lora(model, LoRAConfig(r=2, targets=("c_attn",))).save_peft(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(cfg, target_modules=["c_fc"])))
    with pytest.raises(MiniftError, match="missing.*c_fc"):
        load_peft(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(cfg, r=3)))
    with pytest.raises(MiniftError, match="shape"):
        load_peft(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(cfg, rank_pattern={"c_attn": 4})))
    with pytest.raises(MiniftError, match="rank_pattern"):
        load_peft(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(cfg, peft_type="IA3")))
    with pytest.raises(MiniftError, match="IA3"):
        load_peft(tiny_model(), tmp_path)


def test_pissa_adapter_loads_on_the_residual_or_the_original_base(tmp_path):
    model = tiny_model()
    lora = randomize(attach_lora(model, LoRAConfig(r=4, targets=("attn.c_proj", "c_fc"), init="pissa")))
    ids, _ = batch(model.cfg)
    out = model.forward(ids)
    lora.save_peft(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    model.save_pretrained(tmp_path / "residual")                       # what PEFT asks for: the residual base
    on_residual = GPT.from_pretrained(tmp_path / "residual", dtype="float64")
    load_peft(on_residual, tmp_path / "adapter")
    np.testing.assert_array_equal(on_residual.forward(ids), out)
    on_original = tiny_model()                                         # the residual is recomputed: same SVD
    load_peft(on_original, tmp_path / "adapter")
    np.testing.assert_allclose(on_original.forward(ids), out, rtol=1e-12, atol=1e-12)
    with pytest.raises(MiniftError, match="different base model"):
        load_peft(tiny_model(seed=3), tmp_path / "adapter")


def test_public_names():
    for name in ("LoRA", "LoRAConfig", "attach_lora", "load_peft"):
        assert hasattr(minift, name) and name in minift.__all__


def test_the_scale_is_a_true_division():
    """s = α/r (α/√r for rsLoRA) as a float: integer division would agree at α = 16, r = 8 and nowhere else."""
    import math
    assert LoRAConfig(r=3, alpha=5).scale == pytest.approx(5 / 3, rel=1e-15)
    assert LoRAConfig(r=3, alpha=5, rslora=True).scale == pytest.approx(5 / math.sqrt(3), rel=1e-15)
    assert LoRAConfig(r=16, alpha=8).scale == 0.5
