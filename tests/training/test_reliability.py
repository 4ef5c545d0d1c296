"""Bad input gets a message naming it; faults lose nothing. (Op-, data- and LoRA-level cases live in their files.)"""
import json
import os
import signal

import numpy as np
import pytest

from minift import GPT, GPTConfig, MiniftError
from minift.backend import gpu_available, resolve_device
from minift.data.sources import LMSource
from minift.training.train import TrainConfig, TrainingDiverged, TrainingInterrupted, latest_checkpoint, train


def tiny(seed=0, **kw):
    return GPT(GPTConfig.preset("tiny", n_ctx=16, **kw), seed=seed)


def stream(n=3000):
    return np.tile(np.arange(2, 50), n // 48 + 1)[:n]


def test_token_ids_outside_the_vocabulary_are_named():
    model = tiny()
    with pytest.raises(MiniftError, match="ids"):
        model.forward(np.array([[1, 2, 512]]))
    with pytest.raises(MiniftError, match="ids"):
        model.forward(np.array([[-1, 2]]))


@pytest.mark.skipif(gpu_available(), reason="a GPU is present here")
def test_gpu_without_cupy_is_a_clear_error():
    with pytest.raises(MiniftError, match="device='gpu' needs CuPy"):
        resolve_device("gpu")
    with pytest.raises(MiniftError, match="device='gpu'"):
        GPT(GPTConfig.preset("tiny"), device="gpu")
    with pytest.raises(MiniftError, match="device='tpu'"):
        resolve_device("tpu")


def test_truncated_config_json_is_named(tmp_path):
    tiny().save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(MiniftError, match="config.json is not valid JSON"):
        GPT.from_pretrained(tmp_path)


def test_checkpoint_from_another_preset_is_refused(tmp_path):
    train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=2, batch_size=4, warmup=0), out_dir=tmp_path,
          progress=False)
    other = GPT(GPTConfig.preset("tiny", n_ctx=16, n_layer=1), seed=0)
    with pytest.raises(MiniftError, match="model config"):
        train(other, LMSource(stream(), 16, 4), TrainConfig(steps=4, batch_size=4, warmup=0), out_dir=tmp_path,
              resume=True, progress=False)


def test_corrupted_checkpoint_is_detected_by_its_checksum(tmp_path):
    train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=2, batch_size=4, warmup=0), out_dir=tmp_path,
          progress=False)
    weights = latest_checkpoint(tmp_path) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF                                       # one flipped byte inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(MiniftError, match="SHA-256"):
        train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=4, batch_size=4, warmup=0), out_dir=tmp_path,
              resume=True, progress=False)


class SignalAt:
    """A batch source that sends this process `signals` (Ctrl-C is SIGINT, `kill` and `timeout` send SIGTERM) while
    it hands out batch `at`: the signals arrive in the middle of that step, as a real one would."""

    def __init__(self, source, at, signals=(signal.SIGINT,)):
        self.source, self.at, self.signals, self.calls = source, at, signals, 0

    def next_batch(self):
        batch = self.source.next_batch()
        if self.calls == self.at:
            for sig in self.signals:
                os.kill(os.getpid(), sig)
        self.calls += 1
        return batch

    def state(self):
        return self.source.state()

    def restore(self, state):
        self.source.restore(state)


def _straight(tcfg, seed=3):
    straight = tiny()
    train(straight, LMSource(stream(), 16, 4, seed=seed), tcfg, progress=False)
    return straight


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_resume_matches(tmp_path, sig):
    tcfg = TrainConfig(steps=7, batch_size=4, warmup=1)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny(), SignalAt(LMSource(stream(), 16, 4, seed=3), at=4, signals=(sig,)), tcfg, out_dir=tmp_path,
              progress=False)
    assert stop.value.steps_done == 5 and stop.value.checkpoint == latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-000005"       # step 4, under way at the signal, was finished
    assert "--resume" in str(stop.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler            # the handlers are put back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    resumed = tiny(seed=77)                    # other initial weights: the checkpoint must restore every one
    train(resumed, LMSource(stream(), 16, 4, seed=3), tcfg, out_dir=tmp_path, resume=True, progress=False)
    straight = _straight(tcfg)
    assert all(np.array_equal(straight.params[k], resumed.params[k]) for k in straight.params)


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    tcfg = TrainConfig(steps=7, batch_size=4, warmup=1, save_every=2)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny(), SignalAt(LMSource(stream(), 16, 4, seed=3), at=4, signals=(signal.SIGINT, signal.SIGINT)),
              tcfg, out_dir=tmp_path, progress=False)
    assert not stop.value.at_step_end and "intact" in str(stop.value)
    assert stop.value.checkpoint == latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-000004"       # the save_every one from before the signals
    resumed = tiny()
    train(resumed, LMSource(stream(), 16, 4, seed=3), tcfg, out_dir=tmp_path, resume=True, progress=False)
    straight = _straight(tcfg)
    assert all(np.array_equal(straight.params[k], resumed.params[k]) for k in straight.params)


