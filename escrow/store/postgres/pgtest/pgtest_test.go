package pgtest

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestServer: the server takes connections on its socket, each database is its own, and the
// server and its folder are gone once the last test holding it has ended.
func TestServer(t *testing.T) {
	var dir string
	t.Run("use", func(t *testing.T) {
		srv := Start(t)
		dir = srv.Dir()
		if again := Start(t); again != srv {
			t.Error("a second Start while the first holds the server started another")
		}
		a, b := srv.NewDatabase(t), srv.NewDatabase(t)
		if a == b {
			t.Fatalf("two databases with one connection string %q", a)
		}
		ctx := context.Background()
		c, err := pgconn.Connect(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "CREATE TABLE t (x int)").ReadAll(); err != nil {
			t.Fatal(err)
		}
		d, err := pgconn.Connect(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close(ctx)
		if _, err := d.Exec(ctx, "SELECT * FROM t").ReadAll(); err == nil {
			t.Error("the second database sees the first one's table")
		}
	})
	if dir == "" {
		return // skipped: PostgreSQL is not installed
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the server's folder %s is still there after the last test (%v)", dir, err)
	}
}
