"""The diffusion family: schedule, UNet, objective, samplers, guidance, img2img, options."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from genctl_ddpm.classifier import Classifier, load_classifier, save_classifier, train_classifier
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.guidance import guidance_registry
from genctl_ddpm.loss import DiffusionObjective
from genctl_ddpm.model import build_networks
from genctl_ddpm.sampler import DDPMSampleOptions, DiffusionSampler
from genctl_ddpm.scheduler import DDIMScheduler, DDPMScheduler, NoiseSchedule
from pydantic import ValidationError

import genctl
import genctl.plugins
from genctl.errors import BadInput
from genctl.spec import DataInfo

TINY = dict(
    base_channels=8,
    channel_mults=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[4],
    norm_groups=4,
    dropout=0.0,
    timesteps=100,
)
RGB = DataInfo("unconditional", channels=3, image_size=8)
DIGITS = DataInfo("conditional", channels=1, image_size=8, num_classes=10)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny convolutions run many times faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(info: DataInfo = RGB, **overrides):
    torch.manual_seed(0)
    config = DDPMConfig(**{**TINY, **overrides})
    nets = build_networks(config, info)
    return config, nets, DiffusionSampler(config, nets, info)


def draw(
    sampler: DiffusionSampler, n: int = 2, seed: int = 0, inputs=None, **options
) -> torch.Tensor:
    opts = DDPMSampleOptions.model_validate(options)
    return sampler.sample(n, opts, torch.Generator().manual_seed(seed), inputs)


# ---------------------------------------------------------------- the noise schedule


def test_linear_schedule_runs_from_beta_start_to_beta_end():
    s = NoiseSchedule("linear", 1000, 1e-4, 0.02)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    assert s.alphas_cumprod[-1].item() < 1e-4  # x_T is pure noise to within 1%


def test_cosine_schedule_starts_near_one_ends_near_zero_with_capped_betas():
    s = NoiseSchedule("cosine", 1000)
    assert s.alphas_cumprod[0].item() > 0.9999
    assert s.alphas_cumprod[-1].item() < 1e-6
    assert s.betas.max().item() == pytest.approx(0.999)  # the cap, reached at the very end
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    # cosine destroys information more slowly than linear in the middle (its point)
    assert s.alphas_cumprod[500] > NoiseSchedule("linear", 1000).alphas_cumprod[500]


def test_q_sample_has_the_mean_and_variance_of_the_forward_process():
    s = NoiseSchedule("linear", 1000)
    x0 = torch.full((20000, 1), 0.5)
    t = torch.full((20000,), 300)
    xt = s.add_noise(x0, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)), t)
    abar = s.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(0.5 * abar**0.5, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - abar, abs=0.02)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_true_target_recovers_x0_at_every_step(prediction):
    s = NoiseSchedule("cosine", 100, prediction=prediction)
    sched = DDIMScheduler(s)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise = torch.randn(3, 1, 4, 4)
    for t in (0, 50, 99):
        tt = torch.full((3,), t)
        xt = s.add_noise(x0, noise, tt)
        assert torch.allclose(
            sched.pred_original_sample(s.target(x0, noise, tt), t, xt), x0, atol=1e-3
        )


@pytest.mark.parametrize(
    ("schedule", "prediction", "low", "high"),
    [("linear", "epsilon", 100, 200), ("linear", "v", 0.9, 1.0), ("cosine", "v", 0.9, 1.0)],
)
def test_network_error_in_the_x0_estimate_at_high_noise(schedule, prediction, low, high):
    """Why the MNIST recipe predicts v: an error d in the network's output moves the x_0
    estimate by d * sqrt((1 - abar) / abar) under epsilon prediction (157x at t = 999 of the
    linear schedule, grey speckle after the clamp), by d * sqrt(1 - abar) (at most 1x) under v."""
    s = NoiseSchedule(schedule, 1000, prediction=prediction)
    t = 999
    abar = s.alphas_cumprod[t]
    xt, out = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    base = s.predict_x0_eps(out, xt, abar)[0]
    moved = s.predict_x0_eps(out + 0.01, xt, abar)[0]
    gain = ((moved - base) / 0.01).abs().mean().item()
    assert low < gain <= high


def test_the_mnist_recipe_predicts_v_on_the_cosine_schedule():
    """The measured best on its budget (ddpm README, "Which sampler")."""
    from genctl.recipe import load, recipes_dir

    model = load(recipes_dir() / "ddpm-mnist.yaml").model
    assert (model.prediction, model.beta_schedule) == ("v", "cosine")


def test_ddim_with_eta_zero_is_deterministic_and_with_eta_one_is_not():
    sched = DDIMScheduler(NoiseSchedule("linear", 100))
    sched.set_timesteps(10)
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    a = sched.step(out, 50, x, eta=0.0, generator=torch.Generator().manual_seed(1)).prev_sample
    b = sched.step(out, 50, x, eta=0.0, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b)
    c = sched.step(out, 50, x, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    d = sched.step(out, 50, x, eta=1.0, generator=torch.Generator().manual_seed(2)).prev_sample
    assert not torch.allclose(c, d)


def test_set_timesteps_spaces_steps_evenly_down_to_zero():
    sched = DDPMScheduler(NoiseSchedule("linear", 1000))
    sched.set_timesteps(50)
    assert sched.timesteps[0].item() == 980 and sched.timesteps[-1].item() == 0
    assert set((sched.timesteps[:-1] - sched.timesteps[1:]).tolist()) == {20}


@pytest.mark.parametrize(
    ("spacing", "first", "last"),
    [("leading", 980, 0), ("trailing", 999, 19), ("linspace", 999, 0)],
)
def test_each_spacing_starts_and_ends_where_lin_et_al_put_it(spacing, first, last):
    sched = DDIMScheduler(NoiseSchedule("linear", 1000))
    sched.set_timesteps(50, spacing)
    steps = sched.timesteps.tolist()
    assert (steps[0], steps[-1], len(set(steps))) == (first, last, 50)
    assert steps == sorted(steps, reverse=True)
    # each step lands on the next listed timestep, the last one on x_0 (-1)
    assert [sched.previous_timestep(t) for t in steps] == steps[1:] + [-1]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_a_ddim_step_with_the_true_noise_lands_on_the_next_timesteps_noise_level(spacing):
    """With the exact noise, x_prev is x_0 noised to the next listed timestep, even where the
    linspace gaps are uneven (1000 / 7 is not whole), and the last step gives x_0 itself."""
    s = NoiseSchedule("linear", 1000)
    sched = DDIMScheduler(s)
    sched.set_timesteps(7, spacing)
    x0 = torch.rand(2, 1, 4, 4) * 1.6 - 0.8
    noise = torch.randn(2, 1, 4, 4)
    for t in sched.timesteps.tolist():
        xt = s.add_noise(x0, noise, torch.full((2,), t))
        prev = sched.previous_timestep(t)
        want = x0 if prev < 0 else s.add_noise(x0, noise, torch.full((2,), prev))
        assert torch.allclose(sched.step(noise, t, xt).prev_sample, want, atol=1e-3), (t, prev)


def test_ddim_with_clipping_keeps_x_prev_consistent_with_the_clamped_x0():
    """The clamp moves x_0 into [-1, 1]; the noise is re-derived from the clamped x_0, so x_prev
    is that x_0 noised, at the next level, by the very noise that explains x_t. Keeping the
    network's own noise (the old behaviour) gives an x_prev no such pair explains."""
    s = NoiseSchedule("linear", 1000, clip_sample=True)
    sched = DDIMScheduler(s)
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    for t in (980, 500, 100, 20):
        xt, out = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g) * 0.5
        step = sched.step(out, t, xt)
        x0 = step.pred_original_sample
        assert x0.abs().max() <= 1 and (x0.abs() == 1).any()  # the clamp did act
        a_t, a_p = s.alphas_cumprod[t], s.alphas_cumprod[sched.previous_timestep(t)]
        implied_t = (xt - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        implied_prev = (step.prev_sample - a_p.sqrt() * x0) / (1 - a_p).sqrt()
        assert torch.allclose(implied_prev, implied_t, atol=1e-4), t


# ---------------------------------------------------------------- the UNet


def test_unet_output_has_the_shape_of_its_input():
    _, nets, _ = make()
    x = torch.randn(2, 3, 8, 8)
    assert nets["unet"](x, torch.tensor([3, 70])).shape == x.shape


def test_unet_output_depends_on_the_timestep():
    _, nets, _ = make()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(
            nets["unet"](x, torch.tensor([1, 1])), nets["unet"](x, torch.tensor([90, 90]))
        )


def test_conditional_unet_output_depends_on_the_class():
    _, nets, _ = make(DIGITS, conditional=True)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        assert not torch.allclose(
            nets["unet"](x, t, torch.tensor([1, 1])), nets["unet"](x, t, torch.tensor([7, 7]))
        )


def test_build_rejects_an_image_size_the_levels_cannot_halve():
    with pytest.raises(BadInput, match="cannot be halved"):
        build_networks(
            DDPMConfig(**{**TINY, "channel_mults": [1, 2, 2, 2]}), DataInfo("unconditional", 1, 28)
        )


def test_build_rejects_a_conditional_model_on_unlabelled_data():
    with pytest.raises(BadInput, match="needs class labels"):
        build_networks(DDPMConfig(**TINY, conditional=True), RGB)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"norm_groups": 16}, "norm_groups"),
        ({"norm_groups": 8, "attention_heads": 5}, "attention_heads"),
    ],
)
def test_config_rejects_groups_or_heads_that_do_not_divide_the_widths(settings, key):
    with pytest.raises(ValidationError, match=key):
        DDPMConfig(base_channels=24, **settings)


