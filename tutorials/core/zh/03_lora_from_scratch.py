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
# # 核心 03 · 从零实现 LoRA:$W + s\,BA$、它的梯度,以及它到底训练了什么
#
# **你将看到什么。** 给预训练好的 demo 模型挂上适配器后,模型的输出逐位不变。带 LoRA 的线性层在反向计算中交出 $\bar A$ 和
# $\bar B$,而冻结权重的梯度那一格是 `None`;它通过了有限差分检验——一个故意写错的 $\bar A$ 也能通过,但只在 $B = 0$ 时。
# 一张表统计 LoRA 训练了多少参数,从 demo 模型里的一个矩阵一直算到 GPT-3。在情感分析任务上做一次 LoRA 微调:
# 验证集准确率先停在随机猜测的水平,然后开始上升。最后把适配器合并进 $W$:模型又变回普通的 GPT-2,输出不变。
#
# **原文:** §3.1 LoRA技术的核心思想:
#
# > 假设预训练模型的权重矩阵为 ( W ),LoRA通过引入两个低秩矩阵 ( A ) 和 ( B ),使得新的权重矩阵 ( W' ) 可以表示为:
# > [ W' = W + AB^T ] 其中,( A ) 和 ( B ) 的秩远小于 ( W ) 的秩。
#
# 以及 §3.2 LoRA的实践操作与效果:训练时"仅更新低秩矩阵 ( A ) 和 ( B ) 的参数",并且能"减少90%以上参数更新"。
# 原文既没给缩放系数,也没说怎么初始化,用的字母还和 LoRA 论文不一样。本教程按论文(Hu et al. 2021, arXiv 2106.09685)和
# Hugging Face PEFT 的实现,把这三处补齐。
#
# **你将学到**
# 1. 原文的 $W + AB^\top$、论文的 $W + s\,BA$ 和 minift 的 GPT-2 存储布局,说的是同一个更新;
# 2. 为什么 $B$ 初始化为零,以及这对第一步意味着什么;
# 3. 带 LoRA 的线性层的前向与反向计算(`lora_forward` / `lora_backward`):$\bar A$、$\bar B$、$\bar x$,以及被跳过的
#    $\bar W$;
# 4. 怎样统计可训练参数:$r(\text{in} + \text{out})$ 对比 $\text{in}\cdot\text{out}$;
# 5. 跑一次 LoRA 微调(`finetune(method="lora")`),并为部署合并权重。
#
# **用时:** 阅读约 15 分钟;在一台空闲的 2 核 Intel Xeon 上实测(`OPENBLAS_NUM_THREADS=1`),正常模式运行约 25 秒,
# 快速模式(`MINIFT_FAST=1`)约 2 秒。时间几乎全花在 600 步的微调上;如果 CPU 核正被别的任务占用,可能要慢好几倍。
#
# **前置:** 核心 01(线性层的反向计算 $\bar W = x^\top\bar y$)和核心 02(每个权重的 $G = x^\top \bar y$)。**深入阅读:**
# [教程 07](../../zh/07_lora_from_scratch.py)(进阶)——缩放系数 $\alpha/r$ 与 rsLoRA 的 $\alpha/\sqrt r$ 对比、PEFT
# 适配器文件的保存与加载、PiSSA 和 DoRA。

# %%
import math

import numpy as np

from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora, check_op
from minift.app.tutorial import FAST, exercise, pick
from minift.base import load_base
from minift.config import param_shapes
from minift.lora import LoRALinear, lora_backward, lora_forward
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)        # 唯一的带种子生成器:下面每个数字每次运行都相同
if FAST:
    print("(fast mode: section 5's fine-tune is a 30-step smoke run, its numbers are not findings; "
          "the other sections run the same sizes as normal mode)")
base, tok = load_base()               # 随附的预训练 demo 模型(训练好的核心 02 的 GPT)及其分词器
train_split, _, _ = load_task_splits("sentiment")
print(base.cfg)
print("task labels:", train_split.label_names)

