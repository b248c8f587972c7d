"""No action that is not finite and inside bounds ever leaves the runtime (issue 22, section 2).

Policies here are tiny graphs crafted with onnx.helper (a constant action, or one set by the input),
so each case builds and loads in milliseconds: the metadata a file declares is checked against the
contract and against the graph's own input/output shapes, a non-finite action is refused naming its
decision, an out-of-bounds one is clipped and counted, and `sacae run` / `sacae eval` turn both into
valid JSON and a one-line error or a failed-episode count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh

from helpers import sacae
from sacae_deploy import contract
from sacae_deploy.errors import NonFiniteActionError, PolicyError
from sacae_deploy.policy import Policy
from sacae_deploy.run_loop import JsonLines, run_loop

ENV = "cartpole-swingup"  # 1-d actions in [-1, 1]


# ------------------------------------------------------------------------------ crafted policy files
def metadata(interface: str = contract.I_FRAME_STACK, *, action_dim: int = 1, low: list[float] | None = None,
             high: list[float] | None = None, frame_stack: int = 3, image_size: int = 8, state_dim: int = 2,
             feature_dim: int = 4, action_repeat: int = 2, control_timestep: float = 0.01,
             camera_id: int = 0) -> dict[str, str]:
    """Valid metadata, written the way export/metadata.py writes it."""
    pixels = interface != contract.I_STATE
    algo = {contract.I_FRAME_STACK: "sac-ae", contract.I_STATE: "sac-state"}.get(interface, "slac")
    meta = {
        contract.K_FORMAT: contract.FORMAT_VERSION, contract.K_ALGO: algo, contract.K_ENV: ENV,
        contract.K_INTERFACE: interface,
        contract.K_ACTION_DIM: str(action_dim),
        contract.K_ACTION_LOW: json.dumps(low if low is not None else [-1.0] * action_dim),
        contract.K_ACTION_HIGH: json.dumps(high if high is not None else [1.0] * action_dim),
        contract.K_ACTION_REPEAT: str(action_repeat), contract.K_FRAME_STACK: str(frame_stack if pixels else 1),
        contract.K_IMAGE_SIZE: json.dumps(image_size if pixels else None),
        contract.K_IMAGE_LAYOUT: contract.IMAGE_LAYOUT if pixels else contract.NO_IMAGE,
        contract.K_PADDING: contract.PADDING_RULE if pixels else contract.NO_IMAGE,
        contract.K_CONTROL_TIMESTEP: repr(control_timestep), contract.K_CAMERA_ID: str(camera_id),
        contract.K_TRAIN_ENV_STEPS: "0", contract.K_EXPORTER: "dynamo", contract.K_OPSET: str(contract.OPSET),
        contract.K_TORCH_VERSION: "2.13.0", contract.K_SACAE_VERSION: "0.1.0",
    }
    if interface == contract.I_STATE:
        meta[contract.K_STATE_DIM] = str(state_dim)
    if interface == contract.I_SLAC_STATEFUL:
        meta[contract.K_FEATURE_DIM] = str(feature_dim)
    return meta


def _io(interface: str, a: int, s: int, h: int, state_dim: int, f: int) -> tuple[list[Any], list[Any]]:
    """The README's interface table as value infos: (inputs, outputs)."""
    u8, f32, b = TensorProto.UINT8, TensorProto.FLOAT, "batch"
    vi = oh.make_tensor_value_info
    if interface == contract.I_FRAME_STACK:
        return [vi(contract.IN_FRAMES, u8, [b, s, h, h, 3])], [vi(contract.OUT_ACTION, f32, [b, a])]
    if interface == contract.I_STATE:
        return [vi(contract.IN_STATE, f32, [b, state_dim])], [vi(contract.OUT_ACTION, f32, [b, a])]
    if interface == contract.I_SLAC_STATELESS:
        return ([vi(contract.IN_FRAMES, u8, [b, s, h, h, 3]), vi(contract.IN_ACTIONS, f32, [b, s - 1, a])],
                [vi(contract.OUT_ACTION, f32, [b, a])])
    return ([vi(contract.IN_FRAME, u8, [1, h, h, 3]), vi(contract.IN_FEATURE_CACHE, f32, [1, s - 1, f]),
             vi(contract.IN_ACTION_CACHE, f32, [1, s - 1, a]), vi(contract.IN_RESET, f32, [1, 1])],
            [vi(contract.OUT_ACTION, f32, [1, a]), vi(contract.OUT_FEATURE_CACHE, f32, [1, s - 1, f]),
             vi(contract.OUT_ACTION_CACHE, f32, [1, s - 1, a])])