# ---------------------------------------------------------------- the objective


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_loss_is_finite_and_falls_on_a_fixed_batch(prediction):
    config, nets, _ = make(prediction=prediction)
    objective = DiffusionObjective(config, nets, RGB)
    batch = {"image": torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1}
    opt = torch.optim.Adam(nets["unet"].parameters(), lr=3e-3)

    def measured() -> float:  # the same timesteps and noise each time
        torch.manual_seed(123)
        with torch.no_grad():
            return objective.loss("unet", batch, 0)[0].item()

    before = measured()
    for step in range(30):
        loss, _ = objective.loss("unet", batch, step)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert measured() < 0.85 * before


def test_label_dropout_one_makes_the_loss_ignore_the_labels():
    config, nets, _ = make(DIGITS, conditional=True, class_dropout=1.0)
    objective = DiffusionObjective(config, nets, DIGITS)
    image = torch.rand(4, 1, 8, 8) * 2 - 1
    losses = []
    for label in ([0, 1, 2, 3], [9, 8, 7, 6]):
        torch.manual_seed(5)
        losses.append(objective.loss("unet", {"image": image, "label": torch.tensor(label)}, 0)[0])
    assert torch.equal(losses[0], losses[1])


# ---------------------------------------------------------------- sampling


def test_samples_are_images_in_unit_range():
    _, _, sampler = make()
    x = draw(sampler, n=3, steps=5)
    assert x.shape == (3, 3, 8, 8)
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_same_seed_gives_the_same_images(method):
    _, _, sampler = make()
    a = draw(sampler, seed=3, method=method, steps=10)
    assert torch.equal(a, draw(sampler, seed=3, method=method, steps=10))
    assert not torch.allclose(a, draw(sampler, seed=4, method=method, steps=10))


