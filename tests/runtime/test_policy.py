"""`sacae_deploy.Policy`: torch-free, keeps the history exactly as training did (SAC's frame stack,
SLAC's frames + actions, padded at reset), picks and reports its device honestly, and turns every
bad file or frame into a one-line SacaeError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import Exports, Run
from sacae_deploy import Policy, contract
from sacae_deploy.errors import SacaeError
from sacae_deploy.sim.envs import FrameStack, PixelObservation, Step


@pytest.fixture(scope="session")
def sac_ae(exports: Exports) -> tuple[Run, Path]:
    """The session's sac-ae run and its export (conftest's `exports`, shared with test_export)."""
    return exports("sac-ae")


def _frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class _FrameFeed:
    """The inner env for the training wrappers: a fixed frame sequence instead of a renderer."""

    def reset(self, seed: int | None = None) -> None:
        return None

    def step(self, action: np.ndarray) -> Step:
        return Step(None, 0.0, False, 1.0)  # type: ignore[arg-type]


def _training_stacks(frames: np.ndarray, k: int, resets: set[int]) -> Iterator[np.ndarray]:
    """Observations that sacae_deploy.sim.envs.FrameStack(PixelObservation(...)) makes of `frames`."""
    it = iter(frames)
    env = FrameStack(PixelObservation(_FrameFeed(), frames.shape[1], render=lambda e, s: next(it)), k)
    for t in range(len(frames)):
        yield env.reset() if t in resets else env.step(np.zeros(1, np.float32)).obs


def test_act_stacks_frames_exactly_as_training(sac_ae: tuple[Run, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path, device="cpu")
    frames, resets = _frames(14, run.cfg.image_size), {0, 6, 7}  # two resets back to back
    for t, obs in enumerate(_training_stacks(frames, run.cfg.frame_stack, resets)):
        if t in resets:
            policy.reset()
        np.testing.assert_allclose(policy.act(frames[t]), run.agent.act(obs, mean=True), atol=1e-5, rtol=0)


def test_reset_pads_with_the_first_frame(sac_ae: tuple[Run, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path, device="cpu")
    frames = _frames(5, run.cfg.image_size, seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (padded,) = session.run(None, {contract.IN_FRAMES: np.stack([frames[0]] * run.cfg.frame_stack)[None]})
    first = policy.act(frames[0])
    np.testing.assert_allclose(first, padded[0], atol=1e-6)
    for f in frames[1:]:
        policy.act(f)
    policy.reset()
    np.testing.assert_array_equal(policy.act(frames[0]), first)  # nothing of the old episode is left


def test_act_returns_a_fresh_array(sac_ae: tuple[Run, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path, device="cpu")
    frames = _frames(2, run.cfg.image_size, seed=4)
    a = policy.act(frames[0])
    keep = a.copy()
    policy.act(frames[1])
    assert a.dtype == np.float32 and a.shape == (1,)
    np.testing.assert_array_equal(a, keep)


def test_state_policy_takes_the_state_vector(exports: Exports) -> None:
    run, path = exports("sac-state")
    policy = Policy.load(path, device="cpu")
    assert policy.interface == contract.I_STATE and policy.state_dim == 5 and policy.image_size is None
    state = np.random.default_rng(0).standard_normal(5)  # float64, as dm_control returns it
    np.testing.assert_allclose(policy.act(state), run.agent.act(state.astype(np.float32), mean=True), atol=1e-5)
    with pytest.raises(SacaeError, match=r"state has shape \(4,\), this policy takes \(5,\)"):
        policy.act(state[:4])
    with pytest.raises(SacaeError, match="state has dtype int64, this policy takes a float vector"):
        policy.act(np.arange(5))


@pytest.mark.parametrize("history", ["stateful", "stateless"])
def test_slac_policy_keeps_the_training_history(exports: Exports, history: str) -> None:
    """Both SLAC graphs driven by Policy reproduce SlacAgent's own HistoryPolicy, resets included."""
    run, path = exports("slac", None if history == "stateful" else history)
    policy = Policy.load(path, device="cpu")
    assert policy.interface == f"slac_{history}" and policy.frame_stack == run.cfg.history_length
    training = run.agent.episode_policy(mean=True)
    frames, resets = _frames(24, 64, seed=5), {0, 10, 11}
    for t, frame in enumerate(frames):
        obs = frame.transpose(2, 0, 1)
        if t in resets:
            policy.reset()
            training.reset(obs)
        np.testing.assert_allclose(policy.act(frame), training.act(obs), atol=1e-5, rtol=0)


