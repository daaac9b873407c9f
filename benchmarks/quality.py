"""Sample quality at a fixed compute budget: jaxdiff vs diffusers (PyTorch), same recipe, on digits.

Both sides train ``configs/default.py``'s digits UNet (16x16, one channel) with the same recipe:
DDPM epsilon loss on the linear 1000-step schedule, AdamW (same betas, weight decay, eps), the same
warm-up + cosine learning rate, global-norm clipping, diffusers ``EMAModel`` decay, the same batch size
and number of steps, and the very same sequence of training batches (an epoch-shuffled training split).
jaxdiff uses its real train step (``jaxdiff.training``); diffusers the ``train_unconditional.py`` loop.

Quality: a Fréchet distance between the EMA model's samples and held-out real digits, in the feature
space of a digit classifier (an MLP trained on the real training split; features = its last hidden
layer). The distance from the training split to the held-out split is the floor: a perfect generator
scores about that. Each sampler (DDPM, DDIM, DPM-Solver++, Euler) is scored at several step counts.
Every set of images is the same size (``--num_samples``, default: the held-out size), which keeps the
estimator's small-sample bias the same for all rows. Sample grids (PNG) go to ``--out``.

Which recipe (DDPM, EDM, flow matching, a diffusers user's) gives the best digits for the same CPU time is
``benchmarks/recipes.py``'s question; this script compares the two libraries on one recipe.

  python benchmarks/quality.py                        # ~35-40 min on 2 CPU cores
  python benchmarks/quality.py --train_steps 300 --curve "ddim:10,50" --num_samples 200   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.execution.allocator import active as mimalloc_active  # noqa: E402
from jaxdiff.execution.allocator import relaunch_under_mimalloc  # noqa: E402

relaunch_under_mimalloc()  # first, as train.py does: both sides run under mimalloc

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxdiff  # noqa: E402,F401  (adds jaxdiff's CPU XLA flags; JAX has no backend yet)
from jaxdiff.evaluation.digits import digits_metric  # noqa: E402

DEFAULT_CURVE = (
    "ddpm:10,25,50,100,1000;ddim:10,25,50,100;dpm++:10,25,50;euler:10,25,50,100;"
    "heun:10,25;euler_a:10,25,50;unipc:10,25,50;dpm++sde:10,25,50"
)


# -- real data and the feature space ---------------------------------------------------------------------


# The split, the classifier (cached on disk) and the Fréchet distance are jaxdiff.evaluation.digits':
# the same numbers as `evaluate.py --metric digits` and the README's demo.


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] -> uint8 pixels, as a saved PNG would hold them (``jaxdiff.grids``)."""
    from jaxdiff.grids import to_uint8 as convert

    return convert(x)


# -- the shared recipe -----------------------------------------------------------------------------------


def make_config(args: argparse.Namespace):
    from configs.default import get_config  # the repository's configs/ (on sys.path above)

    config = get_config()
    t = config.train
    t.batch_size, t.num_steps, t.learning_rate, t.warmup_steps = (
        args.batch_size,
        args.train_steps,
        args.learning_rate,
        args.warmup_steps,
    )
    config.seed = args.seed
    return config


def batch_indices(n: int, batch: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """The same index batches for both sides: consecutive slices of fresh per-epoch permutations."""
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(n)])
        yield order[:batch]
        order = order[batch:]


def to_float(images_u8: np.ndarray) -> np.ndarray:
    return images_u8.astype(np.float32) / 127.5 - 1.0


# -- jaxdiff -----------------------------------------------------------------------------------------------


def train_jaxdiff(config, train_x: np.ndarray, args) -> tuple[Any, Any, dict[str, float]]:
    from jaxdiff.sharding import global_batch
    from jaxdiff.training import components

    c = components.build_components(config)
    state = c.init_state()
    step = components.build_train_step(c)
    xs = to_float(train_x)
    labels = np.zeros((args.batch_size,), np.int32)
    start = time.perf_counter()
    compiled = None
    losses = []
    for idx in batch_indices(len(xs), args.batch_size, args.train_steps, args.seed):
        batch = global_batch({"image": xs[idx], "label": labels}, c.batch_sharding)
        if compiled is None:
            compiled = step.lower(state, batch).compile()
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
        state, metrics = compiled(state, batch)
        losses.append(metrics["loss"])
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    tail = float(np.mean([float(x) for x in losses[-100:]]))
    return c.apply_fn, state.ema_params, {"train_s": seconds, "compile_s": compile_s, "final_loss": tail}


