"""Ali-CCP (Alibaba Click and Conversion Prediction; Ma et al., "Entire Space Multi-Task Model", SIGIR'18), the
data set of ESMM, AITM (Xi et al., KDD'21) and DEPHN (MODELS.md A.1.2).

Download: https://tianchi.aliyun.com/dataset/408 (Tianchi's terms: academic research use, cite ESMM). Two input
formats are read:

* ``format="raw"``: the published files ``sample_skeleton_{train,test}.csv`` (``sample_id, click, buy, md5,
  feature_num, feature_list``; ≈ 42.3M / 43.0M rows) and ``common_features_{train,test}.csv`` (``md5,
  feature_num, feature_list``: the user-side features shared by many samples). A feature list is
  ``field\\x02id\\x03value`` entries joined by ``\\x01``; a sample's features are its own list plus the common list
  of its ``md5`` index. The files are streamed in record batches (pyarrow) and converted once, in bounded memory,
  into processed Parquet shards (``click, purchase`` and one int64 column per field, null when absent) under the
  cache folder; the shards are then encoded by the streaming encoder (:mod:`mtlrec.data.stream`), batch by batch into memory-mapped columns.
* ``format="processed"``: CSV files already preprocessed (the torch-rechub / sample layout: ``click, purchase``,
  one column per field id such as ``101, 121, …, 301``, ``D*`` dense columns), given as train/valid/test files.

Protocol (AITM ``process_public_dataset.py``, followed by DEPHN): rows with ``click = 0`` and ``buy = 1`` dropped;
the 18 fields :data:`AITM_FIELDS`; feature ids seen at most 10 times in training are out of vocabulary
(``min_count=11``; counted on the training split here, AITM counts on the official train file before its dev
split); the official train file split 90/10 into train/dev at random (``split_seed`` 2020 as AITM; each row's side is drawn from the seed while streaming, so the dev share is 10% in expectation, not to the row), the official
test file is the test set. Tasks (``tasks``): ``ctr_ctcvr`` (``click`` and ``purchase`` on all impressions: AITM's
and DEPHN's setting, purchase implies click) or ``ctr_cvr`` (purchase on clicked rows: ESMM's CVR, with its CTCVR
reported by the ESMM model's metrics).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlrec.data.bundle import DataBundle, default_cache_dir
from mtlrec.data.datasets import register_dataset
from mtlrec.data.datasets.movielens import _fingerprint, default_data_dir
from mtlrec.data.store import cache_key
from mtlrec.data.stream import FileReader, ReadOptions, load_stream
from mtlrec.errors import UserError, unknown_name
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, TaskSpec

#: the 18 fields of AITM's preprocessing (user 101-129, item 205-216, combination 508-853, context 301)
AITM_FIELDS = [
    "101", "121", "122", "124", "125", "126", "127", "128", "129",
    "205", "206", "207", "216", "508", "509", "702", "853", "301",
]  # fmt: skip
SKELETON_COLUMNS = ["sample_id", "click", "buy", "md5", "feature_num", "feature_list"]
COMMON_COLUMNS = ["md5", "feature_num", "feature_list"]
TASK_SETS = {
    "ctr_ctcvr": [TaskSpec("ctr", label="click"), TaskSpec("ctcvr", label="purchase")],
    "ctr_cvr": [TaskSpec("ctr", label="click"), TaskSpec("cvr", label="purchase", mask="click")],
}
FORMATS = ("raw", "processed")
_ENTRY = r"^(?P<field>[^\x02]*)\x02(?P<id>[^\x03]*)\x03(?P<value>.*)$"


# ---- raw format: streamed conversion ------------------------------------------------------------------------------
def parse_feature_lists(lists: pa.Array | pa.ChunkedArray, fields: list[str]) -> dict[str, np.ndarray]:
    """``field\\x02id\\x03value`` entries joined by ``\\x01``, one list per row → ``{field: int64 ids}`` (``-1`` where
    the row has no entry of the field; the last entry wins where it has several). Vectorised over all entries."""
    lists = pc.fill_null(lists, "")
    n = len(lists)
    entries = pc.split_pattern(lists, "\x01")
    parents = np.asarray(pc.list_parent_indices(entries).to_numpy(zero_copy_only=False), np.int64)
    parts = pc.extract_regex(pc.list_flatten(entries), _ENTRY)
    field, ids = pc.struct_field(parts, "field"), pc.struct_field(parts, "id")
    keep = pc.fill_null(pc.is_in(field, value_set=pa.array(fields, pa.string())), False)
    field, ids = pc.filter(field, keep), pc.filter(ids, keep)
    rows = parents[np.asarray(keep.to_numpy(zero_copy_only=False), bool)]
    try:
        id_values = np.asarray(pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False), np.int64)
    except pa.ArrowInvalid as exc:
        raise UserError(f"ali_ccp: a feature id is not an integer ({exc}); is this the Ali-CCP raw format?") from exc
    field_np = np.asarray(field.to_numpy(zero_copy_only=False)).astype(str)
    out = {}
    for f in fields:  # a loop over the 18 fields, not rows
        col = np.full(n, -1, np.int64)
        m = field_np == f
        col[rows[m]] = id_values[m]
        out[f] = col
    return out


def _csv_batches(path: Path, names: list[str], block_size: int):
    read = pacsv.ReadOptions(column_names=names, block_size=block_size)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names if n in ("md5", "feature_list")})
    return pacsv.open_csv(path, read_options=read, convert_options=convert)


def read_common_features(path: Path, fields: list[str], block_size: int = 1 << 26) -> tuple[pa.Array, dict]:
    """The common-feature file streamed: its ``md5`` index and the ids of ``fields`` (int64, -1 = absent)."""
    md5s, cols = [], {f: [] for f in fields}
    for batch in _csv_batches(path, COMMON_COLUMNS, block_size):
        md5s.append(batch.column("md5"))
        for f, v in parse_feature_lists(batch.column("feature_list"), fields).items():
            cols[f].append(v)
    md5 = pa.concat_arrays(md5s) if md5s else pa.array([], pa.string())
    return md5, {f: np.concatenate(v) if v else np.zeros(0, np.int64) for f, v in cols.items()}


def convert_raw(
    skeleton: Path,
    common: Path,
    out_dir: Path,
    fields: list[str] = AITM_FIELDS,
    *,
    max_rows: int | None = None,
    block_size: int = 1 << 26,
) -> dict[str, int]:
    """Skeleton + common features → Parquet shards ``out_dir/part-*.parquet`` (``click, purchase`` and one int64
    column per field, null where absent), dropping ``click=0 & buy=1``. Memory: one record batch of the skeleton
    plus the common file's index and its field ids (not its feature lists). Returns row counts."""
    md5, common_cols = read_common_features(common, fields, block_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = kept = dropped = 0
    for k, batch in enumerate(_csv_batches(skeleton, SKELETON_COLUMNS, block_size)):
        if max_rows is not None and seen >= max_rows:
            break
        if max_rows is not None and seen + batch.num_rows > max_rows:
            batch = batch.slice(0, max_rows - seen)
        seen += batch.num_rows
        click = np.asarray(batch.column("click").to_numpy(zero_copy_only=False), np.int64)
        buy = np.asarray(batch.column("buy").to_numpy(zero_copy_only=False), np.int64)
        own = parse_feature_lists(batch.column("feature_list"), fields)
        idx = pc.index_in(batch.column("md5"), value_set=md5)
        has = np.asarray(pc.is_valid(idx).to_numpy(zero_copy_only=False), bool)
        at = np.asarray(pc.fill_null(idx, 0).to_numpy(zero_copy_only=False), np.int64)
        keep = ~((click == 0) & (buy == 1))
        dropped += int((~keep).sum())
        cols: dict[str, Any] = {"click": pa.array(click[keep]), "purchase": pa.array(buy[keep])}
        for f in fields:
            v = own[f]
            if len(md5):
                shared = np.where(has, common_cols[f][at], -1)
                v = np.where(v >= 0, v, shared)
            v = v[keep]
            cols[f] = pa.array(v, pa.int64(), mask=v < 0)
        pq.write_table(pa.table(cols), out_dir / f"part-{k:05d}.parquet")
        kept += int(keep.sum())
    (out_dir / "_SUCCESS").write_text(f"{seen} {kept} {dropped}\n")
    return {"rows_read": seen, "rows_kept": kept, "dropped_click0_buy1": dropped}


def processed_shards(root: Path, split: str, fields: list[str], max_rows: int | None, cache_dir) -> tuple[Path, dict]:
    """The processed shards of one official file (converted on first use, then reused)."""
    skeleton, common = root / f"sample_skeleton_{split}.csv", root / f"common_features_{split}.csv"
    for f in (skeleton, common):
        if not f.exists():
            raise FileNotFoundError(
                f"ali_ccp: {f} not found; download sample_skeleton_{{train,test}}.csv and "
                "common_features_{train,test}.csv from https://tianchi.aliyun.com/dataset/408 into data_dir"
            )
    key = cache_key("ali_ccp_raw", _fingerprint(skeleton), _fingerprint(common), fields, max_rows)
    out = Path(cache_dir or default_cache_dir()) / f"ali_ccp_processed-{key}" / split
    done = out / "_SUCCESS"
    if done.exists():
        seen, kept, dropped = (int(x) for x in done.read_text().split())
        return out, {"rows_read": seen, "rows_kept": kept, "dropped_click0_buy1": dropped}
    if out.exists():  # a conversion that did not finish
        for p in out.glob("part-*.parquet"):
            p.unlink()
    return out, convert_raw(skeleton, common, out, fields, max_rows=max_rows)


# ---- schema and loader --------------------------------------------------------------------------------------------
def ali_ccp_schema(fields: list[str], dense: list[str], tasks: str, min_count: int) -> Schema:
    if tasks not in TASK_SETS:
        raise unknown_name("ali_ccp tasks", tasks, TASK_SETS)
    feats: list[Any] = [CategoricalFeature(f"f{c}", column=c, min_count=min_count) for c in fields]
    feats += [NumericFeature(d, transform="none") for d in dense]
    return Schema(features=feats, tasks=[replace(t) for t in TASK_SETS[tasks]])


def _fields_of(columns: list[str], fields: str | list[str]) -> tuple[list[str], list[str]]:
    if fields == "aitm":
        return list(AITM_FIELDS), []
    if fields == "all":
        rest = [c for c in columns if c not in ("click", "purchase")]
        return [c for c in rest if not c.startswith("D")], [c for c in rest if c.startswith("D")]
    return [str(f) for f in fields], []


@register_dataset(
    "ali_ccp",
    description="Ali-CCP (ESMM/AITM/DEPHN): raw skeleton + common-feature files (streamed to Parquet shards) or "
    "processed CSVs; AITM protocol (drop click=0&buy=1, 18 fields, ids seen <=10 times OOV, 90/10 train/dev); "
    "tasks ctr+ctcvr or ctr+cvr",
    source="sample_skeleton_{train,test}.csv + common_features_{train,test}.csv in data_dir (Tianchi 408), or "
    "processed train/valid/test CSVs",
)
def load_ali_ccp(
    data_dir: str | Path | None = None,
    format: str = "raw",
    tasks: str = "ctr_ctcvr",
    fields: str | list[str] = "aitm",
    min_count: int | None = None,
    dev_fraction: float = 0.1,
    split_seed: int = 2020,
    max_rows: int | None = None,
    train_file: str = "ali_ccp_train.csv",
    valid_file: str | None = "ali_ccp_val.csv",
    test_file: str = "ali_ccp_test.csv",
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> DataBundle:
    """``format="raw"`` reads the published files in ``data_dir``; ``"processed"`` reads ``train_file``,
    ``valid_file`` (``None``: a ``dev_fraction`` of train by ``split_seed``) and ``test_file`` in ``data_dir``.
    ``fields``: ``"aitm"`` (the 18), ``"all"`` (processed: every column, ``D*`` as dense) or a list of field ids.
    ``min_count`` (default 11 for raw, i.e. ids seen ≤ 10 times are OOV; 1 for processed files, already
    thresholded). ``max_rows``: the first rows of each raw skeleton file only (for a quick look)."""
    if format not in FORMATS:
        raise unknown_name("ali_ccp format", format, FORMATS)
    if not 0 < dev_fraction < 1:
        raise UserError(f"ali_ccp: dev_fraction must be in (0, 1), got {dev_fraction}")
    if tasks not in TASK_SETS:
        raise unknown_name("ali_ccp tasks", tasks, TASK_SETS)
    root = Path(data_dir) if data_dir else default_data_dir() / "ali-ccp"
    min_count = min_count if min_count is not None else (11 if format == "raw" else 1)

    split = [1 - dev_fraction, dev_fraction, 0.0]  # valid carved out of train by split_seed; test is its file
    if format == "raw":
        field_list, dense = _fields_of([], fields if fields != "all" else "aitm")
        shards = {s: processed_shards(root, s, field_list, max_rows, cache_dir) for s in ("train", "test")}
        inputs = {"train": shards["train"][0], "valid": None, "test": shards["test"][0]}
        conversion: dict[str, Any] | None = {s: c for s, (_, c) in shards.items()}

        def ids_as_strings(table: pa.Table) -> pa.Table:  # the shards hold int64 ids, the vocabularies strings
            return _ids_as_strings(table, field_list)

        transform: Any = ids_as_strings
    else:
        paths = {"train": root / train_file, "test": root / test_file}
        if valid_file:
            paths["valid"] = root / valid_file
        for p in paths.values():
            if not p.exists():
                raise FileNotFoundError(f"ali_ccp: {p} not found (format='processed' reads train/valid/test CSVs)")
        columns = FileReader(paths["train"], ReadOptions()).names()
        field_list, dense = _fields_of(columns, fields)
        missing = [c for c in field_list + dense if c not in columns]
        if missing:
            raise UserError(f"ali_ccp: field column {missing[0]!r} missing in {paths['train']}; it has {columns[:25]}")
        inputs = {"train": paths["train"], "valid": paths.get("valid"), "test": paths["test"]}
        conversion, transform = None, None
        if "valid" in paths:
            split = None

    schema = ali_ccp_schema(field_list, dense, tasks, min_count)
    bundle = load_stream(
        schema,
        inputs["train"],
        inputs["valid"],
        inputs["test"],
        name=f"ali_ccp_{format}",
        split=split,
        split_seed=split_seed,
        transform=transform,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
    bundle.meta.update(
        {
            "format": format,
            "protocol": "aitm",
            "tasks": tasks,
            "fields": field_list,
            "min_count": min_count,
            "dev": {"dev_fraction": dev_fraction, "split_seed": split_seed, "given_valid": split is None},
            "conversion": conversion,
        }
    )
    return bundle


def _ids_as_strings(table: pa.Table, fields: list[str]) -> pa.Table:
    for f in fields:
        if f not in table.column_names:
            raise UserError(f"ali_ccp: field column {f!r} missing; the file has {table.column_names[:25]}")
        i = table.column_names.index(f)
        table = table.set_column(i, f, pc.cast(table[f], pa.string()))
    return table
