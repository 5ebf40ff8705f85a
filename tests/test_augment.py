"""DiffAugment (genctl.augment) and its switch on the GAN families (model.diffaugment)."""

from __future__ import annotations

import pytest
import torch

from genctl import augment, testing
from genctl.augment import diff_augment, parse_policy
from genctl.errors import BadInput
from genctl.recipe import apply_overrides, recipes_dir, validate

POLICY = "color,translation,cutout"
# the GAN families with the switch, and overrides that make them tiny for the contract kit
FAMILIES = {
    "vanilla_gan": ["model.latent_dim=8", "model.g_hidden=[16]", "model.d_hidden=[16]"],
    "dcgan": ["model.latent_dim=8", "model.g_width=8", "model.d_width=8"],
    "progan": [
        "data.image_size=8",
        "model.latent_dim=8",
        "model.channel_base=64",
        "model.max_channels=8",
        "model.start_resolution=4",
        "model.stable_steps=2",
        "model.fade_steps=2",
    ],
    "stylegan": [
        "data.image_size=8",
        "model.z_dim=8",
        "model.w_dim=8",
        "model.mapping_layers=2",
        "model.channel_base=64",
        "model.max_channels=8",
        "model.r1_every=2",  # lazy R1: its own update, through the augmentation
    ],
}
STEP = {"progan": 3}  # fading 8x8 in: every layer in use


