"""The gradient checker itself: it passes correct backwards, catches wrong ones, and says where."""
import numpy as np
import pytest

from minift.errors import MiniftError
from minift.gradcheck import check_function, check_op
from minift.ops import layernorm_backward, layernorm_forward, linear_backward, linear_forward


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 4, 5)) * 2 + 1, rng.standard_normal(5) + 1, rng.standard_normal(5)


def _layernorm_backward_without_mean_term(dy, cache):
    """A plausible bug: dx = rstd (dx̂ - x̂ mean(dx̂ x̂)), forgetting that shifting x does not change x̂."""
    xhat, rstd, w = cache
    dxhat = dy * w                                                       # (..., C)
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    _, dw, db = layernorm_backward(dy, cache, need_dx=False)
    return dx, dw, db


def test_correct_backward_passes():
    report = check_op(layernorm_forward, layernorm_backward, list(_inputs()), names=["x", "w", "b"])
    assert report.ok and report.max_error < 1e-7
    assert [e.name for e in report.entries] == ["x", "w", "b"]
    assert report.assert_ok() is report


def test_missing_mean_term_fails_and_names_the_input():
    report = check_op(layernorm_forward, _layernorm_backward_without_mean_term, list(_inputs()), names=["x", "w", "b"])
    assert not report.ok
    assert not report["x"].ok and report["x"].max_error > 1e-2          # wrong by far more than rounding
    assert report["w"].ok and report["b"].ok                             # the other gradients are still right
    with pytest.raises(AssertionError, match="gradient check failed for x\n"):
        report.assert_ok()


def test_report_string_names_input_and_worst_index():
    report = check_op(layernorm_forward, _layernorm_backward_without_mean_term, list(_inputs()), names=["x", "w", "b"])
    text = str(report)
    bad = report["x"]
    assert len(bad.worst_index) == 3 and all(0 <= i < n for i, n in zip(bad.worst_index, bad.shape))
    row = next(line for line in text.splitlines() if line.strip().startswith("x "))
    assert str(bad.worst_index) in row and "FAIL" in row and f"{bad.max_error:.2e}" in row
    assert "worst index" in text.splitlines()[1]


def test_linear_backward_with_wrong_sign_fails_for_w():
    def backward(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return dx, -dw, db                                               # the sign error: W would climb the loss

    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)]
    report = check_op(linear_forward, backward, inputs, names=["x", "W", "b"])
    assert report["x"].ok and report["b"].ok and not report["W"].ok
    assert report["W"].max_error == pytest.approx(2.0)                  # |a - (-a)| / |a| = 2
    with pytest.raises(AssertionError, match="failed for W"):
        report.assert_ok()


def test_random_upstream_gradient_catches_what_ones_hide():
    # dx = 1 Wᵀ ignores dy: right only for an all-ones upstream gradient, the case a random dout rules out
    def backward(dy, cache):
        x2, w, _, x_shape = cache
        return (np.ones_like(dy) @ w.T).reshape(x_shape)

    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    forward = lambda x: linear_forward(x, w)                            # noqa: E731  only x is checked
    assert check_op(forward, backward, [x], dout=np.ones((3, 2))).ok
    assert not check_op(forward, backward, [x]).ok


def test_float32_input_is_refused():
    x, w = np.ones((2, 3), dtype=np.float32), np.ones((3, 4), dtype=np.float32)
    with pytest.raises(MiniftError, match=r"gradient check of 'x' needs a float64 array, got float32"):
        check_op(lambda x, w: linear_forward(x, w), lambda dy, c: linear_backward(dy, c)[:2], [x, w], names=["x", "w"])


@pytest.mark.parametrize("max_entries", [1, 7, 20])
def test_max_entries_checks_exactly_that_many(max_entries):
    report = check_op(layernorm_forward, layernorm_backward, list(_inputs()), names=["x", "w", "b"],
                      max_entries=max_entries)
    assert report["x"].checked == max_entries and report["x"].total == 60
    assert report["w"].checked == min(max_entries, 5) and report["w"].total == 5   # small tensors: all entries
    assert f"{max_entries}/60" in str(report)
    assert report.ok


def test_backward_mistakes_are_clear_errors():
    x = np.random.default_rng(3).standard_normal((2, 3))
    with pytest.raises(MiniftError, match=r"gradient of 'x' has shape \(3, 2\), expected \(2, 3\)"):
        check_op(lambda x: (x * 2, None), lambda dy, c: (2 * dy).T, [x], names=["x"])
    with pytest.raises(MiniftError, match="backward returned 2 gradients but wrt names 1 inputs"):
        check_op(lambda x: (x * 2, None), lambda dy, c: (2 * dy, 2 * dy), [x])
    with pytest.raises(MiniftError, match="backward returned no gradient for 'x'"):
        check_op(lambda x: (x * 2, None), lambda dy, c: None, [x], names=["x"])


def test_check_function_on_a_scalar_loss():
    rng = np.random.default_rng(4)
    arrays = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    loss = lambda: float((np.tanh(arrays["a"]) * arrays["b"]).sum())   # noqa: E731  reads the current arrays
    grads = {"a": (1 - np.tanh(arrays["a"]) ** 2) * arrays["b"], "b": np.tanh(arrays["a"]).sum(axis=0)}
    assert check_function(loss, arrays, grads).ok
    assert not check_function(loss, arrays, {"a": grads["a"], "b": -grads["b"]}).ok
    with pytest.raises(MiniftError, match="'c', which is not among the checked arrays"):
        check_function(loss, arrays, {"c": grads["b"]})
