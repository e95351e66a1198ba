"""Tests of the synthetic log generator (pure Python, no Spark).

The checks re-read the written files and recompute what they assert (validity, dirty-record
kinds, labels, intent, AUCs) with code of their own, not with the generator's helpers.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime as dt
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import seqlake  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from seqlake.config import GeneratorConfig  # noqa: E402
from seqlake.generate import PURCHASE_RULE, generate  # noqa: E402

KEYS = ["user_id", "ts", "event_type", "item_id", "category_id", "category_path", "brand", "price", "session"]
TYPES = ("view", "cart", "remove_from_cart", "fav", "purchase")
REQUIRED = ("user_id", "ts", "event_type", "item_id", "category_id")
TS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
# 333 users: with 3 workers a range starts at an odd index (111), so a split of users to part
# files by position within a worker would show.
SMALL = GeneratorConfig(users=333, days=10, label_window_days=3, items=800, categories=40, brands=60,
                        files_per_day=2, workers=2, seed=11)


# --------------------------------------------------------------------------- helpers


def day_files(landing: Path, source: str = "generator") -> dict[str, dict[str, list[str]]]:
    """{date: {file name: lines without newline}} for every day folder."""
    out: dict[str, dict[str, list[str]]] = {}
    for folder in sorted((landing / "raw" / source).glob("dt=*")):
        out[folder.name[3:]] = {
            path.name: path.read_text(encoding="utf-8").splitlines() for path in sorted(folder.glob("*.jsonl"))
        }
    return out


def all_bytes(landing: Path) -> dict[str, bytes]:
    return {str(p.relative_to(landing)): p.read_bytes() for p in sorted(landing.rglob("*")) if p.is_file()}


def parse_ts(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def to_ms(text: str) -> int:
    return int(round(parse_ts(text).timestamp() * 1000))


def read_truth(landing: Path) -> list[tuple[str, float, int]]:
    with open(landing / "truth" / "generator" / "ground_truth.csv", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["user_id", "p_true", "label", "driver_category"]
        return [(user, float(p), int(label)) for user, p, label, _ in reader]


def pairwise_auc(scores, labels) -> float:
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    positive, negative = scores[labels], scores[~labels]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(wins / (len(positive) * len(negative)))


def logistic_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Plain gradient descent on the mean log loss; returns the linear scores."""
    x = np.log1p(features.astype(float))
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    x = np.hstack([np.ones((len(x), 1)), x])
    weights = np.zeros(x.shape[1])
    for _ in range(3000):
        predicted = 1 / (1 + np.exp(-x @ weights))
        weights -= 0.5 * x.T @ (predicted - labels) / len(labels)
    return x @ weights


def documented_probability(events: list[tuple[int, str, str, str]], cutoff_ms: int) -> float:
    """The module docstring's rule, written from the text: events are (ts ms, type, item, category)."""
    rule = PURCHASE_RULE
    decay = rule.decay_days * 86_400_000
    gap = rule.revisit_gap_hours * 3_600_000
    before = [e for e in events if e[0] < cutoff_ms]
    latest_cart, latest_close, category_of = {}, {}, {}
    for ts, kind, item, category in before:
        category_of[item] = category
        if kind == "cart":
            latest_cart[item] = max(ts, latest_cart.get(item, -1))
        elif kind in ("remove_from_cart", "purchase"):
            latest_close[item] = max(ts, latest_close.get(item, -1))
    intent = 0.0
    for item, carted in latest_cart.items():
        if latest_close.get(item, -1) > carted:
            continue
        terms = [rule.cart_only_weight * math.exp(-(cutoff_ms - carted) / decay)]
        item_views = [ts for ts, kind, i, _ in before if kind == "view" and i == item and ts >= carted + gap]
        if item_views:
            terms.append(rule.item_weight * math.exp(-(cutoff_ms - max(item_views)) / decay))
        category_views = [ts for ts, kind, _, c in before
                          if kind == "view" and c == category_of[item] and ts >= carted + gap]
        if category_views:
            terms.append(rule.category_weight * math.exp(-(cutoff_ms - max(category_views)) / decay))
        intent += max(terms)
    return rule.floor + (rule.cap - rule.floor) * (1 - math.exp(-intent / rule.intent_scale))


@dataclasses.dataclass
class Run:
    landing: Path
    cfg: GeneratorConfig
    summary: object
    files: dict[str, dict[str, list[str]]]
    events: list[dict]  # parsed good events with "_day"
    truth: list[tuple[str, float, int]]
    progress: list[str]


