"""Lower-precision variants of a checked fp32 policy file, with the same interface and metadata.

    int8  onnxruntime's static quantization: QDQ, per-channel int8 weights, uint8 activations
          calibrated on real decision frames (the checkpoint's replay, else fresh episodes of the
          training task), Conv/Gemm/MatMul (+ the Relus after them) only: LayerNorm, tanh and the
          SLAC caches stay float32
    fp16  onnxruntime's float16 converter; inputs stay uint8 / float32, outputs float32
    bf16  refused unless onnxruntime's CPU provider runs bfloat16 natively (probed, not assumed)

Calibration frames are fed through `sacae_deploy.Policy` itself (`InputRecorder`), so the graph is
calibrated on exactly the inputs the runtime builds: frame stacks, SLAC histories, stateful caches.
Whether a variant may be published is export/gate.py's decision, on behaviour.
"""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx

from export.errors import ExportError
from export.metadata import checked
from sacae_deploy import contract

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_CALIBRATION = 300  # decision frames: calibration (int8) and the tensor-error check
CALIBRATION_SEED = 10_000  # fresh calibration episodes start here, away from the gate's seeds 0, 1, ...
# Relu is listed so that the quantizer folds it into the producer's output range (the int8 convs then
# chain without a requantization between them: 0.88 vs 1.03 ms per SAC+AE step, 1 thread, here).
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Relu"]

GATE_EPISODES = 10  # `sacae eval`'s default episode count
PROBE_IR_VERSION = 8  # the bf16 probe's graphs: an IR version every onnxruntime that reads opset 18 reads

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class PrecisionOptions:
    """What `sacae export --precision P [--calibration N] [--gate-episodes N] [--no-gate]` asks for."""

    precision: str = "fp32"
    calibration: int = DEFAULT_CALIBRATION  # decision frames
    gate_episodes: int = GATE_EPISODES
    gate: bool = True

    def check(self) -> None:
        """One-line errors for values no export can use, before any work is done."""
        if self.precision not in PRECISIONS:
            raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.calibration < 1:
            raise ExportError(f"--calibration must be at least 1 decision frame, got {self.calibration}")
        if self.gate_episodes < 1:
            raise ExportError(f"--gate-episodes must be at least 1, got {self.gate_episodes}")
        if self.precision == "bf16":
            reason = bf16_unsupported() or "this sacae has no bfloat16 converter"
            raise ExportError(f"--precision bf16 refused: {reason}; use fp16 or int8")


# ---------------------------------------------------------------------------- recording inputs
class _RecordingBinding:
    """An IOBinding that remembers which OrtValue each input name is bound to."""

    def __init__(self, binding: Any) -> None:
        self.binding = binding
        self.inputs: dict[str, Any] = {}

    def bind_ortvalue_input(self, name: str, value: Any) -> None:
        self.inputs[name] = value
        self.binding.bind_ortvalue_input(name, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.binding, name)


class InputRecorder:
    """Stands in for a Policy's onnxruntime session: every call runs on the real session, and a copy
    of its inputs (the bound buffers, as they are at that call) goes to `sink` first."""

    def __init__(self, session: Any, sink: Callable[[Inputs], None]) -> None:
        self.session, self.sink = session, sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def io_binding(self) -> _RecordingBinding:
        """The real session's binding, wrapped so the inputs bound to it are seen."""
        return _RecordingBinding(self.session.io_binding())

    def run_with_iobinding(self, binding: _RecordingBinding) -> None:
        """Hand a copy of the bound inputs to `sink`, then run the real session."""
        self.sink({name: value.numpy().copy() for name, value in binding.inputs.items()})  # numpy() is a view
        self.session.run_with_iobinding(binding.binding)


def recording_policy(path: Path, sink: Callable[[Inputs], None]) -> Any:
    """A CPU `Policy` on `path` whose every graph call also hands its inputs to `sink`."""
    from sacae_deploy.policy import Policy

    loaded = Policy.load(path, device="cpu")
    return Policy(loaded.path, InputRecorder(loaded.session, sink), loaded.threads)


# ---------------------------------------------------------------------------- calibration frames
@dataclass
class Calibration:
    """Graph inputs from real decisions, used to calibrate int8 and to measure a variant's tensor error."""

    inputs: list[Inputs]  # graph inputs, one dict per decision
    source: str  # where the frames came from, for the metadata and the user

    def reader(self) -> Any:
        """onnxruntime's CalibrationDataReader over these inputs."""
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self, items: list[Inputs]) -> None:
                self.items: Iterator[Inputs] = iter(items)

            def get_next(self) -> Inputs | None:
                return next(self.items, None)

        return Reader(self.inputs)


