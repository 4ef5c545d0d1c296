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
# # 12 · QLoRA: a 4-bit NormalFloat base under LoRA, and where "80% less memory" holds
#
# **What you will see.** NF4's 16 values computed from normal quantiles, equal to the QLoRA paper's table. A weight
# matrix of the shipped base in 4.5 bits a weight instead of 32, and a histogram showing why NF4 rounds it with less
# error than int4 or FP4. QLoRA's layer giving exactly LoRA's outputs and gradients, and never a gradient $\bar W$ for
# the frozen base. LoRA and QLoRA fine-tuned side by side: accuracy, time (QLoRA is slower, and you will see why)
# and memory, measured term by term against full fine-tuning. Last, from the demo model to GPT-3's shape: where
# "~80% less memory" holds.
#
# **Article:** §4.2 MIT论文中的实证研究分析 and §5.1 资源消耗与时间效率 (*Resources and time*):
#
# > 具体来说,LoRA的训练时间比完全微调减少了约70%,内存占用减少了约80%。(§4.2)
# >
# > 在相同的文本分类任务中,LoRA的训练时间仅为完全微调的30%,内存占用仅为20%。(§5.1)
# >
# > *Specifically, LoRA's training time was about 70% less than full fine-tuning's, and its memory about 80% less.
# > On the same text-classification task, LoRA's training time was only 30% of full fine-tuning's, its memory only
# > 20%.*
#
# The article never mentions quantisation. Tutorial 09 showed why plain LoRA rarely saves 80%: the frozen base
# stays in full precision, and activations are the same for both methods. Practitioners get there with QLoRA
# (Dettmers et al. 2023, arXiv 2305.14314): the frozen base in 4 bits, LoRA trained on top.
#
# **You will learn**
# 1. NF4 from the quantiles of $\mathcal N(0, 1)$, beside int4 and FP4;
# 2. blockwise absmax quantisation, packing, double quantisation: where 4.5 and $\approx 4.127$ bits come from;
# 3. QLoRA's layer, $y = x\,\mathrm{deq}(W) + b + s\,xA^\top B^\top$, and its backward;
# 4. what QLoRA costs in accuracy and time and saves in memory;
# 5. when "80% less memory" holds, at any size.
#
# **Time:** about 1 minute normally (two 600-step fine-tunes and some timed steps: 60–68 s measured on a quiet
# machine, 73–106 s beside other jobs), about 7 s in fast mode (`MINIFT_FAST=1`, a smoke run; 7–10 s measured), with
# `OPENBLAS_NUM_THREADS=1` on 2 CPU cores. 30 minutes to read.
#
# **Prerequisites:** [core 03](core/03_lora_from_scratch.py) (LoRA's forward and backward) and
# [tutorial 09](09_time_and_memory.py) (the four terms of training memory). **中文:** [zh/12_qlora.py](zh/12_qlora.py).

# %%
import time
from contextlib import contextmanager
from statistics import NormalDist

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from minift import GPTConfig, LoRAConfig, dispatch, quant
from minift.app.figures import STYLE, quant_levels
from minift.app.tutorial import FAST, exercise, pick, show
from minift.base import load_base, shipped_base_dir
from minift.data.sources import task_source
from minift.lora import lora_backward, lora_forward
from minift.lora.qlora import qlora_backward, qlora_forward
from minift.measure.memory import (
    PAPER_MODELS,
    format_memory,
    format_saving_table,
    measure_memory,
    predict_memory,
    saving_table,
)
from minift.measure.quant_error import code_fit, loss_effect, matrix_error
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits
from minift.training.pretrain import heldout_for_base

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode: section 4's fine-tunes are 30-step smoke runs and its timings a few repetitions; sections 1-3 and "
      "5 run as in normal mode" if FAST else "normal mode")
rng = np.random.default_rng(0)            # one seeded generator: every number below is the same on every run
base, tok = load_base()                   # the shipped pretrained demo model and its tokenizer
KiB, MiB = 2 ** 10, 2 ** 20
print(base.cfg)

# %% [markdown]
# ## 1. NF4 from the quantiles
#
# A 4-bit code is a table of 16 numbers in $[-1, 1]$; a weight, divided by its block's largest magnitude, is stored
# as the index (0–15) of the nearest entry. int4 spaces the entries evenly, FP4 by powers of two. NF4, *NormalFloat*
# (QLoRA §3), asks: if weights are normally distributed, which 16 values are used equally often? Quantiles of
# $\mathcal N(0, 1)$. With $Q$ its quantile function ($Q(p)$: the value below which a share $p$ of draws lies),
#
# $$v^+_i = Q(p_i),\ \ p_i \text{: 9 values evenly spaced from } \delta \text{ down to } \tfrac12;\qquad
#   v^-_j = -Q(p'_j),\ \ p'_j \text{: 8 such values};\qquad \text{then all divided by } Q(\delta).$$
#
# Why two halves? 16 symmetric quantiles contain no zero, and zero must come back exact (a zero weight, a padded
# block). Both halves end at $Q(\tfrac12) = 0$ and one zero is dropped: 8 positive values, 7 negative, one zero.
# $Q(1) = \infty$, so the outermost probability is $\delta = 0.9677083$ (bitsandbytes' constant; to 7 digits the
# mean of $1 - \tfrac1{32}$ and $1 - \tfrac1{30}$). Dividing by $Q(\delta)$ puts the ends at exactly $\pm 1$.

