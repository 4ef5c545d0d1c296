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
# # 08 · One batch through both methods, tensor by tensor
#
# **Article:** §4.1 完全微调与LoRA的异同点 (*Similarities and differences between full fine-tuning and LoRA*):
#
# > 这两种方法虽然都旨在将预训练模型适配到特定的下游任务,但它们在参数更新、计算成本和模型性能等方面有着明显的区别。
# > …… 完全微调涉及对预训练模型的所有参数进行更新。…… 相比之下,LoRA仅对预训练模型的部分参数进行微调,通过引入低秩矩阵
# > ( A ) 和 ( B ),使得新的权重矩阵 ( W' ) 可以表示为 ( W' = W + AB^T )。…… 而LoRA通过引入低秩矩阵,显著减少了计算资源
# > 的需求。
# >
# > *Both methods aim to adapt a pretrained model to a downstream task, but they differ clearly in parameter
# > updates, compute cost and model performance. … Full fine-tuning updates all of the pretrained model's parameters.
# > … LoRA, by contrast, fine-tunes only part of them: it introduces low-rank matrices A and B so that the new weight
# > is W' = W + ABᵀ. … By introducing low-rank matrices, LoRA markedly reduces the compute it needs.*
#
# The article states the three differences; this tutorial puts **one batch** of the sentiment task through both
# methods at the same point and measures each of them, matrix by matrix. Two places where the article is loose
# (the LoRA paper, Hu et al. 2021, arXiv 2106.09685, says otherwise): LoRA fine-tunes *none* of the pretrained
# parameters — $W$ stays frozen and new ones, $A$ and $B$, train — yet one LoRA step changes *every entry* of the
# effective weight $W + \Delta W$; and the compute LoRA saves is one matmul per linear in the backward, not "markedly"
# less of everything (section 7).
#
# **You will learn**
# 1. to get full fine-tuning's gradient $G = \partial L/\partial W$ and LoRA's $dA$, $dB$ from *one* backward
#    (`minift.measure.lens.full_and_lora_grads`), and why $G$ there is exactly full fine-tuning's gradient;
# 2. to derive and verify $dB = s\,G^\top A^\top$ and $dA = s\,B^\top G^\top$ in minift's GPT-2 $[\text{in},
#    \text{out}]$ layout (and PEFT's), to $10^{-13}$ in float64;
# 3. what the very first LoRA step does ($B = 0 \Rightarrow dA = 0$: only $B$ moves);
# 4. what one SGD step on $A$, $B$ does to $W$: exact, first order, and the $\eta^2$ term; its rank ($\le 2r$);
# 5. how much of full fine-tuning's descent direction LoRA follows ($\cos(\Delta W, -G)$, the loss decrease), how much
#    of $G$ lies in LoRA's subspace, and the most any rank-$r$ update could hold (Eckart–Young);
# 6. which matmuls each method's backward runs, their FLOPs from the shapes, and how many parameters each updates;
# 7. to read the same table from the command line, `minift inspect`.
#
# **中文:** [zh/08_one_batch_both_methods.py](zh/08_one_batch_both_methods.py).
#
# **Time:** 10–30 s normally (50 LoRA warm-up steps in float64, the lens, and `minift inspect` with its own 20 steps:
# 13 s measured), about 6 s in fast mode (`MINIFT_FAST=1`: 10 and 2 steps; 5.8 s measured), with
# `OPENBLAS_NUM_THREADS=1` on 2 CPU cores shared with other jobs. 40 minutes to read. Fast mode is a smoke run and
# looks at a different batch, so its numbers differ from normal mode's, which the text describes.
#
# **Prerequisites:** tutorials 02 (the linear's backward), 05 (the task and its head), 07 (LoRA's notation,
# $s = \alpha/r$, `lora_forward` / `lora_backward`).

# %%
import contextlib
import io
import math

import matplotlib.pyplot as plt
import numpy as np

from minift.app.tutorial import FAST, exercise, pick, show
from minift import LoRAConfig, attach_lora
from minift.app.cli import main as minift_main
from minift.base import load_base
from minift.data import task_source
from minift.measure.bench import count_flops
from minift.measure.lens import activations, format_module, full_and_lora_grads, gradient_from_record, lens, lora_step
from minift.optim import SGD
from minift.training.finetune import load_task_splits
from minift.training.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode")
base, tok = load_base(dtype="float64")                  # float64: the identities below then hold to ~1e-15
train_split, _, _ = load_task_splits("sentiment")
lcfg = LoRAConfig(r=8, alpha=64, targets="all-linear")   # s = α/r = 8, one rate for all (tutorial 07, section 6)
ETA = 1e-2                                               # η of the plain SGD step we look at (the lens's default)

# %% [markdown]
# ## 1. One backward, two gradients
#
# We take the shipped base with tutorial 05's classification head, attach LoRA ($r = 8$, $\alpha = 64$, on all four
# linears of the 4 blocks: 16 adapted matrices; with $s = 8$ one learning rate serves adapters and head alike,
# tutorial 07 section 6), and train it a few AdamW steps so that $B \ne 0$ (at $B = 0$ half
# of what follows is trivially zero; section 3 looks at that case on purpose). Then we take the **next batch** of
# the training data and ask, for every adapted $W$: what gradient would full fine-tuning apply here, and what do
# LoRA's $A$ and $B$ get?
#
# An adapted linear computes with the effective weight $W_\text{eff} = W + s\,A^\top B^\top$ (minift's
# $[\text{in}, \text{out}]$ layout, tutorial 07). The loss depends on $W$ only through $W_\text{eff}$ and
# $\partial W_\text{eff}/\partial W$ is the identity, so
#
# $$G \;=\; \frac{\partial L}{\partial W} \;=\; \frac{\partial L}{\partial W_\text{eff}} \;=\; x^\top dy
# \quad [I, O],$$
#
# with $x$ $[N, I]$ the linear's input and $dy$ $[N, O]$ the gradient of its output over the batch's $N$ token
# positions (16 reviews × $T$ tokens, padding included): exactly what full fine-tuning of the merged model would
# compute. `full_and_lora_grads` unfreezes $W$ for one backward, so the adapted linear returns $dW = G$ next to $dA$,
# $dB$ — from the very same $dy$. **Layout:** $G$ is in GPT-2's Conv1D layout $[\text{in}, \text{out}]$ ($y = xW +
# b$), like `model.params`; PEFT's and PyTorch's `nn.Linear` layout $[\text{out}, \text{in}]$ holds $G^\top$.

# %%
model = base.to()
model.add_classification_head(train_split.label_names, seed=0)
plain = model.to()                                       # base + head, no adapters: sections 3 and the exercises
lora = attach_lora(model, lcfg, seed=0)
source = task_source(train_split, tok, max_len=128, batch_size=16, seed=0)
warm = train(model, source, TrainConfig(steps=pick(50, 10), batch_size=16, lr=1e-3, warmup=0, schedule="constant"),
             progress=False)
