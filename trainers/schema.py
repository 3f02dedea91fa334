"""What each stage writes as `result.json` (and a pipeline as `pipeline.json`): typed, versioned, shared.

The writers build these models and write `model.dump()` (`TrainResult.to_dict`, `CompressResult.to_dict`,
the explain summary); the reports read every file through `read_result`. One definition serves both sides,
so a field cannot be renamed on one side only. docs/results.md describes each field.

Version policy: every file carries `stage` and `schema_version`, one integer per stage (`VERSIONS`). Any
change to a stage's fields (added, removed, renamed, or a new meaning) bumps its version; `read_result`
reads the versions it knows and refuses any other, or none, with one line naming the file. Numbers may be
NaN or infinite where a run produced them (a diverged loss); explain writes those as null.

Torch-free: the reports import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ToolkitError
from .options import one_line


class Record(BaseModel):
    """A part of a result file: every field declared, nothing else accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def dump(self) -> dict:
        """Plain data for json.dumps, keys in declaration order (NaN stays a float)."""
        return self.model_dump(by_alias=True)


# ---------------------------------------------------------------- shared


class Split(Record):
    seed: int
    test_given: bool
    test_fraction: float | None  # None when the user supplied the test split
    val_fraction: float
    stratified: bool


class DataSummary(Record):
    """`DataBundle.summary()`: the data a stage ran on."""

    name: str
    source: str
    fingerprint: str
    input_shape: list[int]
    layout: Literal["features", "signal", "image"]
    num_classes: int
    n_train: int
    n_val: int
    n_test: int
    split: Split


# ---------------------------------------------------------------- train


class Epoch(Record):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


class ClassScores(Record):
    class_name: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int


class TrainMetrics(Record):
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    test_confusion_matrix: list[list[int]]  # true class in rows
    test_per_class: list[ClassScores]


class TrainResultFileV1(Record):
    schema_version: Literal[1] = 1
    stage: Literal["train"] = "train"
    family: str
    data: DataSummary
    metrics: TrainMetrics
    device: str
    epochs_run: int
    best_epoch: int
    seconds: float
    interrupted: bool
    processes: int
    history: list[Epoch]
    artifact: str | None


class Refit(Record):
    """The model trained again on the training and validation rows (`trainers.fit._refit`)."""

    epochs: int  # the selection run's best epoch count
    rows: int  # training + validation rows
    seconds: float
    history: list[Epoch]  # its validation figures are on rows it trained on


class TrainResultFile(TrainResultFileV1):
    """Version 2: `refit`, where the model was trained again on the training and validation rows; the metrics'
    validation figures are then the selection run's at its best epoch (held out), the others the refit model's."""

    schema_version: Literal[2] = 2
    refit: Refit | None = None


# ---------------------------------------------------------------- compress


class Timing(Record):
    p50: float
    p95: float
    reps: int


class Latency(Record):
    """Milliseconds per call: b = batch size, t1 = one thread, tall = all threads."""

    b1_t1: Timing
    b1_tall: Timing
    b256_t1: Timing
    b256_tall: Timing


class Speedup(Record):
    b1_t1: float
    b1_tall: float
    b256_t1: float
    b256_tall: float


class Parity(Record):
    max_abs_diff: float
    top1_agreement: float
    n: int


class AgreementStep(Record):
    fp32_nodes: list[str]
    agreement: float


class AgreementCheck(Record):
    samples: int
    agreement: float
    target: float
    reached: bool
    fp32_nodes: list[str]
    fp32_modules: list[str]
    steps: list[AgreementStep]


class Fidelity(Record):
    """Top-1 agreement of a variant with the fp32 original on the test split (compress.measure.fidelity)."""

    agreement: float
    n: int
    agreeing: int
    margin: float  # one-sided 95%: 1.645 * sqrt(min_agreement * (1 - min_agreement) / n)
    wilson_low: float  # two-sided 95% Wilson interval of the agreement
    wilson_high: float
    min_agreement: float
    passes: bool  # agreement >= min_agreement - margin


class Int8SearchRowV3(Record):
    """One configuration the static int8 search measured (`compress.int8_search`), schema versions 1-3."""

    format: Literal["qdq", "qoperator"]
    calibration: Literal["minmax", "percentile", "entropy"]
    per_channel: bool
    optimize: bool
    fp32_nodes: list[str]
    agreement: float
    latency_ratio: float | None  # median per-round latency over the fp32 ONNX graph's, batch 256, one thread
    reached: bool


