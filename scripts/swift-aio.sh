#!/usr/bin/env bash
# A single-node OpenStack Swift on 127.0.0.1 for couchvault's tests and benchmarks: proxy,
# account, container and object servers with tempauth and memcached, as plain processes
# (no systemd), installed from Debian's packages when missing. With --keystone, also a
# Keystone v3 (sqlite, fernet) and a second proxy that authenticates through it. With
# --barbican, also OpenStack Barbican (Debian's barbican-api: sqlite, the simple_crypto
# plugin) behind that Keystone, registered in its catalog as the key-manager service.
#
#   scripts/swift-aio.sh start [--keystone] [--barbican]   start what is not running; print the env
#   scripts/swift-aio.sh stop [--purge]       stop exactly the processes it started
#   scripts/swift-aio.sh pid NAME             pid of proxy|object|container|account|memcached|keystone|proxy-ks|barbican
#
# Environment: SWIFT_PORT (18080; backends use +1..+3, memcached +4, the Keystone proxy +5,
# Keystone +6, Barbican +7), SWIFT_SAIO_DIR (/tmp/couchvault-swift-$SWIFT_PORT), SWIFT_MAX_FILE_SIZE
# (bytes; small values force segmenting), SWIFT_TOKEN_LIFE (tempauth token seconds, 86400),
# SWIFT_WAIT_S (60). Writes $SWIFT_SAIO_DIR/env (shell-sourceable) and prints it.
set -euo pipefail

CMD=${1:-start}; shift || true
KEYSTONE=0; BARBICAN=0; PURGE=0; NAME_ARG=""
for a in "$@"; do
  case $a in
    --keystone) KEYSTONE=1 ;;
    --barbican) KEYSTONE=1; BARBICAN=1 ;;
    --purge) PURGE=1 ;;
    *) NAME_ARG=$a ;;
  esac
done

PORT=${SWIFT_PORT:-18080}
OBJ_PORT=$((PORT + 1)); CONT_PORT=$((PORT + 2)); ACCT_PORT=$((PORT + 3)); MC_PORT=$((PORT + 4))
KS_PROXY_PORT=$((PORT + 5)); KS_PORT=$((PORT + 6)); BARBICAN_PORT=$((PORT + 7))
DIR=${SWIFT_SAIO_DIR:-/tmp/couchvault-swift-$PORT}
MAX_FILE_SIZE=${SWIFT_MAX_FILE_SIZE:-5368709122}
TOKEN_LIFE=${SWIFT_TOKEN_LIFE:-86400}
WAIT_S=${SWIFT_WAIT_S:-60}
HOST=127.0.0.1
AUTH_URL="http://$HOST:$PORT/auth/v1.0"
KS_URL="http://$HOST:$KS_PORT/v3"
KS_ADMIN_PASS=couchvault-admin
BARBICAN_URL="http://$HOST:$BARBICAN_PORT"

