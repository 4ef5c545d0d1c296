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
# # 05 · 微调基础:五个步骤,一步一个单元格
#
# **原文:** §1.1 微调的基本概念:
#
# > 这一过程通常包括以下几个步骤:
# > 1. 加载预训练模型 … 2. 添加任务特定层 … 3. 冻结部分参数 … 4. 训练和优化 … 5. 评估和调优
#
# 原文只列出了这几步;这里每一步都是一个能运行的单元格,用的是 minift 随附的基座模型(`data/base-demo`,教程 04)
# 和它的情感分析任务。第 3 步还多了一项原文没有做的测量:原文说冻结参数是"为了防止预训练模型的泛化能力被破坏",并建议
# "只对新添加的层进行训练"。可是在一个需要*组合*语义的任务上——"not bad" 是正面的,"X, but Y" 的意思由 Y 决定——
# 只训练新加的层在这里几乎没有用。你会看到原因:不只在于组合(第 1 节关于数词的论证),更在于分类头读取的那个位置上,
# 基座模型的状态里没有任何线性读出能找到的褒贬信息,连普通评论也不例外(第 7 节)。
#
# **你将学到**
# 1. 情感分析任务里有什么,以及为什么数词解决不了它;
# 2. 加载基座模型(`minift.base.load_base`)并加上分类头(`add_classification_head`),也就是 Hugging Face 的
#    `GPT2ForSequenceClassification` 所加的那一层,它读取最后一个真实 token;
# 3. 冻结参数(`minift.methods.freeze_plan`、`setup_method`),并看到冻结的权重根本没有梯度——
#    算它梯度的那次矩阵乘法从不执行;
# 4. 训练:用 `minift.training.train.train` 配上一个 `ClassificationSource`,或者用 `minift.training.finetune.finetune`;
# 5. 按验证集准确率(绝不用测试集准确率)选学习率,并按评论类型读测试准确率。
#
# **用时:** 阅读约 30 分钟。正常模式运行 1–4½ 分钟(在 `demo` 基座上训练三次,每次 400 步。设 `OPENBLAS_NUM_THREADS=1`,
# 其他任务同时在抢 CPU 核时,三次实测在 2 分 51 秒到 4 分 21 秒之间;空闲时实测 59 秒);快速模式(`MINIFT_FAST=1`:每次训练
# 30 步,只评估 128 个样本)9–15 秒。以上均在一台共享机器的 2 个 CPU 核上测得。
#
# **前置:** 教程 [02](02_backprop_by_hand.py)、[03](03_transformer_backward.py)、[04](04_pretraining.py)(反向传播、
# 模型的反向计算、基座模型;核心课程的 [核心 01](../core/zh/01_backprop_by_hand.py) 和
# [核心 02](../core/zh/02_transformer_backward.py) 也覆盖了 02、03 的要点)。

# %%
import collections
import math
import re

import matplotlib.pyplot as plt
import numpy as np

from minift.app.tutorial import FAST, exercise, pick, show
from minift.base import load_base
from minift.data import ClassificationSource, TaskSplit, encode_split, read_records
from minift.data.batching import classification_batch
from minift.data.lexicon import adjective_polarity
from minift.data.sentiment import rule_label
from minift.methods import freeze_plan, setup_method, trainable_summary
from minift.ops import last_token_index
from minift.training.evaluate import split_metrics
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits
from minift.training.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode: sections 1-4 are as in normal mode; sections 5-7 are a smoke run of a few steps, whose numbers and "
      "verdicts are not findings" if FAST else "normal mode")

# %% [markdown]
# ## 1. 任务:需要组合语义的情感分析
#
# `data/tasks/sentiment` 收录了对 world 里的电影、书、饭菜和地方的简短评论,按规则(`minift/data/sentiment.py`)标为
# *negative* 或 *positive*,所以每个标签在构造上就是对的:
#
# $$\text{pol}(\text{adj}) = \pm 1,\qquad \text{pol}(\text{not adj}) = -\,\text{pol}(\text{adj}),\qquad
# \text{pol}(\text{very adj}) = \text{pol}(\text{adj}),\qquad \text{pol}(X \text{ but } Y) = \text{pol}(Y).$$
#
# 评论分四*类*(kind),每类占每个划分的四分之一,每类内部正负各半:**plain**("The soup was very tasty.")、**negation**("It
# was never dull.")、**contrast**("The story was dull, but the ending was wonderful.")和
# **contrast_negation**(两者兼有)。**测试集**用的句式模板("In my opinion, …"、"If you ask me, …")
# 从不出现在训练集和验证集里,词的搭配也有一部分留出不用,所以它衡量的是泛化能力;验证集和训练集共用模板,
# 我们在验证集上调参。
#
# `load_task` 给出文本和标签 id;每条记录的类型(kind)和模板(template)是 JSONL 文件里的额外字段,`read_records` 原样返回。

# %%
full_train, full_val, full_test = load_task_splits("sentiment")
print(f"train {len(full_train)}, validation {len(full_val)}, test {len(full_test)} reviews; labels "
      f"{full_train.label_names}")
