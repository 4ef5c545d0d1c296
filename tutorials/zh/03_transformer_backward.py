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
# # 03 · Transformer 的反向传播:把前向传播倒过来读
#
# **原文:** §1.1 微调的基本概念,还是第 4 步:
#
# > 4. 训练和优化:使用特定任务的数据集对模型进行训练,通过反向传播算法调整模型参数,以最小化损失函数。
#
# 教程 02 逐个检验了单个算子的反向计算。GPT 不过是按固定顺序调用这些算子,它的反向传播就是把同样的调用倒过来再走一遍。
# 放到整个模型上,新东西只有两处,而且归结为同一条规则——**一个张量被用了两次,它的梯度就相加**:
#
# - **残差流**:每个块计算 `x = x + branch(x)`,`x` 同时流向两条路径;
# - **共享的词嵌入(tied embedding)**:GPT-2 的 `wte` 既是输入嵌入矩阵,又是输出(LM head)矩阵。
#
# **你将学到**
# 1. 借助 `model.record`,把 `GPT.loss_and_grads` 读成一串算子调用及其逆序;
# 2. 用模型自己的张量,从数值上验证残差流上的梯度之和与共享词嵌入上的梯度之和;
# 3. 用 `minift.gradcheck.check_function` 把整个模型的梯度与有限差分对照。
#
# **用时:** 正常模式运行约 5 秒(在 2 个 CPU 核上实测;最后的检验会走遍模型全部 7,616 个参数),快速模式(`MINIFT_FAST=1`:
# 每个张量抽样 8 个元素)约 1 秒;阅读 30 分钟。
#
# **前置:** [教程 02](02_backprop_by_hand.py)(手写反向传播)。
# 英文原版:[03_transformer_backward.py](../03_transformer_backward.py)。

# %%
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
print("fast mode" if FAST else "normal mode")

# %% [markdown]
# ## 1. 一个 float64 的微型 GPT
#
# 梯度检验需要 float64(教程 02 第 2 节),模型也要小到能跑上千次前向传播。这个模型的结构与 GPT-2 完全相同——
# 可学习的位置嵌入、pre-LayerNorm 块、合并的 `c_attn`、tanh 近似的 GELU、`ln_f`、与 `wte` 共享的 LM head——
# 只是小到可以整个打印出来:词表 $V = 48$,宽度 $C = 16$,2 个块、每块 2 个头,上下文长度 16。
#
# GPT-2 把层归一化的增益初始化为 1、偏置为 0。这些是*中性点*:有些写错的反向计算在这里恰好给出正确答案(教程 02 第 7 节)。
# 所以在检验任何东西之前,我们先给每个参数加一个随机扰动(标准差 0.1)。

# %%
cfg = minift.GPTConfig(vocab_size=48, n_ctx=16, n_embd=16, n_layer=2, n_head=2)
model = minift.GPT(cfg, seed=0, dtype="float64")
for name, p in model.params.items():
    p += 0.1 * rng.standard_normal(p.shape)              # 离开 GPT-2 的中性初始化,原地修改
P = model.params                                         # 名字 -> 数组,沿用 Hugging Face GPT-2 的命名
B, T = 2, 8
ids = rng.integers(0, cfg.vocab_size, size=(B, T))       # (B, T) 输入 token
targets = rng.integers(0, cfg.vocab_size, size=(B, T))   # (B, T) "下一个 token"(随机即可:这里只关心梯度)
print(f"{model.num_params():,} parameters in {len(P)} tensors; batch {B}×{T} tokens")

