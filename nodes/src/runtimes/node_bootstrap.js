// fnmesh nodejs runtime bootstrap.
//
// Run as: sh -c 'exec 3<&0 4>&1 </dev/null 1>&2; exec /usr/bin/node "$@"' sh \
//           node_bootstrap.js <task_root> <file.export>
// The wrapper moves the protocol to fds 3 (requests in) and 4 (responses out) and points fd 0 at
// /dev/null and fd 1 at the log pipe (fd 2), so console output never corrupts a frame.
// Frames: 4-byte big-endian length + UTF-8 JSON (see nodes/src/runtimes/protocol.rs). A result
// whose JSON is longer than the request's max_result_bytes is answered invalid_result instead.
// The node's first frame, {"env": {...}}, holds the function's secrets: it is read synchronously
// and put into process.env before the handler's module is loaded.
'use strict';

const fs = require('fs');
const net = require('net');
const path = require('path');

const PROTO_IN = 3;
const PROTO_OUT = 4;
const MAX_FRAME = 64 * 1024 * 1024;
const OK_WRAPPER = '{"ok":}'.length;

function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

function sendRaw(body) {
  const frame = Buffer.allocUnsafe(4 + Buffer.byteLength(body));
  frame.writeUInt32BE(frame.length - 4, 0);
  frame.write(body, 4, 'utf8');
  writeAll(PROTO_OUT, frame);
}

function send(obj) {
  sendRaw(JSON.stringify(obj));
}

function flushLogs(marker) {
  try {
    writeAll(2, Buffer.from(marker, 'latin1'));
  } catch (_) {
    // the handler may have closed fd 2; the node bounds its wait for the marker
  }
}

// Reads exactly n bytes from the (blocking) fd; null at EOF.
function readExact(fd, n) {
  const buf = Buffer.alloc(n);
  let off = 0;
  while (off < n) {
    let got;
    try {
      got = fs.readSync(fd, buf, off, n - off, null);
    } catch (e) {
      if (e.code === 'EAGAIN') continue;
      throw e;
    }
    if (got === 0) return null;
    off += got;
  }
  return buf;
}

// The node's init frame, or null at EOF.
function readInit() {
  const header = readExact(PROTO_IN, 4);
  if (header === null) return null;
  const len = header.readUInt32BE(0);
  if (len > MAX_FRAME) throw new Error('init frame too large');
  const body = readExact(PROTO_IN, len);
  return body === null ? null : JSON.parse(body.toString('utf8'));
}

function describe(err) {
  if (err instanceof Error) {
    return { type: err.name || 'Error', message: String(err.message).slice(0, 4096) };
  }
  let text;
  try {
    text = typeof err === 'string' ? err : JSON.stringify(err);
  } catch (_) {
    text = String(err);
  }
  return { type: typeof err, message: String(text).slice(0, 4096) };
}

function makeContext(ctx) {
  const deadlineMs = ctx.deadline_ms || 0;
  return {
    invocationId: ctx.invocation_id,
    functionName: ctx.function_name,
    functionVersion: ctx.function_version,
    memoryLimitMb: ctx.memory_limit_mb,
    deadlineMs,
    traceId: ctx.trace_id === undefined ? null : ctx.trace_id,
    getRemainingTimeInMillis() {
      return Math.max(0, deadlineMs - Date.now());
    },
  };
}

async function serve(fn, req) {
  const marker = '\n\x00fnmesh-end:' + req.id + '\x00\n';
  let result;
  try {
    result = await fn(req.payload, makeContext(req.context || {}));
  } catch (err) {
    console.error(err instanceof Error && err.stack ? err.stack : err);
    flushLogs(marker);
    send({ error: describe(err) });
    return;
  }
  let body;
  try {
    body = JSON.stringify({ ok: result === undefined ? null : result });
  } catch (err) {
    flushLogs(marker);
    send({
      error: {
        type: 'InvalidResult',
        message: 'result is not JSON-serialisable: ' + describe(err).message,
        kind: 'invalid_result',
      },
    });
    return;
  }
  const limit = req.max_result_bytes;
  const size = Buffer.byteLength(body) - OK_WRAPPER;
  if (Number.isInteger(limit) && size > limit) {
    body = null;
    flushLogs(marker);
    send({
      error: {
        type: 'InvalidResult',
        message: 'the result is ' + size + ' bytes of JSON, over the limit of ' + limit + ' bytes',
        kind: 'invalid_result',
      },
    });
    return;
  }
  flushLogs(marker);
  sendRaw(body);
}

function main() {
  const [taskRoot, handler] = process.argv.slice(2);
  const init = readInit();
  if (init === null) {
    process.exitCode = 1;
    return;
  }
  for (const [name, value] of Object.entries(init.env || {})) {
    process.env[name] = value;
  }
  let fn;
  try {
    const dot = handler.lastIndexOf('.');
    if (dot <= 0) throw new Error('handler ' + JSON.stringify(handler) + ' is not file.export');
    const mod = require(path.join(taskRoot, handler.slice(0, dot)));
    fn = mod[handler.slice(dot + 1)];
    if (typeof fn !== 'function') {
      throw new TypeError('handler ' + JSON.stringify(handler) + ' is not a function');
    }
  } catch (err) {
    console.error(err instanceof Error && err.stack ? err.stack : err);
    const d = describe(err);
    send({ init_error: d.type + ': ' + d.message });
    process.exitCode = 1;
    return;
  }

  const input = new net.Socket({ fd: PROTO_IN, readable: true, writable: false });
  let buffered = Buffer.alloc(0);
  let queue = Promise.resolve();
  input.on('data', (chunk) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    while (buffered.length >= 4) {
      const len = buffered.readUInt32BE(0);
      if (len > MAX_FRAME) {
        console.error('fnmesh: request frame too large');
        process.exit(2);
      }
      if (buffered.length < 4 + len) break;
      const req = JSON.parse(buffered.toString('utf8', 4, 4 + len));
      buffered = buffered.subarray(4 + len);
      queue = queue.then(() => serve(fn, req));
    }
  });
  input.on('end', () => queue.then(() => process.exit(0)));
  send({ ready: true });
}

main();
