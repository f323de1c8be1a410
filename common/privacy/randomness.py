"""The source of private randomness: Poisson sampling and DP noise.

By default a generator is seeded from the operating system's entropy (`os.urandom`) for every
run and its seed is never stored, logged or sent: whoever knew it could replay the sampling and
subtract the noise. A seeded mode exists only for reproducible research; every record of such a
run carries `SEEDED_NOISE_NOTE`. (opacus' `secure_mode` would need `torchcsprng`, which cannot be
installed here; a CSPRNG-seeded Mersenne Twister is the same choice opacus makes without it.)
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

SEEDED_NOISE_NOTE = "seeded noise: reproducible; no guarantee against anyone who knows the seed"


def private_generator(
    device: torch.device | str = "cpu", seed: int | None = None, *, stream: str = "noise"
) -> torch.Generator:
    """A generator for Poisson masks and DP noise on `device`.

    `seed=None` (the default): seeded from 8 bytes of OS entropy, never recorded. An integer seed
    is the explicit research mode (see `SEEDED_NOISE_NOTE`); the generator then draws the
    stream `seeded_stream(seed, stream)`, so two mechanisms given one seed but different
    `stream` names never share their draws.
    """
    generator = torch.Generator(device)
    if seed is None:
        generator.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    else:
        generator.manual_seed(seeded_stream(seed, stream))
    return generator


def seeded_stream(seed: int, *key: str | int) -> int:
    """A 63-bit seed for the stream named by `key` in the seeded research mode, derived from
    `seed` by numpy's SeedSequence (a hash, as its `spawn` does), not by offsets: with offsets,
    one mechanism's seed + 1 was another's seed + 1001 + 1000 * round, and their draws were
    the same numbers. `key`: names and whole numbers (e.g. "dp-sgd", ledger position)."""
    # SeedSequence takes integers >= 0: a negative seed (torch accepts one) as its 64-bit word
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) % 2**64 for k in key]
    entropy = seed % 2**64
    state = np.random.SeedSequence(entropy, spawn_key=tuple(words)).generate_state(2, np.uint64)
    return ((int(state[0]) << 64) | int(state[1])) & ((1 << 63) - 1)


def noise_mode(seed: int | None) -> str:
    """How a record names its randomness: 'os-entropy' or the seeded note."""
    return "os-entropy" if seed is None else SEEDED_NOISE_NOTE


@contextmanager
def private_stochastic_layers(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Dropout and stochastic-depth masks inside the block drawn from `generator` (a
    `private_generator`), the global RNG restored after it.

    Why: such a layer draws one mask per row of the batch from torch's global RNG, which a run
    seeds with its seed (known to the server). A record's presence in a Poisson batch would then
    shift every later record's mask, so neighbouring datasets would differ in more than one
    clipped term; with masks from hidden randomness the other records' masks have the same
    distribution either way. Under the seeded research mode the masks are reproducible (and
    the run is marked as such).
    """
    seed = int(torch.randint(0, (1 << 63) - 1, (1,), generator=generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield
