"""Gradient accumulation: train.accumulate K with batch_size B makes the updates of batch K x B."""

from __future__ import annotations

import torch

from genctl import checkpoint
from genctl.recipe import apply_overrides, validate
from genctl.tracking import get_run, local_path
from genctl.trainer import train
from tests import toy
from tests.helpers import TOY_RECIPE

# plain SGD: its update is proportional to the gradient (Adam's barely sees a gradient's scale)
SGD = ["train.optimizer.name=sgd", "train.optimizer.lr=0.5"]


def _final_weights(*overrides: str) -> dict[str, dict[str, torch.Tensor]]:
    recipe = validate(
        apply_overrides(TOY_RECIPE, ["train.steps=4", *SGD, "train.ema.networks=[]", *overrides]),
        spec=toy.SPEC,
    )
    result = train(recipe, progress=False)
    final = local_path(get_run(result.run_id).artifact_uri) / checkpoint.FINAL
    return checkpoint.load(final)["nets"]


def _assert_same(a, b) -> None:
    for net in a:
        for name in a[net]:
            torch.testing.assert_close(a[net][name], b[net][name], rtol=1e-5, atol=1e-6)


def test_accumulating_two_batches_of_8_gives_the_weights_of_batches_of_16(workdir):
    large = _final_weights("train.batch_size=16")
    accumulated = _final_weights("train.batch_size=8", "train.accumulate=2")
    _assert_same(large, accumulated)
    small = _final_weights("train.batch_size=8")  # the control: half the batch differs
    assert any(
        not torch.allclose(large[net][name], small[net][name], atol=1e-4)
        for net in large
        for name in large[net]
    )
