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
# # 06 · 完全微调:每个权重都会动,代价是什么
#
# **原文:** §2.1 完全微调的步骤详解:
#
# > 4. 训练模型:使用任务数据集对预训练模型进行训练。在这个过程中,模型的所有参数都会被更新 …
# > 6. 部署和应用:… 还需要考虑模型的推理速度、内存占用等因素。
#
# 以及 §2.2 完全微调的优势与局限性。那里列出的四点局限是:计算成本高;过拟合风险("如果任务数据集较小,容易导致模型过拟合");
# 参数量大(部署时占用多);训练不稳定("损失值波动较大或收敛缓慢")。
#
# 每一条说法,都在随附的基座模型和教程 05 的情感分析任务上实测一遍。测量结果比原文说得更细的地方,
# 我们会指出来:"所有参数都会被更新"对每个*张量*都成立,对每个*数*却不成立。
#
# **你将学到**
# 1. 测量每个权重张量移动了多远,$\lVert \Delta W\rVert / \lVert W\rVert$,找出哪些元素根本没动,以及原因;
# 2. 完全微调的一步训练在内存里要存什么(`minift.measure.memory.predict_memory`:每个训练参数 2 个 AdamW 浮点数和
#    1 个梯度),以及一步要多久;
# 3. 保存下来的模型有多大(`save_pretrained`),与 LoRA 要保存的对比;
# 4. 看完全微调把 64 个样本过拟合:训练损失降到 0,验证损失上升;
# 5. "训练不稳定"是什么样子(学习率过大),以及 minift 的发散保护(`TrainingDiverged`)何时触发;
# 6. 部署:一个自包含的模型目录,重新加载后逐位一致,以及它的推理速度。
#
# **用时:** 阅读约 30 分钟。正常模式运行 3–5 分钟(一次 400 步的微调;两次 200 步的小数据训练,完全微调和 LoRA 各一次;三次
# 150 步的训练。设 `OPENBLAS_NUM_THREADS=1`、其他任务同时在抢 CPU 核时,三次实测在 3 分 16 秒到 4 分 41 秒之间;
# 核空闲时更快),快速模式(`MINIFT_FAST=1`)15–26 秒。以上均在一台繁忙的共享机器的 2 个 CPU 核上测得。
#
# **前置:** 教程 05(任务、分类头、`finetune`;有[中文版](05_finetuning_basics.py))。
# 英文原版:[06_full_finetuning.py](../06_full_finetuning.py)。

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np

from minift import GPT, GPTConfig, LoRAConfig
from minift.app.tutorial import FAST, exercise, out_dir, pick, show
from minift.base import load_base
from minift.config import HEAD_WEIGHT
from minift.data import task_source
from minift.measure.memory import format_memory, predict_memory
from minift.methods import setup_method
from minift.model import param_shapes
from minift.training.evaluate import split_metrics
from minift.training.finetune import (
    DEFAULT_HEAD_LR,
    DEFAULT_LR,
    FinetuneConfig,
    finetune,
    load_task_splits,
)
from minift.training.train import TrainConfig, TrainingDiverged, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode: every section is a smoke run (few steps, small evaluation sets), whose numbers and verdicts are "
      "not findings" if FAST else "normal mode")
base, tok = load_base()

# %% [markdown]
# ## 1. 一次完全微调(§2.1 第 1–5 步)
#
# §2.1 的第 1–5 步就是教程 05 的五个步骤,只是什么都不冻结:`FinetuneConfig(method="full")`。学习率 1e-3 是教程
# 05 在验证集上选出的那个。

# %%
steps = pick(400, 30)
# (workers=1:整个批次在一个线程里算,下文引用的数字在任何机器上都出自这条路径;默认值 "auto" 在更快时
# 把批次拆到 2 个线程上,这会改变结果的最后几位。)
fcfg = FinetuneConfig(method="full", steps=steps, batch_size=16, lr=1e-3, eval_every=0, eval_size=pick(None, 128),
                      workers=1)
model, _, summary = finetune(base, tok, fcfg, progress=not FAST)
print(f"{summary['trainable']:,} trainable parameters ({summary['percent']:.0f}%), {steps} steps, "
      f"{summary['ms_per_step']:.0f} ms/step; validation accuracy {summary['val_accuracy']:.3f}, "
      f"test accuracy {summary['test_accuracy']:.3f}")
if FAST:
    print(SMOKE)

# %% [markdown]
# ## 2. 每个权重张量都动了
#
# 对每个参数张量,计算相对变化
#
# $$r(W) = \frac{\lVert W_\text{tuned} - W_0\rVert_F}{\lVert W_0\rVert_F}.$$
#
# (`score.weight` 在基座模型里没有 $W_0$:它是新加的,所以不计入。)

