"""`minift compare`: the article's experiment, measured on your machine.

Full fine-tuning, LoRA and a head-only baseline fine-tune the same base model on the same task, with the same data
order, seed and step budget. For each run we measure what the article claims and what the MIT paper found:

    trainable parameters        count and share of the total                         article §3.2 "90% fewer"
    memory                      parameters / gradients / optimizer / activations,    article §5.1 "~80% less"
                                measured (tracemalloc) and predicted (minift.measure.memory)
    time                        ms per step and tokens/s                             article §5.1 "~70% less"
    accuracy                    validation and test (test uses held-out templates)   article §3.2 "comparable"
    forgetting                  change of the LM loss on held-out pretraining text   MIT paper §5
    intruder dimensions         Algorithm 1 on W0 + ΔW, swept over ε, against a      MIT paper §4
                                random-direction baseline
    effective rank of ΔW        Roy & Vetterli's entropy rank                        MIT paper §4
    what must be saved          full checkpoint vs adapter file                      article §2.2

QLoRA (--methods ...,qlora) is LoRA on the base stored in 4 bits (--quant, --double-quant; minift/lora/qlora.py). Its
update analysis (intruders, spectra, where the update lives) is of what it learned, ΔW = s·BA, on W0: the base's
quantisation error is not part of the update (it shows in the run's accuracy, forgetting and loss, and in
"quantization": each code's error per matrix and its effect on the held-out loss before fine-tuning,
measure/quant_error.py).

`--ranks` adds a LoRA rank sweep, which is where the paper's rank findings show. It keeps the main run's scale
s = α/r (α = 2r by default, so s = 2 at every rank); with --rslora it keeps α, and s = α/√r (sweep_alpha).

LoRA's default is r = 8 on all linear layers with α = 2r = 16 (a common choice; PEFT's default α is 8), the adapters
at lr 2e-3 and the fresh classification head at 3e-4 (finetune.DEFAULT_LR / DEFAULT_HEAD_LR): with one rate shared
by adapters and head, α = 16 stayed near chance on this small base, because a rate large enough for the adapters
makes the random head collapse (tutorial 07). The report folder gets results.json, report.md and its figures
(app/figures.py), each explained in report.md with this run's numbers.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..errors import MiniftError
from ..formats.io import atomic_write, drop_summary, save_json
from ..lora import MODEL_CARD_FILE
from ..lora.config import normalise_targets
from ..measure.analysis import (compare_updates, intruder_sweep, linear_weight_names, matrix_position,
                                random_baseline, scale_intruders, update_stats)
from ..measure.memory import measure_memory, predict_memory, saving_table
from ..measure.quant_error import quant_error_report
from ..methods import ADAPTER_METHODS, METHODS, adapter_memory_options, check_task_fits
from ..quant import Quantized
from ..training.evaluate import lm_loss, split_metrics
from ..training.finetune import FinetuneConfig, finetune, load_task_splits, setup_run
from .report import lora_label

K_TOP = 10                 # the paper's top-k singular vectors
SWEEP_EPS = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))   # ε = 0.1, 0.15, ..., 0.9: fine where random
#                           directions cross from never to always counted at the demo's width (report.intruder_range)
EVALS = 6                  # at most this many validation points per run (the training figure's curve), the last at
#                           the final step: every ceil(steps / EVALS) steps (eval_every)
QUICK_TRAIN_SIZE = 64      # --quick trains on at most this many examples
QUICK = dict(steps=8, eval_size=64, batch_size=8)      # and --quick's other settings (quick_config)


@dataclass
class CompareConfig:
    """The comparison `minift compare` runs. The defaults are that command's (the CLI reads them from here), so
    CompareConfig() is the run it makes with no options. Every planned run is checked when the config is made, by the
    FinetuneConfig and LoRAConfig it becomes (finetune_config)."""
    task: str = "sentiment"
    methods: tuple | None = None   # None: default_methods(task)
    steps: int = 600
    batch_size: int = 16
    rank: int = 8
    alpha: float | None = None     # the main rank's α (None: 2·rank, as LoRAConfig); the sweep keeps s (sweep_alpha)
    targets: str = "all-linear"
    ranks: tuple = ()              # extra LoRA ranks to sweep, at the main run's s = α/r
    rslora: bool = False
    dora: bool = False
    quant: str = "nf4"             # the qlora run's 4-bit code of the base (LoRAConfig.quant)
    double_quant: bool = False     # and whether its block scales are quantised too
    train_size: int | None = None
    eval_size: int | None = None
    base: str | None = None        # model folder (default: the shipped data/base-demo)
    preset: str | None = None      # if given, the base must have this preset's dimensions
    device: str | None = None
    seed: int = 0
    lam: float = 0.75              # intruder mitigation: scale intruders' singular values by λ
    mitigation_eps: float = 0.5
    lr: dict = field(default_factory=dict)        # method -> learning rate (else finetune.DEFAULT_LR)
    head_lr: dict = field(default_factory=dict)   # method -> the head's rate (else finetune.DEFAULT_HEAD_LR)
    quick: bool = False
    seeds: tuple = ()              # extra seeds: every run again; accuracy, forgetting, intruders over all seeds
    workers: int | str = "auto"    # >1: each batch split across CPU threads (fast/parallel.py);
                                   # "auto": where it is the fastest measured (dispatch.workers_for)

    def __post_init__(self):
        if self.methods is None:
            self.methods = default_methods(self.task)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise MiniftError(f"--methods {','.join(self.methods)}: {', '.join(map(repr, unknown)) or 'none given'}: "
                              f"each must be one of {METHODS}")
        if len(set(self.methods)) != len(self.methods):
            raise MiniftError(f"--methods {','.join(self.methods)}: a method is named twice")
        if len(set(self.ranks)) != len(self.ranks):
            raise MiniftError(f"--ranks {','.join(map(str, self.ranks))}: a rank is named twice")
        if self.seed in self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise MiniftError(f"--seeds {','.join(map(str, self.seeds))}: the extra seeds must differ from each "
                              f"other and from --seed {self.seed}")
        self.alpha = _lora_config(self, self.rank, self.alpha).alpha   # the main rank's, checked; None: LoRAConfig's 2r
        for method in self.methods:                    # every planned run's settings, checked where they are owned
            self._check_run(method, self.rank, self.alpha)
        for rank in self.ranks:
            self._check_run("lora", rank, sweep_alpha(self, rank))

    def _check_run(self, method: str, rank: int, alpha: float) -> None:
        """Make the run's FinetuneConfig (which checks its settings), and say which run a refusal is about."""
        try:
            finetune_config(self, method, rank, alpha, "classification")
        except MiniftError as e:
            raise MiniftError(f"the {run_label(self, method, rank)} run: {e}") from None

    @classmethod
    def quick_config(cls, **kw):
        """A tiny budget that still exercises every measurement (tests, CI): seconds, not minutes. QUICK's settings
        unless given, and at most QUICK_TRAIN_SIZE training examples (compare())."""
        return cls(quick=True, **{**QUICK, **kw})


