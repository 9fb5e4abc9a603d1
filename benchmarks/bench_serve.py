"""Load test of `lumina serve` on loopback: concurrent clients vs the same requests one at a time.

    python benchmarks/bench_serve.py                      # 32 clients x 4 requests, embedded model, 64x64
    python benchmarks/bench_serve.py --clients 8 --requests-per-client 2 --max-batch 8

Starts `lumina serve --port 0 --no-ui` (the embedded model unless --model) as a subprocess on 127.0.0.1,
warms it up, then sends the same N = clients x requests-per-client image requests (request i: prompt
i mod 7, seed i) twice: one at a time, then from `clients` threads at once, each sending its requests
back to back (the one-at-a-time run is split in two around the concurrent one, so that the server's
resident memory (VmRSS) is read after the 20th and after the 200th counted request in the same state,
a single request just answered; an uncounted warm-up of the concurrent run comes first). It
prints p50 / p95 latency and throughput of both, their ratio, whether every concurrent image equals
its one-at-a-time twin (same seed: batching must not change images), the errors and the two RSS
readings. Every request and the whole run are bounded in time (--timeout, --max-seconds); traffic goes
to 127.0.0.1 only. Exit status 1 when a check fails: any error, any image changed by batching, a
throughput ratio below 3, RSS at 200 more than 10% above RSS at 20.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle above a yellow circle",
    "a purple square",
    "three red circles",
    "a blue circle to the left of a green square",
    "an orange triangle",
]
RSS_AT = (20, 200)


def start_server(args) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "lumina_mgpt.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-ui",
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        str(max(args.max_batch, 4 * args.clients)),
        "--timeout",
        str(args.timeout),
    ]
    if args.model:
        command += ["--model", args.model]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in server.stderr:
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if match:
            threading.Thread(target=server.stderr.read, daemon=True).start()  # keep the pipe drained
            return server, match[1]
        if time.monotonic() > deadline:
            break
    server.kill()
    raise SystemExit("the server did not start: " + (server.stderr.read() if server.stderr else ""))


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024


class Counter:
    """Counts finished requests and reads the server's RSS when the count reaches each of RSS_AT."""

    def __init__(self, pid: int):
        self.pid, self.done, self.rss, self.lock = pid, 0, {}, threading.Lock()

    def finished(self) -> None:
        with self.lock:
            self.done += 1
            if self.done in RSS_AT:
                self.rss[self.done] = rss_mib(self.pid)


def send(client: httpx.Client, url: str, body: dict, counter: Counter) -> tuple[float, str | None, str]:
    """(seconds, image b64 or None, error text) of one request."""
    start = time.perf_counter()
    try:
        response = client.post(f"{url}/v1/images/generations", json=body)
        seconds = time.perf_counter() - start
        if response.status_code != 200:
            return seconds, None, f"{response.status_code}: {response.text[:200]}"
        return seconds, response.json()["data"][0]["b64_json"], ""
    except httpx.HTTPError as error:
        return time.perf_counter() - start, None, f"{type(error).__name__}: {error}"
    finally:
        counter.finished()


def summary(name: str, latencies: list[float], wall: float) -> dict:
    p50, p95 = np.percentile(latencies, [50, 95])
    row = {
        "mode": name,
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "p50_s": round(float(p50), 3),
        "p95_s": round(float(p95), 3),
        "images_per_s": round(len(latencies) / wall, 2),
    }
    print(
        f"{name:>12}: {row['requests']} requests in {wall:6.1f} s, {row['images_per_s']:6.2f} images/s, "
        f"latency p50 {row['p50_s']:.3f} s, p95 {row['p95_s']:.3f} s"
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    parser.add_argument("--requests-per-client", type=int, default=4, help="requests each client sends (default: 4)")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (default: 32)")
    parser.add_argument("--size", default="64x64", help="image size of every request (default: 64x64)")
    parser.add_argument("--model", help="model for the server (default: the embedded model)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request at most (default: 300)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="the whole run at most; the server is stopped then (default: 900)",
    )
    args = parser.parse_args()

    bodies = [
        {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "size": args.size}
        for i in range(args.clients * args.requests_per_client)
    ]
    server, url = start_server(args)
    watchdog = threading.Timer(args.max_seconds, server.kill)
    watchdog.start()
    try:
        counter = Counter(server.pid)

        def client_run(index: int) -> list[tuple[float, str | None, str]]:
            mine = bodies[index * args.requests_per_client : (index + 1) * args.requests_per_client]
            with httpx.Client(timeout=args.timeout) as own:
                return [send(own, url, body, counter) for body in mine]

        with httpx.Client(timeout=args.timeout) as client:
            # Warm-up, not counted: the concurrent run once (the batch sizes it makes are then part of the memory
            # baseline: the C heap keeps what they used) and a few single requests.
            warm = Counter(server.pid)
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda body: send(client, url, body, warm), bodies))
            for body in bodies[:2]:
                send(client, url, body, warm)
            # One at a time, in two parts around the concurrent run, so that both RSS readings (after requests
            # 20 and 200) are taken in the same state: a single request just answered.
            first = RSS_AT[0]
            start = time.perf_counter()
            alone = [send(client, url, body, counter) for body in bodies[:first]]
            alone_wall = time.perf_counter() - start

            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                together = [result for results in pool.map(client_run, range(args.clients)) for result in results]
            together_wall = time.perf_counter() - start

            start = time.perf_counter()
            alone += [send(client, url, body, counter) for body in bodies[first:]]
            alone_wall += time.perf_counter() - start
        health = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        watchdog.cancel()
        server.terminate()
        server.wait(timeout=30)

    print(
        f"server: {url}, {len(bodies)} requests of {args.size} each way, --max-batch {args.max_batch}; "
        f"{health['batches']} engine calls for {health['images']} images in all"
    )
    rows = [
        summary("one at a time", [r[0] for r in alone], alone_wall),
        summary(f"{args.clients} clients", [r[0] for r in together], together_wall),
    ]
    errors = [r[2] for r in alone + together if r[2]]
    same = sum(a[1] is not None and a[1] == b[1] for a, b in zip(alone, together))
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    rss = counter.rss
    growth = rss[RSS_AT[1]] / rss[RSS_AT[0]] - 1 if all(k in rss for k in RSS_AT) else None
    print(
        f"throughput ratio (concurrent / one at a time): {ratio:.2f}x; errors: {len(errors)}; images equal to "
        f"their one-at-a-time twins: {same}/{len(bodies)}"
    )
    if growth is not None:
        print(
            f"server RSS after request {RSS_AT[0]}: {rss[RSS_AT[0]]:.0f} MiB, after {RSS_AT[1]}: "
            f"{rss[RSS_AT[1]]:.0f} MiB ({100 * growth:+.1f}%)"
        )
    for error in errors[:5]:
        print("  error:", error)
    checks = {
        "no errors": not errors,
        "throughput >= 3x": ratio >= 3,
        "RSS within 10%": growth is not None and growth <= 0.10,
        "same images": same == len(bodies),
    }
    print(json.dumps({"rows": rows, "ratio": round(ratio, 2), "errors": len(errors), "rss_mib": rss, "checks": checks}))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
