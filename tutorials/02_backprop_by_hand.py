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
# # 02 · Backprop by hand
#
# **Article:** §1.1 微调的基本概念 (*What fine-tuning is*), step 4:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
# >
# > *Training and optimisation: train the model on the task's data set, adjusting the model's parameters by the
# > backpropagation algorithm so as to minimise the loss function.*
#
# The article gives backpropagation one clause. This tutorial opens it up. Backpropagation is the chain rule
# applied one operation at a time: every op the forward pass calls has a *backward* that turns the gradient of its
# output into the gradients of its inputs. minift writes each backward by hand, and every gradient in every later
# tutorial — full fine-tuning, LoRA, the comparison — is built from the five below (plus the embedding lookup,
# which tutorial 03 shows).
#
# **You will learn**
# 1. the contract every op in `minift.ops` follows, and what a backward computes (a vector–Jacobian product);
# 2. how to check a backward against its forward with finite differences (`minift.gradcheck.check_op`) and read
#    the report;
# 3. the backward of a linear layer, LayerNorm, GELU, softmax cross-entropy and causal attention: the formula,
#    then minift's code, then a check;
# 4. why the check needs a *random* upstream gradient: with an all-ones one, a wrong LayerNorm backward passes.
#
# **中文:** [zh/02_backprop_by_hand.py](zh/02_backprop_by_hand.py).
#
# **Time:** under a second to run (normal and fast mode are the same size here: every op is checked on small
# arrays); 30–45 minutes to read.
#
# **Run it:** `python tutorials/02_backprop_by_hand.py`, or open it as a notebook (see `tutorials/README.md`).

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from minift.app.tutorial import exercise, show
from minift.gradcheck import check_op
from minift.ops import (
    attention_backward,
    attention_forward,
    attention_probabilities,
    cross_entropy_backward,
    cross_entropy_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    softmax,
    softmax_backward,
    softmax_forward,
)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)        # one seeded generator: every number below is the same on every run

# %% [markdown]
# ## 1. The contract: forward, cache, backward
#
# Every op in `minift.ops` is a pair of free functions:
#
# ```
# out, cache = op_forward(x, w, ...)          # cache: what the backward will need (saved, never recomputed)
# dx, dw, ... = op_backward(dout, cache)      # gradients in the order of the forward's inputs
# ```
#
# Somewhere downstream of `out` sits a scalar loss $L$. The backward receives the **upstream gradient**
# $\bar y = \partial L/\partial y$ (same shape as $y$) and returns $\bar x = \partial L/\partial x$. By the chain rule
#
# $$\bar x_i \;=\; \sum_j \frac{\partial L}{\partial y_j}\,\frac{\partial y_j}{\partial x_i} \;=\; (J^\top \bar y)_i,
# \qquad J_{ji} = \frac{\partial y_j}{\partial x_i},$$
#
# a *vector–Jacobian product*. The backward never builds $J$: for one LayerNorm over GPT-2's 768 channels, $J$ has
# 768² ≈ 590,000 entries per token. It computes $J^\top \bar y$ directly, in about the cost of the forward.
# (minift names gradients `d` + the forward name: `dx` is $\bar x$.)
#
# ### The linear layer
#
# GPT-2 stores a linear layer's weight as **[in, out]**, so $y = xW + b$ with $x \in \mathbb R^{N\times I}$,
# $W \in \mathbb R^{I\times O}$ ($N$ = every position of every sequence, $B\cdot T$). From
# $y_{no} = \sum_i x_{ni} W_{io} + b_o$:
#
# $$\bar x = \bar y\, W^\top, \qquad \bar W = x^\top \bar y, \qquad \bar b = \sum_n \bar y_n .$$
#
# $W$ is used at all $N$ positions, so its gradient is a **sum over positions** — that sum is the matmul
# $x^\top \bar y$. A frozen weight (`need_dw=False`) skips exactly this matmul; that skipped matmul is where LoRA's
# time saving comes from (tutorials 07 and 09).

# %%
B, T, I, O = 2, 3, 4, 5                                  # batch, time, in features, out features
x = rng.standard_normal((B, T, I))                       # (B, T, I)
W = rng.standard_normal((I, O))                          # (I, O)   GPT-2 layout: [in, out]
b = rng.standard_normal(O)                               # (O,)

