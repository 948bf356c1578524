#!/usr/bin/env python3
"""A GPU probe worker for arbiter (`cargo xtask gpu-check`); python3 only, no pip packages.

Run as an arbiter worker (`arbiter --gpus auto -- python3 scripts/gpu_probe.py`), it:

1. reads its slot (ARBITER_WORKER_SLOT) and its devices (the variable named by ARBITER_GPU_ENV,
   default CUDA_VISIBLE_DEVICES);
2. initialises the CUDA driver through ctypes and libcuda.so.1 (cuInit, cuDeviceGetCount,
   cuDeviceGet(0), cuDeviceGetPCIBusId, cuDeviceGetName) and retains device 0's primary context,
   so that `nvidia-smi --query-compute-apps` lists the process on the GPU it really uses;
3. writes that as JSON to $GPU_PROBE_DIR/slot-SLOT-pid-PID.json (atomically) and to stdout
   with --once;
4. sends READY=1 to NOTIFY_SOCKET, then serves the same JSON over HTTP on the inherited
   listener (fd 3, LISTEN_FDS) until it is stopped; without a listener it sleeps.

--dry-run skips CUDA when libcuda.so.1 cannot be loaded and says so in the report ("cuda":
{"skipped": ...}), so the probe can be exercised on a machine without a GPU. Without it, a
missing driver is reported as an error ("cuda": {"error": ...}), which the check counts as a
failure. --once prints the report and exits instead of serving.
"""

import ctypes
import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

CUDA_SUCCESS = 0


class CudaError(Exception):
    """A CUDA driver call failed."""


def _check(cuda, rc, what):
    if rc == CUDA_SUCCESS:
        return
    message = ctypes.c_char_p()
    try:
        cuda.cuGetErrorString(rc, ctypes.byref(message))
        text = message.value.decode() if message.value else "unknown"
    except (AttributeError, OSError):
        text = "unknown"
    raise CudaError(f"{what} failed: CUDA error {rc} ({text})")


def load_cuda():
    """libcuda.so.1, or None when the driver library is not there."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def probe_cuda(cuda):
    """What the CUDA driver shows this process: device count, device 0's PCI bus id and name."""
    _check(cuda, cuda.cuInit(0), "cuInit(0)")
    version = ctypes.c_int()
    _check(cuda, cuda.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
    count = ctypes.c_int()
    _check(cuda, cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    report = {"driver_version": version.value, "device_count": count.value}
    if count.value < 1:
        return report
    device = ctypes.c_int()
    _check(cuda, cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet(0)")
    bus_id = ctypes.create_string_buffer(64)
    _check(cuda, cuda.cuDeviceGetPCIBusId(bus_id, 64, device), "cuDeviceGetPCIBusId")
    name = ctypes.create_string_buffer(256)
    _check(cuda, cuda.cuDeviceGetName(name, 256, device), "cuDeviceGetName")
    context = ctypes.c_void_p()
    _check(
        cuda,
        cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),
        "cuDevicePrimaryCtxRetain",
    )
    report["bus_id_0"] = bus_id.value.decode()
    report["name_0"] = name.value.decode()
    return report


def build_report(dry_run):
    """This worker's view: identity, the devices it was given, and what CUDA shows it."""
    variable = os.environ.get("ARBITER_GPU_ENV", "CUDA_VISIBLE_DEVICES")
    slot = os.environ.get("ARBITER_WORKER_SLOT")
    report = {
        "pid": os.getpid(),
        "slot": int(slot) if slot is not None and slot.isdigit() else None,
        "gpu_env": variable,
        "visible": os.environ.get(variable),
        "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"),
    }
    cuda = load_cuda()
    if cuda is None:
        if dry_run:
            report["cuda"] = {"skipped": "dry run: libcuda.so.1 not found"}
        else:
            report["cuda"] = {"error": "libcuda.so.1 not found (no NVIDIA driver)"}
        return report
    try:
        report["cuda"] = probe_cuda(cuda)
    except CudaError as error:
        report["cuda"] = {"error": str(error)}
    return report


def write_report(report):
    """Atomically writes the report to $GPU_PROBE_DIR, if that is set."""
    directory = os.environ.get("GPU_PROBE_DIR")
    if not directory:
        return
    name = f"slot-{report['slot']}-pid-{report['pid']}.json"
    temp = os.path.join(directory, f".{name}.tmp")
    with open(temp, "w", encoding="utf-8") as out:
        json.dump(report, out)
    os.replace(temp, os.path.join(directory, name))


def notify(message):
    """sd_notify: one datagram to NOTIFY_SOCKET ('@' names an abstract socket)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as error:
            print(f"gpu_probe: notify failed: {error}", file=sys.stderr)


def serve(report):
    """Answers every GET with the report on the inherited fd 3, until stopped."""
    body = (json.dumps(report) + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
    server.serve_forever()


def main(argv):
    flags = set(argv[1:])
    unknown = flags - {"--dry-run", "--once"}
    if unknown:
        print(f"gpu_probe: unknown argument(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    report = build_report("--dry-run" in flags)
    if "--once" in flags:
        print(json.dumps(report))
        return 0
    write_report(report)
    notify("READY=1")
    if int(os.environ.get("LISTEN_FDS", "0") or 0) >= 1:
        serve(report)
    else:
        while True:
            time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
