"""The facts a policy file carries: read from the run's config and from the environment itself
(built, never guessed), written as the contract's string-valued metadata_props."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sacae_deploy import __version__, contract as C


@dataclass(frozen=True)
class EnvFacts:
    """What the exported graph and its caller must agree on with the training environment."""

    action_dim: int
    action_low: list[float]
    action_high: list[float]
    control_timestep: float  # seconds per physics step (one camera frame)
    state_dim: int


def env_facts(cfg: Any) -> EnvFacts:
    """Build the run's DeepMind Control task (no rendering) and read its specs."""
    from train.envs import DMCEnv

    env = DMCEnv(cfg.env, seed=0, episode_length=cfg.episode_length, camera_id=cfg.camera_id)
    try:
        return EnvFacts(env.action_dim, env.action_low.tolist(), env.action_high.tolist(),
                        env.control_timestep, env.state_dim)
    finally:
        env.close()


def policy_metadata(cfg: Any, facts: EnvFacts, *, interface: str, frame_stack: int, image_size: int | None,
                    env_steps: int, exporter: str, torch_version: str,
                    extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every REQUIRED_KEYS entry plus provenance (training steps, exporter, opset, versions)."""
    pixels = image_size is not None
    meta = {
        C.K_FORMAT: C.FORMAT_VERSION,
        C.K_ALGO: cfg.algo,
        C.K_ENV: cfg.env,
        C.K_INTERFACE: interface,
        C.K_ACTION_DIM: str(facts.action_dim),
        C.K_ACTION_LOW: json.dumps(facts.action_low),
        C.K_ACTION_HIGH: json.dumps(facts.action_high),
        C.K_ACTION_REPEAT: str(cfg.action_repeat),
        C.K_FRAME_STACK: str(frame_stack),
        C.K_IMAGE_SIZE: json.dumps(image_size),
        C.K_IMAGE_LAYOUT: C.IMAGE_LAYOUT if pixels else C.NO_IMAGE,
        C.K_PADDING: C.PADDING_RULE if pixels else C.NO_IMAGE,
        C.K_CONTROL_TIMESTEP: repr(facts.control_timestep),
        C.K_CAMERA_ID: str(cfg.camera_id),
        C.K_TRAIN_ENV_STEPS: str(env_steps),
        C.K_EXPORTER: exporter,
        C.K_OPSET: str(C.OPSET),
        C.K_TORCH_VERSION: torch_version,
        C.K_SACAE_VERSION: __version__,
        C.K_PRECISION: "fp32",  # a lower-precision variant overwrites it (export/precision.py)
    }
    meta.update(extra or {})
    missing = [k for k in C.REQUIRED_KEYS if k not in meta]
    assert not missing, missing  # a contract key added without teaching the exporter
    return meta
