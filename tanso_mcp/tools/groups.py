"""Optional tool groups: tools beyond the 34 standard ones, off unless enabled.

A group's specs live in their own module ``tanso_mcp/tools/specs_<group>.py`` exposing
``TOOL_SPECS`` (each spec with ``group="<group>"``), and its handlers in
``tanso_mcp/tools/handlers/<group>.py``. Both are found by name, so adding a group edits
no shared table. The setting ``mcp_tool_groups`` (env ``TANSO_MCP_TOOL_GROUPS``, e.g.
``["testing"]``) chooses which groups a server registers; with none enabled the server
offers exactly the standard tools.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from functools import cache

from tanso_mcp.tools.specs import TOOL_SPECS, ToolSpec

__all__ = ["CORE", "OPTIONAL_GROUPS", "all_specs", "all_specs_by_name", "enabled_specs"]

CORE = "core"
OPTIONAL_GROUPS: tuple[str, ...] = ("testing", "analytics", "stripe")
"""Names a deployment may enable; a group module may exist for each of them."""


@cache
def _group_specs() -> tuple[ToolSpec, ...]:
    import tanso_mcp.tools as package

    found: list[ToolSpec] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("specs_"):
            continue
        group = info.name.removeprefix("specs_")
        if group not in OPTIONAL_GROUPS:
            raise ValueError(f"tools/{info.name}.py: {group!r} is not a known tool group")
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for spec in module.TOOL_SPECS:
            if spec.group != group:
                raise ValueError(f"{spec.name} is in specs_{group}.py but in group {spec.group!r}")
            found.append(spec)
    return tuple(found)


@cache
def all_specs() -> tuple[ToolSpec, ...]:
    """Every tool this build knows: the standard ones, then each optional group's."""
    specs = TOOL_SPECS + _group_specs()
    names = [spec.name for spec in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ValueError(f"two tools are named {duplicate!r}")
    return specs


@cache
def all_specs_by_name() -> Mapping[str, ToolSpec]:
    return {spec.name: spec for spec in all_specs()}


def enabled_specs(groups: Iterable[str] = ()) -> tuple[ToolSpec, ...]:
    """The standard tools plus those of the enabled ``groups`` (unknown names: ValueError)."""
    wanted = set(groups)
    unknown = sorted(wanted - set(OPTIONAL_GROUPS) - {CORE})
    if unknown:
        raise ValueError(
            f"unknown MCP tool group(s) {', '.join(unknown)}; known: {', '.join(OPTIONAL_GROUPS)}"
        )
    return tuple(spec for spec in all_specs() if spec.group == CORE or spec.group in wanted)