log() { echo "swift-aio: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { echo "usage: $0 start [--keystone] [--barbican] | stop [--purge] | pid NAME" >&2; exit 2; }

# A pid file holds "PID STARTTIME" so a recycled PID is never taken for ours.
pidfile() { echo "$DIR/run/$1.pid"; }
proc_start() { local st; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; st=${st##*) }; set -- $st; echo "$1 ${20}"; }
is_running() {
  local pf pid start cur; pf=$(pidfile "$1"); [[ -s $pf ]] || return 1
  read -r pid start < "$pf" || true
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cur=$(proc_start "$pid") || return 1
  [[ ${cur%% *} != [ZX] && ${cur#* } == "$start" ]]
}
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

stop_one() {
  local pf pid start; pf=$(pidfile "$1")
  if is_running "$1"; then
    read -r pid start < "$pf"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do is_running "$1" || break; sleep 0.1; done
    if is_running "$1"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pf"
}

case $CMD in
  stop)
    for n in barbican proxy-ks keystone proxy object container account memcached; do stop_one "$n"; done
    for p in $PORT $OBJ_PORT $CONT_PORT $ACCT_PORT $MC_PORT $KS_PROXY_PORT $KS_PORT $BARBICAN_PORT; do
      for _ in $(seq 50); do port_busy "$p" || break; sleep 0.1; done
    done
    log "stopped (state in $DIR)"
    if [[ $PURGE == 1 ]]; then rm -rf -- "$DIR"; log "removed $DIR"; fi
    exit 0 ;;
  pid)
    [[ -n $NAME_ARG ]] || usage
    is_running "$NAME_ARG" || exit 1
    read -r pid _ < "$(pidfile "$NAME_ARG")"; echo "$pid"; exit 0 ;;
  start) ;;
  *) usage ;;
esac

# ------------------------------------------------------------------ install
apt_install() {
  [[ $(id -u) -eq 0 ]] || die "missing packages ($*) and not root"
  local made=0 rc=0 opts=(-y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)
  # Keep package scripts from starting system services.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install "${opts[@]}" "$@" >> /tmp/couchvault-swift-apt.log 2>&1; then
    apt-get update -q >> /tmp/couchvault-swift-apt.log 2>&1 || true
    apt-get install "${opts[@]}" "$@" >> /tmp/couchvault-swift-apt.log 2>&1 || rc=$?
  fi
  if [[ $made == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
  return $rc
}
pkgs=()
for b in proxy object container account; do
  [[ -x /usr/bin/swift-$b-server ]] || { pkgs+=(swift swift-proxy swift-account swift-container swift-object); break; }
done
command -v memcached > /dev/null || pkgs+=(memcached)
command -v curl > /dev/null || pkgs+=(curl)
if [[ $KEYSTONE == 1 ]]; then
  command -v keystone-manage > /dev/null || pkgs+=(python3-keystone)
  /usr/bin/python3 -c 'import keystonemiddleware' 2> /dev/null || pkgs+=(python3-keystonemiddleware)
fi
if [[ $BARBICAN == 1 ]]; then
  /usr/bin/python3 -c 'import barbican.api.app' 2> /dev/null || pkgs+=(barbican-api)
fi
if (( ${#pkgs[@]} )); then
  log "installing Debian packages: ${pkgs[*]}"
  apt_install "${pkgs[@]}" || die "apt-get install failed (log /tmp/couchvault-swift-apt.log)"
fi

mkdir -p "$DIR"/{etc,run,log,cache,srv/node/d1,keystone,barbican/home/.barbican}
exec 9> "$DIR/.lock"; flock -w 600 9 || die "timed out waiting for $DIR/.lock"
t0=$SECONDS
RUN_USER=$(id -un)
conf_sum() { { cat "$DIR"/etc/*.conf /etc/swift/swift.conf 2> /dev/null || true; } | md5sum; }
CONF_SUM_BEFORE=$(conf_sum)

# ------------------------------------------------------------------ config
# Every Swift server reads the fixed path /etc/swift/swift.conf.
mkdir -p /etc/swift
cat > /etc/swift/swift.conf << CONF
# written by couchvault scripts/swift-aio.sh (test all-in-one)
[swift-hash]
swift_hash_path_suffix = couchvault-test-suffix
swift_hash_path_prefix = couchvault-test-prefix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
max_file_size = $MAX_FILE_SIZE
CONF

server_conf() {  # NAME PORT EXTRA
  cat << CONF
[DEFAULT]
bind_ip = $HOST
bind_port = $2
workers = 0
user = $RUN_USER
swift_dir = $DIR/etc
devices = $DIR/srv/node
mount_check = false
disable_fallocate = true
log_name = $1-server
log_address = $DIR/log/no-syslog
log_udp_host = $HOST
recon_cache_path = $DIR/cache

[pipeline:main]
pipeline = $1-server

[app:$1-server]
use = egg:swift#$1
$3
CONF
}
server_conf account $ACCT_PORT "" > "$DIR/etc/account-server.conf"
server_conf container $CONT_PORT "" > "$DIR/etc/container-server.conf"
# 1 MiB I/O chunks: less Python per byte than the 64 KiB default.
server_conf object $OBJ_PORT "disk_chunk_size = 1048576
network_chunk_size = 1048576" > "$DIR/etc/object-server.conf"

proxy_conf() {  # PORT AUTH-FILTERS AUTH-SECTIONS
  cat << CONF
[DEFAULT]
bind_ip = $HOST
bind_port = $1
workers = 0
user = $RUN_USER
swift_dir = $DIR/etc
log_name = proxy-server
log_address = $DIR/log/no-syslog
log_udp_host = $HOST

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl $2 copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
node_timeout = 3
conn_timeout = 0.5
recoverable_node_timeout = 3
object_chunk_size = 1048576
client_chunk_size = 1048576
# One node per ring: never shun a restarted backend for 60 s.
error_suppression_interval = 0

$3

[filter:cache]
use = egg:swift#memcache
memcache_servers = $HOST:$MC_PORT
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
# Tests use small segments: no 1-segment-per-second slowdown after the 10th.
[filter:slo]
use = egg:swift#slo
rate_limit_segments_per_sec = 0
[filter:dlo]
use = egg:swift#dlo
rate_limit_segments_per_sec = 0
CONF
}
proxy_conf $PORT tempauth "[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin
user_test_reader = reading
token_life = $TOKEN_LIFE" > "$DIR/etc/proxy-server.conf"
# How a service (the Keystone proxy, Barbican) checks tokens: as Keystone's admin.
authtoken_conf() {
  cat << CONF
www_authenticate_uri = $KS_URL
auth_url = $KS_URL
auth_type = password
project_domain_id = default
user_domain_id = default
project_name = admin
username = admin
password = $KS_ADMIN_PASS
memcached_servers = $HOST:$MC_PORT
CONF
}
if [[ $KEYSTONE == 1 ]]; then
  proxy_conf $KS_PROXY_PORT "authtoken keystoneauth" "[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
$(authtoken_conf)
delay_auth_decision = True

[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member" > "$DIR/etc/proxy-ks.conf"
fi
CONF_CHANGED=0
[[ "$(conf_sum)" == "$CONF_SUM_BEFORE" ]] || CONF_CHANGED=1

# ------------------------------------------------------------------ rings: 1 replica, 1 device
if [[ ! -f $DIR/etc/object.ring.gz ]]; then
  log "building rings"
  /usr/bin/python3 - "$DIR/etc" "$HOST" "$OBJ_PORT" "$CONT_PORT" "$ACCT_PORT" << 'PY'
import os, sys
from swift.common.ring import RingBuilder
etc, host, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, port in zip(("object", "container", "account"), ports):
    b = RingBuilder(6, 1, 0)
    b.add_dev({"region": 1, "zone": 1, "ip": host, "port": int(port), "replication_ip": host,
               "replication_port": int(port), "device": "d1", "weight": 1.0, "meta": ""})
    b.rebalance()
    b.get_ring().save(os.path.join(etc, name + ".ring.gz"))
PY
fi

# ------------------------------------------------------------------ start
set +m
start_one() {  # NAME PORT CMD...
  local name=$1 port=$2; shift 2
  if is_running "$name"; then
    if [[ $CONF_CHANGED == 0 || $name == memcached ]]; then return 0; fi
    stop_one "$name"
  fi
  for _ in $(seq 50); do port_busy "$port" || break; sleep 0.1; done
  if port_busy "$port"; then die "port $HOST:$port is taken by another process (set SWIFT_PORT)"; fi
  setsid "$@" >> "$DIR/log/$name.log" 2>&1 < /dev/null 9>&- &
  local pid=$! cur; cur=$(proc_start $pid) || die "$name died at once (log $DIR/log/$name.log)"
  echo "$pid ${cur#* }" > "$(pidfile "$name")"
}
MC_USER=(); if [[ $(id -u) -eq 0 ]]; then MC_USER=(-u nobody); fi
start_one memcached $MC_PORT memcached -l $HOST -p $MC_PORT -U 0 -m 64 "${MC_USER[@]}"
start_one account $ACCT_PORT /usr/bin/swift-account-server "$DIR/etc/account-server.conf" -v
start_one container $CONT_PORT /usr/bin/swift-container-server "$DIR/etc/container-server.conf" -v
start_one object $OBJ_PORT /usr/bin/swift-object-server "$DIR/etc/object-server.conf" -v
start_one proxy $PORT /usr/bin/swift-proxy-server "$DIR/etc/proxy-server.conf" -v

hdr() { printf '%s' "$1" | tr -d '\r' | awk -F': ' -v h="$2" 'tolower($1)==h{print $2}'; }
auth() { curl -s -m 5 -D - -o /dev/null -H "X-Auth-User: $1" -H "X-Auth-Key: $2" "$AUTH_URL" 2> /dev/null || true; }
# Ready when every server runs and a real PUT works through the tempauth proxy.
deadline=$((SECONDS + WAIT_S))
while :; do
  for n in memcached account container object proxy; do
    is_running $n || { tail -20 "$DIR/log/$n.log" >&2 || true; die "$n exited (log $DIR/log/$n.log)"; }
  done
  h=$(auth admin:admin admin); token=$(hdr "$h" x-auth-token); url=$(hdr "$h" x-storage-url)
  if [[ -n $token && -n $url ]] \
    && [[ $(curl -s -m 10 -o /dev/null -w '%{http_code}' -X PUT -H "X-Auth-Token: $token" "$url/ready") =~ ^20[12]$ ]] \
    && [[ $(curl -s -m 10 -o /dev/null -w '%{http_code}' -X PUT -H "X-Auth-Token: $token" --data-binary ok "$url/ready/probe") == 201 ]]; then
    break
  fi
  (( SECONDS < deadline )) || die "Swift not ready after ${WAIT_S}s (logs in $DIR/log)"
  sleep 0.2
done
STORAGE_URL=$(hdr "$(auth test:tester testing)" x-storage-url)

# ------------------------------------------------------------------ keystone
if [[ $KEYSTONE == 1 ]]; then
  KS_CONF="$DIR/keystone/keystone.conf"
  if [[ ! -f $DIR/keystone/bootstrapped ]]; then
    log "setting up Keystone (sqlite, fernet)"
    rm -rf "$DIR/keystone"; mkdir -p "$DIR/keystone"/{fernet-keys,credential-keys}
    cat > "$KS_CONF" << CONF
[DEFAULT]
log_file = $DIR/log/keystone-manage.log
[database]
connection = sqlite:///$DIR/keystone/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = $DIR/keystone/fernet-keys
[fernet_receipts]
key_repository = $DIR/keystone/fernet-keys
[credential]
key_repository = $DIR/keystone/credential-keys
CONF
    km() { keystone-manage --config-file "$KS_CONF" "$@" >> "$DIR/log/keystone-manage.log" 2>&1 || die "keystone-manage $1 failed (log $DIR/log/keystone-manage.log)"; }
    km db_sync
    km fernet_setup --keystone-user "$RUN_USER" --keystone-group "$(id -gn)"
    km credential_setup --keystone-user "$RUN_USER" --keystone-group "$(id -gn)"
    km bootstrap --bootstrap-password "$KS_ADMIN_PASS" --bootstrap-admin-url "$KS_URL" \
      --bootstrap-public-url "$KS_URL" --bootstrap-internal-url "$KS_URL" --bootstrap-region-id RegionOne
    # Write-ahead logging: readers no longer block Keystone's writes ("database is locked").
    /usr/bin/python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL")' "$DIR/keystone/keystone.db"
  fi
  start_one keystone $KS_PORT env OS_KEYSTONE_CONFIG_FILES="$KS_CONF" keystone-wsgi-public --host $HOST --port $KS_PORT
  start_one proxy-ks $KS_PROXY_PORT /usr/bin/swift-proxy-server "$DIR/etc/proxy-ks.conf" -v
  SWIFT_ENDPOINT=""; BARBICAN_ENDPOINT=""
  [[ -f $DIR/keystone/bootstrapped ]] || SWIFT_ENDPOINT="http://$HOST:$KS_PROXY_PORT/v1/AUTH_\$(project_id)s"
  [[ $BARBICAN == 0 || -f $DIR/keystone/barbican-registered ]] || BARBICAN_ENDPOINT=$BARBICAN_URL
  if [[ -n $SWIFT_ENDPOINT$BARBICAN_ENDPOINT ]]; then
    # Swift: the object-store service and endpoint, project "test", user "tester" with role
    # member. Barbican: the key-manager service and endpoint, and a second project "other"
    # with user "other" (member) whose token must not open project test's secrets.
    /usr/bin/python3 - "$KS_URL" "$KS_ADMIN_PASS" "$WAIT_S" "$SWIFT_ENDPOINT" "$BARBICAN_ENDPOINT" << 'PY' || die "Keystone setup failed (log $DIR/log/keystone.log)"
import json, sys, time, urllib.request, urllib.error
url, password, wait, swift, barbican = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    # Keystone on sqlite answers 500 ("database is locked") now and then: try again.
    for attempt in range(20):
        req = urllib.request.Request(url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.headers, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code != 500 or attempt == 19:
                raise
            time.sleep(1)
deadline = time.time() + wait
while True:
    try:
        h, _ = call("POST", "/auth/tokens", {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        break
    except (urllib.error.URLError, ConnectionError, OSError):
        if time.time() > deadline:
            raise
        time.sleep(0.5)
tok = h["X-Subject-Token"]
_, roles = call("GET", "/roles?name=member", None, tok)
member = roles["roles"][0]["id"]
def service(kind, name, endpoint):
    _, s = call("POST", "/services", {"service": {"type": kind, "name": name}}, tok)
    call("POST", "/endpoints", {"endpoint": {"service_id": s["service"]["id"], "interface": "public",
         "region_id": "RegionOne", "url": endpoint}}, tok)
def member_of(project, user, user_password):
    _, p = call("POST", "/projects", {"project": {"name": project, "domain_id": "default"}}, tok)
    _, u = call("POST", "/users", {"user": {"name": user, "domain_id": "default", "password": user_password}}, tok)
    call("PUT", "/projects/%s/users/%s/roles/%s" % (p["project"]["id"], u["user"]["id"], member), None, tok)
if swift:
    service("object-store", "swift", swift)
    member_of("test", "tester", "testing")
if barbican:
    service("key-manager", "barbican", barbican)
    member_of("other", "other", "other-pass")
PY
    [[ -z $SWIFT_ENDPOINT ]] || touch "$DIR/keystone/bootstrapped"
    [[ -z $BARBICAN_ENDPOINT ]] || touch "$DIR/keystone/barbican-registered"
  fi
  # Ready when the test user's token works through the Keystone proxy.
  deadline=$((SECONDS + WAIT_S))
  until /usr/bin/python3 - "$KS_URL" << 'PY' 2> /dev/null
import json, sys, urllib.request
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "tester",
        "domain": {"name": "Default"}, "password": "testing"}}},
        "scope": {"project": {"name": "test", "domain": {"name": "Default"}}}}}
req = urllib.request.Request(sys.argv[1] + "/auth/tokens", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    tok = r.headers["X-Subject-Token"]
    cat = json.loads(r.read())["token"]["catalog"]
url = [e["url"] for s in cat if s["type"] == "object-store" for e in s["endpoints"] if e["interface"] == "public"][0]
urllib.request.urlopen(urllib.request.Request(url + "/ready-ks", method="PUT", headers={"X-Auth-Token": tok}), timeout=10)
PY
  do
    for n in keystone proxy-ks; do is_running $n || die "$n exited (log $DIR/log/$n.log)"; done
    (( SECONDS < deadline )) || die "Keystone proxy not ready after ${WAIT_S}s (logs in $DIR/log)"
    sleep 0.5
  done
fi

# ------------------------------------------------------------------ barbican
if [[ $BARBICAN == 1 ]]; then
  B="$DIR/barbican"
  # The simple_crypto plugin's master key: made once per state directory.
  [[ -s $B/kek ]] || /usr/bin/python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$B/kek"
  # oslo.config finds ~/.barbican/barbican.conf before /etc/barbican/barbican.conf.
  cat > "$B/home/.barbican/barbican.conf" << CONF
[DEFAULT]
sql_connection = sqlite:///$B/barbican.db
db_auto_create = True
host_href = $BARBICAN_URL
log_file = $DIR/log/barbican-app.log
[keystone_authtoken]
$(authtoken_conf)
[keystone_notifications]
enable = False
[oslo_policy]
enforce_new_defaults = True
enforce_scope = True
[secretstore]
enabled_secretstore_plugins = store_crypto
[crypto]
enabled_crypto_plugins = simple_crypto
[simple_crypto_plugin]
kek = $(cat "$B/kek")
CONF
  cat > "$B/api-paste.ini" << 'CONF'
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican_api
[pipeline:barbican_version]
pipeline = microversion versionapp
[pipeline:barbican_api]
pipeline = authtoken context microversion apiapp
[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app
[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app
[filter:context]
paste.filter_factory = barbican.api.middleware.context:ContextMiddleware.factory
[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
CONF
  start_one barbican $BARBICAN_PORT env HOME="$B/home" /usr/bin/python3 -c '
import sys
from paste import deploy, httpserver
httpserver.serve(deploy.loadapp("config:" + sys.argv[1]), host=sys.argv[2], port=sys.argv[3])
' "$B/api-paste.ini" $HOST $BARBICAN_PORT
  # Ready when the test user can list project test's secrets.
  deadline=$((SECONDS + WAIT_S))
  until /usr/bin/python3 - "$KS_URL" "$BARBICAN_URL" << 'PY' 2> /dev/null
import json, sys, urllib.request
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "tester",
        "domain": {"name": "Default"}, "password": "testing"}}},
        "scope": {"project": {"name": "test", "domain": {"name": "Default"}}}}}
req = urllib.request.Request(sys.argv[1] + "/auth/tokens", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    tok = r.headers["X-Subject-Token"]
urllib.request.urlopen(urllib.request.Request(sys.argv[2] + "/v1/secrets", headers={"X-Auth-Token": tok}), timeout=10)
PY
  do
    is_running barbican || { tail -20 "$DIR/log/barbican.log" >&2 || true; die "barbican exited (log $DIR/log/barbican.log)"; }
    (( SECONDS < deadline )) || die "Barbican not ready after ${WAIT_S}s (logs in $DIR/log)"
    sleep 0.5
  done
fi
log "ready after $((SECONDS - t0)) s (state in $DIR)"

{
  echo "SWIFT_AUTH_URL=$AUTH_URL"
  echo "SWIFT_USER=test:tester"
  echo "SWIFT_KEY=testing"
  echo "SWIFT_USER2=test2:tester2"
  echo "SWIFT_KEY2=testing2"
  echo "SWIFT_STORAGE_URL=$STORAGE_URL"
  echo "SWIFT_SAIO_DIR=$DIR"
  echo "SWIFT_PORT=$PORT"
  echo "SWIFT_MAX_FILE_SIZE=$MAX_FILE_SIZE"
  echo "SWIFT_TOKEN_LIFE=$TOKEN_LIFE"
  if [[ $KEYSTONE == 1 ]]; then
    echo "KEYSTONE_AUTH_URL=$KS_URL"
    echo "KEYSTONE_USERNAME=tester"
    echo "KEYSTONE_PASSWORD=testing"
    echo "KEYSTONE_PROJECT=test"
  fi
  if [[ $BARBICAN == 1 ]]; then
    echo "BARBICAN_URL=$BARBICAN_URL"
    echo "BARBICAN_OTHER_USERNAME=other"
    echo "BARBICAN_OTHER_PASSWORD=other-pass"
    echo "BARBICAN_OTHER_PROJECT=other"
  fi
} > "$DIR/env.tmp"
mv "$DIR/env.tmp" "$DIR/env"   # readers never see half a file
cat "$DIR/env"
