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
# # 11 · GPU (CuPy) and real GPT-2 weights
#
# **Article:** beyond the article, which never loads a real checkpoint or touches a GPU; it serves the first and
# third of the steps listed in §2.1 完全微调的步骤详解 (*Full fine-tuning, step by step*) and again in §3.2 for LoRA:
#
# > 1. 加载预训练模型:首先,从现有的预训练模型库中选择一个适合的模型,如BERT、GPT等。…
# > 3. 配置训练环境:设置好训练环境,包括选择合适的硬件(如GPU)、安装必要的软件库 …
# >
# > *1. Load a pretrained model: first pick a suitable model from an existing model library, such as BERT or GPT. …
# > 3. Configure the training environment: choose suitable hardware (such as a GPU), install the needed libraries …*
#
# and the point of §1.2 微调在预训练模型中的应用 (*Fine-tuning pretrained models*): the model you adapt was trained by
# someone else, on far more text than you have. Tutorials 04–10 used minift's own 1M-parameter base; here the same
# code loads OpenAI's GPT-2 (124M parameters) from a Hugging Face folder, fine-tunes it with LoRA, and runs on a GPU
# through CuPy.
#
# **What runs where — read this first.** Two things depend on your machine, and the tutorial prints which case it
# is in, at the top and again wherever the case matters:
# - **GPU.** With CuPy and an NVIDIA GPU, sections 1–2 compare the GPU against the CPU and time both, and sections
#   3–8 run on the GPU. Without one (the machine these notes were written on), every GPU cell runs the same code
#   on the CPU instead and says so: no GPU number printed below was measured unless the output says "gpu".
# - **GPT-2's weights.** Nothing is downloaded at run time. Point `MINIFT_GPT2_DIR` at a local copy of the real
#   `gpt2` checkpoint (section 3 says how to get one). Without it the tutorial uses a **stand-in**: minift's own
#   trained base, `data/base-demo` (the folder `minift.base.load_base()` loads; tutorial 04 pretrained it) — a
#   folder with the same files and layout as GPT-2's, holding a GPT-2-architecture model that is much smaller (4
#   blocks of width 128, 1M parameters) with its own 2,048-token tokenizer (GPT-2's has 50,257). Its weights are
#   trained, so what it generates reads as text from its small world; the code path and the file layout are
#   GPT-2's, and section 5's arithmetic is for the real GPT-2 small either way.
#
# **You will learn**
# 1. how one function body runs on NumPy or CuPy (`minift.backend`: `get_xp`, `xp_of`, `to_device`, `to_numpy`,
#    `resolve_device`, `$MINIFT_DEVICE`, `"auto"`), and how to install the GPU backend;
# 2. to move a model to the GPU (`model.to(device=...)`) and check that logits and gradients agree with the CPU
#    within float32 rounding, and to time a step (`minift bench --device gpu`);
# 3. to load a Hugging Face GPT-2 folder (`GPT.from_pretrained`, `minift/formats/hf.py`) and read its parameter names
#    and layouts: Conv1D's $[\text{in}, \text{out}]$ weights, the LM head tied to `wte`; and its tokenizer;
# 4. GPT-2's numbers from its config: 124,439,808 parameters, bytes for full fine-tuning against LoRA
#    (`predict_memory`, `memory_saving`, one step measured), and the $6N$ FLOPs per token;
# 5. to cross-check the loaded model against `transformers`' `GPT2LMHeadModel` (when it is installed);
# 6. to fine-tune the loaded model with LoRA, save the adapter in PEFT's layout, load it back, and generate.
#
# **中文:** [zh/11_gpu_and_gpt2.py](zh/11_gpu_and_gpt2.py).
#
# **Time:** on 2 CPU cores of a shared machine, without a GPU and with the demo stand-in: 6–8 s normally, 5–6 s in
# fast mode (`MINIFT_FAST=1`), measured at different loads, with `transformers` and PEFT installed for the
# cross-checks (importing PyTorch is much of it). The real GPT-2 on a CPU takes far longer: its blocks are a hundred
# times the stand-in's (not measured here: no GPT-2 weights on the machine these notes were written on). 30 minutes
# to read.
#
# **Prerequisites:** tutorials 03 (the model's forward and backward), 07 (LoRA, PEFT files), 09 (memory) help.

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
DEVICE = "gpu" if HAVE_GPU else "cpu"            # where sections 3-8 run
GPT2 = GPTConfig.preset("gpt2")                   # GPT-2 small's shapes: the real checkpoint's config.json says these
HAVE_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))   # optional (section 6)
HAVE_PEFT = HAVE_HF and importlib.util.find_spec("peft") is not None                        # optional (section 7)
SMOKE = "(fast mode: a smoke run; these numbers are not findings)"
print("fast mode " + SMOKE if FAST else "normal mode", "| GPU:", "yes, sections 3-8 run on it" if HAVE_GPU else
      "none here: every GPU cell runs on the CPU instead", "| GPT-2 weights:",
      f"MINIFT_GPT2_DIR={os.environ['MINIFT_GPT2_DIR']}" if os.environ.get("MINIFT_GPT2_DIR", "").strip() else
      "MINIFT_GPT2_DIR not set, minift's trained demo base stands in (section 3)")

