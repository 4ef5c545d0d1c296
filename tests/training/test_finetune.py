"""Fine-tuning methods (one freeze mechanism) and the finetune command on user files and built-in tasks."""
import json

import numpy as np
import pytest

from minift import GPT, GPTConfig, MiniftError
from minift.app.cli import main
from minift.methods import freeze_plan, setup_method
from minift.training.finetune import FinetuneConfig, finetune, load_task_splits
from minift.formats.tokenizer import Tokenizer
from minift.data import data_dir


def tiny_base(tmp_path):
    """A tiny random base with the shipped tokenizer's vocabulary, saved as a model folder with that tokenizer."""
    model = GPT(GPTConfig.preset("tiny", vocab_size=2048), seed=0)
    model.save_pretrained(tmp_path / "base", Tokenizer.load(data_dir() / "tokenizer.json"))
    return tmp_path / "base", model


def test_freeze_plans():
    model = GPT(GPTConfig.preset("tiny"), seed=0)
    assert freeze_plan(model, "full") == set()
    frozen = freeze_plan(model, "freeze", freeze_blocks=1)
    assert {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"} <= frozen
    assert not any(n.startswith("h.1.") for n in frozen) and "ln_f.weight" not in frozen
    assert "h.1.ln_1.weight" in freeze_plan(model, "freeze", freeze_blocks=1, freeze_layernorm=True)
    with pytest.raises(MiniftError, match="classification head"):
        freeze_plan(model, "head")
    model.add_classification_head(["a", "b"])
    assert freeze_plan(model, "head") == set(model.params) - {"score.weight"}
    with pytest.raises(MiniftError, match="freeze_blocks=5"):
        freeze_plan(model, "freeze", freeze_blocks=5)
    with pytest.raises(MiniftError, match="method 'sgd'"):
        setup_method(model, "sgd")


def test_a_single_user_file_is_split_without_overlap(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": f"review number {i}", "label": ["bad", "good"][i % 2]}) + "\n"
                            for i in range(40)))
    train, val, test = load_task_splits(path)
    assert (len(train), len(val), len(test)) == (32, 4, 4)
    assert not set(train.texts) & (set(val.texts) | set(test.texts))


def test_train_sizes_and_labels_training_cannot_see_are_refused(tmp_path):
    path = tmp_path / "topics.jsonl"
    labels = ["food", "sport"] * 20 + ["weather"]                  # one weather example: where will it land?
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": lab}) + "\n" for i, lab in enumerate(labels)))
    with pytest.raises(MiniftError, match="train size 33 .* more than the 32 training examples"):
        load_task_splits(path, train_size=33)
    with pytest.raises(MiniftError, match=r"\['weather'\] have no example in the 80% of topics.jsonl"):
        load_task_splits(path)                                     # the seeded split puts it in validation or test
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "task.json").write_text('{"labels": ["food", "sport", "weather"]}')
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n"
                                                       for i, lab in enumerate(["food", "sport"] * 3)))
    with pytest.raises(MiniftError, match=r"\['weather'\] have no example in the training split"):
        load_task_splits(folder)                                   # task.json names a label training lacks
    (folder / "task.json").unlink()
    assert len(load_task_splits(folder, train_size=2, eval_size=1000)[1]) == 6   # evaluation sizes: at most
    with pytest.raises(MiniftError, match=r"\['sport'\] have no example in the training split \(of 1 examples\)"):
        load_task_splits(folder, train_size=1)


def test_a_task_folder_numbers_labels_by_the_training_split(tmp_path):
    # Each split used to number its labels from its own sorted names: a validation file holding only "pos" got
    # id 0, which the head had learnt as "neg", and scored 0% on a perfect model.
    folder = tmp_path / "mytask"
    folder.mkdir()
    write = lambda name, labels: (folder / f"{name}.jsonl").write_text(                      # noqa: E731
        "".join(json.dumps({"text": f"{name} {i}", "label": lab}) + "\n" for i, lab in enumerate(labels)))
    write("train", ["neg", "pos"] * 5)
    write("validation", ["pos"] * 3)
    write("test", ["pos", "neg"])
    train, val, test = load_task_splits(folder)
    assert train.label_names == val.label_names == test.label_names == ["neg", "pos"]
    assert val.label_ids == [1, 1, 1] and test.label_ids == [1, 0]
    write("test", ["pos", "zzz"])                     # a label training never saw: an error naming file and line
    with pytest.raises(MiniftError, match=r"test.jsonl: line 2: unknown label 'zzz'"):
        load_task_splits(folder)


