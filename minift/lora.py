"""LoRA: low-rank adapters on GPT-2's linears, with the forward and the backward written out.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685), §4.1, as Hugging Face PEFT
implements it (peft/tuners/lora/layer.py). The article minift is read with (README.md: 微调与LoRA, "Fine-tuning and
LoRA"), §3.1 ("the core idea of LoRA") and §3.2 ("LoRA in practice").

Letters: N token positions (any leading dimensions, B·T), I in features, O out features, R the rank r.

The adapted linear, in GPT-2's layout (W [I, O], y = x W + b, see minift/ops/linear.py):

    y = x W + b + s · dropout(x) Aᵀ Bᵀ          A [R, I] = lora_A.weight,  B [O, R] = lora_B.weight
    s = α / R                                     (α / √R with rsLoRA: Kalajdzievski 2023, arXiv 2312.03732)

Why α/R, and why rsLoRA's √R: with s = α/R, the part of an update along the gradient (what lowers the loss) stays
the same size whatever R, so the learning rate need not change with the rank (Hu et al. §4.1) -- and extra rank buys
little. rsLoRA argues that with α/R the adapters' outputs and gradients collapse as R grows, measures that higher
ranks then stop improving, and shows that s ∝ 1/√R is the scaling under which learning is stable in R
("rank-stabilised"); tutorial 07, section 3 measures both. PEFT's defaults differ from LoRAConfig's: lora_alpha 8
there, alpha 16 (= 2r at r = 8, a common choice) here.

W and b are frozen; only A and B train. B = 0 at init, so the adapted model starts as the base model, exactly.

One update, three notations. What LoRA adds to the weight, ΔW:

    LoRA paper, PEFT (nn.Linear layout, W [O, I], h = W x):   ΔW = s · B A                  [O, I]
    minift (GPT-2's Conv1D layout, W [I, O], y = x W):       ΔW = (s · B A)ᵀ = s · Aᵀ Bᵀ    [I, O]
    the article (§3.1): W' = W + A' B'ᵀ, with no scale; its A', B' are ours with s folded into one of them:
        on minift's [I, O] weight:   A' = s · Aᵀ  [I, R],  B' = B   [O, R]      (A' B'ᵀ = s Aᵀ Bᵀ)
        on PEFT's   [O, I] weight:   A' = s · B   [O, R],  B' = Aᵀ  [I, R]      (A' B'ᵀ = s B A)
      so in the paper's layout the article's "A" is the paper's B and vice versa: read the shapes, not the letters.
minift stores A and B exactly as PEFT does ([R, I] and [O, R]), so a saved adapter is a PEFT adapter.

Backward (lora_backward), from y = x W + b + s · h Bᵀ with h = x_d Aᵀ and x_d = dropout(x):
    dx = dy Wᵀ + dropout_backward(s · dy B A)       both paths reach x: their gradients add
    dB = s · dyᵀ h  = s · dyᵀ (x_d Aᵀ)               [O, N] @ [N, R]
    dA = s · (dy B)ᵀ x_d                             [R, N] @ [N, I]
    dW = xᵀ dy                                       NOT computed when W is frozen (the only FLOP LoRA saves)
With G = xᵀ dy, the full fine-tuning gradient of W, and no dropout: dB = s · Gᵀ Aᵀ and dA = s · Bᵀ Gᵀ: LoRA's
gradients are the full gradient read through the adapter's r input directions (A's rows) and r output directions
(B's columns) -- coordinates of projections onto those subspaces when the directions are orthonormal
(tests/test_lora.py checks the identities).

Which modules: targets names the linears of every block as PEFT does, by suffix of the module name:
"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "all-linear" (all four). Bare "c_proj" is ambiguous in GPT-2 (the
attention and the MLP both have one) and, as in PEFT, matches BOTH. One block's module, "h.3.attn.c_attn", also works.

What trains: attach_lora freezes every base parameter (adds it to model.frozen) except a classification head
`score.weight`, which keeps training as PEFT's `modules_to_save` does for a sequence-classification task (a fresh
head is random: it has to learn). detach() unfreezes exactly what attach froze.

Adapter dropout (PEFT's lora_dropout) drops the branch's input only, never the base path's. Its masks come from the
handle's own seeded generator (lora.rng_state() / lora.set_rng_state() save and restore it). The model does not tell
an adapter whether a call is training (loss_and_grads) or evaluation (forward, loss), so the handle has a mode, as a
torch module does: lora.train() (the mode after attach_lora, as after PEFT's get_peft_model) and lora.eval() (the
mode after load_peft, as after PEFT's from_pretrained). Dropout is applied only when dropout > 0 and in train mode:
call lora.eval() before evaluating. An adapter's forward also accepts train=True/False, which overrides the mode.

Initialisations (config.init, PEFT's init_lora_weights):
    "default"   A ~ U(-1/√I, 1/√I), B = 0. PEFT's kaiming_uniform_(a=√5) on A [R, I]: gain √(2/(1+a²)) = √(1/3),
                bound = gain · √(3/fan_in) = 1/√I (fan_in = I). This is nn.Linear's default init.
    "gaussian"  A ~ N(0, σ²) with σ = 1/R (PEFT: nn.init.normal_(std=1/r)), B = 0.
    "pissa"     Meng et al. 2024, "PiSSA" (arXiv 2404.02948): W = U S Vᵀ, keep the top R singular triplets:
                Aᵀ = U_R √(S_R/s), Bᵀ = √(S_R/s) V_Rᵀ, so s · Aᵀ Bᵀ = U_R S_R V_Rᵀ (the top-R part of W), and the
                frozen W is REPLACED by the residual W − U_R S_R V_Rᵀ: the output at init is unchanged (up to
                rounding) but training moves the principal directions. PEFT's pissa_init (sqrt(S) split between A and
                B, divided by the scale) written for GPT-2's [I, O] layout; the SVD runs on the host in float64, so
                NumPy and CuPy get the same factors.

merge() / unmerge(): one helper, delta_weight() = s · Aᵀ Bᵀ [I, O], added to W in place by merge and subtracted
by unmerge. While merged the adapter's forward is the plain linear (adding the branch again would count it twice),
and a backward is refused. W after merge + unmerge equals the original up to float rounding (W + Δ − Δ is exact
only when no bit of W is lost in the addition): about one ulp of |W| + |Δ|.

Files (save_peft / load_peft): adapter_config.json + adapter_model.safetensors in PEFT's layout, which
peft.PeftModel.from_pretrained loads onto transformers' GPT-2:
    base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight       [R, I]
    base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight       [O, R]
    base_model.model.transformer.h.{i}.attn.c_attn.lora_magnitude_vector   [O]   (DoRA)
    base_model.model.score.weight                                      [K, C]  (a classification head: PEFT's
                                                                                modules_to_save ["score"] saves it
                                                                                under this key)
adapter_config.json carries PEFT's fields (fan_in_fan_out = True: GPT-2's Conv1D) and, under the key "minift",
the base model's fingerprint (GPT.fingerprint()): an adapter is only meaningful on the base it was trained on, and
load_peft refuses any other. PEFT ignores that key (with a warning about an unexpected keyword).
PiSSA changes the base, so the file records two fingerprints: the residual base the adapter sits on and the
original base. load_peft accepts either: on the residual base (saved with model.save_pretrained after attach) it
loads as is; on the original base it recomputes the residual with the same top-R SVD (equal up to rounding).
PEFT reads init_lora_weights = "pissa" as "this adapter goes on the ORIGINAL base": loading runs its pissa_init
on whatever base it is given and only then loads A and B. So give PEFT the original base (on the residual one it
would subtract the top-R part twice); a PEFT-written PiSSA file, which records no fingerprint, is read by load_peft
the same way.

DoRA (config.use_dora, Liu et al. 2024): minift/dora.py.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import randn, to_numpy, uniform, xp_of
from .errors import MiniftError
from .formats.io import (atomic_write_text, check_folder_target, check_weights, load_json, load_safetensors, save_json,
                 save_safetensors)
from .model import LINEAR_MODULES
from .ops import dropout_backward, dropout_forward, linear_forward

ALL_LINEAR = "all-linear"
SHORT_TARGETS = ("c_attn", "attn.c_attn", "c_proj", "attn.c_proj", "c_fc", "mlp.c_fc", "mlp.c_proj")
INITS = ("default", "gaussian", "pissa")
DORA_NORMS = ("exact", "detached")
HEAD = "score.weight"

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.transformer."      # PEFT's key for a minift name: prefix + "h.0.attn.c_attn..."
PEFT_HEAD_KEY = "base_model.model.score.weight"    # modules_to_save ["score"], saved without ".modules_to_save.default"
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}   # init -> PEFT's init_lora_weights
MODEL_CARD_FILE = "README.md"
# The PEFT release whose save_pretrained files save_peft follows: adapter_config.json's keys and README.md's model
# card. minift writes them itself and does not depend on peft, so adapter_config.json's peft_version records this
# format version, not an installed PEFT. tests/test_peft_interop.py loads the files with whatever PEFT is installed.
PEFT_FORMAT_VERSION = "0.21.2"


# ---- configuration -------------------------------------------------------------------------------------------------

def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class LoRAConfig:
    """What to adapt and how; PEFT's LoraConfig name of each field in brackets.

    r         rank R of the update, an integer > 0 and ≤ min(in, out) of every adapted matrix   [r]
    alpha     α > 0; the update is scaled by s = α/r, or α/√r with rslora                      [lora_alpha]
    targets   module names matched by suffix (see the module docstring), or "all-linear"        [target_modules]
    rslora    scale α/√r instead of α/r (Kalajdzievski 2023)                                     [use_rslora]
    dropout   adapter-dropout probability in [0, 1) on the LoRA branch's input                  [lora_dropout]
    init      "default" | "gaussian" | "pissa"                                                   [init_lora_weights]
    use_dora  DoRA instead of plain LoRA (minift/dora.py)                                        [use_dora]
    dora_norm "exact" (the full derivative, the default) | "detached" (DoRA §4.3, PEFT): how the DoRA backward
              treats the column norm; the forward is the same
    """
    r: int = 8
    alpha: float = 16
    targets: tuple = ("c_attn",)
    rslora: bool = False
    dropout: float = 0.0
    init: str = "default"
    use_dora: bool = False
    dora_norm: str = "exact"

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise MiniftError(f"LoRA rank r={self.r!r} must be an integer > 0")
        if not _is_number(self.alpha) or not self.alpha > 0 or not math.isfinite(self.alpha):
            raise MiniftError(f"LoRA alpha={self.alpha!r} must be a number > 0")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise MiniftError(f"LoRA dropout={self.dropout!r} must be a number in [0, 1)")
        if self.init not in INITS:
            raise MiniftError(f"LoRA init={self.init!r} is not one of {INITS}")
        if self.dora_norm not in DORA_NORMS:
            raise MiniftError(f"dora_norm={self.dora_norm!r} is not one of {DORA_NORMS}")
        for flag in ("rslora", "use_dora"):
            if not isinstance(getattr(self, flag), bool):
                raise MiniftError(f"LoRA {flag}={getattr(self, flag)!r} must be True or False")
        object.__setattr__(self, "r", int(self.r))
        for name in ("alpha", "dropout"):          # NumPy scalars as Python numbers: they go to JSON files
            if isinstance(getattr(self, name), np.generic):
                object.__setattr__(self, name, getattr(self, name).item())
        object.__setattr__(self, "targets", _normalise_targets(self.targets))

    @property
    def scale(self) -> float:
        """s = α/r, or α/√r with rsLoRA (a Python float, so it never changes an array's dtype)."""
        return float(self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r)


def _normalise_targets(targets) -> tuple:
    """targets as a tuple of valid names; an unknown name is an error that lists the valid ones."""
    names = (targets,) if isinstance(targets, str) else tuple(targets) if targets is not None else ()
    if not names or not all(isinstance(t, str) for t in names):
        raise MiniftError(f"LoRA targets={targets!r} must be a module name or a non-empty list of them")
    names = tuple(t.removeprefix("transformer.") for t in names)     # PEFT may save full names
    if ALL_LINEAR in names and len(names) > 1:
        raise MiniftError(f"LoRA targets={targets!r}: '{ALL_LINEAR}' already means every linear; give it alone")
    block_module = re.compile(r"h\.\d+\.(" + "|".join(re.escape(m) for m in LINEAR_MODULES) + ")")
    for t in names:
        if t != ALL_LINEAR and t not in SHORT_TARGETS and not block_module.fullmatch(t):
            raise MiniftError(f"unknown LoRA target {t!r}; valid targets: {ALL_LINEAR!r}, "
                              f"{', '.join(repr(s) for s in SHORT_TARGETS)} (bare 'c_proj' means both attn.c_proj "
                              f"and mlp.c_proj, as in PEFT), or one block's module such as 'h.0.attn.c_attn'")
    return names


def resolve_modules(n_layer: int, targets) -> list:
    """The adapted modules ("h.{i}.attn.c_attn", ...) in model order. PEFT's rule: a target matches a module whose
    name equals it or ends with "." + it; "all-linear" matches the four linears of every block (not the LM head)."""
    targets = _normalise_targets(targets)
    every = [f"h.{i}.{m}" for i in range(n_layer) for m in LINEAR_MODULES]
    if targets == (ALL_LINEAR,):
        return every
    for t in targets:
        if not any(m == t or m.endswith("." + t) for m in every):
            raise MiniftError(f"LoRA target {t!r} matches no module of this {n_layer}-block model")
    return [m for m in every if any(m == t or m.endswith("." + t) for t in targets)]


# ---- the op: forward and backward of an adapted linear -------------------------------------------------------------

def lora_forward(x, w, b, A, B, s, p=0.0, rng=None):
    """y = x W + b + s · dropout(x) Aᵀ Bᵀ.  x [..., I], W [I, O], b [O] or None, A [R, I], B [O, R] -> y [..., O].

    Dropout with probability p drops the branch's input only, and only in a training call (an rng given).
    Returns (y, cache); the cache holds x (the plain linear keeps it too), x_d (x itself without dropout) and
    s · h = s · x_d Aᵀ (N·R numbers: LoRA's only extra activation). Scaling h, not h Bᵀ, keeps the one N×O
    temporary the branch needs (h Bᵀ, added into y) from becoming two.
    """
    I, O = w.shape
    x2 = x.reshape(-1, I)                                              # (N, I)
    xd, mask = dropout_forward(x2, p, rng, train=rng is not None)      # (N, I) the branch's input
    y = x2 @ w                                                         # (N, O) the frozen base still costs its matmul
    if b is not None:
        y += b                                                         # (N, O)
    hs = xd @ A.T                                                      # (N, R) down-projection h = x_d Aᵀ
    hs *= s                                                            # (N, R) scaled here, where it costs N·R
    y += hs @ B.T                                                      # (N, O) up-projection: + s · h Bᵀ
    return y.reshape(*x.shape[:-1], O), (x2, xd, mask, hs, w, A, B, s, b is not None, x.shape)


def lora_backward(dy, cache, need_dw=True, need_db=True):
    """dy [..., O] -> (dx [..., I], dW [I, O] or None, db [O] or None, dA [R, I], dB [O, R]),
    in the order of lora_forward's array inputs (x, W, b, A, B)."""
    x2, xd, mask, hs, w, A, B, s, has_b, x_shape = cache
    O = w.shape[1]
    dy2 = dy.reshape(-1, O)                                            # (N, O)
    # the base path, y = x W + b. A frozen W still costs the forward's x W and this dx matmul (2 of its 3)...
    dx = dy2 @ w.T                                                     # (N, I)
    # ...but its weight gradient xᵀ dy is skipped: that one matmul, ~1/3 of the layer's training FLOPs
    # (2·N·I·O of 6·N·I·O), is the only compute LoRA saves in the backward.
    dw = x2.T @ dy2 if need_dw else None                               # (I, O)
    db = dy2.sum(axis=0) if (has_b and need_db) else None              # (O,)
    # the branch, y += s · h Bᵀ with h = x_d Aᵀ
    dB = dy2.T @ hs                                                    # (O, R)  s · dyᵀ (x_d Aᵀ)
    dh = s * (dy2 @ B)                                                 # (N, R)  s · dy B
    dA = dh.T @ xd                                                     # (R, I)  s · (dy B)ᵀ x_d
    dxd = dh @ A                                                       # (N, I)  s · dy B A
    dx += dropout_backward(dxd, mask)                                  # (N, I) x feeds both paths: gradients add
    return dx.reshape(x_shape), dw, db, dA, dB


# ---- initialisation ------------------------------------------------------------------------------------------------

def init_factors(w, r: int, s: float, init: str, rng):
    """(A [R, I], B [O, R], residual [I, O] or None) for a weight W [I, O]; the residual replaces W (PiSSA only)."""
    I, O = w.shape
    xp, dtype = xp_of(w), w.dtype
    B = xp.zeros((O, r), dtype=dtype)                                  # (O, R)
    if init == "default":
        bound = 1.0 / math.sqrt(I)                                     # PEFT: kaiming_uniform_(a=√5), fan_in = I
        return uniform(rng, (r, I), -bound, bound, dtype, xp), B, None
    if init == "gaussian":
        return randn(rng, (r, I), dtype, xp, std=1.0 / r), B, None     # PEFT: normal_(std=1/r)
    return pissa_factors(w, r, s)


def pissa_factors(w, r: int, s: float):
    """PiSSA: (A [R, I], B [O, R], W_res [I, O]) with s · Aᵀ Bᵀ = the top-R part of W and W_res = W − s · Aᵀ Bᵀ."""
    xp, dtype = xp_of(w), w.dtype
    w64 = to_numpy(w).astype(np.float64)                               # (I, O) host float64: same SVD on any backend
    U, S, Vt = np.linalg.svd(w64, full_matrices=False)                 # (I, K), (K,), (K, O), K = min(I, O)
    root = np.sqrt(S[:r] / s)                                          # (R,) √(S_R / s): half the spectrum each
    A = (root[:, None] * U[:, :r].T).astype(dtype)                     # (R, I)  Aᵀ = U_R √(S_R/s)
    B = (Vt[:r].T * root[None, :]).astype(dtype)                       # (O, R)  Bᵀ = √(S_R/s) V_Rᵀ
    residual = w64 - s * (A.astype(np.float64).T @ B.astype(np.float64).T)   # (I, O) from the stored factors
    return xp.asarray(A), xp.asarray(B), xp.asarray(residual.astype(dtype))


# ---- the adapter of one linear -------------------------------------------------------------------------------------

class LoRALinear:
    """The adapter of one module ("h.0.attn.c_attn"): owns A and B and runs lora_forward / lora_backward.

    The model calls forward(x, W, b) instead of linear_forward and backward(dy, cache, grads, need_dw, need_db)
    instead of linear_backward (GPT._linear_forward / _linear_backward); the backward writes dA and dB into grads.
    """

    def __init__(self, module: str, A, B, scale: float, dropout: float, rng):
        self.module, self.scale, self.dropout, self.rng = module, scale, dropout, rng
        self.params = {module + ".lora_A.weight": A, module + ".lora_B.weight": B}
        self.training = True
        self.merged = False

    @property
    def A(self):
        return self.params[self.module + ".lora_A.weight"]            # (R, I)

    @property
    def B(self):
        return self.params[self.module + ".lora_B.weight"]            # (O, R)

    def trainable_params(self) -> dict:
        return dict(self.params)

    def _rng(self, train):
        """The dropout generator in a training call, None otherwise (then the branch sees x itself)."""
        active = self.training if train is None else train
        return self.rng if (active and self.dropout > 0) else None

    def forward(self, x, w, b, train=None):
        if self.merged:                   # the branch is inside W now: adding it again would count it twice
            return linear_forward(x, w, b)
        return lora_forward(x, w, b, self.A, self.B, self.scale, self.dropout, self._rng(train))

    def backward(self, dy, cache, grads, need_dw, need_db):
        self._refuse_if_merged()
        dx, dw, db, dA, dB = lora_backward(dy, cache, need_dw=need_dw, need_db=need_db)
        grads[self.module + ".lora_A.weight"] = dA
        grads[self.module + ".lora_B.weight"] = dB
        return dx, dw, db

    def _refuse_if_merged(self):
        if self.merged:
            raise MiniftError(f"the adapter of {self.module} is merged into its base weight, so it has no gradient "
                              "of its own: call lora.unmerge() before training")

    def delta_weight(self):
        """ΔW = s · Aᵀ Bᵀ [I, O]: PEFT's get_delta_weight (s · B A, [O, I]) in GPT-2's layout."""
        return self.scale * (self.A.T @ self.B.T)                      # (I, O)

    def effective_weight(self, w):
        """The weight the adapted linear computes with, W + ΔW [I, O] (W itself while merged)."""
        return w if self.merged else w + self.delta_weight()           # (I, O)

    def merge(self, w):
        if self.merged:
            raise MiniftError(f"the adapter of {self.module} is already merged (merging twice would add ΔW twice)")
        self._merge(w)
        self.merged = True

    def unmerge(self, w):
        if not self.merged:
            raise MiniftError(f"the adapter of {self.module} is not merged: nothing to unmerge")
        self._unmerge(w)
        self.merged = False

    def _merge(self, w):
        w += self.delta_weight()                                       # (I, O) in place: W + s Aᵀ Bᵀ

    def _unmerge(self, w):
        w -= self.delta_weight()                                       # (I, O) in place: back to W, up to rounding


# ---- attaching, and the handle -------------------------------------------------------------------------------------

def _check_attachable(model, config: LoRAConfig, modules: list):
    if model.adapters:
        raise MiniftError(f"this model already has adapters on {sorted(model.adapters)[:3]}...: detach them first "
                          "(one LoRA per model)")
    for m in modules:
        I, O = model.params[m + ".weight"].shape
        if config.r > min(I, O):
            raise MiniftError(f"LoRA rank r={config.r} exceeds min(in, out) = {min(I, O)} of {m}.weight [{I}, {O}]: "
                              "a rank-r update cannot have more rank than the matrix")


def _seed_sequences(seed):
    """Two independent streams from one seed: the init draws, and the adapter-dropout masks."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise MiniftError(f"seed={seed!r} must be an integer")
    init_seq, dropout_seq = np.random.SeedSequence(int(seed)).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(dropout_seq)


def _make_adapter(model, module, config, init_rng, dropout_rng, replace_base):
    """Draw the factors of one module (and, for PiSSA with replace_base, replace W by the residual in place)."""
    w = model.params[module + ".weight"]                               # (I, O)
    A, B, residual = init_factors(w, config.r, config.scale, config.init, init_rng)
    if residual is not None and replace_base:
        w[...] = residual                                              # in place: the same array object
    if config.use_dora:
        from .dora import DoRALinear
        return DoRALinear(module, A, B, w, config.scale, config.dropout, dropout_rng, norm=config.dora_norm)
    return LoRALinear(module, A, B, config.scale, config.dropout, dropout_rng)


def attach_lora(model, config: LoRAConfig | None = None, seed: int = 0) -> "LoRA":
    """Freeze the base model and attach one adapter per targeted linear of every block; return the handle.

    model.frozen gains every base parameter except a classification head `score.weight` (it keeps training, as
    PEFT's modules_to_save). seed draws the init (A; PiSSA draws nothing) and seeds the adapter-dropout stream.
    """
    config = LoRAConfig() if config is None else config
    if not isinstance(config, LoRAConfig):
        raise MiniftError(f"config must be a LoRAConfig, got {type(config).__name__}")
    modules = resolve_modules(model.cfg.n_layer, config.targets)
    _check_attachable(model, config, modules)
    return _attach(model, config, modules, seed, replace_base=True)


def _attach(model, config, modules, seed, replace_base) -> "LoRA":
    """attach_lora's work, after its checks; load_peft passes replace_base=False when the base already is PiSSA's
    residual."""
    init_rng, dropout_rng = _seed_sequences(seed)
    original = model.fingerprint()
    for m in modules:
        model.adapters[m] = _make_adapter(model, m, config, init_rng, dropout_rng, replace_base)
    froze = set(model.params) - {HEAD} - model.frozen
    model.frozen |= froze
    return LoRA(model, config, modules, froze, dropout_rng, base_fingerprint=model.fingerprint(),
                original_fingerprint=original)


class LoRA:
    """What attach_lora returns: the adapters of one model, handled together.

    lora.params              name -> array of every adapter parameter ("h.0.attn.c_attn.lora_A.weight" [R, I], ...)
    lora.merge() / unmerge() fold ΔW into the base weights and back
    lora.train() / eval()    adapter-dropout mode;  lora.rng_state() / set_rng_state(state) its generator
    lora.detach()            remove the adapters and unfreeze what attach froze
    lora.save_peft(path)     a PEFT adapter folder;  minift.load_peft(model, path) reads one back
    """

    def __init__(self, model, config, modules, froze, dropout_rng, base_fingerprint, original_fingerprint):
        self.model, self.config, self.modules = model, config, list(modules)
        self._froze, self._rng = set(froze), dropout_rng
        self.base_fingerprint = base_fingerprint            # the base the adapters sit on (PiSSA: the residual)
        self.original_fingerprint = original_fingerprint    # the base before attach_lora (differs only for PiSSA)
        self.detached = False

    def __repr__(self):
        state = "detached" if self.detached else ("merged" if self.merged else "attached")
        return (f"LoRA(r={self.config.r}, alpha={self.config.alpha}, scale={self.config.scale:g}, "
                f"{'DoRA, ' if self.config.use_dora else ''}{len(self.modules)} modules, {state})")

    @property
    def adapters(self) -> dict:
        self._check_attached()
        return {m: self.model.adapters[m] for m in self.modules}

    @property
    def params(self) -> dict:
        """name -> array of every adapter parameter (the very arrays the adapters compute with)."""
        return {k: v for a in self.adapters.values() for k, v in a.params.items()}

    def trainable_params(self) -> dict:
        """The adapter parameters and, when it trains, the classification head (what an optimizer should get)."""
        out = self.params
        if HEAD in self.model.params and self.model.trains(HEAD):
            out[HEAD] = self.model.params[HEAD]
        return out

    @property
    def merged(self) -> bool:
        return any(a.merged for a in self.adapters.values())

    @property
    def training(self) -> bool:
        return all(a.training for a in self.adapters.values())

    def train(self) -> "LoRA":
        """Adapter dropout on (when config.dropout > 0): the mode for loss_and_grads."""
        for a in self.adapters.values():
            a.training = True
        return self

    def eval(self) -> "LoRA":
        """Adapter dropout off: the mode for evaluation (model.forward, model.loss)."""
        for a in self.adapters.values():
            a.training = False
        return self

    def rng_state(self) -> dict:
        """The adapter-dropout generator's state (JSON-able), for checkpoints."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict):
        self._rng.bit_generator.state = state

    def effective_weights(self) -> dict:
        """"h.0.attn.c_attn.weight" -> the weight each adapted linear computes with [I, O] (W + ΔW; for DoRA
        m · V / ‖V‖_c), without changing the model: e.g. for analysis.py's comparisons with the base."""
        P = self.model.params
        return {m + ".weight": a.effective_weight(P[m + ".weight"]) for m, a in self.adapters.items()}

    def merged_model(self):
        """A new model with each adapted W replaced by W + ΔW, and no adapters: PEFT's merge_and_unload, done on a
        copy, so this model and its adapters stay as they are. One set of weights to deploy (article §2.1), or the
        base of a next fine-tune (the MIT paper's continual learning merges each task's adapter before the next
        task gets a fresh one: tutorial 10, section 7)."""
        merged = self.model.to()                          # parameters, head, frozen set; adapters are not copied
        for name, w in self.effective_weights().items():
            merged.params[name][...] = w                  # [I, O]: W + ΔW (DoRA: m · V / ‖V‖_c)
        merged.frozen -= self._froze                      # what attach_lora froze trains again, as after detach()
        return merged

    def merge(self):
        """W ← W + ΔW in place for every adapted module (for deployment: model.save_pretrained then writes it)."""
        if self.merged:
            raise MiniftError("the adapters are already merged: merging twice would add ΔW twice")
        for m, a in self.adapters.items():
            a.merge(self.model.params[m + ".weight"])

    def unmerge(self):
        """W ← W − ΔW in place: the base weights again, up to float rounding."""
        if not self.merged:
            raise MiniftError("the adapters are not merged: nothing to unmerge")
        for m, a in self.adapters.items():
            a.unmerge(self.model.params[m + ".weight"])

    def detach(self):
        """Remove the adapters from the model and unfreeze what attach_lora froze. The base weights stay as they are:
        merged weights if merged (PEFT's merge_and_unload), else the base (for PiSSA: the residual base)."""
        self._check_attached()
        for m in self.modules:
            del self.model.adapters[m]
        self.model.frozen -= self._froze
        self.detached = True

    def _check_attached(self):
        if self.detached:
            raise MiniftError("this LoRA was detached from its model; attach a new one with attach_lora")

    # ---- files ------------------------------------------------------------------------------------------------

    def save_peft(self, path, base_model_name_or_path=None):
        """Write adapter_config.json + adapter_model.safetensors (PEFT's layout) into the folder `path` (made if
        need be; an existing file there is refused)."""
        path = check_folder_target(path, "adapter folder")
        tensors = {PEFT_PREFIX + k: to_numpy(v) for k, v in self.params.items()}
        has_head = self.model.head == "classification" and HEAD in self.model.params
        if has_head:
            tensors[PEFT_HEAD_KEY] = to_numpy(self.model.params[HEAD])
        save_safetensors(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
        config = self._peft_config(has_head, base_model_name_or_path)
        save_json(config, path / CONFIG_FILE)
        atomic_write_text(path / MODEL_CARD_FILE, model_card(config))     # README.md, as PEFT writes one

    def _peft_config(self, has_head, base_model_name_or_path) -> dict:
        c = self.config
        return {
            "peft_type": "LORA", "task_type": "SEQ_CLS" if has_head else "CAUSAL_LM",
            "r": c.r, "lora_alpha": c.alpha, "lora_dropout": c.dropout, "use_rslora": c.rslora,
            "use_dora": c.use_dora, "init_lora_weights": PEFT_INIT[c.init],
            "target_modules": ALL_LINEAR if c.targets == (ALL_LINEAR,) else list(c.targets),
            "fan_in_fan_out": True,                          # GPT-2's Conv1D stores W as [in, out]
            "bias": "none", "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {},
            "layers_to_transform": None, "modules_to_save": ["score"] if has_head else None,
            "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
            "peft_version": PEFT_FORMAT_VERSION,
            "minift": {
                "base_fingerprint": self.base_fingerprint,
                "original_base_fingerprint": self.original_fingerprint,
                "pissa_residual_base": c.init == "pissa",
                "dora_norm": c.dora_norm,
                "labels": self.model.labels if has_head else None,
            },
        }


MODEL_CARD = """---
library_name: peft
{front}pipeline_tag: {pipeline}
tags:
{tags}
---

# A {method} adapter for a GPT-2 model, made with minift

minift (a GPT-2 in NumPy/CuPy with hand-written forward and backward passes) made this adapter and wrote its
files in the layout of PEFT {peft_version}, without PEFT itself.

- Base model: {base}. An adapter only means something on the base it was made on: minift's load_peft refuses
  any other (base fingerprint `{fingerprint}`).
- Method: {method}, rank r = {r}, lora_alpha = {alpha}, scale {scale_rule} = {scale:g}; dropout {dropout};
  initialisation {init}.
- Adapted layers: {targets}.
- {head}

What it was trained on, and how long, is not recorded here: these files hold what the adapter is. The run folder
it came from (`minift finetune` or `minift compare --out`) has the rest.

## Load it

With minift: `lora = minift.load_peft(minift.GPT.from_pretrained(BASE), ADAPTER)`.

With PEFT, onto transformers' GPT-2:

```python
from peft import PeftModel
from transformers import {hf_class}
model = PeftModel.from_pretrained({hf_class}.from_pretrained(BASE), ADAPTER)
```
{pissa}
## Framework versions

- minift {minift_version}
- PEFT {peft_version} (the file format; written by minift, not by PEFT)
"""


def model_card(config: dict) -> str:
    """The README.md of an adapter folder, from its adapter_config.json contents: what PEFT's save_pretrained writes
    (YAML front matter with library_name, base_model, pipeline_tag, tags; a "Framework versions" list), filled with
    what minift knows (the base, the method and its settings, how to load the folder) instead of PEFT's template of
    "[More Information Needed]" sections."""
    from . import __version__
    base, extra = config["base_model_name_or_path"], config["minift"]
    classifies = config["task_type"] == "SEQ_CLS"
    init = {True: "PEFT's default (A kaiming-uniform, B = 0)", "gaussian": "gaussian (A ~ N(0, 1/r²), B = 0)",
            "pissa": "PiSSA (the top-r singular part of each weight)"}[config["init_lora_weights"]]
    targets = config["target_modules"]
    return MODEL_CARD.format(
        front=f"base_model: {json.dumps(base)}\n" if base else "",
        pipeline="text-classification" if classifies else "text-generation",
        tags="\n".join(f"- {json.dumps(t)}" for t in ([f"base_model:adapter:{base}"] if base else [])
                       + ["lora", "minift"]),
        method="DoRA" if config["use_dora"] else "LoRA", peft_version=config["peft_version"],
        base=f"`{base}`" if base else "not recorded (save_peft's base_model_name_or_path names it)",
        fingerprint=extra["base_fingerprint"], r=config["r"], alpha=config["lora_alpha"],
        scale_rule="α/√r (rsLoRA)" if config["use_rslora"] else "α/r",
        scale=config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"]),
        dropout=config["lora_dropout"], init=init,
        targets="every linear of every block (c_attn, attn.c_proj, c_fc, mlp.c_proj)" if targets == ALL_LINEAR
        else ", ".join(targets),
        head=f"A classification head `score` with labels {extra['labels']}, saved whole (PEFT's modules_to_save)."
        if classifies else "No head of its own: a language-model adapter (the LM head is the base's, tied to wte).",
        hf_class="GPT2ForSequenceClassification" if classifies else "GPT2LMHeadModel",
        pissa="\nPiSSA: give PEFT the original base; it subtracts the top-r part itself when it loads the adapter.\n"
        if config["init_lora_weights"] == "pissa" else "",
        minift_version=__version__)


# ---- loading -------------------------------------------------------------------------------------------------------

def _config_from_peft(peft: dict, where) -> LoRAConfig:
    """A LoRAConfig from PEFT's adapter_config.json fields; anything minift cannot reproduce is an error."""
    if peft.get("peft_type") != "LORA":
        raise MiniftError(f"{where}: peft_type is {peft.get('peft_type')!r}, minift reads only 'LORA' adapters")
    for key, neutral in (("rank_pattern", {}), ("alpha_pattern", {}), ("layers_to_transform", None),
                         ("lora_bias", False), ("bias", "none")):
        if peft.get(key, neutral) not in (neutral, None):
            raise MiniftError(f"{where}: {key}={peft[key]!r} is not supported by minift (expected {neutral!r})")
    inits = {True: "default", False: "default", "gaussian": "gaussian", "pissa": "pissa"}
    init = peft.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)) or init not in inits:
        raise MiniftError(f"{where}: init_lora_weights={init!r} is not supported by minift "
                          f"(one of {list(inits)})")
    targets = peft.get("target_modules")
    try:
        return LoRAConfig(r=peft.get("r"), alpha=peft.get("lora_alpha"), dropout=peft.get("lora_dropout", 0.0),
                          targets=sorted(targets) if isinstance(targets, (list, set)) else targets,
                          rslora=bool(peft.get("use_rslora", False)), use_dora=bool(peft.get("use_dora", False)),
                          init=inits[init], dora_norm=(peft.get("minift") or {}).get("dora_norm", "exact"))
    except MiniftError as e:
        raise MiniftError(f"{where}: {e}") from None


def _check_base(model, meta: dict, config: LoRAConfig, where) -> bool:
    """Is the model the adapter's base? Returns True when PiSSA's residual must still be made from the original."""
    if not meta:              # a PEFT-written file records no base; PEFT's rule: "pissa" means the original base,
        return config.init == "pissa"          # from which loading makes the residual (PEFT's pissa_init)
    fp = model.fingerprint()
    if fp == meta.get("base_fingerprint"):
        return False          # the recorded base
    if config.init == "pissa" and fp == meta.get("original_base_fingerprint"):
        return True           # the original base: recompute the residual, as attach_lora did
    raise MiniftError(f"{where} was trained on a different base model (fingerprint "
                      f"{meta.get('base_fingerprint')}; this model's is {fp}). Load the base it was made for.")


def _expected_shapes(model, config: LoRAConfig) -> dict:
    """minift name -> shape of every tensor an adapter file for this model and config must hold."""
    shapes = {}
    for m in resolve_modules(model.cfg.n_layer, config.targets):
        I, O = model.params[m + ".weight"].shape
        shapes[m + ".lora_A.weight"], shapes[m + ".lora_B.weight"] = (config.r, I), (O, config.r)
        if config.use_dora:
            shapes[m + ".lora_magnitude_vector"] = (O,)
    return shapes


def _read_tensors(path: Path, model, config) -> tuple[dict, object]:
    """(minift name -> host array, head array or None), every name and shape checked, and every value: floating
    point and finite (io.check_weights), so that a NaN in the file is refused before it reaches the model."""
    tensors, _ = load_safetensors(path / WEIGHTS_FILE, "adapter weights")
    check_weights(tensors, path / WEIGHTS_FILE)
    head = tensors.pop(PEFT_HEAD_KEY, None)
    found = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    expected = _expected_shapes(model, config)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise MiniftError(f"{path / WEIGHTS_FILE} does not match its {CONFIG_FILE} on this model: "
                          f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, shape in expected.items():
        if tuple(found[name].shape) != shape:
            raise MiniftError(f"{path / WEIGHTS_FILE}: {name} has shape {tuple(found[name].shape)}, expected {shape}")
    if head is not None and head.shape[1:] != (model.cfg.n_embd,):
        raise MiniftError(f"{path / WEIGHTS_FILE}: the head score.weight has shape {head.shape}, "
                          f"expected (labels, {model.cfg.n_embd})")
    return found, head


def load_peft(model, path, seed: int = 0) -> LoRA:
    """Attach the adapter saved in the folder `path` (by save_peft, or by PEFT for a GPT-2) to `model`; return the
    handle, in eval mode (adapter dropout off, as PEFT's from_pretrained). A classification head in the file was
    trained with the adapters (PEFT's modules_to_save): it replaces any head the model has, with the labels recorded
    beside it (a base that was itself a classifier may have had other labels, or the same in another order).
    seed: the adapter-dropout stream.
    Everything is checked before the model is touched: a refused file leaves the model as it was."""
    path = Path(path)
    if not path.is_dir():
        raise MiniftError(f"adapter folder not found: {path}")
    if not (path / CONFIG_FILE).is_file() and (path / "adapter" / CONFIG_FILE).is_file():
        raise MiniftError(f"{path} is a LoRA run's folder, not an adapter folder: its adapter is {path / 'adapter'}")
    peft = load_json(path / CONFIG_FILE, "adapter config")
    config = _config_from_peft(peft, path / CONFIG_FILE)
    meta = peft.get("minift") or {}
    modules = resolve_modules(model.cfg.n_layer, config.targets)
    _check_attachable(model, config, modules)
    make_residual = _check_base(model, meta, config, path)
    found, head = _read_tensors(path, model, config)
    labels = meta.get("labels")
    if head is not None and labels and len(labels) != head.shape[0]:
        raise MiniftError(f"{path}: {CONFIG_FILE} records {len(labels)} labels ({labels}) but the head in "
                          f"{WEIGHTS_FILE} has {head.shape[0]} rows")
    if head is not None:                     # the file's head, with its labels, in place of the model's
        same_shape = HEAD in model.params and model.params[HEAD].shape == head.shape
        model.add_classification_head(labels or (model.labels if same_shape else None)
                                      or [f"LABEL_{i}" for i in range(head.shape[0])])
    lora = _attach(model, config, modules, seed, replace_base=make_residual)
    arrays = lora.params
    for name, value in found.items():
        arrays[name][...] = model.xp.asarray(np.asarray(value, dtype=model.dtype))   # in place
    if head is not None:
        model.params[HEAD][...] = model.xp.asarray(np.asarray(head, dtype=model.dtype))
    lora.base_fingerprint = meta.get("base_fingerprint", lora.base_fingerprint)       # as recorded at training
    lora.original_fingerprint = meta.get("original_base_fingerprint", lora.original_fingerprint)
    return lora.eval()


__all__ = ["LoRA", "LoRAConfig", "LoRALinear", "attach_lora", "load_peft", "lora_backward", "lora_forward",
           "init_factors", "pissa_factors", "resolve_modules"]
