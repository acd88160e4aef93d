// Offline guard for the real OpenClaw gateway in tests (PROTOCOL.md §8).
//
// Preloaded into every Node process of a test gateway with
//   NODE_OPTIONS=--import=file:///…/guard.mjs
// (Node children inherit NODE_OPTIONS, so they are guarded too).
//
// 1. Refuses every non-loopback `net.Socket.prototype.connect`, `dns.lookup`
//    (callback and promise forms), `dns.resolve*` and `dgram` send/connect,
//    and logs each refusal to stderr ("[offline-guard] refused …") and, when
//    OPENCLAW_GUARD_LOG is set, appends it to that file.
//    Extra addresses that count as local (e.g. a netns bind address) can be
//    listed in OPENCLAW_GUARD_ALLOW_HOSTS (comma separated).
// 2. If OPENCLAW_TEST_PARENT_PID is set, polls it every second; once that
//    process is gone this process exits (a process-group leader SIGKILLs its
//    whole group), so a gateway never outlives `cargo test`.
// 3. TEST-ONLY PATCH: if OPENCLAW_TEST_TICK_INTERVAL_MS is set, rewrites the
//    gateway's hard-coded TICK_INTERVAL_MS (30000, not configurable) at module
//    load time, so `tick` events and hello-ok `policy.tickIntervalMs` use it.
import net from "node:net";
import dns from "node:dns";
import dgram from "node:dgram";
import fs from "node:fs";
import module from "node:module";

