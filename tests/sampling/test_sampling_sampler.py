"""The embedded sampler against its references: transformers' greedy generate, the trainer's
log-probs (r1jax_kernels.token_logprobs on r1jax.models.forward), a numpy top-p/top-k filter."""

import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models import forward, lm_head_weight
from r1jax.sampling import Sampler, SamplingParams
from r1jax.sampling import sampler as sampler_mod
from r1jax.sampling.sampler import filter_logits
from r1jax_kernels import token_logprobs

MAX_NEW = 8
PAD_TO = 16


@pytest.fixture(scope="module")
def trainer_logits(tiny):
    """The trainer's path: right-padded full sequences through forward, float32 logits + log-probs."""
    params, config = tiny

    @jax.jit
    def run(tokens, mask, temperature):
        hidden = forward(params, config, tokens, attention_mask=mask)
        lm = lm_head_weight(params, config)
        targets = jnp.roll(tokens, -1, axis=1)  # position t predicts token t+1
        logp = token_logprobs(hidden, lm, targets, temperature=temperature)
        logits = jnp.einsum("btd,dv->btv", hidden, lm, preferred_element_type=jnp.float32)
        return logp, logits

    def apply(prompt, completion, temperature):
        seq = np.concatenate([prompt, completion]).astype(np.int32)
        tokens = np.zeros((1, PAD_TO), np.int32)
        tokens[0, :len(seq)] = seq
        mask = np.arange(PAD_TO)[None] < len(seq)
        logp, logits = run(jnp.asarray(tokens), jnp.asarray(mask), jnp.float32(temperature))
        P, L = len(prompt), len(completion)
        return np.asarray(logp[0, P - 1:P + L - 1]), np.asarray(logits[0, P - 1:P + L - 1])

    return apply


def test_greedy_equals_transformers_generate(hf_tiny, tiny, sampler, prompts):
    import torch
    model, _ = hf_tiny
    params, _ = tiny
    out = sampler.generate(params, prompts, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW))
    for p, group in zip(prompts, out):
        ids = torch.tensor(p[None].astype(np.int64))
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(p):].numpy()
            full = torch.tensor(np.concatenate([p, ref])[None].astype(np.int64))
            ref_lp = torch.log_softmax(model(full).logits[0].double(), -1)
        assert len(ref) == MAX_NEW
        (sample,) = group
        np.testing.assert_array_equal(sample.token_ids, ref)
        assert sample.finish_reason == "length"
        # Greedy rows report temperature-1 processed log-probs: HF's log_softmax of its own logits.
        want = ref_lp[len(p) - 1:len(p) - 1 + MAX_NEW].numpy()[np.arange(MAX_NEW), ref]
        np.testing.assert_allclose(sample.logprobs, want, atol=1e-4)


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.8, 3), (1.3, 1.0, 0)])
def test_logprobs_equal_trainer_logprobs(tiny, sampler, prompts, trainer_logits, temperature, top_p, top_k):
    params, _ = tiny
    s = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=MAX_NEW, n=2, seed=11)
    out = sampler.generate(params, prompts, s)
    for p, group in zip(prompts, out):
        assert len(group) == 2
        for sample in group:
            want, logits = trainer_logits(p, sample.token_ids, temperature)
            # Processed log-probs: after temperature, before truncation, as the trainer computes them.
            np.testing.assert_allclose(sample.logprobs, want, atol=1e-5, rtol=0)
            if top_k:  # truncation was applied when sampling: every token is in the top k ...
                rank = (logits > logits[np.arange(len(sample)), sample.token_ids][:, None]).sum(-1)
                assert (rank < top_k).all()
                # ... and inside the nucleus of mass top_p (computed over the top-k, in float64).
                for t, tok in enumerate(sample.token_ids):
                    z = logits[t].astype(np.float64) / temperature
                    order = np.argsort(-z)[:top_k]
                    probs = np.exp(z[order] - z[order].max())
                    probs /= probs.sum()
                    before = np.cumsum(probs) - probs
                    assert tok in order[before < top_p]


def test_same_seed_same_tokens_and_different_seed_differs(tiny, sampler, prompts):
    params, _ = tiny

    def run(seed):
        out = sampler.generate(params, prompts, SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, n=2,
                                                               seed=seed))
        return [s.token_ids.tolist() for g in out for s in g]

    a, b, c = run(5), run(5), run(6)
    assert a == b
    assert a != c
    assert a[0] != a[1]  # the n samples of a prompt use different random streams