# %% [markdown]
# ## 1. One op, two array modules
#
# NumPy and CuPy share one interface: `cupy.tanh`, `cupy.matmul`, `a @ b` and in-place `out=` arguments behave as
# NumPy's do, on arrays that live in GPU memory. So minift writes each op once and asks its *input* which module it
# belongs to. `minift/ops/gelu.py` computes GPT-2's GELU,
#
# $$y = \tfrac12\,x\,\bigl(1 + \tanh u\bigr), \qquad u = \sqrt{2/\pi}\,\bigl(x + 0.044715\,x^3\bigr),$$
#
# in three lines of formula. The arithmetic (`*`, `+`, `**`) is the arrays' own, and for `tanh` it asks with
# `xp_of(x)`: `numpy` for a NumPy array, `cupy` for a CuPy array. The text is the same for both. That is the
# reference; what the model runs is its fast twin in `minift/fast/gelu.py` (`minift/dispatch.py` lists which op
# runs which). On a GPU every line of array code is a kernel launch (a few microseconds of host time each, however
# small the array) and a pass over memory, so on CuPy the twin hands its nine in-place lines to **one fused CUDA
# kernel**, `GELU_FORWARD`, defined right above them: the same operations in the same order, in a few lines of C.
# `minift/fast/kernels.py` explains the mechanism and the rule that keeps it honest: the test suite runs the kernel's
# C on a CPU stand-in for CuPy and requires the nine lines' bits, and on a GPU requires agreement with them to
# rounding. AdamW's update and LayerNorm's and the softmax's elementwise steps are fused the same way;
# `MINIFT_FUSED=0` switches the kernels off, and `MINIFT_REFERENCE=1` runs the reference ops alone.
# `minift/backend.py` is the only file that imports CuPy, lazily, so minift imports on a machine without it. Its
# vocabulary:
#
# | call | does |
# |---|---|
# | `resolve_device(d)` | `"cpu"`, `"gpu"` or `"auto"` (GPU if usable, else CPU) → `"cpu"` / `"gpu"`; `None` reads `$MINIFT_DEVICE` (default `cpu`); `"gpu"` without one is a clear error |
# | `get_xp(d)` | the array module of a device: `numpy` or `cupy` |
# | `xp_of(*arrays)` | the module the arrays live in (what every op calls) |
# | `to_device(a, d)`, `to_numpy(a)` | copy to the device, copy back to the host |
#
# **Installing the GPU backend.** CuPy ships one wheel per CUDA major version: `pip install -e '.[gpu]'` installs
# `cupy-cuda12x` (CUDA 12.x); on a CUDA 13 machine `pip install cupy-cuda13x` instead (`nvidia-smi` prints the
# driver's CUDA version). Then `device="gpu"` in Python, `--device gpu` on the command line, or
# `export MINIFT_DEVICE=gpu` for both.

# %%
print(inspect.getsource(gelu_forward).rstrip())                        # the reference: the formula, line by line
print("its fast twin's kernel, GELU_FORWARD (CUDA C):" + GELU_FORWARD.body.rstrip())
print(f"gpu_available() = {HAVE_GPU}; resolve_device('auto') = {resolve_device('auto')!r}; "
      f"get_xp('cpu') is numpy: {get_xp('cpu') is np}")