class Int8SearchRowV4(Int8SearchRowV3):
    """A row of the int8 search in schema version 4: a graph with layers in fp32 names its ORT session hint,
    and a graph quantized from the 2-D form of a 1-D CNN says so."""

    disabled_optimizers: list[str] | None = None  # the graph's ORT session hint (`trainers.ortsession`)
    lift: bool = False  # quantized from the graph with its 1-D convolutions and pools as 2-D ones


class Int8SearchRow(Int8SearchRowV4):
    """A row of the int8 search from schema version 5 on: a graph whose logits stay in float says so."""

    float_logits: bool = False  # the last layer in int8 with a float output (`compress.int8_search.float_logits`)


class Recipe(BaseModel):
    """How a variant was made: `method` plus that method's own options (open: each method has its own)."""

    model_config = ConfigDict(extra="allow")
    method: str


class Serve(Record):
    """A routed variant's small-batch side: calls on fewer than `below_batch` rows run `small` (schema 3)."""

    below_batch: int
    small: str  # the member's variant name (also a row of its own)
    small_runtime: Literal["torch", "onnxruntime"]


class VariantRowV2(Record):
    name: str
    method: str
    recipe: Recipe
    path: str | None
    runtime: Literal["torch", "onnxruntime"]
    dtype: str
    accuracy: float
    accuracy_drop: float
    size_bytes: int
    size_ratio: float
    parameters: int | None
    latency_ms: Latency
    speedup: Speedup
    slower_than_fp32: bool
    flips: bool
    within_budget: bool
    pareto: bool
    parity: Parity | None
    twin_agreement: float | None = None  # int8 variants only
    agreement_check: AgreementCheck | None = None  # int8 variants only
    int8_search: list[Int8SearchRowV3] | None = None  # int8-static only: every configuration measured
    notes: list[str]
    # schema version 2 (absent from version 1 files):
    fidelity: Fidelity | None = None  # agreement with the original; `flips` = it fails the rule
    speedup_spread: Speedup | None = None  # IQR / median of the per-round speed-ups, per setting
    noisy: list[str] = Field(default_factory=list)  # settings whose spread is too large for a speed-up
    rounds: int | None = None  # interleaved timing rounds


class VariantRowV3(VariantRowV2):
    """A variant's row in schema version 3."""

    serve: Serve | None = None  # a routed variant: the model that answers small batches


class VariantRowV4(VariantRowV3):
    """A variant's row in schema version 4."""

    int8_search: list[Int8SearchRowV4] | None = None  # int8-static only: every configuration measured


class VariantRowV5(VariantRowV4):
    """A variant's row in schema version 5."""

    int8_search: list[Int8SearchRow] | None = None  # int8-static only: every configuration measured


class VariantRowV6(VariantRowV5):
    """A variant's row in schema version 6: where it computed while timed."""

    device: str = "cpu"  # "cpu" or the CUDA device ("cuda", "cuda:1")
    provider: str | None = None  # ONNX Runtime's first execution provider in its session; None for PyTorch


class VariantRow(VariantRowV6):
    """A variant's row from schema version 7 on: how well its probabilities fit the test labels."""

    log_loss: float | None = None  # mean negative log-likelihood of the test labels (nats); None: not measured


class Threads(Record):
    single: int
    all: int


class ChosenV1(Record):
    name: str
    path: str | None
    reason: str


class Chosen(ChosenV1):
    """The chosen variant from schema version 8: a kept original is named relative to the run (`path`: `../train`
    in a pipeline run) and by its checksum, so a copied or moved run serves its own model, never another."""

    checksum: str | None = None  # the kept original's (`trainers.kept.record`); None for a variant


class Skipped(Record):
    method: str
    options: dict[str, Any] | None = None
    reason: str
    # schema version 2: a candidate auto made and rejected (its name and figures)
    name: str | None = None
    accuracy_drop: float | None = None
    fidelity: Fidelity | None = None


