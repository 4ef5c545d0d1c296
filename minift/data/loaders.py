"""Reading the user's files and the shipped tasks, with errors that name the file and the line.

    texts = load_text_files(["notes.txt", "more/"])               # plain text for pretraining: one string per file
    texts, label_ids, label_names = load_classification("reviews.csv", labels=["negative", "positive"])
    prompts, completions = load_generation("qa.jsonl")
    split = load_task("sentiment", "train")                       # a built-in task, a task folder, or one file

Record files are JSON Lines (.jsonl, .json, .ndjson: one object per line; blank lines are skipped) or CSV/TSV
(.csv, .tsv: a header row naming the columns). Classification records need "text" and "label" (a string, or an
integer, read as its decimal string); generation records need "prompt" and "completion". Other fields are ignored.
Files are UTF-8 (a byte-order mark is allowed).

A task folder holds train, validation and test files (train.jsonl, validation.csv, ...) and optionally a task.json,
of which minift reads (all optional):
    "type"              "classification" | "generation" (default: from the first record's fields)
    "labels"            the label names, in id order (default: the training split's labels, sorted)
    "text_field", "label_field", "prompt_field", "completion_field"
                        the records' field (column) names, when they are not "text", "label", "prompt", "completion"
    "name"              the task's name in reports (default: the folder's name)
Its other keys are free for the author's notes (the shipped tasks describe how they were generated).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MiniftError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
DATA_DIR_ENV = "MINIFT_DATA_DIR"


PACKAGE_DIR = Path(__file__).resolve().parent.parent            # minift/, wherever it was imported from
PACKAGED_DATA_DIR = PACKAGE_DIR / "_data"                       # data/ inside a wheel (pyproject.toml's package-dir)


def checkout_data_dir() -> Path | None:
    """<checkout>/data when minift is imported from a source checkout (pyproject.toml beside minift/: run in place,
    or installed with `pip install -e .`), else None. It is where `python -m minift.data` writes."""
    root = PACKAGE_DIR.parent
    return root / "data" if (root / "pyproject.toml").is_file() else None


def data_dir() -> Path:
    """The folder of minift's shipped files (tokenizer.json, tasks/, base-demo/), the first that applies of:
        $MINIFT_DATA_DIR      a copy of data/ elsewhere, taken as given
        <checkout>/data       minift run from a source checkout (checkout_data_dir); a file missing there is
                              reported where it is read, with the command that regenerates it
        minift/_data          minift installed from a wheel (`pip install .`), which carries data/ under that name
    An installed minift without minift/_data is a MiniftError that says so and how to get the files.
    """
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    checkout = checkout_data_dir()
    if checkout is not None:
        return checkout
    if PACKAGED_DATA_DIR.is_dir():
        return PACKAGED_DATA_DIR
    raise MiniftError(f"minift's shipped data (tokenizer, tasks, the demo base model) is missing: {PACKAGED_DATA_DIR} "
                      "does not exist. Reinstall minift from a wheel or a source checkout (`pip install .`, which "
                      f"packages the checkout's data/ folder), or set {DATA_DIR_ENV} to a copy of that data/ folder")


# ---- plain text --------------------------------------------------------------------------------------------------
def _read_utf8(path: Path) -> str:
    """The whole file as text; a missing, unreadable or non-UTF-8 file is a MiniftError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MiniftError(f"{path}: file not found") from None
    except OSError as e:
        raise MiniftError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise MiniftError(f"{path}: line {line}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
                          "save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_text_files(paths) -> list[str]:
    """One string per file. A folder stands for the *.txt files inside it (recursively, in sorted order)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.txt") if f.is_file())
            if not found:
                raise MiniftError(f"{p}: folder has no .txt files")
            files += found
        else:
            files.append(p)
    if not files:
        raise MiniftError("load_text_files: no files given")
    texts = []
    for f in files:
        text = _read_utf8(f)
        if not text.strip():
            raise MiniftError(f"{f}: file is empty")
        texts.append(text)
    return texts


# ---- records -----------------------------------------------------------------------------------------------------
def _jsonl_records(path: Path, text: str):
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = (" (a record file holds one JSON object per line, JSON Lines; a pretty-printed object spread over "
                    "lines is not one)" if line.strip() in ("{", "[") else "")
            raise MiniftError(f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno}){hint}") from None
        if not isinstance(record, dict):
            hint = (" (a record file holds one JSON object per line, JSON Lines, not a JSON array of them)"
                    if isinstance(record, list) else "")
            raise MiniftError(f"{path}: line {n}: expected a JSON object {{...}}, got {type(record).__name__}{hint}")
        yield n, record


def _csv_records(path: Path, text: str, delimiter: str, fields: tuple[str, ...]):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    repeated = sorted({h for h in header if header.count(h) > 1 and h in fields})
    if repeated:
        raise MiniftError(f"{path}: line 1: the header names the column(s) {repeated} twice; which one is meant?")
    missing = [f for f in fields if f not in header]
    if missing:
        raise MiniftError(f"{path}: line 1: the header {header} lacks the column(s) {missing}")
    start = reader.line_num + 1
    try:
        for row in reader:
            if row:
                if len(row) != len(header):
                    hint = (" (a field runs over several lines: a quote left open?)"
                            if any("\n" in f for f in row) else "")
                    raise MiniftError(f"{path}: line {start}: {len(row)} fields, the header has {len(header)}{hint}")
                yield start, dict(zip(header, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise MiniftError(f"{path}: line {start}: malformed CSV ({e})") from None


def read_records(path, fields: tuple[str, ...]):
    """(line number, record) for each record of a JSONL or CSV/TSV file, each checked to have `fields` as
    non-empty strings (an integer is accepted and read as a string). Raises MiniftError with file and line."""
    path = Path(path)
    text = _read_utf8(path)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        rows = _csv_records(path, text, CSV_SUFFIXES[suffix], fields)
    elif suffix in JSONL_SUFFIXES or text.lstrip().startswith("{"):
        rows = _jsonl_records(path, text)
    else:
        raise MiniftError(f"{path}: unknown format; use .jsonl (one JSON object per line) or .csv/.tsv with a header")
    out = []
    for n, record in rows:
        for name in fields:
            if name not in record:
                raise MiniftError(f"{path}: line {n}: missing field {name!r}")
            value = record[name]
            if value is None:
                raise MiniftError(f"{path}: line {n}: field {name!r} is null")
            if isinstance(value, int) and not isinstance(value, bool):
                value = record[name] = str(value)
            if not isinstance(value, str):
                raise MiniftError(f"{path}: line {n}: field {name!r} must be a string"
                                  f"{' or an integer' if name == 'label' else ''}, got {type(value).__name__}")
            if not value.strip():
                raise MiniftError(f"{path}: line {n}: field {name!r} is empty")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:          # a lone surrogate, e.g. from the JSON escape "\ud83d" alone
                raise MiniftError(f"{path}: line {n}: field {name!r} is not valid Unicode text (a lone "
                                  "surrogate: half of an escaped emoji?)") from None
        out.append((n, record))
    if not out:
        raise MiniftError(f"{path}: no records (the file is empty, or holds only a header)")
    return out


def _label_order(name: str):
    """Numeric labels in numeric order ("2" before "10"), then the others alphabetically."""
    return (0, int(name), "") if re.fullmatch(r"-?[0-9]+", name) else (1, 0, name)   # ("--1" is a name)


def _check_label_names(path, names: list[str]) -> None:
    """Two names that differ only in case or surrounding spaces ("pos" and "pos ") are almost surely one label typed
    twice; as separate classes they would split its examples silently."""
    seen = {}
    for name in names:
        key = name.strip().casefold()
        if key in seen:
            raise MiniftError(f"{path}: the labels {seen[key]!r} and {name!r} differ only in case or spaces; write "
                              "each label one way (or name them apart if they really are two)")
        seen[key] = name


def load_classification(path, labels=None, text_field="text", label_field="label"
                        ) -> tuple[list[str], list[int], list[str]]:
    """(texts, label_ids, label_names) from a file with "text" and "label" fields (or the names given).

    With `labels`, ids follow that list and any other label is an error; without, the names are the labels found,
    sorted, numbers numerically (so the same file always gives the same ids, and labels 0..K-1 get ids 0..K-1).
    """
    records = read_records(path, (text_field, label_field))
    if labels is None:
        names = sorted({rec[label_field] for _, rec in records}, key=_label_order)
        if len(names) < 2:
            raise MiniftError(f"{path}: every example has the label {names[0]!r}; a classifier needs at least two "
                              "labels to tell apart")
        _check_label_names(path, names)
    else:
        names = [str(x) for x in labels]
        if len(set(names)) != len(names):
            raise MiniftError(f"{path}: the label names {names} repeat one; each label needs one name")
        for n, rec in records:
            if rec[label_field] not in names:
                raise MiniftError(f"{path}: line {n}: unknown label {rec[label_field]!r}; expected one of {names}")
    index = {name: i for i, name in enumerate(names)}
    return [rec[text_field] for _, rec in records], [index[rec[label_field]] for _, rec in records], names


def load_generation(path, prompt_field="prompt", completion_field="completion") -> tuple[list[str], list[str]]:
    """(prompts, completions) from a file with "prompt" and "completion" fields (or the names given), both
    non-empty.

    Whitespace is kept as written: a completion usually starts with a space (" She lives in Oakford."), which is
    how GPT-2's tokens mark the start of a word.
    """
    records = read_records(path, (prompt_field, completion_field))
    return [rec[prompt_field] for _, rec in records], [rec[completion_field] for _, rec in records]


# ---- tasks -------------------------------------------------------------------------------------------------------
@dataclass
class TaskSplit:
    """One split of a task. Classification fills texts/label_ids/label_names; generation fills prompts/completions."""
    name: str
    split: str
    type: str                                           # "classification" | "generation"
    path: Path
    texts: list[str] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)            # the task.json, when there is one

    def __len__(self) -> int:
        return len(self.texts) if self.type == "classification" else len(self.prompts)

    def subset(self, n: int) -> "TaskSplit":
        """The first n examples, labels kept balanced: round-robin over the labels in file order (a learner's
        --train-size). For generation, simply the first n."""
        if not isinstance(n, int) or n <= 0:
            raise MiniftError(f"subset size {n!r} must be a positive int")
        if n >= len(self):
            return self
        if self.type == "generation":
            keep = list(range(n))
        else:
            queues = [[i for i, y in enumerate(self.label_ids) if y == c] for c in range(len(self.label_names))]
            keep = [q[k] for k in range(len(self)) for q in queues if k < len(q)][:n]
            keep.sort()

        def pick(xs):
            return [xs[i] for i in keep] if xs else []
        return TaskSplit(self.name, self.split, self.type, self.path, pick(self.texts), pick(self.label_ids),
                         list(self.label_names), pick(self.prompts), pick(self.completions), self.info)


def _record_type(path: Path, prompt_field="prompt", completion_field="completion") -> str:
    """Classification or generation, from the CSV header or the first JSON record's fields."""
    text, suffix = _read_utf8(path), path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        keys = next(csv.reader(io.StringIO(text, newline=""), delimiter=CSV_SUFFIXES[suffix]), [])
    elif suffix in JSONL_SUFFIXES or text.lstrip().startswith("{"):
        keys = next((rec for _, rec in _jsonl_records(path, text)), {})
    else:
        raise MiniftError(f"{path}: unknown format; use .jsonl (one JSON object per line) or .csv/.tsv with a header")
    return "generation" if prompt_field in keys and completion_field in keys else "classification"


def _resolve(name_or_path, split: str) -> tuple[str, Path, dict]:
    """(task name, file of the split, task.json contents) for a built-in name, a task folder, or a file."""
    from .tasks import SPLITS, TASK_NAMES
    if str(name_or_path) in TASK_NAMES:
        folder = data_dir() / "tasks" / str(name_or_path)
        mine = Path(str(name_or_path))          # a task folder of the user's by the same name (not, say, a run's)
        looks_like_task = mine.is_dir() and ((mine / "task.json").is_file() or _split_file(mine, "train") is not None)
        if isinstance(name_or_path, str) and looks_like_task and mine.resolve() != folder.resolve():
            raise MiniftError(f"task {name_or_path!r} names a built-in task, and ./{name_or_path} exists here too: "
                              f"write ./{name_or_path} for yours, or {folder} for the built-in one")
        if not folder.is_dir():
            raise MiniftError(f"built-in task {name_or_path!r}: {folder} is missing; run `python -m minift.data` "
                              "to regenerate data/")
    else:
        folder = Path(name_or_path)
        if folder.is_file():
            return folder.stem, folder, {}
        if not folder.is_dir():
            raise MiniftError(f"task {name_or_path!r} is neither a built-in task {TASK_NAMES}, nor a folder, nor a "
                              "file")
    info = {}
    if (folder / "task.json").is_file():
        try:
            info = json.loads(_read_utf8(folder / "task.json"))
        except json.JSONDecodeError as e:
            raise MiniftError(f"{folder / 'task.json'}: invalid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(info, dict):
            raise MiniftError(f"{folder / 'task.json'} holds a JSON {type(info).__name__}, not an object "
                              '(e.g. {"type": "classification", "labels": ["negative", "positive"]})')
        _check_task_info(folder / "task.json", info)
    found = _split_file(folder, split)
    if found is None:
        raise MiniftError(f"task folder {folder} has no {split}.jsonl (or .csv); splits are usually {SPLITS}")
    return info.get("name", folder.name), found, info


def _split_file(folder: Path, split: str) -> Path | None:
    """The record file of one split in a task folder (train.jsonl, validation.csv, ...), or None."""
    return next((c for c in (folder / f"{split}{s}" for s in (*JSONL_SUFFIXES, *CSV_SUFFIXES)) if c.is_file()), None)


FIELD_KEYS = {"text_field": "text", "label_field": "label", "prompt_field": "prompt", "completion_field": "completion"}


def _check_task_info(path: Path, info: dict) -> None:
    """The keys of task.json that minift reads must have the types it reads them as."""
    kind = info.get("type")
    if kind is not None and kind not in ("classification", "generation"):
        raise MiniftError(f"{path}: \"type\" is {kind!r}; use \"classification\" or \"generation\"")
    labels = info.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool)
                                                   for x in labels):
            raise MiniftError(f'{path}: "labels" must be a list of label names (strings or integers), such as '
                              f'["negative", "positive"]; got {labels!r}')
        if len(labels) < 2:
            raise MiniftError(f'{path}: "labels" {labels!r} names fewer than two labels; a classifier needs two')
        _check_label_names(path, [str(x) for x in labels])
    for key in FIELD_KEYS:
        value = info.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise MiniftError(f"{path}: {key!r} must be a field name (a non-empty string); got {value!r}")
    if not isinstance(info.get("name", ""), str):
        raise MiniftError(f"{path}: \"name\" must be a string; got {info['name']!r}")


