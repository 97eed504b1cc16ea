"""Padding and packing: every token kept exactly once, segment ids / positions / masks correct, groups together."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.data.batching import (
    expand_groups,
    microbatch_slices,
    pack_sequences,
    pad_prompts,
    pad_sequences,
)


def _unique_sequences(shape):
    """Prompts/completions whose every token id is distinct (ids start at 1; pad is 0)."""
    nxt = iter(range(1, 10**6))
    prompts = [[next(nxt) for _ in range(lp)] for lp, _ in shape]
    completions = [[next(nxt) for _ in range(lc)] for _, lc in shape]
    return prompts, completions


def _check_layout(batch, prompts, completions, group_size=1):
    n = len(prompts)
    t = batch.tokens.shape[1]
    covered = np.zeros(batch.tokens.shape, bool)
    for i in range(n):
        r, o = int(batch.row[i]), int(batch.offset[i])
        lp, lc = len(prompts[i]), len(completions[i])
        span = slice(o, o + lp + lc)
        assert o + lp + lc <= t
        assert not covered[r, span].any(), "two sequences overlap"
        covered[r, span] = True
        np.testing.assert_array_equal(batch.tokens[r, span], prompts[i] + completions[i])
        seg = batch.segment_ids[r, span]
        assert seg.min() == seg.max() >= 1
        np.testing.assert_array_equal(batch.positions[r, span], np.arange(lp + lc))
        np.testing.assert_array_equal(batch.loss_mask[r, span], [False] * lp + [True] * lc)
        assert batch.prompt_lengths[i] == lp and batch.completion_lengths[i] == lc
    # Nothing else is marked: padding has segment 0, position 0, no loss, pad tokens.
    np.testing.assert_array_equal(batch.segment_ids > 0, covered)
    np.testing.assert_array_equal(batch.attention_mask, covered)
    assert not batch.loss_mask[~covered].any()
    assert (batch.positions[~covered] == 0).all() and (batch.tokens[~covered] == 0).all()
    # Every token exactly once (ids are unique, so the multiset check is a set check plus a count).
    kept = batch.tokens[covered]
    everything = [tok for p, c in zip(prompts, completions) for tok in p + c]
    assert kept.size == len(everything) and set(kept.tolist()) == set(everything)
    # Segment ids are distinct within a row (one per sequence).
    for r in range(batch.tokens.shape[0]):
        segs = [int(batch.segment_ids[batch.row[i], batch.offset[i]]) for i in range(n) if batch.row[i] == r]
        assert len(segs) == len(set(segs))
    # Groups share a row.
    for g in range(n // group_size):
        rows = {int(batch.row[i]) for i in range(g * group_size, (g + 1) * group_size)}
        assert len(rows) == 1, f"group {g} split over rows {rows}"


lengths = st.tuples(st.integers(1, 6), st.integers(0, 7))


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    group_size=st.sampled_from([1, 2, 3]),
    num_groups=st.integers(1, 6),
    slack=st.integers(0, 12),
)
def test_packing_properties(data, group_size, num_groups, slack):
    shape = data.draw(st.lists(lengths, min_size=group_size * num_groups, max_size=group_size * num_groups))
    prompts, completions = _unique_sequences(shape)
    unit = max(sum(lp + lc for lp, lc in shape[g * group_size : (g + 1) * group_size]) for g in range(num_groups))
    row_length = unit + slack
    adv = [float(i) + 0.5 for i in range(len(shape))]
    logp = [[-(i + 1) - k / 10 for k in range(len(c))] for i, c in enumerate(completions)]
    batch = pack_sequences(
        prompts,
        completions,
        row_length,
        group_size=group_size,
        token_values={"logp": logp},
        sequence_values={"adv": adv},
    )
    assert batch.tokens.shape[1] == row_length and batch.tokens.dtype == np.int32
    total = sum(lp + lc for lp, lc in shape)
    assert batch.tokens.shape[0] >= -(-total // row_length)
    _check_layout(batch, prompts, completions, group_size)
    for i in range(len(shape)):
        r, o, lp, lc = batch.row[i], batch.offset[i], len(prompts[i]), len(completions[i])
        np.testing.assert_allclose(batch.values["logp"][r, o + lp : o + lp + lc], logp[i], rtol=1e-6)
        np.testing.assert_array_equal(batch.values["adv"][r, o + lp : o + lp + lc], adv[i])
    assert not batch.values["adv"][~batch.loss_mask].any()
    # Deterministic.
    again = pack_sequences(prompts, completions, row_length, group_size=group_size)
    np.testing.assert_array_equal(again.tokens, batch.tokens)
    np.testing.assert_array_equal(again.segment_ids, batch.segment_ids)


def test_first_fit_decreasing_known_layout():
    # Lengths 5, 3, 4, 2, 2 into rows of 6: 5 -> r0, 4 -> r1, 3 -> r2, 2 -> r1, 2 -> r2.
    shape = [(1, 4), (1, 2), (2, 2), (1, 1), (2, 0)]
    prompts, completions = _unique_sequences(shape)
    b = pack_sequences(prompts, completions, 6)
    assert b.row.tolist() == [0, 2, 1, 1, 2]
    assert b.offset.tolist() == [0, 0, 0, 4, 3]
    np.testing.assert_array_equal(b.segment_ids, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 2, 2], [1, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(b.positions, [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 0]])
    np.testing.assert_array_equal(
        b.loss_mask.astype(int), [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]]
    )


def test_pack_static_row_count_and_errors():
    prompts, completions = _unique_sequences([(2, 2)] * 4)
    b = pack_sequences(prompts, completions, 8, num_rows=5)
    assert b.tokens.shape == (5, 8) and not b.attention_mask[2:].any()
    assert pack_sequences(prompts, completions, 8, rows_multiple_of=4).tokens.shape == (4, 8)
    with pytest.raises(ValueError, match="needs 2 rows of 8 tokens, more than num_rows=1"):
        pack_sequences(prompts, completions, 8, num_rows=1)
    with pytest.raises(ValueError, match=r"group 0 \(sequences 0..1\) has 8 tokens, more than row_length=7"):
        pack_sequences(prompts, completions, 7, group_size=2)
    with pytest.raises(ValueError, match="sequence 0 has 4 tokens, more than row_length=3"):
        pack_sequences(prompts, completions, 3)
    with pytest.raises(ValueError, match="do not split into groups of group_size=3"):
        pack_sequences(prompts, completions, 8, group_size=3)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pack_sequences([[1], [], [2], [3]], completions, 8)
    with pytest.raises(ValueError, match=r"token_values\['logp'\]\[2\] has 1 values but completion 2 has 2 tokens"):
        pack_sequences(prompts, completions, 8, token_values={"logp": [[0, 0], [0, 0], [0], [0, 0]]})


def test_pad_sequences():
    prompts, completions = [[5, 6], [7]], [[8], [9, 10, 11]]
    b = pad_sequences(prompts, completions, pad_id=99, multiple_of=8, sequence_values={"adv": [1.0, -1.0]})
    np.testing.assert_array_equal(b.tokens, [[5, 6, 8] + [99] * 5, [7, 9, 10, 11] + [99] * 4])
    np.testing.assert_array_equal(b.loss_mask.astype(int), [[0, 0, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(b.positions, [[0, 1, 2, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(b.values["adv"][1], [0, -1, -1, -1, 0, 0, 0, 0])
    assert b.row.tolist() == [0, 1] and b.offset.tolist() == [0, 0]
    with pytest.raises(ValueError, match="sequence 1 has 4 tokens, more than length=3"):
        pad_sequences(prompts, completions, length=3)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=8))
def test_padding_layout_property(completion_lengths):
    shape = [(1 + (i % 3), lc) for i, lc in enumerate(completion_lengths)]
    prompts, completions = _unique_sequences(shape)
    _check_layout(pad_sequences(prompts, completions), prompts, completions)


def test_pad_prompts_left():
    b = pad_prompts([[5, 6, 7], [8]], pad_id=0, multiple_of=4)
    np.testing.assert_array_equal(b.tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(b.mask, [[False, True, True, True], [False, False, False, True]])
    np.testing.assert_array_equal(b.positions, [[0, 0, 1, 2], [0, 0, 0, 0]])
    assert b.lengths.tolist() == [3, 1]
    assert pad_prompts([[1]], length=5).tokens.shape == (1, 5)
    with pytest.raises(ValueError, match="prompt 0 has 3 tokens, more than length=2"):
        pad_prompts([[5, 6, 7]], length=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pad_prompts([[5], []])
    with pytest.raises(ValueError, match="negative id"):
        pad_prompts([[5, -1]])


def test_group_helpers():
    assert expand_groups(["a", "b"], 3) == ["a", "a", "a", "b", "b", "b"]
    assert microbatch_slices(12, 3, group_size=2) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(ValueError, match="3 groups of 4 do not split into 2 equal micro-batches"):
        microbatch_slices(12, 2, group_size=4)
