"""Every ``mtlrec ...`` command in the README's fenced bash blocks runs as written, on tiny settings: train
commands get ``--set train.epochs=1`` and small data (the built-in default: 2,000 generated rows; Census-Income: the
200-row sample of ../shared/data, skipped with a reason when it is absent), run in a scratch folder in the order
the README gives them, so evaluate / predict / explain find the runs the train commands wrote."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from .conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = SHARED_DATA / "samples" / "census-income.sample"


def readme_commands(text: str) -> list[str]:
    """The ``mtlrec`` commands of the fenced bash blocks, comments dropped, ``a && mtlrec x`` split."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mtlrec"):
                    out.append(part)
    return out


def tiny(argv: list[str], tmp: Path) -> list[str]:
    if argv[:1] != ["train"]:
        return argv
    extra = ["--set", "train.epochs=1", "--quiet"]
    config = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    if config is None:
        extra += ["--set", "data.params.n=2000"]
    elif "census" in config:
        if not SAMPLE.exists():
            pytest.skip(f"needs the Census-Income sample at {SAMPLE} (../shared/data)")
        for k, v in {
            "data_dir": SAMPLE.parent, "train_file": SAMPLE.name, "test_file": SAMPLE.name, "cache_dir": tmp / "cache",
        }.items():  # fmt: skip
            extra += ["--set", f"data.params.{k}={v}"]
    return argv + extra


def test_readme_commands_run_as_written(tmp_path, capsys, monkeypatch):
    from mtlrec.cli import main

    commands = readme_commands((ROOT / "README.md").read_text())
    assert any(c.startswith("mtlrec train configs/") for c in commands), commands
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for command in commands:
        argv = tiny(shlex.split(command)[1:], tmp_path)
        with pytest.raises(SystemExit) as e:
            main(argv)
        out, err = capsys.readouterr()
        assert (e.value.code or 0) == 0, f"{command}: {err[-2000:]}"


def test_readme_extraction():
    text = "```bash\npip install x && mtlrec train   # run it\nmtlrec models\n```\n```python\nmtlrec no\n```"
    assert readme_commands(text) == ["mtlrec train", "mtlrec models"]
