"""`ExplainOptions`: the options of `explain_model`, each default and bound declared once.

The pipeline's `explain` section is this dataclass; `toolkit explain --help` shows its defaults.
Which method names exist, and which families they explain, is the registry's to say (`get_method(name, family)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, Strict

from trainers.options import FORBID_EXTRA, Seed, Str

# Each sample costs every method a full attribution (Shapley estimates: hundreds of forward passes).
MAX_SAMPLES = 100_000
Samples = Annotated[int, Strict(), Field(ge=1, le=MAX_SAMPLES)]


@dataclass
class ExplainOptions:
    """Keyword options of `explain_model`: `explain_model(model, data, **as_dict(options))`.

    Attributes:
        methods: registered method names (`explain.list_methods()`); None: a fast set for the family.
        samples: test samples to explain.
        seed: seed of the sample draw and of sampled methods.
    """

    __pydantic_config__ = FORBID_EXTRA

    methods: list[Str] | None = None
    samples: Samples = 64
    seed: Seed = 0