@pytest.mark.parametrize(("method", "calls"), [("ddpm", 100), ("ddim", 50)])
def test_default_steps_are_all_timesteps_for_ddpm_and_fifty_for_ddim(method, calls):
    _, nets, sampler = make()
    seen = []
    nets["unet"].register_forward_pre_hook(lambda mod, args: seen.append(int(args[1][0])))
    draw(sampler, n=1, method=method)
    # trailing spacing: the first call is at T-1, where the starting noise belongs
    assert len(seen) == calls and seen[0] == 99 and seen == sorted(seen, reverse=True)


def test_the_default_sampler_is_the_one_measured_best_at_fifty_calls():
    opts = DDPMSampleOptions()  # the README's FID table: DDIM-50, eta 1, trailing
    assert (opts.method, opts.steps, opts.eta, opts.spacing) == ("ddim", None, 1.0, "trailing")


def test_sampler_uses_the_ema_network_when_the_trainer_keeps_one():
    config, nets, _ = make()
    ema = build_networks(config, RGB)["unet"]
    sampler = DiffusionSampler(config, {"unet": nets["unet"], "unet_ema": ema}, RGB)
    assert sampler.unet is ema


def test_guidance_zero_is_the_unconditional_model():
    _, _, sampler = make(DIGITS, conditional=True)
    unconditional = draw(sampler, steps=5)  # no class: the null class
    assert torch.allclose(
        draw(sampler, steps=5, **{"class": 3, "guidance": 0.0}), unconditional, atol=1e-5
    )
    assert not torch.allclose(
        draw(sampler, steps=5, **{"class": 3, "guidance": 3.0}), unconditional, atol=1e-3
    )


