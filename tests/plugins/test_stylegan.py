"""StyleGAN: AdaIN, truncation, style mixing, R1, w_avg, and the sampler's three modes."""

from __future__ import annotations

import pytest
import torch
from genctl_stylegan.config import StyleGANConfig
from genctl_stylegan.loss import StyleGANObjective, r1_penalty
from genctl_stylegan.model import AdaIN, build, mix_styles
from genctl_stylegan.sampler import StyleGANSampler, StyleGANSamplerOptions, layer_range

from genctl.errors import BadInput
from genctl.plugins import get_spec
from genctl.sampling import parse_options
from genctl.spec import DataInfo
from tests.plugins.penalty import UnderflowCritic, fp16, fp16_scaler

TINY = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 64, "max_channels": 8}
DATA = DataInfo("unconditional", channels=3, image_size=16)  # 3 resolutions: 6 style layers


def tiny(**overrides):
    torch.manual_seed(0)
    config = StyleGANConfig(**{**TINY, **overrides})
    nets = build(config, DATA)
    g = nets["generator"]
    with torch.no_grad():  # a trained-looking generator: nonzero noise scales and w_avg
        g.w_avg.normal_()
        for layer in g.synthesis.layers:
            layer.noise_strength.fill_(0.5)
    return config, nets


def sampler_and_options(**options):
    config, nets = tiny()
    return StyleGANSampler(config, nets, DATA), StyleGANSamplerOptions(**options)


def draw(sampler, options, n=4, seed=0):
    return sampler.sample(n, options, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- networks


def test_adain_gives_each_channel_the_mean_and_std_of_the_style():
    torch.manual_seed(0)
    adain = AdaIN(channels=6, w_dim=5)
    x, w = torch.randn(3, 6, 8, 8) * 4 + 2, torch.randn(3, 5)
    out = adain(x, w)
    scale, bias = adain.style(w).chunk(2, dim=1)
    assert torch.allclose(out.mean(dim=(2, 3)), bias, atol=1e-4)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), scale.abs(), atol=1e-3)


def test_adain_output_ignores_the_input_statistics():
    adain, w = AdaIN(4, 5), torch.randn(2, 5)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(adain(x, w), adain(x * 10 - 3, w), atol=1e-4)


def test_generator_has_two_style_layers_per_resolution_and_a_learned_constant_input():
    _, nets = tiny()
    g = nets["generator"]
    assert g.num_ws == 6 and g.synthesis.const.requires_grad
    assert g(torch.randn(2, 16)).shape == (2, 3, 16, 16)


def test_noise_inputs_change_details_only_through_their_learned_scales():
    _, nets = tiny()
    g, z = nets["generator"], torch.randn(2, 16)
    assert not torch.allclose(g(z), g(z))  # fresh noise each call
    with torch.no_grad():
        for layer in g.synthesis.layers:
            layer.noise_strength.zero_()
    assert torch.allclose(g(z), g(z))


# ---------------------------------------------------------------- style mixing, truncation


def test_mix_styles_switches_from_the_first_latent_to_the_second_at_the_crossover():
    w1, w2 = torch.zeros(3, 4), torch.ones(3, 4)
    ws = mix_styles(w1, w2, torch.tensor([1, 3, 6]), num_ws=6)
    assert ws[:, :, 0].tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]]


def test_style_mixing_regularization_feeds_two_latents_to_each_image():
    config, nets = tiny(style_mixing_prob=1.0)
    seen = []
    nets["generator"].synthesis.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    StyleGANObjective(config, nets, DATA).generate(8, torch.device("cpu"))
    ws = seen[0]  # the first layer always takes the first latent, the last the second
    assert not torch.isclose(ws[:, 0], ws[:, -1]).all(dim=1).any()


def test_without_style_mixing_every_layer_gets_the_same_latent():
    config, nets = tiny(style_mixing_prob=0.0)
    seen = []
    nets["generator"].synthesis.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    StyleGANObjective(config, nets, DATA).generate(8, torch.device("cpu"))
    assert torch.equal(seen[0], seen[0][:, :1].expand_as(seen[0]))


def test_truncation_0_gives_the_mean_image_for_every_sample():
    sampler, options = sampler_and_options(truncation=0.0)
    images = draw(sampler, options)
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)
    g = sampler.generator
    mean_image = g.synthesis(g.broadcast(g.w_avg[None]), g.synthesis.const_noise())
    assert torch.allclose(images[0], ((mean_image[0].clamp(-1, 1) + 1) / 2), atol=1e-5)


def test_truncation_1_equals_the_untruncated_generator():
    sampler, options = sampler_and_options(truncation=1.0)
    g = sampler.generator
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    plain = (g(z, noise=g.synthesis.const_noise()).clamp(-1, 1) + 1) / 2
    assert torch.allclose(draw(sampler, options), plain, atol=1e-6)


