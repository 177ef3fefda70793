#!/usr/bin/env python3
"""An independent gRPC client for Faultline: stock grpcio, grpcio-health-checking and
grpcio-reflection (none of the project's own code), checking what any load balancer or
health checker relies on.

Checks, one line each on stdout, in this order:

  (a) Check ""                    -> SERVING (the agent itself)
  (d) Watch FAILED-TO-BE          -> first status SERVING; the script then prints the
                                     line "watching" and reads until NOT_SERVING. The
                                     caller publishes the FAILED verdict only after it
                                     has read "watching", so no sleep is needed here.
  (b) Check --failed              -> NOT_SERVING, Check --serving -> SERVING
  (c) Check --unknown             -> gRPC status NOT_FOUND
  (e) Watch --unknown             -> SERVICE_UNKNOWN, and the stream stays open
  (f) List                        -> "" and every name, with their statuses
  (g) reflection                  -> lists faultline.v1.Verdicts and grpc.health.v1.Health,
                                     and resolves faultline.v1.Verdicts' methods

The first failure prints "FAIL: ..." and exits 1.

Run by agent/tests/python_client.rs with the venv that `cargo xtask setup` makes:

  .venv/bin/python tests/python/health_client.py --target 127.0.0.1:7431 \\
      --failed rack/dc-a/c1/r1 --serving rack/dc-a/c1/r2 --serving site/dc-a

Watch mode (the namespace lab's independent subscriber, `cargo xtask lab`) checks
nothing: it keeps one Watch stream per (target, service), each on its own thread, and
prints every status it receives as one JSON line with the time it arrived:

  {"mono": 1234.5678, "wall": 1760000000.123, "target": "a11-1",
   "service": "rack/dc-a/c1/r1", "status": "NOT_SERVING"}

`mono` is time.monotonic() (CLOCK_MONOTONIC, the clock the lab's own timestamps use).
A broken stream is reopened after 0.2 s; the process ends after --watch-seconds.

  .venv/bin/python tests/python/health_client.py --watch-target a11-1=unix:/tmp/a.sock \\
      --watch-service site/dc-a --watch-service rack/dc-a/c1/r1 --watch-seconds 600
"""

import argparse
import json
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf.descriptor_pool import DescriptorPool

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# Every unary call's deadline, seconds.
RPC_TIMEOUT = 5.0


class CheckFailed(Exception):
    pass


def status_name(status):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def ok(line):
    print(f"ok: {line}", flush=True)


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def check(stub, name):
    return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=RPC_TIMEOUT).status


# --- List, for a grpcio-health-checking whose stub predates the List method ----------


