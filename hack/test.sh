#!/usr/bin/env bash
# The test command: everything set up on a fresh machine, then every test.
#
#   hack/test.sh [extra cargo test args]
#
# Builds (or reuses) kube-apiserver, etcd, kubectl and helm; starts a control plane and PostgreSQL
# for this run; runs `cargo test --workspace`; stops everything again, also when a test fails.
# USE_EXISTING_CLUSTER=true with KUBECONFIG runs the Kubernetes tests against that cluster instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

run_dir="$(mktemp -d /tmp/carerix-operator-test.XXXXXX)"
chmod 755 "$run_dir" # PostgreSQL runs as its own user when we are root, and must reach its dir
cleanup() {
  "$here/control-plane.sh" stop "$run_dir/cp" >/dev/null 2>&1 || true
  "$here/postgres.sh" stop "$run_dir/pg" >/dev/null 2>&1 || true
  rm -rf "$run_dir"
}
trap cleanup EXIT INT TERM

testbin="$("$here/build-testbin.sh" | tail -n 1)"
export PATH="$testbin:$PATH"

if [[ "${USE_EXISTING_CLUSTER:-}" == "true" ]]; then
  : "${KUBECONFIG:?USE_EXISTING_CLUSTER=true needs KUBECONFIG}"
  export CARERIX_TEST_KUBECONFIG="$KUBECONFIG"
else
  cp_env="$("$here/control-plane.sh" start "$run_dir/cp")"
  eval "$cp_env"
  export CARERIX_TEST_KUBECONFIG="$KUBECONFIG"
fi
export CARERIX_TEST_KUBECTL="$testbin/kubectl" CARERIX_TEST_HELM="$testbin/helm"
pg_env="$("$here/postgres.sh" start "$run_dir/pg")"
eval "$pg_env"

set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$run_dir/test.log"
status=${PIPESTATUS[0]}
set -e
echo
echo "== summary"
awk '/^test result:/ {p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d skipped\n", p, f, i}' "$run_dir/test.log"
exit "$status"