# %%
Q = NormalDist().inv_cdf                                 # the quantile function of N(0, 1)
delta = 0.9677083                                        # δ: the outermost probability (bitsandbytes')
p_pos = np.linspace(delta, 0.5, 9)                       # (9,) δ ... ½
p_neg = np.linspace(delta, 0.5, 8)                       # (8,) δ ... ½
v_pos = np.array([Q(p) for p in p_pos])                  # (9,) Q(δ) ... Q(½) = 0
v_neg = -np.array([Q(p) for p in p_neg])                 # (8,) −Q(δ) ... 0
nf4 = np.sort(np.concatenate([v_pos[:-1], [0.0], v_neg[:-1]])) / Q(delta)   # (16,) the two zeros become one
print("positive half, p:", p_pos, "\n              Q(p):", v_pos)
print("negative half, p:", p_neg, "\n             -Q(p):", v_neg)
print(f"Q(δ) = {Q(delta):.4f}; δ = {delta} and ½[(1 − 1/32) + (1 − 1/30)] = {0.5 * (2 - 1 / 32 - 1 / 30):.7f}")
print("NF4:", nf4)

# %% [markdown]
# **Check.** Our values are `quant.nf4_values()` (to $10^{-12}$) and the paper's table (Appendix E, in float32, to
# $10^{-6}$): 8 positive, 7 negative, an exact zero, ends at $\pm1$. Then the three codes, sorted, with their gaps.

# %%
NF4_PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
assert delta == quant.NF4_OFFSET
assert np.abs(nf4 - quant.nf4_values()).max() < 1e-12
assert np.abs(nf4 - np.array(NF4_PUBLISHED)).max() < 1e-6
assert (nf4 > 0).sum() == 8 and (nf4 < 0).sum() == 7 and nf4[7] == 0.0 and nf4[0] == -1.0 and nf4[-1] == 1.0


def levels(code):
    """The distinct values a block-normalised weight x/c ∈ [−1, 1] can round to, ascending."""
    v = quant.code_values(code).astype(np.float64)       # (16,) by 4-bit pattern
    return np.unique(v[np.abs(v) <= 1])                  # int4's −8/7 is never chosen; FP4's −0 is 0


for code in quant.CODES:
    lv = levels(code)
    gaps = np.diff(lv)
    print(f"{code:<5} {len(lv)} levels, gaps {gaps.min():.3f} (smallest) to {gaps.max():.3f} (largest): "
          + " ".join(f"{a:+.3f}" for a in lv))

# %% [markdown]
# Read the gaps as printed above. int4's levels are evenly spaced, $1/7$ apart. NF4 and FP4 both crowd theirs near
# 0 and spread them toward $\pm1$: FP4 by doubling its step at each power of two, NF4 by following the normal
# curve. Which is best depends on where the weights lie: section 2 looks.
#
# ## 2. One real matrix in 4 bits
#
# Take `h.0.mlp.c_fc.weight` [128, 512] of the shipped base, 65,536 weights, in blocks of $K = 64$. For block $b$,
#
# $$c_b = \max_k |x_{bk}|,\qquad q_{bk} = \arg\min_j \Bigl|\frac{x_{bk}}{c_b} - v_j\Bigr|,\qquad
#   \tilde x_{bk} = v_{q_{bk}}\,c_b .$$
#
# $c_b$, the block's *absmax*, is one float32; each $q_{bk}$ is 4 bits, two to a byte (the first of a pair in the
# high nibble, as bitsandbytes packs them): $4 + 32/64 = 4.5$ bits a weight. *Double quantisation* (QLoRA §3) also
# quantises the absmaxes, centred on their mean, to 8 bits, with one float32 scale per 256 of them:
# $4 + 8/64 + 32/(64\cdot256) \approx 4.127$ bits. Every step by hand, then checked against `quant.quantize`, bit
# for bit:

