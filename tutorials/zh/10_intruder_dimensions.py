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
# # 10 · MIT 论文真正发现了什么:入侵维度
#
# **原文:** §4.2 MIT论文中的实证研究分析:
#
# > MIT的研究团队选择了多个常见的自然语言处理任务,包括文本分类、命名实体识别和情感分析等。他们使用了多个预训练模型,
# > 如BERT和GPT …
# > 具体来说,LoRA的训练时间比完全微调减少了约70%,内存占用减少了约80%。…
# > 结果显示,LoRA在泛化能力方面表现良好,尤其是在小数据集上。
#
# 这几句话,论文只对得上大致轮廓。所谓"MIT的一篇21页论文",是 Shuttleworth、Andreas、Torralba 和 Sharma 的 *LoRA vs Full
# Fine-tuning: An Illusion of Equivalence*(arXiv 2410.21228,NeurIPS 2025)。它在一组分类任务(MNLI、QQP、SST-2、SIQA、
# Winogrande、FEVER,其中包括情感分析)上微调了 RoBERTa-base(BERT 的一个变体),也微调了 LLaMA 系列模型(GPT 式的解码器);
# 但论文里没有命名实体识别,没有报告训练时间或内存的节省,也没有关于小数据集的结论。它问的是另一个问题:当 LoRA
# 和完全微调达到*相同*的准确率时,两者对模型的改动一样吗?答案是否定的。LoRA 微调后的权重矩阵里有**入侵维度**(intruder
# dimensions)——新出现的、排名靠前的奇异向量,与预训练矩阵的每一个奇异向量都几乎正交——完全微调的则没有;LoRA
# 对预训练分布的遗忘集中在这些维度上,把它们的奇异值缩小($\lambda \approx 0.75$)就能挽回不少遗忘,任务准确率的代价却很小;
# 完全微调的更新有效秩更高;秩更高、采用秩稳定缩放的 LoRA(rsLoRA)更像完全微调;而当任务一个接一个地学(持续学习)时,LoRA
# 的入侵维度会不断累积。
#
# 本教程用 `minift/measure/analysis.py` 把这些测量缩小规模重做一遍,并如实说明在宽度 128 上哪些结论成立、哪些不成立。
#
# **你将学到**
# 1. 论文的算法 1(入侵维度),先在一个由你亲手植入入侵维度的玩具矩阵上演示;
# 2. 噪声底:在宽度 64–768 上,一个*随机*方向的 $\max|\cos|$ 本来就有多小,约为 $\sqrt{2\ln(2d)/d}$;
#    以及为什么小模型必须对照随机基线扫描 $\varepsilon$;
# 3. 在真实的微调结果里统计入侵维度——完全微调、三种秩的 LoRA、rsLoRA——以及 $\Delta W$ 的有效秩;
# 4. 按方法和秩测量遗忘(留出文本上的语言模型损失);
# 5. 论文的缓解办法:把入侵维度的奇异值乘以 $\lambda$,以及它对遗忘和准确率的影响;
# 6. 如实解读:在这个规模上哪些能复现、哪些不能,以及原因;
# 7. 持续学习:四个任务依次训练,每个 LoRA 在下一个任务开始前先合并——入侵维度会累积吗?每种方法还保留了多少早先的任务?
#
# **用时:** 阅读约 50 分钟。正常模式运行 7–10 分钟(五次 500 步的微调,再让五种方法各走四个 200 步的阶段:
# 在与其他任务共用的 2 个 CPU 核上、`OPENBLAS_NUM_THREADS=1`,两次实测为 407 秒和 587 秒,机器空闲时可能更快),
# 快速模式(`MINIFT_FAST=1`)约 30 秒(同一台共享机器上实测 29 秒和 33 秒)。
#
# **前置:** 教程 05(任务与 `finetune`;[中文版](05_finetuning_basics.py))、06(完全微调;[中文版](06_full_finetuning.py))和
# 07(LoRA、它的缩放系数 $s$、rsLoRA;[中文版](07_lora_from_scratch.py))。核心课程
# [核心 05](../core/zh/05_the_claims_measured.py)的第 6 节是本篇的简短版。
# 英文原版:[10_intruder_dimensions.py](../10_intruder_dimensions.py)。

# %%
import dataclasses
import json
import math

import matplotlib.pyplot as plt
import numpy as np

from minift.app.tutorial import FAST, exercise, out_dir, pick, show
from minift import LoRAConfig
from minift.backend import to_numpy
from minift.base import load_base
from minift.data import data_dir
from minift.data.facts import ANSWERS
from minift.generate import generate
from minift.measure.analysis import (
    format_intruders,
    intruder_dimensions,
    intruder_sweep,
    linear_weight_names,
    model_intruders,
    random_baseline,
    scale_intruders,
    singular_values,
    spectrum_compare,
)
from minift.training.evaluate import completion_metrics, lm_loss, split_metrics
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits
from minift.training.pretrain import heldout_world_ids

np.set_printoptions(precision=3, suppress=True, linewidth=110)
print("fast mode: sections 3-7 and exercise 4 train for a few steps only, a smoke run" if FAST else "normal mode")


def smoke():
    """In fast mode, say that the numbers printed next are a smoke run's (sections 1 and 2 do not depend on FAST)."""
    if FAST:
        print("(fast mode: a smoke run; these numbers are not findings)")


def verdict(claim, ok):
    """Print a claim the prose makes about this run and whether it held; at full size it must hold."""
    print(f"  {'holds' if ok else 'does NOT hold'}: {claim}")
    assert ok or FAST, claim             # 快速模式只训练几步:跳过这些说法,不做检验


base, tok = load_base()
K = 10                                                   # 论文取前 k 个奇异向量

# %% [markdown]
# ## 1. 算法 1:什么是入侵维度
#
# 取一个按论文布局存放的预训练矩阵 $W_0 \in \mathbb R^{\text{out}\times\text{in}}$(PyTorch 的 `nn.Linear`,$h = W_0x$),
# 以及它微调后的版本 $W_t = W_0 + \Delta W$——对 LoRA 来说,就是把 $\Delta W = s\,BA$ 并进去之后的矩阵。
# 对两者各做一次瘦 SVD(thin SVD):
#
# $$W_0 = U_0\Sigma_0V_0^\top = \sum_i \sigma^0_i\, u^0_i {v^0_i}^\top, \qquad
#   W_t = U\Sigma V^\top = \sum_j \sigma_j\, u_j v_j^\top \quad(\sigma_1 \ge \sigma_2 \ge \dots).$$
#
# 如果 $W_t$ 的第 $j$ 个奇异向量($j \le k$,即前 $k$ 个之一)与 $W_0$ 的任何奇异向量都不相像,它就是一个**入侵维度**:
#
# $$u_j \text{ 是入侵维度} \iff \max_i\, \lvert\cos(u_j, u^0_i)\rvert = \max_i\, \lvert {u^0_i}^\top u_j\rvert
#   < \varepsilon, \qquad \text{作者的代码取 } k = 10,\ \varepsilon = 0.5,$$
#
# 再对所有被适配的矩阵求和。有三点值得注意:它看的是 $W_0 + \Delta W$,不是 $\Delta W$;这里的 $u$ 是*左*奇异向量,
# 即该层输出空间里的方向;它只问谱的顶端——入侵维度是一个新方向,而这一层现在对它的放大超过了几乎所有旧方向。
#
# minift 按 GPT-2 的方式存放权重,即转置的 $[\text{in}, \text{out}]$($y = xW$),所以在 minift 里,
# 输出空间的方向是*右*奇异向量。`minift/measure/analysis.py` 里的每个函数都接受 `layout="in_out"`(minift 的布局,默认)或
# `"out_in"`(论文的布局),两种布局下比较的都是输出空间。
#
# 先看一个知道答案的玩具例子。$W_0$ 是一个随机的 $64\times 64$ 矩阵,我们用四种方式改动它:(a) 一个秩 1 更新
# $\sigma\,u v^\top$,$\sigma = 1.5\,\sigma^0_1$,方向 $u$ 随机,但已与 $W_0$ 的前 10 个左奇异向量正交——
# 一个植入的入侵维度;(b) 一个很小的稠密扰动,大小为 $\lVert W_0 \rVert_F$ 的 5%;(c) 一个与 (a) 一样大的更新,
# 但沿着一个*旧*方向,$1.5\,\sigma^0_1\, u^0_4 {v^0_4}^\top$;(d) 一个与 (a) 一样大的稠密扰动。

# %%
def planted_update(W0, r, gain, seed):
    """A rank-r update along r random output directions orthogonal to W0's top-10 left singular vectors
    ([out, in] layout), with singular values gain·σ⁰₁·(1, 1.1, 1.2, ...): r planted intruders."""
    g = np.random.default_rng(seed)
    U0, S0, _ = np.linalg.svd(W0)
    X = g.standard_normal((W0.shape[0], r))                                  # (out, r)
    X -= U0[:, :10] @ (U0[:, :10].T @ X)                                     # 去掉前 10 个旧方向
    U, V = np.linalg.qr(X)[0], np.linalg.qr(g.standard_normal((W0.shape[1], r)))[0]   # (out, r), (in, r)
    return gain * S0[0] * (U * (1 + 0.1 * np.arange(r))) @ V.T               # (out, in)


rng = np.random.default_rng(0)
d = 64
W0_toy = rng.standard_normal((d, d)) / math.sqrt(d)                          # (out, in),论文的布局
U0, S0, V0t = np.linalg.svd(W0_toy)
noise = rng.standard_normal((d, d))                                          # (out, in)
updates = {"(a) planted rank-1": planted_update(W0_toy, 1, 1.5, seed=1),
           "(b) dense, 5%": 0.05 * np.linalg.norm(W0_toy) * noise / np.linalg.norm(noise),
           "(c) rank-1, old direction": 1.5 * S0[0] * np.outer(U0[:, 3], V0t[3])}
size_a = np.linalg.norm(updates["(a) planted rank-1"])
updates["(d) dense, as large as (a)"] = size_a * noise / np.linalg.norm(noise)
toy = {name: intruder_dimensions(W0_toy, W0_toy + dW, k=K, eps=0.5, layout="out_in") for name, dW in updates.items()}
print(f"{'update':<28}{'‖ΔW‖/‖W0‖':>10}{'intruders':>10}  at rank j   max|cos| of the top-10 vectors of W_t")
for name, res in toy.items():
    rel = np.linalg.norm(updates[name]) / np.linalg.norm(W0_toy)
    print(f"{name:<28}{rel:>10.3f}{res['count']:>10}  {str(res['indices'].tolist()):<10} {res['max_cos']}")

