"""`fazt deploy --server URL`: the HTTP client side of `POST /api/deploy`."""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from fazt.deploy import Source, check_site_name, files_from_directory
from fazt.errors import FaztError
from fazt.zipbuild import build_zip


def deploy_remote(server: str, site: str, token: str | None, directory: str) -> dict:
    """Upload `directory` as `site` to the cockpit at `server`; the server's answer."""
    check_site_name(site)
    if not token:
        raise FaztError("Deploying with --server needs --token (see `fazt token create`).")
    source = files_from_directory(directory)  # hidden files never leave this machine
    url, host = loopback(server.rstrip("/") + f"/api/deploy?site={site}")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/zip"}
    if host:
        headers["Host"] = host
    with build_zip(source.files) as upload:  # on disk: sent in pieces
        headers["Content-Length"] = str(os.fstat(upload.fileno()).st_size)
        request = urllib.request.Request(url, data=upload, method="POST", headers=headers)
        return _send(request, server, source)


def _send(request: urllib.request.Request, server: str, source: Source) -> dict:
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            result = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise FaztError(f"The server refused the deploy ({exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FaztError(f"Cannot reach {server}: {getattr(exc, 'reason', exc)}.") from None
    result = {"files": len(source.files), **result}
    return {**result, "skipped": sorted({*source.skipped, *result.get("skipped", [])})}


def loopback(url: str) -> tuple[str, str | None]:
    """`*.localhost` is loopback (RFC 6761) though the system resolver may not know it:
    connect to 127.0.0.1 and name the host in the Host header instead."""
    parts = urllib.parse.urlsplit(url)
    name = (parts.hostname or "").lower()
    if not name.endswith(".localhost"):
        return url, None
    netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), parts.netloc