def test_top_k_1_equals_greedy(tiny, sampler, prompts):
    params, _ = tiny
    greedy = sampler.generate(params, prompts, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW))
    top1 = sampler.generate(params, prompts, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=MAX_NEW,
                                                            seed=3))
    for g, t in zip(greedy, top1):
        np.testing.assert_array_equal(g[0].token_ids, t[0].token_ids)
        np.testing.assert_allclose(g[0].logprobs, t[0].logprobs, atol=1e-6)  # both at temperature 1


def test_stop_token_ends_sample_with_reason_stop(tiny, sampler, prompts):
    params, _ = tiny
    greedy = [g[0].token_ids.tolist() for g in sampler.generate(
        params, prompts, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW))]
    stop = greedy[0][3]
    out = sampler.generate(params, prompts, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW,
                                                           stop_token_ids=(stop,)))
    n_stopped = 0
    for g, group in zip(greedy, out):
        (sample,) = group
        if stop in g:
            k = g.index(stop)
            assert sample.token_ids.tolist() == g[:k + 1]  # the stop token is kept, nothing after it
            assert sample.finish_reason == "stop"
            assert len(sample.logprobs) == k + 1
            n_stopped += 1
        else:
            assert sample.token_ids.tolist() == g and sample.finish_reason == "length"
    assert n_stopped >= 1


def test_rows_do_not_depend_on_batch_composition(tiny, sampler, prompts):
    params, _ = tiny
    s = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, n=2, seed=7)
    full = sampler.generate(params, prompts, s)
    alone = sampler.generate(params, prompts[1:2], s, first_prompt_index=1)
    for a, b in zip(full[1], alone[0]):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-6)


