"""The RL loop: orchestration only.

One step: sample (the sampler is a function of the current params) → score → one ``device_put``
of the rollout → the jitted pure ``update`` (:func:`r1jax.train.steps.make_rl_update`: advantages,
mini-batches, optimizer steps, step counter, reference refresh) → one ``device_get`` of its
metrics. Evaluation, checkpoints and weight pushes are hooks that run every N steps. With
``rollout.async.max_staleness: K`` a producer thread samples and scores steps ahead with the
policy K updates old (:mod:`r1jax.train.async_rollout`) while the trainer updates.

Every random choice derives from ``run.seed`` and the step (sampling seeds) or from the key in the
train state (mini-batch order), and the data iterator's position is checkpointed, so a resumed run
produces the same metrics, step for step, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import ConfigError, save_config, to_dict
from r1jax.data import PromptIterator
from r1jax.models import init_value_head, save_pretrained
from r1jax.train.async_rollout import InProgress, Produced, Producer
from r1jax.train.buffer import select_groups
from r1jax.train.checkpoint import CheckpointError, Checkpointer
from r1jax.train.components import Components, build
from r1jax.train.config import ExperimentConfig, load_experiment
from r1jax.train.evaluation import evaluate_policy
from r1jax.train.metrics import MetricsWriter
from r1jax.train.run_dir import check_resumed_config, refuse_or_move_aside
from r1jax.train.rollout import (Episodes, Partial, Segments, assemble_rollout, group_split, make_sampler,
                                 put_rows, sample_then_score, step_seed)
from r1jax.train.state import Hyper, init_state, make_optimizer
from r1jax.train.steps import make_rl_update, update_token_budget

__all__ = ["Trainer", "TrainingStopped", "run_from_cli"]

log = logging.getLogger("r1jax.train")

class TrainingStopped(RuntimeError):
    """The run stopped itself: too many consecutive skipped (non-finite) updates."""


class Trainer:
    """Runs an :class:`ExperimentConfig`: GRPO (and variants) or PPO, from scratch or resumed.

    Nothing is written before every start-up check has passed: config, data files, tokenizer and
    model, prompt lengths (:func:`~r1jax.train.components.build`), and, on resume, that the checkpoint
    was made with the same config up to :data:`r1jax.train.run_dir.SAFE_CHANGES`. Only then is the run directory
    created and ``config.yaml`` written.

    Args:
      config: the validated experiment config.
      run_dir: where config, metrics, checkpoints and exports go (default ``out_dir/name``).
      components: prebuilt :func:`~r1jax.train.components.build` output (default: built here).
      overwrite: with ``checkpoint.resume=false``, move a previous run in ``run_dir`` aside to
        ``<run_dir>.old-N`` (without it, such a run is refused).
      allow_config_change: resume even when the checkpoint's config differs in keys that change
        what the run trains (the changes are logged).

    Raises:
      ConfigError: a start-up check failed (nothing was written).
    """

    def __init__(self, config: ExperimentConfig, run_dir: str | pathlib.Path | None = None,
                 components: Components | None = None, *, overwrite: bool = False,
                 allow_config_change: bool = False):
        self.config = cfg = config
        self.run_dir = pathlib.Path(run_dir or pathlib.Path(cfg.run.out_dir) / cfg.run.name)
        if overwrite and cfg.checkpoint.resume:
            raise ConfigError("--overwrite starts the run afresh and moves the old one aside: it needs "
                              "checkpoint.resume=false")
        c = self.components = components or build(cfg)
        self.tokenizer, self.model_cfg, self.mesh = c.tokenizer, c.model_cfg, c.mesh
        self.drawn_per_step = cfg.rollout.prompts_per_step + cfg.rollout.buffer.extra_prompts
        self.iterator = PromptIterator(c.train_set, self.drawn_per_step, seed=cfg.data.seed)
        algo = cfg.algo
        total_updates = cfg.run.steps * algo.passes
        self.tx = tx = make_optimizer(cfg.optim, total_steps=total_updates)
        self.critic_tx = critic_tx = (make_optimizer(cfg.optim, algo.critic_lr_scale, total_steps=total_updates)
                                      if algo.needs_critic else None)
        key, critic_key = jax.random.split(jax.random.PRNGKey(cfg.run.seed))
        critic = None
        if algo.needs_critic:  # the paper's PPO baseline: a value model of the policy's size, from its trunk
            critic = {**jax.tree.map(jnp.copy, c.params), **init_value_head(self.model_cfg, critic_key)}
        self.state = init_state(c.params, tx, key, reference=algo.uses_reference, critic_params=critic,
                                critic_tx=critic_tx)
        self.hparams = Hyper.from_config(algo, cfg.rollout.temperature)
        data_parallel = int(np.prod([self.mesh.shape.get(k, 1) for k in ("data", "fsdp")])) if self.mesh else 1
        self._rows_multiple = math.lcm(algo.num_minibatches * algo.num_microbatches, data_parallel)
        self._group_shape = self._grouped_layout()
        self.update = make_rl_update(self.model_cfg, algo, cfg.kernels, tx, critic_tx,
                                     max_new_tokens=cfg.rollout.max_new_tokens, mesh=self.mesh)
        self.start_step, weight_version = 0, 0
        self.max_staleness = cfg.rollout.async_.max_staleness
        self.producer: Producer | None = None
        self._async_meta: dict | None = None   # the producer's part of the checkpoint resumed from
        self._consumed_cursor: dict | None = None  # async: the data position of the last batch trained on
        checkpoints = self.run_dir / "checkpoints"
        self.checkpointer = Checkpointer(checkpoints, keep=cfg.checkpoint.keep) if checkpoints.is_dir() else None
        try:
            if cfg.checkpoint.resume:
                weight_version = self._restore(allow_config_change)
            else:
                if refuse_or_move_aside(self.run_dir, overwrite) and self.checkpointer is not None:
                    self.checkpointer.close()  # its directory was moved aside with the old run
                    self.checkpointer = None
        except BaseException:
            if self.checkpointer is not None:
                self.checkpointer.close()
            raise
        # every check has passed: only now is anything written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        if self.checkpointer is None:
            self.checkpointer = Checkpointer(checkpoints, keep=cfg.checkpoint.keep)
        self.sampler = make_sampler(cfg.rollout, self.model_cfg, self.run_dir, weight_version)
        self._live_version = int(self.state.step)  # the trainer version the sampler serves
        if cfg.rollout.mode == "remote":
            self.sampler.push(self.state.params)
        # evaluation samples the current policy; asynchronous remote servers hold an older one
        self.eval_sampler = self.sampler
        if self.max_staleness and cfg.rollout.mode == "remote":
            self.eval_sampler = make_sampler(dataclasses.replace(cfg.rollout, mode="embedded"), self.model_cfg,
                                             self.run_dir)
        self.hooks: list[tuple[int, Callable[[int, dict], None]]] = []
        if cfg.eval.every:
            self.add_hook(lambda step, metrics: metrics.update(self.evaluate()), every=cfg.eval.every)

    def add_hook(self, fn: Callable[[int, dict], None], every: int) -> None:
        """Calls ``fn(steps_done, metrics)`` after every ``every``-th step (it may add metrics)."""
        self.hooks.append((every, fn))

    # ------------------------------------------------------------------------------ one RL step

    def _sample(self, examples: list, step: int, policy: Callable[[int, Partial], tuple[Any, int]],
                resume: Partial | None = None) -> Episodes:
        """Samples and scores the examples of ``step``; ``policy(segment, partial)`` gives the params
        (and trainer version) of each segment of new tokens — one segment unless
        ``rollout.async.partial_tokens`` — which are pushed first to remote servers that serve another."""
        return self._sample_then_score(examples, step, policy, resume)()

    def _sample_then_score(self, examples: list, step: int, policy: Callable[[int, Partial], tuple[Any, int]],
                           resume: Partial | None = None) -> Callable[[], Episodes]:
        """:meth:`_sample` in two halves: samples now, returns the function that scores (the producer's)."""
        cfg = self.config
        first: list[int] = []

        def pushed(segment: int, partial: Partial) -> tuple[Any, int]:
            params, version = policy(segment, partial)
            first.append(version)
            if cfg.rollout.mode == "remote" and version != self._live_version:
                self.sampler.push(params, key=version)  # only commits, when it was staged
                self._live_version = version
                self._stage_next()
            return params, version

        segments = None
        if cfg.rollout.async_.partial_tokens:
            segments = Segments(cfg.rollout.async_.partial_tokens, pushed, resume)
            params = None
        else:
            params, _ = pushed(0, Partial.empty(len(examples), cfg.rollout.group_size))
        score = sample_then_score(cfg, self.tokenizer, self.sampler, self.components.scorer, params, examples,
                                  n=cfg.rollout.group_size, temperature=cfg.rollout.temperature,
                                  seed=step_seed(cfg.run.seed, step), first_index=step * self.drawn_per_step,
                                  step=step, segments=segments)
        if cfg.rollout.mode == "remote":
            return score
        oldest = resume.policy_versions[0] if resume is not None else first[0]  # versions only grow
        return lambda: dataclasses.replace(score(), versions=[oldest] * len(examples))

    def _stage_next(self) -> None:
        """Asynchronous RL with remote servers: sends them the next policy they will take as soon as
        the trainer has made it and no other push is under way (they keep sampling with the live
        one; the producer's push of it then only commits)."""
        producer = self.producer  # None while the producer starts (its first push comes from its thread)
        if self.config.rollout.mode != "remote" or producer is None:
            return
        nxt = producer.published_after(self._live_version)
        if nxt is not None:
            self.sampler.stage(nxt[1], key=nxt[0])

    def _start_producer(self) -> None:
        """Starts sampling ahead (asynchronous RL), from the buffer of the checkpoint resumed from."""
        version, meta = int(self.state.step), self._async_meta
        buffered: tuple[Produced, ...] = ()
        in_progress = None
        segments = self._segments_per_batch()
        if meta is not None and (meta["max_staleness"], meta.get("segments", 1)) == (self.max_staleness, segments):
            buffered = tuple(Produced.from_json(b) for b in meta["buffer"])
            in_progress = InProgress.from_json(meta["in_progress"]) if meta.get("in_progress") else None
            if meta["cursor"] is not None:
                self.iterator.restore(meta["cursor"])
        elif meta is not None:  # K or the segments changed (allowed): sample again from the consumed position
            log.warning("rollout.async changed (max_staleness %d -> %d, segments %d -> %d): the %d buffered batches "
                        "of the checkpoint are sampled again", meta["max_staleness"], self.max_staleness,
                        meta.get("segments", 1), segments, len(meta["buffer"]))
        self.producer = Producer(self._sample_then_score, self.iterator,
                                 params=jax.tree.map(jnp.copy, self.state.params), version=version,
                                 end_step=self.config.run.steps, max_staleness=self.max_staleness,
                                 segments=segments, buffered=buffered, in_progress=in_progress)

    def _segments_per_batch(self) -> int:
        """The most segments of new tokens a batch is sampled in (1 without partial rollouts)."""
        ro = self.config.rollout
        return -(-ro.max_new_tokens // ro.async_.partial_tokens) if ro.async_.partial_tokens else 1

    def _next_episodes(self, step: int, timing: dict[str, float]) -> tuple[Episodes, int]:
        """The scored samples of ``step`` and the version that sampled them."""
        t0 = time.perf_counter()
        if not self.max_staleness:
            ep = self._sample(next(self.iterator), step, lambda segment, partial: (self.state.params, step))
            timing["rollout+reward"] = time.perf_counter() - t0
            return ep, step
        if self.producer is None:
            self._start_producer()
        batch = self.producer.get(step)
        self._consumed_cursor = batch.cursor
        timing["rollout_wait"] = time.perf_counter() - t0
        timing["rollout+reward"] = batch.seconds
        return batch.episodes, batch.version

    def _grouped_layout(self) -> tuple[int, int, int] | None:
        """``assemble_rollout``'s ``group_shape`` (``algo.share_prompts``), or None: padded rows
        (packing, or units that do not split evenly over mini-batches, micro-batches and devices)."""
        cfg, algo = self.config, self.config.algo
        if not algo.share_prompts or algo.packing:
            return None
        new = cfg.rollout.max_new_tokens
        prompt_len = self.components.max_length - new  # the longest prompt, rounded up
        split = group_split(cfg.rollout.group_size, prompt_len, new, update_token_budget(algo, self.mesh))
        if split is None or (cfg.rollout.prompts_per_step * split) % self._rows_multiple:
            return None
        return prompt_len, new, split

    def rl_step(self) -> dict[str, Any]:
        """One RL step; returns its metrics (deterministic numbers) and timing."""
        cfg, c = self.config, self.components
        step = int(self.state.step)
        timing: dict[str, float] = {}
        ep, version = self._next_episodes(step, timing)
        drawn = len(ep.samples)
        buffer_metrics = {}
        if cfg.rollout.buffer.extra_prompts:
            chosen = select_groups(cfg.rollout.buffer.policy, ep, cfg.rollout.prompts_per_step, step=step)
            ep = ep.select(chosen)
            buffer_metrics = {"buffer/dropped": drawn - len(chosen)}
        t0 = time.perf_counter()
        rollout = put_rows(self.mesh, assemble_rollout(  # static shapes: the update compiles once per run
            ep.prompts, ep.samples, ep.rewards, self.tokenizer.pad_id, length=c.max_length,
            pack_length=(cfg.algo.pack_length or c.max_length) if cfg.algo.packing else None,
            rows_multiple_of=self._rows_multiple, group_shape=self._group_shape))
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            self.state, update_metrics = self.update(self.state, rollout, self.hparams)
        update_metrics = jax.device_get(update_metrics)
        timing["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.producer is not None:  # the producer samples step + 1 + K with these (pushed from its thread)
            self.producer.publish(step + 1, jax.tree.map(jnp.copy, self.state.params))
            self._stage_next()
        else:
            self.sampler.push(self.state.params)
            self._live_version = step + 1
        timing["weight_sync"] = time.perf_counter() - t0
        if update_metrics["skipped"]:
            log.warning("step %d: %d optimizer step(s) had a non-finite loss, gradient or update: skipped",
                        step, int(update_metrics["skipped"]))
        metrics = {**ep.metrics(), "staleness": step - version, **buffer_metrics,
                   **{k: float(v) for k, v in update_metrics.items()}}
        if ep.token_versions is not None:  # partial rollouts: the staleness of each token's policy
            tv = np.concatenate([v for grp in ep.token_versions for v in grp])
            spans = [len(np.unique(v)) > 1 for grp in ep.token_versions for v in grp]
            metrics.update({"staleness/token_mean": float(step - tv.mean()) if tv.size else 0.0,
                            "partial/resumed_frac": float(np.mean(spans))})
        timing["tokens_per_s"] = float(ep.lengths.sum()) / max(sum(timing.values()), 1e-9)
        return {"metrics": metrics, "timing": timing}

    # ------------------------------------------------------------------------------ evaluation, run

    def evaluate(self) -> dict[str, float]:
        """Accuracy, pass@k and cons@k on held-out prompts with the current policy."""
        c = self.components
        return evaluate_policy(self.config, self.tokenizer, self.eval_sampler, c.scorer, c.eval_set, self.state.params,
                               step=int(self.state.step))

    def run(self) -> list[dict[str, Any]]:
        """Trains to ``run.steps``; returns the per-step records (also in metrics.jsonl)."""
        cfg = self.config
        writer = MetricsWriter(self.run_dir, total_steps=cfg.run.steps, tensorboard=cfg.run.tensorboard,
                               progress=cfg.run.progress, start_step=self.start_step)
        records = []
        try:
            for step in range(self.start_step, cfg.run.steps):
                out = self.rl_step()
                metrics, done = out["metrics"], step + 1
                for every, hook in self.hooks:
                    if done % every == 0:
                        hook(done, metrics)
                writer.write(step, metrics, timing=out["timing"])
                records.append({"step": step, **metrics})
                if metrics["skipped_in_a_row"] >= cfg.run.max_skipped_in_a_row:
                    raise TrainingStopped(
                        f"stopping at step {done}: {int(metrics['skipped_in_a_row'])} optimizer steps in a row had a "
                        f"non-finite loss, gradient or update (run.max_skipped_in_a_row="
                        f"{cfg.run.max_skipped_in_a_row}); lower optim.lr or check the rewards")
                if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == cfg.run.steps:
                    self.save()
        finally:
            writer.close()
        if cfg.checkpoint.export_hf:
            self.export(self.run_dir / "hf")
        return records

    # ------------------------------------------------------------------------------ checkpoints, export

    def save(self) -> None:
        meta = {"iterator": self.iterator.state(), "weight_version": self.sampler.weight_version,
                "config": to_dict(self.config)}
        if self.producer is not None:  # the iterator is the producer's, ahead of the trainer
            meta["iterator"] = self._consumed_cursor
            meta["async"] = self.producer.checkpoint(int(self.state.step))
        self.checkpointer.save(int(self.state.step), self.state, meta)
        log.info("checkpoint saved at step %d", int(self.state.step))

    def _restore(self, allow_config_change: bool) -> int:
        """Resumes from the newest intact checkpoint (corrupt newer ones are reported and passed over),
        after checking that it was made with this config (:func:`~r1jax.train.run_dir.check_resumed_config`)."""
        if self.checkpointer is None:
            return 0
        check_resumed_config(self.checkpointer, self.config, self.run_dir, allow_config_change)
        try:
            restored = self.checkpointer.restore_latest(self.state)
        except CheckpointError:
            raise
        except ValueError as err:  # an intact checkpoint of another state structure (an allowed config change)
            raise ConfigError(f"checkpoint.resume: cannot resume {self.run_dir} with this config: {err}") from None
        if restored is None:
            return 0
        _, self.state, meta = restored
        self.iterator.restore(meta["iterator"])
        self._async_meta = meta.get("async")
        self.start_step = int(self.state.step)
        log.warning("resuming from step %d of %s", self.start_step, self.checkpointer.directory)
        return int(meta["weight_version"])

    def export(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes the policy as a Hugging Face directory (weights, config, tokenizer)."""
        directory = pathlib.Path(directory)
        save_pretrained(self.state.params, self.model_cfg, directory)
        self.tokenizer.save(directory)
        return directory

    def close(self) -> None:
        """Releases the producer, the samplers, the reward workers and the checkpoint manager."""
        if self.producer is not None:
            self.producer.close()
        self.sampler.close()
        if self.eval_sampler is not self.sampler:
            self.eval_sampler.close()
        self.components.close()
        self.checkpointer.close()


def run_from_cli(config_path: str, overrides: Sequence[str], *, overwrite: bool = False,
                 allow_config_change: bool = False) -> int:
    """``r1jax train CONFIG [key=value ...] [--overwrite] [--allow-config-change]`` (see :class:`Trainer`)."""
    cfg = load_experiment(config_path, overrides)
    # force: importing orbax has already given the root logger a WARNING-level handler (absl's basicConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    trainer = Trainer(cfg, overwrite=overwrite, allow_config_change=allow_config_change)
    try:
        print("before:", trainer.evaluate())
        trainer.run()
        print("after:", trainer.evaluate())
    finally:
        trainer.close()
    return 0
