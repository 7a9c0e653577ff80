"""Where the data lives: data_dir and the database URL. No SQLAlchemy here: the supervisor
(gateway.process.supervisor) prepares data_dir and names the database but opens none."""

from __future__ import annotations

from pathlib import Path

__all__ = ["database_url", "prepare_data_dir"]


def prepare_data_dir(data_dir: Path) -> None:
    """Create data_dir private to this user: it holds message bodies and the secret key."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if data_dir.stat().st_mode & 0o077:
        data_dir.chmod(0o700)


def database_url(url: str, data_dir: Path) -> str:
    """The SQLAlchemy URL: the configured one, or SQLite in data_dir."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url:
        return url
    return f"sqlite:///{(data_dir / 'postern.db').resolve()}"
