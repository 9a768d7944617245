/**
 * The hub side of pipelines: an OCR run is three stage jobs (detection, direction, recognition),
 * created through the hub's own job methods and fed as results commit, so every stage is scheduled,
 * stolen, speculated and verified like any job, and a page's lines start recognition while other
 * pages are still in detection.
 *
 * Each stage's step runs on the workers beside its model (`pipeline/stages.ts`): detection returns
 * boxes, recognition its CTC path, never the megabytes of maps and probabilities. What stays here
 * is what needs the page's pixels, which only the hub holds: decoding and resizing a page for the
 * detector, and cropping each box for the classifier and the recognizer. Every item carries its
 * lineage in its name (`p<page>` or `p<page>/b<box>`), and a page that fails in a stage is reported
 * with the stage, the box and the reason; the run itself never fails for one page.
 */
import { EventEmitter } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import type { Rgba } from '../pipeline/image.ts';
import {
  assemblePage,
  cropLines,
  OCR_PIPELINE_VERSION,
  recInputFor,
  type LineCrop,
  type OcrLine,
} from '../pipeline/ocr.ts';
import type { StepRef } from '../pipeline/stages.ts';
import { characterList, type CtcPath } from '../pipeline/steps/ctc-decode.ts';
import { DB_MAX_CANDIDATES, type MapBox } from '../pipeline/steps/db-postprocess.ts';
import { REC_MAX_WIDTH } from '../pipeline/steps/crop-resize.ts';
import { detPreprocess } from '../pipeline/steps/det-preprocess.ts';
import type { Quad } from '../pipeline/image.ts';
import type { PageBox } from '../pipeline/steps/db-postprocess.ts';
import { packTensors, unpackTensors } from '../protocol/pack.ts';
import { asTypedArray, bytesOf, type WireTensor } from '../protocol/tensor.ts';
import { decodeImage, ImageError } from './io/images.ts';
import { type Hub, HubError } from './hub.ts';
import { clean } from './logger.ts';
import { readFile } from 'node:fs/promises';
import { ocrAssetsDir, OCR_FILES } from '../pipeline/standalone.ts';
import { join } from 'node:path';

export type OcrStage = 'decode' | 'det' | 'cls' | 'rec';

/** One page's outcome. */
export interface OcrPageResult {
  name: string;
  /**
   * `ok`; `no_text` (no line found); `invalid_image` (not a decodable image); `failed` (a stage
   * failed: see `error`); `pending` (the run is still reading it).
   */
  outcome: 'ok' | 'no_text' | 'invalid_image' | 'failed' | 'pending';
  width: number;
  height: number;
  lines: OcrLine[];
  text: string;
  error?: { stage: OcrStage; box?: number; reason: string };
  /** Answered from the result cache (the same image bytes read before, by this pipeline version). */
  cached?: boolean;
}

/** An OCR run as the API shows it. */
export interface OcrRunView {
  id: string;
  state: 'running' | 'completed';
  pages: number;
  pagesDone: number;
  jobs: Partial<Record<'det' | 'cls' | 'rec', string>>;
  createdAt: number;
  finishedAt: number | null;
  results?: OcrPageResult[];
}

/** Options of an OCR run. */
export interface OcrOptions {
  priority?: number;
  redundancy?: number;
  /** Answer pages read before from the cache (default true). */
  cache?: boolean;
}

/**
 * Decoded pages a run holds at once (each up to MAX_IMAGE_PIXELS × 4 bytes until its last line is
 * read); later pages are decoded as earlier ones finish.
 */
export const OCR_PAGES_IN_FLIGHT = 16;

/** OCR runs a hub remembers (running ones always; finished ones up to this many in all). */
export const OCR_RUNS_KEPT = 1000;

/** Pages kept in the result cache: an LRU of page outcomes, a few KB each. */
export const OCR_CACHE_PAGES = 10_000;

/** Longest CTC path: the recognizer has one step per 8 columns of its widest input. */
const MAX_PATH = REC_MAX_WIDTH / 8;

const MODELS = { det: 'ppocr-det', cls: 'ppocr-cls', rec: 'ppocr-rec' } as const;
const STEPS: Record<'det' | 'cls' | 'rec', StepRef | undefined> = {
  det: { name: 'db-boxes', version: 1 },
  cls: undefined,
  rec: { name: 'ctc-path', version: 1 },
};

