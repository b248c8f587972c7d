"""Training configuration: one dataclass per algorithm, `paper` and `smoke` presets, `--set` overrides.

The `paper` preset holds the published numbers (SAC+AE appendix B, table 4) so that the paper's
configuration is what a user gets without flags. `smoke` shrinks everything for tests and CI.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

from distractors import DISTRACTORS
from sacae_deploy.contract import MAX_SEED, PADDING_RULE
from sacae_deploy.errors import ConfigError
from sacae_deploy.policy import MAX_THREADS
from sacae_deploy.sim.envs import DEFAULT_ACTION_REPEAT, SAC_AE_ACTION_REPEAT
from sacae_deploy.sim.rendering import MAX_RENDER_SIZE


@dataclass
class CommonConfig:
    """Fields every algorithm shares: environment, schedule, logging and checkpointing."""

    algo: str = ""
    env: str = "cartpole-swingup"
    seed: int = 1
    env_steps: int = 500_000  # environment steps (the unit of the published tables)
    action_repeat: int = 0  # 0 = the paper's per-domain table
    episode_length: int = 1000  # environment steps per episode
    image_size: int = 84
    frame_stack: int = 3
    camera_id: int = 0
    replay_capacity: int = 1_000_000  # transitions (agent steps)
    seed_steps: int = 1000  # random-policy agent steps before learning (SAC+AE B.3: 1000 seed observations)
    eval_every: int = 10_000  # environment steps
    eval_episodes: int = 10
    eval_mean_action: bool = True
    checkpoint_every: int = 10_000  # environment steps; a checkpoint is also written at the end of a run
    save_video: bool = False  # an mp4 of the first eval episode at each evaluation
    device: str = "auto"
    # The kernels (train.torch_utils.kernels): plain PyTorch, or train.fast's CPU kernels (the same
    # math); auto = fast-cpu on a CPU, plain on a GPU. Checkpoints do not depend on it.
    backend: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = all cores
    distractors: str = "none"


@dataclass
class SacConfig(CommonConfig):
    """SAC+AE, SAC:pixel and SAC:state (SAC+AE appendix B, table 4)."""

    batch_size: int = 128
    discount: float = 0.99
    hidden_dim: int = 1024
    feature_dim: int = 50
    num_conv_layers: int = 4
    num_filters: int = 32
    critic_lr: float = 1e-3
    critic_beta: float = 0.9
    critic_tau: float = 0.01  # tau_Q
    encoder_tau: float = 0.05  # tau_enc
    critic_target_update_freq: int = 2
    actor_lr: float = 1e-3
    actor_beta: float = 0.9
    actor_update_freq: int = 2
    actor_log_std_min: float = -10.0
    actor_log_std_max: float = 2.0
    encoder_lr: float = 1e-3  # autoencoder learning rate
    decoder_lr: float = 1e-3
    decoder_update_freq: int = 1
    decoder_latent_lambda: float = 1e-6  # lambda_z
    decoder_weight_lambda: float = 1e-7  # lambda_theta
    reconstruction_bits: int = 5
    init_temperature: float = 0.1
    alpha_lr: float = 1e-4
    alpha_beta: float = 0.5
    updates_per_step: int = 1
    bf16: bool = False  # bf16 autocast of the conv passes: optional, and it changes rounding


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sac": {
        "paper": {},
        "smoke": dict(
            env_steps=800,
            episode_length=200,
            image_size=32,
            replay_capacity=2000,
            seed_steps=40,
            eval_every=400,
            eval_episodes=1,
            checkpoint_every=400,
            batch_size=16,
            hidden_dim=32,
            feature_dim=16,
            num_filters=8,
        ),
    },
}

# algorithm name -> (config class, preset family). SLAC registers itself in train/slac.
ALGOS: dict[str, tuple[type[CommonConfig], str]] = {
    "sac-ae": (SacConfig, "sac"),
    "sac-pixel": (SacConfig, "sac"),
    "sac-state": (SacConfig, "sac"),
}


def _coerce(name: str, kind: Callable[[str], Any] | type, text: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {name}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--set {name}={text}: expected {kind.__name__}") from None


def parse_sets(items: list[str]) -> dict[str, str]:
    """Split `KEY=VALUE` strings; values stay text until the config knows their type."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def resolve(algo: str, preset: str = "paper", base: dict[str, Any] | None = None, /, **overrides: Any) -> CommonConfig:
    """Build the fully resolved config: class defaults, then preset (or `base`, a saved config.json
    being resumed), then explicit overrides.

    Overrides given as strings (from `--set`) are coerced to the field's type; unknown keys raise
    (positional-only parameters: an override named `preset` is an unknown key, not a clash).
    """
    if algo not in ALGOS:
        raise ConfigError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")
    cls, family = ALGOS[algo]
    presets = PRESETS[family]
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    types = {f.name: type(f.default) for f in fields(cls)}
    # A resumed run's config.json may name fields this version no longer has.
    values = {k: v for k, v in (presets[preset] if base is None else _upgrade(base)).items() if k in types}
    for key, value in overrides.items():
        if key not in types:
            raise ConfigError(f"unknown config key {key!r} for {algo}")
        values[key] = _coerce(key, types[key], value) if isinstance(value, str) and types[key] is not str else value
    values["algo"] = algo
    _check_types(cls, values)
    cfg = cls(**values)
    if cfg.action_repeat == 0:
        cfg.action_repeat = default_action_repeat(cfg)
    validate(cfg)
    if cfg.threads > MAX_THREADS:  # here, not in validate: exporting a run made on a bigger machine is fine
        raise ConfigError(f"threads must be at most {MAX_THREADS} (this machine's cores; 0 = all), got {cfg.threads}")
    return cfg


