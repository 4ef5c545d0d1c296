"""Hugging Face GPT-2 folders: config.json + model.safetensors, read and written.

minift's parameter names and layouts *are* GPT-2's (linear weights [in, out], as GPT-2's Conv1D), so loading a real
checkpoint is a renaming at most:
  - keys may carry the "transformer." prefix (GPT2LMHeadModel's state dict) or not (the hub's gpt2 checkpoint);
  - `h.{i}.attn.bias` / `h.{i}.attn.masked_bias` are causal-mask buffers, not parameters: ignored;
  - `lm_head.weight` is tied to `wte.weight` in GPT-2: rebuilt from wte (a stored copy must equal it; config.json's
    tie_word_embeddings false, like the other options that change GPT-2's function, is refused by GPTConfig.from_hf);
  - `score.weight` (GPT2ForSequenceClassification) becomes minift's classification head.
Anything else missing, unexpected or of the wrong shape is a clear error, and so are weights that are not floating
point or not finite (io.check_weights): each names the file and the tensor.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp, resolve_device, resolve_dtype, to_numpy
from ..config import GPTConfig, check_labels, param_shapes
from ..errors import MiniftError
from .io import as_path, check_folder_target, check_weights, load_json, load_safetensors, save_json, save_safetensors

IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _normalise_keys(tensors: dict, where="model.safetensors") -> dict:
    out, lm_head = {}, None
    for key, value in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name == "lm_head.weight":
            lm_head = value
        elif not name.endswith(IGNORED_SUFFIXES):
            out[name] = value
    if lm_head is not None and "wte.weight" in out and not np.array_equal(lm_head, out["wte.weight"]):
        raise MiniftError(f"{where}: lm_head.weight differs from wte.weight; minift's GPT-2 ties the LM head to the "
                          "token embedding, so an untied head cannot be loaded")
    return out


def load_gpt2_folder(cls, path, dtype="float32", device="cpu"):
    """A folder with config.json and model.safetensors -> a GPT of class `cls`."""
    path = as_path(path, "model folder")
    if path.is_file():
        raise MiniftError(f"{path} is a file; give the model's folder (config.json and model.safetensors)")
    if not path.is_dir():
        raise MiniftError(f"model folder not found: {path}")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise MiniftError(f"{path} is a LoRA adapter (PEFT's adapter_config.json), not a model: give the base model "
                          "folder it was trained on (--model/--base), and the adapter on top of it (generate: "
                          "--adapter; Python: minift.load_peft, tutorial 07)")
    if not (path / "config.json").is_file():             # a run folder holds its result one level down
        if (path / "model" / "config.json").is_file():
            raise MiniftError(f"{path} is a run folder, not a model folder: its model is {path / 'model'}")
        if (path / "adapter" / "adapter_config.json").is_file():
            raise MiniftError(f"{path} is a LoRA run's folder: its adapter is {path / 'adapter'}, to be loaded on the "
                              "base model it was trained on (generate: --model BASE --adapter "
                              f"{path / 'adapter'}; Python: minift.load_peft). To fine-tune on from it, write its "
                              "merged model first: the same finetune command with --resume --merge adds "
                              f"{path / 'model'}")
    hf = load_json(path / "config.json", "model config")
    if not isinstance(hf, dict):
        raise MiniftError(f"{path / 'config.json'} holds a JSON {type(hf).__name__}, not the object of a GPT-2 config")
    cfg = GPTConfig.from_hf(hf, where=str(path / "config.json"))
    tensors, _ = load_safetensors(path / "model.safetensors", "model weights")
    check_weights({k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}, path / "model.safetensors")
    tensors = _normalise_keys(tensors, where=str(path / "model.safetensors"))
    expected = param_shapes(cfg)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected and k != "score.weight"]
    if missing or unexpected:
        raise MiniftError(f"{path}/model.safetensors does not match config.json: missing {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise MiniftError(f"{path}/model.safetensors: {name} has shape {tuple(tensors[name].shape)}, "
                              f"config.json implies {shape}")
    dtype = resolve_dtype(dtype)
    xp = get_xp(resolve_device(device))
    params = {k: xp.asarray(np.asarray(tensors[k], dtype=dtype)) for k in expected}
    model = cls(cfg, dtype=dtype, device=device, params=params)
    if "score.weight" in tensors:
        labels = _labels_from_config(hf, tensors["score.weight"].shape[0], path / "config.json")
        model.params["score.weight"] = xp.asarray(np.asarray(tensors["score.weight"], dtype=dtype))
        model.head_kind, model.labels = "classification", labels
        if tensors["score.weight"].shape != (len(labels), cfg.n_embd):
            raise MiniftError(f"{path}: score.weight has shape {tensors['score.weight'].shape}, "
                              f"expected ({len(labels)}, {cfg.n_embd})")
    return model


def _labels_from_config(hf: dict, k: int, where) -> list:
    """config.json's id2label as a list (ids 0..k-1 must all be there, names as config.check_labels wants them), else
    LABEL_0 ... LABEL_{k-1}."""
    id2label = hf.get("id2label")
    if not id2label:
        return [f"LABEL_{i}" for i in range(k)]
    if not isinstance(id2label, dict) or sorted(str(i) for i in id2label) != sorted(str(i) for i in range(k)):
        raise MiniftError(f"{where}: id2label {id2label!r} does not name the ids 0..{k - 1} of the model's "
                          f"{k}-label head (score.weight)")
    return check_labels([id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(k)],
                        f"{where}: id2label")


def save_gpt2_folder(model, path, tokenizer=None):
    """Write config.json + model.safetensors that transformers loads as GPT2LMHeadModel (or
    GPT2ForSequenceClassification when the model has a classification head), and the tokenizer's tokenizer.json when
    one is given: a model folder is only usable with the tokenizer it was trained with (base.load_base refuses
    one without). Adapters are not included: merge them first (`lora.merge()`) to save a single deployable model, or
    save them apart with `save_peft`. `path` is a folder (made if need be); an existing file there is refused."""
    path = check_folder_target(path, "model folder")
    hf = model.cfg.to_hf()
    tensors = {k: to_numpy(v) for k, v in model.params.items()}
    if model.head_kind == "classification":
        hf["architectures"] = ["GPT2ForSequenceClassification"]
        hf["id2label"] = {str(i): label for i, label in enumerate(model.labels)}
        hf["label2id"] = {label: i for i, label in enumerate(model.labels)}
        hf["num_labels"] = len(model.labels)
    else:
        hf["architectures"] = ["GPT2LMHeadModel"]
    # the key transformers writes since 4.56 (older ones wrote "torch_dtype"; transformers reads both, and minift's
    # loader reads neither: the dtype a model is loaded in is the caller's)
    hf["dtype"] = np.dtype(model.dtype).name
    if tokenizer is not None:   # GPT2ForSequenceClassification finds the last token as the last id != pad_token_id
        hf.update(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id, pad_token_id=tokenizer.pad_id)
    save_json(hf, path / "config.json")
    save_safetensors(tensors, path / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(path / "tokenizer.json")
