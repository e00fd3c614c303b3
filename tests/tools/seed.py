"""Reading the tool contract (reference/seeds/mcp-integration.txt) into plain facts.

The seed lives outside this repository, so ``contract.py`` carries a transcription of
its facts (tool names, sections, parameters, types, required flags, guarded tools); when
the seed file is reachable, ``test_contract_matches_seed`` re-derives them from it and
checks the transcription still matches.
"""

from __future__ import annotations

import re
from pathlib import Path

SEED_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "reference" / "seeds" / "mcp-integration.txt",
    Path("/work/shared/reference/seeds/mcp-integration.txt"),
)

_SECTIONS = {
    "Read-Only Tools": "read",
    "Write Tools": "write",
    "Sensitive Tools": "sensitive",
    "Admin Read-Only Tools": "admin_read",
    "Admin Write Tools": "admin_write",
    "Admin Sensitive Tools": "admin_sensitive",
}


def find_seed() -> Path | None:
    return next((p for p in SEED_CANDIDATES if p.is_file()), None)


def parse_seed(text: str) -> tuple[dict[str, tuple[str, list[tuple[str, str, bool]]]], set[str]]:
    """``{tool: (section, [(param, type, required), ...])}`` and the confirmAction tools."""
    body, _, tail = text.partition("## Confirmation Pattern")
    tools: dict[str, tuple[str, list[tuple[str, str, bool]]]] = {}
    for heading in re.split(r"(?<!#)### ", body)[1:]:
        title = re.match(r"([A-Za-z -]+?) \(\d+\)", heading)
        if not title or title.group(1) not in _SECTIONS:
            continue
        section = _SECTIONS[title.group(1)]
        parts = re.split(r"\*\*([a-z][A-Za-z]+)\*\*", heading)
        current = None
        for name, chunk in zip(parts[1::2], parts[2::2], strict=True):
            if name.islower():  # bold prose inside a description, not a tool
                chunk = name + chunk
            else:
                current = name
                tools[current] = (section, [])
            rows = re.findall(
                r"\|\s*([A-Za-z]+)\s*\|\s*(string|boolean)\s*\|\s*(yes|no)\s*\|", chunk
            )
            tools[current][1].extend((p, t, r == "yes") for p, t, r in rows)
    first_paragraph = tail.split("If you call")[0]
    confirm = set(re.findall(r"`([a-zA-Z]+)`", first_paragraph)) - {"confirmAction", "true"}
    return tools, confirm
