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
# # 核心 05 · 用实测检验原文的结论
#
# **你将看到什么。** 一次调用,让完全微调和 LoRA 在同一个基座模型、同一批评论、同样的顺序和同样的步数下各训练一遍,
# 并写出一个报告目录:`results.json`、`report.md` 和若干张图。然后把原文的结论逐条拿来和这次运行对照:
# 先用公式说明该期待什么,再由代码单元打印实测值,最后打印判定 **Held**(成立)或 **Did not hold**(不成立)。
# 你会看到训练曲线、两种更新的奇异值、两个更新有多少重合,以及入侵维度的计数与随机方向基线的对比。课程最后是一张成绩单:
# 本次运行的全部判定。
#
# **原文:** §3.2 LoRA的实践操作与效果:"减少90%以上参数更新的情况下,达到与完全微调相当的性能";§5.1 资源消耗与时间效率:
#
# > LoRA的训练时间仅为完全微调的30%,内存占用仅为20%。
#
# 以及 §4.2 MIT论文中的实证研究分析。原文所指的论文是 Shuttleworth 等人的 "LoRA vs Full Fine-tuning: An Illusion of
# Equivalence"(arXiv 2410.21228)。这篇论文并没有给出训练时间和内存占用的数字;它的发现是:两种方法准确率相近,
# 得到的更新却*不一样*——LoRA 的更新有效秩低,并带有"入侵维度",而出现入侵维度时,模型对预训练数据的遗忘也更多。
#
# **你将学到**
# 1. 在 Python 里运行 `minift compare`(`minift.app.compare.compare`),并读懂 `results.json`;
# 2. 统计可训练参数:$r(\text{in}+\text{out})$ 对比 $\text{in}\cdot\text{out}$;
# 3. 为什么 LoRA 最多只能省掉一步里三分之一的矩阵乘法计算量,以及为什么内存能省多少取决于激活值;
# 4. 读懂更新的奇异值、两个更新的重合程度,以及与随机基线对照的入侵维度;
# 5. 在这个规模上,哪些结论成立,哪些不可能成立。
#
# **用时:** 阅读约 15 分钟;在一台空闲的 2 核 Intel Xeon 上实测(`OPENBLAS_NUM_THREADS=1`),正常模式运行约 1 分钟,
# 快速模式(`MINIFT_FAST=1`)约 4 秒。时间几乎全花在两次 600 步的微调上;如果 CPU 核正被别的任务占用,可能要慢好几倍。
#
# **前置:** 核心 03(LoRA:$s = \alpha/r$,$A$ $[r, \text{in}]$,$B$ $[\text{out}, r]$)和核心 04(同一个批次走两种方法;LoRA
# 跳过的那次矩阵乘法)。**深入阅读**(进阶):[教程 06](../../zh/06_full_finetuning.py)(完全微调详解)、
# [教程 09](../../zh/09_time_and_memory.py)(时间与内存,逐项核算)、[教程 10](../../zh/10_intruder_dimensions.py)(MIT
# 论文详解,以及持续学习)。

# %%
import sys

import numpy as np

from minift import GPTConfig
from minift.app.compare import CompareConfig, compare
from minift.app.report import energy_in_top, main_table, memory_table
from minift.app.tutorial import FAST, exercise, out_dir, pick
from minift.config import param_shapes
from minift.measure.bench import count_flops
from minift.measure.memory import memory_saving
from minift.training.finetune import load_task_splits

MiB = 2 ** 20
verdicts = {}                  # 结论 -> (实测值, "Held" / "Did not hold"),最后汇成成绩单
if FAST:
    print("FAST MODE: a smoke run (8 steps on 64 reviews). Every number and verdict below only shows that the "
          "cells work; none of them is a finding. Run without MINIFT_FAST for the real measurement.")

