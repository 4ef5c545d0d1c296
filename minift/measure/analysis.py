"""Spectral analysis of fine-tuned weights: the measurements of the MIT paper the article cites (§4.2).

Shuttleworth, Andreas, Torralba, Sharma, "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv 2410.21228)
compare a pretrained matrix W0 with its fine-tuned W_tuned = W0 + ΔW through their singular value decompositions.
Their finding: LoRA's W_tuned has *intruder dimensions*, new high-ranking singular vectors nearly orthogonal to every
singular vector of W0; full fine-tuning's has (almost) none.

Every function takes plain arrays (NumPy or CuPy, any float dtype), copies them to the host and works in float64.

Which space is compared (the layout). The paper's matrices are PyTorch nn.Linear weights, [out, in] (y = W x), and its
Algorithm 1 compares *left* singular vectors: directions in the layer's OUTPUT space. minift stores W as [in, out]
(GPT-2's Conv1D, y = x W), the transpose, so the same output-space directions are minift's RIGHT singular vectors.
Every function here takes `layout="in_out"` (minift's, the default) or `"out_in"` (the paper's, nn.Linear) and
transposes to the paper's [out, in] first, so both compare the output space, exactly as the paper does:
intruders(W, layout="in_out") == intruders(W.T, layout="out_in"). (HF PEFT's `reduce_intruder_dimension` takes
`weight` as stored, so on GPT-2's Conv1D layers it compares the input space instead.)

Algorithm 1 (intruder dimensions), with W in [out, in]:
    U0, S0, V0ᵀ = svd(W0)          U, S, Vᵀ = svd(W_tuned)          (thin SVDs, as the authors' code)
    for each of the top-k left singular vectors u_j of W_tuned (largest S first):
        u_j is an intruder  ⇔  max_i |cos(u_j, u0_i)| < ε   over ALL left singular vectors u0_i of W0
Their code uses k = 10, ε = 0.5, and sums the counts over the adapted matrices. Intruders are found in W0 + ΔW,
not in ΔW alone.

Noise floor. A random unit vector in R^d has max_i |cos| ≈ sqrt(2 ln(2d) / d) against a complete orthonormal basis
of R^d (≈ 0.39 at d = 64; it can never be below 1/√d). That is an upper estimate (the Gaussian maximum bound
E max|g_i| ≤ sqrt(2 ln 2d)): simulated means are 0.326, 0.251, 0.121 at d = 64, 128, 768, the formula 14-19% above.
An intruder is a direction that looks random to W0's basis. At GPT-2's width random directions sit at 0.10-0.14, far
below ε = 0.5; at d = 64 they sit at 0.27-0.41 (5-95%), close to it, so a direction that is only partly new can fall
on either side. At tiny widths, sweep ε (`intruder_sweep`) and compare with `random_baseline`.
The thin basis of a rectangular [out, in] W0 with out > in (c_attn: 3C x C, c_fc: 4C x C) spans only `in` of the
`out` output dimensions; against such an incomplete basis of m vectors in R^d the level drops to about
sqrt(2 ln(2m) / d), and a new direction can even be exactly orthogonal to all of W0's (|cos| = 0).

Mitigation (the paper's causal intervention, added in its v2 of June 2025, the NeurIPS 2025 version; not in v1 of
October 2024; PEFT's `reduce_intruder_dimension`): scale the intruders' singular values by λ ≈ 0.75,
W_new = W_tuned + (λ − 1) Σ_{j intruder} s_j u_j v_jᵀ; pretraining loss improves while task accuracy barely moves.

Two summaries of an update ΔW = W_tuned − W0:
    effective_rank(M) = exp(H(p)),  p_i = σ_i / Σ σ,  H = −Σ p_i ln p_i    (Roy & Vetterli 2007)
    stable_rank(M)    = ‖M‖_F² / ‖M‖_2² = Σ σ_i² / σ_1²
A rank-r matrix with r equal singular values has both equal to r; full fine-tuning's updates have the higher ones.

Are two updates the same kind of change (the paper's "illusion of equivalence": equal accuracy, different updates)?
The normalised subspace similarity of the LoRA paper (Hu et al. 2021, §7.2), between the top-k left singular
vectors U1, U2 [out, k] of two updates ΔW1, ΔW2 (output space, as above):
    φ = ‖U1ᵀ U2‖_F² / k      1: the same subspace, 0: orthogonal ones
Only directions an update has count: k is clipped to each update's rank (singular values above RANK_RTOL · σ_1), so a
rank-r LoRA update at k > r is not padded with arbitrary null-space directions; a zero update has no subspace (nan).
Two independent uniformly random k-dim subspaces of R^d give E φ = k/d (random_subspace_similarity): far below 1
at GPT-2's width, but not at minift's small ones (8/128 = 0.06).
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..backend import to_numpy
from ..errors import MiniftError
from ..model import LINEAR_MODULES
from ..quant import Quantized

LAYOUTS = ("in_out", "out_in")
EPS_VALUES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RANK_RTOL = 1e-9           # σ_i ≤ RANK_RTOL · σ_1 is float64 rounding of W0 + ΔW − W0, not a direction of ΔW
SUBSPACE_K = 8             # `minift inspect --compare`'s k when neither run is LoRA (else the LoRA run's r)


# ---- inputs --------------------------------------------------------------------------------------------------------

def _matrix(W, name="W") -> np.ndarray:
    """A host float64 copy of a 2-D float array, or a MiniftError naming the input."""
    if isinstance(W, Quantized):
        raise MiniftError(f"{name} is a 4-bit weight (QLoRA's base): compare float weights, such as "
                          "lora.tuned_weights(base.params) or lora.effective_weights()")
    a = np.asarray(to_numpy(W))
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating) or 0 in a.shape:
        raise MiniftError(f"{name} must be a non-empty 2-D floating-point matrix, got shape {a.shape} dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise MiniftError(f"{name} has NaN or infinite entries")
    return a.astype(np.float64)


def _out_in(W, layout, name="W") -> np.ndarray:
    """W as the paper's [out, in] float64 matrix (minift's [in, out] is transposed)."""
    if layout not in LAYOUTS:
        raise MiniftError(f"layout={layout!r} is not one of {LAYOUTS} (minift's weights are 'in_out')")
    a = _matrix(W, name)
    return a.T if layout == "in_out" else a


def _pair(W0, W_tuned, layout):
    a, b = _out_in(W0, layout, "W0"), _out_in(W_tuned, layout, "W_tuned")
    if a.shape != b.shape:
        raise MiniftError(f"W0 {a.shape} and W_tuned {b.shape} must have the same shape")
    return a, b


def _top_k(k, n, name="k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MiniftError(f"{name}={k!r} must be a positive integer")
    return min(int(k), n)            # a matrix has only min(out, in) singular vectors


# ---- spectra -------------------------------------------------------------------------------------------------------

def singular_values(W) -> np.ndarray:
    """Singular values of W, largest first, float64 (the same for either layout)."""
    return np.linalg.svd(_matrix(W), compute_uv=False)


def effective_rank(M) -> float:
    """exp of the entropy of σ / Σσ (Roy & Vetterli 2007): r for r equal singular values, 0 for M = 0."""
    return _effective_rank(singular_values(M))


def _effective_rank(s) -> float:
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def stable_rank(M) -> float:
    """‖M‖_F² / ‖M‖_2²: at most the rank, r for r equal singular values, 0 for M = 0."""
    s = singular_values(M)
    return float((s ** 2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def update_stats(W0, W_tuned) -> dict:
    """Where an update ΔW = W_tuned − W0 lives, from one SVD (norms and singular values do not depend on the layout):
    rel_norm ‖ΔW‖_F / ‖W0‖_F, eff_rank (0 for no update), singular_values of ΔW, largest first."""
    a, b = _matrix(W0, "W0"), _matrix(W_tuned, "W_tuned")
    if a.shape != b.shape:
        raise MiniftError(f"W0 {a.shape} and W_tuned {b.shape} must have the same shape")
    s = singular_values(b - a)
    norm0 = np.linalg.norm(a)
    return dict(rel_norm=float(np.sqrt((s ** 2).sum()) / norm0) if norm0 > 0 else math.inf,
                eff_rank=_effective_rank(s), singular_values=s)


def spectrum_compare(W0, W_tuned, layout="in_out") -> dict:
    """Spectra of W0, W_tuned and ΔW = W_tuned − W0, and ΔW's size and ranks (update_stats)."""
    a, b = _pair(W0, W_tuned, layout)
    u = update_stats(a, b)
    s = u["singular_values"]
    return dict(s0=singular_values(a), s_tuned=singular_values(b), s_delta=s, relative_change=u["rel_norm"],
                effective_rank_delta=u["eff_rank"],
                stable_rank_delta=float((s ** 2).sum() / s[0] ** 2) if s[0] > 0 else 0.0)


