"""PixelCNN: the autoregressive masks (checked by gradient), the likelihood, the sampler."""

from __future__ import annotations

import math

import pytest
import torch
from genctl_pixelcnn import (
    PixelCNNConfig,
    PixelCNNObjective,
    PixelCNNSampler,
    PixelCNNSamplerOptions,
)
from genctl_pixelcnn.model import build, centre_mask

from genctl.errors import BadInput
from genctl.plugins import get_spec
from genctl.sampling import parse_options
from genctl.spec import DataInfo, labels_to_draw

TINY = {"width": 6, "layers": 2, "kernel_size": 3, "first_kernel_size": 3, "levels": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(size: int = 8, channels: int = 1, classes: int = 0, **options):
    torch.manual_seed(0)
    config = PixelCNNConfig(**{**TINY, **options})
    data = DataInfo(task="unconditional", channels=channels, image_size=size, num_classes=classes)
    nets = build(config, data)
    return (
        nets["pixelcnn"],
        PixelCNNObjective(config, nets, data),
        PixelCNNSampler(config, nets, data),
    )


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def opts(**kw) -> PixelCNNSamplerOptions:
    return PixelCNNSamplerOptions(**kw)


def dependence(net, x: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
    """C x H x W booleans: which input sub-pixels the logits of sub-pixel (c, i, j) depend on."""
    x = x.clone().requires_grad_(True)
    net(x)[0, :, c, i, j].sum().backward()
    return x.grad[0] != 0


def before(channels: int, size: int, c: int, i: int, j: int) -> torch.Tensor:
    """C x H x W booleans: the sub-pixels before (c, i, j) in raster order, R before G before B."""
    allowed = torch.zeros(channels, size, size, dtype=torch.bool)
    allowed[:, :i] = True
    allowed[:, i, :j] = True
    allowed[:c, i, j] = True
    return allowed


# ---------------------------------------------------------------- the masks


@pytest.mark.parametrize("channels", [1, 3])
def test_logits_have_one_softmax_of_levels_per_sub_pixel(channels):
    net, _, _ = make(channels=channels, levels=5)
    assert net(torch.zeros(2, channels, 8, 8)).shape == (2, 5, channels, 8, 8)


@pytest.mark.parametrize("channels", [1, 3])
def test_no_output_ever_sees_its_own_or_a_later_sub_pixel(channels):
    net, _, _ = make(size=6, channels=channels, first_kernel_size=5, kernel_size=5, width=9)
    x = torch.randn(1, channels, 6, 6)
    for i in range(6):
        for j in range(6):
            for c in range(channels):
                seen = dependence(net, x, c, i, j)
                leaks = seen & ~before(channels, 6, c, i, j)
                assert not leaks.any(), f"logits of ({c}, {i}, {j}) see {leaks.nonzero().tolist()}"


@pytest.mark.parametrize("channels", [1, 3])
def test_the_last_output_sees_every_earlier_sub_pixel_no_blind_spot(channels):
    # Receptive field 1 + 3 * 1 = 4 rows up and 4 columns either side: the whole 5x5 image.
    net, _, _ = make(size=5, channels=channels, layers=3, width=9)
    c = channels - 1
    seen = dependence(net, torch.randn(1, channels, 5, 5), c, 4, 4)
    assert torch.equal(seen, before(channels, 5, c, 4, 4))


def test_first_layer_excludes_the_current_colour_and_later_layers_include_it():
    r, g, b = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    assert not centre_mask(r, r, "A") and centre_mask(r, r, "B")
    assert centre_mask(r, g, "A") and not centre_mask(b, g, "B")  # G may read R, never B


def test_context_rows_are_all_the_rows_an_output_depends_on():
    net, _, _ = make(size=12, first_kernel_size=5, layers=2)  # 2 + 2 * 1 rows up
    assert net.context_rows == 4
    x = torch.randn(1, 1, 12, 12)
    full = net(x)
    rows = dependence(net, x, 0, 10, 6).any(dim=2)[0]
    assert rows.nonzero().flatten().tolist() == [6, 7, 8, 9, 10]
    assert torch.allclose(net(x[:, :, 6:11])[:, :, :, 4], full[:, :, :, 10], atol=1e-6)


# ---------------------------------------------------------------- the likelihood


def test_quantisation_spreads_the_levels_evenly_over_minus_one_to_one():
    net, _, _ = make(levels=4)
    x = torch.tensor([-1.0, -0.5, -0.2, 0.2, 0.4, 1.0])
    q = net.quantise(x)
    assert q.tolist() == [0, 1, 1, 2, 2, 3]
    assert torch.allclose(net.to_input(q), torch.tensor([-1, -1 / 3, -1 / 3, 1 / 3, 1 / 3, 1]))


@pytest.mark.parametrize("levels", [2, 4, 256])
def test_a_uniform_model_has_loss_ln_levels_nats_and_log2_levels_bits_per_dim(levels):
    net, objective, _ = make(levels=levels)
    last = net.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)  # equal logits: the uniform distribution
    loss, logs = objective.loss("pixelcnn", {"image": torch.rand(3, 1, 8, 8) * 2 - 1}, 0)
    assert loss.item() == pytest.approx(math.log(levels))
    assert logs["bpd"].item() == pytest.approx(math.log2(levels))


def test_training_on_a_batch_lowers_its_bits_per_dim():
    net, objective, _ = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rows = torch.arange(8).view(1, 1, 8, 1).expand(4, 1, 8, 8)
    batch = {"image": (rows % 2).float() * 2 - 1}  # stripes: each row predicts the next
    bpd = []
    for _ in range(25):
        loss, logs = objective.loss("pixelcnn", batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bpd.append(logs["bpd"].item())
    assert bpd[0] > 1.5 and bpd[-1] < 0.5 * bpd[0]


def test_class_conditioning_changes_the_logits():
    net, objective, _ = make(classes=10, conditional=True)
    x = torch.zeros(2, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([0, 0])), net(x, torch.tensor([0, 7])))
    loss, _ = objective.loss("pixelcnn", {"image": x, "label": torch.tensor([1, 2])}, 0)
    assert torch.isfinite(loss)


def test_conditional_without_labels_in_the_data_is_bad_input():
    with pytest.raises(BadInput, match="no class labels"):
        make(classes=0, conditional=True)


def test_width_below_the_image_channels_is_bad_input():
    with pytest.raises(BadInput, match="width 2 is below the 3 image channels"):
        make(channels=3, width=2)


@pytest.mark.parametrize(
    "field,value", [("kernel_size", 4), ("first_kernel_size", 6), ("levels", 1)]
)
def test_even_kernels_and_fewer_than_two_levels_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        PixelCNNConfig(**{field: value})


# ---------------------------------------------------------------- the sampler


@pytest.mark.parametrize("channels", [1, 3])
def test_samples_lie_on_the_level_grid_the_same_for_a_seed_and_others_for_another(channels):
    _, _, sampler = make(size=6, channels=channels, levels=4)
    a = sampler.sample(3, opts(), gen(0))
    assert a.shape == (3, channels, 6, 6)
    assert set((a * 3).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert torch.allclose(a * 3, (a * 3).round(), atol=1e-6)
    torch.manual_seed(123)  # the global random state plays no part
    assert torch.equal(a, sampler.sample(3, opts(), gen(0)))
    assert not torch.equal(a, sampler.sample(3, opts(), gen(1)))


def test_the_first_pixel_is_drawn_from_the_models_softmax():
    net, _, sampler = make(size=2, levels=4)
    with torch.no_grad():
        net.head[-1].bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))  # a lopsided first pixel
        probs = torch.softmax(net(torch.zeros(1, 1, 2, 2))[0, :, 0, 0, 0], 0)
    first = (sampler.sample(4000, opts(), gen(0))[:, 0, 0, 0] * 3).round().long()
    freq = torch.bincount(first, minlength=4).float() / 4000
    assert torch.allclose(freq, probs, atol=0.025), (freq, probs)


