"""Batch sources for the training loop: an endless `next_batch()` and a position that can be saved and restored.

minift.training.train.train() asks a source for `next_batch()` -> dict of host arrays that it passes straight on to
`model.loss_and_grads(**batch)`, and checkpoints `source.state()` to continue later with `source.restore(state)`:

    LMSource(token_ids, block_size, batch_size, seed)            {"input_ids" (B,T), "targets" (B,T)}
    ClassificationSource(token_lists, label_ids, pad_id, ...)     {"input_ids" (B,T), "targets" (B,), "attention_mask"}
    CompletionSource(prompt_lists, completion_lists, pad_id, ...) {"input_ids" (B,T), "targets" (B,T), "attention_mask"}
    task_source(split, tokenizer, max_len, batch_size, seed)      the right one of the last two for a TaskSplit

A state is a small JSON-friendly dict; restoring it gives exactly the batches the original would have given next.
It carries a short hash of the source's token ids ("data"), so that a checkpoint is not resumed on other data (another
corpus, other files, another tokenizer) without a word.
"""
from __future__ import annotations

import hashlib
from functools import cached_property

import numpy as np

from ..errors import MiniftError
from .batching import BatchIterator, classification_batch, completion_batch, lm_windows


def encode_split(split, tokenizer):
    """Token ids for a TaskSplit: (token_lists, label_ids) for classification, (prompt_lists, completion_lists)
    for generation. Each completion ends with <|endoftext|>, so a fine-tuned model learns to stop after it."""
    if split.type == "classification":
        return tokenizer.encode_batch(split.texts), list(split.label_ids)
    eot = tokenizer.eot_id
    return tokenizer.encode_batch(split.prompts), [ids + [eot] for ids in tokenizer.encode_batch(split.completions)]


