"""The JavaScript every request's context runs before the site's script.

It takes the bridge (a Python callable) out of the global object, so the
script only sees `fazt.kv`, `fazt.env` and `console`, and it returns the `step` function
that the engine calls: `step(requestJson)` runs the handler and answers a
JSON description of the response (status, headers) followed by a newline and
the body as it is (the body is not escaped into JSON and parsed back: a 4 KiB
answer cost more that way than running the handler), or PENDING when the
handler returned a promise; `step()` then answers once the engine has run the
pending jobs. The description starts with the body's length in UTF-16 units and a space:
the binding hands a string to Python as C text, so a NUL in the body ends it early (and
a lone surrogate cannot be handed over at all); then `step(true)` answers again with the
body as JSON text (lone surrogates made U+FFFD, as an encoder for the web makes them),
and `step(false)` lets go of a large body the engine read whole.
The builtins it relies on (JSON, String) are captured before the script
runs, so a script that overwrites them only breaks itself.

Its functions are named `__fazt_*`, so a stack trace tells the prelude's frames
from the script's and an error is reported at the script's own line.
`fazt.env` is read from the bridge at its first use in each request, so a
context kept warm between requests sees a secret changed meanwhile.
"""

PENDING = "pending"  # never valid JSON, so never a packed response

PRELUDE = r"""
(function () {
  "use strict";
  const host = globalThis.__fazt_bridge;
  delete globalThis.__fazt_bridge;
  // The engine writes the CPU clock's callable here before each warm request (engine.py):
  // a plain value a script can neither delete nor turn into a setter.
  Object.defineProperty(globalThis, "__fazt_clock", { value: undefined, writable: true,
                                                     enumerable: false, configurable: false });
  const parse = JSON.parse, stringify = JSON.stringify, toText = String;
  const apply = Reflect.apply, wellFormed = String.prototype.toWellFormed;
  const jsonish = /^\s*[\[{]/;  // made once: a literal is a new RegExp at every request
  const errorTypes = { TypeError: TypeError, RangeError: RangeError, Error: Error };

  function __fazt_call(op, args) {
    const answer = parse(host(op, stringify(args)));
    if (answer.error !== undefined) {
      throw new (errorTypes[answer.type] || Error)(answer.error);
    }
    return answer.value;
  }

  function __fazt_key(key) {
    if (typeof key !== "string") throw new TypeError("fazt.kv: a key must be a string.");
    return key;
  }

  const kv = Object.freeze({
    get: function __fazt_kv_get(key) { return __fazt_call("kv.get", [__fazt_key(key)]); },
    set: function __fazt_kv_set(key, value) {
      if (value === undefined) {
        throw new TypeError("fazt.kv.set: the value is undefined; use fazt.kv.delete.");
      }
      const json = stringify(value);
      if (json === undefined) {
        throw new TypeError("fazt.kv.set: the value cannot be stored as JSON.");
      }
      __fazt_call("kv.set", [__fazt_key(key), json]);
    },
    delete: function __fazt_kv_delete(key) { return __fazt_call("kv.delete", [__fazt_key(key)]); },
    list: function __fazt_kv_list(prefix) {
      if (prefix === undefined) prefix = "";
      if (typeof prefix !== "string") {
        throw new TypeError("fazt.kv.list: the prefix must be a string.");
      }
      return __fazt_call("kv.list", [prefix]);
    },
  });

  function __fazt_show(value) {
    if (typeof value === "string") return value;
    if (value instanceof Error) {
      return value.stack ? toText(value) + "\n" + value.stack : toText(value);
    }
    try {
      const json = stringify(value);
      return json === undefined ? toText(value) : json;
    } catch (e) {
      return toText(value);
    }
  }

  function logger(level) {
    return function __fazt_console() {
      const parts = [];
      for (let i = 0; i < arguments.length; i++) parts.push(__fazt_show(arguments[i]));
      __fazt_call("log", [level, parts.join(" ").slice(0, 4000)]);
    };
  }

  let env = null;  // this request's secrets, fetched at first use

  function __fazt_env() {
    if (env === null) env = Object.freeze(__fazt_call("env", []));
    return env;
  }

  globalThis.fazt = Object.freeze({ kv: kv, get env() { return __fazt_env(); } });
  globalThis.console = Object.freeze({
    log: logger("log"), info: logger("info"), debug: logger("debug"),
    warn: logger("warn"), error: logger("error"),
  });

  function describe(value) {
    if (value === null) return "null";
    if (Array.isArray(value)) return "an array";
    if (value === undefined) return "undefined";
    return typeof value === "object" ? "an object" : "a " + typeof value;
  }

  function __fazt_pack(result) {
    if (result === null || typeof result !== "object" || Array.isArray(result)) {
      return stringify({ problem: "handler returned " + describe(result) +
                                  "; it must return {status, headers, body}." });
    }
    const out = { status: result.status === undefined ? 200 : result.status, headers: {} };
    const headers = result.headers;
    if (headers !== undefined && headers !== null) {
      if (typeof headers !== "object" || Array.isArray(headers)) {
        return stringify({ problem: "handler returned headers that are not an object." });
      }
      for (const name of Object.keys(headers)) {
        const value = headers[name];  // several cookies: an array, one Set-Cookie line each
        out.headers[name] = Array.isArray(value) && toText(name).toLowerCase() === "set-cookie"
          ? value.map(toText) : toText(value);
      }
    }
    let body = result.body;
    if (body === undefined) {
      body = "";
    } else if (typeof body !== "string") {
      let json;
      try { json = stringify(body); } catch (e) {
        return stringify({ problem: "the body cannot be sent as JSON: " + toText(e.message) });
      }
      if (json === undefined) return stringify({ problem: "the body cannot be sent as JSON." });
      body = json;
      out.json = true;
    }
    // JSON holds no raw newline: the body follows the first. Joined, not added with +:
    // quickjs-ng makes a rope of a long sum, which the binding cannot hand to Python.
    sentHead = body.length + " " + stringify(out);
    sentBody = body;
    return [sentHead, body].join("\n");
  }

  let settled = null;
  let sentHead = "", sentBody = "";  // the last answer, until the engine read it whole

  function __fazt_thrown(e) {
    // The binding reads what a script threw as text. A value that has none (a symbol, an
    // object without a prototype, one whose toString throws, a proxy) came out as a bare
    // failure, which reads as running out of memory; it is thrown as its description.
    if (e === null || (typeof e !== "object" && typeof e !== "symbol") || e instanceof Error) {
      return e;
    }
    try {
      const text = toText(e);
      if (typeof e === "symbol") return text;
      e.stack;  // the binding reads it too
      return e;
    } catch (_) {
      return "the script threw a value that cannot be read as text";
    }
  }

  function __fazt_run(requestJson) {
    if (requestJson === true || requestJson === false) {  // see the module's docstring
      const again = requestJson
        ? [sentHead, stringify(apply(wellFormed, sentBody, []))].join("\n") : "";
      sentHead = sentBody = "";
      return again;
    }
    if (requestJson === undefined) {
      if (settled === null) {
        return stringify({ problem: "handler returned a promise that never settled." });
      }
      if ("error" in settled) throw settled.error;
      return __fazt_pack(settled.value);
    }
    try { globalThis.__fazt_clock = undefined; } catch (e) { /* made read-only: engine.py */ }
    settled = null;  // a warm context serves many requests: none sees another's promise
    env = null;  // and reads the secrets as they are now
    const request = parse(requestJson);
    const type = toText(request.headers["content-type"] || "").toLowerCase();
    if (type.indexOf("json") >= 0 || (request.body !== "" && jsonish.test(request.body))) {
      try { request.json = parse(request.body); } catch (e) { /* not JSON after all */ }
    }
    if (typeof handler !== "function") {
      return stringify({ problem: "api/main.js must define function handler(request)." });
    }
    const result = handler(request);
    if (result !== null && typeof result === "object" && typeof result.then === "function") {
      result.then(function (value) { settled = { value: value }; },
                  function (error) { settled = { error: error }; });
      return "pending";
    }
    return __fazt_pack(result);
  }

  return function __fazt_step(requestJson) {
    try { return __fazt_run(requestJson); } catch (e) { throw __fazt_thrown(e); }
  };
})()
"""