def run_generator(landing: Path, cfg: GeneratorConfig, parse: bool = True) -> Run:
    messages: list[str] = []
    summary = generate(cfg, str(landing), progress=messages.append)
    files = day_files(landing)
    events = []
    if parse:
        for day, by_file in files.items():
            for name, lines in by_file.items():
                for line in lines:
                    record = json.loads(line)
                    record["_day"], record["_file"] = day, name
                    events.append(record)
    return Run(landing, cfg, summary, files, events, read_truth(landing), messages)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Run:
    return run_generator(tmp_path_factory.mktemp("default"), GeneratorConfig())


def user_events(events: list[dict]) -> dict[str, list[tuple[int, str, str, str]]]:
    by_user: dict[str, list] = collections.defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append((to_ms(e["ts"]), e["event_type"], e["item_id"], e["category_id"]))
    for values in by_user.values():
        values.sort()
    return by_user


def window_start_ms(cfg: GeneratorConfig) -> int:
    start = dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=dt.timezone.utc)
    return int((start + dt.timedelta(days=cfg.days - cfg.label_window_days)).timestamp() * 1000)


# --------------------------------------------------------------------------- clean output


def test_default_run_size_and_layout(default_run: Run):
    summary, cfg = default_run.summary, default_run.cfg
    assert 100_000 <= summary.events_written <= 300_000
    expected_days = [(cfg.start_date + dt.timedelta(days=d)).isoformat() for d in range(cfg.days)]
    assert list(default_run.files) == expected_days
    for by_file in default_run.files.values():
        assert sorted(by_file) == ["part-00-00.jsonl", "part-01-00.jsonl"]
    assert len(default_run.events) == summary.events_written
    per_day = collections.Counter(e["_day"] for e in default_run.events)
    manifest = json.loads((default_run.landing / "truth" / "generator" / "manifest.json").read_text())
    assert manifest["events_per_day"] == {day: per_day[day] for day in expected_days}
    assert summary.first_date == cfg.start_date and summary.last_date == dt.date(2024, 1, 28)
    assert summary.label_window_start == dt.date(2024, 1, 22)
    assert manifest["label_window_start"] == "2024-01-22" and manifest["label_window_end"] == "2024-01-28"
    assert summary.dirty_written == {k: 0 for k in summary.dirty_written} and summary.duplicates_written == 0
    assert manifest["displaced_checkouts"] == 0  # every checkout stayed inside its period
    assert manifest["period_starts"] == ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22"]
    assert any("users=" in m for m in default_run.progress) and default_run.progress[-1].startswith("generate:")


def test_every_clean_line_is_a_valid_event_on_its_day(default_run: Run):
    item_category, item_brand, category_path = {}, {}, {}
    for by_file in default_run.files.values():
        for lines in by_file.values():
            for line in lines:
                assert re.search(r'"price":\d+\.\d{2}[,}]', line), line  # two decimals as written
    for e in default_run.events:
        assert list(e)[:-2] == KEYS
        assert re.fullmatch(r"u\d{7}", e["user_id"])
        assert TS_PATTERN.fullmatch(e["ts"]) and e["ts"][:10] == e["_day"]
        parse_ts(e["ts"])
        assert e["event_type"] in TYPES
        assert re.fullmatch(r"i\d+", e["item_id"]) and re.fullmatch(r"c\d+", e["category_id"])
        assert e["category_path"] is None or re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", e["category_path"])
        assert e["brand"] is None or (isinstance(e["brand"], str) and e["brand"])
        assert isinstance(e["price"], float) and e["price"] > 0 and round(e["price"], 2) == e["price"]
        assert isinstance(e["session"], str) and e["session"]
        # The catalogue is consistent: an item always has one category, brand and path.
        assert item_category.setdefault(e["item_id"], e["category_id"]) == e["category_id"]
        assert item_brand.setdefault(e["item_id"], e["brand"]) == e["brand"]
        assert category_path.setdefault(e["category_id"], e["category_path"]) == e["category_path"]
    null_paths = sum(p is None for p in category_path.values()) / len(category_path)
    null_brands = sum(b is None for b in item_brand.values()) / len(item_brand)
    assert 0.08 <= null_paths <= 0.35, null_paths
    assert 0.08 <= null_brands <= 0.25, null_brands