class CompressResultFileV1(Record):
    schema_version: Literal[1] = 1
    stage: Literal["compress"] = "compress"
    parent: str
    family: str
    data: DataSummary
    methods: list[str]
    max_drop: float
    threads: Threads
    baseline: VariantRowV2
    variants: list[VariantRowV2]  # the baseline first
    chosen: ChosenV1
    skipped: list[Skipped]
    seconds: float


class CompressResultFileV2(CompressResultFileV1):
    """Version 2: one fidelity rule for every variant (`min_agreement`; each row's `fidelity`, and `flips`
    meaning it fails that rule), interleaved timing (`speedup` = median of per-round ratios, with
    `speedup_spread`, `noisy`, `rounds`), auto's rejected candidates in `skipped` with their figures,
    `budget_seconds` and `search_notes`."""

    schema_version: Literal[2] = 2
    min_agreement: float
    budget_seconds: float | None = None
    search_notes: list[str] = Field(default_factory=list)


class CompressResultFileV3(CompressResultFileV2):
    """Version 3: a variant may route calls by batch size (auto's `by_batch`): its row's `serve` names the
    model that answers small batches; its latency at batch 1 is that model's, its size counts both files."""

    schema_version: Literal[3] = 3
    baseline: VariantRowV3
    variants: list[VariantRowV3]  # the baseline first


class CompressResultFileV4(CompressResultFileV3):
    """Version 4: a row of the int8 search names the graph's ORT session hint (`disabled_optimizers`)."""

    schema_version: Literal[4] = 4
    baseline: VariantRowV4
    variants: list[VariantRowV4]  # the baseline first


class CompressResultFileV5(CompressResultFileV4):
    """Version 5: a row of the int8 search says whether the graph's logits stay in float (`float_logits`)."""

    schema_version: Literal[5] = 5
    baseline: VariantRowV5
    variants: list[VariantRowV5]  # the baseline first


class CompressResultFileV6(CompressResultFileV5):
    """Version 6: the device the variants were timed on (`device`: "cpu" or a CUDA GPU), and in each row where
    that variant computed (`device`) and, for ONNX Runtime, its session's first provider (`provider`)."""

    schema_version: Literal[6] = 6
    device: str = "cpu"
    baseline: VariantRowV6
    variants: list[VariantRowV6]  # the baseline first


class CompressResultFileV7(CompressResultFileV6):
    """Version 7: each row's test log-loss (`log_loss`): top-1 agreement cannot see probabilities that flattened
    (a 90%-pruned digits CNN kept its accuracy while its mean top probability fell from 0.98 to 0.62)."""

    schema_version: Literal[7] = 7
    baseline: VariantRow
    variants: list[VariantRow]  # the baseline first


class CompressResultFile(CompressResultFileV7):
    """Version 8: a kept original is recorded relative to the run with its checksum (`Chosen.checksum`); version 7
    named it by its absolute path, which a copy of the run followed to the source run's model."""

    schema_version: Literal[8] = 8
    chosen: Chosen


# ---------------------------------------------------------------- explain


class AttributionRunV2(Record):
    """A method's run in explain results of versions 1 and 2."""

    model: str
    method: str
    ran: str
    runtime: Literal["torch", "fake-quant", "onnx"]
    routed: str | None
    seconds: float
    ms_per_sample: float
    baseline: str


class CascadeStep(Record):
    layers: str  # the layers re-initialised so far, top (output) layer first
    spearman: float | None  # median Spearman of |maps| with the trained model's; None: only empty maps


class SanityCheckV3(Record):
    """Cascading model-parameter randomisation against its noise floor (explain.sanity), in explain results of
    version 3."""

    verdict: Literal["separated", "input-only", "not separated", "uninformative"]
    reason: str
    cascade: list[CascadeStep]
    seeds: list[float | None]  # trained vs fully re-initialised, one per seed
    floor: list[float | None]  # between two fully re-initialised models, one per pair of seeds
    input_only: float | None  # Spearman with |x - mean| / std
    model_reference: float | None  # Spearman with the trained model's gradients (scaled by std)


