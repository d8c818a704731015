#!/usr/bin/env bash
# What the project needs from the system, in one table: installs the missing Debian packages
# (named explicitly, never through "recommends"), then checks that every need is met and fails
# naming the package of any that is not.
#
# Usage: scripts/install-deps.sh [--cross] [--check]
#   --cross   also the Raspberry Pi (aarch64) build: cross C toolchain, headers, qemu-user, and
#             the rustup target
#   --check   install nothing: only report what is missing (exit 1 if anything is)
# Installs only as root with apt-get (Debian 12); elsewhere it says what to install.
set -euo pipefail

cross=0 check_only=0
for arg in "$@"; do
  case "$arg" in
    --cross) cross=1 ;;
    --check) check_only=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps.sh: unknown argument: $arg (try --help)" >&2; exit 64 ;;
  esac
done

# need KIND WHAT PACKAGE WHY
#   KIND cmd: WHAT is a command on PATH; file: WHAT is a file; py: WHAT is a Python module.
needs=(
  "cmd  cc                     gcc             C compiler for crates that build C (ring, blst)"
  "file /usr/include/stdint.h  libc6-dev       C headers for the same"
  "cmd  ssh                    openssh-client  stock OpenSSH interop tests (Pis still on autossh)"
  "cmd  ssh-keygen             openssh-client  keys for the OpenSSH interop tests"
  "file /usr/sbin/sshd         openssh-server  the incumbent (sshd) in benches/baker_link.rs"
  "cmd  node                   nodejs          the Taquito interop test"
  "cmd  npm                    npm             the Taquito interop test's packages"
  "cmd  python3                python3         the demo and scripts/validate-deploy.sh"
  "py   venv                   python3-venv    scripts/validate-deploy.sh's tool venv"
  "cmd  curl                   curl            the demo"
  "cmd  shellcheck             shellcheck      the Pi install script's lint (tests/docs.rs)"
  "cmd  protoc                 protobuf-compiler  builds etcd-client (the gateway's etcd feature)"
  "file /usr/include/google/protobuf/descriptor.proto  libprotobuf-dev  protoc's well-known types, for the same"
  "cmd  etcd                   etcd-server     the etcd watermark store's tests (tests/etcd.rs)"
  "cmd  etcdctl                etcd-client     the same tests: leader, status, auth set-up"
  "cmd  openssl                openssl         TLS certificates for the etcd store's TLS test"
)
if [ "$cross" = 1 ]; then
  needs+=(
    "cmd  aarch64-linux-gnu-gcc  gcc-aarch64-linux-gnu  linker and C compiler for the Pi build"
    "file /usr/aarch64-linux-gnu/include/bits/libc-header-start.h  libc6-dev-arm64-cross  aarch64 C headers (ring's build)"
    "file /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1  libc6-arm64-cross  aarch64 loader and libc (the qemu test)"
    "cmd  qemu-aarch64           qemu-user       runs the Pi build in a test"
  )
fi

met() { # KIND WHAT
  case "$1" in
    cmd) command -v "$2" >/dev/null 2>&1 ;;
    file) [ -e "$2" ] ;;
    py) command -v python3 >/dev/null 2>&1 && python3 -c "import $2" >/dev/null 2>&1 ;;
  esac
}

missing() { # prints "PACKAGE<TAB>WHAT<TAB>WHY" for each unmet need
  local kind what pkg why
  for line in "${needs[@]}"; do
    read -r kind what pkg why <<<"$line"
    met "$kind" "$what" || printf '%s\t%s\t%s\n' "$pkg" "$what" "$why"
  done
}

if [ "$check_only" = 0 ]; then
  mapfile -t want < <(missing | cut -f1 | sort -u)
  if [ ${#want[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== installing ${want[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
    else
      echo "!! cannot install here (not root, or no apt-get): ${want[*]}" >&2
    fi
  fi
  if [ "$cross" = 1 ] && command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    echo "== rustup target add aarch64-unknown-linux-gnu"
    rustup target add aarch64-unknown-linux-gnu
  fi
fi

# The check: every need met, or a list of what is missing and which package brings it.
status=0
report=$(missing)
if [ -n "$report" ]; then
  echo "!! the system lacks what the project needs:" >&2
  while IFS=$'\t' read -r pkg what why; do
    printf '!!   %-40s  Debian package %-24s (%s)\n' "$what" "$pkg" "$why" >&2
  done <<<"$report"
  status=1
fi
if [ "$cross" = 1 ] && command -v rustup >/dev/null 2>&1 &&
  ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  echo "!!   rust target aarch64-unknown-linux-gnu (rustup target add aarch64-unknown-linux-gnu)" >&2
  status=1
fi
[ "$status" = 0 ] && echo "== system dependencies: all present"
exit "$status"
