"""Diffusion benchmarks, side by side in one run on one machine.

1. Training throughput (images/s: forward, backward and an Adam step on the epsilon-MSE loss) of
   genctl_ddpm's UNet against diffusers' ``UNet2DModel`` configured to the same layout (levels,
   widths, residual blocks per level, attention level): the same parameter count, to the unit.
   Each also in the channels-last memory format, and genctl's compiled as ``train.compile: true``
   compiles it (``nn.Module.compile`` in place; eager and channels-last). The rows are timed in
   alternation (A B C ... A B C ...) so a busy machine slows all alike; the table gives the
   median of the rounds. A compiled row's first step compiles: its seconds are reported apart
   (compile_s), and the rounds time the steady state after a second warm-up step.
2. Sampling time of genctl_ddpm's DDIM (50 steps) against ancestral DDPM (all 1000 steps).
3. Sampling throughput (images/s) of DDIM-50 and DPM-Solver++(2M)-20 at batch 256: before
   (no_grad, the contiguous layout), with torch.inference_mode, and with inference_mode and
   channels-last inputs (and bf16 autocast on CUDA; and a compiled UNet with --compile-sampling),
   in alternating rounds; the ratios are against before.

    .venv/bin/python bench/diffusion.py                   # CIFAR-sized, CPU, 1 thread
    .venv/bin/python bench/diffusion.py --device cuda --batch 128 --threads 0

Prints tables and writes bench/results/diffusion.json. Needs diffusers (the dev extra).
"""

from __future__ import annotations

import argparse
import copy
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
CL = torch.channels_last


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


def _sampler(net, args) -> DiffusionSampler:
    config = DDPMConfig(base_channels=args.width, channel_mults=[1, 2, 2], norm_groups=8)
    return DiffusionSampler(
        config, {"unet": net}, DataInfo("unconditional", args.channels, args.size)
    )


def sampling_seconds(net, args, device, method: str, steps: int, n: int | None = None) -> float:
    sampler = _sampler(net, args)
    opts = DDPMSampleOptions(method=method, steps=steps)
    _sync(device)
    start = time.perf_counter()
    sampler.sample(n or args.sample_n, opts, torch.Generator().manual_seed(0))
    _sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- 1. training


def train_section(args, device) -> tuple[dict, dict]:
    torch.manual_seed(0)
    made = {
        "genctl": ours(args).to(device),
        "diffusers": peer(args).to(device),
        "genctl_channels_last": ours(args).to(device, memory_format=CL),
        "diffusers_channels_last": peer(args).to(device, memory_format=CL),
    }
    plain = lambda net, x, t: net(x, t)  # noqa: E731
    sample = lambda net, x, t: net(x, t).sample  # noqa: E731
    nhwc = lambda net, x, t: net(x.contiguous(memory_format=CL), t)  # noqa: E731
    nhwc_sample = lambda net, x, t: net(x.contiguous(memory_format=CL), t).sample  # noqa: E731
    calls = {
        "genctl": plain,
        "diffusers": sample,
        "genctl_channels_last": nhwc,
        "diffusers_channels_last": nhwc_sample,
    }
    if args.compile:  # as train.compile compiles: nn.Module.compile, in place
        made["genctl_compiled"] = ours(args).to(device)
        made["genctl_compiled_channels_last"] = ours(args).to(device, memory_format=CL)
        calls["genctl_compiled"], calls["genctl_compiled_channels_last"] = plain, nhwc
        for name in ("genctl_compiled", "genctl_compiled_channels_last"):
            made[name].compile()
    compile_s: dict[str, float] = {}
    for name, net in made.items():  # warm-up: allocator, kernels, lazy inits (and compiling)
        start = time.perf_counter()
        train_round(net, calls[name], args, device, 1)
        if "compiled" in name:
            compile_s[name] = time.perf_counter() - start
            print(f"{name}: first step (compiling) {compile_s[name]:.1f} s")
            train_round(net, calls[name], args, device, 1)
    rates: dict[str, list[float]] = {name: [] for name in made}
    for i in range(args.rounds):
        for name, net in made.items():
            rates[name].append(train_round(net, calls[name], args, device, args.steps))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()))
    train = {
        name: {
            "params": params(net),
            "images_per_s_median": statistics.median(r),
            "images_per_s_rounds": r,
            **({"compile_s": compile_s[name]} if name in compile_s else {}),
        }
        for (name, net), r in zip(made.items(), rates.values(), strict=True)
    }
    return train, made


