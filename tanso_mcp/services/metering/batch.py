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
3. attribution: the customer's active subscriptions, their non-revoked entitlements,
   the plan rules (any active subscription granting the feature — the one named by
   ``subscriptionId`` first, else the oldest; past-due subscriptions grant nothing);
4. locked state: usage counters, then credit pools, their subscription links and
   grants — each phase in a fixed (sorted) order, ``FOR UPDATE`` on PostgreSQL, so two
   processes' batches never deadlock; SQLite holds the database write lock
   (``BEGIN IMMEDIATE``) for the whole batch;
5. the decisions, event by event in input order, in memory: limit (an event whose
   window already reached ``max_usage`` is stored with zero billable usage), credits
   before overage (FIFO over grants, pools by draw priority within draw limits; a
   hard-limited denomination that cannot cover the event rejects it — nothing stored),
   cost chain and revenue;
6. bulk writes: events, counter increments, guarded pool/grant decrements (``… AND
   balance_q >= :d``) with one ledger row per (event, pool); then the touched counters
   and pools are read back and compared with what was computed — any difference aborts
   the transaction.

Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson

from ...clock import iso
from ...db.scale import QTY_SCALE
from ...db.types import _json_default, new_id
from ...domain.cost import resolve_cost
from ...domain.credits import covered_units, credits_for_units
from ...domain.money import to_credit_units, to_micros
from ...domain.pricing import event_revenue
from ...domain.rules import (
    CostUnit,
    DefaultCostConfig,
    ResetMode,
    RuleValue,
    UsagePricing,
    parse_default_cost_config,
    parse_rule_value,
)
from ...errors import InsufficientCredits, NotFound, TansoError
from .inputs import CLIENT_TRACKED, EventIn
from .sqlio import in_list
from .windows import SubPeriod, window_start

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
ERROR = "error"
DRAWABLE_POOL_STATUSES = ("ACTIVE", "DEPLETED")


class GuardFailed(RuntimeError):
    """A guarded update or a read-back disagreed with the computed state: the batch is
    rolled back (and retried by the writer)."""


@dataclass(slots=True)
class Outcome:
    status: str
    event_id: str | None = None
    limit_exceeded: bool = False
    credits_deducted: Decimal = Decimal(0)
    overage_units: Decimal = Decimal(0)
    customer_auto_created: bool = False
    customer_id: str | None = None
    subscription_id: str | None = None
    error: TansoError | None = None
    limit: Decimal | None = None


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


@dataclass(slots=True)
class _Sub:
    id: str
    customer_id: str
    plan_id: str
    period: SubPeriod


@dataclass(slots=True)
class _Rule:
    id: str
    value: RuleValue | None
    enabled: bool
    currency: str


@dataclass(slots=True)
class _Pool:
    id: str
    customer_id: str
    denomination: str
    balance_q: int
    consumed_q: int
    hard_limit: bool
    status: str
    taken_q: int = 0


@dataclass(slots=True)
class _Link:
    id: str
    draw_priority: int
    draw_limit_q: int | None
    drawn_q: int
    taken_q: int = 0


@dataclass(slots=True)
class _Grant:
    id: str
    remaining_q: int
    expires_at: datetime | None
    created_at: datetime
    taken_q: int = 0


# parsed rule values by (rule id, raw JSON text): parsing is far dearer than the lookup
_RULE_CACHE: dict[tuple[str, str], RuleValue | None] = {}
_SETTINGS_CACHE: dict[str, tuple[DefaultCostConfig | None]] = {}


def _rule_value(rule_id: str, raw: Any) -> RuleValue | None:
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else orjson.dumps(raw, default=_json_default).decode()
    key = (rule_id, text)
    hit = _RULE_CACHE.get(key, _RULE_CACHE)
    if hit is not _RULE_CACHE:
        return hit  # type: ignore[return-value]
    import json

    try:
        value = parse_rule_value(json.loads(text, parse_float=Decimal))
    except TansoError:
        value = None
    if len(_RULE_CACHE) > 50_000:
        _RULE_CACHE.clear()
    _RULE_CACHE[key] = value
    return value