def default_action_repeat(cfg: CommonConfig) -> int:
    table = getattr(cfg, "action_repeat_table", None) or SAC_AE_ACTION_REPEAT
    domain = cfg.env.split("-", 1)[0]
    return table.get(domain, DEFAULT_ACTION_REPEAT)


# Bounds on config values, by field name (a config checks the fields it has). The networks,
# optimizers and environments reject or silently misbehave on anything else, deep inside a run;
# checked here, `--set` values and a resumed or exported run's config.json fail in one line.
AT_LEAST_ONE = ("episode_length", "image_size", "frame_stack", "replay_capacity", "eval_every", "eval_episodes",
                "checkpoint_every", "action_repeat", "batch_size", "hidden_dim", "feature_dim", "num_conv_layers",
                "num_filters", "critic_target_update_freq", "actor_update_freq", "decoder_update_freq",
                "model_batch_size", "sequence_length", "base_depth", "z1_dim", "z2_dim", "model_hidden",
                "seed_episodes")
NON_NEGATIVE = ("env_steps", "seed_steps", "threads", "updates_per_step", "pretrain_updates",
                "critic_lr", "actor_lr", "encoder_lr", "decoder_lr", "alpha_lr", "model_lr", "decoder_latent_lambda",
                "decoder_weight_lambda", "std_grad_clip", "random_action_scale")
POSITIVE = ("init_temperature", "decoder_variance", "actor_std_scale")
UNIT_INTERVAL = ("discount", "critic_tau", "encoder_tau", "tau")  # [0, 1]
ADAM_BETAS = ("critic_beta", "actor_beta", "alpha_beta")  # [0, 1), as torch.optim.Adam requires
MIN_CAMERA_ID = -1  # dm_control's free camera; the model's own cameras are checked when the env is built
# Upper bounds on sizes: 4x the papers' values or more, yet no single one can allocate absurd memory
# (networks and activations grow with their square). Frames at most MAX_RENDER_SIZE (sim/rendering.py).
AT_MOST = {"image_size": MAX_RENDER_SIZE, "frame_stack": 16, "num_conv_layers": 16, "num_filters": 256,
           "feature_dim": 1024, "hidden_dim": 4096, "batch_size": 1024, "model_batch_size": 256,
           "sequence_length": 64, "z1_dim": 1024, "z2_dim": 1024, "model_hidden": 4096, "base_depth": 128}


def bounds_help() -> str:
    """The upper bounds as `--help` states them."""
    return ", ".join(f"{name} {bound}" for name, bound in AT_MOST.items()) + f", threads {MAX_THREADS} (the cores)"


def _check_types(cls: type[CommonConfig], values: dict[str, Any]) -> None:
    """Each value has its field's type, before the config is built (a hand-edited config.json can
    hold anything); floats are finite."""
    kinds = {f.name: type(f.default) for f in fields(cls)}
    for name, value in values.items():
        kind = kinds[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number if kind is float else isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value}")


