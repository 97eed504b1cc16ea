"""Runs a pipeline: each stage is skipped, resumed, or (re-)run, as its manifest entry says.

For each stage, in order, the runner computes a *fingerprint*: SHA-256 of the stage's kind, resolved
config, the pipeline seed, and the identity of each input (a path's content digest; for a reference
``stages.<s>.<o>``, the digest that stage ``s`` recorded for output ``o`` together with ``s``'s own
fingerprint, so a change anywhere upstream changes every fingerprint downstream of it). Then:

* same fingerprint, status ``done``, outputs still on disk with their recorded digests → **skipped**;
* same fingerprint, status ``running`` / ``failed`` / ``pending`` → **resumed**: the kind's ``run`` is
  called again on the same stage directory and continues from its own last checkpoint;
* otherwise (new stage, changed config / inputs / seed / kind, or outputs changed since it finished)
  → **re-run** from scratch: an existing stage directory is first moved aside to
  ``stages/<name>.old-N`` (:func:`r1jax.train.run_dir.move_aside`; logged and recorded in the
  manifest under ``moved_aside``), never deleted.

The manifest is written (atomically) before a stage starts (``running``) and when it ends (``done`` /
``failed``), so a SIGKILL at any point loses at most the work since the stage's last checkpoint.

After each stage that outputs a ``model``, the pipeline's ``eval`` section evaluates it on held-out
prompts (:func:`r1jax.train.evaluation.evaluate_policy`): pass@1 with its 95% interval, cons@k, format
rate and mean response length (and, with ``eval.language_reward``, the mean language consistency),
stored in the manifest (re-evaluated only when the model or the eval section changes). Each
``eval.extra`` evaluation adds its own columns (per-domain accuracy, reward-model scores on general
prompts); one that needs a reward model a later stage makes runs in the runner's final pass. At the end the runner prints the table of those numbers, one row per model, and writes
``table.txt`` and ``stages.png`` (with matplotlib) into the pipeline directory.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import pathlib
import sys
import time
from typing import Any, Mapping, Sequence

from r1jax.config import ConfigError, from_dict, read_config
from r1jax.pipeline.graph import EvalSection, ExtraEval, InputRef, Pipeline, Stage, apply_pipeline_overrides, parse_pipeline
from r1jax.pipeline.kinds import STAGE_KINDS, StageContext, StageResult
from r1jax.pipeline.manifest import digest_data, digest_path, read_manifest, write_manifest

__all__ = ["run_pipeline", "stage_fingerprint", "eval_experiment", "extra_eval_experiment", "evaluate_model", "format_table",
           "table_rows", "plot_stages", "pipeline_from_cli", "stage_from_cli", "STAGE_VERBS"]

log = logging.getLogger("r1jax.pipeline")

STAGE_VERBS = ("sft", "sample", "rl", "distill", "rm")
"""Stage kinds that are also ``r1jax`` verbs (a one-stage pipeline)."""

STAGES_DIR = "stages"


# ------------------------------------------------------------------------------------------ evaluation


def eval_experiment(section: EvalSection, model_dir: str | pathlib.Path | None):
    """The experiment config that evaluates ``model_dir`` with the pipeline's eval section.

    With ``model_dir=None`` (the up-front check, before any stage made a model) every key is
    checked except ``model.path``: the current directory stands in for the tokenizer.

    Raises:
      ConfigError: naming ``eval.config.<key>``; an eval without an accuracy reward, or whose
        ``eval.format_reward`` is not one of its reward components.
    """
    from r1jax.rewards import get_reward  # noqa: PLC0415
    from r1jax.train.config import ExperimentConfig, import_user_modules  # noqa: PLC0415

    data = copy.deepcopy(dict(section.config))
    run = data.get("run") or {}
    if isinstance(run, Mapping):
        import_user_modules(run.get("imports") or (), key="eval.config.run.imports")
    data["model"] = {"path": str(model_dir)} if model_dir is not None else {"tokenizer": "."}
    try:
        cfg = from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"eval.config: {e}") from None
    names = [c.name for c in cfg.reward.components]
    if not any(get_reward(n).accuracy for n in names):
        raise ConfigError(f"eval.config.reward.components: no accuracy reward among {', '.join(names)}: "
                          "pass@1 and cons@k need one (e.g. math_accuracy)")
    for key, name in (("format_reward", section.format_reward), ("language_reward", section.language_reward)):
        if name is not None and name not in names:
            raise ConfigError(f"eval.{key}: {name!r} is not one of the eval's reward components ({', '.join(names)})")
    return cfg


def extra_eval_experiment(extra: ExtraEval, model_dir: str | pathlib.Path | None,
                          reward_models: Mapping[str, str | pathlib.Path | None]):
    """The experiment config of the extra evaluation ``extra`` of ``model_dir`` (None: the up-front
    check), its external components scored by ``reward_models`` (None: made by a stage yet to run).

    Raises:
      ConfigError: naming ``eval.extra[<name>]...``: a bad config, a ``reward_models`` key that is no
        external component of it, or a component's ``model`` given twice.
    """
    from r1jax.pipeline.rl import external_components, set_reward_models  # noqa: PLC0415
    from r1jax.train.config import ExperimentConfig  # noqa: PLC0415

    where = f"eval.extra[{extra.name}]"
    data = copy.deepcopy(dict(extra.config))
    external = external_components(data)
    for name in reward_models:
        if name not in external:
            raise ConfigError(f"{where}.reward_models.{name}: not an external reward component of its config "
                              f"(external components: {', '.join(external) or '(none)'})")
    set_reward_models(data, reward_models, where=f"{where}.config", source="reward_models")
    data["model"] = {"path": str(model_dir)} if model_dir is not None else {"tokenizer": "."}
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where}.config: {e}") from None


def evaluate_model(section: EvalSection, model_dir: pathlib.Path, work_dir: pathlib.Path) -> dict[str, Any]:
    """Held-out evaluation of the HF model in ``model_dir``.

    Returns:
      ``{"metrics": evaluate_policy's metrics, "summary": {pass@1, pass@1_ci, cons@k, k, format_rate,
      response_length}}``: pass@1 is the mean share of correct samples per problem; ``pass@1_ci`` its
      95% Student-t interval over the problems, ``[low, high]`` (None with fewer than 2 problems);
      cons@k is the majority vote over the ``k = max(eval.ks)`` samples; the format rate is the mean
      of the reward component ``eval.format_reward``; lengths are in tokens.
    """
    cfg = eval_experiment(section, model_dir)
    metrics = _evaluate(cfg, work_dir)
    k = max(cfg.eval.ks)
    ci = (metrics.get("eval/accuracy/ci_low"), metrics.get("eval/accuracy/ci_high"))
    summary = {"pass@1": metrics["eval/accuracy"], "pass@1_ci": None if None in ci else list(ci),
               "cons@k": metrics[f"eval/cons@{k}"], "k": k,
               "format_rate": metrics[f"eval/{section.format_reward}"],
               "response_length": metrics["eval/response_length"]}
    if section.language_reward is not None:
        summary["language"] = metrics[f"eval/{section.language_reward}"]
    return {"metrics": metrics, "summary": summary}


def _evaluate(cfg, work_dir: pathlib.Path) -> dict[str, float]:
    """:func:`~r1jax.train.evaluation.evaluate_policy` of ``cfg.model.path`` on ``cfg``'s held-out set."""
    from r1jax.train.components import build  # noqa: PLC0415
    from r1jax.train.evaluation import evaluate_policy  # noqa: PLC0415
    from r1jax.train.rollout import make_sampler  # noqa: PLC0415

    c = build(cfg, train=False)
    sampler = make_sampler(cfg.rollout, c.model_cfg, work_dir)
    try:
        return evaluate_policy(cfg, c.tokenizer, sampler, c.scorer, c.eval_set, c.params, step=0)
    finally:
        sampler.close()
        c.close()


