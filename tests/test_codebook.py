"""The `sparse-codebook` codec and weight sharing: exact round trips, hostile files refused, a shared model that loads."""

from __future__ import annotations

import json
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.prune import structured_prune, unstructured_prune
from trainers import ArtifactError, TrainConfig, load_model, predict, train
from trainers.artifact import write_artifact
from trainers.codecs import CODEBOOK_FORMAT, CODEBOOK_PREFIX, CODEBOOK_SIZE, CODECS
from trainers.errors import ToolkitError

CODEC = CODECS["sparse-codebook"]


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    book = torch.linspace(-1.5, 2.0, CODEBOOK_SIZE)
    sparse = book[torch.randint(0, CODEBOOK_SIZE, (40, 70), generator=g)]
    sparse[torch.rand(40, 70, generator=g) < 0.9] = 0.0
    sparse[3, :] = 0.0  # gaps longer than one nibble
    sparse.view(-1)[1000:1400] = 0.0  # and longer than a byte
    dense = book[torch.randint(0, 5, (8, 9), generator=g)]  # few distinct values, no zeros
    return {"a.weight": sparse, "a.bias": book[torch.randint(0, 16, (70,), generator=g)].clone(),
            "b.weight": dense, "half.weight": sparse[:20].to(torch.float16),
            "free.weight": torch.randn(6, 7, generator=g),  # too many distinct values: stored as it is
            "tiny.bias": torch.tensor([0.5, 0.25])}


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def _deflate(data: bytes, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy)
    return packer.compress(data) + packer.flush()


def _index(stored: dict):
    """The stored index's entries and, for format 2, its whole header (streams and their codings)."""
    raw = bytes(stored[CODEBOOK_PREFIX + "index"].numpy())
    if raw[0] == CODEBOOK_FORMAT:
        header = json.loads(zlib.decompress(raw[1:], -15))
        return header["tensors"], header
    return json.loads(raw.decode()), None


def _write_index(stored: dict, entries, header) -> None:
    text = json.dumps({**header, "tensors": entries} if header else entries).encode()
    raw = bytes([CODEBOOK_FORMAT]) + _deflate(text) if header else text
    stored[CODEBOOK_PREFIX + "index"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)


@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_is_exact_in_both_formats(version):
    state = _state()
    stored = CODEC.encode(state, version=version)
    decoded = CODEC.decode(stored, _shapes(state))
    assert decoded.keys() == state.keys()
    for name, tensor in state.items():
        assert decoded[name].dtype == tensor.dtype and torch.equal(decoded[name], tensor), name
    assert "free.weight" in stored and "tiny.bias" in stored and "a.weight" not in stored
    index, header = _index(stored)
    values = sum(e["count"] for e in index)
    if version == 1:  # the earlier layout: 4 bits a value
        assert header is None and len(stored[CODEBOOK_PREFIX + "indices"]) == (values + 1) // 2
    else:
        # evenly drawn indices stay packed (deflate would not be smaller); gaps with long runs of zeros deflate
        assert {k: v["coding"] for k, v in header["streams"].items()} == {"indices": "nibbles", "gaps": "deflate"}
        assert len(stored[CODEBOOK_PREFIX + "streams"]) == sum(v["bytes"] for v in header["streams"].values())
    sparse_entry = next(e for e in index if e["name"] == "a.weight")
    assert sparse_entry["count"] == int((state["a.weight"] != 0).sum()) and sparse_entry["gaps"] >= sparse_entry["count"]
    assert next(e for e in index if e["name"] == "b.weight")["gaps"] == 0  # dense: no positions stored


def test_entropy_coding_stores_skewed_symbols_under_four_bits_and_even_ones_no_larger():
    """Format 2 deflates each symbol stream (one symbol a byte, Huffman coding) where that is smaller, else keeps
    the packed nibbles: a stream of mostly-short gaps shrinks, evenly spread indices never grow."""
    g = torch.Generator().manual_seed(1)
    book = torch.linspace(-1.0, 1.0, CODEBOOK_SIZE)
    weight = book[torch.randint(0, CODEBOOK_SIZE, (64, 256), generator=g)]
    weight[torch.rand(64, 256, generator=g) < 0.55] = 0.0  # gaps mostly 0-2: under 4 bits of entropy
    v1, v2 = CODEC.encode({"w": weight}, version=1), CODEC.encode({"w": weight})
    _, header = _index(v2)
    assert header["streams"]["gaps"]["bytes"] < 0.8 * len(v1[CODEBOOK_PREFIX + "gaps"])
    assert header["streams"]["indices"]["bytes"] <= len(v1[CODEBOOK_PREFIX + "indices"])
    assert torch.equal(CODEC.decode(v2, {"w": (64, 256)})["w"], weight)


