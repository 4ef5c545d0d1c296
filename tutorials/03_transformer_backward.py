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
# # 03 · The transformer's backward: the forward, read in reverse
#
# **Article:** §1.1 微调的基本概念 (*What fine-tuning is*), step 4 again:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
# >
# > *Training and optimisation: train the model on the task's data set, adjusting the model's parameters by the
# > backpropagation algorithm so as to minimise the loss function.*
#
# Tutorial 02 checked each op's backward on its own. A GPT is those ops called in a fixed order, and its backward is
# the same calls in the reverse order. Only two things are new at the scale of the whole model, and both are
# one rule — **where a tensor is used twice, its gradients add**:
#
# - the **residual stream**: each block computes `x = x + branch(x)`, so `x` feeds two paths;
# - the **tied embedding**: GPT-2 uses `wte` as the input embedding *and* as the output (LM-head) matrix.
#
# **You will learn**
# 1. to read `GPT.loss_and_grads` as a list of op calls and its reverse, using `model.record`;
# 2. to verify the residual-stream sum and the tied-embedding sum numerically, from the model's own tensors;
# 3. to check the whole model's gradient against finite differences with `minift.gradcheck.check_function`.
#
# **中文:** [zh/03_transformer_backward.py](zh/03_transformer_backward.py).
#
# **Time:** about 5 s to run normally (measured on 2 CPU cores; the final check visits every one of the model's
# 7,616 parameters), about 1 s in fast mode (`MINIFT_FAST=1`: a sample of 8 entries per tensor); 30 minutes to
# read.
#
# **Prerequisite:** tutorial 02.

# %%
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
print("fast mode" if FAST else "normal mode")

# %% [markdown]
# ## 1. A micro GPT in float64
#
# Gradient checks need float64 (tutorial 02, section 2), and a model small enough to run thousands of forward
# passes. This one has GPT-2's architecture exactly — learned positions, pre-LayerNorm blocks, fused `c_attn`, tanh
# GELU, `ln_f`, LM head tied to `wte` — at a size you can print: vocabulary $V = 48$, width $C = 16$, 2 blocks of 2
# heads, context 16.
#
# GPT-2 initialises LayerNorm gains to 1 and biases to 0. Those are *neutral points*, where some wrong backwards
# give the right answer by accident (tutorial 02, section 7), so before checking anything we move every parameter
# by a random amount (standard deviation 0.1).

# %%
cfg = minift.GPTConfig(vocab_size=48, n_ctx=16, n_embd=16, n_layer=2, n_head=2)
model = minift.GPT(cfg, seed=0, dtype="float64")
for name, p in model.params.items():
    p += 0.1 * rng.standard_normal(p.shape)              # away from GPT-2's neutral init, in place
P = model.params                                         # name -> array, Hugging Face GPT-2 names
B, T = 2, 8
ids = rng.integers(0, cfg.vocab_size, size=(B, T))       # (B, T) input tokens
targets = rng.integers(0, cfg.vocab_size, size=(B, T))   # (B, T) "next tokens" (random: only gradients matter here)
print(f"{model.num_params():,} parameters in {len(P)} tensors; batch {B}×{T} tokens")

# %% [markdown]
# ## 2. The forward is a list of calls; the backward is that list reversed
#
# For block $i$ (from `minift/model.py`):
#
# $$a = \mathrm{LN}_1(x),\ \ o = \mathrm{c\_proj}(\mathrm{attn}(\mathrm{c\_attn}(a))),\ \ x \leftarrow x + o,\qquad
# m = \mathrm{LN}_2(x),\ \ y = \mathrm{c\_proj}(\mathrm{GELU}(\mathrm{c\_fc}(m))),\ \ x \leftarrow x + y,$$
#
# preceded by the embedding $x = \mathrm{wte}[\text{ids}] + \mathrm{wpe}[:T]$ and followed by
# $h = \mathrm{LN}_f(x)$, $\text{logits} = h\,\mathrm{wte}^\top$ and the cross-entropy. `loss_and_grads(...,
# record=True)` keeps every named activation in `model.record`, and the gradient of the loss with respect to it
# under `"d" + name`, **in the order they were computed**.

# %%
loss, grads = model.loss_and_grads(ids, targets, record=True)
rec = model.record
order = {name: i for i, name in enumerate(rec)}          # when each tensor was computed (forward, then backward)


def grad_of(name):
    """The record key holding dL/d(name): "d" + name, except the embedding's output, which is block 0's input."""
    return "dh.0.in" if name == "embedding" else "d" + name


