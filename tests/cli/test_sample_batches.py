"""`genctl sample` in batches: the same images whatever the batch size, files written as each
batch completes, progress in a log, and a grid refused when it would be too large to hold."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genctl.sampling
from genctl.cli import app
from genctl.interrupts import Interrupted
from genctl.plugins import get_spec
from genctl.sampling import default_batch_size
from genctl.spec import DataInfo, draw_each, image_seed
from tests import toy
from tests.helpers import use_toy_plugin, write_recipe


@pytest.fixture
def cli(workdir, monkeypatch):
    use_toy_plugin(monkeypatch)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def trained(cli, workdir):
    res = cli("train", write_recipe(workdir / "toy.yaml"), "train.steps=2", "--no-progress")
    assert res.exit_code == 0, res.output
    return res.output.split("run ")[1].split()[0]


def _pixels(folder) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_same_seed_gives_the_same_images_at_any_batch_size(cli, trained, workdir):
    for name, batch in (("b3", 3), ("b8", 8)):
        res = cli(
            "sample", "--run", trained, "--n", 10, "--batch-size", batch, "--out", workdir / name
        )
        assert res.exit_code == 0, res.output
    b3, b8 = _pixels(workdir / "b3"), _pixels(workdir / "b8")
    assert list(b3) == [f"{i:05d}.png" for i in range(10)] == list(b8)
    for name in b3:
        assert np.array_equal(b3[name], b8[name]), name
    assert not np.array_equal(b3["00000.png"], b3["00001.png"])  # each image its own noise


def test_progress_lines_in_a_log(cli, trained, workdir):
    res = cli("sample", "--run", trained, "--n", 10, "--batch-size", 4, "--out", workdir / "p")
    assert res.exit_code == 0, res.output
    assert "sampling toy: 4/10 images" in res.output  # after the first batch
    assert "sampling toy: 10/10 images (100%)" in res.output  # and at the end


def test_each_batch_is_written_as_it_completes(cli, trained, workdir, monkeypatch):
    calls = []
    original = toy.ToySampler.sample

    def ctrl_c_in_the_third_batch(self, n, options, generator, inputs=None):
        calls.append(n)
        if len(calls) == 9:  # one image per call: images 0-7 (two batches of 4) are done
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, n, options, generator, inputs)

    monkeypatch.setattr(toy.ToySampler, "sample", ctrl_c_in_the_third_batch)
    res = cli("sample", "--run", trained, "--n", 20, "--batch-size", 4, "--out", workdir / "cut")
    assert res.exit_code != 0 and isinstance(res.exception, (Interrupted, SystemExit)), res.output
    files = _pixels(workdir / "cut")  # every file opens: whole files only
    assert list(files) == [f"{i:05d}.png" for i in range(8)]


def test_a_grid_too_large_to_hold_is_bad_input(cli, trained, workdir, monkeypatch):
    monkeypatch.setattr(genctl.sampling, "MAX_GRID_PIXELS", 10 * 8 * 8)  # ten 8x8 images
    res = cli("sample", "--run", trained, "--n", 11, "--out", workdir / "g.png")
    assert res.exit_code == 2, res.output
    assert "too large" in res.output and "--out" in res.output
    assert not (workdir / "g.png").exists()
    res = cli("sample", "--run", trained, "--n", 10, "--out", workdir / "g.png")
    assert res.exit_code == 0 and (workdir / "g.png").exists()


def test_default_batch_size_keeps_a_batch_near_a_million_pixels():
    assert [default_batch_size(s) for s in (8, 32, 64, 128, 256, 1024, 2048)] == [
        256,
        256,
        256,
        64,
        16,
        1,
        1,
    ]


def test_image_seeds_are_distinct_across_seeds_and_images():
    seeds = {image_seed(s, i) for s in range(20) for i in range(200)}
    assert len(seeds) == 4000 and all(0 <= x < 2**63 for x in seeds)


def test_dcgan_draws_a_list_of_generators_as_it_draws_each_alone():
    spec = get_spec("dcgan")
    info = DataInfo(task="unconditional", image_size=32, channels=3)
    config = spec.config.model_validate({"latent_dim": 8, "g_width": 4, "d_width": 4})
    torch.manual_seed(0)
    sampler = spec.sampler(config, spec.build(config, info), info)
    assert sampler.generator_per_image
    opts = spec.sampler_options()

    def gens():
        return [torch.Generator().manual_seed(image_seed(0, i)) for i in range(5)]

    together = draw_each(sampler, opts, gens(), range(5))
    alone = torch.cat([sampler.sample(1, opts, g) for g in gens()])
    torch.testing.assert_close(together, alone)
