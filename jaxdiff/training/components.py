"""What a run builds from its config before the loop starts: mesh, model, optimizer, state, train step.

Parameter init is deterministic in ``seed`` (``fold_in(PRNGKey(seed), 0)``; the train state's base key is
``fold_in(PRNGKey(seed), 1)``), independent of the mesh, and runs eagerly on the host CPU, the same in every
process (a jitted init compiles for minutes on a CPU); ``init_state()`` then places the state on the mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxdiff import models, sharding
from jaxdiff.execution import passes
from jaxdiff.run_config import RunConfig, parse_run_config
from jaxdiff.training.ema import make_ema_update
from jaxdiff.training.init_from import params_like
from jaxdiff.training.optimizer import make_optimizer
from jaxdiff.training.state import TrainState, create_train_state
from jaxdiff.training.step import make_loss_fn, make_train_step

__all__ = ["Components", "build_components", "build_train_step", "train_pass_count"]


@dataclasses.dataclass
class Components:
    """Everything derived from a config before the loop starts (see :func:`build_components`).

    ``init_state()`` returns the step-0 ``TrainState`` as global arrays with ``state_sharding``;
    ``init_state_from(params)`` the same with other starting weights (host arrays in the params tree of
    ``jaxdiff.models.functional``, e.g. ``train.init_from``'s): parameters and EMA, a fresh optimizer.
    """

    run: RunConfig
    mesh: Any
    apply_fn: Callable[..., jax.Array]
    optimizer: Any
    lr_schedule: Any
    init_state: Callable[[], TrainState]
    init_state_from: Callable[[Any], TrainState]
    state_sharding: Any
    abstract_state: Any
    batch_sharding: Any
    passes: int

    @property
    def fingerprint(self) -> str:
        return self.run.model_fingerprint

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.run.model)


def train_pass_count(run: RunConfig, mesh: Any, params: Any) -> int:
    """How many passes each device's share of ``train.batch_size`` runs in (``jaxdiff.execution.passes``'s
    rule, ``TRAIN_SPLIT_ABOVE``). ``train.microbatch_size`` > 0: images per device per pass. The automatic
    rule is off for a model with dropout, whose masks would then depend on the device count."""
    devices = mesh.devices.size
    per_device = run.train.batch_size // devices
    requested = run.train.microbatch_size
    platform = mesh.devices.flat[0].platform
    if requested == 0 and run.model.get("dropout", 0.0):
        platform = "dropout"  # not a CPU: one pass
    size = passes.pass_size(
        requested,
        per_device,
        image_hw=(run.data.image_size, run.data.image_size),
        width=passes.first_level_width(params),
        platform=platform,
        split_above=passes.TRAIN_SPLIT_ABOVE,
        key="train.microbatch_size",
        context=f" (train.batch_size={run.train.batch_size} over {devices} devices)",
    )
    return per_device // size


def build_components(config: Any, *, check_batch_size: bool = True) -> Components:
    """The mesh, the model's ``apply_fn``, the optimizer and the initial / abstract train state of a run
    config (a ``ConfigDict`` or a parsed ``RunConfig``). ``check_batch_size``: require
    ``train.batch_size`` to split over the devices."""
    run = parse_run_config(config)
    mesh = sharding.make_mesh(run.train.fsdp)
    if check_batch_size:
        sharding.check_batch_size(run.train.batch_size, mesh)
    root = jax.random.PRNGKey(run.seed)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = models.create_model(
            run.model, rngs=nnx.Rngs(jax.random.fold_in(root, 0)), dtype=run.compute_dtype
        )
        optimizer, lr_schedule = make_optimizer(run.train.to_dict(), models.frozen_param_paths(model))
        apply_fn, params = models.functional(model)
        host_state = create_train_state(params, optimizer, jax.random.fold_in(root, 1))
    del model

    def init_state_from(start_params: Any) -> TrainState:
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            start = create_train_state(
                params_like(params, start_params), optimizer, jax.random.fold_in(root, 1)
            )
        return sharding.put_global(start, state_sharding)

    pass_count = train_pass_count(run, mesh, params) if check_batch_size else 1
    state_sharding = sharding.tree_shardings(mesh, host_state)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), host_state, state_sharding
    )
    return Components(
        run=run,
        mesh=mesh,
        apply_fn=apply_fn,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        init_state=lambda: sharding.put_global(host_state, state_sharding),
        init_state_from=init_state_from,
        state_sharding=state_sharding,
        abstract_state=abstract,
        batch_sharding=sharding.batch_sharding(mesh),
        passes=pass_count,
    )


def build_train_step(components: Components) -> Callable[..., Any]:
    """The run's jitted train step over ``components``: ``(state, batch) -> (state, metrics)``, donating
    ``state``."""
    c = components
    return make_train_step(
        passes=c.passes,
        apply_fn=c.apply_fn,
        loss_fn=make_loss_fn(c.run.diffusion.to_dict()),
        optimizer=c.optimizer,
        lr_schedule=c.lr_schedule,
        ema_update=make_ema_update(c.run.train.to_dict()),
        state_sharding=c.state_sharding,
        batch_sharding=c.batch_sharding,
        class_conditional=c.run.class_conditional,
        cond_drop_prob=c.run.train.cond_drop_prob,
        null_label=c.run.null_label,
    )