def test_streaming_chunks_equal_one_shot_and_report_early_finishers_first(tiny, sampler, prompts):
    params, _ = tiny
    greedy = sampler.generate(params, prompts, SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW))
    stop = int(greedy[0][0].token_ids[1])
    s = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, stop_token_ids=(stop,))
    rows = sampler.make_rows(prompts, s)
    one_shot = dict(sampler.run_rows(params, rows, decode_chunk=None))
    streamed = list(sampler.run_rows(params, rows, decode_chunk=2))
    assert sorted(r for r, _ in streamed) == list(range(len(rows)))
    for r, sample in streamed:
        assert sample == one_shot[r]
    chunks = [-(-len(sample) // 2) for _, sample in streamed]  # the decode call each row finished in
    assert chunks[0] == 1 < max(chunks)  # a row that stopped in the first call came out first ...
    assert chunks == sorted(chunks)      # ... and rows come out call by call


def test_new_values_and_lengths_in_a_bucket_do_not_recompile(tiny, sampler):
    params, _ = tiny
    sampler.generate(params, [[1, 2, 3]], SamplingParams(temperature=0.5, top_p=0.9, max_new_tokens=MAX_NEW,
                                                         stop_token_ids=(4,), seed=0))
    sizes = (sampler_mod._prefill_jit._cache_size(), sampler_mod._decode_jit._cache_size())
    shapes = sampler.compiled_shapes
    for i, (t, p, k) in enumerate([(0.9, 0.5, 0), (1.7, 0.95, 5), (0.2, 0.7, 2)]):
        sampler.generate(params, [[5] * (i + 1), [6, 7, 8, 9, 10, 11, 12][: 7 - i]],
                         SamplingParams(temperature=t, top_p=p, top_k=k, max_new_tokens=MAX_NEW - i,
                                        stop_token_ids=(9 + i,), n=2, seed=i))
    assert (sampler_mod._prefill_jit._cache_size(), sampler_mod._decode_jit._cache_size()) == sizes
    assert sampler.compiled_shapes == shapes


def _numpy_filter(scaled, top_p, top_k):
    out = np.full_like(scaled, -np.inf)
    for b in range(scaled.shape[0]):
        z = scaled[b].astype(np.float64)
        order = np.argsort(-z)
        k = top_k[b] if top_k[b] > 0 else len(z)
        order = order[:k]
        p = np.exp(z[order] - z[order].max())
        p /= p.sum()
        keep = order[(np.cumsum(p) - p) < top_p[b]]
        out[b, keep] = scaled[b, keep]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_logits_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    B, V = 6, 40
    scaled = rng.normal(size=(B, V)).astype(np.float32) * 3
    top_p = np.array([1.0, 0.9, 0.5, 0.05, 1.0, 0.3], np.float32)
    top_k = np.array([0, 0, 7, 0, 1, 3], np.int32)
    got = np.asarray(jax.jit(filter_logits)(scaled, top_p, top_k))
    want = _numpy_filter(scaled, top_p, top_k)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_array_equal(got[np.isfinite(got)], want[np.isfinite(want)])
    assert np.isfinite(got).sum(-1).min() >= 1


def test_filter_logits_keeps_ties_and_ignores_excluded_tokens():
    scaled = np.array([[3.0, 3.0, 1.0, 0.0, -np.inf],
                       [-np.inf, 2.0, -np.inf, 1.0, 0.5],
                       [-1e30, -2.0, 5.0, -0.0, 0.0]], np.float32)
    got = np.asarray(jax.jit(filter_logits)(scaled, np.array([1.0, 0.01, 1.0], np.float32),
                                           np.array([1, 4, 3], np.int32)))
    np.testing.assert_array_equal(np.isfinite(got), [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]])


def test_sampler_rejects_bad_settings(tiny):
    from r1jax.sampling import Sampler

    _, config = tiny
    with pytest.raises(ValueError, match="pad_id"):
        Sampler(config, pad_id=config.vocab_size)
    with pytest.raises(ValueError, match="max_batch_rows"):
        Sampler(config, max_batch_rows=0)
    with pytest.raises(ValueError, match="decode_chunk"):
        Sampler(config, decode_chunk=0)


def test_inverse_cdf_draws_follow_softmax_and_never_pick_excluded_tokens():
    from r1jax.sampling.sampler import categorical_inverse_cdf

    logits = np.array([1.0, -np.inf, 0.0, 2.0, -1.0, -np.inf], np.float32)
    n = 20000
    u = jax.random.uniform(jax.random.PRNGKey(0), (n,), jnp.float32)
    u = jnp.concatenate([u, jnp.array([0.0, np.nextafter(np.float32(1), np.float32(0))], jnp.float32)])
    toks = np.asarray(jax.jit(categorical_inverse_cdf)(jnp.broadcast_to(logits, (n + 2, 6)), u))
    assert not np.isin(toks, [1, 5]).any()  # probability-0 tokens, including at u = 0 and u -> 1
    freq = np.bincount(toks[:n], minlength=6) / n
    p = np.exp(logits.astype(np.float64) - 2.0)
    p /= p.sum()
    np.testing.assert_allclose(freq, p, atol=0.015)  # > 4 standard errors at n = 20000


@pytest.mark.parametrize("vocab", [7, 100, 512])
def test_inverse_cdf_matches_a_float64_search_over_the_whole_vocabulary(vocab):
    """The two-level search (block masses, then one block) picks the token a float64 search of the
    full CDF picks, except where ``u`` lies within float32 rounding of a CDF step; excluded tokens,
    whole excluded blocks and an excluded vocabulary end are never picked."""
    from r1jax.sampling.sampler import categorical_inverse_cdf

    rng = np.random.default_rng(vocab)
    rows = 400
    logits = (rng.normal(size=(rows, vocab)) * 3).astype(np.float32)
    logits[rng.random((rows, vocab)) < 0.3] = -np.inf
    logits[: rows // 2, : vocab // 2] = -np.inf  # whole blocks of zero mass
    logits[rows // 4:, -3:] = -np.inf            # the vocabulary's end excluded
    logits[:, 1] = 0.0                           # every row keeps a token
    u = rng.random(rows).astype(np.float32)
    u[:8] = [0.0, np.nextafter(np.float32(1), np.float32(0))] * 4
    toks = np.asarray(jax.jit(categorical_inverse_cdf)(jnp.asarray(logits), jnp.asarray(u)))
    p = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    cdf = np.cumsum(p, -1)
    target = u.astype(np.float64) * cdf[:, -1]
    want = np.array([np.searchsorted(c, t, side="right") for c, t in zip(cdf, target)])
    want = np.minimum(want, vocab - 1 - np.argmax(p[:, ::-1] > 0, -1))
    assert (p[np.arange(rows), toks] > 0).all()
    near_step = np.abs(cdf[np.arange(rows), np.minimum(want, toks)] - target) < 1e-5 * cdf[:, -1]
    assert ((toks == want) | near_step).all()
    assert (toks == want).mean() > 0.99


def test_argmax_first_is_jnp_argmax_with_ties_and_nan():
    from r1jax.sampling.sampler import argmax_first

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(64, 37)).astype(np.float32)  # many ties
    x[3, 5] = np.nan
    x[4, :] = -np.inf
    got = np.asarray(jax.jit(argmax_first)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
    assert got[3] == 5 and got[4] == 0


def test_decode_loop_writes_the_cache_in_place(tiny, sampler):
    """The compiled decode loop neither copies nor transposes a layer's KV cache: each step writes
    its new slot into the carried per-layer buffers (dynamic_update_slice), and the attention
    matmuls read them in their stored layout."""
    params, config = tiny
    rows = sampler.make_rows([[1, 2, 3]], SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, seed=0))
    shape = sampler.batch_shape(rows)
    state = sampler_mod._prefill_jit(params, config, *sampler._pack(rows, shape), shape=shape)
    hlo = sampler_mod._decode_jit.lower(params, config, state, jnp.int32(MAX_NEW), shape=shape).compile().as_text()
    slots = shape.prompt_len + shape.max_new_tokens
    layer = sorted((shape.batch, config.num_kv_heads, slots, config.resolved_head_dim))
    writes, moves = 0, []
    for m in re.finditer(r"%(\S+) = \w+\[([\d,]*)\]\S* ([\w-]+)\(", hlo):
        name, dims, op = m.groups()
        if sorted(int(d) for d in dims.split(",") if d not in ("", "1")) != layer:
            continue
        writes += op == "dynamic-update-slice"
        if op in ("copy", "transpose") or name.startswith(("copy", "transpose")):
            moves.append(m.group(0))
    assert moves == []
    assert writes >= 2 * config.num_layers  # k and v of every layer written where they live


def _assert_same_samples(a, b, *, atol: float):
    """Two ``generate`` results: the same groups, tokens and finish reasons, log-probs within ``atol``."""
    for ga, gb in zip(a, b, strict=True):
        for sa, sb in zip(ga, gb, strict=True):
            np.testing.assert_array_equal(sa.token_ids, sb.token_ids)
            assert sa.finish_reason == sb.finish_reason
            np.testing.assert_allclose(sa.logprobs, sb.logprobs, atol=atol, rtol=0)


def test_a_shared_prefill_gives_the_same_samples(tiny):
    """The 4 samples of each of 2 prompts prefill 2 rows, not 8, and come out as without sharing."""
    params, config = tiny
    prompts = [np.array([3, 1, 4, 1, 5]), np.array([9, 2, 6])]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, n=4, seed=7)
    shared, plain = Sampler(config, max_batch_rows=8), Sampler(config, max_batch_rows=8, share_prefill=False)
    rows = shared.make_rows(prompts, sampling)
    shape = shared.batch_shape(rows)
    tokens, *_, source = shared._pack(rows, shape)
    assert shape.prefill_batch == 2 and tokens.shape[0] == 2
    np.testing.assert_array_equal(np.asarray(source), [0, 0, 0, 0, 1, 1, 1, 1])
    assert plain.batch_shape(rows).prefill_batch is None
    a, b = shared.generate(params, prompts, sampling), plain.generate(params, prompts, sampling)
    _assert_same_samples(a, b, atol=1e-5)  # matmuls of 2 vs 8 rows round apart


def test_dropping_finished_rows_gives_the_same_samples(tiny):
    """Rows that stop early leave the batch (the rest go on in a smaller one): same samples as a
    batch decoded to the end, and a smaller batch shape was compiled."""
    params, config = tiny
    prompts = [np.array([3, 1, 4]), np.array([9, 2, 6, 5]), np.array([7, 7]), np.array([8])]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, n=4, seed=3, stop_token_ids=tuple(range(0, 10)))
    dropping = Sampler(config, max_batch_rows=16, drop_finished_every=2)
    whole = Sampler(config, max_batch_rows=16)
    a, b = dropping.generate(params, prompts, sampling), whole.generate(params, prompts, sampling)
    lengths = [len(s) for g in b for s in g]
    assert min(lengths) <= 4 and max(lengths) > 6  # rows do stop at different times
    _assert_same_samples(a, b, atol=1e-5)
    assert {s.batch for s in whole.compiled_shapes} == {16}
    assert min(s.batch for s in dropping.compiled_shapes) < 16


