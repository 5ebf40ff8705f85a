"""The one training loop, the same for every family.

For each step, the objective says which optimizer groups update and in which order
(``["d"] * 5 + ["g"]`` for WGAN); each update draws a fresh batch, computes that group's loss
under autocast, backpropagates and steps that group's optimizer. EMA, mixed precision, gradient
clipping, LR schedules, sample grids, checkpoints, evaluation and tracking are the trainer's and
configured by the recipe. Read top to bottom: ``train()`` is the whole story.
"""

from __future__ import annotations

import errno
import math
import random
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import genctl
from genctl import checkpoint, interrupts
from genctl.distributed import Distributed
from genctl.distributed import pick_device as _pick_device  # noqa: F401 (the CLIs import it)
from genctl.ema import BatchNormRefresh, EMAUpdate, make_ema, update_ema
from genctl.errors import BadInput, GenctlError, RunFailure
from genctl.interrupts import Interrupted
from genctl.recipe import OptimizerConfig, Recipe, TrainConfig, flatten
from genctl.resolve import init_from, load_nets, resolve_checkpoint, step_checkpoint
from genctl.spec import DataInfo
from genctl.tracking import FAILURE_TAG  # set on a failed run: why it failed


@dataclass
class TrainResult:
    run_id: str | None
    step: int
    interrupted: bool
    metrics: dict[str, float]


class Diverged(RunFailure):
    """A loss or the weights became NaN or infinite: the run stops, and nothing is saved from them."""

    def __init__(self, message: str, hint: str, reason: str):
        super().__init__(message, hint)
        self.reason = reason  # short, for the run's genctl.failure tag


class DiskFull(RunFailure):
    """A checkpoint did not fit on the disk; the previous one is kept."""


# ---------------------------------------------------------------- the loop


def train(recipe: Recipe, *, resume: str | None = None, progress: bool = True) -> TrainResult:
    """Train ``recipe``; ``resume`` is a RUN_ID or checkpoint path to continue from.

    Ctrl-C or SIGTERM stops it within seconds and saves the state of the last completed step; a
    second one stops it at once without saving (see :mod:`genctl.interrupts`). A NaN or infinite
    loss stops it with :class:`Diverged` before any checkpoint holds non-finite weights.
    """
    from genctl.threads import training_threads

    # an interrupt abandons the setup; the cores are shared with the other trainings running
    with interrupts.handled(abandon=True) as signals, training_threads(recipe.train.threads):
        return _train(recipe, resume, progress, signals)