forward_names = [k for k in rec if not k.startswith("d")]
print(f"loss = {loss:.4f}\n")
print(f"{'#':>3}  {'forward activation':<18} {'shape':<13}   {'its gradient':<18} {'shape':<13} {'#':>3}")
for name in forward_names:
    g = grad_of(name)
    gshape, gstep = (str(rec[g].shape), order[g]) if g in rec else ("(not recorded)", "")
    print(f"{order[name]:>3}  {name:<18} {str(rec[name].shape):<13}   {g if g in rec else '':<18} "
          f"{gshape:<13} {gstep:>3}")

# %% [markdown]
# Read the two `#` columns: the forward runs top to bottom (steps 0–20), the backward bottom to top (steps 21–42,
# starting at `dlogits`, the cross-entropy's $(p - \text{onehot})/N$ of tutorial 02). Every gradient has its
# activation's shape. The backward has L − 1 more entries than the forward, one per boundary between blocks (here
# L = 2: one) — the gradient at a boundary is listed under both its names:
# `dh.1.in` (step 32) is what leaves block 1 at its input, and `dh.0.out` (step 33) is the same gradient arriving at
# block 0's output. A block's output *is* the next block's input, so the two are one tensor under two names.
#
# **Check.** For every row with a recorded gradient: same shape, and the backward step numbers strictly decrease
# going down (the backward is exactly the forward reversed); and `dh.0.out` is `dh.1.in`.

# %%
pairs = [(n, grad_of(n)) for n in forward_names if grad_of(n) in rec]
assert all(rec[n].shape == rec[g].shape for n, g in pairs)
backward_steps = [order[g] for _, g in pairs]
assert all(a > b for a, b in zip(backward_steps, backward_steps[1:])), backward_steps
assert rec["dh.0.out"] is rec["dh.1.in"]                  # one tensor, two names: block 1's input is block 0's output
print(f"{len(pairs)} activation/gradient pairs: shapes match, backward order = forward order reversed")

# %% [markdown]
# ## 3. The residual stream: the gradient is a sum of two paths
#
# Take block 0's MLP residual, $x_\text{out} = x_\text{mid} + y(x_\text{mid})$ with $y$ the whole MLP branch
# (LN₂, c_fc, GELU, c_proj). By the chain rule, $x_\text{mid}$ reaches the loss along two paths, and
#
# $$\frac{\partial L}{\partial x_\text{mid}} \;=\; \underbrace{\frac{\partial L}{\partial x_\text{out}}}_{\text{skip:
# passed through unchanged}} \;+\; \underbrace{\mathrm{LN}_2^\top\!\Big(\frac{\partial L}{\partial m}\Big)}_{
# \text{branch}}, \qquad\text{and likewise}\qquad
# \frac{\partial L}{\partial x_\text{in}} = \frac{\partial L}{\partial x_\text{mid}} +
# \mathrm{LN}_1^\top\!\Big(\frac{\partial L}{\partial a}\Big).$$
#
# Here $\mathrm{LN}_2^\top(\cdot)$ is LayerNorm's vector–Jacobian product at $x_\text{mid}$,
# $J_{\mathrm{LN}_2}(x_\text{mid})^\top\,\partial L/\partial m$: `layernorm_backward` applied to $\partial L/\partial
# m$, the gradient arriving at LN₂'s output $m$ (likewise $a$ for LN₁). The addition node also hands its incoming
# gradient, unchanged, to the branch: $\partial L/\partial y = \partial L/\partial x_\text{out}$. The skip term is why
# deep residual networks train at all — the gradient reaches early layers without passing through every branch.
#
# We rebuild both sums from recorded tensors, calling minift's LayerNorm backward on the branch gradients
# (`dh.0.ln_2` $= \partial L/\partial m$, `dh.0.ln_1` $= \partial L/\partial a$), and compare with what the model's
# backward produced.

# %%
x_in = rec["embedding"]                                  # (B, T, C) block 0's input
x_mid = x_in + rec["h.0.attn.c_proj"]                    # (B, T, C) after the attention residual, as the model adds it
d_out = rec["dh.0.out"]                                  # (B, T, C) dL/d(block 0's output), = rec["dh.1.in"]

_, ln2_cache = layernorm_forward(x_mid, P["h.0.ln_2.weight"], P["h.0.ln_2.bias"])
branch2 = layernorm_backward(rec["dh.0.ln_2"], ln2_cache)[0]   # (B, T, C) the MLP path's share
d_mid = d_out + branch2                                  # (B, T, C) skip + branch
_, ln1_cache = layernorm_forward(x_in, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])
branch1 = layernorm_backward(rec["dh.0.ln_1"], ln1_cache)[0]   # (B, T, C) the attention path's share
d_in = d_mid + branch1                                   # (B, T, C)

