"""Measure a trained model: FID / KID of its samples, or the offline digits metric.

    python evaluate.py --workdir workdirs/digits                          # digits metric, EMA weights
    python evaluate.py --workdir DIR --ref_stats cifar10_train.npz        # FID/KID (Inception)
        [--sampler ddim] [--steps 10,20,50] [--num_samples 1000] [--seed 0] [--batch_size 64]
        [--inception_weights pt_inception-2015-12-05-6726825d.pth] [--allow_download] [--out DIR]
    python evaluate.py --ref_source folder:/data/imgs --image_size 32 --ref_out stats.npz

Several ``--steps`` write an NFE-vs-score table (``sweep.md``, ``sweep.json``) and ``sweep.png``. Scores go
to ``<out>/eval_<sampler>_<steps>.json`` (``--out`` defaults to ``<workdir>/eval``). ``--metric auto``
uses the Inception when ``--ref_stats`` is given, else the digits metric. Reference statistics (``.npz``
with ``mu`` / ``sigma``, as pytorch-fid and EDM publish) come from ``--ref_source`` (``digits``,
``folder:PATH``, ``tfds:NAME[:split]``, ``hf:NAME[:split]``). Bad input prints ``error: ...``, exits 2.
"""

from __future__ import annotations

import json
import os

from jaxdiff.execution.allocator import relaunch_under_mimalloc

relaunch_under_mimalloc()  # first: re-runs this command under mimalloc (see jaxdiff/allocator.py)

import warnings  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402

