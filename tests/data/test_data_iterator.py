"""PromptIterator: exact resumption from a saved state, epoch coverage, state validation."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.data.iterator import PromptIterator


class Numbers:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"id": i}


def _ids(batch):
    return [e["id"] for e in batch]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 13),
    batch_size=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
    stop=st.integers(0, 25),
    more=st.integers(1, 10),
    shuffle=st.booleans(),
)
def test_resume_exactly(n, batch_size, seed, stop, more, shuffle):
    reference = PromptIterator(Numbers(n), batch_size, seed=seed, shuffle=shuffle)
    expected = [_ids(next(reference)) for _ in range(stop + more)]

    first = PromptIterator(Numbers(n), batch_size, seed=seed, shuffle=shuffle)
    got = [_ids(next(first)) for _ in range(stop)]
    saved = json.loads(json.dumps(first.state()))  # a checkpoint round trip
    assert all(isinstance(v, int) for v in saved.values())

    resumed = PromptIterator(Numbers(n), batch_size, seed=12345, shuffle=shuffle)  # the state carries the seed
    resumed.restore(saved)
    got += [_ids(next(resumed)) for _ in range(more)]
    assert got == expected


def test_every_example_once_per_epoch_and_epochs_differ():
    n, bs = 10, 4
    it = PromptIterator(Numbers(n), bs, seed=1)
    stream = [i for _ in range(10) for i in _ids(next(it))]  # 40 examples = 4 epochs
    epochs = [stream[k * n : (k + 1) * n] for k in range(4)]
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert len({tuple(e) for e in epochs}) > 1
    assert it.epoch == 4 and it.state()["index"] == 0
    plain = PromptIterator(Numbers(n), bs, shuffle=False)
    assert _ids(next(plain)) == [0, 1, 2, 3]


def test_restore_validation():
    it = PromptIterator(Numbers(5), 2, seed=0)
    state = it.state()
    with pytest.raises(ValueError, match="dataset of 5 examples, this one has 6"):
        PromptIterator(Numbers(6), 2).restore(state)
    with pytest.raises(ValueError, match="missing 'epoch'"):
        it.restore({k: v for k, v in state.items() if k != "epoch"})
    with pytest.raises(ValueError, match="'index' must be an int"):
        it.restore({**state, "index": "3"})
    with pytest.raises(ValueError, match="shuffle=False, this iterator True"):
        it.restore({**state, "shuffle": 0})
    with pytest.raises(ValueError, match="out of range"):
        it.restore({**state, "index": 5})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PromptIterator(Numbers(5), 0)
