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
# # 核心 04 · 同一批数据走两种方法:逐个张量对照
#
# **你将看到什么。** 一批 16 条评论,只做一次反向传播。对 LoRA 适配的 16 个权重矩阵,完全微调的梯度 $G$ 与 LoRA 的 $dA$、
# $dB$ 并排打印,再和 $s\,B^\top G^\top$、$s\,G^\top A^\top$ 对照:数字一位不差。LoRA 的 $dA$ 就是透过 $B$
# 看到的完全微调梯度 $G$,$dB$ 则是透过 $A$ 看到的 $G$。接着看 LoRA 的第一步($dA$ 恰好为零);看 LoRA 的一步更新改动了 $W$
# 的每一个元素,秩却只有 $2r$;最后读"透镜"——`minift inspect` 打印的那张表:逐个矩阵地看 LoRA 跟上了完全微调方向的多少,
# 以及它省掉的那一次矩阵乘法。
#
# **原文:** §4.1 完全微调与LoRA的异同点:
#
# > 完全微调涉及对预训练模型的所有参数进行更新。…… 相比之下,LoRA仅对预训练模型的部分参数进行微调,通过引入低秩矩阵
# > ( A ) 和 ( B ),使得新的权重矩阵 ( W' ) 可以表示为 ( W' = W + AB^T )。
#
# 这里要按 LoRA 论文(Hu et al. 2021,arXiv 2106.09685)更正一处:LoRA 其实不微调预训练模型的*任何*参数。$W$ 始终冻结,
# 训练的是新引入的 $A$、$B$;可有效权重的每个元素都会随之改变。
#
# **你将学到**
# 1. 怎样从一次反向传播同时拿到 $G$、$dA$ 和 $dB$,以及为什么这个 $G$ 就是完全微调的梯度;
# 2. 恒等式 $dB = s\,G^\top A^\top$ 与 $dA = s\,B^\top G^\top$;
# 3. LoRA 的一步对 $W$ 做了什么:$-\eta s^2(A^\top A\,G + G\,BB^\top)$,秩 $\le 2r$;
# 4. 怎么读"透镜":与 $-G$ 的余弦,以及 LoRA 能触及的那部分 $G$;
# 5. 两种方法各做哪些矩阵乘法,各更新多少参数。
#
# **用时:** 阅读约 15 分钟;在一台空闲的 2 核 Intel Xeon 上实测(`OPENBLAS_NUM_THREADS=1`),正常模式运行约 6 秒,
# 快速模式(`MINIFT_FAST=1`)约 2 秒。
#
# **前置:** 核心 01(线性层的反向计算)、核心 03(LoRA:$s = \alpha/r$,$A$ $[r, \text{in}]$, $B$ $[\text{out}, r]$,初始化时
# $B = 0$)。核心 01–03 把梯度写作 $\bar y$;本篇沿用 minift
# 代码和打印输出里的名字:$dy = \bar y$,$dA = \bar A$,$dB = \bar B$。**深入阅读:**
# [教程 08](../../zh/08_one_batch_both_methods.py)(进阶),对同一批数据的更深入分析。

# %%
import contextlib
import io

import matplotlib.pyplot as plt
import numpy as np

from minift import LoRAConfig, attach_lora
from minift.app.cli import main as minift_main
from minift.app.tutorial import FAST, exercise, pick, show
from minift.base import load_base
from minift.data import load_task, task_source
from minift.measure.bench import count_flops
from minift.measure.lens import format_lens, format_module, full_and_lora_grads, lens, lora_step
from minift.methods import task_head
from minift.optim import SGD
from minift.training.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode")
R, ALPHA = 8, 64                 # 秩与 α:s = α/r = 8(核心 03)
STEPS = pick(20, 3)              # LoRA 预热训练步数,让 B ≠ 0
ETA = 1e-2                       # 我们考察的普通 SGD 一步的 η(透镜的默认值)