# %% [markdown]
# ## 1. 一次运行,测出全部数据
#
# 命令行上的 `minift compare` 就是这一调用。它默认训练三种方法——完全微调、LoRA(全部 16 个线性层上 $r = 8$,
# $\alpha = 16$)和只训练分类头的基线——每种 600 步。为了把运行时间控制在两分钟左右,这里**只跑完全微调和 LoRA**;步数、
# 批量大小、数据、秩和学习率都与默认值相同。快速模式运行 `CompareConfig.quick_config()`:只有 8 步,是一次冒烟测试。

# %%
# workers=1:每个批次在一个线程里整批计算,这样在任何机器上打印的数字都一样
config = pick(CompareConfig(methods=("full", "lora"), workers=1),
              CompareConfig.quick_config(methods=("full", "lora"), workers=1))
report_dir = out_dir("runs", "core05_compare")
results = compare(config, out=report_dir, progress=not FAST)

ran = results["config"]                                # 实际跑的配置(快速模式还会限制训练集大小)
full, lora = (next(run for run in results["runs"] if run["method"] == m) for m in ("full", "lora"))
r = ran["rank"]
print(f"{ran['steps']} steps of batch {ran['batch_size']} on {ran['train_size'] or 'all the'} training reviews, "
      f"LoRA r={r}, alpha={ran['alpha']:g}, workers={ran['workers']}; the run took {results['seconds']:.0f} s")
print(main_table(results))
print("written:", ", ".join(sorted(p.name for p in report_dir.iterdir() if p.is_file())))


# %% [markdown]
# 这张表就是 `report.md` 的第一张表。下面每个数字都读自 `results`——`compare` 返回并保存为 `results.json` 的字典——
# 所以你读到的就是这次运行测到的。图也都是这次运行写进报告目录的;下面这个小函数负责显示其中一张(在 notebook 里直接显示,
# 作为脚本运行时打印文件路径)。

# %%
def figure(name):
    """Show one of the PNG files the run wrote: inline in a notebook; as a script, where to open it."""
    path = report_dir / name
    assert path.is_file(), path
    if "ipykernel" in sys.modules:                 # 在 Jupyter 内核里:直接显示图片文件
        from IPython.display import Image, display
        display(Image(filename=str(path)))
    print("figure:", path)


# %% [markdown]
# ## 2. "减少90%以上参数更新"(§3.2)
#
# 权重为 $W$ [in, out] 的线性层,完全微调要训练 $\text{in}\cdot\text{out}$ 个数。LoRA 冻结 $W$,只训练 $A$ [$r$, in] 和
# $B$ [out, $r$]:
#
# $$\frac{\text{LoRA}}{\text{完全微调}} = \frac{r(\text{in}+\text{out})}{\text{in}\cdot\text{out}}.$$
#
# 每个块有四个线性层:`c_attn` [$C$, $3C$]、`attn.c_proj` [$C$, $C$]、`c_fc` [$C$, $4C$] 和 `mlp.c_proj` [$4C$, $C$]。
# 两种方法都要训练新加的分类头 `score.weight` [2, $C$]。完全微调还要训练其余所有参数:嵌入、LayerNorm、偏置。

# %%
base = GPTConfig.from_dict(results["base_config"])
C, L = base.n_embd, base.n_layer
linears = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]        # c_attn、attn.c_proj、c_fc、mlp.c_proj 的 [in, out]
head = 2 * C                                                   # score.weight [2 个标签, C],两种方法都训练它
adapters = L * sum(r * (i + o) for i, o in linears)
assert lora["trainable"] == adapters + head, (lora["trainable"], adapters + head)
assert full["trainable"] == full["total"]                      # 完全微调训练全部参数
fewer = 1 - lora["trainable"] / full["trainable"]
print(f"full trains {full['trainable']:,}; LoRA trains {adapters:,} (adapters) + {head:,} (head) "
      f"= {lora['trainable']:,}: {fewer:.1%} fewer")

