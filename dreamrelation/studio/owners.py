"""Owner keys: who a request belongs to, as stored in the job table and in folder names.

An owner key is HMAC-SHA256(secret, identity), 32 hex digits, where the identity is "user:NAME" for a
logged-in user or "session:HASH" for a browser or gradio_client session, and the secret belongs to this
installation. The identity itself is never stored, so a copy of the job table or a folder listing gives no
one a session hash or user name to act as; without the secret a key cannot be computed from an identity.

The secret is $DREAMRELATION_OWNER_SECRET when set (e.g. a Space secret), else a file created on first start
with mode 0600 inside a 0700 folder of the data directory, which the app never serves (app.py blocks it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from pathlib import Path

from dreamrelation.jobs import JobStore

SECRET_ENV = "DREAMRELATION_OWNER_SECRET"
SECRET_FILE = Path("secret") / "owner-key"  # relative to the data directory
_KEY = re.compile(r"^[0-9a-f]{32}$")
_LEGACY_FOLDER = re.compile(r"^[0-9a-f]{16}$")  # sha256(identity)[:16]: folder names before owner keys

log = logging.getLogger(__name__)


def is_owner_key(owner: str) -> bool:
    """Whether `owner` has the form of an owner key (32 lower-case hex digits)."""
    return bool(_KEY.match(owner))


def _read_or_create_secret(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        # O_EXCL: two processes starting at once agree on one secret (the loser reads the winner's).
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) < 32:
            raise RuntimeError(f"the owner secret {path} is damaged; restore it from a backup") from None
        return secret.encode("ascii")
    secret = secrets.token_hex(32)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    return secret.encode("ascii")


class OwnerKeys:
    """Turns identities into owner keys with this installation's secret (read or created at `home`)."""

    def __init__(self, home: Path):
        from_env = os.environ.get(SECRET_ENV, "").strip()
        self._secret = from_env.encode("utf-8") if from_env else _read_or_create_secret(Path(home) / SECRET_FILE)

    def key(self, identity: str) -> str:
        """The owner key (32 hex digits) of an identity such as 'session:HASH' or 'user:NAME'."""
        if not identity:
            raise ValueError("an owner needs an identity")
        return hmac.new(self._secret, identity.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def migrate_legacy_owners(home: Path, store: JobStore, keys: OwnerKeys) -> int:
    """Re-key a data directory written before owner keys, in place; returns how many owners were re-keyed.

    Jobs then stored the identity itself as owner, and owner folders were named sha256(identity)[:16]. Each
    such owner's jobs get its key, its folder is renamed to the key, and the paths that named the old folder
    (job settings, dataset reports) are rewritten. Folders of owners without any job cannot be matched to an
    identity: they are left in place, unreachable, and the log says how many.
    """
    owners_dir = Path(home) / "owners"
    migrated = 0
    for identity in store.owners():
        if is_owner_key(identity):
            continue
        key = keys.key(identity)
        old = owners_dir / hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
        new = owners_dir / key
        if old.is_dir() and not new.exists():
            old.rename(new)
            for report in new.glob("datasets/*/dataset.json"):
                report.write_text(_moved(report.read_text(encoding="utf-8"), old, new), encoding="utf-8")
        for job in store.list(identity):
            store.update(job.id, settings=json.loads(_moved(json.dumps(job.settings), old, new)))
        store.rename_owner(identity, key)
        migrated += 1
    if migrated:
        store.vacuum()
    orphans = [p for p in owners_dir.glob("*") if p.is_dir() and _LEGACY_FOLDER.match(p.name)]
    if migrated or orphans:
        log.warning("re-keyed %d owner(s) of this data directory; %d owner folder(s) without jobs could not be "
                    "matched to an owner and were left in place", migrated, len(orphans))
    return migrated


def _moved(text: str, old: Path, new: Path) -> str:
    """JSON text with the folder `old` renamed to `new` (paths are JSON strings, so '/' needs no escaping)."""
    return text.replace(json.dumps(str(old))[1:-1], json.dumps(str(new))[1:-1])
