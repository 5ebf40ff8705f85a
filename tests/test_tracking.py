"""Tracking: the sqlite default, a real `mlflow server` on loopback, and a store that hiccups."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genctl import checkpoint
from genctl.cli import app
from genctl.recipe import apply_overrides, validate
from genctl.resolve import find_checkpoint, load_model
from genctl.tracking import Tracker, client, get_run, resolve_uri
from genctl.trainer import train
from tests import toy
from tests.helpers import TOY_RECIPE, use_toy_plugin, write_recipe


def test_default_store_is_sqlite_in_the_working_folder(workdir):
    assert resolve_uri() == f"sqlite:///{workdir / 'mlflow.db'}"


def test_env_var_points_elsewhere(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_uri() == "http://example.invalid:5000"
    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"  # the recipe's wins


def test_experiments_are_model_training_so_the_ui_opens_on_their_runs(workdir):
    c = client()
    c.create_experiment("older")  # made before genctl marked them: marked on the next run
    for name in ("new", "older"):
        Tracker(experiment=name, run_name="r").finish()
        assert c.get_experiment_by_name(name).tags["mlflow.experimentKind"] == (
            "custom_model_development"
        )
    mine = c.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(experiment="mine", run_name="r").finish()
    assert c.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"


def test_the_source_is_the_recipe_and_the_commit_of_a_git_working_folder(workdir):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=workdir, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, check=True
    ).stdout.strip()
    tracker = Tracker(experiment="e", run_name="r")
    tracker.log_source("recipes/toy.yaml")
    tracker.finish()
    tags = client().get_run(tracker.run_id).data.tags
    assert tags["mlflow.source.name"] == "recipes/toy.yaml"
    assert tags["mlflow.source.git.commit"] == head


def test_a_store_that_refuses_the_dataset_input_does_not_fail_the_run(workdir, capsys):
    from genctl.data import load_dataset
    from genctl.data.config import DataConfig

    config = DataConfig(kind="shapes", image_size=8, size=16)
    tracker = Tracker(experiment="e", run_name="r")

    def refuse(*args, **kwargs):
        raise ConnectionError("store went away")

    tracker._client.log_inputs = refuse
    tracker.log_data(config, load_dataset(config))
    tracker.finish()
    assert "did not take the run's dataset input" in capsys.readouterr().err
    assert get_run(tracker.run_id).status == "FINISHED"


def _system_metrics(run_id: str, wait: float = 60.0) -> dict[str, float]:
    """The run's system/ metrics, waited for (MLflow's monitor writes from its own thread)."""
    deadline = time.monotonic() + wait
    while True:
        found = {k: v for k, v in client().get_run(run_id).data.metrics.items() if "system/" in k}
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_system_metrics_are_mlflows_own_on_the_run(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    tracker = Tracker(experiment="e", run_name="r", system_metrics=True)
    try:
        found = _system_metrics(tracker.run_id)
    finally:
        tracker.finish()
    assert 0 <= found["system/cpu_utilization_percentage"] <= 100
    assert found["system/system_memory_usage_megabytes"] > 0
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    assert get_run(tracker.run_id).status == "FINISHED"


def test_the_recipe_turns_system_metrics_on_for_the_training_run(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    sampled = threading.Event()
    real = Tracker.log_metrics

    def log_metrics(self, metrics, step):  # training goes on once the monitor has sampled
        if self._system is not None and not sampled.is_set():
            sampled.set()
            assert _system_metrics(self.run_id)
        real(self, metrics, step)

    monkeypatch.setattr(Tracker, "log_metrics", log_metrics)
    on = apply_overrides(TOY_RECIPE, ["train.steps=5", "tracking.system_metrics=true"])
    run_on = train(validate(on, spec=toy.SPEC), progress=False).run_id
    off = apply_overrides(TOY_RECIPE, ["train.steps=5"])
    run_off = train(validate(off, spec=toy.SPEC), progress=False).run_id
    assert sampled.is_set() and "system/cpu_utilization_percentage" in get_run(run_on).metrics
    assert not [k for k in get_run(run_off).metrics if k.startswith("system/")]  # off by default


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


_START_TOGETHER = """
import sys, time
from pathlib import Path
import mlflow  # imported before the start line: the processes race on opening the store
from genctl.tracking import Tracker
Path(f"ready-{sys.argv[1]}").touch()
while not Path("go").exists():
    time.sleep(0.01)