y, cache = linear_forward(x, W, b)                       # (B, T, O)
dy = rng.standard_normal(y.shape)                        # (B, T, O) an upstream gradient, as the layer above would send
dx, dW, db = linear_backward(dy, cache)
print("y", y.shape, " dx", dx.shape, " dW", dW.shape, " db", db.shape)

# %% [markdown]
# **Check.** The three formulas, written out in NumPy *only to compare* with minift's result, must agree to
# rounding (here exactly: they are the same NumPy expressions), and a frozen weight must get no gradient at all.

# %%
x2, dy2 = x.reshape(-1, I), dy.reshape(-1, O)            # (N, I), (N, O) with N = B·T = 6
errors = {"dx": np.abs(dx - (dy2 @ W.T).reshape(x.shape)).max(),
          "dW": np.abs(dW - x2.T @ dy2).max(),
          "db": np.abs(db - dy2.sum(axis=0)).max()}
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-12
_, dW_frozen, _ = linear_backward(dy, cache, need_dw=False)
assert dW_frozen is None
print("need_dw=False: dW is None (the x^T dy matmul was skipped)")

# %% [markdown]
# ## 2. Checking a backward with finite differences
#
# Comparing against our own formula proves nothing if the formula is wrong. The independent test is the forward
# itself. Draw a **random** $g$ with the output's shape and define the scalar
#
# $$L(x) = \sum_j f(x)_j\, g_j, \qquad\text{so that}\qquad \frac{\partial L}{\partial x} = J^\top g
# = \texttt{backward}(g).$$
#
# Estimate each entry by a centered difference and compare:
#
# $$\text{numeric}_i = \frac{L(x + h e_i) - L(x - h e_i)}{2h} = \frac{\partial L}{\partial x_i} + O(h^2),
# \qquad \text{error}_i = \frac{|\text{analytic}_i - \text{numeric}_i|}{\max(|\text{analytic}_i|,
# |\text{numeric}_i|,\ 10^{-3})}.$$
#
# Where $O(h^2)$ comes from: Taylor, $L(x \pm h e_i) = L \pm h L' + \tfrac{h^2}{2} L'' \pm \tfrac{h^3}{6} L''' +
# \dots$; the difference cancels the even terms, leaving $L' + \tfrac{h^2}{6} L'''$. Rounding works the other way:
# each $L$ is off by about $\epsilon |L|$, with $\epsilon \approx 10^{-16}$ float64's unit roundoff ($2^{-53}$), and
# dividing by $2h$ blows that up to $\epsilon/h$. The two balance near $h = (3\epsilon)^{1/3} \approx 10^{-5}$, the
# step used here, where both are around $10^{-11}$–$10^{-10}$ in absolute terms. Divided by $\max(|a|, |n|,
# 10^{-3})$, that gives about $10^{-10}$ for gradients of size 1 and at most about $10^{-7}$ for tiny ones: a correct
# backward scores $10^{-7}$ or less, usually far less; a wrong one scores $10^{-2}$ to 2 (2 is the most there is:
# analytic and numeric of opposite signs). The tolerance, $10^{-5}$, sits in the wide gap between. (The floor
# $10^{-3}$ stops an entry whose true gradient is 0 from turning rounding noise into a "relative" error of 1.)
# Float32 cannot do this: its unit roundoff is $2^{-24} \approx 6\cdot10^{-8}$, so rounding alone is about
# $10^{-7}/h = 10^{-2}$, as large as the errors we are looking for.
#
# `check_op(forward, backward, inputs)` does all of it: it copies the inputs, draws $g$ from a seeded generator,
# checks every entry of every floating-point input, and returns a report.

# %%
report = check_op(linear_forward, linear_backward, [x, W, b], names=["x", "W", "b"])
print(report)

# %% [markdown]
# Each row is one input: `checked` entries out of the total (all of them here), the worst relative error, where it
# happened, and the two values there. All three inputs agree to about ten significant digits.

