"""MailU 2024.06's admin CLI (``flask mailu ...``) and its user database, in miniature.

The provisioning workflow configures MailU by running ``flask mailu`` inside the admin
container; the SMTP server then authenticates against the users it created. This
module keeps that database (``mailu.json``, 0600, passwords only as passlib
``bcrypt_sha256`` hashes, MailU's default scheme) and answers
the subcommands the way MailU's ``core/admin/mailu/manage.py`` and ``schemas.py`` do:
same option letters, same messages, same exit codes. Secrets are never echoed: MailU
masks them too unless asked not to.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import passlib.registry
from passlib.context import CryptContext

from devstack.mailu_export import InvalidDkimKey, dkim_key_from_input, export_config

HIDDEN = "<hidden>"

StdinReader = Callable[[], Awaitable[str]]


@dataclass
class ExecResult:
    """What one exec request answers: the exit status and both output streams."""

    exit_status: int
    stdout: str = ""
    stderr: str = ""


# --- password hashes ---------------------------------------------------------------
# MailU 2024.06, core/admin/mailu/models.py (User.get_password_context, check_password,
# set_password): one passlib CryptContext over every crypt handler passlib registers
# except scrypt and the plaintext ones, default bcrypt_sha256 with CREDENTIAL_ROUNDS
# (12 in setup/flavors/compose/mailu.env) rounds, deprecated="auto" so a login with an
# older scheme's hash rewrites it as bcrypt_sha256. Stored hashes may carry an obsolete
# "{SCHEME}" prefix, which MailU strips before verifying (and schemas.PasswordField on
# import). The same pinned passlib (1.7.4) does the hashing here.

SCHEME_PREFIXES = ("PBKDF2", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "CRYPT")
CREDENTIAL_ROUNDS = 12
# The tests' local stacks hash at bcrypt's fewest rounds (Stack(mailu_hash_rounds=4) sets
# this for the local cloud, whose VPS processes inherit it): one bcrypt at 12 rounds is
# ~0.3 s of CPU, and the VPS stand-ins of one `make test` spent ~100 s of its CPU on
# them. Only the cost changes: scheme, verification and rehashing are MailU's as above;
# the demo and `make faults` keep 12.
HASH_ROUNDS_VARIABLE = "DEVSTACK_MAILU_CREDENTIAL_ROUNDS"
logging.getLogger("passlib").setLevel(logging.ERROR)  # bcrypt 4.1+ lacks __about__ (models.py)


@cache
def password_context(rounds: int = CREDENTIAL_ROUNDS) -> CryptContext:
    schemes = [
        scheme
        for scheme in passlib.registry.list_crypt_handlers()
        if not (scheme == "scrypt" or scheme.endswith("plaintext"))
    ]
    return CryptContext(
        schemes=schemes,
        default="bcrypt_sha256",
        bcrypt_sha256__rounds=rounds,
        deprecated="auto",
    )


def strip_scheme(hashed: str) -> str:
    end = hashed.find("}", 1) if hashed.startswith("{") else -1
    return hashed[end + 1 :] if end >= 0 and hashed[1:end] in SCHEME_PREFIXES else hashed


def configured_rounds() -> int:
    """CREDENTIAL_ROUNDS, unless this process's stack asked for fewer (HASH_ROUNDS_VARIABLE)."""
    return int(os.environ.get(HASH_ROUNDS_VARIABLE) or CREDENTIAL_ROUNDS)


def hash_password(password: str) -> str:
    return str(password_context(configured_rounds()).hash(password))


def verify_and_update(password: str, hashed: str) -> tuple[bool, str | None]:
    """passlib's verify_and_update; an unidentifiable hash fails the login."""
    if password == "":
        return False, None  # User.check_password refuses the empty password first
    try:
        context = password_context(configured_rounds())
        ok, new_hash = context.verify_and_update(password, strip_scheme(hashed))
    except ValueError:  # "hash could not be identified": MailU's auth errors out
        return False, None
    return bool(ok), new_hash


def verify_password(password: str, hashed: str) -> bool:
    return verify_and_update(password, hashed)[0]