batch = source.next_batch()                              # the one batch of this tutorial
Bsz, T = batch["input_ids"].shape
N = Bsz * T                                              # token positions every matmul runs over (padding included)
loss, grads = full_and_lora_grads(model, lora, batch)
m0 = "h.0.attn.c_attn"
if FAST:
    print(SMOKE)
print(f"{warm.steps_done} LoRA warm-up steps (AdamW, lr 1e-3), loss {warm.history[0]['loss']:.3f} → "
      f"{warm.history[-1]['loss']:.3f}; this batch: {Bsz} reviews × {T} tokens, loss {loss:.4f}")
print(f"{m0}: W {model.params[m0 + '.weight'].shape} [in, out]; G {grads[m0 + '.weight'].shape}, "
      f"dA {grads[m0 + '.lora_A.weight'].shape} [r, in], dB {grads[m0 + '.lora_B.weight'].shape} [out, r]")

# %% [markdown]
# The warm-up losses are single batches, so they are noisy; the point is only that $B$ has moved.
#
# **Check.** (a) $G$ is full fine-tuning's gradient: a separate full fine-tuning backward of a plain copy of the
# model with $W_\text{eff}$ written in (what `lora.merge()` produces) and nothing frozen gives the same $dW$ — to
# $10^{-9}$ relative, since that forward adds $W + \Delta W$ once instead of adding the branch to $xW$ (rounding
# ~$10^{-13}$). (b) $G = x^\top dy$ rebuilt from the recorded activations (`activations`, `gradient_from_record`)
# agrees to $10^{-12}$. (c) The ordinary LoRA pass (`loss_and_grads`, $W$ frozen) returns bitwise the same $dA$ and
# $dB$, and **no** gradient for any adapted $W$: its $x^\top dy$ was never computed.

# %%
full = model.to()                                        # a plain copy: base params, head, no adapters
for name, w_eff in lora.effective_weights().items():
    full.params[name][...] = w_eff                       # W + ΔW, as merge() writes it
full.frozen = set()                                      # full fine-tuning: everything trains
full_loss, full_grads = full.loss_and_grads(**batch)
record = activations(model, batch)                       # the LoRA pass, every activation and its gradient
lora_loss, lora_grads = model.loss_and_grads(**batch)    # the ordinary LoRA pass
err_merged = max(np.abs(grads[m + ".weight"] - full_grads[m + ".weight"]).max()
                 / np.abs(full_grads[m + ".weight"]).max() for m in lora.modules)
err_record = max(np.abs(grads[m + ".weight"] - gradient_from_record(record, m)).max()
                 / np.abs(grads[m + ".weight"]).max() for m in lora.modules)
same_lora = all(np.array_equal(grads[k], lora_grads[k]) for k in lora_grads)
print(f"loss: lens pass {loss:.12f}, full fine-tuning copy {full_loss:.12f}, LoRA pass {lora_loss:.12f}")
print(f"G vs full fine-tuning's dW: max rel. error {err_merged:.1e}; G vs xᵀdy from the record: {err_record:.1e}")
print(f"LoRA pass: {len(lora_grads)} gradient tensors ({len(lora.params)} adapter tensors + the head), dA and dB "
      f"bitwise equal to the lens's: {same_lora}; adapted W among them: "
      f"{sum(m + '.weight' in lora_grads for m in lora.modules)}")
assert not any(not a.B.any() for a in lora.adapters.values())          # B ≠ 0 in every adapter
assert abs(full_loss - loss) < 1e-12 and abs(lora_loss - loss) < 1e-12
assert err_merged < 1e-9 and err_record < 1e-12 and same_lora
assert set(lora_grads) == set(lora.params) | {"score.weight"}

# %% [markdown]
# ## 2. LoRA's gradients are $G$ seen through $A$ and $B$
#
# The adapted linear (dropout off): $y = xW + b + s\,h B^\top$ with $h = x A^\top$ $[N, R]$. The chain rule through
# each product (tutorial 02's linear rules), then $x^\top dy = G$:
#
# $$dB = s\, dy^\top h = s\, dy^\top x A^\top = s\,(x^\top dy)^\top A^\top = s\, G^\top A^\top
# \quad [O, I]\,[I, R] = [O, R],$$
#
# $$dA = s\,(dy\, B)^\top x = s\, B^\top dy^\top x = s\, B^\top G^\top \quad [R, O]\,[O, I] = [R, I].$$
#
# In PEFT's layout ($G_\text{peft} = G^\top$ $[O, I]$) the same identities read $dB = s\,G_\text{peft}A^\top$ and
# $dA = s\,B^\top G_\text{peft}$. So LoRA never sees anything but full fine-tuning's gradient: $dB$ is $G$ read
# through the $r$ input directions in $A$'s rows, $dA$ is $G$ read through the $r$ output directions in $B$'s
# columns. Nothing of $G$ outside those directions reaches the adapter at this step.

# %%
report = lens(model, lora, batch, lr=ETA)                # every measure of sections 2–6, for all 16 matrices
s, r = report.scale, report.r
ident = {}
for m, t in report.tensors.items():
    G, A, B = t["G"], t["A"], t["B"]                     # (I, O), (R, I), (O, R), float64
    ident[m] = (np.abs(t["dB"] - s * G.T @ A.T).max() / np.abs(t["dB"]).max(),      # dB = s Gᵀ Aᵀ
                np.abs(t["dA"] - s * B.T @ G.T).max() / np.abs(t["dA"]).max())      # dA = s Bᵀ Gᵀ
t0 = report.tensors[m0]
G_peft = np.ascontiguousarray(t0["G"].T)                # (O, I) PEFT's nn.Linear layout; A, B are stored alike
peft_dB = s * G_peft @ t0["A"].T                         # (O, R) s · G_peft Aᵀ
peft_dA = s * t0["B"].T @ G_peft                         # (R, I) s · Bᵀ G_peft
print(f"s = α/r = {s:g}, r = {r}")
print("max relative error over the 16 matrices: dB vs s·GᵀAᵀ "
      f"{max(e[0] for e in ident.values()):.1e}, dA vs s·BᵀGᵀ {max(e[1] for e in ident.values()):.1e}; "
      f"the lens's own id.err column: {report.overall['max_identity_err']:.1e}")
print(format_module(report, m0).split("  singular values")[0])

# %% [markdown]
# The detail above (`format_module`, what `minift inspect --module h.0.attn.c_attn` prints) shows the top-left
# corner of $G$, then $dA$ next to $s\,B^\top G^\top$ and $dB$ next to $s\,G^\top A^\top$: the same digits. Its
# numerical rank and effective rank, as printed above, say that $G$ is full rank (128 of 128) but that its singular
# values fall fast: the effective rank is a fraction of that (section 6).
#
# **Check.** Both identities hold to $10^{-13}$ relative in every matrix (float64: they only reorder the products of
# one backward, rounding ~$10^{-15}$), and in PEFT's layout too. In float32 the same model and factors give
# ~$10^{-6}$ (float32's rounding, $\epsilon = 1.2\times 10^{-7}$, accumulated over sums of a few hundred terms;
# checked between $10^{-9}$ and $10^{-5}$) — which is why this tutorial works in float64 (below: a float32 copy with
# the same $A$, $B$). And $G$ of `h.0.attn.c_attn` is full rank with an effective rank under half of it.