def test_timestamps_strictly_increase_per_user(default_run: Run):
    by_user: dict[str, list[int]] = collections.defaultdict(list)
    for by_file in default_run.files.values():
        for lines in by_file.values():
            previous: dict[str, int] = {}
            for line in lines:
                record = json.loads(line)
                ms = to_ms(record["ts"])
                # Within a file a user's lines are in time order.
                assert ms > previous.get(record["user_id"], -1)
                previous[record["user_id"]] = ms
                by_user[record["user_id"]].append(ms)
    for stamps in by_user.values():
        assert len(set(stamps)) == len(stamps)  # strictly increasing once sorted: no ties
    lines = [line for by_file in default_run.files.values() for ls in by_file.values() for line in ls]
    assert len(set(lines)) == len(lines)


def test_sessions_cross_midnight_into_the_next_days_file(default_run: Run):
    days_of_session: dict[str, set[str]] = collections.defaultdict(set)
    for e in default_run.events:
        days_of_session[e["session"]].add(e["_day"])
    crossing = [sorted(d) for d in days_of_session.values() if len(d) > 1]
    assert crossing, "expected some sessions to cross midnight"
    for days in crossing:
        assert len(days) == 2 and dt.date.fromisoformat(days[1]) - dt.date.fromisoformat(days[0]) == dt.timedelta(1)


def test_event_type_mix_is_realistic(default_run: Run):
    counts = collections.Counter(e["event_type"] for e in default_run.events)
    share = {t: counts[t] / len(default_run.events) for t in TYPES}
    assert 0.85 <= share["view"] <= 0.92, share
    assert 0.04 <= share["cart"] <= 0.08, share
    assert 0.01 <= share["fav"] <= 0.03, share
    # About half of the carts are removed again (REES46 shows more removals than that).
    assert 0.005 <= share["remove_from_cart"] <= 0.04, share
    assert 0.01 <= share["purchase"] <= 0.03, share
    assert default_run.summary.event_type_counts == {t: counts[t] for t in TYPES}


# --------------------------------------------------------------------------- the planted signal


def test_truth_labels_base_rate_and_oracle_auc(default_run: Run):
    truth = default_run.truth
    assert [user for user, _, _ in truth] == [f"u{i:07d}" for i in range(default_run.cfg.users)]
    p_true = np.array([p for _, p, _ in truth])
    labels = np.array([y for _, _, y in truth])
    assert ((p_true >= PURCHASE_RULE.floor) & (p_true <= PURCHASE_RULE.cap)).all()
    # label = the data has a purchase by the user in the window (recomputed from the files).
    start = window_start_ms(default_run.cfg)
    buyers = {e["user_id"] for e in default_run.events if e["event_type"] == "purchase" and to_ms(e["ts"]) >= start}
    assert labels.tolist() == [int(user in buyers) for user, _, _ in truth]
    assert 0.02 <= labels.mean() <= 0.15
    oracle = pairwise_auc(p_true, labels)
    assert 0.75 <= oracle <= 0.92, oracle
    assert oracle == pytest.approx(default_run.summary.oracle_auc, abs=1e-9)
    assert labels.mean() == pytest.approx(default_run.summary.base_rate)
    # Calibration: p_true is the probability, so predicted and observed buyers agree.
    assert abs(p_true.sum() - labels.sum()) < 4 * math.sqrt((p_true * (1 - p_true)).sum())


def test_counts_only_baseline_is_clearly_weaker_than_the_oracle(default_run: Run):
    start = window_start_ms(default_run.cfg)
    index = {user: i for i, (user, _, _) in enumerate(default_run.truth)}
    counts = np.zeros((len(index), len(TYPES)))
    for e in default_run.events:
        if to_ms(e["ts"]) < start:
            counts[index[e["user_id"]], TYPES.index(e["event_type"])] += 1
    labels = np.array([y for _, _, y in default_run.truth], dtype=float)
    baseline = pairwise_auc(logistic_scores(counts, labels), labels)  # in-sample: generous to it
    oracle = pairwise_auc([p for _, p, _ in default_run.truth], labels)
    assert 0.6 < baseline <= oracle - 0.03, (baseline, oracle)
    assert default_run.summary.counts_baseline_auc <= oracle - 0.03


