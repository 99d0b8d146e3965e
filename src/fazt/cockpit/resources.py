"""The admin API's small resources: session, status, config, tokens, sites and logs.

Signing in and out and reading the status use RAM only. Calls that change the
database go through the single writer and then update RAM (the pinned config,
the token set, the session key), so what the cockpit reads next is already true.
"""

import json

import falcon

from fazt import proxies, settings, tokens
from fazt.auth import Auth, new_session_key
from fazt.cockpit.headers import HEADERS
from fazt.cockpit.session import (
    clear_session_cookie,
    known_device,
    session_cookie,
    session_from_header,
    set_device_cookie,
    set_session_cookie,
)
from fazt.deploy import ADMIN_SITE, check_site_name
from fazt.errors import FaztError, NotFound
from fazt.http_errors import http_error
from fazt.instance import REVOKED_SESSIONS, Instance
from fazt.stability import thresholds as th
from fazt.store.config import save_secret
from fazt.store.env import check_key, list_vars
from fazt.store.sites import list_sites, list_versions

JSON_LIMIT = 64 * 1024  # a settings form or a login is a few hundred bytes


def read_json(req: falcon.Request) -> dict:
    """A small JSON object body, or a 400/413 that says what is wrong."""
    if (req.content_length or 0) > JSON_LIMIT:
        raise http_error(413, "too_large", f"A JSON body may be {JSON_LIMIT // 1024} KB at most.")
    raw = req.bounded_stream.read(JSON_LIMIT + 1)
    if len(raw) > JSON_LIMIT:
        raise http_error(413, "too_large", f"A JSON body may be {JSON_LIMIT // 1024} KB at most.")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # a few KB of "[" nest past Python's stack
        raise http_error(400, "bad_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise http_error(400, "bad_json", "The body must be a JSON object.")
    return body


class Login:
    """Checked against the hash in RAM, rate-limited per address, never a database read."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth = self.instance.auth
        # by its key: guesses from every address of one IPv6 /64 count as one address's
        address = proxies.address_key(req.remote_addr or "-")
        trusted = owner_side(req, auth)
        refuse_while(auth.limiter.retry_after(address, trusted))
        body = read_json(req)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise http_error(400, "bad_request", "Send a username and a password.")
        wait, stamp = auth.limiter.begin(address, trusted)  # counted as failed until proven
        refuse_while(wait)
        if not auth.check_password(username, password):
            raise http_error(401, "wrong_credentials", "Wrong username or password.")
        auth.limiter.succeeded(address, stamp)
        set_session_cookie(req, resp, auth.issue())
        resp.media = {"username": auth.username}


class Device:
    """Marks the signed-in browser as the owner's (a device cookie, sent to the sign-in
    alone), so that its sign-ins pass the server-wide ceiling on failed guesses. The
    dashboard asks for it after signing in; the sign-in's own answer sets only the
    session cookie, which scripts and tests read as its one Set-Cookie."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        set_device_cookie(req, resp, self.instance.auth.issue_device())
        resp.media = {"ok": True}


def owner_side(req: falcon.Request, auth: Auth) -> bool:
    """Whether a sign-in comes from where the owner is: a browser that signed in
    before, or the machine itself (a loopback peer, not a proxy's visitor). Such a
    sign-in is let in past the server-wide ceiling on failed guesses, so a crowd of
    guessers does not lock the owner out; its own address's limit still holds."""
    if known_device(req, auth):
        return True
    ip = proxies.ip_of(req.remote_addr or "")
    return ip is not None and ip.is_loopback and "fazt.peer" not in req.env


def refuse_while(wait: int) -> None:
    if wait:
        raise http_error(429, "too_many_attempts",
                         f"Too many failed sign-ins, from this address or from everyone "
                         f"at once; wait {wait} s.", wait)


class Logout:
    """Ends this session only; the owner's other devices stay signed in."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        cookie = session_cookie(req, self.instance.auth)
        if cookie and self.instance.auth.revoke(cookie):
            self.instance.save_revoked_sessions()
        clear_session_cookie(req, resp)
        resp.media = {"ok": True}


class LogoutAll:
    """Rotate the session key: every session, on every device, ends now and after restarts."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = new_session_key()
        with self.instance.db.write() as conn:
            save_secret(conn, "session_key", key)
            save_secret(conn, REVOKED_SESSIONS, "{}")
        self.instance.auth.rotate(key)
        clear_session_cookie(req, resp)
        resp.media = {"ok": True}


class Session:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"username": self.instance.auth.username}


class Status:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.instance.status()


_JSON = falcon.media.JSONHandler()  # Falcon's default, as `resp.media` above uses it
_API_HEADERS = (("Cache-Control", "no-store"), *HEADERS.items(),
                ("Content-Type", falcon.MEDIA_JSON))


class QuickStatus:
    """The status read without Falcon, for the event loop (server/statuspath.py): the
    answer `Status` gives through the middleware (Authentication's session check, the
    security headers), from RAM only. Only for a plain session-cookie read: the
    caller leaves anything else to the app."""

    PATH = "/api/system/status"

    def __init__(self, instance: Instance):
        self.instance = instance

    def __call__(self, cookie_header: str | None) -> tuple[tuple, bytes] | None:
        """(headers, JSON body) when the Cookie header carries a valid session, else None."""
        if session_from_header(cookie_header, self.instance.auth) is None:
            return None
        return _API_HEADERS, _JSON.serialize(self.instance.status(), falcon.MEDIA_JSON)


