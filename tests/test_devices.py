"""Device discovery and preload plans, without a GPU and without torch."""

from __future__ import annotations

import pytest

from studio.config import Settings
from studio.devices import preload_plan, resolve_devices, visible_gpus
from studio.errors import WorkerFailed


def test_preload_plan_spreads_models_over_slots():
    assert preload_plan([], 2) == [[], []]
    assert preload_plan(["a"], 3) == [["a"], ["a"], ["a"]]
    assert preload_plan(["a", "b"], 2) == [["a"], ["b"]]
    assert preload_plan(["a", "b", "c"], 2) == [["a", "c"], ["b"]]


def test_devices_follow_settings_then_visible_gpus():
    assert resolve_devices(Settings(devices=["cpu", "cpu"]), gpu_count=lambda: 4) == ["cpu", "cpu"]
    assert resolve_devices(Settings(), gpu_count=lambda: 2) == ["cuda:0", "cuda:1"]
    assert resolve_devices(Settings(), gpu_count=lambda: 0) == ["cpu"]
    assert resolve_devices(Settings(num_gpus=1), gpu_count=lambda: 2) == ["cuda:0"]
    with pytest.raises(WorkerFailed, match="3 GPUs requested but 2 visible"):
        resolve_devices(Settings(num_gpus=3), gpu_count=lambda: 2)


def test_hidden_gpus_count_as_none(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0