interface PageState {
  name: string;
  /** Cache key: the pipeline version and the image bytes' sha256. */
  key?: string;
  /** Pages of the same run with the same bytes, answered when this one is. */
  twins?: number[];
  img?: Rgba;
  detSize?: { width: number; height: number };
  lines?: LineCrop[];
  paths?: (CtcPath | undefined)[];
  waiting: number;
  result?: OcrPageResult;
}

function tensor(name: string, data: Float32Array, dims: number[]): WireTensor {
  return { name, dtype: 'float32', dims, data: bytesOf(data) };
}

/** Lineage in an item's name: `p12` is page 12, `p12/b3` its fourth box. */
function lineage(name: string): { page: number; box: number } {
  const m = /^p(\d+)(?:\/b(\d+))?$/.exec(name);
  if (!m) throw new Error(`item name "${clean(name, 80)}" carries no lineage`);
  return { page: Number(m[1]), box: m[2] === undefined ? -1 : Number(m[2]) };
}

/** One OCR run: its pages and its three stage jobs. */
class OcrRun extends EventEmitter<{ done: []; page: [] }> {
  readonly jobs: Partial<Record<'det' | 'cls' | 'rec', string>> = {};
  readonly createdAt = Date.now();
  finishedAt: number | null = null;
  private readonly pages: PageState[];
  private chain: Promise<void> = Promise.resolve();
  private sealing = new Map<'det' | 'cls' | 'rec', Promise<string | undefined>>();
  private ended = new Set<string>();

  constructor(
    private readonly svc: OcrService,
    readonly id: string,
    inputs: readonly { name: string; bytes: Uint8Array }[],
    private readonly opts: OcrOptions,
  ) {
    super();
    this.pages = inputs.map((p) => ({ name: p.name, waiting: 0 }));
    // Not on the chain: detection results are handled while later pages are still being prepared.
    this.detect(inputs).catch((err: unknown) => {
      this.hub.log.error({ err, run: this.id }, 'OCR run: preparing pages failed');
      this.failRest('det', `internal error: ${clean((err as Error).message)}`);
    });
  }

  private get hub(): Hub {
    return this.svc.hub;
  }

  /** Runs `fn` after everything queued before it: results are handled one message at a time, in order. */
  then(fn: () => void | Promise<void>): void {
    this.chain = this.chain.then(fn).catch((err: unknown) => {
      this.hub.log.error({ err, run: this.id }, 'OCR run: handling results failed');
      this.failRest('det', `internal error: ${clean((err as Error).message)}`);
    });
  }

  view(withResults: boolean): OcrRunView {
    const done = this.pages.filter((p) => p.result).length;
    return {
      id: this.id,
      state: this.finishedAt === null ? 'running' : 'completed',
      pages: this.pages.length,
      pagesDone: done,
      jobs: { ...this.jobs },
      createdAt: this.createdAt,
      finishedAt: this.finishedAt,
      ...(withResults ? { results: this.pages.map((p) => p.result ?? this.pending(p)) } : {}),
    };
  }

  private pending(p: PageState): OcrPageResult {
    return { name: p.name, outcome: 'pending', width: 0, height: 0, lines: [], text: '' };
  }

  private finish(i: number, result: OcrPageResult): void {
    const p = this.pages[i];
    if (!p || p.result) return;
    p.result = result;
    const decoded = p.img !== undefined;
    if (p.key && !result.cached && (result.outcome === 'ok' || result.outcome === 'no_text')) {
      this.svc.remember(p.key, result);
    }
    for (const t of p.twins ?? []) {
      const twin = this.pages[t] as PageState;
      this.finish(t, { ...result, name: twin.name, cached: true });
    }
    delete p.img;
    delete p.lines;
    delete p.paths;
    if (this.finishedAt === null && this.pages.every((x) => x.result)) {
      this.finishedAt = Date.now();
      for (const jobId of Object.values(this.jobs)) this.hub.endStream(jobId);
      this.emit('done');
    }
    if (decoded) this.emit('page');
  }

  private fail(i: number, stage: OcrStage, reason: string, box?: number): void {
    const p = this.pages[i];
    if (!p) return;
    this.finish(i, {
      name: p.name,
      outcome: stage === 'decode' ? 'invalid_image' : 'failed',
      width: p.img?.width ?? 0,
      height: p.img?.height ?? 0,
      lines: [],
      text: '',
      error: { stage, reason, ...(box !== undefined && box >= 0 ? { box } : {}) },
    });
  }

