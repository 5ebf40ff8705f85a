"""Recipes: load YAML safely, apply command-line overrides, validate, dump the resolved recipe.

Every section has a schema with defaults in one place (below). Unknown keys are errors, and every
error names the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from genctl.data.config import DataConfig
from genctl.errors import BadInput
from genctl.spec import ModelSpec, Schema

# ---------------------------------------------------------------- the schema


class OptimizerConfig(Schema):
    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = Field(2.0e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)  # the GAN default (DCGAN paper)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1.0e-8, gt=0)
    momentum: float = Field(0.0, ge=0)


class OptimizerOverride(Schema):
    """Per-group changes to ``train.optimizer`` (only the keys given change)."""

    name: Literal["adam", "adamw", "rmsprop", "sgd"] | None = None
    lr: float | None = Field(None, gt=0)
    betas: tuple[float, float] | None = None
    weight_decay: float | None = Field(None, ge=0)
    eps: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0)


class LRScheduleConfig(Schema):
    kind: Literal["constant", "linear_decay", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_start: float = Field(0.0, ge=0)  # linear_decay: step (>= 1) or fraction of train.steps
    final_factor: float = Field(0.0, ge=0, le=1)  # lr at the last step, as a fraction


class EMAConfig(Schema):
    networks: list[str] = []  # networks to keep an exponential moving average of
    decay: float = Field(0.999, ge=0, lt=1)
    start: int = Field(0, ge=0)  # step from which EMA starts tracking (copies before)


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class TrainConfig(Schema):
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(64, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    optimizers: dict[str, OptimizerOverride] = {}  # per optimizer group, e.g. {d: {lr: 1e-4}}
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    ema: EMAConfig = EMAConfig()
    grad_clip: float | None = Field(None, gt=0)
    # gradient accumulation: each update from this many batches of batch_size (the update of a
    # accumulate x batch_size batch; exact for networks without batch norm)
    accumulate: int = Field(1, gt=0)
    # a NaN/inf loss: stop the run (before any checkpoint holds it), or skip: drop that update
    # (a host sync per update) and stop after nonfinite_limit such steps in a row
    nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_limit: int = Field(10, gt=0)
    log_every: int = Field(50, gt=0)
    sample_every: int = Field(500, gt=0)
    checkpoint_every: int = Field(1000, gt=0)
    grid_size: int = Field(64, gt=0)
    # torch.compile the trained networks (genctl/compiling.py): true, or a torch.compile mode
    compile: bool | CompileMode = False
    # CPU threads; default: OMP_NUM_THREADS if set (torchrun sets it), else the cores divided by
    # the genctl trainings (or torchrun ranks) on this machine (genctl/threads.py)
    threads: int | None = Field(None, gt=0)
    # older checkpoints kept beside last.pt as checkpoints/step-000123.pt: the newest
    # keep_checkpoints of them, and those at multiples of keep_every for good
    keep_checkpoints: int = Field(0, ge=0)
    keep_every: int | None = Field(None, gt=0)

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_value(cls, value: Any) -> Any:
        if isinstance(value, bool) or value in typing.get_args(CompileMode):
            return value
        modes = ", ".join(typing.get_args(CompileMode))
        raise ValueError(f"expected true, false or a torch.compile mode: {modes}")

    @field_validator("keep_every")
    @classmethod
    def _keep_every_hits_checkpoints(cls, value: int | None, info: ValidationInfo) -> int | None:
        every = info.data.get("checkpoint_every")
        if value is not None and every and value % every:
            raise ValueError(
                f"not a multiple of checkpoint_every={every}, so no checkpoint falls on it"
            )
        return value

    init_from: str | None = None  # RUN_ID or checkpoint path: start from these weights


class EvaluateConfig(Schema):
    every: int | None = Field(None, gt=0)
    metrics: list[
        Literal[
            "fid",
            "kid",
            "isc",
            "prc",
            "psnr",
            "ssim",
            "nll",
            "accuracy",
            "fid_domain",
            "kid_domain",
            "auroc",
        ]
    ] = ["fid", "kid"]
    num_samples: int = Field(10000, gt=0)  # generated images per evaluation
    num_real: int | None = Field(None, gt=0)  # real images compared with (default: num_samples)
    nll_images: int | None = Field(None, gt=0)  # test images `nll` scores (default: all of them)
    # `auroc`: the test split's images of these class indices are the anomalies, the rest normal
    # (train without them: data.exclude_classes); AUROC/AUPRC of each anomaly score of the model
    anomaly_classes: list[int] = Field([], max_length=1000)
    batch_size: int = Field(64, gt=0)
    best: str | None = None  # keep the best checkpoint by this metric
    feature_extractor_weights: str | None = None  # local Inception weights (offline)
    # a trained classifier of the data (RUN_ID or checkpoint path): fid_domain and kid_domain
    # are FID and KID in its features, beside Inception's fid and kid
    feature_extractor: str | None = None
    # sampler options to generate with, as `genctl sample` takes them ({guidance: 3.0, steps: 50},
    # {truncation: 0.7}): validated against the model's sampler options, recorded with the numbers
    sampler: dict[str, Any] = {}

    def sampler_options(self, spec: ModelSpec) -> BaseModel:
        """``sampler`` validated against ``spec.sampler_options``; bad input names the key."""
        schema = spec.sampler_options
        try:
            return schema.model_validate(self.sampler)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                key = ".".join(["evaluate", "sampler", *(str(p) for p in err["loc"])])
                if err["type"] == "extra_forbidden":
                    problems.append(f"unknown option {key!r}")
                else:
                    problems.append(f"{key}: {err.get('input')!r} is invalid: {err['msg']}")
            valid = ", ".join(f.alias or n for n, f in schema.model_fields.items()) or "none"
            raise BadInput(
                "; ".join(problems), f"Options of the {spec.name} sampler: {valid}."
            ) from None


class TrackingConfig(Schema):
    experiment: str | None = None  # default: the plugin's name
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    run_name: str | None = None  # default: the recipe's name
    log_checkpoints: bool = True
    # the final model as an MLflow logged model: a pyfunc that `mlflow.pyfunc.load_model` and
    # `mlflow models serve` draw images with, and what `genctl runs register` registers
    log_model: bool = True
    # a remote store that goes away is retried this long (metrics, tags, checkpoints, grids) while
    # training goes on; the run's end waits for it at most until it has been away this long
    retry_seconds: float = Field(600.0, gt=0)
    # MLflow's system metrics on the run (system/...: CPU, memory, disk, network; GPU with
    # nvidia-ml-py), sampled every 10 s or $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    system_metrics: bool = False


class RecipeBase(Schema):
    name: str
    plugin: str
    description: str = ""
    model: dict[str, Any] = {}
    data: DataConfig
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()


@dataclass
class Recipe:
    """A validated recipe: typed sections plus the plugin's model config."""

    base: RecipeBase
    model: BaseModel
    spec: ModelSpec
    path: str | None = None

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def plugin(self) -> str:
        return self.base.plugin

    @property
    def data(self) -> DataConfig:
        return self.base.data

    @property
    def train(self) -> TrainConfig:
        return self.base.train

    @property
    def evaluate(self) -> EvaluateConfig:
        return self.base.evaluate

    @property
    def tracking(self) -> TrackingConfig:
        return self.base.tracking

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe: every default filled in, in recipe order."""
        d = self.base.model_dump(mode="json")
        d["model"] = self.model.model_dump(mode="json")
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- loading and overrides


MAX_YAML_BYTES = 10_000_000  # a recipe is a few kB; anything near this is not a recipe
MAX_YAML_VALUES = 100_000  # values after aliases are expanded (a recipe holds a few hundred)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file; missing, binary, non-UTF-8 and malformed files are bad input."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(
            f"recipe {str(path)!r} is a folder, not a file",
            "Give the path of a YAML recipe file; `genctl recipes list` shows the shipped ones.",
        )
    if not p.is_file():
        raise BadInput(
            f"recipe file {str(path)!r} not found",
            "Give a path to a YAML recipe; `genctl recipes list` shows the shipped ones.",
        )
    try:
        with p.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_YAML_BYTES:
        raise BadInput(
            f"{path} is over {MAX_YAML_BYTES // 1_000_000} MB: not a recipe",
            "Give the path of a YAML recipe file.",
        )
    return parse_yaml(data, str(path))


def parse_yaml(data: bytes | str, where: str) -> dict[str, Any]:
    """A recipe mapping from YAML text (UTF-8 bytes or str), every problem bad input."""
    if isinstance(data, bytes):
        if b"\0" in data:
            raise BadInput(f"{where} is a binary file, not a YAML recipe", "Give a YAML text file.")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise BadInput(
                f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
                "Save the recipe as UTF-8 (it may be in another encoding, or not a recipe at all).",
            ) from None
    raw = _safe_load(data, where)
    if not isinstance(raw, dict):
        raise BadInput(f"{where}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return raw


def _safe_load(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs and runaway nesting."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"{where}: malformed YAML{at}: {problem}", "Fix the YAML syntax.") from None
    except RecursionError:
        raise BadInput(
            f"{where}: the YAML is nested too deeply to be a recipe", "Fix the YAML."
        ) from None
    _check_expansion(value, where)
    return value


def _check_expansion(value: Any, where: str) -> None:
    """Refuse YAML whose aliases expand to a huge or endless structure ("billion laughs").

    ``safe_load`` shares one object for every ``*alias``, so the document is small in memory,
    but anything that walks it (validation, error messages, logging params) visits every copy.
    Sizes are counted once per shared object, so this check itself stays linear.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, dict | list):
            return 1
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise BadInput(
                f"{where}: an alias (*name) refers to a value that contains it: the recipe "
                "would be endless",
                "Remove the self-referencing alias.",
            )
        open_.add(key)
        n = 1 + sum(size(v) for v in (x.values() if isinstance(x, dict) else x))
        open_.discard(key)
        sizes[key] = n
        if n > MAX_YAML_VALUES:
            raise BadInput(
                f"{where}: the YAML expands to over {MAX_YAML_VALUES:,} values through its "
                'aliases (&name / *name): not a recipe (a "billion laughs" document?)',
                "Write the values out, or use fewer nested aliases.",
            )
        return n

    try:
        size(value)
    except RecursionError:
        raise BadInput(
            f"{where}: the YAML is nested too deeply to be a recipe", "Fix the YAML."
        ) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` (value parsed as YAML) and ``~key.sub`` (delete) to a copy."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if item.startswith("~"):
            keys = item[1:].split(".")
            node = out
            for k in keys[:-1]:
                node = node.get(k) if isinstance(node, dict) else None
                if node is None:
                    break
            if not isinstance(node, dict) or keys[-1] not in node:
                raise BadInput(f"override {item!r}: there is no key {item[1:]!r} to remove")
            del node[keys[-1]]
            continue
        if "=" not in item:
            raise BadInput(
                f"override {item!r} is not key=value",
                "Write overrides as key.sub=value (e.g. train.steps=500) or ~key to remove one.",
            )
        key, _, text = item.partition("=")
        keys = key.strip().split(".")
        _check_override_key(item, keys)
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        except RecursionError:
            raise BadInput(f"override {key}: the value is nested too deeply") from None
        _check_expansion(value, f"override {key}")
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out


def _check_override_key(item: str, keys: list[str]) -> None:
    """An override names a recipe section it can set: a typo there is the command line's,
    not the recipe file's, so say so before validation blames the file."""
    if not all(keys):
        raise BadInput(
            f"override {item!r} has an empty key",
            "Write overrides as key.sub=value, e.g. train.steps=500.",
        )
    sections = list(RecipeBase.model_fields)
    if keys[0] not in sections:
        close = difflib.get_close_matches(keys[0], sections, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise BadInput(
            f"override {item!r}: unknown recipe section {keys[0]!r}",
            f"{hint}Sections: {', '.join(sections)}.",
        )


def validate(
    raw: dict[str, Any], path: str | None = None, *, spec: ModelSpec | None = None
) -> Recipe:
    """Validate a raw recipe dict; the plugin named by ``plugin:`` supplies the ``model:`` schema."""
    where = f"{path}: " if path else ""
    try:
        base = RecipeBase.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(where + format_validation_error(exc, RecipeBase), _fix_hint(path)) from None
    if spec is None:
        from genctl.plugins import get_spec

        spec = get_spec(base.plugin)
    try:
        model = spec.config.model_validate(base.model)
    except ValidationError as exc:
        msg = format_validation_error(exc, spec.config, prefix=("model",))
        raise BadInput(where + msg, _fix_hint(path)) from None
    if base.evaluate.sampler:  # (an empty one: the defaults, which the contract kit checks)
        try:
            base.evaluate.sampler_options(spec)
        except BadInput as exc:
            raise BadInput(where + exc.message, exc.hint) from None
    recipe = Recipe(base=base, model=model, spec=spec, path=path)
    if spec.check_recipe is not None:
        try:
            spec.check_recipe(recipe)
        except BadInput as exc:
            raise BadInput(where + exc.message, exc.hint or _fix_hint(path)) from None
    return recipe


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate the recipe at ``path``."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    return validate(raw, str(path))


def _fix_hint(path: str | None) -> str:
    return f"Fix {path} or override on the command line (key.sub=value)." if path else ""


# ---------------------------------------------------------------- error messages


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: tuple = ()
) -> str:
    """One line per problem: the key path, the bad value, and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(err["loc"])[:-1])
            key = str(err["loc"][-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"unknown key {dotted!r}: {hint}allowed here: {', '.join(allowed)}")
        elif kind == "missing":
            lines.append(f"missing required key {dotted!r}")
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            lines.append(f"{dotted}: {value!r} is not allowed; expected {expected}")
        else:
            lines.append(f"{dotted}: {value!r} is invalid: {err['msg']}")
    return "; ".join(lines) if len(lines) > 1 else lines[0]


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    node: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = _unwrap(node.model_fields[part].annotation)
        elif isinstance(node, type) and issubclass(node, BaseModel):
            return sorted(node.model_fields)
        else:  # a dict of sub-models (train.optimizers.<group>)
            node = _unwrap(typing.get_args(node)[-1]) if typing.get_args(node) else node
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` or ``dict[str, X]``, else the annotation itself."""
    for arg in typing.get_args(annotation) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


# ---------------------------------------------------------------- shipped recipes


def recipes_dir() -> Path:
    """The folder of shipped recipes (``recipes/`` beside the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "recipes"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
