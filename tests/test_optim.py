"""Optimizers, schedules and clipping: worked cases by hand, torch cross-checks, in-place/frozen/dtype invariants,
checkpoint round trips, and error messages."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.optim import SGD, AdamW, clip_grad_norm, global_grad_norm, lr_schedule

from helpers import rand, torch_or_skip

TORCH_RTOL = 1e-12   # float64, same formula and order as torch: differences are a few ulps per step


def vec(xp, *values, dtype=np.float64):
    return xp.asarray(np.array(values, dtype=dtype))


def model_params(xp, rng, dtype=np.float64):
    """A small stand-in for model.params: two matrices and two vectors, away from zero."""
    shapes = {"h.0.attn.c_attn.weight": (3, 4), "h.0.attn.c_attn.bias": (4,),
              "h.0.ln_1.weight": (3,), "wte.weight": (5, 3)}
    return {name: rand(xp, rng, *shape).astype(dtype) for name, shape in shapes.items()}


def random_grads(xp, rng, params):
    return {name: rand(xp, rng, *p.shape).astype(p.dtype) for name, p in params.items()}


# ---------------------------------------------------------------------------------------------------------------------
# worked cases, by hand

def test_adamw_two_steps_by_hand(xp):
    w = vec(xp, 1.0, -2.0)
    opt = AdamW({"w": w}, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, decay={"w"})
    # step 1, g = [0.5, -1]:
    #   decay:  p = p·(1 − 0.1·0.1) = [0.99, −1.98]
    #   m = 0.1 g = [0.05, −0.1];  v = 0.001 g² = [0.00025, 0.001]
    #   m̂ = m / 0.1 = g;  v̂ = v / 0.001 = g²  →  step = 0.1 · g / (|g| + 1e-8) ≈ 0.1 · sign(g)
    #   p = [0.99 − 0.1·0.5/0.50000001, −1.98 + 0.1·1/1.00000001] = [0.890000002, −1.880000001]
    opt.step({"w": vec(xp, 0.5, -1.0)})
    np.testing.assert_allclose(to_numpy(w), [0.890000002, -1.880000001], rtol=1e-15)
    # step 2, g = [1, 1]:
    #   decay:  p = 0.99 p = [0.88110000198, −1.86120000099]
    #   m = 0.9 [0.05, −0.1] + 0.1 [1, 1] = [0.145, 0.01]
    #   v = 0.999 [0.00025, 0.001] + 0.001 [1, 1] = [0.00124975, 0.001999]
    #   1 − β1² = 0.19,  1 − β2² = 0.001999
    #   m̂ = [0.145/0.19, 0.01/0.19] = [0.76315789, 0.05263158];  v̂ = [0.00124975/0.001999, 1] = [0.62518759, 1]
    #   step = 0.1 · m̂ / (√v̂ + 1e-8) = [0.1 · 0.76315789/0.79068805, 0.1 · 0.05263158/1.00000001]
    #        = [0.09651820, 0.00526316]
    #   p = [0.88110000198 − 0.09651820, −1.86120000099 − 0.00526316] = [0.78458180, −1.86646316]
    opt.step({"w": vec(xp, 1.0, 1.0)})
    np.testing.assert_allclose(to_numpy(w), [0.7845818006185094, -1.8664631588321052], rtol=1e-14)
    np.testing.assert_allclose(to_numpy(opt.state["w"]["m"]), [0.145, 0.01], rtol=1e-14)
    np.testing.assert_allclose(to_numpy(opt.state["w"]["v"]), [0.00124975, 0.001999], rtol=1e-14)
    assert opt.t == 2


@pytest.mark.parametrize("nesterov, after1, after2", [
    # classic: b = g1 = [0.5, −1];  p = [1, −2] − 0.1 b = [0.95, −1.9]
    #          b = 0.9 [0.5, −1] + [1, 1] = [1.45, 0.1];  p = [0.95 − 0.145, −1.9 − 0.01] = [0.805, −1.91]
    (False, [0.95, -1.9], [0.805, -1.91]),
    # nesterov: b = g1;  d = g1 + 0.9 b = 1.9 g1 = [0.95, −1.9];  p = [1 − 0.095, −2 + 0.19] = [0.905, −1.81]
    #           b = [1.45, 0.1];  d = [1, 1] + 0.9 b = [2.305, 1.09];  p = [0.905 − 0.2305, −1.81 − 0.109]
    (True, [0.905, -1.81], [0.6745, -1.919]),
])
def test_sgd_momentum_two_steps_by_hand(xp, nesterov, after1, after2):
    w = vec(xp, 1.0, -2.0)
    opt = SGD({"w": w}, lr=0.1, momentum=0.9, nesterov=nesterov)
    opt.step({"w": vec(xp, 0.5, -1.0)})
    np.testing.assert_allclose(to_numpy(w), after1, rtol=1e-14)
    opt.step({"w": vec(xp, 1.0, 1.0)})
    np.testing.assert_allclose(to_numpy(w), after2, rtol=1e-14)


def test_sgd_weight_decay_is_coupled_by_hand(xp):
    w = vec(xp, 1.0, -2.0)
    opt = SGD({"w": w}, lr=0.1, momentum=0.9, weight_decay=0.5, decay={"w"})
    # d = g + 0.5 p = [0.5 + 0.5, −1 − 1] = [1, −2];  b = d;  p = [1 − 0.1, −2 + 0.2] = [0.9, −1.8]
    opt.step({"w": vec(xp, 0.5, -1.0)})
    np.testing.assert_allclose(to_numpy(w), [0.9, -1.8], rtol=1e-14)
    # d = [1, 1] + 0.5 [0.9, −1.8] = [1.45, 0.1];  b = 0.9 [1, −2] + d = [2.35, −1.7];  p = [0.665, −1.63]
    opt.step({"w": vec(xp, 1.0, 1.0)})
    np.testing.assert_allclose(to_numpy(w), [0.665, -1.63], rtol=1e-14)
    np.testing.assert_allclose(to_numpy(opt.state["w"]["momentum"]), [2.35, -1.7], rtol=1e-14)


def test_schedules_by_hand():
    kw = dict(base_lr=1.0, total_steps=10, warmup_steps=2, min_lr=0.1)
    # warmup: step s < 2 gets (s + 1)/2; then progress = (s − 2)/8
    for kind in ("cosine", "linear", "constant"):
        assert lr_schedule(0, kind=kind, **kw) == 0.5
        assert lr_schedule(1, kind=kind, **kw) == 1.0
        assert lr_schedule(2, kind=kind, **kw) == 1.0                     # progress 0: the full base_lr
    # s = 4: progress 1/4.  cosine: 0.1 + 0.9 · ½(1 + cos(π/4)) = 0.1 + 0.9 · 0.8535534 = 0.8681981
    assert lr_schedule(4, kind="cosine", **kw) == pytest.approx(0.8681980515, rel=1e-10)
    #                      linear: 0.1 + 0.9 · 3/4 = 0.775
    assert lr_schedule(4, kind="linear", **kw) == pytest.approx(0.775, rel=1e-14)
    # s = 6: progress ½.  cosine: 0.1 + 0.9 · ½ = 0.55;  linear: the same
    assert lr_schedule(6, kind="cosine", **kw) == pytest.approx(0.55, rel=1e-14)
    assert lr_schedule(6, kind="linear", **kw) == pytest.approx(0.55, rel=1e-14)
    # s ≥ total_steps: min_lr (constant stays at base_lr)
    for s in (10, 25):
        assert lr_schedule(s, kind="cosine", **kw) == 0.1
        assert lr_schedule(s, kind="linear", **kw) == 0.1
        assert lr_schedule(s, kind="constant", **kw) == 1.0
    # no warmup: step 0 is base_lr; warmup == total: warmup then min_lr
    assert lr_schedule(0, 3e-4, 100) == 3e-4
    assert lr_schedule(4, 1.0, 5, warmup_steps=5, kind="linear") == 1.0
    assert lr_schedule(5, 1.0, 5, warmup_steps=5, kind="linear") == 0.0


@given(total=st.integers(1, 50), warmup=st.integers(0, 50), kind=st.sampled_from(["cosine", "linear"]))
def test_schedule_is_monotone_after_warmup(total, warmup, kind):
    warmup = min(warmup, total)
    lrs = [lr_schedule(s, 1.0, total, warmup, kind, min_lr=0.05) for s in range(total + 3)]
    peak = max(warmup - 1, 0)                                               # the last warmup step: base_lr
    assert all(0.0 < lr <= 1.0 for lr in lrs[:peak])                        # warmup starts near 0, not at min_lr
    assert all(0.05 <= lr <= 1.0 for lr in lrs[peak:])
    assert lrs[peak] == 1.0
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))          # warmup rises to base_lr
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))          # then never rises
    assert lrs[total] == 0.05                                               # and ends at min_lr


def test_clip_grad_norm_by_hand(xp):
    grads = {"a": vec(xp, 3.0, 4.0), "b": vec(xp, 12.0)}
    assert global_grad_norm(grads) == 13.0                                 # √(9 + 16 + 144)
    norm = clip_grad_norm(grads, 6.5)                                       # scale 6.5 / (13 + 1e-6) ≈ ½
    assert norm == 13.0
    scale = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(to_numpy(grads["a"]), [3.0 * scale, 4.0 * scale], rtol=1e-15)
    np.testing.assert_allclose(to_numpy(grads["b"]), [12.0 * scale], rtol=1e-15)
    assert global_grad_norm(grads) == pytest.approx(6.5, rel=1e-6)
    # below the threshold: returned norm, gradients bitwise untouched
    before = {k: to_numpy(g).copy() for k, g in grads.items()}
    assert clip_grad_norm(grads, 100.0) == pytest.approx(6.5, rel=1e-6)
    for k in grads:
        np.testing.assert_array_equal(to_numpy(grads[k]), before[k])
    # torch's edge: a norm exactly at max_norm is still scaled, by 5 / (5 + 1e-6)
    grads = {"a": vec(xp, 3.0, 4.0)}
    assert clip_grad_norm(grads, 5.0) == 5.0
    np.testing.assert_allclose(to_numpy(grads["a"]), [3.0 * 5 / (5 + 1e-6), 4.0 * 5 / (5 + 1e-6)], rtol=1e-15)


def test_grad_norm_accumulates_in_float64(xp):
    # 10⁶ float32 entries of 0.1: a float32 running sum drifts visibly; float64 accumulation gives √(10⁶·0.1²) = 100
    g = xp.full(10**6, 0.1, dtype=np.float32)
    norm = global_grad_norm({"g": g, "frozen": None})                       # None entries are skipped
    assert isinstance(norm, float)
    assert norm == pytest.approx(1000 * float(np.float32(0.1)), rel=1e-7)
    assert clip_grad_norm({"g": g}, 1.0) == norm and g.dtype == np.float32


def test_grad_norm_of_finite_float32_gradients_is_finite(xp):
    # 4.5e22 is a finite float32, its square (2e45) is not: squaring in float32 gave inf, which the training loop
    # reads as divergence (tutorial 06 stopped at lr 1e4 with every gradient finite, depending on BLAS rounding)
    g = xp.full(4, 4.5e22, dtype=np.float32)
    norm = global_grad_norm({"g": g})
    assert math.isfinite(norm) and norm == pytest.approx(2 * float(np.float32(4.5e22)), rel=1e-7)
    clip_grad_norm({"g": g}, 1.0)
    assert np.allclose(to_numpy(g), 0.5, rtol=1e-6)                        # scaled to norm 1: four entries of 1/2


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
def test_adamw_first_step_is_lr_per_coordinate_whatever_the_gradient_scale(xp, scale):
    # Kingma & Ba §2.1: at t = 1, m̂ = g and v̂ = g², so each coordinate moves by η·|g|/(|g| + ε) ≈ η: the step
    # size does not depend on the gradient's scale (until |g| comes near ε)
    rng = np.random.default_rng(0)
    w = rand(xp, rng, 50, scale=3.0)
    g = rand(xp, rng, 50, scale=scale)
    w0, g0 = to_numpy(w).copy(), to_numpy(g)
    AdamW({"w": w}, lr=0.01, weight_decay=0.0).step({"w": g})
    step = np.abs(to_numpy(w) - w0)
    np.testing.assert_allclose(step, 0.01 * np.abs(g0) / (np.abs(g0) + 1e-8), rtol=1e-12)
    assert np.all(step <= 0.01 * (1 + 1e-15))


# ---------------------------------------------------------------------------------------------------------------------
# cross-checks against torch (float64)

def run_torch(torch, make_opt, params, grads_per_step, lrs):
    """Run a torch optimizer over copies of params with the given gradients; return the final values."""
    tp = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in params.items()}
    opt = make_opt(tp)
    for grads, lr in zip(grads_per_step, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tp.items()}


def groups(params, tensors, wd):
    """torch param groups matching minift's default: decay for ndim ≥ 2, none for vectors."""
    return [{"params": [tensors[k] for k in params if params[k].ndim >= 2], "weight_decay": wd},
            {"params": [tensors[k] for k in params if params[k].ndim < 2], "weight_decay": 0.0}]


def scheduled_run(opt_factory, params, grads_per_step, lrs):
    mine = {k: v.copy() for k, v in params.items()}
    opt = opt_factory(mine)
    for grads, lr in zip(grads_per_step, lrs):
        opt.step(grads, lr=lr)
    return mine


def torch_case(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    params = model_params(np, rng)
    grads = [random_grads(np, rng, params) for _ in range(steps)]
    lrs = [lr_schedule(s, 0.05, steps, warmup_steps=2) for s in range(steps)]
    return params, grads, lrs


def test_adamw_matches_torch():
    torch = torch_or_skip()
    params, grads, lrs = torch_case()
    mine = scheduled_run(lambda p: AdamW(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3),
                         params, grads, lrs)
    ref = run_torch(torch, lambda t: torch.optim.AdamW(groups(params, t, 0.3), lr=0.05, betas=(0.8, 0.99), eps=1e-6),
                    params, grads, lrs)
    for k in params:
        np.testing.assert_allclose(mine[k], ref[k], rtol=TORCH_RTOL, atol=1e-15, err_msg=k)
        assert not np.array_equal(mine[k], params[k])


def test_lr_scale_matches_torch_param_groups():
    # lr_scale={name: f} is a torch parameter group whose lr is f times the schedule's (decay included)
    torch = torch_or_skip()
    params, grads, lrs = torch_case(seed=4)
    scaled = {k: 0.1 for k in params if params[k].ndim >= 2}                 # e.g. pretrained weights slower
    mine = scheduled_run(lambda p: AdamW(p, lr=0.05, weight_decay=0.3, lr_scale=scaled), params, grads, lrs)
    tp = {k: torch.tensor(np.array(v), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW([{"params": [tp[k] for k in scaled], "weight_decay": 0.3, "f": 0.1},
                             {"params": [tp[k] for k in params if k not in scaled], "weight_decay": 0.0, "f": 1.0}],
                            lr=0.05)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr * group["f"]
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    for k in params:
        np.testing.assert_allclose(mine[k], tp[k].detach().numpy(), rtol=TORCH_RTOL, atol=1e-15, err_msg=k)


def test_lr_scale_zero_freezes_and_round_trips():
    rng = np.random.default_rng(5)
    params = model_params(np, rng)
    before = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, lr=0.1, lr_scale={"wte.weight": 0.0})
    opt.step(random_grads(np, rng, params))
    np.testing.assert_array_equal(params["wte.weight"], before["wte.weight"])
    assert not np.array_equal(params["h.0.ln_1.weight"], before["h.0.ln_1.weight"])
    fresh = AdamW(params)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.lr_scale == {"wte.weight": 0.0}
    with pytest.raises(MiniftError, match="lr_scale names .*'nope'"):
        AdamW(params, lr_scale={"nope": 2.0})
    with pytest.raises(MiniftError, match=r"lr_scale\['wte.weight'\]"):
        AdamW(params, lr_scale={"wte.weight": -1.0})


@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0),
                                                    (0.9, False, 0.1), (0.5, True, 0.1), (0.0, False, 0.1)])