def _stored(change, version: int = CODEBOOK_FORMAT) -> dict:
    state = _state()
    stored = CODEC.encode(state, version=version)
    index, header = _index(stored)
    change(stored, index)
    _write_index(stored, index, header)
    return stored


def _set(stored, index, tensor, **fields):
    next(e for e in index if e["name"] == tensor).update(fields)


HOSTILE = {
    "shape beyond the architecture": (lambda s, i: _set(s, i, "a.weight", shape=[16384, 16384]), "architecture needs"),
    "tensor the architecture lacks": (lambda s, i: _set(s, i, "a.weight", name="z.weight"), "no such tensor"),
    "more codes than 4 bits index": (lambda s, i: _set(s, i, "a.bias", k=40), "implausible"),
    "count beyond the elements": (lambda s, i: _set(s, i, "b.weight", count=10**9), "implausible"),
    "codebooks of the wrong type": (lambda s, i: s.update({CODEBOOK_PREFIX + "codebooks":
                                                           s[CODEBOOK_PREFIX + "codebooks"].double()}), "float32"),
    "negative count": (lambda s, i: _set(s, i, "a.bias", count=-1), "malformed"),
    "gap symbols that cannot place the values": (lambda s, i: _set(s, i, "a.weight", gaps=1), "gap symbols"),
}
HOSTILE_V1 = {  # format 1's packed streams
    "truncated index stream": (lambda s, i: s.update({CODEBOOK_PREFIX + "indices": s[CODEBOOK_PREFIX + "indices"][:-3]}),
                               "disagree"),
    "truncated gap stream": (lambda s, i: s.update({CODEBOOK_PREFIX + "gaps": s[CODEBOOK_PREFIX + "gaps"][:-1]}),
                             "disagree"),
}


@pytest.mark.parametrize("case", [(1, c) for c in [*HOSTILE, *HOSTILE_V1]] + [(2, c) for c in HOSTILE])
def test_corrupted_or_oversized_entries_are_refused_before_allocating(case):
    version, name = case
    change, match = {**HOSTILE, **HOSTILE_V1}[name]
    state = _state()
    with pytest.raises((ValueError, KeyError), match=match) as error:
        CODEC.decode(_stored(change, version), _shapes(state))
    assert "\n" not in str(error.value)


def _with_stream(name: str, data: bytes, coding: str = "deflate", claimed: int | None = None) -> dict:
    """A format-2 encoding of `_state()` whose `name` stream is replaced by `data` (`claimed` bytes in the index)."""
    stored = CODEC.encode(_state())
    index, header = _index(stored)
    raw = bytes(stored[CODEBOOK_PREFIX + "streams"].numpy())
    first = header["streams"]["indices"]["bytes"]
    parts = {"indices": raw[:first], "gaps": raw[first:], name: data}
    header["streams"][name] = {"coding": coding, "bytes": len(data) if claimed is None else claimed}
    stored[CODEBOOK_PREFIX + "streams"] = torch.frombuffer(bytearray(parts["indices"] + parts["gaps"]),
                                                           dtype=torch.uint8)
    _write_index(stored, index, header)
    return stored


def _gap_symbols() -> bytes:
    stored = CODEC.encode(_state())
    _, header = _index(stored)
    raw = bytes(stored[CODEBOOK_PREFIX + "streams"].numpy())
    return zlib.decompress(raw[header["streams"]["indices"]["bytes"]:], -15)


