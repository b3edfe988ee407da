"""The benchmark scripts end a user mistake as the CLI does: one ``error:`` line, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import census_precision  # noqa: E402
from common import run_script  # noqa: E402


def _bad_override():
    return census_precision.main(["--models", "mmoe", "--set", "model_defaults.bogus=1", "--runs-dir", "unused"])


def test_a_script_reports_a_config_mistake_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("MTLREC_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_script(_bad_override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model_defaults.bogus" in err[0], err


def test_mtlrec_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("MTLREC_DEBUG", "1")
    with pytest.raises(SystemExit):
        run_script(_bad_override)
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_every_script_with_an_entry_point_goes_through_run_script():
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text()
        if 'if __name__ == "__main__":' in text:
            entry = text.split('if __name__ == "__main__":', 1)[1]
            assert "run_script(main)" in entry, path.name
