"""CPU learning check: does a pixel agent (SLAC or SAC+AE) beat trivial policies by a wide margin?

Trains through the real training code (`sacae train`'s config resolution and train.workspace.Workspace)
at a reduced, stated scale (SCALE below) into a run folder, then measures on the SAME eval episode
seeds as each of the run's evaluations (workspace.episode_seed(seed + EVAL_SEED_OFFSET, env_step) + i):

- a uniform random policy (actions ~ U[-1, 1], one generator per episode, seeded by the episode seed);
- every constant action in {0} + {+-1 on one dimension} + {all +1, all -1} (and, for |A| <= 3, every
  corner of the action box); the best of them on each evaluation's seeds is the "best constant".

The baselines run on the state env (same physics, no rendering): the script first checks, for a
fixed random action sequence, that the state and pixel envs give identical rewards; where they do
not, it measures the baselines on the pixel env instead.

Pass: the final eval return >= RATIO x max(random, best constant) AND >= that + PLUS (defaults below,
`--ratio`, `--plus`), where the baselines are those of the final evaluation's seeds. Exit code 1 on
fail. The last line of output is one JSON object.

    MUJOCO_GL=egl .venv/bin/python benchmarks/learning_check.py --algo slac [--env cartpole-swingup]
        [--seed 1] [--env-steps N] [--out runs/learning_check/slac_cartpole-swingup_seed1] [--resume]
        [--write-results docs/results]

`--resume` continues a killed check from its last checkpoint (a finished run is only re-scored);
`--score-only` trains nothing and scores the evaluations OUT has so far (a check still running or
killed: "complete" is false in the JSON and the check does not pass).
`--write-results DIR` writes DIR/learning_check_ALGO_ENV_seedS.csv (eval curve + baselines) and .png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The repository root goes first: this folder's distractors.py would otherwise shadow the package.
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

# SLAC on cheetah-run never moved at this scale (docs/results/learning_check.md); on cartpole-swingup the
# pole is a large object the latent model can learn to draw within the budget.
DEFAULT_ENV = {"slac": "cartpole-swingup", "sac-ae": "cheetah-run"}
DEFAULT_ENV_STEPS = {"slac": 24_000, "sac-ae": 30_000}  # SAC+AE's eval first moves between 15k and 20k
RATIO = 2.0  # final eval >= RATIO x the best baseline ...
PLUS = 50.0  # ... and >= the best baseline + PLUS (cheetah-run: random ~15-25, constants <= ~2)

# Reduced scale per algorithm (`--set` overrides of the `paper` preset). Everything not named here is
# the paper's value (networks, learning rates, action repeat from the papers' tables, ...).
SCALE: dict[str, dict[str, str]] = {
    "slac": {
        "threads": "1",  # one torch thread: the machine is shared, and timings stay comparable
        "seed_episodes": "2",  # paper 10 random episodes: 2 (500 agent steps) leave the budget to learning
        "pretrain_updates": "1000",  # paper 50,000 model-only updates: ~6 min here instead of ~5 h
        "model_batch_size": "8",  # paper 32 windows: 0.35 s instead of 1.56 s per model update (1 thread)
        "batch_size": "32",  # paper 256 windows: 0.16 s instead of 1.17 s per SAC update (1 thread)
        "init_log_alpha": "-2.302585",  # paper alpha 1 (log 0): after 4,500 updates (lr 3e-4) still ~0.26, an entropy
        # bonus of ~1 per step that drowns rewards of ~0.05-0.4; SAC+AE's initial 0.1 instead
        "eval_mean_action": "true",  # paper: stochastic; after a few thousand updates alpha is still ~1, so the
        # stochastic policy mostly measures the entropy bonus; the mean action measures what was learned
        "eval_every": "4000",  # 6 evaluations + the first, each ~1 min of rendering and acting
        "eval_episodes": "5",  # paper 10: halves eval time
        "checkpoint_every": "4000",  # a killed check loses at most 4,000 env steps (--resume)
    },
    "sac-ae": {
        "threads": "1",  # one torch thread: the machine is shared, and timings stay comparable
        "batch_size": "32",  # paper 128: 0.55 s instead of 2.2 s per update (1 thread, 84x84)
        "replay_capacity": "100000",  # paper 1M does not fit in this machine's memory; > the run's transitions
        "eval_every": "5000",  # 4 evaluations + the first
        "eval_episodes": "5",  # paper 10: halves eval time
        "checkpoint_every": "5000",  # a killed check loses at most 5,000 env steps (--resume)
    },
}


# ---------------------------------------------------------------------------------------------- criterion
def criterion(final: float, baselines: dict[str, float], ratio: float = RATIO, plus: float = PLUS) -> dict[str, Any]:
    """The verdict: `final` must beat the best of `baselines` (return units) by x`ratio` and by +`plus`."""
    best_name = max(baselines, key=lambda k: baselines[k])
    best = float(baselines[best_name])
    need = max(ratio * best, best + plus)
    return {"best_baseline": best_name, "best_baseline_return": best, "required": need,
            "margin": final - best, "ratio": final / best if best > 0 else float("inf"),
            "pass": bool(final >= need)}


# ---------------------------------------------------------------------------------------------- baselines
def constant_actions(action_dim: int) -> dict[str, np.ndarray]:
    """Zero, +-1 on each dimension, all +-1, and (|A| <= 3) every corner of the box."""
    out = {"zero": np.zeros(action_dim, np.float32)}
    for d in range(action_dim):
        for sign in (1, -1):
            a = np.zeros(action_dim, np.float32)
            a[d] = sign
            out[f"a{d}={sign:+d}"] = a
    corners = itertools.product((1, -1), repeat=action_dim) if action_dim <= 3 else [(1,) * action_dim,
                                                                                      (-1,) * action_dim]
    for c in corners:
        out["all(" + ",".join(f"{s:+d}" for s in c) + ")"] = np.asarray(c, np.float32)
    return out


def episode_return(env: Any, seed: int, policy: Callable[[np.random.Generator], np.ndarray]) -> float:
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    total, done = 0.0, False
    while not done:
        step = env.step(policy(rng))
        total, done = total + step.reward, step.last
    return total


def eval_seeds(cfg: Any, env_step: int) -> list[int]:
    """The episode seeds workspace._evaluate uses at `env_step`."""
    from train.workspace import EVAL_SEED_OFFSET, episode_seed

    first = episode_seed(cfg.seed + EVAL_SEED_OFFSET, env_step)
    return [first + i for i in range(cfg.eval_episodes)]


def baseline_env(cfg: Any, pixels: bool) -> Any:
    """The eval env as the workspace builds it (pixels), or the same task without rendering."""
    from sacae_deploy.sim.envs import make_env
    from train.workspace import EVAL_SEED_OFFSET, build_env

    if pixels:
        return build_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
    return make_env(cfg.env, cfg.seed + EVAL_SEED_OFFSET, pixels=False, action_repeat=cfg.action_repeat,
                    episode_length=cfg.episode_length)


def state_matches_pixels(cfg: Any, steps: int = 60, seed: int | None = None) -> bool:
    """Same rewards, step by step, from the state env and the pixel env for one fixed random action
    sequence (from the first eval episode's seed)? Then baselines need no rendering."""
    seed = eval_seeds(cfg, 0)[0] if seed is None else seed
    rewards = []
    for pixels in (False, True):
        env = baseline_env(cfg, pixels)
        try:
            env.reset(seed=seed)
            rng = np.random.default_rng(12345)
            r = []
            for _ in range(steps):
                step = env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
                r.append(step.reward)
                if step.last:
                    break
            rewards.append(r)
        finally:
            env.close()
    return rewards[0] == rewards[1]


def baselines_at(env: Any, seeds: list[int]) -> dict[str, dict[str, float]]:
    """name -> {"mean", "std"} over `seeds`: the uniform random policy and each constant action."""
    a_dim = env.action_dim
    policies: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
        "random": lambda rng: rng.uniform(-1.0, 1.0, a_dim).astype(np.float32)}
    for name, a in constant_actions(a_dim).items():
        policies[name] = lambda rng, a=a: a
    out = {}
    for name, policy in policies.items():
        returns = [episode_return(env, s, policy) for s in seeds]
        out[name] = {"mean": float(np.mean(returns)), "std": float(np.std(returns))}
    return out