# %%
rel = {n: float(np.linalg.norm(model.params[n] - base.params[n]) / np.linalg.norm(base.params[n]))
       for n in base.params}
order = sorted(rel, key=rel.get, reverse=True)
print("moved most: ", ", ".join(f"{n} {rel[n]:.3f}" for n in order[:4]))
print("moved least:", ", ".join(f"{n} {rel[n]:.4f}" for n in order[-4:]))
ln_gains = {n: rel[n] for n in rel if n.split(".")[-2].startswith("ln_") and n.endswith(".weight")}
c_proj = {n: rel[n] for n in rel if ".c_proj." in n}
others = [rel[n] for n in rel if n not in ln_gains]
print(f"LayerNorm gains ({len(ln_gains)}): {min(ln_gains.values()):.1%} to {max(ln_gains.values()):.1%}; "
      f"c_proj weights and biases ({len(c_proj)}): {min(c_proj.values()):.1%} to {max(c_proj.values()):.1%}; "
      f"the 4 that moved most are all c_proj: {all(n in c_proj for n in order[:4])}")
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 9))
names = list(base.params)
ax.barh(range(len(names)), [rel[n] for n in names], color=["C1" if n.startswith(("wte", "wpe")) else "C0"
                                                            for n in names])
ax.set_yticks(range(len(names)), names, fontsize=6)
ax.invert_yaxis()
ax.set_xscale("log")
ax.set_xlabel("‖W_tuned − W_0‖ / ‖W_0‖")
ax.set_title(f"full fine-tuning, {steps} steps: relative change of every tensor")
show(fig, "06_relative_change")

# %% [markdown]
# 每个张量都动了,只是相对幅度相差很大(范围见上面的输出):LayerNorm 的增益本来就在 1 附近,动得最少,
# 只有一两个百分点;`c_proj` 的权重(初始化时比其他线性层小,标准差 $0.02/\sqrt{2L}$)和它们的偏置(预训练后很小)
# 变化了百分之几十,占据了前几名。相对变化的大小,既取决于训练用了这个张量多少,也同样取决于张量本身有多大。
#
# 但并不是每个*数*都动了。如果一个元素的梯度始终恰好为 0,AdamW 对它的更新也恰好为 0(它的矩 $m, v$ 一直是 0,
# 而这里权重衰减为 0)。有两个张量含有这样的元素:
#
# - `wpe` 的第 $t$ 行(位置 $t$)只有在评论至少有 $t+1$ 个 token 时才得到梯度;
# - `wte` 的第 $v$ 行(token $v$)只有在批次中出现 token $v$ 时才得到梯度(练习 2)。
#
# 填充从不贡献梯度:填充位于最后一个真实 token 之后,分类头只读那一个位置,而因果注意力从不看后面的位置。
# 我们重放这次训练见过的批次(同样的数据源、同样的种子),找出其中最长的一条真实评论。

# %%
train_split, val_split, test_split = load_task_splits("sentiment", eval_size=pick(None, 128))
replay = task_source(train_split, tok, max_len=128, batch_size=16, seed=0)
seen = [replay.next_batch() for _ in range(steps)]                  # 第 1 节用过的批次,顺序不变
longest = max(int(b["attention_mask"].sum(1).max()) for b in seen)
moved_rows = np.flatnonzero(np.any(model.params["wpe.weight"] != base.params["wpe.weight"], axis=1))
print(f"longest review seen: {longest} tokens; wpe rows that moved: {moved_rows.min()}..{moved_rows.max()} "
      f"({moved_rows.size} of {base.cfg.n_ctx})")

# %% [markdown]
# **检验。** 基座模型的每个张量都变了;动过的 `wpe` 行恰好是位置 $0..\text{longest}-1$,其余各行与基座模型逐位相同。
# 正常模式下:LayerNorm 增益是所有张量里动得最少的(不到 3%),动得最多的四个都是 `c_proj` 张量,并且每个 `c_proj`
# 张量的变化都超过 10%。

# %%
assert all(v > 0 for v in rel.values())
assert np.array_equal(moved_rows, np.arange(longest))
if not FAST:                                   # 排名需要完整的训练:30 步让所有张量都只动一点点
    assert max(ln_gains.values()) < min(others) and max(ln_gains.values()) < 0.03
    assert all(n in c_proj for n in order[:4]) and min(c_proj.values()) > 0.1

# %% [markdown]
# ## 3. 代价:计算与内存(计算成本高)
#
# 完全微调的一步训练,除了权重本身,还要存
#
# $$\underbrace{P}_{\text{梯度}} + \underbrace{2P}_{\text{AdamW 的 } m,\,v}\ \text{个浮点数},\qquad
# P = \text{训练的参数个数},$$
#
# 外加反向计算所需的激活值(它们随 token 数增长,与 $P$ 无关)。
#
# `predict_memory` 按代码逐项计算这些量(`minift/measure/memory.py`);作为对照,也算一下 LoRA(每个线性层都用 r = 8),
# 批次大小与训练时相同。

