/**
 * `npm run bench -- trust-memory [--json] [--model-mb 500] [--items-mb 250] [--floods 10]`
 *
 * The hub's memory under the upload and registration attacks of issue 18 (findings 6 and 9) at
 * once. The hub runs as its own process (as `shardhub serve` does), so its RSS is its own: read
 * from `/proc/<pid>/status` every 50 ms. At the same time:
 * - a chunked model upload of `--model-mb` MB with no `Content-Length` (zeros: received to disk
 *   whole, then refused as no ONNX file);
 * - an items upload of `--items-mb` MB to an open job (noop items of 256 KiB, added);
 * - `--floods` anonymous registrations, each carrying a 200,000-key `capabilities.gpu.limits`
 *   (refused), one after another, while `/api/health` is asked every 100 ms.
 * It prints the hub's RSS before, at its peak (VmHWM) and 2 s after, what each attack got back,
 * and the slowest `/api/health` answer.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io as connect } from 'socket.io-client';
import { packItems } from '../protocol/pack.ts';
import { shardhubParser } from '../protocol/socket-parser.ts';
import { HUB_NODE_FLAGS } from '../server/node-flags.ts';
import { freePort, serveArgs } from '../test/helpers/grid.ts';
import { ROOT, printTable } from './_grid.ts';
import { numFlag } from './_scale.ts';

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
const mb = (bytes: number) => Math.round(bytes / 2 ** 20);

/** A process's resident set and its peak, bytes (Linux). */
function rssOf(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** POSTs a body made by `chunks`, chunked; resolves with the status and the error code, if any. */
function post(url: string, token: string, chunks: () => Generator<Uint8Array>): Promise<string> {
  return new Promise((ok) => {
    const req = request(url, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream' },
    });
    req.on('response', (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => {
        const code = (JSON.parse(text || '{}') as { error?: { code?: string } }).error?.code;
        ok(`${res.statusCode}${code ? ` ${code}` : ''}`);
      });
    });
    req.on('error', (err) => ok(`error ${err.message}`));
    (async () => {
      for (const chunk of chunks()) if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      req.end();
    })().catch(() => req.destroy());
  });
}

/** One anonymous registration carrying a 200,000-key GPU limits map; resolves with its answer. */
async function flood(url: string, i: number, limits: Record<string, number>): Promise<string> {
  const s = connect(`${url}/worker`, {
    auth: { workerId: `flood-browser-${i}`, workerSecret: 'f'.repeat(32) },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  try {
    await new Promise<void>((ok, fail) => {
      s.once('connect', () => ok());
      s.once('connect_error', fail);
    });
    const r = (await s.timeout(30_000).emitWithAck('worker:register', {
      kind: 'browser',
      backend: 'webgpu',
      name: `flood${i}`,
      concurrency: 1,
      capabilities: { cores: 1, memoryBytes: 1, gpu: { name: 'x', limits } },
    })) as { error?: { code: string } };
    return r.error?.code ?? 'registered';
  } catch (err) {
    return `error ${(err as Error).message}`;
  } finally {
    s.close();
  }
}

export async function main(args: string[]): Promise<void> {
  const modelBytes = numFlag(args, 'model-mb', 500) * 1e6;
  const itemsBytes = numFlag(args, 'items-mb', 250) * 1e6;
  const floods = numFlag(args, 'floods', 10);
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-trust-memory-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let hub: ChildProcess | undefined;
  try {
    hub = spawn(
      process.execPath,
      [...HUB_NODE_FLAGS, '--import', 'tsx', join(ROOT, 'server/cli.ts'), ...serveArgs(port, dir)],
      {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'ignore'],
        env: { ...process.env, SHARDHUB_LOG_LEVEL: 'error' },
      },
    );
    let out = '';
    hub.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    for (const end = Date.now() + 60_000; !out.includes('hub is up'); await sleep(50))
      if (Date.now() > end) throw new Error('the hub did not start');
    const pid = hub.pid as number;
    const token = (JSON.parse(readFileSync(join(dir, 'tokens.json'), 'utf8')) as { operatorToken: string })
      .operatorToken;
    const job = await fetch(`${url}/api/jobs`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'noop' }),
    });
    const jobId = ((await job.json()) as { data: { id: string } }).data.id;
    await sleep(2000);
    const before = rssOf(pid).rss;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, rssOf(pid).rss)), 50);
    let slowestHealth = 0;
    let attacking = true;
    const health = (async () => {
      while (attacking) {
        const t = Date.now();
        await fetch(`${url}/api/health`).catch(() => undefined);
        slowestHealth = Math.max(slowestHealth, Date.now() - t);
        await sleep(100);
      }
    })();
    const started = Date.now();
    const zeros = new Uint8Array(1 << 20);
    const rows = 16_384; // a noop item x: float32[rows, 4], 256 KiB
    const x = new Uint8Array(rows * 16);
    const limits: Record<string, number> = {};
    for (let i = 0; i < 200_000; i++) limits[`maxThing${i}`] = i;
    const [model, items, registrations] = await Promise.all([
      post(`${url}/api/models?name=huge`, token, function* () {
        for (let sent = 0; sent < modelBytes; sent += zeros.byteLength) yield zeros;
      }),
      post(`${url}/api/jobs/${jobId}/items`, token, function* () {
        for (let sent = 0, i = 0; sent < itemsBytes; sent += x.byteLength, i++)
          yield packItems([
            { name: `i${i}`, tensors: [{ name: 'x', dtype: 'float32', dims: [rows, 4], data: x }] },
          ]);
      }),
      (async () => {
        const answers = new Map<string, number>();
        for (let i = 0; i < floods; i++) {
          const a = await flood(url, i, limits);
          answers.set(a, (answers.get(a) ?? 0) + 1);
        }
        return [...answers].map(([a, n]) => `${n}x ${a}`).join(', ');
      })(),
    ]);
    const seconds = (Date.now() - started) / 1000;
    attacking = false;
    await health;
    await sleep(2000);
    clearInterval(sampler);
    const after = rssOf(pid);
    const row = {
      model_upload_mb: mb(modelBytes),
      model_upload: model,
      items_upload_mb: mb(itemsBytes),
      items_upload: items,
      registrations,
      seconds,
      slowest_health_ms: slowestHealth,
      rss_before_mb: mb(before),
      rss_peak_mb: mb(Math.max(peak, after.hwm)),
      rss_after_mb: mb(after.rss),
    };
    if (args.includes('--json'))
      process.stdout.write(`${JSON.stringify({ bench: 'trust-memory', ...row })}\n`);
    printTable(Object.entries(row).map(([figure, value]) => ({ figure, value })));
  } finally {
    hub?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}
