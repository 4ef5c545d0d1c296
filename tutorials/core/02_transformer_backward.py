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
# # Core 02 · The transformer's backward: the forward, read in reverse
#
# **What you will see.** A micro GPT-2 runs one batch forward and backward, and a table lists every activation
# beside its gradient: the forward goes down the table, the backward comes back up. You then rebuild two of the
# model's gradients by hand from its recorded tensors — the residual stream's and the tied embedding's — and they
# match the model's exactly. A gradient check fails when one of the embedding gradient's two parts is left out
# and passes when it is put back. Every weight gradient turns out to be one product, $x^\top \bar y$, of two
# recorded tensors; that product is what full fine-tuning updates and what LoRA will avoid forming. Last, every
# parameter of the model is checked against finite differences.
#
# **Article:** §1.1 微调的基本概念 (*What fine-tuning is*), step 4:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
# >
# > *Training and optimisation: train the model on the task's data set, adjusting the model's parameters by the
# > backpropagation algorithm so as to minimise the loss function.*
#
# Core 01 checked each op's backward on its own. A GPT is those ops called in a fixed order, and its backward is
# the same calls in the reverse order. One rule is new at the scale of the whole model — **where a tensor is used
# twice, its gradients add** — and it applies in two places:
#
# - the **residual stream**: each block computes `x = x + branch(x)`, so `x` feeds two paths;
# - the **tied embedding**: GPT-2 uses `wte` as the input embedding *and* as the output (LM-head) matrix.
#
# **You will learn**
# 1. to read `GPT.loss_and_grads` as a list of op calls and its reverse, using `model.record`;
# 2. to verify the residual-stream sum and the tied-embedding sum from the model's own tensors;
# 3. that each weight's gradient $G = x^\top \bar y$ is built from two recorded tensors;
# 4. to check the whole model's gradient against finite differences with `check_function`.
#
# **中文:** [zh/02_transformer_backward.py](zh/02_transformer_backward.py).
#
# **Time:** about 15 minutes to read; about 5 s to run in normal mode and about 1 s in fast mode (`MINIFT_FAST=1`),
# measured on an idle 2-core Intel Xeon with `OPENBLAS_NUM_THREADS=1`.
#
# **Prerequisite:** core 01 (backprop by hand). **Going further:** [tutorial 03](../03_transformer_backward.py)
# (why float32 is refused, how a sampled check can miss a bug, positions without a loss).

# %%
import itertools

import numpy as np

import minift
from minift.app.tutorial import FAST, exercise, pick
from minift.gradcheck import check_function
from minift.ops import (
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)
print("fast mode: sections 1-5 are the same as in normal mode; section 6 checks a sample of entries (a smoke run)"
      if FAST else "normal mode")

# %% [markdown]
# ## 1. A micro GPT in float64
#
# Gradient checks need float64 (core 01) and a model small enough for thousands of forward passes. This one has
# GPT-2's architecture exactly — learned positions, pre-LayerNorm blocks, fused `c_attn`, tanh GELU, `ln_f`, LM head
# tied to `wte` — at a size you can print.
#
# GPT-2 starts LayerNorm gains at 1 and biases at 0. Those are *neutral points*, where some wrong backwards give the
# right answer by accident (core 01), so we first move every parameter by a small random amount.

# %%
cfg = minift.GPTConfig(vocab_size=48, n_ctx=16, n_embd=16, n_layer=2, n_head=2)
model = minift.GPT(cfg, seed=0, dtype="float64")
for name, p in model.params.items():
    p += 0.1 * rng.standard_normal(p.shape)              # away from GPT-2's neutral init, in place
P = model.params                                         # name -> array, Hugging Face GPT-2 names
B, T = 2, 8
ids = rng.integers(0, cfg.vocab_size, size=(B, T))       # (B, T) input tokens
targets = rng.integers(0, cfg.vocab_size, size=(B, T))   # (B, T) "next tokens" (random: only gradients matter here)
print(f"V={cfg.vocab_size}, C={cfg.n_embd}, {cfg.n_layer} blocks of {cfg.n_head} heads: "
      f"{model.num_params():,} parameters in {len(P)} tensors; batch {B}×{T} tokens")

