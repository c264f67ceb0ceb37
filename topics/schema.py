"""Generate the JSON Schema of every topic contract into ``topics/schemas/``.

``python -m topics.schema`` (``just schemas``) rewrites the files;
``python -m topics.schema --check`` fails when a committed file is stale, or when
the file of an older version is gone (a version bump adds a file, e.g.
``transactions.v2.json``, and keeps ``transactions.v1.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from topics.registry import TOPICS, TopicSpec

SCHEMA_DIR = Path(__file__).parent / "schemas"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_path(spec: TopicSpec) -> Path:
    """Where one topic's schema lives, e.g. ``topics/schemas/transactions.v1.json``."""
    version = getattr(spec.contract, "SCHEMA_VERSION", 1)
    return SCHEMA_DIR / f"{spec.logical}.v{version}.json"


def older_schema_paths(spec: TopicSpec) -> list[Path]:
    """The schema files of a topic's earlier versions, which stay committed."""
    version = getattr(spec.contract, "SCHEMA_VERSION", 1)
    return [SCHEMA_DIR / f"{spec.logical}.v{v}.json" for v in range(1, version)]


def topic_schema(spec: TopicSpec) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one topic's record, with the wire-only alternatives added."""
    schema: dict[str, Any] = msgspec.json.schema(spec.contract)
    name = spec.contract.__name__
    definition = schema["$defs"][name]
    for field in getattr(spec.contract, "WIRE_TIME_FIELDS", ()):
        epoch = definition["properties"][field]
        definition["properties"][field] = {
            "anyOf": [epoch, {"type": "string", "format": "date-time"}],
            "description": "UTC epoch milliseconds (an integer; an integral number such as "
            "1795953540000.0 is the same integer), or an RFC 3339 date-time with an offset "
            "(normalised to epoch ms on decode).",
        }
    definition["description"] = (spec.contract.__doc__ or "").strip().split("\n\n")[0]
    return {
        "$schema": _DIALECT,
        "$id": f"fraudstream/{spec.logical}.v{getattr(spec.contract, 'SCHEMA_VERSION', 1)}",
        "title": f"{spec.logical} record (key: {spec.key})",
        **schema,
    }


def render(spec: TopicSpec) -> str:
    """The exact text committed for one topic's schema."""
    return json.dumps(topic_schema(spec), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) every topic's schema file."""
    parser = argparse.ArgumentParser(prog="python -m topics.schema", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a schema file is missing or stale"
    )
    args = parser.parse_args(argv)
    stale = []
    missing = [p for spec in TOPICS.values() for p in older_schema_paths(spec) if not p.exists()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        print(f"schema files of older versions are gone: {names}; restore them from git "
              "(consumers of those versions still read them)", file=sys.stderr)
        return 1
    for spec in TOPICS.values():
        path = schema_path(spec)
        text = render(spec)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        names = ", ".join(str(p) for p in stale)
        print(f"stale schema files: {names}; run `just schemas` and commit them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
