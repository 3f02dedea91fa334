"""Rows at another scale than the model was trained on are named: training records the range of its inputs in
`model.json` (`preprocessing.input_range`), and `trainers.predict` and `toolkit predict` warn once per call.

The two cases of the serving audit: the built-in digits (0..16) saved as PNGs and predicted from a folder (read
in [0, 1]: every digit was a "3", exit 0), and a model trained from an image folder given the same images as a
uint8 `.npz` (0..255: all "light").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from fake_runs import toolkit_warnings
from trainers import TrainConfig, load_data, load_model, predict, train

FOLDER_WARNING = "images are read with pixels scaled to [0, 1]"
SCALE_WARNING = "far outside the range of the training inputs"


@dataclass
class Models:
    digits: Path   # a CNN on the built-in digits, values 0..16
    images: Path   # a CNN on a folder of 8x8 grey PNGs, dark and light
    pixels: np.ndarray  # 12 images of that folder as uint8 (N, 1, 8, 8)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(0)
    pixels = []
    for name, level in (("dark", 40), ("light", 210)):
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            image = np.clip(level + rng.normal(0, 25, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "imgs" / name / f"{i}.png")
            pixels.append(image[None])
    config = TrainConfig(epochs=1, model={"channels": [4]})
    train("digits", "cnn", config, out=root / "digits", progress=False)
    train(str(root / "imgs"), "cnn", config, out=root / "images", progress=False)
    return Models(root / "digits", root / "images", np.stack(pixels)[::2])


def _run(argv, capsys) -> list[str]:
    capsys.readouterr()
    assert main(argv) == 0
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_training_records_the_range_of_its_inputs(models):
    assert load_model(models.digits).spec.preprocessing["input_range"] == {"min": 0.0, "max": 16.0, "images": False}
    assert load_model(models.images).spec.preprocessing["input_range"] == {"min": 0.0, "max": 1.0, "images": True}


def test_a_folder_of_images_given_to_a_model_trained_on_digits_is_named_once(models, tmp_path, capsys):
    digits = load_data("digits").x_test[:20]
    for i, x in enumerate(digits):
        Image.fromarray((x[0] * 255 / 16).round().astype(np.uint8)).save(tmp_path / f"{i:02d}.png")
    said = _run(["predict", str(models.digits), str(tmp_path), "--batch-size", "4"], capsys)
    assert len(said) == 1 and FOLDER_WARNING in said[0] and "[0, 16]" in said[0], said
    np.savez(tmp_path / "rows.npz", x=digits)  # the same rows at the training scale
    assert _run(["predict", str(models.digits), str(tmp_path / "rows.npz"), "--batch-size", "4"], capsys) == []
    assert _run(["predict", str(models.images), str(tmp_path), "--batch-size", "4"], capsys) == []


def test_uint8_pixels_given_to_a_model_trained_on_an_image_folder_are_named_once(models, tmp_path, capsys):
    np.savez(tmp_path / "u8.npz", x=models.pixels)
    said = _run(["predict", str(models.images), str(tmp_path / "u8.npz"), "--batch-size", "2"], capsys)
    assert len(said) == 1 and SCALE_WARNING in said[0] and "[0, 1]" in said[0], said
    model = load_model(models.images)
    with toolkit_warnings() as said:
        predict(model, models.pixels, batch_size=2)
    assert len(said) == 1 and SCALE_WARNING in said[0]
    with toolkit_warnings() as said:
        predict(model, models.pixels / np.float32(255), batch_size=2)
        predict(load_model(models.digits), load_data("digits").x_test[:1])  # one row at the training scale
    assert said == []


def test_an_artifact_without_the_record_is_not_checked(models, tmp_path):
    """Artifacts written before the range was recorded load and predict as before, without a check."""
    import shutil

    shutil.copytree(models.images, tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "model.json").read_text())
    del raw["preprocessing"]["input_range"]
    (tmp_path / "old" / "model.json").write_text(json.dumps(raw))
    with toolkit_warnings() as said:
        predict(load_model(tmp_path / "old"), models.pixels)
    assert said == []


def test_the_scale_warnings_hint_fits_the_recorded_range():
    """The 0..255-pixels guess only for a model trained on [0, 1]; a digits model (0..16) given 0..256 is told the
    factor, not asked about pixels it never saw."""
    from trainers.inputrange import mismatch

    rows = np.linspace(0, 256, 1000, dtype=np.float32)[:, None]
    digits = mismatch({"min": 0.0, "max": 16.0, "images": False}, rows)
    assert SCALE_WARNING in digits and "pixels 0..255" not in digits and "about 15.9 times as large" in digits
    pixels = mismatch({"min": 0.0, "max": 1.0, "images": True}, rows[:-4])
    assert SCALE_WARNING in pixels and "(pixels 0..255 where it saw [0, 1]?)" in pixels
