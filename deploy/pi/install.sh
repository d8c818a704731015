#!/usr/bin/env bash
# Install signer-tunnel on a Raspberry Pi (or any systemd Linux machine), as root.
#
#   sudo bash install.sh [--dry-run] [--prefix DIR] [--unit FILE] [--example FILE] [BINARY]
#
#   BINARY          the signer-tunnel binary built for this machine (default: ./signer-tunnel)
#   --dry-run       print what would be done; change nothing
#   --prefix DIR    install under DIR as if it were / (image building, tests): no user is
#                   created, no owner is changed, systemctl is not called; root is not needed
#   --unit FILE     the systemd unit (default: deploy/systemd/signer-tunnel.service next to
#                   this script, else ./signer-tunnel.service)
#   --example FILE  the example config (default: deploy/examples/signer-tunnel.yaml next to
#                   this script, else ./signer-tunnel.yaml)
#
# What it does (idempotent: run it again to upgrade the binary or the unit):
#   - creates the system user and group signer-tunnel (no home, no login shell);
#   - creates /etc/signer-tunnel (0750, root:signer-tunnel);
#   - installs BINARY as /usr/bin/signer-tunnel (0755);
#   - generates the identity /etc/signer-tunnel/id_ed25519 if there is none (signer-tunnel
#     keygen; owned by signer-tunnel, 0600) and prints its public line for the gateway config.
#     An existing key (e.g. the one autossh used, copied there) is kept;
#   - installs the unit as /etc/systemd/system/signer-tunnel.service and reloads systemd;
#   - copies the example config to /etc/signer-tunnel/config.yaml (0640, root:signer-tunnel)
#     if there is none. An existing config is never overwritten.
# It does not start the service: edit the config first (gateway address, host_key), then
# `systemctl enable --now signer-tunnel`. Guide: docs/pi-setup.md.
set -euo pipefail

USER_NAME=signer-tunnel
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

dry_run=0
prefix=""
unit_src=""
example_src=""
bin_src=""

say() { printf '%s\n' "$*"; }
# Report something done (silent with --dry-run, where the "would run" lines say it).
done_say() { [ "$dry_run" = 1 ] || say "$@"; }
die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --prefix)
      [ $# -ge 2 ] || die "--prefix needs a directory"
      prefix=$2
      shift
      ;;
    --prefix=*) prefix=${1#--prefix=} ;;
    --unit)
      [ $# -ge 2 ] || die "--unit needs a file"
      unit_src=$2
      shift
      ;;
    --example)
      [ $# -ge 2 ] || die "--example needs a file"
      example_src=$2
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [ -z "$bin_src" ] || die "only one binary, please (got $bin_src and $1)"
      bin_src=$1
      ;;
  esac
  shift
done

# The first existing file among the arguments.
first_file() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then
      printf '%s\n' "$f"
      return 0
    fi
  done
  return 1
}

bin_src=${bin_src:-./signer-tunnel}
if [ -z "$unit_src" ]; then
  unit_src=$(first_file "$script_dir/../systemd/signer-tunnel.service" ./signer-tunnel.service) ||
    die "cannot find signer-tunnel.service (copy deploy/systemd/signer-tunnel.service here, or pass --unit FILE)"
fi
if [ -z "$example_src" ]; then
  example_src=$(first_file "$script_dir/../examples/signer-tunnel.yaml" ./signer-tunnel.yaml) ||
    die "cannot find signer-tunnel.yaml (copy deploy/examples/signer-tunnel.yaml here, or pass --example FILE)"
fi
[ -f "$unit_src" ] || die "unit $unit_src not found"
[ -f "$example_src" ] || die "example config $example_src not found"
[ -f "$bin_src" ] || die "binary $bin_src not found (pass its path: install.sh path/to/signer-tunnel)"
[ -x "$bin_src" ] || die "binary $bin_src is not executable (chmod +x it)"

root=${prefix%/}
etc_dir="$root/etc/signer-tunnel"
bin_dst="$root/usr/bin/signer-tunnel"
unit_dst="$root/etc/systemd/system/signer-tunnel.service"
config="$etc_dir/config.yaml"
identity="$etc_dir/id_ed25519"

if [ -z "$prefix" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo bash $0 …), or use --dry-run / --prefix DIR"
fi

