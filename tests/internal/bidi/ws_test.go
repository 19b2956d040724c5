package bidi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"testing"
)

// serverFrame writes one unmasked frame, as a server sends it.
func serverFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		out = append(out, byte(n))
	case n <= 0xffff:
		out = append(out, 126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, payload...)
}

// readClientFrame reads one frame from the client and checks it is masked.
func readClientFrame(t *testing.T, br *bufio.Reader) (byte, []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatal(err)
	}
	if h[1]&0x80 == 0 {
		t.Fatal("a client frame is not masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		io.ReadFull(br, e[:])
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		io.ReadFull(br, e[:])
		n = binary.BigEndian.Uint64(e[:])
	}
	var mask [4]byte
	io.ReadFull(br, mask[:])
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	for i := range p {
		p[i] ^= mask[i%4]
	}
	return h[0] & 0x0f, p
}

// TestWebSocket: the handshake's accept value is checked; client frames are masked, in all three
// length encodings; fragments are joined, a ping between them is answered with its payload, and
// a close ends the connection.
func TestWebSocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	big := bytes.Repeat([]byte("x"), 70000)
	mid := bytes.Repeat([]byte("y"), 300)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Error(err)
			return
		}
		if req.URL.Path != "/session" || req.Header.Get("Upgrade") != "websocket" || req.Header.Get("Sec-WebSocket-Version") != "13" {
			t.Errorf("handshake request: %s %v", req.URL, req.Header)
		}
		sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + websocketGUID))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
			base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n")
		for _, want := range [][]byte{[]byte("small"), mid, big} {
			op, p := readClientFrame(t, br)
			if op != 0x1 || !bytes.Equal(p, want) {
				t.Errorf("client frame: opcode %#x, %d bytes, want text of %d", op, len(p), len(want))
			}
		}
		var out []byte
		out = append(out, serverFrame(false, 0x1, []byte(`{"a":`))...)
		out = append(out, serverFrame(true, 0x9, []byte("ping!"))...)
		out = append(out, serverFrame(true, 0x0, []byte(`1}`))...)
		out = append(out, serverFrame(true, 0x1, big)...)
		out = append(out, serverFrame(true, 0x8, []byte{0x03, 0xe8})...)
		c.Write(out)
		if op, p := readClientFrame(t, br); op != 0xA || string(p) != "ping!" {
			t.Errorf("answer to a ping: opcode %#x %q", op, p)
		}
		if op, _ := readClientFrame(t, br); op != 0x8 {
			t.Errorf("answer to a close: opcode %#x", op)
		}
	}()

	ws, err := dialWS(context.Background(), "ws://"+l.Addr().String()+"/session")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for _, m := range [][]byte{[]byte("small"), mid, big} {
		if err := ws.WriteText(m); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := ws.ReadMessage(); err != nil || string(m) != `{"a":1}` {
		t.Fatalf("fragmented message: %q %v", m, err)
	}
	if m, err := ws.ReadMessage(); err != nil || !bytes.Equal(m, big) {
		t.Fatalf("long message: %d bytes, %v", len(m), err)
	}
	if _, err := ws.ReadMessage(); err != io.EOF {
		t.Fatalf("after a close: %v, want io.EOF", err)
	}
	<-done
}

// TestWebSocketBadAccept: a server that answers the handshake with the wrong accept value is
// refused.
func TestWebSocketBadAccept(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n")
	}()
	if ws, err := dialWS(context.Background(), "ws://"+l.Addr().String()+"/session"); err == nil {
		ws.Close()
		t.Fatal("a wrong Sec-WebSocket-Accept was accepted")
	}
}
