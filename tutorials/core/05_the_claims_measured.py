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
# # Core 05 · The article's claims, measured
#
# **What you will see.** One call trains full fine-tuning and LoRA on the same base model, reviews, order and step
# budget, and writes a report folder: `results.json`, `report.md` and figures. Then each of the article's claims is
# held against that run: a formula says what to expect, a cell prints the measurement and then **Held** or **Did not
# hold**. You will see the training curves, the singular values of both updates, how much the two overlap, and
# intruder counts beside what random directions score. The course ends with a scorecard of every verdict.
#
# **Article:** §3.2 LoRA的实践操作与效果 (*LoRA in practice*): "减少90%以上参数更新的情况下,达到与完全微调相当的性能"
# — *over 90% fewer updated parameters, at performance comparable to full fine-tuning*; §5.1 资源消耗与时间效率
# (*Resources and time*):
#
# > LoRA的训练时间仅为完全微调的30%,内存占用仅为20%。
# >
# > *LoRA's training time is only 30% of full fine-tuning's, its memory footprint only 20%.*
#
# and §4.2 MIT论文中的实证研究分析 (*The MIT study*). The paper the article means is Shuttleworth et al., "LoRA vs
# Full Fine-tuning: An Illusion of Equivalence" (arXiv 2410.21228). It reports no time or memory figures; it
# finds that the two methods reach similar accuracy with *different* updates: LoRA's of low effective rank, with
# "intruder dimensions", and more forgetting of the pretraining data where intruders appear.
#
# **You will learn**
# 1. to run `minift compare` from Python (`minift.app.compare.compare`) and read `results.json`;
# 2. to count trainable parameters, $r(\text{in}+\text{out})$ against $\text{in}\cdot\text{out}$;
# 3. why LoRA saves at most a third of a step's matmul arithmetic, and why its memory saving depends on activations;
# 4. to read an update's singular values, the overlap of two updates, and intruders against a random baseline;
# 5. which claims hold at this scale, and which cannot.
#
# **中文:** [zh/05_the_claims_measured.py](zh/05_the_claims_measured.py).
#
# **Time:** about 15 minutes to read; about 1 min to run in normal mode and about 4 s in fast mode (`MINIFT_FAST=1`),
# measured on an idle 2-core Intel Xeon with `OPENBLAS_NUM_THREADS=1`; nearly all of it the two 600-step fine-tunes,
# which can take several times longer on cores busy with other work.
#
# **Prerequisites:** core 03 (LoRA: $s = \alpha/r$, $A$ $[r, \text{in}]$, $B$ $[\text{out}, r]$) and core 04 (one
# batch through both methods; the matmul LoRA skips). **Going further:** [tutorial 06](../06_full_finetuning.py)
# (full fine-tuning in depth), [tutorial 09](../09_time_and_memory.py) (time and memory, term by term),
# [tutorial 10](../10_intruder_dimensions.py) (the MIT paper in detail, and continual learning).

# %%
import sys

import numpy as np

from minift import GPTConfig
from minift.app.compare import CompareConfig, compare
from minift.app.report import energy_in_top, main_table, memory_table
from minift.app.tutorial import FAST, exercise, out_dir, pick
from minift.config import param_shapes
from minift.measure.bench import count_flops
from minift.measure.memory import memory_saving
from minift.training.finetune import load_task_splits

MiB = 2 ** 20
verdicts = {}                  # claim -> (what was measured, "Held" / "Did not hold"), for the scorecard at the end
if FAST:
    print("FAST MODE: a smoke run (8 steps on 64 reviews). Every number and verdict below only shows that the "
          "cells work; none of them is a finding. Run without MINIFT_FAST for the real measurement.")

# %% [markdown]
# ## 1. One run, every measurement
#
# `minift compare` on the command line is this call. Its default trains three methods — full fine-tuning, LoRA
# ($r = 8$ on all 16 linear layers, $\alpha = 16$) and a head-only baseline — for 600 steps each. To fit about two
# minutes we run **full fine-tuning and LoRA only**; the steps, batch, data, rank and learning rates are the
# default's. Fast mode runs `CompareConfig.quick_config()`: 8 steps, a smoke run.

