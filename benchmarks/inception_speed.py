"""Inception features of N 32x32 images: jaxdiff's FID Inception vs torch-fidelity's, in one script.

    python benchmarks/inception_speed.py --num_images 10000 [--batch_size 100] [--weights FILE.pth]

Both sides load the same weights (the official file when given, else random weights saved in the peer's
format: speed does not depend on the values) and take uint8 images; torch-fidelity's extractor module is
imported without its package __init__ (which needs torchvision). Prints images/s of each and the ratio,
after one warm-up batch per side (compilation is not timed). Results go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import _evaluation_peer as peer  # noqa: E402  (tests/ helper: torch-fidelity without torchvision)
import numpy as np  # noqa: E402

import jaxdiff  # noqa: E402,F401  (jaxdiff's CPU XLA flags before JAX starts)
from jaxdiff.evaluation import inception_extractor  # noqa: E402
from jaxdiff.evaluation.weights import _expected_shapes  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--weights", default=None, help="pytorch-fid / torch-fidelity .pth (default: random)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args(argv)

    torch = peer.torch
    torch.set_num_threads(args.threads)
    weights = args.weights
    if weights is None:
        weights = os.path.join(tempfile.mkdtemp(), "random-inception.pth")
        torch.save(peer.random_inception_state_dict(_expected_shapes(), seed=0), weights)
    images = np.random.default_rng(0).integers(0, 256, (args.num_images, 32, 32, 3), dtype=np.uint8)
    batch = min(args.batch_size, args.num_images)

    ours = inception_extractor(weights)
    ours(images[:batch], batch)  # compile
    start = time.perf_counter()
    features = ours(images, batch)["pool3"]
    jax_seconds = time.perf_counter() - start

    theirs = peer.peer_extractor(weights)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        theirs(nchw[:batch])
        start = time.perf_counter()
        ref = torch.cat([theirs(nchw[i : i + batch])[0] for i in range(0, len(nchw), batch)]).numpy()
    torch_seconds = time.perf_counter() - start

    error = np.abs(features - ref).max() / np.abs(ref).max()
    jax_rate, torch_rate = args.num_images / jax_seconds, args.num_images / torch_seconds
    print(
        f"{args.num_images} images 32x32 -> 299, batch {batch}, max relative feature difference {error:.1e}"
    )
    print(f"jaxdiff:        {jax_rate:8.1f} images/s ({jax_seconds:.1f} s)")
    print(f"torch-fidelity: {torch_rate:8.1f} images/s ({torch_seconds:.1f} s)")
    print(f"ratio jaxdiff / torch-fidelity: {jax_rate / torch_rate:.2f}x")


if __name__ == "__main__":
    main()
