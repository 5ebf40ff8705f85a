"""A `genctl` process for tests/test_faults.py to interrupt or kill at a chosen spot.

    python tests/fault_child.py SPOT MARKER GENCTL_ARGUMENTS...

It runs the CLI with the toy family installed. At SPOT it creates the file MARKER, so that the
test knows where the process is, then goes on as a slow sampler or a slow disk would:

- ``sampler``: a toy ``sample`` call for more than 4 images (an evaluation batch; not the 4-image
  training grid), or any in `genctl sample` (which draws the toy one image per call), takes two
  minutes;
- ``checkpoint-slow``: writing the step-10 checkpoint takes 2 s more;
- ``checkpoint-hang``: writing the step-10 checkpoint stops half way (for two minutes).

The waits sleep in short slices, so Python runs signal handlers as promptly as in real work.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _wait(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> None:
    spot, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]

    import genctl.plugins
    from genctl import checkpoint
    from tests import toy

    ps = genctl.plugins.load_plugins(extra={"toy": toy})
    genctl.plugins.plugins = lambda: ps

    if spot == "sampler":
        sample = toy.ToySampler.sample

        def slow_sample(self, n, options, generator, inputs=None):
            if n > 4 or args[0] == "sample":
                marker.touch()
                _wait(120)
            return sample(self, n, options, generator, inputs)

        toy.ToySampler.sample = slow_sample
    elif spot in ("checkpoint-slow", "checkpoint-hang"):
        write = checkpoint.write

        def slow_write(payload, f):
            if payload.get("step") != 10:
                return write(payload, f)
            if spot == "checkpoint-slow":
                marker.touch()
                _wait(2)
                return write(payload, f)
            write(payload, f)  # then leave only its first half, as a write cut short would
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            marker.touch()
            _wait(120)

        checkpoint.write = slow_write
    else:
        raise SystemExit(f"unknown spot {spot!r}")

    from genctl.cli import app

    app(args=args, prog_name="genctl")


if __name__ == "__main__":
    main()
