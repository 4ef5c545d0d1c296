"""The batch split across threads (minift/fast/parallel.py) against the one-thread path it must equal."""
import numpy as np
import pytest

from minift import GPT, GPTConfig, LoRAConfig, MiniftError, attach_lora
from minift.fast.parallel import check_splittable, split_loss_and_grads
from minift.training.train import TrainConfig, train

# float64: the two paths group the same sums differently, so they agree to rounding, ~1e-16 relative per operation
TOL = 1e-11


def lm_batch(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    return ids, targets


def assert_same(one, split):
    (loss_1, grads_1), (loss_s, grads_s) = one, split
    assert loss_s == pytest.approx(loss_1, rel=TOL)
    assert grads_s.keys() == grads_1.keys()
    for k in grads_1:
        np.testing.assert_allclose(grads_s[k], grads_1[k], rtol=TOL, atol=TOL * np.abs(grads_1[k]).max(), err_msg=k)


@pytest.mark.parametrize("workers, shards", [(2, None), (2, 2), (3, None), (2, 5), (8, None)])
def test_lm_split_equals_one_thread_with_uneven_counted_targets(workers, shards):
    cfg = GPTConfig.preset("tiny")
    model = GPT(cfg, seed=0, dtype="float64")
    ids, targets = lm_batch(cfg, 5, 12)
    targets[0, :9] = -100            # shards hold different numbers of counted targets: the weights N_i / N matter
    targets[3, 4:] = -100
    split = split_loss_and_grads(model, ids, targets, workers=workers, shards=shards)
    assert_same(model.loss_and_grads(ids, targets), split)


def test_classification_head_lora_and_padding_split_equals_one_thread():
    cfg = GPTConfig.preset("tiny")
    model = GPT(cfg, seed=0, dtype="float64")
    model.add_classification_head(["a", "b", "c"], seed=1)
    attach_lora(model, LoRAConfig(r=4, alpha=8, targets=("c_attn",)), seed=2)
    for name, a in model.adapters.items():                 # B ≠ 0, so the adapters' gradients are not trivial
        a.params[name + ".lora_B.weight"] += 0.1
    ids, _ = lm_batch(cfg, 4, 9)
    mask = np.ones((4, 9), dtype=bool)
    mask[1, 5:] = mask[2, 2:] = False
    labels = np.array([0, -100, 2, 1])                     # one row without a label
    one = model.loss_and_grads(ids, labels, attention_mask=mask)
    assert_same(one, split_loss_and_grads(model, ids, labels, attention_mask=mask, workers=2))


def test_a_shard_without_counted_targets_is_skipped():
    cfg = GPTConfig.preset("tiny")
    model = GPT(cfg, seed=0, dtype="float64")
    ids, targets = lm_batch(cfg, 4, 6)
    targets[:2] = -100                                     # the whole first shard of two
    assert_same(model.loss_and_grads(ids, targets), split_loss_and_grads(model, ids, targets, workers=2))
    targets[:] = -100
    with pytest.raises(MiniftError, match="no target to learn from"):
        split_loss_and_grads(model, ids, targets, workers=2)


def test_the_shards_run_under_the_callers_floating_point_error_state():
    """NumPy's error state is per thread, and a pool's threads start with the default one: each shard runs under the
    caller's, so an overflow in a worker raises, or reaches the caller's "call" function, as it would in the caller."""
    model = GPT(GPTConfig.preset("tiny"), seed=0)                    # float32
    model.params["wte.weight"] *= np.float32(1e30)                   # finite, but LayerNorm's x² overflows
    ids, targets = lm_batch(model.cfg, 4, 8)
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError, match="overflow"):
            split_loss_and_grads(model, ids, targets, workers=2)
    noted = []
    with np.errstate(over="call", invalid="call", call=lambda kind, flag: noted.append(kind)):
        split_loss_and_grads(model, ids, targets, workers=2)
    assert "overflow" in noted
    assert np.geterrcall() is None                                  # the caller's own state is as it was