records = {name: [rec for _, rec in read_records(split.path, ("text", "label"))]
           for name, split in (("train", full_train), ("validation", full_val), ("test", full_test))}
kind_of = {rec["text"]: rec["kind"] for recs in records.values() for rec in recs}   # 文本 -> 类型
for kind in ("plain", "negation", "contrast", "contrast_negation"):
    for rec in [r for r in records["train"] if r["kind"] == kind][:2]:
        print(f"  {kind:<18} {rec['template']:<3} {rec['label']:<9} {rec['text']}")
patterns = full_train.info["held_out"]["template_patterns"]
print("\ntest-only templates:")
for t in full_train.info["held_out"]["test_templates"]:
    print(f"  {t:<4} {patterns[t]}")
print("  e.g.", records["test"][3]["text"])

# %% [markdown]
# **检验。** 每个划分的每一类里标签都平衡;测试模板从不出现在训练集和验证集里;
# 没有一条评论同时出现在两个划分中;`rule_label`——只看文本、套用上面的规则——
# 判对了每一个标签(所以这个任务可以被精确地学会,模型犯的错都是它自己的)。

# %%
for name, recs in records.items():
    counts = collections.Counter((r["kind"], r["label"]) for r in recs)
    assert max(counts.values()) - min(counts.values()) <= 1, (name, counts)
templates = {name: {r["template"] for r in recs} for name, recs in records.items()}
assert templates["test"].isdisjoint(templates["train"] | templates["validation"])
texts = {name: {r["text"] for r in recs} for name, recs in records.items()}
assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"]
            or texts["validation"] & texts["test"])
assert all(rule_label(r["text"]) == r["label"] for recs in records.values() for r in recs)
print("balanced, templates held out, splits disjoint, rule_label 100% on all", sum(map(len, records.values())),
      "reviews")

# %% [markdown]
# **为什么数词行不通。** 给每个词一个权重再求和:这是各词出现次数的*线性*函数,也就是词袋分类器做的事。
# 单是否定就能难倒它。设权重为 $w_\text{tasty}$、$w_\text{bad}$、$w_\text{not}$,阈值为 0,那么 "tasty"(+)、"not
# tasty"(−)、"bad"(−)、"not bad"(+)这四条评论要求
#
# $$w_\text{tasty} > 0,\qquad w_\text{not} + w_\text{tasty} < 0,\qquad w_\text{bad} < 0,\qquad
# w_\text{not} + w_\text{bad} > 0,$$
#
# 于是 $w_\text{not} < -w_\text{tasty} < 0$ 且 $w_\text{not} > -w_\text{bad} > 0$:不可能。标签是"是否被否定"与
# "形容词是否正面"的异或(XOR),正是教科书里任何线性分类器都算不出的那个函数。转折更糟:两个分句的褒贬总是相反,
# 它们的词会相互抵消。练习 3 测量最简单的这类分类器——一个固定的词典(每个形容词 +1/−1,其他词一律为 0,"not" 也是):plain
# 评论 100%,negation 和 contrast 0%。这只说明一种权重取法失败;说明*每一种*取法都会在某处失败的,是上面的不等式。
# 到第 3 步时请记住这一点——但要当心:那里的分类头读的是基座模型的隐藏状态,它是词的非线性函数,不是词频,
# 所以单凭这个论证还判不了它的死刑(真正的原因由第 7 节找出)。

# %% [markdown]
# ## 2. 第 1 步——加载预训练模型
#
# 随附的基座模型:`demo` 预设(词表 2,048,宽度 $C = 128$,4 个块、每块 4 个头,上下文 128),在教程 04 里用 world
# 文本预训练过——文本里有人们对电影和饭菜的评价,但没有标签。`load_base()` 读取 Hugging Face GPT-2
# 格式的目录和旁边的分词器;`base.head_kind` 说明模型末端是什么:在第 2 步给它换上 `"classification"` 分类头之前,它是
# `"lm"`(在整个词表上的 logits)。

# %%
base, tok = load_base()
print(f"{base.num_params():,} parameters in {len(base.params)} tensors; {base.cfg}")
print(f"head: {base.head_kind!r} (the LM head, tied to wte); fingerprint {base.fingerprint()}")
ids = np.asarray([tok.encode("The soup was")])                          # (1, 3)
logits = base.forward(ids)                                               # (1, 3, V)
print(f"LM logits {logits.shape}; after 'The soup was' it expects:",
      [tok.decode([i]) for i in np.argsort(logits[0, -1])[::-1][:5]])

# %% [markdown]
# **检验。** 语言模型的 logits 每个位置一行,每个词表条目一列。

# %%
assert logits.shape == (1, ids.shape[1], base.cfg.vocab_size) and base.head_kind == "lm"

