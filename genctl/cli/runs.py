"""`genctl runs` and `genctl ui`: the runs in the tracking store."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import typer

from genctl.errors import BadInput

app = typer.Typer(no_args_is_help=True)

SHOWN_METRICS = ("eval/fid", "eval/kid_mean", "train/loss_g", "train/loss_d")
COMPARE_EXPERIMENT = "compare"  # where `genctl runs compare --log` records its pictures


@app.command("list")
def list_command(
    plugin: str = typer.Option(None, "--plugin", "-p", help="Only runs of this family."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many runs."),
    sort: str = typer.Option(
        None,
        "--sort",
        help="Order by a metric, lowest first: eval/fid; highest first: 'eval/accuracy desc'.",
    ),
    where: str = typer.Option(
        None,
        "--where",
        help='Only runs matching this MLflow search filter, e.g. "metrics.`eval/fid` < 40".',
    ),
) -> None:
    """Recent runs, newest first (or by --sort): id, name, plugin, status, and key metrics."""
    from genctl.tracking import resolve_uri, search_runs, sort_key

    runs = search_runs(plugin=plugin, limit=limit, where=where, sort=sort)
    if not runs:
        typer.echo(f"no runs in {resolve_uri()}" + (" match --where" if where else ""))
        return
    sorted_by = sort_key(sort)[1] if sort else ""
    shown = (sorted_by,) if sorted_by and sorted_by not in SHOWN_METRICS else ()
    typer.echo(f"{'RUN ID':34}{'NAME':26}{'PLUGIN':12}{'STATUS':10}{'STARTED':18}METRICS")
    for r in runs:
        started = _dt.datetime.fromtimestamp(r.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        metrics = "  ".join(
            f"{k.split('/')[-1]}={r.metrics[k]:.4g}"
            for k in (*shown, *SHOWN_METRICS)
            if k in r.metrics
        )
        if r.tags.get("eval.protocol"):  # equal ids: eval/ numbers made the same way
            metrics += f"  [eval protocol {r.tags['eval.protocol']}]"
        typer.echo(f"{r.run_id:34}{r.name[:25]:26}{r.plugin:12}{r.status:10}{started:18}{metrics}")
    protocols = {r.tags["eval.protocol"] for r in runs if r.tags.get("eval.protocol")}
    if len(protocols) > 1:
        typer.echo(
            f"note: {len(protocols)} different evaluation protocols above; eval/ numbers compare only "
            "between runs with the same protocol id (their eval.* tags say what differs)"
        )


@app.command("register")
def register_command(
    run_id: str = typer.Argument(..., help="The run whose final model to register."),
    name: str = typer.Option(..., "--name", help="Registered model name, e.g. mnist-gan."),
    alias: str = typer.Option(
        None, "--alias", help="Point this alias at the new version, e.g. champion."
    ),
) -> None:
    """Register a run's final model in MLflow's model registry, as a new version of NAME.

    \b
    genctl runs register RUN_ID --name mnist-gan --alias champion
    genctl sample --model models:/mnist-gan@champion --out grid.png
    """
    from genctl import checkpoint, tracking
    from genctl.logged_model import requirements
    from genctl.plugins import get_spec
    from genctl.resolve import check_model_name, resolve_checkpoint

    check_model_name(name, alias)
    tracking.get_run(run_id)  # an unknown run: bad input
    model_id = tracking.logged_model_of(run_id)
    path = resolve_checkpoint(run_id, (checkpoint.FINAL,))
    step = checkpoint.load(path)["step"]
    if model_id is None:  # a run from before genctl logged models, or tracking.log_model: false
        spec = get_spec(checkpoint.load(path)["plugin"])
        model_id = tracking.log_model(run_id, path, step, requirements(spec))
    version = tracking.register(run_id, model_id, name, alias)
    ref = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    typer.echo(f"registered {name} version {version} from run {run_id} (step {step}): {ref}")


@app.command("compare")
def compare_command(
    run_ids: list[str] = typer.Argument(..., help="Two runs or more (of one task)."),
    step: int = typer.Option(
        None, "--step", min=0, help="Each run's kept checkpoint of this step (default: final)."
    ),
    seed: int = typer.Option(0, "--seed", help="The seed every run draws its images from."),
    n: int = typer.Option(8, "--n", "-n", min=1, max=64, help="Images per run."),
    input: str = typer.Option(
        None, "--input", "-i", help="Images to translate (translation and super-resolution runs)."
    ),
    out: Path = typer.Option(Path("compare.png"), "--out", "-o", help="The PNG to write."),
    log: bool = typer.Option(False, "--log", help="Also log the picture to a comparison run."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
) -> None:
    """Runs side by side: the same seeds' images, one row per run, and below them the params
    that differ and the metrics, in one PNG.

    \b
    genctl runs compare RUN_A RUN_B --seed 3 --out ab.png
    genctl runs compare RUN_A RUN_B RUN_C --step 5000 --log
    genctl runs compare PIX2PIX_RUN OTHER_PIX2PIX_RUN --input facades/test/
    """
    from genctl.compare import compare, save
    from genctl.trainer import _pick_device

    if out.suffix.lower() != ".png":
        raise BadInput(f"--out {out} is not a .png file", "Give a file name ending in .png.")
    picture, rows = compare(
        run_ids, step=step, seed=seed, n=n, inputs=input, device=_pick_device(device)
    )
    save(picture, out)
    steps = ", ".join(f"{r.name} step {r.step}" for r in rows)
    typer.echo(f"{len(rows)} runs ({steps}), seed {seed} -> {out}")
    if log:
        from genctl.tracking import log_comparison

        run = log_comparison(out, run_ids, COMPARE_EXPERIMENT)
        typer.echo(f"logged to comparison run {run} (experiment {COMPARE_EXPERIMENT!r})")


def ui_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(5000, "--port", help="Port to listen on."),
    experiment: str = typer.Option(
        None,
        "--experiment",
        "-e",
        help="Open on this experiment's runs (default: the newest run's).",
    ),
    browser: bool = typer.Option(
        True, "--browser/--no-browser", help="Open the browser once the UI answers."
    ),
) -> None:
    """Start the MLflow UI on genctl's tracking store, opened on an experiment's runs."""
    from genctl import tracking

    url = tracking.ui_url(host, port, experiment)
    browse = url if browser and tracking.can_open_browser() else None
    typer.echo(f"MLflow UI for {tracking.resolve_uri()} at {url}  (Ctrl-C to stop)")
    raise typer.Exit(tracking.ui(None, host, port, browse=browse))
