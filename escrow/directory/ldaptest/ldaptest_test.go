package ldaptest

import (
	"strings"
	"testing"
)

// TestServer starts slapd, finds the people by mail as a mail client would, plants a value,
// and finds the data again after a restart.
func TestServer(t *testing.T) {
	s := Start(t)
	out, err := run("", "ldapsearch", "-x", "-LLL", "-H", s.URL, "-b", Base, "(mail="+Alice+")", "uid")
	if err != nil || !strings.Contains(out, "uid: alice") {
		t.Fatalf("ldapsearch (mail=%s) = %q, %v; want uid alice", Alice, out, err)
	}
	s.Modify(t, "dn: "+DN("bob")+"\nchangetype: modify\nadd: description\ndescription: planted\n")
	s.Stop()
	if _, err := run("", "ldapsearch", "-x", "-H", s.URL, "-b", Base, "(mail="+Bob+")"); err == nil {
		t.Fatal("ldapsearch succeeded against a stopped server")
	}
	s.Restart(t)
	if got := s.Attribute(t, Bob, "description"); len(got) != 1 || string(got[0]) != "planted" {
		t.Fatalf("description of bob after a restart = %q; want [planted]", got)
	}
}

func TestParseLDIF(t *testing.T) {
	in := "dn: uid=a,ou=people,dc=example,dc=org\nuserCertificate;binary:: AAEC\nuserCertificate;binary:: AwQ=\nmail: a@example.org\n"
	got, err := ParseLDIF(in, "userCertificate;binary")
	if err != nil || len(got) != 2 || string(got[0]) != "\x00\x01\x02" || string(got[1]) != "\x03\x04" {
		t.Fatalf("ParseLDIF = %q, %v", got, err)
	}
}

// TestFreePortNeverRepeats: a process never gets the same port twice from FreePort. A test
// that starts the appliance with its HTTPS, metrics and public ports from three calls was
// refused ("public_listen must differ from listen and metrics_listen") when two draws from
// the range below the ephemeral ports met.
func TestFreePortNeverRepeats(t *testing.T) {
	seen := make(map[int]bool)
	for range 3000 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d returned twice (after %d ports)", p, len(seen))
		}
		seen[p] = true
	}
}
