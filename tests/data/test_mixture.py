"""Task mixtures (data.mixture): weights, determinism, resume, domain / verifier tags, bad configs."""

import collections
import pathlib

import numpy as np
import pytest

from r1jax.config import ConfigError, from_dict, to_dict
from r1jax.data import PromptIterator, load_tokenizer
from r1jax.data.factory import DataConfig, MixtureEntry, make_dataset
from r1jax.data.mixture import domain_metrics, round_robin_slots, weighted_counts
from r1jax.rewards import RewardComponent, RewardConfig, RewardScorer, domain_verifier, get_reward

TINY_BASE = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"

# Every domain of DeepSeek-R1 §4.1 with a tiny task: math, logic, STEM, code, general.
ALL_DOMAINS = [
    {"task": "arithmetic", "weight": 0.3, "domain": "math"},
    {"task": "countdown", "weight": 0.2, "domain": "math", "difficulty": 3},
    {"task": "logic", "weight": 0.2, "difficulty": 4},
    {"task": "stem_choice", "weight": 0.1, "domain": "stem"},
    {"task": "code", "weight": 0.1, "difficulty": 2},
    {"task": "general", "weight": 0.1, "verifier": "none"},
]
VERIFIER = {"arithmetic": "math_accuracy", "countdown": "countdown", "logic": "exact_match",
            "stem_choice": "multiple_choice", "code": "code_tests", "general": "none"}


def mix(entries, **data):
    return from_dict(DataConfig, {"task": "mixture", "mixture": entries, **data})


def _answer(text: str) -> str:
    return f"<think>working</think> <answer>{text}</answer>"


def _wrong_answer(ex) -> str:
    return {"arithmetic": lambda: str(int(ex["answer"]) + 1),
            "countdown": lambda: "1+1",
            "logic": lambda: "zed",
            "stem_choice": lambda: "abcd"[("abcd".index(ex["answer"]) + 1) % 4],
            "code": lambda: "```python\ndef f(x):\n    return 12345\n```",
            "general": lambda: "anything"}[ex["task"]]()


# -------------------------------------------------------------------------------------------- config


def test_config_shape_round_trips_and_is_hashable():
    cfg = mix(ALL_DOMAINS, num_train=100, num_eval=4)
    assert cfg.mixture[2] == MixtureEntry(task="logic", weight=0.2, difficulty=4)
    assert cfg.mixture[0].domain_name == "math" and cfg.mixture[2].domain_name == "logic"
    assert from_dict(DataConfig, to_dict(cfg)) == cfg
    hash(cfg)


def test_weighted_counts_follow_the_weights_exactly():
    assert weighted_counts([0.5, 0.3, 0.2], 7) == [4, 2, 1]
    assert weighted_counts([1, 0, 1], 5) == [3, 0, 2]
    counts = weighted_counts([0.37, 0.21, 0.42], 1001)
    assert sum(counts) == 1001 and all(abs(c - w * 1001) < 1 for c, w in zip(counts, [0.37, 0.21, 0.42]))
    with pytest.raises(ValueError, match="not all 0"):
        weighted_counts([0.0, 0.0], 10)
    assert round_robin_slots([2, 1]).tolist() == [[0, 0], [1, 0], [0, 1]]


# -------------------------------------------------------------------------------------------- sampling


def test_proportions_follow_the_weights():
    """The epoch holds each entry's share exactly (largest remainder); the first 1200 draws of the
    shuffled iterator are within 0.05 of each weight (3.5 binomial standard deviations at p = 0.5)."""
    weights = {"arithmetic": 0.5, "countdown": 0.3, "logic": 0.2}
    cfg = mix([{"task": t, "weight": w, "difficulty": 3} for t, w in weights.items()], num_train=3000)
    train = make_dataset(cfg)
    assert len(train) == 3000
    assert collections.Counter(train.domains()) == {"arithmetic": 1500, "countdown": 900, "logic": 600}
    it = PromptIterator(train, batch_size=100, seed=cfg.seed)
    drawn = collections.Counter(ex["domain"] for _ in range(12) for ex in next(it))
    for task, w in weights.items():
        assert abs(drawn[task] / 1200 - w) < 0.05, (task, drawn)
    # ... and the order interleaves them: no long run of one domain at the start
    first = train.domains()[:30]
    assert len(set(first)) == 3


