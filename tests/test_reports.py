"""`render_report` and `toolkit report`: sections only when their data exists, escaping, no URLs, bad inputs,
results read through their versioned schema."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from fake_runs import (HOSTILE, compress_result, make_run, train_result, variant_row, write_compress, write_explain, write_pipeline,
                       write_result, write_train)
from reports import ReportError, render_report
from trainers.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"train": 'id="training"', "compress": 'id="compression"', "explain": 'id="explanation"'}
ALL_SUBSETS = [c for n in range(1, 4) for c in itertools.combinations(("train", "compress", "explain"), n)]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


@pytest.mark.parametrize("stages", ALL_SUBSETS, ids="+".join)
def test_each_section_appears_only_when_its_stage_ran(tmp_path, stages):
    run = make_run(tmp_path / "run", stages)
    html = render_report(run).read_text(encoding="utf-8")
    for stage, marker in SECTIONS.items():
        assert (marker in html) == (stage in stages), stage
        assert (f'href="#{marker[4:-1]}"' in html) == (stage in stages), f"table of contents entry for {stage}"
    assert 'id="overview"' in html and 'id="model-card"' in html
    for png in images(html):
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_full_report_has_every_figure_and_number(tmp_path):
    run = make_run(tmp_path / "run")
    html = render_report(run).read_text(encoding="utf-8")
    for caption in ("learning curves", "confusion matrix", "Pareto", "on-disk size", "global importance",
                    "sample attributions"):
        assert caption in html, caption
    assert "not a PNG" not in html  # listed by the stage, but a GIF named .png: not inlined
    assert len(images(html)) == 6
    # variants table: accuracy, size, latency at both batch sizes, speedup, size ratio, parity
    assert "int8-static-onnx" in html and "99.0% agree" in html and "fastest at batch 256" in html
    assert "89.70%" in html and "1.2 KiB" in html and "3.41×" in html
    assert "faithful: removing the top inputs" in html and "relies on different inputs" in html
    assert "agrees with the original" in html and "[0.88, 0.94]" in html and "training mean" in html
    numbers = json.loads((run / "report.json").read_text())
    assert numbers["training"]["scores"][2] == {"split": "test", "accuracy": 0.9, "loss": 0.3}
    assert [v["name"] for v in numbers["compression"]["variants"]] == ["fp32-torch", "int8-static-onnx",
                                                                        "prune-structured-50"]
    assert numbers["compression"]["chosen"]["name"] == "int8-static-onnx"
    assert numbers["compression"]["variants"][1]["nominal"] == 1000  # 1000 int8 parameters
    card = (run / "MODEL_CARD.md").read_text()
    for heading in ("Model details", "Intended use", "Training and evaluation data", "Metrics",
                    "Quantitative analyses", "Caveats and recommendations"):
        assert f"## {heading}" in card
    assert "int8-static-onnx (chosen)" in card and (run / "train" / "MODEL_CARD.md").is_file()


def test_single_stage_run_dir_and_reproduce_command(tmp_path):
    write_train(tmp_path / "t")
    html = render_report(tmp_path / "t").read_text()
    assert "toolkit train toy.csv --model mlp --epochs 5" in html
    assert 'id="training"' in html and 'id="compression"' not in html


def test_hostile_names_are_escaped(tmp_path):
    run = make_run(tmp_path / "run", class_names=(HOSTILE, "b&b", '"q"'), feature_names=[HOSTILE, "x", "y", "z"])
    html = render_report(run).read_text(encoding="utf-8")
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    card = (run / "MODEL_CARD.md").read_text()
    assert HOSTILE not in card and "&lt;script&gt;" in card


def test_no_url_to_load_and_one_file(tmp_path):
    html = render_report(make_run(tmp_path / "run")).read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert not re.search(r'(src|href)="(?!data:|#)', html), "every src/href is inline data or an anchor"
    assert "@import" not in html and "url(" not in html


def _edit(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("where, change, message", [
    ("train", lambda r: r.update(schema_version=99), "has train schema_version 99; this toolkit reads version 1"),
    ("compress", lambda r: r.pop("schema_version"), "has no schema_version"),
    ("explain", lambda r: r.update(schema_version="1"), "has explain schema_version '1'"),
    ("pipeline.json", lambda r: r.update(schema_version=99), "has pipeline schema_version 99"),
], ids=["newer", "missing", "a-string", "pipeline"])
def test_unknown_schema_version_is_refused_with_one_line(tmp_path, where, change, message):
    run = make_run(tmp_path / "run")
    write_pipeline(run)
    path = run / where if where.endswith(".json") else run / where / "result.json"
    _edit(path, change)
    with pytest.raises(ReportError, match=message) as info:
        render_report(run)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    result = run_cli("report", run)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], result.stderr
    assert not (run / "report.html").exists()


@pytest.mark.parametrize("change, message", [
    (lambda r: r["metrics"].update(test_accuracy="high"), "metrics.test_accuracy: input should be a valid number"),
    (lambda r: r.pop("history"), "history: field required"),
    (lambda r: r.update(test_acc=0.9), "test_acc: unknown field, not in train results of version 2"),
    (lambda r: r["history"][0].update(epoch=True), "history.0.epoch: input should be a valid integer"),
    (lambda r: r.update(stage="deploy"), "'stage' is 'deploy'; expected one of train, compress, explain"),
], ids=["wrong-type", "missing", "unknown-field", "bool-for-int", "unknown-stage"])
def test_result_that_breaks_its_schema_is_refused(tmp_path, change, message):
    write_train(tmp_path)
    _edit(tmp_path / "result.json", change)
    with pytest.raises(ReportError, match=message):
        render_report(tmp_path)


def test_result_in_the_wrong_stage_directory_is_refused(tmp_path):
    run = make_run(tmp_path / "run", ("train", "compress"))
    (run / "compress" / "result.json").write_text((run / "train" / "result.json").read_text())
    with pytest.raises(ReportError, match="holds a train result, expected compress"):
        render_report(run)


def test_diverged_loss_shows_as_a_dash(tmp_path):
    """NaN is a valid number in a result (a diverged loss); the report shows it as a dash, not 'nan'."""
    write_train(tmp_path)
    metrics = train_result().metrics.model_copy(update={"test_loss": float("nan")})
    write_result(tmp_path / "result.json", train_result(seconds=float("nan"), metrics=metrics))
    render_report(tmp_path)
    def strict(constant):
        raise AssertionError(f"report.json holds {constant}, which strict JSON parsers refuse")

    numbers = json.loads((tmp_path / "report.json").read_text(), parse_constant=strict)
    assert numbers["training"]["scores"][2]["loss"] is None
    html = (tmp_path / "report.html").read_text()
    assert re.search(r'<td>test</td><td class="num">90.00%</td><td class="num">–</td>', html)
    assert "| test | 90.00% | n/a |" in (tmp_path / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("epochs, expected", [
    (0, "<p>No epoch finished, 1.5 s; 1000 parameters, 4.0 KiB of weights."),
    (5, "<p>5 epochs run, best weights from epoch 4, 1.5 s; 1000 parameters, 4.0 KiB of weights."),
])
def test_the_training_paragraph_reads_as_a_sentence_when_stopped_in_the_first_epoch(tmp_path, epochs, expected):
    write_train(tmp_path)
    write_result(tmp_path / "result.json", train_result(epochs_run=epochs, best_epoch=min(epochs, 4),
                                                        interrupted=epochs == 0))
    assert expected in render_report(tmp_path).read_text()


def test_a_refitted_model_is_reported_as_such_and_a_version_1_result_still_renders(tmp_path):
    from trainers.schema import Refit, TrainResultFileV1

    write_train(tmp_path)
    history = train_result().history[:4]
    write_result(tmp_path / "result.json", train_result(refit=Refit(epochs=4, rows=1437, seconds=0.25, history=history)))
    render_report(tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["training"]["refit"] == {"epochs": 4, "rows": 1437,
                                                                                      "seconds": 0.25}
    assert "1437 rows, 4 epochs at the same learning rates" in (tmp_path / "report.html").read_text()
    assert "trained again on the training and validation samples together (4 epochs)" in (
        tmp_path / "MODEL_CARD.md").read_text()
    old = TrainResultFileV1(**{k: v for k, v in train_result().dump().items() if k not in ("refit", "schema_version")})
    write_result(tmp_path / "result.json", old)
    render_report(tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["training"]["refit"] is None
    assert "trained again" not in (tmp_path / "report.html").read_text()


def test_report_out_option_and_report_json_beside_it(tmp_path):
    run = make_run(tmp_path / "run", ("train",))
    result = run_cli("report", run, "--out", tmp_path / "elsewhere" / "r.html")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "elsewhere" / "r.html")
    assert (tmp_path / "elsewhere" / "r.json").is_file()
    # A report outside the run takes its card beside it and writes nothing into the run, so a card of the user's
    # there does not block it.
    assert (tmp_path / "elsewhere" / "r.md").read_text().startswith("---")
    assert not (run / "MODEL_CARD.md").exists() and not (run / "report.html").exists()
    (run / "MODEL_CARD.md").write_text("my own card\n")
    again = run_cli("report", run, "--out", tmp_path / "elsewhere" / "r.html", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["model_cards"] == [str(tmp_path / "elsewhere" / "r.md")]
    assert (run / "MODEL_CARD.md").read_text() == "my own card\n"


@pytest.mark.parametrize("setup, message", [
    (lambda p: p.mkdir(), "no results in"),
    (lambda p: None, "run directory not found"),
    (lambda p: p.write_text("x"), "not a run directory"),
    (lambda p: (p.mkdir(), (p / "result.json").write_text("{broken")), "cannot read result file"),
    (lambda p: (p.mkdir(), (p / "train").mkdir(), (p / "train" / "result.json").write_text("[1, 2]")),
     "does not hold a JSON object"),
], ids=["empty-dir", "missing", "a-file", "corrupt-json", "json-array"])
def test_bad_run_dirs_exit_2_with_one_line(tmp_path, setup, message):
    target = tmp_path / "run"
    setup(target)
    result = run_cli("report", target)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    with pytest.raises(ToolkitError):  # a ReportError
        render_report(target)


def test_failed_pipeline_stage_is_shown(tmp_path):
    run = make_run(tmp_path / "run", ("train",))
    write_pipeline(run, failed="compress", message="boom <b>")
    html = render_report(run).read_text()
    assert "Stages that failed" in html and "boom &lt;b&gt;" in html and "(exit code 2)" in html
    assert "not run" in html and 'id="compression"' not in html
    assert "the compress stage failed: boom" in (run / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("status", ["interrupted", "failed"])
def test_a_report_rendered_after_the_pipeline_s_report_stopped_shows_the_report_done(tmp_path, status):
    """`toolkit report RUN` after a Ctrl-C (or an error) in the pipeline's report stage: the page is the report,
    so it does not say its own rendering was interrupted or failed."""
    from trainers.schema import StageError

    run = make_run(tmp_path / "run")
    record = write_pipeline(run)
    record.stages[-1] = record.stages[-1].model_copy(update={"status": status, "reason": "Ctrl-C", "seconds": 0.4})
    errors = [StageError(stage="report", message="disk <full>", code=2)] if status == "failed" else []
    write_result(run / "pipeline.json", record.model_copy(update={"errors": errors}))
    html = render_report(run).read_text()
    row = re.search(r'<tr class="status-(\w+)"><td>report</td><td>([^<]*)</td>', html)
    assert row.group(1) == "done" and f"own rendering was {status}" in row.group(2)
    assert "Stages that failed" not in html and "disk &lt;full&gt;" not in html
    assert "report stage failed" not in (run / "MODEL_CARD.md").read_text()


def test_pipeline_dir_with_only_a_failure_still_renders(tmp_path):
    write_pipeline(tmp_path, failed="train", message="bad data")
    html = render_report(tmp_path).read_text()
    assert "bad data" in html and 'id="training"' not in html


def test_report_stays_small(tmp_path):
    path = render_report(make_run(tmp_path / "run", class_names=[str(i) for i in range(10)]))
    assert path.stat().st_size < 1_000_000


def test_single_compress_run_dir_command_and_card_in_chosen_variant(tmp_path):
    write_compress(tmp_path / "c")
    html = render_report(tmp_path / "c").read_text()
    assert "toolkit compress ../train --data toy.csv --method auto --max-drop 0.5" in html
    assert 'id="compression"' in html and 'id="training"' not in html and "mlp" in html
    run = make_run(tmp_path / "run")
    variant = run / "compress" / "variants" / "int8-static-onnx"
    variant.mkdir(parents=True)
    (variant / "model.json").write_text('{"family": "mlp", "config": {"hidden": [8]}}')
    render_report(run)
    mine, runs = (variant / "MODEL_CARD.md").read_text(), (run / "MODEL_CARD.md").read_text()
    assert "int8-static-onnx (chosen)" in mine
    # the deployed artifact's card describes it, not the fp32 original it came from
    assert "- architecture: {'hidden': \\[8\\]}" in mine and "architecture: {'hidden': \\[16\\]}" not in mine
    assert "variant: int8-static-onnx" in mine and "test accuracy: 89.70% (drop against the original: +0.30" in mine
    assert "1.2 KiB" in mine and "weights on disk" not in mine and "parameters: 1000" not in mine
    metrics = yaml.safe_load(mine.split("---")[1])["model-index"][0]["results"][0]["metrics"]
    assert metrics[0]["value"] == 0.897 and metrics[1]["value"] == 0.9
    assert "variant: int8-static-onnx" not in runs and "architecture: {'hidden': \\[16\\]}" in runs


def test_a_routed_variant_s_card_says_it_ships_two_graphs_which_calls_each_answers_and_how_they_were_timed(tmp_path):
    """The routed artifact's card named it only: now its two graphs, the cut, the rows they disagree on, its
    speed-up at the batch it was chosen at, and the threads and batch sizes of the latency figures."""
    from trainers.schema import Serve

    name = "int8-static-onnx+below-b16-int8-weights-onnx"
    differ = "its two members give the same class on 99.7% of the 360 test rows (1 differ): ..."
    routed = variant_row(name, "int8-static", 0.9, 0.0, 2400, 0.01, 0.8, runtime="onnxruntime", notes=[differ],
                         serve=Serve(below_batch=16, small="int8-weights-onnx", small_runtime="onnxruntime"))
    run = make_run(tmp_path / "run", ("train",))
    result = compress_result(routed)
    write_result(run / "compress" / "result.json",
                 result.model_copy(update={"chosen": result.chosen.model_copy(update={"name": name,
                                                                                     "path": f"variants/{name}"})}))
    variant = run / "compress" / "variants" / name
    variant.mkdir(parents=True)
    (variant / "model.json").write_text('{"family": "mlp", "config": {"hidden": [8]}}')
    render_report(run)
    card = (variant / "MODEL_CARD.md").read_text()
    assert "two graphs in one artifact" in card and "calls under 16 rows: onnxruntime (int8-weights-onnx)" in card
    assert "(1 differ)" in card and "2.50x at batch 256, 5.00x at batch 1" in card
    assert "per call of 1 and of 256 rows, timed on one thread and on 2 threads" in (run / "MODEL_CARD.md").read_text()


def test_the_cards_give_the_chosen_variant_s_agreement_with_the_original(tmp_path):
    """Agreement is the fidelity rule the variant was chosen by; the card that ships with it must state it."""
    from trainers.schema import Fidelity

    run = make_run(tmp_path / "run", ("train",))
    fidelity = Fidelity(agreement=0.9667, n=30, agreeing=29, margin=0.05, wilson_low=0.8333, wilson_high=0.9941,
                        min_agreement=0.97, passes=True)
    result = compress_result()
    rows = [r.model_copy(update={"fidelity": fidelity}) if r.name == "int8-static-onnx" else r for r in result.variants]
    write_result(run / "compress" / "result.json", result.model_copy(update={"variants": rows}))
    variant = run / "compress" / "variants" / "int8-static-onnx"
    variant.mkdir(parents=True)
    (variant / "model.json").write_text('{"family": "mlp", "config": {"hidden": [8]}}')
    render_report(run)
    shown = "96.7% (95% CI 83.3-99.4%, n=30)"
    for card in (run / "MODEL_CARD.md", variant / "MODEL_CARD.md"):
        text = card.read_text()
        assert "| top-1 agreement with fp32 |" in text
        assert f"| int8-static-onnx (chosen) | 89.70% | +0.30 | {shown} |" in text
        metrics = yaml.safe_load(text.split("---")[1])["model-index"][0]["results"][0]["metrics"]
        agreement = next(m for m in metrics if m["type"] == "agreement")
        assert agreement["value"] == 0.9667 and "n=30" in agreement["name"] and "0.8333-0.9941" in agreement["name"]
    mine = (variant / "MODEL_CARD.md").read_text()
    assert f"- top-1 agreement with the original on the test split: {shown}" in mine
    metrics = yaml.safe_load(mine.split("---")[1])["model-index"][0]["results"][0]["metrics"]
    assert [m["type"] for m in metrics] == ["accuracy", "agreement", "accuracy"]   # the variant's own first


def test_a_noisy_speed_up_is_marked_at_its_batch_size_and_the_figure_says_what_it_is(tmp_path):
    """One badge per row did not say which batch size was noisy, and the card marked none; "Speedup (p50)" read as
    the ratio of the p50 columns, which the median of per-round ratios need not equal."""
    run = tmp_path / "c"
    write_compress(run, variant_row("noisy-at-1", "prune-structured", 0.9, 0.0, 2000, 0.04, 1.0, noisy=["b1_t1"]),
                   variant_row("noisy-at-256", "prune-structured", 0.9, 0.0, 2000, 0.04, 1.0, noisy=["b256_t1"]))
    html = render_report(run).read_text()
    assert "median, over interleaved timing rounds" in html and "Speedup (p50)" not in html
    cells = {name: re.findall(r'<td class="num">([^<]*×)( <span class="badge warn">noisy</span>)?</td>', row)
             for name, row in re.findall(r"<strong>([\w-]+)</strong>(.*?)</tr>", html, re.S)}
    assert [bool(noisy) for _, noisy in cells["noisy-at-1"][:2]] == [True, False]
    assert [bool(noisy) for _, noisy in cells["noisy-at-256"][:2]] == [False, True]
    assert not any(noisy for _, noisy in cells["int8-static-onnx"])
    card = (run / "MODEL_CARD.md").read_text()
    assert "| 1.25x (noisy) |" in re.search(r"\| noisy-at-1 \|.*", card).group(0)
    assert "noisy" not in re.search(r"\| noisy-at-256 \|(.*)", card).group(1)
    assert "median, over interleaved timing rounds" in card


def test_figures_keep_many_classes_and_long_variant_names_legible():
    """100 classes drew 100 overlapping tick labels; names cut at 40 characters made
    prune-structured-20-uniform+int8-static-onnx and its -lean- twin read the same in legend and axis."""
    from trainers import figures

    fig = figures.confusion_matrix([[1] * 100 for _ in range(100)], [f"class {i}" for i in range(100)])
    for ticks in (fig.axes[0].get_xticklabels(), fig.axes[0].get_yticklabels()):
        assert 10 <= len(ticks) <= figures.MAX_TICK_LABELS and ticks[0].get_text() == "class 0"
    names = ["prune-structured-20-uniform+int8-static-onnx", "prune-structured-20-uniform+int8-static-lean-onnx",
             "prune-structured-20-uniform+int8-static-lean-onnx-with-a-middle-x-and-more-of-the-same-tail",
             "prune-structured-20-uniform+int8-static-lean-onnx-with-a-middle-y-and-more-of-the-same-tail"]
    points = [{"name": n, "accuracy": 0.9, "size": 1000, "lat1": 0.1 + i, "lat256": 1.0 + i}
              for i, n in enumerate(names)]
    legend = [t.get_text() for t in figures.pareto(points).legends[0].get_texts()]
    bars = [t.get_text() for t in figures.size_bars([{"name": n, "disk": 1000, "nominal": 900} for n in names])
            .axes[0].get_yticklabels()]
    for labels in (legend, bars):
        assert len(set(labels)) == len(names), labels
        assert all("\n" not in label for label in labels) and all(len(label) <= 40 for label in labels[:2])


def test_the_nominal_size_counts_stored_int8_weights_and_both_models_of_a_routed_variant(tmp_path):
    """int8-weights computes in float32 (its dtype) from int8 weights: its nominal size was 4 bytes a parameter,
    larger than its file; a routed variant counted only its large member."""
    from trainers.schema import Recipe, Serve

    weights = variant_row("int8-weights-onnx", "int8-weights", 0.9, 0.0, 1500, 0.04, 1.0, runtime="onnxruntime",
                          recipe=Recipe(method="int8-weights", weight_type="int8", compute="float32"))
    routed = variant_row("int8-static-onnx+below-b128-fp32-torch", "by-batch", 0.897, 0.3, 5300, 0.04, 0.8,
                         dtype="int8", serve=Serve(below_batch=128, small="fp32-torch", small_runtime="torch"),
                         recipe=Recipe(method="by-batch", large={"method": "int8-static", "weight_type": "int8"},
                                       small={"method": "baseline"}))
    lost = routed.model_copy(update={"name": "routed-to-a-member-not-listed",
                                     "serve": Serve(below_batch=128, small="gone", small_runtime="torch")})
    write_compress(tmp_path / "c", weights, routed, lost)
    render_report(tmp_path / "c")
    rows = {r["name"]: r for r in json.loads((tmp_path / "c" / "report.json").read_text())["compression"]["variants"]}
    assert rows["int8-weights-onnx"]["nominal"] == 1000              # 1000 parameters at 8 bits
    assert rows["int8-static-onnx+below-b128-fp32-torch"]["nominal"] == 1000 + 4000   # int8 member + fp32 member
    assert rows["routed-to-a-member-not-listed"]["nominal"] is None   # not known: no bar rather than half of one
    assert rows["fp32-torch"]["nominal"] == 4000 and rows["prune-structured-50"]["nominal"] == 4000


def _card_metrics(card: str) -> tuple[str, list]:
    """The card's Metrics paragraph and its model-index metrics."""
    text = card.split("## Metrics\n\n", 1)[1].split("\n\n", 1)[0]
    return text, yaml.safe_load(card.split("---")[1])["model-index"][0]["results"][0]["metrics"]


