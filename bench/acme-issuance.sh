#!/usr/bin/env bash
# Issuance time on one local Pebble: tlsgate vs certbot vs lego (Debian packages), HTTP-01,
# `localhost`, no validation sleep, no authz reuse, no nonce rejection. Five runs each after an
# untimed first run that registers the account. Prints seconds per issuance.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in pebble certbot lego; do
  command -v "$tool" >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq pebble certbot lego; break; }
done
cargo build --release --quiet
tlsgate="$PWD/target/release/tlsgate"
work=$(mktemp -d)
trap 'kill "$pebble_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$tlsgate" cert ca init --out ca >/dev/null
"$tlsgate" cert ca issue localhost 127.0.0.1 --ca ca >/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir_port=$(port); mgmt_port=$(port); http_port=$(port); tls_port=$(port)
cat > pebble.json <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$dir_port", "managementListenAddress": "127.0.0.1:$mgmt_port",
 "certificate": "$work/localhost.crt", "privateKey": "$work/localhost.key", "httpPort": $http_port,
 "tlsPort": $tls_port, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
( PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 exec pebble -config pebble.json -strict=false >pebble.log 2>&1 ) &
pebble_pid=$!
sleep 1
directory="https://127.0.0.1:$dir_port/dir"
export REQUESTS_CA_BUNDLE="$work/ca/ca.crt" LEGO_CA_CERTIFICATES="$work/ca/ca.crt"
cat > tg.yaml <<YAML
data_dir: data
listen: 127.0.0.1:$tls_port
http:
  listen: 127.0.0.1:$http_port
acme:
  directory: $directory
  ca_root: $work/ca/ca.crt
  agree_tos: true
tls:
  certificates:
    - acme:
        names: [localhost]
YAML
time_runs() { local name=$1; shift; "$@" >/dev/null 2>&1; printf '%-8s' "$name"; for _ in 1 2 3 4 5; do
  if /usr/bin/time -f '%e' -o t.txt "$@" >run.log 2>&1; then printf ' %s' "$(tail -1 t.txt)";
  else printf ' failed(%s)' "$(tail -1 t.txt)"; fi; done; echo ' s'; }
time_runs tlsgate "$tlsgate" acme renew --force -c tg.yaml
time_runs certbot certbot certonly --standalone --http-01-port "$http_port" --http-01-address 127.0.0.1 \
  --server "$directory" -d localhost --agree-tos -m ops@example.com --non-interactive --force-renewal \
  --config-dir cb/conf --work-dir cb/work --logs-dir cb/logs
time_runs lego lego --server "$directory" --email ops@example.com --domains localhost --http \
  --http.port "127.0.0.1:$http_port" --accept-tos --path lg run
