"""SamplingParams / Sample / check_prompts: bad input names the field, prompt or token at fault."""

import numpy as np
import pytest

from r1jax.sampling.params import Sample, SamplingParams, check_prompts


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(n=0), "sampling.n"),
    (dict(stop_token_ids=(3, -2)), r"stop_token_ids\[1\]"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**32), "seed"),
])
def test_sampling_params_reject_out_of_range_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_sampling_params_reject_wrong_types():
    with pytest.raises(TypeError, match="n"):
        SamplingParams(n=2.0)
    with pytest.raises(TypeError, match="temperature"):
        SamplingParams(temperature="hot")


def test_sampling_params_hashable_and_flags():
    a = SamplingParams(stop_token_ids=[1, 2], temperature=0.0)
    assert a.stop_token_ids == (1, 2) and hash(a) == hash(SamplingParams(stop_token_ids=(1, 2), temperature=0.0))
    assert a.greedy and not a.truncates
    assert SamplingParams(top_p=0.9).truncates and SamplingParams(top_k=4).truncates


def test_sample_checks_lengths_and_reason():
    s = Sample([1, 2], [-0.5, -1.0], "stop")
    assert len(s) == 2 and s.token_ids.dtype == np.int32 and s.logprobs.dtype == np.float32
    assert s == Sample(np.array([1, 2]), np.array([-0.5, -1.0]), "stop")
    with pytest.raises(ValueError, match="same length"):
        Sample([1, 2], [-0.5], "stop")
    with pytest.raises(ValueError, match="finish_reason"):
        Sample([1], [-0.5], "eos")


@pytest.mark.parametrize("prompts,match", [
    ([], "empty list"),
    ([[1, 2], []], r"prompts\[1\]: empty prompt"),
    ([[1, 64]], r"prompts\[0\]\[1\]: token id 64 is outside the vocabulary \[0, 64\)"),
    ([[-3]], r"prompts\[0\]\[0\]: token id -3"),
    ([[1.5]], "integers"),
    ([[1] * 60], "exceeds the model's max length 64"),
])
def test_check_prompts_names_the_problem(prompts, match):
    with pytest.raises(ValueError, match=match):
        check_prompts(prompts, vocab_size=64, max_length=64, max_new_tokens=8)


def test_check_prompts_returns_int32_arrays():
    out = check_prompts([[1, 2], np.array([3], np.int64)], vocab_size=64, max_length=64, max_new_tokens=8)
    assert [o.tolist() for o in out] == [[1, 2], [3]] and all(o.dtype == np.int32 for o in out)