def summarize(per_policy: dict[str, dict[str, float]]) -> dict[str, Any]:
    """random and the best constant (by mean) of one evaluation's seeds."""
    consts = {k: v for k, v in per_policy.items() if k != "random"}
    best = max(consts, key=lambda k: consts[k]["mean"])
    return {"random": per_policy["random"]["mean"], "random_std": per_policy["random"]["std"],
            "best_constant": consts[best]["mean"], "best_constant_std": consts[best]["std"],
            "best_constant_action": best}


# ---------------------------------------------------------------------------------------------- run
def default_out(algo: str, env: str, seed: int) -> Path:
    return ROOT / "runs" / "learning_check" / f"{algo}_{env}_seed{seed}"


def scale_overrides(algo: str, preset: str = "paper", extra: list[str] | None = None) -> dict[str, str]:
    """SCALE on the paper preset; the smoke preset (tests) keeps its own tiny sizes, on one thread.
    `extra` (`--set KEY=VALUE`, for experiments beyond the stated check) goes on top."""
    from train.config import parse_sets

    return {**(dict(SCALE[algo]) if preset == "paper" else {"threads": "1"}), **parse_sets(extra or [])}


def differs_from_paper(cfg: Any) -> dict[str, str]:
    """The fields of a saved run config that are not the paper preset's (what `--score-only` reports)."""
    from train.config import resolve, to_dict

    paper = to_dict(resolve(cfg.algo, "paper", None, env=cfg.env))
    skip = {"seed", "env_steps", "device"}
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in to_dict(cfg).items()
            if k not in skip and paper.get(k) != v}


