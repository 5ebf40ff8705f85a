"""MLflow: the record of every run. The only module that imports mlflow.

The default store is MLflow's own embedded default, ``sqlite:///mlflow.db`` with artifacts in
``./mlruns``; ``tracking.uri`` in the recipe or ``MLFLOW_TRACKING_URI`` point elsewhere (a team's
``mlflow server``). Logging never waits on the store inside the training loop: metrics and tags
are queued and written in batches by a background thread, and artifacts for a remote store are
written to a local staging folder first and uploaded by another. A store that goes away is retried
with backoff while training goes on; what was queued is kept (metrics in memory, artifacts on the
local disk) until it comes back. At the end of a run genctl waits for a store that is away until it
has been away ``tracking.retry_seconds``, then lists what it did not receive and where that is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
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
# The MLflow 3 UI opens an experiment of this kind on its runs (Model training), not on traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
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
    uri = resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    _open_store(mlflow, uri)
    return mlflow


_opened: set[str] = set()  # sqlite stores this process has opened (created or migrated if needed)


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if needed); no lock where none can be taken
    (a folder this user cannot write, a system without ``fcntl``)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_store(mlflow, uri: str) -> None:
    """Open a sqlite store the first time under a lock beside it (``mlflow.db.lock``).

    MLflow creates a fresh store's tables and migrates its schema when it opens it, with no lock:
    two processes opening a new ``mlflow.db`` at once both migrate and one dies (``duplicate
    column name``), or finds the schema half-way and refuses it. Under the lock the first one
    creates it and the others wait, then find it ready. MLflow keeps the opened store for the
    process, so the lock is taken once per process and store.
    """
    db = _sqlite_file(uri)
    if db is None or uri in _opened:
        return
    with _file_lock(db.with_name(db.name + ".lock")):
        try:
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception:
            return  # the caller's own call to the store says what is wrong, in its words
    _opened.add(uri)


def client(uri: str | None = None):
    mlflow = _mlflow(uri)
    return mlflow.MlflowClient(tracking_uri=resolve_uri(uri))


def local_path(artifact_uri: str) -> Path | None:
    """The folder behind a ``file:`` artifact URI (or a plain path), else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


DEFAULT_RETRY_SECONDS = 600.0  # tracking.retry_seconds: how long a store that is away is waited for
MAX_BACKOFF = 5.0  # seconds between tries while the store is away: it is noticed back within this
NOT_UPLOADED_TAG = "genctl.not_uploaded"  # artifacts the store never got, with their local paths
FAILURE_TAG = "genctl.failure"  # why a run failed; gone once a resume of it finishes


def staging_root() -> Path:
    """Where artifacts for a remote store are written first: ``$GENCTL_STAGING``, else
    ``~/.cache/genctl/staging``. Per user, not per folder, so ``--resume RUN_ID`` finds them
    from anywhere."""
    env = os.environ.get("GENCTL_STAGING")
    return Path(env) if env else Path.home() / ".cache" / "genctl" / "staging"


def staged(run_id: str, artifact_path: str) -> Path | None:
    """The local copy of a run's artifact that its remote store has not (yet) received, or None."""
    path = staging_root() / run_id / artifact_path
    return path if path.is_file() else None


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _warn(what: str, exc: BaseException) -> None:
    print(f"warning: {what} ({_error_line(exc)}); the run goes on", file=sys.stderr)


def _permanent(exc: BaseException) -> bool:
    """The store answered and refused (a 4xx other than timeout / too many requests): trying
    again cannot help. Anything else (no answer, a 5xx) is the store being away."""
    status = getattr(exc, "get_http_status_code", None)
    try:
        code = int(status()) if status else 0
    except Exception:
        return False
    return 400 <= code < 500 and code not in (408, 429)


class _Outage:
    """How long one background worker has been failing to reach the store, and its backoff."""

    def __init__(self, what: str, bound: float, store: str):
        self.what, self.bound, self.store = what, bound, store
        self.since: float | None = None
        self.tries = 0
        self.error = ""
        self._said = False

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.tries += 1
        self.error = _error_line(exc)
        if not self._said:
            self._said = True
            print(
                f"warning: {self.store} is not taking {self.what} ({self.error}); "
                f"training goes on and genctl retries for up to {self.bound:g} s",
                file=sys.stderr,
            )

    def ok(self) -> None:
        if self._said and self.since is not None:
            print(
                f"{self.store} took {self.what} again after {time.monotonic() - self.since:.0f} s",
                file=sys.stderr,
            )
        self.since, self.tries, self._said = None, 0, False

    @property
    def expired(self) -> bool:
        """Away for longer than the bound (only finish() gives up on that)."""
        return self.since is not None and time.monotonic() - self.since > self.bound

    def backoff(self) -> float:
        return min(MAX_BACKOFF, 0.1 * 2 ** min(self.tries, 6))


