"""URL downloads for table sources: streamed to a temporary file under a total deadline and a byte cap.

A server that trickles bytes or sends an endless body costs at most ``deadline_s`` seconds and
``max_bytes`` of memory; the row is then quarantined (``timed-out`` / ``too-large``) and ingest goes on.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import httpx

from curate.images import ImageRejected

DEFAULT_DEADLINE_S = 120.0
DEFAULT_MAX_BYTES = 256 * 2**20
READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """How long one download may take in all, and how many bytes it may bring.

    >>> DownloadLimits().max_bytes == 256 * 2**20
    True
    """

    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.max_bytes <= 0:
            raise ValueError(f"download limits must be positive: {self.deadline_s} s, {self.max_bytes} bytes")


def download(url: str, limits: DownloadLimits = DownloadLimits()) -> bytes:  # noqa: B008 - frozen, shared
    """The body of ``url``, or ``ImageRejected`` (``unreadable``, ``timed-out`` or ``too-large``)."""
    started = time.monotonic()
    timeout = httpx.Timeout(min(READ_TIMEOUT_S, limits.deadline_s))
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response, \
                tempfile.TemporaryFile(prefix="curate-download-") as spool:
            response.raise_for_status()
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise _too_large(url, int(declared), limits)
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise _too_large(url, size, limits)
                if time.monotonic() - started > limits.deadline_s:
                    raise ImageRejected("timed-out", f"download of {url} took over {limits.deadline_s:g} s "
                                                     f"({size:,} bytes so far)")
                spool.write(chunk)
            spool.seek(0)
            return spool.read()
    except httpx.TimeoutException as error:
        raise ImageRejected("timed-out", f"download of {url} stalled: {type(error).__name__}") from error
    except httpx.HTTPError as error:
        raise ImageRejected("unreadable", f"download of {url} failed: {error}") from error


def _too_large(url: str, size: int, limits: DownloadLimits) -> ImageRejected:
    return ImageRejected("too-large", f"download of {url} is over {limits.max_bytes:,} bytes ({size:,} or more)")
