#!/usr/bin/env bash
# The test command: everything set up on a fresh machine, then every test, the ignored ones included.
#
#   hack/test.sh [cargo test args] [-- test binary args]
#   e.g. hack/test.sh --test e2e_reconciler        hack/test.sh --lib -- backoff
#
# Checks what the machine must provide (Rust, Go, PostgreSQL's binaries, openssl, curl, python3) and
# says how to get what is missing; builds (or reuses) kube-apiserver, etcd, kubectl, helm and the Argo
# CD / Flux checkers (hack/build-testbin.sh); starts a control plane and PostgreSQL for this run; runs
# `cargo test --workspace --no-fail-fast ... -- --include-ignored`, so the tests that plain
# `cargo test` skips for want of these services run here; prints a summary; stops everything again,
# also when a test fails. USE_EXISTING_CLUSTER=true with KUBECONFIG runs the Kubernetes tests against
# that cluster instead of our own control plane.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=hack/prereqs.sh
source "$here/prereqs.sh"
check_prereqs
started=$(date +%s)

cargo_args=() test_args=() after_sep=false
for a in "$@"; do
  if ! $after_sep && [[ "$a" == "--" ]]; then after_sep=true; continue; fi
  if $after_sep; then test_args+=("$a"); else cargo_args+=("$a"); fi
done
scope=(--workspace)
for a in "${cargo_args[@]}"; do
  case "$a" in -p | -p* | --package | --package=*) scope=() ;; esac
done

run_dir="$(mktemp -d /tmp/carerix-operator-test.XXXXXX)"
chmod 755 "$run_dir" # PostgreSQL runs as its own user when we are root, and must reach its dir
cleanup() {
  "$here/control-plane.sh" stop "$run_dir/cp" >/dev/null 2>&1 || true
  "$here/postgres.sh" stop "$run_dir/pg" >/dev/null 2>&1 || true
  rm -rf "$run_dir"
}
trap cleanup EXIT INT TERM

testbin="$("$here/build-testbin.sh" | tail -n 1)"
export PATH="$testbin:$PATH" CARERIX_TEST_TESTBIN="$testbin"

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

echo "== cargo test ${scope[*]} --no-fail-fast ${cargo_args[*]} -- --include-ignored ${test_args[*]}"
set +e
cargo test "${scope[@]}" --no-fail-fast "${cargo_args[@]}" -- --include-ignored "${test_args[@]}" 2>&1 \
  | tee "$run_dir/test.log"
status=${PIPESTATUS[0]}
set -e

echo
echo "== summary ($(( $(date +%s) - started ))s)"
grep -E '^test .* \.\.\. FAILED$' "$run_dir/test.log" | sed 's/^/  /' || true
grep -E '^ +`--(test|lib|bin|doc)' "$run_dir/test.log" | sed 's/^ */  target failed: /' || true
awk '/^test result:/ {p+=$4; f+=$6; i+=$8; n++}
  END {printf "%d passed, %d failed, %d ignored (in %d test binaries)\n", p, f, i, n}' "$run_dir/test.log"
exit "$status"
