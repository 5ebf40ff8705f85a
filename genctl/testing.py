"""The contract test kit: checks that a model plugin keeps its side of the contract.

Every plugin, built-in or third-party, runs it from its own test suite with one line::

    from genctl.testing import check_plugin

    def test_contract():
        check_plugin("mymodel", recipe="recipes/mymodel.yaml")

or one test per check, so a failure names the broken part::

    import pytest
    from genctl import testing

    @pytest.fixture(scope="module")
    def contract():
        return testing.make_contract("mymodel", recipe="recipes/mymodel.yaml")

    @pytest.mark.parametrize("check", testing.CHECKS)
    def test_contract(contract, check):
        testing.CHECKS[check](contract)

The kit builds the model from its recipe at a tiny size (16 px images, batch 4, on the CPU, on
synthetic data the kit makes for the model's task, so no dataset is needed; the plugin adds its
own ``model.*`` overrides to shrink its networks) and checks:

``schemas``
    the ``model:`` schema and the sampler options schema are pydantic models that reject unknown
    keys; the sampler options all have defaults; the resolved model config survives the JSON
    round trip a checkpoint puts it through.
``training_step``
    one optimizer step of every group the objective names, as the trainer takes it: the loss is
    a finite scalar, the logged values are detached finite scalars, and every trainable
    parameter of the networks the group updates received a finite gradient.
``checkpoint``
    after a training step, the networks' weights and the objective's state go through
    ``torch.save`` / ``torch.load(weights_only=True)`` and load into a freshly built model,
    which then samples exactly the same images.
``sampler``
    ``sample()`` returns N x C x H x W images in [0, 1]; the same seed gives the same images
    whatever the global random state, and (for samplers without input) another seed others.
    ``preview()``, when present, keeps the same rules.
``labels``
    a class-conditional sampler (``num_classes`` > 0) draws exactly the labels it is given:
    with the same seed, labels of all 0 and of all 1 give different images, and image i does not
    change when only other images' labels do; ``class=N`` without labels draws what labels of
    all N draw. Samplers without classes pass as they are.

``likelihood``
    a sampler with ``nll`` (a likelihood model) also has ``nll_protocol``; ``nll`` gives one
    finite value per uint8 image of the data, the same for the same seed whatever the global
    random state; ``nll_protocol()`` is a dict of strings under names of the family's own.

``latent``
    a sampler with the latent interface (``latent(n, generator)`` and ``generate(z,
    labels=None)``, what ``genctl steer`` moves) has both; the latents depend on the seed alone;
    ``generate`` gives images in [0, 1] of the data's shape, the same for the same z, and
    differentiable in z (a finite, non-zero gradient). Samplers without it pass as they are.

A failed check raises :class:`ContractError` (an ``AssertionError``) saying what is wrong.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from genctl.spec import BATCH_KEYS, CLASS_OPTION, DataInfo, ModelSpec, Sampler, sampler_classes

TINY = ["data.image_size=16", "train.batch_size=4", "train.device=cpu"]
"""What the kit overrides in every recipe before the plugin's own overrides."""

DATA_ITEMS = 8  # images (or pairs) in the synthetic dataset
UNKNOWN_KEY = "no_such_key_for_the_contract"


class ContractError(AssertionError):
    """A plugin breaks the genctl plugin contract."""


# ---------------------------------------------------------------- the model under test