def _ints(name: str, values: list[int]) -> Any:
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _ratio_nodes(interface: str, a: int, s: int) -> list[Any]:
    """action = numerator / denominator, both read from the input: 0/0 is NaN, 1/0 is inf, 5/1 is
    5.0, so a test steers the action with ordinary (finite) inputs.
    state (2A,): state[:A] / state[A:].  frame_stack (A = 1): R / G of the newest frame's top-left pixel."""
    if interface == contract.I_STATE:
        return [_ints("s0", [0]), _ints("sa", [a]), _ints("s2a", [2 * a]), _ints("ax", [1]),
                oh.make_node("Slice", [contract.IN_STATE, "s0", "sa", "ax"], ["num"]),
                oh.make_node("Slice", [contract.IN_STATE, "sa", "s2a", "ax"], ["den"]),
                oh.make_node("Div", ["num", "den"], [contract.OUT_ACTION])]
    assert interface == contract.I_FRAME_STACK and a == 1
    return [_ints("starts", [s - 1, 0, 0]), _ints("ends", [s, 1, 1]), _ints("axes", [1, 2, 3]),
            _ints("shape", [-1, 3]), _ints("c0", [0]), _ints("c1", [1]), _ints("c2", [2]), _ints("ax", [1]),
            oh.make_node("Slice", [contract.IN_FRAMES, "starts", "ends", "axes"], ["pixel"]),
            oh.make_node("Reshape", ["pixel", "shape"], ["rgb8"]),
            oh.make_node("Cast", ["rgb8"], ["rgb"], to=TensorProto.FLOAT),
            oh.make_node("Slice", ["rgb", "c0", "c1", "ax"], ["num"]),
            oh.make_node("Slice", ["rgb", "c1", "c2", "ax"], ["den"]),
            oh.make_node("Div", ["num", "den"], [contract.OUT_ACTION])]


def craft(path: Path, meta: dict[str, str], *, interface: str = contract.I_FRAME_STACK,
          action: list[float] | None = None, a: int = 1, s: int = 3, h: int = 8, state_dim: int = 2, f: int = 4,
          action_type: int = TensorProto.FLOAT) -> Path:
    """A policy file: graph shapes from (a, s, h, state_dim, f), `meta` as its metadata_props.
    The action is the constant `action`, or (action=None) the input-controlled ratio above.
    Caches pass through unchanged."""
    inputs, outputs = _io(interface, a, s, h, state_dim, f)
    if action is None:
        nodes = _ratio_nodes(interface, a, s)
    else:
        value = oh.make_tensor("value", action_type, [1, len(action)], action)
        nodes = [oh.make_node("Constant", [], [contract.OUT_ACTION], value=value)]
        outputs[0] = oh.make_tensor_value_info(contract.OUT_ACTION, action_type, [1, a])
    if interface == contract.I_SLAC_STATEFUL:
        nodes += [oh.make_node("Identity", [contract.IN_FEATURE_CACHE], [contract.OUT_FEATURE_CACHE]),
                  oh.make_node("Identity", [contract.IN_ACTION_CACHE], [contract.OUT_ACTION_CACHE])]
    model = oh.make_model(oh.make_graph(nodes, "crafted", inputs, outputs),
                          opset_imports=[oh.make_opsetid("", contract.OPSET)], ir_version=8)
    oh.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def frame(num: int, den: int, size: int = 8) -> np.ndarray:
    """A frame whose ratio-graph action is num / den."""
    out = np.zeros((size, size, 3), np.uint8)
    out[0, 0, :2] = num, den
    return out


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and len(text.splitlines()) == 1 and "\n" not in text, repr(text)
    return text


