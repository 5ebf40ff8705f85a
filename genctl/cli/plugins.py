"""`genctl plugins`: the installed model families."""

from __future__ import annotations

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