def test_truncation_pulls_w_towards_w_avg_only_below_the_cutoff():
    _, nets = tiny()
    g = nets["generator"]
    ws = g.broadcast(torch.randn(2, 16))
    out = g.truncate(ws, psi=0.5, cutoff=2)
    assert torch.allclose(out[:, :2], (ws[:, :2] + g.w_avg) / 2)
    assert torch.equal(out[:, 2:], ws[:, 2:])


# ---------------------------------------------------------------- the objective


def test_r1_penalty_is_the_squared_gradient_norm_on_real_images():
    a = torch.randn(3, 4, 4)

    def linear_discriminator(x):
        return (x * a).flatten(1).sum(1)

    scores, r1 = r1_penalty(linear_discriminator, torch.randn(5, 3, 4, 4))
    assert scores.shape == (5,) and r1.item() == pytest.approx(a.pow(2).sum().item(), rel=1e-5)


def test_discriminator_loss_with_r1_is_finite_and_reaches_every_parameter():
    config, nets = tiny()
    objective = StyleGANObjective(config, nets, DATA)
    loss, logs = objective.loss("d", {"image": torch.rand(4, 3, 16, 16) * 2 - 1}, step=0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logs["r1"]) and logs["r1"] > 0
    for name, p in nets["discriminator"].named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_r1_under_fp16_uses_the_trainers_loss_scale():
    config, nets = tiny(r1_gamma=2.0)
    objective = StyleGANObjective(config, nets, DATA)
    objective.discriminator = UnderflowCritic(3 * 16 * 16)  # input gradient 1e-4 per pixel
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    exact = 3 * 16 * 16 * 1e-8  # R1 = ||grad||^2
    assert objective.loss("d", batch, 0)[1]["r1"].item() == pytest.approx(exact, rel=1e-5)
    objective.grad_scaler = fp16_scaler()  # what the trainer gives under precision: fp16
    with fp16():
        r1 = objective.loss("d", batch, 0)[1]["r1"]
    assert r1.item() == pytest.approx(exact, rel=1e-2)  # unscaled, the gradient was 0: R1 = 0


def test_lazy_r1_is_a_discriminator_update_of_its_own_every_nth_step():
    config, nets = tiny(r1_every=4, r1_gamma=2.0)
    objective = StyleGANObjective(config, nets, DATA)
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    assert objective.schedule(9) == ["d", "g"]
    assert "r1" not in objective.loss("d", batch, step=9)[1]
    assert objective.schedule(8) == ["d", "d", "g"]  # N + 1 discriminator updates per N steps
    assert "r1" not in objective.loss("d", batch, step=8)[1]  # the main update
    loss, logs = objective.loss("d", batch, step=8)  # the R1 update, scaled by N
    assert loss.item() == pytest.approx(2.0 / 2 * logs["r1"].item() * 4, rel=1e-5)


def test_lazy_r1_corrects_the_discriminator_lr_and_adam_betas_by_n_over_n_plus_1():
    config, nets = tiny(r1_every=4)
    objective = StyleGANObjective(config, nets, DATA)
    settings = {"name": "adam", "lr": 0.002, "betas": (0.0, 0.99), "eps": 1e-8}
    d = objective.optimizer_settings("d", settings)
    assert d["lr"] == pytest.approx(0.002 * 0.8)
    assert d["betas"] == pytest.approx((0.0, 0.99**0.8)) and d["eps"] == 1e-8
    assert objective.optimizer_settings("g", settings) == settings
    eager = StyleGANObjective(*tiny(r1_every=1)[:2], DATA)  # R1 at every step: no extra update
    assert eager.optimizer_settings("d", settings) == settings


def test_the_trainer_builds_the_discriminator_optimizer_with_the_lazy_r1_correction(workdir):
    from genctl import checkpoint
    from genctl.recipe import apply_overrides, validate
    from genctl.tracking import get_run, local_path
    from genctl.trainer import train

    raw = {
        "name": "stylegan-lazy-r1",
        "plugin": "stylegan",
        "model": {**TINY, "r1_every": 4},
        "data": {"kind": "shapes", "image_size": 8, "size": 16},
        "train": {
            "steps": 1,
            "batch_size": 4,
            "grid_size": 4,
            "optimizer": {"lr": 0.002, "betas": [0.0, 0.99]},
        },
    }
    result = train(validate(apply_overrides(raw, [])), progress=False)
    ck = checkpoint.load(local_path(get_run(result.run_id).artifact_uri) / checkpoint.LAST)
    d, g = (ck["optimizers"][k]["param_groups"][0] for k in ("d", "g"))
    assert d["lr"] == pytest.approx(0.002 * 0.8) and d["betas"] == pytest.approx((0.0, 0.99**0.8))
    assert g["lr"] == pytest.approx(0.002) and g["betas"] == pytest.approx((0.0, 0.99))


