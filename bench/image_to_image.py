"""Training speed of the image-to-image families: genctl's trainer against bare PyTorch loops.

    python bench/image_to_image.py [--steps 40] [--repeats 2] [--device cpu] [--threads 1]

For CycleGAN (horse2zebra), Pix2Pix (facades) and SRGAN (CelebA), in one run, on the same data
and the same networks (built by the plugin, same seed):

* ``genctl``: ``genctl.trainer.train`` with MLflow tracking, grids and checkpoints out of the way;
* ``bare``: a hand-written loop doing the same computation — generator step, then discriminator
  step on the generator's detached outputs, a fresh batch for each, the same losses written out
  by hand, Adam — i.e. what the trainer adds on top of the arithmetic;
* ``bare_frozen_d``: the same loop with the discriminators' ``requires_grad`` off during the
  generator step, as the authors' CycleGAN/pix2pix code does: it skips the discriminator's weight
  gradients there, which genctl's generic trainer computes and then discards.

Fixed costs (building networks, the MLflow run, the final checkpoint) cancel out: each variant is
timed at two run lengths and the time difference is divided by the step difference. Variants are
interleaved within each repeat so machine noise hits them alike; medians are reported. Prints a
table and writes ``bench/results/image_to_image.json`` (``image_to_image-<families>.json``
for a subset). Needs ``../shared/data``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from genctl.data import load_dataset
from genctl.recipe import load

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DATA = REPO.parent / "shared" / "data"
OUT_OF_THE_WAY = ["train.sample_every=1000000000", "train.checkpoint_every=1000000000"]

# Small widths and images: seconds per step on a CPU, the same code paths as the full recipes.
FAMILIES: dict[str, list[str]] = {
    "cyclegan": [
        f"data.root={DATA / 'horse2zebra'}",
        "data.image_size=64",
        "model.ngf=16",
        "model.ndf=16",
    ],
    "pix2pix": [
        f"data.root={DATA / 'facades'}",
        "data.image_size=64",
        "model.ngf=16",
        "model.ndf=16",
    ],
    "srgan": [
        f"data.root={DATA / 'celeba' / 'celeba_10k.zip'}",
        "data.image_size=64",
        "train.batch_size=8",
        "model.blocks=8",
        "model.channels=32",
        "model.ndf=32",
        "model.pretrain_steps=0",  # time the GAN phase, VGG content loss included
    ],
}


def recipe(family: str, steps: int, device: str, extra: list[str]):
    overrides = FAMILIES[family] + OUT_OF_THE_WAY + extra
    return load(
        REPO / "recipes" / f"{family}.yaml",
        overrides + [f"train.steps={steps}", f"train.device={device}"],
    )


# ---------------------------------------------------------------- genctl


def time_genctl(family: str, steps: int, device: str, extra: list[str]) -> float:
    from genctl.trainer import train

    r = recipe(family, steps, device, extra)
    t0 = time.perf_counter()
    train(r, progress=False)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- bare loops


class Batches:
    """Random batches from the decoded dataset, on the device, as the genctl loader gives them."""

    def __init__(self, r, device: torch.device):
        data = load_dataset(r.data)
        self.info = data.info
        self.tensors = {k: v.to(device) for k, v in data.tensors.items()}
        self.bs, self.device = r.train.batch_size, device

    def draw(self, key: str) -> torch.Tensor:
        t = self.tensors[key]
        idx = torch.randint(len(t), (self.bs,), device=self.device)
        return t[idx].float().div(127.5).sub(1)

    def paired(self, a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.tensors[a]), (self.bs,), device=self.device)
        return tuple(self.tensors[k][idx].float().div(127.5).sub(1) for k in (a, b))


def adam(*nets, cfg) -> torch.optim.Adam:
    params = itertools.chain(*(n.parameters() for n in nets))
    return torch.optim.Adam(params, lr=cfg.optimizer.lr, betas=cfg.optimizer.betas)


def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ls_gan(scores: torch.Tensor, target: float) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, target))


class HistoryPool:
    """The authors' image pool: a Python list and Python's random module."""

    def __init__(self, size: int):
        self.size, self.images = size, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() < 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.stack(out)


def bare_cyclegan(r, nets, data: Batches, steps: int, freeze_d: bool) -> None:
    m = r.model
    g_ab, g_ba, d_a, d_b = (nets[k] for k in ("g_ab", "g_ba", "d_a", "d_b"))
    opt_g, opt_d = adam(g_ab, g_ba, cfg=r.train), adam(d_a, d_b, cfg=r.train)
    pool_a, pool_b = HistoryPool(m.pool_size), HistoryPool(m.pool_size)
    for _ in range(steps):
        a, b = data.draw("a"), data.draw("b")
        d_a.requires_grad_(not freeze_d), d_b.requires_grad_(not freeze_d)
        fake_b, fake_a = g_ab(a), g_ba(b)
        loss_g = (
            ls_gan(d_b(fake_b), 1.0)
            + ls_gan(d_a(fake_a), 1.0)
            + m.lambda_cycle * (F.l1_loss(g_ba(fake_b), a) + F.l1_loss(g_ab(fake_a), b))
            + m.lambda_cycle * m.lambda_identity * (F.l1_loss(g_ab(b), b) + F.l1_loss(g_ba(a), a))
        )
        update(opt_g, loss_g)
        d_a.requires_grad_(True), d_b.requires_grad_(True)
        a, b = data.draw("a"), data.draw("b")
        fa, fb = pool_a(fake_a), pool_b(fake_b)
        loss_d = 0.5 * (ls_gan(d_a(a), 1.0) + ls_gan(d_a(fa), 0.0))
        loss_d = loss_d + 0.5 * (ls_gan(d_b(b), 1.0) + ls_gan(d_b(fb), 0.0))
        update(opt_d, loss_d)


def bare_pix2pix(r, nets, data: Batches, steps: int, freeze_d: bool) -> None:
    g, d = nets["generator"], nets["discriminator"]
    opt_g, opt_d = adam(g, cfg=r.train), adam(d, cfg=r.train)
    for _ in range(steps):
        x, y = data.paired("input", "target")
        d.requires_grad_(not freeze_d)
        fake = g(x)
        loss_g = F.softplus(-d(x, fake)).mean() + r.model.lambda_l1 * F.l1_loss(fake, y)
        update(opt_g, loss_g)
        d.requires_grad_(True)
        x2, y2 = data.paired("input", "target")
        loss_d = 0.5 * (F.softplus(-d(x2, y2)).mean() + F.softplus(d(x, fake.detach())).mean())
        update(opt_d, loss_d)


def vgg19_features(weights: str, device: torch.device) -> torch.nn.Module:
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])[:36]  # up to relu5_4
    state = torch.load(weights, weights_only=True)
    features.load_state_dict(
        {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    )
    return features.to(device).eval().requires_grad_(False)


def bare_srgan(r, nets, data: Batches, steps: int, freeze_d: bool) -> None:
    m = r.model
    g, d = nets["generator"], nets["discriminator"]
    opt_g, opt_d = adam(g, cfg=r.train), adam(d, cfg=r.train)
    device = next(g.parameters()).device
    vgg = vgg19_features(m.vgg_weights, device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def features(x: torch.Tensor) -> torch.Tensor:
        return vgg(((x + 1) / 2 - mean) / std)

    side = data.info.image_size // data.info.scale

    def lr_hr() -> tuple[torch.Tensor, torch.Tensor]:
        hr = data.draw("hr")
        lr = F.interpolate(
            hr, size=(side, side), mode="bicubic", antialias=True, align_corners=False
        )
        return lr.clamp(-1, 1), hr

    for _ in range(steps):
        lr, hr = lr_hr()
        d.requires_grad_(not freeze_d)
        sr = g(lr)
        with torch.no_grad():
            target = features(hr)
        content = m.content_weight * F.mse_loss(features(sr), target)
        update(opt_g, content + m.adversarial_weight * F.softplus(-d(sr)).mean())
        d.requires_grad_(True)
        _, hr = lr_hr()
        update(opt_d, F.softplus(-d(hr)).mean() + F.softplus(d(sr.detach())).mean())


BARE: dict[str, Callable] = {
    "cyclegan": bare_cyclegan,
    "pix2pix": bare_pix2pix,
    "srgan": bare_srgan,
}


def time_bare(family: str, steps: int, device: str, extra: list[str], freeze_d: bool) -> float:
    r = recipe(family, steps, device, extra)
    dev = torch.device(device)
    torch.manual_seed(0)
    random.seed(0)
    t0 = time.perf_counter()
    data = Batches(r, dev)
    nets = {k: v.to(dev) for k, v in r.spec.build(r.model, data.info).items()}
    BARE[family](r, nets, data, steps, freeze_d)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the run


def standin_vgg(folder: Path) -> str:
    """VGG-19 feature weights of the right shapes with random values: timing needs no ImageNet."""
    from torchvision.models.vgg import cfgs, make_layers

    path = folder / "vgg19-standin.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}, path)
    return str(path)


def per_step(fn: Callable[[int], float], short: int, long: int) -> float:
    return (fn(long) - fn(short)) / (long - short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, default=40, help="steps of the long run (the short is a quarter)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: see the docstring)"
    )
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    long, short = args.steps, max(1, args.steps // 4)
    families = [f for f in args.families.split(",") if f]

    work = Path(tempfile.mkdtemp(prefix="genctl-bench-"))
    os.chdir(work)  # a throwaway MLflow store
    extra = {f: [] for f in families}
    if "srgan" in extra:
        extra["srgan"] = [f"model.vgg_weights={standin_vgg(work)}"]

    variants = {
        "genctl": lambda f, s: time_genctl(f, s, args.device, extra[f]),
        "bare": lambda f, s: time_bare(f, s, args.device, extra[f], freeze_d=False),
        "bare_frozen_d": lambda f, s: time_bare(f, s, args.device, extra[f], freeze_d=True),
    }
    for f in families:  # decode and cache the data, warm up imports and the store, untimed
        load_dataset(recipe(f, 1, args.device, extra[f]).data)
        time_genctl(f, 2, args.device, extra[f])

    timings: dict[str, dict[str, list[float]]] = {f: {v: [] for v in variants} for f in families}
    for _ in range(args.repeats):
        for f in families:
            for name, fn in variants.items():
                timings[f][name].append(per_step(lambda s, fn=fn, f=f: fn(f, s), short, long))

    result: dict = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "steps": [short, long],
        "repeats": args.repeats,
        "families": {},
    }
    print(
        f"\nimage-to-image training, {args.device}, {args.threads} thread(s), steps {short}->{long}, median of {args.repeats}"
    )
    print(f"{'family':10}{'loop':16}{'s/step':>10}{'steps/s':>10}{'vs bare':>10}")
    for f in families:
        med = {v: statistics.median(t) for v, t in timings[f].items()}
        r = recipe(f, 1, args.device, extra[f])
        result["families"][f] = {
            "setting": {
                "image_size": r.data.image_size,
                "batch_size": r.train.batch_size,
                "overrides": FAMILIES[f],
            },
            "seconds_per_step": med,
            "steps_per_s": {v: 1 / s for v, s in med.items()},
            "ratio_genctl_vs_bare": med["bare"] / med["genctl"],
            "ratio_genctl_vs_bare_frozen_d": med["bare_frozen_d"] / med["genctl"],
            "all": timings[f],
        }
        for v, s in med.items():
            print(f"{f:10}{v:16}{s:10.3f}{1 / s:10.2f}{med['bare'] / s:10.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    subset = "" if set(families) == set(FAMILIES) else "-" + "-".join(families)
    out = RESULTS / f"image_to_image{subset}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
