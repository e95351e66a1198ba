"""Synthetic raw behaviour logs with a planted, exactly known SEQUENTIAL purchase signal.

``generate(cfg, landing_root)`` writes JSON lines under ``<landing_root>/raw/<source>/dt=DAY/``,
the per-user ground truth for the label window, and a manifest. Nothing is held in memory
beyond one user's events: users are simulated one by one with their own random streams
(``numpy.random.default_rng([seed, stream, user_index])``) and streamed to per-day files.

The world
---------
* Catalogue: ``items`` items in ``categories`` categories (category sizes and item popularity
  are Zipf-like), each category with a lognormal price level and a few brands; about 20% of
  categories have no ``category_path`` and about 15% of items no ``brand`` (JSON null).
* Users: 1-6 interest categories, a heavy-tailed (lognormal) session rate, propensities to
  cart, fav, remove and *revisit* carted items, and a lifetime: some join late, some churn.
  Most sessions cluster in a few shopping missions (episodes of a day or two), the rest are
  spread over the lifetime, so when a user was last busy varies a lot between users.
* Sessions start at diurnal hours (UTC, peak in the evening); a session's first event comes at
  least 31 minutes after the previous session's last; inside a session events are 0.5 s to
  10 min apart. Views of the session's focus category dominate; a viewed item may be carted or
  faved; an open cart may be removed or revisited (viewed again; carts older than 10 days are
  abandoned and no longer revisited). Sessions may cross midnight and are then split across
  the two days' files.

The purchase rule (the planted signal)
--------------------------------------
Time is cut into *purchase periods* of ``W = label_window_days`` days that end at the end of the
data: periods start at ``end - k * W`` days for k = 1, 2, ... while that is after the start of
the data, and at the start of the data (so the first period may be shorter). With the default
28 days and W = 7 they start on days 0, 7, 14 and 21. The last period is the label window.

At the start ``T`` of every period (label window included) the user's *intent* is computed from
the events with ``ts < T`` only (constants in ``PurchaseRule``; times in days):

* An item is an *open cart* if its latest ``cart`` is later than its latest ``remove_from_cart``
  and its latest ``purchase``; ``c`` is the time of that latest cart.
* An *item revisit* is a ``view`` of the same item at ``ts >= c + revisit_gap`` (1 hour); a
  *category revisit* is a ``view`` of any item of the same category at ``ts >= c + revisit_gap``.
* Each open cart weighs the largest of (terms that do not exist are left out):
  ``item_weight * exp(-(T - v) / decay_days)`` with ``v`` the latest item revisit,
  ``category_weight * exp(-(T - g) / decay_days)`` with ``g`` the latest category revisit,
  ``cart_only_weight * exp(-(T - c) / decay_days)``.
* ``intent = sum of the weights of all open carts``;
  ``p = floor + (cap - floor) * (1 - exp(-intent / intent_scale))``.

With probability ``p`` (one uniform draw) the user is a *buyer* for that period; a buyer makes
1 + Poisson(checkout rate) checkouts inside the period (each buys the open cart of largest weight
and, with probability 1/2 each, other open carts of weight >= 0.05; a buyer without open carts
views, carts and buys an item of a top interest category), non-buyers make no purchase at all.
Checkouts end an existing session of the period or, when the user has none early enough, a
short session of their own; they finish at least 3 hours before the period ends (the manifest
counts any checkout that could not, ``displaced_checkouts``; 0 in every run we made). Hence
``P(>= 1 purchase in the window | everything before the window) = p(intent at window start)``
exactly; that is ``p_true`` in ``ground_truth.csv``, and ``label`` is whether the written data
has a purchase by the user in the window; ``driver_category`` is the category of the open cart
of largest weight at the window start (empty when no cart weighs anything): the events an
explanation of that user's score should name. With the default weights (category and cart-only
terms 0) carting without a later revisit of the item counts nothing, a revisit long ago has
faded, and counts of event types, favs and plain views do not enter ``p``.
The same rule produces every purchase in the history, so it holds at every period start; at a
cutoff between period starts it holds only approximately (the decision was taken earlier).
What a model should credit for a purchase: the ``cart`` of the item and, above all, later
``view`` events of that same item in the last few days (decay_days 3).

Output contract
---------------
* ``part-<worker:02d>-<k:02d>.jsonl``: worker ``w`` of ``cfg.workers`` owns the contiguous user
  range ``[n*w/workers, n*(w+1)/workers)``; user ``i`` goes to ``k = i % files_per_day``. A
  file holds its users in index order, each user's lines in time order (files are grouped by
  user, not sorted by time). So for a fixed config every file is byte-identical run to run,
  and the *multiset of lines per day* does not depend on ``workers`` (only how they are split
  over files does). A run first deletes ``part-*.jsonl`` files of the days it writes.
* Dirty records (``dirty_rate`` > 0, their own random stream, so the good events are the same
  with or without them): right after a good line, with probability ``dirty_rate``, one extra
  line derived from it, chosen uniformly among the eight ``DIRTY_KINDS`` (exactly one defect)
  and ``duplicate`` (an exact copy). ``missing_field`` drops or nulls one required field.
  Counts: ``dirty_by_kind`` per kind; ``dirty_written`` counts every dirty line once too, but
  with ``missing_field`` split per field (``missing_user_id``, ``missing_ts`` ...: the names of
  ingest's quarantine reasons), so its values sum to the dirty lines; duplicates apart.
* ``max_events`` > 0: users are added in index order until the *planned* browsing steps of the
  users so far reach ``max_events`` (the user that crosses it is included). The plan is the
  first draws of each user's stream, so counting it is cheap and worker-independent, and the
  users kept write exactly what they would write without a cap; checkouts add a few percent
  and events after the last day are dropped, so the total lands within a few percent above.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from seqlake.config import GeneratorConfig
from seqlake.constants import EVENT_TYPES, REQUIRED_FIELDS

VIEW, CART, REMOVE_FROM_CART, FAV, PURCHASE = range(5)

DIRTY_KINDS = (
    "malformed_json",
    "missing_field",
    "bad_timestamp",
    "future_timestamp",
    "negative_price",
    "non_numeric_price",
    "unknown_event_type",
    "oversized_field",
)
DUPLICATE = "duplicate"
# Fields a ``missing_field`` record drops (or sets to null); counted as ``missing_<field>``.
MISSING_FIELDS = REQUIRED_FIELDS

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000

# Random streams: one per purpose, so adding dirty records or capping users never moves the
# good events of the users that are generated.
CATALOGUE_STREAM, USER_STREAM, DIRTY_STREAM = range(3)

# Share of sessions starting in each UTC hour (night trough, evening peak).
DIURNAL_WEIGHTS = (
    0.9, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.4, 2.0, 2.4, 2.6, 2.7,
    2.8, 2.7, 2.6, 2.6, 2.8, 3.1, 3.5, 3.9, 4.0, 3.6, 2.6, 1.6,
)

CATEGORY_PATHS = (
    "electronics.audio.headphones", "electronics.audio.acoustic", "electronics.video.tv",
    "electronics.smartphone", "electronics.tablet", "electronics.camera.photo",
    "electronics.clocks", "electronics.telephone", "appliances.kitchen.refrigerators",
    "appliances.kitchen.washer", "appliances.kitchen.blender", "appliances.kitchen.kettle",
    "appliances.environment.vacuum", "appliances.environment.air_conditioner",
    "appliances.environment.water_heater", "appliances.personal.hair_cutter",
    "appliances.iron", "appliances.sewing_machine", "computers.notebook", "computers.desktop",
    "computers.peripherals.mouse", "computers.peripherals.keyboard", "computers.peripherals.printer",
    "computers.components.videocards", "computers.components.memory", "computers.network.router",
    "apparel.shoes", "apparel.shoes.sneakers", "apparel.jeans", "apparel.shirt", "apparel.jacket",
    "apparel.costume", "apparel.underwear", "furniture.living_room.sofa",
    "furniture.living_room.chair", "furniture.bedroom.bed", "furniture.kitchen.table",
    "furniture.bathroom.bath", "furniture.office.desk", "kids.toys", "kids.carriage", "kids.dolls",
    "kids.skates", "sport.bicycle", "sport.tennis", "sport.ski", "sport.trainer", "sport.fitness",
    "accessories.bag", "accessories.wallet", "accessories.umbrella", "construction.tools.drill",
    "construction.tools.saw", "construction.components.faucet", "construction.lighting",
    "auto.accessories.player", "auto.accessories.videoregister", "auto.tires",
    "country_yard.lawn_mower", "country_yard.watering", "medicine.tools.tonometer",
    "stationery.cartrige", "beauty.fragrance", "beauty.skin_care",
)
BRAND_SYLLABLES = (
    "so", "ny", "ka", "lo", "ve", "ri", "ta", "mi", "zo", "ra", "ne", "xo", "lu", "be", "co",
    "da", "fi", "gu", "ha", "jo", "ki", "le", "mo", "nu", "pa", "qui", "sa", "te", "vo", "wi",
)

# Behaviour parameters (not part of the purchase rule; they shape the browsing only).
SESSIONS_PER_DAY_LOG_MEAN = math.log(0.32)
SESSIONS_PER_DAY_LOG_SD = 0.9
SESSIONS_PER_DAY_MAX = 6.0
LATE_JOIN_SHARE = 0.25
EARLY_CHURN_SHARE = 0.25
EPISODE_EVERY_DAYS = 10.0
EPISODE_SHARE = 0.8
EPISODE_SPREAD_DAYS = 1.0
CART_PROPENSITY_BETA = (2.5, 25.0)  # per step after the first
FAV_PROPENSITY_BETA = (2.0, 90.0)
REMOVE_PROPENSITY_BETA = (2.0, 20.0)  # carts are removed often enough that a cart alone says little
REVISIT_PROPENSITY_BETA = (0.6, 1.1)
SESSION_STEPS_LOG_MEAN = math.log(3.2)
SESSION_STEPS_LOG_SD = 0.85
SESSION_STEPS_MAX = 120
STEP_GAP_LOG_MEAN = math.log(25_000.0)  # median 25 s between events
STEP_GAP_LOG_SD = 1.0
STEP_GAP_MIN_MS = 500
STEP_GAP_MAX_MS = 10 * MINUTE_MS
SESSION_SEPARATION_MS = 31 * MINUTE_MS  # a 30-minute-gap sessionizer finds our session starts
REVISIT_SHARE = 0.45  # times the user's revisit propensity: chance a view revisits an open cart
FOCUS_STAY_SHARE = 0.75  # a view stays in the session's focus category
EXPLORE_SHARE = 0.1  # a focus switch goes to a category outside the interests
REVISIT_MAX_AGE_MS = 10 * DAY_MS  # older carts are abandoned: never revisited again
HOST_START_MARGIN_MS = 12 * HOUR_MS  # a checkout session starts this long before period end
CHECKOUT_DEADLINE_MS = 3 * HOUR_MS  # a checkout finishes at least this long before period end
CHECKOUT_EXTRA_RATE = 1.2  # mean number of checkouts after the first, per buyer period
EXTRA_PURCHASE_MIN_WEIGHT = 0.05
USER_ID_DIGITS = 7
ITEM_ID_DIGITS = 7
CATEGORY_ID_DIGITS = 5


@dataclass(frozen=True)
class PurchaseRule:
    """The planted purchase rule; see the module docstring. Times are in days."""

    item_weight: float = 1.0
    # Only item revisits count by default: category revisits and bare carts are what aggregate
    # (RFM-style) features see too, so with weight on them order mattered too little for a
    # sequence model to beat the baselines clearly (oracle - logistic regression was 0.02 AUC).
    category_weight: float = 0.0
    cart_only_weight: float = 0.0
    decay_days: float = 3.0
    revisit_gap_hours: float = 1.0
    floor: float = 0.02
    cap: float = 0.6
    intent_scale: float = 0.4

    def probability(self, intent: float) -> float:
        """Probability of at least one purchase in a period, given intent at its start."""
        return self.floor + (self.cap - self.floor) * (1.0 - math.exp(-intent / self.intent_scale))


PURCHASE_RULE = PurchaseRule()


@dataclass(frozen=True)
class GenerateSummary:
    """What ``generate`` wrote; the manifest holds the same numbers plus the config and rule."""

    events_written: int  # good events
    # Dirty lines (duplicates apart) by kind, missing_field split into missing_<field>: the
    # values sum to all dirty lines.
    dirty_written: dict[str, int]
    dirty_by_kind: dict[str, int]  # the same lines by DIRTY_KINDS (missing_field as one kind)
    duplicates_written: int
    users: int
    days: int
    first_date: dt.date
    last_date: dt.date
    label_window_start: dt.date
    label_window_end: dt.date  # inclusive
    base_rate: float
    oracle_auc: float
    counts_baseline_auc: float  # in-sample logistic regression on pre-window event-type counts
    displaced_checkouts: int  # checkouts that missed their period (0 keeps p_true exact)
    event_type_counts: dict[str, int]
    events_per_day: dict[str, int]
    elapsed_seconds: float
    events_per_second: float
    paths: dict[str, str]  # output (raw folder), truth (csv), manifest (json)


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Catalogue:
    """Items with pre-rendered JSON fragments and per-category popularity tables."""

    item_fragments: list[str]  # '"item_id":..,"category_id":..,"category_path":..,"brand":..,"price":..'
    item_parts: list[tuple[str, str, str, str, str]]  # the five rendered values, for dirty lines
    item_category: list[int]
    category_items: list[list[int]]  # by category; item popularity tables below index into these
    category_item_tables: list[list[float]]  # selection tables (see ``selection_table``)
    category_choices: list[int]  # the categories that have items
    category_table: list[float]  # picks from category_choices by popularity
    interest_table: list[float]  # same, flattened (power 0.7): picks user interests


def selection_table(weights) -> list[float]:
    """Cumulative shares for ``bisect_right(table, uniform)`` -> index. The last entry is 2.0,
    so a uniform in [0, 1) always lands on an entry, whatever the rounding of the sum."""
    cumulative = list(itertools.accumulate(float(w) for w in weights))
    total = cumulative[-1]
    table = [value / total for value in cumulative]
    table[-1] = 2.0
    return table


def build_catalogue(cfg: GeneratorConfig) -> Catalogue:
    rng = np.random.default_rng([cfg.seed, CATALOGUE_STREAM, 0])
    n_items, n_categories, n_brands = cfg.items, cfg.categories, cfg.brands

    brand_names = []
    seen: set[str] = set()
    for index in range(n_brands):
        syllables = rng.choice(len(BRAND_SYLLABLES), size=int(rng.integers(2, 4)))
        name = "".join(BRAND_SYLLABLES[s] for s in syllables)
        if name in seen:
            name = f"{name}{index}"
        seen.add(name)
        brand_names.append(name)

    path_choice = rng.integers(0, len(CATEGORY_PATHS), size=n_categories)
    path_missing = rng.random(n_categories) < 0.2
    category_paths = [None if path_missing[c] else CATEGORY_PATHS[path_choice[c]] for c in range(n_categories)]
    price_level = np.clip(np.exp(rng.normal(math.log(35.0), 1.1, size=n_categories)), 1.0, 3000.0)
    # Each category carries a handful of brands, the first ones more common.
    brands_per_category = [rng.choice(n_brands, size=min(n_brands, 8), replace=False) for _ in range(n_categories)]

    # Category sizes are Zipf-like; the first min(items, categories) items seed one per category.
    size_weights = 1.0 / np.arange(1, n_categories + 1) ** 0.9
    size_weights = size_weights[rng.permutation(n_categories)]
    item_category = np.empty(n_items, dtype=np.int64)
    seeded = min(n_items, n_categories)
    item_category[:seeded] = rng.permutation(n_categories)[:seeded]
    item_category[seeded:] = rng.choice(n_categories, size=n_items - seeded, p=size_weights / size_weights.sum())
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]

    brand_rank = np.minimum(rng.geometric(0.35, size=n_items) - 1, 7)
    brand_missing = rng.random(n_items) < 0.15
    prices = np.maximum(np.round(price_level[item_category] * np.exp(rng.normal(0.0, 0.45, size=n_items)), 2), 0.49)

    fragments: list[str] = []
    parts: list[tuple[str, str, str, str, str]] = []
    for item in range(n_items):
        category = int(item_category[item])
        path = category_paths[category]
        category_brands = brands_per_category[category]
        brand = None if brand_missing[item] else brand_names[int(category_brands[brand_rank[item] % len(category_brands)])]
        values = (
            f'"i{item:0{ITEM_ID_DIGITS}d}"',
            f'"{category_id_text(category)}"',
            json.dumps(path),
            json.dumps(brand),
            f"{prices[item]:.2f}",
        )
        parts.append(values)
        fragments.append(
            f'"item_id":{values[0]},"category_id":{values[1]},"category_path":{values[2]},'
            f'"brand":{values[3]},"price":{values[4]}'
        )

    category_items: list[list[int]] = [[] for _ in range(n_categories)]
    for item in range(n_items):
        category_items[int(item_category[item])].append(item)
    category_choices = [category for category, members in enumerate(category_items) if members]
    category_popularity = np.array([popularity[category_items[c]].sum() for c in category_choices])
    return Catalogue(
        item_fragments=fragments,
        item_parts=parts,
        item_category=item_category.tolist(),
        category_items=category_items,
        category_item_tables=[selection_table(popularity[m]) if m else [] for m in category_items],
        category_choices=category_choices,
        category_table=selection_table(category_popularity),
        interest_table=selection_table(category_popularity ** 0.7),
    )


# --------------------------------------------------------------------------- time line


@dataclass(frozen=True)
class Timeline:
    start_ms: int
    end_ms: int
    days: int
    period_starts: tuple[int, ...]  # ascending; the last one is the label window start
    hour_table: list[float]  # selection table of session start hours (diurnal)

    @property
    def window_start_ms(self) -> int:
        return self.period_starts[-1]

    def period_end(self, period_index: int) -> int:
        following = period_index + 1
        return self.period_starts[following] if following < len(self.period_starts) else self.end_ms


def build_timeline(cfg: GeneratorConfig) -> Timeline:
    start = dt.datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=dt.timezone.utc)
    start_ms = int(start.timestamp()) * 1000
    end_ms = start_ms + cfg.days * DAY_MS
    starts = []
    boundary = end_ms - cfg.label_window_days * DAY_MS
    while boundary > start_ms:
        starts.append(boundary)
        boundary -= cfg.label_window_days * DAY_MS
    weights = np.asarray(DIURNAL_WEIGHTS, dtype=float)
    return Timeline(
        start_ms=start_ms,
        end_ms=end_ms,
        days=cfg.days,
        period_starts=tuple([start_ms] + starts[::-1]),
        hour_table=selection_table(weights),
    )


def date_of_ms(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).date()


# --------------------------------------------------------------------------- user plan


@dataclass(frozen=True)
class UserPlan:
    session_starts: list[int]  # planned, ascending
    session_steps: list[int]
    interests: list[int]
    interest_table: list[float]  # selection table over interests
    cart_propensity: float
    fav_propensity: float
    remove_propensity: float
    revisit_propensity: float


def user_random(seed: int, user_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, USER_STREAM, user_index])


def plan_user(rng: np.random.Generator, timeline: Timeline, catalogue: Catalogue | None) -> UserPlan | int:
    """The user's traits and planned sessions, the first draws of the user's stream. With
    ``catalogue=None`` only the planned step count: the draws up to there are the same, which
    makes the ``max_events`` rule cheap. (Plain Python over short lists: numpy's per-call cost
    would dominate for a user with a dozen sessions.)"""
    rate = min(math.exp(rng.normal(SESSIONS_PER_DAY_LOG_MEAN, SESSIONS_PER_DAY_LOG_SD)), SESSIONS_PER_DAY_MAX)
    joins, join_day, churns, churn_day = rng.random(4).tolist()
    first_day, last_day = 0.0, float(timeline.days)
    if joins < LATE_JOIN_SHARE:
        first_day = join_day * timeline.days * 0.8
    if churns < EARLY_CHURN_SHARE:
        last_day = first_day + 1.0 + churn_day * (timeline.days - first_day - 1.0)
    span = last_day - first_day
    n_sessions = 1 + int(rng.poisson(rate * span))
    steps = [min(1 + int(x), SESSION_STEPS_MAX)
             for x in rng.lognormal(SESSION_STEPS_LOG_MEAN, SESSION_STEPS_LOG_SD, n_sessions).tolist()]
    if catalogue is None:
        return sum(steps)

    # Shopping missions: most sessions cluster around a few episode days, the rest are spread
    # over the user's lifetime; hours follow the diurnal curve.
    n_episodes = 1 + int(rng.poisson(span / EPISODE_EVERY_DAYS))
    centres = [first_day + u * span for u in rng.random(n_episodes).tolist()]
    episodic, which, background, hour_draw, minute_draw = rng.random((5, n_sessions)).tolist()
    spread = rng.standard_normal(n_sessions).tolist()
    lowest, highest = int(first_day), max(int(math.ceil(last_day)), int(first_day) + 1) - 1
    starts = []
    for j in range(n_sessions):
        if episodic[j] < EPISODE_SHARE:
            day_float = centres[int(which[j] * n_episodes)] + spread[j] * EPISODE_SPREAD_DAYS
        else:
            day_float = first_day + background[j] * span
        day = min(max(math.floor(day_float), lowest), highest)
        hour = bisect.bisect_right(timeline.hour_table, hour_draw[j])
        starts.append(timeline.start_ms + day * DAY_MS + int((hour + minute_draw[j]) * HOUR_MS))
    order = sorted(range(n_sessions), key=starts.__getitem__)

    # Interests: distinct categories drawn by popularity (spare draws replace repeats).
    wanted = 1 + min(int(rng.poisson(1.3)), 5)
    drawn = [bisect.bisect_right(catalogue.interest_table, u) for u in rng.random(4 * wanted).tolist()]
    interests = [catalogue.category_choices[c] for c in dict.fromkeys(drawn)][:wanted]
    interest_weights = rng.standard_exponential(len(interests)).tolist()  # normalised: Dirichlet(1, ..., 1)
    return UserPlan(
        session_starts=[starts[j] for j in order],
        session_steps=[steps[j] for j in order],
        interests=interests,
        interest_table=selection_table(interest_weights),
        cart_propensity=float(rng.beta(*CART_PROPENSITY_BETA)),
        fav_propensity=float(rng.beta(*FAV_PROPENSITY_BETA)),
        remove_propensity=float(rng.beta(*REMOVE_PROPENSITY_BETA)),
        revisit_propensity=float(rng.beta(*REVISIT_PROPENSITY_BETA)),
    )


def planned_steps(seed: int, user_index: int, timeline: Timeline) -> int:
    return plan_user(user_random(seed, user_index), timeline, None)


# --------------------------------------------------------------------------- simulation


def uniform_stream(rng: np.random.Generator, first_block: int) -> Iterator[float]:
    """Uniforms drawn in blocks: far cheaper than one numpy call per number."""
    size = first_block
    while True:
        yield from rng.random(size).tolist()
        size = 256


def gap_stream(rng: np.random.Generator, first_block: int) -> Iterator[int]:
    """Milliseconds between consecutive events of a session (lognormal, clipped)."""
    size = first_block
    while True:
        raw = rng.lognormal(STEP_GAP_LOG_MEAN, STEP_GAP_LOG_SD, size)
        yield from np.clip(raw, STEP_GAP_MIN_MS, STEP_GAP_MAX_MS).astype(np.int64).tolist()
        size = 128


@dataclass
class SimulatedUser:
    timestamps: list[int] = field(default_factory=list)
    event_types: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    p_true: float = 0.0
    # Category of the open cart weighing most in p_true (-1: none): what explanations should name.
    driver_category: int = -1
    label: int = 0
    displaced_checkouts: int = 0  # checkouts that could not finish inside their period


class UserSimulation:
    """One user: browsing sessions, the intent state and the period purchase decisions.

    Events are emitted in time order; a period is decided the moment the clock reaches its
    start, from the state built by the events before it (``emit`` guarantees the order)."""

    def __init__(self, seed: int, user_index: int, catalogue: Catalogue, timeline: Timeline, rule: PurchaseRule):
        self.catalogue = catalogue
        self.timeline = timeline
        self.rule = rule
        self.rng = user_random(seed, user_index)
        self.plan = plan_user(self.rng, timeline, catalogue)
        total_steps = sum(self.plan.session_steps)
        self.uniform = uniform_stream(self.rng, 4 * total_steps + 32).__next__
        self.gap = gap_stream(self.rng, total_steps + 16).__next__
        self.output = SimulatedUser()
        # Intent state: open carts (item -> latest cart time), latest view of an open-cart item
        # since its cart, latest view per category.
        self.open_carts: dict[int, int] = {}
        self.item_view: dict[int, int] = {}
        self.category_view: dict[int, int] = {}
        self.next_period = 0
        self.next_boundary = timeline.period_starts[0]
        # Entries: [planned start, steps, checkouts hosted, end of the period they belong to].
        self.schedule: list[list[int]] = [[start, steps, 0, 0] for start, steps in
                                          zip(self.plan.session_starts, self.plan.session_steps)]
        self.session_cursor = 0

    # ---- state
    def emit(self, ts: int, event_type: int, item: int, session: int) -> None:
        if ts >= self.next_boundary:
            self.process_periods_until(ts)
        out = self.output
        out.timestamps.append(ts)
        out.event_types.append(event_type)
        out.items.append(item)
        out.sessions.append(session)
        if event_type == VIEW:
            self.category_view[self.catalogue.item_category[item]] = ts
            if item in self.open_carts:
                self.item_view[item] = ts
        elif event_type == CART:
            self.open_carts[item] = ts
            self.item_view.pop(item, None)
        elif event_type == REMOVE_FROM_CART or event_type == PURCHASE:
            self.open_carts.pop(item, None)
            self.item_view.pop(item, None)

    def cart_weights(self, now: int) -> dict[int, float]:
        """Weight of each open cart at ``now`` under the purchase rule (events before now)."""
        rule = self.rule
        decay_ms = rule.decay_days * DAY_MS
        gap_ms = rule.revisit_gap_hours * HOUR_MS
        weights = {}
        for item, carted in self.open_carts.items():
            weight = rule.cart_only_weight * math.exp(-(now - carted) / decay_ms)
            viewed = self.item_view.get(item)
            if viewed is not None and viewed >= carted + gap_ms:
                weight = max(weight, rule.item_weight * math.exp(-(now - viewed) / decay_ms))
            category_viewed = self.category_view.get(self.catalogue.item_category[item])
            if category_viewed is not None and category_viewed >= carted + gap_ms:
                weight = max(weight, rule.category_weight * math.exp(-(now - category_viewed) / decay_ms))
            weights[item] = weight
        return weights

    # ---- purchase periods
    def process_periods_until(self, now: int) -> None:
        starts = self.timeline.period_starts
        while self.next_period < len(starts) and starts[self.next_period] <= now:
            self.start_period(self.next_period)
            self.next_period += 1
        self.next_boundary = starts[self.next_period] if self.next_period < len(starts) else math.inf

    def start_period(self, period_index: int) -> None:
        """Decide whether the user buys in this period and, if so, where the checkouts go."""
        period_start = self.timeline.period_starts[period_index]
        period_end = self.timeline.period_end(period_index)
        weights = self.cart_weights(period_start)
        probability = self.rule.probability(sum(weights.values()))
        if period_index == len(self.timeline.period_starts) - 1:
            self.output.p_true = probability
            heaviest = max(weights.items(), key=lambda kv: (kv[1], -kv[0]), default=(None, 0.0))
            if heaviest[1] > 0:
                self.output.driver_category = self.catalogue.item_category[heaviest[0]]
        if self.uniform() >= probability:
            return
        checkouts = 1 + int(self.rng.poisson(CHECKOUT_EXTRA_RATE))
        latest_start = period_end - min(HOST_START_MARGIN_MS, (period_end - period_start) // 2)
        eligible = [
            index for index in range(self.session_cursor, len(self.schedule))
            if period_start <= self.schedule[index][0] < latest_start
        ]
        if eligible:
            for _ in range(checkouts):
                host = self.schedule[eligible[int(self.uniform() * len(eligible))]]
                host[2] += 1
                host[3] = period_end
            return
        # No session early enough in the period: a short session of its own, at a diurnal hour.
        span_days = max(1, (latest_start - period_start) // DAY_MS)
        hour = bisect.bisect_right(self.timeline.hour_table, self.uniform())
        planned = period_start + int(self.uniform() * span_days) * DAY_MS + int((hour + self.uniform()) * HOUR_MS)
        planned = min(planned, latest_start - 1)
        steps = 1 + int(self.uniform() * 3)
        position = bisect.bisect_right([entry[0] for entry in self.schedule], planned, lo=self.session_cursor)
        self.schedule.insert(position, [planned, steps, checkouts, period_end])

    # ---- browsing
    def pick_item(self, category: int) -> int:
        table = self.catalogue.category_item_tables[category]
        return self.catalogue.category_items[category][bisect.bisect_right(table, self.uniform())]

    def pick_category(self) -> int:
        if self.uniform() < EXPLORE_SHARE:
            return self.catalogue.category_choices[bisect.bisect_right(self.catalogue.category_table, self.uniform())]
        return self.plan.interests[bisect.bisect_right(self.plan.interest_table, self.uniform())]

    def run_session(self, session_number: int, start: int, steps: int, checkouts: int, period_end: int) -> int:
        """Run one session from ``start`` (browsing, then any checkouts it hosts); returns the
        time of its last event, or ``start`` when it wrote none."""
        plan = self.plan
        uniform, gap, emit = self.uniform, self.gap, self.emit
        end_ms = self.timeline.end_ms
        deadline = period_end - CHECKOUT_DEADLINE_MS if checkouts else end_ms
        cart_threshold = plan.cart_propensity
        fav_threshold = cart_threshold + plan.fav_propensity
        remove_threshold = fav_threshold + plan.remove_propensity
        revisit = plan.revisit_propensity * REVISIT_SHARE
        open_carts = self.open_carts
        item_tables = self.catalogue.category_item_tables
        category_items = self.catalogue.category_items
        bisect_right = bisect.bisect_right
        focus = self.pick_category()
        now = start
        last_item = -1
        last_time = start
        for step in range(steps):
            if now >= deadline:  # stops browsing in time to check out (or at the end of data)
                break
            event_type = VIEW
            if step > 0:
                draw = uniform()
                if draw < cart_threshold:
                    if last_item not in open_carts:
                        event_type = CART
                elif draw < fav_threshold:
                    event_type = FAV
                elif draw < remove_threshold and open_carts:
                    event_type = REMOVE_FROM_CART
            if event_type == VIEW:
                item = -1
                if open_carts and uniform() < revisit:
                    candidates = [i for i, carted in open_carts.items() if now - carted < REVISIT_MAX_AGE_MS]
                    if candidates:
                        item = candidates[int(uniform() * len(candidates))]
                if item < 0:
                    if step > 0 and uniform() >= FOCUS_STAY_SHARE:
                        focus = self.pick_category()
                    item = category_items[focus][bisect_right(item_tables[focus], uniform())]  # pick_item, inlined
                last_item = item
            elif event_type == REMOVE_FROM_CART:
                open_items = list(open_carts)
                item = open_items[int(uniform() * len(open_items))]
            else:
                item = last_item
            emit(now, event_type, item, session_number)
            last_time = now
            now += gap()
        for _ in range(checkouts):
            if now >= end_ms:
                self.output.displaced_checkouts += 1
                continue
            now = self.checkout(session_number, now)
            last_time = self.output.timestamps[-1]
            if last_time >= period_end:
                self.output.displaced_checkouts += 1
        return last_time

    def checkout(self, session_number: int, now: int) -> int:
        """View and buy the open cart of largest weight (and maybe others); returns the time
        for the next event."""
        weights = self.cart_weights(now)
        bought: list[int] = []
        if weights:
            ranked = sorted(weights, key=lambda item: (-weights[item], item))
            bought.append(ranked[0])
            bought.extend(item for item in ranked[1:]
                          if weights[item] >= EXTRA_PURCHASE_MIN_WEIGHT and self.uniform() < 0.5)
            for item in bought:
                self.emit(now, VIEW, item, session_number)
                now += self.gap()
        else:
            plan = self.plan
            shares = np.diff([0.0] + plan.interest_table[:-1] + [1.0])
            item = self.pick_item(plan.interests[int(np.argmax(shares))])
            self.emit(now, VIEW, item, session_number)
            now += self.gap()
            self.emit(now, CART, item, session_number)
            now += self.gap()
            bought.append(item)
        for item in bought:
            self.emit(now, PURCHASE, item, session_number)
            now += self.gap()
        return now

    def run(self) -> SimulatedUser:
        starts = self.timeline.period_starts
        previous_end = None
        session_number = 0
        while True:
            if self.session_cursor >= len(self.schedule):
                if self.next_period >= len(starts):
                    break
                # No sessions left, but a later period may still decide to buy.
                self.process_periods_until(starts[self.next_period])
                continue
            planned, steps, checkouts, period_end = self.schedule[self.session_cursor]
            earliest = planned if previous_end is None else max(planned, previous_end + SESSION_SEPARATION_MS)
            if earliest >= self.next_boundary:
                # Decide the next period before its first session, one period at a time: the
                # decision picks hosts among the sessions not started yet, or inserts one that
                # must run before the following period is decided.
                self.process_periods_until(self.next_boundary)
                continue
            self.session_cursor += 1
            start = earliest
            if previous_end is not None and planned < previous_end + SESSION_SEPARATION_MS:
                start = earliest + int(self.uniform() * 30 * MINUTE_MS)  # pushed back: no fixed gap
            if start >= self.timeline.end_ms:
                self.output.displaced_checkouts += checkouts
                continue
            previous_end = self.run_session(session_number, start, steps, checkouts, period_end)
            session_number += 1
        out = self.output
        window_start = self.timeline.window_start_ms
        out.label = int(any(
            event_type == PURCHASE and ts >= window_start
            for ts, event_type in zip(out.timestamps, out.event_types)
        ))
        return out


# --------------------------------------------------------------------------- rendering


def category_id_text(category: int) -> str:
    """A category's id as events carry it (``category_id``)."""
    return f"c{category:0{CATEGORY_ID_DIGITS}d}"


