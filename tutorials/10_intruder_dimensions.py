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
# # 10 · What the MIT paper really found: intruder dimensions
#
# **Article:** §4.2 MIT论文中的实证研究分析 (*The MIT study*):
#
# > MIT的研究团队选择了多个常见的自然语言处理任务,包括文本分类、命名实体识别和情感分析等。他们使用了多个预训练模型,
# > 如BERT和GPT …
# > 具体来说,LoRA的训练时间比完全微调减少了约70%,内存占用减少了约80%。…
# > 结果显示,LoRA在泛化能力方面表现良好,尤其是在小数据集上。
# >
# > *The MIT team chose several common NLP tasks, including text classification, named-entity recognition and
# > sentiment analysis, and several pretrained models such as BERT and GPT … Specifically, LoRA cut training time by
# > about 70% and memory by about 80% compared with full fine-tuning … LoRA generalised well, especially on small
# > data sets.*
#
# Only the broad strokes are in the paper. The "21-page MIT paper" is Shuttleworth, Andreas, Torralba and Sharma, *LoRA
# vs Full Fine-tuning: An Illusion of Equivalence* (arXiv 2410.21228, NeurIPS 2025). It fine-tuned RoBERTa-base (a BERT
# variant) on classification tasks, sentiment among them (MNLI, QQP, SST-2, SIQA, Winogrande, FEVER), and LLaMA models
# (GPT-style decoders); but it has no named-entity recognition, reports no training-time or memory savings, makes no
# claim about small data sets, and asked a different question: when LoRA and full fine-tuning reach the *same* accuracy,
# did they change the model in the same way? Its answer is no. LoRA's fine-tuned weight matrices contain **intruder
# dimensions** — new high-ranking singular vectors nearly orthogonal to every singular vector of the pretrained matrix —
# and full fine-tuning's do not; LoRA's forgetting of the pretraining distribution is concentrated in them, and scaling
# their singular values down ($\lambda \approx 0.75$) undoes much of it at little cost in task accuracy; full
# fine-tuning's updates have a higher effective rank; higher-rank, rank-stabilised LoRA (rsLoRA) behaves more like full
# fine-tuning; and when tasks are learned one after another (continual learning), LoRA's intruders accumulate.
#
# This tutorial reproduces those measurements in miniature, with `minift/measure/analysis.py`, and says plainly which of
# them survive at width 128 and which do not.
#
# **You will learn**
# 1. the paper's Algorithm 1 (intruder dimensions), on a toy matrix where you planted the intruder yourself;
# 2. the noise floor: how small $\max|\cos|$ already is for a *random* direction at width 64–768,
#    $\approx\sqrt{2\ln(2d)/d}$, and why a tiny model must sweep $\varepsilon$ against a random baseline;
# 3. to count intruders in real fine-tunes — full, LoRA at three ranks, rsLoRA — and the effective rank of $\Delta W$;
# 4. to measure forgetting (held-out language-model loss) per method and rank;
# 5. the paper's mitigation: scale the intruders' singular values by $\lambda$, and what it does to forgetting and
#    accuracy;
# 6. an honest reading: what reproduces at this scale, what does not, and why;
# 7. continual learning: four tasks in sequence, each LoRA merged before the next — do intruders accumulate, and
#    what does each method keep of the earlier tasks?
#
# **中文:** [zh/10_intruder_dimensions.py](zh/10_intruder_dimensions.py).
#
# **Time:** 7–10 minutes normally (five 500-step fine-tunes, then five methods through four 200-step stages: 407 s
# and 587 s measured with `OPENBLAS_NUM_THREADS=1` on 2 CPU cores shared with other jobs, so likely less on a quiet
# machine), about 30 s in fast mode (`MINIFT_FAST=1`: 29 s and 33 s on the same shared machine).
# 50 minutes to read.
#
# **Prerequisites:** tutorials 05 (the task, `finetune`), 06 (full fine-tuning) and 07 (LoRA, its scale $s$, rsLoRA).

# %%
import dataclasses
import json
import math

import matplotlib.pyplot as plt
import numpy as np

from minift.app.tutorial import FAST, exercise, out_dir, pick, show
from minift import LoRAConfig
from minift.backend import to_numpy
from minift.base import load_base
from minift.data import data_dir
from minift.data.facts import ANSWERS
from minift.generate import generate
from minift.measure.analysis import (
    format_intruders,
    intruder_dimensions,
    intruder_sweep,
    linear_weight_names,
    model_intruders,
    random_baseline,
    scale_intruders,
    singular_values,
    spectrum_compare,
)
from minift.training.evaluate import completion_metrics, lm_loss, split_metrics
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits
from minift.training.pretrain import heldout_world_ids

np.set_printoptions(precision=3, suppress=True, linewidth=110)
print("fast mode: sections 3-7 and exercise 4 train for a few steps only, a smoke run" if FAST else "normal mode")


def smoke():
    """In fast mode, say that the numbers printed next are a smoke run's (sections 1 and 2 do not depend on FAST)."""
    if FAST:
        print("(fast mode: a smoke run; these numbers are not findings)")


def verdict(claim, ok):
    """Print a claim the prose makes about this run and whether it held; at full size it must hold."""
    print(f"  {'holds' if ok else 'does NOT hold'}: {claim}")
    assert ok or FAST, claim             # fast mode: a few training steps, so the claims are skipped, not checked


base, tok = load_base()
K = 10                                                   # the paper's top-k singular vectors

# %% [markdown]
# ## 1. Algorithm 1: what an intruder dimension is
#
# Take a pretrained matrix in the paper's layout, $W_0 \in \mathbb R^{\text{out}\times\text{in}}$ (PyTorch's
# `nn.Linear`, $h = W_0x$), and its fine-tuned version $W_t = W_0 + \Delta W$ — for LoRA, $\Delta W = s\,BA$ folded in.
# Take both thin SVDs,
#
# $$W_0 = U_0\Sigma_0V_0^\top = \sum_i \sigma^0_i\, u^0_i {v^0_i}^\top, \qquad
#   W_t = U\Sigma V^\top = \sum_j \sigma_j\, u_j v_j^\top \quad(\sigma_1 \ge \sigma_2 \ge \dots).$$
#
# The $j$-th singular vector of $W_t$ ($j \le k$, the top $k$) is an **intruder** if it resembles no singular
# vector of $W_0$:
#
# $$u_j \text{ is an intruder} \iff \max_i\, \lvert\cos(u_j, u^0_i)\rvert = \max_i\, \lvert {u^0_i}^\top u_j\rvert
#   < \varepsilon, \qquad k = 10,\ \varepsilon = 0.5 \text{ in the authors' code},$$
#
# summed over all adapted matrices. Three things to notice: it looks at $W_0 + \Delta W$, not at $\Delta W$; the
# $u$'s are *left* singular vectors, directions in the layer's output space; and it asks about the top of the
# spectrum only — an intruder is a new direction that the layer now amplifies more than almost all the old ones.
#
# minift stores weights as GPT-2 does, $[\text{in}, \text{out}]$ ($y = xW$), the transpose, so there the
# output-space directions are the *right* singular vectors. Every function in `minift/measure/analysis.py` takes
# `layout="in_out"` (minift's, the default) or `"out_in"` (the paper's) and compares output spaces either way.
#
# A toy first, where we know the answer. $W_0$ is a random $64\times 64$ matrix. We change it four ways:
# (a) a rank-1 update $\sigma\,u v^\top$ with $\sigma = 1.5\,\sigma^0_1$ along a random direction $u$ made orthogonal
# to $W_0$'s top 10 left singular vectors — a planted intruder; (b) a small dense perturbation, 5% of
# $\lVert W_0 \rVert_F$; (c) an update exactly as large as (a), but along an *old* direction,
# $1.5\,\sigma^0_1\, u^0_4 {v^0_4}^\top$; (d) a dense perturbation as large as (a).

# %%
def planted_update(W0, r, gain, seed):
    """A rank-r update along r random output directions orthogonal to W0's top-10 left singular vectors
    ([out, in] layout), with singular values gain·σ⁰₁·(1, 1.1, 1.2, ...): r planted intruders."""
    g = np.random.default_rng(seed)
    U0, S0, _ = np.linalg.svd(W0)
    X = g.standard_normal((W0.shape[0], r))                                  # (out, r)
    X -= U0[:, :10] @ (U0[:, :10].T @ X)                                     # remove the top-10 old directions
    U, V = np.linalg.qr(X)[0], np.linalg.qr(g.standard_normal((W0.shape[1], r)))[0]   # (out, r), (in, r)
    return gain * S0[0] * (U * (1 + 0.1 * np.arange(r))) @ V.T               # (out, in)


rng = np.random.default_rng(0)
d = 64
W0_toy = rng.standard_normal((d, d)) / math.sqrt(d)                          # (out, in), the paper's layout
U0, S0, V0t = np.linalg.svd(W0_toy)
noise = rng.standard_normal((d, d))                                          # (out, in)
updates = {"(a) planted rank-1": planted_update(W0_toy, 1, 1.5, seed=1),
           "(b) dense, 5%": 0.05 * np.linalg.norm(W0_toy) * noise / np.linalg.norm(noise),
           "(c) rank-1, old direction": 1.5 * S0[0] * np.outer(U0[:, 3], V0t[3])}
size_a = np.linalg.norm(updates["(a) planted rank-1"])
updates["(d) dense, as large as (a)"] = size_a * noise / np.linalg.norm(noise)
toy = {name: intruder_dimensions(W0_toy, W0_toy + dW, k=K, eps=0.5, layout="out_in") for name, dW in updates.items()}
print(f"{'update':<28}{'‖ΔW‖/‖W0‖':>10}{'intruders':>10}  at rank j   max|cos| of the top-10 vectors of W_t")
for name, res in toy.items():
    rel = np.linalg.norm(updates[name]) / np.linalg.norm(W0_toy)
    print(f"{name:<28}{rel:>10.3f}{res['count']:>10}  {str(res['indices'].tolist()):<10} {res['max_cos']}")

