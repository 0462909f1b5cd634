"""The rules a purchase's input must keep, and the bounded decoding of raw start arguments.

Pure functions and constants (the workflow sandbox shares this module between runs,
worker.PASSED_THROUGH). Every limit is the strictest rule among the outside systems the
value reaches, cited beside it, so that input the contract accepts is never refused
downstream after money is spent. The data shapes are in workflows/contracts.py, the
notify URL policy in workflows/url_policy.py.
"""

import json
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

# IDNA 2008 (RFC 5890-5893), the rules registries and MailU's own `idna` use; the
# standard library's "idna" codec is IDNA 2003. Pure functions over static tables,
# so deterministic (worker.PASSED_THROUGH_LIBRARIES).
import idna
from temporalio.exceptions import ApplicationError


class InvalidPurchaseRequest(ValueError):
    """Bad input, found before anything is created. Names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"invalid purchase request: field '{field_name}' {rule}")
        self.field = field_name
        self.rule = rule

    def as_failure(self) -> ApplicationError:
        """What the workflow and the activities raise for it, made here only: final
        (retrying cannot fix input), typed, details {field, rule} for clients
        (README "bad input"; clients/typescript reads the same details)."""
        return ApplicationError(
            str(self),
            {"field": self.field, "rule": self.rule},
            type="InvalidPurchaseRequest",
            non_retryable=True,
        )


# Plan names are what a back end sends; the catalog itself is the worker's configuration.
PLAN_NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


# --------------------------------------------------------------------------- limits
#
# Every value in a purchase ends up in some outside system. Each limit below is the
# strictest rule among the systems that value reaches, with its source, so that an
# input the contract accepts can never be refused downstream after money is spent.

# Tenant ids become Vault paths, server names and the Hetzner label `tenant`. Hetzner
# label values: at most 63 characters, alphanumeric at both ends, `-_.` inside
# (https://docs.hetzner.cloud/#labels); Vault path segments and RFC 1123 host name
# labels (the server name) then narrow it to lowercase `[a-z0-9-]`.
TENANT_ID_RULE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Purchase ids become the Hetzner label `purchase` (label value rule above, case kept)
# and the workflow id `purchase-{id}`.
PURCHASE_ID_RULE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
# RFC 1035 section 2.3.4 / RFC 1123 section 2.1: labels of 1-63 letters, digits, hyphens,
# not starting or ending with a hyphen.
DOMAIN_LABEL_RULE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# MailU 2024.06 validates domains with python-validators 0.28.1 `validators.domain`
# (core/admin/mailu/api/v1/domain.py; core/base/requirements-prod.txt): the top-level
# label is 2-63 characters, starts alphanumeric and ends with a letter.
TOP_LEVEL_LABEL_RULE = re.compile(r"[a-z0-9][a-z0-9-]{0,61}[a-z]")
# RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, 253 characters as text.
MAX_DNS_NAME = 253
# The longest name we derive from the customer's domain and publish or set as PTR:
# `mail.{domain}` (webmail host, reverse DNS via Hetzner change_dns_ptr, MailU HOSTNAMES).
LONGEST_DERIVED_PREFIX = "mail."
# MailU 2024.06 stores domains in `IdnaDomain = String(80)` (core/admin/mailu/models.py,
# Domain.name): longer names are refused by its PostgreSQL and MySQL back ends.
MAILU_MAX_DOMAIN = 80
MAX_DOMAIN = min(MAILU_MAX_DOMAIN, MAX_DNS_NAME - len(LONGEST_DERIVED_PREFIX))
# The admin mailbox we create. MailU 2024.06 (core/admin/mailu/ui/forms.py LOCALPART_REGEX;
# models.py Email.localpart String(80), IdnaEmail String(255)) and RFC 5321 section 4.5.3.1
# (local part <= 64, path <= 256 with brackets, so address <= 254).
ADMIN_LOCALPART = "admin"
MAILU_LOCALPART_RULE = re.compile(
    r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)
MAX_LOCALPART = 64
MAX_EMAIL = 254
MAX_REQUESTED_BY = 200
# The whole start argument: a flat object of short strings fits easily; anything larger or
# deeper is refused before it is decoded (a 5000-deep array would exhaust Python's stack).
MAX_INPUT_BYTES = 16 * 1024
MAX_INPUT_DEPTH = 8
# The codec marks a payload it could not decrypt with this encoding instead of failing the
# whole workflow task, so a bad start becomes InvalidPurchaseRequest (runtime/codec.py).
UNDECODABLE_ENCODING = b"binary/x-mailprov-undecodable"


# --------------------------------------------------------------------------- raw input


def purchase_input_from_payloads(payloads: Sequence[tuple[bytes, bytes]]) -> Any:
    """The start arguments, as (encoding, data) pairs, into the one JSON value they hold.

    Any client can start the workflow with anything: no argument, several, a payload in
    an encoding we do not read, bytes that are not JSON. Each becomes an
    InvalidPurchaseRequest naming the problem, never an exception that would fail the
    workflow task and retry it forever.
    """
    if len(payloads) != 1:
        raise InvalidPurchaseRequest(
            "(input)", f"must be exactly one argument, the purchase object (got {len(payloads)})"
        )
    encoding, data = payloads[0]
    if encoding == b"binary/null":
        return None
    if encoding == UNDECODABLE_ENCODING:
        reason = data.decode("utf-8", "replace")[:200]
        raise InvalidPurchaseRequest("(input)", f"could not be decoded: {reason}")
    if encoding != b"json/plain":
        shown = encoding.decode("ascii", "replace")[:60]
        raise InvalidPurchaseRequest(
            "(input)", f"must be JSON (encoding json/plain), got encoding {shown!r}"
        )
    return decode_purchase_json(data)


def decode_purchase_json(data: bytes) -> Any:
    """Bounded JSON decoding: size and nesting are checked before the parser runs."""
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidPurchaseRequest(
            "(input)", f"must be at most {MAX_INPUT_BYTES} bytes of JSON (got {len(data)})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPurchaseRequest("(input)", "must be UTF-8 encoded JSON") from None
    if _nesting_depth(text) > MAX_INPUT_DEPTH:
        raise InvalidPurchaseRequest(
            "(input)", f"must not nest arrays or objects deeper than {MAX_INPUT_DEPTH}"
        )
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except ValueError as err:
        # JSONDecodeError names line and column; our own hooks name the key or constant.
        raise InvalidPurchaseRequest("(input)", f"is not valid JSON: {err}") from None


def _nesting_depth(text: str) -> int:
    """Deepest [ or { nesting outside strings; a linear scan that cannot recurse."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; refusing them leaves nothing to disagree on.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def json_type_name(value: Any) -> str:
    """How an error message names a JSON value's type ("a string", "an array", "null")."""
    names = {type(None): "null", bool: "a boolean", str: "a string", list: "an array"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --------------------------------------------------------------------------- start arguments
#
# Every workflow's start argument is one JSON object of strings, read and checked by the
# same rules; each workflow refuses it with its own error type (InvalidPurchaseRequest,
# InvalidRotationRequest, ...), all built as `Error(field, rule)`.

Refuse = Callable[[str, str], Exception]


def start_argument(payloads: Sequence[tuple[bytes, bytes]], refuse: Refuse, expected: str) -> Any:
    """The one JSON value of another workflow's start, decoded as a purchase's is (one
    argument, JSON only, bounded size and depth, no duplicate keys) but refused with the
    workflow's own error; `expected` names the argument in the "exactly one" message."""
    if len(payloads) != 1:
        raise refuse("(input)", f"must be exactly one argument{expected} (got {len(payloads)})")
    try:
        return purchase_input_from_payloads(payloads)
    except InvalidPurchaseRequest as err:
        raise refuse(err.field, err.rule) from None


def json_object(raw: Any, known: Collection[str], refuse: Refuse) -> dict[str, Any]:
    """`raw` as a JSON object holding only `known` fields (the first unknown one named)."""
    if not isinstance(raw, dict):
        raise refuse("(input)", f"must be a JSON object, got {json_type_name(raw)}")
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise refuse(repr(unknown[0][:60])[1:-1], "is not a known field")
    return raw


def string_field(fields: dict[str, Any], name: str, refuse: Refuse) -> str:
    """A required string field (JSON null counts as missing)."""
    value = optional_string_field(fields, name, refuse)
    if value is None:
        raise refuse(name, "is required")
    return value


def optional_string_field(fields: dict[str, Any], name: str, refuse: Refuse) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise refuse(name, "must be a string")
    return value


def check_tenant_id(tenant_id: str, refuse: Refuse) -> None:
    if not TENANT_ID_RULE.fullmatch(tenant_id):
        raise refuse(
            "tenant_id", "must be 1-63 characters of [a-z0-9-], starting and ending with [a-z0-9]"
        )


def check_request_id(value: str, field_name: str, refuse: Refuse) -> None:
    """A purchase id, or an id that follows its rule (a plan change's request id)."""
    if not PURCHASE_ID_RULE.fullmatch(value):
        raise refuse(
            field_name,
            "must be 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric",
        )


def check_plan_name(plan: str, refuse: Refuse) -> None:
    """The name's form only; the operator's catalog decides whether it exists."""
    if not PLAN_NAME_RULE.fullmatch(plan):
        raise refuse("plan", "must match [a-z0-9][a-z0-9_-]{0,62}")


def check_text(value: str, field_name: str, limit: int, refuse: Refuse) -> None:
    """Free text that reaches audit rows and logs (requested_by, a reason): bounded,
    not blank, no control characters."""
    if not value.strip() or len(value) > limit:
        raise refuse(field_name, f"must be 1-{limit} characters, not blank")
    if any(not ch.isprintable() for ch in value):
        raise refuse(field_name, "must not contain control characters")


def validate_domain(domain: str) -> None:
    """A lowercase IDNA (A-label) FQDN every downstream system accepts (see the limits)."""
    if domain != domain.lower():
        raise InvalidPurchaseRequest("domain", "must be lowercase")
    if not domain.isascii():
        raise InvalidPurchaseRequest("domain", "must be in IDNA ASCII form (xn--...), not Unicode")
    if len(domain) > MAX_DOMAIN:
        raise InvalidPurchaseRequest(
            "domain",
            f"must be at most {MAX_DOMAIN} characters (MailU stores at most "
            f"{MAILU_MAX_DOMAIN}; {LONGEST_DERIVED_PREFIX}{{domain}} must fit {MAX_DNS_NAME})",
        )
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidPurchaseRequest("domain", "must be a fully qualified name with >= 2 labels")
    for label in labels:
        if not DOMAIN_LABEL_RULE.fullmatch(label):
            raise InvalidPurchaseRequest(
                "domain",
                f"label '{label}' must be 1-63 characters of [a-z0-9-], "
                "not starting or ending with '-'",
            )
        if label[2:4] == "--" and not label.startswith("xn--"):
            # RFC 5891 section 4.2.3.1: '--' in positions 3-4 is reserved for A-labels.
            raise InvalidPurchaseRequest(
                "domain", f"label '{label}' must not have '--' in positions 3-4 unless xn--"
            )
        if label.startswith("xn--"):
            check_a_label(label)
    if not TOP_LEVEL_LABEL_RULE.fullmatch(labels[-1]):
        raise InvalidPurchaseRequest(
            "domain", "top-level label must be 2-63 characters and end with a letter"
        )


def check_a_label(label: str, field_name: str = "domain") -> None:
    """An `xn--` label must be an IDNA 2008 A-label (RFC 5891 section 5.4).

    IDNA 2003 (the stdlib codec) maps instead of refusing: it accepts symbols such as
    xn--ls8h (U+1F4A9) that IDNA 2008 disallows, and refuses xn--zca ("ß", PVALID in
    IDNA 2008) because 2003 maps it to "ss". `idna.ulabel` decodes the punycode and
    checks each code point's IDNA 2008 property, NFC, hyphens, joiners and the Bidi rule.
    """
    try:
        idna.ulabel(label)
    except (idna.IDNAError, UnicodeError) as err:
        raise InvalidPurchaseRequest(
            field_name, f"label '{label}' is not a valid IDNA 2008 punycode A-label: {err}"
        ) from None
