"""Diffusion benchmarks, side by side in one run on one machine.

1. Training throughput (images/s: forward, backward and an Adam step on the epsilon-MSE loss) of
   genctl_ddpm's UNet against diffusers' ``UNet2DModel`` configured to the same layout (levels,
   widths, residual blocks per level, attention level): the same parameter count, to the unit.
   A third row runs genctl's UNet in the channels-last memory format.
   The two are timed in alternation (A B A B ...) so a busy machine slows both alike; the table
   gives the median of the rounds.
2. Sampling time of genctl_ddpm's DDIM (50 steps) against ancestral DDPM (all 1000 steps).

    .venv/bin/python bench/diffusion.py                   # CIFAR-sized, CPU, 1 thread
    .venv/bin/python bench/diffusion.py --device cuda --batch 128 --threads 0

Prints a table and writes bench/results/diffusion.json. Needs diffusers (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.model import build_networks
from genctl_ddpm.sampler import DDPMSampleOptions, DiffusionSampler

from genctl.spec import DataInfo

RESULTS = Path(__file__).resolve().parent / "results"


def ours(args) -> torch.nn.Module:
    config = DDPMConfig(
        base_channels=args.width,
        channel_mults=[1, 2, 2],
        num_res_blocks=args.blocks,
        attention_resolutions=[args.size // 2],
        norm_groups=8,
        dropout=0.0,
    )
    return build_networks(config, DataInfo("unconditional", args.channels, args.size))["unet"]


def peer(args) -> torch.nn.Module:
    from diffusers import UNet2DModel

    w = args.width
    return UNet2DModel(
        sample_size=args.size,
        in_channels=args.channels,
        out_channels=args.channels,
        block_out_channels=(w, 2 * w, 2 * w),
        layers_per_block=args.blocks,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=2 * w,  # one head, as ours
    )


def params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def train_round(net, call, args, device, steps: int) -> float:
    """Images/s over ``steps`` optimizer steps (after the caller's warm-up)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=g).to(device)
    noise = torch.randn(x.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(call(net, x, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return args.batch * steps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sampling_seconds(net, args, device, method: str, steps: int) -> float:
    config = DDPMConfig(base_channels=args.width, channel_mults=[1, 2, 2], norm_groups=8)
    sampler = DiffusionSampler(
        config, {"unet": net}, DataInfo("unconditional", args.channels, args.size)
    )
    opts = DDPMSampleOptions(method=method, steps=steps)
    _sync(device)
    start = time.perf_counter()
    sampler.sample(args.sample_n, opts, torch.Generator().manual_seed(0))
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--width", type=int, default=32, help="width of the first level")
    ap.add_argument("--blocks", type=int, default=2, help="residual blocks per level")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per round")
    ap.add_argument("--sample-n", type=int, default=8, help="images per sampling run")
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--no-sampling", action="store_true", help="time training only")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    channels_last = torch.channels_last
    nets = {
        "genctl": ours(args).to(device),
        "diffusers": peer(args).to(device),
        "genctl_channels_last": ours(args).to(device, memory_format=channels_last),
    }
    calls = {
        "genctl": lambda net, x, t: net(x, t),
        "diffusers": lambda net, x, t: net(x, t).sample,
        "genctl_channels_last": lambda net, x, t: net(x.contiguous(memory_format=channels_last), t),
    }
    for name, net in nets.items():  # warm-up: allocator, kernels, lazy inits
        train_round(net, calls[name], args, device, 1)
    rates: dict[str, list[float]] = {name: [] for name in nets}
    for i in range(args.rounds):
        for name, net in nets.items():
            rates[name].append(train_round(net, calls[name], args, device, args.steps))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()))

    unet = nets["genctl"].eval()
    ddim = ddpm = float("nan")
    if not args.no_sampling:
        with torch.no_grad():
            sampling_seconds(unet, args, device, "ddim", 2)  # warm-up
            ddim = sampling_seconds(unet, args, device, "ddim", 50)
            print(f"DDIM-50: {ddim:.1f} s")
            ddpm = sampling_seconds(unet, args, device, "ddpm", args.ddpm_steps)

    train = {
        name: {
            "params": params(net),
            "images_per_s_median": statistics.median(r),
            "images_per_s_rounds": r,
        }
        for (name, net), r in zip(nets.items(), rates.values(), strict=True)
    }
    speedup = train["genctl"]["images_per_s_median"] / train["diffusers"]["images_per_s_median"]
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
        },
        "setup": vars(args),
        "train": train,
        "train_speedup_genctl_over_diffusers": speedup,
        "sampling": {
            "images": args.sample_n,
            "ddim_50_s": ddim,
            f"ddpm_{args.ddpm_steps}_s": ddpm,
            "ddim_speedup": ddpm / ddim,
        },
    }

    shape = f"{args.size}x{args.size}x{args.channels}"
    threads = torch.get_num_threads()
    print(f"\nTraining, {shape}, batch {args.batch}, {device}, {threads} thread(s)")
    print(f"(median of {args.rounds} alternating rounds of {args.steps} steps)")
    print(f"{'UNet':<24}{'params':>12}{'images/s':>12}")
    for name, row in train.items():
        print(f"{name:<24}{row['params']:>12,}{row['images_per_s_median']:>12.1f}")
    print(f"genctl / diffusers: {speedup:.2f}x")
    print(f"\nSampling {args.sample_n} images with genctl's UNet")
    print(f"{'method':<12}{'seconds':>12}{'s/image':>12}")
    print(f"{'DDIM-50':<12}{ddim:>12.1f}{ddim / args.sample_n:>12.2f}")
    print(f"{f'DDPM-{args.ddpm_steps}':<12}{ddpm:>12.1f}{ddpm / args.sample_n:>12.2f}")
    print(f"DDIM-50 is {ddpm / ddim:.1f}x faster")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "diffusion.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
