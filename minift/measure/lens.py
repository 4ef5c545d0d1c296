"""The lens: one batch through full fine-tuning and LoRA, side by side, for every adapted matrix.

Article §4.1 ("完全微调与LoRA的异同点", similarities and differences): the same batch through both methods, tensor
by tensor. For ONE batch and each adapted weight W, the lens puts next to each other

    G         the gradient full fine-tuning would apply to W                                     [I, O]
    dA, dB    LoRA's gradients, and how far they are from their expressions through G            [R, I], [O, R]
    ΔW_step   the change one plain SGD step on A and B makes to the effective weight W + ΔW       [I, O]
              (exact, and to first order), against full fine-tuning's SGD step −η G
    shares    how much of G lies where LoRA can reach it, and the most any rank-R update could hold

Letters as in lora/op.py: N token positions (B·T), I in features, O out features, R the rank r; s the scale (α/R, or
α/√R with rsLoRA); η the SGD learning rate. Layout: minift's GPT-2 Conv1D [I, O] (y = x W); in PEFT's nn.Linear
layout [O, I] every W-shaped matrix below is transposed (G_peft = Gᵀ).

The identities (lora/op.py's docstring; with no dropout, and dA, dB, G from the SAME dy):

    G  = xᵀ dy                                      [I, O]   full fine-tuning's gradient of W
    dB = s · Gᵀ Aᵀ                                  [O, R]   (PEFT: s · G_peft Aᵀ)
    dA = s · Bᵀ Gᵀ                                  [R, I]   (PEFT: s · Bᵀ G_peft)

One SGD step, A' = A − η dA and B' = B − η dB. The effective weight W + s Aᵀ Bᵀ moves by

    exact        ΔW_step = s · (A'ᵀ B'ᵀ − Aᵀ Bᵀ)                 (PEFT: s · ((B − η dB)(A − η dA) − B A))
                         = −η s (dAᵀ Bᵀ + Aᵀ dBᵀ) + η² s dAᵀ dBᵀ
    first order  ΔW₁     = −η s (dAᵀ Bᵀ + Aᵀ dBᵀ)  =  −η s² (Aᵀ A G + G B Bᵀ)       (PEFT: −η s (dB A + B dA))
    full FT              −η G

so LoRA's step is full fine-tuning's gradient seen through two positive semi-definite maps, Aᵀ A on the input side
and B Bᵀ on the output side. Consequences the table shows:
  - cos(ΔW₁, −G) = (‖A G‖² + ‖G B‖²) · s² / (‖ΔW₁‖/η · ‖G‖) ≥ 0: LoRA's first-order step never points uphill on
    the batch; how close to 1 it gets is how much of full fine-tuning's descent direction it follows.
  - at init B = 0, so dA = s Bᵀ Gᵀ = 0 and the first step moves only B: ΔW_step = −η s² Aᵀ A G (exact = first
    order). After some training (B ≠ 0) both factors move and the η² term appears. The lens works in both states
    and says which one it saw.
  - the exact step differs from the first-order one by η² s dAᵀ dBᵀ: halving η quarters the gap.

Subspaces. With P_in the orthogonal projection of R^I onto the row space of A (the span of Aᵀ's columns) and P_out
that of R^O onto the column space of B:

    span share     ‖P_in G P_out‖ / ‖G‖               the part of G inside the subspace ΔW = s Aᵀ Bᵀ lives in now
                                                      (PEFT: ‖P_B G_peft P_A‖ / ‖G‖); 0 at init (B = 0, ΔW = 0)
    tangent share  ‖G − (1 − P_in) G (1 − P_out)‖ / ‖G‖   the part of G in {Aᵀ X + Y Bᵀ}, every change of the
                                                      effective weight a small change of A and B can make (rank
                                                      ≤ 2R). ΔW₁ lies in it, so cos(ΔW₁, −G) ≤ tangent share
                                                      (equal only if ΔW₁ were G's orthogonal projection)
    best-r share   ‖G_R‖ / ‖G‖, G_R the top-R truncated SVD of G: the most ANY rank-R subspace pair could hold
                                                      (Eckart–Young), so span share ≤ best-r share; likewise
                                                      tangent share ≤ best-2r share
Norms are Frobenius norms.

G at the same point. Full fine-tuning's gradient is wanted at the point LoRA is at, W_eff = W + ΔW. The lens gets it
from the LoRA-attached model itself: W is unfrozen for one backward, so the adapted linear also returns dW = xᵀ dy
from the very dy that gives dA and dB (see full_and_lora_grads). Dropout (model and adapter) is off for that pass:
with it, dA and dB would see a dropped x and the identities would not hold.

Plain SGD: the step the lens shows is SGD's, the geometry of the gradients. minift trains with AdamW, whose step
divides each coordinate by its own running scale: a different update, made from the same dA and dB.

Reading any tensor of the pass: activations(model, batch) returns model.record after a record=True call. Its names
(minift/model.py): activations by name — "embedding", "h.{i}.ln_1", "h.{i}.attn.c_attn" (the qkv output),
"h.{i}.attn", "h.{i}.attn.c_proj", "h.{i}.ln_2", "h.{i}.mlp.c_fc", "h.{i}.mlp.gelu", "h.{i}.mlp.c_proj",
"h.{i}.out", "ln_f", "logits" — and the gradient of each under "d" + name ("dh.{i}.attn.c_attn", "dlogits", ...,
and "dh.{i}.in", the gradient reaching block i's input). A linear's output is recorded under its module name and its
dy under "d" + that; LINEAR_INPUTS names its input x, so G = xᵀ dy can be rebuilt from a record
(gradient_from_record).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..backend import find_nonfinite, to_numpy
from ..errors import MiniftError
from ..optim import check_lr

DEFAULT_LR = 1e-2          # η of the lens's SGD step (cos, shares and identities do not depend on it)


@dataclass
class InspectConfig:
    """`minift inspect`'s own settings (the CLI reads their defaults from here; the adapters are LoRAConfig's), each
    checked when the config is made."""
    steps: int = 20               # LoRA training steps before the lens looks, so that B ≠ 0 (0: look at init)
    train_lr: float = 3e-3        # their AdamW learning rate
    batch: int = 8                # the rows of each batch
    lr: float = DEFAULT_LR        # η of the SGD step the lens shows

    def __post_init__(self):
        if self.steps < 0:
            raise MiniftError(f"steps={self.steps} (--steps) must be >= 0")
        if self.batch < 1:
            raise MiniftError(f"batch={self.batch} (--batch) must be positive")
        check_lr(self.train_lr, "train_lr", " (--train-lr)")
        check_lr(self.lr, "lr", " (--lr)")
CORNER = (4, 6)            # rows, columns of a matrix shown by the --module detail

# linear module (suffix) -> the record name of its input x; its output is recorded under the module's own name and
# the gradient dy of that output under "d" + it ("h.0.attn.c_attn" -> x "h.0.ln_1", dy "dh.0.attn.c_attn")
LINEAR_INPUTS = {"attn.c_attn": "ln_1", "attn.c_proj": "attn", "mlp.c_fc": "ln_2", "mlp.c_proj": "mlp.gelu"}


# ---- the report ----------------------------------------------------------------------------------------------------

@dataclass
class LensRow:
    """The numbers of one adapted matrix (module "h.0.attn.c_attn"); norms are Frobenius norms."""
    module: str
    shape: tuple               # (I, O) of W, minift's layout
    g_norm: float              # ‖G‖
    g_rank: int                # numerical rank of G (singular values above σ_max · max(I, O) · eps of the dtype)
    g_erank: float             # effective rank of G (exp of the entropy of σ/Σσ, as analysis.effective_rank)
    dA_norm: float             # ‖dA‖
    dB_norm: float             # ‖dB‖
    dA_err: float              # max |dA − s Bᵀ Gᵀ| / max |s Bᵀ Gᵀ| (0 when both are 0)
    dB_err: float              # max |dB − s Gᵀ Aᵀ| / max |s Gᵀ Aᵀ|
    delta_norm: float          # ‖ΔW_step‖, the exact change of W + ΔW by one SGD step of learning rate η
    delta_first_norm: float    # ‖ΔW₁‖, its first-order part
    second_order_gap: float    # ‖ΔW_step − ΔW₁‖ / ‖ΔW_step‖ (= η² s ‖dAᵀ dBᵀ‖ / ‖ΔW_step‖; 0 at init)
    step_ratio: float          # ‖ΔW_step‖ / ‖η G‖: LoRA's step size relative to full fine-tuning's SGD step
    cos_first: float           # cos(ΔW₁, −G)
    cos_exact: float           # cos(ΔW_step, −G)
    share_span: float          # ‖P_in G P_out‖ / ‖G‖
    share_tangent: float       # ‖G − (1 − P_in) G (1 − P_out)‖ / ‖G‖
    share_best_r: float        # ‖G_R‖ / ‖G‖
    share_best_2r: float       # ‖G_2R‖ / ‖G‖ (the bound for the tangent share)
    b_zero: bool               # B = 0 (LoRA at init): dA = 0 and the step moves only B


@dataclass
class LensReport:
    """What lens() returns: one LensRow per adapted matrix, in model order, and the tensors behind them.

    tensors[module] is a dict of host NumPy arrays in minift's layout:
        "G"      [I, O]  full fine-tuning's gradient of W at W + ΔW        (the model's dtype)
        "dA"     [R, I]  LoRA's gradient of A;  "dB" [O, R] of B            (the model's dtype)
        "A"      [R, I], "B" [O, R]  the factors the step starts from       (copies, the model's dtype)
        "delta_exact"        [I, O]  ΔW_step = s · (A'ᵀ B'ᵀ − Aᵀ Bᵀ)       (float64)
        "delta_first_order"  [I, O]  ΔW₁ = −η s (dAᵀ Bᵀ + Aᵀ dBᵀ)          (float64)
    Transpose the [I, O] ones for PEFT's [O, I] layout.
    overall: the same measures over all adapted matrices taken together (one long vector each).
    """
    rows: list
    tensors: dict
    loss: float
    lr: float
    scale: float
    r: int
    dtype: str
    batch_shape: tuple         # (B, T) of input_ids
    overall: dict = field(default_factory=dict)

    @property
    def at_init(self) -> bool:
        """True when B = 0 in every adapted matrix (LoRA as attached: dA = 0, the first step moves only B)."""
        return all(row.b_zero for row in self.rows)

    def row(self, module: str) -> LensRow:
        for row in self.rows:
            if row.module == module:
                return row
        raise MiniftError(f"module {module!r} is not adapted here; adapted: {[r.module for r in self.rows][:4]}...")

    def to_dict(self) -> dict:
        """The numbers (not the tensors), JSON-able."""
        return dict(loss=self.loss, lr=self.lr, scale=self.scale, r=self.r, dtype=self.dtype,
                    batch_shape=list(self.batch_shape), at_init=self.at_init, overall=self.overall,
                    rows=[{**asdict(row), "shape": list(row.shape)} for row in self.rows])


# ---- one backward, both methods' gradients ------------------------------------------------------------------------

def _check_inputs(model, lora, batch, lr):
    if getattr(lora, "model", None) is not model:
        raise MiniftError("lora must be the handle attach_lora returned for this model")
    adapters = lora.adapters                                           # raises if detached
    if lora.config.use_dora:
        raise MiniftError("the lens explains plain LoRA; DoRA's gradients are not these projections of G "
                          "(see minift/lora/dora.py)")
    if lora.config.quant is not None:
        raise MiniftError("the lens explains plain LoRA on a float base: its full fine-tuning twin needs G = xᵀ dy "
                          "for each W, which QLoRA's 4-bit base has none of; attach LoRA without quant to look")
    if lora.merged:
        raise MiniftError("the adapters are merged: call lora.unmerge() before looking through the lens")
    if not isinstance(batch, dict) or "input_ids" not in batch or "targets" not in batch:
        raise MiniftError("batch must be a dict with 'input_ids' and 'targets' (and optionally 'attention_mask'), "
                          "as a source's next_batch() returns")
    check_lr(lr)
    return adapters


def full_and_lora_grads(model, lora, batch):
    """(loss, grads) of one backward of the LoRA-attached model that returns BOTH dA, dB for every adapter and dW
    for every adapted W: full fine-tuning's gradient G, at the point LoRA is at, from the same dy.

    Why unfreezing W gives G: the adapted linear computes with W_eff = W + ΔW, and the loss depends on W only
    through W_eff (∂W_eff/∂W = identity), so dL/dW = dL/dW_eff = G — exactly the gradient full fine-tuning of the
    merged model would see. The model is left as it was: frozen set, adapter modes and record are restored even if
    the backward fails, and no parameter is written (loss_and_grads only reads them).
    """
    adapters = lora.adapters
    unfrozen = {m + ".weight" for m in adapters} & model.frozen       # only what is frozen now, to put back exactly
    modes, record = {m: a.training for m, a in adapters.items()}, model.record
    try:
        # W_eff = W + ΔW and the loss sees W only through W_eff, so dL/dW = dL/dW_eff = G: unfreeze W for this pass
        model.frozen -= unfrozen                                       # in place: the same set object, restored below
        for a in adapters.values():
            a.training = False                                         # adapter dropout off (no rng is drawn either)
        return model.loss_and_grads(**batch)                           # rng=None: the model's dropout is off too
    finally:
        model.frozen |= unfrozen
        for m, a in adapters.items():
            a.training = modes[m]
        model.record = record


# ---- the measures of one matrix -----------------------------------------------------------------------------------

def _f64(a) -> np.ndarray:
    return np.asarray(to_numpy(a), dtype=np.float64)


def module_spectra(report, module: str) -> dict:
    """The top 2r singular values of one matrix's G, exact ΔW and first-order ΔW (`minift inspect --module --json`)."""
    t = report.tensors[module]
    return {key: np.linalg.svd(_f64(t[name]), compute_uv=False)[:2 * report.r].tolist()
            for key, name in (("sv_G", "G"), ("sv_delta_exact", "delta_exact"),
                              ("sv_delta_first_order", "delta_first_order"))}


def _rel_err(x, ref) -> float:
    """max |x − ref| / max |ref|; the absolute error when ref = 0 (at init dA and its expression are both 0)."""
    err = float(np.max(np.abs(x - ref))) if x.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def _cos(a, b) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else 0.0


def _basis(M) -> np.ndarray:
    """An orthonormal basis of the column space of M [n, k], as [n, rank] (rank 0 for M = 0)."""
    U, S, _ = np.linalg.svd(M, full_matrices=False)                    # (n, k), (k,)
    tol = S[0] * max(M.shape) * np.finfo(np.float64).eps if S.size and S[0] > 0 else np.inf
    return U[:, S > tol]                                               # (n, rank)


def lora_step(A, B, dA, dB, s, lr):
    """(exact, first order) change of the effective weight by one SGD step on A, B, both [I, O] in float64:
    s · ((A − η dA)ᵀ (B − η dB)ᵀ − Aᵀ Bᵀ), and −η s (dAᵀ Bᵀ + Aᵀ dBᵀ). PEFT's [O, I] ones are the transposes."""
    A, B, dA, dB = _f64(A), _f64(B), _f64(dA), _f64(dB)
    A2, B2 = A - lr * dA, B - lr * dB                                  # (R, I), (O, R) as optim.SGD computes them
    exact = s * (A2.T @ B2.T - A.T @ B.T)                              # (I, O)
    first = -lr * s * (dA.T @ B.T + A.T @ dB.T)                        # (I, O)
    return exact, first


def _shares(G, A, B, sv, r):
    """(span, tangent, best-r, best-2r) shares of ‖G‖, see the module docstring. G [I, O], A [R, I], B [O, R]."""
    g2 = float((sv ** 2).sum())
    if g2 == 0:
        return 0.0, 0.0, 0.0, 0.0
    Qi, Qo = _basis(A.T), _basis(B)                                    # (I, rank A), (O, rank B)
    in_part = float(((Qi.T @ G) ** 2).sum())                           # ‖P_in G‖²
    out_part = float(((G @ Qo) ** 2).sum())                            # ‖G P_out‖²
    both = float(((Qi.T @ G @ Qo) ** 2).sum())                         # ‖P_in G P_out‖²
    tangent = in_part + out_part - both                                # ‖P_in G + (1 − P_in) G P_out‖²

    def best(k):                                                       # ‖G_k‖ / ‖G‖ (Eckart–Young)
        return math.sqrt(float((sv[:k] ** 2).sum()) / g2)
    return math.sqrt(both / g2), math.sqrt(max(tangent, 0.0) / g2), best(r), best(2 * r)


def _spectrum_numbers(G, eps):
    """(singular values, numerical rank, effective rank) of G."""
    sv = np.linalg.svd(G, compute_uv=False)                            # (min(I, O),)
    if sv.size == 0 or sv[0] == 0:
        return sv, 0, 0.0
    rank = int((sv > sv[0] * max(G.shape) * eps).sum())
    p = sv[sv > 0] / sv.sum()
    return sv, rank, float(math.exp(-(p * np.log(p)).sum()))          # Roy & Vetterli, as analysis.effective_rank


def measure(module, t, s, r, lr, eps) -> LensRow:
    """The LensRow of one matrix from its tensors t (a LensReport.tensors entry)."""
    G, A, B, dA, dB = (_f64(t[k]) for k in ("G", "A", "B", "dA", "dB"))
    exact, first = t["delta_exact"], t["delta_first_order"]
    sv, rank, erank = _spectrum_numbers(G, eps)
    span, tangent, best_r, best_2r = _shares(G, A, B, sv, r)
    dnorm, gnorm = float(np.linalg.norm(exact)), float(np.linalg.norm(G))
    return LensRow(
        module=module, shape=tuple(G.shape), g_norm=gnorm, g_rank=rank, g_erank=erank,
        dA_norm=float(np.linalg.norm(dA)), dB_norm=float(np.linalg.norm(dB)),
        dA_err=_rel_err(dA, s * B.T @ G.T), dB_err=_rel_err(dB, s * G.T @ A.T),
        delta_norm=dnorm, delta_first_norm=float(np.linalg.norm(first)),
        second_order_gap=float(np.linalg.norm(exact - first)) / dnorm if dnorm > 0 else 0.0,
        step_ratio=dnorm / (lr * gnorm) if gnorm > 0 else 0.0,
        cos_first=_cos(first, -G), cos_exact=_cos(exact, -G),
        share_span=span, share_tangent=tangent, share_best_r=best_r, share_best_2r=best_2r,
        b_zero=not B.any())


def _overall(rows, tensors) -> dict:
    """All adapted matrices as one: each method's update as one long vector (cosines), shares of the total ‖G‖."""
    g2 = sum(row.g_norm ** 2 for row in rows)                          # ‖G‖² over all matrices

    def cos(key, norm2):                                               # cos(update, −G), update = tensors[·][key]
        dot = sum(float((tensors[row.module][key] * -_f64(tensors[row.module]["G"])).sum()) for row in rows)
        return dot / math.sqrt(norm2 * g2) if norm2 * g2 > 0 else 0.0

    def share(key):                                                    # √(Σ (share · ‖G‖)²) / ‖G‖
        return math.sqrt(sum((getattr(row, key) * row.g_norm) ** 2 for row in rows) / g2) if g2 > 0 else 0.0

    e2 = sum(row.delta_norm ** 2 for row in rows)
    return dict(g_norm=math.sqrt(g2), delta_norm=math.sqrt(e2),
                cos_first=cos("delta_first_order", sum(row.delta_first_norm ** 2 for row in rows)),
                cos_exact=cos("delta_exact", e2),
                share_span=share("share_span"), share_tangent=share("share_tangent"),
                share_best_r=share("share_best_r"), share_best_2r=share("share_best_2r"),
                max_identity_err=max((max(row.dA_err, row.dB_err) for row in rows), default=0.0))


# ---- the lens ------------------------------------------------------------------------------------------------------

def lens(model, lora, batch: dict, lr: float = DEFAULT_LR) -> LensReport:
    """Full fine-tuning and LoRA on one batch, side by side, for every adapted matrix of `lora` on `model`.

    batch: a dict as a source's next_batch() gives (input_ids, targets, optional attention_mask).
    lr:    η of the plain SGD step whose effect on W + ΔW is shown (only ‖ΔW_step‖ and the second-order gap
           depend on it). The model is not changed: parameters, frozen set, adapter modes all stay as they were.
    """
    adapters = _check_inputs(model, lora, batch, lr)
    loss, grads = full_and_lora_grads(model, lora, batch)
    if (bad := find_nonfinite(loss, grads)) is not None:               # no spectrum of NaNs to show
        raise MiniftError(f"the lens: {bad} is not finite on this batch (loss={loss}); the model's weights hold "
                          "values too large to compute with (a fine-tune that diverged?): nothing to measure")
    s, r, eps = lora.config.scale, lora.config.r, float(np.finfo(model.dtype).eps)
    tensors, rows = {}, []
    for m, a in adapters.items():
        t = {"G": to_numpy(grads[m + ".weight"]),                                      # (I, O)
             "dA": to_numpy(grads[m + ".lora_A.weight"]), "dB": to_numpy(grads[m + ".lora_B.weight"]),
             "A": np.array(to_numpy(a.A), copy=True), "B": np.array(to_numpy(a.B), copy=True)}
        t["delta_exact"], t["delta_first_order"] = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, lr)
        tensors[m] = t
        rows.append(measure(m, t, s, r, lr, eps))
    return LensReport(rows=rows, tensors=tensors, loss=loss, lr=float(lr), scale=s, r=r, dtype=str(model.dtype),
                      batch_shape=tuple(np.shape(batch["input_ids"])), overall=_overall(rows, tensors))


