"""benchmarks/learning_check.py: its pass/fail rule and baselines, on tiny inputs (no long training)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("learning_check", ROOT / "benchmarks" / "learning_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("learning_check", module)
    spec.loader.exec_module(module)
    return module


lc = _load()


def _cfg(tmp_path: Path, algo: str = "sac-ae", env: str = "cartpole-swingup", **extra: str):
    from train import config as train_config

    return train_config.resolve(algo, "smoke", None, env=env, **extra)


def test_criterion_needs_both_ratio_and_absolute_margin() -> None:
    base = {"random": 20.0, "best_constant": 2.0}
    assert lc.criterion(70.0, base, ratio=2.0, plus=50.0)["pass"]  # 70 >= max(40, 70)
    assert not lc.criterion(69.9, base, ratio=2.0, plus=50.0)["pass"]
    verdict = lc.criterion(150.0, {"random": 100.0, "best_constant": 75.0}, ratio=2.0, plus=50.0)
    assert not verdict["pass"] and verdict["required"] == 200.0 and verdict["best_baseline"] == "random"
    # A policy that learned nothing (a sign or detach bug) scores like a baseline: it fails.
    assert not lc.criterion(21.0, base)["pass"]
    # The best constant counts when it is the strongest baseline.
    v = lc.criterion(300.0, {"random": 50.0, "best_constant": 400.0})
    assert v["best_baseline"] == "best_constant" and not v["pass"] and v["margin"] == -100.0


def test_constant_actions_cover_zero_axes_and_corners() -> None:
    one = lc.constant_actions(1)
    assert set(one) == {"zero", "a0=+1", "a0=-1", "all(+1)", "all(-1)"}
    two = lc.constant_actions(2)
    assert len(two) == 1 + 4 + 4 and np.array_equal(two["all(+1,-1)"], [1.0, -1.0])
    six = lc.constant_actions(6)
    assert len(six) == 1 + 12 + 2 and np.array_equal(six["a3=-1"], [0, 0, 0, -1, 0, 0])


def test_eval_seeds_are_the_workspace_ones(tmp_path: Path) -> None:
    from train.workspace import EVAL_SEED_OFFSET, episode_seed

    cfg = _cfg(tmp_path, seed=3)
    first = episode_seed(3 + EVAL_SEED_OFFSET, 400)
    assert lc.eval_seeds(cfg, 400) == [first + i for i in range(cfg.eval_episodes)]


def test_baselines_on_a_tiny_episode_state_matches_pixels(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, episode_length=80, eval_episodes=2)  # 10 agent steps at action repeat 8
    assert lc.state_matches_pixels(cfg, steps=10)
    env = lc.baseline_env(cfg, pixels=False)
    try:
        seeds = lc.eval_seeds(cfg, 0)
        per = lc.baselines_at(env, seeds)
        again = lc.baselines_at(env, seeds)
    finally:
        env.close()
    assert per == again  # seeded: the same seeds give the same baselines
    assert set(per) == {"random"} | set(lc.constant_actions(1))
    assert 0.0 <= per["zero"]["mean"] < 0.1  # cartpole-swingup: the pole stays hanging down
    s = lc.summarize(per)
    assert s["best_constant"] == max(v["mean"] for k, v in per.items() if k != "random")
    assert s["random"] == per["random"]["mean"]


def test_scale_is_the_paper_preset_with_stated_overrides(tmp_path: Path) -> None:
    for algo in ("slac", "sac-ae"):
        assert lc.SCALE[algo]["threads"] == "1"
        cfg = lc.resolve_config(algo, lc.DEFAULT_ENV[algo], 1, lc.DEFAULT_ENV_STEPS[algo], tmp_path / algo, False)
        assert cfg.threads == 1 and cfg.action_repeat == 4  # SLAC's table for cartpole, both papers' for cheetah
        for key, value in lc.SCALE[algo].items():
            assert str(getattr(cfg, key)).lower() == value.lower()
    assert lc.scale_overrides("slac", "smoke") == {"threads": "1"}


def test_write_results(tmp_path: Path) -> None:
    curve = [{"env_step": s, "eval_return": r, "eval_std": 1.0, "random": 20.0, "random_std": 2.0,
              "best_constant": 1.5, "best_constant_std": 0.1, "best_constant_action": "a4=+1"}
             for s, r in ((0, 0.5), (5000, 80.0))]
    summary = {"algo": "slac", "env": "cheetah-run", "seed": 1, "eval_episodes": 5,
               **lc.criterion(80.0, {"random": 20.0, "best_constant": 1.5})}
    paths = lc.write_results(tmp_path, "learning_check_slac_cheetah-run_seed1", curve, summary)
    with open(paths[0]) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["env_step"] for r in rows] == ["0", "5000"] and float(rows[1]["eval_return"]) == 80.0
    assert paths[1].stat().st_size > 0


def test_score_only_on_a_logged_run(tmp_path: Path, capsys) -> None:
    """The scoring path end to end on a fabricated run folder: verdict, exit code, JSON line, files."""
    import json

    from train import config as train_config

    out = tmp_path / "run"
    out.mkdir()
    cfg = train_config.resolve("sac-ae", "smoke", None, env="cartpole-swingup", episode_length=80, env_steps=160,
                               eval_every=80)
    (out / "config.json").write_text(json.dumps(train_config.to_dict(cfg)))
    (out / "train.csv").write_text("env_step,episode_length,steps_per_s,wall_time\n"
                                   "80,80,40.0,1000.0\n160,80,40.0,1002.0\n")

    def run(final: float) -> tuple[int, dict]:
        (out / "eval.csv").write_text("env_step,episode_return,return_std,episodes,wall_time\n"
                                      f"0,0.1,0.0,1,999.0\n160,{final},0.0,1,1003.0\n")
        code = lc.main(["--algo", "sac-ae", "--env", "cartpole-swingup", "--out", str(out), "--score-only",
                        "--write-results", str(tmp_path / "results")])
        return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    code, summary = run(500.0)  # 80 env steps at action repeat 8: every baseline scores ~0
    assert code == 0 and summary["pass"] and summary["complete"] and summary["train_wall_s"] == 5.0
    assert [r["env_step"] for r in summary["eval_curve"]] == [0, 160] and summary["baselines_env"] == "state"
    code, summary = run(0.2)  # a policy that learned nothing fails
    assert code == 1 and not summary["pass"]
    assert (tmp_path / "results" / "learning_check_sac-ae_cartpole-swingup_seed1.png").stat().st_size > 0
