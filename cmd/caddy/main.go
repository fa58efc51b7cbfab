// Command caddy is Caddy with its standard modules, caddy-l4 and caddy-esmtp.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-l4"

	_ "github.com/caddy-esmtp/caddy-esmtp"
)

func main() {
	caddycmd.Main()
}
