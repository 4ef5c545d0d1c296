# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Core 04 · One batch through both methods, tensor by tensor
#
# **What you will see.** One batch of 16 reviews, one backward pass. For each of the 16 matrices LoRA adapts, full
# fine-tuning's gradient $G$ is printed beside LoRA's $dA$ and $dB$, and these beside $s\,B^\top G^\top$ and
# $s\,G^\top A^\top$: the same digits. LoRA's $dA$ is full fine-tuning's $G$ seen through $B$; its $dB$ is $G$ seen
# through $A$. Then LoRA's first step, where $dA$ is exactly zero; a LoRA step that changes every entry of $W$ yet has
# rank $2r$; and the lens, `minift inspect`'s table: how much of full fine-tuning's direction LoRA follows, matrix by
# matrix, and the one matmul it skips.
#
# **Article:** §4.1 完全微调与LoRA的异同点 (*Similarities and differences between full fine-tuning and LoRA*):
#
# > 完全微调涉及对预训练模型的所有参数进行更新。…… 相比之下,LoRA仅对预训练模型的部分参数进行微调,通过引入低秩矩阵
# > ( A ) 和 ( B ),使得新的权重矩阵 ( W' ) 可以表示为 ( W' = W + AB^T )。
# >
# > *Full fine-tuning updates all of the pretrained model's parameters. … LoRA, by contrast, fine-tunes only part
# > of them: it introduces low-rank matrices A and B so that the new weight is W' = W + ABᵀ.*
#
# One correction (the LoRA paper, Hu et al. 2021, arXiv 2106.09685): LoRA fine-tunes *none* of the pretrained
# parameters. $W$ stays frozen and the new $A$, $B$ train, yet every entry of the effective weight moves.
#
# **You will learn**
# 1. to get $G$, $dA$ and $dB$ from one backward, and why that $G$ is full fine-tuning's gradient;
# 2. the identities $dB = s\,G^\top A^\top$ and $dA = s\,B^\top G^\top$;
# 3. what a LoRA step does to $W$: $-\eta s^2(A^\top A\,G + G\,BB^\top)$, rank $\le 2r$;
# 4. to read the lens: the cosine with $-G$, and the shares of $G$ LoRA can reach;
# 5. which matmuls each method runs, and how many parameters each updates.
#
# **中文:** [zh/04_one_batch_both_methods.py](zh/04_one_batch_both_methods.py).
#
# **Time:** about 15 minutes to read; about 6 s to run in normal mode and about 2 s in fast mode (`MINIFT_FAST=1`),
# measured on an idle 2-core Intel Xeon with `OPENBLAS_NUM_THREADS=1`.
#
# **Prerequisites:** core 01 (a linear's backward), core 03 (LoRA: $s = \alpha/r$, $A$ $[r, \text{in}]$,
# $B$ $[\text{out}, r]$, $B = 0$ at init). Core 01–03 wrote a gradient as $\bar y$; here we use the names minift's
# code and printouts use: $dy = \bar y$, $dA = \bar A$, $dB = \bar B$. **Going further:**
# [tutorial 08](../08_one_batch_both_methods.py), the same batch in more depth.

# %%
import contextlib
import io

import matplotlib.pyplot as plt
import numpy as np

from minift import LoRAConfig, attach_lora
from minift.app.cli import main as minift_main
from minift.app.tutorial import FAST, exercise, pick, show
from minift.base import load_base
from minift.data import load_task, task_source
from minift.measure.bench import count_flops
from minift.measure.lens import format_lens, format_module, full_and_lora_grads, lens, lora_step
from minift.methods import task_head
from minift.optim import SGD
from minift.training.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode")
R, ALPHA = 8, 64                 # rank and α: s = α/r = 8 (core 03)
STEPS = pick(20, 3)              # LoRA warm-up steps, so that B ≠ 0
ETA = 1e-2                       # η of the plain SGD step we look at (the lens's default)

