"""One fazt: the database, the pinned config and auth, the VFS and the runtime.

Like Datasette's application object, this holds the state every request
needs; the command line and the HTTP layers call into it. Boot happens in the
quiet window before the port opens: config, secrets and the admin assets are
read once into RAM, and from then on the cockpit never waits on the database.
"""

import contextlib
import hashlib
import importlib.resources
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fazt import __version__, certs, settings, tokens
from fazt.auth import Auth, hash_password, new_session_key
from fazt.constants import DEFAULT_PORT, MB
from fazt.deploy import ADMIN_SITE, Source, deploy, files_from_directory
from fazt.errors import Conflict, FaztError, NotFound, ReadOnly
from fazt.metrics import RequestRate
from fazt.replica import target as replica_target
from fazt.siterules import check_rules
from fazt.stability import thresholds as th
from fazt.stability.probe import Machine, probe
from fazt.store import Database, open_database, space
from fazt.store import sites as sites_store
from fazt.store.certs import certificates_stamp, domains_stamp, forget_failures, load_domains
from fazt.store.claim import server_pid, try_claim
from fazt.store.config import (
    active_overrides,
    load_config,
    load_secrets,
    record_override,
    save_config,
    save_secret,
    undo_overrides,
)
from fazt.store.database import Limits, create_database, refuse_not_a_file
from fazt.store.env import env_stamp, set_var, unset_var
from fazt.store.sites import NewFile, count_backends, list_sites
from fazt.tokens import active_token_hashes
from fazt.vfs import VFS, Leases

log = logging.getLogger("fazt")
SAMPLE_SECONDS = 1.0  # how old the status's RSS, database size and replica state may be
SWEEP_SECONDS = 3600.0  # between collections that look at every blob (Leases.sweep)
NORMAL = "normal"
MAINTENANCE = "maintenance"
# The secret holding signed-out sessions (nonce -> expiry), so a restart keeps them out.
REVOKED_SESSIONS = "revoked_sessions"


def package_dir(*parts: str) -> Path:
    return Path(str(importlib.resources.files("fazt").joinpath(*parts)))


def admin_asset_files() -> list[NewFile]:
    """The dashboard and the simulator, as the reserved site `admin` stores them."""
    files = files_from_directory(str(package_dir("cockpit", "assets"))).files
    files += [
        NewFile("simulator/" + f.path, f.mime, f.pieces)
        for f in files_from_directory(str(package_dir("web_simulator"))).files
    ]
    return files


def admin_assets_sha() -> str:
    digest = hashlib.sha256(__version__.encode())
    for folder in (package_dir("cockpit", "assets"), package_dir("web_simulator")):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def deploy_site(db: Database, name: str, source: Source) -> dict:
    """A user deploy: the site's JavaScript must compile, and its `_redirects` and
    `_headers` must parse, before anything is written; `keep_versions` versions of
    the site stay for rollback."""
    from fazt.runtime import compile_check

    with db.read() as conn:
        keep = int(read_config(conn)["keep_versions"])
    return deploy(db, name, source.files, skipped=source.skipped,
                  check=lambda fs: check_rules(compile_check(fs)), keep=keep)


def rollback_site(db: Database, name: str, version: int | None = None) -> dict:
    """Serve a kept version of `name` again (by default the older one live most recently)."""
    with db.write() as conn:
        try:
            return sites_store.rollback_site(conn, name, version)
        except LookupError as exc:
            raise NotFound(str(exc)) from None


def collect_unserved(db: Database, sweep: bool = False) -> int:
    """Delete file contents no kept version uses, unless a server holds the database:
    it may be streaming them, so it collects them itself (Leases) when it sees the change.
    Best effort: content left now is collected by the next collection. `sweep`: look at
    every blob, not only at those deploys and removals let go (Leases.sweep)."""
    held = try_claim(db.path, brief=True)
    if held is None:
        return 0
    try:
        leases = Leases()  # this process streams nothing
        dropped = leases.sweep(db) if sweep else leases.collect(db)
        if space.worth_compacting(db):
            space.compact(db, checkpoint=not replicating(db))
        return dropped
    except FaztError:
        return 0
    finally:
        held.release()


def replicating(db: Database) -> bool:
    """Whether Litestream replicates this database (it owns the WAL's checkpoints then)."""
    with db.read() as conn:
        return bool(load_config(conn).get(replica_target.URL_KEY))


