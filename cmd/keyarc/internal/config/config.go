// Package config is the appliance configuration, DIR/keyarc.yaml, read strictly (unknown
// fields are errors that name the line and the nearest valid field), and the serve record,
// DIR/serve.json, where a running `keyarc serve` says where it listens.
//
// It imports policy (templates are part of the file), escrow/audit (for a default), escrow/ca
// (to check the public URL as certificates will carry it) and the YAML decoder; it must not
// import the server, the store or hsm. A [Config] is read once and
// then only read: it is safe to share between goroutines.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keyarc/keyarc/escrow/audit"
	"github.com/keyarc/keyarc/escrow/ca"
	"github.com/keyarc/keyarc/policy"
)

// Name is the file name of the appliance configuration inside the state folder.
const Name = "keyarc.yaml"

// Config is the appliance configuration, read strictly from DIR/keyarc.yaml. Relative paths are
// relative to the folder that holds the file. It never holds a PIN: the token URI names a
// pin-source instead.
type Config struct {
	Listen        string `yaml:"listen"`
	MetricsListen string `yaml:"metrics_listen"`
	// Database is the SQLite file of the archive, or a postgres:// URL of a PostgreSQL
	// database shared by several nodes (see [Config.IsPostgres]).
	Database string `yaml:"database"`
	// DatabasePasswordSource names where the PostgreSQL password is read, as token.uri's
	// pin-source: file:PATH (relative to this folder) or env:NAME. Never the password itself,
	// which the URL may not carry either. Optional (a unix socket with peer authentication,
	// or a client certificate, needs none).
	DatabasePasswordSource string `yaml:"database_password_source,omitempty"`
	// PublicURL is the plain-HTTP base URL written into every certificate: the CRL at
	// <public_url>/crl/ca.crl, OCSP at <public_url>/ocsp, the CA certificate at
	// <public_url>/ca.crt (see [PublicURL]). Default http://127.0.0.1:8080 (development).
	PublicURL PublicURL `yaml:"public_url"`
	// PublicListen is the plain-HTTP listener (host:port) that serves what public_url points
	// at: the CRL, OCSP and the CA certificate. Empty means DefaultPublicListen, the address of
	// the default public_url; see [Config.PublicListenAddr].
	PublicListen string `yaml:"public_listen,omitempty"`
	// Node names this node among those sharing one PostgreSQL database: in its log lines, in
	// the audit entries it writes and in the leases it holds. Empty means the host name; `serve
	// --node` overrides it. 1 to 63 printable ASCII characters, no space (see [Config.NodeName]).
	Node string `yaml:"node,omitempty"`
	// Cluster tunes the leases of nodes sharing one PostgreSQL database; see ClusterConfig.
	Cluster ClusterConfig `yaml:"cluster,omitempty"`

	Token TokenConfig `yaml:"token"`
	CA    CAConfig    `yaml:"ca"`

	Transport struct {
		Certificate string `yaml:"certificate"`
	} `yaml:"transport"`

	TLS struct {
		Certificate string `yaml:"certificate"`
		Key         string `yaml:"key"`
	} `yaml:"tls"`

	Enrollment struct {
		CodeTTL Duration `yaml:"code_ttl"`
	} `yaml:"enrollment"`

	Recovery struct {
		// RequestTTL is how long a recovery request waits for its quorum.
		RequestTTL Duration `yaml:"request_ttl"`
		// DrillTTL is how long a drill waits for its KRA's proof.
		DrillTTL Duration `yaml:"drill_ttl"`
		// DrillWindow is how recent a KRA's drill proof must be for its epoch's quorum health.
		DrillWindow Duration `yaml:"drill_window"`
		// CertMargin is how long past now a KRA's certificate must stay valid to count.
		CertMargin Duration `yaml:"cert_margin"`
	} `yaml:"recovery"`

	Templates []policy.Template `yaml:"templates"`

	Audit AuditConfig `yaml:"audit,omitempty"`

	// HTTP tunes the HTTPS listener (timeouts, login throttling); see HTTPConfig.
	HTTP HTTPConfig `yaml:"http"`

	// Notices, when present, is the SMTP relay that tells subscribers their key was escrowed
	// and of each recovery of it; see NoticesConfig. Absent, nobody is told by mail.
	Notices *NoticesConfig `yaml:"notices,omitempty"`

	// Directory, when present, sets who may look certificates up and the LDAP server they are
	// published to; see DirectoryConfig. Absent, lookups are open and nothing is published.
	Directory *DirectoryConfig `yaml:"directory,omitempty"`

	// dir is the folder the file was read from; not part of the file.
	dir string
}

