/**
 * Writes an HAProxy (2.6+) configuration that puts several shardhub hubs behind one address.
 *
 *   node --import tsx scripts/haproxy-config.ts --listen 0.0.0.0:8080 \
 *     --hub 10.0.0.11:8080 --hub 10.0.0.12:8080 > /etc/haproxy/haproxy.cfg
 *
 * What the hubs need from a balancer, and how this configuration gives it (docs/deployment.md):
 * - Socket.IO's WebSocket upgrade: HAProxy forwards `Upgrade` and then tunnels the connection;
 *   `timeout tunnel` keeps idle tunnels (WebSocket and the data channel) open between pings/frames.
 * - Engine.IO long-polling is several HTTP requests per session, all of which must reach the hub
 *   that holds the session: a `SHARDHUB_HUB` cookie (browsers), else the client's address
 *   (`balance source`, consistent hashing).
 * - A native node's data channel (`GET /worker-data`, `Upgrade: shardhub-data/1`) is bound to the
 *   node's Socket.IO connection on the same hub and carries nothing but a one-time ticket, which the
 *   balancer cannot read (it was issued inside the WebSocket). So it is routed by the same hash of
 *   the client's address as the node's Socket.IO connection, in a backend whose servers track the
 *   main backend's health: both pick the same hub. It gets no cookie, and its `101` answer keeps the
 *   header case the node reads byte for byte (`h1-case-adjust`). When it lands on another hub all
 *   the same (the hub set changed in between), the hub refuses the ticket and the node carries
 *   inputs over Socket.IO instead.
 * - Health checks on `GET /api/health` take a dead hub out; its clients reconnect to another.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

/** Options of {@link haproxyConfig}. */
export interface HaproxyOptions {
  /** Plain-HTTP addresses to listen on, `host:port`. */
  listen: string[];
  /** TLS addresses, `host:port`, with `cert` (a PEM holding the certificate chain and key). */
  tlsListen?: string[];
  cert?: string;
  /** The hubs, `host:port` each. */
  hubs: string[];
  /** Health check interval (ms); a hub is down after `fall` failed checks, up after `rise` good ones. */
  checkMs?: number;
  fall?: number;
  rise?: number;
  /** Most connections at once (each takes two file descriptors); default: from `ulimit -n`. */
  maxconn?: number;
  /** Where HAProxy logs: `stdout` (foreground, containers, tests) or a syslog address. */
  log?: string;
}

const ADDRESS = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+|\*):\d{1,5}$/;

function checkAddress(what: string, a: string): string {
  if (!ADDRESS.test(a)) throw new Error(`${what} must be host:port, not "${a.slice(0, 80)}"`);
  return a;
}

