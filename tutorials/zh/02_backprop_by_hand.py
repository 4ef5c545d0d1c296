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
# # 02 · 手写反向传播
#
# **原文:** §1.1 微调的基本概念,第 4 步:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
#
# 原文讲反向传播只用了半句话,本教程把它展开。反向传播就是逐个算子地应用链式法则:
# 前向传播调用的每个算子都有一个*反向计算*,把输出的梯度变成输入的梯度。minift 的每个反向计算都是手写的;
# 后面所有教程里的每一个梯度——完全微调、LoRA、两者的对比——都由下面这五个算子搭成(外加嵌入查表,见教程 03)。
#
# **你将学到**
# 1. `minift.ops` 中每个算子都遵守的约定,以及反向计算算的是什么(向量–雅可比积);
# 2. 怎样用有限差分(`minift.gradcheck.check_op`)对照前向计算检验反向计算,并读懂它的报告;
# 3. 线性层、层归一化(LayerNorm)、GELU、softmax 交叉熵和因果注意力的反向计算:先给公式,再看 minift 的代码,最后检验;
# 4. 为什么检验需要*随机*的上游梯度:换成全 1 的上游梯度,一个写错的 LayerNorm 反向计算也能通过。
#
# **用时:** 运行不到 1 秒(这里正常模式和快速模式规模相同:每个算子都在小数组上检验);阅读 30–45 分钟。
#
# **运行:** `python tutorials/zh/02_backprop_by_hand.py`,或作为 notebook 打开(见 `tutorials/README.md`)。
# 英文原版:[02_backprop_by_hand.py](../02_backprop_by_hand.py)。

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
rng = np.random.default_rng(0)        # 固定种子的生成器:下面每个数字每次运行都相同

# %% [markdown]
# ## 1. 约定:前向计算、缓存、反向计算
#
# `minift.ops` 中的每个算子都是一对普通函数:
#
# ```
# out, cache = op_forward(x, w, ...)          # cache:反向计算要用到的东西(保存下来,从不重新计算) dx, dw, ... =
# op_backward(dout, cache)      # 梯度的顺序与前向计算的输入一致
# ```
#
# `out` 下游某处有一个标量损失 $L$。反向计算接收**上游梯度** $\bar y = \partial L/\partial y$(形状与 $y$ 相同),返回
# $\bar x = \partial L/\partial x$。由链式法则,
#
# $$\bar x_i \;=\; \sum_j \frac{\partial L}{\partial y_j}\,\frac{\partial y_j}{\partial x_i} \;=\; (J^\top \bar y)_i,
# \qquad J_{ji} = \frac{\partial y_j}{\partial x_i},$$
#
# 也就是一个*向量–雅可比积*。反向计算从不构造 $J$:在 GPT-2 的 768 个通道上做一次 LayerNorm,每个 token 的 $J$ 就有 768² ≈
# 590,000 个元素。它直接算出 $J^\top \bar y$,代价和前向计算差不多。(minift 给梯度起的名字是 `d` 加上前向的名字:`dx` 就是
# $\bar x$。)
#
# ### 线性层
#
# GPT-2 把线性层的权重存为 **[in, out]**,所以 $y = xW + b$,其中 $x \in \mathbb R^{N\times I}$,
# $W \in \mathbb R^{I\times O}$($N$ 是所有序列的所有位置,即 $B\cdot T$)。由 $y_{no} = \sum_i x_{ni} W_{io} + b_o$ 得:
#
# $$\bar x = \bar y\, W^\top, \qquad \bar W = x^\top \bar y, \qquad \bar b = \sum_n \bar y_n .$$
#
# $W$ 在全部 $N$ 个位置上都被用到,所以它的梯度是**对所有位置求和**——这个和就是矩阵乘法 $x^\top \bar y$。
# 冻结的权重(`need_dw=False`)恰好跳过这一次矩阵乘法;LoRA 节省的时间正是从这里来的(教程 07 和 09)。

# %%
B, T, I, O = 2, 3, 4, 5                                  # 批量、时间、输入特征、输出特征
x = rng.standard_normal((B, T, I))                       # (B, T, I)
W = rng.standard_normal((I, O))                          # (I, O)   GPT-2 的布局:[in, out]
b = rng.standard_normal(O)                               # (O,)