# %%
B, T = seen[0]["input_ids"].shape
full_mem = predict_memory(base.cfg, "full", B, T, head_kind="classification")
lora_mem = predict_memory(base.cfg, "lora", B, T, rank=8, targets="all-linear", head_kind="classification")
print(f"one step, batch {B}×{T} tokens, float32 (MiB):")
print(format_memory(full_mem, lora_mem, labels=("full", "LoRA r=8")))
print(f"trained parameters: full {full_mem['trainable']:,}, LoRA {lora_mem['trainable']:,}")

# %% [markdown]
# 读这张表:梯度和优化器状态分别是训练参数字节数的 $1\times$ 和 $2\times$,所以完全微调要付出 `parameters`
# 那一行的三倍,LoRA 付出的却不到 1 MiB。但在这个规模和批次下,占大头的是激活值(它们取决于 token 数,两种方法一样多,LoRA
# 甚至还多一点;workspace 一行是反向计算在峰值时的短期临时数组,见教程 09),所以 LoRA 预测的总量(最后一行,
# 表示为完全微调总量的比例)省下的远不到一半——远不是原文 §5.1 说的"内存占用仅为20%"(教程 09 说明这个说法何时成立)。
# 这些是由形状算出的预测,快速模式下也一样。一步训练的时间则是实测:在一个批次上,先只算前向,再算前向 + 反向。

# %%
batch = seen[0]
reps = pick(10, 3)


