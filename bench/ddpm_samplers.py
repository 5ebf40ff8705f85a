"""Sample quality of the ddpm family's samplers on one trained model: FID in an MNIST classifier.

FID needs a feature network. Inception-v3's weights are not available offline, and its features
say little about 28x28 grey digits anyway, so this benchmark uses a domain one: the penultimate
features (the 4x4-pooled convolution output, 2,048 numbers) of the small MNIST classifier the
plugin trains (``python -m genctl_ddpm.classifier``, 98% held-out accuracy). The reference
statistics are those of the 10,000 MNIST test digits; each sampler configuration draws ``--n``
images from the same seed (the same starting noise for every configuration), and the Frechet
distance between the two Gaussians is computed here (numpy/scipy, self-contained). A row of real
training digits gives the floor that ``--n`` samples can reach.

Configurations are sampler options as ``genctl sample`` takes them, one quoted argument each,
plus two of the benchmark's own for diagnosis: ``weights=raw`` (the trained weights instead of
the EMA average) and ``clipped_eps=false`` (DDIM keeps the network's noise next to the clamped
x_0, as before the fix and as diffusers does by default)::

    python -m genctl_ddpm.classifier recipes/ddpm-mnist.yaml /tmp/mnist-classifier.pt --steps 500
    OMP_NUM_THREADS=1 .venv/bin/python bench/ddpm_samplers.py RUN_OR_CHECKPOINT \\
        /tmp/mnist-classifier.pt --data ../shared/data/mnist --table
    .venv/bin/python bench/ddpm_samplers.py CKPT CLF "method=ddim steps=50 spacing=trailing" ...

``--table`` runs the README's table (DDIM eta 0 and 1 at 10/25/50/100/200 steps and DDPM-100,
trailing spacing unless ``--spacings`` names others, then DDPM-1000 unless ``--no-ddpm1000``).
Prints each row as it is done and writes bench/results/ddpm_samplers.json (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from genctl_ddpm.classifier import load_classifier
from genctl_ddpm.sampler import DDPMSampleOptions
from scipy import linalg

from genctl import checkpoint
from genctl.data.standard import load_mnist
from genctl.resolve import find_checkpoint, load_model
from genctl.sampling import parse_options

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_KEYS = ("weights", "clipped_eps", "clip")


def table_configs(spacings: tuple[str, ...] = ("trailing",), ddpm1000: bool = True) -> list[str]:
    """The README's table: DDIM at eta 0 and 1 at 10/25/50/100/200 steps and DDPM-100 in each
    spacing, then DDPM with all 1000 steps (20x DDPM-50's network calls: ``ddpm1000=False``
    leaves it out)."""
    rows = []
    for spacing in spacings:
        for eta in (0, 1):
            rows += [
                f"method=ddim steps={n} eta={eta} spacing={spacing}" for n in (10, 25, 50, 100, 200)
            ]
        rows.append(f"method=ddpm steps=100 spacing={spacing}")
    if ddpm1000:
        rows.append("method=ddpm steps=1000")
    return rows


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = features.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula."""
    (mu1, s1), (mu2, s2) = a, b
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: nudge, as pytorch-fid does
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@torch.no_grad()
def features(classifier: torch.nn.Module, images01: torch.Tensor, batch: int = 500) -> np.ndarray:
    """Penultimate classifier features of images in [0, 1]."""
    out = [
        classifier.features(images01[i : i + batch] * 2 - 1) for i in range(0, len(images01), batch)
    ]
    return torch.cat(out).numpy()


def parse(spec, text: str) -> tuple[DDPMSampleOptions, dict[str, str]]:
    pairs = text.split()
    bench = {k: v for k, _, v in (p.partition("=") for p in pairs) if k in BENCH_KEYS}
    opts = parse_options(spec, [p for p in pairs if p.partition("=")[0] not in BENCH_KEYS])
    return opts, bench


