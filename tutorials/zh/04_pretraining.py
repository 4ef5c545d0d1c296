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
# # 04 · 预训练:微调的起点
#
# **原文:** §1.2 微调在预训练模型中的应用:
#
# > 这些模型通常在大规模语料库上进行训练,从而具备了丰富的语言理解和生成能力。
#
# 以及其中的第 2 点"资源效率":"相比于从头开始训练一个模型,微调只需要少量的计算资源和时间"。
#
# 原文里的每一种微调方法,不论完全微调还是 LoRA,都从一个预训练模型出发。这里我们自己做一个:一个从随机权重开始训练的小
# GPT,语料是 minift 生成的 *world 语料*,训练目标与 GPT-2 相同——预测下一个 token。你还会看到"从头开始训练"的代价——
# §1.2 拿来和微调作比较的正是这个数。
#
# **你将学到**
# 1. world 语料是什么(`minift.data.World`、`world_corpus`),分词器怎样把它变成 id;
# 2. 预训练的目标,以及模型起步时的损失值 $\log V$;
# 3. 用 `minift.training.pretrain.pretrain` 做预训练,画出损失曲线,比较训练前后生成的样本;
# 4. 加载随附的基座模型 `data/base-demo`(`load_base`),在留出的文本上测量它。
#
# **用时:** 阅读 30 分钟。正常模式运行 3–7 分钟(`demo` 预设——宽 128、4 层——训练 400 步,练习 3 再训练 100 步:两次实测为
# 187 秒和 418 秒,差别来自其他任务的负载);快速模式(`MINIFT_FAST=1`:`tiny` 预设训练 150 步)约 25 秒(实测 24 秒)。均设
# `OPENBLAS_NUM_THREADS=1`,在与其他任务共用的 2 个 CPU 核上测得。
#
# **前置:** 无。第 3、5 节会用到教程 02 的因果掩码和教程 03 的反向传播(都有中文版:[02](02_backprop_by_hand.py)、
# [03](03_transformer_backward.py))。英文原版:[04_pretraining.py](../04_pretraining.py)。

# %%
import math
import re
import shutil

import matplotlib.pyplot as plt
import numpy as np

import minift
from minift.app.tutorial import FAST, exercise, out_dir, pick, show
from minift.base import load_base, shipped_base_dir
from minift.data import LMSource, World, concat_documents, data_dir, world_corpus
from minift.formats.io import load_json
from minift.formats.tokenizer import Tokenizer
from minift.generate import generate
from minift.training.evaluate import lm_loss
from minift.training.pretrain import heldout_world_ids, pretrain
from minift.training.train import TrainConfig, latest_checkpoint

SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode")

# %% [markdown]
# ## 1. world 语料
#
# 什么都不用下载。`World(0)` 由一个种子生成一个小世界——96 个人、12 个镇,每个人都有家乡、职业、宠物、最好的朋友、爱好、
# 最爱的食物……——`world.document(i)` 用简单的英文写出关于它的第 $i$ 篇文档:人物简介、对话、书信、日记、城镇介绍。
# 文档只复述这个世界的事实,所以同一个事实在整个语料里从不自相矛盾。因此这些事实原则上是学得会的(第 7 节会看到,
# 单靠预训练只学到其中很少一部分),而后面的微调任务问的正是它们。

# %%
world = World(0)
person = world.people[0]
print(f"{len(world.people)} people, {len(world.towns)} towns. One person:")
print(f"  {person.full_name}:", world.facts(person.name))
for i in (0, 1):
    print(f"\n--- document {i} ---\n{world.document(i)[:320]}…")

# %% [markdown]
# **检验。** 语料是其种子的纯函数:同样的调用给出同样的文档;`world_corpus(n_chars=…)` 从流的开头依次取文档,直到至少凑满
# `n_chars` 个字符为止。

