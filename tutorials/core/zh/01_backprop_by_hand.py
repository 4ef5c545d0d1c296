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
# # 核心 01 · 手写反向传播
#
# **你将看到什么。** 线性层的梯度写成三个矩阵乘法;一个只凭前向计算本身、逐个元素评判它的检验;一条 V 形曲线,
# 告诉你有限差分的步长该取多少;语言模型的损失函数,以及一行就能写完的梯度;LayerNorm、GELU 和注意力通过同一个检验;
# 还有一个故意写错的 LayerNorm 反向计算——它骗得过偷懒的检验,却过不了真正的检验。
#
# **原文:** §1.1 微调的基本概念,第 4 步:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
#
# 原文讲反向传播只用了半句话。本课程后面的所有内容——完全微调的权重梯度 $G$,LoRA 的 $dA$ 和
# $dB$——都是由本教程里这几个反向计算搭起来的。
#
# **你将学到**
# 1. `minift.ops` 中每个算子都遵守的约定:前向计算留下缓存(cache),反向计算把输出的梯度变成输入的梯度;
# 2. 线性层的反向计算 $\bar W = x^\top \bar y$,以及冻结的权重会跳过这一步;
# 3. 怎样用有限差分(`minift.check_op`)检验任意一个反向计算,并读懂它的报告;
# 4. 为什么这个检验必须用*随机*的上游梯度。
#
# **用时:** 阅读约 15 分钟;在一台空闲的 2 核 Intel Xeon 上实测(`OPENBLAS_NUM_THREADS=1`),正常模式和快速模式
# (`MINIFT_FAST=1`)都不到 1 秒。数组都很小,两种模式规模一样,打印的数字也一样。
#
# **运行:** `python tutorials/core/zh/01_backprop_by_hand.py`,或作为 notebook 打开(见 `tutorials/README.md`)。
#
# **深入阅读:** [教程 02](../../zh/02_backprop_by_hand.py)(进阶)完整推导 LayerNorm 的反向计算,分析步长 $h$
# 背后的舍入误差,并从前向、反向两个方向检验注意力的因果性。

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
rng = np.random.default_rng(0)        # 固定种子的生成器:下面每个数字每次运行都相同
if FAST:
    print("(fast mode: this tutorial is already small; it runs the same sizes as normal mode, same numbers)")

# %% [markdown]
# ## 1. 约定,以及线性层
#
# `minift.ops` 中的每个算子都是一对函数:
#
# ```
# out, cache = op_forward(x, w, ...)          # cache:反向计算要用到的东西
# dx, dw, ... = op_backward(dout, cache)      # 梯度的顺序与前向计算的输入一致
# ```
#
# 下游某处有一个标量损失 $L$。反向计算接收**上游梯度** $\bar y = \partial L/\partial y$(形状与 $y$ 相同),返回
# $\bar x = \partial L/\partial x$。这就是链式法则,每次只作用于一个算子:$\bar x = J^\top \bar y$,$J$
# 是该算子的雅可比矩阵——结果直接算出来,从不把 $J$ 真的构造成矩阵。整个模型的反向传播,
# 就是把这些调用按相反顺序执行一遍(见核心教程 02)。minift 把 $\bar x$ 写作 `dx`。
#
# GPT-2 把线性层的权重存为 **[in, out]**:$y = xW + b$,其中 $x$ 的形状为 $(N, I)$,$W$ 为 $(I, O)$,$N = B\cdot T$
# 是位置数(批量大小乘以序列长度)。由 $y_{no} = \sum_i x_{ni} W_{io} + b_o$ 得:
#
# $$\bar x = \bar y\, W^\top, \qquad \bar W = x^\top \bar y, \qquad \bar b = \textstyle\sum_n \bar y_n .$$
#
# $W$ 在全部 $N$ 个位置上都被用到,所以它的梯度是**对所有位置求和**,也就是矩阵乘法 $x^\top \bar y$。
# 完全微调就是沿着这个矩阵更新 $W$(本课程称之为 $G$)。冻结的权重(`need_dw=False`)恰好省掉这一次矩阵乘法,LoRA
# 节省的时间正是从这里来的。

# %%
B, T, I, O = 2, 3, 4, 5                                  # 批量、时间、输入特征、输出特征
x = rng.standard_normal((B, T, I))                       # (B, T, I)
W = rng.standard_normal((I, O))                          # (I, O)   GPT-2 的布局:[in, out]
b = rng.standard_normal(O)                               # (O,)

