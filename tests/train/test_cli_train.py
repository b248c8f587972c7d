"""`sacae train` as users run it: the smoke run's files, resume after kill -9, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import SACAE, sacae

SMOKE = ["--algo", "sac-ae", "--env", "cartpole-swingup", "--preset", "smoke"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_smoke_run_writes_everything(run_dir: Path) -> None:
    proc = sacae("train", *SMOKE, "--out", str(run_dir), "--env-steps", "400", "--video", check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["env_step"] == 400
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["algo"] == "sac-ae" and cfg["env_steps"] == 400 and cfg["action_repeat"] == 8
    assert cfg["batch_size"] == 16  # the smoke preset, fully resolved
    train = _rows(run_dir / "train.csv")
    assert [int(r["env_step"]) for r in train] == [200, 400]
    assert {"episode_return", "critic_loss", "alpha", "steps_per_s"} <= train[0].keys()
    evals = _rows(run_dir / "eval.csv")
    assert [int(r["env_step"]) for r in evals] == [0, 400]
    assert (run_dir / "eval.png").stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == ["eval_000000000.mp4", "eval_000000400.mp4"]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000000400"
    assert "Traceback" not in proc.stderr


def test_resume_after_kill_continues_the_counters(run_dir: Path) -> None:
    args = [*SACAE, "train", *SMOKE, "--out", str(run_dir), "--env-steps", "4000",
            "--set", "checkpoint_every=200", "--set", "eval_every=100000"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.exists() and latest.read_text() >= "step_000000400"):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().split("_")[1])
    assert killed_at >= 400
    sacae("train", *SMOKE, "--out", str(run_dir), "--env-steps", str(killed_at + 400), "--resume", check=True)
    steps = [int(r["env_step"]) for r in _rows(run_dir / "train.csv")]
    assert steps == list(range(200, killed_at + 401, 200))  # no gap, no duplicate
    state = json.loads((run_dir / "checkpoints" / f"step_{killed_at + 400:09d}" / "state.json").read_text())
    assert state["env_step"] == killed_at + 400 and state["agent_step"] == (killed_at + 400) // 8
    assert state["episode"] == (killed_at + 400) // 200


@pytest.mark.parametrize("distractors", ["none", "balls"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, distractors: str) -> None:
    """Episode seeds, RNG states and replay are checkpointed: resuming changes nothing, moving-ball
    backgrounds included (they are seeded per episode), and no step is evaluated twice."""
    from train import config as train_config
    from train.workspace import Workspace

    def cfg(steps: int) -> train_config.CommonConfig:
        return train_config.resolve("sac-pixel", "smoke", env_steps=steps, checkpoint_every=200, eval_every=400,
                         distractors=distractors)

    Workspace(cfg(600), tmp_path / "full").run()
    Workspace(cfg(400), tmp_path / "split").run()
    Workspace(cfg(600), tmp_path / "split", resume=True).run()
    full, split = _rows(tmp_path / "full" / "train.csv"), _rows(tmp_path / "split" / "train.csv")
    key = ("env_step", "episode_return", "critic_loss")
    assert [[r[k] for k in key] for r in full] == [[r[k] for k in key] for r in split]
    evals = [_rows(tmp_path / d / "eval.csv") for d in ("full", "split")]
    assert [r["env_step"] for r in evals[1]] == ["0", "400", "600"]
    assert [r["episode_return"] for r in evals[0]] == [r["episode_return"] for r in evals[1]]


@pytest.mark.parametrize("args, message", [
    (["--env", "cartpole-fly"], "unknown env 'cartpole-fly'"),
    (["--env-steps", "-5"], "-5"),
    (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--set", "batch_size=abc"], "expected int"),
    (["--algo", "dqn"], "'dqn' is not one of 'sac-ae'"),  # rejected by the CLI parser itself
    (["--device", "tpu"], "--device"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--set", "discount=2"], "discount must be in [0, 1], got 2.0"),
    (["--set", "critic_lr=nan"], "critic_lr must be finite"),
    (["--set", "image_size=8"], "image_size 8 is too small for 4 conv layers"),
    (["--set", "env=cheetah-run"], "--set env=cheetah-run contradicts --env cartpole-swingup"),
    (["--set", "preset=paper"], "unknown config key 'preset'"),
    (["--set", "camera_id=99"], "camera_id 99: cartpole-swingup has cameras 0-1"),  # known once the env is built
])
def test_bad_values_exit_2_in_one_line(run_dir: Path, args: list[str], message: str) -> None:
    base = {"--algo": "sac-ae", "--env": "cartpole-swingup"}
    flags = [x for k, v in base.items() if k not in args for x in (k, v)]
    proc = sacae("train", *flags, *args, "--out", str(run_dir), "--preset", "smoke")
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_usage_errors_are_one_line() -> None:
    for args, message in ((["train", "--env", "cartpole-swingup"], "Missing option '--algo'"),
                          (["fly"], "No such command 'fly'")):
        proc = sacae(*args)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_set_reaches_fields_that_also_have_flags(run_dir: Path) -> None:
    from train.runs import resolve_run

    cfg = resolve_run("sac-ae", "cartpole-swingup", run_dir, None, None, "smoke",
                      ["seed=3", "env_steps=600", "device=cpu", "env=cartpole-swingup"], None, False)
    assert (cfg.seed, cfg.env_steps, cfg.device, cfg.env) == (3, 600, "cpu", "cartpole-swingup")
    assert resolve_run("sac-ae", "cartpole-swingup", run_dir, None, 4, "smoke", ["seed=4"], None, False).seed == 4
    assert resolve_run("sac-ae", "cartpole-swingup", run_dir, None, None, "smoke", [], None, False).device == "auto"


def test_resume_from_an_unreadable_config_exits_2(run_dir: Path) -> None:
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{not json")
    proc = sacae("train", *SMOKE, "--out", str(run_dir), "--resume")
    assert proc.returncode == 2 and "is not a readable run config" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_non_empty_out_without_resume_exits_2(run_dir: Path) -> None:
    run_dir.mkdir()
    (run_dir / "something").write_text("x")
    proc = sacae("train", *SMOKE, "--out", str(run_dir))
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_emulated_bf16_is_announced_when_the_run_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--set bf16=true where the CPU lacks bf16 units runs slower than float32: the run says so,
    first, in one line (the CLI prints progress messages to stderr); where it has them, nothing."""
    from train import config as train_config
    from train import torch_utils
    from train.workspace import Workspace

    said: dict[bool, list[str]] = {}
    for native in (False, True):
        monkeypatch.setattr(torch_utils, "bf16_is_native", lambda device, native=native: native)
        messages: list[str] = []
        cfg = train_config.resolve("sac-pixel", "smoke", env_steps=16, bf16=True, device="cpu")
        Workspace(cfg, tmp_path / str(native)).run(lambda step, info: messages.extend(
            [info["message"]] if "message" in info else []))
        said[native] = messages
    assert said[True] == []
    assert len(said[False]) == 1 and said[False][0].startswith("note: bf16=true on a CPU without AVX512-BF16 or AMX")
    assert "\n" not in said[False][0]
    assert torch_utils.bf16_notice(False, torch.device("cpu")) is None  # float32 runs: never