# %% [markdown]
# ## 2. The forward is a list of calls; the backward is that list reversed
#
# For block $i$ (from `minift/model.py`):
#
# $$a = \mathrm{LN}_1(x),\ \ o = \mathrm{c\_proj}(\mathrm{attn}(\mathrm{c\_attn}(a))),\ \ x \leftarrow x + o,\qquad
# m = \mathrm{LN}_2(x),\ \ y = \mathrm{c\_proj}(\mathrm{GELU}(\mathrm{c\_fc}(m))),\ \ x \leftarrow x + y,$$
#
# preceded by the embedding $x = \mathrm{wte}[\text{ids}] + \mathrm{wpe}[:T]$ and followed by
# $h = \mathrm{LN}_f(x)$, $\text{logits} = h\,\mathrm{wte}^\top$ and the cross-entropy. With `record=True`,
# `loss_and_grads` keeps every named activation in `model.record`, and its gradient (written $\bar x = \partial
# L/\partial x$, as in core 01) under `"d" + name`, **in the order they were computed**.

# %%
loss, grads = model.loss_and_grads(ids, targets, record=True)
rec = dict(model.record)                                 # a copy: later model.loss calls write into model.record
order = {name: i for i, name in enumerate(rec)}          # when each tensor was computed (forward, then backward)


def grad_of(name):
    """The record key holding dL/d(name): "d" + name, except the embedding's output, which is block 0's input."""
    return "dh.0.in" if name == "embedding" else "d" + name


forward_names = [k for k in rec if not k.startswith("d")]
print(f"loss = {loss:.4f}\n")
print(f"{'#':>3}  {'forward activation':<18} {'shape':<13}   {'its gradient':<18} {'shape':<13} {'#':>3}")
for name in forward_names:
    g = grad_of(name)
    print(f"{order[name]:>3}  {name:<18} {rec[name].shape!s:<13}   {g:<18} {rec[g].shape!s:<13} {order[g]:>3}")

# %% [markdown]
# Read the two `#` columns: the forward's step numbers grow going down, the backward's grow going up, starting at
# `dlogits` — the cross-entropy's $(p - \text{onehot})/N$ from core 01. Every gradient has its activation's shape.
# One gradient has two names: `dh.1.in`, what leaves block 1 at its input, is the very tensor `dh.0.out` that
# arrives at block 0's output, since a block's output *is* the next block's input.
#
# **Check.** Same shapes; backward steps strictly decreasing down the table; `dh.0.out` is `dh.1.in`.

# %%
pairs = [(n, grad_of(n)) for n in forward_names]
assert all(rec[n].shape == rec[g].shape for n, g in pairs)
backward_steps = [order[g] for _, g in pairs]
assert all(a > b for a, b in itertools.pairwise(backward_steps)), backward_steps
assert rec["dh.0.out"] is rec["dh.1.in"]                  # one tensor, two names
print(f"{len(pairs)} activation/gradient pairs: shapes match, backward order = forward order reversed")

# %% [markdown]
# ## 3. The residual stream: the gradient is a sum of two paths
#
# Take block 0's MLP residual, $x_\text{out} = x_\text{mid} + y(x_\text{mid})$, with $y$ the whole MLP branch
# (LN₂, c_fc, GELU, c_proj). $x_\text{mid}$ reaches the loss along two paths, so by the chain rule
#
# $$\bar x_\text{mid} \;=\; \underbrace{\bar x_\text{out}}_{\text{skip: passed through unchanged}}
# \;+\; \underbrace{\mathrm{LN}_2^\top(\bar m)}_{\text{branch}}, \qquad\text{and likewise}\qquad
# \bar x_\text{in} = \bar x_\text{mid} + \mathrm{LN}_1^\top(\bar a).$$
#
# $\mathrm{LN}_2^\top(\bar m)$ is `layernorm_backward` applied to $\bar m$, the gradient arriving at LN₂'s output.
# The addition also hands $\bar x_\text{out}$, unchanged, to the branch: $\bar y = \bar x_\text{out}$. The skip
# term is why deep residual networks train at all: the gradient reaches early layers without crossing every branch.
#
# We rebuild both sums from recorded tensors with minift's LayerNorm backward and compare with the model's.

# %%
x_in = rec["embedding"]                                  # (B, T, C) block 0's input
x_mid = x_in + rec["h.0.attn.c_proj"]                    # (B, T, C) after the attention residual, as the model adds it
d_out = rec["dh.0.out"]                                  # (B, T, C) dL/d(block 0's output)

