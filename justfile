# Recipes for development. Run through ./dev on a fresh machine (it builds .venv first).
set dotenv-load := false

python := "python"
# the labelled history `just train` reads (override: just train DATA=path)
DATA := "data/history.parquet"

# list the recipes
default:
    @just --list --unsorted

# the end-to-end demo on the embedded broker (see README: Quick start)
demo *ARGS:
    {{python}} -m demo {{ARGS}}

# lint, types and every test tier (unit, flow, integration); the CI command
test *ARGS: lint types
    {{python}} -m pytest {{ARGS}}

# only the fast, pure tests
test-unit *ARGS:
    {{python}} -m pytest tests/unit topics state export training flows rules devkit demo {{ARGS}}

# ruff: pyflakes, pycodestyle, isort, bugbear, docstrings
lint:
    {{python}} -m ruff check .

# mypy on the packages
types:
    {{python}} -m mypy

# regenerate topics/schemas/*.json from the contracts (and the ISO 4217 / rate table check)
schemas:
    {{python}} -m topics.schema
    {{python}} -m topics.currency --check

# run a development broker in the foreground (Tansu, memory only)
broker *ARGS:
    {{python}} -m devkit.broker {{ARGS}}

# create every topic of the registry, idempotently
topics *ARGS:
    {{python}} -m devkit.topics {{ARGS}}

# produce transactions (synthetic or from a file); --help for options
produce *ARGS:
    {{python}} -m devkit.produce {{ARGS}}

# print records of a topic; --help for options
tail TOPIC *ARGS:
    {{python}} -m devkit.tail {{TOPIC}} {{ARGS}}

# publish fraud labels from a CSV, Parquet or JSON-lines file; --help for options
labels FILE *ARGS:
    {{python}} -m devkit.labels {{FILE}} {{ARGS}}

# simulate a labelled history (Parquet) with fraud scenarios
simulate *ARGS:
    {{python}} -m training.simulate {{ARGS}}

# train the ensemble on a labelled history: just train DATA=path/to/history.parquet [options]
[positional-arguments]
train *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    data="{{DATA}}"; rest=()
    for arg in "$@"; do
        case "$arg" in DATA=*) data="${arg#DATA=}" ;; *) rest+=("$arg") ;; esac
    done
    exec {{python}} -m training.train --data "$data" "${rest[@]}"

# export the trained ensemble to ONNX and publish it under models/
export-onnx *ARGS:
    {{python}} -m export.release {{ARGS}}

# list published model versions: state, gate outcome, test metrics
models *ARGS:
    {{python}} -m export.cli models {{ARGS}}

# make VERSION the champion after its gates (audited; the running flow hot-reloads)
promote VERSION *ARGS:
    {{python}} -m export.cli promote {{VERSION}} {{ARGS}}

# make the previous champion current again (audited)
rollback *ARGS:
    {{python}} -m export.cli rollback {{ARGS}}

# make VERSION the shadow challenger (scored beside the champion, never decides)
shadow VERSION *ARGS:
    {{python}} -m export.cli shadow {{VERSION}} {{ARGS}}

# governance commands in full (gates, audit, ...): just governance --help
governance *ARGS:
    {{python}} -m export.cli {{ARGS}}

# a labelled history from the topics (transactions + labels known as of a time)
history *ARGS:
    {{python}} -m training.history_export {{ARGS}}

# export the history from the topics, train, gate and publish a candidate
retrain *ARGS:
    {{python}} -m training.retrain {{ARGS}}

# score a file offline with a published model: just score-file DATA=txns.parquet [OUT=verdicts.parquet]
[positional-arguments]
score-file *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    rest=()
    for arg in "$@"; do
        case "$arg" in
            DATA=*) rest+=(--data "${arg#DATA=}") ;;
            OUT=*) rest+=(--out "${arg#OUT=}") ;;
            *) rest+=("$arg") ;;
        esac
    done
    exec {{python}} -m training.score_file "${rest[@]}"

# analyst rules and lists on the rules/lists topics: just rules --help
rules *ARGS:
    {{python}} -m rules.cli {{ARGS}}

# run a rule file over a labelled history: just backtest-rules RULES_FILE DATA=history [options]
[positional-arguments]
backtest-rules RULES *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    rules="$1"; shift; data="{{DATA}}"; rest=()
    for arg in "$@"; do
        case "$arg" in DATA=*) data="${arg#DATA=}" ;; *) rest+=("$arg") ;; esac
    done
    exec {{python}} -m rules.backtest "$rules" --data "$data" "${rest[@]}"

# show the stores of a stopped flow's state directory
inspect-state DIR:
    {{python}} -m state.inspect {{DIR}}

# Evidently drift report (HTML): the model's training reference vs the flow's scored samples
drift-report *ARGS:
    {{python}} -m training.drift_report {{ARGS}}

# benchmark on the embedded broker: bench/results.json + bench/RESULTS.md (--quick: ~3 min)
bench *ARGS:
    {{python}} bench/run.py {{ARGS}}

# chaos tier (~15 min): kill -9 x10 over 100k transactions, paused/replaced broker, bad models...
chaos *ARGS:
    FRAUD_CHAOS=full {{python}} -m pytest tests/chaos {{ARGS}}

# regenerate the locks from pyproject.toml: everything (dev, CI) and runtime only (image)
lock:
    uv pip compile pyproject.toml --extra dev --python-version 3.11 --quiet --output-file requirements.lock
    uv pip compile pyproject.toml --python-version 3.11 --quiet --output-file requirements-runtime.lock
