/**
 * OCR pages/s on the grid (an in-process hub and one native node, onnxruntime-node, on this
 * machine's cores) against the standalone pipeline (the same models and steps in one process) in
 * the same run; the hub's CPU per page; and each stage's share of the workers' time.
 *
 *   npm run bench -- ocr [--json] [--pages N] [--dir DIR] [--threads T] [--no-preflight | --no-verify]
 *
 * Pages: the bundled samples (models/samples/ocr), repeated to N, or a test set made by
 * scripts/ocr-testset.ts. Each side runs one page first, untimed, so models are loaded (and the
 * node has benchmarked them) before the clock starts.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { StandaloneOcr } from '../pipeline/standalone.ts';
import { scoreOcr } from '../pipeline/metrics.ts';
import { decodeImage } from '../server/io/images.ts';
import { OcrService } from '../server/pipeline.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { benchHub, printTable, ROOT, spawnNode, until } from './_grid.ts';

/** `n` pages from a folder (repeated when it has fewer), with their known lines when a `.json` says them. */
function loadPages(dir: string, n: number): { name: string; bytes: Uint8Array; truth?: string[] }[] {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.png'))
    .sort();
  return Array.from({ length: n || files.length }, (_, i) => {
    const f = files[i % files.length] as string;
    const truthFile = join(dir, f.replace(/\.png$/, '.json'));
    const truth = existsSync(truthFile)
      ? (JSON.parse(readFileSync(truthFile, 'utf8')) as { lines: string[] }).lines
      : undefined;
    return { name: `${i}-${f}`, bytes: new Uint8Array(readFileSync(join(dir, f))), truth };
  });
}

