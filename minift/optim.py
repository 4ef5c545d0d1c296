"""Optimizers (SGD, AdamW), learning-rate schedules and gradient clipping, over plain dicts of arrays.

Parameters and gradients are dicts `name -> array` (NumPy or CuPy). An optimizer is built over the *trainable* arrays
only — for LoRA that is the adapters, for full fine-tuning every weight — and updates those arrays **in place**: the
model keeps holding the very same array objects, and nothing outside the dict is ever touched (a frozen weight is
bitwise unchanged because the optimizer never sees it). If the model replaces one of its arrays with a new object,
build a new optimizer.

Notation: p a parameter, g its gradient, η the learning rate (`lr`), λ the weight decay, t = 1, 2, ... the step.

AdamW  (Kingma & Ba 2015, "Adam", Algorithm 1; decoupled decay from Loshchilov & Hutter 2019, "Decoupled Weight
Decay Regularization", Algorithm 2). Per step, in this order (the same order and formula as torch.optim.AdamW):
    p ← p − η λ p                        decoupled decay: shrink the weight, outside the gradient
    m ← β1 m + (1 − β1) g                running mean of g        (first moment)
    v ← β2 v + (1 − β2) g²               running mean of g²       (second moment, elementwise)
    m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)       bias correction: m and v start at 0 and would be too small early on
    p ← p − η m̂ / (√v̂ + ε)
  Each coordinate moves by about η whatever the gradient's scale (m̂/√v̂ is a signal-to-noise ratio): that is why
  Adam tolerates the very different gradient sizes of embeddings, attention and LoRA factors.
  Decoupled vs L2: adding λp to g ("L2 regularisation", as SGD below does) would send the decay through m/√v and
  shrink weights with large gradients *less*; AdamW applies it to p directly, so every weight decays at rate ηλ.
  Convention: the paper writes the decay as η_t λ p with η_t a schedule *multiplier* (and α the learning rate);
  PyTorch, nanoGPT, Hugging Face and minift multiply by the learning rate itself, η λ p — so λ = 0.1 here is
  the paper's λ = 0.1 · α. The update is computed as torch does, p ← p − (η / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε),
  which is the line above rearranged.

SGD with momentum  (Polyak 1964 "heavy ball"; Nesterov form as in Sutskever et al. 2013, "On the importance of
initialization and momentum in deep learning", eq. 3-4, rewritten as torch.optim.SGD does, without dampening):
    d ← g + λ p                          weight decay here is *coupled* (L2): folded into the gradient, unlike AdamW
    b ← μ b + d                          momentum buffer (skipped when μ = 0: then d is used as is)
    d ← d + μ b  (nesterov)   or   d ← b  (classic)
    p ← p − η d
  With b starting at 0, the first step gives b = d exactly, as torch's `buf = clone(grad)` does.

Per-parameter learning rates (torch's parameter groups, written as multipliers): `lr_scale={name: factor}` makes that
parameter step with factor · η, where η is the (scheduled) rate passed to `step`; the decoupled decay uses the same
factor · η, as a torch group with its own lr does. Fine-tuning uses it to give a freshly initialised task head a
different rate from the pretrained weights or LoRA's adapters (minift/training/finetune.py, `head_lr`).

Which parameters decay: by default every parameter with ndim ≥ 2 (the matmul weights, the embeddings wte/wpe, LoRA's
A and B), and no vector (biases, LayerNorm gains and shifts) — the rule of GPT-2 as trained by nanoGPT
(`configure_optimizers`: "any parameter that is 2D will be weight decayed, otherwise no"). Hugging Face's Trainer
agrees on every GPT-2 and LoRA tensor but decays by name (all but biases and LayerNorm weights), so it also decays
DoRA's magnitude vectors, which this rule does not. Pass `decay=` (a collection of names) to choose explicitly.

State: created at construction (zeros, in the parameter's dtype and array module), so `opt.state` and
`opt.state_dict()` are complete from step 0 and a checkpoint taken before the first step round-trips.
AdamW keeps `state[name] = {"m", "v"}`; SGD keeps `{"momentum"}` when μ > 0 and `{}` when μ = 0.
`state_dict()` returns JSON-able metadata plus `"arrays"`, a flat dict of host NumPy arrays named
"<state key>.<parameter name>" (e.g. "m.h.0.attn.c_attn.weight"), ready for `safetensors.numpy.save_file`.

Schedules (`lr_schedule`): linear warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD", §2.2), then cosine
(Loshchilov & Hutter 2017, "SGDR", eq. 5, without restarts), linear, or constant.

Clipping (`clip_grad_norm`): rescale all gradients together when their global L2 norm exceeds a threshold (Pascanu
et al. 2013, "On the difficulty of training recurrent neural networks", Algorithm 1), with torch's exact rule.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import DTYPES, to_numpy, xp_of
from .dispatch import Op
from .errors import MiniftError
from .fast.adamw import adamw_update as fast_adamw_update

SCHEDULES = ("cosine", "linear", "constant")
CLIP_EPS = 1e-6   # torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# argument checks (shared)

def _number(name, value, lo=0.0, hi=math.inf, hi_open=False) -> float:
    """value as a Python float in [lo, hi] (or [lo, hi) when hi_open), else a MiniftError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MiniftError(f"{name}={value!r} must be a number")
    x = float(value)
    if not (lo <= x and (x < hi if hi_open else x <= hi)) or math.isnan(x):
        raise MiniftError(f"{name}={value!r} must lie in [{lo}, {hi}{')' if hi_open else ']'}")
    return x


