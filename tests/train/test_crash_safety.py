"""A run is never lost: kills at any instant (inside every checkpoint write, the final save and the
log writes), damaged checkpoints and pointers, a second writer, a full disk."""

from __future__ import annotations

import csv
import errno
import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from helpers import SACAE
from sacae_deploy import files
from sacae_deploy.files import DiskFullError, lock_dir
from train import checkpoint
from train.checkpoint import CheckpointError
from train.logger import CsvLog
from train.replay import FrameReplay

# sac-state: the same checkpoint and log code as the pixel agents at a fraction of a process's time.
# 4 episodes of 80 env steps (10 agent steps), a checkpoint after each, evals at 0, 160 and 320.
RUN = ["train", "--algo", "sac-state", "--env", "cartpole-swingup", "--preset", "smoke", "--env-steps", "320",
       "--seed", "3", "--set", "episode_length=80", "--set", "checkpoint_every=80", "--set", "eval_every=160",
       "--set", "seed_steps=8", "--set", "threads=1"]
CLOCK_COLUMNS = ("steps_per_s", "wall_time")  # differ between any two runs


def _launch(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.pop("SACAE_TEST_KILL_AT", None)
    if kill_at is not None:
        env["SACAE_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([*SACAE, *RUN, "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _rows(path: Path, drop: tuple[str, ...] = CLOCK_COLUMNS) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def _published(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text()


def _tb_steps(run: Path) -> dict[str, list[int]]:
    """Each TensorBoard scalar's steps as TensorBoard shows them (earlier writers' purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tree(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_size for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """The uninterrupted run, started in the background as soon as a test asks for it (it overlaps
    the kill chain); call the returned function to wait for its folder."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _launch(out)

    def finished() -> Path:
        if proc.returncode is None:
            code, err = _finish(proc)
            assert code == 0, err[-3000:]
        return out

    return finished


# (kill point, the evals the killed process ran, the step of the checkpoint the next --resume continues
# from; None: none yet). In an uninterrupted run: eval 0, train row 80, save 80, row 160, save 160, eval 160,
# row 240, save 240, row 320, eval 320, final save 320 (no in-loop save at the budget: the final one follows).
KILLS = [
    ("ckpt-agent:1", [0], None),        # inside the first save: start over, eval 0 and row 80 not logged twice
    ("ckpt-replay:2", [0], 80),         # save 160, replay written, not published
    ("log-eval:1", [], 160),            # eval row 160 written after checkpoint 160: dropped, evaluated again
    ("ckpt-renamed:1", [160], 160),     # step_240 complete, `latest` not yet switched: the next is step_240.1
    ("log-train:2", [160], 240),        # train row 320 written, its episode not checkpointed
    ("ckpt-switched:1", [320], 320),    # final save published, step_240.1 not yet deleted
    ("ckpt-agent:1", [], 320),          # --resume of the finished run: its re-save of step 320, killed inside
]


def _evals(stderr: str) -> list[int]:
    """The eval steps a `sacae train` process ran (its progress lines): where it really continued from."""
    return [int(m[1].replace(",", "")) for m in re.finditer(r"^eval\s+env_step=\s*([\d,]+)", stderr, re.M)]


def test_kills_anywhere_lose_nothing(tmp_path: Path, reference: Callable[[], Path]) -> None:
    """SIGKILL at every named instant of a run's life, --resume after each: every resume continues
    from the last published checkpoint, and the final logs (each step once, TensorBoard too) and
    weights are those of the uninterrupted run with the same seed."""
    run = tmp_path / "run"
    for i, (point, evals, resume_from) in enumerate(KILLS):
        code, err = _finish(_launch(run, *(["--resume"] if i else []), kill_at=point))
        assert code == -signal.SIGKILL and _evals(err) == evals, f"{point}: exit {code}\n{err[-3000:]}"
        paths, _ = checkpoint.candidates(run)
        if resume_from is None:
            assert not paths, point
        else:
            checkpoint.verify(paths[0])
            assert json.loads((paths[0] / "state.json").read_text())["env_step"] == resume_from, point
    code, err = _finish(_launch(run, "--resume"))
    assert code == 0 and _evals(err) == [] and "Traceback" not in err, err[-3000:]

    ref = reference()
    assert _rows(run / "train.csv") == _rows(ref / "train.csv")
    assert [r["env_step"] for r in _rows(run / "train.csv")] == ["80", "160", "240", "320"]
    assert _rows(run / "eval.csv") == _rows(ref / "eval.csv")
    assert [r["env_step"] for r in _rows(run / "eval.csv")] == ["0", "160", "320"]
    if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard logs only where it is installed
        got, want = _tb_steps(run), _tb_steps(ref)
        assert got == want and got["eval/episode_return"] == [0, 160, 320]
    final = _published(run)
    assert final.name == "step_000000320.1"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", final.name]  # no leftovers
    assert (final / "state.json").read_text() == (_published(ref) / "state.json").read_text()
    weights = [torch.load(p / "agent.pt", weights_only=True) for p in (final, _published(ref))]
    _assert_equal(weights[0], weights[1])


def _assert_equal(a: Any, b: Any, where: str = "agent.pt") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


# ------------------------------------------------------------------ damaged runs through the CLI
def _copy(ref: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    return run


def test_damage_falls_back_to_an_older_checkpoint_with_notes(tmp_path: Path, reference: Callable[[], Path]) -> None:
    """A garbage `latest` pointer, a damaged newest checkpoint and a torn train.csv row: --resume
    continues from the older intact checkpoint, says so (one line for the checkpoints, one for the
    log), and keeps every log step once."""
    ref = reference()
    run = _copy(ref, tmp_path)
    root = run / "checkpoints"
    shutil.copytree(root / "step_000000320", root / "step_000000320.1")
    agent = root / "step_000000320.1" / "agent.pt"
    size = agent.stat().st_size
    agent.write_bytes(agent.read_bytes()[:100])
    (root / "latest").write_text("\x00garbage")
    with open(run / "train.csv", "a") as fh:
        fh.write("32")  # a row torn by a full disk
    code, err = _finish(_launch(run, "--resume"))
    assert code == 0, err[-3000:]
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: checkpoints/latest is not a checkpoint name ('\\x00garbage'); checkpoint "
                     f"{root / 'step_000000320.1'} is damaged: agent.pt has 100 bytes, the manifest says "
                     f"{size:,}; resuming from step_000000320",
                     f"note: dropped 1 unreadable row(s) from {run / 'train.csv'}"], err
    assert _rows(run / "train.csv") == _rows(ref / "train.csv")
    assert _rows(run / "eval.csv") == _rows(ref / "eval.csv")
    assert sorted(os.listdir(root)) == ["latest", "step_000000320.2"]


def test_only_damaged_checkpoints_exit_2_and_delete_nothing(tmp_path: Path, reference: Callable[[], Path]) -> None:
    run = _copy(reference(), tmp_path)
    agent = _published(run) / "agent.pt"
    agent.write_bytes(agent.read_bytes()[:100])
    before = _tree(run)
    code, err = _finish(_launch(run, "--resume"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: checkpoint {_published(run)} is damaged: agent.pt has 100 bytes"), err
    assert _tree(run) == before


def test_a_second_writer_is_refused(tmp_path: Path, reference: Callable[[], Path]) -> None:
    """One writer per run folder: a `train` or `--resume` on a folder another process holds exits 2
    in one line, touching nothing; the lock dies with its holder, even by SIGKILL."""
    run = _copy(reference(), tmp_path)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    held = [lock_dir(run), lock_dir(fresh)]
    before = _tree(run)
    for out, extra in ((run, ["--resume"]), (fresh, [])):
        code, err = _finish(_launch(out, *extra))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{out} is in use by another `sacae train` (pid {os.getpid()})" in err
    assert _tree(run) == before and [p.name for p in fresh.iterdir()] == [files.LOCK_NAME]
    for fh in held:
        fh.close()
    code = subprocess.run([sys.executable, "-c", "import os, signal, sys; from pathlib import Path; "
                           "from sacae_deploy.files import lock_dir; lock_dir(Path(sys.argv[1])); "
                           "os.kill(os.getpid(), signal.SIGKILL)", str(run)]).returncode
    assert code == -signal.SIGKILL
    lock_dir(run).close()  # the killed holder's lock is gone with it


def test_a_full_disk_is_one_line_and_keeps_the_published_checkpoint(tmp_path: Path) -> None:
    """A real ENOSPC: the run on a 160 KiB tmpfs (room for one checkpoint, not two) stops with one
    line naming the folder and the bytes needed. Mounting needs root: skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code, err = _finish(_launch(disk / "run"))
        assert code == 2 and "Traceback" not in err, err[-3000:]
        last = err.strip().splitlines()[-1]  # after the progress lines
        assert re.fullmatch(rf"error: no space left in {re.escape(str(disk / 'run'))}\S*: "
                            r"\S+( \S+)? needs [\d,]+ bytes, [\d,]+ bytes "
                            r"are free; free some space and continue with --resume", last), last
        checkpoint.verify(_published(disk / "run"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ------------------------------------------------------------------ checkpoints, in-process
def _replay(slots: int = 30, capacity: int = 50) -> FrameReplay:
    replay = FrameReplay(capacity, (5,), np.float32, action_dim=1, check_memory=False)
    for t in range(slots):  # episodes of 10 slots
        if t % 10 == 0:
            replay.add_first(np.full(5, t, np.float32))
        else:
            replay.add(np.full(5, t, np.float32), np.ones(1, np.float32), 1.0, 1.0)
    return replay


def _state(env_step: int, replay: FrameReplay) -> dict[str, Any]:
    return {"env_step": env_step, "agent_step": replay.total - 3, "episode": 3, "pretrained": False,
            "next_eval": 0, "next_ckpt": 0, "eval_returns": [1.5],
            "numpy_rng": np.random.default_rng(0).bit_generator.state}


def _save(run: Path, env_step: int, replay: FrameReplay, previous: Path | None = None) -> Path:
    return checkpoint.save(run, env_step, {"w": torch.arange(4.0)}, _state(env_step, replay), replay, previous)


def _open(path: Path) -> None:
    """Everything a resume reads and checks: the manifest, the weights, the counters, the replay."""
    from train.workspace import check_state

    _, state = checkpoint.load(path)
    check_state(state, path)
    _replay().load(path / "replay")


def _reseal(path: Path) -> None:
    """Record the damage in the manifest, as if a buggy writer had made it: the checks behind the hashes."""
    (path / checkpoint.MANIFEST).write_text(json.dumps(checkpoint._manifest(path)))


def _set_meta(path: Path, **changes: Any) -> None:
    meta = path / "replay" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **changes}))


def _set_chunk(path: Path, **arrays: np.ndarray) -> None:
    chunk = path / "replay" / "chunk00000.npz"
    with np.load(chunk) as data:
        content = {**dict(data), **arrays}
    with open(chunk, "wb") as fh:
        np.savez(fh, **content)


def _flip_obs_byte(chunk: Path) -> None:
    """Change one byte of the stored observations: the size stays, only the npz member's CRC-32 can tell."""
    with zipfile.ZipFile(chunk) as z:
        at = z.getinfo("obs.npy").header_offset
    data = bytearray(chunk.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[at + 26:at + 30])
    data[at + 30 + name_len + extra_len + 200] ^= 0xFF  # past the .npy header, inside the floats
    chunk.write_bytes(bytes(data))


DAMAGE: list[tuple[str, Callable[[Path], Any], bool, str]] = [
    # (case, damage, reseal the manifest afterwards, what the one line says)
    ("empty agent.pt", lambda p: (p / "agent.pt").write_bytes(b""), False, "agent.pt has 0 bytes, the manifest says"),
    ("random agent.pt", lambda p: (p / "agent.pt").write_bytes(os.urandom((p / "agent.pt").stat().st_size)),
     False, "agent.pt does not match its blake2b"),
    ("state.json lacks a key", lambda p: (p / "state.json").write_text("{}"), False, "state.json has 2 bytes"),
    ("chunk missing", lambda p: (p / "replay" / "chunk00000.npz").unlink(), False, "chunk00000.npz is missing"),
    ("chunk truncated", lambda p: (p / "replay" / "chunk00000.npz").write_bytes(b"PK"), False,
     "replay/chunk00000.npz has 2 bytes"),
    ("chunk bytes flipped", lambda p: _flip_obs_byte(p / "replay" / "chunk00000.npz"), False,
     "chunk00000.npz is unreadable (BadZipFile)"),
    ("garbage meta.json", lambda p: (p / "replay" / "meta.json").write_text("{{{{"), False,
     "replay/meta.json has 4 bytes"),
    ("no manifest", lambda p: (p / checkpoint.MANIFEST).unlink(), False, "manifest.json is missing"),
    ("garbage manifest", lambda p: (p / checkpoint.MANIFEST).write_text("[1]"), False, "manifest.json is unreadable"),
    ("a pickle in place of weights", lambda p: (p / "agent.pt").write_bytes(pickle.dumps(os.system, protocol=2)), True,
     "agent.pt is not a weights file torch can read (UnpicklingError)"),
    # Seeded random bytes: torch's weights-only unpickler fails on them in several ways (the seed -> error
    # pairs found by trying seeds 0-299 with torch 2.13); each must become the same one-line error.
    *[(f"random agent.pt ({error}), resealed",
       lambda p, seed=seed: (p / "agent.pt").write_bytes(np.random.default_rng(seed).bytes(500)), True,
       f"agent.pt is not a weights file torch can read ({error})")
      for seed, error in ((0, "UnpicklingError"), (17, "IndexError"), (62, "KeyError"), (54, "UnicodeDecodeError"))],
    ("empty agent.pt, resealed", lambda p: (p / "agent.pt").write_bytes(b""), True, "(EOFError)"),
    ("state.json lacks a key, resealed", lambda p: (p / "state.json").write_text('{"env_step": 1}'), True,
     "state.json has no agent_step"),
    ("state.json wrong type", lambda p: (p / "state.json").write_text(
        json.dumps({**json.loads((p / "state.json").read_text()), "episode": "3"})), True, "state.json episode is '3'"),
    ("garbage meta.json, resealed", lambda p: (p / "replay" / "meta.json").write_text("{{{{"), True,
     "meta.json is unreadable (JSONDecodeError)"),
    ("meta total 1e9", lambda p: _set_meta(p, total=1e9), True, "meta.json total is 1000000000.0"),
    ("meta total 10**9", lambda p: _set_meta(p, total=10**9), True,
     "chunk00000.npz holds obs as float32 [30, 5], expected float32 [50, 5]"),
    ("chunk of the wrong shape", lambda p: _set_chunk(p, action=np.zeros((30, 2), np.float32)), True,
     "chunk00000.npz holds action as float32 [30, 2], expected float32 [30, 1]"),
]


@pytest.mark.parametrize("case, damage, reseal, message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path: Path, case: str, damage: Callable[[Path], Any],
                                                   reseal: bool, message: str) -> None:
    path = _save(tmp_path, 30, _replay())
    _open(path)  # intact: opens
    damage(path)
    if reseal:
        _reseal(path)
    with pytest.raises(CheckpointError) as err:
        _open(path)
    assert message in str(err.value) and str(path.name) in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_latest_pointer_problems_fall_back_to_the_newest_folder(tmp_path: Path) -> None:
    replay = _replay()
    old = _save(tmp_path, 30, replay)
    shutil.copytree(old, tmp_path / "checkpoints" / "step_000000010")  # an older one left behind
    root = tmp_path / "checkpoints"
    assert checkpoint.candidates(tmp_path) == ([old, root / "step_000000010"], None)
    for text, problem in (("step_000000999", "names step_000000999, which does not exist"),
                          ("../../etc", "is not a checkpoint name"), (None, "checkpoints/latest is missing")):
        if text is None:
            (root / "latest").unlink()
        else:
            (root / "latest").write_text(text)
        paths, said = checkpoint.candidates(tmp_path)
        assert paths == [old, root / "step_000000010"] and said is not None and problem in said


def test_a_resave_never_removes_the_published_checkpoint_first(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-saving a step (the final save, a resumed finished run) writes a new folder; a save cut
    short (Ctrl-C here) leaves the published one and no half folder; unchanged replay is linked."""
    replay = _replay()
    first = _save(tmp_path, 30, replay)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(FrameReplay, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 30, replay, previous=first)
    monkeypatch.undo()
    assert _published(tmp_path) == first and sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", first.name]
    checkpoint.verify(first)
    monkeypatch.setattr(np, "savez", lambda *a, **k: pytest.fail("an unchanged chunk was written again"))
    second = _save(tmp_path, 30, replay, previous=first)
    assert second.name == "step_000000030.1" and _published(tmp_path) == second and not first.exists()
    checkpoint.verify(second)
    assert _save(tmp_path, 30, replay, previous=second).name == "step_000000030.2"


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    replay = _replay()
    first = _save(tmp_path, 30, replay)
    replay.add(np.zeros(5, np.float32), np.ones(1, np.float32), 1.0, 1.0)  # a changed chunk: it must be written

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(DiskFullError) as err:
        _save(tmp_path, 31, replay, previous=first)
    message = str(err.value)
    assert message.startswith(f"no space left in {tmp_path / 'checkpoints'}: checkpoint step_000000031 needs ")
    assert "bytes are free" in message and "--resume" in message and "\n" not in message
    assert _published(tmp_path) == first and sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", first.name]
    checkpoint.verify(first)


def test_disk_full_while_logging_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = CsvLog(tmp_path / "train.csv", ["env_step", "episode_return"])
    log.write({"env_step": 8, "episode_return": 1.0})

    def full(path: Any, mode: str = "r", **kwargs: Any) -> Any:
        if "r" in mode:
            return open(path, mode, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", full, raising=False)
    with pytest.raises(DiskFullError, match=rf"^no space left in {tmp_path}: train.csv needs 5 bytes, "):
        log.write({"env_step": 16, "episode_return": 2.0})
    with pytest.raises(DiskFullError, match=rf"^no space left in {tmp_path}: eval.png needs 3 bytes, "):
        files.atomic_write_bytes(tmp_path / "eval.png", b"png")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["train.csv"] and log.rows() == [{"env_step": "8", "episode_return": "1"}]

