"""Helpers shared by every benchmark script: machine facts, the BENCHMARKS.md JSON shape, Markdown tables.

Usage from a script in ``benchmarks/``::

    from common import base_parser, machine_info, markdown_table, write_results

    rows = [{"model": "mmoe", "mode": "train", "precision": "fp32", "batch_size": 2048, "samples_per_s": 17600}]
    print(markdown_table(rows, ["model", "mode", "precision", "samples_per_s"]))
    write_results("throughput", command_line(), rows, quick=False, out=None)
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mtlrec.bench import meta as _meta
from mtlrec.bench.meta import cpu_name, machine_info, mtlrec_version, utc_now  # noqa: F401  (re-exported)
from mtlrec.train.precision import bf16_supported, cpu_flags  # noqa: F401  (re-exported to the scripts)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def git_commit() -> str | None:
    """The working tree's HEAD commit (with ``-dirty`` when tracked files under ``src`` differ), or None."""
    return _meta.git_commit(ROOT)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, as typed from the project root."""
    argv = list(sys.argv if argv is None else argv)
    script = argv[0]
    try:
        script = str(Path(script).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return shlex.join(["python", script, *argv[1:]])


def display_path(path: str | Path) -> str:
    """``path`` relative to the project root where it lies inside it, else as given (for the JSON)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 1024.0, 1)


def default_out(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def write_results(
    name: str,
    command: str,
    rows: list[dict[str, Any]],
    quick: bool,
    out: str | Path | None = None,
    *,
    threads: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the BENCHMARKS.md JSON (``benchmark, command, created, mtlrec_version, git_commit, machine, quick,
    rows`` plus ``extra`` fields) atomically to ``out`` (default ``benchmarks/results/NAME.json``); returns the path."""
    path = Path(out) if out else default_out(name)
    payload: dict[str, Any] = {
        "benchmark": name,
        "command": command,
        "created": utc_now(),
        "mtlrec_version": mtlrec_version(),
        "git_commit": git_commit(),
        "machine": machine_info(threads),
        "quick": bool(quick),
        "rows": rows,
    }
    if extra:
        payload.update(extra)
    _meta.atomic_write_json(path, payload)
    return path


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x, digits) for x in v)
    return str(v)


def markdown_table(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    headers: Sequence[str] | None = None,
    digits: int = 4,
) -> str:
    """A GitHub Markdown table of ``rows`` (dicts); ``columns`` picks and orders keys (default: every key seen, in
    first-seen order); missing values print as ``–``; floats ≥ 1000 get thousands separators."""
    rows = list(rows)
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    head = list(headers) if headers is not None else list(columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(lines)


def base_parser(name: str, description: str, *, default_models: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the contract's options: ``--out --models --seeds --data-dir --quick``."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--out", default=None, help=f"JSON output (default benchmarks/results/{name}.json)")
    p.add_argument("--models", default=default_models, help="comma-separated registry names")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"), help="data directory")
    p.add_argument("--quick", action="store_true", help="a run of a few minutes on a subset")
    return p


def parse_models(spec: str | None, default: Sequence[str]) -> list[str]:
    if not spec:
        return list(default)
    return [m.strip() for m in spec.split(",") if m.strip()]


def add_parallel_options(p: argparse.ArgumentParser) -> None:
    """``--threads`` (torch threads per run) and ``--jobs`` (runs in parallel processes, :func:`run_jobs`)."""
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default %(default)s)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs in parallel processes (default %(default)s; --jobs 2 --threads 1 spends 2 cores on two runs at once)",
    )


def run_jobs(jobs: list, n_jobs: int, init_args: tuple, fn: Callable, init: Callable) -> Iterator[Any]:
    """Yield ``fn(job)`` for each job, in order: in this process (already initialised by the caller) when
    ``n_jobs`` is 1, else in ``n_jobs`` forked workers each initialised by ``init(*init_args)``."""
    if n_jobs <= 1:
        yield from map(fn, jobs)
        return
    pool = multiprocessing.get_context("fork").Pool(n_jobs, init, init_args)
    try:
        yield from pool.imap(fn, jobs)
    finally:
        pool.close()
        pool.join()


def add_bench_options(p: argparse.ArgumentParser, config: Path) -> None:
    """The options of a benchmark script that runs a ``configs/bench`` config on the harness (``mtlrec.bench``):
    ``--config``, ``--runs-dir`` (the harness's out folder: run folders and ``results.jsonl``, so a rerun resumes),
    ``--epochs`` (an epoch budget), ``--threads``/``--jobs``."""
    p.add_argument("--config", default=str(config), help=f"benchmark config (default {display_path(config)})")
    p.add_argument("--runs-dir", default=None, help="run folders; a rerun resumes there (default runs/bench/NAME)")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget (default: the config's)")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="config override key.sub=value")
    add_parallel_options(p)


def run_bench_script(args: argparse.Namespace, name: str, overrides: list[str] | None = None, **kw: Any):
    """Run ``args.config`` on the harness with the contract's options translated: ``--data-dir`` (the config's
    data and every ``bench.datasets`` entry), ``--seeds N`` (seeds 0..N-1; under ``--quick`` the config's quick
    seeds), ``--models``, ``--epochs``, ``--out`` (the JSON, default ``benchmarks/results/NAME.json``). Returns the
    harness's :class:`mtlrec.bench.run.BenchRun`."""
    from mtlrec.bench.grid import bench_section, prepare_config
    from mtlrec.bench.run import run_bench

    sets = list(overrides or [])
    if args.epochs:
        sets.append(f"train.epochs={args.epochs}")
    cfg = prepare_config(args.config, quick=args.quick, overrides=sets + list(args.overrides))
    # the readers' own default is ../shared/data: only another folder goes into the config (and the cells'
    # fingerprints, so that `mtlrec bench` and the script share the run folders of the default data)
    if args.data_dir and Path(args.data_dir).resolve() != (ROOT.parent / "shared" / "data").resolve():
        for d in [cfg.get("data") or {}, *(bench_section(cfg).get("datasets") or [])]:
            if d:
                d.setdefault("params", {})["data_dir"] = args.data_dir
    out = Path(args.runs_dir) if args.runs_dir else None
    if out is None:
        out = ROOT / "runs" / "bench" / (name + ("-quick" if args.quick else ""))
    return run_bench(
        cfg,
        out=out,
        json_out=args.out or default_out(name),
        jobs=args.jobs,
        threads=args.threads,
        seeds=None if args.quick else str(args.seeds),
        models=parse_models(args.models, []) or None,
        quick=args.quick,
        prepared=True,
        command=command_line(),
        **kw,
    )


def run_script(main: Callable[[], Any]) -> Any:
    """A benchmark script's entry point: ``main()`` with user mistakes ended as the CLI ends them, one ``error:``
    line and exit status 2 (``MTLREC_DEBUG=1`` shows the traceback)."""
    from mtlrec.errors import debug_requested, report_user_errors

    return report_user_errors(main, debug_requested())
