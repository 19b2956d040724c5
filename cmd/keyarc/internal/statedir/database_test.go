package statedir

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyarc/keyarc/cmd/keyarc/internal/config"
	"github.com/keyarc/keyarc/escrow/store"
	"github.com/keyarc/keyarc/escrow/store/postgres"
	"github.com/keyarc/keyarc/escrow/store/postgres/pgtest"
	"github.com/keyarc/keyarc/escrow/store/sqlite"
)

// TestOpenDatabase: the configuration's database picks the backend, a SQLite file or a
// PostgreSQL URL (here on a throw-away server's socket, with the password read from the
// environment), and both open, take a write and pass their check.
func TestOpenDatabase(t *testing.T) {
	srv := pgtest.Start(t)
	t.Setenv("KEYARC_TEST_DB_PASSWORD", "unused-with-trust")
	for _, tt := range []struct {
		name, yaml string
		check      func(Database) bool
	}{
		{"sqlite", "database: keyarc.db\n", func(db Database) bool { _, ok := db.(*sqlite.DB); return ok }},
		{"postgres", "database: " + srv.PostgresURL(srv.CreateDatabase(t)) + "\ndatabase_password_source: env:KEYARC_TEST_DB_PASSWORD\n",
			func(db Database) bool { _, ok := db.(*postgres.DB); return ok }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			yaml := "token:\n  uri: pkcs11:token=x?module-path=/m.so&pin-source=file:/p\n" + tt.yaml
			if err := os.WriteFile(filepath.Join(dir, config.Name), []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !DatabaseExists(cfg) && cfg.IsPostgres() {
				t.Error("DatabaseExists: false for a PostgreSQL database")
			}
			db, err := OpenDatabase(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if !tt.check(db) {
				t.Errorf("OpenDatabase gave a %T", db)
			}
			ctx := context.Background()
			if err := db.Update(ctx, func(tx store.Tx) error {
				_, err := tx.InsertRecoverySet(store.RecoverySet{Quorum: 1, KRASerials: []string{"1"}, CreatedBy: "test"})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := db.Check(ctx); err != nil {
				t.Errorf("Check: %v", err)
			}
		})
	}
}
