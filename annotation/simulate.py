"""Simulated annotators, for demos and tests: people who answer an attribute round through the
real annotator stream, each with their own login, accepting pre-fills with a chosen error rate.

Their logins end in ``@simulated.curate.invalid``, so pull flags their verdicts as simulated and
cards say so. They measure nothing about images.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation import server, transport
from annotation.configs import ATTRIBUTE_SLOTS, AttributeRow, attribute_answers
from annotation.rounds import RoundSpec, project
from annotation.server import Connection
from annotation.tasks import gold_answers
from annotation.transport import BridgeError
from curate.progress import progress_bar
from curate.verdicts import ATTRIBUTE_CHOICES, SIMULATED_DOMAIN, VerdictValue
from curate.workspace import Workspace


def simulated_people(workspace_root: str | Path, count: int) -> list[Connection]:
    """Connections of ``sim-1`` ... ``sim-<count>`` on the workspace's server, created when missing."""
    known = {login.email: login for login in server.annotator_logins(workspace_root)}
    url = server.connection(workspace_root).url
    people = []
    for number in range(1, count + 1):
        email = f"sim-{number}@{SIMULATED_DOMAIN}"
        login = known.get(email) or server.add_annotator(workspace_root, email)
        people.append(Connection(url, login.token))
    return people


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What simulated annotators did: annotations per annotator, answers changed on purpose."""

    annotations: dict[str, int]
    wrong_answers: int


def simulate(workspace: Workspace, connection: Connection, spec: RoundSpec, annotators: Sequence[Connection],
             error_rate: float = 0.1, seed: int = 0, progress: bool = True) -> SimulationReport:
    """Answer an attribute round as simulated people, each through the real annotator stream
    (``/next``) with their own token, in turn until the stream is empty for everybody.

    A simulated person accepts each pre-filled answer (the gold answer on gold tasks, the majority
    of the votes so far in an adjudication) and, with probability ``error_rate``, picks another
    value instead.

    >>> # simulate(ws, connection(ws.root), stored_spec(ws, "round-1"), simulated_people(ws.root, 3))
    """
    if spec.kind != "attributes":
        raise BridgeError("simulated annotators answer attribute rounds only")
    if not 0.0 <= error_rate <= 1.0:
        raise BridgeError(f"error_rate is a probability, got {error_rate}")
    project_id = project(transport.client(connection), workspace, spec, create=False)
    gold = gold_answers(workspace, spec.gold_round) if spec.gold_round else {}
    rng = random.Random(seed)
    done: dict[str, int] = {}
    wrong = 0
    active = list(annotators)
    identities = {person.token: transport.call("who am I", transport.client(person).users.whoami).email
                  for person in active}
    answered: set[tuple[str, int]] = set()
    with progress_bar(f"simulate {spec.name}", None, progress) as advance:
        while active:
            for person in list(active):
                task = transport.next_task(person, project_id)
                if task is None:
                    active.remove(person)
                    continue
                if (person.token, int(task["id"])) in answered:  # never loop on a task the server keeps offering
                    raise BridgeError(f"Label Studio offered task {task['id']} again to {identities[person.token]} "
                                      "after their answer")
                answered.add((person.token, int(task["id"])))
                result, flipped = _simulated_answer(task, gold, error_rate, rng)
                transport.annotate(person, int(task["id"]), result)
                done[identities[person.token]] = done.get(identities[person.token], 0) + 1
                wrong += flipped
                advance(1)
    return SimulationReport(done, wrong)


def _simulated_answer(task: dict[str, Any], gold: dict[tuple[str, str], str], error_rate: float,
                      rng: random.Random) -> tuple[list[dict[str, Any]], int]:
    data = task["data"]
    rows = [AttributeRow(data[f"attr_{i}_name"], data.get("attribute_types", {}).get(data[f"attr_{i}_name"]))
            for i in range(ATTRIBUTE_SLOTS) if data.get(f"attr_{i}_name")]
    shown: dict[str, str] = {}
    for prediction in task.get("predictions") or []:
        for region in prediction.get("result", []):
            kind, _, slot = str(region.get("from_name")).partition("_")
            if kind == "verdict":
                shown[data[f"attr_{slot}_name"]] = region["value"]["choices"][0]
    answers, flipped = [], 0
    for row in rows:
        votes = data.get("votes", {}).get(row.name, {})
        leaders = sorted(v for v, n in votes.items() if n == max(votes.values())) if votes else [VerdictValue.UNSURE]
        truth = gold.get((data["item_id"], row.name)) or shown.get(row.name) or rng.choice(leaders)
        if rng.random() < error_rate:
            truth = rng.choice([v for v in ATTRIBUTE_CHOICES if v != truth])
            flipped += 1
        answers.append(truth)
    return attribute_answers(rows, answers), flipped