# %% [markdown]
# Read the rows. (a) Its top singular vector ($j = 0$, counting from 0) has a $\max|\cos|$ with every old direction
# far below $\varepsilon$ (the first number in its row): the planted $u$, found. Its other nine top vectors are old
# ones, slightly rotated. (b) The small dense perturbation keeps every top vector close to an old one (all its cosines
# above 0.7, though not all near 1: a random $W_0$ has nearly equal top singular values, so even small noise rotates
# neighbours into each other a little — one reason $\varepsilon$ is not set near 1). (c) The same size as (a), but along
# $u^0_4$: it becomes the top direction with $\cos = 1$ — size alone does not make an intruder, novelty does. (d) Dense
# noise as large as (a) rotates the top vectors much more, some towards $\varepsilon$, but none as far as the planted
# one.
#
# **Check.** (a) has exactly one intruder, at rank 0, whose $\max|\cos|$ is within 0.1 of the planted direction's
# own $\max_i|{u^0_i}^\top u|$, and whose singular value is within 20% of $1.5\,\sigma^0_1$; (b) and (c) have none, (b)
# with every cosine above 0.7, (c) with every cosine above 0.99; (d)'s lowest $\max|\cos|$ is above (a)'s intruder's.
# Then Algorithm 1 written out in NumPy agrees with `intruder_dimensions` to $10^{-12}$, and minift's layout gives the
# same answer on the transposed matrices ($\texttt{in\_out}$ on $W^\top$ = $\texttt{out\_in}$ on $W$), bit for bit.

# %%
a = toy["(a) planted rank-1"]
dW_a = updates["(a) planted rank-1"]
u_planted = np.linalg.svd(dW_a)[0][:, 0]                                     # (out,) the planted direction
own = np.abs(U0.T @ u_planted).max()
print(f"(a): planted direction's max|cos| with W0's basis {own:.3f}; found intruder's {a['max_cos'][0]:.3f}; its "
      f"singular value {a['singular_values'][0]:.3f} vs 1.5·σ⁰₁ = {1.5 * S0[0]:.3f}")
assert a["count"] == 1 and a["indices"].tolist() == [0] and abs(a["max_cos"][0] - own) < 0.1
assert abs(a["singular_values"][0] / (1.5 * S0[0]) - 1) < 0.2
assert toy["(b) dense, 5%"]["count"] == 0 and toy["(c) rank-1, old direction"]["count"] == 0
assert toy["(b) dense, 5%"]["max_cos"].min() > 0.7 and toy["(c) rank-1, old direction"]["max_cos"].min() > 0.99
assert toy["(d) dense, as large as (a)"]["max_cos"].min() > a["max_cos"][0]

Wt_a = W0_toy + dW_a
by_hand = np.abs(np.linalg.svd(Wt_a)[0][:, :K].T @ U0).max(axis=1)           # (K,) Algorithm 1, written out
assert np.abs(by_hand - a["max_cos"]).max() < 1e-12
minift_layout = intruder_dimensions(W0_toy.T, Wt_a.T, k=K, eps=0.5)          # layout="in_out": [in, out]
assert np.array_equal(minift_layout["max_cos"], a["max_cos"]) and minift_layout["count"] == a["count"]
print(f"by hand vs intruder_dimensions: max |difference| {np.abs(by_hand - a['max_cos']).max():.1e}; "
      "layout in_out on Wᵀ == out_in on W: True")

# %% [markdown]
# ## 2. The noise floor: how far is "random"?
#
# How small is $\max_i|\cos|$ for a direction that has nothing to do with $W_0$? Let $x$ be a random unit vector in
# $\mathbb R^d$ and $u^0_1..u^0_d$ any orthonormal basis; by rotation invariance take the coordinate axes, so the
# cosines are the coordinates $x_i \approx g_i/\sqrt d$ with $g_i \sim \mathcal N(0,1)$. The Gaussian maximum bound
# $\mathbb E\max_{i\le d}|g_i| \le \sqrt{2\ln(2d)}$ gives
#
# $$\max_i|\cos(x, u^0_i)| \;\approx\; \sqrt{\frac{2\ln(2d)}{d}} \quad(\text{an upper estimate}), \qquad
#   \max_i|x_i| \ge \frac{1}{\sqrt d} \ \text{ since } \sum_i x_i^2 = 1 .$$
#
# Against an *incomplete* basis of $m < d$ vectors (a $[\text{out}, \text{in}]$ matrix with $\text{out} >
# \text{in}$ has only $\text{in}$ left singular vectors) the level drops to about $\sqrt{2\ln(2m)/d}$.
# `random_baseline(d, basis_dim=m)` simulates it: 1000 random orthonormal 10-frames, the max $|\cos|$ of each vector,
# and how many of the 10 Algorithm 1 would call intruders at each $\varepsilon$.

# %%
dims = (64, 128, 256, 768)
rb = {dim: random_baseline(dim, k=K, trials=1000, seed=0) for dim in dims}
g = np.random.default_rng(1)
print(f"{'d':>5}{'mean':>8}{'5%':>8}{'95%':>8}{'numpy':>8}{'formula':>9}{'floor':>8}"
      "  false intruders of 10 at ε=0.3 / 0.5")
