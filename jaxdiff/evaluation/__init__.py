"""Evaluation: FID / KID / IS with the FID Inception-v3 in JAX, and an offline digits metric.

Modules (one idea each):
  torch_pickle  read a torch ``.pth`` state dict as numpy, no torch, no arbitrary unpickling
  inception     the FID Inception-v3 (TF 2015-12-05 graph as ported by pytorch-fid / torch-fidelity), NNX
  weights       find / download / convert the Inception weights (safetensors cache), load into NNX
  features      ``inception_features``: batched, sharded over all devices
  statistics    feature mean / covariance accumulated in float64; ``.npz`` with ``mu`` and ``sigma``
  metrics       Fréchet distance, KID, Inception Score
  digits        the same metrics in the feature space of a small digit classifier (offline)
"""

from jaxdiff.evaluation.features import InceptionExtractor, inception_extractor, inception_features
from jaxdiff.evaluation.metrics import frechet_distance, inception_score, kid
from jaxdiff.evaluation.statistics import FeatureStatistics, load_statistics, save_statistics

__all__ = [
    "FeatureStatistics",
    "InceptionExtractor",
    "frechet_distance",
    "inception_extractor",
    "inception_features",
    "inception_score",
    "kid",
    "load_statistics",
    "save_statistics",
]