def _default_cost(raw: Any) -> DefaultCostConfig | None:
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else orjson.dumps(raw, default=_json_default).decode()
    hit = _SETTINGS_CACHE.get(text)
    if hit is not None:
        return hit[0]
    import json

    config = None
    try:
        settings = json.loads(text, parse_float=Decimal)
        if isinstance(settings, dict) and settings.get("defaultCostConfig") is not None:
            config = parse_default_cost_config(settings["defaultCostConfig"])
    except (TansoError, ValueError):
        config = None
    if len(_SETTINGS_CACHE) > 10_000:
        _SETTINGS_CACHE.clear()
    _SETTINGS_CACHE[text] = (config,)
    return config


def _dumps(obj: Any) -> str | None:
    if not obj:
        return None
    return orjson.dumps(obj, default=_json_default).decode()


def process_batch(tx: Any, items: list[EventIn]) -> tuple[list[Outcome], Effects]:
    out: list[Outcome | None] = [None] * len(items)
    effects = Effects()
    by_env: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_env[item.environment_id].append(i)
    for env in sorted(by_env):
        _Env(tx, env, items, by_env[env], out, effects).run()
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

    # ------------------------------------------------------------------ helpers

    def _fail(self, i: int, error: TansoError) -> None:
        self.out[i] = Outcome(ERROR, error=error)

    def _live(self) -> list[int]:
        return [i for i in self.idxs if self.out[i] is None]

    # ------------------------------------------------------------------ phases

    def run(self) -> None:
        tx, env, items = self.tx, self.env, self.items
        # 1. duplicates
        seen: set[str] = set()
        for i in self.idxs:
            k = items[i].key
            if k in seen:
                self.out[i] = Outcome(DUPLICATE)
            seen.add(k)
        probe = [items[i].key for i in self._live() if not items[i].key_generated]
        if probe:
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

        subs, grants_feature = self._attribution(live, customers, features)
        plan = self._plan(live, customers, features, subs, grants_feature)
        self._apply(plan)

    # customers -----------------------------------------------------------------

    def _customers(self, live: list[int]) -> dict[str, dict[str, str]]:
        """Lookups by reference, id and Stripe id; unknown customerId -> item error."""
        tx, env, items = self.tx, self.env, self.items
        refs = sorted({items[i].customer_ref for i in live if items[i].customer_ref})
        ids = sorted({items[i].customer_id for i in live if items[i].customer_id})
        stripe = sorted({items[i].stripe_customer_id for i in live if items[i].stripe_customer_id})
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
        keys = sorted({items[i].feature_key for i in live if items[i].feature_key})
        ids = sorted({items[i].feature_id for i in live if items[i].feature_id})
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
        tx, env = self.tx, self.env
        cust_ids = sorted({self._customer_of(i, customers) for i in live})
        feat_ids = sorted({f[0] for i in live if (f := self._feature_of(i, features)) is not None})
        subs: dict[str, list[_Sub]] = defaultdict(list)
        grants_feature: dict[tuple[str, str], _Rule] = {}
        if not feat_ids:
            return subs, grants_feature
        p: dict[str, Any] = {"env": env, "t": tx.b(True)}
        rows = tx.rows(
            "SELECT id, customer_id, plan_id, started_at, current_period_start, "
            "current_period_end, interval_months, billing_anchor_day FROM subscriptions "
            f"WHERE environment_id = :env AND customer_id IN ({in_list('c', cust_ids, p)}) "
            "AND is_active = :t AND ended_at IS NULL ORDER BY created_at, id",
            p,
        )
        if not rows:
            return subs, grants_feature
        all_subs: dict[str, _Sub] = {}
        for sid, cid, plan_id, started, ps, pe, interval, anchor in rows:
            s = _Sub(
                sid,
                cid,
                plan_id,
                SubPeriod(
                    tx.from_dt(started), tx.from_dt(ps), tx.from_dt(pe), int(interval), int(anchor)
                ),
            )
            all_subs[sid] = s
        sub_ids = sorted(all_subs)
        p = {"env": env}
        past_due = {
            r[0]
            for r in tx.rows(
                "SELECT DISTINCT subscription_id FROM invoices WHERE environment_id = :env "
                f"AND status = 'PAST_DUE' AND subscription_id IN ({in_list('s', sub_ids, p)})",
                p,
            )
        }
        p = {"env": env}
        entitled = set(
            tx.rows(
                "SELECT subscription_id, feature_id FROM entitlements WHERE environment_id = :env "
                f"AND subscription_id IN ({in_list('s', sub_ids, p)}) "
                f"AND feature_id IN ({in_list('f', feat_ids, p)}) AND revoked_at IS NULL",
                p,
            )
        )
        plan_ids = sorted({s.plan_id for s in all_subs.values()})
        p = {}
        rules: dict[tuple[str, str], _Rule] = {}
        for rid, plan_id, fid, value, enabled, currency in tx.rows(
            "SELECT pf.id, pf.plan_id, pf.feature_id, pf.value, pf.is_enabled, p.currency "
            "FROM plan_features pf JOIN plans p ON p.id = pf.plan_id "
            f"WHERE pf.plan_id IN ({in_list('p', plan_ids, p)}) "
            f"AND pf.feature_id IN ({in_list('f', feat_ids, p)})",
            p,
        ):
            rules[(plan_id, fid)] = _Rule(rid, _rule_value(rid, value), bool(enabled), currency)
        for s in all_subs.values():
            if s.id in past_due:
                continue
            subs[s.customer_id].append(s)
            for fid in feat_ids:
                rule = rules.get((s.plan_id, fid))
                if rule is not None and rule.enabled and (s.id, fid) in entitled:
                    grants_feature[(s.id, fid)] = rule
        return subs, grants_feature

    # decisions -----------------------------------------------------------------

    def _plan(self, live, customers, features, subs, grants_feature) -> dict[str, Any]:
        items = self.items
        # per live item: (customer_id, feature_id, sub, rule)
        ctx: dict[int, tuple[str, str | None, _Sub | None, _Rule | None]] = {}
        counter_keys: set[tuple[str, str, datetime]] = set()
        credit_needs: set[tuple[str, str]] = set()  # (customer_id, denomination)
        for i in live:
            item = items[i]
            cid = self._customer_of(i, customers)
            feat = self._feature_of(i, features)
            fid = feat[0] if feat else None
            chosen: _Sub | None = None
            rule: _Rule | None = None
            if feat is not None and feat[1] and item.event_type == CLIENT_TRACKED:
                candidates = subs.get(cid, [])
                if item.subscription_id:
                    named = [s for s in candidates if s.id == item.subscription_id]
                    candidates = named + [s for s in candidates if s.id != item.subscription_id]
                for s in candidates:
                    r = grants_feature.get((s.id, fid))
                    if r is not None:
                        chosen, rule = s, r
                        break
            elif feat is not None and item.event_type != CLIENT_TRACKED:
                # audit events are attributed (for reporting) but never counted
                for s in subs.get(cid, []):
                    if (s.id, fid) in grants_feature:
                        chosen = s
                        break
            ctx[i] = (cid, fid, chosen, rule)
            if rule is not None and rule.value is not None:
                if rule.value.pricing is not None:
                    ws = window_start(chosen.period, rule.value.reset_mode, item.occurred_at)
                    counter_keys.add((chosen.id, fid, ws))
                if rule.value.credits is not None:
                    credit_needs.add((cid, rule.value.credits.denomination))
        counters = self._lock_counters(counter_keys)
        pools, links, grants, model_hard = self._lock_credits(credit_needs)
        return {
            "ctx": ctx,
            "counters": counters,
            "pools": pools,
            "links": links,
            "grants": grants,
            "model_hard": model_hard,
            "settings": self._settings(live, ctx),
        }

    def _settings(self, live, ctx) -> DefaultCostConfig | None:
        need = any(
            self.items[i].cost_amount is None
            and self.items[i].cost_input is not None
            and not (ctx[i][3] and ctx[i][3].value and ctx[i][3].value.cost)
            for i in live
        )
        if not need:
            return None
        rows = self.tx.rows("SELECT settings FROM environments WHERE id = :env", {"env": self.env})
        return _default_cost(rows[0][0]) if rows else None

    def _lock_counters(self, keys: set[tuple[str, str, datetime]]) -> dict:
        tx, env = self.tx, self.env
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
                f"AND window_start IN ({in_list('w', starts, p)}) ORDER BY id{tx.lock}",
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
        tx, env = self.tx, self.env
        if not needs:
            return {}, {}, {}, {}
        custs = sorted({n[0] for n in needs})
        denoms = sorted({n[1] for n in needs})
        p: dict[str, Any] = {"env": env}
        pools: dict[tuple[str, str], _Pool] = {}
        for pid, cid, denom, bal, consumed, hard, status in tx.rows(
            "SELECT id, customer_id, denomination, balance_q, total_consumed_q, hard_limit, "
            f"status FROM credit_pools WHERE environment_id = :env "
            f"AND customer_id IN ({in_list('c', custs, p)}) "
            f"AND denomination IN ({in_list('d', denoms, p)}) ORDER BY id{tx.lock}",
            p,
        ):
            if (cid, denom) in needs:
                pools[(cid, denom)] = _Pool(
                    pid, cid, denom, int(bal), int(consumed), bool(hard), status
                )
        links: dict[tuple[str, str], _Link] = {}
        grants: dict[str, list[_Grant]] = defaultdict(list)
        pool_ids = sorted(p.id for p in pools.values())
        if pool_ids:
            p = {}
            for lid, pid, sid, prio, limit, drawn in tx.rows(
                "SELECT id, pool_id, subscription_id, draw_priority, draw_limit_q, total_drawn_q "
                f"FROM credit_pool_subscriptions WHERE pool_id IN ({in_list('p', pool_ids, p)}) "
                f"ORDER BY id{tx.lock}",
                p,
            ):
                links[(pid, sid)] = _Link(
                    lid, int(prio), None if limit is None else int(limit), int(drawn)
                )
            p = {}
            for gid, pid, remaining, expires, created in tx.rows(
                "SELECT id, pool_id, remaining_q, expires_at, created_at FROM credit_grants "
                f"WHERE pool_id IN ({in_list('p', pool_ids, p)}) AND remaining_q > 0 "
                f"AND voided_at IS NULL ORDER BY id{tx.lock}",
                p,
            ):
                grants[pid].append(
                    _Grant(gid, int(remaining), tx.from_dt(expires), tx.from_dt(created))
                )
            for lst in grants.values():
                lst.sort(key=lambda g: (g.created_at, g.id))
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

    # writing -------------------------------------------------------------------

    def _apply(self, plan: dict[str, Any]) -> None:
        tx, env, items = self.tx, self.env, self.items
        ctx = plan["ctx"]
        counters = plan["counters"]
        pools: dict[tuple[str, str], _Pool] = plan["pools"]
        links: dict[tuple[str, str], _Link] = plan["links"]
        grants: dict[str, list[_Grant]] = plan["grants"]
        default_cost = plan["settings"]
        events: list[dict[str, Any]] = []
        ledger: list[dict[str, Any]] = []
        created_by = getattr(self, "created_by", {})
        for i in self.idxs:
            if self.out[i] is not None:
                continue
            item = items[i]
            cid, fid, sub, rule = ctx[i]
            value = rule.value if rule is not None else None
            pricing = value.pricing if value is not None else None
            units = item.units
            limit = pricing.max_usage if pricing is not None else None
            counter = None
            if pricing is not None:
                ws = window_start(sub.period, value.reset_mode, item.occurred_at)
                counter = counters[(sub.id, fid, ws)]
            exceeded = False
            if counter is not None and limit is not None:
                used_before = counter[1] + counter[3]
                exceeded = used_before >= _limit_q(limit)
            billable_q = 0 if exceeded else item.usage_q
            deducted_q = 0
            covered = Decimal(0)
            draws: list[tuple[_Pool, int]] = []
            if value is not None and value.credits is not None and not exceeded and units > 0:
                credits = value.credits
                needed_q = to_credit_units(credits_for_units(units, credits.weight))
                pool = pools.get((cid, credits.denomination))
                hard = (
                    pool.hard_limit
                    if pool is not None
                    else plan["model_hard"].get(credits.denomination, False)
                )
                available_q = 0
                if pool is not None and pool.status in DRAWABLE_POOL_STATUSES:
                    available_q = self._available(pool, links.get((pool.id, sub.id)), grants, item)
                if hard and available_q < needed_q:
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
                take_q = min(needed_q, available_q)
                if take_q > 0:
                    first = self._draw(pool, links.get((pool.id, sub.id)), grants, item, take_q)
                    draws.append((pool, take_q, first))
                    deducted_q = take_q
                    covered = covered_units(Decimal(take_q) / QTY_SCALE, credits.weight, units)
            overage_units = Decimal(0) if exceeded else units - covered
            overage_q = int(overage_units * QTY_SCALE)
            event_id = new_id()
            revenue_micros = None
            prior_overage = Decimal(counter[2] + counter[4]) / QTY_SCALE if counter else Decimal(0)
            if counter is not None:
                counter[3] += billable_q
                counter[4] += overage_q
            if exceeded:
                revenue_micros = 0 if item.revenue_micros is not None or pricing else None
            elif item.revenue_micros is not None:
                revenue_micros = item.revenue_micros
            elif pricing is not None:
                if isinstance(pricing, UsagePricing) and pricing.price_per_unit == 0:
                    revenue_micros = 0
                else:
                    revenue_micros = to_micros(
                        event_revenue(pricing, overage_units, prior_overage, rule.currency)
                    )
            context: dict[str, Any] = dict(item.context) if item.context else {}
            cost = resolve_cost(
                at=item.occurred_at,
                usage_units=units,
                cost_amount=item.cost_amount,
                cost_input=item.cost_input,
                rule_cost_model=value.cost if value is not None else None,
                default_config=default_cost,
            )
            cost_micros = None
            if cost.amount is not None:
                if cost.cost_unit in (None, CostUnit.CURRENCY):
                    cost_micros = to_micros(cost.amount)
                else:
                    context["sys_cost_amount"] = cost.amount
                    context["sys_cost_unit"] = cost.cost_unit.value
                if cost.model_resolved:
                    context["sys_model_resolved_from"] = cost.model_resolved
            if rule is not None:
                context["sys_applied_rule_id"] = rule.id
                if pricing is not None:
                    context["sys_pricing_model"] = pricing.model
            if exceeded:
                context["usage_limit_exceeded"] = True
                context["usage_limit_max"] = limit
            if deducted_q:
                context["credit_deducted"] = Decimal(deducted_q) / QTY_SCALE
                context["usage_covered_by_credits"] = covered
            if item.flow_id:
                context["flowId"] = item.flow_id
            if item.event_type == CLIENT_TRACKED:
                context["isEntitled"] = rule is not None
            ci = item.cost_input
            events.append(
                {
                    "id": event_id,
                    "env": env,
                    "key": item.key,
                    "type": item.event_type,
                    "name": item.event_name,
                    "cust": cid,
                    "feat": fid,
                    "sub": sub.id if sub is not None else None,
                    "at": tx.dt(item.occurred_at),
                    "usage": item.usage_q,
                    "billable": billable_q,
                    "overage": overage_q,
                    "credits": deducted_q,
                    "exceeded": tx.b(exceeded),
                    "cost": cost_micros,
                    "revenue": revenue_micros,
                    "source": cost.source,
                    "model": ci.model if ci else None,
                    "provider": cost.provider or (ci.model_provider if ci else None),
                    "tin": _tokens(ci.input_tokens) if ci else None,
                    "tout": _tokens(ci.output_tokens) if ci else None,
                    "meta": _dumps(item.meta),
                    "context": _dumps(context),
                    "created": tx.dt(item.now),
                }
            )
            for pool, take_q, first_grant in draws:
                before = pool.balance_q - pool.taken_q + take_q
                ledger.append(
                    {
                        "id": new_id(),
                        "env": env,
                        "pool": pool.id,
                        "grant": first_grant,
                        "amount": -take_q,
                        "before": before,
                        "after": before - take_q,
                        "event": event_id,
                        "sub": sub.id,
                        "desc": f"usage event {item.key}"[:500],
                        "created": tx.dt(item.now),
                    }
                )
            self.out[i] = Outcome(
                ACCEPTED,
                event_id=event_id,
                limit_exceeded=exceeded,
                credits_deducted=Decimal(deducted_q) / QTY_SCALE,
                overage_units=overage_units,
                customer_auto_created=created_by.get(_ref_of(item)) == i,
                customer_id=cid,
                subscription_id=sub.id if sub is not None else None,
                limit=limit,
            )
        if not events:
            return
        tx.many(
            "INSERT INTO events (id, environment_id, idempotency_key, event_type, event_name, "
            "customer_id, feature_id, subscription_id, occurred_at, usage_q, billable_q, "
            "overage_q, credits_deducted_q, usage_limit_exceeded, cost_micros, revenue_micros, "
            "cost_source, model, model_provider, input_tokens, output_tokens, meta, context, "
            "created_at) VALUES (:id, :env, :key, :type, :name, :cust, :feat, :sub, :at, "
            ":usage, :billable, :overage, :credits, :exceeded, :cost, :revenue, :source, "
            ":model, :provider, :tin, :tout, :meta, :context, :created)",
            events,
        )
        now = tx.dt(max(items[i].now for i in self.idxs))
        touched = {k: c for k, c in counters.items() if c[3] or c[4]}
        if touched:
            tx.many(
                "UPDATE usage_counters SET used_q = used_q + :u, overage_q = overage_q + :o, "
                "modified_at = :now WHERE id = :id",
                [{"u": c[3], "o": c[4], "now": now, "id": c[0]} for c in touched.values()],
            )
            p: dict[str, Any] = {}
            back = dict(
                (r[0], (int(r[1]), int(r[2])))
                for r in tx.rows(
                    "SELECT id, used_q, overage_q FROM usage_counters WHERE id IN "
                    f"({in_list('c', [c[0] for c in touched.values()], p)})",
                    p,
                )
            )
            for key, c in touched.items():
                expect = (c[1] + c[3], c[2] + c[4])
                if back.get(c[0]) != expect:
                    raise GuardFailed(f"usage counter {c[0]} moved under the batch")
                self.effects.counters.setdefault(self.env, {})[key] = expect
        for key, c in counters.items():
            if key not in touched:
                self.effects.counters.setdefault(self.env, {})[key] = (c[1], c[2])
        if ledger:
            self._write_credits(pools, links, grants, ledger, now)

    def _available(self, pool: _Pool, link: _Link | None, grants, item: EventIn) -> int:
        drawable = sum(
            g.remaining_q - g.taken_q
            for g in grants.get(pool.id, ())
            if g.expires_at is None or g.expires_at > item.now
        )
        room = min(pool.balance_q - pool.taken_q, drawable)
        if link is not None and link.draw_limit_q is not None:
            room = min(room, link.draw_limit_q - link.drawn_q - link.taken_q)
        return max(room, 0)

    def _draw(
        self, pool: _Pool, link: _Link | None, grants, item: EventIn, take_q: int
    ) -> str | None:
        """Take ``take_q`` from the pool, FIFO over its live grants; returns the first
        grant drawn (recorded on the ledger row)."""
        pool.taken_q += take_q
        if link is not None:
            link.taken_q += take_q
        left = take_q
        first = None
        for g in grants.get(pool.id, ()):
            if left <= 0:
                break
            if g.expires_at is not None and g.expires_at <= item.now:
                continue
            room = g.remaining_q - g.taken_q
            if room <= 0:
                continue
            t = min(room, left)
            g.taken_q += t
            left -= t
            if first is None:
                first = g.id
        if left:
            raise GuardFailed(f"credit grants of pool {pool.id} cannot cover a computed draw")
        return first

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
        tx.many(
            "INSERT INTO credit_transactions (id, environment_id, pool_id, grant_id, type, "
            "amount_q, balance_before_q, balance_after_q, event_id, subscription_id, "
            "description, created_at) VALUES (:id, :env, :pool, :grant, 'DEDUCTION', :amount, "
            ":before, :after, :event, :sub, :desc, :created)",
            ledger,
        )
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


def _limit_q(limit: Decimal) -> int:
    """``used_q >= _limit_q(limit)`` exactly when ``used >= limit``."""
    return int((limit * QTY_SCALE).to_integral_value(rounding=ROUND_CEILING))


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
