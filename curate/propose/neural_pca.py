"""``neural-pca``: candidate spurious cues from a classifier's class-wise neural PCA (Spurious ImageNet).

For class k with last-layer weights ``w_k`` and bias ``b_k`` and penultimate features ``phi(x)``,
PCA over the logit contributions ``w_k * phi(x)`` (elementwise) of the class's images gives a mean
``mu`` and orthonormal components ``v_l``; with ``alpha_l(x) = v_l^T (w_k * phi(x) - mu) * (1^T v_l)``
the logit is exactly ``sum_l alpha_l(x) + 1^T mu + b_k`` (Neuhaus et al., ICCV 2023). The
``components`` with the largest variance become candidate cues: evidence rows
``neural-pca:<class>:<l>`` on the class's ``top_images`` images with the highest ``alpha_l`` (to
name and verify in an attribute round: spurious, core, or unsure when the images are inconsistent),
and on the ``pool_images`` images outside the class (other classes, unlabelled items) that
``alpha_l`` ranks highest, marked as negatives of the class (``extra["negative_of"]``): the
candidates the ``spurious-only`` builder ranks once people call the component spurious.

The classifier is a torchvision model name or ``timm:<name>`` with ``num_classes`` outputs, random
(seeded) or loaded from a state-dict file; its output ``i`` is the class ``class_index`` maps to
``i`` (default: the workspace's labels in sorted order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.executors.local import image_batches
from curate.progress import progress_bar
from curate.propose.base import ProposeContext, ProposeError, Proposer, register_proposer
from curate.records import NEGATIVE_OF, Evidence, EvidenceRole, Item
from curate.workspace.evidence import extra_field

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class NeuralPCA:
    """One class's neural PCA: the mean contribution and every component (columns of
    ``components``, largest variance first), so the logit decomposes exactly.

    >>> rng = np.random.default_rng(0)
    >>> features, weight = rng.normal(size=(20, 4)), rng.normal(size=4)
    >>> pca = NeuralPCA.fit(features, weight, bias=0.5)
    >>> bool(np.allclose(pca.alphas(features).sum(1) + pca.mean.sum() + 0.5, features @ weight + 0.5))
    True
    """

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, weight: np.ndarray, bias: float) -> NeuralPCA:
        """PCA over ``weight * features`` of a class's images (rows); the full orthonormal basis is kept."""
        features = np.asarray(features, dtype=np.float64)
        weight = np.asarray(weight, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] != weight.shape[0]:
            raise ProposeError(f"neural PCA needs at least 2 feature rows of width {weight.shape[0]}, "
                               f"got shape {features.shape}")
        contributions = features * weight
        mean = contributions.mean(axis=0)
        centred = contributions - mean
        variances, vectors = np.linalg.eigh(centred.T @ centred / (len(centred) - 1))
        order = np.argsort(variances)[::-1]
        variances, vectors = np.clip(variances[order], 0.0, None), vectors[:, order]
        vectors = vectors * np.where(vectors.sum(axis=0) < 0, -1.0, 1.0)  # a fixed sign (alpha does not depend on it)
        return cls(weight, float(bias), mean, vectors, variances)

    def alphas(self, features: np.ndarray, count: int | None = None, chunk: int = 65536) -> np.ndarray:
        """``alpha_l(x)`` for every row of ``features`` and the first ``count`` components (all when
        None): shape (images, components); rows are taken ``chunk`` at a time, so only the result grows
        with the pool."""
        basis = self.components[:, :count]
        scale = basis.sum(axis=0)
        out = np.empty((len(features), basis.shape[1]))
        for start in range(0, len(features), chunk):
            centred = np.asarray(features[start:start + chunk], dtype=np.float64) * self.weight - self.mean
            out[start:start + chunk] = (centred @ basis) * scale
        return out

    def explained(self) -> np.ndarray:
        """Each component's share of the contributions' total variance."""
        total = self.variances.sum()
        return self.variances / total if total > 0 else np.zeros_like(self.variances)


@dataclass
class Classifier:
    """A classifier split at its last linear layer: ``features`` (images -> phi) and ``head``."""

    features: Callable[[torch.Tensor], torch.Tensor]
    head: torch.nn.Linear
    version: str

    @property
    def weight(self) -> np.ndarray:
        return self.head.weight.detach().cpu().double().numpy()

    @property
    def bias(self) -> np.ndarray:
        bias = self.head.bias
        return np.zeros(self.head.out_features) if bias is None else bias.detach().cpu().double().numpy()


def _build(architecture: str, num_classes: int) -> torch.nn.Module:
    if architecture.startswith("timm:"):
        import timm

        name = architecture.removeprefix("timm:")
        if name not in timm.list_models():
            raise ProposeError(f"unknown timm model {name!r}; `timm.list_models('*{name[:4]}*')` lists similar names")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    import torchvision

    try:
        return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    except ValueError as error:
        raise ProposeError(f"unknown torchvision model {architecture!r} ({error}); timm models are 'timm:<name>'") \
            from None


def _split(model: torch.nn.Module, architecture: str) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                                torch.nn.Linear]:
    """The penultimate features and the last linear layer (timm's classifier, or torchvision's last
    ``Linear``, replaced by an identity)."""
    import torch

    if hasattr(model, "forward_head") and hasattr(model, "get_classifier"):  # timm
        # ignored below (operator): nn.Module types unknown attributes as Tensor | Module; timm's are methods
        head = model.get_classifier()  # type: ignore[operator]
        if not isinstance(head, torch.nn.Linear):
            raise ProposeError(f"{architecture}'s classifier is a {type(head).__name__}, not a linear layer")
        # ignored below (operator): as above, timm's forward_head / forward_features are methods
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True), head  # type: ignore[operator]
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        raise ProposeError(f"{architecture} has no linear last layer to decompose")
    name = linears[-1]
    head = model.get_submodule(name)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, torch.nn.Identity())
    # ignored below (return-value): get_submodule is typed Module; the name was picked among Linear layers
    return model, head  # type: ignore[return-value]


