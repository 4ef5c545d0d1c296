"""From token ids to training arrays: NumPy int64 (and bool masks) on the host; the caller moves them to the device.

Shapes: B batch, T time (positions), N tokens in a corpus.

    ids = concat_documents(tok.encode_batch(texts), tok.eot_id)          # (N,)  one stream, <|endoftext|> between
    x, y = lm_windows(ids, block_size=128, batch_size=16, rng=rng)       # (B,T), (B,T): y is x shifted by one
    ids, mask, labels = classification_batch(token_lists, label_ids, tok.pad_id, max_len=128)
    input_ids, targets, mask = completion_batch(prompts, completions, tok.pad_id, max_len=128)
    it = BatchIterator(n=len(dataset), batch_size=16, seed=0)            # shuffled epochs, resumable: it.state()

Padding is on the RIGHT. With causal attention a position only sees positions before it, so pads after the text
change nothing the real tokens compute; the masks are for the loss and for finding the last real token.
"""
from __future__ import annotations

import numpy as np

from ..errors import MiniftError

IGNORE_INDEX = -100                                     # PyTorch's and Hugging Face's default ignore label


def _check_lists(name: str, lists) -> list[list[int]]:
    lists = [list(x) for x in lists]
    if not lists:
        raise MiniftError(f"{name}: the batch is empty")
    for i, ids in enumerate(lists):
        if not ids:
            raise MiniftError(f"{name}: sequence {i} has no tokens")
    return lists


def concat_documents(token_lists, eot_id: int) -> np.ndarray:
    """[docs of ids] -> (N,) int64: every document followed by <|endoftext|>, so the model learns where texts end."""
    parts = []
    for ids in token_lists:
        parts.append(np.asarray(ids, dtype=np.int64))                       # (n_doc,)
        parts.append(np.array([eot_id], dtype=np.int64))                    # (1,)
    if not parts:
        raise MiniftError("concat_documents: no documents")
    return np.concatenate(parts)                                            # (N,)


def lm_windows(token_ids, block_size: int, batch_size: int, rng: np.random.Generator):
    """(N,) -> x (B,T), y (B,T): B random windows of T tokens; y[b, t] = x[b, t+1] is the next token after x[b, t].

    A window starts anywhere in [0, N - T - 1], so its T + 1 tokens (T inputs, the last one only a target) fit.
    """
    ids = np.asarray(token_ids, dtype=np.int64)                             # (N,)
    if ids.ndim != 1:
        raise MiniftError(f"lm_windows: token_ids must be 1-D, got shape {ids.shape}")
    if ids.size < block_size + 1:
        raise MiniftError(f"lm_windows: {ids.size} tokens cannot fill one window of block_size={block_size} (+1 "
                          "for the target); use more text or a smaller block_size")
    starts = rng.integers(0, ids.size - block_size, size=batch_size)        # (B,)
    idx = starts[:, None] + np.arange(block_size)[None, :]                  # (B, T)
    return ids[idx], ids[idx + 1]                                           # (B, T), (B, T)


def sequential_windows(token_ids, block_size: int, max_windows: int | None = None):
    """(N,) -> x (W,T), y (W,T): consecutive non-overlapping windows from the start, for a repeatable eval loss."""
    ids = np.asarray(token_ids, dtype=np.int64)                             # (N,)
    w = (ids.size - 1) // block_size
    if max_windows is not None:
        w = min(w, max_windows)
    if w < 1:
        raise MiniftError(f"sequential_windows: {ids.size} tokens cannot fill one window of {block_size} (+1)")
    x = ids[: w * block_size].reshape(w, block_size)                        # (W, T)
    y = ids[1: w * block_size + 1].reshape(w, block_size)                   # (W, T)
    return x, y


def classification_batch(token_lists, labels, pad_id: int, max_len: int, keep: str = "end"):
    """[B lists of ids], (B,) labels -> ids (B,T) int64, attention_mask (B,T) bool, labels (B,) int64.

    Right-padded to the longest sequence (at most max_len). The classifier reads the hidden state at the last real
    token, index attention_mask.sum(1) - 1, as Hugging Face's GPT2ForSequenceClassification does.

    Truncation keeps the END of a long text by default (keep="end"): in a causal model only the last position has
    seen the whole input, and that is the one the head reads, so it should be the real end of the text. The end is
    also where reviews give their verdict ("..., but the ending was wonderful."). keep="start" keeps the beginning.
    """
    lists = _check_lists("classification_batch", token_lists)
    labels = np.asarray(labels, dtype=np.int64)                             # (B,)
    if labels.shape != (len(lists),):
        raise MiniftError(f"classification_batch: {len(lists)} sequences but labels of shape {labels.shape}")
    if keep not in ("end", "start"):
        raise MiniftError(f"classification_batch: keep={keep!r}, expected 'end' or 'start'")
    if max_len < 1:                     # ids[-0:] would keep everything, ids[--1:] drop the first token
        raise MiniftError(f"classification_batch: max_len={max_len} must be at least 1")
    lists = [ids[-max_len:] if keep == "end" else ids[:max_len] for ids in lists]
    T = max(len(ids) for ids in lists)
    out = np.full((len(lists), T), pad_id, dtype=np.int64)                  # (B, T)
    mask = np.zeros((len(lists), T), dtype=bool)                            # (B, T)
    for b, ids in enumerate(lists):
        out[b, :len(ids)] = ids
        mask[b, :len(ids)] = True
    return out, mask, labels


