"""The data layer: the generated world and its corpus, pydoc text, tasks, file loaders, batching, shipped files."""
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.data import (BatchIterator, IGNORE_INDEX, SIZES, SPLITS, TASK_NAMES, World, classification_batch,
                         completion_batch, concat_documents, data_dir, load_classification, load_generation,
                         load_task, load_text_files, lm_windows, pydoc_corpus, regenerate, sequential_windows,
                         task_info, world_corpus)
from minift.data import lexicon as lx
from minift.data.build import versions
from minift.data.facts import RELATIONS, answer, make_facts, split_people
from minift.data.sentiment import (Clause, Predicate, TEST_FRAMES, TRAIN_FRAMES, is_held_out, make_sentiment,
                                   review_polarity, rule_label)
from minift.errors import MiniftError


@pytest.fixture(scope="module")
def world():
    return World(0)


@pytest.fixture(scope="module")
def docs(world):
    return world.documents(3000, seed=0)


# ---- the world ---------------------------------------------------------------------------------------------------
def test_world_is_deterministic(world):
    again = World(0)
    assert again.people == world.people and again.towns == world.towns and again.works == world.works
    other = World(1)
    assert [(p.name, p.town, p.job) for p in other.people] != [(p.name, p.town, p.job) for p in world.people]


def test_documents_deterministic_and_prefix_stable(world):
    a = world.documents(20, seed=0)
    assert a == World(0).documents(20, seed=0)
    assert a[:7] == world.documents(7, seed=0)                 # document i depends only on (seed, i)
    assert a != world.documents(20, seed=1)
    assert World(1).documents(20, seed=0) != a


def test_world_relations_are_consistent(world):
    for p in world.people:
        friend = world.person(p.best_friend)
        assert friend.best_friend == p.name and friend.name not in p.siblings
        for s in p.siblings:
            assert world.person(s).surname == p.surname and p.name in world.person(s).siblings
        town = world.town(p.town)
        assert town.has(p.job.workplace)                       # nobody works at a place their town lacks
        assert p.job.name != "fisher" or town.feature.water
        assert p.town in {t.name for t in world.towns} and 19 <= p.age <= 75


def test_facts_never_contradict_across_documents(world, docs):
    """Every sentence that states a person's town, job, pet or best friend by name agrees with the world."""
    names = "|".join(p.name for p in world.people)
    jobs = "|".join(sorted((j.name for j in lx.JOBS), key=len, reverse=True))
    checks = [
        (rf"\b({names}) lives in (?:the town of )?(\w+)", lambda p, m: m.group(2) == p.town),
        (rf"\b({names}) is an? ({jobs})\b", lambda p, m: m.group(2) == p.job.name),
        (rf"\b({names})'s (\w+) is called (\w+)", lambda p, m: m.group(2) != p.pet.kind or m.group(3) == p.pet_name),
        (rf"\b({names})'s best friend is (\w+)", lambda p, m: m.group(2) == p.best_friend),
        (rf"\b({names}) is (\d+) years old", lambda p, m: int(m.group(2)) == p.age),
    ]
    counts = [0] * len(checks)
    for doc in docs:
        for k, (pattern, ok) in enumerate(checks):
            for m in re.finditer(pattern, doc):
                counts[k] += 1
                assert ok(world.person(m.group(1)), m), f"contradiction: {m.group(0)!r} in\n{doc}"
    assert min(counts) > 20, counts                              # each kind of fact is restated many times


def test_documents_are_clean_english(docs):
    text = "\n".join(docs)
    leftovers = r"[{}]|None|  "                                 # unfilled template fields, double spaces
    bad_articles = r"\ba [aeiou]|\ban (?!hour)[b-df-hj-np-tv-z]"   # "a orange", "an bakery"
    assert not re.search(leftovers + "|" + bad_articles, text.replace("\n\n", "\n"))
    assert len(set(docs)) > 0.9 * len(docs)                    # variety, not repetition
    for doc in docs[:200]:
        assert doc == doc.strip() and doc[0].isupper()