# %%
assert report.ok and report.max_error < 1e-7, report
print(f"linear: worst error {report.max_error:.1e} < 1e-7")

# %% [markdown]
# ## 3. LayerNorm
#
# Per row $x \in \mathbb R^C$ (GPT-2 normalises each token's $C$ channels; biased variance, $\varepsilon = 10^{-5}$):
#
# $$\mu = \tfrac1C\textstyle\sum_c x_c,\quad \sigma^2 = \tfrac1C\sum_c (x_c-\mu)^2,\quad
# r = (\sigma^2+\varepsilon)^{-1/2},\quad \hat x = (x-\mu)\,r,\quad y = w\odot\hat x + b.$$
#
# Backward. $\bar b = \sum \bar y$ and $\bar w = \sum \bar y \odot \hat x$ (summed over positions, as for $W$ above),
# and with $\bar{\hat x} = \bar y \odot w$, differentiating $\mu$ and $r$ too — the key line is $\partial r/\partial
# x_i = -r^2 \hat x_i / C$, since $\partial\sigma^2/\partial x_i = 2(x_i - \mu)/C$; the rest is in
# `minift/ops/layernorm.py`:
#
# $$\bar x = r\,\Big(\bar{\hat x} \;-\; \underbrace{\operatorname{mean}(\bar{\hat x})}_{\text{mean term}}
# \;-\; \underbrace{\hat x\,\operatorname{mean}(\bar{\hat x}\odot\hat x)}_{\text{scale term}}\Big).$$
#
# The two subtracted terms have a meaning. Adding the same number to every $x_c$ leaves $y$ unchanged, so the
# gradient cannot point that way: $\sum_c \bar x_c = 0$ (the mean term ensures it). Stretching $x - \mu$ leaves
# $\hat x$ unchanged except through $\varepsilon$, so $\sum_c \bar x_c\,\hat x_c$ is almost 0; exactly, it is
# $r^3\varepsilon\sum_c \bar{\hat x}_c \hat x_c$ (the scale term ensures it; with $\varepsilon = 0$ it would be 0):
# $\sum_c \hat x_c^2 = C\sigma^2 r^2 = C(1 - \varepsilon r^2)$, so $\sum_c \bar x_c \hat x_c = r \sum_c \bar{\hat
# x}_c \hat x_c\,(1 - \operatorname{mean}(\hat x^2)) = r^3 \varepsilon \sum_c \bar{\hat x}_c \hat x_c$.

# %%
C = 8
x = rng.standard_normal((B, T, C)) * 2 + 1               # (B, T, C)  rows with mean ≈ 1, spread ≈ 2
w = 1 + 0.5 * rng.standard_normal(C)                     # (C,)  away from the initial 1 (see section 7 for why)
b = 0.5 * rng.standard_normal(C)                         # (C,)  away from the initial 0
y, cache = layernorm_forward(x, w, b)                    # (B, T, C)
dy = rng.standard_normal(y.shape)                        # (B, T, C)
dx, dw, db = layernorm_backward(dy, cache)
xhat, r, _ = cache                                       # (B, T, C), (B, T, 1): what the forward saved
print("y[0, 0]    =", y[0, 0])
print(f"x̂ row means:        largest |mean| = {np.abs(xhat.mean(-1)).max():.1e}")
print("row variances σ²:   ", " ".join(f"{v:8.2f}" for v in x.var(-1).ravel()))
print("1 − x̂ row variances:", " ".join(f"{v:.2e}" for v in (1 - xhat.var(-1)).ravel()))

# %% [markdown]
# **Check.** First the forward: $\hat x$ has row mean 0 and row variance $\sigma^2 r^2 = 1 - \varepsilon r^2$, a
# few millionths under 1 for the $\sigma^2$ of these rows (both printed above). Then the two invariants of $\bar x$,
# and the finite-difference check.

