"""PEFT's adapter folder, both ways: what save_peft writes and what load_peft checks before it loads.

The layout of Hugging Face PEFT's save_pretrained (peft/utils/save_and_load.py, peft/config.py), so that
peft.PeftModel.from_pretrained loads a minift adapter onto transformers' GPT-2 and minift loads PEFT's. minift writes
the files itself and does not depend on peft. load_peft (minift/lora/attach.py) uses the checks below, then attaches.

Files: adapter_config.json + adapter_model.safetensors (+ a README.md model card, as PEFT writes one):
    base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight       [R, I]
    base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight       [O, R]
    base_model.model.transformer.h.{i}.attn.c_attn.lora_magnitude_vector   [O]   (DoRA)
    base_model.model.score.weight                                      [K, C]  (a classification head: PEFT's
                                                                                modules_to_save ["score"] saves it
                                                                                under this key)
adapter_config.json carries PEFT's fields (fan_in_fan_out = True: GPT-2's Conv1D) and, under the key "minift",
the base model's fingerprint (GPT.fingerprint()): an adapter is only meaningful on the base it was trained on, and
load_peft refuses any other. PEFT ignores that key (with a warning about an unexpected keyword).
PiSSA changes the base, so the file records two fingerprints: the residual base the adapter sits on and the
original base. load_peft accepts either: on the residual base (saved with model.save_pretrained after attach) it
loads as is; on the original base it recomputes the residual with the same top-R SVD (equal up to rounding).
PEFT reads init_lora_weights = "pissa" as "this adapter goes on the ORIGINAL base": loading runs its pissa_init
on whatever base it is given and only then loads A and B. So give PEFT the original base (on the residual one it
would subtract the top-R part twice); a PEFT-written PiSSA file, which records no fingerprint, is read by load_peft
the same way.
QLoRA's file is a plain LoRA file for PEFT (the 4 bits belong to the base: in transformers they are
bitsandbytes' quantization_config, not the adapter's); "minift" records the code and double quantisation. Its base
fingerprint is the dequantised base's; load_peft also takes the original float base, and quantises either again
(the codes come back bit for bit; double-quantised scales are re-derived, within half their 8-bit step). The model
card says how to use the adapter with PEFT and with bitsandbytes, and how exact each way is.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..backend import to_numpy
from ..config import HEAD_WEIGHT
from ..errors import MiniftError
from ..formats.io import (atomic_write_text, check_folder_target, check_weights, load_safetensors, save_json,
                          save_safetensors)
from .config import ALL_LINEAR, LoRAConfig, resolve_modules

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.transformer."      # PEFT's key for a minift name: prefix + "h.0.attn.c_attn..."
PEFT_HEAD_KEY = "base_model.model.score.weight"    # modules_to_save ["score"], saved without ".modules_to_save.default"
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}   # init -> PEFT's init_lora_weights
MODEL_CARD_FILE = "README.md"
# The PEFT release whose save_pretrained files save_peft follows: adapter_config.json's keys and README.md's model
# card. minift writes them itself and does not depend on peft, so adapter_config.json's peft_version records this
# format version, not an installed PEFT. tests/lora/test_peft_interop.py loads the files with whatever PEFT is
# installed.
PEFT_FORMAT_VERSION = "0.21.2"


# ---- writing -------------------------------------------------------------------------------------------------------

def save_peft(lora, path, base_model_name_or_path=None):
    """Write the adapters of the handle `lora` (minift/lora/attach.py's LoRA) as adapter_config.json +
    adapter_model.safetensors (PEFT's layout) into the folder `path` (made if need be; an existing file there is
    refused). lora.save_peft(path) calls this."""
    path = check_folder_target(path, "adapter folder")
    tensors = {PEFT_PREFIX + k: to_numpy(v) for k, v in lora.params.items()}
    has_head = lora.model.head_kind == "classification" and HEAD_WEIGHT in lora.model.params
    if has_head:
        tensors[PEFT_HEAD_KEY] = to_numpy(lora.model.params[HEAD_WEIGHT])
    save_safetensors(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    config = peft_config(lora, has_head, base_model_name_or_path)
    save_json(config, path / CONFIG_FILE)
    atomic_write_text(path / MODEL_CARD_FILE, model_card(config))     # README.md, as PEFT writes one


def peft_config(lora, has_head, base_model_name_or_path) -> dict:
    """adapter_config.json's contents for the handle `lora`: PEFT's fields, and minift's under "minift"."""
    c = lora.config
    return {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if has_head else "CAUSAL_LM",
        "r": c.r, "lora_alpha": c.alpha, "lora_dropout": c.dropout, "use_rslora": c.rslora,
        "use_dora": c.use_dora, "init_lora_weights": PEFT_INIT[c.init],
        "target_modules": ALL_LINEAR if c.targets == (ALL_LINEAR,) else list(c.targets),
        "fan_in_fan_out": True,                          # GPT-2's Conv1D stores W as [in, out]
        "bias": "none", "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "modules_to_save": ["score"] if has_head else None,
        "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "peft_version": PEFT_FORMAT_VERSION,
        "minift": {
            "base_fingerprint": lora.base_fingerprint,
            "original_base_fingerprint": lora.original_fingerprint,
            "pissa_residual_base": c.init == "pissa",
            "dora_norm": c.dora_norm,
            "labels": lora.model.labels if has_head else None,
            "quant": c.quant, "double_quant": c.double_quant,
        },
    }

MODEL_CARD = """---
library_name: peft
{front}pipeline_tag: {pipeline}
tags:
{tags}
---

# A {method} adapter for a GPT-2 model, made with minift

minift (a GPT-2 in NumPy/CuPy with hand-written forward and backward passes) made this adapter and wrote its
files in the layout of PEFT {peft_version}, without PEFT itself.

- Base model: {base}. An adapter only means something on the base it was made on: minift's load_peft refuses
  any other (base fingerprint `{fingerprint}`).
- Method: {method}, rank r = {r}, lora_alpha = {alpha}, scale {scale_rule} = {scale:g}; dropout {dropout};
  initialisation {init}.
- Adapted layers: {targets}.
- {head}
{qlora}
What it was trained on, and how long, is not recorded here: these files hold what the adapter is. The run folder
it came from (`minift finetune` or `minift compare --out`) has the rest.

## Load it

With minift: `lora = minift.load_peft(minift.GPT.from_pretrained(BASE), ADAPTER)`.

With PEFT, onto transformers' GPT-2:

```python
from peft import PeftModel
from transformers import {hf_class}
model = PeftModel.from_pretrained({hf_class}.from_pretrained(BASE), ADAPTER)
```
{pissa}
## Framework versions

- minift {minift_version}
- PEFT {peft_version} (the file format; written by minift, not by PEFT)
"""


QLORA_CARD = """- QLoRA: trained on the base quantised to 4 bits ({code}, blocks of 64{dq}); the fingerprint above is
  the dequantised base's. The adapter belongs with that base:
  - minift: `load_peft` on the original float base quantises it again, bit for bit, and computes exactly as in
    training; on the dequantised base too, except that double-quantised scales are derived again (within half their
    8-bit step: the outputs differ slightly).
  - PEFT, exactly: on the dequantised base, which minift writes with `lora.model.to().save_pretrained(DEQUANTISED)`
    after `load_peft` (a copy of a 4-bit model is dequantised). On the original float base the adapter runs on a
    base that differs from its own by the quantisation error.
  - transformers + bitsandbytes (a CUDA GPU): {bnb} minift has not run bitsandbytes (it needs a CUDA GPU).
"""
BNB_NOTE = {"nf4": "load BASE with `quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
                   "bnb_4bit_quant_type=\"nf4\", bnb_4bit_use_double_quant={dq})`, then the adapter with PEFT. "
                   "bitsandbytes' NF4 has the same 16 values and blocks of 64, so the codes should agree but for "
                   "ties; its double quantisation uses another 8-bit code, so those scales differ slightly: expect "
                   "close, not identical, outputs.",
            "int4": "bitsandbytes has no int4 type (only nf4 and fp4): it cannot rebuild this base.",
            "fp4": "bitsandbytes' fp4 is not minift's OCP e2m1 table (its smallest value and its pattern order "
                   "differ): it cannot rebuild this base."}


def model_card(config: dict) -> str:
    """The README.md of an adapter folder, from its adapter_config.json contents: what PEFT's save_pretrained writes
    (YAML front matter with library_name, base_model, pipeline_tag, tags; a "Framework versions" list), filled with
    what minift knows (the base, the method and its settings, how to load the folder) instead of PEFT's template of
    "[More Information Needed]" sections."""
    from ..version import __version__
    base, extra = config["base_model_name_or_path"], config["minift"]
    classifies = config["task_type"] == "SEQ_CLS"
    init = {True: "PEFT's default (A kaiming-uniform, B = 0)", "gaussian": "gaussian (A ~ N(0, 1/r²), B = 0)",
            "pissa": "PiSSA (the top-r singular part of each weight)"}[config["init_lora_weights"]]
    targets = config["target_modules"]
    return MODEL_CARD.format(
        front=f"base_model: {json.dumps(base)}\n" if base else "",
        pipeline="text-classification" if classifies else "text-generation",
        tags="\n".join(f"- {json.dumps(t)}" for t in ([f"base_model:adapter:{base}"] if base else [])
                       + ["lora", "minift"]),
        method="DoRA" if config["use_dora"] else "QLoRA" if extra.get("quant") else "LoRA",
        peft_version=config["peft_version"],
        base=f"`{base}`" if base else "not recorded (save_peft's base_model_name_or_path names it)",
        fingerprint=extra["base_fingerprint"], r=config["r"], alpha=config["lora_alpha"],
        scale_rule="α/√r (rsLoRA)" if config["use_rslora"] else "α/r",
        scale=config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"]),
        dropout=config["lora_dropout"], init=init,
        targets="every linear of every block (c_attn, attn.c_proj, c_fc, mlp.c_proj)" if targets == ALL_LINEAR
        else ", ".join(targets),
        head=f"A classification head `score` with labels {extra['labels']}, saved whole (PEFT's modules_to_save)."
        if classifies else "No head of its own: a language-model adapter (the LM head is the base's, tied to wte).",
        hf_class="GPT2ForSequenceClassification" if classifies else "GPT2LMHeadModel",
        pissa="\nPiSSA: give PEFT the original base; it subtracts the top-r part itself when it loads the adapter.\n"
        if config["init_lora_weights"] == "pissa" else "",
        qlora=QLORA_CARD.format(code=extra["quant"], dq=", double-quantised scales" if extra.get("double_quant")
                                else "", bnb=BNB_NOTE[extra["quant"]].format(dq=bool(extra.get("double_quant"))))
        if extra.get("quant") else "",
        minift_version=__version__)


# ---- reading -------------------------------------------------------------------------------------------------------

def config_from_peft(peft: dict, where) -> LoRAConfig:
    """A LoRAConfig from PEFT's adapter_config.json fields; anything minift cannot reproduce is an error."""
    if not isinstance(peft, dict):
        raise MiniftError(f"{where} holds a JSON {type(peft).__name__}, not the object of PEFT's adapter config")
    if not isinstance(peft.get("minift") or {}, dict):
        raise MiniftError(f"{where}: its \"minift\" entry is a {type(peft['minift']).__name__}, not an object")
    if peft.get("peft_type") != "LORA":
        raise MiniftError(f"{where}: peft_type is {peft.get('peft_type')!r}, minift reads only 'LORA' adapters")
    for key, neutral in (("rank_pattern", {}), ("alpha_pattern", {}), ("layers_to_transform", None),
                         ("lora_bias", False), ("bias", "none")):
        if peft.get(key, neutral) not in (neutral, None):
            raise MiniftError(f"{where}: {key}={peft[key]!r} is not supported by minift (expected {neutral!r})")
    inits = {True: "default", False: "default", "gaussian": "gaussian", "pissa": "pissa"}
    init = peft.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)) or init not in inits:
        raise MiniftError(f"{where}: init_lora_weights={init!r} is not supported by minift "
                          f"(one of {list(inits)})")
    if peft.get("lora_alpha") is None:      # LoRAConfig would read None as 2r: a file must say what it was trained with
        raise MiniftError(f"{where}: lora_alpha is missing (PEFT's adapter config always states it)")
    targets = peft.get("target_modules")
    meta = peft.get("minift") or {}
    try:
        return LoRAConfig(r=peft.get("r"), alpha=peft.get("lora_alpha"), dropout=peft.get("lora_dropout", 0.0),
                          targets=sorted(targets) if isinstance(targets, (list, set)) else targets,
                          rslora=bool(peft.get("use_rslora", False)), use_dora=bool(peft.get("use_dora", False)),
                          init=inits[init], dora_norm=meta.get("dora_norm", "exact"), quant=meta.get("quant"),
                          double_quant=bool(meta.get("double_quant", False)))
    except MiniftError as e:
        raise MiniftError(f"{where}: {e}") from None


