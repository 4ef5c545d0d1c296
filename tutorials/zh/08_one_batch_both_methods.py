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
# # 08 · 同一批数据走两种方法:逐个张量对照
#
# **原文:** §4.1 完全微调与LoRA的异同点:
#
# > 这两种方法虽然都旨在将预训练模型适配到特定的下游任务,但它们在参数更新、计算成本和模型性能等方面有着明显的区别。
# > …… 完全微调涉及对预训练模型的所有参数进行更新。…… 相比之下,LoRA仅对预训练模型的部分参数进行微调,通过引入低秩矩阵
# > ( A ) 和 ( B ),使得新的权重矩阵 ( W' ) 可以表示为 ( W' = W + AB^T )。…… 而LoRA通过引入低秩矩阵,显著减少了计算资源
# > 的需求。
#
# 原文列出了三方面的区别;本教程从同一个状态出发,把情感分析任务的**同一批**数据分别送进两种方法,
# 逐个矩阵地把这三方面都测一遍。原文有两处说得不严谨(LoRA 论文,Hu et al. 2021,arXiv 2106.09685,说法不同):LoRA
# 其实不微调预训练模型的*任何*参数——$W$ 始终冻结,训练的是新引入的 $A$ 和 $B$——可 LoRA 的一步却会改动有效权重
# $W + \Delta W$ 的*每一个*元素;LoRA 省下的计算是反向传播中每个线性层的一次矩阵乘法,并不是样样都"显著"减少(第 7 节)。
#
# **你将学到**
# 1. 怎样从*一次*反向传播同时拿到完全微调的梯度 $G = \partial L/\partial W$ 和 LoRA 的 $dA$、
#    $dB$(`minift.measure.lens.full_and_lora_grads`),以及为什么这里的 $G$ 恰好就是完全微调的梯度;
# 2. 在 minift 的 GPT-2 布局 $[\text{in}, \text{out}]$(以及 PEFT 的布局)下推导并验证 $dB = s\,G^\top A^\top$ 和
#    $dA = s\,B^\top G^\top$,float64 下精确到 $10^{-13}$;
# 3. LoRA 的第一步做了什么($B = 0 \Rightarrow dA = 0$:只有 $B$ 在动);
# 4. 对 $A$、$B$ 走一步 SGD 会让 $W$ 怎样变:精确值、一阶近似和 $\eta^2$ 项,以及它的秩($\le 2r$);
# 5. LoRA 跟随了完全微调下降方向的多少($\cos(\Delta W, -G)$、损失的降幅),$G$ 有多少落在 LoRA 的子空间里,以及任何秩为 $r$
#    的更新最多能装下多少(Eckart–Young);
# 6. 两种方法的反向传播各做哪些矩阵乘法、由形状算出的 FLOPs,以及各自更新多少参数;
# 7. 在命令行用 `minift inspect` 读出同一张表。
#
# **用时:** 阅读约 40 分钟。正常模式运行 10–30 秒(float64 下 50 步 LoRA 预热训练、透镜分析(`lens`),以及自带 20 步训练的
# `minift inspect`:实测 13 秒),快速模式(`MINIFT_FAST=1`:分别为 10 步和 2 步)约 6 秒(实测 5.8 秒);均设
# `OPENBLAS_NUM_THREADS=1`,在与其他任务共用的 2 个 CPU 核上测得。快速模式只是冒烟测试,而且看的是另一批数据,
# 所以它的数字与正文描述的正常模式不同。
#
# **前置:** 教程 02(线性层的反向计算;[中文版](02_backprop_by_hand.py))、05(任务与分类头;
# [中文版](05_finetuning_basics.py))、07(LoRA 的记号、$s = \alpha/r$、`lora_forward` / `lora_backward`;
# [中文版](07_lora_from_scratch.py))。核心课程的[核心 04](../core/zh/04_one_batch_both_methods.py)是本篇的精简版。
# 英文原版:[08_one_batch_both_methods.py](../08_one_batch_both_methods.py)。

# %%
import contextlib
import io
import math

import matplotlib.pyplot as plt
import numpy as np

from minift.app.tutorial import FAST, exercise, pick, show
from minift import LoRAConfig, attach_lora
from minift.app.cli import main as minift_main
from minift.base import load_base
from minift.data import task_source
from minift.measure.bench import count_flops
from minift.measure.lens import activations, format_module, full_and_lora_grads, gradient_from_record, lens, lora_step
from minift.optim import SGD
from minift.training.finetune import load_task_splits
from minift.training.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode")
base, tok = load_base(dtype="float64")                  # float64:下面的恒等式因此精确到 ~1e-15
train_split, _, _ = load_task_splits("sentiment")
lcfg = LoRAConfig(r=8, alpha=64, targets="all-linear")   # s = α/r = 8,全部参数共用一个学习率(教程 07 第 6 节)
ETA = 1e-2                                               # 我们考察的普通 SGD 一步的 η(透镜的默认值)

# %% [markdown]
# ## 1. 一次反向传播,两种梯度
#
# 取随附的基座模型,加上教程 05 的分类头,挂上 LoRA($r = 8$,$\alpha = 64$,挂在 4 个块的全部四个线性层上,
# 共 16 个被适配的矩阵;$s = 8$ 时适配器和分类头可以共用一个学习率,见教程 07 第 6 节),再用 AdamW 训几步,让
# $B \ne 0$($B = 0$ 时,下面有一半的量都平凡地为零;第 3 节会专门看这种情形)。然后取训练数据的**下一批**,对每个被适配的
# $W$ 问:完全微调在这里会用什么梯度?LoRA 的 $A$ 和 $B$ 又各自拿到什么?
#
# 带适配器的线性层用有效权重 $W_\text{eff} = W + s\,A^\top B^\top$ 计算(minift 的 $[\text{in}, \text{out}]$ 布局,
# 教程 07)。损失只通过 $W_\text{eff}$ 依赖 $W$,而 $\partial W_\text{eff}/\partial W$ 是恒等映射,所以
#
# $$G \;=\; \frac{\partial L}{\partial W} \;=\; \frac{\partial L}{\partial W_\text{eff}} \;=\; x^\top dy
# \quad [I, O],$$
#
# 其中 $x$ $[N, I]$ 是线性层的输入,$dy$ $[N, O]$ 是其输出在本批 $N$ 个 token 位置上的梯度(16 条评论 × $T$ 个 token,
# 含填充):这正是对合并后的模型做完全微调时会算出的梯度。`full_and_lora_grads` 在一次反向传播中临时解冻 $W$,
# 于是被适配的线性层在 $dA$、$dB$ 之外还交出 $dW = G$——来自同一个 $dy$。**布局:** $G$ 采用 GPT-2 的 Conv1D 布局
# $[\text{in}, \text{out}]$($y = xW + b$),与 `model.params` 一致;PEFT 和 PyTorch `nn.Linear` 的布局
# $[\text{out}, \text{in}]$ 存的是 $G^\top$。

# %%
model = base.to()
model.add_classification_head(train_split.label_names, seed=0)
plain = model.to()                                       # 基座 + 分类头,不挂适配器:供第 3 节和练习使用
lora = attach_lora(model, lcfg, seed=0)
source = task_source(train_split, tok, max_len=128, batch_size=16, seed=0)
warm = train(model, source, TrainConfig(steps=pick(50, 10), batch_size=16, lr=1e-3, warmup=0, schedule="constant"),
             progress=False)
batch = source.next_batch()                              # 本教程看的就是这一批数据
Bsz, T = batch["input_ids"].shape
N = Bsz * T                                              # 每次矩阵乘法覆盖的 token 位置数(含填充)
loss, grads = full_and_lora_grads(model, lora, batch)
m0 = "h.0.attn.c_attn"
if FAST:
    print(SMOKE)
