#!/usr/bin/env python3
"""Fallback load for scripts/soak.sh when wrk is not installed: THREADS keep-alive HTTP/1.1
clients GET URL for SECONDS, each rewriting OUT/wrk-py<i> as "ok bad" every 200 answers and
after every bad one (the format the soak samples).

usage: soak_load.py URL SECONDS THREADS OUT EXPECTED_BODY
"""
import http.client
import os
import sys
import threading
import time
import urllib.parse


def client(i, url, until, out, expect):
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    ok = bad = 0

    def flush():
        # Write aside, then rename: the sampler never reads a half-written file.
        tmp = f"{out}/.tmp-wrk-py{i}"
        with open(tmp, "w") as f:
            f.write(f"{ok} {bad}\n")
        os.replace(tmp, f"{out}/wrk-py{i}")

    conn = None
    while time.monotonic() < until:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read().decode("utf-8", "replace")
            good = r.status == 200 and body == expect
        except (OSError, http.client.HTTPException):
            good = False
            conn = None
        if good:
            ok += 1
        else:
            bad += 1
        if not good or (ok + bad) % 200 == 0:
            flush()
    flush()
    print(f"thread {i}: {ok} ok, {bad} bad")


def main():
    url, seconds, threads, out, expect = sys.argv[1:6]
    until = time.monotonic() + float(seconds)
    ts = [
        threading.Thread(target=client, args=(i, url, until, out, expect))
        for i in range(int(threads))
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    main()
