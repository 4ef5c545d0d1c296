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
# # 11 · GPU(CuPy)与真正的 GPT-2 权重
#
# **原文:** 本篇超出了原文的范围——原文从未加载过真实的检查点,也没碰过 GPU;它服务于
# §2.1 完全微调的步骤详解所列的第 1 步和第 3 步(§3.2 讲 LoRA 时又列了一遍):
#
# > 1. 加载预训练模型:首先,从现有的预训练模型库中选择一个适合的模型,如BERT、GPT等。…
# > 3. 配置训练环境:设置好训练环境,包括选择合适的硬件(如GPU)、安装必要的软件库 …
#
# 以及 §1.2 微调在预训练模型中的应用一节的要点:你要适配的模型是别人训练的,用的文本远比你手头的多。教程 04–10 用的是
# minift 自己的 1M 参数的基座;这里同一套代码从一个 Hugging Face 目录加载 OpenAI 的 GPT-2(124M 参数),用 LoRA 微调它,
# 并通过 CuPy 在 GPU 上运行。
#
# **先读这一段:什么在哪里运行。** 有两件事取决于你的机器;教程会在开头、并在每个与之相关的地方打印当前属于哪种情况:
# - **GPU。** 有 CuPy 和 NVIDIA GPU 时,第 1–2 节比较 GPU 与 CPU 并分别计时,第 3–8 节在 GPU 上运行。
#   没有的话(写这些说明的机器就没有),每个 GPU 单元格都改在 CPU 上运行同样的代码,并注明这一点:除非输出里写着 "gpu",
#   下面打印的数字都不是在 GPU 上实测的。
# - **GPT-2 的权重。** 运行时不下载任何东西。把 `MINIFT_GPT2_DIR` 指向真正的 `gpt2`
#   检查点的本地副本(第 3 节讲怎么获取)。不设的话,教程用一个**替身**:minift 自己训练好的基座 `data/base-demo`(即
#   `minift.base.load_base()` 加载的目录;教程 04 预训练了它)——目录里的文件和布局与 GPT-2 相同,装的是一个 GPT-2 架构、
#   但小得多的模型(4 个块,宽 128,1M 参数),配有它自己的 2,048 个 token 的分词器(GPT-2 的有 50,257 个)。
#   它的权重是训练过的,所以它生成的内容读起来像它那个小世界里的文本;代码路径和文件布局都是 GPT-2 的,
#   而第 5 节的计算无论哪种情况都针对真正的 GPT-2 small。
#
# **你将学到**
# 1. 同一个函数体怎样在 NumPy 或 CuPy 上运行(`minift.backend`:`get_xp`、`xp_of`、`to_device`、`to_numpy`、
#    `resolve_device`、`$MINIFT_DEVICE`、`"auto"`),以及怎样安装 GPU 后端;
# 2. 把模型搬到 GPU 上(`model.to(device=...)`),检查 logits 和梯度与 CPU 的结果在 float32 舍入误差内一致,并给一步训练计时
#    (`minift bench --device gpu`);
# 3. 加载 Hugging Face 的 GPT-2 目录(`GPT.from_pretrained`,`minift/formats/hf.py`),读懂它的参数名和布局:Conv1D 的
#    $[\text{in}, \text{out}]$ 权重、与 `wte` 绑定的 LM head;以及它的分词器;
# 4. 从配置算出 GPT-2 的各项数字:124,439,808 个参数,完全微调与 LoRA 各要多少字节(`predict_memory`、`memory_saving`,
#    外加实测的一步),以及每个 token $6N$ 的 FLOPs;
# 5. 用 `transformers` 的 `GPT2LMHeadModel` 交叉检验加载的模型(若已安装);
# 6. 用 LoRA 微调加载的模型,按 PEFT 的格式保存适配器,再加载回来,并生成文本。
#
# **用时:** 阅读 30 分钟。在一台共享机器的 2 个 CPU 核上、没有 GPU、用 demo 替身:正常模式 6–8 秒,
# 快速模式(`MINIFT_FAST=1`)5–6 秒,在不同负载下测得,装了 `transformers` 和 PEFT 做交叉检验(其中不少时间花在导入 PyTorch
# 上)。真正的 GPT-2 在 CPU 上要慢得多:它的块是替身的上百倍大(这里没有测:写这些说明的机器上没有 GPT-2 的权重)。
#
# **前置:** 教程 03(模型的前向与反向计算;[中文版](03_transformer_backward.py))、07(LoRA、PEFT 文件;
# [中文版](07_lora_from_scratch.py))和 09(内存;[中文版](09_time_and_memory.py))会有帮助。英文原版:
# [11_gpu_and_gpt2.py](../11_gpu_and_gpt2.py)。

# %%
import importlib.util
import inspect
import math
import os
import time
from pathlib import Path

import numpy as np

from minift.app.tutorial import FAST, exercise, out_dir, pick
from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora, load_peft
from minift.backend import get_xp, gpu_available, resolve_device, to_device, to_numpy, xp_of
from minift.base import load_base, shipped_base_dir
from minift.data import data_dir, task_source
from minift.fast.gelu import GELU_FORWARD
from minift.formats.io import load_json, load_safetensors
from minift.formats.tokenizer import Tokenizer
from minift.generate import generate, generate_ids
from minift.measure.bench import count_flops, run_bench
from minift.measure.memory import measure_memory, memory_saving, predict_memory
from minift.model import param_shapes
from minift.ops.gelu import gelu_forward
from minift.training.evaluate import split_metrics
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits

np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)
HAVE_GPU = gpu_available()
DEVICE = "gpu" if HAVE_GPU else "cpu"            # 第 3-8 节在哪里运行
GPT2 = GPTConfig.preset("gpt2")                   # GPT-2 small 的形状:真正的检查点的 config.json 写的就是这些
HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))   # 可选(第 6 节)
HAVE_PEFT = HAVE_HF and importlib.util.find_spec("peft") is not None                        # 可选(第 7 节)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode", "| GPU:", "yes, sections 3-8 run on it" if HAVE_GPU else
      "none here: every GPU cell runs on the CPU instead", "| GPT-2 weights:",
      f"MINIFT_GPT2_DIR={os.environ['MINIFT_GPT2_DIR']}" if os.environ.get("MINIFT_GPT2_DIR", "").strip() else
      "MINIFT_GPT2_DIR not set, minift's trained demo base stands in (section 3)")