print(f"{warm.steps_done} LoRA warm-up steps (AdamW, lr 1e-3), loss {warm.history[0]['loss']:.3f} → "
      f"{warm.history[-1]['loss']:.3f}; this batch: {Bsz} reviews × {T} tokens, loss {loss:.4f}")
print(f"{m0}: W {model.params[m0 + '.weight'].shape} [in, out]; G {grads[m0 + '.weight'].shape}, "
      f"dA {grads[m0 + '.lora_A.weight'].shape} [r, in], dB {grads[m0 + '.lora_B.weight'].shape} [out, r]")

# %% [markdown]
# 预热训练打印的损失是单个批次上的值,噪声很大;这里要的只是 $B$ 已经动过。
#
# **检验。** (a) $G$ 就是完全微调的梯度:把 $W_\text{eff}$ 写进模型的一个普通副本(即 `lora.merge()` 的结果),
# 不冻结任何参数,单独做一次完全微调的反向传播,得到的 $dW$ 与 $G$ 相同——相对误差在 $10^{-9}$ 以内,因为那次前向传播是先把
# $W + \Delta W$ 加好,而不是在 $xW$ 上再加旁路(舍入误差 ~$10^{-13}$)。(b) 由记录下的激活值(`activations`、
# `gradient_from_record`)重建 $G = x^\top dy$,吻合到 $10^{-12}$。(c) 普通的 LoRA 前向、反向传播(`loss_and_grads`,$W$
# 冻结)给出逐位相同的 $dA$ 和 $dB$,而任何被适配的 $W$ 都**没有**梯度:它的 $x^\top dy$ 根本没有算。

# %%
full = model.to()                                        # 普通副本:基座参数、分类头,不挂适配器
for name, w_eff in lora.effective_weights().items():
    full.params[name][...] = w_eff                       # W + ΔW,与 merge() 写入的相同
full.frozen = set()                                      # 完全微调:所有参数都训练
full_loss, full_grads = full.loss_and_grads(**batch)
record = activations(model, batch)                       # LoRA 的一次前向、反向传播:每个激活值及其梯度
lora_loss, lora_grads = model.loss_and_grads(**batch)    # 普通的 LoRA 前向、反向传播
err_merged = max(np.abs(grads[m + ".weight"] - full_grads[m + ".weight"]).max()
                 / np.abs(full_grads[m + ".weight"]).max() for m in lora.modules)
err_record = max(np.abs(grads[m + ".weight"] - gradient_from_record(record, m)).max()
                 / np.abs(grads[m + ".weight"]).max() for m in lora.modules)
same_lora = all(np.array_equal(grads[k], lora_grads[k]) for k in lora_grads)
print(f"loss: lens pass {loss:.12f}, full fine-tuning copy {full_loss:.12f}, LoRA pass {lora_loss:.12f}")
print(f"G vs full fine-tuning's dW: max rel. error {err_merged:.1e}; G vs xᵀdy from the record: {err_record:.1e}")
print(f"LoRA pass: {len(lora_grads)} gradient tensors ({len(lora.params)} adapter tensors + the head), dA and dB "
      f"bitwise equal to the lens's: {same_lora}; adapted W among them: "
      f"{sum(m + '.weight' in lora_grads for m in lora.modules)}")
assert not any(not a.B.any() for a in lora.adapters.values())          # 每个适配器的 B 都 ≠ 0
assert abs(full_loss - loss) < 1e-12 and abs(lora_loss - loss) < 1e-12
assert err_merged < 1e-9 and err_record < 1e-12 and same_lora
assert set(lora_grads) == set(lora.params) | {"score.weight"}

# %% [markdown]
# ## 2. LoRA 的梯度,就是透过 $A$ 和 $B$ 看到的 $G$
#
# 带适配器的线性层(不开 dropout)是 $y = xW + b + s\,h B^\top$,其中 $h = x A^\top$ $[N, R]$。对每个乘积套用链式法则(教程
# 02 的线性层规则),再代入 $x^\top dy = G$:
#
# $$dB = s\, dy^\top h = s\, dy^\top x A^\top = s\,(x^\top dy)^\top A^\top = s\, G^\top A^\top
# \quad [O, I]\,[I, R] = [O, R],$$
#
# $$dA = s\,(dy\, B)^\top x = s\, B^\top dy^\top x = s\, B^\top G^\top \quad [R, O]\,[O, I] = [R, I].$$
#
# 在 PEFT 的布局下($G_\text{peft} = G^\top$ $[O, I]$),同样的恒等式写作 $dB = s\,G_\text{peft}A^\top$ 和
# $dA = s\,B^\top G_\text{peft}$。所以 LoRA 看到的只有完全微调的梯度:$dB$ 是沿 $A$ 的各行($r$ 个输入方向)读出的 $G$,$dA$
# 是沿 $B$ 的各列($r$ 个输出方向)读出的 $G$。$G$ 在这些方向之外的部分,这一步传不到适配器。

# %%
report = lens(model, lora, batch, lr=ETA)                # 第 2–6 节的所有量,全部 16 个矩阵
s, r = report.scale, report.r
ident = {}
for m, t in report.tensors.items():
    G, A, B = t["G"], t["A"], t["B"]                     # (I, O), (R, I), (O, R), float64
    ident[m] = (np.abs(t["dB"] - s * G.T @ A.T).max() / np.abs(t["dB"]).max(),      # dB = s Gᵀ Aᵀ
                np.abs(t["dA"] - s * B.T @ G.T).max() / np.abs(t["dA"]).max())      # dA = s Bᵀ Gᵀ
t0 = report.tensors[m0]
G_peft = np.ascontiguousarray(t0["G"].T)                # (O, I) PEFT 的 nn.Linear 布局;A、B 也这样存
peft_dB = s * G_peft @ t0["A"].T                         # (O, R) s · G_peft Aᵀ
peft_dA = s * t0["B"].T @ G_peft                         # (R, I) s · Bᵀ G_peft
print(f"s = α/r = {s:g}, r = {r}")
print("max relative error over the 16 matrices: dB vs s·GᵀAᵀ "
      f"{max(e[0] for e in ident.values()):.1e}, dA vs s·BᵀGᵀ {max(e[1] for e in ident.values()):.1e}; "
      f"the lens's own id.err column: {report.overall['max_identity_err']:.1e}")
print(format_module(report, m0).split("  singular values")[0])

# %% [markdown]
# 上面的详情(`format_module`,即 `minift inspect --module h.0.attn.c_attn` 打印的内容)先给出 $G$ 的左上角,再把 $dA$ 和
# $s\,B^\top G^\top$、$dB$ 和 $s\,G^\top A^\top$ 上下对照:数字一位不差。它打印的数值秩和有效秩表明,$G$
# 是满秩的(数值秩达到上限 128),但奇异值下降得很快:有效秩只是满秩的一小部分(第 6 节)。
#
# **检验。** 两个恒等式在每个矩阵中的相对误差都小于 $10^{-13}$(float64 下它们只是把同一次反向传播里的乘积换了个顺序,
# 舍入误差 ~$10^{-15}$),在 PEFT 的布局下也一样。同一个模型、同样的因子换成 float32,误差是 ~$10^{-6}$(float32 的舍入误差
# $\epsilon = 1.2\times 10^{-7}$,在几百项的求和中累积;检验要求它介于 $10^{-9}$ 与 $10^{-5}$ 之间)——这就是本教程用
# float64 的原因(下面是一个 $A$、$B$ 相同的 float32 副本)。另外,`h.0.attn.c_attn` 的 $G$ 满秩,有效秩却不到一半。

# %%
model32 = plain.to(dtype="float32")
lora32 = attach_lora(model32, lcfg, seed=0)
for m, a in lora32.adapters.items():
    a.A[...], a.B[...] = lora.adapters[m].A, lora.adapters[m].B                   # 训练好的因子,舍入到 float32