def test_p_true_is_the_documented_rule_applied_to_pre_window_events(default_run: Run):
    by_user = user_events(default_run.events)
    start = window_start_ms(default_run.cfg)
    for user, p_true, _ in default_run.truth:
        assert documented_probability(by_user.get(user, []), start) == pytest.approx(p_true, abs=1e-9), user


def test_signal_holds_at_an_earlier_weekly_cutoff(default_run: Run):
    """Purchases before the window follow the same rule: at the previous period start the
    documented probability ranks next week's buyers as well as p_true does the window's."""
    by_user = user_events(default_run.events)
    cutoff = window_start_ms(default_run.cfg) - 7 * 86_400_000
    scores, labels = [], []
    for user, _, _ in default_run.truth:
        events = by_user.get(user, [])
        scores.append(documented_probability(events, cutoff))
        labels.append(int(any(kind == "purchase" and cutoff <= ts < cutoff + 7 * 86_400_000
                              for ts, kind, _, _ in events)))
    assert 0.02 <= np.mean(labels) <= 0.15
    assert pairwise_auc(scores, labels) >= 0.75


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path):
    first = run_generator(tmp_path / "a", SMALL, parse=False)
    second = run_generator(tmp_path / "b", SMALL, parse=False)
    assert all_bytes(first.landing) == all_bytes(second.landing)
    other = run_generator(tmp_path / "c", dataclasses.replace(SMALL, seed=12), parse=False)
    assert first.files != other.files
    assert first.summary.events_written > 5_000


def test_output_per_day_does_not_depend_on_worker_count(tmp_path: Path):
    runs = {workers: run_generator(tmp_path / f"w{workers}", dataclasses.replace(SMALL, workers=workers),
                                   parse=False)
            for workers in (1, 2, 3)}
    for workers, run in runs.items():
        for by_file in run.files.values():
            assert sorted(by_file) == [f"part-{w:02d}-{k:02d}.jsonl" for w in range(workers) for k in range(2)]
    reference = {day: sorted(line for lines in by_file.values() for line in lines)
                 for day, by_file in runs[1].files.items()}
    truth = (runs[1].landing / "truth/generator/ground_truth.csv").read_bytes()
    manifest = json.loads((runs[1].landing / "truth/generator/manifest.json").read_text())
    for workers in (2, 3):
        run = runs[workers]
        assert {day: sorted(line for lines in by_file.values() for line in lines)
                for day, by_file in run.files.items()} == reference
        assert (run.landing / "truth/generator/ground_truth.csv").read_bytes() == truth
        other = json.loads((run.landing / "truth/generator/manifest.json").read_text())
        assert other["config"].pop("workers") == workers
        assert {**manifest, "config": {k: v for k, v in manifest["config"].items() if k != "workers"}} == other
    # Users are split over part files by index, whatever the worker count.
    for run in runs.values():
        for by_file in run.files.values():
            for name, lines in by_file.items():
                part = int(name[-8:-6])
                assert all(int(json.loads(line)["user_id"][1:]) % 2 == part for line in lines)
    # A rerun with fewer workers into the same place leaves no stale part files behind.
    rerun = run_generator(runs[3].landing, dataclasses.replace(SMALL, workers=2), parse=False)
    assert {day: sorted(line for lines in by_file.values() for line in lines)
            for day, by_file in rerun.files.items()} == reference
    assert not list((runs[3].landing / "raw").rglob("part-02-*"))


def test_max_events_keeps_a_prefix_of_users_near_the_target(tmp_path: Path):
    capped_cfg = GeneratorConfig(users=100_000, max_events=12_000, workers=2, seed=5)
    capped = run_generator(tmp_path / "capped", capped_cfg, parse=False)
    users = capped.summary.users
    assert 50 < users < 1_000
    assert 12_000 <= capped.summary.events_written <= 12_000 * 1.15
    assert [u for u, _, _ in capped.truth] == [f"u{i:07d}" for i in range(users)]
    # The same users, generated without a cap, write the same lines.
    plain = run_generator(tmp_path / "plain", dataclasses.replace(capped_cfg, users=users, max_events=0), parse=False)
    assert {d: sorted(sum(f.values(), [])) for d, f in plain.files.items()} == \
           {d: sorted(sum(f.values(), [])) for d, f in capped.files.items()}
    # A cap that is never reached changes nothing.
    assert run_generator(tmp_path / "loose", dataclasses.replace(capped_cfg, users=users, max_events=10**9),
                         parse=False).files == plain.files