def test_world_corpus_sizes_and_speed():
    t = time.perf_counter()
    texts = world_corpus(n_chars=1_000_000)
    assert time.perf_counter() - t < 5.0                       # about 0.3 s here; "a few seconds" is the bar
    assert sum(map(len, texts)) >= 1_000_000 and sum(map(len, texts[:-1])) < 1_000_000
    assert len(world_corpus(n_docs=5)) == 5
    with pytest.raises(MiniftError):
        world_corpus(n_chars=10, n_docs=10)
    with pytest.raises(MiniftError):
        world_corpus()


def test_pydoc_corpus():
    docs = pydoc_corpus()
    assert docs == pydoc_corpus()                              # deterministic order
    text = "\n".join(docs)
    assert len(docs) > 50 and len(text) > 200_000
    words = re.findall(r"[a-z]+", text.lower())
    assert words.count("the") / len(words) > 0.02              # English prose, not just code
    assert "0x7f" not in text                                  # no memory addresses from default values


# ---- sentiment ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    folder = data_dir() / "tasks"
    if not folder.is_dir():
        pytest.skip("data/tasks not generated (python -m minift.data)")
    return {(t, s): load_task(t, s) for t in TASK_NAMES for s in SPLITS}


def test_task_files_exist_with_their_sizes(shipped):
    for (task, split), data in shipped.items():
        assert len(data) == SIZES[split] == data.info["splits"][split]
        assert data.info["type"] == ("classification" if task == "sentiment" else "generation")


def test_splits_are_disjoint(shipped):
    for task in TASK_NAMES:
        key = (lambda d: d.texts) if task == "sentiment" else (lambda d: d.prompts)
        seen = [set(key(shipped[task, s])) for s in SPLITS]
        assert all(len(s) == SIZES[split] for s, split in zip(seen, SPLITS))      # no duplicates within a split
        assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_sentiment_labels_balanced_overall_and_per_kind():
    for split in SPLITS:
        records = [json.loads(line) for line in open(data_dir() / "tasks/sentiment" / f"{split}.jsonl")]
        for kind in {r["kind"] for r in records} | {None}:
            labels = [r["label"] for r in records if kind is None or r["kind"] == kind]
            assert labels.count("positive") == labels.count("negative")


def test_sentiment_test_split_is_held_out(world):
    """By construction: test templates and pairings never occur in train or validation, and vice versa."""
    splits = make_sentiment(world, SIZES)
    info = task_info("sentiment")["held_out"]
    assert set(info["test_templates"]) == {f.id for f in TEST_FRAMES}
    assert {r.template for r in splits["test"]} == {f.id for f in TEST_FRAMES}
    for split in ("train", "validation"):
        assert {r.template for r in splits[split]} == {f.id for f in TRAIN_FRAMES}
        assert not any(is_held_out(r.pairing) for r in splits[split])
    assert all(is_held_out(r.pairing) for r in splits["test"])
    train_pairings = {r.pairing for r in splits["train"]}
    assert not train_pairings & {r.pairing for r in splits["test"]}


def test_sentiment_rule_labels_every_shipped_review(shipped):
    for split in SPLITS:
        data = shipped["sentiment", split]
        assert data.label_names == ["negative", "positive"]
        for text, y in zip(data.texts, data.label_ids):
            assert rule_label(text) == data.label_names[y], text


@pytest.mark.parametrize("text, label", [
    ("The soup was tasty.", "positive"),
    ("The soup was not tasty.", "negative"),                  # negation flips
    ("The film was never boring.", "positive"),
    ("The book was not boring at all.", "positive"),
    ("The park was far from perfect.", "negative"),
    ("The story was hardly exciting.", "negative"),
    ("The film was a bit boring.", "negative"),               # downtoners keep the polarity
    ("The staff were extremely friendly.", "positive"),
    ("The story was dull, but the ending was wonderful.", "positive"),     # the clause after "but" decides
    ("The food was delicious, but the waiter was rude.", "negative"),
    ("The acting was not bad, but the plot was not clever.", "negative"),  # negation inside a contrast
    ("The streets were noisy but never dirty.", "positive"),
])
def test_composition_rules_on_hand_picked_reviews(text, label):
    assert rule_label(text) == label


def test_structured_reviews():
    dull_but_wonderful = (Clause("the story", False, Predicate("dull")), Clause("the ending", False,
                                                                                 Predicate("wonderful", degree="very")))
    assert review_polarity(dull_but_wonderful) == +1
    assert dull_but_wonderful[1].text() == "the ending was very wonderful"
    assert Predicate("bad", "not at all").text() == "not bad at all" and Predicate("bad", "not at all").polarity == 1
    assert Clause("the staff", True, Predicate("rude", "never")).text() == "the staff were never rude"


