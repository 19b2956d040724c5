package sqltx

import "fmt"

// Cursors (store.Cursors). A write transaction holds the writer lock, so reading a cursor and
// moving it in one Update is atomic.

// Cursor returns a cursor's position; see store.Cursors.
func (tx *Tx) Cursor(name string) (int64, error) {
	const op = "cursor"
	if name == "" {
		return 0, invalid(op, "cursor name is empty")
	}
	var pos int64
	err := tx.queryRow(op, []any{&pos}, `SELECT position FROM cursors WHERE name = ?`, name)
	if errorsIsNotFound(err) {
		return 0, nil
	}
	return pos, err
}

// AdvanceCursor moves a cursor forward; see store.Cursors.
func (tx *Tx) AdvanceCursor(name string, pos int64) error {
	const op = "advance cursor"
	switch {
	case name == "":
		return invalid(op, "cursor name is empty")
	case pos < 0:
		return invalid(op, "cursor %s: position %d is negative", name, pos)
	}
	if err := tx.check(true); err != nil {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	n, err := tx.exec(op, `UPDATE cursors SET position = ? WHERE name = ? AND position < ?`, pos, name, pos)
	if err != nil || n > 0 {
		return err
	}
	var exists int
	err = tx.queryRow(op, []any{&exists}, `SELECT COUNT(*) FROM cursors WHERE name = ?`, name)
	if err != nil || exists > 0 {
		return err // at or past pos already
	}
	_, err = tx.exec(op, `INSERT INTO cursors (name, position) VALUES (?, ?)`, name, pos)
	return err
}