# %% [markdown]
# ## 1. 一次反向传播,两种梯度
#
# 以 float64 加载随附的基座模型,加上情感分析任务的分类头,在 4 个块的全部四个线性层上挂 LoRA($r = 8$, $\alpha = 64$),先用
# AdamW 训几步,让 $B \ne 0$。然后取**下一批**数据,对每个被适配的 $W$ 问:完全微调在这里会用什么梯度?$A$ 和 $B$
# 又各自拿到什么?
#
# 带适配器的线性层用有效权重 $W_\text{eff} = W + s\,A^\top B^\top$ 计算(minift 的布局 $[\text{in}, \text{out}]$,
# $y = xW$;即原文的 $AB^\top$,见核心 03)。损失只通过 $W_\text{eff}$ 依赖 $W$,而 $\partial W_\text{eff}/\partial W$
# 是恒等映射,所以
#
# $$G \;=\; \frac{\partial L}{\partial W} \;=\; \frac{\partial L}{\partial W_\text{eff}} \;=\; x^\top dy
# \quad [I, O],$$
#
# 其中 $x$ $[N, I]$ 是线性层的输入,$dy$ $[N, O]$ 是其输出在本批 $N$ 个 token 位置上的梯度。`full_and_lora_grads`
# 在一次反向传播中临时解冻 $W$,于是每个被适配的线性层都从同一个 $dy$ 交出 $G$、$dA$ 和 $dB$。

# %%
base, tok = load_base(dtype="float64")                   # float64:下面的恒等式误差约 1e-15
split = load_task("sentiment", "train")
model = base.to()
task_head(model, split, seed=0)                          # 分类头,与 `minift finetune` 加的一样
plain = model.to()                                       # 基座 + 分类头,不挂适配器(第 3 节)
lora = attach_lora(model, LoRAConfig(r=R, alpha=ALPHA, targets="all-linear"), seed=0)
source = task_source(split, tok, max_len=128, batch_size=16, seed=0)
# workers=1:整批数据在一个线程里算,任何机器上打印的数字都相同
train(model, source, TrainConfig(steps=STEPS, batch_size=16, lr=1e-3, warmup=0, schedule="constant", workers=1),
      progress=False)
batch = source.next_batch()                              # 本教程唯一的那批数据
Bsz, T = batch["input_ids"].shape
N = Bsz * T                                              # token 位置数(含填充)
loss, grads = full_and_lora_grads(model, lora, batch)
m0 = "h.0.attn.c_attn"
print(f"{len(lora.modules)} adapted matrices; this batch: {Bsz} reviews × {T} tokens, loss {loss:.4f}")
print(f"{m0}: W {model.params[m0 + '.weight'].shape} [in, out]; G {grads[m0 + '.weight'].shape}, "
      f"dA {grads[m0 + '.lora_A.weight'].shape} [r, in], dB {grads[m0 + '.lora_B.weight'].shape} [out, r]")

# %% [markdown]
# **检验。** (a) 把 $W_\text{eff}$ 写进 $W$ 的普通副本(`lora.merged_model()`),不冻结任何参数,算出的 $dW$ 与 $G$ 相同:$G$
# 正是完全微调的梯度。(b) 普通的 LoRA 前向、反向传播($W$ 冻结)给出逐位相同的 $dA$、$dB$,而被适配的 $W$ **没有**梯度:它的
# $x^\top dy$ 根本没算(见第 7 节)。

# %%
full = lora.merged_model()                               # 普通副本,权重为 W + ΔW;全部参数参与训练
full_loss, full_grads = full.loss_and_grads(**batch)
lora_loss, lora_grads = model.loss_and_grads(**batch)    # 普通的 LoRA 前向与反向传播
err = max(np.abs(grads[m + ".weight"] - full_grads[m + ".weight"]).max()
          / np.abs(full_grads[m + ".weight"]).max() for m in lora.modules)
print(f"G vs the merged copy's dW: max relative error {err:.1e}")
print(f"full fine-tuning: {len(full_grads)} gradient tensors; LoRA: {len(lora_grads)} "
      f"({len(lora.params)} adapter tensors + the head), adapted W among them: "
      f"{sum(m + '.weight' in lora_grads for m in lora.modules)}")