def _train(
    recipe: Recipe, resume: str | None, progress: bool, signals: interrupts.Signals
) -> TrainResult:
    from genctl.data import make_loader, open_dataset

    cfg = recipe.train
    dist = Distributed.from_env(cfg.device)  # torchrun: this rank's device and process group
    device = dist.device
    resume_path = resolve_checkpoint(resume) if resume else None
    ckpt = checkpoint.load(resume_path) if resume_path else None
    if ckpt is not None:
        checkpoint.check_family(ckpt, recipe.plugin, resume_path)
    _seed_everything(cfg.seed)

    # Data: decoded once into uint8 tensors, or streamed from the files by DataLoader workers
    # when too large (genctl.data.stream); the loader shards by rank and resumes exactly.
    dataset = open_dataset(recipe.data)
    info = dataset.info
    _check_task(recipe, info)
    if recipe.evaluate.every:  # no Inception weights offline: fail now, not at the first evaluation
        from genctl.evaluation import check_ready

        check_ready(recipe)

    # Networks, their EMA copies, the objective and one optimizer per group.
    spec, config = recipe.spec, recipe.model
    nets = spec.build(config, info)
    for net in nets.values():
        net.to(device)
    if cfg.init_from and ckpt is None:
        init_from(nets, cfg.init_from)
    dist.broadcast(nets)
    ema = _make_ema(nets, cfg)
    ema_norms = BatchNormRefresh(ema, nets)  # EMA batch-norm statistics: those of its weights
    objective = spec.objective(config, nets, info)
    _check_groups(objective, nets)
    if cfg.compile:  # the trained networks, in place: state_dict keys and EMA copies as eager
        from genctl.compiling import compile_networks

        trained = {n: nets[n] for names in objective.groups.values() for n in names}
        compile_networks(trained, cfg.compile, device)
    # A model that trains on a transform of the data (latent diffusion: its frozen autoencoder's
    # latents) makes it once here, and the loader batches that instead of the images.
    batches = objective.prepare_data(dataset) if hasattr(objective, "prepare_data") else dataset
    loader = make_loader(
        batches,
        cfg.batch_size,
        seed=cfg.seed,
        device=device,
        flip=recipe.data.flip,
        rank=dist.rank,
        world_size=dist.world,
    )
    optimizers = {
        g: _make_optimizer(cfg, g, nets, names, objective) for g, names in objective.groups.items()
    }
    group_params = {g: opt.param_groups[0]["params"] for g, opt in optimizers.items()}
    dist.watch(group_params)  # torchrun: gradients averaged in buckets during the backward
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

    # From here on, an interrupt lets the step in progress finish and the run saves a checkpoint.
    signals.end_abandonable()
    tracker = _start_tracking(recipe, spec, run_id, dataset) if dist.rank == 0 else None
    run_id = tracker.run_id if tracker else run_id
    preview = _preview_batch(dataset, cfg.grid_size, device, sampler)
    best = ckpt.get("best") if ckpt else None
    bar = _progress(cfg.steps, step, enabled=progress and dist.rank == 0)

    # Non-finite values. nonfinite=stop: each update's loss is kept on the device with its step
    # (no host sync, no kernel); the log interval's read and every checkpoint check them and name
    # the first step whose loss was NaN/inf. nonfinite=skip: each update is checked on the host
    # before the optimizer steps (one sync per update, the price of skipping) and a non-finite
    # one is dropped and counted.
    skip_nonfinite = cfg.nonfinite == "skip"
    logged = _Logged()  # the values logged since the last read, on the device
    ema_update = EMAUpdate(ema, nets)  # the tensors it averages, found once
    counted = (ckpt.get("nonfinite") if ckpt else None) or {}
    skipped, streak = int(counted.get("skipped", 0)), int(counted.get("streak", 0))
    # The newest checkpoint known to be finite: what a diverged run names to resume from.
    good = {"step": step, "where": str(resume_path)} if ckpt else None

    def diverged(what: str, at: int, why: str = "") -> Diverged:
        reason = f"non-finite {what} at step {at}{why}"
        if good is None:
            hint = "No checkpoint was written before it; train again with a smaller "
            hint += "train.optimizer.lr or with train.grad_clip."
        else:
            hint = f"The last good checkpoint is step {good['step']}: {good['where']}. "
            hint += "Resume from it with a smaller learning rate or gradient clipping: genctl "
            hint += f"train --resume {run_id or good['where']} train.optimizer.lr=... "
            hint += "train.grad_clip=1.0 (or train.nonfinite=skip drops non-finite updates)."
        return Diverged(f"training diverged: {reason}; nothing was saved from it", hint, reason)

    def save_checkpoint(path: str = checkpoint.LAST) -> None:
        nonlocal good
        # Never a checkpoint of non-finite weights: one host sync over all of them (every rank
        # checks: their weights are the same, so they agree without a collective).
        bad = _nonfinite_state(nets, ema, logged)
        if bad:
            steps = logged.first_nonfinite()
            at = min(steps.values()) if steps else step
            losses = [f"loss_{g}" for g, s in steps.items() if s == at]
            raise diverged(", ".join(losses or bad), at)
        if tracker is None:
            return
        ema_norms.refresh()  # the checkpoint and the final model hold them
        if path == checkpoint.LAST and good is not None and good["step"] == step:
            return  # written at this step already (an interrupt came during that write)
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
        payload["nonfinite"] = {"skipped": skipped, "streak": streak}
        tracker.flush()
        previous = good["step"] if good is not None and path == checkpoint.LAST else None
        _write_checkpoint(tracker, path, payload, step, previous)
        if path == checkpoint.LAST:
            local = tracker.artifact_dir()
            where = str(local / path) if local else f"{path} of run {run_id}"
            good = {"step": step, "where": where}
            _retain(tracker, cfg, payload, step)

    last_metrics: dict[str, float] = {}
    tick, images_seen = time.perf_counter(), 0
    status = "FAILED"
    try:
        while step < cfg.steps and not signals.requested:
            _set_lr(optimizers, lr_factor(cfg, step))
            dropped: list[str] = []  # groups whose update was non-finite (nonfinite=skip)
            for group in objective.schedule(step):
                params = group_params[group]
                # Only this group's parameters need gradients: the others' backward is skipped
                # (gradients still flow through the discriminator to the generator).
                _trainable_only(group, group_params)
                for p in params:
                    p.grad = None
                # train.accumulate K: K batches, each loss divided by K, then one update: the
                # gradient of a K-times larger batch, as losses are means over their batch.
                # Under torchrun the last backward averages the gradients across ranks.
                sync = dist.reducing(group)
                loss, logs = _backward_accumulated(
                    objective, group, loader, step, cfg.accumulate, autocast, scaler, sync
                )
                if cfg.grad_clip:
                    scaler.unscale_(optimizers[group])
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                finite = not skip_nonfinite or _finite_update(loss, params, dist)
                if finite or scaler.is_enabled():  # fp16: the scaler drops overflowed steps itself
                    scaler.step(optimizers[group])
                    scaler.update()
                images_seen += cfg.batch_size * cfg.accumulate * dist.world
                if not finite:
                    dropped.append(group)
                    continue
                if hasattr(objective, "after_update"):
                    objective.after_update(group, step)
                logged.add(f"loss_{group}", loss, step + 1, copy=False)
                for name, value in logs.items():
                    logged.add(name, value, step + 1)
            # weights and batch-norm statistics averaged alike (see _update_ema)
            ema_update(_ema_decay(cfg, step))
            ema_norms.updated()
            step += 1
            bar.update(1)
            if skip_nonfinite:
                skipped += bool(dropped)
                streak = streak + 1 if dropped else 0
                if streak >= cfg.nonfinite_limit:
                    what = ", ".join(f"loss or gradients of group {g}" for g in dropped)
                    raise diverged(what, step, f", {streak} steps in a row (train.nonfinite_limit)")

            if step % cfg.log_every == 0 or step == cfg.steps:
                # The one host sync of the interval: read every accumulated value at once.
                now = time.perf_counter()
                values, steps = logged.read()
                values["images_per_s"] = images_seen / max(now - tick, 1e-9)
                values["lr"] = optimizers[next(iter(optimizers))].param_groups[0]["lr"]
                if skip_nonfinite:
                    values["skipped_steps"] = skipped
                tick, images_seen = now, 0
                last_metrics = {f"train/{k}": v for k, v in values.items()}
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in values.items() if k != "lr"}, refresh=False
                )
                if tracker:
                    tracker.log_metrics(last_metrics, step)
                bad = [
                    k for k, v in values.items() if k.startswith("loss_") and not math.isfinite(v)
                ]
                if dist.any(bool(bad)):
                    at = min(steps.values()) if steps else step
                    firsts = [f"loss_{g}" for g, s in steps.items() if s == at]
                    raise diverged(", ".join(firsts or bad or ["loss (on another rank)"]), at)
            try:  # an interrupt abandons a grid or an evaluation (they are read-only)
                if tracker and (step % cfg.sample_every == 0 or step == cfg.steps):
                    ema_norms.refresh()
                    _log_grid(tracker, sampler, spec, preview, cfg, step, nets)
                if tracker and recipe.evaluate.every and step % recipe.evaluate.every == 0:
                    # rank 0 alone evaluates; the others wait for it at their next all-reduce
                    ema_norms.refresh()
                    scores = _evaluate(
                        recipe, spec, {**nets, **ema}, sampler, step, device, tracker
                    )
                    if scores:
                        tracker.log_metrics({f"eval/{k}": v for k, v in scores.items()}, step)
                        best = _keep_best(recipe, scores, best, step, save_checkpoint)
            except Interrupted:
                if signals.forced:
                    raise
                break  # the state of this step, which is complete, is saved below
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_checkpoint()

        save_checkpoint()  # checks the weights: the final model below has the same ones
        if tracker and not signals.requested:
            payload = _final(recipe, spec, info, step, run_id, nets, ema)
            _write_checkpoint(tracker, checkpoint.FINAL, payload, step, None)
            if recipe.tracking.log_model:  # the final model as MLflow serves it (a pyfunc)
                from genctl.logged_model import requirements

                tracker.log_model(checkpoint.FINAL, step, requirements(spec))
        status = "KILLED" if signals.requested else "FINISHED"
    except Interrupted:
        status = "KILLED"
        kept = f"the last checkpoint is step {good['step']}" if good else "no checkpoint was saved"
        raise Interrupted(
            f"stopped at once by a second {signals.name} at step {step}, without saving; {kept}"
        ) from None
    except Exception as exc:
        if tracker:
            _tag_failure(tracker, exc)
        raise
    finally:
        ema_norms.close()
        bar.close()
        if tracker:
            tracker.finish(status)
        dist.close(together=status == "FINISHED")
    return TrainResult(run_id, step, signals.requested, last_metrics)