def replay_episodes(replay: Path, frames: int) -> list[list[np.ndarray]]:
    """The newest `frames` decisions of a checkpoint's replay (train/replay.py's chunk files), as
    episodes of HWC frames (or state vectors), oldest first, extended back to the first one's episode
    start so that its history is the real one. Only the chunks holding them are read."""
    from train.replay import CHUNK_SLOTS

    try:
        meta = json.loads((replay / "meta.json").read_text())
        total, capacity = int(meta["total"]), int(meta["capacity"])
        chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def slot(g: int) -> tuple[np.ndarray, int]:
            """Observation and in-episode step of global slot index g."""
            i = g % capacity
            c = i // CHUNK_SLOTS
            if c not in chunks:
                with np.load(replay / f"chunk{c:05d}.npz", allow_pickle=False) as data:
                    chunks[c] = (data["obs"], data["step"])
            obs, step = chunks[c]
            return obs[i - c * CHUNK_SLOTS], int(step[i - c * CHUNK_SLOTS])

        oldest = max(0, total - capacity)
        first = max(oldest, total - frames)
        first = max(oldest, first - slot(first)[1])
        episodes: list[list[np.ndarray]] = []
        for g in range(first, total):
            obs, step = slot(g)
            if step == 0 or not episodes:
                episodes.append([])
            episodes[-1].append(obs.transpose(1, 2, 0) if obs.ndim == 3 else obs)
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise ExportError(f"the checkpoint's replay {replay} is unreadable for calibration "
                          f"({type(exc).__name__}); re-run with a readable checkpoint") from None
    return episodes


def calibration_inputs(fp32: Path, frames: int, replay: Path | None, env: str, episode_length: int) -> Calibration:
    """`frames` decisions of real inputs for `fp32`'s graph: from the replay when the checkpoint has
    one (no simulator needed), else from fresh episodes of `env` driven by the fp32 policy."""
    inputs: list[Inputs] = []
    policy = recording_policy(fp32, inputs.append)
    if replay is not None and (replay / "meta.json").is_file():
        episodes = replay_episodes(replay, frames)
        for episode in episodes:
            policy.reset()
            for obs in episode:
                policy.act(obs)
        source = f"replay of {replay.parent.name}"
    else:
        from sacae_deploy.evaluation import run_episodes

        per_episode = math.ceil(episode_length / policy.action_repeat)
        run_episodes(policy, env, "none", math.ceil(frames / per_episode), CALIBRATION_SEED,
                     episode_length=episode_length)
        source = f"{env} episodes from seed {CALIBRATION_SEED}"
    if not inputs:
        raise ExportError(f"no calibration frames in {replay}; export with a checkpoint that has a replay")
    return Calibration(inputs[-frames:], f"{min(frames, len(inputs))} decisions, {source}")


# ---------------------------------------------------------------------------- conversions
def _frame_casts(model: onnx.ModelProto) -> list[str]:
    """Outputs of the Casts that turn the uint8 frames into floats (values 0..255)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    return [n.output[0] for n in inferred.graph.node
            if n.op_type == "Cast" and types.get(n.input[0]) == onnx.TensorProto.UINT8]


def _read_frames_directly(path: Path, casts: list[str]) -> None:
    """QuantizeLinear(Cast(frames)) with scale 1 and zero point 0 is the uint8 frames themselves: let
    the first conv's DequantizeLinear read them, one cast and one quantize pass fewer per step."""
    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    cast_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast" and n.output[0] in casts}
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in cast_input]:
        scale, zero = consts.get(q.input[1]), consts.get(q.input[2] if len(q.input) > 2 else "")
        if scale is None or zero is None or zero.dtype != np.uint8 or scale.item() != 1.0 or zero.item() != 0:
            continue
        for node in graph.node:
            node.input[:] = [cast_input[q.input[0]] if name == q.output[0] else name for name in node.input]
        graph.node.remove(q)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] in cast_input and n.output[0] not in used]
    for cast in dead:
        graph.node.remove(cast)
    onnx.save_model(model, str(path), save_as_external_data=False)


def to_int8(src: Path, dst: Path, calibration: Calibration, ops: Sequence[str] = QUANTIZED_OPS,
            keep_float: Sequence[str] = ()) -> None:
    """Static QDQ int8 with onnxruntime.quantization: per-channel int8 weights, uint8 activations from
    the calibration's min/max (percentile and entropy calibration measured no better on the 10k-step
    SAC+AE run; per-tensor weights 3x worse). Weights are 7-bit (`reduce_range`): on CPUs without
    VNNI onnxruntime's u8s8 kernels add products pairwise in int16, which 8-bit weights times 0..255
    pixels can overflow. Measured on an AVX2 host: paper-size random weights, max |action diff| 0.011
    with 7-bit vs 0.030 with 8-bit weights (overflow); the 10k-step SAC+AE run, mean 0.0010 vs 0.0006
    of the action range on held-out decisions (no overflow; the bit costs a little). A file may run on
    any CPU, so 7-bit. The
    frames' own cast to float gets the range 0..255 whatever the calibration frames held (scale 1,
    zero point 0): 8-bit pixels then quantize exactly, and the graph reads them as they come.
    `ops` and `keep_float` (node names) are for benchmarks/latency_choices.py's alternatives."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        casts = _frame_casts(onnx.load(str(pre)))
        pixels = {"rmin": np.array(0.0, np.float32), "rmax": np.array(255.0, np.float32)}
        quantize_static(str(pre), str(dst), calibration.reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(ops), nodes_to_exclude=list(keep_float), per_channel=True,
                        reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"TensorQuantOverrides": {name: [pixels] for name in casts}})
    _read_frames_directly(dst, casts)


def to_fp16(src: Path, dst: Path) -> None:
    """float16 weights and arithmetic; the uint8 frames and the float32 inputs and outputs are kept
    (`keep_io_types`), so callers see the same interface."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.topological_sort()  # the converter appends the input casts after their consumers
    onnx.save_model(model.model, str(dst))