def _integer(name, value, lo=0) -> int:
    """value as a Python int ≥ lo, else a MiniftError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MiniftError(f"{name}={value!r} must be an integer")
    if value < lo:
        raise MiniftError(f"{name}={value!r} must be ≥ {lo}")
    return int(value)


def check_lr(lr, name: str = "lr", option: str = "", finite: bool = True) -> float:
    """A run's learning rate η as a float: a number > 0 and finite, else a MiniftError naming it (`option`: the
    command-line option that set it, e.g. " (--lr)"). The one rule the run configurations (TrainConfig,
    FinetuneConfig, CompareConfig) and the lens use; the optimizer itself, like torch's, also takes η = 0.
    finite=False lets η = ∞ through: TrainConfig's, so that tutorial 06 can show the divergence guard catch it."""
    number = isinstance(lr, (int, float, np.integer, np.floating)) and not isinstance(lr, bool)
    if not number or not lr > 0 or (finite and not math.isfinite(lr)):          # NaN fails `lr > 0`
        what = "a positive, finite number" if finite else "a positive number"
        raise MiniftError(f"{name}={lr!r}{option} must be {what} (a learning rate)")
    return float(lr)


def _check_params(params) -> dict:
    """A shallow copy of the dict of trainable arrays (the arrays themselves are shared, never copied)."""
    if not isinstance(params, dict):
        raise MiniftError("params must be a dict name -> array of the trainable parameters, "
                          f"got {type(params).__name__}")
    if not params:
        raise MiniftError("params is empty: nothing to train (every parameter is frozen and no adapter is attached?)")
    for name, p in params.items():
        if not hasattr(p, "shape") or getattr(getattr(p, "dtype", None), "name", None) not in DTYPES:
            raise MiniftError(f"params[{name!r}] must be a float32 or float64 array, got {type(p).__name__} "
                              f"with dtype {getattr(p, 'dtype', None)}")
    return dict(params)


def _decay_names(params: dict, decay) -> frozenset:
    """The names that get weight decay: `decay` if given (each must be a parameter), else every array with ndim ≥ 2."""
    if decay is None:
        return frozenset(name for name, p in params.items() if p.ndim >= 2)
    if isinstance(decay, str):
        raise MiniftError(f"decay={decay!r} must be a collection of parameter names, not a single string")
    unknown = sorted(set(decay) - set(params))
    if unknown:
        raise MiniftError(f"decay names {unknown[:5]} are not among the optimizer's parameters "
                          f"({len(params)} given, e.g. {sorted(params)[:3]})")
    return frozenset(decay)


