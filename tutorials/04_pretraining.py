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
# # 04 · Pretraining: the model that fine-tuning starts from
#
# **Article:** §1.2 微调在预训练模型中的应用 (*Fine-tuning pretrained models*):
#
# > 这些模型通常在大规模语料库上进行训练,从而具备了丰富的语言理解和生成能力。
# >
# > *These models are usually trained on large corpora, and so acquire rich abilities to understand and generate
# > language.*
#
# and its point 2, 资源效率 (*resource efficiency*): "相比于从头开始训练一个模型,微调只需要少量的计算资源和时间"
# — *compared with training a model from scratch, fine-tuning needs only a little compute and time.*
#
# Every fine-tuning method in the article, full or LoRA, starts from a pretrained model. Here you make one: a small
# GPT trained from random weights on minift's generated *world corpus* with the objective GPT-2 was trained with,
# next-token prediction. You will also see what "from scratch" costs, the number §1.2 compares fine-tuning against.
#
# **You will learn**
# 1. what the world corpus is (`minift.data.World`, `world_corpus`) and how the tokenizer turns it into ids;
# 2. the pretraining objective and the loss a model starts from, $\log V$;
# 3. to pretrain with `minift.training.pretrain.pretrain`, plot the loss curve, and compare samples before and after;
# 4. to load the shipped base model `data/base-demo` (`load_base`) and measure it on held-out text.
#
# **中文:** [zh/04_pretraining.py](zh/04_pretraining.py).
#
# **Time:** 3–7 minutes normally (a 400-step run of the `demo` preset, 128 wide, 4 layers, plus 100 more in
# exercise 3: 187 s and 418 s measured in two runs, as the other jobs' load varied), about 25 s in fast mode
# (`MINIFT_FAST=1`: 150 steps of the `tiny` preset; 24 s measured), with `OPENBLAS_NUM_THREADS=1` on 2 CPU cores
# shared with other jobs. 30 minutes to read.

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
# ## 1. The world corpus
#
# Nothing is downloaded. `World(0)` draws a small world from a seed — 96 people and 12 towns, each person with a
# home town, job, pet, best friend, hobby, favourite food… — and `world.document(i)` writes document $i$ about it
# in simple English: profiles, dialogues, letters, diaries, town descriptions. Documents only retell the world's
# facts, so a fact never contradicts itself across the corpus. That makes the facts learnable in principle (section
# 7 shows how little of them pretraining alone picks up), and they are what the fine-tuning tasks later ask about.

# %%
world = World(0)
person = world.people[0]
print(f"{len(world.people)} people, {len(world.towns)} towns. One person:")
print(f"  {person.full_name}:", world.facts(person.name))
for i in (0, 1):
    print(f"\n--- document {i} ---\n{world.document(i)[:320]}…")

# %% [markdown]
# **Check.** The corpus is a pure function of its seeds: the same call gives the same documents, and
# `world_corpus(n_chars=…)` takes documents from the start of the stream until it has at least `n_chars` characters.

# %%
n_chars = pick(3_000_000, 300_000)                       # the pretraining corpus size in this tutorial
texts = world_corpus(n_chars=n_chars)
total_chars = sum(len(t) for t in texts)
print(f"world_corpus(n_chars={n_chars:,}): {len(texts):,} documents, {total_chars:,} characters")
assert world_corpus(n_docs=5) == world.documents(5) == texts[:5]
assert total_chars >= n_chars > total_chars - len(texts[-1])     # stops at the first document past n_chars

# %% [markdown]
# ## 2. The tokenizer
#
# A model reads integers. minift ships a byte-level BPE tokenizer (`data/tokenizer.json`), GPT-2's scheme: the 256
# byte values are tokens, so *any* string can be encoded, and 1,790 frequent byte sequences learned from the world
# corpus and Python's documentation are tokens too. Two special tokens: `<|endoftext|>` (id 0) separates documents,
# `<|pad|>` (id 1) fills batches.

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
# **Check.** Decoding undoes encoding exactly, for English, Chinese and the special token; the special ids are 0 and
# 1; the vocabulary has 2,048 entries, the `demo` preset's `vocab_size`; world text takes between 3.5 and 4
# characters per token (the figure printed above).

# %%
for s in (sentence, chinese, "a<|endoftext|>b  tabs\tand\nnewlines"):
    assert tok.decode(tok.encode(s)) == s, s
assert (tok.eot_id, tok.pad_id, tok.vocab_size) == (0, 1, 2048)
assert tok.encode("<|endoftext|>") == [tok.eot_id]
assert 3.5 < chars_per_token < 4
print("round trips exact; <|endoftext|> =", tok.eot_id, " <|pad|> =", tok.pad_id)

