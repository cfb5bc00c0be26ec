"""Executors: how a scoring pass moves images through decoding and a model, chosen by name.

``local`` decodes in threads of this process; ``ray`` (the ``curate[ray]`` extra) decodes in Ray
Data CPU tasks and runs the model in a pool of actors, on this machine or a cluster.
"""

from curate.executors import local, ray_data  # noqa: F401  (registers them)
from curate.executors.base import (
    EXECUTORS,
    BatchWorker,
    Executor,
    ExecutorError,
    ImageBatch,
    Job,
    ScoredBatch,
    make_executor,
    register_executor,
)
from curate.executors.local import image_batches

__all__ = ["EXECUTORS", "BatchWorker", "Executor", "ExecutorError", "ImageBatch", "Job", "ScoredBatch", "image_batches",
           "make_executor", "register_executor"]
