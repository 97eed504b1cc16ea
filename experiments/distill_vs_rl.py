"""Distillation vs RL for a small model (DeepSeek-R1, arXiv 2501.12948 v2, §6 / Table 6): the same small
student trained (a) by distillation from the R1 pipeline's final model and (b) by RL (GRPO, the R1-Zero rule
rewards) from the same starting point, on the same prompts, with the same number of optimizer steps.

The student starts from ``r1jax/assets/tiny_student_base`` (0.10M parameters, pre-trained by
``experiments/pretrain_base.py --size small`` on the same noisy corpus as the demo's base; the paper's students
are pre-trained Qwen / Llama bases). The teacher is the pipeline's Dev3 model (``make pipeline`` first) or any HF
directory given with ``--teacher``. Per seed this script runs a two-stage pipeline (``distill`` and ``rl``, both
from the student base) through :mod:`r1jax.pipeline`, so an interrupted run resumes and a finished seed is
skipped; the pipeline's held-out evaluation (pass@1, cons@4, format rate) scores both students.

Equal optimizer steps, not equal compute: a distillation step is one SFT mini-batch of ``--sft-batch``
teacher samples; an RL step samples ``prompts_per_step × group_size`` completions from the student and takes one
optimizer step on them. The teacher's sampling (once per seed) is the distillation side's extra cost.

Writes ``OUT/results.json`` (per seed and summary with 95% t-intervals over seeds) and ``OUT/distill_vs_rl.png``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from r1jax.eval.stats import t_interval  # noqa: E402
from r1jax.pipeline.graph import parse_pipeline  # noqa: E402
from r1jax.pipeline.runner import format_table, run_pipeline, table_rows  # noqa: E402

STUDENT = REPO / "r1jax" / "assets" / "tiny_student_base"
TASK = {"task": "arithmetic", "difficulty": 2, "operations": ["+"], "template": "plain", "heldout_fraction": 0.1,
        "num_eval": 128}
RULE_REWARDS = {"num_workers": 2, "components": [{"name": "math_accuracy", "weight": 1.0},
                                                 {"name": "format_strict", "weight": 1.0}]}
ARMS = ("distill", "rl")


def pipeline_config(out: pathlib.Path, seed: int, teacher: pathlib.Path, steps: int, sft_batch: int) -> dict:
    """The two-stage pipeline of one seed: both students start from the student base."""
    return {
        "out_dir": str(out / f"seed{seed}"), "seed": seed,
        "eval": {"format_reward": "format_strict",
                 "config": {"data": TASK, "reward": RULE_REWARDS, "rollout": {"max_new_tokens": 64},
                            "eval": {"num_prompts": 128, "num_samples": 4, "ks": [1, 4], "temperature": 1.0}}},
        "stages": [
            {"name": "prompts", "kind": "prompts", "config": {"data": TASK, "split": "train", "limit": 512}},
            {"name": "distill", "kind": "distill", "label": "distilled",
             "inputs": {"model": str(teacher), "prompts": "stages.prompts.data", "student": str(STUDENT)},
             "config": {
                 "sample": {"n": 4, "temperature": 1.0, "max_new_tokens": 64, "template": "plain",
                            "drop_truncated": True, "verifier": "math_accuracy", "format_reward": "format_strict",
                            "language_reward": "language_consistency_en",
                            "dedupe": False, "k_per_prompt": 4},
                 "sft": {"max_steps": steps, "batch_size": sft_batch, "max_len": 96, "lr": 1e-3, "warmup_steps": 5,
                         "checkpoint_every": 20, "heldout_fraction": 0.05,
                         "format_eval": {"reward": "format_strict", "num_prompts": 16, "max_new_tokens": 64}}}},
            {"name": "rl", "kind": "rl", "label": "RL",
             "inputs": {"model": str(STUDENT)},
             "config": {"run": {"steps": steps, "progress": False, "tensorboard": False},
                        "data": TASK, "reward": RULE_REWARDS,
                        "algo": {"kl_coef": 0.001, "num_minibatches": 1},  # one optimizer step per RL step
                        "optim": {"lr": 1e-3, "grad_clip": 1.0},
                        "rollout": {"prompts_per_step": 16, "group_size": 8, "max_new_tokens": 64},
                        "eval": {"num_prompts": 16, "num_samples": 1, "ks": [1]},
                        "checkpoint": {"every": 20, "keep": 2}}},
        ],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=str(REPO / "runs" / "r1_pipeline_tiny" / "stages" / "rs_sft" / "model"),
                    help="teacher HF directory (default: Dev3 of `make pipeline`)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps of each student")
    ap.add_argument("--sft-batch", type=int, default=16)
    ap.add_argument("--out", default="runs/distill_vs_rl")
    args = ap.parse_args(argv)
    teacher, out = pathlib.Path(args.teacher), pathlib.Path(args.out)
    if not (teacher / "config.json").is_file():
        print(f"distill_vs_rl: --teacher {teacher} is not an HF model directory (run `make pipeline` first)",
              file=sys.stderr)
        return 2
    if not (STUDENT / "config.json").is_file():
        print(f"distill_vs_rl: the student base {STUDENT} is missing", file=sys.stderr)
        return 2

    t0, per_seed = time.time(), {}
    for seed in args.seeds:
        manifest = run_pipeline(parse_pipeline(pipeline_config(out, seed, teacher, args.steps, args.sft_batch)))
        print(f"seed {seed} ({(time.time() - t0) / 60:.1f} min)\n{format_table(manifest)}\n", flush=True)
        per_seed[seed] = {r["stage"]: r["eval"] for r in table_rows(manifest) if r["stage"] in ARMS}

    summary = {}
    for arm in ARMS:
        summary[arm] = {}
        for key in ("pass@1", "cons@k", "format_rate"):
            vals = [per_seed[s][arm][key] for s in args.seeds]
            ci = t_interval(vals) if len(vals) > 1 else None
            summary[arm][key] = {"mean": float(np.mean(vals)), "values": vals,
                                 "ci95": None if ci is None else [ci.low, ci.high]}
    diffs = [per_seed[s]["distill"]["pass@1"] - per_seed[s]["rl"]["pass@1"] for s in args.seeds]
    paired = t_interval(diffs) if len(diffs) > 1 else None
    summary["distill_minus_rl_pass@1"] = {"mean": float(np.mean(diffs)), "values": diffs,
                                          "ci95": None if paired is None else [paired.low, paired.high],
                                          "distill_ahead_in": int(sum(d > 0 for d in diffs))}
    result = {"teacher": str(teacher), "student_base": str(STUDENT), "steps": args.steps, "sft_batch": args.sft_batch,
              "seeds": args.seeds, "per_seed": per_seed, "summary": summary,
              "minutes": round((time.time() - t0) / 60, 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"{'student':12s}{'pass@1':>10s}   95% CI over {len(args.seeds)} seeds        {'cons@4':>8s}{'format':>8s}")
    for arm in ARMS:
        s = summary[arm]
        ci = s["pass@1"]["ci95"]
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        print(f"{arm:12s}{s['pass@1']['mean']:>10.3f}   {ci_text:26s}{s['cons@k']['mean']:>8.3f}"
              f"{s['format_rate']['mean']:>8.3f}")
    d = summary["distill_minus_rl_pass@1"]
    ci_text = f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d["ci95"] else "-"
    print(f"\ndistill - rl, pass@1 paired by seed: {d['mean']:+.3f} {ci_text}; distillation ahead in "
          f"{d['distill_ahead_in']} of {len(args.seeds)} seeds")
    png = plot(summary, args.seeds, out / "distill_vs_rl.png")
    print(f"\nresults: {out / 'results.json'}" + (f"  plot: {png}" if png else ""))
    return 0


def plot(summary: dict, seeds, path: pathlib.Path) -> pathlib.Path | None:
    """Bars of the mean held-out pass@1 / cons@4 / format rate per student, 95% intervals, seeds as dots."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    keys = ("pass@1", "cons@k", "format_rate")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.38
    for i, arm in enumerate(ARMS):
        x = np.arange(len(keys)) + (i - 0.5) * width
        means = [summary[arm][k]["mean"] for k in keys]
        errs = [[m - (summary[arm][k]["ci95"] or [m, m])[0] for k, m in zip(keys, means)],
                [(summary[arm][k]["ci95"] or [m, m])[1] - m for k, m in zip(keys, means)]]
        ax.bar(x, means, width, yerr=errs, capsize=3, label=arm, alpha=0.8)
        for j, k in enumerate(keys):
            ax.scatter([x[j]] * len(seeds), summary[arm][k]["values"], color="k", s=8, zorder=3)
    ax.set_xticks(np.arange(len(keys)), ["pass@1", "cons@4", "format rate"])
    ax.set_ylim(0, 1.05)
    ax.set_title("tiny student: distillation vs RL (equal optimizer steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
