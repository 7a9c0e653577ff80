"""People: users, their passwords and roles, and their sessions (what a browser logs in to;
machines keep using API keys)."""