def evaluate_extra(extra: ExtraEval, model_dir: pathlib.Path, work_dir: pathlib.Path,
                   reward_models: Mapping[str, pathlib.Path]) -> dict[str, Any]:
    """The extra evaluation ``extra`` of the model in ``model_dir``: ``{"metrics", "summary": {column:
    value}, "intervals": {column: [low, high]}}`` (a column whose metric the evaluation did not produce
    is None; intervals: 95% Student-t over the problems, for the columns that are reward components)."""
    metrics = _evaluate(extra_eval_experiment(extra, model_dir, reward_models), work_dir)
    summary = {col: metrics.get(f"eval/{m}") for col, m in extra.columns.items()}
    intervals = {col: [metrics[f"eval/{m}/ci_low"], metrics[f"eval/{m}/ci_high"]] for col, m in extra.columns.items()
                 if f"eval/{m}/ci_low" in metrics}
    return {"metrics": metrics, "summary": summary, "intervals": intervals}


# ------------------------------------------------------------------------------------------ one stage


def _input_records(stage: Stage, pipeline_dir: pathlib.Path, manifest: Mapping[str, Any]) -> dict[str, dict]:
    """Each input's path, digest and (for a reference) source stage and its fingerprint."""
    records = {}
    for name, value in stage.inputs.items():
        if isinstance(value, InputRef):
            up = manifest["stages"][value.stage]
            out = up["outputs"][value.output]
            records[name] = {"ref": str(value), "path": str(pipeline_dir.resolve() / out["path"]),
                             "digest": out["digest"], "stage_fingerprint": up["fingerprint"]}
        else:
            records[name] = {"path": str(value), "digest": digest_path(value)}
    return records


