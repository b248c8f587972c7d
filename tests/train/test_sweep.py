"""`sacae sweep` on embedded Ray (ordinary run folders, retried trials, driver kill + --resume) and
`sacae report` (hand-checked numbers on synthetic run folders, no Ray needed)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import SACAE, sacae

# ----------------------------------------------------------------------------- report (no Ray)


def _fake_run(folder: Path, algo: str, env: str, seed: int, evals: list[tuple[int, float]], env_steps: int,
              checkpoint: int | None) -> None:
    """A run folder as `sacae train` leaves it, as far as `report` reads it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"algo": algo, "env": env, "seed": seed, "env_steps": env_steps}))
    lines = ["env_step,episode_return,return_std,episodes,wall_time"]
    lines += [f"{s},{r},0,10,0" for s, r in evals]
    (folder / "eval.csv").write_text("\n".join(lines) + "\n")
    if checkpoint is not None:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "latest").write_text(f"step_{checkpoint:09d}")


RETURNS = {  # seed -> eval returns at 0, 50k, 100k (sac-ae seed 3 unfinished: stopped at 60k)
    1: [10.0, 200.0, 300.0], 2: [12.0, 250.0, 340.0], 3: [8.0, 150.0],
}


@pytest.fixture
def synthetic_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for seed, values in RETURNS.items():
        steps = [0, 50_000, 100_000][:len(values)]
        _fake_run(root / "trials" / "sac-ae" / "cartpole-swingup" / f"seed_{seed}", "sac-ae", "cartpole-swingup",
                  seed, list(zip(steps, values)), 100_000, 100_000 if len(values) == 3 else 60_000)
    _fake_run(root / "trials" / "sac-ae" / "walker-run" / "seed_1", "sac-ae", "walker-run", 1,
              [(0, 1.0), (90_000, 77.0)], 100_000, 100_000)
    (root / "sweep.json").write_text(json.dumps({"trials_root": str(root), "trials": [
        "sac-ae/cartpole-swingup/seed_1", "sac-ae/cartpole-swingup/seed_2", "sac-ae/cartpole-swingup/seed_3",
        "sac-ae/walker-run/seed_1", "sac-ae/walker-run/seed_2"]}))
    return root


def test_report_numbers_equal_a_hand_computation(synthetic_sweep: Path) -> None:
    from train.report import write_report

    doc = write_report(synthetic_sweep, at=[100_000])
    row = next(r for r in doc["rows"] if r["env"] == "cartpole-swingup")
    # nearest row at or below 100k: 300 and 340 at 100k, seed 3's 150 at 50k (so the step is a range)
    values = [300.0, 340.0, 150.0]
    assert row["n"] == 3 and (row["step_min"], row["step_max"]) == (50_000, 100_000)
    assert row["mean"] == pytest.approx(statistics.mean(values))
    assert row["std"] == pytest.approx(statistics.stdev(values))
    [curl] = row["references"]  # CURL table 1: SAC+AE cartpole 311 ± 11 at 100k
    assert (curl["source"], curl["mean"], curl["std"]) == ("curl", 311, 11)
    assert curl["ratio"] == pytest.approx(statistics.mean(values) / 311)
    assert row["unfinished"] == [3]
    walker = next(r for r in doc["rows"] if r["env"] == "walker-run")
    assert walker["references"] == [] and walker["mean"] == 77.0 and walker["std"] is None  # one seed, no reference
    assert not walker["partial"]  # finished: its eval at 90k is its nearest to 100k
    assert doc["not_started"] == ["sac-ae/walker-run/seed_2"]
    out = synthetic_sweep / "report"
    md = (out / "results.md").read_text()
    assert "| sac-ae | cartpole-swingup | 100,000 | 50,000–100,000 | 3 | 263.3 ± 100.2 |" in md
    assert row["partial"] and "311 ± 11 (curl) | (0.85) |" in md  # seed 3 stopped short of 100k
    assert ("unfinished: sac-ae cartpole-swingup seed 3 "
            "(checkpoint at 60,000 of 100,000 env steps; last eval at 50,000)") in md
    assert "not started: sac-ae/walker-run/seed_2" in md and "- curl: Srinivas" in md
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["env"], r["ref_source"]) for r in rows] == [("cartpole-swingup", "curl"), ("walker-run", "")]
    assert float(rows[0]["mean"]) == pytest.approx(statistics.mean(values))
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(doc["rows"]))
    assert (out / "curves.png").stat().st_size > 10_000


def test_value_at_takes_the_nearest_row_at_or_below() -> None:
    from train.report import value_at

    steps, returns = np.array([0, 10, 20, 30]), np.array([1.0, 2.0, 3.0, 4.0])
    assert value_at(steps, returns, 25) == (20, 3.0)
    assert value_at(steps, returns, 30) == (30, 4.0)
    assert value_at(steps, returns, 1_000) == (30, 4.0)
    assert value_at(steps[1:], returns[1:], 5) is None