# %%
model32 = plain.to(dtype="float32")
lora32 = attach_lora(model32, lcfg, seed=0)
for m, a in lora32.adapters.items():
    a.A[...], a.B[...] = lora.adapters[m].A, lora.adapters[m].B                   # the trained factors, rounded
report32 = lens(model32, lora32, batch, lr=ETA)
print(f"float32: identity error {report32.overall['max_identity_err']:.1e} (float64: "
      f"{report.overall['max_identity_err']:.1e})")
assert max(max(e[0], e[1]) for e in ident.values()) < 1e-13
assert report.overall["max_identity_err"] < 1e-13
assert 1e-9 < report32.overall["max_identity_err"] < 1e-5
assert np.allclose(peft_dB, t0["dB"], rtol=0, atol=1e-13) and np.allclose(peft_dA, t0["dA"], rtol=0, atol=1e-13)
assert report.row(m0).g_rank == 128 and report.row(m0).g_erank < 64

# %% [markdown]
# ## 3. The very first step: $B = 0$, so $dA = 0$ and only $B$ moves
#
# At attach time $B = 0$ (PEFT's init, tutorial 07), so the identities give at once
#
# $$dA = s\,B^\top G^\top = 0, \qquad dB = s\,G^\top A^\top \ne 0, \qquad
# \Delta W_\text{step} = s\,A^\top(-\eta\, dB)^\top = -\eta\, s^2 A^\top A\, G .$$
#
# The first step is exactly first order (there is no $\eta^2\,dA^\top dB^\top$ term when $dA = 0$), and it is full
# fine-tuning's step $-\eta G$ seen through $A^\top A$: only the part of $G$ in the $r$-dimensional row space of $A$
# survives. $A$ is random (Kaiming-uniform), so that row space is a random $r$-dimensional subspace of the $I$ input
# dimensions, and it should hold about $r/I$ of $\lVert G\rVert^2$ (a random subspace has no preferred direction, so
# the average projector is $\mathbb E[P] = \tfrac{r}{I}\,\mathbb 1$ and $\mathbb E\lVert PG\rVert^2 =
# \tfrac{r}{I}\lVert G\rVert^2$): a share $\lVert P_\text{in} G\rVert / \lVert G\rVert \approx \sqrt{r/I}$ —
# $\sqrt{8/128} = 0.25$ for most matrices, $\sqrt{8/512} = 0.125$ for `mlp.c_proj`.

# %%
model0 = plain.to()
lora0 = attach_lora(model0, lcfg, seed=0)                # fresh adapters: B = 0
report0 = lens(model0, lora0, batch, lr=ETA)
if FAST:
    print(SMOKE)
print(f"at init: report0.at_init = {report0.at_init}; loss {report0.loss:.4f} (the base with its head)")
print(f"{'module':<18} {'‖dA‖':>6} {'‖dB‖':>9} {'tangent':>8} {'√(r/I)':>7} {'cos':>6}")
for row in report0.rows:
    print(f"{row.module:<18} {row.dA_norm:>6.1f} {row.dB_norm:>9.2e} {row.share_tangent:>8.3f} "
          f"{math.sqrt(r / row.shape[0]):>7.3f} {row.cos_first:>6.3f}")

# %% [markdown]
# `tangent` is the share of $G$ any small change of $A$, $B$ can reach (section 6); at init only $B$ can move, so
# it is $\lVert P_\text{in} G\rVert/\lVert G\rVert$, close to the random-subspace estimate $\sqrt{r/I}$. `cos` is
# $\cos(\Delta W_\text{step}, -G)$: about the same, because $A^\top A$ acts on its row space roughly like a multiple
# of the identity (for a wide random matrix the singular values fill the Marchenko–Pastur range
# $\propto 1 \pm \sqrt{r/I}$, here $1 \pm 0.25$: the largest of a random $8\times 128$ $A$ at most about
# $1.25/0.75 \approx 1.7$ times the smallest, so the eigenvalues of $A^\top A$ on its row space within about
# $2.8\times$ of each other — "roughly" is the word). So
# the first LoRA step follows roughly a quarter of full fine-tuning's direction (an eighth for `mlp.c_proj`,
# $I = 512$), whatever the data says — compare the `cos` and `√(r/I)` columns printed above: which quarter is decided
# by the random $A$.
#
# **Check.** Every $dA$ is exactly zero (not just small) and every $dB$ is not; the exact step equals the first-order
# one and $-\eta s^2 A^\top A G$ to $10^{-12}$; the span share is 0 ($\Delta W = 0$ spans nothing yet); and the
# tangent shares behave as a random subspace's should: each within a factor 2.5 of $\sqrt{r/I}$ (one batch's $G$ is
# dominated by a few directions, so what a random $r$-dimensional subspace catches varies: for a rank-one $G$,
# $\lVert P_\text{in}G\rVert^2/\lVert G\rVert^2$ is a $\chi^2_r$ variable over $I$, relative spread
# $\sqrt{2/r} = 0.5$), and $\lVert P_\text{in}G\rVert^2/\lVert G\rVert^2 \div (r/I)$
# averages between 0.6 and 1.4 over the 16 matrices.

# %%
for row in report0.rows:
    t = report0.tensors[row.module]
    assert row.b_zero and not t["dA"].any() and t["dB"].any()
    ref = -ETA * s ** 2 * t["A"].T @ t["A"] @ t["G"]                                # (I, O)
    assert np.abs(t["delta_exact"] - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.array_equal(t["delta_exact"], t["delta_first_order"]) or row.second_order_gap < 1e-15
    assert row.share_span == 0.0
    assert 0.4 < row.share_tangent / math.sqrt(r / row.shape[0]) < 2.5, row
energy = [row.share_tangent ** 2 / (r / row.shape[0]) for row in report0.rows]     # ‖P_in G‖²/‖G‖² ÷ (r/I)
print(f"‖P_in G‖²/‖G‖² ÷ (r/I): mean {np.mean(energy):.2f} over the 16 matrices "
      f"(min {min(energy):.2f}, max {max(energy):.2f})")
assert 0.6 < np.mean(energy) < 1.4
assert report0.at_init and not report.at_init

# %% [markdown]
# ## 4. What one SGD step on $A$ and $B$ does to $W$
#
# Full fine-tuning's SGD step on $W$ is $-\eta G$. LoRA's moves $A_+ = A - \eta\,dA$, $B_+ = B - \eta\,dB$, and the
# effective weight changes by
#
# $$\Delta W_\text{step} = s\,(A_+^\top B_+^\top - A^\top B^\top)
# = \underbrace{-\eta\, s\,(dA^\top B^\top + A^\top dB^\top)}_{\Delta W_1\ \text{(first order)}}
# \;+\; \underbrace{\eta^2 s\, dA^\top dB^\top}_{\text{second order}} \quad [I, O].$$
#
# In PEFT's layout that is $s\,((B - \eta\,dB)(A - \eta\,dA) - BA) = -\eta s\,(dB\,A + B\,dA) + \eta^2 s\,dB\,dA$.
# Substituting section 2's identities,
#
# $$\Delta W_1 = -\eta\, s^2\,(A^\top A\, G + G\, B B^\top):$$
#
# full fine-tuning's gradient multiplied by two positive semi-definite matrices, $A^\top A$ on the input side and
# $BB^\top$ on the output side. Its rank is at most $2r$ (and the exact step's too: it is a difference of two
# rank-$r$ products), yet it is a dense matrix — every entry of $W_\text{eff}$ moves.
#
# `lens` computes both steps with `lora_step`. We also take the step for real: `minift.optim.SGD` on the adapter
# parameters, then read `lora.effective_weights()` again.

# %%
t = report.tensors[m0]
exact, first = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, ETA)                # (I, O), (I, O)
exact_half, first_half = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, ETA / 2)
saved = {k: v.copy() for k, v in lora.params.items()}
before = {k: v.copy() for k, v in lora.effective_weights().items()}
SGD(lora.params, lr=ETA, momentum=0.0).step(lora_grads)                           # A ← A − η dA, B ← B − η dB
moved = {k: v - before[k] for k, v in lora.effective_weights().items()}           # the real change of W + ΔW
for k, v in saved.items():
    lora.params[k][...] = v                                                       # put A and B back
