"""The two shared helpers every door uses: atomic local writes and the one-line error message."""

import pytest

from ots.atomic import atomic_path, write_text
from ots.errors import one_line


def test_atomic_write_replaces_whole_file_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "sub" / "report.json"
    write_text(out, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert out.read_text() == "old"  # the reader still sees the old file
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temp file left behind
    write_text(out, "new")
    assert out.read_text() == "new"


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "grid.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name != "grid.png"
        tmp.write_bytes(b"x")
    assert (tmp_path / "grid.png").read_bytes() == b"x"


def test_one_line_collapses_whitespace_masks_credentials_and_cuts():
    msg = one_line(ValueError("cannot reach\n  http://alice:s3cret@mlflow:5000/api\ttry again"))
    assert msg == "cannot reach http://alice:***@mlflow:5000/api try again"
    assert "s3cret" not in msg and "\n" not in msg
    cut = one_line("x" * 50, limit=10)
    assert len(cut) == 10 and cut.endswith("…")
