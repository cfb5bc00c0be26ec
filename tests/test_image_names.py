"""A release's image file names: the per-item rule and its vectorised form agree on every shape of URI."""

from __future__ import annotations

import polars as pl

from curate.builders.base import image_name, image_names

URIS = ["blob:ab/abcd.jpg", "file:///data/cat/1.PNG", "a/b.tar.gz", "a/.hidden", "a/b.", "a/b", "a/b/", "a/b.jpg/",
        "a/b.jpg/.", "a/..", "a/...", "a/.a.b", "..a", "x.", ".", "", "/", "a//b.png", "hf://d/x/y.webp?r=1",
        "a/b c.JPEG", "a/b.j\npg", "a/b\n.jpg", "s3://bucket/k/img.0001.jpeg", "a/b./", "a/./b.png", "a.b/c", "ü/ñ.é"]


def test_names_of_a_column_are_the_names_of_each_item() -> None:
    """``build groups`` names a million images at once (``image_names``); the other builders name them
    one at a time (``image_name``): a release's files must not depend on which."""
    frame = pl.DataFrame({"stem": [f"{n:06d}" for n in range(len(URIS))], "uri": URIS})
    named = frame.select(image_names(pl.col("stem"), pl.col("uri"), "logos").alias("name"))["name"].to_list()
    assert named == [image_name(stem, uri, "logos") for stem, uri in frame.iter_rows()]
    assert named[:3] == ["logos/000000.jpg", "logos/000001.PNG", "logos/000002.gz"]
