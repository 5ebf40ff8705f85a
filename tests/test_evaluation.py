"""Evaluation: torch-fidelity's metrics on generated images, the real-statistics cache, the
protocol record, offline weights, image sources per task, and PSNR/SSIM.

Inception runs for real on a stand-in weights file (``inception_weights``): every image costs a
299 x 299 forward pass on the CPU, so the sets here are a dozen images.
"""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field

import genctl.evaluation as ev
from genctl.errors import BadInput
from genctl.evaluation import ImageSource, evaluate, evaluate_in_training, fidelity
from genctl.evaluation.quality import luma, paired_scores, psnr, ssim
from genctl.evaluation.sources import real_subset, sampled, source_for
from genctl.recipe import validate
from genctl.spec import DataInfo, ModelSpec
from tests import toy
from tests.helpers import TOY_RECIPE


def _images(n: int, seed: int, channels: int = 1, side: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)


class FixedSampler:
    """Hands out given uint8 images in order, as floats in [0, 1] (like a sampler)."""

    def __init__(self, images: torch.Tensor):
        self.images, self.pos = images, 0

    def sample(self, n, options, generator, inputs=None):
        out = self.images[self.pos : self.pos + n].float() / 255
        self.pos += n
        return out


def _source(generated: torch.Tensor, real: torch.Tensor | None) -> ImageSource:
    return ImageSource(
        sampled(FixedSampler(generated), None, len(generated), 0), len(generated), real, "test set"
    )


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path / "cache"))
    ev._REAL_MEMO.clear()  # as in a fresh process
    return tmp_path / "cache"


