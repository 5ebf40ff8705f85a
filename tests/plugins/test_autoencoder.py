"""Autoencoder and VAE: the latent interface, the ELBO terms, the sampler's modes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from genctl_autoencoder import (
    AutoencoderConfig,
    AutoencoderObjective,
    AutoencoderSampler,
    AutoencoderSamplerOptions,
    VAEConfig,
    VAESampler,
)
from genctl_autoencoder.loss import gaussian_kl, negative_elbo, reconstruction_nll
from genctl_autoencoder.model import build, reparameterise
from torch.distributions import Normal, kl_divergence

from genctl.errors import BadInput
from genctl.plugins import get_spec
from genctl.sampling import parse_options
from genctl.spec import DataInfo

TINY = {"width": 4, "channel_mults": [1, 2], "latent_channels": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(variational: bool = True, size: int = 16, channels: int = 1, **options):
    torch.manual_seed(0)
    config = (VAEConfig if variational else AutoencoderConfig)(**{**TINY, **options})
    data = DataInfo(task="unconditional", channels=channels, image_size=size)
    nets = build(config, data)
    return (
        config,
        nets,
        AutoencoderObjective(config, nets, data),
        (VAESampler if variational else AutoencoderSampler)(config, nets, data),
    )


def images(n: int = 8, size: int = 16, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return (
        torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    )


def opts(**kw) -> AutoencoderSamplerOptions:
    return AutoencoderSamplerOptions(**kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the latent interface


@pytest.mark.parametrize(
    "size,mults,latent,side", [(16, [1, 2], 4, 4), (28, [1, 2], 2, 7), (32, [1, 1, 2], 3, 4)]
)
@pytest.mark.parametrize("variational", [False, True])
def test_encode_gives_a_spatial_latent_and_decode_maps_it_back(
    variational, size, mults, latent, side
):
    _, nets, _, _ = make(variational, size, 3, channel_mults=mults, latent_channels=latent)
    net = nets["autoencoder"]
    z = net.encode(images(5, size, 3))
    assert z.shape == (5, latent, side, side) and net.latent_shape == (latent, side, side)
    x = net.decode(z)
    assert x.shape == (5, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1  # the [-1, 1] scale of genctl batches


@pytest.mark.parametrize("variational", [False, True])
def test_a_vector_latent_is_one_global_code_that_every_pixel_depends_on(variational):
    _, nets, objective, sampler = make(variational, 28, latent="vector", latent_channels=16)
    net = nets["autoencoder"]
    assert net.latent_shape == (16, 1, 1)
    assert net.encode(images(5, 28)).shape == (5, 16, 1, 1)
    z = torch.zeros(1, 16, 1, 1)
    z[0, 3] = 1.0  # one latent element changes the whole image, corners included
    change = (net.decode(z) - net.decode(torch.zeros(1, 16, 1, 1))).abs()[0, 0]
    assert change[0, 0] > 0 and change[27, 27] > 0 and change[0, 27] > 0
    assert sampler.sample(3, opts(), gen()).shape == (3, 1, 28, 28)
    loss, _ = objective.loss("autoencoder", {"image": images(4, 28)}, 0)
    assert torch.isfinite(loss)


def test_vae_encode_is_the_posterior_mean_unless_given_a_generator():
    _, nets, _, _ = make()
    net = nets["autoencoder"]
    x = images()
    mu, logvar = net.posterior(x)
    assert torch.equal(net.encode(x), mu)
    drawn = net.encode(x, generator=gen(3))
    assert not torch.allclose(drawn, mu)
    assert torch.equal(drawn, net.encode(x, generator=gen(3)))  # the generator decides
    assert torch.allclose(
        drawn, reparameterise(mu, logvar, torch.randn(mu.shape, generator=gen(3)))
    )


def test_deterministic_autoencoder_has_no_posterior_variance():
    _, nets, _, _ = make(variational=False)
    z, logvar = nets["autoencoder"].posterior(images())
    assert logvar is None
    assert torch.equal(nets["autoencoder"].encode(images(), generator=gen(0)), z)


def test_image_size_that_the_levels_cannot_halve_is_bad_input():
    with pytest.raises(BadInput, match="image_size 20 cannot be halved 3 times"):
        make(size=20, channel_mults=[1, 1, 1])


# ---------------------------------------------------------------- the ELBO terms


def test_kl_matches_the_closed_form_of_two_gaussians():
    mu = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]])
    logvar = torch.tensor([[0.0, 0.0, math.log(4.0)], [-1.0, 2.0, 0.0]])
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), expected)
    # by hand, first row: 0 + 0.5 * 1^2 + 0.5 * (4 + 4 - 1 - ln 4)
    assert gaussian_kl(mu, logvar)[0].item() == pytest.approx(0.5 + 0.5 * (8 - 1 - math.log(4)))


def test_kl_is_zero_exactly_at_the_prior_and_sums_over_spatial_latents():
    assert torch.equal(
        gaussian_kl(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)), torch.zeros(2)
    )
    assert torch.allclose(
        gaussian_kl(torch.ones(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)), torch.full((2,), 18.0)
    )


def test_reparameterised_samples_have_the_posterior_moments_and_carry_gradients():
    mu = torch.tensor([1.5, -2.0], requires_grad=True)
    logvar = torch.tensor([math.log(0.25), math.log(4.0)], requires_grad=True)
    eps = torch.randn(200_000, 2, generator=gen(0))
    z = reparameterise(mu, logvar, eps)
    assert torch.allclose(z.mean(0), mu.detach(), atol=0.02)
    assert torch.allclose(z.std(0), torch.tensor([0.5, 2.0]), atol=0.02)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.full((2,), 200_000.0))  # dz/dmu = 1
    sigma = (0.5 * logvar.detach()).exp()
    assert torch.allclose(
        logvar.grad, 0.5 * sigma * eps.sum(0), rtol=1e-4
    )  # dz/dlogvar = sigma eps / 2


def test_bce_reconstruction_is_the_bernoulli_negative_log_likelihood():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    expected = -(target * p.log() + (1 - target) * (1 - p).log()).sum()
    assert reconstruction_nll(logits, target, "bce", 0.1).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_mse_reconstruction_is_the_gaussian_nll_with_the_decoder_std():
    logits = torch.zeros(1, 1, 2, 2)  # mean 0.5 everywhere
    target = torch.tensor([[[[0.5, 1.0], [0.0, 0.7]]]])
    sse = 0.25 + 0.25 + 0.04
    assert reconstruction_nll(logits, target, "mse", 0.2).item() == pytest.approx(sse / (2 * 0.04))


def test_vae_loss_is_recon_plus_beta_times_kl_and_autoencoder_loss_is_recon_alone():
    torch.manual_seed(0)  # the reparameterisation noise
    _, _, objective, _ = make(beta=2.5)
    loss, logs = objective.loss("autoencoder", {"image": images()}, step=0)
    assert set(logs) == {"recon", "mse", "kl"}
    assert loss.item() == pytest.approx((logs["recon"] + 2.5 * logs["kl"]).item(), rel=1e-6)
    _, _, objective, _ = make(variational=False)
    loss, logs = objective.loss("autoencoder", {"image": images()}, step=0)
    assert set(logs) == {"recon", "mse"} and loss.item() == pytest.approx(logs["recon"].item())


def test_kl_weight_warms_up_linearly_then_holds():
    _, _, objective, _ = make(beta=2.0, kl_warmup_steps=100)
    assert [objective.beta(s) for s in (0, 50, 100, 5000)] == [0.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("variational", [False, True])
def test_training_on_a_batch_lowers_its_loss(variational):
    _, nets, objective, _ = make(variational, recon="bce")
    opt = torch.optim.Adam(nets["autoencoder"].parameters(), lr=3e-3)
    columns = torch.arange(16).view(1, 1, 1, 16).expand(8, 1, 16, 16)
    edges = torch.arange(0, 16, 2).view(8, 1, 1, 1)
    batch = {"image": (columns < edges).float() * 2 - 1}  # black and white, edges left to right
    torch.manual_seed(0)
    losses = []
    for step in range(30):
        loss, _ = objective.loss("autoencoder", batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_training_passes_track_the_latent_moments_and_eval_passes_do_not():
    from genctl_autoencoder.model import LATENT_MOMENTUM as m

    _, nets, _, _ = make(variational=False)
    net = nets["autoencoder"]
    x = images(16)
    z = net.encode(x).detach()
    net.train()
    net(x)
    net(x)  # two moving-average updates from (0, 1)
    assert torch.allclose(net.latent_mean, (1 - (1 - m) ** 2) * z.mean(0), atol=1e-6)
    var = z.var(0, unbiased=False)
    assert torch.allclose(net.latent_var, (1 - m) ** 2 + (1 - (1 - m) ** 2) * var, atol=1e-6)
    net.eval()
    before = net.latent_mean.clone()
    net(x + 1)
    assert torch.equal(net.latent_mean, before)
    assert "latent_mean" in net.state_dict()  # saved with the weights: sampling needs it


# ---------------------------------------------------------------- the sampler


@pytest.mark.parametrize("variational", [False, True])
def test_samples_are_images_in_range_the_same_for_a_seed_and_others_for_another(variational):
    _, _, _, sampler = make(variational, channels=3)
    a = sampler.sample(6, opts(), gen(0))
    assert a.shape == (6, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    torch.manual_seed(99)  # the global random state plays no part
    assert torch.equal(a, sampler.sample(6, opts(), gen(0)))
    assert not torch.equal(a, sampler.sample(6, opts(), gen(1)))


def test_vae_samples_its_prior_whatever_the_latent_moments():
    _, nets, _, sampler = make()
    nets["autoencoder"].latent_mean.fill_(5.0)
    z = sampler.latents(20_000, gen(0))
    assert abs(z.mean().item()) < 0.01 and z.std().item() == pytest.approx(1.0, abs=0.01)


def test_autoencoder_samples_the_gaussian_fitted_to_its_training_latents():
    _, nets, _, sampler = make(variational=False)
    net = nets["autoencoder"]
    net.latent_mean.copy_(torch.linspace(-2, 2, net.latent_mean.numel()).view(net.latent_shape))
    net.latent_var.fill_(0.09)
    z = sampler.latents(20_000, gen(0))
    assert torch.allclose(z.mean(0), net.latent_mean, atol=0.02)
    assert torch.allclose(z.std(0), torch.full(net.latent_shape, 0.3), atol=0.02)


def test_temperature_scales_the_latent_noise_around_the_prior_mean():
    _, nets, _, sampler = make(variational=False)
    nets["autoencoder"].latent_mean.fill_(1.0)
    full, cool = sampler.latents(4, gen(0), 1.0), sampler.latents(4, gen(0), 0.5)
    assert torch.allclose(cool - 1.0, 0.5 * (full - 1.0), atol=1e-6)


@pytest.mark.parametrize("mode", ["auto", "reconstruct"])
def test_reconstruct_decodes_the_posterior_mean_of_the_inputs_whatever_the_seed(mode):
    _, nets, _, sampler = make()
    net, x = nets["autoencoder"], images(3)
    out = sampler.sample(3, opts(mode=mode), gen(0), inputs=x)
    assert torch.allclose(out, (net.decode(net.encode(x)) + 1) / 2)
    assert torch.equal(out, sampler.sample(3, opts(mode=mode), gen(1), inputs=x))


def test_reconstruct_without_inputs_is_bad_input_that_says_to_give_them():
    _, _, _, sampler = make()
    with pytest.raises(BadInput, match="mode=reconstruct needs images") as err:
        sampler.sample(2, opts(mode="reconstruct"), gen())
    assert "--input" in err.value.hint


def test_sample_mode_with_inputs_is_bad_input_rather_than_ignoring_them():
    _, _, _, sampler = make(variational=False)
    with pytest.raises(BadInput, match="autoencoder: mode=sample .* ignore --input"):
        sampler.sample(2, opts(mode="sample"), gen(), inputs=images(2))


def test_preview_shows_inputs_then_reconstructions_then_samples():
    _, nets, _, sampler = make()
    x = images(4)
    grid, nrow = sampler.preview({"image": x}, gen(0))
    net = nets["autoencoder"]
    assert nrow == 4 and grid.shape == (12, 1, 16, 16)
    assert torch.allclose(grid[:4], (x + 1) / 2)
    assert torch.allclose(grid[4:8], (net.decode(net.encode(x)) + 1) / 2)
    assert torch.equal(grid[8:], sampler.sample(4, opts(mode="sample"), gen(0)))


@pytest.mark.parametrize("model", ["autoencoder", "vae"])
@pytest.mark.parametrize(
    "pair,fragment",
    [
        ("mode=decode", "mode='decode'"),
        ("temperature=0", "temperature=0"),
        ("label=3", "unknown option 'label'"),
    ],
)
def test_bad_sampler_options_are_bad_input_listing_the_valid_ones(model, pair, fragment):
    with pytest.raises(BadInput, match=fragment) as err:
        parse_options(get_spec(model), [pair])
    assert "mode, temperature" in err.value.hint


def test_recipe_keys_of_the_vae_are_unknown_to_the_autoencoder():
    assert "beta" in VAEConfig.model_fields and "beta" not in AutoencoderConfig.model_fields
    with pytest.raises(ValueError, match="beta"):
        AutoencoderConfig(beta=1.0)


# ---------------------------------------------------------------- end to end


def test_cli_trains_a_vae_then_reconstructs_input_images_and_samples_new_ones(workdir):
    from PIL import Image
    from typer.testing import CliRunner

    from genctl.cli import app
    from genctl.recipe import recipes_dir

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    tiny = ["data.image_size=16", "data.size=16", "train.batch_size=4", "train.grid_size=4"]
    res = cli(
        "train",
        recipes_dir() / "vae.yaml",
        "train.steps=2",
        "model.width=4",
        *tiny,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    (workdir / "in").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 200, 90)).save(workdir / "in" / f"im{i}.png")

    res = cli("sample", "--plugin", "vae", "--input", workdir / "in", "--out", workdir / "recon")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (workdir / "recon").iterdir()) == [
        "im0.png",
        "im1.png",
        "im2.png",
    ]
    res = cli("sample", "--plugin", "vae", "--n", 4, "--out", workdir / "grid.png")
    assert res.exit_code == 0 and (workdir / "grid.png").is_file(), res.output
    res = cli("sample", "--plugin", "vae", "mode=reconstruct", "--out", workdir / "x.png")
    assert res.exit_code == 2 and "--input" in res.output and "Traceback" not in res.output

    # genctl evaluate: the negative ELBO of test images, logged with how it was made
    from genctl.tracking import get_run, search_runs

    run_id = search_runs(plugin="vae")[0].run_id
    res = cli("evaluate", "--run", run_id, "--metrics", "nll", "--nll-images", 6, "--no-progress")
    assert res.exit_code == 0, res.output
    run = get_run(run_id)
    assert run.metrics["eval/nll"] > 0
    assert run.metrics["eval/bpd"] == pytest.approx(
        run.metrics["eval/nll"] / (3 * 256 * math.log(2))
    )
    assert run.tags["eval.nll_split"] == "test" and run.tags["eval.nll_num_images"] == "6"
    assert run.tags["eval.nll_estimator"].startswith("negative ELBO")
    assert "uniform" in run.tags["eval.nll_dequantization"]  # vae.yaml: a Gaussian decoder


# ---------------------------------------------------------------- likelihood for evaluation


def uint8_images(n: int = 4, size: int = 16, channels: int = 1, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def test_vae_sampler_reports_a_likelihood_and_the_autoencoder_s_does_not():
    assert callable(getattr(get_spec("vae").sampler, "nll", None))
    assert not hasattr(get_spec("autoencoder").sampler, "nll")


def test_bce_negative_elbo_is_bernoulli_cross_entropy_plus_kl_for_one_posterior_sample():
    config, nets, _, _ = make(recon="bce")
    net = nets["autoencoder"].eval()
    x = uint8_images()
    got = negative_elbo(net, x, "bce", config.decoder_std, gen(7))
    with torch.no_grad():  # by hand, with the same noise
        mu, logvar = net.posterior(x.float() / 127.5 - 1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen(7))
        p = torch.sigmoid(net.decode_logits(z)).double().clamp(1e-12, 1 - 1e-12)
        t = x.double() / 255
        bce = -(t * p.log() + (1 - t) * (1 - p).log()).flatten(1).sum(1)
        kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(got.double(), bce + kl.double(), rtol=1e-4)


def test_gaussian_negative_elbo_keeps_the_density_s_constants_and_bounds_the_8bit_nll():
    config, nets, _, _ = make(recon="mse", decoder_std=0.2, channels=3)
    net = nets["autoencoder"].eval()
    x = uint8_images(channels=3)
    got = negative_elbo(net, x, "mse", 0.2, gen(8))
    with torch.no_grad():
        g = gen(8)
        mu, logvar = net.posterior(x.float() / 127.5 - 1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        y = (x.float() + torch.rand(x.shape, generator=g)) / 256  # uniform dequantisation
        mean = torch.sigmoid(net.decode_logits(z))
        log_p = Normal(mean, 0.2).log_prob(y).flatten(1).sum(1)
        kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    dims = 3 * 16 * 16
    assert torch.allclose(got, -log_p + kl + dims * math.log(256), rtol=1e-5)


def test_negative_elbo_is_the_same_for_a_seed_and_uses_beta_one_whatever_the_recipe():
    config, nets, _, sampler = make(beta=4.0)
    x = uint8_images()
    a = sampler.nll(x, None, gen(1))
    assert torch.equal(a, sampler.nll(x, None, gen(1)))
    _, _, _, plain = make(beta=1.0)  # the same weights (seeded build)
    assert torch.equal(a, plain.nll(x, None, gen(1)))


def test_likelihood_protocol_says_what_each_decoder_s_number_means():
    bce = make(recon="bce")[3].nll_protocol()
    assert "binaris" in bce["data"] and "not with 8-bit" in bce["data"]
    mse = make(recon="mse", decoder_std=0.1)[3].nll_protocol()
    assert "std 0.1" in mse["data"] and "D ln 256" in mse["dequantization"]
    assert bce["estimator"].startswith("negative ELBO")


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "name, shape",
    [
        ("vae-mnist.yaml", (16, 1, 1)),  # prior samples are digits: FID 29.5 (README)
        ("vae-mnist-spatial.yaml", (4, 7, 7)),  # strokes (FID 106.6): for latent models
    ],
)
def test_the_mnist_vae_samples_from_a_vector_latent_and_the_spatial_one_stays(name, shape):
    from genctl.recipe import load, recipes_dir

    recipe = load(recipes_dir() / name)
    info = DataInfo("unconditional", channels=1, image_size=28, num_classes=10)
    nets = recipe.spec.build(recipe.model, info)
    sampler = recipe.spec.sampler(recipe.model, nets, info)
    assert sampler.latents(2, torch.Generator().manual_seed(0)).shape == (2, *shape)