_, ln2_cache = layernorm_forward(x_mid, P["h.0.ln_2.weight"], P["h.0.ln_2.bias"])
branch2 = layernorm_backward(rec["dh.0.ln_2"], ln2_cache)[0]   # (B, T, C) the MLP path's share
d_mid = d_out + branch2                                  # (B, T, C) skip + branch
_, ln1_cache = layernorm_forward(x_in, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])
branch1 = layernorm_backward(rec["dh.0.ln_1"], ln1_cache)[0]   # (B, T, C) the attention path's share
d_in = d_mid + branch1                                   # (B, T, C)

norm = np.linalg.norm
print(f"‖skip‖ = {norm(d_out):.4f}   ‖MLP branch‖ = {norm(branch2):.4f}   ‖attention branch‖ = {norm(branch1):.4f}")
print(f"‖dL/dx_in‖ = {norm(d_in):.4f}  (not the sum of the norms: the three point in different directions)")

# %% [markdown]
# **Check.** (a) The MLP branch receives exactly the block output's gradient. (b) Skip + MLP branch is the model's
# gradient at $x_\text{mid}$ (also what it hands the attention branch, `dh.0.attn.c_proj`). (c) Adding the attention
# branch gives the model's `dh.0.in`. Same ops on the same numbers, so the agreement is exact; drop a branch and
# the error is as large as that branch.

# %%
assert np.array_equal(rec["dh.0.mlp.c_proj"], d_out)                                     # (a)
err_mid = np.abs(d_mid - rec["dh.0.attn.c_proj"]).max()                                  # (b)
err_in = np.abs(d_in - rec["dh.0.in"]).max()                                             # (c)
err_without = np.abs(d_mid - rec["dh.0.in"]).max()                                       # attention branch dropped
print(f"(b) {err_mid:.1e}   (c) {err_in:.1e}   without the attention branch: {err_without:.1e}")
assert err_mid < 1e-14 and err_in < 1e-14 and err_without > 1e-3

# %% [markdown]
# ## 4. The tied embedding: `wte` gets two gradients, and they add
#
# `wte` ($V \times C$) is used twice: row `ids[b, t]` is looked up as the input embedding, and the whole matrix is
# the LM head, $\text{logits} = h\,\mathrm{wte}^\top$. So
#
# $$\overline{\mathrm{wte}} \;=\; \underbrace{\overline{\text{logits}}^\top h}_{\text{LM head: every row}} \;+\;
# \underbrace{\textstyle\sum_{(b,t):\ \text{ids}[b,t] = v} \bar x_{b,t}}_{\text{embedding: row } v
# \text{ only if token } v \text{ is in the batch}} .$$
#
# The head part is core 01's linear-layer $\bar W = x^\top \bar y$ for $W = \mathrm{wte}^\top$. The embedding part
# scatter-adds the gradient at the embedding's output (`dh.0.in`) into the rows of the tokens that were looked up.
# We compute each with minift's own op backwards.

# %%
_, head_cache = linear_forward(rec["ln_f"], P["wte.weight"].T)               # logits = h @ wteᵀ
_, dwte_T, _ = linear_backward(rec["dlogits"], head_cache, need_dx=False, need_db=False)
head_part = dwte_T.T                                                          # (V, C)
_, emb_cache = embedding_forward(ids, P["wte.weight"], P["wpe.weight"])
emb_part, dwpe = embedding_backward(rec["dh.0.in"], emb_cache)                # (V, C), (n_ctx, C)

rows_head = int((np.abs(head_part).sum(1) > 0).sum())
rows_emb = int((np.abs(emb_part).sum(1) > 0).sum())
n_distinct = len(np.unique(ids))
print(f"LM-head part: {rows_head} of {cfg.vocab_size} rows nonzero (softmax pushes on every logit)")
print(f"embedding part: {rows_emb} rows nonzero = the {n_distinct} distinct tokens in the batch")

# %% [markdown]
# **Check.** (a) Head part + embedding part is the model's `wte` gradient, exactly; and `wpe`'s gradient from the
# same `dh.0.in` is the model's, so we fed the embedding backward the right tensor. (b) Either part alone is *not*
# the gradient: a finite-difference check on every entry of `wte` fails with the head part alone and passes with
# the sum.

# %%
err_sum = np.abs(head_part + emb_part - grads["wte.weight"]).max()
err_wpe = np.abs(dwpe - grads["wpe.weight"]).max()
print(f"(a) |head + embedding − grads['wte.weight']| = {err_sum:.1e},  |dwpe − grads['wpe.weight']| = {err_wpe:.1e}")
assert err_sum < 1e-14 and err_wpe == 0 and rows_emb == n_distinct and rows_head == cfg.vocab_size


