"""Writing a batch of usage events in one transaction (the group-commit writer's unit of
work; also the whole of a `POST /events/batch`).

One synchronous implementation over the :mod:`.sqlio` interface, run by plain
``sqlite3`` on the SQLite writer thread and by SQLAlchemy's sync facade on PostgreSQL.
Per batch, whatever its size, a fixed number of bulk statements:

1. duplicates: keys repeated inside the batch, then one ``SELECT … IN`` against the
   events' unique index (a concurrent insert of the same key in another process makes
   the final INSERT fail; the writer then retries the batch, which now sees it);
2. customers and features, looked up in bulk; unknown ones auto-created
   (``EVENT_AUTO_CREATED``) only for events that will be stored;
3. eligibility: the customers' subscriptions granting the events' features, loaded by
   :func:`.grants.load_granting` (the loader the entitlement cache uses too);
4. locked state: usage counters (of every subscription an event could count on), then
   credit pools, their subscription links and grants — each phase in a fixed (sorted)
   order, ``FOR UPDATE`` on PostgreSQL, so two processes' batches never deadlock; SQLite
   holds the database write lock (``BEGIN IMMEDIATE``) for the whole batch;
5. the decisions, event by event in input order, in memory, every one taken by the
   domain rules (:mod:`tanso_mcp.domain.entitlements`, :mod:`tanso_mcp.domain.credits`):
   which subscription the event counts on (on the state as of that event, when several
   grant the feature), limit (an event whose window already reached ``max_usage`` is
   stored with zero billable usage), credits before overage (the customer's pool of the
   rule's denomination, FIFO over its grants, within the subscription's draw limit; a
   hard-limited denomination that cannot cover the event rejects it — nothing stored),
   cost chain and revenue;
6. bulk writes: events, counter increments, guarded pool/grant decrements (``… AND
   balance_q >= :d``) with one ledger row per (event, pool); then the touched counters
   and pools are read back and compared with what was computed — any difference aborts
   the transaction.

Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from ...clock import iso
from ...db.scale import QTY_SCALE
from ...db.types import _json_default, new_id
from ...domain.analytics_costs import price_overrides
from ...domain.cost import resolve_cost
from ...domain.credits import available_credits, covered_units, credits_for_units, plan_draw
from ...domain.entitlements import REASON_CREDITS, REASON_LIMIT, attribute, eligible_at, verdict
from ...domain.money import minor_units, to_credit_units, to_micros
from ...domain.pricing import event_revenue
from ...domain.rules import (
    CostUnit,
    DefaultCostConfig,
    ResetMode,
    UsagePricing,
)
from ...errors import InsufficientCredits, NotFound, TansoError
from .grants import Grant, load_granting
from .inputs import CLIENT_TRACKED, EventIn
from .rulecache import default_cost
from .sqlio import in_list
from .windows import SubPeriod, window_start

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
ERROR = "error"


class GuardFailed(RuntimeError):
    """A guarded update or a read-back disagreed with the computed state: the batch is
    rolled back (and retried by the writer)."""


@dataclass(slots=True)
class Outcome:
    status: str
    event_id: str | None = None
    limit_exceeded: bool = False
    credits_deducted: Decimal | int = 0
    overage_units: Decimal | int = 0
    customer_auto_created: bool = False
    customer_id: str | None = None
    subscription_id: str | None = None
    error: TansoError | None = None
    limit: Decimal | None = None
    # the cost chain's step that priced the event (domain.cost.resolve_cost); None: no
    # step applied (no cost given, or a model no price is known for)
    cost_source: str | None = None


@dataclass
class Effects:
    """Committed state the in-process caches may take over after the commit."""

    # environment id -> {(subscription, feature, window start): (used_q, overage_q)}
    counters: dict[str, dict[tuple[str, str, datetime], tuple[int, int]]] = field(
        default_factory=dict
    )
    # environment id -> {pool id: {"balance_q", "total_consumed_q", "customer_id"}}
    pools: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    pool_customers: set[str] = field(default_factory=set)
    catalog_changed: set[str] = field(default_factory=set)  # environment ids
    announced: bool = False  # the change feed's notice went out with the commit itself


@dataclass(slots=True)
class _Pool:
    id: str
    customer_id: str
    denomination: str
    balance_q: int
    consumed_q: int
    expired_q: int
    hard_limit: bool
    status: str
    taken_q: int = 0
    expiring_q: int = 0  # expired by this batch before drawing (as credits.deduct does)


@dataclass(slots=True)
class _Link:
    id: str
    subscription_id: str
    draw_limit_q: int | None
    drawn_q: int
    taken_q: int = 0


@dataclass(slots=True)
class _Grant:
    id: str
    remaining_q: int
    expires_at: datetime | None
    created_at: datetime
    grant_type: str
    subscription_id: str | None
    taken_q: int = 0
    expired_q: int = 0


def _dumps(obj: Any) -> str | None:
    if not obj:
        return None
    return orjson.dumps(obj, default=_json_default).decode()


def process_batch(
    tx: Any, items: list[EventIn], *, probe: bool = True
) -> tuple[list[Outcome], Effects]:
    """Write ``items``; the caller commits. ``probe=False`` skips the duplicate SELECT
    (optimistic: the events' unique index still refuses a duplicate, the INSERT fails,
    and the caller rolls back and calls again with ``probe=True``)."""
    out: list[Outcome | None] = [None] * len(items)
    effects = Effects()
    by_env: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_env[item.environment_id].append(i)
    for env in sorted(by_env):
        _Env(tx, env, items, by_env[env], out, effects).run(probe)
    return out, effects  # type: ignore[return-value]


class _Env:
    def __init__(
        self,
        tx: Any,
        env: str,
        items: list[EventIn],
        idxs: list[int],
        out: list[Outcome | None],
        effects: Effects,
    ):
        self.tx = tx
        self.env = env
        self.items = items
        self.idxs = idxs
        self.out = out
        self.effects = effects
        self.price_overrides: tuple = ()  # the environment's model prices (_settings)
        # counters read without a lock; locked just before they are written (see _plan)
        self.late_lock = False

    # ------------------------------------------------------------------ helpers

    def _fail(self, i: int, error: TansoError) -> None:
        self.out[i] = Outcome(ERROR, error=error)

    def _live(self) -> list[int]:
        return [i for i in self.idxs if self.out[i] is None]

    # ------------------------------------------------------------------ phases

    def run(self, probe_keys: bool) -> None:
        tx, env, items = self.tx, self.env, self.items
        # 1. duplicates
        seen: set[str] = set()
        for i in self.idxs:
            k = items[i].key
            if k in seen:
                self.out[i] = Outcome(DUPLICATE)
            seen.add(k)
        probe = [items[i].key for i in self._live() if not items[i].key_generated]
        if probe and probe_keys:
            params: dict[str, Any] = {"env": env}
            sql = (
                "SELECT idempotency_key FROM events WHERE environment_id = :env "
                f"AND idempotency_key IN ({in_list('k', probe, params)})"
            )
            existing = {r[0] for r in tx.rows(sql, params)}
            if existing:
                for i in self._live():
                    if items[i].key in existing:
                        self.out[i] = Outcome(DUPLICATE)
        live = self._live()
        if not live:
            return

        customers = self._customers(live)
        features = self._features(self._live())
        live = self._live()
        if not live:
            return
        self._create_missing(live, customers, features)
        live = self._live()

        granting = self._attribution(live, customers, features)
        plan = self._plan(live, customers, features, granting, optimistic=not probe_keys)
        self._apply(plan)

    # customers -----------------------------------------------------------------

    def _customers(self, live: list[int]) -> dict[str, dict[str, str]]:
        """Lookups by reference, id and Stripe id; unknown customerId -> item error."""
        tx, env, items = self.tx, self.env, self.items
        refs = sorted({v for i in live if (v := items[i].customer_ref)})
        ids = sorted({v for i in live if (v := items[i].customer_id)})
        stripe = sorted({v for i in live if (v := items[i].stripe_customer_id)})
        by_ref: dict[str, str] = {}
        by_id: dict[str, str] = {}
        by_stripe: dict[str, str] = {}
        if refs:
            p: dict[str, Any] = {"env": env}
            for cid, ref in tx.rows(
                "SELECT id, reference_id FROM customers WHERE environment_id = :env "
                f"AND reference_id IN ({in_list('r', refs, p)})",
                p,
            ):
                by_ref[ref] = cid
        if ids:
            p = {"env": env}
            for (cid,) in tx.rows(
                f"SELECT id FROM customers WHERE environment_id = :env AND id IN ({in_list('c', ids, p)})",
                p,
            ):
                by_id[cid] = cid
        if stripe:
            p = {"env": env}
            for cid, ref, sid in tx.rows(
                "SELECT id, reference_id, provider_customer_id FROM customers "
                f"WHERE environment_id = :env AND (provider_customer_id IN ({in_list('s', stripe, p)}) "
                f"OR reference_id IN ({in_list('t', stripe, p)}))",
                p,
            ):
                if sid in stripe:
                    by_stripe[sid] = cid
                elif ref in stripe:
                    by_stripe.setdefault(ref, cid)
        for i in live:
            item = items[i]
            if item.customer_id and item.customer_id not in by_id:
                self._fail(
                    i, NotFound(f"customer {item.customer_id!r} not found", field="customerId")
                )
        return {"ref": by_ref, "id": by_id, "stripe": by_stripe}

    def _features(self, live: list[int]) -> dict[str, dict[str, Any]]:
        tx, env, items = self.tx, self.env, self.items
        keys = sorted({v for i in live if (v := items[i].feature_key)})
        ids = sorted({v for i in live if (v := items[i].feature_id)})
        by_key: dict[str, tuple[str, bool]] = {}
        by_id: dict[str, tuple[str, bool]] = {}
        if keys or ids:
            p: dict[str, Any] = {"env": env}
            sql = (
                "SELECT id, key, is_enabled FROM features WHERE environment_id = :env AND "
                f"(key IN ({in_list('k', keys, p)}) OR id IN ({in_list('f', ids, p)}))"
            )
            for fid, key, enabled in tx.rows(sql, p):
                by_key[key] = (fid, bool(enabled))
                by_id[fid] = (fid, bool(enabled))
        for i in live:
            item = items[i]
            if item.feature_id and item.feature_id not in by_id:
                self._fail(i, NotFound(f"feature {item.feature_id!r} not found", field="featureId"))
        return {"key": by_key, "id": by_id}

    def _create_missing(self, live: list[int], customers: dict, features: dict) -> None:
        """Auto-create unknown customers and features (sorted, so concurrent batches
        take the unique-key locks in one order), for events that will be stored."""
        tx, env, items = self.tx, self.env, self.items
        new_refs: dict[str, tuple[str, str | None, int]] = {}
        for i in live:
            item = items[i]
            if item.customer_ref and item.customer_ref not in customers["ref"]:
                new_refs.setdefault(item.customer_ref, (item.customer_ref, None, i))
            elif item.stripe_customer_id and item.stripe_customer_id not in customers["stripe"]:
                sid = item.stripe_customer_id
                new_refs.setdefault(sid, (sid, sid, i))
        created_by: dict[str, int] = {}
        for ref in sorted(new_refs):
            _, stripe_id, first = new_refs[ref]
            now = items[first].now
            cid = new_id()
            inserted = tx.rows(
                "INSERT INTO customers (id, environment_id, reference_id, source, metadata, "
                "provider_customer_id, created_at, modified_at) VALUES (:id, :env, :ref, "
                "'EVENT_AUTO_CREATED', '{}', :sid, :now, :now) "
                "ON CONFLICT (environment_id, reference_id) DO NOTHING RETURNING id",
                {"id": cid, "env": env, "ref": ref, "sid": stripe_id, "now": tx.dt(now)},
            )
            if inserted:
                created_by[ref] = first
                real = cid
            else:  # a concurrent writer created it first
                real = tx.rows(
                    "SELECT id FROM customers WHERE environment_id = :env AND reference_id = :ref",
                    {"env": env, "ref": ref},
                )[0][0]
            if stripe_id is None:
                customers["ref"][ref] = real
            else:
                customers["stripe"][ref] = real
        if created_by:
            self.effects.catalog_changed.add(env)
        new_keys: dict[str, int] = {}
        for i in live:
            key = items[i].feature_key
            if key and not items[i].feature_id and key not in features["key"]:
                new_keys.setdefault(key, i)
        for key in sorted(new_keys):
            now = items[new_keys[key]].now
            fid = new_id()
            inserted = tx.rows(
                "INSERT INTO features (id, environment_id, key, name, description, is_enabled, "
                "source, metadata, created_at, modified_at) VALUES (:id, :env, :key, :name, "
                "'Auto-created from event', :t, 'EVENT_AUTO_CREATED', '{}', :now, :now) "
                "ON CONFLICT (environment_id, key) DO NOTHING RETURNING id",
                {
                    "id": fid,
                    "env": env,
                    "key": key,
                    "name": key.replace("_", " ").replace("-", " ")[:200],
                    "t": tx.b(True),
                    "now": tx.dt(now),
                },
            )
            if not inserted:
                fid = tx.rows(
                    "SELECT id FROM features WHERE environment_id = :env AND key = :key",
                    {"env": env, "key": key},
                )[0][0]
            features["key"][key] = (fid, True)
            self.effects.catalog_changed.add(env)
        self.created_by = created_by

    # attribution ---------------------------------------------------------------

    def _customer_of(self, i: int, customers: dict) -> str:
        item = self.items[i]
        if item.customer_id:
            return customers["id"][item.customer_id]
        if item.customer_ref:
            return customers["ref"][item.customer_ref]
        return customers["stripe"][item.stripe_customer_id]

    def _feature_of(self, i: int, features: dict) -> tuple[str, bool] | None:
        item = self.items[i]
        if item.feature_id:
            return features["id"][item.feature_id]
        if item.feature_key:
            return features["key"][item.feature_key]
        return None

    def _attribution(self, live: list[int], customers: dict, features: dict):
        cust_ids = sorted({self._customer_of(i, customers) for i in live})
        feat_ids = sorted({f[0] for i in live if (f := self._feature_of(i, features)) is not None})
        return load_granting(self.tx, self.env, cust_ids, feat_ids)

    # decisions -----------------------------------------------------------------

    def _plan(self, live, customers, features, granting, optimistic=False) -> dict[str, Any]:
        """Per-event context, the locked state and the settings the decisions need.

        ``optimistic`` (the first attempt, on a database with row locks): the usage
        counters are first read without a lock. When every event of the batch then takes
        the fast path — no limit can be reached even with the whole batch's usage, no
        credits, no cost — no decision depends on their exact values, only on staying
        below the limits, so they are locked just before they are written and that
        condition is checked again on the locked rows (a failure rolls the batch back and
        the retry locks them up front). Writers of several processes on a hot counter
        then overlap everything but their last statements and commit."""
        items = self.items
        # per live item: (customer_id, feature_id, sub, rule plan, counter key, choices);
        # ``choices`` lists (sub, rule plan, counter key) when several subscriptions can
        # take the event: the choice depends on the state when its turn comes (_apply)
        ctx: dict[int, tuple] = {}
        counter_keys: set[tuple[str, str, datetime]] = set()
        credit_needs: set[tuple[str, str]] = set()  # (customer_id, denomination)
        plans: dict[str, _RulePlan] = {}
        # the candidates depend only on (customer, feature): found once per distinct
        # tuple, not once per event
        decided: dict[tuple, tuple] = {}
        chosen: dict[tuple, tuple] = {}
        for i in live:
            item = items[i]
            dkey = (
                item.customer_ref,
                item.customer_id,
                item.stripe_customer_id,
                item.feature_key,
                item.feature_id,
            )
            hit = decided.get(dkey)
            if hit is None:
                cid = self._customer_of(i, customers)
                feat = self._feature_of(i, features)
                fid = feat[0] if feat else None
                cands = [s for s in granting.get(cid, ()) if fid in s.grants] if fid else []
                hit = decided[dkey] = (cid, fid, cands)
            cid, fid, cands = hit
            # the choices depend on the event's time too (window, started subscriptions):
            # events of one tuple sent without occurredAt share the batch's "now"
            ckey = (dkey, item.occurred_at, item.event_type)
            entry = chosen.get(ckey)
            if entry is None:
                entry = chosen[ckey] = self._choices(
                    cid, fid, cands, item, plans, counter_keys, credit_needs
                )
            ctx[i] = entry
        settings = self._settings(live, ctx)
        late = optimistic and bool(self.tx.lock) and bool(counter_keys)
        counters = self._lock_counters(counter_keys, lock=not late)
        if late and not self._all_fast(live, ctx, counters, settings):
            late = False
            counters = self._lock_counters(counter_keys)
        self.late_lock = late
        pools, links, grants, model_hard = self._lock_credits(credit_needs)
        return {
            "ctx": ctx,
            "counters": counters,
            "pools": pools,
            "links": links,
            "grants": grants,
            "model_hard": model_hard,
            "settings": settings,
        }

    def _all_fast(self, live, ctx, counters, default_cost) -> bool:
        """Whether every event takes _apply's fast path on these counter values."""
        if default_cost is not None:
            return False
        use: dict[tuple, int] = defaultdict(int)
        limits: dict[tuple, int | None] = {}
        for i in live:
            _, _, _, rp, ckey, choices = ctx[i]
            if not _fast_event(self.items[i], choices, rp, True, True):
                return False
            if ckey is not None:
                use[ckey] += self.items[i].usage_q
                limits[ckey] = rp.limit_q
        return all(verdict(counters[k][1] + u, limits[k]) is None for k, u in use.items())

    @staticmethod
    def _choices(cid, fid, cands, item, plans, counter_keys, credit_needs) -> tuple:
        """``(customer, feature, sub, rule plan, counter key, choices)`` for an event:
        the subscription when only one can take it, else the choices to decide among
        when its turn comes."""
        cands = eligible_at(cands, item.occurred_at)
        if not cands:
            return (cid, fid, None, None, None, None)
        if item.event_type != CLIENT_TRACKED:
            # audit events are attributed (for reporting) but never counted
            return (cid, fid, cands[0], None, None, None)
        choices = []
        for sub in cands:
            grant = sub.grants[fid]
            plan = plans.get(grant.rule_id)
            if plan is None:
                plan = plans[grant.rule_id] = _RulePlan(grant)
            key = None
            if plan.pricing is not None:
                key = (sub.id, fid, _window(sub.period, plan.reset_mode, item.occurred_at))
                counter_keys.add(key)
            if plan.credits is not None:
                credit_needs.add((cid, plan.credits.denomination))
            choices.append((sub, plan, key))
        if len(choices) == 1:
            return (cid, fid, *choices[0], None)
        return (cid, fid, None, None, None, choices)

    def _settings(self, live, ctx) -> DefaultCostConfig | None:
        need = any(
            self.items[i].cost_amount is None and not (ctx[i][3] and ctx[i][3].cost) for i in live
        )
        if not need:
            return None
        rows = self.tx.rows("SELECT settings FROM environments WHERE id = :env", {"env": self.env})
        self.price_overrides = price_overrides(rows[0][0]) if rows else ()
        return default_cost(rows[0][0]) if rows else None

    def _lock_counters(self, keys: set[tuple[str, str, datetime]], lock: bool = True) -> dict:
        tx, env = self.tx, self.env
        lock_sql = tx.lock if lock else ""
        if not keys:
            return {}
        found: dict[tuple[str, str, datetime], list] = {}

        def select(wanted: set) -> None:
            p: dict[str, Any] = {}
            subs = sorted({k[0] for k in wanted})
            feats = sorted({k[1] for k in wanted})
            starts = sorted({tx.dt(k[2]) for k in wanted})
            for cid, sid, fid, ws, used, over in tx.rows(
                "SELECT id, subscription_id, feature_id, window_start, used_q, overage_q "
                f"FROM usage_counters WHERE subscription_id IN ({in_list('s', subs, p)}) "
                f"AND feature_id IN ({in_list('f', feats, p)}) "
                f"AND window_start IN ({in_list('w', starts, p)}) ORDER BY id{lock_sql}",
                p,
            ):
                key = (sid, fid, tx.from_dt(ws))
                if key in wanted:
                    found[key] = [cid, int(used), int(over), 0, 0]

        select(keys)
        missing = sorted(k for k in keys if k not in found)
        if missing:
            now = max(i.now for i in self.items)
            tx.many(
                "INSERT INTO usage_counters (id, environment_id, subscription_id, feature_id, "
                "window_start, used_q, overage_q, modified_at) VALUES (:id, :env, :s, :f, :w, "
                "0, 0, :now) ON CONFLICT (subscription_id, feature_id, window_start) DO NOTHING",
                [
                    {
                        "id": new_id(),
                        "env": env,
                        "s": k[0],
                        "f": k[1],
                        "w": tx.dt(k[2]),
                        "now": tx.dt(now),
                    }
                    for k in missing
                ],
            )
            select(set(missing))
        return found

    def _lock_credits(self, needs: set[tuple[str, str]]):
        """Lock the pools the batch draws from (id order, like every multi-pool write in
        services/credits.py), their subscription links and live grants; grants whose
        expiry has passed are expired first, as ``credits.deduct`` does, so usage never
        eats credits that are no longer valid even if the expiry job has not run."""
        tx, env = self.tx, self.env
        if not needs:
            return {}, {}, {}, {}
        custs = sorted({n[0] for n in needs})
        denoms = sorted({n[1] for n in needs})
        p: dict[str, Any] = {"env": env}
        pools: dict[tuple[str, str], _Pool] = {}
        for pid, cid, denom, bal, consumed, expired, hard, status in tx.rows(
            "SELECT id, customer_id, denomination, balance_q, total_consumed_q, "
            "total_expired_q, hard_limit, status FROM credit_pools WHERE environment_id = :env "
            f"AND customer_id IN ({in_list('c', custs, p)}) "
            f"AND denomination IN ({in_list('d', denoms, p)}) ORDER BY id{tx.lock}",
            p,
        ):
            if (cid, denom) in needs:
                pools[(cid, denom)] = _Pool(
                    pid, cid, denom, int(bal), int(consumed), int(expired), bool(hard), status
                )
        links: dict[tuple[str, str], _Link] = {}
        grants: dict[str, list[_Grant]] = defaultdict(list)
        pool_ids = sorted(p.id for p in pools.values())
        if pool_ids:
            p = {}
            for lid, pid, sid, limit, drawn in tx.rows(
                "SELECT id, pool_id, subscription_id, draw_limit_q, total_drawn_q "
                f"FROM credit_pool_subscriptions WHERE pool_id IN ({in_list('p', pool_ids, p)}) "
                f"ORDER BY id{tx.lock}",
                p,
            ):
                links[(pid, sid)] = _Link(
                    lid, sid, None if limit is None else int(limit), int(drawn)
                )
            p = {}
            for gid, pid, remaining, expires, created, gtype, gsub in tx.rows(
                "SELECT id, pool_id, remaining_q, expires_at, created_at, grant_type, "
                "subscription_id FROM credit_grants "
                f"WHERE pool_id IN ({in_list('p', pool_ids, p)}) AND remaining_q > 0 "
                f"AND voided_at IS NULL ORDER BY id{tx.lock}",
                p,
            ):
                grants[pid].append(
                    _Grant(
                        gid,
                        int(remaining),
                        tx.from_dt(expires),
                        tx.from_dt(created),
                        gtype,
                        gsub,
                    )
                )
            for lst in grants.values():
                lst.sort(key=lambda g: (g.created_at, g.id))
            self._expire_due(pools, grants)
        model_hard: dict[str, bool] = {}
        without_pool = sorted({d for c, d in needs if (c, d) not in pools})
        if without_pool:
            p = {"env": env}
            for denom, hard in tx.rows(
                "SELECT denomination, hard_limit FROM credit_models WHERE environment_id = :env "
                f"AND denomination IN ({in_list('d', without_pool, p)})",
                p,
            ):
                model_hard[denom] = bool(hard)
        return pools, links, grants, model_hard

    def _expire_due(self, pools: dict, grants: dict[str, list[_Grant]]) -> None:
        """EXPIRATION rows for live grants past their expiry (written at once: the
        pool's ledger must show them before this batch's deductions)."""
        tx, env = self.tx, self.env
        now = max(self.items[i].now for i in self.idxs)
        stamp = tx.dt(now)
        for pool in sorted(pools.values(), key=lambda x: x.id):
            rows = []
            for g in grants.get(pool.id, ()):
                if g.expires_at is not None and g.expires_at <= now and g.remaining_q > 0:
                    before = pool.balance_q - pool.expiring_q
                    rows.append(
                        {
                            "id": new_id(),
                            "env": env,
                            "pool": pool.id,
                            "grant": g.id,
                            "type": "EXPIRATION",
                            "amount": -g.remaining_q,
                            "before": before,
                            "after": before - g.remaining_q,
                            "event": None,
                            "sub": g.subscription_id,
                            "desc": f"expiry of {g.grant_type} grant",
                            "created": stamp,
                        }
                    )
                    pool.expiring_q += g.remaining_q
                    g.expired_q = g.remaining_q
            if not rows:
                continue
            if pool.balance_q - pool.expiring_q < 0:
                raise GuardFailed(f"credit pool {pool.id}: grants exceed the balance")
            tx.many(
                "UPDATE credit_grants SET remaining_q = 0 WHERE id = :id AND remaining_q = :r",
                [{"id": r["grant"], "r": -r["amount"]} for r in rows],
            )
            n = tx.run(
                "UPDATE credit_pools SET balance_q = balance_q - :x, total_expired_q = "
                "total_expired_q + :x, modified_at = :now WHERE id = :id AND balance_q >= :x",
                {"x": pool.expiring_q, "now": stamp, "id": pool.id},
            )
            if n != 1:
                raise GuardFailed(f"credit pool {pool.id} moved under the batch")
            tx.many(_LEDGER_SQL, rows)
            pool.balance_q -= pool.expiring_q
            pool.expired_q += pool.expiring_q
            pool.expiring_q = 0
            for g in grants[pool.id]:
                if g.expired_q:
                    g.remaining_q = 0
            grants[pool.id] = [g for g in grants[pool.id] if g.remaining_q > 0]
            self.effects.pools.setdefault(env, {})[pool.id] = {
                "balance_q": pool.balance_q,
                "total_consumed_q": pool.consumed_q,
                "customer_id": pool.customer_id,
                "grants": {r["grant"]: 0 for r in rows},  # expired
            }
            self.effects.pool_customers.add(pool.customer_id)

    # writing -------------------------------------------------------------------

    def _apply(self, plan: dict[str, Any]) -> None:
        tx, env, items = self.tx, self.env, self.items
        ctx = plan["ctx"]
        counters = plan["counters"]
        pools: dict[tuple[str, str], _Pool] = plan["pools"]
        links: dict[tuple[str, str], _Link] = plan["links"]
        grants: dict[str, list[_Grant]] = plan["grants"]
        default_cost = plan["settings"]
        short_rows: list[tuple] = []
        full_rows: list[tuple] = []
        ledger: list[dict[str, Any]] = []
        created_by = getattr(self, "created_by", {})
        live = [i for i in self.idxs if self.out[i] is None]
        ids = _ids(len(live))
        dt = _DtMemo(tx)
        # counters no event of this batch can push over their limit: events on them
        # need no per-event limit decision
        batch_use: dict[tuple, int] = defaultdict(int)
        limits: dict[tuple, int | None] = {}
        for i in live:
            ckey = ctx[i][4]
            if ckey is not None:
                batch_use[ckey] += items[i].usage_q
                limits[ckey] = ctx[i][3].limit_q
            elif ctx[i][5] is not None:
                # may count on any of its choices: counted against each (conservative)
                for _, rp, key in ctx[i][5]:
                    if key is not None:
                        batch_use[key] += items[i].usage_q
                        limits[key] = rp.limit_q
        # safe: even with all of the batch's usage on it, the limit is not reached
        safe = {k: verdict(counters[k][1] + use, limits[k]) is None for k, use in batch_use.items()}
        no_default_cost = default_cost is None
        b_false = tx.b(False)
        out = self.out
        append_short = short_rows.append
        dt_memo = dt.memo
        revenue_memo: dict[tuple[int, int], int] = {}
        units_memo: dict[int, Decimal | int] = {}
        model_hard = plan["model_hard"]
        for n, i in enumerate(live):
            item = items[i]
            cid, fid, sub, rp, ckey, choices = ctx[i]
            usage_q = item.usage_q
            if choices is not None:
                sub, rp, ckey = self._choose(
                    cid, choices, item, counters, pools, links, grants, model_hard
                )
            counter = counters[ckey] if ckey is not None else None
            if _fast_event(item, choices, rp, no_default_cost, ckey is None or safe[ckey]):
                # fast path: no limit can be reached, no credits, no cost, no context
                if counter is not None:
                    counter[3] += usage_q
                    counter[4] += usage_q
                    rkey = (id(rp), usage_q)
                    revenue = revenue_memo.get(rkey)
                    if revenue is None:
                        revenue = revenue_memo[rkey] = rp.revenue_micros(usage_q, 0)
                else:
                    revenue = None
                event_id = ids[n]
                sid = sub.id if sub is not None else None
                at = dt_memo.get(item.occurred_at) or dt(item.occurred_at)
                created = dt_memo.get(item.now) or dt(item.now)
                append_short(
                    (
                        event_id,
                        env,
                        item.key,
                        CLIENT_TRACKED,
                        item.event_name,
                        cid,
                        fid,
                        sid,
                        at,
                        usage_q,
                        usage_q,
                        usage_q,
                        0,
                        b_false,
                        revenue,
                        None,
                        created,
                    )
                )
                units = units_memo.get(usage_q)
                if units is None:
                    units = units_memo[usage_q] = _q(usage_q)
                out[i] = Outcome(
                    ACCEPTED,
                    event_id,
                    False,
                    0,
                    units,
                    bool(created_by) and created_by.get(_ref_of(item)) == i,
                    cid,
                    sid,
                    None,
                    rp.limit if rp is not None else None,
                )
                continue
            used_q = counter[1] + counter[3] if counter is not None else 0
            credits = rp.credits if rp is not None else None
            needed_q = pool = link = None
            hard = False
            available_q = 0
            if credits is not None and usage_q > 0:
                needed_q, pool, link, hard, available_q = self._credit_state(
                    cid, sub, credits, item, pools, links, grants, model_hard
                )
            reason = verdict(
                used_q, rp.limit_q if rp is not None else None, hard, available_q, needed_q
            )
            if reason == REASON_CREDITS:
                assert credits is not None and needed_q is not None
                self.out[i] = Outcome(
                    ERROR,
                    error=InsufficientCredits(
                        "Credit pool depleted - hard limit active for denomination "
                        f"{credits.denomination}: the event needs "
                        f"{Decimal(needed_q) / QTY_SCALE} credits, "
                        f"{Decimal(available_q) / QTY_SCALE} available",
                        field="usageUnits",
                    ),
                )
                continue
            exceeded = reason == REASON_LIMIT
            billable_q = 0 if exceeded else usage_q
            deducted_q = 0
            covered_q = 0
            draws: list[tuple[_Pool, int, str | None]] = []
            if needed_q and not exceeded and pool is not None:
                take_q = min(needed_q, available_q)
                if take_q > 0:
                    first = self._draw(pool, link, grants, item, take_q)
                    draws.append((pool, take_q, first))
                    deducted_q = take_q
                    assert credits is not None
                    covered = covered_units(Decimal(take_q) / QTY_SCALE, credits.weight, item.units)
                    covered_q = int(covered * QTY_SCALE)
            overage_q = 0 if exceeded else usage_q - covered_q
            # revenue: the client's figure, else the rule's price of the overage
            if exceeded:
                revenue = 0 if (item.revenue_micros is not None or rp) else None
            elif item.revenue_micros is not None:
                revenue = item.revenue_micros
            elif rp is not None and rp.pricing is not None:
                prior_q = counter[2] + counter[4] if counter is not None else 0
                revenue = rp.revenue_micros(overage_q, prior_q)
            else:
                revenue = None
            if counter is not None:
                counter[3] += billable_q
                counter[4] += overage_q
            # cost chain (first match wins)
            cost_micros = cost_source = provider = None
            extra: dict[str, Any] | None = None
            ci = item.cost_input
            if (
                item.cost_amount is not None
                or ci is not None
                or (rp is not None and rp.cost is not None)
                or default_cost is not None
            ):
                cost = resolve_cost(
                    at=item.occurred_at,
                    usage_units=item.units,
                    cost_amount=item.cost_amount,
                    cost_input=ci,
                    rule_cost_model=rp.cost if rp is not None else None,
                    default_config=default_cost,
                    overrides=self.price_overrides,
                )
                cost_source = cost.source
                provider = cost.provider
                if cost.amount is not None:
                    if cost.cost_unit in (None, CostUnit.CURRENCY):
                        cost_micros = to_micros(cost.amount)
                    else:
                        extra = {
                            "sys_cost_amount": cost.amount,
                            "sys_cost_unit": cost.cost_unit.value,
                        }
                    if cost.model_resolved:
                        extra = extra or {}
                        extra["sys_model_resolved_from"] = cost.model_resolved
            if exceeded or deducted_q or item.flow_id or item.context or extra:
                context: dict[str, Any] = dict(rp.context) if rp is not None else {}
                if item.context:
                    context.update(item.context)
                if extra:
                    context.update(extra)
                if exceeded:
                    context["usage_limit_exceeded"] = True
                    context["usage_limit_max"] = rp.limit
                if deducted_q:
                    context["credit_deducted"] = Decimal(deducted_q) / QTY_SCALE
                    context["usage_covered_by_credits"] = Decimal(covered_q) / QTY_SCALE
                if item.flow_id:
                    context["flowId"] = item.flow_id
                context_json = _dumps(context)
            else:
                # a plain event stores no context: subscription_id set means it was
                # entitled and counted under that subscription's rule
                context_json = None
            event_id = ids[n]
            head = (
                event_id,
                env,
                item.key,
                item.event_type,
                item.event_name,
                cid,
                fid,
                sub.id if sub is not None else None,
                dt(item.occurred_at),
                usage_q,
                billable_q,
                overage_q,
                deducted_q,
                tx.b(exceeded),
                revenue,
                context_json,
                dt(item.now),
            )
            if (
                cost_micros is None
                and cost_source is None
                and ci is None
                and provider is None
                and item.meta is None
            ):
                short_rows.append(head)
            else:
                full_rows.append(
                    head
                    + (
                        cost_micros,
                        cost_source,
                        ci.model if ci else None,
                        provider or (ci.model_provider if ci else None),
                        _tokens(ci.input_tokens) if ci else None,
                        _tokens(ci.output_tokens) if ci else None,
                        _dumps(item.meta),
                    )
                )
            for pool, take_q, first_grant in draws:
                before = pool.balance_q - pool.taken_q + take_q
                ledger.append(
                    {
                        "id": new_id(),
                        "env": env,
                        "pool": pool.id,
                        "grant": first_grant,
                        "type": "DEDUCTION",
                        "amount": -take_q,
                        "before": before,
                        "after": before - take_q,
                        "event": event_id,
                        "sub": sub.id,
                        "desc": f"usage event {item.key}"[:500],
                        "created": dt(item.now),
                    }
                )
            self.out[i] = Outcome(
                ACCEPTED,
                event_id=event_id,
                limit_exceeded=exceeded,
                credits_deducted=_q(deducted_q),
                overage_units=_q(overage_q) if not exceeded else 0,
                customer_auto_created=bool(created_by) and created_by.get(_ref_of(item)) == i,
                customer_id=cid,
                subscription_id=sub.id if sub is not None else None,
                limit=rp.limit if rp is not None else None,
                cost_source=cost_source,
            )
        if not short_rows and not full_rows:
            return
        tx.insert_many("events", _EVENT_COLUMNS, short_rows)
        tx.insert_many("events", _EVENT_COLUMNS + _EVENT_EXTRA_COLUMNS, full_rows)
        now = dt(max(items[i].now for i in self.idxs))
        touched = {k: c for k, c in counters.items() if c[3] or c[4]}
        if touched and self.late_lock:
            self._late_lock(touched, limits)
        if touched:
            tx.many(
                "UPDATE usage_counters SET used_q = used_q + :u, overage_q = overage_q + :o, "
                "modified_at = :now WHERE id = :id",
                [{"u": c[3], "o": c[4], "now": now, "id": c[0]} for c in touched.values()],
            )
            p: dict[str, Any] = {}
            back = {
                r[0]: (int(r[1]), int(r[2]))
                for r in tx.rows(
                    "SELECT id, used_q, overage_q FROM usage_counters WHERE id IN "
                    f"({in_list('c', [c[0] for c in touched.values()], p)})",
                    p,
                )
            }
            for key, c in touched.items():
                expect = (c[1] + c[3], c[2] + c[4])
                if back.get(c[0]) != expect:
                    raise GuardFailed(f"usage counter {c[0]} moved under the batch")
                self.effects.counters.setdefault(self.env, {})[key] = expect
        for key, c in counters.items():
            # (values read without a lock may be older than what the cache already has)
            if key not in touched and not self.late_lock:
                self.effects.counters.setdefault(self.env, {})[key] = (c[1], c[2])
        if ledger:
            self._write_credits(pools, links, grants, ledger, now)

    def _late_lock(self, touched: dict, limits: dict) -> None:
        """Lock the counters read without a lock (id order) and take their current values;
        the batch stays valid only while its usage keeps each below its limit."""
        p: dict[str, Any] = {}
        now = {
            r[0]: (int(r[1]), int(r[2]))
            for r in self.tx.rows(
                "SELECT id, used_q, overage_q FROM usage_counters WHERE id IN "
                f"({in_list('c', sorted(c[0] for c in touched.values()), p)}) "
                f"ORDER BY id{self.tx.lock}",
                p,
            )
        }
        for key, c in touched.items():
            used, over = now[c[0]]
            if verdict(used + c[3], limits.get(key)) is not None:
                raise GuardFailed(f"usage counter {c[0]} neared its limit under the batch")
            c[1], c[2] = used, over

    def _credit_state(self, cid, sub, credits, item, pools, links, grants, model_hard):
        """(credits needed, pool, link, hard limit, credits available) for the event on
        ``sub``."""
        needed_q = to_credit_units(credits_for_units(item.units, credits.weight))
        pool = pools.get((cid, credits.denomination))
        hard = pool.hard_limit if pool is not None else model_hard.get(credits.denomination, False)
        available_q = 0
        link = None
        if pool is not None:
            link = links.get((pool.id, sub.id))
            available_q = self._available(pool, link, grants, item)
        return needed_q, pool, link, hard, available_q

    def _choose(self, cid, choices, item, counters, pools, links, grants, model_hard):
        """The (sub, rule plan, counter key) of ``choices`` the event is attributed to,
        by the entitlement attribution rule, on the state as of this event."""

        def has_room(choice) -> bool:
            sub, rp, ckey = choice
            counter = counters[ckey] if ckey is not None else None
            used_q = counter[1] + counter[3] if counter is not None else 0
            needed_q = None
            hard = False
            available_q = 0
            if rp.credits is not None and item.usage_q > 0:
                needed_q, _, _, hard, available_q = self._credit_state(
                    cid, sub, rp.credits, item, pools, links, grants, model_hard
                )
            return verdict(used_q, rp.limit_q, hard, available_q, needed_q) is None

        return attribute(choices, item.subscription_id, has_room, _choice_id)

    def _available(self, pool: _Pool, link: _Link | None, grants, item: EventIn) -> int:
        drawable = sum(
            g.remaining_q - g.taken_q
            for g in grants.get(pool.id, ())
            if g.expires_at is None or g.expires_at > item.now
        )
        return available_credits(
            pool.balance_q - pool.taken_q,
            pool.status,
            link.draw_limit_q if link is not None else None,
            link.drawn_q + link.taken_q if link is not None else 0,
            drawable,
        )

    def _draw(
        self, pool: _Pool, link: _Link | None, grants, item: EventIn, take_q: int
    ) -> str | None:
        """Take ``take_q`` from the pool by the domain draw (FIFO over its live grants);
        returns the grant drawn when a single one covered it (recorded on the ledger
        row), else None."""
        pool.taken_q += take_q
        if link is not None:
            link.taken_q += take_q
        plan = plan_draw(
            [(g, g.remaining_q - g.taken_q, g.expires_at) for g in grants.get(pool.id, ())],
            take_q,
            item.now,
        )
        drawn = 0
        for g, t in plan:
            g.taken_q += t
            drawn += t
        if drawn != take_q:
            raise GuardFailed(f"credit grants of pool {pool.id} cannot cover a computed draw")
        return plan[0][0].id if len(plan) == 1 else None

    def _write_credits(self, pools, links, grants, ledger, now) -> None:
        tx = self.tx
        touched_pools = sorted((p for p in pools.values() if p.taken_q), key=lambda p: p.id)
        tx.many(
            "UPDATE credit_pools SET balance_q = balance_q - :d, total_consumed_q = "
            "total_consumed_q + :d, modified_at = :now WHERE id = :id AND balance_q >= :d",
            [{"d": p.taken_q, "now": now, "id": p.id} for p in touched_pools],
        )
        touched_grants = sorted(
            (g for lst in grants.values() for g in lst if g.taken_q), key=lambda g: g.id
        )
        tx.many(
            "UPDATE credit_grants SET remaining_q = remaining_q - :d "
            "WHERE id = :id AND remaining_q >= :d",
            [{"d": g.taken_q, "id": g.id} for g in touched_grants],
        )
        touched_links = sorted((lk for lk in links.values() if lk.taken_q), key=lambda lk: lk.id)
        tx.many(
            "UPDATE credit_pool_subscriptions SET total_drawn_q = total_drawn_q + :d "
            "WHERE id = :id",
            [{"d": lk.taken_q, "id": lk.id} for lk in touched_links],
        )
        tx.many(_LEDGER_SQL, ledger)
        p: dict[str, Any] = {}
        back = {
            r[0]: (int(r[1]), int(r[2]))
            for r in tx.rows(
                "SELECT id, balance_q, total_consumed_q FROM credit_pools WHERE id IN "
                f"({in_list('p', [x.id for x in touched_pools], p)})",
                p,
            )
        }
        for pool in touched_pools:
            expect = (pool.balance_q - pool.taken_q, pool.consumed_q + pool.taken_q)
            if back.get(pool.id) != expect or expect[0] < 0:
                raise GuardFailed(f"credit pool {pool.id} moved under the batch")
            self.effects.pools.setdefault(self.env, {})[pool.id] = {
                "balance_q": expect[0],
                "total_consumed_q": expect[1],
                "customer_id": pool.customer_id,
                # what each subscription has drawn (its draw limit is counted on it)
                "drawn": {
                    lk.subscription_id: lk.drawn_q + lk.taken_q
                    for (pid, _), lk in links.items()
                    if pid == pool.id and lk.taken_q
                },
                # what each drawn grant has left (and the grants expired by this batch)
                "grants": {
                    **self.effects.pools.get(self.env, {}).get(pool.id, {}).get("grants", {}),
                    **{
                        g.id: g.remaining_q - g.taken_q
                        for g in grants.get(pool.id, ())
                        if g.taken_q
                    },
                },
            }
            self.effects.pool_customers.add(pool.customer_id)
        if touched_grants:
            p = {}
            back_g = {
                r[0]: int(r[1])
                for r in tx.rows(
                    "SELECT id, remaining_q FROM credit_grants WHERE id IN "
                    f"({in_list('g', [g.id for g in touched_grants], p)})",
                    p,
                )
            }
            for g in touched_grants:
                if back_g.get(g.id) != g.remaining_q - g.taken_q:
                    raise GuardFailed(f"credit grant {g.id} moved under the batch")