def test_sgd_matches_torch(momentum, nesterov, wd):
    torch = torch_or_skip()
    params, grads, lrs = torch_case(seed=1)
    mine = scheduled_run(lambda p: SGD(p, momentum=momentum, nesterov=nesterov, weight_decay=wd),
                         params, grads, lrs)
    ref = run_torch(torch, lambda t: torch.optim.SGD(groups(params, t, wd), lr=0.1, momentum=momentum,
                                                     nesterov=nesterov), params, grads, lrs)
    for k in params:
        np.testing.assert_allclose(mine[k], ref[k], rtol=TORCH_RTOL, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    grads = random_grads(np, rng, model_params(np, rng))
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    ref_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(ref_norm, rel=1e-14)
    for g, t in zip(grads.values(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# invariants: in place, frozen untouched, dtype kept, default decay

@pytest.mark.parametrize("make", [lambda p: AdamW(p, weight_decay=0.1), lambda p: SGD(p, momentum=0.9,
                                                                                       weight_decay=0.1)])
def test_only_given_params_change_in_place(xp, make):
    rng = np.random.default_rng(3)
    params = model_params(xp, rng)
    frozen = "wte.weight"
    frozen_before = to_numpy(params[frozen]).copy()
    trainable = {k: v for k, v in params.items() if k != frozen}
    ids = {k: id(v) for k, v in params.items()}
    before = {k: to_numpy(v).copy() for k, v in trainable.items()}
    opt = make(trainable)
    grads = random_grads(xp, rng, params)                                   # includes the frozen one: ignored
    grads_before = {k: to_numpy(g).copy() for k, g in grads.items()}
    for _ in range(3):
        opt.step(grads)
    np.testing.assert_array_equal(to_numpy(params[frozen]), frozen_before)
    for k in trainable:
        assert id(params[k]) == ids[k] and opt.params[k] is params[k]      # updated in place, never rebound
        assert not np.array_equal(to_numpy(params[k]), before[k])
    for k, g in grads.items():                                              # the gradients are not modified
        np.testing.assert_array_equal(to_numpy(g), grads_before[k])


@pytest.mark.parametrize("make", [lambda p: AdamW(p), lambda p: SGD(p, momentum=0.9, nesterov=True,
                                                                     weight_decay=0.01)])
def test_float32_stays_float32(xp, make):
    rng = np.random.default_rng(4)
    params = model_params(xp, rng, dtype=np.float32)
    opt = make(params)
    for _ in range(2):
        opt.step(random_grads(xp, rng, params), lr=0.01)
    for k, p in params.items():
        assert p.dtype == np.float32, k
        assert all(a.dtype == np.float32 for a in opt.state[k].values()), k
    assert all(a.dtype == np.float32 for a in opt.state_dict()["arrays"].values())


@pytest.mark.parametrize("Opt, kw", [(AdamW, dict(lr=0.1, weight_decay=0.1)),
                                     (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1))])
def test_default_decay_is_matrices_only(xp, Opt, kw):
    w, b = xp.ones((2, 3)), xp.ones(3)
    opt = Opt({"w": w, "b": b}, **kw)
    assert opt.decay == {"w"}
    opt.step({"w": xp.zeros((2, 3)), "b": xp.zeros(3)})                     # zero gradient: only decay can move p
    np.testing.assert_allclose(to_numpy(w), np.full((2, 3), 0.99), rtol=1e-15)   # p · (1 − 0.1 · 0.1)
    np.testing.assert_array_equal(to_numpy(b), np.ones(3))
    assert Opt({"w": w, "b": b}, decay=["b"], **kw).decay == {"b"}


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints

@pytest.mark.parametrize("make", [lambda p: AdamW(p, lr=0.01, weight_decay=0.1),
                                  lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)])
def test_state_dict_round_trip_is_bitwise(xp, make):
    rng = np.random.default_rng(5)
    start = model_params(xp, rng, dtype=np.float32)
    grads = [random_grads(xp, rng, start) for _ in range(6)]
    lrs = [lr_schedule(s, 0.01, 6, warmup_steps=2) for s in range(6)]

    straight = {k: v.copy() for k, v in start.items()}                    # 6 steps without interruption
    opt = make(straight)
    for g, lr in zip(grads, lrs):
        opt.step(g, lr=lr)

    resumed = {k: v.copy() for k, v in start.items()}                     # 3 steps, checkpoint, 3 more
    opt = make(resumed)
    for g, lr in zip(grads[:3], lrs[:3]):
        opt.step(g, lr=lr)
    sd = opt.state_dict()
    sd = {**sd, "arrays": {k: np.array(a) for k, a in sd["arrays"].items()}}   # as if saved to disk and read back
    assert all(isinstance(a, np.ndarray) for a in sd["arrays"].values())
    params = {k: xp.array(to_numpy(v), copy=True) for k, v in resumed.items()}          # a freshly loaded model
    fresh = type(opt)(params, lr=123.0)                                     # other hyperparameters: restored by load
    fresh.load_state_dict(sd)
    assert fresh.t == 3 and fresh.state_dict()["hyperparameters"] == sd["hyperparameters"]
    for g, lr in zip(grads[3:], lrs[3:]):
        fresh.step(g, lr=lr)
    for k in start:
        np.testing.assert_array_equal(to_numpy(params[k]), to_numpy(straight[k]), err_msg=k)


def test_state_dict_is_a_snapshot_with_safetensors_names():
    w = np.ones((2, 2))
    opt = AdamW({"h.0.attn.c_attn.weight": w, "ln_f.bias": np.ones(2)})
    sd = opt.state_dict()
    assert set(sd["arrays"]) == {"m.h.0.attn.c_attn.weight", "v.h.0.attn.c_attn.weight", "m.ln_f.bias", "v.ln_f.bias"}
    assert sd["optimizer"] == "AdamW" and sd["t"] == 0
    assert sd["hyperparameters"]["decay"] == ["h.0.attn.c_attn.weight"]
    opt.step({"h.0.attn.c_attn.weight": np.ones((2, 2)), "ln_f.bias": np.ones(2)})
    assert not sd["arrays"]["m.ln_f.bias"].any()                            # the snapshot did not move with opt
    assert SGD({"w": w}).state_dict()["arrays"] == {}                       # no momentum, no state


def test_load_state_dict_errors_leave_optimizer_unchanged():
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    opt = AdamW(params)
    opt.step({"w": np.ones((2, 2)), "b": np.ones(2)})
    good = opt.state_dict()
    other = AdamW({"w": np.ones((2, 2)), "c": np.ones(2)}).state_dict()
    with pytest.raises(MiniftError, match=r"missing \['m.b', 'v.b'\], unexpected \['m.c', 'v.c'\]"):
        opt.load_state_dict(other)
    bad_shape = {**good, "arrays": {**good["arrays"], "m.w": np.zeros((3, 2))}}
    with pytest.raises(MiniftError, match=r"m.'w'.*\(3, 2\).*\(2, 2\)"):
        opt.load_state_dict(bad_shape)
    bad_dtype = {**good, "arrays": {**good["arrays"], "v.b": np.zeros(2, np.float32)}}
    with pytest.raises(MiniftError, match=r"v.'b'.*float32.*float64"):
        opt.load_state_dict(bad_dtype)
    with pytest.raises(MiniftError, match="'SGD'"):
        opt.load_state_dict(SGD(params).state_dict())
    assert opt.t == 1
    np.testing.assert_array_equal(opt.state_dict()["arrays"]["m.w"], good["arrays"]["m.w"])


# ---------------------------------------------------------------------------------------------------------------------
# errors name their input

def test_step_errors_name_the_parameter(xp):
    params = {"h.0.mlp.c_fc.weight": xp.ones((2, 3)), "h.0.mlp.c_fc.bias": xp.ones(3)}
    opt = AdamW(params)
    with pytest.raises(MiniftError, match="no gradient for trainable parameter 'h.0.mlp.c_fc.bias'"):
        opt.step({"h.0.mlp.c_fc.weight": xp.ones((2, 3))})
    with pytest.raises(MiniftError, match=r"grads\['h.0.mlp.c_fc.weight'\] has shape \(3, 2\)"):
        opt.step({"h.0.mlp.c_fc.weight": xp.ones((3, 2)), "h.0.mlp.c_fc.bias": xp.ones(3)})
    with pytest.raises(MiniftError, match=r"grads\['h.0.mlp.c_fc.bias'\].*float32.*float64"):
        opt.step({"h.0.mlp.c_fc.weight": xp.ones((2, 3)), "h.0.mlp.c_fc.bias": xp.ones(3, dtype=np.float32)})
    assert opt.t == 0                                                       # nothing was applied
    np.testing.assert_array_equal(to_numpy(params["h.0.mlp.c_fc.weight"]), np.ones((2, 3)))


@pytest.mark.parametrize("make, word", [
    (lambda p: AdamW(p, lr=-1.0), "lr"),
    (lambda p: AdamW(p, betas=(0.9, 1.0)), r"betas\[1\]"),
    (lambda p: AdamW(p, betas=0.9), "betas"),
    (lambda p: AdamW(p, weight_decay=-0.1), "weight_decay"),
    (lambda p: AdamW(p, decay={"typo.weight"}), "typo.weight"),
    (lambda p: AdamW(p, decay="w"), "decay"),
    (lambda p: SGD(p, nesterov=True), "nesterov"),
    (lambda p: SGD(p, momentum=1.5), "momentum"),
    (lambda p: AdamW({}), "params"),
    (lambda p: AdamW({"x": np.ones(2, dtype=np.int64)}), "params.'x'"),
])
def test_bad_hyperparameters(make, word):
    with pytest.raises(MiniftError, match=word):
        make({"w": np.ones((2, 2))})


@pytest.mark.parametrize("args, word", [
    (dict(step=-1), "step"), (dict(step=1.5), "step"), (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=11), "warmup_steps"), (dict(warmup_steps=-1), "warmup_steps"),
    (dict(base_lr=-1.0), "base_lr"), (dict(min_lr=2.0), "min_lr"), (dict(kind="cosin"), "kind"),
    (dict(base_lr=float("nan")), "base_lr"),
])
def test_bad_schedule_arguments(args, word):
    kw = dict(step=0, base_lr=1.0, total_steps=10, warmup_steps=0, kind="cosine", min_lr=0.0)
    with pytest.raises(MiniftError, match=word):
        lr_schedule(**{**kw, **args})


def test_bad_step_lr_and_clip_norm():
    opt = SGD({"w": np.ones(2)})
    with pytest.raises(MiniftError, match="lr"):
        opt.step({"w": np.ones(2)}, lr=-0.1)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(MiniftError, match="max_norm"):
            clip_grad_norm({"w": np.ones(2)}, bad)