def test_a_temperature_near_zero_samples_the_most_likely_level_whatever_the_seed():
    _, _, sampler = make(size=5)
    cold = opts(temperature=1e-4)
    assert torch.equal(sampler.sample(2, cold, gen(0)), sampler.sample(2, cold, gen(1)))


def test_label_draws_that_class_and_none_cycles_through_them():
    net, _, sampler = make(size=4, classes=3, conditional=True)
    assert labels_to_draw(sampler, 5, opts(), None).tolist() == [0, 1, 2, 0, 1]
    assert labels_to_draw(sampler, 2, opts(label=2), None).tolist() == [2, 2]
    seven = sampler.sample(2, opts(label=1), gen(0))
    assert not torch.equal(seven, sampler.sample(2, opts(label=2), gen(0)))


@pytest.mark.parametrize(
    "conditional,label,message",
    [(True, 3, "class=3 is out of range"), (False, 0, "not class-conditional")],
)
def test_a_label_the_model_cannot_draw_is_bad_input(conditional, label, message):
    _, _, sampler = make(size=4, classes=3 if conditional else 0, conditional=conditional)
    with pytest.raises(BadInput, match=message):
        sampler.sample(1, opts(label=label), gen())


def test_input_images_are_bad_input():
    _, _, sampler = make(size=4)
    with pytest.raises(BadInput, match="takes no --input"):
        sampler.sample(1, opts(), gen(), inputs=torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize(
    "pair,fragment",
    [
        ("temperature=-1", "temperature=-1"),
        ("label=-2", "label=-2"),
        ("mode=sample", "unknown option 'mode'"),
    ],
)
def test_bad_sampler_options_are_bad_input_listing_the_valid_ones(pair, fragment):
    with pytest.raises(BadInput, match=fragment) as err:
        parse_options(get_spec("pixelcnn"), [pair])
    assert "temperature, class" in err.value.hint


# ---------------------------------------------------------------- likelihood for evaluation


def all_images(channels: int, size: int, levels: int) -> torch.Tensor:
    """Every uint8 image whose sub-pixels lie on the ``levels`` grid of 8-bit values."""
    grid = torch.linspace(0, 255, levels).round().to(torch.uint8)
    index = torch.cartesian_prod(*[torch.arange(levels)] * (channels * size * size))
    return grid[index.view(-1, channels * size * size)].view(-1, channels, size, size)


@pytest.mark.parametrize("channels", [1, 3])
def test_nll_is_a_proper_likelihood_the_probabilities_of_all_images_sum_to_one(channels):
    net, _, sampler = make(size=2, channels=channels, levels=2)
    for p in net.parameters():  # a model far from uniform, so the masks matter
        torch.nn.init.normal_(p, std=0.5)
    every = all_images(channels, 2, 2)  # 2^(C*4) images
    nll = sampler.nll(every, None, gen())
    assert nll.shape == (len(every),)
    assert torch.exp(-nll.double()).sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("levels", [4, 256])
def test_nll_of_a_uniform_model_is_log_levels_per_sub_pixel(levels):
    from genctl.evaluation.likelihood import bits_per_dim

    net, _, sampler = make(channels=3, levels=levels)
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.zeros_(net.head[-1].bias)
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=gen(2))
    nll = sampler.nll(x, None, gen())
    assert torch.allclose(nll, torch.full((5,), 192 * math.log(levels)))
    assert bits_per_dim(nll.mean().item(), 192) == pytest.approx(math.log2(levels))


