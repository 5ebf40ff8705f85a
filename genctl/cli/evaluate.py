"""`genctl evaluate`: FID, KID, IS, precision/recall (and PSNR/SSIM) of a trained model."""

from __future__ import annotations

from typing import Annotated

import typer

from genctl.errors import BadInput
from genctl.interrupts import deferred, interruptible


@interruptible  # Ctrl-C / SIGTERM: exit 130 within seconds, nothing half-logged
def evaluate_command(
    options: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sampler options key=value to generate with, over the recipe's evaluate.sampler "
            "(see `genctl plugins list`)."
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="MLflow run id: evaluate its model, log to it.")
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Checkpoint file to evaluate.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Registered model: models:/NAME@ALIAS or models:/NAME/V (logged to its run).",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help="Comma-separated: fid, kid, isc, prc, psnr, ssim, nll, accuracy, fid_domain, "
            "kid_domain, auroc. Default: the recipe's evaluate.metrics.",
        ),
    ] = None,
    num_samples: Annotated[
        int | None,
        typer.Option(
            "--num-samples", min=1, help="Generated images. Default: evaluate.num_samples."
        ),
    ] = None,
    nll_images: Annotated[
        int | None,
        typer.Option(
            "--nll-images",
            min=1,
            help="Test images nll scores. Default: evaluate.nll_images, else the whole test split.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per batch. Default: evaluate.batch_size."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Seed of the generated images. Default: the recipe's train.seed."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Local Inception weights file (offline). Default: evaluate.feature_extractor_weights, "
            "then $GENCTL_INCEPTION_WEIGHTS, then a download.",
        ),
    ] = None,
    feature_extractor: Annotated[
        str | None,
        typer.Option(
            "--feature-extractor",
            help="RUN_ID or checkpoint of a classifier of the data: fid_domain and kid_domain are "
            "FID/KID in its features. Default: evaluate.feature_extractor.",
        ),
    ] = None,
    anomaly_classes: Annotated[
        str | None,
        typer.Option(
            "--anomaly-classes",
            help="Comma-separated class indices whose test images are the anomalies for auroc. "
            "Default: evaluate.anomaly_classes.",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="A Hugging Face diffusers pipeline (save_pretrained folder or Hub id; pip install "
            '"genctl[hf]"), scored as a run of --real is and recorded as a run of its own.',
        ),
    ] = None,
    real: Annotated[
        str | None,
        typer.Option(
            "--real",
            help="With --pretrained: the real images, a folder or a recipe (its data: and "
            "evaluate: sections, so the numbers compare with that recipe's runs).",
        ),
    ] = None,
) -> None:
    """Evaluate a trained model with torch-fidelity and log the numbers to its MLflow run.

    \b
    genctl evaluate --run RUN_ID
    genctl evaluate --run RUN_ID --metrics fid,kid,isc,prc --num-samples 50000
    genctl evaluate --run RUN_ID guidance=3.0 steps=50
    genctl evaluate --checkpoint model.pt --device cuda
    genctl evaluate --model models:/mnist-gan@champion
    genctl evaluate --run RUN_ID --metrics fid_domain,kid_domain --feature-extractor CLASSIFIER_RUN
    genctl evaluate --run RUN_ID --metrics auroc --anomaly-classes 7
    genctl evaluate --pretrained ./ddpm-cifar10-32 --real recipes/ddpm-cifar10.yaml steps=100
    """
    from genctl.evaluation import evaluate, parse_metrics, source_for
    from genctl.evaluation.sources import evaluation_options
    from genctl.recipe import validate
    from genctl.resolve import find_checkpoint, load_model
    from genctl.trainer import _pick_device

    if pretrained is not None or real is not None:  # a diffusers pipeline: genctl.pretrained
        _evaluate_pretrained(
            pretrained,
            real,
            list(options or []),
            run=run,
            checkpoint=checkpoint,
            model=model,
            metrics=parse_metrics(metrics.split(",")) if metrics is not None else None,
            num_samples=num_samples,
            batch_size=batch_size,
            device=_pick_device(device),
            seed=seed,
            weights=weights,
            feature_extractor=feature_extractor,
            progress=progress,
        )
        return
    if sum(x is not None for x in (run, checkpoint, model)) != 1:
        raise BadInput(
            "say what to evaluate: exactly one of --run RUN_ID, --checkpoint PATH or "
            "--model models:/NAME@ALIAS"
        )
    wanted = parse_metrics(metrics.split(",")) if metrics is not None else None  # fail fast
    dev = _pick_device(device)
    model = load_model(find_checkpoint(run=run, path=checkpoint, model=model), dev)
    recipe = validate(model.recipe, model.source, spec=model.spec)
    if anomaly_classes is not None:
        recipe = _with_anomaly_classes(recipe, anomaly_classes)
    cfg = recipe.evaluate
    opts = evaluation_options(recipe, list(options or []))
    n = num_samples or cfg.num_samples
    source = source_for(
        recipe,
        model.sampler,
        device=dev,
        num_samples=n,
        seed=recipe.train.seed if seed is None else seed,
        options=opts,
        num_real=cfg.num_real if num_samples is None else None,
        nll_images=nll_images,
    )
    result = evaluate(
        source,
        wanted or cfg.metrics,
        weights=weights or cfg.feature_extractor_weights,
        device=dev,
        batch_size=batch_size or cfg.batch_size,
        progress=progress,
        feature_extractor=feature_extractor or cfg.feature_extractor,
    )
    typer.echo(f"{model.spec.name} at step {model.step} ({model.source})")
    typer.echo(format_table(result.logged()))
    typer.echo(format_protocol(result.protocol))
    for note in result.notes:
        typer.echo(f"note: {note}")

    run_id = run or model.run_id
    if run_id is None:
        typer.echo("not logged: this checkpoint belongs to no MLflow run")
        return
    if run is None and not _in_store(run_id, recipe.tracking.uri):
        # a checkpoint copied from another store: the numbers above stand, nothing to log them to
        typer.echo(
            f"not logged: the checkpoint's run {run_id} is not in this tracking store "
            "(set MLFLOW_TRACKING_URI to its store to log there)"
        )
        return
    with deferred():  # the numbers, protocol and notes are logged together or not at all
        _log(run_id, recipe.tracking.uri, result, model.step, source.datasets)
    typer.echo(f"logged to run {run_id} at step {model.step}")


