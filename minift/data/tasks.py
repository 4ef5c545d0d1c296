"""The built-in downstream tasks, and how they are written to data/tasks/<task>/.

    sentiment   classification, labels negative/positive: compositional reviews (sentiment.py)
    facts       generation, prompt -> completion: questions about the world's people (facts.py)

Each task folder holds train.jsonl, validation.jsonl, test.jsonl (one JSON object per line) and task.json (type,
labels, description, sizes, the generator and its seeds, what is held out). Both are generated about World(0) from
fixed seeds with `StableRandom`, so `python -m minift.data` rewrites them byte for byte. Load them with
`minift.data.load_task("sentiment", "train")`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MiniftError
from ..formats.io import atomic_write_text
from .facts import FACTS_SEED, PROMPT, QUESTIONS, RELATIONS, make_facts, split_people
from .sentiment import KINDS, LABELS, NEGATORS, SENTIMENT_SEED, TEST_FRAMES, TRAIN_FRAMES, make_sentiment
from .world import WORLD_SEED, World

SPLITS = ("train", "validation", "test")
SIZES = {"train": 4000, "validation": 500, "test": 1000}
TASK_NAMES = ("sentiment", "facts")


def task_records(name: str, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """The records of a built-in task, per split, exactly as they are written to its JSONL files."""
    sizes = sizes or SIZES
    world = World(WORLD_SEED)
    if name == "sentiment":
        return {split: [{"text": r.text, "label": r.label, "kind": r.kind, "template": r.template} for r in reviews]
                for split, reviews in make_sentiment(world, sizes, SENTIMENT_SEED).items()}
    if name == "facts":
        return make_facts(world, sizes, FACTS_SEED)
    raise MiniftError(f"unknown task {name!r}; built-in tasks are {TASK_NAMES}")


def task_info(name: str, sizes: dict[str, int] | None = None) -> dict:
    """The task.json of a built-in task."""
    sizes = sizes or SIZES
    common = {"name": name, "splits": dict(sizes), "world_seed": WORLD_SEED,
              "regenerate": "python -m minift.data"}
    if name == "sentiment":
        return {**common, "type": "classification", "labels": list(LABELS), "text_field": "text",
                "label_field": "label",
                "description": "Short reviews of the world's films, books, meals and places. The label follows "
                               "composition rules: a negator flips an adjective, degree words keep it, and in "
                               "'X but Y' the clause after 'but' decides. Labels are balanced in every split and "
                               "in each of the four kinds.",
                "generator": {"function": "minift.data.sentiment.make_sentiment", "seed": SENTIMENT_SEED},
                "kinds": list(KINDS), "negators": list(NEGATORS),
                "held_out": {
                    "train_templates": [f.id for f in TRAIN_FRAMES], "test_templates": [f.id for f in TEST_FRAMES],
                    "template_patterns": {f.id: f.pattern for f in TRAIN_FRAMES + TEST_FRAMES},
                    "pairing_rule": "a review's pairing ((degree, adjective) for plain, (negator, adjective) for "
                                    "negation, (adjective, adjective) for contrasts) is test-only when "
                                    "crc32('seed|kind|a|b') % 4 == 0 (minift.data.sentiment.is_held_out)",
                    "validation": "same templates and pairings as train (in-distribution); test: held-out ones"}}
    if name == "facts":
        return {**common, "type": "generation", "prompt_field": "prompt", "completion_field": "completion",
                "description": "Questions about the people of World(0), answered with one sentence "
                               "(' She lives in Oakford.'). Loss on the completion only. The splits ask about "
                               "different people, so validation and test need facts learned in pretraining.",
                "generator": {"function": "minift.data.facts.make_facts", "seed": FACTS_SEED},
                "prompt_format": PROMPT, "relations": list(RELATIONS),
                "questions_per_relation": len(QUESTIONS[RELATIONS[0]]),
                "people": split_people(World(WORLD_SEED), seed=FACTS_SEED)}
    raise MiniftError(f"unknown task {name!r}; built-in tasks are {TASK_NAMES}")


def to_jsonl(records: list[dict]) -> str:
    """One JSON object per line, keys in their given order, UTF-8 kept as is."""
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def write_task(name: str, out_dir, sizes: dict[str, int] | None = None) -> list[Path]:
    """Write out_dir/<name>/{train,validation,test}.jsonl and task.json; return the paths written."""
    folder = Path(out_dir) / name
    written = [atomic_write_text(folder / f"{split}.jsonl", to_jsonl(records))
               for split, records in task_records(name, sizes).items()]
    info = json.dumps(task_info(name, sizes), indent=2, ensure_ascii=False) + "\n"
    written.append(atomic_write_text(folder / "task.json", info))
    return written


def write_tasks(out_dir, sizes: dict[str, int] | None = None) -> list[Path]:
    """Every built-in task under out_dir (normally data/tasks)."""
    return [p for name in TASK_NAMES for p in write_task(name, out_dir, sizes)]
