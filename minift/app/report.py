"""Turning `minift compare` results into tables, a reading of the article's claims, and plots."""
from __future__ import annotations

from pathlib import Path

from ..formats.io import atomic_write

PLOTS = ("loss_curves.png", "accuracy_vs_trainable.png", "spectra.png", "intruders_vs_eps.png", "rank_sweep.png")

MiB = 1024 * 1024


def _fmt_bytes(n) -> str:
    return f"{n / MiB:.2f} MiB" if n >= 0.1 * MiB else f"{n / 1024:.1f} KiB"


def intruders_at(run, eps=0.5):
    """(intruder count, random-direction baseline) of one run at threshold ε (one of analysis.EPS_VALUES)."""
    sp = run["spectral"]
    i = sp["eps"].index(eps)
    return sp["intruders"][i], sp["random_baseline"][i]


def main_table(results) -> str:
    """The one table: per method, the article's and the paper's measurements."""
    header = ("| method | trainable (% of total) | ms/step | tokens/s | val acc | test acc | forgetting ΔLM | "
              "intruders ε=0.5 (random) | eff. rank ΔW | must save |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results["runs"]:
        n, rnd = intruders_at(r)
        rows.append(f"| {r['label']} | {r['trainable']:,} ({r['percent']:.2f}%) | {r['ms_per_step']:.0f} | "
                    f"{r['tokens_per_s']:,.0f} | {r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} | "
                    f"{r['forgetting']:+.4f} | {n} ({rnd:.1f}) | {r['spectral']['effective_rank_dW']:.1f} | "
                    f"{_fmt_bytes(r['saved_bytes'])} |")
    return "\n".join([header] + rows)


def memory_table(results) -> str:
    header = ("| method | parameters | gradients | optimizer | activations | total measured | total predicted |\n"
              "|---|---|---|---|---|---|---|")
    rows = []
    for r in results["runs"]:
        m, p = r["memory"]["measured"], r["memory"]["predicted"]
        rows.append(f"| {r['label']} | {m['parameters'] / MiB:.2f} | {m['gradients'] / MiB:.2f} | "
                    f"{m['optimizer'] / MiB:.2f} | {m['activations'] / MiB:.2f} | {m['total'] / MiB:.2f} | "
                    f"{p['total'] / MiB:.2f} |")
    return "\n".join([header] + rows)


def _find(results, label):
    return next((r for r in results["runs"] if r["label"] == label), None)


def lora_label(rank: int, rslora=False, dora=False) -> str:
    """A LoRA run's name in tables and results.json: "lora r=8", with the variant when there is one."""
    variant = ", ".join(name for name, on in (("rsLoRA", rslora), ("DoRA", dora)) if on)
    return f"lora r={rank}" + (f" ({variant})" if variant else "")


def _main_lora(cfg) -> str:
    return lora_label(cfg["rank"], cfg.get("rslora", False), cfg.get("dora", False))


def claims(results) -> list:
    """Each article claim, what was measured here, and whether it held."""
    cfg = results["config"]
    full, lora = _find(results, "full"), _find(results, _main_lora(cfg))
    out = []
    if not (full and lora):
        missing = "full fine-tuning" if not full else f"LoRA at the main rank r={cfg['rank']} (--rank)"
        return [f"The claims compare full fine-tuning with LoRA at r={cfg['rank']}, and this run has no {missing}: "
                "add the missing method to --methods to check them."]
    fewer = 1 - lora["trainable"] / full["trainable"]
    out.append(f"**\"90% fewer parameters\"** — LoRA r={cfg['rank']} trains {lora['trainable']:,} parameters "
               f"where full fine-tuning trains {full['trainable']:,}: {100 * fewer:.1f}% fewer (the table's share "
               "is of LoRA's own total, base and adapters). "
               f"{'Held' if fewer >= 0.9 else 'Did not hold'} here (and the gap widens with model size).")
    less_time = 1 - lora["ms_per_step"] / full["ms_per_step"]
    change = f"{100 * less_time:.0f}% less time" if less_time >= 0 else f"{-100 * less_time:.0f}% MORE time"
    out.append(f"**\"~70% less time\"** — {full['ms_per_step']:.0f} vs {lora['ms_per_step']:.0f} ms per step: "
               f"{change}. {'Held' if less_time >= 0.6 else 'Did not hold'}. LoRA skips only "
               "the weight-gradient matmul of frozen weights (at most ~1/3 of a linear layer's training FLOPs) and "
               "adds its own small matmuls; clipping and AdamW shrink with the trainable parameters too, but they "
               "are a few % of a step, so a large cut is not expected (the LoRA paper, Hu et al. 2021 §4.2, reports "
               "a 25% speed-up on GPT-3 175B)." + busy_note(results.get("machine", {})))
    fm, lm = full["memory"]["measured"]["total"], lora["memory"]["measured"]["total"]
    less_mem = 1 - lm / fm
    out.append(f"**\"~80% less memory\"** — peak training memory {fm / MiB:.1f} vs {lm / MiB:.1f} MiB: "
               f"{100 * less_mem:.0f}% less. {'Held' if less_mem >= 0.7 else 'Did not hold'}. The saving is "
               "gradients and optimizer state of frozen weights; activations are the same for both methods and "
               "grow with batch × sequence (see `minift memory` for how this changes with model size).")
    gap = lora["test_accuracy"] - full["test_accuracy"]
    out.append(f"**\"comparable accuracy\"** — test accuracy {full['test_accuracy']:.3f} (full) vs "
               f"{lora['test_accuracy']:.3f} (LoRA): {100 * gap:+.1f} points. "
               f"{'Held' if abs(gap) <= 0.03 else 'Did not hold'} (the rule used here: within 3 points).")
    if cfg.get("train_size"):
        fg = full["val_loss"] - full["final_train_loss"]
        lg = lora["val_loss"] - lora["final_train_loss"]
        out.append(f"**\"LoRA overfits less on small data\"** — with {cfg['train_size']} training examples the "
                   f"validation-minus-train loss gap is {fg:.3f} (full) vs {lg:.3f} (LoRA), and test accuracy "
                   f"{full['test_accuracy']:.3f} vs {lora['test_accuracy']:.3f}. "
                   + ("Neither method overfits here (both gaps ≤ 0): nothing to compare; "
                      if max(fg, lg) <= 0 else f"{'Held' if lg < fg else 'Did not hold'} here, by the loss gap; ")
                   + "what matters to a user is the test accuracy, and one seed at this size moves it by several "
                   "points (README).")
    else:
        out.append("**\"LoRA overfits less on small data\"** — not tested in this run: rerun with "
                   "`--train-size 200` to shrink the training set.")
    return out


def paper_findings(results) -> list:
    cfg = results["config"]
    full, lora = _find(results, "full"), _find(results, _main_lora(cfg))
    out = []
    if full and lora:
        fn, frnd = intruders_at(full)
        ln, lrnd = intruders_at(lora)
        out.append(f"Intruder dimensions at ε = 0.5 (top-{10} singular vectors of each of "
                   f"{lora['spectral']['matrices']} matrices): full {fn}, LoRA {ln}; random directions would give "
                   f"{lrnd:.1f}. The paper finds LoRA ≫ full; at this width the random baseline is high, so read the "
                   "ε sweep in `intruders_vs_eps.png` rather than one threshold.")
        out.append(f"Forgetting (held-out pretraining LM loss minus the base's {results['base_lm_loss']:.4f}): "
                   f"full {full['forgetting']:+.4f}, LoRA {lora['forgetting']:+.4f}.")
        bound = ("not bounded by r: DoRA's magnitudes rescale every column of W, so ΔW = W' − W0 is in general "
                 "of full rank" if cfg.get("dora") else f"at most r = {cfg['rank']}")
        out.append(f"Effective rank of ΔW (mean over matrices): full {full['spectral']['effective_rank_dW']:.1f}, "
                   f"LoRA {lora['spectral']['effective_rank_dW']:.1f} ({bound}).")
        if "mitigation" in lora:
            m = lora["mitigation"]
            out.append(f"Mitigation (intruders' singular values × λ = {m['lam']}, ε = {m['eps']}): test accuracy "
                       f"{lora['test_accuracy']:.3f} → {m['test_accuracy']:.3f}, forgetting "
                       f"{lora['forgetting']:+.4f} → {m['forgetting']:+.4f}.")
    sweep = [r for r in results["runs"] if r["method"] == "lora"]
    if len(sweep) > 1:
        rows = ", ".join(f"r={r['rank']}: {intruders_at(r)[0]} intruders, forgetting {r['forgetting']:+.4f}, "
                         f"test {r['test_accuracy']:.3f}" for r in sorted(sweep, key=lambda r: r["rank"]))
        rule = f"α = {cfg['alpha']:g} at every rank, s = α/√r" if cfg.get("rslora") else \
            f"s = α/r = {cfg['alpha'] / cfg['rank']:g} at every rank"
        out.append(f"Rank sweep ({rule}): {rows}.")
    if not out:
        out.append("These measurements compare full fine-tuning with LoRA: run with both methods (and `--ranks` "
                   "for the rank sweep) to see them.")
    return out


def seeds_table(results) -> str:
    """Per run: test accuracy for each seed, then the mean (and range) of test and validation accuracy, forgetting
    and intruders at ε = 0.5 over the seeds. Empty without --seeds."""
    spread = results.get("seeds")
    if not spread:
        return ""
    seeds = spread["seeds"]
    header = ("| method | " + " | ".join(f"test acc, seed {s}" for s in seeds) + " | test acc mean (min–max) | "
              "val acc mean | forgetting mean | intruders ε=0.5 mean |\n|---|" + "---|" * (len(seeds) + 4))
    rows = []
    for label, v in spread["runs"].items():
        t, n = v["test_accuracy"], len(seeds)
        rows.append(f"| {label} | " + " | ".join(f"{a:.3f}" for a in t) +
                    f" | {sum(t) / n:.3f} ({min(t):.3f}–{max(t):.3f}) | {sum(v['val_accuracy']) / n:.3f} | "
                    f"{sum(v['forgetting']) / n:+.4f} | {sum(v['intruders']) / n:.1f} |")
    return "\n".join([header] + rows)


def write_report(results) -> str:
    cfg, machine = results["config"], results["machine"]
    parts = [
        "# minift compare — full fine-tuning vs LoRA, measured",
        "",
        f"Task `{cfg['task']}`, base `{results['base']}`, {cfg['steps']} steps of batch {cfg['batch_size']}, "
        f"seed {cfg['seed']}, same data order for every method"
        + (" — **quick mode: a tiny budget, numbers are only a smoke test**" if cfg["quick"] else "") + ".",
        "",
        main_table(results),
        "",
        "Peak training memory (MiB), measured with tracemalloc during one step, and predicted by "
        "minift.measure.memory:",
        "",
        memory_table(results),
        "",
        *([f"Over seeds {', '.join(map(str, results['seeds']['seeds']))} (every run repeated; the table above "
           "is the first seed's):", "", seeds_table(results), ""] if results.get("seeds") else []),
        "## The article's claims, checked here",
        "",
        *[f"- {c}" for c in claims(results)],
        "",
        "## What the MIT paper found, in miniature",
        "",
        *[f"- {c}" for c in paper_findings(results)],
        "",
        "## Method and caveats",
        "",
        f"- Machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}, NumPy "
        f"{machine['numpy']}; total wall time {results['seconds']:.0f} s. Times are from this machine only; on a "
        "shared machine they vary from run to run, so compare ratios, not absolute milliseconds.",
        f"- forgetting: mean next-token loss on {results.get('forgetting_text', 'held-out world text')} after "
        "fine-tuning minus before; classification models are measured through their tied LM head.",
        "- intruders: the paper's Algorithm 1 on the effective weight W0 + ΔW of every adapted matrix, output "
        "space, top-10 singular vectors; 'random' is the expected count for random directions against the same "
        "W0 basis sizes (minift.measure.analysis.random_baseline).",
        "- memory: one training step of the batch shape shown in results.json, float32, AdamW.",
        "- must save: the adapter folder (LoRA), the whole model (full), or the trained tensors (head/freeze).",
        *(["- freeze: the embeddings and the first half of the blocks frozen (methods.freeze_plan's default), the "
           "rest trained."] if "freeze" in cfg["methods"] else []),
        f"- one seed ({cfg['seed']}) per method. Small models trained for a few hundred steps are sensitive to the "
        "seed and even to floating-point order: for example, on the sentiment task LoRA r=8's validation "
        "accuracy at the default settings was 0.896 / 0.902 / 0.852 for seeds 0 / 1 / 2 (minift/training/finetune.py). "
        "Rerun with `--seed` before reading a difference of a few points.",
        "",
        "Plots: " + ", ".join(f"`{p}`" for p in results.get("plots", [])) if results.get("plots") else
        "Plots: not drawn (install the plot extra: `pip install 'minift[plot]'`).",
        "",
    ]
    return "\n".join(parts)


BUSY_BELOW = 0.8      # CPU seconds per wall second under which the comparison did not even get one core


def busy_note(machine: dict) -> str:
    """A warning for the time claim when other work held the cores: the comparison, which keeps at least one core
    busy all the time it runs, got less than BUSY_BELOW of a core on average. Then step times measure the other
    work as much as the methods."""
    share = machine.get("cpu_per_wall")
    if share is None or share >= BUSY_BELOW:
        return ""
    return (f" **The machine was busy**: this comparison got {share:.2f} CPU seconds per second, less than one core, "
            "so these step times measure the other work as much as the methods and the verdict can flip; rerun on "
            "an idle machine, or with `OPENBLAS_NUM_THREADS=1` for steadier times.")


def write_plots(results, out: Path) -> list:
    """PNG plots into `out`; returns their file names (empty without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs, names = results["runs"], []

    def save(fig, name):
        assert name in PLOTS, name                  # the run folder's rules know each plot by name (outdir.py)
        fig.tight_layout()
        with atomic_write(out / name) as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot(r["losses"], label=r["label"], lw=1)
    ax.set(xlabel="step", ylabel="training loss", title="Loss curves")
    ax.legend()
    save(fig, "loss_curves.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.scatter(r["trainable"], r["test_accuracy"])
        ax.annotate(r["label"], (r["trainable"], r["test_accuracy"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.margins(x=0.25, y=0.1)                          # room for the labels of the points at the edges
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="test accuracy", title="Accuracy vs trainable")
    save(fig, "accuracy_vs_trainable.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    shown = False
    for r in runs:
        ex = r.get("spectra_example") or {}
        if ex:
            if not shown:
                ax.semilogy(ex["base"], "k-", lw=2, label="W0 (base)")
                shown = True
            ax.semilogy(ex["tuned"], lw=1, label=r["label"])
    ax.set(xlabel="index", ylabel="singular value",
           title=f"Spectra of {runs[0].get('spectra_example', {}).get('name', '')}")
    ax.legend()
    save(fig, "spectra.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot(r["spectral"]["eps"], r["spectral"]["intruders"], marker="o", label=r["label"])
    ax.plot(runs[0]["spectral"]["eps"], runs[0]["spectral"]["random_baseline"], "k--", label="random directions")
    ax.set(xlabel="ε", ylabel="intruder dimensions (summed)", title="Intruders vs ε")
    ax.legend()
    save(fig, "intruders_vs_eps.png")

    sweep = sorted((r for r in runs if r["method"] == "lora"), key=lambda r: r["rank"])
    if len(sweep) > 1:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
        ranks = [r["rank"] for r in sweep]
        a1.plot(ranks, [intruders_at(r)[0] for r in sweep], marker="o")
        a1.set(xscale="log", xlabel="rank r", ylabel="intruders (ε=0.5)", title="Intruders vs rank")
        a2.plot(ranks, [r["forgetting"] for r in sweep], marker="o", label="LoRA")
        full = _find(results, "full")
        if full:
            a2.axhline(full["forgetting"], color="k", ls="--", label="full")
        a2.set(xscale="log", xlabel="rank r", ylabel="Δ LM loss", title="Forgetting vs rank")
        a2.legend()
        save(fig, "rank_sweep.png")
    return names
