// Command testcaddy is the Caddy that the process tests run: cmd/caddy's
// modules (Caddy's standard modules, caddy-l4, caddy-esmtp) plus the
// example sub-handlers of examples/subhandler, so that a judge can be in
// the list of a real Caddy process that the tests kill.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-l4"

	_ "github.com/caddy-esmtp/caddy-esmtp"
	_ "github.com/caddy-esmtp/caddy-esmtp/examples/subhandler"
)

func main() {
	caddycmd.Main()
}