def loss_now():
    return model.loss(ids, targets)


only_head = check_function(loss_now, {"wte.weight": P["wte.weight"]}, {"wte.weight": head_part})
both = check_function(loss_now, {"wte.weight": P["wte.weight"]}, {"wte.weight": head_part + emb_part})
print(f"(b) head part alone:\n{only_head}\n\n    head part + embedding part:\n{both}")
worst_row = only_head["wte.weight"].worst_index[0]
print(f"\nworst row of the head-only check: token {worst_row}, in the batch: {worst_row in ids}")
assert not only_head.ok and both.ok and worst_row in ids

# %% [markdown]
# The head-only check fails worst at a token that *is* in the batch: there the embedding part is missing. Rows of
# tokens outside the batch pass with the head part alone, so a check that sampled a few entries could miss this
# bug; this one visits them all.
#
# ## 5. What fine-tuning takes from the backward: $G = x^\top \bar y$ for every weight
#
# Every linear layer in a block computes $y = xW + b$, with $x$ flattened to $N = B\cdot T$ rows. Its weight
# gradient is core 01's
#
# $$G \;=\; \bar W \;=\; x^\top \bar y \qquad (\text{in} \times N)\,(N \times \text{out}),$$
#
# a sum over positions of outer products: what the layer read, times the gradient of what it wrote. Both factors
# are in the record. Full fine-tuning (article §2) hands this $G$ — one full-size matrix per weight — to the
# optimizer. LoRA (core 03) freezes $W$: the model then skips this one matmul, while $\bar x = \bar y W^\top$ must
# still flow down to the layers below.

# %%
LINEARS = {"attn.c_attn": "ln_1", "attn.c_proj": "attn", "mlp.c_fc": "ln_2", "mlp.c_proj": "mlp.gelu"}  # -> input
errs = {}
for i in range(cfg.n_layer):
    for module, read in LINEARS.items():
        W = P[f"h.{i}.{module}.weight"]                                   # (in, out)
        x = rec[f"h.{i}.{read}"].reshape(-1, W.shape[0])                  # (N, in) what the layer read
        dy = rec[f"dh.{i}.{module}"].reshape(-1, W.shape[1])              # (N, out) gradient of what it wrote
        errs[f"h.{i}.{module}"] = np.abs(x.T @ dy - grads[f"h.{i}.{module}.weight"]).max()
for name, err in errs.items():
    print(f"{name:<18} G shape {grads[name + '.weight'].shape!s:<9} |xᵀ ȳ − grads| = {err:.1e}")

# %% [markdown]
# **Check.** All the block weights' gradients equal $x^\top \bar y$ from the record.

# %%
assert max(errs.values()) < 1e-13, errs
print(f"{len(errs)} weight gradients rebuilt as xᵀ ȳ from recorded tensors")

# %% [markdown]
# ## 6. The whole model against finite differences
#
# `check_function(loss_fn, arrays, grads)` perturbs entries of the named arrays *in place*, calls `loss_fn()` (a
# full forward and the loss), restores them exactly, and compares centered differences with `grads`:
#
# $$\text{numeric} = \frac{L(\theta + h e_i) - L(\theta - h e_i)}{2h}, \qquad h = 10^{-5}, \qquad
# \text{error} = \frac{|\text{analytic} - \text{numeric}|}{\max(|\text{analytic}|, |\text{numeric}|, 10^{-3})}.$$
#
# Here the scalar is the model's real loss, so each op inside gets whatever gradient the layers above send. In
# float64 the difference quotient's rounding error is about $10^{-16}\,L/h$ (printed below), far under the
# tolerance $10^{-5}$. Normal mode checks every entry; fast mode a sample.

# %%
max_entries = pick(None, 8)                              # normal: every entry; fast: 8 random entries per tensor
report = check_function(loss_now, P, grads, max_entries=max_entries)
checked = sum(e.checked for e in report.entries)
print(report)
print(f"\n{checked:,} of {model.num_params():,} parameter entries checked, in {len(report.entries)} tensors; "
      f"rounding estimate 1e-16·L/h = {1e-16 * loss / 1e-5:.0e}")
if FAST:
    print("(fast mode: a smoke run on a sample; these numbers are not findings)")