report32 = lens(model32, lora32, batch, lr=ETA)
print(f"float32: identity error {report32.overall['max_identity_err']:.1e} (float64: "
      f"{report.overall['max_identity_err']:.1e})")
assert max(max(e[0], e[1]) for e in ident.values()) < 1e-13
assert report.overall["max_identity_err"] < 1e-13
assert 1e-9 < report32.overall["max_identity_err"] < 1e-5
assert np.allclose(peft_dB, t0["dB"], rtol=0, atol=1e-13) and np.allclose(peft_dA, t0["dA"], rtol=0, atol=1e-13)
assert report.row(m0).g_rank == 128 and report.row(m0).g_erank < 64

# %% [markdown]
# ## 3. 第一步:$B = 0$,所以 $dA = 0$,只有 $B$ 在动
#
# 刚挂上适配器时 $B = 0$(PEFT 的初始化,教程 07),恒等式立刻给出
#
# $$dA = s\,B^\top G^\top = 0, \qquad dB = s\,G^\top A^\top \ne 0, \qquad
# \Delta W_\text{step} = s\,A^\top(-\eta\, dB)^\top = -\eta\, s^2 A^\top A\, G .$$
#
# 第一步恰好是一阶的($dA = 0$ 时没有 $\eta^2\,dA^\top dB^\top$ 项),它就是透过 $A^\top A$ 看到的完全微调那一步 $-\eta G$:
# 只有落在 $A$ 的 $r$ 维行空间里的那部分 $G$ 留了下来。$A$ 是随机的(Kaiming 均匀分布),所以它的行空间是 $I$
# 维输入空间中一个随机的 $r$ 维子空间,应当装下 $\lVert G\rVert^2$ 的约 $r/I$(随机子空间没有偏好的方向,
# 所以投影矩阵的期望是 $\mathbb E[P] = \tfrac{r}{I}\,\mathbb 1$,于是 $\mathbb E\lVert PG\rVert^2 = \tfrac{r}{I}\lVert
# G\rVert^2$),即份额 $\lVert P_\text{in} G\rVert / \lVert G\rVert \approx \sqrt{r/I}$——多数矩阵是 $\sqrt{8/128} = 0.25$,
# `mlp.c_proj` 是 $\sqrt{8/512} = 0.125$。

# %%
model0 = plain.to()
lora0 = attach_lora(model0, lcfg, seed=0)                # 全新的适配器:B = 0
report0 = lens(model0, lora0, batch, lr=ETA)
if FAST:
    print(SMOKE)
print(f"at init: report0.at_init = {report0.at_init}; loss {report0.loss:.4f} (the base with its head)")
print(f"{'module':<18} {'‖dA‖':>6} {'‖dB‖':>9} {'tangent':>8} {'√(r/I)':>7} {'cos':>6}")
for row in report0.rows:
    print(f"{row.module:<18} {row.dA_norm:>6.1f} {row.dB_norm:>9.2e} {row.share_tangent:>8.3f} "
          f"{math.sqrt(r / row.shape[0]):>7.3f} {row.cos_first:>6.3f}")

# %% [markdown]
# `tangent` 是 $A$、$B$ 的任意微小变化所能触及的 $G$ 的份额(第 6 节);初始化时只有 $B$ 能动,所以它等于
# $\lVert P_\text{in} G\rVert/\lVert G\rVert$,与随机子空间的估计 $\sqrt{r/I}$ 接近。`cos` 是
# $\cos(\Delta W_\text{step}, -G)$,和 tangent 差不多,因为 $A^\top A$
# 在它的行空间上的作用大致相当于单位矩阵的一个倍数(宽随机矩阵的奇异值铺满 Marchenko–Pastur 区间
# $\propto 1 \pm \sqrt{r/I}$,这里是 $1 \pm 0.25$:随机的 $8\times 128$ 矩阵 $A$,最大奇异值至多约为最小的
# $1.25/0.75 \approx 1.7$ 倍,所以 $A^\top A$ 在行空间上的特征值彼此相差不超过约 $2.8\times$——"大致"就是这个意思)。所以
# LoRA 的第一步大约只跟随了完全微调方向的四分之一(`mlp.c_proj` 是八分之一,$I = 512$),不管数据如何——对照上面打印的 `cos`
# 和 `√(r/I)` 两列:跟随的是哪个四分之一,由随机的 $A$ 决定。
#
# **检验。** 每个 $dA$ 都恰好为零(不只是很小),每个 $dB$ 都不为零;精确的一步等于一阶的一步,与 $-\eta s^2 A^\top A G$
# 的误差在 $10^{-12}$ 以内;span 份额为 0($\Delta W = 0$,还什么都没张成);tangent 份额的表现符合随机子空间的预期:每个都在
# $\sqrt{r/I}$ 的 2.5 倍范围内(一批数据的 $G$ 由少数几个方向主导,随机的 $r$ 维子空间能接住多少会有起伏:对秩为 1 的 $G$,
# $\lVert P_\text{in}G\rVert^2/\lVert G\rVert^2$ 是 $\chi^2_r$ 变量除以 $I$,相对离散度为 $\sqrt{2/r} = 0.5$),并且
# $\lVert P_\text{in}G\rVert^2/\lVert G\rVert^2 \div (r/I)$ 在 16 个矩阵上的平均值介于 0.6 与 1.4 之间。

# %%
for row in report0.rows:
    t = report0.tensors[row.module]
    assert row.b_zero and not t["dA"].any() and t["dB"].any()
    ref = -ETA * s ** 2 * t["A"].T @ t["A"] @ t["G"]                                # (I, O)
    assert np.abs(t["delta_exact"] - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.array_equal(t["delta_exact"], t["delta_first_order"]) or row.second_order_gap < 1e-15
    assert row.share_span == 0.0
    assert 0.4 < row.share_tangent / math.sqrt(r / row.shape[0]) < 2.5, row
energy = [row.share_tangent ** 2 / (r / row.shape[0]) for row in report0.rows]     # ‖P_in G‖²/‖G‖² ÷ (r/I)
print(f"‖P_in G‖²/‖G‖² ÷ (r/I): mean {np.mean(energy):.2f} over the 16 matrices "
      f"(min {min(energy):.2f}, max {max(energy):.2f})")
assert 0.6 < np.mean(energy) < 1.4
assert report0.at_init and not report.at_init

# %% [markdown]
# ## 4. 对 $A$ 和 $B$ 走一步 SGD,$W$ 怎样变
#
# 完全微调对 $W$ 的 SGD 一步是 $-\eta G$。LoRA 的一步是 $A_+ = A - \eta\,dA$、$B_+ = B - \eta\,dB$,有效权重的变化为
#
# $$\Delta W_\text{step} = s\,(A_+^\top B_+^\top - A^\top B^\top)
# = \underbrace{-\eta\, s\,(dA^\top B^\top + A^\top dB^\top)}_{\Delta W_1\ \text{(一阶)}}
# \;+\; \underbrace{\eta^2 s\, dA^\top dB^\top}_{\text{二阶}} \quad [I, O].$$
#
# 在 PEFT 的布局下,这就是 $s\,((B - \eta\,dB)(A - \eta\,dA) - BA) = -\eta s\,(dB\,A + B\,dA) + \eta^2 s\,dB\,dA$。代入第
# 2 节的恒等式,
#
# $$\Delta W_1 = -\eta\, s^2\,(A^\top A\, G + G\, B B^\top):$$
#
# 即完全微调的梯度左右各乘一个半正定矩阵:输入侧乘 $A^\top A$,输出侧乘 $BB^\top$。它的秩至多为 $2r$(精确的一步也一样:
# 它是两个秩为 $r$ 的乘积之差),可它是个稠密矩阵——$W_\text{eff}$ 的每个元素都在变。
#
# `lens` 用 `lora_step` 算出精确的一步和一阶近似的一步。我们还会实际走一步:用 `minift.optim.SGD` 更新适配器参数,
# 再重新读取 `lora.effective_weights()`。

# %%
t = report.tensors[m0]
exact, first = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, ETA)                # (I, O), (I, O)
exact_half, first_half = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, ETA / 2)
saved = {k: v.copy() for k, v in lora.params.items()}
before = {k: v.copy() for k, v in lora.effective_weights().items()}
SGD(lora.params, lr=ETA, momentum=0.0).step(lora_grads)                           # A ← A − η dA, B ← B − η dB
moved = {k: v - before[k] for k, v in lora.effective_weights().items()}           # W + ΔW 的真实变化
for k, v in saved.items():
    lora.params[k][...] = v                                                       # 把 A 和 B 恢复原样
