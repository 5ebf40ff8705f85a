"""What genctl's evaluation costs: genctl against torch-fidelity called directly on the same images.

    python bench/evaluation.py [--n 64] [--repeats 2] [--batch-size 32] [--device cpu|cuda]

Both sides compute FID and KID on the same uint8 images with the same Inception weights (a
stand-in file of the real layout, so nothing is downloaded): torch-fidelity through
``calculate_metrics`` on two in-memory datasets, genctl through ``evaluate`` on an
:class:`ImageSource` whose "generator" hands out ready-made uint8 images, so generation costs
nothing and what is measured is what genctl adds around torch-fidelity. Both start cold (the
feature extractor is built, real statistics are not cached), runs are interleaved so machine
noise hits both alike, and the median is reported. A third row shows genctl with the real
statistics already cached (what every evaluation after the first pays).

Targets: images/s ratio genctl / torch-fidelity >= 0.95; FID equal to 1e-4 on the same inputs.
Real images: CIFAR-10 test images from ../shared/data when present, else random images.
Prints a table and writes bench/results/evaluation.json.
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

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


class _Uint8Set(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class _Ready:
    """A 'sampler' whose images already exist (uint8): generation costs nothing."""

    def __init__(self, images: torch.Tensor):
        self.images, self.pos = images, 0

    def sample(self, n, options, generator, inputs=None):
        out = self.images[self.pos : self.pos + n]
        self.pos += n
        return out


def images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(generated stand-ins, real images, where they come from): 2n CIFAR-10 test images."""
    if (SHARED / "cifar10").is_dir():
        from genctl.data import DataConfig, load_dataset

        cfg = DataConfig(kind="cifar10", root=str(SHARED / "cifar10"), split="test", limit=2 * n)
        x = load_dataset(cfg).tensors["image"]
        return x[:n], x[n : 2 * n], "CIFAR-10 test images (32x32)"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2 * n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return x[:n], x[n:], "random 32x32 images"


def run_torch_fidelity(
    gen, real, weights: Path, batch_size: int, cuda: bool
) -> tuple[float, float]:
    import torch_fidelity

    start = time.perf_counter()
    out = torch_fidelity.calculate_metrics(
        input1=_Uint8Set(gen),
        input2=_Uint8Set(real),
        fid=True,
        kid=True,
        kid_subset_size=min(1000, len(gen), len(real)),
        cuda=cuda,
        batch_size=batch_size,
        cache=False,
        verbose=False,
        feature_extractor_weights_path=str(weights),
    )
    return time.perf_counter() - start, out["frechet_inception_distance"]


def run_genctl(
    gen, real, weights: Path, batch_size: int, device: str, cold: bool
) -> tuple[float, float]:
    import genctl.evaluation as ev
    from genctl.evaluation import ImageSource, evaluate, fidelity
    from genctl.evaluation.sources import sampled

    if cold:  # as torch-fidelity: build the extractor, no cached real statistics
        fidelity._feature_extractor.cache_clear()
        ev._REAL_MEMO.clear()
        os.environ["GENCTL_CACHE"] = tempfile.mkdtemp(prefix="genctl-bench-cache-")
    source = ImageSource(sampled(_Ready(gen), None, len(gen), 0), len(gen), real, "bench")
    start = time.perf_counter()
    res = evaluate(
        source,
        ["fid", "kid"],
        weights=str(weights),
        device=device,
        batch_size=batch_size,
        progress=False,
    )
    return time.perf_counter() - start, res.metrics["fid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images per set (generated and real)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    from genctl.evaluation import fidelity

    tmp = Path(tempfile.mkdtemp(prefix="genctl-bench-"))
    weights = fidelity.write_standin_weights(tmp / "standin-inception.pth")
    gen, real, what = images(args.n)
    cuda = args.device.startswith("cuda")
    total = len(gen) + len(real)

    times: dict[str, list[float]] = {"torch-fidelity": [], "genctl": [], "genctl, real cached": []}
    fids: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved: noise hits both alike
        t, fids["torch-fidelity"] = run_torch_fidelity(gen, real, weights, args.batch_size, cuda)
        times["torch-fidelity"].append(t)
        t, fids["genctl"] = run_genctl(gen, real, weights, args.batch_size, args.device, cold=True)
        times["genctl"].append(t)
        t, fids["genctl, real cached"] = run_genctl(
            gen, real, weights, args.batch_size, args.device, cold=False
        )
        times["genctl, real cached"].append(t)

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: total / v for k, v in med.items()}
    ratio = rate["genctl"] / rate["torch-fidelity"]
    fid_diff = abs(fids["genctl"] - fids["torch-fidelity"])
    print(
        f"{what}: {len(gen)} generated + {len(real)} real, batch {args.batch_size}, {args.device}, "
        f"median of {args.repeats}"
    )
    print(f"{'':22}{'seconds':>10}{'images/s':>11}{'FID':>16}")
    for k in times:
        print(f"{k:22}{med[k]:10.2f}{rate[k]:11.2f}{fids[k]:16.8f}")
    print(f"images/s ratio genctl / torch-fidelity: {ratio:.3f} (target >= 0.95)")
    print(f"|FID genctl - FID torch-fidelity|: {fid_diff:.2e} (target <= 1e-4)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "evaluation.json"
    out.write_text(
        json.dumps(
            {
                "images": what,
                "n_generated": len(gen),
                "n_real": len(real),
                "batch_size": args.batch_size,
                "device": args.device,
                "repeats": args.repeats,
                "machine": platform.platform(),
                "torch": torch.__version__,
                "torch_fidelity": fidelity.VERSION,
                "seconds": times,
                "median_seconds": med,
                "images_per_s": rate,
                "fid": fids,
                "images_per_s_ratio": ratio,
                "fid_abs_diff": fid_diff,
                "meets_targets": ratio >= 0.95 and fid_diff <= 1e-4,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
