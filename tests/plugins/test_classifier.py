"""The classifier family, and what refers to a classifier by RUN_ID or path: test accuracy in
training and evaluation, FID/KID in a domain classifier's features, diffusion guidance."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from genctl import checkpoint
from genctl.data.shapes import generate
from genctl.errors import BadInput
from genctl.recipe import load, recipes_dir, validate
from tests.helpers import TOY_RECIPE, use_toy_plugin

SIZE = 16
TINY = [
    f"data.image_size={SIZE}",
    "data.size=256",  # the shapes' test split is as large: accuracy over 256 images
    "model.width=8",
    "train.steps=120",
    "train.batch_size=32",
    "train.log_every=20",
    "train.sample_every=120",
    "train.checkpoint_every=120",
    "train.grid_size=3",
    "evaluate.every=120",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _empty_mlflow_db):
    """A classifier of 16 px shapes trained with `genctl train`'s trainer: its run, store, file."""
    from genctl.resolve import resolve_checkpoint
    from genctl.tracking import get_run
    from genctl.trainer import train

    root = tmp_path_factory.mktemp("classifier-run")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("GENCTL_CACHE", str(root / ".cache"))
        result = train(load(recipes_dir() / "classifier.yaml", TINY), progress=False)
        final = resolve_checkpoint(result.run_id, (checkpoint.FINAL,))
        run = get_run(result.run_id)
    path = root / "classifier.pt"
    shutil.copyfile(final, path)
    return SimpleNamespace(run_id=result.run_id, run=run, uri=uri, path=path)


def test_training_logs_the_test_accuracy_with_the_set_it_was_measured_on(trained):
    assert trained.run.metrics["eval/accuracy"] > 0.8  # three classes: chance is 1/3
    tags = trained.run.tags
    assert tags["eval.accuracy_split"] == "test"
    assert tags["eval.accuracy_num_images"] == "256"
    assert tags["eval.accuracy_set"].startswith("shapes test")


def test_logged_accuracy_is_the_share_of_test_images_whose_top_logit_is_their_label(trained):
    from genctl.classifiers import load_classifier

    clf = load_classifier(str(trained.path))
    images, labels = generate(256, SIZE, split="test")
    with torch.no_grad():
        predicted = clf.logits(images.float() / 127.5 - 1).argmax(1)
    assert trained.run.metrics["eval/accuracy"] == (predicted == labels).float().mean().item()


def test_a_classifier_loads_by_run_id_or_path_with_the_same_weights_hash(trained, monkeypatch):
    from genctl.classifiers import load_classifier

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    by_run, by_path = load_classifier(trained.run_id), load_classifier(str(trained.path))
    assert by_run.sha256 == by_path.sha256 and len(by_run.sha256) == 64
    assert by_run.describe() == f"classifier run {trained.run_id} ({by_run.sha256[:12]})"
    assert (by_run.num_classes, by_run.channels, by_run.image_size) == (3, 3, SIZE)
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    assert by_run.features(x).shape == (2, 8 * 4 * 16)  # 4 * width channels, pooled to 4 x 4
    assert torch.equal(by_run.logits(x), by_path.logits(x))


def test_the_classifier_draws_what_it_finds_typical_of_the_class_asked_for(trained):
    from genctl.classifiers import load_classifier
    from genctl.sampling import parse_options

    clf = load_classifier(str(trained.path))
    sampler, spec = clf.model.sampler, clf.model.spec
    images = sampler.sample(6, parse_options(spec, []), torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, SIZE, SIZE) and 0 <= images.min() and images.max() <= 1
    with torch.no_grad():
        predicted = clf.logits(images * 2 - 1).argmax(1)
    assert predicted.tolist() == [0, 1, 2, 0, 1, 2]  # balanced classes, each drawn as asked


# ---------------------------------------------------------------- domain FID / KID


def _source(images: torch.Tensor, real: torch.Tensor):
    from genctl.evaluation import ImageSource

    def batches(batch_size):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]

    return ImageSource(batches, len(images), real, "shapes test (128)")


def test_domain_fid_needs_no_inception_and_tells_real_images_from_noise(
    trained, workdir, monkeypatch
):
    from genctl.evaluation import evaluate, fidelity

    monkeypatch.setenv(fidelity.OFFLINE_ENV, "1")  # no Inception weights anywhere
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))
    real, _ = generate(128, SIZE, split="test")
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator())
    other, _ = generate(128, SIZE, split="train")
    metrics = ["fid_domain", "kid_domain"]

    same = evaluate(_source(real, real), metrics, feature_extractor=str(trained.path))
    fresh = evaluate(_source(other, real), metrics, feature_extractor=str(trained.path))
    bad = evaluate(_source(noise, real), metrics, feature_extractor=str(trained.path))
    assert same.metrics["fid_domain"] == pytest.approx(0, abs=1e-3)
    # 128 images in 512 features: FID's bias is large, KID's is none
    assert bad.metrics["fid_domain"] > 2 * fresh.metrics["fid_domain"] > 0
    assert bad.metrics["kid_domain_mean"] > 10 * abs(fresh.metrics["kid_domain_mean"])
    assert set(bad.logged()) == {"eval/fid_domain", "eval/kid_domain_mean", "eval/kid_domain_std"}

    p = bad.protocol
    from genctl.classifiers import load_classifier

    sha = load_classifier(str(trained.path)).sha256
    assert p["eval.domain_weights_sha256"] == sha
    assert p["eval.domain_extractor"].startswith("classifier run ")
    assert p["eval.domain_extractor"].endswith(f"({sha[:12]})")
    assert p["eval.domain_input"] == f"3x{SIZE}x{SIZE}" and p["eval.domain_features"] == "512"
    assert "eval.feature_extractor" not in p  # no Inception numbers were made
    assert p["eval.domain_protocol"] == fresh.protocol["eval.domain_protocol"]  # same real set
    assert any("domain features" in n and "from cache" in n for n in fresh.notes)
    with pytest.raises(BadInput, match="Inception"):
        evaluate(_source(real, real), ["fid"], feature_extractor=str(trained.path))