def stage_fingerprint(stage: Stage, seed: int, input_records: Mapping[str, Mapping[str, Any]]) -> str:
    """SHA-256 of what a stage's result depends on: kind, config, seed, and each input's digest (for a
    reference also the upstream stage's fingerprint). Paths themselves are not part of it: a moved file
    with the same content is the same input."""
    inputs = {name: {k: r[k] for k in ("digest", "stage_fingerprint") if k in r} for name, r in input_records.items()}
    return digest_data({"kind": stage.kind, "config": stage.config, "seed": seed, "inputs": inputs})


def _why_rerun(entry: Mapping[str, Any], stage: Stage, seed: int, records: Mapping[str, Mapping]) -> str:
    """A short account of what changed since the stage last ran (for the log and the manifest)."""
    from r1jax.train.run_dir import config_changes  # noqa: PLC0415

    if "fingerprint" not in entry:
        return "first run"
    why = []
    if entry.get("kind") != stage.kind:
        why.append(f"kind {entry.get('kind')} → {stage.kind}")
    changed = [k for k, _, _ in config_changes(entry.get("config") or {}, json.loads(json.dumps(stage.config)))]
    if changed:
        why.append("config " + ", ".join(changed))
    if entry.get("seed") != seed:
        why.append(f"seed {entry.get('seed')} → {seed}")
    old = entry.get("inputs") or {}
    inputs = [n for n in sorted(set(old) | set(records))
              if {k: v for k, v in (old.get(n) or {}).items() if k != "path"}
              != {k: v for k, v in (records.get(n) or {}).items() if k != "path"}]
    if inputs:
        why.append("inputs " + ", ".join(inputs))
    return "changed: " + "; ".join(why) if why else "changed"


def _changed_outputs(entry: Mapping[str, Any], pipeline_dir: pathlib.Path) -> list[str]:
    out = []
    for name, rec in (entry.get("outputs") or {}).items():
        path = pipeline_dir / rec["path"]
        if not path.exists() or digest_path(path) != rec["digest"]:
            out.append(name)
    return out


def _run_stage(pipeline: Pipeline, stage: Stage, manifest: dict[str, Any]) -> str:
    """Skips, resumes or (re-)runs one stage, updating and writing the manifest. Returns what it did."""
    root = pipeline.out_dir
    entry = manifest["stages"].setdefault(stage.name, {"status": "pending"})
    records = _input_records(stage, root, manifest)
    fingerprint = stage_fingerprint(stage, pipeline.seed, records)
    stage_dir = root / STAGES_DIR / stage.name
    fresh_reason = None
    if entry.get("fingerprint") == fingerprint:
        if entry.get("status") == "done":
            changed = _changed_outputs(entry, root)
            if not changed:
                log.info("stage %s: done with the same config and inputs: skipped", stage.name)
                return "skipped"
            fresh_reason = f"outputs changed on disk since it finished: {', '.join(changed)}"
    else:
        fresh_reason = _why_rerun(entry, stage, pipeline.seed, records)
    action = "resumed" if fresh_reason is None else "ran"
    if fresh_reason is None:
        log.warning("stage %s: resuming (it was %s) from its last checkpoint in %s", stage.name, entry.get("status"),
                    stage_dir)
    else:
        if stage_dir.exists():
            from r1jax.train.run_dir import move_aside  # noqa: PLC0415

            moved = move_aside(stage_dir)
            log.warning("stage %s: re-running (%s); moved its previous directory aside to %s", stage.name,
                        fresh_reason, moved)
            entry.setdefault("moved_aside", []).append(
                {"path": str(moved.relative_to(root)), "reason": fresh_reason, "time": time.time()})
            action = "re-ran"
        else:
            log.info("stage %s: running (%s)", stage.name, fresh_reason)
        for key in ("outputs", "metrics", "eval", "error", "finished"):
            entry.pop(key, None)
    entry.update({"kind": stage.kind, "label": stage.label, "status": "running", "config": stage.config,
                  "seed": pipeline.seed, "inputs": records, "fingerprint": fingerprint,
                  "dir": str(stage_dir.relative_to(root)), "started": time.time()})
    write_manifest(root, manifest)

    stage_dir.mkdir(parents=True, exist_ok=True)
    kind = STAGE_KINDS[stage.kind]()
    ctx = StageContext(name=stage.name, config=copy.deepcopy(dict(stage.config)),
                       inputs={n: pathlib.Path(r["path"]) for n, r in records.items()}, out_dir=stage_dir,
                       seed=pipeline.seed)
    try:
        result = kind.run(ctx)
        outputs = _check_result(stage, result, stage_dir, root)
    except BaseException as e:
        entry.update({"status": "failed", "error": f"{type(e).__name__}: {e}", "finished": time.time()})
        write_manifest(root, manifest)
        raise
    entry.update({"status": "done", "outputs": outputs, "finished": time.time(),
                  "metrics": {k: float(v) for k, v in result.metrics.items()}})
    entry.pop("error", None)
    write_manifest(root, manifest)
    log.info("stage %s: done", stage.name)
    return action