# --- the database --------------------------------------------------------------------

Config = dict[str, dict[str, dict[str, Any]]]
SECTIONS = ("domain", "user", "alias", "relay")
_PRIMARY = {"domain": "name", "user": "email", "alias": "email", "relay": "name"}


class MailuStore:
    """MailU's database, as one JSON file that only the VPS process can read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Config:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        return {section: dict(raw.get(section, {})) for section in SECTIONS}

    def save(self, config: Config) -> None:
        # Write-then-rename so a crash never leaves SMTP auth reading half a file, and
        # create with 0600 so the hashes are never readable by anyone else, not even
        # between open() and chmod().
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def summary(self) -> dict[str, Any]:
        """What tests may see: names and roles, never hashes."""
        config = self.load()
        return {
            "domains": sorted(config["domain"]),
            "users": [
                {"email": email, "global_admin": bool(user.get("global_admin", False))}
                for email, user in sorted(config["user"].items())
            ],
        }

    def check_login(self, login: str, password: str) -> bool:
        """SMTP AUTH: re-read on every attempt so a config-import takes effect at once.

        Like User.check_password, a successful login with a deprecated scheme's hash
        stores the bcrypt_sha256 rehash.
        """
        config = self.load()
        email = login.strip().lower()
        user = config["user"].get(email)
        if user is None or not user.get("enabled", True):
            return False
        ok, new_hash = verify_and_update(password, str(user.get("password", "")))
        if ok and new_hash:
            user["password"] = new_hash
            self.save(config)
        return ok


# --- a sliver of click -----------------------------------------------------------------


class UsageError(Exception):
    """Click's exit-2 usage errors, printed under the command's usage line."""


@dataclass(frozen=True)
class Opt:
    dest: str
    takes_value: bool = False
    count: bool = False


def parse_click_args(args: list[str], options: dict[str, Opt]) -> tuple[dict[str, Any], list[str]]:
    """Parse options the way click does, including clustered short flags (``-uv``)."""
    values: dict[str, Any] = {}
    positionals: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positionals.extend(args[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, inline = arg.partition("=")
            opt = options.get(name)
            if opt is None:
                raise UsageError(f"No such option: {name}")
            if opt.takes_value:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"Option '{name}' requires an argument.")
                    inline = args[i]
                values[opt.dest] = inline
            else:
                values[opt.dest] = values.get(opt.dest, 0) + 1 if opt.count else True
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                name = "-" + arg[j]
                opt = options.get(name)
                if opt is None:
                    raise UsageError(f"No such option: {name}")
                if opt.takes_value:
                    rest = arg[j + 1 :]
                    if not rest:
                        i += 1
                        if i >= len(args):
                            raise UsageError(f"Option '{name}' requires an argument.")
                        rest = args[i]
                    values[opt.dest] = rest
                    break
                values[opt.dest] = values.get(opt.dest, 0) + 1 if opt.count else True
                j += 1
        else:
            positionals.append(arg)
        i += 1
    return values, positionals


def _usage_error(command: str, usage: str, message: str) -> ExecResult:
    return ExecResult(
        2,
        "",
        f"Usage: flask mailu {command} {usage}\n"
        f"Try 'flask mailu {command} -h' for help.\n\nError: {message}\n",
    )


# --- config-import ----------------------------------------------------------------------

_BOOL_FIELDS = {
    "global_admin",
    "enabled",
    "enable_imap",
    "enable_pop",
    "allow_spoofing",
    "forward_enabled",
    "forward_keep",
    "reply_enabled",
    "spam_enabled",
    "spam_mark_as_read",
    "change_pw_next_login",
    "hash_password",
    "signup_enabled",
    "wildcard",
    "smtp_relay",
}
_INT_FIELDS = {"quota_bytes", "spam_threshold", "max_users", "max_aliases", "max_quota_bytes"}
_FIELDS: dict[str, set[str]] = {
    "domain": {
        "name",
        "comment",
        "max_users",
        "max_aliases",
        "max_quota_bytes",
        "signup_enabled",
        "alternatives",
        "dkim_key",
    },
    "user": {
        "email",
        "password",
        "hash_password",
        "comment",
        "global_admin",
        "enabled",
        "quota_bytes",
        "enable_imap",
        "enable_pop",
        "allow_spoofing",
        "forward_enabled",
        "forward_destination",
        "forward_keep",
        "reply_enabled",
        "reply_subject",
        "reply_body",
        "reply_startdate",
        "reply_enddate",
        "displayed_name",
        "spam_enabled",
        "spam_mark_as_read",
        "spam_threshold",
        "change_pw_next_login",
        "manager_of",
        "tokens",
        "fetches",
    },
    "alias": {"email", "comment", "destination", "wildcard"},
    "relay": {"name", "comment", "smtp"},
}
_USER_DEFAULTS = {"global_admin": False, "enabled": True, "enable_imap": True, "enable_pop": True}
_DOMAIN_DEFAULTS = {
    "max_users": -1,
    "max_aliases": -1,
    "max_quota_bytes": 0,
    "signup_enabled": False,
}
_DOMAIN_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)


class ImportFailed(Exception):
    """A failure MailU reports as ``Error: <message>`` with exit status 1."""


def _validation_error(errors: list[tuple[str, str]]) -> ImportFailed:
    """Render errors exactly like MailU's ``Logger._format_errors``."""
    width = max(len(loc) for loc, _ in errors)
    lines = [f"     - {loc.ljust(width)} : {msg}" for loc, msg in sorted(errors)]
    noun = "error" if len(errors) == 1 else "errors"
    head = f"[ValidationError] {len(errors)} {noun} occurred during input validation"
    return ImportFailed("\n".join([head, *lines]))