# %% [markdown]
# 逐行来读。(a) 它最大的奇异向量($j = 0$,从 0 开始数)与每个旧方向的 $\max|\cos|$ 都远低于 $\varepsilon$(该行的第一个数):
# 植入的 $u$ 被找到了。它另外九个顶部向量都是旧方向,只是略有旋转。
# (b) 小的稠密扰动让每个顶部向量都靠近某个旧方向(余弦都在 0.7 以上,但并不都接近 1:随机 $W_0$ 的几个最大奇异值几乎相等,
# 哪怕很小的噪声也会让相邻的方向互相转过去一点——这也是 $\varepsilon$ 不取接近 1 的原因之一)。(c) 与 (a) 一样大,但沿着
# $u^0_4$:它成了最大的方向,$\cos = 1$——光是大不会成为入侵维度,新才会。(d) 与 (a) 一样大的稠密噪声让顶部向量转得多得多,
# 有些转到了 $\varepsilon$ 附近,但没有一个转得像植入的方向那么远。
#
# **检验。** (a) 恰有一个入侵维度,排在第 0 位,它的 $\max|\cos|$ 与植入方向自身的 $\max_i|{u^0_i}^\top u|$ 相差不超过
# 0.1,奇异值与 $1.5\,\sigma^0_1$ 相差不超过 20%;(b) 和 (c) 没有入侵维度,(b) 的余弦都高于 0.7,(c) 的都高于
# 0.99;(d) 最低的 $\max|\cos|$ 高于 (a) 那个入侵维度的。然后,用 NumPy 逐行写出的算法 1 与 `intruder_dimensions` 相差不到
# $10^{-12}$;minift 的布局在转置矩阵上给出逐位相同的答案($W^\top$ 上的 $\texttt{in\_out}$ = $W$ 上的
# $\texttt{out\_in}$)。

# %%
a = toy["(a) planted rank-1"]
dW_a = updates["(a) planted rank-1"]
u_planted = np.linalg.svd(dW_a)[0][:, 0]                                     # (out,) 植入的方向
own = np.abs(U0.T @ u_planted).max()
print(f"(a): planted direction's max|cos| with W0's basis {own:.3f}; found intruder's {a['max_cos'][0]:.3f}; its "
      f"singular value {a['singular_values'][0]:.3f} vs 1.5·σ⁰₁ = {1.5 * S0[0]:.3f}")
assert a["count"] == 1 and a["indices"].tolist() == [0] and abs(a["max_cos"][0] - own) < 0.1
assert abs(a["singular_values"][0] / (1.5 * S0[0]) - 1) < 0.2
assert toy["(b) dense, 5%"]["count"] == 0 and toy["(c) rank-1, old direction"]["count"] == 0
assert toy["(b) dense, 5%"]["max_cos"].min() > 0.7 and toy["(c) rank-1, old direction"]["max_cos"].min() > 0.99
assert toy["(d) dense, as large as (a)"]["max_cos"].min() > a["max_cos"][0]

Wt_a = W0_toy + dW_a
by_hand = np.abs(np.linalg.svd(Wt_a)[0][:, :K].T @ U0).max(axis=1)           # (K,) 逐行写出的算法 1
assert np.abs(by_hand - a["max_cos"]).max() < 1e-12
minift_layout = intruder_dimensions(W0_toy.T, Wt_a.T, k=K, eps=0.5)          # layout="in_out": [in, out]
assert np.array_equal(minift_layout["max_cos"], a["max_cos"]) and minift_layout["count"] == a["count"]
print(f"by hand vs intruder_dimensions: max |difference| {np.abs(by_hand - a['max_cos']).max():.1e}; "
      "layout in_out on Wᵀ == out_in on W: True")

# %% [markdown]
# ## 2. 噪声底:"随机"有多远?
#
# 一个与 $W_0$ 毫无关系的方向,$\max_i|\cos|$ 有多小?设 $x$ 是 $\mathbb R^d$ 中的随机单位向量,$u^0_1..u^0_d$
# 是任意一组标准正交基;由旋转不变性,不妨取坐标轴,于是余弦就是坐标 $x_i \approx g_i/\sqrt d$,其中
# $g_i \sim \mathcal N(0,1)$。由高斯最大值的上界 $\mathbb E\max_{i\le d}|g_i| \le \sqrt{2\ln(2d)}$ 得到
#
# $$\max_i|\cos(x, u^0_i)| \;\approx\; \sqrt{\frac{2\ln(2d)}{d}} \quad(\text{偏高的估计}), \qquad
#   \max_i|x_i| \ge \frac{1}{\sqrt d} \ \text{,因为 } \sum_i x_i^2 = 1 .$$
#
# 如果基*不完整*,只有 $m < d$ 个向量(一个 $\text{out} > \text{in}$ 的 $[\text{out}, \text{in}]$ 矩阵只有 $\text{in}$
# 个左奇异向量),这个水平会降到约 $\sqrt{2\ln(2m)/d}$。`random_baseline(d, basis_dim=m)` 模拟的就是它:1000
# 组随机的标准正交向量组(每组 10 个),取每个向量的最大 $|\cos|$,并统计在每个 $\varepsilon$ 下算法 1 会把
# 10 个中的几个判为入侵维度。

# %%
dims = (64, 128, 256, 768)
rb = {dim: random_baseline(dim, k=K, trials=1000, seed=0) for dim in dims}
g = np.random.default_rng(1)
print(f"{'d':>5}{'mean':>8}{'5%':>8}{'95%':>8}{'numpy':>8}{'formula':>9}{'floor':>8}"
      "  false intruders of 10 at ε=0.3 / 0.5")
