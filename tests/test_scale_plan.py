"""benchmarks/scale_plan.py: the ahead-of-time memory plan measures what sharding does.

Its core (benchmarks/aot_memory.py) compiles the harness's LoRA step for a tiny LLaMA on 8
forced CPU devices in a subprocess, as the plan does for every device count; FSDP over 8 shards
must cut the per-device bytes XLA reports for the step's inputs, or the plan measures nothing.
"""

from __future__ import annotations

import pytest

from benchmarks import aot_memory, scale_plan

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=1024,
)


def test_fsdp_over_8_devices_shrinks_per_device_bytes():
    jobs = [
        dict(
            config=TINY,
            method="lora",
            preset="fsdp",
            axes=[["data", shards]],
            seq_len=16,
            remat="full",
            rank=2,
        )
        for shards in (1, 8)
    ]
    one, eight = aot_memory.run_worker(8, jobs)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert (one["global_batch"], eight["global_batch"]) == (1, 8)  # one sequence per shard
    # The frozen base (embeddings, head, kernels) is split 8 ways along its hidden dimension ...
    assert eight["accounts"]["frozen"] < one["accounts"]["frozen"] / 6
    # ... and XLA's own per-device argument bytes of the compiled step fall with it.
    assert eight["bytes"]["argument"] < 0.5 * one["bytes"]["argument"]
    assert one["bytes"]["temp"] > 0 and one["unsharded_dims"] == []


def test_extrapolation_is_fixed_plus_per_layer():
    def compiled(layers: int) -> dict:
        bytes_ = {s: 100 + 10 * layers for s in aot_memory.STATS}
        return {
            "layers": layers,
            "bytes": bytes_,
            "accounts": {a: 5 * layers for a in aot_memory.ACCOUNTS},
            "trainable_params": 7 * layers,
        }

    out = scale_plan.extrapolate(compiled(1), compiled(2), 80)
    assert out["bytes"]["temp"] == pytest.approx(900)
    assert out["per_layer"]["temp"] == pytest.approx(10)
    assert out["accounts"]["frozen"] == pytest.approx(400)
    assert out["trainable_params"] == 560
    assert scale_plan.fits(30e9) == {"24GB": False, "40GB": True, "80GB": True, "141GB": True}


def test_mesh_axes_use_the_preset_axis_names():
    assert scale_plan.mesh_axes("fsdp", 64) == [("data", 64)]
    assert scale_plan.mesh_axes("fsdp_tp", 8) == [("data", 2), ("model", 4)]
    assert scale_plan.mesh_axes("fsdp_tp", 64) == [("data", 8), ("model", 8)]