def test_finetune_command_on_a_user_file_full_and_lora(tmp_path):
    base_dir, _ = tiny_base(tmp_path)
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": f"it was {w}", "label": lab}) + "\n"
                            for w, lab in [("great", "good"), ("awful", "bad")] * 20))
    for method in ("full", "lora"):
        out = tmp_path / method
        assert main(["finetune", "--method", method, "--task", str(path), "--base", str(base_dir), "--steps", "3",
                     "--batch", "4", "--out", str(out), "--quiet"]) == 0
        summary = json.loads((out / "finetune.json").read_text())
        assert summary["task_type"] == "classification" and summary["train_examples"] == 32
        assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()



def test_a_classifier_fine_tuned_again_on_its_labels_keeps_its_head(tmp_path):
    """Continual improvement (article §1.2): a model fine-tuned on a task, trained on with more data, starts from
    its trained head -- its rows put in the task's label order -- and not from a fresh one; other labels, a new head."""
    from minift.methods import task_head
    from minift.data import load_task
    _, base = tiny_base(tmp_path)
    split = load_task("sentiment", "train")                                   # labels negative, positive
    clf = base.to()
    clf.add_classification_head(list(reversed(split.label_names)), seed=3)    # the same labels, the other order
    trained = np.array(clf.params["score.weight"])                             # [K, C]
    model = clf.to()
    assert task_head(model, split, seed=0) == "kept"
    assert model.labels == split.label_names
    np.testing.assert_array_equal(model.params["score.weight"], trained[::-1])   # row k is still label k's
    other = base.to()
    other.add_classification_head(["cold", "hot"], seed=3)
    assert task_head(other, split, seed=0) == "new" and other.labels == split.label_names
    fresh = base.to()
    assert task_head(fresh, split, seed=0) == "new"
    np.testing.assert_array_equal(other.params["score.weight"], fresh.params["score.weight"])   # the seed's draw
    assert task_head(base.to(), load_task("facts", "train")) == "lm"
    again = clf.to()
    assert task_head(again, split, seed=0, head_mode="new") == "new"                 # asked for: a fresh head
    np.testing.assert_array_equal(again.params["score.weight"], fresh.params["score.weight"])
    with pytest.raises(MiniftError, match="the base has no classification head"):
        task_head(base.to(), split, head_mode="keep")
    with pytest.raises(MiniftError, match="generation task"):
        task_head(base.to(), load_task("facts", "train"), head_mode="new")
    with pytest.raises(MiniftError, match=r"head_mode='fresh' \(--head\) is not one of"):
        FinetuneConfig(head_mode="fresh")
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    _, _, summary = finetune(clf, tok, FinetuneConfig(method="head", steps=1, batch_size=4, train_size=8,
                                                      eval_size=4), progress=False)
    assert summary["head"] == "kept"



@pytest.mark.parametrize("base_labels", [["positive", "negative"], ["cold", "hot", "warm"]])
def test_an_adapter_trained_on_a_classifier_base_loads_back_onto_it(tmp_path, base_labels):
    """The adapter's head (modules_to_save) replaces the base's, with the adapter's labels: a base head over the same
    labels in another order, or over other labels and another number of them, must not survive the load."""
    from minift import load_peft
    _, base = tiny_base(tmp_path)
    clf = base.to()
    clf.add_classification_head(base_labels, seed=5)
    clf.save_pretrained(tmp_path / "clf")
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    fcfg = FinetuneConfig(steps=2, batch_size=4, train_size=8, eval_size=4)
    tuned, lora, s = finetune(GPT.from_pretrained(tmp_path / "clf"), tok, fcfg, out_dir=tmp_path / "run",
                              progress=False)
    assert s["head"] == ("kept" if len(base_labels) == 2 else "new")
    loaded = GPT.from_pretrained(tmp_path / "clf")
    load_peft(loaded, tmp_path / "run" / "adapter")
    assert loaded.labels == tuned.labels == ["negative", "positive"]
    config = tmp_path / "run" / "adapter" / "adapter_config.json"
    peft = json.loads(config.read_text())
    peft["minift"]["labels"] = ["a", "b", "c"]                  # a file whose labels disagree with its head
    config.write_text(json.dumps(peft))
    untouched = GPT.from_pretrained(tmp_path / "clf")
    with pytest.raises(MiniftError, match="records 3 labels .* the head in adapter_model.safetensors has 2 rows"):
        load_peft(untouched, tmp_path / "run" / "adapter")
    assert untouched.labels == base_labels and not untouched.adapters              # refused before any change
    x = np.random.default_rng(0).integers(0, 2048, size=(2, 7))
    np.testing.assert_allclose(loaded.forward(x), tuned.forward(x), rtol=1e-5, atol=1e-6)

