"""The result store's format, read by the orchestrator, `hsjp-study status` and the reports alike.

Ray-free, torch-free and pyarrow-free: `reports` imports this module and nothing else of the
orchestrator (docs/design.md, "Layers").

**Corrupt JSON, one policy.** The store's JSON files are written atomically (a temporary file, then
a rename), so a file that does not parse was damaged from outside (a crash of the filesystem, a
hand edit, a partial copy):

- `parse_json` raises `StoreError` naming the file; it is what `Store.read_json` does.
- `parse_json_or_warn` is for readers that have a safe reading of "absent" (a corrupt `result.json`
  means the stage is not finished and is recomputed; a corrupt `plan.json` leaves its study out of
  the report; a corrupt `attempts.json` forgets the retry history): one warning names the file and
  that consequence, and the reader goes on with None.
- `parse_json_lines` is for the append-only logs (`metrics.jsonl`), where a crash mid-append leaves
  a partial last line: an unreadable line is skipped with a warning naming the file and line.

Files a user hands in (study files, annotation and results files) are not store files: their
readers raise a `UserError` naming the file.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from workloads.user_errors import UserError

log = logging.getLogger(__name__)


class StoreError(UserError, RuntimeError):
    """A store path or file is invalid; the message names it."""


def parse_json(data: bytes | str | None, where: str) -> Any | None:
    """The parsed JSON of a store file's content, None when the file is absent (`data` None).
    StoreError naming `where` when it does not parse."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{where}: corrupt JSON ({exc})") from exc


def parse_json_or_warn(data: bytes | str | None, where: str, consequence: str) -> Any | None:
    """`parse_json`, but a corrupt file reads as absent, with one warning naming the file and
    `consequence` (what the reader does instead, e.g. "the stage will be recomputed")."""
    try:
        return parse_json(data, where)
    except StoreError as exc:
        log.warning("%s — %s", exc, consequence)
        return None


def parse_json_lines(data: bytes | str | None, where: str) -> list[Any]:
    """The rows of a JSON-lines log; an unreadable line (a crash mid-append) is skipped with a warning
    naming `where` and the line number. An absent file is no rows."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d: unreadable row skipped", where, i + 1)
    return rows


__all__ = ["StoreError", "parse_json", "parse_json_lines", "parse_json_or_warn"]
