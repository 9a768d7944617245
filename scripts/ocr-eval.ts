/**
 * Scores the standalone OCR pipeline on a test set made by `scripts/ocr-testset.ts`: character
 * error rate and line accuracy, per page with `--verbose`.
 *
 *   tsx scripts/ocr-eval.ts [--dir data/ocr-testset] [--json] [--verbose]
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { decodeImage } from '../server/io/images.ts';
import { scoreOcr } from '../pipeline/metrics.ts';
import { StandaloneOcr } from '../pipeline/standalone.ts';

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: 'data/ocr-testset' },
    json: { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
    threads: { type: 'string', default: '1' },
  },
});
const files = (await readdir(values.dir)).filter((f) => f.endsWith('.png')).sort();
const ocr = await StandaloneOcr.create({ threads: Number(values.threads) });
const pages = [];
const started = performance.now();
for (const f of files) {
  const truth = JSON.parse(await readFile(join(values.dir, f.replace(/\.png$/, '.json')), 'utf8'))
    .lines as string[];
  const page = await ocr.recognize(decodeImage(await readFile(join(values.dir, f)), f));
  const got = page.lines.map((l) => l.text);
  pages.push({ truth, got });
  if (values.verbose) {
    for (let i = 0; i < Math.max(truth.length, got.length); i++) {
      const ok = truth[i] === got[i] ? ' ' : '✗';
      console.log(`${ok} ${f} | ${truth[i] ?? ''} | ${got[i] ?? ''}`);
    }
  }
}
const ms = performance.now() - started;
const score = { ...scoreOcr(pages), ms: Math.round(ms), stageMs: ocr.times };
await ocr.dispose();
if (values.json) console.log(JSON.stringify(score));
else
  console.log(
    `standalone OCR on ${score.pages} pages: CER ${(score.cer * 100).toFixed(2)}% (${score.errors}/${score.chars}), ` +
      `without spaces ${(score.cerNoSpace * 100).toFixed(2)}%, ` +
      `lines exact ${score.linesExact}/${score.lines} (${(score.lineAccuracy * 100).toFixed(1)}%), ${(ms / score.pages).toFixed(0)} ms/page`,
  );
