"""`genctl recipes`: list, show, validate and copy recipes."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from genctl.errors import BadInput

app = typer.Typer(no_args_is_help=True)


def _find(name: str) -> Path:
    from genctl.recipe import recipes_dir

    p = Path(name)
    if p.is_file():
        return p
    shipped = recipes_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in recipes_dir().glob("*.yaml"))
    raise BadInput(
        f"no recipe {name!r}",
        f"Shipped recipes: {', '.join(names)}; or give a path to a YAML file.",
    )


@app.command("list")
def list_command() -> None:
    """The shipped recipes: name, plugin, and what each trains on."""
    import yaml

    from genctl.recipe import recipes_dir

    for f in sorted(recipes_dir().glob("*.yaml")):
        try:
            raw = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError:
            raw = {}
        data = raw.get("data", {}) if isinstance(raw.get("data"), dict) else {}
        what = data.get("root") or data.get("kind", "")
        typer.echo(f"{f.stem:32} {raw.get('plugin', '?'):12} {what}")


@app.command("show")
def show_command(
    name: str = typer.Argument(..., help="A shipped recipe name or a path."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides."),
    resolved: bool = typer.Option(False, "--resolved", help="Print with every default filled in."),
) -> None:
    """Print a recipe (as written, or resolved with defaults and overrides)."""
    from genctl import recipe

    path = _find(name)
    if resolved or overrides:
        typer.echo(recipe.load(path, list(overrides or [])).to_yaml(), nl=False)
    else:
        typer.echo(path.read_text(), nl=False)


@app.command("validate")
def validate_command(
    paths: list[str] = typer.Argument(..., help="Recipe names or paths."),
) -> None:
    """Validate recipes against the schema and their plugin's model schema."""
    from genctl import recipe

    for name in paths:
        recipe.load(_find(name))
        typer.echo(f"{name}: ok")


@app.command("copy")
def copy_command(
    name: str = typer.Argument(..., help="A shipped recipe."),
    dest: Path = typer.Argument(..., help="Where to write the copy."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy a shipped recipe to edit it."""
    src = _find(name)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise BadInput(f"{dest} already exists", "Pick another name or pass --force.")
    shutil.copyfile(src, dest)
    typer.echo(f"{src} -> {dest}")
