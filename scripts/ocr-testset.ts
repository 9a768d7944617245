/**
 * Makes the OCR test set: pages of English text and digits rendered in Chromium with known text,
 * in several fonts and sizes, some lines upside down, some pages with noise. Writes `<name>.png`
 * and `<name>.json` (`{lines: string[]}` in reading order) per page. Deterministic for a seed.
 *
 *   tsx scripts/ocr-testset.ts [--out DIR] [--pages N] [--seed S]
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const WORDS = (
  'the grid runs every stage of a job on browser tabs and native nodes order invoice total amount ' +
  'date page report summary quarterly revenue shipping address customer number account balance due ' +
  'paid received north south east west market street avenue road city station harbor river valley ' +
  'model layer tensor batch shard worker weight signal frame index value result sample table chart'
).split(' ');
const FONTS = ['DejaVu Sans', 'DejaVu Serif', 'DejaVu Sans Mono', 'Liberation Sans', 'Liberation Serif'];
const SIZES = [20, 24, 28, 32, 40];

/** A small seeded PRNG (mulberry32): the same set for the same seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One page's plan: lines of text, each with its font, size and direction. */
export interface PagePlan {
  name: string;
  width: number;
  noise: boolean;
  lines: { text: string; font: string; size: number; flipped: boolean }[];
}

/** Plans `pages` pages from `seed`. */
export function planPages(pages: number, seed: number): PagePlan[] {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]) => a[Math.floor(r() * a.length)] as T;
  const out: PagePlan[] = [];
  for (let p = 0; p < pages; p++) {
    const n = 2 + Math.floor(r() * 4);
    const lines = [];
    for (let i = 0; i < n; i++) {
      const words = [];
      const k = 2 + Math.floor(r() * 4);
      for (let j = 0; j < k; j++) {
        const w = r() < 0.2 ? String(Math.floor(r() * 100000)) : pick(WORDS);
        words.push(r() < 0.15 ? w[0]!.toUpperCase() + w.slice(1) : w);
      }
      lines.push({ text: words.join(' '), font: pick(FONTS), size: pick(SIZES), flipped: r() < 0.2 });
    }
    out.push({ name: `page-${String(p).padStart(3, '0')}`, width: 640, noise: r() < 0.4, lines });
  }
  return out;
}

function html(plan: PagePlan, seed: number): string {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const lines = plan.lines
    .map(
      (l) =>
        `<div style="font-family:'${l.font}';font-size:${l.size}px;margin:0 0 ${Math.round(l.size * 0.9)}px 0;` +
        `white-space:nowrap;${l.flipped ? 'transform:rotate(180deg);transform-origin:center;display:inline-block' : ''}">${esc(l.text)}</div>` +
        (l.flipped ? '<br>' : ''),
    )
    .join('');
  // Noise: speckles of grey drawn over the page with a seeded generator.
  const noise = plan.noise
    ? `<canvas id="n" style="position:absolute;left:0;top:0"></canvas><script>
      const c=document.getElementById('n');c.width=document.body.scrollWidth;c.height=document.body.scrollHeight;
      const g=c.getContext('2d');let a=${seed};const r=()=>{a=(a*1103515245+12345)%2147483648;return a/2147483648};
      for(let i=0;i<c.width*c.height/60;i++){const v=Math.floor(r()*160);g.fillStyle='rgba('+v+','+v+','+v+',0.5)';g.fillRect(r()*c.width,r()*c.height,1.5,1.5)}
      </script>`
    : '';
  return `<!doctype html><html><body style="margin:0;background:#fff;color:#111">
    <div style="padding:28px 32px;width:${plan.width - 64}px;position:relative">${lines}</div>${noise}</body></html>`;
}

/** Renders the planned pages into `out` with Chromium. */
export async function renderTestSet(out: string, pages: number, seed: number): Promise<PagePlan[]> {
  await mkdir(out, { recursive: true });
  const plans = planPages(pages, seed);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 640, height: 200 }, deviceScaleFactor: 1 });
    for (const [i, plan] of plans.entries()) {
      await page.setContent(html(plan, seed * 1000 + i));
      const png = await page.screenshot({ fullPage: true, type: 'png' });
      await writeFile(join(out, `${plan.name}.png`), png);
      await writeFile(
        join(out, `${plan.name}.json`),
        JSON.stringify({ lines: plan.lines.map((l) => l.text), plan }, null, 1),
      );
    }
  } finally {
    await browser.close();
  }
  return plans;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: 'data/ocr-testset' },
      pages: { type: 'string', default: '20' },
      seed: { type: 'string', default: '7' },
    },
  });
  const plans = await renderTestSet(values.out, Number(values.pages), Number(values.seed));
  console.log(`wrote ${plans.length} pages to ${values.out}`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
