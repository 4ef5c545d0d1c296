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
# # 核心 02 · Transformer 的反向传播:把前向传播倒过来读
#
# **你将看到什么。** 一个微型 GPT-2 对一个批次做一次前向传播和反向传播,一张表把每个激活值和它的梯度并排列出:
# 前向传播自上而下,反向传播自下而上。接着,你用模型记录下来的张量,亲手重建模型的两个梯度(残差流上的和共享词嵌入上的),
# 结果与模型算出的完全一致。词嵌入的梯度由两部分组成:漏掉其中一部分,梯度检验就失败;补上,就通过。
# 每个权重的梯度其实都是两个记录张量的乘积 $x^\top \bar y$:完全微调更新参数用的正是它,而 LoRA 根本不会算出它。最后,
# 模型的每个参数都用有限差分检验一遍。
#
# **原文:** §1.1 微调的基本概念,第 4 步:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
#
# 核心 01 逐个检验了单个算子的反向计算。GPT 不过是按固定顺序调用这些算子,它的反向传播就是把同样的调用倒过来再走一遍。
# 放到整个模型上,只多出一条规则——**一个张量被用了两次,它的梯度就相加**——它出现在两处:
#
# - **残差流**:每个块计算 `x = x + branch(x)`,`x` 同时流向两条路径;
# - **共享的词嵌入(tied embedding)**:GPT-2 的 `wte` 既是输入嵌入矩阵,又是输出(LM head)矩阵。
#
# **你将学到**
# 1. 借助 `model.record`,把 `GPT.loss_and_grads` 读成一串算子调用及其逆序;
# 2. 用模型自己的张量,验证残差流上的梯度之和与词嵌入上的梯度之和;
# 3. 每个权重的梯度 $G = x^\top \bar y$ 都由两个记录下来的张量构成;
# 4. 用 `check_function` 把整个模型的梯度与有限差分对照。
#
# **用时:** 阅读约 15 分钟;在一台空闲的 2 核 Intel Xeon 上实测(`OPENBLAS_NUM_THREADS=1`),正常模式运行约 5 秒,
# 快速模式(`MINIFT_FAST=1`)约 1 秒。
#
# **前置:** 核心 01(手写反向传播)。**深入阅读:** [教程 03](../../zh/03_transformer_backward.py)(进阶)讲了为什么拒绝
# float32、抽样检验怎样漏掉 bug,以及不计损失的位置。

# %%
import itertools

import numpy as np

import minift
from minift.app.tutorial import FAST, exercise, pick
from minift.gradcheck import check_function
from minift.ops import (
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)
print("fast mode: sections 1-5 are the same as in normal mode; section 6 checks a sample of entries (a smoke run)"
      if FAST else "normal mode")

# %% [markdown]
# ## 1. 一个 float64 的微型 GPT
#
# 梯度检验需要 float64(见核心 01),模型也要小到能跑上千次前向传播。这个模型的结构与 GPT-2 完全相同——可学习的位置嵌入、
# pre-LayerNorm 块、合并的 `c_attn`、tanh 近似的 GELU、`ln_f`、与 `wte` 共享的 LM head——只是小到可以整个打印出来。
#
# GPT-2 把层归一化(LayerNorm)的增益初始化为 1、偏置为 0。这些是*中性点*:有些写错的反向计算在这里恰好给出正确答案(见核心
# 01)。所以我们先给每个参数加一个小的随机扰动。

# %%
cfg = minift.GPTConfig(vocab_size=48, n_ctx=16, n_embd=16, n_layer=2, n_head=2)
model = minift.GPT(cfg, seed=0, dtype="float64")
for name, p in model.params.items():
    p += 0.1 * rng.standard_normal(p.shape)              # 离开 GPT-2 的中性初始化,原地修改
