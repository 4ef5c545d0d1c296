"""The pictures of `minift compare`'s report, drawn with matplotlib alone.

One style everywhere: each method keeps its colour in every figure (`colour`), the random-direction expectation is
always a black dashed line, titles say what this run shows, axes carry units. Every number a title quotes comes
from results["summary"] (report.summarize), which results.json keeps, so figures, report.md and the file agree.
"""
from __future__ import annotations

import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..formats.io import atomic_write
from ..measure.quant_error import variant_key
from .report import _find, _main_lora, changed_updates, smooth

FIGURES = ("training.png", "update_by_layer.png", "update_spectra.png", "similarity.png", "intruders.png",
           "accuracy_vs_trainable.png", "rank_sweep.png", "quant_error.png", "quant_levels.png")
OLD_FIGURES = ("loss_curves.png", "spectra.png", "intruders_vs_eps.png")   # earlier versions' names, still minift's

COLOURS = {"full": "#1f5fa8", "lora": "#e8710a", "qlora": "#8e44ad", "head": "#7a7a7a", "freeze": "#2e8b57"}
RANDOM = dict(color="black", ls="--", lw=1.2, label="random directions")
STYLE = {"font.size": 10, "axes.titlesize": 10.5, "figure.titlesize": 11.5, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False,
         "legend.fontsize": 9, "savefig.dpi": 130, "figure.constrained_layout.use": True}


def colour(run, main_rank) -> str:
    """The method's colour; a swept LoRA rank gets a lighter or darker orange than the main one."""
    if run["method"] != "lora" or run["rank"] == main_rank:
        return COLOURS[run["method"]]
    import matplotlib
    shade = 0.35 + 0.6 * min(1.0, np.log2(run["rank"]) / 7)            # r = 1 light ... r = 128 dark
    return matplotlib.colors.to_hex(matplotlib.colormaps["Oranges"](shade))


class _Figures:
    """Figures from matplotlib's object API, without pyplot: no backend is switched and no figure is registered, so
    a notebook that runs compare() keeps showing its own figures inline."""

    @staticmethod
    def subplots(nrows=1, ncols=1, figsize=None, **kw):
        from matplotlib.figure import Figure
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kw)


@contextmanager
def _figures():
    import matplotlib
    with matplotlib.rc_context(STYLE):
        yield _Figures()


def _main_runs(results) -> list:
    """The runs of --methods (full, freeze, head, LoRA at the main rank): the rank sweep has its own figure."""
    main = _main_lora(results["config"])
    return [r for r in results["runs"] if r["method"] != "lora" or r["label"] == main]


def _wrap(text: str, width=78) -> str:
    """A title in lines of at most `width` characters (a title says a finding, which can take two lines)."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _pct(x) -> str:
    return f"{100 * x:.0f}%"


# ---- 1. training ---------------------------------------------------------------------------------------------------

def training(figs, results):
    sm, runs = results["summary"], _main_runs(results)
    fig, (loss, acc) = figs.subplots(1, 2, figsize=(10, 3.8))
    for r in runs:
        c = colour(r, sm["rank"])
        steps = np.arange(1, len(r["losses"]) + 1)
        loss.plot(steps, r["losses"], color=c, lw=0.6, alpha=0.25)
        loss.plot(steps, smooth(r["losses"]), color=c, lw=2, label=r["label"])
        ev = r.get("evals") or []
        acc.plot([e["step"] for e in ev], [e["val_accuracy"] for e in ev], "o-", color=c, label=r["label"])
    loss.set(xlabel="step", ylabel="training loss (nats per token)",
             title=f"Training loss (faint: each step; bold: mean of the last {sm['smooth_steps']})")
    acc.set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy at each evaluation", ylim=(0, 1.02))
    acc.legend(loc="lower right")
    said = ", ".join(f"{r['label']} {sm['training'][r['label']]['val_accuracy']:.3f}" for r in runs)
    fig.suptitle(_wrap(f"After {len(runs[0]['losses'])} steps, validation accuracy: {said}", 100))
    return fig


# ---- 2. where the update lives, layer by layer ---------------------------------------------------------------------

def _grid(run, key):
    """(blocks × linears) array of one per-matrix measurement, and the linears' names."""
    ups = run["updates"]
    modules = list(dict.fromkeys(u["module"] for u in ups))
    a = np.full((max(u["block"] for u in ups) + 1, len(modules)), np.nan)
    for u in ups:
        a[u["block"], modules.index(u["module"])] = u[key]
    return a, modules


