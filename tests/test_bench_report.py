"""mtlrec report: report.md and a self-contained report.html (tables, learning curves and explain plots embedded as
base64 PNG, no external assets) from a bench out folder and from plain run folders."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlrec.bench.report import write_report
from mtlrec.bench.run import run_bench
from mtlrec.errors import UserError
from tests.test_bench_harness import TINY

PNG = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []
        self.links: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag in ("link", "script") or (tag == "a" and a.get("href", "").startswith("http")):
            self.links.append(tag)
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-3:])
        self.open.pop()


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run_bench({**TINY, "seeds": [0]}, out=out, echo=lambda _m: None, command="mtlrec bench tiny.yaml")
    explain = out / "mmoe" / "seed0" / "explain"
    explain.mkdir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.bar(["y1", "y2"], [0.4, 0.6])
    fig.savefig(explain / "gates_y1.png")
    plt.close(fig)
    return out


def test_report_writes_markdown_and_self_contained_html(bench_out: Path, tmp_path: Path):
    md_path, html_path = write_report(bench_out, tmp_path / "rep")
    md = md_path.read_text()
    assert md.startswith("# mtlrec report: tiny") and "mtlrec bench tiny.yaml" in md
    assert "| model | y1 auc |" in md and "MTL gain" in md and "Learning curves" in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) == 3  # two learning curves, one explain plot
    for rel in images:
        assert (tmp_path / "rep" / rel).read_bytes().startswith(PNG)

    page = html_path.read_text()
    parser = _Collect()
    parser.feed(page)
    assert parser.open == [] and {"table", "h1", "h2", "img"} <= set(parser.tags)
    assert len(parser.srcs) == 3 and parser.links == []
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert "mtlrec bench tiny.yaml" in page and "<td>mmoe</td>" in page


def test_report_of_plain_run_folders_and_cli(bench_out: Path, tmp_path: Path):
    (bench_out / "bench.json").rename(bench_out / "bench.json.bak")
    try:
        from mtlrec.cli import app

        res = CliRunner().invoke(app, ["report", str(bench_out), "--out", str(tmp_path / "r")])
        assert res.exit_code == 0, res.output
        md = (tmp_path / "r" / "report.md").read_text()
        assert "| single_task |" in md and "| mmoe |" in md
    finally:
        (bench_out / "bench.json.bak").rename(bench_out / "bench.json")


def test_report_of_a_folder_without_runs_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no run folders"):
        write_report(tmp_path, tmp_path / "r")
