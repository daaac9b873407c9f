"""Measuring a run while it trains: the quality of its EMA samples every ``train.eval_every`` steps.

``train.eval_metric`` picks the feature space: ``digits`` (the offline digit classifier of
``jaxdiff.evaluation.digits``; its real-vs-real floor is logged beside it) or ``inception`` (FID / KID
against ``train.eval_ref_stats``). ``train.eval_num_samples`` images are drawn with the run's ``sample``
section (sampler, steps, eta), from a seed of their own (``sample.seed + 1``), the same at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxdiff import grids
from jaxdiff.evaluation.scoring import score_images
from jaxdiff.inference import generate, sample_fn_for_run
from jaxdiff.run_config import RunConfig
from jaxdiff.training.components import Components

__all__ = ["BEST_METRIC", "Evaluator", "make_evaluator"]

# The score each metric's best checkpoint is chosen by (lower is better for both).
BEST_METRIC = {"digits": "digits_fd", "inception": "fid"}

Evaluator = Callable[[int, Any], dict[str, float]]


def make_evaluator(run: RunConfig, c: Components) -> Evaluator | None:
    """``evaluate(step, ema_params) -> {score name: float}`` for the run, or None when
    ``train.eval_every`` is 0. Every process must call it (sampling and Inception features are sharded)."""
    tc, s = run.train, run.sample
    if not tc.eval_every:
        return None
    fn = sample_fn_for_run(
        run,
        c.apply_fn,
        mesh=c.mesh,
        param_sharding=c.state_sharding.ema_params,
        batch_size=min(s.batch_size, tc.eval_num_samples),
    )

    def evaluate(step: int, params: Any) -> dict[str, float]:
        del step  # the same images (seed) at every step: the scores differ by the weights alone
        images = generate(fn, params, seed=s.seed + 1, num_samples=tc.eval_num_samples)
        scores = score_images(grids.to_uint8(images), tc.eval_metric, ref_stats=tc.eval_ref_stats or None)
        return {
            name: float(value)
            for name, value in scores.items()
            if isinstance(value, int | float) and name != "num_samples"
        }

    return evaluate
