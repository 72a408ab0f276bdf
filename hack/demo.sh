#!/usr/bin/env bash
# The demo: a real control plane, the Carerix emulator, PostgreSQL and the operator; the example
# applied against the emulator; Ready awaited; the status and the synced rows shown.
# Builds every binary it runs (cargo build --workspace --bins; the control plane with Go on first
# use), checks that each component started and stops with the reason as soon as one did not, and
# prints how long each step took.
#
#   hack/demo.sh          run the demo, print the results, stop everything
#   hack/demo.sh --keep   the same, then keep everything running until Ctrl-C (prints how to use it)
#
# The emulator holds 2000 records per entity (DEMO_RECORDS to change it): the initial sync takes
# some twenty seconds or more, and the demo prints the `kubectl carerix status -w` command to follow it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
keep=false; [[ "${1:-}" == "--keep" ]] && keep=true
# shellcheck source=hack/prereqs.sh
source "$here/prereqs.sh"
check_prereqs

run_dir="${DEMO_DIR:-/tmp/carerix-operator-demo}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$here/control-plane.sh" stop "$run_dir/cp" >/dev/null 2>&1 || true
  "$here/postgres.sh" stop "$run_dir/pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

# Each step says what it does and, when the next one starts, how long it took.
demo_started=$(date +%s) step_name="" step_started=0 timings=()
end_step() {
  [[ -n "$step_name" ]] || return 0
  local took=$(( $(date +%s) - step_started ))
  timings+=("$(printf '%4ss  %s' "$took" "$step_name")")
  printf '   (%ss)\n' "$took"
  step_name=""
}
say() { end_step; step_name="$*"; step_started=$(date +%s); printf '\n== %s\n' "$*"; }
fail() { # fail WHAT [LOG]: stop the demo with a message and the end of the log that explains it
  printf '\nFAILED: %s\n' "$1" >&2
  if [[ -n "${2:-}" && -f "$2" ]]; then printf -- '--- last lines of %s\n' "$2" >&2; tail -n 30 "$2" >&2; fi
  exit 1
}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

say "building carerix-operator and carerix-sim (cargo build --workspace --bins)"
cargo build --workspace --bins --quiet || fail "cargo build failed (see above)"
target_root="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')"
target="$target_root/debug"
for bin in carerix-operator carerix-sim; do
  [[ -x "$target/$bin" ]] || fail "cargo build did not produce $target/$bin"
done

say "starting the control plane (kube-apiserver + etcd; built from Go on first use, then cached)"
mkdir -p "$run_dir" && chmod 755 "$run_dir"
cp_env="$("$here/control-plane.sh" start "$run_dir/cp")" \
  || fail "the control plane did not start (the reason is above; hack/build-testbin.sh builds it alone)"
eval "$cp_env"
testbin="$(cat "$run_dir/cp/bin")"
kubectl() { "$testbin/kubectl" "$@"; }

say "starting PostgreSQL"
pg_env="$("$here/postgres.sh" start "$run_dir/pg")" || fail "PostgreSQL did not start (the reason is above)"
eval "$pg_env"
pg_url="$CARERIX_TEST_POSTGRES_URL"

# 2000 records per entity (14000 in all): an initial sync of some twenty seconds, long enough to
# follow with `kubectl carerix status -w`.
demo_records="${DEMO_RECORDS:-2000}"
say "starting the Carerix emulator (tenant acme, client demo-client, webhooks activated, $demo_records records per entity)"
sim_port=$(free_port)
"$target/carerix-sim" --listen "127.0.0.1:$sim_port" --tenant acme --client acme:demo-client:demo-secret \
  --webhooks-activated --records "$demo_records" >"$run_dir/sim.out" 2>"$run_dir/sim.log" &
sim_pid=$!
pids+=("$sim_pid")
sim_url=""
for _ in $(seq 1 100); do
  sim_url="$(sed -n 's/^carerix-sim listening on //p' "$run_dir/sim.out" 2>/dev/null)"
  [[ -n "$sim_url" ]] && break
  kill -0 "$sim_pid" 2>/dev/null || break
  sleep 0.2
