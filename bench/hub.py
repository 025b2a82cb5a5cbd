#!/usr/bin/env python3
"""tlsgate's WebSocket hub against the publish/subscribe servers the seed teams run, in one run.

Peers, each serving wss:// with the same ECDSA P-256 certificate as bench/run.py, one process
pinned to core 0 (load on core 1):
- fastapi: the seed 000/002 pattern, FastAPI on uvicorn (websockets) with its ConnectionManager;
- django: the seed 004 pattern, Django Channels + channels_redis on daphne;
- socketio: Node socket.io with @socket.io/redis-adapter;
- tlsgate: the hub built into tlsgate (src/hub), when the binary has one.
Django and socket.io share one redis-server the bench starts on a loopback port, also pinned to
core 0; its CPU is reported beside theirs.

Rows: resident memory per idle subscribed connection; deliveries per CPU-second of the hub
process, one channel x S subscribers and 1,000 channels x 10 subscribers, at saturation;
publish-to-delivery p50/p99 at a fixed publication rate; connection set-up (TLS + upgrade with
an HS256 JWT in ?token= + subscription acknowledged) per second and CPU per set-up. Peers are
interleaved round by round; the markdown report and a .json go to bench/results/hub-*.md.

Usage: bench/hub.py [--quick] [--rounds N] [--seconds S] [--only fastapi,django,socketio,tlsgate]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: build, certificates, process helpers)
from run import LOAD_CORE, PROXY_CORE, cpu_split, log, raise_fd_limit, rss_kib  # noqa: E402

ROOT = bench.ROOT
HUB_DIR = os.path.join(ROOT, "bench", "hub")
VENV = os.path.join(os.path.expanduser("~"), ".cache", "tlsgate-bench", "hub-venv")
REQUIREMENTS = os.path.join(HUB_DIR, "requirements.txt")
SOCKETIO_DIR = os.path.join(HUB_DIR, "socketio_hub")
PEERS = ("fastapi", "django", "socketio", "tlsgate")
PORTS = {"fastapi": 19460, "django": 19461, "socketio": 19462, "tlsgate": 19463}
TLSGATE_ADMIN = 19464
REDIS_PORT = 19465
REDIS_PEERS = ("django", "socketio")
JWT_SECRET = bench.JWT_SECRET
CHANNELS = 1000


def peer_paths(peer, token=None):
    """The WebSocket path a subscriber opens, and the load client's protocol."""
    if peer == "socketio":
        path = "/socket.io/?EIO=4&transport=websocket"
        return (path + f"&token={token}" if token else path), "socketio"
    if peer == "tlsgate":
        # The authenticated endpoint only for the set-up row; the others use an open one.
        return (f"/ws?token={token}" if token else "/open"), "json"
    return (f"/ws?token={token}" if token else "/ws"), "json"


def publish_url(peer):
    if peer == "tlsgate":
        return f"http://127.0.0.1:{TLSGATE_ADMIN}/hub/publish"
    return f"https://127.0.0.1:{PORTS[peer]}/publish"


def apt_install(packages):
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], capture_output=True, env=env)
    return subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + packages, capture_output=True,
                          text=True, env=env)


def install_peers(wanted, errors):
    """Installs what the peers need; returns the peers that can run (each left out is logged
    with its reason in `errors`)."""
    ready = []
    if any(p in wanted for p in REDIS_PEERS) and shutil.which("redis-server") is None:
        log("installing: redis-server (apt)")
        apt_install(["redis-server"])
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["service", "redis-server", "stop"], capture_output=True)
    have_redis = shutil.which("redis-server") is not None
    python_error = None
    if {"fastapi", "django"} & set(wanted):
        python_error = install_venv()
    for peer in wanted:
        reason = None
        if peer in REDIS_PEERS and not have_redis:
            reason = "redis-server could not be installed"
        elif peer in ("fastapi", "django") and python_error:
            reason = python_error
        elif peer == "socketio":
            reason = install_socketio()
        if reason:
            errors.append(f"{peer} left out: {reason}")
            log(f"{peer} left out: {reason}")
        else:
            ready.append(peer)
    return ready


