"""The one scrubber every stored or printed error passes through."""

from __future__ import annotations

import pytest

from curate.records import RunStatus
from curate.secrets import remember_secret, scrub
from curate.workspace import Workspace


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer abc.def-123", "Authorization: Bearer [secret]"),
    ("{'authorization': 'bearer tok_9f8e7d'}", "{'authorization': 'bearer [secret]'}"),
    ("key sk-proj-AbC123_xyz-789 refused", "key [secret] refused"),
    ("token hf_AbCdEf123456 expired", "token [secret] expired"),
    ("sk-s and hf_ alone are words", "sk-s and hf_ alone are words"),
])
def test_key_shapes_are_scrubbed(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_the_configured_key_is_scrubbed_whatever_its_shape() -> None:
    assert scrub("echo plain-key-77 back") == "echo plain-key-77 back"
    remember_secret("plain-key-77")
    remember_secret("")  # an unset key scrubs nothing
    assert scrub("echo plain-key-77 back, plain-key-77") == "echo [secret] back, [secret]"


def test_a_run_error_is_stored_scrubbed(workspace: Workspace) -> None:
    with pytest.raises(RuntimeError), workspace.runs.track("propose", "x", {}) as run:
        raise RuntimeError("server said: Bearer sk-abcdef123456 is wrong")
    assert workspace.runs.get(run.run_id).error == "RuntimeError: server said: Bearer [secret] is wrong"
    assert workspace.runs.get(run.run_id).status == RunStatus.FAILED
