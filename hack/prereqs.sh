# Sourced by hack/test.sh and hack/demo.sh: checks what the machine must provide, because the
# scripts cannot install it themselves (everything else they build or download on first use), and
# stops with one message that lists every missing piece and how to get it.
#
#   check_prereqs   exit 1 with the list when something is missing
# shellcheck shell=bash

check_prereqs() {
  local missing=()
  command -v cargo >/dev/null 2>&1 \
    || missing+=("Rust (cargo): https://rustup.rs, then open a new shell")
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then export PATH="/usr/local/go/bin:$PATH"; fi
  if ! command -v go >/dev/null 2>&1; then
    missing+=("Go 1.26 or newer (builds the control plane, helm and the Argo CD / Flux checkers): https://go.dev/dl/, unpacked into /usr/local/go or on PATH")
  else
    local minor
    minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    if [[ -z "$minor" || "$minor" -lt 26 ]]; then
      missing+=("Go 1.26 or newer, found $(go env GOVERSION): https://go.dev/dl/")
    fi
  fi
  if ! { command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; } \
    && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing+=("PostgreSQL server binaries (initdb, pg_ctl, psql under /usr/lib/postgresql/*/bin): apt-get install postgresql (Debian/Ubuntu); no server needs to run, the scripts start their own")
  fi
  command -v openssl >/dev/null 2>&1 \
    || missing+=("openssl (the control plane's private CA and client certificates): apt-get install openssl")
  command -v curl >/dev/null 2>&1 \
    || missing+=("curl (waits for kube-apiserver and etcd to be ready): apt-get install curl")
  command -v python3 >/dev/null 2>&1 \
    || missing+=("python3 (finds free loopback ports): apt-get install python3")
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    missing+=("a 'postgres' user (PostgreSQL refuses to run as root): it comes with apt-get install postgresql, or useradd -r postgres")
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    printf '%s needs these, which it cannot install by itself:\n' "$(basename "$0")" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    printf 'Everything else (kube-apiserver, etcd, kubectl, helm, the checkers) it builds on first use.\n' >&2
    exit 1
  fi
}
