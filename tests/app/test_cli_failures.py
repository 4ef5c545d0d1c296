"""Commands that must fail, fail early, in one line, and leave nothing behind: a run that diverges (no model
saved), an option that cannot fit the model or the machine (refused before the first step)."""
import pytest

from minift.app.cli import main

SMALL = ["--steps", "5", "--batch", "4", "--train-size", "16", "--quiet"]


@pytest.mark.parametrize("argv", [["--method", "full", "--lr", "1e6"], ["--method", "head", "--lr", "1e6"],
                                  ["--method", "lora", "--rank", "2", "--head-lr", "1e30"]])
def test_a_finetune_that_blows_up_exits_non_zero_and_saves_nothing(tmp_path, capsys, argv):
    out = tmp_path / "run"
    assert main(["finetune", *argv, *SMALL, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than 100 above the first step's" in err[0] and "Try a lower lr" in err[0]
    assert not out.exists()                       # the folder it made goes with the run that failed


def test_a_pretraining_that_blows_up_keeps_no_checkpoint_of_broken_weights(tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["pretrain", "--preset", "tiny", "--chars", "200000", "--steps", "6", "--save-every", "1",
                 "--lr", "1e6", "--quiet", "--out", str(out)]) == 1
    assert "the run has diverged" in capsys.readouterr().err and not out.exists()


def test_a_rank_the_base_cannot_take_is_refused_before_any_run_trains(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--ranks", "1000", "--quiet", "--out", str(out)]) == 1
    assert "rank r=1000 exceeds min(in, out) = 128" in capsys.readouterr().err
    assert not out.exists()             # no run trained: one would have left its checkpoint (and the folder)


def test_a_corpus_that_cannot_fit_in_memory_is_refused_before_it_is_built(tmp_path, capsys, monkeypatch):
    import minift.training.pretrain as pretrain_mod
    assert main(["pretrain", "--chars", "100000000000000", "--quiet", "--out", str(tmp_path / "p")]) == 1
    assert "--chars 100,000,000,000,000: building and tokenising" in capsys.readouterr().err
    text = tmp_path / "mine.txt"
    text.write_text("a line of my own text\n" * 100)
    monkeypatch.setattr(pretrain_mod, "available_host_bytes", lambda: 1000)      # a machine with 1 kB free
    assert main(["pretrain", "--files", str(text), "--quiet", "--out", str(tmp_path / "p")]) == 1
    assert "--files: building and tokenising 2,200 characters" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("argv", [["--method", "lora", "--rank", "2", "--lr", "1e12"],
                                  ["--method", "lora", "--rank", "2", "--lr", "1e12", "--dora"],
                                  ["--method", "lora", "--rank", "2", "--alpha", "1e12", "--rslora"]])
def test_a_run_whose_numbers_overflow_fails_even_when_layernorm_hides_it_from_the_loss(tmp_path, capsys, argv):
    """LoRA's adapters thrown to 1e12: LayerNorm turns x / sqrt(inf) into a finite 0, and the loss stays near log 2;
    the overflow itself is the sign."""
    out = tmp_path / "run"
    assert main(["finetune", *argv, *SMALL, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "floating-point overflow" in err[0] and "the run has diverged" in err[0]
    assert not out.exists()


def test_more_blas_threads_than_cores_are_refused_before_anything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *SMALL, "--threads", "1000", "--out", str(out)]) == 1
    assert "--threads 1000 x --workers 1 = 1000 BLAS threads" in capsys.readouterr().err and not out.exists()
