"""The cockpit: the dashboard and the admin API on admin.D.

Everything a sign-in or a status check needs is already in RAM (the pinned
dashboard, the password hash, the session key, the config), and the server
serves this app from its own lane of threads, so the owner gets in even
while user traffic or a locked database stalls every site.

Middleware order matters: authentication first (401 says "sign in" before
anything else), then the cross-site guard, and security headers on the way out
of every response.
"""

import falcon

from fazt.cockpit import https
from fazt.cockpit import resources as r
from fazt.cockpit.backup import Backup
from fazt.cockpit.csrf import CrossSiteGuard
from fazt.cockpit.dashboard import Dashboard
from fazt.cockpit.headers import SecurityHeaders
from fazt.cockpit.session import Authentication
from fazt.cockpit.upload import Deploy
from fazt.errors import ReadOnly
from fazt.instance import Instance
from fazt.webapp import new_falcon_app


class FollowerGuard:
    """On a read-only follower, every cockpit call that would change something is
    refused before its body is read (a deploy would otherwise upload first).
    Signing in and out stay: sessions live in RAM."""

    ALLOWED = ("/api/login", "/api/logout", "/api/device")

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method not in ("GET", "HEAD", "OPTIONS") and req.path not in self.ALLOWED:
            raise ReadOnly()


def cockpit_app(instance: Instance) -> falcon.App:
    """The cockpit's Falcon app; the Router sends it every request for admin.D."""
    app = new_falcon_app(instance)
    middlewares = [Authentication(instance), CrossSiteGuard(), SecurityHeaders()]
    if instance.read_only:
        middlewares.insert(2, FollowerGuard())
    for middleware in middlewares:
        app.add_middleware(middleware)
    routes = {
        "/api/login": r.Login(instance),
        "/api/logout": r.Logout(instance),
        "/api/logout-all": r.LogoutAll(instance),
        "/api/device": r.Device(instance),
        "/api/session": r.Session(instance),
        r.QuickStatus.PATH: r.Status(instance),  # the loop answers it too (QuickStatus)
        "/api/system/recalibrate": r.Recalibrate(instance),
        "/api/config": r.Config(instance),
        "/api/config/reset": r.ConfigReset(instance),
        "/api/tokens": r.Tokens(instance),
        "/api/tokens/{token_id:int}": r.Token(instance),
        "/api/sites": r.Sites(instance),
        "/api/sites/{name}": r.Site(instance),
        "/api/sites/{name}/logs": r.SiteLogs(instance),
        "/api/sites/{name}/versions": r.SiteVersions(instance),
        "/api/sites/{name}/rollback": r.SiteRollback(instance),
        "/api/certificates": https.Certificates(instance),
        "/api/domains": https.Domains(instance),
        "/api/sites/{name}/domains": https.SiteDomains(instance),
        "/api/sites/{name}/domains/{host}": https.SiteDomain(instance),
        "/api/sites/{name}/env": r.SiteEnv(instance),
        "/api/sites/{name}/env/{key}": r.SiteEnvVar(instance),
        "/api/deploy": Deploy(instance),
        "/api/backup": Backup(instance),
    }
    for path, resource in routes.items():
        if hasattr(resource, "on_get") and not isinstance(resource, Backup):
            # HTTP wants HEAD wherever GET is (a 405 here broke curl -I and monitors);
            # Falcon sends the headers alone. Not the backup: HEAD would copy the database.
            resource.on_head = resource.on_get
        app.add_route(path, resource)
    app.add_sink(Dashboard(instance), prefix=r"^/(?!api(?:/|$))")  # routes match first
    return app