gap, gap_half = np.linalg.norm(exact - first), np.linalg.norm(exact_half - first_half)
row0 = report.row(m0)
if FAST:
    print(SMOKE)
print(f"{m0}: ‖ηG‖ = {ETA * row0.g_norm:.3e} (full fine-tuning's step), ‖ΔW_step‖ = {row0.delta_norm:.3e} "
      f"(LoRA's), ratio {row0.step_ratio:.2f}")
print(f"  second-order part ‖η² s dAᵀdBᵀ‖/‖ΔW_step‖ = {row0.second_order_gap:.1e}; at η/2 the gap is "
      f"{gap_half / gap:.4f} of the gap at η")
print(f"  rank of ΔW_step: {np.linalg.matrix_rank(exact)} (≤ 2r = {2 * r}); entries that change: "
      f"{np.count_nonzero(exact):,} of {exact.size:,}")
print("  ‖ΔW_step‖/‖ηG‖ over the 16 matrices: " + " ".join(f"{row.step_ratio:.1f}" for row in report.rows))

# %% [markdown]
# The numbers, as printed above: LoRA's step is several times *longer* than full fine-tuning's at the same $\eta$,
# in every matrix. $\Delta W_1$ is $G$ multiplied by $s^2 A^\top A$ and $s^2 BB^\top$; with $s^2 = 64$ these maps
# stretch the part of $G$ they keep more than they lose by dropping the rest. (That is one reason LoRA gets its own
# learning rate and scale: tutorial 07, section 6.) The second-order term is well under 1% of the step at this
# $\eta$, and halving $\eta$ quarters it. The step has rank $2r = 16$ and changes all $128 \times 384 = 49{,}152$
# entries.
#
# **Check.** (a) The real SGD step changed $W_\text{eff}$ by `delta_exact`, to $10^{-12}$ relative, in every
# matrix; (b) $\Delta W_1 = -\eta s^2 (A^\top A G + G BB^\top)$ to $10^{-12}$; (c) exact − first order
# $= \eta^2 s\,dA^\top dB^\top$ to $10^{-9}$ (a difference of nearly equal numbers), and the gap at $\eta/2$ is $1/4$
# of the gap at $\eta$ to $10^{-6}$; (d) rank exactly $2r$, every entry nonzero; (e) the step longer than $\eta G$ in
# every matrix (ratio above 2), and the second-order part of `h.0.attn.c_attn`'s under 1%.

# %%
for m, t in report.tensors.items():
    real = moved[m + ".weight"]
    assert np.abs(real - t["delta_exact"]).max() <= 1e-12 * np.abs(real).max(), m
    ref = -ETA * s ** 2 * (t["A"].T @ t["A"] @ t["G"] + t["G"] @ t["B"] @ t["B"].T)
    assert np.abs(t["delta_first_order"] - ref).max() <= 1e-12 * np.abs(ref).max(), m
    second = ETA ** 2 * s * t["dA"].T @ t["dB"].T
    assert np.abs(t["delta_exact"] - t["delta_first_order"] - second).max() <= 1e-9 * np.abs(second).max(), m
assert abs(gap_half / gap - 0.25) < 1e-6
assert np.linalg.matrix_rank(exact) == 2 * r and np.count_nonzero(exact) == exact.size
assert all(np.array_equal(v, saved[k]) for k, v in lora.params.items())            # A and B restored
assert all(row.step_ratio > 2 for row in report.rows) and row0.second_order_gap < 0.01

# %% [markdown]
# ## 5. Direction: how much of full fine-tuning's descent LoRA follows
#
# To first order a step $\Delta W$ changes the batch loss by $\langle G, \Delta W\rangle = \operatorname{tr}(G^\top
# \Delta W)$. Full fine-tuning's step gives $-\eta\lVert G\rVert^2$, the steepest descent for its length. LoRA's
# gives
#
# $$\langle G, \Delta W_1\rangle = -\eta\, s^2\,\big(\lVert A G\rVert^2 + \lVert G B\rVert^2\big) \;\le\; 0,
# \qquad \cos(\Delta W_1, -G) = \frac{\eta s^2 (\lVert AG\rVert^2 + \lVert GB\rVert^2)}
# {\lVert \Delta W_1\rVert\,\lVert G\rVert} \;\ge\; 0 .$$
#
# So a plain-SGD LoRA step never points uphill on the batch, to first order (the exact step adds the
# $\eta^2$ term, and Adam rescales each coordinate), but it follows full fine-tuning's direction only as far as the
# cosine says (full fine-tuning's own cosine is 1). We check the prediction against the real loss after each
# method's step on the adapted matrices (the head is left alone in both, so only $W$'s share of the update is
# compared), at a smaller $\eta$ so that first order is accurate.

# %%
cos_hand = {}
for m, t in report.tensors.items():
    G, A, B = t["G"], t["A"], t["B"]
    num = ETA * s ** 2 * (np.linalg.norm(A @ G) ** 2 + np.linalg.norm(G @ B) ** 2)
    cos_hand[m] = num / (np.linalg.norm(t["delta_first_order"]) * np.linalg.norm(G))
eta_small = 1e-3
predicted = {"full": 0.0, "lora": 0.0}
full_step = full.to()
lora_small = {k: v.copy() for k, v in lora.params.items()}
for m, t in report.tensors.items():
    full_step.params[m + ".weight"][...] -= eta_small * t["G"]                        # full FT: W ← W − η G
    predicted["full"] -= eta_small * np.linalg.norm(t["G"]) ** 2
    exact_small, _ = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, eta_small)
    predicted["lora"] += float((t["G"] * exact_small).sum())                          # ⟨G, ΔW_step⟩