saved_env = os.environ.get("MINIFT_DEVICE")
os.environ["MINIFT_DEVICE"] = "auto"
from_env = resolve_device(None)                                         # what device=None means
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

x = rng.standard_normal((4, 8)).astype(np.float32)                     # (4, 8) a host array
y_cpu, _ = gelu_forward(x)                                              # xp_of(x) is numpy
x_dev = to_device(x, DEVICE)                                            # (4, 8) on the GPU, or the same host array
y_dev, _ = gelu_forward(x_dev)                                          # xp_of(x_dev) is cupy on a GPU
print(f"gelu on {DEVICE}{'' if HAVE_GPU else ' (no GPU: the CPU again)'}: array type "
      f"{type(y_dev).__module__}.{type(y_dev).__name__}, max |difference from NumPy| "
      f"{np.abs(to_numpy(y_dev) - y_cpu).max():.1e}")

# %% [markdown]
# **Check.** `xp_of` names the right module; the device copy comes back bitwise; `"auto"` picks the GPU exactly when
# one answers, and `"gpu"` without one raises a `MiniftError` that says what to install; the GELU on the device
# equals NumPy's within float32 rounding ($10^{-6}$ relative: CUDA's `tanh` is not bit-identical to the C library's).

# %%
assert xp_of(x) is np and xp_of(x_dev) is get_xp(DEVICE)
assert np.array_equal(to_numpy(x_dev), x)
assert resolve_device("auto") == from_env == ("gpu" if HAVE_GPU else "cpu")
assert HAVE_GPU or (isinstance(gpu_error, MiniftError) and "pip install" in str(gpu_error))
assert np.allclose(to_numpy(y_dev), y_cpu, rtol=1e-6, atol=1e-7)

# %% [markdown]
# ## 2. A whole model on the device: same logits, same gradients, and the time
#
# `model.to(device="gpu")` copies every parameter to the GPU; `forward` and `loss_and_grads` then run there
# (inputs may stay NumPy arrays: the model moves them). The GPU's result is not bitwise the CPU's: cuBLAS and
# OpenBLAS add the terms of a dot product in different orders, and each float32 addition rounds to a relative
# $u = 2^{-24} \approx 6\times10^{-8}$. Through sums of hundreds of terms and four blocks that grows to about
# $10^{-7}$–$10^{-6}$ relative — the same size as float32's distance from float64 on one machine. So the yardstick
# is float64 on the CPU, and every float32 run is compared with it by
#
# $$\text{rel}(a, b) = \lVert a - b\rVert_F / \lVert b\rVert_F ,$$
#
# for the logits and for each gradient tensor of one training step of the shipped demo base
# (`data/base-demo`, trained weights: differences show up where the numbers are real). With a GPU there is a
# "gpu float32" row and a direct GPU-vs-CPU row; without one, only the CPU rows.

# %%
demo, _ = load_base()                                            # float32, on the CPU
ids = rng.integers(0, demo.cfg.vocab_size, (4, 64))                     # (4, 64) host token ids
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
# **Check.** Every float32 run, on either device, is within $10^{-5}$ of float64 on the logits and $10^{-3}$ on the
# worst gradient tensor (far above the CPU row printed above, so that a GPU's different summation order has room,
# and a wrong kernel has none); the same gradient keys come back from every device.

# %%
assert all(set(gr) == set(ref_grads) for _, gr in runs.values())
assert all(e_logits < 1e-5 and e_grads < 1e-3 for e_logits, e_grads in errors.values()), errors

# %% [markdown]
# **Timing.** `minift bench` times one training step (forward, backward, AdamW) at a preset's bench batch, with a
# device synchronisation around every timed step (a CuPy call only *queues* work on the GPU; without the sync you
# would time the queueing). From the shell:
#
# ```bash
# minift bench --preset gpt2 --device gpu              # GPT-2 small, 8 x 1024 tokens per step
# minift bench --preset demo --device cpu --threads 1
# ```
#
# Here the same function, `run_bench`, for the demo preset on the CPU — and, with a GPU, for the demo preset and
# GPT-2 small on the GPU. Expect the GPU to *lose* on the demo preset (16 × 128 tokens, width 128: each of the few
# hundred kernels per step does too little work to cover its launch cost) and to win by far on GPT-2 small.

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
CPU_PEAK = bench["demo", "cpu"]["peak_gflops"]                          # used in section 5

