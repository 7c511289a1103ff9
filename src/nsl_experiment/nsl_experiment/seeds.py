"""Episode seed ranges of the study.

Every range starts at ``seeds.seed * SEED_STRIDE + offset``. Data collection, validation, gates,
calibration and evaluation never share an episode seed, so a choice is never made on the
episodes the reported numbers come from.
"""

from __future__ import annotations

SEED_STRIDE = 10_000_000
BOOTSTRAP_SEEDS = 0
ROUND_SEEDS = 1_000_000  # + round * 100_000 (rounds 1-9; see round_seed_offset)
FIRST_LATE_ROUND = 10
LATE_ROUND_SEEDS = 4_000_000  # + (round - FIRST_LATE_ROUND) * 100_000 (rounds 10-19)
MAX_ROUNDS = 19
TARGET_SEEDS = 2_000_000  # + task index in STUDY_TASKS * 100_000 (exploration grasps)
CONTINUAL_SEEDS = 3_000_000  # + step * 100_000 (continual_recollect)
VALIDATION_SEEDS = 5_000_000
CALIBRATION_SEEDS = 6_000_000  # severity calibration, never used to choose the base
#: The calibration's solvability scenes: the calibration block after its first 50 000 episodes
#: (nsl_sim.solvability.SOLVABILITY_SEED for master seed 0).
SOLVABILITY_SEEDS = 6_050_000
ONLINE_SEEDS = 7_000_000  # + task index * 100_000 + (round - 1) * MAX_ONLINE_ROUND_EPISODES
MAX_ONLINE_ROUNDS = 10
MAX_ONLINE_ROUND_EPISODES = 10_000
EVALUATION_SEEDS = 8_000_000
GATE_SEEDS = 9_000_000  # gate decisions with gate_episodes > 0
#: The held-out episode seed sets (test objects) by name.
SEED_SETS = {
    "evaluation": EVALUATION_SEEDS,
    "validation": VALIDATION_SEEDS,
    "calibration": CALIBRATION_SEEDS,
    "gate": GATE_SEEDS,
}
#: Most episodes one use may draw from its seed range (the ranges above are 100_000 apart).
MAX_EPISODES_PER_RANGE = 100_000

CHALLENGES = (
    "harsh_light",
    "transparent_objects",
    "checkerboard",
    "extend_gripper_1cm",
    "offset_gripper_10cm",
)
#: Every task of the fine-tuning study; a task's position fixes its target seed range, so its
#: seeds do not depend on which tasks a run studies.
STUDY_TASKS = ("base",) + CHALLENGES
#: The paper's continual-learning chain (Table III, Fig. 4).
CONTINUAL_ORDER = (
    "harsh_light",
    "transparent_objects",
    "checkerboard",
    "extend_gripper_1cm",
    "offset_gripper_10cm",
)


def round_seed_offset(round_index: int) -> int:
    """Return the start of on-policy round ``round_index``'s seed range (1..MAX_ROUNDS).

    Rounds 10-19 have a range of their own, so the seeds of rounds 1-9 stay where they were.
    """
    if not 1 <= round_index <= MAX_ROUNDS:
        raise ValueError(f"round must be in 1..{MAX_ROUNDS}, got {round_index}")
    if round_index < FIRST_LATE_ROUND:
        return ROUND_SEEDS + 100_000 * round_index
    return LATE_ROUND_SEEDS + 100_000 * (round_index - FIRST_LATE_ROUND)


def online_seed_offset(task: str, round_index: int) -> int:
    """Return the start of ``task``'s online round ``round_index`` (2..MAX_ONLINE_ROUNDS).

    Round 1 uses the base policy's exploration grasps (TARGET_SEEDS).
    """
    if not 2 <= round_index <= MAX_ONLINE_ROUNDS:
        raise ValueError(f"online round must be in 2..{MAX_ONLINE_ROUNDS}, got {round_index}")
    return (
        ONLINE_SEEDS
        + 100_000 * STUDY_TASKS.index(task)
        + MAX_ONLINE_ROUND_EPISODES * (round_index - 1)
    )