def test_a_card_s_metrics_say_what_it_holds_and_an_explain_only_card_gives_explain_s_results(tmp_path):
    """Every card said "accuracy and cross-entropy loss on each split ... CPU latency", which a compress-only card
    (no loss) or an explain-only one (no table at all) did not hold; the explain-only card said no results were
    recorded though explain measured each variant's accuracy, drop and drift."""
    full = (render_report(make_run(tmp_path / "run")).parent / "MODEL_CARD.md").read_text()
    text, _ = _card_metrics(full)
    assert "cross-entropy loss on the training, validation and test splits" in text and "latency ratios" in text
    assert "drifted" in text and "CPU latency" not in text

    write_compress(tmp_path / "c")
    card = (render_report(tmp_path / "c").parent / "MODEL_CARD.md").read_text()
    text, metrics = _card_metrics(card)
    assert "cross-entropy" not in text and "precision" not in text and text.startswith("For each compressed variant")
    assert {m["name"]: m["value"] for m in metrics} == {"test accuracy": 0.9,     # the baseline row's, the original
                                                        "test accuracy of the int8-static-onnx variant": 0.897}

    write_explain(tmp_path / "e")
    card = (render_report(tmp_path / "e").parent / "MODEL_CARD.md").read_text()
    text, metrics = _card_metrics(card)
    assert text.startswith("For each variant compared by the explain stage") and "compressed variant:" not in text
    assert "No evaluation results were recorded" not in card
    assert "| int8-static-onnx | integrated_gradients | 89.70% | +0.30 | kept | agrees with the original" in card
    assert "| prune-structured-50 | integrated_gradients | 89.70% | +0.30 | drifted | relies on other inputs |" in card
    assert {m["name"]: m["value"] for m in metrics} == {"test accuracy of the int8-static-onnx variant": 0.897,
                                                        "test accuracy of the prune-structured-50 variant": 0.897}


