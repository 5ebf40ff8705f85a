"""The floors under the MNIST latent diffusion FID: what the autoencoder alone allows.

    OMP_NUM_THREADS=1 MLFLOW_TRACKING_URI=... python bench/ldm_fid_floor.py VAE_RUN_ID CLASSIFIER \
        --data ../shared/data/mnist --real-features $GENCTL_CACHE/eval-domain-KEY.pt

Domain FID (the classifier's penultimate features, torch-fidelity's math, as ``genctl evaluate
--metrics fid_domain`` computes it) against the real features ``genctl evaluate`` cached, of:

- ``test digits``: 500 held-out real digits: the floor of 500 against 500 (sampling noise);
- ``VAE reconstructions``: the same digits encoded (posterior mean) and decoded: the best a
  latent model of this autoencoder can do, whatever its diffusion model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    from genctl_ldm.model import load_first_stage

    from genctl.data.standard import load_mnist
    from genctl.evaluation import fidelity
    from genctl.evaluation.domain import DomainExtractor

    ap = argparse.ArgumentParser()
    ap.add_argument("autoencoder")
    ap.add_argument("classifier")
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--real-features", required=True, help="an eval-domain-*.pt of genctl evaluate")
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()

    real = torch.load(args.real_features, weights_only=True)["features"]
    extractor = DomainExtractor(args.classifier, "cpu")
    images = load_mnist(Path(args.data), "test", False)[0][: args.n]
    if images.dim() == 3:
        images = images[:, None]
    net = load_first_stage(args.autoencoder).net
    with torch.no_grad():
        x = images.float() / 127.5 - 1
        recon = ((net.decode(net.encode(x)) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def fid(imgs: torch.Tensor) -> float:
        feats = extractor(imgs).double()
        stats = fidelity.fid_statistics
        return fidelity.fid(stats(feats), stats(real.double()))

    print(f"| {args.n} test digits | {fid(images):.1f} |")
    print(f"| their VAE reconstructions | {fid(recon):.1f} |")


if __name__ == "__main__":
    main()