def sample_jaxdiff(apply_fn, params, scheduler_config: dict, steps: int, n: int, chunk: int, seed: int):
    from jaxdiff.execution.passes import in_passes_for_batch
    from jaxdiff.samplers import from_diffusers_config, sample

    sampler = from_diffusers_config(scheduler_config, steps)

    @jax.jit
    def generate(sampler, params, x_T, key):
        # As sample.py evaluates the model: in passes on a CPU for large activations.
        model = in_passes_for_batch(apply_fn, params, x_T.shape)
        return sample(sampler, lambda x, t: model(params, x, t), x_T, key)

    out, compile_s, run_s = [], 0.0, 0.0
    for i in range(-(-n // chunk)):
        key = jax.random.fold_in(jax.random.key(seed), i)
        x_T = jax.random.normal(jax.random.fold_in(key, 0), (chunk, 16, 16, 1))
        t0 = time.perf_counter()
        if i == 0:
            compiled = generate.lower(sampler, params, x_T, key).compile()
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
        out.append(np.asarray(compiled(sampler, params, x_T, jax.random.fold_in(key, 1))))
        run_s += time.perf_counter() - t0
    info = {"sample_s": run_s, "compile_s": compile_s, "nfe": sampler.num_model_evaluations}
    return np.concatenate(out)[:n], info


# -- diffusers -----------------------------------------------------------------------------------------------


def torch_unet_kwargs(config) -> dict[str, Any]:
    model = config.model.to_dict()
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items() if not k.startswith("_")}


def train_diffusers(config, train_x: np.ndarray, args):
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    t = config.train
    torch.manual_seed(args.seed)
    model = UNet2DModel(**torch_unet_kwargs(config)).train()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=t.learning_rate,
        betas=(t.adam_b1, t.adam_b2),
        weight_decay=t.weight_decay,
        eps=t.adam_eps,
    )
    lr_sched = get_scheduler(
        t.lr_schedule, optimizer=opt, num_warmup_steps=t.warmup_steps, num_training_steps=t.num_steps
    )
    ema = EMAModel(
        model.parameters(),
        decay=t.ema_decay,
        min_decay=t.ema_min_decay,
        update_after_step=t.ema_update_after_step,
        use_ema_warmup=t.ema_use_warmup,
        inv_gamma=t.ema_inv_gamma,
        power=t.ema_power,
    )
    d = config.diffusion
    noise_sched = DDPMScheduler(
        num_train_timesteps=d.num_train_timesteps,
        beta_schedule=d.beta_schedule,
        beta_start=d.beta_start,
        beta_end=d.beta_end,
    )
    xs = torch.from_numpy(to_float(train_x)).permute(0, 3, 1, 2).contiguous()
    losses = []
    start = time.perf_counter()
    for idx in batch_indices(len(xs), args.batch_size, args.train_steps, args.seed):
        x = xs[torch.from_numpy(idx)]
        noise = torch.randn_like(x)
        ts = torch.randint(0, d.num_train_timesteps, (len(x),))
        pred = model(noise_sched.add_noise(x, noise, ts), ts, return_dict=False)[0]
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    ema.copy_to(model.parameters())
    return model.eval(), {"train_s": seconds, "final_loss": float(np.mean(losses[-100:]))}


def sample_diffusers(model, scheduler_config: dict, steps: int, n: int, chunk: int, seed: int):
    import diffusers
    import torch

    config = {k: v for k, v in scheduler_config.items() if k != "eta"}
    out, start = [], time.perf_counter()
    for i in range(0, n, chunk):
        sched = getattr(diffusers, config["_class_name"]).from_config(config)
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        x = torch.randn((chunk, 1, 16, 16), generator=gen) * sched.init_noise_sigma
        with torch.inference_mode():
            for t in sched.timesteps:
                eps = model(sched.scale_model_input(x, t), t, return_dict=False)[0]
                x = sched.step(eps, t, x, generator=gen, return_dict=False)[0]
        out.append(x.permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)[:n], {"sample_s": time.perf_counter() - start}


# -- the run -------------------------------------------------------------------------------------------------