# %% [markdown]
# ## 1. One backward, two gradients
#
# The shipped base in float64, the sentiment task's head, LoRA ($r = 8$, $\alpha = 64$) on all four linears of the
# 4 blocks, and a few AdamW steps so that $B \ne 0$. Then the **next batch**: for every adapted $W$, what gradient
# would full fine-tuning apply, and what do $A$ and $B$ get?
#
# An adapted linear computes with $W_\text{eff} = W + s\,A^\top B^\top$ (minift's layout $[\text{in},
# \text{out}]$, $y = xW$; the article's $AB^\top$, core 03). The loss sees $W$ only through $W_\text{eff}$, and
# $\partial W_\text{eff}/\partial W$ is the identity, so
#
# $$G \;=\; \frac{\partial L}{\partial W} \;=\; \frac{\partial L}{\partial W_\text{eff}} \;=\; x^\top dy
# \quad [I, O],$$
#
# with $x$ $[N, I]$ the linear's input and $dy$ $[N, O]$ its output's gradient over the batch's $N$ token positions.
# `full_and_lora_grads` unfreezes $W$ for one backward, so each adapted linear returns $G$, $dA$ and $dB$ from the
# same $dy$.

# %%
base, tok = load_base(dtype="float64")                   # float64: the identities below hold to ~1e-15
split = load_task("sentiment", "train")
model = base.to()
task_head(model, split, seed=0)                          # the classification head, as `minift finetune` adds it
plain = model.to()                                       # base + head, no adapters (section 3)
lora = attach_lora(model, LoRAConfig(r=R, alpha=ALPHA, targets="all-linear"), seed=0)
source = task_source(split, tok, max_len=128, batch_size=16, seed=0)
# workers=1: the whole batch in one thread, so every machine prints the same numbers
train(model, source, TrainConfig(steps=STEPS, batch_size=16, lr=1e-3, warmup=0, schedule="constant", workers=1),
      progress=False)
batch = source.next_batch()                              # the one batch of this tutorial
Bsz, T = batch["input_ids"].shape
N = Bsz * T                                              # token positions (padding included)
loss, grads = full_and_lora_grads(model, lora, batch)
m0 = "h.0.attn.c_attn"
print(f"{len(lora.modules)} adapted matrices; this batch: {Bsz} reviews × {T} tokens, loss {loss:.4f}")
print(f"{m0}: W {model.params[m0 + '.weight'].shape} [in, out]; G {grads[m0 + '.weight'].shape}, "
      f"dA {grads[m0 + '.lora_A.weight'].shape} [r, in], dB {grads[m0 + '.lora_B.weight'].shape} [out, r]")

# %% [markdown]
# **Check.** (a) A plain copy with $W_\text{eff}$ written into $W$ (`lora.merged_model()`), nothing frozen, gives
# the same $dW$: $G$ is full fine-tuning's gradient. (b) The ordinary LoRA pass ($W$ frozen) returns bitwise the same
# $dA$, $dB$ and **no** gradient for any adapted $W$: its $x^\top dy$ is never computed (section 7).

# %%
full = lora.merged_model()                               # W + ΔW in a plain copy; everything trains
full_loss, full_grads = full.loss_and_grads(**batch)
lora_loss, lora_grads = model.loss_and_grads(**batch)    # the ordinary LoRA pass
err = max(np.abs(grads[m + ".weight"] - full_grads[m + ".weight"]).max()
          / np.abs(full_grads[m + ".weight"]).max() for m in lora.modules)
print(f"G vs the merged copy's dW: max relative error {err:.1e}")
print(f"full fine-tuning: {len(full_grads)} gradient tensors; LoRA: {len(lora_grads)} "
      f"({len(lora.params)} adapter tensors + the head), adapted W among them: "
      f"{sum(m + '.weight' in lora_grads for m in lora.modules)}")