done
[[ -n "$sim_url" ]] || fail "the Carerix emulator did not start" "$run_dir/sim.log"
echo "carerix-sim at $sim_url"

say "installing the CRD and starting the operator"
kubectl apply --server-side -f crds/ >/dev/null || fail "the CRD could not be installed"
kubectl wait --for=condition=Established --timeout=60s crd/carerixconnections.hiredata.io >/dev/null \
  || fail "the CRD was not established within 60s"
op_port=$(free_port)
probe_port=$(free_port)
# The emulator speaks plain http on loopback: allow exactly it as the Carerix host.
ALLOWED_CARERIX_HOSTS="http://127.0.0.1:$sim_port" \
  "$target/carerix-operator" run --kubeconfig "$KUBECONFIG" --listen "127.0.0.1:$op_port" \
  --probe-listen "127.0.0.1:$probe_port" --receiver-base-url "http://127.0.0.1:$op_port" >"$run_dir/operator.log" 2>&1 &
op_pid=$!
pids+=("$op_pid")
ready=false
for _ in $(seq 1 150); do
  kill -0 "$op_pid" 2>/dev/null || break
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$probe_port/readyz" || true)" == 200 ]]; then
    ready=true; break
  fi
  sleep 0.2
done
$ready || fail "the operator did not become ready on http://127.0.0.1:$probe_port/readyz" "$run_dir/operator.log"
echo "carerix-operator ready: receiver http://127.0.0.1:$op_port, probes and metrics http://127.0.0.1:$probe_port (log: $run_dir/operator.log)"

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
    # Full records by default (every scalar field and the _id of each to-one relation); a list
    # narrows one entity to the fields named.
    fields:
      vacancies: [jobTitle, vacancyNo, startDate, endDate]
    sink:
      postgres:
        connectionSecretRef: {name: carerix-db, key: url}
YAML

if [[ -x "$target/kubectl-carerix" ]]; then
  echo "follow the initial sync live, in another terminal:"
  echo "  PATH=\"$target:$testbin:\$PATH\" KUBECONFIG=$KUBECONFIG kubectl carerix status acme -n recruiting -w"
fi

say "waiting for Ready (kubectl wait --for=condition=Ready)"
if ! kubectl -n recruiting wait --for=condition=Ready cxc/acme --timeout=180s; then
  kubectl -n recruiting get cxc acme -o yaml
  fail "the connection did not become Ready within 180s" "$run_dir/operator.log"
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
echo "(non-null fields in a stored candidate: $("$psql_bin" "$pg_url" -Atc "select count(*) from jsonb_object_keys((select record from carerix.candidates limit 1))"); in a vacancy: $("$psql_bin" "$pg_url" -Atc "select count(*) from jsonb_object_keys((select record from carerix.vacancies limit 1))"), narrowed by spec.sync.fields)"
if [[ -x "$target/kubectl-carerix" ]]; then
  say "kubectl carerix status (the plugin, plain text when not on a terminal)"
  "$target/kubectl-carerix" status acme -n recruiting
fi

end_step
printf '\n== time per step\n'
printf '%s\n' "${timings[@]}"
printf '%4ss  in all\n' "$(( $(date +%s) - demo_started ))"

if [[ -x "$target/kubectl-carerix" ]]; then
  printf '\n== the kubectl plugin (kubectl-carerix)%s\n' "$($keep || echo ': run hack/demo.sh --keep, then')"
  echo "PATH=\"$target:$testbin:\$PATH\" KUBECONFIG=$KUBECONFIG kubectl carerix --help"
fi

if $keep; then
  printf '\n== running; Ctrl-C stops everything\n'

  echo "export KUBECONFIG=$KUBECONFIG PATH=\"$testbin:\$PATH\"   # the kubectl matching the server"
  echo "kubectl -n recruiting get cxc -w"
  echo "psql '$pg_url'"
  echo "emulator admin API: $sim_url/admin/v1 (see carerix-sim --help)"
  wait
fi
