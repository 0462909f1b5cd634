"""cloud-init on the local VPS: the time its stages take, what they install, its status.

A real Hetzner server answers SSH while cloud-init's final stage is still installing
packages; only when the stages are through does ``cloud-init status`` say ``done``.
This module plays that for one machine:

* the run starts at boot and takes ``duration`` seconds (configurable per cloud);
* when it ends, the cloud-config's install directives "run" in cloud-init's module
  order: ``write_files`` first, then Docker's apt source (``apt.sources.*.source``
  naming download.docker.com) plus ``packages`` with ``docker-ce`` and
  ``docker-compose-plugin`` install Docker Engine and the Compose v2 plugin; Debian's
  ``docker.io`` installs Docker without the plugin. The fresh image has no gpg
  (canonical/cloud-init#5535), so a source whose key goes through cloud-init's
  ``key``/``keyid`` handling ends with ``signed-by=/dev/null``, and one whose
  ``signed-by=`` file does not hold Docker's key has none: apt fails (``NO_PUBKEY``)
  and cloud-init ends in ``error``, as cc_package_update_upgrade_install would;
* images that ship Docker (Hetzner's ``docker-ce`` app) have it from the start;
* ``cloud-init status [--wait] [--long] [--format json|tabular|yaml]`` answers with
  the words, keys and exit codes of cloud-init 22.4.2 (Debian 12's package,
  cloudinit/cmd/status.py): statuses ``not run``/``running``/``done``/``error``,
  ``--wait`` printing a dot per poll, exit 1 only for ``error``.

What got installed is left as files in the VPS root (``/usr/bin/docker``, the plugin
under ``/usr/libexec/docker/cli-plugins``), which the shell looks for, so a reboot
keeps it, as on a real disk.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.mailu import ExecResult

# Docker's release key as Docker publishes it (the product ships the same file).
DOCKER_RELEASE_KEY = (
    Path(__file__).parent.parent / "activities" / "data" / "docker-archive-keyring.asc"
)
DOCKER_BIN = "/usr/bin/docker"
COMPOSE_PLUGIN = "/usr/libexec/docker/cli-plugins/docker-compose"
RESULT_FILE = "/var/lib/cloud/data/result.json"
IMAGES_WITH_DOCKER = frozenset({"docker-ce"})  # Hetzner's Docker CE app image
DATASOURCE = "DataSourceHetzner"
# Stage names as status.py reports "Running in stage: ..."
FINAL_STAGE = "modules-final"
WAIT_POLL = 0.25  # status.py sleeps 0.25 s between polls and prints one dot per poll


def _apt_update_failed() -> str:
    """cloud-init's record of cc_package_update_upgrade_install failing on apt update."""
    return (
        "('package_update_upgrade_install', ProcessExecutionError(\"Unexpected "
        "error while running command.\\nCommand: ['eatmydata', 'apt-get', "
        "'--option=Dpkg::Options::=--force-confold', "
        "'--option=Dpkg::options::=--force-unsafe-io', '--assume-yes', "
        "'--quiet', 'update']\\nExit code: 100\\nStderr: W: GPG error: "
        "https://download.docker.com/linux/debian: The following signatures "
        "couldn't be verified because the public key is not available: "
        'NO_PUBKEY 8D81803C0EBFCD88"))'
    )


