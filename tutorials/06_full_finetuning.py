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
# # 06 · Full fine-tuning: every weight moves, and what that costs
#
# **Article:** §2.1 完全微调的步骤详解 (*Full fine-tuning, step by step*):
#
# > 4. 训练模型:使用任务数据集对预训练模型进行训练。在这个过程中,模型的所有参数都会被更新 …
# > 6. 部署和应用:… 还需要考虑模型的推理速度、内存占用等因素。
# >
# > *4. Train the model on the task's data; in this process all of the model's parameters are updated. …
# > 6. Deploy: … consider the model's inference speed and memory footprint.*
#
# and §2.2 完全微调的优势与局限性 (*Pros and cons of full fine-tuning*), whose four limitations are
# 计算成本高 (*high compute cost*), 过拟合风险 (*risk of overfitting*: "如果任务数据集较小,容易导致模型过拟合" — *with a
# small task data set the model easily overfits*), 参数量大 (*many parameters*: large to deploy) and 训练不稳定
# (*unstable training*: "损失值波动较大或收敛缓慢" — *the loss fluctuates strongly or converges slowly*).
#
# Each claim gets a measurement on the shipped base and the sentiment task of tutorial 05. Where the numbers refine
# the article, we say so: "all parameters are updated" is true of every *tensor*, but not of every *number*.
#
# **You will learn**
# 1. to measure how far every weight tensor moved, $\lVert \Delta W\rVert / \lVert W\rVert$, and which entries did not
#    move at all, and why;
# 2. what a full fine-tuning step holds in memory (`minift.measure.memory.predict_memory`: 2 AdamW floats and 1 gradient
#    per trained parameter) and how long it takes;
# 3. how large the saved model is (`save_pretrained`), against what LoRA will save;
# 4. to watch full fine-tuning overfit 64 examples: training loss to 0, validation loss up;
# 5. what "unstable training" looks like (a too-large learning rate) and when minift's divergence guard
#    (`TrainingDiverged`) fires;
# 6. deployment: one self-contained model folder, reloaded bit for bit, and its inference speed.
#
# **中文:** [zh/06_full_finetuning.py](zh/06_full_finetuning.py).
#
# **Time:** 3–5 minutes normally (a 400-step fine-tune, two 200-step small-data runs, full and LoRA, three 150-step
# runs: 3 min 16 s to 4 min 41 s in three runs with `OPENBLAS_NUM_THREADS=1` while other jobs competed for the cores;
# less on idle ones), 15–26 s in fast mode (`MINIFT_FAST=1`), measured on 2 CPU cores of a shared, busy machine.
# 30 minutes to read.
#
# **Prerequisite:** tutorial 05 (the task, the head, `finetune`).

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np

from minift import GPT, GPTConfig, LoRAConfig
from minift.app.tutorial import FAST, exercise, out_dir, pick, show
from minift.base import load_base
from minift.config import HEAD_WEIGHT
from minift.data import task_source
from minift.measure.memory import format_memory, predict_memory
from minift.methods import setup_method
from minift.model import param_shapes
from minift.training.evaluate import split_metrics
from minift.training.finetune import (
    DEFAULT_HEAD_LR,
    DEFAULT_LR,
    FinetuneConfig,
    finetune,
    load_task_splits,
)
from minift.training.train import TrainConfig, TrainingDiverged, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode: every section is a smoke run (few steps, small evaluation sets), whose numbers and verdicts are "
      "not findings" if FAST else "normal mode")
base, tok = load_base()

# %% [markdown]
# ## 1. A full fine-tune (§2.1 steps 1–5)
#
# §2.1's steps 1–5 are tutorial 05's five steps with nothing frozen: `FinetuneConfig(method="full")`. The learning
# rate 1e-3 is the one tutorial 05 chose on validation.

# %%
steps = pick(400, 30)
# (workers=1: the whole batch in one thread, the path the numbers quoted below come from on any machine; the
# default, "auto", splits it across 2 threads where that is faster and changes the last bits.)
fcfg = FinetuneConfig(method="full", steps=steps, batch_size=16, lr=1e-3, eval_every=0, eval_size=pick(None, 128),
                      workers=1)
model, _, summary = finetune(base, tok, fcfg, progress=not FAST)
print(f"{summary['trainable']:,} trainable parameters ({summary['percent']:.0f}%), {steps} steps, "
      f"{summary['ms_per_step']:.0f} ms/step; validation accuracy {summary['val_accuracy']:.3f}, "
      f"test accuracy {summary['test_accuracy']:.3f}")
