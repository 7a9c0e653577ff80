"""The supervisor's metrics folder: a new one each start, those its data_dir's earlier
supervisors left (killed with SIGKILL) swept, nothing else touched."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from gateway.process.supervisor import fresh_metrics_folder, metrics_prefix


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def test_the_folders_a_killed_supervisor_left_are_swept(tmp_path: Path, temp_dir: Path) -> None:
    data_dir = tmp_path / "var"
    left = Path(tempfile.mkdtemp(prefix=metrics_prefix(data_dir)))
    (left / "counter_123.db").write_bytes(b"x")
    new = Path(fresh_metrics_folder(data_dir))
    assert new.is_dir() and new.name.startswith(metrics_prefix(data_dir))
    assert not left.exists()
    assert list(temp_dir.iterdir()) == [new]


def test_nothing_else_is_touched(tmp_path: Path, temp_dir: Path) -> None:
    data_dir, other_dir = tmp_path / "var", tmp_path / "other"
    others = Path(tempfile.mkdtemp(prefix=metrics_prefix(other_dir)))  # another node's, running
    target = tmp_path / "keep"
    target.mkdir()
    (target / "file").write_text("kept")
    link = temp_dir / (metrics_prefix(data_dir) + "link")
    link.symlink_to(target)  # a link with our name: not followed, not removed
    plain = temp_dir / (metrics_prefix(data_dir) + "file")
    plain.write_text("not a folder")
    new = Path(fresh_metrics_folder(data_dir))
    assert others.is_dir() and link.is_symlink() and plain.is_file()
    assert (target / "file").read_text() == "kept"
    assert sorted(temp_dir.iterdir()) == sorted([others, link, plain, new])


def test_the_name_does_not_depend_on_how_the_folder_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative (to the service's working directory) or through a link: one data_dir, one
    name, so that the next start finds what the last one left."""
    (tmp_path / "var").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "var")
    monkeypatch.chdir(tmp_path)
    name = metrics_prefix(tmp_path / "var")
    assert metrics_prefix(Path("var")) == metrics_prefix(tmp_path / "link") == name
    assert metrics_prefix(tmp_path / "var2") != name