y, cache = linear_forward(x, W, b)                       # (B, T, O)
dy = rng.standard_normal(y.shape)                        # (B, T, O) 上游梯度,如同上面一层传下来的
dx, dW, db = linear_backward(dy, cache)
print("y", y.shape, " dx", dx.shape, " dW", dW.shape, " db", db.shape)

# %% [markdown]
# **检验。** 把三个公式用 NumPy 写出来(*只为*与 minift 的结果对比),两边必须在舍入误差内一致(这里是完全相等:
# 它们本来就是同样的 NumPy 表达式);冻结的权重必须完全没有梯度。

# %%
x2, dy2 = x.reshape(-1, I), dy.reshape(-1, O)            # (N, I), (N, O),N = B·T = 6
errors = {"dx": np.abs(dx - (dy2 @ W.T).reshape(x.shape)).max(),
          "dW": np.abs(dW - x2.T @ dy2).max(),
          "db": np.abs(db - dy2.sum(axis=0)).max()}
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-12
_, dW_frozen, _ = linear_backward(dy, cache, need_dw=False)
assert dW_frozen is None
print("need_dw=False: dW is None (the x^T dy matmul was skipped)")

# %% [markdown]
# ## 2. 用有限差分检验反向计算
#
# 和自己写的公式对上了,什么也证明不了:公式本身可能就是错的。独立的裁判是前向计算本身。随机抽取一个与输出形状相同的 $g$,
# 定义标量
#
# $$L(x) = \sum_j f(x)_j\, g_j, \qquad\text{于是}\qquad \frac{\partial L}{\partial x} = J^\top g
# = \texttt{backward}(g).$$
#
# 用中心差分估计每个元素,再比较:
#
# $$\text{numeric}_i = \frac{L(x + h e_i) - L(x - h e_i)}{2h} = \frac{\partial L}{\partial x_i} + O(h^2),
# \qquad \text{error}_i = \frac{|\text{analytic}_i - \text{numeric}_i|}{\max(|\text{analytic}_i|,
# |\text{numeric}_i|,\ 10^{-3})}.$$
#
# $O(h^2)$ 从泰勒展开来:$L(x \pm h e_i) = L \pm h L' + \tfrac{h^2}{2} L'' \pm \tfrac{h^3}{6} L''' + \dots$;
# 相减后偶数次项相互抵消,剩下 $L' + \tfrac{h^2}{6} L'''$。舍入误差则反过来:每个 $L$ 大约带有 $\epsilon |L|$
# 的误差,$\epsilon \approx 10^{-16}$ 是 float64 的单位舍入误差($2^{-53}$),除以 $2h$ 后放大为 $\epsilon/h$。两者在
# $h = (3\epsilon)^{1/3} \approx 10^{-5}$ 附近持平,这正是这里用的步长,此时两者的绝对大小都在 $10^{-11}$–$10^{-10}$
# 左右。除以 $\max(|a|, |n|, 10^{-3})$ 之后,大小为 1 的梯度约为 $10^{-10}$,很小的梯度至多约 $10^{-7}$:
# 正确的反向计算得分在 $10^{-7}$ 以下,通常远低于此;错误的反向计算得分在 $10^{-2}$ 到 2 之间(2 是上限:
# 解析值与数值符号相反)。容差 $10^{-5}$ 就落在两者之间宽阔的空档里。(下限 $10^{-3}$ 防止真实梯度为
# 0 的元素把舍入噪声变成值为 1 的"相对" 误差。)float32 做不到这些:它的单位舍入误差是 $2^{-24} \approx 6\cdot10^{-8}$,
# 单是舍入就有约 $10^{-7}/h = 10^{-2}$,和我们要找的误差一样大。
#
# `check_op(forward, backward, inputs)` 把这些全包了:复制输入,用固定种子的生成器抽取 $g$,检查每个浮点输入的每个元素,
# 最后返回一份报告。

# %%
report = check_op(linear_forward, linear_backward, [x, W, b], names=["x", "W", "b"])
print(report)

# %% [markdown]
# 每一行对应一个输入:检查了的元素数(`checked`)与总数(这里全部检查)、最大相对误差、它出现的位置,以及该处的两个值。
# 三个输入都吻合到约十位有效数字。