direct = {}
for dim in dims:
    x = g.standard_normal((2000, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)                            # (2000, dim) 随机单位向量
    direct[dim] = np.abs(x).max(axis=1).mean()                               # 相对坐标轴的 max |cos|
    r = rb[dim]
    print(f"{dim:>5}{r['mean']:>8.3f}{r['quantiles'][0.05]:>8.3f}{r['quantiles'][0.95]:>8.3f}{direct[dim]:>8.3f}"
          f"{r['formula']:>9.3f}{r['floor']:>8.3f}  {r['false_intruders'][0.3]:>6.2f} / "
          f"{r['false_intruders'][0.5]:.2f}")

# demo 模型一个块的四个线性层(minift 的 [in, out]):输出空间的维度,以及 W0 在其中张成几维
shapes = {n.split(".", 2)[2]: tuple(base.params[n].shape) for n in linear_weight_names(base.params)[:4]}
rb_shapes = {}
for name, (d_in, d_out) in shapes.items():
    r = rb_shapes[name] = random_baseline(d_out, k=K, trials=1000, seed=0, basis_dim=min(d_in, d_out))
    print(f"  {name:<20} [{d_in}, {d_out}]: output space R^{d_out}, W0 spans {min(d_in, d_out)} of it; random "
          f"max|cos| {r['mean']:.3f} (5–95%: {r['quantiles'][0.05]:.3f}–{r['quantiles'][0.95]:.3f}), "
          f"formula √(2ln(2m)/d) = {r['formula']:.3f}")

# %% [markdown]
# 怎么读这张表:`mean`、`5%`、`95%` 是随机方向最大 $|\cos|$ 的模拟值;`numpy` 是在
# 2000 个随机单位向量上直接测得的同一个量;`formula` 是 $\sqrt{2\ln(2d)/d}$,比均值略高(它从上方界住期望最大值;
# 检验会打印二者之比);`floor` 是 $1/\sqrt d$,任何方向都低不过它。随机水平随宽度下降:$d = 64$ 时 95% 分位数离论文的
# $\varepsilon = 0.5$ 不到 0.15,到 GPT-2 的 768 时已不到它的三分之一。缩进的几行是 demo 模型自己的输出空间:宽度
# 128 时水平与 $d = 128$ 那一行相同;`c_attn` 和 `c_fc` 的输出空间宽 384 和 512,$W_0$ 在其中只张成 128 个方向,水平更低。
# 最后一列:在这些宽度上,$\varepsilon \ge 0.5$ 时*每一个*随机方向都算作入侵维度——这正是我们想要的(新方向会被抓到),
# 但也意味着一个只有*一半*新的方向(与某个旧方向的余弦略低于 0.5)同样会被抓到,而在窄模型里,"随机"与"0.5"之间的距离很小。
# 所以我们不信任单一阈值:把 $\varepsilon$ 从 0.1 扫到 0.9,每个计数旁边都画出随机基线。
#
# **检验。** 对每个 $d$:floor < 5% 分位数,mean < formula < 1.25 × mean,直接用 NumPy 模拟的结果与 `random_baseline`
# 的均值相差不超过 0.01;$\varepsilon = 0.5$ 时,10 个随机方向中平均至少有 9.9 个被误判为入侵维度;$d = 64$ 时在
# $\varepsilon = 0.1$ 下一个也没有,因为它低于 floor $1/\sqrt{64} = 0.125$。正文从表中读出的水平:$0.5 - {}$(64 的
# 95% 分位数)$< 0.15$,768 的 95% 分位数 $< 0.5/3$,以及宽 384 和 512 的输出空间低于宽 128 的。

# %%
for dim, r in rb.items():
    assert r["floor"] < r["quantiles"][0.05] and r["mean"] < r["formula"] < 1.25 * r["mean"], (dim, r["mean"])
    assert abs(direct[dim] - r["mean"]) < 0.01 and r["false_intruders"][0.5] >= 9.9
assert random_baseline(64, k=K, eps_values=(0.1,))["false_intruders"][0.1] == 0
assert 0.5 - rb[64]["quantiles"][0.95] < 0.15 and rb[768]["quantiles"][0.95] < 0.5 / 3
wide = max(rb_shapes[n]["mean"] for n in ("attn.c_attn.weight", "mlp.c_fc.weight"))      # 宽 384 和 512
assert wide < rb_shapes["attn.c_proj.weight"]["mean"], rb_shapes                                 # 宽 128
print("formula / mean:", {dim: round(r["formula"] / r["mean"], 3) for dim, r in rb.items()})

# %% [markdown]
# ## 3. 用五种方式微调,统计入侵维度
#
# 现在来真的:随附的基座模型(`data/base-demo`,宽度 128,4 个块,16 个线性矩阵)在情感分析任务上用五种方式微调,数据顺序、
# 随机种子和步数预算都相同:
#
# | 运行 | 训练什么 | 缩放系数 $s$ |
# |---|---|---|
# | full | 全部权重,学习率 $10^{-3}$(教程 06) | — |
# | LoRA $r = 1, 8, 32$ | 全部 16 个线性层上的适配器,$\alpha = 8r$ | $\alpha/r = 8$ |
# | rsLoRA $r = 32$ | 同上,$\alpha = 64$($r=8$ 那次的 $\alpha$),`rslora=True` | $\alpha/\sqrt r = 11.3$ |
#
# LoRA 的适配器和分类头共用一个学习率 $10^{-3}$,$s = 8$——这是教程 07 给出的另一种设置,不是 minift 的默认值(默认
# $\alpha = 2r$,$s = 2$,适配器学习率 $2\cdot10^{-3}$,分类头 $3\cdot10^{-4}$);两者都写在代码里,所以默认值改了,
# 下面的数字也不会变。秩扫描固定 $s$,与 `minift compare --ranks` 一致;rsLoRA 则固定 $\alpha$。(默认设置会得到什么,
# 第 6 节有交代。)
#
# 对每次运行,我们取 16 个矩阵的有效权重 $W_t = W_0 + \Delta W$(`lora.effective_weights()` 把适配器并进去),对每个
# $\varepsilon$ 把各矩阵的入侵维度计数加总(`intruder_sweep`,每个矩阵一对 SVD),并用两个量概括每个更新——大小
# $\lVert\Delta W\rVert_F/\lVert W_0\rVert_F$ 和**有效秩**(Roy & Vetterli),都对各矩阵取平均:
#
# $$\operatorname{erank}(\Delta W) = \exp\Big(-\sum_i p_i \ln p_i\Big), \quad p_i = \frac{\sigma_i(\Delta W)}{\sum_l
#   \sigma_l(\Delta W)}, \qquad \operatorname{erank} \le \operatorname{rank}(\Delta W) \le r \text{(LoRA)}.$$

# %%
STEPS = pick(500, 20)
EVAL = pick(500, 64)                                     # 每次评估的验证 / 测试样本数
EPS = np.round(np.arange(0.1, 0.95, 0.1), 2)             # 0.1 … 0.9
PLAN = {"full": None,
        "lora r=1": LoRAConfig(r=1, alpha=8, targets="all-linear"),
        "lora r=8": LoRAConfig(r=8, alpha=64, targets="all-linear"),
        "lora r=32": LoRAConfig(r=32, alpha=256, targets="all-linear"),
        "rslora r=32": LoRAConfig(r=32, alpha=64, rslora=True, targets="all-linear")}
RATES = {"lr": 1e-3, "head_lr": 1e-3}                   # LoRA:适配器和分类头共用学习率(教程 07 第 6 节)
NAMES = linear_weight_names(base.params)                 # 各块的 16 个线性层,按层的顺序
W0 = {n: to_numpy(base.params[n]) for n in NAMES}        # 每个都是 [in, out]


def tuned_weights(model, lora):
    """name -> W0 + ΔW of every block linear (adapters folded in for LoRA)."""
    W = {n: to_numpy(model.params[n]) for n in NAMES}
    if lora is not None:
        W.update({n: to_numpy(w) for n, w in lora.effective_weights().items()})
    return W


# (workers=1:整个批次在一个线程里算,下文引用的数字在任何机器上都出自这条路径;默认值 "auto" 在更快时
# 把批次拆到 2 个线程上,这会改变结果的最后几位。)
runs = {}
for label, lcfg in PLAN.items():
    fcfg = FinetuneConfig(method="full" if lcfg is None else "lora", lora=lcfg, steps=STEPS, eval_size=EVAL,
                          eval_every=0, workers=1, **({} if lcfg is None else RATES))
    model, lora, summary = finetune(base, tok, fcfg, progress=not FAST)
    Wt = tuned_weights(model, lora)
    spectra = [spectrum_compare(W0[n], Wt[n]) for n in NAMES]
    runs[label] = dict(model=model, summary=summary, W=Wt,
                       counts=sum(intruder_sweep(W0[n], Wt[n], k=K, eps_values=EPS)["counts"] for n in NAMES),
                       size=np.mean([s["relative_change"] for s in spectra]),
                       erank=np.array([s["effective_rank_delta"] for s in spectra]))

# 同样 16 个形状的随机基线:10 个随机方向中假入侵维度的期望个数,加总
random_counts = sum(np.array(list(random_baseline(W0[n].shape[1], k=K, trials=200, seed=0,
                                                  basis_dim=min(W0[n].shape), eps_values=EPS)
                                  ["false_intruders"].values())) for n in NAMES)
i3, i4, i5, i7 = (int(np.flatnonzero(EPS == e)[0]) for e in (0.3, 0.4, 0.5, 0.7))
smoke()
print(f"{'run':<12}{'trainable':>11}{'val acc':>8}{'test acc':>9}{'‖ΔW‖/‖W0‖':>11}{'erank ΔW':>9}"
      f"   intruders at ε = 0.3 / 0.5 / 0.7")
for label, r in runs.items():
    s = r["summary"]
    print(f"{label:<12}{s['trainable']:>11,}{s['val_accuracy']:>8.3f}{s['test_accuracy']:>9.3f}{r['size']:>11.3f}"
          f"{r['erank'].mean():>9.1f}   {r['counts'][i3]:>4} / {r['counts'][i5]:>3} / {r['counts'][i7]:>3}")
print(f"{'random':<12}{'':>56}   {random_counts[i3]:>4.0f} / {random_counts[i5]:>3.0f} / {random_counts[i7]:>3.0f}"
      f"   (of {K * len(NAMES)} top vectors)")
acc = {label: r["summary"]["test_accuracy"] for label, r in runs.items()}
size = {label: r["size"] for label, r in runs.items()}
intr3, intr5 = ({label: int(r["counts"][i]) for label, r in runs.items()} for i in (i3, i5))
lora_labels = [label for label in runs if label != "full"]
verdict("full fine-tuning learned the task best (the highest test accuracy)",
        all(acc["full"] > acc[label] for label in lora_labels))
verdict("LoRA r=1 stayed near chance on the test split (within 0.05 of 0.5)", abs(acc["lora r=1"] - 0.5) < 0.05)
verdict("with s fixed, LoRA's update grows with the rank (r=1 < r=8 < r=32), and rsLoRA's is the largest of all",
        size["lora r=1"] < size["lora r=8"] < size["lora r=32"] < size["rslora r=32"] and
        size["rslora r=32"] == max(size.values()))
verdict("intruders at ε=0.5 rise with the rank (r=1 < r=8 < r=32), and rsLoRA r=32 has the most",
        intr5["lora r=1"] < intr5["lora r=8"] < intr5["lora r=32"] and intr5["rslora r=32"] == max(intr5.values()))
verdict("full fine-tuning has intruders at ε=0.5 too, and LoRA r=8 has at most 5 more",
        0 < intr5["full"] and intr5["lora r=8"] <= intr5["full"] + 5)
verdict("at ε=0.3 full fine-tuning and LoRA r ≤ 8 have none, the two rank-32 runs some",
        intr3["full"] == intr3["lora r=1"] == intr3["lora r=8"] == 0 < min(intr3["lora r=32"], intr3["rslora r=32"]))
verdict("the random row is all 160 from ε=0.4 up, and every run is below it there, under a quarter of it at ε=0.5",
        all(random_counts[i4:] >= K * len(NAMES) - 0.5) and all(np.all(r["counts"][i4:] < random_counts[i4:])
                                                                 for r in runs.values())
        and max(intr5.values()) < random_counts[i5] / 4)

# %% [markdown]
# 怎么读这张表:`trainable` 是得到梯度的参数(LoRA:适配器 + 256 个数的分类头)。`val acc`、`test acc`:在 `EVAL`
# 条验证集和测试集评论上的准确率,各 500 条(快速模式 64 条;测试集用的评论模板在训练中从未出现;随机水平为 0.5)。
# `‖ΔW‖/‖W0‖`:16 个矩阵平均移动了多远。`erank ΔW`:更新的有效秩,取平均。入侵维度那几列:在 $16 \times 10 = 160$
# 个顶部奇异向量中,有多少个与基座矩阵每个奇异向量的 $\max|\cos|$ 都 $< \varepsilon$;`random` 一行:换成
# 160 个随机方向会有多少个。
#
# 表下面逐条打印了这一段的说法,以及它们在这次运行中是否成立(正常模式会断言它们)。完全微调把任务学得最好;LoRA r=1
# 在测试集上没有脱离随机水平。$s$ 固定为 8 时,LoRA 的 $\lVert\Delta W\rVert$ 随秩增长(约按 $\sqrt r$,教程 07 第 3 节),而
# rsLoRA 的 $s = 11.3$ 让它的更新最大。完全微调的 $\Delta W$ 有效秩(最多可到 128)远高于 LoRA 的,后者至多为 $r$。
# $\varepsilon = 0.5$ 时入侵维度随秩上升,rsLoRA r=32 最多;但完全微调也有一些——论文里的完全微调几乎没有——LoRA r=8
# 只比它多几个。在接近随机水平的 $\varepsilon = 0.3$ 下,只有两个秩 32 的运行还留有入侵维度:它们与 $W_0$ 毫不相关,
# 就像随机方向一样。`random` 一行从 $\varepsilon = 0.4$ 起全是 160,每个真实计数都低于它,在 $\varepsilon = 0.5$
# 时远低于它:微调后的顶部方向大多是移动过的旧方向。

# %%
example = max(NAMES, key=lambda n: intruder_dimensions(W0[n], runs["lora r=8"]["W"][n], k=K)["count"])   # r=8 最多
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
top = 40
ax1.semilogy(singular_values(W0[example])[:top], "k.-", label="W0 (base)")
for label, style in (("full", "C0"), ("lora r=8", "C1"), ("lora r=32", "C3")):
    Wt_e = runs[label]["W"][example]
    res = intruder_dimensions(W0[example], Wt_e, k=K, eps=0.5)
    sv = singular_values(Wt_e)[:top]
    ax1.semilogy(sv, ".-", color=style, alpha=0.7, label=f"{label} ({res['count']} intruders at ε=0.5)")
    ax1.semilogy(res["indices"], sv[res["indices"]], "x", color=style, ms=10, mew=2)
ax1.set(xlabel="index j (largest first)", ylabel="singular value",
        title=f"{example}: top {top} singular values (× = intruder)")
ax1.legend(fontsize=8)
for i, (label, r) in enumerate(runs.items()):
    ax2.plot(EPS, r["counts"], "o-", color=f"C{i}", label=label)
ax2.plot(EPS, random_counts, "k--", label="random directions")
ax2.axvline(0.5, color="gray", lw=0.8)
ax2.set(xlabel="ε", ylabel=f"intruders, summed over {len(NAMES)} matrices (of {K * len(NAMES)})",
        title="intruders vs ε, with the random baseline")
ax2.legend(fontsize=8)
show(fig, "10_spectra_and_intruders")
in_example = {label: intruder_dimensions(W0[example], runs[label]["W"][example], k=K)["count"] for label in runs}
print(f"left plot: {example}; its intruders at ε=0.5: {in_example}")
verdict("in this matrix LoRA's tuned spectra have intruders and full fine-tuning's has none",
        in_example["full"] == 0 < in_example["lora r=8"])
print(format_intruders(model_intruders(W0, runs["lora r=8"]["W"], k=K, eps=0.5)))

# %% [markdown]
# 左图只画一个矩阵,即 LoRA r=8 入侵维度最多的那个(名字打印在图下,连同每次运行在其中的计数):
# 微调后的谱除了顶端都与基座的重合,顶端处 LoRA 的谱鼓出到基座之上——鼓出的部分大多是入侵维度,
# 即那些叉号(完全微调在这个矩阵里一个也没有:见判定那一行)。右图是整个扫描:每条曲线都随 $\varepsilon$ 上升($\varepsilon$
# 越大,被判为"新"的方向越多),从 $\varepsilon = 0.4$ 起全部位于随机线之下。图下的表是 LoRA r=8 在 $\varepsilon = 0.5$
# 时的 `model_intruders`:每个矩阵的入侵维度,以及其前 10 个向量中最低的 $\max|\cos|$(可与第 2 节这些形状的随机水平对比:
# 接近它就是"和随机一样新")。
#
# **检验。** 先是确定性的事实:每个计数都随 $\varepsilon$ 单调不减;`model_intruders` 在 $\varepsilon = 0.5$
# 时的总数等于扫描的结果;LoRA 的 $\Delta W$ 在每个矩阵里的有效秩都不超过 $r$(为 $W_0 + \Delta W$ 的 float32 舍入留
# 1% 余量);随机基线在 $\varepsilon = 0.5$ 时把 160 个全部计入。然后是留有很大余量的测量事实(正常模式):
# 完全微调的平均有效秩是 LoRA r=8 的 4 倍以上,且高于 32;$\varepsilon = 0.5$ 时 LoRA r=32 的入侵维度至少是 r=1 的两倍,
# 且至少多 10 个。

# %%
for label, r in runs.items():
    assert np.all(np.diff(r["counts"]) >= 0), label
    assert model_intruders(W0, r["W"], k=K, eps=0.5)["total"] == r["counts"][i5], label
    if PLAN[label] is not None:
        assert r["erank"].max() <= 1.01 * PLAN[label].r, (label, r["erank"].max())
assert random_counts[i5] >= 0.99 * K * len(NAMES)
erank = {label: r["erank"].mean() for label, r in runs.items()}
smoke()
print("mean effective rank of ΔW:", {k: round(float(v), 1) for k, v in erank.items()})
print("intruders at ε=0.5:", intr5)
assert erank["full"] > 4 * erank["lora r=8"]
if not FAST:                                         # 只在完整规模下:20 步几乎不动权重
    assert erank["full"] > 32
    assert intr5["lora r=32"] >= max(2 * intr5["lora r=1"], intr5["lora r=1"] + 10), intr5

# %% [markdown]
# ## 4. 遗忘:留出文本上的语言模型损失
#
# 论文的第二项测量:微调后的模型在预训练学过的东西上变差了吗?minift 的 `minift compare`
# 把它量成留出预训练文本(预训练从未见过的 world 语料文档)上语言模型损失的变化,通过每个微调后的模型主体都保留着的、
# 与嵌入绑定的语言模型头来计算:
#
# $$\Delta\mathcal L_\text{LM} = \mathcal L_\text{LM}(W_0 + \Delta W) - \mathcal L_\text{LM}(W_0), \qquad
#   \mathcal L_\text{LM} = -\frac{1}{N}\sum_{t} \ln p(x_{t+1}\mid x_{\le t}),$$
#
# 每个模型都在同样的 32 个 128 token 的窗口上计算(快速模式 8 个)。为正表示有遗忘。

# %%
heldout = heldout_world_ids(tok, n_chars=pick(200_000, 60_000))
heldout = heldout[:pick(32, 8) * base.cfg.n_ctx + 1]                        # 每个模型都在这些窗口上打分
base_lm = lm_loss(base, heldout, max_windows=None)
for label, r in runs.items():
    r["forgetting"] = lm_loss(r["model"], heldout, max_windows=None) - base_lm
smoke()
print(f"base model: LM loss {base_lm:.4f} nats/token on {len(heldout) - 1:,} held-out tokens")
print(f"{'run':<12}{'ΔLM':>9}{'intruders ε=0.5':>17}{'‖ΔW‖/‖W0‖':>11}{'test acc':>9}")
for label, r in runs.items():
    print(f"{label:<12}{r['forgetting']:>+9.4f}{intr5[label]:>17}{r['size']:>11.3f}"
          f"{r['summary']['test_accuracy']:>9.3f}")

# %% [markdown]
# `ΔLM` 的单位是 nats/token(表上方打印的基座自身损失很低:它对这种生成的 world 文本预测得很好)。LoRA r=1 几乎什么都没忘——
# 但它也几乎没学会任务;LoRA r=8 的遗忘不到完全微调的一半,正如论文(以及 Biderman 等人的 "LoRA learns less and forgets
# less")让人预期的那样。但并不是每个秩都"LoRA < 完全微调":两个秩 32 的运行,遗忘量都超过完全微调的 1.5 倍。$s$ 固定时,
# 秩越高,这里的更新反而*越大*(见 `‖ΔW‖/‖W0‖` 一列),而且集中在少数几个新方向上。
#
# **检验。** 每个模型的损失都是有限值,且没有哪个模型比基座好出 0.05 以上(在评论上微调不该教会模型 world 语料);
# 正常模式下,留有很大余量:LoRA r=1 的遗忘小于 0.5,也小于完全微调的四分之一;遗忘随秩上升,r=1 < r=8 < r=32。
# 上面与完全微调的两项比较以判定的形式打印。

# %%
forget = {label: r["forgetting"] for label, r in runs.items()}
assert all(np.isfinite(v) and v > -0.05 for v in forget.values()), forget
if not FAST:                                         # 只在完整规模下(快速模式:20 步)
    assert forget["lora r=1"] < min(0.5, forget["full"] / 4), forget
    assert forget["lora r=1"] < forget["lora r=8"] < forget["lora r=32"], forget
verdict("LoRA r=8 forgot less than half of full fine-tuning's ΔLM", forget["lora r=8"] < forget["full"] / 2)
verdict("both rank-32 runs forgot more than 1.5 × full fine-tuning's ΔLM",
        min(forget["lora r=32"], forget["rslora r=32"]) > 1.5 * forget["full"])

# %% [markdown]
# ## 5. 缓解办法:缩小入侵维度
#
# 如果遗忘藏在入侵维度里,把它们缩小就应该能挽回一些。论文的干预(Hugging Face PEFT 里也有)把每个入侵维度的奇异值乘以
# $\lambda$:
#
# $$W' = W_t + (\lambda - 1)\sum_{j \in \text{入侵维度}} \sigma_j\, u_j v_j^\top, \qquad \lambda \approx 0.75,$$
#
# $W_t$ 的其余奇异三元组保持不变。`scale_intruders(W0, W_t, eps=0.5, lam=0.75)` 在 minift 的布局下完成这一步。
# 我们把它用到每次运行的全部 16 个矩阵上,在同样的留出文本和同样的测试评论上打分;然后在 LoRA r=8 上扫描 $\lambda$。

# %%
_, _, test_split = load_task_splits("sentiment", eval_size=EVAL)


def mitigated(label, lam, eps=0.5):
    """(ΔLM, test accuracy) of run `label` with its intruders' singular values scaled by lam."""
    model = runs[label]["model"].to()                    # 普通副本:权重、分类头,没有适配器
    for n in NAMES:
        model.params[n][...] = model.xp.asarray(scale_intruders(W0[n], runs[label]["W"][n], k=K, eps=eps, lam=lam))
    return lm_loss(model, heldout, max_windows=None) - base_lm, split_metrics(model, test_split, tok, 128)["accuracy"]


LAM = 0.75
after = {label: mitigated(label, LAM) for label in runs}
smoke()
print(f"λ = {LAM}, ε = 0.5:  {'run':<12}{'ΔLM before':>11}{'after':>9}{'test acc before':>16}{'after':>7}")
for label, (f_after, acc_after) in after.items():
    r = runs[label]
    print(f"{'':<18}{label:<12}{r['forgetting']:>+11.4f}{f_after:>+9.4f}{r['summary']['test_accuracy']:>16.3f}"
          f"{acc_after:>7.3f}")
lams = (1.0, 0.75, 0.5, 0.25, 0.0)
sweep = [mitigated("lora r=8", lam) for lam in lams]
print("LoRA r=8, λ sweep:  " + "   ".join(f"λ={lam}: ΔLM {f:+.3f}, acc {acc:.3f}" for lam, (f, acc) in
                                       zip(lams, sweep)))
f_sweep, acc_sweep = [f for f, _ in sweep], [a for _, a in sweep]
verdict(f"λ = {LAM} lowered every run's forgetting", all(after[label][0] < forget[label] for label in runs))
verdict(f"λ = {LAM} moved no run's test accuracy by more than 0.05",
        all(abs(after[label][1] - acc[label]) <= 0.05 for label in runs))
verdict("λ sweep: forgetting is lowest at an intermediate λ, and rises again at λ = 0",
        min(f_sweep[1:-1]) < min(f_sweep[0], f_sweep[-1]) and f_sweep[-1] > min(f_sweep))
verdict("λ sweep: accuracy falls at every step, to within 0.05 of chance at λ = 0",
        bool(np.all(np.diff(acc_sweep) < 0)) and abs(acc_sweep[-1] - 0.5) < 0.05)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(lams, [f for f, _ in sweep], "o-", color="C1", label="forgetting ΔLM (left)")
ax.set(xlabel="λ (intruders' singular values × λ)", ylabel="ΔLM, nats/token",
       title="LoRA r=8: scaling the intruders")
ax.invert_xaxis()
ax2 = ax.twinx()
ax2.plot(lams, [acc for _, acc in sweep], "s--", color="C2", label="test accuracy (right)")
ax2.set(ylabel="test accuracy", ylim=(0.4, 1.0))
handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
ax.legend(handles, [h.get_label() for h in handles], loc="upper center", fontsize=8)
show(fig, "10_mitigation")

# %% [markdown]
# 先看第一张表:每次运行在 $\lambda = 0.75$ 前后的遗忘和测试准确率。它降低了每次运行的遗忘,
# 而测试准确率最多变化几个百分点(见 λ 扫描下面的判定)。LoRA r=8 上的扫描走得更远。遗忘先下降,到 $\lambda = 0$
# 时又*回升*:把这些方向整个删掉,也会删掉基座原本知道的一部分东西——在 $\varepsilon = 0.5$ 下,
# 一个"入侵维度"仍可能有一半是旧方向。准确率每一步都在下降,到 $\lambda = 0$ 时落到随机水平:任务*就在*这些方向里。论文的
# $\lambda \approx 0.75$ 是这笔取舍里温和的一端。(单靠扫描并不能说明入侵维度有什么特别——缩小任何一个新出现的大方向,
# 也许同样能减少遗忘;要说明这一点需要对照,比如缩放同样大小的非入侵方向。)
#
# **检验。** 确定性的:$\lambda = 1$ 逐位还原 $W_t$;在入侵维度最多的那个 LoRA 矩阵上,新的奇异值正好是旧的奇异值,
# 只是入侵维度的那几个乘以了 $\lambda$($\sigma_1$ 的 $10^{-5}$ 以内:float32);没有入侵维度的矩阵保持不变;$\lambda = 1$
# 时,那份普通副本的遗忘与 LoRA 模型完全相同($10^{-3}$ 以内)。测量的,正常模式:对 LoRA r=8,$\lambda = 0.75$ 让遗忘至少降低
# 0.1,测试准确率最多损失 0.1;$\lambda = 0$ 的遗忘小于 $\lambda = 1$。

# %%
n_intr = lambda label, n: intruder_dimensions(W0[n], runs[label]["W"][n], k=K)["count"]    # noqa: E731
label_m, name_m = max(((label, n) for label in runs if PLAN[label] is not None for n in NAMES),
                      key=lambda pair: n_intr(*pair))                      # 入侵维度最多的 LoRA 矩阵
Wt_m = runs[label_m]["W"][name_m]
assert np.array_equal(scale_intruders(W0[name_m], Wt_m, k=K, eps=0.5, lam=1.0), Wt_m)
res = intruder_dimensions(W0[name_m], Wt_m, k=K, eps=0.5)
expected = singular_values(Wt_m)
expected[res["indices"]] *= LAM
expected = np.sort(expected)[::-1]
got = singular_values(scale_intruders(W0[name_m], Wt_m, k=K, eps=0.5, lam=LAM))
print(f"{label_m}, {name_m}: intruders at j = {res['indices'].tolist()}, singular values {res['singular_values']} "
      f"× {LAM}; max |difference| from the prediction {np.abs(expected - got).max() / got[0]:.1e} of σ₁")
assert np.allclose(expected, got, rtol=1e-5, atol=1e-5 * got[0])
W1 = runs["lora r=1"]["W"]
clean = [n for n in NAMES if intruder_dimensions(W0[n], W1[n], k=K)["count"] == 0]          # 没有入侵维度的矩阵
assert clean and all(np.array_equal(scale_intruders(W0[n], W1[n], k=K, lam=LAM), W1[n]) for n in clean)
assert abs(sweep[0][0] - runs["lora r=8"]["forgetting"]) < 1e-3                # λ = 1:未缓解的模型
if not FAST:                                         # 只在完整规模下(快速模式:20 步)
    (f1, acc1), (f075, acc075), f0 = sweep[0], sweep[1], sweep[-1][0]
    assert f075 < f1 - 0.1 and acc075 > acc1 - 0.1 and f0 < f1, sweep

# %% [markdown]
# ## 6. 如实解读
#
# 论文的哪些发现在这个规模上看得到?这里再看一个指标会有帮助:在这五次运行里,遗忘是否随入侵维度的数目同步变化?Spearman
# 秩相关系数 $\rho$ 就是两组数各自秩次之间的 Pearson 相关系数。并列的值取它们所占各秩次的平均值(并列第 1、
# 第 2 的两次运行都记为 1.5),所以并列不提供任何顺序信息。只有两组都没有并列时,它才有闭式,其中 $d_i$ 是第 $i$
# 次运行的两个秩次之差,
#
# $$\rho = 1 - \frac{6\sum_i d_i^2}{n(n^2 - 1)} \quad (n = 5;\ \rho = 1 \text{:顺序相同}).$$

# %%
def average_ranks(values):
    """Ranks 1..n of values; tied values all get the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(v))
    ranks[np.argsort(v, kind="stable")] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        ranks[v == value] = ranks[v == value].mean()
    return ranks


def pearson(x, y):
    """Pearson correlation of x and y; nan if either is constant."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc ** 2).sum() * (yc ** 2).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else math.nan


labels = list(runs)
n = len(labels)
rank_i, rank_f = average_ranks([intr5[k] for k in labels]), average_ranks([forget[k] for k in labels])
rho = pearson(rank_i, rank_f)
closed = 1 - 6 * ((rank_i - rank_f) ** 2).sum() / (n * (n ** 2 - 1))           # 只在没有并列时精确
ties = len(set(intr5.values())) < n or len(set(forget.values())) < n
smoke()
print(f"intruder ranks {rank_i.tolist()}, forgetting ranks {rank_f.tolist()}")
print(f"Spearman ρ(intruders at ε=0.5, forgetting) over {n} runs = {rho:+.2f}; closed form {closed:+.2f}"
      f" ({'ties: the closed form does not apply' if ties else 'no ties: the two agree'})")
full_few = intr5["full"] <= intr5["lora r=8"] // 4                          # "几乎没有",相对 LoRA 而言
findings = [
    ("LoRA has intruders, full fine-tuning (almost) none",
     f"r=8 {intr5['lora r=8']}, full {intr5['full']} (ε=0.5)",
     "yes" if full_few else "partly: full has some too" if intr5["lora r=8"] > intr5["full"] else "no"),
    ("intruders grow with LoRA's rank (s fixed at 8)",
     f"r=1/8/32: {intr5['lora r=1']}/{intr5['lora r=8']}/{intr5['lora r=32']}",
     "yes" if intr5["lora r=1"] < intr5["lora r=8"] < intr5["lora r=32"] else "not monotone"),
    ("full fine-tuning's ΔW has the higher effective rank",
     f"{erank['full']:.0f} vs {erank['lora r=32']:.0f} (r=32)",
     "yes" if erank["full"] > max(v for k, v in erank.items() if k != "full") else "no"),
    ("LoRA forgets less than full fine-tuning",
     f"ΔLM r=8 {forget['lora r=8']:+.2f}, full {forget['full']:+.2f}",
     "at every rank" if max(v for k, v in forget.items() if k != "full") < forget["full"] else
     "at low rank only" if forget["lora r=1"] < forget["full"] else "no"),
    ("forgetting goes with intruders", f"Spearman ρ = {rho:+.2f}", "roughly" if rho > 0.5 else "weakly or not"),
    ("scaling intruders by 0.75 cuts forgetting, keeps accuracy",
     f"r=8 ΔLM {forget['lora r=8']:+.2f} → {after['lora r=8'][0]:+.2f}",
     "yes" if after["lora r=8"][0] < forget["lora r=8"] and
     after["lora r=8"][1] > runs["lora r=8"]["summary"]["test_accuracy"] - 0.05 else "no"),
    ("higher-rank rsLoRA looks like full fine-tuning",
     f"rsLoRA r=32: {intr5['rslora r=32']} intruders",
     "yes" if intr5["rslora r=32"] <= intr5["full"] else "no, not here")]
for claim, here, found in findings:
    print(f"  {claim:<58} {here:<36} {found}")

# %% [markdown]
# **检验。** `average_ranks` 给并列的值分配它们所占各秩次的平均值(在一个固定的例子上);$|\rho| \le 1$,且等于 NumPy
# 对两个秩次向量算出的 Pearson 相关系数;没有并列时,闭式与它相等;正常模式下 $\rho$ 为正(上面已打印),
# 而完全微调是那个不合顺序的运行:入侵维度比 LoRA r=8 少,遗忘却更多(见下面的判定)。
#
# 打印出的表:论文的每项发现、这里测到的数字,以及由这些数字算出的判定(快速模式只有 20 步,是冒烟测试:这些判定没有意义)。

# %%
assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
assert average_ranks([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
if not math.isnan(rho):
    assert abs(rho) <= 1 and abs(rho - np.corrcoef(rank_i, rank_f)[0, 1]) < 1e-12
    if not ties:
        assert abs(closed - rho) < 1e-12
if not FAST:                                         # 只在完整规模下(快速模式:20 步)
    assert rho > 0, rho
verdict("full fine-tuning has fewer intruders than LoRA r=8 at ε=0.5, but forgets more",
        intr5["full"] < intr5["lora r=8"] and forget["full"] > forget["lora r=8"])
verdict("rsLoRA r=32 has the most forgetting, and the lowest test accuracy of the three larger LoRA runs",
        forget["rslora r=32"] == max(forget.values()) and
        acc["rslora r=32"] < min(acc["lora r=8"], acc["lora r=32"]))

# %% [markdown]
# 在这个一百万参数的模型和生成的情感分析任务上,能复现的是:
#
# - **入侵维度是 LoRA 的现象,并随秩增长。** LoRA r=1 几乎没有,r=32 有很多;与 $W_0$ 毫不相关、
#   像随机方向一样的方向($\varepsilon = 0.3$)出现在 LoRA r=32 和 rsLoRA 里,完全微调里没有。README 里的
#   `minift compare --ranks 1,2,4,8,16,64`(600 步,每个秩都用 minift 的默认值 $s = \alpha/r = 2$)测到了同样的趋势,从 r=16
#   起 LoRA 的计数高于完全微调(见下面最后一条)。
# - **完全微调的更新是高秩的**,LoRA 的不可能是(erank ≤ r)。
# - **LoRA 遗忘得更少——在低秩时。** 而且遗忘随秩上升。
# - **缓解办法有效**:$\lambda = 0.75$ 以很小的准确率代价减少了遗忘。
#
# 不能复现或只部分复现的是:
#
# - **完全微调也有入侵维度**($\varepsilon = 0.5$ 时),LoRA r=8 领先它不多。宽度 128 时,一个方向只要与每个旧方向都转开 60°
#   以上就算数;这里的完全微调把权重移动得很远(见第 3 节表中它的 `‖ΔW‖/‖W0‖`:学习率 $10^{-3}$ 下 500 步,
#   对小模型来说是很大的更新),而论文里对 RoBERTa 和 LLaMA 的完全微调只让权重移动了一点点。扫描 $\varepsilon$
#   比单一阈值更能看清区别:$\varepsilon = 0.3$ 时只有两个秩 32 的 LoRA 运行还留有入侵维度。
# - **秩更高的 rsLoRA 在这里并不像完全微调**:$r = 32$ 时取 $\alpha = 64$,它的缩放系数是 11.3,更新是所有运行里最大的,
#   入侵维度和遗忘也都最多,而在三个较大的 LoRA 运行里,它把任务学得最差(见第 3、4 节和上面的判定)。
#   论文的说法针对的是宽几百倍的模型,在那里即使秩很高,也只占宽度的一小部分;在一个玩具模型上,用宽度的四分之一、
#   一个我们自己选的 $\alpha$ 跑一次,定不了论。
# - **准确率没有对齐。** 论文是在*相同准确率*下比较两种方法;这里在同样的 500 步里,完全微调把任务学得比每个 LoRA
#   运行都好,LoRA r=1 几乎没学会。"LoRA r=1 什么都没忘",有一部分其实是"LoRA r=1 什么都没改"。
# - **趋势取决于设置。** 换成 minift 默认的 LoRA 设置($\alpha = 2r$,$s = 2$,适配器学习率 $2\cdot10^{-3}$,分类头
#   $3\cdot10^{-4}$),`minift compare --ranks 1,2,4,8,16,64`(600 步;这里不运行)打印的 $\varepsilon = 0.5$
#   入侵维度同样随秩上升,直到 $r = 8$ 都低于完全微调,遗忘的顺序也与这里相同。
# - 规模与种子:每次运行一个种子、一个任务、500 步。换种子或换设置,计数会变动好几个;看数量级和趋势,不要看单个差值。
#
# 回到原文的 §4.2:它说的模型和任务与论文相近(一个 BERT 变体和 GPT 式的 LLaMA;分类任务,其中包括情感分析),但 70% /
# 80% 的节省(教程 09 测量时间和内存花在哪里)、命名实体识别,以及"在小数据集上泛化更好",都不是论文的发现。
# 论文的发现就是本教程:准确率相同,不等于模型相同。

# %% [markdown]
# ## 7. 依次学习多个任务:持续学习对入侵维度做了什么
#
# 论文的最后一项发现与时间有关。在一个任务上微调,接着下一个,再下一个——也就是原文 §1.2
# 所说的"持续改进"("通过持续微调来不断改进模型的性能")——LoRA 的入侵维度会越积越多:论文让模型依次学习多个任务,
# 每个任务的适配器在下一个任务换上新适配器之前先合并进权重,并报告说 "LoRA models do accumulate intruder dimensions
# here"(LoRA 模型在这种设置下确实会累积入侵维度),而且 "tend to perform worse in this
# setting"(在这种设置下往往表现更差)。
#
# 缩小规模来做:用 minift 内置的 `facts` 任务造出四个任务(关于教程 04 那个世界里的人的问题,每个都用一句话回答,例如 " She
# lives in Oakford."),每个任务两种关系——住在哪里和做什么工作、宠物和宠物的名字、朋友和爱好、食物和颜色。
# 测试问题问的是训练问题从未提到的人,所以每个任务都要靠预训练存下来的知识。每个阶段都从上一阶段的模型出发:
#
# $$W^{(k)} = W^{(k-1)} + \Delta W^{(k)}, \qquad W^{(0)} = W_0 \text{(基座)},$$
#
# 其中 $\Delta W^{(k)}$ 是完全微调的更新,或者 LoRA 的 $s\,B^{(k)}A^{(k)}$——在任务 $k+1$ 挂上新的适配器之前,由
# `lora.merged_model()`(即 PEFT 的 `merge_and_unload`)并进权重;命令行上 `minift finetune --merge` 和 `--base RUN/model`
# 做的就是这件事。入侵维度始终相对 $W_0$ 计数:对 $W_0 \to W^{(k)}$ 运行算法 1。每种方法都用 minift 的默认值(完全微调:
# 学习率 $10^{-3}$;LoRA:$\alpha = 2r$,$s = 2$,学习率 $2\cdot10^{-3}$),每个阶段 200 步,第 $k$ 阶段用种子
# $k$(重新抽取的适配器和新的数据顺序)。
#
# 再加一项测量,把模型*怎么*回答和它*知道什么*分开:只算任务 0 的事实部分的损失——在 "Question: Where does Edwin
# live?\nAnswer: He lives in" 之后预测 "Thornfield",答案的句式已经给定。

# %%
GROUPS = (("town", "job"), ("pet", "pet_name"), ("friend", "hobby"), ("food", "colour"))
STAGE_STEPS = pick(200, 10)
CL_PLAN = {"full": dict(method="full"),
           "full, wte/wpe frozen": dict(method="freeze", freeze_blocks=0),    # 每个块都训练,嵌入不训练
           **{f"lora r={r}": dict(method="lora", lora=LoRAConfig(r=r, alpha=2 * r, targets="all-linear"))
              for r in (1, 8, 64)}}


def relation_task(relations, folder):
    """A task folder holding the facts task's questions about `relations` only, split as the facts task is."""
    for split in ("train", "validation", "test"):
        lines = (data_dir() / "tasks" / "facts" / f"{split}.jsonl").read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["relation"] in relations]
        (folder / f"{split}.jsonl").write_text("\n".join(kept) + "\n")
    return folder


TASKS = [relation_task(g, out_dir("continual", f"task{k}")) for k, g in enumerate(GROUPS)]
TESTS = [load_task_splits(t, eval_size=pick(None, 32))[2] for t in TASKS]     # 各 250 个测试问题


def fact_questions(k):
    """Task k's test questions with the answer's form given and only the fact left to predict:
    ("Question: Where does Edwin live?\nAnswer: He lives in", " Thornfield"), as token lists. The loss on those
    tokens alone measures what the model knows about the person, not how it phrases an answer."""
    prompts, facts = [], []
    for line in (TASKS[k] / "test.jsonl").read_text().splitlines()[:len(TESTS[k])]:
        row = json.loads(line)
        tail = ANSWERS[row["relation"]].rsplit("{", 1)[0].rsplit("}", 1)[1]   # " lives in ":事实前面的词
        cut = row["completion"].rindex(tail) + len(tail) - 1                   # 事实开头的空格
        prompts.append(tok.encode(row["prompt"] + row["completion"][:cut]))
        facts.append(tok.encode(row["completion"][cut:-1]))                    # 事实本身,不含结尾的 "."
    return prompts, facts


FACTS0 = fact_questions(0)
print(f"task 0's facts, e.g. {tok.decode(FACTS0[0][0])!r} → {tok.decode(FACTS0[1][0])!r}")


def fact_loss(model):
    """Test loss on task 0's facts alone (nats/token), the answer's form given."""
    return completion_metrics(model, *FACTS0, tok.pad_id, 128)["loss"]


def stage_config(method, k):
    """Stage k's fine-tune: task k, 200 steps, seed k (a fresh adapter draw and data order at every stage)."""
    return FinetuneConfig(**method, task=str(TASKS[k]), steps=STAGE_STEPS, eval_size=pick(100, 16), eval_every=0,
                          seed=k, workers=1)


def in_sequence(method):
    """Fine-tune on TASKS one after another; after each stage: the model, the test loss and exact-match accuracy on
    every task, the loss on task 0's facts alone, the intruders against W0 (ε = 0.5, summed over the 16 matrices:
    of 16 × 10 = 160 top directions) and the forgetting ΔLM."""
    model, stages = base, []
    for k in range(len(TASKS)):
        tuned, lora, _ = finetune(model, tok, stage_config(method, k), progress=False)
        model = tuned if lora is None else lora.merged_model()        # W(k) = W(k-1) + ΔW(k),适配器已并入
        metrics = [split_metrics(model, t, tok, 128) for t in TESTS]
        stages.append(dict(model=model,
                           loss=np.array([m["loss"] for m in metrics]),
                           acc=np.array([m["accuracy"] for m in metrics]),
                           fact0=fact_loss(model),
                           intruders=sum(intruder_dimensions(W0[n], to_numpy(model.params[n]), k=K, eps=0.5)["count"]
                                         for n in NAMES),
                           forgetting=lm_loss(model, heldout, max_windows=None) - base_lm))
    return stages


base_task_loss = np.array([split_metrics(base, t, tok, 128)["loss"] for t in TESTS])
seq = {label: in_sequence(method) for label, method in CL_PLAN.items()}
smoke()
print(f"{'':<21}{'test loss on task':^28}{'facts':>7}{'exact match':^16}")
print(f"{'':<21}" + "".join(f"{j:>7}" for j in range(4)) + f"{'of 0':>7}{'task k':>8}{'task 0':>8}{'intruders':>11}"
      f"{'ΔLM':>8}")
print(f"{'the base':<21}" + "".join(f"{v:>7.2f}" for v in base_task_loss) + f"{fact_loss(base):>7.2f}")
for label, stages in seq.items():
    for k, st in enumerate(stages):
        print(f"{label if k == 0 else '':<21}" + "".join(f"{v:>7.2f}" for v in st["loss"]) + f"{st['fact0']:>7.2f}"
              + f"{st['acc'][k]:>8.2f}{st['acc'][0]:>8.2f}{st['intruders']:>11}{st['forgetting']:>+8.2f}"
              + f"   after task {k}")
base_fact0 = fact_loss(base)
last = {label: stages[-1] for label, stages in seq.items()}
verdict("every method learned each task as it came, in loss: the diagonal is below the base's loss on that task",
        all(st["loss"][k] < base_task_loss[k] for stages in seq.values() for k, st in enumerate(stages)))
verdict("in exact match only task 0 got anywhere: above 0.3 after stage 0, below 0.15 on tasks 1-3",
        all(stages[0]["acc"][0] > 0.3 and all(st["acc"][k] < 0.15 for k, st in enumerate(stages) if k)
            for stages in seq.values()))
verdict("task 0's loss ended above the untrained base's for every method",
        all(st["loss"][0] > base_task_loss[0] for st in last.values()))
verdict("intruders grew at every stage for every method; LoRA r=8's and r=64's above full fine-tuning's throughout",
        all(np.all(np.diff([st["intruders"] for st in stages]) > 0) for stages in seq.values()) and
        all(min(a["intruders"], b["intruders"]) > f["intruders"]
            for a, b, f in zip(seq["lora r=8"], seq["lora r=64"], seq["full"])))
verdict("ΔLM grew at every stage for every method, and ended in the order LoRA r=1 < r=8 < r=64 < full",
        all(np.all(np.diff([st["forgetting"] for st in stages]) > 0) for stages in seq.values()) and
        last["lora r=1"]["forgetting"] < last["lora r=8"]["forgetting"] < last["lora r=64"]["forgetting"]
        < last["full"]["forgetting"])
verdict("facts of task 0: every method below the base after stage 0; after stage 3 LoRA r=1 within 0.5 of the "
        "base, full fine-tuning above 4 × the base",
        all(stages[0]["fact0"] < base_fact0 for stages in seq.values()) and
        abs(last["lora r=1"]["fact0"] - base_fact0) < 0.5 and last["full"]["fact0"] > 4 * base_fact0)

# %% [markdown]
# 每四行是一组:一种方法,逐个阶段。四个损失列是每个任务 250 个测试问题上的补全损失(nats/token);对角线——第 $k$ 行第 $k$
# 列——是刚学完的任务,它左边的是之前学过的任务。`facts of 0`:只算任务 0 的事实部分的损失,句式已给定。exact
# match(精确匹配):在刚训练的任务上,以及在任务 0 上。intruders:相对 $W_0$,$\varepsilon = 0.5$,在 $16 \times 10 = 160$
# 个顶部方向中的入侵维度(第 3 节)。ΔLM:第 4 节所说的对预训练文本的遗忘。
#
# 表下面打印了这一段的说法,以及它们在这次运行中是否成立(正常模式会断言)。每种方法都按损失学会了每个新来的任务——
# 对角线低于基座在该任务上的损失——不过按精确匹配,只有任务 0 有所进展(任务 1–3 里有宠物的名字和最好的朋友,200
# 步后几乎为零)。而每种方法都丢掉了早先的任务:任务 0 的损失刚训练完时很低,最后却高于未经训练的基座,而且一训练任务 1,任务
# 0 上的精确匹配就崩溃了(见下面的检验)。每种方法的入侵维度都在每个阶段增长,LoRA r=8 和 r=64 涨得最快;
# 对预训练文本的遗忘也在累积,LoRA r=1 最少,完全微调最多。
#
# 事实那一列把两种遗忘区分开来。基座那一行给出它在这一列的得分,答案的句式已给定。其中多少是对事实的了解,
# 多少只是在这个世界的城镇、职业和宠物之间猜得好,这一列说不清(教程 04 的贪心测试 "⟨name⟩ lives in"
# 发现基座比瞎猜好不了多少);它只是一个参照。训练任务 0 让每种方法都降到了它之下。学完四个任务后,LoRA r=1
# 回到了基座附近——它丢掉了任务 0 教给它的东西,此外丢得不多——LoRA r=8 和 r=64 高于基座,而完全微调最后高出好几倍:
# 比一个从未微调过的模型还差得多,所以它丢掉的不止是任务 0 的那一课。
#
# 模型忘了什么?在任务 1 之前和之后,拿任务 0 的问题问其中两个模型。

# %%
question = list(zip(TESTS[0].prompts, TESTS[0].completions))[:3]
same_form = {0: [], 1: []}                              # 阶段 -> 每个回答:开头与正确答案相同吗?
smoke()
for label in ("full", "lora r=8"):
    for k in (0, 1):
        model = seq[label][k]["model"]
        print(f"{label}, after stage {k}:")
        for prompt, want in question:
            said = generate(model, tok, prompt, max_new_tokens=12, temperature=0).split("\n")[0]
            same_form[k].append(said.split()[:2] == want.split()[:2])          # "He lives"、"He is":任务 0 的句式
            print(f"    {prompt.splitlines()[0][len('Question: '):]:<34} → {said.strip():<28} "
                  f"(answer: {want.strip()})")
verdict("after stage 0 every answer opens in task 0's form (its first two words), after stage 1 none does",
        all(same_form[0]) and not any(same_form[1]))

# %% [markdown]
# 两个模型都用新任务的句式回答旧问题:学完任务 1 之后,"Where does Edwin live?" 得到的是一句关于宠物的话(见上面的输出)。
# 四个任务共用一种提示("Question: … Answer:"),而每个阶段只训练自己的两种关系,别的什么都不练,
# 所以降低新任务损失最快的办法,就是不管问的是什么,都让 "Answer:" 后面接新任务的句子。这是最直白的灾难性遗忘,
# 在这里没有哪种方法能幸免;上面事实那一列说明了有多少知识随句式一起丢掉了。常用的补救办法:
# 在每个阶段混入一些早先任务的样本(回放:练习 4 会试一试),或者把权重往早先的值拉回去(一种正则化,例如 EWC,Kirkpatrick et
# al. 2017)。

# %%
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4))
stages_x = np.arange(len(TASKS))
for i, (label, stages) in enumerate(seq.items()):
    ax1.plot(stages_x, [st["intruders"] for st in stages], "o-", color=f"C{i}", label=label)
    ax2.plot(stages_x, [st["loss"][0] for st in stages], "o-", color=f"C{i}", label=label)
    ax3.plot(stages_x, [st["fact0"] for st in stages], "o-", color=f"C{i}", label=label)