# %% [markdown]
# ## 3. 第 2 步——添加任务特定层
#
# 做分类时,GPT-2 多出一个新矩阵 `score.weight` $\in \mathbb R^{K\times C}$($K = 2$ 个标签,没有偏置),取代语言模型头。
# 因果模型在位置 $t$ 的隐藏状态只见过 token $0..t$,所以唯一读完了整条评论的状态是**最后一个真实 token** 的状态;
# 分类头读的就是它:
#
# $$\ell_b = \operatorname{last}(\text{mask}_b) = \max\{t : \text{mask}_{b,t} = 1\},\qquad
# \text{logits}_b = h_{b,\ell_b}\, W_\text{score}^\top \in \mathbb R^{K},\qquad h = \mathrm{LN}_f(x).$$
#
# 这就是 Hugging Face 的 `GPT2ForSequenceClassification`(它的前向计算用同样的办法找最后一个非填充 token,
# `minift/ops/pooling.py` 注明了出处)。`score.weight` 初始化为 $\mathcal N(0, 0.02^2)$,和 GPT-2 的嵌入、`c_attn`、`c_fc`
# 一样(两个 `c_proj` 权重初始化得更小,标准差 $0.02/\sqrt{2L}$:见 `minift/model.py` 和教程 06)。`base.to()`
# 复制出一份私有副本,所以 `base` 本身在后面的步骤里保持原样。

# %%
model = base.to()                                                        # 副本:base 保持加载时的样子
model.add_classification_head(full_train.label_names, seed=0)
print("score.weight", model.params["score.weight"].shape, "=", "[K labels, C channels]")
batch_texts = full_train.texts[:4]
batch_ids, mask, labels = classification_batch(tok.encode_batch(batch_texts), full_train.label_ids[:4],
                                               tok.pad_id, max_len=128)  # (4, T), (4, T), (4,)
last = last_token_index(mask)                                            # (4,)
cls_logits = model.forward(batch_ids, attention_mask=mask, record=True)  # (4, K)
for b in range(4):
    print(f"  length {mask[b].sum():>2}, last real token at {last[b]:>2} = {tok.id_to_token(batch_ids[b, last[b]])!r}, "
          f"then {batch_ids.shape[1] - 1 - last[b]} pads; logits {cls_logits[b]}")

# %% [markdown]
# **检验。** (a) logits 恰好等于 $h_{b,\ell_b} W_\text{score}^\top$,其中 $h$ 取自 `model.record["ln_f"]`(float32:容差
# $10^{-5}$)。(b) 填充不改变任何结果:每条评论单独输入、不加填充,得到的 logits 相同。

# %%
h = model.record["ln_f"]                                                 # (4, T, C)
by_hand = h[np.arange(4), last] @ model.params["score.weight"].T         # (4, K)
assert np.abs(by_hand - cls_logits).max() < 1e-5
alone = np.concatenate([model.forward(np.asarray([tok.encode(t)])) for t in batch_texts])   # (4, K)
print(f"(b) largest change from padding: {np.abs(alone - cls_logits).max():.1e}")
assert np.abs(alone - cls_logits).max() < 1e-5

# %% [markdown]
# **新分类头看到了什么。** 上面的 logits 又小又接近,但并不相等(下面打印的差值并不都同号)。不同评论最后一个 token 的状态
# $h_\ell$ 指向相近的方向(它们都落在一个 "." 上,基座模型用这个状态预测一句话之后的内容),所以一个固定的随机分类头给出的
# logits 彼此相关:下面大多数评论落在同一类。但并不笃定。分类头很小:`add_classification_head` 用它自己的随机数流抽取
# `score.weight` $\sim\mathcal N(0, 0.02^2)$,所以 logits 的量级约为 $0.02\,\lVert h_\ell\rVert$(每个 logit 是
# $w_k \cdot h_\ell$,其中 $w_k \sim \mathcal N(0, 0.02^2 I)$,所以它服从 $\mathcal N(0, 0.02^2\lVert h_\ell\rVert^2)$),
# 损失从 $\log 2 = 0.693$ 附近开始,也就是五五开瞎猜的损失:logit 差 $d$ 很小时,正确标签的损失是
# $\log 2 \mp d/2 + d^2/8 + \dots$,标签平衡时 $\mp d/2$ 项平均下来正好抵消。
#
# **检验。** 在 256 条训练评论上,最后一个 token 状态两两之间的平均余弦相似度大于 0.5,一半以上的评论落在同一类,
# 新分类头的损失与 $\log 2$ 相差不到 0.1。

# %%
many_ids, many_mask, many_labels = classification_batch(tok.encode_batch(full_train.texts[:256]),
                                                        full_train.label_ids[:256], tok.pad_id, max_len=128)
many_logits = model.forward(many_ids, attention_mask=many_mask, record=True)        # (256, K)
h_last = model.record["ln_f"][np.arange(256), last_token_index(many_mask)]          # (256, C)
unit = h_last / np.linalg.norm(h_last, axis=1, keepdims=True)                       # (256, C)
mean_cos = (np.sum(unit @ unit.T) - 256) / (256 * 255)
preds = np.bincount(many_logits.argmax(1), minlength=2)
loss0 = model.loss(many_ids, many_labels, attention_mask=many_mask)
margins = cls_logits[:, 0] - cls_logits[:, 1]                                  # 第 3 节的四条评论
one_sign = bool(np.all(margins > 0) or np.all(margins < 0))
print(f"section 3's margins (logit 0 - logit 1): {margins}; all of one sign: {one_sign}")
print(f"fresh head: predictions per class {preds}; mean cos(h_i, h_j) = {mean_cos:.2f}; |h| = "
      f"{np.linalg.norm(h_last, axis=1).mean():.1f}; loss {loss0:.3f} (log 2 = {math.log(2):.3f})")
