"""The MLflow UI in a real browser: what a user sees of two genctl runs.

`genctl ui` serves a store holding two short quickstart runs on loopback, and headless Chromium,
driven by Playwright, looks at it as a user would: the runs in the Model training view with
their dataset, source and model, a run's loss charts, and its sample grids step by step. The
system's Chromium is used (``apt-get install chromium``, or ``$GENCTL_CHROMIUM``), so nothing is
downloaded; without Playwright or Chromium the tests skip and say which is missing. Screenshots
are written to ``$GENCTL_UI_SCREENSHOTS``, else to ``ui-screenshots`` in the test's tmp folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.browser

RUNS = ("quick-a", "quick-b")
STEPS, SAMPLE_EVERY = 30, 10  # sample grids at steps 10, 20 and 30
TIMEOUT_MS = 30_000  # for one thing to appear: the UI on a busy two-core machine is slow


def _chromium() -> str:
    exe = os.environ.get("GENCTL_CHROMIUM")
    if not exe:
        names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        exe = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if not exe or not Path(exe).is_file():
        pytest.skip(
            "no Chromium to drive: install the system package (apt-get install chromium) "
            "or set GENCTL_CHROMIUM to a Chromium binary"
        )
    return exe


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        # --no-sandbox: Chromium refuses to start its sandbox as root (CI containers)
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    env = os.environ.get("GENCTL_UI_SCREENSHOTS")
    folder = Path(env) if env else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def store(browser, tmp_path_factory, _empty_mlflow_db) -> dict:
    """Two quickstart runs of a few dozen steps in a fresh folder's default store."""
    from genctl.recipe import load
    from genctl.tracking import client
    from genctl.trainer import train

    folder = tmp_path_factory.mktemp("ui-store")
    shutil.copyfile(_empty_mlflow_db, folder / "mlflow.db")  # migrated already: starts at once
    ids = {}
    with pytest.MonkeyPatch.context() as m:
        m.chdir(folder)
        m.delenv("MLFLOW_TRACKING_URI", raising=False)
        m.setenv("GENCTL_CACHE", str(folder / ".cache"))
        for seed, name in enumerate(RUNS):
            overrides = [
                f"train.steps={STEPS}",
                f"train.sample_every={SAMPLE_EVERY}",
                "train.log_every=5",
                f"train.checkpoint_every={STEPS}",
                "train.batch_size=16",
                "train.grid_size=16",
                f"train.seed={seed}",
                "data.size=64",
                f"tracking.run_name={name}",
            ]
            recipe = load(REPO / "recipes" / "quickstart.yaml", overrides)
            ids[name] = train(recipe, progress=False).run_id
        c = client()
        runs = {name: c.get_run(run_id) for name, run_id in ids.items()}
        models = {}
        for name, run in runs.items():
            found = c.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id = '{run.info.run_id}'",
            )
            models[name] = [m.model_id for m in found]
    return {"folder": folder, "runs": runs, "models": models}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui_url(store) -> str:
    """`genctl ui` on the store, as a user starts it; the URL it prints."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # no background job runner (its workers would outlive the server), no telemetry offline
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genctl", "ui", "--no-browser", "--port", str(port)],
        cwd=store["folder"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: the server's workers stop with it
    )
    try:
        line = proc.stdout.readline()
        found = re.search(r" at (http://\S+)", line)
        assert found, f"genctl ui printed {line!r}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the MLflow UI that genctl ui starts did not answer")
                time.sleep(0.3)
        yield found.group(1)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def page(browser, ui_url):
    """One tab for the module: the UI boots once (seconds of JavaScript on a busy machine), then
    each test moves within it as a user clicks, by the URL's fragment."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # the assistant panel MLflow opens on a first visit would cover half of each screenshot
    context.add_init_script(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    )
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def _expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return expect