SGD(lora.params, lr=eta_small, momentum=0.0).step({k: lora_grads[k] for k in lora.params})
actual = {"full": full_step.loss(**batch) - loss, "lora": model.loss(**batch) - loss}
for k, v in lora_small.items():
    lora.params[k][...] = v                                                           # put A and B back
if FAST:
    print(SMOKE)
print("cos(ΔW₁, −G) per matrix: " + " ".join(f"{row.cos_first:.2f}" for row in report.rows))
print(f"all 16 matrices as one vector: cos {report.overall['cos_first']:.3f} (first order), "
      f"{report.overall['cos_exact']:.3f} (exact step)")
for k in ("full", "lora"):
    print(f"loss change after one SGD step, η = {eta_small:g}, {k:>4}: predicted ⟨G, ΔW⟩ = {predicted[k]:+.3e}, "
          f"measured {actual[k]:+.3e}")
print(f"LoRA's step lowered this batch's loss {actual['lora'] / actual['full']:.2f} times as much as full "
      "fine-tuning's, at the same η")

# %% [markdown]
# Read the cosines printed above: LoRA's step follows full fine-tuning's descent direction with a cosine well below
# 1 in every matrix, and for all 16 together — yet far above chance (two random directions in a $128\times 384$
# matrix have $|\cos| \approx 1/\sqrt{49152} \approx 0.005$). It still lowers the loss, and per step at the same
# $\eta$ by an amount of the same order as full fine-tuning (the last line above: the ratio depends on the batch, and
# fast mode's batch gives another), because its step is several times longer (section 4). So compare directions by
# the cosine, not by the loss decrease at equal $\eta$: that depends on $s$ and on how $\eta$ is tuned for each
# method.
#
# **Check.** The lens's cosines equal the formula to $10^{-10}$; every cosine is $\ge 0$ and below 1; first-order
# and exact cosines differ by less than 0.01 at $\eta = 10^{-2}$; both measured loss changes are negative and within
# 5% of their first-order predictions at $\eta = 10^{-3}$. In normal mode, every cosine lies between 0.1 and 0.5
# (at least 20 times chance), and LoRA's loss decrease is within a factor 3 of full fine-tuning's.

# %%
for row in report.rows:
    assert abs(row.cos_first - cos_hand[row.module]) < 1e-10
    assert 0 <= row.cos_first < 1 and abs(row.cos_first - row.cos_exact) < 0.01
for k in ("full", "lora"):
    assert actual[k] < 0 and abs(actual[k] / predicted[k] - 1) < 0.05, (k, actual, predicted)
assert all(np.array_equal(v, lora_small[k]) for k, v in lora.params.items())
if not FAST:                                             # the ranges hold for normal mode's batch
    assert all(0.1 < row.cos_first < 0.5 for row in report.rows) and 0.1 < report.overall["cos_first"] < 0.5
    assert 1 / 3 < actual["lora"] / actual["full"] < 3

# %% [markdown]
# ## 6. Where $G$ lives: LoRA's subspace against the best rank-$r$ one
#
# Let $P_\text{in}$ project $\mathbb R^I$ onto the row space of $A$ and $P_\text{out}$ project $\mathbb R^O$ onto the
# column space of $B$ (orthonormal bases $Q_A$, $Q_B$: $P = QQ^\top$). Three shares of $\lVert G\rVert$ (Frobenius
# norms):
#
# $$\text{span} = \frac{\lVert P_\text{in}\, G\, P_\text{out}\rVert}{\lVert G\rVert}, \qquad
# \text{tangent} = \frac{\lVert G - (1 - P_\text{in})\,G\,(1 - P_\text{out})\rVert}{\lVert G\rVert}, \qquad
# \text{best-}k = \frac{\lVert G_k\rVert}{\lVert G\rVert} = \sqrt{\frac{\sum_{i\le k}\sigma_i^2}
# {\sum_i \sigma_i^2}} .$$
#
# *Span*: the part of $G$ inside the subspace pair where $\Delta W = s A^\top B^\top$ lives now. *Tangent*: the part
# that any small change of $A$ and $B$ can reach ($\Delta W_1$ lies there, so $\cos \le$ tangent). *Best-$k$*: with
# $G = U\Sigma V^\top$ and $G_k$ its top-$k$ truncation, the Eckart–Young theorem says no rank-$k$ matrix is closer
# to $G$, and so no pair of $r$-dimensional subspaces holds more than best-$r$ of it: $P_\text{in} G P_\text{out}$ has
# rank $\le r$ and is $G$'s orthogonal projection, so by Pythagoras $\lVert P_\text{in}GP_\text{out}\rVert^2 =
# \lVert G\rVert^2 - \lVert G - P_\text{in}GP_\text{out}\rVert^2 \le \lVert G\rVert^2 - \lVert G - G_r\rVert^2 =
# \lVert G_r\rVert^2$ (span $\le$ best-$r$; the tangent space's matrices have rank $\le 2r$, so tangent $\le$
# best-$2r$). Full fine-tuning is not restricted at all: its share is 1.

# %%
by_hand = {}
for m, t in report.tensors.items():
    G = t["G"]
    sv = np.linalg.svd(G, compute_uv=False)                                         # (min(I, O),)
    QA, _ = np.linalg.qr(t["A"].T)                                                 # (I, R) basis of A's rows
    QB, _ = np.linalg.qr(t["B"])                                                   # (O, R) basis of B's columns
    span = np.linalg.norm(QA.T @ G @ QB) / np.linalg.norm(G)
    outside = G - QA @ (QA.T @ G)                                                  # (1 − P_in) G
    outside = outside - (outside @ QB) @ QB.T                                      # (1 − P_in) G (1 − P_out)
    tangent = math.sqrt(1 - (np.linalg.norm(outside) / np.linalg.norm(G)) ** 2)
    best = math.sqrt((sv[:r] ** 2).sum() / (sv ** 2).sum())
    by_hand[m] = (span, tangent, best, sv)
if FAST:
    print(SMOKE)
print(f"{'module':<18} {'erank':>6} {'rank':>5} {'cos':>6} {'span':>6} {'tangent':>8} {'best-r':>7} {'best-2r':>8}")
for row in report.rows:
    print(f"{row.module:<18} {row.g_erank:>6.1f} {row.g_rank:>5} {row.cos_first:>6.3f} {row.share_span:>6.3f} "
          f"{row.share_tangent:>8.3f} {row.share_best_r:>7.3f} {row.share_best_2r:>8.3f}")
o = report.overall
print(f"{'all matrices':<18} {'':>6} {'':>5} {o['cos_first']:>6.3f} {o['share_span']:>6.3f} "
      f"{o['share_tangent']:>8.3f} {o['share_best_r']:>7.3f} {o['share_best_2r']:>8.3f}")