# %% [markdown]
# ## 1. 一个更新,三种写法
#
# LoRA 论文用的是 PyTorch 的布局:$h = W_0 x$,$W_0$ 的形状为 [out, in],在它上面加上
#
# $$\Delta W = s\,BA,\qquad B \in \mathbb R^{\text{out}\times r},\ A \in \mathbb R^{r\times \text{in}},\
#   s = \alpha / r .$$
#
# PEFT 原样存储这两个矩阵:`lora_A.weight` 为 [r, in],`lora_B.weight` 为 [out, r]。GPT-2 的线性层正好反过来存,$W$ 为 [in,
# out],$y = xW + b$;minift 也一样。于是带 LoRA 的线性层写成
#
# $$y = xW + b + s\,(xA^\top)B^\top, \qquad \Delta W = s\,A^\top B^\top = (s\,BA)^\top \quad [\text{in}, \text{out}],$$
#
# 而 $A$、$B$ 的存法与 PEFT 完全相同,所以 minift 的适配器就是 PEFT 的适配器。原文的 $W + AB^\top$ 没有缩放系数:
# 记原文的两个因子为 $A'$、$B'$,它们就是我们的 $A$、$B$ 把 $s$ 并进其中一个而已,$A' = s\,A^\top$ [in, r], $B' = B$ [out,
# r]。要看形状,别看字母:换成论文的布局,原文的"$A$"其实是论文的 $B$。
#
# **检验。** 用 float64 随机矩阵验证:三种写法是同一个矩阵,`LoRALinear.delta_weight()` 算出的也是它,`lora_forward`
# 等于权重为 $W + \Delta W$ 的普通线性层。

# %%
I, O, R, alpha = 6, 4, 2, 4.0
s = alpha / R                                            # 缩放系数 s = α/r
A = rng.standard_normal((R, I))                          # (R, I)  lora_A.weight,PEFT 的布局
B = rng.standard_normal((O, R))                          # (O, R)  lora_B.weight(这里随机;初始化为 0:见第 2 节)
W = rng.standard_normal((I, O))                          # (I, O)  GPT-2 的 [in, out]
b = rng.standard_normal(O)                               # (O,)
x = rng.standard_normal((3, I))                          # (N, I)  三个 token 位置
delta_minift = s * A.T @ B.T                             # (I, O)
delta_paper = s * B @ A                                  # (O, I)
A_article, B_article = s * A.T, B                        # (I, R), (O, R)
y, _ = lora_forward(x, W, b, A, B, s)                    # (N, O)
gaps = {"minift = paperᵀ": np.abs(delta_minift - delta_paper.T).max(),
        "article A Bᵀ = minift": np.abs(A_article @ B_article.T - delta_minift).max(),
        "delta_weight()": np.abs(LoRALinear("m", A, B, s, 0.0, None).delta_weight() - delta_minift).max(),
        "lora_forward = x(W+ΔW)+b": np.abs(y - (x @ (W + delta_minift) + b)).max()}
for name, gap in gaps.items():
    print(f"  {name:<26} max |difference| {gap:.1e}")
assert max(gaps.values()) < 1e-12

# %% [markdown]
# ## 2. $B = 0$:挂上适配器的模型一开始就是基座模型
#
# PEFT 默认的初始化:$A$ 像 `nn.Linear` 自己的权重那样抽取,在 $\pm 1/\sqrt{\text{in}}$ 内均匀分布(Kaiming
# 均匀初始化),$B = 0$。于是 $\Delta W = s\,A^\top B^\top = 0$,微调恰好从预训练结束的地方开始。为什么不把两个都设成零?
# 第 3 节会推导出梯度:
#
# $$\bar B = s\,\bar y^\top (xA^\top), \qquad \bar A = s\,(\bar y B)^\top x .$$
#
# 若 $A = B = 0$,两个梯度都为零,参数永远不会动。只让 $B = 0$ 时,$\bar A$ 恰好为零而 $\bar B \ne 0$:第一步只更新 $B$,
# 之后两者一起更新。
#
# 下面先给预训练的基座模型加一个分类头(即原文的任务特定层,教程 05 有详细介绍),复制一份,再在每个块的全部四个线性层上挂秩
# $r = 8$、$\alpha = 16$(所以 $s = 2$)的适配器。输入是 8 条随机 token 序列:这里验证的是权重本身,什么输入都可以。

# %%
lcfg = LoRAConfig(r=8, alpha=16, targets="all-linear")
plain = base.to()                                        # 基座模型的副本……
plain.add_classification_head(train_split.label_names, seed=0)   # ……加上 finetune(seed=0) 起步时的同一个分类头
adapted = plain.to()                                     # 再复制一份,用来挂适配器
lora = attach_lora(adapted, lcfg, seed=0)
print(lora)
a0 = lora.adapters["h.0.attn.c_attn"]
print(f"h.0.attn.c_attn: A {a0.A.shape}, B {a0.B.shape}, s = α/r = {a0.scale}; max |A| {np.abs(a0.A).max():.4f} "
      f"(bound 1/√in = {1 / math.sqrt(a0.A.shape[1]):.4f}); B all zero: {not a0.B.any()}")
