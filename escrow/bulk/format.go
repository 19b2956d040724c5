package bulk

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/keyarc/keyarc/escrow/jsonstrict"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// Kind is what a job does with each item.
type Kind string

// The job kinds.
const (
	KindEnroll Kind = "enroll" // CSR + private key in a CMS envelope to the transport certificate
	KindKeygen Kind = "keygen" // the appliance generates the key
	KindImport Kind = "import" // certificate + private key from another CA
)

// Errors of the job file format. Callers test them with [errors.Is].
var (
	// ErrFormat: the job file (its header or its framing) is malformed; the job is refused.
	ErrFormat = errors.New("bulk: malformed job file")
	// ErrLineTooLong: a line is longer than [Limits.MaxLine].
	ErrLineTooLong = errors.New("bulk: line too long")
	// ErrTooManyItems: the file holds more than [Limits.MaxItems] items.
	ErrTooManyItems = errors.New("bulk: too many items")
	// ErrTooLarge: the file is larger than [Limits.MaxFile].
	ErrTooLarge = errors.New("bulk: job file too large")
	// ErrItem: one item is malformed; it fails alone.
	ErrItem = errors.New("bulk: invalid item")
)

// Limits bound what a job file may hold.
type Limits struct {
	MaxLine  int   // bytes per line (default 1 MiB)
	MaxItems int   // items per file (default 1,000,000)
	MaxFile  int64 // bytes per file (default 4 GiB)
}

// DefaultLimits are the limits used when a field of [Limits] is zero.
var DefaultLimits = Limits{MaxLine: 1 << 20, MaxItems: 1_000_000, MaxFile: 4 << 30}

func (l Limits) withDefaults() Limits {
	if l.MaxLine <= 0 {
		l.MaxLine = DefaultLimits.MaxLine
	}
	if l.MaxItems <= 0 {
		l.MaxItems = DefaultLimits.MaxItems
	}
	if l.MaxFile <= 0 {
		l.MaxFile = DefaultLimits.MaxFile
	}
	return l
}

// Header is the first line of a job file.
type Header struct {
	Kind     Kind   `json:"kind"`
	Template string `json:"template,omitempty"`
	// Key is the default key type of a keygen job's items (rsa2048 when empty).
	Key string `json:"key,omitempty"`
}

// KeyTypes are the key types a keygen item may ask for.
var KeyTypes = []string{"rsa2048", "rsa3072", "rsa4096", "p256", "p384"}

func validKeyType(s string) bool {
	for _, k := range KeyTypes {
		if s == k {
			return true
		}
	}
	return false
}

// Validate checks the header's fields (not the template's existence: that is policy's).
func (h Header) Validate() error {
	switch h.Kind {
	case KindEnroll, KindKeygen:
		if h.Template == "" {
			return fmt.Errorf("%w: header: field template is required for a %s job", ErrFormat, h.Kind)
		}
	case KindImport:
	default:
		return fmt.Errorf("%w: header: field kind must be enroll, keygen or import, not %q", ErrFormat, truncate(string(h.Kind)))
	}
	if h.Key != "" {
		if h.Kind != KindKeygen {
			return fmt.Errorf("%w: header: field key is only for keygen jobs", ErrFormat)
		}
		if !validKeyType(h.Key) {
			return fmt.Errorf("%w: header: key %q: choose one of %s", ErrFormat, truncate(h.Key), strings.Join(KeyTypes, ", "))
		}
	}
	return nil
}

// Reader reads a job file as a stream: the header first, then one item at a time, never the
// whole file in memory.
type Reader struct {
	sc     *bufio.Scanner
	lim    Limits
	header Header
	seq    int
	line   int
	n      *countingReader
}

type countingReader struct {
	r   io.Reader
	n   int64
	max int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n > c.max {
		return 0, ErrTooLarge
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		return n, ErrTooLarge
	}
	return n, err
}

// NewReader reads and checks the header of the job file r.
func NewReader(r io.Reader, lim Limits) (*Reader, error) {
	lim = lim.withDefaults()
	cr := &countingReader{r: r, max: lim.MaxFile}
	sc := bufio.NewScanner(cr)
	// The initial buffer must not exceed the limit: the scanner allows max(cap, limit).
	sc.Buffer(make([]byte, 0, min(64<<10, lim.MaxLine+1)), lim.MaxLine+1) // +1: room for a '\r'
	rd := &Reader{sc: sc, lim: lim, n: cr}
	line, err := rd.nextLine()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: empty file (the first line is the header)", ErrFormat)
	}
	if err != nil {
		return nil, err
	}
	if err := strictJSON(line, &rd.header); err != nil {
		return nil, fmt.Errorf("%w: line 1 (header): %v", ErrFormat, err)
	}
	if err := rd.header.Validate(); err != nil {
		return nil, err
	}
	return rd, nil
}

// Header returns the file's header.
func (r *Reader) Header() Header { return r.header }

// nextLine returns the next non-blank line (valid until the next call) or io.EOF.
func (r *Reader) nextLine() ([]byte, error) {
	for r.sc.Scan() {
		r.line++
		line := bytes.TrimRight(r.sc.Bytes(), "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if len(line) > r.lim.MaxLine {
			return nil, fmt.Errorf("%w: line %d is over %d bytes", ErrLineTooLong, r.line, r.lim.MaxLine)
		}
		return line, nil
	}
	err := r.sc.Err()
	switch {
	case err == nil:
		return nil, io.EOF
	case errors.Is(err, bufio.ErrTooLong):
		return nil, fmt.Errorf("%w: line %d is over %d bytes", ErrLineTooLong, r.line+1, r.lim.MaxLine)
	case errors.Is(err, ErrTooLarge):
		return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, r.lim.MaxFile)
	}
	return nil, fmt.Errorf("bulk: read job file: %w", err)
}

// Next returns the next item's sequence number (1 for the first item; blank lines are not
// items) and its raw line, valid until the next call. At the end it returns io.EOF.
func (r *Reader) Next() (int, []byte, error) {
	line, err := r.nextLine()
	if err != nil {
		return 0, nil, err
	}
	if r.seq >= r.lim.MaxItems {
		return 0, nil, fmt.Errorf("%w: more than %d", ErrTooManyItems, r.lim.MaxItems)
	}
	r.seq++
	return r.seq, line, nil
}

// Item is one decoded line of a job file. Which fields are allowed depends on the job's kind.
type Item struct {
	Email string `json:"email,omitempty"`
	// enroll
	CSR          string `json:"csr,omitempty"`           // base64 DER PKCS#10
	EncryptedKey string `json:"encrypted_key,omitempty"` // base64 CMS to the transport certificate
	// keygen: key type; import: the private key (PEM PKCS#8, or base64 DER PKCS#8)
	Key string `json:"key,omitempty"`
	// import
	Certificate string `json:"certificate,omitempty"` // PEM or base64 DER
	PKCS12      string `json:"pkcs12,omitempty"`      // base64
	Password    string `json:"password,omitempty"`    // of the PKCS#12
}

// String never shows keys or passwords.
func (it Item) String() string { return "bulk item for " + truncate(it.Email) }

// GoString is String.
func (it Item) GoString() string { return it.String() }

// Enroll is a decoded enroll item.
type Enroll struct {
	Email    string
	CSR      *x509.CertificateRequest
	Envelope []byte
}

// Keygen is a decoded keygen item.
type Keygen struct {
	Email string
	Key   string
}

// Import is a decoded import item: the certificate and its private key (PKCS#8, the caller's to
// clear).
type Import struct {
	Cert  *x509.Certificate
	PKCS8 []byte
}