# ---- intruder dimensions -------------------------------------------------------------------------------------------

def _max_cos(a, b, k):
    """Thin SVDs of W0 = a and W_tuned = b ([out, in]); for the top-k left singular vectors of b, the largest
    |cos| with any left singular vector of a, and which one. Returns (max_cos (k,), nearest (k,), U, S, Vᵀ of b)."""
    U0 = np.linalg.svd(a, full_matrices=False)[0]                        # (out, m) m = min(out, in)
    U, S, Vt = np.linalg.svd(b, full_matrices=False)                     # (out, m), (m,), (m, in)
    cos = np.abs(U[:, :k].T @ U0)                                        # (k, m) columns are unit: dots are cosines
    return cos.max(axis=1), cos.argmax(axis=1), U, S, Vt


def intruder_dimensions(W0, W_tuned, k=10, eps=0.5, layout="in_out") -> dict:
    """The paper's Algorithm 1 (module docstring) on one matrix.

    Returns count (intruders among the top-k), max_cos (k,) (each top vector's best |cos| with W0's singular
    vectors), indices (ranks j, 0-based, of the intruders among W_tuned's singular vectors), nearest (k,) (which
    singular vector of W0 each one matches best), singular_values (of the intruders), k, eps.
    """
    a, b = _pair(W0, W_tuned, layout)
    k = _top_k(k, min(b.shape))
    if not 0 < eps <= 1:
        raise MiniftError(f"eps={eps!r} must be a cosine threshold in (0, 1]")
    max_cos, nearest, _, S, _ = _max_cos(a, b, k)
    idx = np.flatnonzero(max_cos < eps)
    return dict(count=int(idx.size), max_cos=max_cos, indices=idx, nearest=nearest, singular_values=S[idx],
                k=k, eps=float(eps))