class SanityCheck(SanityCheckV3):
    """Version 4: the verdict may be `inconclusive` (the intervals leave both outcomes open, explain.sanity),
    the Spearman figures are means over samples, and the figures the verdict read are kept: the trained-vs-
    re-initialised statistic (`trained`, with its 95% interval), the floor's mean, their difference (floor -
    trained, with its interval), and the input-only minus model-reference difference (with its interval)."""

    verdict: Literal["separated", "inconclusive", "input-only", "not separated", "uninformative"]
    trained: float | None = None
    trained_lo: float | None = None
    trained_hi: float | None = None
    floor_mean: float | None = None
    difference: float | None = None
    difference_lo: float | None = None
    difference_hi: float | None = None
    reference_difference: float | None = None
    reference_difference_lo: float | None = None
    reference_difference_hi: float | None = None


class FeatureRank(Record):
    feature: str
    rank: int  # in the original (1: most important by mean |attribution|)
    variant_rank: int
    # from version 5 (absent in older files): the input's share of the total mean |attribution| in each model,
    # and the variant's share over the original's with its bootstrap 95% interval
    share: float | None = None
    variant_share: float | None = None
    share_ratio: float | None = None
    share_ratio_lo: float | None = None
    share_ratio_hi: float | None = None


class Relation(Record):
    relation: Literal["derived", "same data", "unrelated"]
    reason: str


class AttributionRunV3(AttributionRunV2):
    """Version 3 adds `steps_mean`: the mean per-sample effort of an adaptive method (integration steps of
    integrated gradients, model rows of shapley), None for the others."""

    steps_mean: float | None = None


class AttributionRun(AttributionRunV3):
    """Version 4 adds `target`: the class each sample's attributions are to ("predicted class": each sample's
    own predicted class, the original's for a compared variant)."""

    target: str = "predicted class"


class QualityV2(Record):
    """A method's quality figures in explain results of versions 1 and 2."""

    completeness_error: float | None
    axiom_holds: bool
    deletion_auc: float | None
    insertion_auc: float | None
    infidelity: float | None
    randomization_spearman: float | None
    randomization_topk: float | None
    noise_floor_topk: float | None
    noise_floor_spearman: float | None
    verdicts: list[str]
    flagged: bool


class QualityV3(QualityV2):
    """Version 3 adds the error bars of sampled methods and the convergence of adaptive ones (None where
    they do not apply): `estimated_error` / `estimated_error_max`, the median / largest over samples of the
    relative error bound ||estimate - exact|| / ||estimate|| at 95%; `standard_error`, the mean over samples of
    ||standard error|| / ||estimate||; `unconverged`, the samples that did not reach `tolerance` (the error
    bound of an adaptive sampled method, the completeness error of adaptive integrated gradients);
    `completeness_error_max` and `completeness_over_tolerance`, the largest completeness error and the share
    of samples above the 1% tolerance, where completeness holds; `sanity`, the cascading randomisation check, and
    `empty_share`, the share of all-zero or constant maps."""

    estimated_error: float | None = None
    estimated_error_max: float | None = None
    standard_error: float | None = None
    unconverged: int | None = None
    tolerance: float | None = None
    completeness_error_max: float | None = None
    completeness_over_tolerance: float | None = None
    empty_share: float | None = None  # share of maps that are all zero or constant
    sanity: SanityCheckV3 | None = None  # None: not run (no PyTorch module, or sanity off)


class QualityV4(QualityV3):
    """Version 4: the sanity check of version 4 (`SanityCheck`: an inconclusive verdict, its intervals)."""

    sanity: SanityCheck | None = None


class QualityV5(QualityV4):
    """Version 5: the mean signed cosine of two seeds' attributions (sampled methods; None for deterministic),
    the noise floor of the drift table's cosine test."""

    noise_floor_cosine: float | None = None


class Faithfulness(Record):
    """`explain.quality.faithfulness`: the map's insertion minus deletion AUC (`gap`, mean over samples) against
    the stronger `reference` of a random order (`random_gap`) and the input-only order (`input_only_gap`), the
    mean per-sample `difference` with its 95% interval, and the `verdict` against `margin`."""

    verdict: Literal["better", "inconclusive", "no better"]
    reason: str
    reference: str
    gap: float
    random_gap: float
    input_only_gap: float
    difference: float
    difference_lo: float | None
    difference_hi: float | None
    margin: float


class Quality(QualityV5):
    """Version 6: the faithfulness verdict (`Faithfulness`; None where deletion/insertion was not measured)."""

    faithfulness: Faithfulness | None = None


