"""Kernel launches in one training step on the GPU path, with and without minift's fused kernels, counted on
tests/fakecupy.py (the CPU stand-in for CuPy), so it runs on any machine:

    python benchmarks/launches.py [--presets tiny,demo,small] [--methods full,lora] [--top 12]

A launch costs CuPy several microseconds of host time whatever the array's size; where the arrays are small (demo,
small), the GPU step is bounded by their number. The fake counts every ufunc, reduction, computing function or
method, assignment into a device array, array-indexed gather and fused kernel call (fakecupy.Launches); views and
uninitialised allocations launch nothing. The step is `minift bench`'s (forward, backward, AdamW), the second one
counted (the first compiles and allocates the optimizer's state).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fakecupy  # noqa: E402
from minift.fast import kernels  # noqa: E402
from minift.measure.bench import build_step  # noqa: E402


def count(preset: str, method: str, fused: bool) -> fakecupy.Launches:
    """The launches of one training step on the fake GPU (a copy of the counter)."""
    with kernels.use_fused(fused):
        _, step, _ = build_step(preset, method, device="gpu")
        step()
        fakecupy.LAUNCHES.reset()
        step()
    result = fakecupy.Launches()
    result.count, result.by_name = fakecupy.LAUNCHES.count, dict(fakecupy.LAUNCHES.by_name)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,demo,small")
    p.add_argument("--methods", default="full,lora")
    p.add_argument("--top", type=int, default=0, help="also list the N most frequent launches, fused")
    a = p.parse_args(argv)
    fakecupy.install()
    print(f"{'preset':<8}{'method':<8}{'reference':>10}{'fused':>8}{'ratio':>8}")
    for preset in a.presets.split(","):
        for method in a.methods.split(","):
            off, on = count(preset, method, False), count(preset, method, True)
            print(f"{preset:<8}{method:<8}{off.count:>10,}{on.count:>8,}{on.count / off.count:>8.2f}")
            if a.top:
                top = sorted(on.by_name.items(), key=lambda kv: -kv[1])[:a.top]
                print("    " + ", ".join(f"{name} {n}" for name, n in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