# %%
# workers=1: each batch computed whole, in one thread, so this run prints the same numbers on any machine
config = pick(CompareConfig(methods=("full", "lora"), workers=1),
              CompareConfig.quick_config(methods=("full", "lora"), workers=1))
report_dir = out_dir("runs", "core05_compare")
results = compare(config, out=report_dir, progress=not FAST)

ran = results["config"]                                # what ran (quick mode also caps the training set)
full, lora = (next(run for run in results["runs"] if run["method"] == m) for m in ("full", "lora"))
r = ran["rank"]
print(f"{ran['steps']} steps of batch {ran['batch_size']} on {ran['train_size'] or 'all the'} training reviews, "
      f"LoRA r={r}, alpha={ran['alpha']:g}, workers={ran['workers']}; the run took {results['seconds']:.0f} s")
print(main_table(results))
print("written:", ", ".join(sorted(p.name for p in report_dir.iterdir() if p.is_file())))


# %% [markdown]
# The table is `report.md`'s first table. Every number below is read from `results` — the dictionary `compare`
# returned and saved as `results.json` — so what you read is what this run measured. The figures are the ones the
# run wrote into the report folder; this helper displays one (inline in a notebook; as a script, it prints the path).

# %%
def figure(name):
    """Show one of the PNG files the run wrote: inline in a notebook; as a script, where to open it."""
    path = report_dir / name
    assert path.is_file(), path
    if "ipykernel" in sys.modules:                 # a Jupyter kernel: display the file itself
        from IPython.display import Image, display
        display(Image(filename=str(path)))
    print("figure:", path)


# %% [markdown]
# ## 2. "90% fewer parameters" (§3.2)
#
# A linear layer with weight $W$ [in, out] trains $\text{in}\cdot\text{out}$ numbers in full fine-tuning. LoRA
# freezes $W$ and trains $A$ [$r$, in] and $B$ [out, $r$]:
#
# $$\frac{\text{LoRA}}{\text{full}} = \frac{r(\text{in}+\text{out})}{\text{in}\cdot\text{out}}.$$
#
# Each block has four linears: `c_attn` [$C$, $3C$], `attn.c_proj` [$C$, $C$], `c_fc` [$C$, $4C$] and `mlp.c_proj`
# [$4C$, $C$]. Both methods also train the fresh classification head, `score.weight` [2, $C$]. Full fine-tuning
# trains everything else too: embeddings, LayerNorms, biases.

# %%
base = GPTConfig.from_dict(results["base_config"])
C, L = base.n_embd, base.n_layer
linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]        # [in, out] of c_attn, attn.c_proj, c_fc, mlp.c_proj
head = 2 * C                                                   # score.weight [2 labels, C], trained by both methods
adapters = L * sum(r * (i + o) for i, o in linears)
assert lora["trainable"] == adapters + head, (lora["trainable"], adapters + head)
assert full["trainable"] == full["total"]                      # full fine-tuning trains every parameter
fewer = 1 - lora["trainable"] / full["trainable"]
print(f"full trains {full['trainable']:,}; LoRA trains {adapters:,} (adapters) + {head:,} (head) "
      f"= {lora['trainable']:,}: {fewer:.1%} fewer")

gpt2 = GPTConfig.preset("gpt2")                                # the same count at GPT-2's size, from shapes only
gpt2_total = sum(int(np.prod(shape)) for shape in param_shapes(gpt2).values())
gpt2_adapters = gpt2.n_layer * sum(r * (i + o) for i, o in [(768, 2304), (768, 768), (768, 3072), (3072, 768)])
print(f"GPT-2 ({gpt2_total:,} parameters), LoRA r={r} on every linear: {gpt2_adapters:,} trained, "
      f"{1 - gpt2_adapters / gpt2_total:.2%} fewer")
verdicts['"90% fewer parameters"'] = (f"{fewer:.1%} fewer", "Held" if fewer >= 0.9 else "Did not hold")
print('"90% fewer parameters":', verdicts['"90% fewer parameters"'][1])

