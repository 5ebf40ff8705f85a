"""`genctl score`: per-image anomaly scores of a trained model, as a CSV (and reconstructions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genctl.errors import BadInput
from genctl.interrupts import deferred, interruptible


@interruptible  # Ctrl-C / SIGTERM: exit 130 within seconds, the CSV whole or not written
def score_command(
    input: Annotated[
        str, typer.Option("--input", "-i", help="Image file or folder of images to score.")
    ],
    run: Annotated[str | None, typer.Option("--run", help="MLflow run id of the model.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Checkpoint file of the model.")
    ] = None,
    plugin: Annotated[
        str | None, typer.Option("--plugin", "-p", help="Newest finished run of this family.")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="CSV file: one row per image, one column per score.")
    ] = Path("scores.csv"),
    recon: Annotated[
        Path | None,
        typer.Option(
            "--recon", help="Also write each image's reconstruction into this folder (same name)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of any randomness in the scores (a VAE's sample).")
    ] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
) -> None:
    """Score images for anomaly with an autoencoder-like model: higher is more anomalous.

    \b
    genctl score --run RUN_ID --input digits/ --out scores.csv
    genctl score --plugin vae --input digits/ --out scores.csv --recon recon/

    The CSV has a `file` column and one column per kind of score the model gives (autoencoder:
    mse, the reconstruction error, and nmse, the same over the image's mean square; vae: also
    kl and nelbo, the negative ELBO in nats). Images are resized to the model's image size as
    `genctl sample --input` does.
    """
    import torch

    from genctl.evaluation.anomaly import score_images, supports
    from genctl.resolve import find_checkpoint, load_model
    from genctl.sampling import parse_options, read_inputs
    from genctl.trainer import _pick_device

    if sum(x is not None for x in (plugin, run, checkpoint)) != 1:
        raise BadInput(
            "say which model scores: exactly one of --plugin NAME, --run RUN_ID, --checkpoint PATH"
        )
    if out.is_dir():
        raise BadInput(f"--out {out} is a folder", "Give a file name, e.g. --out scores.csv.")
    dev = _pick_device(device)
    model = load_model(find_checkpoint(run=run, path=checkpoint, plugin=plugin), dev)
    if not supports(model.sampler) or model.spec.task not in ("unconditional", "conditional"):
        raise BadInput(
            f"{model.spec.name} gives no anomaly scores of images",
            "Score with a model whose sampler has anomaly_scores(): an autoencoder or vae run.",
        )
    inputs, _ = read_inputs(input, model.info, dev)
    names = _file_names(Path(input))
    images = inputs.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    scores = score_images(
        model.sampler, images, device=dev, batch_size=batch_size, seed=seed, progress=True
    )
    _write_csv(out, names, scores)
    typer.echo(f"{model.spec.name} at step {model.step} ({model.source})")
    typer.echo(f"scored {len(names)} images: {', '.join(scores)} (higher: more anomalous) -> {out}")
    if recon is not None:
        from genctl.sampling import save_images

        opts = parse_options(model.spec, [])
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size]
            made = model.sampler.sample(len(x), opts, generator, inputs=x)
            stems = [Path(n).stem for n in names[start : start + batch_size]]
            save_images(made, recon, names=stems)
        typer.echo(f"reconstructions -> {recon}/")


def _file_names(path: Path) -> list[str]:
    """The input files' names, in the order ``read_inputs`` reads them."""
    from genctl.sampling import IMAGE_SUFFIXES

    if path.is_dir():
        return sorted(f.name for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return [path.name]


def _write_csv(out: Path, names: list[str], scores: dict) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", *scores])
    for i, name in enumerate(names):
        writer.writerow([name, *(f"{float(s[i]):.9g}" for s in scores.values())])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with deferred():
        tmp.write_text(buf.getvalue())
        tmp.replace(out)