class CloudInitRun:
    """One instance's cloud-init run, from boot to done/error."""

    def __init__(
        self,
        root: Path,
        document: dict[str, Any],
        image: str,
        duration: float,
        clock: Callable[[], float] = time.monotonic,
        release_file: Path | None = None,
    ) -> None:
        self.root = root
        # A test may hold the run "installing" as long as it likes and end it by
        # creating this file, instead of racing a timer.
        self.release_file = release_file
        self.document = document
        self.image = image
        self.clock = clock
        self.started = clock()
        self.duration = duration
        self._finished = (root / RESULT_FILE.lstrip("/")).is_file()

    def _path(self, vps_path: str) -> Path:
        return self.root / vps_path.lstrip("/")

    # --- the run ---------------------------------------------------------------------

    def _finish_if_due(self) -> None:
        released = self.release_file is not None and self.release_file.exists()
        if self._finished or (self.clock() - self.started < self.duration and not released):
            return
        errors = self._install()
        result = self._path(RESULT_FILE)
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps({"v1": {"datasource": DATASOURCE, "errors": errors}}))
        self._finished = True

    def _install(self) -> list[str]:
        """Run the install directives; return cloud-init's error strings, if any."""
        self._write_files()
        if self.image in IMAGES_WITH_DOCKER:
            self._put(DOCKER_BIN)
            self._put(COMPOSE_PLUGIN)
            return []
        sources = (self.document.get("apt") or {}).get("sources") or {}
        docker_sources = [
            s
            for s in sources.values()
            if isinstance(s, dict) and "download.docker.com" in str(s.get("source", ""))
        ]
        packages = {str(p) for p in self.document.get("packages") or []}
        for source in docker_sources:
            if not self._docker_source_verifies(source):
                return [_apt_update_failed()]
        if docker_sources and "docker-ce" in packages:
            self._put(DOCKER_BIN)
            if "docker-compose-plugin" in packages:
                self._put(COMPOSE_PLUGIN)
        elif "docker.io" in packages:
            self._put(DOCKER_BIN)  # Debian's docker.io: no Compose v2 plugin
        return []

    def _write_files(self) -> None:
        """cc_write_files (init stage, before apt_configure and the package install):
        each entry's `content` at `path`, parents created, mode from `permissions`."""
        for entry in self.document.get("write_files") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                continue
            path = self._path(entry["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(entry.get("content", "")), encoding="utf-8")
            path.chmod(int(str(entry.get("permissions", "0644")), 8))

    def _docker_source_verifies(self, source: dict[str, Any]) -> bool:
        """Would `apt-get update` accept Docker's repository as this source sets it up?

        A `key`/`keyid` goes through cloud-init's gpg (`gpg --dearmor`, cloudinit/gpg.py;
        `keyid` also `gpg --recv-keys`), and the fresh image has no gpg (Debian cloud
        images, canonical/cloud-init#5535): cc_apt_configure logs "Gpg error, failed to
        add key" and renders `signed-by=/dev/null` (22.4.2 apt_key_add), so apt has no
        key. Without one, apt needs the `signed-by=` file to hold Docker's key (an
        ASCII-armoured .asc is read by apt itself, apt >= 1.4).
        """
        if source.get("key") or source.get("keyid"):
            return False
        match = re.search(r"signed-by=([^\s\]]+)", str(source.get("source", "")))
        if match is None:
            return False
        keyring = self._path(match.group(1))
        return keyring.is_file() and keyring.read_text(errors="replace").strip() == (
            DOCKER_RELEASE_KEY.read_text(encoding="ascii").strip()
        )

    def _put(self, vps_path: str) -> None:
        path = self._path(vps_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("installed by the local VPS's cloud-init\n")
        path.chmod(0o755)

    # --- what the machine can see -----------------------------------------------------

    def has(self, vps_path: str) -> bool:
        self._finish_if_due()
        return self._path(vps_path).is_file()

    def details(self) -> dict[str, Any]:
        """status.py's details dict, for the current moment."""
        self._finish_if_due()
        errors: list[str] = []
        last_update = ""
        if self._finished:
            result = json.loads(self._path(RESULT_FILE).read_text())
            errors = list(result["v1"]["errors"])
            status = "error" if errors else "done"
            description = "\n".join(errors) if errors else DATASOURCE
            stamp = self._path(RESULT_FILE).stat().st_mtime
            last_update = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime(
                "%a, %d %b %Y %H:%M:%S +0000"
            )
        else:
            status = "running"
            description = f"Running in stage: {FINAL_STAGE}"
        details: dict[str, Any] = {
            "datasource": "hetzner",
            "boot_status_code": "enabled-by-generator",
            "status": status,
            "detail": description,
            "errors": errors,
            "last_update": last_update,
        }
        details["schemas"] = {"1": dict(details)}
        details["_schema_version"] = "1"
        return details

    # --- the command ------------------------------------------------------------------

    async def status_command(self, args: list[str]) -> ExecResult:
        """``cloud-init status ...`` as cloud-init 22.4.2 answers it."""
        parser = _StatusParser(prog="cloud-init status", add_help=False)
        parser.add_argument("--format", choices=["json", "tabular", "yaml"], default="tabular")
        parser.add_argument("-l", "--long", action="store_true")
        parser.add_argument("-w", "--wait", action="store_true")
        try:
            opts = parser.parse_args(args)
        except _UsageError as exc:
            usage = "usage: cloud-init status [-h] [--format {json,tabular,yaml}] [-l] [-w]"
            return ExecResult(2, "", f"{usage}\n{exc}\n")
        out = ""
        details = self.details()
        if opts.wait:
            while details["status"] in ("not run", "running"):
                if opts.format == "tabular":
                    out += "."
                await asyncio.sleep(WAIT_POLL)
                details = self.details()
        if opts.format == "tabular":
            prefix = "\n" if opts.wait else ""
            out += f"{prefix}status: {details['status']}\n"
            if opts.long:
                last = f"last_update: {details['last_update']}\n" if details["last_update"] else ""
                out += (
                    f"boot_status_code: {details['boot_status_code']}\n"
                    f"{last}detail:\n{details['detail']}\n"
                )
        elif opts.format == "json":
            out += json.dumps(details, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"
        else:
            return ExecResult(2, "", "devstack: cloud-init status --format yaml is not modelled\n")
        return ExecResult(1 if details["status"] == "error" else 0, out)


class _UsageError(Exception):
    pass


class _StatusParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the whole VPS process
        raise _UsageError(f"cloud-init status: error: {message}")