# %% [markdown]
# The `assert` checks the formula against what `compare` trained: this claim is arithmetic, not a measurement.
# The saving grows with width (the GPT-2 line): $r(\text{in}+\text{out})$ grows with it, $\text{in}\cdot\text{out}$
# with its square.
#
# ## 3. "~70% less time" (§5.1)
#
# Count a linear layer's matmuls in one training step, for $N$ tokens. The forward, $y = xW$, costs
# $2N\cdot\text{in}\cdot\text{out}$ FLOPs. The backward has two more of the same size: $\bar x = \bar y W^\top$,
# which every method needs to pass the gradient on to earlier layers, and $\bar W = x^\top \bar y$, the weight's
# gradient. A frozen $W$ skips only $\bar W$ (core 04). LoRA then adds its own small matmuls, $6Nr(\text{in}+
# \text{out})$:
#
# $$\frac{\text{LoRA}}{\text{full}} = \frac{4N\,\text{in}\cdot\text{out} + 6Nr(\text{in}+\text{out})}
# {6N\,\text{in}\cdot\text{out}} \;\ge\; \frac{2}{3}.$$
#
# Attention's own matmuls ($QK^\top$ and the weighted sum) have no weights and cost the same for both methods, so the
# whole step's ratio is higher still. In matmul arithmetic, LoRA saves at most a third. Below, `count_flops` counts
# one step of this run's batch (the classification head reads one token per review, so its FLOPs are left out),
# and the measured step times follow.

# %%
B, T = full["memory"]["batch_shape"]                           # the batch each step saw: [reviews, tokens]
step = {m: count_flops(base, B, T, m, rank=r) for m in ("full", "lora")}
flops = {m: f["linear"] + f["lora"] + f["attention"] for m, f in step.items()}
flop_ratio = flops["lora"] / flops["full"]
assert flop_ratio >= 2 / 3, flop_ratio
print(f"one step of batch {B} x {T} = {B * T} tokens: full {flops['full'] / 1e9:.2f} GFLOP, "
      f"LoRA {flops['lora'] / 1e9:.2f} GFLOP, ratio {flop_ratio:.3f} (the floor is 2/3 = 0.667)")

time_ratio = lora["ms_per_step"] / full["ms_per_step"]
busy = results["machine"]["cpu_per_wall"]
print(f"measured: full {full['ms_per_step']:.0f} ms/step, LoRA {lora['ms_per_step']:.0f} ms/step, "
      f"ratio {time_ratio:.2f}: {1 - time_ratio:.0%} less time")
print("measured ratio below the FLOP ratio:", "yes" if time_ratio < flop_ratio else "no")
print(f"this run got {busy:.2f} CPU seconds per second of wall time"
      + (" (less than one core: other work shared the machine, so the times are noisy)" if busy < 0.8 else ""))
verdicts['"~70% less time"'] = (f"{1 - time_ratio:.0%} less", "Held" if 1 - time_ratio >= 0.6 else "Did not hold")
print('"~70% less time":', verdicts['"~70% less time"'][1])

# %% [markdown]
# The FLOP ratio bounds the matmuls only. The rest of a step — AdamW and gradient clipping over every trained
# parameter, the embedding's gradient — costs the same whatever the batch, and LoRA nearly removes it. With few tokens
# per step, as here, that rest weighs a lot and the measured ratio can fall below the FLOP ratio (the cell says
# whether it did); with the thousands of tokens per step of real fine-tuning the matmuls dominate, and the saving
# falls back under a third (the LoRA paper, Hu et al. 2021 §4.2: 25% faster on GPT-3 175B). LoRA's thin matmuls, $r$
# wide, pull the other way: a CPU runs them far below its peak. And on a shared machine the ratio moves from run to
# run. [Tutorial 09](../09_time_and_memory.py) times each op.
#
# ## 4. "~80% less memory" (§5.1)
#
# A training step holds four things:
#
# | term | full fine-tuning | LoRA |
# |---|---|---|
# | parameters | $P$ | $P$ + adapters |
# | gradients | $P$ | adapters |
# | AdamW state ($m$, $v$) | $2P$ | $2\times$ adapters |
# | activations (kept by the forward for the backward) | $\propto$ batch × tokens × width × layers | about the same |
#
# LoRA deletes the gradients and the optimizer state of frozen weights: three of the four floats per parameter.
# Activations it cannot delete: the backward of a frozen layer still needs its inputs to compute $\bar x$. So the
# saving is large only where parameters dominate. `compare` measures the peak of one step with `tracemalloc`, and
# `minift.measure.memory.predict_memory` predicts it term by term, from shapes alone.

