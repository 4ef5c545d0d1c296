"""The output folder of a training command (`--out` of pretrain, finetune, compare): what it may hold, and how
`--resume` and `--overwrite` treat it. The rule: a command never writes into, and never deletes, anything it did not
write, and never loses an earlier run because the new one failed.

    new or empty                      the run starts
    a run of this command             --resume continues it (from its checkpoints); --overwrite replaces it
    a run of another command          --overwrite replaces it; --resume is refused (it would mix two runs)
    anything minift did not write     refused, with or without flags, and left exactly as it was
    leftovers of a run that failed    (folders without a file, the run.json marker) reused as if empty
    before it saved anything
    leftovers of a process killed     atomic_write's temporary files, checkpoint folders cut short: removed
    outright (SIGKILL, power cut)

A folder is minift's only when it says so: its `run.json` is minift's marker (written by `open()` before anything
else, `"written_by": "minift"`; the three-key run.json of earlier versions counts too), or, after a kill in the
middle of --overwrite, the run set aside in `.minift-replaced/` carries one. Familiar names are no proof: a folder
without the marker, or with the marker and a file minift does not write, is refused before anything in it is
removed, renamed or written (`claim`), and only then are killed writes cleared (`settle`).

A run "has something" once it holds a result (pretrain.json, finetune.json, results.json) or a checkpoint
(`checkpoints/step-NNNNNN/`, in compare one such folder per method). `run.json` names the command that made the folder
and its command line.

--overwrite moves the earlier run aside into `.minift-replaced/` and deletes it only when the new run has something;
if the new run fails before that (bad input found late, a crash, Ctrl-C before the first checkpoint), the new run's
files are removed and the earlier run is moved back. A process killed outright leaves the folder aside; the next
command on this --out settles it by the same rule before doing anything else.

A command's summary (pretrain.json, finetune.json, results.json) is written last, after the model, adapter and report
files, and is removed before they are rewritten (`formats.io.drop_summary`): a folder whose summary is there holds
outputs that belong together, even if a process was killed while saving them (then --resume saves them again from the
final checkpoint). While a command runs it holds a lock on its --out (POSIX), so a second command given the same
folder is refused instead of tidying away the first one's files. The lock is `flock` on the folder's own
descriptor, not a lock file (`filelock` would need one): a lock file would be written into a folder before minift has
proved the folder is its own, or outside --out, and would stay behind; the kernel drops this lock when the process
dies. Windows has no such lock, and there --out is not locked.

A command that fails leaves no trace: a folder it made for --out (and the parent folders it made for it) are
removed again when they are empty.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from ..errors import MiniftError
from ..formats.io import TEMP_GLOB, save_json
from ..training.train import PARTIAL_GLOB, latest_checkpoint
from .figures import FIGURES, OLD_FIGURES

try:
    import fcntl  # POSIX; on Windows --out is not locked
except ImportError:                    # pragma: no cover
    fcntl = None

# What minift writes, by exact name. Directly inside --out (and so what --overwrite moves, and nothing else):
TOP_FILES = {"run.json", "pretrain.json", "finetune.json", "results.json", "report.md", "trainable.safetensors",
             *FIGURES, *OLD_FIGURES}
# ...and anywhere below, in its folders (model/, adapter/, checkpoints/, and compare's run folders):
INNER_FILES = {"config.json", "model.safetensors", "tokenizer.json", "pretrain.json", "adapter_config.json",
               "adapter_model.safetensors", "README.md", "weights.safetensors", "optimizer.safetensors",
               "state.json", "latest", "trainable.safetensors"}
FOLDERS = re.compile(r"model|adapter|checkpoints|full|freeze|head|lorar\d+|seed-\d+|step-\d{6}|\.step-\d{6}\.partial")
ASIDE = ".minift-replaced"       # the earlier run, while --overwrite's new run has nothing yet
DROPPED = ".minift-dropped"      # a run being deleted: the earlier one (the new has something) or a new one that failed
SUMMARIES = {"pretrain.json": "pretrain", "finetune.json": "finetune", "results.json": "compare"}

MARKER = "minift"                         # run.json's "written_by": this folder is a minift run folder
LEGACY_KEYS = {"command", "started", "argv"}   # run.json before the marker: exactly these keys


def marker(command: str, argv=None) -> dict:
    """The content of run.json: minift's marker, the command that made the folder and its command line."""
    return dict(written_by=MARKER, command=command, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({"argv": ["minift", *argv]} if argv is not None else {}))