# ---- the record: any named tensor of the pass ---------------------------------------------------------------------

def activations(model, batch: dict) -> dict:
    """name -> host array of every activation and "d" + name gradient of one loss_and_grads(record=True) pass
    (names: see the module docstring). Whatever trains in the model's current state (full fine-tuning, LoRA, ...)
    is what the pass computes; model.record keeps the device arrays afterwards."""
    if not isinstance(batch, dict) or "input_ids" not in batch or "targets" not in batch:
        raise MiniftError("batch must be a dict with 'input_ids' and 'targets' (and optionally 'attention_mask')")
    model.loss_and_grads(**batch, record=True)
    return {name: np.array(to_numpy(t), copy=True) for name, t in model.record.items()}


def gradient_from_record(record: dict, module: str) -> np.ndarray:
    """G = xᵀ dy [I, O] of the linear `module` ("h.0.mlp.c_fc"), rebuilt from a record: its input x and the gradient
    dy of its output, both (B, T, ·) flattened to N rows. Equals full fine-tuning's dW (with no dropout)."""
    block, _, suffix = module.partition(".")[2].partition(".")
    if suffix not in LINEAR_INPUTS or not block.isdigit():
        raise MiniftError(f"module {module!r} is not a linear of a block (h.{{i}}.{'|'.join(LINEAR_INPUTS)})")
    x, dy = _f64(record[f"h.{block}.{LINEAR_INPUTS[suffix]}"]), _f64(record["d" + module])
    return x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])     # (I, N) @ (N, O)