gpt2 = GPTConfig.preset("gpt2")                                # 同样的计数放到 GPT-2 的规模,只用形状
gpt2_total = sum(int(np.prod(shape)) for shape in param_shapes(gpt2).values())
gpt2_adapters = gpt2.n_layer * sum(r * (i + o) for i, o in [(768, 2304), (768, 768), (768, 3072), (3072, 768)])
print(f"GPT-2 ({gpt2_total:,} parameters), LoRA r={r} on every linear: {gpt2_adapters:,} trained, "
      f"{1 - gpt2_adapters / gpt2_total:.2%} fewer")
verdicts['"90% fewer parameters"'] = (f"{fewer:.1%} fewer", "Held" if fewer >= 0.9 else "Did not hold")
print('"90% fewer parameters":', verdicts['"90% fewer parameters"'][1])

# %% [markdown]
# `assert` 用训练时实际的可训练参数核对了公式:这条结论是算术,不是测量。宽度越大,节省越多(见 GPT-2 那一行):
# $r(\text{in}+\text{out})$ 随宽度线性增长,$\text{in}\cdot\text{out}$ 随宽度的平方增长。
#
# ## 3. "训练时间减少约70%"(§5.1)
#
# 数一数一个线性层在一步训练里的矩阵乘法,设共有 $N$ 个 token。前向 $y = xW$ 需要 $2N\cdot\text{in}\cdot\text{out}$
# 次浮点运算(FLOPs)。反向传播还有两次同样大小的乘法:$\bar x = \bar y W^\top$,不论哪种方法都要靠它把梯度传给前面的层;
# 以及权重的梯度 $\bar W = x^\top \bar y$。冻结的 $W$ 只省掉 $\bar W$ (核心 04)。LoRA
# 又加上自己的小矩阵乘法,$6Nr(\text{in}+\text{out})$:
#
# $$\frac{\text{LoRA}}{\text{完全微调}} = \frac{4N\,\text{in}\cdot\text{out} + 6Nr(\text{in}+\text{out})}
# {6N\,\text{in}\cdot\text{out}} \;\ge\; \frac{2}{3}.$$
#
# 注意力自身的矩阵乘法($QK^\top$ 和加权求和)不含权重,两种方法花费相同,所以整步的比值还要更高。只看矩阵乘法,LoRA
# 最多省下三分之一。下面用 `count_flops` 统计本次运行一个批次的一步(分类头每条评论只读一个 token,它的 FLOPs 不计入),
# 然后给出实测的每步时间。

# %%
B, T = full["memory"]["batch_shape"]                           # 每一步的批次形状:[评论条数, token 数]
step = {m: count_flops(base, B, T, m, rank=r) for m in ("full", "lora")}
flops = {m: f["linear"] + f["lora"] + f["attention"] for m, f in step.items()}
flop_ratio = flops["lora"] / flops["full"]
assert flop_ratio >= 2 / 3, flop_ratio
print(f"one step of batch {B} x {T} = {B * T} tokens: full {flops['full'] / 1e9:.2f} GFLOP, "
      f"LoRA {flops['lora'] / 1e9:.2f} GFLOP, ratio {flop_ratio:.3f} (the floor is 2/3 = 0.667)")

time_ratio = lora["ms_per_step"] / full["ms_per_step"]
busy = results["machine"]["cpu_per_wall"]
print(f"measured: full {full['ms_per_step']:.0f} ms/step, LoRA {lora['ms_per_step']:.0f} ms/step, "
      f"ratio {time_ratio:.2f}: {1 - time_ratio:.0%} less time")
print("measured ratio below the FLOP ratio:", "yes" if time_ratio < flop_ratio else "no")
print(f"this run got {busy:.2f} CPU seconds per second of wall time"
      + (" (less than one core: other work shared the machine, so the times are noisy)" if busy < 0.8 else ""))
verdicts['"~70% less time"'] = (f"{1 - time_ratio:.0%} less", "Held" if 1 - time_ratio >= 0.6 else "Did not hold")
print('"~70% less time":', verdicts['"~70% less time"'][1])

