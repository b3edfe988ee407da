"""Preprocessing at scale: streaming first run, peak memory, cache size and cached load on Criteo-like data.

Generates Criteo-like data (26 categorical Zipf columns with vocabularies from 10 up to 1M ids, 13 lognormal
numeric columns with 20% missing, click and purchase-on-click labels) as Parquet and as CSV, vectorised and
generated in chunks of 1M rows and written as Parquet row groups of 2^18 rows, then measures in a fresh child process per figure (its own peak RSS from
``getrusage``, so nothing of the parent counts):

- ``first``: the first run of the ``files`` data set (both streaming passes and the cache write), rows/s;
- ``first`` peak RSS is the preprocessing's (both passes and the cache write), taken before any batch is read;
- ``cached``: a second run that finds the cache (open the memory maps), then reads 200 block-shuffled batches (or the epoch)
  (``pread`` of whole blocks into two window buffers: RSS independent of the cache size) and one row-shuffled
  batch gathered from the memory maps (the pages it touches, whole page-cache folios, count as file-backed RSS:
  clean page cache that the kernel reclaims under pressure, reported apart as ``rows_batch_rss_file_mib``);
- with ``--peers``: the peers' recipe (pandas ``read_csv`` + scikit-learn ``LabelEncoder`` per categorical column +
  mean fill and standard scaling, as the DeepCTR-Torch / torch-rechub examples do) on the smallest CSV file, in
  the peers' venv (``benchmarks/peers/setup_peers.sh``; ``--peers-python`` to point elsewhere).

Quick run (200,000 rows unless ``--rows`` is given; well under a minute): ``python benchmarks/preprocess.py --quick``.
The full run (on a quiet machine; see docs/data.md for its duration):
``python benchmarks/preprocess.py --rows 2000000,10000000,20000000 --formats parquet,csv --peers``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, base_parser, command_line, markdown_table, run_script, write_results  # noqa: E402

N_CAT, N_NUM = 26, 13
VOCABS = np.unique(np.geomspace(10, 1_000_000, N_CAT).astype(np.int64)).tolist()
CHUNK = 1_000_000
ROW_GROUP = 1 << 18  # Parquet row groups of 262,144 rows (about 20 MiB here): decoding memory is per row group


def schema_dict() -> dict:
    feats = [{"name": f"C{i + 1}", "kind": "categorical"} for i in range(N_CAT)]
    feats += [{"name": f"I{i + 1}", "kind": "numeric", "transform": "log"} for i in range(N_NUM)]
    tasks = [{"name": "click"}, {"name": "purchase", "mask": "click"}]
    return {"features": feats, "tasks": tasks}


def _chunk(rng: np.random.Generator, n: int) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    score = np.zeros(n)
    for i in range(N_CAT):
        v = VOCABS[i] if i < len(VOCABS) else VOCABS[-1]
        # Zipf-like (log-uniform) ids by the inverse CDF: P(id) ~ 1 / (id + 1), vectorised and fast
        ids = np.exp(rng.random(n) * np.log(v + 1)).astype(np.int64) - 1
        score += np.where(ids % 7 == 0, 0.15, -0.02)
        cols[f"C{i + 1}"] = pa.array(ids)
    for i in range(N_NUM):
        x = rng.lognormal(0, 1.5, n)
        score += 0.05 * np.log1p(x) * (1 if i % 2 else -1)
        cols[f"I{i + 1}"] = pa.array(np.round(x, 3), mask=rng.random(n) < 0.2)
    p = 1 / (1 + np.exp(-(score - score.mean())))
    click = (rng.random(n) < p * 0.4).astype(np.int8)
    cols["click"] = pa.array(click)
    cols["purchase"] = pa.array(((rng.random(n) < 0.2) & (click == 1)).astype(np.int8))
    return pa.table(cols)


def generate(path: Path, rows: int, fmt: str, seed: int = 0) -> float:
    """Write ``rows`` rows in chunks of 1M (Parquet row groups / appended CSV blocks); returns seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(path.suffix + ".tmp")
    writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
    for lo in range(0, rows, CHUNK):
        t = _chunk(rng, min(CHUNK, rows - lo))
        if writer is None:
            writer = pq.ParquetWriter(tmp, t.schema) if fmt == "parquet" else pacsv.CSVWriter(tmp, t.schema)
        if fmt == "parquet":
            writer.write_table(t, row_group_size=ROW_GROUP)
        else:
            writer.write_table(t)
    writer.close()
    os.replace(tmp, path)
    return time.perf_counter() - t0


CHILD = r"""
import json, re, resource, sys, time
def rss():  # resident memory now, split into anonymous and file-backed (mapped cache pages) MiB
    d = dict(re.findall(r"(RssAnon|RssFile):\s+(\d+)", open("/proc/self/status").read()))
    return {k: int(v) // 1024 for k, v in d.items()}
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t00 = time.perf_counter()
from mtlrec.data.datasets import load_dataset
t0 = time.perf_counter()
a = json.loads(sys.argv[1])
b = load_dataset("files", **a)
seconds, prep_peak = time.perf_counter() - t0, peak()
n = sum(len(s) for s in b.splits.values())
from mtlrec.data.batches import BatchIterator
bi = BatchIterator(b.train, 2048, shuffle=True, block=4096)
k, it = min(200, len(bi)), bi.epoch(0)
t1 = time.perf_counter()
for _ in range(k):
    next(it)
block = {"block_batches_per_s": k / (time.perf_counter() - t1), "block_rss": rss(), "block_peak_rss_mib": peak()}
next(iter(BatchIterator(b.train, 2048, shuffle=True)))
print(json.dumps({"seconds": seconds, "import_s": t0 - t00, "rows": n, "cache": b.meta.get("cache"),
                  "peak_rss_mib": prep_peak, **block, "rows_rss": rss(), "rows_peak_rss_mib": peak()}))
"""

