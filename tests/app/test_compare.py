"""`minift compare --quick` end to end: the report's contents, not just the exit code."""
import json

import numpy as np
import pytest

from minift.app.cli import main
from minift.base import shipped_base_dir

pytestmark = pytest.mark.skipif(not shipped_base_dir().is_dir(), reason="the shipped base model is missing")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    rc = main(["compare", "--quick", "--methods", "full,lora,qlora,head", "--ranks", "2", "--lora-lr", "1.5e-3",
               "--lora-head-lr", "5e-4", "--seeds", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def run(results, label):
    return next(r for r in results["runs"] if r["label"] == label)


def test_every_method_and_the_sweep_ran(report):
    _, results = report
    assert [r["label"] for r in results["runs"]] == ["full", "lora r=8", "qlora r=8 (nf4)", "head", "lora r=2"]


def test_learning_rates_reach_each_run(report):
    """--lora-lr / --lora-head-lr set the LoRA runs' two rates; the other methods keep finetune's defaults."""
    _, results = report
    for r in results["runs"]:
        want = {"full": (1e-3, 1e-3), "head": (1e-2, 1e-2)}.get(r["method"], (1.5e-3, 5e-4))
        assert (r["lr"], r["head_lr"]) == want, r["label"]


def test_every_run_is_repeated_over_the_extra_seeds(report):
    out, results = report
    spread = results["seeds"]
    assert spread["seeds"] == [0, 1]
    assert set(spread["runs"]) == {r["label"] for r in results["runs"]}
    for r in results["runs"]:
        v = spread["runs"][r["label"]]
        assert all(len(v[k]) == 2 for k in ("val_accuracy", "test_accuracy", "forgetting", "intruders"))
        assert v["test_accuracy"][0] == r["test_accuracy"]            # the first seed is the table's run
    assert spread["runs"]["head"]["forgetting"] == [0.0, 0.0]
    assert spread["runs"]["lora r=8"]["forgetting"][1] != spread["runs"]["lora r=8"]["forgetting"][0]
    text = (out / "report.md").read_text()
    assert "Over seeds 0, 1" in text and "test acc, seed 1" in text


def test_trainable_counts_follow_the_formulas(report):
    _, results = report
    cfg = results["base_config"]
    C, L, K = cfg["n_embd"], cfg["n_layer"], 2
    per_block = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]          # c_attn, attn.c_proj, c_fc, mlp.c_proj
    for r in (8, 2):
        lora = run(results, f"lora r={r}")
        assert lora["trainable"] == L * sum(r * (i + o) for i, o in per_block) + K * C   # adapters + score head
    assert run(results, "head")["trainable"] == K * C
    full = run(results, "full")
    assert full["trainable"] == full["total"]


def test_memory_measured_agrees_with_prediction_and_lora_saves(report):
    _, results = report
    for r in results["runs"]:
        m, p = r["memory"]["measured"], r["memory"]["predicted"]
        assert abs(m["total"] - p["total"]) / m["total"] < 0.10, r["label"]
    full, lora = run(results, "full"), run(results, "lora r=8")
    assert lora["memory"]["measured"]["optimizer"] < 0.1 * full["memory"]["measured"]["optimizer"]
    assert lora["saved_bytes"] < 0.2 * full["saved_bytes"]


def test_forgetting_is_zero_when_the_body_is_frozen(report):
    _, results = report
    assert run(results, "head")["forgetting"] == 0.0          # head-only leaves the LM path bitwise untouched
    assert run(results, "full")["forgetting"] != 0.0
    out, _ = report                                           # what the forgetting text was, in the report too
    assert results["forgetting_text"].startswith("held-out world text (documents from another seed")
    assert results["forgetting_text"] in (out / "report.md").read_text()


def test_spectral_measurements(report):
    _, results = report
    lora, full = run(results, "lora r=2"), run(results, "full")
    assert lora["spectral"]["matrices"] == 16 and len(lora["spectral"]["intruders"]) == len(lora["spectral"]["eps"])
    assert 0 < lora["spectral"]["effective_rank_dW"] <= 2 + 1e-6      # ΔW = s·AᵀBᵀ has rank ≤ r
    assert full["spectral"]["effective_rank_dW"] > 2
    assert "mitigation" in run(results, "lora r=8")


def test_report_reads_the_claims_and_has_plots(report):
    out, results = report
    text = (out / "report.md").read_text()
    assert "| method | trainable" in text and "quick mode" in text
    for claim in ("90% fewer parameters", "~70% less time", "~80% less memory", "comparable accuracy",
                  "overfits less on small data"):
        assert claim in text
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["cpu_per_wall"] > 0


def test_every_figure_is_written_and_explained(report):
    """The quick run has full, LoRA, QLoRA, head-only and a sweep: every figure has its data, is drawn, and report.md
    shows it with its note."""
    from minift.app.figures import FIGURES
    out, results = report
    text = (out / "report.md").read_text()
    assert results["plots"] == list(FIGURES)
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name
        assert f"]({name})" in text, name
    assert text.count("### ") == len(FIGURES)


def _numbers(obj):
    """Every number in a JSON value, nested."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_the_pictures_notes_quote_only_numbers_from_results_json(report):
    """No number in report.md's picture notes is typed or worked out on the way: each is one of results.json's
    summary, configuration or per-run scalars (not the thousands of losses and singular values, among which almost
    any short number would be found) as printed (at some precision, or as a percentage), or one of the few constants
    the notes state (the 10–90% band, §7)."""
    import re
    out, results = report
    notes = (out / "report.md").read_text().split("## Pictures", 1)[1]
    notes = re.sub(r"\(([a-z_]+\.png)\)|r=\d+|r = \d+", "", notes)        # file names; ranks are config numbers too
    notes = re.sub(r"(?<=\d),(?=\d{3})", "", notes)                      # 1,024 is the number 1024
    printed = {"10", "90", "7"}
    sources = _numbers(results["summary"]) + _numbers(results["config"]) + [results["base_lm_loss"]]
    q = results["quantization"]                       # the quantisation figures' notes: its summary, loss and fit
    sources += _numbers(q["summary"]) + _numbers(q["loss"]) + [q["block"]]
    sources += [c["levels_in_middle_90"] for c in q["code_fit"]["codes"].values()]
    for r in results["runs"]:
        sources += [v for v in r.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        sources += [r["spectral"]["effective_rank_dW"]] + [e["step"] for e in r["evals"]]
    for v in sources:
        for d in range(5):
            printed |= {f"{v:.{d}f}", f"{100 * v:.{d}f}", f"{abs(v):.{d}f}", f"{100 * abs(v):.{d}f}"}
        printed.add(f"{v:g}")
    quoted = re.findall(r"(?<![\w.])\d+(?:\.\d+)?", notes)
    assert quoted and all(q in printed for q in quoted), [q for q in quoted if q not in printed]
    sm = results["summary"]
    assert f"{sm['similarity']['mean']:.2f}" in notes and f"{sm['similarity']['random']:.3f}" in notes
    assert f"{100 * sm['updates']['full']['rel_norm_mean']:.1f}%" in notes
    m = sm["mitigation"]
    if m["intruders"]:                                     # a trade, both numbers
        assert f"{m['test_before']:.3f} → {m['test_after']:.3f}" in notes
    else:                                                  # nothing to scale: nothing changed
        assert f"so it changes nothing (test accuracy {m['test_before']:.3f}" in notes


def test_each_run_is_evaluated_along_the_way(report):
    """The training figure's validation points: every ceil(steps / EVALS) steps and at the end, at most EVALS of
    them (--quick's 8 steps: 2, 4, 6, 8), not timed as steps."""
    from minift.app.compare import EVALS, eval_every
    _, results = report
    steps = results["config"]["steps"]
    for r in results["runs"]:
        assert [e["step"] for e in r["evals"]] == [2, 4, 6, 8] == list(range(eval_every(steps), steps + 1, 2))
        assert r["evals"][-1]["val_accuracy"] == r["val_accuracy"] and len(r["losses"]) == steps
    for steps in (1, 5, 6, 7, 8, 13, 600, 601, 605):         # the evaluations train() runs: every n-th, and the last
        n = eval_every(steps)
        assert len(set(range(n, steps + 1, n)) | {steps}) <= EVALS, steps


def test_the_update_measurements(report):
    """Per matrix: LoRA's ΔW has rank ≤ r (its singular values past r are rounding), full's does not; the
    similarity of full's and LoRA's updates lies between 0 and 1 with its random expectation k/d beside it."""
    _, results = report
    for label, r in (("lora r=8", 8), ("lora r=2", 2)):
        for u in run(results, label)["updates"]:
            s = u["singular_values"]
            assert s[r] < 1e-4 * s[0] and u["eff_rank"] <= r + 1e-3, (label, u["name"])   # (+ float32 rounding)
    full = run(results, "full")["updates"]
    assert len(full) == 16 and all(u["singular_values"][8] > 1e-3 * u["singular_values"][0] for u in full)
    assert all(u["rel_norm"] == 0 for u in run(results, "head")["updates"])
    sim = results["similarity"]
    assert (sim["a"], sim["b"], sim["k"]) == ("full", "lora r=8", 8) and len(sim["rows"]) == 16
    d = results["base_config"]["n_embd"]
    assert all(0 < row["similarity"] <= 1 for row in sim["rows"])
    out = {"attn.c_attn": 3 * d, "attn.c_proj": d, "mlp.c_fc": 4 * d, "mlp.c_proj": d}      # output dims
    assert all(row["random"] == 8 / out[row["module"]] for row in sim["rows"])


def test_figures_follow_what_the_run_has(report, tmp_path):
    """Without full fine-tuning there is nothing to compare LoRA's update with: no similarity figure, and the
    others still drawn; without a sweep, no rank-sweep figure."""
    from minift.app.figures import write_figures
    from minift.app.report import summarize, write_report
    _, results = report
    only = {**results, "runs": [r for r in results["runs"] if r["label"] in ("lora r=8", "head")],
            "similarity": None}
    only["summary"] = summarize(only)
    only["plots"] = write_figures(only, tmp_path)
    assert "similarity.png" not in only["plots"] and "rank_sweep.png" not in only["plots"]
    assert {"training.png", "update_by_layer.png", "intruders.png"} <= set(only["plots"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(only["plots"])
    text = write_report(only)
    assert "### Are the two solutions alike?" not in text
    assert text.count("### ") == len(only["plots"])                 # every figure drawn is shown and explained
    assert all(f"]({name})" in text for name in only["plots"])


def test_every_figure_drawn_is_explained_without_the_main_pair(report, tmp_path):
    """--methods full,freeze (or LoRA only at another rank) draws the update figures and the accuracy plot too:
    report.md shows each with a note from the run's numbers, not only when full and the main LoRA both ran."""
    from minift.app.figures import write_figures
    from minift.app.report import summarize, write_report
    _, results = report
    pair = {**results, "runs": [r for r in results["runs"] if r["label"] in ("full", "lora r=2")],
            "similarity": None}
    pair["summary"] = summarize(pair)
    pair["plots"] = write_figures(pair, tmp_path)
    assert {"update_by_layer.png", "update_spectra.png", "accuracy_vs_trainable.png"} <= set(pair["plots"])
    text = write_report(pair)
    assert text.count("### ") == len(pair["plots"]) and all(f"]({name})" in text for name in pair["plots"])
    up = pair["summary"]["updates"]["full"]                   # the figure shows --methods' runs, the sweep its own
    assert f"full moved its matrices by {100 * up['rel_norm_mean']:.1f}% on average" in text
    assert "lora r=2 moved" not in text


def test_the_spectra_summarise_the_matrices_a_method_changed(report):
    """freeze leaves half its blocks alone: their ΔW = 0 is no spectrum, so the median of the energy share (and the
    spectra figure) is over the matrices it changed, not pulled down by zeros."""
    from minift.app.report import changed_updates, energy_in_top, summarize
    _, results = report
    full = run(results, "full")
    half = [dict(u, rel_norm=0.0, eff_rank=0.0, singular_values=[0.0] * len(u["singular_values"]))
            if u["block"] < 2 else u for u in full["updates"]]
    frozen = {**full, "label": "freeze", "method": "freeze", "updates": half}
    sm = summarize({**results, "runs": [full, frozen], "similarity": None})
    assert len(changed_updates(frozen)) == 8 and sm["updates"]["freeze"]["changed"] == 8
    want = float(np.median([energy_in_top(u["singular_values"], 8) for u in half if u["block"] >= 2]))
    assert sm["updates"]["freeze"]["energy_top_r"] == want > 0.1


def test_the_band_of_eps_brackets_the_rise_of_random_directions():
    """The band is where random directions go from rarely (≤ 5%) to nearly always (≥ 95%) counted: the grid points
    on either side of the rise, so the whole rise is inside (not only the points that fall within it), and two
    neighbours when the rise falls between them. No rise in the sweep: no band."""
    from minift.app.report import intruder_range
    eps = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35]

    def band(*shares):
        return intruder_range(dict(eps=eps, random_baseline=[100 * f for f in shares], possible=100))
    assert band(0.01, 0.40, 0.51, 0.76, 0.97, 1.0) == (0.1, 0.3)      # the quick run's sweep at the demo's width
    assert band(0.0, 0.0, 0.02, 1.0, 1.0, 1.0) == (0.2, 0.25)          # the rise between two grid points
    assert band(0.3, 0.6, 0.99, 1.0, 1.0, 1.0) == (0.1, 0.2)           # already risen at the first ε: from there
    assert band(0.0, 0.0, 0.0, 0.01, 0.02, 0.03) is None
    assert band(0.96, 0.97, 0.98, 1.0, 1.0, 1.0) is None


def test_the_notes_say_what_the_band_and_the_mitigation_did(report):
    """The intruder note quotes random's share at both ends of the band; a mitigation that found no intruder at its
    ε changed nothing, and is not called a trade; one that did says how many it scaled. DoRA's updates are not said
    to be held to rank r."""
    from minift.app.report import picture_notes, summarize
    _, results = report
    sm = results["summary"]
    text = "\n".join(picture_notes(results))
    lo, hi = sm["intruder_ends"]
    assert f"({100 * lo:.0f}% and {100 * hi:.0f}% of them)" in text and lo <= 0.05 and hi >= 0.95
    lora = run(results, "lora r=8")
    i = lora["spectral"]["eps"].index(lora["mitigation"]["eps"])
    for count in (0, 3):
        counts = list(lora["spectral"]["intruders"])
        counts[i] = count
        runs = [dict(r, spectral=dict(r["spectral"], intruders=counts)) if r is lora else r for r in results["runs"]]
        changed = {**results, "runs": runs}
        changed["summary"] = summarize(changed)
        note = "\n".join(picture_notes(changed))
        assert changed["summary"]["mitigation"]["intruders"] == count
        assert ("so it changes nothing" in note) == (count == 0) and ("is a trade" in note) == (count > 0)
        assert (f"({count} of them)" in note) == (count > 0)
    label = "lora r=8 (DoRA)"                                  # what compare calls the main run with --dora
    dora = {**results, "config": dict(results["config"], dora=True),
            "runs": [dict(r, label=label) if r["label"] == "lora r=8" else r for r in results["runs"]]}
    dora["summary"] = summarize(dora)
    text = "\n".join(picture_notes(dora))
    assert "### Where the update lives, layer by layer" in text and "LoRA r=8 by" in text
    assert "stay at or below r" not in text and "not held to r = 8" in text



def test_the_claims_name_the_run_they_are_missing():
    """--methods full --ranks 2,4 has LoRA runs, but not the main rank the claims are read at: say which."""
    from minift.app.report import claims
    cfg = {"rank": 8}
    full, r2 = {"label": "full", "method": "full"}, {"label": "lora r=2", "method": "lora"}
    only_sweep = claims({"config": cfg, "runs": [full, r2]})
    assert only_sweep == ["The claims compare full fine-tuning with LoRA at r=8, and this run has no LoRA at the "
                          "main rank r=8 (--rank): add the missing method to --methods to check them."]
    assert "has no full fine-tuning" in claims({"config": cfg, "runs": [r2, {"label": "lora r=8"}]})[0]


def test_the_small_data_claim_is_not_judged_when_neither_method_overfits():
    """Both validation-minus-train gaps ≤ 0: there is no overfitting to compare, so no verdict either way."""
    from minift.app.report import claims

    def row(label, val, train):
        return {"label": label, "trainable": 10, "ms_per_step": 1.0, "test_accuracy": 0.5,
                "memory": {"measured": {"total": 1}}, "val_loss": val, "final_train_loss": train}
    cfg = {"rank": 8, "train_size": 64}
    said = claims({"config": cfg, "runs": [row("full", 0.5, 0.6), row("lora r=8", 0.5, 0.55)]})[-1]
    assert "Neither method overfits here" in said and "Held" not in said and "Did not hold" not in said
    said = claims({"config": cfg, "runs": [row("full", 2.0, 0.1), row("lora r=8", 1.0, 0.1)]})[-1]
    assert "Held here, by the loss gap" in said

def test_the_default_methods_follow_the_task(monkeypatch, capsys, tmp_path):
    """head-only needs a classification task, so a generation task compares full fine-tuning and LoRA."""
    import minift.app.compare
    from minift.errors import MiniftError
    seen = []

    def stop(ccfg, **_):
        seen.append(ccfg.methods)
        raise MiniftError("stopped by the test")
    monkeypatch.setattr(minift.app.compare, "compare", stop)
    for task in ("sentiment", "facts"):
        assert main(["compare", "--task", task, "--quick", "--out", str(tmp_path / task)]) == 1
    assert seen == [("full", "lora", "head"), ("full", "lora")]
    assert main(["compare", "--ranks", "4,4", "--out", str(tmp_path / "r"), "--quick"]) == 1
    assert "--ranks 4,4: a rank is named twice" in capsys.readouterr().err


def test_quick_trains_on_a_small_task_whole(tmp_path):
    """--quick's budget caps training at 64 examples; a smaller task is used whole, not refused for its size."""
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    assert main(["compare", "--quick", "--quiet", "--methods", "head", "--task", str(path),
                 "--out", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["config"]["train_size"] == 32


def test_inconsistent_options_are_one_line_errors(capsys, tmp_path):
    assert main(["compare", "--methods", "full,nope", "--out", str(tmp_path), "--quick"]) == 1
    assert "each must be one of" in capsys.readouterr().err
    assert main(["finetune", "--method", "full", "--rank", "4", "--out", str(tmp_path)]) == 1
    assert "LoRA options" in capsys.readouterr().err
    assert main(["compare", "--seeds", "0,1", "--out", str(tmp_path), "--quick"]) == 1
    assert "must differ" in capsys.readouterr().err


def test_a_stopped_comparison_resumes_to_the_same_results(tmp_path, monkeypatch, capsys):
    from minift.data.sources import ClassificationSource
    from helpers import signal_at_batch
    run = ["compare", "--quick", "--methods", "head,lora", "--quiet"]
    assert main(run + ["--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as m:      # head: 8 steps + 1 batch for the memory measurement; then LoRA's 4th step
        signal_at_batch(m, ClassificationSource, at=12)
        assert main(run + ["--out", str(tmp_path / "stopped")]) == 130
    assert "after 4 steps" in capsys.readouterr().err
    assert not (tmp_path / "stopped" / "results.json").exists()
    assert main(run + ["--out", str(tmp_path / "stopped")]) == 1              # not without --resume or --overwrite
    assert main(run + ["--out", str(tmp_path / "stopped"), "--resume"]) == 0
    straight, resumed = (json.loads((tmp_path / d / "results.json").read_text())["runs"]
                         for d in ("straight", "stopped"))
    for a, b in zip(straight, resumed):
        for key in ("label", "val_accuracy", "test_accuracy", "losses", "forgetting", "spectral", "saved_bytes"):
            assert a[key] == b[key], (a["label"], key)


def test_every_runs_input_is_checked_before_the_first_one_trains(tmp_path, capsys):
    """A bad option for the second method must not cost the first method's training, nor leave its files."""
    assert main(["compare", "--quick", "--quiet", "--alpha", "0", "--out", str(tmp_path / "a")]) == 1
    assert "alpha" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["compare", "--quick", "--quiet", "--task", "facts", "--methods", "full,lora,head",
                 "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "--methods full,lora,head: method 'head'" in err and not (tmp_path / "b").exists()


def test_a_dora_comparison_says_so_and_predicts_its_memory(tmp_path):
    """The variant is named in every table, the rank bound LoRA has is not claimed for DoRA, and the memory
    prediction counts DoRA's magnitudes and cached z = x_d V (the plain-LoRA formula was 20% low)."""
    from minift.app.compare import CompareConfig, compare
    results = compare(CompareConfig.quick_config(methods=("full", "lora"), dora=True, rslora=True), out=tmp_path,
                      progress=False)
    label = "lora r=8 (rsLoRA, DoRA)"
    assert [r["label"] for r in results["runs"]] == ["full", label]
    report = (tmp_path / "report.md").read_text()
    assert f"| {label} |" in report and "not bounded by r" in report and "at most r =" not in report
    mem = results["runs"][1]["memory"]
    assert abs(mem["measured"]["total"] - mem["predicted"]["total"]) < 0.02 * mem["predicted"]["total"]
    assert (tmp_path / "lorar8").is_dir()


def test_the_time_claim_warns_when_the_machine_was_busy():
    from minift.app.report import busy_note
    assert busy_note({"cpu_per_wall": 1.6}) == busy_note({"cpu_per_wall": 0.95}) == ""
    assert busy_note({}) == busy_note({"cpu_per_wall": None}) == ""                # results from before the field
    note = busy_note({"cpu_per_wall": 0.43})
    assert "machine was busy" in note and "0.43 CPU seconds per second" in note


def test_the_matrices_compare_measures_follow_its_lora_targets():
    from minift import GPT, GPTConfig
    from minift.app.compare import CompareConfig, _modules
    from minift.measure.analysis import linear_weight_names
    params = GPT(GPTConfig.preset("tiny"), seed=0).params
    every = linear_weight_names(params, _modules(CompareConfig.quick_config()))      # all-linear: 4 per block
    only = linear_weight_names(params, _modules(CompareConfig.quick_config(targets="c_attn")))
    assert len(every) == 8 and only == ["h.0.attn.c_attn.weight", "h.1.attn.c_attn.weight"]


def test_a_similarity_with_no_matrix_both_changed_is_not_summarised(report):
    """Every row "no update" (nan in the run, null once read back from JSON): no mean to quote, no figure drawn."""
    from minift.app.figures import drawable
    from minift.app.report import summarize
    _, results = report
    for missing in (float("nan"), None):
        sim = dict(results["similarity"], rows=[dict(r, similarity=missing) for r in results["similarity"]["rows"]])
        changed = {**results, "similarity": sim}
        changed["summary"] = summarize(changed)
        assert "similarity" not in changed["summary"] and "similarity.png" not in drawable(changed)


def test_a_sweep_without_the_main_methods_draws_what_it_has(report, tmp_path):
    """--methods head --ranks 2: head-only changes no matrix and the sweep has its own figure, so the update
    figures (which show --methods' runs) have nothing to draw; they are left out instead of failing on no column."""
    from minift.app.figures import write_figures
    from minift.app.report import summarize, write_report
    _, results = report
    sweep = {**results, "runs": [r for r in results["runs"] if r["label"] in ("head", "lora r=2")], "similarity": None}
    sweep["summary"] = summarize(sweep)
    sweep["plots"] = write_figures(sweep, tmp_path)
    assert "update_by_layer.png" not in sweep["plots"] and "update_spectra.png" not in sweep["plots"]
    assert {"training.png", "intruders.png", "accuracy_vs_trainable.png"} <= set(sweep["plots"])
    assert write_report(sweep).count("### ") == len(sweep["plots"])


def test_drawing_the_figures_leaves_pyplot_alone(report, tmp_path):
    """The report's figures come from matplotlib's object API: the backend stays what it was and no figure is left
    open, so a notebook that runs compare() still shows its own figures inline afterwards."""
    import matplotlib
    import matplotlib.pyplot as plt
    from minift.app.figures import write_figures
    _, results = report
    backend, open_before = matplotlib.get_backend(), plt.get_fignums()
    assert write_figures(results, tmp_path)
    assert matplotlib.get_backend() == backend and plt.get_fignums() == open_before


def test_the_qlora_run_keeps_its_base_in_4_bits_and_says_what_it_cost(report):
    """QLoRA trains what LoRA trains, holds less (its adapted weights in 4 bits), saves only its adapter, and the
    report's QLoRA section quotes its memory, time and the base's quantisation error from results.json."""
    out, results = report
    q, lora, full = run(results, "qlora r=8 (nf4)"), run(results, "lora r=8"), run(results, "full")
    assert (q["trainable"], q["total"]) == (lora["trainable"], lora["total"])
    assert q["memory"]["measured"]["parameters"] < 0.5 * lora["memory"]["measured"]["parameters"]
    assert q["memory"]["measured"]["total"] < lora["memory"]["measured"]["total"]
    assert abs(q["saved_bytes"] - lora["saved_bytes"]) < 100        # the same tensors; its config says "nf4"
    assert (out / "qlorar8" / "adapter").is_dir()
    assert 0 < q["spectral"]["effective_rank_dW"] <= 8 + 1e-9      # its update s·BA, analysed on the float W0
    quant = results["quantization"]
    assert quant["summary"]["nf4"]["rel_error_mean"] < quant["summary"]["int4"]["rel_error_mean"]
    text = (out / "report.md").read_text()
    section = text.split("## QLoRA: the same adapters on a 4-bit base", 1)[1].split("\n## ", 1)[0]
    less = 1 - q["memory"]["measured"]["total"] / full["memory"]["measured"]["total"]
    assert f"{100 * less:.0f}% less than full fine-tuning's" in section
    assert f"{q['ms_per_step']:.0f} vs LoRA's {lora['ms_per_step']:.0f} ms per step" in section
    w, rows = q["workers"], results["config"]["batch_size"]         # each piece of the batch dequantises twice
    pieces = min(2 * w, rows) if w > 1 else 1
    assert f"{2 * pieces} times a step here" in section
    assert f"{100 * quant['summary']['nf4']['rel_error_mean']:.1f}% on average" in section
    assert f"{quant['loss']['quantised']['nf4']['delta']:+.4f}" in section


def test_qlora_options_need_a_qlora_run(capsys, tmp_path):
    for argv in (["--quant", "int4"], ["--double-quant"]):
        assert main(["compare", "--quick", "--methods", "full,lora", *argv, "--out", str(tmp_path / "x")]) == 1
        assert "runs no QLoRA (add qlora)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_report_says_where_the_memory_claim_holds(report):
    """results.json keeps the predicted tables for this base and GPT-2's size; report.md prints each saving."""
    out, results = report
    tables = results["memory_claim"]
    assert [t["model"]["n_embd"] for t in tables] == [results["base_config"]["n_embd"], 768]
    text = (out / "report.md").read_text().split('## Where "~80% less memory" holds', 1)[1].split("\n## ", 1)[0]
    for t in tables:
        for r in t["rows"]:
            assert f"{r['batch']} x {r['seq']}" in text
            assert f"{r['saving']['lora']:.1%}" in text and f"{r['saving']['qlora']:.1%}" in text
