"""Let's Encrypt's test CA, pebble, on loopback: the recipe in DESIGN.md.

pebble resolves every name through a tiny dnslib server that answers A with
127.0.0.1 (and AAAA with nothing, or pebble would try ::1 first), serves its
own HTTPS with a trustme certificate, sends its HTTP-01 checks to the port we
name, and makes a new root CA at every start (read from its management port).
"""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests
import trustme
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback(BaseResolver):
    """Every name is 127.0.0.1; IPv6 has no answer."""

    def resolve(self, request, handler):
        reply = request.reply()
        if request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=60))
        return reply


def available() -> bool:
    return shutil.which("pebble") is not None


class Pebble:
    """A running pebble whose HTTP-01 checks go to 127.0.0.1:`http_port`."""

    def __init__(self, folder: Path, http_port: int, validity_s: int | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.dns = DNSServer(Loopback(), address="127.0.0.1", port=free_port(socket.SOCK_DGRAM),
                             logger=DNSLogger(logf=lambda line: None))
        self.dns.start_thread()
        self.tls_ca = trustme.CA()
        leaf = self.tls_ca.issue_cert("localhost", "127.0.0.1")
        leaf.private_key_pem.write_to_path(str(folder / "pebble-key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(folder / "pebble-cert.pem"))
        # What fazt's acme_ca_bundle names: the CA of pebble's own HTTPS.
        self.ca_bundle = folder / "pebble-https-ca.pem"
        self.tls_ca.cert_pem.write_to_path(str(self.ca_bundle))
        self.port, self.management = free_port(), free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(folder / "pebble-cert.pem"),
            "privateKey": str(folder / "pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        if validity_s:
            config["pebble"]["certificateValidityPeriod"] = validity_s
        (folder / "pebble.json").write_text(json.dumps(config))
        self.log_path = folder / "pebble.log"
        self._log = open(self.log_path, "wb")
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(self.folder / "pebble.json"),
             "-dnsserver", f"127.0.0.1:{self.dns.server.server_address[1]}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def restart(self) -> None:
        """The same ports, a new CA that remembers no account."""
        self._stop()
        self._start()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pebble exited:\n{self.log()}")
            try:
                requests.get(self.directory, verify=str(self.ca_bundle), timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"pebble did not start:\n{self.log()}")

    def root_pem(self) -> bytes:
        """The root that signs this run's certificates (new at every pebble start)."""
        r = requests.get(f"https://127.0.0.1:{self.management}/roots/0",
                         verify=str(self.ca_bundle), timeout=5)
        r.raise_for_status()
        return r.content

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def issued(self) -> int:
        """How many certificates pebble has issued (its log names each)."""
        return self.log().count("Issued certificate serial")

    def _stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self._stop()
        self._log.close()
        self.dns.stop()