class Recalibrate:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.instance.recalibrate()
        resp.media = self.instance.status()


class Config:
    """Thresholds with their schema and safe ranges, and the settings with theirs; a
    threshold past its safe range needs `break_glass: true` (else 409 with the
    warning) and is recorded as an override."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def view(self) -> dict:
        i = self.instance
        values = {k: i.config[k] for k in (*th.keys(), *settings.keys())}
        return {
            "values": values,
            "schema": th.schema(),
            "settings": settings.schema(),
            "safe": th.safe({k: i.config[k] for k in th.keys()}, i.machine),
            "overrides": i.overrides,
            "owner_keys": i.config.get("owner_keys") or [],
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.view()

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        values = read_json(req)
        break_glass = values.pop("break_glass", False)
        if not isinstance(break_glass, bool):
            raise http_error(400, "bad_request", "break_glass must be true or false.")
        if not values:
            raise http_error(400, "bad_request", "Send at least one setting to change.")
        self.instance.set_config(values, break_glass)
        resp.media = self.view()


class ConfigReset:
    """`{"keys": [...]}` or `{"all": true}`: back to what the probe computes ("Reset to
    recommended"), the owner's mark and any break-glass override gone."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        keys = body.get("keys")
        if body.get("all") is True and keys is None:
            keys = None
        elif "all" in body or not (isinstance(keys, list) and keys
                                   and all(isinstance(k, str) for k in keys)):
            # one or the other, as the command line takes one KEY or --all
            raise http_error(400, "bad_request",
                             'Send {"keys": ["name", ...]} or {"all": true}.')
        self.instance.reset_config(keys)
        resp.media = Config(self.instance).view()


class Tokens:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"tokens": tokens.list_tokens(self.instance.db)}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = read_json(req).get("name")
        if not isinstance(name, str):
            raise http_error(400, "bad_request", "A token needs a name.")
        token = self.instance.create_token(name)
        resp.status = falcon.HTTP_201
        resp.media = {"token": token, "name": name.strip()}


class Token:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_delete(self, req: falcon.Request, resp: falcon.Response, token_id: int) -> None:
        if not self.instance.revoke_token(token_id):
            raise NotFound(f"There is no active token with id {token_id}.")
        resp.media = {"revoked": token_id}


def user_site(name: str) -> str:
    """A site name the owner may touch here: valid, and not the cockpit's own."""
    if name == ADMIN_SITE:
        raise FaztError("The admin site holds the cockpit; it is not yours to change here.")
    return check_site_name(name)


class Sites:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self.instance.db.read() as conn:
            sites = [s for s in list_sites(conn) if s["name"] != ADMIN_SITE]
        resp.media = {"sites": sites, "domain": self.instance.domain}


class Site:
    def __init__(self, instance: Instance):
        self.instance = instance

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        user_site(name)
        removed = self.instance.remove_site(name)
        if not removed:
            raise NotFound(f"There is no site named {name!r}.")
        resp.media = {"removed": name}


class SiteVersions:
    """The site's kept versions, newest first, the live one marked."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        user_site(name)
        with self.instance.db.read() as conn:
            versions = list_versions(conn, name)
        if not versions:
            raise NotFound(f"There is no site named {name!r}.")
        resp.media = {"site": name, "versions": versions}


class SiteRollback:
    """`{"version": N}` (or nothing: the older version live most recently) goes live at once."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        user_site(name)
        version = read_json(req).get("version")
        if version is not None and (type(version) is not int or version < 1):
            raise http_error(400, "bad_request", "version must be a positive whole number.")
        resp.media = self.instance.rollback(name, version)


def existing_site(instance: Instance, name: str) -> str:
    user_site(name)
    if not instance.vfs.site_exists(name):
        raise NotFound(f"There is no site named {name!r}.")
    return name


class SiteEnv:
    """The names of a site's secrets and when each was set; never a value."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        existing_site(self.instance, name)
        with self.instance.db.read() as conn:
            names = list_vars(conn, name)
        resp.media = {"site": name, "env": names}


class SiteEnvVar:
    """`PUT {"value": "..."}` sets one secret (write-only: no call ever returns it);
    `DELETE` removes it. The handler's next request reads `fazt.env.KEY`."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str, key: str) -> None:
        existing_site(self.instance, name)
        value = read_json(req).get("value")
        if not isinstance(value, str):
            raise http_error(400, "bad_request", 'Send the secret as {"value": "..."}.')
        at = self.instance.set_env(name, check_key(key), value)
        resp.media = {"site": name, "key": key, "updated_at": at}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, key: str
                  ) -> None:
        existing_site(self.instance, name)
        if not self.instance.unset_env(name, check_key(key)):
            raise NotFound(f"Site {name!r} has no secret named {key!r}.")
        resp.media = {"site": name, "removed": key}


class SiteLogs:
    """The site's console lines from the runtime's ring in RAM, oldest first."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        user_site(name)
        if not self.instance.vfs.site_exists(name):
            raise NotFound(f"There is no site named {name!r}.")
        resp.media = {"site": name, "lines": self.instance.runtime.logs(name)}