direct = {}
for dim in dims:
    x = g.standard_normal((2000, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)                            # (2000, dim) random unit vectors
    direct[dim] = np.abs(x).max(axis=1).mean()                               # max |cos| against the axes
    r = rb[dim]
    print(f"{dim:>5}{r['mean']:>8.3f}{r['quantiles'][0.05]:>8.3f}{r['quantiles'][0.95]:>8.3f}{direct[dim]:>8.3f}"
          f"{r['formula']:>9.3f}{r['floor']:>8.3f}  {r['false_intruders'][0.3]:>6.2f} / "
          f"{r['false_intruders'][0.5]:.2f}")

# the four linears of a demo block, in minift's [in, out]: output dimension, and the basis W0 has there
shapes = {n.split(".", 2)[2]: tuple(base.params[n].shape) for n in linear_weight_names(base.params)[:4]}
rb_shapes = {}
for name, (d_in, d_out) in shapes.items():
    r = rb_shapes[name] = random_baseline(d_out, k=K, trials=1000, seed=0, basis_dim=min(d_in, d_out))
    print(f"  {name:<20} [{d_in}, {d_out}]: output space R^{d_out}, W0 spans {min(d_in, d_out)} of it; random "
          f"max|cos| {r['mean']:.3f} (5–95%: {r['quantiles'][0.05]:.3f}–{r['quantiles'][0.95]:.3f}), "
          f"formula √(2ln(2m)/d) = {r['formula']:.3f}")

# %% [markdown]
# Read the table. `mean`, `5%`, `95%`: the simulated max $|\cos|$ of a random direction; `numpy`: the same measured
# directly on 2000 random unit vectors; `formula`: $\sqrt{2\ln(2d)/d}$, a little above the mean (it bounds the expected
# maximum from above; the check prints the ratio); `floor`: $1/\sqrt d$, which no direction can beat. The random level
# falls with the width: at $d = 64$ the 95% quantile is less than 0.15 below the paper's $\varepsilon = 0.5$, at GPT-2's
# 768 it is under a third of it. The indented lines are the demo model's own output spaces: at its width 128 the level
# of the $d = 128$ row, and in the 384- and 512-wide output spaces of `c_attn` and `c_fc`, where $W_0$ spans only 128
# directions, lower still. The last column: at $\varepsilon \ge 0.5$ *every* random direction counts as an intruder at
# these widths — which is what we want (a new direction is caught), but it also means a direction only *half* new (a
# cosine just under 0.5 with one old direction) is caught too, and in a narrow model the gap between "random" and
# "0.5" is small. So we will not trust one threshold: we sweep $\varepsilon$ from 0.1 to 0.9 and draw the random
# baseline beside every count.
#
# **Check.** For every $d$: floor < 5% quantile, mean < formula < 1.25 × mean, and the direct NumPy simulation within
# 0.01 of `random_baseline`'s mean; at $\varepsilon = 0.5$ at least 9.9 of 10 random directions are false intruders,
# and at $d = 64$ none at $\varepsilon = 0.1$, which is below the floor $1/\sqrt{64} = 0.125$. The levels the prose
# reads off the table: $0.5 - {}$(95% at 64) $< 0.15$, 95% at 768 $< 0.5/3$, and the 384- and 512-wide output spaces
# below the 128-wide ones.

# %%
for dim, r in rb.items():
    assert r["floor"] < r["quantiles"][0.05] and r["mean"] < r["formula"] < 1.25 * r["mean"], (dim, r["mean"])
    assert abs(direct[dim] - r["mean"]) < 0.01 and r["false_intruders"][0.5] >= 9.9
assert random_baseline(64, k=K, eps_values=(0.1,))["false_intruders"][0.1] == 0
assert 0.5 - rb[64]["quantiles"][0.95] < 0.15 and rb[768]["quantiles"][0.95] < 0.5 / 3
wide = max(rb_shapes[n]["mean"] for n in ("attn.c_attn.weight", "mlp.c_fc.weight"))      # 384 and 512 wide
assert wide < rb_shapes["attn.c_proj.weight"]["mean"], rb_shapes                                 # 128 wide
print("formula / mean:", {dim: round(r["formula"] / r["mean"], 3) for dim, r in rb.items()})

# %% [markdown]
# ## 3. Fine-tune five ways and count intruders
#
# Now the real thing: the shipped base (`data/base-demo`, width 128, 4 blocks, 16 linear matrices) fine-tuned on the
# sentiment task five ways, same data order, seed and step budget:
#
# | run | what trains | scale $s$ |
# |---|---|---|
# | full | every weight, lr $10^{-3}$ (tutorial 06) | — |
# | LoRA $r = 1, 8, 32$ | adapters on all 16 linears, $\alpha = 8r$ | $\alpha/r = 8$ |
# | rsLoRA $r = 32$ | the same, $\alpha = 64$ (the $r=8$ run's $\alpha$), `rslora=True` | $\alpha/\sqrt r = 11.3$ |
#
# LoRA trains adapters and head at one rate, $10^{-3}$, with $s = 8$ — tutorial 07's alternative to minift's default
# ($\alpha = 2r$, $s = 2$, with the adapters at $2\cdot10^{-3}$ and the head at $3\cdot10^{-4}$); both are written
# out, so the numbers below do not move when defaults change. The rank sweep keeps $s$ fixed, as
# `minift compare --ranks` does; rsLoRA keeps $\alpha$ instead. (Section 6 says what the default setting gave.)
#
# For each we take the effective weights $W_t = W_0 + \Delta W$ of the 16 matrices (`lora.effective_weights()`
# folds the adapters in), sum the intruder counts over matrices for every $\varepsilon$ (`intruder_sweep`, one pair
# of SVDs per matrix), and summarise each update by its size $\lVert\Delta W\rVert_F/\lVert W_0\rVert_F$ and its
# **effective rank** (Roy & Vetterli), averaged over the matrices:
#
# $$\operatorname{erank}(\Delta W) = \exp\Big(-\sum_i p_i \ln p_i\Big), \quad p_i = \frac{\sigma_i(\Delta W)}{\sum_l
#   \sigma_l(\Delta W)}, \qquad \operatorname{erank} \le \operatorname{rank}(\Delta W) \le r \text{ for LoRA}.$$

# %%
STEPS = pick(500, 20)
EVAL = pick(500, 64)                                     # validation / test examples per evaluation
EPS = np.round(np.arange(0.1, 0.95, 0.1), 2)             # 0.1 … 0.9
PLAN = {"full": None,
        "lora r=1": LoRAConfig(r=1, alpha=8, targets="all-linear"),
        "lora r=8": LoRAConfig(r=8, alpha=64, targets="all-linear"),
        "lora r=32": LoRAConfig(r=32, alpha=256, targets="all-linear"),
        "rslora r=32": LoRAConfig(r=32, alpha=64, rslora=True, targets="all-linear")}
RATES = {"lr": 1e-3, "head_lr": 1e-3}                   # LoRA: adapters and head at one rate (tutorial 07, section 6)
NAMES = linear_weight_names(base.params)                 # the 16 block linears, in layer order
W0 = {n: to_numpy(base.params[n]) for n in NAMES}        # [in, out] each


def tuned_weights(model, lora):
    """name -> W0 + ΔW of every block linear (adapters folded in for LoRA)."""
    W = {n: to_numpy(model.params[n]) for n in NAMES}
    if lora is not None:
        W.update({n: to_numpy(w) for n, w in lora.effective_weights().items()})
    return W


# (workers=1: the whole batch in one thread, the path the numbers quoted below come from on any machine; the
# default, "auto", splits it across 2 threads where that is faster and changes the last bits.)
runs = {}
for label, lcfg in PLAN.items():
    fcfg = FinetuneConfig(method="full" if lcfg is None else "lora", lora=lcfg, steps=STEPS, eval_size=EVAL,
                          eval_every=0, workers=1, **({} if lcfg is None else RATES))
    model, lora, summary = finetune(base, tok, fcfg, progress=not FAST)
    Wt = tuned_weights(model, lora)
    spectra = [spectrum_compare(W0[n], Wt[n]) for n in NAMES]
    runs[label] = dict(model=model, summary=summary, W=Wt,
                       counts=sum(intruder_sweep(W0[n], Wt[n], k=K, eps_values=EPS)["counts"] for n in NAMES),
                       size=np.mean([s["relative_change"] for s in spectra]),
                       erank=np.array([s["effective_rank_delta"] for s in spectra]))

# the random baseline for the same 16 shapes: expected false intruders among 10 random directions, summed
random_counts = sum(np.array(list(random_baseline(W0[n].shape[1], k=K, trials=200, seed=0,
                                                  basis_dim=min(W0[n].shape), eps_values=EPS)
                                  ["false_intruders"].values())) for n in NAMES)
i3, i4, i5, i7 = (int(np.flatnonzero(EPS == e)[0]) for e in (0.3, 0.4, 0.5, 0.7))
smoke()
print(f"{'run':<12}{'trainable':>11}{'val acc':>8}{'test acc':>9}{'‖ΔW‖/‖W0‖':>11}{'erank ΔW':>9}"
      f"   intruders at ε = 0.3 / 0.5 / 0.7")
for label, r in runs.items():
    s = r["summary"]
    print(f"{label:<12}{s['trainable']:>11,}{s['val_accuracy']:>8.3f}{s['test_accuracy']:>9.3f}{r['size']:>11.3f}"
          f"{r['erank'].mean():>9.1f}   {r['counts'][i3]:>4} / {r['counts'][i5]:>3} / {r['counts'][i7]:>3}")
print(f"{'random':<12}{'':>56}   {random_counts[i3]:>4.0f} / {random_counts[i5]:>3.0f} / {random_counts[i7]:>3.0f}"
      f"   (of {K * len(NAMES)} top vectors)")
acc = {label: r["summary"]["test_accuracy"] for label, r in runs.items()}
size = {label: r["size"] for label, r in runs.items()}
intr3, intr5 = ({label: int(r["counts"][i]) for label, r in runs.items()} for i in (i3, i5))
lora_labels = [label for label in runs if label != "full"]
verdict("full fine-tuning learned the task best (the highest test accuracy)",
        all(acc["full"] > acc[label] for label in lora_labels))
verdict("LoRA r=1 stayed near chance on the test split (within 0.05 of 0.5)", abs(acc["lora r=1"] - 0.5) < 0.05)
verdict("with s fixed, LoRA's update grows with the rank (r=1 < r=8 < r=32), and rsLoRA's is the largest of all",
        size["lora r=1"] < size["lora r=8"] < size["lora r=32"] < size["rslora r=32"] and
        size["rslora r=32"] == max(size.values()))
verdict("intruders at ε=0.5 rise with the rank (r=1 < r=8 < r=32), and rsLoRA r=32 has the most",
        intr5["lora r=1"] < intr5["lora r=8"] < intr5["lora r=32"] and intr5["rslora r=32"] == max(intr5.values()))
verdict("full fine-tuning has intruders at ε=0.5 too, and LoRA r=8 has at most 5 more",
        0 < intr5["full"] and intr5["lora r=8"] <= intr5["full"] + 5)
verdict("at ε=0.3 full fine-tuning and LoRA r ≤ 8 have none, the two rank-32 runs some",
        intr3["full"] == intr3["lora r=1"] == intr3["lora r=8"] == 0 < min(intr3["lora r=32"], intr3["rslora r=32"]))
verdict("the random row is all 160 from ε=0.4 up, and every run is below it there, under a quarter of it at ε=0.5",
        all(random_counts[i4:] >= K * len(NAMES) - 0.5) and all(np.all(r["counts"][i4:] < random_counts[i4:])
                                                                 for r in runs.values())
        and max(intr5.values()) < random_counts[i5] / 4)

# %% [markdown]
# Read the table. `trainable`: parameters that received gradients (LoRA: adapters + the 256-number head). `val acc`,
# `test acc`: accuracy on `EVAL` validation and test reviews, 500 each (64 in fast mode; the test split uses review
# templates never seen in training; chance is 0.5). `‖ΔW‖/‖W0‖`: how far the 16 matrices moved, on average. `erank ΔW`:
# the update's effective rank, averaged. The intruder columns: of the $16 \times 10 = 160$ top singular vectors, how
# many have $\max|\cos| < \varepsilon$ with every singular vector of the base matrix; the `random` row: how many 160
# random directions would.
#
# Under the table, the claims this paragraph makes, each printed with whether it held in this run (normal mode
# asserts them). Full fine-tuning learned the task best; LoRA r=1 did not leave chance on the test split. With $s$
# fixed at 8, LoRA's $\lVert\Delta W\rVert$ grows with the rank (like $\sqrt r$, tutorial 07, section 3), and
# rsLoRA's $s = 11.3$ makes its update the largest. Full fine-tuning's $\Delta W$ has a far higher effective rank
# (of a possible 128) than LoRA's, which is at most $r$. Intruders at $\varepsilon = 0.5$ rise with the rank, rsLoRA
# r=32 having the most; but full fine-tuning has some too — the paper's full fine-tunes had almost none — and LoRA r=8
# only a few more. At $\varepsilon = 0.3$, near the random level, only the rank-32 runs keep intruders: directions as
# unrelated to $W_0$ as random ones. The random row is all 160 from $\varepsilon = 0.4$ up, and every real count is
# below it, at $\varepsilon = 0.5$ far below: most fine-tuned top directions are old ones, moved.

# %%
example = max(NAMES, key=lambda n: intruder_dimensions(W0[n], runs["lora r=8"]["W"][n], k=K)["count"])   # r=8's most
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
top = 40
ax1.semilogy(singular_values(W0[example])[:top], "k.-", label="W0 (base)")
for label, style in (("full", "C0"), ("lora r=8", "C1"), ("lora r=32", "C3")):
    Wt_e = runs[label]["W"][example]
    res = intruder_dimensions(W0[example], Wt_e, k=K, eps=0.5)
    sv = singular_values(Wt_e)[:top]
    ax1.semilogy(sv, ".-", color=style, alpha=0.7, label=f"{label} ({res['count']} intruders at ε=0.5)")
    ax1.semilogy(res["indices"], sv[res["indices"]], "x", color=style, ms=10, mew=2)
ax1.set(xlabel="index j (largest first)", ylabel="singular value",
        title=f"{example}: top {top} singular values (× = intruder)")
ax1.legend(fontsize=8)
for i, (label, r) in enumerate(runs.items()):
    ax2.plot(EPS, r["counts"], "o-", color=f"C{i}", label=label)
ax2.plot(EPS, random_counts, "k--", label="random directions")
ax2.axvline(0.5, color="gray", lw=0.8)
ax2.set(xlabel="ε", ylabel=f"intruders, summed over {len(NAMES)} matrices (of {K * len(NAMES)})",
        title="intruders vs ε, with the random baseline")
ax2.legend(fontsize=8)
show(fig, "10_spectra_and_intruders")
in_example = {label: intruder_dimensions(W0[example], runs[label]["W"][example], k=K)["count"] for label in runs}
print(f"left plot: {example}; its intruders at ε=0.5: {in_example}")
verdict("in this matrix LoRA's tuned spectra have intruders and full fine-tuning's has none",
        in_example["full"] == 0 < in_example["lora r=8"])
print(format_intruders(model_intruders(W0, runs["lora r=8"]["W"], k=K, eps=0.5)))

# %% [markdown]
# The left plot shows one matrix, the one where LoRA r=8 has the most intruders (named under the plot, with every
# run's count in it): the tuned spectra lie on the base's except near the top, where LoRA's bulge above it — and
# most of the bulge is intruders, the crosses (full fine-tuning has none in this matrix: the verdict line). The right
# plot is the whole sweep: every curve rises with $\varepsilon$ (a larger $\varepsilon$ calls more directions "new"),
# all below the random line from $\varepsilon = 0.4$ up. The table below it is `model_intruders` for LoRA r=8 at
# $\varepsilon = 0.5$: intruders per matrix and the lowest $\max|\cos|$ among its top 10 (compare with section 2's
# random levels for these shapes: near them is "as new as random").
#
# **Check.** Deterministic facts first: every count is non-decreasing in $\varepsilon$; `model_intruders`' total at
# $\varepsilon = 0.5$ equals the sweep's; LoRA's $\Delta W$ has effective rank at most $r$ in every matrix (1% for
# float32 rounding in $W_0 + \Delta W$); the random baseline counts all 160 at $\varepsilon = 0.5$. Then the measured
# facts with a wide margin (normal mode): full fine-tuning's mean effective rank is more than 4× LoRA r=8's and above
# 32; LoRA r=32 has at least twice r=1's intruders at $\varepsilon = 0.5$ and at least 10 more.

# %%
for label, r in runs.items():
    assert np.all(np.diff(r["counts"]) >= 0), label
    assert model_intruders(W0, r["W"], k=K, eps=0.5)["total"] == r["counts"][i5], label
    if PLAN[label] is not None:
        assert r["erank"].max() <= 1.01 * PLAN[label].r, (label, r["erank"].max())
assert random_counts[i5] >= 0.99 * K * len(NAMES)
erank = {label: r["erank"].mean() for label, r in runs.items()}
smoke()
print("mean effective rank of ΔW:", {k: round(float(v), 1) for k, v in erank.items()})
print("intruders at ε=0.5:", intr5)
assert erank["full"] > 4 * erank["lora r=8"]
if not FAST:                                         # at full size only: 20 steps barely move the weights
    assert erank["full"] > 32
    assert intr5["lora r=32"] >= max(2 * intr5["lora r=1"], intr5["lora r=1"] + 10), intr5

# %% [markdown]
# ## 4. Forgetting: the held-out language-model loss
#
# The paper's second measurement: did the fine-tuned model get worse at what it was pretrained on? minift's
# `minift compare` measures it as the change of the language-model loss on held-out pretraining text (world-corpus
# documents pretraining never saw), through the tied LM head that every fine-tuned body keeps:
#
# $$\Delta\mathcal L_\text{LM} = \mathcal L_\text{LM}(W_0 + \Delta W) - \mathcal L_\text{LM}(W_0), \qquad
#   \mathcal L_\text{LM} = -\frac{1}{N}\sum_{t} \ln p(x_{t+1}\mid x_{\le t}),$$
#
# over the same 32 windows of 128 tokens for every model (8 in fast mode). Positive means forgotten.

# %%
heldout = heldout_world_ids(tok, n_chars=pick(200_000, 60_000))
heldout = heldout[:pick(32, 8) * base.cfg.n_ctx + 1]                        # the windows every model is scored on
base_lm = lm_loss(base, heldout, max_windows=None)
for label, r in runs.items():
    r["forgetting"] = lm_loss(r["model"], heldout, max_windows=None) - base_lm
smoke()
print(f"base model: LM loss {base_lm:.4f} nats/token on {len(heldout) - 1:,} held-out tokens")
print(f"{'run':<12}{'ΔLM':>9}{'intruders ε=0.5':>17}{'‖ΔW‖/‖W0‖':>11}{'test acc':>9}")
for label, r in runs.items():
    print(f"{label:<12}{r['forgetting']:>+9.4f}{intr5[label]:>17}{r['size']:>11.3f}"
          f"{r['summary']['test_accuracy']:>9.3f}")

# %% [markdown]
# `ΔLM` is in nats per token (the base's own loss, printed above the table, is low: it predicts this generated world
# text well). LoRA r=1 forgot almost nothing — but it also barely learned the task; LoRA r=8 forgot less than half of
# what full fine-tuning did, as the paper (and Biderman et al.'s "LoRA learns less and forgets less") would lead you
# to expect. But the order is not "LoRA < full" at every rank: both rank-32 runs forgot more than one and a half
# times as much as full fine-tuning. With $s$ fixed, a higher rank is a *larger* update here (the `‖ΔW‖/‖W0‖`
# column), concentrated in a few new directions.
#
# **Check.** Every model's loss is finite and no model is better than the base by more than 0.05 (fine-tuning on
# reviews should not teach the world corpus); in normal mode, with wide margins: LoRA r=1 forgets less than 0.5 and
# less than a quarter of full fine-tuning's; forgetting rises with the rank, r=1 < r=8 < r=32. The two comparisons
# with full fine-tuning above are printed as verdicts.

# %%
forget = {label: r["forgetting"] for label, r in runs.items()}
assert all(np.isfinite(v) and v > -0.05 for v in forget.values()), forget
if not FAST:                                         # at full size only (fast mode: 20 steps)
    assert forget["lora r=1"] < min(0.5, forget["full"] / 4), forget
    assert forget["lora r=1"] < forget["lora r=8"] < forget["lora r=32"], forget
verdict("LoRA r=8 forgot less than half of full fine-tuning's ΔLM", forget["lora r=8"] < forget["full"] / 2)
verdict("both rank-32 runs forgot more than 1.5 × full fine-tuning's ΔLM",
        min(forget["lora r=32"], forget["rslora r=32"]) > 1.5 * forget["full"])

# %% [markdown]
# ## 5. The mitigation: shrink the intruders
#
# If forgetting lives in the intruder dimensions, shrinking them should undo some of it. The paper's intervention
# (also in Hugging Face PEFT) multiplies each intruder's singular value by $\lambda$:
#
# $$W' = W_t + (\lambda - 1)\sum_{j \in \text{intruders}} \sigma_j\, u_j v_j^\top, \qquad \lambda \approx 0.75,$$
#
# leaving every other singular triplet of $W_t$ as it is. `scale_intruders(W0, W_t, eps=0.5, lam=0.75)` does it in
# minift's layout. We apply it to all 16 matrices of every run and score the result on the same held-out text and the
# same test reviews; then a $\lambda$ sweep on LoRA r=8.

# %%
_, _, test_split = load_task_splits("sentiment", eval_size=EVAL)


def mitigated(label, lam, eps=0.5):
    """(ΔLM, test accuracy) of run `label` with its intruders' singular values scaled by lam."""
    model = runs[label]["model"].to()                    # a plain copy: weights, head, no adapters
    for n in NAMES:
        model.params[n][...] = model.xp.asarray(scale_intruders(W0[n], runs[label]["W"][n], k=K, eps=eps, lam=lam))
    return lm_loss(model, heldout, max_windows=None) - base_lm, split_metrics(model, test_split, tok, 128)["accuracy"]


LAM = 0.75
after = {label: mitigated(label, LAM) for label in runs}
smoke()
print(f"λ = {LAM}, ε = 0.5:  {'run':<12}{'ΔLM before':>11}{'after':>9}{'test acc before':>16}{'after':>7}")
for label, (f_after, acc_after) in after.items():
    r = runs[label]
    print(f"{'':<18}{label:<12}{r['forgetting']:>+11.4f}{f_after:>+9.4f}{r['summary']['test_accuracy']:>16.3f}"
          f"{acc_after:>7.3f}")
lams = (1.0, 0.75, 0.5, 0.25, 0.0)
sweep = [mitigated("lora r=8", lam) for lam in lams]
print("LoRA r=8, λ sweep:  " + "   ".join(f"λ={lam}: ΔLM {f:+.3f}, acc {acc:.3f}" for lam, (f, acc) in
                                       zip(lams, sweep)))
f_sweep, acc_sweep = [f for f, _ in sweep], [a for _, a in sweep]
verdict(f"λ = {LAM} lowered every run's forgetting", all(after[label][0] < forget[label] for label in runs))
verdict(f"λ = {LAM} moved no run's test accuracy by more than 0.05",
        all(abs(after[label][1] - acc[label]) <= 0.05 for label in runs))
verdict("λ sweep: forgetting is lowest at an intermediate λ, and rises again at λ = 0",
        min(f_sweep[1:-1]) < min(f_sweep[0], f_sweep[-1]) and f_sweep[-1] > min(f_sweep))
verdict("λ sweep: accuracy falls at every step, to within 0.05 of chance at λ = 0",
        bool(np.all(np.diff(acc_sweep) < 0)) and abs(acc_sweep[-1] - 0.5) < 0.05)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(lams, [f for f, _ in sweep], "o-", color="C1", label="forgetting ΔLM (left)")
ax.set(xlabel="λ (intruders' singular values × λ)", ylabel="ΔLM, nats/token",
       title="LoRA r=8: scaling the intruders")
ax.invert_xaxis()
ax2 = ax.twinx()
ax2.plot(lams, [acc for _, acc in sweep], "s--", color="C2", label="test accuracy (right)")
ax2.set(ylabel="test accuracy", ylim=(0.4, 1.0))
handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
ax.legend(handles, [h.get_label() for h in handles], loc="upper center", fontsize=8)
show(fig, "10_mitigation")

# %% [markdown]
# Read the first table: forgetting and test accuracy of each run before and after $\lambda = 0.75$. It lowered every
# run's forgetting, while test accuracy moved by a few hundredths at most (the verdicts under the λ sweep). The sweep on
# LoRA r=8 goes further. Forgetting falls at first, then *rises* again at $\lambda = 0$: deleting those directions
# outright removes some of what the base knew too — at $\varepsilon = 0.5$ an "intruder" can still be half an old
# direction. Accuracy falls at every step, to chance at $\lambda = 0$: the task *is* in those directions. The paper's
# $\lambda \approx 0.75$ is the mild end of the trade. (The sweep alone does not show that intruders are special —
# shrinking any large new direction might reduce forgetting too; that needs a control, such as scaling non-intruder
# directions of the same size.)
#
# **Check.** Deterministic: $\lambda = 1$ gives $W_t$ back bit for bit; on the LoRA matrix with the most intruders
# the new singular values are exactly the old ones with the intruders' multiplied by $\lambda$ ($10^{-5}$ of
# $\sigma_1$: float32); a matrix without intruders is unchanged; and at $\lambda = 1$ the plain copy forgets exactly
# what the LoRA model did ($10^{-3}$). Measured, normal mode: for LoRA r=8, $\lambda = 0.75$ lowers forgetting by at
# least 0.1 and costs at most 0.1 of test accuracy; and $\lambda = 0$ forgets less than $\lambda = 1$.

# %%
n_intr = lambda label, n: intruder_dimensions(W0[n], runs[label]["W"][n], k=K)["count"]    # noqa: E731
label_m, name_m = max(((label, n) for label in runs if PLAN[label] is not None for n in NAMES),
                      key=lambda pair: n_intr(*pair))                      # the LoRA matrix with the most intruders
Wt_m = runs[label_m]["W"][name_m]
assert np.array_equal(scale_intruders(W0[name_m], Wt_m, k=K, eps=0.5, lam=1.0), Wt_m)
res = intruder_dimensions(W0[name_m], Wt_m, k=K, eps=0.5)
expected = singular_values(Wt_m)
expected[res["indices"]] *= LAM
expected = np.sort(expected)[::-1]
got = singular_values(scale_intruders(W0[name_m], Wt_m, k=K, eps=0.5, lam=LAM))
print(f"{label_m}, {name_m}: intruders at j = {res['indices'].tolist()}, singular values {res['singular_values']} "
      f"× {LAM}; max |difference| from the prediction {np.abs(expected - got).max() / got[0]:.1e} of σ₁")
assert np.allclose(expected, got, rtol=1e-5, atol=1e-5 * got[0])
W1 = runs["lora r=1"]["W"]
clean = [n for n in NAMES if intruder_dimensions(W0[n], W1[n], k=K)["count"] == 0]          # matrices without any
assert clean and all(np.array_equal(scale_intruders(W0[n], W1[n], k=K, lam=LAM), W1[n]) for n in clean)
assert abs(sweep[0][0] - runs["lora r=8"]["forgetting"]) < 1e-3                # λ = 1: the unmitigated model
if not FAST:                                         # at full size only (fast mode: 20 steps)
    (f1, acc1), (f075, acc075), f0 = sweep[0], sweep[1], sweep[-1][0]
    assert f075 < f1 - 0.1 and acc075 > acc1 - 0.1 and f0 < f1, sweep

# %% [markdown]
# ## 6. An honest reading
#
# Which of the paper's findings show at this scale? One more number helps: across the five runs, does forgetting go
# with the number of intruders? Spearman's rank correlation $\rho$ is Pearson's correlation of the two lists' ranks.
# Tied values share the mean of the ranks they span (two runs tied for 1st and 2nd both get 1.5), so a tie counts
# as no order at all. Only when neither list has ties does it take the closed form, with $d_i$ the difference of
# run $i$'s two ranks,
#
# $$\rho = 1 - \frac{6\sum_i d_i^2}{n(n^2 - 1)} \quad (n = 5;\ \rho = 1 \text{: the same order}).$$

# %%
def average_ranks(values):
    """Ranks 1..n of values; tied values all get the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(v))
    ranks[np.argsort(v, kind="stable")] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        ranks[v == value] = ranks[v == value].mean()
    return ranks


def pearson(x, y):
    """Pearson correlation of x and y; nan if either is constant."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc ** 2).sum() * (yc ** 2).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else math.nan


labels = list(runs)
n = len(labels)
rank_i, rank_f = average_ranks([intr5[k] for k in labels]), average_ranks([forget[k] for k in labels])
rho = pearson(rank_i, rank_f)
closed = 1 - 6 * ((rank_i - rank_f) ** 2).sum() / (n * (n ** 2 - 1))           # exact only without ties
ties = len(set(intr5.values())) < n or len(set(forget.values())) < n
smoke()
print(f"intruder ranks {rank_i.tolist()}, forgetting ranks {rank_f.tolist()}")
print(f"Spearman ρ(intruders at ε=0.5, forgetting) over {n} runs = {rho:+.2f}; closed form {closed:+.2f}"
      f" ({'ties: the closed form does not apply' if ties else 'no ties: the two agree'})")
full_few = intr5["full"] <= intr5["lora r=8"] // 4                          # "almost none", relative to LoRA
findings = [
    ("LoRA has intruders, full fine-tuning (almost) none",
     f"r=8 {intr5['lora r=8']}, full {intr5['full']} (ε=0.5)",
     "yes" if full_few else "partly: full has some too" if intr5["lora r=8"] > intr5["full"] else "no"),
    ("intruders grow with LoRA's rank (s fixed at 8)",
     f"r=1/8/32: {intr5['lora r=1']}/{intr5['lora r=8']}/{intr5['lora r=32']}",
     "yes" if intr5["lora r=1"] < intr5["lora r=8"] < intr5["lora r=32"] else "not monotone"),
    ("full fine-tuning's ΔW has the higher effective rank",
     f"{erank['full']:.0f} vs {erank['lora r=32']:.0f} (r=32)",
     "yes" if erank["full"] > max(v for k, v in erank.items() if k != "full") else "no"),
    ("LoRA forgets less than full fine-tuning",
     f"ΔLM r=8 {forget['lora r=8']:+.2f}, full {forget['full']:+.2f}",
     "at every rank" if max(v for k, v in forget.items() if k != "full") < forget["full"] else
     "at low rank only" if forget["lora r=1"] < forget["full"] else "no"),
    ("forgetting goes with intruders", f"Spearman ρ = {rho:+.2f}", "roughly" if rho > 0.5 else "weakly or not"),
    ("scaling intruders by 0.75 cuts forgetting, keeps accuracy",
     f"r=8 ΔLM {forget['lora r=8']:+.2f} → {after['lora r=8'][0]:+.2f}",
     "yes" if after["lora r=8"][0] < forget["lora r=8"] and
     after["lora r=8"][1] > runs["lora r=8"]["summary"]["test_accuracy"] - 0.05 else "no"),
    ("higher-rank rsLoRA looks like full fine-tuning",
     f"rsLoRA r=32: {intr5['rslora r=32']} intruders",
     "yes" if intr5["rslora r=32"] <= intr5["full"] else "no, not here")]
for claim, here, found in findings:
    print(f"  {claim:<58} {here:<36} {found}")

# %% [markdown]
# **Check.** `average_ranks` gives tied values the mean of their ranks (on a fixed example); $|\rho| \le 1$ and it
# equals NumPy's Pearson correlation of the rank vectors; without ties, the closed form equals it; and in normal mode
# $\rho$ is positive (printed above), with full fine-tuning the run out of order: fewer intruders than LoRA r=8, more
# forgetting (the verdict below).
#
# The printed table: each finding of the paper, the numbers measured here, and a verdict computed from them (in fast
# mode, 20 steps, a smoke run: the verdicts mean nothing).

# %%
assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
assert average_ranks([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
if not math.isnan(rho):
    assert abs(rho) <= 1 and abs(rho - np.corrcoef(rank_i, rank_f)[0, 1]) < 1e-12
    if not ties:
        assert abs(closed - rho) < 1e-12
if not FAST:                                         # at full size only (fast mode: 20 steps)
    assert rho > 0, rho
verdict("full fine-tuning has fewer intruders than LoRA r=8 at ε=0.5, but forgets more",
        intr5["full"] < intr5["lora r=8"] and forget["full"] > forget["lora r=8"])
verdict("rsLoRA r=32 has the most forgetting, and the lowest test accuracy of the three larger LoRA runs",
        forget["rslora r=32"] == max(forget.values()) and
        acc["rslora r=32"] < min(acc["lora r=8"], acc["lora r=32"]))

# %% [markdown]
# What reproduces, in this 1-million-parameter model on a generated sentiment task:
#
# - **Intruders are a LoRA phenomenon that grows with rank.** LoRA r=1 has almost none, r=32 has many; directions as
#   unrelated to $W_0$ as random ones ($\varepsilon = 0.3$) appear in LoRA r=32 and rsLoRA, not in full fine-tuning.
#   The README's `minift compare --ranks 1,2,4,8,16,64` run (600 steps, minift's default $s = \alpha/r = 2$ at every
#   rank) measured the same trend, with LoRA's count above full fine-tuning's from r=16 up (last bullet below).
# - **Full fine-tuning's update is high-rank**, LoRA's cannot be (erank ≤ r).
# - **LoRA forgets less — at low rank.** And forgetting rises with the rank.
# - **The mitigation works**: $\lambda = 0.75$ reduces forgetting at a small accuracy cost.
#
# What does not, or only partly:
#
# - **Full fine-tuning has intruders too** at $\varepsilon = 0.5$, and LoRA r=8's lead over it is small. At width
#   128 a direction needs only to rotate past 60° from every old one to count; full fine-tuning here moved the
#   weights far (its `‖ΔW‖/‖W0‖` in section 3's table, after 500 steps at lr $10^{-3}$: a large update for a small
#   model), while
#   the paper's full fine-tunes of RoBERTa and LLaMA moved them very little. Sweeping $\varepsilon$ shows the
#   difference more clearly than one threshold: at $\varepsilon = 0.3$ only the rank-32 LoRA runs keep intruders.
# - **Higher-rank rsLoRA does not behave like full fine-tuning here**: with $\alpha = 64$ at $r = 32$ its scale is
#   11.3, its update the largest of all, and it has the most intruders and the most forgetting, while it learned the
#   task worst of the three larger LoRA runs (the verdicts in sections 3, 4 and above).
#   The paper's claim concerns models hundreds of times wider, where even a high rank is a small fraction of the
#   width; one run at a quarter of a toy model's width, with an $\alpha$ we chose, cannot settle it.
# - **Accuracy is not matched.** The paper compares methods *at equal accuracy*; here full fine-tuning learned the
#   task better than every LoRA run in the same 500 steps, and LoRA r=1 barely learned it. Part of "LoRA r=1 forgets
#   nothing" is "LoRA r=1 changed nothing".
# - **The trend depends on the setting.** With minift's default LoRA setting instead ($\alpha = 2r$, $s = 2$, adapters
#   at $2\cdot10^{-3}$, head at $3\cdot10^{-4}$), `minift compare --ranks 1,2,4,8,16,64` (600 steps; not run here)
#   prints intruders at $\varepsilon = 0.5$ that rise with the rank and stay below full fine-tuning's up to $r = 8$,
#   and forgetting in the same order as here.
# - Sizes and seeds: one seed per run, one task, 500 steps. The counts move by several between seeds and settings;
#   read the orders of magnitude and the trends, not single differences.
#
# And the article's §4.2: its models and tasks are close to the paper's (a BERT variant and GPT-style LLaMA;
# classification, sentiment among it), but the 70% / 80% savings (tutorial 09 measures where time and memory go),
# named-entity recognition and "better generalisation on small data" are not the paper's findings. Its finding is
# this tutorial: equal accuracy does not mean an equal model.

# %% [markdown]
# ## 7. Tasks in sequence: what continual learning does to intruders
#
# The paper's last finding is about time. Fine-tune on one task, then on the next, and the next — what the article's
# §1.2 calls continual improvement (持续改进) — and LoRA's intruder dimensions pile up: the paper trained on tasks
# one after another, merged each task's adapter into the weights before the next task got a fresh one, and reports
# that "LoRA models do accumulate intruder dimensions here" and "tend to perform worse in this setting".
#
# In miniature: four tasks made from minift's built-in `facts` task (questions about the people of tutorial 04's
# world, each answered with one sentence, " She lives in Oakford."), two relations each — where people live and
# work, their pets and pets' names, their friends and hobbies, their food and colours. The test questions are about
# people no training question mentions, so each task needs what pretraining stored. Each stage starts from the
# previous stage's model:
#
# $$W^{(k)} = W^{(k-1)} + \Delta W^{(k)}, \qquad W^{(0)} = W_0 \text{ (the base)},$$
#
# with $\Delta W^{(k)}$ full fine-tuning's update, or LoRA's $s\,B^{(k)}A^{(k)}$ folded in by `lora.merged_model()`
# (PEFT's `merge_and_unload`) before task $k+1$ attaches fresh adapters — what `minift finetune --merge` and
# `--base RUN/model` do from the command line. Intruders are always counted against $W_0$: Algorithm 1 on
# $W_0 \to W^{(k)}$. Each method keeps minift's defaults (full: lr $10^{-3}$; LoRA: $\alpha = 2r$, $s = 2$, lr
# $2\cdot10^{-3}$) for 200 steps a stage, stage $k$ with seed $k$ (a fresh adapter draw and data order).
#
# One more measurement separates *how* the model answers from *what it knows*: the loss on task 0's facts alone —
# "Thornfield" after "Question: Where does Edwin live?\nAnswer: He lives in", the answer's form given.

# %%
GROUPS = (("town", "job"), ("pet", "pet_name"), ("friend", "hobby"), ("food", "colour"))
STAGE_STEPS = pick(200, 10)
CL_PLAN = {"full": dict(method="full"),
           "full, wte/wpe frozen": dict(method="freeze", freeze_blocks=0),    # every block trains, the embeddings not
           **{f"lora r={r}": dict(method="lora", lora=LoRAConfig(r=r, alpha=2 * r, targets="all-linear"))
              for r in (1, 8, 64)}}


def relation_task(relations, folder):
    """A task folder holding the facts task's questions about `relations` only, split as the facts task is."""
    for split in ("train", "validation", "test"):
        lines = (data_dir() / "tasks" / "facts" / f"{split}.jsonl").read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["relation"] in relations]
        (folder / f"{split}.jsonl").write_text("\n".join(kept) + "\n")
    return folder


TASKS = [relation_task(g, out_dir("continual", f"task{k}")) for k, g in enumerate(GROUPS)]
TESTS = [load_task_splits(t, eval_size=pick(None, 32))[2] for t in TASKS]     # 250 test questions each


def fact_questions(k):
    """Task k's test questions with the answer's form given and only the fact left to predict:
    ("Question: Where does Edwin live?\nAnswer: He lives in", " Thornfield"), as token lists. The loss on those
    tokens alone measures what the model knows about the person, not how it phrases an answer."""
    prompts, facts = [], []
    for line in (TASKS[k] / "test.jsonl").read_text().splitlines()[:len(TESTS[k])]:
        row = json.loads(line)
        tail = ANSWERS[row["relation"]].rsplit("{", 1)[0].rsplit("}", 1)[1]   # " lives in ": the words before it
        cut = row["completion"].rindex(tail) + len(tail) - 1                   # the space that starts the fact
        prompts.append(tok.encode(row["prompt"] + row["completion"][:cut]))
        facts.append(tok.encode(row["completion"][cut:-1]))                    # the fact, without the final "."
    return prompts, facts


FACTS0 = fact_questions(0)
print(f"task 0's facts, e.g. {tok.decode(FACTS0[0][0])!r} → {tok.decode(FACTS0[1][0])!r}")


def fact_loss(model):
    """Test loss on task 0's facts alone (nats/token), the answer's form given."""
    return completion_metrics(model, *FACTS0, tok.pad_id, 128)["loss"]


def stage_config(method, k):
    """Stage k's fine-tune: task k, 200 steps, seed k (a fresh adapter draw and data order at every stage)."""
    return FinetuneConfig(**method, task=str(TASKS[k]), steps=STAGE_STEPS, eval_size=pick(100, 16), eval_every=0,
                          seed=k, workers=1)


def in_sequence(method):
    """Fine-tune on TASKS one after another; after each stage: the model, the test loss and exact-match accuracy on
    every task, the loss on task 0's facts alone, the intruders against W0 (ε = 0.5, summed over the 16 matrices:
    of 16 × 10 = 160 top directions) and the forgetting ΔLM."""
    model, stages = base, []
    for k in range(len(TASKS)):
        tuned, lora, _ = finetune(model, tok, stage_config(method, k), progress=False)
        model = tuned if lora is None else lora.merged_model()        # W(k) = W(k-1) + ΔW(k), adapters folded in
        metrics = [split_metrics(model, t, tok, 128) for t in TESTS]
        stages.append(dict(model=model,
                           loss=np.array([m["loss"] for m in metrics]),
                           acc=np.array([m["accuracy"] for m in metrics]),
                           fact0=fact_loss(model),
                           intruders=sum(intruder_dimensions(W0[n], to_numpy(model.params[n]), k=K, eps=0.5)["count"]
                                         for n in NAMES),
                           forgetting=lm_loss(model, heldout, max_windows=None) - base_lm))
    return stages


base_task_loss = np.array([split_metrics(base, t, tok, 128)["loss"] for t in TESTS])
seq = {label: in_sequence(method) for label, method in CL_PLAN.items()}
smoke()
print(f"{'':<21}{'test loss on task':^28}{'facts':>7}{'exact match':^16}")
print(f"{'':<21}" + "".join(f"{j:>7}" for j in range(4)) + f"{'of 0':>7}{'task k':>8}{'task 0':>8}{'intruders':>11}"
      f"{'ΔLM':>8}")
print(f"{'the base':<21}" + "".join(f"{v:>7.2f}" for v in base_task_loss) + f"{fact_loss(base):>7.2f}")
for label, stages in seq.items():
    for k, st in enumerate(stages):
        print(f"{label if k == 0 else '':<21}" + "".join(f"{v:>7.2f}" for v in st["loss"]) + f"{st['fact0']:>7.2f}"
              + f"{st['acc'][k]:>8.2f}{st['acc'][0]:>8.2f}{st['intruders']:>11}{st['forgetting']:>+8.2f}"
              + f"   after task {k}")
base_fact0 = fact_loss(base)
last = {label: stages[-1] for label, stages in seq.items()}
verdict("every method learned each task as it came, in loss: the diagonal is below the base's loss on that task",
        all(st["loss"][k] < base_task_loss[k] for stages in seq.values() for k, st in enumerate(stages)))
verdict("in exact match only task 0 got anywhere: above 0.3 after stage 0, below 0.15 on tasks 1-3",
        all(stages[0]["acc"][0] > 0.3 and all(st["acc"][k] < 0.15 for k, st in enumerate(stages) if k)
            for stages in seq.values()))
verdict("task 0's loss ended above the untrained base's for every method",
        all(st["loss"][0] > base_task_loss[0] for st in last.values()))
verdict("intruders grew at every stage for every method; LoRA r=8's and r=64's above full fine-tuning's throughout",
        all(np.all(np.diff([st["intruders"] for st in stages]) > 0) for stages in seq.values()) and
        all(min(a["intruders"], b["intruders"]) > f["intruders"]
            for a, b, f in zip(seq["lora r=8"], seq["lora r=64"], seq["full"])))
verdict("ΔLM grew at every stage for every method, and ended in the order LoRA r=1 < r=8 < r=64 < full",
        all(np.all(np.diff([st["forgetting"] for st in stages]) > 0) for stages in seq.values()) and
        last["lora r=1"]["forgetting"] < last["lora r=8"]["forgetting"] < last["lora r=64"]["forgetting"]
        < last["full"]["forgetting"])
verdict("facts of task 0: every method below the base after stage 0; after stage 3 LoRA r=1 within 0.5 of the "
        "base, full fine-tuning above 4 × the base",
        all(stages[0]["fact0"] < base_fact0 for stages in seq.values()) and
        abs(last["lora r=1"]["fact0"] - base_fact0) < 0.5 and last["full"]["fact0"] > 4 * base_fact0)

# %% [markdown]
# Read a block of four rows: one method, stage by stage. The four loss columns are the completion loss (nats per
# token) on each task's 250 test questions; the diagonal — row $k$, column $k$ — is the task just learned, the
# entries left of it are the tasks learned before. `facts of 0`: the loss on task 0's facts alone, the form given.
# Exact match: on the task just trained, and on task 0. Intruders: against $W_0$, $\varepsilon = 0.5$, of
# $16 \times 10 = 160$ top directions (section 3). ΔLM: section 4's forgetting of the pretraining text.
#
# Under the table, what this paragraph claims, with whether it held in this run (normal mode asserts it). Every
# method learned each task as it came, in loss — the diagonal lies below the base's loss on that task — though in
# exact match only task 0 got anywhere (on tasks 1–3, pets' names and best friends among them, almost nothing after
# 200 steps). And every method lost the earlier tasks: task 0's loss, low right after it was trained, ended above
# the untrained base's for every method, and exact match on task 0 collapsed as soon as task 1 was trained (the
# check below). Intruders grew at every stage for every method, LoRA r=8's and r=64's fastest; forgetting of the
# pretraining text piled up too, least for LoRA r=1, most for full fine-tuning.
#
# The facts column tells two kinds of forgetting apart. The base's row gives its score there, with the answer's form
# given. How much of that is knowledge of the facts and how much a good guess among the world's towns, jobs and pets
# this column cannot say (tutorial 04's greedy test, "⟨name⟩ lives in", found the base little better than guessing);
# it is the yardstick. Training on task 0 brought every method below it. After four tasks LoRA r=1 is back near the
# base — it lost what task 0 taught it and little more — LoRA r=8 and r=64 are above it, and full fine-tuning ended
# several times above it: far worse than a model that had never been fine-tuned at all, so it lost more than task
# 0's lesson.
#
# What did the models forget? Ask two of them task 0's questions, before and after task 1.

# %%
question = list(zip(TESTS[0].prompts, TESTS[0].completions))[:3]
same_form = {0: [], 1: []}                              # stage -> per answer: does it open as the true answer does?
smoke()
for label in ("full", "lora r=8"):
    for k in (0, 1):
        model = seq[label][k]["model"]
        print(f"{label}, after stage {k}:")
        for prompt, want in question:
            said = generate(model, tok, prompt, max_new_tokens=12, temperature=0).split("\n")[0]
            same_form[k].append(said.split()[:2] == want.split()[:2])          # "He lives", "He is": task 0's form
            print(f"    {prompt.splitlines()[0][len('Question: '):]:<34} → {said.strip():<28} "
                  f"(answer: {want.strip()})")
verdict("after stage 0 every answer opens in task 0's form (its first two words), after stage 1 none does",
        all(same_form[0]) and not any(same_form[1]))

# %% [markdown]
# Both models answer the old question in the new task's form: after task 1, "Where does Edwin live?" gets a pet
# sentence (printed above). The four tasks share one prompt ("Question: … Answer:"), and each stage
# trains on its own two relations and nothing else, so the quickest way to lower the new task's loss is to make
# "Answer:" start the new task's sentence, whatever was asked. This is catastrophic forgetting at its plainest, and no
# method escapes it here; the facts column above says how much knowledge went with the form. The usual remedies: mix
# some of the earlier tasks' examples into every stage (replay: Exercise 4 tries it), or pull the weights back toward
# the earlier ones (a regulariser such as EWC, Kirkpatrick et al. 2017).

# %%
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4))
stages_x = np.arange(len(TASKS))
for i, (label, stages) in enumerate(seq.items()):
    ax1.plot(stages_x, [st["intruders"] for st in stages], "o-", color=f"C{i}", label=label)
    ax2.plot(stages_x, [st["loss"][0] for st in stages], "o-", color=f"C{i}", label=label)
    ax3.plot(stages_x, [st["fact0"] for st in stages], "o-", color=f"C{i}", label=label)
