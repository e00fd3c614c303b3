"""PostgreSQL fast lane of the group-commit writer: a batch of plain events in one
statement, no explicit transaction (two short round trips around it switch the
connection to a generic plan and back), or in two for a large batch.

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

A batch of ``SPLIT_AT`` events or more sends the same work as two statements in one
transaction, the events first, so that the counters stay locked only for their update
and the commit. Either way nothing is written unless every check holds: the
writer then runs the batch through the general path, which reads everything again under
lock; a duplicate idempotency key fails the statement (unique index) and the writer
retries the batch through the general path, which answers ``duplicate``. So a stale
remembered entry can cost a fallback, never a wrong answer.

Only batches whose every event would take the general path's fast path qualify:
a customer given by reference and a feature by key, both existing, at most one
subscription able to take the event, a rule without credits or cost, no cost
configuration in the environment, no cost, revenue, meta or context on the event, and
no idempotency key repeated inside the batch nor holding the unit separator
(U+001F, see ``SEP``), nor a name holding it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ...db.changefeed import CHANNEL, ChangeFeed
from ...domain.entitlements import REASON_LIMIT, verdict
from .batch import (
    _EVENT_COLUMNS,
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
from .sqlio import AsyncpgTx, _positional

# an entry that cannot take the fast lane (unknown customer or feature, a cost
# configuration) is looked at again after this long
INELIGIBLE_SECONDS = 1.0
MAX_ENTRIES = 50_000
# The events' columns travel as one text parameter each, split by the server: asyncpg
# encodes an array parameter element by element with several Python-level type checks
# (measured: 0.4-1 µs per value, 5-6 µs of client CPU per event for the ten columns;
# joined strings cost about a tenth of that). Each text column is checked for the
# separator (``_texts``).
SEP = "\x1f"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)


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


_FP = (
    "fp AS (SELECT coalesce(bool_and("
    + fingerprint_sql(":env", "x.c", "x.f")
    + " = x.fp), true) AS ok FROM unnest(:pc::text[], :pf::text[], :pfp::text[]) AS x(c, f, fp))"
)


def _counters(gate: str) -> str:
    """Lock the batch's counters (id order) and, when ``gate`` and every bound hold, add
    the usage; ``ok`` says whether it did."""
    return (
        "d AS (SELECT * FROM unnest(:cs::text[], :cf::text[], :cw::timestamptz[], "
        ":cadd::bigint[], :cmax::bigint[]) AS d(s, f, w, add, maxu)), "
        "lk AS (SELECT u.id, u.used_q, d.add, d.maxu FROM usage_counters u JOIN d "
        "ON u.subscription_id = d.s AND u.feature_id = d.f AND u.window_start = d.w "
        "ORDER BY u.id FOR UPDATE OF u), "
        f"ok AS (SELECT {gate} AND count(*) = :ncounters AND "
        "coalesce(bool_and(lk.maxu IS NULL OR lk.used_q <= lk.maxu), true) AS ok FROM lk), "
        "up AS (UPDATE usage_counters u SET used_q = u.used_q + lk.add, "
        "overage_q = u.overage_q + lk.add, modified_at = :now FROM lk "
        "WHERE u.id = lk.id AND (SELECT ok FROM ok) "
        "RETURNING u.subscription_id, u.feature_id, u.window_start, u.used_q, u.overage_q), "
        # the other processes' caches hear of the usage when (and only if) it commits
        "nt AS (SELECT pg_notify(:channel, :notice) FROM ok "
        "WHERE ok.ok AND :notice::text IS NOT NULL)"
    )


# what the lane stores in each of the general path's event columns (a column added
# there without a value here fails at import): a plain event's usage is all billable
# overage, no credits, no limit reached
_LANE_VALUES = {
    "id": "e.id",
    "environment_id": ":env",
    "idempotency_key": "e.k",
    "event_type": ":event_type",
    "event_name": "e.n",
    "customer_id": "e.c",
    "feature_id": "e.f",
    "subscription_id": "e.s",
    "occurred_at": "e.at",
    "usage_q": "e.u",
    "billable_q": "e.u",
    "overage_q": "e.u",
    "credits_deducted_q": "0",
    "usage_limit_exceeded": "false",
    "revenue_micros": "e.r",
    "context": "NULL",
    "created_at": "e.cr",
}


def _insert(gate: str) -> str:
    """Insert the events when ``gate`` holds."""
    return (
        f"ins AS (INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
        f"SELECT {', '.join(_LANE_VALUES[column] for column in _EVENT_COLUMNS)} "
        "FROM (SELECT e.id, e.k, e.n, e.c, e.f, e.s, "
        # microseconds since the epoch, below 2^53: exact through the float factor
        "e.u, e.r, timestamptz 'epoch' + e.at * interval '1 microsecond' AS at, "
        "timestamptz 'epoch' + e.cr * interval '1 microsecond' AS cr FROM unnest("
        "string_to_array(:ids::text, chr(31)), string_to_array(:keys::text, chr(31)), "
        "string_to_array(:names::text, chr(31)), string_to_array(:cids::text, chr(31)), "
        "string_to_array(:fids::text, chr(31)), string_to_array(:sids::text, chr(31), ''), "
        "string_to_array(:ats::text, ',')::bigint[], string_to_array(:uses::text, ',')::bigint[], "
        "string_to_array(:revs::text, ',', '')::bigint[], "
        "string_to_array(:crs::text, ',')::bigint[]) AS e(id, k, n, c, f, s, at, u, r, cr)) AS e "
        f"WHERE {gate})"
    )


# The answer's shape: whether the batch was written, whether the fingerprints held, the
# notices sent, then the counters' new values (one row each).
_ANSWER = (
    " SELECT (SELECT ok FROM ok), {fp}, (SELECT count(*) FROM nt), up.subscription_id, "
    "up.feature_id, up.window_start, up.used_q, up.overage_q "
    "FROM (SELECT 1) AS one LEFT JOIN up ON true"
)
# a batch in one statement: fingerprints, then counters, then events
_ONE_SQL = _positional(
    "WITH "
    + ", ".join((_FP, _counters("(SELECT ok FROM fp)"), _insert("(SELECT ok FROM ok)")))
    + _ANSWER.format(fp="(SELECT ok FROM fp)")
)
# a large batch in two, in one transaction: the events first, so that the counters'
# locks are held for the update and the commit only, not while a thousand rows go in
# (measured with two workers on one counter: the second statement waited for the
# first's lock about a third of the time)
_EVENTS_SQL = _positional(
    "WITH " + _FP + ", " + _insert("(SELECT ok FROM fp)") + " SELECT (SELECT ok FROM fp)"
)
_COUNTERS_SQL = _positional("WITH " + _counters("true") + _ANSWER.format(fp="true"))
SPLIT_AT = 200  # events; below it the two extra round trips cost more than the wait


class _Refused(Exception):
    """Rolls back the two-statement form when a check fails."""

    def __init__(self, row: Any):
        self.row = row


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
        """Counter values a commit of this process published (either path; the larger
        one when two lanes' commits come back out of order: counters only grow)."""
        if len(self.used) > MAX_ENTRIES:
            self.used.clear()
        used_now = self.used
        for counters in effects.counters.values():
            for key, (used, _) in counters.items():
                if used > used_now.get(key, -1):
                    used_now[key] = used

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
        # would otherwise plan these statements again on every call (measured: about
        # half of the database's CPU per batch); the pooled connection gets its
        # setting back afterwards
        if len(items) < SPLIT_AT:
            await raw.execute("SET plan_cache_mode = force_generic_plan")
            try:
                rows = await raw.fetch(_ONE_SQL[0], *[args[n] for n in _ONE_SQL[1]])
            finally:
                if not raw.is_closed():
                    await raw.execute("RESET plan_cache_mode")
        else:
            rows = await _in_two(raw, args)
        row0 = rows[0]
        if not row0[0]:
            self.fallbacks += 1
            if not row0[1]:  # a row the entries derive from changed: read them again
                self.forget(env, set(entries))
            return None  # (the general path's commit tells ``observe`` the counters)
        self.hits += 1
        return self._outcomes(items, ctx, rows, env)

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
        e_sub, e_rev = [], []
        for c, item in zip(ctx, items, strict=True):
            sub, rp, ckey = c[2], c[3], c[4]
            e_sub.append(sub.id if sub is not None else "")
            e_rev.append(str(rp.revenue_micros(item.usage_q, 0)) if ckey is not None else "")
        ids = _ids(len(items))
        texts = [
            _texts(column)
            for column in (
                ids,
                [i.key for i in items],
                [i.event_name for i in items],
                [c[0] for c in ctx],
                [c[1] for c in ctx],
                e_sub,
            )
        ]
        if None in texts:
            return None  # a separator inside a key or a name: the general path stores it
        now = max(i.now for i in items)
        # what the writer would announce after the commit (see MeteringWriter._publish)
        notice = self.feed.payload("usage", env, sorted(set(cs))) if self.feed and cs else None
        args = dict(
            zip(("ids", "keys", "names", "cids", "fids", "sids"), texts, strict=True),
            env=env,
            pc=pc,
            pf=pf,
            pfp=pfp,
            cs=cs,
            cf=cf,
            cw=cw,
            cadd=cadd,
            cmax=cmax,
            ncounters=len(use),
            now=now,
            event_type=CLIENT_TRACKED,
            ats=_micros([i.occurred_at for i in items]),
            uses=",".join([str(i.usage_q) for i in items]),
            revs=",".join(e_rev),
            crs=_micros([i.now for i in items]),
            channel=CHANNEL,
            notice=notice,
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


async def _in_two(raw: Any, args: dict[str, Any]) -> list:
    """The batch as two statements in one transaction: the events (when the fingerprints
    hold), then the counters; rolled back unless both went through."""
    try:
        async with raw.transaction():
            await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            sql, names = _EVENTS_SQL
            if not await raw.fetchval(sql, *[args[n] for n in names]):
                raise _Refused((False, False))
            sql, names = _COUNTERS_SQL
            rows = await raw.fetch(sql, *[args[n] for n in names])
            if not rows[0][0]:
                raise _Refused(rows[0])
            return rows
    except _Refused as refused:
        return [refused.row]


def _texts(values: list[str]) -> str | None:
    """``values`` as one string for ``string_to_array(…, chr(31))``; None when a value
    holds the separator itself."""
    joined = SEP.join(values)
    return joined if joined.count(SEP) == len(values) - 1 else None


def _micros(values: list[datetime]) -> str:
    """Microseconds since the epoch, comma-separated (each distinct instant worked out
    once: a batch's events mostly share theirs)."""
    memo: dict[datetime, str] = {}
    out = []
    for value in values:
        text = memo.get(value)
        if text is None:
            text = memo[value] = str((value - EPOCH) // ONE_MICROSECOND)
        out.append(text)
    return ",".join(out)


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