def parse_curve(spec: str) -> list[tuple[str, int]]:
    from jaxdiff.samplers import resolve_sampler, sampler_names

    items = []
    for part in spec.split(";"):
        name, _, steps = part.strip().partition(":")
        try:
            name = resolve_sampler(name).name
        except ValueError:
            steps = ""
        if not steps:
            raise SystemExit(
                f"error: --curve item {part!r} is not SAMPLER:N,N,... with SAMPLER in "
                f"{', '.join(sampler_names())}"
            )
        items += [(name, int(s)) for s in steps.split(",")]
    return items


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_steps", type=int, default=1500, help="optimizer steps for each side")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_steps", type=int, default=100)
    p.add_argument("--holdout", type=int, default=400, help="real digits held out for scoring")
    p.add_argument("--num_samples", type=int, default=None, help="images per scored set (default: --holdout)")
    p.add_argument("--sample_chunk", type=int, default=200, help="images per sampling call")
    p.add_argument("--curve", default=DEFAULT_CURVE, help="SAMPLER:N,N;... (default: %(default)s)")
    p.add_argument("--sides", default="jaxdiff,diffusers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--out", default="benchmarks/quality_out", help="sample grids and results.json")
    args = p.parse_args(argv)
    n = args.num_samples or args.holdout
    curve = parse_curve(args.curve)
    sides = args.sides.split(",")
    os.makedirs(args.out, exist_ok=True)

    import torch

    from jaxdiff.grids import save_grid
    from jaxdiff.samplers import scheduler_config_for

    torch.set_num_threads(args.threads)
    feats = digits_metric(args.holdout, args.seed)
    tr_x, ho_x, ho_y, floor = feats.train_images, feats.heldout_images, feats.heldout_labels, feats.floor
    results: dict[str, Any] = {
        "args": vars(args),
        "classifier_heldout_accuracy": feats.accuracy(ho_x, ho_y),
        "floor_train_vs_heldout": floor,
        "train_size": len(tr_x),
        "heldout_size": len(ho_x),
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "allocator": "mimalloc" if mimalloc_active() else "glibc malloc",
        "sides": {},
    }
    print(
        f"classifier held-out accuracy {results['classifier_heldout_accuracy']:.3f}; "
        f"real-vs-real FD floor {floor:.3f} ({len(tr_x)} train / {len(ho_x)} held-out)",
        flush=True,
    )
    config = make_config(args)

    for side in sides:
        print(f"[{time.strftime('%H:%M:%S')}] training {side}: {args.train_steps} steps", flush=True)
        if side == "jaxdiff":
            apply_fn, params, info = train_jaxdiff(config, tr_x, args)
        elif side == "diffusers":
            model, info = train_diffusers(config, tr_x, args)
        else:
            raise SystemExit(f"error: --sides item {side!r} is not jaxdiff or diffusers")
        print(f"  {info}", flush=True)
        scores = {}
        for name, steps in curve:
            sched_cfg = scheduler_config_for(name, config.diffusion)
            if side == "jaxdiff":
                x, s_info = sample_jaxdiff(
                    apply_fn, params, sched_cfg, steps, n, args.sample_chunk, args.seed
                )
            else:
                x, s_info = sample_diffusers(model, sched_cfg, steps, n, args.sample_chunk, args.seed)
            u8 = to_uint8(x)
            fd = feats.fd(u8)
            hist = feats.class_histogram(u8)
            scores[f"{name}:{steps}"] = {"fd": fd, "min_class_share": float(hist.min()), **s_info}
            print(
                f"  {name:6s} {steps:5d} steps  FD {fd:8.3f}  rarest class {hist.min():.3f}  {s_info}",
                flush=True,
            )
            save_grid(os.path.join(args.out, f"{side}_{name}_{steps}.png"), x[:64])
        results["sides"][side] = {"train": info, "scores": scores}
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)

    print()
    print(render(results, curve))


def render(results: dict[str, Any], curve: list[tuple[str, int]]) -> str:
    sides = list(results["sides"])
    lines = [
        f"Fréchet distance to {results['heldout_size']} held-out digits in the classifier's feature space "
        f"(lower is better; real-vs-real floor {results['floor_train_vs_heldout']:.3f}; classifier held-out "
        f"accuracy {results['classifier_heldout_accuracy']:.3f})",
        "",
        "| sampler | steps | NFE | "
        + " | ".join(f"{s} FD" for s in sides)
        + " | "
        + " | ".join(f"{s} sampling s" for s in sides)
        + " |",
        "|---|---|---|" + "---|" * (2 * len(sides)),
    ]
    for name, steps in curve:
        k = f"{name}:{steps}"
        fds = " | ".join(f"{results['sides'][s]['scores'][k]['fd']:.3f}" for s in sides)
        secs = " | ".join(f"{results['sides'][s]['scores'][k]['sample_s']:.1f}" for s in sides)
        nfe = results["sides"][sides[0]]["scores"][k].get("nfe", steps)
        lines.append(f"| {name} | {steps} | {nfe} | {fds} | {secs} |")
    lines.append("")
    for s in sides:
        lines.append(f"- {s} training: {results['sides'][s]['train']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