def test_nll_is_the_training_loss_summed_over_sub_pixels():
    from genctl.data import to_unit

    net, objective, sampler = make(channels=3)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=gen(3))
    loss, _ = objective.loss("pixelcnn", {"image": to_unit(x)}, 0)  # as the loader gives it
    assert sampler.nll(x, None, gen()).mean().item() == pytest.approx(loss.item() * 192, rel=1e-5)


def test_a_conditional_model_scores_each_image_given_its_label_and_needs_labels():
    net, _, sampler = make(classes=3, conditional=True)
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=gen(4))
    a = sampler.nll(x, torch.tensor([0, 1]), gen())
    b = sampler.nll(x, torch.tensor([0, 2]), gen())
    assert a[0] == b[0] and a[1] != b[1]
    with pytest.raises(BadInput, match="needs the images' labels"):
        sampler.nll(x, None, gen())


def test_likelihood_protocol_says_what_the_number_is_the_likelihood_of():
    coarse = make(levels=4)[2].nll_protocol()
    assert "4 levels" in coarse["data"] and "not comparable with 8-bit" in coarse["data"]
    assert coarse["dequantization"].startswith("none")
    assert "8-bit values" in make(levels=256)[2].nll_protocol()["data"]


def test_cli_training_and_genctl_evaluate_log_nll_and_bpd_with_the_protocol(workdir):
    from typer.testing import CliRunner

    from genctl.cli import app
    from genctl.recipe import recipes_dir
    from genctl.tracking import get_run

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    shapes = "{kind: shapes, image_size: 8, channels: 1, size: 16}"
    res = cli(
        "train",
        recipes_dir() / "pixelcnn.yaml",
        f"data={shapes}",
        "model.width=4",
        "model.layers=1",
        "train.steps=2",
        "train.batch_size=4",
        "train.sample_every=100",
        "train.grid_size=1",
        "evaluate.every=2",
        "evaluate.metrics=[nll]",
        "evaluate.nll_images=8",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    run_id = res.output.split("run ")[1].split()[0]
    run = get_run(run_id)
    assert {"eval/nll", "eval/bpd"} <= set(run.metrics)
    assert 0 < run.metrics["eval/bpd"] < 2.5  # 4 levels: a uniform model scores 2
    assert run.tags["eval.nll_split"] == "test" and run.tags["eval.nll_num_images"] == "8"

    res = cli("evaluate", "--run", run_id, "--metrics", "nll", "--nll-images", 12, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "eval/bpd" in res.output and "likelihood protocol" in res.output
    run = get_run(run_id)
    assert run.tags["eval.nll_num_images"] == "12"
    assert "4 levels" in run.tags["eval.nll_data"]
    assert run.metrics["eval/nll"] == pytest.approx(run.metrics["eval/bpd"] * 64 * math.log(2))