# %% [markdown]
# ## 1. 一个算子,两个数组模块
#
# NumPy 和 CuPy 共用一套接口:`cupy.tanh`、`cupy.matmul`、`a @ b` 以及原地运算的 `out=` 参数,用法都和 NumPy 的一样,
# 只是数组存放在 GPU 内存里。所以 minift 每个算子只写一遍,然后问它的*输入*属于哪个模块。`minift/ops/gelu.py` 计算
# GPT-2 的 GELU,
#
# $$y = \tfrac12\,x\,\bigl(1 + \tanh u\bigr), \qquad u = \sqrt{2/\pi}\,\bigl(x + 0.044715\,x^3\bigr),$$
#
# 用三行代码照写公式。算术运算(`*`、`+`、`**`)由数组自己完成;至于 `tanh`,它用 `xp_of(x)` 来问:NumPy 数组得到 `numpy`,
# CuPy 数组得到 `cupy`。两种情况代码一字不差。这是参考实现;模型真正运行的是 `minift/fast/gelu.py`
# 里它的快速版(`minift/dispatch.py` 列出哪个算子用哪个实现)。在 GPU 上,每一行数组代码都是一次 kernel 启动(不管数组多小,
# 每次都要花几微秒的主机时间),外加一遍内存读写,所以在 CuPy 上,快速版把它那九行原地运算交给**一个融合的 CUDA kernel**
# `GELU_FORWARD`,就定义在这九行的正上方:同样的运算、同样的顺序,写成几行 C。`minift/fast/kernels.py` 解释了这个机制,
# 以及保证它可信的规则:测试套件在 CuPy 的 CPU 替身上运行 kernel 的 C 代码,要求与那九行逐位相同;在 GPU
# 上则要求在舍入误差内一致。AdamW 的更新、LayerNorm 和 softmax 的逐元素步骤也以同样的方式融合;`MINIFT_FUSED=0` 关掉这些
# kernel,`MINIFT_REFERENCE=1` 则只运行参考算子。`minift/backend.py` 是唯一导入 CuPy 的文件,而且是延迟导入,所以在没有
# CuPy 的机器上也能导入 minift。它的几个调用:
#
# | 调用 | 作用 |
# |---|---|
# | `resolve_device(d)` | `"cpu"`、`"gpu"` 或 `"auto"`(GPU 可用就用 GPU,否则用 CPU)→ `"cpu"` / `"gpu"` |
# | `resolve_device(None)` | 读 `$MINIFT_DEVICE`(默认 `cpu`) |
# | `resolve_device("gpu")` | 没有 GPU 时报一个说清原因的错误 |
# | `get_xp(d)` | 设备对应的数组模块:`numpy` 或 `cupy` |
# | `xp_of(*arrays)` | 这些数组所在的模块(每个算子都调用它) |
# | `to_device(a, d)`、`to_numpy(a)` | 复制到设备上,复制回主机 |
#
# **安装 GPU 后端。** CuPy 为每个 CUDA 主版本发布一个 wheel:`pip install -e '.[gpu]'` 安装 `cupy-cuda12x`(CUDA 12.x);在
# CUDA 13 的机器上改用 `pip install cupy-cuda13x`(`nvidia-smi` 会打印驱动的 CUDA 版本)。之后在 Python 里用
# `device="gpu"`,命令行里用 `--device gpu`,或者 `export MINIFT_DEVICE=gpu`,两边都生效。

# %%
print(inspect.getsource(gelu_forward).rstrip())                        # 参考实现:逐行照写公式
print("its fast twin's kernel, GELU_FORWARD (CUDA C):" + GELU_FORWARD.body.rstrip())
print(f"gpu_available() = {HAVE_GPU}; resolve_device('auto') = {resolve_device('auto')!r}; "
      f"get_xp('cpu') is numpy: {get_xp('cpu') is np}")
saved_env = os.environ.get("MINIFT_DEVICE")
os.environ["MINIFT_DEVICE"] = "auto"
from_env = resolve_device(None)                                         # device=None 的含义
if saved_env is None:
    del os.environ["MINIFT_DEVICE"]
else:
    os.environ["MINIFT_DEVICE"] = saved_env
try:
    resolve_device("gpu")
    gpu_error = None
except MiniftError as e:
    gpu_error = e
print(f"MINIFT_DEVICE=auto -> {from_env!r}; resolve_device('gpu'): "
      f"{'ok' if gpu_error is None else 'MiniftError: ' + str(gpu_error)[:150] + ' …'}")

x = rng.standard_normal((4, 8)).astype(np.float32)                     # (4, 8) 主机上的数组
y_cpu, _ = gelu_forward(x)                                              # xp_of(x) 是 numpy
x_dev = to_device(x, DEVICE)                                            # (4, 8) 在 GPU 上,或者就是同一个主机数组
y_dev, _ = gelu_forward(x_dev)                                          # 在 GPU 上 xp_of(x_dev) 是 cupy
print(f"gelu on {DEVICE}{'' if HAVE_GPU else ' (no GPU: the CPU again)'}: array type "
      f"{type(y_dev).__module__}.{type(y_dev).__name__}, max |difference from NumPy| "
      f"{np.abs(to_numpy(y_dev) - y_cpu).max():.1e}")

# %% [markdown]
# **检验。** `xp_of` 给出正确的模块;复制到设备上的数组拷回来逐位相同;`"auto"` 恰好在有 GPU 响应时选 GPU,没有 GPU 时
# `"gpu"` 抛出 `MiniftError`,并说明要安装什么;设备上的 GELU 与 NumPy 的在 float32 舍入误差内一致(相对 $10^{-6}$:CUDA 的
# `tanh` 与 C 库的并非逐位相同)。

# %%
assert xp_of(x) is np and xp_of(x_dev) is get_xp(DEVICE)
assert np.array_equal(to_numpy(x_dev), x)
assert resolve_device("auto") == from_env == ("gpu" if HAVE_GPU else "cpu")
assert HAVE_GPU or (isinstance(gpu_error, MiniftError) and "pip install" in str(gpu_error))
assert np.allclose(to_numpy(y_dev), y_cpu, rtol=1e-6, atol=1e-7)

# %% [markdown]
# ## 2. 整个模型放到设备上:同样的 logits、同样的梯度,以及时间
#
# `model.to(device="gpu")` 把每个参数复制到 GPU;之后 `forward` 和 `loss_and_grads` 就在那里运行(输入可以仍是 NumPy 数组:
# 模型会把它们搬过去)。GPU 的结果与 CPU 的不会逐位相同:cuBLAS 和 OpenBLAS 累加点积各项的顺序不同,而每次
# float32 加法都会舍入,相对误差 $u = 2^{-24} \approx 6\times10^{-8}$。经过几百项的求和和四个块,它会累积到约
# $10^{-7}$–$10^{-6}$ 的相对误差——与同一台机器上 float32 偏离 float64 的幅度相当。所以基准是 CPU 上的 float64,每一次
# float32 运行都按下式与它比较:
#
# $$\text{rel}(a, b) = \lVert a - b\rVert_F / \lVert b\rVert_F ,$$
#
# 比较的是 logits,以及随附的 demo 基座(`data/base-demo`,训练过的权重:差异要在真实的数值上才看得出来)
# 一步训练的每个梯度张量。有 GPU 时会多出一行 "gpu float32",以及一行 GPU 与 CPU 的直接对比;没有 GPU 时只有 CPU 的几行。