ax2.axhline(base_task_loss[0], color="k", ls="--", lw=0.8, label="the base, before any stage")
ax3.axhline(fact_loss(base), color="k", ls="--", lw=0.8, label="the base, before any stage")
ax1.set(ylabel="intruders against W0, ε = 0.5 (of 160)", title="intruders accumulate stage by stage")
ax2.set(ylabel="test loss on task 0", title="task 0, learned at stage 0, afterwards")
ax3.set(ylabel="test loss on task 0's facts, form given", title="what it knows, apart from how it answers")
for ax in (ax1, ax2, ax3):
    ax.set(xlabel="stage k (after task k)", xticks=stages_x)
    ax.legend(fontsize=8)
fig.tight_layout()
show(fig, "10_continual")

# %% [markdown]
# **检验。** 确定性的:合并后的 LoRA 阶段算出的结果与它的适配器算出的相同(float32:logits 尺度的 $10^{-4}$),
# 并且不把适配器带进下一个阶段。测量的,正常模式,余量很大:每种方法都丢掉了任务 0(最后一个阶段之后,
# 它的测试损失比刚学完阶段 0 时至少高 1 nat,而且一训练阶段 1,任务 0 上的精确匹配就跌到 0.1 以下);LoRA r=8 和 r=64
# 的入侵维度在每个阶段都增长,最后至少是第一个阶段的两倍;在每个阶段,LoRA r=64 的入侵维度都比完全微调多;最后一个阶段之后,
# 完全微调的任务 0 损失比每个 LoRA 运行、也比它自己冻结嵌入时都高出 1 nat 以上,它在任务 0 事实部分上的损失超过每个 LoRA
# 运行的两倍。事实的切分是精确的:提示、句式和事实解码后正好拼回问题及其答案。

