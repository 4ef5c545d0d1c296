"""Turning `minift compare` results into tables, a reading of the article's claims, and what its pictures show.

`summarize` computes, once, every number the figures' titles and report.md's sentences quote; results.json keeps it
(as "summary"), so the pictures, the report and the file agree. The pictures themselves: app/figures.py.
"""
from __future__ import annotations

import numpy as np

from ..fast.parallel import AUTO, SHARDS_PER_WORKER
from ..measure.memory import CLAIM
from ..measure.quant_error import variant_key

MiB = 1024 * 1024
SMOOTH_STEPS = 20          # the training curves' moving average covers 1/SMOOTH_STEPS of the run (at least 1 step)


def _fmt_bytes(n) -> str:
    return f"{n / MiB:.2f} MiB" if n >= 0.1 * MiB else f"{n / 1024:.1f} KiB"


def intruders_at(run, eps=0.5):
    """(intruder count, random-direction baseline) of one run at threshold ε (one of analysis.EPS_VALUES)."""
    sp = run["spectral"]
    i = sp["eps"].index(eps)
    return sp["intruders"][i], sp["random_baseline"][i]


def main_table(results) -> str:
    """The one table: per method, the article's and the paper's measurements."""
    possible = results["runs"][0]["spectral"].get("possible")
    of = f" of {possible}" if possible else ""
    header = ("| method | trainable (% of total) | ms/step | tokens/s | val acc | test acc | forgetting ΔLM | "
              f"intruders ε=0.5{of} (random) | eff. rank ΔW | must save |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results["runs"]:
        n, rnd = intruders_at(r)
        rows.append(f"| {r['label']} | {r['trainable']:,} ({r['percent']:.2f}%) | {r['ms_per_step']:.0f} | "
                    f"{r['tokens_per_s']:,.0f} | {r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} | "
                    f"{r['forgetting']:+.4f} | {n} ({rnd:.0f}) | {r['spectral']['effective_rank_dW']:.1f} | "
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


def lora_label(rank: int, rslora=False, dora=False, quant=None, double_quant=False) -> str:
    """A LoRA run's name in tables and results.json: "lora r=8", with the variant when there is one; a QLoRA run
    (quant given) "qlora r=8 (nf4)"."""
    variant = ", ".join(name for name, on in ((quant, quant), ("double-quant", double_quant), ("rsLoRA", rslora),
                                              ("DoRA", dora)) if on)
    return f"{'qlora' if quant else 'lora'} r={rank}" + (f" ({variant})" if variant else "")


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
               f"{100 * less_mem:.0f}% less. {'Held' if less_mem >= CLAIM else 'Did not hold'}. The saving is "
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
                   "ε sweep in `intruders.png` rather than one threshold.")
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


def _qlora_run(results):
    return next((r for r in results["runs"] if r["method"] == "qlora"), None)


def qlora_findings(results) -> list:
    """What the QLoRA run shows beside LoRA's and full fine-tuning's: memory, time, accuracy, and what its 4-bit base
    costs before any fine-tuning (results["quantization"]). Empty without a qlora run."""
    q = _qlora_run(results)
    if q is None:
        return []
    cfg = results["config"]
    full, lora = _find(results, "full"), _find(results, _main_lora(cfg))
    mem = {k: r["memory"]["measured"] for k, r in (("q", q), ("full", full), ("lora", lora)) if r}
    out = []
    versus = [f"{100 * (1 - mem['q']['total'] / mem[k]['total']):.0f}% less than {name}'s "
              f"{mem[k]['total'] / MiB:.1f} MiB" for k, name in (("full", "full fine-tuning"), ("lora", "LoRA"))
              if k in mem]
    out.append(f"**Memory** — peak training memory {mem['q']['total'] / MiB:.1f} MiB"
               + (f": {' and '.join(versus)}" if versus else "") + ". The adapted weights are kept in 4 bits "
               f"(parameters {mem['q']['parameters'] / MiB:.2f} MiB"
               + (f" against LoRA's {mem['lora']['parameters'] / MiB:.2f}" if "lora" in mem else "") + "); "
               "gradients, optimizer state and activations are LoRA's." + _claim_verdict(mem))
    if lora:
        slower = q["ms_per_step"] / lora["ms_per_step"] - 1
        out.append(f"**Time** — {q['ms_per_step']:.0f} vs LoRA's {lora['ms_per_step']:.0f} ms per step: "
                   f"{100 * abs(slower):.0f}% {'slower' if slower >= 0 else 'faster'}. Every adapted W is dequantised "
                   "twice for each piece of the batch computed on its own (for the forward's x·W̃ and the backward's "
                   f"dy·W̃ᵀ): {_dequantisations(q, cfg)}, work LoRA does not do. QLoRA trades time for memory."
                   + busy_note(results.get("machine", {})))
        out.append(f"**Accuracy and forgetting** — test accuracy {q['test_accuracy']:.3f} (QLoRA) vs "
                   f"{lora['test_accuracy']:.3f} (LoRA); forgetting {q['forgetting']:+.4f} vs "
                   f"{lora['forgetting']:+.4f} nats (QLoRA's counts its 4-bit base's own change, below, as well as "
                   "what it learned).")
    quant = results.get("quantization")
    if quant:
        variant = variant_key(cfg.get("quant", "nf4"), bool(cfg.get("double_quant")))
        sm, loss = quant["summary"], quant["loss"]
        others = ", ".join(f"{k} {100 * v['rel_error_mean']:.1f}%" for k, v in sm.items()
                           if k != variant and not v["double_quant"])
        d = loss["quantised"][variant]
        se = f" ± {d['delta_se']:.4f}" if d.get("delta_se") is not None else ""
        out.append(f"**The 4-bit base itself** — {variant} reconstructs the adapted matrices with a relative error "
                   f"‖W − W̃‖/‖W‖ of {100 * sm[variant]['rel_error_mean']:.1f}% on average ({others}), at "
                   f"{sm[variant]['bits_per_parameter']:.3f} bits a weight. Before any fine-tuning, the base with its "
                   f"4-bit weights changes the held-out loss by {d['delta']:+.4f}{se} nats "
                   f"({loss['tokens']:,} tokens) against the float base's {loss['float']:.4f}.")
    return out


def memory_claim_section(results) -> list:
    """report.md's lines on where "~80% less memory" holds, from results["memory_claim"] (predicted tables)."""
    from ..measure.memory import format_saving_table
    tables = results.get("memory_claim")
    if not tables:
        return []
    return ["## Where \"~80% less memory\" holds", "",
            "The claim depends on the model's size and on batch × sequence: predicted (minift.measure.memory, checked "
            "against measurement at the sizes that fit, as in the table above) for this base and for GPT-2's size, "
            "float32, AdamW. Activations are the same for every method and grow with the tokens of a step, so the "
            "saving shrinks as they do. `minift memory --claim --precision bf16-mixed` gives the 16-bit tables, "
            "`minift memory --papers` checks the LoRA and QLoRA papers' own figures.", "",
            "```text", *("\n\n".join(format_saving_table(t) for t in tables)).split("\n"), "```", ""]


def _dequantisations(run, cfg) -> str:
    """How many times a step each adapted W of a QLoRA run was dequantised: twice per piece of the batch that was
    computed on its own (the whole batch, or split_loss_and_grads' shards with --workers > 1)."""
    workers = run.get("workers", 1)
    pieces = min(SHARDS_PER_WORKER * workers, cfg["batch_size"]) if workers > 1 else 1
    return f"{2 * pieces} times a step here" + (f" ({pieces} shards of the batch over {workers} workers)"
                                                  if pieces > 1 else "")


def _claim_verdict(mem) -> str:
    """Whether the article's "~80% less memory" held for QLoRA against full fine-tuning, by the rule the claims
    use for LoRA (measure.memory.CLAIM)."""
    if "full" not in mem:
        return ""
    less = 1 - mem["q"]["total"] / mem["full"]["total"]
    return (f" The article's \"~80% less memory\", for QLoRA: {'held' if less >= CLAIM else 'did not hold'} "
            "here.")


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
        *(["## QLoRA: the same adapters on a 4-bit base", "", *[f"- {c}" for c in qlora_findings(results)], ""]
          if _qlora_run(results) else []),
        *memory_claim_section(results),
        "## What the MIT paper found, in miniature",
        "",
        *[f"- {c}" for c in paper_findings(results)],
        "",
        "## Method and caveats",
        "",
        workers_note(results),
        f"- Machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}, NumPy "
        f"{machine['numpy']}; total wall time {results['seconds']:.0f} s. Times are from this machine only; on a "
        "shared machine they vary from run to run, so compare ratios, not absolute milliseconds.",
        f"- forgetting: mean next-token loss on {results.get('forgetting_text', 'held-out world text')} after "
        "fine-tuning minus before; classification models are measured through their tied LM head.",
        "- intruders: the paper's Algorithm 1 on the effective weight W0 + ΔW of every adapted matrix, output "
        "space, top-10 singular vectors; 'random' is the expected count for random directions against the same "
        "W0 basis sizes (minift.measure.analysis.random_baseline).",
        "- memory: one training step of the batch shape shown in results.json, float32, AdamW, with the batch "
        "computed whole: split across `--workers` threads the shards are in flight at once, each with its own "
        "activations, so the peak of a split step differs.",
        "- must save: the adapter folder (LoRA), the whole model (full), or the trained tensors (head/freeze).",
        *(["- freeze: the embeddings and the first half of the blocks frozen (methods.freeze_plan's default), the "
           "rest trained."] if "freeze" in cfg["methods"] else []),
        f"- one seed ({cfg['seed']}) per method. Small models trained for a few hundred steps are sensitive to the "
        "seed and even to floating-point order: for example, on the sentiment task LoRA r=8's validation "
        "accuracy at the default settings was 0.896 / 0.902 / 0.852 for seeds 0 / 1 / 2 (minift/training/finetune.py). "
        "Rerun with `--seed` before reading a difference of a few points.",
        "",
        *(picture_notes(results) if results.get("plots") else
          ["Pictures: not drawn (install the plot extra: `pip install 'minift[plot]'`)."]),
        "",
    ]
    return "\n".join(parts)


