"""The README's REST quick tour, replayed as written: its MCP tool calls build the
catalog, then every curl command of its bash block goes to the app, and each answer is
checked against the status and the parts of ``data`` its ``#   →`` line shows.

Sample lines are JSON in which ``…`` stands for what is not shown: ``"key":…`` any value,
``,…}`` more keys, ``,…]`` more items (without it a list has exactly the items shown).
Objects match on the keys shown; numbers compare exactly (``49.00`` == ``49.0``). A
status precedes the JSON when it is not 200. An option the replay does not know fails
the test, so the tour stays something this test can run."""

from __future__ import annotations

import json
import re
import shlex
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.mcp_helpers import inmemory, ok

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parent.parent / "README.md"
ANY = "\u2026any"
MORE = "\u2026more"


def _tour() -> str:
    text = README.read_text()
    start = text.index("## REST quick tour")
    return text[start : text.index("\n## ", start + 1)]


def _block(section: str, language: str) -> str:
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start : section.index("```", start)]


def tool_calls(section: str) -> list[tuple[str, str]]:
    """``(tool, arguments JSON)`` per call of the text block; arguments may continue on
    indented lines."""
    calls: list[tuple[str, str]] = []
    for line in _block(section, "text").splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            name, args = calls[-1]
            calls[-1] = (name, args + " " + line.strip())
        else:
            name, _, args = line.partition(" ")
            calls.append((name, args.strip()))
    return calls


def sample(text: str) -> tuple[int, Any]:
    """A ``→`` line: the status and the expected JSON pattern."""
    match = re.match(r"(\d{3})\s+(.*)", text)
    status, pattern = (int(match[1]), match[2]) if match else (200, text)
    pattern = re.sub(r":\s*…", f': "{ANY}"', pattern)
    pattern = re.sub(r",\s*…\s*\}", "}", pattern)
    pattern = re.sub(r",\s*…\s*\]", f', "{MORE}"]', pattern)
    return status, json.loads(pattern, parse_float=Decimal)


def commands(section: str) -> tuple[dict[str, str], list[tuple[list[str], list[str]]]]:
    """The variables the block sets, and each curl command's words with its sample lines
    (commands may span lines inside quotes; ``#`` comments are dropped)."""
    variables: dict[str, str] = {}
    found: list[tuple[list[str], list[str]]] = []
    pending = ""
    for line in _block(section, "bash").splitlines():
        stripped = line.strip()
        if not pending and stripped.startswith("#"):
            if stripped.startswith("#   →"):
                found[-1][1].append(stripped.removeprefix("#   →").strip())
            continue
        if not pending and not stripped:
            continue
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        pending = ""
        if words[0] == "curl":
            found.append((words, []))
        else:
            for word in words:
                name, _, value = word.removesuffix(";").partition("=")
                assert name.isidentifier() and value, f"not an assignment: {word!r}"
                variables[name] = value
    assert not pending, f"unterminated command: {pending!r}"
    return variables, found


def expand(word: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: expand(variables[m[1]], variables), word)


def request_of(words: list[str], variables: dict[str, str]) -> dict[str, Any]:
    args = iter(expand(w, variables) for w in words[1:])
    method, url, headers, body = None, None, {}, None
    for arg in args:
        if arg == "-s":
            continue
        if arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(args)
        elif arg == "-X":
            method = next(args)
        elif arg.startswith("http"):
            url = urlsplit(arg)
        else:
            raise AssertionError(f"the replay does not know curl option {arg!r}")
    assert url is not None, words
    path = url.path + (f"?{url.query}" if url.query else "")
    return {
        "method": method or ("POST" if body is not None else "GET"),
        "url": path,
        "headers": headers,
        "content": body.encode() if body is not None else None,
    }


def matches(expected: Any, actual: Any, where: str = "data") -> None:
    if expected == ANY:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} is missing from {sorted(actual)}"
            matches(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        shown = [e for e in expected if e != MORE]
        if len(shown) == len(expected):
            assert len(actual) == len(shown), f"{where}: {len(actual)} items, README shows {shown}"
        assert len(actual) >= len(shown), f"{where}: {len(actual)} items"
        for i, (e, a) in enumerate(zip(shown, actual, strict=False)):
            matches(e, a, f"{where}[{i}]")
    else:
        assert type(expected) is type(actual) and expected == actual, (
            f"{where}: README shows {expected!r}, the answer is {actual!r}"
        )


def test_the_tour_parses():
    """The parser itself, on the README: every command has a sample, every sample is JSON."""
    section = _tour()
    assert [name for name, _ in tool_calls(section)] == [
        "adminCreateFeature",
        "adminCreatePlan",
        "adminLinkFeatureToPlan",
        "adminUpdatePlan",
    ]
    variables, found = commands(section)
    assert set(variables) == {"H", "J", "B"}
    assert len(found) == 8
    for words, samples in found:
        assert len(samples) == 1, (words, samples)
        sample(samples[0])
    with pytest.raises(AssertionError):
        matches(sample('{"a":[1,…],"b":…}')[1], {"a": [2, 3]})
    with pytest.raises(AssertionError):
        matches(sample("[1]")[1], [1, 2])
    with pytest.raises(AssertionError):
        matches(sample('{"x":49.00}')[1], json.loads('{"x":49.01}', parse_float=Decimal))
    matches(sample('{"a":[1,…],"b":…}')[1], {"a": [1, 3], "b": None, "c": 0})


async def test_readme_rest_quick_tour(ctx, tenant, client):
    section = _tour()
    ids: dict[str, str] = {}
    async with inmemory(ctx, tenant.key("admin")) as mcp:
        for name, raw in tool_calls(section):
            for placeholder, value in ids.items():
                raw = raw.replace(placeholder, value)
            answer = await ok(mcp, name, json.loads(raw))
            for kind in ("feature", "plan"):
                if kind in answer:
                    ids[f"<{kind}.id>"] = answer[kind]["id"]

    variables, found = commands(section)
    variables["TEST_KEY"] = tenant.key("admin")
    for words, samples in found:
        request = request_of(words, variables)
        r = await client.request(**request)
        status, expected = sample(samples[0])
        assert r.status_code == status, (words, r.text)
        matches(expected, json.loads(r.text, parse_float=Decimal)["data"])
        if "eventIdempotencyKey" in (request["content"] or b"").decode():
            # the tour says so: a repeat of the key answers 409 duplicate_event
            again = await client.request(**request)
            assert again.status_code == 409, again.text
            assert again.json()["error"]["code"] == "duplicate_event"
