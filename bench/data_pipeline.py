"""Data pipeline throughput: decoding from a folder and from a zip, cached and uncached, and the
Loader's batches per second.

    .venv/bin/python bench/data_pipeline.py            # ../shared/data, about two minutes
    .venv/bin/python bench/data_pipeline.py --quick    # smaller sets, a few seconds

Each dataset is decoded twice into a fresh cache folder: the first load decodes every file
(uncached), the second reads the cached uint8 tensors. The folder and zip rows hold the same
files (the zip is made here from the folder, deflated as zip tools do by default), so they
compare the container, not the images. Prints a table and writes
``bench/results/data_pipeline.json``. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from genctl.data import DataConfig, Loader, load_dataset  # noqa: E402
from genctl.data.decode import workers  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "data_pipeline.json"


def make_zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def time_load(cfg: DataConfig) -> tuple[float, int]:
    start = time.perf_counter()
    ds = load_dataset(cfg)
    return time.perf_counter() - start, len(ds)


def decode_rows(
    name: str, container: str, cfg: DataConfig, cache: Path, repeats: int
) -> list[dict]:
    """Uncached then cached load of ``cfg`` into the empty cache folder ``cache``.

    The uncached load runs once (it fills the cache); the cached one is the best of ``repeats``.
    """
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["GENCTL_CACHE"] = str(cache)
    rows = []
    for state, runs in (("uncached", 1), ("cached", repeats)):
        seconds, n = min(time_load(cfg) for _ in range(runs))
        rows.append(
            {
                "dataset": name,
                "source": container,
                "state": state,
                "images": n,
                "image_size": cfg.image_size,
                "seconds": round(seconds, 3),
                "images_per_s": round(n / seconds, 1),
            }
        )
    return rows


def loader_rows(cfg: DataConfig, batch_size: int, steps: int, repeats: int) -> list[dict]:
    """Batches per second on CPU, best of ``repeats`` runs of ``steps`` batches."""
    ds = load_dataset(cfg)
    rows = []
    for threads in (1, 2):  # a busy shared machine can stall torch's 2-thread ops: show both
        torch.set_num_threads(threads)
        for flip in (False, True):
            loader = Loader(ds, batch_size, seed=0, device="cpu", flip=flip)
            for _ in range(5):  # warm-up
                loader.next()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(steps):
                    loader.next()
                best = min(best, time.perf_counter() - start)
            rows.append(
                {
                    "dataset": f"{cfg.kind} {cfg.image_size}px",
                    "batch_size": batch_size,
                    "flip": flip,
                    "torch_threads": threads,
                    "batches_per_s": round(steps / best, 1),
                    "images_per_s": round(steps * batch_size / best, 1),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets: a smoke run")
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared datasets folder")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    decode_threads = torch.get_num_threads()
    if not args.data.is_dir():
        sys.exit(f"datasets not found at {args.data}")
    limit = 200 if args.quick else None
    big = 2000 if args.quick else None  # None: all 50,000 CIFAR-10 training images
    repeats = 3  # cached loads and loader runs: best of three (the machine may be shared)

    decode: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        for name, folder, size in (
            ("pokemon (PNG RGBA 100px)", args.data / "pokemon", 64),
            ("horse2zebra trainB (JPEG 128px)", args.data / "horse2zebra" / "trainB", 64),
        ):
            archive = make_zip(folder, tmp / f"{folder.name}.zip")
            for container, root in (("folder", folder), ("zip", archive)):
                cfg = DataConfig(kind="images", root=str(root), image_size=size, limit=limit)
                decode += decode_rows(name, container, cfg, cache, repeats)
        cifar = DataConfig(
            kind="cifar10", root=str(args.data / "cifar10"), image_size=32, limit=big
        )
        decode += decode_rows("cifar10 train.zip (JPEG 32px)", "zip", cifar, cache, repeats)
        celeba = args.data / "celeba" / "celeba_10k.zip"
        cfg = DataConfig(kind="images", root=str(celeba), image_size=64, limit=limit)
        decode += decode_rows("celeba_10k.zip (JPEG 89x109)", "zip", cfg, cache, repeats)
        mnist = DataConfig(kind="mnist", root=str(args.data / "mnist"), image_size=32, limit=limit)
        decode += decode_rows("mnist train (IDX gz)", "files", mnist, cache, repeats)

        os.environ["GENCTL_CACHE"] = str(cache)
        steps = 50 if args.quick else 300
        loading = loader_rows(cifar, 64, steps, repeats)
        loading += loader_rows(
            DataConfig(kind="shapes", image_size=64, size=5000), 64, steps, repeats
        )
        sr = DataConfig(
            kind="super_resolution",
            root=str(celeba),
            image_size=64,
            scale=4,
            limit=500 if args.quick else 2500,
        )
        loading += loader_rows(sr, 16, steps, repeats)

    print(f"\nDecoding ({workers()} threads, {os.cpu_count()} cores)")
    print(f"{'dataset':44} {'source':7} {'state':9} {'images':>7} {'seconds':>8} {'images/s':>10}")
    for r in decode:
        print(
            f"{r['dataset']:44} {r['source']:7} {r['state']:9} {r['images']:7d} "
            f"{r['seconds']:8.2f} {r['images_per_s']:10.0f}"
        )
    print("\nLoader on CPU (gather, uint8 -> float, flip; super_resolution also bicubic LR)")
    print(
        f"{'dataset':30} {'batch':>5} {'flip':>5} {'threads':>7} {'batches/s':>10} {'images/s':>10}"
    )
    for r in loading:
        print(
            f"{r['dataset']:30} {r['batch_size']:5d} {str(r['flip']):>5} {r['torch_threads']:7d} "
            f"{r['batches_per_s']:10.1f} {r['images_per_s']:10.0f}"
        )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "data_pipeline",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "decode_threads": workers(),
            "torch_threads_while_decoding": decode_threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
            "repeats": repeats,
        },
        "decode": decode,
        "loader": loading,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