# ---- facts -------------------------------------------------------------------------------------------------------
def test_facts_people_split_and_answers(world, shipped):
    people = split_people(world)
    groups = [set(people[s]) for s in SPLITS]
    assert sum(map(len, groups)) == len(world.people) and not (groups[0] & groups[1] | groups[0] & groups[2])
    records = make_facts(world, SIZES)
    for split in SPLITS:
        assert {r["person"] for r in records[split]} <= set(people[split])
        assert [r["completion"] for r in records[split]] == shipped["facts", split].completions
        for r in records[split]:
            p = world.person(r["person"])
            assert r["completion"] == answer(p, r["relation"])
            assert r["completion"].split()[0] in (("She", "Her") if p.female else ("He", "His"))
            assert p.name in r["prompt"] and r["prompt"].endswith("\nAnswer:") and r["completion"][0] == " "
        assert {r["relation"] for r in records[split]} == set(RELATIONS)
    mila_like = world.people[0]
    assert answer(mila_like, "town") == f" {mila_like.he.capitalize()} lives in {mila_like.town}."


# ---- loaders -----------------------------------------------------------------------------------------------------
def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_load_text_files(tmp_path):
    a = _write(tmp_path / "a.txt", "Hello.\r\nWorld.")
    _write(tmp_path / "sub" / "b.txt", "More.") if (tmp_path / "sub").mkdir() is None else None
    assert load_text_files(a) == ["Hello.\nWorld."]
    assert load_text_files([tmp_path]) == ["Hello.\nWorld.", "More."]
    with pytest.raises(MiniftError, match="missing.txt: file not found"):
        load_text_files([a, tmp_path / "missing.txt"])
    with pytest.raises(MiniftError, match="empty.txt: file is empty"):
        load_text_files(_write(tmp_path / "empty.txt", "  \n"))
    with pytest.raises(MiniftError, match=r"latin.txt: line 2: not UTF-8"):
        load_text_files(_write(tmp_path / "latin.txt", "ok\ncaf\xe9", "latin-1"))


def test_jsonl_errors_name_file_and_line(tmp_path):
    good = '{"text": "fine", "label": "positive"}\n'
    cases = {
        '{"text": "fine", "label": "positive"\n': "line 2: invalid JSON",
        '{"text": "fine"}\n': "line 2: missing field 'label'",
        '{"text": ["a"], "label": "positive"}\n': "line 2: field 'text' must be a string",
        '{"text": "  ", "label": "positive"}\n': "line 2: field 'text' is empty",
        '["text", "label"]\n': "line 2: expected a JSON object",
    }
    for bad, message in cases.items():
        path = _write(tmp_path / "d.jsonl", good + bad + good)
        with pytest.raises(MiniftError, match=re.escape(f"d.jsonl: {message}")):
            load_classification(path)
    path = _write(tmp_path / "d.jsonl", good + "\n" + '{"text": "x", "label": "neutral"}\n')
    with pytest.raises(MiniftError, match=re.escape("d.jsonl: line 3: unknown label 'neutral'")):
        load_classification(path, labels=["negative", "positive"])
    with pytest.raises(MiniftError, match="no records"):
        load_classification(_write(tmp_path / "e.jsonl", "\n\n"))
    with pytest.raises(MiniftError, match="line 1: field 'completion' is empty"):
        load_generation(_write(tmp_path / "g.jsonl", '{"prompt": "Q", "completion": ""}\n'))


def test_classification_loader_results(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg", "x": 1}\n'
                                        '{"text": "c", "label": 1}\n')
    assert load_classification(path) == (["a", "b", "c"], [2, 1, 0], ["1", "neg", "pos"])   # found labels, sorted
    assert load_classification(path, labels=["pos", "neg", "1"])[1] == [0, 1, 2]


