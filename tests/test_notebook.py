"""Used from a notebook: the user's matplotlib state is left alone; results show short reprs, HTML, figures, tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure

from compress import compress_model
from compress.views import COLUMNS
from explain import explain_model
from explain.views import DRIFT_COLUMNS
from reports import render_report
from trainers import TrainConfig, load_data, train
from trainers.display import HISTORY_COLUMNS, MAX_REPR


@pytest.fixture
def user_matplotlib():
    """A notebook user's own settings: a backend other than Agg and a changed font size, restored afterwards."""
    backend, saved = matplotlib.get_backend(), matplotlib.rcParams.copy()
    matplotlib.use("svg", force=True)
    matplotlib.rcParams["font.size"] = 13.5
    yield
    matplotlib.rcParams.update(saved)
    matplotlib.use(backend, force=True)


def _state():
    return matplotlib.get_backend(), dict(matplotlib.rcParams)


def test_stages_and_report_leave_matplotlib_state_alone_and_results_show_themselves(tmp_path, user_matplotlib):
    before = _state()
    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=4), out=tmp_path / "train")
    compressed = compress_model(trained.model, data, methods=["fp16", "onnx-fp32"], out=tmp_path / "compress")
    chosen = compressed.variants[0].model
    explained = explain_model(trained.model, data, methods=["integrated_gradients"], compare=[chosen], samples=8,
                              out=tmp_path / "explain")
    for stage in ("train", "compress", "explain"):
        render_report(tmp_path / stage)
    figures = {**trained.figures, **compressed.figures, **explained.figures}
    assert _state() == before

    assert len(figures) >= 5 and all(isinstance(fig, Figure) for fig in figures.values())
    assert _state() == before                       # drawing the result figures touches nothing either

    history = trained.to_frame()
    assert list(history.columns) == list(HISTORY_COLUMNS) and len(history) == len(trained.history)
    variants = compressed.to_frame()
    assert list(variants.columns) == list(COLUMNS) and len(variants) == len(compressed.variants) + 1
    assert variants["chosen"].sum() == 1 and variants["name"].iloc[0] == compressed.baseline.name
    importance = explained.to_frame()
    assert list(importance.columns) == ["element", "integrated_gradients"] and len(importance) == 4
    drift = explained.to_frame("drift")
    assert list(drift.columns) == list(DRIFT_COLUMNS) and len(drift) == 1

    for result in (data, trained, compressed, explained):
        assert len(repr(result)) < MAX_REPR and "\n" not in repr(result)
    assert "<table" in compressed._repr_html_() and f"chosen: {compressed.chosen.name}" in compressed._repr_html_()
    assert "<table" in trained._repr_html_() and "drift" in explained._repr_html_()


def test_a_name_with_markup_is_escaped_in_the_html():
    from trainers.display import html_block

    assert "<script>" not in html_block("<script>x</script>", lines=["<b>flag</b>"])


def test_predict_from_python_refuses_rows_of_another_shape_in_one_message(tmp_path):
    """As `toolkit predict` does: a ToolkitError naming both shapes, not torch's RuntimeError from a matmul."""
    import numpy as np

    from trainers import ToolkitError, predict

    trained = train(load_data("iris"), "mlp", TrainConfig(epochs=1))
    assert predict(trained.model, np.zeros((3, 4), np.float32)).shape == (3, 3)
    for rows, shape in ((np.zeros((3, 9), np.float32), r"\(9,\)"), (np.zeros(4, np.float32), r"\(\)"),
                        (np.float32(1.0), r"\(\)")):
        with pytest.raises(ToolkitError, match=f"per-sample shape {shape}, the model expects \\(4,\\)"):
            predict(trained.model, rows)
    with pytest.raises(ToolkitError, match="cannot be read as numbers"):
        predict(trained.model, [[1, 2, 3, 4], [1, 2]])


def test_predict_and_train_refuse_bad_arguments_in_one_line_and_train_takes_a_dict_config():
    """A batch size of 0, -1 or 2.5 is one ToolkitError, not range()'s ValueError; `train` takes its options as a
    dict (as `run_pipeline` does) and refuses anything else by name."""
    import numpy as np

    from trainers import ToolkitError, predict

    data = load_data("iris")
    trained = train(data, "mlp", {"epochs": 1, "seed": 3})
    assert trained.epochs_run == 1 and trained.model.spec.training["seed"] == 3
    assert predict(trained.model, data.x_test, batch_size=np.int64(7)).shape == (len(data.x_test), 3)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ToolkitError, match="batch_size must be a whole number of rows, at least 1"):
            predict(trained.model, data.x_test, batch_size=size)
    with pytest.raises(ToolkitError, match="config.epochs"):
        train(data, "mlp", {"epochs": 0})
    with pytest.raises(ToolkitError, match="config must be a TrainConfig or a dict of its options, got str"):
        train(data, "mlp", "epochs=2")