// TokenConfig names the appliance token and the labels of its keys.
type TokenConfig struct {
	// URI is an RFC 7512 PKCS#11 URI naming the token, its module and its pin-source.
	URI string `yaml:"uri"`
	// SoftHSMConf, when set, is exported as SOFTHSM2_CONF before the module loads
	// (development installs only).
	SoftHSMConf string `yaml:"softhsm_conf"`
	// P11KitServer, when set, is the socket of a `p11-kit server` that exposes the token to
	// several nodes (development and tests): it is exported as P11_KIT_SERVER_ADDRESS for the
	// module of the URI, p11-kit's client (p11-kit-client.so). A path relative to the state
	// folder.
	P11KitServer    string   `yaml:"p11_kit_server,omitempty"`
	CAKey           string   `yaml:"ca_key"`
	TransportKey    string   `yaml:"transport_key"`
	AuditKey        string   `yaml:"audit_key"`
	MaxSessions     int      `yaml:"max_sessions"`
	PoolWaitTimeout Duration `yaml:"pool_wait_timeout"`
	// CallTimeout bounds each call into the token: a token that stops answering (without
	// disconnecting) is then reported not ready and answered with 503, never waited on forever.
	CallTimeout Duration `yaml:"call_timeout"`
}

// CAConfig locates the CA certificate and names the CA's own certificate policy.
type CAConfig struct {
	Certificate string `yaml:"certificate"`
	// PolicyOID, when set, is the CA's own policy OID (dotted decimal), added to every S/MIME
	// certificate beside the reserved S/MIME Baseline Requirements policy.
	PolicyOID PolicyOID `yaml:"policy_oid,omitempty"`
}

// Duration is a time.Duration written as "24h" in YAML.
type Duration struct{ time.Duration }

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 24h or 90s", n.Line, s)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Default returns the configuration `keyarc init` writes.
func Default() *Config {
	c := &Config{
		Listen:        "127.0.0.1:8443",
		MetricsListen: "127.0.0.1:9180",
		Database:      "keyarc.db",
		PublicURL:     PublicURL(ca.DefaultPublicURL),
	}
	c.Token.CAKey = "ca-key"
	c.Token.TransportKey = "transport-key"
	c.Token.AuditKey = "audit-key"
	c.Token.MaxSessions = 8
	c.Token.PoolWaitTimeout = Duration{5 * time.Second}
	c.Token.CallTimeout = Duration{10 * time.Second}
	c.CA.Certificate = "ca.pem"
	c.Transport.Certificate = "transport.pem"
	c.TLS.Certificate = "tls.pem"
	c.TLS.Key = "tls-key.pem"
	c.Enrollment.CodeTTL = Duration{7 * 24 * time.Hour}
	c.Recovery.RequestTTL = Duration{24 * time.Hour}
	c.Recovery.DrillTTL = Duration{7 * 24 * time.Hour}
	c.Recovery.DrillWindow = Duration{90 * 24 * time.Hour}
	c.Recovery.CertMargin = Duration{30 * 24 * time.Hour}
	c.HTTP = DefaultHTTP()
	return c
}

// DefaultAt is [Default] for a configuration that will live in the folder dir: its relative
// paths resolve against dir before the file is written.
func DefaultAt(dir string) *Config {
	c := Default()
	c.dir = dir
	return c
}

// Load reads DIR/keyarc.yaml strictly: unknown fields are errors.
func Load(dir string) (*Config, error) {
	path := filepath.Join(dir, Name)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no configuration at %s: run `keyarc init --state %s` first", path, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return nil, explainConfigError(path, b, err)
	}
	c.dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks every field and names the first one that is wrong.
