"""Build and run the scoring flow's image (``docker/Dockerfile``) with podman, no registry.

``python -m devkit.image build`` (``just image``) does it in two steps:

1. **Base.** ``docker/Dockerfile`` starts ``FROM ${PYTHON_IMAGE}``. Instead of
   ``python:3.11-slim-bookworm`` from Docker Hub, the base is made here from Debian
   packages: ``mmdebstrap --variant=minbase --include=<BASE_PACKAGES> bookworm``
   (Debian 12's Python 3.11, the version of the lock) into a tarball, imported with
   ``podman import`` as ``localhost/fraudstream-base:<key>``. The key is a hash of
   that recipe (suite, variant, packages, mirror, architecture): the tarball is
   kept in :func:`cache_dir` (outside the repository) and built once per recipe;
   ``--rebuild-base`` makes it again (Debian point releases). 225 MB; 3.5-4.5 minutes
   on the 2-core development machine.
2. **Image.** ``podman build -f docker/Dockerfile --format docker`` (the Docker
   format keeps ``HEALTHCHECK``, which OCI images drop) with
   ``--build-arg PYTHON_IMAGE=<base>``, tagged ``fraudstream:dev`` (the image the tag
   named before is removed unless something else uses it). The build's
   ``RUN`` steps see this host's CA bundle read-only in place of the base's
   (Debian's pip trusts the system bundle), so pip reaches PyPI through a proxy
   that the host trusts; the bundle is not stored in the image. ``--model DIR``
   bakes a published model in (``--build-arg MODEL_DIR``); without it the image
   holds none and ``/app/models/current`` must be mounted. 1.7 GB; 7.5 minutes cold
   on the 2-core machine under load, about 2 minutes when only the project's code
   changed (the dependency layer is cached).

podman runs with runc: Debian 12's crun refuses this VM's hybrid cgroup layout
(:mod:`devkit.podman`), which the build reports with the remedy.

Whole output goes to ``.dev/image/*.log``; stderr shows the steps with the
elapsed time. podman's configuration comes from flags (:mod:`devkit.podman`),
never from ``/etc``.

``python -m devkit.image run`` runs the image in the foreground against a broker
(``--network host``: ``127.0.0.1`` is the host's loopback), the model mounted
read-only, state in a named volume, on a read-only root file system, as process 0
(``FLOW_PROCESS_ID=0``: the host's name cannot tell docker/fraud-flow.sh one).
``python -m devkit.image smoke`` is the end-to-end check of :mod:`devkit.image_smoke`.

Errors are :class:`~devkit.podman.ImageError` subclasses whose message says what to do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devkit.podman import (
    INSTALL_HINT,
    RUNTIME_ENV,
    ImageError,
    Podman,
    PodmanError,
    require_tool,
    ulimits,
)
from topics.devbroker import dev_dir
from topics.errors import FraudStreamError
from topics.settings import BOOTSTRAP_ENV, ENV_PREFIX

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DEFAULT_TAG = "fraudstream:dev"
BASE_REPOSITORY = "localhost/fraudstream-base"
SUITE = "bookworm"
VARIANT = "minbase"
#: python3 (3.11), venv for the build stage's /opt/venv, the `python` command the
#: Dockerfile's RUN steps call (the python:*-slim images have it; Debian's python3 does not),
#: CA certificates for apt and pip over TLS.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Bump when the base recipe changes in a way the key does not see.
BASE_FORMAT = 1
MIRROR_ENV = "FRAUDSTREAM_DEBIAN_MIRROR"
CACHE_ENV = "FRAUDSTREAM_IMAGE_CACHE"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Where the image reads its model, keeps state, and its user (docker/Dockerfile).
MODEL_MOUNT = "/app/models/current"
DATA_MOUNT = "/data"
IMAGE_UID = 10001
#: docker/fraud-flow.sh's variables (process id, addresses, recovery, snapshots).
FLOW_PREFIX = "FLOW_"
#: This module's own variables: never forwarded into a container.
OWN_VARIABLES = frozenset({MIRROR_ENV, CACHE_ENV})


class BaseImageError(ImageError):
    """The Debian base could not be made (mmdebstrap) or imported."""


class BuildError(ImageError):
    """``podman build`` of docker/Dockerfile failed."""


def cache_dir() -> Path:
    """Where base tarballs are kept: ``$FRAUDSTREAM_IMAGE_CACHE``, else the per-user cache."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fraudstream" / "image-base"


