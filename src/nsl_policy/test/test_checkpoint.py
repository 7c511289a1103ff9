import json
import math
import os
import pickle

import pytest
import torch
from safetensors.torch import save, save_file

from nsl_policy.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    init_checkpoint,
    load_checkpoint,
    save_checkpoint,
    validate_for_swap,
)
from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_policy.shipped import base_checkpoint
from safetensors import safe_open

CFG = QNetworkConfig(image_size=32, width=8, embed_width=16, fc_width=16)


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    img, st, a = (
        torch.rand(2, 3, 32, 32, generator=g),
        torch.rand(2, 3, generator=g),
        torch.rand(2, 6, generator=g),
    )
    with torch.no_grad():
        return model.eval()(img, st, a)


def test_roundtrip_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = QNetwork(CFG)
    path = tmp_path / "a.safetensors"
    ckpt_id = save_checkpoint(path, model, {"parent": "abc", "steps": 5, "metrics": {"loss": 0.5}})
    assert len(ckpt_id) == 12
    loaded = load_checkpoint(path, expected_config=CFG)
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.checkpoint_id == ckpt_id and loaded.config == CFG and loaded.path == str(path)
    assert loaded.metadata["parent"] == "abc" and loaded.metadata["steps"] == 5
    assert loaded.metadata["format_version"] == 1 and "created" in loaded.metadata
    assert torch.equal(_outputs(model), _outputs(loaded.model))
    validate_for_swap(loaded, CFG)
    # Same weights -> same id; different weights -> different id.
    assert save_checkpoint(tmp_path / "b.safetensors", model, {}) == ckpt_id
    assert save_checkpoint(tmp_path / "c.safetensors", QNetwork(CFG), {}) != ckpt_id


def test_atomic_save_leaves_no_temp_files(tmp_path):
    model = QNetwork(CFG)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, {})
    first = path.read_bytes()
    save_checkpoint(path, QNetwork(CFG), {})  # overwrite
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    assert path.read_bytes() != first
    with pytest.raises(CheckpointError):  # unserialisable metadata: nothing written, nothing left
        save_checkpoint(
            tmp_path / "bad.safetensors",
            model,
            {"x": object.__new__(type("T", (), {"__str__": None}))},
        )
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_missing_truncated_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    path = tmp_path / "ok.safetensors"
    save_checkpoint(path, QNetwork(CFG), {})
    blob = path.read_bytes()
    for name, data in {
        "trunc": blob[: len(blob) // 2],
        "tiny": blob[:5],
        "empty": b"",
        "garbage": os.urandom(4096),
        "text": b"hello world, not a checkpoint" * 10,
    }.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(p)
        assert str(p) in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + _Evil.marker,))


def test_pickle_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    for name, writer in {
        "raw.safetensors": lambda p: p.write_bytes(pickle.dumps({"w": _Evil()})),
        "torch.pt": lambda p: torch.save({"w": _Evil()}, p),
    }.items():
        p = tmp_path / name
        writer(p)
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
        assert not marker.exists()


def test_wrong_config_is_named(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, QNetwork(CFG), {})
    other = QNetworkConfig(image_size=64, width=8, embed_width=16, fc_width=16)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, expected_config=other)
    assert "image_size" in str(e.value) and "width" not in str(e.value).replace(
        "embed_width", ""
    ).replace("fc_width", "")
    loaded = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="image_size"):
        validate_for_swap(loaded, other)


def _write_raw(path, tensors, config=CFG, **header):
    meta = {
        "nsl_format": "nsl-qnet",
        "format_version": "1",
        "model_config": json.dumps(config.to_dict()),
        "metadata": "{}",
    }
    meta.update(header)
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if v is not None})


def test_bad_tensors_and_headers(tmp_path):
    good = {k: v.contiguous() for k, v in QNetwork(CFG).state_dict().items()}
    name = "fc.4.bias"
    cases = {
        "nan": ({**good, name: torch.full_like(good[name], math.nan)}, {}, "non-finite"),
        "inf": (
            {**good, "trunk.0.weight": good["trunk.0.weight"].clone().fill_(math.inf)},
            {},
            "non-finite",
        ),
        "missing": ({k: v for k, v in good.items() if k != name}, {}, "missing"),
        "extra": ({**good, "bonus": torch.zeros(3)}, {}, "unexpected"),
        "shape": ({**good, name: torch.zeros(2)}, {}, "mis-shaped"),
        "noconfig": (good, {"model_config": None}, "model_config"),
        "badconfig": (good, {"model_config": json.dumps({"image_size": 5})}, "model_config"),
        "foreign": (good, {"nsl_format": None}, "not an NSL"),
        "version": (good, {"format_version": "99"}, "version"),
    }
    for case, (tensors, header, needle) in cases.items():
        p = tmp_path / f"{case}.safetensors"
        _write_raw(p, tensors, **header)
        with pytest.raises(CheckpointError, match=needle) as e:
            load_checkpoint(p)
        assert str(p) in str(e.value), case


