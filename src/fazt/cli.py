"""The `fazt` command: argument parsing only; the work is done by the layers below.

Expected failures (bad input, missing database, port in use, wrong password)
print one sentence on stderr and exit 1; no traceback reaches the user.
"""

import argparse
import contextlib
import getpass
import json
import os
import sys
import time

from fazt import __version__
from fazt.constants import DEFAULT_PORT
from fazt.errors import FaztError


def _db(args) -> str:
    return args.db or os.environ.get("FAZT_DB") or os.path.expanduser("~/.fazt/data.db")


@contextlib.contextmanager
def _database(args):
    """The database the command names, closed however the command ends."""
    from fazt.store import open_database

    db = open_database(_db(args))
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def _site_database(args):
    """The database, for a command about the site `args.name` (a valid name, checked first)."""
    from fazt.deploy import check_site_name

    check_site_name(args.name)
    with _database(args) as db:
        yield db


def _frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def version_text() -> str:
    build = "frozen single-file build" if _frozen() else "Python package"
    return f"fazt {__version__} ({build}, Python {sys.version.split()[0]})"


# -- server ------------------------------------------------------------------


def cmd_init(args) -> int:
    from fazt.instance import init_database

    password = args.password or os.environ.get("FAZT_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise FaztError("Give the owner's password with --password or $FAZT_PASSWORD.")
        password = getpass.getpass("Password for the owner: ")
    summary = init_database(_db(args), domain=args.domain, username=args.username,
                            password=password, port=args.port, memory_mb=args.memory_mb,
                            cpus=args.cpus)
    m = summary["machine"]
    print(f"Created {summary['db']} for {summary['domain']}.")
    print(f"Machine: {m['ram_mb']:.0f} MB RAM, {m['cpus']:g} CPUs, {m['disk_gb']:.1f} GB free.")
    _print_thresholds(summary["thresholds"])
    print(f"Start it with: fazt server start --db {summary['db']}")
    return 0


def cmd_start(args) -> int:
    from fazt.server.boot import run

    run(_db(args), args.host, args.port, args.https_port, follow=args.follow)
    return 0


def cmd_probe(args) -> int:
    from fazt.stability import thresholds as th
    from fazt.stability.probe import probe

    machine = probe(args.db and _db(args), memory_mb=args.memory_mb, cpus=args.cpus)
    result = th.compute(machine)
    if args.json:
        print(json.dumps({"machine": machine.as_dict(),
                          "thresholds": th.thresholds_for(machine),
                          "ledger": result["ledger"], "safe": result["safe"],
                          "capabilities": result["capabilities"]}, indent=2))
        return 0
    print(f"RAM: {machine.ram_mb:.0f} MB   CPUs: {machine.cpus:g}   "
          f"free disk: {machine.disk_gb:.1f} GB")
    for what, where in machine.source.items():
        print(f"  {what}: {where}")
    ledger = result["ledger"]
    print(f"Budget: {ledger['usable_mb']:.0f} MB usable, the thresholds allow "
          f"{ledger['total_mb']:.0f} MB.")
    _print_thresholds(th.thresholds_for(machine))
    return 0


def cmd_recalibrate(args) -> int:
    from fazt.instance import recalibrate_database
    from fazt.stability import thresholds as th
    from fazt.store.claim import server_pid

    with _database(args) as db:
        machine, config = recalibrate_database(db, args.memory_mb, args.cpus)
        pid = server_pid(db.path)
    where = f" where its server (pid {pid}) runs" if pid else ""
    print(f"Re-probed{where}: {machine.ram_mb:.0f} MB RAM, {machine.cpus:g} CPUs. "
          "A running server uses the new thresholds from its next request.")
    _print_thresholds({k: config[k] for k in th.keys()})
    return 0


def cmd_status(args) -> int:
    from fazt.certs import certificate_list
    from fazt.instance import machine_for, mode_for, read_config
    from fazt.replica.primary import replication_status
    from fazt.replica.target import URL_KEY
    from fazt.stability import thresholds as th
    from fazt.store.config import active_overrides

    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
            overrides = active_overrides(conn)
        machine = machine_for(config, db.path)
        size = db.size_bytes()
        mode, ratio = mode_for(size, machine, float(config["maintenance_ratio"]))
        certificates = certificate_list(db)
    thresholds = {k: config[k] for k in th.keys()}
    replica = replication_status(db.path, config.get(URL_KEY) or None)
    if args.json:
        print(json.dumps({"mode": mode, "thresholds": thresholds, "overrides": overrides,
                          "owner_keys": config.get("owner_keys") or [],
                          "machine": machine.as_dict(),
                          "db": {"path": db.path, "size_bytes": size, "ratio": ratio},
                          "https": {"enabled": config.get("https") == "on",
                                    "certificates": certificates},
                          "replica": replica}, indent=2))
        return 0
    print(f"Mode: {mode}")
    print(f"Database: {db.path}, {size / 2**20:.1f} MB, {ratio:.3f}× RAM "
          f"(maintenance above {config['maintenance_ratio']}×)")
    _print_replica(replica)
    if config.get("https") == "on" or certificates:
        failed = [c for c in certificates if c["last_error"]]
        expired = [c for c in certificates if not c["last_error"] and _expired(c)]
        valid = len(certificates) - len(failed) - len(expired)
        print(f"HTTPS: {config.get('https')}, {valid} valid certificate{'' if valid == 1 else 's'}"
              f", {len(failed)} failing, {len(expired)} expired (see `fazt cert list`)")
        for c in failed:
            print(f"  {c['host']}: {c['last_error']}")
        for c in expired:  # an import left to lapse: browsers refuse it, nothing says why
            print(f"  {c['host']}: expired on {_day(c['not_after'])}")
    marked = {o["key"] for o in overrides}
    _print_thresholds(thresholds, marked)
    if marked:
        print("(!) = past its safe range, set with break glass")
    return 0


def _print_replica(replica: dict) -> None:
    if not replica.get("url"):
        print("Replication: off (`fazt replica set URL` turns it on)")
        return
    print(f"Replication: to {replica['url']}")
    if not replica["running"]:
        print("  Litestream: not running (it runs while `fazt server start` does)")
    else:
        rss = replica.get("rss_bytes")
        memory = f", {rss / 2**20:.0f} MB RSS" if rss else ""
        print(f"  Litestream: running, pid {replica['pid']}{memory}")
        if replica.get("lag_s") is not None:
            print(f"  Last confirmed sync: {replica['lag_s']:.1f} s ago")
    if replica.get("last_error"):
        print(f"  Last error: {replica['last_error']} {_error_when(replica)}")
    if replica.get("warning"):
        print(f"  (!) {replica['warning']}")


# -- sites -------------------------------------------------------------------


def cmd_deploy(args) -> int:
    if args.server:
        return _deploy_remote(args)
    from fazt.deploy import files_from_directory
    from fazt.instance import collect_unserved, deploy_site

    with _database(args) as db:
        result = deploy_site(db, args.site, files_from_directory(args.directory))
        collect_unserved(db)
    print(f"Deployed {result['files']} files ({result['bytes']} bytes) as site {args.site!r}, "
          f"version {result['version']}.")
    _print_skipped(result["skipped"])
    return 0


def _print_skipped(skipped: list[str]) -> None:
    if skipped:
        print(f"Skipped {len(skipped)} hidden (neither stored nor served): {', '.join(skipped)}")


def _deploy_remote(args) -> int:
    from fazt.deploy_client import deploy_remote

    result = deploy_remote(args.server, args.site, args.token, args.directory)
    print(f"Deployed {result['files']} files ({result['bytes']} bytes) as site {args.site!r} "
          f"on {args.server}, version {result['version']}.")
    _print_skipped(result["skipped"])
    return 0


def cmd_site_list(args) -> int:
    from fazt.store.sites import list_sites

    with _database(args) as db:
        with db.read() as conn:
            sites = [s for s in list_sites(conn) if s["name"] != "admin"]
    return _listing(args, {"sites": sites}, sites,
                    "No sites yet; deploy one with `fazt deploy DIR --site NAME`.",
                    lambda s: f"{s['name']:<24} {s['files']:>6} files {s['bytes']:>14,} bytes")


def cmd_domain_add(args) -> int:
    from fazt.certs import add_domain
    from fazt.instance import read_config

    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
        host = add_domain(db, args.name, args.host, config["domain"])
    print(f"Site {args.name!r} is now served at {host} too."
          + (" The running server orders its certificate." if config["https"] == "on" else ""))
    print(f"Point {host}'s DNS A/AAAA records at this machine.")
    return 0


def cmd_domain_remove(args) -> int:
    from fazt.certs import remove_domain

    with _database(args) as db:
        host = remove_domain(db, args.name, args.host)
    print(f"Site {args.name!r} is no longer served at {host}.")
    return 0


def cmd_domain_list(args) -> int:
    from fazt.certs import site_domains

    with _database(args) as db:
        hosts = site_domains(db, args.name)
    if args.json:
        print(json.dumps(hosts))
    for host in [] if args.json else hosts:
        print(host)
    return 0


def cmd_cert_import(args) -> int:
    from fazt.certs import import_certificate

    chain, key = _read_file(args.cert, "--cert"), _read_file(args.key, "--key")
    with _database(args) as db:
        result = import_certificate(db, args.host, chain, key)
    print(f"Installed the certificate for {result['host']} from {result['issuer']}, "
          f"valid until {_day(result['not_after'])}. A running server uses it within seconds.")
    return 0


def cmd_cert_list(args) -> int:
    from fazt.certs import certificate_list

    with _database(args) as db:
        certificates = certificate_list(db)
    return _listing(args, certificates, certificates,
                    "No certificates yet (`fazt config set https on`, or `fazt cert import`).",
                    _certificate_line)


def _expired(c: dict) -> bool:
    return bool(c["not_after"]) and c["not_after"] <= time.time()


def _certificate_line(c: dict) -> str:
    expiry = ("none yet" if not c["not_after"] else
              f"{'EXPIRED' if _expired(c) else 'until'} {_day(c['not_after'])}")
    line = f"{c['host']:<32} {c['issuer'] or '-':<28} {expiry:<16} {c['source'] or ''}"
    if c["last_error"]:
        line += f"\n  last error: {c['last_error']} (next try {_day(c['next_attempt'], True)})"
    return line


def _read_file(path: str, option: str) -> bytes:
    """A PEM file, read no further than MAX_PEM_BYTES: `--cert /dev/zero` (or a wrong,
    huge file) would otherwise be read until memory ran out."""
    from fazt.pem import MAX_PEM_BYTES

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise FaztError(f"Cannot read {option} {path}: {exc.strerror}.") from None
    if len(data) > MAX_PEM_BYTES:
        raise FaztError(f"{option} {path} is larger than {MAX_PEM_BYTES >> 20} MB; a "
                        "certificate chain or a key is a few KB.")
    return data


def _day(t: float, minutes: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC" if minutes else "%Y-%m-%d", time.gmtime(t))


def cmd_site_remove(args) -> int:
    from fazt.certs import remove_site
    from fazt.instance import collect_unserved, read_config

    with _site_database(args) as db:
        with db.write() as conn:
            removed = remove_site(conn, args.name, read_config(conn)["domain"])
        if removed:
            collect_unserved(db)
    if not removed:
        raise FaztError(f"There is no site named {args.name!r}.")
    print(f"Removed site {args.name!r}.")
    return 0


def cmd_site_versions(args) -> int:
    from fazt.store.sites import list_versions

    with _site_database(args) as db:
        with db.read() as conn:
            versions = list_versions(conn, args.name)
    if not versions:
        raise FaztError(f"There is no site named {args.name!r}.")
    if args.json:
        return _print_json({"site": args.name, "versions": versions})
    # "went live": the last time (a deploy or a rollback), so the order they served in shows
    print(f"  {'version':>7}  {'deployed':<19}  {'went live':<19}  {'files':>6} {'bytes':>14}")
    for v in versions:
        mark = "*" if v["live"] else "<" if v["previous"] else " "
        print(f"{mark} {v['version']:>7}  {_when(v['created_at'])}  {_when(v['live_at'])}  "
              f"{v['files']:>6} {v['bytes']:>14,}")
    back = any(v["previous"] for v in versions)
    print(f"(* = live; < = where `fazt site rollback {args.name}` goes back to, the older "
          "version live most recently; give a VERSION for another)" if back
          else "(* = live)")
    return 0


def cmd_site_rollback(args) -> int:
    from fazt.instance import rollback_site

    with _site_database(args) as db:
        result = rollback_site(db, args.name, args.version)
    print(f"Site {args.name!r} serves version {result['version']} again (was "
          f"{result['from']}); a running server serves it from its next request.")
    return 0


def _existing_site(db, name: str) -> None:
    from fazt.store.sites import site_exists

    with db.read() as conn:
        if not site_exists(conn, name):
            raise FaztError(f"There is no site named {name!r}.")


def cmd_env_set(args) -> int:
    from fazt.deploy import check_site_name
    from fazt.store.env import check_key, set_var

    check_site_name(args.name)
    check_key(args.key)
    value = args.value
    if value is None:  # kept out of the shell's history and of `ps`
        if sys.stdin.isatty():
            value = getpass.getpass(f"Value of {args.key} (not shown): ")
        else:
            value = _stdin_text(f"The value of {args.key}").removesuffix("\n")
    with _database(args) as db:
        _existing_site(db, args.name)
        with db.write() as conn:
            set_var(conn, args.name, args.key, value)
    print(f"Set {args.key} for site {args.name!r}; its handler reads fazt.env.{args.key} "
          "(a running server within seconds). The value is never shown again.")
    return 0


def _stdin_text(what: str) -> str:
    """Standard input as UTF-8, whatever the locale says (in a UTF-8 locale Python reads it
    strictly, and a stray byte was a traceback)."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FaztError(f"{what} on standard input is not UTF-8 text (byte {exc.start}).") from None


def cmd_env_unset(args) -> int:
    from fazt.store.env import unset_var

    with _site_database(args) as db:
        _existing_site(db, args.name)  # else "no secret named" for a mistyped site
        with db.write() as conn:
            removed = unset_var(conn, args.name, args.key)
    if not removed:
        raise FaztError(f"Site {args.name!r} has no secret named {args.key!r}.")
    print(f"Removed {args.key} from site {args.name!r}.")
    return 0


def cmd_env_list(args) -> int:
    from fazt.store.env import list_vars

    with _site_database(args) as db:
        _existing_site(db, args.name)
        with db.read() as conn:
            names = list_vars(conn, args.name)
    return _listing(args, {"site": args.name, "env": names}, names,
                    f"Site {args.name!r} has no secrets; add one with "
                    f"`fazt site env set {args.name} KEY`.",
                    lambda e: f"{e['key']:<32} set {_when(e['updated_at'])}")


def cmd_site_logs(args) -> int:
    with _site_database(args) as db:
        _follow_logs(db, args)
    return 0


def _follow_logs(db, args) -> None:
    from fazt.store.logs import read_lines
    from fazt.store.sites import site_exists

    _existing_site(db, args.name)
    with db.read() as conn:
        lines = read_lines(conn, args.name, last=args.lines)
        newest = read_lines(conn, args.name, last=1)
    if args.json and not args.follow:
        _print_json({"site": args.name, "lines": lines})
        return
    if not lines and not args.json:  # a sentence, on stderr: stdout stays the lines alone
        print(f"Site {args.name!r} has no log lines yet"
              + (" (waiting for new ones)." if args.follow else "."), file=sys.stderr)
    last = newest[0]["id"] if newest else 0  # following: new lines only, past ones as asked
    while True:
        for line in lines:
            if args.json:
                print(json.dumps(line))
            else:
                print(f"{_when(line['time'])} {line['level']:<5} {_shown(line['message'])}")
            last = line["id"]
        if not args.follow:
            return
        sys.stdout.flush()
        time.sleep(0.5)  # a running server writes its lines every half second
        with db.read() as conn:
            if not site_exists(conn, args.name):  # else it would go on, silent, and later
                # print the lines of another site made under the same name
                raise FaztError(f"The site {args.name!r} was removed; no more lines.")
            lines = read_lines(conn, args.name, after=last)


# -- config, tokens, backup -------------------------------------------------


def cmd_config_get(args) -> int:
    from fazt.instance import read_config
    from fazt.stability import thresholds as th

    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
    shown = {k: v for k, v in config.items() if k != "admin_assets_sha"}
    if args.key:
        if args.key not in shown:
            raise FaztError(f"Unknown setting {args.key!r}; see `fazt config get`.")
        print(json.dumps(shown[args.key]))
        return 0
    if args.json:
        return _print_json(shown)
    units = {s["key"]: s["unit"] for s in th.schema()}
    for key in sorted(shown):
        print(f"{key:<22} {json.dumps(shown[key])} {units.get(key, '')}".rstrip())
    return 0


def cmd_config_set(args) -> int:
    from fazt.instance import collect_unserved, machine_for, read_config, update_config

    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
        machine = machine_for(config, db.path)
        config = update_config(db, machine, {args.key: args.value}, args.break_glass)
        if args.key == "keep_versions":
            collect_unserved(db)  # the content of versions dropped just now
    print(f"{args.key} = {json.dumps(config[args.key])}"
          + (" (break glass: recorded)" if args.break_glass else ""))
    return 0


def cmd_config_reset(args) -> int:
    from fazt.instance import machine_for, read_config, reset_config
    from fazt.stability import thresholds as th

    if bool(args.key) == bool(args.all):
        raise FaztError("Name one KEY to reset, or give --all for every threshold.")
    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
        machine = machine_for(config, db.path)
        keys = None if args.all else [args.key]
        config = reset_config(db, machine, keys)
    for key in keys or th.keys():
        print(f"{key} = {json.dumps(config[key])}")
    print("Back to what fazt recommends for this machine; a running server uses it "
          "within seconds.")
    return 0


def cmd_token_create(args) -> int:
    from fazt.tokens import create_token

    with _database(args) as db:
        token = create_token(db, args.name)
    print(token)
    print("Keep it now: it is shown only once.", file=sys.stderr)
    return 0


def cmd_token_list(args) -> int:
    from fazt.tokens import list_tokens

    with _database(args) as db:
        tokens = list_tokens(db)
    return _listing(args, {"tokens": tokens}, tokens,
                    "No tokens; make one with `fazt token create --name N`.",
                    lambda t: f"{t['id']:>4}  {t['name']:<32} created {_when(t['created_at'])}")


def cmd_token_revoke(args) -> int:
    from fazt.tokens import revoke_token

    with _database(args) as db:
        revoked = revoke_token(db, args.id)
    if revoked is None:
        raise FaztError(f"There is no active token with id {args.id}; see `fazt token list`.")
    print(f"Revoked token {args.id}; a running server refuses it from its next request.")
    return 0


def cmd_db_compact(args) -> int:
    from fazt.instance import collect_unserved, replicating
    from fazt.store import space

    with _database(args) as db:
        collect_unserved(db, sweep=True)
        result = space.compact(db, full=args.full, checkpoint=not replicating(db))
    print(f"Compacted {db.path}: {result['before_bytes'] / 2**20:.1f} MB before, "
          f"{result['after_bytes'] / 2**20:.1f} MB now (database and WAL).")
    if not result["checkpointed"]:
        print("Litestream replicates this database: the WAL shrinks after its next checkpoint.")
    return 0


@contextlib.contextmanager
def _ended_cleanly_by_signals():
    """SIGTERM and SIGHUP (a closed terminal) end the command as Ctrl-C does, through its
    cleanup (a half-written `.partial` file removed), not at once as Python's default."""
    import signal

    def end(signum, frame):
        raise SystemExit(128 + signum)

    before = {s: signal.signal(s, end) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def cmd_backup(args) -> int:
    with _ended_cleanly_by_signals(), _database(args) as db:
        db.backup(args.out)
    print(f"Wrote a consistent copy of {db.path} to {args.out}.")
    return 0


def cmd_restore(args) -> int:
    from fazt.restore import restore_file

    if (args.backup is None) == (args.source is None):
        raise FaztError("Give one of the two: a backup file, or --from URL (a replica).")
    if args.source is not None:
        from fazt.replica.fetch import restore_from
        from fazt.stability import thresholds as th
        from fazt.stability.probe import probe

        path = _db(args)
        result = restore_from(args.source, path, th.replica_gomemlimit_mb(probe(path)))
        source = f"the replica at {args.source}"
    else:
        with _ended_cleanly_by_signals():  # the copy beside the database goes with it
            result = restore_file(args.backup, _db(args))
        source = args.backup
    if result["kept"]:
        after = (f"; the damaged database it replaced is kept at {result['kept']} (delete it "
                 "when you no longer need it).")
    else:
        after = "; the database it replaced is gone." if result["replaced"] else "."
    print(f"Restored {source} ({result['sites']} sites, {result['bytes']:,} bytes, "
          f"integrity ok) into {result['db']}{after}")
    if result["replica_url"]:
        # Two servers replicating to one place interleave their changes there, and the
        # replica no longer restores (measured: the integrity check fails). Say it now.
        print(f"It replicates to {result['replica_url']}: its server resumes that when it "
              "starts. Start it only if no other server replicates there any more (two "
              "would spoil the replica); otherwise `fazt replica set` another path or "
              "`fazt replica off` first.")
    return 0


def _print_json(value) -> int:
    print(json.dumps(value, indent=2))
    return 0


def _listing(args, payload, rows: list, empty: str, line) -> int:
    """What a list command prints: `payload` as JSON with --json; otherwise `line(row)` for
    each row, or the sentence `empty` when there are none."""
    if args.json:
        return _print_json(payload)
    print("\n".join(line(row) for row in rows) if rows else empty)
    return 0


def _shown(message: str) -> str:
    """A site's log message for the owner's terminal: the site's JavaScript wrote it, so
    control characters (an escape sequence drives the terminal) become \\xHH and its
    further lines are indented, so that none can pass for an entry of its own."""
    safe = "".join(f"\\x{ord(c):02X}" if (ord(c) < 0x20 and c not in "\t\n")
                   or 0x7F <= ord(c) < 0xA0 else c for c in message)
    return safe.replace("\n", "\n    ")


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


# -- replication -------------------------------------------------------------


def cmd_replica_set(args) -> int:
    from fazt.instance import machine_for, read_config, update_config
    from fazt.replica import litestream, target

    url = args.url.strip()
    if not url:
        raise FaztError("Give the replica URL; `fazt replica off` turns replication off.")
    problem = target.check_url(url) or target.check_reachable(url)
    if problem:
        raise FaztError(f"replica_url: {problem}")
    litestream.binary()  # all refusals before anything changes
    missing = [n for n in target.SECRET_NAMES if not os.environ.get(n)]
    if args.store_credentials and missing:
        raise FaztError(f"--store-credentials takes them from this environment, and "
                        f"{missing[0]} is not set.")
    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
        with db.write() as conn:  # before the URL, so the server starts with the right ones
            target.forget_credentials(conn)
            if args.store_credentials:
                target.store_credentials(conn, os.environ)
        config = update_config(db, machine_for(config, db.path), {target.URL_KEY: url})
    where = ("stored in the database" if args.store_credentials
             else "taken from the environment of `fazt server start`")
    print(f"Replication to {config[target.URL_KEY]} is on; credentials are {where}.")
    print("A running server starts Litestream within seconds, otherwise `fazt server start` "
          "does; the thresholds now leave it its memory.")
    return 0


def cmd_replica_off(args) -> int:
    from fazt.instance import machine_for, read_config, update_config
    from fazt.replica import litestream, target
    from fazt.store.claim import is_claimed

    with _database(args) as db:
        with db.read() as conn:
            config = read_config(conn)
        was = bool(config.get(target.URL_KEY))
        update_config(db, machine_for(config, db.path), {target.URL_KEY: ""})
        with db.write() as conn:
            target.forget_credentials(conn)
    if not is_claimed(db.path):  # else the running server stops Litestream, then removes them
        litestream.remove_working_files(db.path)
    print("Replication is off; Litestream's folder beside the database is removed."
          if was else "Replication was already off.")
    return 0


def cmd_replica_status(args) -> int:
    from fazt.instance import read_config
    from fazt.replica import target
    from fazt.replica.primary import replication_status

    with _database(args) as db:
        with db.read() as conn:
            url = read_config(conn).get(target.URL_KEY) or None
            source = target.credentials_source(conn)
    status = {**replication_status(db.path, url), "credentials": source}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    _print_replica(status)
    if url:
        print(f"  Credentials: {source}")
    return 0


def _error_when(replica: dict) -> str:
    """When the last error happened, and whether replication has worked since: an old
    error must not read as a current one."""
    at = replica.get("last_error_at")
    when = f"at {_when(at)}, {_ago(time.time() - at)} ago" if at else "at an unknown time"
    synced = "update" if replica.get("role") == "follower" else "sync"
    return f"({when}; past: a {synced} has succeeded since)" if replica.get(
        "last_error_past") else f"({when})"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
    return f"{seconds:.0f} s"


def _print_thresholds(values: dict, marked: set | None = None) -> None:
    from fazt.stability import thresholds as th

    for s in th.schema():
        flag = " (!)" if marked and s["key"] in marked else ""
        print(f"  {s['label']:<34} {values.get(s['key'])!s:>8} {s['unit']}{flag}")


# -- parsing -------------------------------------------------------------------


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return min(int(text), sys.maxsize)  # more than SQLite's LIMIT takes means "all of them"


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="database path (default: $FAZT_DB or ~/.fazt/data.db)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    hw = argparse.ArgumentParser(add_help=False)
    hw.add_argument("--memory-mb", type=float, help="declare the container's RAM in MB")
    hw.add_argument("--cpus", type=float, help="declare the container's CPUs")

    p = argparse.ArgumentParser(prog="fazt", description="A personal PaaS in one file.")
    p.add_argument("--version", action="version", version=version_text())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = sub.add_parser("server", help="create, start, probe and inspect the server")
    ss = server.add_subparsers(dest="server_command", required=True, metavar="ACTION")
    s = ss.add_parser("init", parents=[common, hw], help="create the database")
    s.add_argument("--domain", required=True)
    s.add_argument("--username", required=True)
    s.add_argument("--password",
                   help="the owner's password (else $FAZT_PASSWORD, else asked for)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.set_defaults(func=cmd_init)
    s = ss.add_parser("start", parents=[common], help="boot and serve")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int,
                   help=f"the plain HTTP port (default: 80 with https on, else the port "
                        f"given at init, {DEFAULT_PORT})")
    s.add_argument("--https-port", type=int,
                   help="the HTTPS port when the setting https is on (default 443)")
    s.add_argument("--follow", metavar="URL",
                   help="serve read-only from this replica, kept current by Litestream "
                        "(--db is where the follower keeps its copy)")
    s.set_defaults(func=cmd_start)
    s = ss.add_parser("probe", parents=[common, hw], help="show what the probe sees")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_probe)
    s = ss.add_parser("recalibrate", parents=[common, hw], help="re-probe, rewrite thresholds")
    s.set_defaults(func=cmd_recalibrate)
    s = ss.add_parser("status", parents=[common], help="mode, thresholds, database size")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("deploy", parents=[common], help="upload a directory as a site")
    s.add_argument("directory")
    s.add_argument("--site", required=True)
    s.add_argument("--server", help="deploy over HTTP to this cockpit URL instead")
    s.add_argument("--token", help="API token for --server")
    s.set_defaults(func=cmd_deploy)

    site = sub.add_parser("site", help="list, remove and roll back sites")
    st = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    s = st.add_parser("list", parents=[common, as_json], help="the sites and their sizes")
    s.set_defaults(func=cmd_site_list)
    s = st.add_parser("remove", parents=[common], help="delete a site and all its versions")
    s.add_argument("name")
    s.set_defaults(func=cmd_site_remove)
    s = st.add_parser("versions", parents=[common, as_json],
                      help="the site's kept versions (setting keep_versions)")
    s.add_argument("name")
    s.set_defaults(func=cmd_site_versions)
    s = st.add_parser("rollback", parents=[common],
                      help="serve a kept version again, instantly")
    s.add_argument("name")
    s.add_argument("version", nargs="?", type=int,
                   help="the version to serve (default: of the versions older than the live "
                        "one, the one live most recently)")
    s.set_defaults(func=cmd_site_rollback)
    s = st.add_parser("logs", parents=[common, as_json],
                      help="the site's log lines (console output, handler errors)")
    s.add_argument("name")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    s.add_argument("--lines", "-n", type=_count, default=100, help="how many past lines (100)")
    s.set_defaults(func=cmd_site_logs)
    env = st.add_parser("env", help="secrets for the site's handler (fazt.env.KEY)")
    et = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")
    s = et.add_parser("set", parents=[common],
                      help="set a secret (without VALUE: read from stdin, or asked for)")
    s.add_argument("name")
    s.add_argument("key")
    s.add_argument("value", nargs="?")
    s.set_defaults(func=cmd_env_set)
    s = et.add_parser("unset", parents=[common], help="remove a secret")
    s.add_argument("name")
    s.add_argument("key")
    s.set_defaults(func=cmd_env_unset)
    s = et.add_parser("list", parents=[common, as_json],
                      help="the secrets' names and when each was set (never values)")
    s.add_argument("name")
    s.set_defaults(func=cmd_env_list)

    domain = st.add_parser("domain", help="serve a site at custom hosts (with certificates)")
    dt = domain.add_subparsers(dest="domain_command", required=True, metavar="ACTION")
    for action, func, helptext in (("add", cmd_domain_add, "serve site NAME at HOST too"),
                                   ("remove", cmd_domain_remove, "stop serving NAME at HOST")):
        s = dt.add_parser(action, parents=[common], help=helptext)
        s.add_argument("name")
        s.add_argument("host")
        s.set_defaults(func=func)
    s = dt.add_parser("list", parents=[common], help="the custom hosts of site NAME")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_domain_list)

    cert = sub.add_parser("cert", help="HTTPS certificates: list, import your own")
    ct = cert.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    s = ct.add_parser("list", parents=[common], help="host, issuer, expiry and last error")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cert_list)
    s = ct.add_parser("import", parents=[common], help="install a certificate made elsewhere")
    s.add_argument("host", help="the host it serves (*.example.org for a wildcard)")
    s.add_argument("--cert", required=True, help="PEM file: the certificate and its chain")
    s.add_argument("--key", required=True, help="PEM file: its private key (unencrypted)")
    s.set_defaults(func=cmd_cert_import)

    config = sub.add_parser("config", help="read or write thresholds and settings")
    ct = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = ct.add_parser("get", parents=[common, as_json],
                      help="every threshold and setting, or one KEY")
    s.add_argument("key", nargs="?")
    s.set_defaults(func=cmd_config_get)
    s = ct.add_parser("set", parents=[common], help="change a threshold or setting")
    s.add_argument("key")
    s.add_argument("value")
    s.add_argument("--break-glass", action="store_true",
                   help="apply a value past its safe range (recorded)")
    s.set_defaults(func=cmd_config_set)
    s = ct.add_parser("reset", parents=[common],
                      help="back to what the probe computes (a setting: its default)")
    s.add_argument("key", nargs="?")
    s.add_argument("--all", action="store_true", help="every threshold")
    s.set_defaults(func=cmd_config_reset)

    token = sub.add_parser("token", help="API tokens for deploys over HTTP")
    tt = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    s = tt.add_parser("create", parents=[common], help="a new token (shown once)")
    s.add_argument("--name", required=True)
    s.set_defaults(func=cmd_token_create)
    s = tt.add_parser("list", parents=[common, as_json],
                      help="the active tokens (never their value)")
    s.set_defaults(func=cmd_token_list)
    s = tt.add_parser("revoke", parents=[common], help="stop a token from working")
    s.add_argument("id", type=int, help="the token's id, from `fazt token list`")
    s.set_defaults(func=cmd_token_revoke)

    replica = sub.add_parser("replica", help="continuous replication with Litestream")
    rt = replica.add_subparsers(dest="replica_command", required=True, metavar="ACTION")
    s = rt.add_parser("set", parents=[common], help="replicate to an S3-compatible URL")
    s.add_argument("url", help="s3://BUCKET/PATH[?endpoint=https://HOST&region=R]")
    s.add_argument("--store-credentials", action="store_true",
                   help="store AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from this "
                        "environment in the database (else the server's environment is used)")
    s.set_defaults(func=cmd_replica_set)
    s = rt.add_parser("status", parents=[common, as_json],
                      help="where to, lag, last sync, errors")
    s.set_defaults(func=cmd_replica_status)
    rt.add_parser("off", parents=[common], help="stop replicating").set_defaults(
        func=cmd_replica_off)

    db = sub.add_parser("db", help="database maintenance")
    dt = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    s = dt.add_parser("compact", parents=[common],
                      help="give free space back to the disk, in small steps (the server may "
                           "be running); the WAL is cut back too")
    s.add_argument("--full", action="store_true",
                   help="once, for a database made by an older fazt: a full VACUUM (needs "
                        "free disk about twice its size, holds writes until it ends)")
    s.set_defaults(func=cmd_db_compact)

    s = sub.add_parser("backup", parents=[common], help="write a consistent copy of the database")
    s.add_argument("out")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", parents=[common],
                       help="put a backup, or the latest state of a replica, in place of the "
                            "database (the server must be stopped)")
    s.add_argument("backup", nargs="?", help="a file written by `fazt backup` or the dashboard")
    s.add_argument("--from", dest="source", metavar="URL",
                   help="fetch from this replica (see `fazt replica set`) instead")
    s.set_defaults(func=cmd_restore)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except FaztError as exc:
        print(f"fazt: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fazt config get | head -1`): end quietly, as `cat` does.
        # Python would try to flush stdout once more at exit and complain; point it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