def install_venv():
    """The pinned Python peers in their own venv, rebuilt when requirements.txt changes; None
    when ready, else why not."""
    with open(REQUIREMENTS, "rb") as pinned:
        digest = hashlib.sha256(pinned.read()).hexdigest()
    marker = os.path.join(VENV, ".requirements-sha256")
    if os.path.exists(marker) and open(marker).read().strip() == digest:
        return None
    log(f"installing: bench/hub/requirements.txt into {VENV}")
    if subprocess.run([sys.executable, "-m", "venv", "--help"], capture_output=True).returncode != 0 or \
            subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        apt_install([f"python3.{sys.version_info.minor}-venv", "python3-venv"])
    shutil.rmtree(VENV, ignore_errors=True)
    made = subprocess.run([sys.executable, "-m", "venv", VENV], capture_output=True, text=True)
    if made.returncode != 0:
        return f"python venv: {made.stderr.strip()[-300:]}"
    pip = subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                          "-r", REQUIREMENTS], capture_output=True, text=True)
    if pip.returncode != 0:
        return f"pip install -r bench/hub/requirements.txt: {pip.stderr.strip()[-300:]}"
    with open(marker, "w") as out:
        out.write(digest)
    return None


def install_socketio():
    if shutil.which("node") is None or shutil.which("npm") is None:
        log("installing: nodejs npm (apt)")
        apt_install(["nodejs", "npm"])
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm could not be installed"
    modules = os.path.join(SOCKETIO_DIR, "node_modules")
    stamp = os.path.join(modules, ".package-lock.json")
    lock = os.path.join(SOCKETIO_DIR, "package-lock.json")
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(lock):
        return None
    log("installing: bench/hub/socketio_hub (npm ci)")
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=SOCKETIO_DIR,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return f"npm ci: {result.stderr.strip()[-300:]}"
    return None


def read_line(proc, timeout):
    """One line of a child's stdout within `timeout` seconds, or None."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return proc.stdout.readline() or None


def redis_command(*words):
    """One command to the bench's redis-server (RESP), answer ignored but for errors."""
    payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=10) as conn:
        conn.sendall(payload.encode())
        answer = conn.recv(4096)
    if answer.startswith(b"-"):
        raise RuntimeError(f"redis {words[0]}: {answer.decode(errors='replace').strip()}")