def test_cards_of_single_stage_runs_and_own_models_say_only_what_holds(tmp_path):
    write_train(tmp_path / "train")
    write_compress(tmp_path / "c")                 # its parent ../train holds the model: its classes are known
    text = (render_report(tmp_path / "c").parent / "MODEL_CARD.md").read_text()
    assert "classes: a, b, c" in text and "into the classes above" in text and "Latency figures" in text
    run = tmp_path / "own"
    write_explain(run)
    result = json.loads((run / "result.json").read_text())
    result["family"], result["model"] = "onnx", "mynet.onnx"
    (run / "result.json").write_text(json.dumps(result))
    text = (render_report(run).parent / "MODEL_CARD.md").read_text()
    assert "An ONNX graph supplied by its owner (not trained by the toolkit)" in text
    assert "trained by the toolkit on" not in text and "standardised" not in text
    assert "Latency figures" not in text and "into its classes" in text     # no timing, no classes known


def test_variant_that_disagrees_with_the_original_is_marked(tmp_path):
    from trainers.schema import Fidelity

    run = make_run(tmp_path / "run")
    agreement = Fidelity(agreement=0.9, n=300, agreeing=270, margin=0.016, wilson_low=0.861, wilson_high=0.929,
                         min_agreement=0.97, passes=False)
    flipping = variant_row("prune-structured-30", "prune-structured", 0.89, 0.2, 1100, 0.03, 0.7, flips=True,
                           fidelity=agreement)
    write_compress(run / "compress", flipping)
    html = render_report(run).read_text(encoding="utf-8")
    assert "90.0% (95% CI 86.1-92.9%, n=300)" in html and "disagrees with fp32" in html
    assert html.count("disagrees with fp32") == 1
    row = html[html.index("<strong>prune-structured-30</strong>"):]
    assert row.index("disagrees with fp32") < row.index("</tr>")


