"""Executors: how the stages move work through the machine (local: batched, overlapped I/O)."""

from curate.executors.local import ImageBatch, image_batches

__all__ = ["ImageBatch", "image_batches"]
