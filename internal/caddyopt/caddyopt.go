// Package caddyopt holds what the sub-handlers' Caddyfile parsers share:
// refusing an option given twice in one block, as caddy-l4's modules do,
// rather than letting the second silently replace the first.
package caddyopt

import "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

// Options remembers the options given in one block.
type Options struct {
	module     string
	seen       map[string]bool
	repeatable map[string]bool
}

// New returns the options of one block of module; the repeatable ones
// (lists that add up, such as relay's domains) may be given more than
// once.
func New(module string, repeatable ...string) *Options {
	o := &Options{module: module, seen: map[string]bool{}, repeatable: map[string]bool{}}
	for _, r := range repeatable {
		o.repeatable[r] = true
	}
	return o
}

// Mark records opt as given, for an option that an argument before the
// block sets (relay's address, webhook's URL).
func (o *Options) Mark(opt string) { o.seen[opt] = true }

// Once records the option the dispenser is at and refuses it when it was
// given before: "<module>: <option>: given twice".
func (o *Options) Once(d *caddyfile.Dispenser) error {
	opt := d.Val()
	if o.seen[opt] && !o.repeatable[opt] {
		return d.Errf("%s: %s: given twice", o.module, opt)
	}
	o.seen[opt] = true
	return nil
}
