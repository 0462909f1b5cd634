"""Host keys derived per server: the same on every retry, different everywhere else."""

from __future__ import annotations

import json

import asyncssh

from activities.ssh import SshIdentity, host_key_files


def test_host_keys_are_deterministic_per_server_and_generation() -> None:
    identity = SshIdentity.generate()
    first = identity.host_key_for("mail-acme-1")
    assert first.private_bytes_raw() == identity.host_key_for("mail-acme-1").private_bytes_raw()
    others = {
        identity.host_key_for("mail-acme-2").private_bytes_raw(),
        identity.host_key_for("mail-acme-1", 2).private_bytes_raw(),
        SshIdentity.generate().host_key_for("mail-acme-1").private_bytes_raw(),
    }
    assert first.private_bytes_raw() not in others and len(others) == 3


def test_cloud_init_carries_the_pinned_host_key_and_the_worker_login_key() -> None:
    identity = SshIdentity.generate()
    user_data, pinned = identity.cloud_init_for("mail-acme-1")
    header, body = user_data.split("\n", 1)
    assert header == "#cloud-config"
    config = json.loads(body)
    private = asyncssh.import_private_key(config["ssh_keys"]["ed25519_private"])
    assert private.export_public_key().decode().split()[:2] == pinned.split()[:2]
    assert config["ssh_keys"]["ed25519_public"] == pinned
    assert config["ssh_authorized_keys"] == [identity.public_key]
    # The rotated (generation 2) key is never handed to the provider.
    _, rotated = host_key_files(identity.host_key_for("mail-acme-1", 2))
    assert rotated.split()[1] not in user_data
    assert rotated != pinned