# %%
name = "h.0.mlp.c_fc.weight"
W = base.params[name]                                    # (128, 512) float32, GPT-2's [in, out]
K = quant.BLOCK                                          # 64 weights a block
v = quant.code_values("nf4")                             # (16,) float32, index = 4-bit pattern
x = W.reshape(-1, K)                                     # (NB, K)  NB = 1,024 blocks
c = np.abs(x).max(axis=1)                                # (NB,)  each block's absmax
xhat = x / c[:, None]                                    # (NB, K)  in [−1, 1]
q = np.abs(xhat[..., None] - v).argmin(axis=-1).astype(np.uint8)   # (NB, K)  the nearest value's pattern
packed = (q[:, 0::2] << 4) | q[:, 1::2]                  # (NB, K/2)  two patterns a byte
W_tilde = (v[q] * c[:, None]).reshape(W.shape)           # (128, 512)  deq: v[q] · c
Qw = quant.quantize(W, "nf4")                            # the library's
print(f"block 0: absmax c = {c[0]:.4f}; first 6 weights {x[0, :6]}")
print(f"         x/c {xhat[0, :6]} -> patterns {q[0, :6]} -> bytes {[f'0x{b:02x}' for b in packed[0, :3]]}")
print(f"         deq {W_tilde.reshape(-1, K)[0, :6]}")
assert np.array_equal(packed, Qw.packed) and np.array_equal(c, Qw.absmax)
assert np.array_equal(W_tilde, quant.dequantize(Qw))

Qdq = quant.quantize(W, "nf4", double_quant=True)
for label, Qx, limit in (("absmax in float32", Qw, quant.bits_per_parameter()),
                         ("double-quantised", Qdq, quant.bits_per_parameter(double_quant=True))):
    print(f"{label:<18} {Qx.nbytes:>7,} bytes = {quant.stored_bits_per_parameter(Qx):.4f} bits a weight "
          f"(the paper's sum: {limit:.4f}); float32 W: {W.nbytes:,} bytes, {W.nbytes / Qx.nbytes:.1f}x more")

# %% [markdown]
# **Check.** Exactly 4.5 bits a weight; with double quantisation, the paper's sum plus the mean of this tensor's
# absmaxes (32 bits, which the paper leaves out). And each weight moves by at most half the gap between the two
# levels around $x/c$, times $c$.

