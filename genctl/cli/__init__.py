"""The genctl command line: train, sample, evaluate and compare generative image models.

One module per command group, joined here. Bad input exits 2 with a short message, failures
exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
import traceback

import click
import typer
from typer.core import TyperGroup

from genctl.errors import GenctlError

_state = {"debug": False}


class _Group(TyperGroup):
    """Turns genctl errors into a short message and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except GenctlError as exc:
            if _state["debug"]:
                traceback.print_exc()
            typer.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                typer.echo(f"  {exc.hint}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            typer.echo(
                f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                err=True,
            )
            typer.echo("  Run again with `genctl --debug ...` for the traceback.", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Train, sample, evaluate and compare generative image models. Every run is recorded in MLflow.

    \b
    genctl train recipes/quickstart.yaml         train from a recipe
    genctl sample --plugin dcgan --out grid.png  sample the newest trained model of a family
    genctl ui                                    compare runs in the MLflow UI
    """
    _state["debug"] = debug


def _register() -> None:
    from genctl.cli import plugins, recipes, runs, sample, score, train

    app.command("train")(train.train_command)
    app.command("sample")(sample.sample_command)
    app.command("score")(score.score_command)
    try:
        from genctl.cli import evaluate
    except ImportError:
        pass
    else:
        app.command("evaluate")(evaluate.evaluate_command)
    from genctl.cli import steer

    app.command("steer")(steer.steer_command)
    app.add_typer(
        plugins.app, name="plugins", help="List installed model families and scaffold new ones."
    )
    app.add_typer(recipes.app, name="recipes", help="List, show, validate and copy recipes.")
    app.add_typer(runs.app, name="runs", help="Recent runs in the tracking store.")
    app.command("ui")(runs.ui_command)


_register()


def main() -> None:
    """Console entry point."""
    sys.exit(app())