def test_bootstrap_interval_contains_the_mean_and_is_reproducible() -> None:
    from train.report import bootstrap_ci

    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 5, 10):
        values = rng.normal(500, 100, size=n)
        low, high = bootstrap_ci(values)
        assert low <= values.mean() <= high
        assert values.min() - 1e-9 <= low and high <= values.max() + 1e-9  # a resample's mean stays in range
        assert bootstrap_ci(values) == (low, high)


def test_every_reference_names_a_cited_source() -> None:
    from train.report import load_references

    refs = load_references()
    assert set(refs["sources"]) == {"curl", "slac-data", "sac-ae-table1"}
    assert {r["source"] for r in refs["references"]} == set(refs["sources"])
    assert {(r["algo"], r["step"], r["mean"]) for r in refs["references"] if r["env"] == "cheetah-run"} >= {
        ("sac-ae", 100_000, 267), ("slac", 500_000, 640), ("slac", 100_000, 413), ("sac-state", 100_000, 616)}


def test_report_reads_hand_made_runs_and_a_resaved_checkpoint(tmp_path: Path) -> None:
    """No sweep.json: any folder of `sacae train` runs; `step_N.K` (a re-save) counts as step N."""
    from train.report import checkpoint_step, write_report

    run = tmp_path / "runs" / "a"
    _fake_run(run, "sac-state", "reacher-easy", 4, [(0, 3.0), (100_000, 700.0)], 100_000, None)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("step_000100000.1")
    assert checkpoint_step(run) == 100_000
    doc = write_report(tmp_path / "runs", tmp_path / "rep", [100_000])
    [row] = doc["rows"]
    assert row["mean"] == 700.0 and row["references"][0]["ratio"] == pytest.approx(700 / 746)
    assert doc["trials"][0]["finished"]