# %%
n_chars = pick(3_000_000, 300_000)                       # 本教程预训练语料的大小
texts = world_corpus(n_chars=n_chars)
total_chars = sum(len(t) for t in texts)
print(f"world_corpus(n_chars={n_chars:,}): {len(texts):,} documents, {total_chars:,} characters")
assert world_corpus(n_docs=5) == world.documents(5) == texts[:5]
assert total_chars >= n_chars > total_chars - len(texts[-1])     # 在第一篇超过 n_chars 的文档处停下

# %% [markdown]
# ## 2. 分词器
#
# 模型读的是整数。minift 随附一个字节级 BPE 分词器(`data/tokenizer.json`),用的是 GPT-2 的方案:256 个字节值本身就是
# token,所以*任何*字符串都能编码;此外,从 world 语料和 Python 文档里学到的 1,790 个高频字节序列也是 token。还有两个特殊
# token:`<|endoftext|>`(id 0)分隔文档,`<|pad|>`(id 1)填充批次。

# %%
tok = Tokenizer.load(data_dir() / "tokenizer.json")
sentence = f"{person.name} lives in {person.town}."
ids = tok.encode(sentence)
print(tok)
print(f"{sentence!r} -> {ids}")
print("  pieces:", [tok.id_to_token(i) for i in ids], " ('Ġ' marks a leading space)")
chinese = "微调与LoRA"
print(f"{chinese!r} -> {len(tok.encode(chinese))} tokens for {len(chinese)} characters "
      f"({len(chinese.encode('utf-8'))} UTF-8 bytes): Chinese was not in the training text, so it falls back to bytes")
sample_ids = tok.encode_batch(texts[:300])
chars_per_token = sum(map(len, texts[:300])) / sum(map(len, sample_ids))
print(f"world text: {chars_per_token:.2f} characters per token")

# %% [markdown]
# **检验。** 解码能精确还原编码前的字符串,英文、中文和特殊 token 都是如此;特殊 id 是 0 和 1;词表有 2,048 项,也就是
# `demo` 预设的 `vocab_size`;world 文本平均每个 token 对应 3.5 到 4 个字符(即上面打印的数)。

# %%
for s in (sentence, chinese, "a<|endoftext|>b  tabs\tand\nnewlines"):
    assert tok.decode(tok.encode(s)) == s, s
assert (tok.eot_id, tok.pad_id, tok.vocab_size) == (0, 1, 2048)
assert tok.encode("<|endoftext|>") == [tok.eot_id]
assert 3.5 < chars_per_token < 4
print("round trips exact; <|endoftext|> =", tok.eot_id, " <|pad|> =", tok.pad_id)

# %% [markdown]
# ## 3. 训练目标:预测下一个 token
#
# 所有文档各自后接一个 `<|endoftext|>`,拼接成一条 id 流 $x_1, x_2, \dots$。一个训练样本是 $T$ 个 token 的一个窗口,
# 每个位置的目标都是紧跟其后的那个 token:
#
# $$L = -\frac1{BT}\sum_{b=1}^{B}\sum_{t=1}^{T} \log p_\theta\big(x^{(b)}_{t+1} \,\big|\, x^{(b)}_1, \dots,
# x^{(b)}_t\big).$$
#
# 有了因果掩码(教程 02 第 6 节),这 $T$ 个预测只需一次前向传播。一个一无所知的模型把概率平均分给 $V$ 个 token,损失恰为
# $\log V$——$V = 2048$ 时,$\log 2048 = 7.62$ nats。GPT-2 的初始化(权重的标准差为 $0.02$)让 logits 几乎相等,
# 所以新建的模型从它附近起步,视批次不同略高或略低(单元格把两个数都打印出来)。

# %%
cfg = pick(minift.GPTConfig.preset("demo"),                      # 词表 2048,宽 128,4 层,上下文 128
           minift.GPTConfig.preset("tiny", vocab_size=2048))     # 宽 64,2 层,上下文 64;配我们的分词器
