"""Does a change alter what runs? Hash the compiled-for programs of the benchmarked paths.

Prints a SHA-256 prefix of the lowered StableHLO of (1) the train step of a digits DDPM run at batch 64 and
(2) one DDIM-50 sampling call of 16 images. Run it in two checkouts: equal hashes mean XLA gets the same
program, so the speed figures of ``benchmarks/speed.py`` carry over without re-timing.

  python benchmarks/same_program.py                 # configs/digits_ddpm.py
  python benchmarks/same_program.py --config configs/digits.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxdiff  # noqa: E402,F401  (jaxdiff's CPU XLA flags)
from jaxdiff import sharding  # noqa: E402
from jaxdiff.inference.generate import make_sample_fn  # noqa: E402
from jaxdiff.training import components  # noqa: E402


def digest(text: str) -> str:
    return f"{hashlib.sha256(text.encode()).hexdigest()[:16]} ({len(text)} chars)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/digits_ddpm.py")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("config_module", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = components.build_components(module.get_config())
    state = c.init_state()
    batch_size = c.run.train.batch_size
    shape = (batch_size, *c.run.image_shape)
    batch = {"image": np.zeros(shape, np.float32), "label": np.zeros(batch_size, np.int32)}
    batch = sharding.global_batch(batch, c.batch_sharding)
    print("train step:", digest(components.build_train_step(c).lower(state, batch).as_text()))
    run = c.run
    sampling = run.objective.make_sampling(run.diffusion.to_dict(), args.sampler, args.steps, 0.0)
    fn = make_sample_fn(
        c.apply_fn,
        sampling,
        image_shape=run.image_shape,
        mesh=c.mesh,
        param_sharding=c.state_sharding.ema_params,
        batch_size=16,
        num_classes=run.num_classes,
    )
    lowered = fn.fn.lower(state.ema_params, jax.random.PRNGKey(0), np.int32(0))
    print(f"{args.sampler}-{args.steps} sampling:", digest(lowered.as_text()))


if __name__ == "__main__":
    main()
