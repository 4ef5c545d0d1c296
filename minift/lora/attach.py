"""Attaching adapters to a model, and the handle that holds them: attach_lora (fresh adapters), load_peft (adapters
from a PEFT folder) and LoRA, what both return (merge, unmerge, merged_model, train/eval, detach, save_peft).

PEFT's get_peft_model / PeftModel.from_pretrained and LoraModel (peft/tuners/lora/model.py), for minift's GPT: an
adapter sits in model.adapters under its module's name, and the model calls it in place of the plain linear.

What trains: attach_lora freezes every base parameter (adds it to model.frozen) except a classification head
`score.weight`, which keeps training as PEFT's `modules_to_save` does for a sequence-classification task (a fresh
head is random: it has to learn). detach() unfreezes exactly what attach froze.

Adapter dropout draws its masks from the handle's own seeded generator, one for all its adapters (adapter_rng(model)
finds it; lora.rng_state() / lora.set_rng_state() save and restore it). The model does not tell an adapter whether a
call is training (loss_and_grads) or evaluation (forward, loss), so the handle has a mode, as a torch module does:
lora.train() (the mode after attach_lora, as after PEFT's get_peft_model) and lora.eval() (the mode after load_peft,
as after PEFT's from_pretrained). Dropout is applied only when dropout > 0 and in train mode: call lora.eval() before
evaluating. An adapter's forward also accepts train=True/False, which overrides the mode.

QLoRA (config.quant set): each adapted W is quantised to 4 bits as its adapter is made (after PiSSA's residual, if
any), and the model's parameter becomes that Quantized: model.params["h.0.attn.c_attn.weight"] is the 4-bit W, the
float one is dropped. detach() puts W̃ = deq(W) back as floats; merged_model() gives W̃ + ΔW.
"""
from __future__ import annotations

import numpy as np

from ..config import HEAD_WEIGHT
from ..errors import MiniftError
from ..formats.io import as_path, load_json
from ..model import GPT
from . import peft_files
from .config import LoRAConfig, resolve_modules
from .dora import DoRALinear
from .inits import init_factors, pissa_factors
from .op import LoRALinear
from .qlora import QLoRALinear
from .peft_files import CONFIG_FILE, WEIGHTS_FILE, check_base, config_from_peft, read_tensors


def _check_attachable(model, config: LoRAConfig, modules: list):
    if model.adapters:
        raise MiniftError(f"this model already has adapters on {sorted(model.adapters)[:3]}...: detach them first "
                          "(one LoRA per model)")
    for m in modules:
        I, O = model.params[m + ".weight"].shape
        if config.r > min(I, O):
            raise MiniftError(f"LoRA rank r={config.r} exceeds min(in, out) = {min(I, O)} of {m}.weight [{I}, {O}]: "
                              "a rank-r update cannot have more rank than the matrix")


def _check_model(model) -> None:
    if not isinstance(model, GPT):
        raise MiniftError(f"model must be a minift.GPT, got {type(model).__name__}")