def integer_array(values, what: str) -> np.ndarray:
    """`values` as an int64 array; floats (which int64 would truncate silently, 2.7 -> 2) are refused, by name."""
    a = np.asarray(values)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise MiniftError(f"{what} must be integers, got an array of dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


class LMSource:
    """Random windows of a token stream. Batch k is drawn from default_rng([seed, k]): the state is just k."""

    def __init__(self, token_ids, block_size: int, batch_size: int, seed: int = 0):
        self.token_ids = integer_array(token_ids, "LMSource: token_ids")        # (N,)
        self.block_size, self.batch_size, self.seed, self.step = block_size, batch_size, seed, 0
        lm_windows(self.token_ids, block_size, 1, np.random.default_rng(0))     # fail now if the text is too short

    def next_batch(self) -> dict:
        x, y = lm_windows(self.token_ids, self.block_size, self.batch_size,
                          np.random.default_rng([self.seed, self.step]))       # (B, T), (B, T)
        self.step += 1
        return {"input_ids": x, "targets": y}

    def state(self) -> dict:
        return {"kind": "lm", "seed": self.seed, "block_size": self.block_size, "batch_size": self.batch_size,
                "step": self.step, "data": self.data_hash}

    def restore(self, state: dict) -> None:
        _check(state, "lm", seed=self.seed, block_size=self.block_size, batch_size=self.batch_size,
               data=self.data_hash)
        self.step = int(state["step"])

    @cached_property
    def data_hash(self) -> str:
        return _hash_ids([self.token_ids])


class _IndexedSource:
    """Shared by the task sources: a BatchIterator over example indices, and the batch it picks."""
    kind = ""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.batches = BatchIterator(n, batch_size, seed)

    def state(self) -> dict:
        return {"kind": self.kind, **self.batches.state(), "max_len": self.max_len, "data": self.data_hash}

    def restore(self, state: dict) -> None:
        _check(state, self.kind, n=self.batches.n, batch_size=self.batches.batch_size, max_len=self.max_len,
               data=self.data_hash)       # max_len: the same examples cut elsewhere would be other batches
        self.batches = BatchIterator.from_state({k: v for k, v in state.items()
                                                 if k not in ("kind", "max_len", "data")})

    @cached_property
    def data_hash(self) -> str:
        return _hash_ids(self._examples())


class ClassificationSource(_IndexedSource):
    """Shuffled epochs of (token ids, label) examples, right-padded per batch."""
    kind = "classification"

    def __init__(self, token_lists, label_ids, pad_id: int, max_len: int, batch_size: int, seed: int = 0):
        if len(token_lists) != len(label_ids):
            raise MiniftError(f"ClassificationSource: {len(token_lists)} texts but {len(label_ids)} labels")
        super().__init__(len(token_lists), batch_size, seed)
        self.token_lists = list(token_lists)
        self.label_ids = integer_array(label_ids, "ClassificationSource: label_ids")
        self.pad_id, self.max_len = pad_id, max_len

    def _examples(self):
        return [*self.token_lists, self.label_ids]

    def cut_examples(self) -> int:
        """How many texts are longer than max_len tokens (a batch keeps the last max_len of each)."""
        return sum(len(ids) > self.max_len for ids in self.token_lists)

    def next_batch(self) -> dict:
        idx = self.batches.next_batch()                                        # (B,)
        ids, mask, labels = classification_batch([self.token_lists[i] for i in idx], self.label_ids[idx],
                                                 self.pad_id, self.max_len)
        return {"input_ids": ids, "targets": labels, "attention_mask": mask}


class CompletionSource(_IndexedSource):
    """Shuffled epochs of prompt -> completion examples; the loss sees completion tokens only."""
    kind = "completion"

    def __init__(self, prompt_lists, completion_lists, pad_id: int, max_len: int, batch_size: int, seed: int = 0):
        if len(prompt_lists) != len(completion_lists):
            raise MiniftError(f"CompletionSource: {len(prompt_lists)} prompts but {len(completion_lists)} "
                              "completions")
        super().__init__(len(prompt_lists), batch_size, seed)
        self.prompts, self.completions = list(prompt_lists), list(completion_lists)
        self.pad_id, self.max_len = pad_id, max_len

    def _examples(self):
        return [*self.prompts, *self.completions]

    def cut_examples(self) -> int:
        """How many prompt + completion pairs do not fit max_len inputs (completion_batch cuts the prompt's start)."""
        return sum(len(p) + len(c) - 1 > self.max_len for p, c in zip(self.prompts, self.completions))

    def next_batch(self) -> dict:
        idx = self.batches.next_batch()                                        # (B,)
        ids, targets, mask = completion_batch([self.prompts[i] for i in idx], [self.completions[i] for i in idx],
                                              self.pad_id, self.max_len)
        return {"input_ids": ids, "targets": targets, "attention_mask": mask}


def task_source(split, tokenizer, max_len: int, batch_size: int, seed: int = 0):
    """The source for a TaskSplit (from load_task): classification or completion, encoded with `tokenizer`."""
    a, b = encode_split(split, tokenizer)
    cls = ClassificationSource if split.type == "classification" else CompletionSource
    return cls(a, b, tokenizer.pad_id, max_len, batch_size, seed)


def _hash_ids(sequences) -> str:
    """A short SHA-256 of a list of token-id sequences (lengths included, so [1, 2], [3] differs from [1], [2, 3])."""
    h = hashlib.sha256()
    for ids in sequences:
        a = np.asarray(ids, dtype=np.int64)
        h.update(np.int64(a.size).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _check(state: dict, kind: str, data: str, **expected) -> None:
    """A saved state must come from the same kind of source over the same data."""
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise MiniftError(f"data state {state!r} is not from a {kind} source")
    for key, value in expected.items():     # a key missing: a state saved before minift recorded it
        if key in state and state[key] != value:
            raise MiniftError(f"data state has {key}={state.get(key)!r} but this {kind} source has {value!r}: "
                              "resume with the same data, batch size and example length")
    if state.get("data", data) != data:              # states saved before the hash existed have none
        raise MiniftError(f"the checkpoint was trained on other data (token-id hash {state['data']}, this run's is "
                          f"{data}): another corpus, --chars, --files, task or tokenizer? Resume with the same data")
