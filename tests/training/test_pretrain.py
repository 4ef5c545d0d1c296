"""Pretraining's settings (PretrainConfig): the defaults `minift pretrain` reads, the checks made before any corpus is
built, and the warmup rule -- derived from steps when none is given, and kept by a resumed run."""
import json

import pytest

from minift import GPTConfig, MiniftError
from minift.training.pretrain import PretrainConfig, pretrain


def fake_checkpoint(folder, warmup):
    """A checkpoint folder as far as the warmup rule reads it: step-*/state.json with its train_config."""
    step = folder / "step-000010"
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"train_config": {"warmup": warmup}}))
    return folder


def test_the_warmup_is_a_tenth_of_the_run_at_most_100_steps():
    assert PretrainConfig().warmup is None and PretrainConfig().train_config().warmup == 100     # 2000 steps
    assert PretrainConfig(steps=300).train_config().warmup == 30
    assert PretrainConfig(steps=300, warmup=5).train_config().warmup == 5


def test_a_resumed_run_keeps_the_warmup_it_started_with(tmp_path):
    """--steps 300 then --resume --steps 3000: the warmup stays the 30 the run started with, so the longer run
    continues the first one instead of changing its start (a warmup of 100 would change the rate of steps it took)."""
    checkpoints = fake_checkpoint(tmp_path / "checkpoints", warmup=30)
    longer = PretrainConfig(steps=3000)
    assert longer.train_config(checkpoints, resume=True).warmup == 30
    assert longer.train_config(checkpoints, resume=False).warmup == 100          # a new run: derived afresh
    assert longer.train_config(tmp_path / "none-yet", resume=True).warmup == 100  # nothing to resume from
    assert PretrainConfig(steps=3000, warmup=7).train_config(checkpoints, resume=True).warmup == 7   # given: as is


@pytest.mark.parametrize("settings, says", [
    (dict(steps=2, warmup=100), "warmup=100 (--warmup) is longer than the run, steps=2 (--steps)"),
    (dict(lr=float("inf")), "lr=inf (--lr) must be a positive, finite number"),
    (dict(batch_size=0), "batch_size=0 (--batch) must be positive"),
])
def test_bad_settings_are_refused_when_the_config_is_made(settings, says):
    with pytest.raises(MiniftError) as e:
        PretrainConfig(**settings)
    assert says in str(e.value)


def test_pretrain_resumed_with_more_steps_keeps_its_warmup(tmp_path):
    """The rule where it runs: pretrain() settles a PretrainConfig's warmup against its own checkpoints."""
    cfg = GPTConfig.preset("tiny", vocab_size=2048)                   # the shipped tokenizer fits: none is trained
    run = dict(n_chars=30_000, out_dir=tmp_path, progress=False)
    pretrain(cfg, tcfg=PretrainConfig(steps=20, batch_size=2, eval_every=0, save_every=0), **run)
    pretrain(cfg, tcfg=PretrainConfig(steps=40, batch_size=2, eval_every=0, save_every=0), resume=True, **run)
    assert json.loads((tmp_path / "pretrain.json").read_text())["train_config"]["warmup"] == 2    # 20 // 10, not 4
