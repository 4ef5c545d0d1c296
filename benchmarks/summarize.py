"""Read benchmarks/run.sh's output and print the tables of benchmarks/RESULTS.md: minift / torch_ref per thread count,
preset and method (the median of the per-round ratios: each round's runs sat next to each other in time),
LoRA / full within minift, and minift's MFU. With two or more threads, run.sh also runs minift with the batch split
across that many worker threads (`--workers`, variant "minift-workers"); its columns are "-" where it did not run.
On a GPU, run.sh also runs minift without its fused kernels (`--no-fused`, variant "minift-nofused"): a third table
gives fused / not fused.

    python benchmarks/summarize.py benchmarks/raw.tsv [more.tsv ...]
"""
import json
import statistics
import sys
from collections import defaultdict


def load(paths):
    """{(threads, preset, method): {(file, round): {variant: record}}}, from one or more run.sh outputs."""
    runs = defaultdict(lambda: defaultdict(dict))
    for i, path in enumerate(paths):
        with open(path) as f:
            for line in f:
                threads, rnd, variant, text = line.rstrip("\n").split("\t", 3)
                r = json.loads(text)
                preset, method = r.get("preset", r.get("config")), r.get("method", r.get("mode"))
                runs[(int(threads), preset, method)][(i, int(rnd))][variant] = r
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def ratio(rounds, mine, theirs):
    """The median over rounds of mine's time / theirs, from the rounds that ran both."""
    return med([r[mine]["ms_per_step"] / r[theirs]["ms_per_step"] for r in rounds.values() if mine in r and theirs in r])


def ratio_rows(runs):
    print("| threads | preset | method | minift ms | minift workers ms | torch sdpa ms | torch no-sdpa ms "
          "| minift/torch sdpa | minift/torch no-sdpa | minift workers/torch sdpa | minift MFU | workers MFU "
          "| rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (t, p, m), rounds in sorted(runs.items()):
        ms = {v: med([r[v]["ms_per_step"] for r in rounds.values() if v in r])
              for v in ("minift", "minift-workers", "torch-sdpa", "torch-nosdpa")}
        mfu = {v: med([r[v]["mfu"] for r in rounds.values() if v in r]) for v in ("minift", "minift-workers")}
        pct = {v: "-" if x is None else f"{100 * x:.0f}%" for v, x in mfu.items()}
        print(f"| {t} | {p} | {m} | {fmt(ms['minift'], '.0f')} | {fmt(ms['minift-workers'], '.0f')} "
              f"| {fmt(ms['torch-sdpa'], '.0f')} | {fmt(ms['torch-nosdpa'], '.0f')} "
              f"| {fmt(ratio(rounds, 'minift', 'torch-sdpa'))} | {fmt(ratio(rounds, 'minift', 'torch-nosdpa'))} "
              f"| {fmt(ratio(rounds, 'minift-workers', 'torch-sdpa'))} | {pct['minift']} | {pct['minift-workers']} "
              f"| {len(rounds)} |")


def lora_rows(runs):
    print("\n| threads | preset | minift LoRA/full | minift workers LoRA/full | torch sdpa LoRA/full "
          "| torch no-sdpa LoRA/full |")
    print("|---|---|---|---|---|---|")
    for (t, p, m), rounds in sorted(runs.items()):
        if m != "full" or (t, p, "lora") not in runs:
            continue
        lora = runs[(t, p, "lora")]
        cells = []
        for v in ("minift", "minift-workers", "torch-sdpa", "torch-nosdpa"):
            cells.append(med([lora[k][v]["ms_per_step"] / rounds[k][v]["ms_per_step"]
                              for k in rounds if k in lora and v in rounds[k] and v in lora[k]]))
        print(f"| {t} | {p} | " + " | ".join(fmt(c) for c in cells) + " |")


def fused_rows(runs):
    """fused kernels vs the reference lines on the GPU, where run.sh ran both (variant "minift-nofused")."""
    rows = [(key, rounds) for key, rounds in sorted(runs.items())
            if any("minift-nofused" in r for r in rounds.values())]
    if not rows:
        return
    print("\n| preset | method | minift ms (fused kernels) | minift ms (--no-fused) | fused / not fused "
          "| not fused / torch sdpa |")
    print("|---|---|---|---|---|---|")
    for (t, p, m), rounds in rows:
        ms = {v: med([r[v]["ms_per_step"] for r in rounds.values() if v in r]) for v in ("minift", "minift-nofused")}
        print(f"| {p} | {m} | {fmt(ms['minift'], '.1f')} | {fmt(ms['minift-nofused'], '.1f')} "
              f"| {fmt(ratio(rounds, 'minift', 'minift-nofused'))} "
              f"| {fmt(ratio(rounds, 'minift-nofused', 'torch-sdpa'))} |")


if __name__ == "__main__":
    data = load(sys.argv[1:] or ["benchmarks/raw.tsv"])
    ratio_rows(data)
    lora_rows(data)
    fused_rows(data)