  /** Every unfinished page fails (a stage job cancelled or refused). */
  private failRest(stage: OcrStage, reason: string): void {
    this.pages.forEach((p, i) => {
      if (!p.result) this.fail(i, stage, reason);
    });
  }

  /** Adds items to a stage's job, creating and sealing it with its first items. */
  private async feed(
    stage: 'det' | 'cls' | 'rec',
    items: { name: string; inputs: Uint8Array }[],
  ): Promise<boolean> {
    if (items.length === 0) return true;
    const pending = this.sealing.get(stage);
    if (pending) {
      const jobId = await pending;
      if (!jobId) return false;
      try {
        await this.hub.appendToJob(jobId, items);
      } catch (err) {
        if (!(err instanceof HubError)) throw err;
        // The stage's job ended (cancelled by an operator): these pages end with it.
        for (const it of items) this.fail(lineage(it.name).page, stage, `job ${jobId}: ${err.message}`);
        return false;
      }
      return true;
    }
    const sealed = (async () => {
      const job = await this.hub.createJob({
        model: MODELS[stage],
        priority: this.opts.priority ?? 0,
        redundancy: this.opts.redundancy ?? 1,
        deadline: null,
        requirements: null,
        options: { ...(STEPS[stage] ? { step: STEPS[stage] } : {}), pipeline: { run: this.id, stage } },
        state: 'open',
      });
      this.jobs[stage] = job.id;
      this.svc.watch(job.id, this, stage);
      this.hub.holdOpen(job.id);
      try {
        await this.hub.appendItems(job.id, items);
        await this.hub.sealJob(job.id);
      } catch (err) {
        const reason = err instanceof HubError ? err.message : String(err);
        this.hub.log.warn({ run: this.id, stage, reason: clean(reason) }, 'OCR stage job refused');
        for (const it of items) this.fail(lineage(it.name).page, stage, reason);
        return undefined;
      }
      return job.id;
    })();
    this.sealing.set(stage, sealed);
    return (await sealed) !== undefined;
  }

  /** Decodes each page and sends it to detection, a page at a time (the event loop breathes between). */
  private async detect(inputs: readonly { name: string; bytes: Uint8Array }[]): Promise<void> {
    const leaders = new Map<string, number>();
    for (const [i, input] of inputs.entries()) {
      const p = this.pages[i] as PageState;
      if (this.opts.cache !== false) {
        p.key = `${OCR_PIPELINE_VERSION}:${createHash('sha256').update(input.bytes).digest('hex')}`;
        const hit = this.svc.recall(p.key);
        if (hit) {
          this.finish(i, { ...hit, name: p.name, cached: true });
          continue;
        }
        const leader = leaders.get(p.key);
        if (leader !== undefined) {
          const l = this.pages[leader] as PageState;
          if (l.result) this.finish(i, { ...l.result, name: p.name, cached: true });
          else (l.twins ??= []).push(i);
          continue;
        }
        leaders.set(p.key, i);
      }
      // Bounded memory: a run holds at most this many decoded pages that are still being read.
      while (this.pages.filter((x) => x.img).length >= OCR_PAGES_IN_FLIGHT) {
        await new Promise<void>((ok) => this.once('page', ok));
      }
      let img: Rgba;
      try {
        img = decodeImage(input.bytes, clean(input.name, 80));
      } catch (err) {
        if (!(err instanceof ImageError)) throw err;
        this.fail(i, 'decode', err.message);
        continue;
      }
      p.img = img;
      const det = detPreprocess(img);
      p.detSize = { width: det.dims[3], height: det.dims[2] };
      await this.feed('det', [{ name: `p${i}`, inputs: packTensors([tensor('x', det.data, det.dims)]) }]);
      await new Promise((ok) => setImmediate(ok));
    }
    this.endStage('det');
  }

  private endStage(stage: 'det' | 'cls' | 'rec'): void {
    const jobId = this.jobs[stage];
    if (jobId && !this.ended.has(stage)) {
      this.ended.add(stage);
      this.hub.endStream(jobId);
    }
  }

