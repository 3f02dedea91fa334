"""Tables as people have them: each variant trains, predicts raw rows, and drops/encodes the expected columns.

One table of CSV variants (BOM, `;`, quoted fields, CRLF, missing tokens, ID and pandas index columns,
text labels anywhere, categorical text), Parquet, a DataFrame and arrays from Python. Every case goes
through `load_data` -> `train` -> `load_model` -> `predict` on the raw rows of the file, and the
predictions on raw rows must equal those on the encoded test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from trainers import TrainConfig, load_data, load_model, predict, train
from trainers.tables import TableOptions

N = 60


def base_frame(seed: int = 0) -> pd.DataFrame:
    """Two informative float columns, a 3-level text column, a text label."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=N).round(3), rng.normal(size=N).round(3)
    colour = np.array(["red", "green", "blue"])[np.arange(N) % 3]
    label = np.where(a + (colour == "red") > 0.3, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "colour": colour, "label": label})


@dataclass
class Variant:
    write: callable                 # (frame, path) -> data spec for load_data
    features: list[str]             # encoded feature names expected
    dropped: dict = field(default_factory=dict)
    target: str | None = None
    keep: tuple = ()


ENCODED = ["a", "b", "colour=blue", "colour=green", "colour=red"]


def _csv(text_change=lambda s: s, name="d.csv", **to_csv):
    def write(frame, path):
        text = text_change(frame.to_csv(index=False, **to_csv))
        (path / name).write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return str(path / name)
    return write


def _with(change, writer):
    return lambda frame, path: writer(change(frame.copy()), path)


def _missing(frame):
    frame["a"] = frame["a"].astype(object)
    frame.loc[[1, 5, 9, 13, 17, 21, 25, 29], "a"] = "NA"
    frame.loc[[2, 6, 10, 14], "a"] = "?"
    frame.loc[[3, 7, 11], "a"] = ""
    return frame


def _label_first(frame):
    return frame[["label", "a", "b", "colour"]]


def _ids(frame):
    frame.insert(0, "id", np.random.default_rng(1).permutation(N) + 1000)
    frame["code"] = [f"row-{i}" for i in range(N)]
    frame["const"] = 7
    return frame


