"""`genctl sample`: images from a trained model, with the family's sampler options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from genctl.errors import BadInput
from genctl.interrupts import interruptible


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = (
                    part.split("-", 1)
                    if not part.startswith("-")
                    else ("-" + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1])
                )
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise BadInput(
            f"--seeds {text!r} is not a list of seeds", "Write seeds as 0-15 or 1,5,9 or 0-3,10."
        ) from None
    if not seeds:
        raise BadInput(f"--seeds {text!r} names no seeds", "Write seeds as 0-15 or 1,5,9.")
    return seeds


@interruptible  # Ctrl-C / SIGTERM: exit 130 within seconds, only whole image files written
def sample_command(
    options: Annotated[
        list[str] | None,
        typer.Argument(help="Sampler options key=value (see `genctl plugins list`)."),
    ] = None,
    plugin: Annotated[
        str | None, typer.Option("--plugin", "-p", help="Newest finished run of this family.")
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="MLflow run id to sample from.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Checkpoint file to sample from.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Registered model to sample from: models:/NAME@ALIAS or models:/NAME/V."
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            min=0,
            help="The run's checkpoint of this step (kept by train.keep_checkpoints/keep_every).",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of images.")] = 16,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed: the same seed gives the same images.")
    ] = 0,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="One image per seed: 0-15, 1,5,9.")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="A .png grid, or a folder for one file per image.")
    ] = Path("samples.png"),
    input: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", help="Input image or folder (translation, super-resolution, img2img)."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Images per batch, each written as it completes (default: by image size, "
            "256 at 32-64 px, 16 at 256 px). The images do not depend on it.",
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="A Hugging Face diffusers pipeline: a save_pretrained folder or a Hub id (pip "
            'install "genctl[hf]"). Options: steps, guidance, prompt, negative_prompt, strength, eta.',
        ),
    ] = None,
) -> None:
    """Sample images from a trained model.

    \b
    genctl sample --plugin dcgan --n 64 --out grid.png
    genctl sample --run RUN_ID --seeds 0-15 --out faces/ truncation=0.7
    genctl sample --plugin cyclegan --input photos/ --out zebras/ direction=a2b
    genctl sample --model models:/mnist-gan@champion --out grid.png
    genctl sample --pretrained ./ddpm-cifar10-32 --n 16 steps=100
    genctl sample --pretrained ./sd --seeds 0-3 --out cats/ prompt="a cat" guidance=7.5

    A class-conditional model draws class i % num_classes for image i (for --seeds, the
    seed's class: seed % num_classes), or every image of class N with class=N.

    Images are drawn and written in batches, with progress on stderr; image i of --seed S has
    a generator of its own, so the batch size never changes the images.
    """
    import torch

    from genctl.resolve import find_checkpoint, load_model
    from genctl.sampling import (
        IMAGE_SUFFIXES,
        Progress,
        check_grid,
        default_batch_size,
        parse_options,
        read_inputs,
        save_images,
    )
    from genctl.spec import draw, draw_each, image_seed
    from genctl.trainer import _pick_device

    if pretrained is not None:  # a diffusers pipeline, not a genctl model: genctl.pretrained
        if any(x is not None for x in (plugin, run, checkpoint, model, step)):
            raise BadInput(
                "--pretrained samples a pipeline: drop --plugin, --run, --checkpoint, --model, "
                "--step"
            )
        from genctl import pretrained as hf

        total, where, name = hf.sample(
            pretrained,
            list(options or []),
            n=n,
            seed=seed,
            seeds=parse_seeds(seeds) if seeds is not None else None,
            out=out,
            inputs=input,
            device=_pick_device(device),
            batch_size=batch_size,
        )
        typer.echo(f"{total} images from {name} ({pretrained}) -> {where}")
        return
    if sum(x is not None for x in (plugin, run, checkpoint, model)) != 1:
        raise BadInput(
            "say what to sample from: exactly one of --plugin NAME, --run RUN_ID, "
            "--checkpoint PATH, --model models:/NAME@ALIAS"
        )
    if plugin is not None:
        from genctl.plugins import get_spec

        parse_options(get_spec(plugin), list(options or []))  # fail fast, before loading anything
    dev = _pick_device(device)
    model = load_model(
        find_checkpoint(run=run, path=checkpoint, plugin=plugin, step=step, model=model), dev
    )
    opts = parse_options(model.spec, list(options or []))
    inputs, names = (None, None)
    if input is not None:
        inputs, names = read_inputs(input, model.info, dev)
    elif model.spec.takes_input:
        raise BadInput(
            f"{model.spec.name} translates images: give them with --input FILE_OR_FOLDER"
        )

    grid_nrow = model.sampler.nrow(opts) if hasattr(model.sampler, "nrow") else None
    if seeds is not None and grid_nrow is not None:
        seed_options = [n for n in model.spec.sampler_options.model_fields if "seed" in n]
        raise BadInput(
            "--seeds draws one image per seed, but these sampler options make a grid of their own",
            f"Give its seeds as sampler options instead: {', '.join(seed_options) or 'see genctl plugins list'}.",
        )
    batch = batch_size or default_batch_size(model.info.image_size)
    grid = out.suffix.lower() in IMAGE_SUFFIXES
    if grid_nrow is not None:  # the sampler lays out a grid of its own: one call, as it asks
        with torch.no_grad():
            images = draw(model.sampler, n, opts, torch.Generator().manual_seed(seed))
        paths = save_images(images, out, nrow=grid_nrow)
        typer.echo(
            f"{len(images)} images from {model.spec.name} (step {model.step}, {model.source}) "
            f"-> {paths[0] if len(paths) == 1 else out}"
        )
        return

    if inputs is not None:  # one generator over the inputs, in order
        generator = torch.Generator().manual_seed(seed)
        total = len(inputs)

        def images_of(start: int, stop: int):
            return model.sampler.sample(stop - start, opts, generator, inputs=inputs[start:stop])

    else:  # image j: the first draw of its own generator, so batches never change it
        if seeds is not None:
            seed_list = parse_seeds(seeds)
            indices, image_seeds = seed_list, seed_list
            names = [f"seed{s:04d}" for s in seed_list]
        else:
            indices = range(n)
            image_seeds = None
            width = max(5, len(str(n - 1)))
            names = [f"{i:0{width}d}" for i in range(n)]
        total = len(indices)

        def images_of(start: int, stop: int):
            gens = [
                torch.Generator().manual_seed(
                    image_seeds[j] if image_seeds is not None else image_seed(seed, j)
                )
                for j in range(start, stop)
            ]
            return draw_each(model.sampler, opts, gens, indices[start:stop])

    check_grid(out, total, model.info.image_size)
    kept = []  # a grid's images, until the grid is written
    written = []
    with Progress(total, f"sampling {model.spec.name}") as progress, torch.no_grad():
        for start in range(0, total, batch):
            stop = min(start + batch, total)
            images = images_of(start, stop).float().clamp(0, 1).cpu()
            if grid:
                kept.append(images)
            else:
                written += save_images(images, out, names=names[start:stop] if names else None)
            progress.update(stop - start)
    if grid:
        images = torch.cat(kept)
        nrow = int(math.ceil(math.sqrt(len(images))))
        written = save_images(images, out, nrow=nrow)
    where = written[0] if len(written) == 1 else out
    typer.echo(
        f"{total} images from {model.spec.name} (step {model.step}, {model.source}) -> {where}"
    )
