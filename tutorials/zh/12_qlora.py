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
# # 12 · QLoRA:4 位 NormalFloat 基座上的 LoRA,以及"内存减少 80%"何时成立
#
# **你将看到什么。** 从正态分布的分位数算出 NF4 的 16 个取值,与 QLoRA 论文给出的表一致。
# 把随附基座模型的一个权重矩阵存成每个权重 4.5 位(原本是 32 位),再用一张直方图说明为什么 NF4 的量化误差比 int4、FP4 小。
# QLoRA 的线性层与 LoRA 在反量化权重上给出完全相同的输出和梯度,而且从不计算冻结基座的梯度 $\bar W$。
# 在情感分析任务上并排微调 LoRA 和 QLoRA:准确率、每步时间(QLoRA 更慢,你会看到慢在哪里)和一步训练的内存,
# 逐项与完全微调对照实测。最后从 demo 模型一直推算到 GPT-3 的规模:"内存减少约 80%"在什么条件下成立。
#
# **原文:** §4.2 MIT论文中的实证研究分析 与 §5.1 资源消耗与时间效率:
#
# > 具体来说,LoRA的训练时间比完全微调减少了约70%,内存占用减少了约80%。(§4.2)
# >
# > 在相同的文本分类任务中,LoRA的训练时间仅为完全微调的30%,内存占用仅为20%。(§5.1)
#
# 原文通篇没有提到量化。教程 09 已经说明普通 LoRA 为什么很难省下 80% 的内存:冻结的基座仍以全精度存放,
# 而激活值两种方法一样多。业界真正靠的是 QLoRA(Dettmers et al. 2023,arXiv 2305.14314):把冻结的基座存成 4 位,在上面训练
# LoRA。
#
# **你将学到**
#
# 1. 由 $\mathcal N(0, 1)$ 的分位数构造 NF4,并与 int4、FP4 对比;
# 2. 分块 absmax 量化、打包、双重量化:每个权重 4.5 位和 $\approx 4.127$ 位是怎么来的;
# 3. QLoRA 的线性层 $y = x\,\mathrm{deq}(W) + b + s\,xA^\top B^\top$ 及其反向计算;
# 4. QLoRA 在准确率和时间上付出多少、在内存上省下多少;
# 5. 在任意规模下判断"内存减少 80%"何时成立。
#
# **用时:** 阅读约 30 分钟。正常模式运行约 1 分钟(两次 600 步的微调,外加若干计时步骤;机器空闲时实测 60–68 秒,
# 与其他任务共用时 73–106 秒),快速模式(`MINIFT_FAST=1`,冒烟测试)约 7 秒(实测 7–10 秒);`OPENBLAS_NUM_THREADS=1`,2 核
# CPU。
#
# **前置:** [核心 03](../core/zh/03_lora_from_scratch.py)(LoRA 的前向与反向计算)和
# [教程 09](09_time_and_memory.py)(进阶;训练内存的四项)。英文原版:[12_qlora.py](../12_qlora.py)。

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
rng = np.random.default_rng(0)            # 唯一的带种子生成器:下面每个数字每次运行都相同
base, tok = load_base()                   # 随附的预训练 demo 模型及其分词器
KiB, MiB = 2 ** 10, 2 ** 20
print(base.cfg)