def test_csv_loader_and_line_numbers(tmp_path):
    path = _write(tmp_path / "d.csv", 'text,label\n"Good, very",positive\n"two\nlines",negative\nbad\n')
    with pytest.raises(MiniftError, match=re.escape("d.csv: line 5: 1 fields, the header has 2")):
        load_classification(path)
    path = _write(tmp_path / "d.csv", 'text,label\n"Good, very",positive\n"two\nlines",negative\nok,neutral\n')
    with pytest.raises(MiniftError, match=re.escape("d.csv: line 5: unknown label 'neutral'")):
        load_classification(path, labels=["negative", "positive"])
    assert load_classification(path)[0] == ["Good, very", "two\nlines", "ok"]
    with pytest.raises(MiniftError, match="line 1: the header"):
        load_classification(_write(tmp_path / "h.csv", "sentence,label\nx,y\n"))
    prompts, completions = load_generation(_write(tmp_path / "g.tsv", "prompt\tcompletion\nQ: hi\tA: hello\n"))
    assert (prompts, completions) == (["Q: hi"], ["A: hello"])


def test_load_task(tmp_path, shipped, monkeypatch):
    train = shipped["sentiment", "train"]
    small = train.subset(100)
    assert len(small) == 100 and small.label_ids.count(0) == small.label_ids.count(1) == 50
    assert shipped["facts", "test"].completions[0].startswith(" ")
    folder = tmp_path / "mytask"
    folder.mkdir()
    _write(folder / "train.jsonl", '{"prompt": "Q", "completion": " A"}\n')
    assert load_task(folder, "train").type == "generation"
    assert load_task(folder / "train.jsonl").prompts == ["Q"]
    with pytest.raises(MiniftError, match="has no validation.jsonl"):
        load_task(folder, "validation")
    with pytest.raises(MiniftError, match="neither a built-in task"):
        load_task("no-such-task")
    monkeypatch.setenv("MINIFT_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(MiniftError, match="python -m minift.data"):
        load_task("sentiment")


def installed_at(monkeypatch, site):
    """Make minift.data believe its package was imported from site/minift, as from a wheel: no checkout around."""
    from minift.data import loaders
    monkeypatch.delenv("MINIFT_DATA_DIR", raising=False)
    monkeypatch.setattr(loaders, "PACKAGE_DIR", site / "minift")
    monkeypatch.setattr(loaders, "PACKAGED_DATA_DIR", site / "minift" / "_data")


def test_data_dir_in_a_checkout_and_in_an_installed_package(tmp_path, monkeypatch, capsys):
    from minift.data import checkout_data_dir
    from minift.data.__main__ import main as regenerate_main
    root = Path(__file__).resolve().parents[2]
    assert checkout_data_dir() == root / "data" and data_dir() == root / "data"        # this checkout
    installed_at(monkeypatch, tmp_path)
    assert checkout_data_dir() is None
    with pytest.raises(MiniftError, match=r"_data does not exist.*pip install \..*MINIFT_DATA_DIR"):
        data_dir()
    (tmp_path / "minift" / "_data").mkdir(parents=True)
    assert data_dir() == tmp_path / "minift" / "_data"                                  # what a wheel carries
    with pytest.raises(SystemExit):                       # no checkout's data/ to regenerate: --out is needed
        regenerate_main(["--no-tokenizer"])
    assert "--out" in capsys.readouterr().err


# ---- batching ----------------------------------------------------------------------------------------------------
def test_concat_and_lm_windows():
    ids = concat_documents([[5, 6, 7], [8, 9]], eot_id=0)
    assert ids.tolist() == [5, 6, 7, 0, 8, 9, 0] and ids.dtype == np.int64
    stream = np.arange(100, dtype=np.int64)
    x, y = lm_windows(stream, block_size=8, batch_size=4, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == np.int64
    assert (y == x + 1).all()                                  # y is x shifted by one (stream holds 0, 1, 2, ...)
    x2, _ = lm_windows(stream, 8, 4, np.random.default_rng(0))
    assert (x2 == x).all()
    assert lm_windows(np.arange(9), 8, 3, np.random.default_rng(1))[1].max() == 8      # the last token is reachable
    with pytest.raises(MiniftError, match="cannot fill one window"):
        lm_windows(np.arange(8), 8, 1, np.random.default_rng(0))
    xs, ys = sequential_windows(stream, 10)
    assert xs.shape == (9, 10) and (ys == xs + 1).all()


def test_classification_batch_right_padding():
    ids, mask, labels = classification_batch([[1, 2, 3], [4], [5, 6, 7, 8, 9]], [1, 0, 1], pad_id=0, max_len=4)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [6, 7, 8, 9]]          # long text: the END is kept
    assert mask.tolist() == [[True] * 3 + [False], [True] + [False] * 3, [True] * 4]
    assert mask.dtype == bool and labels.tolist() == [1, 0, 1]
    last = mask.sum(1) - 1                                     # where the classifier reads
    assert ids[np.arange(3), last].tolist() == [3, 4, 9]
    ids, _, _ = classification_batch([[5, 6, 7, 8, 9]], [0], pad_id=0, max_len=4, keep="start")
    assert ids.tolist() == [[5, 6, 7, 8]]
    with pytest.raises(MiniftError, match="sequence 1 has no tokens"):
        classification_batch([[1], []], [0, 1], 0, 4)


@given(pairs=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), min_size=1, max_size=5),
       max_len=st.integers(1, 12))
