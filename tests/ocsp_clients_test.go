package tests

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// nssRevoked is what vfychain reports for a revoked leaf: SEC_ERROR_REVOKED_CERTIFICATE. NSS's
// libpkix reports the same code when failIfNoInfo finds no usable answer, which is why a
// revoked verdict is read from a lenient run (see nssVerdict).
const nssRevoked = "ERROR -8180"

var nssErrorRE = regexp.MustCompile(`ERROR -\d+`)

// nssDB makes a fresh NSS database in dir/name with the CA at caPEM trusted for every usage
// (CT: TLS servers and clients; C: e-mail and code signing).
func nssDB(t *testing.T, dir, name, caPEM string) string {
	t.Helper()
	db := filepath.Join(dir, name)
	if err := os.Mkdir(db, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "certutil", "-N", "-d", "sql:"+db, "--empty-password")
	run(t, dir, "certutil", "-A", "-d", "sql:"+db, "-n", "ca", "-t", "CT,C,C", "-a", "-i", caPEM)
	return db
}

// nssVerdict has NSS's vfychain (libpkix, -pp) verify the certificate at cert as an e-mail
// recipient's, checking the leaf's revocation with method ("ocsp": the responder in its AIA;
// "crl": the CRL at its CDP), both fetched by NSS itself. Strict runs add requireFreshInfo and
// failIfNoInfo, so "good" means NSS got a fresh, valid answer that says good; lenient runs
// treat a missing answer as good, so nssRevoked there means NSS got a valid answer that says
// revoked. It returns "good" or the NSS error codes, and fails the test when the exit status
// and the words disagree.
func nssVerdict(t *testing.T, dir, db, cert, method string, strict bool) (string, string) {
	t.Helper()
	return nssVerdictAs(t, dir, db, cert, "5", method, strict)
}

// nssVerdictAs is nssVerdict for another vfychain usage (-u: 1 TLS server, 4 e-mail signer,
// 5 e-mail recipient).
func nssVerdictAs(t *testing.T, dir, db, cert, usage, method string, strict bool) (string, string) {
	t.Helper()
	args := []string{"-d", "sql:" + db, "-pp", "-u", usage, "-g", "leaf"}
	if strict {
		args = append(args, "-h", "requireFreshInfo", "-m", method, "-s", "failIfNoInfo")
	} else {
		args = append(args, "-m", method)
	}
	args = append(args, "-a", cert)
	out, err := runResult(dir, nil, "vfychain", args...)
	good, bad := strings.Contains(out, "Chain is good!"), strings.Contains(out, "Chain is bad!")
	switch {
	case err == nil && good && !bad:
		return "good", out
	case err != nil && bad && !good:
		codes := nssErrorRE.FindAllString(out, -1)
		slices.Sort(codes)
		codes = slices.Compact(codes)
		if len(codes) > 0 {
			return strings.Join(codes, " "), out
		}
	}
	t.Fatalf("vfychain %s: exit status (%v) and output disagree:\n%s", strings.Join(args, " "), err, out)
	return "", ""
}

// gnutlsTime is how ocsptool prints times.
const gnutlsTime = "Mon Jan 02 15:04:05 MST 2006"

var (
	gnutlsResponseStatusRE = regexp.MustCompile(`(?m)^\s*Response Status: (\S+)\s*$`)
	gnutlsCertStatusRE     = regexp.MustCompile(`(?m)^\s*Certificate Status: (\S+)\s*$`)
	gnutlsSerialRE         = regexp.MustCompile(`(?m)^\s*Serial Number: ([0-9a-f]+)\s*$`)
	gnutlsUpdatesRE        = regexp.MustCompile(`(?m)^\s*This Update: (.+?)\s*\n\s*Next Update: (.+?)\s*$`)
)