if FAST:
    print(SMOKE)

# %% [markdown]
# ## 2. Every weight tensor moves
#
# For every parameter tensor, the relative change
#
# $$r(W) = \frac{\lVert W_\text{tuned} - W_0\rVert_F}{\lVert W_0\rVert_F}.$$
#
# (`score.weight` has no $W_0$ in the base: it is new, so it is left out.)

# %%
rel = {n: float(np.linalg.norm(model.params[n] - base.params[n]) / np.linalg.norm(base.params[n]))
       for n in base.params}
order = sorted(rel, key=rel.get, reverse=True)
print("moved most: ", ", ".join(f"{n} {rel[n]:.3f}" for n in order[:4]))
print("moved least:", ", ".join(f"{n} {rel[n]:.4f}" for n in order[-4:]))
ln_gains = {n: rel[n] for n in rel if n.split(".")[-2].startswith("ln_") and n.endswith(".weight")}
c_proj = {n: rel[n] for n in rel if ".c_proj." in n}
others = [rel[n] for n in rel if n not in ln_gains]
print(f"LayerNorm gains ({len(ln_gains)}): {min(ln_gains.values()):.1%} to {max(ln_gains.values()):.1%}; "
      f"c_proj weights and biases ({len(c_proj)}): {min(c_proj.values()):.1%} to {max(c_proj.values()):.1%}; "
      f"the 4 that moved most are all c_proj: {all(n in c_proj for n in order[:4])}")
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 9))
names = list(base.params)
ax.barh(range(len(names)), [rel[n] for n in names], color=["C1" if n.startswith(("wte", "wpe")) else "C0"
                                                            for n in names])
ax.set_yticks(range(len(names)), names, fontsize=6)
ax.invert_yaxis()
ax.set_xscale("log")
ax.set_xlabel("‖W_tuned − W_0‖ / ‖W_0‖")
ax.set_title(f"full fine-tuning, {steps} steps: relative change of every tensor")
show(fig, "06_relative_change")

# %% [markdown]
# Every tensor moved, by very different relative amounts (the ranges printed above): the LayerNorm gains, which sit
# near 1, least of all, by a percent or two; the `c_proj` weights (initialised smaller than the other linears, std
# $0.02/\sqrt{2L}$) and their biases (small after pretraining) by tens of percent, and they hold the top places. A
# relative change says as much about a tensor's size as about how much training used it.
#
# But not every *number* moved. AdamW's update of an entry whose gradient has always been exactly
# 0 is exactly 0 (its moments $m, v$ stay 0, and weight decay is 0 here). Two tensors have such entries:
#
# - `wpe` row $t$ (position $t$) gets a gradient only from reviews at least $t+1$ tokens long;
# - `wte` row $v$ (token $v$) only from batches containing token $v$ (exercise 2).
#
# Padding never contributes: pads come after the last real token, which is the only position the head reads, and
# causal attention never looks forward. We replay the exact batches the run saw (the same source, same seed) and
# find the longest real review.

# %%
train_split, val_split, test_split = load_task_splits("sentiment", eval_size=pick(None, 128))
replay = task_source(train_split, tok, max_len=128, batch_size=16, seed=0)
seen = [replay.next_batch() for _ in range(steps)]                  # the batches of section 1, in order
longest = max(int(b["attention_mask"].sum(1).max()) for b in seen)
moved_rows = np.flatnonzero(np.any(model.params["wpe.weight"] != base.params["wpe.weight"], axis=1))
print(f"longest review seen: {longest} tokens; wpe rows that moved: {moved_rows.min()}..{moved_rows.max()} "
      f"({moved_rows.size} of {base.cfg.n_ctx})")

# %% [markdown]
# **Check.** Every base tensor changed; the `wpe` rows that moved are exactly positions $0..\text{longest}-1$, and the
# other rows are bitwise the base's. In normal mode: the LayerNorm gains moved least of all tensors (under 3%), and
# the four that moved most are `c_proj` tensors, every `c_proj` tensor by more than 10%.

# %%
assert all(v > 0 for v in rel.values())
assert np.array_equal(moved_rows, np.arange(longest))
if not FAST:                                   # the ranking needs the full run: 30 steps move everything little
    assert max(ln_gains.values()) < min(others) and max(ln_gains.values()) < 0.03
    assert all(n in c_proj for n in order[:4]) and min(c_proj.values()) > 0.1

