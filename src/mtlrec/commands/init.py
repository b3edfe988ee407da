"""``mtlrec init DATA_FILE``: a schema and an experiment config guessed from a data file, commented for editing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
import yaml

from mtlrec.errors import UserError


def _flow(value: Any) -> str:
    """A YAML flow scalar or collection on one line."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _entry(fields: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in fields.items()) + "}"


def schema_text(guesses: list, data_file: Path, rows: int) -> str:
    feats = [g for g in guesses if g.kind != "task"]
    tasks = [g for g in guesses if g.kind == "task"]
    lines = [
        f"# Schema guessed by `mtlrec init` from {data_file} ({rows:,} rows read). One entry per column; edit freely:",
        "#   kind: categorical (options min_count, hash_buckets) | numeric (transform: standardize | log | quantile |",
        "#   none) | multi_valued (separator, max_len, pooling: mean | sum). Tasks: type binary | regression, mask",
        "#   (the label column whose 1 rows are the task's sample space, e.g. purchase on clicked rows).",
        "features:",
    ]
    width = max((len(_entry({"name": g.column, "kind": g.kind, **g.options})) for g in feats), default=0) + 2
    for g in feats:
        entry = _entry({"name": g.column, "kind": g.kind, **g.options})
        lines.append(f"  - {entry:<{width}}# {g.reason}")
    lines.append("tasks:")
    for g in tasks:
        lines.append(f"  - {_entry({'name': g.column, 'type': 'binary'}):<{width}}# {g.reason}")
    return "\n".join(lines) + "\n"


def experiment_text(name: str, data_file: Path, schema: Path, separator: str, task: str, rows: int) -> str:
    batch = int(min(1024, max(32, 2 ** int(np.log2(max(rows // 20, 1))))))
    return f"""# Experiment written by `mtlrec init {data_file}` (guessed; edit freely; docs/experiments.md lists every key).
#   mtlrec train {name}.yaml                 # validate, train, compare; runs under out_dir
#   mtlrec train {name}.yaml --set train.epochs=1      # any key can be overridden
# Paths are relative to the folder you run mtlrec from.
name: {_flow(name)}
data:
  name: files                       # your own CSV / Parquet files with a schema (`mtlrec datasets` lists readers)
  params:
    schema: {_flow(str(schema))}
    train: {_flow(str(data_file))}   # one file: split 80/10/10 at random (split_seed); or give valid: and test: files
    separator: {_flow(separator)}
model_defaults:                      # parameters every model gets (`mtlrec models` lists the models)
  embedding_dim: 8
  tower_hidden: [32]
models:                              # one row of the comparison table each; label: names a variant
  - {{name: mmoe, params: {{num_experts: 4, expert_hidden: [32]}}}}
  - {{name: shared_bottom, params: {{bottom_hidden: [64]}}}}
train:
  epochs: 5
  batch_size: {batch}
  lr: 0.001
  patience: 2                        # early stopping on the validation monitor
  monitor: {_flow(task + ".auc")}            # task.metric or mean.metric
  # loggers: [tensorboard, mlflow]   # optional tracking (pip install 'mtlrec[tracking]')
seeds: [0]
out_dir: {_flow("runs/" + name)}
"""


def init(
    data_file: Path = typer.Argument(..., help="A CSV (any separator, .gz) or Parquet file with a header row"),
    out: Path = typer.Option(Path("my_experiment.yaml"), "--out", "-o", help="The experiment config to write"),
    schema: Path | None = typer.Option(None, help="The schema file to write (default: <out>.schema.yaml)"),
    separator: str = typer.Option(",", help="CSV separator"),
    force: bool = typer.Option(False, help="Replace files that exist"),
) -> None:
    """Write a schema and an experiment config guessed from a data file: strings -> categorical, floats ->
    numeric, 0/1 columns -> candidate binary tasks (label-like names chosen), 'a|b' lists -> multi-valued, huge
    id columns hashed. Both files are commented; the config validates and trains as written.

    Example:

      mtlrec init events.csv --out my_experiment.yaml && mtlrec train my_experiment.yaml
    """
    from mtlrec.config import validate_config
    from mtlrec.data.infer import guess_schema
    from mtlrec.data.readers import read_table
    from mtlrec.experiment import load_config

    if not data_file.exists():
        raise UserError(f"{data_file}: file not found")
    schema = schema or out.with_name(out.name.removesuffix(".yaml").removesuffix(".yml") + ".schema.yaml")
    for path in (out, schema):
        if path.exists() and not force:
            raise UserError(f"{path} exists; pass --force to replace it or --out/--schema for other names")
    guesses = guess_schema(data_file, separator)
    tasks = [g for g in guesses if g.kind == "task"]
    if not tasks:
        raise UserError(
            f"{data_file}: no 0/1 column to use as a task; add a label column, or write the tasks of the schema by hand"
        )
    rows = read_table(data_file, separator=separator).num_rows
    name = out.name.removesuffix(".yaml").removesuffix(".yml")
    schema.parent.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    schema.write_text(schema_text(guesses, data_file, rows))
    out.write_text(experiment_text(name, data_file, schema, separator, tasks[0].column, rows))
    validate_config(load_config(out), str(out))
    for g in guesses:
        typer.echo(f"  {g.column:<24} {g.kind:<13} {g.reason}")
    typer.echo(f"wrote {schema} (schema) and {out} (experiment); next: mtlrec train {out}")


def register(app: typer.Typer) -> None:
    """Add the ``init`` command to the ``mtlrec`` typer app."""
    app.command("init")(init)