def best_time(fn):
    """Fastest of `reps` calls (the least disturbed by other jobs on a shared machine), in ms."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


fwd_ms = best_time(lambda: model.forward(batch["input_ids"], attention_mask=batch["attention_mask"]))
fwd_bwd_ms = best_time(lambda: model.loss_and_grads(**batch))
print(f"forward {fwd_ms:.1f} ms, forward + backward {fwd_bwd_ms:.1f} ms (ratio {fwd_bwd_ms / fwd_ms:.1f}, "
      f"against about 3 by FLOPs); section 1's run averaged {summary['ms_per_step']:.0f} ms per step")
if FAST:
    print(SMOKE)

# %% [markdown]
# 反向计算的代价约为前向的两倍(对每个线性层:$\bar x = \bar y W^\top$ 和 $\bar W = x^\top \bar y$,
# 每次前向矩阵乘法对应两次),所以按 FLOPs 算,前向 + 反向约为前向的 3 倍。上面打印的实测比值不一定与之吻合:在这个规模下,
# 矩阵乘法不是全部开销,非矩阵乘法的部分(softmax、GELU、LayerNorm、交叉熵:前向只需扫一两遍,反向要扫好几遍)和 Python
# 每个操作的固定开销,在前向和反向之间的分配与 FLOPs 不同。训练时的平均每步时间还包括梯度裁剪和 AdamW 更新(对全部 $P$
# 个参数扫几遍数组),批次长度也各不相同——在共享机器上,还取决于当时在跑的其他任务:只在本教程的同一次运行之内比较时间。
#
# **检验。** 预测中的梯度项和优化器项恰好是 $4P$ 和 $8P$ 字节,$P$ 为全部参数(float32);LoRA 一步训练的参数不到完全微调的
# 10%,它的梯度和优化器状态合计不到 1 MiB;激活值比完全微调的梯度与优化器状态之和还大(LoRA 的激活值更大);LoRA
# 预测的总量超过完全微调的一半。

# %%
P = summary["trainable"]
assert full_mem["trainable"] == P and full_mem["gradients"] == 4 * P and full_mem["optimizer"] == 8 * P
assert lora_mem["trainable"] < 0.1 * P and lora_mem["gradients"] + lora_mem["optimizer"] < 2**20
assert lora_mem["activations"] > full_mem["activations"] > full_mem["gradients"] + full_mem["optimizer"]
assert 0.5 < lora_mem["total"] / full_mem["total"] < 1

# %% [markdown]
# ## 4. 要保存什么(参数量大)
#
# 完全微调改变了每个张量,所以部署它就意味着交付一整个模型:`save_pretrained` 写出一个 Hugging Face GPT-2
# 目录(`config.json`、`model.safetensors`),`transformers` 的 `GPT2ForSequenceClassification` 可以直接加载;传入分词器时,
# 它还会把填充 id 写进 `config.json`(分类器靠它找到每行最后一个真实 token),我们再把 `tokenizer.json` 存在旁边,
# 这样就能直接输入原始文本。权重文件的大小是 $4P$ 字节加一个很小的文件头。

# %%
folder = out_dir("runs", "06_full") / "model"
model.save_pretrained(folder, tok)                      # 权重,以及记有填充 id 和 end-of-text id 的 config.json
tok.save(folder / "tokenizer.json")                     # 再加分词器:推理所需的一切都在这里
size = (folder / "model.safetensors").stat().st_size
C, L = base.cfg.n_embd, base.cfg.n_layer
lora_numbers = L * 8 * (C + 3 * C) + 2 * C              # 每个 c_attn [C, 3C] 上 r = 8,外加分类头
print(f"model.safetensors: {size:,} bytes = 4 × {P:,} parameters + {size - 4 * P:,} bytes of header")
print(f"a LoRA adapter (r = 8 on c_attn) would hold {lora_numbers:,} numbers = {4 * lora_numbers:,} bytes "
      f"({4 * lora_numbers / size:.1%} of this) — tutorial 07 saves one")
print(f"r = 8 on all four linears of every block (section 3's LoRA), plus the head: {lora_mem['trainable']:,} numbers "
      f"= {4 * lora_mem['trainable']:,} bytes ({4 * lora_mem['trainable'] / size:.1%} of this)")

# %% [markdown]
# **检验。** 文件大小是 $4P$ 字节加一个不到 1% 的文件头。

# %%
assert 4 * P <= size < 1.01 * 4 * P

# %% [markdown]
# ## 5. 小训练集上的过拟合(过拟合风险)
#
# 只保留 64 条训练评论(`train_size=64`,标签平衡),训练很多轮。每隔几步(`eval_every`)
# 在**这 64 条评论**和验证集上各算一次损失:过拟合就是前者下降、后者上升,
#
# $$L_\text{train}(\theta_t) \to 0 \qquad\text{同时}\qquad L_\text{val}(\theta_t) \uparrow .$$
#
# 这里直接调用 `minift.training.train.train`(`finetune` 在内部做的也是这件事),以便在两个划分上都做评估。

# %%
small_train, small_val, _ = load_task_splits("sentiment", train_size=64, eval_size=pick(200, 128))
small = base.to()
small.add_classification_head(small_train.label_names, seed=0)
setup_method(small, "full")


def both_splits(m):
    """Loss and accuracy on the 64 training reviews and on the validation reviews."""
    out = {"train_" + k: v for k, v in split_metrics(m, small_train, tok, 128).items()}
    return {**out, **{"val_" + k: v for k, v in split_metrics(m, small_val, tok, 128).items()}}


small_steps = pick(200, 60)
start = both_splits(small)
run = train(small, task_source(small_train, tok, 128, 16, seed=0),
            TrainConfig(steps=small_steps, batch_size=16, lr=1e-3, warmup=20, eval_every=10),
            evaluate=both_splits, progress=not FAST)
evals = [dict(step=0, **start)] + run.evals
best = min(evals, key=lambda e: e["val_loss"])
end = evals[-1]
print(f"{len(small_train)} training reviews, {small_steps} steps = {small_steps * 16 / 64:.0f} epochs")
shown = [e for e in evals if e["step"] <= 40 or e["step"] % 40 == 0 or e is end]   # 前 10 轮逐次列出
for e in shown:
    print(f"  step {e['step']:>3}: train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.3f} | "
          f"validation loss {e['val_loss']:.3f} acc {e['val_accuracy']:.3f}")
print(f"lowest validation loss {best['val_loss']:.3f} at step {best['step']}; at the end {end['val_loss']:.3f}")
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot([e["step"] for e in evals], [e["train_loss"] for e in evals], "o-", ms=3, label="training loss (the 64)")
ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", ms=3, label="validation loss")
ax.axhline(math.log(2), color="0.5", ls="--", lw=0.8, label="log 2 (a coin flip)")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy")
ax.set_title("full fine-tuning on 64 reviews")
ax.legend()
show(fig, "06_overfitting")

# %% [markdown]
# 原文在这里说对了,而且效应很强(见上面打印的几行):前十轮之内,模型就把 64 条训练评论全部判对,训练损失接近 0,
# 而验证准确率停在随机水平,验证损失从起点 $\log 2$ 附近一路爬升到它的好几倍——模型错得很笃定。它在验证集上从来没有变好过:
# 最低的验证损失属于未训练的模型,在第 0 步。64 条评论不足以确定组合规则(一百万个参数完全可以借助人名、
# 句式模板和词的搭配,把这 64 条背下来)。
#
# LoRA 只训练百分之几的参数(第 4 节打印了这个比例),它的过拟合会*更轻*吗?这正是原文 §4.2
# 的说法:LoRA"在泛化能力方面表现良好,尤其是在小数据集上"。MIT 论文没有检验这一点;LoRA 论文唯一的小数据实验(附录
# F.3:GPT-3 在 MNLI 上用 100、1k 和 10k 个样本)发现,100 个样本时 LoRA 比完全微调高 3.6 个点,1k 和 10k 时持平,
# 而且只报告了准确率,没有报告训练集与验证集之间的差距。实测一下:同样的 64 条评论、同样的步数和批次,
# 在每个块的全部四个线性层上用 LoRA r = 8,学习率取 `finetune` 的默认值(适配器 $2\cdot10^{-3}$,分类头 $3\cdot10^{-4}$)。

# %%
small_lora = base.to()
small_lora.add_classification_head(small_train.label_names, seed=0)
setup_method(small_lora, "lora", LoRAConfig(r=8, alpha=16, targets=("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")))
lora_run = train(small_lora, task_source(small_train, tok, 128, 16, seed=0),
                 TrainConfig(steps=small_steps, batch_size=16, lr=DEFAULT_LR["lora"], warmup=20, eval_every=10,
                             lr_scale={HEAD_WEIGHT: DEFAULT_HEAD_LR["lora"] / DEFAULT_LR["lora"]}),
                 evaluate=both_splits, progress=not FAST)
lora_end = lora_run.evals[-1]
print(f"{small_lora.num_params(trainable_only=True):,} trainable parameters (full: {small.num_params():,})")
memorised = {}                                             # 64 条全部判对的第一次评估
for label, history in (("full", evals), ("lora r=8", lora_run.evals)):
    e = history[-1]
    memorised[label] = next((h["step"] for h in history if h["train_accuracy"] == 1.0), math.inf)
    print(f"  {label:<9} at step {e['step']}: train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.3f} | "
          f"validation loss {e['val_loss']:.3f} acc {e['val_accuracy']:.3f} | all 64 right from step "
          f"{memorised[label]}")
print(f"LoRA memorised later than full fine-tuning: {memorised['lora r=8'] > memorised['full']}; "
      f"LoRA's validation loss ended lower: {lora_end['val_loss'] < end['val_loss']}; validation accuracy within "
      f"0.1 of chance for both: {max(abs(end['val_accuracy'] - 0.5), abs(lora_end['val_accuracy'] - 0.5)) < 0.1}")
if FAST:
    print(SMOKE)

# %% [markdown]
# 如上面的输出所示,LoRA 也把 64 条背了下来,只是比完全微调晚(比较两者从哪一步起 64 条全对),泛化也没有更好:
# 两者的验证准确率都在随机水平。它的验证损失最后更低:错得没那么笃定,而不是对得更多。
# 百分之几的参数仍然有好几万个数(上面打印了具体个数),而训练样本只有 64 条;可训练的数少了,只是让背诵来得慢一些,
# 并没有阻止它。所以按准确率看,原文说的"减少了过拟合的风险"在这个规模上没有出现;README 中 `minift compare --train-size`
# 的表在 1,024 条评论时看到了它——四种规模中只有这一种。对两种方法都有效的防御是提前停止,停在验证损失最低的地方(练习
# 3);`minift compare --train-size 64 --ranks 1,2,4` 在不同的秩上做同样的比较,`--seeds 1,2` 则换不同的种子。
#
# **检验。** 开始时,验证损失与 $\log 2$ 相差不到 0.1。结束时:训练损失低于 0.01,训练准确率 100%;
# 验证损失比它的最低值至少高 1.0,并且高于 $\log 2$;验证准确率与随机水平相差不到 0.1。LoRA:训练准确率至少 0.95,
# 验证准确率与随机水平相差不到 0.1,验证损失高于 $\log 2$。正常模式下:最低的验证损失在第 0 步;前 10 轮之内(第 40 步)64
# 条全部判对;最终验证损失高于 $3 \log 2$;LoRA 背下这 64 条比完全微调晚,但最终的验证损失更低。

# %%
assert end["train_loss"] < 0.01 and end["train_accuracy"] == 1.0
assert end["val_loss"] > best["val_loss"] + 1.0 and end["val_loss"] > math.log(2)
assert abs(end["val_accuracy"] - 0.5) < 0.1
assert lora_end["train_accuracy"] >= 0.95 and abs(lora_end["val_accuracy"] - 0.5) < 0.1
assert lora_end["val_loss"] > math.log(2)
assert abs(evals[0]["val_loss"] - math.log(2)) < 0.1
if not FAST:                                               # 快速模式的 60 步不够做这些检验
    assert best["step"] == 0                               # 在验证集上从未好过未训练的模型
    assert memorised["full"] <= 40 and end["val_loss"] > 3 * math.log(2)
    assert memorised["full"] < memorised["lora r=8"] < math.inf and lora_end["val_loss"] < end["val_loss"]

# %% [markdown]
# ## 6. 训练不稳定
#
# AdamW 对每个元素的一步是 $\eta\,\hat m/(\sqrt{\hat v} + \epsilon)$:无论梯度的尺度如何,大小都在 $\eta$ 左右,
# 所以梯度范数裁剪(minift 在 1.0 处裁剪)并不能把它缩小。每个权重跳多远,只由学习率决定。下面在完整训练集上跑三次,
# 学习率恒定,不预热:

# %%
unstable_steps = pick(150, 25)
curves = {}
for lr in (1e-3, 1e-2, 1e-1):
    m = base.to()
    m.add_classification_head(train_split.label_names, seed=0)
    setup_method(m, "full")
    r = train(m, task_source(train_split, tok, 128, 16, seed=0),
              TrainConfig(steps=unstable_steps, batch_size=16, lr=lr, warmup=0, schedule="constant"), progress=False)
    curves[lr] = np.array([h["loss"] for h in r.history])
    print(f"lr {lr:.0e}: loss min {curves[lr].min():.3f}, max {curves[lr].max():.2f}, "
          f"mean of the last 20 steps {curves[lr][-20:].mean():.3f}")
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 3.5))
for lr, c in curves.items():
    ax.plot(np.arange(1, len(c) + 1), c, lw=0.9, label=f"lr {lr:.0e}")
ax.axhline(math.log(2), color="0.5", ls="--", lw=0.8, label="log 2")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("training loss (one batch)")
ax.set_title("full fine-tuning: the learning rate decides stability")
ax.legend()
show(fig, "06_learning_rates")

# %% [markdown]
# 看上面打印的几行:学习率 1e-3 时,在这些步数内损失一直停在教程 05 的平台期上,$\log 2$ 附近(400 步的训练会把它带到哪里,
# 见教程 05 的验证准确率)。1e-2 时损失跳动得更厉害。1e-1 时,单个批次的损失能达到 $\log 2$ 的许多倍(即最大值):
# 每一步都把每个权重朝一个新方向甩出约 $0.1$——是 GPT-2 初始权重尺度($0.02$)的五倍,比 demo
# 基座模型任何一个训练过的矩阵的均方根(RMS,下面会打印)都大;到最后它稳定在 $\log 2$ 附近,成了一个瞎猜的模型。
# "收敛缓慢"只需要学习率大 3 倍:在另一次单独的运行中(第 1 节的设置,学习率 3e-3,带预热和余弦衰减,
# 不在本教程的代码里:`minift finetune --method full --steps 400 --lr 3e-3 --workers 1`),400
# 步后的验证准确率远低于第 1 节用 1e-3 打印出的结果——它在预算之内停滞了。
#
# 训练什么时候会*彻底失败*?minift 的训练循环在以下情况抛出 `TrainingDiverged`:某个损失(某一步的或某次评估的)是 NaN、
# 无穷大,或者比这次训练第一步的损失高出 100 以上——这时模型给正确答案的概率只有开始时的 $e^{-100}$ 倍,
# 仅仅是学得不好的模型绝不会这样——或者某个梯度、某个更新后的权重不是有限值。上面 1e-1
# 的那次训练始终在这条规则之内(它最差的批次见上面的输出,远低于 100),所以一直训练了下去。下面是四个荒唐的学习率,
# 关掉梯度裁剪,每个跑 3 步:

# %%
def run_full(lr, n_steps, **options):
    """A fresh full fine-tune on the full train set at a constant lr; returns the per-step losses."""
    m = base.to()
    m.add_classification_head(train_split.label_names, seed=0)
    setup_method(m, "full")
    r = train(m, task_source(train_split, tok, 128, 16, seed=0),
              TrainConfig(steps=n_steps, batch_size=16, lr=lr, warmup=0, schedule="constant", **options),
              progress=False)
    return m, [h["loss"] for h in r.history]


caught = {}
with np.errstate(over="ignore", invalid="ignore"):        # 这里要看的正是模型内部的溢出
    for lr in (1e2, 1e4, 1e8, math.inf):
        try:
            run_full(lr, 3, grad_clip=None)
        except TrainingDiverged as e:
            caught[lr] = e
        print(f"lr {lr:.0e}:", type(caught.get(lr)).__name__, "—", caught.get(lr))

# %% [markdown]
# 注意每一个是在*哪里*被捕获的。学习率有限时,第 0 步的损失和梯度都正常,它的更新被应用了,
# 下一步在被甩飞的权重上算出的损失才露出征兆:"step 1: loss is ..., more than 100 above the first step's"。
# 学习率为无穷大时,更新本身就会出现 $\infty \cdot 0$ = NaN,所以保护的第二项检查——每次更新后检查可训练权重——
# 在第 0 步就触发了。在真实的训练中,触发这个保护的除了学习率,同样常见的还有 float16 溢出、损坏的样本或程序 bug。
#
# 给了检查点(checkpoint)目录时它保留什么:检查点存的是某一步之后的权重,只有*下一*步的损失才能说明这些权重是否正常。
# 所以发现某个损失异常时,存着那组权重的检查点(以及它之后的所有检查点)会被删除,留下来生效的,
# 是损失已经算出且正常的最新一个(`minift/training/train.py`,`_keep_checked`)。这几次训练没有给检查点目录:
# 没有什么需要保留。
#
# **检验。** 1e-1 时最差的批次损失大于 3(超过 $\log 2$ 的四倍),1e-3 时低于 1.5;1e-1 时相邻两步之间损失的跳动比 1e-3
# 时大;每个有限的荒唐学习率都在第 1 步因损失被捕获,无穷大的那个在第 0 步因更新被捕获;基座模型训练过的矩阵的 RMS 全都低于
# 0.1。正常模式下:1e-2 的跳动比 1e-3 大;最后 20 步的平均损失在 1e-3 时与 $\log 2$ 相差不到 0.05,在 1e-1 时相差不到 0.1。

# %%
jumps = {lr: float(np.abs(np.diff(c)).mean()) for lr, c in curves.items()}
print("mean |loss change| per step:", {f"{lr:.0e}": round(j, 3) for lr, j in jumps.items()})
rms = {n: float(np.sqrt(np.mean(w ** 2))) for n, w in base.params.items() if w.ndim == 2}   # 训练过的矩阵
print(f"RMS of the base's {len(rms)} matrices: {min(rms.values()):.3f} ({min(rms, key=rms.get)}) to "
      f"{max(rms.values()):.3f} ({max(rms, key=rms.get)})")
if FAST:
    print(SMOKE)
assert curves[1e-1].max() > 3 and curves[1e-3].max() < 1.5 and jumps[1e-1] > jumps[1e-3]
assert all(str(caught[lr]).startswith("step 1: loss is") for lr in (1e2, 1e4, 1e8))
assert str(caught[math.inf]).startswith("step 0: the update made")
assert max(rms.values()) < 0.1
if not FAST:                                               # 快速模式的 25 步太少,来不及稳定下来
    assert jumps[1e-2] > jumps[1e-3]
    assert abs(curves[1e-3][-20:].mean() - math.log(2)) < 0.05 and abs(curves[1e-1][-20:].mean() - math.log(2)) < 0.1

# %% [markdown]
# ## 7. 部署(§2.1 第 6 步,部署和应用)
#
# 微调好的模型是一个自包含的目录——就是第 4 节保存的那个。推理时不需要别的东西:`GPT.from_pretrained`(或 `transformers`)
# 就能加载它。推理速度就是前向计算的速度;完全微调的模型与基座模型的架构和分类头都相同,所以开销与任何同样架构、
# 同样分类头的模型一样。就单个任务而言,合并后的 LoRA 模型开销也一样:原文说的"参数量大",
# 差别其实在于每*多一个*任务要多存多少——一个基座模型加上每个任务一个小适配器,而不是每个任务一整个模型(LoRA 论文:100 个
# GPT-3 微调模型要 35 TB,用 LoRA 只要 354 GB)。(*未合并*的 LoRA 模型在每个带适配器的线性层上多一条低秩旁路;
# 合并之后它又是一个普通模型——见教程 07。)

# %%
deployed = GPT.from_pretrained(folder)
n_reviews = pick(64, 32)
reviews = task_source(test_split, tok, 128, n_reviews, seed=0).next_batch()        # (n, T) 的 id 和掩码
logits_tuned = model.forward(reviews["input_ids"], attention_mask=reviews["attention_mask"])         # (n, K)
logits_deployed = deployed.forward(reviews["input_ids"], attention_mask=reviews["attention_mask"])   # (n, K)
infer_ms = best_time(lambda: deployed.forward(reviews["input_ids"], attention_mask=reviews["attention_mask"]))
tokens = int(reviews["attention_mask"].sum())
print(f"reloaded: head {deployed.head_kind!r}, labels {deployed.labels}; forward of {n_reviews} reviews "
      f"({reviews['input_ids'].shape[1]} positions each, {tokens:,} real tokens) in {infer_ms:.1f} ms = "
      f"{1e3 * n_reviews / infer_ms:,.0f} reviews/s on this CPU")
if FAST:
    print(SMOKE)

# %% [markdown]
# **检验。** 重新加载的模型的 logits 与训练好的模型逐位相同,它的测试准确率就是 `finetune` 报告的那个。

# %%
assert np.array_equal(logits_tuned, logits_deployed)
assert split_metrics(deployed, test_split, tok, 128)["accuracy"] == summary["test_accuracy"]

# %% [markdown]
# ## 要点回顾
#
# | §2.2 的说法 | 这里的实测 |
# |---|---|
# | 所有参数都会被更新 | 每个张量都动了;梯度始终为 0 的元素(没用到的位置和 token)没有动 |
# | 计算成本高 | 每个参数 1 个梯度 + 2 个 AdamW 浮点数;在这个规模下,一步训练的内存仍以激活值为主 |
# | 参数量大 | 每个微调模型都是 $4P$ 字节;LoRA 适配器只有它的百分之几(第 4 节打印了两者) |
# | 过拟合风险 | 64 条评论:10 轮之内训练损失接近 0,验证损失远高于 $\log 2$;LoRA r = 8 同样过拟合,只是晚一点 |
# | 训练不稳定 | 学习率是选定的 1e-3 的 10 倍或 100 倍时,损失就会跳动;要触发保护,得用荒唐的学习率 |
#
# ## 练习
#
# **练习 1——微调 GPT-2 要多少内存。** 对 GPT-2 small(`GPTConfig.preset("gpt2")`,124M 参数,语言模型头与 `wte` 绑定),只用
# `param_shapes(cfg)` 算出用 AdamW、float32 做完全微调时,梯度加优化器状态要占多少字节。检验会与 `predict_memory` 比较。

# %%
def my_grad_and_adam_bytes(cfg):
    """Bytes of gradients + AdamW moments for full fine-tuning of every parameter of cfg, float32."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_grad_and_adam_bytes(cfg):
    P = sum(math.prod(s) for s in param_shapes(cfg).values())
    return 3 * 4 * P                                     # 1 个梯度 + 2 个矩,各 4 字节