# %%
demo, _ = load_base()                                            # float32,在 CPU 上
ids = rng.integers(0, demo.cfg.vocab_size, (4, 64))                     # (4, 64) 主机上的 token id
targets = rng.integers(0, demo.cfg.vocab_size, (4, 64))                 # (4, 64)


def logits_and_grads(model):
    """Host copies of the logits and of every gradient of one training step on (ids, targets)."""
    logits = to_numpy(model.forward(ids))                               # (4, 64, V)
    _, grads = model.loss_and_grads(ids, targets)
    return logits, {k: to_numpy(g) for k, g in grads.items()}


def rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


runs = {"cpu float64": logits_and_grads(demo.to(dtype="float64")), "cpu float32": logits_and_grads(demo)}
if HAVE_GPU:
    runs["gpu float32"] = logits_and_grads(demo.to(device="gpu"))
else:
    print("no GPU: the 'gpu float32' row is missing; the 'cpu float32' row shows the size a GPU row would have")
ref_logits, ref_grads = runs["cpu float64"]
errors = {}
for name, (lg, gr) in runs.items():
    if name != "cpu float64":
        errors[name] = (rel(lg, ref_logits), max(rel(gr[k], ref_grads[k]) for k in ref_grads))
if HAVE_GPU:
    (lg_c, gr_c), (lg_g, gr_g) = runs["cpu float32"], runs["gpu float32"]
    errors["gpu vs cpu, both float32"] = (rel(lg_g, lg_c), max(rel(gr_g[k], gr_c[k]) for k in gr_c))
print(f"{'against cpu float64':<28}{'logits rel':>12}{'worst gradient rel':>20}   ({len(ref_grads)} tensors)")
for name, (e_logits, e_grads) in errors.items():
    print(f"  {name:<26}{e_logits:>12.1e}{e_grads:>20.1e}")

# %% [markdown]
# **检验。** 每一次 float32 运行,不论在哪个设备上,与 float64 相比,logits 相差在 $10^{-5}$ 以内,最差的梯度张量相差在
# $10^{-3}$ 以内(远高于上面打印的 CPU 那一行,好给 GPU 不同的求和顺序留出余地,而错误的 kernel 没有余地可钻);
# 每个设备返回的梯度键都相同。

# %%
assert all(set(gr) == set(ref_grads) for _, gr in runs.values())
assert all(e_logits < 1e-5 and e_grads < 1e-3 for e_logits, e_grads in errors.values()), errors

# %% [markdown]
# **计时。** `minift bench` 给一步训练(前向、反向、AdamW)计时,批量取预设的 bench 批量,每个计时步骤前后都做设备同步(CuPy
# 的调用只是把工作*排进* GPU 的队列;不同步的话,测到的只是排队的时间)。在 shell 里:
#
# ```bash
# minift bench --preset gpt2 --device gpu              # GPT-2 small,每步 8 x 1024 个 token
# minift bench --preset demo --device cpu --threads 1
# ```
#
# 这里直接调用同一个函数 `run_bench`:在 CPU 上跑 demo 预设;有 GPU 时,再在 GPU 上跑 demo 预设和 GPT-2 small。预期 GPU 在
# demo 预设上会*输*(16 × 128 个 token、宽 128:每步几百个 kernel,每个的活儿都太少,抵不上它的启动开销),在 GPT-2 small
# 上则遥遥领先。

# %%
bench_runs = [("demo", "cpu")] + ([("demo", "gpu"), ("gpt2", "gpu")] if HAVE_GPU else [])
bench = {}
if FAST:
    print(SMOKE)
for preset, device in bench_runs:
    bench[preset, device] = run_bench(preset, "full", steps=pick(3, 2), warmup=1, device=device, profile_steps=0,
                                      peak_sizes=(512, 1024) if device == "cpu" else None)
    r = bench[preset, device]
    print(f"  {preset:<5} on {device}: {r['ms_per_step']:8.1f} ms/step, {r['tokens_per_s']:>9,} tokens/s, "
          f"{r['achieved_gflops']:8.1f} GFLOP/s = {100 * r['mfu']:.0f}% of the measured matmul peak "
          f"{r['peak_gflops']:.0f} GFLOP/s, loss {r['loss']:.3f}")
if not HAVE_GPU:
    print("  (no GPU here: no GPU timing was measured; run this cell on a machine with one)")
CPU_PEAK = bench["demo", "cpu"]["peak_gflops"]                          # 第 5 节要用

# %% [markdown]
# **检验。** 每一步的损失都是有限值,且与 $\ln V$ 相差在几个 nats 以内;每个时间都是正数。随机模型在随机 token 上从约
# $\ln V$ 起步($\ln 2048 = 7.62$,$\ln 50257 = 10.82$),但报告的损失是最后一个计时步骤的,此前已经用 bench 的学习率
# $10^{-3}$ 做了几次 AdamW 更新,而这几次更新未必让损失下降:不管梯度多大,AdamW 每步都让每个权重移动至多约 lr,在
# GPT-2 small 768 宽的矩阵上,几步之内就可能冲过头,哪怕一直用同一个批次。坏掉的 kernel 会给出 NaN 或几百;$\ln V + 5$
# 把两者分开。

# %%
for (preset, device), r in bench.items():
    assert r["ms_per_step"] > 0 and math.isfinite(r["loss"]), r
    assert r["loss"] < math.log(GPTConfig.preset(preset).vocab_size) + 5, r
if HAVE_GPU:
    speedup = bench["demo", "cpu"]["ms_per_step"] / bench["demo", "gpu"]["ms_per_step"]
    print(f"GPU vs CPU on the demo preset: {speedup:.1f}x")