gap, gap_half = np.linalg.norm(exact - first), np.linalg.norm(exact_half - first_half)
row0 = report.row(m0)
if FAST:
    print(SMOKE)
print(f"{m0}: ‖ηG‖ = {ETA * row0.g_norm:.3e} (full fine-tuning's step), ‖ΔW_step‖ = {row0.delta_norm:.3e} "
      f"(LoRA's), ratio {row0.step_ratio:.2f}")
print(f"  second-order part ‖η² s dAᵀdBᵀ‖/‖ΔW_step‖ = {row0.second_order_gap:.1e}; at η/2 the gap is "
      f"{gap_half / gap:.4f} of the gap at η")
print(f"  rank of ΔW_step: {np.linalg.matrix_rank(exact)} (≤ 2r = {2 * r}); entries that change: "
      f"{np.count_nonzero(exact):,} of {exact.size:,}")
print("  ‖ΔW_step‖/‖ηG‖ over the 16 matrices: " + " ".join(f"{row.step_ratio:.1f}" for row in report.rows))

# %% [markdown]
# 看上面打印的数字:同样的 $\eta$ 下,LoRA 的一步比完全微调的*长*好几倍,每个矩阵都是如此。$\Delta W_1$ 是 $G$ 乘上
# $s^2 A^\top A$ 和 $s^2 BB^\top$;$s^2 = 64$ 时,这两个映射对保留下来的那部分 $G$ 的放大,超过了丢掉其余部分造成的缩短。
# (这也是 LoRA 要有自己的学习率和缩放系数的原因之一:教程 07 第 6 节。)在这个 $\eta$ 下,二阶项远不到这一步的 1%,$\eta$
# 减半,它就缩小为四分之一。这一步的秩为 $2r = 16$,改动了全部 $128 \times 384 = 49{,}152$ 个元素。
#
# **检验。** (a) 在每个矩阵中,真实的 SGD 一步让 $W_\text{eff}$ 改变了 `delta_exact`,相对误差在 $10^{-12}$ 以内;(b)
# $\Delta W_1 = -\eta s^2 (A^\top A G + G BB^\top)$,误差在 $10^{-12}$ 以内;(c) 精确值减一阶近似
# $= \eta^2 s\,dA^\top dB^\top$,误差在 $10^{-9}$ 以内(这是两个几乎相等的数之差),而且 $\eta/2$ 处的差距是 $\eta$ 处的
# $1/4$,误差在 $10^{-6}$ 以内;(d) 秩恰好为 $2r$,每个元素都不为零;(e) 每个矩阵中这一步都比 $\eta G$ 长(比值大于
# 2),`h.0.attn.c_attn` 的二阶部分不到 1%。

# %%
for m, t in report.tensors.items():
    real = moved[m + ".weight"]
    assert np.abs(real - t["delta_exact"]).max() <= 1e-12 * np.abs(real).max(), m
    ref = -ETA * s ** 2 * (t["A"].T @ t["A"] @ t["G"] + t["G"] @ t["B"] @ t["B"].T)
    assert np.abs(t["delta_first_order"] - ref).max() <= 1e-12 * np.abs(ref).max(), m
    second = ETA ** 2 * s * t["dA"].T @ t["dB"].T
    assert np.abs(t["delta_exact"] - t["delta_first_order"] - second).max() <= 1e-9 * np.abs(second).max(), m
assert abs(gap_half / gap - 0.25) < 1e-6
assert np.linalg.matrix_rank(exact) == 2 * r and np.count_nonzero(exact) == exact.size
assert all(np.array_equal(v, saved[k]) for k, v in lora.params.items())            # A 和 B 已恢复
assert all(row.step_ratio > 2 for row in report.rows) and row0.second_order_gap < 0.01

# %% [markdown]
# ## 5. 方向:LoRA 跟随了完全微调的下降方向多少
#
# 一阶近似下,一步更新 $\Delta W$ 让本批数据的损失变化 $\langle G, \Delta W\rangle = \operatorname{tr}(G^\top \Delta
# W)$。完全微调那一步给出 $-\eta\lVert G\rVert^2$,是同样步长下的最速下降。LoRA 那一步给出
#
# $$\langle G, \Delta W_1\rangle = -\eta\, s^2\,\big(\lVert A G\rVert^2 + \lVert G B\rVert^2\big) \;\le\; 0,
# \qquad \cos(\Delta W_1, -G) = \frac{\eta s^2 (\lVert AG\rVert^2 + \lVert GB\rVert^2)}
# {\lVert \Delta W_1\rVert\,\lVert G\rVert} \;\ge\; 0 .$$
#
# 所以用普通 SGD 时,LoRA 的一步在这批数据上(一阶意义下)永远不会往上坡走(精确的一步还要加上 $\eta^2$ 项,Adam
# 则会逐个坐标重新缩放),但它跟随完全微调方向的程度,只有余弦说的那么多(完全微调自己的余弦是 1)。
# 我们拿这个预测去对照两种方法各走一步之后的真实损失:两边都只更新被适配的矩阵(分类头都不动,所以只比较更新中 $W$
# 的那一份),并取更小的 $\eta$,让一阶近似足够准确。

# %%
cos_hand = {}
for m, t in report.tensors.items():
    G, A, B = t["G"], t["A"], t["B"]
    num = ETA * s ** 2 * (np.linalg.norm(A @ G) ** 2 + np.linalg.norm(G @ B) ** 2)
    cos_hand[m] = num / (np.linalg.norm(t["delta_first_order"]) * np.linalg.norm(G))
eta_small = 1e-3
predicted = {"full": 0.0, "lora": 0.0}
full_step = full.to()
lora_small = {k: v.copy() for k, v in lora.params.items()}
for m, t in report.tensors.items():
    full_step.params[m + ".weight"][...] -= eta_small * t["G"]                        # 完全微调:W ← W − η G
    predicted["full"] -= eta_small * np.linalg.norm(t["G"]) ** 2
    exact_small, _ = lora_step(t["A"], t["B"], t["dA"], t["dB"], s, eta_small)
    predicted["lora"] += float((t["G"] * exact_small).sum())                          # ⟨G, ΔW_step⟩
SGD(lora.params, lr=eta_small, momentum=0.0).step({k: lora_grads[k] for k in lora.params})
actual = {"full": full_step.loss(**batch) - loss, "lora": model.loss(**batch) - loss}
for k, v in lora_small.items():
    lora.params[k][...] = v                                                           # 把 A 和 B 恢复原样
if FAST:
    print(SMOKE)
print("cos(ΔW₁, −G) per matrix: " + " ".join(f"{row.cos_first:.2f}" for row in report.rows))
print(f"all 16 matrices as one vector: cos {report.overall['cos_first']:.3f} (first order), "
      f"{report.overall['cos_exact']:.3f} (exact step)")
for k in ("full", "lora"):
    print(f"loss change after one SGD step, η = {eta_small:g}, {k:>4}: predicted ⟨G, ΔW⟩ = {predicted[k]:+.3e}, "
          f"measured {actual[k]:+.3e}")