def _check_result(stage: Stage, result: StageResult, stage_dir: pathlib.Path,
                  root: pathlib.Path) -> dict[str, dict[str, str]]:
    """The outputs' manifest records (path relative to the pipeline directory, digest).

    Raises:
      RuntimeError: the kind did not return exactly its declared outputs, or one is missing on disk
        or outside the stage directory.
    """
    declared = tuple(STAGE_KINDS[stage.kind].outputs)
    if not isinstance(result, StageResult) or set(result.outputs) != set(declared):
        got = sorted(result.outputs) if isinstance(result, StageResult) else type(result).__name__
        raise RuntimeError(f"stage {stage.name}: kind {stage.kind} returned outputs {got}, declared {list(declared)}")
    records = {}
    for name in declared:
        path = pathlib.Path(result.outputs[name]).resolve()
        if not path.exists():
            raise RuntimeError(f"stage {stage.name}: output {name}: {path} does not exist")
        if not path.is_relative_to(stage_dir.resolve()):
            raise RuntimeError(f"stage {stage.name}: output {name}: {path} is outside the stage directory {stage_dir}")
        records[name] = {"path": str(path.relative_to(root.resolve())), "digest": digest_path(path)}
    return records


def _evaluate_stage(pipeline: Pipeline, stage: Stage, manifest: dict[str, Any]) -> None:
    """Evaluates the stage's model (unless the manifest holds an evaluation of these bytes with this section)."""
    entry = manifest["stages"][stage.name]
    model = (entry.get("outputs") or {}).get("model")
    if pipeline.eval is None or model is None:
        return
    keyed = {"model": model["digest"], "config": pipeline.eval.config, "format_reward": pipeline.eval.format_reward}
    if pipeline.eval.language_reward is not None:
        keyed["language_reward"] = pipeline.eval.language_reward
    key = digest_data(keyed)
    root = pipeline.out_dir
    if (entry.get("eval") or {}).get("key") != key:
        log.info("stage %s: evaluating its model on held-out prompts", stage.name)
        result = evaluate_model(pipeline.eval, root / model["path"], root / entry["dir"])
        entry["eval"] = {"key": key, **result}
        write_manifest(root, manifest)
    for extra in pipeline.eval.extra:
        resolved = _extra_reward_models(extra, manifest, root)
        if resolved is None:  # made by a stage that has not finished yet: the final pass evaluates it
            continue
        models, digests = resolved
        key = digest_data({"model": model["digest"], "config": extra.config, "columns": extra.columns,
                           "reward_models": digests, "with": "intervals"})
        done = entry.setdefault("eval_extra", {})
        if (done.get(extra.name) or {}).get("key") != key:
            log.info("stage %s: evaluation %s of its model", stage.name, extra.name)
            done[extra.name] = {"key": key, **evaluate_extra(extra, root / model["path"], root / entry["dir"], models)}
            write_manifest(root, manifest)