assert abs(full_loss - loss) < 1e-12 and abs(lora_loss - loss) < 1e-12
assert err < 1e-9                                        # 先加 W + ΔW 与 xW 加旁路:舍入误差约 1e-13
assert all(np.array_equal(grads[k], lora_grads[k]) for k in lora_grads)
assert set(lora_grads) == set(lora.params) | {"score.weight"}

# %% [markdown]
# ## 2. LoRA 的梯度,就是透过 $A$ 和 $B$ 看到的 $G$
#
# 带适配器的线性层(不开 dropout)是 $y = xW + b + s\,hB^\top$,其中 $h = xA^\top$ $[N, R]$。
# 对每个乘积套用线性层的反向计算规则(核心 01),再代入 $x^\top dy = G$:
#
# $$dB = s\, dy^\top h = s\, (x^\top dy)^\top A^\top = s\, G^\top A^\top \quad [O, R],$$
#
# $$dA = s\,(dy\, B)^\top x = s\, B^\top (x^\top dy)^\top = s\, B^\top G^\top \quad [R, I].$$
#
# LoRA 看到的只有完全微调的梯度:$dB$ 是沿 $A$ 的各行($r$ 个输入方向)读出的 $G$,$dA$ 是沿 $B$ 的各列($r$ 个输出方向)
# 读出的 $G$。$G$ 的其余部分在这一步传不到适配器。`lens` 执行这次反向传播,并对全部
# 16 个矩阵算出第 2–5 节的所有量;`format_module` 展示其中一个。

# %%
report = lens(model, lora, batch, lr=ETA)                # 第 2–5 节,每个被适配的矩阵
s, r = report.scale, report.r
errs = {}
for m, t in report.tensors.items():
    G, A, B = t["G"], t["A"], t["B"]                     # (I, O), (R, I), (O, R)
    errs[m] = max(np.abs(t["dB"] - s * G.T @ A.T).max() / np.abs(t["dB"]).max(),     # dB = s Gᵀ Aᵀ
                  np.abs(t["dA"] - s * B.T @ G.T).max() / np.abs(t["dA"]).max())     # dA = s Bᵀ Gᵀ
print(f"s = α/r = {s:g}, r = {r}; worst relative error of the two identities over "
      f"{len(errs)} matrices: {max(errs.values()):.1e}")
print(format_module(report, m0).split("  singular values")[0])

# %% [markdown]
# 打印的是 $G$ 的左上角,然后 $dA$ 在上、$s\,B^\top G^\top$ 在下,$dB$ 在上、$s\,G^\top A^\top$ 在下,逐位相同。
#
# **检验。** 两个恒等式在每个矩阵中的相对误差都小于 $10^{-13}$:在 float64 下,
# 它们只是把同一次反向传播里的乘积换了个顺序。

# %%
assert max(errs.values()) < 1e-13
assert report.overall["max_identity_err"] < 1e-13        # 透镜自己的 id.err 列

# %% [markdown]
# ## 3. 第一步:$B = 0$,所以 $dA = 0$,只有 $B$ 在动
#
# 刚挂上适配器时 $B = 0$(核心 03),恒等式立刻给出
#
# $$dA = s\,B^\top G^\top = 0, \qquad dB = s\,G^\top A^\top, \qquad
# \Delta W_\text{step} = s\,A^\top(-\eta\, dB)^\top = -\eta\, s^2 A^\top A\, G .$$
#
# 第一步就是透过 $A^\top A$ 看到的完全微调那一步 $-\eta G$:只有落在 $A$ 行空间里的那部分 $G$ 留了下来。$A$ 是随机的,
# 所以这是 $I$ 维输入空间里一个随机的 $r$ 维子空间;平均来说它装下 $\lVert G\rVert^2$ 的 $r/I$,也就是 $\lVert G\rVert$
# 的约 $\sqrt{r/I}$。第一步能往哪些方向走,数据还说了不算。下面给普通副本挂上全新的适配器,看同一批数据:

