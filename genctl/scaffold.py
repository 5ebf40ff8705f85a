"""`genctl plugins new NAME`: write a pip-installable model plugin that trains out of the box.

The files come from ``genctl/templates/plugin/``: each ``*.tmpl`` file is copied with
``{{name}}`` (the model name), ``{{package}}`` (``genctl_<name>``) and ``{{title}}`` (the
CamelCase name, for class names) filled in. In paths, the folder ``package`` becomes the
package and ``__name__`` the model name.
"""

from __future__ import annotations

import re
from pathlib import Path

from genctl.errors import BadInput

TEMPLATES = Path(__file__).resolve().parent / "templates" / "plugin"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME = 40


def check_name(name: str) -> None:
    """A model name is lower-case letters, digits and underscores, starting with a letter."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME or name.endswith("_"):
        raise BadInput(
            f"plugin name {name!r} is not allowed",
            "Use lower-case letters, digits and underscores, starting with a letter "
            f"(at most {MAX_NAME} characters), e.g. my_gan: it names the model in recipes, "
            "the package (genctl_<name>) and the entry point.",
        )


def values(name: str) -> dict[str, str]:
    """What the templates' placeholders stand for."""
    return {
        "name": name,
        "package": f"genctl_{name}",
        "title": "".join(part.capitalize() for part in name.split("_") if part),
    }


def render(text: str, fill: dict[str, str]) -> str:
    for key, value in fill.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def target_path(relative: Path, fill: dict[str, str]) -> Path:
    """Where a template lands: ``package/`` -> the package, ``__name__`` -> the name, no .tmpl."""
    parts = [fill["package"] if p == "package" else p for p in relative.parts[:-1]]
    file = relative.name.removesuffix(".tmpl").replace("__name__", fill["name"])
    return Path(*parts, file)


def scaffold(name: str, dest: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write the plugin project for model ``name`` into ``dest`` (default ``./genctl-<name>``).

    ``dest`` must not exist, or be an empty folder. Returns the folder and the files written.
    """
    check_name(name)
    root = Path(dest) if dest is not None else Path.cwd() / f"genctl-{name}"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInput(
            f"{root} already exists" + (" and is not empty" if root.is_dir() else ""),
            "Pick another --dir, or remove it first.",
        )
    fill = values(name)
    templates = sorted(p for p in TEMPLATES.rglob("*.tmpl") if p.is_file())
    if not templates:
        raise FileNotFoundError(f"no plugin templates in {TEMPLATES}: genctl is installed badly")
    written = []
    for template in templates:
        out = root / target_path(template.relative_to(TEMPLATES), fill)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(template.read_text(), fill))
        written.append(out)
    return root, written