def test_a_second_signal_before_any_checkpoint_says_nothing_was_saved(tmp_path):
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny(), SignalAt(LMSource(stream(), 16, 4), at=1, signals=(signal.SIGTERM, signal.SIGTERM)),
              TrainConfig(steps=5, batch_size=4, warmup=1), out_dir=tmp_path, progress=False)
    assert stop.value.checkpoint is None and latest_checkpoint(tmp_path) is None
    assert "nothing was saved in" in str(stop.value) and "intact" not in str(stop.value)


def test_a_save_cut_short_leaves_no_step_folder_and_the_last_checkpoint_in_force(tmp_path, monkeypatch):
    import minift.training.train as train_module
    tcfg = TrainConfig(steps=4, batch_size=4, warmup=1, save_every=2)
    calls = []

    def cut_at_the_second_save(*args):         # the weights of step 4 are written, then the process is stopped
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)
    real = train_module.save_safetensors
    monkeypatch.setattr(train_module, "save_safetensors", cut_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), LMSource(stream(), 16, 4, seed=3), tcfg, out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000002"]
    (tmp_path / ".step-000004.partial").mkdir()                     # as a kill -9 would leave it
    monkeypatch.setattr(train_module, "save_safetensors", real)
    resumed = tiny()
    train(resumed, LMSource(stream(), 16, 4, seed=3), tcfg, out_dir=tmp_path, resume=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000002", "step-000004"]
    straight = _straight(tcfg)
    assert all(np.array_equal(straight.params[k], resumed.params[k]) for k in straight.params)


def test_a_signal_in_the_last_step_still_stops_the_caller(tmp_path):
    tcfg = TrainConfig(steps=3, batch_size=4, warmup=1)
    with pytest.raises(TrainingInterrupted) as stop:      # the run is complete, but whoever called train must stop
        train(tiny(), SignalAt(LMSource(stream(), 16, 4), at=2), tcfg, out_dir=tmp_path, progress=False)
    assert stop.value.steps_done == 3 and latest_checkpoint(tmp_path).name == "step-000003"


def test_resume_refuses_a_checkpoint_from_another_run(tmp_path):
    tcfg = TrainConfig(steps=4, batch_size=4, warmup=1)
    train(tiny(), LMSource(stream(), 16, 4, seed=3), tcfg, out_dir=tmp_path, progress=False, start_fingerprint="a")

    def resume(tcfg=tcfg, data=stream(), fingerprint="a"):
        train(tiny(), LMSource(data, 16, 4, seed=3), tcfg, out_dir=tmp_path, resume=True, progress=False,
              start_fingerprint=fingerprint)
    with pytest.raises(MiniftError, match=r"other settings \(lr \(--lr\): 0.001 -> 0.002\)"):
        resume(tcfg=TrainConfig(steps=4, batch_size=4, warmup=1, lr=2e-3))
    with pytest.raises(MiniftError, match="at step 4, beyond steps=3"):
        resume(tcfg=TrainConfig(steps=3, batch_size=4, warmup=1))
    with pytest.raises(MiniftError, match="other data"):
        resume(data=stream() + 1)
    with pytest.raises(MiniftError, match="another base model"):
        resume(fingerprint="b")
    resume(tcfg=TrainConfig(steps=6, batch_size=4, warmup=1, eval_every=2))   # more steps: a longer run, allowed


def test_same_seed_same_result():
    a, b = tiny(seed=5), tiny(seed=5)
    for m in (a, b):
        train(m, LMSource(stream(), 16, 4, seed=1), TrainConfig(steps=3, batch_size=4, warmup=1), progress=False)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_checkpoint_state_is_readable_json(tmp_path):
    train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=2, batch_size=4, warmup=0), out_dir=tmp_path,
          progress=False)
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["step"] == 2 and set(state["sha256"]) == {"weights.safetensors", "optimizer.safetensors"}


