"""The contract test kit: a plugin that keeps the contract passes, each way of breaking it fails.

Every broken plugin here is the toy family (tests/toy.py) with one part swapped for a faulty one,
and each test expects the kit to name that fault.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from pydantic import BaseModel, Field
from torch import nn

from genctl import testing
from genctl.data import DataConfig, Loader, load_dataset
from genctl.spec import BATCH_KEYS, Schema, labels_to_draw
from genctl.testing import ContractError
from tests import toy


def contract(spec=toy.SPEC, recipe=None, overrides=()) -> testing.Contract:
    return testing.make_contract("toy", recipe, overrides, plugin=spec)


def fails(check: str, spec, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        testing.CHECKS[check](contract(spec))


# ---------------------------------------------------------------- a plugin that keeps the contract


def test_toy_plugin_passes_every_check():
    c = testing.check_plugin("toy", plugin=toy)
    assert c.spec.name == "toy"


def test_kit_shrinks_the_recipe_then_applies_the_plugins_overrides():
    recipe = {
        "name": "big",
        "plugin": "toy",
        "model": {"latent": 64},
        "data": {"kind": "images", "root": "/nowhere", "image_size": 256, "channels": 1},
        "train": {"batch_size": 128},
    }
    c = contract(recipe=recipe, overrides=["model.latent=3", "data.image_size=8"])
    assert (c.config.latent, c.recipe.train.batch_size) == (3, 4)
    assert (c.info.image_size, c.info.channels) == (8, 1)  # the recipe's channels are kept
    assert c.recipe.data.kind == "shapes"  # synthetic: /nowhere is never read


def test_recipe_for_another_plugin_is_refused():
    with pytest.raises(ContractError, match="recipe is for plugin 'dcgan'"):
        contract(recipe={"name": "x", "plugin": "dcgan", "data": {"kind": "shapes"}})


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(ContractError, match=r"no plugin registers a model called 'nope'.*toy"):
        testing.make_contract("nope", plugin=toy)


@pytest.mark.parametrize("task", ["paired", "unpaired", "super_resolution"])
def test_synthetic_data_has_the_tasks_layout(tmp_path, task):
    section = testing.synthetic_data_section(task, {"image_size": 8, "channels": 3}, tmp_path)
    dataset = load_dataset(DataConfig.model_validate(section))
    batch = Loader(dataset, 2, seed=0, device="cpu").next()
    assert dataset.info.task == task
    assert sorted(batch) == sorted(BATCH_KEYS[task])
    assert all(x.min() >= -1 and x.max() <= 1 for x in batch.values())


# ---------------------------------------------------------------- schemas


class LaxOptions(BaseModel):  # plain pydantic ignores unknown keys
    scale: float = 1.0


class RequiredOption(Schema):
    scale: float


def test_options_schema_that_ignores_unknown_keys_fails():
    fails("schemas", replace(toy.SPEC, sampler_options=LaxOptions), "accept unknown keys")


def test_sampler_option_without_default_fails():
    fails("schemas", replace(toy.SPEC, sampler_options=RequiredOption), "needs a default")


def test_model_config_that_ignores_unknown_keys_fails():
    class LaxConfig(BaseModel):
        latent: int = 8
        d_steps: int = 1

    fails("schemas", replace(toy.SPEC, config=LaxConfig), "model config accepts unknown keys")


# ---------------------------------------------------------------- training step


class WithSpare(nn.Module):
    """A network with a layer its forward never uses."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.spare = net, nn.Linear(2, 2)

    def forward(self, x):
        return self.net(x)


def build_with_spare(config, info):
    nets = toy.build(config, info)
    nets["discriminator"] = WithSpare(nets["discriminator"])
    return nets


def test_parameter_without_gradient_is_named():
    spec = replace(toy.SPEC, build=build_with_spare)
    fails("training_step", spec, r"no gradient to 2 .*discriminator\.spare\.weight")


class NaNObjective(toy.ToyObjective):
    def loss(self, group, batch, step):
        loss, logs = super().loss(group, batch, step)
        return loss * float("nan"), logs


def test_non_finite_loss_fails():
    fails("training_step", replace(toy.SPEC, objective=NaNObjective), "loss of group 'd' is nan")


