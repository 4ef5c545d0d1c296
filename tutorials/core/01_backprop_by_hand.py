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
# # Core 01 · Backprop by hand
#
# **What you will see.** A linear layer's gradient written as three matrix products; a check that judges it with
# nothing but its own forward pass, entry by entry; a V-shaped curve that says which finite-difference step to
# trust; the loss of a language model and its one-line gradient; LayerNorm, GELU and attention passing the same
# check; and a deliberately broken LayerNorm backward that passes a lazy check and fails the real one.
#
# **Article:** §1.1 微调的基本概念 (*What fine-tuning is*), step 4:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
# >
# > *Training and optimisation: train the model on the task's data set, adjusting the model's parameters by the
# > backpropagation algorithm so as to minimise the loss function.*
#
# The article gives backpropagation one clause. Everything later in this course — full fine-tuning's weight
# gradient $G$, LoRA's $dA$ and $dB$ — is built from the backward passes in this tutorial.
#
# **You will learn**
# 1. the contract every op in `minift.ops` follows: a forward that keeps a cache, a backward that turns the
#    gradient of the output into gradients of the inputs;
# 2. the linear layer's backward, $\bar W = x^\top \bar y$, and that a frozen weight skips it;
# 3. how to check any backward with finite differences (`minift.check_op`), and read its report;
# 4. why that check needs a *random* upstream gradient.
#
# **中文:** [zh/01_backprop_by_hand.py](zh/01_backprop_by_hand.py).
#
# **Time:** about 15 minutes to read; under 1 s to run in normal mode and under 1 s in fast mode (`MINIFT_FAST=1`),
# measured on an idle 2-core Intel Xeon with `OPENBLAS_NUM_THREADS=1`; the arrays are tiny, so both modes run the same
# sizes and print the same numbers.
#
# **Run it:** `python tutorials/core/01_backprop_by_hand.py`, or open it as a notebook (see `tutorials/README.md`).
#
# **Going further:** [tutorial 02](../02_backprop_by_hand.py) (going further) derives LayerNorm's backward in full,
# works out the rounding behind the step $h$, and checks attention's causality in both directions.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minift import check_op
from minift.app.tutorial import FAST, exercise, show
from minift.ops import (
    attention_backward,
    attention_forward,
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
if FAST:
    print("(fast mode: this tutorial is already small; it runs the same sizes as normal mode, same numbers)")

# %% [markdown]
# ## 1. The contract, and the linear layer
#
# Every op in `minift.ops` is a pair of functions:
#
# ```
# out, cache = op_forward(x, w, ...)          # cache: what the backward will need
# dx, dw, ... = op_backward(dout, cache)      # gradients in the order of the forward's inputs
# ```
#
# Somewhere downstream sits a scalar loss $L$. The backward receives the **upstream gradient**
# $\bar y = \partial L/\partial y$ (shaped like $y$) and returns $\bar x = \partial L/\partial x$. That is the chain
# rule, one op at a time: $\bar x = J^\top \bar y$ with $J$ the op's Jacobian — computed directly, never built as a
# matrix. Backpropagation through a whole model is these calls in reverse order (core tutorial 02). minift writes
# $\bar x$ as `dx`.
#
# GPT-2 stores a linear layer's weight as **[in, out]**: $y = xW + b$, with $x$ of shape $(N, I)$, $W$ of shape
# $(I, O)$, and $N = B\cdot T$ positions (batch times sequence). From $y_{no} = \sum_i x_{ni} W_{io} + b_o$:
#
# $$\bar x = \bar y\, W^\top, \qquad \bar W = x^\top \bar y, \qquad \bar b = \textstyle\sum_n \bar y_n .$$
#
# $W$ is used at all $N$ positions, so its gradient is a **sum over positions**: the matmul $x^\top \bar y$. Full
# fine-tuning moves $W$ along this matrix (the course calls it $G$). A frozen weight (`need_dw=False`) skips exactly
# this matmul, and that skipped matmul is where LoRA saves time.

# %%
B, T, I, O = 2, 3, 4, 5                                  # batch, time, in features, out features
x = rng.standard_normal((B, T, I))                       # (B, T, I)
W = rng.standard_normal((I, O))                          # (I, O)   GPT-2 layout: [in, out]
b = rng.standard_normal(O)                               # (O,)

y, cache = linear_forward(x, W, b)                       # (B, T, O)
dy = rng.standard_normal(y.shape)                        # (B, T, O) an upstream gradient, as from the layer above
dx, dW, db = linear_backward(dy, cache)
print("y", y.shape, " dx", dx.shape, " dW", dW.shape, " db", db.shape)

# %% [markdown]
# **Check.** The three formulas, written out in NumPy only to compare with minift, must agree, and a frozen weight
# must get no gradient at all.

# %%
x2, dy2 = x.reshape(-1, I), dy.reshape(-1, O)            # (N, I), (N, O) with N = B·T
errors = {"dx": np.abs(dx - (dy2 @ W.T).reshape(x.shape)).max(),
          "dW": np.abs(dW - x2.T @ dy2).max(),
          "db": np.abs(db - dy2.sum(axis=0)).max()}
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-12
_, dW_frozen, _ = linear_backward(dy, cache, need_dw=False)
assert dW_frozen is None
print("need_dw=False: dW is None (the x^T dy matmul was skipped)")

# %% [markdown]
# ## 2. The check that can fail: finite differences
#
# Agreeing with our own formula proves nothing if the formula is wrong. The independent judge is the forward pass.
# Draw a **random** $g$ shaped like the output and define the scalar
#
# $$L(x) = \sum_j f(x)_j\, g_j, \qquad\text{so that}\qquad \frac{\partial L}{\partial x} = J^\top g
# = \texttt{backward}(g).$$
#
# Estimate every entry with a centered difference and compare by relative error:
#
# $$\text{numeric}_i = \frac{L(x + h e_i) - L(x - h e_i)}{2h}, \qquad
# \text{error}_i = \frac{|\text{analytic}_i - \text{numeric}_i|}{\max(|\text{analytic}_i|, |\text{numeric}_i|,
# 10^{-3})}.$$
#
# `check_op(forward, backward, inputs)` does all of it in float64, with $h = 10^{-5}$: it copies the inputs, draws
# $g$ from a seeded generator, checks every entry of every floating-point input against a tolerance of $10^{-5}$,
# and returns a report.

# %%
report = check_op(linear_forward, linear_backward, [x, W, b], names=["x", "W", "b"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# Each row is one input: entries checked out of the total, the worst relative error, where it happened, and the
# two values there. As printed above, the worst error is far below the tolerance.
#
# **Which step $h$?** Smaller is not better. The centered difference is off by a term in $h^2$ (in the Taylor
# series the even terms cancel), while float64 rounding (about $2^{-53}$ relative) in each $L$ is divided by $2h$
# and grows as $1/h$. Sweep $h$ on LayerNorm (a curved op; the linear layer has no $h^2$ term) and watch both:

# %%
C = 8
x_ln = rng.standard_normal((B, T, C)) * 2 + 1            # (B, T, C) rows with mean ≈ 1, spread ≈ 2
w_ln = 1 + 0.5 * rng.standard_normal(C)                  # (C,) gain, away from its initial 1
b_ln = 0.5 * rng.standard_normal(C)                      # (C,) bias, away from its initial 0
steps = 10.0 ** -np.arange(1, 11)                        # h = 1e-1 ... 1e-10
sweep = [check_op(layernorm_forward, layernorm_backward, [x_ln, w_ln, b_ln], eps=h).max_error for h in steps]
for h, e in zip(steps, sweep):
    print(f"h = {h:.0e}   worst relative error {e:.1e}   {'ok' if e <= 1e-5 else 'FAIL'}")

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.loglog(steps, sweep, "o-", label="LayerNorm, worst relative error")
ax.axhline(1e-5, color="0.6", ls="--", label="tolerance 1e-5")
ax.set_xlabel("step h")
ax.legend(loc="lower left")
ax.set_title("Finite differences: h² error on the right, rounding on the left")
show(fig, "core01_step_sweep")

# %% [markdown]
# **Check.** On the right the error falls a hundredfold per decade of $h$ (the $h^2$ term); on the left it grows
# again (rounding); the best step is near $10^{-5}$, `check_op`'s default. Float32 would fail: its rounding is
# $2^{29}$ times coarser, so the left arm would drown the signal. Gradient checks run in float64.

# %%
ratio = sweep[1] / sweep[2]                              # error at h = 1e-2 over error at h = 1e-3
best = steps[int(np.argmin(sweep))]
print(f"error ratio for h 1e-2 -> 1e-3: {ratio:.1f} (h^2 predicts 100);  best h: {best:.0e}")
assert 80 < ratio < 120 and 1e-6 <= best <= 1e-4
assert sweep[0] > 1e-5 and sweep[-1] > 1e-5 and min(sweep) < 1e-7

# %% [markdown]
# ## 3. The loss: softmax cross-entropy
#
# A language model's loss at one position, with logits $z \in \mathbb R^V$ and the true next token $y$:
#
# $$\ell = -\log p_y = \log\textstyle\sum_v e^{z_v} - z_y, \qquad p = \operatorname{softmax}(z), \qquad
# L = \frac1{N_\text{valid}}\sum_{n\ \text{valid}} \ell_n .$$
#
# Positions whose target is `-100` (padding) are left out. Differentiating $\log\sum e^{z}$ gives $p$, and $-z_y$
# gives $-1$ at $y$:
#
# $$\bar z_n = \bar L\;\frac{p_n - \operatorname{onehot}(y_n)}{N_\text{valid}}\ \ \text{(valid rows)},
# \qquad \bar z_n = 0\ \ \text{(ignored rows)}.$$
#
# Every row of $\bar z$ sums to 0: the target's logit is pushed up exactly as much as all the others are pushed down.

# %%
N, V = 6, 10                                             # positions, vocabulary
logits = rng.standard_normal((N, V)) * 2                 # (N, V)
targets = rng.integers(0, V, size=N)                     # (N,)
targets[2] = -100                                        # position 2 has no loss (e.g. padding)
loss, ce_cache = cross_entropy_forward(logits, targets)
dlogits = cross_entropy_backward(np.asarray(1.0), ce_cache)   # (N, V), with dL/dL = 1
print(f"loss = {float(loss):.4f} over {int((targets != -100).sum())} valid positions")
print("dlogits row sums:", dlogits.sum(-1))

# %% [markdown]
# **Check.** (a) $\bar z$ is $(p - \text{onehot})/N_\text{valid}$, with $p$ from minift's `softmax`, and the ignored
# row is exactly 0; (b) all-zero logits mean a uniform guess over $V$ tokens, so the loss is exactly $\log V$ — where
# an untrained language model starts; (c) the finite-difference check (the integer targets get no gradient).

# %%
valid = targets != -100
expected = softmax(logits)
expected[np.arange(N), np.where(valid, targets, 0)] -= 1
expected = expected * valid[:, None] / valid.sum()       # (N, V) the formula, to compare
print(f"(a) max |dlogits - (p - onehot)/N_valid| = {np.abs(dlogits - expected).max():.1e}")
assert np.abs(dlogits - expected).max() < 1e-15 and not dlogits[2].any()
uniform_loss, _ = cross_entropy_forward(np.zeros((N, V)), np.where(valid, targets, 0))
print(f"(b) loss of all-zero logits = {float(uniform_loss):.6f}, log V = {np.log(V):.6f}")
assert abs(float(uniform_loss) - np.log(V)) < 1e-12
report = check_op(cross_entropy_forward, cross_entropy_backward, [logits, targets], names=["logits"])
print(report)
assert report.ok, report

# %% [markdown]
# ## 4. LayerNorm
#
# GPT-2 normalises each token's $C$ channels:
#
# $$\mu = \operatorname{mean}(x),\quad r = (\operatorname{mean}((x-\mu)^2)+\varepsilon)^{-1/2},\quad
# \hat x = (x-\mu)\,r,\quad y = w\odot\hat x + b .$$
#
# $\bar w$ and $\bar b$ sum over positions, as $\bar W$ did. For $\bar x$, both $\mu$ and $r$ depend on $x$; with
# $\bar{\hat x} = \bar y \odot w$ the result is
#
# $$\bar x = r\,\Big(\bar{\hat x} \;-\; \underbrace{\operatorname{mean}(\bar{\hat x})}_{\text{mean term}}
# \;-\; \underbrace{\hat x\,\operatorname{mean}(\bar{\hat x}\odot\hat x)}_{\text{scale term}}\Big).$$
#
# The mean term has a meaning you can check: adding the same number to every $x_c$ leaves $y$ unchanged, so the
# gradient has no component that way, $\sum_c \bar x_c = 0$. The scale term comes from $r$; section 6 shows what
# happens if you forget it.

# %%
y_ln, ln_cache = layernorm_forward(x_ln, w_ln, b_ln)     # (B, T, C)
dx_ln, dw_ln, db_ln = layernorm_backward(rng.standard_normal(y_ln.shape), ln_cache)
print(f"max |row sum of dx| = {np.abs(dx_ln.sum(-1)).max():.1e}   (0 up to rounding)")
assert np.abs(dx_ln.sum(-1)).max() < 1e-12
report = check_op(layernorm_forward, layernorm_backward, [x_ln, w_ln, b_ln], names=["x", "w", "b"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 5. GELU and attention: the same check
#
# The other two ops of a GPT block, in one line each (their modules in `minift/ops/` derive every step):
#
# - **GELU**, elementwise: $y = \tfrac12 x(1+\tanh u)$, $u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$, so
#   $\bar x = \bar y \odot dy/dx$.
# - **Causal attention** per head: $S = qk^\top/\sqrt D$ with future positions masked,
#   $A = \operatorname{softmax}(S)$, $y = Av$. Backward: $\bar v = A^\top\bar y$, $\bar A = \bar y v^\top$, then
#   softmax's backward $\bar S = A\odot(\bar A - \sum_s \bar A\odot A)$, then the linear rule of section 1 twice,
#   $\bar q = \bar S k/\sqrt D$, $\bar k = \bar S^\top q/\sqrt D$. The mask needs no backward: masked $A$ is 0.
#
# Softmax alone, GELU and attention, each through `check_op` with a random upstream gradient:

# %%
H = 2                                                    # heads; head size D = C / H = 4
cases = {"softmax": (softmax_forward, softmax_backward, [rng.standard_normal((B, T, T))]),
         "gelu": (gelu_forward, gelu_backward, [rng.standard_normal((B, T, C)) * 2]),
         "attention": (attention_forward, attention_backward, [rng.standard_normal((B, T, 3 * C)), H])}
for name, (fwd, bwd, inputs) in cases.items():
    rep = check_op(fwd, bwd, inputs)                     # H is an int: not differentiated
    e = rep.entries[0]
    print(f"{name:<10} {e.checked:>3}/{e.total:<3} entries   worst relative error {e.max_error:.1e}   "
          f"{'ok' if rep.ok else 'FAIL'}")
    assert rep.ok and rep.max_error < 1e-7, rep

# %% [markdown]
# ## 6. Why the upstream gradient must be random
#
# A tempting shortcut is $g = \mathbf 1$, i.e. checking $L = \sum_j f(x)_j$. Here is a mistake it lets through: a
# LayerNorm backward that treats $r$ as a constant, keeping the mean term and forgetting the scale term,
#
# $$\bar x_\text{broken} = r\,\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x})\big).$$
#
# Below it is written out (deliberately wrong) and checked with both kinds of $g$, at LayerNorm's starting point:
# gain $w = 1$, bias $b = 0$.

# %%
def layernorm_backward_broken(dy, cache):
    """WRONG on purpose: subtracts the mean term only, as if rstd did not depend on x."""
    xhat, rstd, w = cache
    dxhat = dy * w                                                # (..., C)
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))      # (..., C)  the scale term is missing
    _, dw, db = layernorm_backward(dy, cache)                     # dw, db are right; only dx is broken
    return dx, dw, db


x0 = rng.standard_normal((B, T, C))                               # (B, T, C)
w_init, b_init = np.ones(C), np.zeros(C)                          # LayerNorm's initial parameters
ones = np.ones((B, T, C))
results = {}
for bw_name, bw in (("minift", layernorm_backward), ("broken", layernorm_backward_broken)):
    for g_name, g in (("all-ones g", ones), ("random g", None)):
        rep = check_op(layernorm_forward, bw, [x0, w_init, b_init], names=["x", "w", "b"], dout=g)
        results[bw_name, g_name] = rep.ok
        print(f"{bw_name:<7} backward, {g_name:<10}: error on x {rep['x'].max_error:8.1e} -> "
              f"{'ok' if rep.ok else 'FAIL'}")

# %% [markdown]
# **Check.** As printed above, the broken backward *passes* with $g = \mathbf 1$ and fails with a random $g$;
# minift's passes both.
#
# Why the all-ones check is blind here: every row of $\hat x$ sums to 0, so with $w = \mathbf 1$ the checked scalar
# is $L = \sum y = \sum \hat x + N\sum_c b_c = N\sum_c b_c$, which does not depend on $x$ at all. The true $\bar x$ is
# 0, and the broken formula also returns 0 ($\bar{\hat x} = \mathbf 1$ minus its mean). A random $g$ makes $L$ depend
# on $x$, and the missing term shows.
#
# Two rules follow, and minift's tests keep both: the upstream gradient is random, never `ones_like`; and
# parameters are moved away from neutral values (1, 0) before checking. A gain away from 1 alone already catches
# this bug:

# %%
assert results["broken", "all-ones g"] and not results["broken", "random g"]     # the blind spot is real
assert results["minift", "all-ones g"] and results["minift", "random g"]
rep = check_op(layernorm_forward, layernorm_backward_broken, [x0, w_ln, b_init], names=["x", "w", "b"], dout=ones)
print(f"broken backward, all-ones g, gain away from 1: error on x {rep['x'].max_error:.1e} -> "
      f"{'ok' if rep.ok else 'FAIL'}")
assert not rep.ok

# %% [markdown]
# ## What to remember
#
# - A backward is the chain rule for one op: it turns $\bar y$ into $\bar x = J^\top\bar y$ without building $J$,
#   using what the forward cached. A model's backward is its ops' backwards in reverse.
# - Linear layer: $\bar W = x^\top \bar y$, a sum over every position. Freezing $W$ skips this matmul. Keep this
#   formula in mind: LoRA's gradients (core tutorials 03 and 04) are this $G$ seen through the adapters.
# - Cross-entropy: $\bar z = (p - \text{onehot})/N_\text{valid}$; a uniform guess costs $\log V$.
# - Trust a backward only after a float64 finite-difference check with $h = 10^{-5}$, a random upstream gradient,
#   and parameters away from 1 and 0. `check_op` does it.
#
# Next, core tutorial 02 chains these ops into the whole GPT and checks the model's backward the same way.
#
# ## Exercises
#
# Write your answer in the `my_...` function (replace `raise NotImplementedError`) and run the cell after it.
# Until you do, that cell checks the reference solution, which is folded in Jupyter — try first.
#
# **Exercise 1 — two linear layers in a row.** $y = (xW_1)W_2$ with $W_1$ of shape $(I, R)$ and $W_2$ of shape
# $(R, O)$, $R$ small: a low-rank product, the shape of LoRA. Write its backward with two calls to
# `linear_backward`, in reverse order. The check also tests what comes back in core tutorial 04: with
# $G = x^\top\bar y$, the gradient the merged matrix $W_1W_2$ would get, $\bar W_1 = G\,W_2^\top$ and
# $\bar W_2 = W_1^\top G$.

# %%
def two_linear_forward(x, W1, W2):
    """x [..., I], W1 [I, R], W2 [R, O] -> y [..., O] = (x W1) W2. Returns (y, cache)."""
    h, cache1 = linear_forward(x, W1)                               # (..., R)
    y, cache2 = linear_forward(h, W2)                               # (..., O)
    return y, (cache1, cache2)


def my_two_linear_backward(dy, cache):
    """dy [..., O] -> (dx [..., I], dW1 [I, R], dW2 [R, O])."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_two_linear_backward(dy, cache):
    cache1, cache2 = cache
    dh, dW2, _ = linear_backward(dy, cache2)                        # the second layer first: the forward reversed
    dx, dW1, _ = linear_backward(dh, cache1)
    return dx, dW1, dW2


# %%
def check_two_linear(backward):
    x, W1, W2 = rng.standard_normal((2, 3, 6)), rng.standard_normal((6, 2)), rng.standard_normal((2, 5))
    check_op(two_linear_forward, backward, [x, W1, W2], names=["x", "W1", "W2"]).assert_ok()
    dy = rng.standard_normal((2, 3, 5))                             # (B, T, O)
    _, dW1, dW2 = backward(dy, two_linear_forward(x, W1, W2)[1])
    G = x.reshape(-1, 6).T @ dy.reshape(-1, 5)                      # (I, O) the merged matrix's gradient
    gaps = np.abs(dW1 - G @ W2.T).max(), np.abs(dW2 - W1.T @ G).max()
    print(f"gradient check ok; |dW1 - G W2^T| = {gaps[0]:.1e}, |dW2 - W1^T G| = {gaps[1]:.1e}")
    assert max(gaps) < 1e-12


exercise("Exercise 1 (two linear layers)", check_two_linear, my_two_linear_backward, solution_two_linear_backward)

# %% [markdown]
# **Exercise 2 — RMSNorm.** LLaMA, one of the model families in the MIT paper (article §4.2), replaces LayerNorm by
# RMSNorm: no mean, no bias, $y = w \odot x\,r$ with $r = (\operatorname{mean}(x^2) + \varepsilon)^{-1/2}$. The
# forward is given; write the backward, returning `(dx, dw)`. Hint: section 4 without $\mu$.

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


exercise("Exercise 2 (RMSNorm backward)", check_rmsnorm, my_rmsnorm_backward, solution_rmsnorm_backward)

# %% [markdown]
# **Exercise 3 — fool the all-ones check yourself.** Write a *wrong* softmax backward (`softmax_forward`'s cache is
# $p$) that passes a gradient check with an all-ones upstream gradient and fails with a random one. Hint: with
# $\bar p = \mathbf 1$, what is the true $\bar x$?

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


exercise("Exercise 3 (a bug only a random g finds)", check_wrong_softmax, my_wrong_softmax_backward,
         solution_wrong_softmax_backward)
