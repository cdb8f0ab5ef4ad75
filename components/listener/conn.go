package listener

import (
	"bufio"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The listener's profile (docs/performance.md, issue 12) had system calls on the broker
// connection as its largest item, both ways:
//
//   - paho reads packets straight from the socket: the fixed-header byte, the remaining length
//     one byte at a time, then the body, so a ~300-byte PUBLISH costs four read(2) calls;
//   - paho writes every packet with its own write(2), and the acker hands it up to --batch-size
//     PUBACKs of 4 bytes at once: a write(2) for each, and as many reads at the broker.
//
// brokerConn reads through a buffer and coalesces writes: Write appends to a buffer and one
// flusher goroutine writes whatever has accumulated in one write(2), so a burst of PUBACKs
// leaves in a few segments. Nothing waits for a batch to fill: the flusher writes as soon as
// there is anything, and what arrives while it is in write(2) goes out in the next call.
// Write order is kept (one buffer, one flusher). Acknowledgement semantics do not change: a
// PUBACK is handed to paho only after its message is stored, and one lost with a dying
// connection means a redelivery, counted as a duplicate, as before.
//
// It applies to plain TCP brokers (tcp://, mqtt://) without a proxy from the environment;
// every other scheme (TLS, WebSocket) keeps paho's own dialer.
func brokerConnFor(o *mqtt.ClientOptions, brokerURL string) {
	u, err := url.Parse(brokerURL)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") || proxyFromEnv() {
		return
	}
	o.SetCustomOpenConnectionFn(func(uri *url.URL, opts mqtt.ClientOptions) (net.Conn, error) {
		d := opts.Dialer
		if d == nil {
			d = &net.Dialer{Timeout: opts.ConnectTimeout}
		}
		c, err := d.Dial("tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		return newBrokerConn(c), nil
	})
}

// proxyFromEnv reports whether paho would dial through a proxy (golang.org/x/net/proxy reads
// ALL_PROXY for TCP): keep its dialer then.
func proxyFromEnv() bool {
	return os.Getenv("ALL_PROXY") != "" || os.Getenv("all_proxy") != ""
}

const (
	readBufferSize = 64 << 10
	// maxUnflushed bounds what Write buffers before it waits for the flusher (memory bound; a
	// broker that stopped reading stops paho's writer as a plain socket would).
	maxUnflushed = 256 << 10
	// closeFlushTimeout bounds how long Close waits for buffered bytes (the last PUBACKs and
	// the DISCONNECT) to be written before it closes the socket anyway.
	closeFlushTimeout = 2 * time.Second
	// closeDrainTimeout bounds how long Close waits, after sending FIN, for the broker to
	// close its side (see Close).
	closeDrainTimeout = time.Second
)

// brokerConn is a broker connection with buffered reads and coalesced writes.
type brokerConn struct {
	net.Conn
	r *bufio.Reader

	mu      sync.Mutex
	cond    *sync.Cond // buffered bytes, space freed, flusher stopped, closing
	pending []byte     // written by paho, not yet by the flusher
	spare   []byte     // the flusher's previous buffer, reused
	err     error      // sticky: the first write error, or net.ErrClosed after Close
	closing bool
	done    chan struct{} // closed when the flusher has returned

	eof       chan struct{} // closed when a read fails (the broker closed, or we did)
	eofOnce   sync.Once
	closeOnce sync.Once
	closeErr  error
}

func newBrokerConn(c net.Conn) *brokerConn {
	b := &brokerConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize), done: make(chan struct{}), eof: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flusher()
	return b
}

// Read is paho's reader goroutine's only way in (bufio.Reader is not for concurrent use).
func (b *brokerConn) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil {
		b.eofOnce.Do(func() { close(b.eof) })
	}
	return n, err
}

// Write buffers p for the flusher. An error of an earlier write is returned here, like the
// socket would return it to the next write.
func (b *brokerConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.pending) >= maxUnflushed && b.err == nil && !b.closing {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closing {
		return 0, net.ErrClosed
	}
	b.pending = append(b.pending, p...)
	b.cond.Broadcast()
	return len(p), nil
}

func (b *brokerConn) flusher() {
	defer close(b.done)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for len(b.pending) == 0 && !b.closing {
			b.cond.Wait()
		}
		if len(b.pending) == 0 { // closing, everything written
			return
		}
		out := b.pending
		b.pending = b.spare[:0]
		b.mu.Unlock()
		_, err := b.Conn.Write(out)
		b.mu.Lock()
		b.spare = out
		if err != nil {
			b.err, b.pending = err, nil
			b.cond.Broadcast()
			return
		}
		b.cond.Broadcast()
	}
}

// Close writes what is buffered, then closes gracefully. paho closes the socket right after
// writing DISCONNECT, usually while the broker is still sending (a persistent session's queue):
// closing a socket with unread bytes makes Linux send RST instead of FIN, and a RST makes the
// broker's kernel drop what it had received but the broker had not read yet — the last
// PUBACKs. Those messages were stored, so they come back as duplicates: counted, not lost,
// but avoidable (and with coalesced writes the last PUBACKs and the DISCONNECT leave together,
// right before the close). So Close sends FIN after the data (CloseWrite), waits until the
// broker closes its side (paho's reader sees EOF; the broker closes after DISCONNECT), bounded
// by closeDrainTimeout, and only then closes the socket.
func (b *brokerConn) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.close() })
	return b.closeErr
}

func (b *brokerConn) close() error {
	b.mu.Lock()
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	t := time.NewTimer(closeFlushTimeout)
	defer t.Stop()
	flushed := false
	select {
	case <-b.done:
		b.mu.Lock()
		flushed = b.err == nil
		b.mu.Unlock()
	case <-t.C: // a socket that does not drain: closing it unblocks the flusher
	}
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok && flushed {
		if cw.CloseWrite() == nil {
			t.Reset(closeDrainTimeout)
			select {
			case <-b.eof:
			case <-t.C:
			}
		}
	}
	err := b.Conn.Close()
	b.mu.Lock()
	if b.err == nil {
		b.err = net.ErrClosed
	}
	b.mu.Unlock()
	return err
}