P = model.params                                         # 名字 -> 数组,沿用 Hugging Face GPT-2 的命名
B, T = 2, 8
ids = rng.integers(0, cfg.vocab_size, size=(B, T))       # (B, T) 输入 token
targets = rng.integers(0, cfg.vocab_size, size=(B, T))   # (B, T) "下一个 token"(随机即可:这里只关心梯度)
print(f"V={cfg.vocab_size}, C={cfg.n_embd}, {cfg.n_layer} blocks of {cfg.n_head} heads: "
      f"{model.num_params():,} parameters in {len(P)} tensors; batch {B}×{T} tokens")

# %% [markdown]
# ## 2. 前向传播是一串调用,反向传播就是把它倒过来
#
# 第 $i$ 个块(见 `minift/model.py`):
#
# $$a = \mathrm{LN}_1(x),\ \ o = \mathrm{c\_proj}(\mathrm{attn}(\mathrm{c\_attn}(a))),\ \ x \leftarrow x + o,\qquad
# m = \mathrm{LN}_2(x),\ \ y = \mathrm{c\_proj}(\mathrm{GELU}(\mathrm{c\_fc}(m))),\ \ x \leftarrow x + y,$$
#
# 之前是嵌入 $x = \mathrm{wte}[\text{ids}] + \mathrm{wpe}[:T]$,之后是 $h = \mathrm{LN}_f(x)$、
# $\text{logits} = h\,\mathrm{wte}^\top$ 和交叉熵。传入 `record=True` 时,`loss_and_grads` 把每个有名字的激活值存进
# `model.record`,它的梯度(记作 $\bar x = \partial L/\partial x$,与核心 01 相同)存在 `"d" + 名字`
# 下,**按计算的先后顺序排列**。

# %%
loss, grads = model.loss_and_grads(ids, targets, record=True)
rec = dict(model.record)                                 # 复制一份:之后调用 model.loss 会写入 model.record
order = {name: i for i, name in enumerate(rec)}          # 每个张量的计算次序(先前向,后反向)


def grad_of(name):
    """The record key holding dL/d(name): "d" + name, except the embedding's output, which is block 0's input."""
    return "dh.0.in" if name == "embedding" else "d" + name


forward_names = [k for k in rec if not k.startswith("d")]
print(f"loss = {loss:.4f}\n")
print(f"{'#':>3}  {'forward activation':<18} {'shape':<13}   {'its gradient':<18} {'shape':<13} {'#':>3}")
for name in forward_names:
    g = grad_of(name)
    print(f"{order[name]:>3}  {name:<18} {rec[name].shape!s:<13}   {g:<18} {rec[g].shape!s:<13} {order[g]:>3}")

# %% [markdown]
# 看表中的两列 `#`:前向传播的步号往下递增,反向传播的步号往上递增,起点是 `dlogits`——也就是核心 01 里交叉熵的
# $(p - \text{onehot})/N$。每个梯度的形状都与对应的激活值相同。有一个梯度有两个名字:`dh.1.in`
# 是从第 1 块输入端离开的梯度,它就是到达第 0 块输出端的 `dh.0.out`,因为一个块的输出*就是*下一个块的输入。
#
# **检验。** 形状一致;沿表往下,反向步号严格递减;`dh.0.out` 与 `dh.1.in` 是同一个张量。

# %%
pairs = [(n, grad_of(n)) for n in forward_names]
assert all(rec[n].shape == rec[g].shape for n, g in pairs)
backward_steps = [order[g] for _, g in pairs]
assert all(a > b for a, b in itertools.pairwise(backward_steps)), backward_steps
assert rec["dh.0.out"] is rec["dh.1.in"]                  # 同一个张量,两个名字
print(f"{len(pairs)} activation/gradient pairs: shapes match, backward order = forward order reversed")

