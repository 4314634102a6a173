// yamux-forward: the bench's multiplexed baseline, a two-hop TCP forwarder
// whose hops share one Unix socket carrying a hashicorp/yamux session (the
// design of Lima-era "one connection, many streams" forwarders).
//
//	guest side: yamux-forward serve SOCKET
//	    accepts one session per connection on SOCKET; each stream starts
//	    with the guest port (2 bytes, big-endian) and is joined to
//	    127.0.0.1:PORT.
//	host side:  yamux-forward listen SOCKET HOSTPORT=GUESTPORT...
//	    opens one session to SOCKET and a stream per accepted connection.
//
// Built by the bench with Debian's golang-go and
// golang-github-hashicorp-yamux-dev (GOPATH mode, no network).
package main

import (
	"encoding/binary"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/hashicorp/yamux"
)

func config() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard
	c.EnableKeepAlive = false
	c.AcceptBacklog = 4096
	return c
}

// relay copies both ways, passing each end of file on as a half-close.
func relay(tcp *net.TCPConn, stream net.Conn) {
	finished := make(chan struct{}, 2)
	go func() {
		io.Copy(stream, tcp)
		stream.Close() // a yamux stream's Close sends FIN; reading goes on
		finished <- struct{}{}
	}()
	go func() {
		io.Copy(tcp, stream)
		tcp.CloseWrite()
		finished <- struct{}{}
	}()
	<-finished
	<-finished
	tcp.Close()
	stream.Close()
}

func serve(socket string) {
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatal(err)
	}
	for {
		conn, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			session, err := yamux.Server(conn, config())
			if err != nil {
				return
			}
			for {
				stream, err := session.Accept()
				if err != nil {
					return
				}
				go func() {
					var port [2]byte
					if _, err := io.ReadFull(stream, port[:]); err != nil {
						stream.Close()
						return
					}
					addr := "127.0.0.1:" + strconv.Itoa(int(binary.BigEndian.Uint16(port[:])))
					target, err := net.Dial("tcp", addr)
					if err != nil {
						stream.Close()
						return
					}
					tcp := target.(*net.TCPConn)
					tcp.SetNoDelay(true)
					relay(tcp, stream)
				}()
			}
		}()
	}
}

func listen(socket string, forwards []string) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		log.Fatal(err)
	}
	session, err := yamux.Client(conn, config())
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range forwards {
		hostPort, guestPort, ok := strings.Cut(f, "=")
		gp, err := strconv.Atoi(guestPort)
		if !ok || err != nil {
			log.Fatalf("bad forward %q (want HOSTPORT=GUESTPORT)", f)
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+hostPort)
		if err != nil {
			log.Fatal(err)
		}
		go func(l net.Listener, gp uint16) {
			for {
				c, err := l.Accept()
				if err != nil {
					log.Fatal(err)
				}
				go func() {
					tcp := c.(*net.TCPConn)
					tcp.SetNoDelay(true)
					stream, err := session.Open()
					if err != nil {
						tcp.Close()
						return
					}
					var port [2]byte
					binary.BigEndian.PutUint16(port[:], gp)
					if _, err := stream.Write(port[:]); err != nil {
						tcp.Close()
						stream.Close()
						return
					}
					relay(tcp, stream)
				}()
			}
		}(l, uint16(gp))
	}
	select {}
}

func main() {
	if len(os.Args) >= 3 && os.Args[1] == "serve" {
		serve(os.Args[2])
	} else if len(os.Args) >= 4 && os.Args[1] == "listen" {
		listen(os.Args[2], os.Args[3:])
	} else {
		log.Fatal("usage: yamux-forward serve SOCKET | yamux-forward listen SOCKET HOSTPORT=GUESTPORT...")
	}
}
