// The page's cryptography runs here, off the page's thread, so the page stays responsive while
// a key is generated. The Go program (keyarc.wasm) sets globalThis.keyarcWasm; the page sends
// {id, fn, args} and gets {id, result} back. Private keys stay in this worker.
'use strict';

let api = null;
let failed = null;
const queue = [];

self.keyarcWasmReady = function () {
  api = self.keyarcWasm;
  self.postMessage({ ready: true });
  replayQueue();
};

function fail(msg) {
  failed = msg;
  self.postMessage({ ready: false, error: msg });
  replayQueue();
}

async function load() {
  try {
    importScripts('/web/wasm_exec.js');
  } catch (e) {
    fail('The page is not complete: its WebAssembly loader is missing (page not built: run make build).');
    return;
  }
  try {
    const resp = await fetch('/web/keyarc.wasm', { credentials: 'omit' });
    if (!resp.ok) {
      const text = (await resp.text()).trim();
      fail('The page could not load its cryptography (HTTP ' + resp.status + '): ' + text);
      return;
    }
    const go = new Go();
    const { instance } = await WebAssembly.instantiateStreaming(resp, go.importObject);
    go.run(instance);
  } catch (e) {
    fail('The page could not start its cryptography: ' + e);
  }
}

// The PKCS#12 file's two PBKDF2-HMAC-SHA-256 keys (600,000 rounds, as for recovered files) are
// derived here with WebCrypto, natively: in WebAssembly each takes several seconds. Each has its
// own 16-byte salt; PBES2 takes the password as UTF-8 (RFC 8018), as TextEncoder gives it.
const PFX_ITERATIONS = 600000;

async function pfxKeys(password) {
  const base = await crypto.subtle.importKey('raw', new TextEncoder().encode(password), 'PBKDF2', false, ['deriveBits']);
  const derive = async () => {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const bits = await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations: PFX_ITERATIONS }, base, 256);
    return { salt, key: new Uint8Array(bits) };
  };
  const [c, k] = await Promise.all([derive(), derive()]);
  return { iterations: PFX_ITERATIONS, certSalt: c.salt, certKey: c.key, keySalt: k.salt, keyKey: k.key };
}

async function handle(msg) {
  if (failed) {
    self.postMessage({ id: msg.id, result: { error: failed } });
    return;
  }
  if (!api) {
    queue.push(msg);
    return;
  }
  const f = api[msg.fn];
  let args = msg.args;
  let keys = null;
  if (msg.fn === 'pkcs12') {
    try {
      keys = await pfxKeys(String(args[3]));
    } catch (e) {
      self.postMessage({ id: msg.id, result: { error: 'This browser could not derive the PKCS#12 keys (WebCrypto PBKDF2): ' + e } });
      return;
    }
    args = [...args.slice(0, 5), keys];
  }
  const result = f ? f(...args) : { error: 'unknown function ' + msg.fn };
  if (keys) {
    keys.certKey.fill(0);
    keys.keyKey.fill(0);
  }
  const transfer = result && result.pfx ? [result.pfx.buffer] : [];
  self.postMessage({ id: msg.id, result }, transfer);
}

// One call at a time, in the order sent, though a PKCS#12 waits for WebCrypto.
let calls = Promise.resolve();
function replayQueue() {
  while (queue.length) {
    const msg = queue.shift();
    calls = calls.then(() => handle(msg));
  }
}
self.onmessage = function (ev) { calls = calls.then(() => handle(ev.data)); };
load();