def test_genctl_ui_lands_on_the_runs_in_the_model_training_view(page, ui_url, store, shots):
    expect = _expect()
    page.goto(ui_url)
    for name in RUNS:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    nav = page.get_by_role("navigation")
    # the Model training view's own pages, none of the GenAI view's (traces' sessions, judges)
    expect(nav.get_by_role("link", name="Model registry")).to_be_visible()
    expect(nav.get_by_role("link", name="Runs", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Judges")).to_have_count(0)
    page.screenshot(path=shots / "runs.png")


def test_the_runs_show_their_dataset_source_and_model(page, ui_url, store, shots):
    expect = _expect()
    page.goto(ui_url)
    expect(page.get_by_role("link", name=RUNS[0], exact=True)).to_be_visible()
    grid = page.get_by_role("grid")
    (data,) = {
        i.dataset.digest: i for r in store["runs"].values() for i in r.inputs.dataset_inputs
    }.values()
    shown = grid.get_by_role("button", name=f"{data.dataset.name} ({data.dataset.digest})")
    expect(shown).to_have_count(len(RUNS))  # the same data for both: one dataset, two cells
    expect(grid.get_by_role("gridcell", name="quickstart.yaml", exact=True)).to_have_count(2)
    for name, models in store["models"].items():  # the Models column links the logged model
        assert models, f"run {name} has no logged model (tracking.log_model)"
        for model_id in models:
            expect(grid.locator(f"a[href*='/models/{model_id}']")).to_have_count(1)
    page.screenshot(path=shots / "runs-columns.png")


def _model_metrics(page, ui_url, name: str):
    page.goto(ui_url)
    page.get_by_role("link", name=name, exact=True).click()
    page.get_by_role("tab", name="Model metrics").click()


def _card(page, title: str):
    heading = page.get_by_role("heading", name=title, exact=True)
    return page.get_by_test_id("experiment-view-compare-runs-card").filter(has=heading)


def test_a_run_shows_its_loss_charts(page, ui_url, shots):
    expect = _expect()
    name = RUNS[0]
    _model_metrics(page, ui_url, name)
    for loss in ("loss_g", "loss_d"):
        card = _card(page, loss)
        expect(card).to_be_visible()
        expect(card.get_by_text(f"{name} (train/{loss})")).to_be_visible()  # the line's legend
        expect(card.locator("path.js-line")).not_to_have_count(0)  # the plotted line
    page.screenshot(path=shots / "loss-charts.png")


def test_a_run_shows_its_sample_grids_step_by_step(page, ui_url, store, shots):
    expect = _expect()
    name = RUNS[0]
    run_id = store["runs"][name].info.run_id
    page.set_viewport_size({"width": 1200, "height": 1700})  # the dialog's grid is drawn square
    _model_metrics(page, ui_url, name)
    page.get_by_placeholder("Search metric charts").fill("samples")
    card = _card(page, "samples")
    expect(card).to_be_visible()
    card.get_by_role("button").first.click()  # full screen: the grid is drawn large
    dialog = page.get_by_role("dialog", name="samples")
    slider = dialog.get_by_role("slider")
    expect(slider).to_have_attribute("aria-valuemin", str(SAMPLE_EVERY))
    expect(slider).to_have_attribute("aria-valuemax", str(STEPS))
    track = slider.locator("xpath=ancestor::span[@dir][1]").bounding_box()
    shown = set()
    for step, x in ((SAMPLE_EVERY, 0.05), (STEPS, 0.99)):  # the slider's two ends
        page.mouse.click(track["x"] + x * track["width"], track["y"] + track["height"] / 2)
        expect(slider).to_have_attribute("aria-valuenow", str(step))
        image = dialog.locator(f"img[src*='samples%2Bstep%2B{step}%2B']")
        expect(image).to_be_visible()
        expect(image).to_have_attribute("src", re.compile(f"run_uuid={run_id}"))
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        shown.add(image.get_attribute("src"))
        page.screenshot(path=shots / f"samples-step-{step}.png")
        image.screenshot(path=shots / f"samples-step-{step}-grid.png")
    assert len(shown) == 2  # two grids, one per step
    page.keyboard.press("Escape")
