"""Pix2Pix plugin: U-Net, conditional PatchGAN, GAN + L1 objective and sampler on 32x32 images."""

from __future__ import annotations

import pytest
import torch
from genctl_pix2pix.config import Pix2PixConfig
from genctl_pix2pix.loss import Pix2PixObjective
from genctl_pix2pix.model import build_networks
from genctl_pix2pix.sampler import Pix2PixSampler

from genctl.errors import BadInput
from genctl.plugins import load_plugins
from genctl.spec import DataInfo, NoOptions
from tests.plugins.img2img import changed, optimizer_step, snapshot, tiny_cpu  # noqa: F401

TINY = Pix2PixConfig(ngf=4, ndf=4)
INFO = DataInfo(task="paired", channels=3, image_size=32)


def batch(n: int = 2) -> dict[str, torch.Tensor]:
    return {"input": torch.rand(n, 3, 32, 32) * 2 - 1, "target": torch.rand(n, 3, 32, 32) * 2 - 1}


def test_plugin_registers_a_paired_model_that_takes_input():
    spec = load_plugins().registry.get("pix2pix")
    assert spec.task == "paired"
    assert spec.takes_input


def test_unet_256_has_the_papers_54_4_million_parameters():
    nets = build_networks(Pix2PixConfig(), DataInfo(task="paired", channels=3, image_size=256))
    assert round(sum(p.numel() for p in nets["generator"].parameters()) / 1e6, 1) == 54.4
    assert len(nets["generator"].encoder) == 8  # C64-C128-C256-C512 x 5 down to 1x1


def test_unet_keeps_the_image_shape_and_range():
    g = build_networks(TINY, INFO)["generator"]
    out = g(batch()["input"])
    assert out.shape == (2, 3, 32, 32)
    assert out.abs().max() <= 1


def test_unet_skip_connections_carry_the_input_to_the_output():
    g = build_networks(TINY, INFO)["generator"].eval()
    x = batch(1)["input"]
    y = x.clone()
    y[..., :4, :4] = -x[..., :4, :4]  # change one corner of the input
    diff = (g(x) - g(y)).abs().sum(1)[0]
    # The corner moves most: the 1x1 bottleneck alone would spread the change evenly.
    assert diff[:4, :4].mean() > 3 * diff[16:, 16:].mean()


def test_discriminator_sees_input_and_output_concatenated():
    nets = build_networks(TINY, INFO)
    seen = []
    nets["discriminator"].net.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    data = batch()
    Pix2PixObjective(TINY, nets, INFO).loss("d", data, 0)
    assert nets["discriminator"].net[0].in_channels == 6
    assert any(torch.equal(s, torch.cat([data["input"], data["target"]], 1)) for s in seen)


def test_unet_too_deep_for_the_image_size_is_bad_input():
    with pytest.raises(BadInput, match="multiple of 64"):
        build_networks(Pix2PixConfig(unet_downs=6), INFO)


def test_discriminator_too_deep_for_the_image_size_is_bad_input():
    with pytest.raises(BadInput, match="d_layers=4 is too deep"):
        build_networks(
            Pix2PixConfig(d_layers=4), DataInfo(task="paired", channels=3, image_size=16)
        )


def test_generator_step_updates_only_the_generator_with_gan_and_l1_losses():
    nets = build_networks(TINY, INFO)
    objective = Pix2PixObjective(TINY, nets, INFO)
    before = snapshot(nets)
    loss, logs = optimizer_step(objective, nets, "g", batch())
    assert changed(before, nets) == {"generator"}
    assert set(logs) == {"adv", "l1"}
    torch.testing.assert_close(loss.detach(), logs["adv"] + TINY.lambda_l1 * logs["l1"])


def test_discriminator_step_updates_only_the_discriminator():
    nets = build_networks(TINY, INFO)
    objective = Pix2PixObjective(TINY, nets, INFO)
    optimizer_step(objective, nets, "g", batch())
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    before = snapshot(nets)
    loss, logs = optimizer_step(objective, nets, "d", batch())
    assert changed(before, nets) == {"discriminator"}
    assert all(p.grad is None for p in nets["generator"].parameters())
    assert torch.isfinite(loss)
    assert 0 < logs["d_real"] < 1 and 0 < logs["d_fake"] < 1  # probabilities


def test_discriminator_judges_the_generator_steps_own_pair():
    nets = build_networks(TINY, INFO)
    objective = Pix2PixObjective(TINY, nets, INFO)
    first = batch()
    objective.loss("g", first, 0)
    seen = []
    nets["discriminator"].net.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    objective.loss("d", batch(), 0)
    with torch.no_grad():
        fake = nets["generator"](first["input"])
    assert torch.allclose(seen[1], torch.cat([first["input"], fake], 1))


def test_sampler_translates_deterministically_into_the_unit_range():
    nets = {k: v.eval() for k, v in build_networks(TINY, INFO).items()}
    sampler = Pix2PixSampler(TINY, nets, INFO)
    x = batch()["input"]
    out = sampler.sample(2, NoOptions(), torch.Generator().manual_seed(0), x)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, sampler.sample(2, NoOptions(), torch.Generator().manual_seed(1), x))


def test_sampler_without_input_images_is_bad_input():
    sampler = Pix2PixSampler(TINY, build_networks(TINY, INFO), INFO)
    with pytest.raises(BadInput, match="needs input images"):
        sampler.sample(2, NoOptions(), torch.Generator())


def test_preview_shows_input_output_and_target_side_by_side():
    nets = {k: v.eval() for k, v in build_networks(TINY, INFO).items()}
    data = batch(3)
    images, nrow = Pix2PixSampler(TINY, nets, INFO).preview(data, torch.Generator())
    assert nrow == 3
    assert images.shape == (9, 3, 32, 32)
    torch.testing.assert_close(images[0::3], (data["input"] + 1) / 2)
    torch.testing.assert_close(images[2::3], (data["target"] + 1) / 2)
