"""`sacae export`: one self-contained ONNX file per run whose graph matches the training code (every
algorithm), carries the contract's metadata, and refuses to publish a graph that fails its checks.

Runs are built directly (smoke networks, perturbed weights, a real checkpoint via train.checkpoint)
instead of trained: export only needs a run directory, and this keeps the file well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import ExportError, export_agent, export_run
from export.graphs import FrameStackPolicy, ToBounds
from export.metadata import EnvFacts
from helpers import SACAE, Exports, Run, make_run
from sacae_deploy import contract
from train import config as TC
from train.workspace import make_agent

# Runs and their exports come from conftest's session-wide `exports` (shared with test_policy).


@pytest.fixture(scope="session")
def cli_export(exports: Exports) -> tuple[Run, subprocess.CompletedProcess[str]]:
    """`sacae export` run as a user would, on a sac-pixel run."""
    run = make_run(exports.root / "cli", "sac-pixel")
    proc = subprocess.run([*SACAE, "export", str(run.dir)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl")))
    return run, proc


def _stack(frames: np.ndarray) -> np.ndarray:
    """sacae_deploy.sim.envs.FrameStack's observation for frames (K, H, W, 3): CHW frames concatenated, oldest first."""
    return np.concatenate([f.transpose(2, 0, 1) for f in frames], axis=0)


def _training_actions(run: Run, inputs: np.ndarray) -> np.ndarray:
    if run.algo == "sac-state":
        return np.stack([run.agent.act(s, mean=True) for s in inputs])
    return np.stack([run.agent.act(_stack(seq), mean=True) for seq in inputs])


@pytest.mark.parametrize("algo", ["sac-ae", "sac-state", "sac-pixel"])
def test_onnxruntime_matches_the_training_agent(exports: Exports, cli_export: Any, algo: str) -> None:
    if algo == "sac-pixel":
        run, path = cli_export[0], cli_export[0].dir / "policy.onnx"
    else:
        run, path = exports(algo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for batch in (1, 2, 5):  # the batch dimension is dynamic
        if algo == "sac-state":
            name, x = contract.IN_STATE, rng.standard_normal((batch, 5)).astype(np.float32)
        else:
            k, s = run.cfg.frame_stack, run.cfg.image_size
            name, x = contract.IN_FRAMES, rng.integers(1, 256, (batch, k, s, s, 3), dtype=np.uint8)
        (got,) = session.run([contract.OUT_ACTION], {name: x})
        np.testing.assert_allclose(got, _training_actions(run, x), atol=1e-5, rtol=0)


def test_slac_exports_check_the_history_rollout(exports: Exports) -> None:
    run, path = exports("slac")
    result = export_run(run.dir, out=run.dir / "again.onnx", legacy=True)  # the checks are part of every export
    assert result.interface == contract.I_SLAC_STATEFUL
    assert result.checks[0].startswith("parity:") and result.checks[1].startswith("rollout: 20 steps")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta[contract.K_INTERFACE] == contract.I_SLAC_STATEFUL
    assert meta[contract.K_FRAME_STACK] == str(run.cfg.history_length)
    assert meta[contract.K_FEATURE_DIM] == str(run.agent.feature_dim) and meta[contract.K_IMAGE_SIZE] == "64"
    stateful = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in stateful.get_inputs()] == [contract.IN_FRAME, contract.IN_FEATURE_CACHE,
                                                       contract.IN_ACTION_CACHE, contract.IN_RESET]
    assert [o.name for o in stateful.get_outputs()] == [contract.OUT_ACTION, contract.OUT_FEATURE_CACHE,
                                                        contract.OUT_ACTION_CACHE]
    stateless = ort.InferenceSession(str(exports("slac", "stateless")[1]), providers=["CPUExecutionProvider"])
    assert [i.name for i in stateless.get_inputs()] == [contract.IN_FRAMES, contract.IN_ACTIONS]


