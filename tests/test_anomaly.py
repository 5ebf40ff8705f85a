"""Anomaly detection in the core: AUROC and average precision against hand-computed cases, the
scoring of images through a sampler's anomaly_scores(), and data.exclude_classes."""

from __future__ import annotations

import pytest
import torch

from genctl.data import DataConfig, load_dataset
from genctl.errors import BadInput
from genctl.evaluation.anomaly import auroc, average_precision, score_images


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def y(*xs):
    return torch.tensor(xs, dtype=torch.bool)


# ---------------------------------------------------------------- AUROC and AUPRC


def test_auroc_and_ap_of_a_small_case_computed_by_hand():
    # pairs (anomaly, normal): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, *) right: 3 of 4.
    # AP: thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1) -> 1/2 + 1/2 * 2/3
    scores, labels = t(0.1, 0.4, 0.35, 0.8), y(0, 0, 1, 1)
    assert auroc(scores, labels) == pytest.approx(0.75)
    assert average_precision(scores, labels) == pytest.approx(0.5 + 1 / 3)


def test_a_tie_between_an_anomaly_and_a_normal_image_counts_half():
    # pairs: (1 vs 1) tie -> 1/2, (2 vs 1) right -> (1/2 + 1) / 2. AP: 2 (P 1, R 1/2), then the
    # tied 1s together (P 2/3, R 1): the tie is one threshold, not an order
    scores, labels = t(1, 1, 2), y(0, 1, 1)
    assert auroc(scores, labels) == pytest.approx(0.75)
    assert average_precision(scores, labels) == pytest.approx(0.5 + 1 / 3)
    assert auroc(t(3, 3, 3, 3), y(0, 1, 0, 1)) == pytest.approx(0.5)


def test_perfect_reversed_and_order_free():
    scores, labels = t(0.1, 0.2, 0.7, 0.9), y(0, 0, 1, 1)
    assert auroc(scores, labels) == 1.0 and average_precision(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    # reversed: the anomalies come last: P 1/3 at R 1/2, P 2/4 at R 1
    assert average_precision(-scores, labels) == pytest.approx(0.5 / 3 + 0.5 / 2)
    perm = torch.tensor([2, 0, 3, 1])
    assert auroc(scores[perm], labels[perm]) == 1.0


def test_auroc_is_the_probability_an_anomaly_outranks_a_normal_image():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (300,), generator=g).double()  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    a, n = scores[labels], scores[~labels]
    pairs = (a[:, None] > n[None, :]).double() + 0.5 * (a[:, None] == n[None, :]).double()
    assert auroc(scores, labels) == pytest.approx(float(pairs.mean()))


def test_auprc_of_random_scores_is_near_the_fraction_of_anomalies():
    g = torch.Generator().manual_seed(1)
    labels = torch.rand(20000, generator=g) < 0.1
    scores = torch.rand(20000, generator=g)
    assert average_precision(scores, labels) == pytest.approx(
        float(labels.double().mean()), abs=0.01
    )
    assert auroc(scores, labels) == pytest.approx(0.5, abs=0.02)


def test_one_class_only_or_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="both"):
        auroc(t(1, 2), y(1, 1))
    with pytest.raises(ValueError, match="both"):
        average_precision(t(1, 2), y(0, 0))
    with pytest.raises(ValueError, match="finite"):
        auroc(t(1, float("nan")), y(0, 1))


# ---------------------------------------------------------------- scoring through a sampler


class Brightness:
    """A stand-in family: the mean pixel value, and a score that draws noise from the generator."""

    def anomaly_scores(self, images, generator):
        mean = images.float().flatten(1).mean(1)
        return {"bright": mean, "noisy": mean + torch.rand(len(images), generator=generator)}


def test_scores_are_the_same_for_a_seed_and_in_image_order():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    a = score_images(Brightness(), images, device="cpu", batch_size=4, seed=3, progress=False)
    b = score_images(Brightness(), images, device="cpu", batch_size=4, seed=3, progress=False)
    assert list(a) == ["bright", "noisy"]
    assert torch.equal(a["bright"], torch.arange(6).double())
    assert torch.equal(a["noisy"], b["noisy"])


@pytest.mark.parametrize(
    "bad,match",
    [
        ({}, "non-empty"),
        ({"Mse": torch.zeros(2)}, "lower-case"),
        ({"mse": torch.zeros(3)}, "one value per image"),
        ({"mse": torch.tensor([0.0, float("inf")])}, "not finite"),
    ],
)
def test_a_sampler_breaking_the_contract_is_told_how(bad, match):
    class Bad:
        def anomaly_scores(self, images, generator):
            return bad

    with pytest.raises(RuntimeError, match=match):
        score_images(
            Bad(), torch.zeros(2, 1, 2, 2, dtype=torch.uint8), device="cpu", batch_size=8, seed=0
        )


# ---------------------------------------------------------------- data.exclude_classes


def shapes(**kw) -> DataConfig:
    return DataConfig(kind="shapes", image_size=8, size=60, cache=False, **kw)


def test_excluding_a_class_drops_its_images_and_changes_the_fingerprint():
    full = load_dataset(shapes())
    less = load_dataset(shapes(exclude_classes=[1]))
    assert int((full.labels == 1).sum()) > 0
    assert 1 not in less.labels.tolist()
    assert len(less) == len(less.tensors["image"]) == int((full.labels != 1).sum())
    assert torch.equal(less.tensors["image"], full.tensors["image"][full.labels != 1])
    assert less.info.num_classes == full.info.num_classes  # the classes keep their indices
    assert less.fingerprint != full.fingerprint
    unlabelled = load_dataset(shapes(exclude_classes=[1], labels=False))
    assert unlabelled.labels is None and len(unlabelled) == len(less)


@pytest.mark.parametrize(
    "cfg,match",
    [
        (dict(kind="shapes", exclude_classes=[5]), "not among the class indices 0..2"),
        (dict(kind="shapes", exclude_classes=[0, 1, 2]), "every class"),
        (dict(kind="paired", root=".", exclude_classes=[0]), "no classes to exclude"),
    ],
)
def test_excluding_classes_the_data_does_not_have_is_bad_input(cfg, match):
    with pytest.raises(BadInput, match=match):
        load_dataset(DataConfig(image_size=8, size=30, cache=False, **cfg))
