"""The demos' output: one table row per mode, the identity line, and the same as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (column title, row key, format) for each column of a demo table.
Column = tuple[str, str, str]


def report(
    title: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]], *, identical_line: str,
    identical: bool, header: dict[str, Any], json_path: Path | None,
) -> dict[str, Any]:
    """Print ``title``, the table and ``identical_line: yes|NO``; write the result to ``json_path``; return it.

    Keys of a row that start with ``_`` (raw tokens kept for the comparison)
    stay out of the JSON. ``header`` holds the result's other fields (the
    options the demo ran with).
    """
    heading = " | ".join(name for name, _, _ in columns)
    print(title)
    print(heading)
    print("-" * len(heading))
    for row in rows:
        print(" | ".join("–" if row[key] is None else fmt.format(row[key]) for _, key, fmt in columns))
    print(f"{identical_line}: {'yes' if identical else 'NO'}")
    result = {
        **header,
        "rows": [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows],
        "identical": identical,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