def intruder_sweep(W0, W_tuned, k=10, eps_values=EPS_VALUES, layout="in_out") -> dict:
    """Intruder counts for every ε in eps_values from one pair of SVDs: {"eps", "counts", "max_cos"}."""
    a, b = _pair(W0, W_tuned, layout)
    max_cos = _max_cos(a, b, _top_k(k, min(b.shape)))[0]
    eps = np.asarray(eps_values, dtype=np.float64)
    return dict(eps=eps, counts=np.array([int((max_cos < e).sum()) for e in eps]), max_cos=max_cos)


def random_baseline(dim, k=10, trials=1000, seed=0, basis_dim=None, eps_values=EPS_VALUES) -> dict:
    """The noise floor: max |cos| of random orthonormal k-frames in R^dim against an orthonormal basis of
    basis_dim (default dim, a complete basis) directions.

    By rotation invariance the basis can be taken as the first basis_dim coordinate axes, so max |cos| of a unit
    vector x is max_{i < basis_dim} |x_i|. Returns max_cos (trials, k), mean, std, quantiles {0.05, 0.5, 0.95},
    formula = sqrt(2 ln(2·basis_dim) / dim) (each x_i ≈ N(0, 1/dim); the usual bound on the largest of
    2·basis_dim Gaussians' absolute values: an upper estimate), floor =
    1/sqrt(dim) (the minimum against a complete basis), and false_intruders: for each ε, the mean number of the k
    random directions that Algorithm 1 would call intruders.
    """
    m = dim if basis_dim is None else basis_dim
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1 or not 1 <= m <= dim:
        raise MiniftError(f"dim={dim!r} must be a positive integer and basis_dim={basis_dim!r} in [1, dim]")
    k = _top_k(k, dim)
    rng = np.random.default_rng(seed)
    frames = np.linalg.qr(rng.standard_normal((trials, dim, k)))[0]      # (trials, dim, k) orthonormal columns
    max_cos = np.abs(frames[:, :m, :]).max(axis=1)                       # (trials, k)
    q = np.quantile(max_cos, (0.05, 0.5, 0.95))
    return dict(max_cos=max_cos, mean=float(max_cos.mean()), std=float(max_cos.std()),
                quantiles={0.05: float(q[0]), 0.5: float(q[1]), 0.95: float(q[2])},
                formula=math.sqrt(2 * math.log(2 * m) / dim), floor=1 / math.sqrt(dim) if m == dim else 0.0,
                false_intruders={float(e): float((max_cos < e).sum(axis=1).mean()) for e in eps_values},
                dim=int(dim), basis_dim=int(m), k=k)


