"""A seeded random source whose output never changes between Python versions.

Shipped files in data/ must come out byte-identical whenever they are regenerated, on any machine. Python guarantees
exactly two things about `random.Random`: seeding with an int gives the same state, and `random()` then gives the
same floats. Its `choice`, `shuffle` and `sample` carry no such promise (and NumPy's Generator reserves the right to
change its streams), so everything here is built on `random()` alone.
"""
from __future__ import annotations

import random


class StableRandom:
    """choice / shuffle / sample / chance over one seeded `random.Random`, using only its guaranteed `random()`."""

    def __init__(self, *seed: int):
        # several ints (e.g. a corpus seed and a document index) fold into one, as digits in base 1_000_003:
        # distinct tuples give distinct seeds while every part is below 1_000_002
        value = 0
        for s in seed:
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ValueError(f"seed parts must be non-negative ints, got {seed!r}")
            value = value * 1_000_003 + s + 1
        self._random = random.Random(value)

    def random(self) -> float:
        """A float in [0, 1)."""
        return self._random.random()

    def below(self, n: int) -> int:
        """An int in [0, n). The bias of int(u * n) is below n / 2**53: nothing at these sizes."""
        if n <= 0:
            raise ValueError(f"below({n}): n must be positive")
        return int(self._random.random() * n)

    def randint(self, low: int, high: int) -> int:
        """An int in [low, high], both ends included."""
        return low + self.below(high - low + 1)

    def chance(self, p: float) -> bool:
        """True with probability p."""
        return self._random.random() < p

    def choice(self, seq):
        """One element of a non-empty sequence."""
        return seq[self.below(len(seq))]

    def weighted(self, items, weights):
        """One of `items`, picked with probability proportional to `weights`."""
        u = self._random.random() * sum(weights)
        for item, w in zip(items, weights):
            u -= w
            if u < 0:
                return item
        return items[-1]

    def shuffle(self, items: list) -> list:
        """Shuffle a list in place (Fisher-Yates) and return it."""
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items

    def sample(self, seq, k: int) -> list:
        """k distinct elements of seq, in random order."""
        if k > len(seq):
            raise ValueError(f"sample: k={k} is larger than the {len(seq)} items")
        return self.shuffle(list(seq))[:k]