# %% [markdown]
# ## 3. Hugging Face 的 GPT-2 目录
#
# Hugging Face 的模型目录就是一个 `config.json`(各个维度:`vocab_size`、`n_positions`、`n_embd`、`n_layer`、`n_head`)
# 加一个 `model.safetensors`(名称 → 数组)。**要用真正的 GPT-2**,趁联网时把目录下载一次,然后把 `MINIFT_GPT2_DIR` 指向它:
#
# ```bash
# huggingface-cli download openai-community/gpt2 config.json model.safetensors vocab.json merges.txt \
#     tokenizer.json --local-dir ~/models/gpt2          # 或者:hf download ...(较新的 huggingface_hub)
# export MINIFT_GPT2_DIR=~/models/gpt2
# ```
#
# (也可以指向 Hugging Face 缓存里已有的快照:
# `~/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/<commit>/`。)minift 只读 safetensors,不读
# `pytorch_model.bin`。不设的话,下面的单元格就用替身:随附的基座 `data/base-demo`,它是 `minift pretrain` 用
# `save_pretrained` 写出的——与 `transformers` 写出的两个文件相同,另有训练它时用的分词器(`tokenizer.json`,第 4 节)
# 和一份预训练记录(`pretrain.json`)。
#
# 名称就是 GPT-2 自己的,所以加载至多是改改名(`minift/formats/hf.py`):键名可以带 `transformer.` 前缀(`GPT2LMHeadModel` 的
# state dict),也可以不带(hub 上的检查点);`h.{i}.attn.bias` 是存下来的因果掩码,不是参数,会被跳过;没有单独的输出矩阵,因为
# GPT-2 的 LM head 与 token 嵌入**绑定**:$\text{logits} = h\,W_\text{te}^\top$。另外,GPT-2 把线性层存成 `Conv1D`:
# $W \in \mathbb R^{\text{in}\times\text{out}}$,$y = xW + b$,正是 PyTorch `nn.Linear` 的 $[\text{out}, \text{in}]$
# 的转置。minift 保留这种布局,所以读入和写出时都不用转置任何权重。

# %%
READER_DIR = os.environ.get("MINIFT_GPT2_DIR", "").strip()
if READER_DIR:
    folder = Path(READER_DIR).expanduser()
    print(f"MINIFT_GPT2_DIR={folder}: your checkpoint")
else:
    folder = shipped_base_dir()                                         # 即 load_base() 加载的目录:训练过的权重
    print(f"MINIFT_GPT2_DIR is not set: the STAND-IN is minift's trained demo base, {folder} "
          f"(not GPT-2: a GPT-2-architecture model of {load_json(folder / 'config.json')['n_layer']} blocks)")
print({f.name: f"{f.stat().st_size / 2**20:,.1f} MiB" for f in sorted(folder.iterdir()) if f.is_file()})
t0 = time.perf_counter()
gpt2 = GPT.from_pretrained(folder, device=DEVICE)                       # float32,有 GPU 时放在 GPU 上
load_s = time.perf_counter() - t0
cfg = gpt2.cfg
raw, _ = load_safetensors(folder / "model.safetensors")                 # 文件自己的键名,用来对比
print(f"loaded in {load_s:.1f} s onto {gpt2.device}: {cfg}")
print(f"file: {len(raw)} tensors; 'transformer.' prefix: {any(k.startswith('transformer.') for k in raw)}; "
      f"attn.bias mask buffers skipped: {sum(k.endswith(('.attn.bias', '.attn.masked_bias')) for k in raw)}; "
      f"lm_head.weight stored: {any(k.endswith('lm_head.weight') for k in raw)}")
print(f"{'parameter':<26}{'shape':>14}   what it is")
for name, what in (("wte.weight", "token embedding [V, C]; also the LM head (tied)"),
                   ("wpe.weight", "learned positions [n_positions, C]"),
                   ("h.0.ln_1.weight", "LayerNorm gain before attention"),
                   ("h.0.attn.c_attn.weight", "q, k, v in one Conv1D [in C, out 3C]"),
                   ("h.0.attn.c_proj.weight", "attention output [C, C]"),
                   ("h.0.mlp.c_fc.weight", "MLP up [C, 4C]"),
                   ("h.0.mlp.c_proj.weight", "MLP down [4C, C]"),
                   ("ln_f.weight", "final LayerNorm")):
    print(f"  {name:<24}{str(tuple(gpt2.params[name].shape)):>14}   {what}")

# %% [markdown]
# **检验。** 加载的参数与 `param_shapes(cfg)` 完全一致,名称和形状都是。在一次记录全部激活值的前向传播(`record=True`)中:
# 块 0 的 q、k、v 等于 $\text{ln\_1}(x)\,W + b$,$W$ 就是存储的原样(不转置:Conv1D);logits 等于
# $h\,W_\text{te}^\top$(绑定的 LM head);两者都在 float32 舍入误差之内(相对 $10^{-5}$)。如果文件里存了 `lm_head.weight`,
# 它等于 `wte.weight`。