def test_a_pipeline_s_reproduce_command_names_its_config_where_it_is_and_a_new_folder(tmp_path):
    from reports.collect import load_run
    from reports.sections import reproduce_command

    import shlex

    root = make_run(tmp_path / "p.partial")  # an interrupted pipeline: its config lies in <out>.partial
    (root / "config.json").write_text(json.dumps({"stage": "pipeline", "data": "/data/toy.csv", "family": "mlp",
                                                  "command": "toolkit pipeline stale --config /gone/config.yaml"}))
    parts = shlex.split(reproduce_command(load_run(root)))
    assert parts[:5] == ["toolkit", "pipeline", "/data/toy.csv", "--model", "mlp"]
    assert parts[parts.index("--config") + 1] == str(root.resolve() / "config.yaml")
    assert parts[parts.index("--out") + 1] == str(root.resolve().with_name("p.partial-rerun"))


def test_the_model_card_tells_quality_checks_from_drift(tmp_path):
    run = make_run(tmp_path / "run")
    record = json.loads((run / "explain" / "result.json").read_text())
    failed = "integrated_gradients: sanity check FAILED: not separated from a randomised model"
    record["flags"] = [failed, *record["drift"]["flags"]]
    (run / "explain" / "result.json").write_text(json.dumps(record))
    render_report(run)
    card = (run / "MODEL_CARD.md").read_text()
    assert f"explanation quality: {failed}" in card
    assert f"explanation drift: {record['drift']['flags'][0]}" in card
    assert "An MLP classifier" in card and "(4 features)" in card


