"""The paper-scale pipeline config validates (every stage's kind check passes) once its model and data paths
exist, and carries the paper's RL hyper-parameters; the tiny one validates as shipped."""

import json
import pathlib

from r1jax.pipeline.graph import load_pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "r1jax" / "assets" / "tiny_base"


def test_paper_pipeline_validates_with_local_stand_ins(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{a}", "answer": str(2 * a)}) + "\n" for a in range(1000)))
    cfg = load_pipeline(REPO / "configs" / "r1_pipeline_paper.yaml", [
        f"out_dir={tmp_path / 'out'}",
        *(f"stages.{s}.inputs.model={BASE}" for s in ("zero", "cold_start", "rs_sft")),
        f"stages.distill_qwen7b.inputs.student={BASE}",
        *(f"stages.{s}.config.data.train_path={data}" for s in ("prompts", "zero", "reasoning_rl")),
        f"eval.config.data.train_path={data}",
    ])
    stages = {s.name: s for s in cfg.stages}
    assert list(stages) == ["prompts", "zero", "cold_start_data", "cold_start", "reasoning_rl", "rs_data", "rs_sft",
                            "distill_qwen7b"]
    rl = stages["zero"].config
    assert rl["optim"]["lr"] == 3e-6 and rl["algo"]["kl_coef"] == 0.001 and rl["algo"]["ref_update_every"] == 400
    assert rl["rollout"]["group_size"] == 16 and rl["rollout"]["max_new_tokens"] == 32768
    assert not (tmp_path / "out").exists()  # validating wrote nothing


def test_tiny_pipeline_validates():
    cfg = load_pipeline(REPO / "configs" / "r1_pipeline_tiny.yaml")
    assert [s.label for s in cfg.stages if s.kind in ("rl", "sft", "distill")] == ["Zero", "Dev1", "Dev2", "Dev3",
                                                                                   "student"]