def test_what_cannot_be_split_is_a_clear_error(fake_gpu):
    cfg = GPTConfig.preset("tiny")
    with pytest.raises(MiniftError, match="dropout=0.1"):
        check_splittable(GPT(GPTConfig.preset("tiny", dropout=0.1), seed=0), 2)
    model = GPT(cfg, seed=0)
    attach_lora(model, LoRAConfig(r=2, dropout=0.05))
    with pytest.raises(MiniftError, match="LoRA dropout"):
        check_splittable(model, 2)
    check_splittable(model, 1)                             # one thread: always fine
    with pytest.raises(MiniftError, match="on the gpu"):
        check_splittable(GPT(cfg, seed=0, device="gpu"), 2)
    with pytest.raises(MiniftError, match="workers=0"):
        check_splittable(GPT(cfg, seed=0), 0)
    with pytest.raises(MiniftError, match="workers"):
        TrainConfig(workers=0)
    with pytest.raises(MiniftError, match="workers=64 .* more than the 16 rows of a batch"):
        TrainConfig(batch_size=16, workers=64)
    with pytest.raises(MiniftError, match="shards=0"):
        split_loss_and_grads(GPT(cfg, seed=0), *lm_batch(cfg, 2, 4), workers=2, shards=0)


class Batches:
    """A fixed cycle of LM batches with the data-source interface train() needs."""

    def __init__(self, cfg, n=3):
        self.batches = [dict(zip(("input_ids", "targets"), lm_batch(cfg, 4, 16, seed=i))) for i in range(n)]
        self.i = 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = state["i"]


def test_training_with_workers_follows_the_one_thread_run():
    cfg = GPTConfig.preset("tiny")
    runs = {}
    for workers in (1, 2):
        model = GPT(cfg, seed=0, dtype="float64")
        result = train(model, Batches(cfg), TrainConfig(steps=5, batch_size=4, lr=1e-3, warmup=1, workers=workers),
                       progress=False)
        runs[workers] = ([h["loss"] for h in result.history], model.params)
    np.testing.assert_allclose(runs[2][0], runs[1][0], rtol=1e-9)
    for k in runs[1][1]:
        np.testing.assert_allclose(runs[2][1][k], runs[1][1][k], rtol=1e-7, atol=1e-10, err_msg=k)


def test_bench_with_workers():
    from minift.measure.bench import run_bench
    r = run_bench("tiny", "lora", steps=2, warmup=1, profile_steps=1, peak_sizes=(128,), malloc="system", workers=2)
    assert r["workers"] == 2 and r["ms_per_step"] > 0 and 0 < r["mfu"]
    assert r["breakdown"]["backward"]["linear"] > 0         # profiled on the one-thread path


@pytest.mark.skipif(not __import__("minift.base").base.shipped_base_dir().is_dir(),
                    reason="the shipped base model is missing")
def test_the_workers_option_of_the_commands(tmp_path, capsys):
    from minift.measure.bench import blas_info, set_blas_threads
    from minift.app.cli import main
    before = blas_info()["threads"]
    try:
        rc = main(["finetune", "--method", "lora", "--steps", "2", "--batch", "4", "--train-size", "16",
                   "--workers", "2", "--out", str(tmp_path), "--quiet"])
        assert rc == 0 and "lora on sentiment" in capsys.readouterr().out
        if before is not None:
            assert blas_info()["threads"] == before         # shared out to the workers while training, then back
        rc = main(["finetune", "--method", "lora", "--lora-dropout", "0.1", "--steps", "2", "--workers", "2",
                   "--out", str(tmp_path / "dropout"), "--quiet"])
        assert rc == 1 and "LoRA dropout" in capsys.readouterr().err
    finally:
        if before is not None:
            set_blas_threads(before)