ax2.axhline(base_task_loss[0], color="k", ls="--", lw=0.8, label="the base, before any stage")
ax3.axhline(fact_loss(base), color="k", ls="--", lw=0.8, label="the base, before any stage")
ax1.set(ylabel="intruders against W0, ε = 0.5 (of 160)", title="intruders accumulate stage by stage")
ax2.set(ylabel="test loss on task 0", title="task 0, learned at stage 0, afterwards")
ax3.set(ylabel="test loss on task 0's facts, form given", title="what it knows, apart from how it answers")
for ax in (ax1, ax2, ax3):
    ax.set(xlabel="stage k (after task k)", xticks=stages_x)
    ax.legend(fontsize=8)
fig.tight_layout()
show(fig, "10_continual")

# %% [markdown]
# **Check.** Deterministic: a merged LoRA stage computes what its adapters computed (float32: $10^{-4}$ of the logits'
# scale), and carries no adapters into the next stage. Measured, normal mode, with wide margins: every method loses
# task 0 (its test loss after the last stage is at least 1 nat above its loss right after stage 0, and exact match
# on task 0 falls below 0.1 as soon as stage 1 is trained); LoRA r=8's and r=64's intruders grow at every stage and
# end at least twice their first stage's count; at every stage LoRA r=64 has more intruders than full fine-tuning;
# and after the last stage full fine-tuning's task-0 loss is more than 1 nat above every LoRA run's and above its
# own with the embeddings frozen, and its loss on task 0's facts alone more than twice every LoRA run's. The facts
# split is exact: prompt, form and fact decode back to the question and its answer.

