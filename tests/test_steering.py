"""Classifier steering (genctl.steering, `genctl steer`) and the latent interface's contract check."""

from __future__ import annotations

import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from genctl import checkpoint, steering, testing
from genctl.cli import app
from genctl.errors import BadInput
from genctl.recipe import load, recipes_dir, validate
from tests import toy

# ---------------------------------------------------------------- the algorithm, on tiny nets


def _tiny(seed: int = 0):
    """A frozen MLP generator of 8 x 8 grey images and a frozen linear 3-class classifier."""
    torch.manual_seed(seed)
    gen = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 64), nn.Sigmoid()).eval()
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    for net in (gen, clf):
        net.requires_grad_(False)

    def generate(z, labels=None):
        return gen(z).view(-1, 1, 8, 8)

    def log_prob(images):
        return (10 * clf(images * 2 - 1)).log_softmax(1)[:, 2]  # a confident classifier

    z0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    return generate, log_prob, z0


def test_steering_raises_the_target_log_probability_of_every_image():
    generate, log_prob, z0 = _tiny()
    out = steering.steer(generate, log_prob, z0, steps=30, lr=0.1, keep=0.0, frames=3)
    with torch.no_grad():
        before, after = log_prob(generate(z0)), log_prob(generate(out.end))
    assert torch.allclose(out.log_prob_start, before)
    assert torch.allclose(out.log_prob_end, after, atol=1e-6)
    assert (after > before).all()
    assert after.mean() - before.mean() > 0.5
    assert torch.equal(out.start, z0)  # the start latents are not moved in place
    # the grid: one row per latent, its start image first and its steered end last
    assert out.frame_steps == [0, 15, 30]
    images, nrow = steering.grid(out)
    assert nrow == 3 and images.shape == (16 * 3, 1, 8, 8)
    assert torch.allclose(images[0::3], generate(z0))
    assert torch.allclose(images[2::3], generate(out.end))


def test_the_distance_penalty_keeps_latents_closer_to_their_start():
    generate, log_prob, z0 = _tiny()
    free = steering.steer(generate, log_prob, z0, steps=40, lr=0.1, keep=0.0)
    kept = steering.steer(generate, log_prob, z0, steps=40, lr=0.1, keep=1.0)
    assert (kept.distance < free.distance).all()
    assert kept.distance.mean() < 0.7 * free.distance.mean()
    assert (kept.log_prob_end > kept.log_prob_start).all()  # it still moves toward the class


def test_each_latent_moves_on_its_own_whatever_the_batch():
    generate, log_prob, z0 = _tiny()
    whole = steering.steer(generate, log_prob, z0, steps=10, lr=0.1, keep=0.1)
    first = steering.steer(generate, log_prob, z0[:3], steps=10, lr=0.1, keep=0.1)
    assert torch.allclose(whole.end[:3], first.end, atol=1e-6)


def test_fit_images_resizes_and_converts_channels_for_the_classifier():
    grey = torch.rand(2, 1, 32, 32)
    out = steering.fit_images(grey, 3, 28)
    assert out.shape == (2, 3, 28, 28) and out.min() >= -1 and out.max() <= 1
    assert steering.fit_images(torch.rand(2, 3, 16, 16), 1, 16).shape == (2, 1, 16, 16)
    with pytest.raises(BadInput, match="4-channel"):
        steering.fit_images(torch.rand(2, 2, 8, 8), 4, 8)


def test_bad_settings_and_a_sampler_without_latent_are_bad_input():
    generate, log_prob, z0 = _tiny()
    for kwargs in ({"steps": 0}, {"lr": 0.0}, {"keep": -1.0}):
        with pytest.raises(BadInput, match="steps >= 1"):
            steering.steer(generate, log_prob, z0, **kwargs)
    with pytest.raises(BadInput, match=r"latent\(n, generator\) and generate\(z, labels=None\)"):
        steering.require_latent(SimpleNamespace(sample=lambda *a: None), "pixelcnn")


# ---------------------------------------------------------------- the contract check


@pytest.fixture(scope="module")
def dcgan_contract():
    torch.set_num_threads(1)
    return testing.make_contract(
        "dcgan",
        recipes_dir() / "dcgan.yaml",
        ["model.latent_dim=8", "model.g_width=8", "model.d_width=8"],
    )


def test_the_contract_kit_checks_the_latent_interface(dcgan_contract, monkeypatch):
    from genctl_dcgan.sampler import DCGANSampler

    testing.check_latent(dcgan_contract)  # the real one passes
    generate = DCGANSampler.generate
    monkeypatch.setattr(DCGANSampler, "generate", torch.no_grad()(generate))
    with pytest.raises(testing.ContractError, match="not differentiable in z"):
        testing.check_latent(dcgan_contract)
    monkeypatch.setattr(
        DCGANSampler, "generate", lambda self, z, labels=None: generate(self, z) * 2
    )
    with pytest.raises(testing.ContractError, match=r"in \[0, 1\]"):
        testing.check_latent(dcgan_contract)
    monkeypatch.setattr(
        DCGANSampler, "latent", lambda self, n, generator: torch.randn(n, 8)
    )  # ignores its generator
    with pytest.raises(testing.ContractError, match="same seed gave other latents"):
        testing.check_latent(dcgan_contract)
    monkeypatch.delattr(DCGANSampler, "generate")
    with pytest.raises(testing.ContractError, match="but not generate"):
        testing.check_latent(dcgan_contract)