class HubRun(bench.Run):
    def __init__(self, args, work, tlsgate, loadgen):
        super().__init__(args, work, tlsgate, loadgen)
        self.python = os.path.join(VENV, "bin", "python")

    def pause(self, seconds):
        """Settling time between measurements (GC, closing sockets); short in --quick."""
        time.sleep(seconds * (0.2 if self.args.quick else 1))

    def start_redis(self):
        # Persistence off: a publish/subscribe bus, and disk writes would only add noise.
        return self.start("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                                    "--maxclients", "20000", "--loglevel", "warning"])

    def peer_env(self):
        return dict(os.environ, HUB_JWT_SECRET=JWT_SECRET, HUB_REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}",
                    HUB_CERT=self.cert, HUB_KEY=self.key)

    def start_fastapi(self):
        return self.start("fastapi", [self.python, "-m", "uvicorn", "fastapi_hub:app", "--app-dir", HUB_DIR,
                                      "--host", "127.0.0.1", "--port", str(PORTS["fastapi"]), "--workers", "1",
                                      "--ws", "websockets", "--ssl-keyfile", self.key, "--ssl-certfile", self.cert,
                                      "--backlog", "4096", "--log-level", "warning", "--no-access-log"],
                          env=self.peer_env())

    def start_django(self):
        env = dict(self.peer_env(), PYTHONPATH=os.path.join(HUB_DIR, "django_hub"),
                   DJANGO_SETTINGS_MODULE="hubproject.settings")
        endpoint = (f"ssl:{PORTS['django']}:privateKey={self.key}:certKey={self.cert}:interface=127.0.0.1"
                    ":backlog=4096")
        return self.start("django", [os.path.join(VENV, "bin", "daphne"), "-v", "0", "-e", endpoint,
                                     "hubproject.asgi:application"], env=env)

    def start_socketio(self):
        env = dict(self.peer_env(), HUB_PORT=str(PORTS["socketio"]), NODE_ENV="production")
        return self.start("socketio", ["node", os.path.join(SOCKETIO_DIR, "server.js")], env=env)

    def tlsgate_config(self):
        return f"""
listen: 127.0.0.1:{PORTS['tlsgate']}
data_dir: {self.work}/tlsgate-data
http: off
admin: {{listen: 127.0.0.1:{TLSGATE_ADMIN}}}
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
hub:
  endpoints:
    - path: /ws
      auth: {{jwt: bench, sources: ["query:token"]}}
    - path: /open
  namespaces:
    bench: {{client_subscribe: true}}
"""

    def start_tlsgate(self):
        path = self.write("tlsgate-hub.yaml", self.tlsgate_config())
        env = dict(os.environ, TLSGATE_LOG="error")
        return self.start("tlsgate", [self.tlsgate, "serve", "-c", path], env=env)

    def tlsgate_has_hub(self):
        """None when this tlsgate binary takes the hub configuration, else why not."""
        path = self.write("tlsgate-hub-check.yaml", self.tlsgate_config())
        result = subprocess.run([self.tlsgate, "config", "check", "-c", path], capture_output=True, text=True)
        if result.returncode != 0:
            return ("this tlsgate binary does not take the hub configuration: "
                    + (result.stderr or result.stdout).strip().replace("\n", " ")[-300:])
        return None

    def start_peer(self, peer):
        proc = getattr(self, f"start_{peer}")()
        try:
            bench.wait_port(PORTS[peer], proc, peer, timeout=60)
        except SystemExit as stop:
            log_path = os.path.join(self.work, f"{peer}.log")
            tail = open(log_path).read()[-600:] if os.path.exists(log_path) else ""
            raise RuntimeError(f"{stop}: {tail.strip()}") from None

    def restart_peer(self, peer):
        proc = self.procs[peer]
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if peer in REDIS_PEERS:
            redis_command("FLUSHALL")
        self.start_peer(peer)

    def revive(self, peer, when, errors):
        """Starts a peer (or redis) again if it has exited since the last measurement (another
        user of this machine may stop processes by name), noting it in the report."""
        for name in (["redis"] if peer in REDIS_PEERS else []) + [peer]:
            proc = self.procs[name]
            if proc.poll() is None:
                continue
            errors.append(f"{when}: {name} had exited (code {proc.returncode}) and was started again")
            log(f"  {name} had exited (code {proc.returncode}); starting it again")
            if name == "redis":
                bench.wait_port(REDIS_PORT, self.start_redis(), "redis")
            else:
                self.start_peer(name)

    def pids(self, peer):
        """The processes whose CPU counts for a peer: its own, and redis for those that use it."""
        own = [self.procs[peer].pid]
        return own + ([self.procs["redis"].pid] if peer in REDIS_PEERS else [])

    def cpu(self, peer):
        return [sum(cpu_split(pid)) for pid in self.pids(peer)]

    def loadgen_command(self, peer, mode, path, protocol, channels, extra):
        return (["taskset", "-c", LOAD_CORE, self.loadgen, mode, "--addr", f"127.0.0.1:{PORTS[peer]}",
                 "--host", "localhost", "--cacert", self.cacert, "--path", path, "--protocol", protocol,
                 "--channels", str(channels)] + extra)

    def spawn(self, command):
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                preexec_fn=raise_fd_limit)

    @staticmethod
    def finish(proc):
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def idle_memory(self, peer):
        """Resident KiB per idle subscribed connection, on a fresh process."""
        count = self.args.idle_connections
        self.restart_peer(peer)
        self.pause(1)
        pid = self.procs[peer].pid
        before = rss_kib(pid)
        redis_before = rss_kib(self.procs["redis"].pid) if peer in REDIS_PEERS else None
        path, protocol = peer_paths(peer)
        proc = self.spawn(self.loadgen_command(peer, "hub-idle", path, protocol, CHANNELS,
                                               ["--connections", str(count)]))
        try:
            line = read_line(proc, 900)
            opened = json.loads(line) if line else {"open": 0, "failed": count, "first_error": "no answer in 900 s"}
            self.pause(3)  # let the server settle (lazy allocations, GC)
            after = rss_kib(pid)
            redis_after = rss_kib(self.procs["redis"].pid) if peer in REDIS_PEERS else None
        finally:
            self.finish(proc)
        result = {"open": opened["open"], "failed": opened["failed"], "error": opened.get("first_error"),
                  "setup_seconds": opened.get("seconds"), "rss_before_kib": before, "rss_after_kib": after}
        if opened["open"]:
            result["kib_per_connection"] = (after - before) / opened["open"]
            if redis_before is not None:
                result["redis_kib_per_connection"] = (redis_after - redis_before) / opened["open"]
        # Connections closed all at once leave the next measurement a busy server otherwise.
        self.pause(2)
        return result

    def fanout(self, peer, shape):
        """One fan-out shape against one peer: a fixed-rate phase, then a saturating one.
        Returns {"rate": {...}, "saturate": {...}}, each with the hub's CPU over the phase."""
        subscribers, channels, rate, rate_batch, window, batch = shape["params"]
        path, protocol = peer_paths(peer)
        proc = self.spawn(self.loadgen_command(peer, "hub-fanout", path, protocol, channels,
                                               ["--subscribers", str(subscribers), "--publish-url", publish_url(peer)]))
        results = {}
        try:
            line = read_line(proc, 900)
            if not line:
                raise RuntimeError("subscribers not open within 900 s")
            opened = json.loads(line)
            if opened["failed"]:
                raise RuntimeError(f"{opened['failed']} of {subscribers} subscribers failed: {opened['first_error']}")
            self.pause(1)
            seconds = self.args.seconds
            for mode, value, phase_batch in (("rate", rate, rate_batch), ("saturate", window, batch)):
                cpu_before = self.cpu(peer)
                client_before = sum(cpu_split(proc.pid))
                started = time.monotonic()
                proc.stdin.write(f"{mode} {value} {seconds} {phase_batch}\n")
                proc.stdin.flush()
                line = read_line(proc, seconds + 180)
                if not line:
                    raise RuntimeError(f"{mode} phase: no result")
                result = json.loads(line)
                cpu_after = self.cpu(peer)
                spent = [after - before for before, after in zip(cpu_before, cpu_after)]
                result["cpu_s"] = spent[0]
                wall = max(1e-9, time.monotonic() - started)
                result["busy"] = spent[0] / wall
                # The load client's own core: near 100% means it, not the hub, set the pace.
                result["client_busy"] = (sum(cpu_split(proc.pid)) - client_before) / wall
                if len(spent) > 1:
                    result["redis_cpu_s"] = spent[1]
                result["deliveries_per_cpu_s"] = result["delivered"] / max(1e-9, spent[0])
                result["deliveries_per_cpu_s_with_redis"] = result["delivered"] / max(1e-9, sum(spent))
                result["setup_seconds"] = opened["seconds"]
                results[mode] = result
                self.pause(1)
        finally:
            self.finish(proc)
        self.pause(2)
        return results

    def connect_rate(self, peer):
        token = bench.hs256_token(JWT_SECRET, {"sub": "bench", "exp": int(time.time()) + 86400})
        path, protocol = peer_paths(peer, token)
        seconds = self.args.seconds
        cpu_before = self.cpu(peer)
        proc = subprocess.run(self.loadgen_command(peer, "hub-connect", path, protocol, CHANNELS,
                                                   ["--connections", "16", "--seconds", str(seconds)]),
                              capture_output=True, text=True, timeout=seconds + 120, preexec_fn=raise_fd_limit)
        cpu_after = self.cpu(peer)
        if proc.returncode != 0:
            raise RuntimeError(f"hub-connect failed: {proc.stderr.strip()[-300:]}")
        result = json.loads(proc.stdout)
        if not result["operations"]:
            raise RuntimeError(f"no connection set up: {result['first_error']}")
        spent = [after - before for before, after in zip(cpu_before, cpu_after)]
        result["cpu_us"] = spent[0] / result["operations"] * 1e6
        if len(spent) > 1:
            result["redis_cpu_us"] = spent[1] / result["operations"] * 1e6
        self.pause(2)
        return result


