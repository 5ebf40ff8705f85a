"""`genctl runs compare`: runs side by side in one picture.

Each run draws the same images (the same seeds; for translation models the same inputs), one
row per run labelled with its name, family and step; below them a table of the recipe settings
that differ between the runs and their metrics. Runs of different families compare as long as
they do the same task: a picture of a GAN's and a diffusion model's digits says something; one of
a generator's digits beside a translator's facades does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genctl.errors import BadInput

CELL = 64  # images are shown at least this large (nearest-neighbour upscaling of tiny ones)
LABEL_WIDTH = 190
PAD = 4
MAX_TABLE_ROWS = 40
SKIPPED_PARAMS = ("tracking.", "name", "description")  # where a run is recorded, not what it is


@dataclass
class Row:
    run_id: str
    name: str
    plugin: str
    step: int
    images: np.ndarray  # N x H x W x 3 uint8
    params: dict[str, str]
    metrics: dict[str, float]


def compare(
    run_ids: list[str],
    *,
    step: int | None = None,
    seed: int = 0,
    n: int = 8,
    inputs: str | None = None,
    device: torch.device | None = None,
) -> tuple[np.ndarray, list[Row]]:
    """The comparison picture of ``run_ids`` (H x W x 3 uint8) and its rows."""
    from genctl.resolve import find_checkpoint, load_model
    from genctl.tracking import get_run

    if len(run_ids) < 2:
        raise BadInput("compare needs two runs or more", "genctl runs compare RUN_A RUN_B ...")
    if len(set(run_ids)) != len(run_ids):
        raise BadInput("a run is named twice", "Name each run once.")
    device = device or torch.device("cpu")
    infos = [get_run(r) for r in run_ids]  # an unknown id: bad input, before loading anything
    models = []
    for r in run_ids:
        models.append(load_model(find_checkpoint(run=r, step=step), device))
    tasks = {m.spec.task for m in models}
    if len(tasks) > 1:
        what = ", ".join(
            f"{i.run_id[:8]} ({m.spec.name}) is {m.spec.task}"
            for i, m in zip(infos, models, strict=True)
        )
        raise BadInput(
            f"these runs do different tasks and their images do not compare: {what}",
            "Compare runs of one task (families may differ: a GAN beside a diffusion model).",
        )
    translate = any(m.spec.takes_input for m in models)
    if translate and inputs is None:
        raise BadInput(
            f"these runs translate images ({models[0].spec.task}): give the images to translate "
            "with --input FILE_OR_FOLDER",
            "Every run translates the same images, shown in the first row.",
        )
    rows = []
    shown_inputs = None
    for info, m in zip(infos, models, strict=True):
        images, given = _draw(m, n, seed, inputs, device)
        if shown_inputs is None and given is not None:
            shown_inputs = given
        rows.append(
            Row(
                info.run_id,
                info.name,
                m.spec.name,
                m.step,
                images,
                info.params,
                _metrics(info.metrics),
            )
        )
    picture = render(rows, shown_inputs)
    return picture, rows


def _draw(model, n: int, seed: int, inputs: str | None, device):
    """``n`` images of ``model`` as ``genctl sample --seed`` draws them (translated inputs for a
    translation model), as N x H x W x 3 uint8; and the inputs it was given, if any."""
    from genctl.logged_model import ImageModel

    if model.spec.takes_input:
        from genctl.sampling import read_inputs

        batch, _ = read_inputs(inputs, model.info, device)
        batch = batch[:n]
        arrays = batch.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        arrays = arrays.permute(0, 2, 3, 1).cpu().numpy()
        out = ImageModel(model).predict({"images": arrays, "seed": seed})
        return _rgb(out), _rgb(arrays)
    return _rgb(ImageModel(model).predict({"n": n, "seed": seed})), None


def _rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images[..., :3]


def _metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What says how good a run is: its eval/ numbers and its last losses."""
    return {k: v for k, v in metrics.items() if k.startswith("eval/") or k.startswith("train/loss")}


def differing_params(rows: list[Row]) -> list[tuple[str, list[str]]]:
    """The recipe settings whose values differ between the runs: (key, value per run)."""
    keys = sorted(set().union(*(r.params for r in rows)))
    out = []
    for k in keys:
        if k.startswith(SKIPPED_PARAMS):
            continue
        values = [r.params.get(k, "-") for r in rows]
        if len(set(values)) > 1:
            out.append((k, values))
    return out


def table(rows: list[Row]) -> list[list[str]]:
    """The table under the images: a header, the metrics, then the params that differ."""
    head = ["", *[f"{r.name[:18]} ({r.run_id[:8]})" for r in rows]]
    lines = [head]
    keys = sorted(set().union(*(r.metrics for r in rows)))
    for k in keys[:MAX_TABLE_ROWS]:
        lines.append([k, *[f"{r.metrics[k]:.4g}" if k in r.metrics else "-" for r in rows]])
    params = differing_params(rows)
    for k, values in params[:MAX_TABLE_ROWS]:
        lines.append([k, *[v if len(v) <= 24 else v[:21] + "..." for v in values]])
    if len(params) > MAX_TABLE_ROWS:
        more = f"... {len(params) - MAX_TABLE_ROWS} more params differ"
        lines.append([more, *[""] * len(rows)])
    return lines


def render(rows: list[Row], inputs: np.ndarray | None = None) -> np.ndarray:
    """Rows of images with their labels on the left, the table below: H x W x 3 uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    side = max(CELL, max(r.images.shape[1] for r in rows))
    n = max(len(r.images) for r in rows)
    strips: list[tuple[list[str], np.ndarray]] = []
    if inputs is not None:
        strips.append((["input"], inputs))
    for r in rows:
        strips.append(([r.name[:28], f"{r.plugin}, step {r.step}", r.run_id[:12]], r.images))

    lines = table(rows)
    widths = [max(_text_width(font, line[c]) for line in lines) + 12 for c in range(len(lines[0]))]
    line_h = 14
    grid_w = LABEL_WIDTH + n * (side + PAD) + PAD
    width = max(grid_w, sum(widths) + 2 * PAD)
    height = len(strips) * (side + PAD) + PAD + 10 + len(lines) * line_h + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for labels, images in strips:
        for i, text in enumerate(labels):
            draw.text((PAD, y + 2 + i * line_h), text, fill="black", font=font)
        for j, im in enumerate(images):
            tile = Image.fromarray(im).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + PAD + j * (side + PAD), y))
        y += side + PAD
    y += 6
    draw.line([(PAD, y - 3), (width - PAD, y - 3)], fill=(160, 160, 160))
    for li, line in enumerate(lines):
        x = PAD
        for c, text in enumerate(line):
            draw.text((x, y), text, fill="black" if li else (40, 40, 160), font=font)
            x += widths[c]
        y += line_h
    return np.asarray(canvas)


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text or " ")
    return int(right - left)


def save(picture: np.ndarray, out: Path) -> Path:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(out)
    return out
