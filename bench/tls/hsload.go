// hsload: a TLS handshake load generator for bench/tls-peers.sh (Go standard library only:
// `go build -o hsload bench/tls/hsload.go`).
//
// OpenSSL 3.0's clients (openssl s_time, h2load) spend 1.2-1.6 ms of CPU per full handshake on
// this machine, more than the proxies do, so on the one core the load has they measure the
// client. Go's crypto/tls costs a fraction of that, and C connections at once keep the proxy
// busy. Each connection: a TLS 1.3 handshake (X25519, AES-128-GCM: Go's client order with
// AES hardware; the certificate chain is not checked, the handshake signature is), then with
// -req one `GET / HTTP/1.1` with `Connection: close`, read to the end, then closed. With
// -resume the connections resume sessions from a shared ticket cache (TLS 1.3 tickets arrive
// after the handshake, so -resume needs -req for the first ticket).
//
//	hsload -addr 127.0.0.1:18330 -c 16 -d 5s [-req] [-resume]
//
// Prints: connections N resumed R errors E seconds T rate N/T.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:443", "host:port")
	sni := flag.String("sni", "localhost", "server name sent")
	conc := flag.Int("c", 16, "connections at once")
	dur := flag.Duration("d", 5*time.Second, "duration")
	req := flag.Bool("req", false, "send one request per connection and read the response")
	resume := flag.Bool("resume", false, "resume sessions (TLS 1.3 tickets)")
	flag.Parse()

	cfg := &tls.Config{
		ServerName:         *sni,
		InsecureSkipVerify: true,
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		NextProtos:         []string{"http/1.1"},
	}
	if *resume {
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4 * *conc)
	}
	request := []byte("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	var conns, resumed, errs int64
	var firstErr atomic.Value
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for time.Now().Before(deadline) {
				err := func() error {
					raw, err := net.DialTimeout("tcp", *addr, 5*time.Second)
					if err != nil {
						return err
					}
					c := tls.Client(raw, cfg)
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if err := c.Handshake(); err != nil {
						return err
					}
					if *req {
						if _, err := c.Write(request); err != nil {
							return err
						}
						// Read to the end; the status line is in the first bytes.
						n, status := 0, ""
						for {
							k, err := c.Read(buf)
							if n <= 9 && n+k >= 12 {
								status = string(buf[9-n : 12-n])
							}
							n += k
							if err == io.EOF || (err != nil && n > 0 && status != "") {
								break // the end, or a reset once the response is in
							}
							if err != nil {
								return err
							}
						}
						if status != "200" {
							return fmt.Errorf("status %q after %d bytes", status, n)
						}
					}
					if c.ConnectionState().DidResume {
						atomic.AddInt64(&resumed, 1)
					}
					return nil
				}()
				if err != nil {
					atomic.AddInt64(&errs, 1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				atomic.AddInt64(&conns, 1)
			}
		}()
	}
	wg.Wait()
	t := time.Since(start).Seconds()
	fmt.Printf("connections %d resumed %d errors %d seconds %.3f rate %.1f\n", conns, resumed, errs, t, float64(conns)/t)
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(os.Stderr, "first error: %s\n", e)
	}
}