# ---------------------------------------------------------------- setup helpers


def _backward_accumulated(
    objective, group: str, loader, step: int, k: int, autocast, scaler, sync=None
):
    """Backward through ``k`` batches of ``group``'s loss, each scaled by 1/k (gradients add up
    in ``.grad``); returns the mean loss and the mean of each logged value. ``sync`` (a context,
    :meth:`Distributed.reducing`) holds the last backward alone: the ranks exchange gradients
    once per update, never for the micro-batches before it."""
    sync = sync if sync is not None else nullcontext()
    if k == 1:
        with sync:
            with autocast:
                loss, logs = objective.loss(group, loader.next(), step)
            scaler.scale(loss).backward()
        return loss, logs
    total, sums = None, {}
    for i in range(k):
        with sync if i == k - 1 else nullcontext():
            with autocast:
                loss, logs = objective.loss(group, loader.next(), step)
            scaler.scale(loss / k).backward()
        part = loss.detach().float() / k
        total = part if total is None else total + part
        for name, value in logs.items():
            value = torch.as_tensor(value).detach().float() / k
            sums[name] = value if name not in sums else sums[name] + value
    return total, sums


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
    """Only ``group``'s parameters require gradients; a flag already right is left alone (reading
    it costs a tenth of setting it, and most are right: those of the groups not in the step)."""
    for g, params in group_params.items():
        if g != group:
            for p in params:
                if p.requires_grad:
                    p.requires_grad_(False)
    for p in group_params[group]:
        if not p.requires_grad:
            p.requires_grad_(True)