def default_methods(task) -> tuple:
    """Full, LoRA and head-only (a linear probe); head-only needs a classification head, so a generation task
    compares full and LoRA."""
    from ..data import load_task
    return ("full", "lora", "head") if load_task(task, "train").type == "classification" else ("full", "lora")


# ---- one run's measurements ----------------------------------------------------------------------------------

def sweep_alpha(ccfg: CompareConfig, r: int) -> float:
    """α for rank r in the sweep. Plain LoRA keeps the main run's s = α/r (α = 2r by default, as the MIT paper ran
    it); rsLoRA keeps α itself, so s = α/√r follows its rank-stable rule (Kalajdzievski 2023)."""
    return ccfg.alpha if ccfg.rslora else ccfg.alpha / ccfg.rank * r


def _lora_config(ccfg: CompareConfig, rank: int, alpha: float, method: str = "lora"):
    from ..lora import LoRAConfig
    quant = dict(quant=ccfg.quant, double_quant=ccfg.double_quant) if method == "qlora" else {}
    return LoRAConfig(r=rank, alpha=alpha, targets=ccfg.targets, rslora=ccfg.rslora, use_dora=ccfg.dora and
                      method == "lora", **quant)


def run_label(ccfg: CompareConfig, method: str, rank: int) -> str:
    """A run's name in tables and results.json: the method, or LoRA's and QLoRA's label with rank and variant."""
    if method == "lora":
        return lora_label(rank, ccfg.rslora, ccfg.dora)
    if method == "qlora":
        return lora_label(rank, ccfg.rslora, quant=ccfg.quant, double_quant=ccfg.double_quant)
    return method