# ------------------------------------------------------------------------------ Policy.act
@pytest.fixture
def ratio_state(tmp_path: Path) -> Policy:
    """A state policy whose action is state[0] / state[1], bounds [-1, 1]."""
    path = craft(tmp_path / "ratio.onnx", metadata(contract.I_STATE), interface=contract.I_STATE)
    return Policy.load(path, device="cpu")


@pytest.mark.parametrize("num, den", [(0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (3e38, 1e-3)])
def test_a_non_finite_action_is_refused_naming_its_decision(ratio_state: Policy, num: float, den: float) -> None:
    ratio_state.act(np.array([0.5, 1.0]))
    ratio_state.act(np.array([0.25, 1.0]))
    with pytest.raises(NonFiniteActionError) as err:
        ratio_state.act(np.array([num, den]))
    text = one_line(err.value)
    assert "decision 3" in text and "ratio.onnx" in text and "non-finite" in text
    assert ratio_state.stats.decisions == 2 and ratio_state.stats.non_finite == 1
    ratio_state.reset()  # the next episode acts again
    assert ratio_state.act(np.array([0.5, 1.0])).tolist() == [0.5]


def test_an_out_of_bounds_action_is_clipped_and_counted(ratio_state: Policy) -> None:
    got = [ratio_state.act(np.array(x)).tolist() for x in ([5.0, 1.0], [0.5, 1.0], [-3e38, 1.0], [1.0, 1.0])]
    assert got == [[1.0], [0.5], [-1.0], [1.0]]  # clipped to the bounds; the bounds themselves are in
    assert (ratio_state.stats.decisions, ratio_state.stats.clipped) == (4, 2)


@pytest.mark.parametrize("bad", [np.array([np.nan, 1.0]), np.array([1.0, np.inf]), np.array([-np.inf, 0.0])])
def test_a_state_policy_refuses_a_non_finite_state(ratio_state: Policy, bad: np.ndarray) -> None:
    with pytest.raises(PolicyError) as err:
        ratio_state.act(bad)
    assert "state" in one_line(err.value) and "non-finite" in str(err.value)
    assert ratio_state.stats.decisions == 0


def test_every_interface_guards_its_action(tmp_path: Path) -> None:
    """Clipping and refusal hold for all four graph kinds (a constant action each)."""
    for interface in contract.INTERFACES:
        meta = metadata(interface, action_dim=2, low=[-1.0, 0.0], high=[1.0, 2.0], frame_stack=3)
        obs = np.zeros(2) if interface == contract.I_STATE else np.zeros((8, 8, 3), np.uint8)
        path = craft(tmp_path / f"{interface}.onnx", meta, interface=interface, action=[7.0, -7.0], a=2)
        policy = Policy.load(path, device="cpu")
        assert policy.act(obs).tolist() == [1.0, 0.0] and policy.stats.clipped == 1, interface
        path = craft(tmp_path / f"{interface}-nan.onnx", meta, interface=interface, action=[0.0, math.nan], a=2)
        with pytest.raises(NonFiniteActionError):
            Policy.load(path, device="cpu").act(obs)


def test_slac_history_holds_the_clipped_action(tmp_path: Path) -> None:
    """SLAC's stateless graph is fed the actions taken, and the one taken is the clipped one."""
    meta = metadata(contract.I_SLAC_STATELESS, frame_stack=3)
    path = craft(tmp_path / "s.onnx", meta, interface=contract.I_SLAC_STATELESS, action=[4.0])
    policy = Policy.load(path, device="cpu")
    for _ in range(3):
        policy.act(np.zeros((8, 8, 3), np.uint8))
    assert np.all(policy._actions.buf == 1.0)


# ------------------------------------------------------------------------------ Policy.load
# A passed behaviour gate as export/gate.py stores it (the keys the runtime reads).
GATE = {"passed": True, "mean_fp32": 100.0, "mean_variant": 99.5, "action_diff": {"max": 0.0123, "mean": 0.001}}
BAD_VALUES = [
    (contract.K_ACTION_LOW, "[1.0]", "action_low"),  # low == high
    (contract.K_ACTION_LOW, "[2.0]", "action_low"),  # low > high: eval used to flip the action's sign
    (contract.K_ACTION_LOW, "[NaN]", "action_low"),
    (contract.K_ACTION_HIGH, "[Infinity]", "action_high"),
    (contract.K_ACTION_HIGH, "[1e39]", "action_high"),  # finite in JSON, inf in float32
    (contract.K_ACTION_HIGH, "[1.0, 1.0]", "action_high"),  # length != action_dim
    (contract.K_ACTION_HIGH, '"1.0"', "action_high"),
    (contract.K_ACTION_HIGH, "[true]", "action_high"),
    (contract.K_ACTION_DIM, "0", "action_dim"),
    (contract.K_ACTION_DIM, "1.5", "action_dim"),
    ({contract.K_ACTION_DIM: "2", contract.K_ACTION_LOW: "[-1, -1]", contract.K_ACTION_HIGH: "[1, 1]"},
     "", "action_dim 2"),  # graph: 1-d
    (contract.K_ACTION_REPEAT, "0", "action_repeat"),
    (contract.K_ACTION_REPEAT, "true", "action_repeat"),
    (contract.K_FRAME_STACK, "-3", "frame_stack"),
    (contract.K_FRAME_STACK, "4", "frame_stack"),  # the graph takes 3 frames
    (contract.K_IMAGE_SIZE, "null", "image_size"),
    (contract.K_IMAGE_SIZE, "16", "image_size"),  # the graph takes 8x8
    (contract.K_IMAGE_SIZE, "abc", "image_size"),
    (contract.K_CONTROL_TIMESTEP, "0", "control_timestep"),
    (contract.K_CONTROL_TIMESTEP, "-0.01", "control_timestep"),
    (contract.K_CONTROL_TIMESTEP, "NaN", "control_timestep"),
    (contract.K_CONTROL_TIMESTEP, "inf", "control_timestep"),
    (contract.K_CONTROL_TIMESTEP, "3600", "control_timestep"),
    (contract.K_CAMERA_ID, "0.5", "camera_id"),
    (contract.K_CAMERA_ID, '"front"', "camera_id"),
    (contract.K_CAMERA_ID, "-2", "camera_id"),
    (contract.K_ALGO, "ppo", "algo"),
    (contract.K_ALGO, "sac-state", "algo"),  # a state algorithm on a frame-stack graph
    (contract.K_ENV, "", "env"),
    (contract.K_IMAGE_LAYOUT, "NCHW float", "image_layout"),
    (contract.K_PADDING, "zeros", "history_padding"),
    (contract.K_TRAIN_ENV_STEPS, "-1", "training_env_steps"),
    (contract.K_EXPORTER, "tf2onnx", "exporter"),
    (contract.K_OPSET, "x", "opset"),
    (contract.K_PRECISION, "int4", "precision"),
    (contract.K_GATE, contract.GATE_SKIPPED, "gate"),  # an fp32 file is the gate's reference, never gated
    ({contract.K_PRECISION: "int8"}, "", "needs sacae.gate"),
    # never published:
    ({contract.K_PRECISION: "int8", contract.K_GATE: json.dumps({**GATE, "passed": False})}, "", "gate"),
    ({contract.K_PRECISION: "fp16", contract.K_GATE: json.dumps({**GATE, "mean_variant": None})}, "", "gate"),
    ({contract.K_PRECISION: "fp16", contract.K_GATE: "{"}, "", "gate"),
]


@pytest.mark.parametrize("key, value, words", BAD_VALUES,
                         ids=[f"{k[6:]}={v}" if isinstance(k, str) else "graph-mismatch" for k, v, _ in BAD_VALUES])
def test_bad_metadata_is_one_line(tmp_path: Path, key: str | dict[str, str], value: str, words: str) -> None:
    """Each value the contract rules out (or several that agree with each other but not with the graph)."""
    meta = {**metadata(), **(key if isinstance(key, dict) else {key: value})}
    with pytest.raises(PolicyError) as err:
        Policy.load(craft(tmp_path / "p.onnx", meta, action=[0.0]), device="cpu")
    text = one_line(err.value)
    assert words in text and "p.onnx" in text


@pytest.mark.parametrize("precision, gate, says", [
    ("fp32", None, "(frame_stack, fp32) on CPU"),
    ("int8", json.dumps(GATE),
     "int8, behaviour gate passed: return 99.5 vs fp32 100.0, max action diff 0.012 of the range"),
    ("fp16", contract.GATE_SKIPPED, "fp16, behaviour gate skipped"),
])
def test_precision_and_gate_are_read_and_described(tmp_path: Path, precision: str, gate: str | None, says: str) -> None:
    meta = {**metadata(), contract.K_PRECISION: precision, **({contract.K_GATE: gate} if gate else {})}
    policy = Policy.load(craft(tmp_path / "p.onnx", meta, action=[0.0]), device="cpu")
    assert policy.spec.precision == precision
    assert policy.spec.gate == (contract.GateSummary(100.0, 99.5, 0.0123) if precision == "int8" else None)
    assert says in policy.describe()


@pytest.mark.parametrize("interface, drop", [(contract.I_STATE, contract.K_STATE_DIM),
                                             (contract.I_SLAC_STATEFUL, contract.K_FEATURE_DIM)])
def test_interface_keys_are_required(tmp_path: Path, interface: str, drop: str) -> None:
    meta = metadata(interface)
    del meta[drop]
    with pytest.raises(PolicyError, match=drop):
        Policy.load(craft(tmp_path / "p.onnx", meta, interface=interface, action=[0.0]), device="cpu")


def test_graph_types_must_match_the_contract(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as err:
        Policy.load(craft(tmp_path / "p.onnx", metadata(), action=[0.0], action_type=TensorProto.DOUBLE), device="cpu")
    assert "action" in one_line(err.value) and "float" in str(err.value)


def test_slac_needs_a_history(tmp_path: Path) -> None:
    meta = metadata(contract.I_SLAC_STATELESS, frame_stack=1)
    with pytest.raises(PolicyError, match="frame_stack"):
        Policy.load(craft(tmp_path / "p.onnx", meta, interface=contract.I_SLAC_STATELESS, action=[0.0], s=2),
                    device="cpu")


# ------------------------------------------------------------------------------ property test
SPECIALS = ["", "null", "true", "NaN", "Infinity", "-Infinity", "0", "-1", "1.5", "1e400", "[]", "{}", '"x"',
            "[NaN]", "[1, 2]", "[[1]]", "99999999999999999999", "garbage", "a\nb", "[" * 2000]


@st.composite
def policy_cases(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any], list[float], bool]:
    """(metadata, graph shape, constant action, mutated): valid metadata, then maybe one mutation."""
    interface = draw(st.sampled_from(contract.INTERFACES))
    a = draw(st.integers(1, 3))
    low = draw(st.lists(st.floats(-10, 10, width=32), min_size=a, max_size=a))
    high = [lo + draw(st.floats(0.125, 10, width=32)) for lo in low]
    s = draw(st.integers(2, 4))
    meta = metadata(interface, action_dim=a, low=low, high=high, frame_stack=s, image_size=8,
                    control_timestep=draw(st.floats(1e-4, 1.0)), camera_id=draw(st.integers(-1, 5)),
                    action_repeat=draw(st.integers(1, 8)))
    mutation = draw(st.sampled_from(["none", "none", "none", "drop", "value", "value", "swap", "length"]))
    key = draw(st.sampled_from(sorted(meta)))
    if mutation == "drop":
        del meta[key]
    elif mutation == "value":
        meta[key] = draw(st.one_of(st.sampled_from(SPECIALS), st.integers(-2**40, 2**40).map(str),
                                   st.floats().map(json.dumps), st.text(max_size=20),
                                   st.lists(st.floats(), max_size=4).map(json.dumps)))
    elif mutation == "swap":
        low_key, high_key = contract.K_ACTION_LOW, contract.K_ACTION_HIGH
        meta[low_key], meta[high_key] = meta[high_key], meta[low_key]
    elif mutation == "length":
        meta[draw(st.sampled_from([contract.K_ACTION_LOW, contract.K_ACTION_HIGH]))] = json.dumps(low + [0.0])
    value = st.one_of(st.floats(-12, 12, width=32), st.floats(width=32),
                      st.sampled_from([math.nan, math.inf, -math.inf, 3e38, -3e38]))
    action = draw(st.lists(value, min_size=a, max_size=a))
    return meta, {"interface": interface, "a": a, "s": s, "h": 8}, action, mutation != "none"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=policy_cases())
