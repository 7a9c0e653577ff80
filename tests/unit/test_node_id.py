"""A node's identity in data_dir: made once, kept, and never empty (gateway.process.startup)."""

from __future__ import annotations

from pathlib import Path

from gateway.process.startup import node_id


def test_a_new_data_dir_gets_an_identity_that_stays(tmp_path: Path) -> None:
    first = node_id(tmp_path)
    assert first.startswith("node_")
    assert (tmp_path / "node_id").read_text() == first + "\n"
    assert node_id(tmp_path) == first
    assert [path.name for path in tmp_path.iterdir()] == ["node_id"]  # no draft left


def test_an_empty_identity_file_is_replaced(tmp_path: Path) -> None:
    """An earlier release wrote the file in place: a crash could leave it empty, and an
    empty identity could be another node's too."""
    (tmp_path / "node_id").write_text(" \n")
    made = node_id(tmp_path)
    assert made.startswith("node_")
    assert node_id(tmp_path) == made
