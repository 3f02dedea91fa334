"""`render_report`: one self-contained report.html (plus report.json and MODEL_CARD.md) for a run directory.

The HTML goes through a Jinja2 template with autoescaping, so names from user
data (features, classes, files) always show as text. Figures are PNG bytes
inlined as base64 `data:` URIs; the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from trainers.fileio import atomic_write_all, ensure_writable_parent
from trainers.rundir import GENERATOR, reading_run, report_wrote

from . import card, sections
from .collect import ReportError, Run, load_run, number

TEMPLATES = Path(__file__).with_name("templates")


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fixed=_fixed, pct=_pct, num=_num, kib=_kib, ms=_ms, ratio=_ratio, value=_value)
    return env


def _pct(v, digits=2):
    v = number(v)
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _fixed(v, digits=3):
    v = number(v)
    return "–" if v is None else f"{v:.{digits}f}"


def _num(v, digits=4):
    v = number(v)
    return "–" if v is None else f"{v:.{digits}g}" if abs(v) < 1e-3 and v else f"{v:.{digits}f}".rstrip("0").rstrip(".")


def _kib(v):
    v = number(v)
    return "–" if v is None else f"{v / 1024:,.1f} KiB" if v < 1024 ** 2 else f"{v / 1024 ** 2:,.2f} MiB"


def _ms(v):
    v = number(v)
    return "–" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _ratio(v):
    v = number(v)
    return "–" if v is None else f"{v:.2f}×"


def _value(v):
    """Any JSON scalar for a generic table cell."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return _num(v)
    return str(v)


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figures(section: dict | None) -> None:
    """Replace PNG bytes by data URIs (drop empty figures) in place."""
    if not section:
        return
    for key in ("_figures", "_stage_figures"):
        section[key[1:]] = [{"caption": c, "src": _uri(png), "width": _png_width(png)}
                            for c, png in (section.pop(key, None) or {}).items() if png]


def _png_width(png: bytes) -> int:
    """Pixel width from the PNG header (IHDR), so wide figures can span the page."""
    return int.from_bytes(png[16:20], "big") if len(png) >= 24 else 0


def _public(section):
    """The section without figures: the numbers that go into report.json."""
    if not isinstance(section, dict):
        return section
    return {k: v for k, v in section.items() if k not in ("figures", "stage_figures")}


def build_context(run: Run) -> dict:
    ov = sections.overview(run)
    tr = sections.training(run)
    co = sections.compression(run)
    ex = sections.explanation(run)
    model_card = card.build(run, ov, tr, co, ex)
    for section in (tr, co, ex):
        _figures(section)
    errors = [e.dump() for e in sections.stage_errors(run)]
    toc = [("overview", "Overview")]
    toc += [(k, t) for k, t, s in (("training", "Training", tr), ("compression", "Compression", co),
                                   ("explanation", "Explanation", ex)) if s]
    toc.append(("model-card", "Model card"))
    family = dict(ov["rows"]).get("model family")
    dataset = dict(ov["rows"]).get("data set")
    title = " · ".join(str(x) for x in (dataset, family) if x) or run.root.name
    return {"title": title, "run_name": run.root.name, "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "kind": "pipeline" if run.is_pipeline else next(iter(run.results), "run"),
            "toc": toc, "errors": errors, "overview": ov, "training": tr, "compression": co, "explanation": ex,
            "model_card": model_card, "card_metadata": card.front_matter(run, tr, co, ex)}


def render_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the run directory `run_dir` (one stage or a pipeline) into one HTML file.

    Also writes `report.json` (the same numbers, without figures) beside the HTML, and `MODEL_CARD.md` in the
    run directory, the trained model's and the chosen variant's; with `out` outside the run, beside the HTML
    instead, named after it (`r.html`: `r.json`, `r.md`; nothing is written into the run). `write_report`
    returns every path written.

    Returns:
        The path of the HTML report (default `<run_dir>/report.html`).

    Raises:
        ReportError: the directory is missing, holds no results, or a result is unreadable, of an unknown
            schema version, or does not match its schema.
    """
    return Path(write_report(run_dir, out)["report"])


def write_report(run_dir: str | Path, out: str | Path | None = None) -> dict:
    """`render_report`, returning what it wrote: {"report", "numbers", "model_cards": [...]} (paths as text, all
    spelled from `run_dir` and `out` as given).
    The run's lock is held meanwhile (`trainers.rundir.reading_run`): a run committing there is not read half-moved."""
    with reading_run(run_dir):
        return _write_report(run_dir, out)