def test_policy_refuses_in_one_line_or_acts_finite_in_bounds(tmp_path: Path, case: Any) -> None:
    meta, shape, action, mutated = case
    path = craft(tmp_path / "p.onnx", meta, action=action, **shape)
    obs = np.zeros(2) if shape["interface"] == contract.I_STATE else np.zeros((8, 8, 3), np.uint8)
    try:
        policy = Policy.load(path, device="cpu")
        out = [policy.act(obs) for _ in range(2)]
    except PolicyError as exc:
        one_line(exc)
        assert mutated or isinstance(exc, NonFiniteActionError), exc  # a valid file always loads
        event(f"refused: {type(exc).__name__}")
        return
    event("acted, clipped" if policy.stats.clipped else "acted, in bounds")
    for got in out:
        assert got.dtype == np.float32 and got.shape == (policy.action_dim,)
        assert np.all(np.isfinite(got)) and np.all(policy.action_low <= got) and np.all(got <= policy.action_high)
        want = np.clip(np.asarray(action, np.float32), policy.action_low, policy.action_high)
        np.testing.assert_array_equal(got, want)  # the graph's action, clipped, and nothing else
    assert policy.stats.decisions == 2 and policy.stats.clipped == 2 * int(not np.array_equal(want, action))


# ------------------------------------------------------------------------------ sacae run
def strict_json(line: str) -> Any:
    """json.loads that refuses NaN / Infinity (what any other JSON reader does)."""
    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")
    return json.loads(line, parse_constant=refuse)


