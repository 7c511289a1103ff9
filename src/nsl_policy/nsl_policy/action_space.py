"""The QT-Opt action space: a normalised 6-vector the Q-function scores, and its physical meaning.

Vector layout (every component in [-1, 1]):
    0..2  Cartesian displacement x, y, z, scaled by ``max_translation`` (metres)
    3     rotation about the vertical axis, scaled by ``max_rotation`` (radians)
    4     close gripper when > 0
    5     terminate the episode when > 0
CEM searches this box; the arm receives the physical command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_DIM = 6
STATE_DIM = 3  # gripper closed (0/1), height above tray (m), step fraction
HEIGHT_INDEX = 1
CLOSE_INDEX, TERMINATE_INDEX = 4, 5
BINARY_DIMS = (CLOSE_INDEX, TERMINATE_INDEX)
"""Components that are on/off commands (close, terminate): the arm thresholds them at 0 and bags
store them as booleans (+-1)."""


def canonical_actions(actions):
    """Return recorded actions (torch tensor ``(..., 6)``) in the form the Q-function learns.

    The result is a new tensor: close/terminate snapped to +-1 (bags store booleans), and
    close = +1 wherever terminate = +1 (terminating closes the gripper anyway, so both spellings
    are one action).
    """
    out = actions.clone()
    on = out[..., list(BINARY_DIMS)] > 0
    on[..., 0] |= on[..., 1]
    out[..., list(BINARY_DIMS)] = on.to(out.dtype) * 2 - 1
    return out


def policy_actions(actions):
    """Return the actions the policy chooses from (CEM acting, and the Bellman target's argmax).

    The result is a new tensor: close/terminate snapped to +-1, and close = terminate, i.e. the
    grasp is one decision, as in the scripted data (QT-Opt treats these commands as discrete
    too). Measured without these restrictions, offline QT-Opt's argmax found actions the data
    hardly contains and that its Q-function overrated at 0.9-0.99: interior switch values,
    "close and terminate" in mid-air, and "close, then keep moving" at the first step.
    """
    out = actions.clone()
    grasp = (out[..., TERMINATE_INDEX] > 0).to(out.dtype) * 2 - 1
    out[..., CLOSE_INDEX] = grasp
    out[..., TERMINATE_INDEX] = grasp
    return out


@dataclass(frozen=True)
class GraspCommand:
    """A physical grasp step, as sent to the arm (nsl_msgs/GraspAction)."""

    translation: tuple[float, float, float]
    """Displacement in the tray frame, metres."""
    rotation: float
    """Rotation about the vertical axis, radians."""
    close_gripper: bool
    """Close the gripper now."""
    terminate: bool
    """End the episode: close, lift and report the outcome."""


@dataclass(frozen=True)
class ActionSpace:
    """Scales between the normalised action vector and physical commands."""

    max_translation: float = 0.03
    """Largest displacement per axis and step, metres."""
    max_rotation: float = 0.25
    """Largest rotation per step, radians."""

    def __post_init__(self) -> None:
        if not (self.max_translation > 0 and np.isfinite(self.max_translation)):
            raise ValueError(
                f"max_translation must be a positive number, got {self.max_translation}"
            )
        if not (self.max_rotation > 0 and np.isfinite(self.max_rotation)):
            raise ValueError(f"max_rotation must be a positive number, got {self.max_rotation}")

    def to_command(self, vector: np.ndarray) -> GraspCommand:
        """Physical command for a normalised vector (clipped to [-1, 1]; NaN is refused)."""
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        if v.shape != (ACTION_DIM,):
            raise ValueError(
                f"action vector must have {ACTION_DIM} components, got shape {v.shape}"
            )
        if not np.all(np.isfinite(v)):
            raise ValueError(f"action vector has non-finite components: {v.tolist()}")
        v = np.clip(v, -1.0, 1.0)
        return GraspCommand(
            translation=tuple(float(x) * self.max_translation for x in v[:3]),
            rotation=float(v[3]) * self.max_rotation,
            close_gripper=bool(v[4] > 0.0),
            terminate=bool(v[5] > 0.0),
        )

    def to_vector(self, command: GraspCommand) -> np.ndarray:
        """Return the normalised vector of a physical command.

        It is the inverse of ``to_command`` up to the gripper/terminate thresholds, which map to
        +1 / -1.
        """
        t = np.asarray(command.translation, dtype=np.float64) / self.max_translation
        return np.clip(
            np.array(
                [
                    t[0],
                    t[1],
                    t[2],
                    command.rotation / self.max_rotation,
                    1.0 if command.close_gripper else -1.0,
                    1.0 if command.terminate else -1.0,
                ],
                dtype=np.float32,
            ),
            -1.0,
            1.0,
        )
