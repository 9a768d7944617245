/**
 * The demo `shardhub serve` runs at start: an OCR run on the bundled sample pages
 * (`models/samples/ocr`), whose text is printed once the grid has read it, so a newcomer sees the
 * grid turn images into text.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HubServer } from './app.ts';
import type { Logger } from './logger.ts';
import { OcrService } from './pipeline.ts';

const SAMPLES = resolve(fileURLToPath(import.meta.url), '../../models/samples/ocr');

/** Starts the OCR demo; false when the OCR models or the samples are missing (the caller falls back). */
export async function queueOcrDemo(server: HubServer, log: Logger): Promise<boolean> {
  const hub = server.hub;
  if (!['ppocr-det', 'ppocr-cls', 'ppocr-rec'].every((m) => hub.models.byName(m))) return false;
  const files = (await readdir(SAMPLES).catch(() => [])).filter((f) => f.endsWith('.png')).sort();
  if (files.length === 0) return false;
  const pages = await Promise.all(
    files.map(async (f) => ({ name: f, bytes: new Uint8Array(await readFile(join(SAMPLES, f))) })),
  );
  const svc = await OcrService.of(hub);
  const run = await svc.submit(pages);
  process.stdout.write(
    `  demo OCR run:      ${run.id} (${pages.length} sample pages from models/samples/ocr); ` +
      `watch ${server.url}/api/ocr/${run.id}\n\n`,
  );
  svc.wait(run.id).then(
    (done) => {
      const text = (done.results ?? [])
        .map((p) => `  ── ${p.name} (${p.outcome})\n${p.lines.map((l) => `  ${l.text}`).join('\n')}`)
        .join('\n');
      process.stdout.write(`\n  demo OCR run ${run.id} read:\n${text}\n\n`);
    },
    (err: unknown) => log.error({ err }, 'demo OCR run failed'),
  );
  return true;
}