def _write_report(run_dir: str | Path, out: str | Path | None) -> dict:
    run = load_run(run_dir)
    if out is not None and (Path(out).is_dir() or not Path(out).name):
        raise ReportError(f"--out must be a file path, not a directory: {out}")
    out, numbers_path, cards = _targets(run, out)
    _refuse_own_files(run, out, numbers_path, cards)
    for path in (out, numbers_path, *cards):  # all checked before anything is written
        refuse_foreign(path)
    if out.suffix != ".html":  # an HTML page in x.json, beside x.json.json and x.json.md, is no one's intent
        page = out.with_suffix(".html")
        raise ReportError(f"--out {out}: the report is an HTML page; name it with .html, e.g. {page} (its numbers "
                          f"and card go beside it: {page.with_suffix('.json').name}, {page.with_suffix('.md').name})")
    ensure_writable_parent(out)  # one clear line for a parent that is a file or cannot be created
    context = build_context(run)
    card_file = os.path.relpath(cards[0], out.parent) if cards else "MODEL_CARD.md"   # as the page's reader finds it
    html = _environment().get_template("report.html.j2").render(**context, card_file=card_file)
    numbers = {"generator": GENERATOR, **{k: _public(v) for k, v in context.items() if k != "model_card"}}
    numbers["model_card"] = [{"title": t, "blocks": [list(b) for b in blocks]} for t, blocks in context["model_card"]]
    text = json.dumps(_finite(numbers), indent=2, default=str, allow_nan=False)   # strict JSON: no NaN literals
    files = {out: html.encode("utf-8"), numbers_path: (text + "\n").encode("utf-8")}
    variant = _chosen_dir(run)
    row = next((r for r in (context.get("compression") or {}).get("variants", []) if r.get("chosen")), None)
    for path in cards:
        sections_, metadata = context["model_card"], {**context["card_metadata"],
                                                      "license": card.license_set(path) or "unknown"}
        if variant is not None and row is not None and path.parent.resolve() == variant:
            sections_, metadata = card.for_variant(sections_, metadata, row, _variant_model(variant))
        markdown = card.to_markdown(f"Model card: {context['title']}", sections_, metadata)
        files[path] = f"{markdown.rstrip()}\n\n<!-- {GENERATOR}: rewritten by every report -->\n".encode("utf-8")
    atomic_write_all(files)   # all or nothing: a card that cannot be written leaves no new page behind
    return {"report": str(out), "numbers": str(numbers_path), "model_cards": [str(c) for c in cards]}


def _refuse_own_files(run: Run, out: Path, numbers_path: Path, cards: list[Path]) -> None:
    """Refuse an `out` that is one of the report's own numbers or cards, however it is spelled (relative,
    absolute, through `..`): written under two names, the page would be lost to the card or the numbers. The
    run's report.json (and the numbers of the page pipeline.json names) counts too, whatever this report's name:
    the page over it would leave the toolkit calling its own file foreign."""
    target = out.resolve()
    pages = [run.root / "report.html", *([run.root / run.pipeline.report] if run.pipeline else [])]
    numbers = {numbers_path, *map(_numbers_of, pages)}
    owned = {**{p.resolve(): "numbers" for p in numbers},
             **{p.resolve(): "model card" for p in (*cards, *(d / "MODEL_CARD.md" for d in _card_dirs(run)))}}
    if target not in owned and out.suffix in (".json", ".md") and report_wrote(out):
        owned[target] = "numbers" if out.suffix == ".json" else "model card"   # an earlier report's, elsewhere
    if target in owned:
        verb = "goes" if owned[target] == "model card" else "go"
        raise ReportError(f"--out {out} is where the report's {owned[target]} {verb}: name the page with .html")


def _finite(obj):
    """`obj` with every NaN or infinite float as None, as the page shows them (a dash)."""
    if isinstance(obj, float):
        return obj if number(obj) is not None else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _targets(run: Run, out) -> tuple[Path, Path, list[Path]]:
    """The report, its numbers and the model cards. A report written outside the run (`--out` elsewhere) takes
    its card beside it, named after it as its numbers are (`r.html`: `r.json`, `r.md`), and writes nothing into
    the run; one inside it puts MODEL_CARD.md in the run's directories."""
    out = Path(out) if out is not None else run.root / "report.html"
    numbers = _numbers_of(out)
    if not out.resolve().is_relative_to(run.root.resolve()):
        return out, numbers, [numbers.with_suffix(".md")]
    return out, numbers, sorted(_as_given(run, directory) / "MODEL_CARD.md" for directory in _card_dirs(run))


def _as_given(run: Run, directory: Path) -> Path:
    """A directory of the run spelled from the run directory as the user gave it (relative stays relative), as
    the page and its numbers are: `report --json` gives one kind of path, not absolute cards beside them."""
    try:
        return run.root / directory.relative_to(run.root.resolve())
    except ValueError:
        return directory


def _numbers_of(page: Path) -> Path:
    """The numbers file written beside the page `page`: `r.html` gives `r.json`, any other name `name.json` (a
    page is always .html; another name is only looked at, to refuse it)."""
    return page.with_name((page.stem if page.suffix == ".html" else page.name) + ".json")


def _card_dirs(run: Run) -> set[Path]:
    """Where MODEL_CARD.md goes: the run directory, the trained model's and the chosen variant's."""
    targets = {run.root.resolve()}
    if "train" in run.dirs:
        targets.add(run.dirs["train"].resolve())
    variant = _chosen_dir(run)
    if variant is not None:
        targets.add(variant)  # the artifact to deploy carries its card, which describes it
    return targets


def _chosen_dir(run: Run) -> Path | None:
    """The chosen variant's directory inside the run, or None (none chosen, the original kept, or elsewhere)."""
    chosen = run.compress.chosen.path if run.compress else None
    if chosen:
        variant = (run.dirs["compress"] / chosen).resolve()
        if variant.is_relative_to(run.root.resolve()) and (variant / "model.json").is_file():
            return variant
    return None


def _variant_model(directory: Path) -> dict:
    """The chosen variant's model.json for its card; {} when it cannot be read (the card then omits its details)."""
    from .collect import _model_file

    try:
        return _model_file(directory / "model.json")
    except ReportError:
        return {}


def refuse_foreign(path: Path) -> None:
    """Refuse to write over a file the toolkit did not write (weights, a run record, the user's own page)."""
    if not path.exists() and not path.is_symlink():
        return
    if report_wrote(path):
        return
    raise ReportError(f"refusing to write the report over {path}: the toolkit did not write that file; "
                      "choose another --out")
