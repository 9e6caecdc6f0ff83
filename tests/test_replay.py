"""ReplayBuffer: storage, ring-buffer overwrite, sampling invariants and exact checkpoint round-trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from replay import Batch, ReplayBuffer

OBS_DIM, ACT_DIM = 2, 1


def add_tagged(buf: ReplayBuffer, i: int) -> None:
    """Transition number i, every field derived from i so a sampled row can be traced back to it."""
    buf.add(
        obs=[i, i + 0.5],
        action=[-float(i)],
        reward=float(i),
        cost=2.0 * i,
        next_obs=[i + 1, i + 1.5],
        done=i % 3 == 0,
    )


def check_rows_consistent(batch: Batch) -> np.ndarray:
    """Assert every sampled row is one whole stored transition; return the transition numbers."""
    i = batch.obs[:, 0].numpy()
    np.testing.assert_array_equal(batch.obs[:, 1].numpy(), i + 0.5)
    np.testing.assert_array_equal(batch.action[:, 0].numpy(), -i)
    np.testing.assert_array_equal(batch.reward[:, 0].numpy(), i)
    np.testing.assert_array_equal(batch.cost[:, 0].numpy(), 2 * i)
    np.testing.assert_array_equal(batch.next_obs.numpy(), np.stack([i + 1, i + 1.5], axis=1))
    np.testing.assert_array_equal(batch.done[:, 0].numpy(), (i % 3 == 0).astype(np.float32))
    return i.astype(int)


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def test_batch_shapes_dtypes_and_device():
    buf = ReplayBuffer(10, OBS_DIM, ACT_DIM, seed=0)
    for i in range(4):
        add_tagged(buf, i)
    batch = buf.sample(7, device="cpu")
    assert len(batch) == 7
    assert batch.obs.shape == batch.next_obs.shape == (7, OBS_DIM)
    assert batch.action.shape == (7, ACT_DIM)
    assert batch.reward.shape == batch.cost.shape == batch.done.shape == (7, 1)
    for t in (batch.obs, batch.action, batch.reward, batch.cost, batch.next_obs, batch.done):
        assert t.dtype == torch.float32 and t.device.type == "cpu"
    check_rows_consistent(batch)
    assert batch.to("cpu").obs.shape == (7, OBS_DIM)


def test_ring_buffer_keeps_the_newest_transitions():
    buf = ReplayBuffer(5, OBS_DIM, ACT_DIM)
    for i in range(7):
        add_tagged(buf, i)
    assert len(buf) == 5
    assert sorted(buf.obs[:, 0].tolist()) == [2, 3, 4, 5, 6]
    assert buf.ptr == 2


def test_errors():
    buf = ReplayBuffer(4, OBS_DIM, ACT_DIM)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    with pytest.raises(ValueError, match="obs"):
        buf.add([0.0], [0.0], 0.0, 0.0, [0.0, 0.0], False)
    with pytest.raises(ValueError, match="action"):
        buf.add([0.0, 0.0], [0.0, 1.0], 0.0, 0.0, [0.0, 0.0], False)
    add_tagged(buf, 1)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, OBS_DIM, ACT_DIM)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 8),
    n_adds=st.integers(1, 25),
    batch_size=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_sample_invariants(capacity: int, n_adds: int, batch_size: int, seed: int):
    buf = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, seed=seed)
    for i in range(n_adds):
        add_tagged(buf, i)
        assert len(buf) == min(i + 1, capacity)
    idx = check_rows_consistent(buf.sample(batch_size))
    # only the newest `capacity` transitions can come out
    assert idx.min() >= max(0, n_adds - capacity) and idx.max() < n_adds


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(1, 8),
    n_before=st.integers(0, 20),
    n_after=st.integers(0, 10),
    draws_before=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_state_round_trip_gives_identical_sampling(
    capacity: int, n_before: int, n_after: int, draws_before: int, seed: int
):
    a = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, seed=seed)
    for i in range(n_before):
        add_tagged(a, i)
    for _ in range(draws_before if n_before else 0):
        a.sample(3)  # advance the RNG: its state must be saved, not the seed
    state = roundtrip(a.state_dict())
    assert state["obs"].shape == (len(a), OBS_DIM)  # only the filled part is saved

    b = ReplayBuffer(capacity, OBS_DIM, ACT_DIM, seed=seed + 1)
    b.load_state_dict(state)
    assert len(b) == len(a) and b.ptr == a.ptr
    for name in ("obs", "action", "reward", "cost", "next_obs", "done"):
        np.testing.assert_array_equal(getattr(a, name)[: len(a)], getattr(b, name)[: len(b)])
    for i in range(n_before, n_before + n_after):
        add_tagged(a, i)
        add_tagged(b, i)
    if len(a):
        for _ in range(3):
            x, y = a.sample(5), b.sample(5)
            for name in ("obs", "action", "reward", "cost", "next_obs", "done"):
                assert torch.equal(getattr(x, name), getattr(y, name))


def test_state_dict_is_a_snapshot():
    buf = ReplayBuffer(3, OBS_DIM, ACT_DIM)
    add_tagged(buf, 0)
    state = buf.state_dict()
    add_tagged(buf, 1)
    buf.obs[0] = 99.0
    assert state["size"] == 1 and state["obs"].tolist() == [[0.0, 0.5]]


def test_load_rejects_mismatched_buffers():
    buf = ReplayBuffer(4, OBS_DIM, ACT_DIM)
    add_tagged(buf, 0)
    state = buf.state_dict()
    with pytest.raises(ValueError, match="obs_dim=2"):
        ReplayBuffer(4, 3, ACT_DIM).load_state_dict(state)
    with pytest.raises(ValueError, match="capacity=4"):
        ReplayBuffer(5, OBS_DIM, ACT_DIM).load_state_dict(state)
    with pytest.raises(ValueError, match="format_version"):
        buf.load_state_dict({**state, "format_version": 99})
    with pytest.raises(KeyError, match="rng_state"):
        buf.load_state_dict({k: v for k, v in state.items() if k != "rng_state"})
    with pytest.raises(ValueError, match="'reward' has shape"):
        buf.load_state_dict({**state, "reward": torch.zeros(2, 1)})