def machine_for(config: dict, db_path: str, memory_mb: float | None = None,
                cpus: float | None = None) -> Machine:
    """Probe, with what the owner declared at init (or now) winning over what is seen.
    With replication on, Litestream runs beside fazt and shares its budget. While a
    server runs on the database, the machine probed is the server's (its container),
    not the one of the command that asks (claim.server_pid)."""
    machine = probe(
        db_path,
        memory_mb=memory_mb or config.get("declared_memory_mb"),
        cpus=cpus or config.get("declared_cpus"),
        pid=server_pid(db_path),
    )
    machine.replica = bool(config.get(replica_target.URL_KEY))
    return machine


def db_ratio(db_size: int, machine: Machine) -> float:
    """The database's size over the machine's RAM (maintenance_ratio's measure)."""
    return db_size / (machine.ram_mb * MB)


def mode_for(db_size: int, machine: Machine, ratio_limit: float) -> tuple[str, float]:
    ratio = db_ratio(db_size, machine)
    return (MAINTENANCE if ratio > ratio_limit else NORMAL), ratio


def init_database(path: str, *, domain: str, username: str, password: str,
                  port: int = DEFAULT_PORT, memory_mb: float | None = None,
                  cpus: float | None = None) -> dict:
    """`fazt server init`: a new database with owner, thresholds and admin assets."""
    domain = settings.parse("domain", domain)  # lower-case, no trailing dot, IDN as xn--
    port = settings.parse("port", port)  # 1-65535, as `config set port` checks it
    if not username.strip():
        raise FaztError("The username must not be empty.")
    if len(password) < 8:
        raise FaztError("The password must be at least 8 characters long.")
    refuse_not_a_file(path)
    if os.path.exists(path):
        raise FaztError(f"A database already exists at {path}; refusing to touch it.")
    machine = probe(path, memory_mb=memory_mb, cpus=cpus)
    thresholds = th.thresholds_for(machine)
    try:
        db = create_database(path)
        try:
            with db.write() as conn:
                save_config(conn, {**thresholds, "domain": domain, "port": port,
                                   "declared_memory_mb": memory_mb, "declared_cpus": cpus,
                                   "owner_keys": []})
                save_secret(conn, "username", username)
                save_secret(conn, "password_hash", hash_password(password))
                save_secret(conn, "session_key", new_session_key())
            refresh_admin_assets(db)
        except BaseException:
            db.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            raise
    except (sqlite3.Error, OSError) as exc:  # e.g. no room: nothing is left behind
        raise FaztError(f"Could not create the database at {path}: {exc}.") from None
    db.close()
    return {"db": path, "domain": domain, "machine": machine.as_dict(), "thresholds": thresholds}


def refresh_admin_assets(db: Database) -> bool:
    """Write the packaged admin assets into the database when they changed."""
    sha = admin_assets_sha()
    with db.read() as conn:
        stored = load_config(conn).get("admin_assets_sha")
    if stored == sha:
        return False
    deploy(db, ADMIN_SITE, admin_asset_files(), allow_reserved=True)
    with db.write() as conn:
        save_config(conn, {"admin_assets_sha": sha})
    return True


def read_config(conn) -> dict:
    """Every threshold and setting: what the database holds over the schemas' defaults."""
    return {**th.defaults(), **settings.defaults(), **load_config(conn)}