# %% [markdown]
# What the columns say (the ranges are normal mode's, checked below):
#
# - **best-$r$ above 0.9 everywhere**: one batch's $G$ is dominated by a few directions (effective rank `erank` from
#   about 1 to a few dozen, of 128; $\operatorname{erank} = \exp(-\sum_i p_i \ln p_i)$ with
#   $p_i = \sigma_i/\sum_l \sigma_l$, Roy & Vetterli), so a rank-8 update *could* carry almost all of it. Some matrices
#   are exactly low rank: `rank` (numerical rank) is 16 for block 3's `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`,
#   because $G = x^\top dy = \sum_n x_n^\top dy_n$ is a sum of one outer product per token position, and in the last
#   block only the 16 positions the classification head reads (one per review) receive a gradient (block 3's
#   `attn.c_attn` is full rank: keys and values at every earlier position feed those 16). And 127 rather than 128 for
#   the other `c_proj`s: their output joins the residual stream, whose gradient arrives through LayerNorm backward,
#   which removes each row's mean (LayerNorm ignores a shift of its input,
#   $\mathrm{LN}(x + c\mathbf 1) = \mathrm{LN}(x)$, so its $dx$ is orthogonal to $\mathbf 1$) — so $G\,\mathbf 1 = 0$.
# - **span under 0.3 everywhere**: the subspace LoRA has actually built after a few warm-up steps holds little of
#   *this* batch's gradient. **tangent**, from about a quarter to 0.8: what one LoRA step can reach — more, since
#   either factor can turn. **cos** sits below tangent, as it must.
# - So the difference in "performance" starts here: full fine-tuning follows $G$ itself; LoRA follows its shadow on
#   $2r$ directions that were chosen by $A$'s random init and the previous batches. Read the `all matrices` row: a
#   rank-$r$ update *could* hold nearly all of $G$ (`best-r`), the rank-$r$ LoRA *step* follows a fraction of its
#   direction (`cos`).
#
# The figure puts the shares side by side, and for one matrix compares the singular values of full fine-tuning's
# step $\eta G$ with those of LoRA's step: LoRA's spectrum ends at $2r$.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
names = [row.module[2:] for row in report.rows]                                    # "0.attn.c_attn"
pos = np.arange(len(report.rows))
for k, (key, label) in enumerate((("cos_first", "cos(ΔW₁, −G)"), ("share_span", "span"),
                                  ("share_tangent", "tangent"), ("share_best_r", "best rank-r"))):
    ax1.bar(pos + (k - 1.5) * 0.2, [getattr(row, key) for row in report.rows], 0.2, label=label)
ax1.set_xticks(pos, names, rotation=60, fontsize=8)
ax1.set_ylabel("share of ‖G‖ / cosine")
ax1.set_title(f"one batch, r = {r}: where full fine-tuning's gradient G lies")
ax1.legend(fontsize=8, ncol=4, loc="upper left")
ax1.set_ylim(0, 1.15)
sv_full = np.linalg.svd(ETA * report.tensors[m0]["G"], compute_uv=False)
sv_lora = np.linalg.svd(report.tensors[m0]["delta_exact"], compute_uv=False)
ax2.semilogy(np.arange(1, 41), sv_full[:40], "o-", ms=3, label="full FT step ηG")
ax2.semilogy(np.arange(1, 41), np.maximum(sv_lora[:40], 1e-20), "s-", ms=3, label="LoRA step ΔW_step")
for k, style in ((r, ":"), (2 * r, "--")):
    ax2.axvline(k + 0.5, color="gray", ls=style, lw=0.8)
ax2.set_ylim(sv_full[39] / 100, 2 * max(sv_full[0], sv_lora[0]))
ax2.set_xlabel("singular value index (dotted: r, dashed: 2r)")
ax2.set_title(f"{m0}: singular values of one step")
ax2.legend(fontsize=8)
show(fig, "08_shares")

# %% [markdown]
# **Check.** The shares computed above from explicit bases (`np.linalg.qr`, `np.linalg.svd`) equal the lens's to
# $10^{-10}$; in every matrix $0 \le \cos \le$ tangent $\le$ best-$2r$ and span $\le$ best-$r$ ($+10^{-12}$);
# block 3's `c_proj`s and `c_fc` have numerical rank $\le$ 16 (the batch size), and $\lVert G\,\mathbf 1\rVert$ of
# every `c_proj` is ~$10^{-15}$ of $\lVert G\rVert$ (and the `c_proj`s of blocks 0–2 have rank exactly 127); LoRA's
# step has no singular value beyond $2r$ above $10^{-12}$ of its largest. In normal mode, the ranges of the list
# above: best-$r$ > 0.9, span < 0.3, tangent between 0.2 and 0.85, erank between 1 and 40; and for all matrices
# together best-$r$ > 0.9 and cos < 0.5.

# %%
eps = 1e-12
for row in report.rows:
    span, tangent, best, sv = by_hand[row.module]
    assert abs(span - row.share_span) < 1e-10 and abs(tangent - row.share_tangent) < 1e-10
    assert abs(best - row.share_best_r) < 1e-10
    assert 0 <= row.cos_first <= row.share_tangent + eps <= row.share_best_2r + 2 * eps
    assert row.share_span <= row.share_best_r + eps
    if row.module.endswith("c_proj"):
        G = report.tensors[row.module]["G"]
        assert np.linalg.norm(G.sum(axis=1)) < 1e-12 * np.linalg.norm(G), row.module       # G·1 = 0
for m in ("h.3.attn.c_proj", "h.3.mlp.c_fc", "h.3.mlp.c_proj"):
    assert report.row(m).g_rank <= Bsz, m
assert sv_lora[2 * r] < 1e-12 * sv_lora[0]
assert all(row.g_rank == 127 for row in report.rows if row.module.endswith("c_proj") and row.module[2] != "3")
if not FAST:                                             # the ranges the prose quotes, normal mode's batch
    assert all(row.share_best_r > 0.9 and row.share_span < 0.3 and 0.2 < row.share_tangent < 0.85
               and 1 <= row.g_erank < 40 for row in report.rows)
    assert report.overall["share_best_r"] > 0.9 and report.overall["cos_first"] < 0.5

# %% [markdown]
# ## 7. Compute: which matmuls each backward runs
#
# Per linear $[I, O]$ over $N$ token positions (2 FLOPs per multiply-add; $N = 16 \times T$ here, padding
# included):
#
# | | full fine-tuning | LoRA |
# |---|---|---|
# | forward | $xW$: $2NIO$ | $xW$: $2NIO$; $h = xA^\top$, $hB^\top$: $2NR(I+O)$ |
# | backward, to the input | $dx = dy\,W^\top$: $2NIO$ | $dy\,W^\top$: $2NIO$; $dh = s\,dy\,B$, $dh\,A$: $2NR(O+I)$ |
# | backward, to the weights | $dW = x^\top dy$: $2NIO$ | $dB = s\,dy^\top h$, $dA = dh^\top x$: $2NR(O+I)$ |
# | total | $6NIO$ | $4NIO + 6NR(I+O)$ |
#
# The frozen $W$ still costs its forward and $dx$; what LoRA skips is the weight gradient $x^\top dy$ — one of the
# three big matmuls, the one `full_and_lora_grads` switched back on in section 1 — and it pays $6NR(I+O)$ for the
# adapter instead. Attention's $QK^\top$ and $\text{att}\,V$ matmuls (and their backward) are the same in both.

