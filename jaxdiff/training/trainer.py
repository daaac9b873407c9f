"""The train loop: ``train_and_evaluate(config, workdir)``.

What a run writes under ``workdir``:

- ``config.json``: the config of the latest start (``sample.py --workdir`` reads it);
- ``checkpoints/<step>/``: orbax checkpoints (train state, data-iterator position, model fingerprint), or
  in ``train.checkpoint_dir`` when set (a ``gs://`` path shared by all hosts of a multi-host run);
- ``metrics.jsonl``: one JSON line per ``log_every`` steps (step, loss, grad_norm, lr, ema_decay, img/s);
- ``tensorboard/``: the same scalars for TensorBoard (tensorboardX);
- ``samples/step_XXXXXXX.png``: EMA sample grids (fixed seed) every ``sample_every`` steps and at the end;
- with ``train.eval_every``: the quality of EMA samples (``jaxdiff.training.periodic_eval``) in
  ``metrics.jsonl`` / TensorBoard (``eval/...``) and one line on the console; the checkpoint with the best
  score is kept besides the ``keep_checkpoints`` newest ones;
- ``diffusers/``: at the end, a diffusers pipeline of the EMA weights (``DDPMPipeline.from_pretrained``).

With ``train.init_from`` (``jaxdiff.training.init_from``) a fresh run starts from another model's weights;
a workdir that already has a checkpoint resumes from it instead (one logged line).

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
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
from tqdm import tqdm

from jaxdiff import grids, sharding
from jaxdiff.checkpointing import (
    Checkpointer,
    canonical_json,
    has_checkpoints,
    same_model_check,
    storage_failure,
)
from jaxdiff.data import make_train_iterator
from jaxdiff.errors import UserError
from jaxdiff.inference import checkpoint_dir, export_diffusers, generate, sample_fn_for_run
from jaxdiff.run_config import RunConfig, config_to_json, parse_run_config
from jaxdiff.training.components import Components, build_components, build_train_step
from jaxdiff.training.init_from import InitSource, resolve_init_from
from jaxdiff.training.metrics import MetricsWindow, MetricsWriter
from jaxdiff.training.periodic_eval import BEST_METRIC, make_evaluator
from jaxdiff.training.preemption import StopRequest
from jaxdiff.workdir import WorkdirLock, write_bytes_atomic, write_text_atomic

__all__ = ["NonFiniteLossError", "TrainResult", "train_and_evaluate"]


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
        tqdm.write(message, file=sys.stderr)


# -- the parts of a run --------------------------------------------------------------------------------------


def _grid_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, "samples", f"step_{step:07d}.png")


def _grid_writer(run: RunConfig, c: Components, workdir: str) -> Callable[[int, Any], str]:
    """``write(step, ema_params) -> path``: the run's fixed-seed sample grid, ``samples/step_XXXXXXX.png``."""
    s = run.sample
    fn = sample_fn_for_run(
        run,
        c.apply_fn,
        mesh=c.mesh,
        param_sharding=c.state_sharding.ema_params,
        batch_size=min(s.batch_size, s.num_samples),
    )

    labels = fn.image_labels(s.num_samples)

    def write(step: int, params: Any) -> str:
        images = generate(fn, params, seed=s.seed, num_samples=s.num_samples)
        nrow = None
        if labels is not None:  # a class-conditional model: one row per class
            images, nrow = grids.rows_by_class(images, labels)
        path = _grid_path(workdir, step)
        if _primary():
            with _storage_errors(path):
                grid = grids.make_grid(images, nrow=nrow)
                write_bytes_atomic(workdir, os.path.relpath(path, workdir), grids.png_bytes(grid))
        return path

    return write


class _StepMetrics:
    """Fetches each step's metrics one step late (so the device stays busy), stops on a non-finite loss."""

    def __init__(self, window: MetricsWindow, bar: Any):
        self.window, self.bar = window, bar
        self.pending: tuple[int, Any] | None = None
        self.last_saved: int | None = None

    def push(self, step: int, metrics: Any) -> None:
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not m["finite"]:
            kept = f"step {self.last_saved}" if self.last_saved is not None else "none saved yet"
            raise NonFiniteLossError(
                f"the loss is not finite (loss={m['loss']}, grad_norm={m['grad_norm']}) at step {step}; "
                f"stopped without saving it (last good checkpoint: {kept}). "
                "Lower train.learning_rate or set train.grad_clip"
            )
        self.window.add(m)
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)


