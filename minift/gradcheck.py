"""Finite-difference gradient checks: is a hand-written backward the derivative of its forward?

The method (cs231n's gradient check, made stricter):
  1. Draw a *random* upstream gradient g with the output's shape. (An all-ones g hides bugs: e.g. a LayerNorm
     backward that treats 1/σ as a constant passes with g = 1 and LayerNorm's gain at 1, because the missing term
     is proportional to Σ g·x̂, which is then zero; tutorial 02 shows it.)
  2. Form the scalar L(x) = sum(f(x) * g). Its gradient with respect to an input x is exactly the vector-Jacobian
     product that `backward(g, cache)` claims to compute.
  3. Estimate dL/dx[i] by centered differences, (L(x + h e_i) - L(x - h e_i)) / 2h, whose error is O(h²) from
     truncation plus O(machine_eps · |L| / h) from rounding. For an op we difference the *outputs* first,
     sum((f(x + h e_i) - f(x - h e_i)) * g) / 2h: outputs that x_i does not touch cancel exactly, so rounding comes
     only from the entries that moved (about 1e-10 in float64 with h = 1e-5).
  4. Compare entry by entry with the relative error |a - n| / max(|a|, |n|, floor). The floor keeps entries that are
     (nearly) zero from turning rounding noise into a huge "relative" error. A correct float64 backward scores about
     1e-7 or less (usually far less); a wrong one scores 1e-2 to 2 (2: analytic and numeric of opposite signs).

Float64 is required: in float32 rounding noise (≈1e-7 · |L| / h) swamps the signal.

Public API:
  check_op(forward, backward, inputs)          an op pair `forward(*inputs) -> (out, cache)`, `backward(dout, cache)`
  check_function(loss_fn, arrays, grads)        any scalar function of named arrays perturbed in place (a model)
Both return a `GradReport`: `print(report)` gives a table, `report.ok` a verdict, `report.assert_ok()` raises with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import to_numpy, xp_of
from .errors import MiniftError

DEFAULT_EPS = 1e-5    # step h of the centered difference
DEFAULT_FLOOR = 1e-3  # denominators below this count as this (absolute error for near-zero gradients)
DEFAULT_TOL = 1e-5    # largest accepted relative error in float64


@dataclass
class GradEntry:
    """The result for one input tensor."""
    name: str
    shape: tuple
    checked: int          # number of entries compared
    total: int            # number of entries in the tensor
    max_error: float      # worst relative error
    worst_index: tuple    # where it happened
    analytic: float       # the backward's value there
    numeric: float        # the finite-difference value there
    tol: float

    @property
    def ok(self) -> bool:
        return bool(self.max_error <= self.tol)


@dataclass
class GradReport:
    """All inputs' results; `str()` is a readable table."""
    entries: list = field(default_factory=list)
    floor: float = DEFAULT_FLOOR

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    @property
    def max_error(self) -> float:
        return max((e.max_error for e in self.entries), default=0.0)

    def __getitem__(self, name) -> GradEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def __str__(self) -> str:
        header = (f"gradient check, error = |analytic - numeric| / max(|analytic|, |numeric|, {self.floor:g})\n"
                  f"  {'input':<28} {'shape':<16} {'checked':>11} {'max error':>10}  {'tol':>7}  "
                  f"{'worst index':<16} {'analytic':>12} {'numeric':>12}")
        rows = [f"  {e.name:<28} {str(e.shape):<16} {f'{e.checked}/{e.total}':>11} {e.max_error:>10.2e}  "
                f"{e.tol:>7.0e}  {str(e.worst_index):<16} {e.analytic:>12.6g} {e.numeric:>12.6g}  "
                f"{'ok' if e.ok else 'FAIL'}" for e in self.entries]
        return "\n".join([header] + rows)

    def assert_ok(self) -> "GradReport":
        if not self.ok:
            bad = ", ".join(e.name for e in self.entries if not e.ok)
            raise AssertionError(f"gradient check failed for {bad}\n{self}")
        return self


def _require_float64(a, name):
    if a.dtype != np.float64:
        raise MiniftError(f"gradient check of {name!r} needs a float64 array, got {a.dtype}: "
                          "finite differences in float32 are dominated by rounding")


def _sample_indices(shape, max_entries, rng):
    """All indices of a tensor, or a seeded random sample of `max_entries` of them (for large tensors)."""
    total = int(np.prod(shape, dtype=np.int64))
    if max_entries is None or total <= max_entries:
        flat = np.arange(total)
    else:
        flat = np.sort(rng.choice(total, size=max_entries, replace=False))
    return [np.unravel_index(i, shape) for i in flat]