def _lr_scales(params: dict, lr_scale) -> dict:
    """{name: factor} for the parameters whose rate is factor · lr (the rest use lr itself); each name must exist."""
    if lr_scale is None:
        return {}
    if not isinstance(lr_scale, dict):
        raise MiniftError(f"lr_scale must be a dict name -> factor, got {type(lr_scale).__name__}")
    unknown = sorted(set(lr_scale) - set(params))
    if unknown:
        raise MiniftError(f"lr_scale names {unknown[:5]} are not among the optimizer's parameters "
                          f"({len(params)} given, e.g. {sorted(params)[:3]})")
    return {name: _number(f"lr_scale[{name!r}]", f) for name, f in lr_scale.items()}


def _check_grad(name, p, grads):
    """grads[name] must exist and match p in shape, dtype and array module."""
    g = grads.get(name)
    if g is None:
        raise MiniftError(f"grads has no gradient for trainable parameter {name!r}")
    if getattr(g, "shape", None) != p.shape or getattr(g, "dtype", None) != p.dtype:
        raise MiniftError(f"grads[{name!r}] has shape {getattr(g, 'shape', None)} and dtype "
                          f"{getattr(g, 'dtype', None)}, expected the parameter's {p.shape} and {p.dtype}")
    if xp_of(g) is not xp_of(p):
        raise MiniftError(f"grads[{name!r}] lives on a different device than the parameter")


def _host_copy(a):
    """A host NumPy array that does not alias `a` (a checkpoint must not change when training goes on)."""
    h = to_numpy(a)
    return h.copy() if h is a else h


# ----------------------------------------------------------------------------------------------------------------------
# optimizers

class Optimizer:
    """Shared bookkeeping: the trainable arrays, the step counter, per-parameter state, checkpoints.

    A subclass defines `_validate(hp) -> hp` (hyperparameters in, checked and normalised out), `_hyperparameters()`
    (the current ones, JSON-able), `_state_keys()` (names of its per-parameter state arrays) and `_update(...)`
    (one parameter's in-place update).
    """

    def __init__(self, params, lr_scale=None, **hp):
        self.params = _check_params(params)
        self._set_hyperparameters(self._validate(hp))
        self.lr_scale = _lr_scales(self.params, lr_scale)      # name -> factor on lr (torch's param groups)
        self.t = 0                                             # steps taken; the first step uses t = 1
        self.state = {name: {k: xp_of(p).zeros_like(p) for k in self._state_keys()}
                      for name, p in self.params.items()}

    def _set_hyperparameters(self, hp: dict):
        for key, value in hp.items():
            setattr(self, key, value)

    def step(self, grads: dict, lr: float | None = None):
        """Update every trainable parameter in place from grads (extra keys ignored); lr overrides self.lr once."""
        lr = self.lr if lr is None else _number("lr", lr)
        if not isinstance(grads, dict):
            raise MiniftError(f"grads must be a dict name -> array, got {type(grads).__name__}")
        for name, p in self.params.items():                   # check everything before changing anything
            _check_grad(name, p, grads)
        self.t += 1
        for name, p in self.params.items():
            wd = self.weight_decay if name in self.decay else 0.0
            self._update(p, grads[name], self.state[name], lr * self.lr_scale.get(name, 1.0), wd)

    def state_dict(self) -> dict:
        """{"optimizer", "t", "hyperparameters"} (JSON-able) + "arrays": flat host copies, e.g. "m.<param name>"."""
        arrays = {f"{k}.{name}": _host_copy(a) for name, s in self.state.items() for k, a in s.items()}
        return {"optimizer": type(self).__name__, "t": self.t,
                "hyperparameters": {**self._hyperparameters(), "lr_scale": dict(self.lr_scale)}, "arrays": arrays}

    def load_state_dict(self, sd: dict):
        """Restore hyperparameters, t and state exactly (bitwise) onto the parameters' array module and dtype.

        Everything is checked before anything changes: a mismatch leaves the optimizer as it was.
        """
        kind = sd.get("optimizer") if isinstance(sd, dict) else None
        if kind != type(self).__name__:
            raise MiniftError(f"state dict is for optimizer {kind!r}, not {type(self).__name__!r}")
        hp = self._validate(dict(sd["hyperparameters"]))
        scales = _lr_scales(self.params, sd["hyperparameters"].get("lr_scale"))
        t = _integer("state dict 't'", sd["t"])
        arrays = sd["arrays"]
        keys = self._state_keys(hp)
        expected = {f"{k}.{name}" for name in self.params for k in keys}
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        if missing or extra:
            raise MiniftError(f"state dict arrays do not match this optimizer's parameters: "
                              f"missing {missing[:5]}, unexpected {extra[:5]}")
        for name, p in self.params.items():
            for k in keys:
                a = arrays[f"{k}.{name}"]
                if tuple(a.shape) != p.shape or a.dtype != p.dtype:
                    raise MiniftError(f"state dict array {k}.{name!r} has shape {tuple(a.shape)} and dtype {a.dtype}, "
                                      f"expected the parameter's {p.shape} and {p.dtype}")
        self._set_hyperparameters(hp)
        self.lr_scale = scales
        self.t = t
        self.state = {name: {k: xp_of(p).array(to_numpy(arrays[f"{k}.{name}"]), copy=True) for k in keys}
                      for name, p in self.params.items()}

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items() if k != "decay")
        return f"{type(self).__name__}({len(self.params)} parameters, {len(self.decay)} decayed, {hp}, t={self.t})"


