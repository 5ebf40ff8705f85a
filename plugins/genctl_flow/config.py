"""The schema of a flow matching recipe's ``model:`` section: the ddpm family's UNet keys (the
same UNet, ``genctl_ddpm.model``) and the flow's own: how training draws the time."""

from __future__ import annotations

from typing import Literal

from genctl_ddpm.config import UNetConfig, check_unet
from pydantic import Field, model_validator

# The UNet's time embedding takes t in [0, 1] scaled to the range of ddpm's timesteps, so the
# sinusoidal frequencies see the same spread of values as in a ddpm model (it takes fractions).
TIME_SCALE = 1000.0


class FlowConfig(UNetConfig):
    # --- the UNet: ddpm's keys and meanings (genctl_ddpm.model.UNet, UNetConfig)
    # --- the flow: x_t = (1 - t) x_0 + t noise, the UNet predicts v = noise - x_0
    # how training draws t: logit_normal (sigmoid of a normal: more weight on the middle times,
    # Esser et al. 2024) or uniform on [0, 1]
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0  # logit_normal only: the normal's mean and std (SD3's 0 and 1)
    logit_std: float = Field(1.0, gt=0)
    # --- class conditioning (classifier-free guidance)
    conditional: bool = False  # condition on the data's class labels
    class_dropout: float = Field(0.1, ge=0, le=1)  # fraction of labels replaced by "no class"

    @model_validator(mode="after")
    def _check(self) -> FlowConfig:
        check_unet(self)
        # compared with the defaults, not with the keys given: a checkpoint's config holds all
        if self.time_sampling == "uniform" and (self.logit_mean, self.logit_std) != (0.0, 1.0):
            raise ValueError(
                f"logit_mean={self.logit_mean}, logit_std={self.logit_std} with time_sampling: "
                "uniform; they shape the logit-normal time sampling only (drop them, or use "
                "time_sampling: logit_normal)"
            )
        return self
