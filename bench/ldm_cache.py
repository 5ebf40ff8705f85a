"""Training throughput of latent against pixel diffusion on MNIST, and what the latent cache saves.

    OMP_NUM_THREADS=1 MLFLOW_TRACKING_URI=... python bench/ldm_cache.py VAE_RUN_ID \
        --data ../shared/data/mnist

Three training steps, as the trainer takes them (a batch from the loader, the loss, backward,
an Adam step), at the recipes' batch size:

- ``latent, cached``: recipes/ldm-mnist.yaml on the cached latents (what training does);
- ``latent, encoding``: the same, encoding its batch of images with the frozen encoder first
  (what every step would cost without the cache);
- ``pixel``: recipes/ddpm-mnist.yaml on the images.

The three are interleaved step by step, so a machine whose load changes (shared cores) slows
all three alike; the medians are printed, and the one-off cost of encoding the whole set.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from genctl_ldm.loss import LatentDiffusionObjective, encode_all

    from genctl.data import Loader, load_dataset
    from genctl.recipe import load

    ap = argparse.ArgumentParser()
    ap.add_argument("autoencoder", help="the autoencoder's RUN_ID or checkpoint")
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()

    ldm = load(
        "recipes/ldm-mnist.yaml",
        [f"model.autoencoder={args.autoencoder}", f"data.root={args.data}"],
    )
    pixel = load("recipes/ddpm-mnist.yaml", [f"data.root={args.data}"])
    dataset = load_dataset(ldm.data)
    torch.manual_seed(0)
    nets = ldm.spec.build(ldm.model, dataset.info)
    objective = LatentDiffusionObjective(ldm.model, nets, dataset.info)
    space = nets["latent"]
    start = time.perf_counter()
    encode_all(space, dataset.tensors["image"])
    full_encode = time.perf_counter() - start
    latents = objective.prepare_data(dataset)  # from the cache now
    pixel_nets = pixel.spec.build(pixel.model, dataset.info)
    pixel_objective = pixel.spec.objective(pixel.model, pixel_nets, dataset.info)

    def stepper(objective, unet, loader, encode=False):
        opt = torch.optim.Adam(unet.parameters(), lr=1e-4)

        def step(i: int) -> float:
            t0 = time.perf_counter()
            batch = loader.next()
            if encode:  # what each step would do without the cache
                batch = {**batch, "image": space.encode(batch["image"])}
            loss, _ = objective.loss("unet", batch, i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return time.perf_counter() - t0

        return step

    bs = ldm.train.batch_size
    assert bs == pixel.train.batch_size
    steps = {
        "latent, cached latents": stepper(
            objective, nets["unet"], Loader(latents, bs, seed=0, device="cpu")
        ),
        "latent, encoding each batch": stepper(
            objective, nets["unet"], Loader(dataset, bs, seed=0, device="cpu"), encode=True
        ),
        "pixel (ddpm-mnist)": stepper(
            pixel_objective, pixel_nets["unet"], Loader(dataset, bs, seed=0, device="cpu")
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.steps + 5):
        for name, step in steps.items():
            t = step(i)
            if i >= 5:
                times[name].append(t)
    print(f"threads {torch.get_num_threads()}, batch {bs}, latent {tuple(space.latent_shape)}")
    print(f"encoding all {len(dataset)} images once: {full_encode:.1f} s")
    print("| step | median ms | images/s |")
    print("| --- | ---: | ---: |")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {1000 * m:.1f} | {bs / m:.0f} |")


if __name__ == "__main__":
    main()
