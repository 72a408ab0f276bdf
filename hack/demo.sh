#!/usr/bin/env bash
# The demo: a real control plane, the Carerix emulator, PostgreSQL and the operator; the example
# applied; Ready awaited; the status and the synced rows shown.
#
#   hack/demo.sh          run the demo, print the results, stop everything
#   hack/demo.sh --keep   the same, then keep everything running until Ctrl-C (prints how to use it)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
keep=false; [[ "${1:-}" == "--keep" ]] && keep=true

run_dir="${DEMO_DIR:-/tmp/carerix-operator-demo}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$here/control-plane.sh" stop "$run_dir/cp" >/dev/null 2>&1 || true
  "$here/postgres.sh" stop "$run_dir/pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
say() { printf '\n== %s\n' "$*"; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

say "building carerix-operator and carerix-sim"
cargo build --bins --quiet
target="${CARGO_TARGET_DIR:-target}/debug"

say "starting the control plane (kube-apiserver + etcd; built once, then cached)"
mkdir -p "$run_dir" && chmod 755 "$run_dir"
cp_env="$("$here/control-plane.sh" start "$run_dir/cp")"
eval "$cp_env"
testbin="$(cat "$run_dir/cp/bin")"
kubectl() { "$testbin/kubectl" "$@"; }

say "starting PostgreSQL"
pg_env="$("$here/postgres.sh" start "$run_dir/pg")"
eval "$pg_env"
pg_url="$CARERIX_TEST_POSTGRES_URL"

say "starting the Carerix emulator (tenant acme, client demo-client, webhooks activated)"
sim_port=$(free_port)
"$target/carerix-sim" --listen "127.0.0.1:$sim_port" --tenant acme --client acme:demo-client:demo-secret \
  --webhooks-activated --records 300 >"$run_dir/sim.out" 2>"$run_dir/sim.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q "listening on" "$run_dir/sim.out" 2>/dev/null && break; sleep 0.2; done
sim_url="$(sed -n 's/^carerix-sim listening on //p' "$run_dir/sim.out")"
echo "carerix-sim at $sim_url"

say "installing the CRD and starting the operator"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/carerixconnections.hiredata.io >/dev/null
op_port=$(free_port)
"$target/carerix-operator" run --kubeconfig "$KUBECONFIG" --listen "127.0.0.1:$op_port" \
  --receiver-base-url "http://127.0.0.1:$op_port" >"$run_dir/operator.log" 2>&1 &
pids+=($!)

say "applying the example: Secrets and a CarerixConnection"
kubectl create namespace recruiting --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n recruiting create secret generic acme-carerix --from-literal=clientId=demo-client \
  --from-literal=clientSecret=demo-secret --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n recruiting create secret generic carerix-db --from-literal=url="$pg_url" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n recruiting apply -f - <<YAML
apiVersion: hiredata.io/v1alpha1
kind: CarerixConnection
metadata:
  name: acme
spec:
  tenant: acme
  credentialsSecretRef: {name: acme-carerix}
  identityUrl: $sim_url
  apiUrl: $sim_url
  interval: 1m
  webhooks:
    - name: candidates
      events: [cremployee:created, cremployee:updated]
    - name: matches
      events: [crmatch:created, crmatch:updated]
  sync:
    interval: 30s
    sink:
      postgres:
        connectionSecretRef: {name: carerix-db, key: url}
YAML

say "waiting for Ready (kubectl wait --for=condition=Ready)"
if ! kubectl -n recruiting wait --for=condition=Ready cxc/acme --timeout=300s; then
  kubectl -n recruiting get cxc acme -o yaml
  echo "--- operator log"; tail -40 "$run_dir/operator.log"
  exit 1
fi

say "kubectl get cxc -o wide"
kubectl -n recruiting get cxc -o wide
say "conditions"
kubectl -n recruiting get cxc acme -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}'
say "webhooks in the emulator"
kubectl -n recruiting get cxc acme -o jsonpath='{range .status.webhooks.items[*]}{.name}{"\t"}{.state}{"\t"}{.url}{"\t"}{.events}{"\n"}{end}'
say "rows in PostgreSQL"
psql_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/psql"
"$psql_bin" "$pg_url" -c "select 'candidates' as entity, count(*) from carerix.candidates union all
  select 'vacancies', count(*) from carerix.vacancies union all select 'companies', count(*) from carerix.companies
  union all select 'contacts', count(*) from carerix.contacts union all select 'placements', count(*) from carerix.placements
  union all select 'matches', count(*) from carerix.matches union all select 'publications', count(*) from carerix.publications"
"$psql_bin" "$pg_url" -c "select id, record->>'firstName' as first_name, record->>'lastName' as last_name, modification_date
  from carerix.candidates where not deleted order by modification_date desc limit 5"

if $keep; then
  say "running; Ctrl-C stops everything"
  echo "export KUBECONFIG=$KUBECONFIG"
  echo "kubectl -n recruiting get cxc -w"
  echo "psql '$pg_url'"
  echo "emulator admin API: $sim_url/admin/v1 (see carerix-sim --help)"
  wait
fi