def update_config(db: Database, machine: Machine, values: dict,
                  break_glass: bool = False) -> dict:
    """Check and write owner changes to thresholds and settings; return the new config.

    A wrong type or an insane value is refused outright (400); a threshold past its
    safe range for this machine needs break glass (409) and is then recorded.
    Settings (fazt.settings) have no safe range: they are valid or refused. The
    current values are read inside the write transaction, so two saves at once (two
    threads, or the dashboard and `fazt config set`) never lose each other's keys.
    """
    keys = set(th.keys())
    unknown = sorted(k for k in values if k not in keys and k not in settings.SETTINGS)
    if unknown:
        raise FaztError(f"Unknown setting {unknown[0]!r}; see `fazt config get`.")
    with db.write() as conn:
        config = read_config(conn)
        merged = dict(config)
        overrides, safe_again, coerced = [], [], {}
        for key, value in values.items():
            if key in settings.SETTINGS:
                coerced[key] = settings.parse(key, value)
                if key == replica_target.URL_KEY and coerced[key]:
                    from fazt.replica.litestream import binary

                    binary()  # refuse now, not when the server next starts Litestream
                continue
            verdict = th.check(key, value, {k: merged[k] for k in keys}, machine)
            if verdict.invalid:
                raise FaztError(verdict.message)
            merged[key] = coerced[key] = verdict.value
            if verdict.needs_break_glass:
                overrides.append((key, config.get(key), verdict.value, verdict.message))
            else:
                safe_again.append(key)
        if overrides and not break_glass:
            raise Conflict(" ".join(o[3] for o in overrides), code="break_glass_required")
        owner_keys = sorted(set(config.get("owner_keys") or []) | (set(coerced) & keys))
        save_config(conn, {**coerced, "owner_keys": owner_keys})
        _bound_history(conn, config, coerced)
        _new_ca(conn, config, coerced)
        for key in safe_again:
            undo_overrides(conn, key)
        for key, old, new, message in overrides:
            undo_overrides(conn, key)
            record_override(conn, key, old, new, message)
    url = replica_target.URL_KEY
    if url in coerced and bool(coerced[url]) != bool(config.get(url)):
        # Litestream starts or stops: its memory comes out of the budget, or back.
        return recalibrate_database(db)[1]
    return {**merged, **coerced, "owner_keys": owner_keys}


IDENTITY_SETTINGS = ("domain", "port")  # chosen at init: no recommended value to go back to


def reset_config(db: Database, machine: Machine, keys: list[str] | None) -> dict:
    """Back to what the probe computes for this machine (a threshold) or to the schema's
    default (a setting); `None` means every threshold. The keys stop being the owner's
    (a recalibration recomputes them again) and their break-glass overrides end."""
    if keys is None:
        keys = th.keys()
    fresh = th.thresholds_for(machine)
    values = {}
    for key in keys:
        if key in IDENTITY_SETTINGS:
            raise FaztError(f"{key} has no recommended value; change it with "
                            f"`fazt config set {key} VALUE`.")
        if key in fresh:
            values[key] = fresh[key]
        elif key in settings.SETTINGS:
            values[key] = settings.defaults()[key]
        else:
            raise FaztError(f"Unknown setting {key!r}; see `fazt config get`.")
    with db.write() as conn:  # the owner's keys as they are now, not as they were
        config = read_config(conn)
        owner_keys = sorted(set(config.get("owner_keys") or []) - set(values))
        save_config(conn, {**values, "owner_keys": owner_keys})
        _bound_history(conn, config, values)
        _new_ca(conn, config, values)
        for key in values:
            undo_overrides(conn, key)
    return {**config, **values, "owner_keys": owner_keys}


def _bound_history(conn, before: dict, changed: dict) -> None:
    """A lower keep_versions drops the versions past it at once (their content is collected
    afterwards, as after a deploy)."""
    keep = changed.get("keep_versions")
    if keep is not None and int(keep) < int(before["keep_versions"]):
        sites_store.prune_all(conn, int(keep))


def _new_ca(conn, before: dict, changed: dict) -> None:
    """A changed CA setting (a typo in acme_directory fixed, another bundle) ends the
    failed orders' backoff: the certificate thread orders again within seconds, instead
    of waiting out hours of backoff earned against the old setting."""
    if any(k in changed and changed[k] != before.get(k) for k in settings.CA_SETTINGS):
        forget_failures(conn)


def recalibrate_database(db: Database, memory_mb: float | None = None,
                         cpus: float | None = None) -> tuple[Machine, dict]:
    """Re-probe and rewrite the thresholds; values the owner set stay as set."""
    with db.read() as conn:
        config = load_config(conn)
    machine = machine_for(config, db.path, memory_mb, cpus)
    fresh = th.thresholds_for(machine)
    with db.write() as conn:  # the owner's keys as they are now, not as they were
        kept = set(load_config(conn).get("owner_keys") or [])
        values = {k: v for k, v in fresh.items() if k not in kept}
        if memory_mb:
            values["declared_memory_mb"] = memory_mb
        if cpus:
            values["declared_cpus"] = cpus
        save_config(conn, values)
        config = read_config(conn)
    return machine, config


