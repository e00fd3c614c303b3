"""PostgreSQL fast lane of the group-commit writer: a batch of plain events in one
statement, no explicit transaction (two short round trips around it switch the
connection to a generic plan and back).

The general batch (:func:`.batch.process_batch`) reads the customers, features,
subscriptions, invoices, entitlements, plan rules, settings and counters of every batch,
about a dozen round trips. Here the catalog side of a (customer reference, feature key)
pair is read once, in one REPEATABLE READ snapshot, together with a *fingerprint* of
every row it was derived from (the ``xmin`` — the writing transaction — of the customer,
the feature, the environment, the customer's subscriptions and their plans, invoices,
entitlements and plan rules for the feature). Each later batch then sends one
statement that

1. recomputes those fingerprints and compares them with the remembered ones (any
   committed insert, update or delete of a row the decision depends on changes it),
2. locks the batch's usage counters (id order, as every counter writer does) and checks
   that each stays below its limit with the whole batch's usage (the bound is derived
   from the domain's ``verdict`` in Python; SQL only compares numbers),
3. and only when both hold, adds the usage to the counters (returning their new values,
   read under the lock), inserts the events and sends the change feed's notice of the
   usage (delivered at the commit).

A single statement is atomic on its own: when a check fails nothing is written and the
writer runs the batch through the general path, which reads everything again under
lock; a duplicate idempotency key fails the statement (unique index) and the writer
retries the batch through the general path, which answers ``duplicate``. So a stale
remembered entry can cost a fallback, never a wrong answer.

Only batches whose every event would take the general path's fast path qualify:
a customer given by reference and a feature by key, both existing, at most one
subscription able to take the event, a rule without credits or cost, no cost
configuration in the environment, no cost, revenue, meta or context on the event, and
no idempotency key repeated inside the batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...db.changefeed import CHANNEL, ChangeFeed
from ...domain.entitlements import REASON_LIMIT, verdict
from .batch import (
    ACCEPTED,
    Effects,
    Outcome,
    _Env,
    _fast_event,
    _ids,
    _q,
    _RulePlan,
)
from .grants import SubInfo, load_granting
from .inputs import CLIENT_TRACKED, EventIn
from .rulecache import default_cost
from .sqlio import AsyncpgTx

# an entry that cannot take the fast lane (unknown customer or feature, a cost
# configuration) is looked at again after this long
INELIGIBLE_SECONDS = 1.0
MAX_ENTRIES = 50_000


def fingerprint_sql(env: str, cid: str, fid: str) -> str:
    """A scalar SQL expression: a digest of the transaction ids (``xmin``) of every row
    the fast lane's decision for customer ``cid`` and feature ``fid`` derives from. The
    arguments are SQL expressions (parameters or column references)."""
    return (
        "(SELECT md5(coalesce(string_agg(t.v, ',' ORDER BY t.v), '')) FROM ("
        f"SELECT 'e' || e.xmin::text AS v FROM environments e WHERE e.id = {env} "
        f"UNION ALL SELECT 'c' || c.xmin::text FROM customers c WHERE c.id = {cid} "
        f"UNION ALL SELECT 'f' || f.xmin::text FROM features f WHERE f.id = {fid} "
        "UNION ALL SELECT 's' || s.id || ':' || s.xmin::text || ':' || p.xmin::text "
        "FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
        f"WHERE s.customer_id = {cid} "
        "UNION ALL SELECT 'i' || i.id || ':' || i.xmin::text FROM invoices i "
        f"JOIN subscriptions s ON s.id = i.subscription_id WHERE s.customer_id = {cid} "
        "UNION ALL SELECT 'n' || n.id || ':' || n.xmin::text FROM entitlements n "
        "JOIN subscriptions s ON s.id = n.subscription_id "
        f"WHERE s.customer_id = {cid} AND n.feature_id = {fid} "
        "UNION ALL SELECT 'r' || r.id || ':' || r.xmin::text FROM plan_features r "
        "JOIN subscriptions s ON s.plan_id = r.plan_id "
        f"WHERE s.customer_id = {cid} AND r.feature_id = {fid}"
        ") t)"
    )


@dataclass(slots=True)
class Entry:
    """What the fast lane remembers of a (customer reference, feature key) pair."""

    customer_id: str | None
    feature_id: str | None
    subs: list[SubInfo]  # the customer's subscriptions granting the feature
    fingerprint: str | None
    eligible: bool
    loaded: float


_BATCH_SQL = (
    "WITH fp AS (SELECT coalesce(bool_and("
    + fingerprint_sql("$1", "x.c", "x.f")
    + " = x.fp), true) AS ok FROM unnest($2::text[], $3::text[], $4::text[]) AS x(c, f, fp)), "
    "d AS (SELECT * FROM unnest($5::text[], $6::text[], $7::timestamptz[], $8::bigint[], "
    "$9::bigint[]) AS d(s, f, w, add, maxu)), "
    "lk AS (SELECT u.id, u.used_q, d.add, d.maxu FROM usage_counters u JOIN d "
    "ON u.subscription_id = d.s AND u.feature_id = d.f AND u.window_start = d.w "
    "ORDER BY u.id FOR UPDATE OF u), "
    "ok AS (SELECT (SELECT ok FROM fp) AND count(*) = $10 AND "
    "coalesce(bool_and(lk.maxu IS NULL OR lk.used_q <= lk.maxu), true) AS ok FROM lk), "
    "up AS (UPDATE usage_counters u SET used_q = u.used_q + lk.add, "
    "overage_q = u.overage_q + lk.add, modified_at = $11 FROM lk "
    "WHERE u.id = lk.id AND (SELECT ok FROM ok) "
    "RETURNING u.subscription_id, u.feature_id, u.window_start, u.used_q, u.overage_q), "
    "ins AS (INSERT INTO events (id, environment_id, idempotency_key, event_type, "
    "event_name, customer_id, feature_id, subscription_id, occurred_at, usage_q, "
    "billable_q, overage_q, credits_deducted_q, usage_limit_exceeded, revenue_micros, "
    "context, created_at) SELECT e.id, $1, e.k, $12, e.n, e.c, e.f, e.s, e.at, e.u, e.u, "
    "e.u, 0, false, e.r, NULL, e.cr FROM unnest($13::text[], $14::text[], $15::text[], "
    "$16::text[], $17::text[], $18::text[], $19::timestamptz[], $20::bigint[], "
    "$21::bigint[], $22::timestamptz[]) AS e(id, k, n, c, f, s, at, u, r, cr) "
    "WHERE (SELECT ok FROM ok)), "
    # the other processes' caches hear of the usage when (and only if) it commits
    "nt AS (SELECT pg_notify($23, $24) FROM ok WHERE ok.ok AND $24::text IS NOT NULL) "
    "SELECT (SELECT ok FROM ok), (SELECT ok FROM fp), (SELECT count(*) FROM nt), "
    "up.subscription_id, up.feature_id, up.window_start, up.used_q, up.overage_q "
    "FROM (SELECT 1) AS one LEFT JOIN up ON true"
)


def max_used_before(limit_q: int | None, use_q: int) -> int | None:
    """The largest counter value from which ``use_q`` more usage still leaves the
    counter allowed by the domain's ``verdict`` (None: no limit). -1 when none."""
    if limit_q is None:
        return None
    bound = limit_q - use_q - 1
    # the bound SQL compares with is derived from the one rule, and checked against it
    if verdict(bound + use_q, limit_q) is not None or verdict(bound + 1 + use_q, limit_q) != (
        REASON_LIMIT
    ):
        return -1
    return bound