def _evaluate_pretrained(pretrained, real, options, *, run, checkpoint, model, **kw) -> None:
    """``--pretrained``: score the pipeline against ``--real`` and record a run of its own."""
    if pretrained is None or real is None:
        raise BadInput(
            "--pretrained and --real go together: the pipeline, and the real images to judge it by",
            "genctl evaluate --pretrained DIR_OR_HUB_ID --real IMAGE_FOLDER_OR_RECIPE",
        )
    if any(x is not None for x in (run, checkpoint, model)):
        raise BadInput("--pretrained evaluates a pipeline: drop --run, --checkpoint and --model")
    from genctl import pretrained as hf

    result, run_id, model = hf.evaluate(pretrained, options, real=real, **kw)
    typer.echo(f"{model.name} ({model.source})")
    typer.echo(format_table(result.logged()))
    typer.echo(format_protocol(result.protocol))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"logged to run {run_id} (tag {hf.PRETRAINED_TAG})")


def _with_anomaly_classes(recipe, text: str):
    """``recipe`` with ``evaluate.anomaly_classes`` from ``--anomaly-classes 7`` or ``3,8``."""
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise BadInput(
            f"--anomaly-classes {text!r}: expected class indices such as 7 or 3,8"
        ) from None
    if not classes:
        raise BadInput("--anomaly-classes names no class", "Give class indices such as 7 or 3,8.")
    import dataclasses

    evaluate = recipe.evaluate.model_copy(update={"anomaly_classes": classes})
    return dataclasses.replace(recipe, base=recipe.base.model_copy(update={"evaluate": evaluate}))


def format_table(values: dict[str, float]) -> str:
    """Two aligned columns: metric name and value."""
    width = max((len(k) for k in values), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k:<{width}}  {v:.6g}" for k, v in values.items()]
    return "\n".join(lines)


