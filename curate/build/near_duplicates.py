"""Near-duplicate images: a perceptual hash for every image, and CLIP embeddings where stored.

Two images are near-duplicates when their 64-bit difference hashes (dHash: is each pixel of a 9x8
grayscale thumbnail brighter than its right neighbour?) differ in at most ``max_bits`` bits *and*
their 8x8 grayscale thumbnails differ by at most ``max_level`` grey levels on average (flat images
of different colours share a dHash, not a thumbnail); or when the cosine similarity of their stored
image embeddings is at least ``min_similarity``. Clusters are the connected groups of such pairs.
A resized or re-encoded copy of an image lands in its cluster.

>>> from PIL import Image
>>> import numpy as np
>>> pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
>>> original = Image.fromarray(pixels).resize((256, 256))
>>> prints = {"a": fingerprint(original), "b": fingerprint(original.resize((97, 97))),
...           "c": fingerprint(Image.fromarray(pixels[::-1]).resize((256, 256)))}
>>> clusters(prints)
[['a', 'b']]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A 64-bit dHash and an 8x8 grayscale thumbnail of one image."""

    bits: np.ndarray  # 64 booleans
    thumbnail: np.ndarray  # 8 x 8 grey levels (float)


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of an image (any mode; compared in grayscale)."""
    gray = image.convert("L")
    wide = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.float32)
    small = np.asarray(gray.resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
    return Fingerprint((wide[:, 1:] > wide[:, :-1]).reshape(-1), small)


def clusters(fingerprints: Mapping[str, Fingerprint], max_bits: int = 6, max_level: float = 12.0,
             embeddings: Mapping[str, np.ndarray] | None = None, min_similarity: float = 0.95) -> list[list[str]]:
    """Clusters (two or more ids, sorted; clusters sorted by their first id) of near-duplicates
    among ``fingerprints``; ``embeddings`` (id -> vector, for any of those ids) add pairs whose
    cosine similarity is at least ``min_similarity``. Pairs are compared all against all."""
    ids = sorted(fingerprints)
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(pairs: np.ndarray) -> None:
        for i, j in pairs:
            parent[root(int(i))] = root(int(j))

    if ids:
        bits = np.stack([fingerprints[i].bits for i in ids])
        thumbs = np.stack([fingerprints[i].thumbnail.reshape(-1) for i in ids])
        for i in range(len(ids) - 1):
            distance = (bits[i + 1:] != bits[i]).sum(axis=1)
            level = np.abs(thumbs[i + 1:] - thumbs[i]).mean(axis=1)
            close = np.flatnonzero((distance <= max_bits) & (level <= max_level)) + i + 1
            join(np.column_stack([np.full(close.size, i), close]))
    embedded = [n for n, i in enumerate(ids) if embeddings and i in embeddings]
    if len(embedded) > 1:
        vectors = np.stack([np.asarray(embeddings[ids[n]], dtype=np.float32) for n in embedded])  # type: ignore[index]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        for row in range(len(embedded) - 1):
            close = np.flatnonzero(vectors[row + 1:] @ vectors[row] >= min_similarity) + row + 1
            join(np.array([(embedded[row], embedded[c]) for c in close], dtype=np.int64).reshape(-1, 2))
    members: dict[int, list[str]] = {}
    for n, item_id in enumerate(ids):
        members.setdefault(root(n), []).append(item_id)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda group: group[0])
