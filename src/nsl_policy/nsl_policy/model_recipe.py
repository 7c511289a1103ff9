"""The Q-network recipe of the shipped base, importable without torch (the nsl parser reads it).

:class:`nsl_policy.model.QNetworkConfig`'s own defaults are the conv head every early checkpoint
has; the pipeline (``ExperimentConfig.learner.model``) and ``nsl train --head`` build new
networks from these.
"""

from __future__ import annotations

KEYPOINTS_RECIPE = {"feature_size": 16, "fc_width": 256}
"""QNetworkConfig fields that go with head="keypoints": a 16x16 map (4-pixel cells at 64x64)
and an MLP of 256 units."""

BASE_MODEL = {"head": "keypoints", **KEYPOINTS_RECIPE}
"""QNetworkConfig overrides of the pipeline's pre-training: the keypoint head, with the location
loss, pre-trains a base at 0.705 against the conv head's 0.595 (docs/results/decisions.md)."""
