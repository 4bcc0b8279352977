"""The README's column table ("The run directory") lists exactly the record's fields of
evaluators/record.py (FIELDS: `acc_<arch>` as is), in their order, with their type words."""
import re
from pathlib import Path

from evaluators.record import FIELDS

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = re.compile(r"^\|\s*column\s*\|\s*type\s*\|\s*meaning\s*\|\s*$")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def readme_columns() -> list[tuple[str, str]]:
    """(name, type) of each row of the README's `| column | type | meaning |` table."""
    lines = README.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if HEADER.match(line)]
    assert len(starts) == 1, f"README.md needs exactly one '| column | type | meaning |' table, has {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2:]:          # past the header and its |---| line
        if not line.startswith("|"):
            break
        name, type_, meaning = _cells(line)
        assert meaning, f"column {name} has no meaning in README.md"
        rows.append((name.strip("`"), type_.strip("`")))
    return rows


def test_readme_lists_every_record_field_with_its_type_in_order():
    assert readme_columns() == [(f.name, f.type) for f in FIELDS]
