"""The data contract: built-in sets, .npz and .csv files, splits, normalisation, bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from trainers import data as data_module
from trainers.tables import TableOptions
from trainers import BUILTIN_DATASETS, DataError, check_inputs, load_data


@pytest.mark.parametrize("name,shape,classes", [
    ("digits", (1, 8, 8), 10), ("iris", (4,), 3), ("wine", (13,), 3), ("breast_cancer", (30,), 2),
])
def test_builtin_sets(name, shape, classes):
    data = load_data(name)
    assert name in BUILTIN_DATASETS
    assert data.input_shape == shape
    assert data.num_classes == classes
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    n = len(data.y_train) + len(data.y_val) + len(data.y_test)
    assert len(data.y_test) == pytest.approx(0.2 * n, abs=2)
    if len(shape) == 1:
        assert len(data.feature_names) == shape[0]


def test_split_is_stratified_seeded_and_disjoint():
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    # Stratified: class proportions in the test split follow the whole set within one sample.
    counts = np.bincount(a.y_test, minlength=10)
    total = np.bincount(np.concatenate([a.y_train, a.y_val, a.y_test]), minlength=10)
    assert np.all(np.abs(counts - total * len(a.y_test) / total.sum()) <= 1.01)
    train_rows = {r.tobytes() for r in a.x_train}
    assert sum(r.tobytes() in train_rows for r in a.x_test) < 5  # digits has a few exact duplicates


def test_a_class_of_one_row_leaves_the_other_classes_stratified():
    """Before, one stray row of a third label made the whole split unstratified: the 5% class got 4 to 10
    validation and 5 to 10 test rows by seed, and the split still said stratified."""
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    y = (np.arange(1000) % 20 == 0).astype(int)  # 50 rows of class 1
    stray = y.copy()
    stray[1] = 2
    for seed in range(4):
        data = load_data((x, stray), seed=seed)
        assert [int((data.y_val == 1).sum()), int((data.y_test == 1).sum())] == [6, 10]
        assert list(np.bincount(data.y_train, minlength=3)) == [645, 34, 1]  # the stray row is kept for training
        assert data.split["stratified"]
    again = load_data((x, stray), seed=1)
    np.testing.assert_array_equal(again.x_test, load_data((x, stray), seed=1).x_test)


def test_a_split_smaller_than_the_class_count_takes_at_most_one_row_of_a_class():
    """100 classes of 3 rows: 60 test rows cannot hold every class; before, the split fell back to an unstratified
    one and two classes had no training row."""
    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    y = np.repeat(np.arange(100), 3)
    data = load_data((x, y), seed=0)
    counts = [np.bincount(part, minlength=100) for part in (data.y_train, data.y_val, data.y_test)]
    assert counts[0].min() >= 1 and counts[1].max() == 1 and counts[2].max() == 1
    assert [len(data.y_train), len(data.y_val), len(data.y_test)] == [204, 36, 60]
    first, again = data_module.split_indices(y, 0), data_module.split_indices(y, 0)
    assert [p.tolist() for p in first] == [p.tolist() for p in again]
    assert data_module.split_indices(y, 0)[2].tolist() != data_module.split_indices(y, 1)[2].tolist()


@pytest.mark.parametrize("labels", [np.arange(300) % 3, (np.arange(1000) % 20 == 0).astype(int),
                                    np.random.default_rng(1).integers(0, 7, 3000)])
def test_a_split_scikit_learn_stratifies_is_the_one_it_always_was(labels):
    """Every earlier run's split (and the results of every test) came from scikit-learn's stratified split; data
    it can stratify must keep those very rows."""
    from sklearn.model_selection import train_test_split

    for seed in range(3):
        rest, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=labels)
        train, val = train_test_split(rest, test_size=0.15, random_state=seed, stratify=labels[rest])
        got = data_module.split_indices(labels, seed)
        assert [p.tolist() for p in got] == [train.tolist(), val.tolist(), test.tolist()]


def test_normalisation_from_training_split_only():
    data = load_data("wine")
    np.testing.assert_allclose(data.mean, data.x_train.mean(axis=0), rtol=1e-5)
    assert not np.allclose(data.mean, np.concatenate([data.x_train, data.x_test]).mean(axis=0), rtol=1e-7)
    image = load_data("digits")
    assert image.mean.shape == (1, 1, 1)  # per channel for images
    assert np.all(image.std > 0)


def test_fingerprint_changes_with_the_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 2
    np.savez(tmp_path / "a.npz", x=x, y=y)
    x2 = x.copy()
    x2[0, 0] += 1
    np.savez(tmp_path / "b.npz", x=x2, y=y)
    fa, fb = load_data(str(tmp_path / "a.npz")).fingerprint, load_data(str(tmp_path / "b.npz")).fingerprint
    assert len(fa) == 64 and fa != fb
    assert load_data(str(tmp_path / "a.npz")).fingerprint == fa


def test_fingerprint_is_the_sha256_of_the_row_major_bytes_whatever_the_layout():
    x = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float32)
    y = np.arange(300) % 3
    expected = hashlib.sha256()
    for a in (x, y):
        expected.update(str((a.shape, a.dtype.str)).encode())
        expected.update(a.tobytes())
    expected.update(b"none")
    expected.update(b"none")
    assert data_module._fingerprint(x, y, None, None) == expected.hexdigest()
    assert data_module._fingerprint(np.asfortranarray(x), y, None, None, block_bytes=100) == expected.hexdigest()
    wide = np.random.default_rng(1).normal(size=(300, 14)).astype(np.float32)
    view = wide[:, ::2]
    assert (data_module._fingerprint(view, y, None, None, block_bytes=100)
            == data_module._fingerprint(np.ascontiguousarray(view), y, None, None))


@pytest.mark.parametrize("shape,layout", [((6,), "features"), ((2, 10), "signal"), ((3, 4, 5), "image")])
def test_npz_shapes_and_names(tmp_path, shape, layout):
    x = np.random.default_rng(0).normal(size=(50, *shape))
    y = np.arange(50) % 2
    extra = {"feature_names": np.array([f"f{i}" for i in range(6)])} if len(shape) == 1 else {}
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["neg", "pos"]), **extra)
    data = load_data(str(tmp_path / "d.npz"))
    assert data.input_shape == shape and data.layout == layout
    assert data.class_names == ["neg", "pos"]
    if extra:
        assert data.feature_names == [f"f{i}" for i in range(6)]


def test_npz_with_given_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.arange(60) % 3
    xt, yt = rng.normal(size=(15, 4)), np.arange(15) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    data = load_data(str(tmp_path / "d.npz"))
    np.testing.assert_allclose(data.x_test, xt.astype(np.float32))
    assert len(data.y_train) + len(data.y_val) == 60
    assert data.split["test_given"] is True


def test_csv_with_target_and_text_labels(tmp_path):
    rows = ["a,b,label,c"] + [f"{i},{i % 3}.5,{'yes' if i % 2 else 'no'},{-i}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = load_data(str(tmp_path / "d.csv"), target="label", table=TableOptions(keep=("a", "c")))
    assert data.feature_names == ["a", "b", "c"]
    assert data.class_names == ["no", "yes"]
    assert data.input_shape == (3,)
    dropped = load_data(str(tmp_path / "d.csv"), target="label").table["dropped"]
    assert dropped == {"a": "monotonic index (unique per row, increasing)", "c": "ID-like (unique per row)"}
    with pytest.raises(DataError, match="target column 'c' has 30 classes in 30 rows"):
        load_data(str(tmp_path / "d.csv"), target="c")


def test_csv_default_target_is_last_column_with_integer_labels(tmp_path):
    rows = ["x1,x2,y"] + [f"{i % 7},{i * 0.37:.2f},{(i % 3) * 10}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    data = load_data(str(tmp_path / "d.csv"))
    assert data.class_names == ["0", "10", "20"]
    assert data.feature_names == ["x1", "x2"]
    assert set(np.unique(data.y_train)) == {0, 1, 2}


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


X, Y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2


@pytest.mark.parametrize("make,match", [
    (lambda p: str(p / "missing.npz"), "not found"),
    (lambda p: "no_such_builtin", "unknown data"),
    (lambda p: (p / "dir.npz").mkdir() or str(p / "dir.npz"), "directory"),
    (lambda p: _write(p / "x.npz", b"garbage"), "cannot read"),
    (lambda p: _write(p / "x.txt", b"1,2"), "unsupported"),
    (lambda p: _npz(p, x=X), "missing array"),
    (lambda p: _npz(p, x=X, y=Y[:-1]), "30 samples but y has 29"),
    (lambda p: _npz(p, x=np.where(np.eye(30, 4) > 0, np.nan, X), y=Y), "NaN or infinite"),
    (lambda p: _npz(p, x=np.where(np.eye(30, 4) > 0, np.inf, X), y=Y), "NaN or infinite"),
    (lambda p: _npz(p, x=X, y=np.where(Y, np.inf, 0.5)), "holds inf in row 1 and 14 more: a label must be a finite"),
    (lambda p: _npz(p, x=X, y=np.where(np.arange(30) == 3, np.nan, Y)), "1 missing label.*the first in row 3: drop"),
    (lambda p: _npz(p, x=X, y=np.array([1 + 2j] * 30)), "integer or text class labels"),
    (lambda p: _npz(p, x=X, y=np.zeros(30, int)), "only one class"),
    (lambda p: _npz(p, x=X, y=Y - 1, class_names=np.array(["a", "b"])), "class indices 0, 1, ... into class_names"),
    (lambda p: _npz(p, x=X, y=np.array(["a", "b"] * 15), class_names=np.array(["a", "b"])), "found text labels"),
    (lambda p: _npz(p, x=X, y=Y * 5, class_names=np.array(["a", "b"])), "out of range"),
    (lambda p: _npz(p, x=X[:, 0], y=Y), "must have shape"),
    (lambda p: _npz(p, x=np.array(["s"] * 30), y=Y), "numeric"),
    (lambda p: _npz(p, x=X[:5], y=Y[:5]), "at least 10"),
    (lambda p: _npz(p, x=X, y=Y, x_test=X[:, :3], y_test=Y), "x_test samples have shape"),
    (lambda p: _npz(p, x=X, y=Y, x_test=X), "given together"),
])
def test_bad_npz_and_paths(tmp_path, make, match):
    with pytest.raises(DataError, match=match):
        load_data(make(tmp_path))


@pytest.mark.parametrize("labels, names", [
    (np.where(np.arange(30) % 2, 1, -1), ["-1", "1"]),
    (np.where(np.arange(30) % 2, "dog", "cat"), ["cat", "dog"]),
    (np.where(np.arange(30) % 2, 0.5, 1.5), ["0.5", "1.5"]),  # refused before, though a CSV took them
    (np.where(np.arange(30) % 2, 0.1, 2.0).astype(np.float32), ["0.1", "2"]),  # float32 by its shortest text
    (np.where(np.arange(30) % 2, 2**63 + 5, 1).astype(np.uint64), ["1", "9223372036854775813"]),  # was negative
])
def test_labels_are_values_in_an_npz_as_in_a_table(tmp_path, labels, names):
    """-1/+1 and text labels are classes by value in an .npz and from Python, as they are in a CSV file."""
    bundle = load_data(_npz(tmp_path, x=X, y=labels))
    assert bundle.class_names == names and bundle.num_classes == 2
    every = np.concatenate([bundle.y_train, bundle.y_val, bundle.y_test])
    assert sorted(np.bincount(every)) == [15, 15]
    assert load_data((X, labels)).class_names == names


def test_labels_int64_cannot_hold_stay_distinct_values():
    """A cast to int64 merged 1e19 and 2e19 into one class (two thirds of the rows trained as one)."""
    bundle = load_data((X, np.array([0.0, 1e19, 2e19])[np.arange(30) % 3]))
    assert bundle.class_names == ["0", "10000000000000000000", "20000000000000000000"]
    assert sorted(np.bincount(np.concatenate([bundle.y_train, bundle.y_val, bundle.y_test]))) == [10, 10, 10]
    # Float labels beside int64 test labels are compared exactly, not both cast to float64 (2**60 + 1 -> 2**60).
    halves = np.where(Y, 2.0**60, 0.5)
    with pytest.raises(DataError, match="y_test holds label '1152921504606846977', which no training row has"):
        data_module.DataBundle.from_arrays(X, halves, x_test=X[:3], y_test=np.full(3, 2**60 + 1))
    given = data_module.DataBundle.from_arrays(X, halves, x_test=X[:3], y_test=np.full(3, 2**60))
    assert given.class_names == ["0.5", "1152921504606846976"] and given.y_test.tolist() == [1, 1, 1]
    with pytest.raises(DataError, match=r"class indices 0, 1, ... into class_names \(found label 0.5\)"):
        data_module.DataBundle.from_arrays(X, np.where(Y, 0.5, 1.0), class_names=["a", "b"])
    big = np.array([2**63, 2**63 + 1], dtype=np.uint64)
    given = data_module.DataBundle.from_arrays(X, big[Y], x_test=X[:4], y_test=big[[1, 1, 0, 1]])
    assert given.class_names == ["9223372036854775808", "9223372036854775809"] and given.y_test.tolist() == [1, 1, 0, 1]


def test_fractional_labels_are_the_same_classes_in_an_npz_and_a_csv(tmp_path):
    import pandas as pd

    labels = np.where(X[:, 0] > 0, 0.5, 1.5)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(t=labels)
    frame.to_csv(tmp_path / "halfs.csv", index=False)
    table, arrays = load_data(str(tmp_path / "halfs.csv")), load_data(_npz(tmp_path, x=X, y=labels))
    assert table.class_names == arrays.class_names == ["0.5", "1.5"]
    assert table.y_test.tolist() == arrays.y_test.tolist()  # the same rows of the same classes
    wide = frame.assign(t=np.where(X[:, 0] > 0, 2**53, 2**53 + 1))  # a DataFrame's int64 labels, not via float64
    assert load_data(wide).class_names == ["9007199254740992", "9007199254740993"]


def _pandas_labels():
    import pandas as pd

    text = np.where(np.arange(30) % 2, "dog", "cat")
    return [pd.Series(text), np.array(text, dtype=object), pd.Series(text, dtype="string"),
            pd.Series(text, dtype="category"), pd.Series(pd.Categorical(text, categories=["dog", "cat"]))]


@pytest.mark.parametrize("labels", _pandas_labels(), ids=["series", "object", "string", "category", "ordered"])
def test_text_labels_from_pandas_are_classes_by_name_as_a_list_of_str(labels):
    """A notebook's labels come as pandas columns: their text is the classes, sorted by name as a list of str's
    (and a table's) are, whatever order a category declares."""
    bundle = load_data((X, labels))
    assert bundle.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(bundle.y_train, load_data((X, list(np.asarray(labels, str)))).y_train)


@pytest.mark.parametrize("missing", [None, np.nan, "NA"])
def test_missing_labels_are_refused_in_one_line_counting_them(missing):
    import pandas as pd

    labels = pd.Series(np.where(np.arange(30) % 2, "dog", "cat"), dtype="string" if missing == "NA" else object)
    labels[[3, 8]] = pd.NA if missing == "NA" else missing
    with pytest.raises(DataError, match=r"y has 2 missing label\(s\)"):
        load_data((X, labels))


def test_a_dataframe_keeps_its_column_names_and_bool_labels_are_named_false_and_true():
    import pandas as pd

    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    bundle = load_data((frame, np.arange(30) % 2 == 1))
    assert bundle.feature_names == list(frame.columns) and bundle.class_names == ["False", "True"]
    assert data_module.DataBundle.from_arrays(X, Y == 1, class_names=["no", "yes"]).class_names == ["no", "yes"]


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 30, dtype=object), y=Y)
    with pytest.raises(DataError, match="unpickling"):
        load_data(str(path))


@pytest.mark.parametrize("text,target,match", [
    ("a,b\n1,0\n2,1\n", "nope", "target column 'nope' not found"),
    ("a,b,t\n1,2,0\n" + "1,2,1\n" * 12, None, "no feature columns left after dropping a, b"),
    ("a,b,t\n1,2\n", None, "has 2 fields"),
    ("a,b,t\n", None, "at least one data row"),
    ("t\n1\n0\n", None, "at least one feature column"),
])
def test_bad_csv(tmp_path, text, target, match):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_data(str(tmp_path / "d.csv"), target=target)


def test_check_inputs_rejects_wrong_shape_and_nan():
    good = np.zeros((3, 1, 8, 8), np.float32)
    assert check_inputs(good, (1, 8, 8)).shape == (3, 1, 8, 8)
    with pytest.raises(DataError, match="expects"):
        check_inputs(np.zeros((3, 64), np.float32), (1, 8, 8))
    with pytest.raises(DataError, match="NaN"):
        check_inputs(np.full((3, 1, 8, 8), np.nan, np.float32), (1, 8, 8))