PEER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np, pandas as pd
from sklearn.preprocessing import LabelEncoder, StandardScaler
df = pd.read_csv(sys.argv[1])
cats = [f"C{i}" for i in range(1, 27)]
nums = [f"I{i}" for i in range(1, 14)]
for c in cats:
    df[c] = LabelEncoder().fit_transform(df[c].astype(str))
df[nums] = df[nums].fillna(df[nums].mean())
df[nums] = np.log1p(df[nums] - df[nums].min())
df[nums] = StandardScaler().fit_transform(df[nums])
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(df),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(code: str, args: list[str], python: str = sys.executable) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def int32_size(rows: int) -> int:
    """Bytes of the encoded columns at 4 bytes per value: ids, numeric values, labels and masks."""
    return rows * 4 * (N_CAT + N_NUM + 2 * 2)


def main() -> None:
    p = base_parser("preprocess", __doc__.splitlines()[0])
    p.add_argument("--rows", default="2000000,10000000,20000000", help="comma-separated row counts")
    p.add_argument("--formats", default="parquet,csv", help="parquet, csv or both")
    p.add_argument("--workdir", default=None, help="where data and caches go (default: a temporary folder)")
    p.add_argument("--peers", action="store_true", help="also run pandas + LabelEncoder on the smallest CSV")
    p.add_argument(
        "--peers-python",
        default=str(Path(os.environ.get("PEERS_VENV", "/work/peers-venv")) / "bin" / "python"),
        help="a python with pandas and scikit-learn (default: the venv of benchmarks/peers/setup_peers.sh)",
    )
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    args = p.parse_args()
    if args.quick and args.rows == p.get_default("rows"):
        args.rows = "200000"
    sizes = [int(x) for x in args.rows.split(",")]
    formats = [f.strip() for f in args.formats.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mtlrec-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "schema.json").write_text(json.dumps(schema_dict()))
    rows_out: list[dict] = []
    try:
        for n in sizes:
            for fmt in formats:
                path = work / f"criteo_like_{n}.{'parquet' if fmt == 'parquet' else 'csv'}"
                gen_s = generate(path, n, fmt) if not path.exists() else 0.0
                cache = work / f"cache_{n}_{fmt}"
                shutil.rmtree(cache, ignore_errors=True)
                params = {"schema": str(work / "schema.json"), "train": str(path), "cache_dir": str(cache)}
                first = run_child(CHILD, [json.dumps(params)])
                cached = run_child(CHILD, [json.dumps(params)])
                size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
                row = {
                    "system": "mtlrec",
                    "format": fmt,
                    "rows": n,
                    "file_mib": round(path.stat().st_size / 2**20, 1),
                    "generate_s": round(gen_s, 2),
                    "first_run_s": round(first["seconds"], 2),
                    "rows_per_s": round(n / first["seconds"]),
                    "peak_rss_mib": round(first["peak_rss_mib"]),
                    "cache_mib": round(size / 2**20, 1),
                    "int32_mib": round(int32_size(n) / 2**20, 1),
                    "cached_load_s": round(cached["seconds"], 2),
                    "import_s": round(first["import_s"], 2),
                    "cached_peak_rss_mib": round(cached["peak_rss_mib"]),
                    # training reads from the cache: 200 block-shuffled batches (pread windows), then one
                    # row-shuffled batch gathered from the memory maps (its pages count as file-backed RSS)
                    "block_peak_rss_mib": round(cached["block_peak_rss_mib"]),
                    "block_rss_file_mib": cached["block_rss"]["RssFile"],
                    "rows_batch_rss_anon_mib": cached["rows_rss"]["RssAnon"],
                    "rows_batch_rss_file_mib": cached["rows_rss"]["RssFile"],
                }
                rows_out.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(cache, ignore_errors=True)
        if args.peers:
            n = min(sizes)
            path = work / f"criteo_like_{n}.csv"
            if not path.exists():
                generate(path, n, "csv")
            peer = run_child(PEER, [str(path)], python=args.peers_python)
            rows_out.append(
                {
                    "system": "pandas + LabelEncoder",
                    "format": "csv",
                    "rows": n,
                    "first_run_s": round(peer["seconds"], 2),
                    "rows_per_s": round(n / peer["seconds"]),
                    "peak_rss_mib": round(peer["peak_rss_mib"]),
                }
            )
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cols = ["system", "format", "rows", "first_run_s", "rows_per_s", "peak_rss_mib", "cache_mib", "int32_mib"]
    print(markdown_table(rows_out, cols + ["cached_load_s"]))
    write_results("preprocess", command_line(), rows_out, args.quick, args.out, threads=os.cpu_count())


if __name__ == "__main__":
    run_script(main)
