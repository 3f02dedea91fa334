"""`CompressOptions`: the options of `compress_model`, each default and bound declared once.

The pipeline's `compress` section is this dataclass; `toolkit compress --help` shows its defaults.
Which method names exist, and which families they handle, is the registry's to say (`check_request`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, Strict

from trainers.options import FORBID_EXTRA, Device, Fraction, PositiveFloat, Ratio, Str

# Accuracy points below the original (0.5 = half a percentage point).
AccuracyPoints = Annotated[float, Strict(), Field(ge=0, le=100, allow_inf_nan=False)]


@dataclass
class CompressOptions:
    """Keyword options of `compress_model`: `compress_model(model, data, **as_dict(options))`.

    Attributes:
        methods: registered method names (`compress.list_methods()`); "auto" tries the candidates for the family.
        max_drop: accuracy budget, in percentage points below the original.
        ratio: pruning ratio in (0, 1) for the prune methods and auto's structured pruning.
        min_agreement: share of the fp32 original's top-1 test predictions every variant must keep (less the
            one-sided 95% margin of the test split's size); with max_drop, the one fidelity rule.
        budget_seconds: auto tries no further candidates when its search would run past this many seconds and
            chooses among those made (None: no limit).
        options: per-method options, e.g. {"auto": {"distill_epochs": 0}}.
        device: where the variants will serve, so where they are timed and auto chooses: "cpu", or "cuda"
            ("cuda:1") on a machine with a CUDA GPU (PyTorch variants moved there, ONNX Runtime's CUDA provider
            where the installed build has it, half precision chained onto pruned models).
    """

    __pydantic_config__ = FORBID_EXTRA

    methods: Annotated[list[Str], Field(min_length=1)] = field(default_factory=lambda: ["auto"])
    max_drop: AccuracyPoints = 0.5
    ratio: Ratio | None = None
    min_agreement: Fraction = 0.97
    budget_seconds: PositiveFloat | None = None
    options: dict[Str, dict] = field(default_factory=dict)
    device: Device = "cpu"
