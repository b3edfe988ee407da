"""DEPHN virtual-gradient study (Kong et al., IJCNN'23, §IV-C, Figs. 4-5): no VG against the eight Fig. 4 variants
× two relevance measures, on Criteo-R and Criteo-UR (MODELS.md A.1.1, A.3.6-A.3.7).

Data: the Criteo-shaped generator of :mod:`mtlrec.data.datasets.criteo` (13 integer + 26 Zipf-skewed categorical
fields) with a KNOWN base confidence ``c ~ N(−1.1, 1)``; Criteo-R labels ``task1 = 1[c > 0]``,
``task2 = 1[y_r > 0]``, Criteo-UR ``task2 = 1[y_ur > 0]`` (MODELS.md G.7). Both data sets share the inputs, ``c``
and the random 8:1:1 split (``--data-seed``, recorded); the measured ``Pearson(c, y)`` and label agreement are
printed and written. ``--criteo-file PATH`` runs the study on a real Criteo-format file instead (``c`` from a DNN
trained on its clicks, A.1.1 step 1); ``--criteo-sample`` only runs the generator on the 200-row Criteo sample in
``--data-dir`` (or ``--criteo-file``) as a format check and prints the measured label correlations.

Configurations per model (``--models``, default ``dephn``; any registered gated model such as ``mmoe`` takes VG as
the ``virtual_gradient`` plug-in, Fig. 5's caption says "based on MMoE"): ``no_vg`` and ``<variant>/<relevance>``
for every variant of ``--variants`` (default the 8 of Fig. 4: add/mul × abs/cos/square/sqrt) and every measure of
``--relevance`` (default pearson, cosine): 17 configurations per data set. Each (configuration, seed) run trains
with early stopping on the **validation mean AUC of the two tasks only**, restores the best epoch and evaluates the
test split once; seeds vary initialisation and batch order only. Reported: mean ± std test AUC per task and the
difference to ``no_vg`` of the same model and seed with a paired t-test (``mtlrec.metrics.paired_test``).

Note [A]: VG rescales the gradient reaching each gate value (eq. 8). Adam normalises every parameter's update by
its own gradient scale, so a Γ that is nearly constant over steps changes the trajectory very little; expect small
differences to ``no_vg``.

    python benchmarks/vg_study.py --jobs 2 --threads 1                  # full: 17 configs × 2 data sets × 3 seeds
    python benchmarks/vg_study.py --quick --threads 1                   # a few minutes: tiny data, 1 epoch, 2 seeds
    python benchmarks/vg_study.py --criteo-sample                        # format check on the Criteo sample
    python benchmarks/vg_study.py --criteo-file train.txt --max-rows 2000000 --jobs 2 --threads 1

Writes the BENCHMARKS.md JSON (rewritten after every run, ``complete: false`` until done): ``auc`` rows (test and
valid) and ``auc_diff_vs_no_vg`` rows (with ``p_value``), every row with its ``dataset``, ``vg`` and ``relevance``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_parallel_options,
    base_parser,
    command_line,
    markdown_table,
    parse_models,
    run_jobs,
    run_script,
    write_results,
)

from mtlrec.bench import paired_rows  # noqa: E402
from mtlrec.data.datasets.criteo import RELATIONS, build_criteo_ru  # noqa: E402
from mtlrec.experiment import run_one, summarize, train_config  # noqa: E402
from mtlrec.plugins.virtual_gradient import RELEVANCE, VARIANTS  # noqa: E402
from mtlrec.recipes.criteo_ru import base_confidence  # noqa: E402

NAME = "vg_study"
DATASET = {"related": "criteo_r", "unrelated": "criteo_ur"}
# 17 configs × 2 data sets × 3 seeds ≈ 102 runs of 15-25 s (1 thread): about 20 min with --jobs 2 --threads 1
PARAMS: dict[str, dict[str, Any]] = {
    "dephn": {
        "embedding_dim": 8,
        "num_dnn_experts": 2,
        "dnn_hidden": [32],
        "cross_layers": 1,
        "fint_layers": 1,
        "attention_heads": 1,
    },
    "mmoe": {"embedding_dim": 8, "num_experts": 4, "expert_hidden": [32], "tower_hidden": [16]},
}
DEFAULT_PARAMS = {"embedding_dim": 8}
FULL = {"rows": 40_000, "max_vocab": 1000, "epochs": 5, "seeds": 3}
QUICK = {"rows": 4_000, "max_vocab": 300, "epochs": 1, "seeds": 2}
TRAIN = {"batch_size": 512, "lr": 2e-3, "patience": 1, "monitor": "mean.auc", "progress": False}

_DATA: dict[str, Any] = {}  # data set name -> bundle, filled before the workers fork


def configurations(variants: list[str], measures: list[str]) -> list[tuple[str, str | None, str | None]]:
    """``(label, variant, relevance)``: ``no_vg`` first, then every variant × relevance measure."""
    return [("no_vg", None, None)] + [(f"{v}/{r}", v, r) for v in variants for r in measures]


def vg_params(model: str, variant: str | None, relevance: str | None) -> dict[str, Any]:
    """The model's parameters with VG off or set to one variant: DEPHN's own switches, else the plug-in."""
    params = dict(PARAMS.get(model, DEFAULT_PARAMS))
    if model == "dephn":
        params["use_vg"] = variant is not None
        if variant is not None:
            params |= {"vg_variant": variant, "vg_relevance": relevance}
    elif variant is not None:
        params["virtual_gradient"] = {"variant": variant, "relevance": relevance}
    return params


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run(job: tuple[str, str, str, dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
    dataset, model, label, params, train_raw, seed = job
    row = run_one(_DATA[dataset], model, params, train_config(train_raw, seed), None)
    row.update(dataset=dataset, label=f"{model}:{label}", registry_model=model)
    return row


def load_data(args, sizes: dict[str, Any]) -> dict[str, Any]:
    """Criteo-R and Criteo-UR on one base confidence (one DNN fit for a Criteo file)."""
    base = base_confidence(
        args.criteo_file,
        rows=sizes["rows"],
        max_vocab=sizes["max_vocab"],
        seed=args.data_seed,
        noise=args.noise,
        max_rows=args.max_rows,
        min_count=args.min_count,
    )
    label_args = {"labeling": args.labeling, "label_seed": args.data_seed + 1, "min_count": args.min_count}
    return {DATASET[rel]: build_criteo_ru(base, rel, **label_args) for rel in RELATIONS}


def split_sizes(bundle: Any) -> dict[str, int]:
    return {k: len(v) for k, v in bundle.splits.items()}


def label_rows(data: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """The measured correlations of each data set (A.1.1 step 4) as JSON rows (one value, the data seed)."""
    rows = []
    for name, bundle in data.items():
        for metric, v in bundle.meta["labels"].items():
            rows.append(
                {
                    "model": "generator",
                    "dataset": name,
                    "task": "task2",
                    "metric": metric,
                    "split": "all",
                    "mean": v,
                    "std": 0.0,
                    "values": [v],
                    "seeds": [seed],
                }
            )
    return rows


def split_label(summary_rows: list[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """Adds ``dataset``, ``model`` (registry name), ``vg`` and ``relevance`` from the ``model:config`` label."""
    for s in summary_rows:
        model, _, config = s["model"].partition(":")
        vg, _, rel = config.partition("/")
        s.update(dataset=dataset, model=model, vg=vg, relevance=rel or None)
    return summary_rows


def study_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test/valid AUC rows and ``auc_diff_vs_no_vg`` rows (paired over seeds) per data set and model."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == dataset]
        test = [s for s in summarize(mine, "test") if s["metric"] == "auc"]
        valid = [s for s in summarize(mine, "valid") if s["metric"] == "auc"]
        diffs = []
        for model in dict.fromkeys(r["registry_model"] for r in mine):
            own = [s for s in test if s["model"].startswith(f"{model}:")]
            diffs += [{**r, "metric": "auc_diff_vs_no_vg"} for r in paired_rows(own, f"{model}:no_vg")]
        out += split_label(test + valid + diffs, dataset)
    return out


def study_table(rows: list[dict[str, Any]], dataset: str) -> str:
    """One line per configuration: test AUC per task (mean ± std) and the difference to no_vg (p)."""
    test = {(r["model"], r["vg"], r["relevance"], r["task"]): r for r in rows if r["dataset"] == dataset}
    tasks = list(dict.fromkeys(k[3] for k in test))
    lines = []
    for model, vg, rel in dict.fromkeys(k[:3] for k in test):
        line = {"model": model, "vg": vg, "relevance": rel or "–"}
        for t in tasks:
            r = test[(model, vg, rel, t)]
            line[f"{t} AUC"] = f"{r['mean']:.4f} ± {r['std']:.4f}"
            d = r.get("diff")
            line[f"{t} Δ vs no_vg"] = "–" if d is None else f"{d['mean']:+.4f}" + _p(d["p_value"])
        lines.append(line)
    return markdown_table(lines)


def _p(p: float | None) -> str:
    return "" if p is None else f" (p={p:.3f})"


def attach_diffs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test AUC rows with their ``auc_diff_vs_no_vg`` row under ``diff`` (for the table only)."""
    key = ("dataset", "model", "vg", "relevance", "task")
    diffs = {tuple(r[k] for k in key): r for r in rows if r["metric"] == "auc_diff_vs_no_vg"}
    return [
        {**r, "diff": diffs.get(tuple(r[k] for k in key))}
        for r in rows
        if r["metric"] == "auc" and r["split"] == "test"
    ]