# %%
tuned, lora8, _ = finetune(base, tok, FinetuneConfig(**CL_PLAN["lora r=8"], task=str(TASKS[0]), steps=2,
                                                     eval_size=8, workers=1), progress=False)
ids = np.array([tok.encode(TESTS[0].prompts[0])])
adapted, merged = to_numpy(tuned.forward(ids)), lora8.merged_model()
assert not merged.adapters and np.allclose(to_numpy(merged.forward(ids)), adapted, rtol=1e-4,
                                           atol=1e-4 * np.abs(adapted).max())
assert all(len(f) >= 1 for f in FACTS0[1]) and all(tok.decode(p + f) + "." == q + c for p, f, q, c in
                                                 zip(*FACTS0, TESTS[0].prompts, TESTS[0].completions))
for label, stages in seq.items():
    print(f"{label:<21} task 0 loss: {stages[0]['loss'][0]:.2f} after stage 0 → {stages[-1]['loss'][0]:.2f} after "
          f"stage 3; intruders by stage {[st['intruders'] for st in stages]}")
if not FAST:                                         # at full size only (fast mode: 10 steps a stage)
    for label, stages in seq.items():
        assert stages[-1]["loss"][0] > stages[0]["loss"][0] + 1.0, label
        assert stages[1]["acc"][0] < 0.1, label
    for label in ("lora r=8", "lora r=64"):
        counts = [st["intruders"] for st in seq[label]]
        assert all(b > a for a, b in zip(counts, counts[1:])) and counts[-1] >= 2 * counts[0], (label, counts)
    assert all(r64["intruders"] > f["intruders"] for r64, f in zip(seq["lora r=64"], seq["full"]))
    assert seq["full, wte/wpe frozen"][-1]["loss"][0] < seq["full"][-1]["loss"][0] - 1.0
    assert max(seq[f"lora r={r}"][-1]["loss"][0] for r in (1, 8, 64)) < seq["full"][-1]["loss"][0] - 1.0
    assert max(seq[f"lora r={r}"][-1]["fact0"] for r in (1, 8, 64)) < seq["full"][-1]["fact0"] / 2
