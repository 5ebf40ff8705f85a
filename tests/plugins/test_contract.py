"""Every built-in model family passes the contract test kit that third-party plugins run.

Each family is built from its shipped recipe (``recipes/<name>.yaml`` when there is one) at a
tiny size: the kit's 16 px synthetic data and batch of 4, plus the overrides below that shrink
the family's networks. One test per family and check, so a failure names both.
"""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

import pytest
import torch

from genctl import testing
from genctl.plugins import load_plugins
from genctl.recipe import recipes_dir

# model name -> overrides that make its networks tiny (and, for a growing model, the step to check)
TINY: dict[str, list[str]] = {
    "vanilla_gan": ["model.latent_dim=8", "model.g_hidden=[16]", "model.d_hidden=[16]"],
    "dcgan": ["model.latent_dim=8", "model.g_width=8", "model.d_width=8"],
    "cyclegan": [
        "model.generator=resnet_6blocks",
        "model.ngf=4",
        "model.ndf=4",
        "model.d_layers=1",  # a 3-layer PatchGAN needs 24 px or more
        "model.pool_size=2",
    ],
    "pix2pix": ["model.ngf=4", "model.ndf=4", "model.d_layers=1"],
    "srgan": [
        "model.blocks=1",
        "model.channels=8",
        "model.ndf=4",
        "model.content_loss=mse",  # the VGG loss needs ImageNet weights
    ],
    "progan": [
        "data.image_size=8",
        "model.latent_dim=8",
        "model.channel_base=64",
        "model.max_channels=8",
        "model.start_resolution=4",
        "model.stable_steps=2",
        "model.fade_steps=2",
    ],
    "stylegan": [
        "data.image_size=8",
        "model.z_dim=8",
        "model.w_dim=8",
        "model.mapping_layers=2",
        "model.channel_base=64",
        "model.max_channels=8",
    ],
    "ddpm": [
        "model.base_channels=8",
        "model.channel_mults=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_resolutions=[8]",
        "model.norm_groups=4",
        "model.timesteps=50",  # the default DDIM sampler takes 50 steps
    ],
    "autoencoder": ["model.width=4", "model.latent_channels=2"],
    "vae": ["model.width=4", "model.latent_channels=2"],
    "pixelcnn": ["data.image_size=8", "model.width=8", "model.layers=1", "model.levels=4"],
    "classifier": ["model.width=8", "model.pool=2", "train.grid_size=3"],
    "flow": [
        "model.base_channels=8",
        "model.channel_mults=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_resolutions=[8]",
        "model.norm_groups=4",
        "model.conditional=true",  # the labels check: classifier-free guidance's null class
    ],
    "ldm": [  # plus model.autoencoder: a tiny VAE checkpoint (_extra_overrides)
        "model.base_channels=8",
        "model.channel_mults=[1,2]",  # the 16 px shapes' latent is 2 x 4 x 4
        "model.num_res_blocks=1",
        "model.attention_resolutions=[2]",
        "model.norm_groups=4",
        "model.timesteps=50",
        "model.conditional=true",  # the labels check: classes in latent space
    ],
}
# ProGAN at step 3 fades 8x8 in (4x4 stable for 2 steps, then a 2-step fade): every layer works.
STEP = {"progan": 3}


def _builtin_models() -> list[str]:
    """Models registered by the plugins this distribution ships (the families that load)."""
    ours = {ep.name for ep in distribution("genctl").entry_points if ep.group == "genctl"}
    return [s.name for s in load_plugins().registry.specs() if s.plugin in ours]


BUILTIN = _builtin_models()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def contracts() -> dict[str, testing.Contract]:
    return {}


def _extra_overrides(name: str, folder: Path) -> list[str]:
    """Overrides that need a file: ldm trains on the latents of an autoencoder checkpoint."""
    if name == "ldm":
        from tests.plugins.test_ldm import write_autoencoder

        return [f"model.autoencoder={write_autoencoder(folder / 'vae.pt')}"]
    return []


def _contract(contracts: dict[str, testing.Contract], name: str, folder: Path) -> testing.Contract:
    if name not in contracts:
        recipe = recipes_dir() / f"{name}.yaml"
        if not recipe.is_file() and (recipes_dir() / f"{name}-mnist.yaml").is_file():
            recipe = recipes_dir() / f"{name}-mnist.yaml"
        contracts[name] = testing.make_contract(
            name,
            recipe if recipe.is_file() else None,
            [*TINY.get(name, []), *_extra_overrides(name, folder)],
            step=STEP.get(name, 0),
        )
    return contracts[name]


@pytest.mark.parametrize("check", list(testing.CHECKS))
@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_plugin_keeps_the_contract(contracts, name, check, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path_factory.getbasetemp() / "contract-cache"))
    folder = tmp_path_factory.getbasetemp()
    testing.CHECKS[check](_contract(contracts, name, folder))


def test_every_builtin_model_has_tiny_settings_here():
    assert BUILTIN, "no built-in plugin loaded"
    missing = [name for name in BUILTIN if name not in TINY]
    assert not missing, f"add tiny overrides for {missing} to TINY in {__file__}"