# %% [markdown]
# **Check.** Every step's loss is finite and within a few nats of $\ln V$, and every time is positive. A random model
# on random tokens starts at about $\ln V$ ($\ln 2048 = 7.62$, $\ln 50257 = 10.82$), but the reported loss is the
# last timed step's, after a few AdamW updates at the bench's lr $10^{-3}$, and those need not lower it: AdamW moves
# every weight by up to about lr per step whatever the size of its gradient, which on GPT-2 small's 768-wide
# matrices can overshoot within a few steps, even on one fixed batch. A broken kernel gives NaN or hundreds;
# $\ln V + 5$ separates the two.

# %%
for (preset, device), r in bench.items():
    assert r["ms_per_step"] > 0 and math.isfinite(r["loss"]), r
    assert r["loss"] < math.log(GPTConfig.preset(preset).vocab_size) + 5, r
if HAVE_GPU:
    speedup = bench["demo", "cpu"]["ms_per_step"] / bench["demo", "gpu"]["ms_per_step"]
    print(f"GPU vs CPU on the demo preset: {speedup:.1f}x")

# %% [markdown]
# ## 3. A Hugging Face GPT-2 folder
#
# A Hugging Face model folder is a `config.json` (the dimensions: `vocab_size`, `n_positions`, `n_embd`, `n_layer`,
# `n_head`) and a `model.safetensors` (name → array). **To use the real GPT-2**, get the folder once, while online,
# and point `MINIFT_GPT2_DIR` at it:
#
# ```bash
# huggingface-cli download openai-community/gpt2 config.json model.safetensors vocab.json merges.txt \
#     tokenizer.json --local-dir ~/models/gpt2          # or: hf download ... (newer huggingface_hub)
# export MINIFT_GPT2_DIR=~/models/gpt2
# ```
#
# (or point it at a snapshot already in your Hugging Face cache:
# `~/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/<commit>/`). minift reads safetensors only, not
# `pytorch_model.bin`. Unset, the cell below uses the stand-in: the shipped base `data/base-demo`, which
# `minift pretrain` wrote with `save_pretrained` — the same two files `transformers` writes, plus the tokenizer it
# was trained with (`tokenizer.json`, section 4) and a record of its pretraining (`pretrain.json`).
#
# The names are GPT-2's own, so loading is a renaming at most (`minift/formats/hf.py`): keys may carry `transformer.`
# (a `GPT2LMHeadModel` state dict) or not (the hub's checkpoint); `h.{i}.attn.bias` is a stored causal mask, not a
# parameter, and is skipped; there is no separate output matrix, because GPT-2's LM head is **tied** to the token
# embedding: $\text{logits} = h\,W_\text{te}^\top$. And GPT-2 stores its linears as `Conv1D`: $W \in
# \mathbb R^{\text{in}\times\text{out}}$ with $y = xW + b$, the transpose of PyTorch's `nn.Linear`
# $[\text{out}, \text{in}]$. minift keeps that layout, so no weight is transposed on the way in or out.

# %%
READER_DIR = os.environ.get("MINIFT_GPT2_DIR", "").strip()
if READER_DIR:
    folder = Path(READER_DIR).expanduser()
    print(f"MINIFT_GPT2_DIR={folder}: your checkpoint")
else:
    folder = shipped_base_dir()                                         # what load_base() loads: trained weights
    print(f"MINIFT_GPT2_DIR is not set: the STAND-IN is minift's trained demo base, {folder} "
          f"(not GPT-2: a GPT-2-architecture model of {load_json(folder / 'config.json')['n_layer']} blocks)")
