"""Why an episode may not start or must stop: the policy node's ROS-free safety conditions.

The node asks :func:`not_ready_reason` before every episode (no command without a valid
checkpoint, a matched camera and a usable image since the last camera abort) and raises one of
the exceptions below to end an episode; an aborted or ended episode is published incomplete,
so it is recorded with its checkpoint but neither trained on nor counted as rollout evidence.
"""

from __future__ import annotations


class EpisodeAborted(RuntimeError):
    """The episode cannot go on safely (no fresh image, arm error); it is not trained on."""


class CameraProblem(EpisodeAborted):
    """No fresh or no usable camera image: the arm gets no command until a usable image arrives."""


class EpisodeEnded(EpisodeAborted):
    """The node is being deactivated: the episode ends at the next step boundary."""


ENDED_BY_DEACTIVATION = "episode ended at a step boundary: the policy node was deactivated"


def not_ready_reason(
    has_checkpoint: bool,
    camera_publishers: int | None,
    camera_blocked: bool,
    refused_encoding: str,
    camera_topic: str,
    load_service: str,
) -> str | None:
    """Return why no episode may start now, or None when one may.

    ``camera_publishers`` is None where the rmw reports no matched events (then matching is
    not required).
    """
    if not has_checkpoint:
        return f"no valid checkpoint: the arm will not move until one is loaded ({load_service})"
    if camera_publishers == 0:
        return f"no camera publisher on {camera_topic}: waiting for one before moving the arm"
    if camera_blocked:
        what = (
            f"images in unsupported encoding {refused_encoding!r}"
            if refused_encoding
            else "no image"
        )
        return (
            f"camera problem ({what} since the last abort): "
            "no arm command until a usable image arrives"
        )
    return None