def resolve_config(algo: str, env: str, seed: int, env_steps: int, out: Path, resume: bool,
                   preset: str = "paper", extra: list[str] | None = None) -> Any:
    """The run's config as `sacae train --algo ALGO --env ENV --seed S --env-steps N --set SCALE...` resolves it."""
    from train.runs import resolve_run

    sets = [f"{k}={v}" for k, v in scale_overrides(algo, preset, extra).items()]
    return resolve_run(algo, env, out, env_steps, seed, preset, sets, "cpu", resume)


def train(cfg: Any, out: Path, resume: bool) -> float:
    """Run the workspace to cfg.env_steps; returns the check's training wall seconds over all its
    invocations (kept in OUT/learning_check_wall.json after every episode, so a resumed check adds to it)."""
    from train.workspace import Workspace

    ledger = out / "learning_check_wall.json"
    prior = json.loads(ledger.read_text())["train_wall_s"] if resume and ledger.exists() else 0.0
    start = time.perf_counter()

    def note() -> None:
        ledger.write_text(json.dumps({"train_wall_s": round(prior + time.perf_counter() - start, 1)}) + "\n")

    def progress(env_step: int, info: dict[str, Any]) -> None:
        stamp = time.strftime("%H:%M:%S")
        if "message" in info:
            print(f"[{stamp}] {info['message']}", flush=True)
        elif "eval_return" in info:
            print(f"[{stamp}] eval env_step={env_step} return={info['eval_return']:.1f}", flush=True)
        elif "train_return" in info:
            print(f"[{stamp}] env_step={env_step} train_return={info['train_return']:.1f} "
                  f"env_steps/s={info['steps_per_s']:.1f}", flush=True)
        note()

    Workspace(cfg, out, resume=resume).run(progress)
    note()
    return json.loads(ledger.read_text())["train_wall_s"]


def logged_span(out: Path) -> float | None:
    """Seconds from the first episode's start to the last eval or episode row (for a check still running
    or killed, whose ledger may be missing): the step-0 evaluation is not in it."""
    import csv

    rows = []
    for name in ("train.csv", "eval.csv"):
        with open(out / name) as fh:
            rows += [(name, r) for r in csv.DictReader(fh)]
    train_rows = [r for n, r in rows if n == "train.csv"]
    if not train_rows:
        return None
    first = train_rows[0]
    start = float(first["wall_time"]) - float(first["episode_length"]) / float(first["steps_per_s"])
    return max(float(r["wall_time"]) for _, r in rows) - start


