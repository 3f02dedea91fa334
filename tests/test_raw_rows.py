"""ONNX variants of a model trained on a numeric table also come as `model.raw.onnx`, which takes raw rows.

One small numeric table (an ID column that is dropped, missing cells that get an indicator) is trained once
and compressed to the ONNX variants; each raw-row graph must agree with `trainers.predict` on the same raw
rows, and `toolkit predict` must run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from compress import compress_model
from compress.export import ort_session, run_onnx
from trainers import TrainConfig, load_model, predict, train
from trainers.inference import predict_file

ONNX_METHODS = ["onnx-fp32", "int8-dynamic", "int8-static"]


def _frame(n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"id": rng.permutation(n) + 500, "a": rng.normal(size=n).round(4),
                          "b": rng.normal(size=n).round(4), "c": rng.normal(size=n).round(4)})
    frame.loc[rng.choice(n, 40, replace=False), "a"] = np.nan
    frame["label"] = (frame.a.fillna(0) + frame.b > 0).astype(int) + (frame.c > 1)
    return frame


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    frame = _frame()
    frame.to_csv(root / "d.csv", index=False, na_rep="NA")
    trained = train(str(root / "d.csv"), "mlp", TrainConfig(epochs=3, model={"hidden": [16]}), target="label",
                    out=root / "model", progress=False)
    result = compress_model(root / "model", str(root / "d.csv"), methods=ONNX_METHODS, out=root / "c")
    rows = frame.drop(columns=["label"])
    rows.to_csv(root / "rows.csv", index=False, na_rep="NA")
    return root, trained.model, result, rows


def test_every_onnx_variant_has_a_raw_row_twin_that_agrees_with_predict(run):
    root, model, result, rows = run
    expected = predict(model, rows)  # PyTorch, preprocessing in Python
    onnx_variants = [v for v in result.variants if v.model.spec.onnx]
    assert sorted({v.recipe["method"] for v in onnx_variants}) == sorted(ONNX_METHODS)  # and int8's lean twin, if any
    raw = rows.to_numpy(np.float32)  # the table's columns in order, missing cells NaN, the ID column included
    assert np.isnan(raw).any()
    for v in onnx_variants:
        path = v.model.path / "model.raw.onnx"
        assert v.model.spec.onnx["raw_file"] == "model.raw.onnx" and path.is_file()
        got = run_onnx(ort_session(path.read_bytes()), raw)
        encoded = run_onnx(ort_session((v.model.path / "model.onnx").read_bytes()), predict_inputs(model, rows))
        # The same graph behind the preprocessing: the raw-row file gives the encoded file's logits.
        assert np.abs(got - encoded).max() <= 1e-5, v.name
        if v.name == "onnx-fp32":
            assert (got.argmax(1) == expected.argmax(1)).mean() == 1.0
            assert np.abs(got - expected).max() <= 1e-4


def predict_inputs(model, rows):
    from trainers.artifact import raw_rows_to_inputs

    return raw_rows_to_inputs(model, rows)


def test_predict_on_an_onnx_variant_runs_the_raw_row_graph(run):
    root, model, result, rows = run
    variant = load_model(root / "c" / "variants" / "onnx-fp32")
    logits = predict(variant, rows)
    assert variant._raw_session is not None and variant._session is None  # the encoded graph was not needed
    assert np.abs(logits - predict(model, rows)).max() <= 1e-4
    loaded, table = predict_file(root / "c", root / "rows.csv", variant="onnx-fp32")
    assert loaded._raw_session is not None
    assert (table["predicted_index"].to_numpy() == predict(model, rows).argmax(1)).all()


def test_toolkit_predict_reads_raw_csv_rows_for_an_onnx_variant(run):
    root, model, result, rows = run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "cli.main", "predict", str(root / "c"), str(root / "rows.csv"),
                          "--variant", "int8-dynamic-onnx", "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    predictions = json.loads(out.stdout)["predictions"]
    encoded = run_onnx(ort_session((root / "c" / "variants" / "int8-dynamic-onnx" / "model.onnx").read_bytes()),
                       predict_inputs(model, rows))
    assert [p["predicted_index"] for p in predictions] == encoded.argmax(1).tolist()


def test_text_in_a_numeric_column_gets_the_preprocessing_message_not_an_onnx_error(run):
    root, model, result, rows = run
    variant = load_model(root / "c" / "variants" / "onnx-fp32")
    bad = rows.astype({"b": object})
    bad.loc[0, "b"] = "seven"
    from trainers import ToolkitError

    with pytest.raises(ToolkitError, match="column 'b' was numeric at training but holds text"):
        predict(variant, bad)


def test_a_table_with_text_columns_gets_no_raw_row_graph(tmp_path):
    frame = _frame(120)
    frame["colour"] = np.array(["red", "green", "blue"])[np.arange(120) % 3]
    trained = train(frame, "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), target="label", progress=False)
    result = compress_model(trained.model, trained_data(frame), methods=["onnx-fp32"], out=tmp_path / "c")
    v = result.variants[-1]
    assert v.model.spec.onnx and "raw_file" not in v.model.spec.onnx
    assert not (v.model.path / "model.raw.onnx").exists()


def trained_data(frame):
    from trainers import load_data

    return load_data(frame, target="label")


def test_a_routed_model_takes_raw_rows_through_the_preprocessing_for_both_members(run, tmp_path):
    """A routed artifact (compress's by-batch choice) of a table model: raw rows are encoded in Python once,
    then one row goes to the small-batch member and a batch to the model itself."""
    import dataclasses

    from trainers.artifact import SMALL_BATCH_DIR, ModelSpec, save_model

    root, model, result, rows = run
    large = load_model(root / "c" / "variants" / "onnx-fp32")
    small = load_model(root / "c" / "variants" / "int8-dynamic-onnx")
    spec = ModelSpec.from_dict({**large.spec.to_dict(),
                                "serve": {"below_batch": 4, "dir": SMALL_BATCH_DIR, "sha256": ""}})
    routed = dataclasses.replace(large, spec=spec, small=small, path=None, _session=None, _raw_session=None,
                                 onnx_bytes=large.onnx_model_bytes())
    loaded = load_model(save_model(routed, tmp_path / "routed", onnx_bytes=large.onnx_model_bytes()))
    encoded = predict_inputs(model, rows)
    one = predict(loaded, rows.iloc[:1])
    np.testing.assert_allclose(one, run_onnx(ort_session(small.onnx_model_bytes()), encoded[:1]), atol=1e-6)
    many = predict(loaded, rows)
    np.testing.assert_allclose(many, run_onnx(ort_session(large.onnx_model_bytes()), encoded), atol=1e-5)
    assert loaded._raw_session is None  # the raw-row graph answers for one member only: not used


def test_save_model_of_a_loaded_onnx_variant_keeps_its_raw_row_graph(run, tmp_path):
    """`save_model` copies the raw-row graph its spec names (it once wrote model.json naming a file it did not
    write, and the copy would not load)."""
    from trainers.artifact import save_model

    root, model, result, rows = run
    variant = load_model(root / "c" / "variants" / "int8-static-onnx")
    copy = load_model(save_model(variant, tmp_path / "copy", onnx_bytes=variant.onnx_model_bytes()))
    assert (tmp_path / "copy" / "model.raw.onnx").is_file()
    np.testing.assert_allclose(predict(copy, rows), predict(variant, rows), atol=1e-6)


def test_the_raw_row_graph_names_the_raw_columns_in_its_metadata(run):
    """model.raw.onnx takes the table's columns (the dropped ID too): its metadata said the encoded graph's input
    (a column per missing indicator), so a deployment reading it fed the wrong columns."""
    import onnx

    root, model, result, rows = run
    folder = root / "c" / "variants" / "onnx-fp32"
    raw = {p.key: p.value for p in onnx.load(folder / "model.raw.onnx").metadata_props}
    assert json.loads(raw["feature_names"]) == list(rows.columns) and json.loads(raw["input_shape"]) == [4]
    assert raw["input"] == "raw rows"
    encoded = {p.key: p.value for p in onnx.load(folder / "model.onnx").metadata_props}
    assert json.loads(encoded["feature_names"]) == model.spec.feature_names != list(rows.columns)


@pytest.mark.parametrize("name", ["model.raw.onnx", "model.onnx"])
def test_toolkit_predict_serves_a_variants_own_onnx_file_as_its_artifact(name, run, tmp_path, capsys):
    """`toolkit predict variants/NAME/model.onnx rows.csv` (or its model.raw.onnx) reads raw rows as the
    variant's directory does, as `--compare` does; read as a stranger's graph, the raw CSV was refused."""
    from io import StringIO

    from cli.main import main

    root, model, result, rows = run
    capsys.readouterr()
    assert main(["predict", str(root / "c" / "variants" / "onnx-fp32" / name), str(root / "rows.csv")]) == 0
    out = capsys.readouterr()
    got = pd.read_csv(StringIO(out.out))["predicted_index"].to_numpy()
    assert (got == predict(model, rows).argmax(1)).all() and "variants/onnx-fp32 (onnxruntime)" in out.err


def test_a_raw_row_graph_copied_alone_reads_the_raw_columns_by_name(run, tmp_path, capsys):
    """Without its model.json, model.raw.onnx is a user's graph; its metadata's raw column names pick the CSV's
    columns (the target ignored), where before its input shape said the encoded graph's."""
    import shutil
    from io import StringIO

    from cli.main import main

    root, model, result, rows = run
    shutil.copy(root / "c" / "variants" / "onnx-fp32" / "model.raw.onnx", tmp_path / "alone.onnx")
    full = rows.dropna().head(20)
    full.assign(label="x").to_csv(tmp_path / "full.csv", index=False)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "alone.onnx"), str(tmp_path / "full.csv")]) == 0
    got = pd.read_csv(StringIO(capsys.readouterr().out))["predicted_index"].to_numpy()
    assert (got == predict(model, full).argmax(1)).all()


def test_a_raw_row_graph_alone_takes_missing_cells_and_no_dropped_column_as_its_directory_does(run, tmp_path, capsys):
    """The graph imputes NaN cells itself and reads no node of the id column training dropped: served alone, it
    takes the rows its directory takes (missing cells, no `id`), where predict demanded both."""
    import shutil
    from io import StringIO

    from cli.main import main

    root, model, result, rows = run
    shutil.copy(root / "c" / "variants" / "onnx-fp32" / "model.raw.onnx", tmp_path / "alone.onnx")
    assert rows["a"].isna().any()
    rows.drop(columns=["id"]).to_csv(tmp_path / "gaps.csv", index=False, na_rep="NA")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "alone.onnx"), str(tmp_path / "gaps.csv")]) == 0
    got = pd.read_csv(StringIO(capsys.readouterr().out))["predicted_index"].to_numpy()
    assert (got == predict(model, rows).argmax(1)).all()
    rows.drop(columns=["id", "b"]).to_csv(tmp_path / "no_b.csv", index=False)
    assert main(["predict", str(tmp_path / "alone.onnx"), str(tmp_path / "no_b.csv")]) == 2
    assert "missing feature column(s) b" in capsys.readouterr().err
