#!/usr/bin/env bash
# Install, enroll and remove the edgeserve edge agent as a hardened systemd service.
#
#   install-agent.sh install --device-id ID [--source DIR | --wheel FILE]
#       [--prefix /opt/edgeserve] [--config-dir /etc/edgeserve] [--user edgeserve]
#       [--bundle FILE] [--unit-dir /etc/systemd/system] [--python python3] [--no-start]
#       [--extras edge,cpu,escalation,fleet]
#   install-agent.sh enroll --bundle FILE [--prefix ...] [--config-dir ...] [--user ...]
#   install-agent.sh uninstall [--purge] [--prefix ...] [--config-dir ...] [--user ...]
#       [--unit-dir ...] [--state-dir /var/lib/edgeserve]
#   install-agent.sh render-unit [--prefix ...] [--config-dir ...] [--user ...]
#
# install: a system user without login, the config folder (0750 root:USER), a venv at
# PREFIX with edgeserve[EXTRAS], the device key and enrollment request (the key never
# leaves the device), with --bundle the operator's answer, the unit (PREFIX, USER and
# CONFIG_DIR substituted), `systemd-analyze verify` on it, and `enable` + `restart`
# when systemd runs as PID 1. Re-running upgrades in place and keeps the key.
# EXTRAS: the agent with one ONNX Runtime (cpu), escalation (grpc) and fleet sync (paho);
# on a Jetson leave out cpu and install NVIDIA's onnxruntime-gpu wheel into PREFIX; add
# tflite for .tflite models.
# enroll: the second half of a two-step enrollment (the operator's bundle arrived).
# uninstall: stop and disable, remove the unit and the venv; --purge also removes the
# config (keys included), the state and the user.
# See docs/operations/edge-agent-systemd.md.
set -euo pipefail

readonly UNIT_NAME=edgeserve-agent.service
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly UNIT_TEMPLATE="$script_dir/systemd/edgeserve-agent.service"

prefix=/opt/edgeserve
config_dir=/etc/edgeserve
unit_dir=/etc/systemd/system
state_dir=/var/lib/edgeserve
user=edgeserve
python=python3
device_id=""
source_dir=""
wheel=""
bundle=""
no_start=0
purge=0
extras=edge,cpu,escalation,fleet

say() { printf 'install-agent: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

parse_options() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --device-id | --source | --wheel | --prefix | --config-dir | --user | --bundle | \
                --unit-dir | --state-dir | --python | --extras)
                [ $# -ge 2 ] || die "$1 needs a value"
                set_option "$1" "$2"
                shift 2
                ;;
            --no-start) no_start=1; shift ;;
            --purge) purge=1; shift ;;
            -h | --help) usage ;;
            *) die "unknown option: $1" ;;
        esac
    done
    check_path --prefix "$prefix"
    check_path --config-dir "$config_dir"
    check_path --unit-dir "$unit_dir"
    check_path --state-dir "$state_dir"
    [[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user $user is not a valid user name"
    check_extras
}

set_option() {
    case "$1" in
        --device-id) device_id=$2 ;;
        --source) source_dir=$2 ;;
        --wheel) wheel=$2 ;;
        --prefix) prefix=$2 ;;
        --config-dir) config_dir=$2 ;;
        --user) user=$2 ;;
        --bundle) bundle=$2 ;;
        --unit-dir) unit_dir=$2 ;;
        --state-dir) state_dir=$2 ;;
        --python) python=$2 ;;
        --extras) extras=$2 ;;
    esac
}

# Paths end up in sed expressions, the unit file and rm -rf: absolute, plain, not a root.
check_path() {
    [[ "$2" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "$1 $2 must be an absolute path of [A-Za-z0-9._/-]"
    case "${2%/}" in
        "" | /etc | /usr | /var | /var/lib | /opt | /home | /tmp) die "$1 $2 is a system folder" ;;
    esac
}

# cpu and gpu both install the `onnxruntime` module: one would overwrite the other.
check_extras() {
    [[ "$extras" =~ ^[a-z0-9-]+(,[a-z0-9-]+)*$ ]] || die "--extras $extras is not a list like edge,cpu"
    local names runtimes=0 name
    IFS=, read -ra names <<<"$extras"
    for name in "${names[@]}"; do
        [[ "$name" != cpu && "$name" != gpu ]] || runtimes=$((runtimes + 1))
    done
    [ "$runtimes" -le 1 ] || die "--extras $extras names both cpu and gpu (one onnxruntime per install)"
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it creates a user and writes system folders)"
}

systemd_is_pid1() { [ -d /run/systemd/system ]; }

ensure_user() {
    if getent passwd "$user" >/dev/null; then
        return
    fi
    local nologin
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell "$nologin" --comment "edgeserve edge agent" "$user"
    say "created system user $user"
}

ensure_config_dir() {
    install -d -m 0750 -o root -g "$user" "$config_dir"
}

ensure_venv() {
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is older than Python 3.11 (use --python)"
    [ -x "$prefix/bin/python" ] || "$python" -m venv "$prefix"
    local source
    if [ -n "$wheel" ]; then
        source="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
    else
        source="$(cd "${source_dir:-$script_dir/..}" && pwd)"
    fi
    say "installing ${source}[$extras] into $prefix"
    "$prefix/bin/python" -m pip install --quiet --upgrade "${source}[$extras]"
    # pip keeps an installed edgeserve of the same version, so a rebuilt wheel would not
    # replace it on upgrade: reinstall edgeserve itself (its dependencies stay).
    "$prefix/bin/python" -m pip install --quiet --force-reinstall --no-deps "$source"
}

