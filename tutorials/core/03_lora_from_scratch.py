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
# # Core 03 · LoRA from scratch: $W + s\,BA$, its gradients, and what it trains
#
# **What you will see.** Adapters attached to the pretrained demo model leave its outputs bitwise unchanged. The
# adapted linear's backward hands back $\bar A$ and $\bar B$, and `None` where the frozen weight's gradient would
# be; it passes a finite-difference check — and a deliberately wrong $\bar A$ passes too, but only at $B = 0$. A
# table counts what LoRA trains, from one matrix of the demo model to GPT-3. A LoRA fine-tune on the sentiment task
# sits at chance, then climbs. Last, the adapter is merged into $W$: a plain GPT-2 again, with the same outputs.
#
# **Article:** §3.1 LoRA技术的核心思想 (*The core idea of LoRA*):
#
# > 假设预训练模型的权重矩阵为 ( W ),LoRA通过引入两个低秩矩阵 ( A ) 和 ( B ),使得新的权重矩阵 ( W' ) 可以表示为:
# > [ W' = W + AB^T ] 其中,( A ) 和 ( B ) 的秩远小于 ( W ) 的秩。
# >
# > *Let the pretrained weight matrix be W; LoRA introduces two low-rank matrices A and B so that the new weight is
# > W' = W + ABᵀ, where the rank of A and B is far below that of W.*
#
# and §3.2 LoRA的实践操作与效果 (*LoRA in practice*): only $A$ and $B$ are trained ("仅更新低秩矩阵 ( A ) 和 ( B )
# 的参数"), with "减少90%以上参数更新" — *over 90% fewer updated parameters*. The article gives no scale, no
# initialisation, and not the LoRA paper's letters; this tutorial supplies all three from the paper (Hu et al. 2021,
# arXiv 2106.09685) as Hugging Face PEFT implements it.
#
# **You will learn**
# 1. how the article's $W + AB^\top$, the paper's $W + s\,BA$ and minift's GPT-2 layout are one update;
# 2. why $B$ starts at zero, and what that does to the first step;
# 3. the adapted linear's forward and backward (`lora_forward` / `lora_backward`): $\bar A$, $\bar B$, $\bar x$,
#    and the $\bar W$ it skips;
# 4. to count trainable parameters, $r(\text{in} + \text{out})$ against $\text{in}\cdot\text{out}$;
# 5. to run a LoRA fine-tune (`finetune(method="lora")`) and merge the result for deployment.
#
# **中文:** [zh/03_lora_from_scratch.py](zh/03_lora_from_scratch.py).
#
# **Time:** about 15 minutes to read; about 25 s to run in normal mode and about 2 s in fast mode (`MINIFT_FAST=1`),
# measured on an idle 2-core Intel Xeon with `OPENBLAS_NUM_THREADS=1`; nearly all of it the 600-step fine-tune, which
# can take several times longer on cores busy with other work.
#
# **Prerequisites:** core 01 (the linear layer's backward, $\bar W = x^\top\bar y$) and core 02 ($G = x^\top \bar y$
# for every weight). **Going further:** [tutorial 07](../07_lora_from_scratch.py) — the scale $\alpha/r$ against
# rsLoRA's $\alpha/\sqrt r$, saving and loading PEFT adapter files, PiSSA and DoRA.

# %%
import math

import numpy as np

from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora, check_op
from minift.app.tutorial import FAST, exercise, pick
from minift.base import load_base
from minift.config import param_shapes
from minift.lora import LoRALinear, lora_backward, lora_forward
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)        # one seeded generator: every number below is the same on every run
if FAST:
    print("(fast mode: section 5's fine-tune is a 30-step smoke run, its numbers are not findings; "
          "the other sections run the same sizes as normal mode)")
base, tok = load_base()               # the shipped pretrained demo model (core 02's GPT, trained) and its tokenizer
train_split, _, _ = load_task_splits("sentiment")
print(base.cfg)
print("task labels:", train_split.label_names)