# %%
eps = 1e-5
assert np.abs(xhat.mean(-1)).max() < 1e-15 and np.abs(xhat.var(-1) - (1 - eps * r[..., 0] ** 2)).max() < 1e-14
row_sum = dx.sum(-1)                                     # (B, T) should be 0
dot = (dx * xhat).sum(-1)                                # (B, T) should be r³ ε Σ (dy ⊙ w) ⊙ x̂
predicted = (r[..., 0] ** 3) * eps * (dy * w * xhat).sum(-1)
print(f"max |Σ_c dx|                 = {np.abs(row_sum).max():.1e}   (0 up to rounding)")
print(f"max |Σ_c dx ⊙ x̂|             = {np.abs(dot).max():.1e}   (small, but not 0: ε is not 0)")
print(f"max |Σ_c dx ⊙ x̂ − r³ε Σ ...| = {np.abs(dot - predicted).max():.1e}   (0 up to rounding)")
assert np.abs(row_sum).max() < 1e-12 and np.abs(dot - predicted).max() < 1e-12
report = check_op(layernorm_forward, layernorm_backward, [x, w, b], names=["x", "w", "b"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 4. GELU
#
# GPT-2's activation, the tanh approximation of $x\,\Phi(x)$:
#
# $$u = k\,(x + a x^3),\quad k = \sqrt{2/\pi},\ a = 0.044715, \qquad y = \tfrac12\, x\,(1 + \tanh u).$$
#
# ($k$ makes the slope of $\tanh u$ at 0 match that of $2\Phi(x) - 1$, $2\varphi(0) = \sqrt{2/\pi}$; $a$ is a
# numerical fit by the GELU paper's authors — matching the $x^3$ Taylor terms instead would give $a = 2/(3\pi) - 1/6
# \approx 0.0455$.)
#
# With $t = \tanh u$ (cached by the forward) and $\tanh' = 1 - t^2$:
#
# $$\frac{dy}{dx} = \tfrac12\,(1 + t) + \tfrac12\, x\,(1 - t^2)\, k\,(1 + 3a x^2), \qquad \bar x = \bar y \odot
# \frac{dy}{dx}.$$
#
# GELU is elementwise, so its Jacobian is diagonal and $J^\top \mathbf 1$ *is* that diagonal: here, and only for
# elementwise ops, an all-ones upstream gradient gives the plain derivative $dy/dx$ at every point.

# %%
grid = np.linspace(-4, 4, 801)                           # (801,)
g_y, g_cache = gelu_forward(grid)                        # (801,)
g_slope = gelu_backward(np.ones_like(grid), g_cache)     # (801,) dy/dx, because the Jacobian is diagonal
exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in grid])   # x Φ(x), to compare
gap = np.abs(g_y - exact)
print(f"tanh GELU vs exact x·Φ(x): largest gap {gap.max():.1e} at x = {grid[gap.argmax()]:+.2f}")
print(f"GELU(0) = {g_y[400]:.1f}, GELU'(0) = {g_slope[400]:.3f}, smallest GELU' = {g_slope.min():+.3f} "
      f"at x = {grid[g_slope.argmin()]:+.2f}")

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(grid, g_y, label="GELU (tanh approx.)  y")
ax.plot(grid, g_slope, label="dy/dx from gelu_backward")
ax.axhline(0, color="0.7", lw=0.8)
ax.set_xlabel("x")
ax.legend()
ax.set_title("GELU and its derivative")
show(fig, "02_gelu")

# %% [markdown]
# **Check.** The approximation differs from the exact $x\Phi(x)$ by under $5\cdot10^{-4}$ everywhere (it is an
# approximation, so this gap is expected, and the same in PyTorch's `gelu(approximate="tanh")`). At 0 the formula
# gives $dy/dx = \tfrac12$. The derivative is negative for $x$ below about $-0.75$: GELU dips below zero before
# rising (exercise 3 finds the minimum). Then the gradient check, on inputs spread over the curved part.

