package sqltx

import (
	"time"
)

// Failed logins (store.LoginFailures): one row per key and window, its count raised in place.

// AddLoginFailure counts one failed login; see store.LoginFailures.
func (tx *Tx) AddLoginFailure(key string, window time.Time) error {
	const op = "add login failure"
	switch {
	case key == "":
		return invalid(op, "key is empty")
	case window.IsZero():
		return invalid(op, "key %s: window is zero", key)
	}
	_, err := tx.exec(op, `INSERT INTO login_failures (key, window_start, failures) VALUES (?, ?, 1)
		ON CONFLICT (key, window_start) DO UPDATE SET failures = login_failures.failures + 1`, key, window.UnixMicro())
	return err
}

// LoginFailuresAtLeast returns the keys with at least min failures in a window; see
// store.LoginFailures.
func (tx *Tx) LoginFailuresAtLeast(window time.Time, min int) (map[string]int, error) {
	out := map[string]int{}
	err := tx.query("login failures", func(r Rows) error {
		var k string
		var n int
		if err := r.Scan(&k, &n); err != nil {
			return err
		}
		out[k] = n
		return nil
	}, `SELECT key, failures FROM login_failures WHERE window_start = ? AND failures >= ?`, window.UnixMicro(), max(min, 1))
	return out, err
}

// DeleteLoginFailuresBefore deletes the counts of ended windows; see store.LoginFailures.
func (tx *Tx) DeleteLoginFailuresBefore(t time.Time) (int, error) {
	n, err := tx.exec("delete login failures", `DELETE FROM login_failures WHERE window_start < ?`, t.UnixMicro())
	return int(n), err
}
