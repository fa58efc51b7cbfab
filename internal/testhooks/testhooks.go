// Package testhooks holds hooks that only tests set: nothing in a
// production configuration reaches them (the package is internal to the
// module, so no other module can set them either).
package testhooks

import "github.com/caddy-esmtp/caddy-esmtp/mtasts"

// MTASTSFetcher, when set, makes the fetcher of each MTA-STS cache the
// relay creates (a cache is created once per cache file): the integration
// tests use it to trust Caddy's internal CA and fetch policies from a
// loopback port. Nil (always, outside tests): a default mtasts.Fetcher
// (the system roots, port 443).
var MTASTSFetcher func() *mtasts.Fetcher
