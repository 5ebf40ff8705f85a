"""Every data test decodes into its own cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "genctl-cache"
    monkeypatch.setenv("GENCTL_CACHE", str(folder))
    return folder