# %% [markdown]
# ## 1. One update, three notations
#
# The LoRA paper writes PyTorch's layout, $h = W_0 x$ with $W_0$ of shape [out, in], and adds
#
# $$\Delta W = s\,BA,\qquad B \in \mathbb R^{\text{out}\times r},\ A \in \mathbb R^{r\times \text{in}},\
#   s = \alpha / r .$$
#
# PEFT stores exactly these: `lora_A.weight` [r, in], `lora_B.weight` [out, r]. GPT-2 stores its linears the other
# way round, $W$ [in, out] with $y = xW + b$, and so does minift. Its adapted linear is
#
# $$y = xW + b + s\,(xA^\top)B^\top, \qquad \Delta W = s\,A^\top B^\top = (s\,BA)^\top \quad [\text{in}, \text{out}],$$
#
# with $A$ and $B$ stored as PEFT stores them, so a minift adapter is a PEFT adapter. The article's $W + AB^\top$ has
# no scale: its two factors are ours with $s$ folded into one, $A_\text{article} = s\,A^\top$ [in, r] and
# $B_\text{article} = B$ [out, r]. Read the shapes, not the letters: in the paper's layout the article's "$A$" would
# be the paper's $B$.
#
# **Check.** On random matrices, in float64: the three forms are one matrix, `LoRALinear.delta_weight()` computes it,
# and `lora_forward` equals a plain linear with $W + \Delta W$.

# %%
I, O, R, alpha = 6, 4, 2, 4.0
s = alpha / R                                            # the scale, s = α/r
A = rng.standard_normal((R, I))                          # (R, I)  lora_A.weight, PEFT's layout
B = rng.standard_normal((O, R))                          # (O, R)  lora_B.weight (random here; its init is 0: §2)
W = rng.standard_normal((I, O))                          # (I, O)  GPT-2's [in, out]
b = rng.standard_normal(O)                               # (O,)
x = rng.standard_normal((3, I))                          # (N, I)  three token positions
delta_minift = s * A.T @ B.T                             # (I, O)
delta_paper = s * B @ A                                  # (O, I)
A_article, B_article = s * A.T, B                        # (I, R), (O, R)
y, _ = lora_forward(x, W, b, A, B, s)                    # (N, O)
gaps = {"minift = paperᵀ": np.abs(delta_minift - delta_paper.T).max(),
        "article A Bᵀ = minift": np.abs(A_article @ B_article.T - delta_minift).max(),
        "delta_weight()": np.abs(LoRALinear("m", A, B, s, 0.0, None).delta_weight() - delta_minift).max(),
        "lora_forward = x(W+ΔW)+b": np.abs(y - (x @ (W + delta_minift) + b)).max()}
for name, gap in gaps.items():
    print(f"  {name:<26} max |difference| {gap:.1e}")
assert max(gaps.values()) < 1e-12

# %% [markdown]
# ## 2. $B = 0$: the adapted model starts as the base
#
# PEFT's default initialisation draws $A$ like `nn.Linear`'s own weights, uniform in $\pm 1/\sqrt{\text{in}}$
# (Kaiming-uniform), and sets $B = 0$. Then $\Delta W = s\,A^\top B^\top = 0$ and fine-tuning starts exactly where
# pretraining ended. Why not both zero? Section 3 derives the gradients:
#
# $$\bar B = s\,\bar y^\top (xA^\top), \qquad \bar A = s\,(\bar y B)^\top x .$$
#
# With $A = B = 0$ both vanish and nothing ever moves. With $B = 0$ alone, $\bar A = 0$ exactly but $\bar B \ne 0$:
# the first step moves only $B$, and from then on both.
#
# Below we give the base a classification head (the article's 任务特定层; tutorial 05 says more), copy it, and
# attach adapters of rank $r = 8$ with $\alpha = 16$ (so $s = 2$) to all four linears of every block. The input
# is 8 random token sequences: the claim is about the weights, so any input will do.