# %%
def check_grad_and_adam(answer):
    cfg = GPTConfig.preset("gpt2")
    pred = predict_memory(cfg, "full", 1, 128)
    predicted = pred["gradients"] + pred["optimizer"]
    print(f"GPT-2: yours {answer(cfg) / 2**30:.3f} GiB, predict_memory {predicted / 2**30:.3f} GiB "
          f"for {pred['trainable']:,} parameters")
    assert answer(cfg) == predicted


exercise("Exercise 1 (GPT-2's optimizer memory)", check_grad_and_adam, my_grad_and_adam_bytes,
         solution_grad_and_adam_bytes)

# %% [markdown]
# **练习 2——哪些嵌入行会动?** 根据第 1 节的批次(`seen`,由含 `input_ids` 和 `attention_mask` 的字典组成的列表),
# 返回完全微调改变了其 `wte` 行的那些 token id,按升序排列。检验会与真正变化了的行比较。

# %%
def my_moved_tokens(batches):
    """Sorted array of the token ids whose wte rows change when training on these batches."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_moved_tokens(batches):
    return np.unique(np.concatenate([b["input_ids"][b["attention_mask"]] for b in batches]))   # 只算真实 token


# %%
def check_moved_tokens(answer):
    moved = np.flatnonzero(np.any(model.params["wte.weight"] != base.params["wte.weight"], axis=1))
    mine = np.asarray(answer(seen))
    print(f"{moved.size} of {base.cfg.vocab_size} wte rows moved; yours: {mine.size}")
    assert np.array_equal(mine, moved)


exercise("Exercise 2 (moving embedding rows)", check_moved_tokens, my_moved_tokens, solution_moved_tokens)
if FAST:
    print(SMOKE)

# %% [markdown]
# **练习 3——提前停止。** 防止过拟合的第一道常用防线:边训练边评估,保留验证损失最低的那次评估时的权重。根据 `evals`(由含
# `step` 和 `val_loss` 的字典组成的列表),返回那一步及其验证损失。
#
# 在第 5 节里(正常模式下,那里的检验断言了这一点),它选中第 0 步,也就是未训练的模型。这个答案是对的:那
# 64 条评论从未教会模型这个任务(验证准确率一直在随机水平),所以每多训练一步,模型都只是错得更笃定。
# 提前停止造不出数据没有教的东西,它只能拒绝留下一个更差的模型。在这里,它的结论意味着"这次微调不值得保留":
# 解药是更多的数据。

# %%
def my_early_stop(evals):
    """(step, val_loss) of the evaluation with the lowest validation loss."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_early_stop(evals):
    e = min(evals, key=lambda e: e["val_loss"])
    return e["step"], e["val_loss"]


# %%
def check_early_stop(answer):
    step, loss = answer(evals)
    acc = next(e["val_accuracy"] for e in evals if e["step"] == step)
    print(f"stop at step {step}: validation loss {loss:.3f} (accuracy {acc:.3f}) instead of "
          f"{evals[-1]['val_loss']:.3f} (accuracy {evals[-1]['val_accuracy']:.3f}) at the end")
    assert loss == min(e["val_loss"] for e in evals) and any(e["step"] == step and e["val_loss"] == loss for e in evals)
    assert loss < evals[-1]["val_loss"]


exercise("Exercise 3 (early stopping)", check_early_stop, my_early_stop, solution_early_stop)
if FAST:
    print(SMOKE)
