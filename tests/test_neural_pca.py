"""Neural PCA: the logit decomposes exactly on a real (random-weight) network, a planted direction is
found first, and the proposer stores each top component's images as candidate cues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import distinct_image

from curate.ingest import FolderSource, ingest
from curate.models.weights import seeded
from curate.propose import ProposeError, make_proposer, propose
from curate.propose.neural_pca import NeuralPCA, load_classifier
from curate.records import NEGATIVE_OF
from curate.workspace import Workspace


def test_the_logit_is_exactly_the_sum_of_alphas_on_a_random_resnet() -> None:
    with seeded(1):
        images = torch.randn(10, 3, 64, 64)
    with seeded():  # the same seeded initialisation load_classifier uses
        reference = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    classifier = load_classifier("resnet18", "random", num_classes=3)
    with torch.inference_mode():
        logits = reference(images).double().numpy()  # the untouched network's own forward pass
        features = classifier.features(images).double().numpy()
    assert features.shape == (10, 512)
    for k in range(3):
        pca = NeuralPCA.fit(features[:6], classifier.weight[k], float(classifier.bias[k]))  # fitted on 6 images
        alphas = pca.alphas(features)  # ... and exact on all 10, inside and outside the fit
        assert alphas.shape == (10, 512)
        decomposed = alphas.sum(axis=1) + pca.mean.sum() + classifier.bias[k]
        np.testing.assert_allclose(decomposed, logits[:, k], rtol=0, atol=1e-5)
    assert classifier.version == "resnet18@random"


def test_a_planted_direction_is_the_top_component() -> None:
    rng = np.random.default_rng(0)
    width = 64
    planted = rng.normal(size=width)
    planted /= np.linalg.norm(planted)
    features = rng.normal(scale=0.1, size=(300, width)) + rng.normal(scale=3.0, size=(300, 1)) * planted
    weight = rng.uniform(0.5, 1.5, size=width)
    pca = NeuralPCA.fit(features / weight, weight, bias=0.0)  # contributions w * phi carry the planted direction
    assert abs(float(pca.components[:, 0] @ planted)) > 0.99
    assert pca.explained()[0] > 0.9 and np.all(np.diff(pca.variances) <= 1e-9)
    with pytest.raises(ProposeError, match="at least 2 feature rows"):
        NeuralPCA.fit(features[:1], weight, 0.0)


def test_the_proposer_stores_top_images_of_each_component_and_ranks_the_pool(workspace: Workspace,
                                                                            tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    for index in range(12):
        label = ("dog", "cat", "unlabelled")[index % 3]
        target = folder / label / f"{index}.png" if label != "unlabelled" else folder / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        distinct_image(index, (40, 32)).save(target)
    ingest(workspace, FolderSource(folder), progress=False)
    proposer = make_proposer("neural-pca", architecture="resnet18", components=2, top_images=3, pool_images=5,
                             image_size=32, batch_size=8)
    result = propose(workspace, proposer, progress=False)
    assert result.counts["items"] == 12 and result.counts["classes"] == 2
    assert result.run.models == {"resnet18": "resnet18@random"}
    rows = workspace.catalog.evidence(source="neural-pca")
    labels = {item.item_id: item.label for item in workspace.catalog.items()}
    for label in ("cat", "dog"):
        for component in (1, 2):
            mine = [r for r in rows if r.attribute == f"neural-pca:{label}:{component}"]
            own = sorted((r for r in mine if NEGATIVE_OF not in r.extra), key=lambda r: r.extra["rank"])
            pool = sorted((r for r in mine if NEGATIVE_OF in r.extra), key=lambda r: r.extra["rank"])
            assert len(own) == 3 and {labels[r.item_id] for r in own} == {label}  # 4 images of the class, top 3
            assert len(pool) == 5 and all(labels[r.item_id] != label and r.extra[NEGATIVE_OF] == label for r in pool)
            assert [r.score for r in own] == sorted((r.score for r in own), reverse=True)
            assert [r.score for r in pool] == sorted((r.score for r in pool), reverse=True)
    again = propose(workspace, proposer, progress=False)  # resumed: every class is done, nothing is added
    assert again.run.run_id == result.run.run_id and len(workspace.catalog.evidence(source="neural-pca")) == len(rows)


def test_a_class_without_an_output_is_a_clear_error(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "pool" / "dog").mkdir(parents=True)
    distinct_image(0).save(tmp_path / "pool" / "dog" / "0.png")
    ingest(workspace, FolderSource(tmp_path / "pool"), progress=False)
    (tmp_path / "index.json").write_text('{"cat": 0}')
    with pytest.raises(ProposeError, match="class_index names no output for dog"):
        propose(workspace, make_proposer("neural-pca", architecture="resnet18",
                                         class_index=str(tmp_path / "index.json")), progress=False)
