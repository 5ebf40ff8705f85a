"""Flow matching / rectified flow: the path and its velocity target, the time sampling, the ODE
solvers on velocity fields whose flow is known, the sampler's options and bad input, the
contract kit, MLflow and exact resume through the trainer."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from genctl_ddpm.model import build_networks
from genctl_flow.config import TIME_SCALE, FlowConfig
from genctl_flow.loss import FlowMatchingObjective, draw_times, interpolate
from genctl_flow.sampler import (
    FlowSampleOptions,
    FlowSampler,
    integrate,
    network_calls,
    time_grid,
)
from pydantic import ValidationError
from torch import nn

from genctl import checkpoint, testing
from genctl.errors import BadInput
from genctl.recipe import apply_overrides, load_yaml, recipes_dir, validate
from genctl.spec import DataInfo
from genctl.tracking import get_run, local_path
from genctl.trainer import train
from tests.plugins.test_contract import TINY as CONTRACT_TINY
from tests.plugins.test_ddpm import DIGITS, RGB, single_thread  # noqa: F401 (autouse)

TINY = dict(
    base_channels=8,
    channel_mults=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[4],
    norm_groups=4,
    dropout=0.0,
)


def make(info: DataInfo = RGB, **overrides):
    torch.manual_seed(0)
    config = FlowConfig(**{**TINY, **overrides})
    nets = build_networks(config, info)
    return config, nets, FlowSampler(config, nets, info)


def draw(sampler: FlowSampler, n: int = 2, seed: int = 0, inputs=None, labels=None, **options):
    opts = FlowSampleOptions.model_validate(options)
    return sampler.sample(n, opts, torch.Generator().manual_seed(seed), inputs, labels)


# ---------------------------------------------------------------- the path and the objective


def test_the_path_runs_straight_from_the_image_at_0_to_the_noise_at_1():
    x0, noise = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    assert torch.equal(interpolate(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(3)), noise)
    t = torch.tensor([0.25, 0.5, 0.75])
    assert torch.allclose(interpolate(x0, noise, t)[1], (x0[1] + noise[1]) / 2)
    # the velocity target is the path's derivative in t
    h = 1e-3
    dx = (interpolate(x0, noise, t + h) - interpolate(x0, noise, t - h)) / (2 * h)
    assert torch.allclose(dx, noise - x0, atol=1e-3)


def test_the_loss_is_the_mse_of_the_velocity_at_the_scaled_time():
    config, nets, _ = make(time_sampling="uniform")
    objective = FlowMatchingObjective(config, nets, RGB)
    x0 = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(1)
    loss, _ = objective.loss("unet", {"image": x0}, 0)
    torch.manual_seed(1)  # the same draws by hand
    t = torch.rand(5)
    noise = torch.randn_like(x0)
    with torch.no_grad():
        pred = nets["unet"](interpolate(x0, noise, t), t * TIME_SCALE)
    assert loss.item() == pytest.approx((pred - (noise - x0)).pow(2).mean().item(), rel=1e-5)


def test_logit_normal_times_are_a_sigmoid_of_the_configured_normal():
    config = FlowConfig(time_sampling="logit_normal", logit_mean=1.0, logit_std=0.5)
    torch.manual_seed(0)
    t = draw_times(config, 20_000, torch.device("cpu"))
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(1.0, abs=0.02)
    assert logit.std().item() == pytest.approx(0.5, abs=0.02)
    uniform = draw_times(FlowConfig(time_sampling="uniform"), 20_000, torch.device("cpu"))
    assert 0 <= uniform.min() and uniform.max() <= 1
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert uniform.std().item() == pytest.approx(math.sqrt(1 / 12), abs=0.01)


def test_conditional_training_drops_labels_to_the_null_class():
    config, nets, _ = make(DIGITS, conditional=True, class_dropout=0.5)
    seen = []
    unet = nets["unet"]
    objective = FlowMatchingObjective(config, nets, DIGITS)
    objective.unet = lambda x, t, label=None: seen.append(label) or unet(x, t, label)
    torch.manual_seed(0)
    objective.loss("unet", {"image": torch.zeros(64, 1, 8, 8), "label": torch.zeros(64).long()}, 0)
    dropped = (seen[0] == 10).float().mean().item()
    assert 0.3 < dropped < 0.7 and set(seen[0].tolist()) == {0, 10}


# ---------------------------------------------------------------- the ODE solvers


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_a_constant_velocity_is_integrated_exactly_in_one_step(method):
    x1 = torch.randn(4)
    v = torch.randn(4)
    out = integrate(lambda x, t: v, x1, time_grid(1), method)
    assert torch.allclose(out, x1 - v)  # x(0) = x(1) - v


def test_euler_is_first_order_and_heun_second_order():
    """dx/dt = x has the exact flow x(0) = x(1) / e: halving the step halves Euler's error and
    quarters Heun's (its last step, to t = 0, is Euler's: still second order overall)."""
    x1 = torch.tensor([1.0], dtype=torch.float64)
    exact = math.exp(-1.0)

    def error(method, steps):
        return abs(integrate(lambda x, t: x, x1, time_grid(steps), method).item() - exact)

    euler = [error("euler", s) for s in (16, 32, 64)]
    heun = [error("heun", s) for s in (16, 32, 64)]
    for coarse, fine in zip(euler[:-1], euler[1:], strict=True):
        assert coarse / fine == pytest.approx(2.0, rel=0.1)
    for coarse, fine in zip(heun[:-1], heun[1:], strict=True):
        assert coarse / fine == pytest.approx(4.0, rel=0.15)
    assert heun[0] < euler[-1]  # 31 Heun calls beat 64 Euler calls


def test_heun_evaluates_twice_per_step_but_once_on_the_last():
    calls = []
    integrate(lambda x, t: calls.append(t) or x, torch.ones(1), time_grid(5), "heun")
    assert len(calls) == network_calls("heun", 5) == 9
    assert 0.0 not in calls  # never evaluated at t = 0
    calls.clear()
    integrate(lambda x, t: calls.append(t) or x, torch.ones(1), time_grid(5), "euler")
    assert calls == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


class OnePointVelocity(nn.Module):
    """The exact velocity of flow matching on a dataset of one image ``c``:
    ``E[noise - x_0 | x_t] = (x_t - c) / t``, handed the UNet's scaled time."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))  # a device to be on

    def forward(self, x, t, label=None):
        return (x - self.c) / (t / TIME_SCALE)[:, None, None, None]


