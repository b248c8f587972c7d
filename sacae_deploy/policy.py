"""`Policy`: run an exported policy with numpy + onnxruntime only (no torch, no dm_control).

    policy = Policy.load("runs/x/policy.onnx")      # device="auto" | "cpu" | "cuda", threads=None
    print(policy.describe())                          # one line: what runs where
    policy.reset()                                    # at every episode start
    action = policy.act(frame)                        # uint8 (H, W, 3) -> float32 (A,) in env bounds

The file describes itself (sacae_deploy/contract.py): the policy keeps the history its algorithm was
trained with (SAC's frame stack, SLAC's frames and actions), padding an episode start the way
training did (first frame repeated, zero actions before it). Frames must already be image_size
square; resizing is the caller's job (`sacae run` does it).

The hot path allocates nothing of its own: histories live in preallocated buffers that onnxruntime
reads in place (OrtValues over numpy memory, bound once with IOBinding), and a new frame is copied
in, never shifted: each history slot is written twice into a 2K ring so every K-window is a
contiguous, oldest-first view.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from sacae_deploy import contract as C
from sacae_deploy.errors import SacaeError

if TYPE_CHECKING:
    import onnxruntime as ort

DEVICES = ("auto", "cpu", "cuda")
WARMUP_RUNS = 5
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
# benchmarks/policy_latency.py on the 2-core dev CPU, paper-size SAC+AE: 2 intra-op threads gave
# p50 1.28 ms / p99 2.43 ms against 2.10 / 2.78 ms for 1 (the fc and MLP layers are memory-bound
# GEMVs; a second core adds bandwidth). Past 2, batch-1 work is too small to split further.
DEFAULT_THREADS = min(2, os.cpu_count() or 1)


class PolicyError(SacaeError, ValueError):
    """A policy file, device or input the runtime cannot use; the message says what to fix."""


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """onnxruntime's C++ logger writes provider-loading failures straight to fd 2, whatever the
    severity settings; the outcome is checked (and reported) through get_providers() instead."""
    sys.stderr.flush()
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _create_session(path: Path, device: str, threads: int | None) -> "ort.InferenceSession":
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or DEFAULT_THREADS
    opts.inter_op_num_threads = 1
    cuda_listed = CUDA_EP in ort.get_available_providers()
    if device == "cuda" and not cuda_listed:
        raise PolicyError("device cuda: this onnxruntime build has no CUDAExecutionProvider "
                          "(install onnxruntime-gpu, or use device auto / cpu)")
    providers = [CUDA_EP, CPU_EP] if device != "cpu" and cuda_listed else [CPU_EP]
    try:
        with _stderr_silenced():
            session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, ...)
        raise PolicyError(f"{path} is not a loadable ONNX model ({_ort_reason(exc)})") from None
    if device == "cuda" and CUDA_EP not in session.get_providers():
        raise PolicyError("device cuda: onnxruntime could not start CUDA on this machine (no usable GPU or "
                          "CUDA libraries); use device auto or cpu")
    return session


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's message without its error-code prefix and C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(" failed:", 1)[-1]
    text = re.sub(r"^/onnxruntime_src/\S+ .*?\) ", "", text)
    return text[:200]


def _metadata(path: Path, session: "ort.InferenceSession") -> dict[str, str]:
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in C.REQUIRED_KEYS if k not in meta]
    if len(missing) == len(C.REQUIRED_KEYS):
        raise PolicyError(f"{path} is an ONNX model without sacae metadata; export policies with "
                          "`sacae export RUN_DIR`")
    if missing:
        raise PolicyError(f"{path} lacks sacae metadata keys {', '.join(missing)}; re-export it with `sacae export`")
    if meta[C.K_FORMAT] != C.FORMAT_VERSION:
        raise PolicyError(f"{path} uses policy format {meta[C.K_FORMAT]!r}; this sacae reads "
                          f"{C.FORMAT_VERSION!r}; re-export it with this version's `sacae export`")
    if meta[C.K_INTERFACE] not in C.INTERFACES:
        raise PolicyError(f"{path} has unknown interface {meta[C.K_INTERFACE]!r} (known: {', '.join(C.INTERFACES)})")
    return meta


def _ort_value(array: np.ndarray) -> Any:
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(array)  # on the CPU it wraps the array's memory: no copy


class _Ring:
    """The last k items, oldest first, as one contiguous (1, k, ...) view, with nothing shifted:
    item i is written to slots i and i + k of a 2k buffer, so window p is slots p+1 .. p+k."""

    def __init__(self, k: int, item_shape: tuple[int, ...], dtype: Any) -> None:
        self.k = k
        self.buf = np.zeros((1, 2 * k, *item_shape), dtype)
        self.windows = [_ort_value(self.buf[:, p + 1:p + 1 + k]) for p in range(k)]
        self.pos = 0

    def fill(self, item: np.ndarray) -> None:
        """Episode start: every slot holds `item` (the padding rule)."""
        self.buf[0] = item
        self.pos = 0

    def push(self, item: np.ndarray) -> None:
        p = self.pos + 1 if self.pos + 1 < self.k else 0
        np.copyto(self.buf[0, p], item)
        np.copyto(self.buf[0, p + self.k], item)
        self.pos = p

    @property
    def window(self) -> Any:
        return self.windows[self.pos]


class Policy:
    """A loaded policy file; create it with `Policy.load`."""

    def __init__(self, path: Path, session: "ort.InferenceSession", metadata: dict[str, str],
                 threads: int | None) -> None:
        self.path = path
        self.session = session
        self.metadata = metadata
        try:
            self.algo = metadata[C.K_ALGO]
            self.env = metadata[C.K_ENV]
            self.interface = metadata[C.K_INTERFACE]
            self.action_dim = int(metadata[C.K_ACTION_DIM])
            self.action_low = np.asarray(json.loads(metadata[C.K_ACTION_LOW]), np.float32)
            self.action_high = np.asarray(json.loads(metadata[C.K_ACTION_HIGH]), np.float32)
            self.action_repeat = int(metadata[C.K_ACTION_REPEAT])
            self.frame_stack = int(metadata[C.K_FRAME_STACK])
            self.image_size: int | None = json.loads(metadata[C.K_IMAGE_SIZE])
            self.control_timestep = float(metadata[C.K_CONTROL_TIMESTEP])
            self.state_dim: int | None = int(metadata[C.K_STATE_DIM]) if C.K_STATE_DIM in metadata else None
            self.feature_dim: int | None = int(metadata[C.K_FEATURE_DIM]) if C.K_FEATURE_DIM in metadata else None
        except (ValueError, KeyError) as exc:
            raise PolicyError(f"{path} has malformed sacae metadata ({type(exc).__name__}: {exc})") from None
        self.providers: list[str] = list(session.get_providers())
        self.device = "cuda" if self.providers[0] == CUDA_EP else "cpu"
        self.threads = threads or DEFAULT_THREADS
        self._check_io()
        self._frame_shape = (self.image_size, self.image_size, 3)
        self._out = np.zeros((1, self.action_dim), np.float32)
        self._reset_flag = np.zeros((1, 1), np.float32)
        self._fresh = True
        self._no_action = np.zeros(self.action_dim, np.float32)
        self._build_bindings()
        self._step = {C.I_FRAME_STACK: self._step_frame_stack, C.I_STATE: self._step_state,
                      C.I_SLAC_STATELESS: self._step_slac_stateless,
                      C.I_SLAC_STATEFUL: self._step_slac_stateful}[self.interface]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto", threads: int | None = None) -> "Policy":
        """Open a policy file (or a run directory holding policy.onnx) and warm it up.

        device: "auto" (CUDA when onnxruntime can really start it, else CPU), "cpu" or "cuda" (an
        error when CUDA cannot start). threads: onnxruntime intra-op threads (None: DEFAULT_THREADS).
        """
        if device not in DEVICES:
            raise PolicyError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if threads is not None and threads < 1:
            raise PolicyError(f"threads must be >= 1, got {threads}")
        p = Path(path)
        if p.is_dir() and (p / "policy.onnx").is_file():
            p = p / "policy.onnx"
        if not p.exists():
            raise PolicyError(f"policy file {p} does not exist (create one with `sacae export RUN_DIR`)")
        if not p.is_file():
            raise PolicyError(f"{p} is a directory without a policy.onnx")
        session = _create_session(p, device, threads)
        policy = cls(p, session, _metadata(p, session), threads)
        policy._warm_up()
        return policy

    def _check_io(self) -> None:
        want = {
            C.I_FRAME_STACK: ({C.IN_FRAMES}, {C.OUT_ACTION}),
            C.I_STATE: ({C.IN_STATE}, {C.OUT_ACTION}),
            C.I_SLAC_STATELESS: ({C.IN_FRAMES, C.IN_ACTIONS}, {C.OUT_ACTION}),
            C.I_SLAC_STATEFUL: ({C.IN_FRAME, C.IN_FEATURE_CACHE, C.IN_ACTION_CACHE, C.IN_RESET},
                                {C.OUT_ACTION, C.OUT_FEATURE_CACHE, C.OUT_ACTION_CACHE}),
        }[self.interface]
        got = ({i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()})
        if got[0] != want[0] or not want[1] <= got[1]:
            raise PolicyError(f"{self.path}: interface {self.interface} needs inputs {sorted(want[0])} and outputs "
                              f"{sorted(want[1])}, the graph has {sorted(got[0])} and {sorted(got[1])}")
        if self.interface != C.I_STATE and not self.image_size:
            raise PolicyError(f"{self.path}: a {self.interface} policy needs {C.K_IMAGE_SIZE} in its metadata")
        if self.interface == C.I_STATE and self.state_dim is None:
            raise PolicyError(f"{self.path}: a state policy needs {C.K_STATE_DIM} in its metadata")
        if self.interface == C.I_SLAC_STATEFUL and self.feature_dim is None:
            raise PolicyError(f"{self.path}: a stateful SLAC policy needs {C.K_FEATURE_DIM} in its metadata")

    def _binding(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        return binding

    def _build_bindings(self) -> None:
        """Preallocate the history buffers and bind them (and the output) once."""
        a, out = self.action_dim, {C.OUT_ACTION: _ort_value(self._out)}
        if self.interface == C.I_STATE:
            assert self.state_dim is not None
            self._state = np.zeros((1, self.state_dim), np.float32)
            self._run = [self._binding({C.IN_STATE: _ort_value(self._state)}, out)]
            return
        frame = self._frame_shape
        if self.interface == C.I_FRAME_STACK:
            self._frames = _Ring(self.frame_stack, frame, np.uint8)
            self._run = [self._binding({C.IN_FRAMES: w}, out) for w in self._frames.windows]
        elif self.interface == C.I_SLAC_STATELESS:
            self._frames = _Ring(self.frame_stack, frame, np.uint8)
            self._actions = _Ring(self.frame_stack - 1, (a,), np.float32)
            self._run = [self._binding({}, out)]  # inputs rebound per step: the two rings cycle apart
        else:  # stateful SLAC: the caches ping-pong between two buffer sets, graph outputs -> next inputs
            assert self.feature_dim is not None
            h = self.frame_stack - 1
            self._frame = np.zeros((1, *frame), np.uint8)
            # Bound OrtValues point into these arrays without owning them: keep them alive here.
            self._caches = feats, acts = ([np.zeros((1, h, self.feature_dim), np.float32) for _ in range(2)],
                                          [np.zeros((1, h, a), np.float32) for _ in range(2)])
            fixed = {C.IN_FRAME: _ort_value(self._frame), C.IN_RESET: _ort_value(self._reset_flag)}
            self._run = [self._binding({**fixed, C.IN_FEATURE_CACHE: _ort_value(feats[i]),
                                        C.IN_ACTION_CACHE: _ort_value(acts[i])},
                                       {**out, C.OUT_FEATURE_CACHE: _ort_value(feats[1 - i]),
                                        C.OUT_ACTION_CACHE: _ort_value(acts[1 - i])}) for i in range(2)]
            self._side = 0

    def _warm_up(self) -> None:
        """Let onnxruntime allocate and pick kernels now, not on the first real frame."""
        dummy = (np.zeros(self.state_dim, np.float32) if self.interface == C.I_STATE
                 else np.zeros((self.image_size, self.image_size, 3), np.uint8))
        for _ in range(WARMUP_RUNS):
            self.act(dummy)
        self.reset()

    # ------------------------------------------------------------------ acting
    def describe(self) -> str:
        """One line for the user's terminal: what runs, where."""
        import onnxruntime as ort

        where = "GPU (CUDA)" if self.device == "cuda" else f"CPU, {self.threads} thread{'s' * (self.threads > 1)}"
        return (f"{self.algo} policy for {self.env} ({self.interface}) on {where} "
                f"via onnxruntime {ort.__version__} [{self.providers[0]}]")

    def reset(self) -> None:
        """Start an episode: the next frame (or state) is treated as the first one."""
        self._fresh = True

    def act(self, obs: np.ndarray) -> np.ndarray:
        """One control step: a uint8 (H, W, 3) RGB frame (a float state vector for state
        policies) -> float32 (action_dim,) already in the env's action bounds."""
        run = self._step(obs)
        self._fresh = False
        self.session.run_with_iobinding(run)
        if self.interface == C.I_SLAC_STATELESS:
            self._actions.push(self._out[0])
        return self._out[0].copy()

    # Each `_step_*` puts one observation into its interface's history and returns the binding to run.
    def _step_frame_stack(self, frame: np.ndarray) -> Any:
        self._check_frame(frame)
        if self._fresh:
            self._frames.fill(frame)
        else:
            self._frames.push(frame)
        return self._run[self._frames.pos]

    def _step_state(self, state: np.ndarray) -> Any:
        self._check_state(state)
        np.copyto(self._state[0], state, casting="same_kind")
        return self._run[0]

    def _step_slac_stateless(self, frame: np.ndarray) -> Any:
        self._check_frame(frame)
        if self._fresh:
            self._frames.fill(frame)
            self._actions.fill(self._no_action)
        else:
            self._frames.push(frame)
        run = self._run[0]
        run.bind_ortvalue_input(C.IN_FRAMES, self._frames.window)
        run.bind_ortvalue_input(C.IN_ACTIONS, self._actions.window)
        return run

    def _step_slac_stateful(self, frame: np.ndarray) -> Any:
        self._check_frame(frame)
        np.copyto(self._frame[0], frame)
        self._reset_flag[0, 0] = 1.0 if self._fresh else 0.0  # the graph pads the caches itself
        run = self._run[self._side]
        self._side = 1 - self._side
        return run

    def _check_frame(self, frame: Any) -> None:
        if type(frame) is np.ndarray and frame.dtype == np.uint8 and frame.shape == self._frame_shape:
            return
        want = f"({self.image_size}, {self.image_size}, 3) uint8 RGB"
        if not isinstance(frame, np.ndarray):
            raise PolicyError(f"frame must be a numpy array {want}, got {type(frame).__name__}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise PolicyError(f"frame must be {want} (HWC), got shape {frame.shape}")
        if frame.shape != (self.image_size, self.image_size, 3):
            raise PolicyError(f"frame is {frame.shape[0]}x{frame.shape[1]} but this policy takes "
                              f"{self.image_size}x{self.image_size}; resize frames first ({want})")
        raise PolicyError(f"frame has dtype {frame.dtype}, this policy takes {want} (values 0..255)")

    def _check_state(self, state: Any) -> None:
        if type(state) is np.ndarray and state.shape == (self.state_dim,) and state.dtype.kind == "f":
            return
        if not isinstance(state, np.ndarray):
            raise PolicyError(f"state must be a numpy float array of shape ({self.state_dim},), "
                              f"got {type(state).__name__}")
        if state.shape != (self.state_dim,):
            raise PolicyError(f"state has shape {state.shape}, this policy takes ({self.state_dim},)")
        raise PolicyError(f"state has dtype {state.dtype}, this policy takes a float vector")
