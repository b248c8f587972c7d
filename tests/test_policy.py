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
from test_export import exported  # the session's exported runs (built once, shared with test_export)

from sacae_deploy import Policy
from sacae_deploy import contract as C
from sacae_deploy.errors import SacaeError
from train.envs import FrameStack, PixelObservation, Step


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("policy_runs")


@pytest.fixture(scope="session")
def sac_ae(root: Path) -> tuple[Any, Path]:
    return exported(root, "sac-ae")


def _frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class _FrameFeed:
    """The inner env for the training wrappers: a fixed frame sequence instead of a renderer."""

    def reset(self, seed: int | None = None) -> None:
        return None

    def step(self, action: np.ndarray) -> Step:
        return Step(None, 0.0, False, 1.0)  # type: ignore[arg-type]


def _training_stacks(frames: np.ndarray, k: int, resets: set[int]) -> Iterator[np.ndarray]:
    """Observations that train.envs.FrameStack(PixelObservation(...)) makes of `frames`."""
    it = iter(frames)
    env = FrameStack(PixelObservation(_FrameFeed(), frames.shape[1], render=lambda e, s: next(it)), k)
    for t in range(len(frames)):
        yield env.reset() if t in resets else env.step(np.zeros(1, np.float32)).obs


def test_act_stacks_frames_exactly_as_training(sac_ae: tuple[Any, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path, device="cpu")
    frames, resets = _frames(14, run.cfg.image_size), {0, 6, 7}  # two resets back to back
    for t, obs in enumerate(_training_stacks(frames, run.cfg.frame_stack, resets)):
        if t in resets:
            policy.reset()
        np.testing.assert_allclose(policy.act(frames[t]), run.agent.act(obs, mean=True), atol=1e-5, rtol=0)


def test_reset_pads_with_the_first_frame(sac_ae: tuple[Any, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path, device="cpu")
    frames = _frames(5, run.cfg.image_size, seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (padded,) = session.run(None, {C.IN_FRAMES: np.stack([frames[0]] * run.cfg.frame_stack)[None]})
    first = policy.act(frames[0])
    np.testing.assert_allclose(first, padded[0], atol=1e-6)
    for f in frames[1:]:
        policy.act(f)
    policy.reset()
    np.testing.assert_array_equal(policy.act(frames[0]), first)  # nothing of the old episode is left


def test_act_returns_a_fresh_array(sac_ae: tuple[Any, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path, device="cpu")
    frames = _frames(2, run.cfg.image_size, seed=4)
    a = policy.act(frames[0])
    keep = a.copy()
    policy.act(frames[1])
    assert a.dtype == np.float32 and a.shape == (1,)
    np.testing.assert_array_equal(a, keep)


def test_state_policy_takes_the_state_vector(root: Path) -> None:
    run, path = exported(root, "sac-state")
    policy = Policy.load(path, device="cpu")
    assert policy.interface == C.I_STATE and policy.state_dim == 5 and policy.image_size is None
    state = np.random.default_rng(0).standard_normal(5)  # float64, as dm_control returns it
    np.testing.assert_allclose(policy.act(state), run.agent.act(state.astype(np.float32), mean=True), atol=1e-5)
    with pytest.raises(SacaeError, match=r"state has shape \(4,\), this policy takes \(5,\)"):
        policy.act(state[:4])
    with pytest.raises(SacaeError, match="state has dtype int64, this policy takes a float vector"):
        policy.act(np.arange(5))


@pytest.mark.parametrize("history", ["stateful", "stateless"])
def test_slac_policy_keeps_the_training_history(root: Path, history: str) -> None:
    """Both SLAC graphs driven by Policy reproduce SlacAgent's own HistoryPolicy, resets included."""
    run, path = exported(root, "slac", None if history == "stateful" else history)
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


def test_metadata_and_attributes(sac_ae: tuple[Any, Path]) -> None:
    run, path = sac_ae
    policy = Policy.load(path.parent, device="cpu", threads=2)  # a run directory finds its policy.onnx
    assert policy.path == path
    assert policy.metadata[C.K_ALGO] == "sac-ae" and set(C.REQUIRED_KEYS) <= set(policy.metadata)
    assert (policy.algo, policy.env, policy.interface) == ("sac-ae", "cartpole-swingup", C.I_FRAME_STACK)
    assert policy.action_repeat == 8 and policy.image_size == run.cfg.image_size and policy.frame_stack == 3
    assert policy.action_dim == 1 and policy.control_timestep == pytest.approx(0.01)
    assert policy.device == "cpu" and policy.providers == ["CPUExecutionProvider"] and policy.threads == 2
    line = policy.describe()
    assert "\n" not in line and "sac-ae" in line and "on CPU, 2 threads" in line


def test_device_choice_is_verified(sac_ae: tuple[Any, Path]) -> None:
    path = sac_ae[1]
    auto = Policy.load(path)  # auto: CUDA only if onnxruntime really starts it, else the CPU
    assert auto.device == ("cuda" if "CUDAExecutionProvider" in auto.providers else "cpu")
    try:
        cuda = Policy.load(path, device="cuda")
    except SacaeError as exc:
        assert str(exc).startswith("device cuda: ") and "\n" not in str(exc)
        assert auto.device == "cpu"
    else:
        assert cuda.device == "cuda" and cuda.providers[0] == "CUDAExecutionProvider"
    with pytest.raises(SacaeError, match="device must be one of auto, cpu, cuda"):
        Policy.load(path, device="tpu")


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_pulls_in_neither_torch_nor_the_simulator() -> None:
    proc = _run_python("""
        import sys
        import sacae_deploy.policy
        print([m for m in ("torch", "dm_control", "mujoco", "onnx") if m in sys.modules])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_policy_works_with_torch_unimportable(sac_ae: tuple[Any, Path], tmp_path: Path) -> None:
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


def test_no_onnxruntime_noise_when_cuda_is_refused(sac_ae: tuple[Any, Path]) -> None:
    proc = _run_python(f"""
        from sacae_deploy import Policy
        from sacae_deploy.errors import SacaeError
        try:
            print(Policy.load({str(sac_ae[1])!r}, device="cuda").describe())
        except SacaeError as exc:
            print(exc)
    """)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.count("\n") == 1


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
    onnx.helper.set_model_props(plain, {C.K_FORMAT: C.FORMAT_VERSION, C.K_ALGO: "sac-ae"})
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
def test_bad_frames_are_refused_with_what_to_fix(sac_ae: tuple[Any, Path], bad: Any, message: str) -> None:
    policy = Policy.load(sac_ae[1], device="cpu")
    assert policy.image_size == 32
    with pytest.raises(SacaeError, match=message):
        policy.act(bad)