# Run a command, or only show it with --dry-run.
run() {
  if [ "$dry_run" = 1 ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Owner and mode changes only make sense on the real system.
system() { [ -z "$prefix" ]; }

systemd_running() { system && [ -d /run/systemd/system ]; }

# Check the binary runs here (a build for another architecture fails with "Exec format error").
if ! version=$("$bin_src" --version 2>&1); then
  die "$bin_src does not run on this machine ($(uname -m)): $version
Build it for this architecture, e.g. cargo build --release -p signer-tunnel --target aarch64-unknown-linux-gnu"
fi
say "== installing $version from $bin_src${prefix:+ under $prefix}"

# --- the service user
if ! system; then
  say "-- service user: skipped (--prefix)"
elif getent passwd "$USER_NAME" >/dev/null; then
  say "-- service user $USER_NAME exists"
else
  nologin=$(first_file /usr/sbin/nologin /sbin/nologin) || nologin=/bin/false
  if getent group "$USER_NAME" >/dev/null; then
    run useradd --system --gid "$USER_NAME" --no-create-home --home-dir /nonexistent --shell "$nologin" "$USER_NAME"
  else
    run useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "$nologin" "$USER_NAME"
  fi
  done_say "-- service user $USER_NAME created"
fi

# --- /etc/signer-tunnel: readable by the service's group, writable by root only
run install -d -m 0750 "$etc_dir"
if system; then
  run chown "root:$USER_NAME" "$etc_dir"
  run chmod 0750 "$etc_dir"
fi

# --- the binary
service_was_active=0
if systemd_running && systemctl is-active --quiet signer-tunnel; then
  service_was_active=1
fi
binary_changed=0
if [ -f "$bin_dst" ] && cmp -s "$bin_src" "$bin_dst"; then
  say "-- $bin_dst is already this binary"
else
  # install(1) replaces the file (new inode), so a running service keeps its old binary.
  run install -D -m 0755 "$bin_src" "$bin_dst"
  binary_changed=1
  done_say "-- installed $bin_dst"
fi

# --- the identity
public_line=""
if [ -e "$identity" ]; then
  say "-- identity $identity exists: kept"
  if [ -f "$identity.pub" ]; then
    public_line=$(head -n 1 "$identity.pub")
  elif command -v ssh-keygen >/dev/null 2>&1; then
    public_line=$(ssh-keygen -y -f "$identity" 2>/dev/null) || public_line=""
  fi
else
  if [ "$dry_run" = 1 ]; then
    run "$bin_dst" keygen --out "$identity"
  else
    keygen_out=$("$bin_dst" keygen --out "$identity" 2>&1) ||
      die "signer-tunnel keygen --out $identity failed: $keygen_out"
    public_line=$(printf '%s\n' "$keygen_out" | grep -m 1 '^ssh-') || public_line=""
    done_say "-- generated the identity $identity"
  fi
fi
if system; then
  run chown "$USER_NAME:$USER_NAME" "$identity"
  run chmod 0600 "$identity"
fi

# --- the systemd unit
unit_changed=0
if [ -f "$unit_dst" ] && cmp -s "$unit_src" "$unit_dst"; then
  say "-- $unit_dst is up to date"
else
  run install -D -m 0644 "$unit_src" "$unit_dst"
  unit_changed=1
  done_say "-- installed $unit_dst"
fi
if system && [ -f /lib/systemd/system/signer-tunnel.service ]; then
  say "   note: the packaged /lib/systemd/system/signer-tunnel.service is overridden by $unit_dst"
fi
if [ "$unit_changed" = 1 ] && systemd_running; then
  run systemctl daemon-reload
fi

# --- the config
if [ -e "$config" ]; then
  say "-- config $config exists: kept"
else
  run install -m 0640 "$example_src" "$config"
  done_say "-- copied the example config to $config"
fi
if system; then
  run chown "root:$USER_NAME" "$config"
  run chmod 0640 "$config"
fi

# --- what is left for the operator
say ""
if [ -n "$public_line" ]; then
  say "== This Pi's public key: list it under its signer's tunnel.keys in the gateway config:"
  say ""
  say "   $public_line"
  say ""
elif [ "$dry_run" = 0 ]; then
  say "== Could not read the public key of $identity: print it with ssh-keygen -y -f $identity"
fi
say "== Next steps"
say "1. Gateway: list this Pi's public key ($identity.pub) under its signer's"
say "   tunnel.keys, run signer-gateway check-config, restart the gateway."
if [ "$dry_run" = 0 ] && [ -f "$config" ] && grep -q 'REPLACE_WITH_THE_GATEWAY_FINGERPRINT' "$config"; then
  say "2. Edit $config: it is still the example. Set gateways (host:2222) and host_key"
else
  say "2. Check $config: gateways (host:2222) and host_key"
fi
say "   (the gateway's SHA256:… fingerprint: its 'ssh host key' log line or /status ssh.host_key_fingerprint),"
say "   uplinks (eth0, wwan0), signer and health_check."
say "3. Test every step: signer-tunnel --config /etc/signer-tunnel/config.yaml check"
say "4. Start it:       systemctl enable --now signer-tunnel"
say "   Follow it:      journalctl -u signer-tunnel -f"
if [ "$service_was_active" = 1 ] && { [ "$binary_changed" = 1 ] || [ "$unit_changed" = 1 ]; }; then
  say "The service is running the previous version: systemctl restart signer-tunnel"
fi
