"""The train loop: ``train_and_evaluate(config, workdir)``.

What a run writes under ``workdir``:

- ``config.json``: the config of the latest start (``sample.py --workdir`` reads it);
- ``checkpoints/<step>/``: orbax checkpoints (train state, data-iterator position, model fingerprint), or
  in ``train.checkpoint_dir`` when set (a ``gs://`` path shared by all hosts of a multi-host run);
- ``metrics.jsonl``: one JSON line per ``log_every`` steps (step, loss, grad_norm, lr, ema_decay, img/s);
- ``tensorboard/``: the same scalars for TensorBoard (tensorboardX);
- ``samples/step_XXXXXXX.png``: EMA sample grids (fixed seed) every ``sample_every`` steps and at the end;
- ``diffusers/``: at the end, a diffusers pipeline of the EMA weights (``DDPMPipeline.from_pretrained``).

Restarting with the same ``workdir`` resumes from the newest usable checkpoint, exactly: the train state
(parameters, optimizer, EMA, step, RNG) and the data order continue as if never stopped. A checkpoint of
a different model config is refused with a ``UserError`` before anything is written.

Preemption: SIGTERM (what a preempted TPU VM gets) or Ctrl-C saves a checkpoint at the current step and
returns normally (the CLI exits 0); re-run the same command to resume. With several processes, JAX's
preemption sync point makes every process save at the same step. A non-finite loss raises
``NonFiniteLossError`` (a ``UserError``) naming the step; the checkpoints on disk are all from finite
states and are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxdiff.errors import UserError

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "build_components",
    "build_train_step",
    "checkpoint_dir",
    "train_and_evaluate",
]


class NonFiniteLossError(UserError):
    """The loss or the gradient became NaN/inf; the run stopped without saving that state."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_and_evaluate` did.

    Attributes:
      state: the final ``TrainState`` (global arrays).
      step: the step reached.
      start_step: the step the run started (or resumed) from.
      stopped_early: True when a signal (or ``stop_at_step``) ended the run before ``train.num_steps``.
      workdir: the run directory.
    """

    state: Any
    step: int
    start_step: int
    stopped_early: bool
    workdir: str


def _primary() -> bool:
    return jax.process_index() == 0


def _say(message: str) -> None:
    """A user-facing line from the main process (above the progress bar)."""
    if _primary():
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


# -- preemption ----------------------------------------------------------------------------------------------


class _StopRequest:
    """SIGTERM / SIGINT set a flag that the loop polls; a second Ctrl-C interrupts at once.

    With several processes the signal handling is JAX's (its preemption notifier catches SIGTERM and
    ``reached_preemption_sync_point`` agrees on one step for all processes), so no handler is installed.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        if self.signal_name is not None:
            return True
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = "preemption notice"
                    return True
            except RuntimeError:  # no preemption sync manager (e.g. not a JAX-distributed run)
                return False
        return False

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


# -- building blocks -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Components:
    """Everything derived from a config before the loop starts (see :func:`build_components`).

    ``init_state()`` returns the step-0 ``TrainState`` as global arrays with ``state_sharding``.
    """

    mesh: Any
    apply_fn: Callable[..., jax.Array]
    optimizer: Any
    lr_schedule: Any
    init_state: Callable[[], Any]
    state_sharding: Any
    abstract_state: Any
    batch_sharding: Any
    fingerprint: str
    model_config: dict[str, Any]