def test_quantizing_leaves_the_root_logger_without_a_handler(tmp_path):
    """ONNX Runtime's quantizers call `logging.info` on the root logger, which would install a stderr handler
    there (logging.basicConfig) and make a notebook's own basicConfig a no-op."""
    import logging

    root = logging.getLogger()
    saved = root.handlers[:]
    for handler in saved:  # a notebook's fresh root logger (pytest adds its capture handlers)
        root.removeHandler(handler)
    try:
        data = load_data("iris")
        trained = train(data, "mlp", TrainConfig(epochs=2))
        compress_model(trained.model, data, methods=["int8-dynamic", "int8-static"])
        assert root.handlers == []
    finally:
        for handler in saved:
            root.addHandler(handler)


def test_train_leaves_the_global_random_streams_where_they_were():
    """`train` seeds Python's, NumPy's and PyTorch's generators for reproducible weights; a notebook's own draws
    afterwards continue its stream instead of restarting from the training seed."""
    import random

    import numpy as np
    import torch

    data = load_data("iris")
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    first = train(data, "mlp", TrainConfig(epochs=1))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    again = train(data, "mlp", TrainConfig(epochs=1))  # and the weights stay reproducible
    assert all(torch.equal(a, b) for a, b in zip(first.model.module.state_dict().values(),
                                                 again.model.module.state_dict().values()))


def test_a_pipeline_result_shows_itself_in_one_line_and_as_a_table(tmp_path):
    from reports import run_pipeline

    result = run_pipeline("iris", "mlp", {"train": {"epochs": 2}, "compress": {"methods": ["int8-dynamic"]},
                                          "explain": {"methods": ["saliency"], "samples": 4}},
                          out=tmp_path / "run", progress=lambda _: None)
    text = repr(result)
    assert "\n" not in text and len(text) < MAX_REPR and "'train': 'done'" in text and "state='done'" in text
    html = result._repr_html_()
    assert "<table" in html and "explain" in html and result.report.as_uri() in html


def test_progress_true_renders_every_stage_on_stderr_as_in_train(capsys):
    """`progress=True` means the same in all three stages: a `ConsoleProgress` on stderr (plain lines when it is no
    terminal), not a callable to call."""
    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=1), progress=True)
    compress_model(trained.model, data, methods=["onnx-fp32"], progress=True)
    explain_model(trained.model, data, methods=["saliency"], samples=4, progress=True)
    err = capsys.readouterr().err
    assert "train [1/1]" in err and "compress [1/1] onnx-fp32" in err and "explain [1/1] saliency" in err


def test_compress_leaves_the_global_random_streams_where_they_were():
    """As `train` and `explain_model` do: structured pruning fine-tunes with seeded generators, and a notebook's
    own draws afterwards continue its stream."""
    import random

    import numpy as np
    import torch

    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=1))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    compress_model(trained.model, data, methods=["prune-structured"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_loading_a_saved_model_leaves_the_torch_random_stream_where_it_was(tmp_path):
    """Rebuilding a saved architecture initialises its layers before the stored weights replace them; that must not
    move a notebook's `torch.manual_seed` stream (load_model, predict and explain_model on a directory)."""
    import torch

    from trainers import load_model, predict

    data = load_data("iris")
    train(data, "mlp", TrainConfig(epochs=1), out=tmp_path / "m")
    torch.manual_seed(7)
    expected = torch.rand(3)
    for call in (lambda: load_model(tmp_path / "m"), lambda: predict(tmp_path / "m", data.x_test),
                 lambda: explain_model(tmp_path / "m", data, methods=["saliency"], samples=4)):
        torch.manual_seed(7)
        call()
        assert torch.equal(torch.rand(3), expected)


def test_an_in_memory_variant_and_an_attribution_show_themselves_in_one_short_line():
    """`result.chosen` or `result.variants` at the end of a cell: the ONNX file a variant holds in memory (megabytes
    for a real model) and an attribution's arrays stay out of the repr."""
    from explain import attribute

    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=1))
    result = compress_model(trained.model, data, methods=["onnx-fp32"])
    assert result.chosen.onnx_bytes and result.chosen.name in repr(result.chosen)
    assert len(repr(result.chosen)) <= MAX_REPR and "\n" not in repr(result.chosen)
    assert len(repr(result.variants)) <= (MAX_REPR + 2) * len(result.variants)
    values = attribute(trained.model, data.x_test, method="saliency")
    assert len(repr(values)) <= MAX_REPR and "saliency" in repr(values)


def test_every_name_a_results_repr_shows_is_an_attribute_holding_that_value(tmp_path):
    """A constructor-style repr reads as attributes: after `TrainResult(..., test_accuracy=0.9, ...)` a notebook
    types `r.test_accuracy`, so each name shown must be one, with the value shown (a path as its text)."""
    import re

    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=1), out=tmp_path / "t")
    compressed = compress_model(trained.model, data, methods=["onnx-fp32"])
    explained = explain_model(trained.model, data, methods=["saliency"], samples=4)
    from reports.pipeline import PipelineResult

    piped = PipelineResult(tmp_path / "p", tmp_path / "p" / "report.html",
                           {"status": "failed", "stages": [{"name": "train", "status": "done"},
                                                           {"name": "compress", "status": "failed"}]})
    for result in (trained, compressed, explained, data, piped):
        names = re.findall(r"(?:\(|, )(\w+)=", repr(result))
        assert len(names) >= 4, repr(result)
        for name in names:
            value = getattr(result, name)
            shown = str(value) if isinstance(value, Path) or name == "out" else value
            assert f"{name}={shown!r}" in repr(result), (name, repr(result))