def adamw_update(p, g, m, v, lr, weight_decay, betas, eps, t):
    """One AdamW step on p [...] with its moments m, v [...], all in place: the module docstring's lines."""
    b1, b2 = betas
    p -= lr * weight_decay * p                             # p ← p − η λ p            (decoupled decay)
    m[...] = b1 * m + (1.0 - b1) * g                       # m ← β1 m + (1 − β1) g
    v[...] = b2 * v + (1.0 - b2) * g * g                   # v ← β2 v + (1 − β2) g²
    m_hat = m / (1.0 - b1 ** t)                            # m̂ = m / (1 − β1^t)
    v_hat = v / (1.0 - b2 ** t)                            # v̂ = v / (1 − β2^t)
    p -= lr * m_hat / (xp_of(p).sqrt(v_hat) + eps)         # p ← p − η m̂ / (√v̂ + ε)


# What AdamW runs for each parameter: adamw_update above, or its fast twin (minift/fast/adamw.py; minift/dispatch.py).
ADAMW_UPDATE = Op(adamw_update, fast_adamw_update)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), computed as torch.optim.AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None, lr_scale=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay,
                         lr_scale=lr_scale)

    def _validate(self, hp):
        betas = hp["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise MiniftError(f"betas={betas!r} must be a pair (beta1, beta2)")
        return {"lr": _number("lr", hp["lr"]),
                "betas": (_number("betas[0]", betas[0], hi=1.0, hi_open=True),
                          _number("betas[1]", betas[1], hi=1.0, hi_open=True)),
                "eps": _number("eps", hp["eps"]),
                "weight_decay": _number("weight_decay", hp["weight_decay"], hi_open=True),
                "decay": _decay_names(self.params, hp["decay"])}

    def _hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay,
                "decay": sorted(self.decay)}

    def _state_keys(self, hp=None):
        return ("m", "v")

    def _update(self, p, g, s, lr, wd):
        """One AdamW step on one parameter, in place (adamw_update)."""
        ADAMW_UPDATE(p, g, s["m"], s["v"], lr, wd, self.betas, self.eps, self.t)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and coupled L2 decay, as torch.optim.SGD."""

    def __init__(self, params, lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False, decay=None, lr_scale=None):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, decay=decay,
                         lr_scale=lr_scale)

    def _validate(self, hp):
        momentum = _number("momentum", hp["momentum"], hi=1.0, hi_open=True)
        if not isinstance(hp["nesterov"], bool):
            raise MiniftError(f"nesterov={hp['nesterov']!r} must be True or False")
        if hp["nesterov"] and momentum == 0.0:
            raise MiniftError("nesterov=True needs momentum > 0")
        return {"lr": _number("lr", hp["lr"]), "momentum": momentum,
                "weight_decay": _number("weight_decay", hp["weight_decay"], hi_open=True), "nesterov": hp["nesterov"],
                "decay": _decay_names(self.params, hp["decay"])}

    def _hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "decay": sorted(self.decay)}

    def _state_keys(self, hp=None):
        momentum = self.momentum if hp is None else hp["momentum"]
        return ("momentum",) if momentum else ()

    def _update(self, p, g, s, lr, wd):
        """One SGD step on one parameter, in place; the caller's gradient array is never modified."""
        xp, mu = xp_of(p), self.momentum
        d = g
        if wd:
            d = xp.multiply(p, wd)                             # d ← g + λ p          (coupled / L2 decay)
            d += g
        if mu:
            b = s["momentum"]
            b *= mu                                            # b ← μ b + d
            b += d
            if self.nesterov:
                d = d + xp.multiply(b, mu)                     # d ← d + μ b          (Nesterov look-ahead)
            else:
                d = b                                          # d ← b
        p -= xp.multiply(d, lr)                                # p ← p − η d