# %% [markdown]
# ## 3. 残差流:梯度是两条路径之和
#
# 以第 0 块的 MLP 残差为例:$x_\text{out} = x_\text{mid} + y(x_\text{mid})$,其中 $y$ 是整个 MLP 分支(LN₂、c_fc、GELU、
# c_proj)。$x_\text{mid}$ 沿两条路径影响损失,由链式法则,
#
# $$\bar x_\text{mid} \;=\; \underbrace{\bar x_\text{out}}_{\text{跳连:原样传过}}
# \;+\; \underbrace{\mathrm{LN}_2^\top(\bar m)}_{\text{分支}}, \qquad\text{同理}\qquad
# \bar x_\text{in} = \bar x_\text{mid} + \mathrm{LN}_1^\top(\bar a).$$
#
# $\mathrm{LN}_2^\top(\bar m)$ 就是把 `layernorm_backward` 作用在 $\bar m$(到达 LN₂ 输出端的梯度)上。加法同时把
# $\bar x_\text{out}$ 原封不动地交给分支:$\bar y = \bar x_\text{out}$。深层残差网络之所以训练得动,靠的正是跳连这一项:
# 梯度不必穿过每个分支,就能到达靠前的层。
#
# 下面用 minift 的 LayerNorm 反向计算,从记录的张量重建这两个和,再与模型算出的对比。

# %%
x_in = rec["embedding"]                                  # (B, T, C) 第 0 块的输入
x_mid = x_in + rec["h.0.attn.c_proj"]                    # (B, T, C) 注意力残差之后,与模型的加法相同
d_out = rec["dh.0.out"]                                  # (B, T, C) dL/d(第 0 块的输出)

_, ln2_cache = layernorm_forward(x_mid, P["h.0.ln_2.weight"], P["h.0.ln_2.bias"])
branch2 = layernorm_backward(rec["dh.0.ln_2"], ln2_cache)[0]   # (B, T, C) MLP 路径的那一份
d_mid = d_out + branch2                                  # (B, T, C) 跳连 + 分支
_, ln1_cache = layernorm_forward(x_in, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])
branch1 = layernorm_backward(rec["dh.0.ln_1"], ln1_cache)[0]   # (B, T, C) 注意力路径的那一份
d_in = d_mid + branch1                                   # (B, T, C)

norm = np.linalg.norm
print(f"‖skip‖ = {norm(d_out):.4f}   ‖MLP branch‖ = {norm(branch2):.4f}   ‖attention branch‖ = {norm(branch1):.4f}")
print(f"‖dL/dx_in‖ = {norm(d_in):.4f}  (not the sum of the norms: the three point in different directions)")

# %% [markdown]
# **检验。** (a) MLP 分支收到的正是块输出端的梯度。(b) 跳连 + MLP 分支,等于模型在 $x_\text{mid}$
# 处的梯度(也就是它交给注意力分支的 `dh.0.attn.c_proj`)。(c) 再加上注意力分支,就是模型的 `dh.0.in`。
# 同样的运算作用在同样的数上,所以结果完全一致;去掉一个分支,误差就和那个分支一样大。

# %%
assert np.array_equal(rec["dh.0.mlp.c_proj"], d_out)                                     # (a)
err_mid = np.abs(d_mid - rec["dh.0.attn.c_proj"]).max()                                  # (b)
err_in = np.abs(d_in - rec["dh.0.in"]).max()                                             # (c)
err_without = np.abs(d_mid - rec["dh.0.in"]).max()                                       # 去掉注意力分支
print(f"(b) {err_mid:.1e}   (c) {err_in:.1e}   without the attention branch: {err_without:.1e}")
assert err_mid < 1e-14 and err_in < 1e-14 and err_without > 1e-3

