"""Wheels for a GPU machine that has PyTorch but no internet: what genctl needs that it lacks.

    python bench/gpu_wheels.py [--have FILE] [--dest .whl]

Walks genctl's requirements (and diffusers', the peer of ``bench/diffusion.py``) as this environment resolved them (name and version of every
package they pull in), leaves out the packages the GPU machine already has (``--have``: one name
per line, or a text with a "Packages: a, b, c" line; by default the device tool's package list
when this workplace has it, else only torch and its CUDA parts), and downloads the rest as
Python 3.12 manylinux wheels into ``--dest``, plus a wheel of genctl itself (for its entry
points: the built-in families are found through them). Prints the size and the command that
installs them on the GPU machine and runs ``bench/gpu_check.py``.

Never carried: torch and what comes with it (the machine's own CUDA build must be used).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
DEVICE_LIST = Path("/work/.library/device/KINDS.md")
NEVER = {"torch", "torchvision", "triton", "numpy", "setuptools", "pip", "wheel"}
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str) -> dict[str, str]:
    """name -> installed version of ``root``'s requirements, recursively (no extras)."""
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        key = norm(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return seen


def device_has(path: Path | None) -> set[str]:
    if path is None or not path.exists():
        return set()
    text = path.read_text()
    found = re.findall(r"Packages: ([^\n]+)", text)
    names = found[-1].split(",") if found else text.split()
    return {norm(n.strip().rstrip(".")) for n in names if n.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--have", type=Path, default=DEVICE_LIST if DEVICE_LIST.exists() else None)
    ap.add_argument("--dest", type=Path, default=REPO / ".whl")
    ap.add_argument("--python", default="3.12")
    args = ap.parse_args()

    need = {**closure("genctl"), **closure("diffusers")}  # diffusers: bench/diffusion.py's peer
    need.pop("genctl", None)
    have = device_has(args.have) | NEVER
    carry = {
        n: v
        for n, v in sorted(need.items())
        if n not in have and not n.startswith(("nvidia-", "cuda-"))
    }
    args.dest.mkdir(parents=True, exist_ok=True)
    print(f"carrying {len(carry)} packages: {', '.join(f'{n}=={v}' for n, v in carry.items())}")
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    for name, version in carry.items():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", args.python, "--implementation", "cp", *platforms]
        subprocess.run([*cmd, "-d", str(args.dest), f"{name}=={version}"], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(args.dest)],
        check=True,
    )
    size = sum(f.stat().st_size for f in args.dest.glob("*.whl"))
    print(f"\n{args.dest}: {size / 2**20:.1f} MiB of wheels (the device tool carries 64 MiB)")
    print(
        "\nOn the GPU machine (carry .whl; the repo's own code comes first on the path):\n"
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        "--target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:$PWD/plugins:/tmp/site && "
        "PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT/gpu_check.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
