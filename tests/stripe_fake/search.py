"""/v1/customers/search and /v1/products/search over localstripe's objects, for the
subset of Stripe's search query language an integration uses: `field:'value'` and
`metadata['key']:'value'` clauses joined by AND or OR (`-` negates a clause)."""

from __future__ import annotations

import re

from aiohttp import web
from localstripe import resources as ls

from .core import as_int, bad, params, req, respond

routes = web.RouteTableDef()

_CLAUSE = re.compile(r"""^(-)?(metadata\[['"]([^'"]+)['"]\]|[a-z_]+)\s*:\s*['"]([^'"]*)['"]$""")


def _matcher(query: str):
    joiner = " OR " if " OR " in query else " AND "
    if " OR " in query and " AND " in query:
        raise bad("query", "Search queries cannot mix AND and OR.")
    clauses = []
    for part in query.split(joiner):
        m = _CLAUSE.match(part.strip())
        if not m:
            raise bad("query", f"Unsupported search clause: {part.strip()!r}")
        neg, field, meta_key, value = m.groups()
        clauses.append((bool(neg), meta_key, field, value))

    def test(obj) -> bool:
        results = []
        for neg, meta_key, field, value in clauses:
            actual = (obj.metadata or {}).get(meta_key) if meta_key else getattr(obj, field, None)
            results.append((str(actual) == value if actual is not None else False) != neg)
        return any(results) if joiner == " OR " else all(results)

    return test


def _search(kind: str, url: str):
    async def handler(request):
        data = await params(request)
        test = _matcher(req(data, "query"))
        limit = as_int(data.get("limit"), "limit") or 10
        start = as_int(data.get("page"), "page") or 0
        found = sorted(
            (o for k, o in ls.store.items() if k.startswith(kind + ":") and test(o)),
            key=lambda o: o.created,
            reverse=True,
        )
        chunk = found[start : start + limit]
        more = len(found) > start + limit
        return respond(
            {
                "object": "search_result",
                "url": url,
                "data": [o._export() for o in chunk],
                "has_more": more,
                "next_page": str(start + limit) if more else None,
            }
        )

    return handler


routes.get("/v1/customers/search")(_search("customer", "/v1/customers/search"))
routes.get("/v1/products/search")(_search("product", "/v1/products/search"))
