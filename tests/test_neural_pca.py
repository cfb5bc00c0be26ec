"""Neural PCA: the logit decomposes exactly on a real (random-weight) network, a planted direction is
found first, and the proposer stores each top component's images as candidate cues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import distinct_image

from annotation.configs import ConfigError
from annotation.rounds import RoundSpec
from annotation.tasks import ROUND_KINDS
from curate.builders import make_builder
from curate.ingest import FolderSource, ingest
from curate.models.weights import seeded
from curate.propose import ProposeError, make_proposer, propose
from curate.propose.neural_pca import NeuralPCA, load_classifier
from curate.records import NEGATIVE_OF, Verdict
from curate.workspace import Workspace


@pytest.mark.parametrize("architecture", ["resnet18", "timm:resnet18"])
def test_the_logit_is_exactly_the_sum_of_alphas_on_a_random_resnet(architecture: str) -> None:
    with seeded(1):
        images = torch.randn(10, 3, 64, 64)
    with seeded():  # the same seeded initialisation load_classifier uses
        reference = (timm.create_model("resnet18", pretrained=False, num_classes=3) if architecture.startswith("timm:")
                     else torchvision.models.resnet18(weights=None, num_classes=3)).eval()
    classifier = load_classifier(architecture, "random", num_classes=3)
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
        np.testing.assert_allclose(pca.alphas(features, 4, chunk=3), alphas[:, :4], rtol=0, atol=1e-12)  # in chunks
    assert classifier.version == f"{architecture}@random"


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


def test_components_are_proposed_judged_and_rank_spurious_only_candidates(workspace: Workspace,
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

    # people judge each component on its top images; a spurious one becomes a pair whose candidates
    # are the pool images the component ranks highest
    kind = ROUND_KINDS["component"]
    spec = RoundSpec("components-1", source="neural-pca", kind="component", max_attributes=2)
    tasks = {t["data"]["attribute"]: t["data"] for t in kind.plan(workspace, spec, set()).tasks}
    assert sorted(tasks) == [f"neural-pca:{c}:{n}" for c in ("cat", "dog") for n in (1, 2)]
    data = tasks["neural-pca:dog:1"]
    top = sorted((r for r in rows if r.attribute == "neural-pca:dog:1" and NEGATIVE_OF not in r.extra),
                 key=lambda r: -float(r.score or 0.0))
    assert data["shown"] == [r.item_id for r in top[:2]] and len(data["images"]) == 2 and data["class_label"] == "dog"
    answer = [{"from_name": "component_verdict", "to_name": "image", "type": "choices",
               "value": {"choices": ["spurious"]}},
              {"from_name": "type", "to_name": "image", "type": "choices", "value": {"choices": ["Background"]}},
              {"from_name": "name", "to_name": "image", "type": "textarea", "value": {"text": ["grass"]}}]
    [(attribute, value, kind_of_type, extra)] = kind.read(answer, data)
    assert (attribute, value, kind_of_type, extra) == ("neural-pca:dog:1", "spurious", "Background", {"name": "grass"})
    with pytest.raises(ConfigError, match="one verdict"):
        kind.read(answer[1:], data)
    workspace.catalog.add_verdicts([Verdict(data["item_id"], attribute, "ann", "components-1", value, kind_of_type,
                                            extra)])
    candidates = make_builder("spurious-only", pairs_round="components-1", evidence_source="neural-pca",
                              candidates_per_pair=3).build(workspace)
    table = candidates.tables["candidates"]
    pool = sorted((r for r in rows if r.attribute == "neural-pca:dog:1" and NEGATIVE_OF in r.extra),
                  key=lambda r: -float(r.score or 0.0))
    assert table["item_id"].to_list() == [r.item_id for r in pool[:3]]
    assert set(table["pair"]) == {"dog|neural-pca:dog:1"}
    assert candidates.metadata["pairs"][0]["verified_by"]["named"] == "grass"
    assert candidates.metadata["pairs"][0]["cue_type"] == "Background"


def test_a_class_without_an_output_is_a_clear_error(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "pool" / "dog").mkdir(parents=True)
    distinct_image(0).save(tmp_path / "pool" / "dog" / "0.png")
    ingest(workspace, FolderSource(tmp_path / "pool"), progress=False)
    (tmp_path / "index.json").write_text('{"cat": 0}')
    with pytest.raises(ProposeError, match="class_index names no output for dog"):
        propose(workspace, make_proposer("neural-pca", architecture="resnet18",
                                         class_index=str(tmp_path / "index.json")), progress=False)


def test_weights_from_a_state_dict_file_are_used_and_a_misfit_is_a_clear_error(tmp_path: Path) -> None:
    with seeded(7):
        trained = torchvision.models.resnet18(weights=None, num_classes=2)
    torch.save(trained.state_dict(), tmp_path / "mine.pt")
    classifier = load_classifier("resnet18", str(tmp_path / "mine.pt"), num_classes=2)
    np.testing.assert_array_equal(classifier.weight, trained.fc.weight.detach().double().numpy())
    assert classifier.version.startswith("resnet18@mine.pt:")
    with pytest.raises(ProposeError, match="does not fit resnet18 with 5 classes"):
        load_classifier("resnet18", str(tmp_path / "mine.pt"), num_classes=5)
    for unknown in ("resnet-nineteen", "timm:resnet-nineteen"):
        with pytest.raises(ProposeError, match="unknown (torchvision|timm) model"):
            load_classifier(unknown, "random", num_classes=2)