def read_eval(out: Path) -> list[dict[str, float]]:
    import csv

    with open(out / "eval.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_results(directory: Path, name: str, curve: list[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    import csv

    directory.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = directory / f"{name}.csv", directory / f"{name}.png"
    keys = ["env_step", "eval_return", "eval_std", "random", "random_std", "best_constant", "best_constant_std",
            "best_constant_action"]
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        for row in curve:
            w.writerow({k: (f"{row[k]:.3f}" if isinstance(row[k], float) else row[k]) for k in keys})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["env_step"] for r in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(steps, [r["eval_return"] for r in curve], yerr=[r["eval_std"] for r in curve], marker="o",
                capsize=3, label=f"{summary['algo']} (eval, {summary['eval_episodes']} episodes)")
    final = curve[-1]
    ax.axhline(final["random"], color="tab:red", ls="--", label=f"uniform random ({final['random']:.1f})")
    ax.axhline(final["best_constant"], color="tab:gray", ls=":",
               label=f"best constant {final['best_constant_action']} ({final['best_constant']:.1f})")
    ax.axhline(summary["required"], color="tab:green", ls="-.", lw=1,
               label=f"pass threshold ({summary['required']:.1f})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval return")
    state = ("pass" if summary["pass"] else "FAIL") if summary.get("complete", True) else \
        f"partial: {final['env_step']:,} of {summary['env_steps']:,} env steps"
    ax.set_title(f"learning check: {summary['algo']} {summary['env']} seed {summary['seed']} ({state})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [csv_path, png_path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=sorted(SCALE), required=True)
    p.add_argument("--env", default=None, help="default: cartpole-swingup for slac, cheetah-run for sac-ae")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--env-steps", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--resume", action="store_true", help="continue a killed check (a finished one is only re-scored)")
    p.add_argument("--preset", choices=["paper", "smoke"], default="paper",
                   help="smoke: the tiny test sizes instead of SCALE (checks the pipeline, not learning)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="another override on top of SCALE (an experiment, not the stated check; kept in the JSON)")
    p.add_argument("--score-only", action="store_true",
                   help="no training: score the evaluations OUT already has (a check still running or killed)")
    p.add_argument("--ratio", type=float, default=RATIO)
    p.add_argument("--plus", type=float, default=PLUS)
    p.add_argument("--write-results", type=Path, default=None, metavar="DIR",
                   help="write DIR/learning_check_ALGO_ENV_seedS.csv and .png")
    args = p.parse_args(argv)
    args.env = args.env or DEFAULT_ENV[args.algo]
    out = args.out or default_out(args.algo, args.env, args.seed)
    env_steps = args.env_steps or (DEFAULT_ENV_STEPS[args.algo] if args.preset == "paper" else None)

    import torch

    if args.score_only:
        from train.config import from_dict

        cfg = from_dict(json.loads((out / "config.json").read_text()))
        ledger = out / "learning_check_wall.json"
        wall = json.loads(ledger.read_text())["train_wall_s"] if ledger.exists() else logged_span(out)
    else:
        cfg = resolve_config(args.algo, args.env, args.seed, env_steps, out, args.resume, args.preset, args.sets)
        wall = train(cfg, out, args.resume)

    same = state_matches_pixels(cfg)
    print(f"state env rewards {'match' if same else 'DIFFER FROM'} the pixel env's for a fixed action sequence; "
          f"baselines on the {'state' if same else 'pixel'} env", flush=True)
    env = baseline_env(cfg, pixels=not same)
    curve = []
    try:
        for row in read_eval(out):
            step = int(row["env_step"])
            base = summarize(baselines_at(env, eval_seeds(cfg, step)))
            curve.append({"env_step": step, "eval_return": row["episode_return"], "eval_std": row["return_std"],
                          **base})
            print(f"env_step={step:>7}  eval {row['episode_return']:8.1f} +- {row['return_std']:6.1f}   random "
                  f"{base['random']:7.1f}   best constant {base['best_constant']:7.1f} "
                  f"({base['best_constant_action']})",
                  flush=True)
    finally:
        env.close()
    final = curve[-1]
    verdict = criterion(final["eval_return"], {"random": final["random"], "best_constant": final["best_constant"]},
                        args.ratio, args.plus)
    from machine import cpu_name, describe

    complete = final["env_step"] >= cfg.env_steps
    summary = {"check": "learning_check", "algo": cfg.algo, "env": cfg.env, "seed": cfg.seed,
               "action_repeat": cfg.action_repeat, "preset": args.preset,
               "scale_overrides": (differs_from_paper(cfg) if args.score_only
                                   else scale_overrides(args.algo, args.preset, args.sets)),
               "env_steps": cfg.env_steps, "out": str(out),
               "eval_episodes": cfg.eval_episodes, "eval_mean_action": cfg.eval_mean_action,
               "complete": complete,
               "train_wall_s": None if wall is None else round(wall, 1), "host": describe(), "cpu": cpu_name(),
               "torch": torch.__version__, "threads": cfg.threads, "baselines_env": "state" if same else "pixels",
               "criterion": f"final >= max({args.ratio} x best baseline, best baseline + {args.plus})",
               "eval_curve": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in curve],
               "final_eval_return": round(final["eval_return"], 2), **{k: (round(v, 2) if isinstance(v, float) else v)
                                                                       for k, v in verdict.items()},
               "criterion_met_at_last_eval": verdict["pass"], "pass": verdict["pass"] and complete}
    if args.write_results:
        name = f"learning_check_{cfg.algo}_{cfg.env}_seed{cfg.seed}"
        for path in write_results(args.write_results, name, curve, summary):
            print(f"wrote {path}", flush=True)
    print(json.dumps(summary))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