def _extra_reward_models(extra: ExtraEval, manifest: Mapping[str, Any],
                         root: pathlib.Path) -> tuple[dict[str, pathlib.Path], dict[str, str]] | None:
    """(component -> reward-model directory, component -> its digest) of an extra evaluation; None while
    a stage that makes one of them has not finished."""
    models, digests = {}, {}
    for name, ref in extra.reward_models.items():
        if isinstance(ref, InputRef):
            up = manifest["stages"].get(ref.stage) or {}
            out = (up.get("outputs") or {}).get(ref.output)
            if up.get("status") != "done" or out is None:
                return None
            models[name], digests[name] = root / out["path"], out["digest"]
        else:
            models[name], digests[name] = ref, digest_path(ref)
    return models, digests


# ------------------------------------------------------------------------------------------ the pipeline


@contextlib.contextmanager
def _lock(root: pathlib.Path):
    """Holds an exclusive lock on ``root/.lock`` (released by the kernel if the process is killed).

    Raises:
      ConfigError: another process runs a pipeline in ``root``.
    """
    with open(root / ".lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"out_dir: another r1jax pipeline is running in {root}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def run_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """Runs (skips, resumes, re-runs) every stage in order, evaluates their models, writes the table.

    Args:
      pipeline: a checked pipeline (:func:`r1jax.pipeline.graph.load_pipeline`).

    Returns:
      The final manifest (also on disk). What the runner did with each stage in this call
      (``skipped`` / ``resumed`` / ``ran`` / ``re-ran``) is logged and recorded under
      ``manifest["last_actions"]``.

    Raises:
      ConfigError: the manifest of the pipeline directory cannot be read (nothing was written), or
        another process is running a pipeline in that directory.
      Whatever a stage raised (its entry says ``failed`` with the error).
    """
    root = pipeline.out_dir
    read_manifest(root)  # a directory holding something else is refused before anything is written
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        manifest = read_manifest(root)
        manifest["order"] = [s.name for s in pipeline.stages]
        for s in pipeline.stages:
            manifest["stages"].setdefault(s.name, {"status": "pending", "kind": s.kind, "label": s.label,
                                                   "config": s.config})
        write_manifest(root, manifest)
        actions = {}
        for stage in pipeline.stages:
            actions[stage.name] = _run_stage(pipeline, stage, manifest)
            _evaluate_stage(pipeline, stage, manifest)
        for stage in pipeline.stages:  # extra evaluations that waited for a later stage's reward model
            _evaluate_stage(pipeline, stage, manifest)
        manifest["last_actions"] = actions
        write_manifest(root, manifest)
    text = format_table(manifest)
    (root / "table.txt").write_text(text + "\n")
    plot_stages(manifest, root / "stages.png")
    return manifest


# ------------------------------------------------------------------------------------------ the table


def table_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per stage in pipeline order: name, label, status, and the eval summary (None when the
    stage made no model or was not evaluated)."""
    rows = []
    for name in manifest.get("order", ()):
        entry = manifest["stages"].get(name, {})
        done = (entry.get("eval_extra") or {}).values()
        extra = {col: v for e in done for col, v in e["summary"].items()}
        extra_ci = {col: ci for e in done for col, ci in (e.get("intervals") or {}).items()}
        rows.append({"stage": name, "label": entry.get("label", name), "status": entry.get("status", "pending"),
                     "eval": (entry.get("eval") or {}).get("summary"), "extra": extra, "extra_ci": extra_ci})
    return rows


def extra_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns beyond the fixed ones, in first-seen order: ``lang`` (language consistency) when an
    evaluation recorded it, then each extra evaluation's columns."""
    cols = ["lang"] if any(r["eval"] and r["eval"].get("language") is not None for r in rows) else []
    for r in rows:
        cols += [c for c in r.get("extra") or {} if c not in cols]
    return cols


def _column(row: Mapping[str, Any], col: str) -> float | None:
    value = (row["eval"] or {}).get("language") if col == "lang" else (row.get("extra") or {}).get(col)
    return None if value is None else float(value)


def _pass1_interval(summary: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """The summary's pass@1 interval; None when it has none (one problem, or a manifest written before
    the interval was recorded)."""
    ci = (summary or {}).get("pass@1_ci")
    return None if not ci or None in ci else (float(ci[0]), float(ci[1]))


def format_table(manifest: Mapping[str, Any]) -> str:
    """The paper-style table: one row per stage (model), held-out pass@1 (with its 95% interval
    ``[low, high]`` where the manifest has one), cons@k, format rate, length."""
    rows = table_rows(manifest)
    ks = sorted({r["eval"]["k"] for r in rows if r["eval"]})
    cons = f"cons@{ks[0]}" if len(ks) == 1 else "cons@k"
    w_stage = max([16, *(len(r["stage"]) + 2 for r in rows)])
    w_label = max([12, *(len(r["label"]) + 2 for r in rows)])
    cis = [_pass1_interval(r["eval"]) for r in rows]
    ci_text = [f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "" for ci in cis]
    w_ci = max(len(t) for t in ci_text) if ci_text else 0  # 0: no interval anywhere, the table as before
    extra = extra_columns(rows)
    widths = [max(8, len(c) + 2) for c in extra]
    header = (f"{'stage':{w_stage}s}{'model':{w_label}s}{'status':9s}{'pass@1':>8s}{'':{w_ci}s}{cons:>9s}"
              f"{'format':>8s}{'length':>8s}" + "".join(f"{c:>{w}s}" for c, w in zip(extra, widths)))
    lines = [header, "-" * len(header)]
    for r, ci in zip(rows, ci_text):
        e = r["eval"]
        nums = (f"{e['pass@1']:>8.3f}{ci:<{w_ci}s}{e['cons@k']:>9.3f}{e['format_rate']:>8.3f}"
                f"{e['response_length']:>8.1f}" if e else f"{'-':>8s}{'':{w_ci}s}{'-':>9s}{'-':>8s}{'-':>8s}")
        for c, w in zip(extra, widths):
            v = _column(r, c) if e else None
            nums += f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}s}"
        lines.append(f"{r['stage']:{w_stage}s}{r['label']:{w_label}s}{r['status']:9s}{nums}")
    if any(cis):
        lines.append("pass@1 [low, high]: 95% Student-t interval over the held-out problems")
    if "lang" in extra:
        lines.append("lang: mean language consistency of the chain of thought (eq. 7) on the held-out prompts")
    lines += _reward_model_lines(manifest)
    return "\n".join(lines)