def _make_ema(nets: dict[str, nn.Module], cfg: TrainConfig) -> dict[str, nn.Module]:
    unknown = [n for n in cfg.ema.networks if n not in nets]
    if unknown:
        raise BadInput(
            f"train.ema.networks names {unknown}, which this model does not have",
            f"Networks of this model: {', '.join(nets)}.",
        )
    return make_ema(nets, cfg.ema.networks)


def _update_ema(
    ema: dict[str, nn.Module], nets: dict[str, nn.Module], cfg: TrainConfig, step: int
) -> None:
    # weights and batch-norm statistics averaged alike: the live network's statistics do not
    # fit the averaged weights (see genctl/ema.py)
    update_ema(ema, nets, _ema_decay(cfg, step))


def _ema_decay(cfg: TrainConfig, step: int) -> float:
    return cfg.ema.decay if step >= cfg.ema.start else 0.0  # before start: copies


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device.type == "cuda" else "fp32"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _finite_update(loss: torch.Tensor, params: list[torch.Tensor], dist) -> bool:
    """Whether the loss and gradients of an update are finite on every rank (a host sync)."""
    flags = [torch.isfinite(loss.detach()).all()]
    grads = [p.grad for p in params if p.grad is not None and p.grad.numel()]
    if grads:
        norms = torch._foreach_norm(grads, math.inf)  # max |g| per tensor: NaN/inf if any is
        flags.append(torch.isfinite(torch.stack([n.float() for n in norms])).all())
    return not dist.any(not bool(torch.stack(flags).all()))


