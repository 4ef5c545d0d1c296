"""minift's GPU path end to end, on any machine: `device="gpu"` through tests/fakecupy.py's CPU stand-in for CuPy.

The op tests run on the fake through the `xp` fixture. These run what sits above the ops — the model with LoRA and a
classification head, the optimizer, the training loop with checkpoints and resume, generation, fine-tuning, PEFT
files, `minift compare`, `minift inspect`, `minift bench`, memory measurement — with every array on the fake device.
The fake does NumPy's arithmetic, so the GPU path must give *bitwise* the CPU path's numbers: any difference means
the two paths compute different things. That includes minift's fused GPU kernels (minift/fast/kernels.py), which run
here through the fake's evaluator of their CUDA C bodies. Where a GPU is present, the real CuPy variants (`xp` fixture,
test_bench.py, test_memory.py) check the kernels themselves.
"""
import json

import numpy as np
import pytest

from minift import GPT, GPTConfig, LoRAConfig, attach_lora, load_peft
from minift.backend import device_of, to_numpy
from minift.app.cli import main
from minift.fast.kernels import fused_enabled
from minift.optim import AdamW
from minift.base import shipped_base_dir

from fakecupy import HostArrayError

needs_base = pytest.mark.skipif(not shipped_base_dir().is_dir(), reason="the shipped base model is missing")


# ---- the fake itself: it must refuse what CuPy refuses, or the tests below prove nothing --------------------------

def test_the_fake_refuses_what_cupy_refuses(fake_gpu):
    d = fake_gpu.ones(3, dtype="float32")
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(d)                                       # device -> host only through .get() / asnumpy
    with pytest.raises(HostArrayError):
        d + np.ones(3, dtype="float32")                     # a host operand
    with pytest.raises(HostArrayError):
        d[np.array([0, 1])]                                 # a host index
    with pytest.raises(HostArrayError):
        d[:2] = np.zeros(2)                                 # a host value
    with pytest.raises(TypeError, match="where"):
        fake_gpu.exp(d, where=d > 0)                        # CuPy's ufuncs take out, dtype, casting only
    with pytest.raises(AttributeError):
        fake_gpu.errstate                                   # NumPy has it, CuPy 14 does not
    total = d.sum()
    assert isinstance(total, fake_gpu.ndarray) and total.ndim == 0 and float(total) == 3.0   # 0-d, not a scalar
    with pytest.raises(TypeError):
        [10, 20, 30, 40][total]                             # no __index__ on a device array
    host = np.zeros(2)
    dev = fake_gpu.asarray(host)
    host[0] = 1.0
    assert float(dev[0]) == 0.0                             # asarray copies: host and device never alias
    assert to_numpy(d).tolist() == [1.0, 1.0, 1.0] and device_of(d) == "gpu"


def test_the_fake_pool_counts_device_buffers(fake_gpu):
    pool = fake_gpu.get_default_memory_pool()
    before = pool.used_bytes()
    a = fake_gpu.zeros((1000,), dtype="float32")            # 4000 bytes -> 4096 in 512-byte units
    view = a[10:]
    assert pool.used_bytes() - before == 4096
    del a
    assert pool.used_bytes() - before == 4096               # the view still holds the buffer
    del view
    assert pool.used_bytes() == before


# ---- the model, an optimizer step, LoRA, a head: bitwise equal on both paths ------------------------------------