# %%
print(memory_table(results))
for run in (full, lora):
    measured, predicted = run["memory"]["measured"]["total"], run["memory"]["predicted"]["total"]
    print(f"{run['label']}: measured {measured / MiB:.2f} MiB, predicted {predicted / MiB:.2f} MiB, "
          f"off by {abs(measured - predicted) / measured:.2%}")
    assert abs(measured - predicted) / measured < 0.01, run["label"]     # the prediction, within 1%
parts = full["memory"]["measured"]
print(f"full fine-tuning's peak: activations {parts['activations'] / parts['total']:.0%}, gradients + AdamW state "
      f"{(parts['gradients'] + parts['optimizer']) / parts['total']:.0%}; the largest term: "
      f"{max(('parameters', 'gradients', 'optimizer', 'activations'), key=parts.get)}")
less_memory = 1 - lora["memory"]["measured"]["total"] / full["memory"]["measured"]["total"]
from minift.measure.memory import CLAIM                  # 0.8: the report's and `minift memory --claim`'s rule
verdicts['"~80% less memory"'] = (f"{less_memory:.0%} less", "Held" if less_memory >= CLAIM else "Did not hold")
print('"~80% less memory":', verdicts['"~80% less memory"'][1])

for b, t in ((8, 1024), (1, 128)):                             # predicted only: where could 80% hold?
    print(f"predicted for GPT-2, batch {b} x {t} tokens: LoRA saves {1 - memory_saving(gpt2, b, t, rank=r):.0%}")

# %% [markdown]
# Measurement and prediction agree within the 1% the `assert` allows, so the split can be trusted. Read the line that
# names the largest term: whatever activations weigh, LoRA keeps all of them. The two GPT-2 lines are the same
# arithmetic at a real model's size: with long batches activations dominate and LoRA saves little; with one short
# sequence the parameter terms dominate and the saving approaches the article's. "80% less" is a statement about a
# regime, not about LoRA. [Tutorial 09](../09_time_and_memory.py) sweeps size, tokens and rank.
#
# ## 5. "Comparable accuracy" (§3.2)
#
# First, did both runs learn? The training figure shows the loss (faint: every step; bold: a moving average) and the
# validation accuracy at six points along the run.

# %%
figure("training.png")

# %% [markdown]
# The test split uses review templates that training never saw, so it measures generalisation, not memory. It is
# balanced: the majority label's share is what a model that learned nothing scores. "Comparable" needs a rule; we
# use the report's, within 3 points.

# %%
test = load_task_splits(ran["task"], None, ran["eval_size"])[2]
chance = np.bincount(test.label_ids).max() / len(test.label_ids)
gap = lora["test_accuracy"] - full["test_accuracy"]
print(f"test accuracy: full {full['test_accuracy']:.3f}, LoRA {lora['test_accuracy']:.3f} ({100 * gap:+.1f} points);"
      f" chance (the majority label) {chance:.3f}")
verdicts['"comparable accuracy"'] = (f"{100 * gap:+.1f} points", "Held" if abs(gap) <= 0.03 else "Did not hold")
print('"comparable accuracy" (within 3 points):', verdicts['"comparable accuracy"'][1])
figure("accuracy_vs_trainable.png")

# %% [markdown]
# Read the verdict with its size: as printed above, how far each method is from chance and from the other. One seed
# decides a lot at this scale (the README's seed table); `minift compare --seeds 1,2` repeats every run, and
# `--train-size 200` tests the article's other claim, that LoRA overfits less on small data.
#
# ## 6. What the MIT paper found (§4.2)
#
# ### 6a. The effective rank of the update
#
# Take the singular values $\sigma_1 \ge \sigma_2 \ge \dots$ of each matrix's update
# $\Delta W = W_\text{tuned} - W_0$. LoRA's is $s\,A^\top B^\top$, a product through $r$ dimensions: at most $r$
# are nonzero. The *effective rank* (Roy & Vetterli) counts how many matter:
# $\exp\big(-\sum_i p_i \ln p_i\big)$ with $p_i = \sigma_i / \sum_j \sigma_j$. It is $k$ for $k$ equal values,
# and never more than the rank.

