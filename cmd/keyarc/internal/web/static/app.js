// The enrollment page: form handling, the calls to the appliance's API, and the downloads. The
// cryptography runs in worker.js (Go compiled to WebAssembly). Nothing is stored in the browser
// (no cookies, no web storage, no database); the secret fields are cleared once
// they are used.
'use strict';

(function () {
  const MIN_PASSWORD = 12;
  // The built-in templates; GET /api/v1/templates may rename or remove them.
  const KINDS = {
    encryption: { template: 'smime-encryption', label: 'encryption' },
    signing: { template: 'smime-signature', label: 'signing' },
  };

  const $ = (id) => document.getElementById(id);
  const form = $('enroll');
  const submit = $('submit');
  // Timings of the last run, in milliseconds, for whoever measures the page.
  const timings = {};
  window.keyarcTimings = timings;

  function showError(msg) {
    const el = $('error');
    el.textContent = msg;
    el.hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
    $('error').textContent = '';
  }

  // Browsers without what the page needs get a clear message and no form.
  function unsupported() {
    const missing = [];
    if (!(window.crypto && typeof window.crypto.getRandomValues === 'function')) missing.push('WebCrypto (secure random numbers)');
    if (typeof WebAssembly !== 'object' || typeof WebAssembly.instantiateStreaming !== 'function') missing.push('WebAssembly');
    if (typeof Worker !== 'function') missing.push('Web Workers');
    // The PKCS#12 file's keys are derived with it after the enrollment: checked before.
    if (!(window.crypto && window.crypto.subtle && typeof window.crypto.subtle.deriveBits === 'function')) missing.push('WebCrypto key derivation (PBKDF2)');
    if (!window.isSecureContext) missing.push('a secure (HTTPS) connection');
    return missing;
  }

  const missing = unsupported();
  if (missing.length) {
    const el = $('unsupported');
    el.textContent = 'This browser cannot make your key here: it lacks ' + missing.join(', ') +
      '. Use a current Firefox, Chromium, Chrome, Edge or Safari, or ask your administrator for another way to enroll.';
    el.hidden = false;
    form.hidden = true;
    return;
  }

  // The worker and its calls.
  const worker = new Worker('/web/worker.js');
  let nextID = 1;
  const pending = new Map();
  let workerReady = false;
  worker.onmessage = (ev) => {
    const m = ev.data;
    if ('ready' in m) {
      if (m.ready) {
        workerReady = true;
        updateSubmit();
      } else {
        showError(m.error);
        submit.textContent = 'Unavailable';
      }
      return;
    }
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.result && m.result.error) p.reject(new Error(m.result.error));
    else p.resolve(m.result);
  };
  worker.onerror = (ev) => {
    showError('The page could not start its cryptography: ' + (ev.message || 'worker failed'));
  };
  function call(fn, ...args) {
    return new Promise((resolve, reject) => {
      const id = nextID++;
      pending.set(id, { resolve, reject });
      worker.postMessage({ id, fn, args });
    });
  }

  // A link an admin sent may carry the mailbox: /?mailbox=alice@example.org
  const params = new URLSearchParams(window.location.search);
  if (params.get('mailbox')) $('mailbox').value = params.get('mailbox');

  // The templates the appliance offers, when it says.
  let templates = null;
  fetch('/api/v1/templates', { credentials: 'omit' })
    .then((r) => (r.ok ? r.json() : null))
    .then((list) => {
      if (!Array.isArray(list)) return;
      templates = {};
      for (const t of list) templates[t.name] = t;
      for (const [kind, k] of Object.entries(KINDS)) {
        if (!templates[k.template]) {
          $('kind-' + kind).disabled = true;
          $('kind-both').disabled = true;
        }
      }
    })
    .catch(() => {});

  function kinds() {
    const v = form.elements.kind.value;
    return v === 'both' ? ['encryption', 'signing'] : [v];
  }

  function onKind() {
    const ks = kinds();
    $('code-encryption-row').hidden = !ks.includes('encryption');
    $('code-signing-row').hidden = !ks.includes('signing');
    $('escrow-notice').hidden = !ks.includes('encryption');
  }
  for (const r of form.querySelectorAll('input[name=kind]')) r.addEventListener('change', onKind);
  onKind();

  // Password rules and a strength hint: a rough estimate of the password's entropy.
  function strength(pw) {
    let pool = 0;
    if (/[a-z]/.test(pw)) pool += 26;
    if (/[A-Z]/.test(pw)) pool += 26;
    if (/[0-9]/.test(pw)) pool += 10;
    if (/[^a-zA-Z0-9]/.test(pw)) pool += 33;
    let bits = Math.round(pw.length * Math.log2(Math.max(pool, 1)));
    if (/^(.)\1*$/.test(pw)) bits = 4;
    return bits;
  }
  function passwordProblem() {
    const pw = $('password').value;
    const mailbox = $('mailbox').value.trim().toLowerCase();
    if ([...pw].length < MIN_PASSWORD) return 'The password must be at least ' + MIN_PASSWORD + ' characters long.';
    if (mailbox && pw.toLowerCase().includes(mailbox)) return 'The password must not contain your e-mail address.';
    // PKCS#12 encodes passwords as UCS-2 (RFC 7292 B.1): no emoji or other characters beyond it.
    if (/[\u{10000}-\u{10FFFF}]/u.test(pw)) return 'The password cannot contain emoji or other characters of that kind: the file format cannot encode them.';
    if (strength(pw) < 40) return 'The password is too easy to guess: use more, or more varied, characters.';
    if ($('confirm').value !== pw) return 'The two passwords differ.';
    return '';
  }
  function onPassword() {
    const pw = $('password').value;
    const el = $('password-strength');
    el.className = 'strength';
    if (!pw) { el.textContent = ''; return; }
    const bits = strength(pw);
    let word = 'weak', cls = 'weak';
    if ([...pw].length >= MIN_PASSWORD && bits >= 80) { word = 'strong'; cls = 'good'; }
    else if ([...pw].length >= MIN_PASSWORD && bits >= 60) { word = 'fair'; cls = 'fair'; }
    el.textContent = 'Strength: ' + word + ' (about ' + bits + ' bits)' +
      ([...pw].length < MIN_PASSWORD ? '; ' + (MIN_PASSWORD - [...pw].length) + ' more characters needed' : '');
    el.classList.add(cls);
  }
  $('password').addEventListener('input', onPassword);

  let busy = false;
  function updateSubmit() {
    submit.disabled = busy || !workerReady;
    submit.textContent = busy ? 'Working…' : (workerReady ? 'Get my certificate' : 'Loading…');
  }

  // Progress steps.
  function step(text) {
    const li = document.createElement('li');
    li.textContent = text;
    li.className = 'running';
    $('steps').appendChild(li);
    $('progress').hidden = false;
    return {
      ok(extra) { li.className = 'ok'; if (extra) li.textContent = text + ': ' + extra; },
      failed() { li.className = 'failed'; },
    };
  }

  // Basic credentials as UTF-8, base64.
  function basic(user, pass) {
    const bytes = new TextEncoder().encode(user + ':' + pass);
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return 'Basic ' + btoa(s);
  }

  // apiError turns a refusal of the appliance into the message it carries.
  async function apiError(resp) {
    let msg = '';
    try {
      const body = await resp.text();
      try { msg = JSON.parse(body).error || body; } catch (e) { msg = body; }
    } catch (e) { /* no body */ }
    msg = (msg || resp.statusText || 'no message').trim();
    if (resp.status >= 500) return 'The appliance could not serve this request (HTTP ' + resp.status + '): ' + msg + ' This is not a fault of yours: try again later.';
    return 'The appliance refused the request (HTTP ' + resp.status + '): ' + msg;
  }

  function fmtSeconds(ms) { return (ms / 1000).toFixed(1) + ' s'; }

  async function enrollOne(kind, mailbox, code, password, keytype) {
    const k = KINDS[kind];
    const t = templates && templates[k.template];
    const archive = t ? t.archive : kind === 'encryption';
    let handle = null;
    try {
      let s = step('Generating your ' + k.label + ' key in this browser');
      let t0 = performance.now();
      const gen = await call('generate', keytype, mailbox);
      handle = gen.handle;
      timings[kind + '_keygen_ms'] = Math.round(performance.now() - t0);
      s.ok(fmtSeconds(timings[kind + '_keygen_ms']));

      const req = { template: k.template, csr: gen.csr };
      t0 = performance.now();
      if (archive) {
        s = step('Encrypting a copy of the key for escrow');
        const tr = await fetch('/api/v1/transport-certificate', { credentials: 'omit' });
        if (!tr.ok) { s.failed(); throw new Error(await apiError(tr)); }
        const sealed = await call('seal', handle, await tr.text(), tr.headers.get('Keyarc-Transport-OAEP') || '');
        req.encrypted_key = sealed.envelope;
        s.ok();
      }
      s = step('Asking the appliance for your ' + k.label + ' certificate');
      const resp = await fetch('/api/v1/enroll', {
        method: 'POST',
        credentials: 'omit',
        cache: 'no-store',
        headers: { 'Content-Type': 'application/json', Authorization: basic(mailbox, code) },
        body: JSON.stringify(req),
      });
      if (!resp.ok) { s.failed(); throw new Error(await apiError(resp)); }
      const issued = await resp.json();
      timings[kind + '_enroll_ms'] = Math.round(performance.now() - t0);
      s.ok('serial ' + issued.serial + ', valid until ' + issued.not_after.slice(0, 10));

      s = step('Building your password-protected file');
      t0 = performance.now();
      const name = mailbox + ' (' + k.label + ')';
      const built = await call('pkcs12', handle, issued.certificate, issued.chain, password, name);
      timings[kind + '_pkcs12_ms'] = Math.round(performance.now() - t0);
      s.ok(fmtSeconds(timings[kind + '_pkcs12_ms']));
      offer(built.pfx, mailbox + '-' + k.label + '.p12', issued.notice);
    } finally {
      if (handle !== null) call('forget', handle).catch(() => {});
    }
  }

  // offer starts the download of a file and leaves a link to it on the page.
  function offer(bytes, filename, notice) {
    const url = URL.createObjectURL(new Blob([bytes], { type: 'application/x-pkcs12' }));
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = url;
    a.download = filename;
    a.textContent = 'Download ' + filename;
    li.appendChild(a);
    if (notice) {
      const p = document.createElement('p');
      p.className = 'notice';
      p.textContent = notice;
      li.appendChild(p);
    }
    $('downloads').appendChild(li);
    $('done').hidden = false;
    a.click();
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (busy) return;
    clearError();
    const mailbox = $('mailbox').value.trim();
    if (!mailbox || !mailbox.includes('@')) { showError('Enter your e-mail address.'); $('mailbox').focus(); return; }
    const ks = kinds();
    for (const kind of ks) {
      if (!$('code-' + kind).value.trim()) {
        showError('Enter the enrollment code for the ' + KINDS[kind].label + ' certificate.');
        $('code-' + kind).focus();
        return;
      }
    }
    const problem = passwordProblem();
    if (problem) { showError(problem); $('password').focus(); return; }

    busy = true;
    updateSubmit();
    $('steps').textContent = '';
    const password = $('password').value;
    const keytype = $('keytype').value;
    let done = 0;
    try {
      for (const kind of ks) {
        const code = $('code-' + kind).value.trim();
        await enrollOne(kind, mailbox, code, password, keytype);
        $('code-' + kind).value = '';
        done++;
      }
      // Everything secret is used: clear it from the form.
      $('password').value = '';
      $('confirm').value = '';
      onPassword();
    } catch (e) {
      showError(e.message + (done ? '\nThe file made before this step is ready below.' : ''));
    } finally {
      busy = false;
      updateSubmit();
    }
  });
})();
