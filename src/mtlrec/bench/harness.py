"""Run a grid of cells in parallel worker processes, resumably.

The out folder holds one run folder per cell (``[<dataset>/]<label>/seed<k>/``: ``cell.json``, ``run.json``,
``last.pt``, ``best.pt``, ``log.jsonl``, ``result.json``) and ``results.jsonl``, one row per finished cell (``status``
``ok`` or ``failed`` with its message), rewritten atomically after every cell. A rerun skips the cells recorded
``ok`` with the same settings (their ``fingerprint``), retries failed ones, and continues an interrupted cell from
its ``last.pt`` (``Trainer.resume``), so a long protocol can be spread over sessions and machines. A ledger file
(:class:`Ledger`, a copy of ``results.jsonl`` kept elsewhere, e.g. committed with the results) is read at the start,
its finished cells counting as done, and rewritten after every cell: a fresh machine continues the grid from it.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.bench.grid import Cell
from mtlrec.bench.meta import atomic_write_json, atomic_write_text, git_commit, json_default
from mtlrec.bench.summary import selected_epoch
from mtlrec.errors import RunInterrupted, UserError
from mtlrec.experiment import load_data, run_one, train_config

RESULTS = "results.jsonl"

_BUNDLES: dict[str, Any] = {}  # data key -> bundle, per process (filled in the parent before workers fork)
_OUT: dict[str, Any] = {}


def data_key(cell: Cell) -> str:
    return json.dumps([cell.data, cell.train_rows], sort_keys=True, default=str)


def train_subset(bundle, rows: int, seed: int = 0):
    """The first ``rows`` of a fixed random permutation of the training split, kept in order (valid/test whole)."""
    if rows < len(bundle.train):
        idx = np.sort(np.random.default_rng(seed).permutation(len(bundle.train))[:rows])
        bundle.splits["train"] = bundle.train.take(idx)
    return bundle


def bundle_for(cell: Cell):
    key = data_key(cell)
    if key not in _BUNDLES:
        bundle = load_data({"data": cell.data})
        _BUNDLES[key] = train_subset(bundle, cell.train_rows) if cell.train_rows else bundle
    return _BUNDLES[key]


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``log.jsonl`` in order, one per epoch (a repeated epoch keeps its last record)."""
    records: dict[Any, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            records[rec.get("epoch", len(records))] = rec
    return list(records.values())


def logged_selected_epoch(run_dir: Path) -> int | None:
    """The 1-based position of the last improving epoch in the run's log (whatever base its epoch field uses)."""
    improved = [i for i, rec in enumerate(read_log(run_dir / "log.jsonl"), 1) if rec.get("improved")]
    return improved[-1] if improved else None


@functools.cache
def _code_commit() -> str | None:
    """The commit of the code this process imported (looked up once; forked workers inherit it)."""
    return git_commit()


def execute_cell(cell: Cell, out_root: Path) -> dict[str, Any]:
    """Train one cell into its run folder and return its results row: ``status: ok`` with ``run_one``'s row, or
    ``status: failed`` with the error; a folder left by an interrupted run of the same settings is resumed."""
    run_dir = out_root / cell.run_dir
    fp = cell.fingerprint()
    marker = _json(run_dir / "cell.json") or {}
    same = marker.get("fingerprint") == fp
    base = {
        "key": cell.key,
        "label": cell.label,
        "dataset_label": cell.dataset,
        "seed": cell.seed,
        "fingerprint": fp,
        "train": cell.train,
    }
    finished = _json(run_dir / "result.json") if same else None
    if finished is not None:  # trained before the parent could record it
        return {**finished, **base, "status": "ok", "resumed": "finished"}
    resume = same and (run_dir / "last.pt").exists()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "cell.json", {**asdict(cell), "key": cell.key, "fingerprint": fp})
    t0 = time.perf_counter()
    try:
        bundle = bundle_for(cell)
        tcfg = train_config({**cell.train, "progress": False}, cell.seed)
        row = run_one(bundle, cell.model, cell.params, tcfg, run_dir, resume=resume)
    except (KeyboardInterrupt, RunInterrupted):
        raise
    except Exception as e:  # noqa: BLE001 -- a failed cell is recorded and the grid goes on
        message = str(e).splitlines()[0] if str(e) else ""
        return {
            **base,
            "model": cell.model,
            "status": "failed",
            "error": f"{type(e).__name__}: {message}",
            "seconds": time.perf_counter() - t0,
        }
    selected = logged_selected_epoch(run_dir)
    return {
        **row,
        **base,
        "status": "ok",
        "git_commit": _code_commit(),  # a grid spread over sessions may mix commits: each cell names its code
        "resumed": bool(resume),
        "seconds": time.perf_counter() - t0,
        **({"selected_epoch": selected} if selected is not None else {}),
    }


def _init_worker(threads: int | None, out_root: str) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    _OUT["root"] = Path(out_root)


def _worker(cell: Cell) -> dict[str, Any]:
    return execute_cell(cell, _OUT["root"])


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of a results file (``results.jsonl`` or a ledger), by cell key (the last row of a key wins)."""
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{n}: not a JSON line (a damaged results file; remove that line)") from None
            rows[row.get("key") or f"{row.get('label')}/seed{row.get('seed')}"] = row
    return rows


def write_rows(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Rewrite a results file (``results.jsonl`` or a ledger) atomically, one JSON row per line."""
    atomic_write_text(path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows.values()))