print({f.name: f"{f.stat().st_size / 2**20:,.1f} MiB" for f in sorted(folder.iterdir()) if f.is_file()})
t0 = time.perf_counter()
gpt2 = GPT.from_pretrained(folder, device=DEVICE)                       # float32, on the GPU when there is one
load_s = time.perf_counter() - t0
cfg = gpt2.cfg
raw, _ = load_safetensors(folder / "model.safetensors")                 # the file's own keys, for comparison
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
# **Check.** The loaded parameters are exactly `param_shapes(cfg)`, names and shapes. On one forward pass with every
# activation recorded (`record=True`): block 0's q, k, v equal $\text{ln\_1}(x)\,W + b$ with the stored $W$ as it is
# (no transpose: Conv1D), and the logits equal $h\,W_\text{te}^\top$ (the tied head), both to float32 rounding
# ($10^{-5}$ relative). If the file stores an `lm_head.weight`, it equals `wte.weight`.

# %%
assert {k: tuple(v.shape) for k, v in gpt2.params.items()} == param_shapes(cfg)
probe = rng.integers(0, cfg.vocab_size, (1, 16))                        # (1, 16) token ids
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
# ## 4. The tokenizer
#
# GPT-2's tokenizer is byte-level BPE with 50,257 tokens, the last one `<|endoftext|>` (id 50256); its files are
# `vocab.json` + `merges.txt` (or both in one `tokenizer.json`). `Tokenizer.load(folder)` reads either
# (`minift/formats/tokenizer.py`), with the `tokenizers` package, offline. A real folder's tokenizer is GPT-2's: "Hello
# world" is `[15496, 995]`, as in every GPT-2 tutorial. The stand-in's folder holds the tokenizer it was pretrained
# with, minift's own (2,048 tokens, one `wte` row each). The two must match: a model can only predict ids it has
# rows for, and a tokenizer can only decode ids it has entries for.

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
# **Check.** `decode(encode(s)) == s`; the tokenizer covers the model's vocabulary and no more; for a folder with
# GPT-2's own files (50,257 tokens) the end-of-text id is 50256 and "Hello world" is `[15496, 995]`; with
# `transformers`, its tokenizer agrees.

# %%
assert tok.decode(ids_text) == text and max(ids_text) < cfg.vocab_size and tok.vocab_size == cfg.vocab_size
if tok_files and tok.vocab_size == 50257:
    assert tok.eot_id == 50256 and tok.encode("Hello world") == [15496, 995]
if tok_files and HAVE_HF and (folder / "vocab.json").is_file():
    assert same_ids

# %% [markdown]
# ## 5. GPT-2 by the numbers: parameters, bytes, FLOPs
#
# **Parameters**, from the config alone ($V$ vocabulary, $P$ positions, $C$ width, $L$ blocks): each block has
# c_attn $3C^2 + 3C$, attn.c_proj $C^2 + C$, c_fc $4C^2 + 4C$, mlp.c_proj $4C^2 + C$ and two LayerNorms $4C$; the
# tied head adds nothing:
#
# $$N = VC + PC + L\,(12C^2 + 13C) + 2C = 38{,}597{,}376 + 786{,}432 + 85{,}054{,}464 + 1{,}536 = 124{,}439{,}808$$
#
# for GPT-2 small ($V = 50257$, $P = 1024$, $C = 768$, $L = 12$) — the "124M" in its name.
#
# **Bytes.** In float32 the weights alone are $4N$ bytes. Full fine-tuning with AdamW adds a gradient and two moment
# estimates per weight: $4N + 4N + 8N = 16N$ bytes before a single activation (both printed below). LoRA with rank
# $r$ on all four linears of every block trains $r(\text{in} + \text{out})$ per matrix,
# $L \cdot r \cdot (4C + 2C + 5C + 5C) = 16\,L\,r\,C = 1{,}179{,}648$ numbers at $r = 8$ (under 1% of GPT-2's
# parameters: the share is printed below), so its gradient and optimizer state are tiny; but activations scale
# with the tokens per step, not the trainable count, and are about the same for both methods (LoRA adds its small
# $xA^\top$ caches). `predict_memory` adds it all up (tutorial 09 checks it against measurement term by term).
#
# **FLOPs.** A matmul weight costs $2$ FLOPs per token forward and $4$ backward ($dx$ and $dW$): the rule
# "$6N$ per token" (Kaplan et al. 2020, whose $N$ is the non-embedding weights, $12LC^2$). Here $N$ also counts the
# tied head's $CV$ — the LM head is a matmul like any other — and attention is counted in full, both its matmuls
# forward and backward: $12\,L\,T\,C$ per token at context $T$ ($4LTC$ forward for the scores $QK^\top$ and the
# mix $AV$, twice that backward; Kaplan's $2LTC$ is the forward of the scores alone). Compare
# with Kaplan's or Chinchilla's $N$ and mind the difference: about 45% for GPT-2 small. LoRA skips $dW$ of the
# frozen weights: about $4N$ per token.

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
# The article's "about 80% less memory" (§5.1) is nearly right for GPT-2 at one short sequence and far off at
# 8 × 1024 tokens (the saving column above), where the activations — over 10 GiB, the same for both methods —
# dominate.
#
# One LoRA step on the loaded model, **measured** (`measure_memory`: NumPy's allocations traced, or CuPy's memory
# pool on a GPU) against the prediction, at a small batch from the task of section 7 (4 questions, padded to the
# longest; the batch's shape is printed):