def test_lora_merge_saves_a_model_the_next_fine_tune_starts_from(tmp_path, capsys):
    """--merge writes W + ΔW as a whole model folder beside the adapter: it computes what base + adapter computes,
    and is the --base of the next fine-tune (merge, then a fresh adapter: continual learning as the MIT paper ran
    it)."""
    from minift import load_peft
    from minift.training.pretrain import heldout_for_base
    base_dir, base = tiny_base(tmp_path)
    (base_dir / "pretrain.json").write_text(json.dumps({"corpus": "world", "train_config": {"seed": 0}}))
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": f"it was {w}", "label": lab}) + "\n"
                            for w, lab in [("great", "good"), ("awful", "bad")] * 20))
    first = tmp_path / "first"
    assert main(["finetune", "--task", str(path), "--base", str(base_dir), "--steps", "3", "--batch", "4", "--lr",
                 "1e-2", "--merge", "--out", str(first), "--quiet"]) == 0
    assert "merged model" in capsys.readouterr().out
    summary = json.loads((first / "finetune.json").read_text())
    assert summary["base"] == str(base_dir.resolve()) and summary["base_fingerprint"] == base.fingerprint()
    carried = json.loads((first / "model" / "pretrain.json").read_text())   # what the original base read
    assert carried["corpus"] == "world" and carried["carried_from"] == str(base_dir.resolve())
    held_out = heldout_for_base(first / "model", Tokenizer.load(data_dir() / "tokenizer.json"), n_chars=2000)
    assert "another seed of the corpus pretraining read" in held_out[1]
    merged = GPT.from_pretrained(first / "model")
    assert not merged.adapters and merged.labels == ["bad", "good"]
    with_adapter = GPT.from_pretrained(base_dir)
    load_peft(with_adapter, first / "adapter")
    x = np.random.default_rng(0).integers(0, 2048, size=(2, 9))
    np.testing.assert_allclose(merged.forward(x), with_adapter.forward(x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(merged.params["h.0.attn.c_attn.weight"], base.params["h.0.attn.c_attn.weight"])
    second = tmp_path / "second"
    assert main(["finetune", "--task", str(path), "--base", str(first / "model"), "--steps", "2", "--batch", "4",
                 "--out", str(second), "--quiet"]) == 0
    assert "trained classification head (labels bad, good) was kept" in capsys.readouterr().out
    assert json.loads((second / "finetune.json").read_text())["head"] == "kept"      # the file's key is still "head"
    assert main(["finetune", "--task", str(path), "--base", str(first / "model"), "--steps", "3", "--batch", "4",
                 "--out", str(second), "--quiet", "--resume", "--head", "new"]) == 1     # it started from the kept head
    assert "resume with the --base, --head and LoRA options it was started with" in capsys.readouterr().err
    assert main(["finetune", "--task", str(path), "--base", str(first / "model"), "--steps", "2", "--batch", "4",
                 "--head", "new", "--out", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert "head (labels bad, good) was replaced by a new one for the task's labels (bad, good)" in \
        capsys.readouterr().out
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"it was {w}", "label": lab}) + "\n"
                             for w, lab in [("great", "up"), ("awful", "down")] * 20))
    assert main(["finetune", "--task", str(other), "--base", str(first / "model"), "--steps", "1", "--batch", "4",
                 "--head", "keep", "--out", str(tmp_path / "keep"), "--quiet"]) == 1
    assert "the base has a head over ['bad', 'good'] and the task's labels are ['down', 'up']" in \
        capsys.readouterr().err
    assert main(["finetune", "--method", "full", "--merge", "--task", str(path), "--base", str(base_dir)]) == 1
    assert "--merge: LoRA options, but --method is 'full'" in capsys.readouterr().err
    with pytest.raises(MiniftError, match="merge folds LoRA's adapters"):
        FinetuneConfig(method="full", merge=True)
    later = tmp_path / "later"                                  # forgot --merge: resuming the finished run adds it
    run = ["finetune", "--task", str(path), "--base", str(base_dir), "--steps", "2", "--batch", "4", "--out",
           str(later), "--quiet"]
    assert main(run) == 0 and not (later / "model").exists()
    assert main(run + ["--resume", "--merge"]) == 0 and (later / "model" / "model.safetensors").is_file()

def test_examples_longer_than_the_context_are_counted_and_said(tmp_path, capsys):
    base_dir, _ = tiny_base(tmp_path)
    path = tmp_path / "long.jsonl"
    words = " ".join(["word"] * 200)                         # ~200 tokens, more than tiny's context
    path.write_text("".join(json.dumps({"text": f"{w} {words if i % 4 == 0 else ''}", "label": lab}) + "\n"
                            for i, (w, lab) in enumerate([("great", "good"), ("awful", "bad")] * 20)))
    out = tmp_path / "run"
    assert main(["finetune", "--method", "head", "--task", str(path), "--base", str(base_dir), "--steps", "2",
                 "--batch", "4", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "finetune.json").read_text())
    cut = summary["train_examples_cut"]
    assert 0 < cut < summary["train_examples"] and summary["max_len"] == 64
    assert f"note: {cut} of 32 training examples are longer than the 64 tokens" in capsys.readouterr().out