# %% [markdown]
# **Check.** Every tensor within tolerance; the worst error in the whole model below $10^{-6}$.

# %%
assert report.ok and report.max_error < 1e-6, report
print(f"worst error in the model: {report.max_error:.1e}")

# %% [markdown]
# ## What to remember
#
# - `loss_and_grads` is the forward's call list followed by the same list reversed; every gradient has its
#   activation's shape.
# - Where a tensor is used twice, its gradients add: a residual stream's gradient is skip + branch, and `wte`'s is
#   LM head (every row) + embedding (rows of the batch's tokens). Leave one term out and the gradient check fails.
# - Each weight's gradient is $G = x^\top \bar y$, a full-size matrix built from what the layer read and the
#   gradient of what it wrote. Full fine-tuning updates $W$ with it; freezing $W$ skips only this product.
# - A float64 finite-difference check of the real loss confirms the whole backward, as printed above.
#
# Next, core 03 builds LoRA on top of this backward: $W$ frozen, two small matrices trained, and their gradients
# formed from the same $x$ and $\bar y$.
#
# ## Exercises
#
# Write your answer in the `my_...` function and run the check cell below it. Until you do, the check runs on the
# reference solution (collapsed in Jupyter).
#
# **Exercise 1 — the last block's residual.** Rebuild `dh.1.in` (the gradient at block 1's input) the way section 3
# rebuilt `dh.0.in`. The new part: block 1's *output* gradient does not come from another block. Get it from
# `ln_f`'s backward, applied to `rec["dln_f"]` with the cache of
# `layernorm_forward(rec["h.1.out"], P["ln_f.weight"], P["ln_f.bias"])`.

# %%
def my_block1_input_grad(rec, P):
    """Return dL/d(block 1's input), shape (B, T, C), from recorded tensors and minift's LayerNorm ops."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_block1_input_grad(rec, P):
    _, c_f = layernorm_forward(rec["h.1.out"], P["ln_f.weight"], P["ln_f.bias"])
    d_out1 = layernorm_backward(rec["dln_f"], c_f)[0]                         # dL/d(block 1's output)
    x_in1 = rec["h.0.out"]
    x_mid1 = x_in1 + rec["h.1.attn.c_proj"]
    _, c2 = layernorm_forward(x_mid1, P["h.1.ln_2.weight"], P["h.1.ln_2.bias"])
    d_mid1 = d_out1 + layernorm_backward(rec["dh.1.ln_2"], c2)[0]            # skip + MLP branch
    _, c1 = layernorm_forward(x_in1, P["h.1.ln_1.weight"], P["h.1.ln_1.bias"])
    return d_mid1 + layernorm_backward(rec["dh.1.ln_1"], c1)[0]              # + attention branch


# %%
def check_block1(answer):
    err = np.abs(answer(rec, P) - rec["dh.1.in"]).max()
    print(f"max |yours − dh.1.in| = {err:.1e}")
    assert err < 1e-12


exercise("Exercise 1 (the last block's residual)", check_block1, my_block1_input_grad, solution_block1_input_grad)

# %% [markdown]
# **Exercise 2 — freezing (article §1.1 step 3, 冻结部分参数, *freeze part of the parameters*).** Freeze the two
# embedding tables, `wte.weight` and `wpe.weight`, by putting their names in `model.frozen`, and return the
# gradients of one `loss_and_grads` call. The check confirms that the frozen tensors get no gradient and that every
# other gradient is *bit-for-bit* what it was unfrozen: freezing changes what is computed, not the values. Leave
# `model.frozen` empty when you are done.

# %%
def my_frozen_grads(model, ids, targets):
    """Return the grads dict with wte.weight and wpe.weight frozen."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_frozen_grads(model, ids, targets):
    model.frozen = {"wte.weight", "wpe.weight"}
    try:
        return model.loss_and_grads(ids, targets)[1]
    finally:
        model.frozen = set()


# %%
def check_frozen(answer):
    g = answer(model, ids, targets)
    assert not model.frozen, "unfreeze the model again (model.frozen = set())"
    assert set(g) == set(grads) - {"wte.weight", "wpe.weight"}, sorted(set(grads) ^ set(g))
    same = all(np.array_equal(g[k], grads[k]) for k in g)
    print(f"{len(g)} gradients, none for the embeddings; all bit-for-bit unchanged: {same}")
    assert same


exercise("Exercise 2 (freezing)", check_frozen, my_frozen_grads, solution_frozen_grads)