# %%
tuned, lora8, _ = finetune(base, tok, FinetuneConfig(**CL_PLAN["lora r=8"], task=str(TASKS[0]), steps=2,
                                                     eval_size=8, workers=1), progress=False)
ids = np.array([tok.encode(TESTS[0].prompts[0])])
adapted, merged = to_numpy(tuned.forward(ids)), lora8.merged_model()
assert not merged.adapters and np.allclose(to_numpy(merged.forward(ids)), adapted, rtol=1e-4,
                                           atol=1e-4 * np.abs(adapted).max())
assert all(len(f) >= 1 for f in FACTS0[1]) and all(tok.decode(p + f) + "." == q + c for p, f, q, c in
                                                 zip(*FACTS0, TESTS[0].prompts, TESTS[0].completions))
for label, stages in seq.items():
    print(f"{label:<21} task 0 loss: {stages[0]['loss'][0]:.2f} after stage 0 → {stages[-1]['loss'][0]:.2f} after "
          f"stage 3; intruders by stage {[st['intruders'] for st in stages]}")
if not FAST:                                         # 只在完整规模下(快速模式:每阶段 10 步)
    for label, stages in seq.items():
        assert stages[-1]["loss"][0] > stages[0]["loss"][0] + 1.0, label
        assert stages[1]["acc"][0] < 0.1, label
    for label in ("lora r=8", "lora r=64"):
        counts = [st["intruders"] for st in seq[label]]
        assert all(b > a for a, b in zip(counts, counts[1:])) and counts[-1] >= 2 * counts[0], (label, counts)
    assert all(r64["intruders"] > f["intruders"] for r64, f in zip(seq["lora r=64"], seq["full"]))
    assert seq["full, wte/wpe frozen"][-1]["loss"][0] < seq["full"][-1]["loss"][0] - 1.0
    assert max(seq[f"lora r={r}"][-1]["loss"][0] for r in (1, 8, 64)) < seq["full"][-1]["loss"][0] - 1.0
    assert max(seq[f"lora r={r}"][-1]["fact0"] for r in (1, 8, 64)) < seq["full"][-1]["fact0"] / 2
