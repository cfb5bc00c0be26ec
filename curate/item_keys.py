"""Order keys of items: a uniform integer per item id, the same on every machine and polars version.

Item ids are sha256 digests, so the first 15 hex digits of an id are already a uniform 60-bit
integer; an id that does not start with 15 hex digits (a hand-made one) is keyed by the sha256 of
its text instead. The negative pool a class's cues are scored on (``curate.propose.scoring``) and
the folds of analyze's cross-validation (``curate.analyze.cues``) both follow these keys.

>>> item_keys(pl.Series(["ab" * 32])).to_list() == [int("ab" * 8, 16) >> 4]
True
"""

from __future__ import annotations

import hashlib

import polars as pl

KEY_DIGITS = 15
"""An order key is the first 15 hex digits of a sha256 digest: 60 bits, an exact ``UInt64``."""
_HEX_ID = f"^[0-9a-fA-F]{{{KEY_DIGITS}}}"


def text_key(text: str) -> int:
    """The order key of any text: the first 15 hex digits of its sha256.

    >>> text_key("dog") == int(hashlib.sha256(b"dog").hexdigest()[:15], 16)
    True
    """
    return int(hashlib.sha256(text.encode()).hexdigest()[:KEY_DIGITS], 16)


def item_keys(item_ids: pl.Series) -> pl.Series:
    """Each item's order key (``UInt64``, uniform in [0, 2^60)), named ``key``: the first 15 hex
    digits of its id, or ``text_key`` of an id that does not start with 15 of them.

    >>> item_keys(pl.Series(["ab" * 32, "i1"])).to_list() == [int("ab" * 8, 16) >> 4, text_key("i1")]
    True
    """
    hexadecimal = item_ids.str.contains(_HEX_ID)
    keys = (item_ids.str.slice(0, KEY_DIGITS).str.to_integer(base=16, strict=False)
            .zip_with(hexadecimal, pl.Series([None], dtype=pl.Int64)).cast(pl.UInt64).rename("key"))
    others = (~hexadecimal).arg_true()
    if len(others):
        keys = keys.scatter(others, [text_key(item_id) for item_id in item_ids.gather(others)])
    return keys


def item_key(column: str = "item_id") -> pl.Expr:
    """``item_keys`` of a column, as an expression for lazy frames (named ``key``).

    >>> pl.DataFrame({"item_id": ["i1"]}).select(item_key())["key"].to_list() == [text_key("i1")]
    True
    """
    return pl.col(column).map_batches(item_keys, return_dtype=pl.UInt64, is_elementwise=True).alias("key")