def criteo_sample(args) -> int:
    """A.1.1 on the real Criteo sample (or ``--criteo-file``): reader, DNN confidence, labels; prints the report."""
    path = Path(args.criteo_file or Path(args.data_dir) / "samples" / "criteo_sample.txt")
    if not path.exists():
        print(f"no Criteo-format file at {path}: pass --data-dir (../shared/data) or --criteo-file", file=sys.stderr)
        return 2
    args.criteo_file = str(path)
    t0 = time.perf_counter()
    data = load_data(args, {"rows": 0, "max_vocab": 0})
    some = next(iter(data.values()))
    print(f"{path}: {some.meta['total_rows']} rows, split {split_sizes(some)} (data seed {args.data_seed})")
    print(f"DNN base confidence: {some.meta['dnn']['config']}, valid click {some.meta['dnn']['valid_click']}")
    rows = label_rows(data, args.data_seed)
    print(markdown_table(rows, ["dataset", "metric", "mean"], headers=["data set", "measured", "value"]))
    out = write_results(
        f"{NAME}_criteo_sample",
        command_line(),
        rows,
        args.quick,
        args.out,
        threads=args.threads,
        extra={
            "data": {k: {**b.meta, "dataset": k} for k, b in data.items()},
            "wall_seconds": time.perf_counter() - t0,
        },
    )
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser(NAME, __doc__.splitlines()[0], default_models="dephn")
    p.set_defaults(seeds=FULL["seeds"])
    p.add_argument("--variants", default=",".join(VARIANTS), help="Fig. 4 variants (default all 8)")
    p.add_argument("--relevance", default=",".join(RELEVANCE), help="relevance measures (default pearson,cosine)")
    p.add_argument("--rows", type=int, default=None, help=f"generated rows (default {FULL['rows']:,})")
    p.add_argument("--max-vocab", type=int, default=None, help=f"largest vocabulary (default {FULL['max_vocab']})")
    p.add_argument("--noise", type=float, default=0.0, help="share of c's variance not in the fields (default 0)")
    p.add_argument("--labeling", default="threshold", choices=("threshold", "bernoulli"), help="A.1.1 step 4")
    p.add_argument("--data-seed", type=int, default=0, help="generator, label-noise and split seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help=f"max epochs (default {FULL['epochs']}; quick 1)")
    p.add_argument("--criteo-file", default=None, help="a Criteo-format file instead of the generator")
    p.add_argument("--max-rows", type=int, default=None, help="with --criteo-file: read only the first rows")
    p.add_argument("--min-count", type=int, default=1, help="with --criteo-file: rarer values become OOV")
    p.add_argument("--criteo-sample", action="store_true", help="format check on the Criteo sample; no training")
    add_parallel_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.criteo_sample:
        return criteo_sample(args)
    t_start = time.perf_counter()
    sizes = {**(QUICK if args.quick else FULL)}
    sizes |= {k: v for k, v in {"rows": args.rows, "max_vocab": args.max_vocab}.items() if v is not None}
    seeds = list(range(QUICK["seeds"] if args.quick else args.seeds))
    train_raw = {**TRAIN, "epochs": args.epochs or sizes["epochs"]}
    models = parse_models(args.models, ["dephn"])
    configs = configurations(parse_models(args.variants, VARIANTS), parse_models(args.relevance, RELEVANCE))
    _DATA.update(load_data(args, sizes))
    for name, bundle in _DATA.items():
        lab = bundle.meta["labels"]
        print(
            f"{name}: rows {split_sizes(bundle)}, Pearson(c, y) {lab['pearson_c_y']:.4f}, label agreement "
            f"{lab['label_agreement']:.4f}, positive rates {lab['positive_rate_task1']:.3f} / "
            f"{lab['positive_rate_task2']:.3f}"
        )
    print(
        f"models {models}; {len(configs)} configurations × {len(_DATA)} data sets × seeds {seeds}"
        + (" [QUICK: tiny data, not a result]" if args.quick else ""),
        flush=True,
    )
    # seed-major: an interrupted run still has every configuration with its first seeds
    jobs = [
        (ds, m, label, vg_params(m, v, r), train_raw, seed)
        for seed in seeds
        for ds in _DATA
        for m in models
        for label, v, r in configs
    ]
    runs: list[dict[str, Any]] = []
    out = None
    for row in run_jobs(jobs, args.jobs, (args.threads,), fn=_run, init=_init_worker):
        runs.append(row)
        aucs = ", ".join(f"{t} {v['auc']:.4f}" for t, v in row["test"].items())
        print(
            f"  {row['dataset']} {row['label']:24s} seed {row['seed']}: test {aucs} | best epoch "
            f"{row['best_epoch']}/{row['epochs_run']} | {row['train_seconds']:.0f}s",
            flush=True,
        )
        out = _write(args, runs, train_raw, sizes, complete=len(runs) == len(jobs), t_start=t_start)
    rows = attach_diffs(study_rows(runs))
    for ds in _DATA:
        print(f"\n### {ds}: test AUC (mean ± std over seeds) and difference to no_vg (paired t-test)\n")
        print(study_table(rows, ds))
    wall = time.perf_counter() - t_start
    cpu = sum(r["train_seconds"] for r in runs) * args.threads
    print(f"\nwall {wall / 60:.1f} min; {len(runs)} runs, {cpu / 60:.1f} CPU-min of training; wrote {out}")
    return 0


def _write(args, runs, train_raw, sizes, *, complete: bool, t_start: float) -> Path:
    rows = label_rows(_DATA, args.data_seed) + study_rows(runs)
    extra = {
        "protocol": {
            "data": {k: {kk: vv for kk, vv in b.meta.items() if kk != "labels"} for k, b in _DATA.items()},
            "sizes": sizes,
            "rows": {k: split_sizes(b) for k, b in _DATA.items()},
            "selection": "early stopping and best epoch on validation mean AUC (task1, task2) only",
            "train": {k: v for k, v in train_raw.items() if k != "progress"},
            "params": {m: PARAMS.get(m, DEFAULT_PARAMS) for m in dict.fromkeys(r["registry_model"] for r in runs)},
        },
        "runs": [
            {k: r[k] for k in ("dataset", "label", "seed", "best_epoch", "epochs_run", "train_seconds")} for r in runs
        ],
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "complete": complete,
        "parallel": {"jobs": args.jobs, "threads_per_job": args.threads},
    }
    return write_results(
        NAME, command_line(), rows, args.quick, args.out, threads=args.threads * args.jobs, extra=extra
    )


if __name__ == "__main__":
    raise SystemExit(run_script(main))
