"""The container image built with podman and run against a broker (devkit/image.py).

``test_image_scores_and_stops_cleanly`` is marked ``image`` and left out of the
default run (pyproject.toml: ``-m "not image"``): it builds the image (the Debian
base once, then ``podman build``, cached layers after the first time: 4-8 minutes
cold, under a minute warm) and runs it. Run it with ``just image-smoke`` or
``python -m pytest -m image tests/deploy/test_image.py -s``. It runs once on the
embedded broker and once on a real Apache Kafka 4.1 (skipped without java and mvn),
and mounts the tiny model the session trains, so a fresh clone needs no published model.

The other tests are fast and pure: what the build and run commands are made of.
"""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

import pytest

from devkit import image
from devkit.image import BaseRecipe, container_args, forwarded_env, model_build_arg
from devkit.image_smoke import STOP_GRACE_S, verdicts_counted
from devkit.podman import Podman, ToolMissingError, pick_runtime, ulimits

# ---- the smoke: real podman, real image, real broker ----

NO_JVM = shutil.which("java") is None or shutil.which("mvn") is None


@pytest.fixture(scope="module")
def built() -> image.BuiltImage:
    """fraudstream:dev built now (cached layers after `just image`: seconds to 2 minutes)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: apt-get install podman mmdebstrap uidmap runc")
    podman = Podman.detect()
    recipe = BaseRecipe.for_host()
    if shutil.which("mmdebstrap") is None and not podman.image_exists(recipe.image):
        pytest.skip("mmdebstrap is not installed (it makes the Debian base): "
                    "apt-get install podman mmdebstrap uidmap runc")
    built = image.build_image(podman, image.make_base(podman, recipe), tag=image.DEFAULT_TAG)
    print(f"\nbuild {built.build_seconds:.0f} s, {built.size_bytes / 1e6:.0f} MB")
    return built


@pytest.mark.image
@pytest.mark.parametrize("broker", [
    "embedded",
    pytest.param("kafka", marks=pytest.mark.skipif(
        NO_JVM, reason="no java/mvn: Apache Kafka's jars come through Maven (just kafka)")),
])
def test_image_scores_and_stops_cleanly(built: image.BuiltImage, tiny_model_dir: Path,
                                        broker: str) -> None:
    from devkit.image_smoke import SmokeOptions, run_smoke

    transactions = 200
    # on Apache Kafka as the ConfigMap runs it: changelogs on, and the restart on a new
    # volume (restored from the changelogs and the recovery-backup topic)
    changelog = broker == "kafka"
    report = run_smoke(Podman.detect(), SmokeOptions(
        image=built.tag, transactions=transactions, model=tiny_model_dir, broker=broker,
        changelog=changelog))
    print("\n" + report.summary())

    assert report.broker == broker
    assert report.verdicts == transactions
    assert report.metrics_verdicts == transactions
    assert report.healthcheck_ok and report.ready_s is not None
    assert report.flow_user not in ("root", "0") and "tini" in report.pid1
    assert report.read_only_root
    assert report.exit_code == 0 and report.stop_s is not None and report.stop_s < STOP_GRACE_S
    assert report.restart_verdicts == transactions and report.restart_exit_code == 0
    assert report.restored is (True if changelog else None)


# ---- what the commands are made of (no podman needed) ----


def test_base_key_changes_with_the_recipe_and_only_then() -> None:
    recipe = BaseRecipe(architecture="amd64")
    assert recipe.key == BaseRecipe(architecture="amd64").key
    assert recipe.key == BaseRecipe(architecture="amd64",
                                    packages=tuple(reversed(recipe.packages))).key
    others = [BaseRecipe(architecture="arm64"), BaseRecipe(architecture="amd64", suite="trixie"),
              BaseRecipe(architecture="amd64", packages=(*recipe.packages, "curl")),
              BaseRecipe(architecture="amd64", mirror="http://mirror.example/debian")]
    assert len({recipe.key, *(o.key for o in others)}) == 5
    assert recipe.image.endswith(":" + recipe.key) and recipe.key in recipe.tarball.name


def test_base_has_what_the_dockerfile_runs() -> None:
    """The build stage calls `python` and `python -m venv`; the runtime stage runs it."""
    text = image.DOCKERFILE.read_text()
    assert "RUN python -m venv" in text
    assert {"python3", "python3-venv", "python-is-python3", "ca-certificates"} <= set(
        BaseRecipe().packages)


def test_ulimits_never_exceed_the_hard_limits() -> None:
    flags = ulimits()
    values = dict(flag.split("=") for flag in flags[1::2])
    for name, limit in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = (int(v) for v in values[name].split(":"))
        assert soft == hard
        host_hard = resource.getrlimit(limit)[1]
        assert host_hard == resource.RLIM_INFINITY or hard <= host_hard


def test_only_the_flows_variables_go_into_the_container_by_name(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "FRAUD_TOPIC_PREFIX": "p.",
           "FRAUD_KAFKA_SASL_PASSWORD": "hunter2", "HOME": "/root", "PATH": "/bin",
           image.MIRROR_ENV: "http://m/debian", image.CACHE_ENV: "/c"}
    passed = forwarded_env(env)
    assert set(passed) == {"KAFKA_BOOTSTRAP_SERVERS", "FRAUD_TOPIC_PREFIX",
                           "FRAUD_KAFKA_SASL_PASSWORD", "FLOW_PROCESS_ID"}
    assert passed["FLOW_PROCESS_ID"] == "0"  # the host's name tells fraud-flow.sh nothing
    assert forwarded_env({"FLOW_PROCESS_ID": "3"})["FLOW_PROCESS_ID"] == "3"
    args = container_args("img:1", name="n", volume="v", env_names=sorted(passed),
                          model=tmp_path, detach=True)
    assert "hunter2" not in " ".join(args)  # values come from podman's environment
    assert args[args.index("FRAUD_KAFKA_SASL_PASSWORD") - 1] == "--env"
    assert {"--read-only", "--detach"} <= set(args) and args[-1] == "img:1"
    assert args[args.index("--network") + 1] == "host"
    assert f"{tmp_path.resolve()}:/app/models/current:ro" in args
    assert "v:/data" in args
    assert "/app/models/current" not in " ".join(
        container_args("img:1", name="n", volume="v", env_names=[], model=None, detach=False))


def test_model_build_arg_resolves_links_inside_models_only(tmp_path: Path) -> None:
    models = image.ROOT / "models"
    current = models / "current"
    if (current / "model.onnx").is_file():
        assert model_build_arg(current) == f"models/{current.resolve().name}"
    outside = tmp_path / "m"
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"x")
    with pytest.raises(image.BuildError, match="only lets models/ in"):
        model_build_arg(outside)
    with pytest.raises(image.BuildError, match="just train"):
        model_build_arg(tmp_path)


def test_runtime_choice_and_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ToolMissingError, match="apt-get install"):
        pick_runtime({})
    with pytest.raises(ToolMissingError, match="apt-get install podman mmdebstrap uidmap"):
        Podman.detect({})
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert pick_runtime({}) == "runc"
    assert pick_runtime({"FRAUDSTREAM_PODMAN_RUNTIME": "crun"}) == "crun"
    with pytest.raises(image.ImageError, match="expected one of runc, crun"):
        pick_runtime({"FRAUDSTREAM_PODMAN_RUNTIME": "kata"})
    argv = Podman("/usr/bin/podman", "crun", "vfs").command("ps")
    assert argv[-1] == "ps" and argv[argv.index("--runtime") + 1] == "crun"
    assert argv[argv.index("--cgroup-manager") + 1] == "cgroupfs"
    assert argv[argv.index("--storage-driver") + 1] == "vfs"


def test_verdicts_counted_sums_every_label_set() -> None:
    text = (
        "# HELP fraud_verdicts_total Verdicts produced.\n"
        "# TYPE fraud_verdicts_total counter\n"
        'fraud_verdicts_total{decision="approve",model_version="v1"} 190.0\n'
        'fraud_verdicts_total{decision="decline",model_version="v1"} 10.0\n'
        'fraud_verdicts_created{decision="approve",model_version="v1"} 1.7e+09\n'
        "fraud_transactions_in_total 200.0\n"
    )
    assert verdicts_counted(text) == 200.0
    assert verdicts_counted("") == 0.0


def test_build_progress_shows_steps_of_every_stage_and_errors() -> None:
    show = image._show_build_line
    assert show("[1/2] STEP 7/20: RUN pip install --only-binary=:all: ...")
    assert show("STEP 3/5: COPY . /src") and show("Error: building at STEP \"RUN ...\"")
    assert not show("--> a3daab68f17") and not show("  Downloading numpy-2.3.5.whl (16 MB)")