def test_generation_task_trains_only_on_the_completion(tmp_path):
    _, base = tiny_base(tmp_path)
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    model, lora, summary = finetune(base, tok, FinetuneConfig(method="lora", task="facts", steps=2, batch_size=4,
                                                              train_size=8, eval_size=4), progress=False)
    assert summary["task_type"] == "generation" and model.head_kind == "lm"
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and np.isfinite(summary["test_loss"])
    assert all(np.array_equal(base.params[k], model.params[k]) for k in base.params)   # LoRA: base untouched


def test_head_lr_moves_only_the_head_at_its_own_rate(tmp_path):
    """head_lr is the fresh head's rate; LoRA's adapters keep lr. With Adam the first step moves each weight by
    ~its rate, so a head_lr 1000x smaller than lr leaves the head 1000x closer to where it started."""
    _, base = tiny_base(tmp_path)
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    cfg = dict(method="lora", task="sentiment", steps=3, batch_size=4, train_size=16, eval_size=8, lr=1e-2, warmup=0)
    moved = {}
    for head_lr in (1e-2, 1e-5):
        model, lora, summary = finetune(base, tok, FinetuneConfig(head_lr=head_lr, **cfg), progress=False)
        assert summary["lr"] == 1e-2 and summary["head_lr"] == head_lr
        start = base.to()
        start.add_classification_head(model.labels, seed=0)      # the same head draw finetune made
        moved[head_lr] = float(np.abs(model.params["score.weight"] - start.params["score.weight"]).max())
        b = next(v for k, v in lora.params.items() if k.endswith("lora_B.weight"))
        assert np.abs(b).max() > 1e-3                              # the adapters trained at lr either way
    assert moved[1e-5] < 1e-2 * moved[1e-2]
    with pytest.raises(MiniftError, match="head_lr"):
        FinetuneConfig(head_lr=0.0)
    _, _, s = finetune(base, tok, FinetuneConfig(**{**cfg, "method": "head"}), progress=False)
    assert s["head_lr"] == s["lr"] == 1e-2                          # method head: the head *is* what trains
    with pytest.raises(MiniftError, match="give its rate as lr"):
        finetune(base, tok, FinetuneConfig(**{**cfg, "method": "head"}, head_lr=1e-3), progress=False)
    with pytest.raises(MiniftError, match="trains no classification head"):
        finetune(base, tok, FinetuneConfig(**{**cfg, "task": "facts"}, head_lr=1e-3), progress=False)


def test_metrics_do_not_depend_on_the_adapters_mode():
    """With LoRA dropout and the handle in train mode, a forward-only metric must still switch dropout off."""
    import numpy as np
    from minift import GPT, GPTConfig, LoRAConfig, attach_lora
    from minift.training.evaluate import lm_loss
    model = GPT(GPTConfig.preset("tiny"), seed=0)
    lora = attach_lora(model, LoRAConfig(r=2, alpha=4, dropout=0.5), seed=0)
    for a in lora.params.values():
        a += 0.1                                            # B ≠ 0: dropout would change the output
    ids = np.arange(2, 200) % 500
    in_train = [lm_loss(model, ids, max_windows=2) for _ in range(2)]
    assert lora.training and in_train[0] == in_train[1] == lm_loss(model, ids, max_windows=2)
    lora.eval()
    assert lm_loss(model, ids, max_windows=2) == in_train[0]


def test_evaluating_along_the_way_does_not_change_the_training(tmp_path):
    """compare evaluates every run EVALS times to draw its curve: an evaluation draws no random numbers and changes
    no state, so the losses and the final weights are bitwise those of a run scored only at the end."""
    base_dir, base = tiny_base(tmp_path)
    tok = Tokenizer.load(data_dir() / "tokenizer.json")
    runs = []
    for every in (0, 2):
        fcfg = FinetuneConfig(method="full", steps=4, batch_size=4, train_size=16, eval_size=8, eval_every=every)
        model, _, s = finetune(base, tok, fcfg, progress=False)
        runs.append(([h["loss"] for h in s["history"]], model.params, [e["step"] for e in s["evals"]]))
    (loss0, params0, at0), (loss2, params2, at2) = runs
    assert (at0, at2) == ([4], [2, 4]) and loss0 == loss2
    assert all(np.array_equal(params0[k], params2[k]) for k in params0)
