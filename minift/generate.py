"""Sampling text from a GPT: repeated forward passes, one new token each.

At each step the model sees the last n_ctx tokens, we take the logits of the final position, divide them by the
temperature (T < 1 sharpens the distribution, T > 1 flattens it; T = 0 means greedy argmax), optionally keep only
the top-k logits, and draw the next token from softmax(logits). There is no key/value cache: each step recomputes
the whole context, which is simple and, at minift's sizes, fast enough.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import make_rng, to_numpy
from .errors import MiniftError
from .ops.softmax import softmax


def sample_next(logits, rng, temperature=1.0, top_k=None) -> int:
    """logits (V,) host array -> one token id."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature                  # (V,)
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)                        # (V,) keep the k largest
    p = softmax(z)                                               # (V,)
    return int(rng.choice(z.size, p=p))


def generate_ids(model, prompt_ids, max_new_tokens=50, temperature=1.0, top_k=None, seed=0, stop_id=None,
                 n_tokens=None) -> list:
    """Continue `prompt_ids` (a list of ints) by up to max_new_tokens tokens; returns only the new ids.
    n_tokens: the tokenizer's vocabulary size, when the model's vocab_size is larger (padded, as GPT-2's often is
    to a multiple of 64): ids from n_tokens up have no text and are never drawn."""
    if model.head != "lm":
        raise MiniftError("generation needs the language-model head; this model has a classification head")
    if not 0 <= temperature < math.inf:
        raise MiniftError(f"temperature={temperature} must be >= 0 and finite (0: always the likeliest token)")
    if top_k is not None and top_k <= 0:
        raise MiniftError(f"top_k={top_k} must be a positive integer")
    if not prompt_ids:
        raise MiniftError("the prompt is empty: give at least one token")
    rng = make_rng(seed)
    ids, new = list(prompt_ids), []
    for _ in range(max_new_tokens):
        context = np.asarray([ids[-model.cfg.n_ctx:]], dtype=np.int64)     # (1, T)
        logits = to_numpy(model.forward(context)[0, -1])[:n_tokens]          # (V,), or (n_tokens,)
        nxt = sample_next(logits, rng, temperature, top_k)
        if stop_id is not None and nxt == stop_id:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def generate(model, tokenizer, prompt: str, max_new_tokens=50, temperature=1.0, top_k=None, seed=0) -> str:
    """Text in, text out: the prompt's continuation (stops early at the end-of-text token)."""
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    new = generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, seed, stop_id=tokenizer.eot_id,
                       n_tokens=tokenizer.vocab_size)
    return tokenizer.decode(new)