class Instance:
    """A booted fazt, ready to serve.

    `read_only` is a follower's: its database is a copy Litestream keeps current,
    so boot writes nothing and every write answers 503 (store's ReadOnly).
    """

    def __init__(self, db_path: str, read_only: bool = False):
        self.db_path = db_path
        self.read_only = read_only
        self.db: Database | None = None
        self.config: dict = {}
        self.machine: Machine | None = None
        self.mode = NORMAL
        self.vfs: VFS | None = None
        self.auth: Auth | None = None
        self.runtime = None
        # Set by the server: resize(user_threads, cockpit_threads, connection_limit).
        self.resize_lanes: Callable[[int, int, int], None] | None = None
        self.connection_stats: Callable[[], dict] | None = None  # set by the server
        self.overrides: list[dict] = []  # active break-glass changes, kept in RAM
        self.domains: dict[str, str] = {}  # custom host -> site, kept in RAM for routing
        # Set by the server when HTTPS is on: the certificate keeper and the TLS port.
        self.autocert = None
        self.https_port: int | None = None
        self.replication = None  # a primary's Replication or a follower's Follower
        self.rate = RequestRate()
        self.started = time.time()
        self._process = None  # psutil's view of this process, made once
        self._sampler: threading.Event | None = None  # set while a sampler thread runs
        self._sample: dict = {}
        self._compacting = threading.Lock()  # one background compaction at a time
        # One lock for every change to what requests read (config, overrides, machine,
        # token hashes, domains): each is replaced whole under it, never edited in
        # place, so a request sees one snapshot or the next, and a change read from the
        # database can never overwrite a newer one made meanwhile by another thread.
        self._lock = threading.RLock()
        self._stamps: dict[str, tuple] = {}
        self._seen: bytes | None = None  # the WAL header the state was last read at
        self._collect_wanted = False  # a site changed: collect at the next tick
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        self._config_moved = False  # the config changed: see to Litestream at the next tick
        self._tick_now = threading.Event()  # run the next housekeeping turn now

    # -- boot --------------------------------------------------------------

    def boot(self) -> "Instance":
        """The quiet window: everything the cockpit needs goes into RAM."""
        from fazt.runtime import Runtime  # the runtime imports QuickJS: only when serving

        self.db = open_database(self.db_path, read_only=self.read_only)
        if not self.read_only:  # a follower serves the primary's cockpit as it is
            refresh_admin_assets(self.db)
        with self.db.read() as conn:
            self.config = read_config(conn)
            secrets = load_secrets(conn)
            token_hashes = active_token_hashes(conn)
            self._stamps = _stamps(conn)
            self.domains = load_domains(conn)
            self.overrides = active_overrides(conn)
        if not {"username", "password_hash", "session_key"} <= secrets.keys():
            raise FaztError(f"{self.db_path} has no owner; it was not made by `fazt server init`.")
        self.auth = Auth(secrets["username"], secrets["password_hash"], secrets["session_key"],
                         token_hashes, json.loads(secrets.get(REVOKED_SESSIONS) or "{}"))
        self.machine = machine_for(self.config, self.db_path)
        self.machine.replica = self.machine.replica or self.read_only
        if not self.read_only:
            self._fit_machine()
        self.vfs = VFS(self.db, self._mb("vfs_cache_mb"), self._mb("large_file_mb"))
        self.vfs.pin_site(ADMIN_SITE)
        self.collect()  # what a command-line deploy left while a server held the database
        self.runtime = Runtime(self.db, slots=int(self.config["max_concurrent_js"]),
                               memory_mb=float(self.config["js_memory_mb"]),
                               timeout_ms=int(self.config["js_timeout_ms"]),
                               warm_mb=float(self.config["js_warm_mb"]))
        with self.db.read() as conn:
            names = [site["name"] for site in list_sites(conn)]
        self.runtime.logs_ring.load(self.db, names)
        if not self.read_only:  # a follower's lines stay in its RAM
            self.runtime.logs_ring.persist_to(self.db)
        self.apply()
        self.sites_changed()
        self._seen = self.db.wal_header()
        return self

    def _fit_machine(self) -> None:
        """Thresholds computed for a larger machine (a database restored onto a new, smaller
        one; made by `init` outside the container the server runs in) would let this
        server use more memory than it has: recalibrate before serving, as the owner
        would (the values the owner set stay as set), and say so."""
        ledger = th.ledger({k: self.config[k] for k in th.keys()}, self.machine)
        if ledger["total_mb"] <= ledger["usable_mb"]:
            return
        try:
            self.machine, self.config = recalibrate_database(self.db)
        except FaztError as exc:  # a full disk: serve, but say what it risks
            log.warning("The thresholds allow %.0f MB, past this machine's budget of %.0f MB, "
                        "and could not be recalibrated: %s", ledger["total_mb"],
                        ledger["usable_mb"], exc.message)
            return
        log.warning("The thresholds allowed %.0f MB, past this machine's budget of %.0f MB "
                    "(%.0f MB RAM): recalibrated for it.", ledger["total_mb"],
                    ledger["usable_mb"], self.machine.ram_mb)

    def _mb(self, key: str) -> int:
        return int(float(self.config[key]) * MB)

    @property
    def domain(self) -> str:
        return self.config.get("domain", "localhost")

    # -- soft restart --------------------------------------------------------

    def apply(self) -> None:
        """Resize everything to the current config without closing a connection."""
        with self._lock:
            c = self.config
            connections = int(c["user_threads"]) + int(c["cockpit_threads"]) + 2
            cache_mb = float(c["sqlite_cache_mb"])
            self.db.set_limits(Limits(cache_mb=cache_mb, heap_mb=cache_mb * connections + 8))
            self.vfs.resize(self._mb("vfs_cache_mb"), self._mb("large_file_mb"))
            self.vfs.max_streams = int(c["max_streams"])
            self.runtime.resize(slots=int(c["max_concurrent_js"]),
                                memory_mb=float(c["js_memory_mb"]),
                                timeout_ms=int(c["js_timeout_ms"]),
                                warm_mb=float(c["js_warm_mb"]))
            if self.resize_lanes is not None:
                self.resize_lanes(int(c["user_threads"]), int(c["cockpit_threads"]),
                                  int(c["connection_limit"]))
            self.mode, _ = mode_for(self.db.size_bytes(), self.machine,
                                    float(c["maintenance_ratio"]))
            if self._sampler is not None:
                self.sample()  # the status shows new thresholds and their ledger at once

    def set_config(self, values: dict, break_glass: bool = False) -> dict:
        with self._lock:
            before = self.config.get(replica_target.URL_KEY)
            update_config(self.db, self.machine, values, break_glass)
            self._reload(force=True)
            config = self.config
        if "keep_versions" in values:
            self.collect()  # the content of versions dropped just now
        if config.get(replica_target.URL_KEY) != before:
            self.keep_replicating()
        return config

    def reset_config(self, keys: list[str] | None) -> dict:
        """`config reset` / "Reset to recommended": see the function of that name."""
        with self._lock:
            reset_config(self.db, self.machine, keys)
            self._reload(force=True)
            config = self.config
        if keys is None or "keep_versions" in keys:
            self.collect()  # the content of versions dropped just now, if any
        return config

    def recalibrate(self) -> None:
        """Re-probe, rewrite the thresholds, soft-restart (the button, the API, SIGHUP)."""
        if self.read_only:
            raise ReadOnly()  # a follower runs with the primary's thresholds
        with self._lock:
            self.machine, _ = recalibrate_database(self.db)
            self._reload(force=True)
            self.apply()

    def refresh(self, always: bool = False) -> None:
        """Before each request: what any writer committed (this process, or another such
        as `fazt deploy --db`) is what this request is served from.

        The WAL header changes with every commit and costs well under a microsecond
        to read; only when it moved (or `always`) are the stamps read, and only what
        they say changed is reloaded. Best effort: a busy database leaves the state
        as it is, and the next request tries again."""
        header = self.db.wal_header()
        if not always and header and header == self._seen:
            return
        with self._lock:
            if not always and header and header == self._seen:
                return  # another thread reloaded while this one waited
            with contextlib.suppress(FaztError):
                self._reload()
                self._seen = header  # read before the reload: nothing newer is missed

    def is_current(self) -> bool:
        """Whether nothing was committed since the state was last read: for the event
        loop's fast path, which must not wait on the database (it declines instead)."""
        header = self.db.wal_header()
        return bool(header) and header == self._seen

    def reload_if_changed(self) -> None:
        """Reload what changed in the database, whatever the WAL header says."""
        self.refresh(always=True)

    def _reload(self, force: bool = False) -> None:
        """Under the lock: read the stamps, and reload exactly what changed. Tokens are
        not config and the sites are neither: a token made never resizes the caches."""
        with self.db.read() as conn:
            stamps = _stamps(conn)
            changed = {k for k, v in stamps.items() if v != self._stamps.get(k)}
            if force:
                changed.add("config")
            if "sites" in changed:
                self.domains = load_domains(conn)
                served = {site["name"] for site in list_sites(conn)}
            if "tokens" in changed:
                self.auth.token_hashes = frozenset(active_token_hashes(conn))
            if "config" in changed:
                config = read_config(conn)
                self.overrides = active_overrides(conn)
        self._stamps = stamps
        if "certs" in changed and self.autocert is not None:
            self.autocert.load()  # `fazt cert import`: shown from the next handshake on
        if "env" in changed and self.runtime is not None:
            self.runtime.env.forget()  # a secret set by `fazt site env`
        if "sites" in changed:
            self.sites_changed()
            self._collect_wanted = True
            if self._sampler is not None:
                self.sample()  # the status shows the database's new size at once
            if self.runtime is not None:
                self.runtime.logs_ring.keep_only(served)
        if "config" in changed:
            self._config_changed(config)

    def _config_changed(self, config: dict) -> None:
        """A new config snapshot; the soft restart only when a threshold or the machine
        changed (a setting such as keep_versions resizes nothing)."""
        old, self.config = self.config, config
        self._config_moved = True
        probed = ("declared_memory_mb", "declared_cpus", replica_target.URL_KEY)
        if config.get(replica_target.URL_KEY) != old.get(replica_target.URL_KEY):
            self._tick_now.set()  # Litestream starts or stops now, not in up to TICK seconds
        if any(config.get(k) != old.get(k) for k in probed):
            self.machine = machine_for(config, self.db_path)
            self.machine.replica = self.machine.replica or self.read_only
        if any(config.get(k) != old.get(k) for k in (*th.keys(), *probed)):
            self.apply()

    def wait_for_tick(self, seconds: float) -> None:
        """Until the next housekeeping turn: `seconds`, or sooner when a change wants one."""
        self._tick_now.wait(seconds)
        self._tick_now.clear()

    def tick(self) -> None:
        """Every few seconds, off the request path: keep an idle server's state current
        (stamps read whatever the WAL header says: a follower's file may be rewritten
        under SQLite), collect what a deploy or a removal left unused, and start, stop
        or re-point Litestream when the config moved."""
        self.refresh(always=True)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_SECONDS
            self.collect(sweep=True)
        elif self._collect_wanted or self.vfs.leases.due():
            self._collect_wanted = False
            self.collect()
        if self._config_moved:
            self._config_moved = False
            self.keep_replicating()

    # -- owner operations -----------------------------------------------------

    def deploy(self, name: str, source: Source) -> dict:
        """A user deploy through this server: visible to the very next request."""
        result = deploy_site(self.db, name, source)
        self.sites_changed()
        if self.autocert is not None:
            self.autocert.poke()  # a new site's host wants its certificate now
        self.collect()
        return result

    def rollback(self, name: str, version: int | None = None) -> dict:
        """Serve a kept version again, from the very next request; nothing is uploaded."""
        result = rollback_site(self.db, name, version)
        self.sites_changed()
        return result

    def add_domain(self, site: str, host: str) -> str:
        """Serve `site` at `host` too; routed at once, its certificate ordered at once."""
        host = certs.add_domain(self.db, site, host, self.domain)
        self._domains_changed()
        return host

    def remove_domain(self, site: str, host: str) -> str:
        host = certs.remove_domain(self.db, site, host)
        self._domains_changed()
        return host

    def import_certificate(self, host: str, chain_pem: bytes, key_pem: bytes) -> dict:
        result = certs.import_certificate(self.db, host, chain_pem, key_pem)
        if self.autocert is not None:
            self.autocert.poke()  # serves it from the next handshake
        return result

    def _domains_changed(self) -> None:
        with self._lock, self.db.read() as conn:
            self.domains = load_domains(conn)
        if self.autocert is not None:
            self.autocert.poke()

    def set_env(self, site: str, key: str, value: str) -> float:
        """Set a secret of a site's handler; its next request reads it."""
        with self.db.write() as conn:
            at = set_var(conn, site, key, value)
        self.runtime.env.forget()
        return at

    def unset_env(self, site: str, key: str) -> bool:
        with self.db.write() as conn:
            removed = unset_var(conn, site, key)
        self.runtime.env.forget()
        return removed

    def remove_site(self, name: str) -> bool:
        with self.db.write() as conn:
            removed = certs.remove_site(conn, name, self.domain)
        self.sites_changed()
        if self.autocert is not None:
            self.autocert.poke()  # its certificates are no longer shown from now on
        if self.runtime is not None:
            self.runtime.logs_ring.forget(name)
        self.collect()
        return removed

    def collect(self, sweep: bool = False) -> int:
        """Delete file contents no kept version uses, sparing what downloads still stream,
        and give the space back when that freed much of it. Best effort: a busy database
        leaves them for the next collection. A follower collects nothing: its primary
        does, and the change arrives by replication. `sweep`: look at every blob (the
        hourly safety net, Leases.sweep), not only at those deploys and removals let go."""
        if self.read_only:
            return 0
        leases = self.vfs.leases
        try:
            dropped = leases.sweep(self.db) if sweep else leases.collect(self.db)
        except FaztError as exc:  # busy, or a full disk: say which
            log.warning("could not collect unused files (%s); will retry", exc.message)
            return 0
        self.compact_if_worth_it()
        return dropped

    def compact_if_worth_it(self) -> None:
        """Give free pages back in the background, in small steps (store/space.py)."""
        try:
            if self._compacting.locked() or not space.worth_compacting(self.db):
                return
        except FaztError:
            return  # busy: the next collection looks again
        threading.Thread(target=self._compact, name="fazt-compact", daemon=True).start()

    def _compact(self) -> None:
        if not self._compacting.acquire(blocking=False):
            return
        try:
            space.compact(self.db, checkpoint=self.replication is None)
        except (FaztError, sqlite3.Error) as exc:  # busy, or the server is stopping
            log.warning("could not give free space back (%s); the next collection retries",
                        getattr(exc, "message", exc))
        finally:
            self._compacting.release()

    def save_revoked_sessions(self) -> None:
        """Record the signed-out sessions so a restart keeps them out.

        Best effort: the session is already refused in RAM, and a locked
        database must not make logging out fail; the next logout saves again.
        A follower keeps them in RAM only: its database is the primary's copy.
        """
        if self.read_only:
            return
        try:
            with self.db.write() as conn:
                # read while holding the writer: two logouts at once each save, and the
                # list read before waiting could be older than the one saved meanwhile
                save_secret(conn, REVOKED_SESSIONS, json.dumps(self.auth.revoked()))
        except FaztError:
            log.warning("could not record a logout in the database (busy); "
                        "it holds until the server restarts")

    def sites_changed(self) -> None:
        """A site was deployed or removed (here or by another process): remembered file
        locations and warm JavaScript contexts may be stale, fair shares may change."""
        self.vfs.forget_files()
        if self.runtime is not None:
            self.runtime.forget()
            with contextlib.suppress(FaztError):  # busy: the next change tells again
                with self.db.read() as conn:
                    self.runtime.set_backends(count_backends(conn))

    def check_token(self, token: str | None) -> bool:
        """An API token, checked in RAM only: junk tokens can never make the cockpit wait
        on the database. Tokens made or revoked by another process arrive with refresh()."""
        return self.auth.check_token(token)

    def create_token(self, name: str) -> str:
        with self._lock:
            token = tokens.create_token(self.db, name)
            self._reload()
        return token

    def revoke_token(self, token_id: int) -> bool:
        """Revoke a token: refused from the very next request, on every thread."""
        with self._lock:
            revoked = tokens.revoke_token(self.db, token_id) is not None
            self._reload()
        return revoked

    def status(self) -> dict:
        """What `GET /api/system/status` and `fazt server status` show.

        Counters are read live; what costs more (the RSS and the database size from the
        OS, the ledger, Litestream's control socket) comes from the last sample when the
        sampler runs (see `start_sampler`), so a status read does no I/O on the cockpit
        lane. Without a sampler (the CLI) everything is computed now.
        """
        c = self.config
        slow = self._sample if self._sampler is not None else self._slow_status()
        return {
            "version": __version__,
            "mode": self.mode,
            "uptime_s": round(time.time() - self.started, 1),
            "machine": slow["machine"],
            "thresholds": slow["thresholds"],
            "owner_keys": c.get("owner_keys") or [],
            "overrides": self.overrides,
            "memory": slow["memory"],
            "cache": self.vfs.stats(),
            "js": self.runtime.stats(),
            "db": {"size_bytes": slow["db_size"], "ratio": slow["ratio"],
                   "maintenance_ratio": c["maintenance_ratio"]},
            "requests": {"per_second": self.rate.per_second(), "total": self.rate.total},
            "https": {"enabled": self.autocert is not None, "port": self.https_port,
                      **(self.autocert.summary() if self.autocert else
                         {"ordering": None, "certificates": []})},
            "replica": slow["replica"],
            # counters only: read live, so a test (or the owner) sees the request just made
            "connections": self.connection_stats() if self.connection_stats else None,
            "sampled_s_ago": round(time.monotonic() - slow["at"], 2) if self._sampler else 0.0,
        }

    def _slow_status(self) -> dict:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
        thresholds = {k: self.config[k] for k in th.keys()}
        ledger = th.ledger(thresholds, self.machine)
        size = self.db.size_bytes()
        return {
            "at": time.monotonic(),
            "machine": self.machine.as_dict(),
            "thresholds": thresholds,
            "memory": {"rss_bytes": self._process.memory_info().rss,
                       "budget_bytes": int(ledger["usable_mb"] * MB), "ledger": ledger},
            "db_size": size,
            "ratio": db_ratio(size, self.machine),  # of this size, not the last apply's
            "replica": self.replica_status(),
        }

    def sample(self) -> None:
        """Take the slow part of the status now (the sampler's tick, and every apply)."""
        self._sample = self._slow_status()

    def start_sampler(self, every: float = SAMPLE_SECONDS) -> None:
        """Refresh the status's slow part every `every` seconds in a thread of its own.

        Measured with a flood of small files and JavaScript on both cores, a status
        read's p99 was 7.5x its idle p99 while a sign-in's was under 2x: the read did
        its own I/O (/proc, stat, Litestream's socket: 0.8 ms of a quiet CPU) on the
        cockpit lane, where every step waits its turn for Python's lock under load.
        """
        stop = threading.Event()
        self._sampler = stop  # a server from here on (replica_status); called before serving
        self.sample()

        def tick() -> None:
            while not stop.wait(every):
                try:
                    self.sample()
                except Exception:  # a sample missed; the last one stays
                    log.exception("status sample failed")

        threading.Thread(target=tick, name="fazt-status-sampler", daemon=True).start()

    def replica_status(self) -> dict:
        from fazt.replica.primary import replication_status

        url = self.config.get(replica_target.URL_KEY) or None
        current = self.replication
        if current is not None and (self.read_only or current.url == url):
            return current.status()
        # A server (the sampler runs) with no Replication for the URL set runs no Litestream
        # for it (yet: `fazt replica set/off` just came, the next tick starts or stops it):
        # its control socket is not asked. The command line asks: a server elsewhere may.
        return replication_status(self.db_path, url, ask=self._sampler is None)

    def keep_replicating(self) -> None:
        """Start, stop or re-point Litestream to match the `replica_url` setting
        (at boot, and when `fazt replica set/off` changes it from another process)."""
        from fazt.replica.litestream import remove_working_files
        from fazt.replica.primary import Replication

        if self.read_only:
            return
        url = self.config.get(replica_target.URL_KEY)
        with self.db.read() as conn:
            credentials = replica_target.credentials(conn)
        current = self.replication
        if current is not None and url and current.same(url, credentials):
            return
        if current is not None:
            current.stop()
            self.replication = None
            if not url:
                remove_working_files(self.db_path)
        if url:
            gomemlimit = th.replica_gomemlimit_mb(self.machine)
            self.replication = Replication(self.db_path, url, credentials, gomemlimit).start()
        if self._sampler is not None:
            self.sample()  # the status says at once that Litestream started or stopped

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.set()
        if self.replication is not None:
            self.replication.stop()
        if self.runtime is not None:
            self.runtime.logs_ring.stop()  # its last lines go to the database first
        if self.db is not None:
            self.db.close()


def _stamps(conn) -> dict[str, tuple]:
    """What changes when the config, the tokens, the sites (custom domains included), the
    handlers' secrets or the certificates change, by any process: compared to know what
    to reload. Sums of the times, not their maximum: a write made after the clock stepped
    back (NTP, a restored VM) is older than the newest row, and a maximum would not move."""
    return {
        "config": tuple(conn.execute("SELECT COUNT(*), TOTAL(updated_at) FROM config"
                                     ).fetchone()),
        "tokens": tuple(conn.execute("SELECT COUNT(*), TOTAL(created_at), TOTAL(revoked_at)"
                                     " FROM tokens").fetchone()),
        "sites": tuple(conn.execute("SELECT COUNT(*), TOTAL(updated_at), SUM(deploy_id) FROM sites"
                                    ).fetchone()) + domains_stamp(conn),
        "env": env_stamp(conn),
        "certs": certificates_stamp(conn),
    }