def _nonfinite_state(nets: dict, ema: dict, logged: _Logged) -> list[str]:
    """The networks (weights and buffers) and the losses not yet logged that hold NaN or inf."""
    names, flags = [], []
    for name, values in logged.losses().items():
        names.append(name)
        flags.append(torch.isfinite(values).all())
    for name, net in {**nets, **ema}.items():
        tensors = [
            t.detach()
            for t in (*net.parameters(), *net.buffers())
            if t.is_floating_point() and t.numel()
        ]
        if tensors:
            norms = torch._foreach_norm(tensors, math.inf)
            names.append(f"weights of {name}")
            flags.append(torch.isfinite(torch.stack([n.float() for n in norms])).all())
    if not flags:
        return []
    ok = torch.stack(flags).tolist()  # the one host sync of a checkpoint's check
    return [n for n, fine in zip(names, ok, strict=True) if not fine]


class _Logged:
    """The values the updates logged since the last read (each group's loss, the objective's
    logs), kept on the device with their steps, and no host sync. A loss is kept as it is, with
    no kernel: a running sum and a running first non-finite step cost four small kernels per
    update. A value of the objective's logs is copied (one kernel, as the running sum was): the
    objective may log a tensor it later changes in place. Every ``FOLD`` values of a name are
    stacked into one tensor, so a long log interval holds few tensors; the read averages them
    and brings them to the host at once."""

    FOLD = 128

    def __init__(self):
        self._chunks: dict[str, list[torch.Tensor]] = {}  # stacked values, oldest first
        self._pending: dict[str, list[torch.Tensor]] = {}  # not stacked yet
        self._steps: dict[str, list[int]] = {}  # the step of each value, in the same order

    def add(self, name: str, value: torch.Tensor, step: int, *, copy: bool = True) -> None:
        """Keep ``value`` of update ``step``; ``copy=False``: ``value`` is the update's own
        result (its loss), which nothing changes afterwards."""
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = []
            self._chunks[name], self._steps[name] = [], []
        v = value.detach().float()  # of a float32 value: the value itself, no kernel
        if copy and v.data_ptr() == value.data_ptr():
            v = v.clone()
        pending.append(v)
        self._steps[name].append(step)
        if len(pending) == self.FOLD:
            self._chunks[name].append(torch.stack(pending))
            pending.clear()

    def _values(self, name: str) -> torch.Tensor:
        """Every value of ``name`` since the last read, in order, as one 1-D tensor."""
        pending = self._pending[name]
        parts = self._chunks[name] + ([torch.stack(pending)] if pending else [])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def losses(self) -> dict[str, torch.Tensor]:
        """``loss_<group>`` -> its values since the last read (for the checkpoint's check)."""
        return {n: self._values(n) for n in self._pending if n.startswith("loss_")}

    def first_nonfinite(self) -> dict[str, int]:
        """Group -> the first step since the last read whose loss was NaN or inf, for the
        groups that had one (a host sync: asked only when something was not finite)."""
        firsts = {}
        for name, values in self.losses().items():
            ok = torch.isfinite(values).tolist()
            if not all(ok):
                firsts[name[len("loss_") :]] = self._steps[name][ok.index(False)]
        return firsts

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        """The mean of each name since the last read (the one host sync of a log interval), and
        :meth:`first_nonfinite` when a loss's mean is not finite; then starts afresh."""
        if not self._pending:
            return {}, {}
        names = list(self._pending)
        means = torch.stack([self._values(n).mean() for n in names]).tolist()
        values = dict(zip(names, means, strict=True))
        bad = any(n.startswith("loss_") and not math.isfinite(v) for n, v in values.items())
        firsts = self.first_nonfinite() if bad else {}
        self._chunks.clear()
        self._pending.clear()
        self._steps.clear()
        return values, firsts


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

    with _eval_mode(nets), _training_rng_kept(nets), interrupts.abandonable():
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

    with _eval_mode(nets), _training_rng_kept(nets):
        return evaluate_in_training(recipe, spec, nets, sampler, step, device, tracker=tracker)


@contextmanager
def _training_rng_kept(nets: dict[str, nn.Module]):
    """Grids and evaluations leave the training's random streams as they found them, so an
    abandoned one (or another sample_every) changes nothing in the training."""
    params = (p for net in nets.values() for p in net.parameters())
    device = next(params, torch.empty(0)).device
    devices = [device.index or 0] if device.type == "cuda" else []
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state)


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
    lower_is_better = not key.startswith(("isc", "precision", "recall", "psnr", "ssim", "accuracy"))
    value = scores[key]
    if best is None or (value < best["value"] if lower_is_better else value > best["value"]):
        best = {"metric": key, "value": float(value), "step": step}
        save_checkpoint(checkpoint.BEST)
    return best


