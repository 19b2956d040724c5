package sqltx

// Directory skips (store.DirectorySkips): the serials the directory publisher retries.

// SkipDirectory records a skipped serial; see store.DirectorySkips.
func (tx *Tx) SkipDirectory(serial string) error {
	const op = "skip directory"
	if serial == "" {
		return invalid(op, "serial is empty")
	}
	_, err := tx.exec(op, `INSERT INTO directory_skipped (serial) VALUES (?) ON CONFLICT (serial) DO NOTHING`, serial)
	return err
}

// DirectorySkipped returns a page of skipped serials; see store.DirectorySkips.
func (tx *Tx) DirectorySkipped(after string, limit int) ([]string, error) {
	const op = "list directory skips"
	if limit <= 0 {
		return nil, invalid(op, "limit %d is not positive", limit)
	}
	var out []string
	err := tx.query(op, func(rows Rows) error {
		var s string
		if err := rows.Scan(&s); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	}, `SELECT serial FROM directory_skipped WHERE serial > ? ORDER BY serial LIMIT ?`, after, limit)
	return out, err
}

// UnskipDirectory forgets a skipped serial; see store.DirectorySkips.
func (tx *Tx) UnskipDirectory(serial string) error {
	_, err := tx.exec("unskip directory", `DELETE FROM directory_skipped WHERE serial = ?`, serial)
	return err
}
