"""Rebuild the bundled demo images from photographs that scikit-image ships (CC0 / public domain).

Run from the repository root: ``.venv/bin/python tools/demo_data/make.py``. Each photo gives three
variants (a centre crop, a mirrored crop, a corner crop) at 192 px, so every class has a few images.
One truncated file shows how ingest quarantines bad input. See LICENSES.md for the sources.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageOps
from skimage import data

HERE = Path(__file__).resolve().parent
PHOTOS = {  # class -> (scikit-image photo, licence, setting)
    "cat": ("chelsea", "CC0-1.0", "indoor"),
    "coffee": ("coffee", "CC0-1.0", "indoor"),
    "astronaut": ("astronaut", "public-domain", "indoor"),
    "rocket": ("rocket", "public-domain", "outdoor"),
    "horse": ("horse", "public-domain", "outdoor"),
}
SIZE = 192


def variants(image: Image.Image) -> list[Image.Image]:
    side = min(image.size)
    centre = ImageOps.fit(image, (side, side))
    corner = image.crop((0, 0, side * 3 // 4, side * 3 // 4))
    return [v.resize((SIZE, SIZE)) for v in (centre, ImageOps.mirror(centre), corner)]


def main() -> None:
    images = HERE / "images"
    rows = []
    for label, (photo, licence, setting) in PHOTOS.items():
        pixels = getattr(data, photo)()
        image = Image.fromarray(pixels).convert("RGB")
        for index, variant in enumerate(variants(image)):
            relative = Path("images") / label / f"{photo}-{index}.jpg"
            (HERE / relative).parent.mkdir(parents=True, exist_ok=True)
            variant.save(HERE / relative, quality=85)
            rows.append({"path": relative.as_posix(), "label": label, "licence": licence, "setting": setting,
                         "source": f"skimage.data.{photo}"})
    (images / "cat" / "truncated.jpg").write_bytes((images / "cat" / "chelsea-0.jpg").read_bytes()[:2000])
    with (HERE / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # A toy group table: y = cat (0) or rocket (1), a = indoor (0) or outdoor (1), split by row.
    # Here every cat is indoors and every rocket outdoors: a perfectly spurious setting.
    classes = ["cat", "rocket"]
    with (HERE / "groups.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "filename", "split", "y", "a"])
        chosen = [row for row in rows if row["label"] in classes]
        for number, row in enumerate(chosen, start=1):
            writer.writerow([number, row["path"], number % 3, classes.index(row["label"]),
                             int(row["setting"] == "outdoor")])


if __name__ == "__main__":
    main()
