#!/usr/bin/env bash
# Installs the system packages the tests and CI need, only those missing, on Debian/Ubuntu.
#   openssh-client        stock `ssh` for the OpenSSH interop tests (Pis still on autossh)
#   nodejs, npm           the Taquito interop test
#   gcc-aarch64-linux-gnu linker for the Raspberry Pi (aarch64) build of signer-tunnel   (--cross)
#   qemu-user             runs that aarch64 build in a test                               (--cross)
set -euo pipefail
want=()
command -v ssh >/dev/null 2>&1 || want+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || want+=(openssh-client)
command -v node >/dev/null 2>&1 || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)
command -v python3 >/dev/null 2>&1 || want+=(python3)
command -v curl >/dev/null 2>&1 || want+=(curl)
if [ "${1:-}" = "--cross" ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || want+=(gcc-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null 2>&1 || want+=(qemu-user)
fi
if [ ${#want[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "!! missing packages: ${want[*]} (install them; this script installs them only as root on Debian)" >&2
  exit 0
fi
echo "== installing ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