# ---- printing ------------------------------------------------------------------------------------------------------

COLUMNS = [
    ("module", "the adapted matrix W [in, out]"),
    ("‖G‖", "norm of G = xᵀdy, the gradient full fine-tuning applies to W (taken at W + ΔW)"),
    ("erank", "effective rank of G (exp entropy of its singular values); its numerical rank is usually full"),
    ("‖dA‖", "norm of LoRA's gradient of A [r, in]"),
    ("‖dB‖", "norm of LoRA's gradient of B [out, r]"),
    ("id.err", "max relative error of dA vs s·BᵀGᵀ and dB vs s·GᵀAᵀ (rounding: ~1e-7..1e-6 float32, ~1e-15 float64)"),
    ("cos", "cos(ΔW₁, −G): how much of full fine-tuning's descent direction LoRA's first-order step follows (≥ 0)"),
    ("span", "‖P_in G P_out‖/‖G‖: share of G inside the row space of A × column space of B, where ΔW lives"),
    ("tangent", "share of G that changing A and B can reach to first order (≥ cos; at init only via B: ‖P_in G‖)"),
    ("best-r", "‖G_r‖/‖G‖: the most any rank-r subspace could hold (G's top-r SVD; ≥ span)"),
    ("‖ΔW‖", "norm of the exact change of W + ΔW by one SGD step of learning rate η on A and B"),
    ("/η‖G‖", "‖ΔW‖ / ‖ηG‖: LoRA's step size relative to full fine-tuning's SGD step"),
]
_ROW_FMT = "{:<18} {:>8} {:>6} {:>8} {:>8} {:>7} {:>6} {:>6} {:>7} {:>6} {:>8} {:>7}"