edgeserve() { "$prefix/bin/edgeserve" "$@"; }

# The agent reads its secrets as $user; everything else in the folder stays root's.
fix_ownership() {
    chown -R root:"$user" "$config_dir"
    local secret
    for secret in device.key broker.password; do
        [ ! -e "$config_dir/$secret" ] || chown "$user:$user" "$config_dir/$secret"
    done
}

# Prints the request's path on stdout, and what to do with it on stderr.
request_enrollment() {
    edgeserve agent enroll-request --device-id "$device_id" --dir "$config_dir"
    fix_ownership
}

accept_bundle() {
    [ -r "$bundle" ] || die "cannot read bundle $bundle"
    edgeserve agent enroll-accept --bundle "$bundle" --dir "$config_dir" >/dev/null
    fix_ownership
    say "enrolled with $bundle; config written to $config_dir/agent.toml"
}

render_unit() {
    local config_line="ConfigurationDirectory=${config_dir#/etc/}"
    case "$config_dir" in
        /etc/*) ;;
        *) config_line="# ConfigurationDirectory= omitted: $config_dir is not under /etc" ;;
    esac
    sed -e "s#^ExecStart=/opt/edgeserve/bin/edgeserve #ExecStart=$prefix/bin/edgeserve #" \
        -e "s#--config /etc/edgeserve/agent.toml\$#--config $config_dir/agent.toml#" \
        -e "s#^User=edgeserve\$#User=$user#" \
        -e "s#^Group=edgeserve\$#Group=$user#" \
        -e "s|^ConfigurationDirectory=edgeserve\$|$config_line|" \
        "$UNIT_TEMPLATE"
}

install_unit() {
    local unit="$unit_dir/$UNIT_NAME"
    mkdir -p "$unit_dir"
    render_unit >"$unit.tmp"
    grep -q "^ExecStart=$prefix/bin/edgeserve agent run --config $config_dir/agent.toml\$" \
        "$unit.tmp" || die "rendering $UNIT_TEMPLATE failed (has its ExecStart= changed?)"
    chmod 0644 "$unit.tmp"
    mv "$unit.tmp" "$unit"
    if command -v systemd-analyze >/dev/null; then
        systemd-analyze verify "$unit" || die "systemd-analyze verify failed on $unit"
        say "unit $unit verified"
    else
        say "systemd-analyze not found: $unit not verified"
    fi
}

start_service() {
    if [ "$no_start" -eq 1 ]; then
        say "not starting (--no-start)"
    elif ! systemd_is_pid1; then
        say "systemd is not PID 1 here: start it later with" \
            "systemctl daemon-reload && systemctl enable --now ${UNIT_NAME%.service}"
    elif [ "$unit_dir" != /etc/systemd/system ]; then
        say "unit installed in $unit_dir, which systemd does not read: not starting"
    else
        systemctl daemon-reload
        systemctl enable "$UNIT_NAME"
        # restart, not start: an upgrade must replace the running code.
        systemctl restart "$UNIT_NAME"
        say "started: systemctl status ${UNIT_NAME%.service}; journalctl -u ${UNIT_NAME%.service}"
    fi
}

cmd_install() {
    require_root
    [ -n "$device_id" ] || die "install needs --device-id"
    [ -z "$source_dir" ] || [ -z "$wheel" ] || die "give --source or --wheel, not both"
    ensure_user
    ensure_config_dir
    ensure_venv
    request_enrollment
    [ -z "$bundle" ] || accept_bundle
    install_unit
    start_service
}

cmd_enroll() {
    require_root
    [ -n "$bundle" ] || die "enroll needs --bundle"
    [ -x "$prefix/bin/edgeserve" ] || die "no agent installed at $prefix (run install first)"
    accept_bundle
    if [ "$no_start" -eq 0 ] && systemd_is_pid1 && [ "$unit_dir" = /etc/systemd/system ]; then
        systemctl try-restart "$UNIT_NAME"
    fi
}

cmd_uninstall() {
    require_root
    local unit="$unit_dir/$UNIT_NAME"
    if systemd_is_pid1 && [ "$unit_dir" = /etc/systemd/system ]; then
        systemctl disable --now "$UNIT_NAME" 2>/dev/null || true
    fi
    rm -f "$unit"
    if systemd_is_pid1 && [ "$unit_dir" = /etc/systemd/system ]; then
        systemctl daemon-reload
    fi
    if [ -f "$prefix/pyvenv.cfg" ]; then
        rm -rf "$prefix"
    elif [ -e "$prefix" ]; then
        say "$prefix is not a venv: left in place"
    fi
    [ "$purge" -eq 1 ] || { say "removed (config, keys and state kept; --purge removes them)"; return; }
    rm -rf "$config_dir" "$state_dir"
    if getent passwd "$user" >/dev/null; then
        userdel "$user"
    fi
    if getent group "$user" >/dev/null; then
        groupdel "$user"
    fi
    say "purged: config, keys, state and user $user removed"
}

main() {
    [ $# -ge 1 ] || usage
    local command=$1
    shift
    parse_options "$@"
    case "$command" in
        install) cmd_install ;;
        enroll) cmd_enroll ;;
        uninstall) cmd_uninstall ;;
        render-unit) render_unit ;;
        *) usage ;;
    esac
}

main "$@"