# ---------------------------------------------------------------- 3. sampling throughput


def rate_variants(device: torch.device, compile_sampling: bool) -> dict[str, dict]:
    """name -> how the sampler runs: inference_mode, sampler options, a compiled UNet."""
    variants = {
        "before": {"inference_mode": False, "options": {}},
        "inference_mode": {"inference_mode": True, "options": {}},
        "inference_mode_channels_last": {
            "inference_mode": True,
            "options": {"channels_last": True},
        },
    }
    if device.type == "cuda":
        variants["inference_mode_channels_last_bf16"] = {
            "inference_mode": True,
            "options": {"channels_last": True, "precision": "bf16"},
        }
        variants["inference_mode_bf16"] = {
            "inference_mode": True,
            "options": {"precision": "bf16"},
        }
    if compile_sampling:
        variants["inference_mode_compiled"] = {
            "inference_mode": True,
            "options": {},
            "compiled": True,
        }
    return variants


def images_per_s(sampler, variant, method, steps, batch, device) -> float:
    sampler.inference_mode = variant["inference_mode"]
    opts = DDPMSampleOptions(method=method, steps=steps, **variant["options"])
    _sync(device)
    start = time.perf_counter()
    sampler.sample(batch, opts, torch.Generator().manual_seed(0))
    _sync(device)
    return batch / (time.perf_counter() - start)