# %%
rows_flops = []
for row in report.rows:
    I, O = row.shape
    rows_flops.append((row.module, I, O, 6 * N * I * O, 4 * N * I * O + 6 * N * r * (I + O)))
tot_full = sum(f for *_, f, _ in rows_flops)
tot_lora = sum(f for *_, f in rows_flops)
bench_full, bench_lora = count_flops(model.cfg, Bsz, T, "full", r), count_flops(model.cfg, Bsz, T, "lora", r)
for m, I, O, f_full, f_lora in rows_flops[:4]:
    print(f"{m:<18} [{I:>3}, {O:>3}]  full {f_full / 1e6:6.1f} MFLOP, LoRA {f_lora / 1e6:6.1f} MFLOP "
          f"({f_lora / f_full:.0%}); skipped xᵀdy {2 * N * I * O / 1e6:5.1f}, adapter {6 * N * r * (I + O) / 1e6:4.1f}")
print(f"all 16 linears: full {tot_full / 1e6:.0f} MFLOP, LoRA {tot_lora / 1e6:.0f} MFLOP ({tot_lora / tot_full:.1%})")
att = bench_full["attention"]
print(f"with attention ({att / 1e6:.0f} MFLOP in both): full {(tot_full + att) / 1e6:.0f}, "
      f"LoRA {(tot_lora + att) / 1e6:.0f} MFLOP per step ({(tot_lora + att) / (tot_full + att):.1%})")
print(f"minift.measure.bench.count_flops: linear {bench_full['linear'] / 1e6:.0f} (full) vs "
      f"{bench_lora['linear'] / 1e6:.0f} + adapters {bench_lora['lora'] / 1e6:.0f} (LoRA) MFLOP")

# %% [markdown]
# So the best LoRA can save in the matmuls of the linears is $1/3$ (the $x^\top dy$ share), less the adapter's
# $6NR(I+O)$: at $r = 8$ on this width-128 model the linears cost $(4\cdot 12C^2 + 6r\cdot 16C)/(6 \cdot 12C^2) = 75\%$
# of full fine-tuning's (as printed above; $N$ cancels), the whole step's matmuls a little more. The article's
# "显著减少了计算资源的需求" (*markedly reduces the compute it needs*) holds for memory at scale — no gradient and no optimizer
# state for $W$: 1.2 TB → 350 GB of training memory for GPT-3 175B in the LoRA paper — more than for FLOPs, where the
# paper measured a 25% throughput gain (§4.2). Tutorial 09 measures time and memory here; at this size LoRA's step is
# only some 10–30% shorter (README, tutorial 09). (`count_flops` also counts an LM head; this model has the small
# classification head instead, so only its `linear`, `lora` and `attention` parts are used.)
#
# **Check.** The per-module sums equal `count_flops`'s `linear` and `lora` parts exactly; LoRA's linears cost between
# 2/3 and 1 of full fine-tuning's: 75% exactly here.

# %%
assert tot_full == bench_full["linear"] and tot_lora == bench_lora["linear"] + bench_lora["lora"]
assert 2 / 3 < tot_lora / tot_full < 1 and tot_lora * 4 == tot_full * 3

# %% [markdown]
# ## 8. How many parameters each method updates
#
# Full fine-tuning updates every tensor of the model: $\sum I\cdot O$ over the adapted matrices plus embeddings,
# LayerNorms, biases and the head. LoRA updates $r(I + O)$ numbers per adapted matrix, plus the head:
#
# $$\frac{\#\text{LoRA}}{\#\text{full}} = \frac{\sum r(I+O) + |\text{head}|}{|\theta|} .$$
#
# Two refinements the article skips. (1) On one batch even full fine-tuning's gradient is exactly zero in places:
# rows of the token embedding `wte` for tokens not in the batch, and rows of the position embedding `wpe` beyond
# the batch's length $T$ (tutorial 06 looked at this over a whole run). (2) LoRA's few numbers still move every
# entry of each adapted $W_\text{eff}$ (section 4), through a rank-$2r$ change.

# %%
n_full = sum(g.size for g in full_grads.values())
n_lora = sum(g.size for g in lora_grads.values())
adapted_entries = sum(row.shape[0] * row.shape[1] for row in report.rows)
wte_rows = int((np.abs(full_grads["wte.weight"]).sum(axis=1) > 0).sum())
wpe_rows = int((np.abs(full_grads["wpe.weight"]).sum(axis=1) > 0).sum())
real = batch["attention_mask"].astype(bool)                                       # (B, T) real tokens
tokens_in_batch = len(np.unique(batch["input_ids"][real]))                        # distinct ids at real positions
positions_used = int(real.any(axis=0).sum())                                      # positions some review reaches
print(f"full fine-tuning: gradient for {len(full_grads)} tensors, {n_full:,} numbers (all of {full.num_params():,})")
print(f"LoRA:             gradient for {len(lora_grads)} tensors, {n_lora:,} numbers ({n_lora / n_full:.2%}); "
      f"the 16 adapted W_eff have {adapted_entries:,} entries, all of which its step moves")
print(f"this batch: wte rows with a nonzero gradient {wte_rows} of {model.cfg.vocab_size} (distinct token ids in the "
      f"batch's real positions: {tokens_in_batch}); wpe rows {wpe_rows} of {model.cfg.n_ctx} (T = {T})")

# %% [markdown]
# **Check.** Full fine-tuning's gradient covers every parameter; LoRA's is $\sum r(I+O)$ plus the 256-number head,
# under 7% of the model; the nonzero `wte` rows are exactly the distinct token ids at the batch's *real* positions,
# and the nonzero `wpe` rows exactly the positions some review reaches ($\le T$). Padding sits at the end of each
# review (right padding), where causal attention lets no real token see it and the head does not read it, so the pad
# token's row gets no gradient. Every adapted $W_\text{eff}$ entry moved (section 4's check).

# %%
assert n_full == full.num_params()
assert n_lora == sum(r * (row.shape[0] + row.shape[1]) for row in report.rows) + model.params["score.weight"].size
assert n_lora < 0.07 * n_full
assert wte_rows == tokens_in_batch and wpe_rows == positions_used <= T
assert all(np.count_nonzero(t["delta_exact"]) == t["delta_exact"].size for t in report.tensors.values())

# %% [markdown]
# ## 9. The same from the command line: `minift inspect`
#
# Sections 2–6 are what `minift inspect` prints: it loads the base, adds the head, attaches LoRA, trains
# `--steps` AdamW steps so that $B \ne 0$, takes the next batch and prints the lens's table — one row per adapted
# matrix, with the columns of sections 2–6 (`id.err`: section 2, `cos`: 5, `span`/`tangent`/`best-r`: 6,
# `‖ΔW‖`, `/η‖G‖`: 4) — and, with `--module`, section 2's detail and the singular values of section 6's plot.
# Its defaults differ from ours (batch 8, $\alpha = 2r$, float32); here it runs with $\alpha = 64$ in float64:
#
# ```bash
# minift inspect --alpha 64 --dtype float64 --steps 20 --module h.3.mlp.c_proj
# ```