# %% [markdown]
# ## 2. 前向传播是一串调用,反向传播就是把它倒过来
#
# 第 $i$ 个块(见 `minift/model.py`):
#
# $$a = \mathrm{LN}_1(x),\ \ o = \mathrm{c\_proj}(\mathrm{attn}(\mathrm{c\_attn}(a))),\ \ x \leftarrow x + o,\qquad
# m = \mathrm{LN}_2(x),\ \ y = \mathrm{c\_proj}(\mathrm{GELU}(\mathrm{c\_fc}(m))),\ \ x \leftarrow x + y,$$
#
# 之前是嵌入 $x = \mathrm{wte}[\text{ids}] + \mathrm{wpe}[:T]$,之后是 $h = \mathrm{LN}_f(x)$、
# $\text{logits} = h\,\mathrm{wte}^\top$ 和交叉熵。`loss_and_grads(..., record=True)` 把每个有名字的激活值存进
# `model.record`,损失对它的梯度存在 `"d" + 名字` 下,**按计算的先后顺序排列**。

# %%
loss, grads = model.loss_and_grads(ids, targets, record=True)
rec = model.record
order = {name: i for i, name in enumerate(rec)}          # 每个张量的计算次序(先前向,后反向)


def grad_of(name):
    """The record key holding dL/d(name): "d" + name, except the embedding's output, which is block 0's input."""
    return "dh.0.in" if name == "embedding" else "d" + name


forward_names = [k for k in rec if not k.startswith("d")]
print(f"loss = {loss:.4f}\n")
print(f"{'#':>3}  {'forward activation':<18} {'shape':<13}   {'its gradient':<18} {'shape':<13} {'#':>3}")
for name in forward_names:
    g = grad_of(name)
    gshape, gstep = (str(rec[g].shape), order[g]) if g in rec else ("(not recorded)", "")
    print(f"{order[name]:>3}  {name:<18} {str(rec[name].shape):<13}   {g if g in rec else '':<18} "
          f"{gshape:<13} {gstep:>3}")

# %% [markdown]
# 看表中的两列 `#`:前向传播自上而下(第 0–20 步),反向传播自下而上(第 21–42 步,起点是 `dlogits`,即教程 02 里交叉熵的
# $(p - \text{onehot})/N$)。每个梯度的形状都与对应的激活值相同。反向传播比前向传播多出 L − 1 项,
# 块与块之间的每个边界一项(这里 L = 2:一项)——边界处的梯度用它的两个名字各列一次:`dh.1.in`(第 32 步)
# 是从第 1 块输入端离开的梯度,`dh.0.out`(第 33 步)是到达第 0 块输出端的同一个梯度。一个块的输出*就是*下一个块的输入,
# 所以两者是同一个张量的两个名字。
#
# **检验。** 对每个有记录梯度的行:形状相同,而且沿表往下,反向步号严格递减(反向传播恰好是前向传播的逆序);并且 `dh.0.out`
# 就是 `dh.1.in`。

# %%
pairs = [(n, grad_of(n)) for n in forward_names if grad_of(n) in rec]
assert all(rec[n].shape == rec[g].shape for n, g in pairs)
backward_steps = [order[g] for _, g in pairs]
assert all(a > b for a, b in zip(backward_steps, backward_steps[1:])), backward_steps
assert rec["dh.0.out"] is rec["dh.1.in"]                  # 同一个张量,两个名字:第 1 块的输入就是第 0 块的输出
print(f"{len(pairs)} activation/gradient pairs: shapes match, backward order = forward order reversed")