def user_id_text(user_index: int) -> str:
    return f"u{user_index:0{USER_ID_DIGITS}d}"


def format_timestamps(timestamps: list[int]) -> list[str]:
    """Epoch milliseconds -> 'YYYY-MM-DDTHH:MM:SS.mmmZ' (vectorised)."""
    if not timestamps:
        return []
    values = np.asarray(timestamps, dtype=np.int64).astype("datetime64[ms]")
    return [text + "Z" for text in np.datetime_as_string(values, unit="ms").tolist()]


def render_object(pairs: list[tuple[str, str]]) -> str:
    """A JSON object from (key, already rendered JSON value) pairs, compact, one line."""
    return "{" + ",".join(f'"{key}":{value}' for key, value in pairs) + "}"


def event_pairs(
    user: str, ts: str, event_type: str, item_parts: tuple[str, ...], session: str
) -> list[tuple[str, str]]:
    """The (key, rendered value) pairs of a good event, in output order."""
    item_id, category_id, category_path, brand, price = item_parts
    return [
        ("user_id", f'"{user}"'), ("ts", f'"{ts}"'), ("event_type", f'"{event_type}"'),
        ("item_id", item_id), ("category_id", category_id), ("category_path", category_path),
        ("brand", brand), ("price", price), ("session", f'"{session}"'),
    ]