smoke()
loras = [f"lora r={r}" for r in (1, 8, 64)]
verdict("LoRA r=1 ends with fewer intruders than full fine-tuning, LoRA r=64 with more than half of the 160",
        last["lora r=1"]["intruders"] < last["full"]["intruders"] and last["lora r=64"]["intruders"] > 80)
verdict("every LoRA run learned every task better than full fine-tuning (a lower diagonal at every stage)",
        all(seq[lo][k]["loss"][k] < seq["full"][k]["loss"][k] for lo in loras for k in range(len(TASKS))))
verdict("every LoRA run ends with lower task-0 loss, facts loss and ΔLM than full fine-tuning",
        all(last[lo][key] < last["full"][key] for lo in loras for key in ("fact0", "forgetting")) and
        all(last[lo]["loss"][0] < last["full"]["loss"][0] for lo in loras))
frozen = last["full, wte/wpe frozen"]
verdict("embeddings frozen: task 0's loss within 0.5 of LoRA r=64's, above r=1's and r=8's; facts below full's",
        abs(frozen["loss"][0] - last["lora r=64"]["loss"][0]) < 0.5 and frozen["fact0"] < last["full"]["fact0"] and
        frozen["loss"][0] > max(last["lora r=1"]["loss"][0], last["lora r=8"]["loss"][0]))
