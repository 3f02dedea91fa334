"""OpenVINO as a second runtime for auto's ONNX variants: measured against ONNX Runtime, never assumed.

For every ONNX variant of one or more compress runs (`RUN/variants/*/model.onnx`), times ONNX Runtime (one
thread, no spinning, the graph's session hint applied) against OpenVINO's CPU plugin (one inference thread,
latency hint, one stream) on the same file: OpenVINO with the graph's dynamic batch axis, and OpenVINO
reshaped to the batch it serves (a static shape, which OpenVINO compiles best). Batch 1 and 256, interleaved
rounds, the median of per-round ratios (ORT's time over each contender's: above 1, OpenVINO is faster), and
the agreement of each contender's top-1 with ORT's on the test split. A graph OpenVINO cannot read (ORT's
contrib ops such as QGemm) is listed with the reason.

    OMP_NUM_THREADS=1 python benchmarks/openvino_runtime.py RUN [RUN ...] --data DATA [--rounds 7]

Needs the optional `openvino` package (not a toolkit dependency).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainers.data import load_data  # noqa: E402
from trainers.ortsession import first_output, inference_session  # noqa: E402

BATCHES = (1, 256)


def _ort(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return first_output(inference_session(str(path), options))  # as the toolkit serves its graphs


def _openvino(path: Path, static_shape=None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if static_shape is not None:
        model.reshape(list(static_shape))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    request, output = compiled.create_infer_request(), compiled.outputs[0]
    return lambda x: request.infer({0: x})[output]


def _best_of(run, x, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - start)
    return best


def race(contenders: dict, x: np.ndarray, rounds: int) -> dict:
    """Median over rounds of ORT's time over each contender's (the first contender is ORT itself)."""
    reps = 200 if len(x) == 1 else 20
    for run in contenders.values():
        run(x)
    ratios = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        times = {k: _best_of(contenders[k], x, reps) for k in order}
        for k in names:
            ratios[k].append(times["onnxruntime"] / times[k])
    return {k: round(float(np.median(v)), 3) for k, v in ratios.items()} | {
        "onnxruntime_ms": round(1e3 * times["onnxruntime"], 4)}


def measure(graph: Path, x_test: np.ndarray, rounds: int) -> dict:
    row = {}
    for batch in BATCHES:
        x = np.ascontiguousarray(np.resize(x_test, (batch, *x_test.shape[1:])), np.float32)
        try:
            contenders = {"onnxruntime": _ort(graph), "openvino": _openvino(graph),
                          "openvino static": _openvino(graph, x.shape)}
        except Exception as exc:  # OpenVINO's own errors: an op its ONNX reader has no rule for
            return {"openvino fails": str(exc).strip().splitlines()[-1][:160]}
        row[f"b{batch}"] = race(contenders, x, rounds)
    reference = _ort(graph)(x_test).argmax(1)
    row["agreement with onnxruntime"] = round(float((_openvino(graph)(x_test).argmax(1) == reference).mean()), 4)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="compress run directories (with variants/)")
    parser.add_argument("--data", required=True, help="the data the runs were made on (digits, or an .npz)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    x_test = np.ascontiguousarray(load_data(args.data).x_test, np.float32)
    results = {}
    for run in args.runs:
        for graph in sorted(run.glob("variants/*/model.onnx")):
            key = "/".join([*run.resolve().parts[-2:], graph.parent.name])  # e.g. digits-cnn/compress/NAME
            results[key] = measure(graph, x_test, args.rounds)
            print(key, json.dumps(results[key]), file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
