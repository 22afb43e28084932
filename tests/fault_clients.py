#!/usr/bin/env python3
"""Verifying clients for a demo server that runs under injected syscall faults.

    fault_clients.py --protocol echo|http|resp --target HOST:PORT [--connections N]
                     [--duration SEC] [--stall SEC] [--seed S]
    fault_clients.py --protocol ... --target HOST:PORT --probe [--stall SEC]

N clients (threads), each looping: connect, do 1..8 exchanges, close. An exchange sends a
request (or a pipeline of them) and reads the whole expected answer, comparing every byte as it
arrives:
  echo  1 B..16 KiB of random bytes, echoed back;
  http  a pipeline of 1..4 GET/HEAD requests to http_server (default --body): each answer is
        200 with the body "hello\\n" (none for HEAD), the Date line checked for its form;
  resp  a pipeline to kv_server: SET fc:<client> <random value>, GET it back, ECHO a random
        payload (each client has its own key, so answers are exact).
Outcomes: the answer arrived whole and right; the server closed or reset the connection first
(allowed under injected faults: counted in `closed`, what did arrive must still be right);
wrong bytes (a byte differs, or bytes arrive that no request asked for: counted in wrong_bytes,
the connection dropped); a stall (no byte and no close for --stall seconds while an answer is
due: the server neither answered nor closed, counted in `stalls`).

--probe: one connection, one exchange, everything bounded by --stall (default 1 s); exit 0 when
the answer came whole and right.

Prints one JSON object on stdout (connections, exchanges, bytes, closed, connect_errors,
stalls, wrong_bytes, first_wrong, first_stall). Exit status: 0 when there were no wrong bytes,
no stalls and at least one whole exchange; 1 otherwise; 2 for a usage error.
"""

import argparse
import json
import os
import random
import re
import socket
import sys
import threading
import time