# %% [markdown]
# ## 4. 共享的词嵌入:`wte` 得到两份梯度,两者相加
#
# `wte`($V \times C$)被用了两次:第 `ids[b, t]` 行作为输入嵌入被查出来,整个矩阵又充当 LM head,
# $\text{logits} = h\,\mathrm{wte}^\top$。因此
#
# $$\overline{\mathrm{wte}} \;=\; \underbrace{\overline{\text{logits}}^\top h}_{\text{LM head:每一行}} \;+\;
# \underbrace{\textstyle\sum_{(b,t):\ \text{ids}[b,t] = v} \bar x_{b,t}}_{\text{嵌入:仅当 token } v
# \text{ 在批次中时,第 } v \text{ 行才有}} .$$
#
# LM head 这一部分就是核心 01 里线性层的 $\bar W = x^\top \bar y$,只不过 $W = \mathrm{wte}^\top$。
# 嵌入这一部分把嵌入输出端的梯度(`dh.0.in`)按查过的 token 累加(scatter-add)到对应的行上。两部分都用 minift
# 自己的算子反向计算求出。

# %%
_, head_cache = linear_forward(rec["ln_f"], P["wte.weight"].T)               # logits = h @ wteᵀ
_, dwte_T, _ = linear_backward(rec["dlogits"], head_cache, need_dx=False, need_db=False)
head_part = dwte_T.T                                                          # (V, C)
_, emb_cache = embedding_forward(ids, P["wte.weight"], P["wpe.weight"])
emb_part, dwpe = embedding_backward(rec["dh.0.in"], emb_cache)                # (V, C), (n_ctx, C)

rows_head = int((np.abs(head_part).sum(1) > 0).sum())
rows_emb = int((np.abs(emb_part).sum(1) > 0).sum())
n_distinct = len(np.unique(ids))
print(f"LM-head part: {rows_head} of {cfg.vocab_size} rows nonzero (softmax pushes on every logit)")
print(f"embedding part: {rows_emb} rows nonzero = the {n_distinct} distinct tokens in the batch")

# %% [markdown]
# **检验。** (a) LM head 部分 + 嵌入部分,恰好等于模型的 `wte` 梯度;由同一个 `dh.0.in` 算出的 `wpe` 梯度也与模型的相同,
# 说明喂给嵌入反向计算的张量没有选错。(b) 单独任何一部分都*不是*梯度:对 `wte` 的每个元素做有限差分检验,只用 LM head
# 部分会失败,用两者之和则通过。

# %%
err_sum = np.abs(head_part + emb_part - grads["wte.weight"]).max()
err_wpe = np.abs(dwpe - grads["wpe.weight"]).max()
print(f"(a) |head + embedding − grads['wte.weight']| = {err_sum:.1e},  |dwpe − grads['wpe.weight']| = {err_wpe:.1e}")
assert err_sum < 1e-14 and err_wpe == 0 and rows_emb == n_distinct and rows_head == cfg.vocab_size


def loss_now():
    return model.loss(ids, targets)


only_head = check_function(loss_now, {"wte.weight": P["wte.weight"]}, {"wte.weight": head_part})
both = check_function(loss_now, {"wte.weight": P["wte.weight"]}, {"wte.weight": head_part + emb_part})
print(f"(b) head part alone:\n{only_head}\n\n    head part + embedding part:\n{both}")
worst_row = only_head["wte.weight"].worst_index[0]
print(f"\nworst row of the head-only check: token {worst_row}, in the batch: {worst_row in ids}")
assert not only_head.ok and both.ok and worst_row in ids

# %% [markdown]
# 只用 LM head 部分时,误差最大的那一行属于一个*在*批次中的 token:那里缺了嵌入部分。批次之外的 token,其所在行只用 LM head
# 部分也能通过,所以只抽查几个元素的检验可能漏掉这个 bug;这里把所有元素都检查了一遍。
#
# ## 5. 微调从反向传播里拿走的东西:每个权重的 $G = x^\top \bar y$
#
# 块中的每个线性层计算 $y = xW + b$,$x$ 展平为 $N = B\cdot T$ 行。它的权重梯度就是核心 01 里的
#
# $$G \;=\; \bar W \;=\; x^\top \bar y \qquad (\text{in} \times N)\,(N \times \text{out}),$$
#
# 即对所有位置的外积求和:该层读进来的东西,乘以它写出去的东西的梯度。两个因子都在记录里。完全微调(原文第 2 节)把这个
# $G$——每个权重一个满尺寸矩阵——交给优化器。LoRA(核心 03)冻结 $W$:模型于是跳过这一次矩阵乘法,但 $\bar x = \bar y W^\top$
# 仍然要继续传给下面的层。