# %%
model0 = plain.to()
report0 = lens(model0, attach_lora(model0, LoRAConfig(r=R, alpha=ALPHA, targets="all-linear"), seed=0), batch,
               lr=ETA)
if FAST:
    print(SMOKE)
print(f"B = 0 in every adapter: {report0.at_init}")
print(f"{'module':<16} {'‖dA‖':>5} {'‖dB‖':>9} {'tangent':>8} {'√(r/I)':>7}")
for row in report0.rows:
    print(f"{row.module:<16} {row.dA_norm:>5.1f} {row.dB_norm:>9.2e} {row.share_tangent:>8.3f} "
          f"{np.sqrt(r / row.shape[0]):>7.3f}")

# %% [markdown]
# `tangent` 是一步更新能触及的 $\lVert G\rVert$ 份额(第 5 节);初始化时它等于 $\lVert P_\text{in}G\rVert/\lVert G\rVert$,
# $P_\text{in}$ 是到 $A$ 行空间的投影。请和上面打印的 $\sqrt{r/I}$ 一列对照:一批数据的 $G$ 由少数几个方向主导,
# 随机子空间能接住多少会有起伏(起伏多大,见教程 08 第 3 节)。
#
# **检验。** 每个 $dA$ 都恰好为零(不只是很小),每个 $dB$ 都不为零;透镜给出的这一步与 $-\eta s^2 A^\top A\,G$ 的误差在
# $10^{-12}$ 以内;每个 tangent 份额都在 $\sqrt{r/I}$ 的 2.5 倍范围内。

# %%
for row in report0.rows:
    t = report0.tensors[row.module]
    assert row.b_zero and not t["dA"].any() and t["dB"].any()
    ref = -ETA * s ** 2 * t["A"].T @ t["A"] @ t["G"]                                # (I, O)
    assert np.abs(t["delta_exact"] - ref).max() <= 1e-12 * np.abs(ref).max(), row.module
    assert 0.4 < row.share_tangent / np.sqrt(r / row.shape[0]) < 2.5, row.module
assert report0.at_init and not report.at_init

# %% [markdown]
# ## 4. LoRA 的一步对 $W$ 做了什么
#
# 完全微调的 SGD 一步是 $-\eta G$。LoRA 的一步是 $A_+ = A - \eta\,dA$、$B_+ = B - \eta\,dB$,有效权重随之变化
#
# $$\Delta W_\text{step} = s\,(A_+^\top B_+^\top - A^\top B^\top)
# = \underbrace{-\eta\, s\,(dA^\top B^\top + A^\top dB^\top)}_{\Delta W_1\ \text{(first order)}}
# \;+\; \eta^2 s\, dA^\top dB^\top .$$
#
# 代入第 2 节的恒等式:
#
# $$\Delta W_1 = -\eta\, s^2\,(A^\top A\, G + G\, B B^\top).$$
#
# 也就是 $G$ 在输入侧乘以 $A^\top A$、在输出侧乘以 $BB^\top$。每一项的秩都 $\le r$,所以这一步的秩 $\le 2r$;
# 可它是个稠密矩阵:$W_\text{eff}$ 的每个元素都在变。下面真的走一步(用 `minift.optim.SGD` 更新 $A$ 和 $B$),重新读取
# `lora.effective_weights()`,再把 $A$、$B$ 恢复原样。

# %%
saved = {k: v.copy() for k, v in lora.params.items()}
before = lora.effective_weights()
SGD(lora.params, lr=ETA, momentum=0.0).step(lora_grads)                           # A ← A − η dA, B ← B − η dB
moved = {k: v - before[k] for k, v in lora.effective_weights().items()}           # W_eff 的真实变化
for k, v in saved.items():
    lora.params[k][...] = v                                                       # 恢复 A 和 B
row0, step0 = report.row(m0), report.tensors[m0]["delta_exact"]
if FAST:
    print(SMOKE)