DATE = re.compile(rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
DATE_SIZE = 29  # IMF-fixdate: "Tue, 01 Dec 2026 17:13:23 GMT"


class Expected:
    """The bytes an exchange must read back, with holes (the Date values) checked by form."""

    def __init__(self):
        self.data = bytearray()
        self.holes = []  # (start, end): any bytes there, matched against DATE when complete

    def add(self, data):
        self.data += data

    def hole(self, size):
        self.holes.append((len(self.data), len(self.data) + size))
        self.data += b"?" * size

    def first_mismatch(self, got, start):
        """Index of the first byte of got[start:] that differs from the template, or None."""
        if len(got) <= len(self.data) and got[start:] == self.data[start:len(got)]:
            return None
        for i in range(start, len(got)):
            if i >= len(self.data):
                return i
            if got[i] != self.data[i] and not any(a <= i < b for a, b in self.holes):
                return i
        return None

    def holes_ok(self, got):
        return all(DATE.fullmatch(bytes(got[a:b])) for a, b in self.holes)


def resp_bulk(data):
    return b"$%d\r\n%s\r\n" % (len(data), data)


def resp_command(*parts):
    return b"*%d\r\n" % len(parts) + b"".join(resp_bulk(p) for p in parts)


def letters(n):
    return os.urandom(n // 2 + 1).hex()[:n].encode()


def make_exchange(protocol, rng, client):
    expected = Expected()
    if protocol == "echo":
        size = 1 + rng.randrange(1 << rng.randrange(15))
        request = os.urandom(size)
        expected.add(request)
    elif protocol == "http":
        request = b""
        for _ in range(1 + rng.randrange(4)):
            method = rng.choice([b"GET", b"HEAD"])
            request += b"%s /%d HTTP/1.1\r\nHost: soak\r\n\r\n" % (method, rng.randrange(1 << 20))
            expected.add(b"HTTP/1.1 200 OK\r\nDate: ")
            expected.hole(DATE_SIZE)
            expected.add(b"\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n")
            if method == b"GET":
                expected.add(b"hello\n")
    else:
        key = b"fc:%d" % client
        value = letters(1 + rng.randrange(1000))
        payload = letters(1 + rng.randrange(1000))
        request = (resp_command(b"SET", key, value) + resp_command(b"GET", key) +
                   resp_command(b"ECHO", payload))
        expected.add(b"+OK\r\n" + resp_bulk(value) + resp_bulk(payload))
    return request, expected


class Totals:
    KEYS = ("connections", "exchanges", "bytes", "closed", "connect_errors", "stalls",
            "wrong_bytes")

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.KEYS, 0)
        self.first_wrong = ""
        self.first_stall = ""

    def add(self, key, n=1, detail=None):
        with self.lock:
            self.counts[key] += n
            if detail and key == "wrong_bytes" and not self.first_wrong:
                self.first_wrong = detail
            if detail and key == "stalls" and not self.first_stall:
                self.first_stall = detail


def exchange(sock, protocol, rng, client, stall, totals):
    """One exchange on a connected socket. Returns whether the connection may go on."""
    request, expected = make_exchange(protocol, rng, client)
    got = bytearray()
    sent = 0
    sock.settimeout(stall)
    try:
        # Requests are at most 16 KiB and answers come back as they are read: both fit the
        # loopback socket buffers, so sending all first cannot deadlock.
        sock.sendall(request)
        sent = len(request)
        while len(got) < len(expected.data):
            data = sock.recv(65536)
            if not data:
                totals.add("closed")
                return False
            start = len(got)
            got += data
            bad = expected.first_mismatch(got, start)
            if bad is not None:
                totals.add("wrong_bytes", len(got) - bad,
                           "%s: offset %d of the answer: expected %r, got %r" %
                           (protocol, bad, bytes(expected.data[bad:bad + 16]),
                            bytes(got[bad:bad + 16])))
                return False
    except socket.timeout:
        totals.add("stalls", 1, "%s: %d of %d request bytes sent, %d of %d answer bytes read, "
                   "then nothing for %.1f s" % (protocol, sent, len(request), len(got),
                                               len(expected.data), stall))
        return False
    except OSError:  # ECONNRESET, EPIPE: the server reset the connection
        totals.add("closed")
        return False
    if not expected.holes_ok(got):
        totals.add("wrong_bytes", DATE_SIZE, "%s: a malformed Date value" % protocol)
        return False
    totals.add("exchanges")
    totals.add("bytes", len(got))
    return True


def client_loop(args, host, port, index, end, totals):
    rng = random.Random(args.seed * 1000003 + index)
    while time.monotonic() < end:
        try:
            sock = socket.create_connection((host, port), timeout=args.stall)
        except OSError:
            totals.add("connect_errors")
            time.sleep(0.01)
            continue
        totals.add("connections")
        try:
            for _ in range(1 if args.probe else 1 + rng.randrange(8)):
                if not exchange(sock, args.protocol, rng, index, args.stall, totals):
                    break
                if time.monotonic() >= end:
                    break
        finally:
            sock.close()
        if args.probe:
            return


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=("echo", "http", "resp"), required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--stall", type=float, default=None,
                        help="seconds without progress that count as a stall (default 3; "
                             "1 with --probe)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit() or args.connections < 1:
        parser.error("--target HOST:PORT and --connections >= 1")
    if args.stall is None:
        args.stall = 1.0 if args.probe else 3.0
    if args.probe:
        args.connections = 1
    totals = Totals()
    # A probe makes one exchange, bounded by --stall like each wait in it.
    end = time.monotonic() + (args.stall if args.probe else args.duration)
    threads = [threading.Thread(target=client_loop,
                                args=(args, host.strip("[]"), int(port), i, end, totals))
               for i in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = dict(totals.counts, protocol=args.protocol, first_wrong=totals.first_wrong,
                  first_stall=totals.first_stall)
    print(json.dumps(result))
    c = totals.counts
    ok = c["wrong_bytes"] == 0 and c["stalls"] == 0 and c["exchanges"] > 0
    if not ok:
        print("fault_clients: %d exchanges, %d wrong bytes%s, %d stalls%s" %
              (c["exchanges"], c["wrong_bytes"],
               " (first: %s)" % totals.first_wrong if totals.first_wrong else "",
               c["stalls"], " (first: %s)" % totals.first_stall if totals.first_stall else ""),
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