@dataclass
class _Upload:
    """One artifact waiting for the store: a staged file, or a sample grid."""

    key: str  # artifact path (a newer upload of the same path replaces a queued one)
    path: Path | None  # the local file (None: a grid kept in memory, local store)
    image: Any = None  # a grid's pixels (local store) ...
    image_key: str = ""  # ... or its MLflow image key, step and time
    step: int = 0
    timestamp: int = 0


class Tracker:
    """One MLflow run: params, tags, batched metrics, images and artifacts.

    Nothing the training loop calls waits on the store. Metrics and tags are queued and written
    in batches by one background thread; artifacts (checkpoints, grids, files) are written to a
    local file first and uploaded by another. A store that goes away is retried with backoff while
    training goes on; queued metrics stay in memory and artifacts on the local disk, and a newer
    version of an artifact replaces an older one still waiting. ``finish()`` waits for the store
    until it has been away ``retry_seconds``, then lists what it did not receive.
    """

    def __init__(
        self,
        *,
        experiment: str,
        run_name: str,
        uri: str | None = None,
        run_id: str | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        system_metrics: bool = False,
    ):
        self.uri = resolve_uri(uri)
        mlflow = _mlflow(self.uri)
        self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        try:
            if run_id is None:
                run = self._client.create_run(self._experiment(experiment), run_name=run_name)
            else:
                run = self._client.get_run(run_id)
                self._client.update_run(run_id, status="RUNNING")
        except BadInput:
            raise
        except Exception as exc:
            raise RunFailure(
                f"cannot reach the tracking store {self.uri}: {_error_line(exc)}",
                "Check tracking.uri / MLFLOW_TRACKING_URI, or unset them to use ./mlflow.db.",
            ) from exc
        # Another process still at work on the run (a training `genctl evaluate` logs to) owns
        # its staging folder; a run resumed after it stopped sends what it left there.
        leftovers = run_id is not None and run.info.status != "RUNNING"
        # a failed run resumed: once it finishes, its failure tag no longer says what it is
        self._failed_before = run_id is not None and FAILURE_TAG in run.data.tags
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.retry_seconds = float(retry_seconds)
        remote = self.artifact_dir() is None
        # Where artifacts are written before the store has them: the run's own artifact folder
        # for a local store (nothing to upload), else a staging folder of this run.
        self.local_dir: Path = (
            staging_root() / self.run_id if remote else self.artifact_dir()  # type: ignore[assignment]
        )
        self._remote = remote
        self._lock = threading.Condition()
        self._stop = threading.Event()  # finish(): drain, then end
        self._abandon = threading.Event()  # finish() gave up waiting: end now
        # metrics and tags
        self._records: list[tuple] = []  # ("metric", key, value, ts, step) | ("tag", key, value)
        self._unwritten: list[tuple] = []  # refused by the store for good
        self._metrics_busy = False
        self._metric_outage = _Outage(
            "metrics", self.retry_seconds, f"the tracking store {self.uri}"
        )
        # artifacts
        self._uploads: dict[str, _Upload] = {}  # waiting, oldest first
        self._uploading: _Upload | None = None
        self._refused: dict[str, tuple[_Upload, str]] = {}  # the store said no: key -> (item, why)
        self._upload_outage = _Outage(
            "artifacts", self.retry_seconds, f"the artifact store {self.artifact_uri}"
        )
        if remote and leftovers and self.local_dir.is_dir():
            self._requeue_leftovers()  # a resumed run: what an earlier session could not send
        self._threads = [
            threading.Thread(target=self._write_records, name="genctl-mlflow", daemon=True),
            threading.Thread(target=self._upload_loop, name="genctl-uploads", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._system = self._start_system_metrics(run_id is not None) if system_metrics else None

    def _experiment(self, name: str) -> str:
        """The id of the experiment ``name``, created (as model training) when there is none.

        Another process may create it between the look-up and the creation: then that one is
        used. An experiment without a kind is marked model training, so the MLflow UI opens it on
        its runs rather than on traces.
        """
        from mlflow.exceptions import MlflowException

        for _ in range(5):
            exp = self._client.get_experiment_by_name(name)
            if exp is not None:
                if EXPERIMENT_KIND_TAG not in exp.tags:
                    try:
                        self._client.set_experiment_tag(
                            exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                        )
                    except Exception as exc:  # only the UI's first view depends on it
                        _warn(f"could not mark experiment {name!r} as model training", exc)
                return exp.experiment_id
            try:
                return self._client.create_experiment(
                    name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise RunFailure(f"experiment {name!r} could neither be found nor created")

    # ------------------------------------------------------------ params and tags

    def log_params(self, params: dict[str, Any]) -> None:
        """Params, once at the start of a run (waits for the store, within ``retry_seconds``)."""
        from mlflow.entities import Param

        existing = self._call(lambda: self._client.get_run(self.run_id).data.params)
        items = [
            Param(k, str(v)[:MAX_PARAM_LEN])
            for k, v in params.items()
            if k not in existing  # resuming: params are immutable in MLflow
        ]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._call(
                lambda chunk=items[i : i + 100]: self._client.log_batch(self.run_id, params=chunk)
            )

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Queue tags; they are written with the metrics, in order."""
        with self._lock:
            self._records.extend(("tag", k, str(v)) for k, v in tags.items())
            self._lock.notify_all()

    def log_source(self, recipe: str | None, folder: Path | None = None) -> None:
        """Queue the run's source tags, which the MLflow UI shows as Source and User: the recipe,
        and the git commit of ``folder`` (the working folder) when it is a git checkout."""
        import getpass

        tags = {"mlflow.source.type": "LOCAL"}
        if recipe:
            tags["mlflow.source.name"] = str(recipe)
        commit = git_commit(folder or Path.cwd())
        if commit:
            tags["mlflow.source.git.commit"] = commit
        with contextlib.suppress(Exception):  # no user name (a container without passwd entry)
            tags["mlflow.user"] = getpass.getuser()
        self.set_tags(tags)

    def log_data(self, config, dataset, context: str = "training") -> None:
        """Record the data as the run's MLflow dataset input (the UI's Dataset column): its name,
        where it is read from, and the fingerprint of the decoded images as its digest.

        ``config`` is the recipe's ``data:`` section, ``dataset`` what was loaded from it. Once at
        the start of a run; a store that refuses it is warned about, never fatal.
        """
        try:
            entity = _dataset_entity(config, dataset)
            from mlflow.entities import DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
            self._client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags)])
        except Exception as exc:
            _warn("the tracking store did not take the run's dataset input", exc)

    # ------------------------------------------------------------ metrics (batched, async)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics; a background thread writes them in batches."""
        ts = int(time.time() * 1000)
        with self._lock:
            self._records.extend(("metric", k, float(v), ts, int(step)) for k, v in metrics.items())
            self._lock.notify_all()

    def _write_records(self) -> None:
        from mlflow.entities import Metric, RunTag

        while not self._abandon.is_set():
            with self._lock:
                while not self._records and not self._stop.is_set():
                    self._lock.wait(0.5)
                if not self._records:
                    return  # stopping, all written
                # one batch: MLflow takes 1000 metrics and 100 tags at most
                batch, metrics, tags = [], 0, 0
                for rec in self._records:
                    if rec[0] == "tag" and tags == 100 or metrics + tags == 1000:
                        break
                    batch.append(rec)
                    tags += rec[0] == "tag"
                    metrics += rec[0] == "metric"
                self._metrics_busy = True
            try:
                self._client.log_batch(
                    self.run_id,
                    metrics=[Metric(*r[1:]) for r in batch if r[0] == "metric"],
                    tags=[RunTag(*r[1:]) for r in batch if r[0] == "tag"],
                )
                done, failed = True, None
            except Exception as exc:
                done, failed = _permanent(exc), exc
            with self._lock:
                self._metrics_busy = False
                if done:
                    del self._records[: len(batch)]
                    if failed is not None:  # refused: kept in the file finish() writes
                        self._unwritten.extend(batch)
                    self._lock.notify_all()
            if failed is None:
                self._metric_outage.ok()
            elif not done:
                self._metric_outage.failed(failed)
                self._abandon.wait(self._metric_outage.backoff())

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until queued metrics are written (before checkpoints, so a resumed run's metrics
        continue where the checkpoint's left off) - but never while the store is away."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (
                (self._records or self._metrics_busy)
                and self._metric_outage.since is None
                and time.monotonic() < deadline
            ):
                self._lock.wait(0.05)

    def log_model(self, artifact: str, step: int, requirements: list[str]) -> str | None:
        """Log the run's checkpoint ``artifact`` as its MLflow logged model, linked to the
        metrics of ``step`` (written first); its id. A store that refuses it is a warning: the
        run and its checkpoint stand, and `genctl runs register` logs it later."""
        self.flush()
        if self._metric_outage.since is not None or self._upload_outage.since is not None:
            print(  # MLflow would retry each call for minutes: the run's end must not wait on it
                "warning: the tracking store is away, so the final model was not logged as an "
                "MLflow model; `genctl runs register` logs it when it registers the run",
                file=sys.stderr,
            )
            return None
        held = Path(tempfile.mkdtemp(prefix="genctl-model-", dir=self.local_dir.parent))
        try:
            return log_model(self.run_id, self._hold(artifact, held), step, requirements, self.uri)
        except Exception as exc:
            print(
                f"warning: the final model was not logged as an MLflow model ({_error_line(exc)});"
                " `genctl runs register` logs it when it registers the run",
                file=sys.stderr,
            )
            return None
        finally:
            shutil.rmtree(held, ignore_errors=True)

    def _hold(self, artifact: str, folder: Path) -> Path:
        """A file of ``artifact`` in ``folder`` that stays while the model is logged: a link to
        the local copy (the upload thread removes a remote store's copy once sent), else the
        store's copy, downloaded."""
        dest = folder / Path(artifact).name
        with self._lock:  # the upload thread removes staged files under this lock
            src = self.local_dir / artifact
            if src.is_file():
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copyfile(src, dest)
                return dest
        return Path(self._client.download_artifacts(self.run_id, artifact, str(folder)))

    # ------------------------------------------------------------ artifacts

    def log_image(self, image, key: str, step: int) -> None:
        """An image (H x W x C uint8 array) logged with its step, so the UI shows it over time.
        Uploaded in the background; for a remote store it is a PNG in the staging folder first."""
        item = _Upload(
            f"images/{key}+step+{step}", None, None, key, int(step), int(time.time() * 1000)
        )
        if self._remote:
            from PIL import Image

            item.path = self.local_dir / ".images" / f"{key.replace('/', '~')}-step-{step}.png"
            item.path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(item.path)
        else:
            item.image = image
        self._enqueue(item)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a copy of the file ``path`` under the folder ``artifact_path`` of the run."""
        name = Path(path).name
        dest = f"{artifact_path.strip('/')}/{name}" if artifact_path else name
        self.write_artifact(dest, lambda tmp: shutil.copyfile(path, tmp))

    def artifact_dir(self) -> Path | None:
        """The run's artifact folder when the artifact store is local, else None."""
        return local_path(self.artifact_uri)

    def write_artifact(self, artifact_path: str, write) -> Path:
        """Write an artifact atomically: ``write(tmp_path)`` then rename into place, so a crash
        mid-write never leaves a half file under the name; returns the local file.

        A local store's artifact is then in place. For a remote store the file is in the staging
        folder (``local_dir``) and is uploaded in the background; it stays there until the store
        has it, so ``--resume`` finds a checkpoint the store never received.
        """
        dest = self.local_dir / artifact_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if self._remote:
            self._enqueue(_Upload(artifact_path, dest))
        return dest

    def _requeue_leftovers(self) -> None:
        for path in sorted(self.local_dir.rglob("*"), key=lambda p: p.stat().st_mtime_ns):
            if not path.is_file() or path.name.startswith("."):  # a write cut short
                continue
            rel = path.relative_to(self.local_dir).as_posix()
            if rel.startswith(".images/") and "-step-" in path.stem:
                key, _, step = path.stem.rpartition("-step-")
                image_key = key.replace("~", "/")
                item = _Upload(
                    f"images/{image_key}+step+{step}",
                    path,
                    None,
                    image_key,
                    int(step),
                    path.stat().st_mtime_ns // 1_000_000,
                )
            elif not rel.startswith("."):
                item = _Upload(rel, path)
            else:
                continue
            self._uploads[item.key] = item

    def _enqueue(self, item: _Upload) -> None:
        with self._lock:
            self._uploads.pop(item.key, None)  # a newer version: the older one is not sent
            self._refused.pop(item.key, None)
            self._uploads[item.key] = item
            self._lock.notify_all()

    def _upload_loop(self) -> None:
        while not self._abandon.is_set():
            with self._lock:
                while not self._uploads and not self._stop.is_set():
                    self._lock.wait(0.5)
                if not self._uploads:
                    return
                item = self._uploads.pop(next(iter(self._uploads)))
                self._uploading = item
                stamp = _stamp(item.path)
            try:
                self._upload(item)
                failed = None
            except FileNotFoundError:  # sent and removed by another session of the run
                failed = None
            except Exception as exc:
                failed = exc
            with self._lock:
                self._uploading = None
                newer = item.key in self._uploads
                if failed is None:
                    if self._remote and not newer and item.path and _stamp(item.path) == stamp:
                        item.path.unlink(missing_ok=True)  # the store has it: the copy goes
                elif _permanent(failed):
                    if not newer:
                        self._refused[item.key] = (item, _error_line(failed))
                elif not newer:  # back to the front of the line: order is kept
                    self._uploads = {item.key: item, **self._uploads}
                self._lock.notify_all()
            if failed is None:
                self._upload_outage.ok()
            elif not _permanent(failed):
                self._upload_outage.failed(failed)
                self._abandon.wait(self._upload_outage.backoff())

    def _upload(self, item: _Upload) -> None:
        if item.image_key:
            image = item.image
            if image is None:
                from PIL import Image

                with Image.open(item.path) as im:
                    image = im.copy()
            self._client.log_image(
                self.run_id, image, key=item.image_key, step=item.step, timestamp=item.timestamp
            )
            return
        parent = str(Path(item.key).parent)
        self._client.log_artifact(self.run_id, str(item.path), None if parent == "." else parent)

    # ------------------------------------------------------------ system metrics

    def _start_system_metrics(self, resumed: bool):
        """MLflow's own system-metrics monitor on this run: CPU, memory, disk and network (and
        GPU where ``nvidia-ml-py`` is installed) as ``system/...`` metrics, sampled every 10 s
        (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``). A resumed run continues its steps. It
        writes to the store from its own thread; a monitor that cannot start is warned about."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=resumed, tracking_uri=self.uri
            )
            monitor.start()
            return monitor
        except Exception as exc:  # psutil missing, a store that is away
            _warn("system metrics are not recorded", exc)
            return None

    def _stop_system_metrics(self) -> None:
        """Stop the monitor and send what it sampled; a store that is away is not waited for
        (MLflow's monitor would block on it), its last samples are then lost."""
        monitor, self._system = getattr(self, "_system", None), None
        if monitor is None:
            return
        done = threading.Thread(target=monitor.finish, name="genctl-system-metrics", daemon=True)
        done.start()
        done.join(timeout=MAX_BACKOFF)

    # ------------------------------------------------------------ end

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is queued, then mark the run ``FINISHED``, ``FAILED`` or ``KILLED``.

        Waits while the store takes things, and while it has been away less than
        ``retry_seconds``. What it never took is not dropped: metrics are saved to a JSON file in
        the working folder, artifacts stay in the staging folder; both are listed on stderr (and
        the artifacts in the run's ``genctl.not_uploaded`` tag, if the store is back for it).
        """
        self._stop_system_metrics()
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        try:
            while any(t.is_alive() for t in self._threads):
                if self._metric_outage.expired and self._upload_outage.expired:
                    break
                if self._metric_outage.expired and not self._threads[1].is_alive():
                    break
                if self._upload_outage.expired and not self._threads[0].is_alive():
                    break
                for t in self._threads:
                    t.join(timeout=0.2)
        finally:
            self._abandon.set()
            with self._lock:
                self._lock.notify_all()
                unwritten = self._unwritten + list(self._records)
                left = [*self._uploads.values()] + ([self._uploading] if self._uploading else [])
                refused = [item for item, _ in self._refused.values()]
            missing = self._report(unwritten, left + refused)

        def end() -> None:
            if missing:  # the list on the run, where the UI shows it
                try:
                    self._client.set_tag(self.run_id, NOT_UPLOADED_TAG, "\n".join(missing)[:5000])
                except Exception as exc:
                    if not _permanent(exc):
                        raise
            if status == "FINISHED" and self._failed_before:
                with contextlib.suppress(Exception):  # already gone: nothing to clear
                    self._client.delete_tag(self.run_id, FAILURE_TAG)
            self._client.set_terminated(self.run_id, status=status)

        away = self._metric_outage.expired or self._upload_outage.expired
        self._call(end, budget=MAX_BACKOFF if away else None)  # (if away: waited for already)
        if self._remote and self.local_dir.is_dir():
            _remove_empty_dirs(self.local_dir)

    def _report(self, unwritten: list[tuple], uploads: list[_Upload]) -> list[str]:
        """Save and list what the store did not take; returns the artifact lines."""
        metrics = [r for r in unwritten if r[0] == "metric"]
        tags = [r for r in unwritten if r[0] == "tag"]
        if metrics or tags:
            import json

            path = Path(f"genctl-unlogged-metrics-{self.run_id}.json").resolve()
            path.write_text(
                json.dumps(
                    [{"key": k, "value": v, "timestamp": t, "step": s} for _, k, v, t, s in metrics]
                    + [{"tag": k, "value": v} for _, k, v in tags]
                )
            )
            why = f" ({self._metric_outage.error})" if self._metric_outage.error else ""
            print(
                f"warning: the tracking store did not take {len(metrics)} metric values and "
                f"{len(tags)} tags{why}; saved to {path}",
                file=sys.stderr,
            )
        lines = []
        for item in uploads:
            if item.path is None:  # a grid of a local store: nothing on disk to point at
                lines.append(f"{item.key} (not saved)")
            else:
                lines.append(f"{item.key}: {item.path}")
        if lines:
            why = self._upload_outage.error or next(
                (w for _, w in self._refused.values()), "unknown"
            )
            print(
                f"warning: the artifact store {self.artifact_uri} did not receive {len(lines)} "
                f"artifacts ({why}); they are kept here, and `genctl train --resume {self.run_id}` "
                "resumes from them and sends them:\n  " + "\n  ".join(lines),
                file=sys.stderr,
            )
        return lines

    def _call(self, fn, budget: float | None = None):
        """Call the store now, retrying with backoff while it is away (for up to ``budget``
        seconds, by default ``retry_seconds``)."""
        budget = self.retry_seconds if budget is None else budget
        start = time.monotonic()
        tries = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                tries += 1
                if _permanent(exc) or time.monotonic() - start > budget:
                    raise RunFailure(
                        f"tracking store {self.uri} failed: {_error_line(exc)}"
                    ) from exc
                time.sleep(min(MAX_BACKOFF, 0.1 * 2 ** min(tries, 6)))


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder``, or None (not a git checkout, no git, git slow)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def _dataset_entity(config, dataset):
    """An MLflow dataset for the recipe's data: named after its folder (or its kind when it is
    generated or a standard set), sourced from that folder, the fingerprint of its decoded
    images as digest, and its size and image shape as profile."""
    import json
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset as DatasetEntity

    kind, root = config.kind, config.root
    if root:
        where = Path(root).expanduser().resolve()
        with warnings.catch_warnings():  # MLflow registers its local source twice and says so
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(where))
        name = kind if kind in ("mnist", "cifar10") else where.name
    else:
        source = CodeDatasetSource({"genctl.data.kind": kind})
        name = kind
    info = dataset.info
    profile = {
        "split": config.split,
        "images": info.size,
        "image_size": info.image_size,
        "channels": info.channels,
        "classes": info.num_classes,
        "task": info.task,
    }
    meta = MetaDataset(source, name=name, digest=dataset.fingerprint or None).to_dict()
    return DatasetEntity(
        name=meta["name"],
        digest=meta["digest"],
        source_type=meta["source_type"],
        source=meta["source"],
        profile=json.dumps(profile),
    )


def _stamp(path: Path | None) -> tuple | None:
    """Which version of a file this is (a newer one replaces it by rename: another inode)."""
    try:
        st = path.stat() if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size) if st else None


def _remove_empty_dirs(root: Path) -> None:
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


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


def sort_key(sort: str) -> tuple[str, str]:
    """``eval/fid`` (lowest first), ``eval/accuracy desc`` or ``-eval/accuracy`` (highest first),
    or MLflow's own ``params.x``, ``attributes.start_time``: (MLflow order_by, the metric shown)."""
    key, _, direction = sort.strip().partition(" ")
    direction = direction.strip().upper() or "ASC"
    if key.startswith("-"):
        key, direction = key[1:], "DESC"
    if not key or direction not in ("ASC", "DESC"):
        raise BadInput(
            f"--sort {sort!r} is not a metric and an optional direction",
            "Use e.g. --sort eval/fid (lowest first) or --sort 'eval/accuracy desc'.",
        )
    if key.split(".", 1)[0] in ("metrics", "params", "tags", "attributes", "attribute"):
        return f"{key} {direction}", ""
    return f"metrics.`{key}` {direction}", key


def search_runs(
    plugin: str | None = None,
    status: str | None = None,
    limit: int = 20,
    uri: str | None = None,
    where: str | None = None,
    sort: str | None = None,
) -> list[RunInfo]:
    """Recent genctl runs, newest first, optionally of one plugin and status.

    ``where`` is a filter in MLflow's search syntax (``metrics.`eval/fid` < 40 and
    params.`train.steps` = '1000'``), ``sort`` a metric to order by (see :func:`sort_key`); a
    filter or order MLflow cannot read is bad input.
    """
    c = client(uri)
    exps = {e.experiment_id: e.name for e in c.search_experiments()}
    if not exps:
        return []
    filters = [f"tags.`{PLUGIN_TAG}` = '{plugin}'" if plugin else f"tags.`{PLUGIN_TAG}` != ''"]
    if status:
        filters.append(f"attributes.status = '{status}'")
    if where and where.strip():
        filters.append(where.strip())
    order = [sort_key(sort)[0]] if sort else []
    try:
        runs = c.search_runs(
            list(exps),
            filter_string=" and ".join(filters),
            order_by=[*order, "attributes.start_time DESC"],
            max_results=limit,
        )
    except Exception as exc:
        if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
            raise
        what = f"--where {where!r}" if where else f"--sort {sort!r}"
        raise BadInput(
            f"{what} is not a search MLflow can run: {str(exc).splitlines()[0][:200]}",
            "Write it in MLflow's search syntax, names with a slash in backticks, strings "
            "quoted: metrics.`eval/fid` < 40 and params.`model.latent` = '64'.",
        ) from None
    return [_info(r, exps) for r in runs]


def download(run: RunInfo, artifact_path: str, uri: str | None = None) -> Path | None:
    """A local path to an artifact of ``run`` (downloaded when the store is remote), or None."""
    local = local_path(run.artifact_uri)
    if local is not None:
        p = local / artifact_path
        return p if p.exists() else None
    copy = staged(run.run_id, artifact_path)
    if copy is not None:  # written here, not (yet) received by the store: the newest version
        return copy
    c = client(uri)
    try:
        dest = tempfile.mkdtemp(prefix="genctl-")
        return Path(c.download_artifacts(run.run_id, artifact_path, dest))
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        return None


def ui_url(host: str, port: int, experiment: str | None = None, uri: str | None = None) -> str:
    """Where the MLflow UI shows the runs of ``experiment`` (by default the experiment of the
    newest genctl run); the UI's home when the store has none. An unknown name is bad input."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    if experiment:
        exp = client(uri).get_experiment_by_name(experiment)
        if exp is None:
            names = ", ".join(e.name for e in client(uri).search_experiments()) or "none"
            raise BadInput(
                f"no experiment {experiment!r} in the tracking store {resolve_uri(uri)}",
                f"Experiments there: {names}.",
            )
        exp_id = exp.experiment_id
    else:
        newest = search_runs(limit=1, uri=uri)
        if not newest:
            return f"{base}/"
        exp_id = client(uri).get_run(newest[0].run_id).info.experiment_id
    # workflowType: MLflow's Model training view (runs, models, registry), where without it the
    # UI opens in its GenAI view (traces, judges, prompts)
    return f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def can_open_browser() -> bool:
    """A graphical browser can be opened here (not over ssh without a display, where Python's
    ``webbrowser`` would start a text browser in the terminal the server logs to)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def ui(uri: str | None, host: str, port: int, browse: str | None = None) -> int:
    """Start the MLflow UI on the store genctl writes to and, once it answers, open the browser
    on ``browse``; returns the server's exit code."""
    import socket
    import subprocess
    import webbrowser

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
        # one person's UI: MLflow's default of four worker processes, each importing MLflow,
        # took 56 s to answer on a busy two-core machine where one took 21 s
        "--workers",
        "1",
    ]
    if store.startswith("sqlite:") or "://" not in store:
        cmd += ["--default-artifact-root", str(Path("mlruns").resolve())]
    proc = subprocess.Popen(cmd)

    def open_when_up() -> None:
        connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection((connect, port), timeout=1).close()
            except OSError:
                time.sleep(0.5)
                continue
            webbrowser.open(browse)
            return

    if browse:
        threading.Thread(target=open_when_up, name="genctl-browser", daemon=True).start()
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise


# ---------------------------------------------------------------- logged models and the registry

MODEL_NAME = "model"  # a run's logged model: its final model as an MLflow pyfunc
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc, as code: nothing pickled


def pyfunc_model() -> None:
    """Give MLflow genctl's pyfunc; run by ``mlflow_model.py`` when MLflow loads a logged model.

    ``load_context`` rebuilds the model from genctl's checkpoint (``weights_only=True``) through
    the installed family plugin; ``predict`` is :meth:`genctl.logged_model.ImageModel.predict`.
    """
    import warnings

    import mlflow

    # MLflow asks for type hints on predict (its own filter shows it whatever ours say); images
    # in and out fit none of its types, so the advice is dropped here
    shown = warnings.showwarning

    def show(message, *args, **kwargs):
        if "type hints" not in str(message):
            shown(message, *args, **kwargs)

    warnings.showwarning = show
    try:

        class GenctlImages(mlflow.pyfunc.PythonModel):
            """Images from {n, seed, options} (and {images} for translation): N x H x W x C
            uint8."""

            def load_context(self, context):
                from genctl.logged_model import ImageModel

                self.model = ImageModel.load(context.artifacts["checkpoint"])

            def predict(self, context, model_input, params=None):
                return self.model.predict(model_input)

        mlflow.models.set_model(GenctlImages())
    finally:
        warnings.showwarning = shown


def log_model(
    run_id: str,
    checkpoint_path: str | Path,
    step: int,
    requirements: list[str],
    uri: str | None = None,
) -> str:
    """Log checkpoint ``checkpoint_path`` of run ``run_id`` as its MLflow logged model (a pyfunc
    from code, see :func:`pyfunc_model`), linked to the run's metrics of ``step``; its id."""
    mlflow = _mlflow(uri)
    from mlflow import pyfunc
    from mlflow.models import Model

    run = mlflow.MlflowClient(tracking_uri=resolve_uri(uri)).get_run(run_id)
    mlflow.set_experiment(experiment_id=run.info.experiment_id)  # where the model is recorded
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one local copy
    info = Model.log(
        artifact_path=None,
        name=MODEL_NAME,
        flavor=pyfunc,
        run_id=run_id,
        step=int(step),
        python_model=str(MODEL_CODE),
        artifacts={"checkpoint": str(checkpoint_path)},
        pip_requirements=requirements,  # given: MLflow would otherwise load the model to guess
        tags={PLUGIN_TAG: run.data.tags.get(PLUGIN_TAG, ""), "genctl.step": str(step)},
    )
    return info.model_id


def logged_model_of(run_id: str, uri: str | None = None) -> str | None:
    """The id of run ``run_id``'s newest logged model named ``model``, or None."""
    c = client(uri)
    run = c.get_run(run_id)
    found = c.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=20,
    )
    ready = [m for m in found if str(m.status) == "READY"]  # not one whose upload failed
    return ready[0].model_id if ready else None


def register(run_id: str, model_id: str, name: str, alias: str | None, uri: str | None = None):
    """A new version of registered model ``name`` from logged model ``model_id`` of ``run_id``,
    with ``alias`` pointing at it; its version number. A name or alias MLflow refuses is bad
    input."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        try:
            c.get_registered_model(name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            c.create_registered_model(name)
        version = c.create_model_version(
            name, f"models:/{model_id}", run_id=run_id, model_id=model_id
        )
        if alias:
            c.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
            raise
        raise BadInput(
            f"MLflow refuses the registration: {str(exc).splitlines()[0][:200]}",
            "A model name is letters, digits, '-', '_' and '.'; an alias the same, not "
            "'latest' nor v<number> (those name versions already).",
        ) from None
    return int(version.version)


def _parse_models_uri(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` -> (NAME, alias, None); ``models:/NAME/3`` -> (NAME, None, "3")."""
    body = ref[len("models:/") :].strip("/")
    if "@" in body:
        name, _, alias = body.rpartition("@")
        if name and alias and "/" not in name:
            return name, alias, None
    else:
        name, _, version = body.rpartition("/")
        if name and version.isdigit() and "/" not in name:
            return name, None, version
    raise BadInput(
        f"{ref!r} is not a registered model reference",
        "Write models:/NAME@ALIAS (models:/mnist-gan@champion) or models:/NAME/VERSION.",
    )


def registered_checkpoint(ref: str, uri: str | None = None) -> Path:
    """The genctl checkpoint kept in the logged model that ``models:/NAME@alias`` (or
    ``models:/NAME/VERSION``) points to; bad input naming what exists when it points nowhere."""
    from mlflow.exceptions import MlflowException

    name, alias, number = _parse_models_uri(ref)
    c = client(uri)
    try:
        c.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in c.search_registered_models(max_results=50))
        raise BadInput(
            f"no registered model {name!r} in the tracking store {resolve_uri(uri)}",
            f"Registered models: {', '.join(names) or 'none'}; register a run with "
            "`genctl runs register RUN_ID --name NAME --alias champion`.",
        ) from None
    try:
        mv = (
            c.get_model_version_by_alias(name, alias)
            if alias
            else c.get_model_version(name, number)
        )
    except MlflowException:
        model = c.get_registered_model(name)
        aliases = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items()))
        latest = max((int(v.version) for v in model.latest_versions), default=0)
        raise BadInput(
            f"registered model {name!r} has no "
            + (f"alias @{alias}" if alias else f"version {number}"),
            f"It has versions 1 to {latest}"
            + (f" and aliases {aliases}" if aliases else "")
            + "; set one with `genctl runs register RUN_ID --name NAME --alias ALIAS`.",
        ) from None
    # the logged model: its id, or (a store that keeps none) the source models:/<id>
    model_id = mv.model_id or (mv.source or "").removeprefix("models:/")
    if not model_id.startswith("m-"):
        raise BadInput(f"{ref} was not registered by genctl: it has no logged model")
    model = c.get_logged_model(model_id)
    local = local_path(model.artifact_location)
    if local is not None:
        path = local / "artifacts" / "final.pt"
        if path.is_file():
            return path
    else:
        import mlflow

        try:
            dest = tempfile.mkdtemp(prefix="genctl-")
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{model.artifact_location}/artifacts/final.pt", dst_path=dest
                )
            )
        except Exception:
            pass
    raise BadInput(f"{ref}: its logged model {model_id} holds no genctl checkpoint")


def log_comparison(picture: Path, run_ids: list[str], experiment: str = "compare") -> str:
    """A run of ``experiment`` holding the comparison picture of ``run_ids``; its id."""
    tracker = Tracker(
        experiment=experiment, run_name="compare " + " vs ".join(r[:8] for r in run_ids)
    )
    try:
        tracker.set_tags({"genctl.compare.runs": ",".join(run_ids)})
        tracker.log_artifact(picture)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return tracker.run_id


def link_metrics_to_model(run_id: str, metrics: dict[str, float], step: int, uri=None):
    """Log ``metrics`` of ``step`` once more with the run's logged model when that model is the
    one of ``step`` (a later `genctl evaluate` of the final model), so the model carries its
    evaluation; its id, or None when no logged model is of that step."""
    from mlflow.entities import Metric

    model_id = logged_model_of(run_id, uri)
    if model_id is None or not metrics:
        return None
    c = client(uri)
    if c.get_logged_model(model_id).tags.get("genctl.step") != str(step):
        return None
    now = int(time.time() * 1000)
    c.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, int(step), model_id=model_id) for k, v in metrics.items()
        ],
    )
    return model_id
