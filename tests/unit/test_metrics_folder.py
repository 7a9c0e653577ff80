"""The supervisor's metrics folder: a new one each start, named in data_dir, and the one
an earlier supervisor of that data_dir named there (killed with SIGKILL, it left it)
removed first; nothing else touched."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from gateway.process.supervisor import (
    METRICS_NOTE,
    METRICS_PREFIX,
    fresh_metrics_folder,
    remove_metrics_folder,
)


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


def test_the_folder_a_killed_supervisor_left_is_removed(data_dir: Path, temp_dir: Path) -> None:
    first = Path(fresh_metrics_folder(data_dir))
    (first / "counter_123.db").write_bytes(b"x")
    assert (data_dir / METRICS_NOTE).read_text() == f"{first}\n"
    other = Path(tempfile.mkdtemp(prefix=METRICS_PREFIX))  # another node's, running
    second = Path(fresh_metrics_folder(data_dir))  # the next start, after a SIGKILL
    assert not first.exists()
    assert sorted(temp_dir.iterdir()) == sorted([other, second])
    remove_metrics_folder(data_dir, str(second))  # a clean stop
    assert list(temp_dir.iterdir()) == [other] and not (data_dir / METRICS_NOTE).exists()


@pytest.mark.parametrize("named", ["link", "file", "foreign", "not ours by name"])
def test_what_is_not_our_folder_is_kept(
    named: str, data_dir: Path, temp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note names what it names: a link (not followed), a file, a folder of another
    user's, one not named as ours are all left where they are."""
    target = tmp_path / "keep"
    target.mkdir()
    (target / "file").write_text("kept")
    path = temp_dir / (METRICS_PREFIX + "x")
    if named == "link":
        path.symlink_to(target)
    elif named == "file":
        path.write_text("not a folder")
    elif named == "foreign":
        path.mkdir()
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    else:
        path = target
    (data_dir / METRICS_NOTE).write_text(f"{path}\n")
    new = Path(fresh_metrics_folder(data_dir))
    assert os.path.lexists(path) and (target / "file").read_text() == "kept"
    assert new.is_dir() and new != path


def test_a_missing_or_unreadable_note_is_no_error(data_dir: Path, temp_dir: Path) -> None:
    assert Path(fresh_metrics_folder(data_dir)).is_dir()  # no note yet
    (data_dir / METRICS_NOTE).write_bytes(b"\xff\x00 not a path")
    assert Path(fresh_metrics_folder(data_dir)).is_dir()