def validate(cfg: CommonConfig) -> None:
    """Raise ConfigError for a value no run can use."""
    names = {f.name for f in fields(cfg)}

    def check(group: tuple[str, ...], ok: Callable[[Any], bool], rule: str) -> None:
        for name in names.intersection(group):
            if not ok(getattr(cfg, name)):
                raise ConfigError(f"{name} must be {rule}, got {getattr(cfg, name)}")

    check(AT_LEAST_ONE, lambda v: v >= 1, "positive")
    for name, bound in AT_MOST.items():
        why = " (MuJoCo's offscreen framebuffer is 640x480)" if name == "image_size" else ""
        check((name,), lambda v, bound=bound: v <= bound, f"at most {bound}{why}")
    check(NON_NEGATIVE, lambda v: v >= 0, "non-negative")
    check(POSITIVE, lambda v: v > 0, "positive")
    check(UNIT_INTERVAL, lambda v: 0 <= v <= 1, "in [0, 1]")
    check(ADAM_BETAS, lambda v: 0 <= v < 1, "in [0, 1)")
    check(("seed",), lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]")
    check(("camera_id",), lambda v: v >= MIN_CAMERA_ID, f"a camera index (>= 0) or {MIN_CAMERA_ID} (free camera)")
    check(("reconstruction_bits",), lambda v: 1 <= v <= 8, "in [1, 8] (bits of a uint8 pixel)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend must be {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if cfg.backend == "fast-cpu" and cfg.device == "cuda":
        raise ConfigError("backend fast-cpu runs on the CPU, not with device cuda (use backend auto or plain)")
    if cfg.distractors not in DISTRACTORS:
        raise ConfigError(f"distractors must be one of {', '.join(DISTRACTORS)}, got {cfg.distractors!r}")
    if cfg.episode_length % cfg.action_repeat:
        raise ConfigError(f"episode_length {cfg.episode_length} is not a multiple of action_repeat {cfg.action_repeat}")
    low, high = getattr(cfg, "actor_log_std_min", 0.0), getattr(cfg, "actor_log_std_max", 1.0)
    if low >= high:
        raise ConfigError(f"actor_log_std_min ({low}) must be below actor_log_std_max ({high})")
    if isinstance(cfg, SacConfig) and cfg.algo != "sac-state" \
            and conv_output_size(cfg.image_size, cfg.num_conv_layers) < 1:
        raise ConfigError(f"image_size {cfg.image_size} is too small for {cfg.num_conv_layers} conv layers "
                          f"(3x3, the first with stride 2): at least {4 * cfg.num_conv_layers - 1}")


def conv_output_size(image_size: int, num_layers: int) -> int:
    """Spatial size after SAC+AE's conv trunk (B.2): 3x3 convs, stride 2 first then stride 1, no padding."""
    size = (image_size - 3) // 2 + 1
    return size - 2 * (num_layers - 1)


BACKENDS = ("auto", "plain", "fast-cpu")
# The speed switches that `backend` replaced, with their defaults (config.json files written before).
LEGACY_SPEED_FIELDS = {"channels_last": True, "reuse_trunk": True, "foreach_adam": True, "deconv_conv_grad": True,
                       "fused_reconstruction": True, "inplace_relu": True, "prepare_once": True, "encode_chunk": 512,
                       "distinct_frames": True, "cuda_graphs": True}


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json from before `backend`: its speed switches at their defaults are backend auto;
    any switched away from its default (the reference implementation's way) is backend plain."""
    old = {k: data[k] for k in LEGACY_SPEED_FIELDS if k in data}
    if not old or "backend" in data:
        return data
    changed = any(v != LEGACY_SPEED_FIELDS[k] for k, v in old.items())
    return {**data, "backend": "plain" if changed else "auto"}


def to_dict(cfg: CommonConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> CommonConfig:
    """Rebuild a config saved in a run's config.json (the exporter's input), as it was resolved."""
    if not isinstance(data, dict) or data.get("algo") not in ALGOS:
        raise ConfigError(f"not a run config: algo must be one of {', '.join(ALGOS)}")
    cls, _ = ALGOS[data["algo"]]
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in _upgrade(data).items() if k in known}
    _check_types(cls, values)
    cfg = cls(**values)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------- SLAC
# SLAC (Lee et al. 2020) table 1: action repeat per DeepMind Control domain.
SLAC_ACTION_REPEAT = {
    "cheetah": 4,
    "walker": 2,
    "ball_in_cup": 4,
    "finger": 1,
    "cartpole": 4,
    "reacher": 4,
}
# SLAC appendix C: the best decoder pixel variance sigma^2 per task (figure 3); 0.1 elsewhere.
SLAC_DECODER_VARIANCE = {"walker": 0.4, "ball_in_cup": 0.04}
SLAC_DEFAULT_DECODER_VARIANCE = 0.1


@dataclass
class SlacConfig(CommonConfig):
    """SLAC (Lee et al. 2020): section 5, appendices B and C. Sizes are the paper's unless noted."""

    # The per-domain action repeat (table 1), read by `default_action_repeat` when action_repeat is 0.
    action_repeat_table: ClassVar[dict[str, int]] = SLAC_ACTION_REPEAT

    image_size: int = 64  # B: 64x64 frames; the conv stack below is built for exactly this size
    frame_stack: int = 1  # the env returns single frames; the agent keeps its own history
    replay_capacity: int = 100_000  # C: "a smaller replay buffer size of 100000"
    seed_steps: int = 0  # 0 = seed_episodes random episodes, in agent steps
    seed_episodes: int = 10  # C: pretraining data from 10 random episodes
    pretrain_updates: int = 50_000  # C: model updates before the agent starts learning
    eval_mean_action: bool = False  # C: evaluation uses the stochastic policy, as behaviour does
    # Latent variable model (appendix B).
    z1_dim: int = 32
    z2_dim: int = 256
    model_hidden: int = 256  # the two fully connected layers of every Gaussian (and reward) network
    base_depth: int = 32  # conv widths base*(1, 2, 4, 8, 8); decoder base*(8, 4, 2, 1); features 8*base
    decoder_variance: float = 0.0  # sigma^2 of the pixel likelihood; 0 = the paper's per-domain choice
    std_grad_clip: float = 10.0  # B: gradient on the pre-softplus std clipped to [-10, 10]
    model_lr: float = 1e-4
    model_batch_size: int = 32
    sequence_length: int = 8  # C: fixed-length sequences of 8 (9 frames, 8 actions per window)
    # Actor-critic (appendix B, C: SAC's hyper-parameters).
    history_length: int = 8  # frames the actor sees (and history_length-1 actions between them)
    history_padding: str = PADDING_RULE  # written into exported ONNX metadata
    hidden_dim: int = 256
    batch_size: int = 256
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    init_log_alpha: float = 0.0
    actor_log_std_min: float = -20.0
    actor_log_std_max: float = 2.0
    actor_std_scale: float = 2.0  # C: the pre-tanh Gaussian's scale is multiplied by 2 (DeepMind Control)
    random_action_scale: float = 2.0  # C: seed actions tanh(N(0, 2^2))
    updates_per_step: int = 1  # C: one model and one SAC gradient step per agent step
    bf16: bool = False  # bf16 autocast of the conv encoder/decoder: different rounding, hence off

    def __post_init__(self) -> None:
        """Fill the values that depend on the env (action repeat, seed steps, pixel variance) and
        reject what the architecture cannot do."""
        domain = self.env.split("-", 1)[0]
        if self.action_repeat == 0:
            self.action_repeat = default_action_repeat(self)
        if self.seed_steps == 0 and self.action_repeat > 0:
            self.seed_steps = self.seed_episodes * self.episode_length // self.action_repeat
        if self.decoder_variance == 0.0:
            self.decoder_variance = SLAC_DECODER_VARIANCE.get(domain, SLAC_DEFAULT_DECODER_VARIANCE)
        if self.image_size != 64:
            raise ConfigError(f"slac needs image_size 64 (the conv encoder/decoder of appendix B), "
                              f"got {self.image_size}")
        if self.frame_stack != 1:
            raise ConfigError(f"slac keeps its own frame history; frame_stack must be 1, got {self.frame_stack}")
        if self.history_padding != PADDING_RULE:
            raise ConfigError(f"history_padding must be {PADDING_RULE!r}, got {self.history_padding!r}")
        if not 1 <= self.history_length <= self.sequence_length:
            raise ConfigError(f"history_length must be in [1, sequence_length={self.sequence_length}], "
                              f"got {self.history_length}")


PRESETS["slac"] = {
    "paper": {},
    "smoke": dict(
        env_steps=320,
        episode_length=40,
        replay_capacity=1000,
        seed_episodes=2,
        pretrain_updates=5,
        eval_every=160,
        eval_episodes=1,
        checkpoint_every=160,
        z1_dim=4,
        z2_dim=8,
        model_hidden=16,
        base_depth=2,
        hidden_dim=16,
        batch_size=8,
        model_batch_size=4,
        threads=1,  # tiny networks: a second intra-op thread only adds synchronisation
    ),
}
ALGOS["slac"] = (SlacConfig, "slac")