class ItemObjective(toy.ToyObjective):
    def loss(self, group, batch, step):
        loss, logs = super().loss(group, batch, step)
        return loss, {k: v.item() for k, v in logs.items()}


def test_logged_python_float_fails():
    spec = replace(toy.SPEC, objective=ItemObjective)
    fails("training_step", spec, "'d_real' .* must be a detached scalar tensor")


class UnknownNetObjective(toy.ToyObjective):
    groups = {"d": ["critic"], "g": ["generator"]}


def test_group_naming_a_network_that_is_not_built_fails():
    spec = replace(toy.SPEC, objective=UnknownNetObjective)
    fails("training_step", spec, r"group 'd' names \['critic'\]")


# ---------------------------------------------------------------- checkpoint


class Counter:
    def __init__(self) -> None:
        self.n = 0


class PickledStateObjective(toy.ToyObjective):
    def state_dict(self):
        return {"counter": Counter()}


def test_objective_state_that_needs_pickle_fails():
    spec = replace(toy.SPEC, objective=PickledStateObjective)
    fails("checkpoint", spec, r"weights_only=True")


class ForgetfulObjective(toy.ToyObjective):
    def load_state_dict(self, state):
        pass


def test_objective_state_not_restored_fails():
    spec = replace(toy.SPEC, objective=ForgetfulObjective)
    fails("checkpoint", spec, r"objective state\['updates'\] differs")


class UnregisteredShift(nn.Module):
    """Forgot ``register_buffer``: the shift is not in the state_dict, so it is not saved."""

    def __init__(self, net: nn.Module, numel: int):
        super().__init__()
        self.net, self.shift = net, torch.randn(numel) * 0.1

    def forward(self, z):
        return (self.net(z) + self.shift).clamp(-1, 1)


def build_unregistered(config, info):
    nets = toy.build(config, info)
    nets["generator"] = UnregisteredShift(nets["generator"], info.channels * info.image_size**2)
    return nets


def test_state_outside_the_state_dict_fails():
    spec = replace(toy.SPEC, build=build_unregistered)
    fails("checkpoint", spec, "rebuilt from their saved weights sample other images")


# ---------------------------------------------------------------- sampler


class GlobalRNGSampler(toy.ToySampler):
    @torch.no_grad()
    def sample(self, n, options, generator, inputs=None):
        return super().sample(n, options, torch.Generator().manual_seed(torch.seed()))


def test_sampler_using_the_global_random_state_fails():
    fails("sampler", replace(toy.SPEC, sampler=GlobalRNGSampler), "same seed gave other images")


class ConstantSampler(toy.ToySampler):
    @torch.no_grad()
    def sample(self, n, options, generator, inputs=None):
        return super().sample(n, options, torch.Generator().manual_seed(0))


def test_sampler_ignoring_the_seed_fails():
    fails("sampler", replace(toy.SPEC, sampler=ConstantSampler), "same images for seeds 0 and 1")


class SignedSampler(toy.ToySampler):
    def sample(self, n, options, generator, inputs=None):
        return super().sample(n, options, generator) * 2 - 1  # forgot to map [-1, 1] to [0, 1]


def test_sampler_outside_zero_one_fails():
    fails("sampler", replace(toy.SPEC, sampler=SignedSampler), r"must be in \[0, 1\]")


class CroppedSampler(toy.ToySampler):
    def sample(self, n, options, generator, inputs=None):
        return super().sample(n, options, generator)[..., :8, :8]


def test_sampler_of_the_wrong_size_fails():
    fails("sampler", replace(toy.SPEC, sampler=CroppedSampler), r"shape \(3, 3, 8, 8\)")


# ---------------------------------------------------------------- labels of class-conditional samplers


class ClassOptions(Schema):
    model_config = Schema.model_config | {"populate_by_name": True}

    scale: float = 1.0
    class_: int | None = Field(None, alias="class", ge=0)