smoke()
loras = [f"lora r={r}" for r in (1, 8, 64)]
verdict("LoRA r=1 ends with fewer intruders than full fine-tuning, LoRA r=64 with more than half of the 160",
        last["lora r=1"]["intruders"] < last["full"]["intruders"] and last["lora r=64"]["intruders"] > 80)
verdict("every LoRA run learned every task better than full fine-tuning (a lower diagonal at every stage)",
        all(seq[lo][k]["loss"][k] < seq["full"][k]["loss"][k] for lo in loras for k in range(len(TASKS))))
verdict("every LoRA run ends with lower task-0 loss, facts loss and ΔLM than full fine-tuning",
        all(last[lo][key] < last["full"][key] for lo in loras for key in ("fact0", "forgetting")) and
        all(last[lo]["loss"][0] < last["full"]["loss"][0] for lo in loras))
frozen = last["full, wte/wpe frozen"]
verdict("embeddings frozen: task 0's loss within 0.5 of LoRA r=64's, above r=1's and r=8's; facts below full's",
        abs(frozen["loss"][0] - last["lora r=64"]["loss"][0]) < 0.5 and frozen["fact0"] < last["full"]["fact0"] and
        frozen["loss"][0] > max(last["lora r=1"]["loss"][0], last["lora r=8"]["loss"][0]))