ids = rng.integers(0, base.cfg.vocab_size, size=(8, 32))              # (8, 32) token id
targets = rng.integers(0, len(train_split.label_names), size=8)       # (8,)  类别 id
same = np.array_equal(plain.forward(ids), adapted.forward(ids))       # (8, K) logits,K 个标签
loss, grads = adapted.loss_and_grads(ids, targets)
dA0, dB0 = grads["h.0.attn.c_attn.lora_A.weight"], grads["h.0.attn.c_attn.lora_B.weight"]
print(f"logits bitwise equal to the base's: {same}")
print(f"first gradient of h.0.attn.c_attn: max |dA| {np.abs(dA0).max():.1e}, max |dB| {np.abs(dB0).max():.1e}")
print(f"{len(grads)} gradient tensors: {len(lora.params)} adapter tensors + the head; no base weight gets one")

# %% [markdown]
# **检验。** 所有适配器的 $A$ 都在界内、$B$ 全为零;logits 与基座模型逐位相同;第一步所有 $\bar A$ 恰好为 0,所有 $\bar B$
# 都不为 0;只有适配器和分类头有梯度。

# %%
for module, a in lora.adapters.items():
    assert np.abs(a.A).max() <= 1 / math.sqrt(a.A.shape[1]) and not a.B.any(), module
assert same
assert not any(g.any() for k, g in grads.items() if k.endswith("lora_A.weight"))
assert all(g.any() for k, g in grads.items() if k.endswith("lora_B.weight"))
assert set(grads) == set(lora.params) | {"score.weight"}

# %% [markdown]
# ## 3. 前向与反向计算,逐项写出
#
# 一个带 LoRA 的线性层,$N$ 个 token 位置,$x$ 为 [N, in]。前向计算只多保存一个激活值 $h = xA^\top$ [N, r]:
#
# $$y = xW + b + s\,hB^\top .$$
#
# 反向计算就是把核心 01 里线性层的规则分别用在每个乘积上(公式里梯度记作 $\bar{\ }$,代码里记作 `d`):
#
# $$\bar x = \bar y W^\top + s\,\bar y B A,\qquad \bar B = s\,\bar y^\top h,\qquad \bar A = s\,(\bar y B)^\top x,
# \qquad \bar W = x^\top \bar y ,$$
#
# 其中最后一项不计算,因为 $W$ 被冻结了。$x$ 同时流入冻结路径和旁路,所以它的两份梯度要相加(核心 02 的规则)。
# 冻结并不等于免费:前向仍要算 $xW$,反向仍要算 $\bar y W^\top$,因为下面的层需要 $\bar x$。被跳过的只有 $x^\top \bar y$——
# 参与训练的线性层三次大矩阵乘法中的一次。这就是 LoRA 在反向计算里省下的全部计算量(教程 09 有实测)。
#
# 再用核心 02 的 $G = x^\top \bar y$(完全微调时 $W$ 会得到的梯度)读一遍 $\bar B$ 和 $\bar A$:
#
# $$\bar B = s\,G^\top A^\top, \qquad \bar A = s\,B^\top G^\top .$$
#
# LoRA 的梯度,就是透过适配器看到的完全微调的 $G$:透过 $A$ 各行给出的 $r$ 个输入方向,和 $B$ 各列给出的 $r$ 个输出方向。
# 核心 04 会带着这组关系,让同一个批次分别走一遍两种方法。

# %%
N, I, O, R = 5, 6, 4, 2
x = rng.standard_normal((N, I))                          # (N, I)
W = rng.standard_normal((I, O))                          # (I, O)
b = rng.standard_normal(O)                               # (O,)
A = rng.standard_normal((R, I)) * 0.5                    # (R, I)
B = rng.standard_normal((O, R)) * 0.5                    # (O, R)  B ≠ 0:见本节最后一个检验
s = 2.0
y, cache = lora_forward(x, W, b, A, B, s)                # (N, O)
dy = rng.standard_normal(y.shape)                        # (N, O) 随机的上游梯度
dx, dW, db, dA, dB = lora_backward(dy, cache)            # 默认 need_dw=False:W 被冻结
print(f"y {y.shape}; dx {dx.shape}, dW {dW}, db {db.shape}, dA {dA.shape} (A's shape), dB {dB.shape} (B's shape)")