assert abs(full_loss - loss) < 1e-12 and abs(lora_loss - loss) < 1e-12
assert err < 1e-9                                        # W + ΔW added once vs xW + branch: rounding ~1e-13
assert all(np.array_equal(grads[k], lora_grads[k]) for k in lora_grads)
assert set(lora_grads) == set(lora.params) | {"score.weight"}

# %% [markdown]
# ## 2. LoRA's gradients are $G$ seen through $A$ and $B$
#
# The adapted linear (dropout off) is $y = xW + b + s\,hB^\top$ with $h = xA^\top$ $[N, R]$. Apply the linear's
# backward rules (core 01) to each product, then use $x^\top dy = G$:
#
# $$dB = s\, dy^\top h = s\, (x^\top dy)^\top A^\top = s\, G^\top A^\top \quad [O, R],$$
#
# $$dA = s\,(dy\, B)^\top x = s\, B^\top (x^\top dy)^\top = s\, B^\top G^\top \quad [R, I].$$
#
# LoRA sees nothing but full fine-tuning's gradient: $dB$ is $G$ read through the $r$ input directions in $A$'s rows,
# $dA$ is $G$ read through the $r$ output directions in $B$'s columns. The rest of $G$ does not reach the adapter at
# this step. `lens` runs that backward and measures sections 2–5 for all 16 matrices; `format_module` shows one.

# %%
report = lens(model, lora, batch, lr=ETA)                # sections 2–5, every adapted matrix
s, r = report.scale, report.r
errs = {}
for m, t in report.tensors.items():
    G, A, B = t["G"], t["A"], t["B"]                     # (I, O), (R, I), (O, R)
    errs[m] = max(np.abs(t["dB"] - s * G.T @ A.T).max() / np.abs(t["dB"]).max(),     # dB = s Gᵀ Aᵀ
                  np.abs(t["dA"] - s * B.T @ G.T).max() / np.abs(t["dA"]).max())     # dA = s Bᵀ Gᵀ
print(f"s = α/r = {s:g}, r = {r}; worst relative error of the two identities over "
      f"{len(errs)} matrices: {max(errs.values()):.1e}")
print(format_module(report, m0).split("  singular values")[0])

# %% [markdown]
# The printout: a corner of $G$, then $dA$ above $s\,B^\top G^\top$ and $dB$ above $s\,G^\top A^\top$, digit for digit.
#
# **Check.** Both identities hold to $10^{-13}$ relative in every matrix: in float64 they only reorder the products
# of one backward.

# %%
assert max(errs.values()) < 1e-13
assert report.overall["max_identity_err"] < 1e-13        # the lens's own id.err column

# %% [markdown]
# ## 3. The very first step: $B = 0$, so $dA = 0$ and only $B$ moves
#
# At attach time $B = 0$ (core 03), and the identities give at once
#
# $$dA = s\,B^\top G^\top = 0, \qquad dB = s\,G^\top A^\top, \qquad
# \Delta W_\text{step} = s\,A^\top(-\eta\, dB)^\top = -\eta\, s^2 A^\top A\, G .$$
#
# The first step is full fine-tuning's $-\eta G$ seen through $A^\top A$: only the part of $G$ in the row space of
# $A$ survives. $A$ is random, so that is a random $r$-dimensional subspace of the $I$ input dimensions; on average it
# holds $r/I$ of $\lVert G\rVert^2$, a share of about $\sqrt{r/I}$ of $\lVert G\rVert$. The data has no say yet in
# which directions the first step can take. Fresh adapters on the plain copy, the same batch:

# %%
model0 = plain.to()
report0 = lens(model0, attach_lora(model0, LoRAConfig(r=R, alpha=ALPHA, targets="all-linear"), seed=0), batch,
               lr=ETA)
if FAST:
    print(SMOKE)
print(f"B = 0 in every adapter: {report0.at_init}")
print(f"{'module':<16} {'‖dA‖':>5} {'‖dB‖':>9} {'tangent':>8} {'√(r/I)':>7}")
for row in report0.rows:
    print(f"{row.module:<16} {row.dA_norm:>5.1f} {row.dB_norm:>9.2e} {row.share_tangent:>8.3f} "
          f"{np.sqrt(r / row.shape[0]):>7.3f}")