# %% [markdown]
# ## 1. 从分位数构造 NF4
#
# 4 位编码就是一张 16 个数的表,取值都在 $[-1, 1]$ 内:权重先除以所在块的最大绝对值,再存成表中最近一项的下标(0–15)。int4
# 的取值等距分布,FP4 按 2 的幂分布。NF4(*NormalFloat*,QLoRA §3)要回答的是:如果权重服从正态分布,选哪
# 16 个值才能让每个值被用到的次数一样多?答案是 $\mathcal N(0, 1)$ 的分位数。记 $Q$ 为它的分位数函数($Q(p)$:有比例 $p$
# 的样本落在它以下),
#
# $$v^+_i = Q(p_i),\ \ p_i\text{:从 } \delta \text{ 等距降到 } \tfrac12 \text{ 的 9 个概率};\qquad
#   v^-_j = -Q(p'_j),\ \ p'_j\text{:同样的 8 个概率};\qquad \text{最后全部除以 } Q(\delta).$$
#
# 为什么要分成两半?16 个对称的分位数里没有 0,而 0 必须能被精确还原(值为零的权重、补零的块)。所以两半都以
# $Q(\tfrac12) = 0$ 结尾,再去掉其中一个 0:正值 8 个、负值 7 个、一个 0。$Q(1) = \infty$,因此最外侧的概率取
# $\delta = 0.9677083$(bitsandbytes 的常数;精确到 7 位时,它等于 $1 - \tfrac1{32}$ 与 $1 - \tfrac1{30}$ 的平均)。最后除以
# $Q(\delta)$,两端恰好落在 $\pm 1$。

# %%
Q = NormalDist().inv_cdf                                 # N(0, 1) 的分位数函数
delta = 0.9677083                                        # δ:最外侧的概率(bitsandbytes 的常数)
p_pos = np.linspace(delta, 0.5, 9)                       # (9,) δ ... ½
p_neg = np.linspace(delta, 0.5, 8)                       # (8,) δ ... ½
v_pos = np.array([Q(p) for p in p_pos])                  # (9,) Q(δ) ... Q(½) = 0
v_neg = -np.array([Q(p) for p in p_neg])                 # (8,) −Q(δ) ... 0
nf4 = np.sort(np.concatenate([v_pos[:-1], [0.0], v_neg[:-1]])) / Q(delta)   # (16,) 两个 0 合成一个
print("positive half, p:", p_pos, "\n              Q(p):", v_pos)
print("negative half, p:", p_neg, "\n             -Q(p):", v_neg)
print(f"Q(δ) = {Q(delta):.4f}; δ = {delta} and ½[(1 − 1/32) + (1 − 1/30)] = {0.5 * (2 - 1 / 32 - 1 / 30):.7f}")
print("NF4:", nf4)

# %% [markdown]
# **检验。** 我们算出的值与 `quant.nf4_values()` 一致(差值在 $10^{-12}$ 以内),与论文附录 E 的表(float32)一致(差值在
# $10^{-6}$ 以内):正值 8 个、负值 7 个、一个精确的 0,两端为 $\pm1$。然后把三种编码排好序列出来,附上相邻取值的间距。

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
    v = quant.code_values(code).astype(np.float64)       # (16,) 按 4 位编码排列
    return np.unique(v[np.abs(v) <= 1])                  # int4 的 −8/7 永远不会被选中;FP4 的 −0 就是 0


for code in quant.CODES:
    lv = levels(code)
    gaps = np.diff(lv)
    print(f"{code:<5} {len(lv)} levels, gaps {gaps.min():.3f} (smallest) to {gaps.max():.3f} (largest): "
          + " ".join(f"{a:+.3f}" for a in lv))

# %% [markdown]
# 看上面打印的间距:int4 的取值等距,间隔 $1/7$。NF4 和 FP4 都是 0 附近密、往 $\pm1$ 方向疏:FP4 每过一个
# 2 的幂就把步长翻倍,NF4 则顺着正态曲线走。哪种最好,要看权重实际落在哪里——第 2 节来看。
#
# ## 2. 把一个真实矩阵存成 4 位
#
# 取随附基座模型的 `h.0.mlp.c_fc.weight` [128, 512],共 65,536 个权重,每 $K = 64$ 个分成一块。对第 $b$ 块,
#
# $$c_b = \max_k |x_{bk}|,\qquad q_{bk} = \arg\min_j \Bigl|\frac{x_{bk}}{c_b} - v_j\Bigr|,\qquad
#   \tilde x_{bk} = v_{q_{bk}}\,c_b .$$
#
# $c_b$ 是该块的 *absmax*(绝对值最大值),存成一个 float32;每个 $q_{bk}$ 占 4 位,
# 两个拼成一个字节(每对中的第一个放在高半字节,与 bitsandbytes 的打包方式相同):每个权重 $4 + 32/64 = 4.5$ 位。
# *双重量化*(QLoRA §3)把这些 absmax 也量化:减去均值后量化成 8 位,每 256 个共用一个 float32
# 缩放因子:$4 + 8/64 + 32/(64\cdot256) \approx 4.127$ 位。下面每一步都用 NumPy 手写,再与 `quant.quantize` 逐位比对:

