#!/usr/bin/env python3
"""The benchmark's heartbeating Python worker (standard library only).

Run as a program under arbiter, it is a worker the way an sd_notify client is one: it serves
HTTP on the inherited listener at fd 3 (`LISTEN_FDS`), sends `READY=1` on `NOTIFY_SOCKET`
once it serves, then `WATCHDOG=1` about once a second and, at the same moment, bumps its
heartbeat file (`ARBITER_HEARTBEAT_FD`) with an `fchmod` that toggles its mode, as gunicorn's
workers do. TERM stops it gracefully, as a sync worker stops: it closes the listener at once,
sends `STOPPING=1`, answers the requests still coming on its connections (with
`Connection: close`), closes idle keep-alive connections half a second later and only between
requests, and exits 0 once no connection is left; INT and QUIT stop it at once.

Imported, it is the same application as a WSGI callable (`py_worker:app`), so gunicorn and
uWSGI serve exactly the logic the standalone server does. Under uWSGI it registers a post-fork
hook, and `announce_ready()` is what a gunicorn `post_worker_init` hook calls: both tell the
benchmark that a worker is ready through `BENCH_READY_SOCKET` (a unix datagram socket).

Routes: `GET /` answers `{"pid":N}`; `GET /hang` never returns (the worker stops
heartbeating: a hung request). Environment knobs, all optional:

- `BENCH_BOOT_DELAY` seconds to sleep at import (an application slow to load);
- `BENCH_BEAT_INTERVAL` seconds between heartbeats (default 1);
- `BENCH_BEAT` = `both` (default), `datagram` (only `WATCHDOG=1`) or `file` (only fchmod);
- `BENCH_STATS_DIR`: at exit, write `PID.json` there with the heartbeats sent and how many
  notify datagrams met a full queue (EAGAIN) or were dropped (still full a second later);
  and `PID.ready` with the CLOCK_MONOTONIC time just before `READY=1` was sent; on SIGABRT
  (the master's heartbeat timeout), `PID.abort` with the longest it went without a
  `WATCHDOG=1` going out over the last two timeouts (`WATCHDOG_USEC`), the time since its last
  one included, so a timeout can be told false (it never went a timeout without beating) from
  true (the worker itself was late), before the signal's default action ends it.
"""

import collections
import errno
import json
import os
import select
import selectors
import signal
import socket
import sys
import time

_boot_delay = float(os.environ.get("BENCH_BOOT_DELAY", "0") or "0")
if _boot_delay > 0:
    time.sleep(_boot_delay)


def app(environ, start_response):
    """The WSGI application shared by all three servers."""
    if environ.get("PATH_INFO", "/") == "/hang":
        while True:
            time.sleep(3600)
    body = ('{"pid":%d}\n' % os.getpid()).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


application = app


def announce_ready():
    """Sends this process's pid to `BENCH_READY_SOCKET`, if the benchmark set one."""
    path = os.environ.get("BENCH_READY_SOCKET")
    if not path:
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.settimeout(5)
        s.sendto(b"%d" % os.getpid(), path)
    except OSError:
        pass
    finally:
        s.close()


try:  # Under uWSGI: announce each worker right after its fork from the master.
    import uwsgi  # type: ignore

    uwsgi.post_fork_hook = announce_ready
except ImportError:
    pass


class Notifier:
    """The sd_notify client side: one datagram socket to `NOTIFY_SOCKET`.

    Like sd_notify, a send waits while the master's queue is full, but at most a second, and
    it is counted: `queue_full` when the first, non-blocking attempt got EAGAIN (the queue
    held `net.unix.max_dgram_qlen` datagrams), `dropped` when the wait ran out too.
    """

    def __init__(self):
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.socket = None
        self.queue_full = 0
        self.dropped = 0
        self.max_send_ms = 0.0
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.socket.setblocking(False)
            # Connected, poll() for writing tells when the master's queue has room.
            try:
                self.socket.connect(self.address)
            except OSError:
                pass

    def _send_once(self, message):
        try:
            self.socket.send(message)
        except OSError as e:
            if e.errno not in (errno.ENOTCONN, errno.EDESTADDRREQ):
                raise
            self.socket.sendto(message, self.address)

    def send(self, message):
        """Sends `message`; whether it went out."""
        if self.socket is None:
            return False
        start = time.monotonic()
        sent = False
        try:
            self._send_once(message)
            sent = True
        except BlockingIOError:
            self.queue_full += 1
            _, writable, _ = select.select([], [self.socket], [], 1.0)
            try:
                if not writable:
                    raise BlockingIOError
                self._send_once(message)
                sent = True
            except OSError:
                self.dropped += 1
        except OSError:
            self.dropped += 1
        took = (time.monotonic() - start) * 1e3
        self.max_send_ms = max(self.max_send_ms, took)
        return sent