def test_same_seed_same_order_other_seed_other_order():
    def order(seed):
        ds = make_dataset(mix(ALL_DOMAINS, num_train=200, seed=seed))
        it = PromptIterator(ds, batch_size=16, seed=seed)
        return [(ex["domain"], ex["prompt"]) for _ in range(5) for ex in next(it)]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_iterator_resumes_mid_way_across_epochs():
    cfg = mix(ALL_DOMAINS[:3] + ALL_DOMAINS[5:], num_train=40)
    it = PromptIterator(make_dataset(cfg), batch_size=16, seed=cfg.seed)
    for _ in range(3):
        next(it)
    saved = it.state()
    expected = [[(ex["id"], ex["prompt"]) for ex in next(it)] for _ in range(4)]  # crosses epochs 1 -> 2
    resumed = PromptIterator(make_dataset(cfg), batch_size=16, seed=cfg.seed)
    resumed.restore(saved)
    assert [[(ex["id"], ex["prompt"]) for ex in next(resumed)] for _ in range(4)] == expected
    assert resumed.epoch == it.epoch >= 2


def test_weight_zero_entry_is_evaluated_not_trained():
    cfg = mix([{"task": "arithmetic", "weight": 1.0}, {"task": "logic", "weight": 0.0}], num_train=50, num_eval=3)
    assert set(make_dataset(cfg).domains()) == {"arithmetic"}
    assert make_dataset(cfg, "eval").domains() == ["arithmetic", "logic"] * 3


def test_eval_set_is_heldout_per_domain_and_round_robin():
    entries = [{"task": "arithmetic", "weight": 0.5, "num_eval": 4}, {"task": "logic", "weight": 0.5, "num_eval": 2},
               {"task": "stem_choice", "weight": 0.0, "num_eval": 3}]
    cfg = mix(entries, num_train=400)
    held = make_dataset(cfg, "eval")
    assert held.domains() == ["arithmetic", "logic", "stem_choice"] * 2 + ["arithmetic", "stem_choice", "arithmetic"]
    train_prompts = {ex["prompt"] for ex in make_dataset(cfg).examples()}
    assert all(ex["prompt"] not in train_prompts and ex["id"].startswith("mixture/eval/") for ex in held.examples())
    assert all(ex["source_id"].split("/")[1] == "eval" for ex in held.examples())


def test_entry_options_reach_the_task():
    cfg = mix([{"task": "arithmetic", "weight": 1.0, "difficulty": 4}, {"task": "countdown", "weight": 1.0},
               {"task": "logic", "weight": 1.0, "difficulty": 6, "num_train": 5}], num_train=60, difficulty=3)
    by = collections.defaultdict(list)
    for ex in make_dataset(cfg).examples():
        by[ex["task"]].append(ex)
    assert all(len(ex["prompt"]) == 9 for ex in by["arithmetic"])  # "dddd+dddd": the entry's difficulty
    assert all(len(ex["reference"]["reference"]["numbers"]) == 3 for ex in by["countdown"])  # data.difficulty
    assert all(ex["prompt"].count(" than ") == 5 for ex in by["logic"])
    assert len({ex["source_id"] for ex in by["logic"]}) == 5 and len(by["logic"]) == 20  # a pool of 5, cycled


# -------------------------------------------------------------------------------------------- tags and verifiers


def test_each_example_carries_domain_and_verifier():
    cfg = mix(ALL_DOMAINS, num_train=300, num_eval=3)
    domains = {e.get("domain") or e["task"] for e in ALL_DOMAINS}
    for split in ("train", "eval"):
        seen = set()
        for ex in make_dataset(cfg, split).examples():
            assert ex["domain"] in domains and ex["verifier"] == VERIFIER[ex["task"]]
            assert ex["reference"]["verifier"] == ex["verifier"] and "reference" in ex["reference"]
            seen.add(ex["task"])
        assert seen == set(VERIFIER), split


def test_every_domain_verifier_scores_reference_1_and_wrong_0():
    cfg = mix(ALL_DOMAINS, num_train=300, num_eval=2)
    held = make_dataset(cfg, "eval")
    for ex in held.examples()[: len(ALL_DOMAINS)]:  # one of each entry (round-robin)
        right, wrong = _answer(ex["answer"]), _answer(_wrong_answer(ex))
        if ex["verifier"] == "none":
            assert domain_verifier(ex["prompt"], right, ex["reference"]) == 0.0
            continue
        spec = get_reward(ex["verifier"])
        assert spec.accuracy and spec.kind == "rule"
        assert domain_verifier(ex["prompt"], right, ex["reference"]) == 1.0, ex
        assert domain_verifier(ex["prompt"], wrong, ex["reference"]) == 0.0, ex
        assert spec.fn(ex["prompt"], right, ex["reference"]["reference"]) == 1.0