def test_auto_splits_where_that_is_fastest_and_nowhere_else(monkeypatch):
    """workers="auto" (every configuration's default): dispatch.AUTO_WORKERS on a CPU with that many cores, a step
    without random numbers and rows to share; one thread on one core, with dropout, for a one-row batch, and on the
    reference path a learner steps through. A number is kept as given."""
    from minift import dispatch
    model = GPT(GPTConfig.preset("tiny"), seed=0)
    monkeypatch.setattr(dispatch, "cpu_cores", lambda: 2)
    assert dispatch.workers_for("auto", model, rows=16) == dispatch.AUTO_WORKERS == 2
    assert dispatch.workers_for(3, model, rows=16) == 3
    assert dispatch.workers_for("auto", model, rows=1) == 1
    with dispatch.use_reference():
        assert dispatch.workers_for("auto", model, rows=16) == 1
    dropout = GPT(GPTConfig.preset("tiny", dropout=0.1), seed=0)
    assert dispatch.workers_for("auto", dropout, rows=16) == 1
    monkeypatch.setattr(dispatch, "cpu_cores", lambda: 1)
    assert dispatch.workers_for("auto", model, rows=16) == 1


def test_training_on_auto_is_the_run_with_two_workers(monkeypatch):
    """train resolves "auto" once, says what it ran (TrainResult.workers), and computes what workers=2 computes."""
    from minift import dispatch
    monkeypatch.setattr(dispatch, "cpu_cores", lambda: 2)
    cfg = GPTConfig.preset("tiny")
    runs = {}
    for workers in ("auto", 2):
        model = GPT(cfg, seed=0, dtype="float64")
        result = train(model, Batches(cfg), TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup=1, workers=workers),
                       progress=False)
        runs[workers] = ([h["loss"] for h in result.history], result.workers)
    assert runs["auto"] == runs[2] and runs["auto"][1] == 2


def test_workers_share_the_cores_instead_of_piling_blas_threads_on_them(monkeypatch):
    """With 2 workers on 2 cores a BLAS of 2 threads would put 4 threads on 2 cores: while training, each worker's
    BLAS gets cores // workers threads, and the setting comes back after; a setting that fits is left alone."""
    from minift.fast import parallel
    from minift.measure.bench import blas_info, set_blas_threads
    before = blas_info()["threads"]
    if before is None:
        pytest.skip("numpy's BLAS thread count cannot be read here")
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 2)
    try:
        set_blas_threads(2)
        with parallel.blas_threads_shared(2):
            assert blas_info()["threads"] == 1
        assert blas_info()["threads"] == 2
        with parallel.blas_threads_shared(1):
            assert blas_info()["threads"] == 2
    finally:
        set_blas_threads(before)


@pytest.mark.skipif(not __import__("minift.base").base.shipped_base_dir().is_dir(),
                    reason="the shipped base model is missing")
def test_the_commands_default_to_auto_and_threads_choose_blas_threading(tmp_path, monkeypatch):
    """With no option a command splits its batches where that is fastest, and finetune.json says how many threads
    did; --threads asks for BLAS threading instead, so auto means one worker then."""
    import json
    from minift import dispatch
    from minift.app.cli import main
    from minift.measure.bench import blas_info, set_blas_threads
    monkeypatch.setattr(dispatch, "cpu_cores", lambda: 2)
    before = blas_info()["threads"]
    run = ["finetune", "--method", "lora", "--steps", "2", "--batch", "4", "--train-size", "16", "--quiet"]
    try:
        for extra, workers in (([], 2), (["--threads", "1"], 1)):
            assert main(run + extra + ["--out", str(tmp_path / str(workers))]) == 0
            assert json.loads((tmp_path / str(workers) / "finetune.json").read_text())["workers"] == workers
    finally:
        if before is not None:
            set_blas_threads(before)


def test_bench_keeps_the_blas_threads_that_threads_asks_for(monkeypatch):
    """run_bench(threads=2, workers=2) measures two workers of two BLAS threads each, as its docstring and
    `minift bench --threads` promise: sharing the cores out is for when --threads is not given."""
    from minift.fast import parallel
    from minift.measure.bench import blas_info, run_bench
    if blas_info()["threads"] is None:
        pytest.skip("numpy's BLAS thread count cannot be read here")
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 2)
    kw = dict(steps=1, warmup=0, profile_steps=0, peak_sizes=(64,), malloc="system", workers=2)
    assert run_bench("tiny", "lora", threads=2, **kw)["threads"] == 2
    assert run_bench("tiny", "lora", **kw)["threads"] == 1                # no --threads: one each on 2 cores