def _state_line(report) -> str:
    if report.at_init:
        return ("state: B = 0 in every matrix (LoRA at init): dA = s·BᵀGᵀ = 0, so this step moves only B, "
                "ΔW = −η s² AᵀA G (exact = first order); span = 0 since ΔW = 0 has no subspace yet")
    if any(row.b_zero for row in report.rows):
        return "state: mixed: B = 0 in some matrices (dA = 0 there), B ≠ 0 in others"
    return ("state: B ≠ 0 in every matrix (LoRA after training): both factors move; exact and first-order steps "
            "differ by η² s dAᵀdBᵀ")


def format_lens(report: LensReport) -> str:
    """The side-by-side table: a header explaining each column, one row per matrix, and all matrices together."""
    B, T = report.batch_shape
    lines = [f"lens: one batch of {B}×{T} tokens, loss {report.loss:.4f}, {report.dtype}; LoRA r={report.r}, "
             f"s={report.scale:g}; one plain SGD step with η={report.lr:g} (layout [in, out])",
             _state_line(report), "columns:"]
    lines += [f"  {name:<8} {text}" for name, text in COLUMNS]
    lines += ["", _ROW_FMT.format(*(name for name, _ in COLUMNS))]
    for w in report.rows:
        lines.append(_ROW_FMT.format(
            w.module, f"{w.g_norm:.2e}", f"{w.g_erank:.1f}", f"{w.dA_norm:.2e}", f"{w.dB_norm:.2e}",
            f"{max(w.dA_err, w.dB_err):.0e}", f"{w.cos_first:.3f}", f"{w.share_span:.3f}", f"{w.share_tangent:.3f}",
            f"{w.share_best_r:.3f}", f"{w.delta_norm:.2e}", f"{w.step_ratio:.3f}"))
    o = report.overall
    ratio = o["delta_norm"] / (report.lr * o["g_norm"]) if o["g_norm"] > 0 else 0.0
    lines.append(_ROW_FMT.format(
        "all matrices", f"{o['g_norm']:.2e}", "", "", "", f"{o['max_identity_err']:.0e}", f"{o['cos_first']:.3f}",
        f"{o['share_span']:.3f}", f"{o['share_tangent']:.3f}", f"{o['share_best_r']:.3f}", f"{o['delta_norm']:.2e}",
        f"{ratio:.3f}"))
    lines.append("(the step shown is plain SGD's; AdamW, which minift trains with, rescales each coordinate)")
    return "\n".join(lines)