def test_domain_metrics_and_the_feature_extractor_must_come_together(trained, workdir, monkeypatch):
    from genctl.evaluation import check_ready

    use_toy_plugin(monkeypatch)
    base = {**TOY_RECIPE, "evaluate": {"every": 10, "num_samples": 16}}

    def ready(**evaluate):
        check_ready(validate({**base, "evaluate": {**base["evaluate"], **evaluate}}))

    with pytest.raises(BadInput, match="need evaluate.feature_extractor"):
        ready(metrics=["fid_domain"])
    with pytest.raises(BadInput, match="asks for no domain metric"):
        ready(metrics=["fid"], feature_extractor=str(trained.path))
    with pytest.raises(BadInput, match="does not classify"):
        ready(metrics=["accuracy"])
    with pytest.raises(BadInput, match="no run 'nosuchrun'"):
        ready(metrics=["fid_domain"], feature_extractor="nosuchrun")
    ready(metrics=["fid_domain", "kid_domain"], feature_extractor=str(trained.path))


def test_a_model_trained_with_a_domain_feature_extractor_logs_domain_fid_and_its_protocol(
    trained, workdir, monkeypatch
):
    from genctl.tracking import get_run
    from genctl.trainer import train

    use_toy_plugin(monkeypatch)
    raw = {
        **TOY_RECIPE,
        "evaluate": {
            "every": 20,
            "metrics": ["fid_domain", "kid_domain"],
            "num_samples": 16,
            "feature_extractor": str(trained.path),
        },
    }
    result = train(validate(raw), progress=False)
    run = get_run(result.run_id)
    assert run.metrics["eval/fid_domain"] > 0 and "eval/kid_domain_mean" in run.metrics
    assert run.tags["eval.domain_extractor"].startswith("classifier ")  # the toy is 8 px: resized
    assert run.tags["eval.domain_input"] == f"3x{SIZE}x{SIZE}"

    # genctl evaluate: --feature-extractor over the recipe's, the protocol printed and logged
    from typer.testing import CliRunner

    from genctl.cli import app

    args = ["evaluate", "--run", result.run_id, "--metrics", "fid_domain", "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--feature-extractor", str(trained.path)])
    assert res.exit_code == 0, res.output
    assert "eval/fid_domain" in res.output and "domain protocol " in res.output
    assert "features (512) of classifier run " in res.output
    logged = get_run(result.run_id)
    assert logged.tags["eval.domain_protocol"] in res.output
    # a model that is not a classifier cannot serve as one
    with pytest.raises(BadInput, match="not a classifier"):
        from genctl.classifiers import load_classifier

        load_classifier(result.run_id)


# ---------------------------------------------------------------- guidance


def test_diffusion_guidance_takes_a_classifier_run_and_raises_its_class_probability(
    trained, monkeypatch
):
    from genctl.classifiers import load_classifier
    from tests.plugins.test_ddpm import draw, make

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    clf = load_classifier(trained.run_id)
    _, _, sampler = make()  # an untrained 8 px RGB diffusion model: the classifier sees 16 px

    def log_prob(images: torch.Tensor, target: int) -> float:
        x = torch.nn.functional.interpolate(images * 2 - 1, size=SIZE, mode="bilinear")
        with torch.no_grad():
            return clf.logits(x).log_softmax(1)[:, target].mean().item()

    plain = draw(sampler, n=4, steps=10)
    for ref in (trained.run_id, str(trained.path)):
        guided = draw(
            sampler, n=4, steps=10, guide="classifier", classifier=ref, target_class=2,
            guide_scale=20.0,
        )  # fmt: skip
        assert log_prob(guided, 2) > log_prob(plain, 2) + 0.1
    with pytest.raises(BadInput, match="out of range"):
        draw(sampler, steps=2, guide="classifier", classifier=trained.run_id, target_class=3)


@pytest.mark.parametrize(
    ("metric", "values", "best_step"),
    [("accuracy", [0.5, 0.9, 0.7], 2), ("fid_domain", [30.0, 10.0, 20.0], 2)],
)
def test_the_best_checkpoint_is_the_highest_accuracy_and_the_lowest_domain_fid(
    metric, values, best_step
):
    from genctl.trainer import _keep_best

    recipe = SimpleNamespace(evaluate=SimpleNamespace(best=metric))
    saved, best = [], None
    for step, value in enumerate(values, start=1):
        best = _keep_best(recipe, {metric: value}, best, step, saved.append)
    assert best["step"] == best_step and len(saved) == 2  # the first value, then the better one
