"""MLflow: the record of every run. The only module that imports mlflow.

The default store is MLflow's own embedded default, ``sqlite:///mlflow.db`` with artifacts in
``./mlruns``; ``tracking.uri`` in the recipe or ``MLFLOW_TRACKING_URI`` point elsewhere (a team's
``mlflow server``). Metrics are queued and written in batches by a background thread, so logging
never waits on the store inside the training loop; a store that goes away is retried and what was
queued is kept until it comes back or the run ends.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from genctl.errors import BadInput, RunFailure

DEFAULT_URI = "sqlite:///mlflow.db"
PLUGIN_TAG = "genctl.plugin"
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: the recipe's, else ``$MLFLOW_TRACKING_URI``, else the embedded default.

    A relative sqlite path is made absolute, so it always means the folder genctl runs in.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    return uri


def _mlflow(uri: str | None = None):
    import mlflow

    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(resolve_uri(uri))
    return mlflow


def client(uri: str | None = None):
    mlflow = _mlflow(uri)
    return mlflow.MlflowClient(tracking_uri=resolve_uri(uri))


def local_path(artifact_uri: str) -> Path | None:
    """The folder behind a ``file:`` artifact URI (or a plain path), else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


class Tracker:
    """One MLflow run: params, tags, batched metrics, images and artifacts."""

    def __init__(
        self,
        *,
        experiment: str,
        run_name: str,
        uri: str | None = None,
        run_id: str | None = None,
    ):
        self.uri = resolve_uri(uri)
        mlflow = _mlflow(self.uri)
        self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        try:
            if run_id is None:
                exp = self._client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else self._client.create_experiment(experiment)
                run = self._client.create_run(exp_id, run_name=run_name)
            else:
                run = self._client.get_run(run_id)
                self._client.update_run(run_id, status="RUNNING")
        except BadInput:
            raise
        except Exception as exc:
            raise RunFailure(
                f"cannot reach the tracking store {self.uri}: {type(exc).__name__}: {exc}".splitlines()[
                    0
                ],
                "Check tracking.uri / MLFLOW_TRACKING_URI, or unset them to use ./mlflow.db.",
            ) from exc
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._failed: list[str] = []
        self._thread = threading.Thread(target=self._writer, name="genctl-mlflow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ params and tags

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        items = [
            Param(k, str(v)[:MAX_PARAM_LEN])
            for k, v in params.items()
            if k not in existing  # resuming: params are immutable in MLflow
        ]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._retry(
                lambda chunk=items[i : i + 100]: self._client.log_batch(self.run_id, params=chunk)
            )

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._retry(lambda: self._client.log_batch(self.run_id, tags=items))

    # ------------------------------------------------------------ metrics (batched, async)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics; a background thread writes them in batches."""
        ts = int(time.time() * 1000)
        self._queue.put([(k, float(v), ts, int(step)) for k, v in metrics.items()])

    def _writer(self) -> None:
        from mlflow.entities import Metric

        pending: list = []
        while not (self._stop.is_set() and self._queue.empty() and not pending):
            try:
                pending.extend(self._queue.get(timeout=0.5))
                while not self._queue.empty():
                    pending.extend(self._queue.get_nowait())
            except queue.Empty:
                pass
            while pending:
                chunk = pending[:1000]  # MLflow's per-batch limit
                try:
                    self._client.log_batch(self.run_id, metrics=[Metric(*m) for m in chunk])
                except Exception as exc:  # store away: keep the metrics, retry later
                    self._failed.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
                    if self._stop.is_set() and len(self._failed) > 20:
                        return  # give up at shutdown after many tries; flush() reports it
                    time.sleep(min(5.0, 0.2 * len(self._failed)))
                    break
                del pending[: len(chunk)]
                self._failed.clear()
        self._unwritten = pending

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until queued metrics are written (used before checkpoints and at the end)."""
        deadline = time.time() + timeout
        while not self._queue.empty() and time.time() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    # ------------------------------------------------------------ artifacts

    def log_image(self, image, key: str, step: int) -> None:
        """An image (H x W x C uint8 array) logged with its step, so the UI shows it over time."""
        self._retry(lambda: self._client.log_image(self.run_id, image, key=key, step=step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._retry(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def artifact_dir(self) -> Path | None:
        """The run's artifact folder when the artifact store is local, else None."""
        return local_path(self.artifact_uri)

    def write_artifact(self, artifact_path: str, write) -> None:
        """Write an artifact atomically: ``write(tmp_path)`` then rename into place (local store),
        or upload (remote store). A crash mid-write never leaves a half file under the name."""
        local = self.artifact_dir()
        if local is not None:
            dest = local / artifact_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            os.close(fd)
            try:
                write(Path(tmp))
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / Path(artifact_path).name
            write(tmp)
            parent = str(Path(artifact_path).parent)
            self.log_artifact(tmp, None if parent == "." else parent)

    # ------------------------------------------------------------ end

    def finish(self, status: str = "FINISHED") -> None:
        """Flush metrics and mark the run ``FINISHED``, ``FAILED`` or ``KILLED``.

        Metrics the store never took (it stayed away) are saved to a JSON file beside the
        working folder rather than dropped, and the path is printed.
        """
        self._stop.set()
        self._thread.join(timeout=120)
        unwritten = getattr(self, "_unwritten", [])
        if unwritten:
            import json
            import sys

            path = Path(f"genctl-unlogged-metrics-{self.run_id}.json").resolve()
            path.write_text(
                json.dumps(
                    [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in unwritten]
                )
            )
            print(
                f"warning: the tracking store did not take {len(unwritten)} metric values; saved to {path}",
                file=sys.stderr,
            )
        self._retry(lambda: self._client.set_terminated(self.run_id, status=status))

    def _retry(self, fn, tries: int = 5) -> None:
        for i in range(tries):
            try:
                fn()
                return
            except Exception as exc:
                if i == tries - 1:
                    raise RunFailure(
                        f"tracking store {self.uri} failed: {type(exc).__name__}: {exc}".splitlines()[
                            0
                        ]
                    ) from exc
                time.sleep(0.5 * 2**i)


# ---------------------------------------------------------------- looking runs up


@dataclass
class RunInfo:
    run_id: str
    name: str
    experiment: str
    status: str
    plugin: str
    start_time: int
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def _info(run, experiments: dict[str, str]) -> RunInfo:
    return RunInfo(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        experiment=experiments.get(run.info.experiment_id, run.info.experiment_id),
        status=run.info.status,
        plugin=run.data.tags.get(PLUGIN_TAG, ""),
        start_time=run.info.start_time or 0,
        artifact_uri=run.info.artifact_uri,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )


def get_run(run_id: str, uri: str | None = None) -> RunInfo:
    """The run ``run_id``; an unknown id is bad input."""
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except Exception:
        raise BadInput(
            f"no run {run_id!r} in the tracking store {resolve_uri(uri)}",
            "List runs with `genctl runs list`; set MLFLOW_TRACKING_URI if the run lives elsewhere.",
        ) from None
    exp = c.get_experiment(run.info.experiment_id)
    return _info(run, {exp.experiment_id: exp.name})


def search_runs(
    plugin: str | None = None,
    status: str | None = None,
    limit: int = 20,
    uri: str | None = None,
) -> list[RunInfo]:
    """Recent genctl runs, newest first, optionally of one plugin and status."""
    c = client(uri)
    exps = {e.experiment_id: e.name for e in c.search_experiments()}
    if not exps:
        return []
    filters = [f"tags.`{PLUGIN_TAG}` = '{plugin}'" if plugin else f"tags.`{PLUGIN_TAG}` != ''"]
    if status:
        filters.append(f"attributes.status = '{status}'")
    runs = c.search_runs(
        list(exps),
        filter_string=" and ".join(filters),
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [_info(r, exps) for r in runs]


def download(run: RunInfo, artifact_path: str, uri: str | None = None) -> Path | None:
    """A local path to an artifact of ``run`` (downloaded when the store is remote), or None."""
    local = local_path(run.artifact_uri)
    if local is not None:
        p = local / artifact_path
        return p if p.exists() else None
    c = client(uri)
    try:
        dest = tempfile.mkdtemp(prefix="genctl-")
        return Path(c.download_artifacts(run.run_id, artifact_path, dest))
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        return None


def ui(uri: str | None, host: str, port: int) -> int:
    """Start the MLflow UI on the store genctl writes to; returns its exit code."""
    import subprocess
    import sys

    store = resolve_uri(uri)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if store.startswith("sqlite:") or "://" not in store:
        cmd += ["--default-artifact-root", str(Path("mlruns").resolve())]
    return subprocess.call(cmd)