class Heartbeat:
    """The gunicorn-style heartbeat file: its ctime moves on every mode change."""

    def __init__(self):
        fd = os.environ.get("ARBITER_HEARTBEAT_FD")
        self.fd = int(fd) if fd and fd.isdigit() else None
        self.spinner = 0

    def bump(self):
        if self.fd is None:
            return
        self.spinner = 1 - self.spinner
        try:
            os.fchmod(self.fd, 0o600 if self.spinner else 0o400)
        except OSError:
            self.fd = None


def listener():
    """The inherited listener at fd 3, non-blocking."""
    count = int(os.environ.get("LISTEN_FDS", "0") or "0")
    pid = os.environ.get("LISTEN_PID")
    if count < 1 or (pid and pid != str(os.getpid())):
        sys.stderr.write("py_worker: no listener (LISTEN_FDS unset or not for this pid)\n")
        sys.exit(3)
    sock = socket.socket(fileno=3)
    sock.setblocking(False)
    return sock


def respond(request, closing=False):
    """Runs the WSGI app for one parsed request head; returns (bytes, keep_alive).

    `closing` (a graceful stop is under way) answers with `Connection: close`."""
    head = request.decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("GET", "/")
    version = parts[2] if len(parts) >= 3 else "HTTP/1.0"
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
    keep = keep and not closing
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": version,
        "wsgi.url_scheme": "http",
    }
    status_headers = []

    def start_response(status, response_headers, exc_info=None):
        status_headers[:] = [status, response_headers]

    body = b"".join(app(environ, start_response))
    status, response_headers = status_headers
    out = ["HTTP/1.1 " + status]
    out += ["%s: %s" % (k, v) for k, v in response_headers]
    out.append("Connection: " + ("keep-alive" if keep else "close"))
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body, keep


# After TERM, how long idle keep-alive connections stay open: a client that sends its next
# request meanwhile gets an answer (with `Connection: close`) instead of a closed socket.
DRAIN_IDLE_GRACE = 0.5


class Connection:
    """One accepted connection: the bytes of a request not yet complete, and whether nothing
    was read yet (`fresh`: its first request may still be on its way)."""

    __slots__ = ("sock", "buffer", "fresh")

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.fresh = True

    def idle(self):
        """Between requests: it has served one and holds no part of the next."""
        return not self.fresh and not self.buffer