@dataclass(frozen=True)
class DirtyRecord:
    kind: str  # one of DIRTY_KINDS or DUPLICATE
    line: str  # without the newline
    missing_field: str | None = None


def make_dirty_record(
    kind: str, good_line: str, pairs: list[tuple[str, str]], ts_ms: int, uniforms: np.ndarray
) -> DirtyRecord:
    """``good_line`` (a good event, rendered from ``pairs``) with exactly one defect of ``kind``.

    ``uniforms`` are four draws from the dirty stream that pick the variant."""
    first, second = float(uniforms[0]), float(uniforms[1])

    def replaced(key: str, value: str) -> str:
        return render_object([(k, value if k == key else v) for k, v in pairs])

    if kind == DUPLICATE:
        return DirtyRecord(kind, good_line)
    if kind == "malformed_json":
        # A proper prefix of a JSON object is never valid JSON; cutting past the middle keeps
        # the user id and timestamp, so two truncated lines never coincide.
        cut = len(good_line) // 2 + int(first * (len(good_line) - 1 - len(good_line) // 2))
        return DirtyRecord(kind, good_line[:cut])
    if kind == "missing_field":
        name = MISSING_FIELDS[int(first * len(MISSING_FIELDS))]
        if second < 0.5:
            line = render_object([(k, v) for k, v in pairs if k != name])
        else:
            line = replaced(name, "null")
        return DirtyRecord(kind, line, missing_field=name)
    if kind == "bad_timestamp":
        day = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc)
        variants = ("not-a-time", f"{day.year}-13-45T99:00:00Z", f"{day.date().isoformat()}T25:61:61.000Z")
        return DirtyRecord(kind, replaced("ts", f'"{variants[int(first * len(variants))]}"'))
    if kind == "future_timestamp":
        years = 3 + int(first * 3)
        future = format_timestamps([ts_ms + years * 365 * DAY_MS])[0]
        return DirtyRecord(kind, replaced("ts", f'"{future}"'))
    if kind == "negative_price":
        return DirtyRecord(kind, replaced("price", "-" + dict(pairs)["price"]))
    if kind == "non_numeric_price":
        variants = ("abc", "twelve", "price?")
        return DirtyRecord(kind, replaced("price", f'"{variants[int(first * len(variants))]}"'))
    if kind == "unknown_event_type":
        variants = ("teleport", "hover", "zoom")
        return DirtyRecord(kind, replaced("event_type", f'"{variants[int(first * len(variants))]}"'))
    if kind == "oversized_field":
        key = "brand" if second < 0.5 else "category_path"
        size = 5000 + int(float(uniforms[2]) * 3000)  # stays far below ingest's record limit
        stem = dict(pairs)[key].strip('"') if dict(pairs)[key] != "null" else key
        return DirtyRecord(kind, replaced(key, '"' + (stem * (size // len(stem) + 1))[:size] + '"'))
    raise ValueError(f"unknown dirty record kind {kind!r}")


# --------------------------------------------------------------------------- writing


@dataclass
class WorkerResult:
    """What one worker hands back: per-user truth and counts in user order, plus tallies."""

    worker_index: int
    user_start: int
    p_true: np.ndarray
    driver_category: np.ndarray
    labels: np.ndarray
    counts_before_window: np.ndarray  # users x event types
    events_per_day: np.ndarray
    event_type_counts: np.ndarray
    dirty_counts: dict[str, int]
    missing_field_counts: dict[str, int]
    duplicates: int
    displaced_checkouts: int


class DayBuffers:
    """Lines per (day, part) held until about ``limit_bytes``, then appended to their files.

    Appending in batches instead of holding one handle per file keeps the number of open
    files at one, whatever ``days * files_per_day`` is."""

    def __init__(self, paths: list[list[Path]], limit_bytes: int = 32 << 20):
        self.paths = paths  # [day][part]
        self.lines: list[list[list[str]]] = [[[] for _ in day] for day in paths]
        self.size = 0
        self.limit_bytes = limit_bytes
        for day in paths:
            for path in day:
                path.write_bytes(b"")

    def add(self, day: int, part: int, lines: list[str]) -> None:
        self.lines[day][part].extend(lines)
        self.size += 256 * len(lines)  # about a line's size; exact bytes do not matter here
        if self.size >= self.limit_bytes:
            self.flush()

    def flush(self) -> None:
        for day, parts in enumerate(self.lines):
            for part, lines in enumerate(parts):
                if lines:
                    with open(self.paths[day][part], "a", encoding="utf-8", newline="\n") as handle:
                        handle.write("".join(lines))
                    parts[part] = []
        self.size = 0


def day_directory(output_dir: Path, timeline: Timeline, day: int) -> Path:
    return output_dir / f"dt={date_of_ms(timeline.start_ms + day * DAY_MS).isoformat()}"


def write_user_range(
    cfg: GeneratorConfig,
    output_dir: str,
    worker_index: int,
    user_start: int,
    user_stop: int,
    report: Callable[[int, int], None] | None = None,
) -> WorkerResult:
    """Simulate users ``[user_start, user_stop)`` and write their lines into this worker's
    part files; ``report(users_done, events_done)`` is called about once a second."""
    catalogue = build_catalogue(cfg)
    timeline = build_timeline(cfg)
    rule = PURCHASE_RULE
    root = Path(output_dir)
    paths = [
        [day_directory(root, timeline, day) / f"part-{worker_index:02d}-{part:02d}.jsonl"
         for part in range(cfg.files_per_day)]
        for day in range(cfg.days)
    ]
    buffers = DayBuffers(paths)
    n_users = user_stop - user_start
    p_true = np.zeros(n_users)
    driver_category = np.full(n_users, -1, dtype=np.int64)
    labels = np.zeros(n_users, dtype=np.int8)
    counts = np.zeros((n_users, len(EVENT_TYPES)), dtype=np.int64)
    events_per_day = np.zeros(cfg.days, dtype=np.int64)
    type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
    dirty_counts = {kind: 0 for kind in DIRTY_KINDS}
    missing_counts = {f"missing_{name}": 0 for name in MISSING_FIELDS}
    duplicates = 0
    displaced = 0
    all_kinds = DIRTY_KINDS + (DUPLICATE,)
    type_fragments = [f'","event_type":"{name}",' for name in EVENT_TYPES]
    events_done = 0
    last_report = time.monotonic()

    for offset, user_index in enumerate(range(user_start, user_stop)):
        simulated = UserSimulation(cfg.seed, user_index, catalogue, timeline, rule).run()
        p_true[offset] = simulated.p_true
        driver_category[offset] = simulated.driver_category
        labels[offset] = simulated.label
        displaced += simulated.displaced_checkouts
        n_events = len(simulated.timestamps)
        if n_events:
            stamps = np.asarray(simulated.timestamps, dtype=np.int64)
            types = np.asarray(simulated.event_types, dtype=np.int64)
            day_array = (stamps - timeline.start_ms) // DAY_MS
            days = day_array.tolist()
            counts[offset] = np.bincount(types[stamps < timeline.window_start_ms], minlength=len(EVENT_TYPES))
            type_counts += np.bincount(types, minlength=len(EVENT_TYPES))
            events_per_day += np.bincount(day_array, minlength=cfg.days)[: cfg.days]
            user = user_id_text(user_index)
            prefix = f'{{"user_id":"{user}","ts":"'
            session_fragments = {
                number: f',"session":"s{user_index:0{USER_ID_DIGITS}d}-{number:04d}"}}\n'
                for number in set(simulated.sessions)
            }
            texts = format_timestamps(simulated.timestamps)
            fragments = catalogue.item_fragments
            lines = [
                f"{prefix}{ts}{type_fragments[event_type]}{fragments[item]}{session_fragments[session]}"
                for ts, event_type, item, session
                in zip(texts, simulated.event_types, simulated.items, simulated.sessions)
            ]
            part = user_index % cfg.files_per_day
            if cfg.dirty_rate > 0:
                # Own stream: the good lines do not depend on dirty_rate.
                dirty_rng = np.random.default_rng([cfg.seed, DIRTY_STREAM, user_index])
                chosen = np.flatnonzero(dirty_rng.random(n_events) < cfg.dirty_rate).tolist()
                kinds = dirty_rng.integers(0, len(all_kinds), size=len(chosen)).tolist()
                variants = dirty_rng.random((len(chosen), 4))
                dirty_after = {}
                for position, kind_index, uniforms in zip(chosen, kinds, variants):
                    pairs = event_pairs(
                        user, texts[position], EVENT_TYPES[simulated.event_types[position]],
                        catalogue.item_parts[simulated.items[position]],
                        f"s{user_index:0{USER_ID_DIGITS}d}-{simulated.sessions[position]:04d}",
                    )
                    good_line = lines[position][:-1]
                    record = make_dirty_record(all_kinds[kind_index], good_line, pairs,
                                               simulated.timestamps[position], uniforms)
                    dirty_after[position] = record
                    if record.kind == DUPLICATE:
                        duplicates += 1
                    else:
                        dirty_counts[record.kind] += 1
                    if record.missing_field is not None:
                        missing_counts[f"missing_{record.missing_field}"] += 1
                # Each dirty line right after its source line, in the same day file.
                mixed_lines, mixed_days = [], []
                for position, (day, line) in enumerate(zip(days, lines)):
                    mixed_lines.append(line)
                    mixed_days.append(day)
                    record = dirty_after.get(position)
                    if record is not None:
                        mixed_lines.append(record.line + "\n")
                        mixed_days.append(day)
                lines, days = mixed_lines, mixed_days
            # A user's lines are in time order: hand them over one day-run at a time.
            begin = 0
            while begin < len(lines):
                end = bisect.bisect_right(days, days[begin], begin)
                buffers.add(days[begin], part, lines[begin:end])
                begin = end
        events_done += n_events
        if report is not None and time.monotonic() - last_report >= 1.0:
            report(offset + 1, events_done)
            last_report = time.monotonic()
    buffers.flush()
    if report is not None:
        report(n_users, events_done)
    return WorkerResult(
        worker_index=worker_index,
        user_start=user_start,
        p_true=p_true,
        driver_category=driver_category,
        labels=labels,
        counts_before_window=counts,
        events_per_day=events_per_day,
        event_type_counts=type_counts,
        dirty_counts=dirty_counts,
        missing_field_counts=missing_counts,
        duplicates=duplicates,
        displaced_checkouts=displaced,
    )


def run_worker_job(job_path: str) -> None:
    """Entry point of a writer process (see ``run_workers``): reads its job, writes progress
    and finally its ``WorkerResult`` next to the job file."""
    with open(job_path, "rb") as handle:
        job = pickle.load(handle)

    def report(users: int, events: int) -> None:
        write_atomically(job["progress_path"], f"{users} {events}\n".encode())

    result = write_user_range(job["cfg"], job["output_dir"], job["worker_index"],
                              job["user_start"], job["user_stop"], report)
    write_atomically(job["result_path"], pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def write_atomically(path: str, data: bytes) -> None:
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


# --------------------------------------------------------------------------- metrics


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); nan with one class only."""
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(labels).astype(bool)
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, first, repeats = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (repeats + 1) / 2.0, repeats)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative))


def counts_baseline_auc(counts: np.ndarray, labels: np.ndarray, iterations: int = 25) -> float:
    """In-sample AUC of a logistic regression on log(1 + count) of each event type before the
    window: what a model sees that ignores order and recency (Newton steps, small ridge)."""
    features = np.log1p(np.asarray(counts, dtype=float))
    spread = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    design = np.hstack([np.ones((len(features), 1)), features])
    target = np.asarray(labels, dtype=float)
    weights = np.zeros(design.shape[1])
    ridge = 1e-3 * np.eye(design.shape[1])
    for _ in range(iterations):
        predicted = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (predicted - target) + ridge @ weights
        hessian = (design * (predicted * (1 - predicted))[:, None]).T @ design + ridge
        weights -= np.linalg.solve(hessian, gradient)
    return roc_auc(design @ weights, target)


# --------------------------------------------------------------------------- entry point


def users_within_event_budget(
    cfg: GeneratorConfig, timeline: Timeline, report: Callable[[int, int], None] | None = None
) -> int:
    """Users to generate for ``cfg.max_events``: the shortest index prefix whose planned
    browsing steps reach it (all users when it is 0 or never reached)."""
    if cfg.max_events <= 0:
        return cfg.users
    total = 0
    for user_index in range(cfg.users):
        total += planned_steps(cfg.seed, user_index, timeline)
        if total >= cfg.max_events:
            return user_index + 1
        if report is not None and user_index % 10_000 == 0:
            report(user_index, total)
    return cfg.users


def prepare_output(output_dir: Path, timeline: Timeline, days: int) -> None:
    """Create the day folders and remove part files of earlier runs there (another worker
    count would leave stale parts that double the data)."""
    pattern = re.compile(r"part-\d+-\d+\.jsonl")
    for day in range(days):
        folder = day_directory(output_dir, timeline, day)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            if pattern.fullmatch(stale.name):
                stale.unlink()


def run_workers(
    cfg: GeneratorConfig, output_dir: Path, n_users: int, report: Callable[[int, int], None]
) -> list[WorkerResult]:
    """Run ``cfg.workers`` writers over contiguous user ranges; in-process when there is one.

    Writers are fresh interpreters (``python -c``), not multiprocessing children: fork is unsafe
    in a process with JVM gateway threads, and spawn re-runs an unguarded ``__main__`` script."""
    ranges = [(n_users * w // cfg.workers, n_users * (w + 1) // cfg.workers) for w in range(cfg.workers)]
    if cfg.workers == 1:
        return [write_user_range(cfg, str(output_dir), 0, 0, n_users, report)]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(entry for entry in sys.path if entry)
    command = "import sys; from seqlake.generate import run_worker_job; run_worker_job(sys.argv[1])"
    with tempfile.TemporaryDirectory(prefix="seqlake-generate-") as scratch:
        processes = []
        try:
            for worker_index, (user_start, user_stop) in enumerate(ranges):
                base = os.path.join(scratch, f"worker-{worker_index:02d}")
                job = {
                    "cfg": cfg, "output_dir": str(output_dir), "worker_index": worker_index,
                    "user_start": user_start, "user_stop": user_stop,
                    "progress_path": base + ".progress", "result_path": base + ".result",
                }
                write_atomically(base + ".job", pickle.dumps(job))
                with open(base + ".stderr", "wb") as errors:
                    processes.append(subprocess.Popen(
                        [sys.executable, "-c", command, base + ".job"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, env=environment,
                    ))
            while True:
                codes = [process.poll() for process in processes]
                for worker_index, code in enumerate(codes):
                    if code not in (None, 0):
                        base = os.path.join(scratch, f"worker-{worker_index:02d}")
                        with open(base + ".stderr", "rb") as errors:
                            tail = errors.read()[-4000:].decode("utf-8", "replace")
                        raise RuntimeError(f"generator worker {worker_index} failed (exit {code}):\n{tail}")
                users_done = events_done = 0
                for worker_index in range(cfg.workers):
                    try:
                        with open(os.path.join(scratch, f"worker-{worker_index:02d}.progress"), "rb") as handle:
                            users, events = handle.read().split()
                        users_done, events_done = users_done + int(users), events_done + int(events)
                    except (FileNotFoundError, ValueError):
                        pass
                report(users_done, events_done)
                if all(code == 0 for code in codes):
                    break
                time.sleep(0.2)
            results = []
            for worker_index in range(cfg.workers):
                with open(os.path.join(scratch, f"worker-{worker_index:02d}.result"), "rb") as handle:
                    results.append(pickle.load(handle))
            return results
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()


def generate(
    cfg: GeneratorConfig,
    landing_root: str,
    source: str = "generator",
    progress: Callable[[str], None] | None = None,
) -> GenerateSummary:
    """Write synthetic raw logs, ground truth and manifest for ``cfg``; see the module docstring."""
    if not re.fullmatch(r"[a-z0-9_]+", source):
        raise ValueError(f"source {source!r}: expected lower-case letters, digits and underscores")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", landing_root) and not landing_root.startswith("file://"):
        raise ValueError(f"landing_root {landing_root!r}: the generator writes local files only")
    if cfg.seed < 0:
        raise ValueError(f"generator.seed: expected an integer >= 0, got {cfg.seed}")
    started = time.monotonic()
    root = Path(landing_root.removeprefix("file://"))
    output_dir = root / "raw" / source
    truth_dir = root / "truth" / source
    timeline = build_timeline(cfg)
    last_message = [0.0]

    def say(text: str, force: bool = False) -> None:
        now = time.monotonic()
        if progress is not None and (force or now - last_message[0] >= 2.0):
            progress(f"generate: {text} elapsed={now - started:.1f}s")
            last_message[0] = now

    say(f"stage=plan users={cfg.users:,} days={cfg.days} workers={cfg.workers}", force=True)
    n_users = users_within_event_budget(
        cfg, timeline, lambda users, steps: say(f"stage=plan users={users:,} planned_steps={steps:,}"))
    prepare_output(output_dir, timeline, cfg.days)

    def report(users_done: int, events_done: int) -> None:
        rate = events_done / max(time.monotonic() - started, 1e-9)
        say(f"stage=write users={users_done:,}/{n_users:,} events={events_done:,} ({rate:,.0f}/s)")

    results = run_workers(cfg, output_dir, n_users, report)
    say("stage=truth", force=True)
    p_true = np.concatenate([r.p_true for r in results])
    drivers = np.concatenate([r.driver_category for r in results])
    labels = np.concatenate([r.labels for r in results]).astype(np.int64)
    counts = np.concatenate([r.counts_before_window for r in results])
    events_per_day = sum(r.events_per_day for r in results)
    type_counts = sum(r.event_type_counts for r in results)
    by_kind = {kind: sum(r.dirty_counts[kind] for r in results) for kind in DIRTY_KINDS}
    missing = {f"missing_{name}": sum(r.missing_field_counts[f"missing_{name}"] for r in results)
               for name in MISSING_FIELDS}
    dirty: dict[str, int] = {}
    for kind, count in by_kind.items():
        dirty.update(missing if kind == "missing_field" else {kind: count})
    duplicates = sum(r.duplicates for r in results)
    displaced = sum(r.displaced_checkouts for r in results)
    events = int(type_counts.sum())
    base_rate = float(labels.mean()) if n_users else 0.0
    oracle = roc_auc(p_true, labels)
    baseline = counts_baseline_auc(counts, labels) if 0 < labels.sum() < n_users else float("nan")

    truth_dir.mkdir(parents=True, exist_ok=True)
    truth_path = truth_dir / "ground_truth.csv"
    with open(truth_path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("user_id,p_true,label,driver_category\n")
        # repr() is the shortest text that reads back as the same double: p_true stays exact.
        handle.writelines(
            f"{user_id_text(i)},{float(p)!r},{int(y)},{category_id_text(int(c)) if c >= 0 else ''}\n"
            for i, (p, y, c) in enumerate(zip(p_true, labels, drivers))
        )

    first_date = cfg.start_date
    last_date = cfg.start_date + dt.timedelta(days=cfg.days - 1)
    window_start = date_of_ms(timeline.window_start_ms)
    per_day = {
        (cfg.start_date + dt.timedelta(days=day)).isoformat(): int(events_per_day[day]) for day in range(cfg.days)
    }
    type_totals = {name: int(type_counts[index]) for index, name in enumerate(EVENT_TYPES)}
    manifest = {
        "source": source,
        "config": {key: (value.isoformat() if isinstance(value, dt.date) else value)
                   for key, value in dataclasses.asdict(cfg).items()},
        "users_generated": n_users,
        "first_date": first_date.isoformat(),
        "last_date": last_date.isoformat(),
        "label_window_start": window_start.isoformat(),
        "label_window_end": last_date.isoformat(),
        "period_starts": [date_of_ms(ms).isoformat() for ms in timeline.period_starts],
        "events_written": events,
        "events_per_day": per_day,
        "event_type_counts": type_totals,
        "dirty_written": dirty,
        "dirty_by_kind": by_kind,
        "duplicates_written": duplicates,
        "base_rate": base_rate,
        "oracle_auc": oracle,
        "counts_baseline_auc": baseline,
        "displaced_checkouts": displaced,
        "purchase_rule": dataclasses.asdict(PURCHASE_RULE),
        "max_events_rule": "users in index order until their planned browsing steps reach max_events",
    }
    manifest_path = truth_dir / "manifest.json"
    manifest = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in manifest.items()}  # no NaN in JSON (one-class labels)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    elapsed = time.monotonic() - started
    say(f"stage=done users={n_users:,} events={events:,} dirty={sum(dirty.values()):,} "
        f"duplicates={duplicates:,} base_rate={base_rate:.3f} oracle_auc={oracle:.3f}", force=True)
    return GenerateSummary(
        events_written=events,
        dirty_written=dirty,
        dirty_by_kind=by_kind,
        duplicates_written=duplicates,
        users=n_users,
        days=cfg.days,
        first_date=first_date,
        last_date=last_date,
        label_window_start=window_start,
        label_window_end=last_date,
        base_rate=base_rate,
        oracle_auc=oracle,
        counts_baseline_auc=baseline,
        displaced_checkouts=displaced,
        event_type_counts=type_totals,
        events_per_day=per_day,
        elapsed_seconds=elapsed,
        events_per_second=events / elapsed if elapsed > 0 else 0.0,
        paths={"output": str(output_dir), "truth": str(truth_path), "manifest": str(manifest_path)},
    )
