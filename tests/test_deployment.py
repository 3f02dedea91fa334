"""What a deployment reads: the ONNX files' metadata and the model card's machine-readable front matter."""

from __future__ import annotations

import json

import onnx
import pytest
from fake_runs import make_run, write_pipeline

from compress import compress_model
from reports import render_report
from trainers import TrainConfig, load_data, train
from trainers.env import toolkit_version


def test_onnx_variants_carry_class_and_feature_names_preprocessing_and_version(tmp_path):
    data = load_data("iris")
    trained = train(data, "mlp", TrainConfig(epochs=2))
    result = compress_model(trained.model, data, methods=["onnx-fp32", "int8-dynamic"], out=tmp_path / "c")
    onnx_variants = [v for v in result.variants if v.model.spec.onnx]
    assert {v.name for v in onnx_variants} == {"onnx-fp32", "int8-dynamic-onnx"}
    for v in onnx_variants:
        props = {p.key: p.value for p in onnx.load(v.model.path / "model.onnx").metadata_props}
        assert json.loads(props["class_names"]) == data.class_names
        assert json.loads(props["feature_names"]) == data.feature_names
        assert json.loads(props["input_shape"]) == [4] and props["layout"] == "features"
        assert json.loads(props["preprocessing"])["kind"] == "standardize"
        assert json.loads(props["recipe"])["method"] == v.recipe["method"]
        assert props["toolkit.version"] == toolkit_version()
        assert v.model.predict(data.x_test).shape == (len(data.x_test), 3)   # the file still loads and runs


def test_model_card_front_matter_is_accepted_by_the_hugging_face_parser(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.repocard import metadata_load

    run = make_run(tmp_path / "run")
    write_pipeline(run)
    render_report(run)
    path = run / "MODEL_CARD.md"
    assert path.read_text(encoding="utf-8").startswith("---\n")
    metadata = metadata_load(path)
    assert {"license", "datasets", "metrics", "model-index"} <= set(metadata)
    card = hub.ModelCard.load(path)                  # parses model-index into evaluation results
    results = card.data.eval_results
    assert results and {r.metric_type for r in results} == {"accuracy"}
    assert all(0 <= r.metric_value <= 1 for r in results)
    assert card.data.license == "unknown" and card.data.datasets == metadata["datasets"]
    assert "# Model card" in card.text
