"""Pruning and distillation: table-driven over the model families (small models, few epochs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compress import Variant, get_method, list_methods
from compress.prune import DEFAULT_ALLOCATION, prune_model, sensitivity_scan, structured_prune, unstructured_prune
from compress.distill import distill, kd_loss
from trainers import ArtifactError, LoadedModel, ModelSpec, ToolkitError, TrainConfig, load_model, predict, train
from trainers.artifact import sha256_file, write_artifact
from trainers.codecs import CODECS
from trainers.models import count_parameters

SMALL = {
    "mlp": {"hidden": [32, 16]},
    "cnn": {"channels": [8, 8], "hidden": [16]},
    "lstm": {"hidden": [12, 10]},
}
def _train(data, family, arch, epochs=3):
    return train(data, family, TrainConfig(epochs=epochs, model=arch, device="cpu"), progress=False).model


@pytest.fixture(scope="module")
def models(digits):
    return {family: _train(digits, family, arch) for family, arch in SMALL.items()}


def _save_load(tmp_path, model: LoadedModel) -> LoadedModel:
    write_artifact(tmp_path, model.module, model.spec)
    return load_model(tmp_path)


def test_methods_are_registered_as_transforms_for_every_family():
    for name in ("prune-structured", "prune-unstructured", "distill"):
        method = get_method(name)
        assert method.role == "transform" and method.auto is not None
        for family in ("mlp", "cnn", "lstm"):
            assert name in list_methods(family)
    assert get_method("prune-structured").chain and get_method("distill").chain
    assert not get_method("prune-unstructured").chain  # int8 ONNX on top would lose the sparse storage


@pytest.mark.parametrize("family", list(SMALL))
def test_structured_prune_shrinks_and_rebuilds_exactly(family, models, digits, tmp_path):
    model = models[family]
    [variant] = structured_prune(model, digits, ratio=0.5, finetune_epochs=1)
    assert isinstance(variant, Variant) and variant.name == "prune-structured-50"
    before, after = model.spec.config, variant.model.spec.config
    widths = lambda c: c.get("channels", []) + c["hidden"]  # noqa: E731
    assert abs(sum(widths(after)) - 0.5 * sum(widths(before))) <= len(widths(before))  # half of the units go
    if variant.recipe["allocation"] == "uniform":
        assert widths(after) == [max(1, round(w * 0.5)) for w in widths(before)]
    assert variant.recipe["allocation"] == DEFAULT_ALLOCATION[family]
    assert count_parameters(variant.model.module) < 0.6 * count_parameters(model.module)
    lineage = variant.model.spec.lineage
    assert lineage["recipe"]["method"] == "prune-structured" and lineage["recipe"]["ratio"] == 0.5
    assert lineage["parent"]
    loaded = _save_load(tmp_path, variant.model)
    assert loaded.spec.config == after and loaded.spec.lineage["recipe"]["widths_after"] == variant.recipe["widths_after"]
    np.testing.assert_array_equal(predict(loaded, digits.x_test), predict(variant.model, digits.x_test))
    assert 0.0 <= float((predict(loaded, digits.x_test).argmax(1) == digits.y_test).mean()) <= 1.0


def test_global_allocation_frees_more_parameters_on_an_mlp(models, digits):
    """The default for MLPs: at 50% the default architecture (64-256-128-10) ends smaller than halving every
    layer would make it (the 2.95x limit of uniform pruning)."""
    model = _train(digits, "mlp", {"hidden": [256, 128]}, epochs=2)
    [glob] = structured_prune(model, digits, ratio=0.5, finetune_epochs=0)
    [even] = structured_prune(model, digits, ratio=0.5, finetune_epochs=0, allocation="uniform")
    assert glob.recipe["allocation"] == "global" and even.model.spec.config["hidden"] == [128, 64]
    assert glob.model.spec.config["hidden"] == [160, 32]  # units go where they free the most parameters
    assert (glob.name, even.name) == ("prune-structured-50", "prune-structured-50-uniform")  # unique in auto's table
    assert count_parameters(glob.model.module) < count_parameters(even.model.module)


def test_auto_measures_both_splits_where_the_default_is_not_uniform():
    from compress.auto import plan

    splits = {f: [(o["ratio"], o["allocation"]) for m, o, _ in plan(f, prune_ratios=(0.3, 0.5))
                  if m == "prune-structured" and not {"teacher", "align"} & set(o)]  # those are fallbacks
              for f in ("mlp", "cnn", "lstm")}
    assert splits["mlp"] == [(0.3, "global"), (0.3, "uniform"), (0.5, "global"), (0.5, "uniform")]
    assert splits["cnn"] == splits["lstm"] == [(0.3, "uniform"), (0.5, "uniform")]


def test_pruning_one_layer_keeps_the_others(models, digits):
    module, report = prune_model(models["lstm"], digits, 0.5, keep_layers=("layers.0",))
    assert [layer.hidden_size for layer in module.layers] == [12, 5]
    assert report.unpruned["layers.0"] == "kept as asked" and "head" in report.unpruned


def test_sensitivity_scan_rows(models, digits):
    rows = sensitivity_scan(models["cnn"], digits, ratios=(0.25, 0.75))
    assert len(rows) == 3 * 2  # two conv layers and one dense layer, two ratios each
    assert {r["layer"] for r in rows} == {"features.0", "features.3", "classifier.0"}
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["kept"] < row["width"]
        assert set(row) >= {"layer", "width", "ratio", "kept", "accuracy", "baseline_accuracy", "split"}
    json.dumps(rows)  # plain data for the report


@pytest.mark.parametrize("family", list(SMALL))
def test_unstructured_sparse_round_trip_is_exact_and_smaller(family, models, digits, tmp_path):
    model = models[family]
    [variant] = unstructured_prune(model, digits, ratio=0.8, finetune_epochs=1)
    assert variant.model.spec.weights["codec"] == "sparse" and variant.recipe["sparsity"] >= 0.79
    (tmp_path / "sparse").mkdir()
    (tmp_path / "dense").mkdir()
    loaded = _save_load(tmp_path / "sparse", variant.model)
    for key, value in variant.model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    write_artifact(tmp_path / "dense", model.module, model.spec)
    sparse_size = (tmp_path / "sparse" / "model.safetensors").stat().st_size
    dense_size = (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert sparse_size < 0.5 * dense_size
    np.testing.assert_array_equal(predict(loaded, digits.x_test), predict(variant.model, digits.x_test))


def test_unstructured_int8_is_smaller_still_and_loads(models, digits, tmp_path):
    model = models["mlp"]
    [fp32] = unstructured_prune(model, digits, ratio=0.8, finetune_epochs=0)
    [int8] = unstructured_prune(model, digits, ratio=0.8, finetune_epochs=0, int8=True)
    assert int8.name == "prune-unstructured-80-int8" and int8.model.spec.weights["codec"] == "sparse-int8"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _save_load(tmp_path / "a", fp32.model)
    loaded = _save_load(tmp_path / "b", int8.model)
    assert (tmp_path / "b" / "model.safetensors").stat().st_size < (tmp_path / "a" / "model.safetensors").stat().st_size
    np.testing.assert_allclose(predict(loaded, digits.x_test), predict(int8.model, digits.x_test), atol=1e-4)


@pytest.mark.parametrize("codec", ["sparse", "sparse-int8"])
def test_codec_handles_long_gaps_empty_and_dense_tensors(codec):
    sparse = torch.zeros(40, 50)
    sparse.view(-1)[[0, 1, 700, 1999]] = torch.tensor([0.5, -1.0, 0.25, 2.0])
    state = {"a.weight": sparse, "b.weight": torch.zeros(3, 4), "c.bias": torch.randn(7), "d.weight": torch.randn(5, 5)}
    encoded = CODECS[codec].encode(state)
    assert "a.weight" not in encoded and "c.bias" in encoded and "d.weight" in encoded
    decoded = CODECS[codec].decode(encoded)
    assert set(decoded) == set(state)
    for key, value in state.items():
        tolerance = 0.0 if codec == "sparse" or key in ("c.bias", "d.weight") else 2.0 / 127
        assert decoded[key].shape == value.shape and decoded[key].dtype == value.dtype
        assert float((decoded[key] - value).abs().max()) <= tolerance, key


def _corrupt(directory, change):
    """Rewrite the weights with `change(tensors)` and re-sign them, so only the decoder can object."""
    file = directory / "model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))
    spec = json.loads((directory / "model.json").read_text())
    spec["weights"]["sha256"] = sha256_file(file)
    (directory / "model.json").write_text(json.dumps(spec))


def _set(key, value):
    return lambda t: t.__setitem__(key, value)


CORRUPTIONS = {
    "gaps-run-past-the-end": lambda t: t.__setitem__("__sparse__.gaps", torch.full_like(t["__sparse__.gaps"], 255)),
    "missing-values": lambda t: t.pop("__sparse__.values"),
    "values-truncated": lambda t: t.__setitem__("__sparse__.values", t["__sparse__.values"][:-3].clone()),
    "index-not-json": _set("__sparse__.index", torch.tensor([1, 2, 250], dtype=torch.uint8)),
    "index-wrong-shape": lambda t: t.__setitem__("__sparse__.index", torch.frombuffer(bytearray(
        json.dumps([{"name": "features.0.weight", "shape": [-1], "dtype": "float32", "count": 1}]).encode()), dtype=torch.uint8)),
    "index-huge-shape": lambda t: t.__setitem__("__sparse__.index", torch.frombuffer(bytearray(json.dumps(
        [{"name": "features.0.weight", "shape": [1 << 40, 1 << 20], "dtype": "float32", "count": len(t["__sparse__.values"])}]
    ).encode()), dtype=torch.uint8)),
    "values-wrong-dtype": lambda t: t.__setitem__("__sparse__.values", t["__sparse__.values"].double()),
    "gaps-wrong-dtype": lambda t: t.__setitem__("__sparse__.gaps", t["__sparse__.gaps"].to(torch.int32)),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_sparse_weights_are_refused(corruption, models, digits, tmp_path):
    [variant] = unstructured_prune(models["mlp"], digits, ratio=0.8, finetune_epochs=0)
    write_artifact(tmp_path, variant.model.module, variant.model.spec)
    _corrupt(tmp_path, CORRUPTIONS[corruption])
    with pytest.raises(ArtifactError):
        load_model(tmp_path)


def test_corrupted_int8_scale_is_refused(models, digits, tmp_path):
    [variant] = unstructured_prune(models["mlp"], digits, ratio=0.8, finetune_epochs=0, int8=True)
    write_artifact(tmp_path, variant.model.module, variant.model.spec)

    def bad_scale(tensors):
        index = json.loads(tensors["__sparse__.index"].numpy().tobytes())
        index[0]["scale"] = -1.0
        tensors["__sparse__.index"] = torch.frombuffer(bytearray(json.dumps(index).encode()), dtype=torch.uint8)

    _corrupt(tmp_path, bad_scale)
    with pytest.raises(ArtifactError, match="scale"):
        load_model(tmp_path)


def test_kd_loss_is_zero_soft_term_for_identical_logits():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    assert float(kd_loss(logits, logits, labels, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits, logits, labels, 4.0, 0.0)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


@pytest.mark.parametrize("teacher, student, config", [("mlp", None, None), ("cnn", "mlp", {"hidden": [8]})])
def test_distill_reports_gap_closed(teacher, student, config, models, digits, tmp_path):
    [variant] = distill(models[teacher], digits, student=student, student_config=config, epochs=2)
    recipe = variant.recipe
    for key in ("teacher_accuracy", "student_alone_accuracy", "distilled_accuracy"):
        assert 0.0 <= recipe[key] <= 1.0
    gap = recipe["teacher_accuracy"] - recipe["student_alone_accuracy"]
    if gap > 0:
        assert recipe["gap_closed"] == pytest.approx((recipe["distilled_accuracy"] - recipe["student_alone_accuracy"]) / gap)
    else:
        assert recipe["gap_closed"] is None
    assert variant.model.spec.family == (student or teacher)
    assert count_parameters(variant.model.module) < count_parameters(models[teacher].module)
    assert variant.model.spec.lineage["recipe"]["method"] == "distill"
    loaded = _save_load(tmp_path, variant.model)
    np.testing.assert_array_equal(predict(loaded, digits.x_test), predict(variant.model, digits.x_test))


def test_distill_without_the_alone_run_gives_the_same_student(models, digits):
    """auto's distillation skips the comparison run: the distilled student is the one `alone=True` makes."""
    [full] = distill(models["mlp"], digits, epochs=2)
    [quick] = distill(models["mlp"], digits, epochs=2, alone=False)
    assert quick.recipe["student_alone_accuracy"] is None and quick.recipe["gap_closed"] is None
    assert quick.recipe["distilled_accuracy"] == full.recipe["distilled_accuracy"]
    np.testing.assert_array_equal(predict(quick.model, digits.x_test), predict(full.model, digits.x_test))
    assert "not trained alone" in quick.notes[0] and "alone" in full.notes[0]


