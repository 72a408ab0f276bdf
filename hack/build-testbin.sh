#!/usr/bin/env bash
# Builds the Go tools the tests run, from the Go module proxy, through the pinned wrapper modules in
# hack/testbin/*/ (go.mod + go.sum), into a cache outside the source tree:
#   etcd, kube-apiserver, kubectl   the real test control plane
#   helm                            the chart tests
#   argocd-lua-health               an Argo CD health.lua run under gopher-lua (hack/testbin/lua)
#   kstatus                         Flux's view of an object (hack/testbin/kstatus)
#   promtool                        checks and unit-tests the chart's alerts (hack/testbin/prometheus)
# Prints the cache directory on its last line. Cached binaries are reused: a warm run is instant.
# The two tools with our own main.go are rebuilt when their wrapper module changes.
#
#   hack/build-testbin.sh [TOOL...]   build (or find) the named tools only; all of them by default
#   TESTBIN_DIR   where the binaries go (default: ~/.cache/carerix-operator/testbin/<versions>)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v4.3.2
TESTBIN_DIR="${TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/carerix-operator/testbin/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}}"

export GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod

log() { printf '[build-testbin] %s\n' "$*" >&2; }

have() { [[ -x "$TESTBIN_DIR/$1" ]]; }

# Go from PATH, else from where the official archive installs it.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then export PATH="/usr/local/go/bin:$PATH"; fi
if ! command -v go >/dev/null 2>&1; then
  log "Go 1.26 or newer is needed to build the test tools and was not found on PATH or in /usr/local/go."
  log "Install it from https://go.dev/dl/ (tar -C /usr/local -xzf go1.26.*.linux-amd64.tar.gz), then run this again."
  exit 1
fi
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [[ -z "$go_minor" || "$go_minor" -lt 26 ]]; then
  log "Go 1.26 or newer is needed (the wrapper modules say go 1.26.0); found $(go env GOVERSION). Get it from https://go.dev/dl/."
  exit 1
fi

wanted=("$@")
known=" etcd kube-apiserver kubectl helm argocd-lua-health kstatus promtool "
for t in "${wanted[@]}"; do
  [[ "$known" == *" $t "* ]] || { log "unknown tool $t; known:$known"; exit 2; }
done
want() { [[ ${#wanted[@]} -eq 0 || " ${wanted[*]} " == *" $1 "* ]]; }

mkdir -p "$TESTBIN_DIR"
start=$(date +%s)

# A digest of a wrapper module with our own source: the cached binary is reused only if it matches.
source_digest() { (cd "$here/testbin/$1" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16); }

build() { # build <name> <module dir> <package> [ldflags]
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-} stamp=""
  want "$name" || return 0
  [[ -n "$(ls "$here/testbin/$dir"/*.go 2>/dev/null)" ]] && stamp=$(source_digest "$dir")
  if have "$name" && [[ "$(cat "$TESTBIN_DIR/.$name.source" 2>/dev/null)" == "$stamp" ]]; then
    log "$name: cached in $TESTBIN_DIR"; return
  fi
  log "$name: building $pkg in hack/testbin/$dir (a cold build of the control plane takes minutes)"
  local t0; t0=$(date +%s)
  (cd "$here/testbin/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$TESTBIN_DIR/$name.tmp.$$" "$pkg")
  mv -f "$TESTBIN_DIR/$name.tmp.$$" "$TESTBIN_DIR/$name"
  if [[ -n "$stamp" ]]; then echo "$stamp" > "$TESTBIN_DIR/.$name.source"; fi
  log "$name: built in $(( $(date +%s) - t0 ))s"
}

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
vflags=""
for kv in "gitVersion=${K8S_VERSION}" "gitMajor=1" "gitMinor=${minor}" "gitTreeState=clean"; do
  vflags+=" -X k8s.io/component-base/version.${kv} -X k8s.io/client-go/pkg/version.${kv}"
done

build etcd etcd go.etcd.io/etcd/server/v3
build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$vflags"
build kubectl kube k8s.io/kubernetes/cmd/kubectl "$vflags"
build helm helm helm.sh/helm/v4/cmd/helm "-X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
build argocd-lua-health lua .
build kstatus kstatus .
build promtool prometheus github.com/prometheus/prometheus/cmd/promtool "-X github.com/prometheus/common/version.Version=3.16.0"

log "done in $(( $(date +%s) - start ))s"
echo "$TESTBIN_DIR"
