"""GPTConfig: the model's dimensions, with GPT-2's field names, and the presets everyone shares; the parameter
shapes a config implies (`param_shapes`) and the labels a classification head may have (`check_labels`).

The presets are fixed in ../shared/DESIGN.md and mirrored by the PyTorch benchmark reference
(../shared/bench/torch_ref.py), so "demo" means the same model in both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from .errors import MiniftError

# name -> (dimensions, the batch size `minift bench` uses for it)
PRESETS = {
    "tiny":  dict(vocab_size=512,   n_embd=64,  n_layer=2,  n_head=4,  n_ctx=64),
    "demo":  dict(vocab_size=2048,  n_embd=128, n_layer=4,  n_head=4,  n_ctx=128),
    "small": dict(vocab_size=8192,  n_embd=256, n_layer=6,  n_head=8,  n_ctx=256),
    "gpt2":  dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_ctx=1024),
}
BENCH_BATCH = {"tiny": 16, "demo": 16, "small": 8, "gpt2": 8}
HEAD_WEIGHT = "score.weight"  # a classification head's weight [K, C] (GPT2ForSequenceClassification's name)
LINEAR_MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # the four linears of a block


@dataclass(frozen=True)
class GPTConfig:
    """Dimensions of a GPT-2-style model. `n_ctx` is what Hugging Face's config.json calls `n_positions`."""
    vocab_size: int = 2048
    n_ctx: int = 128
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0      # GPT-2's embd/resid dropout (it used 0.1); applied only when training with an rng

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MiniftError(f"GPTConfig.{name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise MiniftError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for name in ("layer_norm_epsilon", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MiniftError(f"GPTConfig.{name}={value!r} must be a finite number")
        if not 0.0 <= self.dropout < 1.0:
            raise MiniftError(f"GPTConfig.dropout={self.dropout!r} must be in [0, 1)")
        if not self.layer_norm_epsilon > 0:
            raise MiniftError(f"GPTConfig.layer_norm_epsilon={self.layer_norm_epsilon!r} must be positive")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """One of "tiny" | "demo" | "small" | "gpt2", optionally with fields overridden."""
        if not isinstance(name, str) or name not in PRESETS:
            raise MiniftError(f"preset {name!r} is not one of {sorted(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    def to_hf(self) -> dict:
        """The fields of a Hugging Face GPT2Config (config.json) that describe this model."""
        return dict(model_type="gpt2", vocab_size=self.vocab_size, n_positions=self.n_ctx, n_ctx=self.n_ctx,
                    n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head, n_inner=None,
                    activation_function="gelu_new", layer_norm_epsilon=self.layer_norm_epsilon,
                    resid_pdrop=self.dropout, embd_pdrop=self.dropout, attn_pdrop=0.0,
                    initializer_range=0.02, scale_attn_weights=True, tie_word_embeddings=True)

    @classmethod
    def from_hf(cls, hf: dict, where="config.json") -> "GPTConfig":
        """Read a Hugging Face GPT-2 config.json dict; refuse features minift's GPT-2 does not implement."""
        if hf.get("model_type", "gpt2") != "gpt2":
            raise MiniftError(f"{where}: model_type={hf['model_type']!r} is not a GPT-2 (minift reads GPT-2 folders)")
        try:
            n_ctx = hf.get("n_positions", hf.get("n_ctx"))
            cfg = cls(vocab_size=hf["vocab_size"], n_ctx=n_ctx, n_embd=hf["n_embd"], n_layer=hf["n_layer"],
                      n_head=hf["n_head"], layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                      dropout=hf.get("resid_pdrop", 0.0))
        except KeyError as e:
            raise MiniftError(f"{where} lacks the GPT-2 field {e.args[0]!r}") from None
        except MiniftError as e:                  # a field out of range: say which file holds it
            raise MiniftError(f"{where}: {e}") from None
        n_inner = hf.get("n_inner")
        if n_inner not in (None, 4 * cfg.n_embd):
            raise MiniftError(f"{where}: n_inner={n_inner} is not supported (minift's MLP is 4 * n_embd wide)")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise MiniftError(f"{where}: activation_function={act!r} is not supported (GPT-2's tanh GELU only)")
        for key, gpt2 in (("tie_word_embeddings", True), ("scale_attn_weights", True),
                          ("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False)):
            if hf.get(key, gpt2) != gpt2:          # each changes the model's function: minift computes GPT-2's
                raise MiniftError(f"{where}: {key}={hf[key]!r} is not supported (minift's GPT-2 has {gpt2})")
        return cfg

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MiniftError(f"GPTConfig got unknown fields {sorted(unknown)}")
        return cls(**d)


def param_shapes(cfg: GPTConfig) -> dict:
    """name -> shape for every parameter, in the order Hugging Face's GPT-2 lists them."""
    C, V, F = cfg.n_embd, cfg.vocab_size, 4 * cfg.n_embd
    shapes = {"wte.weight": (V, C), "wpe.weight": (cfg.n_ctx, C)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, F), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (F, C), p + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def check_labels(labels, where="labels") -> list:
    """A classification head's labels as a list: at least 2, each a non-empty string, no two the same. Row k of
    score.weight is the class labels[k], and config.json's id2label / label2id map both ways, so a label given twice
    would make two rows for one class (and label2id keep only one of them). `where` names the input in the error."""
    if isinstance(labels, str) or not hasattr(labels, "__iter__"):
        raise MiniftError(f"{where} must be a list of label names, got {labels!r}")
    labels = list(labels)
    if len(labels) < 2:
        raise MiniftError(f"a classification head needs at least 2 labels, got {where} {labels!r}")
    bad = next((i for i, x in enumerate(labels) if not isinstance(x, str) or not x), None)
    if bad is not None:
        raise MiniftError(f"{where} {labels!r}: every label must be a non-empty string, got {labels[bad]!r}")
    twice = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
    if twice is not None:
        raise MiniftError(f"{where} {labels!r}: the label {twice!r} appears twice; each class needs a name of its own")
    return labels