def test_drop_finished_every_is_checked(tiny):
    with pytest.raises(ValueError, match="drop_finished_every"):
        Sampler(tiny[1], drop_finished_every=0)


@pytest.mark.parametrize("drop_finished_every", [None, 3])
def test_a_growing_cache_gives_the_same_samples(tiny, drop_finished_every):
    """`decode_window`: the cache starts at prompt + W slots and grows when full (also after rows
    left the batch): the same samples as the whole buffer from the start, through cache sizes
    P + 4, P + 8 and the full P + 12 (the last one is the plain shape)."""
    params, config = tiny
    prompts = [np.array([3, 1, 4]), np.array([9, 2, 6, 5]), np.array([7, 7]), np.array([8])]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, n=4, seed=5, stop_token_ids=tuple(range(0, 10)))
    kwargs = {"max_batch_rows": 16, "new_tokens_bucket": 4, "drop_finished_every": drop_finished_every}
    growing, whole = Sampler(config, decode_window=4, **kwargs), Sampler(config, **kwargs)
    a, b = growing.generate(params, prompts, sampling), whole.generate(params, prompts, sampling)
    assert max(len(s) for g in b for s in g) > 8  # some rows reach the last window
    _assert_same_samples(a, b, atol=1e-5)
    P = 8  # the prompt bucket
    assert {s.cache_len for s in growing.compiled_shapes} == {P + 4, P + 8, None}
    assert {s.cache_len for s in whole.compiled_shapes} == {None}