def _step(device, dtype="float32"):
    """One AdamW step of a tiny GPT with LoRA and a classification head; the loss, grads and weights on the host."""
    model = GPT(GPTConfig.preset("tiny"), seed=0, dtype=dtype, device=device)
    model.add_classification_head(["no", "yes", "maybe"], seed=1)
    lora = attach_lora(model, LoRAConfig(r=4, alpha=8, targets=("c_attn",), dropout=0.1), seed=2)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.cfg.vocab_size, (3, 9))
    mask = np.ones((3, 9), dtype=bool)
    mask[1, 6:] = False
    labels = np.array([2, 0, 1])
    loss, grads = model.loss_and_grads(ids, labels, attention_mask=mask, rng=np.random.default_rng(5))
    opt = AdamW(model.trainable_params(), lr=1e-2, weight_decay=0.1)
    opt.step(grads)
    assert all(device_of(v) == device for v in model.all_params().values())
    return (float(loss), {k: to_numpy(g) for k, g in grads.items()},
            {k: to_numpy(v) for k, v in {**model.all_params(), **lora.params}.items()})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_training_step_on_the_device_equals_the_cpu_bitwise(fake_gpu, dtype):
    loss_c, grads_c, weights_c = _step("cpu", dtype)
    loss_g, grads_g, weights_g = _step("gpu", dtype)
    assert loss_g == loss_c
    assert grads_g.keys() == grads_c.keys() and weights_g.keys() == weights_c.keys()
    for k in grads_c:
        np.testing.assert_array_equal(grads_g[k], grads_c[k], err_msg=k)
    for k in weights_c:
        np.testing.assert_array_equal(weights_g[k], weights_c[k], err_msg=k)


class _Batches:
    """A data source for train(): the same classification batch every step (host arrays, as the real sources give)."""

    def __init__(self, vocab_size):
        rng = np.random.default_rng(0)
        mask = np.ones((4, 10), dtype=bool)
        mask[1, 7:] = False
        self.batch = dict(input_ids=rng.integers(0, vocab_size, (4, 10)), targets=np.array([2, 0, 1, 1]),
                          attention_mask=mask)

    def next_batch(self):
        return self.batch

    def state(self):
        return {}

    def restore(self, state):
        pass


def _transfers_per_step(n_layer, **lora):
    """Device -> host transfers in one step of the training loop (LoRA and a classification head, on the fake)."""
    import fakecupy
    from minift.training.train import TrainConfig, train

    counts = []
    for steps in (2, 5):
        model = GPT(GPTConfig.preset("tiny", n_layer=n_layer), seed=0, device="gpu")
        model.add_classification_head(["no", "yes", "maybe"], seed=1)
        attach_lora(model, LoRAConfig(r=4, alpha=8, **lora), seed=2)
        before = fakecupy.TRANSFERS.count
        train(model, _Batches(model.cfg.vocab_size), TrainConfig(steps=steps, warmup=0), progress=False)
        counts.append(fakecupy.TRANSFERS.count - before)
    return (counts[1] - counts[0]) / 3


def test_a_training_step_reads_back_from_the_device_a_fixed_few_times(fake_gpu):
    # Each read-back (float(loss), a finiteness check) makes the host wait for the GPU. The loop needs a few: the
    # loss and gradient norm it logs, the inputs' range checks, one finiteness check over all the weights. None
    # may be per layer or per tensor: that would idle a GPU ~150 times a step on GPT-2.
    one, three = _transfers_per_step(1), _transfers_per_step(3)
    assert one == three, f"read-backs per step grow with depth: {one} with 1 layer, {three} with 3"
    assert one <= 8, f"{one} read-backs per training step"


# ---- the commands, with --device gpu ---------------------------------------------------------------------------

def _pretrain(out, device, steps):
    """(--workers 1: the device computes each batch whole, so the CPU must too for the same bits; auto would split
    it on 2+ cores.)"""
    return main(["pretrain", "--preset", "tiny", "--chars", "200000", "--steps", str(steps), "--batch", "4",
                 "--eval-every", "3", "--save-every", "3", "--out", str(out), "--quiet", "--device", device,
                 "--workers", "1"]
                + (["--resume"] if steps > 6 else []))