# %% [markdown]
# ## 3. The cost: compute and memory (计算成本高)
#
# A training step of full fine-tuning holds, besides the weights themselves:
#
# $$\underbrace{P}_{\text{gradients}} + \underbrace{2P}_{\text{AdamW } m,\,v} \quad\text{floats, for } P
# \text{ trained parameters, plus the activations the backward needs (they scale with tokens, not } P).$$
#
# `predict_memory` counts it term by term from the code (`minift/measure/memory.py`); LoRA (r = 8 on every linear) for
# comparison, on a batch of the size training used.

# %%
B, T = seen[0]["input_ids"].shape
full_mem = predict_memory(base.cfg, "full", B, T, head_kind="classification")
lora_mem = predict_memory(base.cfg, "lora", B, T, rank=8, targets="all-linear", head_kind="classification")
print(f"one step, batch {B}×{T} tokens, float32 (MiB):")
print(format_memory(full_mem, lora_mem, labels=("full", "LoRA r=8")))
print(f"trained parameters: full {full_mem['trainable']:,}, LoRA {lora_mem['trainable']:,}")

# %% [markdown]
# Read the table: gradients and optimizer state are $1\times$ and $2\times$ the trained parameters' bytes, so full
# fine-tuning pays three times its `parameters` row where LoRA pays under 1 MiB. But at this size and batch the
# activations dominate (they depend on tokens, and are the same for both methods; LoRA even adds a little; the
# workspace row is the backward's short-lived temporaries at its peak, tutorial 09), so LoRA's predicted total (the
# last row, as a fraction of full fine-tuning's) is well under half saved — not the "80% less" of article §5.1
# (tutorial 09 shows when that claim holds). These are predictions from the shapes, the same in fast mode. The step's
# time, measured: the forward pass, then forward + backward, on one batch.

# %%
batch = seen[0]
reps = pick(10, 3)