print(f"LoRA's step lowered this batch's loss {actual['lora'] / actual['full']:.2f} times as much as full "
      "fine-tuning's, at the same η")

# %% [markdown]
# 读上面打印的余弦:LoRA 的一步跟随完全微调的下降方向,余弦在每个矩阵上、在 16 个矩阵合起来看时都远低于 1——
# 却又远高于随机水平(在 $128\times 384$ 的矩阵空间里,两个随机方向的 $|\cos| \approx 1/\sqrt{49152} \approx 0.005$)。
# 它照样降低了损失,而且在同样的 $\eta$ 下,每步的降幅与完全微调同一个量级(上面最后一行:比值取决于批次,
# 快速模式的批次给出的是另一个值),因为它的一步要长好几倍(第 4 节)。所以比较方向要看余弦,而不是看同样 $\eta$
# 下的损失降幅:后者取决于 $s$,也取决于每种方法各自怎样调 $\eta$。
#
# **检验。** 透镜给出的余弦与公式相差不超过 $10^{-10}$;每个余弦都 $\ge 0$ 且小于 1;在 $\eta = 10^{-2}$ 下,
# 一阶余弦与精确余弦相差不到 0.01;在 $\eta = 10^{-3}$ 下,两次实测的损失变化都为负,且与各自的一阶预测相差不到 5%。
# 正常模式下,每个余弦都在 0.1 与 0.5 之间(至少是随机水平的 20 倍),LoRA 的损失降幅与完全微调的相差在 3 倍以内。

# %%
for row in report.rows:
    assert abs(row.cos_first - cos_hand[row.module]) < 1e-10
    assert 0 <= row.cos_first < 1 and abs(row.cos_first - row.cos_exact) < 0.01
for k in ("full", "lora"):
    assert actual[k] < 0 and abs(actual[k] / predicted[k] - 1) < 0.05, (k, actual, predicted)
assert all(np.array_equal(v, lora_small[k]) for k, v in lora.params.items())
if not FAST:                                             # 这些范围对正常模式的批次成立
    assert all(0.1 < row.cos_first < 0.5 for row in report.rows) and 0.1 < report.overall["cos_first"] < 0.5
    assert 1 / 3 < actual["lora"] / actual["full"] < 3

# %% [markdown]
# ## 6. $G$ 在哪里:LoRA 的子空间与最优的秩 $r$ 子空间
#
# 设 $P_\text{in}$ 把 $\mathbb R^I$ 投影到 $A$ 的行空间,$P_\text{out}$ 把 $\mathbb R^O$ 投影到 $B$ 的列空间(标准正交基
# $Q_A$、$Q_B$:$P = QQ^\top$)。$\lVert G\rVert$ 的三个份额(Frobenius 范数):
#
# $$\text{span} = \frac{\lVert P_\text{in}\, G\, P_\text{out}\rVert}{\lVert G\rVert}, \qquad
# \text{tangent} = \frac{\lVert G - (1 - P_\text{in})\,G\,(1 - P_\text{out})\rVert}{\lVert G\rVert}, \qquad
# \text{best-}k = \frac{\lVert G_k\rVert}{\lVert G\rVert} = \sqrt{\frac{\sum_{i\le k}\sigma_i^2}
# {\sum_i \sigma_i^2}} .$$
#
# *span*:$G$ 落在 $\Delta W = s A^\top B^\top$ 当前所在的那对子空间里的部分。*tangent*:$A$ 和 $B$
# 的任意微小变化所能触及的部分($\Delta W_1$ 就在其中,所以 $\cos \le$ tangent)。*best-$k$*:设 $G = U\Sigma V^\top$,$G_k$
# 是它截断到前 $k$ 个奇异值的结果,Eckart–Young 定理说没有哪个秩为 $k$ 的矩阵比 $G_k$ 更接近 $G$,因此没有哪一对 $r$
# 维子空间能装下多于 best-$r$ 的 $G$:$P_\text{in} G P_\text{out}$ 的秩 $\le r$,又是 $G$ 的正交投影,由勾股定理
# $\lVert P_\text{in}GP_\text{out}\rVert^2 = \lVert G\rVert^2 - \lVert G - P_\text{in}GP_\text{out}\rVert^2 \le \lVert
# G\rVert^2 - \lVert G - G_r\rVert^2 = \lVert G_r\rVert^2$(span $\le$ best-$r$;切空间里的矩阵秩 $\le 2r$,所以 tangent
# $\le$ best-$2r$)。完全微调则完全不受限制:它的份额是 1。

# %%
by_hand = {}
for m, t in report.tensors.items():
    G = t["G"]
    sv = np.linalg.svd(G, compute_uv=False)                                         # (min(I, O),)
    QA, _ = np.linalg.qr(t["A"].T)                                                 # (I, R) A 的行空间的基
    QB, _ = np.linalg.qr(t["B"])                                                   # (O, R) B 的列空间的基
    span = np.linalg.norm(QA.T @ G @ QB) / np.linalg.norm(G)
    outside = G - QA @ (QA.T @ G)                                                  # (1 − P_in) G
    outside = outside - (outside @ QB) @ QB.T                                      # (1 − P_in) G (1 − P_out)
    tangent = math.sqrt(1 - (np.linalg.norm(outside) / np.linalg.norm(G)) ** 2)
    best = math.sqrt((sv[:r] ** 2).sum() / (sv ** 2).sum())
    by_hand[m] = (span, tangent, best, sv)
if FAST:
    print(SMOKE)
print(f"{'module':<18} {'erank':>6} {'rank':>5} {'cos':>6} {'span':>6} {'tangent':>8} {'best-r':>7} {'best-2r':>8}")
for row in report.rows:
    print(f"{row.module:<18} {row.g_erank:>6.1f} {row.g_rank:>5} {row.cos_first:>6.3f} {row.share_span:>6.3f} "
          f"{row.share_tangent:>8.3f} {row.share_best_r:>7.3f} {row.share_best_2r:>8.3f}")
o = report.overall
print(f"{'all matrices':<18} {'':>6} {'':>5} {o['cos_first']:>6.3f} {o['share_span']:>6.3f} "
      f"{o['share_tangent']:>8.3f} {o['share_best_r']:>7.3f} {o['share_best_2r']:>8.3f}")

# %% [markdown]
# 各列说明了什么(范围取自正常模式,下面会检验):
#
# - **best-$r$ 处处高于 0.9**:一批数据的 $G$ 由少数几个方向主导(有效秩 `erank` 从约 1 到几十不等,满秩为 128;
#   $\operatorname{erank} = \exp(-\sum_i p_i \ln p_i)$,其中 $p_i = \sigma_i/\sum_l \sigma_l$,见 Roy & Vetterli),
#   所以秩为 8 的更新*本可以*装下它的几乎全部。有些矩阵恰好是低秩的:块 3 的 `attn.c_proj`、`mlp.c_fc` 和 `mlp.c_proj` 的
#   `rank`(数值秩)是 16,因为 $G = x^\top dy = \sum_n x_n^\top dy_n$ 是每个 token 位置一个外积之和,而在最后一个块里,
#   只有分类头读取的那 16 个位置(每条评论一个)得到梯度(块 3 的 `attn.c_attn` 则满秩:之前每个位置的 key 和 value
#   都会流向这 16 个位置)。其余块的 `c_proj` 是 127 而不是 128:它们的输出汇入残差流,而残差流的梯度要经过 LayerNorm
#   的反向计算,后者会减去每一行的均值(LayerNorm 对输入的整体平移不敏感,$\mathrm{LN}(x + c\mathbf 1) = \mathrm{LN}(x)$,
#   所以它的 $dx$ 与 $\mathbf 1$ 正交)——于是 $G\,\mathbf 1 = 0$。
# - **span 处处低于 0.3**:LoRA 经过几步预热真正建起来的子空间,装不下多少*这一批*的梯度。**tangent** 从约四分之一到 0.8:
#   一步 LoRA 能触及的部分——比 span 多,因为两个因子都能转动。**cos** 在 tangent 之下,这是必然的。
# - 所以"模型性能"上的差别从这里开始:完全微调沿着 $G$ 本身走;LoRA 沿着 $G$ 在 $2r$ 个方向上的投影走,而这些方向是由 $A$
#   的随机初始化和之前的批次选定的。看 `all matrices` 一行:秩为 $r$ 的更新*本可以*装下 $G$ 的几乎全部(`best-r`),而秩为
#   $r$ 的 LoRA *一步*只跟随了它方向的一部分(`cos`)。
#
# 下图把这些份额并排画出,并针对一个矩阵比较完全微调那一步 $\eta G$ 与 LoRA 那一步的奇异值:LoRA 的谱到 $2r$ 就结束了。

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
names = [row.module[2:] for row in report.rows]                                    # "0.attn.c_attn"
pos = np.arange(len(report.rows))
for k, (key, label) in enumerate((("cos_first", "cos(ΔW₁, −G)"), ("share_span", "span"),
                                  ("share_tangent", "tangent"), ("share_best_r", "best rank-r"))):
    ax1.bar(pos + (k - 1.5) * 0.2, [getattr(row, key) for row in report.rows], 0.2, label=label)
