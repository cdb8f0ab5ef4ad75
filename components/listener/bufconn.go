package listener

import (
	"bufio"
	"net"
	"net/url"
	"os"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// paho reads packets straight from the socket: a fixed-header byte, the remaining length one
// byte at a time, then the body, so a ~300-byte PUBLISH costs four read(2) calls, and the
// profile of a listener draining a backlog had read syscalls as its largest item. Reading
// through a buffer turns that into one read per socket buffer's worth of messages. Only the
// read side is buffered: writes (PUBACKs) must reach the broker when paho writes them.
//
// It applies to plain TCP brokers (tcp://, mqtt://) without a proxy from the environment;
// every other scheme (TLS, WebSocket, unix) keeps paho's own dialer.
func bufferedReads(o *mqtt.ClientOptions, brokerURL string) {
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
		return &bufConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
	})
}

// proxyFromEnv reports whether paho would dial through a proxy (golang.org/x/net/proxy reads
// ALL_PROXY for TCP): keep its dialer then.
func proxyFromEnv() bool {
	return os.Getenv("ALL_PROXY") != "" || os.Getenv("all_proxy") != ""
}

// bufConn is a connection whose reads go through a buffer.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }
