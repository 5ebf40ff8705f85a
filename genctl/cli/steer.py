"""`genctl steer`: move a generator's latents until a classifier sees the class asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from genctl.errors import BadInput
from genctl.interrupts import interruptible


@interruptible
def steer_command(
    classifier: Annotated[
        str,
        typer.Option(
            "--classifier", help="Run id (or checkpoint file) of the classifier to follow."
        ),
    ],
    target: Annotated[int, typer.Option("--target", min=0, help="The class to steer toward.")],
    run: Annotated[str | None, typer.Option("--run", help="MLflow run id of the model.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Checkpoint file of the model.")
    ] = None,
    plugin: Annotated[
        str | None, typer.Option("--plugin", "-p", help="Newest finished run of this family.")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Gradient steps.")] = 50,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Adam step size in the latent.")] = 0.1,
    keep: Annotated[
        float,
        typer.Option(
            "--keep",
            min=0.0,
            help="Weight of the squared distance to the start latent (0: free to go anywhere).",
        ),
    ] = 0.1,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Latents to steer (grid rows).")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the start latents.")] = 0,
    frames: Annotated[
        int,
        typer.Option("--frames", min=2, help="Images per row, from the start to the end."),
    ] = 5,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            help="An independent classifier (run id or file) that also reports the share of "
            "the target class, before and after: steering must not only fool the one it followed.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The grid: one row per latent, start to end.")
    ] = Path("steered.png"),
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
) -> None:
    """Steer a model's samples toward a class by gradient ascent in its latent.

    \b
    genctl steer --run RUN_ID --classifier CLF_RUN --target 7 --out sevens.png
    genctl steer --run RUN_ID --classifier CLF_RUN --target 7 --keep 0 --steps 100 --judge OTHER

    The generator and the classifier stay frozen; each start latent moves up the classifier's
    log-probability of the target, less --keep times its squared distance from the start, so
    the rest of the image stays. Each grid row is one latent: its start image on the left, its
    steered end on the right. Needs a family whose sampler exposes latent() and generate().
    """
    import torch

    from genctl.classifiers import load_classifier
    from genctl.resolve import find_checkpoint, load_model
    from genctl.sampling import IMAGE_SUFFIXES, save_images
    from genctl.steering import grid, require_latent, steer, target_log_prob
    from genctl.trainer import _pick_device

    if sum(x is not None for x in (plugin, run, checkpoint)) != 1:
        raise BadInput(
            "say what to steer: exactly one of --plugin NAME, --run RUN_ID, --checkpoint PATH"
        )
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise BadInput(
            f"--out {out}: the steering grid is one picture",
            f"Give an image file name ending in {', '.join(sorted(IMAGE_SUFFIXES))}.",
        )
    if lr <= 0:
        raise BadInput(f"--lr {lr}: the step size must be above 0", "Try --lr 0.1.")
    dev = _pick_device(device)
    model = load_model(find_checkpoint(run=run, path=checkpoint, plugin=plugin), dev)
    require_latent(model.sampler, model.spec.name)
    clf = load_classifier(classifier, dev)
    judges = [("classifier", clf)]
    if judge is not None:
        judges.append(("judge", load_classifier(judge, dev)))
    for _, c in judges:
        if target >= c.num_classes:
            raise BadInput(
                f"--target {target}: the classifier {c.ref} knows {c.num_classes} classes "
                f"(0-{c.num_classes - 1})",
                "Pick a class it was trained on.",
            )

    z0 = model.sampler.latent(n, torch.Generator().manual_seed(seed))
    result = steer(
        model.sampler.generate,
        target_log_prob(clf, target),
        z0,
        steps=steps,
        lr=lr,
        keep=keep,
        frames=frames,
    )
    images, nrow = grid(result)
    paths = save_images(images, out, nrow=nrow)
    name = clf.class_names[target] if target < len(clf.class_names) else str(target)
    typer.echo(
        f"{n} latents of {model.spec.name} (step {model.step}) steered toward class {target} "
        f"({name}), {steps} steps, lr {lr}, keep {keep} -> {paths[0]}"
    )
    typer.echo(f"  latent moved: mean distance {result.distance.mean().item():.3f}")
    start, end = result.frames[0], result.frames[-1]
    with torch.no_grad():
        for label, c in judges:
            before = _share(c, start, target)
            after = _share(c, end, target)
            typer.echo(
                f"  {label} {c.ref}: share of class {target} {before:.2f} before, {after:.2f} after"
            )


def _share(clf, images, target: int) -> float:
    """The share of ``images`` (in [0, 1]) that classifier ``clf`` puts in class ``target``."""
    from genctl.steering import fit_images

    device = next(next(iter(clf.model.nets.values())).parameters()).device
    x = fit_images(images.to(device), clf.channels, clf.image_size)
    return (clf.logits(x).argmax(1) == target).float().mean().item()