# %%
assert report.ok and report.max_error < 1e-7, report
print(f"linear: worst error {report.max_error:.1e} < 1e-7")

# %% [markdown]
# ## 3. 层归一化(LayerNorm)
#
# 对每一行 $x \in \mathbb R^C$(GPT-2 对每个 token 的 $C$ 个通道做归一化;有偏方差,$\varepsilon = 10^{-5}$):
#
# $$\mu = \tfrac1C\textstyle\sum_c x_c,\quad \sigma^2 = \tfrac1C\sum_c (x_c-\mu)^2,\quad
# r = (\sigma^2+\varepsilon)^{-1/2},\quad \hat x = (x-\mu)\,r,\quad y = w\odot\hat x + b.$$
#
# 反向计算。$\bar b = \sum \bar y$,$\bar w = \sum \bar y \odot \hat x$(对所有位置求和,与上面的 $W$ 一样);再记
# $\bar{\hat x} = \bar y \odot w$,把 $\mu$ 和 $r$ 也一起求导——关键一行是 $\partial r/\partial x_i = -r^2 \hat x_i / C$,
# 因为 $\partial\sigma^2/\partial x_i = 2(x_i - \mu)/C$;其余推导见 `minift/ops/layernorm.py`:
#
# $$\bar x = r\,\Big(\bar{\hat x} \;-\; \underbrace{\operatorname{mean}(\bar{\hat x})}_{\text{均值项}}
# \;-\; \underbrace{\hat x\,\operatorname{mean}(\bar{\hat x}\odot\hat x)}_{\text{缩放项}}\Big).$$
#
# 减去的两项各有含义。给每个 $x_c$ 加上同一个数,$y$ 不变,
# 所以梯度不可能指向这个方向:$\sum_c \bar x_c = 0$(由均值项保证)。把 $x - \mu$ 拉伸,$\hat x$ 除了经由 $\varepsilon$
# 之外不变,所以 $\sum_c \bar x_c\,\hat x_c$ 几乎为 0;精确地说,它等于
# $r^3\varepsilon\sum_c \bar{\hat x}_c \hat x_c$(由缩放项保证;若 $\varepsilon = 0$ 它就是 0):
# $\sum_c \hat x_c^2 = C\sigma^2 r^2 = C(1 - \varepsilon r^2)$,所以
# $\sum_c \bar x_c \hat x_c = r \sum_c \bar{\hat x}_c \hat x_c\,(1 - \operatorname{mean}(\hat x^2))
# = r^3 \varepsilon \sum_c \bar{\hat x}_c \hat x_c$。

# %%
C = 8
x = rng.standard_normal((B, T, C)) * 2 + 1               # (B, T, C)  每行均值 ≈ 1,离散程度 ≈ 2
w = 1 + 0.5 * rng.standard_normal(C)                     # (C,)  远离初始值 1(原因见第 7 节)
b = 0.5 * rng.standard_normal(C)                         # (C,)  远离初始值 0
y, cache = layernorm_forward(x, w, b)                    # (B, T, C)
dy = rng.standard_normal(y.shape)                        # (B, T, C)
dx, dw, db = layernorm_backward(dy, cache)
xhat, r, _ = cache                                       # (B, T, C), (B, T, 1):前向计算保存的东西
print("y[0, 0]    =", y[0, 0])
print(f"x̂ row means:        largest |mean| = {np.abs(xhat.mean(-1)).max():.1e}")
print("row variances σ²:   ", " ".join(f"{v:8.2f}" for v in x.var(-1).ravel()))
print("1 − x̂ row variances:", " ".join(f"{v:.2e}" for v in (1 - xhat.var(-1)).ravel()))

# %% [markdown]
# **检验。** 先看前向计算:$\hat x$ 的行均值为 0,行方差为 $\sigma^2 r^2 = 1 - \varepsilon r^2$,对这几行的 $\sigma^2$
# 来说,比 1 小百万分之几(两者都已打印在上面)。然后是 $\bar x$ 的两个不变量,以及有限差分检验。