# %% [markdown]
# **检验。** (a) 用 NumPy 写出上面的公式,结果与 `lora_backward` 在舍入误差内一致,两个关于 $G$ 的恒等式也一样。
# (b) 对全部五个梯度做有限差分检验(为此用 `need_dw=True` 算出 $\bar W$):float64,随机上游梯度,容差 $10^{-7}$。

# %%
h = x @ A.T                                              # (N, R)
G = x.T @ dy                                             # (I, O) 完全微调会为 W 算出的梯度
gaps = {"dx": np.abs(dx - (dy @ W.T + s * dy @ B @ A)).max(), "dB": np.abs(dB - s * dy.T @ h).max(),
        "dA": np.abs(dA - s * (dy @ B).T @ x).max(), "db": np.abs(db - dy.sum(0)).max(),
        "dB = s Gᵀ Aᵀ": np.abs(dB - s * G.T @ A.T).max(), "dA = s Bᵀ Gᵀ": np.abs(dA - s * B.T @ G.T).max()}
print("max |difference|:", {k: f"{v:.1e}" for k, v in gaps.items()})
assert dW is None and max(gaps.values()) < 1e-12
report = check_op(lora_forward, lambda dy, cache: lora_backward(dy, cache, need_dw=True),
                  [x, W, b, A, B, s], names=["x", "W", "b", "A", "B"])
print(report)
assert report.ok and report.max_error < 1e-7, report

# %% [markdown]
# **会失败的检验——前提是你给它机会。** 下面这个反向计算有 bug:算 $\bar A$ 时漏了缩放系数 $s$。在初始化处 $B = 0$,真正的
# $\bar A$ 是零,错的那个也是零:检验通过。$B \ne 0$ 时检验就失败了。给 LoRA 做梯度检验,一定要离开初始化点。

# %%
def wrong_backward(dy, cache):
    """WRONG on purpose: dA without the scale s."""
    dx, dW, db, dA, dB = lora_backward(dy, cache, need_dw=True)
    return dx, dW, db, dA / s, dB


verdicts = {}
for name, B_test in (("B = 0 (the init)", np.zeros_like(B)), ("B random", B)):
    wrong = check_op(lora_forward, wrong_backward, [x, W, b, A, B_test, s], names=["x", "W", "b", "A", "B"])
    verdicts[name] = wrong.ok
    print(f"wrong dA, {name:<17} check passes: {wrong.ok}  (worst relative error {wrong.max_error:.1e})")
assert verdicts == {"B = 0 (the init)": True, "B random": False}

# %% [markdown]
# ## 4. 有多少参数?(原文的"减少90%以上")
#
# 一个 $\text{in}\times\text{out}$ 矩阵的完整更新有 $\text{in}\cdot\text{out}$ 个数;LoRA 的更新只有
# $r(\text{in} + \text{out})$ 个,占比 $r(\text{in}+\text{out})/(\text{in}\cdot\text{out})$——$r$
# 远小于两个维度时这个比例很小。下面只从形状出发,统计 demo 模型、GPT-2 small,以及按 LoRA 论文做法的 GPT-3 175B(每个块的
# $W_q$ 和 $W_v$,$r = 4$)。"compared with" 一列在第一行是该矩阵自身的 $\text{in}\cdot\text{out}$,
# 其余各行是整个模型的参数量——也就是完全微调要训练的参数。

# %%
def lora_count(shapes, r):
    """Σ r·(in + out) over the adapted matrices' shapes."""
    return sum(r * (i + o) for i, o in shapes)


def total_params(cfg):
    """Every parameter of a GPT-2-shaped model, from its shapes (no arrays are made)."""
    return sum(math.prod(shape) for shape in param_shapes(cfg).values())