def build_components(config: Any, *, check_batch_size: bool = True) -> Components:
    """The mesh, the model's ``apply_fn``, the optimizer and the initial / abstract train state.

    Parameter init is deterministic in ``config.seed`` (``fold_in(PRNGKey(seed), 0)``; the train state's
    base key is ``fold_in(PRNGKey(seed), 1)``), independent of the mesh, and runs eagerly on the host CPU,
    the same in every process (a jitted init compiles for minutes on a CPU). ``init_state()`` then places
    the state on the mesh. ``check_batch_size``: require ``train.batch_size`` to split over the devices.
    """
    from flax import nnx

    from jaxdiff import models
    from jaxdiff.training import config as run_config
    from jaxdiff.training import mesh as mesh_lib
    from jaxdiff.training.optimizer import make_optimizer
    from jaxdiff.training.state import create_train_state

    mesh = mesh_lib.make_mesh(config.train.fsdp)
    if check_batch_size:
        mesh_lib.check_batch_size(config.train.batch_size, mesh)
        microbatch_count(config, mesh)
    root = jax.random.PRNGKey(config.seed)
    model_config = run_config.normalized_model_config(config)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = models.create_model(
            config.model, rngs=nnx.Rngs(jax.random.fold_in(root, 0)), dtype=run_config.compute_dtype(config)
        )
        optimizer, lr_schedule = make_optimizer(config.train, models.frozen_param_paths(model))
        apply_fn, params = models.functional(model)
        host_state = create_train_state(params, optimizer, jax.random.fold_in(root, 1))
    del model
    state_sharding = mesh_lib.tree_shardings(mesh, host_state)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), host_state, state_sharding
    )
    return Components(
        mesh=mesh,
        apply_fn=apply_fn,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        init_state=lambda: put_global(host_state, state_sharding),
        state_sharding=state_sharding,
        abstract_state=abstract,
        batch_sharding=mesh_lib.batch_sharding(mesh),
        fingerprint=run_config.model_fingerprint(config),
        model_config=model_config,
    )


def build_train_step(config: Any, components: Components) -> Callable[..., Any]:
    """The config's jitted train step over ``components`` (its model, optimizer and shardings): the
    step ``train_and_evaluate`` runs, ``(state, batch) -> (state, metrics)``, donating ``state``."""
    from jaxdiff.training import config as run_config
    from jaxdiff.training.ema import make_ema_update
    from jaxdiff.training.step import make_loss_fn, make_train_step

    c = components
    return make_train_step(
        microbatches=microbatch_count(config, c.mesh),
        apply_fn=c.apply_fn,
        loss_fn=make_loss_fn(config),
        optimizer=c.optimizer,
        lr_schedule=c.lr_schedule,
        ema_update=make_ema_update(config.train),
        state_sharding=c.state_sharding,
        batch_sharding=c.batch_sharding,
        class_conditional=run_config.class_conditional(config),
    )


# train.microbatch_size=0 on a CPU: passes of CPU_MICROBATCH_SIZE images once the first level's activation
# of the per-device batch passes CPU_MICROBATCH_MIN_BYTES. The course UNet (32x32x64) at batch 64, 16.8 MB,
# trains ~1.08x faster in passes of 16; the digits UNet (16x16x32) at batch 64, 2.1 MB, 0.96x slower
# (benchmarks/RESULTS.md, 2026-12-02 07:00 UTC).
CPU_MICROBATCH_SIZE = 16
CPU_MICROBATCH_MIN_BYTES = 8 * 2**20


def microbatch_count(config: Any, mesh: Any) -> int:
    """How many microbatches each device's slice of ``train.batch_size`` is run as (``make_train_step``'s
    ``microbatches``). ``train.microbatch_size``: images per device per pass, which must divide the
    per-device batch. 0 picks ``CPU_MICROBATCH_SIZE`` on a CPU when that divides the per-device batch, the
    float32 activation of the model's first level (``image_size**2 * block_out_channels[0]`` per image)
    for the per-device batch exceeds ``CPU_MICROBATCH_MIN_BYTES``, and the model has no dropout (whose
    masks would then depend on the device count); else one pass."""
    devices = mesh.devices.size
    per_device = config.train.batch_size // devices
    size = config.train.get("microbatch_size", 0)
    if size == 0:
        cpu = mesh.devices.flat[0].platform == "cpu"
        no_dropout = not config.model.get("dropout", 0.0)
        splits = per_device > CPU_MICROBATCH_SIZE and per_device % CPU_MICROBATCH_SIZE == 0
        width = tuple(config.model.get("block_out_channels", (1,)))[0]
        large = per_device * config.data.image_size**2 * width * 4 > CPU_MICROBATCH_MIN_BYTES
        size = CPU_MICROBATCH_SIZE if cpu and no_dropout and splits and large else per_device
    if per_device % size:
        raise UserError(
            f"train.microbatch_size={size} must divide the per-device batch {per_device} "
            f"(train.batch_size={config.train.batch_size} over {devices} devices), or be 0 (automatic)"
        )
    return per_device // size


