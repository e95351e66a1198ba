# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SEQLAKE := $(BIN)/seqlake
# Airflow lives in an environment of its own (STACK.md); its tasks call $(VENV)'s spark-submit.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_BIN := $(AIRFLOW_VENV)/bin
AIRFLOW_HOME ?= $(CURDIR)/.airflow
# The demo's days follow generator.start_date / generator.days in conf/local.yaml.
DEMO_FROM ?= 2024-01-01
DEMO_TO ?= 2024-01-28
DEMO_LAST_DAY ?= 2024-01-28
DEMO_DAY_BEFORE ?= 2024-01-27
# Training cutoffs whose 7-day label horizon ends inside the demo's days.
DEMO_CUTOFFS_FROM ?= 2024-01-08
DEMO_CUTOFFS_TO ?= 2024-01-22

.PHONY: setup demo demo-real test test-cluster test-fast bench airflow clean cluster-up cluster-down cluster-status

# The two environments install side by side (their downloads and unpacking overlap).
setup:
	$(MAKE) -j2 $(VENV)/.installed $(AIRFLOW_VENV)/.installed

# Recreated when the dependency list changes. setuptools < 70: petastorm needs it (STACK.md).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools<70" wheel
	$(BIN)/pip install -q -e ".[dev,cluster]"
	@echo "== the Delta jars, and the local cluster's S3A and JDBC jars, resolved once into $(VENV) (later runs neither resolve nor report them)"
	$(BIN)/python -m seqlake.spark conf/local.yaml conf/cluster.local.yaml
	touch $@

$(AIRFLOW_VENV)/.installed: airflow_dags/requirements.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_BIN)/pip install -q --upgrade pip
	$(AIRFLOW_BIN)/pip install -q -r airflow_dags/requirements.txt
	touch $@

demo: setup
	$(SEQLAKE) generate
	$(SEQLAKE) ingest --from $(DEMO_FROM) --to $(DEMO_TO)
	$(SEQLAKE) sessionize --from $(DEMO_FROM) --to $(DEMO_TO)
	@echo "== nightly rerun of the last day (idempotent: changes nothing)"
	$(SEQLAKE) ingest --date $(DEMO_LAST_DAY)
	$(SEQLAKE) sessionize --date $(DEMO_LAST_DAY)
	$(SEQLAKE) sql "SELECT source, count(*) AS sessions, sum(n_events) AS events, round(avg(duration_seconds)/60, 1) AS avg_minutes, sum(CAST(has_purchase AS INT)) AS purchasing_sessions FROM sessions GROUP BY source"
	@echo "== encoding: vocabulary, weekly training snapshots"
	$(SEQLAKE) vocab fit --from $(DEMO_FROM) --to $(DEMO_CUTOFFS_FROM)
	$(SEQLAKE) sequences --from $(DEMO_CUTOFFS_FROM) --to $(DEMO_CUTOFFS_TO)
	$(SEQLAKE) sql "SELECT snapshot_date, count(*) AS users, round(avg(label), 3) AS positive_rate, round(avg(length), 1) AS avg_length, max(vocab_version) AS vocab_version FROM user_sequences GROUP BY snapshot_date ORDER BY snapshot_date"
	@echo "== training: LSTM vs baselines on the test split, MLflow run, registry, champion gate"
	$(SEQLAKE) train
	@echo "== nightly: state, scores with reasons and monitoring, profiles (two nights: the second has a PSI)"
	$(SEQLAKE) state --date $(DEMO_DAY_BEFORE)
	$(SEQLAKE) score --date $(DEMO_DAY_BEFORE)
	$(SEQLAKE) state --date $(DEMO_LAST_DAY)
	$(SEQLAKE) score --date $(DEMO_LAST_DAY)
	$(SEQLAKE) profile --date $(DEMO_LAST_DAY)
	$(SEQLAKE) sql "SELECT user_id, round(propensity, 3) AS propensity, rank, get(reasons, 0).text AS top_reason FROM user_propensity WHERE score_date = '$(DEMO_LAST_DAY)' ORDER BY rank LIMIT 5"
	@echo
	@echo "Lake tables (Delta): $(CURDIR)/lake/{events,events_quarantine,ingest_runs,sessions,session_events,sessionize_runs,vocab,vocab_versions,user_sequences,user_state,state_runs,run_metrics,user_propensity,score_runs,user_profile}"
	@echo "Query them:          $(SEQLAKE) sql \"SELECT * FROM seqlake.user_propensity LIMIT 10\"  (README: For analysts)"
	@echo "Schedule it:         make airflow  (Airflow standalone with airflow_dags/: seqlake_nightly, seqlake_weekly_retrain; README: Orchestration)"
	@echo "MLflow runs/models:  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/lake/_mlflow/mlflow.db  (artifacts: $(CURDIR)/lake/_mlflow/artifacts)"

