"""Tables and arrays as spreadsheets and notebooks hand them over: numbers written as text (decimal commas,
thousands separators, percentages, a stray "n/a"), a trailing separator, labels that are values, integer column
names, tensors, and image folders with an empty class or an oversized image.

Each case asserts what the model sees (the fitted steps, the classes) and that predicting raw rows in the same
writing gives the predictions of the encoded test split.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fake_runs import toolkit_warnings

from trainers import TrainConfig, load_data, load_model, predict, train
from trainers.errors import DataError
from trainers.preprocess import number_format
from trainers.tables import TableOptions

N = 120


def _frame(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    return pd.DataFrame({"a": rng.normal(size=N) + 2.5 * y, "b": rng.normal(size=N)}), y


def _steps(bundle) -> dict:
    return {s["column"]: s for s in bundle.table["steps"]}


@pytest.mark.parametrize("case", ["decimal-comma", "thousands", "percent", "dotted-thousands"])
def test_numbers_written_as_text_are_read_as_numbers(case, tmp_path):
    frame, y = _frame()
    a = frame["a"].to_numpy()
    sep = ","
    if case == "decimal-comma":
        sep = ";"
        text = [f"{v:.3f}".replace(".", ",") for v in a]
        expected = np.round(a, 3)
    elif case == "thousands":
        ints = (np.abs(a) * 400_000).astype(int) + 1000
        text, expected = [f"{v:,}" for v in ints], ints.astype(float)
    elif case == "dotted-thousands":
        sep = ";"
        ints = (np.abs(a) * 4_000_000).astype(int) + 1_000_000
        text, expected = [f"{v:,}".replace(",", ".") for v in ints], ints.astype(float)
    else:
        text, expected = [f"{v * 10:.1f}%" for v in a], np.round(a * 10, 1) / 100
    path = tmp_path / f"{case}.csv"
    pd.DataFrame({"a": text, "b": frame["b"].round(3), "label": y}).to_csv(path, sep=sep, index=False)
    bundle = load_data(str(path))
    step = _steps(bundle)["a"]
    assert step["kind"] == "numeric" and step["format"]["missing"] == []
    assert bundle.table["outputs"] == ["a", "b"]  # not one-hot, not ordinal codes, not dropped as ID-like
    # The encoded column holds the numbers (in split order: compared sorted).
    encoded = np.concatenate([bundle.x_train, bundle.x_val, bundle.x_test])[:, 0]
    assert sorted(np.round(encoded, 4)) == pytest.approx(sorted(np.round(expected.astype(np.float32), 4)), rel=1e-5)
    train(bundle, "mlp", TrainConfig(epochs=3, device="cpu"), out=tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")  # the format is read back from model.json
    raw = pd.read_csv(path, sep=sep, dtype=str).drop(columns="label")
    direct = predict(model, raw)  # the rows as written in the file, text and all
    parsed = predict(model, pd.DataFrame({"a": expected, "b": raw["b"].astype(float)}))
    np.testing.assert_allclose(direct, parsed, rtol=1e-4, atol=1e-5)


def test_a_stray_text_cell_in_a_numeric_column_is_missing_and_named(tmp_path, capsys):
    frame, y = _frame()
    text = [f"{v:.3f}" for v in frame["a"]]
    text[7] = text[40] = "n/a-text"
    pd.DataFrame({"a": text, "b": frame["b"], "label": y}).to_csv(tmp_path / "t.csv", index=False)
    with toolkit_warnings() as said:
        bundle = load_data(str(tmp_path / "t.csv"))
    step = _steps(bundle)["a"]
    assert step["kind"] == "numeric" and step["format"]["missing"] == ["n/a-text"] and step["indicator"]
    assert "a_missing" in bundle.table["outputs"]
    assert any("'n/a-text', read as missing cells" in line for line in said)
    model = train(bundle, "mlp", TrainConfig(epochs=2, device="cpu"), progress=False).model
    with pytest.raises(DataError, match="was numeric at training but holds text here \\('oops'\\)"):
        predict(model, pd.DataFrame({"a": ["1.5", "oops"], "b": [0.1, 0.2]}))


def test_a_percent_column_with_a_stray_cell_is_numbers_not_ordinal_codes(tmp_path, capsys):
    """Before, one 'unknown' in a column of '12.5%' cells made it an ordinal text column (levels sorted as text,
    '11.1%' before '9.9%'), silently: 0.65 test accuracy where the numbers gave 0.85."""
    frame, y = _frame()
    text = [f"{v * 10:.1f}%" for v in frame["a"]]
    text[3] = "unknown"
    pd.DataFrame({"a": text, "b": frame["b"], "label": y}).to_csv(tmp_path / "p.csv", sep=";", index=False)
    with toolkit_warnings() as said:
        step = _steps(load_data(str(tmp_path / "p.csv")))["a"]
    assert step["kind"] == "numeric" and step["format"]["percent"] and step["format"]["missing"] == ["unknown"]
    assert any("'unknown', read as missing cells" in line for line in said)


def test_the_columns_training_drops_are_named_once(tmp_path, capsys):
    frame, y = _frame()
    frame.insert(0, "customer_id", [f"c{i:04d}" for i in range(N)])
    frame["const"] = 1.0
    frame["label"] = y
    frame.to_csv(tmp_path / "d.csv", index=False)
    bundle = load_data(str(tmp_path / "d.csv"), table=TableOptions(drop=("b",)))
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert "dropped column(s) customer_id (ID-like (unique per row)), const (constant)" in note
    assert "b (" not in note and set(bundle.table["dropped"]) == {"customer_id", "const", "b"}  # --drop: the user's


def test_text_that_is_mostly_not_numbers_stays_text():
    many = pd.Series(["1.5", "2.5", "x", "y", "z", "w"] * 10)  # four text values: a second kind of data
    assert number_format(many) is None
    few = pd.Series(["1.5", "n/a"] * 3)  # too few cells to call "n/a" stray
    assert number_format(few) is None
    assert number_format(pd.Series(["red", "green"] * 20)) is None
    assert number_format(pd.Series(["1,234", "5,678"] * 20), sep=";")["decimal"] == ","  # a European export
    assert number_format(pd.Series(["1,234", "5,678"] * 20), sep=",")["group"] == ","


def test_a_trailing_separator_does_not_make_an_empty_column_the_label(tmp_path):
    frame, y = _frame()
    lines = ["a,b,label,"] + [f"{a:.3f},{b:.3f},{c}," for a, b, c in zip(frame["a"], frame["b"], y)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    bundle = load_data(str(tmp_path / "t.csv"))
    assert bundle.table["read"]["target"] == "label" and bundle.class_names == ["0", "1"]
    assert bundle.table["dropped"] == {"Unnamed: 3": "constant"}


def test_decimal_labels_are_named_as_written(tmp_path):
    frame, y = _frame()
    pd.DataFrame({**frame, "label": np.where(y == 1, -2.3, 0.7)}).to_csv(tmp_path / "t.csv", index=False)
    assert load_data(str(tmp_path / "t.csv")).class_names == ["-2.3", "0.7"]


@pytest.mark.parametrize("sep,ok", [("\\t", True), ("tab", True), ("\t", True), (";;", False), ("", False)])
def test_separator_as_typed(sep, ok, tmp_path):
    frame, y = _frame()
    pd.DataFrame({**frame, "label": y}).to_csv(tmp_path / "t.tsv.csv", sep="\t", index=False)
    from trainers.tables import TableOptions

    if ok:
        assert load_data(str(tmp_path / "t.tsv.csv"), table=TableOptions(sep=sep)).input_shape == (2,)
        return
    proc = subprocess.run([sys.executable, "-m", "cli.main", "train", str(tmp_path / "t.tsv.csv"), "--model", "mlp",
                           "--sep", sep, "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --sep must be one character (or \\t for a tab), got {sep!r}"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_a_dataframe_with_integer_column_names_trains_and_predicts():
    frame, y = _frame()
    frame = pd.DataFrame(frame.to_numpy())  # columns 0 and 1, as pd.DataFrame(array) names them
    frame["label"] = np.where(y == 1, "p", "q")
    result = train(frame, "mlp", TrainConfig(epochs=2, device="cpu"), progress=False)
    logits = predict(result.model, frame.drop(columns="label").iloc[:5])
    assert logits.shape == (5, 2)


@pytest.mark.parametrize("case,message", [
    ("duplicate", "column name 'a' appears twice"),
    ("lists", "column 'a' holds list cells"),
])
def test_dataframes_a_table_cannot_hold_are_one_line(case, message):
    frame, y = _frame()
    if case == "duplicate":
        frame = pd.DataFrame(np.c_[frame.to_numpy(), y], columns=["a", "a", "label"])
    else:
        frame = pd.DataFrame({"a": [[1, 2]] * N, "b": frame["b"], "label": y})
    with pytest.raises(DataError, match=message):
        load_data(frame)


def test_tensors_with_gradients_and_ragged_lists():
    import torch

    x = torch.randn(60, 4, requires_grad=True)
    bundle = load_data((x, torch.arange(60) % 2))
    assert bundle.input_shape == (4,)
    with pytest.raises(DataError, match="x is not a rectangular array"):
        load_data(([[1.0, 2.0], [3.0]] * 30, [0, 1] * 30))


@pytest.mark.parametrize("labels,names", [((0, 5), ["0", "5"]), ((1, 2, 3), ["1", "2", "3"]),
                                          ((0, 1, 2), ["0", "1", "2"])])
def test_labels_are_values_never_a_class_per_integer_below_the_largest(labels, names):
    x = np.random.default_rng(0).normal(size=(90, 3)).astype(np.float32)
    y = np.array(labels)[np.arange(90) % len(labels)]
    bundle = load_data((x, y))
    assert bundle.class_names == names and bundle.num_classes == len(labels)


def test_a_test_label_no_training_row_has_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3)), y=np.arange(40) % 2, x_test=rng.normal(size=(5, 3)),
             y_test=np.full(5, 5))
    with pytest.raises(DataError, match="y_test holds label '5', which no training row has"):
        load_data(str(tmp_path / "d.npz"))


def _images(root, classes=("a", "b"), count=4, size=(12, 12)):
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(np.full((*size, 3), 40 * k + i, np.uint8)).save(root / name / f"{i}.png")


def test_an_empty_class_folder_is_refused(tmp_path):
    _images(tmp_path / "img")
    (tmp_path / "img" / "c").mkdir()
    with pytest.raises(DataError, match="class folder 'c' holds no image files"):
        load_data(str(tmp_path / "img"))


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    import trainers.images as images

    _images(tmp_path / "img", size=(40, 30))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)  # 40 x 30 = 1,200 pixels declared
    decoded = []
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: decoded.append(self))
    with pytest.raises(DataError, match="30x40 pixels, over the 1,000 an image may have"):
        load_data(str(tmp_path / "img"))
    assert decoded == []


def test_sixteen_bit_grey_images_keep_their_range(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, base in (("lo", 1000), ("hi", 30000)):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(6):
            pixels = (base + rng.random((8, 8)) * 20000).astype(np.uint16)
            Image.fromarray(pixels).save(tmp_path / "img" / name / f"{i}.png")
    bundle = load_data(str(tmp_path / "img"))
    x = np.concatenate([bundle.x_train, bundle.x_val, bundle.x_test])
    assert bundle.input_shape == (1, 8, 8)
    assert 1000 / 65535 - 1e-6 <= x.min() and x.max() <= 50000 / 65535 + 1e-6  # not clipped to white
    lo = x[np.concatenate([bundle.y_train, bundle.y_val, bundle.y_test]) == bundle.class_names.index("lo")]
    assert lo.mean() < 0.35 < x.max()


def test_whole_numbers_unique_per_row_are_ids_only_by_name_or_density():
    from trainers.preprocess import drop_reasons

    rng = np.random.default_rng(0)
    y = np.arange(100) % 2
    frame = pd.DataFrame({"income": rng.choice(np.arange(20_000, 200_000), 100, replace=False),
                          "customer_id": rng.choice(np.arange(10**6), 100, replace=False),
                          "row": rng.permutation(100) + 7, "name": [f"n{i}" for i in range(100)]})
    assert drop_reasons(frame, y) == {"customer_id": "ID-like (unique per row)",
                                      "row": "ID-like (unique per row)", "name": "ID-like (unique per row)"}


def test_a_class_name_given_twice_is_refused_in_data_and_in_model_json(tmp_path):
    import json

    from trainers.errors import ArtifactError

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    with pytest.raises(DataError, match="class name 'a' is given to two classes"):
        load_data((x, np.arange(60) % 3)).__class__.from_arrays(x, np.arange(60) % 3, class_names=["a", "a", "b"])
    train((x, np.arange(60) % 3), "mlp", TrainConfig(epochs=1, device="cpu"), out=tmp_path / "run", progress=False)
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    spec["class_names"] = ["a", "a", "b"]
    (tmp_path / "run" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="names a class twice"):
        load_model(tmp_path / "run")


def test_a_header_of_numbers_is_named_as_a_missing_header(tmp_path, capsys):
    frame, y = _frame()
    pd.DataFrame({**frame, "label": y}).to_csv(tmp_path / "t.csv", index=False, header=False)
    with toolkit_warnings() as said:
        load_data(str(tmp_path / "t.csv"))
    assert any("if the file has no header row, its first row was read as one" in line for line in said)


def test_table_options_on_data_that_is_no_table_are_refused(tmp_path):
    from trainers.tables import TableOptions

    with pytest.raises(DataError, match="--target name\\(s\\) the columns of a table .* digits is not one"):
        load_data("digits", table=TableOptions(target="label"))
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 3)), y=np.arange(20) % 2)
    with pytest.raises(DataError, match="--keep, --sep"):
        load_data(str(tmp_path / "d.npz"), table=TableOptions(keep=("a",), sep=";"))
    with pytest.raises(DataError, match="--sep name\\(s\\) the columns of a table .* iris is not one"):
        load_data("iris", table=TableOptions(sep=""))  # an empty separator is given too, as --target is


def test_an_npy_of_python_objects_is_named_so(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    np.save(tmp_path / "x.labels.npy", np.arange(20) % 2)
    with pytest.raises(DataError, match="holds Python objects, which only unpickling reads"):
        load_data(str(tmp_path / "x.npy"))


def test_predictions_of_an_image_folder_name_their_files(tmp_path):
    from trainers.inference import predict_file

    _images(tmp_path / "img", count=5)
    train(str(tmp_path / "img"), "cnn", TrainConfig(epochs=1, device="cpu"), out=tmp_path / "run", progress=False)
    (tmp_path / "new" / "deep").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "new" / "deep" / "z.png")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "new" / "a.png")
    _, table = predict_file(tmp_path / "run", tmp_path / "new")
    assert list(table.columns[:3]) == ["file", "predicted", "predicted_index"]
    assert table["file"].tolist() == ["a.png", "deep/z.png"]


@pytest.mark.parametrize("reader", ["arrow", "pandas"])
def test_numbers_float32_would_lose_are_kept_and_centred(reader, tmp_path, monkeypatch):
    """Unix times in seconds (1.6e9) lie 128 apart in float32: a column that tells the classes apart by 20 seconds
    would read as constant. It is read in float64 and centred on its median before the model's float32."""
    import trainers.tables as tables

    if reader == "pandas":  # the fallback reader (files pyarrow refuses) keeps such a column too
        from trainers.csvread import ArrowUnreadable

        def refuse(*args, **kwargs):
            raise ArrowUnreadable("forced")

        monkeypatch.setattr("trainers.csvread.read_csv_arrow", refuse)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    frame = pd.DataFrame({"noise": rng.normal(size=200), "t": 1.6e9 + y * 20 + rng.random(200), "label": y})
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert tables.read_table(tmp_path / "t.csv")["t"].dtype == np.float64
    bundle = load_data(str(tmp_path / "t.csv"))
    step = _steps(bundle)["t"]
    assert "t" not in bundle.table["dropped"] and step["offset"] == pytest.approx(np.median(frame["t"]), abs=30)
    x = np.concatenate([bundle.x_train, bundle.x_val, bundle.x_test])[:, 1]
    assert np.ptp(x) > 15  # the 20 seconds between the classes survive
    train(bundle, "mlp", TrainConfig(epochs=20, device="cpu"), out=tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    assert (predict(model, frame.drop(columns="label")).argmax(1) == y).mean() > 0.95
    from compress.export import export_onnx_raw_rows
    from trainers.errors import ToolkitError

    with pytest.raises(ToolkitError, match="columns t need float64"):
        export_onnx_raw_rows(model)


def test_labels_that_differ_only_in_case_are_two_classes_and_named(tmp_path, capsys):
    frame, y = _frame()
    pd.DataFrame({**frame, "label": np.where(y == 1, "Yes", "yes")}).to_csv(tmp_path / "t.csv", index=False)
    with toolkit_warnings() as said:
        assert load_data(str(tmp_path / "t.csv")).class_names == ["Yes", "yes"]
    assert any("labels 'Yes' and 'yes' in column 'label' are two classes" in line for line in said)


def test_data_is_read_by_the_models_class_names_not_by_position(tmp_path):
    """compress and explain map the data's classes onto the model's by name: a file without one of the classes
    keeps the others' indices, and a class the model does not predict is one line."""
    import compress
    from explain import explain_model

    rng = np.random.default_rng(0)
    y = np.array(["cat", "cow", "dog"])[np.arange(240) % 3]
    x = rng.normal(size=(240, 2)) + np.c_[(y == "cow") * 3.0, (y == "dog") * 3.0]
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": y}).to_csv(tmp_path / "all.csv", index=False)
    train(str(tmp_path / "all.csv"), "mlp", TrainConfig(epochs=30, device="cpu"), out=tmp_path / "m", progress=False)
    no_cow = pd.read_csv(tmp_path / "all.csv").query("label != 'cow'")
    no_cow.to_csv(tmp_path / "no_cow.csv", index=False)
    result = compress.compress_model(str(tmp_path / "m"), str(tmp_path / "no_cow.csv"), methods=["onnx-fp32"])
    assert result.baseline.measurements["accuracy"] > 0.75  # dog read as the model's index 1 (cow) would give about 0.45
    assert explain_model(str(tmp_path / "m"), str(tmp_path / "no_cow.csv"), methods=["saliency"], samples=4)
    other = no_cow.replace({"label": {"dog": "horse"}})
    other.to_csv(tmp_path / "horse.csv", index=False)
    with pytest.raises(DataError, match="has class 'horse', which the model does not predict"):
        compress.compress_model(str(tmp_path / "m"), str(tmp_path / "horse.csv"), methods=["onnx-fp32"])


def test_a_model_whose_table_reads_number_formats_says_so_in_its_format_version(tmp_path):
    """model.json version 2 where a table step has a number format or a float64 offset (a version-1 reader would
    skip them and feed other inputs, and refuses version 2); every other model.json stays version 1."""
    import json

    frame, y = _frame()
    pd.DataFrame({"a": [f"{v:.3f}".replace(".", ",") for v in frame["a"]], "b": frame["b"], "label": y}).to_csv(
        tmp_path / "comma.csv", sep=";", index=False)
    pd.DataFrame({**frame, "label": y}).to_csv(tmp_path / "plain.csv", index=False)
    for name, version in (("comma", 2), ("plain", 1)):
        train(str(tmp_path / f"{name}.csv"), "mlp", TrainConfig(epochs=1, device="cpu"), out=tmp_path / name,
              progress=False)
        assert json.loads((tmp_path / name / "model.json").read_text())["format_version"] == version
        assert load_model(tmp_path / name).spec.num_classes == 2


def test_predict_names_levels_training_never_saw_once_per_file(tmp_path, capsys):
    from trainers.inference import predict_file

    frame, y = _frame()
    colour = np.array(["red", "green", "blue"])[np.arange(N) % 3]
    pd.DataFrame({**frame, "colour": colour, "label": y}).to_csv(tmp_path / "t.csv", index=False)
    train(str(tmp_path / "t.csv"), "mlp", TrainConfig(epochs=1, device="cpu"), out=tmp_path / "run", progress=False)
    rows = pd.DataFrame({**frame, "colour": np.where(np.arange(N) % 2, "purple", "red")})
    pd.concat([rows] * 3).to_csv(tmp_path / "new.csv", index=False)  # 360 rows: six batches of 64
    with toolkit_warnings() as said:
        _, table = predict_file(tmp_path / "run", tmp_path / "new.csv", batch_size=64)
    assert len(table) == 3 * N and len(said) == 1  # once for the file, not once per batch
    assert "column 'colour' holds levels training never saw ('purple')" in said[0]


def test_an_empty_separator_given_over_a_recorded_one_is_refused_not_ignored(tmp_path):
    """compress and explain merge the options given with those training recorded: `--sep ''` is given (and wrong),
    not absent, so it must not fall back to the recorded separator."""
    recorded = TableOptions(target="label", sep=";")
    assert recorded.merged(TableOptions.of(sep="")).sep == ""
    assert recorded.merged(TableOptions.of(target="")).target == ""
    assert recorded.merged(TableOptions.of()) == recorded
    frame, y = _frame()
    pd.DataFrame({**frame, "label": y}).to_csv(tmp_path / "t.csv", sep=";", index=False)
    with pytest.raises(DataError, match="--sep must be one character"):
        load_data(str(tmp_path / "t.csv"), table=recorded.merged(TableOptions.of(sep="")))


def test_table_options_other_than_trainings_are_refused_by_compress_and_explain(tmp_path, capsys):
    """The model's columns and encoding are fixed at training: another --drop, --keep or --target cannot take
    effect (a drop was ignored, a target read as a missing column), so it is one line naming the difference;
    the recorded options given again still read the table."""
    from cli.main import main
    from trainers.tables import load_for_model

    frame, y = _frame()
    frame["c"] = np.random.default_rng(1).normal(size=N)
    frame.assign(label=y).to_csv(tmp_path / "t.csv", index=False)
    train(str(tmp_path / "t.csv"), "mlp", TrainConfig(epochs=1, device="cpu"), out=tmp_path / "run",
          table=TableOptions(drop=("c",)), progress=False)
    spec = load_model(tmp_path / "run").spec
    data = str(tmp_path / "t.csv")
    assert load_for_model(data, spec, table=TableOptions("label", (), ("c",))).feature_names == ["a", "b"]
    refused = {TableOptions(drop=("b",)): "--drop 'b' differs from the model's training (--drop 'c')",
               TableOptions(keep=("c",)): "--keep 'c' differs from the model's training (--keep none)",
               TableOptions(target="a"): "--target 'a' differs from the model's recorded target 'label'"}
    for given, message in refused.items():
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_for_model(data, spec, table=given)
    for command in ("explain", "compress"):
        code = main([command, str(tmp_path / "run"), "--data", data, "--drop", "b", "--out", str(tmp_path / command)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: --drop 'b' differs"), err
        assert not (tmp_path / command).exists()
