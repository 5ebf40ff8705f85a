"""CycleGAN plugin: networks, image pool, objective and sampler on tiny 32x32 images."""

from __future__ import annotations

import pytest
import torch
from genctl_cyclegan.config import CycleGANConfig
from genctl_cyclegan.loss import CycleGANObjective, ImagePool
from genctl_cyclegan.model import build_discriminator, build_generator, build_networks
from genctl_cyclegan.sampler import CycleGANSampler, CycleGANSamplerOptions

from genctl.errors import BadInput
from genctl.plugins import load_plugins
from genctl.spec import DataInfo
from tests.plugins.img2img import changed, optimizer_step, snapshot, tiny_cpu  # noqa: F401

TINY = CycleGANConfig(generator="resnet_6blocks", ngf=4, ndf=4, pool_size=4)
INFO = DataInfo(task="unpaired", channels=3, image_size=32)


def eval_nets(config=TINY) -> dict:
    """Networks as samplers get them from their callers: in eval mode."""
    return {k: v.eval() for k, v in build_networks(config, INFO).items()}


def batch(n: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    return {"a": torch.rand(n, 3, size, size) * 2 - 1, "b": torch.rand(n, 3, size, size) * 2 - 1}


def test_plugin_registers_an_unpaired_model_that_takes_input():
    spec = load_plugins().registry.get("cyclegan")
    assert spec.task == "unpaired"
    assert spec.takes_input
    assert spec.sampler_options is CycleGANSamplerOptions


def test_resnet9_generator_has_the_published_11_378_million_parameters():
    g = build_generator(CycleGANConfig(), DataInfo(task="unpaired", channels=3, image_size=256))
    assert sum(p.numel() for p in g.parameters()) == 11_378_179


@pytest.mark.parametrize("generator", ["resnet_9blocks", "resnet_6blocks", "unet"])
def test_generators_keep_the_image_shape_and_stay_in_range(generator):
    g = build_generator(CycleGANConfig(generator=generator, ngf=4), INFO)
    out = g(batch()["a"])
    assert out.shape == (2, 3, 32, 32)
    assert out.abs().max() <= 1


def test_patch_discriminator_scores_a_grid_of_patches():
    d = build_discriminator(TINY, DataInfo(task="unpaired", channels=3, image_size=64))
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # 64/8 - 2: overlapping patches


def test_images_too_small_for_the_discriminator_are_bad_input():
    with pytest.raises(BadInput, match="d_layers=3 needs images of at least 24 px"):
        build_networks(TINY, DataInfo(task="unpaired", channels=3, image_size=16))


def test_resnet_generator_rejects_a_size_it_cannot_reproduce():
    with pytest.raises(BadInput, match="multiple of 4"):
        build_networks(TINY, DataInfo(task="unpaired", channels=3, image_size=30))


def test_pool_returns_new_images_until_full_then_mixes_in_history():
    pool = ImagePool(size=3, seed=0)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: every image passes through
    seen = set(first.flatten().tolist())
    returned_old = returned_new = 0
    for i in range(3, 43):
        new = torch.full((1, 1, 1, 1), float(i))
        out = pool.query(new).item()
        assert out == i or out in seen  # either the new image or one from the history
        returned_new += out == i
        returned_old += out != i
        seen.add(float(i))
    assert returned_old > 5 and returned_new > 5  # a fair coin over 40 queries
    assert pool.images.shape[0] == 3  # the history never grows past its size


def test_pool_of_size_zero_is_a_pass_through():
    pool = ImagePool(size=0, seed=0)
    x = torch.randn(4, 3, 8, 8)
    assert pool.query(x) is x


def test_pool_state_round_trips_through_torch_save_exactly(tmp_path):
    pool = ImagePool(size=4, seed=1)
    for _ in range(6):
        pool.query(torch.randn(2, 3, 8, 8))
    torch.save(pool.state_dict(), tmp_path / "pool.pt")
    restored = ImagePool(size=4, seed=99)
    restored.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))
    for _ in range(5):
        x = torch.randn(2, 3, 8, 8)
        assert torch.equal(pool.query(x), restored.query(x))