def test_resume_with_lora_dropout_is_bitwise_identical(tmp_path):
    from minift import LoRAConfig, attach_lora
    tcfg = TrainConfig(steps=6, batch_size=4, warmup=1, save_every=3)

    def lora_model(seed):
        model = tiny(seed=0)
        attach_lora(model, LoRAConfig(r=2, alpha=4, targets="all-linear", dropout=0.3), seed=seed)
        return model

    straight = lora_model(seed=1)
    train(straight, LMSource(stream(), 16, 4, seed=4), TrainConfig(steps=6, batch_size=4, warmup=1), progress=False)
    first = lora_model(seed=1)
    train(first, LMSource(stream(), 16, 4, seed=4), tcfg, out_dir=tmp_path, progress=False)
    (tmp_path / "latest").write_text("step-000003\n")
    resumed = lora_model(seed=99)                          # a different dropout stream: the checkpoint must restore it
    train(resumed, LMSource(stream(), 16, 4, seed=4), tcfg, out_dir=tmp_path, resume=True, progress=False)
    a, b = straight.all_params(), resumed.all_params()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["step", "missing file", "not a dict"])
def test_a_damaged_checkpoint_state_is_named_not_a_traceback(tmp_path, damage):
    train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=2, batch_size=4, warmup=0), out_dir=tmp_path,
          progress=False)
    folder = latest_checkpoint(tmp_path)
    state = json.loads((folder / "state.json").read_text())
    if damage == "step":
        state["step"] = "x"
    elif damage == "missing file":
        (folder / "optimizer.safetensors").unlink()
    else:
        state = [state]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(MiniftError, match="damaged|incomplete: optimizer.safetensors is missing"):
        train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=4, batch_size=4, warmup=0), out_dir=tmp_path,
              resume=True, progress=False)


def test_an_infinite_weight_decay_is_refused_up_front():
    with pytest.raises(MiniftError, match=r"weight_decay=inf must lie in \[0.0, inf\)"):
        train(tiny(), LMSource(stream(), 16, 4),
              TrainConfig(steps=2, batch_size=4, warmup=1, weight_decay=float("inf")), progress=False)


def test_a_second_signal_during_the_final_evaluation_names_the_checkpoint_on_disk(tmp_path):
    tcfg = TrainConfig(steps=4, batch_size=4, warmup=1, save_every=2)

    def evaluate(model):                       # both signals arrive while the final evaluation runs
        if evaluate.calls == 0:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        evaluate.calls += 1
        return {}
    evaluate.calls = 0
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny(), LMSource(stream(), 16, 4), tcfg, out_dir=tmp_path, evaluate=evaluate, progress=False)
    assert not stop.value.at_step_end and stop.value.steps_done == 4
    assert stop.value.checkpoint == latest_checkpoint(tmp_path) and latest_checkpoint(tmp_path).name == "step-000002"
    assert str(tmp_path / "step-000002") in str(stop.value)


def test_a_second_signal_while_saving_the_checkpoint_says_so_and_names_the_one_on_disk(tmp_path, monkeypatch):
    import minift.training.train as train_module
    tcfg = TrainConfig(steps=6, batch_size=4, warmup=1, save_every=2)
    real = train_module.save_safetensors

    def second_signal_in_the_save_of_step_3(tensors, path, *a, **kw):
        if ".step-000003.partial" in str(path):
            os.kill(os.getpid(), signal.SIGINT)
        return real(tensors, path, *a, **kw)
    monkeypatch.setattr(train_module, "save_safetensors", second_signal_in_the_save_of_step_3)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny(), SignalAt(LMSource(stream(), 16, 4), at=2), tcfg, out_dir=tmp_path, progress=False)
    assert not stop.value.at_step_end and stop.value.out_dir == tmp_path and stop.value.steps_done == 3
    assert stop.value.checkpoint == latest_checkpoint(tmp_path) == tmp_path / "step-000002"
    assert "while saving a checkpoint" in str(stop.value) and "step-000002" in str(stop.value)
    assert not list(tmp_path.glob(".step-*"))                 # the cut save left nothing behind