def checkpoint_dir(config: Any, workdir: str) -> str:
    """``train.checkpoint_dir`` (e.g. ``gs://bucket/run``: shared by the hosts of a pod slice), else
    ``<workdir>/checkpoints``."""
    path = config.train.get("checkpoint_dir") or ""
    return path if path else os.path.join(workdir, "checkpoints")


def put_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same in every process) -> global ``jax.Array``s with ``shardings``; each process
    fills only its own devices, so this works on several hosts too."""

    def one(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def _check_same_model(workdir: str, fingerprint: str, model_config: dict[str, Any]) -> Callable[[dict], None]:
    from jaxdiff.checkpointing import describe_config_diff

    def check(meta: dict[str, Any]) -> None:
        stored = meta.get("fingerprint")
        if stored is not None and stored != fingerprint:
            diff = describe_config_diff(meta.get("model", {}), model_config)
            raise UserError(
                f"workdir {workdir} holds a checkpoint of a different model config ({diff}); "
                "use a new --workdir, or the model config that wrote it"
            )

    return check


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop metric lines past ``last_step`` (written after the checkpoint a resumed run starts from)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except ValueError:
            continue
    if len(kept) != len(lines):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


class _Writers:
    """metrics.jsonl + TensorBoard scalars, main process only."""

    def __init__(self, workdir: str, start_step: int):
        self.enabled = _primary()
        self.jsonl = None
        self.tb = None
        if not self.enabled:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        _truncate_metrics(path, start_step)
        self.jsonl = open(path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # optional: metrics.jsonl has the same numbers
            self.tb = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for name, value in scalars.items():
                self.tb.add_scalar(f"train/{name}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


# -- the loop -------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: Any, workdir: str | os.PathLike, *, stop_at_step: int | None = None
) -> TrainResult:
    """Train (or resume training) the model of ``config``, writing everything under ``workdir``.

    Args:
      config: a run config (``configs/default.py`` sections); validated first.
      workdir: the run directory (created if missing).
      stop_at_step: stop after this step as if preempted (checkpoint saved, no export): for tests and
        for splitting a run into chunks. None trains to ``config.train.num_steps``.

    Returns:
      A :class:`TrainResult`.

    Raises:
      UserError: an invalid config, a workdir of another model, or (``NonFiniteLossError``) a NaN loss.
    """
    from jaxdiff.checkpointing import Checkpointer, canonical_json
    from jaxdiff.data import make_train_iterator
    from jaxdiff.training import config as run_config
    from jaxdiff.training import mesh as mesh_lib
    from jaxdiff.training import sampling

    run_config.validate_config(config)
    workdir = os.path.abspath(os.fspath(workdir))
    tc = config.train
    num_steps = int(tc.num_steps)
    end_step = num_steps if stop_at_step is None else min(num_steps, int(stop_at_step))

    # Everything that can refuse bad input comes before the first write into the workdir.
    data_iter = make_train_iterator(  # first: a bad data source is reported before the model is built
        config.data,
        global_batch_size=tc.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    c = build_components(config)
    train_step = build_train_step(config, c)
    sampler = sampling.sample_fn_for_config(
        config,
        c.apply_fn,
        mesh=c.mesh,
        param_sharding=c.state_sharding.ema_params,
        batch_size=min(config.sample.batch_size, config.sample.num_samples),
    )

    ckpt = Checkpointer(
        checkpoint_dir(config, workdir),
        max_to_keep=tc.keep_checkpoints,
        async_save=tc.async_checkpointing,
        log=_say,
    )
    try:
        restored = ckpt.restore(
            c.abstract_state,
            data_iterator=data_iter,
            check_meta=_check_same_model(workdir, c.fingerprint, c.model_config),
        )
    except BaseException:
        ckpt.close()
        raise
    if restored is not None:
        state, start_step = restored.state, restored.step
        _say(f"resuming from the checkpoint at step {start_step} in {ckpt.directory}")
    else:
        state, start_step = c.init_state(), 0

    if _primary():
        os.makedirs(workdir, exist_ok=True)
        tmp = os.path.join(workdir, "config.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(run_config.config_to_json(config))
        os.replace(tmp, os.path.join(workdir, "config.json"))

    meta = {
        "fingerprint": c.fingerprint,
        "model": json.loads(canonical_json(c.model_config)),
        "config": json.loads(run_config.config_to_json(config)),
    }

    def save_samples(step: int, params: Any) -> None:
        images = sampling.generate(
            sampler, params, seed=config.sample.seed, num_samples=config.sample.num_samples
        )
        if _primary():
            from jaxdiff.images import save_grid

            save_grid(os.path.join(workdir, "samples", f"step_{step:07d}.png"), images)

    writers = _Writers(workdir, start_step)
    last_saved = restored.step if restored is not None else None
    step = start_step
    stopped_early = False
    try:
        with _StopRequest() as stop, _progress(start_step, num_steps) as bar:
            window: list[dict[str, float]] = []
            pending: tuple[int, Any] | None = None
            t0, steps_in_window = time.perf_counter(), 0

            def flush() -> None:
                # Fetch the metrics of the last dispatched step (blocks until it is done).
                nonlocal pending
                if pending is None:
                    return
                s, metrics = pending
                pending = None
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not m["finite"]:
                    kept = f"step {last_saved}" if last_saved is not None else "none saved yet"
                    raise NonFiniteLossError(
                        f"the loss is not finite (loss={m['loss']}, grad_norm={m['grad_norm']}) at step {s}; "
                        f"stopped without saving it (last good checkpoint: {kept}). "
                        "Lower train.learning_rate or set train.grad_clip"
                    )
                window.append(m)
                bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)

            while step < end_step:
                local = next(data_iter)
                batch = mesh_lib.global_batch(
                    {"image": local["image"], "label": local["label"]}, c.batch_sharding
                )
                state, metrics = train_step(state, batch)
                step += 1
                steps_in_window += 1
                flush()  # the previous step's metrics: ready by now, so the device stays busy
                pending = (step, metrics)
                bar.update(1)

                is_last = step == num_steps
                want_log = step % tc.log_every == 0 or is_last
                want_ckpt = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or is_last
                want_samples = (tc.sample_every and step % tc.sample_every == 0) or is_last
                want_stop = stop.requested(step) or step == end_step
                if not (want_log or want_ckpt or want_samples or want_stop):
                    continue
                flush()
                if want_log and window:
                    elapsed = time.perf_counter() - t0
                    scalars = {
                        "loss": float(np.mean([m["loss"] for m in window])),
                        "grad_norm": window[-1]["grad_norm"],
                        "lr": window[-1]["lr"],
                        "ema_decay": window[-1]["ema_decay"],
                        "img_per_s": tc.batch_size * steps_in_window / max(elapsed, 1e-9),
                    }
                    writers.write(step, scalars)
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['img_per_s']:.0f}")
                    window.clear()
                    t0, steps_in_window = time.perf_counter(), 0
                if want_ckpt or want_stop:
                    ckpt.save(step, state, data_iterator=data_iter, meta=meta)
                    last_saved = step
                if want_samples:
                    save_samples(step, state.ema_params)
                if want_stop and step < num_steps:
                    stopped_early = True
                    why = stop.signal_name or f"stop_at_step={end_step}"
                    ckpt.wait()
                    _say(
                        f"stopped by {why} at step {step}: checkpoint saved in {ckpt.directory}; "
                        "run the same command again to resume"
                    )
                    break
                if want_log or want_samples or want_ckpt:
                    t0, steps_in_window = time.perf_counter(), 0

        if not stopped_early:
            if start_step >= num_steps:
                _say(
                    f"already trained to train.num_steps={num_steps} (checkpoint at step {start_step}); "
                    "raise --config.train.num_steps to train further"
                )
            export_dir = os.path.join(workdir, "diffusers")
            if start_step < num_steps or not os.path.exists(os.path.join(export_dir, "model_index.json")):
                ckpt.wait()
                if sampling.export_diffusers(config, state.ema_params, export_dir):
                    _say(f"exported the EMA model as a diffusers pipeline to {export_dir}")
    finally:
        writers.close()
        ckpt.close()
    return TrainResult(
        state=state, step=step, start_step=start_step, stopped_early=stopped_early, workdir=workdir
    )


@contextlib.contextmanager
def _progress(start: int, total: int) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=not _primary(),
        file=sys.stderr,
        mininterval=0.5,
    )
    try:
        yield bar
    finally:
        bar.close()
