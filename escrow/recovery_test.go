package escrow

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/hsm"
	"github.com/keyarc/keyarc/policy"
	"github.com/keyarc/keyarc/softhsm"
	"github.com/keyarc/keyarc/softhsm/softhsmtest"
)

// tokenKeys keeps the recovery keys in a SoftHSM token, one RSA key per label, decrypt only
// (RSA-OAEP; the token refuses PKCS#1 v1.5), as the appliance does, and counts every
// decryption with them: the proof that a refused recovery never reaches an unwrap call.
type tokenKeys struct {
	tok      *hsm.Token
	mu       sync.Mutex
	labels   map[string]bool // live keys
	made     atomic.Int64
	decrypts atomic.Int64
	// afterDecrypt, when set, runs after each decryption with the number of decryptions so far.
	afterDecrypt func(n int64)
}

func (k *tokenKeys) Generate(label string) (crypto.PublicKey, error) {
	pub, err := k.tok.GenerateKey(label, hsm.RSA2048, hsm.UsageDecrypt)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.labels[label] = true
	k.made.Add(1)
	return pub, nil
}

func (k *tokenKeys) Decrypter(label string) (crypto.Decrypter, error) {
	d, err := k.tok.Decrypter(label)
	if err != nil {
		return nil, err
	}
	return countingDecrypter{d, k}, nil
}

func (k *tokenKeys) Destroy(label string) error {
	if err := k.tok.DestroyKey(label); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.labels, label)
	return nil
}

func (k *tokenKeys) Labels(prefix string) ([]string, error) { return k.tok.KeyLabels(prefix) }

func (k *tokenKeys) live() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.labels)
}

type countingDecrypter struct {
	crypto.Decrypter
	k *tokenKeys
}

func (d countingDecrypter) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	n := d.k.decrypts.Add(1)
	pt, err := d.Decrypter.Decrypt(r, msg, opts)
	if d.k.afterDecrypt != nil {
		d.k.afterDecrypt(n)
	}
	return pt, err
}

// recoveryEnv is a test service with an archived key, an officer and the KRAs' principals.
// The recovery keys and the KRAs' unwrap keys live in SoftHSM tokens (one key per label).
type recoveryEnv struct {
	*testEnv
	keys    *tokenKeys
	kraTok  *hsm.Token
	unwrap  map[string]crypto.Decrypter // KRA name → unwrap key in the KRA token
	officer policy.Principal
	admin   policy.Principal
	serial  string
	pkcs8   []byte
}

// recoveryHSM holds the SoftHSM tokens of the recovery tests, made once per test binary and
// shared: an appliance token for the recovery keys (one per request, destroyed with it) and a
// KRA token for the KRAs' unwrap keys (one per KRA name, made on first use). SoftHSM sees a
// token made while another is open only once every token is closed, so both are made before
// either is opened, no other test of the package makes tokens, and none runs in parallel.
// TestMain closes and deletes them.
var recoveryHSM struct {
	once      sync.Once
	skip, err string
	in        *softhsm.Install
	labels    []string
	app, kras *hsm.Token

	mu     sync.Mutex
	unwrap map[string]crypto.Decrypter // KRA name → unwrap key
}

func TestMain(m *testing.M) {
	code := m.Run()
	h := &recoveryHSM
	for _, tok := range []*hsm.Token{h.app, h.kras} {
		if tok != nil {
			tok.Close()
		}
	}
	for _, l := range h.labels {
		if err := h.in.DeleteToken(l); err != nil {
			fmt.Fprintf(os.Stderr, "delete SoftHSM token %s: %v\n", l, err)
		}
	}
	os.Exit(code)
}

// recoveryTokens returns the shared appliance and KRA tokens, skipping (or, under $CI, failing)
// the test when SoftHSM is missing.
func recoveryTokens(t *testing.T) (app, kras *hsm.Token) {
	t.Helper()
	in, _ := softhsmtest.Tokens(t) // skips or fails the test when SoftHSM is unusable
	h := &recoveryHSM
	h.once.Do(func() {
		h.in, h.unwrap = in, map[string]crypto.Decrypter{}
		var toks []*softhsm.Token
		for _, name := range []string{"escrow-appliance", "escrow-kras"} {
			suffix := make([]byte, 4)
			rand.Read(suffix)
			label := fmt.Sprintf("%s-%x", name, suffix)
			tk, err := in.InitToken(label)
			if err != nil {
				h.err = err.Error()
				return
			}
			h.labels = append(h.labels, label)
			toks = append(toks, tk)
		}
		var err error
		if h.app, err = hsm.Open(toks[0].URI(""), hsm.Options{}); err != nil {
			h.err = err.Error()
			return
		}
		if h.kras, err = hsm.Open(toks[1].URI(""), hsm.Options{}); err != nil {
			h.err = err.Error()
		}
	})
	if h.err != "" {
		t.Fatalf("SoftHSM tokens for the recovery tests: %s", h.err)
	}
	return h.app, h.kras
}

