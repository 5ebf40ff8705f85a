"""`genctl sample --pretrained` and `genctl evaluate --pretrained` on tiny diffusers pipelines with
random weights, saved with save_pretrained to a temporary folder: an unconditional DDPMPipeline
and a Stable Diffusion whose CLIP text encoder and tokenizer are made here. No network."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genctl.evaluation as ev
from genctl.cli import app
from genctl.evaluation import fidelity
from genctl.tracking import get_run, local_path, search_runs
from tests.cli.test_cli import _assert_bad_input
from tests.helpers import TOY_RECIPE, use_toy_plugin, write_recipe

diffusers = pytest.importorskip("diffusers", reason="diffusers (the hf and dev extras) is missing")
transformers = pytest.importorskip("transformers", reason="transformers (the hf extra) is missing")

STEPS = "steps=3"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, str]:
    """{"ddpm": folder, "sd": folder}: the two kinds of pipeline, 8 x 8 and 16 x 16 px."""
    root = tmp_path_factory.mktemp("pipelines")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    ddpm = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(20))
    ddpm.save_pretrained(root / "ddpm")

    # a CLIP tokenizer of single letters (no merges) and a one-layer text encoder
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[f"{c}</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=16,
        )
    )
    sd_unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    )
    sd = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=sd_unet,
        scheduler=diffusers.DDIMScheduler(
            num_train_timesteps=20, clip_sample=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.save_pretrained(root / "sd")
    return {"ddpm": str(root / "ddpm"), "sd": str(root / "sd")}


@pytest.fixture
def cli(workdir, monkeypatch, inception_weights):
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(inception_weights))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a local folder sets it: undone after
    ev._REAL_MEMO.clear()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def _pixels(folder) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _real_folder(folder, n=4, side=8):
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


# ---------------------------------------------------------------- sample


def test_unconditional_pipeline_writes_the_same_images_at_any_batch_size(cli, pipelines, workdir):
    for name, batch in (("b2", 2), ("b5", 5)):
        res = cli(
            "sample", "--pretrained", pipelines["ddpm"], "--n", 5, "--batch-size", batch,
            "--out", workdir / name, STEPS,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "5 images from DDPMPipeline" in res.output
    b2, b5 = _pixels(workdir / "b2"), _pixels(workdir / "b5")
    assert list(b2) == [f"{i:05d}.png" for i in range(5)] == list(b5)
    assert b2["00000.png"].shape == (8, 8, 3)
    for name in b2:
        assert np.array_equal(b2[name], b5[name]), name
    assert not np.array_equal(b2["00000.png"], b2["00001.png"])  # each image its own noise


def test_seeds_name_the_images_and_a_seed_gives_its_image_in_any_company(cli, pipelines, workdir):
    for name, seeds in (("a", "3,7"), ("b", "7")):
        res = cli(
            "sample", "--pretrained", pipelines["ddpm"], "--seeds", seeds, "--out", workdir / name,
            STEPS,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    a, b = _pixels(workdir / "a"), _pixels(workdir / "b")
    assert list(a) == ["seed0003.png", "seed0007.png"]
    assert np.array_equal(a["seed0007.png"], b["seed0007.png"])


def test_a_grid_of_the_pipeline_images(cli, pipelines, workdir):
    res = cli("sample", "--pretrained", pipelines["ddpm"], "--n", 4, "--out", "grid.png", STEPS)
    assert res.exit_code == 0, res.output
    assert Image.open(workdir / "grid.png").size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)


def test_text_to_image_follows_the_prompt_and_its_seeds(cli, pipelines, workdir):
    def run(out, prompt, batch):
        res = cli(
            "sample", "--pretrained", pipelines["sd"], "--n", 3, "--batch-size", batch,
            "--out", workdir / out, STEPS, "guidance=3.0", f"prompt={prompt}",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        return _pixels(workdir / out)

    cat1, cat3, dog = run("cat1", "a cat", 1), run("cat3", "a cat", 3), run("dog", "a dog", 3)
    assert cat1["00000.png"].shape == (16, 16, 3)
    for name in cat1:
        assert np.array_equal(cat1[name], cat3[name]), name
    assert not np.array_equal(cat3["00000.png"], dog["00000.png"])  # the prompt is used


def test_img2img_starts_from_each_input_noised_to_the_strength(cli, pipelines, workdir):
    def run(out, colors, strength):
        inputs = workdir / f"in-{out}"
        inputs.mkdir()
        for i, color in enumerate(colors):
            Image.new("RGB", (16, 16), color).save(inputs / f"in{i}.png")
        res = cli(
            "sample", "--pretrained", pipelines["sd"], "--input", inputs, "--out", workdir / out,
            "steps=4", f"strength={strength}", "prompt=a cat",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        return _pixels(workdir / out)

    red, blue = (250, 20, 20), (20, 20, 250)
    first = run("first", (red, blue), 0.5)
    swapped = run("swapped", (blue, blue), 0.5)
    stronger = run("stronger", (red, blue), 1.0)
    assert list(first) == ["in0.png", "in1.png"]  # named after their inputs
    assert first["in0.png"].shape == (16, 16, 3)
    assert not np.array_equal(first["in0.png"], swapped["in0.png"])  # the input is used
    assert np.array_equal(first["in1.png"], swapped["in1.png"])  # same input, same generator
    assert not np.array_equal(first["in0.png"], stronger["in0.png"])  # and the strength


def test_img2img_images_do_not_depend_on_the_batch_size(cli, pipelines, workdir):
    inputs = workdir / "inputs"
    _real_folder(inputs, n=3, side=16)
    for name, batch in (("b1", 1), ("b3", 3)):
        res = cli(
            "sample", "--pretrained", pipelines["sd"], "--input", inputs, "--batch-size", batch,
            "--out", workdir / name, STEPS, "strength=0.5",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    b1, b3 = _pixels(workdir / "b1"), _pixels(workdir / "b3")
    assert list(b1) == ["0.png", "1.png", "2.png"]
    for name in b1:
        assert np.array_equal(b1[name], b3[name]), name


# ---------------------------------------------------------------- bad input


def test_options_a_pipeline_does_not_take_are_bad_input(cli, pipelines):
    ddpm = ("sample", "--pretrained", pipelines["ddpm"], "--n", 1)
    _assert_bad_input(cli(*ddpm, "guidance=3"), "DDPMPipeline is unconditional", "guidance")
    _assert_bad_input(cli(*ddpm, "prompt=a cat"), "takes no prompt")
    _assert_bad_input(cli(*ddpm, "eta=0.5"), "takes no eta")
    _assert_bad_input(cli(*ddpm, "cfg=2"), "unknown option 'cfg'", "Valid options: steps")
    _assert_bad_input(cli(*ddpm, "steps=0"), "steps=0")
    _assert_bad_input(cli(*ddpm, "steps=50"), "DDPMPipeline:")  # > the 20 training timesteps
    _assert_bad_input(cli(*ddpm, "--input", "x.png"), "no image-to-image mode")
    _assert_bad_input(cli(*ddpm, "--plugin", "toy"), "drop --plugin")
    _assert_bad_input(cli(*ddpm, "--model", "models:/x@y"), "drop --plugin", "--model")
    sd = ("sample", "--pretrained", pipelines["sd"], "--n", 1)
    _assert_bad_input(cli(*sd, "strength=0.5"), "strength is for img2img", "--input")


def test_pipelines_of_other_kinds_are_bad_input():
    from genctl.errors import BadInput
    from genctl.pretrained import pipeline_kind

    class ClassConditional:  # as DiTPipeline
        def __call__(self, class_labels, generator=None, output_type="pil"): ...

    class Unconditional:  # as DDPMPipeline
        def __call__(self, batch_size=1, generator=None, output_type="pil"): ...

    class Inpainting:  # as StableDiffusionInpaintPipeline
        def __call__(
            self, prompt=None, image=None, mask_image=None, generator=None, output_type="pil"
        ): ...

    assert pipeline_kind(Unconditional()) == "unconditional"
    for other in (ClassConditional, Inpainting):
        with pytest.raises(BadInput, match=f"{other.__name__} is neither an unconditional"):
            pipeline_kind(other())


def test_a_folder_without_a_pipeline_is_bad_input(cli, workdir):
    (workdir / "empty").mkdir()
    _assert_bad_input(cli("sample", "--pretrained", "empty"), "no model_index.json")
    _assert_bad_input(cli("sample", "--pretrained", "not/here/at/all"), "no such folder")


def test_a_hub_id_offline_is_bad_input_and_nothing_is_downloaded(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []

    def no_network(self, address, *a, **k):
        attempts.append(address)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    res = cli("sample", "--pretrained", "nobody-here/no-such-pipeline", "--n", 1)
    _assert_bad_input(res, "is a Hub id", "HF_HUB_OFFLINE", "Pass a local folder")
    assert attempts == []


def test_without_diffusers_pretrained_names_the_extra(cli, pipelines, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers: ImportError
    res = cli("sample", "--pretrained", pipelines["ddpm"], "--n", 1)
    _assert_bad_input(res, 'pip install "genctl[hf]"', "diffusers")
    res = cli("evaluate", "--pretrained", pipelines["ddpm"], "--real", ".")
    _assert_bad_input(res, 'pip install "genctl[hf]"')


# ---------------------------------------------------------------- evaluate


def test_evaluate_records_a_run_of_its_own_with_the_protocol(cli, pipelines, workdir):
    real = _real_folder(workdir / "real")
    res = cli(
        "evaluate", "--pretrained", pipelines["ddpm"], "--real", real, "--metrics", "fid,kid",
        "--num-samples", 4, "--batch-size", 4, "--no-progress", STEPS,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "eval/fid" in res.output and "eval/kid_mean" in res.output
    run_id = res.output.split("logged to run ")[1].split()[0]
    run = get_run(run_id)
    assert run.status == "FINISHED" and run.plugin == "pretrained"
    assert run.tags["genctl.pretrained"] == pipelines["ddpm"]
    assert run.tags["genctl.pretrained_pipeline"] == "DDPMPipeline"
    assert {"eval/fid", "eval/kid_mean"} <= set(run.metrics)
    assert run.tags["eval.num_generated"] == "4" and run.tags["eval.num_real"] == "4"
    assert run.tags["eval.sampler"] == '{"steps": 3}'
    assert run.tags["eval.protocol"] in res.output
    assert run.params["sampler.steps"] == "3"
    artifacts = local_path(run.artifact_uri)
    assert list((artifacts / "evaluation").glob("step-00000000-evaluate-*.json"))
    assert [r.run_id for r in search_runs()] == [run_id]  # `genctl runs list` shows it
    listing = cli("runs", "list")
    assert run_id in listing.output and "pretrained" in listing.output


def test_evaluate_against_a_recipe_has_the_protocol_of_that_recipes_runs(
    cli, pipelines, workdir, monkeypatch
):
    """Its data, real subset, sample counts, seed and Inception weights: the numbers compare."""
    use_toy_plugin(monkeypatch)
    raw = {
        **TOY_RECIPE,
        "train": {**TOY_RECIPE["train"], "seed": 5},
        "evaluate": {"metrics": ["kid"], "num_samples": 4, "num_real": 5, "batch_size": 2},
    }
    recipe = write_recipe(workdir / "toy.yaml", raw)
    trained = cli("train", recipe, "train.steps=2", "--no-progress")
    assert trained.exit_code == 0, trained.output
    toy_run = trained.output.split("run ")[1].split()[0]
    assert cli("evaluate", "--run", toy_run, "--no-progress").exit_code == 0

    res = cli(
        "evaluate", "--pretrained", pipelines["ddpm"], "--real", recipe, "--no-progress", STEPS
    )
    assert res.exit_code == 0, res.output
    ours, theirs = get_run(res.output.split("logged to run ")[1].split()[0]), get_run(toy_run)
    assert ours.tags["eval.num_real"] == "5" and ours.tags["eval.num_generated"] == "4"
    for key in ev.PROTOCOL_KEYS:  # all but the sampler options, which differ
        assert ours.tags.get(key) == theirs.tags.get(key), key
    assert ours.tags["eval.real_set"] == theirs.tags["eval.real_set"]
    assert "eval/kid_mean" in ours.metrics
    assert ours.params["evaluate.seed"] == "5" and ours.tags["genctl.recipe"] == str(recipe)


def test_evaluate_pretrained_bad_input(cli, pipelines, workdir):
    ddpm = pipelines["ddpm"]
    _assert_bad_input(cli("evaluate", "--pretrained", ddpm), "--pretrained and --real go together")
    _assert_bad_input(
        cli("evaluate", "--pretrained", ddpm, "--real", "nowhere"), "neither a folder"
    )
    real = _real_folder(workdir / "real")
    _assert_bad_input(
        cli("evaluate", "--pretrained", ddpm, "--real", real, "--run", "x"), "drop --run"
    )
    _assert_bad_input(
        cli("evaluate", "--pretrained", ddpm, "--real", real, "--model", "models:/x@y"), "--model"
    )
    _assert_bad_input(
        cli("evaluate", "--pretrained", ddpm, "--real", real, "--metrics", "nll", STEPS),
        "nll: this model reports no likelihood",
    )