norm = np.linalg.norm
print(f"‖skip‖ = ‖dL/dx_out‖ = {norm(d_out):.4f}   ‖MLP branch‖ = {norm(branch2):.4f}   "
      f"‖attention branch‖ = {norm(branch1):.4f}")
print(f"‖dL/dx_in‖ = {norm(d_in):.4f}  (not the sum of the norms: the three vectors point in different directions)")

# %% [markdown]
# **Check.** (a) The gradient handed to the MLP branch (`dh.0.mlp.c_proj`) *is* the gradient of the block's output.
# (b) Skip + MLP branch equals the gradient the model computed at $x_\text{mid}$ (which it also handed to the
# attention branch, `dh.0.attn.c_proj`). (c) Adding the attention branch gives the model's gradient at the block's
# input, `dh.0.in`. Same ops on the same numbers, so the agreement is exact, not just close. Dropping either branch
# term leaves an error as large as that term.

# %%
assert np.array_equal(rec["dh.0.mlp.c_proj"], d_out)                                     # (a)
err_mid = np.abs(d_mid - rec["dh.0.attn.c_proj"]).max()                                  # (b)
err_in = np.abs(d_in - rec["dh.0.in"]).max()                                             # (c)
err_without = np.abs(d_mid - rec["dh.0.in"]).max()                                       # forgetting branch 1
print(f"(b) {err_mid:.1e}   (c) {err_in:.1e}   without the attention branch: {err_without:.1e}")
assert err_mid < 1e-14 and err_in < 1e-14 and err_without > 1e-3

# %% [markdown]
# ## 4. The tied embedding: `wte` gets two gradients, and they add
#
# `wte` ($V \times C$) is used twice: row `ids[b, t]` is looked up as the input embedding, and the whole matrix is
# the LM head, $\text{logits} = h\,\mathrm{wte}^\top$. Its gradient is the sum
#
# $$\frac{\partial L}{\partial\,\mathrm{wte}} \;=\;
# \underbrace{\bar{\text{logits}}^\top h}_{\text{LM head: } V\times C,\ \text{every row}} \;+\;
# \underbrace{\textstyle\sum_{(b,t):\ \text{ids}[b,t] = v} \bar x_{b,t}}_{\text{embedding: row } v
# \text{ only if token } v \text{ is in the batch}} .$$
#
# The head part is the linear layer's $\bar W = x^\top \bar y$ (tutorial 02) for $W = \mathrm{wte}^\top$, with
# $h$ and $\bar{\text{logits}}$ flattened to $N = B\cdot T$ rows: a sum over positions of outer products, as for
# $\bar W$. The
# embedding part is a scatter-add of the gradient at the embedding's output (`dh.0.in`) into the rows of the tokens
# that were looked up. We compute each with minift's own op backwards and compare their sum with
# `grads["wte.weight"]`.

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
# **Check.** (a) head part + embedding part equals the model's `wte` gradient exactly, and the embedding's `wpe`
# gradient (same upstream tensor `dh.0.in`) equals the model's `wpe` gradient — so we fed the embedding backward the
# right tensor. (b) Either part alone is *not* the gradient: the finite-difference check on `wte` (all
# $48 \times 16 = 768$ entries) fails with the head part alone and passes with the sum.

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
# tokens not in the batch would pass with the head part alone — a check that sampled only a few of the 768 entries
# could miss this bug (224 of them, the 14 batch tokens' rows, carry it: fast mode's sample of 8 misses all of them
# with probability $\binom{544}{8}/\binom{768}{8} \approx 6\%$), which is why this one checks them all.
#
# ## 5. The whole model against finite differences
#
# `check_function(loss_fn, arrays, grads)` perturbs entries of the named arrays *in place*, calls `loss_fn()` (a
# full forward pass and the loss), restores them exactly, and compares the centered differences with `grads`:
#
# $$\text{numeric} = \frac{L(\theta + h e_i) - L(\theta - h e_i)}{2h}, \qquad h = 10^{-5}, \qquad
# \text{error} = \frac{|\text{analytic} - \text{numeric}|}{\max(|\text{analytic}|, |\text{numeric}|, 10^{-3})}.$$
#
# Unlike `check_op`, the scalar is the model's real loss, so the "upstream gradient" of every op inside is
# whatever the layers above send — not ones. The rounding error is about $10^{-16}\,L/h \approx 4\cdot10^{-11}$ for
# a loss near 4, against the floor $10^{-3}$: a correct backward scores below $10^{-7}$.

