"""fnmesh python3 runtime bootstrap.

Run as: python3 -I -u python_bootstrap.py <task_root> <module.function>

Protocol (see nodes/src/runtimes/protocol.rs): frames are a 4-byte big-endian length followed
by UTF-8 JSON. The node writes requests on our fd 0 and reads responses on our fd 1; the logs
are fd 2. The node's first frame, {"env": {...}}, holds the function's secrets: they go into
os.environ before the handler's module is imported (and so into the environment of any process
it starts), never into our initial environment block (/proc/<pid>/environ). At start we move the protocol to private fds, point fd 0 at /dev/null and fd 1 at the
log pipe, so nothing the handler (or its children) prints can corrupt a frame. A result whose
JSON is longer than the request's `max_result_bytes` is answered `invalid_result` instead.
"""

import importlib
import os
import struct
import sys
import time

MAX_FRAME = 64 * 1024 * 1024
OK_WRAPPER = len(b'{"ok":}')


def _codec():
    """JSON through the C accelerator module `_json` directly: `import json` pulls in `re`,
    `enum` and friends, ~10 ms of every cold start that the handler may never need. Falls
    back to `json` where `_json` is missing or differs."""
    try:
        import _json

        class _ScanContext:
            pass

        def _no_constants(name):
            raise ValueError("unsupported JSON constant %s" % name)

        def _not_serialisable(obj):
            raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)

        ctx = _ScanContext()
        ctx.strict = True
        ctx.object_hook = None
        ctx.object_pairs_hook = None
        ctx.parse_float = float
        ctx.parse_int = int
        ctx.parse_constant = _no_constants
        ctx.memo = {}
        scan = _json.make_scanner(ctx)
        encode = _json.make_encoder(
            None, _not_serialisable, _json.encode_basestring_ascii, None, ":", ",", False, False, False
        )

        def loads(data):
            text = data.decode("utf-8")
            obj, end = scan(text, 0)
            if end != len(text):
                raise ValueError("trailing data after JSON value")
            return obj

        def dumps(obj):
            return "".join(encode(obj, 0))

        dumps({"probe": [1, 2.5, "x", None, True]})
        loads(b'{"probe":[1,2.5,"x",null,true]}')
        return loads, dumps
    except Exception:  # noqa: BLE001 - any surprise: use the standard module
        import json

        return json.loads, lambda obj: json.dumps(obj, allow_nan=False, separators=(",", ":"))


_loads, _dumps = _codec()


def _print_exc():
    import traceback  # lazily: it imports `re` and friends

    traceback.print_exc()


def _setup_fds():
    proto_in = os.dup(0)  # non-inheritable: child processes never see the protocol
    proto_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return os.fdopen(proto_in, "rb", buffering=65536), proto_out


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _send(fd, obj):
    body = _dumps(obj).encode()
    _write_all(fd, struct.pack(">I", len(body)) + body)


def _recv(inp):
    header = inp.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise ValueError("request frame too large")
    body = inp.read(length)
    if len(body) < length:
        return None
    return _loads(body)


def _take_env(inp):
    """Reads the node's init frame and adds its variables to os.environ; False on EOF."""
    init = _recv(inp)
    if init is None:
        return False
    for name, value in (init.get("env") or {}).items():
        os.environ[name] = value
    return True


def _flush_logs(marker):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the handler may have closed or replaced them
            pass
    try:
        _write_all(2, marker)
    except OSError:
        pass


class Context:
    """What the handler gets as its second argument."""

    __slots__ = (
        "invocation_id",
        "function_name",
        "function_version",
        "memory_limit_mb",
        "deadline_ms",
        "trace_id",
    )

    def __init__(self, ctx):
        self.invocation_id = ctx.get("invocation_id")
        self.function_name = ctx.get("function_name")
        self.function_version = ctx.get("function_version")
        self.memory_limit_mb = ctx.get("memory_limit_mb")
        self.deadline_ms = ctx.get("deadline_ms") or 0
        self.trace_id = ctx.get("trace_id")

    def get_remaining_time_in_millis(self):
        return max(0, self.deadline_ms - int(time.time() * 1000))

    def __repr__(self):
        return "Context(invocation_id=%r, function_name=%r, function_version=%r)" % (
            self.invocation_id,
            self.function_name,
            self.function_version,
        )


def _describe(exc):
    return {"type": type(exc).__name__, "message": str(exc)[:4096]}


def main():
    task_root, handler = sys.argv[1], sys.argv[2]
    inp, out = _setup_fds()
    if not _take_env(inp):
        return 1
    sys.dont_write_bytecode = True
    sys.path.insert(0, task_root)

    try:
        module_name, func_name = handler.rsplit(".", 1)
        module = importlib.import_module(module_name)
        func = getattr(module, func_name)
        if not callable(func):
            raise TypeError("handler %r is not callable" % handler)
    except BaseException as exc:  # noqa: BLE001 - any import failure is an init error
        _print_exc()
        _flush_logs(b"")
        desc = _describe(exc)
        _send(out, {"init_error": "%s: %s" % (desc["type"], desc["message"])})
        return 1
    _send(out, {"ready": True})

    while True:
        req = _recv(inp)
        if req is None:
            return 0
        marker = b"\n\x00fnmesh-end:" + req["id"].encode() + b"\x00\n"
        try:
            result = func(req["payload"], Context(req.get("context") or {}))
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: the sandbox stays usable
            _print_exc()
            _flush_logs(marker)
            _send(out, {"error": _describe(exc)})
            continue
        try:
            body = _dumps({"ok": result}).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            _flush_logs(marker)
            _send(
                out,
                {
                    "error": {
                        "type": "InvalidResult",
                        "message": "result is not JSON-serialisable: %s" % exc,
                        "kind": "invalid_result",
                    }
                },
            )
            continue
        limit = req.get("max_result_bytes")
        if isinstance(limit, int) and len(body) - OK_WRAPPER > limit:
            size = len(body) - OK_WRAPPER
            body = None
            _flush_logs(marker)
            _send(
                out,
                {
                    "error": {
                        "type": "InvalidResult",
                        "message": "the result is %d bytes of JSON, over the limit of %d bytes"
                        % (size, limit),
                        "kind": "invalid_result",
                    }
                },
            )
            continue
        _flush_logs(marker)
        _write_all(out, struct.pack(">I", len(body)) + body)


if __name__ == "__main__":
    sys.exit(main())