# %%
figure("update_spectra.png")
rank_lora = [u["eff_rank"] for u in lora["updates"]]
rank_full = [u["eff_rank"] for u in full["updates"]]
assert max(rank_lora) <= r + 1e-6, max(rank_lora)              # by construction: rank(s A^T B^T) <= r
tail = max(max(u["singular_values"][r:]) / u["singular_values"][0] for u in lora["updates"])
assert tail < 1e-4, tail                                       # past the r-th, LoRA's singular values are rounding
updates = results["summary"]["updates"]
print(f"effective rank of dW, mean over {len(rank_lora)} matrices: full {np.mean(rank_full):.1f} "
      f"(of a possible {updates['full']['max_rank']}), LoRA {np.mean(rank_lora):.1f} (at most r = {r})")
print(f"share of ||dW||^2 in the top {r} directions (median): full {updates['full']['energy_top_r']:.0%}, "
      f"LoRA {updates[lora['label']]['energy_top_r']:.0%}; LoRA's largest sigma beyond r: {tail:.1e} of its first")
held = np.mean(rank_full) > np.mean(rank_lora)
verdicts["full's update has the higher effective rank"] = (f"{np.mean(rank_full):.1f} vs {np.mean(rank_lora):.1f}",
                                                            "Held" if held else "Did not hold")
print("full's update has the higher effective rank:", "Held" if held else "Did not hold")

# %% [markdown]
# LoRA's spectrum ends at the dotted line $r$; full fine-tuning's decays without a cliff. How much of full
# fine-tuning's update a rank-$r$ update could hold at best is its share in the top $r$ directions (Eckart–Young),
# printed above. The layer-by-layer view shows where each update lives: how far each matrix moved, $\|\Delta
# W\|/\|W_0\|$, and its effective rank.

# %%
figure("update_by_layer.png")

# %% [markdown]
# ### 6b. Are the two updates alike?
#
# Similar accuracy does not mean a similar solution. For each matrix, take the top-$k$ left singular vectors of
# each update ($U_\text{full}$, $U_\text{LoRA}$, $k = r$) and measure how much the two subspaces overlap,
# $\varphi = \|U_\text{full}^\top U_\text{LoRA}\|_F^2 / k$ (the LoRA paper's subspace similarity, §7): 1 is the same
# subspace, and two random $k$-dimensional subspaces share about $k/\text{width}$.

# %%
figure("similarity.png")
sim = results["summary"]["similarity"]
print(f"overlap of the top-{sim['k']} directions, over {sim['matrices']} matrices: mean {sim['mean']:.2f} "
      f"(from {sim['min']:.2f} to {sim['max']:.2f}); two random subspaces: {sim['random']:.3f}; "
      f"{sim['above_twice_random']} matrices above twice random")
verdicts["the two updates are different (overlap < 0.5)"] = (f"overlap {sim['mean']:.2f}",
                                                             "Held" if sim["mean"] < 0.5 else "Did not hold")
print("the two updates are different (overlap < 0.5):", verdicts["the two updates are different (overlap < 0.5)"][1])
print("more alike than two random subspaces (mean > 2 x random):", "Yes" if sim["mean"] > 2 * sim["random"] else "No")

# %% [markdown]
# Read the last two lines together. An overlap above random but below one half means the two methods share some
# directions and not others: the paper's "illusion of equivalence", in miniature.
#
# ### 6c. Intruder dimensions
#
# The paper's Algorithm 1, on the tuned weight $W_0 + \Delta W$ (not on $\Delta W$): of its top 10 singular
# vectors, one is an *intruder* if its best $|\cos|$ with $W_0$'s singular vectors is below $\varepsilon$ — a strong
# new direction. The paper uses $\varepsilon = 0.5$ on wide models. At width 128 even a *random* direction has a
# close match among $W_0$'s, so every count needs the random baseline beside it. The figure sweeps $\varepsilon$ and
# shades the band where random directions go from rarely to nearly always counted: only there does a count mean
# something.