// kraUnwrapKey returns the unwrap key of the KRA called name in the KRA token, made on first use.
func kraUnwrapKey(t *testing.T, kras *hsm.Token, name string) crypto.Decrypter {
	t.Helper()
	h := &recoveryHSM
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.unwrap[name]; ok {
		return d
	}
	label := name + "-unwrap"
	if _, err := kras.GenerateKey(label, hsm.RSA2048, hsm.UsageDecrypt); err != nil {
		t.Fatalf("generate %s: %v", label, err)
	}
	d, err := kras.Decrypter(label)
	if err != nil {
		t.Fatal(err)
	}
	h.unwrap[name] = d
	return d
}

// newRecoveryEnv makes a service with three KRAs (kra-0..2, 2 of 3, epoch 1) whose unwrap keys
// are in the SoftHSM KRA token, a recovery key store in the SoftHSM appliance token, and one
// archived key.
func newRecoveryEnv(t *testing.T) *recoveryEnv {
	t.Helper()
	app, kraTok := recoveryTokens(t)
	env := newBareService(t)
	r := &recoveryEnv{testEnv: env, kraTok: kraTok, unwrap: map[string]crypto.Decrypter{}}
	var serials []string
	for i := range 3 {
		serials = append(serials, r.addTokenKRA(t, fmt.Sprintf("kra-%d", i)).serial)
	}
	if _, err := env.svc.SetRecoverySet(context.Background(), 2, serials, "admin"); err != nil {
		t.Fatalf("SetRecoverySet: %v", err)
	}
	r.keys = &tokenKeys{tok: app, labels: map[string]bool{}}
	env.svc.RecoveryKeys = r.keys
	issued, pkcs8 := env.enrollArchived(t, "owner@example.org")
	r.serial, r.pkcs8 = issued.Serial, pkcs8
	r.officer = r.credential(t, policy.RoleOfficer, "olga", "")
	r.admin = r.credential(t, policy.RoleAdmin, "ada", "")
	return r
}

// addTokenKRA issues the certificates of a KRA whose unwrap key is in the KRA token.
func (r *recoveryEnv) addTokenKRA(t *testing.T, name string) kra {
	t.Helper()
	d := kraUnwrapKey(t, r.kraTok, name)
	auth := newP256(t)
	out, err := r.svc.IssueKRA(context.Background(), name, d.Public(), auth.Public())
	if err != nil {
		t.Fatalf("IssueKRA(%s): %v", name, err)
	}
	k := kra{name: name, auth: auth, cert: out[0].Certificate, serial: out[0].Serial}
	r.kras = append(r.kras, k)
	r.unwrap[name] = d
	return k
}

func (r *recoveryEnv) credential(t *testing.T, role policy.Role, name, mailbox string) policy.Principal {
	t.Helper()
	is, err := r.svc.IssueCredential(context.Background(), role, name, mailbox, newP256(t).Public())
	if err != nil {
		t.Fatalf("IssueCredential: %v", err)
	}
	return policy.Principal{Role: role, Name: name, Mailbox: mailbox, Serial: is.Serial}
}

// kraPrincipal is KRA i as the appliance sees it: its auth certificate's serial.
func (r *recoveryEnv) kraPrincipal(t *testing.T, i int) policy.Principal {
	t.Helper()
	rows := r.certs(t, store.Filter{KRA: r.kras[i].name})
	for _, c := range rows {
		if c.Role == string(policy.RoleKRA) {
			return policy.Principal{Role: policy.RoleKRA, Name: r.kras[i].name, Serial: c.Serial}
		}
	}
	t.Fatalf("no auth certificate for %s", r.kras[i].name)
	return policy.Principal{}
}