class Ledger:
    """A copy of a grid's ``results.jsonl`` kept outside its out folder (e.g. committed beside the results JSON).
    Its finished rows of planned cells with the same settings count as done; it is rewritten with every recorded
    row, keeping the rows of cells this call does not plan (another ``--models`` or ``--seeds``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"ledger {self.path}: a folder; expected a results file (e.g. grids/<name>.jsonl)")
        self.rows = read_rows(self.path) if self.path.exists() else {}

    def merge_into(self, recorded: dict[str, dict[str, Any]], cells: list[Cell]) -> int:
        """Add the finished rows of ``cells`` (same fingerprint) that ``recorded`` lacks as finished; their count."""
        added = 0
        for cell in cells:
            row, mine = self.rows.get(cell.key), recorded.get(cell.key)
            if row is None or row.get("status") != "ok" or row.get("fingerprint") != cell.fingerprint():
                continue
            if mine is None or mine.get("status") != "ok":
                recorded[cell.key] = row
                added += 1
        return added

    def write(self, recorded: dict[str, dict[str, Any]]) -> None:
        self.rows.update(recorded)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_rows(self.path, self.rows)


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def cell_line(row: dict[str, Any]) -> str:
    """One line of a finished cell: the first metric of each task on test, the selected epoch, its seconds."""
    name = f"{row['label']} seed {row['seed']}" + (f" [{row['dataset_label']}]" if row.get("dataset_label") else "")
    if row.get("status") != "ok":
        return f"{name}: FAILED {row.get('error')}"
    metrics = ", ".join(f"{t}.{next(iter(ms))} {next(iter(ms.values())):.4f}" for t, ms in row["test"].items() if ms)
    resumed = " (resumed)" if row.get("resumed") is True else ""
    return (
        f"{name}: test {metrics} | best epoch {selected_epoch(row)}/{row['epochs_run']} | "
        f"{row.get('seconds', row.get('train_seconds', 0)):.0f} s{resumed}"
    )


@dataclass
class GridResult:
    """The rows of every cell of the grid that is recorded (``rows``, in grid order), the failed ones, whether
    every cell is done, how many ran in this call and were skipped as already done."""

    rows: list[dict[str, Any]]
    complete: bool
    ran: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0


def plan_status(cells: list[Cell], out: Path, *, redo_changed: bool = False) -> tuple[dict, list[Cell]]:
    """The recorded rows and the cells still to run. A cell recorded with other settings is an error (another
    config's results in this folder) unless ``redo_changed``."""
    recorded = read_rows(out / RESULTS)
    todo = []
    for cell in cells:
        row = recorded.get(cell.key)
        if row is not None and row.get("fingerprint") != cell.fingerprint():
            if not redo_changed:
                raise UserError(
                    f"{out / RESULTS}: cell {cell.key} was run with other settings; use another --out, "
                    "or --redo-changed to rerun the changed cells"
                )
            recorded.pop(cell.key)
            row = None
        if row is None or row.get("status") != "ok":
            todo.append(cell)
    return recorded, todo


def run_grid(
    cells: list[Cell],
    out: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    redo_changed: bool = False,
    ledger: str | Path | None = None,
    echo: Callable[[str], None] = print,
    on_update: Callable[[GridResult], None] | None = None,
) -> GridResult:
    """Run the cells not yet recorded in ``out`` or the ``ledger`` (``jobs`` forked worker processes, ``threads``
    torch threads each), recording each finished cell atomically (in ``out`` and the ledger) and calling
    ``on_update`` after it (and once at the start)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded, todo = plan_status(cells, out, redo_changed=redo_changed)
    book = Ledger(ledger) if ledger else None
    if book is not None:
        imported = book.merge_into(recorded, cells)
        todo = [c for c in todo if recorded.get(c.key, {}).get("status") != "ok"]
        write_rows(out / RESULTS, recorded)
        book.write(recorded)
        if imported:
            echo(f"grid: {imported} finished cells taken from the ledger {book.path}")
    keys = [c.key for c in cells]
    skipped = len(cells) - len(todo)
    t0 = time.perf_counter()
    ran = 0

    def result() -> GridResult:
        rows = [recorded[k] for k in keys if k in recorded]
        failed = [r for r in rows if r.get("status") != "ok"]
        done = sum(r.get("status") == "ok" for r in rows)
        return GridResult(rows, done == len(cells), ran, skipped, failed, time.perf_counter() - t0)

    echo(
        f"grid: {len(cells)} cells, {skipped} already done, {len(todo)} to run"
        + (f" ({jobs} jobs × {threads or 'default'} threads)" if todo else "")
        + f"; out {out}"
    )
    if on_update:
        on_update(result())
    if not todo:
        return result()

    for key in {data_key(c): c for c in todo}.values():  # load each data set once, before the workers fork
        bundle_for(key)
    _code_commit()  # likewise the commit every row names

    def record(row: dict[str, Any]) -> None:
        nonlocal ran
        ran += 1
        recorded[row["key"]] = row
        write_rows(out / RESULTS, recorded)
        if book is not None:
            book.write(recorded)
        elapsed = time.perf_counter() - t0
        eta = elapsed / ran * (len(todo) - ran)
        echo(f"[{skipped + ran}/{len(cells)}] {cell_line(row)} | elapsed {_fmt_time(elapsed)}, ETA {_fmt_time(eta)}")
        if on_update:
            on_update(result())

    try:
        if jobs <= 1:
            _init_worker(threads, str(out))
            for cell in todo:
                record(execute_cell(cell, out))
        else:
            pool = multiprocessing.get_context("fork").Pool(jobs, _init_worker, (threads, str(out)))
            try:
                for row in pool.imap_unordered(_worker, todo):
                    record(row)
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
    except (KeyboardInterrupt, RunInterrupted):
        raise RunInterrupted(
            f"bench interrupted after {skipped + ran}/{len(cells)} cells; finished cells are recorded in {out}, "
            "and the same command resumes (interrupted cells continue from their last.pt)"
        ) from None
    return result()