/** CER and line accuracy of pages read, where the truth is known. */
function score(pages: { truth?: string[] }[], got: string[][]): ReturnType<typeof scoreOcr> | undefined {
  const known = pages.flatMap((p, i) => (p.truth ? [{ truth: p.truth, got: got[i] ?? [] }] : []));
  return known.length ? scoreOcr(known) : undefined;
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean', default: false },
      pages: { type: 'string', default: '0' },
      dir: { type: 'string', default: join(ROOT, 'models/samples/ocr') },
      threads: { type: 'string', default: String(availableParallelism()) },
      // Without the hub's pre-flight and canary runs: shows what of the hub's CPU is verification.
      'no-preflight': { type: 'boolean', default: false },
      // Without any run on the hub's reference backend (no pre-flight, the node trusted, no spot
      // checks): the hub's CPU is then its own work per page, which random spot checks blur.
      'no-verify': { type: 'boolean', default: false },
    },
  });
  // Pages: --pages N (0: the folder's own count, at least 12 from the bundled 3 samples).
  const n = Number(values.pages) || (values.dir === join(ROOT, 'models/samples/ocr') ? 12 : 0);
  const pages = loadPages(values.dir, n);
  const threads = Number(values.threads);

  // Standalone: one process, sessions with every core.
  const ocr = await StandaloneOcr.create({ threads });
  await ocr.recognize(decodeImage(pages[0]!.bytes));
  Object.assign(ocr.times, { det: 0, cls: 0, rec: 0 });
  let t0 = performance.now();
  const standaloneText: string[] = [];
  const standaloneLines: string[][] = [];
  for (const p of pages) {
    const read = await ocr.recognize(decodeImage(p.bytes));
    standaloneText.push(read.text);
    standaloneLines.push(read.lines.map((l) => l.text));
  }
  const standaloneS = (performance.now() - t0) / 1000;
  const standaloneTimes = { ...ocr.times };
  await ocr.dispose();

  // Grid: this process is the hub; one native node (a child process) computes.
  const { hub, done } = await benchHub(
    values['no-verify']
      ? {
          hub: {
            preflight: false,
            trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: true, spotCheck: 0, minSpotCheck: 0 },
          },
        }
      : values['no-preflight']
        ? { hub: { preflight: false } }
        : {},
  );
  const state = mkdtempSync(join(tmpdir(), 'shardhub-bench-ocr-'));
  const node = spawnNode(hub, state, ['--backend', 'cpu', '--concurrency', '1', '--name', 'bench-ocr']);
  try {
    await until(
      'node online',
      () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
      50,
    );
    const svc = await OcrService.of(hub.hub);
    const warm = await svc.submit([pages[0]!]);
    await svc.wait(warm.id);
    const ref0 = hub.hub.verificationCost.reference;
    const cpu0 = process.cpuUsage();
    t0 = performance.now();
    const run = await svc.submit(pages);
    const result = await svc.wait(run.id);
    const gridS = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const hubCpuMs = (cpu.user + cpu.system) / 1000;
    const stageMs: Record<string, number> = {};
    for (const [stage, jobId] of Object.entries(result.jobs)) {
      let ms = 0;
      for await (const r of hub.hub.jobs.results(jobId)) ms += r.ms;
      stageMs[stage] = ms;
    }
    const same = (result.results ?? []).filter((r, i) => r.text === standaloneText[i]).length;
    const totalStage = Object.values(stageMs).reduce((a, b) => a + b, 0) || 1;
    const totalStandalone = standaloneTimes.det + standaloneTimes.cls + standaloneTimes.rec || 1;
    const figures = {
      pages: pages.length,
      threads,
      standalonePagesPerS: pages.length / standaloneS,
      gridPagesPerS: pages.length / gridS,
      ratio: standaloneS / gridS,
      hubCpuMsPerPage: hubCpuMs / pages.length,
      // Items the hub's reference backend ran meanwhile (spot checks, probation): their CPU is in the figure above.
      referenceRuns: hub.hub.verificationCost.reference - ref0,
      pagesWithSameText: same,
      standaloneScore: score(pages, standaloneLines),
      gridScore: score(
        pages,
        (result.results ?? []).map((r) => r.lines.map((l) => l.text)),
      ),
      gridStageShare: Object.fromEntries(Object.entries(stageMs).map(([k, v]) => [k, v / totalStage])),
      standaloneStageShare: {
        det: standaloneTimes.det / totalStandalone,
        cls: standaloneTimes.cls / totalStandalone,
        rec: standaloneTimes.rec / totalStandalone,
      },
    };
    if (values.json) process.stdout.write(`${JSON.stringify(figures)}\n`);
    const pct = (x: number | undefined) => `${((x ?? 0) * 100).toFixed(0)}%`;
    printTable([
      {
        run: 'standalone',
        'pages/s': figures.standalonePagesPerS.toFixed(2),
        'hub CPU ms/page': '-',
        det: pct(figures.standaloneStageShare.det),
        cls: pct(figures.standaloneStageShare.cls),
        rec: pct(figures.standaloneStageShare.rec),
      },
      {
        run: 'grid (hub + 1 node)',
        'pages/s': figures.gridPagesPerS.toFixed(2),
        'hub CPU ms/page': figures.hubCpuMsPerPage.toFixed(1),
        det: pct(figures.gridStageShare.det),
        cls: pct(figures.gridStageShare.cls),
        rec: pct(figures.gridStageShare.rec),
      },
    ]);
    process.stdout.write(
      `grid/standalone: ${figures.ratio.toFixed(2)} (goal ≥ 0.9); same text on ${same}/${pages.length} pages\n`,
    );
    for (const [run, sc] of [
      ['standalone', figures.standaloneScore],
      ['grid', figures.gridScore],
    ] as const) {
      if (!sc) continue;
      process.stdout.write(
        `${run}: CER ${(sc.cer * 100).toFixed(2)}% (${sc.errors}/${sc.chars}), without spaces ` +
          `${(sc.cerNoSpace * 100).toFixed(2)}%, lines exact ${sc.linesExact}/${sc.lines}\n`,
      );
    }
  } finally {
    node.kill('SIGKILL');
    await done();
    rmSync(state, { recursive: true, force: true });
  }
}
