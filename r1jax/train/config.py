"""The experiment config: one frozen dataclass per section, loaded by ``r1jax train CONFIG``.

Sections owned elsewhere are imported (``model`` → :mod:`r1jax.models`, ``data`` →
:mod:`r1jax.data`, ``reward`` → :mod:`r1jax.rewards`, ``mesh`` → :mod:`r1jax.models.sharding`);
the sections here describe the algorithm, the optimiser, the rollout, checkpoints and logging.
Every value is checked when the config is loaded, before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import pathlib
import sys
from typing import Any, Mapping, Sequence

from r1jax import algos
from r1jax.config import ConfigError, field, from_dict, read_config
from r1jax.data import TASK_REWARDS, DataConfig
from r1jax.models import ModelConfig
from r1jax.models.config import ATTENTION_IMPLS
from r1jax.models.sharding import MeshConfig
from r1jax.rewards import RewardConfig, get_reward, list_rewards
from r1jax.train.buffer import BUFFER_POLICIES

__all__ = [
    "AlgoConfig", "OptimConfig", "AsyncConfig", "RolloutConfig", "CheckpointConfig", "EvalConfig", "RunConfig",
    "ModelSection", "KernelConfig", "ExperimentConfig", "load_experiment", "import_user_modules",
    "microbatch_token_budget",
]

MICROBATCH_TOKENS = 1024
"""Default token budget of a micro-batch, measured (one pinned core, update seconds, in one process, interleaved).
Session 6, f32, the reference forward on every row at once: 8 × 8 × 64 tokens 1.77 at 1 micro-batch of 4608
tokens, 1.64 at 2304, 1.55-1.57 at 1152 and 576; 16 × 8 × 128: 9.7 at 17408 tokens, 6.05-6.19 from 4352 down
to 544. Session 11, the forwards without gradient micro-batched too: 8 × 8 × 64, f32 1.33 at 1152 tokens, 1.28
at 576, 1.38 at 288; bf16 0.97 at 2304, 0.90 at 1152, 0.86 at 576; 16 × 8 × 128 bf16: 3.51 at 2176, 3.48 at
1088, 3.43 at 544. Session 15, bf16 + bf16 KV cache, 8 × 8 × 64, one process, interleaved: 769 ms at 576, 806 at
1152, 935 at 2304, 847 at 288. Rows of more than this many tokens train one per micro-batch.

