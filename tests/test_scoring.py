"""Nightly scoring end to end on the generated lake with the planted signal: a champion trained
here, the state folded day by day, two scored days, reasons checked against the generator's
truth, realised performance, reruns and refusals."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
from delta.tables import DeltaTable
from pyspark.testing import assertDataFrameEqual

from seqlake import constants as C
from seqlake import outcomes, scoring, state, tables, train
from seqlake.dataset import AGGREGATES, SEQUENCES

from conftest import REPO, TEST_SETTINGS, TRAIN_SETTINGS

pytestmark = pytest.mark.slow

DAY_BEFORE, DAY = dt.date(2024, 1, 20), dt.date(2024, 1, 21)  # DAY + 1 = the label window start


def _version(spark, cfg, table: str) -> int:
    return DeltaTable.forPath(spark, cfg.table_path(table)).history(1).first()["version"]


@pytest.fixture(scope="module")
def scored(spark, signal_lake):
    """A champion of its own registered model (the training tests own the default one), then
    state and scores for DAY_BEFORE and DAY."""
    cfg, _ = signal_lake
    cfg = dataclasses.replace(cfg, mlflow=dataclasses.replace(
        cfg.mlflow, registered_model="scoring_test_model", experiment="scoring_test_training"))
    trained = train.train(spark, cfg, source="generator")
    assert trained.promoted
    state.update_state(spark, cfg, source="generator", day=DAY_BEFORE)
    first = scoring.score(spark, cfg, source="generator", day=DAY_BEFORE)
    state.update_state(spark, cfg, source="generator", day=DAY)
    second = scoring.score(spark, cfg, source="generator", day=DAY)
    return cfg, trained, first, second


def _scores(spark, cfg, day):
    return tables.read(spark, cfg, C.USER_PROPENSITY).filter(f"score_date = '{day}'")


def test_every_active_user_scored_once_with_exact_ranks_deciles_and_provenance(spark, scored):
    cfg, trained, first, second = scored
    rows = _scores(spark, cfg, DAY).toPandas()
    active = (
        tables.read(spark, cfg, C.USER_STATE)
        .filter(f"last_event_date BETWEEN '{DAY - dt.timedelta(days=cfg.scoring.lookback_days - 1)}' AND '{DAY}'")
        .select("user_id").toPandas()["user_id"]
    )
    n = len(rows)
    assert n == second.users_scored == len(active) and set(rows["user_id"]) == set(active)
    assert rows["propensity"].between(0, 1).all()
    ordered = rows.sort_values(["propensity", "user_id"], ascending=[False, True])
    assert ordered["rank"].tolist() == list(range(1, n + 1))
    assert (ordered["decile"] == np.ceil(10 * ordered["rank"] / n).astype(int)).all()
    assert set(rows["model_name"]) == {"scoring_test_model"} and set(rows["model_version"]) == {trained.model_version}
    assert set(rows["run_id"]) == {trained.run_id} and set(rows["vocab_version"]) == {1}
    assert set(rows["horizon_days"]) == {cfg.sequences.horizon_days}
    # The model is loaded once per Python worker, not per batch.
    assert 1 <= second.model_loads <= 2 * 2 and second.batches >= math.ceil(n / cfg.scoring.batch_rows)
    # Monitoring: PSI only once there is a previous day; OOV shares in run_metrics; audit row.
    assert first.psi is None and second.psi is not None and 0 <= second.psi < cfg.scoring.warn_psi
    metrics = tables.read(spark, cfg, C.RUN_METRICS).filter(f"stage = 'score' AND run_date = '{DAY}'").collect()
    assert {r["feature"] for r in metrics} == {"event_type", "item_id", "category_id", "brand"}
    assert {r["feature"]: r["oov_share"] for r in metrics} == pytest.approx(second.oov_share)
    runs = tables.read(spark, cfg, C.SCORE_RUNS).filter(f"score_date = '{DAY}'").collect()
    assert [r["users_scored"] for r in runs] == [n] and runs[0]["mlflow_run_id"] == second.mlflow_run_id
    from mlflow import MlflowClient

    run = MlflowClient().get_run(second.mlflow_run_id)
    assert run.data.metrics["users_scored"] == n and run.data.metrics["psi"] == pytest.approx(second.psi)
    assert [a.path for a in MlflowClient().list_artifacts(second.mlflow_run_id, "plots")] == [
        "plots/score_distribution.png"]


def test_scores_from_the_nightly_state_equal_the_models_scores_of_the_training_snapshot(spark, scored):
    """The state folded day by day and the snapshot built from history at cutoff DAY + 1 encode
    identically, so the same model gives the same number: no training/serving skew."""
    import mlflow.tensorflow

    cfg, trained, _, second = scored
    model = mlflow.tensorflow.load_model(f"models:/{cfg.mlflow.registered_model}/{trained.model_version}")
    snapshot = (
        tables.read(spark, cfg, C.USER_SEQUENCES)
        .filter(f"snapshot_date = '{DAY + dt.timedelta(days=1)}'")
        .join(_scores(spark, cfg, DAY).select("user_id", "propensity"), on="user_id", how="inner")
        .toPandas()
    )
    assert len(snapshot) == second.users_scored  # every scored user is in the snapshot
    inputs = {name: np.stack(snapshot[name].to_numpy()).astype(np.int32) for name in SEQUENCES}
    inputs["aggregates"] = snapshot[list(AGGREGATES)].to_numpy(dtype=np.float32)
    offline = np.asarray(model.predict(inputs, batch_size=1024, verbose=0)).reshape(-1)
    assert np.abs(offline - snapshot["propensity"].to_numpy()).max() < 1e-5


def test_realised_performance_tracks_the_oracle(spark, scored):
    cfg, _, _, _ = scored
    result = outcomes.evaluate(spark, cfg, source="generator", day=DAY)
    truth = _truth(cfg)
    users = _scores(spark, cfg, DAY).select("user_id", "propensity").toPandas()
    labels = np.array([truth[u][1] for u in users["user_id"]])
    p_true = np.array([truth[u][0] for u in users["user_id"]])
    from sklearn.metrics import roc_auc_score

    # The outcome is exactly the generator's label (purchases in the label window).
    assert result.users == len(users) and result.buyers == labels.sum()
    assert result.auc_roc == pytest.approx(roc_auc_score(labels, users["propensity"]), abs=1e-3)
    oracle = roc_auc_score(labels, p_true)
    assert result.auc_roc > oracle - 0.1 and result.auc_roc > 0.7
    assert result.lift_top_decile > 2.5
    deciles = tables.read(spark, cfg, C.PROPENSITY_EVALUATION).filter(f"score_date = '{DAY}'").orderBy("decile").collect()
    assert [r["decile"] for r in deciles] == list(range(1, 11))
    assert sum(r["users"] for r in deciles) == len(users) and sum(r["buyers"] for r in deciles) == labels.sum()
    assert deciles[0]["purchase_rate"] > deciles[-1]["purchase_rate"]


def _truth(cfg) -> dict[str, tuple[float, int, str]]:
    path = Path(cfg.lake.landing_root) / "truth" / "generator" / "ground_truth.csv"
    with open(path, newline="") as handle:
        return {r["user_id"]: (float(r["p_true"]), int(r["label"]), r["driver_category"]) for r in csv.DictReader(handle)}


def test_reasons_name_the_planted_cart_far_more_often_than_chance(spark, scored):
    """For users whose probability comes from the planted signal (an open cart revisited), the
    top reason names that cart's category; chance is the share of the user's (event type,
    category) groups in that category."""
    cfg, _, _, _ = scored
    truth = _truth(cfg)
    categories = {r["index"]: r["token"] for r in tables.read(spark, cfg, C.VOCAB)
                  .filter("feature = 'category_id'").collect()}
    arrays = {r["user_id"]: r for r in tables.read(spark, cfg, C.USER_STATE).select(
        "user_id", "event_type", "category").collect()}
    hits = chance = users = 0
    for row in _scores(spark, cfg, DAY).select("user_id", "reasons").collect():
        p_true, _, driver = truth[row["user_id"]]
        if not driver or p_true < 0.2:
            continue
        users += 1
        groups = set(zip(arrays[row["user_id"]]["event_type"], arrays[row["user_id"]]["category"]))
        chance += sum(categories.get(c) == driver for _, c in groups) / len(groups)
        hits += bool(row["reasons"]) and row["reasons"][0]["category"] == driver
    assert users > 300
    assert hits / users > 0.8 and hits / users > 1.4 * chance / users, (hits / users, chance / users)
    # Every reason reads as words, with its numbers.
    some = _scores(spark, cfg, DAY).filter("size(reasons) = 3").first()["reasons"]
    for reason in some:
        assert re.fullmatch(r"(viewed|carted|favourited|bought in) category \S+ (once|twice|\d+ times) in the last "
                            r"(day|\d+ days)|removed category \S+ from the cart .*", reason["text"]), reason["text"]
    assert some[0]["impact"] >= some[1]["impact"] >= some[2]["impact"] >= cfg.scoring.explain_min_impact


def test_a_rerun_gives_the_same_rows(spark, scored):
    cfg, _, _, second = scored
    before = _scores(spark, cfg, DAY).toPandas()
    again = scoring.score(spark, cfg, source="generator", day=DAY)
    after = _scores(spark, cfg, DAY)
    assert again.users_scored == second.users_scored
    assertDataFrameEqual(after, spark.createDataFrame(before, after.schema))


def test_no_champion_missing_vocab_or_state_not_at_the_day_refuse_and_write_nothing(spark, scored):
    from mlflow import MlflowClient

    cfg, trained, _, _ = scored
    version = _version(spark, cfg, C.USER_PROPENSITY)
    nobody = dataclasses.replace(cfg, mlflow=dataclasses.replace(cfg.mlflow, registered_model="no_such_model"))
    with pytest.raises(scoring.ScoringRefused, match="no version of model 'no_such_model' holds the alias"):
        scoring.score(spark, nobody, source="generator", day=DAY)
    with pytest.raises(scoring.ScoringRefused, match=r"holds 2024-01-21; run `seqlake state --source generator"):
        scoring.score(spark, cfg, source="generator", day=DAY + dt.timedelta(days=1))
    client = MlflowClient()
    client.set_model_version_tag(cfg.mlflow.registered_model, trained.model_version, "vocab_version", "99")
    try:
        with pytest.raises(scoring.ScoringRefused, match="vocab_version 99, which the lake does not hold"):
            scoring.score(spark, cfg, source="generator", day=DAY)
    finally:
        client.set_model_version_tag(cfg.mlflow.registered_model, trained.model_version, "vocab_version", "1")
    too_few = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, min_users=10**9))
    with pytest.raises(scoring.BrokenScoringInput, match="users of source 'generator' were active"):
        scoring.score(spark, too_few, source="generator", day=DAY)
    assert _version(spark, cfg, C.USER_PROPENSITY) == version


def readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## For analysts"):text.index("## Synthetic data")]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_every_readme_query_for_analysts_runs_against_the_lake(spark, scored, capsys):
    """The README's example queries through `seqlake sql --format json`, on this lake's tables
    (with profiles of DAY), each returning rows; the tables carry their column comments."""
    import json

    from seqlake import cli, profiles

    cfg, _, _, _ = scored
    outcomes.evaluate(spark, cfg, source="generator", day=DAY)
    profiles.build_profiles(spark, cfg, source="generator", day=DAY)
    queries = readme_queries()
    assert len(queries) >= 5
    settings = [*TEST_SETTINGS, f"lake.root={cfg.lake.root}", f"lake.landing_root={cfg.lake.landing_root}",
                f"ingest.sources_dir={cfg.ingest.sources_dir}", "lake.database=analysts", *TRAIN_SETTINGS]
    args = [a for setting in settings for a in ("--set", setting)]
    for query in queries:
        capsys.readouterr()
        # The README names the default database; this session's catalog may already hold
        # `seqlake.*` tables of other test lakes, so the queries go to a database of their own.
        query = query.replace("seqlake.", "analysts.")
        assert cli.main([*args, "sql", query, "--format", "json"]) == 0, query
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        title = query.splitlines()[0]
        if "'c00003'" not in query:  # a category's top decile may be empty on a small lake
            assert rows, title
    # Column comments reach the catalog.
    described = {r["col_name"]: r["comment"] for r in spark.sql("DESCRIBE analysts.user_propensity").collect()}
    assert described["decile"] == "1 = top 10% of the day's users by rank, 10 = bottom"
    # csv for scripts: a header line, then one line per row.
    capsys.readouterr()
    assert cli.main([*args, "sql", "SELECT decile, count(*) AS n FROM user_propensity WHERE score_date = "
                     f"'{DAY}' GROUP BY decile ORDER BY decile", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "decile,n" and [line.split(",")[0] for line in lines[1:]] == [str(d) for d in range(1, 11)]


def test_evaluate_waits_for_the_horizon(spark, scored):
    cfg, _, _, _ = scored
    with pytest.raises(outcomes.NothingToEvaluate, match="no scores"):
        outcomes.evaluate(spark, cfg, source="generator", day=dt.date(2024, 1, 25))
    state.update_state(spark, cfg, source="generator", day=DAY + dt.timedelta(days=1))
    scoring.score(spark, cfg, source="generator", day=DAY + dt.timedelta(days=1))
    with pytest.raises(outcomes.NothingToEvaluate, match="need sessionized events up to 2024-01-29"):
        outcomes.evaluate(spark, cfg, source="generator", day=DAY + dt.timedelta(days=1))


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_report_page_loads_in_chromium_with_every_chart_drawn(spark, scored, tmp_path, capsys):
    """`seqlake report` on this lake: one HTML file with six charts; in a real headless Chromium
    it loads with no console error and no request for anything else, and every chart is drawn
    (its screenshot is not blank). A night that was not scored is refused."""
    from seqlake import cli

    cfg, trained, _, _ = scored
    outcomes.evaluate(spark, cfg, source="generator", day=DAY)
    page = tmp_path / "report.html"
    settings = [*TEST_SETTINGS, f"lake.root={cfg.lake.root}", f"lake.landing_root={cfg.lake.landing_root}",
                f"ingest.sources_dir={cfg.ingest.sources_dir}", *TRAIN_SETTINGS,
                f"mlflow.registered_model={cfg.mlflow.registered_model}", f"mlflow.experiment={cfg.mlflow.experiment}"]
    args = [a for setting in settings for a in ("--set", setting)]
    assert cli.main([*args, "report", "--date", str(DAY), "--out", str(page)]) == 0
    assert f"6 sections, 6 charts\n  {page}" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    # Nothing to fetch: no script, no source or link but the page's own (#id) references.
    assert text.count("<svg") == 6 and "<script" not in text and not re.search(r'(src|href)="(?!#)', text)
    # The figures beside the charts are the tables' own.
    top = tables.read(spark, cfg, C.PROPENSITY_EVALUATION).filter(f"score_date = '{DAY}' AND decile = 1").first()
    assert f"<td>1</td><td>{top['users']}</td><td>{top['buyers']}</td>" in text
    assert f"version {trained.model_version}" in text
    assert cli.main([*args, "report", "--date", "2024-01-27", "--out", str(tmp_path / "none.html")]) == cli.EXIT_DATA
    assert "2024-01-27 was not scored for source 'generator'" in capsys.readouterr().err

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
        "Debian's chromium and chromium-driver are missing: `apt-get install -y chromium chromium-driver` (.ci/run does)"
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(page.as_uri())
        assert driver.title == f"seqlake report: generator {DAY}"
        charts = driver.find_elements(By.CSS_SELECTOR, ".chart svg")
        assert len(charts) == 6
        for chart in charts:
            driver.execute_script("arguments[0].scrollIntoView();", chart)
            assert chart.size["width"] > 300 and chart.size["height"] > 150, chart.size
            pixels = np.asarray(Image.open(io.BytesIO(chart.screenshot_as_png)).convert("RGB")).reshape(-1, 3)
            colours = {tuple(p) for p in pixels[:: max(1, len(pixels) // 20000)]}
            inked = (pixels.min(axis=1) < 200).mean()
            assert len(colours) > 8 and inked > 0.02, (len(colours), inked)  # axes, bars, text: not blank
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    finally:
        driver.quit()
