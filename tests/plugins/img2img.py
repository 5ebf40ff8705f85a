"""What the image-to-image family tests share: one optimizer step as the trainer takes it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def tiny_cpu() -> Iterator[None]:
    """Seed 0, one thread: tiny convolutions run many times faster on one thread than on two
    busy cores. Test modules use it by importing it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def optimizer_step(objective, nets: dict[str, nn.Module], group: str, batch: dict, step: int = 0):
    """What the trainer does for one group: loss, clear that group's grads, backward, step."""
    params = [p for name in objective.groups[group] for p in nets[name].parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    loss, logs = objective.loss(group, batch, step)
    for p in params:
        p.grad = None
    loss.backward()
    optimizer.step()
    return loss, logs


def snapshot(nets: dict[str, nn.Module]) -> dict[str, list[torch.Tensor]]:
    return {k: [p.detach().clone() for p in v.parameters()] for k, v in nets.items()}


def changed(before: dict[str, list[torch.Tensor]], nets: dict[str, nn.Module]) -> set[str]:
    """Names of the networks whose parameters differ from ``before``."""
    return {
        name
        for name, net in nets.items()
        if any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters(), strict=True))
    }