func (c *Config) Validate() error {
	for _, a := range []struct{ field, v string }{{"listen", c.Listen}, {"metrics_listen", c.MetricsListen}} {
		_, port, err := net.SplitHostPort(a.v)
		if err != nil {
			return fmt.Errorf("%s: %q is not host:port", a.field, a.v)
		}
		if port != "0" && !validPort(port) {
			return fmt.Errorf("%s: %q: port %q is not a number in 0..65535", a.field, a.v, port)
		}
	}
	if err := checkPublicListen(c.PublicListen); err != nil {
		return err
	}
	if pl := c.PublicListenAddr(); pl == c.Listen || pl == c.MetricsListen {
		return fmt.Errorf("public_listen %s must differ from listen and metrics_listen: the public listener is plain HTTP on its own address", pl)
	}
	if err := checkPublicURL(string(c.PublicURL)); err != nil {
		return fmt.Errorf("public_url: %w", err)
	}
	if _, err := c.CA.PolicyOID.OID(); err != nil {
		return fmt.Errorf("ca.policy_oid: %w", err)
	}
	if c.Listen == c.MetricsListen {
		return errors.New("metrics_listen must differ from listen: metrics are served on their own listener")
	}
	if c.Token.URI == "" {
		return errors.New("token.uri is required (a PKCS#11 URI such as pkcs11:token=keyarc?module-path=...&pin-source=file:...)")
	}
	if strings.Contains(c.Token.URI, "pin-value") {
		return errors.New("token.uri: pin-value is not allowed; give the PIN with pin-source=file:PATH or env:NAME")
	}
	for _, a := range []struct{ field, v string }{
		{"token.ca_key", c.Token.CAKey}, {"token.transport_key", c.Token.TransportKey}, {"token.audit_key", c.Token.AuditKey},
		{"database", c.Database}, {"ca.certificate", c.CA.Certificate}, {"transport.certificate", c.Transport.Certificate},
		{"tls.certificate", c.TLS.Certificate}, {"tls.key", c.TLS.Key},
	} {
		if a.v == "" {
			return fmt.Errorf("%s is required", a.field)
		}
	}
	if err := c.validateDatabase(); err != nil {
		return err
	}
	if c.Node != "" {
		if err := CheckNodeName(c.Node); err != nil {
			return fmt.Errorf("node: %q: %w", c.Node, err)
		}
	}
	if err := c.Cluster.Validate(); err != nil {
		return err
	}
	if c.Token.MaxSessions < 1 || c.Token.MaxSessions > 256 {
		return fmt.Errorf("token.max_sessions: %d is outside 1..256", c.Token.MaxSessions)
	}
	// A request waits for a session, or a call for the token, no longer than a client would:
	// past a few minutes the caller is gone and the wait only holds the work up.
	if c.Token.PoolWaitTimeout.Duration <= 0 || c.Token.PoolWaitTimeout.Duration > 5*time.Minute {
		return errors.New("token.pool_wait_timeout must be positive and at most 5m")
	}
	if c.Token.CallTimeout.Duration < time.Second || c.Token.CallTimeout.Duration > 10*time.Minute {
		return errors.New("token.call_timeout must be between 1s (an HSM's slowest operation must fit in it) and 10m")
	}
	// An enrollment code is a credential: it lives days or weeks, never years.
	if c.Enrollment.CodeTTL.Duration < time.Minute || c.Enrollment.CodeTTL.Duration > 90*24*time.Hour {
		return errors.New("enrollment.code_ttl must be between 1m and 2160h (90 days)")
	}
	if c.Recovery.RequestTTL.Duration < time.Minute || c.Recovery.RequestTTL.Duration > 30*24*time.Hour {
		return errors.New("recovery.request_ttl must be between 1m and 720h")
	}
	if c.Recovery.DrillTTL.Duration < time.Minute || c.Recovery.DrillTTL.Duration > 30*24*time.Hour {
		return errors.New("recovery.drill_ttl must be between 1m and 720h")
	}
	// A proof older than two years says little of a token today, and a margin of more than a
	// year would count no KRA whose certificate has the usual validity.
	if c.Recovery.DrillWindow.Duration < time.Hour || c.Recovery.DrillWindow.Duration > 2*365*24*time.Hour {
		return errors.New("recovery.drill_window must be between 1h and 17520h")
	}
	if c.Recovery.CertMargin.Duration < 0 || c.Recovery.CertMargin.Duration > 365*24*time.Hour {
		return errors.New("recovery.cert_margin must be between 0s and 8760h")
	}
	if _, err := policy.Templates(c.Templates); err != nil {
		return err
	}
	if err := c.Audit.Validate(); err != nil {
		return err
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	if err := c.Notices.Validate(); err != nil {
		return err
	}
	if err := c.Directory.Validate(); err != nil {
		return err
	}
	return nil
}

// Dir is the folder the configuration was read from (absolute).
func (c *Config) Dir() string { return c.dir }

// Path resolves a configured path against the configuration folder.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// LogValue keeps the configuration loggable: it holds no secret, but say so explicitly by
// listing only what an operator needs.
func (c *Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("listen", c.Listen),
		slog.String("metrics_listen", c.MetricsListen),
		slog.String("node", c.Node),
		slog.String("database", c.DatabaseName()),
		slog.String("public_url", string(c.PublicURL)),
		slog.String("public_listen", c.PublicListenAddr()),
		slog.String("token", c.Token.URI),
	)
}

// Write writes c to DIR/keyarc.yaml, refusing to overwrite.
func Write(dir string, c *Config) error {
	var buf bytes.Buffer
	buf.WriteString("# keyarc appliance configuration. Paths are relative to this folder.\n")
	buf.WriteString("# PINs never live here: token.uri names a pin-source (file:PATH or env:NAME).\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// AuditConfig tunes the audit trail's checkpoints.
type AuditConfig struct {
	// CheckpointEvery is the most entries that may follow the last signed checkpoint (default
	// 1000); a checkpoint is also made a minute after any new entry, and at shutdown.
	CheckpointEvery int `yaml:"checkpoint_every,omitempty"`
}

// Validate checks the audit section and names the wrong field.
func (c AuditConfig) Validate() error {
	if c.CheckpointEvery < 0 || c.CheckpointEvery > 1_000_000 {
		return fmt.Errorf("audit.checkpoint_every: %d is outside 1..1000000 (0 means %d)", c.CheckpointEvery, audit.DefaultEvery)
	}
	return nil
}

// TokenURI writes an RFC 7512 URI (the form of token.uri) for a token with its PIN in a
// file.
func TokenURI(label, module, pinFile string) string {
	return "pkcs11:token=" + url.PathEscape(label) +
		"?module-path=" + url.QueryEscape(module) + "&pin-source=" + url.QueryEscape("file:"+pinFile)
}
