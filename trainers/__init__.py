"""Ground floor of the toolkit: data, model families, the training loop and the artifact format.

Public API::

    from trainers import load_data, train, TrainConfig, load_model, save_model, predict, list_models

    data = load_data("digits")
    result = train(data, "cnn", TrainConfig(epochs=30), out="runs/cnn")
    model = load_model("runs/cnn")
    logits = predict(model, data.x_test)

Names are imported lazily (PEP 562), so `import trainers.errors` and the CLI's
`--help` do not pay for importing torch.
"""

from .errors import ArtifactError, DataError, ToolkitError
from .lazy import lazy_exports

_EXPORTS = {
    "artifact": ("LoadedModel", "ModelSpec", "accuracy", "load_model", "predict", "save_model", "write_artifact"),
    "usermodel": ("as_model",),
    "data": ("BUILTIN_DATASETS", "DataBundle", "check_inputs", "load_data"),
    "fit": ("TrainResult", "resolve_device", "seed_everything", "train"),
    "trainconfig": ("TrainConfig",),
    "loop": ("evaluate",),
    "interrupts": ("TrainingInterrupted",),
    "models": ("build_model", "capabilities", "count_parameters", "get_family", "list_models", "make_config", "register_family"),
    "rundir": ("RunDir", "default_run_dir"),
    "env": ("environment", "package_versions"),
    "tracking": ("TrackingOptions", "open_tracker"),
}
__getattr__, __dir__, _LAZY = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = ["ArtifactError", "DataError", "ToolkitError", *_LAZY]
