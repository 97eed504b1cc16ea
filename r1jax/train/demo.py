"""`r1jax demo` (`make demo`): a tiny R1-Zero run on CPU, with a before/after table and a plot.

GRPO starts from the tiny base model shipped in ``r1jax/assets/tiny_base`` (remade by
``experiments/pretrain_base.py``) and trains with the R1-Zero rule rewards (accuracy + format)
on synthetic two-digit additions. Held-out problems are evaluated before and after.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from typing import Sequence

from r1jax.config import ConfigError, load_config

__all__ = ["main", "plot_run", "format_table"]

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent
DEMO_CONFIG = REPO_DIR / "configs" / "r1_zero_tiny.yaml"
BASE_MODEL = PACKAGE_DIR / "assets" / "tiny_base"

_ROWS = (
    ("accuracy (sampled, held-out)", "eval/accuracy", "{:.3f}"),
    ("format reward (strict)", "eval/format_strict", "{:.3f}"),
    ("total reward", "eval/reward", "{:.3f}"),
    ("response length (tokens)", "eval/response_length", "{:.1f}"),
)


def format_table(before: dict, after: dict) -> str:
    """The before/after table printed at the end of the demo."""
    lines = [f"{'':32s}{'before':>10s}{'after':>10s}{'change':>10s}"]
    for label, key, fmt in _ROWS:
        if key in before and key in after:
            b, a = before[key], after[key]
            lines.append(f"{label:32s}{fmt.format(b):>10s}{fmt.format(a):>10s}{a - b:>+10.3f}")
    return "\n".join(lines)


def plot_run(run_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path | None:
    """A PNG of reward, accuracy, response length and KL per step from ``metrics.jsonl``."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'r1jax[plot]')", file=sys.stderr)
        return None
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    steps = [r["step"] for r in records]
    panels = (("reward/total", "total reward"), ("accuracy", "accuracy (training samples)"),
              ("response_length/mean", "response length"), ("kl_ref", "KL to reference"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, [r.get(key, float("nan")) for r in records], lw=1.5)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.suptitle("r1jax: tiny R1-Zero (GRPO, accuracy + format rewards) on CPU")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(overrides: Sequence[str] = ()) -> int:
    """Runs the demo; extra ``key=value`` overrides apply to ``configs/r1_zero_tiny.yaml``."""
    from r1jax.train.config import ExperimentConfig  # noqa: PLC0415
    from r1jax.train.loop import Trainer  # noqa: PLC0415
    from r1jax.train.run_dir import move_aside  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not DEMO_CONFIG.is_file():
        raise ConfigError(f"demo config not found: {DEMO_CONFIG} (run the demo from a clone of the repository)")
    cfg = load_config(ExperimentConfig, DEMO_CONFIG, [f"model.path={BASE_MODEL}", *overrides])
    run_dir = pathlib.Path(cfg.run.out_dir) / cfg.run.name
    if run_dir.exists():  # the demo always starts fresh; an earlier demo run is kept, not deleted
        print(f"r1jax demo: moved the previous demo run {run_dir} aside to {move_aside(run_dir)}")

    t0 = time.time()
    print(f"r1jax demo: GRPO on {cfg.data.task} (difficulty {cfg.data.difficulty}) from {BASE_MODEL.name}, "
          f"{cfg.run.steps} steps × {cfg.rollout.prompts_per_step} prompts × {cfg.rollout.group_size} samples")
    trainer = Trainer(cfg, run_dir)
    before = trainer.evaluate()
    trainer.run()
    after = trainer.evaluate()
    trainer.close()
    minutes = (time.time() - t0) / 60

    print()
    print(format_table(before, after))
    (run_dir / "before_after.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
    png = plot_run(run_dir, run_dir / "curves.png")
    print(f"\nrun directory: {run_dir}  ({minutes:.1f} min)")
    if png:
        print(f"curves: {png}")
    return 0
