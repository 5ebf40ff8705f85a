"""What genctl's trainer costs: the trainer against a bare PyTorch loop of the same DCGAN, and
the cost of MLflow logging at the default cadence.

    python bench/trainer_overhead.py [--steps 300] [--repeats 3] [--device cpu]

(a) genctl `train()` vs a hand-written loop (same networks, same data on the device, same BCE
    losses, same Adam): steps/s ratio, target >= 0.97.
(b) `train()` with MLflow tracking at the default cadence vs with a tracker that records
    nothing: the share of step time logging costs, target <= 2%.

Fixed costs (building networks, creating the MLflow run, the final checkpoint) are cancelled by
timing two run lengths and dividing the difference by the difference in steps. Variants are
interleaved, their order rotated each repeat, so machine noise hits them alike; the median
is reported.
Prints a table and writes bench/results/trainer_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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


def time_genctl(steps: int, device: str, tracking: bool) -> float:
    import genctl.trainer as trainer

    original = trainer._start_tracking
    if not tracking:
        trainer._start_tracking = lambda *a, **k: _NullTracker()
    try:
        t0 = time.perf_counter()
        trainer.train(_recipe(steps, device), progress=False)
        return time.perf_counter() - t0
    finally:
        trainer._start_tracking = original


def time_bare(steps: int, device: str) -> float:
    """The same DCGAN trained by a loop written by hand: what a user would write without genctl."""
    recipe = _recipe(steps, device)
    dev = torch.device(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
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
                loss = F.softplus(-d(g(z, None), None)).mean()
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def per_step(fn, short: int, long: int) -> float:
    return (fn(long) - fn(short)) / (long - short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, default=300, help="steps of the long run (the short is a fifth)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    long, short = args.steps, max(1, args.steps // 5)

    os.chdir(tempfile.mkdtemp(prefix="genctl-bench-"))  # a throwaway MLflow store
    load_dataset(
        _recipe(1, args.device).data
    )  # decode and cache the data once, outside the timings
    time_genctl(2, args.device, tracking=True)  # warm up: imports, store creation

    variants = {
        "bare": lambda s: time_bare(s, args.device),
        "genctl_null_tracker": lambda s: time_genctl(s, args.device, tracking=False),
        "genctl_mlflow": lambda s: time_genctl(s, args.device, tracking=True),
    }
    rows: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.repeats):
        # rotate the order each repeat, so a drift in machine load favours no variant
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rows[name].append(per_step(variants[name], short, long))
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "steps": [short, long],
        "repeats": args.repeats,
        "seconds_per_step": med,
        "steps_per_s": {k: 1 / v for k, v in med.items()},
        "ratio_genctl_vs_bare": med["bare"] / med["genctl_mlflow"],
        "ratio_genctl_no_tracking_vs_bare": med["bare"] / med["genctl_null_tracker"],
        "tracking_cost_fraction": med["genctl_mlflow"] / med["genctl_null_tracker"] - 1,
        "all": rows,
    }
    print(
        f"\nDCGAN 32x32, batch 64, {args.device}, steps {short}->{long}, median of {args.repeats}"
    )
    print(f"{'loop':24}{'ms/step':>10}{'steps/s':>10}")
    for k, v in med.items():
        print(f"{k:24}{v * 1000:10.2f}{1 / v:10.2f}")
    print(
        f"\n(a) genctl / bare steps/s:          {result['ratio_genctl_vs_bare']:.3f}  (target >= 0.97)"
    )
    print(f"    without tracking:               {result['ratio_genctl_no_tracking_vs_bare']:.3f}")
    print(
        f"(b) MLflow logging share of a step: {100 * result['tracking_cost_fraction']:+.2f}%  (target <= 2%)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