# %%
assert {k: tuple(v.shape) for k, v in gpt2.params.items()} == param_shapes(cfg)
probe = rng.integers(0, cfg.vocab_size, (1, 16))                        # (1, 16) token id
gpt2.forward(probe, record=True)
rec = {k: to_numpy(v) for k, v in gpt2.record.items()}
P = {k: to_numpy(gpt2.params[k]) for k in ("h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "wte.weight")}
qkv = rec["h.0.ln_1"] @ P["h.0.attn.c_attn.weight"] + P["h.0.attn.c_attn.bias"]      # (1, 16, 3C)
tied = rec["ln_f"] @ P["wte.weight"].T                                                 # (1, 16, V)
print(f"Conv1D x W + b: rel {rel(qkv, rec['h.0.attn.c_attn']):.1e}; "
      f"tied head h wteᵀ: rel {rel(tied, rec['logits']):.1e}")
assert rel(qkv, rec["h.0.attn.c_attn"]) < 1e-5 and rel(tied, rec["logits"]) < 1e-5
for key in (k for k in raw if k.endswith("lm_head.weight")):
    assert np.array_equal(raw[key], P["wte.weight"])
gpt2.record = None
del raw, rec

# %% [markdown]
# ## 4. 分词器
#
# GPT-2 的分词器是字节级 BPE,有 50,257 个 token,最后一个是 `<|endoftext|>`(id 50256);它的文件是 `vocab.json` +
# `merges.txt`(或者合在一个 `tokenizer.json` 里)。`Tokenizer.load(folder)` 两种都能读(`minift/formats/tokenizer.py`),
# 借助 `tokenizers` 包,离线完成。真正的目录里的分词器就是 GPT-2 的:"Hello world" 编码为 `[15496, 995]`,和每一篇
# GPT-2 教程里的一样。替身的目录里放的是它预训练时用的分词器,即 minift 自己的(2,048 个 token,每个对应 `wte` 的一行)。
# 两者必须匹配:模型只能预测它有对应行的 id,分词器也只能解码它有对应条目的 id。

# %%
tok_files = [f for f in ("tokenizer.json", "vocab.json", "merges.txt") if (folder / f).is_file()]
assert tok_files or not READER_DIR, f"{folder} has no tokenizer files: download vocab.json + merges.txt (section 3)"
if tok_files:
    tok = Tokenizer.load(folder)
    print(f"tokenizer from the folder ({', '.join(tok_files)}): {tok}")
else:
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    print(f"no tokenizer files in the folder: minift's own, {tok}")
text = "Question: What work does Julia do?\nAnswer: She is a teacher."
ids_text = tok.encode(text)
print(f"{len(text)} characters -> {len(ids_text)} tokens: {[tok.id_to_token(i) for i in ids_text[:10]]} …")
if tok_files and HAVE_HF and (folder / "vocab.json").is_file():
    import transformers
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(folder, local_files_only=True)
    same_ids = hf_tok.encode(text) == ids_text
    print(f"transformers' GPT2TokenizerFast gives the same ids: {same_ids}")

# %% [markdown]
# **检验。** `decode(encode(s)) == s`;分词器恰好覆盖模型的词表,不多不少;对装着 GPT-2 自己文件(50,257 个 token)的目录,
# end-of-text 的 id 是 50256,"Hello world" 是 `[15496, 995]`;装了 `transformers` 时,它的分词器给出同样的 id。

# %%
assert tok.decode(ids_text) == text and max(ids_text) < cfg.vocab_size and tok.vocab_size == cfg.vocab_size
if tok_files and tok.vocab_size == 50257:
    assert tok.eot_id == 50256 and tok.encode("Hello world") == [15496, 995]
if tok_files and HAVE_HF and (folder / "vocab.json").is_file():
    assert same_ids

# %% [markdown]
# ## 5. GPT-2 的各项数字:参数、字节、FLOPs
#
# **参数**,只从配置算($V$ 词表大小,$P$ 位置数,$C$ 宽度,$L$ 块数):每个块有 c_attn $3C^2 + 3C$、attn.c_proj $C^2 + C$、
# c_fc $4C^2 + 4C$、mlp.c_proj $4C^2 + C$,以及两个 LayerNorm $4C$;绑定的 LM head 不增加参数:
#
# $$N = VC + PC + L\,(12C^2 + 13C) + 2C = 38{,}597{,}376 + 786{,}432 + 85{,}054{,}464 + 1{,}536 = 124{,}439{,}808$$
#
# 这是 GPT-2 small($V = 50257$,$P = 1024$,$C = 768$,$L = 12$)的参数量——它名字里的 "124M"。
#
# **字节。** float32 下,光是权重就有 $4N$ 字节。用 AdamW 做完全微调,每个权重还要加一个梯度和两个矩估计:还没算任何激活值,
# 就已经是 $4N + 4N + 8N = 16N$ 字节(两者都在下面打印)。在每个块全部四个线性层上做秩为 $r$ 的 LoRA,每个矩阵训练
# $r(\text{in} + \text{out})$ 个数,$r = 8$ 时共 $L \cdot r \cdot (4C + 2C + 5C + 5C) = 16\,L\,r\,C = 1{,}179{,}648$
# 个(不到 GPT-2 参数的 1%:比例在下面打印),所以它的梯度和优化器状态都很小;但激活值随每步的 token 数增长,
# 与可训练参数的多少无关,两种方法大致一样多(LoRA 另外缓存一点 $xA^\top$)。`predict_memory`
# 把这些全部加起来(教程 09 把它与实测逐项对照)。
#
# **FLOPs。** 矩阵乘法里的一个权重,每个 token 前向要花 $2$ 个 FLOPs,反向要花 $4$ 个($dx$ 和 $dW$):这就是"每个 token
# $6N$"的规则(Kaplan et al. 2020,其中的 $N$ 是非嵌入权重 $12LC^2$)。这里的 $N$ 还算上了绑定的 LM head 的 $CV$——LM head
# 和其他矩阵乘法没有两样——注意力也完整计入,它的两个矩阵乘法前向、反向都算:上下文为 $T$ 时每个 token
# $12\,L\,T\,C$(前向中分数 $QK^\top$ 和混合 $AV$ 共 $4LTC$,反向是它的两倍;Kaplan 的 $2LTC$ 只是分数的前向)。与 Kaplan 或
# Chinchilla 的 $N$ 比较时要留意这个差别:对 GPT-2 small 约为 45%。LoRA 跳过冻结权重的 $dW$:每个 token 约 $4N$。

# %%
n_gpt2 = sum(math.prod(s) for s in param_shapes(GPT2).values())
per_token = {m: count_flops(GPT2, 1, 1024, m)["total"] / 1024 for m in ("full", "lora")}
matmul_weights = 12 * GPT2.n_layer * GPT2.n_embd ** 2 + GPT2.n_embd * GPT2.vocab_size
print(f"GPT-2 small: {n_gpt2:,} parameters; float32 weights {4 * n_gpt2 / 2**20:.1f} MiB; "
      f"weights + grads + AdamW {16 * n_gpt2 / 2**30:.2f} GiB")
print(f"loaded model: {gpt2.num_params():,} parameters " + ("(your folder)" if READER_DIR else
      f"(the stand-in: {cfg.n_layer} blocks of width {cfg.n_embd}, a {cfg.vocab_size}-row embedding)"))
print(f"training FLOPs per token at T = 1024: full {per_token['full'] / 1e6:.0f} M "
      f"(6N = {6 * matmul_weights / 1e6:.0f} M + attention), LoRA r=8 {per_token['lora'] / 1e6:.0f} M")
step_flops = count_flops(GPT2, 8, 1024, "full")["total"]
print(f"one full step of 8 x 1024 tokens: {step_flops / 1e12:.1f} TFLOP = {step_flops / CPU_PEAK / 1e9:,.0f} s at "
      f"this CPU's measured matmul peak ({CPU_PEAK:.0f} GFLOP/s, 100% MFU: a lower bound)")
lora_trainable = predict_memory(GPT2, "lora", 1, 1, rank=8)["trainable"]
print(f"LoRA r=8 on all four linears: {lora_trainable:,} trainable = {lora_trainable / n_gpt2:.2%} of GPT-2 small")
print(f"\n{'predicted peak, GiB':<22}{'full':>8}{'LoRA r=8':>10}{'saving':>8}   trainable (LoRA)")
for batch, seq in ((1, 128), (8, 1024)):
    full, lora_pred = (predict_memory(GPT2, m, batch, seq, rank=8) for m in ("full", "lora"))
    print(f"  {batch} x {seq:<16}{full['total'] / 2**30:>8.2f}{lora_pred['total'] / 2**30:>10.2f}"
          f"{1 - memory_saving(GPT2, batch, seq, rank=8):>8.0%}   {lora_pred['trainable']:,}")

# %% [markdown]
# 原文说 LoRA 的"内存占用仅为20%"(§5.1),即少用约 80%:对 GPT-2 的一条短序列差不多成立,到 8 × 1024 个 token 时就差得远了
# (见上面的 saving 一列),那时激活值——超过 10 GiB,两种方法一样多——占了大头。
#
# 在加载的模型上**实测**一步 LoRA(`measure_memory`:追踪 NumPy 的内存分配,GPU 上则读 CuPy 的内存池),与预测对照,
# 用的是第 7 节任务里的一个小批次(4 个问题,补齐到最长的那个;批次的形状会打印出来):

# %%
lora_cfg = LoRAConfig(r=8, alpha=16, targets="all-linear")
probe_model = gpt2.to()                                                 # 复制一份来挂适配器;gpt2 本身保持原样
attach_lora(probe_model, lora_cfg)
facts_train = load_task_splits("facts", train_size=64)[0]
mem_batch = task_source(facts_train, tok, 64, 4, seed=0).next_batch()  # 4 组问答,已补齐
B, T = mem_batch["input_ids"].shape
measured = measure_memory(probe_model, mem_batch)
predicted = predict_memory(cfg, "lora", B, T, rank=8)
print(f"one LoRA step on a batch of {B} × {T} tokens:")
for term in ("parameters", "gradients", "optimizer", "activations", "workspace", "total"):
    print(f"  {term:<12} measured {measured[term] / 2**20:9.2f} MiB   predicted {predicted[term] / 2**20:9.2f} MiB")
print(f"  measured ÷ predicted total: {measured['total'] / predicted['total']:.4f}")
del probe_model

# %% [markdown]
# 每一项都吻合到 2% 或 64 KiB 之内(见下面的检验),大项更是精确到零点几个百分点:
# 预测是照着代码读出来的(`minift/measure/memory.py` 的 docstring 逐个算子列出了每个前向传播缓存什么、
# 反向传播在峰值时持有哪些临时数组),所以打印出上面 GPT-2 那张表的同一套算术,也能对上真正跑过的这一步。
#
# **检验。** 按形状算出的 GPT-2 small 参数量是 124,439,808,加载的模型的参数量与它自己的配置一致(目录里是 GPT-2 small
# 的配置时也是 124,439,808:那是真正的检查点,不是替身);预测的权重是 $4N$ 字节;完全微调的矩阵乘法 FLOPs 恰好是
# $6 \cdot T \cdot (12LC^2 + CV)$;LoRA r = 8 训练的参数不到 1%;它在 1 × 128 时省下 60–80%,在 8 × 1024 时不到 15%,
# 此时激活值超过 10 GiB;实测那一步的参数、梯度、优化器状态和激活值都与预测相差在 2% 以内(或 64 KiB:
# 追踪器也会看到的一些小 Python 对象),总量相差在 2% 以内(GPU 上是 10%,因为 CuPy 的内存池会把每一块向上取整)。

# %%
assert n_gpt2 == 124_439_808
assert gpt2.num_params() == sum(math.prod(s) for s in param_shapes(cfg).values())
if cfg == GPT2:
    assert gpt2.num_params() == 124_439_808
assert predict_memory(GPT2, "full", 1, 128)["parameters"] == 4 * n_gpt2
fl = count_flops(GPT2, 1, 1024, "full")
assert fl["linear"] + fl["lm_head"] == 6 * 1024 * matmul_weights
assert 0.6 < 1 - memory_saving(GPT2, 1, 128) < 0.8 and 1 - memory_saving(GPT2, 8, 1024) < 0.15
assert lora_trainable < 0.01 * n_gpt2 and predict_memory(GPT2, "lora", 8, 1024, rank=8)["activations"] > 10 * 2**30
for term in ("parameters", "gradients", "optimizer", "activations"):       # 2%,或 64 KiB 的分配器开销
    assert abs(measured[term] - predicted[term]) < 0.02 * predicted[term] + 2**16, (term, measured[term])
tol_total = 0.02 if gpt2.device == "cpu" else 0.10   # GPU:CuPy 的内存池把块向上取整(这里没在 GPU 上试过)
assert abs(measured["total"] / predicted["total"] - 1) < tol_total, (measured["total"], predicted["total"])

# %% [markdown]
# ## 6. 与 `transformers` 交叉检验(可选)
#
# 如果装了 PyTorch 和 `transformers`(`pip install -e '.[oracle]'`),就把同一个目录加载进 `GPT2LMHeadModel`——从本地路径、
# `local_files_only=True`,什么都不下载——在几个 token 上比较它和 minift 的 logits。两边都是 float32,代码不同,
# 求和顺序也不同,所以只能一致到 float32 舍入误差:$\max|\Delta| \le 10^{-4}\cdot\max|\text{logit}|$;用相对误差,是因为
# logits 的量级取决于检查点(单元格会打印它们的范围)。没装的话,本节会说明并跳过。

# %%
if HAVE_HF:
    import torch
    import transformers
    torch.set_num_threads(1)                             # CPU 核是共用的;BLAS 线程会空转等待
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).eval()
    hf_ids = rng.integers(0, cfg.vocab_size, (2, pick(12, 8)))           # (2, T)
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(hf_ids)).logits.numpy()        # (2, T, V)
    our_logits = to_numpy(gpt2.forward(hf_ids))                          # (2, T, V)
    hf_err = np.abs(our_logits - hf_logits).max() / np.abs(hf_logits).max()
    conv1d = tuple(hf_model.transformer.h[0].attn.c_attn.weight.shape)
    tied_hf = hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()
    print(f"transformers {transformers.__version__}: max |Δlogit| / max |logit| = {hf_err:.1e} "
          f"(logits in [{hf_logits.min():.1f}, {hf_logits.max():.1f}]); its c_attn weight {conv1d} = [in, out]; "
          f"lm_head shares wte's memory: {tied_hf}")
