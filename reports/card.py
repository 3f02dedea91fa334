"""Model card (Mitchell et al., 2019) built from the run's numbers, as HTML blocks and as Markdown.

A card is a list of sections `(title, blocks)`; a block is `("p", text)`,
`("ul", [text, ...])` or `("table", columns, rows)`. The HTML template and
`to_markdown` render the same blocks, so MODEL_CARD.md and the report agree.
"""

from __future__ import annotations

import re

from .collect import number
from .sections import stage_errors


def _pct(value) -> str:
    value = number(value)
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _fixed(value, digits: int = 4) -> str:
    value = number(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _kib(value) -> str:
    value = number(value)
    return "n/a" if value is None else f"{value / 1024:.1f} KiB"


def _speedup(value, noisy: bool) -> str:
    value = number(value)
    return "n/a" if value is None else f"{value:.2f}x" + (" (noisy)" if noisy else "")


def build(run, overview: dict, training: dict | None, compression: dict | None, explanation: dict | None) -> list:
    model = run.model_json
    data = run.data
    shape = data.input_shape if data else []
    family = str(run.family or model.get("family") or run.pipeline_config.get("family") or "?")
    name = data.name if data else "?"
    sections = []

    own = OWN_KINDS.get(family)      # a user's module or ONNX graph: the toolkit neither trained nor scaled it
    if own:
        details = [f"{own} supplied by its owner (not trained by the toolkit), evaluated on the '{name}' data set."]
    else:
        article = "An" if family.upper()[:1] in "AEFHILMNORSX" else "A"  # as spoken: an MLP, a CNN
        details = [f"{article} {family.upper()} classifier trained by the toolkit on the '{name}' data set."]
    facts = []
    if model.get("config"):
        facts.append(f"architecture: {model['config']}")
    if training and training.get("parameters"):
        facts.append(f"parameters: {training['parameters']}")
    if training and training.get("size_bytes"):
        facts.append(f"weights on disk: {_kib(training['size_bytes'])}")
    if model.get("class_names"):
        facts.append(f"classes: {', '.join(map(str, model['class_names']))}")
    if isinstance(model.get("training"), dict):
        t = model["training"]
        facts.append("training: AdamW, " + ", ".join(f"{k} {t[k]}" for k in ("epochs", "batch_size", "lr", "seed")
                                                     if k in t))
    versions = dict(overview.get("versions") or [])
    if versions:
        facts.append("software: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if compression and compression.get("chosen"):
        facts.append(f"compressed variant chosen for deployment: {compression['chosen'].get('name')}")
    sections.append(("Model details", [("p", " ".join(details)), ("ul", facts)]))

    sections.append(("Intended use", [
        ("p", f"Classifying inputs shaped like the '{name}' data set "
              f"({_shape_text(shape)}) into {'the classes above' if model.get('class_names') else 'its classes'}. "
              + ("" if own else "Trained as an example or baseline model; ")
              + f"{'It' if own else 'it'} has not been validated here for decisions about people, "
              "safety-critical uses, or data from a different source than its training data."),
    ]))

    if data:
        split = data.split
        text = (f"Source: {data.source or name}. Training / validation / test samples: "
                f"{data.n_train} / {data.n_val} / {data.n_test}")
        text += (", held-out test set supplied by the user" if split.test_given
                 else f", split stratified with seed {split.seed}" if split.stratified else "")
        text += "." if own else ". Inputs are standardised with statistics of the training split, stored with the model."
        if training and training.get("refit"):
            text += (f" After early stopping the model was trained again on the training and validation samples "
                     f"together ({training['refit']['epochs']} epochs); its validation figures are those of the "
                     "first run, on samples held out from it.")
        sections.append(("Training and evaluation data", [("p", text)]))

    sections.append(("Metrics", [("p", _metrics_text(training, compression, explanation))]))

    quant = []
    if training and training.get("scores"):
        quant.append(("table", ["split", "accuracy", "loss"],
                      [[s["split"], _pct(s["accuracy"]), _fixed(s["loss"])]
                       for s in training["scores"]]))
    if training and training.get("per_class"):
        worst = sorted((r for r in training["per_class"] if number(r["recall"]) is not None and r["recall"] < 1),
                       key=lambda r: r["recall"])[:3]          # classes recalled in full are no one's lowest
        if worst:
            quant.append(("p", "Lowest test recall: " + ", ".join(f"class {r['class']} {_pct(r['recall'])}"
                                                                   for r in worst) + "."))
    if compression and compression.get("variants"):
        quant.append(("p", "Compression deltas against the fp32 model (accuracy drop in percentage points; "
                           "a negative drop is a gain). The speed-up is the median, over interleaved timing rounds, "
                           "of the fp32 model's time divided by the variant's in the same round; \"noisy\" marks "
                           "one whose per-round ratios spread by more than a quarter of their median, not to be "
                           "relied on:"))
        quant.append(("table", ["variant", "test accuracy", "drop (points)", "top-1 agreement with fp32", "size",
                                "size ratio", "speed-up (batch 1)"],
                      [[r["name"] + (" (chosen)" if r.get("chosen") else ""), _pct(r["accuracy"]),
                        "n/a" if r["drop"] is None else f"{r['drop']:+.2f}", r.get("agreement") or "n/a",
                        _kib(r["disk"]),
                        "n/a" if r["size_ratio"] is None else f"{r['size_ratio']:.2f}x",
                        _speedup(r["speedup"], r.get("noisy1"))] for r in compression["variants"]]))
    if explanation and explanation.get("drift_rows"):
        quant.append(("p", "Explanation drift after compression: each compared variant's test accuracy and drop "
                           "against the original, as the explain stage measured them, and whether its attributions "
                           "moved away from the original's:"))
        quant.append(("table", ["variant", "method", "test accuracy", "drop (points)", "drift", "verdict"],
                      [[r["variant"], r["method"], _pct(r["accuracy"]),
                        "n/a" if number(r["drop"]) is None else f"{r['drop']:+.2f}", r.get("status") or "n/a",
                        r.get("verdict") or ""] for r in explanation["drift_rows"]]))
    if explanation and explanation.get("flags"):
        drift = set(explanation.get("drift_flags") or ())  # the rest are the explanations' own quality checks
        quant.append(("ul", [("explanation drift: " if f in drift else "explanation quality: ") + f
                             for f in explanation["flags"]]))
    sections.append(("Quantitative analyses", quant or [("p", "No evaluation results were recorded.")]))

    caveats = ["Measured on one held-out split of one data set; accuracy on other data can be lower."]
    if getattr(run, "replaced", None):
        caveats.append(run.replaced[0].upper() + run.replaced[1:] + ".")
    if compression:
        threads = compression.get("threads") or {}
        caveats.append("Latency figures are medians per call of 1 and of 256 rows, timed on one thread and on "
                       f"{threads.get('timed', threads.get('all', '?'))} threads (the cores free then); speed-ups are "
                       "single-thread. They come from the machine that ran the pipeline and change with hardware "
                       "and threads" + (f"; they were timed on its GPU ({compression['gpu']}), host arrays in "
                                        "and logits back." if compression.get("gpu") else "."))
        caveats += [str(n) for n in compression.get("notes") or () if "test split" in str(n)]   # fidelity's
    if training and training.get("interrupted"):
        caveats.append("Training was interrupted; the best model so far was kept.")
    if explanation and explanation.get("quality"):
        caveats.append("Attributions explain this model's behaviour, not causes in the data; see the quality "
                       "verdicts in the report before trusting a method.")
    if getattr(run.pipeline, "status", None) in ("running", "interrupted"):
        caveats.append("The pipeline did not finish: stages marked unfinished, interrupted or not run have no "
                       "results here.")
    for e in stage_errors(run):
        caveats.append(f"the {e.stage} stage failed: {e.message}")
    sections.append(("Caveats and recommendations", [("ul", caveats)]))
    return sections


def _metrics_text(training: dict | None, compression: dict | None, explanation: dict | None) -> str:
    """What the card's figures are, named from the sections present (a compress-only card has no per-split loss,
    an explain-only one the drift of the variants it compared)."""
    said = []
    if training and training.get("scores"):
        said.append("accuracy and cross-entropy loss on the training, validation and test splits")
    if training and training.get("per_class"):
        said.append("per-class precision and recall on the test split")
    if compression and compression.get("variants"):
        where = f"its GPU ({compression['gpu']})" if compression.get("gpu") else "the CPU"
        agreement = ", top-1 agreement with it" if any(r.get("agreement") for r in compression["variants"]) else ""
        said.append(f"for each compressed variant: test accuracy and its drop against the fp32 model{agreement}, file "
                    f"size and size ratio, and the speed-up at batch 1 (median of per-round latency ratios, timed on "
                    f"{where})")
    if explanation and explanation.get("drift_rows"):
        said.append("for each variant compared by the explain stage: test accuracy, its drop against the original and "
                    "whether its attributions drifted (top-k overlap, cosine, top inputs' shares)")
    if explanation and explanation.get("quality"):
        said.append("quality checks of each attribution method")
    if not said:
        return "No metrics were recorded."
    text = "; ".join(said)
    return text[0].upper() + text[1:] + "."


OWN_KINDS = {"custom": "A PyTorch module", "onnx": "An ONNX graph"}
TASKS = {"features": "tabular-classification", "image": "image-classification"}


def for_variant(sections: list, metadata: dict, row: dict, model: dict) -> tuple[list, dict]:
    """The card of the chosen variant's directory: the run's card with the variant's own model details (its
    architecture, files and accuracy, the original's beside it) and the variant's accuracy first in the metadata."""
    (title, blocks), rest = sections[0], sections[1:]
    facts = [f for f in (blocks[1][1] if len(blocks) > 1 else []) if not f.startswith(
        ("architecture:", "parameters:", "weights on disk:", "compressed variant chosen"))]
    ours = [f"variant: {row.get('name')}, compressed by the toolkit from the model described below"]
    if isinstance(model.get("config"), dict):
        ours.append(f"architecture: {model['config']}")
    ours.append(f"size of the model file(s) it serves from: {_kib(row.get('disk'))} (its directory may also keep "
                "PyTorch weights, which serving does not read)")
    ours += _routed_facts(row)
    ours.append(f"speed-up against the original, single thread: {_speedup(row.get('speedup256'), row.get('noisy256'))}"
                f" at batch 256, {_speedup(row.get('speedup'), row.get('noisy1'))} at batch 1")
    ours.append(f"test accuracy: {_pct(row.get('accuracy'))} (drop against the original: "
                + ("n/a" if number(row.get("drop")) is None else f"{row['drop']:+.2f} points") + ")")
    if row.get("agreement"):   # the fidelity rule the variant was chosen by
        ours.append(f"top-1 agreement with the original on the test split: {row['agreement']}")
    variant_sections = [(title, [("p", f"The '{row.get('name')}' variant of this model. " + blocks[0][1]),
                                 ("ul", ours + facts)]), *rest]
    meta = json_copy(metadata)
    for entry in meta.get("model-index") or []:
        for result in entry.get("results") or []:
            mine = [m for m in result.get("metrics", []) if f"the {row.get('name')} variant" in str(m.get("name"))]
            result["metrics"] = mine + [m for m in result.get("metrics", []) if m not in mine]
    return variant_sections, meta


def _routed_facts(row: dict) -> list[str]:
    """What a routed variant ships (schema 3): two graphs, which calls each answers, and on how many test rows
    their classes differ (auto's note). Its name alone said none of it."""
    if not row.get("small_batch"):
        return []
    differ = [str(n) for n in row.get("notes") or () if str(n).startswith("its two members")]
    return [f"two graphs in one artifact, routed by the size of each call: {row['small_batch']} (in small-batch/); "
            f"the rest: {row.get('runtime')} (its model.onnx); the size above counts both files", *differ]


def json_copy(obj):
    import copy

    return copy.deepcopy(obj)


def front_matter(run, training: dict | None, compression: dict | None, explanation: dict | None = None) -> dict:
    """The Hugging Face model-card metadata (YAML front matter): license, datasets, metrics and a model-index
    entry per measured accuracy. The license is "unknown" until the model's owner sets one."""
    model, data = run.model_json, run.data
    name = str(data.name) if data else "unknown"
    family = str(run.family or model.get("family") or "model")
    task = TASKS.get(str(data.layout) if data else "", "other")
    results = []
    scores = {s["split"]: s["accuracy"] for s in (training or {}).get("scores", [])
              if number(s.get("accuracy")) is not None}
    baseline = next((v for v in (compression or {}).get("variants", []) if v.get("method") == "baseline"), None)
    if "test" not in scores and baseline and number(baseline.get("accuracy")) is not None:
        scores["test"] = baseline["accuracy"]    # a compress-only run: the original, as compress measured it
    metrics = [{"type": "accuracy", "value": round(float(scores[split]), 6), "name": f"{split} accuracy"}
               for split in ("test",) if split in scores]
    chosen = next((v for v in (compression or {}).get("variants", []) if v.get("chosen")), None)
    if compression is None:     # an explain-only run: the variants it compared, as it measured them
        seen = {}
        for r in (explanation or {}).get("drift_rows") or []:
            if number(r.get("accuracy")) is not None:
                seen.setdefault(r["variant"], r["accuracy"])
        metrics += [{"type": "accuracy", "value": round(float(a), 6), "name": f"test accuracy of the {v} variant"}
                    for v, a in seen.items()]
    if chosen and number(chosen.get("accuracy")) is not None:
        metrics.append({"type": "accuracy", "value": round(float(chosen["accuracy"]), 6),
                        "name": f"test accuracy of the {chosen['name']} variant"})
    fidelity = (chosen or {}).get("fidelity")
    if fidelity and number(fidelity.get("agreement")) is not None:
        metrics.append({"type": "agreement", "value": round(float(fidelity["agreement"]), 6),
                        "name": f"test top-1 agreement of the {chosen['name']} variant with the original "
                                f"(95% CI {fidelity['low']:.4f}-{fidelity['high']:.4f}, n={fidelity['n']})"})
    if metrics:
        results.append({"task": {"type": task}, "dataset": {"name": name, "type": name, "split": "test"},
                        "metrics": metrics})
    onnx = ["onnx"] if chosen and "onnxruntime" in (chosen.get("runtime"), chosen.get("small_runtime")) else []
    # a user's ONNX graph (family "onnx") has no PyTorch weights anywhere in its runs; its family is the onnx tag
    library = "onnx" if family == "onnx" else "pytorch"
    tags = list(dict.fromkeys(["toolkit", family, task, *onnx]))
    return {"license": "unknown", "library_name": library, "tags": tags,
            "datasets": [name], "metrics": ["accuracy"], "pipeline_tag": task if task != "other" else None,
            "model-index": [{"name": f"{name}-{family}", "results": results}]}


def license_set(path) -> str | None:
    """The license the model's owner set in the front matter of a card the toolkit wrote at `path` (kept when the
    card is rewritten), or None: no card, no front matter, or the license left "unknown"."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8") if path.stat().st_size < 2**20 else ""
    except OSError:
        return None
    parts = text.split("\n---\n", 1) if text.startswith("---\n") else []
    try:
        front = yaml.safe_load(parts[0][4:]) if len(parts) == 2 else None
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if isinstance(value, (str, int, float)) and str(value).strip() not in ("", "unknown") else None


def _yaml_block(metadata: dict) -> list[str]:
    import yaml

    clean = {k: v for k, v in metadata.items() if v is not None}
    return ["---", yaml.safe_dump(clean, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]


# Markdown's inline syntax: code spans, emphasis, links and images (`[`), strikethrough. An underscore inside a
# word emphasises nothing (CommonMark), so `integrated_gradients` keeps its plain spelling; parentheses and `!`
# make a link or an image only after a `[`, escaped here, so "(chosen)" stays as written.
_INLINE = re.compile(r"([\\`*\[\]~$])|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")   # $: maths on GitHub, Hugging Face
# what makes a line a heading, a list item or a thematic break when it starts a paragraph or a list item
_LEADING = re.compile(r"^(\s*)(#|[-+]|\d+(?=[.)]))(?=[.)]?(\s|$))")


def _md_escape(text) -> str:
    """Keep user-supplied names as text in Markdown viewers: no raw HTML, no table breaks, and no live Markdown
    (a class named `[click](javascript:...)` is no link, `*em*` no emphasis), backslash-escaped so it reads as
    typed."""
    text = str(text).replace("\n", " ")
    text = _INLINE.sub(lambda m: "\\" + m.group(0), text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _md_line(text) -> str:
    """`_md_escape` for text that starts a line (a paragraph, a list item): a leading `#`, `-`, `+` or `1.`
    would otherwise make it a heading, a nested list or a numbered one."""
    def escape(m):
        marker = m.group(2)
        return m.group(1) + (marker + "\\" if marker[0].isdigit() else "\\" + marker)

    return _LEADING.sub(escape, _md_escape(text), count=1)


def to_markdown(title: str, sections: list, metadata: dict | None = None) -> str:
    """The card as Markdown; with `metadata`, preceded by it as YAML front matter (see `front_matter`)."""
    lines = (_yaml_block(metadata) if metadata else []) + [f"# {_md_line(title)}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if block[0] == "p":
                lines += [_md_line(block[1]), ""]
            elif block[0] == "ul":
                lines += [f"- {_md_line(item)}" for item in block[1]] + [""]
            elif block[0] == "table":
                columns, rows = block[1], block[2]
                lines.append("| " + " | ".join(map(_md_escape, columns)) + " |")
                lines.append("|" + "---|" * len(columns))
                lines += ["| " + " | ".join(map(_md_escape, row)) + " |" for row in rows]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _shape_text(shape) -> str:
    """A sample's shape in words: 6 features, 1 x 64 (channels x length), 3 x 32 x 32 (channels x height x width)."""
    shape = [int(d) for d in shape or ()]
    if len(shape) == 1:
        return f"{shape[0]} feature{'s' if shape[0] != 1 else ''}"
    names = {2: "channels x length", 3: "channels x height x width"}.get(len(shape))
    return " x ".join(map(str, shape)) + (f", {names}" if names else "") if shape else "see model.json"
