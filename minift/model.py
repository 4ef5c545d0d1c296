"""The GPT-2 model: parameters, a forward that is a list of op calls, and a backward that is that list reversed.

Letters: B batch, T time, C channels (n_embd), V vocab, H heads, F = 4C the MLP's width, K labels.

Architecture (GPT-2, Radford et al. 2019; Hugging Face `GPT2LMHeadModel`):

    x = wte[ids] + wpe[:T]                                   embedding
    for each block i:                                        pre-LayerNorm residual blocks
        x = x + c_proj(attention(c_attn(ln_1(x))))
        x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))
    h = ln_f(x)
    logits = h @ wteᵀ                                        LM head tied to the token embedding
    (or, with a classification head: logits = h[last real token] @ scoreᵀ)

The backward visits the same calls in reverse. Two rules carry the whole of it:
  - a residual stream fans out (x feeds the branch and the skip), so its gradient is the SUM of the two paths;
  - `wte` is used twice (embedding and LM head), so its gradient is the SUM of both contributions.
Gradients are only computed for trainable parameters: a frozen weight never pays for its weight-gradient matmul.
And the backward goes only as far down as something trains (`backward_floor`): below the lowest trainable tensor no
gradient is wanted, so those blocks run their forward without keeping caches and have no backward at all.

LayerNorm, attention and GELU come through minift/dispatch.py, which runs their fast twins (minift/fast) or, with
MINIFT_REFERENCE=1, the reference ops (minift/ops) alone; the other ops are called from minift/ops directly.

Parameters are a flat dict with Hugging Face GPT-2's names (without the "transformer." prefix) and layouts: linear
weights are [in, out] (GPT-2's Conv1D), so loading a real checkpoint is a direct mapping (see `hf.py`). Under QLoRA
an adapted linear's weight is a minift.quant.Quantized (4 bits a weight) instead of an array, and only its adapter
computes with it (minift/lora/qlora.py).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from .backend import get_xp, make_rng, randn, resolve_device, resolve_dtype, to_numpy
from .config import LINEAR_MODULES as LINEAR_MODULES    # re-exported: minift.model.LINEAR_MODULES stays
from .config import GPTConfig, check_labels, param_shapes
from .dispatch import (attention_backward, attention_forward, dequantize, gelu_backward, gelu_forward,
                       layernorm_backward, layernorm_forward)
from .errors import MiniftError
from .ops import (cross_entropy_backward, cross_entropy_forward, dropout_backward, dropout_forward, embedding_backward,
                  embedding_forward, linear_backward, linear_forward, pool_last_backward, pool_last_forward)
from .quant import Quantized

HEAD_STREAM = 0x5C0E     # the classification head's own random stream, apart from the base's (add_classification_head)


def as_float(p):
    """A parameter as a float array: itself, or W̃ = deq(W) for a 4-bit Quantized weight (QLoRA's base)."""
    return dequantize(p) if isinstance(p, Quantized) else p


def init_params(cfg: GPTConfig, rng, dtype, xp) -> dict:
    """GPT-2's initialisation: weights ~ N(0, 0.02²), biases 0, LayerNorm gains 1; the two projections that write
    into the residual stream (attn.c_proj, mlp.c_proj) get std 0.02/sqrt(2·n_layer), so the stream's variance does
    not grow with depth (GPT-2 paper §2.3; nanoGPT's `c_proj.weight` rule)."""
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("c_proj.weight"):
            params[name] = randn(rng, shape, dtype, xp, std=0.02 / math.sqrt(2 * cfg.n_layer))
        elif name.endswith(".bias"):
            params[name] = xp.zeros(shape, dtype=dtype)
        elif ".ln_" in name or name.startswith("ln_f"):
            params[name] = xp.ones(shape, dtype=dtype)
        else:
            params[name] = randn(rng, shape, dtype, xp, std=0.02)
    return params


def backward_floor(trainable, n_layer: int) -> int:
    """How far down a backward has to go, from the names of the tensors that train (parameters and adapters): the
    forward position of the lowest one. -1: the embeddings (wte, which is also the tied LM head; wpe), so all the
    way down; i: block i; n_layer: ln_f; n_layer + 1: nothing in the body (a classification head alone trains).

    Below the floor no gradient is wanted: the backward stops there, and the forward keeps no caches there. So
    freezing the *lowest* blocks saves their whole backward and their activations, while freezing a higher block
    saves only its weights' xᵀ dy (its dx is still needed by the blocks below). Autograd frameworks skip the same
    work by construction (nothing below the first tensor that requires a gradient enters their graph), and more:
    they also skip the floor block's own input gradient and, inside visited blocks, whatever no trained tensor
    needs. minift stops at whole blocks, the one mechanism a reader can follow; what that leaves (the floor block's
    ln_1 dx, and c_attn's dx matmul there) is ~2% of a demo LoRA step."""
    floor = n_layer + 1
    for name in trainable:
        if name.startswith(("wte.", "wpe.")):
            return -1
        if name.startswith("h."):                                    # "h.{i}.…", adapter tensors included
            floor = min(floor, int(name.split(".")[1]))
        elif name.startswith("ln_f."):
            floor = min(floor, n_layer)
    return floor


class GPT:
    """A GPT-2 model with hand-written forward and backward passes.

    model = GPT(cfg, seed=0, dtype="float32", device="cpu")
    logits = model.forward(input_ids)                         (B, T) int -> (B, T, V)
    loss, grads = model.loss_and_grads(input_ids, targets)    grads: name -> array, for trainable parameters only

    Which parameters train is `model.frozen` (a set of names; minift/methods.py has the methods that fill it).
    Adapters (LoRA, DoRA: minift/lora/) live in `model.adapters`, module name -> adapter; an adapted linear calls
    the adapter's forward/backward instead of the plain one, and the adapter's gradients join `grads`.
    What the model ends in is `model.head_kind`: "lm" (logits over the vocabulary from the tied wte) or
    "classification" (`score.weight`, one logit per label of `model.labels`).
    """

    def __init__(self, cfg: GPTConfig, seed=0, dtype="float32", device="cpu", params: dict | None = None):
        if not isinstance(cfg, GPTConfig):
            raise MiniftError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.xp = get_xp(self.device)
        self.params = params if params is not None else init_params(cfg, make_rng(seed), self.dtype, self.xp)
        self.frozen: set[str] = set()
        self.adapters: dict = {}
        self.head_kind = "lm"            # "lm" (tied to wte) or "classification" (add_classification_head)
        self.labels: list[str] | None = None
        self.record: dict | None = None  # name -> tensor, filled when a call is made with record=True

    # ---- parameters -------------------------------------------------------------------------------------------

    def trains(self, name: str) -> bool:
        return name not in self.frozen

    def trainable_params(self) -> dict:
        """name -> array of everything an optimizer should update: unfrozen model parameters and adapter parameters."""
        out = {k: v for k, v in self.params.items() if k not in self.frozen}
        for adapter in self.adapters.values():
            out.update(adapter.trainable_params())
        return out

    def backward_floor(self, record=False) -> int:
        """The lowest position the backward reaches (module function backward_floor); recording wants every
        gradient, so it goes all the way down."""
        return -1 if record else backward_floor(self.trainable_params(), self.cfg.n_layer)

    def num_params(self, trainable_only=False) -> int:
        arrays = self.trainable_params() if trainable_only else self.all_params()
        return int(sum(a.size for a in arrays.values()))

    def all_params(self) -> dict:
        """Model parameters plus every adapter parameter (trainable or not)."""
        out = dict(self.params)
        for adapter in self.adapters.values():
            out.update(adapter.params)
        return out

    def add_classification_head(self, labels, seed=0):
        """Replace the LM head by `score.weight` [K, C] (nn.Linear layout, no bias), read at the last real token —
        Hugging Face's GPT2ForSequenceClassification. Initialised N(0, 0.02²) as GPT-2's c_attn and c_fc are, from a
        generator of its own: seeded with (seed, HEAD_STREAM), never the stream that drew the base's weights (with
        the plain seed the head would copy the base's *initial* wte rows, which training leaves correlated with
        the trained ones: the fresh head would then predict one class with confidence instead of starting near
        log K)."""
        labels = check_labels(labels)
        rng = np.random.default_rng([int(seed), HEAD_STREAM])
        self.params["score.weight"] = randn(rng, (len(labels), self.cfg.n_embd), self.dtype, self.xp, std=0.02)
        self.head_kind, self.labels = "classification", labels

    def fingerprint(self) -> str:
        """A short hash of the model's own parameters (not adapters), to tell one base model from another."""
        h = hashlib.sha256()
        for name in sorted(self.params):
            if name == "score.weight":
                continue
            a = np.ascontiguousarray(to_numpy(as_float(self.params[name])))
            h.update(name.encode())
            h.update(str(a.shape).encode())
            h.update(a.astype(np.float32).tobytes())   # float32 view: the same base in float64 matches too
        return h.hexdigest()[:16]

    # ---- input checks -----------------------------------------------------------------------------------------

    def _as_ids(self, input_ids, name="input_ids"):
        try:
            ids = self.xp.asarray(input_ids)
        except (ValueError, TypeError) as e:          # ragged lists, objects NumPy cannot make an array of
            raise MiniftError(f"{name} must be a 2-D integer array (B, T): {e}") from None
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise MiniftError(f"{name} must be a 2-D integer array (B, T), got shape {ids.shape} dtype {ids.dtype}")
        if ids.shape[1] > self.cfg.n_ctx:
            raise MiniftError(f"{name} has T={ids.shape[1]} tokens but the model's context is n_ctx={self.cfg.n_ctx}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise MiniftError(f"{name} is empty: shape {ids.shape}")
        return ids

    def _as_mask(self, attention_mask, ids):
        if attention_mask is None:
            return None
        mask = self.xp.asarray(attention_mask).astype(bool)
        if mask.shape != ids.shape:
            raise MiniftError(f"attention_mask has shape {mask.shape}, expected the shape of input_ids {ids.shape}")
        return mask

    def _keep(self, name, tensor):
        if self.record is not None:
            self.record[name] = tensor

    # ---- an adapted or plain linear ---------------------------------------------------------------------------

    def _linear_forward(self, module, x):
        """y = x W + b for module "h.{i}.attn.c_attn" etc., through its adapter when one is attached."""
        w, b = self.params[module + ".weight"], self.params[module + ".bias"]
        adapter = self.adapters.get(module)
        if adapter is None:
            return linear_forward(x, w, b)
        return adapter.forward(x, w, b)

    def _linear_backward(self, module, dy, cache, grads):
        """dy -> dx; stores dW, db (if they train) and the adapter's gradients (if any) into `grads`."""
        need_dw, need_db = self.trains(module + ".weight"), self.trains(module + ".bias")
        adapter = self.adapters.get(module)
        if adapter is None:
            dx, dw, db = linear_backward(dy, cache, need_dw=need_dw, need_db=need_db)
        else:
            dx, dw, db = adapter.backward(dy, cache, grads, need_dw=need_dw, need_db=need_db)
        self._store(grads, module + ".weight", dw)
        self._store(grads, module + ".bias", db)
        return dx

    @staticmethod
    def _store(grads, name, g):
        if g is not None:
            grads[name] = g

    def _layernorm_backward(self, prefix, dy, cache, grads):
        dx, dw, db = layernorm_backward(dy, cache, need_dw=self.trains(prefix + ".weight"),
                                        need_db=self.trains(prefix + ".bias"))
        self._store(grads, prefix + ".weight", dw)
        self._store(grads, prefix + ".bias", db)
        return dx

    # ---- forward ----------------------------------------------------------------------------------------------

    def _dropout(self, x, rng):
        """GPT-2's residual/embedding dropout, active only in training calls that pass an rng."""
        return dropout_forward(x, self.cfg.dropout, rng, train=rng is not None)

    def _block_forward(self, i, x, mask, rng):
        """One pre-LN block: (B, T, C) -> (B, T, C), and the caches its backward needs."""
        P, p, H = self.params, f"h.{i}.", self.cfg.n_head
        eps = self.cfg.layer_norm_epsilon
        a, c_ln1 = layernorm_forward(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)    # (B, T, C)
        qkv, c_qkv = self._linear_forward(p + "attn.c_attn", a)          # (B, T, 3C)
        att, c_att = attention_forward(qkv, H, mask)                     # (B, T, C)
        o, c_o = self._linear_forward(p + "attn.c_proj", att)            # (B, T, C)
        o, c_drop_o = self._dropout(o, rng)                              # (B, T, C)
        x = x + o                                                        # (B, T, C) residual 1
        m, c_ln2 = layernorm_forward(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)    # (B, T, C)
        f, c_fc = self._linear_forward(p + "mlp.c_fc", m)                # (B, T, F)
        g, c_g = gelu_forward(f)                                         # (B, T, F)
        y, c_y = self._linear_forward(p + "mlp.c_proj", g)               # (B, T, C)
        y, c_drop_y = self._dropout(y, rng)                              # (B, T, C)
        x = x + y                                                        # (B, T, C) residual 2
        for name, t in (("ln_1", a), ("attn.c_attn", qkv), ("attn", att), ("attn.c_proj", o), ("ln_2", m),
                        ("mlp.c_fc", f), ("mlp.gelu", g), ("mlp.c_proj", y), ("out", x)):
            self._keep(p + name, t)
        return x, (c_ln1, c_qkv, c_att, c_o, c_drop_o, c_ln2, c_fc, c_g, c_y, c_drop_y)

    def _body_forward(self, ids, mask, rng, floor):
        """(B, T) ids -> (B, T, C) final hidden states h = ln_f(x), and the caches of what the backward will visit:
        positions >= floor (backward_floor; None in the others, dropped as soon as made)."""
        P, L = self.params, self.cfg.n_layer
        x, c_emb = embedding_forward(ids, P["wte.weight"], P["wpe.weight"])  # (B, T, C)
        x, c_demb = self._dropout(x, rng)                                    # (B, T, C)
        if floor > -1:
            c_emb = c_demb = None            # the embeddings do not train: nothing goes back to them
        self._keep("embedding", x)
        blocks = []
        for i in range(L):
            x, c_block = self._block_forward(i, x, mask, rng)                 # (B, T, C)
            if i < floor:
                c_block = None               # below the floor: the block's caches go now, not at the next block
            blocks.append(c_block)
        h, c_lnf = layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"], self.cfg.layer_norm_epsilon)  # (B,T,C)
        self._keep("ln_f", h)
        return h, (c_emb, c_demb, blocks, c_lnf if floor <= L else None)

    def _head_forward(self, h, mask):
        """The head: LM logits (B, T, V) from the tied wte, or class logits (B, K) at the last real token."""
        if self.head_kind == "lm":
            return linear_forward(h, self.params["wte.weight"].T)            # (B, T, V): h @ wteᵀ
        if mask is None:
            mask = self.xp.ones(h.shape[:2], dtype=bool)
        pooled, c_pool = pool_last_forward(h, mask)                           # (B, C)
        logits, c_score = linear_forward(pooled, self.params["score.weight"].T)  # (B, K): pooled @ scoreᵀ
        return logits, (c_pool, c_score)

    def forward(self, input_ids, attention_mask=None, record=False):
        """(B, T) int -> logits: (B, T, V) with the LM head, (B, K) with a classification head. No model dropout
        (adapters apply theirs while in train mode: lora.train() / lora.eval())."""
        self.record = {} if record else None
        ids = self._as_ids(input_ids)
        mask = self._as_mask(attention_mask, ids)
        h, _ = self._body_forward(ids, mask, rng=None, floor=self.cfg.n_layer + 1)   # no backward: no caches
        logits, _ = self._head_forward(h, mask)
        self._keep("logits", logits)
        return logits

    def _check_targets(self, targets, ids):
        t = self.xp.asarray(targets)
        expected = ids.shape if self.head_kind == "lm" else ids.shape[:1]
        if t.shape != expected or not np.issubdtype(t.dtype, np.integer):
            what = "next-token ids (B, T)" if self.head_kind == "lm" else "class ids (B,)"
            raise MiniftError(f"targets must be integer {what} of shape {expected}, got shape {t.shape} "
                              f"dtype {t.dtype}")
        return t

    def loss(self, input_ids, targets, attention_mask=None) -> float:
        """Mean cross-entropy of the targets (-100 = ignored), forward only. Records nothing: a record kept from an
        earlier call with record=True is let go, not written into (as forward and loss_and_grads do)."""
        self.record = None
        ids = self._as_ids(input_ids)
        mask = self._as_mask(attention_mask, ids)
        h, _ = self._body_forward(ids, mask, rng=None, floor=self.cfg.n_layer + 1)   # no backward: no caches
        logits, _ = self._head_forward(h, mask)
        loss, _ = cross_entropy_forward(logits, self._check_targets(targets, ids))
        return float(loss)

    # ---- backward ---------------------------------------------------------------------------------------------

    def loss_and_grads(self, input_ids, targets, attention_mask=None, rng=None, record=False):
        """Forward, cross-entropy, and the hand-written backward.

        targets: (B, T) next-token ids for the LM head (-100 marks positions without a loss: padding, prompt
                 tokens), or (B,) class ids for a classification head.
        rng:     a numpy Generator; when given and cfg.dropout > 0, dropout is applied (training mode).
        record:  keep every named activation in `model.record` and its gradient under "d" + name.
        Returns (loss as a float, grads: name -> array for every trainable parameter and adapter parameter).
        """
        self.record = {} if record else None
        ids = self._as_ids(input_ids)
        mask = self._as_mask(attention_mask, ids)
        targets = self._check_targets(targets, ids)
        floor = self.backward_floor(record)
        h, c_body = self._body_forward(ids, mask, rng, floor)                 # (B, T, C)
        logits, c_head = self._head_forward(h, mask)
        self._keep("logits", logits)
        loss, c_ce = cross_entropy_forward(logits, targets)
        # ---- backward: the calls above, in reverse, down to the floor ----
        grads = {}
        dlogits = cross_entropy_backward(self.xp.asarray(1.0, dtype=self.dtype), c_ce)
        self._keep("dlogits", dlogits)
        need_dh = floor <= self.cfg.n_layer                                  # does anything in the body train?
        dh = self._head_backward(dlogits, c_head, grads, need_dh)             # (B, T, C) or None
        if need_dh:
            self._body_backward(dh, c_body, grads, floor)
        return float(loss), grads

    def _head_backward(self, dlogits, cache, grads, need_dh=True):
        if self.head_kind == "lm":
            need_dwte = self.trains("wte.weight")
            dh, dwte_t, _ = linear_backward(dlogits, cache, need_dx=need_dh, need_dw=need_dwte)   # dwte_t: (C, V)
            if need_dwte:
                grads["wte.weight"] = dwte_t.T       # the LM head's share of wte's gradient; the embedding adds its own
            return dh
        c_pool, c_score = cache
        dpooled, dscore_t, _ = linear_backward(dlogits, c_score, need_dx=need_dh,
                                               need_dw=self.trains("score.weight"))   # (B, C)
        self._store(grads, "score.weight", None if dscore_t is None else dscore_t.T)
        return pool_last_backward(dpooled, c_pool) if need_dh else None        # (B, T, C)

    def _block_backward(self, i, dx, cache, grads):
        """The block's forward read bottom-up. dx is the gradient of the block's output (B, T, C)."""
        p = f"h.{i}."
        c_ln1, c_qkv, c_att, c_o, c_drop_o, c_ln2, c_fc, c_g, c_y, c_drop_y = cache
        self._keep("d" + p + "out", dx)
        # x = x + y: the residual passes dx through unchanged AND into the MLP branch; the two paths add up
        dy = dropout_backward(dx, c_drop_y)                                      # (B, T, C)
        dg = self._linear_backward(p + "mlp.c_proj", dy, c_y, grads)             # (B, T, F)
        df = gelu_backward(dg, c_g)                                              # (B, T, F)
        dm = self._linear_backward(p + "mlp.c_fc", df, c_fc, grads)              # (B, T, C)
        dx = dx + self._layernorm_backward(p + "ln_2", dm, c_ln2, grads)         # (B, T, C) skip + branch
        # x = x + o: the same rule for the attention branch
        do = dropout_backward(dx, c_drop_o)                                      # (B, T, C)
        datt = self._linear_backward(p + "attn.c_proj", do, c_o, grads)          # (B, T, C)
        dqkv = attention_backward(datt, c_att)                                   # (B, T, 3C)
        da = self._linear_backward(p + "attn.c_attn", dqkv, c_qkv, grads)        # (B, T, C)
        dx = dx + self._layernorm_backward(p + "ln_1", da, c_ln1, grads)         # (B, T, C) skip + branch
        for name, t in (("mlp.c_proj", dy), ("mlp.gelu", dg), ("mlp.c_fc", df), ("ln_2", dm), ("attn.c_proj", do),
                        ("attn", datt), ("attn.c_attn", dqkv), ("ln_1", da), ("in", dx)):
            self._keep("d" + p + name, t)
        return dx

    def _body_backward(self, dh, cache, grads, floor):
        c_emb, c_demb, blocks, c_lnf = cache
        self._keep("dln_f", dh)
        dx = self._layernorm_backward("ln_f", dh, c_lnf, grads)                  # (B, T, C)
        for i in reversed(range(max(floor, 0), self.cfg.n_layer)):              # down to the lowest that trains
            dx = self._block_backward(i, dx, blocks[i], grads)                   # (B, T, C)
        if floor > -1:
            return                           # the embeddings are frozen: the gradient of the blocks' input goes nowhere
        dx = dropout_backward(dx, c_demb)                                        # (B, T, C)
        need_dwte, need_dwpe = self.trains("wte.weight"), self.trains("wpe.weight")
        if need_dwte or need_dwpe:
            dwte, dwpe = embedding_backward(dx, c_emb, need_dwte=need_dwte, need_dwpe=need_dwpe)
            if dwte is not None:
                # wte is used twice: as the embedding table and (LM head) as the output projection — gradients add
                grads["wte.weight"] = grads["wte.weight"] + dwte if "wte.weight" in grads else dwte
            self._store(grads, "wpe.weight", dwpe)

    # ---- conversions ------------------------------------------------------------------------------------------

    def to(self, dtype=None, device=None) -> "GPT":
        """A copy of the model (parameters, head kind and labels, frozen set) in another dtype and/or on another device.
        Adapters are not copied: attach them to the copy. A 4-bit weight (QLoRA's) is copied dequantised, W̃ = deq(W):
        without its adapter nothing could compute with the 4 bits."""
        dtype = resolve_dtype(dtype or self.dtype)
        device = resolve_device(device or self.device)
        xp = get_xp(device)
        params = {k: xp.asarray(to_numpy(as_float(v)).astype(dtype)) for k, v in self.params.items()}
        other = GPT(self.cfg, dtype=dtype, device=device, params=params)
        other.frozen, other.head_kind, other.labels = set(self.frozen), self.head_kind, self.labels
        return other

    @classmethod
    def from_pretrained(cls, path, dtype="float32", device="cpu") -> "GPT":
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors). See minift/formats/hf.py."""
        from .formats.hf import load_gpt2_folder
        return load_gpt2_folder(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path, tokenizer=None):
        """Write a Hugging Face GPT-2 folder that transformers' GPT2LMHeadModel loads. See minift/formats/hf.py.
        tokenizer: saved beside as tokenizer.json (load_base needs the tokenizer the model was trained with), and
        its end-of-text and padding ids go into config.json (transformers' classifier needs the pad id to find each
        row's last token)."""
        from .formats.hf import save_gpt2_folder
        four_bit = [k for k, v in self.params.items() if isinstance(v, Quantized)]
        if four_bit:
            raise MiniftError(f"this model holds {len(four_bit)} weights in 4 bits ({four_bit[0]}, ...: QLoRA's base), "
                              "which a GPT-2 folder cannot: save the adapter (lora.save_peft), lora.merged_model() "
                              "(the dequantised base + ΔW), or model.to() (the dequantised base)")
        save_gpt2_folder(self, path, tokenizer)