def test_completion_batch_targets(pairs, max_len):
    prompts = [list(range(100, 100 + p)) for p, _ in pairs]    # prompt tokens 100.., completion tokens 200..
    completions = [list(range(200, 200 + c)) for _, c in pairs]
    x, y, mask = completion_batch(prompts, completions, pad_id=0, max_len=max_len)
    assert x.shape == y.shape == mask.shape and x.shape[1] <= max_len
    for b, (p, c) in enumerate(zip(prompts, completions)):
        c = c[:max_len]
        p = p[-max(1, max_len + 1 - len(c)):]
        s = p + c
        L = len(s) - 1                                         # inputs are s[:-1]
        assert x[b, :L].tolist() == s[:-1] and (x[b, L:] == 0).all()
        assert mask[b].tolist() == [True] * L + [False] * (x.shape[1] - L)
        scored = np.flatnonzero(y[b] != IGNORE_INDEX)
        assert scored.tolist() == list(range(len(p) - 1, L))   # exactly the completion's positions...
        assert y[b, scored].tolist() == c                      # ...holding the completion tokens, shifted by one
        assert all(y[b, t] == s[t + 1] for t in scored)


def test_batch_iterator_covers_and_resumes():
    it = BatchIterator(10, 4, seed=3)
    epoch = np.concatenate([next(it) for _ in range(it.batches_per_epoch)])
    assert sorted(epoch.tolist()) == list(range(10))
    assert [len(b) for b in (next(it), next(it), next(it))] == [4, 4, 2]      # epoch 2: same sizes, new order
    for _ in range(5):
        next(it)
    saved = json.loads(json.dumps(it.state()))                 # survives a JSON checkpoint
    ahead = [next(it).tolist() for _ in range(20)]
    resumed = BatchIterator.from_state(saved)
    assert [next(resumed).tolist() for _ in range(20)] == ahead
    dl = BatchIterator(10, 4, seed=0, drop_last=True)
    assert all(len(next(dl)) == 4 for _ in range(9)) and dl.batches_per_epoch == 2
    assert BatchIterator(10, 4, seed=1).next_batch().tolist() != BatchIterator(10, 4, seed=2).next_batch().tolist()
    with pytest.raises(MiniftError):
        BatchIterator.from_state({"n": 3})


# ---- shipped files -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    regenerate(out, verbose=False)                              # the full thing, tokenizer included: ~3 s
    return out


def test_shipped_tasks_equal_regenerated(regenerated):
    for path in sorted((regenerated / "tasks").rglob("*")) + [regenerated / "README.md"]:
        if path.is_file():
            shipped = data_dir() / path.relative_to(regenerated)
            assert shipped.is_file(), f"{shipped} missing: run python -m minift.data"
            assert shipped.read_bytes() == path.read_bytes(), f"{shipped} is stale: run python -m minift.data"


def test_shipped_tokenizer_equals_regenerated(regenerated):
    made_with = json.loads((data_dir() / "manifest.json").read_text())["made_with"]
    if made_with != versions():
        pytest.skip(f"data/tokenizer.json was made with {made_with}, this is {versions()}: the pydoc corpus and "
                    "the JSON layout differ between versions, so bytes need not match")
    assert (data_dir() / "tokenizer.json").read_bytes() == (regenerated / "tokenizer.json").read_bytes()
    assert (data_dir() / "manifest.json").read_bytes() == (regenerated / "manifest.json").read_bytes()