# %% [markdown]
# `tangent` is the share of $\lVert G\rVert$ a step can reach (section 5); at init it is
# $\lVert P_\text{in}G\rVert/\lVert G\rVert$, $P_\text{in}$ the projection onto $A$'s rows. Compare it with the
# $\sqrt{r/I}$ column as printed above: one batch's $G$ has a few dominant directions, so what a random subspace
# catches varies (by how much: tutorial 08, section 3).
#
# **Check.** Every $dA$ is exactly zero (not just small) and every $dB$ is not; the lens's step equals
# $-\eta s^2 A^\top A\,G$ to $10^{-12}$; each tangent share is within a factor 2.5 of $\sqrt{r/I}$.

# %%
for row in report0.rows:
    t = report0.tensors[row.module]
    assert row.b_zero and not t["dA"].any() and t["dB"].any()
    ref = -ETA * s ** 2 * t["A"].T @ t["A"] @ t["G"]                                # (I, O)
    assert np.abs(t["delta_exact"] - ref).max() <= 1e-12 * np.abs(ref).max(), row.module
    assert 0.4 < row.share_tangent / np.sqrt(r / row.shape[0]) < 2.5, row.module
assert report0.at_init and not report.at_init

# %% [markdown]
# ## 4. What one LoRA step does to $W$
#
# Full fine-tuning's SGD step is $-\eta G$. LoRA's moves $A_+ = A - \eta\,dA$ and $B_+ = B - \eta\,dB$, and the
# effective weight changes by
#
# $$\Delta W_\text{step} = s\,(A_+^\top B_+^\top - A^\top B^\top)
# = \underbrace{-\eta\, s\,(dA^\top B^\top + A^\top dB^\top)}_{\Delta W_1\ \text{(first order)}}
# \;+\; \eta^2 s\, dA^\top dB^\top .$$
#
# Substituting section 2's identities:
#
# $$\Delta W_1 = -\eta\, s^2\,(A^\top A\, G + G\, B B^\top).$$
#
# $G$ multiplied by $A^\top A$ on the input side and by $BB^\top$ on the output side. Each term has rank $\le r$, so
# the step has rank $\le 2r$, yet it is dense: every entry of $W_\text{eff}$ moves. We take the step for real
# (`minift.optim.SGD` on $A$ and $B$), read `lora.effective_weights()`, and put $A$, $B$ back.

# %%
saved = {k: v.copy() for k, v in lora.params.items()}
before = lora.effective_weights()
SGD(lora.params, lr=ETA, momentum=0.0).step(lora_grads)                           # A ← A − η dA, B ← B − η dB
moved = {k: v - before[k] for k, v in lora.effective_weights().items()}           # the real change of W_eff
for k, v in saved.items():
    lora.params[k][...] = v                                                       # put A and B back
row0, step0 = report.row(m0), report.tensors[m0]["delta_exact"]
if FAST:
    print(SMOKE)
print(f"{m0}: ‖ηG‖ = {ETA * row0.g_norm:.3e} (full fine-tuning's step), ‖ΔW_step‖ = {row0.delta_norm:.3e} "
      f"(LoRA's); second-order part {row0.second_order_gap:.1e} of LoRA's step")
print(f"  rank of ΔW_step: {np.linalg.matrix_rank(step0)} (2r = {2 * r}); entries that change: "
      f"{np.count_nonzero(step0):,} of {step0.size:,}")