VARIANTS = {
    "plain": Variant(_csv(), ENCODED),
    "utf-8 BOM": Variant(_csv(lambda s: "\ufeff" + s), ENCODED),
    "semicolons": Variant(_csv(sep=";"), ENCODED),
    "tabs": Variant(_csv(sep="\t"), ENCODED),
    "quoted fields with commas": Variant(
        _with(lambda f: f.assign(colour=f.colour.map({"red": "red, dark", "green": "green", "blue": "blue"})), _csv()),
        ["a", "b", "colour=blue", "colour=green", "colour=red, dark"]),
    "CRLF line ends": Variant(_csv(lineterminator="\r\n"), ENCODED),
    "NA, ? and empty cells": Variant(_with(_missing, _csv()), ["a", "a_missing", *ENCODED[1:]]),
    "ID, text ID and constant columns": Variant(
        _with(_ids, _csv()), ENCODED,
        {"id": "ID-like (unique per row)", "code": "ID-like (unique per row)", "const": "constant"}, target="label"),
    "ID column kept with --keep": Variant(_with(_ids, _csv()), ["id", *ENCODED, "code"],
                                          {"const": "constant"}, target="label", keep=("id", "code")),
    "pandas index column": Variant(lambda f, p: (f.to_csv(p / "d.csv"), str(p / "d.csv"))[1], ENCODED,
                                   {"Unnamed: 0": "unnamed pandas index column"}),
    "label first, named with --target": Variant(_with(_label_first, _csv()), ENCODED, target="label"),
    "label column equal to another": Variant(_with(lambda f: f.assign(answer=f.label), _csv()), ENCODED,
                                             {"answer": "equal to the label"}, target="label"),
    "parquet": Variant(lambda f, p: (f.to_parquet(p / "d.parquet"), str(p / "d.parquet"))[1], ENCODED),
    "DataFrame from Python": Variant(lambda f, p: f, ENCODED, target="label"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_table_variant_trains_and_predicts_raw_rows(name, tmp_path):
    case = VARIANTS[name]
    frame = base_frame()
    spec = case.write(frame, tmp_path)
    data = load_data(spec, table=TableOptions(case.target, case.keep))
    assert data.feature_names == case.features
    assert data.table["dropped"] == case.dropped
    assert data.class_names == ["no", "yes"]
    train(data, "mlp", TrainConfig(epochs=2, model={"hidden": [16]}), out=tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    assert model.spec.preprocessing["table"]["outputs"] == case.features
    raw = frame if isinstance(spec, pd.DataFrame) else _read_back(spec)
    raw = raw.drop(columns=[model.spec.preprocessing["table"]["read"]["target"]])
    on_raw = predict(model, raw)
    assert on_raw.shape == (N, 2)
    encoded = load_data(spec, table=TableOptions(case.target, case.keep))
    x_all = np.concatenate([encoded.x_train, encoded.x_val, encoded.x_test])
    assert np.isfinite(on_raw).all()
    # The raw rows, preprocessed by predict, give the logits of the encoded rows (as sets of rows).
    assert np.allclose(np.sort(on_raw[:, 0]), np.sort(predict(model, x_all)[:, 0]), atol=1e-5)


def _read_back(spec: str) -> pd.DataFrame:
    if spec.endswith(".parquet"):
        return pd.read_parquet(spec)
    from trainers.tables import read_table
    from pathlib import Path

    return read_table(Path(spec))


def test_arrays_from_python():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)).astype(np.float32), np.arange(50) % 2
    data = load_data((x, y))
    assert data.input_shape == (4,) and data.table is None
    assert load_data((x, y)).fingerprint == data.fingerprint
    from trainers import DataBundle

    bundle = DataBundle.from_arrays(x, y, class_names=["off", "on"], feature_names=list("abcd"))
    assert bundle.class_names == ["off", "on"] and bundle.feature_names == list("abcd")
    result = train(bundle, "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), progress=False)
    assert predict(result.model, x).shape == (50, 2)


def test_unseen_level_and_missing_cell_at_inference(tmp_path):
    frame = base_frame()
    result = train(frame, "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), target="label", progress=False)
    rows = frame.drop(columns=["label"]).head(3).copy()
    rows["a"] = rows["a"].astype(object)
    rows.loc[0, "colour"], rows.loc[1, "a"] = "purple", None
    out = predict(result.model, rows)
    assert out.shape == (3, 2) and np.isfinite(out).all()
    from trainers.preprocess import transform

    encoded = transform(result.model.spec.preprocessing["table"], rows)
    assert encoded[0, 2:].tolist() == [0.0, 0.0, 0.0]  # unseen level: no one-hot column set
    assert encoded[1, 0] == result.model.spec.preprocessing["table"]["steps"][0]["fill"]


def test_one_row_alone_is_one_row_and_a_column_too_many_is_named():
    """A Series (`frame.iloc[0]`) or a dict is one row, as a one-row DataFrame; an array with the target still
    in it says its column count, where it said its text cells "cannot be read as numbers"."""
    from trainers import ToolkitError

    frame = base_frame()
    model = train(frame, "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), target="label", progress=False).model
    rows = frame.drop(columns=["label"])
    expected = predict(model, rows.head(1))
    for one in (frame.iloc[0], rows.iloc[0], rows.iloc[0].to_dict()):
        np.testing.assert_allclose(predict(model, one), expected, atol=1e-6)
    for with_target in (frame.to_numpy(), frame.to_numpy().tolist()):
        with pytest.raises(ToolkitError, match=r"rows of 4 columns: the model takes raw rows of 3 columns \(a, b, "
                                               r"colour\) or encoded rows of 5"):
            predict(model, with_target)


def test_many_levels_are_ordinal_and_the_target_is_recorded(tmp_path):
    frame = base_frame()
    frame["city"] = [f"c{i % 15}" for i in range(N)]
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = load_data(str(tmp_path / "d.csv"), target="label")
    step = [s for s in data.table["steps"] if s["column"] == "city"][0]
    assert step["kind"] == "ordinal" and len(step["levels"]) == 15
    assert data.table["read"]["target"] == "label"


def test_onnx_with_the_preprocessing_inside_agrees_with_predict_on_raw_rows():
    from compress import export_onnx_raw_rows
    from compress.export import run_onnx

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": rng.permutation(200), "a": rng.normal(size=200), "b": rng.normal(size=200),
                          "c": rng.normal(size=200)})
    frame.loc[rng.choice(200, 30, replace=False), "a"] = np.nan
    frame["label"] = (frame.a.fillna(0) + frame.b > 0).astype(int) + (frame.c > 1)
    result = train(frame, "mlp", TrainConfig(epochs=3), target="label", progress=False)
    assert result.model.spec.preprocessing["table"]["outputs"] == ["a", "a_missing", "b", "c"]
    rows = frame.drop(columns=["label"])
    got = run_onnx(export_onnx_raw_rows(result.model), rows.to_numpy(np.float32))
    expected = predict(result.model, rows)
    assert (got.argmax(1) == expected.argmax(1)).mean() == 1.0
    assert np.abs(got - expected).max() <= 1e-4


def test_onnx_of_raw_rows_refuses_text_columns():
    from compress import export_onnx_raw_rows
    from trainers import ToolkitError

    result = train(base_frame(), "mlp", TrainConfig(epochs=1, model={"hidden": [8]}), target="label", progress=False)
    with pytest.raises(ToolkitError, match="colour are text"):
        export_onnx_raw_rows(result.model)


def test_explanations_group_a_text_column_back_to_the_users_column(tmp_path):
    from explain import explain_model
    from explain.plots import global_importance
    from reports import render_report
    from trainers.schema import read_result

    frame = base_frame()
    frame["a"] = frame["a"].astype(object)
    frame.loc[[4, 8, 12, 16, 20], "a"] = None
    train(frame, "mlp", TrainConfig(epochs=2, model={"hidden": [16]}), target="label", out=tmp_path / "train",
          progress=False)
    model = load_model(tmp_path / "train")
    explain_model(model, frame, methods=["saliency", "lime"], samples=8, out=tmp_path / "explain")
    result = read_result(tmp_path / "explain" / "result.json", "explain")
    assert result.schema_version >= 2  # grouped importance came with version 2
    assert list(result.global_importance["saliency"]) == ["a", "b", "colour"]
    encoded = result.global_importance_encoded["saliency"]
    assert list(encoded) == model.spec.feature_names == ["a", "a_missing", "b", "colour=blue", "colour=green",
                                                         "colour=red"]
    assert all(isinstance(v, float) for v in encoded.values())
    # lime weighs a column as a whole and spreads it evenly over its inputs: no per-level figure, one for b
    lime = result.global_importance_encoded["lime"]
    assert list(lime) == list(encoded) and lime["b"] is not None
    assert all(v is None for name, v in lime.items() if name != "b")
    assert set(result.global_importance["lime"]) == {"a", "b", "colour"}
    # The grouped value is the size of the per-sample sum of the column's encoded attributions.
    values = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    grouped = global_importance(model.spec, values)
    assert list(grouped) == ["a", "b", "colour"]
    assert np.isclose(grouped["colour"], np.abs(values[:, 3:6].sum(1)).mean())
    assert np.isclose(grouped["a"], np.abs(values[:, 0:2].sum(1)).mean())
    assert np.isclose(grouped["b"], np.abs(values[:, 2]).mean())
    html = render_report(tmp_path / "explain").read_text(encoding="utf-8")
    assert "colour=red" in html and "encoded inputs" in html
    assert "5 inputs of multi-input columns left out: lime weighs a column as a whole" in html
    html = render_report(tmp_path / "train").read_text(encoding="utf-8")
    assert "<h3>Columns</h3>" in html and "one-hot" in html and "median/mode + indicator" in html


def test_memory_mapped_npy_trains_batch_by_batch(tmp_path):
    from trainers.images import RowView
    from trainers.loop import split_tensors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.save(tmp_path / "big.npy", x)
    np.save(tmp_path / "big.labels.npy", y)
    data = load_data(str(tmp_path / "big.npy"))
    assert isinstance(data.x_train, RowView) and isinstance(data.x_test, RowView)  # views of the file's rows
    assert isinstance(data.x_train.base, np.memmap) and data.split["stratified"] and len(data.x_test) == 80
    tensors = split_tensors(data, __import__("torch").device("cpu"))
    assert isinstance(tensors["x_train"], RowView)
    result = train(data, "mlp", TrainConfig(epochs=20, model={"hidden": [16]}), progress=False)
    assert result.metrics["test_accuracy"] > 0.7  # learnt from batches read off the file (chance: 0.5)
    np.save(tmp_path / "sorted.npy", x[np.argsort(y)])
    np.save(tmp_path / "sorted.labels.npy", np.sort(y))
    ordered = load_data(str(tmp_path / "sorted.npy"))  # rows ordered by class: the split is stratified all the same
    assert set(ordered.y_test.tolist()) == set(ordered.y_train.tolist()) == {0, 1}
