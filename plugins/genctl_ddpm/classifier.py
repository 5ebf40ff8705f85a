"""A small image classifier for classifier guidance, its file format, and how to train one.

The ``classifier`` guide steers sampling toward a class by the gradient of this classifier's
log-probability of that class, evaluated on the sampler's estimate of the clean image x_0. Those
estimates are blurry at high noise, so the classifier is trained on images with a little Gaussian
noise added (a cheap stand-in for the noise-aware classifiers of Dhariwal & Nichol 2021).

Train one on the data of a recipe::

    python -m genctl_ddpm.classifier recipes/ddpm-mnist.yaml classifier.pt --steps 500

File format: a ``torch.save``'d dict (loaded with ``weights_only=True``) with ``format``,
``channels``, ``num_classes``, ``width``, ``class_names`` and ``state_dict``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.errors import BadInput

FORMAT = "genctl_ddpm.classifier/1"


class Classifier(nn.Module):
    """Three conv stages (two strided), pooling to 4x4, a linear head: logits N x classes."""

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width = channels, num_classes, width

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *stage(channels, width, 1),
            *stage(width, 2 * width, 2),
            *stage(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(4),  # keeps where strokes are: a 1x1 pool learns far slower
            nn.Flatten(),
        )
        self.head = nn.Linear(16 * 4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def save_classifier(
    path: str | Path, model: Classifier, class_names: list[str] | None = None
) -> None:
    state = {
        "format": FORMAT,
        "channels": model.channels,
        "num_classes": model.num_classes,
        "width": model.width,
        "class_names": list(class_names or []),
        "state_dict": model.state_dict(),
    }
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Load a file written by :func:`save_classifier`; anything else is bad input."""
    p = Path(path)
    hint = "Train one with `python -m genctl_ddpm.classifier RECIPE OUT.pt` (see the ddpm README)."
    if not p.is_file():
        raise BadInput(f"classifier checkpoint {str(path)!r} not found", hint)
    try:
        state: dict[str, Any] = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInput(
            f"classifier checkpoint {str(path)!r} is unreadable: {type(exc).__name__}", hint
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"{str(path)!r} is not a genctl_ddpm classifier checkpoint", hint)
    model = Classifier(state["channels"], state["num_classes"], state["width"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        problem = str(exc).splitlines()[0]
        raise BadInput(
            f"classifier checkpoint {str(path)!r} does not fit: {problem}", hint
        ) from None
    return model.to(device).eval().requires_grad_(False)


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 32,
    max_noise: float = 0.3,
    seed: int = 0,
) -> Classifier:
    """Fit a :class:`Classifier` to images in [-1, 1] (N x C x H x W) with int64 labels."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(images.shape[1], num_classes, width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx]
        sigma = torch.rand(batch_size, 1, 1, 1, generator=g) * max_noise
        x = x + sigma * torch.randn(x.shape, generator=g)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: Classifier, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += (
            (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        )
    return correct / max(len(images), 1)


def main(argv: list[str] | None = None) -> None:
    """Train a classifier on the data section of a recipe and save it."""
    from genctl.data.dataset import load_dataset
    from genctl.recipe import load

    ap = argparse.ArgumentParser(prog="python -m genctl_ddpm.classifier", description=main.__doc__)
    ap.add_argument("recipe", help="a recipe whose data: section has class labels")
    ap.add_argument("out", help="where to write the classifier checkpoint (.pt)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="recipe overrides key.sub=value")
    args = ap.parse_args(argv)
    recipe = load(args.recipe, args.overrides)
    data = load_dataset(recipe.data)
    images, labels, info = data.tensors["image"].float() / 127.5 - 1, data.labels, data.info
    if labels is None or not info.num_classes:
        raise SystemExit(f"{args.recipe}: the data has no class labels to train a classifier on")
    split = max(len(images) // 10, 1)  # hold out 10% to report accuracy
    model = train_classifier(
        images[split:],
        labels[split:],
        info.num_classes,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    save_classifier(args.out, model, list(info.class_names))
    print(
        f"held-out accuracy {accuracy(model, images[:split], labels[:split]):.3f}; saved {args.out}"
    )


if __name__ == "__main__":
    main()
