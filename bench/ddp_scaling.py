"""Scaling of `torchrun` data parallelism on this machine's CPU cores: 2 ranks of 1 thread
against 1 rank of 1 thread, the same batch per rank, on a DCGAN whose step is compute-bound.

    python bench/ddp_scaling.py [--steps 150] [--repeats 2] [--old-ref REF] [--bucket-mb 4 ...]

Variants, interleaved and rotated each repeat so that the machine's load hits them alike:

* ``1 rank``: ``genctl train`` alone, ``train.threads=1``;
* ``2 ranks, buckets``: ``torchrun --nproc-per-node 2 -m genctl train``, one thread per rank
  (torchrun's ``OMP_NUM_THREADS=1``), gradients averaged in buckets during the backward
  (genctl/distributed.py), one variant per ``--bucket-mb``;
* ``2 ranks, old``: the same with the code of ``--old-ref`` (default: the commit before the
  bucketed reduce), which averaged every update's gradients in one synchronous all-reduce
  after the backward; its tree is exported with ``git archive`` and put first on PYTHONPATH.

The figure is the trainer's own ``train/images_per_s`` (images of all ranks per second of wall
time), the median of its log intervals after the first (start-up and the first allocations).
Beside it, images per CPU second of all the run's processes (start-up included), which other
processes on the machine do not change: 2 ranks' share of 1 rank's is their parallel efficiency
in CPU (communication and duplicated start-up), not the idle waits. The machine's 1-minute load average is recorded beside each run: on a shared machine the
ratio only means something when the load is below the cores left over.
Prints a table and writes bench/results/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
OLD_REF = "0ad5bde~1"  # the trainer's single synchronous all-reduce per update

RECIPE = {
    "name": "bench-ddp",
    "plugin": "dcgan",
    # dcgan-mnist's networks on 32x32 RGB shapes: ~0.1 s of convolutions a step on one core
    "model": {"latent_dim": 64, "g_width": 32, "d_width": 32},
    "data": {"kind": "shapes", "image_size": 32, "size": 4096},
    "train": {
        "batch_size": 64,  # per rank
        "optimizer": {"lr": 2.0e-4, "betas": [0.5, 0.999]},
        "sample_every": 10**9,  # grids and checkpoints are not what this measures
        "checkpoint_every": 10**9,
        "seed": 0,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> float:
    return os.getloadavg()[0]


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (and theirs: torchrun's ranks)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _export(ref: str, where: Path) -> Path:
    """The tree of ``ref`` under ``where`` (git archive), for the old code path."""
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def _run(variant: dict, steps: int, log_every: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True)
    raw = json.loads(json.dumps(RECIPE))
    raw["train"].update(steps=steps, log_every=log_every)
    if variant["ranks"] == 1:
        raw["train"]["threads"] = 1
    (workdir / "recipe.yaml").write_text(yaml.safe_dump(raw))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "GENCTL_PLUGINS": "dcgan",
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    if variant.get("tree"):
        tree = variant["tree"]
        env["PYTHONPATH"] = os.pathsep.join([tree, f"{tree}/plugins"])
    if variant.get("bucket_mb"):
        env["GENCTL_BUCKET_MB"] = str(variant["bucket_mb"])
    train = ["-m", "genctl", "train", "recipe.yaml", "--no-progress"]
    if variant["ranks"] == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [
            sys.executable,
            *("-m", "torch.distributed.run", "--nproc-per-node", str(variant["ranks"])),
            *("--master-addr", "127.0.0.1", "--master-port", str(_free_port())),
            *train,
        ]
    load_before = _load()
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if res.returncode != 0:
        raise SystemExit(f"{variant['name']} failed:\n{res.stderr[-3000:]}")
    with sqlite3.connect(workdir / "mlflow.db") as db:
        rows = db.execute(
            "select step, value from metrics where key = 'train/images_per_s' order by step"
        ).fetchall()
    rates = [v for s, v in rows if s > log_every]  # the first interval holds the start-up
    return {
        "images_per_s": statistics.median(rates),
        "intervals": len(rates),
        "wall_s": round(wall, 1),
        # CPU seconds of all its processes, start-up included: images per CPU second does not
        # depend on how many other processes share the cores
        "cpu_s": round(cpu, 1),
        "images_per_cpu_s": round(
            steps * RECIPE["train"]["batch_size"] * variant["ranks"] / cpu, 1
        ),
        "load_before": round(load_before, 2),
        "load_after": round(_load(), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--old-ref", default=OLD_REF, help="'' to leave the old code path out")
    ap.add_argument("--bucket-mb", type=float, nargs="+", default=[1.0, 4.0])
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="genctl-ddp-bench-"))
    variants = [{"name": "1 rank", "ranks": 1}]
    for mb in args.bucket_mb:
        variants.append({"name": f"2 ranks, buckets {mb:g} MB", "ranks": 2, "bucket_mb": mb})
    if args.old_ref:
        tree = str(_export(args.old_ref, scratch / "old"))
        variants.append({"name": f"2 ranks, old ({args.old_ref})", "ranks": 2, "tree": tree})

    runs: dict[str, list[dict]] = {v["name"]: [] for v in variants}
    for r in range(args.repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            out = _run(v, args.steps, args.log_every, scratch / f"r{r}-v{variants.index(v)}")
            runs[v["name"]].append(out)
            print(
                f"  repeat {r}: {v['name']}: {out['images_per_s']:.0f} img/s "
                f"(load {out['load_before']} -> {out['load_after']})",
                flush=True,
            )

    base = statistics.median(o["images_per_s"] for o in runs["1 rank"])
    rows = []
    for v in variants:
        rate = statistics.median(o["images_per_s"] for o in runs[v["name"]])
        per_cpu = statistics.median(o["images_per_cpu_s"] for o in runs[v["name"]])
        loads = [o["load_before"] for o in runs[v["name"]]] + [
            o["load_after"] for o in runs[v["name"]]
        ]
        rows.append(
            {
                "variant": v["name"],
                "ranks": v["ranks"],
                "images_per_s": round(rate, 1),
                "vs_1_rank": round(rate / base, 2),
                "images_per_cpu_s": per_cpu,
                "load_1min": [min(loads), max(loads)],
                "runs": runs[v["name"]],
            }
        )
    print(f"\n{'variant':<32} {'img/s':>8} {'vs 1 rank':>10} {'img/CPU-s':>10}  load (1 min)")
    for row in rows:
        lo, hi = row["load_1min"]
        print(
            f"{row['variant']:<32} {row['images_per_s']:>8.0f} {row['vs_1_rank']:>9.2f}x "
            f"{row['images_per_cpu_s']:>10.0f}  {lo}-{hi}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "recipe": RECIPE,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": args.steps,
        "log_every": args.log_every,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rows": rows,
    }
    (RESULTS / "ddp_scaling.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'ddp_scaling.json'}")


if __name__ == "__main__":
    main()
