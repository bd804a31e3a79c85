"""bench/markdown.py: a scenario's section of docs/benchmarks.md replaces its earlier self and leaves the rest alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def markdown(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # bench's modules import each other by their bare names
    spec = importlib.util.spec_from_file_location("bench_markdown", BENCH / "markdown.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_markdown", module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)  # by its path: "markdown" may be another package on this machine
    return module


def test_a_section_is_appended_once_and_then_replaced_in_place(markdown, tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nfull run\n", encoding="utf-8")
    markdown.put_section(out, "remote", "## Remote\n\nfirst")
    markdown.put_section(out, "remote", "## Remote\n\nsecond")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nfull run\n")
    assert text.count("<!-- bench:remote -->") == 1
    assert "second" in text and "first" not in text


def test_the_sections_of_other_scenarios_are_what_a_full_run_keeps(markdown, tmp_path):
    out = tmp_path / "benchmarks.md"
    markdown.put_section(out, "remote", "## Remote\n\nfigures")
    kept = markdown.kept_sections(out)
    assert kept == ["<!-- bench:remote -->\n## Remote\n\nfigures\n<!-- /bench:remote -->\n"]
    assert markdown.kept_sections(tmp_path / "missing.md") == []
