"""A simulated site on a fractional GPU caps its process's CUDA memory at that fraction; on CPU,
whole GPUs or deployed SuperNodes nothing is capped (and CUDA is never touched)."""

from __future__ import annotations

import pytest
import torch

import client.gpu_memory as gpu_memory
from client.gpu_memory import cap_gpu_memory, memory_fraction


@pytest.mark.parametrize(
    ("num_gpus", "device_type", "cuda", "simulated", "expected"),
    [
        (0.25, "cuda", True, True, 0.25),  # four sites share a GPU: a quarter each
        (0.5, "cuda", True, True, 0.5),
        (0.0, "cuda", True, True, None),  # no GPU share scheduled
        (1.0, "cuda", True, True, None),  # a whole GPU: nothing to share
        (2.0, "cuda", True, True, None),
        (0.25, "cpu", True, True, None),  # the site trains on CPU
        (0.25, "cuda", False, True, None),  # no CUDA here
        (0.25, "cuda", True, False, None),  # a deployed SuperNode owns its device
    ],
)
def test_memory_fraction(
    num_gpus: float, device_type: str, cuda: bool, simulated: bool, expected: float | None
) -> None:
    fraction = memory_fraction(
        num_gpus, device_type=device_type, cuda_available=cuda, simulated=simulated
    )
    assert fraction == expected


def _no_cuda_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    calls: list[tuple[float, int]] = []
    monkeypatch.setattr(gpu_memory, "_CAPPED", set())
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device: calls.append((fraction, device)),
    )
    return calls


def test_cap_is_a_no_op_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_cuda_calls(monkeypatch)
    assert cap_gpu_memory(0.25, torch.device("cpu"), simulated=True) is None
    assert calls == []


def test_cap_applies_once_per_process_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_cuda_calls(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device = torch.device("cuda", 0)
    assert cap_gpu_memory(0.25, device, simulated=True) == 0.25
    assert cap_gpu_memory(0.25, device, simulated=True) == 0.25  # a second site, same actor
    assert calls == [(0.25, 0)]
    assert cap_gpu_memory(0.25, device, simulated=False) is None
    assert calls == [(0.25, 0)]
