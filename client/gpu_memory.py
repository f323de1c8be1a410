"""A simulated ClientApp's share of a GPU, enforced.

Ray schedules `simulation.num_gpus` (e.g. 0.3: three sites share one GPU) as a fraction of a
device but caps no memory: one site's allocations could fill the GPU and make the sites beside
it fail with out-of-memory. So a simulated ClientApp process whose site runs on CUDA caps its
PyTorch allocator at that fraction of the device's memory
(`torch.cuda.set_per_process_memory_fraction`) before it handles its first message: a site
that needs more fails itself, with an out-of-memory error in its own log, and leaves the
others' memory alone. Not capped: the CUDA context (a few hundred MiB per process, outside the
allocator), the server's own process (SynPre, central evaluation on `train.device`; leave it
room, e.g. 0.3 per site for 3 sites), and deployed SuperNodes (each owns its device).
"""

from __future__ import annotations

import torch

_CAPPED: set[int] = set()  # devices this process has capped already


def memory_fraction(
    num_gpus: float, *, device_type: str, cuda_available: bool, simulated: bool
) -> float | None:
    """The fraction of the GPU's memory to cap this process at, or None for no cap: only a
    simulated site on CUDA with a fractional GPU (0 < num_gpus < 1) gets one."""
    if not simulated or device_type != "cuda" or not cuda_available:
        return None
    if not 0 < num_gpus < 1:
        return None
    return float(num_gpus)


def cap_gpu_memory(num_gpus: float, device: torch.device, *, simulated: bool) -> float | None:
    """Apply `memory_fraction` once per process and device (a no-op on CPU); returns the cap."""
    fraction = memory_fraction(
        num_gpus,
        device_type=device.type,
        cuda_available=torch.cuda.is_available(),
        simulated=simulated,
    )
    if fraction is None:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPPED:
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        _CAPPED.add(index)
    return fraction