verdict("within LoRA, r=1 < r=8 < r=64 in final intruders, task-0 loss and facts loss",
        all(last["lora r=1"][key] < last["lora r=8"][key] < last["lora r=64"][key] for key in ("intruders", "fact0"))
        and last["lora r=1"]["loss"][0] < last["lora r=8"]["loss"][0] < last["lora r=64"]["loss"][0])
verdict("LoRA r=64 ends with more than 3 × full fine-tuning's intruders, yet a lower task-0 loss",
        last["lora r=64"]["intruders"] > 3 * last["full"]["intruders"]
        and last["lora r=64"]["loss"][0] < last["full"]["loss"][0])

# %% [markdown]
# What reproduces, and what does not:
#
# Each claim below is printed as a verdict by the check cell above (or under the table), from the numbers in the
# table.
#
# - **Intruders accumulate, stage after stage** — for every method here, and for LoRA at $r \ge 8$ faster than for
#   full fine-tuning at every stage (r=64 ends with most of the 160 top directions new). LoRA r=1 ends with fewer
#   than full fine-tuning: the rank decides how fast. That much is the paper's finding.
# - **"LoRA performs worse in continual learning" does not reproduce here.** Every LoRA run kept more of task 0 than
#   full fine-tuning (in task 0's loss and on its facts alone), learned every new task better (the diagonal), and
#   forgot less of the pretraining text. Part of full fine-tuning's loss is the tied embedding: `wte` is also the
#   output layer, and full fine-tuning rewrites it for every task; with it frozen, task 0's loss ended more than a
#   nat lower, and its facts' loss lower too — about where LoRA r=64 ended in task 0's loss (within half a nat),
#   still worse than r=1 and r=8.
# - **Intruders did not predict which method forgot the earlier task.** Within LoRA they go together — more rank,
#   more intruders, more forgetting of task 0 (in loss and on the facts) — but LoRA r=64, with several times full
#   fine-tuning's intruders, kept task 0 better than full fine-tuning.
# - **Why the difference may be the setting.** The paper's tasks were different problems for much larger models,
#   whose full fine-tunes move the weights very little (section 6); here four tasks compete for one answer form in a
#   1-million-parameter model that full fine-tuning moves far (section 3), and the forgetting everyone shares is the
#   form, overwritten within one stage. One seed, one order of the tasks, 200 steps a stage: read the trends, not
#   single numbers.

