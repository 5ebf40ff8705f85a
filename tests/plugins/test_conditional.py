"""Class-conditional built-in families draw the labels genctl gives them.

Evaluation, `genctl sample` and training grids give a conditional sampler its labels (class
``i % num_classes`` for image ``i`` of the whole draw), so no family cycles classes itself. Each
family that takes labels runs the contract kit's ``labels`` check at a tiny size, and the
classifier-free-guided DDPM is evaluated on its conditional branch, with the recipe's options.
"""

from __future__ import annotations

import pytest
import torch

from genctl import testing
from genctl.evaluation.sources import source_for
from genctl.recipe import recipes_dir
from genctl.spec import sampler_classes
from tests.plugins.test_contract import TINY

# family -> what makes its tiny model class-conditional on the kit's shapes (3 classes)
CONDITIONAL = {
    "dcgan": ["model.conditional=true", "data.labels=true"],
    "vanilla_gan": ["model.conditional=true"],
    "pixelcnn": ["model.conditional=true"],
    "ddpm": ["model.conditional=true", "model.timesteps=10"],  # 10 DDIM steps
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _contract(name: str, recipe: str | None = None, extra: tuple[str, ...] = ()):
    path = recipes_dir() / f"{recipe or name}.yaml"
    return testing.make_contract(
        name, path if path.is_file() else None, [*TINY[name], *CONDITIONAL[name], *extra]
    )


@pytest.mark.parametrize("name", sorted(CONDITIONAL))
def test_conditional_family_draws_exactly_the_labels_it_is_given(name):
    c = _contract(name)
    assert sampler_classes(c.sampler(c.build())) == 3  # it says it takes labels
    testing.check_labels(c)


def test_cfg_ddpm_is_evaluated_on_its_conditional_branch_with_the_recipes_guidance(tmp_path):
    c = _contract("ddpm", "ddpm-mnist-cfg", ("evaluate.sampler={guidance: 3.0, steps: 4}",))
    sampler = c.sampler(c.build())
    calls = []
    sample = sampler.sample

    def spy(n, options, generator, inputs=None, labels=None):
        calls.append((labels.tolist(), options.guidance, options.steps))
        return sample(n, options, generator, inputs, labels)

    sampler.sample = spy
    source = source_for(c.recipe, sampler, device="cpu", num_samples=5, seed=0)
    evaluated = torch.cat(list(source.generate(3)))
    assert calls == [([0, 1, 2], 3.0, 4), ([0, 1], 3.0, 4)]
    assert (source.protocol["eval.labels"], source.protocol["eval.sampler"]) == (
        "balanced",
        '{"guidance": 3.0, "steps": 4}',
    )
    # the unconditional branch (no labels, guidance 1) draws other images from the same noise
    plain = sample(3, c.spec.sampler_options(steps=4), torch.Generator().manual_seed(0))
    assert not torch.allclose(evaluated[:3], plain, atol=1e-4)


def test_training_grid_of_a_conditional_model_draws_the_classes_in_turn():
    from genctl.trainer import _log_grid

    c = _contract("dcgan", extra=("train.grid_size=7",))
    nets = c.build()
    sampler = c.sampler(nets)
    drawn, logged = [], []
    sample = sampler.sample

    def spy(n, options, generator, inputs=None, labels=None):
        drawn.append(labels.tolist())
        return sample(n, options, generator, inputs, labels)

    class Tracker:
        def log_image(self, image, key, step):
            logged.append((image.shape, key, step))

    sampler.sample = spy
    _log_grid(Tracker(), sampler, c.spec, None, c.recipe.train, 3, nets)
    assert drawn == [[0, 1, 2, 0, 1, 2, 0]]
    assert logged and logged[0][1:] == ("samples", 3)
