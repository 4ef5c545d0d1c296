"""Small helpers shared by the tests (no test file imports another): seeded float64 arrays on a backend, an optional
torch import, a perturbed tiny model with LoRA batches, attention padding masks, and a Ctrl-C at a chosen batch."""
import os
import signal

import numpy as np
import pytest

from minift import GPT, GPTConfig
from minift.backend import to_numpy


def rand(xp, rng, *shape, scale=1.0):
    """Standard-normal float64 array drawn on the host with `rng`, moved to `xp`."""
    return xp.asarray(rng.standard_normal(shape) * scale)


def torch_or_skip():
    """The torch module, or skip the calling test cleanly where it is not installed."""
    return pytest.importorskip("torch", reason="torch not installed: autograd cross-check skipped")


def to_torch(torch, a, requires_grad=True):
    """A float64 leaf tensor holding a host copy of `a`."""
    t = torch.tensor(np.asarray(to_numpy(a)))
    return t.requires_grad_(requires_grad) if t.is_floating_point() else t


# ---- a tiny model and batches (LoRA, DoRA and lens tests) ------------------------------------------------------

def tiny_model(xp=np, dtype="float64", seed=0, perturb=True):
    """The tiny preset, moved off GPT-2's neutral init (LayerNorm gains 1 and biases 0 hide bugs)."""
    model = GPT(GPTConfig.preset("tiny"), seed=seed, dtype=dtype, device="cpu" if xp is np else "gpu")
    if perturb:
        rng = np.random.default_rng(seed + 100)
        for v in model.params.values():
            v += model.xp.asarray(rng.standard_normal(v.shape) * 0.1).astype(v.dtype)
    return model


def batch(cfg, B=2, T=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    targets[0, :2] = -100                                  # some positions without a loss
    return ids, targets


def randomize(lora, seed=1, scale=0.3):
    """Every adapter array to random values, in place (B ≠ 0: the adapter matters and dA is not hidden)."""
    rng = np.random.default_rng(seed)
    for name, a in lora.params.items():
        noise = lora.model.xp.asarray(rng.standard_normal(a.shape) * scale).astype(a.dtype)
        if name.endswith("lora_magnitude_vector"):
            a *= 1 + noise                                 # a magnitude stays near the column norms it started at
        else:
            a[...] = noise
    return lora


def host(a):
    return np.asarray(to_numpy(a))


# ---- attention ------------------------------------------------------------------------------------------------

def padding_mask(rng, B, T, kind):
    """(B, T) int mask, 1 = real token: "left" / "right" padding of a random length per row, or a "random" pattern.

    Left padding makes queries that see no key at all (every key up to them is padding): the fully masked case.
    """
    if kind == "random":
        return (rng.random((B, T)) < 0.7).astype(np.int64)
    n_pad = rng.integers(0, T, size=B)                     # every row keeps at least one real token
    pos = np.arange(T)[None, :]                            # (1, T)
    pad = pos < n_pad[:, None] if kind == "left" else pos >= T - n_pad[:, None]
    return (~pad).astype(np.int64)


# ---- interrupts -----------------------------------------------------------------------------------------------

def signal_at_batch(monkeypatch, source_class, at):
    """Send this process SIGINT (Ctrl-C) while `source_class` hands out its batch number `at`, counted over every
    instance (the evaluation never draws from a source)."""
    calls = [0]
    real = source_class.next_batch

    def next_batch(self):
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGINT)
        calls[0] += 1
        return real(self)
    monkeypatch.setattr(source_class, "next_batch", next_batch)
