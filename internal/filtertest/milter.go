package filtertest

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"time"
)

// MilterReady returns a readiness check for Start: a milter at the
// address answers the protocol's option negotiation (a program may
// accept connections a moment before it answers them).
func MilterReady(network, address string) func() error {
	return func() error {
		c, err := net.DialTimeout(network, address, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		// SMFIC_OPTNEG: version 6, every action and protocol option (a
		// milter that wants to skip a stage refuses an MTA that cannot).
		pkt := binary.BigEndian.AppendUint32(nil, 13)
		pkt = append(pkt, 'O')
		pkt = binary.BigEndian.AppendUint32(pkt, 6)
		pkt = binary.BigEndian.AppendUint32(pkt, 0x1ff)
		pkt = binary.BigEndian.AppendUint32(pkt, 0x1fffff)
		if _, err := c.Write(pkt); err != nil {
			return err
		}
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		if hdr[4] != 'O' {
			return errors.New("milter did not answer the negotiation")
		}
		// QUIT, so the milter does not log an aborted session.
		_, _ = c.Write([]byte{0, 0, 0, 1, 'Q'})
		return nil
	}
}

// MilterConnects returns a readiness check for Start that goes one step
// further than MilterReady: after the negotiation it sends a client's
// CONNECT (127.0.0.1) and wants an answer other than tempfail. OpenDKIM
// sets its resolver up at the first CONNECT, and two first CONNECTs at
// once race in libunbound's (not thread-safe) configuration parser and
// may crash it; one CONNECT before the tests' sessions avoids that.
func MilterConnects(network, address string) func() error {
	return func() error {
		c, err := net.DialTimeout(network, address, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		pkt := binary.BigEndian.AppendUint32(nil, 13)
		pkt = append(pkt, 'O')
		pkt = binary.BigEndian.AppendUint32(pkt, 6)
		pkt = binary.BigEndian.AppendUint32(pkt, 0x1ff)
		pkt = binary.BigEndian.AppendUint32(pkt, 0x1fffff)
		if _, err := c.Write(pkt); err != nil {
			return err
		}
		code, err := readMilterPacket(c)
		if err != nil {
			return err
		}
		if code != 'O' {
			return errors.New("milter did not answer the negotiation")
		}
		body := append([]byte("localhost\x00"), '4', 0, 25)
		body = append(body, "127.0.0.1\x00"...)
		pkt = binary.BigEndian.AppendUint32(nil, uint32(len(body)+1))
		pkt = append(append(pkt, 'C'), body...)
		if _, err := c.Write(pkt); err != nil {
			return err
		}
		if code, err = readMilterPacket(c); err != nil {
			return err
		}
		if code == 't' {
			return errors.New("milter answered CONNECT with tempfail")
		}
		_, _ = c.Write([]byte{0, 0, 0, 1, 'Q'})
		return nil
	}
}

// readMilterPacket reads one milter packet and returns its code.
func readMilterPacket(r io.Reader) (byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n == 0 || n > 1<<20 {
		return 0, errors.New("milter sent a malformed packet")
	}
	if _, err := io.CopyN(io.Discard, r, int64(n-1)); err != nil {
		return 0, err
	}
	return hdr[4], nil
}
