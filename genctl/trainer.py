"""The one training loop, the same for every family.

For each step, the objective says which optimizer groups update and in which order
(``["d"] * 5 + ["g"]`` for WGAN); each update draws a fresh batch, computes that group's loss
under autocast, backpropagates and steps that group's optimizer. EMA, mixed precision, gradient
clipping, LR schedules, sample grids, checkpoints, evaluation and tracking are the trainer's and
configured by the recipe. Read top to bottom: ``train()`` is the whole story.
"""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import genctl
from genctl import checkpoint
from genctl.errors import BadInput, RunFailure
from genctl.recipe import OptimizerConfig, Recipe, TrainConfig, flatten, validate
from genctl.spec import DataInfo


@dataclass
class TrainResult:
    run_id: str | None
    step: int
    interrupted: bool
    metrics: dict[str, float]


# ---------------------------------------------------------------- the loop


def train(recipe: Recipe, *, resume: str | None = None, progress: bool = True) -> TrainResult:
    """Train ``recipe``; ``resume`` is a RUN_ID or checkpoint path to continue from."""
    from genctl.data import Loader, load_dataset

    cfg = recipe.train
    dist = _Distributed.from_env(cfg.device)
    device = dist.device
    ckpt = _load_resume(resume) if resume else None
    _seed_everything(cfg.seed)

    # Data: decoded once, held as uint8 tensors; the loader shards by rank and resumes exactly.
    dataset = load_dataset(recipe.data)
    info = dataset.info
    _check_task(recipe, info)
    if recipe.evaluate.every:  # no Inception weights offline: fail now, not at the first evaluation
        from genctl.evaluation import check_ready

        check_ready(recipe)
    loader = Loader(
        dataset,
        cfg.batch_size,
        seed=cfg.seed,
        device=device,
        flip=recipe.data.flip,
        rank=dist.rank,
        world_size=dist.world,
    )

    # Networks, their EMA copies, the objective and one optimizer per group.
    spec, config = recipe.spec, recipe.model
    nets = spec.build(config, info)
    for net in nets.values():
        net.to(device)
    if cfg.init_from and ckpt is None:
        _init_from(nets, cfg.init_from)
    dist.broadcast(nets)
    ema = _make_ema(nets, cfg)
    if cfg.compile:
        for net in nets.values():
            net.compile()
    objective = spec.objective(config, nets, info)
    _check_groups(objective, nets)
    optimizers = {
        g: _make_optimizer(cfg, g, nets, names, objective) for g, names in objective.groups.items()
    }
    group_params = {g: opt.param_groups[0]["params"] for g, opt in optimizers.items()}
    sampler = spec.sampler(config, {**nets, **ema}, info)
    step = 0
    run_id = None
    if ckpt is not None:
        step, run_id = ckpt["step"], ckpt.get("run_id")
        _restore(ckpt, nets, ema, optimizers, objective, loader)
    torch.manual_seed(cfg.seed + 1000 * dist.rank + step)  # ranks draw different noise
    if ckpt is not None and dist.world == 1:
        _set_rng(ckpt["rng"])  # single process: continue the exact random stream

    precision = _precision(cfg, device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision in ("bf16", "fp16")
        else nullcontext()
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if hasattr(objective, "grad_scaler"):  # gradient penalties scale their own autograd.grad
        objective.grad_scaler = scaler

    tracker = _start_tracking(recipe, spec, run_id) if dist.rank == 0 else None
    run_id = tracker.run_id if tracker else run_id
    preview = _preview_batch(dataset, cfg.grid_size, device, sampler)
    best = ckpt.get("best") if ckpt else None
    stop = _StopFlag()
    bar = _progress(cfg.steps, step, enabled=progress and dist.rank == 0)

    def save_checkpoint(path: str = checkpoint.LAST) -> None:
        if tracker is None:
            return
        payload = _state(
            recipe,
            spec,
            info,
            step,
            run_id,
            nets,
            ema,
            optimizers,
            objective,
            loader,
            best,
        )
        tracker.flush()
        tracker.write_artifact(path, lambda tmp: checkpoint.write(payload, tmp))

    sums: dict[str, torch.Tensor] = {}  # logged values accumulate on the device between reads
    counts: dict[str, int] = {}
    last_metrics: dict[str, float] = {}
    tick, images_seen = time.perf_counter(), 0
    status = "FAILED"
    try:
        stop.install()
        while step < cfg.steps and not stop.requested:
            _set_lr(optimizers, lr_factor(cfg, step))
            for group in objective.schedule(step):
                batch = loader.next()
                params = group_params[group]
                # Only this group's parameters need gradients: the others' backward is skipped
                # (gradients still flow through the discriminator to the generator).
                _trainable_only(group, group_params)
                with autocast:
                    loss, logs = objective.loss(group, batch, step)
                for p in params:
                    p.grad = None
                scaler.scale(loss).backward()
                dist.all_reduce_grads(params)
                if cfg.grad_clip:
                    scaler.unscale_(optimizers[group])
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizers[group])
                scaler.update()
                if hasattr(objective, "after_update"):
                    objective.after_update(group, step)
                _accumulate(sums, counts, f"loss_{group}", loss)
                for name, value in logs.items():
                    _accumulate(sums, counts, name, value)
                images_seen += cfg.batch_size * dist.world
            _update_ema(ema, nets, cfg, step)
            step += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                # The one host sync of the interval: read every accumulated value at once.
                now = time.perf_counter()
                values = _read(sums, counts)
                values["images_per_s"] = images_seen / max(now - tick, 1e-9)
                values["lr"] = optimizers[next(iter(optimizers))].param_groups[0]["lr"]
                tick, images_seen = now, 0
                last_metrics = {f"train/{k}": v for k, v in values.items()}
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in values.items() if k != "lr"}, refresh=False
                )
                if tracker:
                    tracker.log_metrics(last_metrics, step)
            if tracker and (step % cfg.sample_every == 0 or step == cfg.steps):
                _log_grid(tracker, sampler, spec, preview, cfg, step, nets)
            if tracker and recipe.evaluate.every and step % recipe.evaluate.every == 0:
                # rank 0 alone evaluates; the others wait for it at their next gradient all-reduce
                scores = _evaluate(recipe, spec, {**nets, **ema}, sampler, step, device, tracker)
                if scores:
                    tracker.log_metrics({f"eval/{k}": v for k, v in scores.items()}, step)
                    best = _keep_best(recipe, scores, best, step, save_checkpoint)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_checkpoint()

        save_checkpoint()
        if tracker and not stop.requested:
            payload = _final(recipe, spec, info, step, run_id, nets, ema)
            tracker.write_artifact(checkpoint.FINAL, lambda tmp: checkpoint.write(payload, tmp))
        status = "KILLED" if stop.requested else "FINISHED"
    finally:
        stop.uninstall()
        bar.close()
        if tracker:
            tracker.finish(status)
        dist.close()
    return TrainResult(run_id, step, stop.requested, last_metrics)