# ---- sources for the training loop -------------------------------------------------------------------------------
def _resumes_exactly(make, steps_before=5, steps_after=12):
    """Run a source, save its state mid-way (through JSON), restore into a fresh source: the same batches follow."""
    a = make()
    for _ in range(steps_before):
        a.next_batch()
    state = json.loads(json.dumps(a.state()))
    ahead = [a.next_batch() for _ in range(steps_after)]
    b = make()
    b.restore(state)
    for want, got in zip(ahead, (b.next_batch() for _ in range(steps_after))):
        assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)


def test_sources_resume_exactly():
    from minift.data import ClassificationSource, CompletionSource, LMSource
    rng = np.random.default_rng(0)
    lists = [rng.integers(2, 50, size=rng.integers(1, 9)).tolist() for _ in range(23)]
    _resumes_exactly(lambda: LMSource(np.arange(500), block_size=16, batch_size=4, seed=1))
    _resumes_exactly(lambda: ClassificationSource(lists, [i % 2 for i in range(23)], 0, 8, batch_size=5, seed=2))
    _resumes_exactly(lambda: CompletionSource(lists, lists[::-1], 0, 12, batch_size=5, seed=3))
    batch = CompletionSource(lists, lists[::-1], 0, 12, batch_size=5).next_batch()
    assert set(batch) == {"input_ids", "targets", "attention_mask"}
    assert batch["targets"].shape == batch["input_ids"].shape and batch["targets"].shape[0] == 5
    with pytest.raises(MiniftError, match="n=23 but .* has 10"):
        ClassificationSource(lists[:10], [0] * 10, 0, 8, 5).restore(
            ClassificationSource(lists, [0] * 23, 0, 8, 5).state())
    with pytest.raises(MiniftError, match="max_len=8 but .* has 12"):    # the same examples cut elsewhere
        CompletionSource(lists, lists, 0, 12, 5).restore(CompletionSource(lists, lists, 0, 8, 5).state())
    with pytest.raises(MiniftError, match="block_size=16 but .* has 32"):
        LMSource(np.arange(500), 32, 4, seed=1).restore(LMSource(np.arange(500), 16, 4, seed=1).state())
    with pytest.raises(MiniftError, match="batch_size=4 but .* has 2"):
        LMSource(np.arange(500), 16, 2, seed=1).restore(LMSource(np.arange(500), 16, 4, seed=1).state())
    old = {k: v for k, v in LMSource(np.arange(500), 16, 4, seed=1).state().items()
           if k not in ("block_size", "batch_size")}                 # saved before those were recorded
    LMSource(np.arange(500), 16, 4, seed=1).restore(old)
    with pytest.raises(MiniftError, match="other data"):       # as many examples, other tokens: the hash tells
        LMSource(np.arange(500) + 1, 16, 4, seed=1).restore(LMSource(np.arange(500), 16, 4, seed=1).state())
    with pytest.raises(MiniftError, match="other data"):
        ClassificationSource(lists, [1] * 23, 0, 8, 5).restore(ClassificationSource(lists, [0] * 23, 0, 8, 5).state())


def test_task_source_on_shipped_task(shipped):
    from minift.data import encode_split, task_source
    from minift.formats.tokenizer import Tokenizer
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    facts = shipped["facts", "validation"].subset(8)
    prompts, completions = encode_split(facts, tok)
    assert all(c[-1] == tok.eot_id for c in completions)        # completions end with <|endoftext|>
    assert tok.decode(prompts[0] + completions[0][:-1]) == facts.prompts[0] + facts.completions[0]
    batch = task_source(shipped["sentiment", "train"], tok, max_len=64, batch_size=8).next_batch()
    assert batch["input_ids"].shape[0] == 8 and batch["targets"].shape == (8,)


def test_numeric_labels_keep_numeric_order_and_bad_task_files_are_named(tmp_path):
    from minift.data.loaders import load_classification
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"text": f"t{i}", "label": i}) + "\n" for i in (10, 2, 0, 1)))
    texts, ids, names = load_classification(f)
    assert names == ["0", "1", "2", "10"] and ids == [3, 2, 0, 1]
    with pytest.raises(MiniftError, match="repeat one"):
        load_classification(f, labels=["0", "0", "1", "2", "10"])
    f.write_text('{"text": "broken \\ud83d emoji", "label": "a"}\n{"text": "fine", "label": "b"}\n')
    with pytest.raises(MiniftError, match="line 1: field 'text' is not valid Unicode"):
        load_classification(f)
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    (folder / "task.json").write_text('["x", "y"]')
    with pytest.raises(MiniftError, match="task.json holds a JSON list, not an object"):
        load_task(folder)