def test_metadata_and_attributes(sac_ae: tuple[Run, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path.parent, device="cpu", threads=2)  # a run directory finds its policy.onnx
    assert policy.path == path
    assert policy.metadata[contract.K_ALGO] == "sac-ae" and set(contract.REQUIRED_KEYS) <= set(policy.metadata)
    assert (policy.algo, policy.env, policy.interface) == ("sac-ae", "cartpole-swingup", contract.I_FRAME_STACK)
    assert policy.action_repeat == 8 and policy.image_size == run.cfg.image_size and policy.frame_stack == 3
    assert policy.action_dim == 1 and policy.control_timestep == pytest.approx(0.01)
    assert policy.device == "cpu" and policy.providers == ["CPUExecutionProvider"] and policy.threads == 2
    line = policy.describe()
    assert "\n" not in line and "sac-ae" in line and "on CPU, 2 threads" in line


def test_spinning_is_a_session_choice_that_does_not_change_actions(sac_ae: tuple[Run, Path]) -> None:
    """spin=False only stops the intra-op threads' spin-wait (onnxruntime's own switch, on by default):
    the same actions, and describe() says so."""
    _, path = sac_ae
    spinning = Policy.load(path, device="cpu", threads=2)
    resting = Policy.load(path, device="cpu", threads=2, spin=False)
    assert spinning.spins and not resting.spins
    assert resting.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert "not spinning" in resting.describe() and "not spinning" not in spinning.describe()
    for frame in _frames(12, spinning.image_size):
        np.testing.assert_array_equal(spinning.act(frame), resting.act(frame))


CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
NO_CUDA_BUILD = ("device cuda: this onnxruntime build has no CUDAExecutionProvider "
                 "(install onnxruntime-gpu, or use device auto / cpu)")
CUDA_WONT_START = ("device cuda: onnxruntime could not start CUDA on this machine (no usable GPU or CUDA libraries); "
                   "use device auto or cpu")


def _onnxruntime_as_on(monkeypatch: pytest.MonkeyPatch, listed: list[str],
                       started: list[str] | None) -> list[list[str]]:
    """Make onnxruntime behave as on another machine: `listed` is what get_available_providers() says, and each
    session runs on the CPU but reports `started` from get_providers() (None: every provider it was
    asked for started), as onnxruntime reports a provider that failed to load by leaving it out.
    Returns the provider lists that sessions were created with."""
    real, asked = ort.InferenceSession, []

    class Session:
        def __init__(self, path: str, opts: Any = None, providers: list[str] | None = None) -> None:
            asked.append(list(providers or []))
            self._started = list(started if started is not None else providers or [])
            self._session = real(path, opts, providers=[CPU_EP])

        def get_providers(self) -> list[str]:
            return self._started

        def __getattr__(self, name: str) -> Any:
            return getattr(self._session, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(listed))
    monkeypatch.setattr(ort, "InferenceSession", Session)
    return asked


def test_device_auto_uses_cuda_when_it_really_starts(sac_ae: tuple[Run, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _onnxruntime_as_on(monkeypatch, [CUDA_EP, CPU_EP], started=None)
    for device in ("auto", "cuda"):
        policy = Policy.load(sac_ae[1], device=device)
        assert policy.device == "cuda" and policy.providers == [CUDA_EP, CPU_EP]
        assert policy.describe().endswith(f"on GPU (CUDA) via onnxruntime {ort.__version__} [{CUDA_EP}]")
    assert asked == [[CUDA_EP, CPU_EP]] * 2
    cpu = Policy.load(sac_ae[1], device="cpu")  # cpu never asks for CUDA, even where it would start
    assert asked[-1] == [CPU_EP] and cpu.device == "cpu" and cpu.providers == [CPU_EP]


def test_device_auto_falls_back_to_the_cpu_when_cuda_does_not_start(sac_ae: tuple[Run, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU build on a machine without a usable GPU: CUDA is listed, asked for, and left out."""
    asked = _onnxruntime_as_on(monkeypatch, ["TensorrtExecutionProvider", CUDA_EP, CPU_EP], started=[CPU_EP])
    auto = Policy.load(sac_ae[1])
    assert asked == [[CUDA_EP, CPU_EP]]  # auto tried CUDA (never TensorRT) ...
    assert auto.device == "cpu" and auto.providers == [CPU_EP]  # ... and reports where it really runs
    assert "on CPU" in auto.describe() and auto.describe().endswith(f"[{CPU_EP}]")
    with pytest.raises(SacaeError) as err:
        Policy.load(sac_ae[1], device="cuda")
    assert str(err.value) == CUDA_WONT_START


def test_device_cuda_on_a_cpu_only_build_is_refused(sac_ae: tuple[Run, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _onnxruntime_as_on(monkeypatch, [CPU_EP], started=None)
    with pytest.raises(SacaeError) as err:
        Policy.load(sac_ae[1], device="cuda")
    assert str(err.value) == NO_CUDA_BUILD and asked == []  # refused before any session was built
    auto = Policy.load(sac_ae[1])
    assert asked == [[CPU_EP]] and auto.device == "cpu" and auto.providers == [CPU_EP]


def test_device_names_are_checked(sac_ae: tuple[Run, Path]) -> None:
    with pytest.raises(SacaeError) as err:
        Policy.load(sac_ae[1], device="tpu")
    assert str(err.value) == "device must be one of auto, cpu, cuda, got 'tpu'"
    with pytest.raises(SacaeError) as err:
        Policy.load(sac_ae[1], device="cpu", threads=0)
    assert str(err.value) == "threads must be >= 1, got 0"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_import_pulls_in_neither_torch_nor_the_simulator() -> None:
    proc = _run_python("""
        import sys
        import sacae_deploy.policy
        print([m for m in ("torch", "dm_control", "mujoco", "onnx") if m in sys.modules])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_policy_works_with_torch_unimportable(sac_ae: tuple[Run, Path], tmp_path: Path) -> None:
    run, path = sac_ae
    frames = _frames(4, run.cfg.image_size, seed=6)
    np.save(tmp_path / "frames.npy", frames)
    proc = _run_python(f"""
        import json, sys
        import numpy as np

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "dm_control", "mujoco", "onnx", "onnxscript"):
                    raise ImportError(f"{{name}} is blocked")

        sys.meta_path.insert(0, Block())
        import sacae_deploy
        policy = sacae_deploy.Policy.load({str(path)!r}, device="auto")
        actions = [policy.act(f).tolist() for f in np.load({str(tmp_path / 'frames.npy')!r})]
        assert not [m for m in ("torch", "dm_control", "mujoco") if m in sys.modules]
        print(json.dumps(actions))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # onnxruntime's C++ provider noise stays out of the terminal
    reference = Policy.load(path, device="cpu")
    np.testing.assert_allclose(json.loads(proc.stdout), [reference.act(f) for f in frames], atol=1e-6)


def test_no_onnxruntime_noise_when_cuda_is_refused(sac_ae: tuple[Run, Path]) -> None:
    """The real onnxruntime of this venv, asked for CUDA where it cannot start it: one line, our own."""
    if Policy.load(sac_ae[1]).device == "cuda":
        pytest.skip("CUDA starts on this machine: nothing is refused")
    refusal = CUDA_WONT_START if CUDA_EP in ort.get_available_providers() else NO_CUDA_BUILD
    proc = _run_python(f"""
        from sacae_deploy import Policy
        from sacae_deploy.errors import SacaeError
        try:
            print(Policy.load({str(sac_ae[1])!r}, device="cuda").describe())
        except SacaeError as exc:
            print(exc)
    """)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == refusal + "\n"


def test_bad_files_are_named_clearly(tmp_path: Path) -> None:
    with pytest.raises(SacaeError, match="policy file .*nope.onnx does not exist"):
        Policy.load(tmp_path / "nope.onnx")
    with pytest.raises(SacaeError, match="is a directory without a policy.onnx"):
        Policy.load(tmp_path)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(SacaeError, match="notes.onnx is not a loadable ONNX model"):
        Policy.load(text)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    plain = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(SacaeError, match="plain.onnx is an ONNX model without sacae metadata"):
        Policy.load(tmp_path / "plain.onnx")
    onnx.helper.set_model_props(plain, {contract.K_FORMAT: contract.FORMAT_VERSION, contract.K_ALGO: "sac-ae"})
    onnx.save(plain, str(tmp_path / "partial.onnx"))
    with pytest.raises(SacaeError, match="partial.onnx lacks sacae metadata keys sacae.env"):
        Policy.load(tmp_path / "partial.onnx")


@pytest.mark.parametrize("bad,message", [
    (np.zeros((64, 64, 3), np.uint8), r"frame is 64x64 but this policy takes 32x32; resize frames first"),
    (np.zeros((32, 32), np.uint8), r"frame must be \(32, 32, 3\) uint8 RGB \(HWC\), got shape \(32, 32\)"),
    (np.zeros((3, 32, 32), np.uint8), r"got shape \(3, 32, 32\)"),
    (np.zeros((32, 32, 3), np.float32), r"frame has dtype float32, this policy takes \(32, 32, 3\) uint8 RGB"),
    ([[0] * 3] * 32, r"frame must be a numpy array \(32, 32, 3\) uint8 RGB, got list"),
])
def test_bad_frames_are_refused_with_what_to_fix(sac_ae: tuple[Run, Path], bad: Any, message: str) -> None:
    policy = Policy.load(sac_ae[1], device="cpu")
    assert policy.image_size == 32
    with pytest.raises(SacaeError, match=message):
        policy.act(bad)
