"""The ``mtlrec`` command line: train, evaluate, models, datasets (more commands in ``mtlrec.commands``)."""

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
) -> None:
    """Evaluate a trained run on a split of its data set and print the metrics as JSON.

    Example: mtlrec evaluate runs/default/mmoe/seed0 --split valid
    """
    from mtlrec.experiment import load_run
    from mtlrec.train.trainer import evaluate as evaluate_model

    model, info = load_run(run_dir, checkpoint)
    bundle = _bundle_for(info)
    scores = evaluate_model(model, bundle.splits[split])
    typer.echo(json.dumps({"run": str(run_dir), "split": split, "metrics": scores}, indent=2))


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