# ----------------------------------------------------------------------------------------------------------------------
# learning-rate schedule

def lr_schedule(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (counted from 0: pass `opt.t` before calling `opt.step`).

    Warmup, for step < warmup_steps:  lr = base_lr · (step + 1) / warmup_steps
        (step 0 gets base_lr / warmup_steps, step warmup_steps − 1 the full base_lr; no step is wasted at lr = 0).
    Then, with progress = (step − warmup_steps) / (total_steps − warmup_steps) running from 0 to 1:
        cosine:   lr = min_lr + (base_lr − min_lr) · ½ (1 + cos(π · progress))
        linear:   lr = min_lr + (base_lr − min_lr) · (1 − progress)
        constant: lr = base_lr                        (min_lr is not used)
    For step ≥ total_steps the decaying kinds return min_lr. A run of total_steps steps uses steps 0 … total_steps − 1,
    so its last lr is just above min_lr.
    """
    step = _integer("step", step)
    total_steps = _integer("total_steps", total_steps, lo=1)
    warmup_steps = _integer("warmup_steps", warmup_steps)
    if warmup_steps > total_steps:
        raise MiniftError(f"warmup_steps={warmup_steps} must be ≤ total_steps={total_steps}")
    base_lr = _number("base_lr", base_lr)
    min_lr = _number("min_lr", min_lr, hi=base_lr)
    if kind not in SCHEDULES:
        raise MiniftError(f"kind={kind!r} is not one of {SCHEDULES}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)   # in [0, 1); total > warmup here
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_lr + (base_lr - min_lr) * coeff


# ----------------------------------------------------------------------------------------------------------------------
# gradient norm and clipping

def global_grad_norm(grads: dict) -> float:
    """‖g‖ = √(Σ over every array and element of g²), summed in float64; None entries are skipped.

    The squares are taken in g's dtype (float32 keeps 24 bits of each: plenty for a norm) and summed in float64. A
    float32 entry above √(float32's max) ≈ 1.8e19 is finite, but its float32 square is not: when the sum comes out
    infinite, the squares are taken again in float64, so that an infinite norm always means a gradient that is not
    finite -- which the training loop reads as divergence -- and never a large, finite one."""
    with np.errstate(over="ignore"):                           # (NumPy's warning: the overflow is handled below)
        total = _sum_of_squares(grads, wide=False)
    if not math.isfinite(total):                               # rare: a square overflowed, or a gradient is inf/NaN
        total = _sum_of_squares(grads, wide=True)
    return math.sqrt(total)


def _sum_of_squares(grads: dict, wide: bool) -> float:
    total = 0.0
    for g in grads.values():
        if g is not None:
            squares = xp_of(g).square(g, dtype=np.float64) if wide else g * g      # float64, or g's dtype
            total = total + squares.sum(dtype=np.float64)
    return float(total)                                        # one device → host transfer for the whole dict


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale every gradient in place by max_norm / (‖g‖ + 1e-6) when that factor is below 1; return the pre-clip ‖g‖.

    This is torch.nn.utils.clip_grad_norm_'s rule: it clips as soon as ‖g‖ + 1e-6 > max_norm (so a norm exactly
    equal to max_norm is scaled by a hair), and leaves the gradients bitwise untouched otherwise. A non-finite norm
    comes back as is, so the training loop can notice it.
    """
    max_norm = _number("max_norm", max_norm)
    if max_norm == 0.0:
        raise MiniftError("max_norm=0.0 must be > 0")
    norm = global_grad_norm(grads)
    coeff = max_norm / (norm + CLIP_EPS)
    if coeff < 1.0:
        for g in grads.values():
            if g is not None:
                g *= coeff                                     # a Python float: g keeps its dtype
    return norm