# %%
lcfg = LoRAConfig(r=8, alpha=16, targets="all-linear")
plain = base.to()                                        # a copy of the base...
plain.add_classification_head(train_split.label_names, seed=0)   # ...with the head finetune(seed=0) starts from
adapted = plain.to()                                     # a copy of that, to attach adapters to
lora = attach_lora(adapted, lcfg, seed=0)
print(lora)
a0 = lora.adapters["h.0.attn.c_attn"]
print(f"h.0.attn.c_attn: A {a0.A.shape}, B {a0.B.shape}, s = α/r = {a0.scale}; max |A| {np.abs(a0.A).max():.4f} "
      f"(bound 1/√in = {1 / math.sqrt(a0.A.shape[1]):.4f}); B all zero: {not a0.B.any()}")
ids = rng.integers(0, base.cfg.vocab_size, size=(8, 32))              # (8, 32) token ids
targets = rng.integers(0, len(train_split.label_names), size=8)       # (8,)  class ids
same = np.array_equal(plain.forward(ids), adapted.forward(ids))       # (8, K) logits, K labels
loss, grads = adapted.loss_and_grads(ids, targets)
dA0, dB0 = grads["h.0.attn.c_attn.lora_A.weight"], grads["h.0.attn.c_attn.lora_B.weight"]
print(f"logits bitwise equal to the base's: {same}")
print(f"first gradient of h.0.attn.c_attn: max |dA| {np.abs(dA0).max():.1e}, max |dB| {np.abs(dB0).max():.1e}")
print(f"{len(grads)} gradient tensors: {len(lora.params)} adapter tensors + the head; no base weight gets one")

# %% [markdown]
# **Check.** Every $A$ within its bound and every $B$ zero, in all adapters; logits bitwise the base's; every
# first-step $\bar A$ exactly 0 and every $\bar B$ not; gradients only for adapters and head.

# %%
for module, a in lora.adapters.items():
    assert np.abs(a.A).max() <= 1 / math.sqrt(a.A.shape[1]) and not a.B.any(), module
assert same
assert not any(g.any() for k, g in grads.items() if k.endswith("lora_A.weight"))
assert all(g.any() for k, g in grads.items() if k.endswith("lora_B.weight"))
assert set(grads) == set(lora.params) | {"score.weight"}

# %% [markdown]
# ## 3. The forward and the backward, written out
#
# One adapted linear, $N$ token positions, $x$ [N, in]. The forward keeps one extra activation, $h = xA^\top$
# [N, r]:
#
# $$y = xW + b + s\,hB^\top .$$
#
# The backward is core 01's linear rule applied to each product (gradients written $\bar{\ }$ here, `d` in code):
#
# $$\bar x = \bar y W^\top + s\,\bar y B A,\qquad \bar B = s\,\bar y^\top h,\qquad \bar A = s\,(\bar y B)^\top x,
# \qquad \bar W = x^\top \bar y\ \ \text{(not computed: } W \text{ is frozen)}.$$
#
# $x$ feeds both the frozen path and the branch, so its two gradients add (core 02's rule). Frozen does not mean
# free: the forward still computes $xW$ and the backward still computes $\bar y W^\top$, because the layers below
# need $\bar x$. Only $x^\top \bar y$ is skipped — one of the three large matmuls of a trained linear. That is the
# whole of LoRA's compute saving in the backward (tutorial 09 measures it).
#
# Read $\bar B$ and $\bar A$ once more with core 02's $G = x^\top \bar y$, the gradient full fine-tuning would give
# $W$:
#
# $$\bar B = s\,G^\top A^\top, \qquad \bar A = s\,B^\top G^\top .$$
#
# LoRA's gradients are full fine-tuning's $G$ seen through the adapter: through the $r$ input directions in $A$'s
# rows, and the $r$ output directions in $B$'s columns. Core 04 follows one batch through both methods with this.

# %%
N, I, O, R = 5, 6, 4, 2
x = rng.standard_normal((N, I))                          # (N, I)
W = rng.standard_normal((I, O))                          # (I, O)
b = rng.standard_normal(O)                               # (O,)
A = rng.standard_normal((R, I)) * 0.5                    # (R, I)
B = rng.standard_normal((O, R)) * 0.5                    # (O, R)  B ≠ 0: see the last check of this section
s = 2.0
y, cache = lora_forward(x, W, b, A, B, s)                # (N, O)
dy = rng.standard_normal(y.shape)                        # (N, O) a random upstream gradient
dx, dW, db, dA, dB = lora_backward(dy, cache)            # need_dw=False, the default: W is frozen
print(f"y {y.shape}; dx {dx.shape}, dW {dW}, db {db.shape}, dA {dA.shape} (A's shape), dB {dB.shape} (B's shape)")

