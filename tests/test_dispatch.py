"""minift/dispatch.py: the one place that chooses between the reference ops and their fast twins.

MINIFT_REFERENCE=1 (or use_reference()) must run the reference alone, and a short training run must give the same
numbers both ways, to rounding. The tolerances, float64 / float32: the fast twins reorder a few operations (GELU,
AdamW) and take the attention's scores through q (blocked), so gradients agree to ~1e-15 / ~1e-6 of their largest
entry and losses to ~1e-15 / ~1e-7 relative (measured; the bounds below leave a factor of 10 or more). AdamW divides
by √v, so where a gradient is near zero a rounding difference can move a weight by a fraction of the learning rate:
weights are compared to an absolute tolerance (measured after 5 steps at lr 3e-3: 6e-14 / 2.4e-5).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minift.model
import minift.optim
from minift import GPT, GPTConfig, dispatch
from minift.fast import attention
from minift.optim import AdamW

GRAD_RTOL = {"float64": 1e-13, "float32": 1e-5}     # of each gradient's largest entry
LOSS_RTOL = {"float64": 1e-13, "float32": 1e-6}
WEIGHT_ATOL = {"float64": 1e-11, "float32": 3e-4}   # a tenth of the learning rate below

OPS = {name: getattr(dispatch, name) for name in ("layernorm_forward", "layernorm_backward", "attention_forward",
                                                  "attention_backward", "gelu_forward", "gelu_backward")}


def _batches(cfg, n, B=4, T=64):
    rng = np.random.default_rng(0)
    return [(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))) for _ in range(n)]


def _train(cfg, dtype, batches, reference):
    """Full fine-tuning with AdamW (weight decay on) for len(batches) steps: (first gradients, losses, weights)."""
    with dispatch.use_reference(reference):
        model = GPT(cfg, seed=0, dtype=dtype)
        opt = AdamW(model.trainable_params(), lr=3e-3, weight_decay=0.1)
        losses, first = [], None
        for ids, targets in batches:
            loss, grads = model.loss_and_grads(ids, targets)
            first = first or {k: g.copy() for k, g in grads.items()}
            opt.step(grads)
            losses.append(loss)
    return first, np.array(losses), model.params


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_short_run_gives_the_same_numbers_with_the_reference_ops(monkeypatch, dtype):
    """tiny, 5 steps of 4 x 64 tokens; the attention block lowered to 16 so that the fast run takes the blocked path."""
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", 16)
    cfg = GPTConfig.preset("tiny")
    batches = _batches(cfg, 5)
    grads_fast, losses_fast, weights_fast = _train(cfg, dtype, batches, reference=False)
    grads_ref, losses_ref, weights_ref = _train(cfg, dtype, batches, reference=True)
    for name, g in grads_ref.items():
        assert grads_fast[name].dtype == g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(grads_fast[name], g, rtol=0, atol=GRAD_RTOL[dtype] * np.abs(g).max(), err_msg=name)
    np.testing.assert_allclose(losses_fast, losses_ref, rtol=LOSS_RTOL[dtype])
    for name, w in weights_ref.items():
        np.testing.assert_allclose(weights_fast[name], w, rtol=0, atol=WEIGHT_ATOL[dtype], err_msg=name)
    assert not np.array_equal(grads_fast["h.0.mlp.c_fc.weight"], grads_ref["h.0.mlp.c_fc.weight"])   # two paths


def test_the_reference_switch_runs_no_fast_twin(monkeypatch):
    """Under use_reference() every Op the model and the optimizer call runs its reference: the fast twins raise."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a fast twin ran under use_reference()")
    for op in [*OPS.values(), minift.optim.ADAMW_UPDATE]:
        monkeypatch.setattr(op, "fast", forbidden)
    monkeypatch.setattr(attention, "ATTENTION_BLOCK", 16)
    cfg = GPTConfig.preset("tiny")
    with dispatch.use_reference():
        assert dispatch.reference_only()
        _train(cfg, "float32", _batches(cfg, 1), reference=True)
    assert not dispatch.reference_only()
    with pytest.raises(AssertionError, match="a fast twin ran"):
        _train(cfg, "float32", _batches(cfg, 1), reference=False)


def test_the_model_and_the_optimizer_call_the_dispatched_ops():
    for name, op in OPS.items():
        assert getattr(minift.model, name) is op
        assert op.reference.__module__.startswith("minift.ops.") and op.fast.__module__.startswith("minift.fast.")
    assert minift.optim.ADAMW_UPDATE.reference is minift.optim.adamw_update


def test_the_environment_chooses_the_reference_once_at_import():
    code = "from minift import dispatch; print(dispatch.reference_only())"
    for value, expected in (("1", "True"), ("yes", "True"), ("0", "False"), ("", "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, dispatch.REFERENCE_ENV: value},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == expected, value