def _seed_sequences(seed):
    """Two independent streams from one seed: the init draws, and the adapter-dropout masks."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MiniftError(f"seed={seed!r} must be an integer >= 0")
    init_seq, dropout_seq = np.random.SeedSequence(int(seed)).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(dropout_seq)


def _make_adapter(model, module, config, init_rng, dropout_rng, replace_base):
    """Draw the factors of one module (and, for PiSSA with replace_base, replace W by the residual in place)."""
    w = model.params[module + ".weight"]                               # (I, O)
    A, B, residual = init_factors(w, config.r, config.scale, config.init, init_rng)
    if residual is not None and replace_base:
        w[...] = residual                                              # in place: the same array object
    if config.use_dora:
        return DoRALinear(module, A, B, w, config.scale, config.dropout, dropout_rng, norm=config.dora_norm)
    if config.quant is not None:
        adapter = QLoRALinear(module, w, A, B, config.scale, config.dropout, dropout_rng, code=config.quant,
                              double_quant=config.double_quant)
        model.params[module + ".weight"] = adapter.Qw                  # the model keeps the 4 bits, not the float W
        return adapter
    return LoRALinear(module, A, B, config.scale, config.dropout, dropout_rng)


def attach_lora(model, config: LoRAConfig | None = None, seed: int = 0) -> "LoRA":
    """Freeze the base model and attach one adapter per targeted linear of every block; return the handle.

    model.frozen gains every base parameter except a classification head `score.weight` (it keeps training, as
    PEFT's modules_to_save). seed draws the init (A; PiSSA draws nothing) and seeds the adapter-dropout stream.
    """
    _check_model(model)
    config = LoRAConfig() if config is None else config
    if not isinstance(config, LoRAConfig):
        raise MiniftError(f"config must be a LoRAConfig, got {type(config).__name__}")
    modules = resolve_modules(model.cfg.n_layer, config.targets)
    _check_attachable(model, config, modules)
    return _attach(model, config, modules, seed, replace_base=True)


def _attach(model, config, modules, seed, replace_base) -> "LoRA":
    """attach_lora's work, after its checks; load_peft passes replace_base=False when the base already is PiSSA's
    residual."""
    init_rng, dropout_rng = _seed_sequences(seed)
    original = model.fingerprint()
    for m in modules:
        model.adapters[m] = _make_adapter(model, m, config, init_rng, dropout_rng, replace_base)
    froze = set(model.params) - {HEAD_WEIGHT} - model.frozen
    model.frozen |= froze
    return LoRA(model, config, modules, froze, dropout_rng, base_fingerprint=model.fingerprint(),
                original_fingerprint=original)


class LoRA:
    """What attach_lora returns: the adapters of one model, handled together.

    lora.params              name -> array of every adapter parameter ("h.0.attn.c_attn.lora_A.weight" [R, I], ...)
    lora.merge() / unmerge() fold ΔW into the base weights and back
    lora.train() / eval()    adapter-dropout mode;  lora.rng_state() / set_rng_state(state) its generator
    lora.detach()            remove the adapters and unfreeze what attach froze
    lora.save_peft(path)     a PEFT adapter folder;  minift.load_peft(model, path) reads one back
    """

    def __init__(self, model, config, modules, froze, dropout_rng, base_fingerprint, original_fingerprint):
        self.model, self.config, self.modules = model, config, list(modules)
        self._froze, self._rng = set(froze), dropout_rng
        self.base_fingerprint = base_fingerprint            # the base the adapters sit on (PiSSA: the residual)
        self.original_fingerprint = original_fingerprint    # the base before attach_lora (differs only for PiSSA)
        self.detached = False

    def __repr__(self):
        state = "detached" if self.detached else ("merged" if self.merged else "attached")
        c = self.config
        kind = "DoRA, " if c.use_dora else f"{c.quant}{' double-quantised' if c.double_quant else ''} base, " \
            if c.quant else ""
        return (f"LoRA(r={c.r}, alpha={c.alpha}, scale={c.scale:g}, {kind}{len(self.modules)} modules, {state})")

    @property
    def adapters(self) -> dict:
        self._check_attached()
        return {m: self.model.adapters[m] for m in self.modules}

    @property
    def params(self) -> dict:
        """name -> array of every adapter parameter (the very arrays the adapters compute with)."""
        return {k: v for a in self.adapters.values() for k, v in a.params.items()}

    def trainable_params(self) -> dict:
        """The adapter parameters and, when it trains, the classification head (what an optimizer should get)."""
        out = self.params
        if HEAD_WEIGHT in self.model.params and self.model.trains(HEAD_WEIGHT):
            out[HEAD_WEIGHT] = self.model.params[HEAD_WEIGHT]
        return out

    @property
    def merged(self) -> bool:
        return any(a.merged for a in self.adapters.values())

    @property
    def training(self) -> bool:
        return all(a.training for a in self.adapters.values())

    def train(self) -> "LoRA":
        """Adapter dropout on (when config.dropout > 0): the mode for loss_and_grads."""
        for a in self.adapters.values():
            a.training = True
        return self

    def eval(self) -> "LoRA":
        """Adapter dropout off: the mode for evaluation (model.forward, model.loss)."""
        for a in self.adapters.values():
            a.training = False
        return self

    def rng_state(self) -> dict:
        """The adapter-dropout generator's state (JSON-able), for checkpoints."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict):
        self._rng.bit_generator.state = state

    def effective_weights(self) -> dict:
        """"h.0.attn.c_attn.weight" -> the weight each adapted linear computes with [I, O] (W + ΔW; for DoRA
        m · V / ‖V‖_c), without changing the model: e.g. for analysis.py's comparisons with the base."""
        P = self.model.params
        return {m + ".weight": a.effective_weight(P[m + ".weight"]) for m, a in self.adapters.items()}

    def tuned_weights(self, base: dict) -> dict:
        """"h.0.attn.c_attn.weight" -> each adapted linear's weight after tuning, to compare with the float base
        `base` (name -> W0, on the model's device): effective_weights(), except under QLoRA, where it is the float
        base the 4 bits were made from (W0, or PiSSA's residual W0 − s·B0A0, rebuilt by the same SVD) + ΔW: the
        update learned, without the 4-bit base's quantisation error (deq(W) − W0), which is no part of it."""
        if self.config.quant is None:
            return self.effective_weights()
        c, out = self.config, {}
        for m, a in self.adapters.items():
            w0 = base[m + ".weight"]                                       # (I, O)
            if c.init == "pissa":
                w0 = pissa_factors(w0, c.r, c.scale)[2]                    # (I, O) the residual that was quantised
            out[m + ".weight"] = w0 + a.delta_weight()                     # (I, O)
        return out

    def merged_model(self):
        """A new model with each adapted W replaced by W + ΔW, and no adapters: PEFT's merge_and_unload, done on a
        copy, so this model and its adapters stay as they are. One set of weights to deploy (article §2.1), or the
        base of a next fine-tune (the MIT paper's continual learning merges each task's adapter before the next
        task gets a fresh one: tutorial 10, section 7)."""
        merged = self.model.to()                          # parameters, head, frozen set; adapters are not copied
        for name, w in self.effective_weights().items():
            merged.params[name][...] = w                  # [I, O]: W + ΔW (DoRA: m · V / ‖V‖_c; QLoRA: W̃ + ΔW)
        merged.frozen -= self._froze                      # what attach_lora froze trains again, as after detach()
        return merged

    def merge(self):
        """W ← W + ΔW in place for every adapted module (for deployment: model.save_pretrained then writes it)."""
        if self.merged:
            raise MiniftError("the adapters are already merged: merging twice would add ΔW twice")
        for m, a in self.adapters.items():
            a.merge(self.model.params[m + ".weight"])

    def unmerge(self):
        """W ← W − ΔW in place: the base weights again, up to float rounding."""
        if not self.merged:
            raise MiniftError("the adapters are not merged: nothing to unmerge")
        for m, a in self.adapters.items():
            a.unmerge(self.model.params[m + ".weight"])

    def detach(self):
        """Remove the adapters from the model and unfreeze what attach_lora froze. The base weights stay as they are:
        merged weights if merged (PEFT's merge_and_unload), else the base (for PiSSA: the residual base; for QLoRA
        the dequantised W̃ = deq(W) in the model's dtype, since the float W was dropped at attach)."""
        self._check_attached()
        for m in self.modules:
            adapter = self.model.adapters.pop(m)
            if isinstance(adapter, QLoRALinear):
                self.model.params[m + ".weight"] = adapter.dequantized_weight(self.model.dtype)   # [I, O]
        self.model.frozen -= self._froze
        self.detached = True

    def _check_attached(self):
        if self.detached:
            raise MiniftError("this LoRA was detached from its model; attach a new one with attach_lora")

    # ---- files ------------------------------------------------------------------------------------------------

    def save_peft(self, path, base_model_name_or_path=None):
        """Write adapter_config.json + adapter_model.safetensors (PEFT's layout) into the folder `path` (made if
        need be; an existing file there is refused): peft_files.save_peft."""
        peft_files.save_peft(self, path, base_model_name_or_path)


def load_peft(model, path, seed: int = 0) -> LoRA:
    """Attach the adapter saved in the folder `path` (by save_peft, or by PEFT for a GPT-2) to `model`; return the
    handle, in eval mode (adapter dropout off, as PEFT's from_pretrained). A classification head in the file was
    trained with the adapters (PEFT's modules_to_save): it replaces any head the model has, with the labels recorded
    beside it (a base that was itself a classifier may have had other labels, or the same in another order).
    seed: the adapter-dropout stream.
    Everything is checked before the model is touched: a refused file leaves the model as it was."""
    _check_model(model)
    path = as_path(path, "adapter folder")
    if not path.is_dir():
        raise MiniftError(f"adapter folder {path} is a file; give the folder save_peft wrote" if path.exists() else
                          f"adapter folder not found: {path}")
    if not (path / CONFIG_FILE).is_file() and (path / "adapter" / CONFIG_FILE).is_file():
        raise MiniftError(f"{path} is a LoRA run's folder, not an adapter folder: its adapter is {path / 'adapter'}")
    peft = load_json(path / CONFIG_FILE, "adapter config")
    config = config_from_peft(peft, path / CONFIG_FILE)
    meta = peft.get("minift") or {}
    modules = resolve_modules(model.cfg.n_layer, config.targets)
    _check_attachable(model, config, modules)
    make_residual = check_base(model, meta, config, path)
    found, head_weight = read_tensors(path, model, config)
    labels = meta.get("labels")
    if head_weight is not None and labels and len(labels) != head_weight.shape[0]:
        raise MiniftError(f"{path}: {CONFIG_FILE} records {len(labels)} labels ({labels}) but the head in "
                          f"{WEIGHTS_FILE} has {head_weight.shape[0]} rows")
    if head_weight is not None:              # the file's head, with its labels, in place of the model's
        same_shape = HEAD_WEIGHT in model.params and model.params[HEAD_WEIGHT].shape == head_weight.shape
        model.add_classification_head(labels or (model.labels if same_shape else None)
                                      or [f"LABEL_{i}" for i in range(head_weight.shape[0])])
    lora = _attach(model, config, modules, seed, replace_base=make_residual)
    arrays = lora.params
    for name, value in found.items():
        arrays[name][...] = model.xp.asarray(np.asarray(value, dtype=model.dtype))   # in place
    if head_weight is not None:
        model.params[HEAD_WEIGHT][...] = model.xp.asarray(np.asarray(head_weight, dtype=model.dtype))
    if config.quant is None:   # (QLoRA's own is exact from the float base, and tells the truth where it is not)
        lora.base_fingerprint = meta.get("base_fingerprint", lora.base_fingerprint)   # as recorded at training
    lora.original_fingerprint = meta.get("original_base_fingerprint", lora.original_fingerprint)
    return lora.eval()


def adapter_rng(model):
    """The generator that draws the adapters' dropout masks (LoRA's handle gives all its adapters one), or None."""
    return next((a.rng for a in model.adapters.values() if getattr(a, "rng", None) is not None), None)