@pytest.mark.parametrize(("method", "steps"), [("euler", 3), ("euler", 20), ("heun", 4)])
def test_the_sampler_integrates_from_noise_at_1_to_the_data_at_0(method, steps):
    """With the exact velocity of a one-image dataset every start noise flows to that image: the
    sampler runs from t = 1 to 0 with the UNet's time scale and the path's sign."""
    _, _, sampler = make()
    sampler.unet = OnePointVelocity(0.5)
    images = draw(sampler, n=3, method=method, steps=steps)
    assert torch.allclose(images, torch.full_like(images, 0.75), atol=1e-5)  # (0.5 + 1) / 2


# ---------------------------------------------------------------- the sampler


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    _, _, sampler = make()
    a = draw(sampler, seed=3, steps=4)
    torch.manual_seed(123)  # the global state does not matter
    assert torch.equal(a, draw(sampler, seed=3, steps=4))
    assert not torch.equal(a, draw(sampler, seed=4, steps=4))
    assert a.shape == (2, 3, 8, 8) and 0 <= a.min() and a.max() <= 1


def test_euler_and_heun_differ_and_the_default_is_the_measured_one():
    _, _, sampler = make()
    assert not torch.equal(
        draw(sampler, method="euler", steps=3), draw(sampler, method="heun", steps=3)
    )
    opts = FlowSampleOptions()
    assert (opts.method, sampler.steps(opts)) == ("heun", 10)  # 19 calls: README's FID table
    assert sampler.steps(FlowSampleOptions(method="euler")) == 20


def test_guidance_0_draws_the_unconditional_model_and_guidance_changes_images():
    _, nets, sampler = make(DIGITS, conditional=True)
    with torch.no_grad():  # a class embedding that matters (it starts at random already)
        nets["unet"].class_emb.weight.mul_(10)
    uncond = draw(sampler, steps=3, labels=torch.full((2,), 10))  # the null class
    assert torch.allclose(
        draw(sampler, steps=3, **{"class": 3, "guidance": 0.0}), uncond, atol=1e-6
    )
    plain = draw(sampler, steps=3, **{"class": 3})
    assert not torch.allclose(plain, draw(sampler, steps=3, **{"class": 3, "guidance": 3.0}))
    assert not torch.allclose(plain, draw(sampler, steps=3, **{"class": 4}))


def test_img2img_strength_0_keeps_the_inputs_and_1_starts_from_pure_noise():
    _, _, sampler = make()
    inputs = torch.rand(2, 3, 8, 8) * 2 - 1
    kept = draw(sampler, inputs=inputs, steps=4, strength=0.0)
    assert torch.allclose(kept, (inputs + 1) / 2)
    assert torch.equal(draw(sampler, inputs=inputs, steps=4, strength=1.0), draw(sampler, steps=4))
    half = draw(sampler, inputs=inputs, steps=4, strength=0.5)
    assert not torch.equal(half, kept) and not torch.equal(half, draw(sampler, steps=4))


