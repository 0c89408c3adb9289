"""The benchmark harness's own plumbing (speed itself is measured, never asserted)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import best_peak, matmul_peaks, print_table, update_section
from benchmarks.train_step import Args, _command, main


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


@pytest.mark.parametrize(
    "args,message",
    [
        (Args(cases=("babby",)), "unknown case(s) ['babby']; choose from baby, shakespeare-char"),
        (Args(cases=("baby",), precisions=("fp16",)), "unknown precision(s) ['fp16']; choose from fp32, bf16"),
        (Args(device="tpu"), "unknown device 'tpu'; choose from auto, cpu, cuda"),
    ],
    ids=["case", "precision", "device"],
)
def test_bad_arguments_stop_with_one_line_before_any_timing(args, message):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert str(exc.value).startswith(message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(SystemExit) as exc:
        main(Args(device="cuda"))
    assert str(exc.value) == "--device cuda: this machine has no CUDA GPU that PyTorch can use"