  /** A stage's results were stored. */
  async committed(stage: 'det' | 'cls' | 'rec', itemIds: number[]): Promise<void> {
    const next: { name: string; inputs: Uint8Array }[] = [];
    for (const id of itemIds) {
      const item = await this.hub.jobs.item(id);
      const result = await this.hub.jobs.result(id);
      if (!item || !result) continue;
      const { page, box } = lineage(item.name);
      const p = this.pages[page];
      if (!p || p.result) continue;
      // A result that cannot be used (a degenerate box, a class outside the key list) fails its
      // page, never the run.
      try {
        const outputs = unpackTensors(result.outputs);
        if (stage === 'det') next.push(...this.afterDet(page, p, outputs));
        else if (stage === 'cls') next.push(...this.afterCls(p, page, box, outputs));
        else this.afterRec(p, page, box, outputs);
      } catch (err) {
        this.fail(page, stage, clean((err as Error).message), box);
      }
    }
    if (stage === 'det') await this.feed('cls', next);
    if (stage === 'cls') await this.feed('rec', next);
  }

  private afterDet(i: number, p: PageState, outputs: WireTensor[]): { name: string; inputs: Uint8Array }[] {
    const t = outputs.find((o) => o.name === 'boxes');
    if (!t || !p.img || !p.detSize) {
      this.fail(i, 'det', 'detection result has no boxes');
      return [];
    }
    if ((t.dims[0] ?? 0) > DB_MAX_CANDIDATES)
      throw new Error(`${t.dims[0]} boxes: the step gives at most ${DB_MAX_CANDIDATES}`);
    const v = asTypedArray(t) as Float32Array;
    const boxes: MapBox[] = [];
    for (let k = 0; k < (t.dims[0] ?? 0); k++) {
      const o = k * 9;
      const q = [0, 1, 2, 3].map((c) => [v[o + 2 * c] as number, v[o + 2 * c + 1] as number]) as Quad;
      boxes.push({ quad: q, score: v[o + 8] as number });
    }
    const lines = cropLines(p.img, boxes, p.detSize);
    if (lines.length === 0) {
      this.finish(i, { name: p.name, ...assemblePage(p.img, [], [], this.svc.chars) });
      return [];
    }
    p.lines = lines;
    p.paths = lines.map(() => undefined);
    p.waiting = lines.length;
    return lines.map((l, b) => ({
      name: `p${i}/b${b}`,
      inputs: packTensors([tensor('x', l.cls.data, l.cls.dims)]),
    }));
  }

  private afterCls(
    p: PageState,
    i: number,
    box: number,
    outputs: WireTensor[],
  ): { name: string; inputs: Uint8Array }[] {
    const line = p.lines?.[box];
    const t = outputs[0];
    if (!line || !t) return [];
    const { rec } = recInputFor(line.crop, asTypedArray(t) as Float32Array);
    return [{ name: `p${i}/b${box}`, inputs: packTensors([tensor('x', rec.data, rec.dims)]) }];
  }

  private afterRec(p: PageState, i: number, box: number, outputs: WireTensor[]): void {
    const t = outputs.find((o) => o.name === 'path');
    if (!t || !p.paths || !p.lines || p.paths[box]) return;
    const v = asTypedArray(t) as Float32Array;
    const n = t.dims[0] ?? 0;
    if (n > MAX_PATH) throw new Error(`a path of ${n} classes: a line has at most ${MAX_PATH} steps`);
    const ids = new Int32Array(n);
    const probs = new Float32Array(n);
    for (let k = 0; k < n; k++) {
      ids[k] = v[2 * k] as number;
      probs[k] = v[2 * k + 1] as number;
    }
    p.paths[box] = { ids, probs };
    if (--p.waiting > 0 || !p.img) return;
    const boxes: PageBox[] = p.lines.map((l) => l.box);
    try {
      this.finish(i, { name: p.name, ...assemblePage(p.img, boxes, p.paths as CtcPath[], this.svc.chars) });
    } catch (err) {
      this.fail(i, 'rec', (err as Error).message, box);
    }
  }

  /** A stage job ended: its failed items fail their pages; the next stage gets no more items. */
  async stageEnded(stage: 'det' | 'cls' | 'rec', jobId: string, state: string): Promise<void> {
    for (const f of await this.hub.jobs.failures(jobId)) {
      const item = await this.hub.jobs.item(f.itemId);
      if (!item || item.state !== 'failed') continue;
      const { page, box } = lineage(item.name);
      this.fail(page, stage, `${f.category}: ${f.message}`, box);
    }
    if (state === 'cancelled') this.failRest(stage, `the ${stage} stage's job ${jobId} was cancelled`);
    if (stage === 'det') this.endStage('cls');
    if (stage === 'cls') this.endStage('rec');
    // A stage that ends with pages still waiting on it and no next job: those pages found no text.
    if (stage === 'det' && !this.jobs.cls) this.failRest('det', 'detection ended without a result');
  }
}

