#!/usr/bin/env python3
"""Load test for peft-serve (standard library only, loopback only, bounded in requests and time).

C concurrent clients send N requests each, spread round-robin over the given adapters, and the
run reports throughput, p50 / p99 latency and errors as one JSON line. --compare-sequential runs
the same requests again one at a time and reports the ratio.

--soak S instead sends requests for S seconds, a fraction --invalid of them bad (malformed JSON,
unknown fields and deltas, paths out of the adapter directory, over-long prompts, bad max_tokens,
oversized bodies, bodies cut short); each must get its 4xx and every valid one its 200. With
--server-pid the server's resident memory is sampled every few seconds and reported.

  scripts/load_test.py --port 8080 --clients 16 --requests 50 --max-tokens 32 \\
      --adapters a0,a1,a2,a3,a4,a5,a6,a7 --compare-sequential
  scripts/load_test.py --port 8080 --soak 600 --invalid 0.3 --server-pid PID --adapters a0,a1
"""
import argparse
import json
import random
import socket
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

# Bad requests and the status each must get (the body, or raw bytes sent on a socket).
BAD = [
    (b"{not json", 400), (json.dumps({"prompt": "a", "bogus": 1}).encode(), 400),
    (json.dumps({"prompt": "a", "adapter": "no-such-delta"}).encode(), 404),
    (json.dumps({"prompt": "a", "adapter": "../../etc"}).encode(), 400),
    (json.dumps({"prompt": "a", "max_tokens": -5}).encode(), 400),
    (json.dumps({"prompt": "a", "max_tokens": 10 ** 9}).encode(), 400),
    (json.dumps({"prompt": " a" * 600, "max_tokens": 8}).encode(), 400),
    (json.dumps({"prompt": 7}).encode(), 400), (json.dumps({"prompt": "a", "temperature": "hot"}).encode(), 400),
    (json.dumps({"prompt": "x" * (2 << 20)}).encode(), 413), (b"[]", 400),
]


def cut_short(port):
    """A body shorter than its Content-Length: the server answers 400 once its --io-timeout passes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n{\"prompt\"")
        reply = s.recv(4096).decode(errors="replace")
        return int(reply.split()[1]) if reply.startswith("HTTP/1.1") else 0
    except Exception:
        return 0
    finally:
        s.close()


def post(port, body, timeout):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            res.read()
            return res.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def soak(port, clients, seconds, invalid, adapters, max_tokens, timeout, server_pid):
    stop_at = time.monotonic() + seconds
    counts = {"valid": 0, "invalid": 0, "valid_ok": 0, "invalid_ok": 0, "lost": 0}
    wrong = []
    lock = threading.Lock()
    memory = []

    def client(c):
        rnd = random.Random(c)
        k = 0
        while time.monotonic() < stop_at:
            k += 1
            if rnd.random() < invalid:
                pick = rnd.randrange(len(BAD) + 1)
                if pick == len(BAD):
                    status, want = cut_short(port), 400
                else:
                    body, want = BAD[pick]
                    status = post(port, body, timeout)
                kind = "invalid"
            else:
                body = {"prompt": PROMPTS[(c + k) % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0}
                if adapters:
                    body["adapter"] = adapters[(c + k) % len(adapters)]
                status, want, kind = post(port, json.dumps(body).encode(), timeout), 200, "valid"
            with lock:
                counts[kind] += 1
                if status == want:
                    counts[kind + "_ok"] += 1
                elif status == 0:
                    counts["lost"] += 1
                elif len(wrong) < 20:
                    wrong.append({"kind": kind, "status": status, "expected": want})

    def sampler():
        t0 = time.monotonic()
        while time.monotonic() < stop_at:
            if server_pid:
                memory.append((round(time.monotonic() - t0, 1), rss_kib(server_pid)))
            time.sleep(5)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)] + [threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = dict(counts, seconds=seconds, wrong_status=wrong)
    if memory:
        rss = [m for _, m in memory if m]
        tenth = max(1, len(rss) // 10)
        report["rss_kib_first_tenth_max"] = max(rss[:tenth])
        report["rss_kib_last_tenth_max"] = max(rss[-tenth:])
        report["rss_kib_max"] = max(rss)
        report["rss_samples"] = memory
    return report


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
    ap.add_argument("--soak", type=float, default=0, help="seconds of mixed valid and invalid requests (at most 3600)")
    ap.add_argument("--invalid", type=float, default=0.3, help="fraction of invalid requests in a soak")
    ap.add_argument("--server-pid", type=int, default=0, help="sample this process's resident memory in a soak")
    a = ap.parse_args()
    if a.clients < 1 or a.requests < 1 or a.clients * a.requests > 100000:
        sys.exit("--clients and --requests must be >= 1, at most 100000 requests in all")
    adapters = [x for x in a.adapters.split(",") if x]
    if a.soak:
        if not 0 < a.soak <= 3600 or not 0 <= a.invalid <= 1:
            sys.exit("--soak must be in (0, 3600] seconds and --invalid in [0, 1]")
        print(json.dumps(soak(a.port, a.clients, a.soak, a.invalid, adapters, a.max_tokens, a.timeout, a.server_pid)))
        return
    report = {"concurrent": run(a.port, a.clients, a.requests, adapters, a.max_tokens, a.deadline, a.timeout)}
    if a.compare_sequential:
        report["sequential"] = run(a.port, 1, a.clients * a.requests, adapters, a.max_tokens, a.deadline, a.timeout)
        report["throughput_ratio"] = report["concurrent"]["tokens_per_s"] / max(report["sequential"]["tokens_per_s"], 1e-9)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
