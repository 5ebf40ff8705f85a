"""The schema of a DDPM recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genctl.spec import Schema


class UNetConfig(Schema):
    """The keys of the UNet (``genctl_ddpm.model``), shared by the recipes that build it."""

    base_channels: int = Field(64, gt=0)  # width of the first level
    channel_mults: list[int] = Field([1, 2, 2, 2], min_length=1)  # width per level, x base
    num_res_blocks: int = Field(2, gt=0)  # residual blocks per level (depth)
    attention_resolutions: list[int] = [16]  # feature-map sides (pixels) with self-attention
    attention_heads: int = Field(1, gt=0)
    norm_groups: int = Field(32, gt=0)  # GroupNorm groups; must divide every level's width
    dropout: float = Field(0.1, ge=0, lt=1)


def check_unet(config: Schema) -> None:
    """The UNet keys (``genctl_ddpm.model``) of a recipe that builds this UNet: level widths
    that the GroupNorm groups and the attention heads divide. Raises ValueError."""
    if any(m <= 0 for m in config.channel_mults):
        raise ValueError(f"channel_mults must be positive, got {config.channel_mults}")
    widths = sorted({config.base_channels * m for m in config.channel_mults})
    bad = [w for w in widths if w % config.norm_groups]
    if bad:
        raise ValueError(
            f"norm_groups={config.norm_groups} does not divide the level widths {bad} "
            f"(base_channels x channel_mults); pick a divisor of {config.base_channels}"
        )
    bad = [w for w in widths if w % config.attention_heads]
    if bad:
        raise ValueError(
            f"attention_heads={config.attention_heads} does not divide the widths {bad}"
        )


class DDPMConfig(UNetConfig):
    # --- the UNet: UNetConfig's keys
    # --- the diffusion process
    timesteps: int = Field(1000, gt=1)  # T
    beta_schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = Field(1.0e-4, gt=0, lt=1)  # linear schedule only
    beta_end: float = Field(0.02, gt=0, lt=1)
    prediction: Literal["epsilon", "v"] = "epsilon"  # what the UNet predicts
    clip_sample: bool = True  # clamp the x_0 estimate to [-1, 1] at each sampling step
    # --- objectives (loss.py): all off by default, the recipes' measured setting
    # min-SNR-gamma loss weighting (Hang et al. 2023): weight min(SNR, gamma) / SNR (epsilon) or
    # / (SNR + 1) (v), the paper's gamma 5; none: the plain "simple" loss
    min_snr_gamma: float | None = Field(None, gt=0)
    # rescale the betas so that abar = 0 at T-1 (Lin et al. 2023); needs prediction v
    zero_terminal_snr: bool = False
    # offset noise: add strength x N(0, 1) per image and channel to the training noise
    offset_noise: float = Field(0.0, ge=0)
    # --- class conditioning (classifier-free guidance)
    conditional: bool = False  # condition on the data's class labels
    class_dropout: float = Field(0.1, ge=0, le=1)  # fraction of labels replaced by "no class"

    @model_validator(mode="after")
    def _check(self) -> DDPMConfig:
        check_unet(self)
        if self.zero_terminal_snr and self.prediction != "v":
            raise ValueError(
                "zero_terminal_snr needs prediction: v: at the last timestep abar is 0, so the "
                "noise is all there is in x_t and predicting it says nothing of x_0"
            )
        if self.beta_schedule == "linear" and self.beta_start >= self.beta_end:
            raise ValueError(
                f"beta_start ({self.beta_start}) must be below beta_end ({self.beta_end})"
            )
        return self