# %%
assert gap.max() < 5e-4 and abs(g_slope[400] - 0.5) < 1e-15 and g_slope.min() < 0
report = check_op(gelu_forward, gelu_backward, [rng.standard_normal((B, T, C)) * 2], names=["x"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 5. Softmax cross-entropy: the loss
#
# A language model's loss at one position, logits $z \in \mathbb R^V$ and the true next token $y$:
#
# $$\ell = -\log p_y = \log\sum_v e^{z_v} - z_y, \qquad p = \operatorname{softmax}(z), \qquad
# L = \frac1{N_\text{valid}}\sum_{n\ \text{valid}} \ell_n .$$
#
# Positions whose target is `-100` (padding, prompt tokens) are left out of the mean. The backward is the famous
# one-liner: differentiating $\log\sum e^{z}$ gives $p$, differentiating $-z_y$ gives $-1$ at $y$, so
#
# $$\bar z_n = \bar L\;\frac{p_n - \operatorname{onehot}(y_n)}{N_\text{valid}}
# \quad\text{(valid rows)},\qquad \bar z_n = 0 \quad\text{(ignored rows)}.$$
#
# Each row of $\bar z$ sums to 0 (probabilities sum to 1, the one-hot sums to 1): the gradient pushes the target's
# logit up exactly as much as it pushes all the others down together.

# %%
N, V = 6, 10                                             # positions, vocabulary
logits = rng.standard_normal((N, V)) * 2                 # (N, V)
targets = rng.integers(0, V, size=N)                     # (N,)
targets[2] = -100                                        # position 2 has no loss (e.g. padding)
loss, ce_cache = cross_entropy_forward(logits, targets)
dlogits = cross_entropy_backward(np.asarray(1.0), ce_cache)   # (N, V), with dL/dL = 1
print(f"loss = {float(loss):.4f} over {int((targets != -100).sum())} valid positions")
print("dlogits row sums:", dlogits.sum(-1))
print("dlogits row 2 (ignored):", dlogits[2])

# %% [markdown]
# **Check.** (a) $\bar z$ equals $(p - \text{onehot})/5$ on the 5 valid rows, with $p$ from minift's `softmax`;
# (b) row sums are 0 and the ignored row is exactly 0; (c) with all logits 0 the model is uniform over $V$ tokens and
# the loss is exactly $\log V = \log 10 = 2.3026$ — the number an untrained language model starts near
# (tutorial 04); (d) the finite-difference check, with a random scalar upstream gradient $\bar L$.

# %%
valid = targets != -100
expected = softmax(logits)
expected[np.arange(N), np.where(valid, targets, 0)] -= 1
expected = expected * valid[:, None] / valid.sum()       # (N, V) the formula, to compare
print(f"(a) max |dlogits − (p − onehot)/N_valid| = {np.abs(dlogits - expected).max():.1e}")
assert np.abs(dlogits - expected).max() < 1e-15
assert np.abs(dlogits.sum(-1)).max() < 1e-15 and not dlogits[2].any()
uniform_loss, _ = cross_entropy_forward(np.zeros((N, V)), np.where(valid, targets, 0))
print(f"(c) loss of all-zero logits = {float(uniform_loss):.6f}, log V = {math.log(V):.6f}")
assert abs(float(uniform_loss) - math.log(V)) < 1e-12
report = check_op(cross_entropy_forward, cross_entropy_backward, [logits, targets], names=["logits"])
print(report)        # targets are integers: no gradient, so only logits is checked
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 6. Causal self-attention
#
# GPT-2's attention takes the fused projection `qkv` $= [q\,|\,k\,|\,v]$ of width $3C$, splits it into $H$ heads
# of size $D = C/H$, and for each head:
#
# $$S = \frac{q k^\top}{\sqrt D}, \qquad S_{ts} = -\infty \ \text{ for } s > t \ \text{(causal mask)}, \qquad
# A = \operatorname{softmax}_s(S), \qquad y = A v .$$
#
# The backward runs the same steps in reverse, each quoting the line it differentiates
# (`minift/ops/attention.py`):
#
# $$\bar A = \bar y\, v^\top,\quad \bar v = A^\top \bar y,\qquad
# \bar S = A \odot \big(\bar A - \textstyle\sum_s \bar A \odot A\big),\qquad
# \bar q = \bar S\, k/\sqrt D,\quad \bar k = \bar S^\top q/\sqrt D .$$
#
# The middle one is softmax's backward, $\bar S_s = A_s(\bar A_s - \sum_{s'} \bar A_{s'} A_{s'})$, from
# $\partial A_{s'}/\partial S_s = A_{s'}(\delta_{ss'} - A_s)$ (derived in `minift/ops/softmax.py`); the last two are
# section 1's linear rule applied to $S = q\,(k^\top/\sqrt D)$, once per factor. The mask needs no backward of its
# own: a masked entry has $A = 0$, so $\bar S = 0$ there already.

# %%
B, T, C, H = 2, 5, 8, 2                                  # batch, time, channels, heads (head size D = 4)
qkv = rng.standard_normal((B, T, 3 * C))                 # (B, T, 3C) what c_attn would produce
att_y, att_cache = attention_forward(qkv, H)             # (B, T, C)
A = attention_probabilities(att_cache)                   # (B, H, T, T) the attention weights, cached
print("attention weights of batch 0, head 0 (row t = query, column s = key):")
print(A[0, 0])

# %% [markdown]
# **Check.** (a) Each row of $A$ sums to 1 and everything above the diagonal is exactly 0. (b) Causality forward:
# changing the input at time 3 leaves outputs 0–2 bit-for-bit unchanged. (c) Causality backward: a gradient arriving
# only at output 2 reaches inputs 0–2 and nothing after. (d) The softmax backward alone, then the whole attention
# backward, against finite differences.

# %%
assert np.abs(A.sum(-1) - 1).max() < 1e-12 and not np.triu(A, k=1).any()
qkv2 = qkv.copy()
qkv2[:, 3] += 1.0                                        # change time 3 only
y2, _ = attention_forward(qkv2, H)
moved = np.abs(y2 - att_y).max(axis=(0, 2))              # (T,) largest change per time step
print("(b) largest output change per time step:", moved)
assert not moved[:3].any() and moved[3:].all()
dy_one = np.zeros_like(att_y)
dy_one[:, 2] = rng.standard_normal((B, C))               # upstream gradient at time 2 only
dqkv_one = attention_backward(dy_one, att_cache)         # (B, T, 3C)
reach = np.abs(dqkv_one).max(axis=(0, 2))                # (T,)
print("(c) gradient reaching each input time step:", reach)
assert reach[:3].all() and not reach[3:].any()
print(check_op(softmax_forward, softmax_backward, [rng.standard_normal((B, T, T))], names=["scores"]).assert_ok())
report = check_op(attention_forward, attention_backward, [qkv, H], names=["qkv"])
print(report)        # n_head is an int: not differentiated
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 7. Why the upstream gradient must be random
#
# `check_op` draws the upstream gradient $g$ at random. Tempting shortcut: use $g = \mathbf 1$, i.e. check
# $L = \sum_j f(x)_j$. Here is a mistake that shortcut lets through. A plausible slip in LayerNorm's backward is to
# treat $r = (\sigma^2 + \varepsilon)^{-1/2}$ as a constant — to keep the mean term and forget the scale term:
#
# $$\bar x_\text{broken} = r\,\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x})\big)
# \qquad\text{instead of}\qquad r\,\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x}) - \hat x\,
# \operatorname{mean}(\bar{\hat x}\odot\hat x)\big).$$
#
# Below it is written out — the one re-implementation of a minift op in this tutorial, and deliberately wrong — and
# checked with both kinds of $g$, at the point where LayerNorm starts training: gain $w = 1$, bias $b = 0$.

# %%
def layernorm_backward_broken(dy, cache):
    """WRONG on purpose: subtracts the mean term only, as if rstd did not depend on x."""
    xhat, rstd, w = cache
    dxhat = dy * w                                                # (..., C)
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))      # (..., C)  the scale term is missing
    _, dw, db = layernorm_backward(dy, cache)                     # dw, db are right; only dx is broken
    return dx, dw, db