sv_full = np.linalg.svd(ETA * report.tensors[m0]["G"], compute_uv=False)
sv_lora = np.linalg.svd(step0, compute_uv=False)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(np.arange(1, 41), sv_full[:40], "o-", ms=3, label="full fine-tuning step ηG")
ax.semilogy(np.arange(1, 41), np.maximum(sv_lora[:40], 1e-20), "s-", ms=3, label="LoRA step ΔW_step")
ax.axvline(2 * r + 0.5, color="gray", ls="--", lw=0.8)
ax.set_ylim(sv_full[39] / 100, 2 * max(sv_full[0], sv_lora[0]))
ax.set_xlabel("singular value index (dashed: 2r)")
ax.set_title(f"{m0}: singular values of one step")
ax.legend(fontsize=8)
show(fig, "core04_step_spectrum")

# %% [markdown]
# In the figure, full fine-tuning's step has a long tail of singular values; LoRA's drops to rounding level after
# $2r$. The second-order part is small at this $\eta$ (as printed above). And LoRA's step is *longer* than full
# fine-tuning's at the same $\eta$: $s^2 A^\top A$ and $s^2 BB^\top$ stretch what they keep, one reason LoRA gets its
# own learning rate.
#
# **Check.** In every matrix: the real SGD step changed $W_\text{eff}$ by the lens's `delta_exact` to $10^{-12}$;
# $\Delta W_1 = -\eta s^2 (A^\top A G + G BB^\top)$ to $10^{-12}$; rank exactly $2r$, no zero entry; and
# $\lVert\Delta W_\text{step}\rVert > \lVert\eta G\rVert$ (the lens's `/η‖G‖` column, section 5).

# %%
for m, t in report.tensors.items():
    real = moved[m + ".weight"]
    assert np.abs(real - t["delta_exact"]).max() <= 1e-12 * np.abs(real).max(), m
    ref = -ETA * s ** 2 * (t["A"].T @ t["A"] @ t["G"] + t["G"] @ t["B"] @ t["B"].T)
    assert np.abs(t["delta_first_order"] - ref).max() <= 1e-12 * np.abs(ref).max(), m
    assert np.linalg.matrix_rank(t["delta_exact"]) == 2 * r and np.count_nonzero(t["delta_exact"]) == real.size, m
    assert report.row(m).step_ratio > 1, m                                        # ‖ΔW_step‖ > ‖η G‖
assert all(np.array_equal(v, saved[k]) for k, v in lora.params.items())            # A and B restored

# %% [markdown]
# ## 5. The lens: direction and reach, matrix by matrix
#
# To first order a step $\Delta W$ changes the batch loss by $\langle G, \Delta W\rangle$. Full fine-tuning's step
# gives $-\eta\lVert G\rVert^2$, steepest descent. LoRA's gives
#
# $$\langle G, \Delta W_1\rangle = -\eta\, s^2\,\big(\lVert A G\rVert^2 + \lVert G B\rVert^2\big) \le 0,
# \qquad \cos(\Delta W_1, -G) \ge 0 .$$
#
# A plain-SGD LoRA step never points uphill on the batch (to first order), but follows full fine-tuning's
# direction only as far as the cosine says (full fine-tuning's own is 1). Three shares of $\lVert G\rVert$ say why:
#
# - **span** $=\lVert P_\text{in}\,G\,P_\text{out}\rVert/\lVert G\rVert$: the part of $G$ inside the subspaces where
#   $\Delta W = s\,A^\top B^\top$ lives now ($P_\text{out}$ projects onto $B$'s columns);
# - **tangent** $=\lVert G - (1 - P_\text{in})\,G\,(1 - P_\text{out})\rVert/\lVert G\rVert$: the part any small change
#   of $A$ and $B$ can reach; $\Delta W_1$ lies there, so $\cos \le$ tangent;
# - **best-$r$** $=\lVert G_r\rVert/\lVert G\rVert$, $G_r$ the top-$r$ truncated SVD: by Eckart–Young no rank-$r$
#   update holds more, so span $\le$ best-$r$ (and tangent $\le$ best-$2r$).
#
# `format_lens` prints them for every matrix, with a legend: `minift inspect`'s table.

# %%
if FAST:
    print(SMOKE)
print(format_lens(report))