def test_an_ignored_signal_stays_ignored(tmp_path):
    """A shell starts `cmd &` with SIGINT ignored, and Python keeps it so; train() must not take it back."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = train(tiny(), SignalAt(LMSource(stream(), 16, 4), at=1), TrainConfig(steps=3, batch_size=4,
                       warmup=1), out_dir=tmp_path, progress=False)
        assert result.steps_done == 3 and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_without_latest_the_newest_complete_step_folder_is_in_force(tmp_path):
    """A save killed between renaming its folder and writing `latest`; step numbers past 999,999 sort as numbers."""
    tcfg = TrainConfig(steps=4, batch_size=4, warmup=1, save_every=2)
    train(tiny(), LMSource(stream(), 16, 4), tcfg, out_dir=tmp_path, progress=False)
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000004"
    (tmp_path / "step-000004").rename(tmp_path / "step-1000000")
    (tmp_path / "step-999999").mkdir()                            # no state.json: not a complete checkpoint
    assert latest_checkpoint(tmp_path) == tmp_path / "step-1000000"


def test_an_evaluation_that_is_not_finite_stops_the_run_and_saves_nothing_of_it(tmp_path):
    """Finite weights can be too large to compute with: one overshooting update, and only the next forward shows it.
    That state must not become the run's result or checkpoint."""
    tcfg = TrainConfig(steps=4, batch_size=4, warmup=1, save_every=2, eval_every=2)

    def evaluate(model):
        evaluate.calls += 1
        return {"val_loss": 1.0 if evaluate.calls == 1 else float("nan"), "val_accuracy": 0.5}
    evaluate.calls = 0
    with pytest.raises(TrainingDiverged, match="after step 4: val_loss is not finite.*last checkpoint in .* intact"):
        train(tiny(), LMSource(stream(), 16, 4), tcfg, out_dir=tmp_path, evaluate=evaluate, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-000002"


def test_a_resume_shorter_than_its_warmup_says_how_many_steps_it_needs(tmp_path):
    tcfg = TrainConfig(steps=10, batch_size=4, warmup=8)
    with pytest.raises(TrainingInterrupted):
        train(tiny(), SignalAt(LMSource(stream(), 16, 4), at=3), tcfg, out_dir=tmp_path, progress=False)
    with pytest.raises(MiniftError, match="beyond steps=3: resume with --steps 4 or more"):   # this one first
        train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=3, batch_size=4, warmup=8), out_dir=tmp_path,
              resume=True, progress=False)
    with pytest.raises(MiniftError, match="warmup=8 is longer than the run, steps=6: give --steps 8 or more "
                                          r"\(this run's warmup was fixed when it started\)"):
        train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=6, batch_size=4, warmup=8), out_dir=tmp_path,
              resume=True, progress=False)


def test_two_signals_during_a_periodic_save_say_the_save_was_cut(tmp_path, monkeypatch):
    import minift.training.train as train_module
    real = train_module.save_safetensors

    def two_signals_in_the_save_of_step_4(tensors, path, *a, **kw):
        if ".step-000004.partial" in str(path):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(tensors, path, *a, **kw)
    monkeypatch.setattr(train_module, "save_safetensors", two_signals_in_the_save_of_step_4)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny(), LMSource(stream(), 16, 4), TrainConfig(steps=6, batch_size=4, warmup=1, save_every=2),
              out_dir=tmp_path, progress=False)
    assert "while saving a checkpoint" in str(stop.value) and "step-000002" in str(stop.value)
    assert stop.value.checkpoint == latest_checkpoint(tmp_path) == tmp_path / "step-000002"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_write_replaces_whole_files_and_keeps_their_mode(tmp_path):
    from minift.formats.io import atomic_write, atomic_write_text
    path = atomic_write_text(tmp_path / "a.txt", "one\n")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask            # a new file: what open() would give it
    os.chmod(path, 0o600)
    atomic_write_text(path, "two\n")
    assert path.read_bytes() == b"two\n" and path.stat().st_mode & 0o777 == 0o600   # the owner's choice stays
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("cut short")
    assert path.read_bytes() == b"two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