def _tuned_weights(model, lora, base) -> dict:
    """name -> the weight of every linear after tuning, as host arrays: W0 + ΔW (adapters folded in; for QLoRA on the
    float W0, lora.tuned_weights)."""
    weights = {k: to_numpy(v) for k, v in model.params.items() if not isinstance(v, Quantized)}
    if lora is not None:
        weights.update({k: to_numpy(v) for k, v in lora.tuned_weights(base.params).items()})
    return weights


def _spectral(base_w: dict, tuned_w: dict, names) -> dict:
    """Intruder counts over ε (summed over matrices) and the random baseline for the same shapes: k = K_TOP
    directions of each matrix, so `possible` = K_TOP × matrices is the most either can be."""
    counts = np.zeros(len(SWEEP_EPS), dtype=int)
    baseline = np.zeros(len(SWEEP_EPS))
    for name in names:
        W0, Wt = base_w[name], tuned_w[name]
        counts += intruder_sweep(W0, Wt, k=K_TOP, eps_values=SWEEP_EPS)["counts"]
        d_out, d_in = W0.shape[1], W0.shape[0]                     # minift's [in, out]: outputs are columns
        rb = random_baseline(d_out, k=K_TOP, trials=200, seed=0, basis_dim=min(d_out, d_in), eps_values=SWEEP_EPS)
        baseline += np.array([rb["false_intruders"][float(e)] for e in SWEEP_EPS])
    return dict(eps=list(SWEEP_EPS), intruders=counts.tolist(), random_baseline=baseline.round(2).tolist(),
                matrices=len(names), k=K_TOP, possible=K_TOP * len(names))


def _updates(base_w: dict, tuned_w: dict, names) -> list:
    """Per adapted matrix, where the update ΔW = W_tuned − W0 lives: its size relative to W0 (Frobenius norms),
    its effective rank, and its singular values (largest first)."""
    rows = []
    for name in names:
        block, module = matrix_position(name)
        u = update_stats(base_w[name], tuned_w[name])
        rows.append(dict(name=name, block=block, module=module, rel_norm=u["rel_norm"], eff_rank=u["eff_rank"],
                         singular_values=[float(f"{v:.6g}") for v in u["singular_values"]]))   # (6 digits)
    return rows


def _saved_bytes(model, lora, method, out: Path, tok) -> int:
    """What must be kept to reproduce this fine-tune on top of the base: written to disk and measured."""
    from ..formats.io import save_safetensors
    if lora is not None:                         # LoRA, QLoRA: the adapter (QLoRA quantises the float base again)
        lora.save_peft(out / "adapter")          # weights and config; its README.md (a model card) is not needed
        return sum(f.stat().st_size for f in (out / "adapter").iterdir() if f.name != MODEL_CARD_FILE)
    if method == "full":
        model.save_pretrained(out / "model", tok)        # with tokenizer.json (not counted: the base has it)
        return (out / "model" / "model.safetensors").stat().st_size
    trainable = {k: to_numpy(v) for k, v in model.trainable_params().items()}   # head / freeze: what trained
    save_safetensors(trainable, out / "trainable.safetensors")
    return (out / "trainable.safetensors").stat().st_size


def _memory(model, lora, method, ccfg, batch, head_kind, num_labels) -> dict:
    ids = batch["input_ids"]
    measured = measure_memory(model, batch)
    adapters = adapter_memory_options(lora.config) if lora is not None else {}
    predicted = predict_memory(model.cfg, method, ids.shape[0], ids.shape[1], head_kind=head_kind,
                               num_labels=num_labels, **adapters)
    keys = ("parameters", "gradients", "optimizer", "activations", "total")
    return dict(measured={k: int(measured[k]) for k in keys}, predicted={k: int(predicted[k]) for k in keys},
                batch_shape=list(ids.shape), backend=measured["backend"])