verdict("within LoRA, r=1 < r=8 < r=64 in final intruders, task-0 loss and facts loss",
        all(last["lora r=1"][key] < last["lora r=8"][key] < last["lora r=64"][key] for key in ("intruders", "fact0"))
        and last["lora r=1"]["loss"][0] < last["lora r=8"]["loss"][0] < last["lora r=64"]["loss"][0])
verdict("LoRA r=64 ends with more than 3 × full fine-tuning's intruders, yet a lower task-0 loss",
        last["lora r=64"]["intruders"] > 3 * last["full"]["intruders"]
        and last["lora r=64"]["loss"][0] < last["full"]["loss"][0])

# %% [markdown]
# 能复现的和不能复现的:
#
# 下面每条说法的判定,都由上面的检验单元格(或表下的代码)根据表中的数字打印出来。
#
# - **入侵维度一个阶段接一个阶段地累积**——这里每种方法都是如此,而 $r \ge 8$ 的 LoRA 在每个阶段都比完全微调积累得快(r=64
#   最后 160 个顶部方向大多是新的)。LoRA r=1 最后比完全微调还少:累积得多快由秩决定。这一点就是论文的发现。
# - **"LoRA 在持续学习中表现更差"在这里不成立。** 每个 LoRA 运行都比完全微调保留了更多的任务 0(无论看任务 0 的损失,
#   还是只看它的事实部分),每个新任务都学得更好(对角线),对预训练文本的遗忘也更少。
#   完全微调的损失有一部分来自绑定的嵌入:`wte` 同时也是输出层,完全微调每学一个任务都会改写它;把它冻结后,任务
#   0 的损失最后低了 1 nat 以上,事实部分的损失也更低——任务 0 的损失大约落在 LoRA r=64 的位置(相差不到半个 nat),但仍比
#   r=1 和 r=8 差。
# - **入侵维度并不能预测哪种方法会忘掉早先的任务。** 在 LoRA 内部两者同步——秩越高,入侵维度越多,对任务
#   0 的遗忘也越多(无论看损失还是看事实)——但 LoRA r=64 的入侵维度是完全微调的好几倍,保留任务 0 却比完全微调好。
# - **差别可能出在设置上。** 论文的任务是更大模型上的不同问题,那些模型的完全微调只让权重移动一点点(第 6 节);
#   这里是四个任务在一个一百万参数的模型里争同一种回答句式,完全微调把权重移动得很远(第 3 节),
#   而所有方法共有的那部分遗忘是句式,一个阶段之内就被覆盖掉。一个种子、一种任务顺序、每阶段 200 步:看趋势,
#   不要看单个数字。