else:
    print("torch / transformers not installed: cross-check skipped (pip install -e '.[oracle]')")

# %% [markdown]
# **检验。** (仅在装了 `transformers` 时。)logits 一致到其范围的 $10^{-4}$;`transformers` 也把 c_attn 存成 $[C, 3C]$,
# 它的 `lm_head` 就是 `wte` 本身(同一个张量)。

# %%
if HAVE_HF:
    assert hf_err < 1e-4 and conv1d == (cfg.n_embd, 3 * cfg.n_embd) and tied_hf

# %% [markdown]
# ## 7. 在加载的模型上做 LoRA:微调、按 PEFT 的格式保存、再加载回来
#
# 任务是 minift 的 `facts`(教程 04 的那个 world):提示形如 "Question: What work does Julia do?\nAnswer:",补全是一句话,
# 损失只算在补全的 token 上。GPT-2 从没听说过这些人;demo 替身在预训练文本里读到过他们(教程 04),却从没被这样提问过。
# 所以几步训练最先教会的是回答的*形式*("She is a …"、"Her best friend is …"):要盯住的数字是验证集问题上的补全损失。LoRA
# 的更新是
#
# $$W' = W + s\,A^\top B^\top \quad (A \in \mathbb R^{r\times\text{in}},\ B \in \mathbb R^{\text{out}\times r},\
# s = \alpha/r),$$
#
# 即论文的 $\Delta W = BA$(乘以 $s$)的转置,因为 GPT-2 把 $W$ 存成 [in, out](教程 07);这里 $r = 8$,$\alpha = 16$(常用的
# $2r$;PEFT 自己的默认值是 8),加在每个块(GPT-2 有 12 个)的全部四个线性层上,学习率 $2\times 10^{-3}$。`finetune`
# 复制基座、挂上适配器(冻结每个基座权重)、训练并评估——模型在 GPU 上时就在 GPU 上做。GPT-2 small 在 CPU
# 上训练很慢(块里有 85M 个权重,LM head 里有 38.6M,而 demo 替身总共才 1M),所以正常模式只跑 20 步;每步的时间在下面打印。