_LEDGER_SQL = (
    "INSERT INTO credit_transactions (id, environment_id, pool_id, grant_id, type, amount_q, "
    "balance_before_q, balance_after_q, event_id, subscription_id, description, created_at) "
    "VALUES (:id, :env, :pool, :grant, :type, :amount, :before, :after, :event, :sub, :desc, "
    ":created)"
)

_EVENT_COLUMNS = (
    "id",
    "environment_id",
    "idempotency_key",
    "event_type",
    "event_name",
    "customer_id",
    "feature_id",
    "subscription_id",
    "occurred_at",
    "usage_q",
    "billable_q",
    "overage_q",
    "credits_deducted_q",
    "usage_limit_exceeded",
    "revenue_micros",
    "context",
    "created_at",
)
_EVENT_EXTRA_COLUMNS = (
    "cost_micros",
    "cost_source",
    "model",
    "model_provider",
    "input_tokens",
    "output_tokens",
    "meta",
)


class _RulePlan:
    """What the per-event loop needs of a rule, computed once per batch."""

    __slots__ = (
        "context",
        "cost",
        "credits",
        "currency",
        "limit",
        "limit_q",
        "price_exp",
        "price_int",
        "pricing",
        "reset_mode",
        "minor",
        "_k",
        "_div",
        "_to_micros",
        "_memo",
        "fast",
    )

    def __init__(self, rule: Grant):
        value = rule.rule
        self.pricing = value.pricing if value is not None else None
        self.cost = value.cost if value is not None else None
        self.credits = value.credits if value is not None else None
        self.currency = rule.currency
        self.reset_mode = value.reset_mode if value is not None else ResetMode.RESET
        self.limit = self.pricing.max_usage if self.pricing is not None else None
        self.limit_q = rule.limit_q
        self.price_int = self.price_exp = None
        self.minor = minor_units(rule.currency)
        self._memo: dict[tuple[int, int], int] = {}
        if isinstance(self.pricing, UsagePricing):
            sign, digits, exp = self.pricing.price_per_unit.as_tuple()
            if isinstance(exp, int) and not sign:
                self.price_int = int("".join(map(str, digits)) or "0")
                self.price_exp = exp
                self._k = exp - 4 + self.minor
                self._div = 10**-self._k if self._k < 0 else 1
                self._to_micros = 10 ** (6 - self.minor)
        self.context = {"sys_applied_rule_id": rule.rule_id}
        # events on this rule can take the writer's fast path (see _apply)
        self.fast = (
            self.credits is None
            and self.cost is None
            and (self.pricing is None or self.price_int is not None)
        )

    def revenue_micros(self, overage_q: int, prior_q: int) -> int:
        """The rule's price of ``overage_q`` units (after ``prior_q`` already in the
        window), rounded half-up to the currency's minor unit, in micro-units. Usage
        pricing in exact integer arithmetic; graduated through the domain function."""
        if self.price_int is not None:
            n = overage_q * self.price_int  # currency units x 10^(4 - price_exp)
            if self._k >= 0:
                in_minor = n * 10**self._k
            else:
                in_minor, r = divmod(n, self._div)
                if 2 * r >= self._div:
                    in_minor += 1
            return in_minor * self._to_micros
        key = (overage_q, prior_q)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if len(self._memo) > 4096:
            self._memo.clear()
        assert self.pricing is not None
        hit = self._memo[key] = to_micros(
            event_revenue(
                self.pricing,
                Decimal(overage_q) / QTY_SCALE,
                Decimal(prior_q) / QTY_SCALE,
                self.currency,
            )
        )
        return hit