# %% [markdown]
# ## 练习
#
# **练习 1——随机水平。** 预测一个随机方向相对 $\mathbb R^d$ 的一组完整标准正交基的平均 $\max|\cos|$($d = 128$ 即 demo
# 模型的宽度)。检验会在 $d = 128, 256, 512$ 上与 `random_baseline(d)` 模拟的均值比较;相差 20% 以内即通过。

# %%
def my_random_level(d):
    """Your prediction of E max_i |cos(x, e_i)| for a random unit vector x in R^d."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_random_level(d):
    return math.sqrt(2 * math.log(2 * d) / d)            # 高斯最大值估计,略偏高(第 2 节)


# %%
def check_random_level(answer):
    for dim in (128, 256, 512):
        mean = random_baseline(dim, k=K, trials=1000, seed=0)["mean"]
        print(f"d = {dim}: simulated mean {mean:.3f}, yours {answer(dim):.3f}")
        assert abs(answer(dim) / mean - 1) < 0.2


exercise("Exercise 1 (random level)", check_random_level, my_random_level, solution_random_level)

# %% [markdown]
# **练习 2——秩与计数。** `planted_update(W0, r, gain=2, seed)` 沿 $r$ 个新的输出方向加一个秩 $r$ 的更新,
# 每个方向的奇异值都至少是 $W_0$ 最大奇异值的两倍。请预测算法 1($k = 10$,$\varepsilon = 0.5$)会找到多少个入侵维度,写成
# $r$ 的函数——由此也就知道秩增大时计数往哪边走。检验把秩为 1、3、5、12 和 20 的更新植入第 1 节的玩具 $W_0$。

# %%
def my_planted_count(r, k):
    """The number of intruders among the top k for a planted rank-r update of new, dominant directions."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_planted_count(r, k):
    return min(r, k)            # 每个占主导的新方向都是一个入侵维度,但只检查前 k 个


# %%
def check_planted_count(answer):
    for r in (1, 3, 5, 12, 20):
        found = intruder_dimensions(W0_toy, W0_toy + planted_update(W0_toy, r, 2.0, seed=1), k=K, eps=0.5,
                                    layout="out_in")["count"]
        print(f"rank {r:>2}: Algorithm 1 finds {found}, you predicted {answer(r, K)}")
        assert answer(r, K) == found


exercise("Exercise 2 (rank and count)", check_planted_count, my_planted_count, solution_planted_count)

# %% [markdown]
# **练习 3——在 minift 的布局下手写缓解办法。** 给定按 minift 方式存放($[\text{in}, \text{out}]$)的 $W_0$ 和 $W_t$,
# 返回同样布局的 $W'$,其中入侵维度的奇异值乘以 `lam`:在论文的 $[\text{out}, \text{in}]$
# 布局下,$W' = W_t + (\lambda - 1)\sum_{j\in\text{入侵维度}} \sigma_j u_j v_j^\top$。注意哪些奇异向量才是输出空间的。
# 检验会在一个植入的玩具矩阵和入侵维度最多的那个微调矩阵(第 5 节的检验)上与 `scale_intruders` 比较。

# %%
def my_scale_intruders(W0, Wt, k, eps, lam):
    """Wt [in, out] with the singular values of its intruders (Algorithm 1, output space) scaled by lam."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_scale_intruders(W0, Wt, k, eps, lam):
    A0, At = W0.T.astype(np.float64), Wt.T.astype(np.float64)                # 论文的 [out, in]
    U0 = np.linalg.svd(A0, full_matrices=False)[0]
    U, S, Vt = np.linalg.svd(At, full_matrices=False)
    idx = np.flatnonzero(np.abs(U[:, :k].T @ U0).max(axis=1) < eps)          # 前 k 个中的入侵维度
    new = At + (U[:, idx] * ((lam - 1) * S[idx])) @ Vt[idx]                  # (out, in)
    return new.T.astype(Wt.dtype)                                            # 转回 [in, out]


# %%
def check_scale_intruders(answer):
    cases = {"toy, rank-3 planted": (W0_toy.T, (W0_toy + planted_update(W0_toy, 3, 2.0, seed=2)).T),
             f"{label_m} {name_m}": (W0[name_m], runs[label_m]["W"][name_m])}
    for name, (w0, wt) in cases.items():
        ref = scale_intruders(w0, wt, k=K, eps=0.5, lam=0.5)
        mine = answer(w0, wt, K, 0.5, 0.5)
        err = np.abs(np.asarray(mine, dtype=np.float64) - ref).max() / np.abs(ref).max()
        print(f"{name}: max relative difference from scale_intruders {err:.1e}")
        assert mine.shape == wt.shape and err < 1e-5


exercise("Exercise 3 (mitigation by hand)", check_scale_intruders, my_scale_intruders, solution_scale_intruders)


# %% [markdown]
# **练习 4——回放。** 第 7 节的模型丢掉任务 0,是因为阶段 1 从没给它们看过一个任务 0 的问题。最简单的补救就是给它们看几个:
# 阶段 $k$ 在任务 $k$ 的样本之外,再加上一些早先任务的样本。写出 `my_replay_lines(k, share, rng)`:阶段 $k$
# 训练文件的各行——先是任务 $k$ 的 `train.jsonl` 的每一行,后面接上从任务 $0 … k-1$ 的全部训练行中不放回抽取(`rng.choice`)
# 的 `round(share × n)` 行,$n$ 是任务 $k$ 的行数。先预测一下:回放 10% 时,任务 0 的损失能回来多少?检验会把你的阶段
# 1 任务写成文件,在它上面把第 7 节 LoRA r=8 的阶段 0 模型同样训练 200 步,再把任务 0 和任务 1 的测试损失与第 7 节的阶段
# 1 比较,两者都打印出来;正常模式下,任务 0 的损失必须回落 1 nat 以上,而任务 1 的损失最多上升 0.3。

# %%
def my_replay_lines(k, share, rng):
    """Task k's training lines, then round(share * their number) lines drawn from tasks 0..k-1's training lines."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_replay_lines(k, share, rng):
    new = (TASKS[k] / "train.jsonl").read_text().splitlines()
    earlier = [line for j in range(k) for line in (TASKS[j] / "train.jsonl").read_text().splitlines()]
    drawn = rng.choice(len(earlier), size=round(share * len(new)), replace=False)
    return new + [earlier[i] for i in drawn]


# %%
def check_replay(answer, share=0.1):
    new = (TASKS[1] / "train.jsonl").read_text().splitlines()
    earlier = set((TASKS[0] / "train.jsonl").read_text().splitlines())
    lines = answer(1, share, np.random.default_rng(0))
    extra = lines[len(new):]
    assert lines[:len(new)] == new and len(extra) == round(share * len(new)), (len(lines), len(new))
    assert set(extra) <= earlier and len(set(extra)) == len(extra), "replayed lines: task 0's, each once"
    folder = out_dir("continual", "task1-replay")
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    for split in ("validation", "test"):
        (folder / f"{split}.jsonl").write_text((TASKS[1] / f"{split}.jsonl").read_text())
    cfg = dataclasses.replace(stage_config(CL_PLAN["lora r=8"], 1), task=str(folder))   # 阶段 1,加上回放
    tuned, lora, _ = finetune(seq["lora r=8"][0]["model"], tok, cfg, progress=False)
    loss = [split_metrics(lora.merged_model(), t, tok, 128)["loss"] for t in TESTS[:2]]
    before = seq["lora r=8"][1]["loss"][:2]
    smoke()
    print(f"{len(extra)} task-0 examples among {len(lines)}: task 0 loss {before[0]:.2f} → {loss[0]:.2f}, "
          f"task 1 loss {before[1]:.2f} → {loss[1]:.2f} (section 7's stage 1 → with replay)")
    assert np.all(np.isfinite(loss))
    if not FAST:                                     # 只在完整规模下(快速模式:10 步)
        assert loss[0] < before[0] - 1.0 and loss[1] < before[1] + 0.3, (before, loss)


exercise("Exercise 4 (replay)", check_replay, my_replay_lines, solution_replay_lines)
