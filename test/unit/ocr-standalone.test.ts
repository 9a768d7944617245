// The standalone OCR pipeline on real PaddleOCR models and the bundled sample pages (rendered by
// scripts/ocr-testset.ts with known text: several fonts and sizes, upside-down lines, noise).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { decodeImage } from '../../server/io/images.ts';
import { StandaloneOcr } from '../../pipeline/standalone.ts';
import { scoreOcr } from '../../pipeline/metrics.ts';

const SAMPLES = new URL('../../models/samples/ocr/', import.meta.url);

test('standalone OCR reads the sample pages, upside-down lines included, in reading order', async () => {
  const ocr = await StandaloneOcr.create({ threads: 1 });
  try {
    const pages = [];
    for (const name of ['page-000', 'page-002']) {
      const truth = JSON.parse(readFileSync(new URL(`${name}.json`, SAMPLES), 'utf8')) as {
        lines: string[];
        plan: { lines: { flipped: boolean }[] };
      };
      const page = await ocr.recognize(decodeImage(readFileSync(new URL(`${name}.png`, SAMPLES)), name));
      assert.equal(page.outcome, 'ok');
      assert.equal(page.lines.length, truth.lines.length, `${name}: one line per rendered line`);
      for (const l of page.lines) {
        assert.ok(l.confidence >= 0.5 && l.confidence <= 1);
        assert.ok(l.box.every(([x, y]) => x >= 0 && y >= 0 && x < page.width && y < page.height));
      }
      // Upside-down lines read as their text (the classifier turned them).
      truth.plan.lines.forEach((l, i) => {
        if (l.flipped) assert.equal(page.lines[i]!.text.replace(/ /g, ''), truth.lines[i]!.replace(/ /g, ''));
      });
      pages.push({ truth: truth.lines, got: page.lines.map((l) => l.text) });
    }
    const score = scoreOcr(pages);
    assert.ok(score.cerNoSpace < 0.03, `CER without spaces ${score.cerNoSpace}`);
    assert.ok(score.cer < 0.15, `CER ${score.cer}`);
  } finally {
    await ocr.dispose();
  }
});

test('a page without text has no lines and says so', async () => {
  const ocr = await StandaloneOcr.create({ threads: 1 });
  try {
    const blank = { width: 200, height: 100, data: new Uint8Array(200 * 100 * 4).fill(255) };
    const page = await ocr.recognize(blank);
    assert.equal(page.outcome, 'no_text');
    assert.deepEqual(page.lines, []);
    assert.equal(page.text, '');
  } finally {
    await ocr.dispose();
  }
});