# %%
argv = ["inspect", "--alpha", "64", "--dtype", "float64", "--steps", str(pick(20, 2)), "--quiet",
        "--module", "h.3.mlp.c_proj"]
with contextlib.redirect_stdout(io.StringIO()) as buf:
    rc = minift_main(argv)
text = buf.getvalue()
if FAST:
    print(SMOKE)
print(text)

# %% [markdown]
# The first lines restate what the lens looked at (a batch of 8 reviews this time) and which state $B$ is in; the
# column legend explains each number; the last matrix row, `all matrices`, treats the 16 matrices as one long vector.
# In the `--module` detail, `h.3.mlp.c_proj` has numerical rank at most 8 — the batch size, by section 6's argument —
# while LoRA's step on it has up to 16 nonzero singular values: $A^\top A\,G$ keeps $G$'s output directions but
# replaces its input directions by $A$'s, $G\,BB^\top$ keeps $G$'s input directions but takes $B$'s output ones, and
# each has rank at most $\min(r, \operatorname{rank} G)$ — so their sum can have up to $2 \times 8 = 16$. LoRA's step
# is not a piece of $G$ but $G$ bent into the adapter's subspaces. (With α = 64 and 20 steps at `--train-lr` 3e-3, the
# CLI's $G$ is even more concentrated than ours: read its `best-r` column above.)
#
# **Check.** The command succeeded, reported the trained state ($B \ne 0$) and 16 matrix rows, and its
# `all matrices` identity error is below $10^{-13}$; in normal mode its `all matrices` best-$r$ is at least 0.99.

# %%
lines = text.splitlines()
table = [ln for ln in lines if ln.startswith("h.") and len(ln.split()) == 12]
summary = next(ln for ln in lines if ln.startswith("all matrices"))
assert rc == 0 and "B ≠ 0 in every matrix" in text and len(table) == 16
assert float(summary.split()[3]) < 1e-13, summary
rank_line = next(ln for ln in lines if ln.strip().startswith("G: ‖G‖"))
assert int(rank_line.split("numerical rank ")[1].split()[0]) <= 8, rank_line
if not FAST:                                             # 2 training steps in fast mode leave G less concentrated
    assert float(summary.split()[7]) >= 0.99, summary

# %% [markdown]
# ## What you saw
#
# | §4.1's axis | full fine-tuning | LoRA (r = 8, measured on one batch) |
# |---|---|---|
# | gradient | $G = x^\top dy$ $[\text{in}, \text{out}]$ | $dB = s\,G^\top A^\top$, $dA = s\,B^\top G^\top$ (to $10^{-13}$) |
# | first step | $-\eta G$ | $B = 0$: $dA = 0$, step $-\eta s^2 A^\top A G$, ~$\sqrt{r/I}$ of $G$ |
# | update of $W$ | $-\eta G$, any rank | $-\eta s^2(A^\top A G + G BB^\top) + O(\eta^2)$, dense, rank $\le 2r$ |
# | direction (performance) | cos 1 | cos with $-G$ well below 1 per matrix, never negative (SGD, first order); span small, best-$r$ near 1 (sections 5–6) |
# | compute (linears) | $6NIO$ | $4NIO + 6NR(I+O)$: ~75% here, $> 2/3$ always |
# | parameters updated | all (section 8's printout) | under 7% (section 8), yet every entry of $W_\text{eff}$ moves |
#
# Tutorial 09 turns the compute column into measured time and memory; tutorial 10 follows the accumulated
# updates to the MIT paper's intruder dimensions.
#
# ## Exercises
#
# **Exercise 1 — predict the first step.** At init ($B = 0$), given $G$ $[I, O]$, $A$ $[R, I]$, the scale $s$ and
# $\eta$, return `(dA, dB, delta)`: LoRA's two gradients and the change of $W_\text{eff}$ by one SGD step, all in
# minift's layout. The check compares with `report0`, section 3's lens at init, for all 16 matrices.

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
# **Exercise 2 — the best rank-$k$ share.** Return $\lVert G_k\rVert/\lVert G\rVert$, the share of $G$ that the best
# rank-$k$ matrix holds (Eckart–Young), for any $k$. The check compares with the lens's `best-r` at $r = 8$ (and
# `best-2r`), and with a lens at another rank, $r = 4$, on the same batch at init.

# %%
def my_best_share(G, k):
    """‖G_k‖ / ‖G‖ for the top-k truncated SVD G_k of G."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_best_share(G, k):
    sv = np.linalg.svd(G, compute_uv=False)
    return math.sqrt((sv[:k] ** 2).sum() / (sv ** 2).sum())


# %%
def check_best_share(answer):
    m4 = plain.to()
    report4 = lens(m4, attach_lora(m4, LoRAConfig(r=4, alpha=32, targets="all-linear"), seed=0), batch)
    for rep in (report0, report4):
        for row in rep.rows:
            G = rep.tensors[row.module]["G"]
            assert abs(answer(G, rep.r) - row.share_best_r) < 1e-10, (row.module, rep.r)
            assert abs(answer(G, 2 * rep.r) - row.share_best_2r) < 1e-10, (row.module, 2 * rep.r)
    G = report0.tensors[m0]["G"]
    assert abs(answer(G, min(G.shape)) - 1) < 1e-12
    print(f"{m0} at init: best rank-k share " + ", ".join(f"k={k}: {answer(G, k):.3f}" for k in (1, 2, 4, 8, 16)))


exercise("Exercise 2 (best rank-k share)", check_best_share, my_best_share, solution_best_share)

# %% [markdown]
# **Exercise 3 — FLOPs of one linear.** Return the matmul FLOPs of one training step (forward + backward) of a
# linear $[I, O]$ over $N$ token positions, for `method` `"full"` (W trains) or `"lora"` (W frozen, an adapter of
# rank $R$). The check sums your count over the linears of a model and compares with `minift.measure.bench.count_flops`.

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
    for preset, batch_size, seq, R in (("demo", 16, T, 8), ("tiny", 3, 17, 2), ("gpt2", 8, 1024, 16)):
        cfg = GPTConfig.preset(preset)
        C, L = cfg.n_embd, cfg.n_layer
        shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
        for method in ("full", "lora"):
            ref = count_flops(cfg, batch_size, seq, method, R)
            mine = L * sum(answer(batch_size * seq, I, O, R, method) for I, O in shapes)
            assert mine == ref["linear"] + ref["lora"], (preset, method, mine, ref)
        ratio = (L * sum(answer(batch_size * seq, I, O, R, "lora") for I, O in shapes)
                 / (L * sum(answer(batch_size * seq, I, O, R, "full") for I, O in shapes)))
        print(f"{preset}: r = {R}, LoRA's linears cost {ratio:.1%} of full fine-tuning's")


exercise("Exercise 3 (FLOPs of one linear)", check_linear_flops, my_linear_flops, solution_linear_flops)