It is the default on the CPU backend only (``algo.microbatch_tokens: 0``): on an H200 (session 17,
``benchmarks/gpu.py``, 128 rows of 1024 tokens, 8 micro-batches asked for) it split the update into 128
one-row micro-batches of small matmuls, 534k kernel launches a step; see :func:`microbatch_token_budget`."""


def microbatch_token_budget(microbatch_tokens: int | None, platform: str) -> int | None:
    """The token bound of a micro-batch on ``platform`` (``jax.default_backend()``): an explicit
    ``algo.microbatch_tokens`` as set; ``0`` resolves to :data:`MICROBATCH_TOKENS` on ``"cpu"``, where the
    budget keeps activations in cache, and to ``None`` (exactly ``num_microbatches``) on an accelerator."""
    if microbatch_tokens == 0:
        return MICROBATCH_TOKENS if platform == "cpu" else None
    return microbatch_tokens


DECODE_WINDOW = 32
"""Default ``rollout.decode_window``, measured (session 15, one pinned core, bfloat16 compute + cache, the random
Qwen2 of ``benchmarks/grpo_step.py``): in one process at 8 prompts x 16 x 128 tokens, the rollout 1.12 / 1.13 s
with the whole buffer vs 1.00 / 1.05 s with W = 32 doubling (1.10x); in ``--scaling`` (growth by W then) the same
step at T = 64 (0.98 vs 0.97 s) and the rollout 1.09x faster at 16 x 128, 1.17x at 32 x 128; ``--scaling`` with
doubling (``results/grpo_step_scaling_default_window.json``): the rollout 1.08x at 16 x 128, 1.14x at 32 x 128, the
same step at T = 64. Doubling keeps the compiles to log2(max_new_tokens / W) + 1 (11 at 32768 tokens)."""


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    """The RL algorithm: GRPO (and its variants) or PPO with GAE.

    Defaults are GRPO as in DeepSeekMath / DeepSeek-R1: group-normalised outcome advantages,
    symmetric clip 0.2, KL to the reference in the loss with the k3 estimator, seq-mean-token-mean
    aggregation. The variants are switches: Dr.GRPO = ``std_scaling: none`` +
    ``loss_agg: seq_mean_token_sum_norm``; DAPO = ``eps_high: 0.28`` + ``loss_agg: token_mean``
    + ``dynamic_sampling: true`` + ``overlong_buffer > 0`` + ``kl_coef: 0``; GSPO = ``policy_loss: gspo``;
    CISPO = ``policy_loss: cispo``; RLOO / REINFORCE++ = ``advantage: rloo | reinforce_pp``.

    ``advantage`` and ``policy_loss`` name entries of the registries :data:`r1jax.algos.ADVANTAGES`
    and :data:`r1jax.algos.POLICY_LOSSES` (modules listed in ``run.imports`` may add entries).
    Every number here is a traced hyper-parameter of the update (:class:`r1jax.train.state.Hyper`),
    except the counts and switches that shape the computation.
    """

    name: str = field("grpo", choices=("grpo", "ppo"), help="grpo: no critic; ppo: critic + GAE")
    advantage: str = field("grpo", choices=lambda: algos.ADVANTAGES.names(),
                           help="advantage estimator (r1jax.algos.ADVANTAGES; ppo needs one with a critic)")
    std_scaling: str = field(
        "group", choices=algos.STD_SCALINGS,
        help="GRPO: divide by the group std, the batch std, or not at all (Dr.GRPO)")
    std_ddof: int = field(0, ge=0, le=1, help="GRPO std: 0 population (DeepSeekMath), 1 unbiased (TRL, verl)")
    whiten_advantages: bool = field(True, help="PPO: normalise GAE advantages over the batch (as verl and TRL)")
    policy_loss: str = field("clip", choices=lambda: algos.POLICY_LOSSES.names(),
                             help="surrogate objective (r1jax.algos.POLICY_LOSSES)")
    eps_low: float = field(0.2, gt=0.0, le=1.0, help="ε_low: ratio floor 1 - ε_low (CISPO: of the IS weight)")
    eps_high: float = field(0.2, gt=0.0, help="ε_high: ratio ceiling 1 + ε_high (DAPO clip-higher: 0.28)")
    dual_clip: float | None = field(None, gt=1.0, help="dual-clip constant c (Ye et al. 2020), None = off")
    loss_agg: str = field("seq_mean_token_mean", choices=algos.AGGREGATION_MODES, help="loss aggregation")
    kl_coef: float = field(0.001, ge=0.0, help="β: KL-to-reference weight (in the loss for GRPO, in the reward for "
                                              "PPO / REINFORCE++); 0 = no reference model at all")
    kl_estimator: str = field("k3", choices=tuple(algos.KL_ESTIMATORS), help="KL estimator (Schulman 2020)")
    kl_clamp: float | None = field(10.0, gt=0.0, help="clamp of the per-token KL estimate, None = off")
    log_ratio_clamp: float = field(algos.DEFAULT_LOG_RATIO_CLAMP, gt=0.0, help="clamp of log-ratios before exp")
    ref_update_every: int = field(400, ge=0, help="reference ← policy every N steps (paper: 400); 0 = never")
    entropy_coef: float = field(0.0, ge=0.0, help="entropy bonus weight")
    num_epochs: int = field(1, ge=1, help="μ: optimisation passes over each rollout batch")
    num_minibatches: int = field(1, ge=1, help="optimizer steps per pass (the batch is split)")
    num_microbatches: int = field(1, ge=1, help="gradient-accumulation splits of each mini-batch (exact)")
    microbatch_tokens: int | None = field(
        0, ge=0, help="more splits, as few as keep each micro-batch within this many tokens "
                      "(rows × row length; a multiple of num_microbatches dividing the rows): activations that "
                      f"stay in cache; None = exactly num_microbatches; 0 = the backend's default ({MICROBATCH_TOKENS} "
                      "on CPU, None on GPU / TPU)")
    packing: bool = field(False, help="train on sequences packed several to a row (segment ids): no padding "
                                      "waste, fewer distinct shapes; the loss is unchanged")
    pack_length: int = field(0, ge=0, help="packed row length in tokens; 0 = longest prompt + rollout.max_new_tokens")
    share_prompts: bool = field(True, help="without packing: the forwards (policy, reference, critic) run each "
                                           "prompt once for its group's completions, which attend to its keys and "
                                           "values; the same loss, (G - 1) x prompt tokens fewer per group")
    # PPO
    gamma: float = field(1.0, ge=0.0, le=1.0, help="discount γ (PPO, REINFORCE++)")
    gae_lambda: float = field(0.95, ge=0.0, le=1.0, help="PPO GAE λ")
    value_coef: float = field(0.5, ge=0.0, help="PPO value-loss weight")
    value_clip: float | None = field(0.2, gt=0.0, help="PPO value clipping range, None = off")
    critic_lr_scale: float = field(1.0, gt=0.0, help="critic learning rate = optim.lr × this")
    # DAPO pieces
    dynamic_sampling: bool = field(False, help="DAPO: drop groups whose rewards are all equal")
    overlong_buffer: int = field(0, ge=0, help="DAPO soft overlong punishment buffer (tokens); 0 = off")
    overlong_penalty: float = field(1.0, ge=0.0, help="DAPO overlong penalty at the hard limit")
    # rollout / trainer mismatch
    tis: str = field("off", choices=("off",) + algos.IS_LEVELS, help="truncated importance sampling level")
    tis_cap: float = field(2.0, gt=0.0, help="TIS cap C")
    tis_mode: str = field("truncate", choices=algos.IS_MODES, help="clip weights at C, or mask tokens above C")

    def check(self) -> None:
        if self.packing and algos.POLICY_LOSSES.entry(self.policy_loss).meta["sequence_level"]:
            raise ConfigError(f"algo.packing: policy_loss {self.policy_loss!r} is sequence-level (it reduces over "
                              f"each row) and cannot train on packed rows; set algo.packing: false")
        if self.packing and self.tis not in ("off", "token"):
            raise ConfigError(f"algo.packing: tis {self.tis!r} reduces over each row; use tis: token or no packing")
        needs_critic = algos.ADVANTAGES.entry(self.advantage).meta["needs_critic"]
        if self.name == "ppo" and not needs_critic:
            raise ConfigError(f"algo.advantage: ppo trains a critic; {self.advantage!r} uses none (use 'gae')")
        if self.name == "grpo" and needs_critic:
            raise ConfigError(f"algo.advantage: {self.advantage!r} needs a critic; set algo.name: ppo")

    @property
    def needs_critic(self) -> bool:
        return self.name == "ppo"

    @property
    def kl_in_reward(self) -> bool:
        """The estimator puts the KL penalty into the token rewards (PPO, REINFORCE++)."""
        return bool(algos.ADVANTAGES.entry(self.advantage).meta["kl_in_reward"])

    @property
    def uses_reference(self) -> bool:
        """A static switch: a reference model exists and its log-probs are computed only when β > 0."""
        return self.kl_coef > 0

    @property
    def passes(self) -> int:
        """Optimizer steps per rollout batch."""
        return self.num_epochs * self.num_minibatches


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and constant (or cosine) schedule, global-norm clipping."""

    lr: float = field(1e-5, gt=0.0, help="peak learning rate")
    schedule: str = field("constant", choices=("constant", "cosine"), help="after warm-up")
    warmup_steps: int = field(0, ge=0, help="linear warm-up optimizer steps")
    b1: float = field(0.9, ge=0.0, lt=1.0)
    b2: float = field(0.95, ge=0.0, lt=1.0)
    eps: float = field(1e-8, gt=0.0)
    weight_decay: float = field(0.0, ge=0.0)
    grad_clip: float | None = field(1.0, gt=0.0, help="global-norm clip, None = off")


