"""Which recipe gives the best digits for the same CPU time: training recipes compared at equal compute.

Each recipe is a run config (a file under ``configs/``, with optional ``key=value`` overrides, or the
built-in ``diffusers_user``: the recipe a diffusers user would write for these digits). For each, the
script times its real train step (``jaxdiff.training``) on this machine, trains it for as many steps as
fit in ``--budget_s`` seconds (the learning-rate schedule and warm-up spread over those steps), on the very
same sequence of training batches as the others, then scores the EMA model's samples with every sampler
of its curve: Fréchet distance to the held-out digits in the digit classifier's feature space
(``jaxdiff.evaluation.digits``, the metric of ``benchmarks/quality.py``), as a ratio to the real-vs-real
floor, against the number of model evaluations (NFE). Sample grids (PNG) and ``results.json`` go to
``--out``.

  python benchmarks/recipes.py                                  # the default comparison (~70 min)
  python benchmarks/recipes.py --recipe cond=configs/digits_cond.py   # accuracy / FD against guidance
  python benchmarks/recipes.py --recipe edm=configs/digits_edm.py --steps edm=200 --num_samples 100   # smoke

``--steps label=N`` skips the timing and trains ``N`` steps: the training then does not depend on the
machine's load, so a comparison can be re-run anywhere with the step counts a quiet run chose.
``--train_seeds 0,1,2`` trains each recipe once per seed (its initialisation and its batches; the
held-out split and the sampling noise stay fixed) and reports the mean and the spread: on 1,397 digits the
training seed moves the score by more than the metric's own noise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.execution.allocator import relaunch_under_mimalloc  # noqa: E402

relaunch_under_mimalloc()  # as train.py does

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import jaxdiff  # noqa: E402,F401  (jaxdiff's CPU XLA flags before JAX picks a backend)
from benchmarks.quality import batch_indices, to_float  # noqa: E402
from jaxdiff import sharding  # noqa: E402
from jaxdiff.evaluation.digits import digits_metric  # noqa: E402
from jaxdiff.grids import rows_by_class, save_grid, to_uint8  # noqa: E402
from jaxdiff.inference.generate import generate, make_sample_fn  # noqa: E402
from jaxdiff.run_config import default_config  # noqa: E402
from jaxdiff.training import components  # noqa: E402

DEFAULT_RECIPES = (
    "ddpm=configs/digits_ddpm.py",
    "ddpm_v=configs/digits_ddpm.py:diffusion.prediction_type=v_prediction",
    "edm=configs/digits_edm.py",
    "flow=configs/digits_flow.py",
    "diffusers_user=diffusers_user",
)

# Samplers scored per objective: a few steps, the 10-20 NFE band, and up to 50 NFE.
DEFAULT_CURVES = {
    "ddpm": "ddim:10,20,50;dpm++:10,20;unipc:10,20;euler:20,50;heun:10,25",
    "edm": "edm:5,10,18;edm_euler:10,20,50;edm_dpm++:10,20",
    "flow": "flow_euler:10,20,50",
}


def diffusers_user_config() -> ml_collections.ConfigDict:
    """The recipe a diffusers user writes for 16x16 digits (the course's / ``train_unconditional.py``'s
    choices): ``UNet2DModel`` (32, 64, 64), two ResNet layers per level, self-attention at 8x8 and 4x4,
    cosine betas, epsilon prediction, AdamW 1e-3 with warm-up and cosine decay, batch 128, EMA 0.999, DDIM
    50 steps."""
    config = default_config()
    model = config.model
    model.layers_per_block = 2
    model.down_block_types = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    config.diffusion.beta_schedule = "squaredcos_cap_v2"
    train = config.train
    train.batch_size = 128
    train.learning_rate = 1e-3
    train.warmup_steps = 100
    train.ema_decay = 0.999
    config.sample.sampler = "ddim"
    config.sample.num_inference_steps = 50
    return config


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_recipe(spec: str) -> tuple[str, ml_collections.ConfigDict]:
    """``label=path.py[:key=value;key=value]`` (or ``label=diffusers_user``) -> (label, config); values are
    JSON where they parse (``model.block_out_channels=[8,16]``), else strings."""
    label, _, rest = spec.partition("=")
    path, _, overrides = rest.partition(":")
    if not label or not path:
        raise SystemExit(f"error: --recipe {spec!r} is not LABEL=CONFIG.py[:key=value;...]")
    if path == "diffusers_user":
        config = diffusers_user_config()
    else:
        module_spec = importlib.util.spec_from_file_location(f"recipe_{label}", path)
        if module_spec is None or not os.path.isfile(path):
            raise SystemExit(f"error: --recipe {spec!r}: no config file {path!r}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config()
    for item in filter(None, overrides.split(";")):
        key, _, value = item.partition("=")
        section = config
        *parents, leaf = key.split(".")
        for p in parents:
            section = section[p]
        value = _parse_value(value)
        section[leaf] = tuple(value) if isinstance(value, list) else value
    return label, config


def parse_curve(spec: str) -> list[tuple[str, int]]:
    items = []
    for part in filter(None, spec.split(";")):
        name, _, steps = part.partition(":")
        items += [(name.strip(), int(s)) for s in steps.split(",")]
    return items


def _with_steps(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.num_steps = int(steps)
    return config


def seconds_per_step(config: ml_collections.ConfigDict, xs: np.ndarray, steps: int, seed: int) -> float:
    """The train step's wall time on this machine: the median of ``steps`` timed steps after compiling."""
    c = components.build_components(_with_steps(config, 10_000))
    state = c.init_state()
    step = components.build_train_step(c)
    batch_size = c.run.train.batch_size
    times = []
    compiled = None
    for idx in batch_indices(len(xs), batch_size, steps + 3, seed):
        batch = sharding.global_batch(
            {"image": xs[idx], "label": np.zeros(batch_size, np.int32)}, c.batch_sharding
        )
        if compiled is None:
            compiled = step.lower(state, batch).compile()
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times[3:]))


