"""Profiles: exact rows for hand-made users from a state folded over two days, the state's
profile accumulators against a one-shot computation, idempotent reruns, and the state-date check."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from delta.tables import DeltaTable
from pyspark.testing import assertDataFrameEqual

from seqlake import constants as C
from seqlake import profiles, schemas, state, tables, vocab

from conftest import TEST_SETTINGS, make_config

D = dt.date(2024, 2, 15)  # the profile date, a Thursday
D1 = D - dt.timedelta(days=1)  # the state is bootstrapped on D1, then D is folded in
SOURCE = "generator"
SETTINGS = ("sequences.length=4", "vocab.item_id.min_count=1")
MINUTE_US = 60_000_000


def at(day, hh, mm):
    return dt.datetime.combine(day, dt.time(hh, mm))


def days_before(n):
    return D - dt.timedelta(days=n)


def ev(event_id, user, ts, event_type, category, brand, session, price=10.0):
    """An event of ``session`` (a label: the user's events of one session share it)."""
    return (event_id, user, ts, event_type, "i1", category, None, brand, price, None, SOURCE, ts.date()), session


# Hand-made session_events: the sessions are part of the input (sessionize has its own tests).
EVENTS = [
    # a (new): a session from 23:50 on D1 to 00:20 on D (30 min, crossing midnight: a3 continues
    # it), one from 10:00 to 10:02 on D. Hours 23, 0 and 10 tie at two events each: 0 wins.
    ev("a1", "a", at(D1, 23, 50), "view", "c1", "b1", "a-1"),
    ev("a2", "a", at(D1, 23, 58), "cart", "c1", "b1", "a-1"),
    ev("a3", "a", at(D, 0, 5), "view", "c2", "b2", "a-1"),
    ev("a4", "a", at(D, 0, 20), "purchase", "c1", "b1", "a-1", price=30.0),
    ev("a5", "a", at(D, 10, 0), "view", "c2", "b2", "a-2"),
    ev("a6", "a", at(D, 10, 2), "view", "c2", "b2", "a-2"),
    # b (active): no brand on two events; c4, c8 and c9 tie (one view each): c9 falls off the
    # top three; c5 and b4 only saw a remove_from_cart (weight 0): left out.
    ev("b1", "b", at(days_before(20), 9, 0), "view", "c3", None, "b-1"),
    ev("b2", "b", at(days_before(3), 9, 0), "fav", "c3", None, "b-2"),
    ev("b3", "b", at(days_before(3), 9, 10), "view", "c9", "b3", "b-2"),
    ev("b4", "b", at(days_before(3), 9, 11), "view", "c8", "b3", "b-2"),
    ev("b5", "b", at(days_before(3), 9, 12), "view", "c4", "b3", "b-2"),
    ev("b6", "b", at(days_before(3), 9, 20), "remove_from_cart", "c5", "b4", "b-2"),
    # c (at_risk): two events on a Friday, two on a Monday: Monday wins the tie. Three
    # sessions; the first day is out of `daily` (over 30 days before the last).
    ev("c1", "c", at(days_before(41), 12, 0), "purchase", "c1", "b1", "c-1", price=5.5),
    ev("c2", "c", at(days_before(41), 12, 10), "view", "c1", "b1", "c-1"),
    ev("c3", "c", at(days_before(10), 12, 0), "view", "c1", "b1", "c-2"),
    ev("c4", "c", at(days_before(10), 12, 40), "view", "c2", "b2", "c-3"),
    # d (lapsed): one event long ago, untouched by the fold of D.
    ev("d1", "d", at(days_before(76), 8, 30), "view", "c2", "b2", "d-1", price=1.0),
    # e (new): first seen on D, no brand, no price: inserted by the fold.
    ev("e1", "e", at(D, 15, 30), "view", "c2", None, "e-1", price=None),
    # f (active): back on D after 33 days; the fold drops that day from `daily` (30 days kept),
    # and it is out of sessions_30d. Hours 20 and 8 tie, and Saturday and Thursday: 8, Thursday.
    ev("f1", "f", at(days_before(33), 20, 0), "cart", "c7", "b7", "f-1"),
    ev("f2", "f", at(D, 8, 0), "view", "c7", "b7", "f-2"),
]


def session_events_rows():
    """EVENTS as session_events rows (listed in time order per user)."""
    started, rows = {}, []
    for event, session in EVENTS:
        opens = session not in started
        started.setdefault(session, (event[2], 0))
        start, seen = started[session]
        started[session] = (start, seen + 1)
        rows.append((*event, start, session, seen + 1, opens))
    return rows


def propensity_row(source, score_date, user, propensity, rank, decile):
    return (source, score_date, user, propensity, rank, decile, 7, "seqlake_propensity", "1", 1, "run", [])


PROPENSITY = [
    propensity_row(SOURCE, D, "a", 0.8, 1, 1),
    propensity_row(SOURCE, D, "b", 0.25, 2, 6),
    propensity_row(SOURCE, D1, "c", 0.5, 1, 1),  # another day: c gets no propensity
    propensity_row("other", D, "d", 0.9, 1, 1),  # another source: d gets none either
]


def days_to_end_of_d(ts):
    return (dt.datetime.combine(D + dt.timedelta(days=1), dt.time()) - ts) / dt.timedelta(days=1)


def expected_profiles(spark):
    def row(user, last_ts, frequency, monetary, n_events, n_sessions, s7, s30, session_minutes, top_c, top_b,
            hour, weekday, since_first, since_last, segment, propensity=None, decile=None):
        return (SOURCE, D, user, days_to_end_of_d(last_ts), frequency, Decimal(monetary), n_events, n_sessions,
                s7, s30, n_events / n_sessions, session_minutes / n_sessions, top_c, top_b, hour, weekday,
                since_first, since_last, segment, propensity, decile)

    return spark.createDataFrame([
        # c1: view 1 + cart 3 + purchase 5 = 9; c2: three views = 3. Sessions: 30 + 2 minutes.
        row("a", at(D, 10, 2), 1, "30", 6, 2, 2, 2, 32, ["c1", "c2"], ["b1", "b2"], 0, "Thursday", 1, 0, "new",
            0.8, 1),
        row("b", at(days_before(3), 9, 20), 0, "0", 6, 2, 1, 2, 20, ["c3", "c4", "c8"], ["b3"], 9, "Monday", 20, 3,
            "active", 0.25, 6),
        row("c", at(days_before(10), 12, 40), 1, "5.5", 4, 3, 0, 2, 10, ["c1", "c2"], ["b1", "b2"], 12, "Monday",
            41, 10, "at_risk"),
        row("d", at(days_before(76), 8, 30), 0, "0", 1, 1, 0, 0, 0, ["c2"], ["b2"], 8, "Friday", 76, 76, "lapsed"),
        row("e", at(D, 15, 30), 0, "0", 1, 1, 1, 1, 0, ["c2"], [], 15, "Thursday", 0, 0, "new"),
        row("f", at(D, 8, 0), 0, "0", 2, 2, 1, 1, 0, ["c7"], ["b7"], 8, "Thursday", 33, 0, "active"),
    ], schemas.USER_PROFILE)


def state_rows(df):
    return sorted((r.asDict(recursive=True) for r in df.collect()), key=lambda r: r["user_id"])


@pytest.fixture(scope="module")
def profiled_lake(spark, tmp_path_factory):
    """A lake whose state was bootstrapped on D1 and folded forward to D, with a hand-written
    user_propensity table (shared by the tests below: none of them changes the state)."""
    cfg = make_config(tmp_path_factory.mktemp("profiles"), *SETTINGS)
    events = spark.createDataFrame(session_events_rows(), schemas.SESSION_EVENTS)
    tables.replace_where(events, cfg, C.SESSION_EVENTS, "true", partition_by=[C.SOURCE, C.EVENT_DATE])
    vocab.fit(spark, cfg, source=SOURCE, fit_from=days_before(76), fit_to=D)
    assert state.update_state(spark, cfg, source=SOURCE, day=D1).mode == "bootstrap"
    assert state.update_state(spark, cfg, source=SOURCE, day=D).mode == "incremental"
    propensity = spark.createDataFrame(PROPENSITY, schemas.USER_PROPENSITY)
    tables.replace_where(propensity, cfg, C.USER_PROPENSITY, "true", partition_by=[C.SOURCE, C.SCORE_DATE])
    return cfg


def test_profiles_exact_from_a_folded_state_and_reruns_change_nothing(spark, profiled_lake):
    cfg = profiled_lake
    # The fold kept the state equal to a one-shot computation over the same events, including
    # a's session crossing midnight (30 + 2 minutes of session time).
    folded = tables.read(spark, cfg, C.USER_STATE)
    history = tables.read(spark, cfg, C.SESSION_EVENTS)
    v = vocab.load(spark, cfg, SOURCE)
    one_shot = state.history_state(vocab.with_encoded_tokens(history, v), length=4, vocab_version=v.version)
    assert state_rows(folded) == state_rows(one_shot)
    a = state_rows(folded)[0]
    assert a["session_micros"] == 32 * MINUTE_US
    assert a["category_counts"] == {"c1": [1, 1, 0, 0, 1], "c2": [3, 0, 0, 0, 0]}
    assert [d["sessions"] for d in a["daily"]] == [1, 1]
    assert [d[C.EVENT_DATE] for d in state_rows(folded)[-1]["daily"]] == [D]  # f

    result = profiles.build_profiles(spark, cfg, source=SOURCE, day=D)
    assert (result.users, result.scored) == (6, 2)
    assert result.by_segment == {"new": 2, "active": 2, "at_risk": 1, "lapsed": 1}
    written = tables.read(spark, cfg, C.USER_PROFILE)
    assertDataFrameEqual(written, expected_profiles(spark), rtol=1e-12, atol=0.0)
    comments = {f.name: f.metadata.get("comment") for f in written.schema.fields}
    assert all(comments.values()) and "lapsed" in comments["segment"]

    # A rerun for D writes a new table version with exactly the same rows.
    path = cfg.table_path(C.USER_PROFILE)
    before = DeltaTable.forPath(spark, path).history(1).first()["version"]
    profiles.build_profiles(spark, cfg, source=SOURCE, day=D)
    after = DeltaTable.forPath(spark, path).history(1).first()["version"]
    assert after == before + 1
    assertDataFrameEqual(
        spark.read.format("delta").option("versionAsOf", after).load(path),
        spark.read.format("delta").option("versionAsOf", before).load(path),
        rtol=0.0, atol=0.0,
    )


def test_cli_summary_and_exit_3_when_the_state_is_not_at_the_day(spark, profiled_lake, capsys):
    from seqlake import cli

    cfg = profiled_lake
    settings = [*TEST_SETTINGS, *SETTINGS, f"lake.root={cfg.lake.root}", "lake.database=profiles_cli"]
    args = [a for setting in settings for a in ("--set", setting)]
    assert cli.main([*args, "profile", "--date", str(D)]) == 0
    assert capsys.readouterr().out.startswith(
        f"profile {SOURCE} {D}: 6 users (new 2, active 2, at_risk 1, lapsed 1), 2 with a propensity; user_profile: "
    )
    assert cli.main([*args, "profile", "--date", str(D + dt.timedelta(days=1))]) == cli.EXIT_DATA
    assert f"`seqlake state --source {SOURCE} --date {D + dt.timedelta(days=1)}`" in capsys.readouterr().err


def test_profiles_need_the_state_of_exactly_that_day(spark, profiled_lake, tmp_path):
    cfg = profiled_lake
    later = D + dt.timedelta(days=1)
    with pytest.raises(state.StateGap, match=f"`seqlake state --source {SOURCE} --date {later}`"):
        profiles.build_profiles(spark, cfg, source=SOURCE, day=later)
    with pytest.raises(state.StateGap, match=f"--date {D1} --rebuild"):
        profiles.build_profiles(spark, cfg, source=SOURCE, day=D1)
    empty = make_config(tmp_path, *SETTINGS)
    with pytest.raises(state.StateGap, match="holds nothing"):
        profiles.build_profiles(spark, empty, source=SOURCE, day=D)
    assert not tables.has_rows(spark, cfg, C.USER_PROFILE, f"profile_date <> '{D}'")
