package listener

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// tcpPair is a real loopback TCP connection: the client side wrapped in a brokerConn.
func tcpPair(t *testing.T) (*brokerConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { srv.Close() })
	return newBrokerConn(c), srv
}

// Many small writes arrive complete and in order, in fewer segments than writes; Close
// writes what is still buffered before closing.
func TestBrokerConnWritesInOrderAndFlushesOnClose(t *testing.T) {
	bc, srv := tcpPair(t)
	var want bytes.Buffer
	got := make(chan []byte, 1)
	reads := 0
	go func() {
		var all []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := srv.Read(buf)
			all = append(all, buf[:n]...)
			if n > 0 {
				reads++
			}
			if err != nil {
				srv.Close() // as a broker does after DISCONNECT
				got <- all
				return
			}
		}
	}()
	const writes = 20000
	for i := range writes {
		p := []byte{0x40, 0x02, byte(i >> 8), byte(i)} // a PUBACK
		want.Write(p)
		if n, err := bc.Write(p); n != len(p) || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	all := <-got
	if !bytes.Equal(all, want.Bytes()) {
		t.Fatalf("received %d bytes, want %d, in order", len(all), want.Len())
	}
	if reads >= writes {
		t.Errorf("%d reads for %d writes: nothing coalesced", reads, writes)
	}
	t.Logf("%d writes arrived in %d reads", writes, reads)
	if _, err := bc.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
}

// Reads go through the buffer: a packet read a byte at a time (as paho reads the remaining
// length) comes out whole.
func TestBrokerConnBufferedReads(t *testing.T) {
	bc, srv := tcpPair(t)
	defer bc.Close()
	msg := bytes.Repeat([]byte("0123456789"), 1000)
	go func() { _, _ = srv.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(bc, got[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(bc, got[1:]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("read back differs")
	}
}

// A write error is sticky, and writers blocked on a full buffer are released by it.
func TestBrokerConnWriteErrorIsReported(t *testing.T) {
	bc, srv := tcpPair(t)
	srv.Close()
	var wg sync.WaitGroup
	var last error
	wg.Add(1)
	go func() {
		defer wg.Done()
		p := make([]byte, 4096)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := bc.Write(p); err != nil {
				last = err
				return
			}
		}
	}()
	wg.Wait()
	if last == nil {
		t.Fatal("writes to a closed peer kept succeeding for 10s")
	}
	if err := bc.Close(); err != nil {
		t.Logf("close: %v", err)
	}
}