MARKDOWN_NAMES = ("[click](javascript:alert(1))", "`code` *em*", "_under_ ![img](x) ~~gone~~", "$x$ cost")


def test_markdown_in_names_stays_text_in_the_model_card():
    """A class named like a Markdown link, code span or emphasis is shown as typed: no link, no formatting."""
    from markdown_it import MarkdownIt

    from reports.card import to_markdown

    card = to_markdown(MARKDOWN_NAMES[0], [("Classes", [("p", f"classes: {', '.join(MARKDOWN_NAMES)}"),
                                                        ("ul", list(MARKDOWN_NAMES)),
                                                        ("table", ["class", "recall"], [[n, "90%"] for n in MARKDOWN_NAMES])])])
    assert "\\[click\\](javascript:alert(1))" in card and "\\`code\\` \\*em\\*" in card
    assert "\\$x\\$ cost" in card          # no maths on GitHub or Hugging Face
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(card)
    assert "<a " not in html and "<img" not in html and "<code>" not in html and "<em>" not in html
    assert "<strong>" not in html and "<s>" not in html and html.count("<td>") == 2 * len(MARKDOWN_NAMES)
    for name in MARKDOWN_NAMES:
        assert html.count(name) == 4 - (name != MARKDOWN_NAMES[0]), f"{name} is not shown as typed"