class DriftRow(Record):
    variant: str
    method: str
    ran: str
    runtime: Literal["torch", "fake-quant", "onnx"]
    routed: str | None
    accuracy: float
    accuracy_drop: float
    topk: int
    topk_overlap: float | None
    topk_overlap_lo: float | None
    topk_overlap_hi: float | None
    cosine: float | None
    cosine_lo: float | None
    cosine_hi: float | None
    spearman: float | None
    spearman_lo: float | None
    spearman_hi: float | None
    sign_agreement: float | None
    sign_agreement_lo: float | None
    sign_agreement_hi: float | None
    noise_floor_topk: float | None
    random_floor_topk: float | None
    flag: bool
    verdict: str
    # from version 3 (absent in older files)
    status: Literal["drifted", "uncertain", "kept", "uninformative"] | None = None
    threshold: float | None = None  # top-k overlap below which a variant has drifted
    empty_share: float | None = None  # the larger share of empty maps of the two models
    top_features: list[FeatureRank] | None = None
    relation: Literal["derived", "same data", "unrelated"] | None = None
    # from version 5: the cosine test's threshold, the tests that decided the status (drifted, else uncertain),
    # and the share of the explained samples the variant classifies differently
    cosine_threshold: float | None = None
    decided_by: list[str] | None = None
    changed_predictions: float | None = None


class Drift(Record):
    rows: list[DriftRow]
    flags: list[str]


class ExplainResultFileV1(Record):
    schema_version: Literal[1] = 1
    stage: Literal["explain"] = "explain"
    model: str
    family: str
    layout: Literal["features", "signal", "image"]
    input_shape: list[int]
    data: DataSummary
    samples: int
    seed: int
    methods: list[str]
    runtimes: dict[str, str]  # "original" and each compared variant -> its runtime
    runs: list[AttributionRunV2]
    global_importance: dict[str, dict[str, float | None]]  # method -> input name -> mean |attribution|
    quality: dict[str, QualityV2]
    drift: Drift
    flags: list[str]
    figures: dict[str, str]  # caption -> path relative to the run directory
    seconds: float


class ExplainResultFileV2(ExplainResultFileV1):
    """Version 2: `global_importance` of a model trained on a table names the user's columns (a text column's
    one-hot inputs and a missing indicator summed per sample); `global_importance_encoded` keeps the view
    of the model's encoded inputs (None for models not trained on a table)."""

    schema_version: Literal[2] = 2
    global_importance_encoded: dict[str, dict[str, float | None]] | None = None


class ExplainResultFileV3(ExplainResultFileV2):
    """Version 3: optional error bars and convergence counts in `quality` (`Quality`), the mean per-sample
    effort in `runs` (`AttributionRun.steps_mean`), the sanity check's verdict and figures (`Quality.sanity`,
    `Quality.empty_share`), drift rows with a status read from their interval, a threshold, the top inputs' rank
    changes and the variant's relation to the original, and `relations` (variant -> how it relates to the
    original)."""

    schema_version: Literal[3] = 3
    runs: list[AttributionRunV3]
    quality: dict[str, QualityV3]
    relations: dict[str, Relation] = {}


class ExplainResultFileV4(ExplainResultFileV3):
    """Version 4: each run names the class it explains (`AttributionRun.target`), and the sanity check may be
    inconclusive, with the intervals its verdict read (`SanityCheck`)."""

    schema_version: Literal[4] = 4
    runs: list[AttributionRun]
    quality: dict[str, QualityV4]


class ExplainResultFileV5(ExplainResultFileV4):
    """Version 5: drift decided by three tests (`DriftRow.decided_by`: the top-k overlap, the cosine against its
    own noise floor `Quality.noise_floor_cosine`, the original's top inputs' shares in `FeatureRank`), and the
    share of explained samples a variant classifies differently (`DriftRow.changed_predictions`)."""

    schema_version: Literal[5] = 5
    quality: dict[str, QualityV5]


class ExplainResultFile(ExplainResultFileV5):
    """Version 6: each method's faithfulness verdict (`Quality.faithfulness`): its deletion/insertion curves read
    against random and input-only orders, so a map on the wrong inputs fails."""

    schema_version: Literal[6] = 6
    quality: dict[str, Quality]


# ---------------------------------------------------------------- pipeline