@dataclass
class Contract:
    """A plugin's model at a tiny size, with data for its task: what every check starts from."""

    spec: ModelSpec
    recipe: Any  # genctl.recipe.Recipe, resolved with the tiny overrides
    dataset: Any  # genctl.data.Dataset, decoded in memory
    device: torch.device
    step: int = 0  # the training step the checks train at
    seed: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def config(self) -> BaseModel:
        return self.recipe.model

    @property
    def info(self) -> DataInfo:
        return self.dataset.info

    def build(self, seed: int | None = None) -> dict[str, nn.Module]:
        """The networks, freshly initialised from ``seed`` (the contract's seed by default)."""
        torch.manual_seed(self.seed if seed is None else seed)
        nets = self.spec.build(self.config, self.info)
        if not isinstance(nets, Mapping) or not nets:
            raise ContractError(
                f"{self.name}: build() must return a non-empty dict of networks, got {nets!r:.80}"
            )
        for key, net in nets.items():
            if not isinstance(net, nn.Module):
                raise ContractError(
                    f"{self.name}: build() returned {key!r} = {type(net).__name__}, not an nn.Module"
                )
            net.to(self.device)
        return dict(nets)

    def objective(self, nets: dict[str, nn.Module]) -> Any:
        return self.spec.objective(self.config, nets, self.info)

    def sampler(self, nets: dict[str, nn.Module]) -> Any:
        """The sampler on networks set up as `genctl sample` sets them up: eval mode, frozen."""
        for net in nets.values():
            net.eval().requires_grad_(False)
        sampler = self.spec.sampler(self.config, nets, self.info)
        if not isinstance(sampler, Sampler):
            raise ContractError(
                f"{self.name}: the sampler {type(sampler).__name__} has no sample()"
            )
        return sampler

    def loader(self, objective: Any = None) -> Any:
        """Batches of the data, or of what ``objective.prepare_data`` makes of it (as the
        trainer batches it)."""
        from genctl.data import Loader

        data = self.dataset
        if objective is not None and hasattr(objective, "prepare_data"):
            data = objective.prepare_data(data)
        return Loader(data, self.recipe.train.batch_size, seed=self.seed, device=self.device)

    def preview_batch(self, n: int) -> dict[str, torch.Tensor]:
        from genctl.data import preview_batch

        return preview_batch(self.dataset, n, self.device)


def make_contract(
    name: str,
    recipe: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    plugin: ModuleType | ModelSpec | None = None,
    synthetic_data: bool = True,
    step: int = 0,
    device: str = "cpu",
) -> Contract:
    """Resolve model ``name`` from its recipe at tiny size and load data for it.

    :param name: the model's name (the recipe's ``plugin:``).
    :param recipe: a recipe file, a recipe dict, or None for a recipe of defaults.
    :param overrides: ``key.sub=value`` applied after the kit's :data:`TINY` ones: shrink the
        networks here (``model.width=8``) or pick another image size (``data.image_size=8``).
    :param plugin: the plugin module (or a ModelSpec) to test, when it is not installed; by
        default the model is looked up among the installed plugins, as the CLI does.
    :param synthetic_data: replace the recipe's data by a small synthetic set for the model's
        task (shapes, or generated image folders for paired, unpaired and super-resolution
        models), so the checks need no dataset. False keeps the recipe's data (its first items).
    :param step: the training step at which the checks train. A model whose networks grow
        picks a step where every layer is in use (during a fade-in, say).
    """
    from genctl.data import load_dataset
    from genctl.recipe import apply_overrides, load_yaml, validate

    spec = _find_spec(name, plugin)
    if recipe is None:
        raw: dict[str, Any] = {"name": f"{name}-contract", "plugin": name, "data": {}}
    elif isinstance(recipe, Mapping):
        raw = dict(recipe)
    else:
        raw = load_yaml(recipe)
    if raw.get("plugin") != name:
        raise ContractError(f"the recipe is for plugin {raw.get('plugin')!r}, not {name!r}")
    raw = apply_overrides(raw, [*TINY, *overrides])
    data = dict(raw.get("data") or {})
    root = tempfile.mkdtemp(prefix="genctl-contract-") if synthetic_data else None
    try:
        if root is not None:
            data = synthetic_data_section(spec.task, data, Path(root))
        else:
            data.setdefault("limit", DATA_ITEMS)
        raw["data"] = data
        resolved = validate(raw, str(recipe) if isinstance(recipe, str | Path) else None, spec=spec)
        dataset = load_dataset(resolved.data)  # decoded into memory (cache off): root may go
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    return Contract(spec, resolved, dataset, torch.device(device), step)


def _find_spec(name: str, plugin: ModuleType | ModelSpec | None) -> ModelSpec:
    from genctl.plugins import PLUGINS_ENV, load_plugins, plugins

    if isinstance(plugin, ModelSpec):
        if plugin.name != name:
            raise ContractError(f"the spec given is called {plugin.name!r}, not {name!r}")
        return plugin
    if plugin is None:
        ps = plugins()
    else:
        with _env(PLUGINS_ENV, "genctl.testing:only-the-given-plugin"):  # no entry points
            ps = load_plugins(extra={name: plugin})
    if name in ps.registry:
        return ps.registry.get(name)
    errors = "".join(f"\n{e.name}: {e.error}\n{e.traceback}" for e in ps.errors)
    raise ContractError(
        f"no plugin registers a model called {name!r} (registered: "
        f"{', '.join(ps.registry.names()) or 'none'}){errors}"
    )


@contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


# ---------------------------------------------------------------- synthetic data


def synthetic_data_section(task: str, data: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A recipe ``data:`` section for ``task`` on tiny synthetic data (folders under ``root``).

    Keeps the recipe's image size, channels, labels, scale and direction. Image tasks use the
    built-in ``shapes`` kind; paired, unpaired and super-resolution tasks get image folders in
    the layouts their data kinds read, made from shapes (B is A with inverted colours).
    """
    keep = ("image_size", "channels", "labels", "scale", "direction")
    out: dict[str, Any] = {k: data[k] for k in keep if k in data}
    out["cache"] = False
    size, channels = int(out.get("image_size", 16)), int(out.get("channels", 3))
    if task in ("unconditional", "conditional"):
        return {**out, "kind": "shapes", "size": DATA_ITEMS}
    images = _shapes_png(size, channels)
    if task == "paired":
        _write(root / "train" / "A", images)
        _write(root / "train" / "B", [_invert(im) for im in images])
        return {**out, "kind": "paired", "root": str(root)}
    if task == "unpaired":
        _write(root / "trainA", images[: DATA_ITEMS // 2])
        _write(root / "trainB", [_invert(im) for im in images[DATA_ITEMS // 2 :]])
        return {**out, "kind": "unpaired", "root": str(root)}
    if task == "super_resolution":
        _write(root, images)
        return {**out, "kind": "super_resolution", "root": str(root)}
    raise ContractError(f"unknown task {task!r}; known: {', '.join(BATCH_KEYS)}")


def _shapes_png(size: int, channels: int) -> list[Any]:
    from PIL import Image

    from genctl.data.shapes import generate

    images, _ = generate(DATA_ITEMS, size, channels=channels)
    arrays = [im.permute(1, 2, 0).numpy() for im in images]  # H x W x C uint8
    return [Image.fromarray(a[..., 0] if channels == 1 else a) for a in arrays]


def _invert(image: Any) -> Any:
    from PIL import ImageOps

    return ImageOps.invert(image)


def _write(folder: Path, images: list[Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.png")


# ---------------------------------------------------------------- the checks


def check_schemas(c: Contract) -> None:
    """Both schemas are strict pydantic models; options default; the config survives JSON."""
    from genctl.sampling import options_help

    for what, schema in (
        ("model config", c.spec.config),
        ("sampler options", c.spec.sampler_options),
    ):
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise ContractError(
                f"{c.name}: the {what} schema must be a pydantic model (subclass genctl.spec.Schema)"
            )
    dumped = c.config.model_dump(mode="json")
    try:
        c.spec.config.model_validate({**dumped, UNKNOWN_KEY: 1})
    except ValidationError:
        pass
    else:
        raise ContractError(
            f"{c.name}: the model config accepts unknown keys; subclass genctl.spec.Schema"
        )
    try:
        options = c.spec.sampler_options()
    except ValidationError as exc:
        raise ContractError(
            f"{c.name}: every sampler option needs a default (`genctl sample` without options): {exc}"
        ) from None
    try:
        c.spec.sampler_options.model_validate({UNKNOWN_KEY: 1})
    except ValidationError:
        pass
    else:
        raise ContractError(
            f"{c.name}: the sampler options accept unknown keys; subclass genctl.spec.Schema"
        )
    options_help(c.spec)  # what `genctl plugins list` shows must render
    c.spec.sampler_options.model_validate(options.model_dump(mode="json"))
    try:
        again = c.spec.config.model_validate(dumped)
    except ValidationError as exc:
        raise ContractError(
            f"{c.name}: the resolved model config does not validate again after the JSON round "
            f"trip a checkpoint puts it through: {exc}"
        ) from None
    if again != c.config:
        raise ContractError(
            f"{c.name}: the model config changes in a JSON round trip: {c.config!r} -> {again!r}"
        )


def check_training_step(c: Contract) -> None:
    """One optimizer step per group: finite loss, finite logs, a finite gradient everywhere."""
    nets = c.build()
    objective = c.objective(nets)
    loader = c.loader(objective)
    for group in _groups(c, objective, nets):
        _step(c, objective, nets, group, loader.next(), check=True)


def check_checkpoint(c: Contract) -> None:
    """Weights and objective state survive a weights-only save/load into a fresh model.

    The rebuilt networks must sample what the originals sample, as `genctl sample` rebuilds
    them: build, load the weights, make the sampler; no objective involved.
    """
    nets = c.build()
    objective = c.objective(nets)
    loader = c.loader(objective)
    for group in _groups(c, objective, nets):
        _step(c, objective, nets, group, loader.next(), check=False)
    saved = {
        "nets": {k: v.state_dict() for k, v in nets.items()},
        "objective": objective.state_dict(),
    }
    loaded = _weights_only_round_trip(c, saved)

    restored = c.objective(_load_into(c, c.build(seed=c.seed + 1), loaded["nets"]))
    restored.load_state_dict(loaded["objective"])
    _same_state(c.name, saved["objective"], restored.state_dict(), "objective state")

    rebuilt = _load_into(c, c.build(seed=c.seed + 1), loaded["nets"])
    with torch.no_grad():
        a = _sample(c, c.sampler(nets), seed=7)
        b = _sample(c, c.sampler(rebuilt), seed=7)
    if a.shape != b.shape or not torch.equal(a, b):
        raise ContractError(
            f"{c.name}: networks rebuilt from their saved weights sample other images than the "
            "originals; keep everything sampling needs in the networks' parameters and buffers"
        )


def check_sampler(c: Contract) -> None:
    """Shape, range and determinism of sample() and preview()."""
    nets = c.build()
    sampler = c.sampler(nets)
    with torch.no_grad():
        torch.manual_seed(1234)
        first = _sample(c, sampler, seed=0)
        _check_images(c, first, "sample()", n=len(first))
        torch.manual_seed(4321)  # the global random state must not matter
        again = _sample(c, sampler, seed=0)
        if not torch.equal(first, again):
            raise ContractError(
                f"{c.name}: sample() with the same seed gave other images; draw all randomness "
                "from the generator it is given (noise on the CPU generator, then .to(device))"
            )
        if not c.spec.takes_input and torch.equal(first, _sample(c, sampler, seed=1)):
            raise ContractError(f"{c.name}: sample() gave the same images for seeds 0 and 1")
        if getattr(sampler, "generator_per_image", False) and not c.spec.takes_input:
            _check_generator_per_image(c, sampler)

        if hasattr(sampler, "preview"):
            images, nrow = sampler.preview(c.preview_batch(4), torch.Generator().manual_seed(0))
            _check_images(c, images, "preview()", n=None, size=None)
            if not isinstance(nrow, int) or nrow < 1:
                raise ContractError(
                    f"{c.name}: preview() must return (images, nrow >= 1), got nrow={nrow!r}"
                )


def check_labels(c: Contract) -> None:
    """A class-conditional sampler draws exactly the labels genctl gives it; ``class=N`` too.

    genctl balances the classes of an evaluation and of ``--seeds`` by the labels it passes, so
    a sampler that ignores them (or cycles classes itself) would be scored on the wrong classes.
    """
    nets = c.build()
    sampler = c.sampler(nets)
    k = sampler_classes(sampler)
    if k == 0 or c.spec.takes_input:
        return  # no classes to draw
    if k < 2:
        raise ContractError(f"{c.name}: num_classes={k}; a class-conditional model has 2 or more")
    options = c.spec.sampler_options()

    def draw(labels: torch.Tensor, opts: Any = options) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                return sampler.sample(len(labels), opts, gen, labels=labels.clone())
        except TypeError as exc:
            if "labels" not in str(exc):
                raise
            raise ContractError(
                f"{c.name}: the sampler has num_classes={k} but sample() takes no labels=: {exc}"
            ) from None

    # One class for all, then another: a sampler that ignores its labels draws the same images.
    # Up to 16 images, as a label may change no pixel of a discrete sampler's untrained draws.
    for n in (4, 16):
        zeros = draw(torch.zeros(n, dtype=torch.long))
        _check_images(c, zeros, "sample(labels=...)", n=n)
        if not torch.allclose(zeros, draw(torch.ones(n, dtype=torch.long)), atol=1e-5):
            break
    else:
        raise ContractError(
            f"{c.name}: sample() draws the same images for labels of all 0 and of all 1; it "
            "must draw the labels it is given (image i of class labels[i]), not classes of its own"
        )
    # Half the images change class: the others must not change (image i follows labels[i]).
    base = torch.arange(4) % k
    moved = torch.where(torch.arange(4) % 2 == 0, (base + 1) % k, base)
    a, b = draw(base), draw(moved)
    for i in (1, 3):
        if not torch.allclose(a[i], b[i], atol=1e-5):
            raise ContractError(
                f"{c.name}: image {i} keeps class {int(base[i])} but changes when other images' "
                "labels change; draw image i of class labels[i], from its own noise"
            )
    fields = c.spec.sampler_options.model_fields
    if not any(CLASS_OPTION in (name, f.alias) for name, f in fields.items()):
        return
    chosen = c.spec.sampler_options.model_validate({CLASS_OPTION: 1})
    with torch.no_grad():
        picked = sampler.sample(4, chosen, torch.Generator().manual_seed(0))
    if not torch.allclose(picked, draw(torch.ones(4, dtype=torch.long)), atol=1e-5):
        raise ContractError(
            f"{c.name}: {CLASS_OPTION}=1 draws other images than labels of all 1; without "
            "labels, sample() must draw the class option's class for every image"
        )


def check_likelihood(c: Contract) -> None:
    """A likelihood model's ``nll``: one finite value per uint8 image, reproducible, described.

    Evaluation's ``nll`` metric averages it over test images and records ``nll_protocol()``
    beside the number (see :mod:`genctl.evaluation.likelihood`).
    """
    from genctl.evaluation.likelihood import _family_protocol, supports

    nets = c.build()
    sampler = c.sampler(nets)
    has = [m for m in ("nll", "nll_protocol") if callable(getattr(sampler, m, None))]
    if not has:
        return  # not a likelihood model
    if not supports(sampler):
        raise ContractError(
            f"{c.name}: the sampler has {has[0]}() but not the other of nll() and nll_protocol()"
        )
    if c.spec.task not in ("unconditional", "conditional"):
        raise ContractError(
            f"{c.name}: nll() is scored on images of the data; a {c.spec.task} model has none"
        )
    images = c.dataset.tensors["image"][:4].to(c.device)
    labels = c.dataset.labels
    labels = None if labels is None else labels[:4].to(c.device)

    def nll() -> torch.Tensor:
        with torch.no_grad():
            return sampler.nll(images.clone(), labels, torch.Generator().manual_seed(0))

    torch.manual_seed(1234)
    first = nll()
    if not isinstance(first, torch.Tensor) or first.shape != (len(images),):
        got = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise ContractError(
            f"{c.name}: nll() must return one value per image ({len(images)}), got {got}"
        )
    if not torch.isfinite(first).all():
        raise ContractError(f"{c.name}: nll() gave non-finite values {first.tolist()}")
    torch.manual_seed(4321)  # the global random state must not matter
    if not torch.equal(first, nll()):
        raise ContractError(
            f"{c.name}: nll() with the same seed gave another value; draw all randomness "
            "(dequantisation noise, posterior samples) from the generator it is given"
        )
    try:
        _family_protocol(sampler)
    except RuntimeError as exc:
        raise ContractError(f"{c.name}: {exc}") from None


def check_latent(c: Contract) -> None:
    """A sampler with the latent interface (what ``genctl steer`` moves): ``latent(n, generator)``
    and ``generate(z, labels=None)`` come together; latents depend on the seed alone; generate
    gives N x C x H x W images in [0, 1], the same for the same z, with a finite, non-zero
    gradient in z (the generator frozen, as ``genctl steer`` freezes it)."""
    nets = c.build()
    sampler = c.sampler(nets)
    has = [m for m in ("latent", "generate") if callable(getattr(sampler, m, None))]
    if not has:
        return  # no latent to steer
    if len(has) == 1:
        other = "generate" if has[0] == "latent" else "latent"
        raise ContractError(
            f"{c.name}: the sampler has {has[0]}() but not {other}(); the latent interface is "
            "latent(n, generator) and generate(z, labels=None), both"
        )

    def latent(seed: int) -> torch.Tensor:
        return sampler.latent(3, torch.Generator().manual_seed(seed))

    torch.manual_seed(1234)
    z = latent(0)
    if not isinstance(z, torch.Tensor) or z.dim() < 2 or len(z) != 3:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ContractError(f"{c.name}: latent(3, generator) must return 3 latents, got {got}")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise ContractError(f"{c.name}: latent() must return finite float latents")
    torch.manual_seed(4321)  # the global random state must not matter
    if not torch.equal(z, latent(0)):
        raise ContractError(
            f"{c.name}: latent() with the same seed gave other latents; draw them from the "
            "generator it is given"
        )
    if torch.equal(z, latent(1)):
        raise ContractError(f"{c.name}: latent() gave the same latents for seeds 0 and 1")
    with torch.no_grad():
        first = sampler.generate(z.clone())
        _check_images(c, first, "generate(z)", n=3)
        if not torch.equal(first, sampler.generate(z.clone())):
            raise ContractError(
                f"{c.name}: generate(z) gave other images for the same z; it must be a "
                "deterministic function of z (eval mode, no fresh noise)"
            )
    zg = z.clone().requires_grad_(True)
    with torch.enable_grad():
        images = sampler.generate(zg)
        weights = torch.linspace(-1, 1, images[0].numel()).view_as(images[0]).to(images.device)
        if not images.requires_grad:
            raise ContractError(
                f"{c.name}: generate(z) is not differentiable in z (no gradient reaches the "
                "images: drop @torch.no_grad and detach on its path)"
            )
        (images * weights).sum().backward()
    if zg.grad is None or not torch.isfinite(zg.grad).all() or not zg.grad.abs().sum() > 0:
        raise ContractError(
            f"{c.name}: generate(z) gave no finite, non-zero gradient in z; steering moves z "
            "by that gradient"
        )


CHECKS: dict[str, Callable[[Contract], None]] = {
    "schemas": check_schemas,
    "training_step": check_training_step,
    "checkpoint": check_checkpoint,
    "sampler": check_sampler,
    "labels": check_labels,
    "likelihood": check_likelihood,
    "latent": check_latent,
}
"""Every check by name, for ``pytest.mark.parametrize``."""


def check_plugin(
    name: str,
    recipe: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    plugin: ModuleType | ModelSpec | None = None,
    synthetic_data: bool = True,
    step: int = 0,
    device: str = "cpu",
) -> Contract:
    """Run every check of :data:`CHECKS` on model ``name`` (arguments: see :func:`make_contract`)."""
    c = make_contract(
        name,
        recipe,
        overrides,
        plugin=plugin,
        synthetic_data=synthetic_data,
        step=step,
        device=device,
    )
    for check in CHECKS.values():
        check(c)
    return c


# ---------------------------------------------------------------- helpers


def _groups(c: Contract, objective: Any, nets: dict[str, nn.Module]) -> list[str]:
    """The objective's groups, those of the step's schedule first (schedule() runs first, as
    in the trainer: it may move the model to the step's growth stage)."""
    groups = getattr(objective, "groups", None)
    if not isinstance(groups, Mapping) or not groups:
        raise ContractError(
            f"{c.name}: the objective needs `groups`: a dict group -> network names"
        )
    for group, names in groups.items():
        unknown = [n for n in names if n not in nets]
        if not names or unknown:
            raise ContractError(
                f"{c.name}: objective group {group!r} names {list(names)}; the networks built are {list(nets)}"
            )
    schedule = list(objective.schedule(c.step))
    if not schedule or any(g not in groups for g in schedule):
        raise ContractError(
            f"{c.name}: schedule({c.step}) returned {schedule}; it must list groups of {list(groups)}"
        )
    return list(dict.fromkeys([*schedule, *groups]))


def _step(c: Contract, objective, nets, group: str, batch, *, check: bool) -> None:
    """What the trainer does for one group: loss, clear grads, backward, step, after_update."""
    params = {
        f"{net_name}.{p_name}": p
        for net_name in objective.groups[group]
        for p_name, p in nets[net_name].named_parameters()
        if p.requires_grad
    }
    for net in nets.values():
        net.train()
        net.zero_grad(set_to_none=True)
    out = objective.loss(group, batch, c.step)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
        raise ContractError(f"{c.name}: loss({group!r}, ...) must return (loss, {{name: tensor}})")
    loss, logs = out
    if check:
        if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad):
            raise ContractError(
                f"{c.name}: loss({group!r}, ...) must return a scalar tensor with a graph, got {loss!r:.80}"
            )
        if not torch.isfinite(loss):
            raise ContractError(f"{c.name}: loss of group {group!r} is {loss.item()}")
        for key, value in logs.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.requires_grad:
                raise ContractError(
                    f"{c.name}: logged value {key!r} of group {group!r} must be a detached scalar "
                    f"tensor (no .item() in loss()), got {value!r:.80}"
                )
            if not torch.isfinite(value).all():
                raise ContractError(
                    f"{c.name}: logged value {key!r} of group {group!r} is {value.item()}"
                )
    loss.backward()
    if check:
        missing = [k for k, p in params.items() if p.grad is None]
        if missing:
            raise ContractError(
                f"{c.name}: group {group!r} updates {list(objective.groups[group])}, but the loss "
                f"gives no gradient to {len(missing)} of their parameters: {', '.join(missing[:8])}"
            )
        bad = [k for k, p in params.items() if not torch.isfinite(p.grad).all()]
        if bad:
            raise ContractError(
                f"{c.name}: non-finite gradients in group {group!r}: {', '.join(bad[:8])}"
            )
    with torch.no_grad():  # a plain SGD step (torch.optim's first use costs seconds of imports)
        for p in params.values():
            if p.grad is not None:
                p.sub_(p.grad, alpha=1e-3)
    if hasattr(objective, "after_update"):
        objective.after_update(group, c.step)


def _weights_only_round_trip(c: Contract, payload: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    try:
        return torch.load(buffer, map_location=c.device, weights_only=True)
    except Exception as exc:
        raise ContractError(
            f"{c.name}: the objective's state_dict() does not load with torch.load(weights_only=True); "
            f"keep it to tensors, ints, floats, strings, lists and dicts: {str(exc).splitlines()[0]}"
        ) from None


def _load_into(
    c: Contract, nets: dict[str, nn.Module], states: dict[str, Any]
) -> dict[str, nn.Module]:
    for key, net in nets.items():
        try:
            net.load_state_dict(states[key])
        except (RuntimeError, KeyError) as exc:
            raise ContractError(
                f"{c.name}: the saved weights of {key!r} do not load into a newly built one: {exc}"
            ) from None
    return nets


def _check_generator_per_image(c: Contract, sampler: Any) -> None:
    """A list of generators in one call gives what one call per generator gives (genctl sample
    relies on it for images that do not depend on the batch size)."""
    from genctl.spec import draw, draw_each, image_seed

    options = c.spec.sampler_options()

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(image_seed(0, i)) for i in range(3)]

    together = draw_each(sampler, options, generators(), range(3))
    alone = torch.cat([draw(sampler, 1, options, g, first=i) for i, g in enumerate(generators())])
    if together.shape != alone.shape or not torch.allclose(together, alone, atol=1e-5):
        raise ContractError(
            f"{c.name}: generator_per_image is set, but sample(n, options, [n generators]) "
            "differs from n calls of one image each; draw image i's noise from generator i alone"
        )


def _sample(c: Contract, sampler: Any, seed: int, n: int = 3) -> torch.Tensor:
    options = c.spec.sampler_options()
    generator = torch.Generator().manual_seed(seed)
    if c.spec.takes_input:
        batch = c.preview_batch(n)
        inputs = batch[BATCH_KEYS[c.info.task][0]]
        return sampler.sample(len(inputs), options, generator, inputs=inputs)
    return sampler.sample(n, options, generator)


def _check_images(
    c: Contract, images: Any, what: str, *, n: int | None, size: int | None = -1
) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ContractError(
            f"{c.name}: {what} must return an N x C x H x W tensor, got {images!r:.80}"
        )
    side = c.info.image_size if size == -1 else size
    want = (n if n is not None else images.shape[0], c.info.channels)
    if side is not None:
        want += (side, side)
    if tuple(images.shape[: len(want)]) != want:
        raise ContractError(
            f"{c.name}: {what} returned shape {tuple(images.shape)}; expected {want} (N, C, H, W)"
        )
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise ContractError(f"{c.name}: {what} must return finite float images")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0 or hi > 1:
        raise ContractError(
            f"{c.name}: {what} returned values in [{lo:.3g}, {hi:.3g}]; images must be in [0, 1]"
        )


def _same_state(name: str, a: Any, b: Any, where: str) -> None:
    """Equal nested states: tensors equal, containers alike, other values ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
        if not (ok and torch.equal(a.cpu(), b.cpu())):
            raise ContractError(f"{name}: {where} differs after load_state_dict()")
    elif isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ContractError(
                f"{name}: {where} has keys {sorted(a)} before and {sorted(b)} after"
            )
        for k in a:
            _same_state(name, a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            raise ContractError(f"{name}: {where} has {len(a)} items before and {len(b)} after")
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_state(name, x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif a != b:
        raise ContractError(
            f"{name}: {where} is {a!r} before save and {b!r} after load_state_dict()"
        )