# %%
lora_cfg = LoRAConfig(r=8, alpha=16, targets="all-linear")
probe_model = gpt2.to()                                                 # a copy to attach to; gpt2 stays plain
attach_lora(probe_model, lora_cfg)
facts_train = load_task_splits("facts", train_size=64)[0]
mem_batch = task_source(facts_train, tok, 64, 4, seed=0).next_batch()  # 4 questions and answers, padded
B, T = mem_batch["input_ids"].shape
measured = measure_memory(probe_model, mem_batch)
predicted = predict_memory(cfg, "lora", B, T, rank=8)
print(f"one LoRA step on a batch of {B} × {T} tokens:")
for term in ("parameters", "gradients", "optimizer", "activations", "workspace", "total"):
    print(f"  {term:<12} measured {measured[term] / 2**20:9.2f} MiB   predicted {predicted[term] / 2**20:9.2f} MiB")
print(f"  measured ÷ predicted total: {measured['total'] / predicted['total']:.4f}")
del probe_model

# %% [markdown]
# Every term matches to within 2% or 64 KiB (the check below), the large ones to a fraction of a percent: the
# prediction is read off the code (`minift/measure/memory.py`'s docstring lists, op by op, what each forward caches and
# which temporaries the backward holds at its peak), so the same arithmetic that printed the GPT-2 table above also
# accounts for the step that really ran.
#
# **Check.** The count from shapes is 124,439,808 for GPT-2 small, and the loaded model's count matches its own
# config (and is 124,439,808 when the folder holds GPT-2 small's config: the real checkpoint, not the stand-in);
# the predicted weights are $4N$ bytes; full fine-tuning's matmul FLOPs are exactly $6 \cdot T \cdot (12LC^2 + CV)$;
# LoRA r = 8 trains under 1%; it saves 60–80% at 1 × 128 and under 15% at 8 × 1024, where the activations exceed
# 10 GiB; the measured step's parameters, gradients, optimizer and activations are within 2% of the prediction (or
# 64 KiB: small Python objects the tracer also sees), and its total within 2% (10% on a GPU, where CuPy's memory
# pool rounds every block up).

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
for term in ("parameters", "gradients", "optimizer", "activations"):       # 2%, or 64 KiB of allocator overhead
    assert abs(measured[term] - predicted[term]) < 0.02 * predicted[term] + 2**16, (term, measured[term])
tol_total = 0.02 if gpt2.device == "cpu" else 0.10   # GPU: CuPy's pool rounds blocks up (not tried on one here)
assert abs(measured["total"] / predicted["total"] - 1) < tol_total, (measured["total"], predicted["total"])

# %% [markdown]
# ## 6. Cross-check against `transformers` (optional)
#
# If PyTorch and `transformers` are installed (`pip install -e '.[oracle]'`), load the very same folder into
# `GPT2LMHeadModel` — from the local path, `local_files_only=True`, nothing downloaded — and compare its logits with
# minift's on a few tokens. Both are float32, different code and a different summation order, so agreement is to
# float32 rounding: $\max|\Delta| \le 10^{-4}\cdot\max|\text{logit}|$, relative because the logits' scale depends on
# the checkpoint (the cell prints their range). Not installed: the section says so and skips.

