"""The ONNX policy contract, shared by the exporter (`export/`) and the runtime (`sacae_deploy.Policy`).

A policy file is self-describing: its graph takes raw uint8 camera frames (or a float32 state) and
returns actions already in the environment's bounds; everything a caller needs to drive it lives in
`metadata_props` under the keys below (all values are strings; lists and numbers are JSON).
`parse_metadata` holds the rules every value must meet (types, ranges, bounds, consistency) and
`check_graph_io` the shapes the graph must declare for them; the runtime refuses any file that fails
either with one line, so the exporter and hand-made files are held to the same contract.

Graph interfaces (batch dimension first, fixed to 1 for `stateful`):
- frame-stack policies (sac-ae, sac-pixel):
    in  `frames`  uint8 (B, FRAME_STACK, H, W, 3)  oldest first (HWC frames as a camera gives them)
    out `action`  float32 (B, A)
- state policies (sac-state):
    in  `state`   float32 (B, S)
    out `action`  float32 (B, A)
- SLAC `stateless`:
    in  `frames`  uint8 (B, HISTORY, H, W, 3)   the last HISTORY frames, oldest first
    in  `actions` float32 (B, HISTORY-1, A)     the actions taken between them, oldest first
    out `action`  float32 (B, A)
- SLAC `stateful` (one frame is encoded per call; caches carried by the caller):
    in  `frame`          uint8 (B, H, W, 3)      the newest frame
    in  `feature_cache`  float32 (B, HISTORY-1, F)   conv features of the previous HISTORY-1 frames
    in  `action_cache`   float32 (B, HISTORY-1, A)   the previous HISTORY-1 actions
    out `action`, `feature_cache_out`, `action_cache_out` (the caches to pass back next call)
    At reset pass `reset=1` (in `reset` float32 (B, 1)): the graph then fills the feature cache with
    the newest frame's features and zeros the action cache (the padding rule), exactly as training did.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from sacae_deploy.errors import PolicyError

FORMAT_VERSION = "1"

# Input / output names.
IN_FRAMES = "frames"
IN_STATE = "state"
IN_ACTIONS = "actions"
IN_FRAME = "frame"
IN_FEATURE_CACHE = "feature_cache"
IN_ACTION_CACHE = "action_cache"
IN_RESET = "reset"
OUT_ACTION = "action"
OUT_FEATURE_CACHE = "feature_cache_out"
OUT_ACTION_CACHE = "action_cache_out"

# metadata_props keys.
K_FORMAT = "sacae.format_version"
K_ALGO = "sacae.algo"  # sac-ae | sac-pixel | sac-state | slac
K_ENV = "sacae.env"  # DOMAIN-TASK
K_INTERFACE = "sacae.interface"  # frame_stack | state | slac_stateless | slac_stateful
K_ACTION_DIM = "sacae.action_dim"
K_ACTION_LOW = "sacae.action_low"  # JSON list
K_ACTION_HIGH = "sacae.action_high"  # JSON list
K_ACTION_REPEAT = "sacae.action_repeat"
K_FRAME_STACK = "sacae.frame_stack"  # frames per decision (sac: stack; slac: history length)
K_IMAGE_SIZE = "sacae.image_size"  # H == W
K_IMAGE_LAYOUT = "sacae.image_layout"  # "NHWC uint8 RGB" (conversion and /255 are inside the graph)
K_STATE_DIM = "sacae.state_dim"
K_PADDING = "sacae.history_padding"  # how the history is filled at an episode start
K_CONTROL_TIMESTEP = "sacae.control_timestep"  # seconds per physics/control step (one camera frame)
K_TRAIN_ENV_STEPS = "sacae.training_env_steps"
K_FEATURE_DIM = "sacae.feature_dim"  # SLAC stateful cache width
K_EXPORTER = "sacae.exporter"  # dynamo | legacy
K_OPSET = "sacae.opset"
K_TORCH_VERSION = "sacae.torch_version"
K_SACAE_VERSION = "sacae.version"
K_CAMERA_ID = "sacae.camera_id"  # the dm_control camera the policy was trained on
K_PRECISION = "sacae.precision"  # fp32 | fp16 | bf16 | int8 (absent: fp32, a file from before precisions)
K_GATE = "sacae.gate"  # non-fp32 only: the behaviour gate's result as JSON, or "skipped" (export --no-gate)
K_CALIBRATION = "sacae.calibration"  # non-fp32 only: which decisions calibrated (int8) / checked the variant
GATE_SKIPPED = "skipped"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

REQUIRED_KEYS = (K_FORMAT, K_ALGO, K_ENV, K_INTERFACE, K_ACTION_DIM, K_ACTION_LOW, K_ACTION_HIGH,
                 K_ACTION_REPEAT, K_FRAME_STACK, K_IMAGE_SIZE, K_IMAGE_LAYOUT, K_PADDING, K_CONTROL_TIMESTEP)

I_FRAME_STACK, I_STATE, I_SLAC_STATELESS, I_SLAC_STATEFUL = "frame_stack", "state", "slac_stateless", "slac_stateful"
INTERFACES = (I_FRAME_STACK, I_STATE, I_SLAC_STATELESS, I_SLAC_STATEFUL)
EXPORTERS = ("dynamo", "legacy")

IMAGE_LAYOUT = "NHWC uint8 RGB"
# Training and acting both start an episode's history by repeating its first frame and zeroing the
# actions before it (SLAC's original rule; SAC+AE's frame stack repeats the first frame the same way).
PADDING_RULE = "repeat_first_frame_zero_actions"
# State policies keep no history: frame_stack is 1, image_size is JSON null, layout and padding are "none".
NO_IMAGE = "none"
OPSET = 18
# Seeds the CLI and configs take: dm_control's tasks take numpy legacy seeds (< 2**32), and episode
# and eval seeds count up from the one given.
MAX_SEED = 2**31 - 1

# What each algorithm exports (a mismatch means the file was relabelled or hand-edited).
ALGO_INTERFACES = {"sac-ae": (I_FRAME_STACK,), "sac-pixel": (I_FRAME_STACK,), "sac-state": (I_STATE,),
                   "slac": (I_SLAC_STATELESS, I_SLAC_STATEFUL)}
# Sanity limits a policy file must stay within: far beyond every DeepMind Control task (control
# steps 0.01-0.025 s, at most 21-d actions and 78-d states, 84 px and 8-frame histories in the
# papers), yet small enough that a corrupt file cannot make the runtime allocate gigabytes (the
# frame history is 2 * frame_stack * image_size**2 * 3 bytes) or pace a robot at minutes per step.
MAX_CONTROL_TIMESTEP = 1.0  # seconds per control step (one camera frame)
MAX_ACTION_REPEAT = 1000  # a dm_control episode's length in control steps
MAX_IMAGE_SIZE = 1024
MAX_FRAME_STACK = 64
MAX_VECTOR_DIM = 4096  # action_dim, state_dim, feature_dim
FREE_CAMERA = -1  # dm_control's free camera; the model's own cameras count from 0
MAX_INT32 = 2**31 - 1
ENV_NAME = re.compile(r"[a-z0-9_]+-[a-z0-9_]+")  # DOMAIN-TASK
NO_IMAGE_SIZE = "null (a state policy takes no image)"

# Graph element types, as ONNX (and onnxruntime's NodeArg.type) spell them.
UINT8, FLOAT32 = "tensor(uint8)", "tensor(float)"
TensorSpec = tuple[str, tuple[int | None, ...]]  # (element type, shape); None: a free batch dimension


@dataclass(frozen=True)
class GateSummary:
    """What the export's behaviour gate (export/gate.py) measured for a lower-precision file: the
    closed-loop returns of fp32 and the variant on the same episodes, and the largest per-step action
    difference on the fp32 trajectories (a fraction of the action range)."""

    mean_fp32: float
    mean_variant: float
    max_action_diff: float


@dataclass(frozen=True)
class PolicySpec:
    """A policy file's metadata once `parse_metadata` has checked it: every value typed, in range
    and consistent with the others, so the runtime never has to second-guess one."""

    algo: str
    env: str
    interface: str
    action_dim: int
    action_low: tuple[float, ...]  # float32 values, each below its action_high
    action_high: tuple[float, ...]
    action_repeat: int
    frame_stack: int
    image_size: int | None  # None for state policies
    control_timestep: float
    camera_id: int
    state_dim: int | None  # state policies only
    feature_dim: int | None  # stateful SLAC only
    precision: str = "fp32"  # of the graph's weights and arithmetic (PRECISIONS)
    gate: GateSummary | None = None  # a lower precision's behaviour gate; None for fp32 and --no-gate

    def graph_io(self) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        """The inputs and outputs the graph must declare (the table in this module's docstring)."""
        a, s, h, act = self.action_dim, self.frame_stack, self.image_size, (FLOAT32, (None, self.action_dim))
        if self.interface == I_STATE:
            return {IN_STATE: (FLOAT32, (None, self.state_dim))}, {OUT_ACTION: act}
        frames = (UINT8, (None, s, h, h, 3))
        if self.interface == I_FRAME_STACK:
            return {IN_FRAMES: frames}, {OUT_ACTION: act}
        if self.interface == I_SLAC_STATELESS:
            return {IN_FRAMES: frames, IN_ACTIONS: (FLOAT32, (None, s - 1, a))}, {OUT_ACTION: act}
        feats, acts = (FLOAT32, (1, s - 1, self.feature_dim)), (FLOAT32, (1, s - 1, a))
        return ({IN_FRAME: (UINT8, (1, h, h, 3)), IN_FEATURE_CACHE: feats, IN_ACTION_CACHE: acts,
                 IN_RESET: (FLOAT32, (1, 1))},
                {OUT_ACTION: (FLOAT32, (1, a)), OUT_FEATURE_CACHE: feats, OUT_ACTION_CACHE: acts})


def _shown(text: str) -> str:
    """A metadata value as an error message quotes it: repr'd (one line whatever it holds), short."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


class _Reader:
    """Reads metadata values by the contract's rules; the first violation is a one-line PolicyError
    naming the file, the key, the value and what the contract wants."""

    def __init__(self, meta: Mapping[str, str], source: str) -> None:
        self.meta, self.source = meta, source

    def fail(self, key: str, want: str) -> PolicyError:
        return PolicyError(f"{self.source}: metadata {key} = {_shown(self.meta[key])} is not {want}; "
                           "re-export the policy with `sacae export`")

    def json(self, key: str, want: str) -> Any:
        try:
            return json.loads(self.meta[key])
        except (ValueError, RecursionError):
            raise self.fail(key, want) from None

    def integer(self, key: str, low: int, high: int) -> int:
        want = f"an integer in [{low}, {high}]"
        value = self.json(key, want)
        if type(value) is not int or not low <= value <= high:
            raise self.fail(key, want)
        return value

    def optional_integer(self, key: str, low: int, high: int, required: bool) -> int | None:
        if key in self.meta:
            return self.integer(key, low, high)
        if required:
            raise PolicyError(f"{self.source}: a {self.meta[K_INTERFACE]} policy needs {key} in its metadata; "
                              "re-export the policy with `sacae export`")
        return None

    def choice(self, key: str, allowed: Sequence[str]) -> str:
        if self.meta[key] not in allowed:
            raise self.fail(key, " or ".join(repr(a) for a in allowed))
        return self.meta[key]

    def bounds(self, key: str, n: int) -> np.ndarray:
        want = f"a JSON list of {n} finite float32 numbers"
        value = self.json(key, want)
        if (type(value) is not list or len(value) != n
                or not all(type(v) in (int, float) for v in value)):
            raise self.fail(key, want)
        try:
            with np.errstate(over="ignore"):
                array = np.asarray(value, np.float64).astype(np.float32)
        except OverflowError:  # a JSON integer beyond any float
            raise self.fail(key, want) from None
        if not np.isfinite(array).all():
            raise self.fail(key, want)
        return array


def parse_metadata(meta: Mapping[str, str], source: str) -> PolicySpec:
    """Check every sacae metadata value against the contract; `source` (the file) starts each message.

    Types, ranges, bounds (finite, as long as action_dim, low < high), interface-specific keys, the
    algorithm's interface and the fixed layout strings; the graph's own shapes are `check_graph_io`'s.
    """
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if len(missing) == len(REQUIRED_KEYS):
        raise PolicyError(f"{source} is an ONNX model without sacae metadata; export policies with "
                          "`sacae export RUN_DIR`")
    if missing:
        raise PolicyError(f"{source} lacks sacae metadata keys {', '.join(missing)}; re-export it with `sacae export`")
    if meta[K_FORMAT] != FORMAT_VERSION:
        raise PolicyError(f"{source} uses policy format {_shown(meta[K_FORMAT])}; this sacae reads "
                          f"{FORMAT_VERSION!r}; re-export it with this version's `sacae export`")
    r = _Reader(meta, source)
    interface = r.choice(K_INTERFACE, INTERFACES)
    algo = r.choice(K_ALGO, [a for a, kinds in ALGO_INTERFACES.items() if interface in kinds])
    if not ENV_NAME.fullmatch(meta[K_ENV]):
        raise r.fail(K_ENV, "a DOMAIN-TASK name")
    pixels = interface != I_STATE
    r.choice(K_IMAGE_LAYOUT, [IMAGE_LAYOUT if pixels else NO_IMAGE])
    r.choice(K_PADDING, [PADDING_RULE if pixels else NO_IMAGE])
    action_dim = r.integer(K_ACTION_DIM, 1, MAX_VECTOR_DIM)
    low, high = r.bounds(K_ACTION_LOW, action_dim), r.bounds(K_ACTION_HIGH, action_dim)
    if not (low < high).all():
        raise PolicyError(f"{source}: metadata {K_ACTION_LOW} = {_shown(meta[K_ACTION_LOW])} is not below "
                          f"{K_ACTION_HIGH} = {_shown(meta[K_ACTION_HIGH])} in every dimension; re-export the policy "
                          "with `sacae export`")
    # SLAC's history holds frame_stack - 1 actions, so at least one; a state policy keeps none.
    frame_stack = r.integer(K_FRAME_STACK, 1 if interface in (I_STATE, I_FRAME_STACK) else 2,
                            MAX_FRAME_STACK if pixels else 1)
    image_size: int | None = None
    if pixels:
        image_size = r.integer(K_IMAGE_SIZE, 1, MAX_IMAGE_SIZE)
    elif r.json(K_IMAGE_SIZE, NO_IMAGE_SIZE) is not None:
        raise r.fail(K_IMAGE_SIZE, NO_IMAGE_SIZE)
    dt_want = f"a number of seconds in (0, {MAX_CONTROL_TIMESTEP:g}]"
    dt = r.json(K_CONTROL_TIMESTEP, dt_want)
    if type(dt) not in (int, float) or not 0 < dt <= MAX_CONTROL_TIMESTEP:  # NaN fails both comparisons
        raise r.fail(K_CONTROL_TIMESTEP, dt_want)
    if K_EXPORTER in meta:
        r.choice(K_EXPORTER, EXPORTERS)
    r.optional_integer(K_TRAIN_ENV_STEPS, 0, 2**63 - 1, required=False)
    r.optional_integer(K_OPSET, 1, MAX_INT32, required=False)
    camera_id = r.optional_integer(K_CAMERA_ID, FREE_CAMERA, MAX_INT32, required=False)
    precision = r.choice(K_PRECISION, PRECISIONS) if K_PRECISION in meta else "fp32"  # older files: fp32
    gate = _gate(r, precision)
    return PolicySpec(
        algo=algo, env=meta[K_ENV], interface=interface, action_dim=action_dim,
        action_low=tuple(low.tolist()), action_high=tuple(high.tolist()),
        action_repeat=r.integer(K_ACTION_REPEAT, 1, MAX_ACTION_REPEAT), frame_stack=frame_stack,
        image_size=image_size, control_timestep=float(dt),
        camera_id=0 if camera_id is None else camera_id,  # optional: 0, dm_control's default camera
        state_dim=r.optional_integer(K_STATE_DIM, 1, MAX_VECTOR_DIM, required=interface == I_STATE),
        feature_dim=r.optional_integer(K_FEATURE_DIM, 1, MAX_VECTOR_DIM, required=interface == I_SLAC_STATEFUL),
        precision=precision, gate=gate)


def _gate(r: _Reader, precision: str) -> GateSummary | None:
    """The gate result a file of `precision` must carry: none for fp32; for a lower precision either
    "skipped" (exported with --no-gate) or a passed gate: the exporter never publishes a failed one."""
    if precision == "fp32":
        if K_GATE in r.meta:
            raise r.fail(K_GATE, "absent (an fp32 policy is the gate's reference, not gated)")
        return None
    if K_GATE not in r.meta:
        raise PolicyError(f"{r.source}: a {precision} policy needs {K_GATE} in its metadata; "
                          "re-export the policy with `sacae export --precision`")
    if r.meta[K_GATE] == GATE_SKIPPED:
        return None
    want = f"{GATE_SKIPPED!r} or a passed behaviour gate's JSON result"
    gate = r.json(K_GATE, want)
    try:
        numbers = (gate["mean_fp32"], gate["mean_variant"], gate["action_diff"]["max"])
        ok = gate["passed"] is True and all(type(x) in (int, float) and math.isfinite(x) for x in numbers)
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise r.fail(K_GATE, want)
    return GateSummary(*(float(x) for x in numbers))


def check_graph_io(spec: PolicySpec, inputs: Mapping[str, tuple[str, Sequence[Any] | None]],
                   outputs: Mapping[str, tuple[str, Sequence[Any] | None]], source: str) -> None:
    """The graph's declared inputs (exactly) and outputs (at least) must be the spec's, with its
    element types and every fixed dimension equal (a symbolic one, such as a dynamic batch, is free;
    the runtime feeds batch 1)."""
    want_in, want_out = spec.graph_io()
    if set(inputs) != set(want_in) or not set(want_out) <= set(outputs):
        raise PolicyError(f"{source}: interface {spec.interface} needs inputs {sorted(want_in)} and outputs "
                          f"{sorted(want_out)}, the graph has {sorted(inputs)} and {sorted(outputs)}")
    for kind, want, got in (("input", want_in, inputs), ("output", want_out, outputs)):
        for name, (dtype, shape) in want.items():
            got_type, got_shape = got[name]
            if got_type != dtype or not _fits(got_shape, shape):
                expected = tuple("batch" if w is None else w for w in shape)
                declared = tuple(d if isinstance(d, int) else "?" for d in got_shape or ())
                raise PolicyError(f"{source}: the graph's {kind} {name!r} is {got_type} {declared}, its metadata "
                                  f"({spec.interface}, {K_ACTION_DIM} {spec.action_dim}, {K_FRAME_STACK} "
                                  f"{spec.frame_stack}, {K_IMAGE_SIZE} {spec.image_size}) says {dtype} {expected}")


def _fits(declared: Sequence[Any] | None, shape: tuple[int | None, ...]) -> bool:
    """A declared shape (ints fixed, anything else symbolic; None: unknown) against the contract's;
    the runtime feeds batch 1, so a fixed batch dimension must be 1."""
    if declared is None:
        return True
    return len(declared) == len(shape) and all(
        not isinstance(d, int) or d == (1 if w is None else w) for d, w in zip(declared, shape))
