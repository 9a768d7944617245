/**
 * `shardhub ocr --hub URL --token TOKEN --inputs scans/ --out text/`: sends a folder of PNG and
 * JPEG pages to a hub's OCR pipeline (`POST /api/ocr`), waits, and writes per image
 * `<name>.json` (lines with text, box and confidence, or the page's outcome and reason) and
 * `<name>.txt` (the text in reading order). A page that cannot be read is reported, never fatal.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { parseArgs } from 'node:util';
import type { OcrPageResult, OcrRunView } from './pipeline.ts';

const USAGE = `Usage: shardhub ocr --hub URL --token TOKEN --inputs DIR [--out DIR]

Reads the text of every image in a folder on the grid (detection, direction, recognition).

Options:
  --hub URL        hub URL (env SHARDHUB_HUB)
  --token TOKEN    operator token (env SHARDHUB_OPERATOR_TOKEN)
  --inputs DIR     folder of .png/.jpg/.jpeg pages (or one image file)
  --out DIR        where <name>.json and <name>.txt are written (default: text)
  --priority N     job priority (default 0)
  --no-cache       read every page again, even those read before
  -h, --help       this help
`;

const IMAGE_EXT = new Set(['.png', '.jpg', '.jpeg']);
/** Pages per request: one JSON body stays well under the hub's limit. */
const PAGES_PER_RUN = 50;

/** Lists a folder's images (sorted), or the one file given. */
async function listImages(path: string): Promise<string[]> {
  const s = await stat(path).catch(() => undefined);
  if (!s) throw new Error(`--inputs ${path}: no such file or folder`);
  if (s.isFile()) return [path];
  return (await readdir(path))
    .filter((f) => IMAGE_EXT.has(extname(f).toLowerCase()))
    .sort()
    .map((f) => join(path, f));
}

async function call<T>(hub: string, token: string, method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(new URL(path, hub), {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (err) {
    throw new Error(
      `cannot reach the hub at ${hub}: ${String((err as Error).cause ?? (err as Error).message)}`,
    );
  }
  const json = (await res.json().catch(() => ({}))) as { data?: T; error?: { message: string } };
  if (!res.ok || json.error) {
    const why = json.error?.message ?? `HTTP ${res.status}`;
    throw new Error(res.status === 401 ? `the hub refused the operator token (${why})` : why);
  }
  return json.data as T;
}

/** Writes one page's JSON and text files; returns a one-line summary. */
async function writePage(out: string, page: OcrPageResult): Promise<string> {
  const stem = basename(page.name, extname(page.name));
  await writeFile(join(out, `${stem}.json`), JSON.stringify(page, null, 1));
  await writeFile(join(out, `${stem}.txt`), page.text ? `${page.text}\n` : '');
  const why = page.error
    ? ` (${page.error.stage}${page.error.box !== undefined ? ` box ${page.error.box}` : ''}: ${page.error.reason})`
    : '';
  return `${page.name}: ${page.outcome}${page.cached ? ' (cached)' : ''}, ${page.lines.length} line(s)${why}`;
}

/** `shardhub ocr`; returns the exit code. */
export async function ocrCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      hub: { type: 'string' },
      token: { type: 'string' },
      inputs: { type: 'string' },
      out: { type: 'string', default: 'text' },
      priority: { type: 'string', default: '0' },
      cache: { type: 'boolean', default: true },
      'no-cache': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const hub = values.hub ?? process.env.SHARDHUB_HUB;
  const token = values.token ?? process.env.SHARDHUB_OPERATOR_TOKEN;
  if (!hub || !token || !values.inputs) {
    process.stderr.write(`shardhub ocr: --hub, --token and --inputs are required\n\n${USAGE}`);
    return 2;
  }
  const priority = Number(values.priority);
  if (!Number.isInteger(priority)) throw new Error('--priority must be an integer');
  const files = await listImages(values.inputs);
  if (files.length === 0) throw new Error(`--inputs ${values.inputs}: no .png or .jpg images there`);
  await mkdir(values.out, { recursive: true });
  let ok = 0;
  for (let i = 0; i < files.length; i += PAGES_PER_RUN) {
    const chunk = files.slice(i, i + PAGES_PER_RUN);
    const images = await Promise.all(
      chunk.map(async (f) => ({ name: basename(f), data: (await readFile(f)).toString('base64') })),
    );
    const run = await call<OcrRunView>(hub, token, 'POST', '/api/ocr', {
      images,
      priority,
      cache: values.cache && !values['no-cache'],
    });
    let view = run;
    while (view.state !== 'completed') {
      await new Promise((r) => setTimeout(r, 500));
      view = await call<OcrRunView>(hub, token, 'GET', `/api/ocr/${run.id}`);
      process.stderr.write(`\r${run.id}: ${view.pagesDone}/${view.pages} pages`);
    }
    process.stderr.write('\n');
    const full = await call<OcrRunView>(hub, token, 'GET', `/api/ocr/${run.id}?results=1`);
    for (const page of full.results ?? []) {
      process.stdout.write(`${await writePage(values.out, page)}\n`);
      if (page.outcome === 'ok' || page.outcome === 'no_text') ok++;
    }
  }
  process.stdout.write(`${ok}/${files.length} page(s) read; text in ${values.out}/\n`);
  return 0;
}