// ocsptoolAsk has GnuTLS's ocsptool ask the OCSP responder in the AIA of the certificate at
// cert (no nonce: responses are signed in advance) and verify the answer against issuer, which
// accepts the issuer's own signature or a delegated responder certificate in the response issued
// by it with OCSPSigning. The response is kept in respOut (DER). It returns the certificate
// status ("good", "revoked", "unknown") when the response is successful, verified, and every
// single response in it is about cert's serial, says the same and is current (ocsptool itself
// does not check thisUpdate and nextUpdate against the clock); "response <status>" for an
// unsuccessful response (e.g. "response unauthorized"); anything else is returned as a verdict
// that names the fault, so the caller's comparison fails and shows the output.
func ocsptoolAsk(t *testing.T, dir, cert, issuer, respOut string) (string, string) {
	t.Helper()
	serial := strings.TrimLeft(fmt.Sprintf("%x", readCert(t, cert).SerialNumber), "0")
	out, err := runResult(dir, nil, "ocsptool", "--ask", "--no-nonce", "--load-cert", cert, "--load-issuer", issuer, "--outfile", respOut)
	rs := gnutlsResponseStatusRE.FindAllStringSubmatch(out, -1)
	if len(rs) != 1 {
		return "no single Response Status line", out
	}
	if rs[0][1] != "Successful" {
		if err == nil {
			return "exit status 0 for response " + rs[0][1], out
		}
		return "response " + rs[0][1], out
	}
	if err != nil || !strings.Contains(out, "Verifying OCSP Response: Success.") {
		return fmt.Sprintf("response not verified (%v)", err), out
	}
	statuses := gnutlsCertStatusRE.FindAllStringSubmatch(out, -1)
	serials := gnutlsSerialRE.FindAllStringSubmatch(out, -1)
	if len(statuses) == 0 || len(serials) != len(statuses) {
		return fmt.Sprintf("%d certificate statuses for %d serials", len(statuses), len(serials)), out
	}
	updates := gnutlsUpdatesRE.FindAllStringSubmatch(out, -1)
	if len(updates) != len(statuses) {
		return fmt.Sprintf("%d thisUpdate/nextUpdate pairs for %d single responses", len(updates), len(statuses)), out
	}
	now := time.Now()
	for i := range statuses {
		this, err1 := time.Parse(gnutlsTime, updates[i][1])
		next, err2 := time.Parse(gnutlsTime, updates[i][2])
		if err1 != nil || err2 != nil {
			return fmt.Sprintf("unreadable update times: %v, %v", err1, err2), out
		}
		if now.Before(this) || now.After(next) {
			return fmt.Sprintf("not current: thisUpdate %v, nextUpdate %v", this, next), out
		}
		if got := strings.TrimLeft(serials[i][1], "0"); got != serial {
			return "a single response about serial " + got + ", not " + serial, out
		}
		if statuses[i][1] != statuses[0][1] {
			return "single responses disagree: " + statuses[0][1] + ", " + statuses[i][1], out
		}
	}
	return statuses[0][1], out
}

// ocsptoolVerify has ocsptool verify the stored response at resp against trust anchors in
// trust: the delegated responder certificate in the response must chain to one of them. It
// returns "Success" or the words of the failure ("Failure, Signer cert is not trusted.").
func ocsptoolVerify(t *testing.T, dir, resp, trust string) (string, string) {
	t.Helper()
	out, err := runResult(dir, nil, "ocsptool", "--verify-response", "--load-trust", trust, "--infile", resp)
	m := regexp.MustCompile(`(?m)^Verifying OCSP Response: (.*?)\s*$`).FindStringSubmatch(out)
	switch {
	case m == nil:
		t.Fatalf("ocsptool --verify-response printed no verdict (%v):\n%s", err, out)
	case (m[1] == "Success.") != (err == nil):
		t.Fatalf("ocsptool --verify-response: exit status (%v) and verdict %q disagree:\n%s", err, m[1], out)
	}
	return strings.TrimSuffix(m[1], "."), out
}

// certtoolVerifyCRL has GnuTLS's certtool verify the signature of the CRL (PEM) with the CA
// certificate at ca; it returns "Verified" or "Not verified".
func certtoolVerifyCRL(t *testing.T, dir, crl, ca string) (string, string) {
	t.Helper()
	out, err := runResult(dir, nil, "certtool", "--verify-crl", "--load-ca-certificate", ca, "--infile", crl)
	switch {
	case err == nil && strings.Contains(out, "Verification output: Verified."):
		return "Verified", out
	case err != nil && strings.Contains(out, "Verification output: Not verified."):
		return "Not verified", out
	}
	t.Fatalf("certtool --verify-crl: exit status (%v) and output disagree:\n%s", err, out)
	return "", ""
}

// certtoolVerifyCert has certtool verify the certificate at cert against the CA at ca and the
// CRL (PEM); it returns "trusted", "revoked", or the words of another refusal.
func certtoolVerifyCert(t *testing.T, dir, cert, ca, crl string) (string, string) {
	t.Helper()
	out, err := runResult(dir, nil, "certtool", "--verify", "--load-ca-certificate", ca, "--load-crl", crl, "--infile", cert)
	m := regexp.MustCompile(`(?m)^Chain verification output: (.*?)\s*$`).FindStringSubmatch(out)
	switch {
	case m == nil:
	case err == nil && m[1] == "Verified. The certificate is trusted.":
		return "trusted", out
	case err != nil && strings.HasPrefix(m[1], "Not verified.") && strings.Contains(m[1], "revoked"):
		return "revoked", out
	case err != nil && strings.HasPrefix(m[1], "Not verified."):
		return m[1], out
	}
	t.Fatalf("certtool --verify: exit status (%v) and output disagree:\n%s", err, out)
	return "", ""
}