def test_pretrain_resume_and_generate_on_the_device(fake_gpu, tmp_path, capsys):
    for device in ("cpu", "gpu"):
        assert _pretrain(tmp_path / device, device, 6) == 0
        assert _pretrain(tmp_path / device, device, 8) == 0              # resumes from the step-6 checkpoint
    cpu, gpu = (json.loads((tmp_path / d / "pretrain.json").read_text()) for d in ("cpu", "gpu"))
    assert gpu["tokens_seen"] == 8 * 4 * 64
    assert [e["val_loss"] for e in gpu["evals"]] == [e["val_loss"] for e in cpu["evals"]]
    capsys.readouterr()
    outs = []
    for device in ("cpu", "gpu"):
        assert main(["generate", "--model", str(tmp_path / device / "model"), "--prompt", "Ida is",
                     "--max-new-tokens", "6", "--seed", "1", "--device", device]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("Ida is")


@needs_base
def test_lora_finetune_on_the_device_saves_a_peft_adapter_that_loads_back(fake_gpu, tmp_path):
    assert main(["finetune", "--method", "lora", "--rank", "4", "--steps", "3", "--batch", "4", "--train-size", "32",
                 "--eval-every", "2", "--out", str(tmp_path), "--quiet", "--device", "gpu"]) == 0
    adapter = next(p.parent for p in tmp_path.rglob("adapter_config.json"))
    from minift.base import load_base
    ids = np.random.default_rng(0).integers(0, 2048, (2, 7))
    logits = []
    for device in ("cpu", "gpu"):
        base, _ = load_base(device=device)
        load_peft(base, adapter)
        logits.append(to_numpy(base.forward(ids)))
    np.testing.assert_array_equal(logits[1], logits[0])


@needs_base
def test_compare_quick_on_the_device_matches_the_cpu(fake_gpu, tmp_path):
    runs = {}
    for device in ("cpu", "gpu"):
        assert main(["compare", "--quick", "--methods", "full,lora,head", "--steps", "4", "--out",
                     str(tmp_path / device), "--quiet", "--device", device, "--workers", "1"]) == 0   # (_pretrain)
        runs[device] = json.loads((tmp_path / device / "results.json").read_text())["runs"]
    for c, g in zip(runs["cpu"], runs["gpu"]):
        assert g["label"] == c["label"]
        for key in ("losses", "val_accuracy", "test_accuracy", "forgetting", "trainable"):
            assert g[key] == c[key], (c["label"], key)
        measured = g["memory"]["measured"]
        assert g["memory"]["backend"] == "cupy memory pool" and c["memory"]["backend"] != g["memory"]["backend"]
        # the fake pool sees what CuPy's would, less the temporaries inside single NumPy calls
        assert measured["total"] == pytest.approx(g["memory"]["predicted"]["total"], rel=0.02), c["label"]


@needs_base
def test_inspect_and_bench_on_the_device(fake_gpu, capsys):
    assert main(["inspect", "--device", "gpu", "--steps", "2", "--quiet"]) == 0
    assert "all matrices" in capsys.readouterr().out
    from minift.measure.bench import run_bench
    r = run_bench("tiny", "lora", steps=1, warmup=1, device="gpu", profile_steps=1, peak_sizes=(256,))
    assert r["device"] == "gpu" and r["blas"] == "cuBLAS" and r["ms_per_step"] > 0 and r["mfu"] > 0
    assert set(r["breakdown"]["backward"]) >= {"linear", "attention", "layernorm"}
    assert r["fused"] is True
    # --no-fused: the reference lines on the device (the JSON says so), the same loss after a step with its
    # backward and AdamW update (to the 4 digits the JSON keeps; the exact bits: test_kernels.py), fusion on after
    assert main(["bench", "--preset", "tiny", "--device", "gpu", "--no-fused", "--steps", "1", "--warmup", "1",
                 "--profile-steps", "0", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["fused"] is False and fused_enabled()
    on = run_bench("tiny", "full", steps=1, warmup=1, device="gpu", profile_steps=0, peak_sizes=(256,))
    assert on["fused"] is True and on["loss"] == off["loss"]


def test_bench_follows_minift_fused_when_not_told(fake_gpu, monkeypatch):
    # MINIFT_FUSED=0 (read into kernels._enabled at import) turns fusion off for a bench that is not told otherwise:
    # benchmarks/gpu.sh relies on it when the kernels fail on a device
    from minift.fast import kernels
    from minift.measure.bench import run_bench
    monkeypatch.setattr(kernels, "_enabled", False)
    r = run_bench("tiny", "full", steps=1, warmup=0, device="gpu", profile_steps=0, peak_sizes=(256,))
    assert r["fused"] is False
    assert run_bench("tiny", "full", steps=1, warmup=0, device="gpu", profile_steps=0, peak_sizes=(256,),
                     fused=True)["fused"] is True
