"""A run that diverges is a failure: one line, a non-zero exit, and no model saved (issue 19's cases)."""
import pytest

from minift.cli import main

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
