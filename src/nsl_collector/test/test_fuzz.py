"""Property-based fuzzing (hypothesis) of the bag reader and the checkpoint loader.

Random truncations, byte flips and inserted records of real bags (closed and crashed) and of a
real checkpoint: nothing but DatasetError / CheckpointError is raised, nothing hangs, no altered
data comes back and no intact episode is lost (see fuzz_helpers). Seeded and bounded so the
suite stays fast; bench/fuzz_datasets.py runs the same checks for many more mutations.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fuzz_helpers import bag_target, check_bag, check_checkpoint, checkpoint_fixture

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def mutations(size: int):
    offset = st.integers(0, size)
    one = st.one_of(
        st.tuples(st.just("truncate"), offset, st.just(b"")),
        st.tuples(st.just("flip"), offset, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("insert"), offset, st.binary(min_size=1, max_size=64)),
        st.tuples(
            st.just("insert"),
            offset,
            st.builds(
                lambda op, body: bytes([op]) + len(body).to_bytes(8, "little") + body,
                st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0F, 0x42]),
                st.binary(max_size=48),
            ),
        ),
    )
    return st.lists(one, min_size=1, max_size=3)


@pytest.fixture(scope="module", params=["closed", "crashed"])
def bag(request, tmp_path_factory):
    return bag_target(tmp_path_factory.mktemp("fuzz") / "bag", close=request.param == "closed")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_ckpt") / "ckpt.safetensors"
    data, weights = checkpoint_fixture(path)
    return path, data, weights


@seed(30)
@FUZZ
@given(data=st.data())
def test_mutated_bags_fail_safe(bag, data):
    check_bag(bag, data.draw(mutations(len(bag.data))))


@seed(30)
@FUZZ
@given(data=st.data())
def test_mutated_checkpoints_fail_safe(checkpoint, data):
    path, raw, weights = checkpoint
    check_checkpoint(path, raw, weights, data.draw(mutations(len(raw))))