# %% [markdown]
# Read it row by row, as printed above. **best-r** is high: one batch's $G$ has a few dominant directions (small
# `erank`), so a rank-$r$ update *could* carry most of it. **span** is low: the subspace LoRA built during warm-up
# holds little of *this* batch's gradient. **tangent** is higher, since either factor can turn, and **cos** sits
# below it. Here §4.1's "performance" difference starts: full fine-tuning follows $G$; LoRA follows $G$'s shadow on
# $2r$ directions chosen by $A$'s random init and the previous batches.
#
# **Check.** The cosine from the formula equals the lens's to $10^{-10}$; in every matrix $0 \le \cos \le$ tangent
# $\le$ best-$2r$ and span $\le$ best-$r$; over all matrices span < tangent < best-$r$; and one real SGD step at
# $\eta = 10^{-3}$ lowers the batch loss, for both methods, by its prediction $\langle G, \Delta W\rangle$ within 5%.

# %%
for row in report.rows:
    t = report.tensors[row.module]
    G, A, B = t["G"], t["A"], t["B"]
    cos = (ETA * s ** 2 * (np.linalg.norm(A @ G) ** 2 + np.linalg.norm(G @ B) ** 2)
           / (np.linalg.norm(t["delta_first_order"]) * np.linalg.norm(G)))
    assert abs(cos - row.cos_first) < 1e-10, row.module
    assert 0 <= row.cos_first <= row.share_tangent + 1e-12 <= row.share_best_2r + 2e-12, row.module
    assert row.share_span <= row.share_best_r + 1e-12, row.module
o = report.overall
assert o["share_span"] < o["share_tangent"] < o["share_best_r"]                      # the reading above
eta, predicted = 1e-3, {"full": 0.0, "lora": 0.0}
full_step = full.to()
for m, t in report.tensors.items():
    full_step.params[m + ".weight"][...] -= eta * t["G"]                            # full FT: W ← W − η G
    predicted["full"] -= eta * np.linalg.norm(t["G"]) ** 2
    predicted["lora"] += float((t["G"] * lora_step(t["A"], t["B"], t["dA"], t["dB"], s, eta)[0]).sum())
SGD(lora.params, lr=eta, momentum=0.0).step({k: lora_grads[k] for k in lora.params})
actual = {"full": full_step.loss(**batch) - loss, "lora": model.loss(**batch) - loss}
for k, v in saved.items():
    lora.params[k][...] = v                                                         # put A and B back
if FAST:
    print(SMOKE)
for k in ("full", "lora"):
    print(f"{k:>4}: loss change predicted {predicted[k]:+.3e}, measured {actual[k]:+.3e}")
    assert actual[k] < 0 and abs(actual[k] / predicted[k] - 1) < 0.05, (k, actual, predicted)

# %% [markdown]
# ## 6. The same table from the command line
#
# Given this tutorial's settings, `minift inspect` loads the same base, adds the same head, trains the same warm-up
# steps, takes the same next batch and prints the same table:
#
# ```bash
# minift inspect --rank 8 --alpha 64 --dtype float64 --steps 20 --train-lr 1e-3 --batch 16 --module h.0.attn.c_attn
# ```
#
# (`--module` adds section 2's detail; its defaults are float32, $\alpha = 2r$, a batch of 8.) **Check:** its table
# is identical, character for character, to `format_lens(report)` above.

# %%
argv = ["inspect", "--rank", str(R), "--alpha", str(ALPHA), "--dtype", "float64", "--steps", str(STEPS),
        "--train-lr", "1e-3", "--batch", "16", "--quiet"]
with contextlib.redirect_stdout(io.StringIO()) as buf:
    rc = minift_main(argv)
first, _, table = buf.getvalue().partition("\n")
print("$ minift " + " ".join(argv))
print(first)
print(f"exit status {rc}; the table is identical to format_lens(report): {table.rstrip() == format_lens(report)}")
assert rc == 0 and table.rstrip() == format_lens(report)

