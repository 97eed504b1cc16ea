"""The ``sample`` stage kind: each rejection filter removes what it should (hand-made samples and
hand-computed counts), dedupe and k-per-prompt, the mixing ratio, a judge served by a real loopback
rollout server (raw text or the chat template), a whole run from the tiny checkpoint (cold-start rewrite,
provenance), bad inputs."""

import json
import pathlib

import pytest

from r1jax.config import ConfigError
from r1jax.data.tokenizer import load_tokenizer
from r1jax.pipeline.datasets import read_jsonl
from r1jax.pipeline.manifest import digest_path
from r1jax.pipeline.kinds import STAGE_KINDS
from r1jax.pipeline.sample import (FILTERS, Judge, RolloutJudge, _make_judge, filter_samples, mix_examples,
                                   parse_sample_config, parse_verdict, run_sample)
from r1jax.pipeline.sft import ColdStartFormat
from r1jax.rewards import math_accuracy

TINY = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"


def _cand(i, p, completion, *, finish="stop", tokens=5):
    q, ref = [("what is 2+3", "5"), ("what is 1+4", "5")][p]
    return {"id": i, "prompt_index": p, "sample_index": i, "prompt": q, "prompt_text": q, "reference": ref,
            "completion": completion, "num_tokens": tokens, "finish_reason": finish}


# Each sample is built to be removed by exactly one filter (or kept); see the comments.
CANDIDATES = [
    _cand(0, 0, "<think> two plus three </think> <answer> 5 </answer>"),           # kept
    _cand(1, 0, "<think> two  plus   three </think> <answer> 5 </answer>"),        # unique (c0 up to spaces)
    _cand(2, 0, "<think> two plus three", finish="length"),                        # not_truncated
    _cand(3, 0, "<think> two plus three </think> <answer> 5 </answer>", tokens=50),  # length_cap
    _cand(4, 0, "5"),                                                              # well_formatted
    _cand(5, 0, "<think> two plus three </think> <answer> 6 </answer>"),           # correct
    _cand(6, 0, "<think> 二加三 is five </think> <answer> 5 </answer>"),            # language (2/5 English)
    _cand(7, 0, "<think> add them </think> <answer> 5 </answer>"),                 # judge (score 0.2)
    _cand(8, 0, "<think> sum </think> <answer> 5 </answer>"),                      # k_per_prompt (3rd of p0)
    _cand(9, 1, "<think> one plus four </think> <answer> 5 </answer>"),            # kept
    _cand(10, 1, "<think> two plus three </think> <answer> 5 </answer>"),          # k_per_prompt (same text as
]                                                                                  # c0, other prompt: unique)


def score_judge(prompt, completion, reference):
    """A plain Python judge: a score, low for 'add'."""
    return 0.2 if "add" in completion else 1.0


CFG = dict(max_completion_tokens=10, format_reward="format_strict", verifier="math_accuracy",
           language_reward="language_consistency", language_threshold=0.95, k_per_prompt=1, judge_threshold=0.5)


def test_each_filter_removes_what_it_should():
    assert isinstance(score_judge, Judge)
    kept, counts = filter_samples(CANDIDATES, parse_sample_config("rs", CFG), judge=score_judge)
    assert [c["id"] for c in kept] == [0, 9]
    assert [c["filter"] for c in counts] == list(FILTERS)
    removed = {c["filter"]: c["removed"] for c in counts}
    assert removed == {"not_truncated": 1, "length_cap": 1, "well_formatted": 1, "correct": 1, "language": 1,
                       "unique": 1, "judge": 1, "k_per_prompt": 2}
    seen = [c["seen"] for c in counts]
    assert seen == [11, 10, 9, 8, 7, 6, 5, 4]
    assert counts[-1]["acceptance"] == 0.5 and counts[0]["acceptance"] == 10 / 11


def test_filters_that_are_off_remove_nothing_and_are_not_counted():
    cfg = parse_sample_config("rs", dict(drop_truncated=False, format_reward=None, verifier=None,
                                         language_reward=None, dedupe=False))
    kept, counts = filter_samples(CANDIDATES, cfg)
    assert kept == [dict(c) for c in CANDIDATES] and counts == []


def test_dedupe_and_k_per_prompt_alone():
    base = dict(drop_truncated=False, format_reward=None, verifier=None, language_reward=None)
    kept, counts = filter_samples(CANDIDATES, parse_sample_config("rs", base))
    # c1 repeats c0 up to spaces; c3 has c0's text (only its length differs, and the length cap is off)
    assert [c["id"] for c in kept] == [0, 2, 4, 5, 6, 7, 8, 9, 10]
    assert counts == [{"filter": "unique", "seen": 11, "removed": 2, "kept": 9, "acceptance": 9 / 11}]
    kept, counts = filter_samples(CANDIDATES, parse_sample_config("rs", dict(base, dedupe=False, k_per_prompt=3)))
    assert [c["id"] for c in kept] == [0, 1, 2, 9, 10]
    assert counts[0]["removed"] == 6


