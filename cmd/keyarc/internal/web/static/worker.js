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
  while (queue.length) handle(queue.shift());
};

function fail(msg) {
  failed = msg;
  self.postMessage({ ready: false, error: msg });
  while (queue.length) handle(queue.shift());
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

function handle(msg) {
  if (failed) {
    self.postMessage({ id: msg.id, result: { error: failed } });
    return;
  }
  if (!api) {
    queue.push(msg);
    return;
  }
  const f = api[msg.fn];
  const result = f ? f(...msg.args) : { error: 'unknown function ' + msg.fn };
  const transfer = result && result.pfx ? [result.pfx.buffer] : [];
  self.postMessage({ id: msg.id, result }, transfer);
}

self.onmessage = function (ev) { handle(ev.data); };
load();