def finetune_config(ccfg: CompareConfig, method: str, rank: int, alpha: float, task_type: str) -> FinetuneConfig:
    """One run of the comparison as a fine-tune. A classification task: every method starts from a fresh head, on a
    base that is already a classifier too (head-only is a linear probe of the body; continuing a trained head would
    measure something else)."""
    return FinetuneConfig(method=method, task=ccfg.task, steps=ccfg.steps, batch_size=ccfg.batch_size,
                          lr=ccfg.lr.get(method), head_lr=ccfg.head_lr.get(method),
                          train_size=ccfg.train_size, eval_size=ccfg.eval_size, seed=ccfg.seed,
                          workers=ccfg.workers, eval_every=eval_every(ccfg.steps),   # (not timed as steps)
                          head_mode="new" if task_type == "classification" else "auto",
                          lora=_lora_config(ccfg, rank, alpha, method) if method in ADAPTER_METHODS else None)


def eval_every(steps: int) -> int:
    """Evaluate every this many steps: at most EVALS evaluations in a run of `steps`, the final one included
    (floor(steps / EVALS) would give 8 for --quick's 8 steps, and 7 for 601)."""
    return -(-steps // EVALS)


def run_one(base, tok, ccfg: CompareConfig, method: str, rank: int, alpha: float, heldout, base_lm: float,
            out: Path, progress=True, resume=False) -> tuple:
    """Fine-tune one method and measure everything in the table; returns (its row of results.json, its tuned
    weights by name). Its files go to out/<label>/ (checkpoints/ while it trains: with resume, a run stopped earlier
    continues there, and a finished one is only re-measured)."""
    from ..data.sources import task_source
    label = run_label(ccfg, method, rank)
    run_dir = out / (f"{method}r{rank}" if method in ADAPTER_METHODS else method)
    train_split, _, test_split = load_task_splits(ccfg.task, ccfg.train_size, ccfg.eval_size)
    fcfg = finetune_config(ccfg, method, rank, alpha, train_split.type)
    model, lora, s = finetune(base, tok, fcfg, progress=progress, resume=resume, checkpoints=run_dir / "checkpoints")
    batch = task_source(train_split, tok, max_len=model.cfg.n_ctx, batch_size=ccfg.batch_size,
                        seed=ccfg.seed).next_batch()
    adapted = method in ADAPTER_METHODS
    row = dict(label=label, method=method, rank=rank if adapted else None,
               alpha=alpha if adapted else None, trainable=s["trainable"], total=s["total"],
               percent=s["percent"], ms_per_step=s["ms_per_step"], tokens_per_s=s["tokens_per_s"], workers=s["workers"],
               val_accuracy=s["val_accuracy"], test_accuracy=s["test_accuracy"], final_train_loss=s["final_train_loss"],
               val_loss=s["val_loss"], lr=s["lr"], head_lr=s["head_lr"], losses=[h["loss"] for h in s["history"]],
               evals=[{k: e[k] for k in ("step", "val_accuracy", "val_loss")} for e in s["evals"]])
    row["memory"] = _memory(model, lora, method, ccfg, batch, model.head_kind, len(model.labels or []) or 2)
    row["forgetting"] = lm_loss(model, heldout, max_windows=None) - base_lm
    base_w = {k: to_numpy(v) for k, v in base.params.items()}
    tuned_w = _tuned_weights(model, lora, base)
    names = linear_weight_names(base_w, _modules(ccfg))
    row["spectral"] = _spectral(base_w, tuned_w, names)
    row["updates"] = _updates(base_w, tuned_w, names)
    row["spectral"]["effective_rank_dW"] = float(np.mean([u["eff_rank"] for u in row["updates"]])) if names else 0.0
    row["saved_bytes"] = _saved_bytes(model, lora, method, run_dir, tok)
    if method == "lora":
        row["mitigation"] = _mitigate(model, lora, base_w, tuned_w, names, ccfg, heldout, base_lm, tok, test_split)
    return row, tuned_w


def _modules(ccfg):
    return None if ccfg.targets == "all-linear" else normalise_targets(ccfg.targets)


def _mitigate(model, lora, base_w, tuned_w, names, ccfg, heldout, base_lm, tok, test_split) -> dict:
    """The paper's mitigation on LoRA's tuned weights: intruders' singular values scaled by λ."""
    lora.merge()
    fixed = model.to()                                  # a plain copy with ΔW folded into W
    lora.unmerge()
    for name in names:
        new = scale_intruders(base_w[name], tuned_w[name], k=K_TOP, eps=ccfg.mitigation_eps, lam=ccfg.lam)
        fixed.params[name][...] = fixed.xp.asarray(new)
    test = split_metrics(fixed, test_split, tok, fixed.cfg.n_ctx)
    return dict(lam=ccfg.lam, eps=ccfg.mitigation_eps, test_accuracy=test["accuracy"],
                forgetting=lm_loss(fixed, heldout, max_windows=None) - base_lm)


# ---- the whole comparison -----------------------------------------------------------------------------------

def compare(ccfg: CompareConfig, out="compare-report", progress=True, resume=False) -> dict:
    """Run every method (and the rank sweep), write results.json, report.md and plots into `out`. With resume, each
    run continues from its checkpoints in `out` (a stopped comparison picks up where it was)."""
    from ..base import load_base
    from ..training.pretrain import heldout_for_base
    t0, cpu0 = time.time(), time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base, tok = load_base(ccfg.base, device=ccfg.device)
    if ccfg.preset is not None:
        from ..config import GPTConfig
        want = GPTConfig.preset(ccfg.preset)
        if (want.n_embd, want.n_layer, want.n_head) != (base.cfg.n_embd, base.cfg.n_layer, base.cfg.n_head):
            raise MiniftError(f"--preset {ccfg.preset} does not match the base model {ccfg.base or 'data/base-demo'} "
                              f"(n_embd={base.cfg.n_embd}, n_layer={base.cfg.n_layer}, n_head={base.cfg.n_head})")
    if ccfg.quick and ccfg.train_size is None:     # --quick's budget, or all of a smaller task
        ccfg = dataclasses.replace(ccfg, train_size=min(QUICK_TRAIN_SIZE, len(load_task_splits(ccfg.task)[0])))
    train_split = load_task_splits(ccfg.task, ccfg.train_size, ccfg.eval_size)[0]
    for method in ccfg.methods:                     # every run's input checked before the first one trains
        check_task_fits(method, ccfg.task, train_split, ccfg.batch_size, option=f"--methods {','.join(ccfg.methods)}")
    plan = [(m, ccfg.rank, ccfg.alpha) for m in ccfg.methods]
    plan += [("lora", r, sweep_alpha(ccfg, r)) for r in ccfg.ranks if not ("lora" in ccfg.methods and r == ccfg.rank)]
    for method, rank, alpha in plan:               # every run set up against the base (a rank that does not fit...)
        setup_run(base, tok, finetune_config(ccfg, method, rank, alpha, train_split.type))   # before the first trains
    heldout, heldout_text = heldout_for_base(ccfg.base, tok, n_chars=60_000 if ccfg.quick else 200_000)
    heldout = heldout[:(8 if ccfg.quick else 32) * base.cfg.n_ctx + 1]      # the windows every model is scored on
    base_lm = lm_loss(base, heldout, max_windows=None)
    drop_summary(out, "results.json")          # written again last, when every run's files are in place
    runs, tuned = [], {}
    for method, rank, alpha in plan:
        row, tuned[len(runs)] = run_one(base, tok, ccfg, method, rank, alpha, heldout, base_lm, out, progress, resume)
        runs.append(row)
    spread = _over_seeds(runs, ccfg, plan, base, tok, heldout, base_lm, out, progress, resume) if ccfg.seeds else None
    results = dict(config=asdict(ccfg), base=str(ccfg.base or "data/base-demo"), base_config=base.cfg.to_dict(),
                   base_lm_loss=base_lm, forgetting_text=heldout_text, runs=runs, seeds=spread,
                   similarity=_similarity(base, runs, tuned, ccfg),
                   machine=_machine(cpu_per_wall=(time.process_time() - cpu0) / max(time.time() - t0, 1e-9)),
                   seconds=round(time.time() - t0, 1))
    results["memory_claim"] = memory_claim(base.cfg, ccfg)
    if "qlora" in ccfg.methods:                # what the 4-bit base costs before any fine-tuning, on the same text
        results["quantization"] = quant_error_report(base, heldout, max_windows=None, text=heldout_text,
                                                     modules=_modules(ccfg))
    from .figures import write_figures
    from .report import summarize, write_report
    results = _jsonable(results)
    results["summary"] = summarize(results)
    results["plots"] = write_figures(results, out)
    with atomic_write(out / "report.md", "w") as f:
        f.write(write_report(results))
    save_json(results, out / "results.json")
    return results


def memory_claim(cfg, ccfg: CompareConfig) -> list:
    """Where the article's "~80% less memory" holds: full vs LoRA vs QLoRA predicted over a range of batch x sequence
    (measure.memory.saving_table) for this base and for GPT-2's size, with this comparison's rank and targets."""
    from ..config import GPTConfig
    targets = _modules(ccfg) or "all-linear"
    return [saving_table(c, rank=ccfg.rank, targets=targets, quant=ccfg.quant, double_quant=ccfg.double_quant)
            for c in (cfg, GPTConfig.preset("gpt2"))]


def _similarity(base, runs, tuned, ccfg) -> dict | None:
    """Are full fine-tuning's and LoRA's updates alike? Per matrix, how much their top-r output directions overlap
    (measure.analysis.compare_updates), with what two random subspaces would share. None unless both ran."""
    full = next((i for i, r in enumerate(runs) if r["method"] == "full"), None)
    lora = next((i for i, r in enumerate(runs) if r["method"] == "lora" and r["rank"] == ccfg.rank), None)
    if full is None or lora is None:
        return None
    base_w = {k: to_numpy(v) for k, v in base.params.items()}
    rows = compare_updates(base_w, tuned[full], tuned[lora], k=ccfg.rank, modules=_modules(ccfg))
    return dict(a=runs[full]["label"], b=runs[lora]["label"], k=ccfg.rank,
                rows=[{k: row[k] for k in ("name", "block", "module", "similarity", "random")} for row in rows])


def _over_seeds(runs, ccfg, plan, base, tok, heldout, base_lm, out, progress, resume) -> dict:
    """Every run of the plan again with each extra seed (head init, LoRA init and data order all change).
    The table and plots stay the first seed's; this returns, per run label, each seed's accuracy, forgetting and
    intruder count at ε = 0.5, in the order of `seeds`."""
    from .report import intruders_at

    def values(r):
        return dict(val_accuracy=r["val_accuracy"], test_accuracy=r["test_accuracy"], forgetting=r["forgetting"],
                    intruders=intruders_at(r)[0])

    per = {r["label"]: {k: [v] for k, v in values(r).items()} for r in runs}
    for seed in ccfg.seeds:
        sub = dataclasses.replace(ccfg, seed=seed, seeds=())
        for method, rank, alpha in plan:
            r = run_one(base, tok, sub, method, rank, alpha, heldout, base_lm, out / f"seed-{seed}", progress,
                        resume)[0]
            for k, v in values(r).items():
                per[r["label"]][k].append(v)
    return dict(seeds=[ccfg.seed, *ccfg.seeds], runs=per)


def _machine(cpu_per_wall=None) -> dict:
    """Where the run ran. cpu_per_wall: the process's CPU seconds per second of the comparison: at least ~1 (one busy
    core, more while BLAS threads run) unless other work held the cores (report.busy_note reads it)."""
    import numpy
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), python=platform.python_version(), numpy=numpy.__version__,
                cpu_per_wall=None if cpu_per_wall is None else round(cpu_per_wall, 2))
    try:
        import minift
        info["minift"] = minift.__version__
    except Exception:  # noqa: BLE001 (the version is informative only)
        pass
    return info


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
