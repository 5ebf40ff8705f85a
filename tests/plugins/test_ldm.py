"""Latent diffusion: the frozen autoencoder, the latent cache, exact resume, img2img and
sampling a run in a fresh process, on a tiny VAE and a tiny latent UNet of 16 px shapes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from genctl_ldm.loss import LatentDiffusionObjective
from genctl_ldm.model import build
from typer.testing import CliRunner

from genctl import checkpoint
from genctl.cli import app
from genctl.data import load_dataset
from genctl.errors import BadInput
from genctl.recipe import load, recipes_dir
from genctl.resolve import load_model, resolve_checkpoint

REPO = Path(__file__).resolve().parents[2]
VAE_TINY = [
    "data.image_size=16",
    "data.size=64",
    "model.width=4",
    "model.latent_channels=2",  # latents 2 x 4 x 4
    "train.steps=4",
    "train.batch_size=8",
    "train.log_every=2",
    "train.sample_every=4",
    "train.checkpoint_every=4",
    "train.grid_size=4",
    "tracking.log_model=false",  # seconds the tests need not spend
]
LDM_TINY = [
    "data.kind=shapes",
    "data.root=null",
    "data.channels=3",
    "data.image_size=16",
    "data.size=64",
    "model.base_channels=8",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[2]",
    "model.norm_groups=4",
    "model.timesteps=20",
    "model.conditional=true",  # shapes are labelled: class conditioning in latent space
    "train.steps=6",
    "train.batch_size=8",
    "train.log_every=3",
    "train.sample_every=6",
    "train.checkpoint_every=3",
    "train.grid_size=4",
    "tracking.log_model=false",  # seconds the tests need not spend
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_autoencoder(path: Path, image_size: int = 16, channels: int = 1) -> Path:
    """An untrained tiny VAE checkpoint (latents 2 x S/4 x S/4): enough for the contract kit."""
    from dataclasses import asdict

    from genctl_autoencoder.config import VAEConfig
    from genctl_autoencoder.model import build as build_vae

    from genctl.spec import DataInfo

    config = VAEConfig(width=4, latent_channels=2)
    info = DataInfo("unconditional", channels, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = build_vae(config, info)
    payload = {
        "plugin": "vae",
        "recipe": {"model": config.model_dump(mode="json")},
        "data_info": asdict(info),
        "nets": {k: v.state_dict() for k, v in nets.items()},
        "step": 0,
        "run_id": None,
    }
    checkpoint.save(payload, path)
    return path


def ldm_recipe(autoencoder: str, *more: str):
    return load(
        recipes_dir() / "ldm-mnist.yaml", [*LDM_TINY, f"model.autoencoder={autoencoder}", *more]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _empty_mlflow_db):
    """A tiny VAE run and a latent diffusion run on its latents, in a store of their own."""
    from genctl.trainer import train

    root = tmp_path_factory.mktemp("ldm-runs")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("GENCTL_CACHE", str(root / ".cache"))
        vae = train(load(recipes_dir() / "vae.yaml", VAE_TINY), progress=False)
        vae_file = root / "vae.pt"
        shutil.copyfile(resolve_checkpoint(vae.run_id, (checkpoint.FINAL,)), vae_file)
        ldm = train(ldm_recipe(vae.run_id), progress=False)
    return SimpleNamespace(root=root, uri=uri, vae=vae.run_id, vae_file=vae_file, ldm=ldm.run_id)


@pytest.fixture
def store(runs, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs.uri)
    monkeypatch.setenv("GENCTL_CACHE", str(runs.root / ".cache"))
    return runs


def test_the_checkpoint_keeps_the_scale_and_names_the_autoencoder_not_its_weights(store):
    ckpt = checkpoint.load(resolve_checkpoint(store.ldm, (checkpoint.FINAL,)))
    assert ckpt["recipe"]["model"]["autoencoder"] == store.vae
    assert set(ckpt["nets"]) == {"unet", "latent"}
    assert set(ckpt["nets"]["latent"]) == {"scale", "autoencoder_sha256"}  # no encoder weights
    model = load_model(resolve_checkpoint(store.ldm, (checkpoint.FINAL,)), torch.device("cpu"))
    space = model.nets["latent"]
    # the scale is 1/std of the training latents, measured on the data
    data = load_dataset(ldm_recipe(store.vae).data)
    latents = space.encode_raw(data.tensors["image"].float() / 127.5 - 1)
    assert space.scale.item() == pytest.approx(1 / latents.std().item(), rel=1e-4)


def count_encodes(space) -> list[int]:
    calls = [0]
    space.autoencoder.encoder.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def objective_for(recipe):
    torch.manual_seed(0)
    nets = build(recipe.model, load_dataset(recipe.data).info)
    return LatentDiffusionObjective(recipe.model, nets, load_dataset(recipe.data).info), nets


def test_latents_are_encoded_once_then_come_from_the_cache(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path / "cache"))
    recipe = ldm_recipe(store.vae)
    dataset = load_dataset(recipe.data)
    first, nets = objective_for(recipe)
    calls = count_encodes(nets["latent"])
    a = first.prepare_data(dataset)
    assert calls[0] > 0  # encoded the first time
    again, nets2 = objective_for(recipe)  # a new run on the same data and autoencoder
    calls2 = count_encodes(nets2["latent"])
    b = again.prepare_data(dataset)
    assert calls2[0] == 0  # nothing encoded: the cache had the latents
    assert torch.equal(a.tensors["image"], b.tensors["image"])
    assert nets2["latent"].scale.item() == nets["latent"].scale.item()
    assert a.tensors["image"].std().item() == pytest.approx(1.0, rel=1e-4)  # unit variance

    # another autoencoder (other weights): another cache entry, encoded anew
    other = tmp_path / "other-vae.pt"
    ckpt = checkpoint.load(store.vae_file)
    ckpt["nets"]["autoencoder"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["nets"]["autoencoder"].items()
    }
    checkpoint.save(ckpt, other)
    third, nets3 = objective_for(ldm_recipe(str(other)))
    calls3 = count_encodes(nets3["latent"])
    third.prepare_data(dataset)
    assert calls3[0] > 0


def test_a_changed_or_missing_autoencoder_is_bad_input_naming_it(store, tmp_path):
    from genctl.trainer import train

    vae = tmp_path / "vae.pt"
    shutil.copyfile(store.vae_file, vae)
    run = train(ldm_recipe(str(vae), "train.steps=2"), progress=False)
    final = resolve_checkpoint(run.run_id, (checkpoint.FINAL,))
    load_model(final, torch.device("cpu"))  # loads while the autoencoder is the same

    ckpt = checkpoint.load(vae)  # the autoencoder trained on (or replaced) since
    ckpt["nets"]["autoencoder"] = {
        k: v * 1.5 if v.is_floating_point() else v for k, v in ckpt["nets"]["autoencoder"].items()
    }
    checkpoint.save(ckpt, vae)
    with pytest.raises(BadInput, match=f"autoencoder {vae}.*has changed"):
        load_model(final, torch.device("cpu"))
    vae.unlink()
    with pytest.raises(BadInput, match=f"autoencoder {vae}.*cannot be loaded"):
        load_model(final, torch.device("cpu"))


def test_an_interrupted_run_resumes_to_bitwise_identical_weights(store, monkeypatch):
    from genctl.trainer import train

    def weights(run_id):
        return checkpoint.load(resolve_checkpoint(run_id, (checkpoint.FINAL,)))["nets"]

    full = weights(store.ldm)
    original = LatentDiffusionObjective.loss

    def loss_with_ctrl_c(self, group, batch, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, group, batch, step)

    monkeypatch.setattr(LatentDiffusionObjective, "loss", loss_with_ctrl_c)
    first = train(ldm_recipe(store.vae), progress=False)
    assert first.interrupted and first.step == 4
    monkeypatch.setattr(LatentDiffusionObjective, "loss", original)
    resumed = train(ldm_recipe(store.vae), resume=first.run_id, progress=False)
    assert resumed.step == 6
    again = weights(first.run_id)
    for net in full:
        for k in full[net]:
            assert torch.equal(full[net][k], again[net][k]), (net, k)


def test_img2img_from_the_cli_encodes_noises_denoises_and_decodes(store, tmp_path):
    from PIL import Image

    from genctl.data.shapes import generate

    inputs = tmp_path / "in"
    inputs.mkdir()
    images, _ = generate(3, 16, split="test")
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(inputs / f"{i}.png")
    runner = CliRunner()

    def img2img(out, *options):
        res = runner.invoke(
            app, ["sample", "--run", store.ldm, "--input", str(inputs), "--out", str(out), *options]
        )
        assert res.exit_code == 0, res.output
        return torch.stack(
            [
                torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                for p in sorted(out.glob("*.png"))
            ]
        )

    recon = img2img(tmp_path / "s0", "strength=0")  # no noise: the autoencoder's reconstruction
    model = load_model(resolve_checkpoint(store.ldm, (checkpoint.FINAL,)), torch.device("cpu"))
    from genctl.sampling import read_inputs

    x, _ = read_inputs(inputs, model.info, torch.device("cpu"))
    expect = (
        (model.nets["latent"].autoencoder.decode(model.nets["latent"].autoencoder.encode(x)) + 1)
        / 2
    ).clamp(0, 1)
    assert recon.shape == (3, 3, 16, 16)
    assert (recon.float() / 255 - expect).abs().max() <= 1 / 255 + 1e-4
    half = img2img(tmp_path / "s5", "strength=0.5", "steps=10")
    full = img2img(tmp_path / "s10", "strength=1.0", "steps=10")
    # further from the input the more it is noised
    assert (half.float() - recon.float()).abs().mean() < (full.float() - recon.float()).abs().mean()


def test_sample_run_in_a_fresh_process_needs_only_the_tracking_store(store, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "grid.png"
    cmd = [
        sys.executable,
        "-m",
        "genctl",
        "sample",
        "--run",
        store.ldm,
        "--out",
        str(out),
        "--n",
        "4",
        "steps=5",
        "class=1",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    from PIL import Image

    assert Image.open(out).size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # a 2x2 grid of 16 px images


def test_guidance_by_a_loss_judges_the_decoded_images(store):
    """guide=color's loss is on images: the sampler decodes its x_0 estimate for it, and the
    gradient through the decoder moves the latents toward the colour asked."""
    from genctl.sampling import parse_options

    model = load_model(resolve_checkpoint(store.ldm, (checkpoint.FINAL,)), torch.device("cpu"))

    def brightness(value: float) -> float:
        opts = parse_options(
            model.spec, ["guide=color", f"color=[{value},{value},{value}]", "guide_scale=200"]
        )
        gens = [torch.Generator().manual_seed(i) for i in range(4)]
        return (
            model.sampler.sample(4, opts, gens, labels=torch.zeros(4, dtype=torch.long))
            .mean()
            .item()
        )

    # the same seeds: unguided, both would be the same images (this 4-step VAE's decoder barely
    # responds to its latent, so the gap is small; on MNIST's it is 0.02 against 0.33)
    assert brightness(1.0) > brightness(0.0) + 0.005