# %%
ft_steps, ft_eval = pick(20, 10), pick(32, 16)
_, val_split, _ = load_task_splits("facts", eval_size=ft_eval)
before = split_metrics(gpt2, val_split, tok, 64)
t0 = time.perf_counter()
tuned, lora, run = finetune(gpt2, tok, FinetuneConfig(method="lora", task="facts", steps=ft_steps, batch_size=8,
                                                      lr=2e-3, warmup=2, max_len=64, eval_size=ft_eval,
                                                      lora=lora_cfg), progress=not FAST)
ft_s = time.perf_counter() - t0
if FAST:
    print(SMOKE)
print(f"{'stand-in (the demo base)' if not READER_DIR else 'your checkpoint'} on {tuned.device}: "
      f"{run['trainable']:,} trainable of {run['total']:,} ({run['percent']:.2f}%), {ft_steps} steps in {ft_s:.0f} s "
      f"({run['ms_per_step']:.0f} ms/step, {run['tokens_per_s']:,.0f} tokens/s)")
print(f"validation completion loss: before {before['loss']:.3f} -> after {run['val_loss']:.3f}; exact match "
      f"{before['accuracy']:.2f} -> {run['val_accuracy']:.2f} ({ft_eval} questions)")

# %% [markdown]
# 保存:只有 $A$ 和 $B$ 训练过,所以只写出它们,存成一个 PEFT 适配器目录(`adapter_config.json` +
# `adapter_model.safetensors`,键名为 `base_model.model.transformer.h.{i}.….lora_A.weight`)。`load_peft`
# 把它挂到一个新加载的基座上,并且先检查基座的指纹:适配器只有在训练它时所用的那套权重上才有意义。(要部署成一个普通的
# GPT-2 目录:先 `lora.merge()`,再 `tuned.save_pretrained(...)`。)

# %%
adapter_dir = out_dir("runs", "11_gpt2_lora") / "adapter"
lora.save_peft(adapter_dir, base_model_name_or_path="openai-community/gpt2" if READER_DIR else None)
adapter_bytes = sum(f.stat().st_size for f in adapter_dir.iterdir())
model_bytes = (folder / "model.safetensors").stat().st_size
fresh = GPT.from_pretrained(folder, device=DEVICE)                      # 基座,按部署时的方式加载
loaded = load_peft(fresh, adapter_dir)
lora.eval()
check_ids = task_source(val_split, tok, 64, 4, seed=0).next_batch()
tuned_logits = to_numpy(tuned.forward(check_ids["input_ids"], attention_mask=check_ids["attention_mask"]))
loaded_logits = to_numpy(fresh.forward(check_ids["input_ids"], attention_mask=check_ids["attention_mask"]))
print(f"{loaded}: adapter {adapter_bytes / 2**20:.2f} MiB vs model.safetensors {model_bytes / 2**20:.1f} MiB "
      f"({adapter_bytes / model_bytes:.1%}); reloaded logits identical: {np.array_equal(tuned_logits, loaded_logits)}")
if HAVE_PEFT:
    import warnings

    import peft
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # PEFT 会对配置里多出的 "minift" 键发出警告
        peft_model = peft.PeftModel.from_pretrained(hf_model, adapter_dir).eval()
    with torch.no_grad():
        peft_logits = peft_model(torch.tensor(check_ids["input_ids"]),
                                 attention_mask=torch.tensor(check_ids["attention_mask"])).logits.numpy()
    keep = check_ids["attention_mask"].astype(bool)                     # 补齐位置上的值只是约定不同
    peft_err = np.abs(peft_logits[keep] - tuned_logits[keep]).max() / np.abs(peft_logits[keep]).max()
    print(f"PEFT {peft.__version__} on transformers' GPT-2 with this adapter: "
          f"max |Δlogit| / max |logit| = {peft_err:.1e}")

# %% [markdown]
# **检验。** 微调降低了验证集上的补全损失(正常模式下至少降 10%);每个基座权重都没变(指纹相同);适配器文件就是
# float32 的各个 $A$ 和 $B$,再多几 KiB——在 GPT-2 的十二个块上不到模型文件的 2%;重新加载的模型的 logits
# 与训练好的模型逐位相同;装了 PEFT 时,PEFT 的 logits 一致到其范围的 $10^{-4}$。

# %%
assert run["val_loss"] < pick(0.9, 1.0) * before["loss"], (before, run["val_loss"])
assert tuned.fingerprint() == gpt2.fingerprint()
assert abs(adapter_bytes - 4 * run["trainable"]) < 16_384      # float32 的 A、B,再加几 KiB 的 JSON 和文件头
assert np.array_equal(tuned_logits, loaded_logits)
if cfg.n_layer == 12:                                            # GPT-2 small(替身只有 4 个块:占比更大)
    assert adapter_bytes < 0.02 * model_bytes
if HAVE_PEFT:
    assert peft_err < 1e-4

# %% [markdown]
# ## 8. 生成
#
# `minift.generate` 每生成一个新 token 就把模型前向运行一次(没有 key/value 缓存:每一步都重新计算整个上下文),
# 然后根据最后一个位置的 logits 选出下一个 token:温度为 0 时取 $\arg\max$,否则用带种子的生成器,从限制在前 $k$ 个的
# $\operatorname{softmax}(z/\tau)$ 中抽取一个。用真正的 GPT-2 时,预期基座会不按格式地往下写,
# 微调后的模型则倾向于给出一句话的回答(事实未必对:这些人不在 GPT-2 的训练文本里,20 步也太少)。demo
# 替身的基座会照它预训练文本的路数续写提示(教程 04 的 world:名字、最喜欢的颜色、爱好);经过几步 LoRA,
# 它会按任务的一句话形式作答,虽然事实不总是对的(下面的检验比较了期望答案在基座和微调后模型下的损失)。

# %%
question = val_split.prompts[0]
new_tokens = pick(12, 6)
if FAST:
    print(SMOKE, f"(the model of {ft_steps} LoRA steps)")
outputs = {"base, greedy": generate(gpt2, tok, question, new_tokens, temperature=0),
           "LoRA-tuned, greedy": generate(tuned, tok, question, new_tokens, temperature=0),
           "LoRA-tuned, top-k 40 τ 0.8, seed 1": generate(tuned, tok, question, new_tokens, 0.8, top_k=40, seed=1)}
print(repr(question))
for name, out in outputs.items():
    print(f"  {name:<36} {out!r}")
