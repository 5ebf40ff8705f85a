"""`genctl plugins`: the installed model families, and a scaffold for new ones."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_command(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show load tracebacks."),
) -> None:
    """Each model's name, package, version, task and sampler options; then plugins that failed to load."""
    from genctl.plugins import plugins
    from genctl.sampling import options_help

    ps = plugins()
    rows = [("MODEL", "PACKAGE", "VERSION", "TASK", "SAMPLER OPTIONS")]
    for spec in ps.registry.specs():
        rows.append((spec.name, spec.package, spec.version, spec.task, options_help(spec)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=False)) + "  " + r[4])
    for err in ps.errors:
        typer.echo(f"\nplugin {err.name!r} ({err.value}) failed to load: {err.error}", err=True)
        if verbose:
            typer.echo(err.traceback, err=True)


@app.command("new")
def new_command(
    name: str = typer.Argument(..., help="Model name: lower-case letters, digits, underscores."),
    dir: Path | None = typer.Option(
        None, "--dir", help="Folder to write the project into (default: ./genctl-NAME)."
    ),
) -> None:
    """Write a pip-installable model plugin (model, loss, sampler, recipe, tests) that trains as is."""
    from genctl.errors import BadInput
    from genctl.plugins import plugins
    from genctl.scaffold import check_name, scaffold

    check_name(name)
    registry = plugins().registry
    if name in registry:
        raise BadInput(
            f"a model called {name!r} is already installed (by {registry.get(name).package})",
            "Pick another name: two plugins cannot register the same model.",
        )
    root, files = scaffold(name, dir)
    typer.echo(f"wrote the {name} plugin to {root}:")
    for f in files:
        typer.echo(f"  {f.relative_to(root)}")
    typer.echo(
        f"next:\n  cd {root}\n  pip install -e .\n  genctl plugins list\n"
        f"  genctl train recipes/{name}.yaml\n  pytest"
    )