x = rng.standard_normal((B, T, C))
w_init, b_init = np.ones(C), np.zeros(C)                          # LayerNorm's initial parameters
ones = np.ones((B, T, C))
results = {}
for bw_name, bw in (("minift's layernorm_backward", layernorm_backward), ("broken (no scale term)",
                                                                          layernorm_backward_broken)):
    for g_name, g in (("all-ones g", ones), ("random g", None)):
        rep = check_op(layernorm_forward, bw, [x, w_init, b_init], names=["x", "w", "b"], dout=g)
        results[bw_name, g_name] = rep
        print(f"{bw_name:<28} {g_name:<11} error on x: {rep['x'].max_error:8.1e}  -> "
              f"{'ok' if rep.ok else 'FAIL'}")

# %% [markdown]
# **Check.** The broken backward *passes* with $g = \mathbf 1$ and fails with a random $g$; minift's passes both.
#
# Why the all-ones check is blind: $\sum_c \hat x_c = 0$ for every row, so with $w = \mathbf 1$ the checked scalar is
# $L = \sum_n \sum_c y_{nc} = \sum_n \sum_c \hat x_{nc} + N \sum_c b_c = N \sum_c b_c$ over the $N = B\cdot T$ rows
# — it does not depend on $x$ at all. The true $\bar x$ is
# 0, the check can only confirm "$\bar x = 0$", and the broken formula returns 0 too: with
# $\bar{\hat x} = \mathbf 1$, $\bar{\hat x} - \operatorname{mean}(\bar{\hat x}) = 0$. The missing term,
# $\hat x\operatorname{mean}(\bar{\hat x}\odot\hat x) = \hat x\operatorname{mean}(\hat x)$, is also 0 there. A random
# $g$ makes $L$ depend on $x$ (in every direction LayerNorm does not remove: a shift of a row, and up to
# $\varepsilon$ its scale, still change nothing), and the error jumps to order 1.
#
# Two rules follow, and minift's tests follow both (`tests/test_gradcheck.py` and every test in `tests/ops/`): the
# upstream gradient is random, never `ones_like`; and parameters are moved away from neutral values (1, 0) before
# checking. Either a random $g$ or a gain $w$ away from 1 alone catches this bug (moving $b$ alone would not: $b$
# never reaches $\bar x$) — the last line shows all-ones $g$ with a random gain $w$:

# %%
assert results["broken (no scale term)", "all-ones g"].ok            # the blind spot is real
assert not results["broken (no scale term)", "random g"].ok          # and a random g sees it
assert all(results["minift's layernorm_backward", g].ok for g in ("all-ones g", "random g"))
rep = check_op(layernorm_forward, layernorm_backward_broken, [x, w, b_init], names=["x", "w", "b"], dout=ones)
print(f"broken, all-ones g, random w: error on x {rep['x'].max_error:.1e} -> {'ok' if rep.ok else 'FAIL'}")
assert not rep.ok

# %% [markdown]
# ## What you saw
#
# | op | backward in one line | invariant checked |
# |---|---|---|
# | linear $y = xW + b$ | $\bar x = \bar y W^\top,\ \bar W = x^\top\bar y,\ \bar b = \sum\bar y$ | frozen $W$: no $x^\top\bar y$ |
# | LayerNorm | $\bar x = r(\bar{\hat x} - \text{mean} - \hat x\,\text{mean}(\bar{\hat x}\hat x))$ | $\sum_c\bar x = 0$ |
# | GELU | $\bar x = \bar y\odot\tfrac12(1 + t + x(1-t^2)k(1+3ax^2))$ | $\text{GELU}'(0) = \tfrac12$ |
# | cross-entropy | $\bar z = (p - \text{onehot})/N_\text{valid}$ | uniform logits: $L = \log V$ |
# | attention | reverse of: split, $qk^\top/\sqrt D$, mask, softmax, $Av$ | causal both ways |
#
# Every one passed a float64 finite-difference check with a random upstream gradient: errors below $10^{-7}$ (each
# report printed its own), against a tolerance of $10^{-5}$. Tutorial 03 chains them into the whole GPT and checks
# the model's backward the same way.
#
# ## Exercises
#
# Write your answer in the `my_...` function (replace the `raise NotImplementedError`) and run the cell after it.
# Until you do, that cell checks the reference solution, which is hidden (collapsed) in Jupyter — try first.
#
# **Exercise 1 — RMSNorm.** LLaMA (one of the model families in the MIT paper of article §4.2) replaces LayerNorm by
# RMSNorm: no mean, no bias, $y = w \odot x\,r$ with $r = (\operatorname{mean}(x^2) + \varepsilon)^{-1/2}$. The
# forward is given. Write its backward, returning `(dx, dw)`. Hint: redo section 3 without $\mu$.