# %% [markdown]
# ## 3. The objective: predict the next token
#
# All documents, each followed by `<|endoftext|>`, are concatenated into one stream of ids $x_1, x_2, \dots$. A
# training example is a window of $T$ tokens, and the target at every position is the token that follows:
#
# $$L = -\frac1{BT}\sum_{b=1}^{B}\sum_{t=1}^{T} \log p_\theta\big(x^{(b)}_{t+1} \,\big|\, x^{(b)}_1, \dots,
# x^{(b)}_t\big).$$
#
# The causal mask (tutorial 02, section 6) makes this one forward pass for all $T$ predictions. A model that knows
# nothing spreads its probability evenly over the $V$ tokens and scores $\log V$ — for $V = 2048$,
# $\log 2048 = 7.62$ nats. GPT-2's initialisation (weights of standard deviation $0.02$) makes the logits nearly
# equal, so a fresh model starts close to it, a little above or below depending on the batch (the cell prints both).

# %%
cfg = pick(minift.GPTConfig.preset("demo"),                      # 2048 tokens, 128 wide, 4 layers, context 128
           minift.GPTConfig.preset("tiny", vocab_size=2048))     # 64 wide, 2 layers, context 64; our tokenizer
stream = concat_documents(sample_ids, tok.eot_id)                # (N,) ids of the first 300 documents
batch = LMSource(stream, block_size=cfg.n_ctx, batch_size=4, seed=0).next_batch()
x, y = batch["input_ids"], batch["targets"]                      # (4, T), (4, T)
print("input  :", repr(tok.decode(x[0, :12])))
print("targets:", repr(tok.decode(y[0, :12])))
fresh = minift.GPT(cfg, seed=0)                                  # random weights: what pretraining starts from
fresh_loss = fresh.loss(x, y)
print(f"fresh model: loss {fresh_loss:.4f}, log V = {math.log(cfg.vocab_size):.4f}")

# %% [markdown]
# **Check.** The targets are the inputs shifted by one, and the fresh model's loss is within 0.1 of $\log V$.

# %%
assert np.array_equal(y[:, :-1], x[:, 1:])
assert abs(fresh_loss - math.log(cfg.vocab_size)) < 0.1

# %% [markdown]
# ## 4. Samples before training
#
# `minift.generate.generate(model, tokenizer, prompt)` runs the model, samples the next token from
# $\operatorname{softmax}(\text{logits}/\tau)$ (temperature $\tau$), appends it, and repeats. An empty prompt starts
# from `<|endoftext|>`: "write a new document". From random weights the tokens are near-uniform draws from the
# vocabulary. Some of those tokens are whole words (`Ġlives`, `ĠSunbury`), so even noise contains corpus words; we
# count what share of the generated words do, over 8 samples (2 prompts × 4 seeds), to compare after training.

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
before = samples(fresh, seeds=range(4))                  # 8 samples, to measure
print(f"words that occur in the corpus, over 8 samples: {known_fraction(before):.0%}")

# %% [markdown]
# ## 5. Pretraining
#
# `pretrain(preset, n_chars=…, tcfg=TrainConfig(…), out_dir=…)` does the whole job: builds the corpus, tokenizes it
# into one stream (97% for training, the last 3% held out for validation), and runs minift's training loop —
# `loss_and_grads` (tutorial 03's backward), global-norm clipping at 1.0, AdamW with weight decay 0.1, warmup then a
# cosine learning-rate decay. It saves the model (a Hugging Face GPT-2 folder), its tokenizer and a summary in
# `out_dir`, and checkpoints (with the per-step history) under `out_dir/checkpoints`.

# %%
run_dir = out_dir("runs") / "04_pretrain"
shutil.rmtree(run_dir, ignore_errors=True)                       # start clean: this run, not a leftover
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
# The loss curve. `pretrain`'s summary keeps only the evaluations; the per-step history is in the checkpoint's
# `state.json`.

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
# **Check.** The run wrote a loadable model; the history has one entry per step; the validation loss ended at least
# 1.5 nats below $\log V$ — the model gives the correct next token, on geometric average, at least $e^{1.5} \approx
# 4.5$ times the probability a uniform guess gives (a perplexity of at most $V/4.5$).

# %%
reloaded, _ = load_base(run_dir / "model")
assert reloaded.fingerprint() == model.fingerprint() and len(history) == steps
print(f"validation loss {summary['val_loss']:.3f} = log V − {math.log(cfg.vocab_size) - summary['val_loss']:.2f}")
assert summary["val_loss"] < math.log(cfg.vocab_size) - 1.5

# %% [markdown]
# ## 6. Samples after training
#
# The same prompts, temperature and seeds as in section 4.

# %%
if FAST:
    print(SMOKE)
for p, s in zip(prompts, samples(model)):
    print(f"{p!r} -> {p + s!r}")
after = samples(model, seeds=range(4))
print(f"\nwords that occur in the corpus, over 8 samples: before {known_fraction(before):.0%}, "
      f"after {known_fraction(after):.0%}")

# %% [markdown]
# **Check.** After training, a larger share of the generated words are real words of the corpus. (In fast mode
# the text is still rough; the `demo` run writes recognisable world sentences, though not always true ones.)

# %%
assert known_fraction(after) > known_fraction(before) + 0.1