def best_time(fn):
    """Fastest of `reps` calls (the least disturbed by other jobs on a shared machine), in ms."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


fwd_ms = best_time(lambda: model.forward(batch["input_ids"], attention_mask=batch["attention_mask"]))
fwd_bwd_ms = best_time(lambda: model.loss_and_grads(**batch))
print(f"forward {fwd_ms:.1f} ms, forward + backward {fwd_bwd_ms:.1f} ms (ratio {fwd_bwd_ms / fwd_ms:.1f}, "
      f"against about 3 by FLOPs); section 1's run averaged {summary['ms_per_step']:.0f} ms per step")
if FAST:
    print(SMOKE)

# %% [markdown]
# A backward costs about twice a forward (for each linear: $\bar x = \bar y W^\top$ and $\bar W = x^\top \bar y$, two
# matmuls per forward matmul), so by FLOPs forward + backward is about 3× a forward. The measured ratio, printed above,
# need not match: at this size matmuls are not the whole cost, and the non-matmul work (softmax, GELU, LayerNorm,
# cross-entropy: several passes in the backward where their forward takes one or two) and Python's per-op overhead
# divide between the two passes differently from the FLOPs. The run's average adds clipping and the AdamW update (a few
# array passes over all $P$ parameters) and batches of varying length — and on a shared machine, whatever else was
# running: compare timings only within one run of this tutorial.
#
# **Check.** The prediction's gradient and optimizer terms are exactly $4P$ and $8P$ bytes for $P$ = every
# parameter (float32); the LoRA step trains under 10% as many, and its gradients and optimizer state come to under
# 1 MiB; the activations outweigh full fine-tuning's gradients and optimizer state together (and LoRA's are
# larger still); and LoRA's predicted total is more than half of full fine-tuning's.

# %%
P = summary["trainable"]
assert full_mem["trainable"] == P and full_mem["gradients"] == 4 * P and full_mem["optimizer"] == 8 * P
assert lora_mem["trainable"] < 0.1 * P and lora_mem["gradients"] + lora_mem["optimizer"] < 2**20
assert lora_mem["activations"] > full_mem["activations"] > full_mem["gradients"] + full_mem["optimizer"]
assert 0.5 < lora_mem["total"] / full_mem["total"] < 1

# %% [markdown]
# ## 4. What must be saved (参数量大)
#
# A full fine-tune changes every tensor, so deploying it means shipping a whole model: `save_pretrained` writes a
# Hugging Face GPT-2 folder (`config.json`, `model.safetensors`) that `transformers`' `GPT2ForSequenceClassification`
# loads; given the tokenizer, it also writes the padding id into `config.json` (the classifier needs it to find each
# row's last real token) and we save `tokenizer.json` beside it, so that raw text can go in. The weights' size is
# $4P$ bytes plus a small header.

# %%
folder = out_dir("runs", "06_full") / "model"
model.save_pretrained(folder, tok)                      # weights, config.json with the pad and end-of-text ids
tok.save(folder / "tokenizer.json")                     # and the tokenizer: everything inference needs
size = (folder / "model.safetensors").stat().st_size
C, L = base.cfg.n_embd, base.cfg.n_layer
lora_numbers = L * 8 * (C + 3 * C) + 2 * C              # r = 8 on every c_attn [C, 3C], plus the head
print(f"model.safetensors: {size:,} bytes = 4 × {P:,} parameters + {size - 4 * P:,} bytes of header")
print(f"a LoRA adapter (r = 8 on c_attn) would hold {lora_numbers:,} numbers = {4 * lora_numbers:,} bytes "
      f"({4 * lora_numbers / size:.1%} of this) — tutorial 07 saves one")
print(f"r = 8 on all four linears of every block (section 3's LoRA), plus the head: {lora_mem['trainable']:,} numbers "
      f"= {4 * lora_mem['trainable']:,} bytes ({4 * lora_mem['trainable'] / size:.1%} of this)")

# %% [markdown]
# **Check.** The file is $4P$ bytes plus a header under 1%.

# %%
assert 4 * P <= size < 1.01 * 4 * P

# %% [markdown]
# ## 5. Overfitting on a small train set (过拟合风险)
#
# Keep 64 training reviews (`train_size=64`, labels balanced) and train for many epochs. We evaluate the loss on the
# **same 64 reviews** and on the validation set every few steps (`eval_every`): overfitting is the first falling while
# the second rises,
#
# $$L_\text{train}(\theta_t) \to 0 \qquad\text{while}\qquad L_\text{val}(\theta_t) \uparrow .$$
#
# This calls `minift.training.train.train` directly (what `finetune` does inside), to evaluate on both splits.

# %%
small_train, small_val, _ = load_task_splits("sentiment", train_size=64, eval_size=pick(200, 128))
small = base.to()
small.add_classification_head(small_train.label_names, seed=0)
setup_method(small, "full")


def both_splits(m):
    """Loss and accuracy on the 64 training reviews and on the validation reviews."""
    out = {"train_" + k: v for k, v in split_metrics(m, small_train, tok, 128).items()}
    return {**out, **{"val_" + k: v for k, v in split_metrics(m, small_val, tok, 128).items()}}


small_steps = pick(200, 60)
start = both_splits(small)
run = train(small, task_source(small_train, tok, 128, 16, seed=0),
            TrainConfig(steps=small_steps, batch_size=16, lr=1e-3, warmup=20, eval_every=10),
            evaluate=both_splits, progress=not FAST)
evals = [dict(step=0, **start)] + run.evals
best = min(evals, key=lambda e: e["val_loss"])
end = evals[-1]
print(f"{len(small_train)} training reviews, {small_steps} steps = {small_steps * 16 / 64:.0f} epochs")
shown = [e for e in evals if e["step"] <= 40 or e["step"] % 40 == 0 or e is end]   # the first 10 epochs in detail
for e in shown:
    print(f"  step {e['step']:>3}: train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.3f} | "
          f"validation loss {e['val_loss']:.3f} acc {e['val_accuracy']:.3f}")
print(f"lowest validation loss {best['val_loss']:.3f} at step {best['step']}; at the end {end['val_loss']:.3f}")
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot([e["step"] for e in evals], [e["train_loss"] for e in evals], "o-", ms=3, label="training loss (the 64)")
ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", ms=3, label="validation loss")
ax.axhline(math.log(2), color="0.5", ls="--", lw=0.8, label="log 2 (a coin flip)")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy")
ax.set_title("full fine-tuning on 64 reviews")
ax.legend()
show(fig, "06_overfitting")

# %% [markdown]
# The article is right here, and the effect is strong (the lines printed above): within the first ten epochs the
# model classifies all 64 training reviews correctly with a training loss near 0, while validation accuracy stays at
# chance and validation loss climbs from its start near $\log 2$ to several times that — the model is confidently
# wrong. It never gets better on validation: the lowest validation loss is the untrained model's, at step 0. 64
# reviews cannot pin down the composition rules (a million parameters can memorise the 64 through names, templates
# and word pairings instead).
#
# Does LoRA, with a few percent of the trainable parameters (section 4 printed the fraction), overfit *less*? That is
# the article's claim in §4.2. The MIT paper does not test it; the LoRA paper's one low-data test (its appendix F.3:
# GPT-3 on MNLI with 100, 1k and 10k examples) found LoRA 3.6 points ahead of full fine-tuning at 100 examples and level
# at 1k and 10k, reporting accuracy only, not a train–validation gap. Measure it: the same 64 reviews, the same steps
# and batches, LoRA r = 8 on all four linears of every block with `finetune`'s default rates (adapters $2\cdot10^{-3}$,
# head $3\cdot10^{-4}$).

# %%
small_lora = base.to()
small_lora.add_classification_head(small_train.label_names, seed=0)
setup_method(small_lora, "lora", LoRAConfig(r=8, alpha=16, targets=("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")))
lora_run = train(small_lora, task_source(small_train, tok, 128, 16, seed=0),
                 TrainConfig(steps=small_steps, batch_size=16, lr=DEFAULT_LR["lora"], warmup=20, eval_every=10,
                             lr_scale={HEAD_WEIGHT: DEFAULT_HEAD_LR["lora"] / DEFAULT_LR["lora"]}),
                 evaluate=both_splits, progress=not FAST)
lora_end = lora_run.evals[-1]
print(f"{small_lora.num_params(trainable_only=True):,} trainable parameters (full: {small.num_params():,})")
memorised = {}                                             # the first evaluation with all 64 right
for label, history in (("full", evals), ("lora r=8", lora_run.evals)):
    e = history[-1]
    memorised[label] = next((h["step"] for h in history if h["train_accuracy"] == 1.0), math.inf)
    print(f"  {label:<9} at step {e['step']}: train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.3f} | "
          f"validation loss {e['val_loss']:.3f} acc {e['val_accuracy']:.3f} | all 64 right from step "
          f"{memorised[label]}")
print(f"LoRA memorised later than full fine-tuning: {memorised['lora r=8'] > memorised['full']}; "
      f"LoRA's validation loss ended lower: {lora_end['val_loss'] < end['val_loss']}; validation accuracy within "
      f"0.1 of chance for both: {max(abs(end['val_accuracy'] - 0.5), abs(lora_end['val_accuracy'] - 0.5)) < 0.1}")
if FAST:
    print(SMOKE)

# %% [markdown]
# As printed above, LoRA memorised the 64 too, later than full fine-tuning (compare the steps from which all 64 are
# right), and generalised no better: validation accuracy at chance for both. Its validation loss ended lower: less
# confidently wrong, not more often right. A few percent of the parameters is still tens of thousands of numbers (the
# count printed above) for 64 reviews; fewer trainable numbers slowed the memorising and did not stop it. So by
# accuracy the article's "less overfitting on small data" does not show at this size; the README's
# `minift compare --train-size` table finds it at 1,024 reviews, one size of four. The defence that works for either
# method is to stop early, at the lowest validation loss (Exercise 3); `minift compare --train-size 64 --ranks 1,2,4`
# measures the same comparison over ranks, and `--seeds 1,2` over seeds.
#
# **Check.** At the start, validation loss within 0.1 of $\log 2$. At the end: training loss below 0.01 and
# training accuracy 100%; validation loss at least 1.0 above its lowest value and above $\log 2$; validation accuracy
# within 0.1 of chance. LoRA: training accuracy at least 0.95, validation accuracy within 0.1 of chance and
# validation loss above $\log 2$. In normal mode: the lowest validation loss at step 0, all 64 right within the first
# 10 epochs (step 40), the final validation loss above $3 \log 2$, and LoRA memorising later than full fine-tuning
# but ending with the lower validation loss.

# %%
assert end["train_loss"] < 0.01 and end["train_accuracy"] == 1.0
assert end["val_loss"] > best["val_loss"] + 1.0 and end["val_loss"] > math.log(2)
assert abs(end["val_accuracy"] - 0.5) < 0.1
assert lora_end["train_accuracy"] >= 0.95 and abs(lora_end["val_accuracy"] - 0.5) < 0.1
assert lora_end["val_loss"] > math.log(2)
assert abs(evals[0]["val_loss"] - math.log(2)) < 0.1
if not FAST:                                               # 60 fast-mode steps are too few for these
    assert best["step"] == 0                               # never better than the untrained model on validation
    assert memorised["full"] <= 40 and end["val_loss"] > 3 * math.log(2)
    assert memorised["full"] < memorised["lora r=8"] < math.inf and lora_end["val_loss"] < end["val_loss"]

# %% [markdown]
# ## 6. Unstable training (训练不稳定)
#
# AdamW's step for each entry is $\eta\,\hat m/(\sqrt{\hat v} + \epsilon)$: about $\eta$ in size whatever the
# gradient's scale, so gradient-norm clipping (minift clips at 1.0) does not shrink it. The learning rate alone sets
# how far every weight jumps. Three runs on the full train set, constant learning rate, no warmup:

# %%
unstable_steps = pick(150, 25)
curves = {}
for lr in (1e-3, 1e-2, 1e-1):
    m = base.to()
    m.add_classification_head(train_split.label_names, seed=0)
    setup_method(m, "full")
    r = train(m, task_source(train_split, tok, 128, 16, seed=0),
              TrainConfig(steps=unstable_steps, batch_size=16, lr=lr, warmup=0, schedule="constant"), progress=False)
    curves[lr] = np.array([h["loss"] for h in r.history])
    print(f"lr {lr:.0e}: loss min {curves[lr].min():.3f}, max {curves[lr].max():.2f}, "
          f"mean of the last 20 steps {curves[lr][-20:].mean():.3f}")
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 3.5))
for lr, c in curves.items():
    ax.plot(np.arange(1, len(c) + 1), c, lw=0.9, label=f"lr {lr:.0e}")
ax.axhline(math.log(2), color="0.5", ls="--", lw=0.8, label="log 2")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("training loss (one batch)")
ax.set_title("full fine-tuning: the learning rate decides stability")
ax.legend()
show(fig, "06_learning_rates")

# %% [markdown]
# The lines printed above: at 1e-3 the loss stays on tutorial 05's plateau near $\log 2$ for these steps (tutorial
# 05's validation accuracies show where a 400-step run leaves it). At 1e-2 it jumps around more. At 1e-1 single
# batches reach losses many times $\log 2$ (the max): each step throws every weight about $0.1$ — five times GPT-2's
# initial weight scale ($0.02$), more than the RMS of any trained matrix of the demo base (printed below) — in a new
# direction; by the end it settles near $\log 2$, a model that guesses. "Converges slowly" needs only a rate 3× too
# large: on a separate run (the setup of section 1 with lr 3e-3, warmup and cosine decay, not in this tutorial's code:
# `minift finetune --method full --steps 400 --lr 3e-3 --workers 1`), validation accuracy after 400 steps stayed far
# below the one section 1 printed for 1e-3 — it stalled within the budget.
#
# When does training *fail outright*? minift's loop raises `TrainingDiverged` when a loss (a step's or an
# evaluation's) is NaN, infinite, or more than 100 above the run's first step loss — the model then gives the right
# answers $e^{-100}$ times the probability it gave at the start, which no model that is merely learning badly does —
# or when a gradient or an updated weight is not finite. The run above at 1e-1 stays inside that rule (its worst
# batch is printed above, far below 100) and trains on. Four absurd rates, clipping off, 3 steps each:

# %%
def run_full(lr, n_steps, **options):
    """A fresh full fine-tune on the full train set at a constant lr; returns the per-step losses."""
    m = base.to()
    m.add_classification_head(train_split.label_names, seed=0)
    setup_method(m, "full")
    r = train(m, task_source(train_split, tok, 128, 16, seed=0),
              TrainConfig(steps=n_steps, batch_size=16, lr=lr, warmup=0, schedule="constant", **options),
              progress=False)
    return m, [h["loss"] for h in r.history]


caught = {}
with np.errstate(over="ignore", invalid="ignore"):        # overflows inside the model are the point here
    for lr in (1e2, 1e4, 1e8, math.inf):
        try:
            run_full(lr, 3, grad_clip=None)
        except TrainingDiverged as e:
            caught[lr] = e
        print(f"lr {lr:.0e}:", type(caught.get(lr)).__name__, "—", caught.get(lr))

# %% [markdown]
# Note *where* each is caught. At a finite rate, step 0's loss and gradient are fine, its update is applied, and the
# next loss, computed on the thrown weights, is the sign: "step 1: loss is ..., more than 100 above the first step's".
# An infinite rate makes $\infty \cdot 0$ = NaN inside the update itself, so the guard's second check, the trainable
# weights after each update, fires at step 0. In real runs the guard is hit by float16 overflow, a corrupt example
# or a bug as often as by the learning rate.
#
# What it keeps when a checkpoint folder is given: a checkpoint holds the weights after a step, and only the *next*
# step's loss shows whether they are sane. So when a loss is found broken, the checkpoint of those weights (and any
# after it) is removed, and the one left in force is the newest whose loss was computed and was sane
# (`minift/training/train.py`, `_keep_checked`). These runs were given no checkpoint folder: nothing to keep.
#
# **Check.** The worst batch loss at 1e-1 is more than 3 (over four times $\log 2$), at 1e-3 under 1.5; the
# step-to-step jumps of the loss are larger at 1e-1 than at 1e-3; each finite absurd rate is caught at step 1 by its
# loss, the infinite one at step 0 by its update; the base's trained matrices all have an RMS below 0.1. In normal
# mode: the jumps are larger at 1e-2 than at 1e-3, and the mean loss of the last 20 steps is within 0.05 of $\log 2$
# at 1e-3 and within 0.1 of it at 1e-1.

# %%
jumps = {lr: float(np.abs(np.diff(c)).mean()) for lr, c in curves.items()}
print("mean |loss change| per step:", {f"{lr:.0e}": round(j, 3) for lr, j in jumps.items()})
rms = {n: float(np.sqrt(np.mean(w ** 2))) for n, w in base.params.items() if w.ndim == 2}   # the trained matrices
print(f"RMS of the base's {len(rms)} matrices: {min(rms.values()):.3f} ({min(rms, key=rms.get)}) to "
      f"{max(rms.values()):.3f} ({max(rms, key=rms.get)})")
if FAST:
    print(SMOKE)
assert curves[1e-1].max() > 3 and curves[1e-3].max() < 1.5 and jumps[1e-1] > jumps[1e-3]
assert all(str(caught[lr]).startswith("step 1: loss is") for lr in (1e2, 1e4, 1e8))
assert str(caught[math.inf]).startswith("step 0: the update made")
assert max(rms.values()) < 0.1
if not FAST:                                               # 25 fast-mode steps are too few to settle
    assert jumps[1e-2] > jumps[1e-3]
    assert abs(curves[1e-3][-20:].mean() - math.log(2)) < 0.05 and abs(curves[1e-1][-20:].mean() - math.log(2)) < 0.1

# %% [markdown]
# ## 7. Deployment (§2.1 step 6, 部署和应用)
#
# The fine-tuned model is one self-contained folder — what section 4 saved. Nothing else is needed at inference:
# `GPT.from_pretrained` (or `transformers`) loads it. Inference speed is the forward pass; a full fine-tune has the
# base's architecture and head, so it costs what any model of that architecture and head costs. For one task a
# merged LoRA model costs the same: the difference the article's 参数量大 points at is storage per *additional* task —
# one base plus a small adapter each, instead of a whole model each (the LoRA paper: 35 TB for 100 GPT-3 fine-tunes
# against 354 GB). (An *unmerged* LoRA model adds its low-rank branch to every adapted linear; merged, it is a plain
# model again — tutorial 07.)

# %%
deployed = GPT.from_pretrained(folder)
n_reviews = pick(64, 32)
reviews = task_source(test_split, tok, 128, n_reviews, seed=0).next_batch()        # (n, T) ids and mask
logits_tuned = model.forward(reviews["input_ids"], attention_mask=reviews["attention_mask"])         # (n, K)
logits_deployed = deployed.forward(reviews["input_ids"], attention_mask=reviews["attention_mask"])   # (n, K)
infer_ms = best_time(lambda: deployed.forward(reviews["input_ids"], attention_mask=reviews["attention_mask"]))
tokens = int(reviews["attention_mask"].sum())
print(f"reloaded: head {deployed.head_kind!r}, labels {deployed.labels}; forward of {n_reviews} reviews "
      f"({reviews['input_ids'].shape[1]} positions each, {tokens:,} real tokens) in {infer_ms:.1f} ms = "
      f"{1e3 * n_reviews / infer_ms:,.0f} reviews/s on this CPU")
if FAST:
    print(SMOKE)

# %% [markdown]
# **Check.** The reloaded model's logits equal the trained model's bit for bit, and its test accuracy is the one
# `finetune` reported.

# %%
assert np.array_equal(logits_tuned, logits_deployed)
assert split_metrics(deployed, test_split, tok, 128)["accuracy"] == summary["test_accuracy"]

# %% [markdown]
# ## What you saw
#
# | §2.2 claim | measured here |
# |---|---|
# | all parameters are updated | every tensor moved; entries whose gradient is always 0 (unused positions and tokens) did not |
# | 计算成本高 high cost | 1 gradient + 2 AdamW floats per parameter; at this size activations still dominate the step's memory |
# | 参数量大 large checkpoints | $4P$ bytes for every fine-tune; a LoRA adapter is a few percent of that (section 4 prints both) |
# | 过拟合风险 overfitting on small data | 64 reviews: training loss near 0 within 10 epochs, validation loss far above $\log 2$; LoRA r = 8 overfits them as well, a little later |
# | 训练不稳定 unstable | a learning rate 10× or 100× the chosen 1e-3 makes the loss jump; the guard needs an absurd one |
#
# ## Exercises
#
# **Exercise 1 — the memory of fine-tuning GPT-2.** For GPT-2 small (`GPTConfig.preset("gpt2")`, 124M parameters,
# LM head tied to `wte`), return the bytes full fine-tuning with AdamW in float32 needs for gradients plus optimizer
# state, from `param_shapes(cfg)` alone. The check compares with `predict_memory`.

# %%
def my_grad_and_adam_bytes(cfg):
    """Bytes of gradients + AdamW moments for full fine-tuning of every parameter of cfg, float32."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_grad_and_adam_bytes(cfg):
    P = sum(math.prod(s) for s in param_shapes(cfg).values())
    return 3 * 4 * P                                     # 1 gradient + 2 moments, 4 bytes each