def _check_types(item: dict[str, Any], loc: str, errors: list[tuple[str, str]]) -> None:
    for key, value in item.items():
        if key in _BOOL_FIELDS and not isinstance(value, bool):
            errors.append((f"{loc}.{key}", "Not a valid boolean."))
        if key in _INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
            errors.append((f"{loc}.{key}", "Not a valid integer."))


def _shown(item: dict[str, Any]) -> dict[str, Any]:
    return {k: (HIDDEN if k in ("password", "dkim_key") else v) for k, v in sorted(item.items())}


class ConfigImport:
    """One run of ``flask mailu config-import``: parse, validate, diff, maybe commit."""

    def __init__(self, existing: Config, update: bool, verbose: int = 0) -> None:
        self.update = update
        self.verbose = verbose
        # Without -u MailU clears the existing config first: only the document survives.
        self.result: Config = (
            {s: {k: dict(v) for k, v in existing[s].items()} for s in SECTIONS}
            if update
            else {s: {} for s in SECTIONS}
        )
        self.existing = existing
        self.log: list[str] = []
        self.counter: Counter[tuple[str, str]] = Counter()

    def run(self, text: str) -> None:
        document = self._parse(text)
        errors: list[tuple[str, str]] = []
        for section in document:
            if section not in SECTIONS:
                errors.append((section, "Unknown field."))
            elif not isinstance(document[section], list):
                errors.append((f"{section}._schema", "Invalid input type."))
        if errors:
            raise _validation_error(errors)
        # MailU loads sections in this order so a user can name a domain created above.
        for section in SECTIONS:
            for index, item in enumerate(document.get(section, [])):
                self._load_item(section, index, item, errors)
        if errors:
            raise _validation_error(errors)
        self._count_deletions()

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        if not text.strip():
            raise _validation_error([("_schema", "Invalid input type.")])
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            # Real MailU parses YAML; this stand-in knows only YAML's JSON subset and
            # says so rather than guessing.
            raise ImportFailed(
                "[ValueError] input is not JSON (the devstack MailU stand-in parses only "
                "the JSON subset of YAML)"
            ) from None
        if not isinstance(document, dict):
            raise _validation_error([("_schema", "Invalid input type.")])
        return document

    def _load_item(
        self, section: str, index: int, item: Any, errors: list[tuple[str, str]]
    ) -> None:
        loc = f"{section}.{index}"
        if not isinstance(item, dict):
            errors.append((f"{loc}._schema", "Invalid input type."))
            return
        for key in item:
            if key not in _FIELDS[section]:
                errors.append((f"{loc}.{key}", "Unknown field."))
        _check_types(item, loc, errors)
        primary = _PRIMARY[section]
        key_value = item.get(primary)
        if not isinstance(key_value, str) or not key_value:
            errors.append((f"{loc}.{primary}", "Missing data for required field."))
            return
        key_value = key_value.strip().lower()
        if section == "domain":
            if not _DOMAIN_NAME.match(key_value):
                errors.append((f"{loc}.name", f"invalid domain name {key_value!r}"))
                return
        elif section in ("user", "alias"):
            local, _, domain = key_value.rpartition("@")
            if not local or not domain:
                errors.append((f"{loc}.email", "Not a valid email address."))
                return
            # No check that the domain exists: MailU 2024.06 creates the user anyway
            # (schemas.UserSchema loads email only; models.User's domain is a plain
            # relationship, and SQLite does not enforce the foreign key).
        fields = {k: v for k, v in item.items() if k in _FIELDS[section]}
        fields[primary] = key_value
        if section == "domain" and "dkim_key" in fields:
            # schemas.py DkimKeyField: "-generate-" makes a key, "<hidden>" keeps none.
            try:
                fields["dkim_key"] = dkim_key_from_input(fields["dkim_key"])
            except InvalidDkimKey as exc:
                errors.append((f"{loc}.dkim_key", str(exc)))
                return
        if section == "user" and not self._user_password(loc, key_value, fields, errors):
            return
        self._merge(section, key_value, fields)

    def _user_password(
        self, loc: str, email: str, fields: dict[str, Any], errors: list[tuple[str, str]]
    ) -> bool:
        """Resolve the stored hash the way MailU's PasswordField and _add_instance do."""
        hash_it = fields.pop("hash_password", False)
        current = self.result["user"].get(email)
        if "password" not in fields:
            if hash_it:
                errors.append(
                    (f"{loc}.hash_password", 'Nothing to hash. Field "password" is missing.')
                )
                return False
            if current is None:
                errors.append((f"{loc}.password", "Missing data for required field."))
                return False
            return True
        password = fields["password"]
        if not isinstance(password, str):
            errors.append((f"{loc}.password", "Not a valid string."))
            return False
        if hash_it:
            prior = current or self.existing["user"].get(email)
            old = str(prior.get("password", "")) if prior else ""
            # schemas.BaseSchema._add_instance (update mode only): an unchanged
            # plaintext gets the stored hash back, so the row does not change.
            keep = self.update and old and verify_password(password, old)
            fields["password"] = old if keep else hash_password(password)
            return True
        # PasswordField._deserialize validates with check_password(''), which returns
        # False before looking at the hash: any string is stored as the "hash".
        fields["password"] = strip_scheme(password)
        return True

    def _merge(self, section: str, key: str, fields: dict[str, Any]) -> None:
        before = self.existing[section].get(key)
        current = self.result[section].get(key)
        if current is None:
            defaults = (
                _USER_DEFAULTS
                if section == "user"
                else (_DOMAIN_DEFAULTS if section == "domain" else {})
            )
            # Update mode patches the stored item; clear mode rebuilds it from input.
            base = (before or {}) if self.update else {}
            merged = {**defaults, **base, **fields}
        else:
            merged = {**current, **fields}
        self.result[section][key] = merged
        if before is None:
            if current is None:
                self.counter[("Created", section)] += 1
                self.log.append(f"Created {section}: {_shown(merged)!r}")
            return
        changed = sorted(k for k in set(merged) | set(before) if merged.get(k) != before.get(k))
        # schemas.Logger._listen_update stops at the first changed column unless
        # verbose, before recording it: without -v an update is never counted, so
        # "config-import -u" of a changed password still says "No changes.".
        if self.verbose and changed and not (current is not None and current != before):
            self.counter[("Modified", section)] += 1
        for k in changed:
            old, new = before.get(k), merged.get(k)
            if k in ("password", "dkim_key"):
                # schemas.py _listen_dkim / password logging: "<hidden>" or "" only.
                old, new = (HIDDEN if old else ""), (HIDDEN if new else "")
            self.log.append(f"Modified {section}: {key!r} {k}: {old!r} -> {new!r}")

    def _count_deletions(self) -> None:
        for section in SECTIONS:
            for key in self.existing[section]:
                if key not in self.result[section]:
                    self.counter[("Deleted", section)] += 1
                    self.log.append(f"Deleted {section}: {key!r}")

    def changes(self) -> str:
        """MailU's ``Logger.changes`` summary, e.g. ``Created: domain(1) user(1)``."""
        if not self.counter:
            return "No changes."
        words: list[str] = []
        last = None
        for (action, what), count in sorted(self.counter.items()):
            if action != last:
                if last:
                    words.append("/")
                words.append(f"{action}:")
                last = action
            words.append(f"{what}({count})")
        return " ".join(words)