# %% [markdown]
# **Check.** (a) The formulas above, written in NumPy, agree with `lora_backward` to rounding, and so do the two
# identities with $G$. (b) A finite-difference check of all five gradients (`need_dw=True` computes $\bar W$ for
# it), float64, random upstream gradient, tolerance $10^{-7}$.

# %%
h = x @ A.T                                              # (N, R)
G = x.T @ dy                                             # (I, O) what full fine-tuning would compute for W
gaps = {"dx": np.abs(dx - (dy @ W.T + s * dy @ B @ A)).max(), "dB": np.abs(dB - s * dy.T @ h).max(),
        "dA": np.abs(dA - s * (dy @ B).T @ x).max(), "db": np.abs(db - dy.sum(0)).max(),
        "dB = s Gᵀ Aᵀ": np.abs(dB - s * G.T @ A.T).max(), "dA = s Bᵀ Gᵀ": np.abs(dA - s * B.T @ G.T).max()}
print("max |difference|:", {k: f"{v:.1e}" for k, v in gaps.items()})
assert dW is None and max(gaps.values()) < 1e-12
report = check_op(lora_forward, lambda dy, cache: lora_backward(dy, cache, need_dw=True),
                  [x, W, b, A, B, s], names=["x", "W", "b", "A", "B"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# **A check that can fail — if you let it.** Below is a backward with a bug: it forgets the scale $s$ in $\bar A$.
# At $B = 0$, the initialisation, the true $\bar A$ is zero and so is the wrong one: the check passes. With
# $B \ne 0$ it fails. Gradient-check LoRA away from its initialisation.

# %%
def wrong_backward(dy, cache):
    """WRONG on purpose: dA without the scale s."""
    dx, dW, db, dA, dB = lora_backward(dy, cache, need_dw=True)
    return dx, dW, db, dA / s, dB


verdicts = {}
for name, B_test in (("B = 0 (the init)", np.zeros_like(B)), ("B random", B)):
    wrong = check_op(lora_forward, wrong_backward, [x, W, b, A, B_test, s], names=["x", "W", "b", "A", "B"])
    verdicts[name] = wrong.ok
    print(f"wrong dA, {name:<17} check passes: {wrong.ok}  (worst relative error {wrong.max_error:.1e})")
assert verdicts == {"B = 0 (the init)": True, "B random": False}

# %% [markdown]
# ## 4. How many parameters? (the article's "90%+ fewer")
#
# A full update of an $\text{in}\times\text{out}$ matrix has $\text{in}\cdot\text{out}$ numbers; LoRA's has
# $r(\text{in} + \text{out})$, a share $r(\text{in}+\text{out})/(\text{in}\cdot\text{out})$ — small when $r$ is far
# below both. From shapes alone, for the demo model, GPT-2 small, and GPT-3 175B as the LoRA paper adapted it ($W_q$
# and $W_v$ of every block, $r = 4$). "Compared with" is the matrix's own $\text{in}\cdot\text{out}$ in the first
# row, and the whole model's parameter count — what full fine-tuning trains — in the others.

# %%
def lora_count(shapes, r):
    """Σ r·(in + out) over the adapted matrices' shapes."""
    return sum(r * (i + o) for i, o in shapes)


def total_params(cfg):
    """Every parameter of a GPT-2-shaped model, from its shapes (no arrays are made)."""
    return sum(math.prod(shape) for shape in param_shapes(cfg).values())


C = base.cfg.n_embd
demo_all = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * base.cfg.n_layer      # the four linears of every block
gpt2 = GPTConfig.preset("gpt2")
gpt2_all = [(768, 3 * 768), (768, 768), (768, 4 * 768), (4 * 768, 768)] * gpt2.n_layer
gpt3 = GPTConfig(vocab_size=50257, n_ctx=2048, n_embd=12288, n_layer=96, n_head=96)
rows = [(f"one demo c_attn [{C}, {3 * C}], r=8", [(C, 3 * C)], 8, 3 * C * C),
        ("demo, all linears, r=8", demo_all, 8, total_params(base.cfg)),
        ("demo, all linears, r=64", demo_all, 64, total_params(base.cfg)),
        ("GPT-2 small, all linears, r=8", gpt2_all, 8, total_params(gpt2)),
        ("GPT-3 175B, Wq and Wv, r=4", [(12288, 12288)] * 2 * gpt3.n_layer, 4, total_params(gpt3))]
print(f"{'':<36}{'LoRA numbers':>14}{'compared with':>18}{'share':>10}{'fewer':>10}")
for name, shapes, r, total in rows:
    n = lora_count(shapes, r)
    print(f"{name:<36}{n:>14,}{total:>18,}{n / total:>10.4%}{total / n:>9,.0f}×")
print("(the LoRA paper, §1, on GPT-3 175B: trainable parameters reduced 'by 10,000 times')")

# %% [markdown]
# Read the "share" column as printed above. At GPT-3's size the article's "90%+ fewer" is an understatement by
# orders of magnitude. At the demo model's size it depends on the rank: $r = 8$ on every linear passes the 90% mark,
# $r = 64$ does not — the rank is no longer "far below" the width. The shape of $W$, not LoRA itself, decides the
# saving.
#
# **Check.** The adapters that `attach_lora` made in section 2 hold exactly $\sum r(\text{in}+\text{out})$ numbers;
# with the head, they are under 10% of the model.

# %%
adapter_numbers = sum(a.size for a in lora.params.values())
trainable = adapted.num_params(trainable_only=True)
print(f"attach_lora: {adapter_numbers:,} adapter numbers + {adapted.params['score.weight'].size} head = "
      f"{trainable:,} trainable of {adapted.num_params():,} ({trainable / adapted.num_params():.1%})")
assert adapter_numbers == lora_count(demo_all, lcfg.r)
assert trainable == adapter_numbers + adapted.params["score.weight"].size < 0.1 * adapted.num_params()

# %% [markdown]
# ## 5. A LoRA fine-tune (§3.2, steps 1–5)
#
# `finetune(method="lora")` runs the article's steps: copy the base (1), attach the adapters, which also freezes
# every base weight (2), train with the settings of `FinetuneConfig` (3, 4), and evaluate on the validation and test
# splits (5). The task is tutorial 05's: short reviews, positive or negative, whose test split uses sentence
# templates that training never saw.
#
# Two learning rates, not one. With Adam, each entry of $A$ and $B$ moves by about the learning rate per step,
# whatever its gradient's size, so the update $s\,A^\top B^\top$ grows with $s$ times the rate, while the freshly
# initialised head moves at the rate alone. A rate large enough for the adapters made the head collapse to one
# answer, so `finetune` gives the head its own, smaller rate (as PyTorch's parameter groups do). Both were chosen on
# the validation split; the run prints them.

# %%
steps = pick(600, 30)
# workers=1: the whole batch in one thread, so the printed numbers are the same on any machine (the default
# splits the batch across threads where that is faster, which changes the last bits)
lora_model, lora_handle, run = finetune(
    base, tok, FinetuneConfig(method="lora", lora=lcfg, steps=steps, eval_every=pick(100, 10),
                              eval_size=pick(None, 128), workers=1), progress=not FAST)
if FAST:
    print("(fast mode: a 30-step smoke run on 128 examples; these numbers are not findings)")
chance = 1 / len(run["labels"])
print(f"adapters at lr {run['lr']:g}, head at {run['head_lr']:g}; {run['trainable']:,} trainable "
      f"({run['percent']:.1f}%); {run['ms_per_step']:.0f} ms/step")
print("validation accuracy by step: " + ", ".join(f"{e['step']}: {e['val_accuracy']:.3f}" for e in run["evals"]))
print(f"test accuracy (held-out templates): {run['test_accuracy']:.3f}; chance: {chance:.3f}")

# %% [markdown]
# Read the validation accuracies as printed above. In normal mode they sit at chance for the first evaluations, then
# climb well above it, and the held-out test templates follow. Whether that is the article's "与完全微调相当的性能"
# (*performance comparable to full fine-tuning*) needs full fine-tuning run the same way, with the same steps: core
# 05 measures it, and tutorial 07, section 6 discusses it.
#
# **Check.** Every base weight is bitwise unchanged (frozen: no gradient, no update). In normal mode the run must
# have learned: final validation accuracy at least 0.8 and 0.2 above the first evaluation's, test at least 0.7.

# %%
assert all(np.array_equal(lora_model.params[n], base.params[n]) for n in base.params)
if not FAST:
    first_val = run["evals"][0]["val_accuracy"]
    assert run["val_accuracy"] >= max(0.8, first_val + 0.2) and run["test_accuracy"] >= 0.7, run

# %% [markdown]
# ## 6. Merge: deploy a plain GPT-2 (§3.2, step 6)
#
# For deployment the article asks about inference speed and memory (推理速度、内存占用). Fold the update into the
# weight, $W \leftarrow W + s\,A^\top B^\top$, and the model is a plain GPT-2 again: no branch, no extra matmul at
# inference. `unmerge` subtracts it back. Merging twice would add $\Delta W$ twice, so it is refused.
# `merged_model()` does the same on a copy and drops the adapters: one set of weights to ship.

# %%
name = "h.0.attn.c_attn.weight"
W_before = lora_model.params[name].copy()                                     # (C, 3C)
delta = lora_handle.adapters["h.0.attn.c_attn"].delta_weight()                # (C, 3C)  s · Aᵀ Bᵀ
unmerged_logits = lora_model.forward(ids)                                     # (8, K)
lora_handle.merge()
merged_logits = lora_model.forward(ids)                                       # (8, K)
merge_gap = np.abs(lora_model.params[name] - (W_before + delta)).max()
try:
    lora_handle.merge()
    double = None
except MiniftError as e:
    double = e
lora_handle.unmerge()
restore_gap = np.abs(lora_model.params[name] - W_before).max()
deployed = lora_handle.merged_model()                                         # a new GPT, no adapters
deployed_gap = np.abs(deployed.forward(ids) - unmerged_logits).max()
print(f"after merge: max |W − (W_before + ΔW)| {merge_gap:.1e}; max |logit change| "
      f"{np.abs(merged_logits - unmerged_logits).max():.1e}")
print("merging twice:", double)
print(f"after unmerge: max |W − W_before| {restore_gap:.1e}")
print(f"merged_model(): {len(deployed.adapters)} adapters, {deployed.num_params():,} parameters "
      f"(the base's {base.num_params():,} + the head), max |logit change| {deployed_gap:.1e}")

# %% [markdown]
# **Check.** Merged and unmerged logits agree to float32 rounding ($10^{-4}$); unmerge restores $W$ to within a few
# float32 rounding steps ($10^{-6}$); the second merge raised; the deployed model has no adapters and the base's
# parameter count plus the head.

# %%
assert merge_gap < 1e-6 and np.abs(merged_logits - unmerged_logits).max() < 1e-4
assert restore_gap < 1e-6 and not lora_handle.merged
assert isinstance(double, MiniftError) and "already merged" in str(double)
assert not deployed.adapters and deployed.num_params() == base.num_params() + deployed.params["score.weight"].size
assert deployed_gap < 1e-4

# %% [markdown]
# ## What to remember
#
# - One update, three notations: the paper's $s\,BA$ [out, in] is minift's $s\,A^\top B^\top$ [in, out]; the article's
#   $AB^\top$ has $s$ folded into one factor. Read the shapes, not the letters.
# - $B = 0$ at init: the adapted model *is* the base, and the first step moves only $B$. Never gradient-check at
#   $B = 0$: a wrong $\bar A$ passes there.
# - Backward: $\bar B = s\,\bar y^\top (xA^\top)$, $\bar A = s\,(\bar y B)^\top x$, $\bar x$ gets both paths. The
#   frozen $W$ still costs its forward and $\bar y W^\top$; only $\bar W = x^\top \bar y$ is skipped. And
#   $\bar B = s\,G^\top A^\top$, $\bar A = s\,B^\top G^\top$: full fine-tuning's $G$, seen through the adapter.
# - LoRA trains $r(\text{in}+\text{out})$ numbers per matrix instead of $\text{in}\cdot\text{out}$: a huge saving on
#   wide matrices, a modest one when $r$ nears the width.
# - Merge for deployment: $W + \Delta W$ is a plain weight, same outputs, no extra cost at inference.
#
# Next, core 04 puts one batch through full fine-tuning and LoRA side by side. **Going further:**
# [tutorial 07](../07_lora_from_scratch.py) measures what the scale does as $r$ grows ($\alpha/r$ against rsLoRA's
# $\alpha/\sqrt r$), saves and reloads a PEFT adapter (`save_peft` / `load_peft`), and tries PiSSA (start from $W$'s
# top singular directions) and DoRA (a learned magnitude per column); tutorial 09 times LoRA's step against full
# fine-tuning's.
#
# ## Exercises
#
# Write your answer in the `my_...` function (replace `raise NotImplementedError`) and run the cell after it. Until
# you do, that cell checks the reference solution, which is folded in Jupyter — try first.
#
# **Exercise 1 — count adapters.** Return how many numbers `attach_lora` adds for rank `r` and the module names
# `targets` (a tuple of the block-relative names `"attn.c_attn"`, `"attn.c_proj"`, `"mlp.c_fc"`, `"mlp.c_proj"`) to
# a model with config `cfg`. The check attaches real adapters to a tiny model and counts.

# %%
def my_adapter_count(cfg, r, targets):
    """Σ r·(in + out) over the targeted linears of every block."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_adapter_count(cfg, r, targets):
    C = cfg.n_embd
    shape = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    return cfg.n_layer * sum(r * sum(shape[t]) for t in targets)


# %%
def check_adapter_count(answer):
    tiny = GPTConfig.preset("tiny")
    for r, targets in ((1, ("attn.c_attn",)), (4, ("attn.c_proj", "mlp.c_fc")),
                       (8, ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))):
        handle = attach_lora(GPT(tiny), LoRAConfig(r=r, alpha=r, targets=targets))
        real = sum(a.size for a in handle.params.values())
        print(f"r={r} {targets}: attach_lora {real:,}, yours {answer(tiny, r, targets):,}")
        assert answer(tiny, r, targets) == real


exercise("Exercise 1 (adapter count)", check_adapter_count, my_adapter_count, solution_adapter_count)

# %% [markdown]
# **Exercise 2 — the adapter's gradients by hand.** Given $x$ [N, in], $\bar y$ [N, out], $A$ [r, in], $B$ [out, r]
# and $s$, return `(dA, dB)` for $y = xW + b + s\,xA^\top B^\top$. The check compares with `lora_backward` on random
# inputs, with $B \ne 0$ (section 3 showed why).

# %%
def my_lora_grads(x, dy, A, B, s):
    """(dA [R, I], dB [O, R])."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_lora_grads(x, dy, A, B, s):
    return s * (dy @ B).T @ x, s * dy.T @ (x @ A.T)


# %%
def check_lora_grads(answer):
    g = np.random.default_rng(1)
    x, W, b = g.standard_normal((7, 5)), g.standard_normal((5, 3)), g.standard_normal(3)
    A, B, s = g.standard_normal((2, 5)), g.standard_normal((3, 2)), 1.5
    y, cache = lora_forward(x, W, b, A, B, s)
    dy = g.standard_normal(y.shape)
    _, _, _, dA, dB = lora_backward(dy, cache)
    mine_dA, mine_dB = answer(x, dy, A, B, s)
    print(f"max |dA − yours| {np.abs(dA - mine_dA).max():.1e}, max |dB − yours| {np.abs(dB - mine_dB).max():.1e}")
    assert np.allclose(mine_dA, dA, atol=1e-12) and np.allclose(mine_dB, dB, atol=1e-12)


exercise("Exercise 2 (LoRA gradients)", check_lora_grads, my_lora_grads, solution_lora_grads)
