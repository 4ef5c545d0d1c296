"""The command line: pretrain a tiny model, sample from it, and one-line errors for bad input."""
import json

import pytest

from minift.cli import main


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


def test_pretrain_resume_continues(pretrained, tmp_path, capsys):
    rc = main(["pretrain", "--preset", "tiny", "--chars", "300000", "--steps", "14", "--batch", "4",
               "--eval-every", "6", "--save-every", "6", "--out", str(pretrained), "--quiet", "--resume"])
    assert rc == 0
    summary = json.loads((pretrained / "pretrain.json").read_text())
    assert summary["tokens_seen"] == 14 * 4 * 64


def test_threads_option_sets_numpy_blas(pretrained):
    from minift.bench import blas_info, set_blas_threads
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


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("minift: error: model folder not found") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--steps", "-3"])
    assert e.value.code == 2