def ratio_pixels(tmp_path: Path) -> Path:
    return craft(tmp_path / "ratio.onnx", metadata(action_repeat=2))


def test_run_loop_marks_clipped_and_stops_at_a_non_finite_action(tmp_path: Path) -> None:
    frames = [frame(1, 2), frame(0, 0), frame(5, 1), frame(0, 0), frame(1, 0), frame(0, 0)]  # decisions 0, 2, 4
    writer = JsonLines(tmp_path / "run.jsonl")
    with pytest.raises(NonFiniteActionError) as err:
        run_loop(Policy.load(ratio_pixels(tmp_path), device="cpu"), frames, on_frame=writer)
    writer.close()
    assert one_line(err.value).startswith("frame 4: ") and "decision 3" in str(err.value)
    rows = [strict_json(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["action"] for r in rows] == [[0.5], [0.5], [1.0], [1.0]]
    assert [r["clipped"] for r in rows] == [False, False, True, True]  # the held action keeps its flag


def test_jsonl_never_writes_nan(tmp_path: Path) -> None:
    writer = JsonLines(tmp_path / "x.jsonl")
    with pytest.raises(ValueError):
        writer({"action": [math.nan]})
    writer.close()


def write_pngs(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir()
    for i, f in enumerate(frames):
        iio.imwrite(folder / f"{i:03d}.png", f)
    return folder


def test_cli_run_stops_at_a_non_finite_action_with_valid_json(tmp_path: Path) -> None:
    images = write_pngs(tmp_path / "frames", [frame(1, 2), frame(9, 9), frame(3, 1), frame(0, 0), frame(0, 0)])
    out = tmp_path / "run.jsonl"
    proc = sacae("run", str(ratio_pixels(tmp_path)), "--source", f"images:{images}", "--jsonl", str(out),
                 "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: frame 4: ") and "Traceback" not in proc.stderr
    rows = [strict_json(line) for line in out.read_text().splitlines()]
    assert [(r["action"], r["clipped"]) for r in rows] == [([0.5], False), ([0.5], False), ([1.0], True), ([1.0], True)]


def test_cli_run_dmc_never_hands_the_simulator_a_nan(tmp_path: Path) -> None:
    """Was: a PhysicsError traceback from dm_control and an empty JSON-lines file."""
    path = craft(tmp_path / "nan.onnx", metadata(image_size=32), action=[math.nan], h=32)
    out = tmp_path / "run.jsonl"
    proc = sacae("run", str(path), "--source", "dmc", "--max-frames", "4", "--jsonl", str(out), "--device", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "PhysicsError" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: frame 0: ")
    assert out.read_text() == ""


# ------------------------------------------------------------------------------ sacae eval
def test_cli_eval_refuses_swapped_bounds(tmp_path: Path) -> None:
    """Was: eval mapped the action with (high - low) < 0 and silently flipped its sign."""
    path = craft(tmp_path / "swapped.onnx", metadata(image_size=32, low=[1.0], high=[-1.0]), action=[0.5], h=32)
    proc = sacae("eval", str(path), "--episodes", "1", "--distractors", "none", "--out", str(tmp_path / "e"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "action_low" in proc.stderr


def test_cli_eval_reports_failed_episodes(tmp_path: Path) -> None:
    path = craft(tmp_path / "nan.onnx", metadata(image_size=32, action_repeat=8), action=[math.nan], h=32)
    out = tmp_path / "e"
    proc = sacae("eval", str(path), "--episodes", "2", "--distractors", "none", "--no-video", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = strict_json((out / "results.json").read_text())
    (row,) = data["rows"]
    assert row["failed"] == 2 and row["none"]["failed"] == 2 and row["none"]["completed"] == 0
    assert row["none"]["mean"] is None and row["none"]["returns"] == [None, None]
    table = (out / "results.md").read_text()
    assert "| nan | sac-ae | n/a (2 of 2 failed) | 2 |" in table and "completed" in table
    assert "non-finite" in proc.stderr


class FailsInEpisode:
    """A policy (the real one underneath) that gives a non-finite action at one episode's 3rd decision."""

    def __init__(self, policy: Policy, episode: int) -> None:
        self.policy, self.episode, self.resets, self.decisions = policy, episode, -1, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def reset(self) -> None:
        self.resets, self.decisions = self.resets + 1, 0
        self.policy.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.decisions += 1
        if self.resets == self.episode and self.decisions == 3:
            raise NonFiniteActionError("non-finite action [nan] at decision 3 of the episode")
        return self.policy.act(obs)


def test_eval_episodes_go_on_after_a_failed_one(tmp_path: Path) -> None:
    from sacae_deploy.evaluation import ConditionResult, run_episodes

    # action repeat 100: a 1000-step episode is 10 decisions (10 renders), so three take a second
    path = craft(tmp_path / "half.onnx", metadata(image_size=32, action_repeat=100), action=[0.5], h=32)
    failures: list[str] = []
    returns = run_episodes(FailsInEpisode(Policy.load(path, device="cpu"), 1), ENV, "none", 3, seed=0,
                           failures=failures)  # type: ignore[arg-type]
    assert returns[1] is None and all(isinstance(r, float) for r in (returns[0], returns[2]))
    assert failures == ["episode 1: non-finite action [nan] at decision 3 of the episode"]
    result = ConditionResult("half", "sac-ae", ENV, "none", returns, failures)
    assert (result.completed, result.failed) == (2, 1) and result.mean == pytest.approx((returns[0] + returns[2]) / 2)
