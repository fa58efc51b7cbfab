#!/bin/sh
# Installs the benchmark's outside peers and load generator, idempotently:
#   - Postfix (smtp-sink, smtp-source) from Debian, with debconf
#     "No configuration" so no mail system is set up or started;
#   - Haraka 3.3.4 from npm into bench/.cache/haraka (gitignored);
#   - for -auth: OpenDKIM, OpenDMARC and policyd-spf from Debian (their
#     packages' own services are not used: the harness starts private ones).
# `go run ./bench/matrix` runs this itself when something is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

if [ ! -x /usr/sbin/smtp-sink ] || [ ! -x /usr/sbin/smtp-source ]; then
	echo "setup: installing postfix (No configuration) for smtp-sink and smtp-source" >&2
	apt-get update -q >&2
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >&2
fi

if [ ! -x /usr/sbin/opendkim ] || [ ! -x /usr/sbin/opendmarc ] || [ ! -x /usr/bin/policyd-spf ]; then
	echo "setup: installing opendkim, opendkim-tools, opendmarc, postfix-policyd-spf-python" >&2
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q opendkim opendkim-tools opendmarc postfix-policyd-spf-python >&2
fi

if [ ! -x /usr/bin/rspamd ]; then
	echo "setup: installing rspamd (for -filter)" >&2
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rspamd >&2
fi

haraka="$here/.cache/haraka"
if [ ! -f "$haraka/node_modules/Haraka/package.json" ] ||
	! grep -q '"version": "3.3.4"' "$haraka/node_modules/Haraka/package.json"; then
	command -v npm >/dev/null || {
		echo "setup: installing nodejs and npm" >&2
		apt-get update -q >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >&2
	}
	echo "setup: installing Haraka 3.3.4 into $haraka" >&2
	mkdir -p "$haraka"
	cd "$haraka"
	[ -f package.json ] || echo '{"name":"bench-haraka","private":true}' >package.json
	npm install --no-audit --no-fund --loglevel=error Haraka@3.3.4 >&2
fi
