"""Evaluation: accuracy and loss on a task split, and language-model loss on held-out text.

All of it is forward-only (model.forward / model.loss), in batches, on whatever device the model lives on.

    classification_metrics   accuracy and mean cross-entropy of a classification head
    completion_metrics       loss on the completion tokens, and exact match: every completion token is the model's
                             argmax under teacher forcing — which is exactly when greedy decoding reproduces it
    lm_loss                  mean next-token loss on consecutive windows of a token stream (forgetting is the
                             change of this on held-out pretraining text)
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..backend import to_numpy
from ..data.batching import IGNORE_INDEX, classification_batch, completion_batch, sequential_windows
from ..data.sources import encode_split
from ..ops.cross_entropy import cross_entropy_forward


def classification_metrics(model, token_lists, label_ids, pad_id, max_len, batch_size=64) -> dict:
    correct, loss_sum, n = 0, 0.0, len(token_lists)
    for s in range(0, n, batch_size):
        ids, mask, labels = classification_batch(token_lists[s:s + batch_size], label_ids[s:s + batch_size],
                                                 pad_id, max_len)
        logits = model.forward(ids, attention_mask=mask)                        # (B, K)
        loss, _ = cross_entropy_forward(logits, model.xp.asarray(labels))
        loss_sum += float(loss) * len(labels)
        correct += int((to_numpy(logits.argmax(-1)) == labels).sum())
    return dict(accuracy=correct / n, loss=loss_sum / n)


def completion_metrics(model, prompt_lists, completion_lists, pad_id, max_len, batch_size=64) -> dict:
    exact, loss_sum, tokens, n = 0, 0.0, 0, len(prompt_lists)
    for s in range(0, n, batch_size):
        ids, targets, mask = completion_batch(prompt_lists[s:s + batch_size], completion_lists[s:s + batch_size],
                                              pad_id, max_len)
        logits = model.forward(ids, attention_mask=mask)                        # (B, T, V)
        loss, _ = cross_entropy_forward(logits, model.xp.asarray(targets))
        counted = targets != IGNORE_INDEX                                       # (B, T)
        loss_sum += float(loss) * int(counted.sum())
        tokens += int(counted.sum())
        hit = (to_numpy(logits.argmax(-1)) == targets) | ~counted               # (B, T)
        exact += int(hit.all(axis=1).sum())
    return dict(accuracy=exact / n, loss=loss_sum / tokens)


@contextlib.contextmanager
def adapters_in_eval_mode(model):
    """Adapter dropout off while measuring (as torch's model.eval()), each adapter's mode put back afterwards: a
    metric must not depend on the mode the caller left the model in, nor advance the adapters' dropout stream."""
    modes = {name: a.training for name, a in model.adapters.items()}
    for a in model.adapters.values():
        a.training = False
    try:
        yield model
    finally:
        for name, a in model.adapters.items():
            a.training = modes[name]


def split_metrics(model, split, tokenizer, max_len, batch_size=64) -> dict:
    """Metrics for a TaskSplit: accuracy (classification accuracy or exact match) and loss."""
    a, b = encode_split(split, tokenizer)
    fn = classification_metrics if split.type == "classification" else completion_metrics
    with adapters_in_eval_mode(model):
        return fn(model, a, b, tokenizer.pad_id, max_len, batch_size)


def lm_loss(model, token_ids, block_size=None, max_windows=32, batch_size=16) -> float:
    """Mean next-token cross-entropy over consecutive windows of `token_ids`.

    A model with a classification head is measured through its language-model head (the tied wte), which it keeps:
    this is how forgetting is measured after fine-tuning a classifier — the body changed, did it forget the corpus?
    """
    x, y = sequential_windows(token_ids, block_size or model.cfg.n_ctx, max_windows)   # (W, T), (W, T)
    head_kind, model.head_kind = model.head_kind, "lm"
    try:
        with adapters_in_eval_mode(model):
            losses = [model.loss(x[s:s + batch_size], y[s:s + batch_size]) * len(x[s:s + batch_size])
                      for s in range(0, len(x), batch_size)]
    finally:
        model.head_kind = head_kind
    return float(np.sum(losses) / len(x))
