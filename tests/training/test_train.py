"""The training loop: loss falls, exact resume (also after a crash inside a save), divergence guard, frozen weights."""
import json

import numpy as np
import pytest

import minift.training.train as train_mod
from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora
from minift.data.sources import ClassificationSource, LMSource
from minift.training.train import TrainConfig, TrainingDiverged, latest_checkpoint, train


def tiny_model(seed=0):
    return GPT(GPTConfig.preset("tiny", n_ctx=16), seed=seed)


def stream(n=4000, seed=0):
    """A learnable token stream: a repeating pattern with noise, so the loss can fall quickly."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(2, 40), n // 38 + 1)[:n]
    noise = rng.integers(0, 512, n)
    return np.where(rng.random(n) < 0.1, noise, base)


def cfg(steps, **kw):
    return TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, **kw)


def params_equal(a, b):
    return all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_loss_falls():
    model = tiny_model()
    result = train(model, LMSource(stream(), 16, 4, seed=0), cfg(40), progress=False)
    first = np.mean([h["loss"] for h in result.history[:5]])
    last = np.mean([h["loss"] for h in result.history[-5:]])
    assert last < first - 1.0
    assert result.steps_done == 40 and result.tokens == 40 * 4 * 16


def test_resume_is_bitwise_identical(tmp_path):
    straight = tiny_model()
    train(straight, LMSource(stream(), 16, 4, seed=1), cfg(8), progress=False)

    interrupted = tiny_model()
    train(interrupted, LMSource(stream(), 16, 4, seed=1), cfg(8, save_every=3), out_dir=tmp_path, progress=False)
    # simulate a crash after step 3: a fresh process loads the checkpoint and continues
    (tmp_path / "latest").write_text("step-000006\n")
    resumed = tiny_model(seed=123)                       # different init: everything must come from the checkpoint
    result = train(resumed, LMSource(stream(), 16, 4, seed=1), cfg(8, save_every=3), out_dir=tmp_path,
                   resume=True, progress=False)
    assert result.steps_done == 8 and len(result.history) == 8
    assert params_equal(straight, resumed)


def test_crash_inside_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_model()
    calls = {"n": 0}
    real_save = train_mod.save_safetensors

    def flaky_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:                              # the second checkpoint's weights file: die mid-save
            raise OSError("disk full (injected)")
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(train_mod, "save_safetensors", flaky_save)
    with pytest.raises(OSError, match="injected"):
        train(model, LMSource(stream(), 16, 4, seed=2), cfg(6, save_every=2), out_dir=tmp_path, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-000002"
    monkeypatch.setattr(train_mod, "save_safetensors", real_save)
    resumed = tiny_model(seed=9)
    train(resumed, LMSource(stream(), 16, 4, seed=2), cfg(6, save_every=2), out_dir=tmp_path, resume=True,
          progress=False)
    straight = tiny_model()
    train(straight, LMSource(stream(), 16, 4, seed=2), cfg(6), progress=False)
    assert params_equal(straight, resumed)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_at_the_first_step_names_it_and_saves_nothing(tmp_path):
    """Nothing has trained before step 0, so there is no last good state to keep: a checkpoint of the start would
    only count as a result (and --overwrite would then discard the earlier run for it)."""
    model = tiny_model()
    model.params["h.1.mlp.c_fc.weight"][0, 0] = np.inf      # poisons the forward from step 0
    with pytest.raises(TrainingDiverged, match="step 0: loss is not finite .* before any training, so nothing"):
        train(model, LMSource(stream(), 16, 4), cfg(5), out_dir=tmp_path, progress=False)
    assert latest_checkpoint(tmp_path) is None


def test_a_gradient_that_is_not_finite_saves_nothing_new_and_keeps_the_checked_checkpoint(tmp_path):
    """A sane loss with a broken gradient: the weights of that step stay good, but no checkpoint is written for it
    (it would count as a result, and --overwrite would then drop the earlier run for a run that failed; resuming it
    would draw the same batch and fail again). The last saved checkpoint stays in force."""
    import minift.training.train as train_mod
    real, calls = train_mod.clip_grad_norm, []

    def fails_at_step_3(grads, max_norm):
        calls.append(1)
        return float("nan") if len(calls) == 4 else real(grads, max_norm)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_mod, "clip_grad_norm", fails_at_step_3)
        with pytest.raises(TrainingDiverged, match="step 3: the gradient norm is not finite .*step-000002, is intact"):
            train(tiny_model(), LMSource(stream(), 16, 4, seed=2), cfg(6, save_every=2), out_dir=tmp_path,
                  progress=False)
    assert latest_checkpoint(tmp_path).name == "step-000002" and not (tmp_path / "step-000003").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_update_that_overflows_is_caught_before_it_is_saved(tmp_path):
    """Finite loss and gradients, but a step so large the float32 weights overflow: the loop stops at that step and
    writes no checkpoint of the broken weights."""
    model = tiny_model()
    with pytest.raises(TrainingDiverged, match=r"step 0: the update made .* non-finite \(lr=1e\+39\)"):
        train(model, LMSource(stream(), 16, 4), TrainConfig(steps=3, batch_size=4, lr=1e39, warmup=0),
              out_dir=tmp_path, progress=False)
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("workers", [1, 2])
def test_an_overflow_that_layernorm_hides_stops_the_run_in_a_worker_thread_too(workers):
    """LoRA at lr 1e12: after step 0 the adapters overflow float32, LayerNorm turns x / √inf into a finite 0 and the
    loss stays sane; only the overflow tells. With workers=2 it happens in the pool's threads, whose NumPy error
    state is their own: they run under the loop's watch (parallel.py), so the run stops there as with one thread
    (without that, it ran all its steps at a flat loss)."""
    model = tiny_model()
    attach_lora(model, LoRAConfig(r=2))
    with pytest.raises(TrainingDiverged, match=r"step 1: the forward or backward went through a floating-point "
                                               r"overflow .*the run has diverged"):
        train(model, LMSource(stream(), 16, 4), TrainConfig(steps=6, batch_size=4, lr=1e12, warmup=0,
                                                            workers=workers), progress=False)


def test_nonfinite_gradient_is_named():
    grads = {"a": np.zeros(3), "b": np.array([0.0, np.nan])}
    assert train_mod.find_nonfinite(1.0, grads) == "b"
    assert train_mod.find_nonfinite(float("nan"), grads) == "loss"


def test_frozen_parameters_are_bitwise_unchanged():
    model = tiny_model()
    model.frozen = {k for k in model.params if k.startswith("h.0.") or k.startswith("w")}
    before = {k: model.params[k].copy() for k in model.frozen}
    train(model, LMSource(stream(), 16, 4), cfg(5), progress=False)
    assert all(np.array_equal(before[k], model.params[k]) for k in model.frozen)
    assert not np.array_equal(model.params["h.1.attn.c_attn.weight"], tiny_model().params["h.1.attn.c_attn.weight"])


def test_classification_training_learns_a_trivial_rule():
    model = tiny_model()
    model.add_classification_head(["no", "yes"])
    rng = np.random.default_rng(0)
    texts = [list(rng.integers(10, 20, rng.integers(2, 8))) for _ in range(64)]
    labels = [int(t[-1] >= 15) for t in texts]              # label = is the last token large?
    source = ClassificationSource(texts, labels, pad_id=1, max_len=16, batch_size=16, seed=0)
    result = train(model, source, TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup=5), progress=False)
    assert result.final_loss < 0.3


def test_nothing_to_train_is_an_error():
    model = tiny_model()
    model.frozen = set(model.params)
    with pytest.raises(MiniftError, match="nothing to train"):
        train(model, LMSource(stream(), 16, 4), cfg(2), progress=False)


def test_bad_train_config():
    with pytest.raises(MiniftError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(MiniftError, match="lr"):
        TrainConfig(lr=-1.0)


def _lr_jumps_at(step, to):
    """An lr_schedule that is the real one before `step` and `to` from there on: a run that trains, then blows up."""
    real = train_mod.lr_schedule
    return lambda s, *args: real(s, *args) if s < step else to


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_loss_that_blows_up_stops_the_run_and_keeps_only_a_checked_checkpoint(tmp_path, monkeypatch):
    """Step 3's update throws the weights off; step 4's checkpoint of them is saved before any loss has seen them,
    and step 4's loss, far above the first, shows they are broken: that checkpoint goes, step 3's is in force."""
    monkeypatch.setattr(train_mod, "lr_schedule", _lr_jumps_at(3, 1e6))
    with pytest.raises(TrainingDiverged, match=r"step 4: loss is .*, more than 100 above the first step's .*"
                                               r"step-000003, is intact"):
        train(tiny_model(), LMSource(stream(), 16, 4, seed=2), cfg(8, save_every=1), out_dir=tmp_path,
              progress=False)
    kept = latest_checkpoint(tmp_path)
    assert kept.name == "step-000003" and not (tmp_path / "step-000004").exists()
    state = json.loads((kept / "state.json").read_text())
    model = tiny_model(seed=9)
    weights, _ = train_mod.load_safetensors(kept / "weights.safetensors")
    for name, value in weights.items():
        model.params[name][...] = value
    batch = LMSource(stream(), 16, 4, seed=2).next_batch()
    loss = model.loss(batch["input_ids"], batch["targets"])
    assert np.isfinite(loss) and loss < state["history"][0]["loss"] + train_mod.BLOWUP_NATS


def test_an_evaluation_loss_that_blows_up_stops_the_run(tmp_path):
    evals = iter([{"val_loss": 5.0}, {"val_loss": 5.0 + 1e4}])
    with pytest.raises(TrainingDiverged, match=r"after step 4: val_loss is 1(\.\d+)?e\+04, more than 100 above.*"
                                               r"step-000002, is intact"):
        train(tiny_model(), LMSource(stream(), 16, 4, seed=2), cfg(6, eval_every=2, save_every=2),
              out_dir=tmp_path, evaluate=lambda m: next(evals), progress=False)
    assert latest_checkpoint(tmp_path).name == "step-000002"


def test_a_loss_that_rises_but_stays_within_the_rule_trains_on(monkeypatch):
    """An unstable run (a large but finite jump) is not a divergence: the rule is 100 nats, not any rise."""
    monkeypatch.setattr(train_mod, "lr_schedule", _lr_jumps_at(2, 0.3))
    result = train(tiny_model(), LMSource(stream(), 16, 4, seed=2), cfg(6), progress=False)
    losses = [h["loss"] for h in result.history]
    assert result.steps_done == 6 and max(losses) > losses[0] + 1.0


@pytest.mark.parametrize("stop", ["error", "ctrl-c"])
def test_the_blas_threads_come_back_however_training_ends(monkeypatch, stop):
    """With workers, train shares the BLAS threads out while it runs (fast.parallel.blas_threads_shared); an error
    in a step or a Ctrl-C must give the process its own setting back, as a finished run does."""
    import os
    import signal

    from minift import dispatch
    from minift.fast import parallel
    from minift.measure.bench import blas_info, set_blas_threads
    from minift.training.train import TrainingInterrupted
    before = blas_info()["threads"]
    if before is None:
        pytest.skip("numpy's BLAS thread count cannot be read here")
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 2)
    monkeypatch.setattr(dispatch, "cpu_cores", lambda: 2)
    source = LMSource(stream(), 16, 4, seed=0)
    seen = []
    real = source.next_batch

    def next_batch():
        seen.append(blas_info()["threads"])
        if len(seen) == 3:
            if stop == "error":
                raise RuntimeError("a broken batch")
            os.kill(os.getpid(), signal.SIGINT)
        return real()
    monkeypatch.setattr(source, "next_batch", next_batch)
    try:
        set_blas_threads(2)
        with pytest.raises(RuntimeError if stop == "error" else TrainingInterrupted):
            train(tiny_model(), source, cfg(6, workers="auto"), progress=False)
        assert seen[0] == 1 and blas_info()["threads"] == 2          # one each while training, then as it was
    finally:
        set_blas_threads(before)


def test_a_finished_run_resumed_reports_the_workers_its_steps_ran_with(tmp_path):
    """--resume of a finished run trains no step: the workers it reports (finetune.json, results.json, report.md)
    are the ones its checkpoint saved, not this call's (the default changed from 1 to auto)."""
    source = LMSource(stream(), 16, 4, seed=0)
    assert train(tiny_model(), source, cfg(3, workers=1), out_dir=tmp_path, progress=False).workers == 1
    again = train(tiny_model(), LMSource(stream(), 16, 4, seed=0), cfg(3, workers=2), out_dir=tmp_path, resume=True,
                  progress=False)
    assert again.steps_done == 3 and again.workers == 1