class SteerableToy(toy.ToySampler):
    """A third-party GAN's sampler (the tests' toy plugin) with the two latent methods added."""

    def latent(self, n, generator):
        return torch.randn(n, self.config.latent, generator=generator)

    def generate(self, z, labels=None):
        s = self.info.image_size
        x = self.g(z.to(next(self.g.parameters()).device))
        return x.view(len(z), self.info.channels, s, s).add(1).div(2).clamp(0, 1)


def test_a_third_party_gan_with_the_two_methods_passes_the_kit_and_steers():
    c = testing.make_contract("toy", plugin=replace(toy.SPEC, sampler=SteerableToy))
    testing.check_latent(c)
    sampler = c.sampler(c.build())
    steering.require_latent(sampler, "toy")  # no bad input: it has both

    def log_prob(images):  # "bright images": a two-class logit on the mean pixel
        m = images.mean((1, 2, 3)) * 20 - 10
        return torch.stack([-m, m], 1).log_softmax(1)[:, 1]

    out = steering.steer(
        sampler.generate, log_prob, sampler.latent(4, torch.Generator().manual_seed(0)), steps=20
    )
    assert (out.log_prob_end > out.log_prob_start).all()


# ---------------------------------------------------------------- `genctl steer` end to end


@pytest.fixture(scope="module")
def models(tmp_path_factory, _empty_mlflow_db):
    """A tiny DCGAN and a tiny classifier of 16 px shapes, trained by `genctl train`'s trainer."""
    from genctl.resolve import resolve_checkpoint
    from genctl.trainer import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("steer")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    common = ["data.image_size=16", "data.size=256", "train.batch_size=32", "train.log_every=20"]

    def every(steps: int) -> dict[str, int]:
        return {"steps": steps, "sample_every": steps, "checkpoint_every": steps}

    paths = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("GENCTL_CACHE", str(root / ".cache"))
        classifier = load(
            recipes_dir() / "classifier.yaml",
            [*common, "model.width=8", "train.grid_size=3", "evaluate.every=60"]
            + [f"train.{k}={v}" for k, v in every(60).items()],
        )
        dcgan = validate(
            {
                "name": "dcgan-shapes-tiny",
                "plugin": "dcgan",
                "model": {"latent_dim": 8, "g_width": 8, "d_width": 8},
                "data": {"kind": "shapes", "image_size": 16, "size": 256},
                "train": {"batch_size": 32, "grid_size": 4, **every(20)},
            }
        )
        for name, recipe in (("classifier", classifier), ("dcgan", dcgan)):
            result = train(recipe, progress=False)
            paths[name] = root / f"{name}.pt"
            shutil.copyfile(resolve_checkpoint(result.run_id, (checkpoint.FINAL,)), paths[name])
    return SimpleNamespace(**paths)


def _steer(*args):
    return CliRunner().invoke(app, ["steer", *map(str, args)])


def test_genctl_steer_writes_start_to_end_rows_and_reports_the_shares(models, tmp_path):
    out = tmp_path / "grid.png"
    res = _steer(
        "--checkpoint", models.dcgan, "--classifier", models.classifier, "--judge",
        models.classifier, "--target", 1, "--n", 3, "--steps", 4, "--frames", 3, "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "share of class 1" in res.output and "judge" in res.output
    # 3 rows of 3 frames of 16 px, 2 px padding: make_grid's layout
    assert Image.open(out).size == (3 * 18 + 2, 3 * 18 + 2)


def test_genctl_steer_bad_input_exits_2(models, tmp_path):
    base = ["--classifier", models.classifier, "--out", tmp_path / "g.png"]
    res = _steer("--checkpoint", models.classifier, "--target", 0, *base)
    assert res.exit_code == 2, res.output
    assert "latent(n, generator) and generate(z, labels=None)" in res.output
    res = _steer("--checkpoint", models.dcgan, "--target", 99, *base)
    assert res.exit_code == 2 and "knows" in res.output, res.output
    res = _steer("--checkpoint", models.dcgan, "--target", 0, *base[:2], "--out", tmp_path)
    assert res.exit_code == 2 and "one picture" in res.output, res.output
    res = _steer("--target", 0, *base)
    assert res.exit_code == 2 and "exactly one of" in res.output, res.output
    res = _steer("--checkpoint", models.dcgan, "--target", 0, "--lr", 0, *base)
    assert res.exit_code == 2, res.output
