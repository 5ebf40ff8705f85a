"""SRGAN plugin: SRResNet, discriminator, MSE pre-training, VGG content loss, sampler (8 -> 32 px)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
from genctl_srgan import loss as srgan_loss
from genctl_srgan.config import SRGANConfig
from genctl_srgan.loss import SRGANObjective
from genctl_srgan.model import build_networks
from genctl_srgan.sampler import SRGANSampler, SRGANSamplerOptions

from genctl.errors import BadInput
from genctl.plugins import load_plugins
from genctl.spec import DataInfo
from tests.plugins.img2img import changed, optimizer_step, snapshot, tiny_cpu  # noqa: F401

TINY = SRGANConfig(blocks=2, channels=8, ndf=4, content_loss="mse")
INFO = DataInfo(task="super_resolution", channels=3, image_size=32, scale=4)


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> str:
    """A stand-in for torchvision's vgg19 weights: its `features.*` keys and shapes, random values."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])
    path = tmp_path_factory.mktemp("vgg") / "vgg19-standin.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return str(path)


def batch(n: int = 2) -> dict[str, torch.Tensor]:
    hr = torch.rand(n, 3, 32, 32) * 2 - 1
    return {"lr": F.avg_pool2d(hr, 4), "hr": hr}


def test_plugin_registers_a_super_resolution_model_that_takes_input():
    spec = load_plugins().registry.get("srgan")
    assert spec.task == "super_resolution"
    assert spec.takes_input


