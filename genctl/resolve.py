"""Finding things: a run, a checkpoint file, a registered model or a step, to a checkpoint and a model.

Every reference genctl takes to a trained model goes through here, for the trainer (``--resume``,
``train.init_from``), sampling, evaluation, steering, scores, classifiers and the registry:

- a checkpoint file (``final.pt``, ``checkpoints/last.pt``, ``checkpoints/step-000500.pt``);
- an MLflow run id: its final model, else its last checkpoint (``--resume``: its last one);
- a registered model, ``models:/NAME@alias`` or ``models:/NAME/VERSION``: the checkpoint kept
  in that version's logged model;
- with ``step``, the run's checkpoint of that step (``train.keep_checkpoints``/``keep_every``).

It imports neither the trainer nor sampling, which both import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from genctl import checkpoint
from genctl.errors import BadInput
from genctl.spec import DataInfo, ModelSpec

if TYPE_CHECKING:
    from genctl.recipe import Recipe

MODELS_PREFIX = "models:/"  # a registered model: models:/NAME@alias or models:/NAME/VERSION


@dataclass
class LoadedModel:
    spec: ModelSpec
    config: BaseModel
    info: DataInfo
    nets: dict[str, nn.Module]  # EMA networks replace their sources: samplers see the averages
    sampler: Any
    step: int
    run_id: str | None
    recipe: dict[str, Any]
    source: str  # the checkpoint file it came from


def is_registered(ref: str | None) -> bool:
    """``ref`` names a registered model (``models:/...``)."""
    return bool(ref) and str(ref).startswith(MODELS_PREFIX)


def step_checkpoint(step: int) -> str:
    """The artifact path of the checkpoint of ``step`` kept by train.keep_checkpoints/keep_every."""
    return f"checkpoints/step-{step:06d}.pt"


def resolve_checkpoint(ref: str, prefer: tuple[str, ...] = (checkpoint.LAST,)) -> Path:
    """A checkpoint path from a path, a RUN_ID (its first existing artifact of ``prefer``) or a
    registered model ``models:/NAME@alias``."""
    if is_registered(ref):
        from genctl.tracking import registered_checkpoint

        return registered_checkpoint(ref)
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


def find_checkpoint(
    *,
    run: str | None = None,
    path: str | None = None,
    plugin: str | None = None,
    step: int | None = None,
    model: str | None = None,
) -> Path:
    """The checkpoint to sample from: a file, a run's final model, a registered model, or the
    newest finished run of a plugin; with ``step``, the run's checkpoint of that step
    (train.keep_checkpoints)."""
    if model:
        if not is_registered(model):
            raise BadInput(
                f"--model {model!r} is not a registered model",
                "Write models:/NAME@ALIAS or models:/NAME/VERSION (`genctl runs register` makes "
                "one); a run id goes to --run, a file to --checkpoint.",
            )
        if step is not None:
            raise BadInput(
                "--step picks one of a run's kept checkpoints: give --run RUN_ID, not --model",
                "A registered model is one step already.",
            )
        return resolve_checkpoint(model)
    if path:
        if step is not None:
            raise BadInput(
                "--step picks one of a run's kept checkpoints: give --run RUN_ID, not --checkpoint",
                "A checkpoint file is one step already.",
            )
        return resolve_checkpoint(path)
    if not run:
        from genctl.plugins import get_spec
        from genctl.tracking import resolve_uri, search_runs

        get_spec(plugin)  # unknown plugin: bad input listing the installed ones
        runs = search_runs(plugin=plugin, status="FINISHED", limit=1)
        if not runs:
            raise BadInput(
                f"no finished {plugin} run in the tracking store {resolve_uri()}",
                f"Train one first (genctl train recipes/{plugin}.yaml), or pass --run / --checkpoint.",
            )
        run = runs[0].run_id
    if is_registered(run):  # a registered model given where a run is asked for: that is clear
        return find_checkpoint(model=run, step=step)
    if step is not None:
        return step_checkpoint_of(run, step)
    return resolve_checkpoint(run, (checkpoint.FINAL, checkpoint.LAST))


def step_checkpoint_of(run_id: str, step: int) -> Path:
    """The checkpoint of ``step`` that run ``run_id`` kept; bad input naming the kept steps if none."""
    from genctl.tracking import download, get_run, local_path

    run = get_run(run_id)
    found = download(run, step_checkpoint(step))
    if found is not None:
        return found
    local = local_path(run.artifact_uri)
    names = (local / "checkpoints").glob("step-*.pt") if local is not None else ()
    kept = sorted(int(p.stem[5:]) for p in names if p.stem[5:].isdigit())
    raise BadInput(
        f"run {run_id} kept no checkpoint of step {step}"
        + (f"; it kept steps {', '.join(map(str, kept))}" if kept else ""),
        "Training keeps older checkpoints with train.keep_checkpoints: N (the newest N) and "
        "train.keep_every: K (every K steps); without --step, genctl samples the final model.",
    )


def load_nets(nets: dict[str, nn.Module], states: dict[str, Any], what: str) -> None:
    """Load ``states`` into ``nets`` by name; a missing or misfitting network is bad input."""
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


def load_model(path: Path, device: torch.device) -> LoadedModel:
    """Rebuild the networks and the sampler stored in checkpoint ``path``."""
    from genctl.plugins import get_spec

    ckpt = checkpoint.load(path)
    for key in ("plugin", "recipe", "data_info", "nets"):
        if key not in ckpt:
            raise BadInput(
                f"{path} is a genctl checkpoint without {key!r}; it cannot be sampled from"
            )
    spec = get_spec(ckpt["plugin"])
    try:
        config = spec.config.model_validate(ckpt["recipe"].get("model", {}))
    except ValidationError as exc:
        raise BadInput(
            f"{path}: its model settings no longer validate with the installed {spec.name} plugin "
            f"{spec.version}: {exc.errors()[0]['msg']}"
        ) from None
    info = DataInfo(
        **{**ckpt["data_info"], "class_names": tuple(ckpt["data_info"].get("class_names", ()))}
    )
    nets = spec.build(config, info)
    load_nets(nets, ckpt["nets"], str(path))
    for name, state in ckpt.get("ema", {}).items():
        src = name[: -len("_ema")]
        if src in nets:
            nets[src].load_state_dict(state)
    for net in nets.values():
        net.to(device).eval().requires_grad_(False)
    ema_view = {
        **nets,
        **{f"{k}_ema": v for k, v in nets.items() if f"{k}_ema" in ckpt.get("ema", {})},
    }
    sampler = spec.sampler(config, ema_view, info)
    return LoadedModel(
        spec,
        config,
        info,
        nets,
        sampler,
        ckpt["step"],
        ckpt.get("run_id"),
        ckpt["recipe"],
        str(path),
    )


def load_resume_recipe(ref: str, overrides: list[str]) -> tuple[Recipe, str]:
    """The recipe stored in the checkpoint of ``ref``, with ``overrides`` applied."""
    from genctl.recipe import apply_overrides, validate

    if is_registered(ref):
        raise BadInput(
            f"--resume {ref}: a registered model keeps no training state to continue",
            "Resume its run (genctl train --resume RUN_ID), or fine-tune from it with "
            f"train.init_from={ref}.",
        )
    path = resolve_checkpoint(ref)
    ckpt = checkpoint.load(path)
    return validate(apply_overrides(ckpt["recipe"], overrides), str(path)), str(path)


def init_from(nets: dict[str, nn.Module], ref: str) -> None:
    """Fine-tuning: start from a trained model's weights (EMA weights where it has them)."""
    ckpt = checkpoint.load(resolve_checkpoint(ref, (checkpoint.FINAL, checkpoint.LAST)))
    states = dict(ckpt["nets"])
    for k, v in ckpt.get("ema", {}).items():
        states[k[: -len("_ema")]] = v
    load_nets(nets, states, f"init_from {ref}")


def check_model_name(name: str, alias: str | None = None) -> None:
    """A registered model's name and alias must read back from ``models:/NAME@alias``."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise BadInput(
            f"--name {name!r} is not a model name genctl can refer to",
            "Use letters, digits, '.', '_' and '-' (mnist-gan), starting with a letter or digit.",
        )
    if alias is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", alias):
        raise BadInput(
            f"--alias {alias!r} is not an alias",
            "Use letters, digits, '_' and '-' (champion, staging).",
        )
    if alias is not None and (alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias)):
        raise BadInput(
            f"--alias {alias!r} is reserved by MLflow (latest and v<number> name versions)",
            "Choose another alias: champion, staging, candidate.",
        )
