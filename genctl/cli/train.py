"""`genctl train`: train a model from a recipe, or resume a run."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from genctl.errors import BadInput
from genctl.interrupts import SIGNAL_NAMES, Interrupted


def train_command(
    recipe: Annotated[
        str | None, typer.Argument(help="Recipe YAML file (optional with --resume).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key.sub=value overrides; ~key removes.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="RUN_ID or checkpoint path to continue.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved recipe and exit.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")
    ] = True,
) -> None:
    """Train a model from a YAML recipe; every run is recorded in MLflow.

    \b
    genctl train recipes/quickstart.yaml
    genctl train recipes/dcgan-mnist.yaml train.steps=2000 data.image_size=32
    genctl train --resume RUN_ID            continue an interrupted run
    """
    from genctl import recipe as recipes
    from genctl.resolve import load_resume_recipe
    from genctl.trainer import train

    overrides = list(overrides or [])
    if recipe is not None and ("=" in recipe or recipe.startswith("~")):
        overrides.insert(0, recipe)
        recipe = None
    if recipe is None and resume is None:
        raise BadInput(
            "no recipe given",
            "Usage: genctl train RECIPE.yaml [key=value ...]  (or --resume RUN_ID)",
        )
    if recipe is not None:
        r = recipes.load(recipe, overrides)
    else:
        r, _ = load_resume_recipe(resume, overrides)
    if dry_run:
        typer.echo(r.to_yaml(), nl=False)
        return
    try:
        result = train(r, resume=resume, progress=progress)
    except Interrupted as exc:  # a second Ctrl-C / SIGTERM, or one before the run began
        if str(exc) in SIGNAL_NAMES:
            typer.echo(f"interrupted ({exc}) before training began; nothing was saved", err=True)
        else:
            typer.echo(f"interrupted: {exc}", err=True)
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 speaks for the run
    if result.interrupted:
        typer.echo(
            f"interrupted at step {result.step}; checkpoint saved. Resume with: genctl train --resume {result.run_id}",
            err=True,
        )
        raise typer.Exit(130)
    typer.echo(f"run {result.run_id} finished at step {result.step}. See it with `genctl ui`.")
