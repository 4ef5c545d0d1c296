"""`minift bench`: the harness runs both methods on tiny, its JSON has the documented keys with sane values, the FLOP
count matches a hand computation, the op breakdown names the ops, and bad input is a clear error. No timed
assertions: timings on a shared machine say nothing about correctness."""
import argparse
import json
import math
import re

import numpy as np
import pytest

import minift.measure.bench
import minift.model
from minift import GPTConfig, MiniftError, gpu_available
from minift.app.cli import add_bench
from minift.fast.parallel import cpu_cores
from minift.measure.bench import (OP_ORDER, OpProfiler, blas_info, build_step, count_flops, format_report, run_bench,
                                  set_blas_threads)

KEYS = {"preset", "method", "rank", "ms_per_step", "tokens_per_s", "mfu", "trainable", "total", "flops_per_step",
        "peak_gflops", "threads", "device", "breakdown"}
FAST = dict(steps=2, warmup=1, profile_steps=1, peak_sizes=(128,), malloc="system")


def bench_cli(argv, capsys):
    """Run `minift bench ARGV` through the subcommand add_bench registers; return what it printed on stdout."""
    parser = argparse.ArgumentParser(prog="minift")
    add_bench(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench"] + argv)
    args.func(args)
    return capsys.readouterr().out


@pytest.mark.parametrize("method", ["full", "lora"])
def test_json_is_one_line_with_the_documented_keys(method, capsys):
    out = bench_cli(["--preset", "tiny", "--method", method, "--steps", "2", "--warmup", "1", "--profile-steps", "1",
                     "--malloc", "system", "--json"], capsys)
    assert out.count("\n") == 1                                   # exactly one line, like torch_ref.py
    r = json.loads(out)
    assert KEYS <= set(r)
    undocumented = [k for k in r if not re.search(rf"\b{k}\b", minift.measure.bench.__doc__)]
    assert not undocumented, f"JSON keys missing from minift/measure/bench.py's docstring: {undocumented}"
    assert r["fused"] is False and r["reference"] is False          # nothing to fuse on the CPU; the fast twins
    assert r["workers"] == (2 if cpu_cores() >= 2 else 1)           # auto: the batch split where that is fastest
    assert (r["preset"], r["method"], r["device"], r["dtype"]) == ("tiny", method, "cpu", "float32")
    assert (r["batch"], r["seq"]) == (16, 64)                     # config.BENCH_BATCH["tiny"], n_ctx
    assert r["ms_per_step"] > 0 and r["ms_min"] <= r["ms_per_step"] <= r["ms_max"]
    assert r["tokens_per_s"] == pytest.approx(16 * 64 / (r["ms_per_step"] / 1e3), rel=0.01)
    assert 0 < r["mfu"] and r["peak_gflops"] > 0
    assert r["mfu"] == pytest.approx(r["achieved_gflops"] / r["peak_gflops"], rel=0.01)
    assert r["flops_per_step"] == count_flops(GPTConfig.preset("tiny"), 16, 64, method)["total"]
    assert abs(r["loss"] - math.log(512)) < 0.5                   # random tokens at init: about ln V
    assert r["threads"] is None or r["threads"] >= 1
    if method == "full":
        assert r["rank"] is None and r["trainable"] == r["total"] == 136960
    else:
        assert (r["rank"], r["alpha"]) == (8, 16)
        assert r["trainable"] == 2 * 8 * (64 + 3 * 64 + 64 + 64 + 64 + 4 * 64 + 4 * 64 + 64)   # A, B on 4 linears x 2
        assert r["trainable"] < r["total"] == 136960 + r["trainable"]


def test_breakdown_names_the_ops_and_adds_up():
    r = run_bench("tiny", "full", **FAST)
    b = r["breakdown"]
    assert b["steps"] == 1
    for op in ("embedding", "layernorm", "linear", "attention", "gelu", "lm_head", "cross_entropy"):
        assert op in b["forward"] and op in b["backward"], op
        assert b["forward"][op] >= 0 and b["backward"][op] >= 0
    assert set(b["forward"]) <= set(OP_ORDER) and set(b["backward"]) <= set(OP_ORDER)
    timed = sum(b["forward"].values()) + sum(b["backward"].values()) + b["optimizer"]
    assert timed + b["other"] == pytest.approx(b["step"], abs=0.01)
    assert b["other"] > -1.0 and b["optimizer"] > 0


def test_lora_breakdown_has_no_embedding_backward():
    """wte and wpe are frozen under LoRA: the embedding backward is never called (nor timed)."""
    b = run_bench("tiny", "lora", **FAST)["breakdown"]
    assert "embedding" in b["forward"] and "embedding" not in b["backward"]


def test_flops_by_hand_on_tiny():
    """tiny: C = 64, L = 2, V = 512, bench batch B = 16 at T = 64, so N = 1024 tokens."""
    cfg = GPTConfig.preset("tiny")
    full = count_flops(cfg, 16, 64, "full")
    block_weights = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64            # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert block_weights == 12 * 64 ** 2 == 49152
    assert full["linear"] == 6 * 1024 * 49152 * 2 == 603_979_776
    # per block: forward 2·2·B·H·T²·D (q kᵀ, att v), backward twice that; H = 4 heads of D = 16
    assert full["attention"] == 2 * (2 * 2 * 16 * 4 * 64 ** 2 * 16) * 3 == 100_663_296
    assert full["lm_head"] == 6 * 1024 * 64 * 512 == 201_326_592
    assert full["lora"] == 0 and full["total"] == 905_969_664
    lora = count_flops(cfg, 16, 64, "lora", rank=8)
    assert lora["linear"] == 4 * 1024 * 49152 * 2 == 402_653_184         # frozen: no xᵀ dy
    in_plus_out = (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)
    assert lora["lora"] == 6 * 1024 * 8 * in_plus_out * 2 == 100_663_296
    assert lora["lm_head"] == 4 * 1024 * 64 * 512 == 134_217_728         # the tied wte is frozen too
    assert lora["attention"] == full["attention"]
    assert lora["total"] == 738_197_504


def test_full_rule_is_six_times_matmul_weights_times_tokens_plus_attention():
    cfg = GPTConfig.preset("small")
    f = count_flops(cfg, 8, 256, "full")
    matmul_weights = cfg.n_layer * 12 * cfg.n_embd ** 2 + cfg.n_embd * cfg.vocab_size
    assert f["linear"] + f["lm_head"] == 6 * matmul_weights * 8 * 256
    assert f["attention"] == 12 * cfg.n_layer * 8 * 256 ** 2 * cfg.n_embd


def test_profiler_restores_the_model_and_its_ops():
    originals = {name: getattr(minift.model, name) for name in ("attention_forward", "gelu_backward")}
    model, step, _ = build_step("tiny", "full")
    with OpProfiler(model) as prof:
        step()
        times = prof.pop()
    assert ("forward", "attention") in times and ("backward", "linear") in times
    assert ("forward", "linear") in times and ("forward", "lm_head") in times
    for name, fn in originals.items():
        assert getattr(minift.model, name) is fn
    assert "_linear_forward" not in vars(model)                 # the instance's wrappers are gone


def test_human_report_has_the_numbers_and_the_table(capsys):
    out = bench_cli(["--preset", "tiny", "--method", "lora", "--steps", "1", "--warmup", "0", "--profile-steps", "1",
                     "--malloc", "system", "--clock", "cpu"], capsys)
    assert "LoRA r=8 alpha=16" in out and "MFU" in out and "tokens/s" in out
    assert "where the time goes" in out and "attention" in out and "optimizer" in out


def test_qlora_runs_the_lora_step_on_an_nf4_base(capsys):
    """The same matmuls as LoRA (the FLOP count agrees), the same trainable parameters, on a 4-bit base."""
    r = json.loads(bench_cli(["--preset", "tiny", "--method", "qlora", "--steps", "1", "--warmup", "0",
                              "--profile-steps", "0", "--malloc", "system", "--json"], capsys))
    lora = json.loads(bench_cli(["--preset", "tiny", "--method", "lora", "--steps", "1", "--warmup", "0",
                                 "--profile-steps", "0", "--malloc", "system", "--json"], capsys))
    assert (r["method"], r["rank"], r["alpha"]) == ("qlora", 8, 16)
    assert r["flops"] == lora["flops"] and r["trainable"] == lora["trainable"] and r["total"] == lora["total"]


def test_bad_input_is_a_clear_error(capsys):
    with pytest.raises(MiniftError, match="preset 'huge' is not one of"):
        run_bench("huge")
    with pytest.raises(MiniftError, match="method 'dora' is not one of"):
        run_bench("tiny", "dora")
    with pytest.raises(MiniftError, match="steps=0"):
        run_bench("tiny", steps=0)
    with pytest.raises(MiniftError, match="rank=0"):
        run_bench("tiny", "lora", rank=0)
    with pytest.raises(MiniftError, match="clock"):
        run_bench("tiny", clock="sundial")
    with pytest.raises(MiniftError, match="workers=17 .* more than the 16 rows of a batch .tiny's bench batch"):
        run_bench("tiny", workers=17)
    with pytest.raises(MiniftError, match="preset 'nano'"):
        bench_cli(["--preset", "nano"], capsys)


def test_cli_error_is_one_line_and_nonzero(capsys):
    from minift.app.cli import main
    assert main(["bench", "--method", "dora"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("minift: error: method 'dora'") and "\n" not in err


@pytest.mark.skipif(gpu_available(), reason="checks the message shown where there is no GPU")
def test_gpu_without_a_gpu_is_a_clear_error():
    with pytest.raises(MiniftError, match="device='gpu' needs CuPy"):
        run_bench("tiny", device="gpu", **FAST)


@pytest.mark.skipif(not gpu_available(), reason="CuPy backend: no usable GPU here")
def test_runs_on_the_gpu():
    r = run_bench("tiny", "lora", device="gpu", **FAST)
    assert r["device"] == "gpu" and r["ms_per_step"] > 0 and 0 < r["mfu"]
    assert "attention" in r["breakdown"]["forward"]


def test_threads_option_sets_and_restores_the_blas_thread_count():
    before = blas_info()["threads"]
    if before is None:
        pytest.skip("this numpy's BLAS does not tell its thread count")
    r = run_bench("tiny", "full", threads=1, **FAST)
    assert r["threads"] == 1
    assert blas_info()["threads"] == before
    with pytest.raises(MiniftError, match="threads=0"):
        set_blas_threads(0)


def test_report_formats_without_a_breakdown():
    r = run_bench("tiny", "full", **{**FAST, "profile_steps": 0})
    assert r["breakdown"] is None
    text = format_report(r)
    assert "where the time goes" not in text and np.isfinite(r["loss"])


# ---- process settings, portably ------------------------------------------------------------------------------------

def test_blas_threads_are_set_and_read_through_threadpoolctl():
    """set_blas_threads and blas_info go through threadpoolctl (Linux, macOS, Windows), so what they set is what
    threadpoolctl itself reads for numpy's BLAS."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = blas_info()["threads"]
    if before is None:
        pytest.skip("threadpoolctl finds no BLAS library in this numpy")
    want = 2 if before == 1 else 1
    try:
        set_blas_threads(want)
        counts = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        assert blas_info()["threads"] == want and want in counts
    finally:
        set_blas_threads(before)


def test_reuse_freed_memory_is_a_no_op_off_glibc(monkeypatch):
    def no_libc(*args, **kwargs):
        raise AssertionError("no C library call off glibc")
    monkeypatch.setattr(minift.measure.bench.platform, "libc_ver", lambda: ("", ""))    # macOS, Windows, musl say this
    monkeypatch.setattr(minift.measure.bench.ctypes, "CDLL", no_libc)
    assert minift.measure.bench.reuse_freed_memory() is False