first = generate_ids(tuned, tok.encode(question), 1, temperature=0)
argmax = int(to_numpy(tuned.forward([tok.encode(question)]))[0, -1].argmax())

# %% [markdown]
# **检验。** 第一个贪心 token 就是一次前向传播的 argmax;同样的种子采样会再次给出同样的文本;期望答案的 token(teacher
# forcing)在微调后的模型下可能性更大——这就是第 7 节的损失下降在单个问题上的体现。

# %%
assert first == [argmax]
again = generate(tuned, tok, question, new_tokens, 0.8, top_k=40, seed=1)
assert again == outputs["LoRA-tuned, top-k 40 τ 0.8, seed 1"]
one_base, one_tuned = (split_metrics(m, val_split.subset(1), tok, 64)["loss"] for m in (gpt2, tuned))
print(f"completion loss on this question: base {one_base:.3f}, tuned {one_tuned:.3f}")
assert one_tuned < one_base

# %% [markdown]
# ## 要点回顾
#
# | | 本篇 |
# |---|---|
# | 后端 | NumPy 与 CuPy 共用一个算子函数体(`xp = xp_of(x)`);`auto` / `$MINIFT_DEVICE`;没有 GPU 时报错说清原因 |
# | CPU 与 GPU | 两种设备上的 float32 与 float64 相差都在 $10^{-5}$ 以内(logits);GPU 那几行只在有 GPU 时出现 |
# | GPT-2 目录 | `config.json` + `model.safetensors`,HF 的名称,Conv1D $[\text{in}, \text{out}]$,LM head 与 `wte` 绑定 |
# | 数字 | 124,439,808 个参数;float32 权重 $4N$ 字节;AdamW 完全微调 $16N$(第 5 节) |
# | LoRA 省下多少 | r = 8 训练不到 1%;预测峰值内存在 1 × 128 个 token 时低 60–80%,在 8 × 1024 时低不到 15% |
# | 交叉检验 | 与 `transformers` 的 logits 一致到 float32 舍入误差(装了时) |
# | LoRA | 20 步内补全损失下降;适配器按 PEFT 的格式保存,每个训练过的数 4 字节再加几 KiB,重新加载逐位相同 |
# | 适配器大小 | GPT-2 的十二个块:不到模型文件的 2%;替身的文件小得多,占比更大(第 7 节打印) |
#
# ## 练习
#
# **练习 1——从配置算出 GPT-2 的大小。** 不构建模型,只根据一个 `GPTConfig` 返回 GPT-2 形状的模型(LM head 绑定,没有分类头)
# 的参数量。检验会在四个配置上(包括 GPT-2 small,124,439,808 个,以及 medium)与 minift 实际分配的形状比较。

# %%
def my_param_count(cfg):
    """V·C + P·C + L·(12C² + 13C) + 2C, from cfg.vocab_size, cfg.n_ctx, cfg.n_embd, cfg.n_layer."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_param_count(cfg):
    V, P, C, L = cfg.vocab_size, cfg.n_ctx, cfg.n_embd, cfg.n_layer
    return V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C


# %%
def check_param_count(answer):
    medium = GPTConfig(vocab_size=50257, n_ctx=1024, n_embd=1024, n_layer=24, n_head=16)
    for c in (GPTConfig.preset("tiny"), GPTConfig.preset("demo"), GPT2, medium):
        real = sum(math.prod(s) for s in param_shapes(c).values())
        print(f"  n_embd={c.n_embd:<5} n_layer={c.n_layer:<3} minift {real:>12,}   yours {answer(c):>12,}")
        assert answer(c) == real
    assert answer(GPT2) == 124_439_808


exercise("Exercise 1 (parameter count)", check_param_count, my_param_count, solution_param_count)

# %% [markdown]
# **练习 2——LoRA 的可训练参数量。** 返回秩为 `r` 的 LoRA 加在每个块全部四个线性层上时要训练多少个数(LM head 保持绑定、
# 冻结)。检验会与 GPT-2 small 的 `predict_memory(...)["trainable"]` 比较,并在一个真实的 tiny 模型上与 `attach_lora`
# 比较。

# %%
def my_lora_trainable(cfg, r):
    """Σ over blocks and the four linears of r·(in + out)."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_lora_trainable(cfg, r):
    return cfg.n_layer * r * 16 * cfg.n_embd          # (C + 3C) + (C + C) + (C + 4C) + (4C + C) = 16C


# %%
def check_lora_trainable(answer):
    for r in (1, 8, 64):
        expected = predict_memory(GPT2, "lora", 1, 1, rank=r)["trainable"]
        print(f"  GPT-2 small r={r:<3} predict_memory {expected:>10,}   yours {answer(GPT2, r):>10,}")
        assert answer(GPT2, r) == expected
    tiny = GPT(GPTConfig.preset("tiny"))
    attach_lora(tiny, LoRAConfig(r=4, alpha=8, targets="all-linear"))
    assert answer(tiny.cfg, 4) == tiny.num_params(trainable_only=True)


exercise("Exercise 2 (LoRA trainable count)", check_lora_trainable, my_lora_trainable, solution_lora_trainable)

# %% [markdown]
# **练习 3——你的 GPU 装得下多少。** 在序列长度 `seq` 下微调 GPT-2 small,`method` 为 "full" 或 "lora":
# 返回预测峰值(`predict_memory(GPT2, method, batch, seq, rank=8)["total"]`)不超过 `gib` GiB 的最大批量;
# 连一条序列都装不下就返回 0。(比较两种方法:在 1024 个 token 时,LoRA 几乎多装不了几条序列——占满显卡的是激活值,
# 不是权重。)检验会测试你的批量装得下,而再多一条就装不下。

# %%
def my_max_batch(gib, seq, method):
    """The largest batch with predict_memory(GPT2, method, batch, seq, rank=8)["total"] <= gib · 2³⁰."""
    raise NotImplementedError


# %% jupyter={"source_hidden": true}
def solution_max_batch(gib, seq, method):
    fits = lambda b: predict_memory(GPT2, method, b, seq, rank=8)["total"] <= gib * 2**30     # noqa: E731
    batch = 0
    while fits(batch + 1):
        batch += 1
    return batch


# %%
def check_max_batch(answer):
    for gib, seq, method in ((24, 1024, "full"), (24, 1024, "lora"), (80, 1024, "full"), (8, 128, "full"),
                             (1, 1024, "full")):
        b = answer(gib, seq, method)
        total = lambda n: predict_memory(GPT2, method, n, seq, rank=8)["total"] / 2**30    # noqa: E731
        print(f"  {gib:>3} GiB, seq {seq:<5} {method:<5} batch {b:>4}" + (f"  ({total(b):.1f} GiB)" if b else ""))
        assert b == 0 or total(b) <= gib
        assert total(b + 1) > gib


exercise("Exercise 3 (what fits)", check_max_batch, my_max_batch, solution_max_batch)
