"""The ``mtlrec`` command line: train, evaluate, models, datasets (more commands in ``mtlrec.commands``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mtlrec.errors import UserError, debug_requested, report_user_errors, unknown_name

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Multi-task recommendation learning.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
_STATE = {"debug": False}


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (also MTLREC_DEBUG=1)"),
) -> None:
    """Multi-task recommendation learning."""
    if debug:
        _STATE["debug"] = True


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="Experiment YAML; omit to run the built-in default."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config key: --set train.epochs=3"),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="Only these rows of the config (labels), or registry models with its model_defaults"
    ),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2"),
    out: Path | None = typer.Option(None, help="Output folder (default: the config's out_dir, else runs/<name>)"),
    resume: bool = typer.Option(False, help="Continue each run that exists from its last.pt checkpoint"),
    overwrite: bool = typer.Option(False, help="Replace run folders that already exist"),
    quiet: bool = typer.Option(False, help="No progress bars"),
    nproc: int = typer.Option(1, "--nproc", help="Train data-parallel in N local processes (torch elastic launcher)"),
) -> None:
    """Train the models of an experiment and print a comparison table (test metrics, mean ± std over seeds).

    With no arguments: generates the MMoE paper's synthetic data (two regression tasks, correlation 0.5) and
    trains MMoE against Shared-Bottom. The config is validated as a whole before anything runs.

    Examples:

      mtlrec train

      mtlrec train configs/census_income.yaml --set train.epochs=5 --seeds 0,1,2

      mtlrec train configs/census_income.yaml -m mmoe -m ple --out runs/census
    """
    from mtlrec.config import validate_config
    from mtlrec.experiment import apply_overrides, load_config, markdown_table, run_experiment, summarize

    if nproc > 1:  # N workers run this command with --nproc 1 (see mtlrec.train.distributed)
        from mtlrec.train.distributed import launch

        kwargs = dict(
            config=config,
            set_=set_,
            model=model,
            seeds=seeds,
            out=out,
            resume=resume,
            overwrite=overwrite,
            quiet=quiet,
            nproc=1,
        )
        launch(nproc, train, kwargs)
        return
    from mtlrec.train.distributed import quiet_other_ranks

    quiet_other_ranks()  # under torchrun / --nproc: only rank 0 prints
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    source = str(config) if config else "built-in default config"
    cfg = apply_overrides(load_config(config), list(set_))
    if set_:
        source += " with --set"
    exp = validate_config(cfg, source)
    if model:
        exp.models = _pick_models(exp, model)
    if seeds:
        try:
            exp.seeds = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if out:
        exp.out_dir = str(out)
    typer.echo(
        f"experiment {exp.name}: data {exp.data.name}, models {[m.label for m in exp.models]}, "
        f"seeds {exp.seeds}; runs are written to {exp.out_dir}/"
    )

    def report(row: dict) -> None:
        if row.get("status") == "failed":
            typer.echo(f"  {row['label']} seed {row['seed']}: FAILED: {row['error']}")
            return
        typer.echo(
            f"  {row['label']} seed {row['seed']}: best epoch {row['best_epoch']}/{row['epochs_run']} "
            f"({row['monitor']}), test {json.dumps(_round(row['test']))}"
        )

    rows = run_experiment(
        exp, progress=not quiet, resume=resume, overwrite=overwrite, on_result=report, on_epoch=typer.echo
    )
    failed: dict[str, int] = {}
    for r in rows:
        if r.get("status") == "failed":
            failed[r["label"]] = failed.get(r["label"], 0) + 1
    typer.echo("\nTest split, mean ± std over seeds (selected on validation):\n")
    typer.echo(markdown_table(summarize(rows, "test"), failed))
    typer.echo(f"\nresults: {Path(exp.out_dir) / 'results.jsonl'}")
    if failed:
        typer.echo(
            f"error: {sum(failed.values())} of {len(rows)} runs failed ({', '.join(failed)}); see above", err=True
        )
        raise typer.Exit(1)


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
    if split not in bundle.splits:
        raise unknown_name("split", split, bundle.splits, where="--split")
    scores = evaluate_model(model, bundle.splits[split], device=device)
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
    """List the built-in data sets and readers: what each reads and its parameters (``data.params`` in an
    experiment config), with their defaults."""
    from dataclasses import MISSING

    from mtlrec.config import dataset_params
    from mtlrec.data.datasets import list_datasets

    for name, info in list_datasets().items():
        typer.echo(f"{name:<16} {info['description']}\n{'':<16} files: {info['source']}")
        params = dataset_params(name)
        if params is None:
            typer.echo(f"{'':<16} params: any keyword")
        elif params:
            shown = [k if d is MISSING else f"{k}={d!r}" for k, d in params.items()]
            typer.echo(f"{'':<16} params: " + ", ".join(shown))


def _pick_models(exp, names: list[str]) -> list:
    """The config's rows with these labels (or registry names); a registered model the config does not list is
    added with the config's ``model_defaults``."""
    from mtlrec.config import Checker, check_models
    from mtlrec.models.registry import list_models

    picked = []
    for name in names:
        rows = [m for m in exp.models if name in (m.label, m.name)]
        if not rows and name in list_models():
            rows = check_models(Checker("--model"), [{"name": name}], exp.model_defaults)
        if not rows:
            allowed = [*(m.label for m in exp.models), *list_models()]
            raise unknown_name("model", name, allowed, where="--model")
        picked += [m for m in rows if m not in picked]
    return picked


def _bundle_for(info: dict):
    from mtlrec.data.datasets import load_dataset

    name = info["data_meta"].get("dataset_name") or info["dataset"]
    params = info["data_meta"].get("load_params")
    if params is None:
        raise UserError("this run does not record how to reload its data set (data.params in run.json)")
    return load_dataset(name, **params)


def _round(d: dict) -> dict:
    return {t: {m: round(v, 4) for m, v in ms.items()} for t, ms in d.items()}


from mtlrec.commands import register_all  # noqa: E402

register_all(app)


def main(argv: list[str] | None = None) -> None:
    """The ``mtlrec`` entry point: a user mistake prints ``error: <message>`` on stderr and exits with status 2
    (an interrupted run: its message, status 130); ``--debug`` or ``MTLREC_DEBUG=1`` shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _STATE["debug"] = "--debug" in argv or debug_requested()
    command = typer.main.get_command(app)
    try:
        report_user_errors(lambda: command.main(args=argv, prog_name="mtlrec", standalone_mode=True), _STATE["debug"])
    except SystemExit as e:
        if e.code in (0, None) and "mtlrec.train.distributed" in sys.modules:  # a torchrun worker that finished
            sys.modules["mtlrec.train.distributed"].shutdown()
        raise


if __name__ == "__main__":
    main()
