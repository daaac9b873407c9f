"""Draw images from a trained model.

    python sample.py --workdir workdirs/digits                 # newest checkpoint, EMA weights
    python sample.py --pretrained workdirs/digits/diffusers    # a diffusers pipeline or UNet folder
        [--sampler ddpm|ddim|dpm++|euler] [--steps 50] [--num_samples 64] [--seed 0] [--batch_size 64]
        [--microbatch_size 0] [--class_labels 0,1,2 | all] [--guidance_scale 3] [--guidance_rescale 0.7]
        [--out grid.png] [--npz samples.npz] [--process_strip strip.png --strip_every 5]

Batches are split over all devices. ``--process_strip`` saves the denoising process of the first few
images: for each, a row of the noisy input x_t and a row of the predicted x0, every ``--strip_every``
steps from left (noise) to right (the final step). Bad input prints ``error: <message>`` and exits 2.

A class-conditional model: ``--class_labels`` gives image ``i`` the label ``labels[i % len(labels)]``
(``all``: ``0..K-1``), the grid has one row per class, and ``--npz`` also stores ``labels`` (int32 [N]).
``--guidance_scale`` (classifier-free guidance, 1 = off) needs a model trained with a null class.
"""

import os

from jaxdiff.execution.allocator import relaunch_under_mimalloc

relaunch_under_mimalloc()  # first: re-runs this command under mimalloc (see jaxdiff/execution/allocator.py)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from jaxdiff import cli, grids, samplers  # noqa: E402  (jaxdiff first sets the CPU XLA flags)
from jaxdiff.guidance import (  # noqa: E402
    check_guidance_rescale,
    check_guidance_scale,
    parse_class_labels,
)
from jaxdiff.inference import generate, load_pretrained, load_workdir  # noqa: E402
from jaxdiff.run_config import check_sampler_name, validate_sampling  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py run directory: its newest checkpoint is used.")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "A diffusers pipeline folder or UNet2DModel folder.")
_SAMPLER = flags.DEFINE_string(
    "sampler",
    None,
    f"One of {', '.join(samplers.sampler_names())} or an alias (default: the run's sample.sampler).",
)
_STEPS = flags.DEFINE_integer(
    "steps", None, "Sampling steps, 1..num_train_timesteps (default: the run's, else 50)."
)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Number of images.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise: the same seed gives the same images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per batch (rounded up to the device count).")
_MICROBATCH = flags.DEFINE_integer(
    "microbatch_size",
    0,
    "Images per device per model evaluation: a divisor of the per-device batch, or 0 (automatic: passes "
    "on a CPU for large activations, see jaxdiff/execution/passes.py).",
)
_ETA = flags.DEFINE_float("eta", None, "DDIM's eta (default: the run's sample.eta, else 0).")
_CLASS_LABELS = flags.DEFINE_string(
    "class_labels",
    None,
    "Class-conditional models: comma-separated labels such as 0,1,2, or 'all' (0..K-1); image i gets "
    "labels[i % len(labels)] and the grid one row per class (default: every class in turn).",
)
_GUIDANCE_SCALE = flags.DEFINE_float(
    "guidance_scale",
    None,
    "Classifier-free guidance scale >= 0, 1 = off (default: the run's sample.guidance_scale, else 1).",
)
_GUIDANCE_RESCALE = flags.DEFINE_float(
    "guidance_rescale",
    None,
    "Guidance rescale in [0, 1] (Lin et al. 2023; default: the run's sample.guidance_rescale, else 0).",
)
_EMA = flags.DEFINE_boolean("ema", True, "--workdir: use the EMA weights (--noema: the raw weights).")
_OUT = flags.DEFINE_string(
    "out", None, "PNG grid (default: <workdir>/samples/sample_<sampler>_<steps>.png or samples.png)."
)
_NPZ = flags.DEFINE_string(
    "npz", None, "Also save the images as float32 [N, H, W, C] in [-1, 1] (key 'images')."
)
_STRIP = flags.DEFINE_string(
    "process_strip", None, "Also save the denoising process of the first images as a PNG."
)
_STRIP_EVERY = flags.DEFINE_integer(
    "strip_every", None, "Snapshot spacing for --process_strip (default: steps / 10)."
)
_STRIP_IMAGES = flags.DEFINE_integer("strip_images", 4, "How many images --process_strip shows.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "--pretrained: image size when the UNet config has no sample_size."
)
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"], "jax.distributed.initialize.")