def test_color_guidance_moves_the_mean_colour_toward_the_target():
    _, _, sampler = make()
    target = torch.tensor([1.0, 0.0, 0.0])[None, :, None, None]
    plain = draw(sampler, n=4, steps=10)
    guided = draw(sampler, n=4, steps=10, guide="color", color=[1.0, 0.0, 0.0], guide_scale=20.0)
    assert (guided.mean((0, 2, 3)) - target.flatten()).abs().sum() < 0.5 * (
        plain.mean((0, 2, 3)) - target.flatten()
    ).abs().sum()


def test_classifier_guidance_raises_the_target_class_probability(tmp_path):
    _, _, sampler = make(DataInfo("unconditional", 1, 8))
    torch.manual_seed(0)
    classifier = Classifier(channels=1, num_classes=3, width=8).eval()
    path = tmp_path / "clf.pt"
    save_classifier(path, classifier)

    def log_prob(images: torch.Tensor) -> float:
        with torch.no_grad():
            return classifier(images * 2 - 1).log_softmax(1)[:, 2].mean().item()

    plain = draw(sampler, n=4, steps=10)
    guided = draw(
        sampler,
        n=4,
        steps=10,
        guide="classifier",
        classifier=str(path),
        target_class=2,
        guide_scale=20.0,
    )
    assert log_prob(guided) > log_prob(plain) + 0.1


def test_img2img_with_strength_zero_returns_the_inputs():
    _, _, sampler = make()
    inputs = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(draw(sampler, inputs=inputs, strength=0.0), (inputs + 1) / 2)


def test_img2img_stays_closer_to_the_inputs_at_low_strength():
    _, _, sampler = make()
    inputs = torch.rand(2, 3, 8, 8) * 2 - 1
    low = draw(sampler, inputs=inputs, strength=0.1, steps=20)
    high = draw(sampler, inputs=inputs, strength=0.9, steps=20)
    target = (inputs + 1) / 2
    assert (low - target).abs().mean() < 0.5 * (high - target).abs().mean()


def test_img2img_resizes_inputs_to_the_model_size():
    _, _, sampler = make()
    out = draw(sampler, inputs=torch.zeros(2, 3, 16, 16), strength=0.5, steps=4)
    assert out.shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- option validation


def test_options_take_class_by_its_name_and_reject_unknown_keys():
    assert DDPMSampleOptions.model_validate({"class": 7, "guidance": 3.0}).class_ == 7
    with pytest.raises(ValidationError, match="extra"):
        DDPMSampleOptions.model_validate({"temperature": 1.0})
    with pytest.raises(ValidationError):
        DDPMSampleOptions.model_validate({"method": "plms"})
    with pytest.raises(ValidationError):
        DDPMSampleOptions.model_validate({"strength": 1.5})
    with pytest.raises(ValidationError, match="leading"):
        DDPMSampleOptions.model_validate({"spacing": "middle"})


