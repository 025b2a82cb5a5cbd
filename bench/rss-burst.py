#!/usr/bin/env python3
"""RSS of a tlsgate process before, during and after a burst of TLS connections.

Starts `tlsgate serve` with no config on loopback (its own data folder in a temp dir), opens
N TLS connections that each make one HTTP/1.1 request and stay open, closes them all, then
samples VmRSS. Run it with different MIMALLOC_* settings to see what the allocator returns:

    python3 bench/rss-burst.py --binary target/release/tlsgate --connections 3000
    MIMALLOC_PURGE_DELAY=0 python3 bench/rss-burst.py ...
"""
import argparse
import os
import socket
import ssl
import subprocess
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/tlsgate")
    parser.add_argument("--connections", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        port = free_port()
        server = subprocess.Popen(
            [args.binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
             "--http-listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            root = os.path.join(data, "ca", "root.crt")
            for _ in range(100):
                if os.path.exists(root):
                    break
                time.sleep(0.05)
            time.sleep(0.3)
            context = ssl.create_default_context(cafile=root)
            baseline = rss_kib(server.pid)
            clients = []
            for _ in range(args.connections):
                tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                          server_hostname="localhost")
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                tls.recv(4096)
                clients.append(tls)
            peak = rss_kib(server.pid)
            for tls in clients:
                tls.close()
            samples = []
            for wait in (1, 5, 15):
                time.sleep(wait - (samples[-1][0] if samples else 0))
                samples.append((wait, rss_kib(server.pid)))
            settings = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MIMALLOC_")) or "defaults"
            print(f"mimalloc {settings}: {args.connections} connections; RSS baseline {baseline // 1024} MiB, "
                  f"peak {peak // 1024} MiB, after close: "
                  + ", ".join(f"{w}s {r // 1024} MiB" for w, r in samples))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