# %% [markdown]
# ## 7. The shipped base model, `data/base-demo`
#
# Fine-tuning tutorials start from the same base, shipped in `data/base-demo`: the `demo` preset pretrained for
# 2,000 steps of 16×128 tokens on 16 million characters of world text. `load_base()` loads it (Hugging Face GPT-2
# layout: `config.json`, `model.safetensors`, `tokenizer.json`; beside them `pretrain.json`, the run's summary).
#
# We measure it on **held-out** world text: `heldout_world_ids` writes documents from a different stream
# (seed 12345) than pretraining used, so no model here has seen them. `lm_loss` averages the next-token loss over
# consecutive windows; every model gets the same 64-token windows, so the numbers compare. (The base's
# `pretrain.json` reports another number, its validation loss, printed first below: 128-token windows from the
# held-out tail of its own training stream. Longer windows give each prediction more context, and that text is of the
# same stream; so the two numbers differ, and only the ones in this table compare with each other.)

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
    heldout = heldout_world_ids(base_tok, n_chars=pick(100_000, 30_000))          # (N,) ids never trained on
    windows = pick(32, 8)
    if FAST:
        print(SMOKE)
    losses = {"uniform guess": math.log(cfg.vocab_size),
              f"this tutorial's run ({steps} steps)": lm_loss(model, heldout, block_size=64, max_windows=windows),
              "base-demo (2,000 steps)": lm_loss(base, heldout, block_size=64, max_windows=windows)}
    for name, value in losses.items():
        print(f"  {name:<34} held-out loss {value:.3f}  (perplexity {math.exp(value):7.1f})")

# %% [markdown]
# Perplexity $e^{L}$ is the number of equally likely tokens the model is, on average, choosing between.
#
# **Check.** Same tokenizer (so the same ids); the base model's held-out loss is below this tutorial's short run's,
# which is below the uniform guess.

# %%
if have_base:
    assert base_tok.to_json() == tok.to_json()
    values = list(losses.values())
    assert values[2] < values[1] < values[0], losses

# %% [markdown]
# What pretraining bought, and what it did not. The base writes fluent world English. Whether it knows *who lives
# where* is a separate question: below, it completes "⟨name⟩ lives in" greedily for 24 people, and we count the right
# towns against the 1-in-12 of a guess. The count it prints is a handful at most, near the guess (the check: fewer
# than a third right). That gap, specific facts the task needs, is what fine-tuning is for (the built-in `facts`
# task: tutorial 10, section 7, and tutorial 11).

# %%
if have_base:
    for seed in range(2):
        print(repr(generate(base, base_tok, "", max_new_tokens=60, temperature=0.8, seed=seed)), "\n")
    people = world.people[:24]
    right = sum(generate(base, base_tok, f"{p.name} lives in", max_new_tokens=3, temperature=0).strip()
                .startswith(p.town) for p in people)
    print(f"'⟨name⟩ lives in' completed with the right town: {right} of {len(people)} "
          f"(guessing among {len(world.towns)} towns would get about {len(people) / len(world.towns):.0f})")
    assert right < len(people) / 3, right                # the shipped base, greedy: the same in fast mode

# %% [markdown]
# ## What you saw
#
# - The world corpus is generated, deterministic English about one small world; the tokenizer turns it into about
#   one token per 3.5–4 characters, and round-trips any string exactly.
# - Pretraining is next-token prediction: a fresh model scores $\log V$; training drives the loss down, and the
#   samples turn from token soup into world sentences.
# - "From scratch" has a price: even this small base took 2,000 steps over 4 million tokens (its training time is
#   printed in section 7). Tutorials 05–07 fine-tune it in a fraction of that — the resource-efficiency point of
#   §1.2, measured.
#
# ## Exercises
#
# **Exercise 1 — the loss of knowing nothing.** Return the loss of a model that gives every one of $V$ tokens the
# same probability. The check builds exactly such a model (every parameter zeroed, so every logit is 0) and
# compares.

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
        p[...] = 0                                       # every logit 0: softmax is uniform
    measured = zero.loss(x, y)
    print(f"all-zero model: {measured:.6f}; yours: {answer(cfg.vocab_size):.6f}")
    assert abs(answer(cfg.vocab_size) - measured) < 1e-5


exercise("Exercise 1 (uniform loss)", check_uniform, my_uniform_loss, solution_uniform_loss)

# %% [markdown]
# **Exercise 2 — greedy decoding by hand.** With temperature 0, `generate` takes the argmax at every step. Write that
# loop yourself with `model.forward` (ids of shape (1, t) in, logits (1, t, V) out; read the last position), for
# `n` new tokens after `prompt_ids`. The check compares with `generate_ids(..., temperature=0)`.

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
# **Exercise 3 — continue pretraining (§1.2 point 4, 持续改进, *continual improvement*).** "随着新数据的不断积累,可以
# 通过持续微调来不断改进模型的性能" — *as new data accumulates, keep improving the model by continuing to train it.*
# Continue this tutorial's run for `extra` more steps: call `pretrain` again with the same arguments, `steps`
# raised by `extra`, and `resume=True`, which restores the latest checkpoint in `run_dir` (weights, optimizer state,
# data position) and carries on. Return the new summary. (This continues on the same corpus, further through its
# stream: the mechanism of continual training. New data would be a fine-tune from the saved model on other text,
# `minift pretrain` cannot resume onto a different corpus, since resume checks that the data is the same.)

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