@pytest.mark.parametrize(
    ("info", "conditional", "options", "message"),
    [
        (RGB, False, {"class": 1}, "class-conditional"),
        (DIGITS, True, {"class": 10}, "out of range"),
        (DIGITS, True, {"guidance": 3.0}, "Add class"),
        (RGB, False, {"method": "ddpm", "eta": 0.5}, "eta applies"),
        (RGB, False, {"steps": 101}, "exceeds"),
        (RGB, False, {"color": [1, 0, 0]}, "without a guidance function"),
        (RGB, False, {"guide": "sharpness"}, "unknown guidance function 'sharpness'"),
        (RGB, False, {"guide": "color"}, "needs a target colour"),
        (RGB, False, {"guide": "color", "color": [1.0, 0.0]}, "2 values"),
        (RGB, False, {"guide": "classifier", "target_class": 1}, "needs a classifier"),
        (RGB, False, {"strength": 0.5}, "--input"),
    ],
)
def test_options_that_do_not_fit_the_model_are_bad_input(info, conditional, options, message):
    _, _, sampler = make(info, conditional=conditional)
    with pytest.raises(BadInput, match=message):
        draw(sampler, **{"steps": 2, **options})


def test_a_missing_or_corrupt_classifier_checkpoint_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_classifier(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="unreadable"):
        load_classifier(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(BadInput, match="not a genctl_ddpm classifier"):
        load_classifier(other)


# ---------------------------------------------------------------- the classifier and the hook


def test_classifier_learns_and_survives_a_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (256,), generator=g)
    images = torch.where(labels[:, None, None, None] == 1, 0.5, -0.5) + 0.2 * torch.randn(
        256, 1, 8, 8, generator=g
    )
    model = train_classifier(images, labels, 2, steps=40, batch_size=32, width=8)
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.9
        save_classifier(tmp_path / "c.pt", model)
        assert torch.equal(load_classifier(tmp_path / "c.pt")(images), model(images))


def _guide_plugin(name: str) -> types.ModuleType:
    """A third-party plugin that registers one guidance function through the hook."""
    module = types.ModuleType(f"guide_{name}_plugin")

    @genctl.hookimpl
    def genctl_register_guidance(registry):
        def make(options, info, device):
            return lambda x0, t: x0.flatten(1).mean(1)  # darker is better

        registry.add(name, make, default_scale=5.0, description="darken")

    module.genctl_register_guidance = genctl_register_guidance
    return module


def test_plugins_register_guidance_functions_through_the_hook(monkeypatch):
    monkeypatch.setenv("GENCTL_PLUGINS", "ddpm")
    ps = genctl.plugins.load_plugins(extra={"darken": _guide_plugin("darken")})
    assert {"color", "classifier", "darken"} <= set(guidance_registry(ps.manager).names())
    monkeypatch.setattr(genctl.plugins, "plugins", lambda: ps)
    _, _, sampler = make()
    assert draw(sampler, n=4, steps=5, guide="darken").mean() < draw(sampler, n=4, steps=5).mean()


def test_a_guidance_name_taken_twice_names_both_plugins(monkeypatch):
    monkeypatch.setenv("GENCTL_PLUGINS", "ddpm")
    ps = genctl.plugins.load_plugins(extra={"mine": _guide_plugin("color")})
    with pytest.raises(ValueError, match="registered twice: by genctl_ddpm and by mine"):
        guidance_registry(ps.manager)


def test_the_plugin_registers_the_ddpm_model():
    spec = genctl.plugins.load_plugins().registry.get("ddpm")
    assert spec.sampler_options is DDPMSampleOptions
    assert spec.takes_input is False and "genctl_ddpm" in sys.modules


def test_training_preview_of_a_conditional_model_has_one_row_per_class():
    _, _, sampler = make(DIGITS, conditional=True)
    batch = {"image": torch.zeros(24, 1, 8, 8), "label": torch.zeros(24, dtype=torch.long)}
    images, nrow = sampler.preview(batch, torch.Generator().manual_seed(0))
    assert nrow == 2 and images.shape == (20, 1, 8, 8)


def test_default_ddim_sampling_works_with_fewer_than_50_timesteps(tmp_path, monkeypatch):
    from genctl.data import load_dataset
    from genctl.recipe import load, recipes_dir

    monkeypatch.setenv("GENCTL_CACHE", str(tmp_path))
    r = load(
        recipes_dir() / "ddpm-mnist.yaml",
        [
            "model.timesteps=20",
            "data.kind=shapes",
            "data.channels=1",
            "data.image_size=16",
            "data.size=8",
        ],
    )
    info = load_dataset(r.data).info
    sampler = r.spec.sampler(r.model, r.spec.build(r.model, info), info)
    images = sampler.sample(2, r.spec.sampler_options(), torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