// eventually asks until the verdict is want, for at most within, and returns the last output.
func eventually(t *testing.T, within time.Duration, what, want string, ask func() (string, string)) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, out := ask()
		if got == want {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q, want %q within %v; last output:\n%s", what, got, want, within, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ocspRequests sums keyarc_http_requests_total of the public OCSP route over every HTTP status.
func ocspRequests(t *testing.T, a *appliance) float64 {
	t.Helper()
	resp, err := http.Get(a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "keyarc_http_requests_total{") && strings.Contains(line, `route="public:/ocsp"`) {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

// strangers writes to dir what keyarc never issued, each pointing its AIA OCSP URL and CDP at
// keyarc's (ocspURL, cdp), so the clients ask keyarc about them: forged.pem names keyarc's CA
// (ca) as issuer, with its key identifier, but has a serial keyarc never used and is signed by a
// throwaway key (the CertID a client builds for it holds keyarc's issuer hashes); other-ca.pem
// is another CA, and other-leaf.pem a certificate it issued.
func strangers(t *testing.T, dir string, ca *x509.Certificate, ocspURL, cdp string) (forged, otherCA, otherLeaf string) {
	t.Helper()
	serial := func() *big.Int {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	leaf := func(cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber:          serial(),
			Subject:               pkix.Name{CommonName: cn},
			EmailAddresses:        []string{cn},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(30 * 24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
			BasicConstraintsValid: true,
			OCSPServer:            []string{ocspURL},
			CRLDistributionPoints: []string{cdp},
		}
	}
	write := func(name string, tmpl, parent *x509.Certificate, signer crypto.Signer) string {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, tmpl.PublicKey, signer)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		path := filepath.Join(dir, name)
		writeFile(t, path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		return path
	}

	throwaway := p256Key(t)
	f := leaf("forged@example.org")
	f.PublicKey = p256Key(t).Public()
	forged = write("forged.pem", f, &x509.Certificate{RawSubject: ca.RawSubject, SubjectKeyId: ca.SubjectKeyId}, throwaway)

	otherKey := p256Key(t)
	o := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Other CA", Organization: []string{"elsewhere"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(60 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		PublicKey:             otherKey.Public(),
	}
	otherCA = write("other-ca.pem", o, o, otherKey)
	l := leaf("stranger@example.org")
	l.PublicKey = p256Key(t).Public()
	otherLeaf = write("other-leaf.pem", l, readCert(t, otherCA), otherKey)
	return forged, otherCA, otherLeaf
}

// TestOCSPClients: the revocation a certificate's own AIA and CDP URLs publish is read the
// same by NSS (vfychain, OCSP and CRL, each fetched by NSS from the certificate's URLs) and by
// GnuTLS (ocsptool for OCSP, verifying the delegated responder's signature against the CA;
// certtool for the CRL fetched from the CDP) as by openssl (TestOCSPEndToEnd, TestCRLEndToEnd):
// good before `keyarc revoke`, revoked after it (with a reason, and with none), while another
// certificate stays good; a certificate of another CA, or one forged with a serial keyarc never
// issued, is never good. It runs with a P-256 and an RSA CA key, since the responder
// certificate is signed by the CA.
func TestOCSPClients(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl", "vfychain", "certutil", "ocsptool", "certtool")
	for _, caKey := range []string{"p256", "rsa2048"} {
		t.Run(caKey, func(t *testing.T) {
			t.Parallel()
			testOCSPClients(t, caKey)
		})
	}
}

func testOCSPClients(t *testing.T, caKey string) {
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub, "--ca-key", caKey)
	a := servePublic(t, state, pub)
	dir := t.TempDir()
	caPEM := filepath.Join(state, "ca.pem")
	ca := readCert(t, caPEM)

	// kim's and ned's certificates are revoked below (keyCompromise, and unspecified, which
	// leaves the reason out of the answer); lou's stays good throughout.
	for _, name := range []string{"kim", "ned", "lou"} {
		enrollUser(t, a, name+"@example.org", filepath.Join(dir, name))
	}
	kim, ned, lou := filepath.Join(dir, "kim", "cert.pem"), filepath.Join(dir, "ned", "cert.pem"), filepath.Join(dir, "lou", "cert.pem")
	kc := readCert(t, kim)
	ocspURL, cdp := "http://"+pub+"/ocsp", "http://"+pub+"/crl/ca.crl"
	if !slices.Equal(kc.OCSPServer, []string{ocspURL}) || !slices.Equal(kc.CRLDistributionPoints, []string{cdp}) {
		t.Fatalf("AIA OCSP %v and CDP %v, want %s and %s", kc.OCSPServer, kc.CRLDistributionPoints, ocspURL, cdp)
	}
	forged, otherCA, otherLeaf := strangers(t, dir, ca, ocspURL, cdp)
	db, otherDB := nssDB(t, dir, "nss", caPEM), nssDB(t, dir, "nss-other", otherCA)
	kimResp := filepath.Join(dir, "kim-ocsp.der")
	ask := func(cert, issuer string) func() (string, string) {
		resp := filepath.Join(dir, filepath.Base(filepath.Dir(cert))+"-"+filepath.Base(cert)+".ocsp.der")
		return func() (string, string) { return ocsptoolAsk(t, dir, cert, issuer, resp) }
	}
	nss := func(db, cert, method string, strict bool) func() (string, string) {
		return func() (string, string) { return nssVerdict(t, dir, db, cert, method, strict) }
	}
	expect := func(what, want string, ask func() (string, string)) {
		t.Helper()
		if got, out := ask(); got != want {
			t.Errorf("%s: %q, want %q:\n%s", what, got, want, out)
		}
	}

	// Before the revocation. Responses are signed as an enrollment commits; the first CRL at
	// the start.
	eventually(t, 15*time.Second, "ocsptool for kim", "good", ask(kim, caPEM))
	expect("ocsptool for ned", "good", ask(ned, caPEM))
	expect("ocsptool for lou", "good", ask(lou, caPEM))
	// NSS asks by GET, the request's base64 URL-encoded in the path, and asks again by POST
	// when the GET fails: one request in all shows the GET was answered.
	n := ocspRequests(t, a)
	expect("vfychain OCSP (strict) for kim", "good", nss(db, kim, "ocsp", true))
	if d := ocspRequests(t, a) - n; d != 1 {
		t.Errorf("vfychain made %v OCSP requests for one check, want 1 (its GET answered)", d)
	}
	expect("vfychain CRL (strict) for kim", "good", nss(db, kim, "crl", true))
	before := fetchCRL(t, dir, cdp, "", 30*time.Second)
	expect("certtool --verify-crl with keyarc's CA", "Verified", func() (string, string) { return certtoolVerifyCRL(t, dir, before.pem, caPEM) })
	expect("certtool --verify-crl with another CA", "Not verified", func() (string, string) { return certtoolVerifyCRL(t, dir, before.pem, otherCA) })
	expect("certtool --verify kim with the CRL", "trusted", func() (string, string) { return certtoolVerifyCert(t, dir, kim, caPEM, before.pem) })

	// ocsptool checks the signature: the response kim got verifies against keyarc's CA (the
	// delegated responder certificate chains to it), and not against another CA.
	expect("ocsptool for kim, kept", "good", func() (string, string) { return ocsptoolAsk(t, dir, kim, caPEM, kimResp) })
	expect("ocsptool --verify-response with keyarc's CA", "Success", func() (string, string) { return ocsptoolVerify(t, dir, kimResp, caPEM) })
	expect("ocsptool --verify-response with another CA", "Failure, Signer cert is not trusted", func() (string, string) { return ocsptoolVerify(t, dir, kimResp, otherCA) })

	// Never good for what keyarc never issued. NSS, strict, finds no usable answer and refuses;
	// lenient, it accepts the chain, so keyarc did not answer "revoked" for it either.
	expect("ocsptool for a forged serial", "response unauthorized", ask(forged, caPEM))
	expect("ocsptool for another CA's certificate", "response unauthorized", ask(otherLeaf, otherCA))
	for _, method := range []string{"ocsp", "crl"} {
		if got, out := nssVerdict(t, dir, otherDB, otherLeaf, method, true); got == "good" {
			t.Errorf("vfychain %s (strict) for another CA's certificate: good:\n%s", method, out)
		}
		expect("vfychain "+method+" (lenient) for another CA's certificate", "good", nss(otherDB, otherLeaf, method, false))
	}

	keyarc(t, "revoke", "--serial", certSerial(t, dir, kim), "--reason", "keyCompromise", "--state", state, "--server", a.url, "--as", "officer")
	keyarc(t, "revoke", "--serial", certSerial(t, dir, ned), "--reason", "unspecified", "--state", state, "--server", a.url, "--as", "officer")

	// OCSP is re-signed at once; the CRL follows within seconds. Each client fetches for itself.
	eventually(t, time.Minute, "ocsptool for kim after keyarc revoke", "revoked", func() (string, string) { return ocsptoolAsk(t, dir, kim, caPEM, kimResp) })
	expect("ocsptool --verify-response of the revoked answer", "Success", func() (string, string) { return ocsptoolVerify(t, dir, kimResp, caPEM) })
	for _, who := range []struct{ name, cert string }{{"kim (keyCompromise)", kim}, {"ned (unspecified: no reason in the answer)", ned}} {
		eventually(t, time.Minute, "ocsptool for "+who.name+" after keyarc revoke", "revoked", ask(who.cert, caPEM))
		eventually(t, time.Minute, "vfychain OCSP (lenient) for "+who.name+" after keyarc revoke", nssRevoked, nss(db, who.cert, "ocsp", false))
		eventually(t, time.Minute, "vfychain CRL (lenient) for "+who.name+" after keyarc revoke", nssRevoked, nss(db, who.cert, "crl", false))
	}
	// NSS saw both on the CRL at the CDP: the CRL served now lists both.
	after := fetchCRL(t, dir, cdp, before.etag, time.Minute)
	expect("certtool --verify-crl of the new CRL", "Verified", func() (string, string) { return certtoolVerifyCRL(t, dir, after.pem, caPEM) })
	expect("certtool --verify kim with the new CRL", "revoked", func() (string, string) { return certtoolVerifyCert(t, dir, kim, caPEM, after.pem) })
	expect("certtool --verify ned with the new CRL", "revoked", func() (string, string) { return certtoolVerifyCert(t, dir, ned, caPEM, after.pem) })

	// lou's certificate is untouched in every client.
	expect("ocsptool for lou after the revocations", "good", ask(lou, caPEM))
	expect("vfychain OCSP (strict) for lou", "good", nss(db, lou, "ocsp", true))
	expect("vfychain CRL (strict) for lou", "good", nss(db, lou, "crl", true))
	expect("certtool --verify lou with the new CRL", "trusted", func() (string, string) { return certtoolVerifyCert(t, dir, lou, caPEM, after.pem) })

	// With the appliance stopped, strict NSS refuses lou's certificate and ocsptool has no
	// answer: the strict "good" verdicts above were NSS reading keyarc's answers, not its
	// default.
	a.stop(t)
	for _, method := range []string{"ocsp", "crl"} {
		if got, out := nssVerdict(t, dir, db, lou, method, true); got == "good" {
			t.Errorf("vfychain %s (strict) with no responder: good:\n%s", method, out)
		}
	}
	if got, out := ocsptoolAsk(t, dir, lou, caPEM, filepath.Join(dir, "none.der")); got == "good" {
		t.Errorf("ocsptool with no responder: good:\n%s", out)
	}
}

// TestOCSPClientsApplianceCertificates: the appliance's own certificates (TLS, key transport,
// audit) carry the same AIA OCSP URL and CDP as the subscribers', so the responder must answer
// for them as it does for the operators' credentials: ocsptool and strict NSS read good.
func TestOCSPClientsApplianceCertificates(t *testing.T) {
	t.Parallel()
	requireTools(t, "openssl", "curl", "vfychain", "certutil", "ocsptool")
	pub := freePort(t)
	state := devState(t, "--public-url", "http://"+pub)
	servePublic(t, state, pub)
	dir := t.TempDir()
	caPEM := filepath.Join(state, "ca.pem")
	db := nssDB(t, dir, "nss", caPEM)
	for _, c := range []struct{ file, usage string }{
		{"credentials/admin.pem", "0"}, // an operator credential: answered today
		{"tls.pem", "1"},
		{"transport.pem", "5"},
		{"audit.pem", "4"},
	} {
		cert := filepath.Join(state, c.file)
		if got := readCert(t, cert).OCSPServer; !slices.Equal(got, []string{"http://" + pub + "/ocsp"}) {
			t.Errorf("%s: AIA OCSP %v", c.file, got)
			continue
		}
		if got, out := ocsptoolAsk(t, dir, cert, caPEM, filepath.Join(dir, "resp.der")); got != "good" {
			t.Errorf("ocsptool for %s: %q, want good:\n%s", c.file, got, out)
		}
		if got, out := nssVerdictAs(t, dir, db, cert, c.usage, "ocsp", true); got != "good" {
			t.Errorf("vfychain OCSP (strict, -u %s) for %s: %q, want good:\n%s", c.usage, c.file, got, out)
		}
	}
}