def test_domain_verifier_rejects_bad_references():
    with pytest.raises(ValueError, match="must be \\{'verifier'"):
        domain_verifier("", _answer("3"), "3")
    with pytest.raises(ValueError, match="'format_strict' is not a rule-based accuracy reward"):
        domain_verifier("", _answer("3"), {"verifier": "format_strict", "reference": None})
    with pytest.raises(KeyError, match="unknown reward 'nope'"):
        domain_verifier("", _answer("3"), {"verifier": "nope", "reference": "3"})


def test_the_scorer_routes_each_example_to_its_verifier():
    """The RL path unchanged: one domain_verifier component scores a mixed batch."""
    cfg = mix([e for e in ALL_DOMAINS if e["task"] != "code"], num_train=60)
    examples = make_dataset(cfg).examples()[:20]
    scorer = RewardScorer(RewardConfig(components=(RewardComponent("domain_verifier", 1.0),), num_workers=0))
    out = scorer.score([e["prompt"] for e in examples] * 2,
                       [_answer(e["answer"]) for e in examples] + [_answer(_wrong_answer(e)) for e in examples],
                       [e["reference"] for e in examples] * 2)
    expected = [0.0 if e["verifier"] == "none" else 1.0 for e in examples]
    assert out.total.tolist() == expected + [0.0] * 20 and not any(out.num_errors.values())


def test_tiny_tokenizer_encodes_the_tiny_domains_without_unknowns():
    """Code answers need ':' and newlines; Countdown prompts start with a capital 'U' ("Use 3 5 to make 8")."""
    tok = load_tokenizer(str(TINY_BASE))
    cfg = mix([e for e in ALL_DOMAINS if e["task"] not in ("code", "countdown")], num_train=100)
    unk = tok.token_to_id("<unk>")
    for ex in make_dataset(cfg).examples():
        ids = tok.encode(ex["prompt"] + ex["answer"])
        assert unk is not None and unk not in ids and tok.decode(ids) == ex["prompt"] + ex["answer"]


# -------------------------------------------------------------------------------------------- metrics