# %% [markdown]
# FLOP 比值只约束矩阵乘法。一步里的其余部分——AdamW 更新和梯度裁剪要遍历每个可训练参数,还有嵌入的梯度——
# 不论批次多大花费都一样,而 LoRA 几乎把它们全省掉了。每步 token 很少时(本次的数量见上面的输出),
# 这部分在完全微调的一步里占比很大,实测比值可能低于 FLOP 比值(代码单元会告诉你是否如此)。真实微调每步有成千上万个 token,
# 矩阵乘法占主导,节省会回落到三分之一以内:LoRA 论文(Hu et al. 2021,§4.2)在 GPT-3 175B 上报告的提速是 25%。
# 细长的矩阵乘法则起反作用:LoRA 的乘法只有 $r$ 宽,CPU 跑这种乘法远达不到峰值。在共享机器上,比值每次运行也会有波动(CPU
# 那一行说明了这次机器有多忙)。和下面的内存一样,
# 时间能省多少取决于所处的规模区间;[教程 09](../../zh/09_time_and_memory.py)逐个算子计时。
#
# ## 4. "内存占用减少约80%"(§5.1)
#
# 一步训练要在内存里放四样东西:
#
# | 项 | 完全微调 | LoRA |
# |---|---|---|
# | 参数 | $P$ | $P$ + 适配器 |
# | 梯度 | $P$ | 适配器 |
# | AdamW 优化器状态($m$、$v$) | $2P$ | $2\times$ 适配器 |
# | 激活值(前向为反向保留的张量) | $\propto$ 批量 × token 数 × 宽度 × 层数 | 基本相同 |
#
# LoRA 去掉的是冻结权重的梯度和优化器状态:每个参数四个浮点数里的三个。激活值它去不掉:
# 冻结层的反向传播仍然需要该层的输入来计算 $\bar x$。所以只有参数占大头时,节省才会大。`compare` 用 `tracemalloc`
# 实测一步的内存峰值,`minift.measure.memory.predict_memory` 则只凭形状逐项预测。

# %%
print(memory_table(results))
for run in (full, lora):
    measured, predicted = run["memory"]["measured"]["total"], run["memory"]["predicted"]["total"]
    print(f"{run['label']}: measured {measured / MiB:.2f} MiB, predicted {predicted / MiB:.2f} MiB, "
          f"off by {abs(measured - predicted) / measured:.2%}")
    assert abs(measured - predicted) / measured < 0.01, run["label"]     # 预测值与实测值相差不超过 1%
parts = full["memory"]["measured"]
print(f"full fine-tuning's peak: activations {parts['activations'] / parts['total']:.0%}, gradients + AdamW state "
      f"{(parts['gradients'] + parts['optimizer']) / parts['total']:.0%}; the largest term: "
      f"{max(('parameters', 'gradients', 'optimizer', 'activations'), key=parts.get)}")
less_memory = 1 - lora["memory"]["measured"]["total"] / full["memory"]["measured"]["total"]
from minift.measure.memory import CLAIM                  # 0.8: 报告和 `minift memory --claim` 用的同一条规则
verdicts['"~80% less memory"'] = (f"{less_memory:.0%} less", "Held" if less_memory >= CLAIM else "Did not hold")
print('"~80% less memory":', verdicts['"~80% less memory"'][1])

for b, t in ((8, 1024), (1, 128)):                             # 只做预测:80% 在什么条件下可能成立?
    print(f"predicted for GPT-2, batch {b} x {t} tokens: LoRA saves {1 - memory_saving(gpt2, b, t, rank=r):.0%}")

