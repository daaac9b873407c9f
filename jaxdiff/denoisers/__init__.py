"""Parametrisations: how a network becomes a denoiser ``D(x, level)`` and how it is trained.

- ``base``: the interface (:class:`Parametrization`, :class:`Preconditioning`), :func:`denoise` and the
  generic :func:`make_loss`;
- ``ddpm``, ``edm``, ``flow``, ``from_scratch``: one parametrisation each.

``jaxdiff.objectives`` registers an objective for each; the samplers read the network's output through
the same coefficients.
"""

from jaxdiff.denoisers.base import Parametrization, Preconditioning, denoise, make_loss
from jaxdiff.denoisers.ddpm import DDPMParametrization
from jaxdiff.denoisers.edm import EDMParametrization, edm_preconditioning
from jaxdiff.denoisers.flow import FlowParametrization, shift_times
from jaxdiff.denoisers.from_scratch import FromScratchParametrization

__all__ = [
    "DDPMParametrization",
    "EDMParametrization",
    "FlowParametrization",
    "FromScratchParametrization",
    "Parametrization",
    "Preconditioning",
    "denoise",
    "edm_preconditioning",
    "make_loss",
    "shift_times",
]