# %% [markdown]
# ## Exercises
#
# **Exercise 1 — the random level.** Predict the mean $\max|\cos|$ of a random direction against a complete
# orthonormal basis of $\mathbb R^d$ (for $d = 128$: the demo model's width). The check compares with
# `random_baseline(d)`'s simulated mean for $d = 128, 256, 512$; within 20% passes.

# %%
def my_random_level(d):
    """Your prediction of E max_i |cos(x, e_i)| for a random unit vector x in R^d."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_random_level(d):
    return math.sqrt(2 * math.log(2 * d) / d)            # the Gaussian-maximum estimate, a little high (section 2)


# %%
def check_random_level(answer):
    for dim in (128, 256, 512):
        mean = random_baseline(dim, k=K, trials=1000, seed=0)["mean"]
        print(f"d = {dim}: simulated mean {mean:.3f}, yours {answer(dim):.3f}")
        assert abs(answer(dim) / mean - 1) < 0.2


exercise("Exercise 1 (random level)", check_random_level, my_random_level, solution_random_level)

# %% [markdown]
# **Exercise 2 — rank and count.** `planted_update(W0, r, gain=2, seed)` adds a rank-$r$ update along $r$ new output
# directions, each with a singular value at least twice $W_0$'s largest. Predict how many intruders Algorithm 1
# finds ($k = 10$, $\varepsilon = 0.5$) as a function of $r$ — and so which way the count goes when the rank grows.
# The check plants updates of rank 1, 3, 5, 12 and 20 into section 1's toy $W_0$.

# %%
def my_planted_count(r, k):
    """The number of intruders among the top k for a planted rank-r update of new, dominant directions."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_planted_count(r, k):
    return min(r, k)            # each new dominant direction is one intruder, but only the top k are examined


# %%
def check_planted_count(answer):
    for r in (1, 3, 5, 12, 20):
        found = intruder_dimensions(W0_toy, W0_toy + planted_update(W0_toy, r, 2.0, seed=1), k=K, eps=0.5,
                                    layout="out_in")["count"]
        print(f"rank {r:>2}: Algorithm 1 finds {found}, you predicted {answer(r, K)}")
        assert answer(r, K) == found


exercise("Exercise 2 (rank and count)", check_planted_count, my_planted_count, solution_planted_count)

# %% [markdown]
# **Exercise 3 — the mitigation by hand, in minift's layout.** Given $W_0$ and $W_t$ stored as minift stores them,
# $[\text{in}, \text{out}]$, return $W'$ (same layout) with the intruders' singular values multiplied by `lam`:
# $W' = W_t + (\lambda - 1)\sum_{j\in\text{intruders}} \sigma_j u_j v_j^\top$ in the paper's $[\text{out},
# \text{in}]$ layout. Mind which singular vectors are the output-space ones. The check compares with
# `scale_intruders` on a planted toy and on the fine-tuned matrix with the most intruders (section 5's check).

# %%
def my_scale_intruders(W0, Wt, k, eps, lam):
    """Wt [in, out] with the singular values of its intruders (Algorithm 1, output space) scaled by lam."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_scale_intruders(W0, Wt, k, eps, lam):
    A0, At = W0.T.astype(np.float64), Wt.T.astype(np.float64)                # the paper's [out, in]
    U0 = np.linalg.svd(A0, full_matrices=False)[0]
    U, S, Vt = np.linalg.svd(At, full_matrices=False)
    idx = np.flatnonzero(np.abs(U[:, :k].T @ U0).max(axis=1) < eps)          # intruders among the top k
    new = At + (U[:, idx] * ((lam - 1) * S[idx])) @ Vt[idx]                  # (out, in)
    return new.T.astype(Wt.dtype)                                            # back to [in, out]


# %%
def check_scale_intruders(answer):
    cases = {"toy, rank-3 planted": (W0_toy.T, (W0_toy + planted_update(W0_toy, 3, 2.0, seed=2)).T),
             f"{label_m} {name_m}": (W0[name_m], runs[label_m]["W"][name_m])}
    for name, (w0, wt) in cases.items():
        ref = scale_intruders(w0, wt, k=K, eps=0.5, lam=0.5)
        mine = answer(w0, wt, K, 0.5, 0.5)
        err = np.abs(np.asarray(mine, dtype=np.float64) - ref).max() / np.abs(ref).max()
        print(f"{name}: max relative difference from scale_intruders {err:.1e}")
        assert mine.shape == wt.shape and err < 1e-5


exercise("Exercise 3 (mitigation by hand)", check_scale_intruders, my_scale_intruders, solution_scale_intruders)


# %% [markdown]
# **Exercise 4 — replay.** Section 7's models lost task 0 because stage 1 never showed them a task-0 question. The
# simplest remedy is to show them a few: stage $k$ trains on task $k$'s examples plus some of the earlier tasks'.
# Write `my_replay_lines(k, share, rng)`: the lines of stage $k$'s training file — every line of task $k$'s
# `train.jsonl`, followed by `round(share × that many)` lines drawn without replacement (`rng.choice`) from the
# training lines of tasks $0 … k-1$ together. Predict first: with 10% replay, how much of task 0's loss comes back?
# The check writes your stage-1 task, trains section 7's LoRA r=8 stage-0 model on it for the same 200 steps, and
# compares task 0's and task 1's test loss with section 7's stage 1, and prints both; in normal mode task 0's loss
# must come back by more than 1 nat while task 1's rises by at most 0.3.

# %%
def my_replay_lines(k, share, rng):
    """Task k's training lines, then round(share * their number) lines drawn from tasks 0..k-1's training lines."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_replay_lines(k, share, rng):
    new = (TASKS[k] / "train.jsonl").read_text().splitlines()
    earlier = [line for j in range(k) for line in (TASKS[j] / "train.jsonl").read_text().splitlines()]
    drawn = rng.choice(len(earlier), size=round(share * len(new)), replace=False)
    return new + [earlier[i] for i in drawn]


# %%
def check_replay(answer, share=0.1):
    new = (TASKS[1] / "train.jsonl").read_text().splitlines()
    earlier = set((TASKS[0] / "train.jsonl").read_text().splitlines())
    lines = answer(1, share, np.random.default_rng(0))
    extra = lines[len(new):]
    assert lines[:len(new)] == new and len(extra) == round(share * len(new)), (len(lines), len(new))
    assert set(extra) <= earlier and len(set(extra)) == len(extra), "replayed lines: task 0's, each once"
    folder = out_dir("continual", "task1-replay")
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    for split in ("validation", "test"):
        (folder / f"{split}.jsonl").write_text((TASKS[1] / f"{split}.jsonl").read_text())
    cfg = dataclasses.replace(stage_config(CL_PLAN["lora r=8"], 1), task=str(folder))   # stage 1, replay added
    tuned, lora, _ = finetune(seq["lora r=8"][0]["model"], tok, cfg, progress=False)
    loss = [split_metrics(lora.merged_model(), t, tok, 128)["loss"] for t in TESTS[:2]]
    before = seq["lora r=8"][1]["loss"][:2]
    smoke()
    print(f"{len(extra)} task-0 examples among {len(lines)}: task 0 loss {before[0]:.2f} → {loss[0]:.2f}, "
          f"task 1 loss {before[1]:.2f} → {loss[1]:.2f} (section 7's stage 1 → with replay)")
    assert np.all(np.isfinite(loss))
    if not FAST:                                     # at full size only (fast mode: 10 steps)
        assert loss[0] < before[0] - 1.0 and loss[1] < before[1] + 0.3, (before, loss)


exercise("Exercise 4 (replay)", check_replay, my_replay_lines, solution_replay_lines)