# %%
max_entries = pick(None, 8)                              # normal: every entry; fast: 8 random entries per tensor
report = check_function(loss_now, P, grads, max_entries=max_entries)
checked = sum(e.checked for e in report.entries)
print(report)
print(f"\n{checked:,} of {model.num_params():,} parameter entries checked, in {len(report.entries)} tensors")

# %% [markdown]
# **Check.** Every tensor within tolerance; the worst error in the whole model is below $10^{-6}$.

# %%
assert report.ok and report.max_error < 1e-6, report
print(f"worst error in the model: {report.max_error:.1e}")

# %% [markdown]
# And why float64: in float32 the difference quotient's rounding, about $10^{-7}\,L/h \approx 0.04$, is as large as
# many of the gradients themselves, so `check_function` refuses float32 arrays outright:

# %%
model32 = model.to(dtype="float32")
try:
    check_function(lambda: model32.loss(ids, targets), model32.params,
                   model32.loss_and_grads(ids, targets)[1], max_entries=1)
    raise AssertionError("a float32 gradient check should have been refused")
except minift.MiniftError as e:
    print("refused:", e)

# %% [markdown]
# ## What you saw
#
# - `loss_and_grads` is the forward's call list followed by the same list reversed; `model.record` shows every
#   activation and its gradient, same shape, computed in mirror order.
# - A residual stream's gradient is skip + branch, exactly; the branch receives the stream's gradient unchanged.
# - `wte`'s gradient is LM head (all $V$ rows) + embedding (rows of the tokens in the batch); either alone fails the
#   finite-difference check.
# - The whole model's analytic gradient agrees with finite differences to better than $10^{-6}$ on every entry
#   checked.
#
# Next, tutorial 04 uses this backward to pretrain a model on the world corpus; 05–07 use it to fine-tune.
#
# ## Exercises
#
# Write your answer in the `my_...` function and run the check cell below it. Until you do, the check runs on the
# reference solution (collapsed in Jupyter).
#
# **Exercise 1 — the last block's residual.** Rebuild `dh.1.in` (the gradient at block 1's input) the way section 3
# rebuilt `dh.0.in`. The new part: the gradient of block 1's *output* does not come from another block — get it
# from `ln_f`'s backward, applied to `rec["dln_f"]` (the gradient of `ln_f`'s output, $h$) with the cache of
# `layernorm_forward(rec["h.1.out"], P["ln_f.weight"], P["ln_f.bias"])`, and compare it with `rec["dh.1.out"]` on
# the way.

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
# gradients of one `loss_and_grads` call. The check confirms: the frozen tensors get no gradient (the model skips
# their backward entirely), and every other gradient is *bit-for-bit* what it was unfrozen — freezing changes what is
# computed, not the values. Leave `model.frozen` empty when you are done.

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

# %% [markdown]
# **Exercise 3 — positions without a loss.** In instruction tuning (the `facts` task: `CompletionSource` in
# `minift/data/sources.py`) the prompt's tokens get target `-100`: no loss there. Return a copy of `targets` with the
# first half of every sequence set to `-100`. The check verifies that the masked rows of `dlogits` are exactly zero,
# the others are not, and the model's gradient still passes the finite-difference check.

# %%
def my_mask_first_half(targets):
    """targets (B, T) -> a copy with targets[:, :T//2] = -100."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_mask_first_half(targets):
    masked = targets.copy()
    masked[:, : targets.shape[1] // 2] = -100
    return masked


# %%
def check_masked(answer):
    masked = answer(targets)
    assert masked is not targets and (targets != -100).all(), "return a copy; keep `targets` unchanged"
    _, g = model.loss_and_grads(ids, masked, record=True)
    row_norms = np.abs(model.record["dlogits"]).sum(-1)                       # (B, T)
    print("dlogits row norms, batch 0:", row_norms[0])
    assert not row_norms[:, : T // 2].any() and row_norms[:, T // 2:].all()
    rep = check_function(lambda: model.loss(ids, masked), P, g, max_entries=4)
    print(f"gradient check on {sum(e.checked for e in rep.entries)} entries: worst error {rep.max_error:.1e}")
    rep.assert_ok()


exercise("Exercise 3 (ignored positions)", check_masked, my_mask_first_half, solution_mask_first_half)
