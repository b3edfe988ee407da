"""Batch scoring (``mtlrec predict``): raw rows streamed from CSV/Parquet, encoded with the run's fitted
preprocessing one record batch at a time, scored by eager PyTorch or onnxruntime, and written in input order in
streamed chunks beside the ``--keep`` columns. Memory stays bounded by the batch size, whatever the file size.

Drift: per vocabulary field, the share of the (non-null) values that were out of vocabulary; a categorical column
whose values are written differently from training (integers at scoring where training saw ``"021"`` text, floats
where training saw integers) is cast to the training form and reported, never encoded silently as all-OOV.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlrec.data.preprocess import EncodedData, Preprocessor
from mtlrec.errors import UserError, did_you_mean
from mtlrec.export.contract import value_type
from mtlrec.export.exporters import compiled_runner, eager_runner, export_module, load_runner, max_abs_diff
from mtlrec.export.graph import InferenceModule, encoded_inputs, output_specs
from mtlrec.export.reduced import cast, check_precision, mean_abs_diff, within
from mtlrec.export.reduced import tolerance as precision_tolerance
from mtlrec.export.run import ParityError, load_run_model, run_split
from mtlrec.schema import CategoricalFeature, MultiValuedFeature, NumericFeature, SchemaError

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet"}
ENGINES = ("torch", "onnx", "compile")
#: the precisions of each engine (``mtlrec.export.reduced``): bf16 casts the weights once, int8 is onnxruntime's
#: dynamic quantization
ENGINE_PRECISIONS = {"torch": ("fp32", "bf16"), "onnx": ("fp32", "int8"), "compile": ("fp32", "bf16")}
DEFAULT_BATCH_ROWS = 65536


def output_format(path: str | Path) -> str:
    """``csv`` or ``parquet`` from the output file name; anything else fails before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"--out {path}: the scores file must end in .csv or .parquet, not {suffix or 'nothing'!r}")
    return OUTPUT_FORMATS[suffix]


def input_format(path: str | Path) -> str:
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise UserError(f"--file {path}: rows must be a .csv, .tsv, .txt (optionally .gz) or .parquet file")


# ---- reading ---------------------------------------------------------------------------------------------------
def file_columns(path: Path, fmt: str, separator: str) -> list[str]:
    if fmt == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=separator))
    names = list(reader.schema.names)
    reader.close()
    return names


def iter_batches(
    path: Path,
    fmt: str,
    columns: list[str],
    batch_rows: int,
    *,
    separator: str = ",",
    column_types: dict[str, pa.DataType] | None = None,
) -> Iterator[pa.Table]:
    """The file's ``columns`` as tables of at most ``batch_rows`` rows, in file order, never the whole file."""
    if fmt == "parquet":
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([rb])
        return
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types=column_types or {},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        parse_options=pacsv.ParseOptions(delimiter=separator),
        convert_options=convert,
    )
    for rb in reader:
        for lo in range(0, rb.num_rows, batch_rows):
            yield pa.Table.from_batches([rb.slice(lo, batch_rows)])