// ParseItem decodes one item line of a job of kind k. Any error wraps [ErrItem] and says
// what is wrong without repeating secret fields.
func ParseItem(h Header, line []byte) (any, error) {
	var it Item
	if !it.decodeFlat(line) {
		if err := strictJSON(line, &it); err != nil {
			return nil, fmt.Errorf("%w: not the expected JSON object: %v", ErrItem, err)
		}
	}
	switch h.Kind {
	case KindEnroll:
		if it.Key != "" || it.Certificate != "" || it.PKCS12 != "" || it.Password != "" {
			return nil, fmt.Errorf("%w: an enroll item has only email, csr and encrypted_key", ErrItem)
		}
		if it.Email == "" || it.CSR == "" || it.EncryptedKey == "" {
			return nil, fmt.Errorf("%w: an enroll item needs email, csr and encrypted_key", ErrItem)
		}
		der, err := decodeB64(it.CSR)
		if err != nil {
			return nil, fmt.Errorf("%w: field csr is not base64", ErrItem)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return nil, fmt.Errorf("%w: field csr is not a DER PKCS#10 request", ErrItem)
		}
		env, err := decodeB64(it.EncryptedKey)
		if err != nil {
			return nil, fmt.Errorf("%w: field encrypted_key is not base64", ErrItem)
		}
		return &Enroll{Email: it.Email, CSR: csr, Envelope: env}, nil
	case KindKeygen:
		if it.CSR != "" || it.EncryptedKey != "" || it.Certificate != "" || it.PKCS12 != "" || it.Password != "" {
			return nil, fmt.Errorf("%w: a keygen item has only email and key", ErrItem)
		}
		if it.Email == "" {
			return nil, fmt.Errorf("%w: a keygen item needs email", ErrItem)
		}
		k := it.Key
		if k == "" {
			k = h.Key
		}
		if k == "" {
			k = "rsa2048"
		}
		if !validKeyType(k) {
			return nil, fmt.Errorf("%w: key %q: choose one of %s", ErrItem, truncate(k), strings.Join(KeyTypes, ", "))
		}
		return &Keygen{Email: it.Email, Key: k}, nil
	case KindImport:
		if it.CSR != "" || it.EncryptedKey != "" || it.Email != "" {
			return nil, fmt.Errorf("%w: an import item has certificate and key, or pkcs12 and password (the mailbox comes from the certificate)", ErrItem)
		}
		if it.PKCS12 != "" {
			if it.Certificate != "" || it.Key != "" {
				return nil, fmt.Errorf("%w: an import item has either pkcs12 or certificate and key, not both", ErrItem)
			}
			return parsePKCS12(it.PKCS12, it.Password)
		}
		if it.Certificate == "" || it.Key == "" {
			return nil, fmt.Errorf("%w: an import item needs certificate and key (or pkcs12 and password)", ErrItem)
		}
		der, err := pemOrB64(it.Certificate, "CERTIFICATE")
		if err != nil {
			return nil, fmt.Errorf("%w: field certificate: %v", ErrItem, err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: field certificate is not an X.509 certificate", ErrItem)
		}
		pkcs8, err := parseKey(it.Key)
		if err != nil {
			return nil, err
		}
		return &Import{Cert: cert, PKCS8: pkcs8}, nil
	}
	return nil, fmt.Errorf("%w: unknown job kind %q", ErrFormat, truncate(string(h.Kind)))
}

func parsePKCS12(b64, password string) (*Import, error) {
	der, err := decodeB64(b64)
	if err != nil {
		return nil, fmt.Errorf("%w: field pkcs12 is not base64", ErrItem)
	}
	key, cert, _, err := pkcs12.DecodeChain(der, password)
	if err != nil {
		// The library's message names no secret; it may say the password is wrong.
		return nil, fmt.Errorf("%w: field pkcs12: %v", ErrItem, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: field pkcs12: unsupported key type %T", ErrItem, key)
	}
	return &Import{Cert: cert, PKCS8: pkcs8}, nil
}

// parseKey accepts a PEM "PRIVATE KEY" (PKCS#8), PEM "RSA PRIVATE KEY" / "EC PRIVATE KEY", or
// base64 DER PKCS#8, and returns PKCS#8 DER.
func parseKey(s string) ([]byte, error) {
	if strings.Contains(s, "-----BEGIN") {
		blk, _ := pem.Decode([]byte(s))
		if blk == nil {
			return nil, fmt.Errorf("%w: field key is not PEM", ErrItem)
		}
		switch blk.Type {
		case "PRIVATE KEY":
			return blk.Bytes, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: field key is not a PKCS#1 RSA key", ErrItem)
			}
			return x509.MarshalPKCS8PrivateKey(k)
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: field key is not an SEC 1 EC key", ErrItem)
			}
			return x509.MarshalPKCS8PrivateKey(k)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%w: field key is encrypted; give the key in clear inside the job file (or use pkcs12 and password)", ErrItem)
		}
		return nil, fmt.Errorf("%w: field key is a PEM %q, not a private key", ErrItem, truncate(blk.Type))
	}
	der, err := decodeB64(s)
	if err != nil {
		return nil, fmt.Errorf("%w: field key is neither PEM nor base64", ErrItem)
	}
	return der, nil
}

func pemOrB64(s, typ string) ([]byte, error) {
	if strings.Contains(s, "-----BEGIN") {
		blk, _ := pem.Decode([]byte(s))
		if blk == nil || blk.Type != typ {
			return nil, fmt.Errorf("not a PEM %s", typ)
		}
		return blk.Bytes, nil
	}
	b, err := decodeB64(s)
	if err != nil {
		return nil, errors.New("neither PEM nor base64")
	}
	return b, nil
}

