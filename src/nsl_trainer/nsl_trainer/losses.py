"""Auxiliary losses added to QT-Opt's loss through the trainer's hook.

An :class:`AuxLoss` is registered with the trainer (``QTOptTrainer(..., aux_losses=[...])``;
the built-in ones follow from QTOptConfig). Every step the trainer runs the online network's
trunk once on the batch, scores the data actions together with the candidate actions each loss
asks for (``candidate_actions``), and adds ``weight`` x ``loss(inputs)`` of every registered
loss to the Bellman cross-entropy. A loss's ``module`` (if any) is trained by the trainer's
optimiser and saved in the training state, never in a policy checkpoint. Auxiliary losses call
the network directly, so they run in one process only (no DistributedDataParallel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nsl_policy.action_space import ACTION_DIM, STATE_DIM, policy_actions
from nsl_policy.cem import CEMConfig, cem_maximize
from nsl_policy.model import QNetwork

from .data import TrainingData

LOCATION_HIDDEN = 64
"""Hidden units of the location head (a small MLP suffices to read positions off the trunk)."""


@dataclass
class LossInputs:
    """What an auxiliary loss sees of one step's batch (device tensors)."""

    images: torch.Tensor
    """Augmented images of s, float (B, 3, S, S) in [0, 1]."""
    rows: torch.Tensor
    """The batch's row numbers in ``data``."""
    state: torch.Tensor
    """Gripper states (B, 3)."""
    action: torch.Tensor
    """Data actions (B, 6), canonical form."""
    features: torch.Tensor
    """The online trunk's features of ``images`` (gradients flow into the trunk)."""
    logits: torch.Tensor
    """Online logits (B,) of the data actions (the ones the cross-entropy uses)."""
    candidate_logits: torch.Tensor
    """Online logits (B, 1 + K): column 0 the data action, then every loss's candidates."""
    data: TrainingData
    """The training data the rows index."""


class AuxLoss:
    """An auxiliary loss term; subclasses set the attributes and implement ``__call__``."""

    name: str = "aux"
    """Key of the loss in ``QTOptTrainer.aux_losses``."""
    setting: str = "an auxiliary loss"
    """What switched the loss on, for error messages."""
    weight: float = 1.0
    """Factor of the term in the total loss."""
    metric: str | None = None
    """Per-step metric reporting the (unweighted) term; None: not reported."""
    module: torch.nn.Module | None = None
    """Parameters of the loss's own, trained with the network and kept in the training state."""
    state_prefix: str = "aux."
    """Prefix of ``module``'s tensors in the training state."""
    needs_location: bool = False
    """Whether the training data must carry location labels."""

    def candidate_actions(
        self,
        model: QNetwork,
        features: torch.Tensor,
        state: torch.Tensor,
        generator: torch.Generator,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Return actions (B, K, 6) to score along with the data actions, or None (default)."""
        return None

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        """Return the unweighted term (a scalar tensor)."""
        raise NotImplementedError


class LocationHead(torch.nn.Module):
    """Trunk features (flattened) ++ gripper state -> MLP -> (2,) offset to an object.

    The object is the nearest one with simulator labels, the grasped one with hindsight labels.

    The offset is in units of ``data.LOCATION_SCALE``.
    """

    def __init__(self, model: QNetwork) -> None:
        super().__init__()
        s = model.config.image_size
        was_training = model.training
        with torch.no_grad():  # the feature size of this architecture
            model.eval()
            n = (
                model.encode(torch.zeros(1, 3, s, s, device=next(model.parameters()).device))
                .flatten(1)
                .shape[1]
            )
            model.train(was_training)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n + STATE_DIM, LOCATION_HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(LOCATION_HIDDEN, 2),
        )

    def forward(self, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Return the predicted offsets (B, 2) of features (B, ...) and states (B, 3)."""
        return self.net(torch.cat([features.flatten(1), state.to(features.dtype)], dim=1))


class LocationLoss(AuxLoss):
    """Smooth-L1 error of a LocationHead against the data's location labels.

    QT-Opt's trunk alone need not learn where the objects are; this term makes it. Rows whose
    label is NaN (hindsight labels of failed episodes) contribute nothing: the term is the sum
    over the labelled rows divided by the batch's size, so with every row labelled it is the
    mean error, and a batch without a labelled row gives 0 and no gradient.
    """

    name = "location"
    setting = "QTOptConfig.location_weight > 0"
    metric = "location_loss"
    state_prefix = "location_head."
    needs_location = True

    def __init__(self, model: QNetwork, weight: float) -> None:
        self.weight = weight
        self.module = LocationHead(model)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        """Return the head's smooth-L1 error on the batch's labelled rows (see the class doc)."""
        if inputs.data.location is None:
            raise ValueError("location_weight > 0: train on data built with location labels")
        predicted = self.module(inputs.features, inputs.state)
        labels = inputs.data.location[inputs.rows]
        labelled = torch.isfinite(labels).all(dim=1, keepdim=True)
        # An unlabelled row's target is its own prediction: zero error and zero gradient, with
        # no NaN reaching the backward pass and no device sync for a boolean index.
        target = torch.where(labelled, labels.to(predicted.dtype), predicted.detach())
        return F.smooth_l1_loss(predicted, target, reduction="sum") / predicted.numel()


class ConservativeLoss(AuxLoss):
    """CQL(H) (Kumar et al. 2020): logsumexp of the candidates' logits - the data action's.

    The candidates are ``samples`` uniform actions and the online network's CEM argmax; the
    term pushes down actions an argmax can find but the data never tried.
    """

    name = "conservative"
    setting = "QTOptConfig.conservative_weight > 0"

    def __init__(self, weight: float, samples: int, cem: CEMConfig) -> None:
        self.weight, self.samples, self.cem = weight, samples, cem

    def candidate_actions(
        self,
        model: QNetwork,
        features: torch.Tensor,
        state: torch.Tensor,
        generator: torch.Generator,
        device: torch.device,
    ) -> torch.Tensor:
        """Return the online CEM argmax then ``samples`` uniform actions, (B, 1 + samples, 6)."""
        b = features.shape[0]
        with torch.no_grad():  # the sampled actions are constants of the loss
            greedy, _ = cem_maximize(
                lambda a: model.score(features, state, a),
                b,
                ACTION_DIM,
                self.cem,
                generator=generator,
                device=device,
                project=policy_actions,
            )
            uniform = policy_actions(
                torch.rand(b, self.samples, ACTION_DIM, generator=generator, device=device) * 2 - 1
            )
        return torch.cat([greedy.unsqueeze(1), uniform], dim=1)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        """Return the mean over the batch of logsumexp(candidates) - logit(data action)."""
        return (torch.logsumexp(inputs.candidate_logits, dim=1) - inputs.logits).mean()
