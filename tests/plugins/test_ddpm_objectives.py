"""The diffusion objectives of the recipe's ``model:`` section: min-SNR-gamma weighting,
zero-terminal-SNR schedules and offset noise. Validated by the config, recorded in MLflow,
through the contract kit, and resumed exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.loss import DiffusionObjective, min_snr_weight
from genctl_ddpm.scheduler import NoiseSchedule
from pydantic import ValidationError

from genctl import checkpoint, testing
from genctl.recipe import apply_overrides, load_yaml, recipes_dir, validate
from genctl.spec import DataInfo
from genctl.tracking import get_run, local_path
from genctl.trainer import train
from tests.plugins.test_contract import TINY as CONTRACT_TINY
from tests.plugins.test_ddpm import TINY, make

RGB = DataInfo("unconditional", channels=3, image_size=8)
OBJECTIVES = [
    "model.prediction=v",
    "model.min_snr_gamma=5",
    "model.zero_terminal_snr=true",
    "model.offset_noise=0.1",
]


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"zero_terminal_snr": True}, "zero_terminal_snr needs prediction: v"),
        ({"min_snr_gamma": 0}, "min_snr_gamma"),
        ({"offset_noise": -0.1}, "offset_noise"),
    ],
)
def test_the_config_rejects_objectives_that_cannot_work(settings, message):
    with pytest.raises(ValidationError, match=message):
        DDPMConfig(**settings)


def test_the_objectives_are_off_by_default():
    c = DDPMConfig()
    assert (c.min_snr_gamma, c.zero_terminal_snr, c.offset_noise) == (None, False, 0.0)


# ---------------------------------------------------------------- min-SNR-gamma


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_weight_is_min_snr_gamma_over_the_targets_snr_factor(prediction):
    s = NoiseSchedule("linear", 1000, prediction=prediction)
    t = torch.tensor([0, 100, 300, 999])
    abar = s.alphas_cumprod[t]
    snr = abar / (1 - abar)
    factor = snr if prediction == "epsilon" else snr + 1  # x_0 loss x factor = target's loss
    want = torch.minimum(snr, torch.tensor(5.0)) / factor
    assert torch.allclose(min_snr_weight(s, t, 5.0), want)
    if prediction == "epsilon":  # noisy steps keep weight 1, clean ones are capped at gamma/SNR
        assert min_snr_weight(s, torch.tensor([999]), 5.0).item() == pytest.approx(1.0)
        assert snr[0] > 5 and min_snr_weight(s, t[:1], 5.0).item() < 0.01


def test_min_snr_weight_of_v_is_zero_where_zero_terminal_snr_leaves_no_signal():
    s = NoiseSchedule("linear", 1000, prediction="v", zero_terminal_snr=True)
    assert min_snr_weight(s, torch.tensor([999]), 5.0).item() == 0.0


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_loss_is_the_weighted_mean_of_per_image_errors(prediction):
    config, nets, _ = make(prediction=prediction, min_snr_gamma=5.0)
    objective = DiffusionObjective(config, nets, RGB)
    x0 = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(1)
    loss, _ = objective.loss("unet", {"image": x0}, 0)
    torch.manual_seed(1)  # the same draws by hand
    t = torch.randint(0, config.timesteps, (6,))
    noise = torch.randn_like(x0)
    s = objective.noise_schedule
    with torch.no_grad():
        per_image = nets["unet"](s.add_noise(x0, noise, t), t) - s.target(x0, noise, t)
    per_image = per_image.pow(2).flatten(1).mean(1)
    assert loss.item() == pytest.approx(
        (min_snr_weight(s, t, 5.0) * per_image).mean().item(), rel=1e-5
    )


# ---------------------------------------------------------------- offset noise and zero SNR


def test_offset_noise_adds_a_shared_shift_per_image_and_channel():
    """A network that predicts 0 has the noise's mean square as its loss: 1 for plain noise,
    1 + strength^2 with offset noise (the shift is one value per image and channel)."""
    config, nets, _ = make(offset_noise=1.0)
    objective = DiffusionObjective(config, nets, RGB)
    objective.unet = lambda x, t, label=None: torch.zeros_like(x)
    x0 = torch.zeros(256, 3, 8, 8)
    torch.manual_seed(0)
    assert objective.loss("unet", {"image": x0}, 0)[0].item() == pytest.approx(2.0, rel=0.1)
    objective.config = config.model_copy(update={"offset_noise": 0.0})
    torch.manual_seed(0)
    assert objective.loss("unet", {"image": x0}, 0)[0].item() == pytest.approx(1.0, rel=0.05)


def test_zero_terminal_snr_trains_on_pure_noise_at_the_last_step():
    config, nets, _ = make(prediction="v", zero_terminal_snr=True)
    s = DiffusionObjective(config, nets, RGB).noise_schedule
    x0, noise = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    last = torch.full((2,), config.timesteps - 1)
    assert torch.equal(s.add_noise(x0, noise, last), noise)
    assert torch.allclose(s.target(x0, noise, last), -x0)  # v = -x_0 there: learnable
    plain = NoiseSchedule("linear", config.timesteps)
    assert s.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item())


# ---------------------------------------------------------------- contract, MLflow, resume


@pytest.fixture(scope="module")
def contract() -> testing.Contract:
    return testing.make_contract(
        "ddpm", recipes_dir() / "ddpm.yaml", [*CONTRACT_TINY["ddpm"], *OBJECTIVES]
    )


@pytest.mark.parametrize("check", list(testing.CHECKS))
def test_the_objectives_keep_the_contract(contract, check):
    assert contract.recipe.model.zero_terminal_snr and contract.recipe.model.min_snr_gamma == 5
    testing.CHECKS[check](contract)


def _recipe():
    raw = load_yaml(recipes_dir() / "ddpm-mnist.yaml")
    tiny = [f"model.{k}={v}".replace(" ", "") for k, v in TINY.items()]
    return validate(
        apply_overrides(
            raw,
            [
                *tiny,
                *OBJECTIVES,
                "model.attention_resolutions=[8]",
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
            ],
        )
    )


def _weights(path):
    ck = checkpoint.load(path)
    return {f"{n}.{k}": v for n, sd in {**ck["nets"], **ck["ema"]}.items() for k, v in sd.items()}


def test_a_run_with_the_objectives_is_recorded_and_resumes_exactly(workdir, monkeypatch):
    full = train(_recipe(), progress=False)
    run = get_run(full.run_id)
    assert run.params["model.min_snr_gamma"] == "5.0"
    assert run.params["model.zero_terminal_snr"] == "True"
    assert run.params["model.offset_noise"] == "0.1"
    want = _weights(local_path(run.artifact_uri) / checkpoint.FINAL)

    original = DiffusionObjective.loss

    def loss_with_ctrl_c(self, group, batch, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of training
        return original(self, group, batch, step)

    monkeypatch.setattr(DiffusionObjective, "loss", loss_with_ctrl_c)
    first = train(_recipe(), progress=False)
    assert first.interrupted and first.step < 6
    monkeypatch.setattr(DiffusionObjective, "loss", original)
    resumed = train(_recipe(), resume=first.run_id, progress=False)
    assert resumed.step == 6
    got = _weights(local_path(get_run(first.run_id).artifact_uri) / checkpoint.FINAL)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