def log_dir() -> Path:
    """Where build logs go: ``.dev/image/``."""
    return dev_dir() / "image"


@dataclass(frozen=True)
class BaseRecipe:
    """What the Debian base is made from; its :attr:`key` names the tarball and the image tag."""

    suite: str = SUITE
    variant: str = VARIANT
    packages: tuple[str, ...] = BASE_PACKAGES
    mirror: str = DEFAULT_MIRROR
    architecture: str = ""

    @classmethod
    def for_host(cls, mirror: str | None = None) -> BaseRecipe:
        """The recipe for this machine; ``mirror``, else ``$FRAUDSTREAM_DEBIAN_MIRROR``."""
        chosen = mirror or os.environ.get(MIRROR_ENV, "").strip() or DEFAULT_MIRROR
        return cls(mirror=chosen.rstrip("/"), architecture=_debian_arch())

    @property
    def key(self) -> str:
        """16 hex digits of SHA-256 over the recipe: same recipe, same key, same cached base."""
        text = json.dumps([BASE_FORMAT, self.suite, self.variant, sorted(self.packages),
                           self.mirror, self.architecture])  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def image(self) -> str:
        """The base's local image reference, ``localhost/fraudstream-base:<key>``."""
        return f"{BASE_REPOSITORY}:{self.key}"

    @property
    def tarball(self) -> Path:
        """The cached root file system, ``<cache>/<suite>-<key>.tar``."""
        return cache_dir() / f"{self.suite}-{self.key}.tar"


def _debian_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(machine, machine)


def check_mirror(mirror: str, suite: str = SUITE, timeout: float = 15.0) -> None:
    """Raise :class:`BaseImageError` unless ``<mirror>/dists/<suite>/InRelease`` answers."""
    url = f"{mirror}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http mirror)
            response.read(64)
    except (urllib.error.URLError, OSError) as exc:
        raise BaseImageError(
            f"cannot reach the Debian mirror {url}: {exc}. The base image is made from Debian "
            f"packages: give this machine network access to it, or point {MIRROR_ENV} "
            "(--mirror) at a reachable Debian mirror"
        ) from exc


def make_base(podman: Podman, recipe: BaseRecipe, *, rebuild: bool = False) -> str:
    """Make (once per recipe key) and import the Debian base; return its image reference.

    Steps skipped when already done: the image exists in podman's storage; the
    tarball exists in the cache. Raises :class:`BaseImageError` (mirror unreachable,
    mmdebstrap failed, import failed) and :class:`~devkit.podman.ToolMissingError`.
    """
    if not rebuild and podman.image_exists(recipe.image):
        _say(f"base {recipe.image} already imported (recipe key {recipe.key})")
        return recipe.image
    tarball = recipe.tarball
    if rebuild or not tarball.is_file():
        mmdebstrap = require_tool("mmdebstrap", "it makes the Debian base image")
        check_mirror(recipe.mirror, recipe.suite)
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        partial.unlink(missing_ok=True)
        argv = [mmdebstrap, f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
                f"--architectures={recipe.architecture}", recipe.suite, str(partial),
                recipe.mirror]  # fmt: skip
        _say(f"making the Debian base with mmdebstrap ({recipe.suite}, {recipe.variant}, "
             f"{', '.join(recipe.packages)}); once per recipe, about 4 minutes")  # fmt: skip
        try:
            seconds = podman.stream(
                (), log_dir() / "base.log", what="mmdebstrap", argv=argv,
                show=lambda line: line.startswith(("I: ", "E: ", "W: ")),
                remedy=f"check the network to {recipe.mirror} ({MIRROR_ENV} picks another "
                       "mirror); mmdebstrap needs root, or uidmap with subuids for unshare mode",
            )  # fmt: skip
        except PodmanError as exc:
            partial.unlink(missing_ok=True)
            raise BaseImageError(str(exc)) from exc
        partial.rename(tarball)
        _say(f"base root file system {tarball} ({tarball.stat().st_size / 1e6:.0f} MB) "
             f"in {seconds:.0f} s")  # fmt: skip
    else:
        _say(f"base tarball cached: {tarball}")
    try:
        podman.run("import", "--change", "ENV LANG=C.UTF-8",
                   "--change", f"LABEL org.fraudstream.base-key={recipe.key}",
                   str(tarball), recipe.image, timeout=600)  # fmt: skip
    except PodmanError as exc:
        raise BaseImageError(f"podman import of {tarball} failed: {exc}; delete the tarball "
                             "and run again to make it afresh") from exc  # fmt: skip
    _say(f"imported {recipe.image}")
    return recipe.image