def test_objective_state_carries_both_pools_so_resume_is_exact(tmp_path):
    nets = build_networks(TINY, INFO)
    objective = CycleGANObjective(TINY, nets, INFO)
    for _ in range(3):
        optimizer_step(objective, nets, "g", batch())
        optimizer_step(objective, nets, "d", batch())
    torch.save(objective.state_dict(), tmp_path / "objective.pt")
    resumed = CycleGANObjective(TINY, nets, INFO)  # fresh pools, other seeds
    resumed.load_state_dict(torch.load(tmp_path / "objective.pt", weights_only=True))
    data = batch()
    with torch.no_grad():
        expected, _ = objective.loss("d", data, 3)
        got, _ = resumed.loss("d", data, 3)
    assert torch.equal(expected, got)


def test_generator_step_updates_both_generators_and_no_discriminator():
    nets = build_networks(TINY, INFO)
    objective = CycleGANObjective(TINY, nets, INFO)
    before = snapshot(nets)
    loss, logs = optimizer_step(objective, nets, "g", batch())
    assert changed(before, nets) == {"g_ab", "g_ba"}
    assert torch.isfinite(loss)
    assert set(logs) == {"adv", "cycle", "identity"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in logs.values())


def test_discriminator_step_updates_both_discriminators_and_sends_no_gradient_to_generators():
    nets = build_networks(TINY, INFO)
    objective = CycleGANObjective(TINY, nets, INFO)
    optimizer_step(objective, nets, "g", batch())
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    before = snapshot(nets)
    loss, logs = optimizer_step(objective, nets, "d", batch())
    assert changed(before, nets) == {"d_a", "d_b"}
    assert all(p.grad is None for k in ("g_ab", "g_ba") for p in nets[k].parameters())
    assert torch.isfinite(loss)
    assert {"d_real", "d_fake", "loss_d_a", "loss_d_b"} <= set(logs)


def test_identity_loss_is_left_out_when_its_weight_is_zero():
    config = TINY.model_copy(update={"lambda_identity": 0.0})
    nets = build_networks(config, INFO)
    _, logs = CycleGANObjective(config, nets, INFO).loss("g", batch(), 0)
    assert "identity" not in logs


def test_discriminator_step_without_a_generator_step_translates_itself():
    nets = build_networks(TINY, INFO)
    loss, _ = CycleGANObjective(TINY, nets, INFO).loss("d", batch(), 0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(("direction", "net"), [("a2b", "g_ab"), ("b2a", "g_ba")])
def test_sampler_translates_with_the_generator_of_the_direction(direction, net):
    nets = eval_nets()
    sampler = CycleGANSampler(TINY, nets, INFO)
    x = batch()["a"]
    out = sampler.sample(2, CycleGANSamplerOptions(direction=direction), torch.Generator(), x)
    with torch.no_grad():
        expected = (nets[net](x) + 1) / 2
    torch.testing.assert_close(out, expected)
    assert out.min() >= 0 and out.max() <= 1


def test_sampler_is_deterministic():
    nets = eval_nets()
    sampler = CycleGANSampler(TINY, nets, INFO)
    x = batch()["b"]
    options = CycleGANSamplerOptions(direction="b2a")
    first = sampler.sample(2, options, torch.Generator().manual_seed(0), x)
    assert torch.equal(first, sampler.sample(2, options, torch.Generator().manual_seed(0), x))


def test_sampler_without_input_images_is_bad_input():
    sampler = CycleGANSampler(TINY, eval_nets(), INFO)
    with pytest.raises(BadInput, match="needs input images"):
        sampler.sample(2, CycleGANSamplerOptions(), torch.Generator())


def test_preview_shows_input_translation_and_reconstruction_for_both_domains():
    nets = eval_nets()
    data = batch(3)
    images, nrow = CycleGANSampler(TINY, nets, INFO).preview(data, torch.Generator())
    assert nrow == 6
    assert images.shape == (18, 3, 32, 32)
    torch.testing.assert_close(images[0::6], (data["a"] + 1) / 2)  # first column: real A
    torch.testing.assert_close(images[3::6], (data["b"] + 1) / 2)  # fourth column: real B