@pytest.mark.parametrize(
    ("conditional", "options", "inputs", "message"),
    [
        (False, {"class": 1}, None, "class-conditional model"),
        (True, {"class": 10}, None, "out of range"),
        (True, {"guidance": 3.0}, None, "Add class=N"),
        (False, {"strength": 0.3}, None, "img2img"),
        (False, {}, torch.zeros(1, 1, 8, 8), "channels"),
    ],
)
def test_options_that_do_not_fit_the_model_are_bad_input(conditional, options, inputs, message):
    info = DataInfo("conditional", channels=3, image_size=8, num_classes=10)
    _, _, sampler = make(info, conditional=conditional)
    with pytest.raises(BadInput, match=message):
        draw(sampler, inputs=inputs, **options)


def test_unknown_sampler_options_are_rejected():
    with pytest.raises(ValidationError):
        FlowSampleOptions.model_validate({"method": "rk4"})
    with pytest.raises(ValidationError):
        FlowSampleOptions.model_validate({"eta": 1.0})  # a ddpm option


# ---------------------------------------------------------------- the schema


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"time_sampling": "cosine"}, "time_sampling"),
        ({"logit_std": 0}, "logit_std"),
        ({"time_sampling": "uniform", "logit_mean": 0.5}, "logit-normal time sampling only"),
        ({"norm_groups": 5}, "norm_groups=5"),
        ({"prediction": "v"}, "prediction"),  # a ddpm key: the flow predicts v by definition
    ],
)
def test_the_schema_rejects_keys_that_cannot_work(settings, message):
    with pytest.raises(ValidationError, match=message):
        FlowConfig(**settings)


def test_the_defaults_are_sd3s_logit_normal():
    c = FlowConfig()
    assert (c.time_sampling, c.logit_mean, c.logit_std) == ("logit_normal", 0.0, 1.0)


# ---------------------------------------------------------------- contract, MLflow, resume


@pytest.fixture(scope="module")
def contract() -> testing.Contract:
    """The contract row of test_contract runs the recipe's logit-normal time sampling; this one
    the uniform, unconditional."""
    tiny = [o for o in CONTRACT_TINY["flow"] if o != "model.conditional=true"]
    return testing.make_contract(
        "flow",
        recipes_dir() / "flow-mnist.yaml",
        [*tiny, "model.time_sampling=uniform"],
    )


@pytest.mark.parametrize("check", list(testing.CHECKS))
def test_uniform_time_sampling_keeps_the_contract(contract, check):
    assert contract.recipe.model.time_sampling == "uniform"
    testing.CHECKS[check](contract)


def _recipe(*extra: str):
    raw = load_yaml(recipes_dir() / "flow-mnist.yaml")
    tiny = [f"model.{k}={v}".replace(" ", "") for k, v in TINY.items()]
    return validate(
        apply_overrides(
            raw,
            [
                *tiny,
                "model.attention_resolutions=[8]",
                "model.conditional=true",
                "model.logit_mean=0.5",
                "data.kind=shapes",
                "data.channels=1",
                "data.image_size=16",
                "data.size=16",
                "train.batch_size=4",
                "train.steps=6",
                "train.log_every=3",
                "train.sample_every=6",
                "train.checkpoint_every=3",
                "train.grid_size=4",
                "train.device=cpu",
                "~evaluate",
                *extra,
            ],
        )
    )


def _weights(path):
    ck = checkpoint.load(path)
    return {f"{n}.{k}": v for n, sd in {**ck["nets"], **ck["ema"]}.items() for k, v in sd.items()}


def test_a_flow_run_is_recorded_and_resumes_exactly(workdir, monkeypatch):
    full = train(_recipe(), progress=False)
    run = get_run(full.run_id)
    assert run.params["model.time_sampling"] == "logit_normal"
    assert run.params["model.logit_mean"] == "0.5"
    assert run.params["model.logit_std"] == "1.0"
    want = _weights(local_path(run.artifact_uri) / checkpoint.FINAL)

    original = FlowMatchingObjective.loss

    def loss_with_ctrl_c(self, group, batch, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of training
        return original(self, group, batch, step)

    monkeypatch.setattr(FlowMatchingObjective, "loss", loss_with_ctrl_c)
    first = train(_recipe(), progress=False)
    assert first.interrupted and first.step < 6
    monkeypatch.setattr(FlowMatchingObjective, "loss", original)
    resumed = train(_recipe(), resume=first.run_id, progress=False)
    assert resumed.step == 6
    got = _weights(local_path(get_run(first.run_id).artifact_uri) / checkpoint.FINAL)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