y, cache = linear_forward(x, W, b)                       # (B, T, O)
dy = rng.standard_normal(y.shape)                        # (B, T, O) 上游梯度,如同来自上面一层
dx, dW, db = linear_backward(dy, cache)
print("y", y.shape, " dx", dx.shape, " dW", dW.shape, " db", db.shape)

# %% [markdown]
# **检验。** 把三个公式用 NumPy 写出来(只为与 minift 对比),两边必须一致;冻结的权重必须完全没有梯度。

# %%
x2, dy2 = x.reshape(-1, I), dy.reshape(-1, O)            # (N, I), (N, O),N = B·T
errors = {"dx": np.abs(dx - (dy2 @ W.T).reshape(x.shape)).max(),
          "dW": np.abs(dW - x2.T @ dy2).max(),
          "db": np.abs(db - dy2.sum(axis=0)).max()}
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-12
_, dW_frozen, _ = linear_backward(dy, cache, need_dw=False)
assert dW_frozen is None
print("need_dw=False: dW is None (the x^T dy matmul was skipped)")

# %% [markdown]
# ## 2. 会失败的检验:有限差分
#
# 和自己写的公式对上了,什么也证明不了:公式本身可能就是错的。独立的裁判是前向计算。随机抽取一个与输出形状相同的 $g$,
# 定义标量
#
# $$L(x) = \sum_j f(x)_j\, g_j, \qquad\text{于是}\qquad \frac{\partial L}{\partial x} = J^\top g
# = \texttt{backward}(g).$$
#
# 用中心差分估计每个元素,再按相对误差比较:
#
# $$\text{numeric}_i = \frac{L(x + h e_i) - L(x - h e_i)}{2h}, \qquad
# \text{error}_i = \frac{|\text{analytic}_i - \text{numeric}_i|}{\max(|\text{analytic}_i|, |\text{numeric}_i|,
# 10^{-3})}.$$
#
# `check_op(forward, backward, inputs)` 把这些全包了:用 float64、$h = 10^{-5}$,先复制输入,再用固定种子的生成器抽取
# $g$,把每个浮点输入的每个元素与容差 $10^{-5}$ 比较,最后返回一份报告。