def _reward_model_lines(manifest: Mapping[str, Any]) -> list[str]:
    """One line per finished ``rm`` stage: its held-out accuracy (and AUC) with 95% intervals, after
    training and with the fresh head it started from."""
    lines = []
    for name in manifest.get("order", ()):
        entry = manifest["stages"].get(name, {})
        m = entry.get("metrics") or {}
        if entry.get("kind") != "rm" or entry.get("status") != "done" or "heldout_accuracy" not in m:
            continue
        parts = []
        for key, what in (("heldout_accuracy", "accuracy"), ("heldout_auc", "AUC")):
            if key in m:
                parts.append(f"{what} {m[key]:.3f} [{m[key + '_low']:.3f}, {m[key + '_high']:.3f}]"
                             + (f" (fresh head {m[key + '_initial']:.3f})" if key + "_initial" in m else ""))
        lines.append(f"{entry.get('label', name)} ({name}), {int(m.get('heldout_examples', 0))} held-out: "
                     + ", ".join(parts))
    return lines


def plot_stages(manifest: Mapping[str, Any], out: pathlib.Path) -> pathlib.Path | None:
    """A PNG of each evaluated stage's pass@1 (with its 95% interval as an error bar where the manifest
    has one), cons@k, format rate and response length (bars per stage); None (and a note on stderr)
    without matplotlib or without any evaluated stage."""
    rows = [r for r in table_rows(manifest) if r["eval"]]
    if not rows:
        return None
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no stage plot (pip install 'r1jax[plot]')", file=sys.stderr)
        return None
    panels = (("pass@1", "pass@1 (held-out)"), ("cons@k", f"cons@{rows[0]['eval']['k']}"),
              ("format_rate", "format rate"), ("response_length", "response length (tokens)"),
              *((c, c) for c in extra_columns(rows)))
    labels = [r["label"] for r in rows]
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, title) in zip(axes.flat, panels):
        ax.set_title(title)
        values = [r["eval"][key] if key in r["eval"] else _column(r, key) for r in rows]
        bars = ax.bar(range(len(rows)), [0.0 if v is None else v for v in values], color="tab:blue")
        ax.bar_label(bars, fmt="%.1f" if key == "response_length" else "%.3f", fontsize=8)
        if key == "pass@1":
            _interval_bars(ax, rows)
        else:
            _interval_bars(ax, rows, key)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("r1jax pipeline: held-out evaluation per stage")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _interval_bars(ax, rows: Sequence[Mapping[str, Any]], column: str | None = None) -> None:
    """Error bars of the pass@1 intervals on the pass@1 panel, or of an extra column's intervals on its
    panel (stages without one get none)."""
    if column is None:
        marked = [(i, r["eval"]["pass@1"], ci) for i, r in enumerate(rows) if (ci := _pass1_interval(r["eval"]))]
    else:
        marked = [(i, r["extra"][column], r["extra_ci"][column]) for i, r in enumerate(rows)
                  if column in r.get("extra_ci", {}) and r["extra"].get(column) is not None]
    if not marked:
        return
    x, y, cis = zip(*marked)
    yerr = [[max(0.0, p - lo) for p, (lo, _) in zip(y, cis)], [max(0.0, hi - p) for p, (_, hi) in zip(y, cis)]]
    ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor="black", elinewidth=1, capsize=4)