stream = concat_documents(sample_ids, tok.eot_id)                # (N,) 前 300 篇文档的 id
batch = LMSource(stream, block_size=cfg.n_ctx, batch_size=4, seed=0).next_batch()
x, y = batch["input_ids"], batch["targets"]                      # (4, T), (4, T)
print("input  :", repr(tok.decode(x[0, :12])))
print("targets:", repr(tok.decode(y[0, :12])))
fresh = minift.GPT(cfg, seed=0)                                  # 随机权重:预训练的起点
fresh_loss = fresh.loss(x, y)
print(f"fresh model: loss {fresh_loss:.4f}, log V = {math.log(cfg.vocab_size):.4f}")

# %% [markdown]
# **检验。** 目标就是输入向后错开一位;新模型的损失与 $\log V$ 相差不到 0.1。

# %%
assert np.array_equal(y[:, :-1], x[:, 1:])
assert abs(fresh_loss - math.log(cfg.vocab_size)) < 0.1

# %% [markdown]
# ## 4. 训练前的样本
#
# `minift.generate.generate(model, tokenizer, prompt)` 运行模型,从 $\operatorname{softmax}(\text{logits}/\tau)$(温度
# $\tau$)中采样下一个 token,接到末尾,如此反复。空提示从 `<|endoftext|>` 开始,意思是"写一篇新文档"。权重随机时,生成的
# token 近似从词表里均匀抽取。其中有些 token 是整词(`Ġlives`、`ĠSunbury`),所以就连噪声里也有语料中的词;
# 我们在 8 个样本(2 个提示 × 4 个种子)上统计生成的词有多大比例出现在语料里,留待训练后对比。

# %%
prompts = ["", f"{person.name} lives in"]


def samples(model, seeds=(0,), n_tokens=40):
    """Continuations of every prompt, one per seed (a generation stops early at <|endoftext|>)."""
    return [generate(model, tok, p, max_new_tokens=n_tokens, temperature=0.8, seed=s) for p in prompts for s in seeds]


known_words = set(re.findall(r"[A-Za-z]+", " ".join(texts)))


def known_fraction(text_list):
    """Share of the alphabetic words in the texts that occur somewhere in the training corpus."""
    words = [w for t in text_list for w in re.findall(r"[A-Za-z]+", t)]
    return sum(w in known_words for w in words) / max(len(words), 1)


if FAST:
    print(SMOKE + " (the tiny preset, not demo)")
for p, s in zip(prompts, samples(fresh)):
    print(f"{p!r} -> {p + s!r}")
before = samples(fresh, seeds=range(4))                  # 8 个样本,用来测量
print(f"words that occur in the corpus, over 8 samples: {known_fraction(before):.0%}")

# %% [markdown]
# ## 5. 预训练
#
# `pretrain(preset, n_chars=…, tcfg=TrainConfig(…), out_dir=…)` 包办全部工作:构建语料,分词成一条流(97% 用于训练,最后 3%
# 留作验证集),然后运行 minift 的训练循环——`loss_and_grads`(教程 03 的反向传播)、按全局范数裁剪到 1.0、权重衰减 0.1 的
# AdamW、先预热再按余弦衰减学习率。它把模型(一个 Hugging Face GPT-2 目录)、分词器和一份摘要存进 `out_dir`,
# 检查点(连同逐步的历史记录)存在 `out_dir/checkpoints` 下。