def completion_batch(prompt_lists, completion_lists, pad_id: int, max_len: int, ignore_index: int = IGNORE_INDEX):
    """[B prompt ids], [B completion ids] -> input_ids (B,T), targets (B,T) int64, attention_mask (B,T) bool.

    The sequence is s = prompt + completion (length L = P + C). The one-position shift: the model's output at
    position t is its guess for token t + 1, so
        input_ids = s[0 : L-1]      targets = s[1 : L]      (targets[t] = s[t + 1])
    A target that is a prompt token (t + 1 < P, i.e. t < P - 1) or padding is set to ignore_index, so the loss sees
    exactly the C completion tokens: the first one is predicted at t = P - 1, from the prompt's last token; the last
    token of s is never an input. Append <|endoftext|> to each completion to teach the model to stop.

    Too long (L - 1 > max_len): the prompt loses tokens from its start (the question's end is kept next to the
    answer); a completion longer than max_len is cut at its end. One prompt token always stays.
    """
    prompts = _check_lists("completion_batch (prompts)", prompt_lists)
    completions = _check_lists("completion_batch (completions)", completion_lists)
    if len(prompts) != len(completions):
        raise MiniftError(f"completion_batch: {len(prompts)} prompts but {len(completions)} completions")
    if max_len < 1:
        raise MiniftError(f"completion_batch: max_len={max_len} must be at least 1")
    seqs = []
    for p, c in zip(prompts, completions):
        c = c[:max_len]                                 # inputs are p + c[:-1]: len(p) + len(c) - 1 <= max_len
        p = p[-max(1, max_len + 1 - len(c)):]
        seqs.append((p, c))
    T = max(len(p) + len(c) - 1 for p, c in seqs)
    input_ids = np.full((len(seqs), T), pad_id, dtype=np.int64)             # (B, T)
    targets = np.full((len(seqs), T), ignore_index, dtype=np.int64)         # (B, T)
    mask = np.zeros((len(seqs), T), dtype=bool)                             # (B, T)
    for b, (p, c) in enumerate(seqs):
        s = np.asarray(p + c, dtype=np.int64)                               # (L,)
        L, P = len(s), len(p)
        input_ids[b, :L - 1] = s[:-1]
        mask[b, :L - 1] = True
        targets[b, P - 1:L - 1] = s[P:]                                     # completion tokens only
    return input_ids, targets, mask


class BatchIterator:
    """Shuffled mini-batches of indices 0..n-1, epoch after epoch, resumable exactly.

    Epoch e visits the permutation drawn from numpy's default_rng([seed, e]), so the order depends only on
    (seed, epoch) and the position inside the epoch: `state()` is a small JSON-friendly dict, and
    `BatchIterator.from_state(s)` continues with the very same batches. The last batch of an epoch is smaller when
    batch_size does not divide n (drop_last=True skips it instead).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = False,
                 epoch: int = 0, position: int = 0):
        if not isinstance(n, int) or n < 1:
            raise MiniftError(f"BatchIterator: n={n!r} must be a positive int")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MiniftError(f"BatchIterator: batch_size={batch_size!r} must be a positive int")
        if drop_last and batch_size > n:
            raise MiniftError(f"BatchIterator: batch_size={batch_size} > n={n} with drop_last gives no batches")
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)   # (n,)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def next_batch(self) -> np.ndarray:
        """The next batch of indices (int64), moving to a new epoch (and a new shuffle) when one runs out."""
        end = self.position + self.batch_size
        if self.position >= self.n or (self.drop_last and end > self.n):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
            end = self.batch_size
        batch = self._order[self.position:end]                              # (<=batch_size,)
        self.position = min(end, self.n)
        return batch.astype(np.int64)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return self.next_batch()

    def state(self) -> dict:
        """Everything needed to resume: save it with a checkpoint."""
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "drop_last": self.drop_last,
                "epoch": self.epoch, "position": self.position}

    @classmethod
    def from_state(cls, state: dict) -> "BatchIterator":
        try:
            return cls(int(state["n"]), int(state["batch_size"]), int(state["seed"]), bool(state["drop_last"]),
                       int(state["epoch"]), int(state["position"]))
        except (KeyError, TypeError, ValueError) as e:
            raise MiniftError(f"BatchIterator.from_state: bad state {state!r} ({e})") from None
