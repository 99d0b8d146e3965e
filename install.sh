#!/usr/bin/env bash
# fazt's installer: puts the single-file binary in place, probes the machine,
# creates the database once, and optionally writes a systemd unit.
# Everything comes from this checkout; nothing is downloaded. Run it again to
# upgrade: the binary is replaced (the previous one kept as fazt.old) and the
# database is never touched. See --help.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

usage() {
    cat <<EOF
Usage: install.sh [options]

Installs dist/fazt (built first with build/binary.sh when it is missing and
python3 is present), runs \`fazt server probe\`, and runs \`fazt server init\`
when the database does not exist yet. On an existing installation it upgrades
the binary (keeping the previous one as fazt.old) and leaves the database alone.

Options:
  --prefix DIR       install the binary into DIR
                     (default: /usr/local/bin as root, ~/.local/bin otherwise)
  --db PATH          the database (default: \$FAZT_DB, else ~/.fazt/data.db)
  --domain D         domain for init (asked on a terminal; default localhost)
  --username U       owner's name for init (asked on a terminal; default admin)
  --password P       owner's password for init (asked on a terminal; when not
                     given and not on a terminal, one is generated and printed once)
  --port N           port stored by init (default 4698)
  --memory-mb N      declare the container's RAM to probe and init
  --cpus N           declare the container's CPUs to probe and init
  --tmpdir DIR       where the binary unpacks itself at each start (on disk, not
                     tmpfs; default: /var/cache/fazt as root, ~/.cache/fazt otherwise)
  --binary PATH      install this file instead of dist/fazt
  --systemd          write a systemd unit (fazt.service) for the server
  --unit-dir DIR     where to write the unit (default /etc/systemd/system)
  --dry-run          print every action, change nothing
  -h, --help         show this help
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

if [ "$(id -u)" = 0 ]; then
    prefix=/usr/local/bin
    tmpdir=/var/cache/fazt
else
    prefix="$HOME/.local/bin"
    tmpdir="$HOME/.cache/fazt"
fi
db=${FAZT_DB:-$HOME/.fazt/data.db}
domain=""
username=""
password=""
port=""
memory_mb=""
cpus=""
binary=""
systemd=0
unit_dir=/etc/systemd/system
dry_run=0

need_value() {
    [ "$#" -ge 2 ] || die "$1 needs a value (see --help)."
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) need_value "$@"; prefix=$2; shift 2 ;;
        --db) need_value "$@"; db=$2; shift 2 ;;
        --domain) need_value "$@"; domain=$2; shift 2 ;;
        --username) need_value "$@"; username=$2; shift 2 ;;
        --password) need_value "$@"; password=$2; shift 2 ;;
        --port) need_value "$@"; port=$2; shift 2 ;;
        --memory-mb) need_value "$@"; memory_mb=$2; shift 2 ;;
        --cpus) need_value "$@"; cpus=$2; shift 2 ;;
        --tmpdir) need_value "$@"; tmpdir=$2; shift 2 ;;
        --binary) need_value "$@"; binary=$2; shift 2 ;;
        --systemd) systemd=1; shift ;;
        --unit-dir) need_value "$@"; unit_dir=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)." ;;
    esac
done

absolute() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}
prefix=$(absolute "$prefix")
db=$(absolute "$db")
tmpdir=$(absolute "$tmpdir")
unit_dir=$(absolute "$unit_dir")
target="$prefix/fazt"
db_dir=$(dirname "$db")

# Prints a command, then runs it unless --dry-run.
run() {
    echo "+ $*"
    if [ "$dry_run" = 0 ]; then
        "$@"
    fi
}

# The binary unpacks itself under $TMPDIR at each start: keep that on disk.
fazt() {
    TMPDIR="$tmpdir" "$target" "$@"
}

hw_args=()
[ -n "$memory_mb" ] && hw_args+=(--memory-mb "$memory_mb")
[ -n "$cpus" ] && hw_args+=(--cpus "$cpus")

[ "$dry_run" = 1 ] && echo "Dry run: nothing will be changed."

# 1. The binary.
if [ -z "$binary" ]; then
    binary="$here/dist/fazt"
    if [ ! -f "$binary" ]; then
        command -v python3 >/dev/null || die "$binary is missing and python3 is not here to build it."
        echo "No dist/fazt yet: building it."
        run "$here/build/binary.sh"
    fi
fi
if [ "$dry_run" = 0 ] || [ -f "$binary" ]; then
    [ -f "$binary" ] || die "there is no binary at $binary."
fi

# 2. Install it; an existing one is kept as fazt.old, then replaced in one rename.
run mkdir -p "$prefix" "$tmpdir"
if [ -e "$target" ]; then
    echo "Upgrading $target (the previous binary is kept as $target.old)."
    run cp -p "$target" "$target.old"
else
    echo "Installing $target."
fi
run install -m 755 "$binary" "$target.new"
run mv -f "$target.new" "$target"
# HTTPS needs ports 80 and 443: let the binary bind them without running as root.
if [ "$(id -u)" = 0 ] && command -v setcap >/dev/null; then
    run setcap cap_net_bind_service=+ep "$target" ||
        echo "Note: setcap failed; HTTPS on ports 80/443 then needs root or the --systemd unit."
else
    echo "Note: to serve HTTPS on ports 80/443 as a normal user, run as root:" \
        "setcap cap_net_bind_service=+ep $target (the --systemd unit grants it itself)."
fi
case ":$PATH:" in
    *":$prefix:"*) ;;
    *) echo "Note: $prefix is not on your PATH." ;;
esac

# 3. What the machine offers, and the thresholds fazt would choose.
echo "Probing the machine (changes nothing):"
run fazt server probe --db "$db" "${hw_args[@]}"

# 4. The database: created once, never touched again.
if [ -e "$db" ]; then
    echo "Keeping the existing database $db (install.sh never touches it)."
else
    if [ -t 0 ] && [ "$dry_run" = 0 ]; then
        [ -n "$domain" ] || read -r -p "Domain [localhost]: " domain
        [ -n "$username" ] || read -r -p "Owner's username [admin]: " username
        if [ -z "$password" ]; then
            read -r -s -p "Owner's password (empty: generate one): " password
            echo
        fi
    fi
    domain=${domain:-localhost}
    username=${username:-admin}
    generated=0
    if [ -z "$password" ]; then
        password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
        generated=1
    fi
    # The password travels in the environment, never on a command line that `ps` shows.
    init_args=(--db "$db" --domain "$domain" --username "$username")
    [ -n "$port" ] && init_args+=(--port "$port")
    run mkdir -p "$db_dir"
    FAZT_PASSWORD="$password" run fazt server init "${init_args[@]}" "${hw_args[@]}"
    if [ "$generated" = 1 ]; then
        if [ "$dry_run" = 1 ]; then
            echo "A password would be generated for $username and printed once."
        else
            echo "Generated password for $username (shown only this once): $password"
        fi
    fi
fi

# 5. Optionally, a systemd unit whose memory limit is the probe's budget.
if [ "$systemd" = 1 ]; then
    for path in "$target" "$db" "$tmpdir"; do
        case "$path" in *[[:space:]]*) die "--systemd needs paths without spaces: $path" ;; esac
    done
    memory_max=""
    if [ "$dry_run" = 0 ]; then
        usable=$(fazt server probe --json --db "$db" "${hw_args[@]}" |
            sed -n 's/.*"usable_mb": *\([0-9.]*\).*/\1/p' | head -n 1)
        [ -n "$usable" ] || die "the probe did not report a memory budget."
        memory_max=$(awk -v mb="$usable" 'BEGIN { printf "%dM", (mb == int(mb)) ? mb : int(mb) + 1 }')
    fi
    user_line=""
    [ "$(id -u)" = 0 ] || user_line="User=$(id -un)"
    unit="$unit_dir/fazt.service"
    unit_text="[Unit]
Description=fazt, a personal PaaS in one executable and one SQLite database
After=network-online.target
Wants=network-online.target

[Service]${user_line:+
$user_line}
ExecStart=$target server start --db $db
# The binary unpacks itself here at each start (on disk, not RAM-backed tmpfs).
Environment=TMPDIR=$tmpdir
Restart=always
RestartSec=2
# The memory budget from the probe (ledger.usable_mb); the thresholds fit inside it.
MemoryMax=${memory_max:-<the probe budget, in MB>}
# Cockpit threads may raise their CPU priority (nice -10): sign-in answers under load;
# the ports below 1024 (80 and 443 for HTTPS) may be bound without root.
AmbientCapabilities=CAP_SYS_NICE CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$db_dir $tmpdir

[Install]
WantedBy=multi-user.target"
    echo "Writing $unit:"
    printf '%s\n' "$unit_text" | sed 's/^/    /'
    if [ "$dry_run" = 0 ]; then
        mkdir -p "$unit_dir"
        printf '%s\n' "$unit_text" >"$unit.new"
        mv -f "$unit.new" "$unit"
    fi
    echo "Enable it with: systemctl daemon-reload && systemctl enable --now fazt"
    command -v systemctl >/dev/null || echo "(systemctl is not on this machine.)"
fi

echo "Done. Start the server with: TMPDIR=$tmpdir $target server start --db $db"
