"""The family-independent conversion machinery: safetensors I/O, mapping tables, strict configs."""

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from adapt import paths
from adapt.convert import mapping
from adapt.convert.hf_config import UnsupportedConfigError, check_fields
from adapt.convert.safetensors_io import (
    INDEX_FILE,
    CheckpointFormatError,
    SafetensorsReader,
    save_safetensors,
)


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.bias": rng.standard_normal((3,)).astype(np.float32),
        "b.weight": rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(7, dtype=np.int64),
    }


def test_reader_matches_reference_library(tmp_path):
    tensors = _tensors()
    ref = {k: v for k, v in tensors.items() if v.dtype != ml_dtypes.bfloat16}
    safetensors.numpy.save_file(ref, tmp_path / "model.safetensors")
    reader = SafetensorsReader(tmp_path)
    assert sorted(reader) == sorted(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(reader[k], v)
        assert reader[k].dtype == v.dtype


def test_writer_is_readable_by_reference_library_and_shards(tmp_path):
    tensors = _tensors()
    save_safetensors(tensors, tmp_path / "one")
    loaded = safetensors.numpy.load_file(tmp_path / "one" / "model.safetensors")
    for k, v in tensors.items():
        if v.dtype == ml_dtypes.bfloat16:
            continue  # safetensors.numpy has no bf16 dtype; covered by our reader below
        np.testing.assert_array_equal(loaded[k], v)

    files = save_safetensors(tensors, tmp_path / "sharded", max_shard_bytes=40)
    assert len(files) > 1 and (tmp_path / "sharded" / INDEX_FILE).exists()
    reader = SafetensorsReader(tmp_path / "sharded")
    for k, v in tensors.items():
        np.testing.assert_array_equal(reader[k].astype(np.float64), v.astype(np.float64))
        assert reader[k].dtype == v.dtype


def test_corrupt_and_truncated_files_raise_clearly(tmp_path):
    save_safetensors(_tensors(), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        SafetensorsReader(tmp_path)
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointFormatError, match="shorter"):
        SafetensorsReader(tmp_path)
    path.write_bytes((10).to_bytes(8, "little") + b"not json!!" + b"\x00" * 8)
    with pytest.raises(CheckpointFormatError, match="JSON"):
        SafetensorsReader(tmp_path)
    with pytest.raises(CheckpointFormatError, match="no such file"):
        SafetensorsReader(tmp_path / "does_not_exist.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="no model.safetensors"):
        SafetensorsReader(tmp_path / "empty")


def test_sharded_index_naming_a_missing_tensor_raises(tmp_path):
    save_safetensors(_tensors(), tmp_path, max_shard_bytes=40)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    index["weight_map"]["ghost"] = next(iter(index["weight_map"].values()))
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointFormatError, match="ghost"):
        SafetensorsReader(tmp_path)


TABLE = [
    mapping.Rule("enc/layer_{i}/dense/kernel", "enc.layer.{i}.dense.weight", mapping.TRANSPOSE),
    mapping.Rule("enc/layer_{i}/dense/bias", "enc.layer.{i}.dense.bias"),
    mapping.Rule("conv/kernel", "conv.weight", mapping.CONV_OIHW_TO_HWIO),
]


def _hf_state(rng):
    return {
        "enc.layer.0.dense.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "enc.layer.0.dense.bias": rng.standard_normal((3,)).astype(np.float32),
        "enc.layer.1.dense.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "enc.layer.1.dense.bias": rng.standard_normal((3,)).astype(np.float32),
        "conv.weight": rng.standard_normal((8, 3, 2, 2)).astype(np.float32),
        "enc.position_ids": np.arange(4),
    }


def _expected():
    return {
        "enc/layer_0/dense/kernel": ((5, 3), np.float32),
        "enc/layer_0/dense/bias": ((3,), np.float32),
        "enc/layer_1/dense/kernel": ((5, 3), np.float32),
        "enc/layer_1/dense/bias": ((3,), np.float32),
        "conv/kernel": ((2, 2, 3, 8), np.float32),
    }


def test_table_round_trips_and_transforms():
    hf = _hf_state(np.random.default_rng(0))
    ours, fresh = mapping.import_tensors(hf, TABLE, _expected(), ignore=[r".*position_ids"])
    assert fresh == []
    np.testing.assert_array_equal(
        ours["enc/layer_1/dense/kernel"], hf["enc.layer.1.dense.weight"].T
    )
    np.testing.assert_array_equal(ours["conv/kernel"], hf["conv.weight"].transpose(2, 3, 1, 0))
    back = mapping.export_tensors(ours, TABLE)
    assert set(back) == set(hf) - {"enc.position_ids"}
    for k, v in back.items():
        np.testing.assert_array_equal(v, hf[k])


def test_import_lists_every_missing_unexpected_and_misshaped_key():
    hf = _hf_state(np.random.default_rng(0))
    del hf["enc.layer.1.dense.bias"]  # missing
    hf["enc.layer.7.surprise"] = np.zeros(2, np.float32)  # unexpected
    hf["enc.layer.0.dense.weight"] = np.zeros((4, 5), np.float32)  # mis-shaped
    with pytest.raises(mapping.CheckpointMismatchError) as err:
        mapping.import_tensors(hf, TABLE, _expected(), ignore=[r".*position_ids"])
    msg = str(err.value)
    assert "enc/layer_1/dense/bias" in msg
    assert "enc.layer.7.surprise" in msg
    assert "enc.layer.0.dense.weight [4, 5]" in msg and "expects [5, 3]" in msg


def test_import_casts_to_param_dtype_and_allows_declared_new_heads():
    hf = _hf_state(np.random.default_rng(1))
    expected = {p: (s, ml_dtypes.bfloat16) for p, (s, _) in _expected().items()}
    expected["head/kernel"] = ((3, 2), ml_dtypes.bfloat16)
    ours, fresh = mapping.import_tensors(
        hf, TABLE, expected, ignore=[r".*position_ids"], allow_missing=[r"head/.*"]
    )
    assert fresh == ["head/kernel"]
    assert all(v.dtype == ml_dtypes.bfloat16 for v in ours.values())


def test_export_refuses_parameters_without_a_hf_name():
    ours = {"enc/layer_0/dense/kernel": np.zeros((5, 3)), "enc/layer_0/dense/lora_a": np.zeros(2)}
    with pytest.raises(mapping.CheckpointMismatchError, match="lora_a"):
        mapping.export_tensors(ours, TABLE)


def test_check_fields_names_every_unsupported_field():
    hf = {
        "model_type": "toy",
        "hidden_size": 4,
        "rope_scaling": {"type": "linear"},
        "is_decoder": True,
        "flux_capacitor": 1,
    }
    with pytest.raises(UnsupportedConfigError) as err:
        check_fields(
            hf, "toy", implemented={"hidden_size"}, allowed={"rope_scaling": lambda v: v is None}
        )
    msg = str(err.value)
    for name in ("rope_scaling", "is_decoder", "flux_capacitor"):
        assert name in msg
    check_fields(
        {"hidden_size": 4, "transformers_version": "5"}, "toy", implemented={"hidden_size"}
    )


def test_paths_flatten_unflatten_round_trip():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    flat = paths.flatten(tree)
    assert flat == {"a/b": 1, "a/c/d": 2, "e": 3}
    assert paths.unflatten(flat) == tree
    with pytest.raises(ValueError, match="ambiguous"):
        paths.flatten({"a/b": 1})


def test_a_resized_head_is_reinitialised_but_a_resized_backbone_is_an_error():
    hf = _hf_state(np.random.default_rng(2))
    expected = _expected()
    expected["enc/layer_1/dense/kernel"] = ((5, 4), np.float32)  # as if num_labels grew to 4
    expected["enc/layer_1/dense/bias"] = ((4,), np.float32)
    ours, fresh = mapping.import_tensors(
        hf, TABLE, expected, ignore=[r".*position_ids"], allow_missing=[r"enc/layer_1/.*"]
    )
    assert sorted(fresh) == ["enc/layer_1/dense/bias", "enc/layer_1/dense/kernel"]
    assert "enc/layer_1/dense/kernel" not in ours
    with pytest.raises(mapping.CheckpointMismatchError, match="wrong shape"):
        mapping.import_tensors(hf, TABLE, expected, ignore=[r".*position_ids"])
