"""Owner keys: a keyed hash per installation, and the re-keying of a data directory written before them."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from dreamrelation.config import DataConfig, RunConfig
from dreamrelation.jobs import JobStore
from dreamrelation.studio.owners import SECRET_ENV, SECRET_FILE
from dreamrelation.studio.workspace import Workspace


def test_the_key_is_hmac_sha256_of_the_identity_with_the_installation_secret(tmp_path):
    workspace = Workspace(tmp_path / "a")
    secret = (tmp_path / "a" / SECRET_FILE).read_text().strip().encode()
    expected = hmac.new(secret, b"session:abc", hashlib.sha256).hexdigest()[:32]
    assert workspace.owner_key("session:abc") == expected
    assert Workspace(tmp_path / "a").owner_key("session:abc") == expected  # the secret is kept
    assert Workspace(tmp_path / "b").owner_key("session:abc") != expected  # another installation, another key
    assert (tmp_path / "a" / SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_a_secret_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "from-a-space-secret")
    workspace = Workspace(tmp_path)
    assert workspace.owner_key("user:ann") == hmac.new(b"from-a-space-secret", b"user:ann",
                                                       hashlib.sha256).hexdigest()[:32]
    assert not (tmp_path / SECRET_FILE).exists()


def test_owner_folders_are_only_ever_keys(tmp_path):
    workspace = Workspace(tmp_path)
    with pytest.raises(ValueError, match="not an owner key"):
        workspace.owner_dir("../../etc")


def test_a_data_directory_from_before_owner_keys_is_rekeyed_in_place(tmp_path):
    home = tmp_path.resolve()
    identity = "session:0123abcd"
    legacy = home / "owners" / hashlib.sha256(identity.encode()).hexdigest()[:16]
    dataset = legacy / "datasets" / "orbits-0badc0de"
    dataset.mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"videos": [{"video": str(dataset / "a.mp4")}]}))
    orphan = home / "owners" / ("f" * 16)  # an owner who never trained: no job names it
    orphan.mkdir()
    store = JobStore(home)
    job = store.create(identity, "orbits", RunConfig(data=DataConfig(data_dir=dataset)))

    workspace = Workspace(home)
    key = workspace.owner_key(identity)
    moved = home / "owners" / key / "datasets" / "orbits-0badc0de"
    assert store.load(job.id).owner == key and not legacy.exists() and moved.is_dir()
    assert store.load(job.id).settings["data"]["data_dir"] == str(moved)
    assert json.loads((moved / "dataset.json").read_text())["videos"][0]["video"] == str(moved / "a.mp4")
    assert orphan.is_dir()
    raw = b"".join(p.read_bytes() for p in home.glob("jobs.sqlite3*"))
    assert identity.encode() not in raw
    Workspace(home)  # a second start finds nothing left to migrate
    assert store.load(job.id).owner == key