# ---------------------------------------------------------------- setup helpers


def _check_task(recipe: Recipe, info: DataInfo) -> None:
    want = recipe.spec.task
    ok = (
        info.task == want
        or (want == "unconditional" and info.task == "conditional")
        or (want == "conditional" and info.task == "unconditional" and info.num_classes > 0)
    )
    if want == "conditional" and info.num_classes == 0:
        ok = False
    if not ok:
        raise BadInput(
            f"plugin {recipe.plugin!r} trains on {want} data, but data.kind {recipe.data.kind!r} "
            f"gives {info.task} data" + (" without labels" if want == "conditional" else ""),
            "Pick a data.kind that matches the model (see `genctl plugins list`).",
        )


def _check_groups(objective, nets: dict[str, nn.Module]) -> None:
    for group, names in objective.groups.items():
        missing = [n for n in names if n not in nets]
        if missing:
            raise RunFailure(
                f"objective group {group!r} names unknown networks {missing}; built: {list(nets)}"
            )


def _make_optimizer(
    cfg: TrainConfig, group: str, nets, names, objective=None
) -> torch.optim.Optimizer:
    base = cfg.optimizer.model_dump()
    override = cfg.optimizers.get(group)
    if override:
        base.update({k: v for k, v in override.model_dump().items() if v is not None})
    if hasattr(objective, "optimizer_settings"):  # lazy regularization corrects lr and betas, say
        base = objective.optimizer_settings(group, dict(base))
    o = OptimizerConfig(**base)
    seen: set[int] = set()
    params = []
    for n in names:
        for p in nets[n].parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    if o.name == "adam":
        return torch.optim.Adam(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
    if o.name == "adamw":
        return torch.optim.AdamW(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
    if o.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay, momentum=o.momentum
        )
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The LR multiplier at ``step``: warmup, then constant / linear decay / cosine."""
    s = cfg.lr_schedule
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    total = cfg.steps
    if s.kind == "linear_decay":
        start = s.decay_start if s.decay_start >= 1 else s.decay_start * total
        if step < start:
            return 1.0
        frac = (step - start) / max(total - start, 1)
        return 1.0 - (1.0 - s.final_factor) * min(frac, 1.0)
    frac = (step - s.warmup_steps) / max(total - s.warmup_steps, 1)
    return s.final_factor + (1 - s.final_factor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _set_lr(optimizers: dict[str, torch.optim.Optimizer], factor: float) -> None:
    """The LR follows the step alone, so a resumed run has it exactly, with no scheduler state."""
    for opt in optimizers.values():
        for pg in opt.param_groups:
            pg.setdefault("initial_lr", pg["lr"])
            pg["lr"] = pg["initial_lr"] * factor


def _trainable_only(group: str, group_params: dict[str, list[torch.Tensor]]) -> None:
    for g, params in group_params.items():
        if g != group:
            for p in params:
                p.requires_grad_(False)
    for p in group_params[group]:
        p.requires_grad_(True)


def _make_ema(nets: dict[str, nn.Module], cfg: TrainConfig) -> dict[str, nn.Module]:
    unknown = [n for n in cfg.ema.networks if n not in nets]
    if unknown:
        raise BadInput(
            f"train.ema.networks names {unknown}, which this model does not have",
            f"Networks of this model: {', '.join(nets)}.",
        )
    return {
        f"{n}_ema": copy.deepcopy(nets[n]).eval().requires_grad_(False) for n in cfg.ema.networks
    }


@torch.no_grad()
def _update_ema(
    ema: dict[str, nn.Module], nets: dict[str, nn.Module], cfg: TrainConfig, step: int
) -> None:
    decay = cfg.ema.decay if step >= cfg.ema.start else 0.0
    for name, avg in ema.items():
        src = nets[name[: -len("_ema")]]
        # one fused kernel per network: avg += (1 - decay) * (src - avg)
        torch._foreach_lerp_(
            list(avg.parameters()), [p.detach() for p in src.parameters()], 1.0 - decay
        )
        for b_avg, b_src in zip(avg.buffers(), src.buffers(), strict=True):
            b_avg.copy_(b_src)


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device.type == "cuda" else "fp32"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _accumulate(sums: dict, counts: dict, name: str, value: torch.Tensor) -> None:
    v = value.detach().float()
    sums[name] = sums[name] + v if name in sums else v.clone()
    counts[name] = counts.get(name, 0) + 1


def _read(sums: dict, counts: dict) -> dict[str, float]:
    if not sums:
        return {}
    names = list(sums)
    values = torch.stack([sums[n] / counts[n] for n in names]).tolist()
    sums.clear()
    counts.clear()
    return dict(zip(names, values, strict=True))


# ---------------------------------------------------------------- grids, evaluation, tracking


def _preview_batch(dataset, n: int, device, sampler):
    if not hasattr(sampler, "preview"):
        return None
    from genctl.data import preview_batch

    return preview_batch(dataset, min(n, len(dataset)), device)


@torch.no_grad()
def _log_grid(tracker, sampler, spec, preview, cfg: TrainConfig, step: int, nets) -> None:
    from genctl.sampling import grid_image
    from genctl.spec import draw

    with _eval_mode(nets):
        gen = torch.Generator().manual_seed(cfg.seed)  # the same noise every time: comparable grids
        if preview is not None:
            images, nrow = sampler.preview(preview, gen)
        else:
            # a class-conditional sampler gets the classes in turn, as genctl sample gives them
            images = draw(sampler, cfg.grid_size, spec.sampler_options(), gen)
            nrow = int(math.ceil(math.sqrt(len(images))))
        tracker.log_image(grid_image(images, nrow), key="samples", step=step)


def _evaluate(recipe, spec, nets, sampler, step, device, tracker=None) -> dict[str, float]:
    from genctl.evaluation import evaluate_in_training

    with _eval_mode(nets):
        return evaluate_in_training(recipe, spec, nets, sampler, step, device, tracker=tracker)


@contextmanager
def _eval_mode(nets: dict[str, nn.Module]):
    """Networks in eval mode (batch-norm statistics, no dropout) for a while, then as they were."""
    modes = {name: net.training for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    try:
        yield
    finally:
        for name, net in nets.items():
            net.train(modes[name])


def _keep_best(recipe, scores, best, step, save_checkpoint):
    key = recipe.evaluate.best
    if not key or key not in scores:
        return best
    lower_is_better = not key.startswith(("isc", "precision", "recall", "psnr", "ssim"))
    value = scores[key]
    if best is None or (value < best["value"] if lower_is_better else value > best["value"]):
        best = {"metric": key, "value": float(value), "step": step}
        save_checkpoint(checkpoint.BEST)
    return best


def _start_tracking(recipe: Recipe, spec, run_id: str | None):
    from genctl.tracking import PLUGIN_TAG, Tracker

    t = recipe.tracking
    tracker = Tracker(
        experiment=t.experiment or recipe.plugin,
        run_name=t.run_name or recipe.name,
        uri=t.uri,
        run_id=run_id,
        retry_seconds=t.retry_seconds,
    )
    tracker.log_params(flatten(recipe.to_dict()))
    tracker.set_tags(
        {
            PLUGIN_TAG: recipe.plugin,
            "genctl.plugin_version": spec.version,
            "genctl.plugin_package": spec.package,
            "genctl.version": genctl.__version__,
            "genctl.recipe": recipe.path or "",
            "genctl.task": spec.task,
        }
    )
    tracker.write_artifact("recipe.yaml", lambda p: Path(p).write_text(recipe.to_yaml()))
    return tracker


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------- checkpoint state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def _header(recipe: Recipe, spec, info: DataInfo, step: int, run_id) -> dict[str, Any]:
    return {
        "genctl_version": genctl.__version__,
        "plugin": recipe.plugin,
        "plugin_version": spec.version,
        "recipe": recipe.to_dict(),
        "data_info": asdict(info),
        "step": step,
        "run_id": run_id,
    }


def _state(recipe, spec, info, step, run_id, nets, ema, optimizers, objective, loader, best):
    return {
        **_header(recipe, spec, info, step, run_id),
        "nets": {k: v.state_dict() for k, v in nets.items()},
        "ema": {k: v.state_dict() for k, v in ema.items()},
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "objective": objective.state_dict(),
        "data": loader.state_dict(),
        "rng": _rng_state(),
        "best": best,
    }


def _final(recipe, spec, info, step, run_id, nets, ema):
    return {
        **_header(recipe, spec, info, step, run_id),
        "nets": {k: v.state_dict() for k, v in nets.items()},
        "ema": {k: v.state_dict() for k, v in ema.items()},
    }


def _restore(ckpt, nets, ema, optimizers, objective, loader) -> None:
    _load_nets(nets, ckpt["nets"], "checkpoint")
    _load_nets(ema, ckpt.get("ema", {}), "checkpoint (EMA)")
    for k, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][k])
    objective.load_state_dict(ckpt["objective"])
    loader.load_state_dict(ckpt["data"])


def _load_nets(nets: dict[str, nn.Module], states: dict[str, Any], what: str) -> None:
    for name, net in nets.items():
        if name not in states:
            raise BadInput(
                f"the {what} has no weights for network {name!r} (it has {list(states)})"
            )
        try:
            net.load_state_dict(states[name])
        except RuntimeError as exc:
            raise BadInput(
                f"the {what}'s weights for {name!r} do not fit this model: {str(exc).splitlines()[0]}",
                "The recipe's model: or data: settings differ from the run that wrote it.",
            ) from None


def resolve_checkpoint(ref: str, prefer: tuple[str, ...] = (checkpoint.LAST,)) -> Path:
    """A checkpoint path from a path or a RUN_ID (its first existing artifact of ``prefer``)."""
    p = Path(ref)
    if p.suffix == ".pt" or p.exists():
        if not p.is_file():
            raise BadInput(
                f"checkpoint {ref!r} not found", "Give a .pt file or a run id (`genctl runs list`)."
            )
        return p
    from genctl.tracking import download, get_run

    run = get_run(ref)
    for artifact in prefer:
        path = download(run, artifact)
        if path is not None:
            return path
    raise BadInput(
        f"run {ref} has no checkpoint ({' or '.join(prefer)})",
        "It may have failed before its first checkpoint; train it again.",
    )


def _load_resume(ref: str) -> dict[str, Any]:
    return checkpoint.load(resolve_checkpoint(ref))


def load_resume_recipe(ref: str, overrides: list[str]) -> tuple[Recipe, str]:
    """The recipe stored in the checkpoint of ``ref``, with ``overrides`` applied."""
    from genctl.recipe import apply_overrides

    path = resolve_checkpoint(ref)
    ckpt = checkpoint.load(path)
    return validate(apply_overrides(ckpt["recipe"], overrides), str(path)), str(path)


def _init_from(nets: dict[str, nn.Module], ref: str) -> None:
    """Fine-tuning: start from a trained model's weights (EMA weights where it has them)."""
    ckpt = checkpoint.load(resolve_checkpoint(ref, (checkpoint.FINAL, checkpoint.LAST)))
    states = dict(ckpt["nets"])
    for k, v in ckpt.get("ema", {}).items():
        states[k[: -len("_ema")]] = v
    _load_nets(nets, states, f"init_from {ref}")


# ---------------------------------------------------------------- Ctrl-C and SIGTERM


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop after the current step, save and exit."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# ---------------------------------------------------------------- torchrun / DDP


class _Distributed:
    """Data-parallel training under ``torchrun``: gradients averaged across ranks, rank 0 records."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    @classmethod
    def from_env(cls, device_setting: str) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = _pick_device(device_setting, local)
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, device)

    def broadcast(self, nets: dict[str, nn.Module]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for net in nets.values():
            for t in list(net.parameters()) + list(net.buffers()):
                dist.broadcast(t.data, src=0)

    def all_reduce_grads(self, params: list[torch.Tensor]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _pick_device(setting: str, local_rank: int = 0) -> torch.device:
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise BadInput(
            f"train.device: {setting!r} is not a device", "Use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(
            "train.device is cuda but no CUDA GPU is available", "Use train.device=auto or cpu."
        )
    return device