print(f"{m0}: ‖ηG‖ = {ETA * row0.g_norm:.3e} (full fine-tuning's step), ‖ΔW_step‖ = {row0.delta_norm:.3e} "
      f"(LoRA's); second-order part {row0.second_order_gap:.1e} of LoRA's step")
print(f"  rank of ΔW_step: {np.linalg.matrix_rank(step0)} (2r = {2 * r}); entries that change: "
      f"{np.count_nonzero(step0):,} of {step0.size:,}")
sv_full = np.linalg.svd(ETA * report.tensors[m0]["G"], compute_uv=False)
sv_lora = np.linalg.svd(step0, compute_uv=False)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(np.arange(1, 41), sv_full[:40], "o-", ms=3, label="full fine-tuning step ηG")
ax.semilogy(np.arange(1, 41), np.maximum(sv_lora[:40], 1e-20), "s-", ms=3, label="LoRA step ΔW_step")
ax.axvline(2 * r + 0.5, color="gray", ls="--", lw=0.8)
ax.set_ylim(sv_full[39] / 100, 2 * max(sv_full[0], sv_lora[0]))
ax.set_xlabel("singular value index (dashed: 2r)")
ax.set_title(f"{m0}: singular values of one step")
ax.legend(fontsize=8)
show(fig, "core04_step_spectrum")

# %% [markdown]
# 图中,完全微调那一步的奇异值拖着一条长尾;LoRA 那一步的奇异值过了 $2r$ 就掉到舍入误差的量级。在这个 $\eta$ 下,
# 二阶项很小(见上面的打印)。另外,同样的 $\eta$,LoRA 的一步反而比完全微调的*更长*:$s^2 A^\top A$ 和 $s^2 BB^\top$
# 会把保留下来的部分拉长——这也是 LoRA 需要单独设学习率的原因之一。
#
# **检验。** 在每个矩阵中:真实的 SGD 一步让 $W_\text{eff}$ 改变了透镜给出的 `delta_exact`,误差在 $10^{-12}$
# 以内;$\Delta W_1 = -\eta s^2 (A^\top A G + G BB^\top)$,误差在 $10^{-12}$ 以内;秩恰好为 $2r$,没有一个元素为零;并且
# $\lVert\Delta W_\text{step}\rVert > \lVert\eta G\rVert$(透镜的 `/η‖G‖` 一列,第 5 节)。

# %%
for m, t in report.tensors.items():
    real = moved[m + ".weight"]
    assert np.abs(real - t["delta_exact"]).max() <= 1e-12 * np.abs(real).max(), m
    ref = -ETA * s ** 2 * (t["A"].T @ t["A"] @ t["G"] + t["G"] @ t["B"] @ t["B"].T)
    assert np.abs(t["delta_first_order"] - ref).max() <= 1e-12 * np.abs(ref).max(), m
    assert np.linalg.matrix_rank(t["delta_exact"]) == 2 * r and np.count_nonzero(t["delta_exact"]) == real.size, m
    assert report.row(m).step_ratio > 1, m                                        # ‖ΔW_step‖ > ‖η G‖
assert all(np.array_equal(v, saved[k]) for k, v in lora.params.items())            # A 和 B 已恢复

