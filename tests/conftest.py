"""Shared fixtures: the real datasets in ../shared/data, an isolated tracking store per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets (../shared/data); tests that need them skip cleanly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (see the README's Testing section)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite store: creating one runs migrations (seconds), so once."""
    from genctl.tracking import client

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def workdir(tmp_path, monkeypatch, _empty_mlflow_db) -> Path:
    """Run in a fresh folder with its own MLflow store (sqlite:///mlflow.db and ./mlruns there)."""
    shutil.copyfile(_empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path / ".cache"))
    monkeypatch.setenv("GENCTL_STAGING", str(tmp_path / "staging"))  # a remote store's artifacts
    return tmp_path


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """A stand-in for torch-fidelity's Inception weights: the real layout, random values.

    FID/KID/IS code paths run for real on it (the numbers mean nothing); no test downloads.
    """
    from genctl.evaluation.fidelity import write_standin_weights

    return write_standin_weights(tmp_path_factory.mktemp("inception") / "standin-inception.pth")
