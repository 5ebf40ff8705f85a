"""Faults keep the last good state: divergence, interrupts anywhere, killed processes, full disks.

Divergence is forced by making the toy loss NaN from a chosen step. Interrupts and kills go to a
real `genctl` process (tests/fault_child.py) held at the spot under test: an evaluation, a
checkpoint write, `genctl sample`, `genctl evaluate`.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from genctl import checkpoint, interrupts
from genctl.cli import app
from genctl.recipe import apply_overrides, validate
from genctl.tracking import client, get_run, local_path, search_runs
from genctl.trainer import FAILURE_TAG, DiskFull, Diverged, train
from tests import toy
from tests.helpers import TOY_RECIPE, use_toy_plugin, write_recipe

CHILD = Path(__file__).with_name("fault_child.py")
REPO = CHILD.parent.parent

# The bound: a signalled process is gone within 10 s. The wait allows twice that for a
# loaded test machine; a process that ignores the signal (an evaluation run to its end, a
# slow sampler) takes minutes, so the bound still tells the two apart.
EXIT_WAIT_S = 20


def _recipe(*overrides):
    return validate(apply_overrides(TOY_RECIPE, list(overrides)), spec=toy.SPEC)


def _artifacts(run_id: str) -> Path:
    return local_path(get_run(run_id).artifact_uri)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ck = checkpoint.load(path)
    return {f"{n}.{k}": v for n, sd in {**ck["nets"], **ck["ema"]}.items() for k, v in sd.items()}


def _all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def _nan_loss(monkeypatch, from_step: int, groups=("d", "g"), until: int | None = None) -> None:
    """The toy loss is NaN at 0-based steps from_step.. (until, exclusive), for ``groups``."""
    original = toy.ToyObjective.loss

    def loss(self, group, batch, step):
        value, logs = original(self, group, batch, step)
        if group in groups and from_step <= step < (until or 10**9):
            value = value * float("nan")
        return value, logs

    monkeypatch.setattr(toy.ToyObjective, "loss", loss)


# ---------------------------------------------------------------- divergence


@pytest.mark.parametrize("log_every", [5, 20], ids=["caught-at-log", "caught-at-checkpoint"])
def test_diverged_run_stops_failed_and_keeps_its_last_finite_checkpoint(
    workdir, monkeypatch, log_every
):
    original = toy.ToyObjective.loss
    _nan_loss(monkeypatch, from_step=11)  # the 12th step's loss is NaN
    with pytest.raises(Diverged) as info:
        train(_recipe(f"train.log_every={log_every}"), progress=False)
    err = info.value
    assert "non-finite loss_d, loss_g at step 12" in err.message
    assert "last good checkpoint is step 10" in err.hint

    (run,) = search_runs()
    assert run.status == "FAILED"
    assert run.tags[FAILURE_TAG] == "non-finite loss_d, loss_g at step 12"
    art = local_path(run.artifact_uri)
    assert str(art / checkpoint.LAST) in err.hint
    last = checkpoint.load(art / checkpoint.LAST)
    assert last["step"] == 10 and _all_finite(_weights(art / checkpoint.LAST))
    assert not (art / checkpoint.FINAL).exists()

    monkeypatch.setattr(toy.ToyObjective, "loss", original)
    # resume from the good checkpoint, with a smaller learning rate
    resumed = train(_recipe("train.optimizer.lr=1e-4"), resume=run.run_id, progress=False)
    assert resumed.run_id == run.run_id and resumed.step == 20
    assert get_run(run.run_id).status == "FINISHED"
    assert FAILURE_TAG not in get_run(run.run_id).tags  # the run no longer says it failed
    assert _all_finite(_weights(art / checkpoint.FINAL))
    last = checkpoint.load(art / checkpoint.LAST)
    assert last["optimizers"]["g"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_diverged_run_exits_1_naming_the_step_and_the_checkpoint(workdir, monkeypatch):
    use_toy_plugin(monkeypatch)
    _nan_loss(monkeypatch, from_step=7)
    res = CliRunner().invoke(app, ["train", str(write_recipe(workdir / "r.yaml")), "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "training diverged: non-finite loss_d, loss_g at step 8" in res.output
    assert "last good checkpoint is step 5" in res.output
    assert "genctl train --resume" in res.output


def test_skip_drops_non_finite_updates_and_finishes(workdir, monkeypatch):
    _nan_loss(monkeypatch, from_step=3, groups=("d",), until=5)  # d at steps 4 and 5
    result = train(_recipe("train.nonfinite=skip"), progress=False)
    run = get_run(result.run_id)
    assert run.status == "FINISHED" and run.metrics["train/skipped_steps"] == 2
    art = local_path(run.artifact_uri)
    assert _all_finite(_weights(art / checkpoint.FINAL))
    last = checkpoint.load(art / checkpoint.LAST)
    assert last["optimizers"]["d"]["state"][0]["step"] == 20 - 2  # two updates dropped
    assert last["optimizers"]["g"]["state"][0]["step"] == 20


def test_skip_stops_after_the_limit_of_non_finite_steps_in_a_row(workdir, monkeypatch):
    _nan_loss(monkeypatch, from_step=4, groups=("d",))
    with pytest.raises(Diverged, match="3 steps in a row"):
        train(_recipe("train.nonfinite=skip", "train.nonfinite_limit=3"), progress=False)
    (run,) = search_runs()
    assert run.status == "FAILED"
    art = local_path(run.artifact_uri)
    assert checkpoint.load(art / checkpoint.LAST)["step"] == 5  # its weights: updates dropped
    assert _all_finite(_weights(art / checkpoint.LAST))


# ---------------------------------------------------------------- full disk


def test_full_disk_keeps_the_previous_checkpoint_and_says_how_much_room_is_needed(
    workdir, monkeypatch
):
    write = checkpoint.write

    def disk_fills_up(payload, f):
        if payload["step"] != 10:
            return write(payload, f)
        Path(f).write_bytes(b"\0" * 100)  # part of it went to disk, then the disk was full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write", disk_fills_up)
    with pytest.raises(DiskFull) as info:
        train(_recipe(), progress=False)
    assert info.value.exit_code == 1
    (run,) = search_runs()
    art = local_path(run.artifact_uri)
    need = checkpoint.nbytes(checkpoint.load(art / checkpoint.LAST))
    assert f"needs about {need / 1e6:.1f} MB" in info.value.message
    assert "previous checkpoints/last.pt (step 5) is intact" in info.value.message
    assert checkpoint.load(art / checkpoint.LAST)["step"] == 5
    assert sorted(p.name for p in (art / "checkpoints").iterdir()) == ["last.pt"]  # no tmp left
    assert run.status == "FAILED" and "disk full" in run.tags[FAILURE_TAG]


# ---------------------------------------------------------------- interrupts, in process


def test_interrupt_during_the_sample_grid_abandons_it_and_saves_the_step(workdir, monkeypatch):
    def ctrl_c_in_grid(self, n, options, generator, inputs=None):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10  # a long grid (a diffusion model's, on a CPU)
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("the grid went on after Ctrl-C")

    monkeypatch.setattr(toy.ToySampler, "sample", ctrl_c_in_grid)
    result = train(_recipe("train.sample_every=10"), progress=False)
    assert result.interrupted and result.step == 10
    assert get_run(result.run_id).status == "KILLED"
    assert checkpoint.load(_artifacts(result.run_id) / checkpoint.LAST)["step"] == 10


def test_second_interrupt_stops_at_once_keeping_the_last_checkpoint(workdir, monkeypatch):
    original = toy.ToyObjective.loss

    def ctrl_c_twice(self, group, batch, step):
        if step == 7 and group == "g":
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("the step went on after a second Ctrl-C")
        return original(self, group, batch, step)

    monkeypatch.setattr(toy.ToyObjective, "loss", ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt) as info:  # a regression must not end the session
        train(_recipe(), progress=False)
    assert "without saving; the last checkpoint is step 5" in str(info.value)
    (run,) = search_runs()
    assert run.status == "KILLED"
    assert checkpoint.load(local_path(run.artifact_uri) / checkpoint.LAST)["step"] == 5


def test_interrupt_before_training_begins_saves_nothing(workdir, monkeypatch):
    import genctl.data

    def sigterm_while_decoding(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("decoding went on after SIGTERM")

    def unhandled(signum, frame):  # instead of SIGTERM's default: ending this test process
        raise AssertionError("the trainer did not handle SIGTERM")

    monkeypatch.setattr(genctl.data, "open_dataset", sigterm_while_decoding)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(interrupts.Interrupted):
            train(_recipe(), progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert search_runs() == []


def test_deferred_write_finishes_before_the_interrupt_acts():
    done = []
    with pytest.raises(interrupts.Interrupted), interrupts.handled(abandon=True):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("written")
        done.append("went on")  # not reached: the interrupt acts when the write is done
    assert done == ["written"]


# ---------------------------------------------------------------- interrupts and kills, real processes


def _child(workdir: Path, spot: str, *args: str) -> tuple[subprocess.Popen, Path]:
    marker = workdir / f"at-{spot}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the same arithmetic as this process
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, str(CHILD), spot, str(marker), *args]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, marker


def _wait_for(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 300  # starting Python, torch and MLflow on a busy machine
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the process ended before the spot: {proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the process never reached the spot")
        time.sleep(0.05)


def _signal_and_wait(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(
            f"still running {EXIT_WAIT_S} s after {signal.Signals(sig).name}: {out[-2000:]}"
        )
    return proc.returncode, out


def _reference_final(**overrides) -> dict[str, torch.Tensor]:
    """The final weights of the same recipe trained without interruption (in this process)."""
    full = train(_recipe(*overrides), progress=False)
    return _weights(_artifacts(full.run_id) / checkpoint.FINAL)


def _resume_matches(run_id: str, reference: dict[str, torch.Tensor]) -> None:
    resumed = train(_recipe(), resume=run_id, progress=False)
    assert resumed.run_id == run_id and resumed.step == 20
    final = _weights(_artifacts(run_id) / checkpoint.FINAL)
    assert final.keys() == reference.keys()
    for k in reference:
        assert torch.equal(final[k], reference[k]), k


def test_sigint_during_evaluation_abandons_it_saves_and_resumes_exactly(workdir, inception_weights):
    raw = apply_overrides(
        TOY_RECIPE,
        [
            "evaluate.every=10",
            "evaluate.metrics=[isc]",
            "evaluate.num_samples=64",
            "evaluate.batch_size=8",
            f"evaluate.feature_extractor_weights={inception_weights}",
        ],
    )
    (workdir / "r.yaml").write_text(yaml.safe_dump(raw))
    proc, marker = _child(workdir, "sampler", "train", "r.yaml", "--no-progress")
    _wait_for(proc, marker)  # in the evaluation at step 10, generating
    code, out = _signal_and_wait(proc, signal.SIGINT)
    assert code == 130, out[-3000:]
    assert "interrupted at step 10; checkpoint saved" in out

    (run,) = search_runs()
    assert run.status == "KILLED" and "eval/isc_mean" not in run.metrics
    assert checkpoint.load(local_path(run.artifact_uri) / checkpoint.LAST)["step"] == 10
    _resume_matches(run.run_id, _reference_final())


def test_sigint_during_a_checkpoint_write_saves_it_and_resumes_exactly(workdir):
    write_recipe(workdir / "r.yaml")
    proc, marker = _child(workdir, "checkpoint-slow", "train", "r.yaml", "--no-progress")
    _wait_for(proc, marker)  # writing the step-10 checkpoint
    code, out = _signal_and_wait(proc, signal.SIGINT)
    assert code == 130, out[-3000:]

    (run,) = search_runs()
    assert run.status == "KILLED"
    art = local_path(run.artifact_uri)
    assert checkpoint.load(art / checkpoint.LAST)["step"] == 10
    assert sorted(p.name for p in (art / "checkpoints").iterdir()) == ["last.pt"]
    _resume_matches(run.run_id, _reference_final())


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one(workdir):
    write_recipe(workdir / "r.yaml")
    proc, marker = _child(workdir, "checkpoint-hang", "train", "r.yaml", "--no-progress")
    _wait_for(proc, marker)  # half of the step-10 checkpoint written
    proc.kill()
    proc.communicate(timeout=60)

    (run,) = search_runs()
    art = local_path(run.artifact_uri)
    names = sorted(p.name for p in (art / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.pt"  # beside it, the half-written temporary
    assert checkpoint.load(art / checkpoint.LAST)["step"] == 5
    _resume_matches(run.run_id, _reference_final())


def test_sigterm_during_genctl_sample_exits_130_and_writes_no_image(workdir):
    run_id = train(_recipe("train.steps=5"), progress=False).run_id
    proc, marker = _child(
        workdir, "sampler", "sample", "--run", run_id, "--n", "16", "--out", "grid.png"
    )
    _wait_for(proc, marker)
    code, out = _signal_and_wait(proc, signal.SIGTERM)
    assert code == 130, out[-3000:]
    assert not (workdir / "grid.png").exists()


def test_sigterm_during_genctl_evaluate_exits_130_and_logs_nothing(workdir, inception_weights):
    run_id = train(_recipe("train.steps=5"), progress=False).run_id
    proc, marker = _child(
        workdir,
        "sampler",
        "evaluate",
        "--run",
        run_id,
        "--metrics",
        "isc",
        "--num-samples",
        "16",
        "--batch-size",
        "8",
        "--weights",
        str(inception_weights),
        "--no-progress",
    )
    _wait_for(proc, marker)
    code, out = _signal_and_wait(proc, signal.SIGTERM)
    assert code == 130, out[-3000:]
    assert client().get_metric_history(run_id, "eval/isc_mean") == []
    assert get_run(run_id).status == "FINISHED"
