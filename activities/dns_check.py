"""Are the records we handed a customer published? Resolved through dnspython.

Each record (workflows/contracts.DnsRecord: A and AAAA of mail.{domain}, MX, SPF,
DKIM, DMARC) is looked up by name and type through the worker's resolver and
compared with what we handed out:
- A/AAAA: as addresses (a zone may write an IPv6 address in another form);
- MX: preference and exchange, names compared case-insensitively (RFC 4343);
- TXT: a record's character-strings are one value, concatenated (RFC 7208 3.3,
  RFC 6376 3.6.2.2); other TXT records at the same name (site verification, a
  second SPF-looking record) are allowed beside ours.

Resolver: MAILPROV_DNS_RESOLVERS, a comma-separated list of `address` or
`address:port` (`[v6]:port` for IPv6 with a port); unset, the system's resolver
(/etc/resolv.conf). A recursive resolver caches negative answers for the zone's SOA
minimum (RFC 2308), so a record published after a check may show only after that.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from workflows.activation_contracts import RecordProblem
from workflows.contracts import DnsRecord

RESOLVERS_ENV = "MAILPROV_DNS_RESOLVERS"
LOOKUP_TIMEOUT = 10.0
MAX_FOUND_SHOWN = 4


def resolver_from_setting(setting: str | None) -> dns.asyncresolver.Resolver:
    """The resolver MAILPROV_DNS_RESOLVERS names; the system's when unset or empty."""
    if not setting or not setting.strip():
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[str] = []
        ports: dict[str, int] = {}
        for item in (part.strip() for part in setting.split(",")):
            if not item:
                continue
            address, port = _address_and_port(item)
            servers.append(address)
            if port is not None:
                ports[address] = port
        if not servers:
            raise ValueError(f"{RESOLVERS_ENV} names no resolver")
        resolver.nameservers = servers
        resolver.nameserver_ports = ports
    resolver.lifetime = LOOKUP_TIMEOUT
    return resolver


def resolver_from_env() -> dns.asyncresolver.Resolver:
    return resolver_from_setting(os.environ.get(RESOLVERS_ENV))


def _address_and_port(item: str) -> tuple[str, int | None]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
        port = int(port_text)
    else:
        host, port = item, None
    ipaddress.ip_address(host)  # a resolver is named by address, never by name
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{RESOLVERS_ENV}: port {port} out of range")
    return host, port


def _name(text: str) -> str:
    return text.rstrip(".").lower()


def _normal(record_type: str, data: str) -> str:
    """One record's data in the form both sides are compared in."""
    if record_type in ("A", "AAAA"):
        return str(ipaddress.ip_address(data.strip()))
    if record_type == "MX":
        preference, exchange = data.split()
        return f"{int(preference)} {_name(exchange)}"
    return data


def _found(answer: dns.resolver.Answer, record_type: str) -> list[str]:
    values = []
    for rdata in answer:
        if record_type == "TXT":
            values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        else:
            values.append(_normal(record_type, rdata.to_text()))
    return values


async def check_record(
    resolver: dns.asyncresolver.Resolver, record: DnsRecord
) -> RecordProblem | None:
    """None when `record` is published as handed out, else what is wrong."""
    expected = _normal(record.type, record.value)
    try:
        answer = await resolver.resolve(record.name, record.type, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return RecordProblem(record.name, record.type, record.value, "absent")
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as err:
        return RecordProblem(
            record.name, record.type, record.value, "unresolved", [type(err).__name__]
        )
    if answer.rrset is None:
        return RecordProblem(record.name, record.type, record.value, "absent")
    found = _found(answer, record.type)
    if expected in found:
        return None
    shown = [value[:120] for value in found[:MAX_FOUND_SHOWN]]
    return RecordProblem(record.name, record.type, record.value, "different", shown)


async def missing_records(
    resolver: dns.asyncresolver.Resolver, records: Sequence[DnsRecord]
) -> list[RecordProblem]:
    """Every record of `records` that is not published as handed out, in order."""
    problems = []
    for record in records:
        problem = await check_record(resolver, record)
        if problem is not None:
            problems.append(problem)
    return problems
