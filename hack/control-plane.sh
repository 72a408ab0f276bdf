#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver, RBAC on) on loopback, for tests and the demo.
#
#   hack/control-plane.sh start [DIR] [--watch-pid PID]   start; prints `export KUBECONFIG=DIR/kubeconfig`
#   hack/control-plane.sh stop  [DIR]                     stop the processes started in DIR and remove DIR
#   hack/control-plane.sh restart-apiserver [DIR]         restart kube-apiserver alone (etcd and its data stay)
#   hack/control-plane.sh user  [DIR] NAME [GROUP]        write DIR/NAME.kubeconfig for a client-cert user
#
# DIR defaults to $CONTROL_PLANE_DIR or /tmp/carerix-operator-cp. With --watch-pid, a watcher stops
# the control plane when that process exits (so a test binary that panics leaves nothing running).
# Binaries come from hack/build-testbin.sh (built once, then cached outside the source tree).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:-}"; shift || true
DIR="${CONTROL_PLANE_DIR:-/tmp/carerix-operator-cp}"
if [[ $# -gt 0 && "$1" != --* ]]; then DIR="$1"; shift; fi
log() { printf '[control-plane] %s\n' "$*" >&2; }

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

issue_client_cert() { # issue_client_cert NAME GROUP
  local name=$1 group=$2 pki="$DIR/pki"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$name.key" 2>/dev/null
  local subj="/CN=$name"; [[ -n "$group" ]] && subj="/O=$group/CN=$name"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$pki/cli.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 7 \
    -extfile "$pki/cli.ext" -out "$pki/$name.crt" 2>/dev/null
}

write_kubeconfig() { # write_kubeconfig FILE USER
  local file=$1 user=$2 port; port=$(cat "$DIR/port")
  cat > "$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: carerix-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $DIR/pki/$user.crt
    client-key: $DIR/pki/$user.key
contexts:
- name: carerix-test
  context: {cluster: carerix-test, user: $user, namespace: default}
current-context: carerix-test
KCFG
}

running() { [[ -f "$DIR/kube-apiserver.pid" ]] && kill -0 "$(cat "$DIR/kube-apiserver.pid")" 2>/dev/null; }

ready() {
  local port; port=$(cat "$DIR/port" 2>/dev/null) || return 1
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" \
        --key "$DIR/pki/admin.key" "https://127.0.0.1:$port/readyz" || true)" == 200 ]]
}

stop() {
  for p in kube-apiserver etcd; do
    if [[ -f "$DIR/$p.pid" ]]; then
      local pid; pid=$(cat "$DIR/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  [[ -f "$DIR/watcher.pid" ]] && kill "$(cat "$DIR/watcher.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}

launch_apiserver() { # kube-apiserver on the port and etcd recorded in DIR, in the background
  local bin port etcd_port pki="$DIR/pki"
  bin=$(cat "$DIR/bin"); port=$(cat "$DIR/port"); etcd_port=$(cat "$DIR/etcd-port")
  "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
    --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-issuer="https://127.0.0.1:$port/" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    >>"$DIR/kube-apiserver.log" 2>&1 &
  echo $! > "$DIR/kube-apiserver.pid"
}

wait_ready() {
  for _ in $(seq 1 240); do ready && break; running || break; sleep 0.5; done
  if ! ready; then
    log "kube-apiserver did not become ready; last lines of $DIR/kube-apiserver.log:"
    tail -30 "$DIR/kube-apiserver.log" >&2
    exit 1
  fi
}

# Stops kube-apiserver and starts it again on the same port with the same etcd (the data stays):
# what a control-plane upgrade or a crashed API server looks like to the operator.
restart_apiserver() {
  [[ -f "$DIR/kube-apiserver.pid" ]] || { log "no kube-apiserver started in $DIR"; exit 1; }
  local pid; pid=$(cat "$DIR/kube-apiserver.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  launch_apiserver
  wait_ready
  log "kube-apiserver restarted on https://127.0.0.1:$(cat "$DIR/port")"
}

start() {
  local watch_pid=""
  while [[ $# -gt 0 ]]; do case "$1" in --watch-pid) watch_pid=$2; shift 2;; *) log "unknown flag $1"; exit 2;; esac; done
  if running && ready; then
    log "already running in $DIR"
    echo "export KUBECONFIG=$DIR/kubeconfig"; return
  fi
  [[ -d "$DIR" ]] && stop
  local bin; bin="$("$here/build-testbin.sh" etcd kube-apiserver kubectl | tail -n 1)"
  mkdir -p "$DIR/pki" "$DIR/etcd"
  local etcd_port peer_port port
  etcd_port=$(free_port); peer_port=$(free_port); port=$(free_port)
  echo "$port" > "$DIR/port"; echo "$bin" > "$DIR/bin"; echo "$etcd_port" > "$DIR/etcd-port"

  local pki="$DIR/pki"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -days 7 -subj "/CN=carerix-operator-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$pki/ca.crt" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/apiserver.key" 2>/dev/null
  openssl req -new -key "$pki/apiserver.key" -subj "/CN=kube-apiserver" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$pki/srv.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 7 \
    -extfile "$pki/srv.ext" -out "$pki/apiserver.crt" 2>/dev/null
  issue_client_cert admin system:masters
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

  "$bin/etcd" --name default --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true \
    >"$DIR/etcd.log" 2>&1 &
  echo $! > "$DIR/etcd.pid"
  for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null && break; sleep 0.2; done

  launch_apiserver
  write_kubeconfig "$DIR/kubeconfig" admin

  wait_ready
  if [[ -n "$watch_pid" ]]; then
    ( trap '' HUP; while kill -0 "$watch_pid" 2>/dev/null; do sleep 1; done; CONTROL_PLANE_DIR="$DIR" "$here/control-plane.sh" stop "$DIR" ) \
      </dev/null >/dev/null 2>&1 &
    echo $! > "$DIR/watcher.pid"
  fi
  log "ready: kube-apiserver $("$bin/kube-apiserver" --version | awk '{print $2}') on https://127.0.0.1:$port (logs in $DIR)"
  echo "export KUBECONFIG=$DIR/kubeconfig"
}

case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  restart-apiserver) restart_apiserver ;;
  user)
    name=${1:?usage: control-plane.sh user [DIR] NAME [GROUP]}; group=${2:-}
    issue_client_cert "$name" "$group"; write_kubeconfig "$DIR/$name.kubeconfig" "$name"
    echo "$DIR/$name.kubeconfig" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
