package hsm

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// rawSession is this package's own miekg session on a token, opened after crypto11 has
// initialised the module and closed before crypto11's context. It serves C_GetTokenInfo,
// C_GetSessionInfo and C_FindObjects over every object class, which crypto11 does not
// offer. A miekg session must never be used by two goroutines at once: mu guards it.
type rawSession struct {
	mu      sync.Mutex
	ctx     *pkcs11.Ctx
	slot    uint
	session pkcs11.SessionHandle
	open    bool
	// finalize: this handle holds an initialisation reference of its own.
	finalize bool
}

// openRaw opens a session on the token labelled label. The module must already be
// initialised by crypto11: C_Initialize answering CKR_CRYPTOKI_ALREADY_INITIALIZED is
// the expected outcome; a module that counts initialisations answers CKR_OK, and that
// reference is released on close.
// The session is not logged in itself: PKCS#11 login state is per application and
// token, and crypto11's persistent session holds it.
func openRaw(module, label, pinSource string) (*rawSession, error) {
	ctx := pkcs11.New(module)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s", ErrModuleNotLoadable, module)
	}
	r := &rawSession{ctx: ctx}
	if err := ctx.Initialize(); err == nil {
		// A module that counts initialisations (p11-kit's client and proxy do) answers
		// CKR_OK to a second C_Initialize: this reference is ours to finalise on close.
		r.finalize = true
	} else if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		ctx.Destroy()
		return nil, classify(err)
	}
	fail := func(err error) (*rawSession, error) {
		if r.finalize {
			_ = ctx.Finalize()
		}
		ctx.Destroy()
		return nil, err
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return fail(classify(err))
	}
	r.slot, err = findSlot(slots, label, ctx.GetTokenInfo)
	if err != nil {
		return fail(err)
	}
	r.session, err = ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return fail(classify(err))
	}
	if r.finalize {
		// Our own reference is our own application to the module (p11-kit gives it its own
		// connection): it must log in to see private objects.
		pin, err := readPIN(pinSource)
		if err != nil {
			return fail(err)
		}
		err = ctx.Login(r.session, pkcs11.CKU_USER, pin)
		pin = ""
		if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			return fail(classifyOpen(err))
		}
	}
	r.open = true
	return r, nil
}

// close closes the session and unloads this handle on the module (dlclose) without
// C_Finalize, which stays crypto11's job.
func (r *rawSession) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return
	}
	r.open = false
	_ = r.ctx.CloseSession(r.session)
	if r.finalize {
		_ = r.ctx.Finalize()
	}
	r.ctx.Destroy()
}

// ping checks that the token answers and the application is still logged in.
func (r *rawSession) ping() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return ErrClosed
	}
	if _, err := r.ctx.GetTokenInfo(r.slot); err != nil {
		return err
	}
	info, err := r.ctx.GetSessionInfo(r.session)
	if err != nil {
		return err
	}
	if info.State != pkcs11.CKS_RO_USER_FUNCTIONS && info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
		return fmt.Errorf("%w: session no longer logged in (state %d)", ErrTokenGone, info.State)
	}
	return nil
}

// countByLabel counts the objects of any class with CKA_LABEL == label, and among them
// the private keys.
func (r *rawSession) countByLabel(label string) (all, private int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return 0, 0, ErrClosed
	}
	find := func(tmpl []*pkcs11.Attribute) (int, error) {
		objs, err := r.findLocked(tmpl)
		return len(objs), err
	}
	all, err = find([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)})
	if err != nil {
		return 0, 0, err
	}
	private, err = find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
	})
	return all, private, err
}

// privateKeyLabels returns the labels of the private keys that are token objects and begin
// with prefix, sorted, each once.
func (r *rawSession) privateKeyLabels(prefix string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return nil, ErrClosed
	}
	objs, err := r.findLocked([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
	})
	if err != nil {
		return nil, err
	}
	var labels []string
	for _, o := range objs {
		a, err := r.ctx.GetAttributeValue(r.session, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err != nil {
			return nil, err
		}
		if l := string(a[0].Value); strings.HasPrefix(l, prefix) {
			labels = append(labels, l)
		}
	}
	slices.Sort(labels)
	return slices.Compact(labels), nil
}

// findLocked returns the objects matching tmpl. The caller holds r.mu and has checked
// r.open.
func (r *rawSession) findLocked(tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := r.ctx.FindObjectsInit(r.session, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		objs, _, err := r.ctx.FindObjects(r.session, 64)
		if err != nil {
			_ = r.ctx.FindObjectsFinal(r.session)
			return nil, err
		}
		if len(objs) == 0 {
			break
		}
		all = append(all, objs...)
	}
	return all, r.ctx.FindObjectsFinal(r.session)
}

// findSlot returns the slot among slots whose token is labelled label, reading each token's
// information with info. A slot that cannot be read does not hide the token in another,
// but when no slot matches, the first read failure is the answer rather than
// [ErrTokenNotFound]: SoftHSM answers CKR_GENERAL_ERROR to C_GetTokenInfo while another
// process rewrites the token's files, and the token is then there, only caught changing
// (see transientAtOpen).
func findSlot(slots []uint, label string, info func(uint) (pkcs11.TokenInfo, error)) (uint, error) {
	var unread error
	for _, s := range slots {
		ti, err := info(s)
		if err != nil {
			if unread == nil {
				unread = fmt.Errorf("read token information of slot %d: %w", s, classify(err))
			}
			continue
		}
		if ti.Label == label {
			return s, nil
		}
	}
	if unread != nil {
		return 0, unread
	}
	return 0, fmt.Errorf("%w: %q (raw session)", ErrTokenNotFound, label)
}
