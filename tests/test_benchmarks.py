"""The benchmark harness's own plumbing (speed itself is measured, never asserted)."""

from __future__ import annotations

from benchmarks.common import best_peak, matmul_peaks, print_table, update_section
from benchmarks.train_step import Args, _command


def test_update_section_replaces_only_between_its_markers(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(
        "intro\n<!-- bench:x -->\nold table\n<!-- /bench:x -->\nafter\n<!-- bench:y -->\nkeep\n<!-- /bench:y -->\n"
    )
    assert update_section("x", "| new |\n", doc)
    assert doc.read_text() == (
        "intro\n<!-- bench:x -->\n| new |\n<!-- /bench:x -->\nafter\n<!-- bench:y -->\nkeep\n<!-- /bench:y -->\n"
    )
    assert update_section("x", "| newer |", doc)  # idempotent shape: runs can rewrite it again and again
    assert "| newer |\n<!-- /bench:x -->" in doc.read_text() and "| new |" not in doc.read_text()
    assert not list(tmp_path.glob("*.tmp")), "written atomically through a temporary file"


def test_update_section_without_markers_changes_nothing(tmp_path, capsys):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("no markers here\n")
    assert not update_section("x", "table", doc)
    assert doc.read_text() == "no markers here\n"
    assert "no <!-- bench:x --> … <!-- /bench:x --> markers" in capsys.readouterr().out


def test_matmul_peaks_measures_every_cpu_path():
    peaks = matmul_peaks(n=64, seconds=0.01)
    assert "fp32 torch.mm" in peaks and all(v > 0 for v in peaks.values())
    name, value = best_peak(peaks)
    assert value == max(peaks.values()) and peaks[name] == value


def test_print_table_uses_headers_and_groups_digits(capsys):
    text = print_table([{"a": 1234567, "b": 0.5, "c": "x"}], ("a", "b", "c"), ("A", "B", "C"))
    assert text.splitlines()[0].split("|")[1].strip() == "A"
    assert "1,234,567" in text and "0.50" in text


def test_command_line_in_the_doc_names_only_what_differs_from_the_defaults():
    assert _command(Args()) == "python -m benchmarks.train_step"
    cmd = _command(Args(cases=("baby",), compile=True, write_doc=False))
    assert cmd == "python -m benchmarks.train_step --cases baby --compile"
