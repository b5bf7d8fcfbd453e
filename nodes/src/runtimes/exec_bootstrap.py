"""fnmesh exec runtime bootstrap: kept warm in the sandbox, one handler process per invocation.

Run as: python3 -I -u exec_bootstrap.py <task_root> <relative executable>

Same framed protocol and fd layout as python_bootstrap.py; the secrets of the node's init frame
go into os.environ, which every handler process inherits. For each request the executable is
started with the payload JSON on its stdin; its stdout (parsed as JSON) is the result, its stderr
is copied to the logs and its last ~2 KiB go into the error message of a non-zero exit. A
result whose JSON is longer than the request's `max_result_bytes` is `invalid_result`.
"""

import json
import os
import selectors
import struct
import subprocess
import sys

MAX_FRAME = 64 * 1024 * 1024
MAX_STDOUT = 32 * 1024 * 1024
STDERR_TAIL = 2048


def _setup_fds():
    proto_in = os.dup(0)
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
    body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
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
    return json.loads(body)


def _take_env(inp):
    """Reads the node's init frame and adds its variables to os.environ; False on EOF."""
    init = _recv(inp)
    if init is None:
        return False
    for name, value in (init.get("env") or {}).items():
        os.environ[name] = value
    return True


def _error(kind, type_, message):
    return {"error": {"type": type_, "message": message, "kind": kind}}


def _capped(response, limit):
    """The response frame's body, or an invalid_result one when its result is over `limit`."""
    body = json.dumps(response, allow_nan=False, separators=(",", ":")).encode()
    size = len(body) - len(b'{"ok":}')
    if "ok" in response and isinstance(limit, int) and size > limit:
        message = "the result is %d bytes of JSON, over the limit of %d bytes" % (size, limit)
        body = json.dumps(_error("invalid_result", "InvalidResult", message)).encode()
    return body


def _run(path, cwd, payload):
    """Runs the handler once; returns the response frame object."""
    try:
        proc = subprocess.Popen(
            [path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            close_fds=True,
        )
    except OSError as exc:
        return _error("handler_error", "ExecError", "cannot execute handler: %s" % exc)

    sel = selectors.DefaultSelector()
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ)
    pending = memoryview(payload)
    stdout = bytearray()
    stdout_overflow = False
    tail = bytearray()

    while sel.get_map():
        for key, _ in sel.select():
            fd = key.fd
            if fd == stdin_fd:
                try:
                    n = os.write(fd, pending[:65536])
                    pending = pending[n:]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            if fd == proc.stdout.fileno():
                if len(stdout) + len(chunk) > MAX_STDOUT:
                    stdout_overflow = True
                else:
                    stdout += chunk
            else:
                try:
                    _write_all(2, chunk)
                except OSError:
                    pass
                tail += chunk
                if len(tail) > STDERR_TAIL:
                    del tail[: len(tail) - STDERR_TAIL]
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    code = proc.wait()

    if code != 0:
        how = "exited with status %d" % code if code > 0 else "was killed by signal %d" % -code
        text = tail.decode("utf-8", "replace").strip()
        message = "handler %s" % how
        if text:
            message += "; stderr: " + text
        return _error("handler_error", "HandlerExit", message)
    if stdout_overflow:
        return _error("invalid_result", "InvalidResult", "handler stdout exceeds %d bytes" % MAX_STDOUT)
    try:
        result = json.loads(stdout)
        json.dumps(result, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        shown = bytes(stdout[:200]).decode("utf-8", "replace")
        return _error(
            "invalid_result",
            "InvalidResult",
            "handler stdout is not JSON (%s): %r" % (exc, shown),
        )
    return {"ok": result}


def main():
    task_root, handler = sys.argv[1], sys.argv[2]
    inp, out = _setup_fds()
    if not _take_env(inp):
        return 1
    path = os.path.join(task_root, handler)
    if not os.path.isfile(path):
        print("fnmesh: handler %s not found in the function code" % handler, file=sys.stderr)
        _send(out, {"init_error": "handler %s not found" % handler})
        return 1
    if not os.access(path, os.X_OK):
        print("fnmesh: handler %s is not executable" % handler, file=sys.stderr)
        _send(out, {"init_error": "handler %s is not executable" % handler})
        return 1
    _send(out, {"ready": True})

    while True:
        req = _recv(inp)
        if req is None:
            return 0
        marker = b"\n\x00fnmesh-end:" + req["id"].encode() + b"\x00\n"
        payload = json.dumps(req["payload"], separators=(",", ":")).encode()
        body = _capped(_run(path, task_root, payload), req.get("max_result_bytes"))
        try:
            sys.stderr.flush()
            _write_all(2, marker)
        except OSError:
            pass
        _write_all(out, struct.pack(">I", len(body)) + body)


if __name__ == "__main__":
    sys.exit(main())
