"""The classifier network: three convolution stages, a pooled feature map, a linear head.

``features(x)`` is the penultimate layer (what domain FID/KID compare, see
genctl.evaluation.domain), ``forward(x)`` the logits. Pooling to ``pool x pool`` rather than
1 x 1 keeps where the strokes are: on MNIST a 1 x 1 pool learns far slower.
"""

from __future__ import annotations

from torch import Tensor, nn

from genctl.spec import DataInfo

from .config import ClassifierConfig


class ConvClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32, pool: int = 4) -> None:
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.body = nn.Sequential(
            *stage(channels, width, 1),
            *stage(width, 2 * width, 2),
            *stage(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.num_features = 4 * width * pool * pool
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, N x num_features, of images in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, N x num_classes."""
        return self.head(self.body(x))


def build(config: ClassifierConfig, info: DataInfo) -> dict[str, nn.Module]:
    return {
        "classifier": ConvClassifier(info.channels, info.num_classes, config.width, config.pool)
    }