def _corner(name, M, rows=CORNER[0], cols=CORNER[1]) -> list:
    M = np.asarray(M, dtype=np.float64)
    out = [f"  {name} {list(M.shape)}, first {min(rows, M.shape[0])}×{min(cols, M.shape[1])}:"]
    out += ["    " + " ".join(f"{v:+.3e}" for v in row[:cols]) for row in M[:rows]]
    return out


def format_module(report: LensReport, module: str) -> str:
    """One matrix in detail: corners of G, dA, dB beside their expressions through G, and singular values of the
    full fine-tuning step η G against those of LoRA's step."""
    w, t, s, r = report.row(module), report.tensors[module], report.scale, report.r
    G, A, B = _f64(t["G"]), _f64(t["A"]), _f64(t["B"])
    I, O = w.shape
    lines = [f"{module}: W [{I}, {O}] (minift's [in, out]), A [{r}, {I}], B [{O}, {r}], s = {s:g}, "
             f"B {'= 0' if w.b_zero else '≠ 0'}",
             f"  G: ‖G‖ = {w.g_norm:.4e}, numerical rank {w.g_rank} of {min(I, O)}, effective rank {w.g_erank:.1f}"]
    lines += _corner("G = xᵀ dy", G)
    lines += _corner("dA", t["dA"]) + _corner("s·BᵀGᵀ", s * B.T @ G.T)
    lines += [f"  relative error dA: {w.dA_err:.1e}"]
    lines += _corner("dB", t["dB"], cols=r) + _corner("s·GᵀAᵀ", s * G.T @ A.T, cols=r)
    lines += [f"  relative error dB: {w.dB_err:.1e}"]
    k = 2 * r

    def sv(M):                                                         # the top 2r singular values, as text
        return " ".join(f"{v:.3e}" for v in np.linalg.svd(M, compute_uv=False)[:k])
    lines += [f"  singular values (top {k}):",
              f"    η G (full FT step)      {sv(report.lr * G)}",
              f"    ΔW_step (LoRA, exact)   {sv(t['delta_exact'])}",
              f"    ΔW₁ (LoRA, 1st order)   {sv(t['delta_first_order'])}",
              f"  cos(ΔW₁, −G) = {w.cos_first:.4f}, cos(ΔW_step, −G) = {w.cos_exact:.4f}; "
              f"‖ΔW_step − ΔW₁‖/‖ΔW_step‖ = {w.second_order_gap:.2e} (η² term)",
              f"  shares of ‖G‖: span {w.share_span:.4f} ≤ best-r {w.share_best_r:.4f};  "
              f"tangent {w.share_tangent:.4f} ≤ best-2r {w.share_best_2r:.4f}"]
    return "\n".join(lines)


__all__ = ["LensReport", "LensRow", "LINEAR_INPUTS", "activations", "module_spectra", "format_lens",
           "format_module", "full_and_lora_grads", "gradient_from_record", "lens", "lora_step"]