def _write_checkpoint(tracker, artifact: str, payload, step: int, previous: int | None) -> None:
    """Write a checkpoint artifact (temporary file, then rename); a full disk leaves the
    previous one in place and is a failure that says how much room the checkpoint needs."""
    try:
        tracker.write_artifact(artifact, lambda tmp: checkpoint.write(payload, tmp))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = checkpoint.nbytes(payload)
        # where the write happened: the run's folder, or the staging folder of a remote store
        folder = getattr(tracker, "local_dir", None) or tracker.artifact_dir()
        folder = Path(folder or tempfile.gettempdir())
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = "no room"
        kept = f"(step {previous}) " if previous is not None else ""
        raise DiskFull(
            f"disk full writing {artifact} at step {step}: the checkpoint needs about "
            f"{_size(need)} and {folder} has {free}; the previous {artifact} {kept}is intact",
            f"Free at least {_size(need)} there (or set tracking.uri to a store with room), "
            f"then continue: genctl train --resume {tracker.run_id}",
        ) from None


def _retain(tracker, cfg: TrainConfig, payload, step: int) -> None:
    """Keep the checkpoint of ``step`` beside last.pt (``checkpoints/step-000123.pt``) when
    ``train.keep_checkpoints`` or ``train.keep_every`` asks, then delete the step checkpoints
    neither keeps: the newest ``keep_checkpoints`` stay, and those at multiples of ``keep_every``.
    A remote store cannot delete artifacts, so there only keep_every's are sent."""
    every = cfg.keep_every
    forever = every is not None and step % every == 0
    local = tracker.artifact_dir()
    if not forever and (not cfg.keep_checkpoints or local is None):
        return
    _write_checkpoint(tracker, step_checkpoint(step), payload, step, None)
    if local is None:
        return
    steps = []
    for path in (Path(local) / "checkpoints").glob("step-*.pt"):
        try:
            steps.append((int(path.stem.split("-", 1)[1]), path))
        except ValueError:
            continue
    steps.sort()
    newest = {s for s, _ in steps[-cfg.keep_checkpoints :]} if cfg.keep_checkpoints else set()
    for s, path in steps:
        if s not in newest and not (every is not None and s % every == 0):
            path.unlink(missing_ok=True)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _tag_failure(tracker, exc: Exception) -> None:
    """Say on the run why it failed (the UI shows the tag); never hide the failure itself."""
    if isinstance(exc, Diverged):
        reason = exc.reason
    elif isinstance(exc, GenctlError):
        reason = exc.message
    else:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        tracker.set_tags({FAILURE_TAG: reason[:5000]})
    except Exception:  # the store is away: the CLI still reports the failure
        pass


def _start_tracking(recipe: Recipe, spec, run_id: str | None, dataset=None):
    from genctl.tracking import PLUGIN_TAG, Tracker

    t = recipe.tracking
    tracker = Tracker(
        experiment=t.experiment or recipe.plugin,
        run_name=t.run_name or recipe.name,
        uri=t.uri,
        run_id=run_id,
        retry_seconds=t.retry_seconds,
        system_metrics=t.system_metrics,
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
    tracker.log_source(recipe.path)  # the UI's Source and User columns
    if dataset is not None:  # its Dataset column
        tracker.log_data(recipe.data, dataset)
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
    load_nets(nets, ckpt["nets"], "checkpoint")
    load_nets(ema, ckpt.get("ema", {}), "checkpoint (EMA)")
    for k, opt in optimizers.items():
        hyper = [{h: v for h, v in pg.items() if h != "params"} for pg in opt.param_groups]
        opt.load_state_dict(ckpt["optimizers"][k])
        # The recipe's learning rate, betas, ..., not the checkpoint's: `--resume RUN_ID
        # train.optimizer.lr=...` (after a divergence, say) must take effect.
        for pg, h in zip(opt.param_groups, hyper, strict=True):
            pg.pop("initial_lr", None)
            pg.update(h)
    objective.load_state_dict(ckpt["objective"])
    loader.load_state_dict(ckpt["data"])