# %%
run_dir = out_dir("runs") / "04_pretrain"
shutil.rmtree(run_dir, ignore_errors=True)                       # 从干净的目录开始:只要这次运行,不要上次的残留
steps = pick(400, 150)
tcfg = TrainConfig(steps=steps, batch_size=pick(16, 8), lr=3e-3, warmup=steps // 10, weight_decay=0.1,
                   eval_every=steps // 8, seed=0)
model, run_tok, summary = pretrain(cfg, n_chars=n_chars, tcfg=tcfg, out_dir=run_dir, seed=0, progress=not FAST)
if FAST:
    print(SMOKE)
print(f"{summary['train_tokens']:,} training tokens; {summary['tokens_seen']:,} seen in {steps} steps of "
      f"{tcfg.batch_size}×{cfg.n_ctx}, {summary['train_seconds']:.0f} s "
      f"({summary['tokens_seen'] / summary['train_seconds']:,.0f} tokens/s)")
print(f"final train loss {summary['final_train_loss']:.3f}, validation loss {summary['val_loss']:.3f}")

# %% [markdown]
# 损失曲线。`pretrain` 的摘要只保留评估结果;逐步的历史记录在检查点的 `state.json` 里。

# %%
history = load_json(latest_checkpoint(run_dir / "checkpoints") / "state.json")["history"]
train_steps = [h["step"] + 1 for h in history]
train_losses = [h["loss"] for h in history]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(train_steps, train_losses, lw=0.8, label="training loss (one batch per step)")
ax.plot([e["step"] for e in summary["evals"]], [e["val_loss"] for e in summary["evals"]], "o-",
        label="validation loss (16 windows of the held-out 3%)")
ax.axhline(math.log(cfg.vocab_size), color="0.5", ls="--", lw=0.8, label=f"log V = {math.log(cfg.vocab_size):.2f}")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy (nats per token)")
ax.set_title(f"pretraining {'tiny' if FAST else 'demo'} on {n_chars:,} characters of the world corpus")
ax.legend()
show(fig, "04_pretraining_loss")

# %% [markdown]
# **检验。** 这次运行写出了可以加载的模型;历史记录每步一条;验证损失最终比 $\log V$ 低至少 1.5 nats——按几何平均,
# 模型给正确的下一个 token 的概率至少是均匀猜测的 $e^{1.5} \approx 4.5$ 倍(困惑度至多为 $V/4.5$)。

# %%
reloaded, _ = load_base(run_dir / "model")
assert reloaded.fingerprint() == model.fingerprint() and len(history) == steps
print(f"validation loss {summary['val_loss']:.3f} = log V − {math.log(cfg.vocab_size) - summary['val_loss']:.2f}")
assert summary["val_loss"] < math.log(cfg.vocab_size) - 1.5

# %% [markdown]
# ## 6. 训练后的样本
#
# 提示、温度和种子都与第 4 节相同。

# %%
if FAST:
    print(SMOKE)
for p, s in zip(prompts, samples(model)):
    print(f"{p!r} -> {p + s!r}")
after = samples(model, seeds=range(4))
print(f"\nwords that occur in the corpus, over 8 samples: before {known_fraction(before):.0%}, "
      f"after {known_fraction(after):.0%}")

# %% [markdown]
# **检验。** 训练之后,生成的词里真正出自语料的比例更高了。(快速模式下文本仍然很粗糙;`demo` 的那次运行能写出像样的 world
# 句子,只是内容不一定属实。)

# %%
assert known_fraction(after) > known_fraction(before) + 0.1

# %% [markdown]
# ## 7. 随附的基座模型 `data/base-demo`
#
# 各篇微调教程都从同一个基座出发,它随附在 `data/base-demo` 里:`demo` 预设在 1,600 万个字符的 world 文本上预训练了
# 2,000 步,每步 16×128 个 token。`load_base()` 加载它(Hugging Face GPT-2 的布局:`config.json`、`model.safetensors`、
# `tokenizer.json`;旁边的 `pretrain.json` 是那次运行的摘要)。
#
# 我们在**留出的** world 文本上测量它:`heldout_world_ids` 从另一条流(种子 12345)写出文档,与预训练用的不同,
# 所以这里没有哪个模型见过它们。`lm_loss` 在连续的窗口上平均下一个 token 的损失;每个模型用的都是同样的 64 个 token
# 的窗口,所以数字之间可以比较。(基座的 `pretrain.json` 报告的是另一个数,即它的验证损失,下面第一个打印出来:
# 它取自基座自己训练流留出的尾部,窗口长 128 个 token。窗口越长,每个预测能用的上下文越多,
# 而且那段文本和训练文本同出一条流;所以两个数不一样,只有这张表里的数彼此可比。)

# %%
have_base = shipped_base_dir().is_dir()
if not have_base:
    print(f"{shipped_base_dir()} does not exist yet, so this section is skipped. Make it (about 15 minutes on "
          "2 CPU cores) with:\n"
          "    minift pretrain --preset demo --chars 16000000 --steps 2000 --batch 16 --lr 3e-3 --out runs/base-demo\n"
          "    mkdir -p data/base-demo\n"
          "    cp runs/base-demo/model/* runs/base-demo/pretrain.json data/base-demo/\n"
          "then run this tutorial again.")

# %%
if have_base:
    base, base_tok = load_base()
    made = shipped_base_dir() / "pretrain.json"
    if made.is_file():
        info = load_json(made)
        print(f"base-demo: {info['tokens_seen']:,} tokens in {info['train_config']['steps']:,} steps, "
              f"{info['train_seconds']:.0f} s of training; its own validation loss (pretrain.json, 128-token "
              f"windows) {info['val_loss']:.3f}")
    else:
        print(f"no {made.name} beside the model, so how it was made is not shown (copy runs/base-demo/pretrain.json "
              "into data/base-demo)")
    print(f"base-demo: {base.num_params():,} parameters, {base.cfg}")
    heldout = heldout_world_ids(base_tok, n_chars=pick(100_000, 30_000))          # (N,) 从未训练过的 id
    windows = pick(32, 8)
    if FAST:
        print(SMOKE)
    losses = {"uniform guess": math.log(cfg.vocab_size),
              f"this tutorial's run ({steps} steps)": lm_loss(model, heldout, block_size=64, max_windows=windows),
              "base-demo (2,000 steps)": lm_loss(base, heldout, block_size=64, max_windows=windows)}
    for name, value in losses.items():
        print(f"  {name:<34} held-out loss {value:.3f}  (perplexity {math.exp(value):7.1f})")

# %% [markdown]
# 困惑度 $e^{L}$ 可以这样理解:模型平均相当于在这么多个等可能的 token 之间做选择。
#
# **检验。** 分词器相同(所以 id 相同);基座模型的留出损失低于本教程这次短训练的留出损失,后者又低于均匀猜测。

# %%
if have_base:
    assert base_tok.to_json() == tok.to_json()
    values = list(losses.values())
    assert values[2] < values[1] < values[0], losses

# %% [markdown]
# 预训练带来了什么,没带来什么。基座能写出流利的 world 英文。至于它知不知道*谁住在哪里*,那是另一个问题:
# 下面让它对 24 个人贪心地补全 "⟨name⟩ lives in",把答对的人数与随便猜(12 个镇选 1 个)相比。打印出的答对人数至多只有几个,
# 和瞎猜差不多(检验:答对不到三分之一)。这个缺口——任务需要的具体事实——正是微调要补上的(内置的 `facts` 任务:
# 教程 10 第 7 节,以及教程 11)。

# %%
if have_base:
    for seed in range(2):
        print(repr(generate(base, base_tok, "", max_new_tokens=60, temperature=0.8, seed=seed)), "\n")
    people = world.people[:24]
    right = sum(generate(base, base_tok, f"{p.name} lives in", max_new_tokens=3, temperature=0).strip()
                .startswith(p.town) for p in people)
    print(f"'⟨name⟩ lives in' completed with the right town: {right} of {len(people)} "
          f"(guessing among {len(world.towns)} towns would get about {len(people) / len(world.towns):.0f})")
    assert right < len(people) / 3, right                # 随附的基座、贪心解码:快速模式下也一样

# %% [markdown]
# ## 要点回顾
#
# - world 语料是生成出来的、确定性的英文,讲的是一个小世界;分词器把它切成大约每 3.5–4 个字符一个 token,
#   并能精确还原任何字符串。
# - 预训练就是预测下一个 token:新模型的损失是 $\log V$;训练把损失压下去,样本也从一锅 token 乱炖变成 world 的句子。
# - "从头开始训练"是有代价的:即使是这个小小的基座,也花了 2,000 步、过了 400 万个 token(训练时间在第 7 节打印)。
#   教程 05–07 只用其中一小部分就完成了微调——这就是 §1.2 所说的资源效率,这里把它实测了出来。
#
# ## 练习
#
# **练习 1——一无所知时的损失。** 一个模型给 $V$ 个 token 分配相同的概率,返回它的损失。
# 检验会构造一个正是这样的模型(所有参数置零,于是每个 logit 都是 0)来比较。

# %%
def my_uniform_loss(vocab_size):
    """The cross-entropy of the uniform distribution over vocab_size tokens, in nats."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_uniform_loss(vocab_size):
    return math.log(vocab_size)


# %%
def check_uniform(answer):
    zero = minift.GPT(cfg, seed=0)
    for p in zero.params.values():
        p[...] = 0                                       # 每个 logit 都是 0:softmax 是均匀分布
    measured = zero.loss(x, y)
    print(f"all-zero model: {measured:.6f}; yours: {answer(cfg.vocab_size):.6f}")
    assert abs(answer(cfg.vocab_size) - measured) < 1e-5


exercise("Exercise 1 (uniform loss)", check_uniform, my_uniform_loss, solution_uniform_loss)

# %% [markdown]
# **练习 2——手写贪心解码。** 温度为 0 时,`generate` 每一步都取 argmax。用 `model.forward` 自己写这个循环(输入形状为
# (1, t) 的 id,输出 (1, t, V) 的 logits;读最后一个位置),在 `prompt_ids` 之后生成 `n` 个新 token。检验会与
# `generate_ids(..., temperature=0)` 比较。

# %%
def my_greedy(model, prompt_ids, n):
    """Return the list of n token ids that greedy decoding appends to prompt_ids."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_greedy(model, prompt_ids, n):
    ids = list(prompt_ids)
    for _ in range(n):
        logits = model.forward(np.asarray([ids[-model.cfg.n_ctx:]]))      # (1, t, V)
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[len(prompt_ids):]


# %%
def check_greedy(answer):
    from minift.generate import generate_ids
    prompt_ids = tok.encode(f"{person.name} lives in")
    mine = answer(model, prompt_ids, 8)
    ref = generate_ids(model, prompt_ids, max_new_tokens=8, temperature=0)
    print(f"yours: {tok.decode(mine)!r}   generate: {tok.decode(ref)!r}")
    assert list(mine) == ref


exercise("Exercise 2 (greedy decoding)", check_greedy, my_greedy, solution_greedy)

# %% [markdown]
# **练习 3——继续预训练(§1.2 第 4 点,持续改进)。** "随着新数据的不断积累,可以通过持续微调来不断改进模型的性能"。
# 把本教程的这次运行再继续 `extra` 步:用同样的参数再调用一次 `pretrain`,把 `steps` 加上 `extra`,并设 `resume=True`——
# 它会恢复 `run_dir` 里最新的检查点(权重、优化器状态、数据位置),接着往下训练。返回新的摘要。
# (这是在同一份语料上沿着它的流继续往下走,演示的是持续训练的机制。若要用新数据,应当从保存的模型出发,在新文本上微调:
# `minift pretrain` 不能在另一份语料上续训,因为续训时会检查数据是否相同。)

# %%
def my_continue(extra):
    """Resume the run in run_dir for `extra` more steps; return pretrain's summary dict."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_continue(extra):
    more = TrainConfig(**{**tcfg.__dict__, "steps": tcfg.steps + extra})
    _, _, new_summary = pretrain(cfg, n_chars=n_chars, tcfg=more, out_dir=run_dir, seed=0, resume=True,
                                 progress=not FAST)
    return new_summary


# %%
def check_continue(answer):
    extra = pick(100, 50)
    new = answer(extra)
    new_history = load_json(latest_checkpoint(run_dir / "checkpoints") / "state.json")["history"]
    print(f"validation loss: {summary['val_loss']:.3f} after {steps} steps -> {new['val_loss']:.3f} after "
          f"{steps + extra}")
    assert len(new_history) == steps + extra and new_history[:steps] == history, "not resumed: history restarted"
    assert new["tokens_seen"] == summary["tokens_seen"] + extra * tcfg.batch_size * cfg.n_ctx
    assert new["val_loss"] < summary["val_loss"]


exercise("Exercise 3 (continue pretraining)", check_continue, my_continue, solution_continue)
