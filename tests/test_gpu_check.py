"""bench/gpu_check.py runs to the end on the CPU at tiny sizes, so the GPU check cannot rot
between the sessions that have a GPU to run it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_gpu_check_runs_every_part_on_the_cpu_at_tiny_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny"]
        + ["--no-compile", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=880,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [], proc.stdout[-3000:]
    assert proc.returncode == 0
    from genctl.plugins import load_plugins

    # every built-in family trained its steps and sampled finite images in [0, 1]
    ours = {s.name for s in load_plugins().registry.specs() if s.package.startswith("genctl_")}
    assert ours <= set(report["families"])
    for name, row in report["families"].items():
        assert row["finite_losses"] and row["finite_images"], name
        assert row["steps"] == 3, name
    assert report["ddpm_cifar_eager"]["images_per_s"] > 0
    assert report["fid"]["generated"] == 32 and report["fid"]["fid_standin_weights"] >= 0
    for bench in ("trainer_overhead", "diffusion"):
        assert report[bench]["ok"], report[bench].get("stderr_tail")
    assert "ddpm_cifar_eager" in proc.stdout