def train(config: ml_collections.ConfigDict, xs: np.ndarray, labels: np.ndarray, steps: int, seed: int):
    """``steps`` optimizer steps of the run's real train step; returns (components, EMA params, info)."""
    c = components.build_components(_with_steps(config, steps))
    state = c.init_state()
    step = components.build_train_step(c)
    batch_size = c.run.train.batch_size
    start, compiled, compile_s, losses = time.perf_counter(), None, 0.0, []
    for idx in batch_indices(len(xs), batch_size, steps, seed):
        batch = sharding.global_batch({"image": xs[idx], "label": labels[idx]}, c.batch_sharding)
        if compiled is None:
            compiled = step.lower(state, batch).compile()
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
        state, metrics = compiled(state, batch)
        losses.append(metrics["loss"])
    jax.block_until_ready(state)
    info = {
        "steps": steps,
        "train_s": time.perf_counter() - start,
        "compile_s": compile_s,
        "final_loss": float(np.mean([float(x) for x in losses[-100:]])),
    }
    return c, state.ema_params, info


def _sample_fn(c, params, sampling, chunk: int, **guidance: Any):
    """``make_sample_fn`` for a trained recipe's replicated EMA params, ``chunk`` images per call."""
    return make_sample_fn(
        c.apply_fn,
        sampling,
        image_shape=c.run.image_shape,
        mesh=c.mesh,
        param_sharding=jax.tree.map(lambda _: sharding.replicated(c.mesh), params),
        batch_size=chunk,
        num_classes=c.run.num_classes,
        **guidance,
    )


def score_samplers(c, params, curve, feats, n: int, chunk: int, seed: int, out: str, label: str) -> dict:
    run = c.run
    scores = {}
    for name, steps in curve:
        sampling = run.objective.make_sampling(run.diffusion.to_dict(), name, steps, 0.0)
        fn = _sample_fn(c, params, sampling, chunk)
        t0 = time.perf_counter()
        x = generate(fn, params, seed=seed, num_samples=n)
        seconds = time.perf_counter() - t0
        u8 = to_uint8(x)
        fd = feats.fd(u8)
        scores[f"{name}:{steps}"] = {
            "fd": fd,
            "ratio": fd / feats.floor,
            "nfe": int(sampling.num_steps),
            "min_class_share": float(feats.class_histogram(u8).min()),
            "sample_s": seconds,
        }
        print(
            f"  {name:11s} {steps:4d} steps  NFE {sampling.num_steps:4d}  FD {fd:8.3f}  "
            f"({fd / feats.floor:5.2f}x floor)  {seconds:6.1f} s",
            flush=True,
        )
        save_grid(os.path.join(out, f"{label}_{name}_{steps}.png"), x[:64])
    return scores


