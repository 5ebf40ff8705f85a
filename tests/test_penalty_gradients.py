"""genctl.spec.penalty_gradients: gradient penalties under fp16 loss scaling."""

from __future__ import annotations

import torch

from genctl.spec import penalty_gradients
from tests.plugins.penalty import UnderflowCritic, fp16, fp16_scaler


def test_scaled_penalty_gradients_match_float32_where_plain_float16_ones_underflow():
    critic = UnderflowCritic(16)
    x = torch.rand(4, 1, 4, 4).requires_grad_(True)
    exact = penalty_gradients(critic(x), x)  # float32: 1e-4 everywhere
    assert torch.allclose(exact, torch.full_like(exact, 1e-4), rtol=1e-5)
    with fp16():
        plain = penalty_gradients(critic(x), x)
        scaled = penalty_gradients(critic(x), x, fp16_scaler())
    assert plain.abs().max() == 0  # what the penalty saw before: no gradient at all
    assert scaled.dtype == torch.float32 and scaled.requires_grad
    assert torch.allclose(scaled, exact, rtol=1e-2)


def test_a_disabled_scaler_gives_the_plain_gradient():
    critic = UnderflowCritic(16)
    x = torch.rand(2, 16).requires_grad_(True)
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert torch.equal(penalty_gradients(critic(x), x, off), penalty_gradients(critic(x), x))


def test_an_overflowing_scale_keeps_the_penalty_finite_and_makes_the_scaler_skip_the_update():
    critic = UnderflowCritic(16)
    x = torch.rand(4, 16).requires_grad_(True)
    too_big = torch.amp.GradScaler("cpu", init_scale=2.0**30)  # past float16's 65504
    with fp16():
        grad = penalty_gradients(critic(x), x, too_big)
        penalty = (grad.norm(dim=1) - 1).square().mean()
    assert torch.isfinite(penalty)  # the loss stays finite: no divergence to report
    penalty.backward()
    grads = [p.grad for p in critic.parameters() if p.grad is not None]
    assert grads and not all(torch.isfinite(g).all() for g in grads)  # the scaler skips it
