"""Streaming data (data.stream): loader throughput against the in-memory path, and the memory
of training from a 20,000-image folder against a 1,000-image one.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/data_stream.py           # ~10 minutes
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/data_stream.py --quick   # a smoke run

Throughput: CelebA 10k (``../shared/data/celeba/celeba_10k.zip``, 89x109 JPEG) at 64x64,
batches of 64. The in-memory path decodes the set once (threads, uncached) and then gathers
batches from the uint8 tensors; the streaming loader decodes every batch in 0, 1, 2 or 4
DataLoader worker processes (0: in the training process). Each row runs one pass over the
set after a warm-up, so a streaming row pays for every decode.

Memory: the tests' toy GAN (linear, on images pooled to 1/8 of the side) trained for one pass over
a 20,000-image 256x256 JPEG folder with streaming, against 1,000 images of the same folder in
memory and streamed, the same number of steps each. The folders are made in a temporary
directory from the CelebA images (stretched to 256x256, each also mirrored for the second
10,000). Each run is a child process; a thread samples the proportional set size (PSS: shared
pages divided among their sharers, so workers forked from the trainer are not counted twice)
of the trainer and its workers, and the table gives the peak sum and the trainer's own peak
RSS. Prints the tables and writes ``bench/results/data_stream.json``. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data"
CELEBA = SHARED / "celeba" / "celeba_10k.zip"
RESULTS = REPO / "bench" / "results" / "data_stream.json"


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# ---------------------------------------------------------------- throughput


def throughput(limit: int | None, batch: int) -> list[dict]:
    import torch

    from genctl.data import DataConfig, Loader, StreamLoader, load_dataset, open_dataset

    rows = []
    base = {"kind": "images", "root": str(CELEBA), "image_size": 64, "limit": limit}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GENCTL_CACHE"] = cache
        start = time.perf_counter()
        memory = load_dataset(DataConfig(**base, cache=False))
        seconds = time.perf_counter() - start
        n = len(memory)
        from genctl.data.decode import workers

        rows.append(row(f"in memory: decode once ({workers()} threads)", n, seconds, load()))
        loader = Loader(memory, batch, seed=0, device="cpu", flip=True)
        rows.append(row("in memory: batches after decoding", *passes(loader, n, batch)))
        for w in (0, 1, 2, 4):
            streamed = open_dataset(DataConfig(**base, stream=True, workers=w))
            loader = StreamLoader(streamed, batch, seed=0, device="cpu", flip=True)
            rows.append(row(f"streaming, {w} workers", *passes(loader, n, batch)))
            del loader
    torch.set_num_threads(1)
    return rows


def passes(loader, n: int, batch: int) -> tuple[int, float, str]:
    """One pass over ``n`` images after a warm-up of a few batches (workers started)."""
    for _ in range(4):
        loader.next()
    steps = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(steps):
        loader.next()
    return steps * batch, time.perf_counter() - start, load()


def row(what: str, images: int, seconds: float, machine: str) -> dict:
    return {
        "path": what,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "machine": machine,
    }


# ---------------------------------------------------------------- memory


def make_folders(tmp: Path, n: int, side: int) -> tuple[Path, Path]:
    """``n`` JPEGs of side x side from CelebA (mirrored past 10,000), and the first 1,000."""
    import io

    from PIL import Image

    big, small = tmp / f"big-{n}-{side}px", tmp / f"small-1000-{side}px"
    if not big.is_dir():
        part = tmp / "partial"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        with zipfile.ZipFile(CELEBA) as zf:
            names = sorted(i for i in zf.namelist() if i.endswith(".jpg"))
            for i in range(n):
                img = Image.open(io.BytesIO(zf.read(names[i % len(names)]))).convert("RGB")
                if (i // len(names)) % 2:
                    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                img.resize((side, side), Image.Resampling.BICUBIC).save(
                    part / f"{i:06d}.jpg", quality=90
                )
        part.rename(big)
    if not small.is_dir():
        small.mkdir()
        for p in sorted(big.iterdir())[:1000]:
            shutil.copyfile(p, small / p.name)
    return big, small


def _pooled_toy(config, info):
    """The tests' toy GAN, seeing and drawing images at 1/8 of the side: a tiny model whose
    steps cost little beside decoding 256x256 images, so a pass over 20,000 takes minutes."""
    from torch import nn

    c, small = info.channels, info.image_size // 8
    dim = c * small * small
    g = nn.Sequential(
        nn.Linear(config.latent, dim),
        nn.Unflatten(1, (c, small, small)),
        nn.Upsample(scale_factor=8),
        nn.Flatten(),
        nn.Tanh(),
    )
    d = nn.Sequential(
        nn.AvgPool2d(8), nn.Flatten(), nn.Linear(dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)
    )
    return {"generator": g, "discriminator": d}


def train_child(root: str, stream: bool, steps: int, side: int, out: str) -> None:
    """In a child process: train the toy GAN on ``root`` and record the peak memory."""
    import psutil

    peak = {"pss": 0, "rss_main": 0, "processes": 1}
    me = psutil.Process()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                procs = [me, *me.children(recursive=True)]
                pss = sum(p.memory_full_info().pss for p in procs)
                peak["pss"] = max(peak["pss"], pss)
                peak["processes"] = max(peak["processes"], len(procs))
                peak["rss_main"] = max(peak["rss_main"], me.memory_info().rss)
            except psutil.Error:
                pass
            done.wait(0.25)

    threading.Thread(target=sample, daemon=True).start()
    import dataclasses

    from genctl.recipe import validate
    from genctl.trainer import train
    from tests import toy

    spec = dataclasses.replace(toy.SPEC, build=_pooled_toy)

    raw = {
        "name": "toy-stream-bench",
        "plugin": "toy",
        "model": {"latent": 8},
        "data": {"kind": "images", "root": root, "image_size": side, "stream": stream},
        "train": {
            "steps": steps,
            "batch_size": 32,
            "log_every": 50,
            "sample_every": 10**6,
            "checkpoint_every": 10**6,
            "grid_size": 4,
        },
    }
    start = time.perf_counter()
    result = train(validate(raw, spec=spec), progress=False)
    seconds = time.perf_counter() - start
    time.sleep(0.3)
    done.set()
    Path(out).write_text(
        json.dumps({**peak, "seconds": seconds, "steps": result.step, "machine": load()})
    )


def memory(quick: bool) -> list[dict]:
    n, side = (2000, 64) if quick else (20000, 256)
    steps = n // 32  # one pass over the large folder
    tmp = Path(tempfile.gettempdir()) / f"genctl-bench-stream-{os.getuid()}"
    tmp.mkdir(exist_ok=True)
    big, small = make_folders(tmp, n, side)
    rows = []
    for label, root, stream in (
        ("1,000 images in memory", small, False),
        ("1,000 images streamed", small, True),
        (f"{n:,} images streamed", big, True),
    ):
        with tempfile.TemporaryDirectory() as work:
            out = Path(work) / "peak.json"
            env = {**os.environ, "GENCTL_CACHE": str(Path(work) / "cache")}
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
            code = (
                "import sys; sys.path.insert(0, sys.argv[1]); from bench.data_stream import "
                "train_child; train_child(sys.argv[2], sys.argv[3] == '1', int(sys.argv[4]), "
                "int(sys.argv[5]), sys.argv[6])"
            )
            args = [str(REPO), str(root), "1" if stream else "0", str(steps), str(side), str(out)]
            subprocess.run([sys.executable, "-c", code, *args], check=True, cwd=work, env=env)
            got = json.loads(out.read_text())
        rows.append(
            {
                "run": label,
                "image_size": side,
                "steps": got["steps"],
                "batch_size": 32,
                "peak_pss_mb": round(got["pss"] / 2**20),
                "peak_rss_trainer_mb": round(got["rss_main"] / 2**20),
                "processes": got["processes"],
                "seconds": round(got["seconds"], 1),
                "machine": got["machine"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets: a smoke run")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if not CELEBA.is_file():
        sys.exit(f"CelebA not found at {CELEBA}")
    print(f"start: {load()}, {os.cpu_count()} cores")
    speed = throughput(1000 if args.quick else None, 64)
    print("\nLoader throughput, CelebA 10k at 64x64, batches of 64 (flip on)")
    print(f"{'path':44} {'images':>7} {'seconds':>8} {'images/s':>9}  machine")
    for r in speed:
        print(
            f"{r['path']:44} {r['images']:7d} {r['seconds']:8.2f} {r['images_per_s']:9.0f}  "
            f"{r['machine']}"
        )
    mem = [] if args.skip_memory else memory(args.quick)
    if mem:
        print("\nTraining memory (toy GAN, batches of 32; PSS of trainer + workers)")
        print(
            f"{'run':28} {'size':>5} {'steps':>6} {'peak PSS MB':>12} {'trainer RSS MB':>15} "
            f"{'procs':>5} {'seconds':>8}  machine"
        )
        for r in mem:
            print(
                f"{r['run']:28} {r['image_size']:5d} {r['steps']:6d} {r['peak_pss_mb']:12d} "
                f"{r['peak_rss_trainer_mb']:15d} {r['processes']:5d} {r['seconds']:8.1f}  "
                f"{r['machine']}"
            )
    import torch

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "data_stream",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_end": os.getloadavg(),
        },
        "throughput": speed,
        "memory": mem,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
