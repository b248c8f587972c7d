"""The measured choices behind the int8 export and `Policy`'s session options, side by side in one run.

On the paper-size SAC+AE policy (random weights, int8 calibrated on real cheetah-run frames, as
benchmarks/policy_latency.py builds it), batch 1, `Policy.act`:

- session options per precision (fp32, int8): 2 intra-op threads spinning (the default), 2 threads
  not spinning (`Policy.load(spin=False)`, `sacae run --no-spin`), 1 thread;
- int8 alternatives to the export's static QDQ graph: the dense layers quantized dynamically
  (onnxruntime's quantize_dynamic on MatMul/Gemm, static QDQ convs), and the conv that reads the
  frames kept in float32 (onnxruntime's int8 convs run channels-last, so the 9-channel frame stack
  needs a layout transpose that a float first conv avoids);
- the plain `torch.onnx.export` anchor.

Each row's mean |action difference| from fp32 on the same frames is stated beside its latency.

    .venv/bin/python benchmarks/latency_choices.py [--steps 2000] [--calibration 200]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

# The repository root goes first: this folder's distractors.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import policy_latency as latency  # noqa: E402
from machine import StealMeter, cpu_name  # noqa: E402

from export.precision import Calibration, calibration_inputs, to_int8  # noqa: E402
from sacae_deploy import Policy  # noqa: E402


def frame_conv(path: Path) -> str:
    """The name of the first Conv node: the one that reads the frames."""
    return next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")


def dense_dynamic(fp32: Path, dst: Path, calibration: Calibration, tmp: Path) -> None:
    """Dense layers by onnxruntime's quantize_dynamic (int8 weights, activations quantized per step),
    then static QDQ convs as the export makes them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32))  # the exporter's value_info on initializers upsets quantize_dynamic's
    weights = {t.name for t in model.graph.initializer}  # shape check once Gemm weights are transposed
    kept = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    onnx.save(model, str(tmp / "stripped.onnx"))
    quant_pre_process(str(tmp / "stripped.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    quantize_dynamic(str(tmp / "pre.onnx"), str(tmp / "dense.onnx"), op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8)
    to_int8(tmp / "dense.onnx", dst, calibration, ops=["Conv", "Relu"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="acting steps per configuration (>= 1000)")
    parser.add_argument("--calibration", type=int, default=200, help="int8 calibration decisions")
    args = parser.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    load_start, steal = os.getloadavg()[0], StealMeter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sac = latency.sac_ae(tmp, args.calibration)
        fp32, int8 = sac.files["fp32"], sac.files["int8"]
        calibration = calibration_inputs(fp32, args.calibration, None, "cheetah-run", 1000)
        files = {"int8 dense dynamic": tmp / "dense_dynamic.onnx", "int8 frame conv fp32": tmp / "frame_conv.onnx"}
        dense_dynamic(fp32, files["int8 dense dynamic"], calibration, tmp)
        to_int8(fp32, files["int8 frame conv fp32"], calibration, keep_float=[frame_conv(fp32)])
        assert any(n.op_type == "Conv" for n in onnx.load(str(files["int8 frame conv fp32"])).graph.node)

        def step(path: Path, threads: int = latency.THREADS, spin: bool = True) -> latency.Step:
            return latency.policy_step(path, sac.frames, threads=threads, spin=spin)

        configs: dict[str, latency.Step] = {"plain export": sac.plain}
        for name, path in (("fp32", fp32), ("int8", int8)):
            configs[f"{name}, 2 threads spinning"] = step(path)
            configs[f"{name}, 2 threads not spinning"] = step(path, spin=False)
            configs[f"{name}, 1 thread"] = step(path, threads=1)
        for name, path in files.items():
            configs[f"{name}, 2 threads spinning"] = step(path)
        results = latency.measure(configs, args.steps)

        paths = {"fp32": fp32, "int8": int8, **files}
        reference = Policy.load(fp32, device="cpu")
        diffs = {}
        for name, path in paths.items():
            policy, d = Policy.load(path, device="cpu"), []
            reference.reset()
            for frame in sac.frames:
                d.append(float(np.abs(reference.act(frame) - policy.act(frame)).mean()))
            diffs[name] = round(float(np.mean(d)), 5)
    print("| configuration | p50 ms | p99 ms | thread cpu p50 ms | mean abs action diff vs fp32 |", file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for name, r in results.items():
        diff = diffs.get(name.split(",")[0], "-")
        print(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['cpu_p50_ms']:.3f} | {diff} |", file=sys.stderr)
    print(json.dumps({"benchmark": "latency_choices", "cpu": cpu_name(), "cores": os.cpu_count(), "batch": 1,
                      "steps": args.steps, "calibration": args.calibration, "results": results,
                      "mean_abs_action_diff_vs_fp32": diffs, "cpu_steal": steal.fraction(),
                      "loadavg_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}}))


if __name__ == "__main__":
    main()