/** The configuration text; see the file comment. */
export function haproxyConfig(o: HaproxyOptions): string {
  if (o.hubs.length === 0) throw new Error('at least one --hub is needed');
  const tls = o.tlsListen ?? [];
  if (o.listen.length + tls.length === 0) throw new Error('at least one --listen or --tls-listen is needed');
  if (tls.length > 0 && !o.cert) throw new Error('--tls-listen needs --cert (a PEM with chain and key)');
  if (o.maxconn !== undefined && !(Number.isInteger(o.maxconn) && o.maxconn > 0))
    throw new Error('--maxconn must be a positive integer');
  if (o.cert && /[\s"#]/.test(o.cert)) throw new Error('--cert must be a path without spaces, quotes or #');
  const hubs = o.hubs.map((h) => checkAddress('--hub', h));
  const checkMs = o.checkMs ?? 2000;
  const log = o.log ?? 'stdout';
  if (!/^[A-Za-z0-9/:._-]+$/.test(log)) throw new Error(`--log must be stdout or a syslog address`);
  const L: string[] = [];
  const add = (...lines: string[]) => L.push(...lines);
  // Without maxconn HAProxy derives it from the open-files limit it is given (ulimit -n).
  const maxconn = o.maxconn === undefined ? [] : [`  maxconn ${o.maxconn}`];
  add(
    '# shardhub hubs behind HAProxy; written by scripts/haproxy-config.ts (see docs/deployment.md).',
    'global',
    `  log ${log === 'stdout' ? 'stdout format raw' : log} local0`,
    ...maxconn,
    "  # A native node reads the data channel's 101 answer byte for byte: keep its header names' case.",
    '  h1-case-adjust upgrade Upgrade',
    '  h1-case-adjust connection Connection',
    '',
    'defaults',
    '  mode http',
    '  log global',
    "  # Client, balancer's choice, status, request line: which hub served each request.",
    '  log-format "%ci:%cp %ft %b/%s %ST %{+Q}r"',
    '  timeout connect 5s',
    '  timeout http-request 10s',
    '  # A long-polling GET is held up to pingInterval + pingTimeout (25 s + 20 s by default).',
    '  timeout client 60s',
    '  timeout server 60s',
    '  # WebSocket and data channel tunnels idle between pings and frames.',
    '  timeout tunnel 1h',
    '  timeout client-fin 30s',
    '  option redispatch',
    '  retries 2',
    '',
    'frontend shardhub',
  );
  for (const a of o.listen) add(`  bind ${checkAddress('--listen', a)}`);
  for (const a of tls) add(`  bind ${checkAddress('--tls-listen', a)} ssl crt ${o.cert} alpn http/1.1`);
  add(
    '  option h1-case-adjust-bogus-client',
    '  option forwardfor',
    '  http-request set-header X-Forwarded-Proto https if { ssl_fc }',
    '  use_backend hubs_data if { path /worker-data }',
    '  default_backend hubs',
    '',
    'backend hubs',
    "  # Sticky: a browser's cookie first, else a hash of the client's address (the data channel",
    "  # backend below hashes the same way, so a native node's two connections meet on one hub).",
    '  balance source',
    '  hash-type consistent',
    `  cookie SHARDHUB_HUB insert indirect nocache httponly${tls.length > 0 ? ' secure' : ''}`,
    '  option httpchk GET /api/health',
    '  http-check expect status 200',
    '  # A hub that accepts connections but does not answer (stopped, or its event loop stuck)',
    '  # fails a check after this long, rather than holding the check open.',
    `  timeout check ${checkMs}ms`,
    `  default-server check inter ${checkMs} fall ${o.fall ?? 2} rise ${o.rise ?? 2}`,
  );
  hubs.forEach((h, i) => add(`  server hub${i + 1} ${h} id ${i + 1} cookie hub${i + 1}`));
  add(
    '',
    'backend hubs_data',
    '  balance source',
    '  hash-type consistent',
    '  # No cookie here: it would be a header in the 101 answer the node reads byte for byte.',
  );
  hubs.forEach((h, i) => add(`  server hub${i + 1} ${h} id ${i + 1} track hubs/hub${i + 1}`));
  return L.join('\n') + '\n';
}

const USAGE = `Usage: node --import tsx scripts/haproxy-config.ts --listen HOST:PORT --hub HOST:PORT [--hub ...]

  --listen HOST:PORT      plain HTTP address (repeatable)
  --tls-listen HOST:PORT  HTTPS address (repeatable); needs --cert
  --cert FILE             PEM with the certificate chain and private key
  --hub HOST:PORT         a hub (repeatable)
  --check-ms N            health check interval (default 2000)
  --maxconn N             most connections at once (default: from ulimit -n)
  --out FILE              write here instead of stdout
`;

function main(): void {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string', multiple: true },
      'tls-listen': { type: 'string', multiple: true },
      cert: { type: 'string' },
      hub: { type: 'string', multiple: true },
      'check-ms': { type: 'string' },
      maxconn: { type: 'string' },
      out: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const checkMs = values['check-ms'] === undefined ? undefined : Number(values['check-ms']);
  if (checkMs !== undefined && !(Number.isInteger(checkMs) && checkMs >= 100))
    throw new Error('--check-ms must be an integer of at least 100');
  const text = haproxyConfig({
    listen: values.listen ?? [],
    tlsListen: values['tls-listen'],
    cert: values.cert,
    hubs: values.hub ?? [],
    checkMs,
    maxconn: values.maxconn === undefined ? undefined : Number(values.maxconn),
  });
  if (values.out) writeFileSync(values.out, text);
  else process.stdout.write(text);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
}
