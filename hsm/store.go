package hsm

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// pinStamp tells whether a pin-source changed: a PIN file's modification time, size and a
// keyed hash of its content (an environment variable: the keyed hash of its value). The
// hash key is random per process, so a stamp is no PIN oracle; the PIN itself is not kept.
type pinStamp struct {
	modTime int64
	size    int64
	mac     [sha256.Size]byte
	missing bool
}

// stampKey keys the content hashes of pinStamp.
var stampKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}()

// stampPIN returns the stamp of a pin-source. A source that cannot be read has a stamp too
// (missing), so that its coming back counts as a change.
func stampPIN(source string) pinStamp {
	var content []byte
	var st pinStamp
	if p, ok := strings.CutPrefix(source, "file:"); ok {
		fi, err := os.Stat(p)
		if err != nil {
			return pinStamp{missing: true}
		}
		st.modTime, st.size = fi.ModTime().UnixNano(), fi.Size()
		if content, err = os.ReadFile(p); err != nil {
			return pinStamp{missing: true}
		}
	} else if name, ok := strings.CutPrefix(source, "env:"); ok {
		v, ok := os.LookupEnv(name)
		if !ok {
			return pinStamp{missing: true}
		}
		content = []byte(v)
	}
	m := hmac.New(sha256.New, stampKey)
	m.Write(content)
	clear(content)
	copy(st.mac[:], m.Sum(nil))
	return st
}

// softHSMDefaultConf is where SoftHSM 2 looks for its configuration when SOFTHSM2_CONF is
// unset (Debian and upstream builds).
const softHSMDefaultConf = "/etc/softhsm/softhsm2.conf"

// explainStore turns a module initialisation failure whose cause is a missing token store
// into [ErrTokenStoreNotFound], naming where the module looked. It knows SoftHSM 2, whose
// C_Initialize answers a bare CKR_GENERAL_ERROR when its configuration file or its token
// directory is missing. Other errors are returned unchanged.
func explainStore(module string, err error) error {
	if err == nil || errors.Is(err, ErrPINIncorrect) || errors.Is(err, ErrPINSource) ||
		errors.Is(err, ErrTokenStoreNotFound) || !strings.Contains(strings.ToLower(filepath.Base(module)), "softhsm") {
		return err
	}
	if why := softHSMStoreProblem(); why != "" {
		return fmt.Errorf("%w: %s: %w", ErrTokenStoreNotFound, why, err)
	}
	return err
}

// softHSMStoreProblem checks SoftHSM's configuration file and token directory as SoftHSM
// finds them, and says what is missing; "" when both are there.
func softHSMStoreProblem() string {
	conf, from := os.Getenv("SOFTHSM2_CONF"), "SOFTHSM2_CONF"
	if conf == "" {
		conf, from = softHSMDefaultConf, "the default, as SOFTHSM2_CONF is unset"
	}
	f, err := os.Open(conf)
	if err != nil {
		return fmt.Sprintf("SoftHSM configuration file %s (%s) cannot be read: %v", conf, from, err)
	}
	defer f.Close()
	dir := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == "directories.tokendir" {
			dir = strings.TrimSpace(v)
		}
	}
	if dir == "" {
		return fmt.Sprintf("SoftHSM configuration file %s (%s) sets no directories.tokendir", conf, from)
	}
	fi, err := os.Stat(dir)
	switch {
	case err != nil:
		return fmt.Sprintf("SoftHSM token directory %s does not exist (directories.tokendir in %s, from %s)", dir, conf, from)
	case !fi.IsDir():
		return fmt.Sprintf("SoftHSM token directory %s is not a directory (directories.tokendir in %s, from %s)", dir, conf, from)
	}
	return ""
}
