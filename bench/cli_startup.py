"""CLI startup: wall time of `genctl --help`, and what importing `genctl.cli` costs.

    .venv/bin/python bench/cli_startup.py            # 15 runs of each command
    .venv/bin/python bench/cli_startup.py --runs 5

`genctl --help` must stay fast (target: under 1 s on the CI machine) because every command
pays the same start: the CLI imports no plugin, no torch, no mlflow until a command needs them.
Measured here, each in a fresh process, the median of several runs:

* ``python -c pass``: the interpreter alone, the floor under every command;
* ``genctl --help`` through the installed console script, and again with typer's rich help
  formatting off (``TYPER_USE_RICH=0``): rich is imported only to render help, and that row
  shows its share;
* ``genctl plugins list``: the first command that loads every plugin (and torch), for scale;
* ``import genctl.cli``: cumulative import time from ``python -X importtime``, with the
  heaviest modules it pulls in, and whether any heavy library (torch, mlflow, ...) is among them.

Prints a table and writes ``bench/results/cli_startup.json``. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "cli_startup.json"
HEAVY = ("torch", "torchvision", "mlflow", "torch_fidelity", "numpy", "PIL", "pydantic", "yaml")
TARGET_S = 1.0


def genctl_command() -> list[str]:
    script = Path(sys.executable).parent / "genctl"
    if script.exists():
        return [str(script)]
    found = shutil.which("genctl")
    return [found] if found else [sys.executable, "-m", "genctl"]


def wall_times(cmd: list[str], runs: int, **extra_env: str) -> list[float]:
    times = []
    env = {k: v for k, v in os.environ.items() if k != "GENCTL_PLUGINS"} | extra_env
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env
        )
        times.append(time.perf_counter() - start)
    return times


def import_profile(module: str, runs: int) -> dict:
    """Cumulative import time of ``module`` (median over runs) and what it imports directly."""
    totals: list[float] = []
    line = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        rows = [(len(m.group(3)), m.group(4), int(m.group(2)) / 1e6) for m in line.finditer(out)]
        end = next(i for i, (_, name, _) in enumerate(rows) if name == module)
        start = end
        while start > 0 and rows[start - 1][0] > rows[end][0]:
            start -= 1  # importtime prints what a module imports just before the module itself
        totals.append(rows[end][2])
        under = rows[start:end]
    direct = sorted(
        ((name, t) for depth, name, t in under if depth == rows[end][0] + 2), key=lambda x: -x[1]
    )
    heavy = sorted({name for _, name, _ in under if name.split(".")[0] in HEAVY})
    return {
        "module": module,
        "median_s": round(statistics.median(totals), 4),
        "min_s": round(min(totals), 4),
        "direct_imports_s": {name: round(t, 4) for name, t in direct[:8]},
        "modules_loaded": len(under) + 1,
        "heavy_modules_loaded": heavy,
    }


def summarise(name: str, cmd: list[str], times: list[float]) -> dict:
    return {
        "command": name,
        "argv": cmd,
        "runs": len(times),
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command")
    args = parser.parse_args()
    genctl = genctl_command()

    wall_times(genctl + ["--help"], 2)  # warm the file cache first
    rows = [
        summarise(
            "python -c pass",
            [sys.executable, "-c", "pass"],
            wall_times([sys.executable, "-c", "pass"], args.runs),
        ),
        summarise("genctl --help", genctl + ["--help"], wall_times(genctl + ["--help"], args.runs)),
        summarise(
            "genctl --help, no rich",
            ["TYPER_USE_RICH=0", *genctl, "--help"],
            wall_times(genctl + ["--help"], args.runs, TYPER_USE_RICH="0"),
        ),
        summarise(
            "genctl plugins list",
            genctl + ["plugins", "list"],
            wall_times(genctl + ["plugins", "list"], max(3, args.runs // 5)),
        ),
    ]
    imports = import_profile("genctl.cli", args.runs)
    help_row = rows[1]
    result = {
        "benchmark": "cli_startup",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "target_help_s": TARGET_S,
        "help_under_target": help_row["median_s"] < TARGET_S,
        "commands": rows,
        "import": imports,
    }

    print(f"{'command':<22} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    for r in rows:
        print(
            f"{r['command']:<22} {r['runs']:>4} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f}"
        )
    print(
        f"{'import genctl.cli':<22} {args.runs:>4} {imports['median_s']:>9.3f} {imports['min_s']:>7.3f}"
    )
    print(
        f"\ngenctl.cli loads {imports['modules_loaded']} modules; heaviest direct imports: "
        + ", ".join(f"{k} {v:.3f}s" for k, v in imports["direct_imports_s"].items())
    )
    print(
        f"heavy libraries imported by genctl.cli: {', '.join(imports['heavy_modules_loaded']) or 'none'}"
    )
    print(
        f"genctl --help median {help_row['median_s']:.3f} s (target < {TARGET_S} s): {'ok' if result['help_under_target'] else 'OVER'}"
    )
    print(f"load average {result['machine']['load_average']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