class StageStatus(Record):
    name: Literal["train", "compress", "explain", "report"]
    # running: started, not finished (the process stopped there if the file stays so); pending: not started yet.
    status: Literal["done", "skipped", "failed", "not run", "running", "pending", "interrupted"]
    seconds: float | None = None
    reason: str | None = None


class StageError(Record):
    stage: str
    message: str
    code: int  # the exit code: 2 bad input, 1 unexpected


class PipelineFileV1(Record):
    """`pipeline.json` before version 2: no overall status (written once a stage had finished)."""

    schema_version: Literal[1] = 1
    stage: Literal["pipeline"] = "pipeline"
    data: str
    family: str
    stages: list[StageStatus]
    errors: list[StageError]
    seconds: float | None
    report: str


class PipelineFile(Record):
    schema_version: Literal[2] = 2
    stage: Literal["pipeline"] = "pipeline"
    # running until the last stage has run (a file that stays so: the process was killed), then done, failed
    # (a stage failed) or interrupted (Ctrl-C).
    status: Literal["running", "done", "failed", "interrupted"] = "running"
    data: str
    family: str
    stages: list[StageStatus]
    errors: list[StageError]
    seconds: float | None  # None until the last stage has run
    report: str


# ---------------------------------------------------------------- reading

ResultFile = (TrainResultFileV1 | TrainResultFile | CompressResultFileV1 | CompressResultFileV2 | CompressResultFileV3
              | CompressResultFileV4 | CompressResultFileV5 | CompressResultFileV6 | CompressResultFileV7
              | CompressResultFile | ExplainResultFileV1 | ExplainResultFileV2
              | ExplainResultFileV3 | ExplainResultFileV4 | ExplainResultFileV5 | ExplainResultFile | PipelineFileV1
              | PipelineFile)
# stage -> schema_version -> the model that reads it
VERSIONS: dict[str, dict[int, type[ResultFile]]] = {
    "train": {1: TrainResultFileV1, 2: TrainResultFile},
    "compress": {1: CompressResultFileV1, 2: CompressResultFileV2, 3: CompressResultFileV3, 4: CompressResultFileV4,
                 5: CompressResultFileV5, 6: CompressResultFileV6, 7: CompressResultFileV7,
                 8: CompressResultFile},
    "explain": {1: ExplainResultFileV1, 2: ExplainResultFileV2, 3: ExplainResultFileV3, 4: ExplainResultFileV4,
                5: ExplainResultFileV5, 6: ExplainResultFile},
    "pipeline": {1: PipelineFileV1, 2: PipelineFile},
}


def parse_result(obj: Any, where: str = "result", stage: str | None = None) -> ResultFile:
    """Validate a decoded result object; `stage` is the stage expected (any when None).

    Raises:
        ToolkitError: one line naming `where`: not a result, an unknown stage or version, a wrong field.
    """
    if not isinstance(obj, dict):
        raise ToolkitError(f"{where} does not hold a JSON object")
    found = obj.get("stage")
    if not isinstance(found, str) or found not in VERSIONS:
        raise ToolkitError(f"{where}: 'stage' is {found!r}; expected one of {', '.join(VERSIONS)}")
    if stage is not None and found != stage:
        raise ToolkitError(f"{where} holds a {found} result, expected {stage}")
    known = VERSIONS[found]
    understood = ", ".join(map(str, known))
    version = obj.get("schema_version")
    if "schema_version" not in obj:
        raise ToolkitError(f"{where} has no schema_version (written before results were versioned?); "
                           f"this toolkit reads {found} results of version {understood}")
    if isinstance(version, bool) or not isinstance(version, int) or version not in known:
        raise ToolkitError(f"{where} has {found} schema_version {version!r}; this toolkit reads version {understood}")
    try:
        return known[version].model_validate(obj, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        if error["type"] == "extra_forbidden":
            field = ".".join(map(str, error["loc"]))
            raise ToolkitError(f"{where} {field}: unknown field, not in {found} results of version {version}") from None
        raise ToolkitError(one_line(exc, where)) from None


def read_result(path: str | Path, stage: str | None = None) -> ResultFile:
    """Read and validate a `result.json` or `pipeline.json`; ToolkitError (one line naming the file) if wrong."""
    from .fileio import load_json

    return parse_result(load_json(path, "result file"), str(Path(path)), stage)
