"""The ``distill`` stage kind: the tiny teacher's kept samples train a smaller student from scratch."""

import json
import pathlib

import pytest

from r1jax.config import ConfigError
from r1jax.data.tokenizer import load_tokenizer
from r1jax.models import load_pretrained
from r1jax.pipeline.datasets import read_jsonl
from r1jax.pipeline.distill import run_distill  # noqa: F401 - registers the kind
from r1jax.pipeline.kinds import STAGE_KINDS, StageContext

TINY = pathlib.Path(__file__).resolve().parents[2] / "r1jax" / "assets" / "tiny_base"
STUDENT = dict(architecture="llama", hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
               num_kv_heads=2, max_position_embeddings=96, tie_word_embeddings=True)
CONFIG = {
    "sample": dict(n=4, temperature=0.8, max_new_tokens=40, seed=5, max_batch_rows=8,
                   language_reward="language_consistency_en"),
    "sft": dict(model={"config": STUDENT}, max_steps=3, batch_size=4, max_len=96, heldout_fraction=0.0,
                format_eval={"num_prompts": 2, "max_new_tokens": 8}),
}


def test_distill_trains_a_smaller_student_on_the_teachers_kept_samples(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{b}", "reference": str(a + b)}) + "\n"
                               for a, b in [(12, 30), (45, 21), (33, 14), (20, 20)]))
    kind = STAGE_KINDS["distill"]()
    inputs = {"model": TINY, "prompts": prompts}
    kind.check("distill_small", CONFIG, inputs)
    out = tmp_path / "stage"
    out.mkdir()
    result = kind.run(StageContext("distill_small", CONFIG, inputs, out, seed=0))
    assert set(result.outputs) == set(kind.outputs)
    m = result.metrics
    data = read_jsonl(result.outputs["data"])
    assert m["sample/candidates"] == 16 and len(data) == m["sample/written"] >= 1
    assert m["sft/train_examples"] == len(data) and m["sft/steps"] == 3
    student, cfg = load_pretrained(result.outputs["model"])
    _, teacher_cfg = load_pretrained(TINY)
    assert cfg.hidden_size == 32 < teacher_cfg.hidden_size and cfg.vocab_size == teacher_cfg.vocab_size
    assert (load_tokenizer(result.outputs["model"]).encode("<think> 1+2")
            == load_tokenizer(TINY).encode("<think> 1+2"))  # the teacher's tokenizer


def test_distill_config_errors_name_the_stage_and_half(tmp_path):
    kind = STAGE_KINDS["distill"]()
    with pytest.raises(ConfigError, match="stage d: sample: n: 0 is out of range"):
        kind.check("d", {"sample": {"n": 0}, "sft": CONFIG["sft"]}, {"model": None, "prompts": None})
    with pytest.raises(ConfigError, match="stage d: sft: no student"):
        kind.check("d", {"sample": {}, "sft": {}}, {"model": None, "prompts": None})
    with pytest.raises(ConfigError, match="stage d: sft: unknown key 'epoch'"):
        kind.check("d", {"sample": {}, "sft": {"epoch": 2}}, {"model": None, "prompts": None})
    with pytest.raises(ConfigError, match="stage d: unknown key 'sampling'"):
        kind.check("d", {"sampling": {}}, {"model": None, "prompts": None})
