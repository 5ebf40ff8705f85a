"""Evaluation against a streamed dataset (``data.stream: true``): the real images are read from
the files a batch at a time, never all decoded at once, and give the same real set, the same
cached statistics and the same numbers and protocol as the in-memory path."""

from __future__ import annotations

import pytest
import torch

import genctl.data
import genctl.data.dataset
import genctl.evaluation as ev
from genctl.data import StreamDataset
from genctl.evaluation import evaluate
from genctl.evaluation.sources import StreamedImages, source_for
from genctl.recipe import validate
from genctl.spec import DataInfo
from tests import toy
from tests.data.files import noise_image, write_image
from tests.helpers import TOY_RECIPE

NUM_IMAGES = 12  # in the folder
NUM_SAMPLES = 5  # generated, and real: a fixed subset of 5 of the 12


@pytest.fixture
def folder(tmp_path):
    for i in range(NUM_IMAGES):
        write_image(tmp_path / "images" / f"{i:03d}.png", noise_image(i))
    return tmp_path / "images"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path / "cache"))
    ev._REAL_MEMO.clear()  # as in a fresh process
    return tmp_path / "cache"


def _model(folder, stream: bool):
    data = {"kind": "images", "root": str(folder), "image_size": 8, "stream": stream}
    data["workers"] = 0  # decoded in this process: no worker start-up in a test
    recipe = validate({**TOY_RECIPE, "data": data}, spec=toy.SPEC)
    info = DataInfo("unconditional", recipe.data.channels, 8)
    torch.manual_seed(0)
    return recipe, toy.ToySampler(recipe.model, toy.build(recipe.model, info), info)


def _source(folder, stream: bool):
    recipe, sampler = _model(folder, stream)
    return source_for(recipe, sampler, device="cpu", num_samples=NUM_SAMPLES, seed=0)


def _no_decoding_into_memory(monkeypatch):
    def refuse(cfg):
        raise AssertionError("the streamed evaluation decoded the whole set into memory")

    monkeypatch.setattr(genctl.data.dataset, "load_dataset", refuse)
    monkeypatch.setattr(genctl.data, "load_dataset", refuse)


def test_streamed_real_set_is_the_in_memory_subset_in_the_same_order(folder, cache):
    memory = _source(folder, stream=False)
    streamed = _source(folder, stream=True)
    assert isinstance(streamed.real, StreamedImages)
    assert isinstance(streamed.datasets[0][1], StreamDataset)
    assert streamed.real.shape == memory.real.shape and len(streamed.real) == NUM_SAMPLES
    assert torch.equal(torch.cat([streamed.real[i : i + 2] for i in range(0, 5, 2)]), memory.real)
    assert streamed.real_name == memory.real_name
    assert "5 of 12, fixed subset" in streamed.real_name
    # the cache key of the real statistics hashes the real images: the same for both paths
    assert ev.content_fingerprint(streamed.real, 2) == ev.content_fingerprint(memory.real)


def test_streamed_evaluation_reads_real_images_a_batch_at_a_time(
    folder, cache, inception_weights, monkeypatch
):
    _no_decoding_into_memory(monkeypatch)
    read = []
    take = StreamDataset.take

    def counting(self, indices):
        read.append(sum(len(i) for i in indices))
        return take(self, indices)

    monkeypatch.setattr(StreamDataset, "take", counting)
    source = _source(folder, stream=True)
    result = evaluate(source, ["kid"], weights=str(inception_weights), batch_size=2, progress=False)
    assert result.protocol["eval.num_real"] == str(NUM_SAMPLES)
    assert read and max(read) <= 2  # never more than a batch of real images decoded at once
    assert sum(read) == 2 * NUM_SAMPLES  # one pass to fingerprint them, one for the features


def test_streamed_evaluation_gives_the_in_memory_numbers_and_shares_its_cache(
    folder, cache, inception_weights, tmp_path, monkeypatch
):
    weights = str(inception_weights)
    streamed = evaluate(
        _source(folder, stream=True), ["kid"], weights=weights, batch_size=2, progress=False
    )
    assert any("computed" in n for n in streamed.notes)
    ev._REAL_MEMO.clear()
    memory = evaluate(
        _source(folder, stream=False), ["kid"], weights=weights, batch_size=3, progress=False
    )
    assert any("from cache" in n for n in memory.notes)  # the same key: the streamed features
    assert memory.protocol == streamed.protocol
    assert ev.protocol_id(memory.protocol) == ev.protocol_id(streamed.protocol)
    # computed afresh in memory, without the streamed cache: the same numbers
    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path / "other-cache"))
    ev._REAL_MEMO.clear()
    fresh = evaluate(
        _source(folder, stream=False), ["kid"], weights=weights, batch_size=3, progress=False
    )
    assert any("computed" in n for n in fresh.notes)
    for key, value in fresh.metrics.items():
        assert streamed.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