# %%
N, NB = W.size, W.size // K                                            # weights, blocks
ND = -(-NB // 256)                                                     # ⌈NB / 256⌉ blocks of scales
assert quant.stored_bits_per_parameter(Qw) == 4.5
assert quant.stored_bits_per_parameter(Qdq) == 4 + 8 / 64 + 32 * (ND + 1) / N      # + ND scales and the mean
err = np.abs(W_tilde - W).reshape(-1, K)                               # (NB, K)
lv = levels("nf4")
half_gap = np.diff(lv)[np.clip(np.searchsorted(lv, xhat) - 1, 0, 14)] / 2   # (NB, K)  the gap x/c falls in
assert (err <= half_gap * c[:, None] * (1 + 1e-5)).all()
print(f"largest error {err.max():.2e}; largest allowed by the bound {(half_gap * c[:, None]).max():.2e}")

# %% [markdown]
# Now the three codes on this matrix (`minift.measure.quant_error`): $\lVert W - \tilde W\rVert_F / \lVert W\rVert_F$,
# the rounding noise as a share of the matrix, and mean $|W - \tilde W|$ over the spread of $W$; the first also on
# blocks drawn from $\mathcal N(0, 1)$; and what quantising all 16 linears does to the base's language-model loss on
# held-out text.

# %%
heldout, heldout_what = heldout_for_base(shipped_base_dir(), tok, n_chars=40_000)
effect = loss_effect(base, heldout, double_quant=False, max_windows=32, text=heldout_what)
fit = code_fit(base.params, name)                        # the histogram below, and each code's usage
errors = {code: matrix_error(W, code) for code in quant.CODES}
print(f"{'code':<6}{'‖W−W̃‖/‖W‖':>12}{'mean|W−W̃|/std':>16}{'on N(0,1) blocks':>18}"
      f"{'Δ LM loss ± s.e.':>20}{'levels in middle 90%':>22}{'entropy (bits)':>16}")
for code in quant.CODES:
    u = fit["codes"][code]
    print(f"{code:<6}{errors[code]['rel_error']:>12.2%}{errors[code]['mae_std']:>16.3f}"
          f"{u['gaussian_error']['rel_error']:>18.2%}{effect['quantised'][code]['delta']:>+12.4f} ± "
          f"{effect['quantised'][code]['delta_se']:.4f}"
          f"{u['levels_in_middle_90']:>22}{u['entropy_bits']:>16.2f}")
print(f"LM loss of the float base: {effect['float']:.4f} nats/token on {effect['tokens']:,} tokens of "
      f"{heldout_what}")
for key in ("rel_error", "mae_std"):
    assert errors["nf4"][key] < min(errors["int4"][key], errors["fp4"][key])
gauss = {code: fit["codes"][code]["gaussian_error"]["rel_error"] for code in quant.CODES}
assert gauss["nf4"] < min(gauss["int4"], gauss["fp4"])

# %% [markdown]
# NF4 leaves the least error, by both measures and on Gaussian blocks (asserted). On the loss all three cost little,
# and their differences are of the order of their standard errors, as printed above: this short text ranks them
# only roughly. The figure shows why NF4 fits: the grey histogram is this matrix's $x/c$ (the spikes at $\pm1$ are
# the absmaxes themselves), the lines are each code's levels, and the number on each is the share of weights
# rounded to it. int4 spends more levels in the sparse tails; NF4 puts more inside the middle 90% of the weights and
# uses its 16 most evenly (its entropy is the closest to 4 bits). The black curve, Gaussian blocks, lies almost on
# the histogram: these weights are as normal as NF4 assumes.

# %%
with matplotlib.rc_context(STYLE):
    fig = quant_levels(plt, {"code_fit": fit})           # minift.app.figures: the histogram and each code's levels
show(fig, "12_quant_levels")

# %% [markdown]
# ## 3. QLoRA's layer: LoRA on $\mathrm{deq}(W)$, and no $\bar W$
#
# QLoRA keeps each adapted $W$ only as a `Quantized` (patterns and scales) and dequantises it where it is used
# (QLoRA eq. 5; `minift/lora/qlora.py`):
#
# $$\text{forward: } \tilde W = \mathrm{deq}(W),\quad y = x\tilde W + b + s\,(xA^\top)B^\top;\qquad
#   \text{backward: } \tilde W = \mathrm{deq}(W)\text{ again},\quad \bar x = \bar y\,\tilde W^\top + s\,\bar y BA .$$
#
# $\bar A$ and $\bar B$ are LoRA's (core 03). $\bar W = x^\top \bar y$ is never computed: $W$ is frozen, and a 4-bit
# $W$ has no float to add it to. Why dequantise twice? Keeping $\tilde W$ from forward to backward would hold a
# float copy of every adapted matrix: the very memory QLoRA exists to save. The price is time (section 4).
#
# **Check.** `qlora_forward` / `qlora_backward` give bitwise what `lora_forward` / `lora_backward` give on
# $\mathrm{deq}(W)$, $\bar W$ `None` in both; QLoRA keeps no array of $W$'s size for the backward. (The float64
# finite-difference check is in `tests/lora/test_qlora.py`.)

# %%
I, O, R, s = W.shape[0], W.shape[1], 8, 2.0
x_in = rng.standard_normal((64, I)).astype(np.float32)            # (N, I)  64 token positions
b = base.params["h.0.mlp.c_fc.bias"]                              # (O,)
A = (rng.standard_normal((R, I)) * 0.1).astype(np.float32)        # (R, I)
B = (rng.standard_normal((O, R)) * 0.1).astype(np.float32)        # (O, R)  B ≠ 0: no neutral point
y_q, cache_q = qlora_forward(x_in, Qw, b, A, B, s)                # (N, O)
y_l, cache_l = lora_forward(x_in, quant.dequantize(Qw), b, A, B, s)
dy = rng.standard_normal(y_q.shape).astype(np.float32)            # (N, O)  a random upstream gradient
grads_q = qlora_backward(dy, cache_q)                             # dx, None, db, dA, dB
grads_l = lora_backward(dy, cache_l)                              # dx, dW = None, db, dA, dB


def arrays(tree):
    """The NumPy arrays inside a cache (nested tuples), with their bytes."""
    if isinstance(tree, np.ndarray):
        return [tree]
    return [a for t in tree for a in arrays(t)] if isinstance(tree, tuple) else []


kept_q, kept_l = arrays(cache_q[0]), arrays(cache_l)
print(f"y equal: {np.array_equal(y_q, y_l)}; grads equal: "
      f"{[g1 is g2 is None or np.array_equal(g1, g2) for g1, g2 in zip(grads_q, grads_l)]} (dx, dW, db, dA, dB)")
print(f"kept for the backward: LoRA {sum(a.nbytes for a in kept_l) / KiB:.0f} KiB (the float W among it), "
      f"QLoRA {sum(a.nbytes for a in kept_q) / KiB:.0f} KiB + the 4-bit W, {Qw.nbytes / KiB:.0f} KiB")
assert np.array_equal(y_q, y_l) and grads_q[1] is None and grads_l[1] is None
assert all(g1 is g2 is None or np.array_equal(g1, g2) for g1, g2 in zip(grads_q, grads_l))
assert not any(a.shape == W.shape for a in kept_q) and any(a.shape == W.shape for a in kept_l)

# %% [markdown]
# ## 4. QLoRA against LoRA on the sentiment task
#
# Core 03's LoRA fine-tune twice (rank 8, $\alpha = 16$, every linear; same seed, steps, batches and learning
# rates), once on the float32 base and once on NF4 (`method="qlora"` sets `LoRAConfig(quant="nf4")`). QLoRA's
# adapters learn on top of $\mathrm{deq}(W)$, so they can also make up for some of its rounding.

# %%
lcfg = LoRAConfig(r=8, alpha=16, targets="all-linear")
runs, tuned = {}, {}
for method in ("lora", "qlora"):
    # workers=1: the whole batch in one thread, so the printed numbers are the same on any machine
    tuned[method], _, runs[method] = finetune(
        base, tok, FinetuneConfig(method=method, lora=lcfg, steps=pick(600, 30), eval_every=pick(100, 10),
                                  eval_size=pick(None, 128), workers=1), progress=not FAST)
if FAST:
    print(SMOKE)
for method, run in runs.items():
    by_step = ", ".join(f"{e['step']}: {e['val_accuracy']:.3f}" for e in run["evals"])
    print(f"{method:<6} val accuracy by step {by_step}; test {run['test_accuracy']:.3f}; "
          f"{run['ms_per_step']:.0f} ms/step over the run")

# %% [markdown]
# Read the accuracies as printed above: in normal mode both climb from chance to well above it and end within a few
# points of each other; one seed moves accuracy by several points here (`finetune.py` records three), so a gap
# that size is no finding. The check: QLoRA learned as LoRA did.

# %%
if not FAST:
    for run in runs.values():
        assert run["val_accuracy"] >= 0.8 and run["test_accuracy"] >= 0.7, run
    assert abs(runs["qlora"]["val_accuracy"] - runs["lora"]["val_accuracy"]) <= 0.1

# %% [markdown]
# **Time.** "ms/step over the run" mixes batch lengths and wanders with the machine's load. Cleaner: time
# `loss_and_grads` on one batch, LoRA then QLoRA, many times, and take medians, of each and of the differences of
# each pair (a pair sees the same load). And count the one thing QLoRA adds: calls to `dispatch.dequantize`, wrapped
# in a timer.

# %%
train_split = load_task_splits("sentiment")[0]
batch = task_source(train_split, tok, max_len=128, batch_size=16, seed=0).next_batch()   # finetune's first batch


@contextmanager
def timed_dequantize():
    """Count and time every dispatch.dequantize call while the block runs (qlora.py calls it by this name)."""
    calls, real = [], dispatch.dequantize

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = real(*args, **kwargs)
        calls.append(time.perf_counter() - t0)
        return out
    dispatch.dequantize = timed
    try:
        yield calls
    finally:
        dispatch.dequantize = real


def paired_ms(fns, reps):
    """ms of each of fns (name -> function), called in turn `reps` times: name -> [reps] array."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: np.array(t) for k, t in times.items()}


in_dequantize = []                                                   # ms of each QLoRA step spent dequantising


def qlora_step():
    with timed_dequantize() as calls:
        tuned["qlora"].loss_and_grads(**batch)
    in_dequantize.append(1e3 * sum(calls))
    return calls


n_adapted = len(tuned["qlora"].adapters)
reps = pick(31, 3)
t = paired_ms({"lora": lambda: tuned["lora"].loss_and_grads(**batch), "qlora": qlora_step}, reps)
extra = np.median(t["qlora"] - t["lora"])                              # the median of the pairs' differences
print(f"batch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens, loss_and_grads, median of {reps}: "
      f"LoRA {np.median(t['lora']):.1f} ms, QLoRA {np.median(t['qlora']):.1f} ms; QLoRA − LoRA in a pair "
      f"{extra:+.1f} ms ({extra / np.median(t['lora']):+.0%})")
deq_ms = np.median(in_dequantize)
n_calls = len(qlora_step())                                          # one more step, to count its calls
print(f"QLoRA's step calls dequantize {n_calls} times ({n_adapted} adapted linears x 2: forward and backward), "
      f"{deq_ms:.1f} ms in all (median)")
if FAST:
    print(SMOKE)
assert n_calls == 2 * n_adapted
if not FAST:
    assert extra > 0

# %% [markdown]
# Dequantising costs the same whatever the number of tokens; the matmuls grow with them. One adapted linear, our
# [128, 512], forward and backward:

# %%
W_deq = quant.dequantize(Qw)                                       # (I, O) LoRA's float W: the same numbers
ratio = {}
for n in (16, 256, 4096):
    xn = rng.standard_normal((n, I)).astype(np.float32)                # (n, I)
    dyn = rng.standard_normal((n, O)).astype(np.float32)               # (n, O)
    t = paired_ms({"lora": lambda xn=xn, dyn=dyn: lora_backward(dyn, lora_forward(xn, W_deq, b, A, B, s)[1]),
                   "qlora": lambda xn=xn, dyn=dyn: qlora_backward(dyn, qlora_forward(xn, Qw, b, A, B, s)[1])},
                  pick(51, 5))
    ratio[n] = np.median(t["qlora"] / t["lora"])
    print(f"{n:>5} tokens: LoRA {np.median(t['lora']):7.3f} ms, QLoRA {np.median(t['qlora']):7.3f} ms, "
          f"{ratio[n]:5.2f}x the time (median of the pairs)")
if FAST:
    print(SMOKE)
else:
    assert ratio[16] > 1.5 and ratio[16] > ratio[4096]

# %% [markdown]
# Read both timings as printed above. QLoRA is slower, by about the time of its dequantisations (twice per adapted
# linear per step: the two printed numbers are of the same order). That is a fixed cost per step: at 16 tokens the
# layer's matmuls are tiny and dequantising dominates; at thousands of tokens it is a small share. On a GPU,
# bitsandbytes dequantises in one CUDA kernel (minift's CuPy path too, `minift/fast/dequant.py`): a smaller
# constant, still a constant. QLoRA trades time for memory.
#
# **Memory.** `measure_memory` runs one real training step (forward, backward, clipping, AdamW) and traces every
# NumPy allocation; `predict_memory` counts the same terms from shapes (tutorial 09). Full fine-tuning gets a fresh
# copy of the base with the same head.

# %%
full = base.to()
full.add_classification_head(train_split.label_names, seed=0)        # method "full": every weight trains
models = {"full": full, "lora": tuned["lora"], "qlora": tuned["qlora"]}
T_batch = batch["input_ids"].shape[1]
measured = {m: measure_memory(model, batch) for m, model in models.items()}
predicted = {m: predict_memory(base.cfg, m, 16, T_batch, rank=8, head_kind="classification", num_labels=2)
             for m in models}
print(f"measured, one step of batch 16 x {T_batch}, float32, AdamW:")
print(format_memory(*measured.values(), labels=tuple(models)))
for m in models:
    print(f"{m:<6} measured {measured[m]['total'] / MiB:6.2f} MiB, predicted {predicted[m]['total'] / MiB:6.2f} MiB; "
          f"saves {1 - measured[m]['total'] / measured['full']['total']:.0%} against full")
for m in models:
    assert abs(predicted[m]["total"] / measured[m]["total"] - 1) < 0.02, m
assert measured["qlora"]["parameters"] < measured["lora"]["parameters"]

# %% [markdown]
# Read the table term by term. QLoRA shrinks one term, *parameters*: its 16 linears are NF4, while embeddings,
# LayerNorms, biases, adapters and head stay float32. *gradients* and *optimizer* are LoRA's (the same adapters
# train). *activations*, the largest term here, are nearly the same for all three (LoRA adds its small $xA^\top$):
# the backward runs through every block either way. So at this size even QLoRA is far from 80%, as printed above.
# The prediction matches the measurement to 2% (asserted): section 5 trusts it at sizes this machine cannot run.
#
# ## 5. Where "~80% less memory" holds
#
# Per weight, under AdamW in float32, full fine-tuning holds the weight, its gradient and two moments: 16 bytes.
# LoRA holds the frozen weight alone: 4 bytes. So even with no activations, LoRA's saving stops at
# $1 - 4/16 = 75\%$ in float32. Mixed precision (bf16 weights, float32 master copy and moments: 16 bytes for full,
# 2 for a frozen weight) raises the bound to $1 - 2/16 = 87.5\%$; a 4-bit base (about half a byte a frozen weight)
# to $1 - 0.52/16 \approx 97\%$. Activations, growing with batch × sequence and the same for every method, pull
# every saving down.
#
# `saving_table` predicts full, LoRA and QLoRA (NF4, double-quantised; rank 8 on every linear) over batch ×
# sequence; `*` marks a saving of at least 80%. The demo model, GPT-2 small and GPT-3 175B's shape, in float32 (what
# minift runs) and bf16-mixed (what large models train in; predicted only). `minift memory --claim` prints the same.

# %%
sizes = {"demo": GPTConfig.preset("demo"), "gpt2": GPTConfig.preset("gpt2"), "gpt3-175b": PAPER_MODELS["gpt3-175b"]}
tables = {}
for precision in ("float32", "bf16-mixed"):
    for size, cfg in sizes.items():
        tables[size, precision] = saving_table(cfg, precision=precision, double_quant=True)
        print(format_saving_table(tables[size, precision], title=size), end="\n\n")

# %% [markdown]
# **Check.** In float32 LoRA never reaches the 75% bound; and what the next paragraph reads off the tables.

# %%
def row(size, precision, batch_size, seq):
    return next(r for r in tables[size, precision]["rows"] if (r["batch"], r["seq"]) == (batch_size, seq))


holds = {(size, precision, r["batch"], r["seq"], m) for (size, precision), t in tables.items() for r in t["rows"]
         for m, ok in r["holds"].items() if ok}
assert all(r["saving"]["lora"] < 0.75 for (size, precision), t in tables.items() if precision == "float32"
           for r in t["rows"])
assert {h for h in holds if h[0] == "demo"} == {("demo", "bf16-mixed", 1, 16, "qlora")}
assert row("gpt2", "float32", 1, 128)["holds"] == {"lora": False, "qlora": True}
for precision in ("float32", "bf16-mixed"):
    for r in tables["gpt3-175b", precision]["rows"]:
        few = r["tokens"] <= 2048
        assert r["holds"] == {"lora": few and precision == "bf16-mixed", "qlora": few}, (precision, r)

# %% [markdown]
# Read the tables as printed above. At the demo size, 80% appears only for QLoRA in bf16-mixed on one 16-token
# sequence. At GPT-2's size QLoRA reaches it in float32 on one sequence of 128 tokens, where LoRA cannot. At GPT-3's
# shape QLoRA holds it in both precisions up to 2,048 tokens a step, plain LoRA only in bf16-mixed. At 8 × 2,048
# tokens activations win and no method gets there. So "~80% less memory" is true of a regime, not of LoRA: a large
# model, few tokens a step, and mixed precision or a 4-bit base. The QLoRA paper adds gradient checkpointing (each
# block keeps only its input and recomputes the rest in the backward), which shrinks activations further;
# `minift memory --papers` checks its 65B figure. Last, GPT-2 on one sequence of 128 tokens, term by term:

# %%
gpt2 = sizes["gpt2"]
terms = [predict_memory(gpt2, m, 1, 128, double_quant=True) for m in ("full", "lora", "qlora")]
print("GPT-2, batch 1 x 128, float32, AdamW, r = 8 on every linear (predicted):")
print(format_memory(*terms, labels=("full", "lora", "qlora"), unit="GiB"))
C, L = gpt2.n_embd, gpt2.n_layer
linear_weights = L * (C * 3 * C + C * C + 2 * C * 4 * C)          # c_attn, attn.c_proj, c_fc, mlp.c_proj
embedding = (gpt2.vocab_size + gpt2.n_ctx) * C                    # wte and wpe, kept in float32
print(f"GPT-2's quantised linear weights: {linear_weights / 1e6:.1f}M; its embeddings (float32): "
      f"{embedding / 1e6:.1f}M")
assert terms[2]["parameters"] < terms[1]["parameters"] / 2 and terms[2]["activations"] == terms[1]["activations"]
assert terms[2]["gradients"] == terms[1]["gradients"] and terms[2]["optimizer"] == terms[1]["optimizer"]

# %% [markdown]
# Only *parameters* shrinks, as printed above: the linear weights go from 4 bytes to about half a byte each, while
# the embeddings, nearly half as many weights, stay float32 (QLoRA quantises only the adapted linears).
#
# ## What to remember
#
# - NF4's 16 values are quantiles of $\mathcal N(0, 1)$, two halves joined at one exact zero, scaled to $[-1, 1]$.
# - Blockwise absmax: divide each block of 64 by its largest magnitude, store the 4-bit index of the nearest level,
#   two a byte: 4.5 bits a weight, $\approx 4.127$ with double quantisation. The error is at most half a gap times
#   the block's absmax.
# - On the base's normally distributed weights NF4 leaves less error than int4 and FP4: its levels sit where the
#   weights are.
# - QLoRA's layer is LoRA's on $\mathrm{deq}(W)$, bit for bit, with no $\bar W$. $\tilde W$ is made twice per linear
#   per step and never kept: memory saved, time paid (a fixed cost, large when a step has few tokens).
# - QLoRA shrinks one term, the frozen weights. "~80% less memory" needs a large model, few tokens a step, and
#   mixed precision or a 4-bit base; in float32 plain LoRA cannot pass 75%.
#
# **Going further:** `minift compare --methods full,lora,qlora,head` (accuracy, forgetting, time, memory);
# `minift memory --claim` and `--papers` (section 5's tables; the LoRA and QLoRA papers' figures); `save_peft`'s
# model card (using a QLoRA adapter with PEFT and bitsandbytes).
#
# ## Exercises
#
# Write your answer in `my_...` (replace `raise NotImplementedError`) and run the cell after it; until you do, it
# checks the folded reference solution.
#
# **Exercise 1 — int4's error bound, by hand.** int4 stores $x/c$ as the nearest of $k/7$, $k = -7..7$. Return the
# largest $|x - \tilde x|$ a weight can suffer in a block whose absmax is `c`. The check quantises random blocks of
# several scales: no error may exceed your bound, and the largest seen must come close to it.

# %%
def my_int4_bound(c):
    """The largest |x − x̃| int4 can leave in a block of absmax c (an array of absmaxes)."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_int4_bound(c):
    return c / 14                                      # half the gap 1/7 between neighbouring levels, times c


# %%
def check_int4_bound(answer):
    g = np.random.default_rng(1)
    X = (g.standard_normal((4096, 64)) * g.uniform(0.01, 10, (4096, 1))).astype(np.float32)   # (NB, K)
    Xq = quant.dequantize(quant.quantize(X, "int4"))                                        # (NB, K)
    c = np.abs(X).max(axis=1)                                                               # (NB,)
    bound = np.asarray(answer(c))[:, None]                                                  # (NB, 1)
    ratio = (np.abs(X - Xq) / bound).max()
    print(f"largest |x − x̃| / your bound over {X.size:,} weights: {ratio:.4f} (must be ≤ 1, and close to it)")
    assert ratio <= 1 + 1e-5 and ratio > 0.95


exercise("Exercise 1 (int4's error bound)", check_int4_bound, my_int4_bound, solution_int4_bound)

# %% [markdown]
# **Exercise 2 — predict the bytes.** Return how many bytes `quant.quantize(W, code, double_quant=dq)` stores for a
# $W$ of `n` weights, blocks of 64 (the last one zero-padded), without quantising anything: the packed patterns and
# a float32 absmax per block, or with double quantisation an int8 per block, a float32 scale per 256 blocks (the
# last group may be partial) and one float32 mean. The check compares with `Quantized.nbytes` on real tensors.

# %%
def my_quantized_bytes(n, double_quant):
    """Bytes of the Quantized of n weights."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_quantized_bytes(n, double_quant):
    blocks = -(-n // 64)                                # ⌈n / 64⌉
    if not double_quant:
        return blocks * (32 + 4)                        # 64 patterns in 32 bytes, a float32 absmax
    return blocks * (32 + 1) + 4 * -(-blocks // 256) + 4   # int8 absmaxes, a float32 per 256, the mean


# %%
def check_quantized_bytes(answer):
    g = np.random.default_rng(2)
    for shape in ((128, 512), (100, 7), (768, 3072), (1, 1)):
        for dq in (False, True):
            real = quant.quantize(g.standard_normal(shape).astype(np.float32), "nf4", double_quant=dq).nbytes
            print(f"W {shape}, double_quant={dq}: Quantized.nbytes {real:,}, yours {answer(np.prod(shape), dq):,}")
            assert answer(int(np.prod(shape)), dq) == real


exercise("Exercise 2 (bytes of a quantised matrix)", check_quantized_bytes, my_quantized_bytes,
         solution_quantized_bytes)

# %% [markdown]
# **Exercise 3 — NormalFloat with k bits.** Generalise section 1 to $2^k$ values: $2^{k-1} + 1$ quantiles for the
# positive half and $2^{k-1}$ for the negative one, each from $\delta$ down to $\tfrac12$, one zero dropped,
# normalised by $Q(\delta)$. The check: $k = 4$ gives NF4; every $k$ from 2 to 6 gives $2^k$ ascending values, one
# exact zero, $2^{k-1}$ of them positive, ends at $\pm 1$.

# %%
def my_nf_values(k, delta=0.9677083):
    """[2**k] ascending NormalFloat-k values."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_nf_values(k, delta=0.9677083):
    half = 2 ** (k - 1)
    pos = [Q(p) for p in np.linspace(delta, 0.5, half + 1)[:-1]]
    neg = [-Q(p) for p in np.linspace(delta, 0.5, half)[:-1]]
    return np.sort(np.array(pos + [0.0] + neg)) / Q(delta)


# %%
def check_nf_values(answer):
    assert np.abs(answer(4) - quant.nf4_values()).max() < 1e-12
    for k in range(2, 7):
        vk = np.asarray(answer(k))
        print(f"NF{k}: {len(vk)} values, smallest gap {np.diff(vk).min():.4f}, largest {np.diff(vk).max():.4f}")
        assert len(vk) == 2 ** k and (np.diff(vk) > 0).all() and (vk == 0).sum() == 1
        assert (vk > 0).sum() == 2 ** (k - 1) and vk[0] == -1.0 and vk[-1] == 1.0


exercise("Exercise 3 (NormalFloat-k)", check_nf_values, my_nf_values, solution_nf_values)