# %% [markdown]
# ## 7. Compute and parameters: what LoRA skips
#
# Per linear $[I, O]$ over $N$ token positions (2 FLOPs per multiply-add):
#
# | | full fine-tuning | LoRA |
# |---|---|---|
# | forward | $xW$: $2NIO$ | $xW$: $2NIO$; $xA^\top$, $hB^\top$: $2NR(I+O)$ |
# | backward to the input | $dy\,W^\top$: $2NIO$ | $dy\,W^\top$: $2NIO$; through $B$, $A$: $2NR(O+I)$ |
# | backward to the weights | $x^\top dy$: $2NIO$ | $dB$, $dA$: $2NR(O+I)$ |
# | total | $6NIO$ | $4NIO + 6NR(I+O)$ |
#
# The frozen $W$ still costs its forward and $dx$. LoRA skips one of the three big matmuls, $x^\top dy$ (the one
# section 1 switched back on), and pays $6NR(I+O)$ for the adapter: its linears cost more than $2/3$ of full
# fine-tuning's, never less. Full fine-tuning updates every tensor; LoRA, $r(I+O)$ numbers per matrix plus the head.

# %%
flops_full = sum(6 * N * I * O for I, O in (row.shape for row in report.rows))
flops_lora = sum(4 * N * I * O + 6 * N * r * (I + O) for I, O in (row.shape for row in report.rows))
ref_full, ref_lora = count_flops(model.cfg, Bsz, T, "full", r), count_flops(model.cfg, Bsz, T, "lora", r)
n_full = sum(g.size for g in full_grads.values())
n_lora = sum(g.size for g in lora_grads.values())
print(f"matmul FLOPs of the {len(report.rows)} linears on this batch: full {flops_full / 1e6:.0f} M, "
      f"LoRA {flops_lora / 1e6:.0f} M ({flops_lora / flops_full:.1%})")
print(f"parameters with a gradient: full {n_full:,}, LoRA {n_lora:,} ({n_lora / n_full:.2%})")

# %% [markdown]
# **Check.** The sums equal `minift.measure.bench.count_flops`'s exactly; LoRA's linears cost between $2/3$ and 1
# of full fine-tuning's; full fine-tuning's gradient covers every parameter, and LoRA's is $\sum r(I+O)$ plus the head.

# %%
assert flops_full == ref_full["linear"] and flops_lora == ref_lora["linear"] + ref_lora["lora"]
assert 2 / 3 < flops_lora / flops_full < 1
assert n_full == full.num_params()
assert n_lora == sum(r * sum(row.shape) for row in report.rows) + model.params["score.weight"].size

# %% [markdown]
# ## What to remember
#
# - One backward gives both: full fine-tuning's $G = x^\top dy$, and LoRA's $dB = s\,G^\top A^\top$,
#   $dA = s\,B^\top G^\top$. LoRA's $dA$ is full fine-tuning's $G$ seen through $B$; its $dB$ is $G$ seen through $A$.
# - At init $B = 0$, so $dA = 0$: the first step is $-\eta s^2 A^\top A\,G$, full fine-tuning's step through a
#   random subspace.
# - Any LoRA step is $-\eta s^2(A^\top A\,G + G\,BB^\top)$ to first order: never uphill, rank $\le 2r$, yet it moves
#   every entry of $W$. How much of $G$'s direction it follows is the lens's `cos`; `best-r` is the most a rank-$r$
#   update could hold.
# - LoRA skips one matmul per linear, $x^\top dy$, and trains a few percent of the parameters.
#
# The cell below lines up this run's numbers. **Going further:** tutorial 08 (float32 rounding of the identities,
# the first step's random-subspace statistics, why some $G$ are not full rank, the shares from explicit bases,
# which embedding rows get a gradient), 09 (time and memory measured), 10 (the MIT paper's intruder dimensions).

# %%
if FAST:
    print(SMOKE)