def is_marker(path: Path) -> bool:
    """Whether `path` is a run.json that minift wrote (this version's marker, or an earlier version's run.json)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("command") not in SUMMARIES.values():
        return False
    if info.get("written_by") == MARKER:
        return True
    return set(info) <= LEGACY_KEYS and isinstance(info.get("started"), str) and \
        (info.get("argv") is None or isinstance(info["argv"], list) and info["argv"][:1] == ["minift"])


def claim(out: Path) -> None:
    """Raise, having changed nothing, unless `out` is empty or provably minift's run folder (module docstring):
    its run.json (or, after a kill during --overwrite, the set-aside run's) is minift's marker, and every entry,
    all the way down (in the set-aside and dropped runs too), is a name minift writes there, not a link. Only after
    this may a command clear, move or write anything in `out`."""
    items = list(out.iterdir())
    if all(e.match(".run.json.*.tmp") for e in items):    # empty, or a start killed while writing run.json
        return
    foreign = [e for e in not_minifts(out) if e.name not in (ASIDE, DROPPED) or e.is_symlink() or not e.is_dir()]
    for held in (out / ASIDE, out / DROPPED):
        if held.is_dir() and not held.is_symlink():
            foreign += not_minifts(held)
    marked = _marked(out)
    if marked and not foreign:
        return
    shown = [e.relative_to(out) for e in (foreign if marked else items)]
    names = ", ".join(sorted(map(str, shown))[:3]) + (", ..." if len(shown) > 3 else "")
    if not marked:
        names += ("; its run.json is not minift's" if (out / "run.json").exists() else
                  "; no run.json of minift's marks it as a run")
    raise MiniftError(f"--out {out} holds files minift did not write ({names}); minift changed nothing in it: "
                      "choose a new or empty folder")


def _marked(out: Path) -> bool:
    """Whether minift's marker proves `out` its own: the top run.json, or during --overwrite the set-aside run's. A
    set-aside run without its run.json is a set-aside cut short (run.json moves last): then the top one must be the
    marker and the two must share no name, as an unfinished move leaves them."""
    top, aside = out / "run.json", out / ASIDE
    if not aside.exists():
        return is_marker(top)
    if aside.is_symlink():
        return False
    if (aside / "run.json").exists():
        return is_marker(aside / "run.json") and (not top.exists() or is_marker(top))
    return is_marker(top) and not {e.name for e in aside.iterdir()} & {e.name for e in out.iterdir()}


def not_minifts(folder: Path, top: bool = True) -> list:
    """Every entry under `folder` that minift would not have written there: a name it does not write at that depth,
    or a link (minift never writes or deletes through one). ASIDE and DROPPED are reported, not entered: claim()
    checks them on their own."""
    found = []
    for e in folder.iterdir():
        if e.is_symlink() or not _ours(e, top):
            found.append(e)
        elif e.is_dir():
            found += not_minifts(e, top=False)
    return found


def _ours(e: Path, top: bool = True) -> bool:
    """A name minift writes at this depth (exact names: module constants), or what a write of one left when killed."""
    if e.is_dir():
        return bool(FOLDERS.fullmatch(e.name))
    return e.name in (TOP_FILES if top else INNER_FILES) or _is_temp_of_ours(e, top)


def _is_temp_of_ours(e: Path, top: bool = True) -> bool:
    """".finetune.json.k2x9_a1b.tmp": what atomic_write was writing onto one of minift's names when it was killed."""
    target = e.name[1:-len(".tmp")].rsplit(".", 1)[0] if e.match(TEMP_GLOB) else ""
    return bool(target) and target in (TOP_FILES if top else INNER_FILES)


def entries(out: Path):
    """(minift's entries in out, everything else), the set-aside and dropped runs counted in neither."""
    items = [e for e in out.iterdir() if e.name not in (ASIDE, DROPPED)]
    return [e for e in items if _ours(e)], [e for e in items if not _ours(e)]


def has_something(out: Path) -> bool:
    """Whether out holds a result or a checkpoint: something a person would not want to lose."""
    def has_checkpoint(folder, depth):          # in folder/checkpoints, or one or two folders further down
        return _resumable(folder / "checkpoints") or depth > 0 and any(
            has_checkpoint(sub, depth - 1) for sub in folder.iterdir() if sub.is_dir() and FOLDERS.fullmatch(sub.name))
    # depth 2: compare's extra seeds keep theirs in seed-1/lorar4/checkpoints
    return out.is_dir() and (any((out / n).is_file() for n in SUMMARIES) or has_checkpoint(out, 2))


def _resumable(checkpoints: Path) -> bool:
    try:
        return checkpoints.is_dir() and latest_checkpoint(checkpoints) is not None
    except MiniftError:                         # `latest` names a missing folder: still a run, --resume will say so
        return True


def made_by(out: Path) -> str | None:
    """The command whose run this folder holds: run.json's, else what its files say (None when they do not say)."""
    try:
        return json.loads((out / "run.json").read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for name, command in SUMMARIES.items():
        if (out / name).is_file():
            return command
    if any((e.is_dir() and (e / "checkpoints").is_dir()) or e.name.startswith("seed-") for e in entries(out)[0]):
        return "compare"                          # a checkpoint folder per method
    return None


def _holds_nothing(e: Path) -> bool:
    """run.json, a killed write, or a folder holding no file but killed writes (temporary files, checkpoint folders
    cut short): what a run that failed before saving anything leaves, once settle() has cleared killed writes."""
    if e.name == "run.json" or _is_temp_of_ours(e):
        return True
    if not e.is_dir() or e.is_symlink():
        return False
    return all(not f.is_file() or f.match(TEMP_GLOB) or any(d.match(PARTIAL_GLOB) for d in f.relative_to(e).parents)
               for f in e.rglob("*"))


def settled_parts(out: Path) -> list:
    """The folders whose entries settle() leaves in `out` (read-only): the set-aside run when it goes back, beside
    what is at the top when a cut-short move is finished, or in its place when the new run is dropped."""
    aside = out / ASIDE
    if not aside.is_dir():
        return [out]
    if not (aside / "run.json").is_file() or not (out / "run.json").is_file():
        return [out, aside]                    # a move cut short: the two halves of one run
    return [out] if has_something(out) else [aside]


def _remove(e: Path) -> None:
    if e.is_dir() and not e.is_symlink():
        shutil.rmtree(e)
    else:
        e.unlink()


def _remove_killed_writes(out: Path) -> None:
    """What a process killed outright leaves: atomic_write's temporary files (beside minift's files at the top, or
    anywhere in its folders) and checkpoint folders it was still writing (.step-NNNNNN.partial)."""
    ours = entries(out)[0]
    stale = [e for e in ours if _is_temp_of_ours(e)]
    for folder in (e for e in ours if e.is_dir() and not e.is_symlink()):
        stale += [*folder.rglob(PARTIAL_GLOB), *folder.rglob(TEMP_GLOB)]
    for e in stale:
        if e.exists():                          # (a temp file inside a partial folder went with it)
            _remove(e)


def settle(out: Path) -> bool:
    """After a command (and before one, for a run killed outright): remove what killed writes left; keep the earlier
    run set aside by --overwrite if the new one has nothing yet, else drop it; then clear leftovers that hold nothing.
    True when the earlier run was put back.

    Every move is a rename that a kill can interrupt, so each is ordered to be finished by the next settle():
    run.json moves last (a set-aside or restore under way is the one whose run.json has not moved yet), and a run
    is deleted by renaming it into DROPPED first, then removing that."""
    _remove_killed_writes(out)
    aside, dropped, restored = out / ASIDE, out / DROPPED, False
    if aside.is_dir():
        parts = settled_parts(out)                        # the one decision, shared with RunFolder's checks
        if parts == [aside]:                              # the new run has nothing: drop it (its run.json last)
            _move_all(entries(out)[0], dropped)
        if aside in parts:                                # put the earlier run back, or finish a move cut short
            _move_all(list(aside.iterdir()), out)
            aside.rmdir()
            restored = True
        else:                                             # the new run replaces the earlier one
            if dropped.is_dir():
                shutil.rmtree(dropped)
            aside.rename(dropped)
    if dropped.is_dir():
        shutil.rmtree(dropped)
    _remove_killed_writes(out)                            # (those of a run just put back)
    if out.is_dir() and not has_something(out):
        for e in entries(out)[0]:
            if _holds_nothing(e):
                _remove(e)
    return restored


def _move_all(items, folder: Path) -> None:
    """Rename each of `items` into `folder` (made if need be), run.json last (see settle)."""
    folder.mkdir(exist_ok=True)
    for e in sorted(items, key=lambda e: e.name == "run.json"):
        e.rename(folder / e.name)


class RunFolder:
    """`--out` for one command: open() checks it and, with --overwrite, sets the earlier run aside; close() settles
    it whatever happened (module docstring). `inputs`: option -> path the command reads (--base, --task, ...), which
    must not lie inside what --overwrite replaces."""

    def __init__(self, path, command: str, resume=False, overwrite=False, inputs=None, argv=None):
        if not str(path).strip():
            raise MiniftError("--out is empty: give a folder for the run's outputs")
        self.out, self.command, self.argv = Path(path), command, argv
        self.resume, self.overwrite, self.inputs = resume, overwrite, inputs or {}
        self.made, self._lock, self._held = [], None, False     # made: the folders open() created, --out first
        self._claimed = False                                   # --out proved empty or minift's: it may change

    def open(self) -> None:
        out = self.out
        if self.resume and self.overwrite:
            raise MiniftError("--resume continues the run in --out and --overwrite deletes it: give one")
        if out.exists() and not out.is_dir():
            raise MiniftError(f"--out {out} is a file; give a folder for the run's outputs")
        self.made = [p for p in (out.absolute(), *out.absolute().parents) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)      # now, so that a folder we cannot write fails before training
        except OSError as e:
            self.made = [p for p in self.made if p.exists()]
            raise MiniftError(f"--out {out}: cannot make this folder ({e.strerror or e})") from None
        self._take_lock()                               # then nothing below races another command on this folder
        claim(out)                                      # refused here or below: nothing in the folder was touched
        self._check_state()
        self._claimed = True
        settle(out)
        if self.overwrite and (ours := entries(out)[0]):
            self._set_aside(ours)
        if not (out / "run.json").is_file():
            save_json(marker(self.command, self.argv), out / "run.json")

    def _check_state(self) -> None:
        """Refuse what the flags do not allow, reading the folder as settle() would leave it, without changing it."""
        out = self.out
        parts = settled_parts(out)
        if self.resume:
            self._check_resumable(parts)
        elif not self.overwrite and any(has_something(part) for part in parts):
            raise MiniftError(f"--out {out} already holds a previous run: --resume to continue it, --overwrite to "
                              "replace it, or another --out")
        elif not self.overwrite and not all(_holds_nothing(e) for part in parts for e in entries(part)[0]):
            raise MiniftError(f"--out {out} holds files of a run that saved no result and no checkpoint (nothing "
                              "to resume): --overwrite to replace them, or another --out")
        elif self.overwrite:
            self._check_inputs_outside([*entries(out)[0], out / ASIDE])

    def _take_lock(self) -> None:
        """An exclusive lock on the folder itself, held until close() (the system drops it if the process dies)."""
        self._held = True
        if fcntl is None:
            return
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:                         # held by another process
            os.close(fd)
            self._held = False
            raise MiniftError(f"--out {self.out} is in use by another minift command that is still running; wait "
                              "for it, stop it, or give another --out") from None
        except OSError:                                 # a file system without locks (some network mounts): go on
            os.close(fd)
            return
        self._lock = fd

    def _check_resumable(self, parts) -> None:
        out, made = self.out, next((m for m in map(made_by, parts) if m is not None), None)
        if not any(has_something(part) for part in parts):
            raise MiniftError(f"--resume: --out {out} holds no run to continue (no checkpoint, no result); leave out "
                              "--resume to start one there")
        if made is not None and made != self.command:
            raise MiniftError(f"--resume: --out {out} holds a `minift {made}` run, not a {self.command} run; "
                              f"continue it with `minift {made} ... --resume`, or give another --out")

    def _check_inputs_outside(self, replaced) -> None:
        """--overwrite: refuse if the command would read its input from what it replaces."""
        for option, path in self.inputs.items():
            for p in ([path] if isinstance(path, (str, Path)) else path or []):
                if p is not None and Path(p).exists() and _inside(Path(p), [e for e in replaced if e.exists()]):
                    raise MiniftError(f"{option} {p} lies inside --out {self.out}, which --overwrite would replace; "
                                      "copy it elsewhere first, or give another --out")

    def _set_aside(self, ours) -> None:
        """--overwrite: move the earlier run aside, run.json last (settle() drops it once the new run has
        something)."""
        _move_all(ours, self.out / ASIDE)

    def close(self) -> str | None:
        """Settle --out and release it; returns a note for the user when the earlier run was put back."""
        try:
            if not self._held:                          # (refused before it was ours: another command's)
                return None
            restored = settle(self.out) if self._claimed and self.out.is_dir() else False
            self._remove_made()
        finally:
            if self._lock is not None:
                os.close(self._lock)                     # closing the descriptor releases the lock
                self._lock = None
        return (f"--out {self.out}: the earlier run is back as it was (--overwrite replaces it only with a run that "
                "has a result or a checkpoint)") if restored else None

    def _remove_made(self) -> None:
        """The folders open() made, --out first and then its parents, while they are empty: as if never made."""
        for folder in self.made:
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()


def _inside(path: Path, folders) -> bool:
    p = path.resolve()
    return any(p == f.resolve() or f.resolve() in p.parents for f in folders)
