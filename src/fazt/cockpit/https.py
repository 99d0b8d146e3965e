"""The admin API for HTTPS: certificates (list, import) and custom domains.

What `fazt cert ...` and `fazt site domain ...` do, for the dashboard and for
scripts. No response ever carries a private key.
"""

import falcon

from fazt.certs import certificate_list
from fazt.cockpit.resources import read_json
from fazt.errors import FaztError
from fazt.instance import Instance
from fazt.store.certs import load_domains


class Certificates:
    """`GET /api/certificates` (from RAM while the server keeps them) · `POST` an import."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        autocert = self.instance.autocert
        if autocert is not None:
            summary = autocert.summary()
        else:  # HTTPS is off; imported certificates are still listed
            summary = {"ordering": None, "certificates": certificate_list(self.instance.db)}
        resp.media = {"enabled": autocert is not None, "port": self.instance.https_port,
                      **summary}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        host, cert, key = body.get("host"), body.get("cert"), body.get("key")
        if not all(isinstance(v, str) and v for v in (host, cert, key)):
            raise FaztError("Send host, cert (the PEM chain) and key (the PEM private key).")
        resp.media = self.instance.import_certificate(host, cert.encode(), key.encode())
        resp.status = falcon.HTTP_201


class Domains:
    """`GET /api/domains`: every custom host and the site it serves."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self.instance.db.read() as conn:
            domains = load_domains(conn)
        resp.media = {"domains": [{"host": h, "site": s} for h, s in domains.items()]}


class SiteDomains:
    """`POST /api/sites/NAME/domains` `{"host"}`."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        host = read_json(req).get("host")
        if not isinstance(host, str):
            raise FaztError("Send the host, such as {\"host\": \"www.example.org\"}.")
        resp.media = {"site": name, "host": self.instance.add_domain(name, host)}
        resp.status = falcon.HTTP_201


class SiteDomain:
    """`DELETE /api/sites/NAME/domains/HOST` (its own resource: one route, one set of
    parameters, so no method answers a route it cannot take)."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str,
                  host: str) -> None:
        resp.media = {"site": name, "host": self.instance.remove_domain(name, host),
                      "removed": True}