def scale_intruders(W0, W_tuned, k=10, eps=0.5, lam=0.75, layout="in_out"):
    """The paper's mitigation: W_tuned with each intruder's singular value multiplied by λ, in W_tuned's layout and
    dtype. W_new = W_tuned + (λ − 1) Σ_{j intruder} s_j u_j v_jᵀ; λ = 1 (or no intruder) gives W_tuned back."""
    a, b = _pair(W0, W_tuned, layout)
    k = _top_k(k, min(b.shape))
    max_cos, _, U, S, Vt = _max_cos(a, b, k)
    idx = np.flatnonzero(max_cos < eps)
    new = b + (U[:, idx] * ((lam - 1.0) * S[idx])) @ Vt[idx]             # (out, in)
    new = new.T if layout == "in_out" else new
    dtype = np.asarray(to_numpy(W_tuned)).dtype
    return new.astype(dtype)


# ---- are two updates alike? ----------------------------------------------------------------------------------------

def _left_svd(d):
    """(U [out, m], S (m,)) of the thin SVD of an [out, in] update: its output-space directions, largest σ first."""
    U, S, _ = np.linalg.svd(d, full_matrices=False)                     # (out, m), (m,)  m = min(out, in)
    return U, S


def _rank(S) -> int:
    """How many of an update's singular values are directions of it: above RANK_RTOL · σ_1 (0 for a zero update)."""
    return int((S > RANK_RTOL * S[0]).sum()) if S[0] > 0 else 0


def _similarity(U1, S1, U2, S2, k):
    """(φ, the k used): ‖U1ᵀ U2‖_F² / k over the top-k left singular vectors, k clipped to both ranks; (nan, 0) when
    an update is zero."""
    k = min(k, _rank(S1), _rank(S2))
    if k == 0:
        return math.nan, 0
    return float(((U1[:, :k].T @ U2[:, :k]) ** 2).sum() / k), k         # (k, k) cosines between the two bases


def subspace_similarity(dW1, dW2, k, layout="in_out") -> float:
    """φ = ‖U1ᵀ U2‖_F² / k between the top-k output-space singular subspaces of two same-shape updates (Hu et al.
    2021 §7.2; module docstring): 1 for the same subspace, 0 for orthogonal ones, k/dim expected for random ones.
    k is clipped to min(out, in) and to each update's rank; nan when either update is zero (it has no subspace)."""
    a, b = _out_in(dW1, layout, "dW1"), _out_in(dW2, layout, "dW2")
    if a.shape != b.shape:
        raise MiniftError(f"dW1 {a.shape} and dW2 {b.shape} must have the same shape")
    return _similarity(*_left_svd(a), *_left_svd(b), _top_k(k, min(a.shape)))[0]


