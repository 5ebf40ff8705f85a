"""FID against network calls: every ddpm sampler method on one trained model, at a budget of
5/10/20/50/100 UNet evaluations, beside DDPM with all T steps.

The FID is the domain one of ``bench/ddpm_samplers.py``: Frechet distance in the penultimate
features (2,048 numbers) of a small MNIST classifier, samples against the 10,000 MNIST test
digits (Inception's weights are not available offline and say little about 28x28 digits). Every
row draws ``--n`` images from the same seed. Heun evaluates the network twice per step but once
on the last, so its step counts are those whose ``2 steps - 1`` calls fit the budget (3 steps
for 5 calls, 10 for 20); the table records the calls actually made.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ddpm_nfe.py RUN_OR_CHECKPOINT CLASSIFIER \\
        --data ../shared/data/mnist --n 500 --calls 5 10 20 50 100 --ddpm1000 \\
        --out bench/results/ddpm_nfe.json --plot nfe.png

``--rows`` names other configurations (``"method=euler sigmas=karras"``; ``steps`` comes from
the budget). Prints each row when done and rewrites the JSON after each, so a long run can be
read (and plotted with ``--plot-only``) while it goes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from genctl_ddpm.classifier import load_classifier
from genctl_ddpm.sampler import network_calls

from genctl.data.standard import load_mnist
from genctl.evaluation.fidelity import fid, fid_statistics
from genctl.sampling import parse_options

try:  # where the core keeps run/checkpoint resolution (it moved to genctl.resolve)
    from genctl.resolve import find_checkpoint, load_model
except ImportError:  # pragma: no cover - an older core
    from genctl.sampling import find_checkpoint, load_model

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = [
    "method=ddim eta=1",
    "method=ddim eta=0",
    "method=ddpm",
    "method=dpmpp_2m",
    "method=dpmpp_2m_sde",
    "method=unipc",
    "method=euler",
    "method=euler_a",
    "method=heun",
    "method=dpmpp_2m sigmas=karras",
    "method=euler_a sigmas=karras",
]


COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a",
    "#637939", "#e7969c", "#843c39", "#000080",
]  # fmt: skip


def steps_for(method: str, calls: int) -> int:
    """The most steps whose network calls fit ``calls``."""
    return (calls + 1) // 2 if method == "heun" else calls


@torch.no_grad()
def features(classifier: torch.nn.Module, images01: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Penultimate classifier features of images in [0, 1], float64."""
    out = [
        classifier.features(images01[i : i + batch] * 2 - 1) for i in range(0, len(images01), batch)
    ]
    return torch.cat(out).double()


def plot(results: dict | list[dict], path: Path) -> None:
    """FID against network calls, one line per configuration, DDPM-T as a line across; one
    panel per results (model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = results if isinstance(results, list) else [results]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), dpi=100, squeeze=False)
    names = list(dict.fromkeys(row["config"] for r in panels for row in r["rows"]))
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(names)}  # alike in all
    for ax, r in zip(axes[0], panels, strict=True):
        _panel(ax, r, colors)
    fig.tight_layout()
    fig.savefig(path)


def _panel(ax, results: dict, colors: dict[str, str]) -> None:
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in results["rows"]:
        if row["config"] != "method=ddpm all":
            lines.setdefault(row["config"], []).append((row["calls"], row["fid"]))
    for name, points in lines.items():
        points.sort()
        style = "--" if "karras" in name else "-"
        ax.plot(
            *zip(*points, strict=True),
            style,
            marker="o",
            ms=3,
            color=colors[name],
            label=name.replace("method=", ""),
        )
    full = [r for r in results["rows"] if r["config"] == "method=ddpm all"]
    if full:
        ax.axhline(full[0]["fid"], color="k", lw=1, label=f"ddpm, all {full[0]['calls']} steps")
        ax.axhline(full[0]["fid"] * 1.1, color="k", lw=0.8, ls=":", label="+10%")
    ax.set_xscale("log")
    ax.set_xticks([5, 10, 20, 50, 100])
    ax.set_xticklabels(["5", "10", "20", "50", "100"])
    ax.set_xlabel("network calls per image")
    ax.set_ylabel(f"FID (MNIST classifier features, {results['n']} samples)")
    what = f"{results.get('prediction', '')} prediction, {results.get('schedule', '')} schedule"
    ax.set_title(f"ddpm-mnist, {what}, step {results['step']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", help="a ddpm run id or checkpoint file")
    ap.add_argument("classifier", help="an MNIST classifier checkpoint")
    ap.add_argument("--rows", nargs="*", default=ROWS, help="sampler configurations")
    ap.add_argument("--calls", nargs="*", type=int, default=[5, 10, 20, 50, 100])
    ap.add_argument("--ddpm1000", action="store_true", help="also DDPM with all T steps")
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--n", type=int, default=500, help="samples per configuration")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "ddpm_nfe.json"))
    ap.add_argument("--plot", help="write the plot (PNG) here")
    ap.add_argument(
        "--plot-only", nargs="*", help="plot these result files side by side (--plot) and stop"
    )
    args = ap.parse_intermixed_args()
    out = Path(args.out)
    if args.plot_only is not None:
        plot([json.loads(Path(f).read_text()) for f in args.plot_only or [out]], Path(args.plot))
        return

    path = Path(args.model)
    ckpt = path if path.is_file() else find_checkpoint(run=args.model)
    model = load_model(ckpt, torch.device("cpu"))
    classifier = load_classifier(args.classifier)
    test_images, _, _ = load_mnist(Path(args.data), "test", False)
    real = fid_statistics(features(classifier, test_images.float() / 255))
    results = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    done = {(r["config"], r["calls"]) for r in results["rows"]}
    results.update(
        model=str(ckpt),
        step=model.step,
        prediction=model.config.prediction,
        schedule=model.config.beta_schedule,
        classifier=args.classifier,
        n=args.n,
        seed=args.seed,
    )
    jobs = [(row, c) for c in args.calls for row in args.rows]  # every method at a budget first
    if args.ddpm1000:
        jobs.append(("method=ddpm all", model.config.timesteps))
    print(f"model step {model.step}; {args.n} samples per row")
    print(f"{'configuration':<36} {'calls':>5} {'FID':>7} {'s':>6}")
    for row, budget in jobs:
        opts_text = row.replace(" all", "")
        method = parse_options(model.spec, opts_text.split()).method
        steps = budget if row.endswith(" all") else steps_for(method, budget)
        calls = network_calls(method, steps)
        if (row, calls) in done:
            continue
        opts = parse_options(model.spec, [*opts_text.split(), f"steps={steps}"])
        start = time.perf_counter()
        g = [torch.Generator().manual_seed(args.seed * 100_003 + i) for i in range(args.n)]
        images = torch.cat(
            [
                model.sampler.sample(len(g[i : i + args.batch]), opts, g[i : i + args.batch])
                for i in range(0, args.n, args.batch)
            ]
        )
        seconds = time.perf_counter() - start
        score = fid(fid_statistics(features(classifier, images)), real)
        results["rows"].append(
            {"config": row, "steps": steps, "calls": calls, "fid": score, "seconds": seconds}
        )
        print(f"{row:<36} {calls:>5} {score:>7.1f} {seconds:>6.0f}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        if args.plot:
            plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