assert mean_cos > 0.5 and preds.max() > 128 and abs(loss0 - math.log(2)) < 0.1

# %% [markdown]
# ## 4. 第 3 步——冻结部分参数
#
# 把参数分成冻结的和参与训练的两部分,$\theta = (\theta_\text{frozen}, \theta_\text{train})$,只更新后者:
#
# $$\theta_\text{train} \leftarrow \theta_\text{train} - \eta\, \text{AdamW}\big(\nabla_{\theta_\text{train}}
# L\big), \qquad \theta_\text{frozen}\ \text{不变}.$$
#
# 在 minift 里,"冻结"是一个名字的集合 `model.frozen`。`freeze_plan(model, method)` 为某种方法给出这个集合:`"full"`
# 什么都不冻结,`"freeze"` 冻结嵌入和前一半的块,`"head"` 冻结 `score.weight` 以外的一切——
# 即原文的"只对新添加的层进行训练",通常叫作在预训练特征上做**线性探针**(linear probe)。`setup_method` 负责应用这个计划。

# %%
plan = freeze_plan(model, "freeze")
groups = collections.Counter(n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("h.") else "") for n in plan)
print("'freeze' freezes:", dict(sorted(groups.items())))
counts = {}
for method in ("full", "freeze", "head"):
    m = base.to()
    m.add_classification_head(full_train.label_names, seed=0)
    setup_method(m, method)
    counts[method] = trainable_summary(m)
    print(f"  {method:<6} trains {counts[method]['trainable']:>9,} of {counts[method]['total']:,} parameters "
          f"({counts[method]['percent']:6.2f}%)")

# %% [markdown]
# 现在用 `"freeze"` 计划做一次反向传播。冻结的参数得到的不是零梯度,而是**没有**梯度:`loss_and_grads` 从不为它计算
# $x^\top \bar y$(教程 02 第 1 节),字典里也没有这个键。在最低的一个参与训练的块之下,
# 反向计算干脆停止(`model.backward_floor`):那里没有东西需要梯度,所以这些块也不保存激活值——冻结在时间和内存上省下多少,
# 由教程 09 第 3b 节测量。

# %%
setup_method(model, "freeze")
loss, grads = model.loss_and_grads(batch_ids, labels, attention_mask=mask)
for name in ("wte.weight", "h.0.attn.c_attn.weight", "h.3.attn.c_attn.weight", "score.weight"):
    print(f"  {name:<24} frozen={name in model.frozen!s:<5}  gradient: "
          f"{'shape ' + str(grads[name].shape) if name in grads else 'none computed'}")

# %% [markdown]
# **检验。** 梯度字典恰好包含全部可训练参数;各项计数对得上(`head` 训练 $K\cdot C = 256$ 个数);参与训练的参数梯度不为零。

# %%
assert set(grads) == set(model.params) - model.frozen == set(model.trainable_params())
assert counts["head"]["trainable"] == 2 * base.cfg.n_embd
assert counts["full"]["trainable"] == counts["full"]["total"] == base.num_params() + 2 * base.cfg.n_embd
assert float(np.abs(grads["h.3.attn.c_attn.weight"]).max()) > 0
print(f"{len(grads)} gradient tensors for {len(model.params)} parameter tensors (the base's {len(base.params)} + "
      f"score.weight); {len(model.frozen)} frozen, none computed")

# %% [markdown]
# ## 5. 第 4 步——用反向传播训练
#
# `minift.training.train.train(model, source, TrainConfig(...))` 是所有方法共用的训练循环:每一步取一个批次,运行
# `loss_and_grads`(前向计算、交叉熵、手写的反向计算),把全局梯度范数裁剪到 1,只对可训练数组做一步 AdamW;`lr` 先预热
# `warmup` 步,再按余弦衰减。`ClassificationSource` 提供打乱过、右侧填充的(评论,标签)批次。每 `eval_every` 步调用一次
# `evaluate`。
#
# 先用这些部件写出线性探针。几次训练都用固定的种子,所以每次运行打印的数字都一样(在同一台机器、同一个 BLAS 上)。

# %%
train_split, val_split, test_split = load_task_splits("sentiment", eval_size=pick(None, 128))
steps, batch_size, max_len = pick(400, 30), 16, 128
eval_every = pick(100, 10)


def val_metrics(m):
    """Accuracy and loss on the validation split, named as finetune() names them."""
    return {"val_" + k: v for k, v in split_metrics(m, val_split, tok, max_len).items()}


