"""The command line: pretrain a tiny model, sample from it, and one-line errors for bad input."""
import json

import pytest

from minift.app.cli import main
from minift.errors import MiniftError

from helpers import signal_at_batch


def shipped_tokenizer():
    """data/tokenizer.json: a model folder carries the tokenizer it was trained with (load_base refuses one without)."""
    from minift.data import data_dir
    from minift.formats.tokenizer import Tokenizer
    return Tokenizer.load(data_dir() / "tokenizer.json")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    rc = main(["pretrain", "--preset", "tiny", "--chars", "300000", "--steps", "12", "--batch", "4",
               "--eval-every", "6", "--save-every", "6", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_pretrain_writes_model_tokenizer_and_summary(pretrained):
    summary = json.loads((pretrained / "pretrain.json").read_text())
    assert summary["preset"] == "tiny" and summary["tokens_seen"] == 12 * 4 * 64
    assert [e["step"] for e in summary["evals"]] == [6, 12]
    assert summary["evals"][1]["val_loss"] < summary["evals"][0]["val_loss"] + 0.5
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (pretrained / "model" / name).is_file()
    assert summary["tokenizer_vocab"] <= 512                    # tiny's vocabulary: a tokenizer was trained to fit
    from minift.formats.tokenizer import Tokenizer     # load_base checks the folder's tokenizer against it:
    assert summary["tokenizer_fingerprint"] == Tokenizer.load(pretrained / "model").fingerprint()
    run = json.loads((pretrained / "run.json").read_text())   # the command line a --resume repeats
    assert run["command"] == "pretrain" and run["argv"][:4] == ["minift", "pretrain", "--preset", "tiny"]


def test_pretrain_resume_continues(pretrained, tmp_path, capsys):
    rc = main(["pretrain", "--preset", "tiny", "--chars", "300000", "--steps", "14", "--batch", "4",
               "--eval-every", "6", "--save-every", "6", "--out", str(pretrained), "--quiet", "--resume"])
    assert rc == 0
    summary = json.loads((pretrained / "pretrain.json").read_text())
    assert summary["tokens_seen"] == 14 * 4 * 64


def test_threads_option_sets_numpy_blas(pretrained):
    from minift.measure.bench import blas_info, set_blas_threads
    before = blas_info()["threads"]
    if before is None:
        pytest.skip("numpy's BLAS thread count cannot be read in this build")
    want = 2 if before != 2 else 1
    try:
        rc = main(["pretrain", "--preset", "tiny", "--chars", "300000", "--steps", "14", "--batch", "4",
                   "--out", str(pretrained), "--quiet", "--resume", "--threads", str(want)])
        assert rc == 0 and blas_info()["threads"] == want
    finally:
        set_blas_threads(before)
    with pytest.raises(SystemExit):
        main(["finetune", "--threads", "0"])


def test_generate_from_a_model_folder(pretrained, capsys):
    rc = main(["generate", "--model", str(pretrained / "model"), "--prompt", "Ida is", "--max-new-tokens", "8",
               "--seed", "3", "--samples", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("Ida is") and "---" in out


def test_generate_with_a_fine_tuned_adapter(pretrained, tmp_path, capsys):
    """finetune's LoRA adapter, applied by generate on the base it was trained on, samples what the same model built
    in Python samples; a run folder given where a model folder is meant says where the result is."""
    from minift.generate import generate
    from minift.lora import load_peft
    from minift.base import load_base
    run = tmp_path / "facts"
    assert main(["finetune", "--method", "lora", "--rank", "2", "--task", "facts", "--base", str(pretrained / "model"),
                 "--steps", "2", "--batch", "4", "--train-size", "16", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(pretrained / "model"), "--adapter", str(run / "adapter"),
                 "--prompt", "Question: Where does Ida live?\nAnswer:", "--max-new-tokens", "6", "--seed", "2"]) == 0
    model, tok = load_base(pretrained / "model")
    load_peft(model, run / "adapter")
    prompt = "Question: Where does Ida live?\nAnswer:"
    assert capsys.readouterr().out == prompt + generate(model, tok, prompt, 6, 0.8, None, 2) + "\n"
    assert main(["generate", "--model", str(run)]) == 1
    assert f"its adapter is {run / 'adapter'}" in capsys.readouterr().err
    assert main(["generate", "--model", str(pretrained / "model"), "--adapter", str(run)]) == 1
    assert f"its adapter is {run / 'adapter'}" in capsys.readouterr().err
    clf = tmp_path / "sentiment"
    assert main(["finetune", "--method", "lora", "--rank", "2", "--base", str(pretrained / "model"), "--steps", "1",
                 "--batch", "4", "--train-size", "16", "--out", str(clf), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(pretrained / "model"), "--adapter", str(clf / "adapter")]) == 1
    assert "was trained for classification" in capsys.readouterr().err
    assert main(["generate", "--prompt", "caf\udce9"]) == 1         # a non-UTF-8 byte from the shell
    assert "--prompt holds bytes that are not UTF-8" in capsys.readouterr().err


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("minift: error: model folder not found") and "\n" not in err
    assert main(["pretrain", "--steps", "-3"]) == 1                 # TrainConfig refuses it, before any folder is made
    assert capsys.readouterr().err == "minift: error: steps=-3 (--steps) must be positive\n"
    with pytest.raises(SystemExit) as e:                             # text that is not a number: a usage error
        main(["pretrain", "--steps", "many"])
    assert e.value.code == 2


# ---- --out, --resume, --overwrite, and stopping with Ctrl-C -------------------------------------------------------

def test_out_must_be_new_empty_or_a_run_named_by_resume_or_overwrite(pretrained, tmp_path, capsys):
    pretrain = ["pretrain", "--preset", "tiny", "--chars", "300000", "--steps", "2", "--batch", "2", "--quiet"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(pretrain + ["--out", str(a_file)]) == 1
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "mine"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    for extra in ([], ["--overwrite"]):                   # someone else's folder: never written into, never deleted
        assert main(pretrain + ["--out", str(tmp_path / "mine"), *extra]) == 1
        assert "did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "mine"
    run = tmp_path / "run"
    assert main(pretrain + ["--out", str(run)]) == 0
    assert main(pretrain + ["--out", str(run)]) == 1      # a second run would mix its files with the first's
    assert "--resume to continue it, --overwrite to replace it" in capsys.readouterr().err
    (run / "report.md").write_text("a name minift writes (compare's report), left over")
    assert main(pretrain + ["--out", str(run), "--overwrite"]) == 0 and not (run / "report.md").exists()
    (run / "my_notes.txt").write_text("mine")                # a run plus the user's own file: never deleted
    assert main(pretrain + ["--out", str(run), "--overwrite"]) == 1
    assert "my_notes.txt" in capsys.readouterr().err and (run / "my_notes.txt").read_text() == "mine"
    (tmp_path / "mine" / "report.md").write_text("my own report")     # --resume does not write into it either
    assert main(pretrain + ["--out", str(tmp_path / "mine"), "--resume"]) == 1
    assert main(pretrain + ["--out", str(run), "--overwrite", "--resume"]) == 1
    assert main(pretrain + ["--out", str(tmp_path / "typo"), "--resume"]) == 1      # nothing to continue: say so
    assert "holds no run to continue" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    with pytest.raises(SystemExit) as e:
        main(pretrain + ["--out", str(tmp_path / "s"), "--seed", "-1"])
    assert e.value.code == 2


@pytest.mark.parametrize("method", [["lora"], ["qlora", "--quant", "int4", "--double-quant"]])
def test_finetune_stopped_by_ctrl_c_resumes_to_the_same_adapter(tmp_path, monkeypatch, capsys, method):
    """Stopped and resumed, a fine-tune ends bit for bit where an unstopped one does (QLoRA's checkpoint leaves its
    4-bit base out: quantised again from the same base, it is the same)."""
    from minift import GPT, GPTConfig
    from minift.data.sources import ClassificationSource
    from minift.formats.io import load_safetensors
    GPT(GPTConfig.preset("tiny", vocab_size=2048), seed=0).save_pretrained(tmp_path / "base", shipped_tokenizer())
    run = ["finetune", "--method", *method, "--rank", "2", "--base", str(tmp_path / "base"), "--steps", "6",
           "--batch", "4", "--train-size", "32", "--eval-every", "2", "--quiet"]
    assert main(run + ["--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as m:
        signal_at_batch(m, ClassificationSource, at=2)
        assert main(run + ["--out", str(tmp_path / "stopped")]) == 128 + 2
    err = capsys.readouterr().err
    assert "stopped by Ctrl-C after 3 steps" in err and "--resume" in err
    assert not (tmp_path / "stopped" / "adapter").exists()          # no result yet, only the checkpoint
    assert main(run + ["--out", str(tmp_path / "stopped"), "--resume"]) == 0
    straight, _ = load_safetensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    resumed, _ = load_safetensors(tmp_path / "stopped" / "adapter" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys() and all((straight[k] == resumed[k]).all() for k in straight)
    summaries = [json.loads((tmp_path / d / "finetune.json").read_text()) for d in ("straight", "stopped")]
    assert summaries[0]["evals"] == summaries[1]["evals"]
    assert [h["loss"] for h in summaries[0]["history"]] == [h["loss"] for h in summaries[1]["history"]]
    assert main(run + ["--out", str(tmp_path / "stopped"), "--resume", "--lr", "1e-2"]) == 1
    assert "other settings (lr (--lr): 0.002 -> 0.01," in capsys.readouterr().err
    if method[0] == "qlora":                  # another 4-bit code is another base: refused, the option named
        assert main([*run[:3], "--quant", "nf4", *run[5:], "--out", str(tmp_path / "stopped"), "--resume"]) == 1
        assert "--quant int4 -> nf4" in capsys.readouterr().err
        assert json.loads((tmp_path / "stopped" / "adapter" / "adapter_config.json").read_text())["minift"][
            "quant"] == "int4"


def test_more_bad_input_is_one_line_naming_it(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("text,label\nhi,a\n")
    one_label = tmp_path / "one.jsonl"
    one_label.write_text('{"text": "hi", "label": "a"}\n' * 12)
    (tmp_path / "listcfg").mkdir()
    (tmp_path / "listcfg" / "config.json").write_text("[1, 2]")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    from minift import GPT, GPTConfig
    classifier = GPT(GPTConfig.preset("demo"), seed=0)
    classifier.add_classification_head(["no", "yes"])
    classifier.save_pretrained(tmp_path / "clf", shipped_tokenizer())
    cases = [
        (["generate", "--temperature", "nan"], "temperature=nan"),
        (["memory", "--n-head", "5"], "divisible by n_head=5"),
        (["memory", "--preset", "tiny", "--rank", "1000"], "--rank 1000"),
        (["bench", "--method", "full", "--rank", "4"], "LoRA option"),
        (["compare", "--methods", "full", "--rslora", "--out", str(tmp_path / "c")], "--rslora: LoRA options"),
        (["finetune", "--method", "lora", "--quant", "fp4", "--out", str(tmp_path / "q")], "--quant: QLoRA options"),
        (["finetune", "--method", "full", "--double-quant", "--out", str(tmp_path / "q")], "--double-quant: QLoRA"),
        (["pretrain", "--files", str(notes), "--corpus", "pydoc", "--out", str(tmp_path / "p")], "drop --corpus"),
        (["finetune", "--task", str(notes), "--out", str(tmp_path / "f1")], "notes.txt: unknown format"),
        (["finetune", "--task", str(one_label), "--out", str(tmp_path / "f2")], "one.jsonl: every example has"),
        (["generate", "--model", str(tmp_path / "listcfg")], "holds a JSON list"),
        (["generate", "--model", str(tmp_path / "adapter")], "is a LoRA adapter"),
        (["finetune", "--targets", "", "--out", str(tmp_path / "f3")], "--targets is empty"),
        (["inspect", "--base", str(tmp_path / "clf"), "--task", "facts"], "which trains the language-model head"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("minift: error:") and message in err and "\n" not in err, (argv, err)
    for argv in (["inspect", "--train-lr", "0"], ["finetune", "--lr", "inf"], ["pretrain", "--lr", "nan"]):
        assert main(argv) == 1, argv                         # refused by the configuration that owns the rate
        err = capsys.readouterr().err.strip()
        assert err.startswith("minift: error:") and "learning rate" in err and "\n" not in err, (argv, err)
    with pytest.raises(SystemExit) as e:                     # text that is not a number: argparse's usage error
        main(["finetune", "--lr", "fast"])
    assert e.value.code == 2 and "expected a number" in capsys.readouterr().err
    assert main(["memory", "--method", "head", "--preset", "tiny"]) == 0      # a linear probe: a 2-label head
    assert "classification head" in capsys.readouterr().out


def test_resume_refuses_other_lora_options(tmp_path, capsys):
    from minift import GPT, GPTConfig
    GPT(GPTConfig.preset("tiny", vocab_size=2048), seed=0).save_pretrained(tmp_path / "base", shipped_tokenizer())
    run = ["finetune", "--method", "lora", "--rank", "2", "--base", str(tmp_path / "base"), "--steps", "2",
           "--batch", "4", "--train-size", "16", "--quiet", "--out", str(tmp_path / "run")]
    assert main(run) == 0
    for extra, says in ((["--alpha", "1"], "--alpha (default) -> 1.0"), (["--rslora"], "--rslora False -> True"),
                        (["--lora-dropout", "0.1"], "--lora-dropout (default) -> 0.1")):   # named from run.json
        assert main(run + ["--resume", *extra]) == 1
        err = capsys.readouterr().err
        assert "adapter configuration" in err and says in err
    assert main(run + ["--resume"]) == 0


def test_sigterm_outside_training_stops_with_a_message_and_status_143(monkeypatch, capsys):
    """train() turns SIGTERM into a stop at the end of a step; elsewhere (loading, measuring, writing the report) it
    must still say what happened instead of the process vanishing without a word."""
    import argparse
    import os
    import signal
    import minift.app.cli as cli

    def work(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    def parser():
        p = argparse.ArgumentParser()
        p.set_defaults(func=work)
        return p
    monkeypatch.setattr(cli, "build_parser", parser)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main([]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; nothing new was saved" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before                  # the handler is put back


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_something(pretrained, tmp_path, capsys):
    """--overwrite sets the earlier run aside; bad input found late, or a stop before the first checkpoint, puts it
    back untouched. Only a new run with a result or a checkpoint replaces it."""
    from minift.app.outdir import ASIDE
    ft = ["finetune", "--method", "lora", "--rank", "2", "--base", str(pretrained / "model"), "--steps", "2",
          "--batch", "4", "--train-size", "16", "--quiet"]
    run = tmp_path / "run"
    assert main(ft + ["--out", str(run)]) == 0
    before = _snapshot(run)
    assert main(ft + ["--out", str(run), "--overwrite", "--alpha", "0"]) == 1       # refused after the base loaded
    assert "alpha" in capsys.readouterr().err and _snapshot(run) == before
    assert main(ft + ["--out", str(run), "--overwrite", "--task", "nosuch"]) == 1
    assert _snapshot(run) == before and not (run / ASIDE).exists()
    assert main(ft + ["--out", str(run), "--overwrite", "--lr", "1e39"]) == 1        # diverges at the first step
    err = capsys.readouterr().err
    assert "before any training, so nothing was saved" in err and "the earlier run is back as it was" in err
    assert _snapshot(run) == before
    (run / "model").mkdir()                                     # a base model saved inside the run folder
    (run / "model" / "config.json").write_text("{}")
    before = _snapshot(run)
    assert main(ft[:6] + [str(run / "model")] + ft[7:] + ["--out", str(run), "--overwrite"]) == 1
    assert "lies inside --out" in capsys.readouterr().err and _snapshot(run) == before
    (run / "model" / "config.json").unlink()
    (run / "model").rmdir()
    before = _snapshot(run)
    assert main(ft + ["--out", str(run), "--overwrite", "--steps", "3"]) == 0       # a good run replaces it
    assert _snapshot(run) != before and not (run / ASIDE).exists()
    assert json.loads((run / "finetune.json").read_text())["steps"] == 3


def test_a_folder_set_aside_by_a_killed_run_is_put_back(pretrained, tmp_path):
    from minift.app.outdir import ASIDE, marker
    ft = ["finetune", "--method", "head", "--base", str(pretrained / "model"), "--steps", "2", "--batch", "4",
          "--train-size", "16", "--quiet"]
    run = tmp_path / "run"
    assert main(ft + ["--out", str(run)]) == 0
    before = _snapshot(run)
    (run / ASIDE).mkdir()                        # as kill -9 leaves it: the earlier run aside, the new one begun
    for e in list(run.iterdir()):
        if e.name != ASIDE:
            e.rename(run / ASIDE / e.name)
    (run / "checkpoints").mkdir()
    (run / "run.json").write_text(json.dumps(marker("finetune", ft)))      # the new run's marker, then killed
    assert main(ft + ["--out", str(run), "--resume", "--steps", "3"]) == 0        # settled first, then continued
    after = _snapshot(run)
    assert not (run / ASIDE).exists() and set(before) < set(after) and "checkpoints/step-000003/state.json" in after


def test_resume_refuses_another_commands_folder_and_failed_runs_leave_nothing(pretrained, tmp_path, capsys):
    from minift.app.outdir import marker
    ft = ["finetune", "--method", "head", "--base", str(pretrained / "model"), "--steps", "2", "--batch", "4",
          "--train-size", "16", "--quiet"]
    assert main(["compare", "--quick", "--methods", "head", "--quiet", "--out", str(tmp_path / "cmp")]) == 0
    assert main(ft + ["--out", str(tmp_path / "cmp"), "--resume"]) == 1
    assert "holds a `minift compare` run" in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "finetune.json").exists()
    assert main(ft + ["--out", str(tmp_path / "new"), "--task", "nosuch"]) == 1
    assert not (tmp_path / "new").exists()                    # a folder made for a run that never started
    (tmp_path / "spent" / "checkpoints").mkdir(parents=True)  # what a run killed before its first save leaves
    (tmp_path / "spent" / "run.json").write_text(json.dumps(marker("finetune", ft)))
    assert main(ft + ["--out", str(tmp_path / "spent")]) == 0


def test_options_that_would_be_ignored_are_refused(tmp_path, capsys):
    for argv, says in ((["finetune", "--method", "full", "--alpha", "32"], "--alpha: LoRA options"),
                       (["finetune", "--method", "head", "--targets", "c_attn", "--lora-dropout", "0.2"],
                        "--targets, --lora-dropout: LoRA options"),
                       (["memory", "--method", "full", "--rank", "8"], "--rank is a LoRA option"),
                       (["inspect", "--steps", "0", "--train-lr", "0.1"], "--steps is 0"),
                       (["inspect", "--steps", "0", "--module", "h.9.attn.c_attn"], "4-block model")):
        assert main(argv + (["--out", str(tmp_path / "x")] if argv[0] == "finetune" else [])) == 1, argv
        assert says in capsys.readouterr().err, argv
    assert not (tmp_path / "x").exists()


def test_generation_never_draws_ids_the_tokenizer_lacks():
    """A model's vocab_size may exceed its tokenizer's (padded, as GPT-2's 50257 often is to 50304): those ids
    have no text, and drawing one would fail at decode."""
    from minift import GPT, GPTConfig
    from minift.generate import generate_ids
    model = GPT(GPTConfig.preset("tiny"), seed=0)
    model.params["wte.weight"][10:] += 5.0                 # make the ids the tokenizer lacks the likeliest ones
    new = generate_ids(model, [1, 2, 3], max_new_tokens=30, temperature=1.5, seed=0, n_tokens=10)
    assert len(new) == 30 and max(new) < 10
    assert max(generate_ids(model, [1, 2, 3], max_new_tokens=5, temperature=0, n_tokens=10)) < 10


def test_a_finished_finetune_extends_with_more_steps(pretrained, tmp_path):
    """Fine-tuning derives its warmup from --steps (min(20, steps/5)); a resumed run keeps the warmup it started
    with, so a larger --steps extends it instead of being refused as 'other settings'."""
    ft = ["finetune", "--method", "head", "--base", str(pretrained / "model"), "--batch", "4", "--train-size", "16",
          "--quiet", "--out", str(tmp_path / "run")]
    assert main(ft + ["--steps", "10"]) == 0
    assert main(ft + ["--steps", "20", "--resume"]) == 0
    summary = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert len(summary["history"]) == 20 and summary["history"][10]["step"] == 10


def test_forgetting_text_follows_what_the_base_read(pretrained, tmp_path, capsys):
    """Forgetting is measured on text like the base's own pretraining text: a base pretrained on the user's files is
    scored on the part of them its pretraining held out, not on the world corpus it never saw."""
    from minift.base import base_pretraining, load_base
    from minift.training.pretrain import heldout_for_base
    _, tok = load_base(pretrained / "model")
    assert "world text" in heldout_for_base(pretrained / "model", tok, n_chars=20_000)[1]
    assert base_pretraining()["corpus"] == "world"                        # the shipped base: in its own folder
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("".join(f"Note {i}: the kettle boils at {i % 7 + 90} degrees.\n" for i in range(3000)))
    out = tmp_path / "base"
    assert main(["pretrain", "--preset", "tiny", "--files", str(notes), "--steps", "2", "--batch", "2",
                 "--tokenizer", str(pretrained / "model" / "tokenizer.json"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["corpus"] == [str(notes.resolve())] and summary["n_chars"] is None
    ids, what = heldout_for_base(out / "model", tok)
    assert ids.size == summary["val_tokens"] and "held out of its own text (files " in what
    older = dict(summary, corpus=["no/such/notes"])                  # relative, as pretrain.json once recorded
    (out / "pretrain.json").write_text(json.dumps(older))
    assert "relative paths that do not resolve" in heldout_for_base(out / "model", tok, n_chars=20_000)[1]
    (out / "pretrain.json").write_text(json.dumps(summary))
    (notes / "a.txt").rename(tmp_path / "moved.txt")
    with pytest.raises(MiniftError, match="cannot be read again .*folder has no .txt files.*put the files"):
        heldout_for_base(out / "model", tok)
    assert main(["pretrain", "--files", str(notes), "--chars", "1000", "--out", str(tmp_path / "p")]) == 1
    assert "drop --chars" in capsys.readouterr().err


def test_what_a_killed_write_leaves_is_removed_and_the_run_resumes(pretrained, tmp_path):
    """kill -9 inside atomic_write leaves its temporary file (at the top of --out, or in model/ or adapter/), inside
    a checkpoint save a .step-NNNNNN.partial/ folder: the next command removes them instead of refusing the folder
    or keeping stray copies of the weights."""
    ft = ["finetune", "--method", "lora", "--rank", "2", "--merge", "--base", str(pretrained / "model"), "--batch",
          "4", "--train-size", "16", "--quiet"]
    run = tmp_path / "run"
    assert main(ft + ["--steps", "2", "--out", str(run)]) == 0
    (run / "finetune.json").unlink()                              # killed while saving the final outputs:
    stale = [run / ".finetune.json.k2x9_a1b.tmp", run / "model" / ".model.safetensors.abc123.tmp",
             run / "adapter" / ".adapter_model.safetensors.x7.tmp",
             run / "checkpoints" / ".step-000004.partial" / "weights.safetensors"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half a file")
    assert main(ft + ["--steps", "2", "--out", str(run), "--resume"]) == 0    # the final save, done again
    assert not any(p.exists() for p in stale) and not stale[-1].parent.exists()
    assert json.loads((run / "finetune.json").read_text())["steps"] == 2
    (run / "checkpoints" / "latest").unlink()                   # killed between a checkpoint's rename and `latest`
    assert main(ft + ["--steps", "3", "--out", str(run), "--resume"]) == 0     # resumes from the newest step folder
    assert json.loads((run / "finetune.json").read_text())["steps"] == 3


def test_outputs_are_complete_when_the_summary_is_there(pretrained, tmp_path, monkeypatch, capsys):
    """The summary is removed before the outputs are rewritten and written last: a failure in between leaves no
    finetune.json beside an adapter of another step."""
    import minift.lora.peft_files as lora_files
    ft = ["finetune", "--method", "lora", "--rank", "2", "--base", str(pretrained / "model"), "--batch", "4",
          "--train-size", "16", "--quiet"]
    run = tmp_path / "run"
    assert main(ft + ["--steps", "2", "--out", str(run)]) == 0

    def disk_full(*args, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(lora_files, "save_safetensors", disk_full)
    assert main(ft + ["--steps", "3", "--out", str(run), "--resume"]) == 1
    assert "No space left" in capsys.readouterr().err and not (run / "finetune.json").exists()
    monkeypatch.undo()
    assert main(ft + ["--steps", "3", "--out", str(run), "--resume"]) == 0     # the checkpoint of step 3 is there
    assert json.loads((run / "finetune.json").read_text())["steps"] == 3


def test_a_folder_in_use_by_another_command_is_refused_and_left_alone(tmp_path):
    from minift.app.outdir import RunFolder, fcntl
    if fcntl is None:
        pytest.skip("no folder locks on this platform")
    first = RunFolder(tmp_path / "run", "finetune", argv=[])
    first.open()
    second = RunFolder(tmp_path / "run", "finetune", overwrite=True, argv=[])
    with pytest.raises(MiniftError, match="in use by another minift command"):
        second.open()
    assert second.close() is None and (tmp_path / "run" / "run.json").is_file()     # the first one's, untouched
    first.close()
    assert not (tmp_path / "run").exists()               # the first run saved nothing: the folder it made goes
    third = RunFolder(tmp_path / "run", "finetune", argv=[])
    third.open()                                         # free again
    third.close()


def test_a_folder_without_a_result_or_checkpoint_is_not_offered_to_resume(tmp_path, capsys):
    from minift.app.outdir import marker
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "run.json").write_text(json.dumps(marker("finetune", [])))     # a minift run that saved no result
    assert main(["finetune", "--method", "head", "--steps", "1", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--overwrite" in err and "--resume to" not in err


def test_usage_errors_are_one_line_and_name_the_subcommand(capsys):
    for argv, says in ((["finetune", "--rnak", "4"], "unrecognized arguments: --rnak 4 (`minift finetune --help`"),
                       (["finetune", "--rank", "two"], "argument --rank: expected an integer, got 'two'"),
                       (["nosuch"], "invalid choice: 'nosuch'")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("minift: error: ") and says in err and err.count("\n") == 1


def test_a_diverged_last_update_is_an_error_and_leaves_no_model(pretrained, tmp_path, capsys):
    ft = ["finetune", "--method", "full", "--base", str(pretrained / "model"), "--steps", "1", "--batch", "4",
          "--train-size", "16", "--quiet", "--out", str(tmp_path / "run")]
    assert main(ft + ["--lr", "1e9"]) == 1
    err = capsys.readouterr().err
    assert "after step 1: val_loss is not finite" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_numpy_floating_point_warnings_become_one_line(pretrained, tmp_path, capsys):
    """A LoRA step at an absurd rate: the loss stays finite (the run succeeds) but the forward overflows float32."""
    ft = ["finetune", "--method", "lora", "--base", str(pretrained / "model"), "--steps", "1", "--batch", "4",
          "--train-size", "16", "--quiet", "--out", str(tmp_path / "run")]
    assert main(ft + ["--lr", "1e9"]) == 0
    err = capsys.readouterr().err
    assert "minift: warning: NumPy reported" in err and "RuntimeWarning" not in err and err.count("\n") == 1


def test_messages_name_the_option_and_the_item(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    array = tmp_path / "train.jsonl"
    array.write_text('[{"text": "good", "label": "pos"}]\n')
    for argv, says in ((["compare", "--methods", "full, lorra"], "'lorra': each must be one of"),
                       (["generate", "--model", str(afile)], "is a file; give the model's folder"),
                       (["finetune", "--base", str(afile), "--out", str(tmp_path / "x")], "is a file"),
                       (["finetune", "--method", "freeze", "--freeze-blocks", "-1", "--out", str(tmp_path / "x")],
                        "(--freeze-blocks)"),
                       (["pretrain", "--preset", "tiny", "--steps", "2", "--warmup", "100", "--out",
                         str(tmp_path / "x")], "warmup=100 (--warmup) is longer than the run, steps=2 (--steps)")):
        assert main(argv) == 1, argv
        assert says in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        main(["compare", "--ranks", "1,,2"])
    assert "an empty item in '1,,2'" in capsys.readouterr().err
    from minift.data.loaders import read_records
    with pytest.raises(MiniftError, match="JSON Lines, not a JSON array"):
        read_records(array, ("text", "label"))
    array.write_text('{"text": "good", "label": 1.5}\n')
    with pytest.raises(MiniftError, match="must be a string or an integer, got float"):
        read_records(array, ("text", "label"))
    assert not (tmp_path / "x").exists()


def test_floating_point_warnings_are_counted_and_other_warnings_pass_through(capsys):
    import warnings

    import numpy as np

    from minift.app.cli import _FloatingPointWarnings
    with pytest.warns(UserWarning, match="shown as always"):
        with _FloatingPointWarnings() as fp:
            with np.errstate(over="warn", invalid="warn"):
                np.float32(3e38) * np.float32(10)                    # overflow
                np.zeros(1) / np.zeros(1)                            # invalid value (0/0)
            warnings.warn("shown as always")
    assert fp.count == 2
    fp.report(1)                                         # a failed run has said why in its error line
    assert capsys.readouterr().err == ""
    fp.report(0)
    err = capsys.readouterr().err
    assert "2 floating-point problem(s)" in err and "overflow encountered" in err and "--lr" in err
    fp.first = {"invalid value": "invalid value encountered in divide"}   # no overflow: no advice about the lr
    fp.report(0)
    err = capsys.readouterr().err
    assert "may be NaN" in err and "--lr" not in err


def test_a_users_temp_file_in_out_is_still_refused_and_odd_names_do_not_crash(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".notes.txt.x7.tmp").write_text("mine")          # looks like atomic_write's, but not for a minift name
    (run / "..tmp").write_text("")
    assert main(["finetune", "--method", "head", "--steps", "1", "--out", str(run)]) == 1
    assert "files minift did not write" in capsys.readouterr().err
    assert (run / ".notes.txt.x7.tmp").read_text() == "mine" and (run / "..tmp").exists()


@pytest.mark.parametrize("command", ["pretrain", "compare"])
def test_the_summary_is_dropped_before_the_outputs_are_rewritten(pretrained, tmp_path, monkeypatch, command):
    """As finetune's (test_outputs_are_complete_when_the_summary_is_there): a failure while pretrain saves its model,
    or while compare writes its runs' files, leaves no summary from before beside them."""
    import minift.app.compare
    import minift.model
    if command == "pretrain":
        argv = ["pretrain", "--preset", "tiny", "--chars", "300000", "--steps", "2", "--batch", "4", "--quiet"]
        where, name, summary = minift.model.GPT, "save_pretrained", "pretrain.json"
    else:
        argv = ["compare", "--quick", "--methods", "head", "--quiet"]
        where, name, summary = minift.app.compare, "run_one", "results.json"
    run = tmp_path / "run"
    assert main(argv + ["--out", str(run)]) == 0 and (run / summary).is_file()
    monkeypatch.setattr(where, name, _disk_full)
    assert main(argv + ["--out", str(run), "--resume"]) == 1
    assert not (run / summary).exists()


def _disk_full(*args, **kw):
    raise OSError(28, "No space left on device")


def test_resume_with_defaults_spelled_out_is_the_same_run(tmp_path, capsys):
    """--alpha 4 at --rank 2 is the default (2r): the same adapters, so --resume accepts it (the checkpoint decides,
    run.json's command line only names what differs when the checkpoint refuses)."""
    from minift import GPT, GPTConfig
    GPT(GPTConfig.preset("tiny", vocab_size=2048), seed=0).save_pretrained(tmp_path / "base", shipped_tokenizer())
    run = ["finetune", "--method", "lora", "--rank", "2", "--base", str(tmp_path / "base"), "--batch", "4",
           "--train-size", "16", "--quiet", "--out", str(tmp_path / "run")]
    assert main(run + ["--steps", "2"]) == 0
    assert main(run + ["--steps", "3", "--resume", "--alpha", "4", "--head", "new", "--targets", "all-linear"]) == 0


# ---- inspect --compare: two finished runs' updates, matrix by matrix ----------------------------------------------

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny base and three short fine-tunes of it (full, LoRA r=2, head-only): the folders finetune --out wrote."""
    from minift import GPT, GPTConfig
    root = tmp_path_factory.mktemp("runs")
    GPT(GPTConfig.preset("tiny", vocab_size=2048), seed=0).save_pretrained(root / "base", shipped_tokenizer())
    for method, extra in (("full", []), ("lora", ["--rank", "2"]), ("head", [])):
        assert main(["finetune", "--method", method, *extra, "--base", str(root / "base"), "--steps", "2",
                     "--batch", "4", "--train-size", "16", "--out", str(root / method), "--quiet"]) == 0
    return root


def _compare_json(root, capsys, a, b, *extra):
    capsys.readouterr()
    assert main(["inspect", "--compare", str(root / a), str(root / b), "--base", str(root / "base"), "--json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_compare_full_and_lora_matrix_by_matrix(tiny_runs, capsys):
    """Every block linear of the tiny model (2 blocks x 4): both runs changed it, k defaults to LoRA's r = 2, the
    similarity is a share in [0, 1] next to its random level k/out; a run against itself gives 1 everywhere."""
    capsys.readouterr()
    assert main(["inspect", "--compare", str(tiny_runs / "full"), str(tiny_runs / "lora"),
                 "--base", str(tiny_runs / "base")]) == 0
    out = capsys.readouterr().out
    assert "(full)" in out and "(lora r=2)" in out and "top-2 output subspaces" in out
    assert out.count(".weight ") == 8 and "mean similarity" in out and "no update" not in out
    result = _compare_json(tiny_runs, capsys, "full", "lora")
    assert result["k"] == 2 and len(result["rows"]) == 8
    for r in result["rows"]:
        assert r["k"] == 2 and -1e-12 <= r["similarity"] <= 1 + 1e-12 and r["random"] == 2 / r["shape"][1]
        assert r["eff_rank_a"] > 2 and 1 <= r["eff_rank_b"] <= 2 + 1e-9 and r["rel_norm_a"] > 0 < r["rel_norm_b"]
    for run, k in (("full", 8), ("lora", 2)):          # --k 5 is clipped to LoRA's rank 2
        same = _compare_json(tiny_runs, capsys, run, run, *(["--k", "5"] if run == "lora" else []))
        assert all(r["k"] == k and abs(r["similarity"] - 1) < 1e-9 for r in same["rows"])


def test_inspect_compare_says_no_update_where_a_run_changed_nothing(tiny_runs, capsys):
    """Head-only trains no block linear: every ΔW is 0, so there is no subspace to compare (null in JSON)."""
    result = _compare_json(tiny_runs, capsys, "full", "head")
    assert result["label_b"] == "head" and result["k"] == 8
    assert all(r["similarity"] is None and r["k"] == 0 and r["rel_norm_b"] == 0 for r in result["rows"])
    assert main(["inspect", "--compare", str(tiny_runs / "full"), str(tiny_runs / "head"),
                 "--base", str(tiny_runs / "base")]) == 0
    out = capsys.readouterr().out
    assert out.count("no update") == 9 and "No matrix was changed by both runs" in out


def test_inspect_compare_bad_input_is_one_line_naming_it(tiny_runs, capsys):
    full, lora, base = (str(tiny_runs / name) for name in ("full", "lora", "base"))
    cases = [
        (["--compare", full, str(tiny_runs / "missing"), "--base", base], "run folder not found"),
        (["--compare", full, base, "--base", base], "base is a model folder"),
        (["--compare", full, str(tiny_runs / "full" / "finetune.json"), "--base", base], "is a file"),
        (["--compare", full, lora], "was fine-tuned from another base"),          # the shipped demo base
        (["--compare", lora, full], "than the shipped base"),
        (["--compare", full, lora, "--base", base, "--steps", "3", "--task", "facts"], "--task, --steps: options"),
        (["--k", "3"], "--k is the subspace size of --compare"),
    ]
    for argv, message in cases:
        assert main(["inspect", *argv]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("minift: error:") and message in err and "\n" not in err, (argv, err)
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--compare", full, lora, "--k", "0"])
    assert e.value.code == 2