def test_record_file_mistakes_say_what_is_wrong(tmp_path):
    from minift.data.loaders import load_classification
    pretty = tmp_path / "t.jsonl"
    pretty.write_text('{\n  "text": "a",\n  "label": "x"\n}\n')
    with pytest.raises(MiniftError, match="one JSON object per line"):
        load_classification(pretty)
    twice = tmp_path / "t.csv"
    twice.write_text("text,label,text\na,x,b\n")
    with pytest.raises(MiniftError, match=r"names the column\(s\) \['text'\] twice"):
        load_classification(twice)
    twice.write_text("text,label\n")
    with pytest.raises(MiniftError, match="holds only a header"):
        load_classification(twice)
    twice.write_text('text,label\n"an open quote,x\nnext,y\n')
    with pytest.raises(MiniftError, match="line 2: 1 fields, the header has 2 .*a quote left open"):
        load_classification(twice)


def test_a_batch_length_below_one_is_refused():
    with pytest.raises(MiniftError, match="max_len=0 must be at least 1"):
        classification_batch([[1, 2, 3]], [0], pad_id=0, max_len=0)


def test_task_json_field_names_are_read_and_its_keys_checked(tmp_path):
    folder = tmp_path / "topics"
    folder.mkdir()
    rows = [{"review": f"text {i}", "topic": t} for i, t in enumerate(["food", "sport", "food", "sport"])]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.json").write_text(json.dumps({"type": "classification", "text_field": "review",
                                                  "label_field": "topic", "notes": "free text is fine"}))
    split = load_task(folder)
    assert split.texts[1] == "text 1" and split.label_names == ["food", "sport"] and split.label_ids == [0, 1, 0, 1]
    (folder / "train.jsonl").write_text('{"q": "Capital of France?", "a": " Paris"}\n')
    (folder / "task.json").write_text('{"prompt_field": "q", "completion_field": "a"}')    # the type from the fields
    split = load_task(folder)
    assert (split.type, split.prompts, split.completions) == ("generation", ["Capital of France?"], [" Paris"])
    for info, message in [('{"labels": 7}', '"labels" must be a list'),
                          ('{"labels": "a,b"}', '"labels" must be a list'),
                          ('{"labels": [null, "b"]}', '"labels" must be a list'),
                          ('{"labels": ["a"]}', "fewer than two"),
                          ('{"labels": ["pos", "Pos "]}', "differ only in case or spaces"),
                          ('{"type": "regression"}', '"type" is .regression.'),
                          ('{"text_field": 3}', "'text_field' must be a field name"),
                          ('{"name": ["x"]}', '"name" must be a string')]:
        (folder / "task.json").write_text(info)
        with pytest.raises(MiniftError, match=message):
            load_task(folder)


def test_label_mistakes_are_named(tmp_path):
    from minift.data.loaders import load_classification
    f = tmp_path / "t.csv"
    f.write_text("text,label\na,pos\nb,neg\nc,pos \n")
    with pytest.raises(MiniftError, match="the labels 'pos' and 'pos ' differ only in case or spaces"):
        load_classification(f)
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    with pytest.raises(MiniftError, match="line 2: field 'label' is null"):
        load_classification(f)
    f.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(MiniftError, match="line 2: missing field 'label'"):
        load_classification(f)


def test_a_folder_named_like_a_built_in_task_is_not_silently_passed_over(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "facts").mkdir()
    assert load_task("facts", "validation").type == "generation"    # a folder that is no task (a run's --out, say)
    (tmp_path / "facts" / "train.jsonl").write_text('{"prompt": "Q", "completion": " A"}\n')
    with pytest.raises(MiniftError, match="write ./facts for yours, or .*tasks/facts for the built-in one"):
        load_task("facts")
    assert load_task(str(data_dir() / "tasks" / "facts"), "validation").type == "generation"