# %%
figure("intruders.png")
spectral = lora["spectral"]
i = spectral["eps"].index(0.5)
print(f"at the paper's eps = 0.5: full {full['spectral']['intruders'][i]}, LoRA {spectral['intruders'][i]} "
      f"of {spectral['possible']} top directions; random directions: {spectral['random_baseline'][i]:.0f}")
summary = results["summary"]
mid = summary["intruder_mid"]
print(f"band where the count means something: eps {summary['intruder_range'][0]:g} to "
      f"{summary['intruder_range'][1]:g}; at eps = {mid['eps']:g}: full {mid['full']:.0%}, "
      f"LoRA {mid[lora['label']]:.0%}, random {mid['random']:.0%}")
held = mid[lora["label"]] > mid["full"]
verdicts["LoRA has more intruders than full"] = (f"{mid[lora['label']]:.0%} vs {mid['full']:.0%}",
                                                 "Held" if held else "Did not hold")
print("LoRA has more intruders than full:", "Held" if held else "Did not hold")

# %% [markdown]
# At $\varepsilon = 0.5$ random directions would all count (as printed), so that count says nothing here. Inside the
# band, compare each method with the random line. [Tutorial 10](../10_intruder_dimensions.py) runs the paper's
# rank sweep, rsLoRA and continual learning, where intruders are meant to accumulate.
#
# ### 6d. Forgetting
#
# Forgetting is the next-token loss on held-out text like the pretraining text, after fine-tuning minus before (in
# nats, through the model's tied LM head). The paper links intruders to forgetting, and tests a mitigation:
# scale the intruders' singular values by $\lambda = 0.75$.

# %%
print(f"forgetting: full {full['forgetting']:+.3f}, LoRA {lora['forgetting']:+.3f} nats "
      f"(the base's loss: {results['base_lm_loss']:.3f})")
fix = lora["mitigation"]
print(f"mitigation on LoRA (eps = {fix['eps']:g}, lambda = {fix['lam']:g}): forgetting {lora['forgetting']:+.3f} -> "
      f"{fix['forgetting']:+.3f}, test accuracy {lora['test_accuracy']:.3f} -> {fix['test_accuracy']:.3f}")
held = lora["forgetting"] < full["forgetting"]
verdicts["LoRA forgets less"] = (f"{lora['forgetting']:+.3f} vs {full['forgetting']:+.3f}",
                                 "Held" if held else "Did not hold")
print("LoRA forgets less:", "Held" if held else "Did not hold")

# %% [markdown]
# ## 7. The scorecard
#
# Every verdict above, in one table: this run's answer to the article.

# %%
print(f"{'claim':<48}{'measured':<20}verdict" + ("   (FAST MODE: smoke run, not findings)" if FAST else ""))
for claim, (measured, verdict) in verdicts.items():
    print(f"{claim:<48}{measured:<20}{verdict}")
assert verdicts['"90% fewer parameters"'][1] == "Held"        # arithmetic: true in any mode
assert verdicts["full's update has the higher effective rank"][1] == "Held" or FAST