HOSTILE_V2 = {  # format 2's deflated streams and index
    "a gap stream that inflates to 64 MiB": (lambda: _with_stream("gaps", _deflate(bytes(64 << 20))), "inflates past"),
    "a truncated gap stream": (lambda: _with_stream("gaps", _deflate(_gap_symbols())[:-4]), "truncated|not a valid"),
    "a gap stream one symbol short": (lambda: _with_stream("gaps", _deflate(_gap_symbols()[:-1])),
                                      "where the index says"),
    "bytes after the stream's end": (lambda: _with_stream("gaps", _deflate(_gap_symbols()) + b"\0"),
                                     "after its end"),
    "a symbol past 4 bits": (lambda: _with_stream("gaps", _deflate(bytes([200]) + _gap_symbols()[1:])), "past 4 bits"),
    "an unknown coding": (lambda: _with_stream("gaps", _deflate(_gap_symbols()), coding="brotli"), "unknown coding"),
    "streams longer than the index says": (lambda: _with_stream("gaps", _deflate(_gap_symbols()), claimed=3),
                                           "disagree"),
    "garbage instead of deflate": (lambda: _with_stream("indices", b"\xff" * 40), "not a valid deflate"),
}


@pytest.mark.parametrize("case", HOSTILE_V2)
def test_hostile_deflated_streams_are_refused_within_a_bounded_allocation(case):
    """A crafted format-2 file is refused in one line, and no stream inflates past the size its index gives: the
    64 MiB bomb is refused having allocated a fraction of that."""
    build, match = HOSTILE_V2[case]
    stored = build()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as error:
            CODEC.decode(stored, _shapes(_state()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(error.value) and peak < 4 << 20


def test_a_stream_of_no_symbols_cannot_carry_a_bomb():
    """A file whose tensors are all dense stores no gap symbols: a deflated gap stream there is bounded to none
    (zlib reads a bound of 0 as no bound at all)."""
    state = {"b.weight": _state()["b.weight"]}
    stored = CODEC.encode(state)
    index, header = _index(stored)
    bomb = _deflate(bytes(64 << 20))
    header["streams"]["gaps"] = {"coding": "deflate", "bytes": len(bomb)}
    stored[CODEBOOK_PREFIX + "streams"] = torch.frombuffer(bytearray(bytes(stored[CODEBOOK_PREFIX + "streams"].numpy())
                                                                     + bomb), dtype=torch.uint8)
    _write_index(stored, index, header)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="inflates past the 0 bytes"):
            CODEC.decode(stored, _shapes(state))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@pytest.mark.parametrize("index, match", [
    (bytes([CODEBOOK_FORMAT]) + _deflate(b" " * (64 << 20)), "inflates past"),
    (bytes([CODEBOOK_FORMAT]) + _deflate(json.dumps({"tensors": []}).encode())[:-2], "truncated|not a valid"),
    (bytes([CODEBOOK_FORMAT]) + _deflate(json.dumps({"tensors": [], "streams": {}}).encode()), "malformed"),
    (bytes([7]) + b"{}", "unknown format"),
])
def test_a_hostile_index_is_refused(index, match):
    stored = CODEC.encode(_state())
    stored[CODEBOOK_PREFIX + "index"] = torch.frombuffer(bytearray(index), dtype=torch.uint8)
    with pytest.raises(ValueError, match=match):
        CODEC.decode(stored, _shapes(_state()))


@pytest.fixture(scope="module")
def shared(digits):
    model = train(digits, "mlp", TrainConfig(epochs=3, model={"hidden": [128, 64]}, device="cpu"), progress=False).model
    [variant] = unstructured_prune(model, digits, ratio=0.9, finetune_epochs=1, share_weights=True)
    [int8] = unstructured_prune(model, digits, ratio=0.9, finetune_epochs=1, int8=True)
    return model, variant, int8


def test_shared_weights_variant_loads_and_predicts_what_it_holds(shared, digits, tmp_path):
    model, variant, int8 = shared
    assert variant.name == "prune-unstructured-90-shared" and variant.model.spec.weights["codec"] == "sparse-codebook"
    assert variant.recipe["share_weights"] is True and variant.recipe["clusters"] == CODEBOOK_SIZE
    for name, tensor in variant.model.module.state_dict().items():
        if name.endswith(("weight", "bias")) and tensor.numel() >= 2 * CODEBOOK_SIZE:
            assert len(torch.unique(tensor[tensor != 0])) <= CODEBOOK_SIZE, name
    for sub in ("shared", "int8"):
        (tmp_path / sub).mkdir()
    write_artifact(tmp_path / "shared", variant.model.module, variant.model.spec)
    write_artifact(tmp_path / "int8", int8.model.module, int8.model.spec)
    loaded = load_model(tmp_path / "shared")
    np.testing.assert_array_equal(predict(loaded.module, digits.x_test), predict(variant.model.module, digits.x_test))
    assert (predict(loaded.module, digits.x_test).argmax(1) == digits.y_test).mean() > 0.5
    def payload(model):  # the stored numbers, without the file's and the codec's JSON headers
        stored = CODECS[model.spec.weights["codec"]].encode(model.module.state_dict())
        return sum(t.numel() * t.element_size() for k, t in stored.items() if not k.endswith(".index"))

    assert payload(variant.model) < 0.8 * payload(int8.model)


def test_an_artifact_written_in_format_1_still_loads_and_format_2_is_smaller(shared, digits, tmp_path):
    """A shared model's file written by the earlier codec (packed nibbles, JSON index) loads and predicts the
    same; the entropy-coded file is more than 5% smaller (the digits MLP's 87% benchmark: 12.6%)."""
    _, variant, _ = shared
    write_artifact(tmp_path, variant.model.module, variant.model.spec)
    new_size = (tmp_path / "model.safetensors").stat().st_size
    save_file(CODEC.encode(variant.model.module.state_dict(), version=1), str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    old_size = (tmp_path / "model.safetensors").stat().st_size
    spec = json.loads((tmp_path / "model.json").read_text())
    spec["weights"].pop("sha256", None)
    (tmp_path / "model.json").write_text(json.dumps(spec))
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(predict(loaded.module, digits.x_test), predict(variant.model.module, digits.x_test))
    assert new_size < 0.95 * old_size


def test_a_corrupted_shared_artifact_is_refused_in_one_line(shared, tmp_path):
    _, variant, _ = shared
    write_artifact(tmp_path, variant.model.module, variant.model.spec)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    index, header = _index(tensors)
    for entry in index:
        entry["shape"] = [16384, 16384]
    _write_index(tensors, index, header)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    spec = json.loads((tmp_path / "model.json").read_text())
    spec["weights"].pop("sha256", None)
    (tmp_path / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="shape") as error:
        load_model(tmp_path)
    assert "\n" not in str(error.value)


def test_unstructured_fine_tunes_can_distil_from_the_model_given(shared, digits, monkeypatch):
    """With `teacher`, every fine-tune (each round's and the centroids') learns from the model given, a frozen
    copy of it: the given model is left as it was."""
    import compress.prune as prune

    model = shared[0]
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    teachers = []
    real = prune.teacher_loss

    def spy(teacher, *args, **kwargs):
        teachers.append(teacher)
        return real(teacher, *args, **kwargs)

    monkeypatch.setattr(prune, "teacher_loss", spy)
    [plain] = unstructured_prune(model, digits, ratio=0.9, finetune_epochs=1, share_weights=True)
    assert not teachers and plain.recipe["teacher"] is False
    [variant] = unstructured_prune(model, digits, ratio=0.9, finetune_epochs=1, share_weights=True, steps=2,
                                   teacher=True)
    assert variant.name == "prune-unstructured-90-shared-teacher" and variant.recipe["teacher"] is True
    assert len({id(t) for t in teachers}) == 1 and teachers[0] is not model.module
    batches = -(-len(digits.x_train) // 64)
    assert len(teachers) > 3 * (batches - 1)  # two pruning rounds and the centroids' fine-tune, one epoch each
    np.testing.assert_array_equal(predict(teachers[0], digits.x_test), predict(model.module, digits.x_test))
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


def test_int8_and_shared_weights_together_are_refused(shared, digits):
    model, _, _ = shared
    with pytest.raises(ToolkitError, match="choose one"):
        unstructured_prune(model, digits, ratio=0.5, finetune_epochs=0, int8=True, share_weights=True)
    with pytest.raises(ToolkitError, match="clusters"):
        unstructured_prune(model, digits, ratio=0.5, finetune_epochs=0, share_weights=True, clusters=17)


@pytest.mark.slow
def test_digits_mlp_is_fifty_times_smaller_within_half_a_point(digits, tmp_path):
    model = train(digits, "mlp", TrainConfig(seed=0, device="cpu"), progress=False).model
    [small] = structured_prune(model, digits, ratio=0.5, finetune_epochs=30, allocation="uniform")
    [variant] = unstructured_prune(small.model, digits, ratio=0.9, finetune_epochs=30, share_weights=True, steps=3)
    for sub in ("dense", "shared"):
        (tmp_path / sub).mkdir()
    write_artifact(tmp_path / "dense", model.module, model.spec)
    write_artifact(tmp_path / "shared", variant.model.module, variant.model.spec)
    dense, size = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("dense", "shared"))
    loaded = load_model(tmp_path / "shared")
    drop = 100 * ((predict(model.module, digits.x_test).argmax(1) == digits.y_test).mean()
                  - (predict(loaded.module, digits.x_test).argmax(1) == digits.y_test).mean())
    # one seed on a 360-sample test split (0.28 points a sample): docs/results.md has the three-seed figures
    assert dense / size >= 50 and drop <= 1.0


def test_rounds_of_pruning_go_through_compress_and_predict(shared, digits, tmp_path):
    """The round count is recorded as `rounds`: under `steps`, a chain's list of step recipes, it crashed every
    reader of the recipe (measuring the variant, `predict` on its artifact). Old recipes with an int `steps` load."""
    from compress import compress_model
    from trainers.artifact import batch_dependent, dynamic_recipe

    model = shared[0]
    result = compress_model(model, digits, methods=["prune-unstructured"], max_drop=100, out=tmp_path / "run",
                            options={"prune-unstructured": {"steps": 2, "finetune_epochs": 1}})
    [variant] = [v for v in result.variants if v.name.startswith("prune-unstructured")]
    assert variant.recipe["rounds"] == 2 and "steps" not in variant.recipe
    loaded = load_model(tmp_path / "run" / "variants" / variant.name)
    assert not batch_dependent(loaded.spec) and predict(loaded, digits.x_test[:4]).shape == (4, 10)
    assert not dynamic_recipe({"method": "prune-unstructured", "ratio": 0.9, "steps": 3})
    assert dynamic_recipe({"method": "chain", "steps": [{"method": "prune-unstructured", "steps": 3},
                                                        {"method": "int8-dynamic"}]})


@pytest.mark.parametrize("store", [{"share_weights": True}, {"int8": True}])
def test_a_lightly_pruned_layer_is_stored_as_its_codec_says(shared, digits, store, tmp_path):
    """Under 50% zeros a layer is coded dense: its shared values then count the zero among the 16 codes (else 17
    values went to plain fp32), and its int8 values are stored as int8 (else fp32): the file was 1.00x."""
    model = shared[0]
    [variant] = unstructured_prune(model, digits, ratio=0.3, finetune_epochs=0, seed=0, **store)
    state = variant.model.module.state_dict()
    stored = CODECS[variant.recipe["codec"]].encode(state)
    matrices = [k for k, t in state.items() if k.endswith(".weight") and t.dim() >= 2]
    assert not set(matrices) & set(stored), "a pruned matrix was stored as plain fp32"
    decoded = CODECS[variant.recipe["codec"]].decode(stored, _shapes(state))
    assert all(torch.equal(decoded[k], t) for k, t in state.items())
    for sub, m in (("dense", model), ("pruned", variant.model)):
        (tmp_path / sub).mkdir()
        write_artifact(tmp_path / sub, m.module, m.spec)
    dense, size = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("dense", "pruned"))
    assert dense / size > 3
    loaded = load_model(tmp_path / "pruned")
    np.testing.assert_array_equal(predict(loaded, digits.x_test), predict(variant.model.module, digits.x_test))


def test_an_lstms_shared_weights_say_the_centroids_were_not_fine_tuned(digits):
    """An LSTM's fused weights cannot be parametrized, so its centroids keep their k-means values: the notes say
    so and quote the accuracy after sharing, not the best one from before it."""
    from trainers.artifact import accuracy

    lstm = train(digits, "lstm", TrainConfig(epochs=1, model={"hidden": [16]}, device="cpu"), progress=False).model
    [variant] = unstructured_prune(lstm, digits, ratio=0.9, finetune_epochs=1, share_weights=True, clusters=2)
    after = accuracy(variant.model.module, digits.x_val, digits.y_val)
    assert "before sharing" in variant.notes[0]
    assert f"centroids not fine-tuned (an LSTM's fused weights cannot be parametrized): validation accuracy " \
           f"{after:.4f} after sharing" in variant.notes
