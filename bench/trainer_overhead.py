"""What genctl's trainer costs: the trainer against a bare PyTorch loop of the same DCGAN, and
the cost of MLflow logging at the default cadence.

    python bench/trainer_overhead.py [--steps 300] [--repeats 3] [--device cpu] [--threads 1]
                                     [--out bench/results/trainer_overhead.json]

(a) genctl `train()` vs a hand-written loop (same networks, same data on the device, same BCE
    losses, same Adam): steps/s ratio, target >= 0.97. The reference loop is written as a user
    would (like pytorch/examples' DCGAN): its generator update also computes the critic's weight
    gradients, which the trainer skips (it freezes the groups not in the step); `bare_frozen`
    is the same loop freezing the critic there too, the like-for-like comparison.
(b) `train()` with MLflow tracking at the default cadence vs with a tracker that records
    nothing: the share of step time logging costs, target <= 2%.

Fixed costs (building networks, creating the MLflow run, the final checkpoint) are cancelled by
timing two run lengths and dividing the difference by the difference in steps. Variants are
interleaved, their order rotated each repeat, so machine noise hits them alike; the median
is reported.

Each run is timed by two clocks: wall-clock (what a user waits) and the process's CPU time
(`time.process_time`, every thread of the process). On a shared machine wall-clock time counts
the other processes' load (single repeats spread +-20% on a busy 2-core box) while CPU time
counts only the work done, so the CPU ratio is the one to compare across moments and commits;
on a GPU only wall-clock means anything (the CPU time is mostly the host waiting). Process
rather than thread CPU time because MLflow metrics are written by a background thread, whose
work is the trainer's cost too; the calling thread's share is kept beside it (`thread_cpu`)
to show how much runs elsewhere. On the CPU, torch runs one thread (`--threads`), so the CPU
time is the work and not the work times the threads spinning.
Prints a table and writes bench/results/trainer_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import genctl
from genctl.data import load_dataset
from genctl.recipe import validate

RESULTS = Path(__file__).resolve().parent / "results"

RECIPE = {
    "name": "bench-dcgan",
    "plugin": "dcgan",
    "model": {"latent_dim": 64, "g_width": 32, "d_width": 32},
    "data": {"kind": "shapes", "image_size": 32, "size": 4096},
    "train": {
        "batch_size": 64,
        "optimizer": {"lr": 2.0e-4, "betas": [0.5, 0.999]},
        "sample_every": 10**9,  # grids and checkpoints are not what this measures
        "checkpoint_every": 10**9,
        "seed": 0,
    },
}


def _recipe(steps: int, device: str):
    raw = json.loads(json.dumps(RECIPE))
    raw["train"]["steps"] = steps
    raw["train"]["device"] = device
    return validate(raw)


class _NullTracker:
    """A tracker that records nothing: the baseline for the cost of logging. Every method of the
    real tracker answers None here, so the bench keeps working as the tracker grows."""

    run_id = "null"

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


CLOCKS = ("wall", "cpu", "thread_cpu")


def _now() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), time.thread_time()


def _since(t0: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(b - a for a, b in zip(t0, _now(), strict=True))


def time_genctl(steps: int, device: str, tracking: bool) -> tuple[float, float, float]:
    import genctl.trainer as trainer

    original = trainer._start_tracking
    if not tracking:
        trainer._start_tracking = lambda *a, **k: _NullTracker()
    try:
        t0 = _now()
        trainer.train(_recipe(steps, device), progress=False)
        return _since(t0)  # train() returns once MLflow's writer thread has drained
    finally:
        trainer._start_tracking = original


def time_bare(steps: int, device: str, freeze_critic: bool = False) -> tuple[float, float, float]:
    """The same DCGAN trained by a loop written by hand: what a user would write without genctl.
    ``freeze_critic``: the generator's update skips the critic's weight gradients, as the
    trainer's does."""
    recipe = _recipe(steps, device)
    dev = torch.device(device)
    torch.manual_seed(0)
    t0 = _now()
    data = load_dataset(recipe.data).tensors["image"].to(dev)
    data = data.float().div(127.5).sub(1)
    nets = recipe.spec.build(recipe.model, load_dataset(recipe.data).info)
    g, d = nets["generator"].to(dev), nets["discriminator"].to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bs, latent = recipe.train.batch_size, recipe.model.latent_dim
    perm, pos = torch.randperm(len(data), device=dev), 0
    for _ in range(steps):
        for group in ("d", "g"):
            if pos + bs > len(data):
                perm, pos = torch.randperm(len(data), device=dev), 0
            real = data[perm[pos : pos + bs]]
            pos += bs
            z = torch.randn(bs, latent, device=dev)
            if group == "d":
                with torch.no_grad():
                    fake = g(z, None)
                loss = F.softplus(-d(real, None)).mean() + F.softplus(d(fake, None)).mean()
                opt_d.zero_grad(set_to_none=True)
                loss.backward()
                opt_d.step()
            else:
                if freeze_critic:
                    d.requires_grad_(False)
                loss = F.softplus(-d(g(z, None), None)).mean()
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
                if freeze_critic:
                    d.requires_grad_(True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return _since(t0)


def per_step(fn, short: int, long: int) -> dict[str, float]:
    """Seconds per step by each clock, the fixed costs cancelled by two run lengths."""
    a, b = fn(short), fn(long)
    return {c: (y - x) / (long - short) for c, x, y in zip(CLOCKS, a, b, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, default=300, help="steps of the long run (the short is a fifth)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads on the CPU (1: CPU time = work)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "trainer_overhead.json")
    args = ap.parse_args()
    long, short = args.steps, max(1, args.steps // 5)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    out = args.out.resolve()

    os.chdir(tempfile.mkdtemp(prefix="genctl-bench-"))  # a throwaway MLflow store
    load_dataset(
        _recipe(1, args.device).data
    )  # decode and cache the data once, outside the timings
    time_genctl(2, args.device, tracking=True)  # warm up: imports, store creation

    variants = {
        "bare": lambda s: time_bare(s, args.device),
        "bare_frozen": lambda s: time_bare(s, args.device, freeze_critic=True),
        "genctl_null_tracker": lambda s: time_genctl(s, args.device, tracking=False),
        "genctl_mlflow": lambda s: time_genctl(s, args.device, tracking=True),
    }
    rows: dict[str, dict[str, list[float]]] = {c: {k: [] for k in variants} for c in CLOCKS}
    names = list(variants)
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    for r in range(args.repeats):
        # rotate the order each repeat, so a drift in machine load favours no variant
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for clock, v in per_step(variants[name], short, long).items():
                rows[clock][name].append(v)
        load += [os.getloadavg()[0]] if load else []
    med = {c: {k: statistics.median(v) for k, v in rows[c].items()} for c in CLOCKS}

    def ratios(m: dict[str, float]) -> dict[str, float]:
        return {
            "genctl_vs_bare": m["bare"] / m["genctl_mlflow"],
            "genctl_no_tracking_vs_bare": m["bare"] / m["genctl_null_tracker"],
            "genctl_vs_bare_frozen": m["bare_frozen"] / m["genctl_mlflow"],
            "tracking_cost_fraction": m["genctl_mlflow"] / m["genctl_null_tracker"] - 1,
        }

    by = {c: ratios(med[c]) for c in CLOCKS}
    wall = med["wall"]
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "genctl": str(Path(genctl.__file__).parent),  # which code ran (a worktree's, say)
        "plugin": str(Path(sys.modules["genctl_dcgan"].__file__).parent),
        "steps": [short, long],
        "repeats": args.repeats,
        "load_average_1min": load,  # before the first repeat and after each
        # wall-clock, the keys bench/gpu_check.py reads
        "seconds_per_step": wall,
        "steps_per_s": {k: 1 / v for k, v in wall.items()},
        "ratio_genctl_vs_bare": by["wall"]["genctl_vs_bare"],
        "ratio_genctl_no_tracking_vs_bare": by["wall"]["genctl_no_tracking_vs_bare"],
        "tracking_cost_fraction": by["wall"]["tracking_cost_fraction"],
        # process CPU time (all threads): the figure to compare on a shared CPU
        "cpu_seconds_per_step": med["cpu"],
        "thread_cpu_seconds_per_step": med["thread_cpu"],
        "ratios": by,
        "all": rows["wall"],
        "all_cpu": rows["cpu"],
        "all_thread_cpu": rows["thread_cpu"],
    }
    print(
        f"\nDCGAN 32x32, batch 64, {args.device}, {torch.get_num_threads()} thread(s), "
        f"steps {short}->{long}, median of {args.repeats}; load {load}"
    )
    print(f"{'loop':24}{'wall ms/step':>14}{'CPU ms/step':>14}{'thread CPU':>12}")
    for k in names:
        print(
            f"{k:24}{wall[k] * 1000:14.2f}{med['cpu'][k] * 1000:14.2f}"
            f"{med['thread_cpu'][k] * 1000:12.2f}"
        )
    print(f"\n{'':40}{'wall':>8}{'CPU':>8}")
    for label, key in (
        ("(a) genctl / bare steps/s (>= 0.97)", "genctl_vs_bare"),
        ("    without tracking", "genctl_no_tracking_vs_bare"),
        ("    genctl / bare_frozen", "genctl_vs_bare_frozen"),
    ):
        print(f"{label:40}{by['wall'][key]:8.3f}{by['cpu'][key]:8.3f}")
    share = "tracking_cost_fraction"
    print(
        f"{'(b) MLflow share of a step (<= 2%)':40}"
        f"{100 * by['wall'][share]:+7.2f}%{100 * by['cpu'][share]:+7.2f}%"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