def check_base(model, meta: dict, config: LoRAConfig, where) -> bool:
    """Is the model the adapter's base? Returns True when PiSSA's residual must still be made from the original."""
    if not meta:              # a PEFT-written file records no base; PEFT's rule: "pissa" means the original base,
        return config.init == "pissa"          # from which loading makes the residual (PEFT's pissa_init)
    fp = model.fingerprint()
    if fp == meta.get("base_fingerprint"):
        return False          # the recorded base (QLoRA: the dequantised one, which quantises to the same codes)
    if (config.init == "pissa" or config.quant is not None) and fp == meta.get("original_base_fingerprint"):
        return config.init == "pissa"   # the original base: remake the residual and/or the 4 bits, as attach did
    raise MiniftError(f"{where} was trained on a different base model (fingerprint "
                      f"{meta.get('base_fingerprint')}; this model's is {fp}). Load the base it was made for.")


def _expected_shapes(model, config: LoRAConfig) -> dict:
    """minift name -> shape of every tensor an adapter file for this model and config must hold."""
    shapes = {}
    for m in resolve_modules(model.cfg.n_layer, config.targets):
        I, O = model.params[m + ".weight"].shape
        shapes[m + ".lora_A.weight"], shapes[m + ".lora_B.weight"] = (config.r, I), (O, config.r)
        if config.use_dora:
            shapes[m + ".lora_magnitude_vector"] = (O,)
    return shapes


def read_tensors(path: Path, model, config) -> tuple[dict, object]:
    """(minift name -> host array, the head's weight [K, C] or None), every name and shape checked, and every value:
    floating point and finite (io.check_weights), so that a NaN in the file is refused before it reaches the model."""
    tensors, _ = load_safetensors(path / WEIGHTS_FILE, "adapter weights")
    check_weights(tensors, path / WEIGHTS_FILE)
    head_weight = tensors.pop(PEFT_HEAD_KEY, None)
    found = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    expected = _expected_shapes(model, config)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise MiniftError(f"{path / WEIGHTS_FILE} does not match its {CONFIG_FILE} on this model: "
                          f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, shape in expected.items():
        if tuple(found[name].shape) != shape:
            raise MiniftError(f"{path / WEIGHTS_FILE}: {name} has shape {tuple(found[name].shape)}, expected {shape}")
    if head_weight is not None and head_weight.shape[1:] != (model.cfg.n_embd,):
        raise MiniftError(f"{path / WEIGHTS_FILE}: the head score.weight has shape {head_weight.shape}, "
                          f"expected (labels, {model.cfg.n_embd})")
    return found, head_weight
