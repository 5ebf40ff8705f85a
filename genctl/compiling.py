"""``train.compile``: the networks the trainer trains, run through ``torch.compile``.

Each trained network (one an objective group names) is compiled in place with
``nn.Module.compile``: it stays the same module, so its ``state_dict`` keys, the parameters the
optimizers and torchrun's gradient hooks hold, and the EMA copies (made before, and eager) are
those of an eager run. A checkpoint of a compiled run has no ``_orig_mod.`` keys and loads in
eager code, and the other way round. Compilation itself is lazy: the first step compiles.

torch.compile needs a C++ compiler on CPU (Inductor builds C++ kernels) and Triton on CUDA.
Without them it would fail in the first step, after the run was recorded; so this checks
first and stops with bad input instead of falling back to eager behind the user's back.
"""

from __future__ import annotations

import torch
from torch import nn

from genctl.errors import BadInput


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here, or None if it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            return "no C++ compiler found (torch.compile builds its CPU kernels with one)"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed or does not support this GPU"
    return None


def compile_networks(nets: dict[str, nn.Module], mode: bool | str, device: torch.device) -> None:
    """Compile ``nets`` in place (``mode``: True for torch.compile's default, else its mode)."""
    problem = compile_problem(device)
    if problem:
        raise BadInput(
            f"train.compile={str(mode).lower()} cannot work on {device.type}: {problem}",
            "Install a C++ compiler (g++ or clang++; set CXX to it) on CPU or Triton on CUDA, "
            "or train eager with train.compile=false.",
        )
    options = {} if mode is True else {"mode": mode}
    for net in nets.values():
        net.compile(**options)
