"""A proxyless gRPC client driven over stdin, for tests/proxyless_grpc.rs.

Started with GRPC_XDS_BOOTSTRAP set, it opens ONE channel to the target
(`xds:///echo.default:9090`) and keeps it for its whole life, so every
change the test makes reaches it over xDS, never through a restart. It
compiles e2e/proto/echo.proto with grpc_tools at start (no generated code in
the repository).

Each stdin line is a JSON command; each answer is one JSON line on stdout:
  {"calls": N, "metadata": [[k, v], ...], "timeout": S}
      -> {"by": {"echo-1": n, ...}, "errors": {"UNAVAILABLE: ...": n}}
  {"quit": true} -> exits.
"""

import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def load_stubs(proto):
    out = tempfile.mkdtemp(prefix="sane-echo-stubs-")
    include = os.path.dirname(proto)
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main([
        "grpc_tools.protoc", "-I" + include, "-I" + well_known,
        "--python_out=" + out, "--grpc_python_out=" + out, proto,
    ])
    if code != 0:
        raise SystemExit("protoc failed on %s" % proto)
    sys.path.insert(0, out)
    import echo_pb2
    import echo_pb2_grpc
    return echo_pb2, echo_pb2_grpc


def main():
    target, proto = sys.argv[1], sys.argv[2]
    pb, pb_grpc = load_stubs(proto)
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.EchoStub(channel)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        by, errors = {}, {}
        metadata = [tuple(kv) for kv in cmd.get("metadata", [])]
        for _ in range(int(cmd.get("calls", 1))):
            try:
                reply = stub.Unary(pb.EchoRequest(message="hi"),
                                   metadata=metadata,
                                   timeout=float(cmd.get("timeout", 5)))
                name = getattr(reply, "from")
                by[name] = by.get(name, 0) + 1
            except grpc.RpcError as e:
                key = "%s: %s" % (e.code().name, e.details())
                errors[key] = errors.get(key, 0) + 1
        print(json.dumps({"by": by, "errors": errors}), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