def rate_section(unet, args, device) -> dict:
    methods = {f"ddim_{args.ddim_steps}": ("ddim", args.ddim_steps)}
    methods[f"dpmpp_2m_{args.dpm_steps}"] = ("dpmpp_2m", args.dpm_steps)
    variants = rate_variants(device, args.compile_sampling)
    samplers = {}
    warmup_s = {}
    for name, variant in variants.items():
        net = unet
        if variant.get("compiled"):
            net = copy.deepcopy(unet)
            net.compile()
        samplers[name] = _sampler(net, args)
        start = time.perf_counter()  # warm-up: allocator, kernels (compiling: both methods)
        for method, _ in methods.values():
            images_per_s(samplers[name], variant, method, 2, args.rate_batch, device)
        warmup_s[name] = time.perf_counter() - start
        print(f"sampling warm-up {name}: {warmup_s[name]:.1f} s")
    rates = {m: {v: [] for v in variants} for m in methods}
    for i in range(args.rate_rounds):
        for m, (method, steps) in methods.items():
            for name, variant in variants.items():
                r = images_per_s(samplers[name], variant, method, steps, args.rate_batch, device)
                rates[m][name].append(r)
            print(
                f"sampling round {i + 1} {m}: "
                + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates[m].items())
            )
    out = {"batch": args.rate_batch, "rounds": args.rate_rounds, "warmup_s": warmup_s}
    out["methods"] = {}
    for m, by_variant in rates.items():
        before = statistics.median(by_variant["before"])
        out["methods"][m] = {
            name: {
                "images_per_s_median": statistics.median(r),
                "images_per_s_rounds": r,
                "ratio_to_before": statistics.median(r) / before,
            }
            for name, r in by_variant.items()
        }
    return out


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
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="no compiled rows")
    ap.add_argument("--no-train", action="store_true", help="skip the training table")
    ap.add_argument("--sample-n", type=int, default=8, help="images per sampling run")
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--no-sampling", action="store_true", help="skip DDIM-50 vs DDPM-1000")
    ap.add_argument("--rate-batch", type=int, default=256, help="images/s: batch size")
    ap.add_argument("--rate-rounds", type=int, default=2, help="images/s: alternating rounds")
    ap.add_argument("--ddim-steps", type=int, default=50, help="images/s: DDIM steps")
    ap.add_argument("--dpm-steps", type=int, default=20, help="images/s: DPM-Solver++ steps")
    ap.add_argument("--compile-sampling", action="store_true", help="images/s: a compiled row")
    ap.add_argument("--no-rate", action="store_true", help="skip the images/s table")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    ap.add_argument(
        "--update",
        action="store_true",
        help="keep the sections of the JSON this run does not measure (each keeps its setup)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = f"{args.size}x{args.size}x{args.channels}"
    threads = torch.get_num_threads()
    out = RESULTS / "diffusion.json"
    result = json.loads(out.read_text()) if args.update and out.is_file() else {}
    result |= {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "device": str(device),
            "threads": threads,
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
        },
        "setup": vars(args),
    }

    def save(section: str) -> None:  # after each section: a run cut short keeps what it measured
        result.setdefault("section_setup", {})[section] = {
            "setup": vars(args),
            "machine": result["machine"],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))

    if not args.no_train:
        train, _ = train_section(args, device)
        diffusers = train["diffusers"]["images_per_s_median"]
        result["train"] = train
        result["train_speedup_genctl_over_diffusers"] = (
            train["genctl"]["images_per_s_median"] / diffusers
        )
        result["train_ratio_to_diffusers"] = {
            name: row["images_per_s_median"] / diffusers for name, row in train.items()
        }
        save("train")
        print(f"\nTraining, {shape}, batch {args.batch}, {device}, {threads} thread(s)")
        print(f"(median of {args.rounds} alternating rounds of {args.steps} steps)")
        print(f"{'UNet':<32}{'params':>12}{'images/s':>10}{'/diffusers':>12}{'compile s':>11}")
        for name, row in train.items():
            ratio = result["train_ratio_to_diffusers"][name]
            comp = f"{row['compile_s']:.1f}" if "compile_s" in row else ""
            print(
                f"{name:<32}{row['params']:>12,}{row['images_per_s_median']:>10.1f}"
                f"{ratio:>11.2f}x{comp:>11}"
            )

    torch.manual_seed(0)
    unet = ours(args).to(device).eval()
    if not args.no_sampling:
        with torch.no_grad():
            sampling_seconds(unet, args, device, "ddim", 2)  # warm-up
            ddim = sampling_seconds(unet, args, device, "ddim", 50)
            print(f"DDIM-50: {ddim:.1f} s")
            ddpm = sampling_seconds(unet, args, device, "ddpm", args.ddpm_steps)
        result["sampling"] = {
            "images": args.sample_n,
            "ddim_50_s": ddim,
            f"ddpm_{args.ddpm_steps}_s": ddpm,
            "ddim_speedup": ddpm / ddim,
        }
        save("sampling")
        print(f"\nSampling {args.sample_n} images with genctl's UNet")
        print(f"{'method':<12}{'seconds':>12}{'s/image':>12}")
        print(f"{'DDIM-50':<12}{ddim:>12.1f}{ddim / args.sample_n:>12.2f}")
        print(f"{f'DDPM-{args.ddpm_steps}':<12}{ddpm:>12.1f}{ddpm / args.sample_n:>12.2f}")
        print(f"DDIM-50 is {ddpm / ddim:.1f}x faster")

    if not args.no_rate:
        rate = rate_section(unet, args, device)
        result["sampling_rate"] = rate
        save("sampling_rate")
        print(f"\nSampling throughput, {shape}, batch {args.rate_batch}, {device}, {threads} thr.")
        print(f"(median of {args.rate_rounds} alternating rounds)")
        print(f"{'method':<16}{'variant':<36}{'images/s':>10}{'/before':>10}")
        for m, rows in rate["methods"].items():
            for name, row in rows.items():
                print(
                    f"{m:<16}{name:<36}{row['images_per_s_median']:>10.2f}"
                    f"{row['ratio_to_before']:>9.2f}x"
                )

    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
