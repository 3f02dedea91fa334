"""What the stages write is what trainers.schema reads: a small real train, compress and explain run (iris)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

from compress import compress_model
from explain import explain_model
from reports import render_report
from trainers import TrainConfig, train
from trainers.schema import (CompressResultFile, DataSummary, ExplainResultFile, PipelineFile, TrainResultFile,
                             parse_result, read_result)

KINDS = {"train": TrainResultFile, "compress": CompressResultFile, "explain": ExplainResultFile}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


@pytest.fixture(scope="module")
def run_dir(iris, tmp_path_factory):
    """train/, compress/ (an fp32 and an int8 ONNX variant) and explain/ (with drift against the int8 one)."""
    root = tmp_path_factory.mktemp("schema")
    train(iris, "mlp", TrainConfig(epochs=2, device="cpu", model={"hidden": [16]}), out=root / "train",
          progress=False)
    compress_model(root / "train", iris, methods=["onnx-fp32", "int8-dynamic"], out=root / "compress")
    explain_model(root / "train", iris, methods=["saliency"], samples=4, out=root / "explain",
                  compare=[root / "compress" / "variants" / "int8-dynamic-onnx"])
    return root


@pytest.mark.parametrize("stage", KINDS)
def test_each_stage_writes_exactly_what_its_schema_reads(run_dir, stage):
    path = run_dir / stage / "result.json"
    result = read_result(path, stage)
    assert isinstance(result, KINDS[stage]) and result.schema_version == {"train": 2, "compress": 8, "explain": 6}[stage]
    assert result.dump() == json.loads(path.read_text()), "every field written is declared, none left out"


def test_variant_rows_carry_their_optional_parts(run_dir):
    result = read_result(run_dir / "compress" / "result.json", "compress")
    rows = {v.name: v for v in result.variants}
    assert set(rows) == {"fp32-torch", "onnx-fp32", "int8-dynamic-onnx"} and result.baseline == rows["fp32-torch"]
    int8, fp32 = rows["int8-dynamic-onnx"], rows["onnx-fp32"]
    assert int8.agreement_check is not None and int8.twin_agreement is not None and int8.parity is not None
    assert fp32.agreement_check is None and fp32.parity.top1_agreement == 1.0
    assert rows["fp32-torch"].parity is None and rows["fp32-torch"].speedup.b256_t1 == 1.0


def test_report_of_the_real_run_has_every_section(run_dir):
    html = render_report(run_dir).read_text(encoding="utf-8")
    for section in ("training", "compression", "explanation", "model-card"):
        assert f'id="{section}"' in html
    assert "int8-dynamic-onnx" in html and "saliency" in html


def test_a_writer_that_drifts_from_its_schema_fails_before_writing(iris):
    result = train(iris, "mlp", TrainConfig(epochs=1, device="cpu", model={"hidden": [8]}), progress=False)
    assert parse_result(result.to_dict(), "train result").stage == "train"
    result.history[0]["grad_norm"] = 1.0
    with pytest.raises(ValidationError, match="grad_norm"):
        result.to_dict()



def _field_names(model: type[BaseModel], skip: tuple = ()) -> set[str]:
    """Every key a model writes, nested models included (those in `skip` not entered)."""
    def models(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for arg in get_args(annotation):
            yield from models(arg)

    names = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        for nested in models(info.annotation):
            if nested not in skip:
                names |= _field_names(nested, skip)
    return names


@pytest.mark.parametrize("stage, model", [*KINDS.items(), ("pipeline", PipelineFile)])
def test_docs_name_every_field_of_each_stage(stage, model):
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index(f"\n## {stage}\n"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    skip = () if stage == "train" else (DataSummary,)  # described once, in the train section
    missing = sorted(name for name in _field_names(model, skip) if f'"{name}"' not in section)
    assert not missing, f"docs/results.md, section {stage}, does not name {missing}"