def test_dedupe_counts_exact_repeats():
    cands = [_cand(0, 0, "a b"), _cand(1, 0, "a  b"), _cand(2, 0, "a b "), _cand(3, 1, "a b"), _cand(4, 0, "a c")]
    cfg = parse_sample_config("rs", dict(drop_truncated=False, format_reward=None, verifier=None,
                                         language_reward=None))
    kept, counts = filter_samples(cands, cfg)
    assert [c["id"] for c in kept] == [0, 3, 4] and counts[0]["removed"] == 2


def test_judge_verdicts_bool_none_and_scores():
    cfg = parse_sample_config("rs", dict(drop_truncated=False, format_reward=None, verifier=None,
                                         language_reward=None, dedupe=False, judge_threshold=0.7))
    verdicts = {"v0": True, "v1": False, "v2": None, "v3": 0.7, "v4": 0.69}
    cands = [_cand(i, 0, f"v{i}") for i in range(5)]
    kept, counts = filter_samples(cands, cfg, judge=lambda p, c, r: verdicts[c])
    assert [c["id"] for c in kept] == [0, 3] and counts == [
        {"filter": "judge", "seen": 5, "removed": 3, "kept": 2, "acceptance": 0.4}]
    assert parse_verdict(" Yes.") is True and parse_verdict("no") is False
    assert parse_verdict("0.25 maybe") == 0.25 and parse_verdict("hmm") is None and parse_verdict("") is None
    assert parse_verdict("1.") == 1.0 and parse_verdict("yes, it is") is True


def test_mixing_ratio():
    mix = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    rows = mix_examples(mix, 4, 0.5, seed=1)
    assert len(rows) == 2 and all(r["source"] == "mix" for r in rows)
    assert len({r["prompt"] for r in rows}) == 2 and all(r["completion"] == "a" + r["prompt"][1:] for r in rows)
    assert rows == mix_examples(mix, 4, 0.5, seed=1)  # seeded
    assert len(mix_examples(mix, 7, 1 / 3, seed=1)) == 2  # round(7/3)
    assert len(mix_examples(mix, 4, 10.0, seed=1)) == 10  # capped by the dataset, no repeats
    assert mix_examples(mix, 0, 0.5, seed=1) == []
    prompts = {r["prompt"] for s in range(20) for r in mix_examples(mix, 2, 0.5, seed=s)}
    assert len(prompts) > 3  # the choice depends on the seed


@pytest.fixture(scope="module")
def tiny():
    from r1jax.models import load_pretrained

    params, cfg = load_pretrained(TINY, param_dtype="float32")
    return params, cfg, load_tokenizer(TINY)


def test_rollout_judge_against_a_real_loopback_server(tiny):
    """The judge's prompts go through `r1jax serve`'s server (JaxEngine over gRPC on loopback); its raw
    answers equal the same model's greedy answers sampled in-process, and its verdicts their parse."""
    from r1jax.rollout.client import RolloutClient
    from r1jax.rollout.jax_engine import JaxEngine
    from r1jax.rollout.server import make_server
    from r1jax.sampling import Sampler, SamplingParams

    params, cfg, tok = tiny
    engine = JaxEngine(params, cfg, max_batch_rows=8, min_batch_bucket=8, decode_chunk=4)
    server, port = make_server(engine, "127.0.0.1", 0)
    try:
        client = RolloutClient(f"127.0.0.1:{port}", timeout=120)
        judge = RolloutJudge(client, tok, template="{prompt}={completion} so ", max_new_tokens=6)
        items = [(c["prompt_text"], c["completion"], c["reference"]) for c in CANDIDATES[:4]]
        served = judge.outputs(items)
        local = Sampler(cfg, max_batch_rows=8, min_batch_bucket=8).generate(
            params, [tok.encode(judge.render(*it)) for it in items],
            SamplingParams(temperature=0.0, max_new_tokens=6, stop_token_ids=tok.eos_ids, seed=0))
        assert served == [tok.decode(g[0].token_ids) for g in local]
        assert judge.many(items) == [parse_verdict(t) for t in served]
        cfg_j = parse_sample_config("rs", dict(drop_truncated=False, format_reward=None, verifier=None,
                                               language_reward=None, dedupe=False))
        kept, counts = filter_samples(CANDIDATES[:4], cfg_j, judge=judge)
        expect = [v is True or (not isinstance(v, bool) and v is not None and v >= 0.5)
                  for v in judge.many(items)]
        assert [c["id"] for c in kept] == [i for i, ok in enumerate(expect) if ok]
        client.close()
        # the same judge from a stage config's `judge:` section
        configured = _make_judge(parse_sample_config("rs", {"judge": {
            "server": f"127.0.0.1:{port}", "template": "{prompt}={completion} so ", "max_new_tokens": 6}}), TINY)
        assert configured.outputs(items) == served
        configured.client.close()

        # chat: the rendered judge prompt goes over the wire as one user message in the chat template
        client = _Recording(RolloutClient(f"127.0.0.1:{port}", timeout=120))
        chat = RolloutJudge(client, tok, template="{prompt}={completion} so ", max_new_tokens=6, chat=True)
        chat_served = chat.outputs(items)
        chat_ids = [tok.apply_chat_template([{"role": "user", "content": judge.render(*it)}],
                                            add_generation_prompt=True, tokenize=True) for it in items]
        assert [list(map(int, p)) for p in client.requests[0].prompts] == chat_ids
        assert chat_ids[0][0] == tok.bos_id and chat_ids[0].count(tok.bos_id) == 1  # the template's BOS, once
        assert chat_ids != [tok.encode(judge.render(*it)) for it in items]  # not the raw-text prompt
        local = Sampler(cfg, max_batch_rows=8, min_batch_bucket=8).generate(
            params, chat_ids, SamplingParams(temperature=0.0, max_new_tokens=6, stop_token_ids=tok.eos_ids, seed=0))
        assert chat_served == [tok.decode(g[0].token_ids) for g in local]
        client.client.close()
        configured = _make_judge(parse_sample_config("rs", {"judge": {
            "server": f"127.0.0.1:{port}", "template": "{prompt}={completion} so ", "max_new_tokens": 6,
            "chat": True}}), TINY)
        assert configured.chat and configured.encode(items) == chat_ids
        configured.client.close()
    finally:
        server.stop(0)
        engine.close()