# %% [markdown]
# ## 5. 透镜:方向与可达范围,逐个矩阵
#
# 一阶近似下,一步更新 $\Delta W$ 使本批数据的损失变化 $\langle G, \Delta W\rangle$。完全微调那一步给出
# $-\eta\lVert G\rVert^2$,即最速下降。LoRA 那一步给出
#
# $$\langle G, \Delta W_1\rangle = -\eta\, s^2\,\big(\lVert A G\rVert^2 + \lVert G B\rVert^2\big) \le 0,
# \qquad \cos(\Delta W_1, -G) \ge 0 .$$
#
# 所以用普通 SGD 时,LoRA 的一步在这批数据上(一阶意义下)永远不会往上坡走;但它跟随完全微调方向的程度,
# 只有余弦说的那么多(完全微调自己的余弦是 1)。原因要看 $\lVert G\rVert$ 的三个份额:
#
# - **span** $=\lVert P_\text{in}\,G\,P_\text{out}\rVert/\lVert G\rVert$:$G$ 落在 $\Delta W = s\,A^\top B^\top$
#   当前所在子空间里的部分($P_\text{out}$ 投影到 $B$ 的列空间);
# - **tangent** $=\lVert G - (1 - P_\text{in})\,G\,(1 - P_\text{out})\rVert/\lVert G\rVert$:$A$、$B$
#   的任意微小变化所能触及的部分;$\Delta W_1$ 就在其中,所以 $\cos \le$ tangent;
# - **best-$r$** $=\lVert G_r\rVert/\lVert G\rVert$,$G_r$ 是截断到前 $r$ 个奇异值的 SVD:由 Eckart–Young 定理,任何秩为
#   $r$ 的更新都装不下更多,所以 span $\le$ best-$r$(同理 tangent $\le$ best-$2r$)。
#
# `format_lens` 对每个矩阵打印这些量,并附上各列说明:这就是 `minift inspect` 的那张表。

# %%
if FAST:
    print(SMOKE)
print(format_lens(report))

# %% [markdown]
# 按上面打印的表逐行读。**best-r** 很高:一批数据的 $G$ 由少数几个方向主导(`erank` 很小),所以秩为 $r$
# 的更新*本可以*装下它的大部分。**span** 很低:LoRA 在预热训练中建起来的子空间,装不下多少*这一批*的梯度。**tangent**
# 高一些,因为两个因子都能转动;**cos** 在它之下。§4.1 所说"模型性能"上的差别就从这里开始:完全微调沿着 $G$ 走;LoRA 沿着
# $G$ 在 $2r$ 个方向上的投影走,而这些方向由 $A$ 的随机初始化和之前的批次决定。
#
# **检验。** 按公式算出的余弦与透镜给出的相差不超过 $10^{-10}$;每个矩阵中 $0 \le \cos \le$ tangent $\le$ best-$2r$,且
# span $\le$ best-$r$;把所有矩阵合起来看,span < tangent < best-$r$;在 $\eta = 10^{-3}$ 下真实走一步 SGD,
# 两种方法都降低了这批数据的损失,降幅与一阶预测 $\langle G, \Delta W\rangle$ 相差不到 5%。

# %%
for row in report.rows:
    t = report.tensors[row.module]
    G, A, B = t["G"], t["A"], t["B"]
    cos = (ETA * s ** 2 * (np.linalg.norm(A @ G) ** 2 + np.linalg.norm(G @ B) ** 2)
           / (np.linalg.norm(t["delta_first_order"]) * np.linalg.norm(G)))
    assert abs(cos - row.cos_first) < 1e-10, row.module
    assert 0 <= row.cos_first <= row.share_tangent + 1e-12 <= row.share_best_2r + 2e-12, row.module
    assert row.share_span <= row.share_best_r + 1e-12, row.module
o = report.overall
assert o["share_span"] < o["share_tangent"] < o["share_best_r"]                      # 上面的解读
eta, predicted = 1e-3, {"full": 0.0, "lora": 0.0}
full_step = full.to()
for m, t in report.tensors.items():
    full_step.params[m + ".weight"][...] -= eta * t["G"]                            # 完全微调:W ← W − η G
    predicted["full"] -= eta * np.linalg.norm(t["G"]) ** 2
    predicted["lora"] += float((t["G"] * lora_step(t["A"], t["B"], t["dA"], t["dB"], s, eta)[0]).sum())
SGD(lora.params, lr=eta, momentum=0.0).step({k: lora_grads[k] for k in lora.params})
actual = {"full": full_step.loss(**batch) - loss, "lora": model.loss(**batch) - loss}
for k, v in saved.items():
    lora.params[k][...] = v                                                         # 恢复 A 和 B
if FAST:
    print(SMOKE)
for k in ("full", "lora"):
    print(f"{k:>4}: loss change predicted {predicted[k]:+.3e}, measured {actual[k]:+.3e}")
    assert actual[k] < 0 and abs(actual[k] / predicted[k] - 1) < 0.05, (k, actual, predicted)

