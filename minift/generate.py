"""Sampling text from a GPT: repeated forward passes, one new token each.

At each step the model sees the last n_ctx tokens, we take the logits of the final position, divide them by the
temperature (T < 1 sharpens the distribution, T > 1 flattens it; T = 0 means greedy argmax), optionally keep only
the top-k logits, and draw the next token from softmax(logits). There is no key/value cache: each step recomputes
the whole context, which is simple and, at minift's sizes, fast enough.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import make_rng, to_numpy
from .errors import MiniftError
from .formats.tokenizer import as_token_ids
from .ops.softmax import softmax

# The sampling defaults, set here once: generate_ids and generate take them, and `minift generate` reads them from
# generate's signature. T = 0.8 (nanoGPT's sample.py) trims the unlikely tail a small model puts too much weight on;
# T = 1 samples the model's own distribution.
MAX_NEW_TOKENS = 80
TEMPERATURE = 0.8


def sample_next(logits, rng, temperature=TEMPERATURE, top_k=None) -> int:
    """logits (V,) host array -> one token id. Logits that are not all finite (weights that overflow in float16,
    a model whose parameters were set to NaN in Python) are refused here, before NumPy's sampler fails on them."""
    if not np.isfinite(logits).all():
        raise MiniftError("the model's logits hold NaN or infinite values: its weights are not finite, or overflow "
                          "in its dtype (try float32)")
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature                  # (V,)
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)                        # (V,) keep the k largest
    p = softmax(z)                                               # (V,)
    return int(rng.choice(z.size, p=p))


def _is_int(x) -> bool:
    """An integer (int, NumPy's int64), not a bool: True as "1 token" is a mistake, not a count."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _check_sampling(max_new_tokens, temperature, top_k) -> None:
    """The sampling options, each refused by name unless it means something: max_new_tokens a positive int (0 or -1
    would return "" as if the model had nothing to say), temperature a real number >= 0 and finite (0: greedy),
    top_k None or a positive int."""
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise MiniftError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    if not isinstance(temperature, numbers.Real) or not 0 <= temperature < math.inf:
        raise MiniftError(f"temperature={temperature!r} must be >= 0 and finite (0: always the likeliest token)")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise MiniftError(f"top_k={top_k!r} must be a positive integer (or None: all tokens)")


def generate_ids(model, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_k=None, seed=0,
                 stop_id=None, n_tokens=None) -> list:
    """Continue `prompt_ids` (a list of ints) by up to max_new_tokens tokens; returns only the new ids.
    n_tokens: the tokenizer's vocabulary size, when the model's vocab_size is larger (padded, as GPT-2's often is
    to a multiple of 64): ids from n_tokens up have no text and are never drawn."""
    if model.head_kind != "lm":
        raise MiniftError("generation needs the language-model head; this model has a classification head")
    _check_sampling(max_new_tokens, temperature, top_k)
    ids, new = as_token_ids(prompt_ids, "prompt_ids"), []
    if not ids:
        raise MiniftError("the prompt is empty: give at least one token")
    rng = make_rng(seed)
    for _ in range(max_new_tokens):
        context = np.asarray([ids[-model.cfg.n_ctx:]], dtype=np.int64)     # (1, T)
        logits = to_numpy(model.forward(context)[0, -1])[:n_tokens]          # (V,), or (n_tokens,)
        nxt = sample_next(logits, rng, temperature, top_k)
        if stop_id is not None and nxt == stop_id:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def generate(model, tokenizer, prompt: str, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_k=None,
             seed=0) -> str:
    """Text in, text out: the prompt's continuation (stops early at the end-of-text token)."""
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    new = generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, seed, stop_id=tokenizer.eot_id,
                       n_tokens=tokenizer.vocab_size)
    return tokenizer.decode(new)