def test_one_name_or_variant_where_a_list_is_expected_is_a_list_of_one(tmp_path):
    """`methods="onnx-fp32"`, `methods="saliency"` and `compare="runs/x/variants/onnx-fp32"` (or one Variant) are
    read as one item each, not one per character ('method n is named twice', 'model directory not found: r')."""
    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=1))
    compressed = compress_model(trained.model, data, methods="onnx-fp32", out=tmp_path / "c")
    assert compressed.methods == ["onnx-fp32"] and compressed.chosen_name == "onnx-fp32"
    for compare in (str(tmp_path / "c" / "variants" / "onnx-fp32"), compressed.chosen):
        explained = explain_model(trained.model, data, methods="saliency", compare=compare, samples=4)
        assert explained.methods == ["saliency"] and explained.n_compared == 1


@pytest.fixture
def float64_default():
    """A scientific notebook's `torch.set_default_dtype(torch.float64)`, put back afterwards."""
    import torch

    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_stages_run_under_a_notebooks_no_grad_inference_mode_and_float64_default(float64_default):
    """Gradients switched off by an inference cell, an enclosing `torch.inference_mode()` and a float64 default
    dtype are the notebook's: training, pruning and gradient attributions run as without them, and leave them
    as they were."""
    import torch

    from explain import attribute

    data = load_data("iris")
    with torch.no_grad():
        trained = train(data, "mlp", TrainConfig(epochs=1))
        assert not torch.is_grad_enabled() and torch.get_default_dtype() == torch.float64
        assert compress_model(trained.model, data, methods=["prune-structured"]).chosen_name != "original"
        explained = explain_model(trained.model, data, methods=["integrated_gradients"], samples=4)
        assert explained.methods == ["integrated_gradients"]
    with torch.inference_mode():
        values = attribute(trained.model, data.x_test[:3], method="integrated_gradients")
        assert values.method == "integrated_gradients" and torch.is_inference_mode_enabled()
    assert trained.model.module.head.weight.dtype == torch.float32


def test_compared_in_memory_variants_are_named_as_their_variants():
    """A variant from a `compress_model` result, or its model, is named in the drift table and the metrics as
    compress named it, not `variant0`: nothing on disk names it."""
    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=1))
    compressed = compress_model(trained.model, data, methods=["int8-dynamic", "onnx-fp32"])
    first, second = compressed.variants
    explained = explain_model(trained.model, data, methods=["saliency"], samples=4, compare=[first, second.model])
    assert list(explained.to_frame("drift")["variant"]) == [first.name, second.name]
    assert set(explained.summary["runtimes"]) == {"original", first.name, second.name}


def test_ctrl_c_in_train_stops_the_cell_and_hands_over_the_best_model(tmp_path):
    """Interrupting the kernel during `train` returned normally before: the cell went on to its next line (a
    compression of the half-trained model). Now it raises a KeyboardInterrupt that holds the model and says so."""
    from fake_runs import ctrl_c_in_second_epoch

    from trainers import TrainingInterrupted, load_model, predict

    data, reached = load_data("iris"), []
    with ctrl_c_in_second_epoch(), pytest.raises(KeyboardInterrupt) as stop:
        train(data, "mlp", TrainConfig(epochs=5), out=tmp_path / "r")
        reached.append("the next line")
    assert not reached and isinstance(stop.value, TrainingInterrupted)
    assert ".result" in str(stop.value) and str(tmp_path / "r") in str(stop.value)
    result = stop.value.result
    assert result.interrupted and result.epochs_run == 1
    assert (predict(result.model, data.x_test) == predict(load_model(tmp_path / "r"), data.x_test)).all()


def test_warnings_are_python_warnings_from_python_and_lines_from_the_command_line(tmp_path, capsys):
    """Before, every warning was printed on stderr: a notebook could neither silence nor catch one."""
    import warnings

    import numpy as np

    from cli.main import main
    from trainers.errors import ToolkitWarning

    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{b:.3f},{int(a > 0)}" for a, b in rng.normal(size=(120, 2))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")  # no header: its first row is read as one
    assert main(["train", str(tmp_path / "t.csv"), "--model", "mlp", "--epochs", "2", "--out", str(tmp_path / "r")]) == 0
    assert "warning: " in capsys.readouterr().err  # the command line: one line, as it happens
    with pytest.warns(ToolkitWarning, match="its first row was read as one"):
        load_data(str(tmp_path / "t.csv"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ToolkitWarning)
        load_data(str(tmp_path / "t.csv"))
    assert "first row" not in capsys.readouterr().err