# %%
if HAVE_HF:
    import torch
    import transformers
    torch.set_num_threads(1)                             # the cores are shared; BLAS threads spin-wait
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
# **Check.** (Only with `transformers`.) Logits agree to $10^{-4}$ of their range; `transformers` holds c_attn as
# $[C, 3C]$ too, and its `lm_head` is literally `wte` (one tensor).

# %%
if HAVE_HF:
    assert hf_err < 1e-4 and conv1d == (cfg.n_embd, 3 * cfg.n_embd) and tied_hf

# %% [markdown]
# ## 7. LoRA on the loaded model: fine-tune, save in PEFT's layout, load back
#
# The task is minift's `facts` (tutorial 04's world): a prompt "Question: What work does Julia do?\nAnswer:" and a
# one-sentence completion, with the loss on the completion tokens only. GPT-2 has never heard of these people, and
# the demo stand-in read about them in its pretraining text (tutorial 04) but was never asked a question, so what a
# few steps teach first is the *form* of an answer ("She is a …", "Her best friend is …"): the completion loss on
# validation questions is the number to watch. LoRA's update is
#
# $$W' = W + s\,A^\top B^\top \quad (A \in \mathbb R^{r\times\text{in}},\ B \in \mathbb R^{\text{out}\times r},\
# s = \alpha/r),$$
#
# the paper's $\Delta W = BA$ (scaled by $s$) transposed, because GPT-2 stores $W$ as [in, out] (tutorial 07);
# here $r = 8$, $\alpha = 16$ (the common choice $2r$; PEFT's own default is 8), on all four linears of every block
# (GPT-2 has 12), learning rate $2\times 10^{-3}$. `finetune` copies the base, attaches the adapters (freezing every
# base weight), trains and evaluates — on the GPU when the model is there. GPT-2 small on a CPU is slow to train (85M
# weights in its blocks and 38.6M in its LM head, against the demo stand-in's 1M in all), so normal mode runs only
# 20 steps; the time per step is printed below.

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
# Saving: only $A$ and $B$ trained, so only they are written, as a PEFT adapter folder (`adapter_config.json` +
# `adapter_model.safetensors`, keys `base_model.model.transformer.h.{i}.….lora_A.weight`). `load_peft` attaches
# it to a freshly loaded base, and checks the base's fingerprint first: an adapter is only meaningful on the weights
# it was trained on. (For deployment as one plain GPT-2 folder: `lora.merge()` then `tuned.save_pretrained(...)`.)

# %%
adapter_dir = out_dir("runs", "11_gpt2_lora") / "adapter"
lora.save_peft(adapter_dir, base_model_name_or_path="openai-community/gpt2" if READER_DIR else None)
adapter_bytes = sum(f.stat().st_size for f in adapter_dir.iterdir())
model_bytes = (folder / "model.safetensors").stat().st_size
fresh = GPT.from_pretrained(folder, device=DEVICE)                      # the base, as a deployment would load it
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
        warnings.simplefilter("ignore")                  # PEFT warns about the extra "minift" key in the config
        peft_model = peft.PeftModel.from_pretrained(hf_model, adapter_dir).eval()
    with torch.no_grad():
        peft_logits = peft_model(torch.tensor(check_ids["input_ids"]),
                                 attention_mask=torch.tensor(check_ids["attention_mask"])).logits.numpy()
    keep = check_ids["attention_mask"].astype(bool)                     # padded positions differ by convention only
    peft_err = np.abs(peft_logits[keep] - tuned_logits[keep]).max() / np.abs(peft_logits[keep]).max()
    print(f"PEFT {peft.__version__} on transformers' GPT-2 with this adapter: "
          f"max |Δlogit| / max |logit| = {peft_err:.1e}")

# %% [markdown]
# **Check.** The fine-tune lowered the validation completion loss (by at least 10% in normal mode); every base
# weight is unchanged (same fingerprint); the adapter file is its float32 $A$s and $B$s and a few KiB more — under
# 2% of the model's file with GPT-2's twelve blocks; the reloaded model's logits
# equal the trained one's bitwise; with PEFT installed, PEFT's logits agree to $10^{-4}$ of their range.