class _Recording:
    """A rollout client that keeps each request it passes on to the real one."""

    def __init__(self, client):
        self.client, self.requests = client, []

    def generate(self, request):
        self.requests.append(request)
        return self.client.generate(request)


def test_a_chat_judge_needs_a_tokenizer_with_a_chat_template_before_any_work(prompts_file, tmp_path):
    tok = load_tokenizer(TINY)
    plain_dir = tmp_path / "plain_tok"
    tok.chat_template = None
    tok.save(plain_dir)  # the tiny tokenizer without its chat template
    assert load_tokenizer(plain_dir).chat_template is None
    with pytest.raises(ConfigError, match=r"^judge\.chat: true, but the judge's tokenizer .* has no chat_template"):
        RolloutJudge(None, tok, chat=True)
    RolloutJudge(None, tok)  # raw text: no template needed
    judge = {"server": "127.0.0.1:1", "chat": True, "tokenizer": str(plain_dir)}
    with pytest.raises(ConfigError) as e:
        STAGE_KINDS["sample"]().check("rs", {"judge": judge}, {"model": None, "prompts": prompts_file})
    msg = str(e.value)
    assert msg.startswith(f"stage rs: judge.chat: true, but the judge's tokenizer ({plain_dir}) has no chat_template")
    assert "\n" not in msg
    out = tmp_path / "stage"
    with pytest.raises(ConfigError, match=r"^stage rs: judge\.chat: "):
        run_sample("rs", {"judge": judge}, model=TINY, prompts=prompts_file, out_dir=out)
    assert not out.exists()  # nothing sampled, nothing written
    STAGE_KINDS["sample"]().check("rs", {"judge": {**judge, "tokenizer": str(TINY)}},
                                  {"model": None, "prompts": prompts_file})  # TINY has a chat template
    with pytest.raises(ConfigError, match=r"^stage rs: judge\.tokenizer: tokenizer directory not found"):
        STAGE_KINDS["sample"]().check("rs", {"judge": {**judge, "tokenizer": str(tmp_path / "nope")}},
                                      {"model": None, "prompts": prompts_file})


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    rows = [{"prompt": f"{a}+{b}", "reference": str(a + b)} for a, b in [(12, 30), (45, 21), (33, 14), (20, 20)]]
    return _write(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


SAMPLE_CFG = dict(n=4, temperature=0.8, max_new_tokens=40, seed=5, chunk_prompts=2, max_batch_rows=8,
                  language_reward="language_consistency_en", mix_ratio=0.5, cold_start={"newline": " "})


def test_sample_run_from_the_tiny_checkpoint(prompts_file, tmp_path):
    mix = _write(tmp_path / "mix.jsonl", [{"prompt": f"hello {i}", "completion": f"hi {i}"} for i in range(20)])
    kind = STAGE_KINDS["sample"]()
    inputs = {"model": TINY, "prompts": prompts_file, "mix": mix}
    kind.check("r0_cold", SAMPLE_CFG, inputs)
    out = tmp_path / "stage"
    out.mkdir()
    from r1jax.pipeline.kinds import StageContext

    result = kind.run(StageContext("r0_cold", SAMPLE_CFG, inputs, out, seed=0))
    m = result.metrics
    prov = json.loads(result.outputs["provenance"].read_text())
    rows = read_jsonl(result.outputs["data"], allow_empty=True)
    assert m["candidates"] == 16 and prov["model_sha256"] == digest_path(TINY)
    assert prov["sampling"]["n"] == 4 and prov["sampling"]["seed"] == 5
    filters = prov["filters"]
    assert [f["filter"] for f in filters] == ["not_truncated", "well_formatted", "correct", "language", "unique",
                                              "cold_start"]
    assert filters[0]["seen"] == 16 and all(a["kept"] == b["seen"] for a, b in zip(filters, filters[1:]))
    assert sum(f["removed"] for f in filters) + m["kept"] == 16
    sampled = [r for r in rows if r["source"] == "sample"]
    mixed = [r for r in rows if r["source"] == "mix"]
    assert len(sampled) == m["kept"] and len(mixed) == m["mixed_in"] == round(0.5 * m["kept"])
    fmt = ColdStartFormat(newline=" ")
    for r in sampled:  # correct, and rewritten into the cold-start format
        assert fmt.parse(r["completion"]) is not None, r
        assert math_accuracy(r["prompt"], r["completion"], r["reference"]) == 1.0
    assert m["kept"] >= 1, m  # the tiny base model gets some of these right (otherwise the test says nothing)
    # a rerun reads the sampled chunks back (no new sampling) and writes the same dataset
    chunks = sorted((out / "candidates").glob("*.jsonl"))
    assert len(chunks) == 2
    again = run_sample("r0_cold", SAMPLE_CFG, model=TINY, prompts=prompts_file, out_dir=out, mix=mix)
    assert again.metrics == m and read_jsonl(again.outputs["data"], allow_empty=True) == rows
    # a run killed after its first chunk: the second is sampled again, with the same streams
    chunks[1].unlink()
    again = run_sample("r0_cold", SAMPLE_CFG, model=TINY, prompts=prompts_file, out_dir=out, mix=mix)
    assert chunks[1].is_file() and read_jsonl(again.outputs["data"], allow_empty=True) == rows
    with pytest.raises(ConfigError, match="holds samples of another model, prompt file or sampling config"):
        run_sample("r0_cold", {**SAMPLE_CFG, "temperature": 0.5}, model=TINY, prompts=prompts_file, out_dir=out,
                   mix=mix)
    # the growing KV cache (on by default) samples what the whole buffer does
    whole = run_sample("r0_cold", {**SAMPLE_CFG, "decode_window": None}, model=TINY, prompts=prompts_file,
                       out_dir=tmp_path / "whole", mix=mix)
    assert read_jsonl(whole.outputs["data"], allow_empty=True) == rows


def test_bad_inputs_fail_before_any_work(prompts_file, tmp_path):
    kind = STAGE_KINDS["sample"]()
    bad = _write(tmp_path / "p.jsonl", [{"prompt": "1+1", "reference": "2"}, {"prompt": "2+2"}])
    with pytest.raises(ConfigError) as e:
        kind.check("rs", {}, {"model": None, "prompts": bad})
    assert str(e.value) == f"stage rs: prompts: {bad}:2: missing field 'reference'"
    kind.check("rs", {"verifier": None}, {"model": None, "prompts": bad})  # no verifier: no reference needed
    with pytest.raises(ConfigError, match="stage rs: mix_ratio: 0.5 > 0 needs the input `mix`"):
        kind.check("rs", {"mix_ratio": 0.5}, {"model": None, "prompts": prompts_file})
    mix = _write(tmp_path / "m.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(ConfigError, match=r"stage rs: mix: .*m.jsonl:1: missing field 'completion'"):
        kind.check("rs", {"mix_ratio": 0.5}, {"model": None, "prompts": prompts_file, "mix": mix})
    with pytest.raises(ConfigError, match="decode_window"):
        kind.check("rs", {"decode_window": 0}, {"model": None, "prompts": prompts_file})
    with pytest.raises(ConfigError, match="stage rs: verifier: unknown reward 'nope'"):
        kind.check("rs", {"verifier": "nope"}, {"model": None, "prompts": prompts_file})
    with pytest.raises(ConfigError, match=r"stage rs: cold_start.newline: '\\n' is not encodable"):
        kind.check("rs", {"cold_start": {}}, {"model": TINY, "prompts": prompts_file})
    with pytest.raises(ConfigError, match="stage rs: judge: template: must contain {completion}"):
        kind.check("rs", {"judge": {"server": "127.0.0.1:1", "template": "{prompt}"}}, {"prompts": prompts_file})