C = base.cfg.n_embd
demo_all = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * base.cfg.n_layer      # 每个块的四个线性层
gpt2 = GPTConfig.preset("gpt2")
gpt2_all = [(768, 3 * 768), (768, 768), (768, 4 * 768), (4 * 768, 768)] * gpt2.n_layer
gpt3 = GPTConfig(vocab_size=50257, n_ctx=2048, n_embd=12288, n_layer=96, n_head=96)
rows = [(f"one demo c_attn [{C}, {3 * C}], r=8", [(C, 3 * C)], 8, 3 * C * C),
        ("demo, all linears, r=8", demo_all, 8, total_params(base.cfg)),
        ("demo, all linears, r=64", demo_all, 64, total_params(base.cfg)),
        ("GPT-2 small, all linears, r=8", gpt2_all, 8, total_params(gpt2)),
        ("GPT-3 175B, Wq and Wv, r=4", [(12288, 12288)] * 2 * gpt3.n_layer, 4, total_params(gpt3))]
print(f"{'':<36}{'LoRA numbers':>14}{'compared with':>18}{'share':>10}{'fewer':>10}")
for name, shapes, r, total in rows:
    n = lora_count(shapes, r)
    print(f"{name:<36}{n:>14,}{total:>18,}{n / total:>10.4%}{total / n:>9,.0f}×")
print("(the LoRA paper, §1, on GPT-3 175B: trainable parameters reduced 'by 10,000 times')")

# %% [markdown]
# "share" 一列以上面的输出为准。在 GPT-3 的规模上,原文的"减少90%以上"低估了好几个数量级。在 demo 模型的规模上,
# 结论取决于秩:每个线性层都用 $r = 8$ 时越过了 90% 这条线,$r = 64$ 时就没有——秩已经不再"远小于"宽度了。省多少,由 $W$
# 的形状决定,而不是由 LoRA 本身决定。
#
# **检验。** 第 2 节里 `attach_lora` 建的适配器恰好有 $\sum r(\text{in}+\text{out})$ 个数;加上分类头,也不到模型的 10%。

# %%
adapter_numbers = sum(a.size for a in lora.params.values())
trainable = adapted.num_params(trainable_only=True)
print(f"attach_lora: {adapter_numbers:,} adapter numbers + {adapted.params['score.weight'].size} head = "
      f"{trainable:,} trainable of {adapted.num_params():,} ({trainable / adapted.num_params():.1%})")
assert adapter_numbers == lora_count(demo_all, lcfg.r)
assert trainable == adapter_numbers + adapted.params["score.weight"].size < 0.1 * adapted.num_params()

# %% [markdown]
# ## 5. 一次 LoRA 微调(§3.2 第 1–5 步)
#
# `finetune(method="lora")` 按原文的步骤执行:复制基座模型(第 1 步);挂上适配器,同时冻结全部基座权重(第 2 步);按
# `FinetuneConfig` 的设置训练(第 3、4 步);在验证集和测试集上评估(第 5 步)。任务与教程 05 相同:简短的评论(电影、书、
# 餐厅),正面或负面;测试集用的句式模板在训练中从未出现过。
#
# 学习率有两个,而不是一个。用 Adam 时,$A$ 和 $B$ 的每个元素每一步大约移动一个学习率,与梯度大小无关,所以更新
# $s\,A^\top B^\top$ 随"$s$ 乘学习率"增长;而随机初始化的分类头只按学习率本身移动。对适配器来说足够大的学习率,
# 会让分类头塌缩成只输出一个答案,所以 `finetune` 给分类头单独设了一个更小的学习率(就像 PyTorch 的参数组)。
# 两个学习率都是在验证集上选出来的,运行时会打印出来。

# %%
steps = pick(600, 30)
# workers=1:整个批次在一个线程里算,打印的数字在任何机器上都一样(默认设置在更快时把批次拆到
# 多个线程上,这会改变结果的最后几位)
lora_model, lora_handle, run = finetune(
    base, tok, FinetuneConfig(method="lora", lora=lcfg, steps=steps, eval_every=pick(100, 10),
                              eval_size=pick(None, 128), workers=1), progress=not FAST)
if FAST:
    print("(fast mode: a 30-step smoke run on 128 examples; these numbers are not findings)")
chance = 1 / len(run["labels"])
print(f"adapters at lr {run['lr']:g}, head at {run['head_lr']:g}; {run['trainable']:,} trainable "
      f"({run['percent']:.1f}%); {run['ms_per_step']:.0f} ms/step")
print("validation accuracy by step: " + ", ".join(f"{e['step']}: {e['val_accuracy']:.3f}" for e in run["evals"]))
print(f"test accuracy (held-out templates): {run['test_accuracy']:.3f}; chance: {chance:.3f}")