def test_distill_gives_up_halfway_when_the_student_is_far_behind(models, digits):
    """auto's early rejection: a student far below the teacher on validation at half its epochs ends the run with
    a ToolkitError naming the figures (auto lists it as rejected); one close enough trains to the end."""
    with pytest.raises(ToolkitError, match=r"given up at epoch 2 of 4: .* points below the teacher's"):
        distill(models["mlp"], digits, epochs=4, width_factor=0.05, alone=False, give_up=1.0)
    [kept] = distill(models["mlp"], digits, epochs=4, width_factor=0.05, alone=False, give_up=100.0)
    assert kept.recipe["epochs"] == 4 and 0.0 <= kept.recipe["distilled_accuracy"] <= 1.0


def _student(digits, seed=0):
    torch.manual_seed(seed)
    from trainers.models import build_model

    return build_model("mlp", {"hidden": [16]}, digits.input_shape, 10, None, None)


def test_the_teacher_is_the_only_difference_between_the_two_runs(models, digits):
    """With alpha = 0 the teacher's targets carry no weight: the distilled run must then be the run alone,
    weight for weight (same initial weights, batches, dropout masks)."""
    import copy

    from compress.distill import train_student

    initial = _student(digits)
    alone, _ = train_student(copy.deepcopy(initial), digits, 2, seed=3)
    taught, _ = train_student(copy.deepcopy(initial), digits, 2, seed=3, teacher=models["mlp"].module, alpha=0.0)
    for (name, a), (_, b) in zip(alone.state_dict().items(), taught.state_dict().items()):
        assert torch.equal(a, b), name
    with_teacher, _ = train_student(copy.deepcopy(initial), digits, 2, seed=3, teacher=models["mlp"].module, alpha=0.9)
    assert not torch.equal(with_teacher.head.weight, alone.head.weight)


