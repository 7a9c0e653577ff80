"""A node's identity in data_dir: made once, kept, and never empty (gateway.process.startup)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.process.startup import node_id


def test_a_new_data_dir_gets_an_identity_that_stays(tmp_path: Path) -> None:
    first = node_id(tmp_path)
    assert first.startswith("node_")
    assert (tmp_path / "node_id").read_text() == first + "\n"
    assert node_id(tmp_path) == first
    assert [path.name for path in tmp_path.iterdir()] == ["node_id"]  # no draft left


@pytest.mark.parametrize("torn", [b"", b" \n", b"\x00" * 18, b"node_\xff\xfe"])
def test_a_torn_identity_file_is_replaced(tmp_path: Path, torn: bytes) -> None:
    """An earlier release wrote the file in place: a crash could leave it empty or
    NUL-filled, an identity another node could share or the database refuse."""
    (tmp_path / "node_id").write_bytes(torn)
    made = node_id(tmp_path)
    assert made.startswith("node_")
    assert node_id(tmp_path) == made
    assert [path.name for path in tmp_path.iterdir()] == ["node_id"]


def test_a_name_an_operator_gave_is_kept(tmp_path: Path) -> None:
    (tmp_path / "node_id").write_text("mx-1.example.com\n")
    assert node_id(tmp_path) == "mx-1.example.com"