# %%
def rmsnorm_forward(x, w, eps=1e-5):
    """x [..., C], w [C] -> y [..., C]. Returns (y, cache)."""
    rstd = (np.mean(x * x, axis=-1, keepdims=True) + eps) ** -0.5    # (..., 1)
    xhat = x * rstd                                                  # (..., C)
    return xhat * w, (xhat, rstd, w)


def my_rmsnorm_backward(dy, cache):
    """dy [..., C] -> (dx [..., C], dw [C])."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_rmsnorm_backward(dy, cache):
    xhat, rstd, w = cache
    C = w.shape[0]
    dw = (dy * xhat).reshape(-1, C).sum(axis=0)                      # (C,)
    dxhat = dy * w                                                   # (..., C)
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))   # the scale term only
    return dx, dw


# %%
def check_rmsnorm(backward):
    x = rng.standard_normal((3, 4, 6)) * 2 + 0.5
    w = 1 + 0.5 * rng.standard_normal(6)                             # away from the neutral gain 1
    rep = check_op(rmsnorm_forward, backward, [x, w], names=["x", "w"])
    print(rep)
    rep.assert_ok()


exercise("Exercise 1 (RMSNorm backward)", check_rmsnorm, my_rmsnorm_backward, solution_rmsnorm_backward)

# %% [markdown]
# **Exercise 2 — fool the all-ones check yourself.** Write a *wrong* softmax backward (the op pair of section 6:
# `softmax_forward`, cache = $p$) that passes a gradient check with an all-ones upstream gradient but fails with a
# random one. Hint: with $\bar p = \mathbf 1$, what is the true $\bar x$?

# %%
def my_wrong_softmax_backward(dp, cache):
    """dp [..., K] -> dx [..., K], wrong in a way an all-ones dp cannot see."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_wrong_softmax_backward(dp, cache):
    p = cache
    return p * (dp - dp.mean(axis=-1, keepdims=True))   # plain mean instead of the p-weighted Σ dp ⊙ p


# %%
def check_wrong_softmax(backward):
    s = rng.standard_normal((3, 5))
    with_ones = check_op(softmax_forward, backward, [s], dout=np.ones((3, 5)))
    with_random = check_op(softmax_forward, backward, [s])
    print(f"all-ones g: error {with_ones.max_error:.1e};  random g: error {with_random.max_error:.1e}")
    assert with_ones.ok, "an all-ones upstream gradient should not notice this backward's mistake"
    assert not with_random.ok, "a random upstream gradient should catch it: is this backward really wrong?"


exercise("Exercise 2 (a bug only a random g finds)", check_wrong_softmax, my_wrong_softmax_backward,
         solution_wrong_softmax_backward)

# %% [markdown]
# **Exercise 3 — where GELU bottoms out.** GELU's minimum is where its derivative is 0. Using only `gelu_forward`
# and `gelu_backward` (section 4: an all-ones upstream gradient gives $dy/dx$), find that $x$ to within $10^{-9}$,
# e.g. by bisection between −2 and −0.1.

# %%
def my_gelu_minimum():
    """Return x* (a float) with GELU'(x*) = 0."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_gelu_minimum():
    def slope(v):
        a = np.array([v])
        return float(gelu_backward(np.ones(1), gelu_forward(a)[1])[0])
    lo, hi = -2.0, -0.1                                  # slope(lo) < 0 < slope(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


# %%
def check_gelu_minimum(answer):
    x_star = float(answer())
    ys, cache = gelu_forward(np.array([x_star - 1e-3, x_star, x_star + 1e-3]))
    slope = gelu_backward(np.ones(3), cache)[1]
    print(f"x* = {x_star:.9f}, GELU(x*) = {ys[1]:.9f}, GELU'(x*) = {slope:.1e}")
    assert abs(slope) < 4e-10 and ys[1] < ys[0] and ys[1] < ys[2]      # GELU''(x*) ≈ 0.43: |x − x*| < 1e-9


exercise("Exercise 3 (GELU's minimum)", check_gelu_minimum, my_gelu_minimum, solution_gelu_minimum)
