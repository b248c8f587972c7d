"""`sacae eval` and `sacae distractors preview`: the robustness table, plot and videos users rely on."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from helpers import export_tiny_sac, sacae
from sacae_deploy.evaluation import ConditionResult, markdown_table, relative_drop, summary_rows


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("smoke") / "policy.onnx"
    export_tiny_sac(path)
    return path


def test_eval_writes_table_plot_and_video(policy: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = sacae("eval", str(policy), "--episodes", "2", "--distractors", "none,balls", "--out", str(out), check=True)
    data = json.loads((out / "results.json").read_text())
    assert data["env"] == "cartpole-swingup" and data["conditions"] == ["none", "balls"]
    (row,) = data["rows"]
    for cond in ("none", "balls"):
        assert len(row[cond]["returns"]) == 2
        assert row[cond]["mean"] == pytest.approx(np.mean(row[cond]["returns"]))
    assert row["drop_balls"] == pytest.approx((row["none"]["mean"] - row["balls"]["mean"]) / abs(row["none"]["mean"]))
    table = (out / "results.md").read_text()
    name = policy.parent.name  # runs/NAME/policy.onnx is called NAME in the table
    assert f"| {name} |" in table and "drop balls" in table and table in proc.stdout
    plot = iio.imread(out / "returns.png")
    assert plot.ndim == 3 and plot.shape[0] > 100
    gif = iio.imread(out / "videos" / f"{name}.gif")
    # what the policy saw, clean | balls side by side, upscaled 3x from the policy's 32 px
    assert gif.shape[1:3] == (96, 192)
    clean, balls = gif[5, :, :96], gif[5, :, 96:]
    assert np.abs(clean.astype(int) - balls.astype(int)).max() > 50  # the backgrounds differ


def test_clean_eval_is_deterministic_and_matches_sacae_run(policy: Path, tmp_path: Path) -> None:
    """Episode e starts from seed + e in both commands: same policy, same seed, same return."""
    sacae("eval", str(policy), "--episodes", "1", "--distractors", "none", "--no-video", "--seed", "3",
          "--out", str(tmp_path / "a"), check=True)
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    summary = tmp_path / "run.json"
    sacae("run", str(policy), "--source", "dmc", "--seed", "3", "--summary-json", str(summary), check=True)
    first_return = json.loads(summary.read_text())["episode_returns"][0]
    assert first_return == pytest.approx(data["rows"][0]["none"]["mean"], abs=1e-6)


@pytest.mark.parametrize("args, words", [
    (["--distractors", "none,fog"], "--distractors"),
    (["--env", "cartpole-flip"], "unknown env"),
])
def test_eval_bad_values_are_one_line_exit_2(policy: Path, tmp_path: Path, args: list[str], words: str) -> None:
    proc = sacae("eval", str(policy), "--out", str(tmp_path / "e"), *args)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_eval_missing_policy_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = sacae("eval", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "e"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_summary_rows_and_table() -> None:
    results = [ConditionResult("a", "sac-ae", "x-y", "none", [100.0, 200.0]),
               ConditionResult("a", "sac-ae", "x-y", "balls", [75.0, 75.0])]
    (row,) = summary_rows(results, ["none", "balls"])
    assert row["none"]["mean"] == 150.0 and row["none"]["std"] == 50.0
    assert row["drop_balls"] == pytest.approx(0.5)
    assert "| a | sac-ae | 150.0 ± 50.0 | 75.0 ± 0.0 | +50.0% | 0 |" in markdown_table([row], ["none", "balls"], 2)
    assert relative_drop(0.0, 3.0) is None


def test_failed_episodes_are_counted_not_averaged() -> None:
    """None marks an episode the policy failed (a non-finite action): out of the mean, in `failed`."""
    results = [ConditionResult("a", "sac-ae", "x-y", "none", [100.0, None, 200.0], ["episode 1: why"]),
               ConditionResult("a", "sac-ae", "x-y", "balls", [None, None, None])]
    assert (results[0].completed, results[0].failed, results[0].mean) == (2, 1, 150.0)
    (row,) = summary_rows(results, ["none", "balls"])
    assert row["failed"] == 4 and row["balls"]["mean"] is None and row["drop_balls"] is None
    table = markdown_table([row], ["none", "balls"], 3)
    assert "| a | sac-ae | 150.0 ± 50.0 (1 of 3 failed) | n/a (3 of 3 failed) | n/a | 4 |" in table
    assert "mean ± sd of completed" in table


def test_preview_gif(tmp_path: Path) -> None:
    out = tmp_path / "preview.gif"
    sacae("distractors", "preview", "--env", "cartpole-swingup", "--steps", "5", "--size", "32", "--out", str(out),
          check=True)
    frames = iio.imread(out)
    assert frames.shape == (5, 96, 192, 3)