# %% [markdown]
# ## 3. 残差流:梯度是两条路径之和
#
# 以第 0 块的 MLP 残差为例:$x_\text{out} = x_\text{mid} + y(x_\text{mid})$,其中 $y$ 是整个 MLP 分支(LN₂、c_fc、GELU、
# c_proj)。由链式法则,$x_\text{mid}$ 沿两条路径影响损失,
#
# $$\frac{\partial L}{\partial x_\text{mid}} \;=\;
# \underbrace{\frac{\partial L}{\partial x_\text{out}}}_{\text{跳连:原样传过}} \;+\;
# \underbrace{\mathrm{LN}_2^\top\!\Big(\frac{\partial L}{\partial m}\Big)}_{\text{分支}}, \qquad\text{同理}\qquad
# \frac{\partial L}{\partial x_\text{in}} = \frac{\partial L}{\partial x_\text{mid}} +
# \mathrm{LN}_1^\top\!\Big(\frac{\partial L}{\partial a}\Big).$$
#
# 这里的 $\mathrm{LN}_2^\top(\cdot)$ 是 LayerNorm 在 $x_\text{mid}$ 处的向量–雅可比积
# $J_{\mathrm{LN}_2}(x_\text{mid})^\top\,\partial L/\partial m$:把 `layernorm_backward` 作用在 $\partial L/\partial m$
# 上,即到达 LN₂ 输出端 $m$ 的梯度(LN₁ 与 $a$ 同理)。
# 加法节点还把收到的梯度原封不动地交给分支:$\partial L/\partial y = \partial L/\partial x_\text{out}$。
# 深层残差网络之所以训练得动,靠的正是跳连这一项——梯度不必穿过每个分支,就能到达靠前的层。
#
# 下面从记录的张量重建这两个和:在分支的梯度(`dh.0.ln_2` $= \partial L/\partial m$,`dh.0.ln_1` $= \partial L/\partial a$)
# 上调用 minift 的 LayerNorm 反向计算,再与模型的反向传播算出的结果对比。

# %%
x_in = rec["embedding"]                                  # (B, T, C) 第 0 块的输入
x_mid = x_in + rec["h.0.attn.c_proj"]                    # (B, T, C) 注意力残差之后,与模型的加法相同
d_out = rec["dh.0.out"]                                  # (B, T, C) dL/d(第 0 块的输出),= rec["dh.1.in"]

_, ln2_cache = layernorm_forward(x_mid, P["h.0.ln_2.weight"], P["h.0.ln_2.bias"])
branch2 = layernorm_backward(rec["dh.0.ln_2"], ln2_cache)[0]   # (B, T, C) MLP 路径的那一份
d_mid = d_out + branch2                                  # (B, T, C) 跳连 + 分支
_, ln1_cache = layernorm_forward(x_in, P["h.0.ln_1.weight"], P["h.0.ln_1.bias"])
branch1 = layernorm_backward(rec["dh.0.ln_1"], ln1_cache)[0]   # (B, T, C) 注意力路径的那一份
d_in = d_mid + branch1                                   # (B, T, C)

norm = np.linalg.norm
print(f"‖skip‖ = ‖dL/dx_out‖ = {norm(d_out):.4f}   ‖MLP branch‖ = {norm(branch2):.4f}   "
      f"‖attention branch‖ = {norm(branch1):.4f}")
print(f"‖dL/dx_in‖ = {norm(d_in):.4f}  (not the sum of the norms: the three vectors point in different directions)")

# %% [markdown]
# **检验。** (a) 交给 MLP 分支的梯度(`dh.0.mlp.c_proj`)*就是*块输出端的梯度。(b) 跳连 + MLP 分支,等于模型在
# $x_\text{mid}$ 处算出的梯度(模型也把它交给了注意力分支,即 `dh.0.attn.c_proj`)。(c) 再加上注意力分支,
# 就是模型在块输入端的梯度 `dh.0.in`。同样的运算作用在同样的数上,所以结果完全一致,而不只是接近。去掉任何一个分支项,
# 误差就和那一项一样大。

# %%
assert np.array_equal(rec["dh.0.mlp.c_proj"], d_out)                                     # (a)
err_mid = np.abs(d_mid - rec["dh.0.attn.c_proj"]).max()                                  # (b)
err_in = np.abs(d_in - rec["dh.0.in"]).max()                                             # (c)
err_without = np.abs(d_mid - rec["dh.0.in"]).max()                                       # 漏掉注意力分支
print(f"(b) {err_mid:.1e}   (c) {err_in:.1e}   without the attention branch: {err_without:.1e}")
assert err_mid < 1e-14 and err_in < 1e-14 and err_without > 1e-3