def model_build_arg(model: Path) -> str:
    """``MODEL_DIR`` for the build: ``model`` as a real directory relative to the repository.

    Symbolic links are resolved (``models/current`` -> ``models/v2-...``). Raises
    :class:`BuildError` if it is not a directory holding ``model.onnx`` inside
    ``models/`` (the build context lets only ``models/`` in: Dockerfile.dockerignore).
    """
    real = (model if model.is_absolute() else ROOT / model).resolve()
    if not (real / "model.onnx").is_file():
        raise BuildError(f"{model}: no model.onnx there; publish one first "
                         "(just train && just export-onnx) or build without --model")  # fmt: skip
    try:
        relative = real.relative_to(ROOT / "models")
    except ValueError as exc:
        raise BuildError(f"{model} resolves to {real}, outside {ROOT / 'models'}: the build "
                         "context only lets models/ in; publish the model there") from exc
    return f"models/{relative}"


@dataclass(frozen=True)
class BuiltImage:
    """A built image: its tag, id, size in bytes, and the build's wall-clock seconds."""

    tag: str
    image_id: str
    size_bytes: int
    build_seconds: float


#: ``[1/2] STEP 3/20: RUN ...`` (multi-stage) or ``STEP 3/20: ...``
_STEP = re.compile(r"^(\[\d+/\d+\] )?STEP \d+/\d+")


def _show_build_line(line: str) -> bool:
    return bool(_STEP.match(line)) or line.startswith(
        ("COMMIT", "Successfully tagged", "Collecting ", "Error", "error:", "ERROR"))


def build_image(podman: Podman, base: str, *, tag: str = DEFAULT_TAG,
                model: Path | None = None) -> BuiltImage:
    """``podman build`` docker/Dockerfile on ``base``; return the image built.

    Raises :class:`BuildError` with the end of the build log (``.dev/image/build.log``).
    """
    args = ["build", "--file", str(DOCKERFILE), "--format", "docker", "--tag", tag,
            "--build-arg", f"PYTHON_IMAGE={base}", "--network", "host", *ulimits()]  # fmt: skip
    if model is not None:
        args += ["--build-arg", f"MODEL_DIR={model_build_arg(model)}"]
    if HOST_CA_BUNDLE.is_file():
        args += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    args.append(str(ROOT))
    previous = podman.run("image", "inspect", tag, "--format", "{{.Id}}",
                          check=False).stdout.strip()  # fmt: skip
    _say(f"building {tag} from {DOCKERFILE.relative_to(ROOT)} on {base} "
         f"(runtime {podman.runtime}; 5-8 minutes cold, ~2 with cached dependencies)")  # fmt: skip
    try:
        seconds = podman.stream(
            args, log_dir() / "build.log", what="build", show=_show_build_line,
            remedy="a pip error: check that this machine reaches PyPI and that "
                   f"{HOST_CA_BUNDLE} holds the CAs it needs; an apt error: check the "
                   "network to the Debian mirror",
        )  # fmt: skip
    except PodmanError as exc:
        if "cgroups in hybrid mode" in str(exc):
            raise BuildError(
                f"{exc}\ncrun cannot run containers on this host's hybrid (v1 + v2) cgroup "
                f"layout: install runc (apt-get install runc); it is picked over crun, or set "
                f"{RUNTIME_ENV}=runc") from exc
        raise BuildError(str(exc)) from exc
    image_id, size = podman.output("image", "inspect", tag, "--format", "{{.Id}} {{.Size}}").split()
    built = BuiltImage(tag, image_id, int(size), seconds)
    if previous and previous != image_id:
        # the image this tag named before, now untagged (1-2 GB): removed unless in use or
        # still tagged otherwise. The build stage's layers stay: they are the build cache.
        podman.run("rmi", previous, check=False)
    _say(f"built {tag} ({image_id[:12]}, {built.size_bytes / 1e6:.0f} MB) in {seconds:.0f} s")
    return built