def test_metadata_carries_the_contract(exports: Exports) -> None:
    run, path = exports("sac-ae")
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert set(contract.REQUIRED_KEYS) <= set(meta)
    assert meta[contract.K_ALGO] == "sac-ae" and meta[contract.K_ENV] == "cartpole-swingup"
    assert meta[contract.K_INTERFACE] == contract.I_FRAME_STACK
    assert json.loads(meta[contract.K_ACTION_LOW]) == [-1.0] and json.loads(meta[contract.K_ACTION_HIGH]) == [1.0]
    assert int(meta[contract.K_ACTION_REPEAT]) == 8  # cartpole's row of the paper's table
    assert int(meta[contract.K_FRAME_STACK]) == 3 and json.loads(meta[contract.K_IMAGE_SIZE]) == run.cfg.image_size
    assert meta[contract.K_IMAGE_LAYOUT] == contract.IMAGE_LAYOUT and meta[contract.K_PADDING] == contract.PADDING_RULE
    assert float(meta[contract.K_CONTROL_TIMESTEP]) == pytest.approx(0.01)
    assert meta[contract.K_TRAIN_ENV_STEPS] == "400" and meta[contract.K_EXPORTER] == "dynamo"
    assert meta[contract.K_OPSET] == "18" and meta[contract.K_TORCH_VERSION] == torch.__version__
    state_meta = {p.key: p.value for p in onnx.load(str(exports("sac-state")[1])).metadata_props}
    assert state_meta[contract.K_STATE_DIM] == "5" and state_meta[contract.K_INTERFACE] == contract.I_STATE


def test_one_self_contained_file_at_opset_18_without_sampling(exports: Exports) -> None:
    run, path = exports("sac-ae")
    assert sorted(p.name for p in run.dir.iterdir()) == ["checkpoints", "config.json", "policy.onnx"]
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == [contract.IN_FRAMES]
    assert inputs[contract.IN_FRAMES].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_graph_maps_actions_to_the_env_bounds(tmp_path: Path) -> None:
    """DMC bounds are [-1, 1] (no node at all); other bounds are mapped inside the graph."""
    cfg = TC.resolve("sac-ae", "smoke")
    facts = EnvFacts(2, [-2.0, 0.0], [4.0, 1.0], 0.01, 5)
    agent = make_agent(cfg, (9, cfg.image_size, cfg.image_size), 2, torch.device("cpu"))
    agent.train_mode(False)
    result = export_agent(agent, cfg, facts, tmp_path / "wide.onnx", legacy=True)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    frames = np.random.default_rng(0).integers(1, 256, (4, 3, cfg.image_size, cfg.image_size, 3), np.uint8)
    (got,) = session.run(None, {contract.IN_FRAMES: frames})
    unit = np.stack([agent.act(_stack(f), mean=True) for f in frames])
    np.testing.assert_allclose(got, np.array([-2.0, 0.0]) + (unit + 1) / 2 * np.array([6.0, 1.0]), atol=1e-5)
    assert ToBounds(np.array([-1.0]), np.array([1.0])).identity


def test_a_failing_parity_check_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, "sac-state")
    out = tmp_path / "policy.onnx"
    monkeypatch.setattr("export.graphs.env_bounds", lambda action, facts: action + 1e-3)
    with pytest.raises(ExportError, match=r"disagrees with torch: parity: max \|onnxruntime - torch\| = 1.00e-03"):
        export_run(run.dir, out=out, legacy=True)
    assert list(tmp_path.glob("*.onnx*")) == [] and list(tmp_path.glob(".*tmp")) == []


def test_scaling_by_255_happens_once(tmp_path: Path) -> None:
    """All-255 frames must reach the conv trunk as 1.0: compare against the trunk fed 1.0 directly."""
    run = make_run(tmp_path, "sac-pixel")
    module = FrameStackPolicy(run.agent.actor, ToBounds(np.array([-1.0]), np.array([1.0]))).eval()
    k, s = run.cfg.frame_stack, run.cfg.image_size
    with torch.no_grad():
        ones = torch.ones(1, 3 * k, s, s)
        trunk = run.agent.actor.encoder.trunk
        want = torch.tanh(run.agent.actor.dist_params(run.agent.actor.encoder.head(trunk.net(ones)))[0])
        got = module(torch.full((1, k, s, s, 3), 255, dtype=torch.uint8))
    torch.testing.assert_close(got, want)


def test_cli_export_prints_parity_and_writes_the_policy(cli_export: Any) -> None:
    run, proc = cli_export
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("parity: max |onnxruntime - torch| = ")
    assert float(lines[0].split("= ")[1].split()[0]) <= 1e-4
    assert f"wrote {run.dir / 'policy.onnx'}" in proc.stdout and "on CPU" in lines[-1]
    assert (run.dir / "policy.onnx").is_file()


def test_cli_export_rejects_a_directory_that_is_not_a_run_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([*SACAE, "export", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path} is not a `sacae train` run directory (no config.json)\n"


def test_export_errors_say_what_is_wrong(tmp_path: Path, exports: Exports) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        export_run(tmp_path / "nope")
    with pytest.raises(ExportError, match="--history applies to slac runs only; this is a sac-state run"):
        export_run(exports("sac-state")[0].dir, history="stateful")
    (tmp_path / "config.json").write_text('{"algo": "dqn"}')
    with pytest.raises(ExportError, match="is not a readable run config"):
        export_run(tmp_path)