def test_a_growing_cache_doubles_its_room(tiny):
    """After the first window, each growth doubles the slots after the prompt (W, 2W, 4W, ...): a
    generation of T tokens compiles log2(T / W) + 1 cache sizes, not T / W. Same samples as the whole buffer."""
    params, config = tiny
    prompts = [np.array([3, 1, 4]), np.array([9, 2])]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16, n=2, seed=11)
    growing = Sampler(config, decode_window=2, max_batch_rows=8, new_tokens_bucket=16)
    whole = Sampler(config, max_batch_rows=8, new_tokens_bucket=16)
    a, b = growing.generate(params, prompts, sampling), whole.generate(params, prompts, sampling)
    assert all(len(s) == 16 for g in a for s in g)
    _assert_same_samples(a, b, atol=1e-5)
    P = 8  # the prompt bucket
    assert {s.cache_len for s in growing.compiled_shapes} == {P + 2, P + 4, P + 8, None}  # None: P + 16


def test_decode_window_is_checked(tiny):
    with pytest.raises(ValueError, match="decode_window"):
        Sampler(tiny[1], decode_window=0)


def test_cache_dtype_is_checked(tiny):
    with pytest.raises(ValueError, match="cache_dtype.*float16"):
        Sampler(tiny[1], cache_dtype="float16")


def test_parallel_batches_decode_at_once_and_give_the_same_samples(tiny):
    """`parallel_batches=2`: the rows split into two batches of whole groups, both in flight at once
    (each waits at a barrier for the other: one after the other, the first would time out), with
    the samples the same batches give one after another."""
    params, config = tiny
    prompts = [np.array([3, 1, 4]), np.array([9, 2, 6, 5]), np.array([7, 7]), np.array([8]), np.array([5, 4])]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=10, n=3, seed=7)
    parallel, serial = Sampler(config, parallel_batches=2), Sampler(config, max_batch_rows=9)
    rows = parallel.make_rows(prompts, sampling)
    assert parallel.group_batches(rows, 3) == serial.group_batches(rows, 3) == [list(range(9)), list(range(9, 15))]
    both_running = threading.Barrier(2, timeout=60)
    run_rows = parallel.run_rows

    def meeting(*args, **kwargs):
        both_running.wait()
        yield from run_rows(*args, **kwargs)

    parallel.run_rows = meeting
    a, b = parallel.generate(params, prompts, sampling), serial.generate(params, prompts, sampling)
    _assert_same_samples(a, b, atol=0.0)


def test_parallel_batches_is_checked(tiny):
    with pytest.raises(ValueError, match="parallel_batches"):
        Sampler(tiny[1], parallel_batches=0)
