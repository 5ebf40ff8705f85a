"""The GPU check: one command that shows every family trains on CUDA, and measures the GPU figures.

    python bench/gpu_check.py                       # on a CUDA machine: about 8 minutes
    python bench/gpu_check.py --device cpu --tiny   # the smoke run the tests make (tiny sizes)

What it runs, in order, each part timed and recorded even when an earlier one failed:

1. ``families``: every built-in model trains for ``--steps`` (30) steps from its shipped recipe
   with ``precision: auto`` (bf16 autocast on CUDA) on built-in synthetic data of the recipe's
   size, then is rebuilt from its final checkpoint and sampled. Passes when every logged loss is
   finite and the samples are finite images in [0, 1].
2. ``benches``: ``bench/trainer_overhead.py`` and ``bench/diffusion.py`` on the device, as
   subprocesses; their JSON is kept.
3. ``ddpm_cifar``: the DDPM CIFAR-10 UNet of Ho et al. 2020 (35.7M parameters, 32x32, batch
   128) trained 200 steps through ``genctl train`` in bf16, eager and with ``train.compile``;
   images/s of the last log interval (after compilation). Anchor: about 2,700 images/s on a TPU
   v3-8 (Ho et al.); goal on one H200: >= 3,000 with compile.
4. ``fid``: FID of 10,000 generated images (the DCGAN of part 1) against the synthetic real set,
   through genctl's evaluation; images/s of the whole evaluation. Inception weights: a stand-in
   file of the right shapes (no download), so the number measures speed, not quality.

Nothing comes from the internet. The GPU machine lacks mlflow and torch-fidelity: carry them as
wheels (``python bench/gpu_wheels.py``, then see its output for the device command).
Prints a table and writes ``bench/results/gpu_check.json`` (or ``--out``). Exit code 1 when any
check failed, so a CI-like caller can tell.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# What 30 steps need beyond a recipe's own settings: a growth schedule that reaches the final
# resolution within the steps, and a content loss that needs no downloaded VGG weights.
FULL_OVERRIDES: dict[str, list[str]] = {
    "progan": ["model.stable_steps=3", "model.fade_steps=3"],
    "srgan": ["model.content_loss=mse"],
}

# The DDPM CIFAR-10 network of Ho et al. 2020 (their Appendix B): 35.7M parameters.
HO_CIFAR_UNET = [
    "model.base_channels=128",
    "model.channel_mults=[1,2,2,2]",
    "model.num_res_blocks=2",
    "model.attention_resolutions=[16]",
    "model.norm_groups=32",
    "model.dropout=0.1",
]
TINY_UNET = [
    "model.base_channels=8",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[8]",
    "model.norm_groups=4",
    "model.timesteps=50",
]


def tiny_overrides() -> dict[str, list[str]]:
    """The contract tests' tiny sizes (one source of truth: tests/plugins/test_contract.py)."""
    sys.path.insert(0, str(REPO))
    from genctl import testing
    from tests.plugins.test_contract import TINY

    kit = [o for o in testing.TINY if not o.startswith("train.device")]
    return {name: [*kit, *overrides] for name, overrides in TINY.items()}


# ---------------------------------------------------------------- part 1: every family


def builtin_models() -> list[str]:
    from importlib.metadata import distribution

    from genctl.plugins import load_plugins

    ours = {ep.name for ep in distribution("genctl").entry_points if ep.group == "genctl"}
    return [s.name for s in load_plugins().registry.specs() if s.plugin in ours]


def first_stage_overrides(name: str, args, root: Path) -> list[str]:
    """A family that trains on another run's model (ldm: an autoencoder's latents) gets the
    contract tests' stand-in first stage, and at full size their tiny UNet too: its shipped
    GPU pair (vae-cifar10-latent, then ldm-cifar10) is two runs, not one family's check."""
    sys.path.insert(0, str(REPO))
    from tests.plugins.test_contract import TINY, _extra_overrides

    extra = _extra_overrides(name, root)
    if extra and not args.tiny:
        extra = ["data.image_size=16", *TINY[name], *extra]
    return extra


