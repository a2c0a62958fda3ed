"""merge_outputs streams the CSVs: the same files as reading every row into dicts, and nothing left on failure."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from devkit.synthrun import write_generator_outputs
from kit.client import merge_outputs
from kit.client._output import QUERY_FIELDS, SESSION_FIELDS, _csv_rows


def _dict_roundtrip(paths: list[Path], fields: list[str]) -> str:
    """What the merge wrote before it streamed: csv.DictReader of every file, csv.DictWriter(extrasaction=ignore)."""
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for p in paths:
        with open(p, newline="", encoding="utf-8") as fh:
            w.writerows(csv.DictReader(fh))
    return out.getvalue()


def _streamed(paths: list[Path], fields: list[str]) -> str:
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(fields)
    for p in paths:
        w.writerows(_csv_rows(p, fields))
    return out.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "a,b,c\r\n1,2,3\r\n4,5,6\r\n",  # the kit's own layout
        "c,a,b\r\n3,1,2\r\n",  # another column order
        "a,x,c\r\n1,9,3\r\n",  # a column the merge drops, one it lacks
        "a,b,c\r\n1,2\r\n1,2,3,4\r\n\r\n7,8,9\r\n",  # short and long rows, a blank line
        'a,b,c\r\n"x, ""y""","multi\r\nline",z\r\n',  # quoting survives
        "a,a,c\r\n1,2,3\r\n",  # a repeated column: the last one wins, as in a dict
        "\r\n1,2,3\r\n",  # a blank header line
        "",  # an empty file
    ],
)
def test_streamed_rows_are_what_dict_reader_and_writer_wrote(tmp_path: Path, text: str) -> None:
    f = tmp_path / "x.csv"
    f.write_text(text, newline="")
    fields = ["a", "b", "c"]
    assert _streamed([f, f], fields) == _dict_roundtrip([f, f], fields)


def test_merged_csvs_match_the_dict_merge_byte_for_byte(tmp_path: Path) -> None:
    dirs = write_generator_outputs(tmp_path / "gens", generators=3, sessions=40, tokens=4, think_s=1.0)
    merge_outputs(dirs, tmp_path / "out")
    for name, fields in (("queries.csv", QUERY_FIELDS), ("sessions.csv", SESSION_FIELDS)):
        with open(tmp_path / "out" / name, newline="") as fh:
            assert fh.read() == _dict_roundtrip([d / name for d in dirs], fields)
    state = json.loads((tmp_path / "out" / "histograms.json").read_text())
    assert state["counters"]["sessions_finished"] == 120
    assert state["counters"]["queries_ok"] + state["counters"].get("queries_failed", 0) == 360


@pytest.mark.parametrize("existing", [False, True])
def test_a_csv_damaged_midway_leaves_the_output_folder_as_it_was(tmp_path: Path, existing: bool) -> None:
    dirs = write_generator_outputs(tmp_path / "gens", generators=2, sessions=10, tokens=3, think_s=1.0)
    with open(dirs[1] / "sessions.csv", "ab") as fh:
        fh.write(b"1,\xff\xfe,broken\r\n")  # not UTF-8: found only while the rows stream
    out = tmp_path / "deep" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("earlier")
    with pytest.raises(ValueError, match="sessions.csv: not UTF-8"):
        merge_outputs(dirs, out)
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not (tmp_path / "deep").exists()