def shapes(args):
    """(subscribers, channels, fixed rate, its batch, saturation window, saturation batch)."""
    one = (args.subscribers, 1, args.one_rate, 1, 2, 1)
    many_subscribers = args.subscribers
    many_channels = min(CHANNELS, many_subscribers // 10)
    # A /broadcast naming a channel twice delivers once (socket.io joins the rooms): keep the
    # batch's channels distinct.
    many = (many_subscribers, many_channels, args.many_rate, 1, 4, min(100, many_channels))
    return {
        "one": {"params": one, "label": f"1 channel × {one[0]:,} subscribers"},
        "many": {"params": many, "label": f"{many[1]:,} channels × {many[0] // many[1]:,} subscribers"},
    }


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), "")
    except OSError:
        pass
    with open("/proc/meminfo") as info:
        total = int(info.readline().split()[1]) // 1024
    return f"{model or platform.processor()}, {os.cpu_count()} cores, {total:,} MiB RAM, Linux {platform.release()}"


def versions():
    found = {}
    try:
        with open(REQUIREMENTS) as pinned:
            for line in pinned:
                name = line.split("==")[0].strip().lower()
                if name in ("fastapi", "uvicorn", "websockets", "pyjwt", "django", "channels", "channels_redis",
                            "channels-redis", "daphne", "twisted", "redis"):
                    found["redis-py" if name == "redis" else name] = line.split("==")[1].strip()
    except OSError:
        pass
    try:
        with open(os.path.join(SOCKETIO_DIR, "package.json")) as package:
            for name, version in json.load(package)["dependencies"].items():
                found[f"npm {name}"] = version
    except (OSError, KeyError, ValueError):
        pass
    for name, command in (("python", [os.path.join(VENV, "bin", "python"), "--version"]), ("node", ["node", "--version"]),
                          ("redis-server", ["redis-server", "--version"])):
        try:
            out = subprocess.run(command, capture_output=True, text=True).stdout.strip()
            found[name] = out.split()[2].removeprefix("v=") if name == "redis-server" else out.split()[-1]
        except (OSError, IndexError):
            pass
    return found


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def report(args, results, memory, peers, started, errors, shape_info):
    lines = [f"# tlsgate hub benchmark, {started:%Y-%m-%d %H:%M} UTC", ""]
    lines.append(f"Machine: {machine()}. Rounds: {args.rounds}, {args.seconds} s per phase. Every hub is one "
                 f"process pinned to core {PROXY_CORE} (redis too); the load client on core {LOAD_CORE}. "
                 "TLS 1.3 (the client offers nothing else), ECDSA P-256 certificate, X25519.")
    lines += ["", "Peer configurations:", ""]
    described = {
        "fastapi": "FastAPI on uvicorn, 1 worker, `--ws websockets`, uvicorn's own TLS (`--ssl-keyfile/--ssl-certfile`, "
                   "Python ssl); the seed's ConnectionManager (dict channel → set of sockets, broadcast awaits each "
                   "`send_json` in turn); `POST /publish` and `/broadcast` on the same TLS port.",
        "django": "Django Channels on daphne, 1 process, TLS by Twisted's endpoint string "
                  "(`ssl:PORT:privateKey=…:certKey=…:interface=127.0.0.1`); AllowedHostsOriginValidator + "
                  "AuthMiddlewareStack + an AsyncJsonWebsocketConsumer, group_add per channel; channels_redis "
                  "RedisChannelLayer (capacity 1500, expiry 60, group_expiry 300, DB 1); publish view → "
                  "`channel_layer.group_send`.",
        "socketio": "Node socket.io, 1 process, `https.createServer` (minVersion TLSv1.3), websocket transport only, "
                    "@socket.io/redis-adapter on node-redis, a room per channel; `POST /publish` → "
                    "`io.to(channel).emit('message', data)`; JWT by jsonwebtoken in an `io.use` middleware.",
        "tlsgate": f"tlsgate's hub, `limits.workers: 1`; subscribers on endpoint `/open` (no auth) or `/ws` "
                   f"(JWT HS256 from `query:token`); publish on the admin listener `POST /hub/publish` (plain HTTP "
                   f"on loopback).",
    }
    for peer in peers:
        lines.append(f"- **{peer}**: {described[peer]}")
    lines.append(f"- **redis** (django, socketio): redis-server on 127.0.0.1:{REDIS_PORT}, no persistence, pinned "
                 f"to core {PROXY_CORE}; its CPU is shown beside those peers' figures.")
    lines.append(f"- Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.")
    others = [p for p in peers if p != "tlsgate"]

    def best(values, higher=True):
        known = {p: v for p, v in values.items() if v is not None and p != "tlsgate"}
        if not known:
            return None, None
        peer = (max if higher else min)(known, key=known.get)
        return peer, known[peer]

    def ratio_cell(peer, value, best_value, digits=1, unit=""):
        if value is None:
            return "n/a"
        cell = f"{value:,.{digits}f}{unit}"
        if best_value and peer == "tlsgate":
            cell += f" (**{value / best_value:.2f}×** best peer)"
        return cell

    header = "| | " + " | ".join(peers) + " |"
    rule = "|" + "---|" * (len(peers) + 1)
    lines += ["", f"## Memory per idle subscribed wss:// connection ({args.idle_connections:,} connections)", "",
              "Target for tlsgate: ≤ 4 KiB.", "", header, rule]
    kib = {p: memory.get(p, {}).get("kib_per_connection") for p in peers}
    _, best_kib = best(kib, higher=False)
    lines.append("| KiB per connection (hub process RSS) | " +
                 " | ".join(ratio_cell(p, kib[p], best_kib) for p in peers) + " |")
    lines.append("| redis KiB per connection | " + " | ".join(
        f"{memory.get(p, {}).get('redis_kib_per_connection'):.2f}" if memory.get(p, {}).get("redis_kib_per_connection")
        is not None else "–" for p in peers) + " |")
    lines.append("| open (failed) | " + " | ".join(
        f"{memory[p]['open']:,} ({memory[p]['failed']})" if p in memory else "n/a" for p in peers) + " |")
    lines.append("| RSS before → after (KiB) | " + " | ".join(
        f"{memory[p]['rss_before_kib']:,} → {memory[p]['rss_after_kib']:,}" if p in memory else "n/a"
        for p in peers) + " |")
    lines.append("| time to open and subscribe all (s) | " + " | ".join(
        f"{memory[p]['setup_seconds']:.1f}" if memory.get(p, {}).get("setup_seconds") else "n/a" for p in peers) + " |")

    for shape, info in shape_info.items():
        subscribers, channels, rate, _, window, batch = info["params"]
        lines += ["", f"## Fan-out, {info['label']}", ""]
        lines.append(f"Saturation: publications as fast as deliveries keep up (at most {window} publications' "
                     f"deliveries outstanding), {'one channel per publish' if batch == 1 else f'{batch} channels per `/broadcast`'}. "
                     f"Fixed rate: {rate:g} publications/s, one channel each. Latency is from the publication's "
                     "due time (open loop) to its arrival at each subscriber. Medians over rounds. A hub core well "
                     "below 100% busy at saturation was waiting on the load client (one core for every subscriber "
                     "and the publisher) or on its own publish path; its CPU per delivery then includes sleeping "
                     "and waking up.")
        if shape == "one":
            lines.append("Target for tlsgate: ≥ 10× the best peer's deliveries per CPU-second; p99 < 50 ms.")
        lines += ["", header, rule]
        sat = {p: results.get((p, shape), []) for p in peers}
        dps = {p: med([r["saturate"] for r in sat[p]], "deliveries_per_cpu_s") for p in peers}
        dps_redis = {p: med([r["saturate"] for r in sat[p]], "deliveries_per_cpu_s_with_redis") for p in peers}
        _, best_dps = best(dps)
        _, best_dps_redis = best(dps_redis)
        lines.append("| deliveries per CPU-second, hub process (saturation) | " +
                     " | ".join(ratio_cell(p, dps[p], best_dps, digits=0) for p in peers) + " |")
        lines.append("| same, hub + redis CPU | " + " | ".join(
            ratio_cell(p, dps_redis[p], best_dps_redis, digits=0) if p in REDIS_PEERS or p == "tlsgate" else "–"
            for p in peers) + " |")

        def row(label, mode, key, show):
            cells = []
            for p in peers:
                value = med([r[mode] for r in sat[p]], key)
                cells.append(show(value) if value is not None else "n/a")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

        row("deliveries/s (saturation)", "saturate", "rate", lambda v: f"{v:,.0f}")
        row("hub core busy (saturation)", "saturate", "busy", lambda v: f"{v:.0%}")
        row("load client core busy (saturation)", "saturate", "client_busy", lambda v: f"{v:.0%}")
        row("undelivered after the drain, ≤ 60 s (saturation)", "saturate", "lost", lambda v: f"{v:,.0f}")
        row("saturation p50 (ms)", "saturate", "p50_us", lambda v: f"{v / 1000:,.1f}")
        row("saturation p99 (ms)", "saturate", "p99_us", lambda v: f"{v / 1000:,.1f}")
        row(f"fixed rate {rate:g}/s: p50 (ms)", "rate", "p50_us", lambda v: f"{v / 1000:,.1f}")
        row(f"fixed rate {rate:g}/s: p99 (ms)", "rate", "p99_us", lambda v: f"{v / 1000:,.1f}")
        row(f"fixed rate {rate:g}/s: undelivered after the drain", "rate", "lost", lambda v: f"{v:,.0f}")
        row(f"fixed rate {rate:g}/s: publications accepted", "rate", "published", lambda v: f"{v:,.0f}")
        row(f"fixed rate {rate:g}/s: hub core busy", "rate", "busy", lambda v: f"{v:.0%}")
        row("time to open and subscribe (s)", "rate", "setup_seconds", lambda v: f"{v:.1f}")

    lines += ["", "## Connection set-up: TLS + upgrade with an HS256 JWT in `?token=` + subscription acknowledged "
              "(16 clients in a loop)", "", header, rule]
    connect = {p: results.get((p, "connect"), []) for p in peers}
    rates = {p: med(connect[p], "rate") for p in peers}
    cpu = {p: med(connect[p], "cpu_us") for p in peers}
    _, best_rate = best(rates)
    _, best_cpu = best(cpu, higher=False)
    lines.append("| set-ups per second | " + " | ".join(ratio_cell(p, rates[p], best_rate, digits=0) for p in peers) + " |")
    lines.append("| hub CPU per set-up (µs) | " + " | ".join(ratio_cell(p, cpu[p], best_cpu, digits=0)
                                                         for p in peers) + " |")
    lines.append("| redis CPU per set-up (µs) | " + " | ".join(
        f"{med(connect[p], 'redis_cpu_us'):,.0f}" if med(connect[p], "redis_cpu_us") is not None else "–"
        for p in peers) + " |")
    lines.append("| failed set-ups (median) | " + " | ".join(
        f"{med(connect[p], 'errors'):,.0f}" if connect[p] else "n/a" for p in peers) + " |")
    lines += ["", "“best peer” is the best of " + ", ".join(others) + " on the same row of the same run (highest "
              "deliveries or set-ups, lowest memory or CPU); tlsgate's ratio is its figure ÷ that peer's."]
    if errors:
        lines += ["", "## Errors and omissions", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one short round (CI smoke test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured phase")
    parser.add_argument("--idle-connections", type=int, default=19000,
                        help="idle subscribed connections for the memory row (each costs the hub one file "
                             "descriptor; the hard limit here is 20,000)")
    parser.add_argument("--subscribers", type=int, default=10000, help="subscribers of each fan-out shape")
    parser.add_argument("--one-rate", type=float, default=2.0,
                        help="publications per second of the fixed-rate phase, one channel")
    parser.add_argument("--many-rate", type=float, default=200.0,
                        help="publications per second of the fixed-rate phase, 1,000 channels")
    parser.add_argument("--only", default=",".join(PEERS))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--debug-build", action="store_true", help="benchmark a debug build (smoke tests)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.idle_connections, args.subscribers = 1, 2, 200, 200
        args.many_rate = 50.0
    wanted = [p for p in args.only.split(",") if p in PEERS]
    errors = []
    started = datetime.datetime.now(datetime.timezone.utc)
    peers = install_peers(wanted, errors)
    tlsgate, loadgen = bench.build("debug" if args.debug_build else "release")
    work = tempfile.mkdtemp(prefix="tlsgate-hub-bench-")
    run = HubRun(args, work, tlsgate, loadgen)
    results, memory = {}, {}
    bench.ensure_ports_free([PORTS[p] for p in peers] + [TLSGATE_ADMIN, REDIS_PORT])
    shape_info = shapes(args)
    try:
        run.certificates()
        if "tlsgate" in peers:
            reason = run.tlsgate_has_hub()
            if reason:
                peers.remove("tlsgate")
                errors.append(f"tlsgate left out: {reason}")
                log(f"tlsgate left out: {reason}")
        if any(p in REDIS_PEERS for p in peers):
            bench.wait_port(REDIS_PORT, run.start_redis(), "redis")
        for peer in list(peers):
            try:
                run.start_peer(peer)
            except RuntimeError as error:
                peers.remove(peer)
                errors.append(f"{peer} left out: did not start: {error}")
                log(f"{peer} left out: {error}")
        rows = [("one", run.fanout), ("many", run.fanout), ("connect", None)]
        for round_number in range(args.rounds):
            for kind, _ in rows:
                shift = round_number % max(1, len(peers))
                for peer in peers[shift:] + peers[:shift]:
                    log(f"round {round_number + 1}/{args.rounds}: {peer} {kind}")
                    try:
                        run.revive(peer, f"round {round_number + 1} {peer} {kind}", errors)
                        if kind == "connect":
                            result = run.connect_rate(peer)
                        else:
                            result = run.fanout(peer, shape_info[kind])
                            for mode, phase in result.items():
                                log(f"  {mode}: {phase['delivered']:,} delivered, lost {phase['lost']:,}, "
                                    f"{phase['deliveries_per_cpu_s']:,.0f}/CPU-s, p50 {phase['p50_us'] / 1000:.1f} ms, "
                                    f"p99 {phase['p99_us'] / 1000:.1f} ms")
                    except Exception as error:  # a failed measurement is reported, not fatal
                        errors.append(f"round {round_number + 1} {peer} {kind}: {error}")
                        log(f"  failed: {error}")
                        continue
                    results.setdefault((peer, kind), []).append(result)
        for peer in peers:
            log(f"{peer}: {args.idle_connections} idle subscribed connections")
            try:
                run.revive(peer, f"{peer} idle memory", errors)
                memory[peer] = run.idle_memory(peer)
                log(f"  {memory[peer]}")
            except Exception as error:
                errors.append(f"{peer} idle memory: {error}")
    finally:
        run.stop_all()
    text = report(args, results, memory, peers, started, errors, shape_info)
    os.makedirs(args.out, exist_ok=True)
    name = f"hub-{started:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}.md"
    path = os.path.join(args.out, name)
    with open(path, "w") as out:
        out.write(text)
    with open(path.replace(".md", ".json"), "w") as out:
        json.dump({"results": {f"{p}/{k}": v for (p, k), v in results.items()}, "memory": memory,
                   "peers": peers, "errors": errors, "versions": versions(), "machine": machine(),
                   "shapes": shape_info}, out, indent=1)
    print(text)
    log(f"written: {path}")
    shutil.rmtree(work, ignore_errors=True)
    missing = [f"{p}/{k}" for p in peers for k, _ in rows if (p, k) not in results]
    if missing:
        log(f"no result for: {', '.join(missing)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
