"""Files: atomic writes, JSON and safetensors with clear errors.

Every file minift writes goes through `atomic_write`: the bytes go to a temporary file in the same folder, are
flushed and fsync'ed, and only then renamed over the target (`os.replace` is atomic on POSIX and Windows). A crash
or Ctrl-C in the middle of a save therefore leaves either the old file or the new one in place, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import MiniftError


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:   # text: UTF-8 always
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_json(obj, path):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def load_json(path, what="JSON file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MiniftError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MiniftError(f"{what} {path} is not valid JSON (truncated or corrupted?): {e}") from None


def save_safetensors(tensors: dict, path, metadata: dict | None = None):
    """Write name -> host array as safetensors, atomically. Arrays are made contiguous (safetensors requires it)."""
    from safetensors.numpy import save
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()} or None)
    with atomic_write(path) as f:
        f.write(data)


def load_safetensors(path, what="weights file") -> tuple[dict, dict]:
    """Read a safetensors file -> (name -> numpy array, metadata). A truncated or corrupted file is a clear error.

    The safetensors header records every tensor's byte range, so a file cut short or padded is detected by the size
    check in the library's parser; we turn its message into one that names the file.
    """
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise MiniftError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError for broken files
        if "bfloat16" in str(e):            # NumPy has no bfloat16: the file is fine, its dtype is not readable here
            raise MiniftError(f"{what} {path} holds bfloat16 tensors, which NumPy (and so minift) cannot read; "
                              "convert it to float32 or float16 first (e.g. torch: model.float().save_pretrained)"
                              ) from None
        raise MiniftError(f"{what} {path} could not be read (truncated or corrupted?): {e}") from None
    return tensors, metadata