def score_guidance(c, params, scales, feats, n: int, chunk: int, seed: int, out: str, label: str) -> dict:
    """A class-conditional recipe at each classifier-free guidance scale, with its configured sampler:
    image ``i`` asks for class ``i % K``; the digit classifier's accuracy on them (overall and per class)
    and the Fréchet distance of the whole set (the quality / faithfulness trade-off)."""
    run = c.run
    k = run.num_classes
    sampling = run.objective.make_sampling(
        run.diffusion.to_dict(), run.sample.sampler, run.sample.num_inference_steps, run.sample.eta
    )
    rows = {}
    for scale in scales:
        fn = _sample_fn(
            c,
            params,
            sampling,
            chunk,
            class_labels=tuple(range(k)),
            guidance_scale=scale,
            guidance_rescale=run.sample.guidance_rescale,
            null_label=run.null_label,
        )
        x = generate(fn, params, seed=seed, num_samples=n)
        asked = fn.image_labels(n)
        u8 = to_uint8(x)
        predicted = feats.predict(u8)
        per_class = [float(np.mean(predicted[asked == j] == j)) for j in range(k)]
        fd = feats.fd(u8)
        rows[str(scale)] = {
            "accuracy": float(np.mean(predicted == asked)),
            "per_class_accuracy": per_class,
            "fd": fd,
            "ratio": fd / feats.floor,
        }
        print(
            f"  guidance {scale:4.1f}  accuracy {rows[str(scale)]['accuracy']:.3f} (worst class "
            f"{min(per_class):.3f})  FD {fd:7.3f} ({fd / feats.floor:4.2f}x floor)",
            flush=True,
        )
        grid, ncol = rows_by_class(x[: 8 * k], asked[: 8 * k])
        save_grid(os.path.join(out, f"{label}_guidance_{scale}.png"), grid, nrow=ncol)
    return rows


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per sampler over the training seeds' runs: the mean FD and ratio, and every run's ratio."""
    out = {}
    for key, first in runs[0]["scores"].items():
        fds = [r["scores"][key]["fd"] for r in runs]
        ratios = [r["scores"][key]["ratio"] for r in runs]
        out[key] = {
            "nfe": first["nfe"],
            "fd": float(np.mean(fds)),
            "ratio": float(np.mean(ratios)),
            "ratios": ratios,
        }
    return out


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Fréchet distance to {results['heldout_size']} held-out digits (classifier feature space; the mean "
        f"over sets of {results['heldout_size']} samples), as a ratio to the real-vs-real floor "
        f"{results['floor']:.3f} (a set of real digits: +-{results['floor_std'] / results['floor']:.2f}x); "
        f"training budget {results['budget_s']} s",
        "",
        "| recipe | train steps | s/step | sampler | steps | NFE | FD | x floor | x floor, each seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["recipes"].items():
        for key, s in r["scores"].items():
            name, steps = key.split(":")
            lines.append(
                f"| {label} | {r['train']['steps']} | {r.get('seconds_per_step', float('nan')):.3f} | "
                f"{name} | "
                f"{steps} | {s['nfe']} | {s['fd']:.3f} | {s['ratio']:.2f} | "
                f"{' '.join(f'{v:.2f}' for v in s['ratios'])} |"
            )
    for label, r in results["recipes"].items():
        if not r.get("guidance"):
            continue
        lines += [
            "",
            f"{label}: classifier-free guidance, {r['sampler']}; accuracy = share of samples the digit "
            "classifier reads as the class asked for",
            "",
            "| guidance scale | accuracy | worst class | per class (0..K-1) | FD | x floor |",
            "|---|---|---|---|---|---|",
        ]
        for scale, g in r["guidance"].items():
            per = " ".join(f"{a:.2f}" for a in g["per_class_accuracy"])
            lines.append(
                f"| {scale} | {g['accuracy']:.3f} | {min(g['per_class_accuracy']):.3f} | {per} | "
                f"{g['fd']:.3f} | {g['ratio']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", action="append", help="LABEL=CONFIG.py[:key=value;...] (repeatable)")
    p.add_argument("--budget_s", type=float, default=420.0, help="training seconds per recipe")
    p.add_argument("--steps", action="append", default=[], help="LABEL=N: train N steps, no timing")
    p.add_argument("--time_steps", type=int, default=20, help="timed steps per recipe")
    p.add_argument("--time_only", action="store_true", help="time the recipes, print their --steps, stop")
    p.add_argument("--curve", action="append", default=[], help="LABEL=SAMPLER:N,N;... per recipe")
    p.add_argument(
        "--guidance_scales", default="1,1.5,2,3,4", help="for class-conditional recipes ('' for none)"
    )
    p.add_argument("--holdout", type=int, default=400)
    p.add_argument(
        "--num_samples", type=int, default=None, help="images scored per sampler (default: 5 x --holdout)"
    )
    p.add_argument("--sample_chunk", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the held-out split's and the sampling noise's seed")
    p.add_argument("--train_seeds", default="0", help="training seeds, comma-separated: one run each")
    p.add_argument("--out", default="benchmarks/recipes_out")
    args = p.parse_args(argv)
    recipes = [load_recipe(s) for s in (args.recipe or DEFAULT_RECIPES)]
    fixed_steps = {k: int(v) for k, _, v in (s.partition("=") for s in args.steps)}
    curves = {k: v for k, _, v in (s.partition("=") for s in args.curve)}
    n = args.num_samples or 5 * args.holdout  # FD averaged over 5 sets of --holdout: less noisy than one
    train_seeds = [int(v) for v in args.train_seeds.split(",")]
    scales = [float(v) for v in args.guidance_scales.split(",") if v]
    os.makedirs(args.out, exist_ok=True)

    feats = digits_metric(args.holdout, args.seed)
    xs = to_float(feats.train_images)
    labels = np.asarray(feats.train_labels, np.int32)
    results: dict[str, Any] = {
        "args": vars(args),
        "floor": feats.floor,
        "floor_std": feats.floor_std,
        "heldout_size": len(feats.heldout_images),
        "budget_s": args.budget_s,
        "versions": {"jax": jax.__version__},
        "recipes": {},
    }
    print(
        f"real-vs-real floor {feats.floor:.3f} (one set of {args.holdout} real: +-{feats.floor_std:.3f})",
        flush=True,
    )

    # Time every recipe first, back to back, so that the step counts come from the same machine state.
    per_step = {}
    for label, config in recipes:
        if label not in fixed_steps:
            per_step[label] = seconds_per_step(config, xs, args.time_steps, args.seed)
            print(f"{label}: {per_step[label] * 1e3:.1f} ms/step", flush=True)
    steps_for = {
        label: fixed_steps.get(label) or max(1, int(args.budget_s / per_step[label])) for label, _ in recipes
    }
    print("step counts: " + " ".join(f"--steps {k}={v}" for k, v in steps_for.items()), flush=True)
    if args.time_only:
        return
    for label, config in recipes:
        steps = steps_for[label]
        runs = []
        for train_seed in train_seeds:
            print(
                f"[{time.strftime('%H:%M:%S')}] training {label}: {steps} steps, seed {train_seed}",
                flush=True,
            )
            seeded = ml_collections.ConfigDict(config.to_dict())
            seeded.seed = train_seed
            c, params, info = train(seeded, xs, labels, steps, train_seed)
            print(f"  {info}", flush=True)
            objective = c.run.diffusion.objective
            curve = parse_curve(curves.get(label) or DEFAULT_CURVES.get(objective, DEFAULT_CURVES["ddpm"]))
            name = label if len(train_seeds) == 1 else f"{label}_seed{train_seed}"
            scores = score_samplers(c, params, curve, feats, n, args.sample_chunk, args.seed, args.out, name)
            guidance = {}
            if c.run.null_label is not None and scales:
                guidance = score_guidance(
                    c, params, scales, feats, n, args.sample_chunk, args.seed, args.out, name
                )
            runs.append({"seed": train_seed, "train": info, "scores": scores, "guidance": guidance})
            results["recipes"][label] = {
                "config": c.run.source.to_dict(),
                "seconds_per_step": per_step.get(label, float("nan")),
                "train": info,
                "scores": summarise(runs),
                "sampler": f"{c.run.sample.sampler} {c.run.sample.num_inference_steps} steps",
                "guidance": guidance,
                "runs": runs,
            }
            with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1, default=str)
    print()
    print(render(results))


if __name__ == "__main__":
    main()