ax1.set_xticks(pos, names, rotation=60, fontsize=8)
ax1.set_ylabel("share of ‖G‖ / cosine")
ax1.set_title(f"one batch, r = {r}: where full fine-tuning's gradient G lies")
ax1.legend(fontsize=8, ncol=4, loc="upper left")
ax1.set_ylim(0, 1.15)
sv_full = np.linalg.svd(ETA * report.tensors[m0]["G"], compute_uv=False)
sv_lora = np.linalg.svd(report.tensors[m0]["delta_exact"], compute_uv=False)
ax2.semilogy(np.arange(1, 41), sv_full[:40], "o-", ms=3, label="full FT step ηG")
ax2.semilogy(np.arange(1, 41), np.maximum(sv_lora[:40], 1e-20), "s-", ms=3, label="LoRA step ΔW_step")
for k, style in ((r, ":"), (2 * r, "--")):
    ax2.axvline(k + 0.5, color="gray", ls=style, lw=0.8)
ax2.set_ylim(sv_full[39] / 100, 2 * max(sv_full[0], sv_lora[0]))
ax2.set_xlabel("singular value index (dotted: r, dashed: 2r)")
ax2.set_title(f"{m0}: singular values of one step")
ax2.legend(fontsize=8)
show(fig, "08_shares")

# %% [markdown]
# **检验。** 上面用显式基(`np.linalg.qr`、`np.linalg.svd`)算出的份额与透镜给出的相差不超过 $10^{-10}$;每个矩阵中都有
# $0 \le \cos \le$ tangent $\le$ best-$2r$ 和 span $\le$ best-$r$(容差 $10^{-12}$);块 3 的两个 `c_proj` 和 `c_fc`
# 的数值秩 $\le$ 16(批量大小),每个 `c_proj` 的 $\lVert G\,\mathbf 1\rVert$ 只有 $\lVert G\rVert$ 的
# ~$10^{-15}$(块 0–2 的 `c_proj` 的秩恰好是 127);LoRA 那一步在第 $2r$ 个之后,没有一个奇异值超过其最大奇异值的
# $10^{-12}$。正常模式下,还检验上面列表中的范围:best-$r$ > 0.9,span < 0.3,tangent 介于 0.2 与 0.85 之间,erank
# 介于 1 与 40 之间;所有矩阵合起来看,best-$r$ > 0.9 且 cos < 0.5。

# %%
eps = 1e-12
for row in report.rows:
    span, tangent, best, sv = by_hand[row.module]
    assert abs(span - row.share_span) < 1e-10 and abs(tangent - row.share_tangent) < 1e-10
    assert abs(best - row.share_best_r) < 1e-10
    assert 0 <= row.cos_first <= row.share_tangent + eps <= row.share_best_2r + 2 * eps
    assert row.share_span <= row.share_best_r + eps
    if row.module.endswith("c_proj"):
        G = report.tensors[row.module]["G"]
        assert np.linalg.norm(G.sum(axis=1)) < 1e-12 * np.linalg.norm(G), row.module       # G·1 = 0
for m in ("h.3.attn.c_proj", "h.3.mlp.c_fc", "h.3.mlp.c_proj"):
    assert report.row(m).g_rank <= Bsz, m
assert sv_lora[2 * r] < 1e-12 * sv_lora[0]
assert all(row.g_rank == 127 for row in report.rows if row.module.endswith("c_proj") and row.module[2] != "3")
if not FAST:                                             # 正文引用的范围,对应正常模式的批次
    assert all(row.share_best_r > 0.9 and row.share_span < 0.3 and 0.2 < row.share_tangent < 0.85
               and 1 <= row.g_erank < 40 for row in report.rows)
    assert report.overall["share_best_r"] > 0.9 and report.overall["cos_first"] < 0.5

# %% [markdown]
# ## 7. 计算量:两种方法的反向传播各做哪些矩阵乘法
#
# 每个线性层 $[I, O]$,$N$ 个 token 位置(每次乘加计 2 FLOPs;这里 $N = 16 \times T$,含填充):
#
# | | 完全微调 | LoRA |
# |---|---|---|
# | 前向传播 | $xW$:$2NIO$ | $xW$:$2NIO$;$h = xA^\top$、$hB^\top$:$2NR(I+O)$ |
# | 反向传播到输入 | $dx = dy\,W^\top$:$2NIO$ | $dy\,W^\top$:$2NIO$;$dh = s\,dy\,B$、$dh\,A$:$2NR(O+I)$ |
# | 反向传播到权重 | $dW = x^\top dy$:$2NIO$ | $dB = s\,dy^\top h$、$dA = dh^\top x$:$2NR(O+I)$ |
# | 合计 | $6NIO$ | $4NIO + 6NR(I+O)$ |
#
# 冻结的 $W$ 照样要做前向传播和 $dx$;LoRA 省掉的是权重梯度 $x^\top dy$——三次大矩阵乘法中的一次,也就是第 1 节
# `full_and_lora_grads` 重新打开的那一次——同时要为适配器付出 $6NR(I+O)$。注意力里的 $QK^\top$ 和 $\text{att}\,V$
# 两次矩阵乘法(及其反向)在两种方法中完全一样。

# %%
rows_flops = []
for row in report.rows:
    I, O = row.shape
    rows_flops.append((row.module, I, O, 6 * N * I * O, 4 * N * I * O + 6 * N * r * (I + O)))
tot_full = sum(f for *_, f, _ in rows_flops)
tot_lora = sum(f for *_, f in rows_flops)
bench_full, bench_lora = count_flops(model.cfg, Bsz, T, "full", r), count_flops(model.cfg, Bsz, T, "lora", r)
for m, I, O, f_full, f_lora in rows_flops[:4]:
    print(f"{m:<18} [{I:>3}, {O:>3}]  full {f_full / 1e6:6.1f} MFLOP, LoRA {f_lora / 1e6:6.1f} MFLOP "
          f"({f_lora / f_full:.0%}); skipped xᵀdy {2 * N * I * O / 1e6:5.1f}, adapter {6 * N * r * (I + O) / 1e6:4.1f}")
print(f"all 16 linears: full {tot_full / 1e6:.0f} MFLOP, LoRA {tot_lora / 1e6:.0f} MFLOP ({tot_lora / tot_full:.1%})")
att = bench_full["attention"]
print(f"with attention ({att / 1e6:.0f} MFLOP in both): full {(tot_full + att) / 1e6:.0f}, "
      f"LoRA {(tot_lora + att) / 1e6:.0f} MFLOP per step ({(tot_lora + att) / (tot_full + att):.1%})")