# %%
LINEARS = {"attn.c_attn": "ln_1", "attn.c_proj": "attn", "mlp.c_fc": "ln_2", "mlp.c_proj": "mlp.gelu"}  # -> 输入
errs = {}
for i in range(cfg.n_layer):
    for module, read in LINEARS.items():
        W = P[f"h.{i}.{module}.weight"]                                   # (in, out)
        x = rec[f"h.{i}.{read}"].reshape(-1, W.shape[0])                  # (N, in) 该层读入的
        dy = rec[f"dh.{i}.{module}"].reshape(-1, W.shape[1])              # (N, out) 该层输出的梯度
        errs[f"h.{i}.{module}"] = np.abs(x.T @ dy - grads[f"h.{i}.{module}.weight"]).max()
for name, err in errs.items():
    print(f"{name:<18} G shape {grads[name + '.weight'].shape!s:<9} |xᵀ ȳ − grads| = {err:.1e}")

# %% [markdown]
# **检验。** 所有块内权重的梯度,都等于由记录算出的 $x^\top \bar y$。

# %%
assert max(errs.values()) < 1e-13, errs
print(f"{len(errs)} weight gradients rebuilt as xᵀ ȳ from recorded tensors")

# %% [markdown]
# ## 6. 整个模型对照有限差分
#
# `check_function(loss_fn, arrays, grads)` *原地*扰动指定数组中的元素,调用 `loss_fn()`(一次完整的前向传播加损失),
# 再把元素精确还原,然后把中心差分与 `grads` 比较:
#
# $$\text{numeric} = \frac{L(\theta + h e_i) - L(\theta - h e_i)}{2h}, \qquad h = 10^{-5}, \qquad
# \text{error} = \frac{|\text{analytic} - \text{numeric}|}{\max(|\text{analytic}|, |\text{numeric}|, 10^{-3})}.$$
#
# 这里的标量是模型真实的损失,所以内部每个算子收到的,是上面各层实际传下来的梯度。在 float64 下,差商的舍入误差约为
# $10^{-16}\,L/h$(下面会打印),远低于容差 $10^{-5}$。正常模式检查每一个元素,快速模式只抽样。

# %%
max_entries = pick(None, 8)                              # 正常模式:全部元素;快速模式:每个张量随机 8 个
report = check_function(loss_now, P, grads, max_entries=max_entries)
checked = sum(e.checked for e in report.entries)
print(report)
print(f"\n{checked:,} of {model.num_params():,} parameter entries checked, in {len(report.entries)} tensors; "
      f"rounding estimate 1e-16·L/h = {1e-16 * loss / 1e-5:.0e}")
if FAST:
    print("(fast mode: a smoke run on a sample; these numbers are not findings)")

# %% [markdown]
# **检验。** 每个张量都在容差之内;整个模型的最大误差低于 $10^{-6}$。

# %%
assert report.ok and report.max_error < 1e-6, report
print(f"worst error in the model: {report.max_error:.1e}")