// decodeB64 decodes standard or URL base64, padded or not, ignoring white space.
func decodeB64(s string) ([]byte, error) {
	if strings.ContainsAny(s, " \t\r\n") {
		s = strings.Map(func(r rune) rune {
			switch r {
			case ' ', '\t', '\r', '\n':
				return -1
			}
			return r
		}, s)
	}
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		var b []byte
		if b, err = enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, err
}

// strictJSON decodes exactly one JSON object with no unknown fields and no key given twice
// (encoding/json would let the last win, and matches keys without regard to case).
func strictJSON(b []byte, v any) error {
	if key := jsonstrict.DuplicateKey(b); key != "" {
		return fmt.Errorf("key %q given twice (keys are matched without regard to case)", truncate(key))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value on the line")
	}
	return nil
}

// truncate bounds user-supplied text quoted in errors.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// decodeFlat decodes line into it when the line is a flat object of the common shape: known
// field names spelled exactly, each once, with string values (see [plainString]). It reports false for anything else, which the caller then decodes
// with encoding/json; for the lines it accepts, both give the same Item. Bulk jobs are
// millions of such lines, and this is several times faster than the general decoder.
func (it *Item) decodeFlat(line []byte) bool {
	*it = Item{}
	var seen uint8
	p := skipSpace(line, 0)
	if p == len(line) || line[p] != '{' {
		return false
	}
	p = skipSpace(line, p+1)
	if p < len(line) && line[p] == '}' {
		return skipSpace(line, p+1) == len(line)
	}
	for {
		key, q, ok := plainString(line, p)
		if !ok {
			return false
		}
		p = skipSpace(line, q)
		if p == len(line) || line[p] != ':' {
			return false
		}
		val, q, ok := plainString(line, skipSpace(line, p+1))
		if !ok {
			return false
		}
		var field *string
		var bit uint8
		switch string(key) {
		case "email":
			field, bit = &it.Email, 1<<0
		case "csr":
			field, bit = &it.CSR, 1<<1
		case "encrypted_key":
			field, bit = &it.EncryptedKey, 1<<2
		case "key":
			field, bit = &it.Key, 1<<3
		case "certificate":
			field, bit = &it.Certificate, 1<<4
		case "pkcs12":
			field, bit = &it.PKCS12, 1<<5
		case "password":
			field, bit = &it.Password, 1<<6
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		*field = string(val)
		p = skipSpace(line, q)
		if p == len(line) {
			return false
		}
		switch line[p] {
		case ',':
			p = skipSpace(line, p+1)
		case '}':
			return skipSpace(line, p+1) == len(line)
		default:
			return false
		}
	}
}

// skipSpace returns the index of the first byte at or after p that is not JSON white space.
func skipSpace(b []byte, p int) int {
	for p < len(b) && (b[p] == ' ' || b[p] == '\t' || b[p] == '\n' || b[p] == '\r') {
		p++
	}
	return p
}

// plainString reads a JSON string at p whose escapes, if any, are single characters (as in PEM
// text: \n); it returns its contents and the index after its closing quote, or false if there
// is no such string at p (\u escapes, control characters, invalid UTF-8, no closing quote).
func plainString(b []byte, p int) ([]byte, int, bool) {
	if p >= len(b) || b[p] != '"' {
		return nil, 0, false
	}
	start := p + 1
	ascii := true
	var out []byte // the unescaped contents, once an escape is met
	for i := start; i < len(b); i++ {
		c := b[i]
		switch {
		case c == '"':
			if out == nil {
				out = b[start:i]
			}
			if !ascii && !utf8.Valid(out) {
				return nil, 0, false
			}
			return out, i + 1, true
		case c == '\\':
			if out == nil {
				out = append(make([]byte, 0, len(b)-start), b[start:i]...)
			}
			if i+1 == len(b) {
				return nil, 0, false
			}
			i++
			switch b[i] {
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case '"', '\\', '/':
				out = append(out, b[i])
			default: // \u, \b, \f and invalid escapes: left to encoding/json
				return nil, 0, false
			}
			continue
		case c < 0x20:
			return nil, 0, false
		case c >= 0x80:
			ascii = false
		}
		if out != nil {
			out = append(out, c)
		}
	}
	return nil, 0, false
}
