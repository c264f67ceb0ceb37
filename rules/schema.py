"""Generate the JSON Schemas of the ``rules`` and ``lists`` records into ``rules/schemas/``.

``python -m rules.schema`` rewrites the files; ``--check`` exits 1 when one is stale.
It reuses :func:`topics.schema.topic_schema`, so the files look like the topics' schemas.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rules.contracts import LISTS_TOPIC, RULES_TOPIC
from topics.registry import TopicSpec
from topics.schema import render

SCHEMA_DIR = Path(__file__).parent / "schemas"
SPECS: tuple[TopicSpec, ...] = (RULES_TOPIC, LISTS_TOPIC)


def schema_path(spec: TopicSpec) -> Path:
    """Where one topic's schema lives, e.g. ``rules/schemas/rules.v1.json``."""
    return SCHEMA_DIR / f"{spec.logical}.v{getattr(spec.contract, 'SCHEMA_VERSION', 1)}.json"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) the schema files; 1 when one is stale."""
    parser = argparse.ArgumentParser(prog="python -m rules.schema", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for spec in SPECS:
        path, text = schema_path(spec), render(spec)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale schema files: {', '.join(stale)}; run `python -m rules.schema`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
