"""Issue 22, sections 3 and 4: every output path and size is checked before work starts (one line,
exit 2), and SIGINT/SIGTERM end `sacae run`, `eval` and `train` with their files finished and exit
codes 130/143."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image, ImageSequence

from helpers import SACAE, export_tiny_sac, sacae
from sacae_deploy import interrupts
from sacae_deploy.interrupts import Interrupted
from sacae_deploy.sources import DMCSource, VideoSource
from sacae_deploy.video import VideoWriter
from train.config import ConfigError

SMOKE = ["--algo", "sac-ae", "--env", "cartpole-swingup", "--preset", "smoke"]
ENV_STEPS_PER_EPISODE, K = 1000, 8  # cartpole-swingup, the tiny policy's action repeat


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("smoke") / "policy.onnx"
    export_tiny_sac(path, action_repeat=K)
    return path


# ------------------------------------------------------------------------------------ output paths & sizes
def a_file(tmp: Path) -> Path:
    path = tmp / "file.txt"
    path.write_text("x")
    return path


def a_dir(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


BAD: dict[str, Callable[[Path, str], tuple[list[Any], str]]] = {
    "eval --out an existing file": lambda t, p: (["eval", p, "--out", a_file(t)], "is a file; name a directory"),
    "run --jsonl a directory": lambda t, p: (["run", p, "--source", "dmc", "--jsonl", t], "is a directory"),
    "run --summary-json under a file": lambda t, p: (
        ["run", p, "--source", "dmc", "--summary-json", a_file(t) / "s.json"], "file.txt is a file, not a directory"),
    "run --summary-json in /proc": lambda t, p: (
        ["run", p, "--source", "dmc", "--summary-json", "/proc/sacae/s.json"], "cannot create files in /proc"),
    "run --record .avi": lambda t, p: (["run", p, "--source", "dmc", "--record", t / "x.avi"],
                                       "unsupported file type '.avi'; use .mp4 or .gif"),
    "run --record a directory": lambda t, p: (["run", p, "--source", "dmc", "--record", a_dir(t, "r.mp4")],
                                              "is a directory"),
    "run --threads 2000": lambda t, p: (["run", p, "--source", "dmc", "--threads", "2000"],
                                        "Invalid value for '--threads'"),
    "export --out a directory": lambda t, p: (["export", t, "--out", a_dir(t, "p.onnx")], "is a directory"),
    "train --out under a file": lambda t, p: (["train", *SMOKE, "--out", a_file(t) / "run"], "is a file, not a"),
    "train --out in /proc": lambda t, p: (["train", *SMOKE, "--out", "/proc/sacae-run"],
                                          "cannot create files in /proc"),
    "train image_size=1000": lambda t, p: (["train", *SMOKE, "--out", t / "r", "--set", "image_size=1000"],
                                           "image_size must be at most 480 (MuJoCo's offscreen framebuffer"),
    "train hidden_dim=1e10": lambda t, p: (["train", *SMOKE, "--out", t / "r", "--set", "hidden_dim=10000000000"],
                                           "hidden_dim must be at most 4096"),
    "train threads=2000": lambda t, p: (["train", *SMOKE, "--out", t / "r", "--set", "threads=2000"],
                                        "threads must be at most"),
    "preview --out .avi": lambda t, p: (["distractors", "preview", "--out", t / "x.avi"], "unsupported file type"),
    "preview --size 1000": lambda t, p: (["distractors", "preview", "--out", t / "x.gif", "--size", "1000"],
                                         "Invalid value for '--size'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_outputs_and_sizes_are_one_line_exit_2_before_any_work(case: str, policy: Path, tmp_path: Path) -> None:
    args, message = BAD[case](tmp_path, str(policy))
    before = sorted(tmp_path.rglob("*"))
    proc = sacae(*map(str, args))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_dmc_source_refuses_frames_beyond_the_framebuffer() -> None:
    with pytest.raises(ConfigError, match="at most 480x480"):
        DMCSource("cartpole-swingup", 481)


# ------------------------------------------------------------------------------------ signals, in-process
@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's handler in this process; handlers and module state are restored afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    for name in ("_received", "_raised", "_holding", "_count"):
        monkeypatch.setattr(interrupts, name, getattr(interrupts, name))
    interrupts.install()
    yield
    for sig, old in saved.items():
        signal.signal(sig, old)


def test_signal_inside_held_is_raised_when_it_ends(handler: None) -> None:
    done = []
    with pytest.raises(Interrupted) as stop:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("finished")
    assert done == ["finished"] and stop.value.exit_code == 143 and stop.value.signal_name == "SIGTERM"


def test_allowed_reopens_a_held_section(handler: None) -> None:
    reached = []
    with pytest.raises(Interrupted):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            with interrupts.allowed():
                reached.append("allowed")
    assert reached == []


def test_signals_after_the_first_do_not_break_finishing(handler: None) -> None:
    with pytest.raises(Interrupted) as stop:
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_code == 130
    os.kill(os.getpid(), signal.SIGTERM)  # while files are being finished: ignored
    received = interrupts.received()
    assert received is not None and received.exit_code == 130


def test_a_third_signal_exits_at_once_without_finishing() -> None:
    """The way out when finishing hangs: the third signal ends the process with 128 + its number."""
    code = ("import os, signal, time\n"
            "from sacae_deploy import interrupts\n"
            "interrupts.install()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "except KeyboardInterrupt:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(5)\n"
            "print('finished')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143 and "finished" not in done.stdout


def test_video_writer_completes_the_frame_and_closes_on_a_signal(handler: None, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal while imageio hands a frame to ffmpeg used to kill ffmpeg (no moov atom)."""
    writer = VideoWriter(tmp_path / "v.mp4", fps=10)
    inner = writer._writer.append_data

    def append_then_signal(frame: np.ndarray) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of append
        inner(frame)

    writer.append(np.zeros((16, 16, 3), np.uint8))
    monkeypatch.setattr(writer._writer, "append_data", append_then_signal)
    with pytest.raises(Interrupted):
        writer.append(np.full((16, 16, 3), 200, np.uint8))
    writer.close()
    with VideoSource(tmp_path / "v.mp4") as video:
        assert len(list(video)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


# ------------------------------------------------------------------------------------ signals, end to end
def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*SACAE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl")))


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob(".*")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_signal_finishes_recording_jsonl_and_summary(sig: signal.Signals, policy: Path, tmp_path: Path) -> None:
    jsonl, record, summary_path = tmp_path / "run.jsonl", tmp_path / "seen.mp4", tmp_path / "summary.json"
    proc = start("run", str(policy), "--source", "dmc", "--episodes", "20", "--device", "cpu", "--threads", "1",
                 "--jsonl", str(jsonl), "--record", str(record), "--summary-json", str(summary_path))
    wait_for(lambda: jsonl.exists() and jsonl.stat().st_size > 0, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and f"interrupted ({sig.name})" in stderr
    summary = json.loads(summary_path.read_text())
    assert summary["interrupted"] and 0 < summary["frames"] < 20 * ENV_STEPS_PER_EPISODE
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [ln["frame"] for ln in lines] == list(range(summary["frames"]))
    assert sum(ln["decision"] for ln in lines) == summary["decisions"]
    with VideoSource(record) as video:
        assert sum(1 for _ in video) == summary["frames"]  # every frame seen, and the file plays
    assert no_temp_files(tmp_path)


def test_eval_sigint_writes_the_finished_conditions_and_the_video(policy: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = start("eval", str(policy), "--episodes", "2", "--distractors", "none,balls", "--device", "cpu",
                 "--out", str(out))
    assert proc.stderr is not None
    for line in proc.stderr:  # each condition prints one line when it is done
        if " none:" in line:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: the report holds the conditions finished (none)" in stderr
    data = json.loads((out / "results.json").read_text())
    assert data["conditions"] == ["none"] and len(data["rows"][0]["none"]["returns"]) == 2
    assert (out / "results.md").read_text() in stdout
    # The clean episode's decisions, all of them: GIF writers merge repeated frames, so count time.
    with Image.open(out / "videos" / f"{policy.parent.name}.gif") as gif:
        shown_ms = sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif))
    assert shown_ms == pytest.approx(ENV_STEPS_PER_EPISODE // K * 1000 / 12, rel=0.1)  # 12 fps (fps_of)
    assert no_temp_files(out)


def test_train_sigterm_exits_143_and_the_run_resumes(run_dir: Path) -> None:
    proc = start("train", *SMOKE, "--out", str(run_dir), "--env-steps", "4000", "--set", "checkpoint_every=200",
                 "--set", "eval_every=100000")
    latest = run_dir / "checkpoints" / "latest"
    wait_for(lambda: latest.exists() and latest.read_text() >= "step_000000200", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "interrupted (SIGTERM)" in stderr
    stopped_at = int(latest.read_text().split("_")[1])
    sacae("train", *SMOKE, "--out", str(run_dir), "--env-steps", str(stopped_at + 200), "--resume", check=True)
    with open(run_dir / "train.csv") as fh:
        steps = [int(row["env_step"]) for row in csv.DictReader(fh)]
    assert steps == list(range(200, stopped_at + 201, 200))
