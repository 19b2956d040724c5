// "Find a colleague's certificate": the page's directory lookup. It asks the appliance's
// GET /api/v1/directory (same origin, JSON) for a mailbox's valid encryption certificates and
// shows each with its serial, validity and SHA-256 fingerprint, and a download of the
// certificate (PEM, or DER as .cer). It needs neither WebAssembly nor WebCrypto, so it works
// also where the enrollment form cannot, and stores nothing.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $('lookup-form');
  const input = $('lookup-mailbox');
  const button = $('lookup-submit');
  const message = $('lookup-message');
  const list = $('lookup-certs');

  function say(text, kind) {
    message.textContent = text;
    message.className = 'alert ' + kind;
    message.hidden = false;
  }

  function reset() {
    message.hidden = true;
    message.textContent = '';
    list.textContent = '';
  }

  // The message the appliance gave with a refusal (JSON {"error": ...} or text).
  async function apiMessage(resp) {
    let msg = '';
    try {
      const body = await resp.text();
      try { msg = JSON.parse(body).error || body; } catch (e) { msg = body; }
    } catch (e) { /* no body */ }
    return (msg || resp.statusText || 'no message').trim();
  }

  function noneFound(mailbox) {
    return 'No valid encryption certificate was found for ' + mailbox + '. Your colleague may not have ' +
      'one yet, or it expired or was revoked: ask them to get one on this page. Check the address too.';
  }

  // refusal says in plain words why the appliance did not answer the lookup.
  async function refusal(resp, mailbox) {
    const msg = await apiMessage(resp);
    const why = ' (HTTP ' + resp.status + ': ' + msg + ')';
    switch (resp.status) {
      case 400:
        return 'The appliance could not read that e-mail address' + why + '. Check it and try again.';
      case 401:
      case 403:
        return 'This appliance answers certificate lookups only to people and devices with a client ' +
          'certificate it issued, and this browser did not present one' + why + '. Ask your administrator, ' +
          "or look the certificate up in your mail program's address book.";
      case 404:
        return noneFound(mailbox);
      case 429: {
        const secs = parseInt(resp.headers.get('Retry-After') || '', 10);
        return 'Too many lookups from your network address in a short time. ' +
          (secs > 0 ? 'Try again in ' + secs + ' seconds.' : 'Try again in a minute.') + why;
      }
    }
    if (resp.status >= 500) {
      return 'The appliance could not answer the lookup' + why + '. This is not a fault of yours: try again later.';
    }
    return 'The appliance refused the lookup' + why + '.';
  }

  // fingerprint writes a hex SHA-256 as pairs of upper-case digits joined by colons, as
  // certificate viewers (Thunderbird, Outlook, openssl x509 -fingerprint) show it.
  function fingerprint(hex) {
    return (hex.toUpperCase().match(/../g) || []).join(':');
  }

  // der decodes the base64 body of a PEM certificate.
  function der(pem) {
    const b64 = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function link(text, bytes, type, filename) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes], { type }));
    a.download = filename;
    a.textContent = text;
    return a;
  }

  function show(answer) {
    for (const c of answer.certificates) {
      const li = document.createElement('li');
      const dl = document.createElement('dl');
      const rows = [
        ['Mailbox', answer.email, ''],
        ['Serial', c.serial, 'serial'],
        ['Valid until', c.not_after.replace('T', ' ').replace(/(\.\d+)?Z$/, ' UTC'), 'not-after'],
        ['SHA-256 fingerprint', fingerprint(c.sha256), 'fingerprint'],
      ];
      for (const [name, value, cls] of rows) {
        const dt = document.createElement('dt');
        dt.textContent = name;
        const dd = document.createElement('dd');
        dd.textContent = value;
        if (cls) dd.className = cls;
        dl.append(dt, dd);
      }
      li.appendChild(dl);
      const base = answer.email + '-' + c.serial;
      li.appendChild(link('Download the certificate (.pem)', c.pem, 'application/pem-certificate-chain', base + '.pem'));
      li.appendChild(link('Download as .cer (DER)', der(c.pem), 'application/pkix-cert', base + '.cer'));
      list.appendChild(li);
    }
    const n = answer.certificates.length;
    say(n === 1 ? 'One valid encryption certificate for ' + answer.email + '.' :
      n + ' valid encryption certificates for ' + answer.email + ': your mail program should encrypt to each.', 'info');
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    reset();
    const mailbox = input.value.trim();
    if (!mailbox || !mailbox.includes('@')) {
      say("Enter your colleague's e-mail address.", 'error');
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      let resp;
      try {
        // same-origin credentials: where lookups need a client certificate, the browser may
        // present one it holds.
        resp = await fetch('/api/v1/directory?email=' + encodeURIComponent(mailbox), {
          headers: { Accept: 'application/json' },
          credentials: 'same-origin',
          cache: 'no-store',
        });
      } catch (e) {
        say('The appliance could not be reached: check your connection and try again.', 'error');
        return;
      }
      if (!resp.ok) {
        say(await refusal(resp, mailbox), resp.status === 404 ? 'info' : 'error');
        return;
      }
      let answer;
      try { answer = await resp.json(); } catch (e) { answer = null; }
      if (!answer || !Array.isArray(answer.certificates)) {
        say('The appliance answered the lookup with something this page cannot read. This is not a fault of yours: try again later.', 'error');
        return;
      }
      if (answer.certificates.length === 0) {
        say(noneFound(answer.email || mailbox), 'info');
        return;
      }
      show(answer);
    } finally {
      button.disabled = false;
    }
  });
})();