from jaxdiff import cli, grids  # noqa: E402  (jaxdiff first sets the CPU XLA flags)
from jaxdiff.evaluation import scoring  # noqa: E402
from jaxdiff.inference import generate, load_workdir  # noqa: E402
from jaxdiff.run_config import check_sampler_name, validate_sampling  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py run directory: its newest checkpoint is sampled.")
_METRIC = flags.DEFINE_enum("metric", "auto", ["auto", *scoring.METRICS], "inception (FID/KID) | digits.")
_REF_STATS = flags.DEFINE_string("ref_stats", None, "Reference statistics .npz (mu, sigma[, features]).")
_SAMPLER = flags.DEFINE_string("sampler", None, "ddpm | ddim | dpm++ | euler (default: the run's).")
_STEPS = flags.DEFINE_list("steps", None, "Sampling steps; several (10,20,50) sweep (default: the run's).")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 1000, "Images to sample and score per step count (digits FD: the mean over sets of 400)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling noise.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per sampling / Inception batch.")
_EMA = flags.DEFINE_boolean("ema", True, "Use the EMA weights (--noema: the raw weights).")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", 100, "KID: number of random subsets.")
_WEIGHTS = flags.DEFINE_string("inception_weights", None, "FID Inception .pth (pytorch-fid/torch-fidelity).")
_DOWNLOAD = flags.DEFINE_boolean("allow_download", False, "May download the FID Inception weights once.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <workdir>/eval).")
_REF_SOURCE = flags.DEFINE_string("ref_source", None, "Compute reference statistics of this data source.")
_REF_OUT = flags.DEFINE_string("ref_out", None, "--ref_source: the .npz to write.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "--ref_source: image size (the model's).")
_CHANNELS = flags.DEFINE_integer("channels", 3, "--ref_source: 1 or 3 channels.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "--ref_source: use at most this many images.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "--ref_source: TFDS data_dir / datasets cache.")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise cli.UserError(f"--{name}={value} must be a positive integer")


def _parse_steps(values: list[str] | None) -> list[int | None]:
    if not values:
        return [None]
    try:
        steps = [int(v) for v in values]
    except ValueError:
        raise cli.UserError(f"--steps={','.join(values)} must be integers, e.g. --steps 10,20,50") from None
    for s in steps:
        _positive("steps", s)
    return steps


def _compute_reference() -> None:
    if not _REF_OUT.value:
        raise cli.UserError("--ref_source needs --ref_out FILE.npz")
    if _IMAGE_SIZE.value is None:
        raise cli.UserError("--ref_source needs --image_size (the size of the model's images)")
    path = scoring.reference_statistics(
        _REF_SOURCE.value,
        _REF_OUT.value,
        image_size=_IMAGE_SIZE.value,
        channels=_CHANNELS.value,
        max_images=_MAX_IMAGES.value,
        weights_path=_WEIGHTS.value,
        allow_download=_DOWNLOAD.value,
        batch_size=_BATCH_SIZE.value,
        data_dir=_DATA_DIR.value,
    )
    print(f"wrote {path}: Inception statistics of {_REF_SOURCE.value} at {_IMAGE_SIZE.value}px")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    for name, flag in (
        ("num_samples", _NUM_SAMPLES),
        ("batch_size", _BATCH_SIZE),
        ("kid_subsets", _KID_SUBSETS),
        ("image_size", _IMAGE_SIZE),
        ("max_images", _MAX_IMAGES),
    ):
        _positive(name, flag.value)
    if _REF_SOURCE.value:
        _compute_reference()
        return
    if not _WORKDIR.value:
        raise cli.UserError("give --workdir DIR (a training run to evaluate) or --ref_source SOURCE")
    if _SAMPLER.value is not None:  # before loading a model
        check_sampler_name(_SAMPLER.value)
    metric = _METRIC.value if _METRIC.value != "auto" else ("inception" if _REF_STATS.value else "digits")
    if metric == "inception" and not _REF_STATS.value:
        raise cli.UserError("--metric inception needs --ref_stats FILE.npz (see --ref_source to make one)")
    if _REF_STATS.value:
        scoring.load_statistics(_REF_STATS.value, dim=scoring.INCEPTION_DIM)  # bad file: fail before sampling
    step_counts = _parse_steps(_STEPS.value)

    model = load_workdir(_WORKDIR.value, ema=_EMA.value)
    sampler = _SAMPLER.value or model.default_sampler
    out_dir = _OUT.value or os.path.join(_WORKDIR.value, "eval")
    os.makedirs(out_dir, exist_ok=True)
    score_key = "fid" if metric == "inception" else "digits_fd"
    rows = []
    for steps in step_counts:
        steps = steps if steps is not None else model.default_steps
        sampler = validate_sampling(sampler, steps, model.num_train_timesteps, objective=model.objective.name)
        fn = model.sample_fn(
            sampler=sampler,
            num_inference_steps=steps,
            eta=model.default_eta,
            batch_size=min(_BATCH_SIZE.value, _NUM_SAMPLES.value),
        )
        samples = generate(fn, model.params, seed=_SEED.value, num_samples=_NUM_SAMPLES.value)
        scoring.check_finite(samples)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = scoring.score_images(
                grids.to_uint8(samples),
                metric,
                ref_stats=_REF_STATS.value,
                weights_path=_WEIGHTS.value,
                allow_download=_DOWNLOAD.value,
                kid_subsets=_KID_SUBSETS.value,
                batch_size=_BATCH_SIZE.value,
            )
        for warning in caught:
            print(f"warning: {cli.one_line(warning.message)}")
        row = {
            "sampler": sampler,
            "steps": steps,
            "nfe": fn.num_steps,  # model evaluations (Heun: two per step but the last)
            "metric": metric,
            "seed": _SEED.value,
            **scores,
        }
        rows.append(row)
        if jax.process_index() == 0:
            path = os.path.join(out_dir, f"eval_{sampler}_{steps}.json")
            with open(path, "w") as f:
                json.dump(row, f, indent=2)
            floor = f" (real-vs-real floor {row['digits_floor']:.3f})" if metric == "digits" else ""
            kid_key = "kid_mean" if metric == "inception" else "digits_kid_mean"
            kid_text = f", KID {row[kid_key]:.5f}" if kid_key in row else ""
            head = f"{sampler} {steps} steps, {row['num_samples']} samples"
            print(f"{head}: {score_key} {row[score_key]:.4f}{floor}{kid_text} -> {path}")
    if len(rows) > 1 and jax.process_index() == 0:
        title = f"{os.path.basename(os.path.normpath(_WORKDIR.value))}: {score_key} vs NFE ({sampler})"
        for path in scoring.write_sweep(rows, out_dir, score_key, title):
            print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