def _heatmap(ax, a, modules, vmax, fmt, cmap):
    im = ax.imshow(a, vmin=0, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set(xticks=range(len(modules)), xticklabels=modules, yticks=range(a.shape[0]),
           yticklabels=[f"block {b}" for b in range(a.shape[0])])
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(False)
    for (i, j), v in np.ndenumerate(a):
        if np.isfinite(v):
            r, g, b, _ = im.cmap(im.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5              # the cell's luminance
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    return im


def update_by_layer(figs, results):
    sm = results["summary"]
    runs = [r for r in _main_runs(results) if r["label"] in sm["updates"]]
    fig, axes = figs.subplots(2, len(runs), figsize=(3.4 * len(runs) + 1, 6.4), squeeze=False)
    from matplotlib.ticker import PercentFormatter
    rows = (("rel_norm", "‖ΔW‖ / ‖W0‖", lambda v: f"{100 * v:.1f}%", "Blues", PercentFormatter(1.0)),
            ("eff_rank", "effective rank of ΔW", lambda v: f"{v:.1f}", "Purples", None))
    for i, (key, what, fmt, cmap, ticks) in enumerate(rows):
        grids = [_grid(r, key) for r in runs]
        vmax = max(float(np.nanmax(g)) for g, _ in grids) or 1.0
        for j, (r, (g, modules)) in enumerate(zip(runs, grids)):
            im = _heatmap(axes[i, j], g, modules, vmax, fmt, cmap)
            axes[i, j].set_title(f"{r['label']}: {what}")
        fig.colorbar(im, ax=axes[i, :].tolist(), shrink=0.85, format=ticks, label=what)
    full, lora = sm["updates"].get("full"), sm["updates"].get(_main_lora(results["config"]))
    if full and lora:
        bound = (f"DoRA's updates reach effective rank {lora['eff_rank_max']:.1f} (not held to r = {sm['rank']})"
                 if results["config"].get("dora") else
                 f"LoRA's updates have effective rank ≤ {lora['eff_rank_max']:.1f} (r = {sm['rank']})")
        title = (f"Full fine-tuning moves each matrix by {100 * full['rel_norm_mean']:.1f}% on average, "
                 f"LoRA r={sm['rank']} by {100 * lora['rel_norm_mean']:.1f}%; {bound}, full's "
                 f"{full['eff_rank_mean']:.1f} on average")
    else:
        title = "Where each method's update lives: size and effective rank of ΔW per matrix"
    fig.suptitle(_wrap(title, 90))
    return fig


# ---- 3. the spectra of the updates ---------------------------------------------------------------------------------

def update_spectra(figs, results):
    sm = results["summary"]
    runs = [r for r in _main_runs(results) if r["label"] in sm["updates"]]
    fig, ax = figs.subplots(figsize=(7, 4.2))
    top = 0.0
    for r in runs:
        n = sm["updates"][r["label"]]["max_rank"]
        s = np.array([u["singular_values"][:n] for u in changed_updates(r)])    # (matrices, n)
        lo, mid, hi = np.quantile(s, (0.1, 0.5, 0.9), axis=0)
        i = np.arange(1, n + 1)
        c = colour(r, sm["rank"])
        ax.fill_between(i, lo, hi, color=c, alpha=0.2, lw=0)
        changed = "" if len(s) == len(r["updates"]) else f" it changed, of {len(r['updates'])}"
        ax.plot(i, mid, color=c, lw=2, label=f"{r['label']} (median over {len(s)} matrices{changed}, band 10–90%)")
        top = max(top, float(hi[0]))
    ax.axvline(sm["rank"], color="black", ls=":", lw=1)
    ax.text(sm["rank"], top, f" r = {sm['rank']}", va="top", fontsize=9)
    ax.set(yscale="log", ylim=(top * 1e-4, top * 2), xlabel="index i of the singular value (largest first)",
           ylabel="σᵢ(ΔW)  (below the axis: zero up to rounding)")
    ax.legend(loc="upper right")
    full, lora = sm["updates"].get("full"), sm["updates"].get(_main_lora(results["config"]))
    if full and lora:
        ax.set_title(_wrap(f"LoRA r={sm['rank']} puts {_pct(lora['energy_top_r'])} of ‖ΔW‖² in its top {sm['rank']} "
                           f"directions, full fine-tuning {_pct(full['energy_top_r'])} (medians over matrices)", 70))
    else:
        ax.set_title("Singular values of each method's update ΔW")
    return fig


# ---- 4. are the two solutions alike? -------------------------------------------------------------------------------

def similarity(figs, results):
    sim, s = results["similarity"], results["summary"]["similarity"]
    fig, ax = figs.subplots(figsize=(6.2, 4.4))
    blocks = max(row["block"] for row in sim["rows"]) + 1
    modules = list(dict.fromkeys(row["module"] for row in sim["rows"]))
    a = np.full((blocks, len(modules)), np.nan)
    for row in sim["rows"]:
        a[row["block"], modules.index(row["module"])] = row["similarity"]
    im = _heatmap(ax, a, modules, 1.0, lambda v: f"{v:.2f}", "viridis")
    bar = fig.colorbar(im, ax=ax)
    bar.ax.axhline(s["random"], color="white", lw=2)
    bar.set_label(f"subspace similarity φ (white line: random, {s['random']:.3f})")
    ax.set_title(_wrap(f"Full fine-tuning's and LoRA's updates share {s['mean']:.2f} of their top-{s['k']} "
                       f"directions on average (two random subspaces: {s['random']:.3f}); {s['above_twice_random']} "
                       f"of {s['matrices']} matrices above twice random", 62))
    return fig


# ---- 5. intruders, honestly scaled ---------------------------------------------------------------------------------

def intruders(figs, results):
    sm, runs = results["summary"], _main_runs(results)
    eps = runs[0]["spectral"]["eps"]
    fig, ax = figs.subplots(figsize=(7, 4.2))
    for r in runs:
        ax.plot(eps, sm["intruders"][r["label"]], "o-", ms=3.5, color=colour(r, sm["rank"]), label=r["label"])
    ax.plot(eps, sm["intruders"]["random"], **RANDOM)
    k, n = runs[0]["spectral"]["k"], runs[0]["spectral"]["matrices"]
    ax.set(xlabel="ε (a top direction is an intruder when its best |cos| with W0's directions is below ε)",
           ylabel=f"share of the top-{k} directions of {n} matrices", ylim=(-0.02, 1.02))
    span = sm.get("intruder_range")
    if span:
        ax.axvspan(span[0], span[1], color="gold", alpha=0.2, lw=0, label="ε where random rises from ~0 to ~all")
        mid = sm["intruder_mid"]
        said = ", ".join(f"{r['label']} {_pct(mid[r['label']])}" for r in runs)
        ax.set_title(_wrap(f"Only ε in {span[0]:g}–{span[1]:g} tells a new direction from an old one at this width; "
                           f"at ε = {mid['eps']:g}: {said}, random {_pct(mid['random'])}", 70))
    else:
        ax.set_title("Intruder dimensions against ε, as a share of the possible")
    ax.legend(loc="center right")
    return fig


# ---- 6. accuracy against trainable parameters; 7. the rank sweep --------------------------------------------------

def accuracy_vs_trainable(figs, results):
    sm = results["summary"]
    fig, ax = figs.subplots(figsize=(6.4, 4.2))
    for r in results["runs"]:
        ax.scatter(r["trainable"], r["test_accuracy"], s=40, color=colour(r, sm["rank"]), zorder=3)
        ax.annotate(r["label"], (r["trainable"], r["test_accuracy"]), fontsize=8, xytext=(5, 4),
                    textcoords="offset points")
    ax.margins(x=0.25, y=0.1)
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="test accuracy")
    full, lora = _find(results, "full"), _find(results, _main_lora(results["config"]))
    if full and lora:
        ax.set_title(_wrap(f"LoRA r={sm['rank']}: test accuracy {lora['test_accuracy']:.3f} with "
                           f"{100 * sm['trainable_share']:.1f}% of full fine-tuning's trainable "
                           f"parameters ({full['test_accuracy']:.3f})", 62))
    else:
        ax.set_title("Test accuracy against trainable parameters")
    return fig


def rank_sweep(figs, results):
    sweep = sorted((r for r in results["runs"] if r["method"] == "lora"), key=lambda r: r["rank"])
    ranks = [r["rank"] for r in sweep]
    fig, axes = figs.subplots(1, 3, figsize=(11, 3.6))
    panels = ((lambda r: r["test_accuracy"], "test accuracy", "Test accuracy"),
              (lambda r: r["forgetting"], "Δ LM loss on pretraining text (nats)", "Forgetting"),
              (lambda r: r["spectral"]["effective_rank_dW"], "effective rank of ΔW (mean)", "Effective rank"))
    full = _find(results, "full")
    for ax, (value, ylabel, title) in zip(axes, panels):
        ax.plot(ranks, [value(r) for r in sweep], "o-", color=COLOURS["lora"], label="LoRA")
        if full:
            ax.axhline(value(full), color=COLOURS["full"], ls="--", label="full")
        ax.set(xscale="log", xlabel="rank r", ylabel=ylabel, title=title, xticks=ranks, xticklabels=ranks)
        ax.minorticks_off()
    axes[0].legend()
    a, b = sweep[0], sweep[-1]
    best = max(sweep, key=lambda r: r["test_accuracy"])
    fig.suptitle(_wrap(f"Test accuracy peaks at r = {best['rank']} ({best['test_accuracy']:.3f}); forgetting goes from "
                       f"{a['forgetting']:+.3f} nats at r = {a['rank']} to {b['forgetting']:+.3f} at r = {b['rank']}",
                       100))
    return fig


# ---- all of them ----------------------------------------------------------------------------------------------------

def drawable(results) -> list:
    """The figures this run has the data for, in FIGURES' order."""
    sm = results["summary"]
    updates = any(r["label"] in sm["updates"] for r in _main_runs(results))   # what those two draw (no sweep)
    have = {"training.png": True, "accuracy_vs_trainable.png": True,
            "update_by_layer.png": updates, "update_spectra.png": updates,
            "similarity.png": "similarity" in sm, "intruders.png": bool(sm["intruders"]),
            "rank_sweep.png": sum(r["method"] == "lora" for r in results["runs"]) > 1,
            "quant_error.png": "quantization" in results, "quant_levels.png": "quantization" in results}
    return [name for name in FIGURES if have[name]]


def write_figures(results, out: Path) -> list:
    """The PNG figures into `out`; returns their file names (empty without matplotlib). An earlier version's figures
    left in `out` (OLD_FIGURES) are removed, so the folder shows this run only."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    draw = {"training.png": training, "update_by_layer.png": update_by_layer, "update_spectra.png": update_spectra,
            "similarity.png": similarity, "intruders.png": intruders,
            "accuracy_vs_trainable.png": accuracy_vs_trainable, "rank_sweep.png": rank_sweep,
            "quant_error.png": lambda figs, r: quant_error(figs, r["quantization"]),
            "quant_levels.png": lambda figs, r: quant_levels(figs, r["quantization"])}
    names = drawable(results)
    _save({name: draw[name] for name in names}, results, out)
    for name in OLD_FIGURES:
        (out / name).unlink(missing_ok=True)
    return names


def _save(draw: dict, data, out: Path):
    """Each figure draw[name](figs, data) saved as out/name (a PNG)."""
    with _figures() as figs:
        for name, fn in draw.items():
            fig = fn(figs, data)
            with atomic_write(out / name) as f:
                fig.savefig(f, format="png")


# ---- quantisation error (issue 23): `data` is minift.measure.quant_error.quant_error_report's -----------------------

QUANT_FIGURES = ("quant_error.png", "quant_levels.png")
CODE_COLOURS = {"nf4": "#8e44ad", "int4": "#c0392b", "fp4": "#16a085"}
CODE_NAMES = {"nf4": "NF4", "int4": "int4", "fp4": "FP4"}


def _versus(data, a="nf4", b="int4") -> str:
    """What the per-matrix errors say about code a against code b, in words (both without double quantisation)."""
    rel = {c: np.array([m["errors"][c]["rel_error"] for m in data["matrices"]]) for c in (a, b)}   # (matrices,)
    cut = 1 - rel[a] / rel[b]                                       # (matrices,)  share of b's error a removes
    if (cut > 0).all():
        return (f"{CODE_NAMES[a]} reconstructs every matrix with {_pct(cut.min())}–{_pct(cut.max())} less error "
                f"than {CODE_NAMES[b]}")
    return f"{CODE_NAMES[a]} has less error than {CODE_NAMES[b]} on {int((cut > 0).sum())} of {cut.size} matrices"


def _loss_words(loss, codes) -> str:
    said = ", ".join(f"{CODE_NAMES[c]} {loss['quantised'][c]['delta']:+.4f}" for c in codes if c in loss["quantised"])
    return f"before fine-tuning the LM loss ({loss['float']:.3f} nats) changes by {said}"


def _matrix_panel(ax, data, codes):
    rows = data["matrices"]
    i = np.arange(len(rows))
    for c in codes:
        ax.plot(i, [100 * m["errors"][c]["rel_error"] for m in rows], "o-", ms=4, color=CODE_COLOURS[c],
                label=CODE_NAMES[c])
    ax.set_xticks(i, [f"h.{m['block']}.{m['module']}" for m in rows], rotation=60, ha="right", fontsize=8)
    ax.set(xlabel="adapted matrix, in model order", ylabel="‖W − W̃‖_F / ‖W‖_F  (%)", ylim=(0, None),
           title="Reconstruction error of each adapted matrix")
    ax.legend(loc="lower right", ncol=len(codes))


def _loss_panel(ax, data, codes):
    loss, ticks, labels = data["loss"]["quantised"], [], []
    for j, c in enumerate(codes):
        for k, key in enumerate(v for v in (variant_key(c, False), variant_key(c, True)) if v in loss):
            ticks.append(j + 0.38 * k)
            labels.append(CODE_NAMES[c] + key[len(c):])
            ax.bar(ticks[-1], loss[key]["delta"], width=0.34, color=CODE_COLOURS[c], alpha=1.0 - 0.45 * k,
                   hatch="//" if k else None, edgecolor="white", yerr=loss[key]["delta_se"], capsize=3)
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="Δ LM loss (nats per token)", xlabel="code (+dq: its scales double-quantised)",
           title=_wrap(f"Δ loss with every adapted W → deq(quant(W))\n({data['loss']['tokens']:,} tokens; "
                       "± one standard error over windows)", 60))


def quant_error(figs, data):
    """(a) The per-matrix reconstruction error of each code, and (when measured) the loss it costs the base."""
    codes = [c for c in data["codes"] if c in data["variants"]]
    has_loss = bool(data.get("loss"))
    fig, axes = figs.subplots(1, 2 if has_loss else 1, figsize=(11.5 if has_loss else 7, 4.4), squeeze=False,
                              gridspec_kw=dict(width_ratios=[1.7, 1]) if has_loss else None)
    _matrix_panel(axes[0, 0], data, codes)
    if has_loss:
        _loss_panel(axes[0, 1], data, codes)
    mean = ", ".join(f"{CODE_NAMES[c]} {100 * data['summary'][c]['rel_error_mean']:.1f}%" for c in codes)
    said = [_versus(data) + f" (mean ‖W − W̃‖/‖W‖: {mean})"] if {"nf4", "int4"} <= set(codes) else []
    said += [_loss_words(data["loss"], codes)] if has_loss else []
    fig.suptitle(_wrap("; ".join(said) or "4-bit reconstruction error of each adapted matrix", 110))
    return fig


def _levels_panel(ax, fit, code, centres, widths):
    u = fit["codes"][code]
    ax.bar(centres, fit["density"], width=widths, color="#bbbbbb", lw=0, label=f"x / c of {fit['matrix']}")
    ax.plot(centres, fit["gaussian_density"], color="black", lw=1.2, label="x / c of N(0, 1) blocks")
    ax.axvspan(*fit["middle_90"], color="gold", alpha=0.15, lw=0, label="middle 90% of the weights")
    top = 1.22 * max(fit["density"])
    for v, share in zip(u["levels"], u["usage"]):
        ax.axvline(v, color=CODE_COLOURS[code], lw=1.6)
        ax.text(v, top, f"{100 * share:.0f}", ha="center", va="bottom", fontsize=7, color=CODE_COLOURS[code])
    ax.plot([], [], color=CODE_COLOURS[code], lw=1.6, label=f"{CODE_NAMES[code]}'s {len(u['levels'])} levels\n"
                                                             "(number above: % of weights rounded to it)")
    g = u["gaussian_error"]
    ax.set_title(f"{CODE_NAMES[code]}: {u['levels_in_middle_90']} levels in the middle 90%, levels used with "
                 f"entropy {u['entropy_bits']:.2f} of 4 bits; on N(0, 1) blocks ‖W − W̃‖/‖W‖ = "
                 f"{100 * g['rel_error']:.1f}%", loc="left", pad=14)
    ax.set(ylabel="density (per unit of x / c)", xlim=(-1.04, 1.04), ylim=(0, top))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def quant_levels(figs, data):
    """(b) One real matrix's block-normalised weights x / c against each code's 16 levels."""
    fit = data["code_fit"]
    codes = list(fit["codes"])
    edges = np.array(fit["edges"])                                  # (bins+1,)
    centres, widths = (edges[1:] + edges[:-1]) / 2, np.diff(edges)  # (bins,), (bins,)
    fig, axes = figs.subplots(len(codes), 1, figsize=(12, 2.8 * len(codes) + 0.8), sharex=True, squeeze=False)
    for ax, code in zip(axes[:, 0], codes):
        _levels_panel(ax, fit, code, centres, widths)
    axes[-1, 0].set_xlabel(f"x / c: a weight divided by the absmax c of its block of {fit['block']} "
                           "(the spikes at ±1 are each block's absmax itself)")
    u = fit["codes"]
    inside = ", ".join(f"{CODE_NAMES[c]} {u[c]['levels_in_middle_90']} of {len(u[c]['levels'])}" for c in codes)
    busiest = ", ".join(f"{CODE_NAMES[c]}'s {100 * max(u[c]['usage']):.0f}%" for c in codes)
    fig.suptitle(_wrap(f"After absmax scaling the weights of {fit['matrix']} crowd near 0 (std {fit['std']:.2f}). "
                       f"Levels inside the middle 90% of them: {inside}; the busiest level takes {busiest} of the "
                       f"weights (used equally, each would take {_pct(1 / 16)}–{_pct(1 / 15)})", 110))
    return fig


def write_quantization_figures(data, out: Path) -> list:
    """quant_error.png and quant_levels.png into `out` from quant_error_report's data; returns their file names
    (empty without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _save(dict(zip(QUANT_FIGURES, (quant_error, quant_levels))), data, out)
    return list(QUANT_FIGURES)
