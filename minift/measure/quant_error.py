"""Quantisation error, made visible: what a 4-bit code (NF4, int4, FP4; minift/quant.py) does to the shipped base
before any fine-tuning, matrix by matrix and on the loss, and why NF4 fits normally distributed weights best.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv 2305.14314), §3: pretrained weights are
roughly zero-centred normal, so after blockwise absmax scaling a block's values x/c crowd near 0; NF4 places its 16
levels at quantiles of N(0, 1), each catching about the same share of them, where int4 spaces its levels evenly and
FP4 spaces them by powers of two. What this module measures, for each adapted linear W (minift.config.LINEAR_MODULES,
"h.{i}.{module}.weight") and W̃ = deq(quant(W)):

    rel_error = ‖W − W̃‖_F / ‖W‖_F        the rounding noise as a share of the matrix: y = x W̃ = x W + x (W̃ − W),
                                          so for inputs spread over all directions it is also the relative noise
                                          added to the linear's output; scale-free, so matrices compare
    mae_std   = mean |W − W̃| / std(W)     how far a typical weight moves, in units of a typical weight's size
    Δloss     = L(base with every W → W̃) − L(base)     language-model loss, nats per token, before fine-tuning

and, per code, how its levels meet the values they must represent: the share of a real matrix's block-normalised
values x/c that falls to each level (`usage`, and its entropy: 4 bits only if all 16 levels were used equally), and
the error on blocks of K = 64 draws from N(0, 1) (`gaussian_error`, Monte Carlo with a seeded generator).

The loss is the base's language-model loss on the token stream the caller gives: `minift compare` scores forgetting
on held-out pretraining text (training.pretrain.heldout_for_base), and the same windows are the natural ones here,
since the base is a language model and this is its loss before any task exists.

Letters: N the weights of a matrix, K the block size (64), NB = ⌈N / K⌉ blocks, U a code's distinct levels, NW the
windows of n_ctx = T tokens the loss is measured on. Everything returned is plain data (dicts, lists, floats), ready
for a results.json. Arrays are read on the host in float64 for the statistics; the loss runs where the model lives.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_numpy
from ..data.batching import sequential_windows
from ..errors import MiniftError
from ..model import GPT
from ..quant import BLOCK, CODES, DQ_BLOCK, bits_per_parameter, code_values, dequantize, nearest, quantize
from .analysis import linear_weight_names, matrix_position

DQ = (False, True)           # without and with double quantisation of the block scales
HIST_BINS = 100              # bins of the histogram of x/c over [-1, 1]
GAUSSIAN_BLOCKS = 4096       # N(0, 1) blocks drawn for the expected error: 262,144 values at K = 64
MEASURES = {
    "rel_error": "‖W − W̃‖_F / ‖W‖_F: the rounding noise as a share of the matrix (and, for inputs spread over all "
                 "directions, of the linear's output)",
    "mae_std": "mean |W − W̃| / std(W): how far a typical weight moves, in units of a typical weight's size",
}


def _g(x) -> float:
    return float(f"{float(x):.6g}")            # 6 significant digits: results.json stays readable


# ---- variants: a code, with or without double quantisation ------------------------------------------------------

def variant_key(code: str, double_quant: bool) -> str:
    """"nf4", "nf4+dq": how a (code, double quantisation) pair is named in every dict this module returns."""
    return f"{code}+dq" if double_quant else code


def variants(codes=CODES, double_quant=DQ) -> list:
    """[(key, code, double_quant)] for every code and double-quantisation setting, codes first."""
    codes, double_quant = _check_codes(codes), _check_dq(double_quant)
    return [(variant_key(c, dq), c, dq) for c in codes for dq in double_quant]


def reconstruct(W, code: str = "nf4", double_quant: bool = False, block: int = BLOCK):
    """W [any shape] -> W̃ = deq(quant(W)) [same shape], in W's dtype and on W's device."""
    return dequantize(quantize(W, code, block=block, double_quant=double_quant))


# ---- 1. reconstruction error per matrix ---------------------------------------------------------------------------

def matrix_error(W, code: str = "nf4", double_quant: bool = False, block: int = BLOCK) -> dict:
    """W [in, out] -> {rel_error, mae_std} of W̃ = deq(quant(W)) (the module docstring says what each is)."""
    W64 = to_numpy(W).astype(np.float64)                            # (in, out)
    E = to_numpy(reconstruct(W, code, double_quant, block)).astype(np.float64) - W64   # (in, out)  W̃ − W
    norm, std = np.linalg.norm(W64), W64.std()
    return dict(rel_error=_g(np.linalg.norm(E) / norm) if norm > 0 else 0.0,
                mae_std=_g(np.abs(E).mean() / std) if std > 0 else 0.0)


def matrix_errors(params: dict, codes=CODES, double_quant=DQ, block: int = BLOCK, modules=None) -> list:
    """Per adapted linear, in model order: {name, block, module, shape, std, errors: {variant: matrix_error}}.
    modules: the adapted linears (analysis.linear_weight_names' rule; None: all four of every block)."""
    names = _linear_names(params, modules)
    rows = []
    for name in names:
        W = params[name]
        layer, module = matrix_position(name)
        errors = {key: matrix_error(W, code, dq, block) for key, code, dq in variants(codes, double_quant)}
        rows.append(dict(name=name, block=layer, module=module, shape=list(W.shape),
                         std=_g(to_numpy(W).std()), errors=errors))
    return rows


def error_summary(rows: list, params: dict, codes=CODES, double_quant=DQ, block: int = BLOCK) -> dict:
    """Per variant over the matrices: mean and max of rel_error, mean of mae_std, and rel_error_all, the relative
    error of all adapted weights pooled, sqrt(Σ‖W − W̃‖² / Σ‖W‖²); plus the variant's bits per weight."""
    out = {}
    for key, code, dq in variants(codes, double_quant):
        rel = np.array([r["errors"][key]["rel_error"] for r in rows])              # (matrices,)
        sq_norm = np.array([np.sum(to_numpy(params[r["name"]]).astype(np.float64) ** 2) for r in rows])
        out[key] = dict(code=code, double_quant=dq, bits_per_parameter=_g(bits_per_parameter(block, dq)),
                        rel_error_mean=_g(rel.mean()), rel_error_max=_g(rel.max()),
                        rel_error_all=_g(np.sqrt(np.sum(rel ** 2 * sq_norm) / np.sum(sq_norm))),
                        mae_std_mean=_g(np.mean([r["errors"][key]["mae_std"] for r in rows])))
    return out


# ---- 2. the effect on the loss, before any fine-tuning ------------------------------------------------------------

def quantised_model(model: GPT, code: str = "nf4", double_quant: bool = False, block: int = BLOCK,
                    modules=None) -> GPT:
    """A language model sharing `model`'s parameters except each adapted linear's W, replaced by deq(quant(W)).
    Its head is the LM head (the tied wte), as for forgetting: a classifier is measured through its body."""
    params = dict(model.params)
    for name in _linear_names(model.params, modules):
        params[name] = reconstruct(model.params[name], code, double_quant, block)   # (in, out)  W̃, W's dtype
    return GPT(model.cfg, dtype=model.dtype, device=model.device, params=params)


def window_losses(model: GPT, token_ids, max_windows: int | None = 32) -> np.ndarray:
    """[tokens] ids -> [NW] the mean next-token cross-entropy (nats per token) of each consecutive window of n_ctx
    tokens; their mean is minift.training.evaluate.lm_loss's measurement (here so measure/ needs nothing from
    training/), one window at a time so that a difference between two models has a spread over windows."""
    x, y = sequential_windows(token_ids, model.cfg.n_ctx, max_windows)                # (NW, T), (NW, T)
    return np.array([model.loss(x[w:w + 1], y[w:w + 1]) for w in range(len(x))])     # (NW,)


def loss_effect(model: GPT, token_ids, codes=CODES, double_quant=DQ, block: int = BLOCK,
                max_windows: int | None = 32, text: str = "", modules=None) -> dict:
    """The LM loss of the float model and of each quantised one on the same windows of `token_ids` (`text` says
    what they are): {text, tokens, windows, float, quantised: {variant: {loss, delta, delta_se}}}, in nats per
    token; delta = loss − float, delta_se its standard error over the windows (the same windows for both, so
    the difference is paired)."""
    _check_model(model)
    _check_tokens(token_ids, model.cfg.n_ctx)
    lm = GPT(model.cfg, dtype=model.dtype, device=model.device, params=model.params)   # the LM head, no adapters
    base = window_losses(lm, token_ids, max_windows)                                   # (NW,)
    quantised = {}
    for key, code, dq in variants(codes, double_quant):
        d = window_losses(quantised_model(model, code, dq, block, modules), token_ids, max_windows) - base  # (NW,)
        se = _g(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None       # None: one window has no spread
        quantised[key] = dict(loss=_g(base.mean() + d.mean()), delta=_g(d.mean()), delta_se=se)
    return dict(text=text, tokens=int(base.size * model.cfg.n_ctx), windows=int(base.size), float=_g(base.mean()),
                quantised=quantised)


# ---- 3. why NF4 wins: the values a code must represent, against its levels ---------------------------------------

def block_normalised(W, block: int = BLOCK) -> np.ndarray:
    """W [any shape] -> x/c [N] float64, host: each value divided by its block's absmax, what the code's levels
    must represent (padding dropped; an all-zero block stays 0). One value per block is exactly ±1."""
    flat = to_numpy(W).astype(np.float64).reshape(-1)               # (N,)
    n = flat.size
    x = np.pad(flat, (0, -n % block)).reshape(-1, block)            # (NB, K)
    c = np.abs(x).max(axis=1, keepdims=True)                        # (NB, 1)  absmax per block
    return (x / np.where(c > 0, c, 1.0)).reshape(-1)[:n]            # (N,)


def code_usage(xhat: np.ndarray, code: str) -> dict:
    """x/c [N] -> {levels, usage, entropy_bits, levels_in_middle_90}: the levels x/c can round to (ascending; 16 for
    NF4, 15 for int4 and FP4, whose 16th pattern is -8/7 or -0), the share of values rounded to each, the entropy of
    that share in bits (4 only if all 16 levels were used equally), and how many levels lie between the 5% and 95%
    quantiles of the values."""
    v = code_values(code)                                           # (16,) by pattern
    # the distinct levels, ascending: -0 is 0, and int4's -8/7 lies outside the [-1, 1] that x/c lives in
    levels = np.unique(v[np.abs(v) <= 1])                           # (U,)
    q = nearest(xhat, v)                                            # (N,)  patterns
    rank = np.searchsorted(levels, v[q])                            # (N,)  index of each value's level
    p = np.bincount(rank, minlength=levels.size) / xhat.size        # (U,)  usage
    lo, hi = np.quantile(xhat, (0.05, 0.95))
    return dict(levels=[_g(a) for a in levels], usage=[_g(a) for a in p],
                entropy_bits=_g(-np.sum(p[p > 0] * np.log2(p[p > 0]))),
                levels_in_middle_90=int(np.sum((levels >= lo) & (levels <= hi))))


def gaussian_error(code: str, block: int = BLOCK, n_blocks: int = GAUSSIAN_BLOCKS, seed: int = 0) -> dict:
    """The expected error of a code on weights drawn from N(0, 1), in blocks of `block`: matrix_error of a
    [n_blocks, block] Gaussian matrix (Monte Carlo, seeded), which is what NF4 is designed for."""
    Z = np.random.default_rng(seed).standard_normal((n_blocks, block)).astype(np.float32)   # (NB, K)
    return matrix_error(Z, code, block=block)


def code_fit(params: dict, matrix: str | None = None, codes=CODES, block: int = BLOCK, seed: int = 0,
             bins: int = HIST_BINS, modules=None) -> dict:
    """One real matrix's block-normalised values against each code's levels:
    {matrix, block, edges [bins+1], density [bins], gaussian_density [bins], std, middle_90 [2],
     codes: {code: code_usage + gaussian_error}}.
    density is the histogram of that matrix's x/c (per unit of x/c), gaussian_density the same for N(0, 1) blocks,
    std the spread of x/c and middle_90 its 5% and 95% quantiles.
    matrix: a linear's weight name (default: the first of the largest)."""
    names = _linear_names(params, modules)
    matrix = _pick_matrix(params, names, matrix)
    xhat = block_normalised(params[matrix], block)                  # (N,)
    gauss = block_normalised(np.random.default_rng(seed).standard_normal((GAUSSIAN_BLOCKS, block)), block)
    edges = np.linspace(-1.0, 1.0, bins + 1)                        # (bins+1,)
    density = np.histogram(xhat, edges, density=True)[0]            # (bins,)
    g_density = np.histogram(gauss, edges, density=True)[0]         # (bins,)
    per_code = {c: {**code_usage(xhat, c), "gaussian_error": gaussian_error(c, block, seed=seed)}
                for c in _check_codes(codes)}
    return dict(matrix=matrix, block=block, edges=[_g(e) for e in edges], density=[_g(d) for d in density],
                gaussian_density=[_g(d) for d in g_density], std=_g(xhat.std()),
                middle_90=[_g(q) for q in np.quantile(xhat, (0.05, 0.95))], codes=per_code)


# ---- all of it --------------------------------------------------------------------------------------------------

def quant_error_report(model: GPT, token_ids, codes=CODES, double_quant=DQ, block: int = BLOCK,
                       max_windows: int | None = 32, text: str = "", matrix: str | None = None,
                       seed: int = 0, modules=None) -> dict:
    """Everything above for one base model, as plain data:
    {block, dq_block, codes, variants, measures, matrices, summary, loss, code_fit}; modules: the linears QLoRA
    would quantise (None: every linear of every block)."""
    _check_model(model)
    rows = matrix_errors(model.params, codes, double_quant, block, modules)
    return dict(block=block, dq_block=DQ_BLOCK, codes=list(_check_codes(codes)),
                variants=[k for k, _, _ in variants(codes, double_quant)], measures=dict(MEASURES), matrices=rows,
                summary=error_summary(rows, model.params, codes, double_quant, block),
                loss=loss_effect(model, token_ids, codes, double_quant, block, max_windows, text, modules),
                code_fit=code_fit(model.params, matrix, codes, block, seed, modules=modules))


# ---- input checks -------------------------------------------------------------------------------------------------

def _check_codes(codes) -> tuple:
    codes = (codes,) if isinstance(codes, str) else tuple(codes) if isinstance(codes, (list, tuple)) else None
    if not codes or any(c not in CODES for c in codes) or len(set(codes)) != len(codes):
        raise MiniftError(f"codes={codes!r} must be distinct names from {CODES}")
    return codes


def _check_dq(double_quant) -> tuple:
    dq = (double_quant,) if isinstance(double_quant, bool) else (
        tuple(double_quant) if isinstance(double_quant, (list, tuple)) else None)
    if not dq or any(not isinstance(d, bool) for d in dq) or len(set(dq)) != len(dq):
        raise MiniftError(f"double_quant={double_quant!r} must be True, False or distinct booleans such as "
                          "(False, True)")
    return dq


def _check_model(model) -> None:
    if not isinstance(model, GPT):
        raise MiniftError(f"model must be a minift GPT, got {type(model).__name__}")
    if model.adapters:
        raise MiniftError(f"model has adapters on {sorted(model.adapters)}: the quantisation error is measured on "
                          "the base before fine-tuning (quantise the base, then attach adapters)")


def _check_tokens(token_ids, n_ctx: int) -> None:
    n = getattr(token_ids, "size", None) if hasattr(token_ids, "shape") else None
    if n is None or token_ids.ndim != 1 or not np.issubdtype(token_ids.dtype, np.integer) or n < n_ctx + 1:
        what = (f"shape {tuple(token_ids.shape)} dtype {token_ids.dtype}" if hasattr(token_ids, "shape")
                else type(token_ids).__name__)
        raise MiniftError(f"token_ids ({what}) must be a 1-D integer array of at least n_ctx + 1 = {n_ctx + 1} "
                          "tokens: one window and its next-token targets")


def _linear_names(params, modules=None) -> list:
    if not isinstance(params, dict):
        raise MiniftError(f"params must be a dict name -> array (model.params), got {type(params).__name__}")
    names = linear_weight_names(params, modules)
    if not names:
        raise MiniftError("params has no adapted linear weight (names like 'h.0.attn.c_attn.weight')")
    return names


def _pick_matrix(params, names, matrix):
    if matrix is None:
        return max(names, key=lambda n: (math.prod(params[n].shape), -names.index(n)))
    if matrix not in names:
        raise MiniftError(f"matrix={matrix!r} is not an adapted linear's weight; one of {names}")
    return matrix