def format_likelihood(p: dict[str, str]) -> str:
    """One line saying how ``nll``/``bpd`` were made (the ``eval.nll_*`` entries)."""
    from genctl.evaluation.likelihood import CORE_KEYS, NLL_PREFIX

    own = [
        f"{k.removeprefix(NLL_PREFIX)}: {v}"
        for k, v in p.items()
        if k.startswith(NLL_PREFIX) and k.removeprefix(NLL_PREFIX) not in CORE_KEYS
    ]
    head = (
        f"likelihood protocol {p['eval.nll_protocol']}: {p['eval.nll_set']}, {p['eval.nll_dims']}"
    )
    return "; ".join([head, *own])


def format_anomaly(p: dict[str, str]) -> str:
    """One line saying how ``auroc_*``/``auprc_*`` were made (the ``eval.anomaly_*`` entries)."""
    return (
        f"anomaly protocol {p['eval.anomaly_protocol']}: {p['eval.anomaly_set']}, anomalies: "
        f"class {p['eval.anomaly_classes']} ({p['eval.anomaly_num_anomalous']} images, "
        f"{p['eval.anomaly_num_normal']} normal); scores {p['eval.anomaly_scores']}; trained "
        f"without classes {p['eval.anomaly_trained_without']}"
    )


def format_protocol(p: dict[str, str]) -> str:
    """One line saying how the numbers were made (and one each for the likelihood's, the
    accuracy's, the anomaly scores' and the domain features')."""
    if "eval.anomaly_protocol" in p:
        rest = {k: v for k, v in p.items() if not k.startswith("eval.anomaly_")}
        line = format_anomaly(p)
        return "\n".join([line, format_protocol(rest)]) if rest else line
    held = [k for k in ("eval.nll_protocol", "eval.accuracy_set") if k in p]
    if held:
        rest = {k: v for k, v in p.items() if not k.startswith(("eval.nll_", "eval.accuracy_"))}
        lines = [format_likelihood(p)] if "eval.nll_protocol" in p else []
        if "eval.accuracy_set" in p:
            lines.append(f"accuracy on {p['eval.accuracy_set']}")
        return "\n".join(lines + [format_protocol(rest)] if "eval.protocol" in rest else lines)
    if "eval.domain_protocol" in p and "eval.domain_extractor" in p:
        rest = {k: v for k, v in p.items() if k != "eval.domain_protocol"}
        domain = (
            f"domain protocol {p['eval.domain_protocol']}: features ({p['eval.domain_features']}) "
            f"of {p['eval.domain_extractor']} at {p['eval.domain_input']}"
        )
        return "\n".join([domain, format_protocol(rest)])
    parts = [f"{p['eval.num_generated']} generated"]
    if "eval.num_real" in p:
        parts[0] += f" vs {p['eval.num_real']} real ({p['eval.real_set']})"
    if "eval.feature_extractor" in p:
        parts.append(
            f"{p['eval.feature_extractor']} at {p['eval.input_size']} px, weights sha256 "
            f"{p['eval.weights_sha256'][:12]}, torch-fidelity {p['eval.torch_fidelity']}"
        )
    if "eval.kid_subset_size" in p:
        parts.append(f"KID subsets {p['eval.kid_subsets']} x {p['eval.kid_subset_size']}")
    if p.get("eval.sampler", "{}") != "{}":
        parts.append(f"sampler {p['eval.sampler']}")
    if p.get("eval.labels", "none") != "none":
        parts.append(f"labels {p['eval.labels']}")
    return f"protocol {p['eval.protocol']}: " + "; ".join(parts)


def _in_store(run_id: str, uri: str | None) -> bool:
    from genctl.tracking import get_run

    try:
        get_run(run_id, uri)
    except BadInput:
        return False
    return True


def _log(run_id: str, uri: str | None, result, step: int, datasets=()) -> None:
    """Log to the run without changing its status (a run still training stays RUNNING), with
    the data the real images came from as its evaluation dataset inputs (MLflow keeps one
    context per dataset of a run: the training data itself stays recorded as training)."""
    from genctl.evaluation import record
    from genctl.tracking import Tracker, get_run, link_metrics_to_model

    status = get_run(run_id, uri).status
    tracker = Tracker(experiment="", run_name="", uri=uri, run_id=run_id)
    try:
        for config, dataset in datasets:
            tracker.log_data(config, dataset, context="evaluation")
        record(tracker, result, step, on_demand=True)
    finally:
        tracker.finish(status)
    # the run's logged model, when it is this step's, carries the numbers too (the UI's Models)
    link_metrics_to_model(run_id, result.logged(), step, uri)