@pytest.mark.parametrize("args, message", [
    (["--at", "1e5"], "--at '1e5': expected comma-separated env steps"),
    (["--at", "-1"], "expected non-negative env steps"),
])
def test_report_bad_input_is_one_line(synthetic_sweep: Path, args: list[str], message: str) -> None:
    proc = sacae("report", str(synthetic_sweep), *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_report_on_an_empty_folder_is_one_line(tmp_path: Path) -> None:
    proc = sacae("report", str(tmp_path))
    assert proc.returncode == 2 and "holds no run folders" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- sweep: bad input


def test_cli_import_stays_light() -> None:
    """The sweep commands are registered without importing Ray or torch."""
    code = "import sys, sacae_deploy.cli; print(sorted({'ray', 'torch', 'dm_control'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sweep_without_ray_says_how_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None; from sacae_deploy.cli import main; sys.argv = ['sacae', "
            f"'sweep', '--algo', 'sac-state', '--env', 'cartpole-swingup', '--seeds', '1', '--out', '{tmp_path}/s']; "
            "sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "pip install 'sacae-deploy[sweep]'" in proc.stderr


GRID = ["--algo", "sac-ae,slac", "--env", "cartpole-swingup", "--seeds", "1", "--preset", "smoke"]


@pytest.mark.parametrize("args, message", [
    (["--algo", "sac-ae,dqn"], "unknown algo 'dqn'"),
    (["--env", "cartpole-swingup,cartpole-fly"], "unknown env 'cartpole-fly'"),
    (["--seeds", "0"], "--seeds must be at least 1, got 0"),
    (["--set", "decoder_lr=1e-4"], "unknown config key 'decoder_lr' for slac"),  # a SAC+AE key
    (["--address", "127.0.0.1:9"], "--address 127.0.0.1:9: no Ray cluster reachable"),
    (["--address", "10.255.255.1:6379"], "no Ray cluster reachable"),  # unroutable: a timeout, not a hang
    (["--address", "127.0.0.1:9"], "--address needs --storage"),
    (["--cpus-per-run", "0"], "--cpus-per-run must be positive"),
    pytest.param(["--gpus-per-run", "0.25"], "--gpus-per-run 0.25: the Ray cluster has 0 GPUs",  # not a hang in Tune
                 marks=pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")),
])
def test_sweep_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    if "--address" in args and "storage" not in message:
        args = [*args, "--storage", str(tmp_path / "shared")]
    flags = [x for i in range(0, len(GRID), 2) if GRID[i] not in args for x in GRID[i:i + 2]]
    start = time.monotonic()
    proc = sacae("sweep", *flags, *args, "--out", str(tmp_path / "s"), timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_sweep_out_that_is_a_file_is_one_line(tmp_path: Path, resume: list[str]) -> None:
    (tmp_path / "s").write_text("mine")
    proc = sacae("sweep", *GRID, *resume, "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and f"--out {tmp_path / 's'}: is a file; name a directory" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and (tmp_path / "s").read_text() == "mine"


def test_sweep_refuses_a_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    proc = sacae("sweep", *GRID, "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "is not empty; pass --resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- sweep on embedded Ray


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


DIES = "sac-ae/cartpole-swingup/seed_1"


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """2 algos x 1 task x 2 seeds on 2 CPUs; one SAC+AE trial's process dies once at env step 400
    (its checkpoint is at 200), and Ray's retry resumes it."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    env = dict(os.environ, SACAE_SWEEP_TEST_DIE=f"{DIES}@400")
    proc = subprocess.run([*SACAE, "sweep", "--algo", "sac-ae,sac-state", "--env", "cartpole-swingup", "--seeds", "2",
                           "--preset", "smoke", "--env-steps", "600", "--set", "checkpoint_every=200",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_sweep_writes_ordinary_run_folders_and_a_report(
        smoke_sweep: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = smoke_sweep
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["trials"], summary["ran"], summary["failed"]) == (4, 4, [])
    for algo in ("sac-ae", "sac-state"):
        for seed in (1, 2):
            folder = out / "trials" / algo / "cartpole-swingup" / f"seed_{seed}"
            cfg = json.loads((folder / "config.json").read_text())
            assert (cfg["algo"], cfg["seed"], cfg["env_steps"]) == (algo, seed, 600)
            assert (cfg["threads"], cfg["device"]) == (1, "cpu")
            assert [int(r["env_step"]) for r in _rows(folder / "eval.csv")][-1] == 600
            assert (folder / "checkpoints" / "latest").read_text().startswith("step_000000600")
    assert "Traceback" not in proc.stderr and "INFO" not in proc.stderr  # Ray's own logs stay off the terminal
    assert "sweep summary" in proc.stderr
    report = sacae("report", str(out), check=True)
    assert json.loads(report.stdout.strip().splitlines()[-1]) == {
        "report": str(out / "report"), "trials": 4, "unfinished": 0, "not_started": 0}
    assert {"results.md", "results.json", "results.csv", "curves.png"} <= {p.name for p in (out / "report").iterdir()}


@pytest.mark.slow
def test_a_trial_folder_exports_like_a_train_run(smoke_sweep: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    folder = smoke_sweep[0] / "trials" / "sac-ae" / "cartpole-swingup" / "seed_2"
    sacae("export", str(folder), check=True)
    assert (folder / "policy.onnx").stat().st_size > 0


@pytest.mark.slow
def test_a_trial_that_dies_is_retried_and_resumes(smoke_sweep: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = smoke_sweep
    folder = out / "trials" / DIES
    died = folder / ".sweep_test_died"
    assert died.read_text() == "400"
    death = died.stat().st_mtime
    rows = _rows(folder / "train.csv")
    assert [int(r["env_step"]) for r in rows] == [200, 400, 600]  # no gap, no duplicate
    # The row up to the checkpoint at 200 was kept from the first attempt; later ones were redone.
    assert [float(r["wall_time"]) < death for r in rows] == [True, False, False]
    assert f"{DIES}  retrying" in proc.stderr


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_skips_finished_trials(tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = ["sweep", "--algo", "sac-state", "--env", "cartpole-swingup", "--seeds", "2", "--preset", "smoke",
            "--env-steps", "1000", "--set", "checkpoint_every=200", "--max-concurrent", "1", "--out", str(out)]
    driver = subprocess.Popen([*SACAE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    first, second = (out / "trials" / "sac-state" / "cartpole-swingup" / f"seed_{s}" for s in (1, 2))
    deadline = time.time() + 300
    while time.time() < deadline and not (second / "checkpoints" / "latest").exists():
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and every Ray process it started
    driver.wait()
    assert (first / "checkpoints" / "latest").read_text().startswith("step_000001000")
    assert not (second / "checkpoints" / "latest").read_text().startswith("step_000001000")
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    proc = sacae(*args, "--resume", check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["done_earlier"], summary["ran"], summary["failed"]) == (1, 1, [])
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == before  # the finished trial was not touched
    assert [int(r["env_step"]) for r in _rows(second / "train.csv")] == list(range(200, 1001, 200))
    assert (second / "checkpoints" / "latest").read_text().startswith("step_000001000")


@pytest.mark.slow
def test_a_trial_that_cannot_resume_fails_once_with_its_own_message(tmp_path: Path) -> None:
    """A damaged checkpoint fails the same way on every retry: the trial is not retried, and the
    sweep's one-line error is the run's own message, not Ray's wrapper."""
    out = tmp_path / "s"
    args = ["sweep", "--algo", "sac-state", "--env", "cartpole-swingup", "--seeds", "1", "--preset", "smoke",
            "--set", "checkpoint_every=200", "--out", str(out)]
    sacae(*args, "--env-steps", "400", check=True)
    folder = out / "trials" / "sac-state" / "cartpole-swingup" / "seed_1"
    (folder / "checkpoints" / "step_000000400" / "manifest.json").unlink()
    proc = sacae(*args, "--env-steps", "600", "--resume")
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 1 trial(s) failed") and "manifest.json is missing" in error
    assert "ray::" not in error and "retrying" not in proc.stderr