const services = new WeakMap<Hub, OcrService>();

/** A hub's OCR runs. One per hub: {@link OcrService.of}. */
export class OcrService {
  private readonly runs = new Map<string, OcrRun>();
  private readonly byJob = new Map<string, { run: OcrRun; stage: 'det' | 'cls' | 'rec' }>();
  private constructor(
    readonly hub: Hub,
    readonly chars: string[],
  ) {
    hub.on('items:committed', (jobId, ids) => {
      const w = this.byJob.get(jobId);
      if (w) w.run.then(() => w.run.committed(w.stage, ids));
    });
    hub.on('job:updated', (jobId) => {
      const w = this.byJob.get(jobId);
      if (!w) return;
      hub.jobs.get(jobId).then(
        (job) => {
          if (!job || (job.state !== 'completed' && job.state !== 'cancelled')) return;
          if (this.byJob.get(jobId) !== w) return; // another update ended it first
          this.byJob.delete(jobId);
          const state = job.state;
          w.run.then(() => w.run.stageEnded(w.stage, jobId, state));
        },
        (err: unknown) => hub.log.error({ err, jobId }, 'OCR run: reading a stage job failed'),
      );
    });
  }

  /** The hub's OCR service, made on first use (it reads the recognizer's key list). */
  static async of(hub: Hub): Promise<OcrService> {
    let s = services.get(hub);
    if (!s) {
      const keys = await readFile(join(await ocrAssetsDir(), OCR_FILES.keys), 'utf8');
      s = services.get(hub) ?? new OcrService(hub, characterList(keys));
      services.set(hub, s);
    }
    return s;
  }

  private readonly cache = new Map<string, OcrPageResult>();

  /** A page read before (most recently used last). */
  recall(key: string): OcrPageResult | undefined {
    const hit = this.cache.get(key);
    if (hit) {
      this.cache.delete(key);
      this.cache.set(key, hit);
    }
    return hit;
  }

  /** Keeps a page's verified outcome for pages with the same bytes. */
  remember(key: string, result: OcrPageResult): void {
    this.cache.delete(key);
    this.cache.set(key, result);
    while (this.cache.size > OCR_CACHE_PAGES) this.cache.delete(this.cache.keys().next().value as string);
  }

  watch(jobId: string, run: OcrRun, stage: 'det' | 'cls' | 'rec'): void {
    this.byJob.set(jobId, { run, stage });
  }

  /** Starts an OCR run on these pages (PNG or JPEG bytes). */
  submit(pages: readonly { name: string; bytes: Uint8Array }[], opts: OcrOptions = {}): OcrRunView {
    if (pages.length === 0) throw new HubError('invalid_request', 'an OCR run needs at least one image', 400);
    for (const m of Object.values(MODELS)) {
      if (!this.hub.models.byName(m))
        throw new HubError('unknown_model', `the hub has no model "${m}" (npm install)`, 409);
    }
    const id = `ocr_${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
    const run = new OcrRun(this, id, pages, opts);
    this.runs.set(id, run);
    // Finished runs' results are kept for their submitters to fetch, the oldest dropped past a bound.
    for (const [old, r] of this.runs) {
      if (this.runs.size <= OCR_RUNS_KEPT) break;
      if (r.finishedAt !== null) this.runs.delete(old);
    }
    this.hub.log.info({ run: id, pages: pages.length }, 'OCR run started');
    run.once('done', () => this.hub.log.info({ run: id }, 'OCR run completed'));
    return run.view(false);
  }

  /** A run's view, with its pages' results when `withResults`. */
  view(id: string, withResults = false): OcrRunView {
    const run = this.runs.get(id);
    if (!run) throw new HubError('unknown_run', `no OCR run "${clean(id, 80)}"`, 404);
    return run.view(withResults);
  }

  /** Resolves with the run's results once every page has its outcome. */
  async wait(id: string): Promise<OcrRunView> {
    const run = this.runs.get(id);
    if (!run) throw new HubError('unknown_run', `no OCR run "${clean(id, 80)}"`, 404);
    if (run.finishedAt === null) await new Promise<void>((ok) => run.once('done', ok));
    return run.view(true);
  }
}
