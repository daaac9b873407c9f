"""Training: the optimizer, EMA, the train state and jitted step, and the loop that runs them.

- ``optimizer``: ``make_optimizer(train_section) -> (optax transformation, lr schedule)``.
- ``ema``: diffusers ``EMAModel`` decay and update.
- ``state``: ``TrainState`` (step, params, opt_state, ema_params, rng).
- ``step``: ``make_loss_fn(config)`` (the objective's loss), ``make_train_step(...)`` (one ``jax.jit``,
  explicit shardings, the state donated, microbatches as ``jaxdiff.execution.passes``).
- ``components``: what a run builds from its config (mesh, model, optimizer, state, train step).
- ``metrics``: ``metrics.jsonl`` / TensorBoard writers; ``preemption``: SIGTERM / Ctrl-C handling.
- ``trainer``: ``train_and_evaluate(config, workdir)``.

The mesh and shardings are ``jaxdiff.sharding``; sampling, loading and the diffusers export are
``jaxdiff.inference``; the run config is ``jaxdiff.run_config``.
"""
