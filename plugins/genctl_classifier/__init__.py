"""Image classifiers as a family: trained with `genctl train`, referred to by RUN_ID wherever
something needs a classifier (diffusion guidance, domain FID/KID). See README.md in this folder."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    from .config import ClassifierConfig, ClassifierSampleOptions
    from .loss import ClassifierObjective
    from .model import build
    from .sampler import ClassifierSampler

    registry.add(
        ModelSpec(
            name="classifier",
            task="conditional",
            config=ClassifierConfig,
            build=build,
            objective=ClassifierObjective,
            sampler=ClassifierSampler,
            sampler_options=ClassifierSampleOptions,
            description="Convolutional image classifier: test accuracy, classifier guidance, "
            "features for domain FID/KID; samples are the inputs it finds most typical of a class",
        )
    )