# %% [markdown]
# 验证集准确率以上面的输出为准。正常模式下,前几次评估停在随机猜测的水平,之后明显上升,
# 在留出模板上的测试准确率也随之上来。这算不算原文说的"与完全微调相当的性能",要用同样的方式、
# 同样的步数跑一次完全微调才能回答:核心 05 做了这项测量,教程 07 第 6 节有讨论。
#
# **检验。** 所有基座权重逐位不变(冻结:没有梯度,也没有更新)。正常模式下,这次训练必须确实学到了东西:最终验证准确率至少
# 0.8,且比第一次评估高出至少 0.2;测试准确率至少 0.7。

# %%
assert all(np.array_equal(lora_model.params[n], base.params[n]) for n in base.params)
if not FAST:
    first_val = run["evals"][0]["val_accuracy"]
    assert run["val_accuracy"] >= max(0.8, first_val + 0.2) and run["test_accuracy"] >= 0.7, run

# %% [markdown]
# ## 6. 合并:部署一个普通的 GPT-2(§3.2 第 6 步)
#
# 部署时原文关心推理速度和内存占用。把更新并入权重,$W \leftarrow W + s\,A^\top B^\top$,模型就又是一个普通的 GPT-2:
# 没有旁路,推理时也没有多出来的矩阵乘法。`unmerge` 再把它减回去。合并两次会把 $\Delta W$ 加两遍,所以会被拒绝。
# `merged_model()` 在副本上做同样的合并并去掉适配器:得到一套可以直接发布的权重。

# %%
name = "h.0.attn.c_attn.weight"
W_before = lora_model.params[name].copy()                                     # (C, 3C)
delta = lora_handle.adapters["h.0.attn.c_attn"].delta_weight()                # (C, 3C)  s · Aᵀ Bᵀ
unmerged_logits = lora_model.forward(ids)                                     # (8, K)
lora_handle.merge()
merged_logits = lora_model.forward(ids)                                       # (8, K)
merge_gap = np.abs(lora_model.params[name] - (W_before + delta)).max()
try:
    lora_handle.merge()
    double = None
except MiniftError as e:
    double = e
lora_handle.unmerge()
restore_gap = np.abs(lora_model.params[name] - W_before).max()
deployed = lora_handle.merged_model()                                         # 一个新的 GPT,没有适配器
deployed_gap = np.abs(deployed.forward(ids) - unmerged_logits).max()
print(f"after merge: max |W − (W_before + ΔW)| {merge_gap:.1e}; max |logit change| "
      f"{np.abs(merged_logits - unmerged_logits).max():.1e}")
print("merging twice:", double)
print(f"after unmerge: max |W − W_before| {restore_gap:.1e}")
print(f"merged_model(): {len(deployed.adapters)} adapters, {deployed.num_params():,} parameters "
      f"(the base's {base.num_params():,} + the head), max |logit change| {deployed_gap:.1e}")

# %% [markdown]
# **检验。** 合并前后的 logits 在 float32 舍入误差内一致($10^{-4}$);`unmerge` 把 $W$ 还原到几个 float32
# 舍入步长以内($10^{-6}$);第二次合并抛出了异常;部署用的模型没有适配器,参数量等于基座模型加分类头。

# %%
assert merge_gap < 1e-6 and np.abs(merged_logits - unmerged_logits).max() < 1e-4
assert restore_gap < 1e-6 and not lora_handle.merged
assert isinstance(double, MiniftError) and "already merged" in str(double)
assert not deployed.adapters and deployed.num_params() == base.num_params() + deployed.params["score.weight"].size
assert deployed_gap < 1e-4