# %% [markdown]
# 实测与预测的差距在 `assert` 允许的 1% 以内,所以这个拆分是可信的。看点出最大项的那一行:不管激活值有多重,LoRA
# 都得全部保留。GPT-2 的两行是同样的算术放到真实模型的规模上:批次长时激活值占主导,LoRA 省得很少;
# 只有一条短序列时参数相关的几项占主导,节省才接近原文的数字。"减少80%"描述的是某个规模区间,而不是 LoRA 本身。
# [教程 09](../../zh/09_time_and_memory.py)对模型大小、token 数和秩做了扫描。
#
# ## 5. "性能相当"(§3.2)
#
# 先看两次运行有没有学到东西。训练曲线图给出损失值(浅色:每一步;粗线:滑动平均)和训练过程中六个点上的验证集准确率。

# %%
figure("training.png")

# %% [markdown]
# 测试集用的评论模板在训练中从没出现过,所以它衡量的是泛化能力,而不是记忆。测试集是平衡的:多数类所占的比例,
# 就是一个什么都没学到的模型的得分。"相当"需要一条规则;这里沿用报告的规则:相差不超过 3 个百分点。

# %%
test = load_task_splits(ran["task"], None, ran["eval_size"])[2]
chance = np.bincount(test.label_ids).max() / len(test.label_ids)
gap = lora["test_accuracy"] - full["test_accuracy"]
print(f"test accuracy: full {full['test_accuracy']:.3f}, LoRA {lora['test_accuracy']:.3f} ({100 * gap:+.1f} points);"
      f" chance (the majority label) {chance:.3f}")
verdicts['"comparable accuracy"'] = (f"{100 * gap:+.1f} points", "Held" if abs(gap) <= 0.03 else "Did not hold")
print('"comparable accuracy" (within 3 points):', verdicts['"comparable accuracy"'][1])
figure("accuracy_vs_trainable.png")

# %% [markdown]
# 读判定时要连同差距一起读:上面打印了每种方法离随机水平多远、两者之间差多少。在这个规模上,一个随机种子的影响很大(见
# README 里的多种子表);`minift compare --seeds 1,2` 会把每次运行重复一遍,`--train-size 200` 则检验原文的另一条结论:LoRA
# 在小数据集上更不容易过拟合。
#
# ## 6. MIT 论文发现了什么(§4.2)
#
# ### 6a. 更新的有效秩
#
# 把每个矩阵的更新写成 $\Delta W = W_\text{tuned} - W_0$,取它的奇异值 $\sigma_1 \ge \sigma_2 \ge \dots$。LoRA 的更新是
# $s\,A^\top B^\top$,要经过一个 $r$ 维的瓶颈,所以最多只有 $r$ 个非零奇异值。*有效秩*(Roy & Vetterli)
# 数的是其中真正起作用的有几个:$\exp\big(-\sum_i p_i \ln p_i\big)$,其中 $p_i = \sigma_i / \sum_j \sigma_j$。$k$
# 个相等的奇异值,有效秩就是 $k$;有效秩永远不超过秩。

# %%
figure("update_spectra.png")
rank_lora = [u["eff_rank"] for u in lora["updates"]]
rank_full = [u["eff_rank"] for u in full["updates"]]
assert max(rank_lora) <= r + 1e-6, max(rank_lora)              # 由构造决定:rank(s A^T B^T) <= r
tail = max(max(u["singular_values"][r:]) / u["singular_values"][0] for u in lora["updates"])
assert tail < 1e-4, tail                                       # 第 r 个之后,LoRA 的奇异值只是舍入误差
updates = results["summary"]["updates"]
print(f"effective rank of dW, mean over {len(rank_lora)} matrices: full {np.mean(rank_full):.1f} "
      f"(of a possible {updates['full']['max_rank']}), LoRA {np.mean(rank_lora):.1f} (at most r = {r})")
print(f"share of ||dW||^2 in the top {r} directions (median): full {updates['full']['energy_top_r']:.0%}, "
      f"LoRA {updates[lora['label']]['energy_top_r']:.0%}; LoRA's largest sigma beyond r: {tail:.1e} of its first")
held = np.mean(rank_full) > np.mean(rank_lora)
verdicts["full's update has the higher effective rank"] = (f"{np.mean(rank_full):.1f} vs {np.mean(rank_lora):.1f}",
                                                            "Held" if held else "Did not hold")