def test_validate_for_swap_rejects_infinite_output(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, QNetwork(CFG), {})
    loaded = load_checkpoint(path)
    with torch.no_grad():
        loaded.model.fc[-1].bias.fill_(math.inf)
    with pytest.raises(CheckpointError, match="smoke"):
        validate_for_swap(loaded, CFG)
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(
            tmp_path / "d.safetensors",
            QNetwork(CFG)
            .requires_grad_(False)
            .apply(lambda m: m.weight.fill_(math.nan) if isinstance(m, torch.nn.Linear) else None),
            {},
        )


def test_init_checkpoint_is_seeded(tmp_path):
    a = init_checkpoint(tmp_path / "a.safetensors", CFG, seed=3)
    b = init_checkpoint(tmp_path / "b.safetensors", CFG, seed=3)
    c = init_checkpoint(tmp_path / "c.safetensors", CFG, seed=4)
    assert a == b != c
    loaded = load_checkpoint(tmp_path / "a.safetensors", CFG)
    assert loaded.metadata["parent"] is None and loaded.metadata["kind"] == "scratch"


# ------------------------------------------------------------------------- issue 30: hostile files
def _resave(src, dst, edit_header):
    """Copy checkpoint ``src`` to ``dst``, its header metadata passed through ``edit_header``."""
    with safe_open(str(src), "pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dst.write_bytes(save(tensors, metadata=edit_header(header)))
    return dst


def _raw_header_file(path, header_text: str, tail: bytes = b""):
    body = header_text.encode()
    path.write_bytes(len(body).to_bytes(8, "little") + body + tail)
    return path


def test_deeply_nested_json_raises_checkpoint_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(CheckpointError, match="nested"):
        load_checkpoint(_raw_header_file(tmp_path / "a.safetensors", deep))
    init_checkpoint(tmp_path / "ok.safetensors", CFG)
    nested_meta = _resave(
        tmp_path / "ok.safetensors",
        tmp_path / "b.safetensors",
        lambda h: {**h, "metadata": '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"},
    )
    with pytest.raises(CheckpointError, match="metadata JSON nested"):
        load_checkpoint(nested_meta)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(fifo)  # returns at once: no writer would ever open the FIFO
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint("/dev/zero")


def test_file_size_is_bounded_before_reading(tmp_path):
    init_checkpoint(tmp_path / "ok.safetensors", CFG)
    size = (tmp_path / "ok.safetensors").stat().st_size
    with pytest.raises(CheckpointError, match="over the .*-byte limit"):
        load_checkpoint(tmp_path / "ok.safetensors", max_bytes=size - 1)
    sparse = tmp_path / "huge.safetensors"
    with open(sparse, "wb") as f:
        f.truncate(64 * 1024**3)  # 64 GiB of holes: never read
    with pytest.raises(CheckpointError, match="over the .*-byte limit"):
        load_checkpoint(sparse)
    big_header = tmp_path / "big_header.safetensors"
    big_header.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        load_checkpoint(big_header)


def test_hostile_headers_raise_only_checkpoint_error(tmp_path):
    init_checkpoint(tmp_path / "ok.safetensors", CFG)
    edits = [
        lambda h: {**h, "model_config": json.dumps({"image_size": 32, "width": 10**9})},
        lambda h: {**h, "model_config": "[1, 2]"},
        lambda h: {**h, "model_config": '{"width": "eight"}'},
        lambda h: {**h, "metadata": "[]"},
        lambda h: {**h, "format_version": "x"},
    ]
    for i, edit in enumerate(edits):
        with pytest.raises(CheckpointError):
            load_checkpoint(_resave(tmp_path / "ok.safetensors", tmp_path / f"{i}.st", edit))
    for i, text in enumerate(
        [
            '{"__metadata__": [1]}',
            '{"__metadata__": {"a": 1}}',
            r'{"__metadata__": {"nsl_format": "\ud800"}}',
        ]
    ):
        with pytest.raises(CheckpointError):
            load_checkpoint(_raw_header_file(tmp_path / f"raw{i}.st", text, b"\0" * 8))


def test_content_id_detects_edited_lineage(tmp_path):
    model = QNetwork(CFG)
    ckpt_id = save_checkpoint(tmp_path / "a.safetensors", model, {"parent": "p1", "job_id": "j"})
    loaded = load_checkpoint(tmp_path / "a.safetensors")
    assert loaded.checkpoint_id == ckpt_id and loaded.content_verified
    assert len(loaded.content_id) == 12 and loaded.content_id != ckpt_id

    def relabel(h):
        meta = json.loads(h["metadata"])
        meta["parent"] = "someone-else"
        return {**h, "metadata": json.dumps(meta, sort_keys=True)}

    edited = _resave(tmp_path / "a.safetensors", tmp_path / "b.safetensors", relabel)
    with pytest.raises(CheckpointError, match="lineage .* was edited"):
        load_checkpoint(edited)
    # The weights id stays what it was: the same weights with other metadata, same id.
    assert save_checkpoint(tmp_path / "c.safetensors", model, {"parent": "p2"}) == ckpt_id
    other = load_checkpoint(tmp_path / "c.safetensors")
    assert other.content_id != loaded.content_id


def test_shipped_checkpoint_keeps_its_id():
    loaded = load_checkpoint(base_checkpoint())
    assert loaded.checkpoint_id == "a4af17f4b2e1"
