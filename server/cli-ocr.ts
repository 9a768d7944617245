/**
 * `shardhub ocr --hub URL --token TOKEN --inputs scans/ --out text/`: sends a folder of PNG and
 * JPEG pages to a hub's OCR pipeline (`POST /api/ocr`), waits, and writes per image
 * `<name>.json` (lines with text, box and confidence, or the page's outcome and reason) and
 * `<name>.txt` (the text in reading order). A page that cannot be read is reported, never fatal.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import type { Command } from 'commander';
import { Progress } from './cli-progress.ts';
import type { OcrPageResult, OcrRunView } from './pipeline.ts';
import {
  CliError,
  EXIT,
  UsageError,
  addOptions,
  readValues,
  type CliIo,
  type OptionTable,
  OPERATOR_CONNECTION,
} from './options.ts';

/** Every option of `shardhub ocr`. */
const OCR_OPTIONS: OptionTable = {
  ...OPERATOR_CONNECTION,
  inputs: {
    type: 'string',
    help: 'folder of .png/.jpg/.jpeg pages (or one image file)',
    required: true,
    arg: 'DIR',
  },
  out: { type: 'string', help: 'where <name>.json and <name>.txt are written', default: 'text', arg: 'DIR' },
  priority: { type: 'int', help: 'job priority', default: 0, min: -100, max: 100 },
  cache: {
    type: 'boolean',
    negatable: true,
    default: true,
    help: 'answer what the hub read before from its result cache (--no-cache: read every page again)',
  },
};

const IMAGE_EXT = new Set(['.png', '.jpg', '.jpeg']);
/** Pages per request: one JSON body stays well under the hub's limit. */
const PAGES_PER_RUN = 50;

/** Lists a folder's images (sorted), or the one file given. */
async function listImages(path: string): Promise<string[]> {
  const s = await stat(path).catch(() => undefined);
  if (!s) throw new UsageError(`--inputs ${path}: no such file or folder`);
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
    throw new CliError(
      `cannot reach the hub at ${hub} (${String((err as Error).cause ?? (err as Error).message)}); is it running? Check --hub`,
      EXIT.unreachable,
    );
  }
  const json = (await res.json().catch(() => ({}))) as { data?: T; error?: { message: string } };
  if (!res.ok || json.error) {
    const why = json.error?.message ?? `HTTP ${res.status}`;
    throw new Error(res.status === 401 ? `the hub refused the operator token (${why})` : why);
  }
  return json.data as T;
}

/**
 * How long a waiting `shardhub ocr` keeps asking a hub that does not answer: a restarted hub
 * rebuilds its OCR runs and finishes them, so the wait goes on across a restart.
 */
const HUB_GONE_MS = 120_000;

/** `call`, asked again while the hub cannot be reached (a restart), up to {@link HUB_GONE_MS}. */
async function callPatiently<T>(hub: string, token: string, path: string, onWait: () => void): Promise<T> {
  const since = Date.now();
  let told = false;
  for (;;) {
    try {
      return await call<T>(hub, token, 'GET', path);
    } catch (err) {
      if (!(err instanceof CliError) || Date.now() - since > HUB_GONE_MS) throw err;
      if (!told) onWait();
      told = true;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
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
async function ocrCommand(cmd: Command, io: CliIo): Promise<number> {
  const v = readValues(cmd, OCR_OPTIONS, io.env);
  const hub = v.hub as string;
  const token = v.token as string;
  const values = { inputs: v.inputs as string, out: v.out as string };
  const priority = v.priority as number;
  const useCache = v.cache as boolean;
  const files = await listImages(values.inputs);
  if (files.length === 0) throw new UsageError(`--inputs ${values.inputs}: no .png or .jpg images there`);
  await mkdir(values.out, { recursive: true });
  let ok = 0;
  let finished = 0; // pages of the runs before this one
  const bar = new Progress('reading', files.length, process.stderr, 'pages');
  try {
    for (let i = 0; i < files.length; i += PAGES_PER_RUN) {
      const chunk = files.slice(i, i + PAGES_PER_RUN);
      const images = await Promise.all(
        chunk.map(async (f) => ({ name: basename(f), data: (await readFile(f)).toString('base64') })),
      );
      const run = await call<OcrRunView>(hub, token, 'POST', '/api/ocr', {
        images,
        priority,
        cache: useCache,
      });
      bar.log(`OCR run ${run.id}: ${chunk.length} page(s)`, io.stderr);
      const onWait = () =>
        bar.log(`the hub at ${hub} does not answer; waiting for it to come back`, io.stderr);
      let view = run;
      for (;;) {
        bar.update(finished + view.pagesDone, undefined, `run ${run.id}`);
        if (view.state === 'completed') break;
        await new Promise((r) => setTimeout(r, 500));
        view = await callPatiently<OcrRunView>(hub, token, `/api/ocr/${run.id}`, onWait);
      }
      finished += view.pages;
      const full = await callPatiently<OcrRunView>(hub, token, `/api/ocr/${run.id}?results=1`, onWait);
      for (const page of full.results ?? []) {
        bar.log(await writePage(values.out, page), io.stdout);
        if (page.outcome === 'ok' || page.outcome === 'no_text') ok++;
      }
    }
    bar.stop('completed');
  } finally {
    bar.stop('failed');
  }
  io.stdout.write(`${ok}/${files.length} page(s) read; text in ${values.out}/\n`);
  return 0;
}

/** `shardhub ocr`'s options, help and action, for the CLI's program (`server/cli.ts`). */
export const OCR = {
  define: (cmd: Command) =>
    addOptions(cmd.usage('--hub URL --token TOKEN --inputs DIR [--out DIR]'), OCR_OPTIONS),
  run: ocrCommand,
};
