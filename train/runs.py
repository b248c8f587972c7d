"""A training run's config from what a user typed (`sacae train`, `sacae demo`, each `sacae sweep`
trial): flags, `--set` overrides and a resumed run's config.json, checked before anything heavy
is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sacae_deploy.files import LOCK_NAME
from sacae_deploy.outputs import check_output_dir
from sacae_deploy.sim.envs import check_env_name
from train import config

# Config keys `sacae train` also takes as flags (a `--set` of one must agree with its flag).
FLAG_KEYS = {"algo": "--algo", "env": "--env", "env_steps": "--env-steps", "seed": "--seed", "device": "--device",
             "distractors": "--distractors"}


def resolve_run(algo: str, env: str, out: Path, env_steps: int | None, seed: int | None, preset: str,
                sets: list[str], device: str | None, resume: bool, distractors: str | None = None) -> Any:
    """Validate everything a user typed and return the fully resolved config (nothing heavy is built)."""
    check_output_dir(out, "--out")
    overrides: dict[str, Any] = dict(config.parse_sets(sets))
    flags = {"algo": algo, "env": env, "env_steps": env_steps, "seed": seed, "device": device,
             "distractors": distractors}
    for key, value in flags.items():
        if value is None:
            continue
        if key in overrides and overrides[key] != str(value):
            raise config.ConfigError(f"--set {key}={overrides[key]} contradicts {FLAG_KEYS[key]} {value}")
        overrides[key] = value
    overrides.setdefault("device", "auto")  # a resumed run picks its device afresh too
    del overrides["algo"]
    saved = out / "config.json"
    if resume and saved.exists():
        try:
            base = json.loads(saved.read_text())
            saved_algo, saved_env = base["algo"], base["env"]
        except (ValueError, TypeError, KeyError) as exc:
            raise config.ConfigError(f"{saved} is not a readable run config ({type(exc).__name__}: {exc})") from None
        if saved_algo != algo or saved_env != env:
            raise config.ConfigError(f"{out} holds a {saved_algo} run on {saved_env}; "
                                     f"cannot resume it as {algo} on {env}")
        return config.resolve(algo, preset, base, **overrides)
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        if resume:
            raise config.ConfigError(f"{out} is not empty but has no config.json to resume from")
        raise config.ConfigError(f"{out} is not empty; pass --resume to continue that run or choose a new --out")
    check_env_name(env)
    return config.resolve(algo, preset, None, **overrides)
