package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// serveRecordName is the file, in the state folder, where a running `keyarc serve` records
// where it listens, so that client commands given --state reach it wherever it was started.
const serveRecordName = "serve.json"

// ServeRecord is the content of DIR/serve.json.
type ServeRecord struct {
	// URL is the HTTPS base URL of the appliance, e.g. https://127.0.0.1:8443.
	URL string `json:"url"`
	// Metrics is the base URL of the metrics listener.
	Metrics string `json:"metrics"`
	// PID is the process of the serve; the record is stale once it is gone.
	PID int `json:"pid"`
}

// ErrServeStale reports a serve.json left by a process that no longer runs.
var ErrServeStale = errors.New("keyarc serve is not running")

// DialAddr turns a listen address into one a local client can dial: an unspecified host
// (0.0.0.0, ::, empty) becomes the loopback address.
func DialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// WriteServeRecord records, atomically, where this process serves.
func WriteServeRecord(cfg *Config, https, metrics string) error {
	b, err := json.MarshalIndent(ServeRecord{
		URL: "https://" + DialAddr(https), Metrics: "http://" + DialAddr(metrics), PID: os.Getpid(),
	}, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(cfg.dir, ".serve-*.json")
	if err != nil {
		return fmt.Errorf("record the serve address: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(cfg.dir, serveRecordName))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record the serve address: %w", err)
	}
	return nil
}

// RemoveServeRecord removes DIR/serve.json if this process wrote it.
func RemoveServeRecord(cfg *Config) {
	path := filepath.Join(cfg.dir, serveRecordName)
	if rec, err := ReadServeRecord(cfg.dir); err == nil && rec.PID == os.Getpid() {
		os.Remove(path)
	}
}

// ReadServeRecord reads DIR/serve.json. It returns os.ErrNotExist when there is none, and an
// error wrapping ErrServeStale when the process that wrote it is gone.
func ReadServeRecord(dir string) (*ServeRecord, error) {
	path := filepath.Join(dir, serveRecordName)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec ServeRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.URL == "" || rec.PID <= 0 {
		return nil, fmt.Errorf("%s is not a serve record (remove it): %v", path, err)
	}
	if !processAlive(rec.PID) {
		return &rec, fmt.Errorf("%w on %s: %s names process %d, which is gone; start it with `keyarc serve --state %s`, or give --server URL",
			ErrServeStale, dir, path, rec.PID, dir)
	}
	return &rec, nil
}

// processAlive reports whether a process with this ID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
