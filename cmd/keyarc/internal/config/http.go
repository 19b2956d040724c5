package config

import (
	"fmt"
	"time"
)

// HTTPConfig tunes the HTTPS listener: its timeouts and the throttling of failed logins.
type HTTPConfig struct {
	// ReadHeaderTimeout bounds the time to read a request's headers (slow clients).
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds the time to read a whole request, body included.
	ReadTimeout Duration `yaml:"read_timeout"`
	// WriteTimeout bounds the time from the end of the request headers to the end of the
	// answer.
	WriteTimeout Duration `yaml:"write_timeout"`
	// IdleTimeout bounds how long a keep-alive connection waits for its next request.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// LoginFailuresPerSource and LoginFailuresPerMailbox are the failed logins allowed per
	// source address (IPv6: per /64) and per mailbox within LoginFailureWindow; beyond them,
	// requests with credentials get 429 until the window ends.
	LoginFailuresPerSource  int      `yaml:"login_failures_per_source"`
	LoginFailuresPerMailbox int      `yaml:"login_failures_per_mailbox"`
	LoginFailureWindow      Duration `yaml:"login_failure_window"`
}

// DefaultHTTP holds the defaults of the http section.
func DefaultHTTP() HTTPConfig {
	return HTTPConfig{
		ReadHeaderTimeout:       Duration{10 * time.Second},
		ReadTimeout:             Duration{30 * time.Second},
		WriteTimeout:            Duration{60 * time.Second},
		IdleTimeout:             Duration{120 * time.Second},
		LoginFailuresPerSource:  10,
		LoginFailuresPerMailbox: 20,
		LoginFailureWindow:      Duration{time.Minute},
	}
}

// Validate checks the http section and names the first wrong field.
func (h HTTPConfig) Validate() error {
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"http.read_header_timeout", h.ReadHeaderTimeout.Duration}, {"http.read_timeout", h.ReadTimeout.Duration},
		{"http.write_timeout", h.WriteTimeout.Duration}, {"http.idle_timeout", h.IdleTimeout.Duration},
	} {
		if d.v < 100*time.Millisecond || d.v > time.Hour {
			return fmt.Errorf("%s: %v is outside 100ms..1h", d.field, d.v)
		}
	}
	if h.ReadHeaderTimeout.Duration > h.ReadTimeout.Duration {
		return fmt.Errorf("http.read_header_timeout (%v) must not exceed http.read_timeout (%v)", h.ReadHeaderTimeout.Duration, h.ReadTimeout.Duration)
	}
	if h.LoginFailuresPerSource < 1 || h.LoginFailuresPerMailbox < 1 {
		return fmt.Errorf("http.login_failures_per_source and http.login_failures_per_mailbox must be at least 1")
	}
	if h.LoginFailureWindow.Duration < time.Second || h.LoginFailureWindow.Duration > 24*time.Hour {
		return fmt.Errorf("http.login_failure_window: %v is outside 1s..24h", h.LoginFailureWindow.Duration)
	}
	return nil
}
