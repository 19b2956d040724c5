package statedir

import (
	"context"
	"fmt"
	"time"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/cmd/keyarc/internal/pemfile"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// Database is an open archive: the store, and the check its backend makes of itself (SQLite's
// quick_check of its pages; PostgreSQL's answer and schema version).
type Database interface {
	store.Store
	Check(ctx context.Context) error
}

// OpenDatabase opens the archive that cfg's database names: the SQLite file (created if it
// is missing), or the PostgreSQL database of a postgres:// URL, with the password read from
// database_password_source. Every command that opens the archive goes through here.
func OpenDatabase(cfg *config.Config) (Database, error) {
	if !cfg.IsPostgres() {
		db, err := sqlite.Open(cfg.Path(cfg.Database))
		if err != nil {
			return nil, err // not a Database holding a nil *sqlite.DB
		}
		return db, nil
	}
	conn, err := cfg.PostgresConnString()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := postgres.Open(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", cfg.DatabaseName(), err)
	}
	return db, nil
}

// DatabaseExists reports whether the archive is there to open without creating it: the
// SQLite file exists. A PostgreSQL database is created by its administrator, so it is taken
// to be there (opening it tells).
func DatabaseExists(cfg *config.Config) bool {
	return cfg.IsPostgres() || pemfile.Exists(cfg.Path(cfg.Database))
}