# %% [markdown]
# ## 要点回顾
#
# - 一个更新,三种写法:论文的 $s\,BA$ [out, in] 就是 minift 的 $s\,A^\top B^\top$ [in, out];原文的 $AB^\top$ 把 $s$
#   并进了其中一个因子。看形状,别看字母。
# - 初始化时 $B = 0$:挂上适配器的模型*就是*基座模型,第一步只更新 $B$。不要在 $B = 0$ 处做梯度检验:错误的 $\bar A$
#   在那里也能通过。
# - 反向计算:$\bar B = s\,\bar y^\top (xA^\top)$,$\bar A = s\,(\bar y B)^\top x$,$\bar x$ 是两条路径的梯度之和。冻结的
#   $W$ 照样要付前向和 $\bar y W^\top$ 的代价;跳过的只有 $\bar W = x^\top \bar y$。并且 $\bar B = s\,G^\top A^\top$,
#   $\bar A = s\,B^\top G^\top$:透过适配器看到的,正是完全微调的 $G$。
# - LoRA 每个矩阵训练 $r(\text{in}+\text{out})$ 个数,而不是 $\text{in}\cdot\text{out}$ 个:矩阵越宽省得越多,$r$
#   接近宽度时就省不了多少。
# - 部署前合并:$W + \Delta W$ 是一个普通的权重,输出不变,推理没有额外开销。
#
# 下一篇,核心 04 让同一个批次分别走一遍完全微调和 LoRA,逐个张量对照。**深入阅读:**
# [教程 07](../../zh/07_lora_from_scratch.py)测量秩增大时缩放系数起什么作用($\alpha/r$ 对比 rsLoRA 的 $\alpha/\sqrt r$),
# 保存并重新加载 PEFT 适配器(`save_peft` / `load_peft`),还试了 PiSSA(从 $W$ 最大的几个奇异方向出发)和
# DoRA(每列单独学习一个幅度);教程 09 对比 LoRA 与完全微调每一步的耗时。
#
# ## 练习
#
# 在 `my_...` 函数里写出你的答案(替换 `raise NotImplementedError`),然后运行它后面的单元格。在你写好之前,
# 那个单元格检验的是参考答案——它在 Jupyter 里是折叠的,先自己试试。
#
# **练习 1——数一数适配器。** 对配置为 `cfg` 的模型,返回 `attach_lora` 在秩 `r`、目标模块 `targets`(由块内名称
# `"attn.c_attn"`、`"attn.c_proj"`、`"mlp.c_fc"`、`"mlp.c_proj"` 组成的元组)下新增了多少个数。检验会在一个 tiny
# 模型上真正挂上适配器来数。

# %%
def my_adapter_count(cfg, r, targets):
    """Σ r·(in + out) over the targeted linears of every block."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_adapter_count(cfg, r, targets):
    C = cfg.n_embd
    shape = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    return cfg.n_layer * sum(r * sum(shape[t]) for t in targets)


# %%
def check_adapter_count(answer):
    tiny = GPTConfig.preset("tiny")
    for r, targets in ((1, ("attn.c_attn",)), (4, ("attn.c_proj", "mlp.c_fc")),
                       (8, ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))):
        handle = attach_lora(GPT(tiny), LoRAConfig(r=r, alpha=r, targets=targets))
        real = sum(a.size for a in handle.params.values())
        print(f"r={r} {targets}: attach_lora {real:,}, yours {answer(tiny, r, targets):,}")
        assert answer(tiny, r, targets) == real


exercise("Exercise 1 (adapter count)", check_adapter_count, my_adapter_count, solution_adapter_count)

# %% [markdown]
# **练习 2——手算适配器的梯度。** 给定 $x$ [N, in]、$\bar y$ [N, out]、$A$ [r, in]、$B$ [out, r] 和 $s$,对
# $y = xW + b + s\,xA^\top B^\top$ 返回 `(dA, dB)`。检验在随机输入上(且 $B \ne 0$,原因见第 3 节)与 `lora_backward`
# 比较。

# %%
def my_lora_grads(x, dy, A, B, s):
    """(dA [R, I], dB [O, R])."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_lora_grads(x, dy, A, B, s):
    return s * (dy @ B).T @ x, s * dy.T @ (x @ A.T)


# %%
def check_lora_grads(answer):
    g = np.random.default_rng(1)
    x, W, b = g.standard_normal((7, 5)), g.standard_normal((5, 3)), g.standard_normal(3)
    A, B, s = g.standard_normal((2, 5)), g.standard_normal((3, 2)), 1.5
    y, cache = lora_forward(x, W, b, A, B, s)
    dy = g.standard_normal(y.shape)
    _, _, _, dA, dB = lora_backward(dy, cache)
    mine_dA, mine_dB = answer(x, dy, A, B, s)
    print(f"max |dA − yours| {np.abs(dA - mine_dA).max():.1e}, max |dB − yours| {np.abs(dB - mine_dB).max():.1e}")
    assert np.allclose(mine_dA, dA, atol=1e-12) and np.allclose(mine_dB, dB, atol=1e-12)


exercise("Exercise 2 (LoRA gradients)", check_lora_grads, my_lora_grads, solution_lora_grads)
