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
    assert (data_dir / METRICS_NOTE).read_text() == f"{first} {identity(data_dir)}\n"
    other = Path(tempfile.mkdtemp(prefix=METRICS_PREFIX))  # another node's, running
    second = Path(fresh_metrics_folder(data_dir))  # the next start, after a SIGKILL
    assert not first.exists()
    assert sorted(temp_dir.iterdir()) == sorted([other, second])
    remove_metrics_folder(data_dir, str(second))  # a clean stop
    assert list(temp_dir.iterdir()) == [other] and not (data_dir / METRICS_NOTE).exists()


def identity(data_dir: Path) -> str:
    found = os.stat(data_dir)
    return f"{found.st_dev}:{found.st_ino}"


@pytest.mark.parametrize("named", ["link", "file", "foreign", "not ours by name", "a copy's"])
def test_what_is_not_our_folder_is_kept(
    named: str, data_dir: Path, temp_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note names what it names: a link (not followed; rmtree would refuse it too), a
    file, a folder of another user's, one not named as ours are all left where they are;
    and a note copied with its data_dir (cp -a, rsync) names the original's folder, which
    may be in use: kept too."""
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
    elif named == "a copy's":
        path.mkdir()
    else:
        path = target
    written_for = identity(tmp_path) if named == "a copy's" else identity(data_dir)
    (data_dir / METRICS_NOTE).write_text(f"{path} {written_for}\n")
    new = Path(fresh_metrics_folder(data_dir))
    assert os.path.lexists(path) and (target / "file").read_text() == "kept"
    assert new.is_dir() and new != path


def test_a_missing_or_unreadable_note_is_no_error(data_dir: Path, temp_dir: Path) -> None:
    assert Path(fresh_metrics_folder(data_dir)).is_dir()  # no note yet
    (data_dir / METRICS_NOTE).write_bytes(b"\xff\x00 not a path")
    assert Path(fresh_metrics_folder(data_dir)).is_dir()
