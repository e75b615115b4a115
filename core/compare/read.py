"""Read a grid's child runs back from MLflow as :class:`~attnbench.run.record.RunRecord` s.

One ``search_runs`` query per experiment fetches every child run (tags and latest metric
values come with it); predictions are read only for the significance tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import BadInputError
from ..run.record import CHILD_FILTER, PARENT_FILTER, PARENT_RUN_ID, PREDICTIONS, RunRecord

PAGE_SIZE = 50000  # MLflow's maximum; a grid larger than this pages through the same query


def find_experiment(client, name: str):
    """The experiment called ``name``; BadInputError listing the existing ones otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        have = sorted(e.name for e in client.search_experiments())
        raise BadInputError(f"no MLflow experiment named {name!r} in the store {client.tracking_uri}; existing: "
                            f"{have}. If the runs went to another store, pass the same --tracking-uri.")
    return exp


def fetch_child_runs(client, experiment_id: str, parent_run_id: str | None = None) -> list[RunRecord]:
    """Every child run of the experiment (or of one parent run) in one filtered query."""
    filter_string = CHILD_FILTER
    if parent_run_id:
        if not re.fullmatch(r"[0-9a-fA-F]{8,64}", parent_run_id):
            raise BadInputError(f"--run: {parent_run_id!r} is not an MLflow run id (hex)")
        filter_string += f" and tags.`{PARENT_RUN_ID}` = '{parent_run_id}'"
    records, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=PAGE_SIZE, page_token=token)
        records.extend(RunRecord.from_mlflow(r) for r in page)
        token = page.token
        if not token:
            return records


def latest_parent_run_id(client, experiment_id: str) -> str | None:
    """The most recent parent run of the experiment (where the summary gets logged)."""
    runs = client.search_runs([experiment_id], filter_string=PARENT_FILTER,
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def select_attempts(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord], int]:
    """Split into the runs to average and the unfinished ones to list; count the superseded.

    Attempts are grouped by slot ``(task, model, seed)``: a re-run of a grid retries
    pairings that did not finish, and a re-run with a changed config trains the slot again.
    The latest FINISHED attempt of a slot is used; unfinished attempts newer than it are
    listed (a failure after the last success is never hidden); older attempts are
    superseded. Runs without a seed tag form a slot each."""
    slots: dict[tuple, list[RunRecord]] = {}
    for r in records:
        key = (r.task, r.model, r.seed) if r.seed is not None else (r.run_id,)
        slots.setdefault(key, []).append(r)
    finished, unfinished, superseded = [], [], 0
    for attempts in slots.values():
        attempts.sort(key=lambda r: r.start_time)
        done = [i for i, r in enumerate(attempts) if r.status == "FINISHED"]
        last_done = done[-1] if done else -1
        if last_done >= 0:
            finished.append(attempts[last_done])
        newer_failures = attempts[last_done + 1:]
        unfinished.extend(newer_failures)
        superseded += len(attempts) - len(newer_failures) - (1 if last_done >= 0 else 0)
    unfinished.sort(key=lambda r: (r.task, r.model, r.seed if r.seed is not None else -1, r.start_time))
    return finished, unfinished, superseded


def read_predictions(run: RunRecord, client) -> dict | None:
    """``{example id: record}`` from the run's predictions.jsonl, or None when absent.

    Local stores are read in place; other stores go through MLflow's artifact download."""
    parsed = urlparse(run.artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) / PREDICTIONS
        if not path.exists():
            return None
        text = path.read_text(encoding="utf-8")
    else:
        import tempfile

        try:
            with tempfile.TemporaryDirectory() as tmp:
                text = Path(client.download_artifacts(run.run_id, PREDICTIONS, tmp)).read_text(encoding="utf-8")
        except Exception:  # no predictions logged: significance is reported as unavailable
            return None
    out = {}
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            out[record.get("id", len(out))] = record
    return out