def _check_array(eval_fn, contract, x, analytic, name, *, eps, floor, tol, max_entries, rng) -> GradEntry:
    """Compare `analytic` (dL/dx) with centered differences while x is perturbed in place.

    eval_fn() recomputes the output from the current x; contract(up - down) turns the difference of two outputs
    into the difference of the scalar L (for an op: sum(diff * dout); for a scalar loss: the number itself).
    """
    _require_float64(x, name)
    if analytic is None:
        raise MiniftError(f"backward returned no gradient for {name!r}")
    analytic = to_numpy(analytic)
    if analytic.shape != x.shape:
        raise MiniftError(f"gradient of {name!r} has shape {analytic.shape}, expected {x.shape}")
    worst = (0.0, (), 0.0, 0.0)
    indices = _sample_indices(x.shape, max_entries, rng)
    for idx in indices:
        original = float(x[idx])
        x[idx] = original + eps
        up = eval_fn()
        x[idx] = original - eps
        down = eval_fn()
        x[idx] = original                                    # restore exactly
        numeric = float(contract(up - down)) / (2 * eps)
        a = float(analytic[idx])
        err = abs(a - numeric) / max(abs(a), abs(numeric), floor)
        if err >= worst[0] or not np.isfinite(err):
            worst = (err, tuple(int(i) for i in idx), a, numeric)
    return GradEntry(name, tuple(x.shape), len(indices), int(x.size), worst[0], worst[1], worst[2], worst[3], tol)


def check_op(forward, backward, inputs, *, names=None, wrt=None, seed=0, eps=DEFAULT_EPS, floor=DEFAULT_FLOOR,
             tol=DEFAULT_TOL, max_entries=None, dout=None) -> GradReport:
    """Check an op pair: `forward(*inputs) -> (out, cache)` and `backward(dout, cache) -> grads`.

    inputs:  the forward's positional arguments; they are copied, never modified.
    wrt:     positions of the inputs that `backward` returns gradients for, in its return order
             (default: every floating-point array input, e.g. token ids and masks are skipped).
    names:   labels for the report (default "input0", "input1", ...).
    dout:    the upstream gradient; default a seeded standard-normal draw with the output's shape (never all ones).
    max_entries: check a random sample of this many entries per input instead of all of them.
    """
    inputs = [a.copy() if hasattr(a, "copy") else a for a in inputs]
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if hasattr(a, "dtype") and np.issubdtype(a.dtype, np.floating)]
    if names is None:
        names = [f"input{i}" for i in range(len(inputs))]
    rng = np.random.default_rng(seed)
    out, cache = forward(*inputs)
    xp = xp_of(out)
    if dout is None:
        dout = xp.asarray(rng.standard_normal(np.shape(out)))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(wrt):
        raise MiniftError(f"backward returned {len(grads)} gradients but wrt names {len(wrt)} inputs")

    def eval_fn():
        return forward(*inputs)[0].copy()   # an op may return its input itself (dropout off): snapshot it

    def contract(diff):
        return (diff * dout).sum()

    entries = [_check_array(eval_fn, contract, inputs[i], g, names[i], eps=eps, floor=floor, tol=tol,
                            max_entries=max_entries, rng=rng) for i, g in zip(wrt, grads)]
    return GradReport(entries, floor)


def check_function(loss_fn, arrays: dict, grads: dict, *, seed=0, eps=DEFAULT_EPS, floor=DEFAULT_FLOOR,
                   tol=DEFAULT_TOL, max_entries=None) -> GradReport:
    """Check the gradients of a scalar function of several named arrays (e.g. a model's loss and its parameters).

    loss_fn():  recomputes the scalar from the *current* contents of `arrays` (they are perturbed in place and
                restored exactly afterwards).
    arrays:     name -> float64 array; grads: name -> the claimed dL/d(array). Only names in `grads` are checked.
    """
    rng = np.random.default_rng(seed)
    entries = []
    for name, g in grads.items():
        if name not in arrays:
            raise MiniftError(f"gradient given for {name!r}, which is not among the checked arrays")
        entries.append(_check_array(lambda: float(loss_fn()), float, arrays[name], g, name, eps=eps, floor=floor,
                                    tol=tol, max_entries=max_entries, rng=rng))
    return GradReport(entries, floor)