# The two real public samples in ../shared/data, through their source configs.
demo-real: setup
	$(SEQLAKE) ingest --source rees46 --input ../shared/data/rees46_sample/events.csv --date 2019-10-01
	$(SEQLAKE) sessionize --source rees46 --date 2019-10-01 --compare-source-sessions
	$(SEQLAKE) ingest --source taobao --input ../shared/data/taobao_sample/UserBehavior.csv --from 2017-11-24 --to 2017-12-03
	$(SEQLAKE) sessionize --source taobao --from 2017-11-24 --to 2017-12-03

# Two pytest workers (pytest-xdist): much of the suite waits on JVM and spark-submit start-ups,
# which overlap well on two cores. A module's tests stay on one worker (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The report page's test drives a real headless Chromium: Debian's chromium and chromedriver,
# installed here when missing (as root, or through sudo).
BROWSER := /usr/bin/chromium /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(BROWSER):
	@echo "== Debian's chromium and chromium-driver, for the report page's test"
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# The loopback cluster's test (tests/test_cluster.py, 10-14 min on one worker) runs on its own
# for now: with it, a fresh-clone `make test` came to about 90 min on 2 cores, CI's hard limit.
test: setup $(BROWSER)
	$(PYTEST) --ignore=tests/test_cluster.py

test-cluster: setup
	$(BIN)/python -m pytest tests/test_cluster.py

test-fast: setup
	$(PYTEST) -m "not slow"

bench: setup
	$(BIN)/python bench/run.py
	$(BIN)/python bench/floors.py --lake-ready
	$(BIN)/python bench/bench_ingest_sessionize.py
	$(BIN)/python bench/bench_encoding.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_scoring.py

# Airflow on this machine: scheduler, API server and UI (http://localhost:8080; the admin
# password is printed and kept in $(AIRFLOW_HOME)) with the project's DAGs and a local[2] Spark.
# standalone starts its components as `airflow ...` subprocesses by name: its bin goes on PATH.
# Its default sqlite database goes to WAL journaling first (kept in the file): readers then no
# longer block a writer, so the scheduler, DAG processor, API server and the CLI commands run
# beside them (README: Orchestration) meet "database is locked" far less often.
airflow: setup
	@mkdir -p $(AIRFLOW_HOME)
	@if [ -z "$$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" ]; then \
	    $(AIRFLOW_BIN)/python -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('pragma journal_mode=wal')" \
	        $(AIRFLOW_HOME)/airflow.db; fi
	PATH=$(CURDIR)/$(AIRFLOW_BIN):$$PATH \
	AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/airflow_dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}' \
	$(AIRFLOW_BIN)/airflow standalone

# A real cluster on this machine, loopback only (lib/seqlake/localcluster.py): Spark standalone
# (master, 2 workers, history server), SeaweedFS S3, PostgreSQL (Hive metastore, MLflow) and the
# MLflow server; state, logs and dev keys under .cluster/. Use it with conf/cluster.local.yaml
# after `eval "$$($(BIN)/python -m seqlake.localcluster env)"` (the S3 keys, in the environment only).
cluster-up: setup
	$(BIN)/python -m seqlake.localcluster up

cluster-down:
	$(BIN)/python -m seqlake.localcluster down

cluster-status:
	$(BIN)/python -m seqlake.localcluster status

clean:
	rm -rf lake spark-warehouse metastore_db derby.log .airflow