def test_bad_arguments_are_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="source"):
        generate(SMALL, str(tmp_path), source="Bad-Name")
    with pytest.raises(ValueError, match="seed"):
        generate(dataclasses.replace(SMALL, seed=-1), str(tmp_path))
    with pytest.raises(ValueError, match="landing_root"):
        generate(SMALL, "s3a://bucket/landing")


# --------------------------------------------------------------------------- dirty records


def defects_of(line: str, day: str) -> tuple[list[str], str | None]:
    """Every defect a line has, judged from the line alone (and its file's day)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return ["malformed_json"], None
    if not isinstance(record, dict):
        return ["not_an_object"], None
    defects, missing = [], None
    if set(record) - set(KEYS):
        defects.append("unexpected_key")
    for name in REQUIRED:
        if record.get(name) is None:
            defects.append("missing_field")
            missing = name
    ts = record.get("ts")
    if isinstance(ts, str):
        try:
            if not TS_PATTERN.fullmatch(ts):
                raise ValueError(ts)
            date = parse_ts(ts).date()
            if date > dt.date.fromisoformat(day) + dt.timedelta(days=365):
                defects.append("future_timestamp")
            elif date.isoformat() != day:
                defects.append("wrong_day")
        except ValueError:
            defects.append("bad_timestamp")
    if record.get("event_type") is not None and record["event_type"] not in TYPES:
        defects.append("unknown_event_type")
    price = record.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        defects.append("non_numeric_price")
    elif price < 0:
        defects.append("negative_price")
    elif price == 0:
        defects.append("zero_price")
    if any(isinstance(v, str) and len(v) > 1024 for v in record.values()):
        defects.append("oversized_field")
    return defects, missing


def test_dirty_counts_match_what_the_files_contain(tmp_path: Path):
    dirty_cfg = dataclasses.replace(SMALL, dirty_rate=0.1)
    dirty = run_generator(tmp_path / "dirty", dirty_cfg, parse=False)
    clean = run_generator(tmp_path / "clean", dataclasses.replace(dirty_cfg, dirty_rate=0.0), parse=False)
    found: collections.Counter = collections.Counter()
    missing: collections.Counter = collections.Counter()
    duplicates = 0
    good_by_day: dict[str, list[str]] = collections.defaultdict(list)
    for day, by_file in dirty.files.items():
        for lines in by_file.values():
            seen: set[str] = set()
            previous = None
            for line in lines:
                defects, missing_name = defects_of(line, day)
                assert len(defects) <= 1, (defects, line[:300])
                if defects:
                    found[defects[0]] += 1
                    if missing_name:
                        missing[f"missing_{missing_name}"] += 1
                    if defects[0] == "malformed_json":  # a broken copy of the line before it
                        assert previous is not None and previous.startswith(line) and previous != line
                elif line in seen:
                    duplicates += 1
                else:
                    seen.add(line)
                    good_by_day[day].append(line)
                    previous = line
    manifest = json.loads((dirty.landing / "truth/generator/manifest.json").read_text())
    kinds = ["malformed_json", "missing_field", "bad_timestamp", "future_timestamp", "negative_price",
             "non_numeric_price", "unknown_event_type", "oversized_field"]
    assert set(found) <= set(kinds), found
    assert manifest["dirty_by_kind"] == {k: found[k] for k in kinds} == dirty.summary.dirty_by_kind
    assert all(found[k] > 0 for k in kinds), found
    # dirty_written: the same lines, missing_field split per field (each line counted once).
    split = {k: found[k] for k in kinds if k != "missing_field"}
    split.update({f"missing_{f}": missing[f"missing_{f}"] for f in REQUIRED})
    assert manifest["dirty_written"] == split == dirty.summary.dirty_written
    assert sum(split.values()) == sum(found.values())
    assert all(missing[f"missing_{f}"] > 0 for f in REQUIRED), missing
    assert manifest["duplicates_written"] == duplicates == dirty.summary.duplicates_written > 0
    # Dirty lines come on top of the same good events and leave the ground truth alone.
    assert {d: sorted(ls) for d, ls in good_by_day.items()} == \
           {d: sorted(sum(f.values(), [])) for d, f in clean.files.items() if sum(f.values(), [])}
    assert dirty.summary.events_written == clean.summary.events_written
    assert dirty.truth == clean.truth
    extra = sum(found.values()) + duplicates
    assert 0.07 <= extra / dirty.summary.events_written <= 0.13