# %%
eps = 1e-5
assert np.abs(xhat.mean(-1)).max() < 1e-15 and np.abs(xhat.var(-1) - (1 - eps * r[..., 0] ** 2)).max() < 1e-14
row_sum = dx.sum(-1)                                     # (B, T) 应为 0
dot = (dx * xhat).sum(-1)                                # (B, T) 应为 r³ ε Σ (dy ⊙ w) ⊙ x̂
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
# GPT-2 的激活函数,是 $x\,\Phi(x)$ 的 tanh 近似:
#
# $$u = k\,(x + a x^3),\quad k = \sqrt{2/\pi},\ a = 0.044715, \qquad y = \tfrac12\, x\,(1 + \tanh u).$$
#
# ($k$ 让 $\tanh u$ 在 0 处的斜率等于 $2\Phi(x) - 1$ 在 0 处的斜率 $2\varphi(0) = \sqrt{2/\pi}$;$a$ 是 GELU
# 论文作者数值拟合出来的——若改为匹配 $x^3$ 的泰勒项,会得到 $a = 2/(3\pi) - 1/6 \approx 0.0455$。)
#
# 记 $t = \tanh u$(前向计算已缓存),并用 $\tanh' = 1 - t^2$:
#
# $$\frac{dy}{dx} = \tfrac12\,(1 + t) + \tfrac12\, x\,(1 - t^2)\, k\,(1 + 3a x^2), \qquad \bar x = \bar y \odot
# \frac{dy}{dx}.$$
#
# GELU 是逐元素计算的,所以它的雅可比矩阵是对角矩阵,$J^\top \mathbf 1$ *就是*那条对角线:在这里,也只有对逐元素算子,全
# 1 的上游梯度给出的恰好是每一点上的普通导数 $dy/dx$。

# %%
grid = np.linspace(-4, 4, 801)                           # (801,)
g_y, g_cache = gelu_forward(grid)                        # (801,)
g_slope = gelu_backward(np.ones_like(grid), g_cache)     # (801,) dy/dx,因为雅可比矩阵是对角的
exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in grid])   # x Φ(x),用于对比
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
# **检验。** 近似值与精确的 $x\Phi(x)$ 处处相差不到 $5\cdot10^{-4}$(它本来就是近似,这个差距在意料之中,PyTorch 的
# `gelu(approximate="tanh")` 也一样)。在 0 处,公式给出 $dy/dx = \tfrac12$。$x$ 低于约 $-0.75$ 时导数为负:GELU 先下探到
# 0 以下,再回升(练习 3 会找出最小值)。然后是梯度检验,输入铺在曲线弯曲的那一段上。

