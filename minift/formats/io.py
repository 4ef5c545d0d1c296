"""Files: atomic writes, JSON and safetensors with clear errors.

Every file minift writes goes through `atomic_write`: the bytes go to a temporary file in the same folder, are
flushed and fsync'ed, and only then renamed over the target (`os.replace` is atomic on POSIX and Windows), and the
folder is fsync'ed so that the rename itself survives a power cut. A crash or Ctrl-C in the middle of a save
therefore leaves either the old file or the new one in place, never half of one. What a process killed outright
(SIGKILL, a power cut) can leave is the temporary file itself, named TEMP_GLOB; the next command on that output folder
removes it (`minift/app/outdir.py: settle`).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import MiniftError

TEMP_GLOB = ".*.tmp"          # atomic_write's temporary files: "." + the target's name + a random part + ".tmp"


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _mode_for(path))      # mkstemp makes 0600; give the file the mode a plain open() would
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:   # text: UTF-8 always
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _mode_for(path: Path) -> int:
    """The existing file's permissions, or 0666 minus the umask for a new file."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX). Windows cannot open a folder; some file systems (network mounts)
    refuse to sync one: there the file is written and renamed all the same, only not yet forced to the disk."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path, text: str) -> Path:
    """UTF-8 with "\\n" line endings on every platform (so that regenerated data files compare byte for byte)."""
    with atomic_write(path, "wb") as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def save_json(obj, path):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_bytes(path, what="file", size=-1) -> bytes:
    """The bytes of a file (the first `size` of them, if given). A file that is missing, or there but unreadable, is
    a MiniftError naming it and saying which: "not found", or the system's reason ("permission denied", an I/O
    error). Libraries that open files themselves do not always say: safetensors reports a file it may not read as
    "No such file or directory", so load_safetensors opens the file here first (size=0)."""
    path = Path(path)
    if not path.is_file():
        raise MiniftError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        reason = (e.strerror or type(e).__name__).lower()      # "Permission denied" -> "permission denied"
        raise MiniftError(f"{what} {path} cannot be read: {reason}") from None


def load_json(path, what="JSON file") -> dict:
    path = Path(path)
    data = read_bytes(path, what)
    try:
        return json.loads(data.decode("utf-8"))
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
    read_bytes(path, what, size=0)          # missing or unreadable: said as such, not as "corrupted"
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


WEIGHT_DTYPES = ("float16", "float32", "float64")


def check_weights(tensors: dict, path) -> None:
    """Refuse, naming the file and the first bad tensor, weights a model cannot compute with: a dtype other than
    float16/32/64 (integer weights would be cast and then train from nonsense, at chance), or a NaN or infinity (it
    spreads through every layer into NaN logits, and `generate` would fail deep inside NumPy's sampler).
    One pass of np.isfinite per tensor: a fraction of the time reading the file takes."""
    for name, value in tensors.items():
        if value.dtype.name not in WEIGHT_DTYPES:
            raise MiniftError(f"{path}: tensor {name} has dtype {value.dtype}; weights must be floating point "
                              f"({', '.join(WEIGHT_DTYPES)})")
        finite = np.isfinite(value)
        if not finite.all():
            raise MiniftError(f"{path}: tensor {name} holds {int(finite.size - finite.sum())} value(s) that are NaN "
                              "or infinite; the file is corrupted or was saved from a run that diverged")


def as_path(path, what="path") -> Path:
    """`path` (a str or os.PathLike, not empty) as a Path, else a MiniftError naming `what`."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise MiniftError(f"{what} {path!r}: give the path of a folder")
    return Path(path)


def check_folder_target(path, what="output folder") -> Path:
    """`path` as a folder to write files into (made if need be), refused by name when it, or a folder above it, is an
    existing file: writing there would otherwise fail with a bare FileExistsError or NotADirectoryError."""
    path = as_path(path, what)
    existing = next(p for p in (path, *path.parents) if p.exists())       # the root always exists
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise MiniftError(f"{what} {path} {where}; give a folder to write the files into")
    return path


def drop_summary(out: Path, summary: str) -> None:
    """Call before (re)writing a command's outputs in out: removes its summary file (pretrain.json, finetune.json,
    results.json), written again last, so that a kill in between never leaves a summary beside outputs from another
    step (minift/app/outdir.py says what that promises)."""
    (Path(out) / summary).unlink(missing_ok=True)