@pytest.fixture
def no_download(tmp_path, monkeypatch):
    """No weights anywhere and every download fails, as on a machine without internet."""
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(fidelity.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(url, dst):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(fidelity, "_download", fail)


GENERATED = _images(8, seed=1)  # grayscale: repeated to three channels for Inception
REAL = _images(10, seed=2)


@pytest.fixture(scope="module")
def small_eval(inception_weights, tmp_path_factory) -> ev.Evaluation:
    """All four Inception metrics on 8 generated against 10 real grayscale images.

    The only FIDs of this file are here and in the torch-fidelity comparison: the FID math
    (eigenvalues of a 2048 x 2048 product) costs seconds however few the images.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("GENCTL_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        return evaluate(
            _source(GENERATED, REAL),
            ["fid", "kid", "isc", "prc"],
            weights=str(inception_weights),
            batch_size=8,
        )
    finally:
        mp.undo()


# ---------------------------------------------------------------- torch-fidelity's numbers


def test_metrics_equal_torch_fidelity_called_directly_on_the_same_images(
    small_eval, inception_weights
):
    import torch_fidelity

    class Uint8Set(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x.expand(-1, 3, -1, -1)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    ref = torch_fidelity.calculate_metrics(
        input1=Uint8Set(GENERATED),
        input2=Uint8Set(REAL),
        fid=True,
        kid=True,
        kid_subset_size=8,
        cuda=False,
        batch_size=8,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
        feature_extractor_weights_path=str(inception_weights),
    )
    assert small_eval.metrics["fid"] == pytest.approx(
        ref["frechet_inception_distance"], rel=1e-6, abs=1e-6
    )
    assert small_eval.metrics["kid_mean"] == pytest.approx(
        ref["kernel_inception_distance_mean"], rel=1e-6, abs=1e-9
    )


def test_all_requested_metrics_are_reported_under_their_logged_names(small_eval):
    assert set(small_eval.logged()) == {
        "eval/fid",
        "eval/kid_mean",
        "eval/kid_std",
        "eval/isc_mean",
        "eval/isc_std",
        "eval/precision",
        "eval/recall",
    }
    assert all(math.isfinite(v) for v in small_eval.metrics.values())
    assert (
        0.0 <= small_eval.metrics["precision"] <= 1.0 and 0.0 <= small_eval.metrics["recall"] <= 1.0
    )


def test_kid_subset_size_adapts_to_a_small_set_and_says_so(small_eval):
    assert small_eval.protocol["eval.kid_subset_size"] == "8"
    assert any("KID subset size 8 instead of 1000" in n for n in small_eval.notes)


def test_kid_with_800_images_uses_800_image_subsets_instead_of_failing():
    # torch-fidelity's default subset of 1000 refuses sets this small; the math is the same for
    # any feature width, so narrow features keep this fast.
    g = torch.Generator().manual_seed(0)
    generated = {"count": 800, "2048": torch.randn(800, 16, generator=g)}
    real = {"features": torch.randn(809, 16, generator=g)}
    protocol, notes = {}, []
    values = ev._inception_metrics(["kid"], generated, real, protocol, notes)
    assert math.isfinite(values["kid_mean"]) and protocol["eval.kid_subset_size"] == "800"
    assert notes == ["KID subset size 800 instead of 1000: only 800 generated and 809 real images"]


def test_protocol_records_extractor_weights_hash_counts_size_and_version(
    small_eval, inception_weights
):
    p = small_eval.protocol
    assert p["eval.feature_extractor"] == "inception-v3-compat"
    assert p["eval.weights_sha256"] == fidelity.file_sha256(Path(inception_weights))
    assert (p["eval.num_generated"], p["eval.num_real"]) == ("8", "10")
    assert p["eval.input_size"] == "299"
    assert p["eval.torch_fidelity"] == __import__("torch_fidelity").__version__
    assert len(p["eval.protocol"]) == 12


def test_protocol_id_ignores_which_metrics_were_asked_but_not_the_counts(small_eval):
    p = dict(small_eval.protocol)
    fewer = {k: v for k, v in p.items() if not k.startswith(("eval.isc", "eval.prc", "eval.kid"))}
    assert ev.protocol_id(fewer) == ev.protocol_id(p)
    assert ev.protocol_id({**p, "eval.num_generated": "9"}) != ev.protocol_id(p)


def test_repeated_evaluation_loads_real_statistics_from_the_cache(inception_weights, cache):
    gen, real = _images(4, seed=3), _images(4, seed=4)
    first = evaluate(_source(gen, real), ["kid"], weights=str(inception_weights), batch_size=4)
    ev._REAL_MEMO.clear()  # a new process: only the file on disk remains
    second = evaluate(_source(gen, real), ["kid"], weights=str(inception_weights), batch_size=4)
    assert any("computed, cached at" in n for n in first.notes)
    assert any("from cache" in n and str(cache) in n for n in second.notes)
    assert list(cache.glob("eval-real-*.pt"))
    assert second.metrics["kid_mean"] == first.metrics["kid_mean"]


def test_different_weights_do_not_share_cached_statistics(inception_weights, cache, tmp_path):
    other = fidelity.write_standin_weights(tmp_path / "other.pth", seed=1)
    gen = real = _images(2, seed=5)
    evaluate(_source(gen, real), ["kid"], weights=str(inception_weights), batch_size=2)
    second = evaluate(_source(gen, real), ["kid"], weights=str(other), batch_size=2)
    assert any("computed" in n for n in second.notes)
    assert len(list(cache.glob("eval-real-*.pt"))) == 2


def test_inception_score_splits_adapt_to_few_images(inception_weights, cache):
    res = evaluate(
        _source(_images(4, seed=6), None), ["isc"], weights=str(inception_weights), batch_size=4
    )
    assert res.protocol["eval.isc_splits"] == "4"
    assert "eval.num_real" not in res.protocol  # IS needs no real images
    assert res.metrics["isc_mean"] >= 1.0


# ---------------------------------------------------------------- weights, offline


def test_standin_weights_load_into_torch_fidelity_inception(inception_weights):
    w = fidelity.resolve_weights(str(inception_weights))
    extractor = fidelity.feature_extractor(w, ["2048"], "cpu")
    feats = fidelity.extract(extractor, _images(2, seed=7, channels=3))
    assert feats["2048"].shape == (2, 2048) and feats["2048"].std() > 0


def test_offline_without_weights_is_bad_input_saying_what_to_set(no_download):
    with pytest.raises(BadInput) as err:
        fidelity.resolve_weights(None)
    text = str(err.value)
    assert err.value.exit_code == 2
    assert "evaluate.feature_extractor_weights" in text and "GENCTL_INCEPTION_WEIGHTS" in text
    assert "download failed" in text


def test_weights_come_from_the_environment_when_the_recipe_names_none(
    no_download, inception_weights, monkeypatch
):
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(inception_weights))
    w = fidelity.resolve_weights(None)
    assert (w.path, w.source) == (Path(inception_weights).resolve(), "environment")


def test_recipe_weights_win_over_the_environment(
    no_download, inception_weights, monkeypatch, tmp_path
):
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(tmp_path / "elsewhere.pth"))
    assert fidelity.resolve_weights(str(inception_weights)).source == "recipe"


def test_weights_torch_hub_already_downloaded_are_used_offline(no_download, inception_weights):
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fidelity.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(Path(inception_weights).read_bytes())
    assert fidelity.resolve_weights(None).source == "torch hub cache"


def test_a_missing_weights_file_is_bad_input_naming_the_key(tmp_path):
    with pytest.raises(BadInput, match="evaluate.feature_extractor_weights.*not found"):
        fidelity.resolve_weights(str(tmp_path / "nope.pth"))


def test_a_file_that_is_not_weights_is_bad_input(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="cannot be read as a PyTorch weights file"):
        fidelity.feature_extractor(fidelity.resolve_weights(str(bad)), ["2048"], "cpu")


def test_weights_of_another_network_are_bad_input(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(BadInput, match="does not hold Inception-v3 weights"):
        fidelity.feature_extractor(fidelity.resolve_weights(str(wrong)), ["2048"], "cpu")


# ---------------------------------------------------------------- bad requests


def test_unknown_metric_is_bad_input():
    with pytest.raises(BadInput, match="unknown metric 'fdi'"):
        ev.parse_metrics(["fid", "fdi"])


def test_psnr_on_an_unpaired_source_is_bad_input():
    with pytest.raises(BadInput, match="PSNR and SSIM compare each output with its own target"):
        evaluate(_source(GENERATED, REAL), ["psnr"])


# ---------------------------------------------------------------- PSNR and SSIM


def test_psnr_of_identical_images_is_infinite():
    x = torch.rand(2, 3, 8, 8)
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_of_a_constant_offset_follows_the_definition():
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 0.9
    # MSE = 0.1^2, so PSNR = 10 log10(1 / 0.01) = 20 dB exactly
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0] * 3, abs=1e-9)


def test_psnr_of_plus_minus_noise_of_known_amplitude():
    x = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    sign = (
        torch.arange(64, dtype=torch.float64).view(1, 1, 8, 8) % 2
    ) * 2 - 1  # +1, -1, ...: MSE = d^2
    d = 0.05
    assert psnr(x + d * sign, x).item() == pytest.approx(-20 * math.log10(d), abs=1e-9)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 16, 16)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_of_flat_images_is_the_luminance_term():
    a, b = 0.5, 0.25
    c1 = (0.01 * 1.0) ** 2
    # no variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1), the contrast/structure term is 1
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)


def test_ssim_falls_as_noise_grows():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g)
    noise = torch.randn(1, 3, 16, 16, generator=g)
    values = [ssim((x + s * noise).clamp(0, 1), x).item() for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2]


def test_ssim_works_on_images_smaller_than_its_window():
    x = torch.rand(1, 1, 6, 6)
    assert ssim(x, x).item() == pytest.approx(1.0)
    assert ssim(x, 1 - x).item() < 0.5


# ---------------------------------------------------------------- sources per task


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


class Upscaler:
    """A 'super-resolution model' that is bicubic upscaling itself."""

    def __init__(self, config, nets, info):
        self.scale = info.scale

    def sample(self, n, options, generator, inputs=None):
        return (
            F.interpolate(inputs, scale_factor=self.scale, mode="bicubic", align_corners=False)
            .add(1)
            .div(2)
        )


class Identity:
    """A 'translation model' that returns its input."""

    def __init__(self, config, nets, info):
        pass

    def sample(self, n, options, generator, inputs=None):
        return inputs.add(1).div(2)


def _spec(task: str, sampler) -> ModelSpec:
    return ModelSpec(
        name="t",
        task=task,
        config=toy.ToyConfig,
        build=toy.build,
        objective=toy.ToyObjective,
        sampler=sampler,
        takes_input=True,
    )


def _recipe(spec: ModelSpec, data: dict):
    return validate({"name": "t", "plugin": "t", "data": data}, spec=spec)


def test_super_resolution_reports_psnr_ssim_beside_the_bicubic_baseline(tmp_path, cache):
    rng = np.random.default_rng(0)
    for i in range(5):
        _write_png(
            tmp_path / "hr" / "test" / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        )
    _write_png(tmp_path / "hr" / "train" / "0.png", np.zeros((16, 16, 3), np.uint8))
    spec = _spec("super_resolution", Upscaler)
    recipe = _recipe(
        spec,
        {"kind": "super_resolution", "root": str(tmp_path / "hr"), "image_size": 16, "scale": 4},
    )
    info = DataInfo("super_resolution", 3, 16, scale=4)
    source = source_for(recipe, Upscaler(None, None, info), device="cpu", num_samples=100, seed=0)
    res = evaluate(source, ["psnr", "ssim"], batch_size=2)
    assert source.count == 5  # the test split, not the train split
    assert res.metrics["psnr"] == pytest.approx(
        res.metrics["psnr_bicubic"]
    )  # the model *is* bicubic
    assert res.metrics["ssim"] == pytest.approx(res.metrics["ssim_bicubic"])
    assert 0 < res.metrics["psnr"] < 100


def test_paired_translation_compares_each_output_with_its_own_target(tmp_path, cache):
    rng = np.random.default_rng(1)
    for i in range(4):  # side-by-side AB images whose two halves are equal
        half = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        _write_png(tmp_path / "facades" / "test" / f"{i}.png", np.concatenate([half, half], axis=1))
    spec = _spec("paired", Identity)
    recipe = _recipe(spec, {"kind": "paired", "root": str(tmp_path / "facades"), "image_size": 8})
    source = source_for(recipe, Identity(None, None, None), device="cpu", num_samples=10, seed=0)
    res = evaluate(source, ["psnr", "ssim"], batch_size=3)
    assert source.paired and source.count == 4
    assert math.isinf(res.metrics["psnr"]) and res.metrics["ssim"] == pytest.approx(1.0)


def test_the_test_split_a_translation_is_judged_on_is_named_as_its_evaluation_data(tmp_path, cache):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write_png(
            tmp_path / "facades" / "test" / f"{i}.png", rng.integers(0, 256, (8, 16, 3), "u1")
        )
    spec = _spec("paired", Identity)
    recipe = _recipe(spec, {"kind": "paired", "root": str(tmp_path / "facades"), "image_size": 8})
    source = source_for(recipe, Identity(None, None, None), device="cpu", num_samples=10, seed=0)
    ((config, data),) = source.datasets  # what `genctl evaluate` records as the run's input
    assert config.split == "test" and config.root == recipe.data.root
    assert len(data.tensors["target"]) == 3 and data.fingerprint


def test_unpaired_translation_is_judged_against_the_target_domain_test_set(tmp_path, cache):
    rng = np.random.default_rng(2)
    for split, n in (("testA", 3), ("testB", 5), ("trainA", 1), ("trainB", 1)):
        for i in range(n):
            _write_png(
                tmp_path / "h2z" / split / f"{i}.png",
                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            )
    spec = _spec("unpaired", Identity)
    recipe = _recipe(spec, {"kind": "unpaired", "root": str(tmp_path / "h2z"), "image_size": 8})
    source = source_for(recipe, Identity(None, None, None), device="cpu", num_samples=10, seed=0)
    expected_b = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(tmp_path / "h2z" / "testB" / f"{i}.png"))).permute(
                2, 0, 1
            )
            for i in range(5)
        ]
    )
    assert (source.count, source.paired) == (3, False)
    assert torch.equal(source.real, expected_b)


def test_real_subset_is_the_same_fixed_subset_every_time():
    images = _images(50, seed=8)
    a, name = real_subset(images, 10)
    b, _ = real_subset(images, 10)
    assert torch.equal(a, b) and len(a) == 10 and "10 of 50" in name


class RecordingTracker:
    """Records what would go to MLflow (the Tracker interface evaluation uses)."""

    def __init__(self, folder: Path):
        self.dir, self.tags, self.metrics, self.artifacts = folder, {}, [], {}

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_metrics(self, metrics, step):
        self.metrics.append((step, metrics))

    def write_artifact(self, path, write):
        target = Path(self.dir) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)
        self.artifacts[path] = json.loads(target.read_text())


def test_evaluation_during_training_returns_metrics_and_records_the_protocol(
    inception_weights, cache, tmp_path
):
    raw = {
        **TOY_RECIPE,
        "evaluate": {
            "every": 5,
            "metrics": ["kid"],
            "num_samples": 4,
            "batch_size": 4,
            "feature_extractor_weights": str(inception_weights),
        },
    }
    raw["data"] = {**raw["data"], "size": 4}
    recipe = validate(raw, spec=toy.SPEC)
    info = DataInfo("unconditional", 3, 8, size=4)
    nets = toy.build(recipe.model, info)
    tracker = RecordingTracker(tmp_path)
    scores = evaluate_in_training(
        recipe, toy.SPEC, nets, toy.ToySampler(recipe.model, nets, info), 5, "cpu", tracker
    )
    assert set(scores) == {"kid_mean", "kid_std"}
    assert tracker.tags["eval.num_generated"] == "4" and "eval.weights_sha256" in tracker.tags
    assert tracker.artifacts["evaluation/step-00000005.json"]["metrics"] == {
        f"eval/{k}": v for k, v in scores.items()
    }


# ---------------------------------------------------------------- super-resolution: Y channel, crop


def test_y_channel_of_white_and_black_is_bt601_235_and_16():
    rgb = torch.stack([torch.ones(3, 2, 2), torch.zeros(3, 2, 2)])
    y = luma(rgb)
    assert y.shape == (2, 1, 2, 2)
    assert torch.allclose(y[0] * 255, torch.full((1, 2, 2), 235.0, dtype=torch.float64))
    assert torch.allclose(y[1] * 255, torch.full((1, 2, 2), 16.0, dtype=torch.float64))


def test_y_channel_psnr_ssim_with_border_crop_equal_a_hand_computation():
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 12, 12))
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    y[:, :, :2, :] = 1 - x[:, :, :2, :]  # a wrecked border, which the crop removes

    def by_hand(a):  # BT.601 luma of [0, 1] RGB, cropped 2 px, back on the [0, 1] scale
        a = a[:, :, 2:-2, 2:-2]
        return (16 + 65.481 * a[:, 0] + 128.553 * a[:, 1] + 24.966 * a[:, 2]) / 255

    mse_y = ((by_hand(x) - by_hand(y)) ** 2).reshape(2, -1).mean(1)
    mse_rgb = ((x - y)[:, :, 2:-2, 2:-2] ** 2).reshape(2, -1).mean(1)
    scores = paired_scores(torch.from_numpy(x), torch.from_numpy(y), y_channel=True, border=2)
    assert scores["psnr"].numpy() == pytest.approx(10 * np.log10(1 / mse_y), abs=1e-9)
    assert scores["psnr_rgb"].numpy() == pytest.approx(10 * np.log10(1 / mse_rgb), abs=1e-9)
    xy, yy = (torch.from_numpy(by_hand(a))[:, None] for a in (x, y))
    assert torch.allclose(scores["ssim"], ssim(xy, yy))
    xc, yc = (torch.from_numpy(a[:, :, 2:-2, 2:-2]) for a in (x, y))
    assert torch.allclose(scores["ssim_rgb"], ssim(xc, yc))


def test_a_grey_image_is_its_own_y_channel():
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 1, 10, 10, generator=g), torch.rand(2, 1, 10, 10, generator=g)
    scores = paired_scores(x, y, y_channel=True, border=1)
    assert set(scores) == {"psnr", "ssim"}  # no RGB to report beside
    assert torch.allclose(scores["psnr"], psnr(x[..., 1:-1, 1:-1], y[..., 1:-1, 1:-1]))


def test_a_border_crop_that_leaves_nothing_is_an_error_saying_so():
    with pytest.raises(ValueError, match="leaves nothing"):
        paired_scores(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), y_channel=True, border=4)


def test_super_resolution_psnr_is_of_the_y_channel_inside_a_scale_px_border(tmp_path, cache):
    rng = np.random.default_rng(5)
    for i in range(3):
        _write_png(
            tmp_path / "hr" / "test" / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        )
    spec = _spec("super_resolution", Upscaler)
    recipe = _recipe(
        spec,
        {"kind": "super_resolution", "root": str(tmp_path / "hr"), "image_size": 16, "scale": 2},
    )
    info = DataInfo("super_resolution", 3, 16, scale=2)
    source = source_for(recipe, Upscaler(None, None, info), device="cpu", num_samples=10, seed=0)
    res = evaluate(source, ["psnr"], batch_size=2)
    # by hand: the model's 8-bit outputs against the HR images, Y of BT.601, 2 px cropped
    out = torch.cat(list(source.generate(10))).clamp(0, 1).mul(255).round().double().numpy()
    hr = source.real.double().numpy()
    w = np.array([65.481, 128.553, 24.966]).reshape(1, 3, 1, 1)

    def y_of(a):
        return (16 + (a / 255 * w).sum(1))[:, 2:-2, 2:-2] / 255

    mse = ((y_of(out) - y_of(hr)) ** 2).reshape(3, -1).mean(1)
    assert res.metrics["psnr"] == pytest.approx(float(np.mean(10 * np.log10(1 / mse))), abs=1e-6)
    mse_rgb = (((out - hr) / 255)[:, :, 2:-2, 2:-2] ** 2).reshape(3, -1).mean(1)
    assert res.metrics["psnr_rgb"] == pytest.approx(
        float(np.mean(10 * np.log10(1 / mse_rgb))), abs=1e-6
    )
    assert {"ssim", "ssim_rgb", "psnr_bicubic", "psnr_rgb_bicubic"} <= set(res.metrics)
    paired = res.protocol["eval.paired_metrics"]
    assert "Y channel (ITU-R BT.601" in paired and "2 px cropped from each border" in paired


def test_paired_translation_keeps_rgb_psnr_without_crop_and_its_protocol_text(tmp_path, cache):
    rng = np.random.default_rng(6)
    for i in range(2):
        ab = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
        _write_png(tmp_path / "facades" / "test" / f"{i}.png", ab)
    spec = _spec("paired", Identity)
    recipe = _recipe(spec, {"kind": "paired", "root": str(tmp_path / "facades"), "image_size": 8})
    source = source_for(recipe, Identity(None, None, None), device="cpu", num_samples=10, seed=0)
    res = evaluate(source, ["psnr"], batch_size=2)
    assert set(res.metrics) == {"psnr", "ssim"}
    assert res.protocol["eval.paired_metrics"] == (
        "PSNR and SSIM (Gaussian 11x11, sigma 1.5) on 8-bit RGB, no crop"
    )  # the text earlier protocol ids were made with


# ---------------------------------------------------------------- likelihood (nll, bpd)


class UniformModel(toy.ToySampler):
    """A 'likelihood model' giving every 8-bit image the same probability, 256^-D: 8 bits/dim."""

    def __init__(self, config, nets, info):
        super().__init__(config, nets, info)
        self.seen: list[torch.Tensor] = []

    def sample(self, n, options, generator, inputs=None):
        raise AssertionError("a likelihood needs no generated images")

    def nll(self, images, labels, generator):
        self.seen.append(images)
        return torch.full((len(images),), images[0].numel() * math.log(256), dtype=torch.float64)

    def nll_protocol(self):
        return {"estimator": "exact", "data": "the 8-bit values", "dequantization": "none"}


class PixelSumModel(UniformModel):
    """-log p(x) = the sum of the image's 8-bit values / 255: depends on which images it sees."""

    def nll(self, images, labels, generator):
        self.seen.append(images)
        return images.double().flatten(1).sum(1) / 255


LIKELIHOOD_SPEC = ModelSpec(
    name="toy",
    task="unconditional",
    config=toy.ToyConfig,
    build=toy.build,
    objective=toy.ToyObjective,
    sampler=UniformModel,
)


def _likelihood_source(model_cls, nll_images=16):
    raw = {**TOY_RECIPE, "data": {**TOY_RECIPE["data"], "size": 40}}
    recipe = validate(raw, spec=LIKELIHOOD_SPEC)
    info = DataInfo("unconditional", 3, 8, size=40)
    nets = toy.build(recipe.model, info)
    model = model_cls(recipe.model, nets, info)
    source = source_for(recipe, model, device="cpu", num_samples=4, seed=3, nll_images=nll_images)
    return recipe, model, source


def test_nll_of_a_uniform_8bit_model_is_8_bits_per_dimension_and_generates_nothing(cache):
    _, model, source = _likelihood_source(UniformModel)
    res = evaluate(source, ["nll"], batch_size=5, progress=False)
    assert res.metrics["nll"] == pytest.approx(3 * 8 * 8 * math.log(256), rel=1e-12)
    assert res.metrics["bpd"] == pytest.approx(8.0, rel=1e-12)
    assert sum(len(x) for x in model.seen) == 16 and all(x.dtype == torch.uint8 for x in model.seen)
    p = res.protocol
    assert p["eval.nll_split"] == "test" and p["eval.nll_num_images"] == "16"
    assert p["eval.nll_dims"] == "3x8x8" and p["eval.nll_estimator"] == "exact"
    assert "eval.num_generated" not in p and "eval.protocol" not in p  # nothing was generated
    assert p["eval.nll_protocol"] == ev.likelihood.nll_protocol_id(p)


def test_nll_is_the_mean_over_a_fixed_subset_of_the_test_split(cache):
    recipe, model, source = _likelihood_source(PixelSumModel, nll_images=16)
    res = evaluate(source, ["nll"], batch_size=7, progress=False)
    from genctl.data import load_dataset

    test = load_dataset(recipe.data.model_copy(update={"split": "test"})).tensors["image"]
    train = load_dataset(recipe.data).tensors["image"]
    subset = test[ev.likelihood.subset_index(len(test), 16)]
    assert torch.equal(torch.cat(model.seen), subset)
    assert res.metrics["nll"] == pytest.approx(float(subset.double().sum() / 255 / 16))
    assert res.metrics["nll"] != pytest.approx(float(train[:16].double().sum() / 255 / 16))
    again = evaluate(_likelihood_source(PixelSumModel)[2], ["nll"], progress=False)
    assert again.protocol["eval.nll_protocol"] == res.protocol["eval.nll_protocol"]


def test_nll_scores_the_whole_test_split_unless_told_how_many(cache):
    _, model, source = _likelihood_source(UniformModel, nll_images=None)
    res = evaluate(source, ["nll"], batch_size=16, progress=False)
    assert sum(len(x) for x in model.seen) == 40  # data.size test shapes, not num_samples (4)
    assert res.protocol["eval.nll_num_images"] == "40"
    assert res.protocol["eval.nll_set"] == "shapes test (40)"


def test_nll_beside_fid_metrics_keeps_the_sample_protocol_id(inception_weights, cache):
    _, _, source = _likelihood_source(PixelSumModel, nll_images=4)
    images = _images(4, seed=9, channels=3, side=8)
    source.generate = sampled(FixedSampler(images), None, 4, 0)
    with_nll = evaluate(source, ["isc", "nll"], weights=str(inception_weights), progress=False)
    source.generate = sampled(FixedSampler(images), None, 4, 0)
    without = evaluate(source, ["isc"], weights=str(inception_weights), progress=False)
    assert {"isc_mean", "nll", "bpd"} <= set(with_nll.metrics)
    assert with_nll.protocol["eval.protocol"] == without.protocol["eval.protocol"]


def test_nll_of_a_model_without_a_likelihood_is_bad_input(cache):
    _, _, source = _likelihood_source(toy.ToySampler)
    assert source.likelihood is None
    with pytest.raises(BadInput, match="reports no likelihood"):
        evaluate(source, ["nll"])


def test_asking_nll_of_a_family_without_one_fails_before_training():
    raw = {**TOY_RECIPE, "evaluate": {"every": 5, "metrics": ["nll"]}}
    with pytest.raises(BadInput, match="toy reports none"):
        ev.check_ready(validate(raw, spec=toy.SPEC))
    ev.check_ready(validate(raw, spec=LIKELIHOOD_SPEC))  # one that has it passes
    best = {**raw, "evaluate": {**raw["evaluate"], "best": "bpd"}}
    ev.check_ready(validate(best, spec=LIKELIHOOD_SPEC))


def test_a_family_protocol_key_that_clashes_with_genctl_s_is_refused(cache):
    class Clash(UniformModel):
        def nll_protocol(self):
            return {"split": "mine"}

    _, _, source = _likelihood_source(Clash)
    with pytest.raises(RuntimeError, match="key 'split'"):
        evaluate(source, ["nll"], progress=False)


def test_nll_during_training_is_returned_and_recorded(cache, tmp_path):
    raw = {**TOY_RECIPE, "evaluate": {"every": 5, "metrics": ["nll"], "nll_images": 8}}
    recipe = validate(raw, spec=LIKELIHOOD_SPEC)
    info = DataInfo("unconditional", 3, 8, size=64)
    nets = toy.build(recipe.model, info)
    tracker = RecordingTracker(tmp_path)
    scores = evaluate_in_training(
        recipe, LIKELIHOOD_SPEC, nets, UniformModel(recipe.model, nets, info), 5, "cpu", tracker
    )
    assert scores == {"nll": pytest.approx(192 * math.log(256)), "bpd": pytest.approx(8.0)}
    assert tracker.tags["eval.nll_num_images"] == "8"
    assert tracker.artifacts["evaluation/step-00000005.json"]["protocol"]["eval.nll_data"] == (
        "the 8-bit values"
    )


# ---------------------------------------------------------------- conditional models: labels and options


class LabelRecorder(toy.ToySampler):
    """A class-conditional toy sampler that records the labels evaluation gives it."""

    def __init__(self, config, nets, info):
        super().__init__(config, nets, info)
        self.num_classes, self.drawn = info.num_classes, []

    def sample(self, n, options, generator, inputs=None, labels=None):
        self.drawn.append(labels)
        return super().sample(n, options, generator)


class LabelledOptions(toy.ToyOptions):
    model_config = toy.ToyOptions.model_config | {"populate_by_name": True}

    class_: int | None = Field(None, alias="class", ge=0)


LABELLED = ModelSpec(
    name="ltoy",
    task="conditional",
    config=toy.ToyConfig,
    build=toy.build,
    objective=toy.ToyObjective,
    sampler=LabelRecorder,
    sampler_options=LabelledOptions,
)


def _labelled(evaluate: dict | None = None):
    """A class-conditional toy on the shapes' 3 classes, and its recording sampler."""
    raw = {**TOY_RECIPE, "plugin": "ltoy", "evaluate": evaluate or {}}
    recipe = validate(raw, spec=LABELLED)
    info = DataInfo("conditional", 3, 8, num_classes=3)
    return recipe, LabelRecorder(recipe.model, toy.build(recipe.model, info), info)


def test_evaluation_in_batches_draws_every_class_equally(cache):
    recipe, sampler = _labelled()
    source = source_for(recipe, sampler, device="cpu", num_samples=15, seed=0)
    batches = list(source.generate(4))  # 4 + 4 + 4 + 3: batches must not restart the classes
    drawn = torch.cat(sampler.drawn)
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    assert drawn.tolist() == [i % 3 for i in range(15)]
    assert torch.bincount(drawn).tolist() == [5, 5, 5]
    assert source.protocol["eval.labels"] == "balanced"


def test_evaluation_class_option_draws_that_class_only(cache):
    recipe, sampler = _labelled({"sampler": {"class": 2}})
    source = source_for(recipe, sampler, device="cpu", num_samples=5, seed=0)
    list(source.generate(2))
    assert torch.cat(sampler.drawn).tolist() == [2] * 5
    assert source.protocol["eval.labels"] == "class 2"


def test_evaluate_sampler_options_of_the_recipe_are_drawn_with_and_recorded(cache):
    recipe, sampler = _labelled({"sampler": {"scale": 0.0}})  # zero noise: one image, repeated
    source = source_for(recipe, sampler, device="cpu", num_samples=4, seed=0)
    images = torch.cat(list(source.generate(4)))
    assert torch.equal(images[0], images[3])  # the same class (0), the same (no) noise
    assert json.loads(source.protocol["eval.sampler"]) == {"scale": 0.0}


def test_sampler_options_and_labels_change_the_protocol_id_defaults_do_not():
    base = {"eval.num_generated": "10", "eval.num_real": "10"}
    plain = ev.protocol_id(base)
    assert ev.protocol_id({**base, "eval.sampler": "{}", "eval.labels": "none"}) == plain
    ids = {
        plain,
        ev.protocol_id({**base, "eval.sampler": '{"guidance": 3.0}', "eval.labels": "none"}),
        ev.protocol_id({**base, "eval.sampler": "{}", "eval.labels": "balanced"}),
        ev.protocol_id({**base, "eval.sampler": "{}", "eval.labels": "class 2"}),
    }
    assert len(ids) == 4


def test_unknown_evaluate_sampler_option_is_bad_input_naming_the_key_and_the_options():
    with pytest.raises(BadInput) as err:
        _labelled({"sampler": {"scael": 2.0}})
    assert "unknown option 'evaluate.sampler.scael'" in err.value.message
    assert "scale, class" in err.value.hint


def test_invalid_evaluate_sampler_value_is_bad_input_naming_the_key():
    with pytest.raises(BadInput, match=r"evaluate\.sampler\.class: -1 is invalid"):
        _labelled({"sampler": {"class": -1}})


def test_options_that_make_a_figure_cannot_be_evaluated(cache):
    recipe, sampler = _labelled()
    sampler.nrow = lambda options: 5  # a sampler mode that draws a grid of its own
    with pytest.raises(BadInput, match="make a figure"):
        source_for(recipe, sampler, device="cpu", num_samples=4, seed=0)


def test_evaluation_during_training_of_a_conditional_model_records_balanced_labels(
    inception_weights, cache, tmp_path
):
    recipe, sampler = _labelled(
        {
            "metrics": ["kid"],
            "num_samples": 6,
            "batch_size": 4,
            "sampler": {"scale": 0.5},
            "feature_extractor_weights": str(inception_weights),
        }
    )
    tracker = RecordingTracker(tmp_path)
    evaluate_in_training(recipe, LABELLED, {}, sampler, 5, "cpu", tracker)
    assert torch.cat(sampler.drawn).tolist() == [0, 1, 2, 0, 1, 2]
    assert tracker.tags["eval.labels"] == "balanced"
    assert tracker.tags["eval.sampler"] == '{"scale": 0.5}'
    assert (
        tracker.artifacts["evaluation/step-00000005.json"]["protocol"]["eval.labels"] == "balanced"
    )