def load_task(name_or_path, split: str = "train", labels=None) -> TaskSplit:
    """One split of a task: a built-in name ("sentiment", "facts"), a folder with <split>.jsonl (and optionally a
    task.json giving type and labels), or a single record file (then `split` only names it).

    labels: for a classification task, the label names whose positions are the ids (task.json's "labels" when
    given, else the names found in this split, sorted). Pass the training split's names when loading the
    validation and test splits: ids must mean the same label in every split, and a label training never saw is an
    error."""
    name, path, info = _resolve(name_or_path, split)
    fields = {key: info.get(key) or default for key, default in FIELD_KEYS.items()}
    kind = info.get("type") or _record_type(path, fields["prompt_field"], fields["completion_field"])
    if kind == "classification":
        texts, ids, names = load_classification(path, info.get("labels") or labels, fields["text_field"],
                                                fields["label_field"])
        return TaskSplit(name, split, kind, path, texts=texts, label_ids=ids, label_names=names, info=info)
    if kind == "generation":
        prompts, completions = load_generation(path, fields["prompt_field"], fields["completion_field"])
        return TaskSplit(name, split, kind, path, prompts=prompts, completions=completions, info=info)
    raise MiniftError(f"{path}: task type {kind!r} is not 'classification' or 'generation'")