class _DtMemo:
    """Datetime -> stored form, remembering the last few (a batch shares its ``now``)."""

    __slots__ = ("fn", "memo")

    def __init__(self, tx: Any):
        self.fn = tx.dt
        self.memo: dict[datetime, Any] = {}

    def __call__(self, value: datetime) -> Any:
        hit = self.memo.get(value)
        if hit is None:
            if len(self.memo) > 64:
                self.memo.clear()
            hit = self.memo[value] = self.fn(value)
        return hit


def _ids(n: int) -> list[str]:
    """``n`` UUIDv7 strings for one batch: the millisecond timestamp, 12 random bits and
    a random 62-bit start incremented per id (RFC 9562 §6.2 method 2: monotonic within
    the batch, so the ids also land at the right edge of the primary-key index)."""
    if n <= 0:
        return []
    ms = (time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    rnd = int.from_bytes(os.urandom(10), "big")
    low = rnd & ((1 << 48) - 1)
    if low > (1 << 48) - 1 - n:  # keep the counter inside the last 48 bits
        low -= n
    high = 0x8000 | ((rnd >> 48) & 0x3FFF)  # variant 10 + 14 random bits
    prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{(rnd >> 64) & 0xFFF:03x}-{high:04x}-"
    return [f"{prefix}{x:012x}" for x in range(low, low + n)]


def _fast_event(item: EventIn, choices, rp, no_default_cost: bool, safe: bool) -> bool:
    """An event whose outcome needs no per-event decision: one subscription can take it,
    no limit can be reached (``safe``), no credits, no cost, no context."""
    return (
        choices is None
        and item.simple
        and no_default_cost
        and item.event_type == CLIENT_TRACKED
        and (rp is None or (rp.fast and safe))
    )


def _q(value: int) -> Decimal | int:
    if value == 0:
        return 0
    whole, rest = divmod(value, QTY_SCALE)
    return whole if rest == 0 else Decimal(value) / QTY_SCALE


def _window(period: SubPeriod, reset_mode: ResetMode, at: datetime) -> datetime:
    """The counter window an event at ``at`` counts in (the current period without
    calendar arithmetic in the common case)."""
    if reset_mode is not ResetMode.ACCUMULATE and period.period_start <= at < period.period_end:
        return period.period_start
    return window_start(period, reset_mode, at)


def _choice_id(choice: tuple) -> str:
    return choice[0].id


def _ref_of(item: EventIn) -> str | None:
    return item.customer_ref or item.stripe_customer_id


def _tokens(value: Decimal | None) -> int | None:
    if value is None:
        return None
    return int(value.to_integral_value())


__all__ = [
    "ACCEPTED",
    "DUPLICATE",
    "ERROR",
    "Effects",
    "GuardFailed",
    "Outcome",
    "ResetMode",
    "iso",
    "process_batch",
]
