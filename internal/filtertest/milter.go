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