# ---- encoding ----------------------------------------------------------------------------------------------------
@dataclass
class FieldDrift:
    name: str
    column: str
    values: int = 0  # non-null values (items, for multi-valued fields)
    oov: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def oov_share(self) -> float:
        return self.oov / self.values if self.values else 0.0

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _coerce_categorical(col: pa.ChunkedArray, vt: dict[str, Any]) -> tuple[pa.ChunkedArray, str | None]:
    """The column as text written the way the training values were (see :func:`~mtlrec.export.contract.value_type`),
    and a note when that needed a cast."""
    training, width = vt["value_type"], vt.get("zero_padded_width")
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_null(col.type):
        return pc.cast(col, pa.string()), None
    note = None
    if pa.types.is_floating(col.type):
        finite = pc.drop_null(col)
        integral = len(finite) == 0 or pc.all(pc.equal(finite, pc.floor(finite))).as_py()
        if integral and (training == "integer" or width):
            col, note = pc.cast(col, pa.int64()), "floats at scoring, integers at training: cast to integers"
        else:
            return pc.cast(col, pa.string()), "floats at scoring, text at training: compared as text"
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        text = pc.cast(col, pa.string())
        if width:
            return pc.utf8_lpad(
                text, width, "0"
            ), f"integers at scoring, {width}-digit zero-padded text at training: padded with zeros"
        if training != "integer":
            return text, note or "integers at scoring, text at training: compared as text"
        return text, note
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return pc.cast(col, pa.string()), f"{col.type} at scoring: compared as text"
    if training == "integer":
        try:
            canon = pc.cast(pc.cast(col, pa.int64()), pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return col, None
        changed = pc.sum(pc.cast(pc.not_equal(canon, col), pa.int64())).as_py() or 0
        if changed:
            return canon, "text at scoring written differently from training's integers (e.g. '021' for 21): rewritten"
        return col, None
    if width:
        short = pc.and_(pc.match_substring_regex(col, r"^[0-9]+$"), pc.less(pc.utf8_length(col), width))
        if pc.any(short).as_py():
            padded = pc.if_else(short, pc.utf8_lpad(col, width, "0"), col)
            return padded, f"digit strings shorter than training's {width} digits: padded with zeros"
    return col, None


class BatchEncoder:
    """Encodes raw record batches with a run's fitted preprocessing (``Preprocessor.transform``), coercing
    categorical columns to their training form, filling numeric columns missing in a whole batch (or absent from
    the file) as training fills a missing value, and counting out-of-vocabulary values per field."""

    def __init__(self, state: dict[str, Any], present: list[str]) -> None:
        self.pre = Preprocessor.from_state_dict(state)
        self.schema = self.pre.schema
        self.layout = self.pre.layout()
        self.drift: dict[str, FieldDrift] = {}
        self.absent_numeric: list[str] = []
        self.value_types: dict[str, dict[str, Any]] = {}
        self._vocab_arrays: dict[str, pa.Array] = {}
        missing = []
        for f in self.schema.features:
            if f.source in present:
                continue
            if isinstance(f, NumericFeature):
                self.absent_numeric.append(f.source)
            else:
                missing.append(f.source)
        if missing:
            raise UserError(
                f"--file: missing categorical column {missing[0]!r}{did_you_mean(missing[0], present)}; "
                f"the run's schema needs {sorted({f.source for f in self.schema.features})}"
            )
        for f in self.schema.features:
            if isinstance(f, CategoricalFeature | MultiValuedFeature) and f.name in self.pre.vocabularies:
                vocab = self.pre.vocabularies[f.name]
                self.value_types.setdefault(f.source, value_type(vocab))
                self._vocab_arrays[f.name] = pa.array(vocab, pa.string())
                self.drift[f.name] = FieldDrift(f.name, f.source)

    def columns(self) -> list[str]:
        return list(dict.fromkeys(f.source for f in self.schema.features if f.source not in self.absent_numeric))

    def csv_types(self) -> dict[str, pa.DataType]:
        """Read categorical columns as text (``"021"`` stays ``"021"``) and numeric ones as float64."""
        types: dict[str, pa.DataType] = {}
        for f in self.schema.features:
            if f.source not in self.absent_numeric:
                types.setdefault(f.source, pa.float64() if isinstance(f, NumericFeature) else pa.string())
        return types

    def encode(self, table: pa.Table, source: str) -> EncodedData:
        n = table.num_rows
        cols: dict[str, pa.ChunkedArray] = {}
        for f in self.schema.features:
            if f.source in cols:
                continue
            if f.source in self.absent_numeric:
                cols[f.source] = pa.chunked_array([pa.nulls(n, pa.float64())])
                continue
            col = table.column(f.source)
            if isinstance(f, CategoricalFeature) and f.name in self.drift:
                col, note = _coerce_categorical(col, self.value_types[f.source])
                if note:
                    self.drift[f.name].note(note)
            elif not isinstance(f, NumericFeature) and not pa.types.is_string(col.type):
                col = pc.cast(col, pa.string())
            cols[f.source] = col
        enc_table = pa.table(cols)
        all_missing = [f for f in self.schema.numeric if _all_missing(enc_table.column(f.source))]
        if all_missing and n:
            enc_table = self._with_anchor_row(enc_table, all_missing)
        try:
            data = self.pre.transform(enc_table, source=source, labels=False)
        except SchemaError as exc:
            raise UserError(str(exc)) from exc
        if all_missing and n:
            data = data.take(np.arange(1, n + 1))
        self._count_oov(enc_table.slice(1) if all_missing and n else enc_table, data)
        return data

    def _with_anchor_row(self, table: pa.Table, features: list[NumericFeature]) -> pa.Table:
        """Prepend one row whose all-missing numeric columns hold their fill value, so that the transform (which
        refuses a column missing in every row, a sign of a wrong training file) encodes the real rows as missing,
        exactly as training encodes a missing value; the caller drops the row again."""
        sources = {f.source: self.pre.numeric_stats[f.name]["fill"] for f in features}
        cols, anchor = [], []
        for name in table.column_names:
            col = table.column(name)
            if name in sources:
                col = pc.cast(col, pa.float64())
                anchor.append(pa.array([sources[name]], pa.float64()))
            else:
                anchor.append(col.slice(0, 1).combine_chunks())
            cols.append(col)
        body = pa.table(cols, names=table.column_names)
        head = pa.table(anchor, names=table.column_names)
        return pa.concat_tables([head, body])

    def _count_oov(self, table: pa.Table, data: EncodedData) -> None:
        cat_pos = {name: j for j, (name, _) in enumerate(self.layout.categorical)}
        for f in self.schema.features:
            d = self.drift.get(f.name)
            if d is None:
                continue
            col = table.column(f.source)
            if isinstance(f, CategoricalFeature):
                valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), bool)
                ids = data.cat[:, cat_pos[f.name]]
                d.values += int(valid.sum())
                d.oov += int(((ids == 0) & valid).sum())
            else:
                items = pc.list_flatten(pc.split_pattern(pc.fill_null(col, ""), f.separator))
                items = pc.filter(items, pc.not_equal(items, ""))
                d.values += len(items)
                d.oov += int(
                    pc.sum(pc.cast(pc.is_null(pc.index_in(items, self._vocab_arrays[f.name])), pa.int64())).as_py() or 0
                )


