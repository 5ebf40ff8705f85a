"""Tracking: the sqlite default, a real `mlflow server` on loopback, and a store that hiccups."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from genctl import checkpoint
from genctl.recipe import apply_overrides, validate
from genctl.sampling import find_checkpoint, load_model
from genctl.tracking import Tracker, client, get_run, resolve_uri
from genctl.trainer import train
from tests import toy
from tests.helpers import TOY_RECIPE


def test_default_store_is_sqlite_in_the_working_folder(workdir):
    assert resolve_uri() == f"sqlite:///{workdir / 'mlflow.db'}"


def test_env_var_points_elsewhere(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_uri() == "http://example.invalid:5000"
    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"  # the recipe's wins


def test_metrics_survive_a_store_that_fails_for_a_while(workdir):
    tracker = Tracker(experiment="e", run_name="r")
    real = tracker._client.log_batch
    failures = {"left": 3}

    def flaky(*args, **kwargs):
        if kwargs.get("metrics") and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("store went away")
        return real(*args, **kwargs)

    tracker._client.log_batch = flaky
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": float(step)}, step)
    tracker.finish()
    history = client().get_metric_history(tracker.run_id, "train/loss")
    assert failures["left"] == 0
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        # no background job runner: its workers would outlive the server
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: its workers are stopped with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue


def test_training_against_a_real_mlflow_server(workdir, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    raw = apply_overrides(TOY_RECIPE, ["train.steps=6", "train.checkpoint_every=3"])
    result = train(validate(raw, spec=toy.SPEC), progress=False)
    run = get_run(result.run_id)
    assert run.status == "FINISHED" and "train/loss_g" in run.metrics
    assert not (workdir / "mlruns").exists()  # artifacts went to the server, not ./mlruns
    path = find_checkpoint(run=result.run_id)  # downloaded from the server
    assert checkpoint.load(path)["step"] == 6
    import genctl.plugins

    monkeypatch.setattr(
        genctl.plugins, "plugins", lambda: genctl.plugins.load_plugins(extra={"toy": toy})
    )
    model = load_model(path, device=__import__("torch").device("cpu"))
    assert model.step == 6