probe = base.to()
probe.add_classification_head(train_split.label_names, seed=0)          # 第 2 步
setup_method(probe, "head")                                              # 第 3 步
source = ClassificationSource(*encode_split(train_split, tok), tok.pad_id, max_len, batch_size, seed=0)
probe_run = train(probe, source, TrainConfig(steps=steps, batch_size=batch_size, lr=1e-2, warmup=min(20, steps // 5),
                                             eval_every=eval_every), evaluate=val_metrics, progress=not FAST)
print(f"linear probe: {probe_run.seconds:.0f} s, {1e3 * probe_run.seconds / steps:.0f} ms/step; validation accuracy "
      + ", ".join(f"{e['val_accuracy']:.3f}@{e['step']}" for e in probe_run.evals))
if FAST:
    print(SMOKE)

# %% [markdown]
# 然后是完全微调,训练全部参数,用 `minift.training.finetune.finetune`:一次调用完成同样的五步(复制基座模型,加分类头,
# 应用该方法的冻结计划,用上面的循环训练,再在验证集和测试集上评估)。

# %%
# (workers=1:整个批次在一个线程里算,下文引用的数字在任何机器上都出自这条路径;默认值 "auto" 在更快时
# 把批次拆到 2 个线程上,这会改变结果的最后几位。)
fcfg = FinetuneConfig(method="full", steps=steps, batch_size=batch_size, lr=1e-3, eval_every=eval_every,
                      eval_size=pick(None, 128), workers=1)
full_model, _, full_run = finetune(base, tok, fcfg, progress=not FAST)
print(f"full fine-tuning, lr 1e-3: {full_run['ms_per_step']:.0f} ms/step; validation accuracy "
      + ", ".join(f"{e['val_accuracy']:.3f}@{e['step']}" for e in full_run["evals"]))
if FAST:
    print(SMOKE)

# %% [markdown]
# **检验。** 探针冻结的主体与基座模型逐位相同;它的分类头离开了初始值(和第 3 节 `model` 的分类头是同一次种子 0 的抽取,
# 而后者从未训练过);两次训练都没有改动 `base`。完全微调最后 20 步的训练损失平均值低于最初 20 步的。

# %%
assert all(np.array_equal(probe.params[n], base.params[n]) for n in base.params)
assert not np.array_equal(probe.params["score.weight"], model.params["score.weight"])
assert base.fingerprint() == load_base()[0].fingerprint()
losses = [h["loss"] for h in full_run["history"]]
first, last20 = np.mean(losses[:20]), np.mean(losses[-20:])
print(f"full fine-tuning training loss: first 20 steps {first:.3f}, last 20 {last20:.3f}")
assert last20 < first

# %% [markdown]
# ## 6. 第 5 步——评估和调优
#
# 原文:"在验证集上评估模型的性能,并根据结果进行调优,如调整学习率"。再跑一次完全微调,学习率小 3 倍,然后做选择:
#
# $$\eta^\star = \arg\max_{\eta}\ \text{accuracy}_\text{validation}(\eta).$$
#
# 只能用验证集,绝不能用测试集:测试分数一旦被用来选择任何东西,它就不再是新数据上准确率的无偏估计。`finetune`
# 在每次训练结束时都会测测试准确率;我们只打印被选中的那一次。

# %%
slow_model, _, slow_run = finetune(base, tok, FinetuneConfig(**{**fcfg.__dict__, "lr": 3e-4}), progress=not FAST)
runs = {3e-4: (slow_model, slow_run), 1e-3: (full_model, full_run)}
for lr, (_, s) in runs.items():
    print(f"  lr {lr:.0e}: validation accuracy {s['val_accuracy']:.3f}, validation loss {s['val_loss']:.3f}; "
          "during the run " + ", ".join(f"{e['val_accuracy']:.3f}@{e['step']}" for e in s["evals"]))
best_lr = max(runs, key=lambda lr: runs[lr][1]["val_accuracy"])
best_model, best_run = runs[best_lr]
print(f"chosen by validation: lr = {best_lr:.0e}; its test accuracy (held-out templates): "
      f"{best_run['test_accuracy']:.3f}")
acc_at = {lr: {e["step"]: e["val_accuracy"] for e in s["evals"]} for lr, (_, s) in runs.items()}
if FAST:
    print(SMOKE)

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot([e["step"] for e in probe_run.evals], [e["val_accuracy"] for e in probe_run.evals], "o-",
        label="head only (linear probe), lr 1e-2")
for lr, (_, s) in runs.items():
    ax.plot([e["step"] for e in s["evals"]], [e["val_accuracy"] for e in s["evals"]], "o-",
            label=f"full fine-tuning, lr {lr:.0e}")
ax.axhline(0.5, color="0.5", ls="--", lw=0.8, label="chance")
ax.set_xlabel("step")
ax.set_ylabel("validation accuracy")
ax.set_ylim(0.3, 1.0)
ax.legend()
ax.set_title("sentiment: what trains decides what is learnt")
show(fig, "05_validation_accuracy")

# %% [markdown]
# 看曲线,以及上面每 100 步打印的准确率:学习率 1e-3 的完全微调在第 100 步时离随机猜测仍比离最终准确率近——
# 主体得先建起一条从形容词和否定词通往最后一个 token 的路径,分类头才读得到东西——大部分爬升发生在第 100 到 300 步之间。
# 较小的学习率爬得更慢:没有哪一次评估它领先。(快速模式下每次训练都远在爬升之前就停了;那里的数字只说明流程能跑通。)
#
# **检验。** 正常模式下:学习率 1e-3 时,第 100 步的准确率离 0.5 比离最终值近,第 100 步到第 300 步的提升超过从
# 0.5 到终点的总提升的一半;3e-4 那次在任何一次评估中都不领先 1e-3 那次。两次训练的验证准确率之差,大于这
# 500 条评论上该差值标准误差的两倍,$\sqrt{p_1(1-p_1)/n + p_2(1-p_2)/n}$——所以这个选择不是验证样本在抛硬币——
# 而且被选中的那次在验证集上至少达到 0.75,在留出的测试模板上至少达到 0.7。(这个误差把两次训练的分数当作独立样本;
# 其实两者评的是同样的 500 条评论,配对计数会更紧。而且它只覆盖验证样本,不覆盖训练种子,
# 而在这个规模上种子对准确率的影响要大得多:见项目 README 的种子表。)

# %%
p1, p2 = (s["val_accuracy"] for _, s in runs.values())
gap_se = math.sqrt(p1 * (1 - p1) / len(val_split) + p2 * (1 - p2) / len(val_split))
print(f"validation gap {abs(p1 - p2):.3f}, its standard error {gap_se:.3f} (n = {len(val_split)})")
if FAST:
    print(SMOKE)
else:                                   # 快速模式的 30 步远在爬升之前就停了
    at_1e3, final = acc_at[1e-3], full_run["val_accuracy"]
    assert abs(at_1e3[100] - 0.5) < abs(at_1e3[100] - final), at_1e3
    assert at_1e3[300] - at_1e3[100] > (final - 0.5) / 2, at_1e3
    assert all(acc_at[3e-4][step] <= acc_at[1e-3][step] for step in acc_at[1e-3]), acc_at
    assert abs(p1 - p2) > 2 * gap_se, (p1, p2, gap_se)
    assert best_run["val_accuracy"] >= 0.75 and best_run["test_accuracy"] >= 0.7, best_run

# %% [markdown]
# ## 7. 为什么线性探针在这里失败,而训练主体不会
#
# 下面是探针和被选中的完全微调在各类评论上的测试准确率。探针计算 $\operatorname{softmax}(h_\ell W_\text{score}^\top)$,
# 其中 $h_\ell$ 由预训练固定:它只能读出基座模型已经以线性方式放进最后一个 token 状态里的东西。

# %%
def kind_accuracy(m, split):
    """Accuracy of model m on each kind of review in split (split_metrics on the sub-split of that kind)."""
    out = {}
    for kind in ("plain", "negation", "contrast", "contrast_negation"):
        keep = [i for i, t in enumerate(split.texts) if kind_of[t] == kind]
        sub = TaskSplit(split.name, split.split, split.type, split.path, texts=[split.texts[i] for i in keep],
                        label_ids=[split.label_ids[i] for i in keep], label_names=split.label_names)
        out[kind] = split_metrics(m, sub, tok, max_len)["accuracy"]
    out["all"] = split_metrics(m, split, tok, max_len)["accuracy"]
    return out


per_kind = {"head only": kind_accuracy(probe, test_split), f"full, lr {best_lr:.0e}": kind_accuracy(best_model,
                                                                                                     test_split)}
print(f"{'test accuracy':<16}" + "".join(f"{k:>19}" for k in per_kind["head only"]))
for name, acc in per_kind.items():
    print(f"{name:<16}" + "".join(f"{v:>19.3f}" for v in acc.values()))
n_kind = len(test_split) // 4                                        # 每类占测试集的四分之一
full_kinds = {k: v for k, v in per_kind[f"full, lr {best_lr:.0e}"].items() if k != "all"}
noise = {k: 2 * math.sqrt(a * (1 - a) / n_kind) for k, a in full_kinds.items()}    # 两倍标准误差
print(f"{'2 std. errors':<16}" + "".join(f"{v:>19.3f}" for v in noise.values())
      + f"   (of full fine-tuning's, n = {n_kind} per kind)")
print("full fine-tuning's kinds, hardest first:", ", ".join(sorted(full_kinds, key=full_kinds.get)))
if FAST:
    print(SMOKE)

# %% [markdown]
# 探针在*每一*类上都接近随机猜测,plain 评论也不例外,所以它的失败不只是组合语义的问题。问题出在探针的训练(几百步 Adam),
# 还是出在特征?用一个足够强、又不存在优化失误的线性读出就能回答:在最后一个 token 的状态 $X$
# 上做岭回归最小二乘(每条评论一行,标准化,再加一列常数),目标 $y = \pm 1$,精确求解,
#
# $$w^\star = \arg\min_w \lVert Xw - y\rVert^2 + \lambda \lVert w\rVert^2 = (X^\top X + \lambda I)^{-1} X^\top y,
# \qquad \lambda = 1 .$$
#
# (这里用 NumPy 算的是一个基线,不是 minift 的一部分:特征来自 `model.forward(record=True)`。)它是平方误差的精确最优解,
# 而不是准确率的最优解,但既然它处在随机水平,任何线性分类器都好不了多少。比抛硬币高多少才算"拟合了一点"?
# 拿同一个读出去拟合*随机*标签(同样的评论),就知道 $C + 1 = 129$ 个权重能把任意一组标签拟合到什么程度。

# %%
def last_token_states(split, n):
    """The base's ln_f state at the last real token of the first n reviews of split: (n, C), and their labels."""
    states = []
    for s in range(0, n, 256):
        ids_, mask_, _ = classification_batch(tok.encode_batch(split.texts[s:min(s + 256, n)]),
                                              split.label_ids[s:min(s + 256, n)], tok.pad_id, max_len)
        model.forward(ids_, attention_mask=mask_, record=True)          # model:基座模型的主体 + 一个分类头
        states.append(model.record["ln_f"][np.arange(len(ids_)), last_token_index(mask_)])
    return np.concatenate(states), np.asarray(split.label_ids[:n])     # (n, C), (n,)


X_tr, y_tr = last_token_states(train_split, pick(len(train_split), 1024))
X_te, y_te = last_token_states(test_split, len(test_split))
mu, sd = X_tr.mean(0), X_tr.std(0)


def design(X):
    return np.c_[(X - mu) / sd, np.ones(len(X))]                       # (n, C + 1)


w_star = np.linalg.solve(design(X_tr).T @ design(X_tr) + np.eye(X_tr.shape[1] + 1), design(X_tr).T @ (2 * y_tr - 1))
ls_train = float(np.mean((design(X_tr) @ w_star > 0) == y_tr))
ls_test = float(np.mean((design(X_te) @ w_star > 0) == y_te))
print(f"ridge read-out of the base's last-token state: {ls_train:.3f} on its {len(y_tr)} training reviews, "
      f"{ls_test:.3f} on test")
y_coin = np.random.default_rng(0).integers(0, 2, len(y_tr))                 # 没有任何规律可学的标签
w_coin = np.linalg.solve(design(X_tr).T @ design(X_tr) + np.eye(X_tr.shape[1] + 1), design(X_tr).T @ (2 * y_coin - 1))
coin_train = float(np.mean((design(X_tr) @ w_coin > 0) == y_coin))
print(f"the same read-out on random labels: {coin_train:.3f} of them fitted (what 129 weights fit of any labels)")
if FAST:
    print(SMOKE)

# %% [markdown]
# 即使是这个读出,对它自己的训练评论也只比抛硬币好一点点(上面打印的第一行)——几乎不比它对随机标签的拟合好——
# 在测试集上则处在随机水平:基座模型在最后那个 "." 上的状态,在任何线性方向上都不携带评论的褒贬。一个说得通的解释:
# 预训练教模型预测下一个词,而句号后面跟什么,和汤好不好喝几乎无关。完全微调通过每一个块改变这个状态本身,
# 顺带学会了组合规则。上面按类型统计的表给出了这次运行里各类的难易顺序,但每个数都带着抽样噪声——见两倍标准误差那一行,
# 每类只有测试集的四分之一——所以差距比它小的两类,换个种子就可能互换位置。
#
# **检验。** 最小二乘读出在测试集上与随机水平相差不到 0.1(两种模式都是),在它的训练评论上与它对随机标签的拟合程度相差不到
# 0.1。正常模式下,完全微调在测试集上至少比探针高 0.2,而探针在每一类和全体评论上都与随机水平相差不到 0.1。

# %%
probe_acc, full_acc = per_kind["head only"]["all"], per_kind[f"full, lr {best_lr:.0e}"]["all"]
print(f"test accuracy: head only {probe_acc:.3f}, least squares {ls_test:.3f}, full fine-tuning {full_acc:.3f}")
if FAST:
    print(SMOKE)
assert abs(ls_test - 0.5) < 0.1 and abs(ls_train - coin_train) < 0.1
if not FAST:                                            # 快速模式的 30 步训练不了主体
    assert full_acc >= probe_acc + 0.2 and all(abs(a - 0.5) < 0.1 for a in per_kind["head only"].values())

# %% [markdown]
# ## 回顾
#
# | 步骤(§1.1) | minift | 在这里做了什么 |
# |---|---|---|
# | 1 加载预训练模型 | `load_base()` | `demo` 基座模型(大小见第 2 节的输出),语言模型头与 `wte` 绑定 |
# | 2 添加任务特定层 | `model.add_classification_head(labels)` | `score.weight` [2, 128],读取最后一个真实 token |
# | 3 冻结部分参数 | `freeze_plan`, `setup_method` | 冻结 = 不计算梯度,逐位不变 |
# | 4 训练和优化 | `train(model, ClassificationSource(...), TrainConfig(...))`, `finetune(...)` | 对可训练数组做 AdamW |
# | 5 评估和调优 | `split_metrics`;按验证集选学习率 | 只为被选中的那次报告一次测试准确率 |
#
# 原文第 3 步建议只训练新加的层,以保护预训练学到的东西。这里的测量表明,这种保护是拿任务换来的:冻结的最后一个 token
# 状态在任何线性方向上都不编码标签(连 plain 评论也不),所以探针——以及最好的线性读出——停在随机水平,
# 而训练全部权重则远高于它。冻结*真正*保护的东西——基座模型的语言建模能力——要看教程 10 和 `minift compare` 的
# "forgetting" 一列。教程 06 讨论完全微调的代价,教程 07 讨论 LoRA:它同样冻结主体,却在主体*内部*训练一个低秩的改变。
#
# ## 练习
#
# **练习 1——训练之前先数一数。** 当嵌入和前 `k` 个块被冻结时(`freeze_plan(model, "freeze", freeze_blocks=k)`),
# 只根据配置返回 `"freeze"` 训练的参数个数:每个块有两个 LayerNorm($2\cdot 2C$)、`c_attn`($C\cdot 3C + 3C$)、
# `attn.c_proj` ($C^2 + C$)、`c_fc`($C\cdot 4C + 4C$)、`mlp.c_proj`($4C\cdot C + C$);另有 `ln_f`($2C$)和分类头($KC$)。

# %%
def my_freeze_count(cfg, k, num_labels=2):
    """Trainable parameters of method 'freeze' with freeze_blocks=k, from cfg.n_embd and cfg.n_layer."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_freeze_count(cfg, k, num_labels=2):
    C = cfg.n_embd
    block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)   # 12C² + 13C
    return (cfg.n_layer - k) * block + 2 * C + num_labels * C


# %%
def check_freeze_count(answer):
    for k in range(base.cfg.n_layer + 1):
        m = base.to()
        m.add_classification_head(["negative", "positive"])
        setup_method(m, "freeze", freeze_blocks=k)
        real = trainable_summary(m)["trainable"]
        print(f"freeze_blocks={k}: trainable {real:,}, yours {answer(base.cfg, k):,}")
        assert answer(base.cfg, k) == real


exercise("Exercise 1 (trainable count)", check_freeze_count, my_freeze_count, solution_freeze_count)

# %% [markdown]
# **练习 2——最后一个真实 token。** 给定一个布尔掩码 (B, T),它的行中间可能有空洞(1 之间夹着 0)。不用 `last_token_index`,
# 逐行返回值为 1 的最大位置——即第 3 节的规则。

# %%
def my_last_index(mask):
    """mask (B, T) bool -> (B,) int: the position of each row's last True."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_last_index(mask):
    T = mask.shape[1]
    return T - 1 - np.argmax(mask[:, ::-1], axis=1)       # 从右数第一个 True


# %%
def check_last_index(answer):
    rng = np.random.default_rng(0)
    m = rng.random((50, 12)) < 0.6                        # (50, 12) 随机空洞
    m[:, 0] = True                                        # 每行都有真实 token
    assert np.array_equal(answer(m), last_token_index(m))
    assert np.array_equal(answer(mask), last)             # 第 3 节那个填充过的批次
    print("matches last_token_index on 50 random masks and on section 3's batch")


exercise("Exercise 2 (last real token)", check_last_index, my_last_index, solution_last_index)

# %% [markdown]
# **练习 3——数词器。** 按 $\sum_\text{words} \text{pol}(w)$ 的符号给评论分类,其中
# `pol = adjective_polarity()`(评论里的每个形容词 +1 / −1,其他词为 0);和为 0 算判错。返回它在测试记录上每一类的准确率。
# 检验期望 plain 评论 100%,negation 和 contrast 0%:这就是第 1 节的那四条评论,放到整个测试集上看。(由于 "not" 的权重为 0,
# 这个词典在否定句上按构造必然失败;给 "not" 一个权重,只会让失败在 "not tasty" 和 "not bad" 之间转移,
# 正如第 1 节的不等式所预言:试试看。)

# %%
def my_word_counter(recs):
    """recs: list of dicts with "text", "label", "kind" -> {kind: accuracy}."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_word_counter(recs):
    pol = adjective_polarity()
    hits = collections.defaultdict(list)
    for r in recs:
        score = sum(pol.get(w, 0) for w in re.findall(r"[a-z]+", r["text"].lower()))
        guess = "positive" if score > 0 else "negative" if score < 0 else None
        hits[r["kind"]].append(guess == r["label"])
    return {k: float(np.mean(v)) for k, v in hits.items()}


# %%
def check_word_counter(answer):
    acc = answer(records["test"])
    print({k: round(v, 3) for k, v in acc.items()})
    assert acc["plain"] > 0.99 and acc["negation"] < 0.01 and acc["contrast"] < 0.01
    assert acc["contrast_negation"] < 0.5


exercise("Exercise 3 (word counting)", check_word_counter, my_word_counter, solution_word_counter)
