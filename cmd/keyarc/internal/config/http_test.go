package config

import (
	"strings"
	"testing"
	"time"
)

func TestHTTPConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*HTTPConfig)
		// wantField is the field the error must name; empty means no error.
		wantField string
	}{
		{name: "defaults", change: func(*HTTPConfig) {}},
		{name: "short timeouts", change: func(h *HTTPConfig) { h.ReadHeaderTimeout.Duration, h.ReadTimeout.Duration = time.Second, 2*time.Second }},
		{name: "no header timeout", change: func(h *HTTPConfig) { h.ReadHeaderTimeout.Duration = 0 }, wantField: "http.read_header_timeout"},
		{name: "header timeout over read timeout", change: func(h *HTTPConfig) { h.ReadHeaderTimeout.Duration = time.Minute }, wantField: "http.read_timeout"},
		{name: "no failures allowed", change: func(h *HTTPConfig) { h.LoginFailuresPerSource = 0 }, wantField: "http.login_failures_per_source"},
		{name: "window too short", change: func(h *HTTPConfig) { h.LoginFailureWindow.Duration = time.Millisecond }, wantField: "http.login_failure_window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := DefaultHTTP()
			tt.change(&h)
			err := h.Validate()
			if (err != nil) != (tt.wantField != "") || err != nil && !strings.Contains(err.Error(), tt.wantField) {
				t.Errorf("validate() = %v, want an error naming %q", err, tt.wantField)
			}
		})
	}
}