const TAG = "[offline-guard]";
const GUARD_LOG = process.env.OPENCLAW_GUARD_LOG || "";
const EXTRA_ALLOWED = new Set(
  (process.env.OPENCLAW_GUARD_ALLOW_HOSTS || "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean),
);

function log(line) {
  const msg = `${TAG} pid=${process.pid} ${line}\n`;
  try {
    process.stderr.write(msg);
  } catch {}
  if (GUARD_LOG) {
    try {
      fs.appendFileSync(GUARD_LOG, msg);
    } catch {}
  }
}

function isLoopbackHost(host) {
  if (host === undefined || host === null || host === "") return true; // defaults to localhost
  let h = String(host).trim().toLowerCase();
  if (h.startsWith("[") && h.endsWith("]")) h = h.slice(1, -1);
  if (h.endsWith(".")) h = h.slice(0, -1);
  if (EXTRA_ALLOWED.has(h)) return true;
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return true;
  if (/^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return true;
  return false;
}

function refusal(what, target, code = "ECONNREFUSED") {
  log(`${what} to ${target}`);
  const err = new Error(`${TAG} ${what} to ${target} refused (tests run offline)`);
  err.code = code;
  err.errno = code;
  err.syscall = what;
  return err;
}

// ---------------------------------------------------------------- net
const origConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  let opts = args[0];
  // net.connect()/tls.connect() pass an internal normalized array [options, cb].
  if (Array.isArray(opts)) opts = opts[0];
  let host;
  let port;
  let path;
  if (opts !== null && typeof opts === "object") {
    path = opts.path;
    host = opts.host ?? opts.hostname;
    port = opts.port;
  } else if (typeof opts === "string" && !/^\d+$/.test(opts)) {
    path = opts; // IPC / unix socket path
  } else {
    port = opts;
    host = typeof args[1] === "string" ? args[1] : undefined;
  }
  if (path === undefined && !isLoopbackHost(host)) {
    const err = refusal("net.connect", `${host}:${port}`);
    process.nextTick(() => this.destroy(err));
    return this;
  }
  return origConnect.apply(this, args);
};

// ---------------------------------------------------------------- dns
const origLookup = dns.lookup;
dns.lookup = function guardedLookup(hostname, options, callback) {
  if (!isLoopbackHost(hostname)) {
    const cb = typeof options === "function" ? options : callback;
    const err = refusal("dns.lookup", hostname, "ENOTFOUND");
    err.hostname = hostname;
    if (typeof cb === "function") process.nextTick(() => cb(err));
    return {};
  }
  return origLookup.call(this, hostname, options, callback);
};

if (dns.promises && typeof dns.promises.lookup === "function") {
  const origPLookup = dns.promises.lookup;
  dns.promises.lookup = function guardedPromiseLookup(hostname, options) {
    if (!isLoopbackHost(hostname)) {
      const err = refusal("dns.promises.lookup", hostname, "ENOTFOUND");
      err.hostname = hostname;
      return Promise.reject(err);
    }
    return origPLookup.call(this, hostname, options);
  };
}

// dns.resolve* always talk to a DNS server: refuse them all.
const RESOLVE_NAMES = [
  "resolve",
  "resolve4",
  "resolve6",
  "resolveAny",
  "resolveCaa",
  "resolveCname",
  "resolveMx",
  "resolveNaptr",
  "resolveNs",
  "resolvePtr",
  "resolveSoa",
  "resolveSrv",
  "resolveTxt",
  "reverse",
];
for (const name of RESOLVE_NAMES) {
  if (typeof dns[name] === "function") {
    dns[name] = function guardedResolve(hostname, ...rest) {
      const cb = rest.reverse().find((a) => typeof a === "function");
      const err = refusal(`dns.${name}`, hostname, "ECONNREFUSED");
      if (cb) process.nextTick(() => cb(err));
      return {};
    };
  }
  if (dns.promises && typeof dns.promises[name] === "function") {
    dns.promises[name] = function guardedPromiseResolve(hostname) {
      return Promise.reject(refusal(`dns.promises.${name}`, hostname, "ECONNREFUSED"));
    };
  }
}
for (const Resolver of [dns.Resolver, dns.promises && dns.promises.Resolver]) {
  if (!Resolver || !Resolver.prototype) continue;
  const isPromise = Resolver !== dns.Resolver;
  for (const name of RESOLVE_NAMES) {
    if (typeof Resolver.prototype[name] !== "function") continue;
    Resolver.prototype[name] = function guardedResolverMethod(hostname, ...rest) {
      const err = refusal(`dns.Resolver.${name}`, hostname, "ECONNREFUSED");
      if (isPromise) return Promise.reject(err);
      const cb = rest.reverse().find((a) => typeof a === "function");
      if (cb) process.nextTick(() => cb(err));
      return {};
    };
  }
}

// ---------------------------------------------------------------- dgram
const origSend = dgram.Socket.prototype.send;
dgram.Socket.prototype.send = function guardedSend(msg, ...rest) {
  let address;
  let connected = false;
  // send(msg, offset, length, port, address, cb) | send(msg, port, address, cb)
  // | send(msg, cb) on a connected socket.
  if (typeof rest[0] === "number" && typeof rest[1] === "number" && typeof rest[2] === "number") {
    address = rest[3];
  } else if (typeof rest[0] === "number" || typeof rest[0] === "string") {
    address = rest[1];
  } else {
    connected = true;
  }
  if (connected) {
    try {
      address = this.remoteAddress().address;
    } catch {
      address = undefined;
    }
  }
  if (typeof address === "function") address = undefined;
  if (!isLoopbackHost(address)) {
    const err = refusal("dgram.send", String(address), "ENETUNREACH");
    const cb = [...rest].reverse().find((a) => typeof a === "function");
    if (cb) process.nextTick(() => cb(err));
    return;
  }
  return origSend.call(this, msg, ...rest);
};
const origDgramConnect = dgram.Socket.prototype.connect;
dgram.Socket.prototype.connect = function guardedDgramConnect(port, address, cb) {
  const addr = typeof address === "function" ? undefined : address;
  if (!isLoopbackHost(addr)) {
    const err = refusal("dgram.connect", `${addr}:${port}`, "ENETUNREACH");
    const callback = typeof address === "function" ? address : cb;
    process.nextTick(() => (callback ? callback(err) : this.emit("error", err)));
    return;
  }
  return origDgramConnect.call(this, port, address, cb);
};

// ------------------------------------------------- parent-process watchdog
const parentPid = Number.parseInt(process.env.OPENCLAW_TEST_PARENT_PID || "", 10);
if (Number.isInteger(parentPid) && parentPid > 1) {
  let groupLeader = false;
  try {
    // /proc/self/stat: "pid (comm) state ppid pgrp ..." (comm may contain spaces)
    const stat = fs.readFileSync("/proc/self/stat", "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    groupLeader = Number.parseInt(fields[2], 10) === process.pid;
  } catch {}
  const timer = setInterval(() => {
    let alive = true;
    try {
      process.kill(parentPid, 0);
    } catch (e) {
      alive = e && e.code === "EPERM";
    }
    if (alive) return;
    log(`test parent pid ${parentPid} is gone; exiting${groupLeader ? " (killing process group)" : ""}`);
    if (groupLeader) {
      try {
        process.kill(-process.pid, "SIGKILL");
      } catch {}
    }
    process.exit(0);
  }, 1000);
  timer.unref();
}

// ------------------------------------------- test-only tick interval patch
const tickOverride = Number.parseInt(process.env.OPENCLAW_TEST_TICK_INTERVAL_MS || "", 10);
if (Number.isInteger(tickOverride) && tickOverride > 0) {
  if (typeof module.registerHooks === "function") {
    let patched = false;
    module.registerHooks({
      load(url, context, nextLoad) {
        const result = nextLoad(url, context);
        if (!patched && /\/server-constants-[^/]*\.m?js$/.test(url) && result.source != null) {
          const src =
            typeof result.source === "string" ? result.source : new TextDecoder().decode(result.source);
          const re = /const TICK_INTERVAL_MS = [0-9e.]+;/;
          if (re.test(src)) {
            patched = true;
            log(`test patch: TICK_INTERVAL_MS = ${tickOverride} in ${url}`);
            return { ...result, source: src.replace(re, `const TICK_INTERVAL_MS = ${tickOverride};`) };
          }
        }
        return result;
      },
    });
  } else {
    log("OPENCLAW_TEST_TICK_INTERVAL_MS ignored: module.registerHooks is not available in this Node");
  }
}