def family_recipe(name: str, args, root: Path, extra: list[str]):
    """The model's shipped recipe on synthetic data of its task, for ``args.steps`` steps."""
    from genctl import testing
    from genctl.recipe import apply_overrides, load_yaml, recipes_dir, validate

    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():  # a family shipped only for a dataset, as the contract tests take it
        path = recipes_dir() / f"{name}-mnist.yaml"
    raw = load_yaml(path) if path.is_file() else {"name": name, "plugin": name, "data": {}}
    raw = apply_overrides(raw, extra)
    raw.pop("evaluate", None)  # evaluation is part 4's, not the families'
    spec = _spec(name)
    data = testing.synthetic_data_section(spec.task, raw.get("data") or {}, root / name)
    if data["kind"] == "shapes":
        data["size"] = 64 if args.tiny else 1024  # more than one batch of distinct images
    raw["data"] = data
    steps = args.steps
    raw = apply_overrides(
        raw,
        [
            f"train.steps={steps}",
            "train.precision=auto",
            f"train.device={args.device}",
            f"train.log_every={max(1, steps // 3)}",
            f"train.sample_every={steps}",
            f"train.checkpoint_every={steps}",
            f"tracking.experiment=gpu-check-{name}",
        ],
    )
    return validate(raw, str(path), spec=spec)


def _spec(name: str):
    from genctl.plugins import get_spec

    return get_spec(name)


def check_family(name: str, args, root: Path) -> dict:
    from genctl.resolve import find_checkpoint, load_model
    from genctl.trainer import train

    extra = (tiny_overrides().get(name, []) if args.tiny else []) + FULL_OVERRIDES.get(name, [])
    extra += first_stage_overrides(name, args, root)
    if args.tiny and name == "progan":  # reach the last resolution inside the tiny run
        extra += ["model.stable_steps=1", "model.fade_steps=1"]
    recipe = family_recipe(name, args, root, extra)
    t0 = time.perf_counter()
    result = train(recipe, progress=False)
    seconds = time.perf_counter() - t0
    losses = {k: v for k, v in result.metrics.items() if "loss" in k}
    row = {
        "steps": result.step,
        "seconds": seconds,
        "images_per_s": result.metrics.get("train/images_per_s", float("nan")),
        "losses": losses,
        "finite_losses": bool(losses) and all(math.isfinite(v) for v in losses.values()),
    }
    model = load_model(find_checkpoint(run=result.run_id), torch.device(args.device))
    gen = torch.Generator().manual_seed(0)
    options = model.spec.sampler_options()
    inputs = None
    n = 4
    if model.spec.takes_input:
        info = model.info
        side = info.image_size // info.scale if info.task == "super_resolution" else info.image_size
        inputs = torch.rand(n, info.channels, side, side, generator=gen).mul(2).sub(1)
        inputs = inputs.to(args.device)
    with torch.no_grad():
        images = model.sampler.sample(n, options, gen, inputs=inputs)
    row["sample_shape"] = list(images.shape)
    row["finite_images"] = bool(
        torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    )
    row["ok"] = row["finite_losses"] and row["finite_images"] and result.step == args.steps
    return row


# ---------------------------------------------------------------- part 2: the benchmarks


def run_bench(script: str, bench_args: list[str], timeout: float, out: Path | None = None) -> dict:
    """Run a bench script; its JSON is read from ``out`` (passed as ``--out``) or, without it,
    from where the script writes by default (bench/results)."""
    if out is not None:
        bench_args = [*bench_args, "--out", str(out)]
    out = out or RESULTS / (Path(script).stem + ".json")
    before = out.stat().st_mtime if out.exists() else None
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *bench_args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    row: dict = {"seconds": time.perf_counter() - t0, "returncode": proc.returncode}
    if proc.returncode != 0 or not out.exists() or out.stat().st_mtime == before:
        row["ok"] = False
        row["stderr_tail"] = proc.stderr[-2000:]
        return row
    row["ok"] = True
    row["result"] = json.loads(out.read_text())
    return row


# ---------------------------------------------------------------- part 3: the Ho et al. UNet


