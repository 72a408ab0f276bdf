#!/usr/bin/env bash
# Builds the real test control plane (kube-apiserver, kubectl, etcd) and helm from the Go module
# proxy, using the pinned wrapper modules in hack/testbin/*/go.mod, into a cache outside the source
# tree. Prints the cache directory on its last line. Cached binaries are reused: a warm run is instant.
#
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

if ! command -v go >/dev/null 2>&1; then
  log "Go is needed to build the control plane (it is on this machine's image: /usr/local/go/bin)."
  exit 1
fi

mkdir -p "$TESTBIN_DIR"
start=$(date +%s)

build() { # build <name> <module dir> <package> [ldflags]
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
  if have "$name"; then log "$name: cached in $TESTBIN_DIR"; return; fi
  log "$name: building $pkg (a cold build takes minutes on 2 cores)"
  local t0; t0=$(date +%s)
  (cd "$here/testbin/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$TESTBIN_DIR/$name.tmp.$$" "$pkg")
  mv -f "$TESTBIN_DIR/$name.tmp.$$" "$TESTBIN_DIR/$name"
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
build promtool prometheus github.com/prometheus/prometheus/cmd/promtool "-X github.com/prometheus/common/version.Version=3.16.0"

log "done in $(( $(date +%s) - start ))s"
echo "$TESTBIN_DIR"
