"""Scale-out: `torchrun -m genctl train` with two CPU processes on the gloo backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import yaml

from genctl import checkpoint
from genctl.tracking import local_path, search_runs

RECIPE = {
    "name": "ddp-dcgan",
    "plugin": "dcgan",
    "model": {"latent_dim": 8, "g_width": 4, "d_width": 4},
    "data": {"kind": "shapes", "image_size": 8, "size": 64},
    "train": {
        "steps": 4,
        "batch_size": 4,
        "log_every": 2,
        "sample_every": 4,
        "checkpoint_every": 2,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(workdir, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENCTL_PLUGINS": "dcgan"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "genctl",
        "train",
        *args,
        "--no-progress",
    ]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_one_run_and_resume(workdir):
    (workdir / "ddp.yaml").write_text(yaml.safe_dump(RECIPE))
    res = _torchrun(workdir, "ddp.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = search_runs()
    assert len(runs) == 1  # rank 0 alone records
    run = runs[0]
    assert run.status == "FINISHED" and run.params["train.steps"] == "4"
    final = checkpoint.load(local_path(run.artifact_uri) / checkpoint.FINAL)
    assert final["step"] == 4

    res = _torchrun(workdir, "--resume", run.run_id, "train.steps=6")
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r.run_id for r in search_runs()] == [run.run_id]  # the same run continued
    assert checkpoint.load(local_path(run.artifact_uri) / checkpoint.FINAL)["step"] == 6