def ddpm_throughput(args, root: Path, compile: bool) -> dict:
    from genctl.recipe import apply_overrides, load_yaml, recipes_dir, validate
    from genctl.trainer import train

    raw = load_yaml(recipes_dir() / "ddpm.yaml")
    raw.pop("evaluate", None)
    steps, batch = (4, 8) if args.tiny else (args.ddpm_steps, 128)
    raw = apply_overrides(
        raw,
        [
            *(TINY_UNET if args.tiny else HO_CIFAR_UNET),
            "data.kind=shapes",
            "~data.root",
            f"data.size={max(4 * batch, 64)}",
            "data.image_size=32",
            "data.channels=3",
            "data.cache=false",
            f"train.steps={steps}",
            f"train.batch_size={batch}",
            "train.precision=auto",
            f"train.device={args.device}",
            f"train.compile={str(compile).lower()}",
            f"train.log_every={max(1, steps // 4)}",
            f"train.sample_every={10**9}",
            f"train.checkpoint_every={10**9}",
            "tracking.experiment=gpu-check-ddpm-cifar",
        ],
    )
    recipe = validate(raw)
    nets = recipe.spec.build(recipe.model, _info(recipe))
    params = sum(p.numel() for p in nets["unet"].parameters())
    t0 = time.perf_counter()
    result = train(recipe, progress=False)
    return {
        "params": params,
        "batch": batch,
        "steps": result.step,
        "compile": compile,
        "seconds": time.perf_counter() - t0,
        # the last log interval: after compilation and warm-up
        "images_per_s": result.metrics.get("train/images_per_s", float("nan")),
        "loss": result.metrics.get("train/loss_unet", float("nan")),
        "ok": math.isfinite(result.metrics.get("train/loss_unet", float("nan"))),
    }


def _info(recipe):
    from genctl.data import load_dataset

    return load_dataset(recipe.data).info


# ---------------------------------------------------------------- part 4: evaluation speed