def draw(model, raw_unet, opts, bench, n: int, batch: int, seed: int) -> torch.Tensor:
    sampler = model.sampler
    saved_unet = sampler.unet
    if bench.get("weights", "ema") == "raw":
        sampler.unet = raw_unet
    import genctl_ddpm.sampler as sampler_module

    make = sampler_module.make_scheduler
    if bench.get("clipped_eps", "true") == "false":

        def make_old(method, schedule):
            s = make(method, schedule)
            if hasattr(s, "clipped_eps"):
                s.clipped_eps = False
            return s

        sampler_module.make_scheduler = make_old
    saved_clip = sampler.schedule.clip_sample
    if "clip" in bench:
        sampler.schedule.clip_sample = bench["clip"] == "true"
    try:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([sampler.sample(min(batch, n - i), opts, g) for i in range(0, n, batch)])
    finally:
        sampler.unet = saved_unet
        sampler.schedule.clip_sample = saved_clip
        sampler_module.make_scheduler = make


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", help="a ddpm run id or checkpoint file")
    ap.add_argument("classifier", help="an MNIST classifier checkpoint (genctl_ddpm.classifier)")
    ap.add_argument("configs", nargs="*", help='sampler options, e.g. "method=ddim steps=50"')
    ap.add_argument("--table", action="store_true", help="run the README's table")
    ap.add_argument(
        "--spacings",
        default="trailing",
        help="--table: comma-separated spacings (leading,trailing,linspace); default trailing",
    )
    ap.add_argument(
        "--no-ddpm1000", action="store_true", help="--table: leave out DDPM with all 1000 steps"
    )
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--n", type=int, default=1000, help="samples per configuration")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "ddpm_samplers.json"))
    ap.add_argument("--grids", help="a folder for an 8x8 grid of each configuration's samples")
    args = ap.parse_intermixed_args()

    path = Path(args.model)
    ckpt_path = path if path.is_file() else find_checkpoint(run=args.model)
    model = load_model(ckpt_path, torch.device("cpu"))
    raw_unet = copy.deepcopy(model.nets["unet"])
    raw_unet.load_state_dict(checkpoint.load(ckpt_path)["nets"]["unet"])
    classifier = load_classifier(args.classifier)

    root = Path(args.data)
    test_images, _, _ = load_mnist(root, "test", False)
    train_images, _, _ = load_mnist(root, "train", False)
    real = stats(features(classifier, test_images.float() / 255))
    g = torch.Generator().manual_seed(args.seed)
    floor_idx = torch.randperm(len(train_images), generator=g)[: args.n]
    floor_images = train_images[floor_idx].float() / 255
    floor = frechet(stats(features(classifier, floor_images)), real)

    table = table_configs(tuple(args.spacings.split(",")), not args.no_ddpm1000)
    configs = (table if args.table else []) + args.configs
    results = {
        "model": str(ckpt_path),
        "step": model.step,
        "classifier": args.classifier,
        "n": args.n,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "floor_fid_real_train_digits": floor,
        "floor_border_mean": float(floor_images[..., :3, :].mean()),
        "rows": [],
    }
    print(
        f"model step {model.step}; {args.n} samples per row; FID of {args.n} real training digits: {floor:.1f}"
    )
    print(f"{'configuration':<50} {'NFE':>5} {'FID':>8} {'border':>7} {'s':>7}")
    for text in configs:
        opts, bench = parse(model.spec, text)
        nfe = opts.steps or (50 if opts.method == "ddim" else model.config.timesteps)
        start = time.perf_counter()
        images = draw(model, raw_unet, opts, bench, args.n, args.batch, args.seed)
        seconds = time.perf_counter() - start
        score = frechet(stats(features(classifier, images)), real)
        # the mean of the top three rows: a real digit's background is black (0); grey is not
        border = float(images[..., :3, :].mean())
        results["rows"].append(
            {"config": text, "nfe": nfe, "fid": score, "border_mean": border, "seconds": seconds}
        )
        if args.grids:
            from torchvision.utils import save_image

            Path(args.grids).mkdir(parents=True, exist_ok=True)
            save_image(images[:64], Path(args.grids) / (text.replace(" ", "_") + ".png"), nrow=8)
        print(f"{text:<50} {nfe:>5} {score:>8.1f} {border:>7.3f} {seconds:>7.0f}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
