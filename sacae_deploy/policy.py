"""`Policy`: run an exported policy with numpy + onnxruntime only (no torch, no dm_control).

    policy = Policy.load("runs/x/policy.onnx")      # device="auto" | "cpu" | "cuda", threads=None, spin=True
    print(policy.describe())                          # one line: what runs where
    policy.reset()                                    # at every episode start
    action = policy.act(frame)                        # uint8 (H, W, 3) -> float32 (A,) in env bounds
    policy.stats                                      # decisions, clipped, non_finite so far

The file describes itself (sacae_deploy/contract.py): the policy keeps the history its algorithm was
trained with (SAC's frame stack, SLAC's frames and actions), padding an episode start the way
training did (first frame repeated, zero actions before it). Frames must already be image_size
square; resizing is the caller's job (`sacae run` does it).

The hot path allocates nothing of its own: histories live in preallocated buffers that onnxruntime
reads in place (OrtValues over numpy memory, bound once with IOBinding), and a new frame is copied
in, never shifted: each history slot is written twice into a 2K ring so every K-window is a
contiguous, oldest-first view.

No action leaves `act` unchecked: the file's metadata is held to the contract at load (so the bounds
are finite and low < high), a non-finite graph output raises NonFiniteActionError instead of being
returned, and a finite one outside the bounds is clipped to them and counted in `stats`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from distractors.frames import NOT_ARRAY, NOT_HWC3, WRONG_SIZE, frame_fault
from sacae_deploy import contract
from sacae_deploy.errors import NonFiniteActionError, PolicyError
from sacae_deploy.history import start_history

if TYPE_CHECKING:
    import onnxruntime as ort

DEVICES = ("auto", "cpu", "cuda")
WARMUP_RUNS = 5
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
# benchmarks/policy_latency.py on the 2-core dev CPU, paper-size SAC+AE: 2 intra-op threads gave
# p50 1.28 ms / p99 2.43 ms against 2.10 / 2.78 ms for 1 (the fc and MLP layers are memory-bound
# GEMVs; a second core adds bandwidth). Past 2, batch-1 work is too small to split further.
DEFAULT_THREADS = min(2, os.cpu_count() or 1)
# onnxruntime's intra-op threads spin-wait for the next step by default. benchmarks/latency_choices.py
# (2-core AMD host, paper-size SAC+AE, quiet): int8 spinning p50 0.47 / p99 0.69 ms, not spinning
# 0.59 / 1.19 ms; fp32 0.78 / 5.0 against 0.95 / 1.8 ms. A spinning thread that loses its core to
# other work stalls the step for a scheduler tick (~4 ms). Spinning stays the default (lowest p50);
# `spin=False` for a controller that shares its cores.
SPIN_ENTRY = "session.intra_op.allow_spinning"
MAX_THREADS = os.cpu_count() or 1  # more threads than cores only contend (ONNX Runtime's spin-wait crawls)


@dataclass
class ActionStats:
    """What `Policy.act` did since load: a caller (or `sacae run`) sees how often the graph needed
    its action clipped (a sign of a bad export or an input far from training) without re-checking."""

    decisions: int = 0  # actions returned
    clipped: int = 0  # of those, actions the graph gave outside the bounds, clipped to them
    non_finite: int = 0  # graph outputs refused (NonFiniteActionError): no action returned


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


def _create_session(path: Path, device: str, threads: int | None, spin: bool) -> "ort.InferenceSession":
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or DEFAULT_THREADS
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry(SPIN_ENTRY, "1" if spin else "0")
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


def _spins(session: "ort.InferenceSession") -> bool:
    """Whether the session's intra-op threads spin-wait (onnxruntime's default where unset)."""
    try:
        return session.get_session_options().get_session_config_entry(SPIN_ENTRY) != "0"
    except RuntimeError:  # onnxruntime: "does not have configuration with key"
        return True


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's message without its error-code prefix and C++ source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(" failed:", 1)[-1]
    text = re.sub(r"^/onnxruntime_src/\S+ .*?\) ", "", text)
    return text[:200]


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

    def start(self, items: Any) -> None:
        """Episode start: the k items of the padded history (`history.start_history`), oldest
        first, become window k - 1."""
        for i, item in enumerate(items):
            np.copyto(self.buf[0, i], item)
            np.copyto(self.buf[0, i + self.k], item)
        self.pos = self.k - 1

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

    def __init__(self, path: Path, session: "ort.InferenceSession", threads: int | None) -> None:
        self.path = path
        self.session = session
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self.spec = spec = contract.parse_metadata(self.metadata, str(path))
        self.algo, self.env, self.interface = spec.algo, spec.env, spec.interface
        self.action_dim = spec.action_dim
        self.action_low = np.asarray(spec.action_low, np.float32)
        self.action_high = np.asarray(spec.action_high, np.float32)
        self.action_repeat, self.frame_stack = spec.action_repeat, spec.frame_stack
        self.image_size, self.control_timestep = spec.image_size, spec.control_timestep
        self.state_dim, self.feature_dim, self.camera_id = spec.state_dim, spec.feature_dim, spec.camera_id
        contract.check_graph_io(spec, {i.name: (i.type, i.shape) for i in session.get_inputs()},
                         {o.name: (o.type, o.shape) for o in session.get_outputs()}, str(path))
        self.providers: list[str] = list(session.get_providers())
        self.device = "cuda" if self.providers[0] == CUDA_EP else "cpu"
        self.threads = threads or DEFAULT_THREADS
        self.spins = _spins(session)
        self.stats = ActionStats()
        self._frame_shape = (self.image_size, self.image_size, 3)
        self._out = np.zeros((1, self.action_dim), np.float32)
        self._bounds = (self.action_low.tolist(), self.action_high.tolist())  # act's fast check, as floats
        self._episode_decisions = 0
        self._reset_flag = np.zeros((1, 1), np.float32)
        self._fresh = True
        self._build_bindings()
        self._step = {contract.I_FRAME_STACK: self._step_frame_stack, contract.I_STATE: self._step_state,
                      contract.I_SLAC_STATELESS: self._step_slac_stateless,
                      contract.I_SLAC_STATEFUL: self._step_slac_stateful}[self.interface]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto", threads: int | None = None,
             spin: bool = True) -> "Policy":
        """Open a policy file (or a run directory holding policy.onnx) and warm it up.

        device: "auto" (CUDA when onnxruntime can really start it, else CPU), "cpu" or "cuda" (an
        error when CUDA cannot start). threads: onnxruntime intra-op threads (None: DEFAULT_THREADS).
        spin: let those threads spin-wait between steps (lowest latency on cores of its own; False
        where the cores are shared with other work, see SPIN_ENTRY).
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
        session = _create_session(p, device, threads, spin)
        policy = cls(p, session, threads)
        policy._warm_up()
        return policy

    def _binding(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        return binding

    def _build_bindings(self) -> None:
        """Preallocate the history buffers and bind them (and the output) once."""
        a, out = self.action_dim, {contract.OUT_ACTION: _ort_value(self._out)}
        if self.interface == contract.I_STATE:
            assert self.state_dim is not None
            self._state = np.zeros((1, self.state_dim), np.float32)
            self._run = [self._binding({contract.IN_STATE: _ort_value(self._state)}, out)]
            return
        frame = self._frame_shape
        if self.interface == contract.I_FRAME_STACK:
            self._frames = _Ring(self.frame_stack, frame, np.uint8)
            self._run = [self._binding({contract.IN_FRAMES: w}, out) for w in self._frames.windows]
        elif self.interface == contract.I_SLAC_STATELESS:
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
            fixed = {contract.IN_FRAME: _ort_value(self._frame), contract.IN_RESET: _ort_value(self._reset_flag)}
            self._run = [self._binding({**fixed, contract.IN_FEATURE_CACHE: _ort_value(feats[i]),
                                        contract.IN_ACTION_CACHE: _ort_value(acts[i])},
                                       {**out, contract.OUT_FEATURE_CACHE: _ort_value(feats[1 - i]),
                                        contract.OUT_ACTION_CACHE: _ort_value(acts[1 - i])}) for i in range(2)]
            self._side = 0

    def _warm_up(self) -> None:
        """Let onnxruntime allocate and pick kernels now, not on the first real frame. The outputs
        are not judged (a blank frame is no real input) and not counted in `stats`."""
        dummy = (np.zeros(self.state_dim, np.float32) if self.interface == contract.I_STATE
                 else np.zeros((self.image_size, self.image_size, 3), np.uint8))
        try:
            for _ in range(WARMUP_RUNS):
                self._infer(dummy)
        except RuntimeError as exc:  # onnxruntime's failures: a graph whose outputs break its declared shapes
            raise PolicyError(f"{self.path}: the graph fails on its first input ({_ort_reason(exc)})") from None
        self.reset()

    # ------------------------------------------------------------------ acting
    def describe(self) -> str:
        """One line for the user's terminal: what runs, where, at which precision, and what the export's
        behaviour gate found for a lower-precision variant (export/gate.py)."""
        import onnxruntime as ort

        where = "GPU (CUDA)" if self.device == "cuda" else f"CPU, {self.threads} thread{'s' * (self.threads > 1)}"
        if self.device == "cpu" and self.threads > 1 and not self.spins:
            where += ", not spinning"
        what, gate = self.spec.precision, self.spec.gate
        if gate is not None:
            what += (f", behaviour gate passed: return {gate.mean_variant:.1f} vs fp32 {gate.mean_fp32:.1f}, "
                     f"max action diff {gate.max_action_diff:.2g} of the range")
        elif what != "fp32":
            what += ", behaviour gate skipped"
        return (f"{self.algo} policy for {self.env} ({self.interface}, {what}) on {where} "
                f"via onnxruntime {ort.__version__} [{self.providers[0]}]")

    def reset(self) -> None:
        """Start an episode: the next frame (or state) is treated as the first one. Also the way
        on after a NonFiniteActionError, whose history is spoilt."""
        self._fresh = True
        self._episode_decisions = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        """One control step: a uint8 (H, W, 3) RGB frame (a finite float state vector for state
        policies) -> a new float32 (action_dim,) array, finite and inside [action_low, action_high].

        A graph output outside the bounds is clipped to them (counted in `stats.clipped`); a NaN or
        inf one raises NonFiniteActionError naming the decision, and nothing is returned."""
        raw = self._infer(obs)
        self._episode_decisions += 1
        # The healthy case in plain Python: for dm_control's action sizes (1-38) it costs a fraction of
        # the numpy calls below. NaN fails every comparison and inf a finite bound, so both go on.
        if all(low <= x <= high for low, x, high in zip(self._bounds[0], raw.tolist(), self._bounds[1])):
            action = raw.copy()
        elif np.isfinite(raw).all():
            action = np.clip(raw, self.action_low, self.action_high)
            self.stats.clipped += 1
        else:
            self.stats.non_finite += 1
            shown = ", ".join(f"{v:g}" for v in raw[:6].tolist()) + (", ..." if raw.size > 6 else "")
            raise NonFiniteActionError(f"{self.path}: the graph gave a non-finite action [{shown}] at decision "
                                       f"{self._episode_decisions} of the episode; refused, no action returned")
        self.stats.decisions += 1
        if self.interface == contract.I_SLAC_STATELESS:
            self._actions.push(action)  # the history holds the actions taken
        return action

    def _infer(self, obs: np.ndarray) -> np.ndarray:
        """Run the graph on one observation; its raw action (a view of the bound output buffer)."""
        run = self._step(obs)
        self._fresh = False
        self.session.run_with_iobinding(run)
        return self._out[0]

    # Each `_step_*` puts one observation into its interface's history and returns the binding to run.
    def _step_frame_stack(self, frame: np.ndarray) -> Any:
        self._check_frame(frame)
        if self._fresh:
            self._frames.start(start_history(frame, self.frame_stack)[0])
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
            frames, actions = start_history(frame, self.frame_stack, self.action_dim)
            self._frames.start(frames)
            self._actions.start(actions)
        else:
            self._frames.push(frame)
        run = self._run[0]
        run.bind_ortvalue_input(contract.IN_FRAMES, self._frames.window)
        run.bind_ortvalue_input(contract.IN_ACTIONS, self._actions.window)
        return run

    def _step_slac_stateful(self, frame: np.ndarray) -> Any:
        self._check_frame(frame)
        np.copyto(self._frame[0], frame)
        self._reset_flag[0, 0] = 1.0 if self._fresh else 0.0  # the graph pads the caches itself
        run = self._run[self._side]
        self._side = 1 - self._side
        return run

    def _check_frame(self, frame: Any) -> None:
        fault = frame_fault(frame, self.image_size)
        if fault is None:
            return
        want = f"({self.image_size}, {self.image_size}, 3) uint8 RGB"
        if fault == NOT_ARRAY:
            raise PolicyError(f"frame must be a numpy array {want}, got {type(frame).__name__}")
        if fault == NOT_HWC3:
            raise PolicyError(f"frame must be {want} (HWC), got shape {frame.shape}")
        if fault == WRONG_SIZE:
            raise PolicyError(f"frame is {frame.shape[0]}x{frame.shape[1]} but this policy takes "
                              f"{self.image_size}x{self.image_size}; resize frames first ({want})")
        raise PolicyError(f"frame has dtype {frame.dtype}, this policy takes {want} (values 0..255)")

    def _check_state(self, state: Any) -> None:
        if (type(state) is np.ndarray and state.shape == (self.state_dim,) and state.dtype.kind == "f"
                and np.isfinite(state).all()):
            return
        if not isinstance(state, np.ndarray):
            raise PolicyError(f"state must be a numpy float array of shape ({self.state_dim},), "
                              f"got {type(state).__name__}")
        if state.shape != (self.state_dim,):
            raise PolicyError(f"state has shape {state.shape}, this policy takes ({self.state_dim},)")
        if state.dtype.kind != "f":
            raise PolicyError(f"state has dtype {state.dtype}, this policy takes a float vector")
        bad = np.flatnonzero(~np.isfinite(state))
        raise PolicyError(f"state has non-finite values at indices {bad[:6].tolist()}{' ...' * (bad.size > 6)}: "
                          "the policy takes a finite state (a sensor dropout or a diverged simulation?)")