# %% [markdown]
# ## 6. 命令行里的同一张表
#
# 用本教程的设置,`minift inspect` 会加载同一个基座模型、加上同一个分类头、做同样的预热训练、取同样的下一批数据,
# 打印同一张表:
#
# ```bash
# minift inspect --rank 8 --alpha 64 --dtype float64 --steps 20 --train-lr 1e-3 --batch 16 --module h.0.attn.c_attn
# ```
#
# (`--module` 会附上第 2 节那样的单个矩阵详情;它的默认设置是 float32、$\alpha = 2r$、批量大小
# 8。)**检验:** 它打印的表与上面的 `format_lens(report)` 逐字符相同。

# %%
argv = ["inspect", "--rank", str(R), "--alpha", str(ALPHA), "--dtype", "float64", "--steps", str(STEPS),
        "--train-lr", "1e-3", "--batch", "16", "--quiet"]
with contextlib.redirect_stdout(io.StringIO()) as buf:
    rc = minift_main(argv)
first, _, table = buf.getvalue().partition("\n")
print("$ minift " + " ".join(argv))
print(first)
print(f"exit status {rc}; the table is identical to format_lens(report): {table.rstrip() == format_lens(report)}")
assert rc == 0 and table.rstrip() == format_lens(report)

# %% [markdown]
# ## 7. 计算量与参数量:LoRA 省掉了什么
#
# 一个线性层 $[I, O]$,$N$ 个 token 位置(每次乘加计 2 FLOPs):
#
# | | 完全微调 | LoRA |
# |---|---|---|
# | 前向传播 | $xW$:$2NIO$ | $xW$:$2NIO$;$xA^\top$、$hB^\top$:$2NR(I+O)$ |
# | 反向传播到输入 | $dy\,W^\top$:$2NIO$ | $dy\,W^\top$:$2NIO$;经 $B$、$A$:$2NR(O+I)$ |
# | 反向传播到权重 | $x^\top dy$:$2NIO$ | $dB$、$dA$:$2NR(O+I)$ |
# | 合计 | $6NIO$ | $4NIO + 6NR(I+O)$ |
#
# 冻结的 $W$ 照样要做前向和 $dx$。LoRA 省掉的是三次大矩阵乘法中的一次,$x^\top dy$(第 1 节临时打开的那一次),
# 同时为适配器付出 $6NR(I+O)$:它在线性层上的计算量总高于完全微调的 $2/3$,不会更少。完全微调更新每一个张量;LoRA
# 每个矩阵只更新 $r(I+O)$ 个数,外加分类头。

# %%
flops_full = sum(6 * N * I * O for I, O in (row.shape for row in report.rows))
flops_lora = sum(4 * N * I * O + 6 * N * r * (I + O) for I, O in (row.shape for row in report.rows))
ref_full, ref_lora = count_flops(model.cfg, Bsz, T, "full", r), count_flops(model.cfg, Bsz, T, "lora", r)
n_full = sum(g.size for g in full_grads.values())
n_lora = sum(g.size for g in lora_grads.values())
print(f"matmul FLOPs of the {len(report.rows)} linears on this batch: full {flops_full / 1e6:.0f} M, "
      f"LoRA {flops_lora / 1e6:.0f} M ({flops_lora / flops_full:.1%})")
print(f"parameters with a gradient: full {n_full:,}, LoRA {n_lora:,} ({n_lora / n_full:.2%})")

# %% [markdown]
# **检验。** 两个总和与 `minift.measure.bench.count_flops` 的结果完全相等;LoRA 线性层的计算量介于完全微调的 $2/3$ 与
# 1 之间;完全微调的梯度覆盖全部参数,LoRA 的梯度则是 $\sum r(I+O)$ 加上分类头。

# %%
assert flops_full == ref_full["linear"] and flops_lora == ref_lora["linear"] + ref_lora["lora"]
assert 2 / 3 < flops_lora / flops_full < 1
assert n_full == full.num_params()
assert n_lora == sum(r * sum(row.shape) for row in report.rows) + model.params["score.weight"].size