def test_domain_metrics():
    domains = ["math", "logic", "math", "general"]
    correct = np.array([[1, 0], [1, 1], [0, 0], [0, 0]], bool)
    rewards = np.array([[2.0, 1.0], [2.0, 2.0], [0.0, 1.0], [0.5, 0.5]])
    m = domain_metrics(domains, correct, rewards)
    assert m == {"accuracy/general": 0.0, "reward/general": 0.5, "accuracy/logic": 1.0, "reward/logic": 2.0,
                 "accuracy/math": 0.25, "reward/math": 1.0}
    m = domain_metrics(domains, correct, rewards, verifiers=["a", "b", "a", "none"], prefixes=("acc", "rew"))
    assert "acc/general" not in m and m["rew/general"] == 0.5 and m["acc/math"] == 0.25
    assert domain_metrics(domains, None, rewards[:, 0]) == {"reward/general": 0.5, "reward/logic": 2.0,
                                                            "reward/math": 1.0}
    with pytest.raises(ValueError, match="first dimension must be the 4 prompts"):
        domain_metrics(domains, correct.reshape(-1), rewards)


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("data, message", [
    ({"mixture": [{"task": "arithmetic", "weight": 1.0}, {"task": "logic", "weight": -0.5}]},
     r"^mixture\[1\]\.weight: -0\.5 is out of range; must be >= 0\.0$"),
    ({"mixture": [{"task": "arithmetic", "weight": 0.0}, {"task": "logic", "weight": 0}]},
     r"^mixture: the weights sum to 0; give at least one entry a weight > 0$"),
    ({"mixture": [{"task": "algebra", "weight": 1.0}]},
     r"^mixture\[0\]\.task: 'algebra' is not a registered task; known: .*logic"),
    ({"mixture": [{"task": "mixture", "weight": 1.0}]}, r"mixture\[0\]\.task: 'mixture' is not a registered task"),
    ({"mixture": [{"task": "arithmetic"}, {"task": "general", "weight": 0.5}]},
     r"mixture\[1\]\.verifier: task 'general' declares no verifier; .*or none for prompts"),
    ({"mixture": [{"task": "logic", "verifier": "none"}]},
     r"mixture\[0\]\.verifier: none would leave task 'logic' unchecked; its verifier is exact_match"),
    ({"mixture": [{"task": "arithmetic", "verifier": "multiple_choice"}]},
     r"mixture\[0\]\.verifier: 'multiple_choice' cannot score the references of task 'arithmetic'"),
    ({"mixture": [{"task": "arithmetic", "verifier": "format_strict"}]},
     r"mixture\[0\]\.verifier: 'format_strict' is not a rule-based accuracy reward"),
    ({"mixture": [{"task": "arithmetic", "verifier": "nope"}]}, r"mixture\[0\]\.verifier: unknown reward 'nope'"),
    ({"mixture": [{"task": "jsonl", "verifier": "math_accuracy"}]},
     r"mixture\[0\]\.train_path: required for task 'jsonl'"),
    ({"mixture": [{"task": "countdown", "difficulty": 1}]},
     r"mixture\[0\]\.difficulty: countdown needs at least 2 numbers"),
    ({"mixture": [{"task": "arithmetic", "wieght": 1.0}]}, r"unknown key 'mixture\[0\]\.wieght' \(did you mean"),
    ({"mixture": [{"weight": 1.0}]}, r"missing required key 'mixture\[0\]\.task'"),
    ({"mixture": [{"task": "logic"}, {"task": "logic", "weight": 3.0}]}, r"mixture\[1\]: repeats mixture\[0\]"),
    ({"mixture": [{"task": "logic", "domain": "lo gic"}]}, r"^mixture\[0\]: domain: 'lo gic' must be"),
    ({"mixture": []}, r"mixture: task 'mixture' needs at least one entry"),
    ({"task": "arithmetic", "mixture": [{"task": "logic"}]}, r"mixture: set task: mixture to train on it"),
])
def test_bad_mixtures_fail_at_config_time_naming_the_field(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(DataConfig, {"task": "mixture", **data})
    assert "\n" not in str(info.value)


def test_hand_built_mixtures_are_checked_too():
    bad = DataConfig(task="mixture", mixture=(MixtureEntry("arithmetic", weight=-1.0),))
    with pytest.raises(ConfigError, match=r"mixture\[0\]\.weight: -1\.0 is out of range"):
        make_dataset(bad)


def test_experiment_config_names_the_data_key_and_the_reward():
    from r1jax.train.config import ExperimentConfig  # imports JAX: only here

    base = {"model": {"tokenizer": str(TINY_BASE)}, "data": {"task": "mixture", "mixture": ALL_DOMAINS[:3]}}
    cfg = from_dict(ExperimentConfig, {**base, "reward": {"components": [{"name": "domain_verifier"}]}})
    assert cfg.data.mixture[2].task == "logic"
    with pytest.raises(ConfigError, match=r"^data\.mixture\[1\]\.weight: -1\.0 is out of range"):
        from_dict(ExperimentConfig, {**base, "data": {"task": "mixture", "mixture": [
            {"task": "arithmetic"}, {"task": "logic", "weight": -1}]}})
    with pytest.raises(ConfigError, match="cannot score the references of data.task='mixture'.*domain_verifier"):
        from_dict(ExperimentConfig, {**base, "reward": {"components": [{"name": "math_accuracy"}]}})


def test_the_tiny_mixture_config_validates_and_fits_the_tiny_model():
    import json

    from r1jax.models.hf import config_from_hf
    from r1jax.train.components import check_prompt_lengths
    from r1jax.train.config import load_experiment

    root = TINY_BASE.parents[2]
    cfg = load_experiment(root / "configs" / "r1_mixture_tiny.yaml", [f"model.path={TINY_BASE}"])
    model_cfg = config_from_hf(json.loads((TINY_BASE / "config.json").read_text()))
    train, held = make_dataset(cfg.data), make_dataset(cfg.data, "eval")
    longest = check_prompt_lengths(cfg, load_tokenizer(str(TINY_BASE)), model_cfg, train, held)
    assert longest + cfg.rollout.max_new_tokens <= model_cfg.max_position_embeddings
    assert len(held) == cfg.eval.num_prompts and set(held.domains()) == {"math", "logic", "stem", "general"}
    unk = load_tokenizer(str(TINY_BASE)).token_to_id("<unk>")
    texts = [ex["prompt"] + ex["answer"] for ex in train.examples()[:500] + held.examples()]
    assert not any(unk in ids for ids in load_tokenizer(str(TINY_BASE)).encode_batch(texts))
