"""One root seed, one independent, named random stream per component.

Streams are derived with :class:`numpy.random.SeedSequence` from the root seed and a stable hash of
the component's name, so adding a new component never shifts the numbers another one draws.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream_key(name: str) -> int:
    """A stable 32-bit key for a component name (``zlib.crc32``, identical across runs and platforms)."""
    return zlib.crc32(name.encode("utf-8"))


def seed_sequence(seed: int, name: str) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=(stream_key(name),))


def generator(seed: int, name: str) -> np.random.Generator:
    """The random stream called ``name`` under the root ``seed``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, name)))


def kernel_state(seed: int, name: str) -> np.ndarray:
    """Four non-zero 64-bit words seeding the compiled kernel's xoshiro256** generator."""
    words = seed_sequence(seed, name).generate_state(4, dtype=np.uint64)
    words[words == 0] = np.uint64(0x9E3779B97F4A7C15)
    return words