# --- the ``flask mailu`` group ---------------------------------------------------------

_IMPORT_OPTS = {
    "-v": Opt("verbose", count=True),
    "--verbose": Opt("verbose", count=True),
    "-s": Opt("secrets"),
    "--secrets": Opt("secrets"),
    "-d": Opt("debug"),
    "--debug": Opt("debug"),
    "-q": Opt("quiet"),
    "--quiet": Opt("quiet"),
    "-c": Opt("color"),
    "--color": Opt("color"),
    "-u": Opt("update"),
    "--update": Opt("update"),
    "-n": Opt("dry_run"),
    "--dry-run": Opt("dry_run"),
}
_DOMAIN_OPTS = {
    "-u": Opt("max_users", True),
    "--max-users": Opt("max_users", True),
    "-a": Opt("max_aliases", True),
    "--max-aliases": Opt("max_aliases", True),
    "-q": Opt("max_quota_bytes", True),
    "--max-quota-bytes": Opt("max_quota_bytes", True),
}
_ADMIN_OPTS = {"-m": Opt("mode", True), "--mode": Opt("mode", True)}
COMMANDS = ("admin", "config-export", "config-import", "domain")
_EXPORT_OPTS = {
    "-f": Opt("full", False),
    "--full": Opt("full", False),
    "-s": Opt("secrets", False),
    "--secrets": Opt("secrets", False),
    "-d": Opt("dns", False),
    "--dns": Opt("dns", False),
    "-c": Opt("color", False),
    "--color": Opt("color", False),
    "-j": Opt("as_json", False),
    "--json": Opt("as_json", False),
}