print("full's update has the higher effective rank:", "Held" if held else "Did not hold")

# %% [markdown]
# LoRA 的奇异值谱在虚线 $r$ 处截止;完全微调的谱则一路衰减,没有断崖。一个秩为 $r$ 的更新最多能容纳完全微调更新的多少,
# 就看后者落在前 $r$ 个方向上的能量占比(Eckart–Young 定理),上面已打印。逐层视图显示每个更新落在哪里:每个矩阵移动了多少,
# 即 $\|\Delta W\|/\|W_0\|$,以及它的有效秩。

# %%
figure("update_by_layer.png")

# %% [markdown]
# ### 6b. 两个更新相像吗?
#
# 准确率相近,不等于解也相近。对每个矩阵,分别取两个更新的前 $k$ 个左奇异向量($U_\text{full}$、$U_\text{LoRA}$, $k = r$),
# 衡量两个子空间的重合程度:$\varphi = \|U_\text{full}^\top U_\text{LoRA}\|_F^2 / k$(LoRA 论文第 7 节的子空间相似度)。1
# 表示同一个子空间;两个随机的 $k$ 维子空间大约重合 $k/\text{宽度}$。

# %%
figure("similarity.png")
sim = results["summary"]["similarity"]
print(f"overlap of the top-{sim['k']} directions, over {sim['matrices']} matrices: mean {sim['mean']:.2f} "
      f"(from {sim['min']:.2f} to {sim['max']:.2f}); two random subspaces: {sim['random']:.3f}; "
      f"{sim['above_twice_random']} matrices above twice random")
verdicts["the two updates are different (overlap < 0.5)"] = (f"overlap {sim['mean']:.2f}",
                                                             "Held" if sim["mean"] < 0.5 else "Did not hold")
print("the two updates are different (overlap < 0.5):", verdicts["the two updates are different (overlap < 0.5)"][1])
print("more alike than two random subspaces (mean > 2 x random):", "Yes" if sim["mean"] > 2 * sim["random"] else "No")

# %% [markdown]
# 把最后两行放在一起看。重合度高于随机、却低于一半,说明两种方法共享一部分方向,另一部分则各走各的:
# 这就是论文所说的"等价的错觉"(illusion of equivalence)的缩微版。
#
# ### 6c. 入侵维度
#
# 论文的算法 1 作用在微调后的权重 $W_0 + \Delta W$ 上(而不是 $\Delta W$):取它的前 10 个奇异向量,如果某个向量与 $W_0$
# 所有奇异向量的 $|\cos|$ 最大值都低于 $\varepsilon$,它就是一个*入侵维度*——一个全新的强方向。论文在很宽的模型上用
# $\varepsilon = 0.5$。宽度只有 128 时,连*随机*方向都能在 $W_0$ 的奇异向量里找到相当接近的一个,
# 所以每个计数都要和随机基线并排看。图中对 $\varepsilon$ 做了扫描,
# 阴影带标出随机方向从"很少被算作入侵"变为"几乎总被算作入侵"的区间:只有在这个区间里,计数才有意义。

# %%
figure("intruders.png")
spectral = lora["spectral"]
i = spectral["eps"].index(0.5)
print(f"at the paper's eps = 0.5: full {full['spectral']['intruders'][i]}, LoRA {spectral['intruders'][i]} "
      f"of {spectral['possible']} top directions; random directions: {spectral['random_baseline'][i]:.0f}")
summary = results["summary"]
mid = summary["intruder_mid"]
print(f"band where the count means something: eps {summary['intruder_range'][0]:g} to "
      f"{summary['intruder_range'][1]:g}; at eps = {mid['eps']:g}: full {mid['full']:.0%}, "
      f"LoRA {mid[lora['label']]:.0%}, random {mid['random']:.0%}")
