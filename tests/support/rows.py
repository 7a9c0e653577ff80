"""Rows of an in-process Service's database, read straight from the SQLite file with the
stdlib driver, in a thread: independent of how the product wraps its database, and never on
the Service's loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gateway.process.service import Service
from tests.support.service import wait_until


def _database_path(svc: Service) -> Path:
    return Path(svc.config.server.data_dir) / "postern.db"


async def query(svc: Service, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of one read-only query against the Service's SQLite database."""
    path = _database_path(svc)

    def run() -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    return await asyncio.to_thread(run)


async def message_row(svc: Service, message_id: str) -> dict[str, Any] | None:
    rows = await query(svc, "SELECT * FROM message WHERE id = ?", message_id)
    return rows[0] if rows else None


async def all_messages(svc: Service) -> list[dict[str, Any]]:
    return await query(svc, "SELECT * FROM message ORDER BY created_at")


async def recipient_rows(svc: Service, message_id: str) -> dict[str, dict[str, Any]]:
    rows = await query(svc, "SELECT * FROM recipient WHERE message_id = ?", message_id)
    return {row["email"]: row for row in rows}


async def has_body(svc: Service, message_id: str) -> bool:
    rows = await query(svc, "SELECT 1 FROM message_body WHERE message_id = ?", message_id)
    return bool(rows)


async def suppression_reason(svc: Service, email: str) -> str | None:
    rows = await query(svc, "SELECT reason FROM suppression WHERE email = ?", email)
    return rows[0]["reason"] if rows else None


async def wait_for_status(
    svc: Service, message_id: str, statuses: set[str], timeout: float = 8.0
) -> dict[str, Any]:
    """The message row once its status is one of `statuses` (assertion error on timeout)."""

    async def reached() -> dict[str, Any] | None:
        row = await message_row(svc, message_id)
        return row if row is not None and row["status"] in statuses else None

    row = await wait_until(reached, timeout=timeout)
    if not row:
        last = await message_row(svc, message_id)
        raise AssertionError(f"{message_id} never reached {sorted(statuses)}; last row: {last}")
    return row