# %% [markdown]
# ## 4. 共享的词嵌入:`wte` 得到两份梯度,两者相加
#
# `wte`($V \times C$)被用了两次:第 `ids[b, t]` 行作为输入嵌入被查出来,整个矩阵又充当 LM head,
# $\text{logits} = h\,\mathrm{wte}^\top$。它的梯度是两者之和
#
# $$\frac{\partial L}{\partial\,\mathrm{wte}} \;=\;
# \underbrace{\bar{\text{logits}}^\top h}_{\text{LM head: } V\times C,\ \text{每一行}} \;+\;
# \underbrace{\textstyle\sum_{(b,t):\ \text{ids}[b,t] = v} \bar x_{b,t}}_{\text{嵌入:仅当 token } v
# \text{ 在批次中时,第 } v \text{ 行才有}} .$$
#
# LM head 这一部分就是线性层的 $\bar W = x^\top \bar y$(教程 02),其中 $W = \mathrm{wte}^\top$,$h$ 和
# $\bar{\text{logits}}$ 展平成 $N = B\cdot T$ 行:对所有位置的外积求和,与 $\bar W$ 一样。
# 嵌入这一部分则把嵌入输出端的梯度(`dh.0.in`)按查过的 token 累加(scatter-add)到对应的行上。下面用 minift
# 自己的算子反向计算分别求出两部分,再把它们的和与 `grads["wte.weight"]` 对比。

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
# **检验。** (a) LM head 部分 + 嵌入部分,恰好等于模型的 `wte` 梯度;嵌入反向计算给出的 `wpe` 梯度(来自同一个上游张量
# `dh.0.in`)也等于模型的 `wpe` 梯度——说明喂给嵌入反向计算的张量没有选错。(b) 单独任何一部分都*不是*梯度:对 `wte`(全部
# $48 \times 16 = 768$ 个元素)做有限差分检验,只用 LM head 部分会失败,用两者之和则通过。

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
# 只用 LM head 部分时,误差最大的那一行属于一个*在*批次中的 token:那里缺了嵌入部分。批次之外的 token 所在的行,只用 LM
# head 部分也能通过——只抽查少数几个元素的检验可能漏掉这个 bug(768 个元素中只有 224 个带着它,即批次中 14 个 token
# 的那些行:快速模式抽 8 个,全部错过的概率为 $\binom{544}{8}/\binom{768}{8} \approx 6\%$),
# 所以这里把所有元素都检查了一遍。
#
# ## 5. 整个模型对照有限差分
#
# `check_function(loss_fn, arrays, grads)` *原地*扰动指定数组中的元素,调用 `loss_fn()`(一次完整的前向传播加损失),
# 再把元素精确还原,然后把中心差分与 `grads` 比较:
#
# $$\text{numeric} = \frac{L(\theta + h e_i) - L(\theta - h e_i)}{2h}, \qquad h = 10^{-5}, \qquad
# \text{error} = \frac{|\text{analytic} - \text{numeric}|}{\max(|\text{analytic}|, |\text{numeric}|, 10^{-3})}.$$
#
# 与 `check_op` 不同,这里的标量是模型真实的损失,所以内部每个算子收到的"上游梯度",是上面各层实际传下来的——而不是全 1。
# 损失在 4 附近时,舍入误差约为 $10^{-16}\,L/h \approx 4\cdot10^{-11}$,与下限 $10^{-3}$ 相比微不足道:
# 正确的反向传播得分低于 $10^{-7}$。

# %%
max_entries = pick(None, 8)                              # 正常模式:全部元素;快速模式:每个张量随机 8 个
report = check_function(loss_now, P, grads, max_entries=max_entries)
checked = sum(e.checked for e in report.entries)
print(report)
print(f"\n{checked:,} of {model.num_params():,} parameter entries checked, in {len(report.entries)} tensors")

# %% [markdown]
# **检验。** 每个张量都在容差之内;整个模型的最大误差低于 $10^{-6}$。

