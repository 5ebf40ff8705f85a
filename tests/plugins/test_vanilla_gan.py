"""Vanilla (MLP) GAN: the blocks of the source documents, BCE on logits, conditioning, sampler."""

from __future__ import annotations

import pytest
import torch
from genctl_vanilla_gan import (
    VanillaGANConfig,
    VanillaGANObjective,
    VanillaGANSampler,
    VanillaGANSamplerOptions,
)
from genctl_vanilla_gan.model import build
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo

TINY = {"latent_dim": 8, "g_hidden": [16, 32], "d_hidden": [32, 16]}


def make(classes: int = 0, channels: int = 1, size: int = 16, **options):
    torch.manual_seed(0)
    config = VanillaGANConfig(**{**TINY, **options})
    data = DataInfo(task="unconditional", channels=channels, image_size=size, num_classes=classes)
    nets = build(config, data)
    return config, nets, data


def real_batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(n, 1, 16, 16, generator=g) * 2 - 1,
        "label": torch.randint(0, 10, (n,), generator=g),
    }


def test_generator_blocks_are_linear_batchnorm_relu_ending_in_tanh():
    _, nets, _ = make()
    kinds = [type(m) for m in nets["generator"].net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.Tanh]
    assert [m.out_features for m in nets["generator"].net if isinstance(m, nn.Linear)] == [
        16,
        32,
        256,
    ]


def test_discriminator_blocks_are_linear_leaky_relu_ending_in_one_logit():
    _, nets, _ = make()
    layers = list(nets["discriminator"].net)
    assert [type(m) for m in layers] == [nn.Linear, nn.LeakyReLU] * 2 + [nn.Linear]
    assert all(m.negative_slope == 0.2 for m in layers if isinstance(m, nn.LeakyReLU))
    assert layers[0].in_features == 256 and layers[-1].out_features == 1


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 8)])
def test_images_have_the_data_shape(channels, size):
    _, nets, _ = make(channels=channels, size=size)
    x = nets["generator"](torch.randn(5, 8))
    assert x.shape == (5, channels, size, size)
    assert nets["discriminator"](x).shape == (5,)


@pytest.mark.parametrize("group", ["d", "g"])
def test_one_step_of_a_group_changes_only_that_groups_network(group):
    config, nets, data = make()
    objective = VanillaGANObjective(config, nets, data)
    own = objective.groups[group][0]
    other = "generator" if own == "discriminator" else "discriminator"
    before = {name: [p.clone() for p in net.parameters()] for name, net in nets.items()}
    opt = torch.optim.Adam(nets[own].parameters(), lr=1e-2)
    loss, _ = objective.loss(group, real_batch(), 0)
    loss.backward()
    opt.step()
    weights = lambda name: zip(before[name], nets[name].parameters(), strict=True)  # noqa: E731
    assert all(not torch.equal(a, b) for a, b in weights(own))
    assert all(torch.equal(a, b) for a, b in weights(other))
    assert all(p.grad is None for p in nets[other].parameters())  # D frozen during the G step


def test_discriminator_loss_is_bce_on_logits_and_logs_probabilities():
    config, nets, data = make()
    objective = VanillaGANObjective(config, nets, data)
    b = real_batch()
    torch.manual_seed(2)
    loss, logs = objective.loss("d", b, 0)
    torch.manual_seed(2)
    z = torch.randn(8, config.latent_dim)
    with torch.no_grad():
        fake = nets["generator"](z)
        real_p, fake_p = (
            torch.sigmoid(nets["discriminator"](b["image"])),
            torch.sigmoid(nets["discriminator"](fake)),
        )
    expected = -(real_p.log().mean() + (1 - fake_p).log().mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["d_real"].item() == pytest.approx(real_p.mean().item(), rel=1e-5)
    assert logs["d_fake"].item() == pytest.approx(fake_p.mean().item(), rel=1e-5)


def test_conditional_generator_output_depends_on_the_label():
    _, nets, _ = make(classes=10, conditional=True)
    g = nets["generator"].eval()
    z = torch.randn(4, 8)
    assert not torch.allclose(g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.full((4,), 3)))


def test_conditional_without_labels_in_the_data_is_bad_input():
    with pytest.raises(BadInput, match="no class labels"):
        make(classes=0, conditional=True)


def test_sampler_is_deterministic_per_seed_and_in_unit_range():
    config, nets, data = make()
    s = VanillaGANSampler(config, nets, data)
    a = s.sample(5, VanillaGANSamplerOptions(), torch.Generator().manual_seed(3))
    torch.manual_seed(99)  # the global random state plays no part
    b = s.sample(5, VanillaGANSamplerOptions(), torch.Generator().manual_seed(3))
    assert a.shape == (5, 1, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(
        a, s.sample(5, VanillaGANSamplerOptions(), torch.Generator().manual_seed(4))
    )


def test_sampler_label_option_picks_the_class():
    config, nets, data = make(classes=10, conditional=True)
    s = VanillaGANSampler(config, nets, data)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cycled = s.sample(3, VanillaGANSamplerOptions(), gen())
    ones = s.sample(3, VanillaGANSamplerOptions(label=1), gen())
    assert torch.equal(cycled[1], ones[1])  # cycling draws class 1 second
    assert not torch.equal(cycled[0], ones[0])
    with pytest.raises(BadInput, match="classes 0 to 9"):
        s.sample(3, VanillaGANSamplerOptions(label=10), gen())


def test_sampler_label_for_an_unconditional_model_is_bad_input():
    config, nets, data = make()
    with pytest.raises(BadInput, match="not class-conditional"):
        VanillaGANSampler(config, nets, data).sample(
            2, VanillaGANSamplerOptions(label=0), torch.Generator()
        )
