package store

// DirectorySkips are the certificates the directory publisher (escrow/directory) could not
// publish for want of a single entry to put them in (no entry has the mailbox, several have
// it, or the directory refused the change): it tries them again at its sweep, so that a
// certificate appears once its entry does, and forgets each once it is published, revoked or
// expired. The table holds only those certificates, so a retry reads them alone, never the
// whole trail.
type DirectorySkips interface {
	// SkipDirectory records serial as skipped; recording it again changes nothing.
	// [ErrInvalid] for an empty serial.
	SkipDirectory(serial string) error
	// DirectorySkipped returns up to limit skipped serials greater than after, in order
	// (after "" starts at the first).
	DirectorySkipped(after string, limit int) ([]string, error)
	// UnskipDirectory forgets serial; a serial not recorded changes nothing.
	UnskipDirectory(serial string) error
}