def container_args(image: str, *, name: str, volume: str, env_names: Sequence[str],
                   model: Path | None, detach: bool) -> list[str]:
    """``podman run`` arguments for the flow: host network, read-only root, state volume.

    ``env_names`` are passed with ``--env NAME`` (value from podman's environment, never
    on a command line); ``model`` (a directory) is mounted read-only at
    ``/app/models/current``; None uses the model baked into the image.
    """
    args = ["run", "--name", name, "--network", "host", "--read-only", *ulimits(),
            "--volume", f"{volume}:{DATA_MOUNT}"]  # fmt: skip
    if model is not None:
        args += ["--volume", f"{model.resolve()}:{MODEL_MOUNT}:ro"]
    for env_name in env_names:
        args += ["--env", env_name]
    if detach:
        args.append("--detach")
    args.append(image)
    return args


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a container gets from ``env``: the broker, ``FRAUD_*`` and ``FLOW_*``.

    ``FLOW_PROCESS_ID`` defaults to ``0`` (one process): with ``--network host`` the
    container's host name is this machine's, from which docker/fraud-flow.sh cannot
    tell a process id (it expects ``fraud-score-<n>``) and exits 2.
    """
    passed = {name: value for name, value in env.items()
              if (name == BOOTSTRAP_ENV or name.startswith((ENV_PREFIX, FLOW_PREFIX)))
              and name not in OWN_VARIABLES}  # fmt: skip
    passed.setdefault("FLOW_PROCESS_ID", "0")
    return passed


def _say(text: str) -> None:
    print(f"image: {text}", file=sys.stderr, flush=True)


# ---- command line ----


def _cmd_build(podman: Podman, args: argparse.Namespace) -> None:
    start = time.monotonic()
    if args.model is not None:
        model_build_arg(args.model)  # refuse a wrong --model before minutes of work
    base = make_base(podman, BaseRecipe.for_host(args.mirror), rebuild=args.rebuild_base)
    build_image(podman, base, tag=args.tag, model=args.model)
    _say(f"done in {time.monotonic() - start:.0f} s; next: just image-smoke, or "
         f"python -m devkit.image run")  # fmt: skip


def _cmd_run(podman: Podman, args: argparse.Namespace) -> None:
    from topics.devbroker import running_dev_broker

    env = forwarded_env(os.environ)
    if BOOTSTRAP_ENV not in env:
        broker = running_dev_broker()
        if broker is None:
            raise ImageError(f"no broker: set {BOOTSTRAP_ENV} (a broker this host reaches), "
                             "or start one with `just broker` or `just kafka`")  # fmt: skip
        env[BOOTSTRAP_ENV] = broker.bootstrap
    if not podman.image_exists(args.tag):
        raise ImageError(f"no image {args.tag}: build it first (just image)")
    model = None if args.baked_model else args.model
    if model is not None and not (model.resolve() / "model.onnx").is_file():
        raise ImageError(f"{model}: no model.onnx; publish one (just train && just export-onnx) "
                         "or use --baked-model with an image built with --model")  # fmt: skip
    run_args = container_args(args.tag, name=args.name, volume=args.volume, env_names=sorted(env),
                              model=model, detach=False)  # fmt: skip
    run_args.insert(1, "--rm")
    if sys.stdin.isatty():
        run_args.insert(1, "--interactive")
        run_args.insert(1, "--tty")
    _say(f"running {args.tag} as {args.name} against {env[BOOTSTRAP_ENV]} "
         f"(state volume {args.volume}); Ctrl-C stops it cleanly")  # fmt: skip
    argv = podman.command(*run_args)
    os.execvpe(argv[0], argv, {**os.environ, **env})


def _cmd_smoke(podman: Podman, args: argparse.Namespace) -> None:
    from devkit.image_smoke import SmokeOptions, run_smoke

    model = None if args.baked_model else args.model
    report = run_smoke(podman, SmokeOptions(image=args.tag, transactions=args.transactions,
                                            model=model, broker=args.broker,
                                            changelog=args.changelog))  # fmt: skip
    print(report.summary())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.image",
        description=(
            "Build and run the scoring flow's container image (docker/Dockerfile) with podman, "
            "without Docker or a container registry: the base is made from Debian packages "
            "with mmdebstrap (once, cached), the rest comes from PyPI."
        ),
        epilog=(
            f"needs: podman, mmdebstrap, uidmap and runc ({INSTALL_HINT}), "
            "network to a Debian mirror and to PyPI. podman runs with --cgroup-manager "
            "cgroupfs, --events-backend file and runc (else crun); FRAUDSTREAM_PODMAN_RUNTIME "
            "and FRAUDSTREAM_PODMAN_STORAGE_DRIVER override; nothing under /etc is changed. "
            f"{CACHE_ENV}: where base tarballs are kept (default {cache_dir()}); logs go to "
            f"{log_dir()}. Exit codes: 0 ok, 1 error (the message says what to do), 130 "
            "interrupted."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build", help="make the Debian base (once) and build the image (just image)",
        description="Make the Debian base with mmdebstrap (cached by recipe), import it, and "
                    "podman-build docker/Dockerfile on it with --format docker.",
    )  # fmt: skip
    build.add_argument("--tag", default=DEFAULT_TAG, help=f"image tag (default {DEFAULT_TAG})")
    build.add_argument(
        "--model", type=Path, default=None, metavar="DIR",
        help="bake this published model into the image (e.g. models/current; a directory "
             "under models/ holding model.onnx); default: none, mount one at run time",
    )  # fmt: skip
    build.add_argument(
        "--mirror", default=None,
        help=f"Debian mirror for the base (default ${MIRROR_ENV} or {DEFAULT_MIRROR})",
    )  # fmt: skip
    build.add_argument("--rebuild-base", action="store_true",
                       help="make the Debian base again (e.g. after a Debian point release)")

    run = commands.add_parser(
        "run", help="run the image in the foreground against a broker on this host",
        description=(
            f"Run the image's own command (tini, then the flow) with --network host, a "
            f"read-only root file system, state in a named volume at {DATA_MOUNT} and the "
            f"model mounted read-only at {MODEL_MOUNT}. {BOOTSTRAP_ENV} and every FRAUD_* and "
            "FLOW_* variable of this shell are passed in by name (values never on a command "
            "line); FLOW_PROCESS_ID defaults to 0. Without "
            f"{BOOTSTRAP_ENV}, the broker of `just broker` is used. Ctrl-C stops it cleanly."
        ),
    )  # fmt: skip
    run.add_argument("--tag", default=DEFAULT_TAG, help=f"image (default {DEFAULT_TAG})")
    run.add_argument("--name", default="fraudstream-flow", help="container name")
    run.add_argument("--volume", default="fraudstream-state",
                     help=f"named volume for {DATA_MOUNT} (state, recovery); kept between runs")
    run.add_argument("--model", type=Path, default=ROOT / "models" / "current", metavar="DIR",
                     help="model directory to mount (default models/current)")
    run.add_argument("--baked-model", action="store_true",
                     help="mount no model: use the one built into the image (build --model)")

    smoke = commands.add_parser(
        "smoke", help="end-to-end check of a built image (just image-smoke)",
        description=(
            "Start a broker (--broker), create the topics, produce transactions, run the image "
            "against them, and check: every transaction gets a verdict, /ready and /metrics "
            "answer, the flow runs as a non-root user on a read-only root file system, and "
            "`podman stop` (SIGTERM to tini, PID 1) ends it with exit 0 within 30 s. Prints "
            "the timings. Exit 1 with the failed check and the container log otherwise."
        ),
    )  # fmt: skip
    smoke.add_argument("--tag", default=DEFAULT_TAG, help=f"image (default {DEFAULT_TAG})")
    smoke.add_argument("--transactions", type=int, default=300,
                       help="how many transactions to score (default 300)")
    smoke.add_argument("--model", type=Path, default=ROOT / "models" / "current", metavar="DIR",
                       help="model directory to mount (default models/current)")
    smoke.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                       help="embedded (Tansu, default) or kafka: a real Apache Kafka 4.1 "
                            "(KRaft) from Maven Central jars, as `just kafka` (needs java, mvn)")
    smoke.add_argument("--baked-model", action="store_true",
                       help="mount no model: check the one built into the image (build --model)")
    smoke.add_argument("--changelog", action="store_true",
                       help="FRAUD_CHANGELOG=on (as the ConfigMap), and the restart on a new, "
                            "empty volume: restored from the changelogs and recovery-backup")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m devkit.image``; returns the exit code."""
    from devkit.cli import run_cli

    args = _parse_args(argv)

    def body() -> None:
        podman = Podman.detect()
        {"build": _cmd_build, "run": _cmd_run, "smoke": _cmd_smoke}[args.command](podman, args)

    return run_cli(body, errors=(FraudStreamError, subprocess.SubprocessError, OSError))


if __name__ == "__main__":
    sys.exit(main())