@dataclasses.dataclass(frozen=True)
class AsyncConfig:
    """Asynchronous RL (YAML ``rollout.async``): a producer samples ahead of the trainer."""

    max_staleness: int = field(0, ge=0, help="K: step u's samples come from the policy after update max(0, u-K) "
                                           "(exactly, so runs are reproducible); 0 = synchronous")
    partial_tokens: int = field(0, ge=0, help="partial rollouts (K >= 2): sample new tokens in segments of this "
                                            "many; segment j of step u uses the policy after update u-K+j (at most "
                                            "u-1), so an interrupted sample continues under newer weights; 0 = off")


@dataclasses.dataclass(frozen=True)
class BufferConfig:
    """Which sampled prompt groups a step trains on (YAML ``rollout.buffer``; see r1jax.train.buffer)."""

    policy: str = field("fifo", choices=lambda: BUFFER_POLICIES.names(),
                        help="picks prompts_per_step of the step's groups (fifo, informative, freshest, or one a "
                             "run.imports module registers)")
    extra_prompts: int = field(0, ge=0, help="groups sampled per step beyond prompts_per_step, for the policy to "
                                           "choose among (the unchosen are dropped and logged)")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How samples are produced: in-process JAX engine, or remote rollout servers over gRPC."""

    mode: str = field("embedded", choices=("embedded", "remote"), help="embedded JAX engine or r1jax serve / vLLM")
    servers: tuple[str, ...] = field((), help="host:port of rollout servers (remote mode)")
    token: str | None = field(None, help="shared token for remote servers")
    timeout_s: float = field(600.0, gt=0.0, help="per-request timeout (remote)")
    weight_transport: str = field("grpc", choices=("grpc", "safetensors"), help="how weights reach remote servers")
    prompts_per_step: int = field(8, ge=1, help="prompts per RL step")
    group_size: int = field(8, ge=1, help="G: samples per prompt")
    temperature: float = field(1.0, gt=0.0, help="sampling temperature (also used by the trainer's log-probs)")
    top_p: float = field(1.0, gt=0.0, le=1.0)
    top_k: int = field(0, ge=0)
    max_new_tokens: int = field(64, ge=1)
    drop_finished_every: int | None = field(
        None, ge=1, help="embedded engine: every this many decode steps, go on with only the unfinished rows when "
                         "they fit half the batch (early stoppers stop costing compute; a compile per batch size); "
                         "None = decode each batch to its end")
    decode_window: int | None = field(
        DECODE_WINDOW, ge=1, help="embedded engine: start the KV cache at the prompt + W = this many slots and double "
                                  "the room after the prompt each time it fills (W, 2W, 4W, ...), so decode steps "
                                  "read at most twice the filled slots (a compile per cache size: log2(max_new_tokens "
                                  "/ W) + 1); None = the whole prompt + max_new_tokens buffer from the start")
    cache_dtype: str | None = field(
        None, choices=(None, "float32", "bfloat16"),
        help="embedded engine: KV-cache dtype (None = the parameter dtype); bfloat16 halves the decode attention's "
             "reads, and the sampled log-probs then differ from the trainer's by its rounding (on-policy GRPO "
             "recomputes them; trainer_sampler_kl reports the gap)")
    parallel_batches: int = field(
        1, ge=1, help="embedded engine: split each step's rollout into this many batches of whole groups, decoded "
                      "at once in as many threads (on a CPU with that many cores: XLA does not split a decode "
                      "step's small matmuls across cores); 1 = one batch")
    async_: AsyncConfig = field(default_factory=AsyncConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Which log-prob backend the trainer uses (see r1jax_kernels)."""

    logprob_backend: str = field(
        "auto", choices=("auto", "reference", "chunked", "pallas"),
        help="auto = chunked (on an H200 too: Pallas was 2.5x slower forward, 10x forward + backward); pallas "
             "runs on a CUDA GPU (its backward uses atomic adds: not bit-reproducible)")
    chunk_size: int | None = field(None, gt=0, help="vocabulary chunk of the chunked backend")
    fused: bool = field(False, help="GRPO: log-prob, entropy, ratio, surrogate and KL in one fused pass")
    interpret: bool = field(False, help="run Pallas kernels in interpret mode (CPU testing)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = field(0, ge=0, help="save every N steps (and at the end); 0 = only at the end")
    keep: int = field(3, ge=1, help="keep the last k checkpoints")
    resume: bool = field(True, help="resume from the latest checkpoint in the run directory")
    export_hf: bool = field(False, help="also export the final policy as a Hugging Face directory")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = field(0, ge=0, help="evaluate on held-out prompts every N steps (and before/after); 0 = before/after only")
    num_prompts: int = field(64, ge=1, help="held-out prompts")
    num_samples: int = field(1, ge=1, help="samples per prompt (pass@k / cons@k need k <= this)")
    ks: tuple[int, ...] = field((1,), ge=1, help="k of pass@k and cons@k")
    temperature: float = field(0.0, ge=0.0, help="0 = greedy")

    def check(self) -> None:
        if max(self.ks) > self.num_samples:
            raise ConfigError(f"eval.ks: k={max(self.ks)} exceeds eval.num_samples={self.num_samples}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = field("run", help="run name (a directory under out_dir)")
    out_dir: str = field("runs", help="where runs are written")
    seed: int = field(0, ge=0)
    steps: int = field(100, ge=0, help="RL steps")
    tensorboard: bool = field(True, help="write TensorBoard event files")
    progress: bool = field(True, help="progress bar in the terminal")
    imports: tuple[str, ...] = field((), help="modules or .py files imported before the config is checked "
                                            "(to register losses, advantage estimators, rewards)")
    max_skipped_in_a_row: int = field(5, ge=1, help="stop the run after this many consecutive skipped "
                                                   "(non-finite) updates")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The policy: a Hugging Face directory (``path``) or a fresh random model (``config``)."""

    path: str | None = field(None, help="Hugging Face model directory (config.json + safetensors)")
    tokenizer: str | None = field(None, help="tokenizer directory; None = the model directory")
    config: ModelConfig = field(default_factory=ModelConfig)
    compute_dtype: str | None = field(None, choices=(None, "float32", "bfloat16"),
                                      help="dtype of the weight matmuls' inputs (float32 accumulation; "
                                           "parameters, optimizer and log-probs stay as they are); "
                                           "None = the parameter dtype")
    scan_layers: bool | None = field(None, help="run the update's layers as one lax.scan (one compiled layer, "
                                                "for deep models) instead of unrolled (faster on XLA:CPU); "
                                                "None = the model's own setting")
    attention_blocks: int | None = field(None, ge=1, help="the update's attention in up to this many query blocks "
                                                        "(the same result, less work, a longer compile: for long "
                                                        "runs; 4 took 2-4% off benchmarks/grpo_step.py's bfloat16 "
                                                        "update); None = the model's own setting")
    attention_impl: str | None = field(None, choices=(None, *ATTENTION_IMPLS),
                                       help="the full-sequence forward's attention: 'cudnn' = cuDNN flash "
                                            "attention (NVIDIA GPUs, bfloat16 compute); None = the model's own")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def check(self) -> None:
        rows = self.rollout.prompts_per_step * self.rollout.group_size
        splits = self.algo.num_minibatches * self.algo.num_microbatches
        if rows % splits:
            raise ConfigError(
                f"algo.num_minibatches × algo.num_microbatches = {splits} must divide "
                f"rollout.prompts_per_step × rollout.group_size = {rows}")
        if self.rollout.mode == "remote" and not self.rollout.servers:
            raise ConfigError("rollout.servers: remote mode needs at least one host:port")
        if self.rollout.async_.max_staleness and self.algo.tis == "off":
            raise ConfigError(f"algo.tis: rollout.async.max_staleness={self.rollout.async_.max_staleness} trains on "
                              "samples of older policies; set algo.tis (token, sequence or geometric) so the loss "
                              "weights them by the importance ratio to the sampler's log-probs")
        partial = self.rollout.async_.partial_tokens
        if partial and self.rollout.async_.max_staleness < 2:
            raise ConfigError(f"rollout.async.partial_tokens: {partial} needs rollout.async.max_staleness >= 2 (with "
                              f"K={self.rollout.async_.max_staleness} every segment of step u would use the policy of "
                              "update u-1 anyway)")
        if partial >= self.rollout.max_new_tokens:
            raise ConfigError(f"rollout.async.partial_tokens: {partial} is not below rollout.max_new_tokens="
                              f"{self.rollout.max_new_tokens}, so no sample would continue under newer weights")
        if self.algo.overlong_buffer > self.rollout.max_new_tokens:
            raise ConfigError(f"algo.overlong_buffer: {self.algo.overlong_buffer} exceeds rollout.max_new_tokens="
                              f"{self.rollout.max_new_tokens}")
        if self.kernels.interpret and self.kernels.logprob_backend != "pallas":
            raise ConfigError("kernels.interpret: interpret mode is for the pallas backend; set "
                              "kernels.logprob_backend: pallas")
        for i, component in enumerate(self.reward.components):
            try:
                spec = get_reward(component.name)
            except KeyError:
                raise ConfigError(f"reward.components[{i}].name: no reward named {component.name!r}; "
                                  f"registered: {', '.join(list_rewards())}") from None
            if spec.kind == "external" and component.model is None and component.served_model is None:
                raise ConfigError(f"reward.components[{i}].model: {component.name!r} is an external reward: name the "
                                  "reward-model directory that scores it (made by `r1jax rm`), or set served_model")
            for key in ("model", "served_model"):
                if spec.kind == "rule" and getattr(component, key) is not None:
                    raise ConfigError(f"reward.components[{i}].{key}: {component.name!r} is a rule reward; only "
                                      "external rewards are scored by a reward model")
            if component.served_model is not None:
                if not component.served_model.strip():
                    raise ConfigError(f"reward.components[{i}].served_model: empty; name a reward model of "
                                      "`r1jax serve --reward-model NAME=DIR`")
                if component.model is not None:
                    raise ConfigError(f"reward.components[{i}].served_model: set either model (a directory, scored on "
                                      "the trainer) or served_model (a name, scored by the rollout servers), not both")
                if self.rollout.mode != "remote":
                    raise ConfigError(f"reward.components[{i}].served_model: {component.served_model!r} is scored by "
                                      "the rollout servers' Score RPC: it needs rollout.mode: remote (and "
                                      "rollout.servers); use model: DIR to score on the trainer")
        self._check_something_trains()
        if self.kernels.fused and (self.algo.name != "grpo" or self.algo.policy_loss != "clip"):
            raise ConfigError("kernels.fused: the fused kernel computes GRPO's clipped surrogate; "
                              "it needs algo.name: grpo and algo.policy_loss: clip")
        for key, path in (("model.path", self.model.path), ("model.tokenizer", self.model.tokenizer)):
            if path is not None and not pathlib.Path(path).is_dir():
                raise ConfigError(f"{key}: directory not found: {path}")
        if self.model.path is None and self.model.tokenizer is None:
            raise ConfigError("model.tokenizer: a random model (model.path unset) needs a tokenizer directory")

    def _check_something_trains(self) -> None:
        """Rejects configs whose every advantage is 0, or whose every sample fails its accuracy reward."""
        if self.rollout.group_size == 1 and algos.ADVANTAGES.entry(self.algo.advantage).meta["group_relative"]:
            raise ConfigError(
                f"rollout.group_size: with 1 sample per prompt every advantage of algo.advantage="
                f"{self.algo.advantage!r} is 0 (it compares the samples of a prompt), so nothing trains; "
                "use rollout.group_size >= 2, or algo.advantage=reinforce_pp")
        fits = TASK_REWARDS.get(self.data.task)
        accuracy = {c.name for c in self.reward.components if get_reward(c.name).accuracy}
        claimed = {name for names in TASK_REWARDS.values() for name in names}  # each scores some task's references
        if fits and accuracy and not accuracy & set(fits) and accuracy <= claimed:
            raise ConfigError(
                f"reward.components: {', '.join(sorted(accuracy))} cannot score the references of data.task="
                f"{self.data.task!r}, so every sample would fail; use the {' or '.join(fits)} reward "
                f"(e.g. reward.components=[{{name: {fits[0]}, weight: 1.0}}])")


def import_user_modules(names: Sequence[str], key: str = "run.imports") -> None:
    """Imports each module name or ``.py`` file of ``names`` (what ``run.imports`` lists).

    A file is imported once per resolved path (as module ``r1jax_user_<stem>_<hash>``), so a loss it
    registers is registered once however often a config naming it is loaded.

    Raises:
      ConfigError: naming ``key[i]`` and the module or file that cannot be imported.
    """
    for i, name in enumerate(names):
        where = f"{key}[{i}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: expected a module name or a .py file, got {name!r}")
        if name.endswith(".py"):
            path = pathlib.Path(name).resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: file not found: {name}")
            module_name = f"r1jax_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            if module_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[module_name]
                raise ConfigError(f"{where}: importing {name} failed: {type(e).__name__}: {e}") from e
        else:
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise ConfigError(f"{where}: cannot import module {name!r}: {e}") from e


def load_experiment(path: str | pathlib.Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Reads an experiment config, imports its ``run.imports`` and then validates it.

    The imports come first so that a loss, advantage estimator or reward they register is an
    allowed value of the config keys that name it.
    """
    data = read_config(path, overrides)
    run = data.get("run") or {}
    imports: Any = run.get("imports", ()) if isinstance(run, Mapping) else ()
    if isinstance(imports, str) or not isinstance(imports, Sequence):
        raise ConfigError(f"run.imports: expected a list of modules or .py files, got {imports!r}")
    import_user_modules(imports)
    return from_dict(ExperimentConfig, data)