class MailuCli:
    """``flask mailu <command>`` as run inside a healthy admin container."""

    def __init__(self, store: MailuStore) -> None:
        self.store = store

    async def run(
        self, args: list[str], read_stdin: StdinReader, env: dict[str, str] | None = None
    ) -> ExecResult:
        if not args or args[0] in ("-h", "--help", "-?"):
            usage = "Usage: flask mailu [OPTIONS] COMMAND [ARGS]...\n\n  Mailu command line\n"
            return ExecResult(0, usage + "\nCommands:\n" + "".join(f"  {c}\n" for c in COMMANDS))
        command, rest = args[0], args[1:]
        try:
            if command == "config-import":
                return await self._config_import(rest, read_stdin)
            if command == "config-export":
                return self._config_export(rest, env or {})
            if command == "domain":
                return self._domain(rest)
            if command == "admin":
                return self._admin(rest)
        except UsageError as exc:
            usage = {
                "config-import": "[OPTIONS] [FILENAME|-]",
                "config-export": "[OPTIONS] [FILTER]...",
                "domain": "[OPTIONS] DOMAIN_NAME",
                "admin": "[OPTIONS] LOCALPART DOMAIN_NAME PASSWORD",
            }[command]
            return _usage_error(command, usage, str(exc))
        return ExecResult(
            2,
            "",
            "Usage: flask mailu [OPTIONS] COMMAND [ARGS]...\n"
            "Try 'flask mailu -h' for help.\n\n"
            f"Error: No such command '{command}'.\n",
        )

    async def _config_import(self, args: list[str], read_stdin: StdinReader) -> ExecResult:
        opts, positionals = parse_click_args(args, _IMPORT_OPTS)
        if len(positionals) > 1:
            raise UsageError(f"Got unexpected extra argument ({positionals[1]})")
        if positionals and positionals[0] != "-":
            raise UsageError(
                f"Invalid value for '[FILENAME|-]': '{positionals[0]}': No such file or directory"
            )
        text = await read_stdin()
        verbose = 0 if opts.get("quiet") else int(opts.get("verbose") or 0)
        job = ConfigImport(self.store.load(), update=bool(opts.get("update")), verbose=verbose)
        try:
            job.run(text)
        except ImportFailed as exc:
            return ExecResult(1, "", f"Error: {exc}\n")
        quiet = bool(opts.get("quiet"))
        lines: list[str] = []
        if not quiet and (opts.get("verbose") or opts.get("dry_run")):
            lines.extend(job.log)
        if opts.get("dry_run"):
            head = "Dry run. Not committing changes."
        else:
            head = "Committing changes."
            self.store.save(job.result)
        if not quiet:
            lines.append(f"{head} {job.changes()}")
        return ExecResult(0, "".join(f"{line}\n" for line in lines))

    def _config_export(self, args: list[str], env: dict[str, str]) -> ExecResult:
        """manage.py config_export: the stand-in renders JSON only (no YAML writer)."""
        opts, only = parse_click_args(args, _EXPORT_OPTS)
        if not opts.get("as_json"):
            return ExecResult(1, "", "Error: the devstack MailU stand-in exports only --json\n")
        unknown = [name for name in only if name not in SECTIONS]
        if unknown:
            return ExecResult(1, "", f"Error: [KeyError] {unknown[0]!r}\n")
        text = export_config(
            self.store.load(),
            env,
            sections=list(only) or list(SECTIONS),
            dns=bool(opts.get("dns")),
            secrets=bool(opts.get("secrets")),
        )
        return ExecResult(0, text + "\n")

    def _domain(self, args: list[str]) -> ExecResult:
        opts, positionals = parse_click_args(args, _DOMAIN_OPTS)
        if not positionals:
            raise UsageError("Missing argument 'DOMAIN_NAME'.")
        if len(positionals) > 1:
            raise UsageError(f"Got unexpected extra argument ({positionals[1]})")
        name = positionals[0].lower()
        config = self.store.load()
        if name not in config["domain"]:
            config["domain"][name] = {
                "name": name,
                "max_users": int(opts.get("max_users", -1)),
                "max_aliases": int(opts.get("max_aliases", -1)),
                "max_quota_bytes": int(opts.get("max_quota_bytes", 0)),
                "signup_enabled": False,
            }
            self.store.save(config)
        return ExecResult(0)

    def _admin(self, args: list[str]) -> ExecResult:
        opts, positionals = parse_click_args(args, _ADMIN_OPTS)
        names = ("LOCALPART", "DOMAIN_NAME", "PASSWORD")
        if len(positionals) < 3:
            raise UsageError(f"Missing argument '{names[len(positionals)]}'.")
        if len(positionals) > 3:
            raise UsageError(f"Got unexpected extra argument ({positionals[3]})")
        localpart, domain, password = positionals
        mode = opts.get("mode", "create")
        if mode not in ("create", "update", "ifmissing"):
            return ExecResult(1, "", f"Error: invalid mode: {mode!r}\n")
        config = self.store.load()
        domain = domain.lower()
        config["domain"].setdefault(domain, {"name": domain, **_DOMAIN_DEFAULTS})
        email = f"{localpart}@{domain}".lower()
        user = config["user"].get(email)
        if user is not None:
            if mode == "ifmissing":
                return ExecResult(0, f"user {email!r} exists, not updating\n")
            if mode == "create":
                return ExecResult(1, "", f"Error: user {email!r} exists, not created\n")
            user["password"] = hash_password(password)
            self.store.save(config)
            return ExecResult(0, "updated admin password\n")
        config["user"][email] = {
            **_USER_DEFAULTS,
            "email": email,
            "global_admin": True,
            "password": hash_password(password),
        }
        self.store.save(config)
        return ExecResult(0, "created admin user\n")
