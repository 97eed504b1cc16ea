"""The paper-scale pipeline config validates (every stage's kind check passes) once its model and data paths
exist, and carries the paper's RL hyper-parameters; the tiny one validates as shipped."""

import json
import pathlib

from r1jax.data.preferences import helpfulness_pairs, safety_points
from r1jax.pipeline.graph import load_pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "r1jax" / "assets" / "tiny_base"


def test_paper_pipeline_validates_with_local_stand_ins(tmp_path):
    # its data files (/data/r1/...) stand in as small local files of the same fields
    rows = {"reasoning_prompts": [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(1000)],
            "general_prompts": [{"question": f"say hello {a}", "answer": f"hello {a}"} for a in range(100)],
            "helpfulness_pairs": helpfulness_pairs(20), "safety_labels": safety_points(20)}
    for name, items in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    config = tmp_path / "paper.yaml"
    config.write_text((REPO / "configs" / "r1_pipeline_paper.yaml").read_text().replace("/data/r1/", f"{tmp_path}/"))
    cfg = load_pipeline(config, [
        f"out_dir={tmp_path / 'out'}",
        *(f"stages.{s}.inputs.model={BASE}" for s in ("zero", "cold_start", "rs_sft", "helpful_rm", "safety_rm")),
        f"stages.distill_qwen7b.inputs.student={BASE}",
    ])
    stages = {s.name: s for s in cfg.stages}
    assert list(stages) == ["prompts", "zero", "cold_start_data", "cold_start", "reasoning_rl", "rs_data", "rs_sft",
                            "helpful_rm", "safety_rm", "all_scenario", "distill_qwen7b"]
    rl = stages["zero"].config
    assert rl["optim"]["lr"] == 3e-6 and rl["algo"]["kl_coef"] == 0.001 and rl["algo"]["ref_update_every"] == 400
    assert rl["rollout"]["group_size"] == 16 and rl["rollout"]["max_new_tokens"] == 32768
    final = stages["all_scenario"].config
    assert final["run"]["steps"] == 1700 and final["rollout"]["temperature"] == 0.7
    assert [c.get("last_n_steps") for c in final["reward"]["components"]] == [None, None, None, 400, 400]
    assert stages["all_scenario"].depends_on() == ("rs_sft", "helpful_rm", "safety_rm")
    assert not (tmp_path / "out").exists()  # validating wrote nothing


def test_tiny_pipeline_validates():
    cfg = load_pipeline(REPO / "configs" / "r1_pipeline_tiny.yaml")
    assert [s.label for s in cfg.stages if s.kind in ("rl", "sft", "distill")] == ["Zero", "Dev1", "Dev2", "Dev3",
                                                                                   "R1", "student"]
    assert [e.name for e in cfg.eval.extra] == ["domains", "general"] and cfg.eval.language_reward
