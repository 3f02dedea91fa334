"""What the run happened on: library versions and the compute device."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("toolkit", "torch", "numpy", "scikit-learn", "safetensors", "onnx", "onnxruntime", "shap", "captum", "typer")


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from metadata (no heavy imports)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def toolkit_version() -> str:
    """This toolkit's installed version ("unknown" when run from a source tree that was never installed)."""
    try:
        return metadata.version("toolkit")
    except metadata.PackageNotFoundError:
        return "unknown"


def environment() -> dict:
    """Python, platform, package versions and the device `--device auto` would pick."""
    import torch

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "device": "cpu",
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info