def workers_note(results) -> str:
    """How each run's steps were computed: the batch whole, or split across CPU threads (--workers)."""
    used = sorted({r.get("workers", 1) for r in results["runs"]})
    asked = results["config"].get("workers", 1)
    how = ("each step's batch computed whole (BLAS threads as the environment sets)" if used == [1] else
           f"each step's batch split across {' or '.join(map(str, used))} CPU threads, the cores' BLAS threads "
           "shared out among them (one each on 2 cores; "
           + ("`--workers auto`, the default: the fastest configuration measured" if asked == AUTO else
              f"`--workers {asked}`") + "); the gradient is the whole batch's up to float rounding")
    return f"- Steps: {how}."


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


# ---- what the pictures show: every number they quote, computed once -------------------------------------------------

def smooth(values, steps=None):
    """The trailing moving average of `values` over `steps` points (default: 1/SMOOTH_STEPS of them): point i is the
    mean of the last `steps` values up to i (fewer at the start)."""
    v = np.asarray(values, dtype=np.float64)
    n = steps or max(1, len(v) // SMOOTH_STEPS)
    c = np.cumsum(np.concatenate([[0.0], v]))
    i = np.arange(1, len(v) + 1)
    return (c[i] - c[np.maximum(i - n, 0)]) / np.minimum(i, n)


def energy_in_top(singular_values, r) -> float:
    """Share of ‖ΔW‖_F² in its top r singular values: 1 for an update of rank ≤ r (0 for no update)."""
    s2 = np.square(np.asarray(singular_values, dtype=np.float64))
    return float(s2[:r].sum() / s2.sum()) if s2.sum() > 0 else 0.0


def changed_updates(run) -> list:
    """The run's per-matrix updates (results.json's "updates") of the matrices it changed (‖ΔW‖ > 0)."""
    return [u for u in run.get("updates") or [] if u["rel_norm"] > 0]


def intruder_range(spectral, low=0.05, high=0.95):
    """The ε where random directions go from rarely (≤ low of them) to nearly always (≥ high) counted as intruders:
    only there does a count tell a new direction from an old one. (the last ε of the sweep at or below low, the first
    at or above high): the grid points that bracket the rise, so the band holds all of it. Where the sweep starts
    above low or ends below high, its first or last ε (report the shares at the ends: `intruder_ends`); None when
    random directions are never counted more than `low` or never less than `high` across the sweep."""
    eps, share = spectral["eps"], np.asarray(spectral["random_baseline"]) / spectral["possible"]
    if share.max() <= low or share.min() >= high:
        return None
    below = [i for i, f in enumerate(share) if f <= low]
    above = [i for i, f in enumerate(share) if f >= high]
    start = below[-1] if below else 0
    end = next((i for i in above if i > start), len(eps) - 1)
    return eps[start], eps[end]


def summarize(results) -> dict:
    """Every number the figures' titles and report.md's picture notes quote, from the results themselves."""
    cfg, runs = results["config"], results["runs"]
    r = cfg["rank"]
    out = dict(rank=r, smooth_steps=max(1, len(runs[0]["losses"]) // SMOOTH_STEPS), training={}, updates={},
               intruders={})
    for run in runs:
        last = run["evals"][-1] if run.get("evals") else {}
        out["training"][run["label"]] = dict(smoothed_loss=float(smooth(run["losses"])[-1]),
                                             val_accuracy=last.get("val_accuracy"), val_loss=last.get("val_loss"))
        ups = run.get("updates") or []
        changed = changed_updates(run)            # spectra: of the matrices it changed (freeze leaves some alone)
        if changed:
            big = max(ups, key=lambda u: u["rel_norm"])
            out["updates"][run["label"]] = dict(
                rel_norm_mean=float(np.mean([u["rel_norm"] for u in ups])), rel_norm_max=big["rel_norm"],
                rel_norm_max_at=big["name"][:-len(".weight")],
                eff_rank_mean=float(np.mean([u["eff_rank"] for u in ups])),
                eff_rank_max=float(max(u["eff_rank"] for u in ups)),
                energy_top_r=float(np.median([energy_in_top(u["singular_values"], r) for u in changed])),
                max_rank=min(len(u["singular_values"]) for u in changed), changed=len(changed))
        sp = run["spectral"]
        if "possible" in sp:
            out["intruders"][run["label"]] = [n / sp["possible"] for n in sp["intruders"]]
    sp = runs[0]["spectral"]
    if "possible" in sp:
        out["intruders"]["random"] = [n / sp["possible"] for n in sp["random_baseline"]]
        out["intruder_range"] = intruder_range(sp)
        if out["intruder_range"]:               # the ε where random directions are counted about half the time
            rnd = out["intruders"]["random"]
            out["intruder_ends"] = [rnd[sp["eps"].index(e)] for e in out["intruder_range"]]   # random's share there
            mid = min((e for e in sp["eps"] if out["intruder_range"][0] <= e <= out["intruder_range"][1]),
                      key=lambda e: abs(rnd[sp["eps"].index(e)] - 0.5))
            out["intruder_mid"] = dict(eps=mid, **{k: v[sp["eps"].index(mid)] for k, v in out["intruders"].items()})
    rows = [row for row in (results.get("similarity") or {}).get("rows", [])     # (nan or None: one left it alone)
            if row["similarity"] is not None and np.isfinite(row["similarity"])]
    if rows:
        sim = results["similarity"]
        scores, randoms = [row["similarity"] for row in rows], [row["random"] for row in rows]
        out["similarity"] = dict(a=sim["a"], b=sim["b"], k=sim["k"], mean=float(np.mean(scores)),
                                 min=float(min(scores)), max=float(max(scores)), random=float(np.mean(randoms)),
                                 above_twice_random=sum(s > 2 * q for s, q in zip(scores, randoms)),
                                 matrices=len(scores))
    lora = _find(results, _main_lora(cfg))
    if lora and "mitigation" in lora:
        m = lora["mitigation"]
        sp = lora["spectral"]
        scaled = sp["intruders"][sp["eps"].index(m["eps"])] if m["eps"] in sp["eps"] else None   # what it scales
        out["mitigation"] = dict(lam=m["lam"], eps=m["eps"], intruders=scaled, test_before=lora["test_accuracy"],
                                 test_after=m["test_accuracy"], test_change=m["test_accuracy"] - lora["test_accuracy"],
                                 forgetting_before=lora["forgetting"], forgetting_after=m["forgetting"])
    full = _find(results, "full")
    if full and lora:
        out["trainable_share"] = lora["trainable"] / full["trainable"]       # LoRA's trainable parameters, of full's
    return out


# ---- what to look at in each picture --------------------------------------------------------------------------------

def picture_notes(results) -> list:
    """report.md's "Pictures" section: each figure drawn, with what to look at and what this run shows."""
    sm, cfg = results["summary"], results["config"]
    r, main = sm["rank"], _main_lora(cfg)
    notes = {}
    tr = sm["training"]
    runs = [x for x in results["runs"] if x["method"] != "lora" or x["label"] == main]
    every = runs[0]["evals"][0]["step"] if runs[0].get("evals") else None
    notes["training.png"] = (
        "Training, read properly",
        f"Left, the training loss: faint, every step; bold, the mean of the last {sm['smooth_steps']} steps, which is "
        "what to compare. Right, validation accuracy at each evaluation"
        + (f" (every {every} steps)" if every else "") + ". The last points: "
        + "; ".join(f"{x['label']} {tr[x['label']]['smoothed_loss']:.3f} smoothed loss, "
                    f"{tr[x['label']]['val_accuracy']:.3f} validation accuracy" for x in runs) + ".")
    up = sm["updates"]
    full, lora = up.get("full"), up.get(main)
    if full and lora:
        notes["update_by_layer.png"] = (
            "Where the update lives, layer by layer",
            "Each cell is one adapted matrix (a block's row, a linear layer's column). Top row, how far fine-tuning "
            "moved it: ‖ΔW‖/‖W0‖; bottom row, the effective rank of ΔW. Full fine-tuning moved its matrices by "
            f"{100 * full['rel_norm_mean']:.1f}% on average (most: {full['rel_norm_max_at']}, "
            f"{100 * full['rel_norm_max']:.1f}%), LoRA r={r} by {100 * lora['rel_norm_mean']:.1f}% (most: "
            f"{lora['rel_norm_max_at']}, {100 * lora['rel_norm_max']:.1f}%). "
            + (f"DoRA's effective ranks are not held to r = {r}, since its magnitudes rescale every column of W "
               f"(at most {lora['eff_rank_max']:.1f})" if cfg.get("dora") else
               f"LoRA's effective ranks stay at or below r = {r} (at most {lora['eff_rank_max']:.1f}) by "
               "construction")
            + f"; full fine-tuning's average {full['eff_rank_mean']:.1f} of a possible {full['max_rank']}.")
        notes["update_spectra.png"] = (
            "The spectra of the updates",
            "The singular values of ΔW, largest first: the line is the median over the adapted matrices, the band "
            + (f"the 10–90% range. DoRA's magnitudes rescale every column of W, so its ΔW is not held to rank r = {r}: "
               if cfg.get("dora") else
               f"the 10–90% range. LoRA's stop at r = {r} (the dotted line: ΔW = s·BA has rank ≤ r, and what is left "
               "is rounding): ")
            + f"{100 * lora['energy_top_r']:.0f}% of ‖ΔW‖² lies in its top {r} directions. Full fine-tuning's "
            f"decay without a cliff: {100 * full['energy_top_r']:.0f}% in its top {r}, the rest spread over the other "
            "directions.")
    elif any(x["label"] in up for x in runs):   # the figures are drawn for any method that changed a matrix
        up = {x["label"]: up[x["label"]] for x in runs if x["label"] in up}      # (the sweep has its own figure)
        notes["update_by_layer.png"] = (
            "Where the update lives, layer by layer",
            "Each cell is one adapted matrix (a block's row, a linear layer's column). Top row, how far fine-tuning "
            "moved it: ‖ΔW‖/‖W0‖; bottom row, the effective rank of ΔW. "
            + "; ".join(f"{label} moved its matrices by {100 * u['rel_norm_mean']:.1f}% on average (most: "
                        f"{u['rel_norm_max_at']}, {100 * u['rel_norm_max']:.1f}%), effective rank "
                        f"{u['eff_rank_mean']:.1f} on average" for label, u in up.items()) + ".")
        notes["update_spectra.png"] = (
            "The spectra of the updates",
            "The singular values of ΔW, largest first: the line is the median over the matrices a method changed, "
            f"the band the 10–90% range; the dotted line marks r = {r}. "
            + "; ".join(f"{label} has {100 * u['energy_top_r']:.0f}% of ‖ΔW‖² in its top {r} directions"
                        for label, u in up.items()) + ".")
    s = sm.get("similarity")
    if s:
        verdict = ("about what two random subspaces share: the two methods reach their accuracy through different "
                   "directions, the MIT paper's \"illusion of equivalence\"" if s["mean"] < 2 * s["random"] else
                   "well above random, yet far from the same subspace: the two updates overlap only in part"
                   if s["mean"] < 0.5 else "most of their main directions are the same")
        notes["similarity.png"] = (
            "Are the two solutions alike?",
            f"Per matrix, how much the top-{s['k']} output directions of full fine-tuning's ΔW and of LoRA's overlap "
            f"(φ = ‖U_fullᵀ U_LoRA‖²_F / {s['k']}, the LoRA paper's subspace similarity, §7): 1 would be the same "
            f"subspace, {s['random']:.3f} is what two random {s['k']}-dimensional subspaces share. Here the mean is "
            f"{s['mean']:.2f} (from {s['min']:.2f} to {s['max']:.2f}), {s['above_twice_random']} of {s['matrices']} "
            f"matrices above twice random: {verdict}.")
    if sm["intruders"]:
        span, text = sm.get("intruder_range"), ""
        if span:
            mid = sm["intruder_mid"]
            ends = sm.get("intruder_ends")
            shares = f" ({100 * ends[0]:.0f}% and {100 * ends[1]:.0f}% of them)" if ends else ""
            text = (f"Random directions go from rarely to nearly always counted between ε = {span[0]:g} and "
                    f"{span[1]:g}{shares}, the shaded band: only there does a count separate a new direction from an "
                    f"old one. At ε = {mid['eps']:g}, where random directions come closest to half counted, "
                    + ", ".join(f"{x['label']} has {100 * mid[x['label']]:.0f}%" for x in runs)
                    + f" of its top directions as intruders (random: {100 * mid['random']:.0f}%). "
                    + ("No method has a top direction as new as a random one: here fine-tuning turns W0's directions "
                       "rather than adding new ones. " if max(mid[x["label"]] for x in runs) < 0.05 else ""))
        m = sm.get("mitigation")
        if m and m.get("intruders") == 0:
            text += (f"The paper's mitigation scales LoRA's intruders at ε = {m['eps']:g} by λ = {m['lam']:g}; here "
                     f"LoRA has none at that ε, so it changes nothing (test accuracy {m['test_before']:.3f}, "
                     f"forgetting {m['forgetting_before']:+.3f} nats).")
        elif m:
            scaled = f" ({m['intruders']} of them)" if m.get("intruders") else ""
            text += (f"The paper's mitigation, LoRA's intruders at ε = {m['eps']:g}{scaled} scaled by λ = "
                     f"{m['lam']:g}, is a trade: forgetting {m['forgetting_before']:+.3f} → "
                     f"{m['forgetting_after']:+.3f} nats, test accuracy {m['test_before']:.3f} → "
                     f"{m['test_after']:.3f} ({100 * m['test_change']:+.1f} points).")
        notes["intruders.png"] = (
            "Intruders, honestly scaled",
            "The share of each method's top singular directions that the paper's Algorithm 1 calls intruders (no "
            "close match among W0's), against the threshold ε, with what random directions would score. " + text)
    f, lo = _find(results, "full"), _find(results, main)
    if f and lo:
        notes["accuracy_vs_trainable.png"] = (
            "Accuracy against what is trained",
            f"Each point is one run. LoRA r={r} trains {100 * sm['trainable_share']:.1f}% of full "
            f"fine-tuning's parameters for test accuracy {lo['test_accuracy']:.3f} against {f['test_accuracy']:.3f}.")
    else:
        notes["accuracy_vs_trainable.png"] = (
            "Accuracy against what is trained",
            "Each point is one run: "
            + "; ".join(f"{x['label']} trains {x['percent']:.2f}% of its parameters for test accuracy "
                        f"{x['test_accuracy']:.3f}" for x in results["runs"]) + ".")
    sweep = sorted((x for x in results["runs"] if x["method"] == "lora"), key=lambda x: x["rank"])
    if len(sweep) > 1:
        a, b = sweep[0], sweep[-1]
        best = max(sweep, key=lambda x: x["test_accuracy"])
        notes["rank_sweep.png"] = (
            "The rank sweep",
            f"LoRA at r = {', '.join(str(x['rank']) for x in sweep)}, "
            + ("with the same α (rsLoRA: s = α/√r)" if cfg.get("rslora") else "at the same scale s = α/r")
            + f" (the dashed lines: full fine-tuning). Test accuracy peaks at r = {best['rank']} "
            f"({best['test_accuracy']:.3f}); from r = {a['rank']} to {b['rank']} forgetting goes "
            f"{a['forgetting']:+.3f} → {b['forgetting']:+.3f} nats and "
            f"the effective rank of ΔW {a['spectral']['effective_rank_dW']:.1f} → "
            f"{b['spectral']['effective_rank_dW']:.1f}.")
    notes.update(quantization_notes(results.get("quantization")))
    out = ["## Pictures", ""]
    for name in results["plots"]:
        if name in notes:
            heading, text = notes[name]
            out += [f"### {heading}", "", f"![{heading}]({name})", "", text, ""]
    return out[:-1]


def quantization_notes(quant) -> dict:
    """The notes of the two quantisation figures (drawn when the comparison has a qlora run)."""
    if not quant:
        return {}
    sm, loss, fit = quant["summary"], quant["loss"], quant["code_fit"]
    codes = [c for c in quant["codes"] if c in sm]
    return {
        "quant_error.png": (
            "What 4 bits cost the base",
            "Left, the relative error ‖W − W̃‖/‖W‖ of every adapted matrix of the base, for each 4-bit code (blocks of "
            f"{quant['block']}, no double quantisation): on average "
            + ", ".join(f"{c} {100 * sm[c]['rel_error_mean']:.1f}%" for c in codes)
            + ". Right, the change of the held-out loss when every adapted W is replaced by its 4-bit version, "
            f"before any fine-tuning ({loss['tokens']:,} tokens, ± one standard error over windows): "
            + ", ".join(f"{c} {loss['quantised'][c]['delta']:+.4f}" for c in codes)
            + f" nats on the float base's {loss['float']:.4f}."),
        "quant_levels.png": (
            "Why NormalFloat",
            f"Each weight of {fit['matrix']} divided by the absmax of its block, x/c: what a 4-bit code has to "
            "represent. The values crowd near 0, as for Gaussian weights (the black line); each code's levels are "
            "the vertical lines, with the share of weights rounded to each above it. Levels inside the middle 90% "
            "of the values: " + ", ".join(f"{c} {fit['codes'][c]['levels_in_middle_90']}" for c in codes if c in
                                          fit["codes"])
            + ". " + _fit_verdict(fit, sm, codes)),
    }


def _fit_verdict(fit, sm, codes) -> str:
    """What the level counts and errors of this run say about NF4, in words that follow the numbers."""
    if "nf4" not in codes or "nf4" not in fit["codes"]:
        return ""
    even = max(codes, key=lambda c: fit["codes"][c]["entropy_bits"] if c in fit["codes"] else -1)
    best = min(codes, key=lambda c: sm[c]["rel_error_mean"])
    if even == best == "nf4":
        return "NF4 puts its levels where the weights are, so it uses them most evenly and errs least."
    return (f"Here {even} uses its levels most evenly and {best} errs least (level entropy and mean error in "
            "results.json).")