def random_subspace_similarity(dim, k) -> float:
    """E φ for two independent uniformly random k-dim subspaces of R^dim: exactly k/dim. With P1, P2 their orthogonal
    projections ‖U1ᵀ U2‖_F² = tr(P1 P2), and E[P2] = (k/dim) I gives tr(P1) · k/dim = k²/dim; divided by k."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise MiniftError(f"dim={dim!r} must be a positive integer")
    return _top_k(k, dim) / dim


# ---- a whole model -------------------------------------------------------------------------------------------------

_BLOCK_WEIGHT = re.compile(r"h\.(\d+)\.(.+)\.weight$")             # block, module


def matrix_position(name: str) -> tuple:
    """"h.3.mlp.c_fc.weight" -> (3, "mlp.c_fc"): a block linear's block and module."""
    m = _BLOCK_WEIGHT.match(name)
    if m is None:
        raise MiniftError(f"{name!r} is not a block linear's weight (h.<block>.<module>.weight)")
    return int(m.group(1)), m.group(2)


def linear_weight_names(params: dict, modules=None) -> list:
    """The names of the block linears' weights in `params`, in layer order. modules: None (all four linears) or
    module names matched as suffixes ("attn.c_attn", "c_proj") or exact parameter names."""
    found = sorted(((int(m.group(1)), LINEAR_MODULES.index(m.group(2)), n) for n in params
                    if (m := _BLOCK_WEIGHT.match(n)) and m.group(2) in LINEAR_MODULES))
    names = [n for _, _, n in found]
    if modules is None:
        return names
    wanted = (modules,) if isinstance(modules, str) else tuple(modules)
    chosen = [n for n in names if any(n == w or n[:-len(".weight")].endswith("." + w) for w in wanted)]
    if not chosen:
        raise MiniftError(f"modules={modules!r} match no linear weight in the parameters "
                          f"(expected names like 'h.0.attn.c_attn.weight' or modules from {LINEAR_MODULES})")
    return chosen


def model_intruders(base_params: dict, tuned_params: dict, modules=None, k=10, eps=0.5, layout="in_out") -> dict:
    """Intruder dimensions of every chosen weight matrix, summed as the paper does.

    base_params, tuned_params: name -> array (e.g. a base model's params, and a fine-tuned or LoRA-merged copy).
    Returns {"total", "k", "eps", "rows"}, rows: one dict per matrix with name, shape, count, max_cos, indices.
    """
    rows = []
    for name in linear_weight_names(base_params, modules):
        if name not in tuned_params:
            raise MiniftError(f"tuned_params has no {name!r} (merge LoRA adapters into the weights first)")
        r = intruder_dimensions(base_params[name], tuned_params[name], k=k, eps=eps, layout=layout)
        rows.append(dict(name=name, shape=tuple(base_params[name].shape), count=r["count"], max_cos=r["max_cos"],
                         indices=r["indices"]))
    return dict(total=sum(r["count"] for r in rows), k=k, eps=float(eps), rows=rows)


def format_intruders(result: dict) -> str:
    """A small table of model_intruders' rows: matrix, shape, intruder count, smallest max|cos| among the top-k."""
    lines = [f"{'matrix':<28} {'shape':>12} {'intruders':>9} {'min max|cos|':>12}"]
    for r in result["rows"]:
        lines.append(f"{r['name']:<28} {str(r['shape']):>12} {r['count']:>9} {float(r['max_cos'].min()):>12.3f}")
    lines.append(f"{'total (k=%d, eps=%.2f)' % (result['k'], result['eps']):<28} {'':>12} {result['total']:>9}")
    return "\n".join(lines)