def serve():
    """The standalone worker: the loop of accept, requests and heartbeats.

    A graceful stop (TERM) is what a sync worker does: stop accepting at once (the listener
    is closed, so queued connections stay in the shared queue for the other workers), send
    `STOPPING=1`, answer every request that arrives with `Connection: close`, close idle
    keep-alive connections after `DRAIN_IDLE_GRACE` (and only between requests: one whose
    next request has arrived is answered first), keep a just-accepted connection until its
    request came and was answered, and exit once no connection is left. Closing a socket
    with a request unread would reset it, and its client would see the request fail.
    """
    notifier = Notifier()
    heartbeat = Heartbeat()
    interval = float(os.environ.get("BENCH_BEAT_INTERVAL", "1") or "1")
    mode = os.environ.get("BENCH_BEAT", "both")
    stats_dir = os.environ.get("BENCH_STATS_DIR")
    sock = listener()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stop = {"how": None}

    def on_signal(signum, _frame):
        how = "graceful" if signum == signal.SIGTERM else "quick"
        if stop["how"] != "quick":
            stop["how"] = how

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, on_signal)

    last_watchdog = {"at": None, "recent": collections.deque(maxlen=64)}
    timeout_s = int(os.environ.get("WATCHDOG_USEC", "30000000") or "30000000") / 1e6

    def on_abort(signum, _frame):
        if last_watchdog["at"] is not None:
            # The longest it went without a WATCHDOG=1 going out over the last two timeouts
            # (the master judged it within them), since its last beat included: a worker
            # starved for longer than the timeout may beat again after the master judged it,
            # just before the signal comes, so the time since its last beat alone does not
            # tell.
            now = time.monotonic()
            times = list(last_watchdog["recent"]) + [now]
            since = max(
                later - earlier
                for earlier, later in zip(times, times[1:])
                if later >= now - 2 * timeout_s
            )
            try:
                with open(os.path.join(stats_dir, "%d.abort" % os.getpid()), "w") as f:
                    f.write(repr(since))
            except OSError:
                pass
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGABRT)

    if stats_dir:
        signal.signal(signal.SIGABRT, on_abort)

    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    connections = {}
    beats = 0
    drain = {"on": False, "grace_until": None}

    def beat():
        nonlocal beats
        beats += 1
        if mode in ("both", "datagram") and notifier.send(b"WATCHDOG=1"):
            last_watchdog["at"] = time.monotonic()
            last_watchdog["recent"].append(last_watchdog["at"])
        if mode in ("both", "file"):
            heartbeat.bump()

    def close(connection):
        selector.unregister(connection.sock)
        connections.pop(connection.sock, None)
        connection.sock.close()

    def begin_drain():
        drain["on"] = True
        drain["grace_until"] = time.monotonic() + DRAIN_IDLE_GRACE
        selector.unregister(sock)
        sock.close()
        notifier.send(b"STOPPING=1")

    def drive(connection, closing_idle=False):
        """Reads what `connection` has and answers its complete requests. `closing_idle`:
        the drain's grace is over, so an idle connection with nothing to read is closed."""
        try:
            chunk = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            if closing_idle and connection.idle():
                close(connection)
            return
        except OSError:
            chunk = b""
        if not chunk:
            close(connection)
            return
        connection.fresh = False
        data = connection.buffer + chunk
        keep = True
        while keep and b"\r\n\r\n" in data:
            head, _, data = data.partition(b"\r\n\r\n")
            response, keep = respond(head, closing=drain["on"])
            connection.sock.setblocking(True)
            connection.sock.settimeout(10)
            try:
                connection.sock.sendall(response)
            except OSError:
                keep = False
            connection.sock.setblocking(False)
        connection.buffer = data
        if not keep:
            close(connection)

    beat()
    ready_at = time.monotonic()
    notifier.send(b"READY=1")
    if stats_dir:
        # When READY=1 left, on CLOCK_MONOTONIC, for the benchmark's ready latency.
        try:
            with open(os.path.join(stats_dir, "%d.ready" % os.getpid()), "w") as f:
                f.write(repr(ready_at))
        except OSError:
            pass
    next_beat = time.monotonic() + interval
    while True:
        if stop["how"] == "quick":
            break
        if stop["how"] == "graceful" and not drain["on"]:
            begin_drain()
        if drain["on"] and not connections:
            break
        deadline = next_beat
        if drain["grace_until"] is not None:
            deadline = min(deadline, drain["grace_until"])
        timeout = max(0.0, deadline - time.monotonic())
        for key, _ in selector.select(timeout):
            # A signal handled during this batch: a quick stop ends it, TERM stops accepting.
            if stop["how"] == "quick":
                break
            if stop["how"] == "graceful" and not drain["on"]:
                begin_drain()
            if key.data == "wake":
                try:
                    os.read(wake_r, 512)
                except OSError:
                    pass
            elif key.data == "accept":
                if drain["on"]:
                    continue
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                        continue
                    raise
                conn.setblocking(False)
                connections[conn] = Connection(conn)
                selector.register(conn, selectors.EVENT_READ, "conn")
            elif key.fileobj in connections:
                drive(connections[key.fileobj])
        now = time.monotonic()
        if drain["grace_until"] is not None and now >= drain["grace_until"]:
            drain["grace_until"] = None
            for connection in list(connections.values()):
                if connection.idle():
                    drive(connection, closing_idle=True)
        if now >= next_beat:
            beat()
            next_beat += interval
            if next_beat < time.monotonic():
                next_beat = time.monotonic() + interval
    if not drain["on"]:
        notifier.send(b"STOPPING=1")
    if stats_dir:
        stats = {
            "pid": os.getpid(),
            "beats": beats,
            "notify_queue_full": notifier.queue_full,
            "notify_dropped": notifier.dropped,
            "max_send_ms": round(notifier.max_send_ms, 3),
        }
        try:
            with open(os.path.join(stats_dir, "%d.json" % os.getpid()), "w") as f:
                json.dump(stats, f)
        except OSError:
            pass
    sys.exit(0)


if __name__ == "__main__":
    serve()