def bf16_unsupported() -> str | None:
    """Why onnxruntime's CPU provider cannot run a bfloat16 policy natively, or None if it can:
    probed with one-node bfloat16 Conv and Gemm graphs at the contract's opset, each beside the same
    graph in float32 (which must load, or the probe itself is broken)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def load(op: str, dtype: int, x: list[int], w: list[int]) -> str | None:
        graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], op,
                                  [helper.make_tensor_value_info("x", dtype, x),
                                   helper.make_tensor_value_info("w", dtype, w)],
                                  [helper.make_tensor_value_info("y", dtype, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", contract.OPSET)],
                                  ir_version=PROBE_IR_VERSION)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind error classes
            return str(exc)
        return None

    missing = []
    for op, x, w in (("Conv", [1, 1, 4, 4], [1, 1, 3, 3]), ("Gemm", [2, 3], [3, 2])):
        control = load(op, TensorProto.FLOAT, x, w)
        if control is not None:
            raise ExportError(f"the bfloat16 probe is broken: a float32 {op} does not load "
                              f"({control.splitlines()[0][:120]})")
        error = load(op, TensorProto.BFLOAT16, x, w)
        if error is not None:
            missing.append(f"{op}: " + ("no bfloat16 kernel" if "NOT_IMPLEMENTED" in error
                                        else "bfloat16 is not one of its types" if "INVALID_GRAPH" in error
                                        else error.splitlines()[0][:80]))
    if not missing:
        return None
    return (f"onnxruntime {ort.__version__}'s CPU provider cannot run bfloat16 natively at opset "
            f"{contract.OPSET} ({'; '.join(missing)})")


def check_interface(reference: Path, variant: Path) -> None:
    """The variant must declare the fp32 file's inputs and outputs: names, element types, shapes."""
    def io(path: Path) -> list[tuple[str, int, list[Any]]]:
        graph = onnx.load(str(path), load_external_data=False).graph
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
                for v in [*graph.input, *graph.output]]

    if io(reference) != io(variant):
        raise ExportError(f"the converted graph changed the policy's interface: {io(variant)} "
                          f"instead of {io(reference)}")


def make_variant(fp32: Path, dst: Path, options: PrecisionOptions, *, replay: Path | None, env: str,
                 episode_length: int) -> list[str]:
    """Write `options.precision`'s variant of the checked fp32 file `fp32` to `dst`: its metadata plus
    the precision, the calibration's source and the gate's result. Returns lines for the user; a
    variant the behaviour gate refuses is an ExportError (the caller then publishes nothing)."""
    from export.gate import run_gate
    from export.verify import check_model

    calibration = None
    if options.precision == "int8" or options.gate:
        calibration = calibration_inputs(fp32, options.calibration, replay, env, episode_length)
    if options.precision == "int8":
        assert calibration is not None
        to_int8(fp32, dst, calibration)
    else:
        to_fp16(fp32, dst)
    check_interface(fp32, dst)
    source = onnx.load(str(fp32), load_external_data=False)
    meta = {p.key: p.value for p in source.metadata_props}
    meta[contract.K_PRECISION] = options.precision
    lines = []
    if calibration is not None:
        meta[contract.K_CALIBRATION] = calibration.source
        lines.append(f"calibration: {calibration.source}")

    def save(gate: str) -> None:
        model = onnx.load(str(dst))
        onnx.helper.set_model_props(model, checked({**meta, contract.K_GATE: gate}))
        model.doc_string = f"{source.doc_string} [{options.precision}]"
        onnx.save_model(model, str(dst), save_as_external_data=False)

    if not options.gate:
        save(contract.GATE_SKIPPED)
        lines.append("gate: skipped (--no-gate): the variant's behaviour is unchecked")
    else:
        assert calibration is not None
        save(contract.GATE_SKIPPED)  # for now: the gate loads the variant through Policy, which reads its metadata
        result = run_gate(fp32, dst, options.precision, env, options.gate_episodes, episode_length, calibration.inputs)
        if not result.passed:
            raise ExportError(f"{options.precision} variant refused, nothing written: {result.line()} "
                              "(`--no-gate` publishes it unchecked)")
        save(json.dumps(result.to_json()))
        lines.append(result.line())
    check_model(dst)
    return lines