# %%
report = check_op(linear_forward, linear_backward, [x, W, b], names=["x", "W", "b"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# 每一行对应一个输入:检查了的元素数/总数、最大相对误差、出现的位置,以及该处的两个值。如上面打印所示,
# 最大误差远低于容差。
#
# **步长 $h$ 取多少?** 并不是越小越好。中心差分的截断误差是 $h^2$ 量级(泰勒展开里偶数次项相互抵消);而每次计算 $L$
# 时的 float64 舍入误差(相对值约 $2^{-53}$)要除以 $2h$,随 $1/h$ 增长。在 LayerNorm 上扫描 $h$(它是弯曲的;线性层没有
# $h^2$ 项),两种误差都看得到:

# %%
C = 8
x_ln = rng.standard_normal((B, T, C)) * 2 + 1            # (B, T, C) 每行均值 ≈ 1,离散程度 ≈ 2
w_ln = 1 + 0.5 * rng.standard_normal(C)                  # (C,) 增益,远离初始值 1
b_ln = 0.5 * rng.standard_normal(C)                      # (C,) 偏置,远离初始值 0
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
# **检验。** 右半边,$h$ 每缩小十倍,误差降到百分之一($h^2$ 项);左半边误差又回升(舍入);最佳步长在 $10^{-5}$ 附近,正是
# `check_op` 的默认值。换成 float32 就不行了:它的舍入误差粗 $2^{29}$ 倍,左半边会把信号淹没。所以梯度检验一律用
# float64。

# %%
ratio = sweep[1] / sweep[2]                              # h = 1e-2 与 h = 1e-3 时误差之比
best = steps[int(np.argmin(sweep))]
print(f"error ratio for h 1e-2 -> 1e-3: {ratio:.1f} (h^2 predicts 100);  best h: {best:.0e}")
assert 80 < ratio < 120 and 1e-6 <= best <= 1e-4
assert sweep[0] > 1e-5 and sweep[-1] > 1e-5 and min(sweep) < 1e-7

# %% [markdown]
# ## 3. 损失函数:softmax 交叉熵
#
# 语言模型在一个位置上的损失,logits 为 $z \in \mathbb R^V$,真实的下一个 token 为 $y$:
#
# $$\ell = -\log p_y = \log\textstyle\sum_v e^{z_v} - z_y, \qquad p = \operatorname{softmax}(z), \qquad
# L = \frac1{N_\text{valid}}\sum_{n\ \text{valid}} \ell_n .$$
#
# 目标为 `-100` 的位置(填充)不计入。对 $\log\sum e^{z}$ 求导得到 $p$,对 $-z_y$ 求导在 $y$ 处得到 $-1$:
#
# $$\bar z_n = \bar L\;\frac{p_n - \operatorname{onehot}(y_n)}{N_\text{valid}}\ \ \text{(有效行)},
# \qquad \bar z_n = 0\ \ \text{(被忽略的行)}.$$
#
# $\bar z$ 的每一行之和都为 0:目标 token 的 logit 被往上推多少,其余所有 logits 加起来就被往下压多少。

# %%
N, V = 6, 10                                             # 位置数、词表大小
logits = rng.standard_normal((N, V)) * 2                 # (N, V)
targets = rng.integers(0, V, size=N)                     # (N,)
targets[2] = -100                                        # 位置 2 不计损失(例如填充)
loss, ce_cache = cross_entropy_forward(logits, targets)
dlogits = cross_entropy_backward(np.asarray(1.0), ce_cache)   # (N, V),dL/dL = 1
print(f"loss = {float(loss):.4f} over {int((targets != -100).sum())} valid positions")
print("dlogits row sums:", dlogits.sum(-1))

# %% [markdown]
# **检验。** (a) $\bar z$ 等于 $(p - \text{onehot})/N_\text{valid}$($p$ 用 minift 的 `softmax` 计算),
# 被忽略的那一行严格为 0;(b) logits 全为 0,意味着在 $V$ 个 token 上均匀地猜,损失恰好是
# $\log V$——未经训练的语言模型就从这里起步;(c) 有限差分检验(整数的 targets 没有梯度)。

# %%
valid = targets != -100
expected = softmax(logits)
expected[np.arange(N), np.where(valid, targets, 0)] -= 1
expected = expected * valid[:, None] / valid.sum()       # (N, V) 按公式计算,用于对比
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
# GPT-2 对每个 token 的 $C$ 个通道做归一化:
#
# $$\mu = \operatorname{mean}(x),\quad r = (\operatorname{mean}((x-\mu)^2)+\varepsilon)^{-1/2},\quad
# \hat x = (x-\mu)\,r,\quad y = w\odot\hat x + b .$$
#
# $\bar w$ 和 $\bar b$ 对所有位置求和,与 $\bar W$ 一样。至于 $\bar x$,$\mu$ 和 $r$ 都依赖于 $x$;记
# $\bar{\hat x} = \bar y \odot w$,结果是
#
# $$\bar x = r\,\Big(\bar{\hat x} \;-\; \underbrace{\operatorname{mean}(\bar{\hat x})}_{\text{均值项}}
# \;-\; \underbrace{\hat x\,\operatorname{mean}(\bar{\hat x}\odot\hat x)}_{\text{缩放项}}\Big).$$
#
# 均值项有一个可以验证的含义:给每个 $x_c$ 加上同一个数,$y$ 不变,所以梯度在这个方向上没有分量,即
# $\sum_c \bar x_c = 0$。缩放项来自 $r$;第 6 节会演示忘了它会怎样。

# %%
y_ln, ln_cache = layernorm_forward(x_ln, w_ln, b_ln)     # (B, T, C)
dx_ln, dw_ln, db_ln = layernorm_backward(rng.standard_normal(y_ln.shape), ln_cache)
print(f"max |row sum of dx| = {np.abs(dx_ln.sum(-1)).max():.1e}   (0 up to rounding)")
assert np.abs(dx_ln.sum(-1)).max() < 1e-12
report = check_op(layernorm_forward, layernorm_backward, [x_ln, w_ln, b_ln], names=["x", "w", "b"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 5. GELU 与注意力:同一个检验
#
# GPT block 里另外两个算子,各用一行说明(`minift/ops/` 中各自的模块推导了每一步):
#
# - **GELU**,逐元素计算:$y = \tfrac12 x(1+\tanh u)$,$u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$,所以
#   $\bar x = \bar y \odot dy/dx$。
# - **因果注意力**,对每个头:$S = qk^\top/\sqrt D$,未来位置被掩码,$A = \operatorname{softmax}(S)$,$y = Av$。反向:
#   $\bar v = A^\top\bar y$,$\bar A = \bar y v^\top$,然后是 softmax 的反向
#   $\bar S = A\odot(\bar A - \sum_s \bar A\odot A)$,再把第 1 节线性层的规则用两次:$\bar q = \bar S k/\sqrt D$,
#   $\bar k = \bar S^\top q/\sqrt D$。掩码不需要反向计算:被掩码处 $A$ 为 0。
#
# 单独的 softmax、GELU 和注意力,各自用随机上游梯度过一遍 `check_op`:

# %%
H = 2                                                    # 头数;每个头的维度 D = C / H = 4
cases = {"softmax": (softmax_forward, softmax_backward, [rng.standard_normal((B, T, T))]),
         "gelu": (gelu_forward, gelu_backward, [rng.standard_normal((B, T, C)) * 2]),
         "attention": (attention_forward, attention_backward, [rng.standard_normal((B, T, 3 * C)), H])}
for name, (fwd, bwd, inputs) in cases.items():
    rep = check_op(fwd, bwd, inputs)                     # H 是整数:不求导
    e = rep.entries[0]
    print(f"{name:<10} {e.checked:>3}/{e.total:<3} entries   worst relative error {e.max_error:.1e}   "
          f"{'ok' if rep.ok else 'FAIL'}")
    assert rep.ok and rep.max_error < 1e-7, rep

# %% [markdown]
# ## 6. 为什么上游梯度必须是随机的
#
# 一个诱人的捷径是取 $g = \mathbf 1$,也就是检验 $L = \sum_j f(x)_j$。下面这个错误就能从它手里溜过去:LayerNorm
# 的反向计算把 $r$ 当成常数,只保留均值项,漏掉了缩放项:
#
# $$\bar x_\text{broken} = r\,\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x})\big).$$
#
# 下面把它写出来(故意写错),在 LayerNorm 的初始状态——增益 $w = 1$、偏置 $b = 0$——分别用两种 $g$ 来检验。

# %%
def layernorm_backward_broken(dy, cache):
    """WRONG on purpose: subtracts the mean term only, as if rstd did not depend on x."""
    xhat, rstd, w = cache
    dxhat = dy * w                                                # (..., C)
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))      # (..., C)  缺了缩放项
    _, dw, db = layernorm_backward(dy, cache)                     # dw、db 是对的;只有 dx 错了
    return dx, dw, db


x0 = rng.standard_normal((B, T, C))                               # (B, T, C)
w_init, b_init = np.ones(C), np.zeros(C)                          # LayerNorm 的初始参数
ones = np.ones((B, T, C))
results = {}
for bw_name, bw in (("minift", layernorm_backward), ("broken", layernorm_backward_broken)):
    for g_name, g in (("all-ones g", ones), ("random g", None)):
        rep = check_op(layernorm_forward, bw, [x0, w_init, b_init], names=["x", "w", "b"], dout=g)
        results[bw_name, g_name] = rep.ok
        print(f"{bw_name:<7} backward, {g_name:<10}: error on x {rep['x'].max_error:8.1e} -> "
              f"{'ok' if rep.ok else 'FAIL'}")

# %% [markdown]
# **检验。** 如上面打印所示,错误的反向计算在 $g = \mathbf 1$ 时*通过*,在随机 $g$ 时失败;minift 的实现两种都通过。
#
# 为什么全 1 的检验在这里看不出问题:$\hat x$ 每一行之和为 0,所以当 $w = \mathbf 1$ 时,被检验的标量是
# $L = \sum y = \sum \hat x + N\sum_c b_c = N\sum_c b_c$,与 $x$ 完全无关。真正的 $\bar x$ 是 0,错误的公式返回的也是
# 0($\bar{\hat x} = \mathbf 1$ 减去它的均值)。随机的 $g$ 让 $L$ 依赖于 $x$,漏掉的那一项就暴露了。
#
# 由此得出两条规则,minift 的测试都遵守:上游梯度用随机的,绝不用 `ones_like`;检验前把参数挪离中性值(1 和 0)。
# 只要增益离开 1,就已经能抓住这个错误:

# %%
assert results["broken", "all-ones g"] and not results["broken", "random g"]     # 盲区确实存在
assert results["minift", "all-ones g"] and results["minift", "random g"]
rep = check_op(layernorm_forward, layernorm_backward_broken, [x0, w_ln, b_init], names=["x", "w", "b"], dout=ones)
print(f"broken backward, all-ones g, gain away from 1: error on x {rep['x'].max_error:.1e} -> "
      f"{'ok' if rep.ok else 'FAIL'}")
assert not rep.ok

# %% [markdown]
# ## 要点回顾
#
# - 反向计算就是单个算子上的链式法则:借助前向计算的缓存,把 $\bar y$ 变成 $\bar x = J^\top\bar y$,不构造 $J$。
#   模型的反向传播就是各算子的反向计算倒序执行。
# - 线性层:$\bar W = x^\top \bar y$,对所有位置求和。冻结 $W$ 就省掉这次矩阵乘法。记住这个公式:LoRA 的梯度(核心教程 03
#   和 04)就是透过适配器看到的这个 $G$。
# - 交叉熵:$\bar z = (p - \text{onehot})/N_\text{valid}$;均匀地猜,损失是 $\log V$。
# - 反向计算先要通过 float64 有限差分检验才能信任:$h = 10^{-5}$,随机上游梯度,参数远离 1 和 0。`check_op`
#   全都替你做了。
#
# 下一步,核心教程 02 把这些算子串成完整的 GPT,并用同样的方法检验整个模型的反向传播。
#
# ## 练习
#
# 在 `my_...` 函数里写出你的答案(替换 `raise NotImplementedError`),然后运行它后面的单元格。在你写好之前,
# 那个单元格检验的是参考答案;参考答案在 Jupyter 里是折叠的,请先自己试试。
#
# **练习 1 —— 两个线性层串联。** $y = (xW_1)W_2$,$W_1$ 的形状为 $(I, R)$,$W_2$ 为 $(R, O)$,$R$ 很小:这是一个低秩乘积,
# 正是 LoRA 的形状。调用两次 `linear_backward`,按相反顺序写出它的反向计算。检验还会验证核心教程 04 里会再次出现的结论:
# 记 $G = x^\top\bar y$(合并后的矩阵 $W_1W_2$ 会得到的梯度),则 $\bar W_1 = G\,W_2^\top$,$\bar W_2 = W_1^\top G$。

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
    dh, dW2, _ = linear_backward(dy, cache2)                        # 先算第二层:前向计算倒过来
    dx, dW1, _ = linear_backward(dh, cache1)
    return dx, dW1, dW2


# %%
def check_two_linear(backward):
    x, W1, W2 = rng.standard_normal((2, 3, 6)), rng.standard_normal((6, 2)), rng.standard_normal((2, 5))
    check_op(two_linear_forward, backward, [x, W1, W2], names=["x", "W1", "W2"]).assert_ok()
    dy = rng.standard_normal((2, 3, 5))                             # (B, T, O)
    _, dW1, dW2 = backward(dy, two_linear_forward(x, W1, W2)[1])
    G = x.reshape(-1, 6).T @ dy.reshape(-1, 5)                      # (I, O) 合并后矩阵的梯度
    gaps = np.abs(dW1 - G @ W2.T).max(), np.abs(dW2 - W1.T @ G).max()
    print(f"gradient check ok; |dW1 - G W2^T| = {gaps[0]:.1e}, |dW2 - W1^T G| = {gaps[1]:.1e}")
    assert max(gaps) < 1e-12


exercise("Exercise 1 (two linear layers)", check_two_linear, my_two_linear_backward, solution_two_linear_backward)

# %% [markdown]
# **练习 2 —— RMSNorm。** LLaMA(原文 §4.2 那篇 MIT 论文研究的模型系列之一)用 RMSNorm 代替 LayerNorm:没有均值,没有偏置,
# $y = w \odot x\,r$,$r = (\operatorname{mean}(x^2) + \varepsilon)^{-1/2}$。前向计算已经给出;写出反向计算,返回
# `(dx, dw)`。提示:把第 4 节去掉 $\mu$ 再推一遍。

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
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))   # 只有缩放项
    return dx, dw


# %%
def check_rmsnorm(backward):
    x = rng.standard_normal((3, 4, 6)) * 2 + 0.5
    w = 1 + 0.5 * rng.standard_normal(6)                             # 远离中性增益 1
    rep = check_op(rmsnorm_forward, backward, [x, w], names=["x", "w"])
    print(rep)
    rep.assert_ok()


exercise("Exercise 2 (RMSNorm backward)", check_rmsnorm, my_rmsnorm_backward, solution_rmsnorm_backward)

# %% [markdown]
# **练习 3 —— 亲手骗过全 1 检验。** 写一个*错误的* softmax 反向计算(`softmax_forward` 的缓存就是 $p$),让它在全 1
# 上游梯度下通过梯度检验、在随机上游梯度下失败。提示:当 $\bar p = \mathbf 1$ 时,真正的 $\bar x$ 是什么?

# %%
def my_wrong_softmax_backward(dp, cache):
    """dp [..., K] -> dx [..., K], wrong in a way an all-ones dp cannot see."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_wrong_softmax_backward(dp, cache):
    p = cache
    return p * (dp - dp.mean(axis=-1, keepdims=True))   # 用普通均值代替按 p 加权的 Σ dp ⊙ p


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