# %%
assert gap.max() < 5e-4 and abs(g_slope[400] - 0.5) < 1e-15 and g_slope.min() < 0
report = check_op(gelu_forward, gelu_backward, [rng.standard_normal((B, T, C)) * 2], names=["x"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 5. softmax 交叉熵:损失函数
#
# 语言模型在一个位置上的损失,logits 为 $z \in \mathbb R^V$,真实的下一个 token 为 $y$:
#
# $$\ell = -\log p_y = \log\sum_v e^{z_v} - z_y, \qquad p = \operatorname{softmax}(z), \qquad
# L = \frac1{N_\text{valid}}\sum_{n\ \text{valid}} \ell_n .$$
#
# 目标为 `-100` 的位置(填充、提示词的 token)不计入均值。反向计算就是那个著名的一行式:对 $\log\sum e^{z}$ 求导得到 $p$,对
# $-z_y$ 求导在 $y$ 处得到 $-1$,所以
#
# $$\bar z_n = \bar L\;\frac{p_n - \operatorname{onehot}(y_n)}{N_\text{valid}}
# \quad\text{(有效行)},\qquad \bar z_n = 0 \quad\text{(被忽略的行)}.$$
#
# $\bar z$ 的每一行之和都为 0(概率之和为 1,one-hot 之和也为 1):目标 token 的 logit 被往上推多少,其余所有 logits
# 加起来就被往下压多少。

# %%
N, V = 6, 10                                             # 位置数、词表大小
logits = rng.standard_normal((N, V)) * 2                 # (N, V)
targets = rng.integers(0, V, size=N)                     # (N,)
targets[2] = -100                                        # 位置 2 不计损失(例如填充)
loss, ce_cache = cross_entropy_forward(logits, targets)
dlogits = cross_entropy_backward(np.asarray(1.0), ce_cache)   # (N, V),dL/dL = 1
print(f"loss = {float(loss):.4f} over {int((targets != -100).sum())} valid positions")
print("dlogits row sums:", dlogits.sum(-1))
print("dlogits row 2 (ignored):", dlogits[2])

# %% [markdown]
# **检验。** (a) 在 5 个有效行上,$\bar z$ 等于 $(p - \text{onehot})/5$,$p$ 用 minift 的 `softmax` 计算;(b) 每行之和为 0,
# 被忽略的那一行严格为 0;(c) logits 全为 0 时,模型在 $V$ 个 token 上均匀分布,损失恰好是 $\log V = \log 10 = 2.3026$——
# 未经训练的语言模型就从这附近起步(教程 04);(d) 有限差分检验,上游梯度 $\bar L$ 取一个随机标量。

# %%
valid = targets != -100
expected = softmax(logits)
expected[np.arange(N), np.where(valid, targets, 0)] -= 1
expected = expected * valid[:, None] / valid.sum()       # (N, V) 按公式计算,用于对比
print(f"(a) max |dlogits − (p − onehot)/N_valid| = {np.abs(dlogits - expected).max():.1e}")
assert np.abs(dlogits - expected).max() < 1e-15
assert np.abs(dlogits.sum(-1)).max() < 1e-15 and not dlogits[2].any()
uniform_loss, _ = cross_entropy_forward(np.zeros((N, V)), np.where(valid, targets, 0))
print(f"(c) loss of all-zero logits = {float(uniform_loss):.6f}, log V = {math.log(V):.6f}")
assert abs(float(uniform_loss) - math.log(V)) < 1e-12
report = check_op(cross_entropy_forward, cross_entropy_backward, [logits, targets], names=["logits"])
print(report)        # targets 是整数:没有梯度,所以只检查 logits
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 6. 因果自注意力
#
# GPT-2 的注意力接收合并投影 `qkv` $= [q\,|\,k\,|\,v]$(宽度 $3C$),把它拆成 $H$ 个头,每个头的维度为 $D = C/H$,
# 然后对每个头:
#
# $$S = \frac{q k^\top}{\sqrt D}, \qquad S_{ts} = -\infty \ \ (s > t,\ \text{因果掩码}), \qquad
# A = \operatorname{softmax}_s(S), \qquad y = A v .$$
#
# 反向计算把同样的步骤倒过来走一遍,每一步都引用它所求导的那一行(`minift/ops/attention.py`):
#
# $$\bar A = \bar y\, v^\top,\quad \bar v = A^\top \bar y,\qquad
# \bar S = A \odot \big(\bar A - \textstyle\sum_s \bar A \odot A\big),\qquad
# \bar q = \bar S\, k/\sqrt D,\quad \bar k = \bar S^\top q/\sqrt D .$$
#
# 中间那一项是 softmax 的反向计算 $\bar S_s = A_s(\bar A_s - \sum_{s'} \bar A_{s'} A_{s'})$,由
# $\partial A_{s'}/\partial S_s = A_{s'}(\delta_{ss'} - A_s)$ 得到(推导见 `minift/ops/softmax.py`);
# 最后两项是把第 1 节线性层的规则用在 $S = q\,(k^\top/\sqrt D)$ 上,每个因子各用一次。掩码本身不需要反向计算:被掩码的元素
# $A = 0$,那里的 $\bar S$ 本来就是 0。

# %%
B, T, C, H = 2, 5, 8, 2                                  # 批量、时间、通道、头数(每个头的维度 D = 4)
qkv = rng.standard_normal((B, T, 3 * C))                 # (B, T, 3C) 相当于 c_attn 的输出
att_y, att_cache = attention_forward(qkv, H)             # (B, T, C)
A = attention_probabilities(att_cache)                   # (B, H, T, T) 注意力权重,取自缓存
print("attention weights of batch 0, head 0 (row t = query, column s = key):")
print(A[0, 0])

# %% [markdown]
# **检验。** (a) $A$ 的每一行之和为 1,对角线以上严格为 0。(b) 前向的因果性:只改变时刻 3 的输入,输出 0–2 逐位不变。
# (c) 反向的因果性:只到达输出 2 的梯度,会传到输入 0–2,之后的一个也传不到。(d) 先单独检验 softmax 的反向计算,
# 再检验整个注意力的反向计算,都对照有限差分。

# %%
assert np.abs(A.sum(-1) - 1).max() < 1e-12 and not np.triu(A, k=1).any()
qkv2 = qkv.copy()
qkv2[:, 3] += 1.0                                        # 只改变时刻 3
y2, _ = attention_forward(qkv2, H)
moved = np.abs(y2 - att_y).max(axis=(0, 2))              # (T,) 每个时刻的最大变化
print("(b) largest output change per time step:", moved)
assert not moved[:3].any() and moved[3:].all()
dy_one = np.zeros_like(att_y)
dy_one[:, 2] = rng.standard_normal((B, C))               # 上游梯度只在时刻 2 上
dqkv_one = attention_backward(dy_one, att_cache)         # (B, T, 3C)
reach = np.abs(dqkv_one).max(axis=(0, 2))                # (T,)
print("(c) gradient reaching each input time step:", reach)
assert reach[:3].all() and not reach[3:].any()
print(check_op(softmax_forward, softmax_backward, [rng.standard_normal((B, T, T))], names=["scores"]).assert_ok())
report = check_op(attention_forward, attention_backward, [qkv, H], names=["qkv"])
print(report)        # n_head 是整数:不求导
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# ## 7. 为什么上游梯度必须是随机的
#
# `check_op` 随机抽取上游梯度 $g$。一个诱人的捷径是取 $g = \mathbf 1$,也就是检验 $L = \sum_j f(x)_j$。
# 下面这个错误就能从这条捷径溜过去。LayerNorm 的反向计算里有一个看似合理的失误:把 $r = (\sigma^2 + \varepsilon)^{-1/2}$
# 当成常数——保留均值项,忘了缩放项:
#
# $$\bar x_\text{broken} = r\,\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x})\big)
# \qquad\text{而不是}\qquad r\,\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x}) - \hat x\,
# \operatorname{mean}(\bar{\hat x}\odot\hat x)\big).$$
#
# 下面把它写了出来——这是本教程里唯一一处重新实现 minift 的算子,而且是故意写错的——并在 LayerNorm 开始训练时的状态(增益
# $w = 1$、偏置 $b = 0$)下,分别用两种 $g$ 检验。

# %%
def layernorm_backward_broken(dy, cache):
    """WRONG on purpose: subtracts the mean term only, as if rstd did not depend on x."""
    xhat, rstd, w = cache
    dxhat = dy * w                                                # (..., C)
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))      # (..., C)  缺了缩放项
    _, dw, db = layernorm_backward(dy, cache)                     # dw、db 是对的;只有 dx 错了
    return dx, dw, db