def fid_throughput(args, root: Path) -> dict:
    from genctl.data import load_dataset
    from genctl.evaluation import ImageSource, evaluate
    from genctl.evaluation.fidelity import write_standin_weights
    from genctl.resolve import find_checkpoint, load_model

    n = 32 if args.tiny else args.fid_samples
    recipe = family_recipe("dcgan", args, root, tiny_overrides()["dcgan"] if args.tiny else [])
    from genctl.trainer import train

    run = train(recipe, progress=False)
    model = load_model(find_checkpoint(run=run.run_id), torch.device(args.device))
    real = load_dataset(recipe.data).tensors["image"][:n]
    weights = write_standin_weights(root / "inception-standin.pth")
    options = model.spec.sampler_options()

    def batches(batch_size: int):
        gen = torch.Generator().manual_seed(0)
        for start in range(0, n, batch_size):
            with torch.no_grad():
                yield model.sampler.sample(min(batch_size, n - start), options, gen)

    source = ImageSource(batches, n, real, real_name="synthetic shapes")
    t0 = time.perf_counter()
    result = evaluate(
        source,
        ["fid"],
        weights=str(weights),
        device=args.device,
        batch_size=256 if not args.tiny else 32,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    return {
        "generated": n,
        "real": len(real),
        "seconds": seconds,
        "images_per_s": (n + len(real)) / seconds,
        "fid_standin_weights": result.metrics["fid"],
        "ok": math.isfinite(result.metrics["fid"]),
    }


# ---------------------------------------------------------------- the run


def guarded(report: dict, key: str, fn) -> None:
    """Run one check; a failure is recorded with its traceback and the others still run."""
    t0 = time.perf_counter()
    try:
        report[key] = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        report[key] = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }
    report[key].setdefault("seconds", time.perf_counter() - t0)
    status = "ok" if report[key].get("ok") else "FAILED"
    print(
        f"[{time.strftime('%H:%M:%S')}] {key}: {status} ({report[key]['seconds']:.1f} s)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU smoke run")
    ap.add_argument("--steps", type=int, default=None, help="steps per family (30; tiny 3)")
    ap.add_argument("--ddpm-steps", type=int, default=200)
    ap.add_argument("--fid-samples", type=int, default=10_000)
    ap.add_argument("--no-compile", action="store_true", help="skip the train.compile run")
    ap.add_argument("--no-benches", action="store_true", help="skip part 2 (the bench scripts)")
    ap.add_argument("--only", default="", help="comma-separated models for part 1 (default all)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = ap.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 30)

    root = Path(tempfile.mkdtemp(prefix="genctl-gpu-check-"))
    os.chdir(root)  # a throwaway MLflow store and artifacts
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "setup": {k: str(v) for k, v in vars(args).items()},
        "families": {},
    }
    models = [m for m in builtin_models() if not args.only or m in args.only.split(",")]
    for name in models:
        guarded(report["families"], name, lambda name=name: check_family(name, args, root))
    if not args.no_benches:
        tiny_bench = ["--steps", "5", "--repeats", "1"] if args.tiny else []
        tiny_diff = (
            ["--width", "8", "--blocks", "1", "--batch", "4", "--rounds", "1", "--steps", "1"]
            + ["--sample-n", "2", "--ddpm-steps", "4", "--threads", "0"]
            + ["--no-compile", "--no-rate"]  # compiling takes minutes on a CPU
            if args.tiny
            else ["--batch", "128", "--threads", "0", "--width", "128"]
        )
        guarded(
            report,
            "trainer_overhead",
            lambda: run_bench(
                "trainer_overhead.py",
                [*tiny_bench, "--device", args.device],
                900,
                # the smoke run must not replace the measured, committed results
                out=root / "trainer_overhead.json" if args.tiny else None,
            ),
        )
        guarded(
            report,
            "diffusion",
            lambda: run_bench("diffusion.py", [*tiny_diff, "--device", args.device], 900),
        )
    guarded(report, "ddpm_cifar_eager", lambda: ddpm_throughput(args, root, compile=False))
    if not args.no_compile:
        guarded(report, "ddpm_cifar_compile", lambda: ddpm_throughput(args, root, compile=True))
    guarded(report, "fid", lambda: fid_throughput(args, root))

    failed = [k for k, v in report["families"].items() if not v.get("ok")]
    failed += [k for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False]
    report["failed"] = failed
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out}")
    return 1 if failed else 0


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['gpu'] or m['device']}, torch {m['torch']}, Python {m['python']}")
    print(f"\n{'family':<14}{'ok':>4}{'steps':>7}{'images/s':>11}{'seconds':>9}  sample")
    for name, row in report["families"].items():
        ok = "yes" if row.get("ok") else "NO"
        print(
            f"{name:<14}{ok:>4}{row.get('steps', '-')!s:>7}"
            f"{row.get('images_per_s', float('nan')):>11.1f}{row['seconds']:>9.1f}  "
            f"{row.get('sample_shape', row.get('error', ''))}"
        )
    for key in ("ddpm_cifar_eager", "ddpm_cifar_compile"):
        row = report.get(key)
        if row:
            print(
                f"\n{key}: {row.get('params', 0) / 1e6:.1f}M params, batch {row.get('batch')}, "
                f"{row.get('images_per_s', float('nan')):.0f} images/s "
                f"{'' if row.get('ok') else '(FAILED: ' + row.get('error', '') + ')'}"
            )
    row = report.get("fid")
    if row:
        print(
            f"\nFID evaluation: {row.get('generated')} generated + {row.get('real')} real images, "
            f"{row.get('images_per_s', float('nan')):.0f} images/s"
        )
    for key in ("trainer_overhead", "diffusion"):
        row = report.get(key)
        if row and row.get("ok"):
            r = row["result"]
            if key == "trainer_overhead":
                print(f"\ntrainer overhead: genctl/bare = {r['ratio_genctl_vs_bare']:.3f}")
            else:
                print(
                    f"diffusion bench: genctl UNet {r['train']['genctl']['images_per_s_median']:.0f}"
                    f" images/s, x{r['train_speedup_genctl_over_diffusers']:.2f} of diffusers"
                )
    if report["failed"]:
        print(f"\nFAILED: {', '.join(report['failed'])}")


if __name__ == "__main__":
    sys.exit(main())