def _update(W0, tuned, name, tag, layout):
    """(‖ΔW‖_F / ‖W0‖_F, U, S of ΔW) for one run's tuned weight of matrix `name`; W0 in [out, in]."""
    if name not in tuned:
        raise MiniftError(f"tuned_{tag} has no {name!r} (fold LoRA adapters into the weights first: "
                          "lora.effective_weights())")
    W = _out_in(tuned[name], layout, f"tuned_{tag}[{name!r}]")                          # (out, in)
    if W.shape != W0.shape:
        raise MiniftError(f"tuned_{tag}[{name!r}] has shape {tuple(tuned[name].shape)}, the base's is "
                          f"{W0.shape[::-1] if layout == 'in_out' else W0.shape}: not fine-tuned from this base")
    d = W - W0                                                                          # (out, in) ΔW
    norm0 = np.linalg.norm(W0)
    return (float(np.linalg.norm(d) / norm0) if norm0 > 0 else math.inf), *_left_svd(d)


def compare_updates(base_params: dict, tuned_a: dict, tuned_b: dict, k, modules=None, layout="in_out") -> list:
    """Are two fine-tunes' updates of the same base the same kind of change? One row per chosen block linear:
    name, block, module, shape (as stored), rel_norm_a/_b (‖ΔW‖_F / ‖W0‖_F), eff_rank_a/_b (effective_rank of ΔW,
    0 for a zero update), k (the k compared: clipped to both updates' ranks, 0 when one is zero), similarity (φ of
    the top-k output subspaces; nan when an update is zero: "no update") and random (k/dim, the output dim's).
    tuned_a, tuned_b: name -> weight, with any LoRA adapters folded in (lora.effective_weights())."""
    rows = []
    for name in linear_weight_names(base_params, modules):
        W0 = _out_in(base_params[name], layout, f"base_params[{name!r}]")              # (out, in)
        rel_a, Ua, Sa = _update(W0, tuned_a, name, "a", layout)
        rel_b, Ub, Sb = _update(W0, tuned_b, name, "b", layout)
        phi, k_used = _similarity(Ua, Sa, Ub, Sb, _top_k(k, min(W0.shape)))
        block, module = matrix_position(name)
        rows.append(dict(name=name, block=block, module=module, shape=tuple(base_params[name].shape),
                         rel_norm_a=rel_a, rel_norm_b=rel_b, eff_rank_a=_effective_rank(Sa),
                         eff_rank_b=_effective_rank(Sb), k=k_used, similarity=phi,
                         random=random_subspace_similarity(W0.shape[0], k_used) if k_used else math.nan))
    return rows


def format_update_comparison(rows: list, label_a: str, label_b: str) -> str:
    """compare_updates' rows as a table, and their means (similarity and random over the matrices both runs
    changed; "no update" where one did not)."""
    a, b = label_a[:10], label_b[:10]

    def line(name, shape, rel_a, rel_b, rank_a, rank_b, k, phi, rnd):
        right = f"{k:>4} {phi:>10.3f} {rnd:>10.3f}" if k is not None else f"{'no update':>26}"
        return f"{name:<24} {shape:>11}  {rel_a:>10.4f} {rel_b:>10.4f}  {rank_a:>10.1f} {rank_b:>10.1f}  {right}"

    lines = [f"{'':<24} {'':>11}  {'‖ΔW‖/‖W0‖':^21}  {'eff. rank ΔW':^21}  {'top-k output subspaces':>25}",
             f"{'matrix':<24} {'shape':>11}  {a:>10} {b:>10}  {a:>10} {b:>10}  {'k':>4} {'similarity':>10} "
             f"{'random':>10}"]
    for r in rows:
        lines.append(line(r["name"], str(r["shape"]), r["rel_norm_a"], r["rel_norm_b"], r["eff_rank_a"],
                          r["eff_rank_b"], r["k"] or None, r["similarity"], r["random"]))
    if rows:
        both = [r for r in rows if r["k"]]

        def mean(key, of=rows):
            return float(np.mean([r[key] for r in of])) if of else math.nan

        lines.append(line(f"mean ({len(rows)} matrices)", "", mean("rel_norm_a"), mean("rel_norm_b"),
                          mean("eff_rank_a"), mean("eff_rank_b"), "" if both else None,
                          mean("similarity", both), mean("random", both)))
    return "\n".join(lines)
