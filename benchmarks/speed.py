"""jaxdiff vs diffusers (PyTorch), side by side in one process on the same machine.

The model is the course's 32x32 ``UNet2DModel`` (block_out_channels (64, 128, 128, 256), two attention
levels, ~18.5 M parameters). Rows (``--rows``, comma-separated ``kind:batch``):

  train:B        images/s of one full training step at batch B. jaxdiff: the real ``jaxdiff.training``
                 step (AdamW + clipping, EMA, loss, explicit shardings, donated state), compiled once
                 (compile time reported apart). diffusers: the ``train_unconditional.py`` recipe
                 (DDPMScheduler noise, MSE, backward, clip_grad_norm_, AdamW, LR scheduler, EMAModel).
  train_bf16:B   the same in bfloat16: jaxdiff ``train.mixed_precision="bf16"`` vs ``torch.autocast(bf16)``
                 (a default row on GPU only; bf16 is slower than float32 on most CPUs).
  forward:B      one forward pass (eval), milliseconds.
  ddim:B         DDIMPipeline-equivalent sampling, ``--ddim_steps`` (50) steps, seconds per batch.
                 jaxdiff: ``jaxdiff.samplers.sample``, every step in one compiled ``lax.scan``.
  ddpm:B         the same with DDPM, ``--ddpm_steps`` (1000; the table says when overridden).

Each side is warmed up, then the two are timed in alternation (ABAB...) so that load from other
processes falls on both alike; the table gives medians (and minima), and speedup = diffusers time /
jaxdiff time (> 1: jaxdiff is faster). On GPU the training rows also give model FLOP utilisation from
XLA's cost analysis of the compiled step (``--peak_tflops`` overrides the built-in peak table).

  python benchmarks/speed.py                 # default rows for the platform
  python benchmarks/speed.py --quick         # a few minutes on a laptop CPU
  python benchmarks/speed.py --rows train:16,ddim:16 --reps 20 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# JAX must not grab most of a GPU's memory: torch shares the device in this process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.execution.allocator import active as mimalloc_active  # noqa: E402
from jaxdiff.execution.allocator import relaunch_under_mimalloc  # noqa: E402

# As train.py does: the whole process (both libraries) runs under mimalloc (JAXDIFF_NO_MIMALLOC=1: glibc).
relaunch_under_mimalloc()

import jaxdiff  # noqa: E402  (adds jaxdiff's CPU XLA flags before JAX creates a backend)

XLA_FLAGS_AT_START = os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

COURSE_UNET: dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(64, 128, 128, 256),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)

# Training hyper-parameters shared by both sides (configs/default.py's, which are train_unconditional.py's).
LR, BETAS, WEIGHT_DECAY, ADAM_EPS, GRAD_CLIP = 1e-4, (0.95, 0.999), 1e-6, 1e-8, 1.0
WARMUP, NUM_STEPS = 500, 10_000
EMA = dict(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)

# Dense peak TFLOP/s per GPU (NVIDIA data sheets, SXM parts): "tf32" is what XLA uses for float32
# convolutions and matmuls on these GPUs by default; "bf16" for bfloat16.
PEAK_TFLOPS = {
    "H200": {"tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"tf32": 378.0, "bf16": 756.0},
    "H100": {"tf32": 494.7, "bf16": 989.4},
    "A100": {"tf32": 156.0, "bf16": 312.0},
    "L4": {"tf32": 60.0, "bf16": 121.0},
}


@dataclass
class Row:
    name: str
    unit: str  # "img/s" (higher is better) or "ms" / "s" (lower is better)
    jax_times: list[float] = field(default_factory=list)  # seconds per call
    torch_times: list[float] = field(default_factory=list)
    per_call: float = 1.0  # images per call for img/s rows
    steps: int = 1  # train steps per call
    compile_s: float | None = None
    flops: float | None = None  # per call, from XLA's cost analysis
    peak_key: str | None = None
    note: str = ""


# -- platform helpers -------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def peak_tflops(kind: str, precision: str, override: float | None) -> float | None:
    if override:
        return override
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[precision]
    return None


def cost_flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is best effort
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    return float(flops) if flops and flops > 0 else None


class QuietGuard:
    """Keeps timings clear of other processes' load (Linux): waits until the rest of the machine is idle
    before a round, and rejects a round during which other processes used more than ``max_busy`` of the
    CPU (``/proc/stat`` busy time minus this process's own CPU time)."""

    def __init__(self, max_busy: float, max_wait_s: float):
        self.max_busy = max_busy
        self.max_wait_s = max_wait_s
        self.rejected = 0
        self.waited_s = 0.0
        self.enabled = max_busy < 1 and os.path.exists("/proc/stat")

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]  # idle + iowait
        own = os.times()
        return sum(fields[:8]) / hz, idle / hz, own.user + own.system

    def others_busy(self, a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
        """Fraction of the machine's CPU capacity used by other processes between two snapshots."""
        total = b[0] - a[0]
        if total <= 0:
            return 0.0
        busy = total - (b[1] - a[1])
        return max(0.0, busy - (b[2] - a[2])) / total

    def wait(self) -> None:
        start = time.monotonic()
        while time.monotonic() - start < self.max_wait_s:
            a = self._snapshot()
            time.sleep(1.0)
            if self.others_busy(a, self._snapshot()) < self.max_busy:
                break
        self.waited_s += time.monotonic() - start


def interleave(
    fns: dict[str, Callable[[], None]],
    reps: int,
    guard: QuietGuard | None = None,
    settle: bool = False,
) -> dict[str, list[float]]:
    """Time each function ``reps`` times, in alternation; each call must block until its work is done.

    ``settle``: run each function once, untimed, right before its timed call. Both libraries keep
    their worker threads spinning for a while after a call (torch's OpenMP pool, XLA's thread pool),
    which slows whatever runs next on a small machine by up to a third; the settling call absorbs
    that, so each timed call runs as in a training loop, after a call of its own kind.

    With an enabled ``guard``, each round (one call of every function) starts on an otherwise idle
    machine, and a round disturbed by other processes is timed again (at most ``3 * reps`` tries; the
    rejected rounds are counted in ``guard.rejected``).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    tries = 0
    while len(next(iter(times.values()))) < reps:
        tries += 1
        if guard is not None and guard.enabled:
            guard.wait()
            before = guard._snapshot()
        round_times = {}
        for name, fn in fns.items():
            if settle:
                fn()
            start = time.perf_counter()
            fn()
            round_times[name] = time.perf_counter() - start
        if guard is not None and guard.enabled and tries < 3 * reps:
            if guard.others_busy(before, guard._snapshot()) >= guard.max_busy:
                guard.rejected += 1
                continue
        for name, seconds in round_times.items():
            times[name].append(seconds)
    return times


# -- the two sides ----------------------------------------------------------------------------------------


class Torch:
    def __init__(self, device: str, threads: int, fast: bool):
        import torch

        self.torch = torch
        self.device = device
        self.fast = fast
        torch.set_num_threads(threads)
        if device == "cuda":
            # XLA computes float32 convolutions and matmuls in TF32 on these GPUs; let torch do the same.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def model(self):
        from diffusers import UNet2DModel

        self.torch.manual_seed(0)
        return UNet2DModel(**COURSE_UNET).to(self.device)

    def images(self, batch: int):
        x = np.random.default_rng(1).uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
        return self.torch.from_numpy(x).to(self.device)

    def train(self, batch: int, bf16: bool, steps: int) -> Callable[[], None]:
        import torch.nn.functional as F
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        torch = self.torch
        model = self.model().train()
        kw = {"fused": True} if self.fast else {}
        opt = torch.optim.AdamW(
            model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS, **kw
        )
        lr_sched = get_scheduler(
            "cosine", optimizer=opt, num_warmup_steps=WARMUP, num_training_steps=NUM_STEPS
        )
        ema = EMAModel(model.parameters(), foreach=self.fast, **EMA)
        noise_sched = DDPMScheduler(num_train_timesteps=1000)
        x = self.images(batch)
        autocast = torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16)

        def step() -> None:
            noise = torch.randn_like(x)
            t = torch.randint(0, 1000, (batch,), device=self.device)
            noisy = noise_sched.add_noise(x, noise, t)
            with autocast:
                pred = model(noisy, t, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(model.parameters())

        def run() -> None:
            for _ in range(steps):
                step()
            self.sync()

        return run

    def forward(self, batch: int) -> Callable[[], None]:
        torch = self.torch
        model = self.model().eval()
        x = self.images(batch)
        t = torch.full((batch,), 500, device=self.device)

        def run() -> None:
            with torch.inference_mode():
                model(x, t, return_dict=False)
            self.sync()

        return run

    def sampler(self, kind: str, batch: int, steps: int) -> tuple[Callable[[], None], dict]:
        from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

        model = self.model().eval()
        if kind == "ddim":
            pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler(num_train_timesteps=1000))
            call = dict(eta=0.0)
        else:
            pipe = DDPMPipeline(unet=model, scheduler=DDPMScheduler(num_train_timesteps=1000))
            call = {}
        pipe.set_progress_bar_config(disable=True)

        def run() -> None:
            gen = self.torch.Generator(self.device).manual_seed(0)
            pipe(batch_size=batch, num_inference_steps=steps, generator=gen, output_type="np", **call)
            self.sync()

        return run, {"_class_name": type(pipe.scheduler).__name__, **pipe.scheduler.config}


class Jax:
    def __init__(self):
        from flax import nnx

        from jaxdiff import models

        self.nnx = nnx
        self.models = models

    def config(self, batch: int, bf16: bool):
        from configs.default import get_config  # the repository's configs/ (on sys.path above)

        config = get_config()
        config.data.image_size, config.data.channels = 32, 3
        for key, value in COURSE_UNET.items():
            config.model[key] = value
        t = config.train
        t.batch_size, t.mixed_precision = batch, "bf16" if bf16 else "no"
        t.learning_rate, (t.adam_b1, t.adam_b2), t.weight_decay, t.adam_eps = (
            LR,
            BETAS,
            WEIGHT_DECAY,
            ADAM_EPS,
        )
        t.grad_clip, t.warmup_steps, t.num_steps, t.lr_schedule = GRAD_CLIP, WARMUP, NUM_STEPS, "cosine"
        t.ema_decay, t.ema_use_warmup, t.ema_inv_gamma, t.ema_power = (
            EMA["decay"],
            EMA["use_ema_warmup"],
            EMA["inv_gamma"],
            EMA["power"],
        )
        return config

    def images(self, batch: int) -> np.ndarray:
        x = np.random.default_rng(1).uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
        return x.transpose(0, 2, 3, 1)  # NHWC, the same numbers as the torch side

    def train(self, batch: int, bf16: bool, steps: int) -> tuple[Callable[[], None], float, float | None]:
        from jaxdiff.sharding import global_batch
        from jaxdiff.training import components

        config = self.config(batch, bf16)
        c = components.build_components(config)
        state = c.init_state()
        step = components.build_train_step(c)
        data = global_batch(
            {"image": self.images(batch), "label": np.zeros((batch,), np.int32)}, c.batch_sharding
        )
        start = time.perf_counter()
        compiled = step.lower(state, data).compile()
        compile_s = time.perf_counter() - start
        holder = [state]

        def run() -> None:
            # Back-to-back steps, as in a train loop: JAX dispatches step n+1 while step n runs.
            for _ in range(steps):
                holder[0], metrics = compiled(holder[0], data)
            metrics["loss"].block_until_ready()

        return run, compile_s, cost_flops(compiled)

    def model(self):
        model = self.models.create_model(COURSE_UNET, rngs=self.nnx.Rngs(0))
        return self.models.functional(model)

    def forward(self, batch: int) -> tuple[Callable[[], None], float]:
        apply_fn, params = self.model()
        x = jnp.asarray(self.images(batch))
        t = jnp.full((batch,), 500, jnp.int32)
        fn = jax.jit(apply_fn)
        start = time.perf_counter()
        compiled = fn.lower(params, x, t).compile()
        compile_s = time.perf_counter() - start
        return (lambda: compiled(params, x, t).block_until_ready()), compile_s

    def sampler(self, scheduler_config: dict, batch: int, steps: int) -> tuple[Callable[[], None], float]:
        from jaxdiff.execution.passes import in_passes_for_batch
        from jaxdiff.samplers import from_diffusers_config, sample

        apply_fn, params = self.model()
        sampler = from_diffusers_config(scheduler_config, steps)

        @jax.jit
        def generate(sampler, params, x_T, key):
            # As sample.py evaluates the model: in passes on a CPU for large activations.
            model = in_passes_for_batch(apply_fn, params, x_T.shape)
            return sample(sampler, lambda x, t: model(params, x, t), x_T, key)

        x_T = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
        key = jax.random.key(1)
        start = time.perf_counter()
        compiled = generate.lower(sampler, params, x_T, key).compile()
        compile_s = time.perf_counter() - start
        return (lambda: compiled(sampler, params, x_T, key).block_until_ready()), compile_s


# -- the run ---------------------------------------------------------------------------------------------


def parse_rows(spec: str) -> list[tuple[str, int]]:
    rows = []
    for item in spec.split(","):
        kind, _, batch = item.strip().partition(":")
        if kind not in ("train", "train_bf16", "forward", "ddim", "ddpm") or not batch.isdigit():
            raise SystemExit(
                f"error: --rows item {item!r} is not KIND:BATCH with KIND in train, train_bf16, "
                "forward, ddim, ddpm"
            )
        rows.append((kind, int(batch)))
    return rows


def run_row(kind: str, batch: int, args: argparse.Namespace, jx: Jax, th: Torch, guard: QuietGuard) -> Row:
    reps = args.sample_reps if kind in ("ddim", "ddpm") else args.reps
    if kind in ("train", "train_bf16"):
        bf16 = kind == "train_bf16"
        steps = args.train_steps_per_call
        row = Row(
            f"train{' bf16' if bf16 else ''} b{batch}",
            "img/s",
            per_call=batch * steps,
            peak_key="bf16" if bf16 else "tf32",
        )
        jfn, row.compile_s, flops = jx.train(batch, bf16, steps)
        row.flops = flops * steps if flops else None
        row.note, row.steps = f"{steps} steps per timed call", steps
        tfn = th.train(batch, bf16, steps)
        warm = args.warmup
    elif kind == "forward":
        row = Row(f"forward b{batch}", "ms")
        jfn, row.compile_s = jx.forward(batch)
        tfn = th.forward(batch)
        warm = args.warmup
    else:
        steps = args.ddim_steps if kind == "ddim" else args.ddpm_steps
        note = " (--ddpm_steps; 1000 is the standard)" if kind == "ddpm" and steps != 1000 else ""
        row = Row(f"{kind}-{steps} b{batch}", "s", note=note.strip())
        tfn, sched_config = th.sampler(kind, batch, steps)
        jfn, row.compile_s = jx.sampler(sched_config, batch, steps)
        warm = 1
    for _ in range(warm):
        jfn()
        tfn()
    # Sampling rows are long (50+ model calls): the other side's spinning threads cost them nothing.
    settle = kind not in ("ddim", "ddpm") and not args.no_settle
    times = interleave({"jax": jfn, "torch": tfn}, reps, guard, settle=settle)
    row.jax_times, row.torch_times = times["jax"], times["torch"]
    return row


def fmt_value(row: Row, seconds: float) -> str:
    if row.unit == "img/s":
        return f"{row.per_call / seconds:.1f}"
    if row.unit == "ms":
        return f"{seconds * 1e3:.1f}"
    return f"{seconds:.2f}"


def render(rows: list[Row], meta: dict[str, Any], peak_override: float | None) -> str:
    lines = [f"# jaxdiff vs diffusers: {meta['date']}", ""]
    for key in (
        "machine",
        "jax_devices",
        "torch_device",
        "threads",
        "versions",
        "XLA_FLAGS",
        "allocator",
        "load_before",
        "load_after",
        "options",
    ):
        lines.append(f"- {key}: {meta[key]}")
    lines += [
        "",
        "| row | unit | jaxdiff median (min) | diffusers median (min) | speedup jaxdiff/diffusers | "
        "jaxdiff compile s | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        jm, tm = statistics.median(r.jax_times), statistics.median(r.torch_times)
        notes = [r.note] if r.note else []
        if r.flops:
            tflops = r.flops / jm / 1e12
            notes.append(f"{r.flops / 1e9 / r.steps:.0f} GFLOP/step, {tflops * 1e3:.0f} GFLOP/s")
            peak = peak_tflops(meta["jax_devices"], r.peak_key, peak_override) if meta["gpu"] else None
            if peak:
                notes.append(f"MFU {100 * tflops / peak:.1f}% of {peak:g} TFLOP/s ({r.peak_key})")
        lines.append(
            f"| {r.name} | {r.unit} | {fmt_value(r, jm)} ({fmt_value(r, min(r.jax_times))}) | "
            f"{fmt_value(r, tm)} ({fmt_value(r, min(r.torch_times))}) | {tm / jm:.2f}x | "
            f"{'' if r.compile_s is None else f'{r.compile_s:.1f}'} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--rows", help="comma-separated KIND:BATCH (default: by platform, see the module docstring)"
    )
    p.add_argument(
        "--reps", type=int, default=None, help="timed calls per side for train / forward rows (10)"
    )
    p.add_argument("--sample_reps", type=int, default=None, help="timed calls per side for sampling rows (3)")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per side before timing (train/forward)"
    )
    p.add_argument("--train_steps_per_call", type=int, default=3, help="train steps per timed call")
    p.add_argument(
        "--no_settle",
        action="store_true",
        help="time train/forward calls straight after the other library's (no untimed settling call)",
    )
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--ddpm_steps", type=int, default=None, help="DDPM steps (1000; --quick: 50)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (all cores)")
    p.add_argument(
        "--torch_fast",
        action="store_true",
        help="torch AdamW(fused=True) and EMAModel(foreach=True) instead of the defaults",
    )
    p.add_argument("--peak_tflops", type=float, default=None, help="GPU peak for the MFU estimate")
    p.add_argument("--quick", action="store_true", help="fewer rows and repetitions: a few minutes on a CPU")
    p.add_argument("--json", help="also write the raw timings here")
    p.add_argument(
        "--quiet",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="time a round only while other processes use less than this fraction of the CPU, and\n"
        "time it again if they used more meanwhile (Linux; e.g. 0.1 on a shared machine; 1 = off)",
    )
    p.add_argument("--quiet_max_wait", type=float, default=600, help="seconds to wait for quiet per round")
    args = p.parse_args(argv)

    gpu = jax.default_backend() == "gpu"
    if args.rows is None:
        if args.quick:
            args.rows = "train:16,forward:16,ddim:16"
        elif gpu:
            args.rows = "train:16,train:64,train_bf16:64,forward:16,ddim:16,ddim:256,ddpm:16"
        else:
            args.rows = "train:16,train:64,forward:16,ddim:16,ddpm:16"
    args.reps = args.reps or (3 if args.quick else 10)
    args.sample_reps = args.sample_reps or (1 if args.quick else 3)
    args.ddpm_steps = args.ddpm_steps or (50 if args.quick else 1000)
    rows_spec = parse_rows(args.rows)

    import diffusers
    import flax
    import jaxlib
    import optax
    import torch

    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    th, jx = Torch(device, args.threads, args.torch_fast), Jax()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        "jax_devices": ", ".join(sorted({d.device_kind for d in jax.devices()})) + f" x{jax.device_count()}",
        "torch_device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "gpu": gpu,
        "threads": f"torch {torch.get_num_threads()} (intra-op), XLA: all cores",
        "versions": (
            f"jaxdiff {jaxdiff.__version__}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
            f"flax {flax.__version__}, optax {optax.__version__}, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, python {platform.python_version()}"
        ),
        "XLA_FLAGS": repr(XLA_FLAGS_AT_START),
        "allocator": "mimalloc (LD_PRELOAD, both libraries)" if mimalloc_active() else "glibc malloc",
        "load_before": load_average(),
        "options": (
            f"reps {args.reps}, train_steps_per_call {args.train_steps_per_call}, "
            f"sample_reps {args.sample_reps}, warmup {args.warmup}, "
            f"ddim_steps {args.ddim_steps}, ddpm_steps {args.ddpm_steps}, torch_fast {args.torch_fast}, "
            f"settle {not args.no_settle}"
        ),
    }
    guard = QuietGuard(args.quiet, args.quiet_max_wait)
    rows = []
    for kind, batch in rows_spec:
        print(
            f"[{time.strftime('%H:%M:%S')}] {kind}:{batch} (load {load_average()})",
            file=sys.stderr,
            flush=True,
        )
        rows.append(run_row(kind, batch, args, jx, th, guard))
        gc.collect()
    meta["load_after"] = load_average()
    if guard.enabled:
        meta["options"] += (
            f", quiet {args.quiet} (waited {guard.waited_s:.0f} s; "
            f"{guard.rejected} disturbed rounds re-timed)"
        )
    print(render(rows, meta, args.peak_tflops))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
