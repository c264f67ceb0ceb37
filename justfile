# Recipes for development. Run through ./dev on a fresh machine (it builds .venv first).
set dotenv-load := false

python := "python"
# the labelled history `just train` reads (override: just train DATA=path)
DATA := "data/history.parquet"

# list the recipes
default:
    @just --list --unsorted

# the end-to-end demo on the embedded broker (see README: Quick start)
[positional-arguments]
demo *ARGS:
    @{{python}} -m demo "$@"

# lint, types and every test tier (unit, flow, integration); the CI command
[positional-arguments]
test *ARGS: lint types
    @{{python}} -m pytest "$@"

# only the fast, pure tests
[positional-arguments]
test-unit *ARGS:
    @{{python}} -m pytest tests/unit topics state export training flows rules devkit demo "$@"

# ruff: pyflakes, pycodestyle, isort, bugbear, docstrings
lint:
    @{{python}} -m ruff check .

# mypy on the packages
types:
    @{{python}} -m mypy

# regenerate topics/schemas/*.json from the contracts (and the ISO 4217 / rate table check)
schemas:
    @{{python}} -m topics.schema
    @{{python}} -m topics.currency --check

# run a development broker in the foreground (Tansu, memory only)
[positional-arguments]
broker *ARGS:
    @exec {{python}} -m devkit.broker "$@"

# run a real Apache Kafka broker (KRaft, single node, jars from Maven Central) in the foreground
[positional-arguments]
kafka *ARGS:
    @exec {{python}} -m devkit.apache_kafka "$@"

# create every topic of the registry, idempotently
[positional-arguments]
topics *ARGS:
    @{{python}} -m devkit.topics "$@"

# produce transactions (synthetic or from a file); --help for options
[positional-arguments]
produce *ARGS:
    @{{python}} -m devkit.produce "$@"

# print records of a topic; --help for options
[positional-arguments]
tail TOPIC *ARGS:
    @{{python}} -m devkit.tail "$@"

# publish fraud labels from a CSV, Parquet or JSON-lines file; --help for options
[positional-arguments]
labels FILE *ARGS:
    @{{python}} -m devkit.labels "$@"

# simulate a labelled history (Parquet) with fraud scenarios
[positional-arguments]
simulate *ARGS:
    @{{python}} -m training.simulate "$@"

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

# gate and publish the ONNX model `just train` handed over (runs/train/handover/; never unpickles)
[positional-arguments]
export-onnx *ARGS:
    @{{python}} -m export.release "$@"

# list published model versions: state, gate outcome, test metrics
[positional-arguments]
models *ARGS:
    @{{python}} -m export.cli models "$@"

# make VERSION the champion after its gates (audited; the running flow hot-reloads)
[positional-arguments]
promote VERSION *ARGS:
    @{{python}} -m export.cli promote "$@"

# make the previous champion current again (audited)
[positional-arguments]
rollback *ARGS:
    @{{python}} -m export.cli rollback "$@"

# make VERSION the shadow challenger (scored beside the champion, never decides)
[positional-arguments]
shadow VERSION *ARGS:
    @{{python}} -m export.cli shadow "$@"

# governance commands in full (gates, audit, ...): just governance --help
[positional-arguments]
governance *ARGS:
    @{{python}} -m export.cli "$@"

# a labelled history from the topics (transactions + labels known as of a time)
[positional-arguments]
history *ARGS:
    @{{python}} -m training.history_export "$@"

# export the history from the topics, train, gate and publish a candidate
[positional-arguments]
retrain *ARGS:
    @{{python}} -m training.retrain "$@"

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
[positional-arguments]
rules *ARGS:
    @{{python}} -m rules.cli "$@"

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
    @{{python}} -m state.inspect {{DIR}}

# Evidently drift report (HTML): the model's training reference vs the flow's scored samples
[positional-arguments]
drift-report *ARGS:
    @{{python}} -m training.drift_report "$@"

# benchmark on both brokers: bench/results.json + bench/RESULTS.md, bench/kafka/ (--quick: ~4 min; --help)
[positional-arguments]
bench *ARGS:
    @{{python}} bench/run.py "$@"

# where the scoring flow's time goes: py-spy over a 200,000-transaction backlog (runs/profile; --help)
[positional-arguments]
profile *ARGS:
    @{{python}} bench/profile_flow.py "$@"

# our scoring flow vs the same job in Quix Streams, batched and per-message ONNX (issue 21; its own .venv-quix): bench/quix/RESULTS.md; --help
[positional-arguments]
bench-quix *ARGS:
    @{{python}} bench/quix/compare.py "$@"

# a 200,000-transaction, 60-day labelled backlog streamed by 1 and 2 processes equals just score-file (~3 min)
[positional-arguments]
backlog *ARGS:
    @FRAUD_BACKLOG=full {{python}} -m pytest tests/integration/test_backlog.py "$@"

# issue 25 on Apache Kafka: 100,000 labelled transactions by 2, then 3, then 4 processes on fresh volumes, then one volume lost; every score equals offline replay (changelogs on)
[positional-arguments]
rescale *ARGS:
    @FRAUD_RESCALE=full FRAUD_TEST_BROKER=kafka {{python}} -m pytest tests/integration/test_rescale.py tests/integration/test_changelog_flow.py "$@"

# chaos tier (~8 min): kill -9 x10 over 100k transactions, a crash loop (8 kills 4 s after start), paused/replaced/lost broker, bad models, signals
[positional-arguments]
chaos *ARGS:
    @FRAUD_CHAOS=full {{python}} -m pytest tests/chaos "$@"

# the integration and chaos tiers' telling tests on a real Apache Kafka broker (~12 min): scoring, kill -9, stops, input watch, rules and lists, the handed cases
[positional-arguments]
test-kafka *ARGS:
    @FRAUD_TEST_BROKER=kafka FRAUD_CHAOS=full CHAOS_TRANSACTIONS=20000 {{python}} -m pytest tests/integration/test_score_flow.py tests/integration/test_health.py tests/integration/test_rules_flow.py tests/integration/test_cases.py tests/chaos/test_kill9.py tests/chaos/test_operations.py "$@"

# build the image with podman on a Debian base made by mmdebstrap (no Docker, no registry); --help
[positional-arguments]
image *ARGS:
    @{{python}} -m devkit.image build "$@"

# run the image on the embedded broker and on Apache Kafka: verdicts, /ready, clean SIGTERM stop (~4 min)
[positional-arguments]
image-smoke *ARGS:
    @{{python}} -m pytest -m image tests/deploy/test_image.py -s "$@"

# regenerate the locks from pyproject.toml: everything (dev, CI) and runtime only (image)
lock:
    uv pip compile pyproject.toml --extra dev --python-version 3.11 --quiet --output-file requirements.lock
    uv pip compile pyproject.toml --python-version 3.11 --quiet --output-file requirements-runtime.lock
