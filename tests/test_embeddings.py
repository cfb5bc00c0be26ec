"""Image embeddings are stored once per model version, and a resumed run loses none of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import distinct_image

from curate.ingest import FolderSource, ingest
from curate.propose import embeddings, make_proposer, propose
from curate.propose.base import ProposeContext
from curate.workspace import Workspace
from curate.workspace.tables import embeddings_table


@pytest.fixture
def animals(workspace: Workspace, tmp_path: Path) -> Workspace:
    for label, seeds in (("cat", [1, 2, 3]), ("dog", [4, 5])):
        (tmp_path / "animals" / label).mkdir(parents=True)
        for seed in seeds:
            distinct_image(seed, (48, 40)).save(tmp_path / "animals" / label / f"{seed}.png")
    ingest(workspace, FolderSource(tmp_path / "animals"), progress=False)
    propose(workspace, make_proposer("priors", types=("Background",)), progress=False)
    return workspace


def test_a_resumed_clip_run_keeps_the_embeddings_of_the_killed_one(animals: Workspace, tiny_clip: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "FLUSH_EVERY", 2)  # a part per two images
    real_write: Callable[..., None] = ProposeContext.write_evidence
    writes = {"n": 0}

    def killed_at_the_second_batch(self: ProposeContext, rows: list, **counts: int) -> None:
        real_write(self, rows, **counts)
        writes["n"] += 1
        if writes["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ProposeContext, "write_evidence", killed_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    table = embeddings_table(tiny_clip)
    before_kill = set(animals.tables.read(table)["item_id"])
    assert len(before_kill) == 2  # the first cat batch's part; the second batch died unflushed
    monkeypatch.setattr(ProposeContext, "write_evidence", real_write)
    resumed = propose(animals, make_proposer("clip", model=tiny_clip, batch_size=2), progress=False)
    assert resumed.run.attempts == 2 and resumed.counts["embeddings_computed"] == 2  # the dogs
    dogs = {item.item_id for item in animals.catalog.items(label="dog")}
    assert set(animals.tables.read(table)["item_id"]) == before_kill | dogs  # no part overwritten
    other = propose(animals, make_proposer("clip", model=tiny_clip, templates=("a photo of {attribute}.",)),
                    progress=False)
    assert other.counts["embeddings_computed"] == 1  # only the one the killed process never stored