def _images(seed=0, n=4, c=3, side=16):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- the transformations


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    x = _images()
    a = diff_augment(x, POLICY, torch.Generator().manual_seed(3))
    b = diff_augment(x, POLICY, torch.Generator().manual_seed(3))
    c = diff_augment(x, POLICY, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", POLICY])
def test_each_transformation_is_differentiable(policy):
    """For a fixed draw the result is a (piecewise) linear function of the images: autograd's
    gradient is the numerical one, so the generator gets a true gradient through it."""
    x = _images(side=8, n=2).double().requires_grad_(True)

    def fn(images):
        return diff_augment(images, policy, torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    fn(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_shifts_whole_pixels_and_fills_with_zeros():
    x = torch.arange(64.0).reshape(1, 1, 8, 8) + 1  # no zero inside
    for seed in range(20):
        y = augment.translation(x, torch.Generator().manual_seed(seed))
        kept = y[y != 0]
        # every non-zero pixel is an input pixel, and the kept block is contiguous
        assert set(kept.tolist()) <= set(x.flatten().tolist())
        rows = (y[0, 0] != 0).any(dim=1).sum().item()
        cols = (y[0, 0] != 0).any(dim=0).sum().item()
        assert rows >= 7 and cols >= 7  # at most 1/8 of 8 px shifted out
        assert kept.numel() == rows * cols


def test_cutout_zeroes_a_square_of_half_the_side_at_most():
    x = torch.ones(64, 1, 16, 16)
    y = augment.cutout(x, torch.Generator().manual_seed(0))
    zeroed = (y == 0).flatten(1).sum(dim=1)
    assert zeroed.max() == 64 and zeroed.min() > 0  # 8x8, less where it sticks out


def test_color_draws_per_image():
    x = _images(n=8)
    y = augment.color(x, torch.Generator().manual_seed(0))
    shift = (y - x).mean(dim=(1, 2, 3))
    assert shift.unique().numel() == 8  # each image its own brightness/contrast


def test_the_policy_is_validated_and_normalised():
    assert parse_policy(" Color, cutout ") == ("color", "cutout") and parse_policy("") == ()
    with pytest.raises(ValueError, match="color, translation, cutout"):
        parse_policy("color,flip")
    raw = {"name": "x", "plugin": "dcgan", "data": {"kind": "shapes"}}
    recipe = validate(apply_overrides(raw, ["model.diffaugment=Color, translation"]))
    assert recipe.model.diffaugment == "color,translation"
    with pytest.raises(BadInput, match=r"model\.diffaugment"):
        validate(apply_overrides(raw, ["model.diffaugment=colour"]))
    with pytest.raises(BadInput, match="diffaugment"):  # a family without the switch refuses it
        validate(apply_overrides({**raw, "plugin": "ddpm"}, ["model.diffaugment=color"]))


# ---------------------------------------------------------------- the families


def _contract(name):
    recipe = recipes_dir() / f"{name}.yaml"
    overrides = [*FAMILIES[name], f"model.diffaugment={POLICY}"]
    return testing.make_contract(name, recipe, overrides, step=STEP.get(name, 0))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_families_keep_the_contract_with_diffaugment_on(name):
    c = _contract(name)
    testing.check_training_step(c)
    testing.check_checkpoint(c)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_real_and_fake_go_through_the_same_policy_in_both_updates(name, monkeypatch):
    """Every image the discriminator sees went through the whole policy: in its update the real
    batch and the fakes, in the generator's update the fakes, with the generator's gradient
    flowing back through the transformations."""
    torch.set_num_threads(1)
    c = _contract(name)
    nets = c.build()
    objective = c.objective(nets)
    loader = c.loader(objective)
    applied: list[tuple[tuple[str, ...], torch.Tensor]] = []
    real = augment.diff_augment

    def recording(images, policy, generator=None):
        names = parse_policy(policy) if isinstance(policy, str) else policy
        applied.append((tuple(names), images))
        return real(images, policy, generator)

    module = type(objective).__module__
    monkeypatch.setattr(f"{module}.diff_augment", recording)
    step = STEP.get(name, 0)
    groups = list(objective.schedule(step))
    for group in dict.fromkeys(groups):  # "d", then "g"
        applied.clear()
        for g, names in objective.groups.items():
            for n in names:
                nets[n].requires_grad_(g == group)
        batch = loader.next()
        loss, _ = objective.loss(group, batch, step)
        policies = {p for p, _ in applied}
        assert policies == {parse_policy(POLICY)}, policies
        if group == "d":
            seen_real = real_input = batch["image"]
            if hasattr(objective, "real_at_stage"):
                real_input = objective.real_at_stage(seen_real)
            inputs = [x.detach() for _, x in applied]
            assert any(x.shape == real_input.shape and torch.equal(x, real_input) for x in inputs)
            assert len(applied) >= 2  # the fakes too
        else:
            assert len(applied) == 1  # the fakes, through G
            loss.backward()
            generator = next(nets[n] for n in objective.groups["g"])
            assert any(
                p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters()
            )


def test_a_resumed_run_with_diffaugment_is_exactly_the_uninterrupted_one(workdir):
    """The augmentation draws from the training's random stream, which a checkpoint keeps: a
    run stopped at step 3 and resumed gives the weights of the run that never stopped."""
    from genctl import checkpoint
    from genctl.tracking import get_run, local_path
    from genctl.trainer import train

    def recipe(steps, policy=POLICY):
        raw = {
            "name": "da",
            "plugin": "dcgan",
            "model": {"latent_dim": 8, "g_width": 4, "d_width": 4, "diffaugment": policy},
            "data": {"kind": "shapes", "image_size": 8, "size": 64},
            "train": {
                "steps": steps,
                "batch_size": 4,
                "log_every": 3,
                "sample_every": 100,
                "checkpoint_every": 3,
                "threads": 1,
            },
        }
        return validate(raw)

    def weights(run_id):
        ck = checkpoint.load(local_path(get_run(run_id).artifact_uri) / checkpoint.FINAL)
        return {
            f"{n}.{k}": v for n, sd in {**ck["nets"], **ck["ema"]}.items() for k, v in sd.items()
        }

    full = weights(train(recipe(6), progress=False).run_id)
    first = train(recipe(3), progress=False)
    resumed = train(recipe(6), resume=first.run_id, progress=False)
    assert resumed.step == 6
    again = weights(resumed.run_id)
    off = weights(train(recipe(6, policy=""), progress=False).run_id)
    assert any(not torch.equal(full[k], off[k]) for k in full)  # the switch changes training
    for k in full:
        assert torch.equal(full[k], again[k]), k