print(f"{'':22}{'full fine-tuning':>18}{'LoRA r=' + str(r):>14}")
print(f"{'cos with −G':22}{1:>18.3f}{o['cos_first']:>14.3f}")
print(f"{'share of ‖G‖ reached':22}{1:>18.3f}{o['share_tangent']:>14.3f}   (best rank-r: {o['share_best_r']:.3f})")
print(f"{'linear FLOPs':22}{1:>18.0%}{flops_lora / flops_full:>14.0%}")
print(f"{'parameters updated':22}{n_full:>18,}{n_lora:>14,}")

# %% [markdown]
# ## Exercises
#
# **Exercise 1 — predict the first step.** At init ($B = 0$), given $G$ $[I, O]$, $A$ $[R, I]$, the scale $s$ and
# $\eta$, return `(dA, dB, delta)`: LoRA's two gradients and the change of $W_\text{eff}$ after one SGD step, in
# minift's layout. The check compares them with section 3's lens at init, for all 16 matrices.

# %%
def my_first_step(G, A, s, lr):
    """(dA [R, I], dB [O, R], ΔW_step [I, O]) at B = 0."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_first_step(G, A, s, lr):
    dA = np.zeros_like(A)                                # s Bᵀ Gᵀ with B = 0
    dB = s * G.T @ A.T                                   # (O, R)
    return dA, dB, s * A.T @ (-lr * dB).T                # = −η s² Aᵀ A G


# %%
def check_first_step(answer):
    worst = 0.0
    for m, t in report0.tensors.items():
        dA, dB, delta = answer(t["G"], t["A"], report0.scale, report0.lr)
        assert np.array_equal(dA, np.zeros_like(t["A"])), f"{m}: dA must be exactly 0 at init"
        for mine, ref in ((dB, t["dB"]), (delta, t["delta_exact"])):
            assert mine.shape == ref.shape, (m, mine.shape, ref.shape)
            worst = max(worst, np.abs(mine - ref).max() / np.abs(ref).max())
    print(f"max relative error of dB and ΔW_step over 16 matrices: {worst:.1e}")
    assert worst < 1e-12


exercise("Exercise 1 (the first step)", check_first_step, my_first_step, solution_first_step)

# %% [markdown]
# **Exercise 2 — FLOPs of one linear.** Return the matmul FLOPs of one training step (forward and backward) of a
# linear $[I, O]$ over $N$ token positions, for `method` `"full"` ($W$ trains) or `"lora"` ($W$ frozen, an adapter of
# rank $R$). The check sums your count over the linears of three model sizes, GPT-2 included, and compares with
# `count_flops`.

# %%
def my_linear_flops(N, I, O, R, method):
    """Forward + backward matmul FLOPs (2 per multiply-add) of one linear, full or LoRA."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_linear_flops(N, I, O, R, method):
    if method == "full":
        return 6 * N * I * O                             # xW, dy Wᵀ, xᵀ dy
    return 4 * N * I * O + 6 * N * R * (I + O)           # xW, dy Wᵀ; xAᵀ, hBᵀ, dB, dh, dA, dh A


# %%
def check_linear_flops(answer):
    from minift import GPTConfig
    for preset, batch_size, seq, rank in (("demo", Bsz, T, 8), ("tiny", 3, 17, 2), ("gpt2", 8, 1024, 16)):
        cfg = GPTConfig.preset(preset)
        C, L = cfg.n_embd, cfg.n_layer
        shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]                       # c_attn, c_proj, c_fc, c_proj
        mine = {}
        for method in ("full", "lora"):
            ref = count_flops(cfg, batch_size, seq, method, rank)
            mine[method] = L * sum(answer(batch_size * seq, I, O, rank, method) for I, O in shapes)
            assert mine[method] == ref["linear"] + ref["lora"], (preset, method, mine[method], ref)
        print(f"{preset}: r = {rank}, LoRA's linears cost {mine['lora'] / mine['full']:.1%} of full fine-tuning's")


exercise("Exercise 2 (FLOPs of one linear)", check_linear_flops, my_linear_flops, solution_linear_flops)