def test_mixup_reaches_the_student_alone_too(digits):
    """The student trained alone sees the same mixed inputs (with mixed hard labels) as the distilled one."""
    import copy

    from compress.distill import train_student

    initial = _student(digits)
    plain, _ = train_student(copy.deepcopy(initial), digits, 2, seed=1)
    mixed, _ = train_student(copy.deepcopy(initial), digits, 2, seed=1, mixup=1.0)
    again, _ = train_student(copy.deepcopy(initial), digits, 2, seed=1, mixup=1.0)
    assert not torch.equal(plain.head.weight, mixed.head.weight)
    assert torch.equal(mixed.head.weight, again.head.weight)  # seeded: reproducible


BAD = [  # (method, options, what the one-line refusal says)
    ("prune-structured", {"ratio": 0}, "ratio: input should be greater than 0"),
    ("prune-structured", {"ratio": 1.0}, "ratio: input should be less than 1"),
    ("prune-structured", {"ratio": -0.2}, "ratio: input should be greater than 0"),
    ("prune-structured", {"ratio": "half"}, "ratio: input should be a valid number"),
    ("prune-structured", {"ratio": 0.5, "finetune_epochs": -1}, "finetune_epochs: input should be greater than or equal"),
    ("prune-structured", {"ratio": 0.5, "criterion": "random"}, "criterion: input should be 'l1' or 'l2'"),
    ("prune-structured", {"ratio": 0.5, "allocation": "random"}, "allocation: input should be 'global' or 'uniform'"),
    ("prune-structured", {"ratio": 0.5, "speed": "max"}, "speed: unknown option"),
    ("prune-unstructured", {"ratio": 1.5}, "ratio: input should be less than 1"),
    ("prune-unstructured", {"ratio": float("nan")}, "ratio: input should be a finite number"),
    ("prune-unstructured", {"ratio": 0.5, "sparse": True}, "sparse: unknown option"),
    ("distill", {"student": "transformer"}, "unknown model family 'transformer'"),
    ("distill", {"temperature": 0}, "temperature: input should be greater than 0"),
    ("distill", {"alpha": 1.5}, "alpha: input should be less than or equal to 1"),
    ("distill", {"epochs": 0}, "epochs: input should be greater than or equal to 1"),
    ("distill", {"epochs": 10 ** 23}, "epochs: input should be less than or equal to 1000000"),
    ("prune-structured", {"ratio": 0.5, "finetune_epochs": 10 ** 9}, "finetune_epochs: input should be less than or equal"),
    ("prune-unstructured", {"ratio": 0.5, "finetune_epochs": 10 ** 9}, "finetune_epochs: input should be less than"),
    ("distill", {"student_config": {"hidden": [4], "heads": 2}}, "heads"),
    ("distill", {"teacher": "other"}, "teacher: unknown option"),
    ("prune-structured", {"ratio": 0.5, "teacher": "yes"}, "teacher: input should be a valid boolean"),
]


