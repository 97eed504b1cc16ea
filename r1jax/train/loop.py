"""The RL loop: prompts → rollout → rewards → advantages → μ passes of mini-batch updates →
weight push → reference refresh → metrics → checkpoint.

Orchestration only: the maths is in :mod:`r1jax.algos`, the pure steps in
:mod:`r1jax.train.steps`. Every random choice derives from ``run.seed`` and the step number
(sampling seeds) or from the PRNG key in the train state (mini-batch order), and the data
iterator's position is checkpointed, so a run resumed from a checkpoint produces the same
metrics, step for step, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import algos
from r1jax.config import ConfigError, load_config, save_config, to_dict
from r1jax.data import PromptIterator, make_dataset
from r1jax.data.batching import pad_sequences
from r1jax.data.templates import encode_prompts, render_prompt
from r1jax.data.tokenizer import load_tokenizer
from r1jax.models import init_params, init_value_head, load_pretrained, save_pretrained
from r1jax.models.sharding import make_mesh, shard_params
from r1jax.rewards import RewardScorer
from r1jax.rollout.types import GenerateRequest, SamplingParams
from r1jax.train.checkpoint import Checkpointer
from r1jax.train.config import ExperimentConfig
from r1jax.train.metrics import MetricsWriter
from r1jax.train.steps import (Hyper, RLBatch, TrainState, make_logprob_fn, make_optimizer,
                               make_train_step, make_value_fn)

__all__ = ["Trainer", "run_from_cli", "eval_from_cli"]

log = logging.getLogger("r1jax.train")

_LENGTH_MULTIPLE = 32  # rows are padded to a multiple of this, so shapes (and compiles) repeat


def _step_seed(run_seed: int, step: int, salt: int = 0) -> int:
    """A sampling seed that depends only on (run seed, step): resumed runs sample the same."""
    return int(np.random.SeedSequence([run_seed, step, salt]).generate_state(1)[0])


class Trainer:
    """Runs an :class:`ExperimentConfig`: GRPO (and variants) or PPO, from scratch or resumed.

    Args:
      config: the validated experiment config.
      run_dir: where config, metrics, checkpoints and exports go (default ``out_dir/name``).
    """

    def __init__(self, config: ExperimentConfig, run_dir: str | pathlib.Path | None = None):
        self.config = cfg = config
        self.run_dir = pathlib.Path(run_dir or pathlib.Path(cfg.run.out_dir) / cfg.run.name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")

        # Policy and tokenizer.
        tok_dir = cfg.model.tokenizer or cfg.model.path
        self.tokenizer = load_tokenizer(tok_dir)
        key = jax.random.PRNGKey(cfg.run.seed)
        key, init_key, critic_key = jax.random.split(key, 3)
        if cfg.model.path is not None:
            params, self.model_cfg = load_pretrained(cfg.model.path)
        else:
            self.model_cfg = cfg.model.config
            params = init_params(self.model_cfg, init_key)
        self.mesh = self._make_mesh()
        if self.mesh is not None:
            params = shard_params(params, self.mesh)
        if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
            raise ConfigError(f"model.tokenizer: {self.tokenizer.vocab_size} tokens do not fit the model's "
                              f"vocab_size {self.model_cfg.vocab_size}")

        # Data and rewards.
        self.train_set = make_dataset(cfg.data, "train")
        self.eval_set = make_dataset(cfg.data, "eval")
        self.iterator = PromptIterator(self.train_set, cfg.rollout.prompts_per_step, seed=cfg.data.seed)
        self.scorer = RewardScorer(cfg.reward)

        # Optimisers, state, pure steps.
        algo = cfg.algo
        total_updates = cfg.run.steps * algo.num_epochs * algo.num_minibatches
        self.tx = make_optimizer(cfg.optim, total_steps=total_updates)
        self.critic_tx = (make_optimizer(cfg.optim, algo.critic_lr_scale, total_steps=total_updates)
                          if algo.name == "ppo" else None)
        critic_params: Any = {}
        critic_opt: Any = {}
        if algo.name == "ppo":
            # A separate critic of the policy's architecture, initialised from the policy's trunk plus a
            # fresh scalar head (as the paper's PPO baseline: a value model the size of the policy).
            critic_params = {**jax.tree.map(jnp.copy, params), **init_value_head(self.model_cfg, critic_key)}
            critic_opt = self.critic_tx.init(critic_params)
        self.state = TrainState(
            step=jnp.int32(0), params=params, opt_state=self.tx.init(params),
            ref_params=jax.tree.map(jnp.copy, params), critic_params=critic_params,
            critic_opt_state=critic_opt, key=key, skipped=jnp.int32(0))
        self.hparams = Hyper.from_config(algo, cfg.rollout.temperature)
        self.train_step = make_train_step(self.model_cfg, algo, cfg.kernels, self.tx, self.critic_tx)
        self.logprob_fn = make_logprob_fn(self.model_cfg, cfg.kernels)
        self.value_fn = make_value_fn(self.model_cfg) if algo.name == "ppo" else None

        # Checkpoints and resume, then the rollout engine holding the (restored) policy.
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep)
        self.start_step = 0
        self.weight_version = 0
        if cfg.checkpoint.resume and self.checkpointer.latest_step() is not None:
            self._restore(self.checkpointer.latest_step())
        self.engine = self._make_engine(self.state.params)

    # ------------------------------------------------------------------------------ set-up helpers

    def _make_mesh(self):
        """The device mesh of ``config.mesh``, or None on a single device.

        Fixed sizes whose product is smaller than the device count use the first devices.
        """
        mesh_cfg = self.config.mesh
        devices = jax.devices()
        if -1 not in mesh_cfg.sizes:
            devices = devices[: int(np.prod(mesh_cfg.sizes))]
        if len(devices) == 1:
            return None
        return make_mesh(mesh_cfg, devices)

    def _on_mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _put(self, x: np.ndarray) -> jax.Array:
        """A batch array on the mesh: rows split over (data, fsdp) when they divide, else replicated."""
        if self.mesh is None:
            return jnp.asarray(x)
        rows = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        spec = jax.sharding.PartitionSpec(("data", "fsdp")) if x.shape[0] % rows == 0 else jax.sharding.PartitionSpec()
        return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

    def _make_engine(self, params):
        cfg = self.config
        if cfg.rollout.mode == "embedded":
            from r1jax.rollout.jax_engine import JaxEngine  # noqa: PLC0415

            return JaxEngine(jax.device_get(params), self.model_cfg, model_name=cfg.model.path or "random",
                             weight_version=self.weight_version,
                             max_batch_rows=max(64, cfg.rollout.prompts_per_step * cfg.rollout.group_size))
        from r1jax.rollout.client import RolloutClient  # noqa: PLC0415

        client = RolloutClient(list(cfg.rollout.servers), timeout=cfg.rollout.timeout_s, token=cfg.rollout.token)
        # Servers outlive trainers: continue after the newest version any of them serves.
        live = [h["weight_version"] for h in client.health().values() if h]
        self.weight_version = max([self.weight_version, *live])
        self.engine = client
        self.push_weights(params)
        return client

    def push_weights(self, params) -> None:
        """Makes ``params`` the engine's live weights as the next version (atomic on the engine's side)."""
        version = self.weight_version + 1
        transport = self.config.rollout.weight_transport
        if self.config.rollout.mode == "remote" and transport == "safetensors":
            weights_dir = (self.run_dir / "weights").resolve()  # servers resolve it, not this process
            directory = weights_dir / f"v{version}"
            save_pretrained(params, self.model_cfg, directory)
            self.engine.update_weights_from_dir(str(directory), version)
            shutil.rmtree(weights_dir / f"v{self.weight_version}", ignore_errors=True)
        else:
            self.engine.update_weights(params, version=version)
        self.weight_version = version

    def close(self) -> None:
        """Releases the rollout engine, the reward workers and the checkpoint manager."""
        for part in (self.engine, self.scorer, self.checkpointer):
            part.close()

    def _meta(self) -> dict[str, Any]:
        return {"iterator": self.iterator.state(), "weight_version": self.weight_version,
                "config": to_dict(self.config)}

    def save(self) -> None:
        self.checkpointer.save(int(self.state.step), self.state, self._meta())

    def _restore(self, step: int) -> None:
        self.state, meta = self.checkpointer.restore(step, self.state)
        self.iterator.restore(meta["iterator"])
        self.weight_version = int(meta["weight_version"])
        self.start_step = int(self.state.step)
        log.info("resumed from %s at step %d", self.checkpointer.directory, self.start_step)

    # ------------------------------------------------------------------------------ rollout + rewards

    def generate(self, examples: Sequence[dict], *, n: int, temperature: float, seed: int, first_index: int):
        """Samples ``n`` completions per example; returns (prompt ids, samples [P][n], weight versions)."""
        cfg = self.config.rollout
        prompts = encode_prompts(examples, self.tokenizer, self.config.data.template,
                                 system_prompt=self.config.data.system_prompt)
        sampling = SamplingParams(temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                  max_new_tokens=cfg.max_new_tokens, stop_token_ids=self.tokenizer.eos_ids,
                                  n=n, seed=seed)
        results = self.engine.generate(GenerateRequest(prompts, sampling, first_prompt_index=first_index))
        results = sorted(results, key=lambda r: r.prompt_index)
        return prompts, [list(r.samples) for r in results], [r.weight_version for r in results]

    def score(self, examples, samples, step: int):
        """Rewards of every sample: (total [P, n], {component: [P, n]}, failures)."""
        p, n = len(samples), len(samples[0])
        texts = [self.tokenizer.decode(s.token_ids) for group in samples for s in group]
        flat_examples = [e for e in examples for _ in range(n)]
        data = self.config.data
        # Rewards see the rendered prompt: a template may open <think>, and the language reward
        # detects the target language from it.
        rendered = {id(e): render_prompt(e, data.template, tokenizer=self.tokenizer, system_prompt=data.system_prompt)
                    for e in examples}
        result = self.scorer.score(
            prompts=[rendered[id(e)] for e in flat_examples], completions=texts,
            references=[e["reference"] for e in flat_examples], step=step, total_steps=self.config.run.steps)
        total = np.asarray(result.total, np.float32).reshape(p, n)
        comps = {k: np.asarray(v, np.float32).reshape(p, n) for k, v in result.components.items()}
        return total, comps, result, texts

    # ------------------------------------------------------------------------------ one RL step

    def _assemble(self, prompts, samples, seq_adv):
        """Right-padded rows of prompt + completion, with sampler log-probs and sequence advantages (numpy)."""
        g = len(samples[0])
        rows_p = [p for p in prompts for _ in range(g)]
        rows_c = [s.token_ids for group in samples for s in group]
        token_values = {"sampler_logp": [s.logprobs for group in samples for s in group]}
        tb = pad_sequences(rows_p, rows_c, self.tokenizer.pad_id, multiple_of=_LENGTH_MULTIPLE,
                           token_values=token_values, sequence_values={"advantages": seq_adv.reshape(-1)})
        return tb

    def rl_step(self) -> dict[str, Any]:
        """One RL step; returns its metrics (deterministic numbers) and timing."""
        cfg, algo = self.config, self.config.algo
        step = int(self.state.step)
        p, g = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        timing: dict[str, float] = {}

        t0 = time.perf_counter()
        examples = next(self.iterator)
        prompts, samples, versions = self.generate(
            examples, n=g, temperature=cfg.rollout.temperature, seed=_step_seed(cfg.run.seed, step),
            first_index=step * p)
        timing["rollout"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rewards, comps, reward_result, _ = self.score(examples, samples, step)
        lengths = np.array([[len(s) for s in grp] for grp in samples], np.float32)
        clipped = np.array([[s.finish_reason == "length" for s in grp] for grp in samples])
        shaped = rewards
        if algo.overlong_buffer:
            shaped = rewards + algo.overlong_penalty * np.asarray(algos.overlong_penalty(
                lengths, max_len=cfg.rollout.max_new_tokens, cache_len=algo.overlong_buffer))
        keep = np.ones((p, g), bool)
        if algo.dynamic_sampling:
            keep = np.repeat(np.asarray(algos.dynamic_sampling_mask(shaped))[:, None], g, axis=1)
        timing["reward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if algo.advantage == "grpo":
            seq_adv = np.asarray(algos.grpo_advantages(shaped, keep, std_scaling=algo.std_scaling))
        elif algo.advantage == "rloo":
            seq_adv = np.asarray(algos.rloo_advantages(shaped, keep))
        else:  # reinforce_pp / gae need token rewards: computed below once rows exist
            seq_adv = np.zeros((p, g), np.float32)
        tb = self._assemble(prompts, samples, seq_adv)
        tokens = self._put(tb.tokens)
        attn = self._put(tb.attention_mask)
        loss_mask_np = tb.loss_mask[:, 1:] & keep.reshape(-1)[:, None]
        loss_mask = self._put(loss_mask_np)
        temp = self.hparams.temperature
        with self._on_mesh():
            old_logp = self.logprob_fn(self.state.params, tokens, attn, temp)
            ref_logp = self.logprob_fn(self.state.ref_params, tokens, attn, temp)
        sampler_logp = self._put(tb.values["sampler_logp"][:, 1:])
        advantages = self._put(tb.values["advantages"][:, 1:])
        old_values = returns = jnp.zeros_like(old_logp)
        scores = self._put(shaped.reshape(-1))
        if algo.advantage == "reinforce_pp":
            kl = algos.kl_estimate(old_logp, ref_logp, loss_mask, kind="k1", log_ratio_clamp=algo.logratio_clamp,
                                   clamp=algo.kl_clamp)
            token_rewards = algos.kl_penalty_rewards(scores, kl, loss_mask, beta=algo.kl_coef)
            advantages = algos.reinforce_pp_advantages(token_rewards, loss_mask, gamma=algo.gamma)
        elif algo.advantage == "gae":
            with self._on_mesh():
                old_values = self.value_fn(self.state.critic_params, tokens, attn)
            kl = algos.kl_estimate(old_logp, ref_logp, loss_mask, kind="k1", log_ratio_clamp=algo.logratio_clamp,
                                   clamp=algo.kl_clamp)
            token_rewards = algos.kl_penalty_rewards(scores, kl, loss_mask, beta=algo.kl_coef)
            gae = algos.gae_advantages(token_rewards, old_values, loss_mask, gamma=algo.gamma, lam=algo.gae_lambda)
            advantages, returns = gae.advantages, gae.returns
        batch = RLBatch(tokens=tokens, attention_mask=attn, loss_mask=loss_mask, advantages=advantages,
                        old_logp=old_logp, ref_logp=ref_logp, sampler_logp=sampler_logp,
                        old_values=old_values, returns=returns, denominator=jnp.float32(0.0),
                        num_tokens=jnp.float32(0.0))
        step_metrics = self._optimise(batch)
        timing["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        new_step = step + 1
        self.state = self.state._replace(step=jnp.int32(new_step))
        if algo.ref_update_every and new_step % algo.ref_update_every == 0:
            self.state = self.state._replace(ref_params=jax.tree.map(jnp.copy, self.state.params))
        self.push_weights(self.state.params)
        timing["weight_sync"] = time.perf_counter() - t0

        completion_tokens = float(loss_mask_np.sum())
        metrics: dict[str, Any] = {
            "reward/total": float(rewards.mean()),
            **{f"reward/{k}": float(v.mean()) for k, v in comps.items()},
            "reward/failures": int(sum(reward_result.num_errors.values()) + sum(reward_result.num_timeouts.values())),
            "accuracy": float(self._accuracy(comps).mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/clipped_frac": float(clipped.mean()),
            "groups_kept_frac": float(keep[:, 0].mean()),
            "trainer_sampler_kl": float(algos.loss_numerator(
                algos.kl_estimate(sampler_logp, old_logp, loss_mask, kind="k3"), loss_mask, "token_mean")
                / max(completion_tokens, 1.0)),
            "weight_version_min": int(min(versions)),
            **step_metrics,
        }
        total_time = sum(timing.values())
        timing["tokens_per_s"] = completion_tokens / max(total_time, 1e-9)
        return {"metrics": metrics, "timing": timing}

    def _accuracy(self, comps: dict[str, np.ndarray]) -> np.ndarray:
        for name, v in comps.items():
            if "accuracy" in name or name in ("countdown", "multiple_choice", "code_tests"):
                return v
        return np.zeros(1)

    def _optimise(self, batch: RLBatch) -> dict[str, float]:
        """μ passes over the rollout batch, ``num_minibatches`` optimizer steps each."""
        algo = self.config.algo
        n = batch.tokens.shape[0]
        mb = n // algo.num_minibatches
        sums: dict[str, float] = {}
        count = 0
        for _ in range(algo.num_epochs):
            key, perm_key = jax.random.split(self.state.key)
            self.state = self.state._replace(key=key)
            order = np.asarray(jax.random.permutation(perm_key, n)) if algo.num_minibatches > 1 else np.arange(n)
            for i in range(algo.num_minibatches):
                idx = order[i * mb:(i + 1) * mb]
                minibatch = jax.tree.map(lambda x: x[idx] if x.ndim else x, batch)
                if not bool(jnp.any(minibatch.loss_mask)):  # e.g. dynamic sampling dropped every group
                    log.info("step %d: a mini-batch has no token to train on; no optimizer step", int(self.state.step))
                    continue
                den = algos.loss_denominator(minibatch.loss_mask, algo.loss_agg,
                                             max_len=self.config.rollout.max_new_tokens)
                minibatch = minibatch._replace(denominator=jnp.maximum(den, 1.0),
                                               num_tokens=jnp.sum(minibatch.loss_mask).astype(jnp.float32))
                with self._on_mesh():
                    self.state, m = self.train_step(self.state, minibatch, self.hparams)
                m = jax.device_get(m)
                if m["skipped"]:
                    log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s): update skipped",
                                int(self.state.step), m["loss"], m["grad_norm"])
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["skipped"] = sums.get("skipped", 0.0)
        return out

    # ------------------------------------------------------------------------------ evaluation

    def evaluate(self, num_prompts: int | None = None) -> dict[str, float]:
        """Accuracy, pass@k and cons@k on held-out prompts with the current policy."""
        from r1jax.eval import majority_correct, mean_pass_at_k  # noqa: PLC0415
        from r1jax.rewards.parsing import extract_final_answer  # noqa: PLC0415

        ecfg = self.config.eval
        count = min(num_prompts or ecfg.num_prompts, len(self.eval_set))
        examples = [self.eval_set[i] for i in range(count)]
        _, samples, _ = self.generate(examples, n=ecfg.num_samples, temperature=ecfg.temperature,
                                      seed=_step_seed(self.config.run.seed, 0, salt=1), first_index=0)
        total, comps, _, texts = self.score(examples, samples, int(self.state.step))
        acc = self._accuracy(comps)
        lengths = np.array([[len(s) for s in grp] for grp in samples], np.float32)
        out = {"eval/accuracy": float(acc.mean()), "eval/reward": float(total.mean()),
               "eval/response_length": float(lengths.mean()),
               **{f"eval/{name}": float(v.mean()) for name, v in comps.items()}}
        if acc.ndim == 2:
            for k, v in mean_pass_at_k(acc > 0.5, ecfg.ks).items():
                out[f"eval/pass@{k}"] = float(v)
            # cons@k: the majority answer of the first k samples, scored by the accuracy reward of a
            # sample that gave it (so any task's accuracy rule decides equivalence to the reference).
            n = ecfg.num_samples
            answers = [[_normalise(extract_final_answer("", texts[i * n + j])) for j in range(n)] for i in range(count)]
            def scored_correct(answer, i):  # the accuracy reward of a sample that gave this answer
                return bool(acc[i, answers[i].index(answer)] > 0.5)

            for k in ecfg.ks:
                out[f"eval/cons@{k}"] = float(majority_correct(answers, range(count), k, scored_correct).mean())
        return out

    # ------------------------------------------------------------------------------ the run

    def run(self) -> list[dict[str, Any]]:
        """Trains to ``run.steps``; returns the per-step records (also in metrics.jsonl)."""
        cfg = self.config
        writer = MetricsWriter(self.run_dir, total_steps=cfg.run.steps, tensorboard=cfg.run.tensorboard,
                               progress=cfg.run.progress, start_step=self.start_step)
        records = []
        try:
            for step in range(self.start_step, cfg.run.steps):
                out = self.rl_step()
                metrics = out["metrics"]
                if cfg.eval.every and (step + 1) % cfg.eval.every == 0:
                    metrics.update(self.evaluate())
                writer.write(step, metrics, timing=out["timing"])
                records.append({"step": step, **metrics})
                done = step + 1
                if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == cfg.run.steps:
                    self.save()
        finally:
            writer.close()
        if cfg.checkpoint.export_hf:
            self.export(self.run_dir / "hf")
        return records

    def export(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes the policy as a Hugging Face directory (weights, config, tokenizer)."""
        directory = pathlib.Path(directory)
        save_pretrained(self.state.params, self.model_cfg, directory)
        self.tokenizer.save(directory)
        return directory


def _normalise(answer: str | None) -> str | None:
    return None if answer is None or not answer.strip() else " ".join(answer.split())


def run_from_cli(config_path: str, overrides: Sequence[str]) -> int:
    """``r1jax train CONFIG [key=value ...]``."""
    cfg = load_config(ExperimentConfig, config_path, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    print("before:", before)
    trainer.run()
    after = trainer.evaluate()
    print("after:", after)
    return 0


def eval_from_cli(config_path: str, overrides: Sequence[str]) -> int:
    """``r1jax eval CONFIG [key=value ...]``: evaluates ``model.path`` (or the run's latest checkpoint)."""
    import json  # noqa: PLC0415

    cfg = load_config(ExperimentConfig, config_path, overrides)
    trainer = Trainer(cfg)
    print(json.dumps(trainer.evaluate(), indent=2))
    return 0
