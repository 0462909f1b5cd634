"""MailU 2024.06's DKIM keys and `flask mailu config-export`, for the MailU stand-in.

Follows Mailu/Mailu at tag 2024.06:

* core/admin/mailu/dkim.py ``gen_key``: a 2048-bit RSA key, PEM, PKCS#8, unencrypted;
  ``strip_key``: the base64 body of the SubjectPublicKeyInfo PEM, one line.
* core/admin/mailu/schemas.py ``DkimKeyField._deserialize``: "-generate-" (any case)
  makes a new key; "" or "<hidden>" means no key; anything else must load as a PEM
  private key (headers optional) or fails with ``invalid dkim key '...'``.
* core/admin/mailu/models.py ``Domain.dns_mx|dns_spf|dns_dkim|dns_dmarc``: the zone
  lines (TTL 600); DKIM and DMARC only exist once the domain has a key.
  configuration.py: ``HOSTNAME`` is the first of ``HOSTNAMES``, ``DKIM_SELECTOR`` "dkim".
* manage.py ``config_export`` and schemas.py ``DomainSchema``: with ``--dns`` a domain
  carries ``dkim_publickey``, ``dns_mx``, ``dns_spf``, ``dns_dkim``, ``dns_dmarc``
  (keys whose value is None are left out); ``dkim_key`` is shown as "<hidden>" unless
  ``--secrets``; ``--json`` prints compact JSON (separators "," and ":").

Where MailU keeps the key in /dkim/{domain}.{selector}.key, the stand-in keeps it in
the VPS's MailU store (a 0600 file only the VPS process reads).
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HIDDEN_TEXT = "<hidden>"
DKIM_SELECTOR = "dkim"
DNS_TTL = 600
_DOMAIN_DEFAULTS: dict[str, Any] = {
    "max_users": -1,
    "max_aliases": -1,
    "max_quota_bytes": 0,
    "signup_enabled": False,
}
_UNSET = object()
_SECTION_ORDER = ("domain", "user", "alias", "relay")


class InvalidDkimKey(ValueError):
    pass


def generate_dkim_key(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode("ascii")


def dkim_key_from_input(value: Any) -> str | None:
    """What config-import stores for a domain's `dkim_key` input (None: no key)."""
    if isinstance(value, list):
        value = "".join(str(item) for item in value)
    if not isinstance(value, str):
        raise InvalidDkimKey("Not a valid string or list.")
    value = value.strip()
    if value.lower() == "-generate-":
        return generate_dkim_key()
    if not value or value == HIDDEN_TEXT:
        return None
    body = value
    if body.startswith("-----BEGIN "):
        body = body[body.index("-----", 11) + 5 :]
    if (end := body.find("-----END ")) >= 0:
        body = body[:end]
    body = "".join(body.split())
    wrapped = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    pem = f"-----BEGIN PRIVATE KEY-----\n{wrapped}\n-----END PRIVATE KEY-----\n"
    try:
        serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        shown = f"{body[:25]}...{body[-10:]}" if len(body) > 40 else body
        raise InvalidDkimKey(f"invalid dkim key {shown!r}") from None
    return pem


def dkim_public_key(private_pem: str) -> str:
    """dkim.strip_key: the public key's base64, without PEM armour or newlines."""
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public_pem.decode("ascii").replace("\n", "").split("-----")[2]


def domain_dns(name: str, dkim_key: str | None, env: dict[str, str]) -> dict[str, str]:
    """The dns_* attributes models.Domain computes for one domain."""
    hostname = env.get("HOSTNAMES", "").split(",")[0].strip()
    records = {
        "dns_mx": f"{name}. {DNS_TTL} IN MX 10 {hostname}.",
        "dns_spf": f'{name}. {DNS_TTL} IN TXT "v=spf1 mx a:{hostname} ~all"',
    }
    if dkim_key:
        public = dkim_public_key(dkim_key)
        selector = env.get("DKIM_SELECTOR") or DKIM_SELECTOR
        domain = env.get("DOMAIN", "")
        rua = f" rua=mailto:{env['DMARC_RUA']}@{domain};" if env.get("DMARC_RUA") else ""
        ruf = f" ruf=mailto:{env['DMARC_RUF']}@{domain};" if env.get("DMARC_RUF") else ""
        records["dkim_publickey"] = public
        records["dns_dkim"] = (
            f'{selector}._domainkey.{name}. {DNS_TTL} IN TXT "v=DKIM1; k=rsa; p={public}"'
        )
        records["dns_dmarc"] = (
            f'_dmarc.{name}. {DNS_TTL} IN TXT "v=DMARC1; p=reject;{rua}{ruf} adkim=s; aspf=s"'
        )
    return records


def export_config(
    config: dict[str, dict[str, dict[str, Any]]],
    env: dict[str, str],
    *,
    sections: list[str],
    dns: bool,
    secrets: bool,
) -> str:
    """`config-export --json` of the given sections (the stand-in knows only JSON)."""
    document: dict[str, list[dict[str, Any]]] = {}
    for section in _SECTION_ORDER:
        if section not in sections:
            continue
        items = []
        for key, item in sorted(config.get(section, {}).items()):
            shown = {k: v for k, v in item.items() if k not in ("dkim_key", "password")}
            if section == "domain":
                shown = {k: v for k, v in shown.items() if _DOMAIN_DEFAULTS.get(k, _UNSET) != v}
                if item.get("dkim_key"):
                    shown["dkim_key"] = item["dkim_key"] if secrets else HIDDEN_TEXT
                if dns:
                    shown.update(domain_dns(key, item.get("dkim_key"), env))
            elif section == "user" and item.get("password"):
                shown["password"] = item["password"] if secrets else HIDDEN_TEXT
            items.append(shown)
        document[section] = items
    return json.dumps(document, separators=(",", ":"))