@pytest.mark.parametrize("method, options, says", BAD, ids=[f"{m}-{'-'.join(map(str, o))}" for m, o, _ in BAD])
def test_bad_options_are_refused_with_one_line(method, options, says, models, digits):
    with pytest.raises(ToolkitError) as info:
        get_method(method).func(models["mlp"], digits, **options)
    assert "\n" not in str(info.value) and says in str(info.value)


def test_sensitivity_scan_refuses_bad_ratios(models, digits):
    with pytest.raises(ToolkitError, match=r"^sensitivity_scan: ratios.1: input should be less than 1, got 1.0$"):
        sensitivity_scan(models["mlp"], digits, ratios=(0.5, 1.0))


@pytest.mark.parametrize("method", ["prune-structured", "prune-unstructured", "distill"])
def test_unregistered_family_is_refused(method, models, digits):
    mlp = models["mlp"]
    odd = LoadedModel(module=mlp.module, spec=ModelSpec.from_dict({**mlp.spec.to_dict(), "family": "forest"}))
    with pytest.raises(ToolkitError, match="forest"):
        get_method(method).func(odd, digits)


def test_the_teacher_runs_once_per_training_row_not_once_per_epoch(models, digits):
    """The teacher is in eval mode and the training rows do not change: its logits are computed once and looked up
    by row, and the distillation loss is the one the teacher's own forward pass gives."""
    from compress.distill import _student, train_student
    from compress.losses import teacher_logits, teacher_loss
    from trainers.loop import Batch

    teacher = models["mlp"].module
    rows_seen = []
    hook = teacher.register_forward_hook(lambda module, inputs, output: rows_seen.append(len(inputs[0])))
    try:
        student = _student(models["mlp"], digits, None, None, 0.25, 0)[0]
        rows_seen.clear()                 # (a student's checks may call the teacher)
        train_student(student, digits, 3, teacher=teacher, seed=0)
    finally:
        hook.remove()
    assert sum(rows_seen) == len(digits.x_train)
    x = torch.from_numpy(digits.x_train)
    index = torch.tensor([5, 0, 17])
    batch = Batch(x[index], torch.from_numpy(digits.y_train)[index], {"index": index})
    logits = torch.randn(3, 10)
    cached = teacher_loss(teacher, 4.0, 0.9, logits, batch, cache=teacher_logits(teacher, x))
    assert torch.allclose(cached, teacher_loss(teacher, 4.0, 0.9, logits, batch), atol=1e-5)


def test_a_student_config_larger_than_its_teacher_is_named_larger(models, digits):
    """Distillation is sold as a smaller model: a `student_config` wider than the teacher says how much larger."""
    teacher = models["mlp"]
    [small] = distill(teacher, digits, epochs=1, alone=False)
    [large] = distill(teacher, digits, student_config={"hidden": [256, 256]}, epochs=1, alone=False)
    times = count_parameters(large.model.module) / count_parameters(teacher.module)
    assert not any("larger" in note for note in small.notes)
    assert any(note.startswith(f"the student is {times:.1f}x larger than its teacher") for note in large.notes)


def test_structured_pruning_of_a_factorized_model_is_refused_in_one_line(models, digits):
    """Pruning a lowrank variant took its rank bottlenecks for hidden units (ranks 16 and 8 cut to 4 and 2, 35
    points lost): refused, naming the factorized layers."""
    [factorized] = get_method("lowrank").func(models["mlp"], digits)
    with pytest.raises(ToolkitError, match="structured pruning of a factorized model would cut its rank bottlenecks"
                                           r" \(.*rank \d+"):
        get_method("prune-structured").func(factorized.model, digits, ratio=0.5)
