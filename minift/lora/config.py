"""LoRAConfig, and which linears it adapts: the settings of PEFT's LoraConfig, checked when they are made.

The scale s = α/R comes from Hu et al. 2021, "LoRA" (arXiv 2106.09685), §4.1; α/√R from rsLoRA (Kalajdzievski 2023,
arXiv 2312.03732). Target names follow PEFT's matching rule (peft/tuners/tuners_utils.py, check_target_module_exists).

Why α/R, and why rsLoRA's √R: with s = α/R, the part of an update along the gradient (what lowers the loss) stays
the same size whatever R, so the learning rate need not change with the rank (Hu et al. §4.1) -- and extra rank buys
little. rsLoRA argues that with α/R the adapters' outputs and gradients collapse as R grows, measures that higher
ranks then stop improving, and shows that s ∝ 1/√R is the scaling under which learning is stable in R
("rank-stabilised"); tutorial 07, section 3 measures both. PEFT's defaults differ from LoRAConfig's: lora_alpha 8
there, alpha = 2r here (s = 2 at every rank, a common choice: 16 at the default r = 8).

Which modules: targets names the linears of every block as PEFT does, by suffix of the module name:
"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "all-linear" (all four). Bare "c_proj" is ambiguous in GPT-2 (the
attention and the MLP both have one) and, as in PEFT, matches BOTH. One block's module, "h.3.attn.c_attn", also works.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..config import LINEAR_MODULES
from ..errors import MiniftError
from ..quant import CODES

ALL_LINEAR = "all-linear"
SHORT_TARGETS = ("c_attn", "attn.c_attn", "c_proj", "attn.c_proj", "c_fc", "mlp.c_fc", "mlp.c_proj")
INITS = ("default", "gaussian", "pissa")
DORA_NORMS = ("exact", "detached")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class LoRAConfig:
    """What to adapt and how; PEFT's LoraConfig name of each field in brackets.

    r         rank R of the update, an integer > 0 and ≤ min(in, out) of every adapted matrix   [r]
    alpha     α > 0; the update is scaled by s = α/r, or α/√r with rslora. None (the default)    [lora_alpha]
              means 2r, so s = 2 whatever the rank; the config holds the number once made
    targets   module names matched by suffix (see the module docstring), or "all-linear"        [target_modules]
    rslora    scale α/√r instead of α/r (Kalajdzievski 2023)                                     [use_rslora]
    dropout   adapter-dropout probability in [0, 1) on the LoRA branch's input                  [lora_dropout]
    init      "default" | "gaussian" | "pissa" (minift/lora/inits.py)                            [init_lora_weights]
    use_dora  DoRA instead of plain LoRA (minift/lora/dora.py)                                   [use_dora]
    dora_norm "exact" (the full derivative, the default) | "detached" (DoRA §4.3, PEFT): how the DoRA backward
              treats the column norm; the forward is the same
    quant     None (plain LoRA) | "nf4" | "int4" | "fp4": QLoRA, the adapted W kept in 4 bits     [bnb_4bit_quant_type]
              with that code (minift/quant.py, minift/lora/qlora.py)
    double_quant  QLoRA's double quantisation of the block scales (quant only)     [bnb_4bit_use_double_quant]

    (quant and double_quant are bitsandbytes' settings of the base in transformers, not PEFT's LoraConfig.)

    The defaults are `minift finetune`'s (the CLI reads them from here): r = 8, α = 2r, every linear of every block.
    """
    r: int = 8
    alpha: float | None = None          # None: 2r (resolved in __post_init__)
    targets: tuple = (ALL_LINEAR,)
    rslora: bool = False
    dropout: float = 0.0
    init: str = "default"
    use_dora: bool = False
    dora_norm: str = "exact"
    quant: str | None = None
    double_quant: bool = False

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise MiniftError(f"LoRA rank r={self.r!r} must be an integer > 0")
        if self.alpha is None:                     # α = 2r: the frozen dataclass holds the number from here on
            object.__setattr__(self, "alpha", 2 * int(self.r))
        if not _is_number(self.alpha) or not self.alpha > 0 or not math.isfinite(self.alpha):
            raise MiniftError(f"LoRA alpha={self.alpha!r} must be a number > 0")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise MiniftError(f"LoRA dropout={self.dropout!r} must be a number in [0, 1)")
        if self.init not in INITS:
            raise MiniftError(f"LoRA init={self.init!r} is not one of {INITS}")
        if self.dora_norm not in DORA_NORMS:
            raise MiniftError(f"dora_norm={self.dora_norm!r} is not one of {DORA_NORMS}")
        self._check_quant()
        for flag in ("rslora", "use_dora", "double_quant"):
            if not isinstance(getattr(self, flag), bool):
                raise MiniftError(f"LoRA {flag}={getattr(self, flag)!r} must be True or False")
        object.__setattr__(self, "r", int(self.r))
        for name in ("alpha", "dropout"):          # NumPy scalars as Python numbers: they go to JSON files
            if isinstance(getattr(self, name), np.generic):
                object.__setattr__(self, name, getattr(self, name).item())
        object.__setattr__(self, "targets", normalise_targets(self.targets))

    def _check_quant(self):
        if self.quant is not None and self.quant not in CODES:
            raise MiniftError(f"LoRA quant={self.quant!r} is not one of {CODES} (or None: plain LoRA)")
        if self.double_quant is True and self.quant is None:
            raise MiniftError("LoRA double_quant=True quantises the scales of a 4-bit base: it needs quant "
                              f"(one of {CODES})")
        if self.quant is not None and self.use_dora:
            raise MiniftError("QLoRA with DoRA (quant with use_dora) is not written in minift: DoRA's magnitude "
                              "needs the column norms of W + ΔW; choose one")

    @property
    def scale(self) -> float:
        """s = α/r, or α/√r with rsLoRA (a Python float, so it never changes an array's dtype)."""
        return float(self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r)


def normalise_targets(targets) -> tuple:
    """targets as a tuple of valid names; an unknown name is an error that lists the valid ones."""
    names = (targets,) if isinstance(targets, str) else tuple(targets) if targets is not None else ()
    if not names or not all(isinstance(t, str) for t in names):
        raise MiniftError(f"LoRA targets={targets!r} must be a module name or a non-empty list of them")
    names = tuple(t.removeprefix("transformer.") for t in names)     # PEFT may save full names
    if ALL_LINEAR in names and len(names) > 1:
        raise MiniftError(f"LoRA targets={targets!r}: '{ALL_LINEAR}' already means every linear; give it alone")
    block_module = re.compile(r"h\.\d+\.(" + "|".join(re.escape(m) for m in LINEAR_MODULES) + ")")
    for t in names:
        if t != ALL_LINEAR and t not in SHORT_TARGETS and not block_module.fullmatch(t):
            raise MiniftError(f"unknown LoRA target {t!r}; valid targets: {ALL_LINEAR!r}, "
                              f"{', '.join(repr(s) for s in SHORT_TARGETS)} (bare 'c_proj' means both attn.c_proj "
                              f"and mlp.c_proj, as in PEFT), or one block's module such as 'h.0.attn.c_attn'")
    return names


def resolve_modules(n_layer: int, targets) -> list:
    """The adapted modules ("h.{i}.attn.c_attn", ...) in model order. PEFT's rule: a target matches a module whose
    name equals it or ends with "." + it; "all-linear" matches the four linears of every block (not the LM head)."""
    targets = normalise_targets(targets)
    every = [f"h.{i}.{m}" for i in range(n_layer) for m in LINEAR_MODULES]
    if targets == (ALL_LINEAR,):
        return every
    for t in targets:
        if not any(m == t or m.endswith("." + t) for m in every):
            raise MiniftError(f"LoRA target {t!r} matches no module of this {n_layer}-block model")
    return [m for m in every if any(m == t or m.endswith("." + t) for t in targets)]
