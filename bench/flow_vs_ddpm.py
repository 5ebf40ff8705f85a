"""FID against network calls: flow matching's Euler/Heun against a DDPM model's samplers, on the
same data, at the same budgets of UNet evaluations, from the same seeds.

The FID is the domain one of ``bench/ddpm_nfe.py`` (its code, imported): Frechet distance in the
penultimate features of a small MNIST classifier (a ``genctl_ddpm.classifier`` file), samples
against the 10,000 MNIST test digits. Each model is ``LABEL=RUN_OR_CHECKPOINT``; its rows are
those of its family (``--flow-rows`` for a ``flow`` model, ``--ddpm-rows`` for a ``ddpm`` one).
Heun makes ``2 steps - 1`` calls (its step to t = 0 is Euler's), so its steps are the most that
fit the budget; the table records the calls actually made. Image ``i`` of every row comes from
the generator seeded ``seed * 100003 + i``, as in ``bench/ddpm_nfe.py``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/flow_vs_ddpm.py \\
        flow=FLOW_RUN ddpm-eps=DDPM_RUN mnist-classifier.pt --data ../shared/data/mnist \\
        --n 500 --calls 10 20 50 --out bench/results/flow_vs_ddpm.json

Prints each row when done and rewrites the JSON after each (rows already in it are skipped, so
an interrupted run continues where it stopped); ``--grids DIR`` also saves each row's first 64
images as a grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from genctl_ddpm.classifier import load_classifier
from genctl_flow.sampler import network_calls  # ddpm's count too: heun 2 steps - 1

from genctl.data.standard import load_mnist
from genctl.evaluation.fidelity import fid, fid_statistics
from genctl.sampling import parse_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddpm_nfe import features, steps_for  # noqa: E402  (the FID features and Heun's budget)

try:  # where the core keeps run/checkpoint resolution
    from genctl.resolve import find_checkpoint, load_model
except ImportError:  # pragma: no cover - an older core
    from genctl.sampling import find_checkpoint, load_model

RESULTS = Path(__file__).resolve().parent / "results"
FLOW_ROWS = ["method=euler", "method=heun"]
DDPM_ROWS = ["method=ddim eta=1", "method=dpmpp_2m_sde"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("models", nargs="+", help="LABEL=RUN_OR_CHECKPOINT ...")
    ap.add_argument("classifier", help="an MNIST classifier file (genctl_ddpm.classifier)")
    ap.add_argument("--flow-rows", nargs="*", default=FLOW_ROWS)
    ap.add_argument("--ddpm-rows", nargs="*", default=DDPM_ROWS)
    ap.add_argument("--calls", nargs="*", type=int, default=[10, 20, 50])
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--n", type=int, default=500, help="samples per row")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "flow_vs_ddpm.json"))
    ap.add_argument("--grids", help="save each row's first 64 images as a PNG grid here")
    args = ap.parse_intermixed_args()
    out = Path(args.out)

    classifier = load_classifier(args.classifier)
    test_images, _, _ = load_mnist(Path(args.data), "test", False)
    real = fid_statistics(features(classifier, test_images.float() / 255))
    results = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    results.update(classifier=args.classifier, n=args.n, seed=args.seed)
    results.setdefault("models", {})  # those of earlier runs into the same file stay
    done = {(r["model"], r["config"], r["calls"]) for r in results["rows"]}
    models = {}
    for item in args.models:
        label, _, ref = item.partition("=")
        path = Path(ref)
        ckpt = path if path.is_file() else find_checkpoint(run=ref)
        models[label] = load_model(ckpt, torch.device("cpu"))
        results["models"][label] = {
            "checkpoint": str(ckpt),
            "family": models[label].spec.name,
            "step": models[label].step,
        }
    jobs = [
        (label, row, c)
        for c in args.calls
        for label, m in models.items()
        for row in (args.flow_rows if m.spec.name == "flow" else args.ddpm_rows)
    ]
    print(f"{args.n} samples per row, seed {args.seed}")
    print(f"{'model':<12} {'configuration':<24} {'calls':>5} {'FID':>7} {'s':>6}")
    for label, row, budget in jobs:
        model = models[label]
        method = parse_options(model.spec, row.split()).method
        steps = steps_for(method, budget)
        calls = network_calls(method, steps)
        if (label, row, calls) in done:
            continue
        opts = parse_options(model.spec, [*row.split(), f"steps={steps}"])
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
            {
                "model": label,
                "config": row,
                "steps": steps,
                "calls": calls,
                "fid": score,
                "seconds": seconds,
            }
        )
        print(f"{label:<12} {row:<24} {calls:>5} {score:>7.1f} {seconds:>6.0f}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        if args.grids:
            from torchvision.utils import save_image

            name = f"{label}_{row.replace('method=', '').replace(' ', '_')}_{calls}.png"
            Path(args.grids).mkdir(parents=True, exist_ok=True)
            save_image(images[:64], Path(args.grids) / name, nrow=8)


if __name__ == "__main__":
    main()
