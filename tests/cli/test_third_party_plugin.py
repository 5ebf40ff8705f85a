"""A plugin from outside, end to end: `genctl plugins new`, pip install, list, train, sample.

The scaffolded plugin and a second one that raises on import are pip-installed (built as
wheels, no network: they depend only on genctl) into a folder of their own that the genctl
subprocesses get on their path. Entry points are found there exactly as in site-packages, and
the shared environment never holds a half-installed or broken plugin: other test runs going on
at the same time do not see them, and removing the folder uninstalls both, even after a crash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genctl.cli import app
from genctl.testing import CHECKS

NAME = "outside_gan"
BROKEN = "broken_on_import"


def genctl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run genctl in a new process: entry points are read once per process."""
    return subprocess.run(
        [sys.executable, "-m", "genctl", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_broken_plugin(root: Path) -> Path:
    (root / "genctl_broken").mkdir(parents=True)
    (root / "genctl_broken" / "__init__.py").write_text(
        'raise RuntimeError("this plugin is broken on purpose")\n'
    )
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "genctl-broken"\nversion = "0.0.1"\ndependencies = ["genctl"]\n'
        f'[project.entry-points.genctl]\n{BROKEN} = "genctl_broken"\n'
        '[tool.setuptools]\npackages = ["genctl_broken"]\n'
    )
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory, _empty_mlflow_db):
    """Both plugins installed; yields (scaffolded project, environment, working folder)."""
    base = tmp_path_factory.mktemp("third-party")
    res = CliRunner().invoke(app, ["plugins", "new", NAME, "--dir", str(base / "project")])
    assert res.exit_code == 0, res.output
    site = base / "site"
    try:
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
            + ["--no-index", "--quiet", "--disable-pip-version-check", "--target", str(site)]
            + [str(base / "project"), str(write_broken_plugin(base / "broken"))],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert pip.returncode == 0, pip.stdout + pip.stderr
        work = base / "work"
        work.mkdir()
        shutil.copyfile(_empty_mlflow_db, work / "mlflow.db")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "GENCTL_PLUGINS")
        }
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
        env["GENCTL_CACHE"] = str(work / ".cache")
        yield base / "project", env, work
    finally:
        shutil.rmtree(site, ignore_errors=True)  # the uninstall: nothing else was touched


@pytest.fixture(scope="module")
def listing(installed) -> subprocess.CompletedProcess:
    _, env, work = installed
    return genctl("plugins", "list", env=env, cwd=work)


@pytest.fixture(scope="module")
def trained(installed) -> subprocess.CompletedProcess:
    project, env, work = installed
    recipe = project / "recipes" / f"{NAME}.yaml"
    return genctl("train", str(recipe), "train.steps=3", "--no-progress", env=env, cwd=work)


def test_plugins_list_shows_the_installed_plugin_and_its_options(listing):
    assert listing.returncode == 0, listing.stderr
    [row] = [line.split() for line in listing.stdout.splitlines() if line.startswith(NAME)]
    assert row == [NAME, f"genctl_{NAME}", "0.1.0", "unconditional", "temperature=1.0"]


def test_plugins_list_reports_the_plugin_that_raises_on_import(listing):
    assert listing.returncode == 0
    assert f"plugin '{BROKEN}' (genctl_broken) failed to load" in listing.stderr
    assert "RuntimeError: this plugin is broken on purpose" in listing.stderr
    assert "dcgan" in listing.stdout  # the built-in families are still there


def test_scaffolded_recipe_trains_beside_a_broken_plugin(trained):
    assert trained.returncode == 0, trained.stderr
    assert "finished at step 3" in trained.stdout


def test_sample_from_the_newest_run_of_the_installed_plugin(installed, trained):
    from PIL import Image

    _, env, work = installed
    res = genctl(
        "sample",
        "--plugin",
        NAME,
        "--n",
        "4",
        "--out",
        "grid.png",
        "temperature=0.5",
        env=env,
        cwd=work,
    )
    assert res.returncode == 0, res.stderr
    assert f"4 images from {NAME} (step 3" in res.stdout
    with Image.open(work / "grid.png") as grid:  # 2 x 2 images of 16 px, 2 px padding
        assert grid.size == (2 + 2 * (16 + 2), 2 + 2 * (16 + 2))


def test_scaffolded_plugin_passes_its_own_contract_tests(installed):
    project, env, _ = installed
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"{len(CHECKS)} passed" in res.stdout  # one test per check of the kit


# ---------------------------------------------------------------- `genctl plugins new` refusals


def test_new_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "taken.txt").write_text("mine")
    res = CliRunner().invoke(app, ["plugins", "new", "fresh_gan", "--dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "already exists and is not empty" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]


@pytest.mark.parametrize("name", ["9lives", "My-GAN", "with space", "trailing_", "x" * 41])
def test_new_refuses_a_name_that_cannot_name_a_package(tmp_path, name):
    res = CliRunner().invoke(app, ["plugins", "new", name, "--dir", str(tmp_path / "p")])
    assert res.exit_code == 2, res.output
    assert "is not allowed" in res.output
    assert not (tmp_path / "p").exists()


def test_new_refuses_the_name_of_an_installed_model(tmp_path, monkeypatch):
    from tests.helpers import use_toy_plugin

    use_toy_plugin(monkeypatch)
    res = CliRunner().invoke(app, ["plugins", "new", "toy", "--dir", str(tmp_path / "p")])
    assert res.exit_code == 2
    assert "a model called 'toy' is already installed" in res.output