print(f"minift.measure.bench.count_flops: linear {bench_full['linear'] / 1e6:.0f} (full) vs "
      f"{bench_lora['linear'] / 1e6:.0f} + adapters {bench_lora['lora'] / 1e6:.0f} (LoRA) MFLOP")

# %% [markdown]
# 所以在线性层的矩阵乘法上,LoRA 最多只能省 $1/3$(即 $x^\top dy$ 那一份),还要扣掉适配器的 $6NR(I+O)$:
# 在这个宽度为 128 的模型上取 $r = 8$,线性层的计算量是完全微调的 $(4\cdot 12C^2 + 6r\cdot 16C)/(6 \cdot 12C^2) =
# 75\%$(见上面打印的结果;$N$ 约掉了),整步的矩阵乘法占比还要略高一点。原文说"显著减少了计算资源的需求",在大规模下,
# 这句话用在内存上比用在 FLOPs 上更贴切:$W$ 既没有梯度,也没有优化器状态,LoRA 论文中 GPT-3 175B 的训练显存从 1.2 TB
# 降到 350 GB;而在 FLOPs 上,论文实测的吞吐量提升为 25%(论文 §4.2)。教程 09 在本项目里实测时间和内存:在这个规模上,LoRA
# 每步只快约 10–30%(README、教程 09)。(`count_flops` 还会计入语言模型头;这个模型换成了小小的分类头,所以只用它的
# `linear`、`lora` 和 `attention` 三部分。)
#
# **检验。** 逐模块求和与 `count_flops` 的 `linear`、`lora` 两部分完全相等;LoRA
# 线性层的计算量介于完全微调的 2/3 与 1 之间:这里恰好是 75%。

# %%
assert tot_full == bench_full["linear"] and tot_lora == bench_lora["linear"] + bench_lora["lora"]
assert 2 / 3 < tot_lora / tot_full < 1 and tot_lora * 4 == tot_full * 3

# %% [markdown]
# ## 8. 两种方法各更新多少参数
#
# 完全微调更新模型的每个张量:被适配矩阵的 $\sum I\cdot O$,再加上嵌入、LayerNorm、偏置和分类头。LoRA
# 每个被适配的矩阵只更新 $r(I + O)$ 个数,外加分类头:
#
# $$\frac{\#\text{LoRA}}{\#\text{完全微调}} = \frac{\sum r(I+O) + |\text{分类头}|}{|\theta|} .$$
#
# 有两点细节原文没有提。(1) 在一批数据上,即使是完全微调的梯度,也有些地方恰好为零:批次中没出现的 token 在 token 嵌入
# `wte` 中对应的行,以及位置嵌入 `wpe` 中超出本批长度 $T$ 的行(教程 06 在整次训练上看过这一点)。(2) LoRA 更新的数虽少,
# 却改动了每个被适配的 $W_\text{eff}$ 的每个元素(第 4 节),只是这个改动的秩为 $2r$。

# %%
n_full = sum(g.size for g in full_grads.values())
n_lora = sum(g.size for g in lora_grads.values())
adapted_entries = sum(row.shape[0] * row.shape[1] for row in report.rows)
wte_rows = int((np.abs(full_grads["wte.weight"]).sum(axis=1) > 0).sum())
wpe_rows = int((np.abs(full_grads["wpe.weight"]).sum(axis=1) > 0).sum())
real = batch["attention_mask"].astype(bool)                                       # (B, T) 真实 token
tokens_in_batch = len(np.unique(batch["input_ids"][real]))                        # 真实位置上不同的 token id
positions_used = int(real.any(axis=0).sum())                                      # 至少有一条评论到达的位置
print(f"full fine-tuning: gradient for {len(full_grads)} tensors, {n_full:,} numbers (all of {full.num_params():,})")
print(f"LoRA:             gradient for {len(lora_grads)} tensors, {n_lora:,} numbers ({n_lora / n_full:.2%}); "
      f"the 16 adapted W_eff have {adapted_entries:,} entries, all of which its step moves")
print(f"this batch: wte rows with a nonzero gradient {wte_rows} of {model.cfg.vocab_size} (distinct token ids in the "
      f"batch's real positions: {tokens_in_batch}); wpe rows {wpe_rows} of {model.cfg.n_ctx} (T = {T})")

# %% [markdown]
# **检验。** 完全微调的梯度覆盖全部参数;LoRA 的梯度是 $\sum r(I+O)$ 加上 256 个数的分类头,不到模型的 7%;`wte`
# 中梯度非零的行恰好是本批*真实*位置上出现的不同 token id,`wpe` 中梯度非零的行恰好是至少有一条评论到达的位置($\le T$)。
# 填充位于每条评论的末尾(右填充),因果注意力让任何真实 token 都看不到它,分类头也不读它,所以填充 token 的那一行没有梯度。
# 每个被适配的 $W_\text{eff}$ 的每个元素都动了(第 4 节的检验)。

# %%
assert n_full == full.num_params()
assert n_lora == sum(r * (row.shape[0] + row.shape[1]) for row in report.rows) + model.params["score.weight"].size
assert n_lora < 0.07 * n_full
assert wte_rows == tokens_in_batch and wpe_rows == positions_used <= T
assert all(np.count_nonzero(t["delta_exact"]) == t["delta_exact"].size for t in report.tensors.values())

# %% [markdown]
# ## 9. 命令行里的同一张表:`minift inspect`
#
# 第 2–6 节就是 `minift inspect` 打印的内容:它加载基座模型、加上分类头、挂上 LoRA,用 AdamW 训 `--steps` 步让 $B \ne 0$,
# 再取下一批数据,打印透镜的表——每个被适配的矩阵一行,各列就是第 2–6 节的量(`id.err`:第 2 节;`cos`:第 5 节;
# `span`/`tangent`/`best-r`:第 6 节;`‖ΔW‖`、`/η‖G‖`:第 4 节)——加上 `--module` 时,还会打印第 2 节那样的单矩阵详情,
# 以及第 6 节那张图里的奇异值。它的默认设置与我们不同(批量大小 8,$\alpha = 2r$,float32);这里用 $\alpha = 64$、
# float64 运行:
#
# ```bash
# minift inspect --alpha 64 --dtype float64 --steps 20 --module h.3.mlp.c_proj
# ```

# %%
argv = ["inspect", "--alpha", "64", "--dtype", "float64", "--steps", str(pick(20, 2)), "--quiet",
        "--module", "h.3.mlp.c_proj"]
with contextlib.redirect_stdout(io.StringIO()) as buf:
    rc = minift_main(argv)
text = buf.getvalue()
if FAST:
    print(SMOKE)
print(text)

# %% [markdown]
# 开头几行复述透镜看的是什么(这次是 8 条评论的一批)以及 $B$ 处于什么状态;各列的说明解释了每个数字;矩阵表的最后一行
# `all matrices` 把 16 个矩阵当作一个长向量。在 `--module` 详情中,`h.3.mlp.c_proj` 的数值秩至多为 8——即批量大小,
# 理由见第 6 节——而 LoRA 在它上面的一步最多有 16 个非零奇异值:$A^\top A\,G$ 保留 $G$ 的输出方向,但把输入方向换成了 $A$
# 的;$G\,BB^\top$ 保留 $G$ 的输入方向,但输出方向取自 $B$;两者的秩都至多为 $\min(r, \operatorname{rank} G)$——
# 所以它们的和最多可达 $2 \times 8 = 16$。LoRA 的一步不是 $G$ 的一部分,而是被扭进适配器子空间里的 $G$。(在 α = 64、
# `--train-lr` 3e-3 下训练 20 步后,命令行得到的 $G$ 比我们的还要集中:看上面的 `best-r` 一列。)
#
# **检验。** 命令运行成功,报告了训练后的状态($B \ne 0$)和 16 行矩阵数据,它的 `all matrices` 一行的恒等式误差低于
# $10^{-13}$;正常模式下,它的 `all matrices` 一行的 best-$r$ 至少为 0.99。

