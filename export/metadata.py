"""The facts a policy file carries: read from the run's config and from the environment itself
(built, never guessed), written as the contract's string-valued metadata_props."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from export.errors import ExportError
from sacae_deploy import __version__, contract
from sacae_deploy.errors import PolicyError


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
    from sacae_deploy.sim.envs import DMCEnv

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
        contract.K_FORMAT: contract.FORMAT_VERSION,
        contract.K_ALGO: cfg.algo,
        contract.K_ENV: cfg.env,
        contract.K_INTERFACE: interface,
        contract.K_ACTION_DIM: str(facts.action_dim),
        contract.K_ACTION_LOW: json.dumps(facts.action_low),
        contract.K_ACTION_HIGH: json.dumps(facts.action_high),
        contract.K_ACTION_REPEAT: str(cfg.action_repeat),
        contract.K_FRAME_STACK: str(frame_stack),
        contract.K_IMAGE_SIZE: json.dumps(image_size),
        contract.K_IMAGE_LAYOUT: contract.IMAGE_LAYOUT if pixels else contract.NO_IMAGE,
        contract.K_PADDING: contract.PADDING_RULE if pixels else contract.NO_IMAGE,
        contract.K_CONTROL_TIMESTEP: repr(facts.control_timestep),
        contract.K_CAMERA_ID: str(cfg.camera_id),
        contract.K_TRAIN_ENV_STEPS: str(env_steps),
        contract.K_EXPORTER: exporter,
        contract.K_OPSET: str(contract.OPSET),
        contract.K_TORCH_VERSION: torch_version,
        contract.K_SACAE_VERSION: __version__,
        contract.K_PRECISION: "fp32",  # a lower-precision variant overwrites it (export/precision.py)
    }
    meta.update(extra or {})
    return checked(meta)


def checked(meta: dict[str, str]) -> dict[str, str]:
    """`meta` if the runtime's own rule (contract.parse_metadata) accepts it: the exporter never
    writes a file the runtime would refuse."""
    try:
        contract.parse_metadata(meta, "the exported policy")
    except PolicyError as exc:  # an exporter bug, not the user's: say which rule it broke
        raise ExportError(f"internal error, please report: {exc}") from None
    return meta