def test_a_line_that_starts_like_markdown_block_syntax_stays_a_paragraph():
    from markdown_it import MarkdownIt

    from reports.card import to_markdown

    card = to_markdown("# title", [("Notes", [("p", "# not a heading"), ("p", "1. not a list"),
                                             ("ul", ["- not nested", "+ plain"]), ("p", "-0.5 stays")])])
    html = MarkdownIt("commonmark").render(card)
    assert html.count("<h1>") == 1 and "<h1># title</h1>" in html and "<h2>Notes</h2>" in html
    assert "<p># not a heading</p>" in html and "<p>1. not a list</p>" in html and "<ol" not in html
    assert "<li>- not nested</li>" in html and "<li>+ plain</li>" in html and "-0.5 stays" in card


def test_the_report_says_which_class_each_attribution_is_to(tmp_path):
    run = make_run(tmp_path / "run", ("train", "explain"))
    html = render_report(run).read_text(encoding="utf-8")
    table = html[html.index("How each attribution was computed"):]
    assert "<th>attributed to</th>" in table and "<td>predicted class</td>" in table


def test_drift_table_cells_sit_under_their_headings(tmp_path):
    """One cell per heading in every drift row, each figure under its own heading (a stray cell once shifted
    every figure one column to the right)."""
    from html.parser import HTMLParser

    class Table(HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.rows, self.cell = False, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table" and ("class", "drift") in attrs:
                self.inside = True
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif self.inside and tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    run = make_run(tmp_path / "run")
    parser = Table()
    parser.feed(render_report(run).read_text(encoding="utf-8"))
    header, *body = parser.rows
    figures = [row for row in body if len(row) > 1 and row[0].startswith("integrated_gradients")]
    assert len(figures) == 2 and all(len(row) == len(header) for row in figures)
    cell = dict(zip(header, figures[0]))
    assert cell["top-k overlap"].startswith("0.91") and cell["cosine"].startswith("0.97")
    assert cell["Spearman"].startswith("0.93") and cell["sign agreement"].startswith("0.95")
    assert cell["noise floor"] == "1.00" and cell["random floor"] == "0.16"
    # the thresholds of the other two tests the status reads, and the top input that keeps least of its share
    assert cell["top-k threshold"] == "0.70" and cell["cosine threshold"] == "0.63"
    assert cell["least share kept"] == "0.80 [0.70, 0.90]f1"          # the figure, its interval, the input
    assert dict(zip(header, figures[1]))["least share kept"] == "0.42 [0.32, 0.52]f1"


def test_the_drift_legend_names_the_three_tests_with_the_thresholds_explain_uses(tmp_path):
    """The legend once described only the top-k test; a row drifted by its cosine or a lost input's share then
    showed an overlap above its threshold beside a legend that said this could not happen."""
    from explain.compare import DRIFT_FRACTION, LOST_SHARE

    html = render_report(make_run(tmp_path / "run")).read_text(encoding="utf-8")
    legend = re.search(r"Original against each compressed variant.*?</p>", html, re.S).group(0)
    assert "three tests" in legend and "top-k overlap" in legend and "signed cosine" in legend
    assert f"{DRIFT_FRACTION} × its noise floor" in legend and f"lost below {LOST_SHARE}" in legend
    assert "Drifted when any interval lies wholly below its threshold" in legend


def test_a_report_under_another_name_inside_a_run_is_the_toolkit_s_own(tmp_path):
    """`--overwrite` must not call a report the toolkit wrote foreign because `--out` named it summary.html."""
    from trainers.rundir import MARKER, foreign_files

    run = make_run(tmp_path / "run")
    listed = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    (run / MARKER).write_text(json.dumps({"kind": "pipeline", "files": listed}))
    render_report(run, out=run / "summary.html")
    assert (run / "summary.json").is_file() and foreign_files(run) == []
    (run / ".report.html.k3x_9qab.tmp").write_text("<html>half")      # a write killed before its rename
    assert foreign_files(run) == []
    (run / "notes.md").write_text("# Model card: mine\n")
    (run / "page.html").write_text("<html>mine</html>")
    assert foreign_files(run) == ["notes.md", "page.html"]


def test_a_card_that_cannot_be_written_leaves_no_new_report(tmp_path, monkeypatch):
    """Every file of a report is staged beside its target before any is renamed into place: a folder that refuses
    the card (read-only, immutable) is one line, and the run keeps its previous report untouched."""
    import tempfile

    run = make_run(tmp_path / "run")
    render_report(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    real = tempfile.mkstemp

    def refuse_in_train(*args, **kwargs):
        if Path(kwargs.get("dir", "")).name == "train":
            raise PermissionError(13, "Permission denied", str(Path(kwargs["dir"]) / "x.tmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_in_train)
    (run / "train" / "result.json").write_text((run / "train" / "result.json").read_text())   # same content
    with pytest.raises(ToolkitError, match="cannot write .*train/MODEL_CARD.md: Permission denied"):
        render_report(run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("where, message", [("", "a file path, not a directory"),
                                            ("MODEL_CARD.md", "model card goes: name the page with .html")])
def test_report_out_that_is_no_page_is_refused_before_anything_is_written(tmp_path, where, message):
    run = make_run(tmp_path / "run")
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    with pytest.raises(ReportError, match=message):
        render_report(run, out=str(run / where) if where else "")
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before


@pytest.mark.parametrize("spelling", ["relative", "absolute", "through .."])
@pytest.mark.parametrize("target, what", [("MODEL_CARD.md", "model card goes"),
                                          ("train/MODEL_CARD.md", "model card goes"), ("report.json", "numbers go")])
def test_report_out_naming_the_run_s_own_card_or_numbers_is_refused_however_spelled(tmp_path, monkeypatch, spelling,
                                                                                    target, what):
    """Compared unresolved, `run/MODEL_CARD.md` got the page and the card under two names (the card won, no page
    was left) and `run/report.json` got the page over the run's numbers, which the toolkit then called foreign."""
    run = make_run(tmp_path / "run")
    render_report(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    out = {"relative": f"run/{target}", "absolute": str(run / target), "through ..": f"run/train/../{target}"}[spelling]
    with pytest.raises(ReportError, match=f"is where the report's {what}: name the page with .html"):
        render_report("run", out=out)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_report_out_over_an_earlier_report_s_numbers_outside_the_run_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    render_report(run, out=tmp_path / "r.html")
    for name in ("r.json", "r.md"):
        with pytest.raises(ReportError, match="is where the report's"):
            render_report(run, out=tmp_path / name)


def test_the_search_notes_reach_the_page_and_the_card_and_the_threads_timed_are_named(tmp_path):
    write_train(tmp_path / "train")
    notes = ["the all-threads settings timed with 1 thread(s), the cores free when timing began (2 on this "
             "machine); with one, they are the one-thread settings, timed once",
             "the test split has 6 rows: one changed prediction is 16.7 accuracy points"]
    write_result(tmp_path / "c" / "result.json", compress_result().model_copy(update={"search_notes": notes}))
    html = render_report(tmp_path / "c").read_text()
    assert "Notes on the search" in html and all(n in html for n in notes)
    assert "all-threads settings (1 thread: the cores free when timing began, of 2)" in html
    card = (tmp_path / "c" / "MODEL_CARD.md").read_text()
    assert "the test split has 6 rows" in card and "all-threads settings timed" not in card


def test_a_stage_done_whose_result_is_gone_says_so(tmp_path):
    run = make_run(tmp_path / "run")
    write_pipeline(run)
    (run / "compress" / "result.json").unlink()
    html = render_report(run).read_text()
    assert 'id="compression"' not in html
    assert re.search(r"<td>compress</td><td>result missing — compress/result.json is not in the run directory", html)


def test_reproduce_commands_carry_every_option_the_stage_recorded(tmp_path):
    """A train run's --select, --refit, --amp and table columns, a compress run's --ratio, --min-agreement,
    --options and --budget-seconds: the command runs the same stage again, not a default one."""
    write_train(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps({**config, "select": "val_loss", "refit": False,
                                                            "amp": True}))
    model = json.loads((tmp_path / "t" / "model.json").read_text())
    model["preprocessing"] = {"table": {"read": {"target": "y", "keep": ["id"], "drop": ["color"], "sep": ";"}}}
    (tmp_path / "t" / "model.json").write_text(json.dumps(model))
    html = render_report(tmp_path / "t").read_text()
    assert "--select val_loss --no-refit --amp --keep id --drop color --sep" in html
    write_compress(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "ratio": 0.3, "min_agreement": 0.97,
                                                            "budget_seconds": 60, "options": {"auto": {"k": 1}}}))
    html = render_report(tmp_path / "c").read_text()
    assert "--max-drop 0.5 --ratio 0.3 --min-agreement 0.97 --budget-seconds 60 --options" in html


def test_the_page_names_its_card_and_the_chosen_artifact_as_found_from_it(tmp_path):
    run = make_run(tmp_path / "run")
    html = render_report(run).read_text()
    assert "Also saved as MODEL_CARD.md." in html and "<code>compress/variants/int8-static-onnx</code>" in html
    html = render_report(run, out=tmp_path / "r.html").read_text()
    assert "Also saved as r.md." in html


def test_a_completeness_figure_is_not_shown_where_the_method_does_not_promise_it(tmp_path):
    """Grad-CAM's completeness error (0.742) beside 'completeness not expected' read as a failure."""
    run = make_run(tmp_path / "run")
    path = run / "explain" / "result.json"
    result = json.loads(path.read_text())
    result["quality"]["integrated_gradients"].update(axiom_holds=False, completeness_error=0.742)
    path.write_text(json.dumps(result))
    numbers = json.loads((render_report(run).parent / "report.json").read_text())
    shown = json.dumps(numbers["explanation"])
    assert "0.742" not in shown


def test_report_takes_the_runs_lock_and_is_refused_while_a_run_writes_there(tmp_path, capsys):
    """A report rendered while a pipeline --overwrite committed read a directory being renamed aside ("No such
    file", exit 2) and could write into the old run: it takes the lock a run holds while it writes."""
    from filelock import FileLock

    from cli.main import main
    from trainers.rundir import lock_path

    run = make_run(tmp_path / "run")
    writer = FileLock(lock_path(run), timeout=0)  # what RunDir holds while a run writes there
    writer.acquire()
    try:
        for target in (run, tmp_path / "run.partial"):  # the staging directory counts as its run
            target.mkdir(exist_ok=True)
            assert main(["report", str(target)]) == 2
            err = capsys.readouterr().err
            assert err == f"error: another toolkit run is writing {run} right now: wait for it to finish\n", err
        assert not (run / "report.html").exists()
    finally:
        writer.release()
    (tmp_path / "run.partial").rmdir()
    assert main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the lock is not left behind


@pytest.mark.parametrize("family, library, tags", [("onnx", "onnx", ["toolkit", "onnx", "image-classification"]),
                                                   ("cnn", "pytorch", ["toolkit", "cnn", "image-classification", "onnx"])])
def test_card_front_matter_names_the_library_of_the_model_and_each_tag_once(family, library, tags):
    """A user's ONNX graph served by ONNX Runtime was carded `library_name: pytorch` with the onnx tag twice (its
    family and its runtime)."""
    from types import SimpleNamespace

    from reports.card import front_matter

    run = SimpleNamespace(model_json={"family": family}, data=SimpleNamespace(name="digits", layout="image"),
                          family=family)
    chosen = {"name": "int8-weights-onnx", "method": "int8-weights", "chosen": True, "runtime": "onnxruntime",
              "accuracy": 0.97}
    meta = front_matter(run, None, {"variants": [chosen]})
    assert (meta["library_name"], meta["tags"]) == (library, tags)


@pytest.mark.parametrize("name", ["d.json", "c.md", "page.txt", "page"])
def test_report_out_not_ending_in_html_is_refused_before_anything_is_written(tmp_path, name):
    """The page is HTML: `--out d.json` wrote it there, beside d.json.json and d.json.md; a pipeline's report.out
    is held to the same."""
    from reports.config import resolve_config

    run = make_run(tmp_path / "run")
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    with pytest.raises(ReportError, match=rf"^--out .*{name}: the report is an HTML page; name it with \.html"):
        render_report(run, out=tmp_path / "rep" / name)
    assert not (tmp_path / "rep").exists()
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before
    with pytest.raises(ToolkitError, match=r"^config report\.out: value error, must name an HTML page ending in \.html"):
        resolve_config({"report": {"out": name}})


def test_report_json_gives_every_path_as_the_run_was_given(tmp_path, monkeypatch, capsys):
    """`report runs/X --json` gave the page and numbers relative and the cards absolute, in one object."""
    from cli.main import main

    make_run(tmp_path / "runs" / "x")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["report", "runs/x", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    paths = [written["report"], written["numbers"], written["model_card"], *written["model_cards"]]
    assert written["report"] == "runs/x/report.html" and written["model_card"] == "runs/x/MODEL_CARD.md"
    assert len(written["model_cards"]) > 1 and all(p.startswith("runs/x/") for p in paths), paths
    assert all((tmp_path / p).is_file() for p in paths)


@pytest.mark.parametrize("replaced", [False, True])
def test_a_compress_report_says_when_the_model_it_names_was_replaced_and_leaves_that_models_fields_out(
        tmp_path, replaced):
    from trainers.errors import ToolkitWarning

    run = tmp_path / "c1"
    write_compress(run)  # its parent: ../train, beside it
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "model.json").write_text(json.dumps(
        {"family": "mlp", "config": {"hidden": [16]}, "class_names": ["a", "b", "c"],
         "training": {"seed": 7}, "weights": {"sha256": ("b" if replaced else "a") * 64}}))
    variant = run / "variants" / "int8-static-onnx"
    variant.mkdir(parents=True)
    (variant / "model.json").write_text(json.dumps({"lineage": {"parent": "../train", "parent_sha256": "a" * 64}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_report(run)
    said = [str(w.message) for w in caught if issubclass(w.category, ToolkitWarning)]
    numbers = json.loads((run / "report.json").read_text())
    card = (run / "MODEL_CARD.md").read_text()
    overview = dict(map(tuple, numbers["overview"]["rows"]))
    if replaced:
        assert len(said) == 1 and "has been replaced since this run" in said[0]
        assert "has been replaced since this run" in overview["warning"] and "has been replaced since" in card
        assert "16" not in json.dumps(numbers["model_card"])  # the new model's architecture is not shown as this one's
    else:
        assert said == [] and "warning" not in overview and "replaced" not in card
        assert "16" in json.dumps(numbers["model_card"])