# %%
assert run["val_loss"] < pick(0.9, 1.0) * before["loss"], (before, run["val_loss"])
assert tuned.fingerprint() == gpt2.fingerprint()
assert abs(adapter_bytes - 4 * run["trainable"]) < 16_384      # float32 A, B + a few KiB of JSON and header
assert np.array_equal(tuned_logits, loaded_logits)
if cfg.n_layer == 12:                                            # GPT-2 small (the stand-in's 4 blocks: a larger share)
    assert adapter_bytes < 0.02 * model_bytes
if HAVE_PEFT:
    assert peft_err < 1e-4

# %% [markdown]
# ## 8. Generate
#
# `minift.generate` runs the model forward once per new token (no key/value cache: each step recomputes the
# context) and picks the next token from the last position's logits: $\arg\max$ at temperature 0, else a draw from
# $\operatorname{softmax}(z/\tau)$ restricted to the top $k$, from a seeded generator. With the real GPT-2, expect the
# base to continue off-format and the tuned model to lean toward the one-sentence answer (not the right fact: these
# people are not in GPT-2's training text, and 20 steps are few). The demo stand-in's base continues the prompt
# the way its pretraining text goes on (tutorial 04's world: names, favourite colours, hobbies); after a few LoRA
# steps it answers in the task's one-sentence form, though not always with the right fact (the check below
# compares the expected answer's loss under the base and the tuned model).

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
# **Check.** The first greedy token is the argmax of one forward pass; sampling with the same seed gives the same
# text again; the expected answer's tokens (teacher-forced) are likelier under the tuned model — that is the loss
# drop of section 7, on one question.

# %%
assert first == [argmax]
again = generate(tuned, tok, question, new_tokens, 0.8, top_k=40, seed=1)
assert again == outputs["LoRA-tuned, top-k 40 τ 0.8, seed 1"]
one_base, one_tuned = (split_metrics(m, val_split.subset(1), tok, 64)["loss"] for m in (gpt2, tuned))
print(f"completion loss on this question: base {one_base:.3f}, tuned {one_tuned:.3f}")
assert one_tuned < one_base

# %% [markdown]
# ## What you saw
#
# | | here |
# |---|---|
# | backend | one op body for NumPy and CuPy (`xp = xp_of(x)`); `auto` / `$MINIFT_DEVICE`; a clear error without a GPU |
# | CPU vs GPU | float32 on either device within $10^{-5}$ (logits) of float64; the GPU rows only where one exists |
# | GPT-2 folder | `config.json` + `model.safetensors`, HF names, Conv1D $[\text{in}, \text{out}]$, head tied to `wte` |
# | numbers | 124,439,808 parameters; $4N$ bytes of float32 weights; $16N$ for AdamW full fine-tuning (section 5) |
# | LoRA's saving | r = 8 trains under 1%; predicted peak memory 60–80% lower at 1 × 128 tokens, under 15% at 8 × 1024 |
# | cross-check | `transformers` logits to float32 rounding (when installed) |
# | LoRA | completion loss down in 20 steps; the adapter is 4 bytes per trained number plus a few KiB, in PEFT's layout, reloads bitwise; under 2% of the model's file with GPT-2's twelve blocks, a larger share of the stand-in's far smaller file (printed in section 7) |
#
# ## Exercises
#
# **Exercise 1 — GPT-2's size from its config.** Return the parameter count of a GPT-2-shaped model (tied head, no
# classification head) from a `GPTConfig`, without building it. The check compares with the shapes minift would
# allocate, for four configs including GPT-2 small (124,439,808) and medium.

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
# **Exercise 2 — LoRA's trainable count.** Return how many numbers LoRA of rank `r` on all four linears of every
# block trains (the LM head stays tied and frozen). The check compares with `predict_memory(...)["trainable"]` for
# GPT-2 small and with `attach_lora` on a real tiny model.

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
# **Exercise 3 — what fits on your GPU.** Full fine-tuning of GPT-2 small at sequence length `seq`: return the
# largest batch whose predicted peak (`predict_memory(GPT2, method, batch, seq, rank=8)["total"]`) fits in `gib`
# GiB, or 0 if not even one sequence fits, for `method` "full" or "lora". (Compare the two: at 1024 tokens LoRA fits
# hardly more sequences — activations, not weights, fill the card.) The check tests that your batch fits and one
# more does not.

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