x = rng.standard_normal((B, T, C))
w_init, b_init = np.ones(C), np.zeros(C)                          # LayerNorm 的初始参数
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
# **检验。** 错误的反向计算在 $g = \mathbf 1$ 时*通过*,在随机 $g$ 时失败;minift 的实现两种都通过。
#
# 全 1 的检验为什么看不出来:每一行都有 $\sum_c \hat x_c = 0$,所以当 $w = \mathbf 1$ 时,对 $N = B\cdot T$ 行求和,
# 被检验的标量是 $L = \sum_n \sum_c y_{nc} = \sum_n \sum_c \hat x_{nc} + N \sum_c b_c = N \sum_c b_c$——它与 $x$
# 完全无关。真正的 $\bar x$ 是 0,检验只能确认"$\bar x = 0$",而错误的公式返回的也是 0:当 $\bar{\hat x} = \mathbf 1$
# 时,$\bar{\hat x} - \operatorname{mean}(\bar{\hat x}) = 0$。漏掉的那一项
# $\hat x\operatorname{mean}(\bar{\hat x}\odot\hat x) = \hat x\operatorname{mean}(\hat x)$ 在这里也是 0。随机的 $g$ 让
# $L$ 依赖于 $x$(沿 LayerNorm 没有消去的每个方向:把一行整体平移,以及在 $\varepsilon$ 的精度内把它缩放,仍然什么都不改变),
# 误差随即跳到 1 的量级。
#
# 由此得出两条规则,minift 的测试都遵守(`tests/test_gradcheck.py` 以及 `tests/ops/` 中的每个测试):上游梯度用随机的,绝不用
# `ones_like`;检验前把参数挪离中性值(1 和 0)。单是随机的 $g$,或者单是一个离开 1 的增益 $w$,都能抓住这个 bug(只挪动 $b$
# 则不行:$b$ 从不影响 $\bar x$)——最后一行展示的是全 1 的 $g$ 配上随机的增益 $w$:

# %%
assert results["broken (no scale term)", "all-ones g"].ok            # 盲区确实存在
assert not results["broken (no scale term)", "random g"].ok          # 而随机的 g 能看出来
assert all(results["minift's layernorm_backward", g].ok for g in ("all-ones g", "random g"))
rep = check_op(layernorm_forward, layernorm_backward_broken, [x, w, b_init], names=["x", "w", "b"], dout=ones)
print(f"broken, all-ones g, random w: error on x {rep['x'].max_error:.1e} -> {'ok' if rep.ok else 'FAIL'}")
assert not rep.ok

# %% [markdown]
# ## 要点回顾
#
# | 算子 | 反向计算,一行写完 | 检验的不变量 |
# |---|---|---|
# | 线性层 $y = xW+b$ | $\bar x = \bar y W^\top,\ \bar W = x^\top\bar y,\ \bar b = \sum\bar y$ | 冻结 $W$:无 $\bar W$ |
# | LayerNorm | $\bar x = r(\bar{\hat x} - \text{mean} - \hat x\text{mean}(\bar{\hat x}\hat x))$ | $\sum_c\bar x = 0$ |
# | GELU | $\bar x = \bar y\odot\tfrac12(1 + t + x(1-t^2)k(1+3ax^2))$ | $\text{GELU}'(0) = \tfrac12$ |
# | 交叉熵 | $\bar z = (p - \text{onehot})/N_\text{valid}$ | 均匀的 logits:$L = \log V$ |
# | 注意力 | 倒着走一遍:拆分、$qk^\top/\sqrt D$、掩码、softmax、$Av$ | 前向、反向都满足因果性 |
#
# 每一个都通过了 float64、随机上游梯度的有限差分检验:误差低于 $10^{-7}$(每份报告都打印了自己的误差),容差为 $10^{-5}$。
# 教程 03 把它们串成完整的 GPT,并用同样的方法检验模型的反向传播。
#
# ## 练习
#
# 在 `my_...` 函数里写出你的答案(替换 `raise NotImplementedError`),然后运行它后面的单元格。在你写好之前,
# 那个单元格检验的是参考答案;参考答案在 Jupyter 里是隐藏(折叠)的,请先自己试试。
#
# **练习 1——RMSNorm。** LLaMA(原文 §4.2 那篇 MIT 论文研究的模型系列之一)用 RMSNorm 代替 LayerNorm:没有均值,
# 没有偏置,$y = w \odot x\,r$,$r = (\operatorname{mean}(x^2) + \varepsilon)^{-1/2}$。前向计算已经给出;写出它的反向计算,
# 返回 `(dx, dw)`。提示:把第 3 节去掉 $\mu$ 再推一遍。

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


exercise("Exercise 1 (RMSNorm backward)", check_rmsnorm, my_rmsnorm_backward, solution_rmsnorm_backward)

# %% [markdown]
# **练习 2——亲手骗过全 1 检验。** 写一个*错误的* softmax 反向计算(用第 6 节的算子对:`softmax_forward`,缓存就是 $p$),
# 让它在全 1 的上游梯度下通过梯度检验,在随机的上游梯度下失败。提示:当 $\bar p = \mathbf 1$ 时,真正的 $\bar x$ 是什么?

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


exercise("Exercise 2 (a bug only a random g finds)", check_wrong_softmax, my_wrong_softmax_backward,
         solution_wrong_softmax_backward)

# %% [markdown]
# **练习 3——GELU 的最低点。** GELU 的最小值在导数为 0 的地方。只用 `gelu_forward` 和 `gelu_backward`(第 4 节:全
# 1 的上游梯度给出 $dy/dx$),把这个 $x$ 求到误差 $10^{-9}$ 以内,例如在 −2 和 −0.1 之间二分查找。

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
    assert abs(slope) < 4e-10 and ys[1] < ys[0] and ys[1] < ys[2]      # GELU''(x*) ≈ 0.43:|x − x*| < 1e-9


exercise("Exercise 3 (GELU's minimum)", check_gelu_minimum, my_gelu_minimum, solution_gelu_minimum)