# %% [markdown]
# ## 要点回顾
#
# - 一次反向传播同时给出两者:完全微调的 $G = x^\top dy$,以及 LoRA 的 $dB = s\,G^\top A^\top$、$dA = s\,B^\top G^\top$。
#   LoRA 的 $dA$ 就是透过 $B$ 看到的完全微调梯度 $G$,$dB$ 是透过 $A$ 看到的 $G$。
# - 初始化时 $B = 0$,所以 $dA = 0$:第一步是 $-\eta s^2 A^\top A\,G$,即完全微调那一步在一个随机子空间上的投影。
# - LoRA 的任何一步,一阶近似下都是 $-\eta s^2(A^\top A\,G + G\,BB^\top)$:不会上坡,秩 $\le 2r$,却改动 $W$ 的每个元素。
#   它跟随 $G$ 的方向有多少,看透镜的 `cos`;`best-r` 是秩为 $r$ 的更新最多能装下的部分。
# - LoRA 在每个线性层省掉一次矩阵乘法 $x^\top dy$,只训练百分之几的参数。
#
# 下面的单元把本次运行的数字并排列出。**深入阅读:** 教程 08(恒等式在 float32 下的舍入误差、第一步的随机子空间统计、
# 为什么有些 $G$ 不满秩、用显式基重算各份额、哪些嵌入行有梯度)、09(实测时间与内存)、10(MIT 论文的入侵维度)。

# %%
if FAST:
    print(SMOKE)
print(f"{'':22}{'full fine-tuning':>18}{'LoRA r=' + str(r):>14}")
print(f"{'cos with −G':22}{1:>18.3f}{o['cos_first']:>14.3f}")
print(f"{'share of ‖G‖ reached':22}{1:>18.3f}{o['share_tangent']:>14.3f}   (best rank-r: {o['share_best_r']:.3f})")
print(f"{'linear FLOPs':22}{1:>18.0%}{flops_lora / flops_full:>14.0%}")
print(f"{'parameters updated':22}{n_full:>18,}{n_lora:>14,}")

# %% [markdown]
# ## 练习
#
# **练习 1——预测第一步。** 初始化时($B = 0$),给定 $G$ $[I, O]$、$A$ $[R, I]$、缩放系数 $s$ 和 $\eta$,返回
# `(dA, dB, delta)`:LoRA 的两个梯度,以及 SGD 走一步后 $W_\text{eff}$ 的变化,都用 minift 的布局。
# 检验会把它们与第 3 节初始化时的透镜结果逐一比较,覆盖全部 16 个矩阵。

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
# **练习 2——一个线性层的 FLOPs。** 返回线性层 $[I, O]$ 在 $N$ 个 token 位置上训练一步(前向加反向)的矩阵乘法 FLOPs,
# `method` 为 `"full"`($W$ 参与训练)或 `"lora"`($W$ 冻结,挂一个秩为 $R$ 的适配器)。检验会把你的结果在三种规模的模型(含
# GPT-2)的所有线性层上求和,与 `count_flops` 比较。

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
    for preset, batch_size, seq, rank in (("demo", Bsz, T, 8), ("tiny", 3, 17, 2), ("gpt2", 8, 1024, 16)):
        cfg = GPTConfig.preset(preset)
        C, L = cfg.n_embd, cfg.n_layer
        shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]                       # c_attn, c_proj, c_fc, c_proj
        mine = {}
        for method in ("full", "lora"):
            ref = count_flops(cfg, batch_size, seq, method, rank)
            mine[method] = L * sum(answer(batch_size * seq, I, O, rank, method) for I, O in shapes)
            assert mine[method] == ref["linear"] + ref["lora"], (preset, method, mine[method], ref)
        print(f"{preset}: r = {rank}, LoRA's linears cost {mine['lora'] / mine['full']:.1%} of full fine-tuning's")


exercise("Exercise 2 (FLOPs of one linear)", check_linear_flops, my_linear_flops, solution_linear_flops)