# %% [markdown]
# ## What to remember
#
# - **Parameters** are arithmetic: $r(\text{in}+\text{out})$ against $\text{in}\cdot\text{out}$. "90% fewer" holds,
#   and holds more strongly as the model widens.
# - **Time**: a frozen weight still costs its forward and $\bar x = \bar y W^\top$; only $\bar W$ is skipped, so
#   LoRA keeps at least 2/3 of the matmul FLOPs. More is saved only where the rest of the step (AdamW over every
#   weight) weighs a lot, with few tokens per step.
# - **Memory**: LoRA deletes gradients and optimizer state of frozen weights, never activations. The saving is a
#   property of the regime (model size against batch × tokens), predicted term by term and measured.
# - **Accuracy**: "comparable" needs a rule and more than one seed; report the gap and chance beside it.
# - **The MIT paper**: LoRA's update has effective rank at most $r$ by construction, and full fine-tuning's update is
#   not the same change, even at similar accuracy. Intruder counts mean something only against a random baseline.
#
# That ends the core course: from a linear layer's gradient (core 01) to the article's claims. For depth:
# [tutorial 06](../06_full_finetuning.py) (full fine-tuning), [09](../09_time_and_memory.py) (time and memory),
# [10](../10_intruder_dimensions.py) (the MIT paper and continual learning); and `minift compare --ranks 1,2,4,8,16`
# for the rank sweep.
#
# ## Exercises
#
# Write your answer in the `my_...` function (replace `raise NotImplementedError`) and run the cell after it. Until
# you do, that cell checks the reference solution, which is folded in Jupyter — try first.
#
# **Exercise 1 — how much of an update fits in rank $r$.** Given one matrix's singular values (largest first) and
# $r$, return the share of $\|\Delta W\|_F^2 = \sum_i \sigma_i^2$ in the top $r$. The check compares with the
# report's median over full fine-tuning's matrices, and with LoRA's, which must be 1.

# %%
def my_energy_in_top(singular_values, r):
    """Share of sum(sigma^2) in the first r values; 0 for an all-zero update."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_energy_in_top(singular_values, r):
    s2 = np.square(np.asarray(singular_values, dtype=np.float64))
    return float(s2[:r].sum() / s2.sum()) if s2.sum() > 0 else 0.0


# %%
def check_energy(answer):
    for run in (full, lora):
        shares = [answer(u["singular_values"], r) for u in run["updates"]]
        median = float(np.median(shares))
        print(f"{run['label']}: median share in the top {r}: yours {median:.4f}, "
              f"report {updates[run['label']]['energy_top_r']:.4f}")
        assert abs(median - updates[run["label"]]["energy_top_r"]) < 1e-9
        assert all(abs(answer(u["singular_values"], r) - energy_in_top(u["singular_values"], r)) < 1e-9
                   for u in run["updates"])
    assert answer([0.0, 0.0], 1) == 0.0 and abs(answer([3.0, 4.0], 1) - 9 / 25) < 1e-12
    assert min(answer(u["singular_values"], r) for u in lora["updates"]) > 1 - 1e-6   # rank <= r: all of it


exercise("Exercise 1 (energy in the top r)", check_energy, my_energy_in_top, solution_energy_in_top)

# %% [markdown]
# **Exercise 2 — the FLOP floor.** Return the matmul FLOPs per token of one linear [in, out] in a training step:
# `method="full"` trains $W$; `method="lora"` freezes it and trains a rank-$r$ adapter. The check sums yours over
# every linear of two models and compares with `count_flops`, then asks the ratio for a square matrix as $r$ shrinks.

# %%
def my_linear_flops(n_in, n_out, r, method):
    """Matmul FLOPs per token of one linear layer in a training step (forward + backward)."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_linear_flops(n_in, n_out, r, method):
    frozen = 4 * n_in * n_out                          # y = xW and dx = dy W^T; dW = x^T dy skipped
    return 6 * n_in * n_out if method == "full" else frozen + 6 * r * (n_in + n_out)


# %%
def check_linear_flops(answer):
    for name in ("demo", "gpt2"):
        cfg = GPTConfig.preset(name)
        c = cfg.n_embd
        shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]
        for method in ("full", "lora"):
            want = count_flops(cfg, 1, 1, method, rank=r)
            yours = cfg.n_layer * sum(answer(i, o, r, method) for i, o in shapes)
            print(f"{name} {method}: count_flops {want['linear'] + want['lora']:,}, yours {yours:,}")
            assert yours == want["linear"] + want["lora"]
    ratios = [answer(4096, 4096, k, "lora") / answer(4096, 4096, k, "full") for k in (64, 8, 1)]
    print("square 4096 x 4096, LoRA / full for r = 64, 8, 1:", ", ".join(f"{x:.4f}" for x in ratios))
    assert all(x > 2 / 3 for x in ratios) and ratios == sorted(ratios, reverse=True)


exercise("Exercise 2 (the FLOP floor)", check_linear_flops, my_linear_flops, solution_linear_flops)