# %% [markdown]
# ## 要点回顾
#
# - `loss_and_grads` 就是前向传播的调用列表,后面接上同一列表的逆序;每个梯度的形状都与其激活值相同。
# - 一个张量被用了两次,梯度就相加:残差流的梯度 = 跳连 + 分支;`wte` 的梯度 = LM head(所有行)+ 嵌入(批次中 token
#   所在的行)。漏掉任何一项,梯度检验都会失败。
# - 每个权重的梯度都是 $G = x^\top \bar y$,一个满尺寸矩阵,由该层的输入和其输出的梯度构成。完全微调用它更新 $W$;冻结 $W$,
#   省掉的只是这一个乘积。
# - 对真实损失做的 float64 有限差分检验,确认了整个反向传播(见上面的打印结果)。
#
# 下一篇核心 03 在这套反向传播之上搭建 LoRA:冻结 $W$,只训练两个小矩阵,它们的梯度由同样的 $x$ 和 $\bar y$ 算出。
#
# ## 练习
#
# 在 `my_...` 函数里写下你的答案,再运行其下方的检验单元。在你动手之前,检验跑的是参考答案(在 Jupyter 中默认折叠)。
#
# **练习 1——最后一个块的残差。** 仿照第 3 节重建 `dh.0.in` 的做法,重建 `dh.1.in`(第 1 块输入端的梯度)。新的地方在于:
# 第 1 块*输出端*的梯度并不来自另一个块,而要通过 `ln_f` 的反向计算得到——把它作用在 `rec["dln_f"]` 上,cache 取自
# `layernorm_forward(rec["h.1.out"], P["ln_f.weight"], P["ln_f.bias"])`。

# %%
def my_block1_input_grad(rec, P):
    """Return dL/d(block 1's input), shape (B, T, C), from recorded tensors and minift's LayerNorm ops."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_block1_input_grad(rec, P):
    _, c_f = layernorm_forward(rec["h.1.out"], P["ln_f.weight"], P["ln_f.bias"])
    d_out1 = layernorm_backward(rec["dln_f"], c_f)[0]                         # dL/d(第 1 块的输出)
    x_in1 = rec["h.0.out"]
    x_mid1 = x_in1 + rec["h.1.attn.c_proj"]
    _, c2 = layernorm_forward(x_mid1, P["h.1.ln_2.weight"], P["h.1.ln_2.bias"])
    d_mid1 = d_out1 + layernorm_backward(rec["dh.1.ln_2"], c2)[0]            # 跳连 + MLP 分支
    _, c1 = layernorm_forward(x_in1, P["h.1.ln_1.weight"], P["h.1.ln_1.bias"])
    return d_mid1 + layernorm_backward(rec["dh.1.ln_1"], c1)[0]              # + 注意力分支


# %%
def check_block1(answer):
    err = np.abs(answer(rec, P) - rec["dh.1.in"]).max()
    print(f"max |yours − dh.1.in| = {err:.1e}")
    assert err < 1e-12


exercise("Exercise 1 (the last block's residual)", check_block1, my_block1_input_grad, solution_block1_input_grad)

# %% [markdown]
# **练习 2——冻结(原文 §1.1 第 3 步:冻结部分参数)。** 把两个嵌入表 `wte.weight` 和 `wpe.weight` 的名字放进 `model.frozen`
# 来冻结它们,返回一次 `loss_and_grads` 调用得到的梯度。检验会确认:被冻结的张量没有梯度,
# 其余每个梯度都与不冻结时*逐位*相同——冻结改变的是算哪些,而不是算出来的值。做完后把 `model.frozen` 清空。

# %%
def my_frozen_grads(model, ids, targets):
    """Return the grads dict with wte.weight and wpe.weight frozen."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_frozen_grads(model, ids, targets):
    model.frozen = {"wte.weight", "wpe.weight"}
    try:
        return model.loss_and_grads(ids, targets)[1]
    finally:
        model.frozen = set()


# %%
def check_frozen(answer):
    g = answer(model, ids, targets)
    assert not model.frozen, "unfreeze the model again (model.frozen = set())"
    assert set(g) == set(grads) - {"wte.weight", "wpe.weight"}, sorted(set(grads) ^ set(g))
    same = all(np.array_equal(g[k], grads[k]) for k in g)
    print(f"{len(g)} gradients, none for the embeddings; all bit-for-bit unchanged: {same}")
    assert same


exercise("Exercise 2 (freezing)", check_frozen, my_frozen_grads, solution_frozen_grads)