def _positive(name, value):
    if value is not None and value < 1:
        raise cli.UserError(f"--{name}={value} must be a positive integer")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    if bool(_WORKDIR.value) == bool(_PRETRAINED.value):
        raise cli.UserError(
            "give exactly one of --workdir DIR (a training run) or --pretrained DIR (diffusers)"
        )
    for name, flag in (
        ("num_samples", _NUM_SAMPLES),
        ("batch_size", _BATCH_SIZE),
        ("strip_every", _STRIP_EVERY),
        ("strip_images", _STRIP_IMAGES),
        ("image_size", _IMAGE_SIZE),
        ("steps", _STEPS),
    ):
        _positive(name, flag.value)
    if _MICROBATCH.value < 0:
        raise cli.UserError(
            f"--microbatch_size={_MICROBATCH.value} must be 0 (automatic) or a positive integer"
        )
    if _SAMPLER.value is not None:  # before loading a model
        check_sampler_name(_SAMPLER.value)
    if _GUIDANCE_SCALE.value is not None:
        check_guidance_scale(_GUIDANCE_SCALE.value, "--guidance_scale")
    if _GUIDANCE_RESCALE.value is not None:
        check_guidance_rescale(_GUIDANCE_RESCALE.value, "--guidance_rescale")
    if _STRIP_EVERY.value is not None and not _STRIP.value:
        raise cli.UserError("--strip_every needs --process_strip FILE.png")
    cli.maybe_initialize_distributed(_DISTRIBUTED.value)

    if _WORKDIR.value:
        model = load_workdir(_WORKDIR.value, ema=_EMA.value)
    else:
        model = load_pretrained(_PRETRAINED.value, image_size=_IMAGE_SIZE.value)
    steps = _STEPS.value if _STEPS.value is not None else model.default_steps
    sampler = validate_sampling(
        _SAMPLER.value or model.default_sampler,
        steps,
        model.num_train_timesteps,
        objective=model.objective.name,
    )
    class_labels = parse_class_labels(_CLASS_LABELS.value, model.num_classes, "--class_labels")
    guidance_scale = model.default_guidance_scale if _GUIDANCE_SCALE.value is None else _GUIDANCE_SCALE.value
    if guidance_scale != 1 and not model.num_classes:
        raise cli.UserError(
            f"--guidance_scale={guidance_scale:g} needs a class-conditional model; this one is unconditional"
        )
    if guidance_scale != 1 and model.null_label is None:
        raise cli.UserError(
            f"--guidance_scale={guidance_scale:g} needs a model trained with a null class (label dropout); "
            "this one has none"
        )
    strip_every = None
    if _STRIP.value:
        strip_every = _STRIP_EVERY.value or max(1, steps // 10)
    fn = model.sample_fn(
        sampler=sampler,
        num_inference_steps=steps,
        eta=_ETA.value if _ETA.value is not None else model.default_eta,
        batch_size=min(_BATCH_SIZE.value, _NUM_SAMPLES.value),
        intermediates_every=strip_every,
        microbatch_size=_MICROBATCH.value,
        class_labels=class_labels,
        guidance_scale=guidance_scale,
        guidance_rescale=_GUIDANCE_RESCALE.value,
    )
    out = generate(fn, model.params, seed=_SEED.value, num_samples=_NUM_SAMPLES.value)
    labels = fn.image_labels(_NUM_SAMPLES.value)
    x, frames = (out, None) if strip_every is None else out
    # The data range, as diffusers' pipelines return images (a sampler can overshoot it).
    x = np.clip(x, -1.0, 1.0)
    if jax.process_index() != 0:
        return
    grid = _OUT.value
    if grid is None:
        grid = (
            os.path.join(_WORKDIR.value, "samples", f"sample_{sampler}_{steps}.png")
            if _WORKDIR.value
            else "samples.png"
        )
    if class_labels is None:
        path = grids.save_grid(grid, x)
        layout = ""
    else:  # one row per class
        tiles, ncol = grids.rows_by_class(x, labels)
        path = grids.save_grid(grid, tiles, nrow=ncol)
        layout = f", one row per class ({len(tiles) // ncol} rows)"
    guided = "" if fn.guidance_scale == 1 else f", guidance scale {fn.guidance_scale:g}"
    print(f"wrote {path}: {len(x)} images, {sampler}, {steps} steps, seed {_SEED.value}{guided}{layout}")
    if _NPZ.value:
        os.makedirs(os.path.dirname(os.path.abspath(_NPZ.value)), exist_ok=True)
        extra = {} if frames is None else {"x_t": frames["x_t"], "pred_x0": frames["pred_x0"]}
        if labels is not None:
            extra["labels"] = labels.astype(np.int32)
        np.savez(_NPZ.value, images=x.astype(np.float32), **extra)
        stored = "" if labels is None else f", labels {labels.shape} int32"
        print(f"wrote {_NPZ.value}: images {x.shape} float32 in [-1, 1]{stored}")
    if frames is not None:
        k = min(_STRIP_IMAGES.value, x.shape[0])
        # Per image: a row of x_t, then a row of predicted x0.
        rows = np.stack([frames["x_t"][:, :k], frames["pred_x0"][:, :k]], axis=2)
        rows = rows.reshape(rows.shape[0], 2 * k, *rows.shape[3:])
        path = grids.save_process_strip(_STRIP.value, rows)
        print(f"wrote {path}: {k} images x (x_t, predicted x0) at {rows.shape[0]} steps, every {strip_every}")


if __name__ == "__main__":
    cli.run(main)