class LabelledSampler(toy.ToySampler):
    """Keeps the contract: draws the labels given, else the class option's (or balanced ones)."""

    def __init__(self, config, nets, info):
        super().__init__(config, nets, info)
        self.num_classes = info.num_classes

    def classes(self, n, options, labels):
        return labels if labels is not None else labels_to_draw(self, n, options)

    @torch.no_grad()
    def sample(self, n, options, generator, inputs=None, labels=None):
        z = torch.randn(n, self.config.latent, generator=generator) * options.scale
        z[:, 0] += 3.0 * self.classes(n, options, labels).float()  # the class moves the latent
        s = self.info.image_size
        return self.g(z).view(n, self.info.channels, s, s).add(1).div(2)


def labelled(sampler) -> testing.Contract:
    return contract(replace(toy.SPEC, sampler=sampler, sampler_options=ClassOptions))


def test_conditional_sampler_that_draws_its_labels_passes():
    c = labelled(LabelledSampler)
    assert c.info.num_classes == 3  # the kit's shapes have labels
    testing.check_labels(c)


class CyclingSampler(LabelledSampler):  # the old way: classes 0, 1, 2, 0, ... in every call
    def classes(self, n, options, labels):
        return torch.arange(n) % self.num_classes


def test_sampler_that_cycles_classes_itself_fails():
    with pytest.raises(ContractError, match="same images for labels of all 0 and of all 1"):
        testing.check_labels(labelled(CyclingSampler))


class ReversedSampler(LabelledSampler):
    def classes(self, n, options, labels):
        return super().classes(n, options, labels).flip(0)


def test_sampler_that_gives_an_image_another_images_label_fails():
    with pytest.raises(ContractError, match="image 1 keeps class 1 but changes"):
        testing.check_labels(labelled(ReversedSampler))


class NoLabelsSampler(toy.ToySampler):
    num_classes = 3

    def sample(self, n, options, generator, inputs=None):
        return super().sample(n, options, generator)


def test_sampler_with_classes_that_takes_no_labels_fails():
    with pytest.raises(ContractError, match="num_classes=3 but sample\\(\\) takes no labels="):
        testing.check_labels(labelled(NoLabelsSampler))


class IgnoresClassOption(LabelledSampler):
    def classes(self, n, options, labels):
        return labels if labels is not None else torch.arange(n) % self.num_classes


def test_sampler_whose_class_option_draws_other_classes_fails():
    with pytest.raises(ContractError, match="class=1 draws other images than labels of all 1"):
        testing.check_labels(labelled(IgnoresClassOption))


def test_unconditional_samplers_pass_the_labels_check_as_they_are():
    testing.check_labels(contract())


# ---------------------------------------------------------------- likelihood models


class Likelihood(toy.ToySampler):
    """The toy sampler with a likelihood: each pixel uniform over its 256 values, plus noise."""

    def nll(self, images, labels, generator):
        noise = torch.rand(len(images), generator=generator)  # from the generator: reproducible
        return torch.full((len(images),), images[0].numel() * 5.545) + noise

    def nll_protocol(self):
        return {"estimator": "exact", "data": "the 8-bit values", "dequantization": "none"}


def test_a_likelihood_model_that_keeps_the_contract_passes():
    testing.CHECKS["likelihood"](contract(replace(toy.SPEC, sampler=Likelihood)))


def test_nll_without_nll_protocol_fails():
    class NoProtocol(toy.ToySampler):
        nll = Likelihood.nll

    fails("likelihood", replace(toy.SPEC, sampler=NoProtocol), "not the other of nll")


def test_nll_of_one_mean_value_for_the_batch_fails():
    class Mean(Likelihood):
        def nll(self, images, labels, generator):
            return super().nll(images, labels, generator).mean()

    fails("likelihood", replace(toy.SPEC, sampler=Mean), r"one value per image \(4\), got \(\)")


def test_nll_drawing_noise_from_the_global_random_state_fails():
    class Global(Likelihood):
        def nll(self, images, labels, generator):
            return torch.full((len(images),), 100.0) + torch.rand(len(images))

    fails("likelihood", replace(toy.SPEC, sampler=Global), "same seed gave another value")


def test_a_protocol_key_genctl_records_itself_fails():
    class Clash(Likelihood):
        def nll_protocol(self):
            return {"split": "test"}

    fails("likelihood", replace(toy.SPEC, sampler=Clash), "key 'split'")
