"""The schema of the settings that are not thresholds: names, types, defaults, checks.

Thresholds are numbers with a safe range per machine and live in capacity.js;
everything else the owner can set (`fazt config set`, `PUT /api/config`, the
dashboard) is declared here, once. Adding a setting is one `Setting(...)` line in
`SETTINGS`. A value is checked by `parse`, which turns command-line text into
the setting's type or raises one readable sentence.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fazt.constants import DEFAULT_PORT
from fazt.errors import FaztError
from fazt.hosts import ascii_host
from fazt.replica.target import check_url as check_replica_url

TYPES = ("bool", "choice", "string", "int", "list")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# The settings the ACME client is made from: a change of any of them is the owner's fix
# of a failing CA, so it ends the recorded failures and their backoff (instance.py).
CA_SETTINGS = ("acme_directory", "acme_email", "acme_ca_bundle")


def check_domain(value: str) -> str | None:
    """`value` as ascii_host leaves it (lower-case, no trailing dot, an IDN as xn--, as Host
    headers and SNI carry it): ACME orders certificates for D and admin.D, so anything a
    CA would refuse ('a..b', '*.test', 'Bücher.test' unconverted) is refused."""
    if not value or not all(_DOMAIN_LABEL.fullmatch(x) for x in value.split(".")):
        return f"{value!r} is not a valid domain."
    return None


_DOMAIN_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _check_address(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"{value!r} is not an IP address or a CIDR range such as 10.0.0.0/8."
    return None


def _check_email(value: str) -> str | None:
    if value and ("@" not in value or " " in value):
        return f"{value!r} is not an email address."
    return None


def _check_url(value: str) -> str | None:
    if not value.startswith(("https://", "http://")) or not urllib.parse.urlsplit(value).hostname:
        return f"{value!r} is not an http(s) URL."
    return None


def _check_pem_file(value: str) -> str | None:
    """Checked when set, so a wrong path is a sentence now, not a failed order later."""
    if not value:
        return None
    try:
        ssl.create_default_context().load_verify_locations(cafile=value)
    except ssl.SSLError:  # an OSError too: the file was read
        return f"{value} holds no PEM certificate."
    except OSError as exc:
        return f"cannot read {value}: {exc.strerror or exc}."
    return None


@dataclass(frozen=True)
class Setting:
    """One setting. `check` sees a value of the right type (each item, for a list)
    and returns a sentence saying what is wrong, or None."""

    key: str
    type: str
    default: Any
    label: str
    description: str
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    check: Callable[[str], str | None] | None = field(default=None, compare=False)
    # Brings text to the one form the setting is kept in, before `check` sees it.
    clean: Callable[[str], str] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "type": self.type, "default": self.default,
                "label": self.label, "description": self.description,
                "choices": list(self.choices), "min": self.min, "max": self.max}


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("domain", "string", "localhost", "Domain",
            "Sites are served at NAME.domain and the dashboard at admin.domain.",
            check=check_domain, clean=ascii_host),
    Setting("port", "int", DEFAULT_PORT, "Port",
            "The plain HTTP port `fazt server start` listens on when --port is not given.",
            min=1, max=65535),
    Setting("trusted_proxies", "list", [], "Trusted proxies",
            "Addresses or CIDR ranges of reverse proxies whose X-Forwarded-For and "
            "X-Forwarded-Proto headers are believed.", check=_check_address),
    Setting("keep_versions", "int", 10, "Versions kept",
            "How many versions of each site are kept for rollback: the live one and "
            "the others most recently live (by a deploy or a rollback).",
            min=1, max=1000),
    Setting("https", "choice", "off", "HTTPS",
            "Serve HTTPS with certificates obtained automatically over ACME "
            "(from the next `fazt server start`).",
            choices=("off", "on")),
    Setting("acme_email", "string", "", "ACME email",
            "The contact address given to the certificate authority (may stay empty).",
            check=_check_email),
    Setting("acme_directory", "string", LETS_ENCRYPT, "ACME directory",
            f"The certificate authority's ACME directory URL; Let's Encrypt staging is "
            f"{LETS_ENCRYPT_STAGING}.", check=_check_url),
    Setting("acme_ca_bundle", "string", "", "ACME CA bundle",
            "A PEM file trusted, besides the system store, for the ACME server's own HTTPS "
            "(empty: the system store only).", check=_check_pem_file),
    Setting("replica_url", "string", "", "Replica",
            "Where Litestream streams the database continuously (an s3:// URL; empty: off). "
            "Set it with `fazt replica set`, which also takes the credentials.",
            check=check_replica_url),
    Setting("hsts_max_age", "int", 31536000, "HSTS max-age",
            "Seconds browsers remember to use HTTPS only (Strict-Transport-Security).",
            min=0, max=63072000),
)}


def keys() -> list[str]:
    return list(SETTINGS)


def defaults() -> dict[str, Any]:
    return {key: json.loads(json.dumps(s.default)) for key, s in SETTINGS.items()}


def schema() -> list[dict[str, Any]]:
    return [s.as_dict() for s in SETTINGS.values()]


_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")


def parse(key: str, value: Any) -> Any:
    """`value` (JSON from the API, or text from the command line) as the setting's type.

    Raises FaztError with one sentence when it does not fit.
    """
    s = SETTINGS.get(key)
    if s is None:
        raise FaztError(f"Unknown setting {key!r}; see `fazt config get`.")
    if s.type == "bool":
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in _TRUE + _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
        raise FaztError(f"{key} must be true or false, not {value!r}.")
    if s.type == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise FaztError(f"{key} must be a whole number, not {value!r}.")
        if (s.min is not None and value < s.min) or (s.max is not None and value > s.max):
            raise FaztError(f"{key} must be between {s.min} and {s.max}, not {value}.")
        return value
    if s.type == "list":
        items = _list(key, value)
        for item in items:
            _checked(s, item)
        return items
    if s.type == "choice" and (not isinstance(value, str) or value.strip() not in s.choices):
        raise FaztError(f"{key} must be one of {', '.join(s.choices)}, not {json.dumps(value)}.")
    if not isinstance(value, str):
        raise FaztError(f"{key} must be text, not {json.dumps(value)}.")
    return _checked(s, value.strip())


def _list(key: str, value: Any) -> list[str]:
    """A JSON array, or command-line text: a JSON array or comma-separated items."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise FaztError(f"{key} is not a valid JSON list.") from None
        else:
            value = text.split(",")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FaztError(f"{key} must be a list of text items.")
    return [item.strip() for item in value if item.strip()]


def _checked(s: Setting, value: str) -> str:
    if s.clean:
        value = s.clean(value)
    problem = s.check(value) if s.check else None
    if problem:
        raise FaztError(f"{s.key}: {problem}")
    return value