@contextlib.contextmanager
def _progress(start: int, total: int) -> Iterator[Any]:
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


# -- the loop ------------------------------------------------------------------------------------------------


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
      A :class:`TrainResult` (``state`` None when a signal stopped the run before it started).

    Raises:
      UserError: an invalid config, a workdir of another model or held by another run, storage that
        cannot be written, or (``NonFiniteLossError``) a NaN loss.
    """
    run = parse_run_config(config, log=_say)
    workdir = os.path.abspath(os.fspath(workdir))
    with StopRequest() as stop:
        # Everything that can refuse bad input comes before the first write into the workdir; the data
        # source first, so a bad one is reported before the model is built.
        data_iter = make_train_iterator(
            run.data,
            global_batch_size=run.train.batch_size,
            seed=run.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        c = build_components(run)
        # A resumed run never reads its init_from source, so a source deleted since does not block it.
        resuming = has_checkpoints(checkpoint_dir(run.train.checkpoint_dir, workdir))
        init_source = None if resuming else resolve_init_from(run)
        if stop.signal_name:
            return _stopped_before_start(stop, workdir)
        with WorkdirLock(workdir, log=_say):
            return _train(run, c, data_iter, workdir, stop, stop_at_step, init_source)


def _stopped_before_start(stop: StopRequest, workdir: str) -> TrainResult:
    _say(f"stopped by {stop.signal_name} before the first step: nothing written; run the same command again")
    return TrainResult(state=None, step=0, start_step=0, stopped_early=True, workdir=workdir)


def _train(
    run: RunConfig,
    c: Components,
    data_iter: Any,
    workdir: str,
    stop: StopRequest,
    stop_at_step: int | None,
    init_source: InitSource | None,
) -> TrainResult:
    """The run once its workdir is held: restore, loop, finish (see the module docstring)."""
    tc = run.train
    num_steps = tc.num_steps
    end_step = num_steps if stop_at_step is None else min(num_steps, int(stop_at_step))
    train_step = build_train_step(c)
    write_grid = _grid_writer(run, c, workdir)
    evaluate = make_evaluator(run, c)
    ckpt = Checkpointer(
        checkpoint_dir(tc.checkpoint_dir, workdir),
        max_to_keep=tc.keep_checkpoints,
        async_save=tc.async_checkpointing,
        log=_say,
        best_metric=BEST_METRIC[tc.eval_metric] if evaluate is not None else None,
    )
    try:
        restored = ckpt.restore(
            c.abstract_state,
            data_iterator=data_iter,
            check_meta=same_model_check(workdir, c.fingerprint, c.model_config),
        )
        if stop.signal_name:
            return _stopped_before_start(stop, workdir)
        if restored is not None:
            state, start_step = restored.state, restored.step
            _say(f"resuming from the checkpoint at step {start_step} in {ckpt.directory}")
            if tc.init_from:
                _say(f"train.init_from={tc.init_from!r} not used: resuming this run's own checkpoint")
        elif tc.init_from:
            init_source = init_source or resolve_init_from(run)  # checkpoints were listed but none restored
            state, start_step = c.init_state_from(init_source.load_params()), 0
            _say(f"fine-tuning from {init_source.describe()} (fresh optimizer, step 0)")
        else:
            state, start_step = c.init_state(), 0
        config_json = config_to_json(run.source)
        with _storage_errors(os.path.join(workdir, "config.json")):
            if _primary():
                write_text_atomic(workdir, "config.json", config_json)
        meta = {
            "fingerprint": c.fingerprint,
            "model": json.loads(canonical_json(c.model_config)),
            "config": json.loads(config_json),
        }
        with _storage_errors(os.path.join(workdir, "metrics.jsonl")):
            writer = MetricsWriter(workdir, start_step, wandb_project=tc.wandb_project, config=meta["config"])
    except BaseException:
        ckpt.close()
        raise

    window = MetricsWindow()
    step, stopped_early = start_step, False
    try:
        with _progress(start_step, num_steps) as bar:
            metrics = _StepMetrics(window, bar)
            metrics.last_saved = start_step if restored is not None else None
            while step < end_step:
                local = next(data_iter)
                batch = sharding.global_batch(
                    {"image": local["image"], "label": local["label"]}, c.batch_sharding
                )
                state, step_metrics = train_step(state, batch)
                step += 1
                window.tick()
                metrics.push(step, step_metrics)
                bar.update(1)

                is_last = step == num_steps
                want_log = step % tc.log_every == 0 or is_last
                want_ckpt = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or is_last
                want_grid = (tc.sample_every and step % tc.sample_every == 0) or is_last
                want_eval = evaluate is not None and (step % tc.eval_every == 0 or is_last)
                want_stop = stop.requested(step) or step == end_step
                if not (want_log or want_ckpt or want_grid or want_eval or want_stop):
                    continue
                metrics.flush()
                scalars = window.summary(tc.batch_size) if want_log else None
                if scalars is not None:
                    with _storage_errors(os.path.join(workdir, "metrics.jsonl")):
                        writer.write(step, scalars)
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['img_per_s']:.0f}")
                scores = evaluate(step, state.ema_params) if want_eval else None
                if scores is not None:
                    with _storage_errors(os.path.join(workdir, "metrics.jsonl")):
                        writer.write(step, scores, section="eval")
                    _say(f"step {step}: {_describe_scores(scores)}")
                if want_ckpt or want_stop or want_eval:
                    ckpt.save(step, state, data_iterator=data_iter, meta=meta, metrics=scores)
                    metrics.last_saved = step
                if want_grid:
                    writer.image(step, "samples", write_grid(step, state.ema_params))
                if want_stop and step < num_steps:
                    stopped_early = True
                    ckpt.wait()
                    why = stop.signal_name or f"stop_at_step={end_step}"
                    _say(
                        f"stopped by {why} at step {step}: checkpoint saved in {ckpt.directory}; "
                        "run the same command again to resume"
                    )
                    break
                window.restart_clock()  # grids and checkpoints do not count against images/s

        if not stopped_early:
            _finish(run, state, start_step, workdir, ckpt, write_grid)
    finally:
        writer.close()
        ckpt.close()
    return TrainResult(
        state=state, step=step, start_step=start_step, stopped_early=stopped_early, workdir=workdir
    )


@contextlib.contextmanager
def _storage_errors(path: str) -> Iterator[None]:
    """A full, read-only or forbidden disk while writing ``path``: one ``UserError`` line, not a traceback."""
    try:
        yield
    except OSError as e:
        cause = storage_failure(e)
        if cause is None:
            raise
        raise UserError(f"cannot write {path}: {cause}") from e


def _describe_scores(scores: dict[str, float]) -> str:
    """One line for the console: the headline score and, for the digits metric, what a good value is."""
    if "digits_fd" in scores:
        return (
            f"digits FD {scores['digits_fd']:.3f} (real-vs-real floor {scores['digits_floor']:.3f}: "
            f"{scores['digits_fd'] / scores['digits_floor']:.2f}x; lower is better)"
        )
    kid = f", KID {scores['kid_mean']:.5f}" if "kid_mean" in scores else ""
    return f"FID {scores['fid']:.3f}{kid} (lower is better)"


def _finish(
    run: RunConfig,
    state: Any,
    start_step: int,
    workdir: str,
    ckpt: Checkpointer,
    write_grid: Callable[[int, Any], str],
) -> None:
    """The end of a run: the final grid and the diffusers export of the EMA weights. Resumable like the
    rest: a re-run of a finished workdir writes whichever of the two a stopped run had not written."""
    num_steps = run.train.num_steps
    if start_step >= num_steps:
        _say(
            f"already trained to train.num_steps={num_steps} (checkpoint at step {start_step}); "
            "raise --config.train.num_steps to train further"
        )
        if not os.path.exists(_grid_path(workdir, start_step)):
            write_grid(start_step, state.ema_params)
            _say(f"wrote the final sample grid {_grid_path(workdir, start_step)}")
    export_dir = os.path.join(workdir, "diffusers")
    if start_step < num_steps or not os.path.exists(os.path.join(export_dir, "model_index.json")):
        ckpt.wait()
        with _storage_errors(export_dir):
            if export_diffusers(
                run.model, run.diffusion.to_dict(), state.ema_params, export_dir, null_label=run.null_label
            ):
                _say(f"exported the EMA model as a diffusers pipeline to {export_dir}")
