"""Checkpoints on disk: round trip, refusal of non-finite states, rotation, and verification.

Every corruption is done to a real orbax checkpoint in ``tmp_path``; the fallback must land on the
older intact step with identical arrays.
"""

import logging
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.train.checkpoint import CheckpointError, Checkpointer


class State(NamedTuple):
    step: jax.Array
    params: dict
    key: jax.Array


def _state(seed: int) -> State:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return State(
        step=jnp.int32(seed),
        # random float32 does not compress: this leaf is the largest file of the checkpoint
        params={"w": jax.random.normal(k1, (64, 256), jnp.float32),
                "b": jax.random.normal(k2, (8,), jnp.float32).astype(jnp.bfloat16)},
        key=jax.random.key_data(jax.random.key(seed + 100)),
    )


def _meta(step: int) -> dict:
    return {"iterator": {"epoch": 0, "index": step}, "weight_version": step, "config": {"lr": 1e-6}}


def _assert_same(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _saved(directory, steps, keep=3) -> Checkpointer:
    ckpt = Checkpointer(directory, keep=keep)
    for step in steps:
        ckpt.save(step, _state(step), _meta(step))
    return ckpt


def _files(step_dir):
    return [p for p in step_dir.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- corruptions of one step dir

def _flip_largest(step_dir):
    target = max(_files(step_dir), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    target.write_bytes(bytes(data))


def _truncate_largest(step_dir):
    target = max(_files(step_dir), key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])


def _delete_manifest(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _garbage_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"iterator": {"epoch": 0,')


def _empty_dir(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _other_steps_state(step_dir):
    # A well-formed state item of another step: orbax reads it without complaint, only the digest
    # can tell (as with bytes flipped in an uncompressed array).
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


def _edited_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"iterator": {"epoch": 0, "index": 99}, '
                                                '"weight_version": 2, "config": {"lr": 1e-6}}')


def _no_digest(step_dir):
    shutil.rmtree(step_dir / "digest")


CORRUPTIONS = {
    "flipped bytes in the largest array file": _flip_largest,
    "truncated array file": _truncate_largest,
    "missing orbax manifest": _delete_manifest,
    "bad meta JSON": _garbage_meta,
    "empty step directory": _empty_dir,
    "another step's arrays": _other_steps_state,
    "edited meta": _edited_meta,
    "missing digest item": _no_digest,
}


# --------------------------------------------------------------------------- tests

def test_round_trip_restores_identical_state_and_meta(tmp_path):
    ckpt = _saved(tmp_path, [1, 2])
    for step in (1, 2):
        state, meta = ckpt.restore(step, _state(0))
        _assert_same(state, _state(step))
        assert meta == _meta(step)
    step, state, meta = ckpt.restore_latest(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0)))
    assert step == 2 and meta == _meta(2)
    _assert_same(state, _state(2))
    ckpt.close()


def test_restore_latest_of_an_empty_directory_is_none(tmp_path):
    assert Checkpointer(tmp_path / "ckpt").restore_latest(_state(0)) is None


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("leaf", ["w", "b"])
def test_save_refuses_a_non_finite_state_and_keeps_the_last_good_one(tmp_path, bad, leaf):
    ckpt = _saved(tmp_path, [1], keep=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    good = _state(2)
    params = {**good.params, leaf: good.params[leaf].at[3].set(bad)}
    with pytest.raises(ValueError, match=rf"step 2 .*state leaf \.params\['{leaf}'\] has \d+ non-finite"):
        ckpt.save(2, good._replace(params=params), _meta(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing rotated
    assert ckpt.all_steps() == [1]
    step, state, _ = ckpt.restore_latest(_state(0))
    assert step == 1
    _assert_same(state, _state(1))


def test_rotation_keeps_the_newest(tmp_path):
    ckpt = _saved(tmp_path, [1, 2, 3, 4], keep=2)
    assert ckpt.all_steps() == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"]


def test_rotation_deletes_only_steps_older_than_the_one_just_saved(tmp_path):
    # A corrupt step 7 is left over (a run fell back from it to step 5 and goes on). Saving step 6
    # with keep=1 deletes step 5 only: step 6, the newest intact checkpoint, stays, and so does the
    # newer step 7 (it is replaced when the run saves step 7 again; see the test below).
    _saved(tmp_path, [5], keep=1).close()
    shutil.copytree(tmp_path / "5", tmp_path / "7")
    _flip_largest(tmp_path / "7")
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(6, _state(6), _meta(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["6", "7"]
    step, state, meta = Checkpointer(tmp_path, keep=1).restore_latest(_state(0))
    assert step == 6 and meta == _meta(6)
    _assert_same(state, _state(6))


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_latest_checkpoint_is_refused_and_the_older_one_restored(tmp_path, caplog, kind):
    _saved(tmp_path, [1, 2]).close()
    CORRUPTIONS[kind](tmp_path / "2")

    ckpt = Checkpointer(tmp_path)  # as a resumed run sees it
    assert ckpt.all_steps() == [1, 2]
    with pytest.raises(CheckpointError, match=str(tmp_path / "2")):
        ckpt.restore(2, _state(0))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="r1jax.train.checkpoint"):
        step, state, meta = ckpt.restore_latest(_state(0))
    assert step == 1 and meta == _meta(1)
    _assert_same(state, _state(1))
    warnings = [r for r in caplog.records if r.name == "r1jax.train.checkpoint"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    line = warnings[0].getMessage()
    assert str(tmp_path / "2") in line and "\n" not in line


def test_a_corrupt_step_is_replaced_when_the_run_saves_it_again(tmp_path, caplog):
    ckpt = _saved(tmp_path, [1, 2])
    _flip_largest(tmp_path / "2")
    step, _, _ = ckpt.restore_latest(_state(0))
    assert step == 1
    redone = _state(22)
    with caplog.at_level(logging.WARNING, logger="r1jax.train.checkpoint"):
        ckpt.save(2, redone, _meta(2))
    assert any("replacing" in r.getMessage() and str(tmp_path / "2") in r.getMessage() for r in caplog.records)
    state, _ = ckpt.restore(2, _state(0))
    _assert_same(state, redone)


def test_save_does_not_overwrite_an_intact_checkpoint(tmp_path):
    ckpt = _saved(tmp_path, [1])
    with pytest.raises(ValueError, match="an intact checkpoint of step 1 already exists"):
        ckpt.save(1, _state(11), _meta(1))
    _assert_same(ckpt.restore(1, _state(0))[0], _state(1))


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path, caplog):
    ckpt = _saved(tmp_path, [1, 2])
    _flip_largest(tmp_path / "1")
    _garbage_meta(tmp_path / "2")
    with caplog.at_level(logging.WARNING, logger="r1jax.train.checkpoint"):
        with pytest.raises(CheckpointError, match=r"none of the checkpoints \(steps 1, 2\) is intact"):
            ckpt.restore_latest(_state(0))
    assert len([r for r in caplog.records if r.name == "r1jax.train.checkpoint"]) == 2


def test_a_different_state_structure_is_a_plain_error_without_fallback(tmp_path):
    ckpt = _saved(tmp_path, [1, 2])
    other = _state(0)._replace(params={"w": jnp.zeros((64, 128), jnp.float32), "b": _state(0).params["b"]})
    with pytest.raises(ValueError, match=r"saved leaf \.params\['w'\] float32\[64, 256\]") as err:
        ckpt.restore_latest(other)
    assert not isinstance(err.value, CheckpointError)


def test_keep_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ValueError, match="keep: expected an integer >= 1, got 0"):
        Checkpointer(tmp_path, keep=0)
