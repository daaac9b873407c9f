"""Training: the device mesh, AdamW + schedules, EMA, the train state and jitted step, the train loop.

- ``mesh``: ``make_mesh(fsdp=1)`` (axes ``"data"``, ``"fsdp"``), batch / parameter shardings.
- ``optimizer``: ``make_optimizer(train_config) -> (optax transformation, lr schedule)``.
- ``ema``: diffusers ``EMAModel`` decay (``ema_decay``) and update.
- ``state``: ``TrainState`` (step, params, opt_state, ema_params, rng).
- ``step``: ``make_loss_fn(config)``, ``make_train_step(...)`` (one ``jax.jit``, explicit shardings).
- ``sampling``: sharded sampling for grids and ``sample.py``; the diffusers export.
- ``loop``: ``train_and_evaluate(config, workdir)``.
- ``config``: ``validate_config(config)`` and what a run derives from its config.
- ``cli``: one-line errors and multi-host start-up for ``train.py`` / ``sample.py``.
"""