class FastLane:
    def __init__(self, feed: ChangeFeed | None = None) -> None:
        self.feed = feed
        self.entries: dict[tuple[str, str, str], Entry] = {}
        # counter key -> last committed used_q seen here (skips a lane bound to fail)
        self.used: dict[tuple[str, str, datetime], int] = {}
        # statistics, for tests and the bench
        self.hits = 0
        self.misses = 0
        self.fallbacks = 0

    # ------------------------------------------------------------------ entries

    async def _entry(self, raw: Any, env: str, ref: str, key: str) -> Entry:
        k = (env, ref, key)
        entry = self.entries.get(k)
        if entry is not None and (
            entry.eligible or time.monotonic() - entry.loaded < INELIGIBLE_SECONDS
        ):
            return entry
        self.misses += 1
        from sqlalchemy.util import greenlet_spawn

        async with raw.transaction(isolation="repeatable_read", readonly=True):
            entry = await greenlet_spawn(_load, AsyncpgTx(raw), env, ref, key)
        if len(self.entries) >= MAX_ENTRIES:
            self.entries.clear()
        self.entries[k] = entry
        return entry

    def observe(self, effects: Effects) -> None:
        """Counter values a commit of this process published (either path)."""
        if len(self.used) > MAX_ENTRIES:
            self.used.clear()
        for counters in effects.counters.values():
            for key, (used, _) in counters.items():
                self.used[key] = used

    def forget(self, env: str, pairs: set[tuple[str, str]]) -> None:
        for ref, key in pairs:
            self.entries.pop((env, ref, key), None)

    # ------------------------------------------------------------------ batches

    async def write(self, raw: Any, items: list[EventIn]) -> tuple[list[Outcome], Effects] | None:
        """Write ``items`` in one statement on ``raw`` (an asyncpg connection outside any
        transaction); None when the batch does not qualify or a check failed (nothing
        written: the caller runs the general path)."""
        env = items[0].environment_id
        keys = set()
        for item in items:
            if (
                item.environment_id != env
                or not item.simple
                or item.event_type != CLIENT_TRACKED
                or item.customer_ref is None
                or item.feature_key is None
                or item.customer_id is not None
                or item.feature_id is not None
                or item.stripe_customer_id is not None
                or item.key in keys
            ):
                return None
            keys.add(item.key)
        entries: dict[tuple[str, str], Entry] = {}
        for item in items:
            pair = (item.customer_ref, item.feature_key)
            if pair not in entries:
                entry = await self._entry(raw, env, *pair)  # type: ignore[arg-type]
                if not entry.eligible:
                    return None
                entries[pair] = entry  # type: ignore[index]
        plan = self._plan(items, entries)
        if plan is None:
            return None
        args, ctx = plan
        # planned once per connection and reused: with array parameters PostgreSQL
        # would otherwise plan this statement again on every call (measured: about
        # half of the database's CPU per batch); the pooled connection gets its
        # setting back afterwards
        await raw.execute("SET plan_cache_mode = force_generic_plan")
        try:
            row0, *rest = await raw.fetch(_BATCH_SQL, *args)
        finally:
            if not raw.is_closed():
                await raw.execute("RESET plan_cache_mode")
        if not row0[0]:
            self.fallbacks += 1
            if not row0[1]:  # a row the entries derive from changed: read them again
                self.forget(env, set(entries))
            return None  # (the general path's commit tells ``observe`` the counters)
        self.hits += 1
        return self._outcomes(items, ctx, [row0, *rest], env)

    def _plan(self, items: list[EventIn], entries: dict[tuple[str, str], Entry]):
        env = items[0].environment_id
        plans: dict[str, _RulePlan] = {}
        counter_keys: set = set()
        credit_needs: set = set()
        ctx = []
        use: dict[tuple[str, str, datetime], int] = defaultdict(int)
        limits: dict[tuple[str, str, datetime], int | None] = {}
        for item in items:
            entry = entries[(item.customer_ref, item.feature_key)]  # type: ignore[index]
            c = _Env._choices(
                entry.customer_id,
                entry.feature_id,
                entry.subs,
                item,
                plans,
                counter_keys,
                credit_needs,
            )
            _, _, _, rp, ckey, choices = c
            if not _fast_event(item, choices, rp, True, True):
                return None
            if ckey is not None:
                use[ckey] += item.usage_q
                limits[ckey] = rp.limit_q
            ctx.append(c)
        if credit_needs:
            return None
        cs, cf, cw, cadd, cmax = [], [], [], [], []
        for ckey, u in use.items():
            bound = max_used_before(limits[ckey], u)
            if bound is not None and (bound < 0 or self.used.get(ckey, 0) > bound):
                return None  # the limit may be reached: decided event by event
            cs.append(ckey[0])
            cf.append(ckey[1])
            cw.append(ckey[2])
            cadd.append(u)
            cmax.append(bound)
        pc, pf, pfp = [], [], []
        for entry in entries.values():
            pc.append(entry.customer_id)
            pf.append(entry.feature_id)
            pfp.append(entry.fingerprint)
        ids = _ids(len(items))
        e_sub, e_rev = [], []
        for c, item in zip(ctx, items, strict=True):
            sub, rp, ckey = c[2], c[3], c[4]
            e_sub.append(sub.id if sub is not None else None)
            e_rev.append(rp.revenue_micros(item.usage_q, 0) if ckey is not None else None)
        now = max(i.now for i in items)
        # what the writer would announce after the commit (see MeteringWriter._publish)
        notice = self.feed.payload("usage", env, sorted(set(cs))) if self.feed and cs else None
        args = (
            env,
            pc,
            pf,
            pfp,
            cs,
            cf,
            cw,
            cadd,
            cmax,
            len(use),
            now,
            CLIENT_TRACKED,
            ids,
            [i.key for i in items],
            [i.event_name for i in items],
            [c[0] for c in ctx],
            [c[1] for c in ctx],
            e_sub,
            [i.occurred_at for i in items],
            [i.usage_q for i in items],
            e_rev,
            [i.now for i in items],
            CHANNEL,
            notice,
        )
        return args, (ctx, ids)

    def _outcomes(self, items, ctx_ids, rows, env) -> tuple[list[Outcome], Effects]:
        ctx, ids = ctx_ids
        effects = Effects()
        counters = {}
        for r in rows:
            if r[3] is not None:
                counters[(r[3], r[4], r[5])] = (int(r[6]), int(r[7]))
        if counters:
            effects.counters[env] = counters
        out = []
        for c, item, event_id in zip(ctx, items, ids, strict=True):
            cid, _, sub, rp, _, _ = c
            out.append(
                Outcome(
                    ACCEPTED,
                    event_id,
                    False,
                    0,
                    _q(item.usage_q),
                    False,
                    cid,
                    sub.id if sub is not None else None,
                    None,
                    rp.limit if rp is not None else None,
                )
            )
        return out, effects


def _load(tx: AsyncpgTx, env: str, ref: str, key: str) -> Entry:
    """The pair's entry, read in the caller's snapshot (fingerprint included)."""
    now = time.monotonic()
    rows = tx.rows(
        "SELECT id FROM customers WHERE environment_id = :env AND reference_id = :ref",
        {"env": env, "ref": ref},
    )
    frows = tx.rows(
        "SELECT id FROM features WHERE environment_id = :env AND key = :key",
        {"env": env, "key": key},
    )
    settings = tx.rows("SELECT settings FROM environments WHERE id = :env", {"env": env})
    if not rows or not frows or not settings or default_cost(settings[0][0]) is not None:
        return Entry(None, None, [], None, False, now)
    cid, fid = rows[0][0], frows[0][0]
    fp = tx.rows(
        "SELECT " + fingerprint_sql(":env", ":cid", ":fid"), {"env": env, "cid": cid, "fid": fid}
    )[0][0]
    granting = load_granting(tx, env, [cid], [fid])
    subs = [s for s in granting.get(cid, ()) if fid in s.grants]
    return Entry(cid, fid, subs, fp, True, now)