def _varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(data):
    """(field number, wire type, value) of a protobuf message; value is an int for
    varints and bytes for length-delimited fields (the only two kinds used here)."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _decode_list_response(data):
    """HealthListResponse { map<string, HealthCheckResponse> statuses = 1; } -> dict."""
    statuses = {}
    for number, wire, entry in _fields(data):
        if number != 1 or wire != 2:
            continue
        key, status = "", 0
        for n, w, v in _fields(entry):
            if n == 1 and w == 2:
                key = v.decode("utf-8")
            elif n == 2 and w == 2:
                for n2, w2, v2 in _fields(v):
                    if n2 == 1 and w2 == 0:
                        status = v2
        statuses[key] = status
    return statuses


def list_statuses(channel, stub):
    """{name: status} from grpc.health.v1.Health/List, and how it was called."""
    if hasattr(stub, "List"):
        response = stub.List(health_pb2.HealthListRequest(), timeout=RPC_TIMEOUT)
        return {k: v.status for k, v in response.statuses.items()}, "HealthStub.List"
    call = channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=lambda _: b"",
        response_deserializer=_decode_list_response,
    )
    return call(None, timeout=RPC_TIMEOUT), "generic call (stub has no List)"


# --- the checks ------------------------------------------------------------------------


def watch_until_not_serving(stub, name, timeout):
    """(d): the first status must be SERVING; then "watching"; then NOT_SERVING."""
    started = time.monotonic()
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
    try:
        first = next(stream).status
        expect(
            first == SERVING,
            f"Watch {name!r}: first status {status_name(first)}, want SERVING "
            "(the caller publishes it HEALTHY first)",
        )
        print("watching", flush=True)
        seen = [status_name(first)]
        for response in stream:
            seen.append(status_name(response.status))
            if response.status == NOT_SERVING:
                ok(
                    f"(d) Watch {name!r}: {' -> '.join(seen)} "
                    f"({time.monotonic() - started:.2f}s)"
                )
                return
        raise CheckFailed(f"Watch {name!r}: the stream ended after {seen}, before NOT_SERVING")
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CheckFailed(f"Watch {name!r}: no NOT_SERVING within {timeout:.0f}s") from e
        raise
    finally:
        stream.cancel()


def watch_unknown_stays_open(stub, name, hold):
    """(e): SERVICE_UNKNOWN at once, then nothing, and no end of stream, for `hold` s."""
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=RPC_TIMEOUT + hold)
    try:
        first = next(stream).status
        expect(
            first == SERVICE_UNKNOWN,
            f"Watch {name!r}: first status {status_name(first)}, want SERVICE_UNKNOWN",
        )
        # Wait on the call as a future: it must not complete (no status, no end of
        # stream) within `hold`; its deadline is later than that.
        opened = time.monotonic()
        done = []
        stream.add_done_callback(lambda call: done.append(time.monotonic() - opened))
        deadline = opened + hold
        while time.monotonic() < deadline and not done:
            time.sleep(0.05)
        if done:
            raise CheckFailed(
                f"Watch {name!r}: the stream ended {done[0]:.2f}s after SERVICE_UNKNOWN "
                f"({stream.code()}: {stream.details()!r}); the spec keeps it open"
            )
        ok(f"(e) Watch {name!r}: SERVICE_UNKNOWN, stream still open after {hold:.1f}s")
    finally:
        stream.cancel()


def reflection(channel):
    """(g): the services over reflection, and Verdicts resolved through descriptors."""
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    for want in ("faultline.v1.Verdicts", "grpc.health.v1.Health"):
        expect(want in services, f"reflection lists {sorted(services)}, without {want}")
    # Resolving the service pulls its file and its imports (google/protobuf/timestamp)
    # through FileContainingSymbol / FileByFilename.
    pool = DescriptorPool(db)
    verdicts = pool.FindServiceByName("faultline.v1.Verdicts")
    methods = sorted(m.name for m in verdicts.methods)
    expect(
        {"Watch", "Snapshot"} <= set(methods),
        f"reflection: faultline.v1.Verdicts has methods {methods}",
    )
    watch = verdicts.methods_by_name["Watch"]
    expect(
        watch.server_streaming and watch.output_type.full_name == "faultline.v1.WatchEvent",
        "reflection: faultline.v1.Verdicts/Watch is not a stream of faultline.v1.WatchEvent",
    )
    ok(
        f"(g) reflection lists {', '.join(sorted(services))}; "
        f"faultline.v1.Verdicts resolves with {', '.join(methods)}"
    )


def run(args):
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"no connection to {args.target} within {RPC_TIMEOUT:.0f}s")
        stub = health_pb2_grpc.HealthStub(channel)

        status = check(stub, "")
        expect(status == SERVING, f'Check "": {status_name(status)}, want SERVING')
        ok('(a) Check "": SERVING')

        watch_until_not_serving(stub, args.failed, args.watch_timeout)

        status = check(stub, args.failed)
        expect(
            status == NOT_SERVING,
            f"Check {args.failed!r}: {status_name(status)}, want NOT_SERVING",
        )
        for name in args.serving:
            status = check(stub, name)
            expect(status == SERVING, f"Check {name!r}: {status_name(status)}, want SERVING")
        ok(f"(b) Check {args.failed!r}: NOT_SERVING; {', '.join(map(repr, args.serving))}: SERVING")

        try:
            status = check(stub, args.unknown)
            raise CheckFailed(
                f"Check {args.unknown!r}: {status_name(status)}, want the gRPC status NOT_FOUND"
            )
        except grpc.RpcError as e:
            expect(
                e.code() == grpc.StatusCode.NOT_FOUND,
                f"Check {args.unknown!r}: {e.code()} ({e.details()!r}), want NOT_FOUND",
            )
            ok(f"(c) Check {args.unknown!r}: NOT_FOUND ({e.details()})")

        watch_unknown_stays_open(stub, args.unknown, args.hold)

        statuses, how = list_statuses(channel, stub)
        want = {"": SERVING, args.failed: NOT_SERVING}
        want.update((name, SERVING) for name in args.serving)
        for name, status in want.items():
            expect(name in statuses, f"List ({how}) lacks {name!r}: {sorted(statuses)}")
            expect(
                statuses[name] == status,
                f"List: {name!r} is {status_name(statuses[name])}, want {status_name(status)}",
            )
        expect(args.unknown not in statuses, f"List includes the unknown {args.unknown!r}")
        ok(f"(f) List ({how}): {len(statuses)} services, with {', '.join(map(repr, want))}")

        reflection(channel)


# --- watch mode -------------------------------------------------------------------------

# Pause before a broken Watch stream is reopened, seconds.
WATCH_RETRY = 0.2

_print_lock = threading.Lock()


def emit(target, service, status):
    line = json.dumps(
        {
            "mono": time.monotonic(),
            "wall": time.time(),
            "target": target,
            "service": service,
            "status": status_name(status),
        }
    )
    with _print_lock:
        print(line, flush=True)


def watch_forever(channel, target, service, deadline):
    """One Watch stream, reopened whenever it breaks, until `deadline`."""
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        stream = stub.Watch(
            health_pb2.HealthCheckRequest(service=service),
            timeout=max(1.0, deadline - time.monotonic()),
        )
        try:
            for response in stream:
                emit(target, service, response.status)
        except grpc.RpcError:
            pass
        finally:
            stream.cancel()
        time.sleep(WATCH_RETRY)


def watch(args):
    services = list(args.watch_service)
    if args.watch_services_file:
        with open(args.watch_services_file, encoding="utf-8") as f:
            services += [line.strip() for line in f if line.strip()]
    if not services:
        print("FAIL: --watch-target needs --watch-service or --watch-services-file", flush=True)
        return 2
    deadline = time.monotonic() + args.watch_seconds
    options = [("grpc.enable_http_proxy", 0)]
    channels, threads = [], []
    for spec in args.watch_target:
        label, _, address = spec.partition("=")
        if not address:
            print(f"FAIL: --watch-target {spec!r} is not LABEL=TARGET", flush=True)
            return 2
        # One channel (one HTTP/2 connection) per target, one thread per stream. Over
        # a unix: socket grpcio's default :authority is the socket path, which an
        # HTTP/2 server rightly refuses (RST_STREAM PROTOCOL_ERROR): name a host.
        channel_options = list(options)
        if address.startswith("unix:"):
            channel_options.append(("grpc.default_authority", "localhost"))
        channel = grpc.insecure_channel(address, options=channel_options)
        channels.append(channel)
        for service in services:
            t = threading.Thread(
                target=watch_forever, args=(channel, label, service, deadline), daemon=True
            )
            t.start()
            threads.append(t)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for c in channels:
        c.close()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="HOST:PORT of the gRPC server")
    parser.add_argument(
        "--failed",
        help="an entity that is SERVING at first and that the caller fails once it "
        'reads "watching"',
    )
    parser.add_argument(
        "--serving",
        action="append",
        default=[],
        help="an entity that stays SERVING (repeatable)",
    )
    parser.add_argument(
        "--unknown", default="rack/dc-z/c9/r9", help="a name that is not in the topology"
    )
    parser.add_argument(
        "--watch-timeout",
        type=float,
        default=20.0,
        help="seconds (d) waits for NOT_SERVING",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=1.0,
        help="seconds (e) requires the unknown name's Watch to stay open",
    )
    parser.add_argument(
        "--watch-target",
        action="append",
        default=[],
        help="watch mode: LABEL=TARGET (grpc target, e.g. unix:/path or HOST:PORT); repeatable",
    )
    parser.add_argument(
        "--watch-service", action="append", default=[], help="watch mode: a service name"
    )
    parser.add_argument(
        "--watch-services-file", help="watch mode: a file of service names, one a line"
    )
    parser.add_argument(
        "--watch-seconds", type=float, default=600.0, help="watch mode: how long to run"
    )
    args = parser.parse_args()
    if args.watch_target:
        return watch(args)
    if not args.target or not args.failed:
        parser.error("--target and --failed are required (or --watch-target for watch mode)")
    try:
        run(args)
    except CheckFailed as e:
        print(f"FAIL: {e}", flush=True)
        return 1
    except grpc.RpcError as e:
        print(f"FAIL: unexpected gRPC error {e.code()}: {e.details()!r}", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