def load_classifier(architecture: str, weights: str, num_classes: int, device: str = "cpu") -> Classifier:
    """A torchvision (or ``timm:<name>``) classifier with ``num_classes`` outputs, split at its last
    layer; ``weights`` is ``random`` (seeded) or a state-dict file (a path, or a name in the weights folders)."""
    import torch

    from curate.models.weights import RANDOM, find_weight_file, seeded

    with seeded():
        model = _build(architecture, num_classes)
    version = f"{architecture}@{RANDOM}"
    if weights != RANDOM:
        found = find_weight_file(weights, architecture, "save the model's state_dict() with torch.save")
        state = torch.load(found.location, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except RuntimeError as error:
            raise ProposeError(f"{found.location} does not fit {architecture} with {num_classes} classes: "
                               f"{str(error).splitlines()[0]}") from None
        version = found.version
    model.eval().to(device)
    features, head = _split(model, architecture)
    return Classifier(features, head, version)


def _transform(size: int) -> Callable[[Any], Any]:
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@register_proposer("neural-pca")
@dataclass
class NeuralPCAProposer(Proposer):
    """Class-wise neural PCA of a classifier: each top component's highest-alpha images as a candidate cue."""

    architecture: str = "resnet50"
    weights: str = "random"
    class_index: str | None = None  # a JSON file {class label: output index}; default: sorted labels
    num_classes: int | None = None  # the classifier's outputs; default: as many as class_index names
    components: int = 5
    top_images: int = 20
    pool_images: int = 200
    image_size: int = 224
    batch_size: int = 32
    device: str = "cpu"

    def _index(self, context: ProposeContext) -> dict[str, int]:
        if self.class_index is None:
            return {label: i for i, label in enumerate(context.workspace.catalog.labels())}
        try:
            index = {str(k): int(v) for k, v in json.loads(Path(self.class_index).read_text()).items()}
        except (OSError, ValueError, AttributeError) as error:
            raise ProposeError(f"cannot read class_index {self.class_index}: {error}") from None
        return index

    def run(self, context: ProposeContext) -> None:
        import torch

        index = self._index(context)
        labels = context.class_labels()
        unindexed = [label for label in labels if label not in index]
        if unindexed:
            raise ProposeError(f"class_index names no output for {', '.join(unindexed)}")
        outputs = self.num_classes or (max(index.values()) + 1 if index else 0)
        if outputs < 1 or max(index[label] for label in labels) >= outputs:
            raise ProposeError(f"the classifier has {outputs} outputs; class_index needs up to "
                               f"{max(index[label] for label in labels) + 1}")
        done = set(context.workspace.catalog.evidence_scan(run_id=context.run.run_id)
                   .select(extra_field("class").unique()).collect()["class"])
        labels = [label for label in labels if label not in done]
        if not labels:
            return
        classifier = load_classifier(self.architecture, self.weights, outputs, self.device)
        context.models[self.architecture] = classifier.version
        items = list(context.workspace.catalog.items())
        features, kept = self._features(context, classifier, items, torch)
        weight, bias = classifier.weight, classifier.bias
        for label in labels:
            mine = np.array([item.label == label for item in kept])
            if mine.sum() < 2:
                context.count(classes_skipped=1)
                continue
            pca = NeuralPCA.fit(features[mine], weight[index[label]], float(bias[index[label]]))
            alphas = pca.alphas(features, self.components)
            context.write_evidence(self._rows(context, label, pca, alphas, kept, mine, classifier.version),
                                   classes=1)

    def _features(self, context: ProposeContext, classifier: Classifier, items: list[Item],
                  torch: Any) -> tuple[np.ndarray, list[Item]]:
        """Penultimate features of every readable item (all classes and unlabelled ones)."""
        vectors, kept = [], []
        with progress_bar(f"neural-pca features ({self.architecture})", len(items), context.progress) as advance, \
                torch.inference_mode():
            for batch in image_batches(context.workspace, items, self.batch_size, _transform(self.image_size)):
                if batch.items:
                    out = classifier.features(torch.stack(batch.transformed).to(self.device))
                    vectors.append(out.detach().cpu().float().numpy())  # float32 while held; PCA in float64
                    kept += batch.items
                context.count(items=len(batch.items), unreadable=len(batch.failures))
                advance(len(batch.items) + len(batch.failures))
        if not kept:
            raise ProposeError("no readable image to compute features of")
        return np.concatenate(vectors), kept

    def _rows(self, context: ProposeContext, label: str, pca: NeuralPCA, alphas: np.ndarray, items: list[Item],
              mine: np.ndarray, version: str) -> list[Evidence]:
        """Evidence of the top components: the class's highest-alpha images, then the pool's."""
        rows = []
        shares = pca.explained()
        for component in range(min(self.components, alphas.shape[1])):
            attribute = f"neural-pca:{label}:{component + 1}"
            about = {"class": label, "component": component + 1, "explained_variance": float(shares[component])}
            for among, limit, extra in ((np.flatnonzero(mine), self.top_images, {}),
                                        (np.flatnonzero(~mine), self.pool_images, {NEGATIVE_OF: label})):
                ranked = among[np.argsort(-alphas[among, component], kind="stable")][:limit]
                rows += [Evidence(items[i].item_id, attribute, self.name, context.run.run_id, EvidenceRole.CANDIDATE,
                                  None, float(alphas[i, component]), [], self.architecture, version,
                                  {**about, **extra, "rank": rank + 1}) for rank, i in enumerate(ranked)]
        return rows