def test_srresnet_has_the_published_1_55_million_parameters():
    g = build_networks(
        SRGANConfig(), DataInfo(task="super_resolution", channels=3, image_size=96, scale=4)
    )
    assert round(sum(p.numel() for p in g["generator"].parameters()) / 1e6, 2) == 1.55


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_generator_output_is_scale_times_the_input(scale):
    info = DataInfo(task="super_resolution", channels=3, image_size=64, scale=scale)
    nets = build_networks(TINY, info)
    assert nets["generator"](torch.zeros(1, 3, 64 // scale, 64 // scale)).shape == (1, 3, 64, 64)
    assert nets["discriminator"](torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_scale_that_is_not_a_power_of_two_is_bad_input():
    info = DataInfo(task="super_resolution", channels=3, image_size=48, scale=3)
    with pytest.raises(BadInput, match="power of two"):
        build_networks(TINY, info)


def test_pretraining_updates_only_the_generator_on_pixel_mse():
    config = TINY.model_copy(update={"pretrain_steps": 3})
    nets = build_networks(config, INFO)
    objective = SRGANObjective(config, nets, INFO)
    assert [objective.schedule(s) for s in range(5)] == [["g"]] * 3 + [["g", "d"]] * 2
    data = batch()
    loss, logs = objective.loss("g", data, 2)
    assert set(logs) == {"mse"}
    torch.testing.assert_close(loss, F.mse_loss(nets["generator"](data["lr"]), data["hr"]))


def test_after_pretraining_the_generator_loss_adds_the_adversarial_term():
    nets = build_networks(TINY, INFO)
    objective = SRGANObjective(TINY, nets, INFO)
    before = snapshot(nets)
    loss, logs = optimizer_step(objective, nets, "g", batch())
    assert changed(before, nets) == {"generator"}
    assert set(logs) == {"content", "adv", "mse"}
    torch.testing.assert_close(loss.detach(), logs["content"] + 1e-3 * logs["adv"])


def test_discriminator_step_updates_only_the_discriminator():
    nets = build_networks(TINY, INFO)
    objective = SRGANObjective(TINY, nets, INFO)
    optimizer_step(objective, nets, "g", batch())
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    before = snapshot(nets)
    loss, logs = optimizer_step(objective, nets, "d", batch())
    assert changed(before, nets) == {"discriminator"}
    assert all(p.grad is None for p in nets["generator"].parameters())
    assert torch.isfinite(loss) and 0 < logs["d_real"] < 1


def test_vgg_content_loss_runs_on_a_local_weights_file_and_stays_frozen(vgg_weights):
    config = TINY.model_copy(update={"content_loss": "vgg", "vgg_weights": vgg_weights})
    nets = build_networks(config, INFO)
    objective = SRGANObjective(config, nets, INFO)
    state = torch.load(vgg_weights, weights_only=True)
    torch.testing.assert_close(objective.vgg.features[34].weight, state["features.34.weight"])
    loss, logs = optimizer_step(objective, nets, "g", batch())
    assert torch.isfinite(loss) and logs["content"] > 0
    assert not logs["content"].equal(logs["mse"])  # features, not pixels
    assert all(p.grad is None for p in objective.vgg.parameters())


def test_missing_vgg_weights_file_is_bad_input_that_says_how_to_train_without():
    config = TINY.model_copy(update={"content_loss": "vgg", "vgg_weights": "/nowhere/vgg19.pth"})
    with pytest.raises(BadInput, match="no file at /nowhere/vgg19.pth") as err:
        SRGANObjective(config, build_networks(config, INFO), INFO)
    assert "model.content_loss=mse" in err.value.hint
    assert "model.vgg_weights=" in err.value.hint


def test_no_weights_and_no_download_is_bad_input(monkeypatch):
    def offline():
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(srgan_loss, "download_vgg19_state", offline)
    config = TINY.model_copy(update={"content_loss": "vgg"})
    with pytest.raises(BadInput, match="needs VGG-19 weights") as err:
        SRGANObjective(config, build_networks(config, INFO), INFO)
    assert "model.content_loss=mse" in err.value.hint


def test_weights_of_the_wrong_shapes_are_bad_input(tmp_path):
    path = tmp_path / "not-vgg.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    config = TINY.model_copy(update={"content_loss": "vgg", "vgg_weights": str(path)})
    with pytest.raises(BadInput, match=r"features.0.weight .* has shape \(8, 3, 3, 3\)"):
        SRGANObjective(config, build_networks(config, INFO), INFO)


def test_mse_content_loss_needs_no_weights():
    objective = SRGANObjective(TINY, build_networks(TINY, INFO), INFO)
    assert objective.vgg is None


def test_sampler_upscales_deterministically_into_the_unit_range():
    nets = {k: v.eval() for k, v in build_networks(TINY, INFO).items()}
    sampler = SRGANSampler(TINY, nets, INFO)
    lr = batch()["lr"]
    out = sampler.sample(2, SRGANSamplerOptions(), torch.Generator().manual_seed(0), lr)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, sampler.sample(2, SRGANSamplerOptions(), torch.Generator(), lr))


def test_bicubic_method_is_the_baseline_upscaling_of_the_same_input():
    sampler = SRGANSampler(TINY, build_networks(TINY, INFO), INFO)
    lr = batch()["lr"]
    out = sampler.sample(2, SRGANSamplerOptions(method="bicubic"), torch.Generator(), lr)
    expected = F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1).add(1).div(2)
    torch.testing.assert_close(out, expected)


def test_sampler_without_input_images_is_bad_input():
    sampler = SRGANSampler(TINY, build_networks(TINY, INFO), INFO)
    with pytest.raises(BadInput, match="needs low-resolution input images"):
        sampler.sample(2, SRGANSamplerOptions(), torch.Generator())


def test_preview_shows_low_resolution_bicubic_model_and_high_resolution():
    nets = {k: v.eval() for k, v in build_networks(TINY, INFO).items()}
    data = batch(3)
    images, nrow = SRGANSampler(TINY, nets, INFO).preview(data, torch.Generator())
    assert nrow == 4
    assert images.shape == (12, 3, 32, 32)
    torch.testing.assert_close(images[3::4], (data["hr"] + 1) / 2)
    torch.testing.assert_close(
        images[0::4, :, :4, :4], ((data["lr"][:, :, :1, :1] + 1) / 2).expand(-1, -1, 4, 4)
    )


def test_evaluation_reports_y_channel_psnr_ssim_inside_a_scale_px_border_rgb_beside(tmp_path):
    import numpy as np
    from PIL import Image

    from genctl.evaluation import evaluate, source_for
    from genctl.plugins import get_spec
    from genctl.recipe import validate

    rng = np.random.default_rng(0)
    for split, n in (("train", 1), ("test", 3)):
        for i in range(n):
            path = tmp_path / "hr" / split / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    spec = get_spec("srgan")
    recipe = validate(
        {
            "name": "t",
            "plugin": "srgan",
            "model": TINY.model_dump(),
            "data": {"kind": "super_resolution", "root": str(tmp_path / "hr"), "image_size": 32},
        },
        spec=spec,
    )
    nets = {k: v.eval() for k, v in build_networks(TINY, INFO).items()}
    sampler = SRGANSampler(TINY, nets, INFO)
    bicubic = SRGANSamplerOptions(method="bicubic")
    source = source_for(recipe, sampler, device="cpu", num_samples=8, seed=0, options=bicubic)
    res = evaluate(source, ["psnr", "ssim"], batch_size=2, progress=False)
    assert {"psnr", "ssim", "psnr_rgb", "ssim_rgb", "psnr_bicubic", "psnr_rgb_bicubic"} <= set(
        res.metrics
    )
    paired = res.protocol["eval.paired_metrics"]
    assert "Y channel (ITU-R BT.601" in paired and "4 px cropped from each border" in paired
    # the sampler's bicubic is the evaluation's baseline: the same numbers on both protocols
    assert res.metrics["psnr"] == pytest.approx(res.metrics["psnr_bicubic"], abs=0.05)
    assert res.metrics["psnr_rgb"] == pytest.approx(res.metrics["psnr_rgb_bicubic"], abs=0.05)
    assert res.metrics["psnr"] != pytest.approx(res.metrics["psnr_rgb"], abs=0.05)
