"""Where the variants serve (`compress --device`): the device is checked before any work, every timing and
evaluation runs there, each row says where it computed, and auto chains half precision onto pruned models only
on a GPU. What needs a GPU is in tests/test_gpu.py; these run on any machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compress.auto import plan
from compress.checks import tiny_model
from trainers.errors import ToolkitError
from trainers.ortsession import CPU, CUDA, providers_for


@pytest.mark.parametrize("device, available, expected", [
    ("cpu", [CUDA, CPU], [CPU]),                              # the CPU never asks for CUDA's provider
    ("cuda", [CUDA, CPU], [CUDA, CPU]),                       # CPU's after it: operators CUDA's lacks
    ("cuda:1", [CUDA, CPU], [(CUDA, {"device_id": 1}), CPU]),
    ("cuda", ["AzureExecutionProvider", CPU], [CPU]),         # a CPU-only build: the graph runs on the CPU
])
def test_providers_follow_the_device_and_the_build(device, available, expected):
    assert providers_for(device, available) == expected


def test_half_precision_is_tried_and_chained_onto_transforms_only_on_a_gpu():
    model = tiny_model("mlp")
    on_cpu, on_gpu = plan(model), plan(model, "cuda:0")
    gpu_steps = [(m, o) for m, o, _ in on_gpu]
    assert gpu_steps.count(("onnx-fp16", {})) == 1  # a GPU graph: on the GPU only
    on_gpu = [step for step in on_gpu if step[0] != "onnx-fp16"]
    assert [(m, o) for m, o, _ in on_cpu] == [(m, o) for m, o, _ in on_gpu]  # the same steps, chained differently
    for (method, _, cpu_children), (_, _, gpu_children) in zip(on_cpu, on_gpu):
        half = ("fp16", "bf16", "onnx-fp16")
        assert not set(half) & set(cpu_children)
        if cpu_children:  # a transform that chains: the GPU adds the three half precisions to the CPU's chain
            assert [c for c in gpu_children if c not in half] == cpu_children, method
            assert sorted(set(gpu_children) - set(cpu_children)) == sorted(half), method
        else:
            assert gpu_children == []
    assert any(children for _, _, children in on_cpu)


@pytest.mark.parametrize("device, cuda, count, message", [
    ("gpu", False, 0, "--device must be cpu, cuda or cuda:N"),
    ("cuda:", False, 0, "--device must be cpu, cuda or cuda:N"),
    ("cuda", False, 0, "--device cuda: no CUDA GPU is available here"),
    ("cuda:2", True, 1, "--device cuda:2: this machine has 1 CUDA GPU(s)"),
])
def test_a_device_that_is_not_here_is_refused_before_any_work(monkeypatch, tmp_path, capsys, device, cuda, count,
                                                              message):
    from cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    code = main(["compress", str(tiny_model("mlp").path), "--data", "digits", "--method", "onnx-fp32",
                 "--device", device, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("device, message", [("gpu", "--device must be cpu, cuda or cuda:N"),
                                             ("cuda", "--device cuda: no CUDA GPU is available here")])
def test_predict_refuses_a_device_that_is_not_here(monkeypatch, tmp_path, capsys, digits, device, message):
    from cli.main import main
    from trainers import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.savez(tmp_path / "rows.npz", x=digits.x_test[:3])
    model = tiny_model("mlp").path
    code = main(["predict", str(model), str(tmp_path / "rows.npz"), "--device", device, "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(ToolkitError, match=message):
        load_model(model, device=device)
    assert main(["predict", str(model), str(tmp_path / "rows.npz"), "--device", "cpu", "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4


def test_the_pipeline_config_takes_and_checks_the_device():
    from reports import resolve_config

    assert resolve_config({"compress": {"device": "cuda:3"}}).compress.device == "cuda:3"
    assert resolve_config({}).compress.device == "cpu"
    with pytest.raises(ToolkitError, match="device"):
        resolve_config({"compress": {"device": "tpu"}})


def test_each_row_says_where_it_computed(digits, tmp_path):
    from compress import compress_model
    from trainers.schema import read_result

    result = compress_model(tiny_model("mlp"), digits, methods=["onnx-fp32", "bf16"], out=tmp_path / "c",
                            options={"onnx-fp32": {}})
    written = read_result(tmp_path / "c" / "result.json", "compress")
    assert written.device == "cpu" and json.loads((tmp_path / "c" / "config.json").read_text())["device"] == "cpu"
    rows = {row.name: row for row in written.variants}
    assert {row.device for row in rows.values()} == {"cpu"}
    onnx = next(row for row in rows.values() if row.runtime == "onnxruntime")
    assert onnx.provider == CPU
    assert all(row.provider is None for row in rows.values() if row.runtime == "torch")
    assert result.device == "cpu"
    assert set(result.to_frame()["device"]) == {"cpu"}


def test_a_gpu_timing_on_an_onnx_runtime_build_without_cuda_runs_the_graph_on_the_cpu_and_says_so(digits):
    """The lent GPU machines had only the CPU build of ONNX Runtime: a graph asked to serve on "cuda" there
    computes on the CPU, with the same logits, and the runner says where it ran."""
    import onnxruntime as ort

    from compress import get_method
    from compress.measure import Runner

    if CUDA in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has CUDA's provider")
    (variant,) = get_method("onnx-fp32").func(tiny_model("mlp"), digits)
    on_cpu, asked_gpu = Runner(variant, 1), Runner(variant, 1, device="cuda")
    assert (on_cpu.device, asked_gpu.device, asked_gpu.provider) == ("cpu", "cpu", CPU)
    x = np.ascontiguousarray(digits.x_test[:16], dtype=np.float32)
    np.testing.assert_array_equal(asked_gpu(x), on_cpu(x))


class _StaysOnCpu(torch.nn.Linear):
    """A module whose weights cannot move to a GPU (as PyTorch's packed int8 modules)."""

    def _apply(self, fn, recurse=True):
        raise NotImplementedError("no kernel for this device")


@pytest.mark.parametrize("family", ["mlp", "cnn", "lstm"])
def test_the_fp16_onnx_graph_takes_and_returns_float32_and_keeps_the_predictions(digits, family):
    import onnx

    from compress import get_method

    model = tiny_model(family)
    (half,) = get_method("onnx-fp16").func(model, digits)
    (full,) = get_method("onnx-fp32").func(model, digits)
    graph = onnx.load_from_string(half.onnx_bytes)
    io = [*graph.graph.input, *graph.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {onnx.TensorProto.FLOAT}
    weights = [t for t in graph.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert half.model.spec.onnx["precision"] == "float16" and half.recipe["method"] == "onnx-fp16"
    assert len(half.onnx_bytes) < len(full.onnx_bytes)
    assert half.measurements["parity"]["top1_agreement"] >= 0.99 and half.measurements["parity"]["max_abs_diff"] < 0.05


class _NoKernelThere(torch.nn.Linear):
    """A module that moves to another device but has no kernel there (as a bf16 recurrent layer may lack one)."""

    def forward(self, x):
        if x.device.type != "cpu":
            raise NotImplementedError(f"no kernel for {x.dtype} on {x.device.type}")
        return super().forward(x)


def test_a_module_that_cannot_move_or_compute_on_the_device_is_timed_where_it_is():
    """PyTorch's meta device stands in for a GPU here: modules move there and compute shapes only."""
    from compress.measure import _on_device

    for module in (_StaysOnCpu(4, 3), _NoKernelThere(4, 3)):
        moved, device = _on_device(module, "meta", (4,))
        assert moved is module and device == "cpu"
    plain = torch.nn.Linear(4, 3)
    moved, device = _on_device(plain, "meta", (4,))
    assert device == "meta" and moved is not plain and plain.weight.device.type == "cpu"  # a copy moved
    assert _on_device(plain, "cpu", (4,)) == (plain, "cpu")


def test_version_5_compress_results_are_still_read():
    """Version 6 added `device` (the file's and each row's) and each row's `provider`; a version 5 file reads as
    version 5, and a version 5 file that has them is refused in one line."""
    from fake_runs import before_version_6, compress_result
    from trainers.schema import CompressResultFile, CompressResultFileV5, parse_result

    current = compress_result().dump()
    assert current["schema_version"] == 8 and current["device"] == "cpu"
    assert type(parse_result(current, stage="compress")) is CompressResultFile
    old = {**before_version_6(current), "schema_version": 5}
    read = parse_result(old, stage="compress")
    assert type(read) is CompressResultFileV5 and not hasattr(read, "device")
    with pytest.raises(ToolkitError, match="device"):
        parse_result({**old, "device": "cuda"}, stage="compress")


def test_the_report_and_model_card_say_which_device_timed_the_variants(tmp_path):
    from fake_runs import compress_result, write_result
    from reports import render_report

    result = compress_result()
    on_gpu = result.model_copy(update={"device": "cuda", "variants": [
        row.model_copy(update={"device": "cpu" if row.runtime == "onnxruntime" else "cuda"}) for row in result.variants]})
    for name, written in (("cpu", result), ("gpu", on_gpu)):
        write_result(tmp_path / name / "result.json", written)
        render_report(tmp_path / name, tmp_path / f"{name}.html")
    cpu_html, gpu_html = (tmp_path / "cpu.html").read_text(), (tmp_path / "gpu.html").read_text()
    assert "on this machine's CPU with one thread" in cpu_html and "GPU" not in cpu_html.split("Variants")[1][:400]
    assert "on this machine's GPU (cuda)" in gpu_html
    assert gpu_html.count("; ran on the CPU") == sum(row.runtime == "onnxruntime" for row in result.variants)
    assert "timed on its GPU (cuda)" in (tmp_path / "gpu.md").read_text()  # the card beside each report
    assert "timed on its GPU" not in (tmp_path / "cpu.md").read_text()


def test_the_cli_table_says_where_each_variant_ran_on_a_gpu_run():
    from rich.console import Console

    from cli.render import variants_table
    from fake_runs import compress_result

    def printed(summary) -> str:
        console = Console(width=300, record=True)
        console.print(variants_table(summary))
        return console.export_text()

    result = compress_result()
    assert " on cpu" not in printed(result.dump())
    on_gpu = result.model_copy(update={"device": "cuda", "variants": [
        row.model_copy(update={"device": "cpu" if row.runtime == "onnxruntime" else "cuda"}) for row in result.variants]})
    text = printed(on_gpu.dump())
    assert "onnxruntime on cpu" in text and "torch on cuda" in text


def test_version_6_compress_results_are_still_read():
    """Version 7 added each row's `log_loss`; a version 6 file reads as version 6, and one that has it is refused."""
    from fake_runs import before_version_8, compress_result
    from trainers.schema import CompressResultFileV6, parse_result

    current = before_version_8(compress_result().dump())
    row = lambda r: {k: v for k, v in r.items() if k != "log_loss"}  # noqa: E731
    old = {**current, "schema_version": 6, "baseline": row(current["baseline"]),
           "variants": [row(r) for r in current["variants"]]}
    assert type(parse_result(old, stage="compress")) is CompressResultFileV6
    with pytest.raises(ToolkitError, match="log_loss"):
        parse_result({**old, "baseline": {**old["baseline"], "log_loss": 0.1}}, stage="compress")