held = mid[lora["label"]] > mid["full"]
verdicts["LoRA has more intruders than full"] = (f"{mid[lora['label']]:.0%} vs {mid['full']:.0%}",
                                                 "Held" if held else "Did not hold")
print("LoRA has more intruders than full:", "Held" if held else "Did not hold")

# %% [markdown]
# 在 $\varepsilon = 0.5$ 时随机方向会全部被计入(见上面的输出),所以这个计数在这里说明不了什么。在阴影带内,
# 把每种方法和随机那条线比较。[教程 10](../../zh/10_intruder_dimensions.py)做了论文里的秩扫描、rsLoRA 和持续学习——
# 论文认为入侵维度会在持续学习中累积。
#
# ### 6d. 遗忘
#
# 遗忘指的是在与预训练文本同分布的留出文本上,下一个 token 的损失值在微调后减去微调前的差(单位为 nats,
# 通过模型绑定的语言模型头计算)。论文把入侵维度和遗忘联系起来,并检验了一种缓解办法:把入侵维度的奇异值乘以
# $\lambda = 0.75$。

# %%
print(f"forgetting: full {full['forgetting']:+.3f}, LoRA {lora['forgetting']:+.3f} nats "
      f"(the base's loss: {results['base_lm_loss']:.3f})")
fix = lora["mitigation"]
print(f"mitigation on LoRA (eps = {fix['eps']:g}, lambda = {fix['lam']:g}): forgetting {lora['forgetting']:+.3f} -> "
      f"{fix['forgetting']:+.3f}, test accuracy {lora['test_accuracy']:.3f} -> {fix['test_accuracy']:.3f}")
held = lora["forgetting"] < full["forgetting"]
verdicts["LoRA forgets less"] = (f"{lora['forgetting']:+.3f} vs {full['forgetting']:+.3f}",
                                 "Held" if held else "Did not hold")
print("LoRA forgets less:", "Held" if held else "Did not hold")

# %% [markdown]
# ## 7. 成绩单
#
# 上面所有判定汇成一张表:这是本次运行对原文的回答。

# %%
print(f"{'claim':<48}{'measured':<20}verdict" + ("   (FAST MODE: smoke run, not findings)" if FAST else ""))
for claim, (measured, verdict) in verdicts.items():
    print(f"{claim:<48}{measured:<20}{verdict}")
assert verdicts['"90% fewer parameters"'][1] == "Held"        # 纯算术:任何模式下都成立
assert verdicts["full's update has the higher effective rank"][1] == "Held" or FAST

# %% [markdown]
# ## 要点回顾
#
# - **参数量**是算术:$r(\text{in}+\text{out})$ 对比 $\text{in}\cdot\text{out}$。"减少90%以上"成立,模型越宽越明显。
# - **训练时间**:冻结的权重仍要做前向和 $\bar x = \bar y W^\top$,只省掉 $\bar W$,所以 LoRA 至少保留矩阵乘法 FLOPs 的
#   2/3。只有一步里的其余部分(遍历全部权重的 AdamW)分量很重、也就是每步 token 很少时,才能省得更多。
# - **内存占用**:LoRA 去掉的是冻结权重的梯度和优化器状态,从来去不掉激活值。能省多少取决于规模区间(模型大小对比批量 ×
#   token 数),既能逐项预测,也能实测。
# - **准确率**:"相当"需要一条明确的规则,还需要不止一个随机种子;报告差距时把随机水平一并给出。
# - **MIT 论文**:LoRA 更新的有效秩由构造决定,最多为 $r$;即使准确率相近,完全微调的更新也不是同一个改动。
#   入侵维度的计数只有对照随机基线才有意义。
#
# 核心课程到此结束:从一个线性层的梯度(核心 01)一路走到原文的结论。想深入(进阶):
# [教程 06](../../zh/06_full_finetuning.py)(完全微调)、[09](../../zh/09_time_and_memory.py)(时间与内存)、
# [10](../../zh/10_intruder_dimensions.py)(MIT 论文与持续学习);秩扫描请运行 `minift compare --ranks 1,2,4,8,16`。
#
# ## 练习
#
# 在 `my_...` 函数里写下你的答案(替换 `raise NotImplementedError`),然后运行它后面的单元。在你动手之前,
# 那个单元检查的是参考答案;参考答案在 Jupyter 里是折叠的——先自己试试。
#
# **练习 1——秩 $r$ 能装下多少更新。** 给定一个矩阵的奇异值(从大到小)和 $r$,返回 $\|\Delta W\|_F^2 = \sum_i \sigma_i^2$
# 中前 $r$ 个所占的比例。检查会与报告里完全微调各矩阵的中位数对比,并要求 LoRA 的比例为 1。

