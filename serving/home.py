"""A service home's location and its two API keys.

``--home``, else ``$NEXTWATCH_HOME``, else ``~/.local/share/nextwatch`` (see :mod:`serving.serve`
for what it holds). The keys are ``HOME/api_key`` (the write key: events and users, what the web
page holds) and ``HOME/admin_key`` (catalogue changes, admin calls, and writes), each created with
a random key readable by the owner only, unless the environment gives it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

HOME_ENV = "NEXTWATCH_HOME"
API_KEY_ENV = "NEXTWATCH_API_KEY"
ADMIN_KEY_ENV = "NEXTWATCH_ADMIN_KEY"


def default_home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "nextwatch"


def _key(home: Path, env: str, name: str) -> tuple[str, str]:
    """A key and where it came from: ``$env``, else ``HOME/name`` (created with a random key,
    readable by the owner only)."""
    if os.environ.get(env):
        return os.environ[env], f"${env}"
    path = home / name
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker created it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"key file {path} is empty")
    return key, str(path)


def api_key(home: Path) -> tuple[str, str]:
    """The write key (events and users; the web page's) and where it came from:
    ``$NEXTWATCH_API_KEY``, else ``HOME/api_key``."""
    return _key(home, API_KEY_ENV, "api_key")


def admin_key(home: Path) -> tuple[str, str]:
    """The admin key (``POST /v1/items``, ``POST /v1/admin/reload``, and writes) and where it
    came from: ``$NEXTWATCH_ADMIN_KEY``, else ``HOME/admin_key``. The web page never holds it."""
    return _key(home, ADMIN_KEY_ENV, "admin_key")
