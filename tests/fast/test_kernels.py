"""The fused GPU kernels (minift/fast/kernels.py) against the CPU lines of the fast twins they replace.

On tests/fakecupy.py (everywhere) a fused kernel must give those lines' bits and be one launch; on a real GPU (the
`cupy` cases, skipped without one) it must agree with the lines run on the same device to float rounding. The
fake's kernel interpreter is tested too: it is what stands between a body that would not compile, or would
compute in double, and a GPU session that finds out too late.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fakecupy
from minift.fast import kernels
from minift.backend import to_numpy
from minift.fast.attention import blocked_attention_backward, blocked_attention_forward
from minift.fast.gelu import gelu_backward, gelu_forward
from minift.fast.layernorm import layernorm_backward, layernorm_forward
from minift.optim import AdamW

from helpers import rand

_LEFT_PADDED = np.array([[1] * 10, [0] * 6 + [1] * 4], dtype=bool)   # row 1's first 6 queries see no key at all

# the same operations in another order, or CUDA's multiply-adds and tanh: float32 ~1e-7 relative, float64 ~1e-16
RTOL = {"float32": 2e-6, "float64": 1e-13}


def _gelu(x, dy):
    y, cache = gelu_forward(x)
    return [y, cache[1], gelu_backward(dy, cache)]


def _layernorm(x, dy, w, b):
    y, cache = layernorm_forward(x, w, b)
    dx, dw, db = layernorm_backward(dy, cache)
    return [y, cache[0], cache[1], dx, dw, db]


def _attention(qkv, dy, mask):
    """The blocked attention (its softmax: SHIFTED_EXP; its backward: SOFTMAX_DX), padded and fully masked rows."""
    y, cache = blocked_attention_forward(qkv, 2, mask, block=4)
    return [y, blocked_attention_backward(dy, cache)]


def _adamw(params, grads_per_step):
    opt = AdamW(params, lr=1e-2, weight_decay=0.1, lr_scale={"w": 0.5})
    for grads in grads_per_step:
        opt.step(grads)
    return [*params.values(), *(a for s in opt.state.values() for a in s.values())]


# the kernels each case must run on a device (and, on the fake, nothing else of minift's)
KERNELS = {"gelu": {"minift_gelu_forward", "minift_gelu_backward"},
           "layernorm": {"minift_layernorm_affine", "minift_layernorm_dx"},
           "attention": {"minift_shifted_exp", "minift_softmax_dx"},
           "adamw": {"minift_adamw_step"}}


def _cases(xp, dtype, rng):
    """(name, function, arguments) for each fused op; arrays away from neutral points (no zero gradient)."""
    def r(*shape, scale=1.0):
        return rand(xp, rng, *shape, scale=scale).astype(dtype)
    params = {"w": r(6, 5), "b": r(5)}
    steps = [{"w": r(6, 5), "b": r(5)} for _ in range(3)]
    return [("gelu", _gelu, (r(4, 7, 9, scale=3.0), r(4, 7, 9))),
            ("layernorm", _layernorm, (r(3, 5, 16, scale=2.0) + 1.0, r(3, 5, 16), r(16) + 1.0, r(16))),
            ("attention", _attention, (r(2, 10, 24, scale=2.0), r(2, 10, 8), xp.asarray(_LEFT_PADDED))),
            ("adamw", _adamw, (params, steps))]


def _run(case):
    """Run one case; its outputs on the host and the fused kernels it launched (counted on the fake)."""
    name, fn, args = case
    fakecupy.LAUNCHES.reset()
    out = fn(*args)
    return [to_numpy(a) for a in out], {k for k in fakecupy.LAUNCHES.by_name if k.startswith("minift_")}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_kernels_give_the_reference_bits_on_the_fake(fake_gpu, dtype):
    reference = _cases(np, dtype, np.random.default_rng(0))
    for case, ref in zip(_cases(fake_gpu, dtype, np.random.default_rng(0)), reference):
        got, launched = _run(case)
        assert launched == KERNELS[case[0]]                     # the fused branch ran, each of its kernels
        want, _ = _run(ref)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(g, w, err_msg=case[0])
    # one kernel where the reference makes a chain: count the launches of each op both ways
    x = fake_gpu.asarray(np.linspace(-3, 3, 24).reshape(4, 6).astype(dtype))
    for fused in (True, False):
        with kernels.use_fused(fused):
            fakecupy.LAUNCHES.reset()
            y, cache = gelu_forward(x)
            forward = fakecupy.LAUNCHES.count
            gelu_backward(y, cache)
            backward = fakecupy.LAUNCHES.count - forward
        assert (forward, backward) == ((1, 1) if fused else (9, 12))


def test_an_adamw_step_is_one_launch_per_parameter_on_the_fake(fake_gpu):
    rng = np.random.default_rng(1)
    params = {f"p{i}": rand(fake_gpu, rng, 3, 4).astype("float32") for i in range(5)}
    grads = {k: rand(fake_gpu, rng, 3, 4).astype("float32") for k in params}
    opt = AdamW(params, weight_decay=0.1)
    fakecupy.LAUNCHES.reset()
    opt.step(grads)
    assert fakecupy.LAUNCHES.by_name == {"minift_adamw_step": 5}
    with kernels.use_fused(False):
        fakecupy.LAUNCHES.reset()
        opt.step(grads)
    assert fakecupy.LAUNCHES.count == 5 * 14                    # the reference: 14 passes per parameter


def test_a_training_step_launches_far_fewer_kernels_fused(fake_gpu):
    from minift.measure.bench import build_step
    counts = {}
    for fused in (True, False):
        with kernels.use_fused(fused):
            _, step, _ = build_step("tiny", "full", device="gpu")
            step()
            fakecupy.LAUNCHES.reset()
            step()
            counts[fused] = fakecupy.LAUNCHES.count
    assert counts[True] < 0.45 * counts[False], counts          # measured: 257 vs 656


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_kernels_agree_with_the_reference_on_the_device(xp, dtype):
    # on NumPy there is nothing to fuse (get -> None); on the fake the bits agree (above); on a GPU: float rounding
    if xp is np:
        assert all(k.get(np) is None for k in _all_kernels())
        return
    assert all(k.get(xp) is not None for k in _all_kernels())
    fused_cases, reference_cases = (_cases(xp, dtype, np.random.default_rng(2)) for _ in range(2))
    for case, ref in zip(fused_cases, reference_cases):
        got, _ = _run(case)
        with kernels.use_fused(False):
            want, _ = _run(ref)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=case[0])


def _all_kernels():
    """Every fused kernel minift defines (each registers itself); the cases above cover each one."""
    assert set(kernels.REGISTRY) == set().union(*KERNELS.values())
    return list(kernels.REGISTRY.values())


def test_every_kernel_body_is_in_the_subset_the_fake_can_check():
    for k in _all_kernels():
        fakecupy.ElementwiseKernel(k.in_params, k.out_params, k.body, k.name)   # raises on anything outside it
        code = "\n".join(line.split("//")[0] for line in k.body.splitlines())
        # the fake also reads fast/dequant.py's raw-array kernel (indexing, ?:, ==, bit operations); a fused
        # kernel keeps to kernels.py's narrower language
        assert not any(op in code for op in ("[", "?", "==", ">>", "&", "%", "raw")), k.name


@pytest.mark.parametrize("body, why", [
    ("y = x * 0.5;", "C double"),                          # a double literal would turn float math into double math
    ("y = x * 1e-3;", "C double"),
    ("const T half = 0.5; y = x * half;", "reserved"),     # `half` is CUDA's 16-bit float type
    ("y = x > 0 ? x : 0;", "unsupported syntax"),
    ("y = x[0];", "unsupported syntax"),
    ("y = tanhf(x);", "unknown name"),
    ("z = x;", "before it is declared"),
    ("float z = x; y = z;", "declare local names as T"),
    ("y = (x + 1) / 2;", "integer literal beside /"),      # 1 / 2 is 0 in C
    ("x = x * x; y = x;", "cannot be assigned"),           # CuPy declares inputs const
    ("const T c = 2; c = x; y = c;", "cannot be assigned"),
    ("const T c = inf; y = x * c;", "plain number"),
    ("y = x;  // x²", "non-ASCII"),
])
def test_the_fake_kernel_refuses_what_would_not_compile_or_would_compute_in_double(body, why):
    with pytest.raises(NotImplementedError, match=why):
        fakecupy.ElementwiseKernel("T x", "T y", body, "bad")


def test_the_fake_kernel_broadcasts_casts_scalars_and_writes_outputs_in_place(fake_gpu):
    k = fake_gpu.ElementwiseKernel("T x, T s", "T y, T acc", "const T one = 1; y = x * s + one; acc = acc + y;", "k")
    x = fake_gpu.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    acc = fake_gpu.asarray(np.ones((2, 3), dtype=np.float32))
    y = fake_gpu.empty_like(acc)
    out = k(x, np.float32(2), y, acc)
    assert out[0] is y and out[1] is acc
    np.testing.assert_array_equal(acc.get(), 1 + (2 * np.arange(6).reshape(2, 3) + 1))
    column = fake_gpu.asarray(np.array([[10], [20]], dtype=np.float32))      # (2, 1) against (2, 3): broadcast
    y2, acc2 = k(x, column, fake_gpu.empty_like(acc), fake_gpu.zeros_like(acc))
    np.testing.assert_array_equal(y2.get(), np.arange(6).reshape(2, 3) * np.array([[10], [20]]) + 1)
    with pytest.raises(TypeError, match="share one dtype"):
        k(x, np.float32(2), y.astype(np.float64), acc)
    with pytest.raises(fakecupy.HostArrayError):
        k(np.ones((2, 3), dtype=np.float32), np.float32(2))


def test_the_environment_switches_fusion_off():
    code = "from minift.fast import kernels; print(kernels.fused_enabled())"
    for value, expected in (("0", "False"), ("off", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, kernels.FUSED_ENV: value},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == expected, value
