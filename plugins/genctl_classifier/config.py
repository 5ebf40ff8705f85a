"""The schemas of a classifier recipe's ``model:`` section and of its sampler's options."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from genctl.spec import Schema


class ClassifierConfig(Schema):
    """A small convolutional image classifier (see model.py)."""

    width: int = Field(32, gt=0, multiple_of=8)  # channels of the first stage (x2, x4 after)
    pool: int = Field(4, gt=0)  # side of the pooled feature map: features are 4*width*pool^2
    # Gaussian noise of a random sigma in [0, noise] (on the [-1, 1] scale) added to each
    # training image: a classifier that steers diffusion sees blurry, noisy x_0 estimates
    noise: float = Field(0.3, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class ClassifierSampleOptions(Schema):
    """What the classifier "draws": the input it finds most typical of a class (see sampler.py)."""

    model_config = ConfigDict(populate_by_name=True)

    class_: int | None = Field(None, alias="class", ge=0)  # one class for every image
    steps: int = Field(64, gt=0)  # gradient steps on the input, from noise
    step_size: float = Field(0.05, gt=0)  # each step moves every pixel by about this much
