"""`ExplainOptions`: the options of `explain_model`, each default and bound declared once.

The pipeline's `explain` section is this dataclass; `toolkit explain --help` shows its defaults.
Which method names exist, and which families they explain, is the registry's to say (`get_method(name, family)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, Strict

from trainers.options import FORBID_EXTRA, Seed, Str

# Each sample costs every method a full attribution (Shapley estimates: hundreds of forward passes).
MAX_SAMPLES = 100_000
Samples = Annotated[int, Strict(), Field(ge=1, le=MAX_SAMPLES)]
# which quality checks run: the sanity check re-runs the method 8 times on up to 16 samples, 5-7x the attribution
# on a 64x64 CNN (a default explain of 4 samples: 114 of 147 s); the noise floor runs always (drift reads it)
Checks = Literal["all", "fast", "none"]


@dataclass
class ExplainOptions:
    """Keyword options of `explain_model`: `explain_model(model, data, **as_dict(options))`.

    Attributes:
        methods: registered method names (`explain.list_methods()`); None: a fast set for the family.
        samples: test samples to explain.
        seed: seed of the sample draw and of sampled methods.
        checks: quality checks: "all"; "fast": all but the sanity check (it re-runs the method 8 times);
            "none": neither that nor deletion/insertion, infidelity and faithfulness. What did not run is null
            in the result with a "not run" verdict; completeness and the noise floor always run.
    """

    __pydantic_config__ = FORBID_EXTRA

    methods: list[Str] | None = None
    samples: Samples = 64
    seed: Seed = 0
    checks: Checks = "all"