def _all_missing(col: pa.ChunkedArray) -> bool:
    if len(col) == 0:
        return False
    if col.null_count == len(col):
        return True
    x = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    return not np.isfinite(x).any()


# ---- writing -------------------------------------------------------------------------------------------------------
class ScoreWriter:
    """Appends score tables to a CSV or Parquet file, written under a temporary name and renamed when closed."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = Path(path), fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.writer: Any = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            cls = pq.ParquetWriter if self.fmt == "parquet" else pacsv.CSVWriter
            self.writer = cls(str(self.tmp), table.schema)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


# ---- engines -------------------------------------------------------------------------------------------------------
def onnx_cache(
    run_dir: Path, module: InferenceModule, checkpoint: str, model_name: str, precision: str = "fp32"
) -> Path:
    """The run's ONNX export for ``--engine onnx`` (``<run>/export/<checkpoint>.onnx``, ``<checkpoint>.int8.onnx``
    for ``--precision int8``), re-exported when the checkpoint changed since it was written."""
    ckpt = run_dir / f"{checkpoint}.pt"
    st = ckpt.stat()
    stamp = {"checkpoint": ckpt.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "precision": precision}
    name = checkpoint if precision == "fp32" else f"{checkpoint}.{precision}"
    path = run_dir / "export" / f"{name}.onnx"
    stamp_path = path.with_suffix(".onnx.json")
    if path.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.onnx")
    try:
        export_module(module, "onnx", tmp, model_name, precision=precision)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    stamp_path.write_text(json.dumps(stamp))
    return path


@dataclass
class Engine:
    name: str
    module: InferenceModule
    outputs: list[str]
    run: Any
    precision: str = "fp32"
    checked: bool = False
    parity: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if self.precision == "fp32" else f"{self.name} {self.precision}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.run(feeds)
        if not self.checked and (self.name != "torch" or self.precision != "fp32"):  # on the first batch, always
            ref = eager_runner(self.module)(feeds)
            self.parity = {"max_abs_diff": max_abs_diff(ref, out)}
            if self.precision != "fp32":
                self.parity["mean_abs_diff"] = mean_abs_diff(ref, out)
            failed = within(self.parity, precision_tolerance(self.precision))
            if failed:
                raise ParityError(
                    f"parity check failed: the {self.label} engine differs from eager PyTorch (fp32) by "
                    f"{failed} on the first {len(next(iter(out.values())))} rows"
                )
            self.checked = True
        return out


def make_engine(
    run_dir: Path, engine: str, device: str, checkpoint: str, precision: str = "fp32"
) -> tuple[Engine, dict[str, Any]]:
    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device must be cpu or cuda[:N], got {device!r}")
    check_precision(f"--engine {engine}", precision, ENGINE_PRECISIONS[engine], device=device)
    model, info = load_run_model(run_dir, checkpoint)
    module = InferenceModule(model)
    outputs = [s.name for s in output_specs(model)]
    if engine == "torch":
        return Engine("torch", module, outputs, eager_runner(cast(module, precision), device), precision), info
    if engine == "compile":
        return Engine("compile", module, outputs, compiled_runner(module, precision, device), precision), info
    path = onnx_cache(Path(run_dir), module, checkpoint, info["model"], precision)
    return Engine("onnx", module, outputs, load_runner("onnx", path, outputs, device=device), precision), info


def _score_table(engine: Engine, data: EncodedData) -> dict[str, np.ndarray]:
    return engine(encoded_inputs(data))


# ---- the two entry points -------------------------------------------------------------------------------------------
def predict_file(
    run_dir: str | Path,
    file: str | Path,
    out: str | Path,
    *,
    keep: list[str] | tuple[str, ...] = (),
    engine: str = "torch",
    device: str = "cpu",
    checkpoint: str = "best",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    separator: str = ",",
    oov_warn: float = 0.2,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Score a raw CSV/Parquet file to ``out``; returns the report (rows, seconds, drift, warnings)."""
    out_fmt = output_format(out)
    file, run_dir = Path(file), Path(run_dir)
    if not file.exists():
        raise UserError(f"--file {file}: file not found")
    in_fmt = input_format(file)
    if batch_rows <= 0:
        raise UserError(f"--batch-rows must be positive, got {batch_rows}")
    eng, info = make_engine(run_dir, engine, device, checkpoint, precision)
    present = file_columns(file, in_fmt, separator)
    for k in keep:
        if k not in present:
            raise UserError(f"--keep {k!r}: no such column in {file}{did_you_mean(k, present)}")
    score_cols = [f"score_{n}" for n in eng.outputs]
    clash = [k for k in keep if k in score_cols]
    if clash:
        raise UserError(f"--keep {clash[0]!r}: the name of a score column; rename the column in the file")
    enc = BatchEncoder(info["preprocessor"], present)
    columns = list(dict.fromkeys([*enc.columns(), *keep]))
    types = {c: t for c, t in enc.csv_types().items() if c not in keep}
    writer = ScoreWriter(Path(out), out_fmt)
    t0 = time.perf_counter()
    try:
        for table in iter_batches(file, in_fmt, columns, batch_rows, separator=separator, column_types=types):
            if table.num_rows == 0:
                continue
            scores = _score_table(eng, enc.encode(table, str(file)))
            cols = {k: table.column(k) for k in keep}
            cols.update({c: pa.array(scores[n]) for c, n in zip(score_cols, eng.outputs, strict=True)})
            writer.write(pa.table(cols))
        if writer.rows == 0:
            raise UserError(f"--file {file}: the file has no data rows")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - t0
    return _report(writer, eng, seconds, enc, oov_warn)


def predict_split(
    run_dir: str | Path,
    split: str,
    out: str | Path,
    *,
    engine: str = "torch",
    device: str = "cpu",
    checkpoint: str = "best",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    keep: list[str] | tuple[str, ...] = (),
    precision: str = "fp32",
) -> dict[str, Any]:
    """Score an (already encoded) split of the run's data set to ``out``. ``keep`` may name ``row`` (the row's
    position in the split) and task names (the row's label; NaN outside the task's sample space)."""
    out_fmt = output_format(out)
    eng, info = make_engine(Path(run_dir), engine, device, checkpoint, precision)
    data = run_split(info, split)
    allowed = ["row", *data.task_names]
    for k in keep:
        if k not in allowed:
            raise UserError(
                f"--keep {k!r}{did_you_mean(k, allowed)}: with --split, keep one of {', '.join(allowed)} "
                "(raw columns need --file)"
            )
    writer = ScoreWriter(Path(out), out_fmt)
    t0 = time.perf_counter()
    try:
        for lo in range(0, len(data), batch_rows):
            sl = slice(lo, lo + batch_rows)
            scores = eng(encoded_inputs(data, sl))
            cols: dict[str, Any] = {}
            for k in keep:
                if k == "row":
                    cols[k] = pa.array(np.arange(lo, min(lo + batch_rows, len(data)), dtype=np.int64))
                else:
                    j = data.task_names.index(k)
                    cols[k] = pa.array(np.where(data.masks[sl, j] > 0, data.labels[sl, j], np.nan))
            cols.update({f"score_{n}": pa.array(scores[n]) for n in eng.outputs})
            writer.write(pa.table(cols))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return _report(writer, eng, time.perf_counter() - t0, None, 1.0)


def _report(writer: ScoreWriter, eng: Engine, seconds: float, enc: BatchEncoder | None, oov_warn: float) -> dict:
    drift, warnings = [], []
    if enc is not None:
        for col in enc.absent_numeric:
            warnings.append(f"column {col!r} is absent from the file: every row encoded as a missing value")
        for d in enc.drift.values():
            drift.append(
                {"field": d.name, "column": d.column, "values": d.values, "oov_share": d.oov_share, "notes": d.notes}
            )
            for note in d.notes:
                warnings.append(f"column {d.column!r} (field {d.name}): {note}")
            if d.oov_share > oov_warn:
                warnings.append(
                    f"field {d.name}: {d.oov_share:.1%} of {d.values} values out of vocabulary "
                    f"(above --oov-warn {oov_warn:.0%})"
                )
    return {
        "out": str(writer.path),
        "rows": writer.rows,
        "engine": eng.name,
        "precision": eng.precision,
        "parity": eng.parity,
        "seconds": seconds,
        "rows_per_s": writer.rows / seconds if seconds > 0 else float("inf"),
        "drift": drift,
        "warnings": warnings,
    }
