"""What the commands print for humans, on stderr: rich tables of a stage's results."""

from __future__ import annotations

from .common import QUIET


def print_table(table) -> None:
    """A rich table on stderr (nothing with --quiet); rich drops colour and box art off a terminal."""
    if QUIET["on"]:
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:  # piped into a file: no terminal width to fit, keep every cell whole
        console = Console(stderr=True, width=max(console.width, 160))
    console.print(table)


def variants_table(summary: dict):
    """The compress result's variants as a rich Table, the chosen one in bold."""
    from rich import box
    from rich.table import Table

    from compress.views import rows

    agreement = f", agreement >= {summary['min_agreement']:.0%} less its margin" if "min_agreement" in summary else ""
    table = Table(box=box.SIMPLE_HEAD, title=f"variants (budget {summary['max_drop']} points{agreement}; "
                                             f"chosen: {summary['chosen']['name']})")
    for header in ("variant", "runtime", "acc", "drop", "agree (95% CI)", "size KB", "smaller", "b256 ms", "faster",
                   "b1 ms", "flags"):
        table.add_column(header, justify="left" if header in ("variant", "runtime", "flags") else "right")
    gpu = summary.get("device") if summary.get("device", "cpu") != "cpu" else None  # a run timed on a GPU
    for r in rows(summary):
        flags = [f for f, on in (("chosen", r["chosen"]), ("pareto", r["pareto"]), ("SLOWER", r["slower_than_fp32"]),
                                 ("over-budget", r["within_budget"] is False), ("FLIPS", r["agrees"] is False),
                                 ("NOISY", bool(r["noisy"]))) if on]
        agree = "" if r["agreement"] is None else (f"{r['agreement']:.1%} ({r['agreement_low']:.1%}-"
                                                   f"{r['agreement_high']:.1%})")
        faster = "noisy" if "b256_t1" in r["noisy"] else _num(r["speedup_b256"], "{:.2f}x")
        runtime = r["runtime"] if gpu is None else f"{r['runtime']} on {r['device'] or gpu}"
        table.add_row(r["name"], runtime, _num(r["accuracy"], "{:.4f}"), _num(r["accuracy_drop"], "{:+.2f}"),
                      agree, _num(r["size_bytes"] and r["size_bytes"] / 1024, "{:.1f}"), _num(r["size_ratio"], "{:.2f}x"),
                      _num(r["latency_b256_ms"], "{:.3f}"), faster,
                      _num(r["latency_b1_ms"], "{:.3f}"), " ".join(flags), style="bold" if r["chosen"] else None)
    return table


def _num(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)