# ------------------------------------------------------------------------------------------ the CLI


def _logging() -> None:
    # force: importing orbax has already given the root logger a WARNING-level handler (absl's basicConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every checkpoint operation at INFO


def _run_and_print(pipeline: Pipeline) -> int:
    manifest = run_pipeline(pipeline)
    print(format_table(manifest))
    png = pipeline.out_dir / "stages.png"
    print(f"\npipeline directory: {pipeline.out_dir}" + (f"  (plot: {png})" if png.is_file() else ""))
    return 0


def pipeline_from_cli(config_path: str, overrides: Sequence[str], *, status: bool = False) -> int:
    """``r1jax pipeline CONFIG [key=value ...] [--status]``.

    With ``status``, prints the table of the manifest in the config's ``out_dir`` and runs nothing.
    """
    if status:
        data = apply_pipeline_overrides(read_config(config_path), overrides)
        out_dir = data.get("out_dir")
        if not isinstance(out_dir, str) or not out_dir:
            raise ConfigError(f"out_dir: expected the pipeline directory (a path), got {out_dir!r}")
        manifest = read_manifest(pathlib.Path(out_dir).expanduser())
        if not manifest["stages"]:
            print(f"no pipeline has run in {out_dir} yet")
            return 0
        print(format_table(manifest))
        return 0
    pipeline = parse_pipeline(apply_pipeline_overrides(read_config(config_path), overrides))
    _logging()
    return _run_and_print(pipeline)


STAGE_FILE_KEYS = ("name", "label", "inputs", "config", "seed", "imports", "eval")


def stage_pipeline(kind: str, data: Mapping[str, Any], out: str | None) -> dict[str, Any]:
    """The one-stage pipeline config of a stage verb's config file.

    A stage file holds one stage: ``inputs``, ``config``, and optionally ``name`` (default: the kind),
    ``label``, ``seed``, ``imports``, ``eval`` (as in a pipeline). Its pipeline directory is ``out``
    (default ``runs/<name>``).

    Raises:
      ConfigError: an unknown key (named), or a ``kind`` key (the verb is the kind).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {kind} config must be a mapping ({', '.join(STAGE_FILE_KEYS)})")
    for k in data:
        if k not in STAGE_FILE_KEYS:
            hint = " (the verb names the kind)" if k == "kind" else ""
            raise ConfigError(f"unknown key '{k}'{hint}; allowed keys of a {kind} config: {', '.join(STAGE_FILE_KEYS)}")
    name = data.get("name", kind)
    stage = {"name": name, "kind": kind, "inputs": data.get("inputs"), "config": data.get("config")}
    if "label" in data:
        stage["label"] = data["label"]
    pipeline: dict[str, Any] = {"out_dir": out or f"runs/{name}", "stages": [stage]}
    for k in ("seed", "imports", "eval"):
        if k in data:
            pipeline[k] = data[k]
    return pipeline


def stage_from_cli(kind: str, config_path: str, overrides: Sequence[str], *, out: str | None = None) -> int:
    """``r1jax <kind> CONFIG [key=value ...] [--out DIR]``: one stage of ``kind`` through the pipeline
    runner (the same checks, manifest, skip / resume rules and evaluation).

    Raises:
      ConfigError: the config is bad (named stage and field).
    """
    data = stage_pipeline(kind, read_config(config_path, overrides), out)
    pipeline = parse_pipeline(data)
    _logging()
    return _run_and_print(pipeline)