# %%
def check_grad_and_adam(answer):
    cfg = GPTConfig.preset("gpt2")
    pred = predict_memory(cfg, "full", 1, 128)
    predicted = pred["gradients"] + pred["optimizer"]
    print(f"GPT-2: yours {answer(cfg) / 2**30:.3f} GiB, predict_memory {predicted / 2**30:.3f} GiB "
          f"for {pred['trainable']:,} parameters")
    assert answer(cfg) == predicted


exercise("Exercise 1 (GPT-2's optimizer memory)", check_grad_and_adam, my_grad_and_adam_bytes,
         solution_grad_and_adam_bytes)

# %% [markdown]
# **Exercise 2 — which embedding rows move?** From the batches of section 1 (`seen`, a list of dicts with
# `input_ids` and `attention_mask`), return the sorted token ids whose `wte` row the full fine-tune changed. The check
# compares with the rows that really changed.

# %%
def my_moved_tokens(batches):
    """Sorted array of the token ids whose wte rows change when training on these batches."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_moved_tokens(batches):
    return np.unique(np.concatenate([b["input_ids"][b["attention_mask"]] for b in batches]))   # real tokens only


# %%
def check_moved_tokens(answer):
    moved = np.flatnonzero(np.any(model.params["wte.weight"] != base.params["wte.weight"], axis=1))
    mine = np.asarray(answer(seen))
    print(f"{moved.size} of {base.cfg.vocab_size} wte rows moved; yours: {mine.size}")
    assert np.array_equal(mine, moved)


exercise("Exercise 2 (moving embedding rows)", check_moved_tokens, my_moved_tokens, solution_moved_tokens)
if FAST:
    print(SMOKE)

# %% [markdown]
# **Exercise 3 — early stopping.** The usual first defence against overfitting: evaluate as you train and keep the
# weights from the evaluation with the lowest validation loss. From `evals` (a list of dicts with `step` and
# `val_loss`), return that step and its validation loss.
#
# In section 5 (normal mode, where its check asserts it) it picks step 0, the untrained model. That is the right
# answer: those 64 reviews never taught the task (validation accuracy stayed at chance), so every step of training
# only made the model more confidently wrong. Early stopping cannot create what the data does not teach; it can only
# refuse to keep a worse model. Here its verdict means "this fine-tune is not worth keeping": more data is the cure.

# %%
def my_early_stop(evals):
    """(step, val_loss) of the evaluation with the lowest validation loss."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_early_stop(evals):
    e = min(evals, key=lambda e: e["val_loss"])
    return e["step"], e["val_loss"]


# %%
def check_early_stop(answer):
    step, loss = answer(evals)
    acc = next(e["val_accuracy"] for e in evals if e["step"] == step)
    print(f"stop at step {step}: validation loss {loss:.3f} (accuracy {acc:.3f}) instead of "
          f"{evals[-1]['val_loss']:.3f} (accuracy {evals[-1]['val_accuracy']:.3f}) at the end")
    assert loss == min(e["val_loss"] for e in evals) and any(e["step"] == step and e["val_loss"] == loss for e in evals)
    assert loss < evals[-1]["val_loss"]


exercise("Exercise 3 (early stopping)", check_early_stop, my_early_stop, solution_early_stop)
if FAST:
    print(SMOKE)