def test_losses_compute_under_bf16_autocast_the_gpu_default():
    config, nets = tiny()
    objective = StyleGANObjective(config, nets, DATA)
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    for group in ("d", "g"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = objective.loss(group, batch, 0)
        loss.backward()
        assert torch.isfinite(loss), group


def test_generator_step_moves_w_avg_towards_the_batch_mean_of_w():
    config, nets = tiny(w_avg_beta=0.5)
    g = nets["generator"]
    before = g.w_avg.clone()
    objective = StyleGANObjective(config, nets, DATA)
    loss, _ = objective.loss("g", {"image": torch.zeros(64, 3, 16, 16)}, step=0)
    assert torch.isfinite(loss)
    batch_mean = g.mapping(torch.randn(4096, 16)).mean(0)
    # halfway from where it was to (about) the mean of w
    assert (g.w_avg - (before + batch_mean) / 2).norm() < 0.3 * (before - batch_mean).norm()


# ---------------------------------------------------------------- sampler


def test_sampler_is_deterministic_for_a_seed_in_both_noise_modes():
    for noise in ("const", "random"):
        sampler, options = sampler_and_options(noise=noise, truncation=0.7)
        a, b = draw(sampler, options), draw(sampler, options)
        assert a.shape == (4, 3, 16, 16) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
        assert not torch.equal(a, draw(sampler, options, seed=1))


def test_random_noise_changes_the_details_of_the_same_latent():
    sampler, _ = sampler_and_options()
    const = draw(sampler, StyleGANSamplerOptions(noise="const"))
    random = draw(sampler, StyleGANSamplerOptions(noise="random"))
    assert not torch.allclose(const, random)


def test_mixing_grid_has_sources_down_the_first_column_and_styles_across_the_first_row():
    sampler, options = sampler_and_options(mode="mix", row_seeds=[1, 2], col_seeds=[3, 4, 5])
    grid = draw(sampler, options)
    assert sampler.nrow(options) == 4 and grid.shape == (3 * 4, 3, 16, 16)
    rows, cols = grid.view(3, 4, 3, 16, 16), None
    assert torch.equal(rows[0, 0], torch.ones(3, 16, 16))  # blank corner
    plain = StyleGANSamplerOptions()
    for j, seed in enumerate([3, 4, 5]):  # the first row: the style images as sampled by seed
        assert torch.allclose(rows[0, j + 1], draw(sampler, plain, n=1, seed=seed)[0], atol=1e-5)
    for i, seed in enumerate([1, 2]):
        assert torch.allclose(rows[i + 1, 0], draw(sampler, plain, n=1, seed=seed)[0], atol=1e-5)
    cols = rows[1:, 1:]
    assert not torch.allclose(cols[0, 0], rows[1, 0]) and not torch.allclose(cols[0, 0], rows[0, 1])


def test_mixing_every_layer_from_the_style_reproduces_the_style_image():
    sampler, options = sampler_and_options(
        mode="mix", row_seeds=[1], col_seeds=[3], mix_layers="0-5"
    )
    grid = draw(sampler, options).view(2, 2, 3, 16, 16)
    assert torch.allclose(grid[1, 1], grid[0, 1], atol=1e-6)


def test_mix_layer_bands_follow_the_papers_resolutions():
    res64 = [4, 8, 16, 32, 64]
    assert layer_range("coarse", res64) == range(0, 4)
    assert layer_range("middle", res64) == range(4, 8)
    assert layer_range("fine", res64) == range(8, 10)
    assert layer_range("fine", [4, 8, 16]) == range(4, 6)  # no 64 px layers: the last resolution
    assert layer_range("2-3", res64) == range(2, 4)
    with pytest.raises(BadInput, match="past the last layer"):
        layer_range("3-10", res64)


def test_interpolation_rows_run_from_one_keyframe_to_the_next():
    for space in ("z", "w"):
        sampler, options = sampler_and_options(
            mode="interpolate", seeds=[1, 2, 3], frames=5, space=space
        )
        frames = draw(sampler, options)
        assert sampler.nrow(options) == 5 and frames.shape == (2 * 5, 3, 16, 16)
        keys = [draw(sampler, StyleGANSamplerOptions(), n=1, seed=s)[0] for s in (1, 2, 3)]
        for frame, key in [(0, 0), (4, 1), (5, 1), (9, 2)]:  # each row: keyframe k to k + 1
            assert torch.allclose(frames[frame], keys[key], atol=1e-5), (space, frame)


def test_interpolation_needs_two_keyframes():
    sampler, options = sampler_and_options(mode="interpolate")
    with pytest.raises(BadInput, match="two keyframes"):
        draw(sampler, options, n=1)


def test_unknown_or_invalid_sampler_options_are_bad_input_listing_the_valid_ones():
    spec = get_spec("stylegan")
    with pytest.raises(BadInput) as err:
        parse_options(spec, ["truncaton=0.7"])
    assert "truncation" in str(err.value) and "mix_layers" in str(err.value)
    with pytest.raises(BadInput):
        parse_options(spec, ["mix_layers=ears"])
    with pytest.raises(BadInput):
        parse_options(spec, ["noise=loud"])
    opts = parse_options(spec, ["truncation=0.7", "mode=mix", "row_seeds=[1,2]", "mix_layers=fine"])
    assert opts.truncation == 0.7 and opts.row_seeds == [1, 2]