# %%
name = "h.0.mlp.c_fc.weight"
W = base.params[name]                                    # (128, 512) float32,GPT-2 的 [in, out]
K = quant.BLOCK                                          # 每块 64 个权重
v = quant.code_values("nf4")                             # (16,) float32,下标即 4 位编码
x = W.reshape(-1, K)                                     # (NB, K)  NB = 1,024 块
c = np.abs(x).max(axis=1)                                # (NB,)  每块的 absmax
xhat = x / c[:, None]                                    # (NB, K)  落在 [−1, 1] 内
q = np.abs(xhat[..., None] - v).argmin(axis=-1).astype(np.uint8)   # (NB, K)  最近取值的编码
packed = (q[:, 0::2] << 4) | q[:, 1::2]                  # (NB, K/2)  每字节两个编码
W_tilde = (v[q] * c[:, None]).reshape(W.shape)           # (128, 512)  反量化:v[q] · c
Qw = quant.quantize(W, "nf4")                            # 库里的实现
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
# **检验。** 不用双重量化时恰好 4.5 位;用了之后,是论文的算式再加上这个张量 absmax 的均值(32 位,论文没有计入)。另外,
# 每个权重的误差不超过 $x/c$ 两侧相邻取值间距的一半,再乘以 $c$。

# %%
N, NB = W.size, W.size // K                                            # 权重数、块数
ND = -(-NB // 256)                                                     # ⌈NB / 256⌉ 组缩放因子
assert quant.stored_bits_per_parameter(Qw) == 4.5
assert quant.stored_bits_per_parameter(Qdq) == 4 + 8 / 64 + 32 * (ND + 1) / N      # 加上 ND 个缩放因子和均值
err = np.abs(W_tilde - W).reshape(-1, K)                               # (NB, K)
lv = levels("nf4")
half_gap = np.diff(lv)[np.clip(np.searchsorted(lv, xhat) - 1, 0, 14)] / 2   # (NB, K)  x/c 所在的那个间距
assert (err <= half_gap * c[:, None] * (1 + 1e-5)).all()
print(f"largest error {err.max():.2e}; largest allowed by the bound {(half_gap * c[:, None]).max():.2e}")

# %% [markdown]
# 接下来在这个矩阵上比较三种编码(`minift.measure.quant_error`):$\lVert W - \tilde W\rVert_F / \lVert W\rVert_F$,
# 即舍入噪声占整个矩阵的比例;以及平均 $|W - \tilde W|$ 与 $W$ 的标准差之比。前者也在从 $\mathcal N(0, 1)$
# 抽样的块上算一遍;最后看把全部 16 个线性层都量化之后,基座在留出文本上的语言模型损失变化多少。

# %%
heldout, heldout_what = heldout_for_base(shipped_base_dir(), tok, n_chars=40_000)
effect = loss_effect(base, heldout, double_quant=False, max_windows=32, text=heldout_what)
fit = code_fit(base.params, name)                        # 下面的直方图,以及各编码取值的使用情况
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
# NF4 的误差最小:两种度量都是,在高斯块上也是(已断言)。对损失的影响,三者都很小,彼此的差别与标准误同一量级(见上面的输出):
# 这么短的文本只能粗略排个序。下图说明 NF4 为什么合适:灰色直方图是该矩阵的 $x/c$($\pm1$ 处的尖峰就是各块的 absmax 本身),
# 竖线是各编码的取值,线上的数字是舍入到该取值的权重占比。int4 把更多取值花在稀疏的尾部;NF4 落在权重中间
# 90% 范围内的取值更多,16 个取值用得也最均匀(熵最接近 4 位)。黑色曲线是高斯块的分布,几乎与直方图重合:这些权重正如 NF4
# 假设的那样接近正态分布。

# %%
with matplotlib.rc_context(STYLE):
    fig = quant_levels(plt, {"code_fit": fit})           # minift.app.figures:直方图和各编码的取值
show(fig, "12_quant_levels")

# %% [markdown]
# ## 3. QLoRA 的线性层:在 $\mathrm{deq}(W)$ 上做 LoRA,没有 $\bar W$
#
# QLoRA 只以 `Quantized`(编码和缩放因子)的形式保存每个被适配的 $W$,用到时再反量化(QLoRA 式 (5);`minift/lora/qlora.py`):
#
# $$\text{前向:}\ \tilde W = \mathrm{deq}(W),\quad y = x\tilde W + b + s\,(xA^\top)B^\top;\qquad
#   \text{反向:}\ \tilde W = \mathrm{deq}(W)\ \text{(再算一次)},\quad \bar x = \bar y\,\tilde W^\top + s\,\bar y BA .$$
#
# $\bar A$ 和 $\bar B$ 与 LoRA 的完全相同(核心 03)。$\bar W = x^\top \bar y$ 从不计算:$W$ 是冻结的,而且 4 位的 $W$
# 也没有浮点数可以把梯度加上去。为什么要反量化两次?如果把 $\tilde W$ 从前向一直留到反向,
# 每个被适配的矩阵都要多存一份浮点副本——这恰恰是 QLoRA 要省掉的内存。代价是时间(第 4 节)。
#
# **检验。** `qlora_forward` / `qlora_backward` 与在 $\mathrm{deq}(W)$ 上调用 `lora_forward` / `lora_backward`
# 的结果逐位相同,两者的 $\bar W$ 都是 `None`;QLoRA 为反向计算保留的东西里,没有和 $W$ 一样大的数组。(float64
# 的有限差分梯度检验见 `tests/lora/test_qlora.py`。)

# %%
I, O, R, s = W.shape[0], W.shape[1], 8, 2.0
x_in = rng.standard_normal((64, I)).astype(np.float32)            # (N, I)  64 个 token 位置
b = base.params["h.0.mlp.c_fc.bias"]                              # (O,)
A = (rng.standard_normal((R, I)) * 0.1).astype(np.float32)        # (R, I)
B = (rng.standard_normal((O, R)) * 0.1).astype(np.float32)        # (O, R)  B ≠ 0:避开中性点
y_q, cache_q = qlora_forward(x_in, Qw, b, A, B, s)                # (N, O)
y_l, cache_l = lora_forward(x_in, quant.dequantize(Qw), b, A, B, s)
dy = rng.standard_normal(y_q.shape).astype(np.float32)            # (N, O)  随机的上游梯度
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
# ## 4. 在情感分析任务上对比 QLoRA 与 LoRA
#
# 把核心 03 的 LoRA 微调跑两遍(秩 8,$\alpha = 16$,所有线性层;种子、步数、批次和学习率都相同),一遍用 float32 基座,一遍用
# NF4 基座(`method="qlora"` 会设置 `LoRAConfig(quant="nf4")`)。QLoRA 的适配器是在 $\mathrm{deq}(W)$ 之上学习的,
# 所以还能顺带弥补一部分舍入误差。

# %%
lcfg = LoRAConfig(r=8, alpha=16, targets="all-linear")
runs, tuned = {}, {}
for method in ("lora", "qlora"):
    # workers=1:整个批次在一个线程里算,打印出的数字在任何机器上都相同
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
# 看上面打印的准确率:正常模式下,两者都从随机猜测的水平升到远高于它,最终只差几个百分点;在这个任务上换一个种子,
# 准确率就会变动好几个百分点(`finetune.py` 里记录了三个种子的结果),所以这么大的差距说明不了什么。检验的内容是:QLoRA 和
# LoRA 一样学会了任务。

# %%
if not FAST:
    for run in runs.values():
        assert run["val_accuracy"] >= 0.8 and run["test_accuracy"] >= 0.7, run
    assert abs(runs["qlora"]["val_accuracy"] - runs["lora"]["val_accuracy"]) <= 0.1

# %% [markdown]
# **时间。** "ms/step over the run" 混杂了不同长度的批次,还会随机器负载波动。更干净的做法是:在同一个批次上先后调用 LoRA
# 和 QLoRA 的 `loss_and_grads`,重复多次,取中位数——既取各自的中位数,也取每一对之差的中位数(同一对经历的负载相同)。
# 再数一数 QLoRA 唯一多做的事:调用 `dispatch.dequantize`,在外面包一层计时器。

# %%
train_split = load_task_splits("sentiment")[0]
batch = task_source(train_split, tok, max_len=128, batch_size=16, seed=0).next_batch()   # finetune 的第一个批次


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


in_dequantize = []                                                   # QLoRA 每一步花在反量化上的毫秒数


def qlora_step():
    with timed_dequantize() as calls:
        tuned["qlora"].loss_and_grads(**batch)
    in_dequantize.append(1e3 * sum(calls))
    return calls


n_adapted = len(tuned["qlora"].adapters)
reps = pick(31, 3)
t = paired_ms({"lora": lambda: tuned["lora"].loss_and_grads(**batch), "qlora": qlora_step}, reps)
extra = np.median(t["qlora"] - t["lora"])                              # 每对之差的中位数
print(f"batch {batch['input_ids'].shape[0]} x {batch['input_ids'].shape[1]} tokens, loss_and_grads, median of {reps}: "
      f"LoRA {np.median(t['lora']):.1f} ms, QLoRA {np.median(t['qlora']):.1f} ms; QLoRA − LoRA in a pair "
      f"{extra:+.1f} ms ({extra / np.median(t['lora']):+.0%})")
deq_ms = np.median(in_dequantize)
n_calls = len(qlora_step())                                          # 再跑一步,数一数调用次数
print(f"QLoRA's step calls dequantize {n_calls} times ({n_adapted} adapted linears x 2: forward and backward), "
      f"{deq_ms:.1f} ms in all (median)")
if FAST:
    print(SMOKE)
assert n_calls == 2 * n_adapted
if not FAST:
    assert extra > 0

# %% [markdown]
# 反量化的开销与 token 数无关,矩阵乘法的开销则随 token 数增长。下面是一个被适配的线性层(还是那个 [128, 512]),前向加反向:

# %%
W_deq = quant.dequantize(Qw)                                       # (I, O) LoRA 用的浮点 W:数值相同
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
# 看上面打印的两组计时。QLoRA 更慢,多出来的时间大约就是反量化的时间(每个被适配的线性层每步两次:
# 打印出的两个数在同一量级)。这是每步固定的开销:16 个 token 时,这一层的矩阵乘法很小,反量化占了大头;到几千个 token 时,
# 它只占一小部分。在 GPU 上,bitsandbytes 用一个 CUDA 内核完成反量化(minift 的 CuPy 路径也是,`minift/fast/dequant.py`):
# 常数更小,但仍然是常数。QLoRA 是拿时间换内存。
#
# **内存。** `measure_memory` 实际跑一步训练(前向、反向、梯度裁剪、AdamW),跟踪每一次 NumPy 内存分配;`predict_memory`
# 则只根据形状算出同样的各项(教程 09)。完全微调用的是基座的一个新副本,加上同样的分类头。

# %%
full = base.to()
full.add_classification_head(train_split.label_names, seed=0)        # 方法 "full":所有权重都参与训练
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
# 逐项看这张表。QLoRA 只缩小了一项:*parameters*(参数)。16 个线性层是 NF4,而嵌入、LayerNorm、偏置、适配器和分类头仍是
# float32。*gradients*(梯度)和 *optimizer*(优化器状态)与 LoRA 相同(训练的是同样的适配器)。*activations*(激活值)
# 是这里最大的一项,三种方法几乎一样(LoRA 多出一个很小的 $xA^\top$):无论哪种方法,反向计算都要经过每一个块。
# 所以在这个规模下,即便是 QLoRA 也离 80% 很远(见上面的输出)。预测与实测相差不到 2%(已断言):
# 第 5 节就凭它推算本机跑不了的规模。
#
# ## 5. "内存减少约 80%"在哪里成立
#
# 按每个权重算,在 float32 和 AdamW 下,完全微调要存权重本身、它的梯度和两个矩:16 字节。LoRA 只存冻结的权重:4 字节。
# 所以即使完全没有激活值,float32 下 LoRA 的节省也止步于 $1 - 4/16 = 75\%$。混合精度(bf16 权重,float32 主权重和矩:
# 完全微调 16 字节,冻结权重 2 字节)把上限提高到 $1 - 2/16 = 87.5\%$;4 位基座(每个冻结权重约半个字节)则提高到
# $1 - 0.52/16 \approx 97\%$。激活值随批量大小 × 序列长度增长,且各方法都一样,会把每一种节省往下拉。
#
# `saving_table` 在一系列批量大小 × 序列长度上预测完全微调、LoRA 和 QLoRA(NF4,双重量化;每个线性层秩 8)的内存;`*`
# 表示节省至少 80%。模型依次是 demo、GPT-2 small 和 GPT-3 175B 的形状,精度分别是 float32(minift 实际运行的精度)和
# bf16-mixed(大模型训练常用的精度;仅为预测)。`minift memory --claim` 打印的是同样的表。

# %%
sizes = {"demo": GPTConfig.preset("demo"), "gpt2": GPTConfig.preset("gpt2"), "gpt3-175b": PAPER_MODELS["gpt3-175b"]}
tables = {}
for precision in ("float32", "bf16-mixed"):
    for size, cfg in sizes.items():
        tables[size, precision] = saving_table(cfg, precision=precision, double_quant=True)
        print(format_saving_table(tables[size, precision], title=size), end="\n\n")

# %% [markdown]
# **检验。** float32 下 LoRA 从未达到 75% 的上限;以及下一段从表中读出的结论。

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
# 看上面打印的表。demo 规模下,只有 QLoRA 在 bf16-mixed、单条 16 个 token 的序列上达到 80%。GPT-2 规模下,QLoRA 在
# float32、单条 128 个 token 的序列上就能达到,LoRA 则不能。GPT-3 的形状下,QLoRA 在两种精度、每步最多 2,048 个 token
# 时都能达到,普通 LoRA 只在 bf16-mixed 下达到。到了 8 × 2,048 个 token,激活值占了上风,哪种方法都达不到。所以"内存减少约
# 80%"描述的是一种情形,而不是 LoRA 本身的性质:模型要大,每步的 token 要少,还要用混合精度或 4 位基座。QLoRA
# 论文还用了梯度检查点(每个块只保留输入,反向时再重算其余部分),进一步压缩激活值;`minift memory --papers` 核对了论文中 65B
# 模型的数字。最后,逐项看 GPT-2 在单条 128 个 token 的序列上的情况:

# %%
gpt2 = sizes["gpt2"]
terms = [predict_memory(gpt2, m, 1, 128, double_quant=True) for m in ("full", "lora", "qlora")]
print("GPT-2, batch 1 x 128, float32, AdamW, r = 8 on every linear (predicted):")
print(format_memory(*terms, labels=("full", "lora", "qlora"), unit="GiB"))
C, L = gpt2.n_embd, gpt2.n_layer
linear_weights = L * (C * 3 * C + C * C + 2 * C * 4 * C)          # c_attn、attn.c_proj、c_fc、mlp.c_proj
embedding = (gpt2.vocab_size + gpt2.n_ctx) * C                    # wte 和 wpe,保持 float32
print(f"GPT-2's quantised linear weights: {linear_weights / 1e6:.1f}M; its embeddings (float32): "
      f"{embedding / 1e6:.1f}M")
assert terms[2]["parameters"] < terms[1]["parameters"] / 2 and terms[2]["activations"] == terms[1]["activations"]
assert terms[2]["gradients"] == terms[1]["gradients"] and terms[2]["optimizer"] == terms[1]["optimizer"]

# %% [markdown]
# 如上所示,缩小的只有 *parameters* 一项:线性层的权重从每个 4 字节变成约半个字节,而数量接近它们一半的嵌入仍是
# float32(QLoRA 只量化被适配的线性层)。
#
# ## 要点回顾
#
# - NF4 的 16 个取值是 $\mathcal N(0, 1)$ 的分位数:两半在一个精确的 0 处拼接,再缩放到 $[-1, 1]$。
# - 分块 absmax 量化:每 64 个权重一块,除以块内最大绝对值,存下最近取值的 4 位下标,两个拼成一个字节:每个权重 4.5 位,
#   双重量化后 $\approx 4.127$ 位。误差不超过半个间距乘以该块的 absmax。
# - 基座的权重接近正态分布,在这样的权重上 NF4 的误差比 int4 和 FP4 都小:它的取值正好落在权重密集的地方。
# - QLoRA 的线性层就是在 $\mathrm{deq}(W)$ 上做 LoRA,逐位相同,没有 $\bar W$。$\tilde W$ 每个线性层每步生成两次,从不保留:
#   省了内存,付出时间(每步的固定开销,token 少时占比大)。
# - QLoRA 只缩小冻结权重这一项。"内存减少约 80%"需要大模型、每步 token 少,再加上混合精度或 4 位基座;float32 下普通 LoRA
#   超不过 75%。
#
# **深入阅读:** `minift compare --methods full,lora,qlora,head`(准确率、遗忘、时间、内存);`minift memory --claim` 与
# `--papers`(第 5 节的表;LoRA 和 QLoRA 论文中的数字);`save_peft` 生成的模型卡(如何在 PEFT 和 bitsandbytes 中使用 QLoRA
# 适配器)。
#
# ## 练习
#
# 在 `my_...` 函数里写出你的答案(替换 `raise NotImplementedError`),然后运行它后面的单元格;在你写好之前,
# 那个单元格检验的是折叠起来的参考答案。
#
# **练习 1——手算 int4 的误差上界。** int4 把 $x/c$ 存成 $k/7$($k = -7..7$)中最近的一个。请返回在 absmax 为 `c` 的块里,
# 一个权重可能出现的最大 $|x - \tilde x|$。检验会量化多种尺度的随机块:任何误差都不能超过你的上界,
# 而观察到的最大误差必须接近它。

# %%
def my_int4_bound(c):
    """The largest |x − x̃| int4 can leave in a block of absmax c (an array of absmaxes)."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_int4_bound(c):
    return c / 14                                      # 相邻取值间距 1/7 的一半,乘以 c


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
# **练习 2——预测字节数。** 不做量化,直接算出 `quant.quantize(W, code, double_quant=dq)` 为一个有 `n` 个权重的 $W$
# 存下多少字节:每块 64 个(最后一块补零),打包后的编码,加上每块一个 float32 absmax;若用双重量化,则是每块一个 int8、每
# 256 块一个 float32 缩放因子(最后一组可能不满)和一个 float32 均值。检验会与真实张量的 `Quantized.nbytes` 比较。

# %%
def my_quantized_bytes(n, double_quant):
    """Bytes of the Quantized of n weights."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_quantized_bytes(n, double_quant):
    blocks = -(-n // 64)                                # ⌈n / 64⌉
    if not double_quant:
        return blocks * (32 + 4)                        # 64 个编码占 32 字节,外加一个 float32 absmax
    return blocks * (32 + 1) + 4 * -(-blocks // 256) + 4   # int8 的 absmax、每 256 个一个 float32、一个均值


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
# **练习 3——k 位的 NormalFloat。** 把第 1 节推广到 $2^k$ 个取值:正半部分取 $2^{k-1} + 1$ 个分位数,负半部分取 $2^{k-1}$
# 个,概率都从 $\delta$ 降到 $\tfrac12$,去掉一个 0,再除以 $Q(\delta)$。检验:$k = 4$ 时得到 NF4;$k$ 从 2 到 6,每个都给出
# $2^k$ 个递增的值,恰有一个精确的 0,其中 $2^{k-1}$ 个为正,两端为 $\pm 1$。

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