# %%
assert report.ok and report.max_error < 1e-6, report
print(f"worst error in the model: {report.max_error:.1e}")

# %% [markdown]
# 那为什么要用 float64:在 float32 下,差商的舍入误差约为 $10^{-7}\,L/h \approx 0.04$,和许多梯度本身一样大,所以
# `check_function` 直接拒绝 float32 数组:

# %%
model32 = model.to(dtype="float32")
try:
    check_function(lambda: model32.loss(ids, targets), model32.params,
                   model32.loss_and_grads(ids, targets)[1], max_entries=1)
    raise AssertionError("a float32 gradient check should have been refused")
except minift.MiniftError as e:
    print("refused:", e)

# %% [markdown]
# ## 要点回顾
#
# - `loss_and_grads` 就是前向传播的调用列表,后面接上同一列表的逆序;`model.record` 列出每个激活值及其梯度,形状相同,
#   计算顺序互为镜像。
# - 残差流的梯度恰好是跳连 + 分支;分支收到的,就是残差流上原封不动的梯度。
# - `wte` 的梯度 = LM head(全部 $V$ 行)+ 嵌入(批次中 token 所在的行);单独任何一部分都过不了有限差分检验。
# - 在每个被检查的元素上,整个模型的解析梯度与有限差分之差都小于 $10^{-6}$。
#
# 接下来,教程 04 用这套反向传播在 world 语料上预训练一个模型;教程 05–07 用它来微调。
#
# ## 练习
#
# 在 `my_...` 函数里写下你的答案,再运行其下方的检验单元格。在你动手之前,检验跑的是参考答案(在 Jupyter 中默认折叠)。
#
# **练习 1——最后一个块的残差。** 仿照第 3 节重建 `dh.0.in` 的做法,重建 `dh.1.in`(第 1 块输入端的梯度)。新的地方在于:
# 第 1 块*输出端*的梯度并不来自另一个块,而要通过 `ln_f` 的反向计算得到——把它作用在 `rec["dln_f"]`(`ln_f` 输出 $h$
# 的梯度)上,cache 取自 `layernorm_forward(rec["h.1.out"], P["ln_f.weight"], P["ln_f.bias"])`;顺便把结果与
# `rec["dh.1.out"]` 对比一下。

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
# 来冻结它们,返回一次 `loss_and_grads` 调用得到的梯度。检验会确认:被冻结的张量没有梯度(模型完全跳过了它们的反向计算),
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

# %% [markdown]
# **练习 3——不计损失的位置。** 在指令微调中(`facts` 任务:`minift/data/sources.py` 里的 `CompletionSource`),提示词的
# token 目标设为 `-100`:那里不计损失。返回 `targets` 的一个副本,把每个序列的前一半设为 `-100`。检验会验证:`dlogits`
# 中被掩码的行严格为零,其余的行不为零,而且模型的梯度仍能通过有限差分检验。

# %%
def my_mask_first_half(targets):
    """targets (B, T) -> a copy with targets[:, :T//2] = -100."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_mask_first_half(targets):
    masked = targets.copy()
    masked[:, : targets.shape[1] // 2] = -100
    return masked


# %%
def check_masked(answer):
    masked = answer(targets)
    assert masked is not targets and (targets != -100).all(), "return a copy; keep `targets` unchanged"
    _, g = model.loss_and_grads(ids, masked, record=True)
    row_norms = np.abs(model.record["dlogits"]).sum(-1)                       # (B, T)
    print("dlogits row norms, batch 0:", row_norms[0])
    assert not row_norms[:, : T // 2].any() and row_norms[:, T // 2:].all()
    rep = check_function(lambda: model.loss(ids, masked), P, g, max_entries=4)
    print(f"gradient check on {sum(e.checked for e in rep.entries)} entries: worst error {rep.max_error:.1e}")
    rep.assert_ok()


exercise("Exercise 3 (ignored positions)", check_masked, my_mask_first_half, solution_mask_first_half)
