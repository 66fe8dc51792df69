"""docs/reliability.md's "Probe case -> CI test" table cannot rot: every case of the probe (the registered cases
of usclf/studies/probe_cases.py and probe_sr.py, and the rows of docs/reliability_probe.csv) has a row, no row
names a case that is gone, and every `tests/FILE.py::test_name` in it is a test function defined in that file."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Probe case -> CI test"
REF = re.compile(r"^(tests/[\w/]+\.py)::(test_\w+)$")


def _table() -> dict[str, list[str]]:
    """case -> the `file::function` references of its row."""
    text = (REPO / "docs" / "reliability.md").read_text()
    assert SECTION in text, f"docs/reliability.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.startswith("| ")]
    assert rows and [c.strip() for c in rows[0].strip("|").split("|")][:2] == ["case", "test"], rows[:1]
    table: dict[str, list[str]] = {}
    for ln in rows[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        assert cells[0] not in table, f"case {cells[0]} has two rows"
        table[cells[0]] = [t.strip() for t in cells[1].split(",") if t.strip()]
    return table


def _test_functions(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")}


def test_every_probe_case_has_a_row_and_no_row_is_stale():
    from usclf.studies import probe_run  # noqa: F401 - importing it registers every case module
    from usclf.studies.probe_hardening import CASES

    table = _table()
    csv_cases = pd.read_csv(REPO / "docs" / "reliability_probe.csv")["case"].tolist()
    assert len(csv_cases) == len(set(csv_cases))
    assert set(CASES) == set(csv_cases), ("the probe's cases and its last report differ: rerun the probe",
                                          set(CASES) ^ set(csv_cases))
    missing = [c for c in csv_cases if c not in table]
    assert not missing, f"probe cases without a CI test in docs/reliability.md: {missing}"
    stale = sorted(set(table) - set(csv_cases))
    assert not stale, f"rows for cases the probe no longer has: {stale}"


def test_every_named_test_exists_in_its_file():
    functions: dict[str, set[str]] = {}
    for case, refs in _table().items():
        assert refs, f"{case}: no test named"
        for ref in refs:
            m = REF.match(ref)
            assert m, f"{case}: {ref!r} is not tests/FILE.py::test_name"
            path = REPO / m[1]
            assert path.is_file(), f"{case}: {m[1]} does not exist"
            if m[1] not in functions:
                functions[m[1]] = _test_functions(path)
            assert m[2] in functions[m[1]], f"{case}: {m[1]} defines no {m[2]}"
