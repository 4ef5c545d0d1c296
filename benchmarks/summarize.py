"""Read benchmarks/run.sh's output and print the tables of benchmarks/RESULTS.md: minift / torch_ref per thread count,
preset and method (the median of the per-round ratios: each round's three runs sat next to each other in time),
LoRA / full within minift, and minift's MFU.

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


def ratio_rows(runs):
    print("| threads | preset | method | minift ms | torch sdpa ms | torch no-sdpa ms | minift/torch sdpa "
          "| minift/torch no-sdpa | minift MFU | rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (t, p, m), rounds in sorted(runs.items()):
        ms = {v: med([r[v]["ms_per_step"] for r in rounds.values() if v in r])
              for v in ("minift", "torch-sdpa", "torch-nosdpa")}
        ratio = {v: med([r["minift"]["ms_per_step"] / r[v]["ms_per_step"] for r in rounds.values()
                         if "minift" in r and v in r]) for v in ("torch-sdpa", "torch-nosdpa")}
        mfu = med([r["minift"]["mfu"] for r in rounds.values() if "minift" in r])
        print(f"| {t} | {p} | {m} | {fmt(ms['minift'], '.0f')} | {fmt(ms['torch-sdpa'], '.0f')} "
              f"| {fmt(ms['torch-nosdpa'], '.0f')} | {fmt(ratio['torch-sdpa'])} | {fmt(ratio['torch-nosdpa'])} "
              f"| {fmt(None if mfu is None else 100 * mfu, '.0f')}% | {len(rounds)} |")


def lora_rows(runs):
    print("\n| threads | preset | minift LoRA/full | torch sdpa LoRA/full | torch no-sdpa LoRA/full |")
    print("|---|---|---|---|---|")
    for (t, p, m), rounds in sorted(runs.items()):
        if m != "full" or (t, p, "lora") not in runs:
            continue
        lora = runs[(t, p, "lora")]
        cells = []
        for v in ("minift", "torch-sdpa", "torch-nosdpa"):
            cells.append(med([lora[k][v]["ms_per_step"] / rounds[k][v]["ms_per_step"]
                              for k in rounds if k in lora and v in rounds[k] and v in lora[k]]))
        print(f"| {t} | {p} | " + " | ".join(fmt(c) for c in cells) + " |")


if __name__ == "__main__":
    data = load(sys.argv[1:] or ["benchmarks/raw.tsv"])
    ratio_rows(data)
    lora_rows(data)