func (r *recoveryEnv) request(t *testing.T) *Recovery {
	t.Helper()
	rec, err := r.svc.RequestRecovery(context.Background(), r.officer, r.serial, "", "test", time.Hour)
	if err != nil {
		t.Fatalf("RequestRecovery: %v", err)
	}
	return rec
}

// approval is what KRA i's CLI makes: its share decrypted with its unwrap key, re-encrypted to
// the request's recovery key, and the signature of its auth key over the exact request.
func (r *recoveryEnv) approval(t *testing.T, i int, id string) ([]ApprovedShare, []byte) {
	t.Helper()
	rec, items, err := r.svc.SharesFor(context.Background(), r.kraPrincipal(t, i), id)
	if err != nil {
		t.Fatalf("SharesFor: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(rec.KeySPKI)
	if err != nil {
		t.Fatal(err)
	}
	to, err := hashByName(rec.OAEPHash)
	if err != nil {
		t.Fatal(err)
	}
	var shares []ApprovedShare
	for _, it := range items {
		if it.Share == nil {
			continue
		}
		pt, err := r.unwrap[r.kras[i].name].Decrypt(rand.Reader, it.Share, &rsa.OAEPOptions{Hash: it.OAEPHash})
		if err != nil {
			t.Fatalf("KRA decrypts its share: %v", err)
		}
		ct, err := rsa.EncryptOAEP(to.New(), rand.Reader, pub.(*rsa.PublicKey), pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, ApprovedShare{RecordID: it.RecordID, Share: ct})
	}
	sig, err := ecdsa.SignASN1(rand.Reader, r.kras[i].auth, ApprovalDigest(&rec.Recovery, shares))
	if err != nil {
		t.Fatal(err)
	}
	return shares, sig
}

func (r *recoveryEnv) approve(t *testing.T, i int, id string) {
	t.Helper()
	shares, sig := r.approval(t, i, id)
	if _, err := r.svc.SubmitApproval(context.Background(), r.kraPrincipal(t, i), id, shares, sig); err != nil {
		t.Fatalf("SubmitApproval by %s: %v", r.kras[i].name, err)
	}
}

// TestRecoveryPolicyMatrix: every refusal happens before any unwrap: the recovery key is never
// asked to decrypt.
func TestRecoveryPolicyMatrix(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		run     func(t *testing.T, r *recoveryEnv) error
		wantErr error
	}{
		{"m-1 approvals", func(t *testing.T, r *recoveryEnv) error {
			id := r.request(t).ID
			r.approve(t, 0, id)
			_, err := r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, policy.ErrQuorum},
		{"the same KRA twice", func(t *testing.T, r *recoveryEnv) error {
			id := r.request(t).ID
			r.approve(t, 0, id)
			shares, sig := r.approval(t, 0, id) // a fresh signature, other bytes
			if _, err := r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 0), id, shares, sig); !errors.Is(err, ErrAlreadyApproved) {
				t.Fatalf("second approval: %v, want ErrAlreadyApproved", err)
			}
			_, err := r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, policy.ErrQuorum},
		{"a non-KRA signer", func(t *testing.T, r *recoveryEnv) error {
			id := r.request(t).ID
			r.approve(t, 0, id)
			shares, sig := r.approval(t, 1, id)
			if _, err := r.svc.SubmitApproval(ctx, r.officer, id, shares, sig); !errors.Is(err, policy.ErrNotAllowed) {
				t.Fatalf("approval by an officer: %v, want ErrNotAllowed", err)
			}
			_, err := r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, policy.ErrQuorum},
		{"a KRA not in the record's set", func(t *testing.T, r *recoveryEnv) error {
			r.addTokenKRA(t, "kra-outside")
			id := r.request(t).ID
			r.approve(t, 0, id)
			p := r.kraPrincipal(t, 3)
			rec, _, err := r.svc.SharesFor(ctx, p, id)
			if err != nil {
				t.Fatal(err)
			}
			fake := []ApprovedShare{{RecordID: rec.Items[0].RecordID, Share: make([]byte, 256)}}
			sig, _ := ecdsa.SignASN1(rand.Reader, r.kras[3].auth, ApprovalDigest(&rec.Recovery, fake))
			if _, err := r.svc.SubmitApproval(ctx, p, id, fake, sig); err != nil {
				t.Fatalf("the outsider's approval is stored (and then not counted): %v", err)
			}
			_, err = r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, policy.ErrQuorum},
		{"the requester approving", func(t *testing.T, r *recoveryEnv) error {
			// An officer named like KRA kra-0 asks: kra-0 is not even shown its share.
			r.officer = r.credential(t, policy.RoleOfficer, "kra-0", "")
			id := r.request(t).ID
			if _, _, err := r.svc.SharesFor(ctx, r.kraPrincipal(t, 0), id); !errors.Is(err, policy.ErrNotAllowed) {
				t.Fatalf("the requester asks for its share: %v, want ErrNotAllowed", err)
			}
			r.approve(t, 1, id)
			_, err := r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, policy.ErrQuorum},
		{"the owner requesting", func(t *testing.T, r *recoveryEnv) error {
			owner := r.credential(t, policy.RoleOfficer, "owen", "owner@example.org")
			_, err := r.svc.RequestRecovery(ctx, owner, r.serial, "", "mine", time.Hour)
			if r.keys.made.Load() != 0 {
				t.Errorf("a recovery key was made for a refused request")
			}
			return err
		}, policy.ErrOwnKey},
		{"an expired request", func(t *testing.T, r *recoveryEnv) error {
			id := r.request(t).ID
			r.approve(t, 0, id)
			r.approve(t, 1, id)
			r.clock.Set(t0.Add(2 * time.Hour))
			defer r.clock.Set(t0)
			_, err := r.svc.Fetch(ctx, r.officer, id, false)
			return err
		}, policy.ErrExpired},
		{"an approval replayed onto another request", func(t *testing.T, r *recoveryEnv) error {
			a, b := r.request(t).ID, r.request(t).ID
			r.approve(t, 0, b)
			shares, sig := r.approval(t, 1, a)
			if _, err := r.svc.SubmitApproval(ctx, r.kraPrincipal(t, 1), b, shares, sig); !errors.Is(err, ErrBadApproval) {
				t.Fatalf("replayed approval: %v, want ErrBadApproval", err)
			}
			_, err := r.svc.Fetch(ctx, r.officer, b, false)
			return err
		}, policy.ErrQuorum},
		{"another officer fetching", func(t *testing.T, r *recoveryEnv) error {
			id := r.request(t).ID
			r.approve(t, 0, id)
			r.approve(t, 2, id)
			other := r.credential(t, policy.RoleOfficer, "oscar", "")
			_, err := r.svc.Fetch(ctx, other, id, false)
			return err
		}, ErrForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecoveryEnv(t)
			if err := tt.run(t, r); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if n := r.keys.decrypts.Load(); n != 0 {
				t.Fatalf("%d decryptions with the recovery key for a refused recovery, want 0", n)
			}
		})
	}
}

// TestRecoveryDelivers: with the quorum, Fetch opens the record to exactly the archived key, in
// a PKCS#12 its password opens; a second Fetch is refused and decrypts nothing more.
func TestRecoveryDelivers(t *testing.T) {
	r := newRecoveryEnv(t)
	id := r.request(t).ID
	r.approve(t, 2, id)
	r.approve(t, 0, id)
	got, err := r.svc.Fetch(context.Background(), r.officer, id, false)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if n := r.keys.decrypts.Load(); n != 2 {
		t.Errorf("%d share decryptions, want exactly the quorum (2)", n)
	}
	if len(got.Files) != 1 || got.Files[0].Serial != r.serial {
		t.Fatalf("files %+v, want one for %s", got.Files, r.serial)
	}
	key, cert, _, err := pkcs12.DecodeChain(got.Files[0].PFX, got.Password)
	if err != nil {
		t.Fatalf("decode the PKCS#12: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if string(der) != string(r.pkcs8) {
		t.Fatal("the recovered key is not the archived one")
	}
	if store.FormatSerial(cert.SerialNumber) != r.serial {
		t.Errorf("the PKCS#12 holds certificate %x", cert.SerialNumber)
	}
	if _, err := r.svc.Fetch(context.Background(), r.officer, id, false); !errors.Is(err, policy.ErrConsumed) {
		t.Fatalf("second Fetch: %v, want ErrConsumed", err)
	}
	if n := r.keys.decrypts.Load(); n != 2 {
		t.Errorf("the refused second Fetch decrypted (%d decryptions)", n)
	}
	if n := r.keys.live(); n != 0 {
		t.Errorf("%d recovery key(s) left in the token after delivery", n)
	}
}