tracker = Tracker(experiment="together", run_name=f"run-{sys.argv[1]}")
tracker.log_metrics({"train/loss": 1.0}, 1)
tracker.finish()
"""


def test_runs_started_together_in_a_new_folder_all_succeed(tmp_path):
    """A new store is created once, under a lock: MLflow's own migration races (one process
    died with `duplicate column name`), and so does creating the experiment."""
    n = 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START_TOGETHER, str(i)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 300
        while len(list(tmp_path.glob("ready-*"))) < n:
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * n, "\n".join(outputs)
    c = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("together")
    runs = c.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"run-{i}" for i in range(n)]
    assert all(r.info.status == "FINISHED" for r in runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A real `mlflow server` on a loopback port, sqlite-backed, that can be killed and started
    again on the same port with the same database and artifacts (a store that goes away)."""

    def __init__(self, root):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination",
                str(self.root / "server-artifacts"),
                "--workers",
                "1",
            ],
            # no background job runner: its workers would outlive the server
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: its workers are stopped with it
        )
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)

    def stop(self, signals=(signal.SIGTERM, signal.SIGKILL)) -> None:
        if self.proc is None:
            return
        for sig in signals:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory, _empty_mlflow_db):
    """One server for this module's tests; its database starts as an already-migrated empty
    store (migrating a new one takes the server most of a minute on a busy machine)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(_empty_mlflow_db, root / "server.db")
    srv = _Server(root)
    try:
        srv.start()
    except RuntimeError as exc:
        srv.stop()
        pytest.fail(str(exc))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def mlflow_server(server):
    return server.url


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
    # the final model is logged on the server too (its staged copy may be sent and gone by then),
    # and a registered alias finds its checkpoint there
    from genctl.resolve import resolve_checkpoint
    from genctl.tracking import logged_model_of, register

    model_id = logged_model_of(result.run_id)
    assert model_id is not None
    register(result.run_id, model_id, "toy-remote", "champion")
    assert checkpoint.load(resolve_checkpoint("models:/toy-remote@champion"))["step"] == 6


# ---------------------------------------------------------------- a store that goes away


def test_a_server_down_during_a_checkpoint_upload_loses_nothing(workdir, server, monkeypatch):
    """The server is killed as the first checkpoint upload begins and started again (same port,
    same database) after longer than the old ~8 s of retries: the run finishes and every metric,
    checkpoint and grid arrives."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    # MLflow's own per-request retries off, so what is tested is genctl's retrying (with them
    # on, each request retries inside MLflow for minutes, blocking whatever waits on it)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("GENCTL_STAGING", str(workdir / "staging"))
    outage: dict = {}

    def restart() -> None:
        time.sleep(12)  # the server is away for this plus its start-up
        try:
            server.start()
        except Exception as exc:
            outage["error"] = exc
        outage["seconds"] = time.monotonic() - outage["start"]

    mlflow_client = type(client())
    real_log_artifact = mlflow_client.log_artifact
    failed_uploads = []

    def log_artifact(self, run_id, local_path, artifact_path=None):
        if Path(local_path).name == "last.pt" and not outage:  # the first checkpoint upload
            outage["start"] = time.monotonic()
            server.stop(signals=(signal.SIGKILL,))
            outage["thread"] = threading.Thread(target=restart, daemon=True)
            outage["thread"].start()
        try:
            return real_log_artifact(self, run_id, local_path, artifact_path)
        except Exception:
            failed_uploads.append(Path(local_path).name)
            raise

    monkeypatch.setattr(mlflow_client, "log_artifact", log_artifact)
    raw = apply_overrides(
        TOY_RECIPE,
        ["train.steps=20", "train.checkpoint_every=5", "tracking.retry_seconds=180"],
    )
    result = train(validate(raw, spec=toy.SPEC), progress=False)
    outage["thread"].join()
    assert "error" not in outage, outage.get("error")
    print(f"server away {outage['seconds']:.1f} s")
    assert "last.pt" in failed_uploads  # the fault was real: the upload failed

    run = get_run(result.run_id)
    assert run.status == "FINISHED" and result.step == 20
    c = client()
    for key in ("train/loss_g", "train/loss_d"):
        steps = sorted(m.step for m in c.get_metric_history(result.run_id, key))
        assert steps == [5, 10, 15, 20], key  # log_every=5: every value, once
    files = {a.path for a in c.list_artifacts(result.run_id)}
    assert {"recipe.yaml", "checkpoints", "model", "images"} <= files
    grids = [a.path for a in c.list_artifacts(result.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(g.split("+step+")[1].split("+")[0]) for g in grids) == [10, 20]
    assert checkpoint.load(find_checkpoint(run=result.run_id))["step"] == 20  # model/final.pt
    last = c.download_artifacts(result.run_id, checkpoint.LAST, str(workdir / "dl"))
    assert checkpoint.load(last)["step"] == 20
    staged = [p for p in (workdir / "staging").rglob("*") if p.is_file()]
    assert staged == []  # every staged copy went to the store, then was removed


UNREACHABLE = "ftp://127.0.0.1:9/artifacts"  # an artifact store nothing answers for


@pytest.fixture
def staging(workdir, monkeypatch):
    monkeypatch.setenv("GENCTL_STAGING", str(workdir / "staging"))
    return workdir / "staging"


def test_a_newer_checkpoint_replaces_one_still_waiting_for_the_store(workdir, staging):
    client().create_experiment("e", artifact_location=UNREACHABLE)
    tracker = Tracker(experiment="e", run_name="r")
    away = threading.Event()
    away.set()
    sent = []

    def log_artifact(run_id, path, artifact_path=None):
        if away.is_set():
            raise ConnectionError("store away")
        sent.append((artifact_path, Path(path).name, Path(path).read_text()))

    tracker._client.log_artifact = log_artifact
    for version in range(3):  # training goes on while the store is away
        tracker.write_artifact(checkpoint.LAST, lambda p, v=version: p.write_text(f"v{v}"))
    tracker.write_artifact("recipe.yaml", lambda p: p.write_text("recipe"))
    away.clear()
    tracker.finish()
    assert sorted(sent, key=str) == [
        ("checkpoints", "last.pt", "v2"),
        (None, "recipe.yaml", "recipe"),
    ]
    assert not (staging / tracker.run_id).exists()  # the store has them: no local copies left


def test_a_store_that_never_comes_back_is_given_up_and_what_it_missed_listed(
    workdir, staging, capsys
):
    client().create_experiment("e", artifact_location=UNREACHABLE)
    tracker = Tracker(experiment="e", run_name="r", retry_seconds=1)

    def away(*args, **kwargs):
        raise ConnectionError("store away")

    tracker._client.log_batch = away  # metrics and tags
    tracker.log_metrics({"train/loss": 0.5}, step=3)
    tracker.set_tags({"note": "x"})
    staged = tracker.write_artifact(checkpoint.LAST, lambda p: p.write_text("weights"))
    tracker.finish()  # waits until the store has been away retry_seconds, then gives up
    err = capsys.readouterr().err
    assert f"checkpoints/last.pt: {staged}" in err and staged.read_text() == "weights"
    saved = json.loads((workdir / f"genctl-unlogged-metrics-{tracker.run_id}.json").read_text())
    assert {"key": "train/loss", "value": 0.5, "step": 3}.items() <= saved[0].items()
    assert {"tag": "note", "value": "x"} in saved
    run = get_run(tracker.run_id)
    assert run.status == "FINISHED"
    assert run.tags["genctl.not_uploaded"] == f"checkpoints/last.pt: {staged}"


def test_resume_from_a_checkpoint_the_store_never_received(workdir, staging, monkeypatch):
    use_toy_plugin(monkeypatch)
    client().create_experiment("toy", artifact_location=UNREACHABLE)
    recipe = write_recipe(workdir / "toy.yaml")
    runner = CliRunner()
    res = runner.invoke(
        app, ["train", str(recipe), "train.steps=10", "tracking.retry_seconds=1", "--no-progress"]
    )
    assert res.exit_code == 0, res.output  # training went on; the run is recorded as finished
    run_id = re.search(r"run ([0-9a-f]{32}) finished at step 10", res.output).group(1)
    last = staging / run_id / checkpoint.LAST
    assert f"{checkpoint.LAST}: {last}" in res.output  # listed with its local path
    assert checkpoint.load(last)["step"] == 10

    res = runner.invoke(
        app, ["train", "--resume", run_id, "train.steps=15", "tracking.retry_seconds=1"]
    )
    assert res.exit_code == 0, res.output
    assert f"run {run_id} finished at step 15" in res.output
    assert checkpoint.load(staging / run_id / checkpoint.FINAL)["step"] == 15
    # the first session's grid, still not received, was queued again and is listed again
    assert "images/samples+step+10: " in res.output and "images/samples+step+15: " in res.output