# %%
def my_energy_in_top(singular_values, r):
    """Share of sum(sigma^2) in the first r values; 0 for an all-zero update."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_energy_in_top(singular_values, r):
    s2 = np.square(np.asarray(singular_values, dtype=np.float64))
    return float(s2[:r].sum() / s2.sum()) if s2.sum() > 0 else 0.0


# %%
def check_energy(answer):
    for run in (full, lora):
        shares = [answer(u["singular_values"], r) for u in run["updates"]]
        median = float(np.median(shares))
        print(f"{run['label']}: median share in the top {r}: yours {median:.4f}, "
              f"report {updates[run['label']]['energy_top_r']:.4f}")
        assert abs(median - updates[run["label"]]["energy_top_r"]) < 1e-9
        assert all(abs(answer(u["singular_values"], r) - energy_in_top(u["singular_values"], r)) < 1e-9
                   for u in run["updates"])
    assert answer([0.0, 0.0], 1) == 0.0 and abs(answer([3.0, 4.0], 1) - 9 / 25) < 1e-12
    assert min(answer(u["singular_values"], r) for u in lora["updates"]) > 1 - 1e-6   # 秩 <= r:能量全在前 r 个方向


exercise("Exercise 1 (energy in the top r)", check_energy, my_energy_in_top, solution_energy_in_top)

# %% [markdown]
# **练习 2——FLOP 下限。** 返回一个线性层 [in, out] 在一步训练中每个 token 的矩阵乘法 FLOPs:`method="full"` 训练
# $W$;`method="lora"` 冻结 $W$、训练一个秩为 $r$ 的适配器。检查会把你的结果在两个模型的所有线性层上求和,与 `count_flops`
# 对比,再看方阵在 $r$ 变小时的比值。

# %%
def my_linear_flops(n_in, n_out, r, method):
    """Matmul FLOPs per token of one linear layer in a training step (forward + backward)."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_linear_flops(n_in, n_out, r, method):
    frozen = 4 * n_in * n_out                          # y = xW 和 dx = dy W^T;跳过 dW = x^T dy
    return 6 * n_in * n_out if method == "full" else frozen + 6 * r * (n_in + n_out)


# %%
def check_linear_flops(answer):
    for name in ("demo", "gpt2"):
        cfg = GPTConfig.preset(name)
        c = cfg.n_embd
        shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]
        for method in ("full", "lora"):
            want = count_flops(cfg, 1, 1, method, rank=r)
            yours = cfg.n_layer * sum(answer(i, o, r, method) for i, o in shapes)
            print(f"{name} {method}: count_flops {want['linear'] + want['lora']:,}, yours {yours:,}")
            assert yours == want["linear"] + want["lora"]
    ratios = [answer(4096, 4096, k, "lora") / answer(4096, 4096, k, "full") for k in (64, 8, 1)]
    print("square 4096 x 4096, LoRA / full for r = 64, 8, 1:", ", ".join(f"{x:.4f}" for x in ratios))
    assert all(x > 2 / 3 for x in ratios) and ratios == sorted(ratios, reverse=True)


exercise("Exercise 2 (the FLOP floor)", check_linear_flops, my_linear_flops, solution_linear_flops)