# %%
lines = text.splitlines()
table = [ln for ln in lines if ln.startswith("h.") and len(ln.split()) == 12]
summary = next(ln for ln in lines if ln.startswith("all matrices"))
assert rc == 0 and "B ≠ 0 in every matrix" in text and len(table) == 16
assert float(summary.split()[3]) < 1e-13, summary
rank_line = next(ln for ln in lines if ln.strip().startswith("G: ‖G‖"))
assert int(rank_line.split("numerical rank ")[1].split()[0]) <= 8, rank_line
if not FAST:                                             # 快速模式只训 2 步,G 没那么集中
    assert float(summary.split()[7]) >= 0.99, summary

# %% [markdown]
# ## 要点回顾
#
# | §4.1 的比较维度 | 完全微调 | LoRA(r = 8,在一批数据上实测) |
# |---|---|---|
# | 梯度 | $G = x^\top dy$ [in, out] | $dB = s\,G^\top A^\top$、$dA = s\,B^\top G^\top$(精确到 $10^{-13}$) |
# | 第一步 | $-\eta G$ | $B = 0$:$dA = 0$,一步为 $-\eta s^2 A^\top A G$,约为 $G$ 的 $\sqrt{r/I}$ |
# | $W$ 的更新 | $-\eta G$,秩不受限 | $-\eta s^2(A^\top A G + G BB^\top) + O(\eta^2)$,稠密,秩 $\le 2r$ |
# | 方向(模型性能) | cos 为 1 | 各矩阵与 $-G$ 的 cos 远低于 1,但不为负(SGD,一阶);span 小,best-$r$ 近 1(第 5–6 节) |
# | 计算量(线性层) | $6NIO$ | $4NIO + 6NR(I+O)$:这里约 75%,始终 $> 2/3$ |
# | 更新的参数 | 全部(见第 8 节的打印) | 不到 7%(第 8 节),但 $W_\text{eff}$ 的每个元素都在动 |
#
# 教程 09 把计算量这一列换成实测的时间和内存;教程 10 跟踪累积起来的更新,一直追到 MIT 论文所说的入侵维度。
#
# ## 练习
#
# **练习 1——预测第一步。** 初始化时($B = 0$),给定 $G$ $[I, O]$、$A$ $[R, I]$、缩放系数 $s$ 和 $\eta$,返回
# `(dA, dB, delta)`:LoRA 的两个梯度,以及 SGD 走一步后 $W_\text{eff}$ 的变化,都用 minift 的布局。
# 检验会在全部 16 个矩阵上,把它们与 `report0`(第 3 节初始化时的透镜结果)逐一比较。

# %%
def my_first_step(G, A, s, lr):
    """(dA [R, I], dB [O, R], ΔW_step [I, O]) at B = 0."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_first_step(G, A, s, lr):
    dA = np.zeros_like(A)                                # B = 0 时的 s Bᵀ Gᵀ
    dB = s * G.T @ A.T                                   # (O, R)
    return dA, dB, s * A.T @ (-lr * dB).T                # = −η s² Aᵀ A G


# %%
def check_first_step(answer):
    worst = 0.0
    for m, t in report0.tensors.items():
        dA, dB, delta = answer(t["G"], t["A"], report0.scale, report0.lr)
        assert np.array_equal(dA, np.zeros_like(t["A"])), f"{m}: dA must be exactly 0 at init"
        for mine, ref in ((dB, t["dB"]), (delta, t["delta_exact"])):
            assert mine.shape == ref.shape, (m, mine.shape, ref.shape)
            worst = max(worst, np.abs(mine - ref).max() / np.abs(ref).max())
    print(f"max relative error of dB and ΔW_step over 16 matrices: {worst:.1e}")
    assert worst < 1e-12


exercise("Exercise 1 (the first step)", check_first_step, my_first_step, solution_first_step)

# %% [markdown]
# **练习 2——最优秩 $k$ 近似的份额。** 对任意 $k$,返回 $\lVert G_k\rVert/\lVert G\rVert$,即最优的秩 $k$ 矩阵能装下的 $G$
# 的份额(Eckart–Young)。检验会与透镜在 $r = 8$ 时的 `best-r`(以及 `best-2r`)比较,还会在同一批数据上、以另一个秩 $r = 4$
# 在初始化时做一次透镜,与之比较。

# %%
def my_best_share(G, k):
    """‖G_k‖ / ‖G‖ for the top-k truncated SVD G_k of G."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_best_share(G, k):
    sv = np.linalg.svd(G, compute_uv=False)
    return math.sqrt((sv[:k] ** 2).sum() / (sv ** 2).sum())


# %%
def check_best_share(answer):
    m4 = plain.to()
    report4 = lens(m4, attach_lora(m4, LoRAConfig(r=4, alpha=32, targets="all-linear"), seed=0), batch)
    for rep in (report0, report4):
        for row in rep.rows:
            G = rep.tensors[row.module]["G"]
            assert abs(answer(G, rep.r) - row.share_best_r) < 1e-10, (row.module, rep.r)
            assert abs(answer(G, 2 * rep.r) - row.share_best_2r) < 1e-10, (row.module, 2 * rep.r)
    G = report0.tensors[m0]["G"]
    assert abs(answer(G, min(G.shape)) - 1) < 1e-12
    print(f"{m0} at init: best rank-k share " + ", ".join(f"k={k}: {answer(G, k):.3f}" for k in (1, 2, 4, 8, 16)))


exercise("Exercise 2 (best rank-k share)", check_best_share, my_best_share, solution_best_share)

# %% [markdown]
# **练习 3——一个线性层的 FLOPs。** 返回线性层 $[I, O]$ 在 $N$ 个 token 位置上训练一步(前向加反向)的矩阵乘法 FLOPs,
# `method` 为 `"full"`($W$ 参与训练)或 `"lora"`($W$ 冻结,挂一个秩为 $R$ 的适配器)。
# 检验会把你的结果在一个模型的所有线性层上求和,与 `minift.measure.bench.count_flops` 比较。

# %%
def my_linear_flops(N, I, O, R, method):
    """Forward + backward matmul FLOPs (2 per multiply-add) of one linear, full or LoRA."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_linear_flops(N, I, O, R, method):
    if method == "full":
        return 6 * N * I * O                             # xW, dy Wᵀ, xᵀ dy
    return 4 * N * I * O + 6 * N * R * (I + O)           # xW, dy Wᵀ; xAᵀ, hBᵀ, dB, dh, dA, dh A


# %%
def check_linear_flops(answer):
    from minift import GPTConfig
    for preset, batch_size, seq, R in (("demo", 16, T, 8), ("tiny", 3, 17, 2), ("gpt2", 8, 1024, 16)):
        cfg = GPTConfig.preset(preset)
        C, L = cfg.n_embd, cfg.n_layer
        shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
        for method in ("full", "lora"):
            ref = count_flops(cfg, batch_size, seq, method, R)
            mine = L * sum(answer(batch_size * seq, I, O, R, method) for I, O in shapes)
            assert mine == ref["linear"] + ref["lora"], (preset, method, mine, ref)
        ratio = (L * sum(answer(batch_size * seq, I, O, R, "lora") for I, O in shapes)
                 / (L * sum(answer(batch_size * seq, I, O, R, "full") for I, O in shapes)))
        print(f"{preset}: r = {R}, LoRA's linears cost {ratio:.1%} of full fine-tuning's")


exercise("Exercise 3 (FLOPs of one linear)", check_linear_flops, my_linear_flops, solution_linear_flops)
