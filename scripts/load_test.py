#!/usr/bin/env python3
"""Load test for peft-serve (standard library only, loopback only, bounded in requests and time).

C concurrent clients send N requests each, spread round-robin over the given adapters, and the
run reports throughput, p50 / p99 latency and errors as one JSON line. --compare-sequential runs
the same requests again one at a time and reports the ratio.

  scripts/load_test.py --port 8080 --clients 16 --requests 50 --max-tokens 32 \\
      --adapters a0,a1,a2,a3,a4,a5,a6,a7 --compare-sequential
"""
import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPTS = ["The whale", "It was the best of times", "Mr. Speaker, the state of our Union", "Call me",
           "In the beginning", "Once upon a time", "We the people", "Four score and seven years ago"]


def one_request(port, body, timeout):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            out = json.loads(res.read())
            return time.perf_counter() - t0, res.status, out.get("usage", {}).get("completion_tokens", 0)
    except urllib.error.HTTPError as e:
        return time.perf_counter() - t0, e.code, 0
    except Exception:  # connection refused / reset / timeout: counted as lost
        return time.perf_counter() - t0, 0, 0


def run(port, clients, requests, adapters, max_tokens, deadline_s, timeout):
    latencies, statuses, tokens = [], [], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client(c):
        for i in range(requests):
            if time.monotonic() > stop_at:
                return
            k = c * requests + i
            body = {"prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0}
            if adapters:
                body["adapter"] = adapters[k % len(adapters)]
            dt, status, n = one_request(port, body, timeout)
            with lock:
                latencies.append(dt)
                statuses.append(status)
                tokens[0] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None
    return {"clients": clients, "requests_sent": len(statuses), "requests_planned": clients * requests,
            "ok": statuses.count(200), "errors": sum(1 for s in statuses if s not in (200, 0)),
            "lost": statuses.count(0), "wall_s": wall, "requests_per_s": len(statuses) / wall,
            "tokens_per_s": tokens[0] / wall, "p50_s": pct(0.50), "p99_s": pct(0.99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50, help="per client")
    ap.add_argument("--adapters", default="", help="comma-separated delta names (empty: the base)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--deadline", type=float, default=600, help="stop sending after this many seconds")
    ap.add_argument("--timeout", type=float, default=120, help="per request")
    ap.add_argument("--compare-sequential", action="store_true")
    a = ap.parse_args()
    if a.clients < 1 or a.requests < 1 or a.clients * a.requests > 100000:
        sys.exit("--clients and --requests must be >= 1, at most 100000 requests in all")
    adapters = [x for x in a.adapters.split(",") if x]
    report = {"concurrent": run(a.port, a.clients, a.requests, adapters, a.max_tokens, a.deadline, a.timeout)}
    if a.compare_sequential:
        report["sequential"] = run(a.port, 1, a.clients * a.requests, adapters, a.max_tokens, a.deadline, a.timeout)
        report["throughput_ratio"] = report["concurrent"]["tokens_per_s"] / max(report["sequential"]["tokens_per_s"], 1e-9)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
