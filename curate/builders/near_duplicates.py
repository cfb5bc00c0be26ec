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

BLOCK = 1024  # rows compared at once: memory ~ BLOCK x images x 8 bytes
MAX_LEVEL = 12.0  # mean grey-level difference of 8x8 thumbnails still called a near-duplicate


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


def clusters(fingerprints: Mapping[str, Fingerprint], max_bits: int = 6, max_level: float = MAX_LEVEL,
             embeddings: Mapping[str, np.ndarray] | None = None, min_similarity: float = 0.95) -> list[list[str]]:
    """Clusters (two or more ids, sorted; clusters sorted by their first id) of near-duplicates
    among ``fingerprints``; ``embeddings`` (id -> vector, for any of those ids) add pairs whose
    cosine similarity is at least ``min_similarity``. Pairs are compared all against all, in blocks
    (packed hashes and a popcount: about 10^9 pairs in seconds)."""
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
        hashes = np.packbits(np.stack([fingerprints[i].bits for i in ids]), axis=1).view(np.uint64)[:, 0]
        thumbs = np.stack([fingerprints[i].thumbnail.reshape(-1) for i in ids])
        for start in range(0, len(ids), BLOCK):  # a block of rows against every later row
            block = hashes[start:start + BLOCK, None]
            rows, columns = np.nonzero(np.bitwise_count(block ^ hashes[None, start:]) <= max_bits)
            rows, columns = rows + start, columns + start
            pairs = np.column_stack([rows, columns])[columns > rows]
            level = np.abs(thumbs[pairs[:, 0]] - thumbs[pairs[:, 1]]).mean(axis=1)
            join(pairs[level <= max_level])
    embedded = [n for n, i in enumerate(ids) if embeddings and i in embeddings]
    if len(embedded) > 1:
        # ignored below (index): ``embedded`` is empty when embeddings is None
        vectors = np.stack([np.asarray(embeddings[ids[n]], dtype=np.float32) for n in embedded])  # type: ignore[index]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        index = np.asarray(embedded)
        for start in range(0, len(embedded), BLOCK):
            rows, columns = np.nonzero(vectors[start:start + BLOCK] @ vectors[start:].T >= min_similarity)
            rows, columns = rows + start, columns + start
            keep = columns > rows
            join(np.column_stack([index[rows[keep]], index[columns[keep]]]))
    members: dict[int, list[str]] = {}
    for n, item_id in enumerate(ids):
        members.setdefault(root(n), []).append(item_id)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda group: group[0])
