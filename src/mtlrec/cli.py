"""The ``mtlrec`` command line: train, evaluate, predict, models, datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=False, help="Multi-task recommendation learning.", rich_markup_mode=None
)


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="Experiment YAML; omit to run the built-in default."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: --set train.epochs=3"),
    model: list[str] = typer.Option([], "--model", "-m", help="Train these registry models instead of the config's"),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2"),
    out: Path | None = typer.Option(None, help="Output folder (default: the config's out_dir)"),
    resume: bool = typer.Option(False, help="Continue each run from its last.pt checkpoint"),
    quiet: bool = typer.Option(False, help="No progress bars"),
    nproc: int = typer.Option(1, "--nproc", help="Train data-parallel in N local processes (torch elastic launcher)"),
) -> None:
    """Train the models of an experiment and print a comparison table (test metrics, mean ± std over seeds).

    With no arguments: generates the MMoE paper's synthetic data (two regression tasks, correlation 0.5) and
    trains MMoE against Shared-Bottom.

    Examples:

      mtlrec train

      mtlrec train configs/census_income.yaml --set train.epochs=5 --seeds 0,1,2

      mtlrec train configs/census_income.yaml -m mmoe -m ple --out runs/census
    """
    from mtlrec.experiment import apply_overrides, load_config, markdown_table, run_experiment, summarize

    if nproc > 1:  # N workers run this command with --nproc 1 (see mtlrec.train.distributed)
        from mtlrec.train.distributed import launch

        kwargs = dict(config=config, set_=set_, model=model, seeds=seeds, out=out, resume=resume, quiet=quiet, nproc=1)
        launch(nproc, train, kwargs)
        return
    from mtlrec.train.distributed import quiet_other_ranks

    quiet_other_ranks()  # under torchrun / --nproc: only rank 0 prints
    cfg = apply_overrides(load_config(config), list(set_))
    if model:
        cfg["models"] = [{"name": m} for m in model]
    if seeds:
        cfg["seeds"] = [int(s) for s in seeds.split(",")]
    if out:
        cfg["out_dir"] = str(out)
    typer.echo(
        f"experiment {cfg.get('name', '?')}: data {cfg['data']['name']}, "
        f"models {[m if isinstance(m, str) else m['name'] for m in cfg.get('models', [])]}, "
        f"seeds {cfg.get('seeds', [0])}, out {cfg.get('out_dir')}"
    )

    def report(row: dict) -> None:
        typer.echo(
            f"  {row['label']} seed {row['seed']}: best epoch {row['best_epoch']} "
            f"({row['monitor']}), test {json.dumps(_round(row['test']))}"
        )

    rows = run_experiment(cfg, progress=not quiet, resume=resume, on_result=report)
    typer.echo("\nTest split, mean ± std over seeds (selected on validation):\n")
    typer.echo(markdown_table(summarize(rows, "test")))
    if cfg.get("out_dir"):
        typer.echo(f"\nresults: {Path(cfg['out_dir']) / 'results.jsonl'}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mtlrec train` (holds run.json, best.pt)"),
    split: str = typer.Option("test", help="train, valid or test"),
    checkpoint: str = typer.Option("best", help="best or last"),
    device: str = typer.Option("cpu", help="Where to score: cpu, cuda, cuda:N or auto (any run loads anywhere)"),
) -> None:
    """Evaluate a trained run on a split of its data set and print the metrics as JSON.

    Example: mtlrec evaluate runs/default/mmoe/seed0 --split valid
    """
    from mtlrec.experiment import load_run
    from mtlrec.train.trainer import evaluate as evaluate_model

    model, info = load_run(run_dir, checkpoint)
    bundle = _bundle_for(info)
    scores = evaluate_model(model, bundle.splits[split], device=device)
    typer.echo(json.dumps({"run": str(run_dir), "split": split, "metrics": scores}, indent=2))


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mtlrec train`"),
    output: Path = typer.Option(..., "--out", "-o", help="Scores file: .csv or .parquet"),
    split: str = typer.Option("test", help="Which split of the run's data set to score"),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Score this CSV/Parquet file instead (labels optional)"
    ),
    separator: str = typer.Option(",", help="CSV separator of --file"),
    checkpoint: str = typer.Option("best", help="best or last"),
    device: str = typer.Option("cpu", help="Where to score: cpu, cuda, cuda:N or auto (any run loads anywhere)"),
) -> None:
    """Write one score column per task (probability for binary tasks, value for regression) to CSV or Parquet.

    The file is encoded with the run's own preprocessing (vocabularies and statistics fitted on its training
    split); unseen categories map to the out-of-vocabulary index.

    Examples:

      mtlrec predict runs/default/mmoe/seed0 --out scores.parquet

      mtlrec predict runs/mine/mmoe/seed0 --file new_events.csv.gz --out scores.csv
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from mtlrec.experiment import load_run
    from mtlrec.train.trainer import predict as predict_model

    model, info = load_run(run_dir, checkpoint)
    if file is not None:
        from mtlrec.data.preprocess import Preprocessor
        from mtlrec.data.readers import read_table

        pre = Preprocessor.from_state_dict(info["preprocessor"])
        data = pre.transform(read_table(file, separator=separator), source=str(file), labels=False)
    else:
        data = _bundle_for(info).splits[split]
    scores = predict_model(model, data, device=device)
    table = pa.table({f"score_{k}": v for k, v in scores.items()})
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".parquet":
        pq.write_table(table, output)
    elif output.suffix == ".csv":
        pacsv.write_csv(table, output)
    else:
        raise typer.BadParameter(f"--out must end in .csv or .parquet, got {output.name}")
    typer.echo(f"wrote {table.num_rows} rows × {table.num_columns} scores to {output}")


@app.command()
def models(family: str | None = typer.Option(None, help="Only this family")) -> None:
    """List the registered models (name, family, paper)."""
    from mtlrec.models.registry import list_models, model_info

    for name in list_models(family):
        info = model_info(name)
        typer.echo(f"{name:<22} {info['family']:<22} {info['paper']}")


@app.command()
def datasets() -> None:
    """List the built-in data sets and readers, and what files each needs."""
    from mtlrec.data.datasets import list_datasets

    for name, info in list_datasets().items():
        typer.echo(f"{name:<16} {info['description']}\n{'':<16} files: {info['source']}")


def _bundle_for(info: dict):
    from mtlrec.data.datasets import load_dataset

    name = info["data_meta"].get("dataset_name") or info["dataset"]
    params = info["data_meta"].get("load_params")
    if params is None:
        raise typer.BadParameter("this run does not record how to reload its data set")
    return load_dataset(name, **params)


def _round(d: dict) -> dict:
    return {t: {m: round(v, 4) for m, v in ms.items()} for t, ms in d.items()}


from mtlrec.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
