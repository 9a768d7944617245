/**
 * The hub side of pipelines: an OCR run is stage jobs (detection, direction, recognition), created
 * through the hub's own job methods and fed as results commit, so every stage is scheduled, stolen,
 * speculated and verified like any job, and a page's lines start recognition while other pages
 * are still in detection.
 *
 * The workers do the pixel work, in each stage's step (`pipeline/stages.ts`): detection's
 * preprocessing and DB boxes, each line's crop and resizing, the recognizer's CTC path. The hub
 * decodes each page once (to refuse what is not an image, and so that every worker reads the same
 * pixels), stores it as its detection item, maps boxes from the detector's map to the page, and
 * cuts each box's region out of the page (a copy of rows) as its line's item. Every item carries
 * its lineage in its name (`p<page>` or `p<page>/b<box>`), and a page that fails in a stage is
 * reported with the stage, the box and the reason; the run itself never fails for one page.
 *
 * A run survives a hub restart: its first detection job's options hold the run's pages and
 * options, each page's outcome is an `ocr_page` event of that job (and each later stage job an
 * `ocr_stage` event), and everything between is in the stage jobs' items and results. On start the
 * service rebuilds each run from those and carries on where they stop.
 *
 * Several hubs (one PostgreSQL store): each run has one owner hub at a time, recorded in the store
 * (`PipelineRun`: the owner's hub id and lease epoch). The owner keeps the run in memory and feeds
 * its stages; any hub's workers run the stage items. When the owner's lease is gone (it was reaped,
 * or registered again under a new epoch), a live hub takes the run over with a compare-and-set and
 * rebuilds it from the record as after a restart. Every other hub answers reads of the run from the
 * record, as stored at the moment of the read (`storedView`).
 */
import { EventEmitter, once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Quad, Rgba } from '../pipeline/image.ts';
import {
  assemblePage,
  lineRegion,
  OCR_PIPELINE_VERSION,
  pageLines,
  turned,
  type OcrLine,
} from '../pipeline/ocr.ts';
import { lineTensors, pageTensor, readLine, readPage } from '../pipeline/ocr-items.ts';
import type { StepRef } from '../pipeline/stages.ts';
import { ocrAssetsDir, OCR_FILES } from '../pipeline/standalone.ts';
import { characterList, type CtcPath } from '../pipeline/steps/ctc-decode.ts';
import { REC_MAX_WIDTH } from '../pipeline/steps/crop-resize.ts';
import { DB_MAX_CANDIDATES, type MapBox, type PageBox } from '../pipeline/steps/db-postprocess.ts';
import { detInputSize } from '../pipeline/steps/det-preprocess.ts';
import { packTensors, unpackTensors } from '../protocol/pack.ts';
import { asTypedArray, type WireTensor } from '../protocol/tensor.ts';
import { decodeImage, ImageError } from './io/images.ts';
import { type Hub, HubError } from './hub.ts';
import { clean } from './logger.ts';
import type { PipelineRun } from './store/async-store.ts';
import type { JobRecord } from './store/store.ts';

export type OcrStage = 'decode' | 'det' | 'cls' | 'rec';
type Stage = 'det' | 'cls' | 'rec';

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
  /**
   * Answered from the result cache: every item of the page, in every stage, was (the same bytes
   * read before by the same models and steps), or it repeats a page of the same run.
   */
  cached?: boolean;
}

/** An OCR run as the API shows it. */
export interface OcrRunView {
  id: string;
  state: 'running' | 'completed';
  pages: number;
  pagesDone: number;
  /** Each stage's latest job (a stage has a second job only when a hub restart ended its first). */
  jobs: Partial<Record<Stage, string>>;
  /** Several hubs: the hub carrying the run on (its owner), as the store records it. */
  owner?: string;
  createdAt: number;
  finishedAt: number | null;
  results?: OcrPageResult[];
}

/** Options of an OCR run. */
export interface OcrOptions {
  priority?: number;
  redundancy?: number;
  /** Answer items computed before from the hub's result cache (default true). */
  cache?: boolean;
}

/**
 * Pages of a run in detection at once: later pages are decoded and stored as earlier ones leave
 * detection, which bounds the store's share of a big run's pixels waiting there.
 */
export const OCR_PAGES_IN_FLIGHT = 16;

/** OCR runs a hub remembers (running ones always; finished ones up to this many in all). */
export const OCR_RUNS_KEPT = 1000;

/** Longest CTC path: the recognizer has one step per 8 columns of its widest input. */
const MAX_PATH = REC_MAX_WIDTH / 8;

const STAGES: readonly Stage[] = ['det', 'cls', 'rec'];
const BEFORE: Record<Stage, Stage | undefined> = { det: undefined, cls: 'det', rec: 'cls' };
const MODELS: Record<Stage, string> = { det: 'ppocr-det', cls: 'ppocr-cls', rec: 'ppocr-rec' };
const STEPS: Record<Stage, StepRef> = {
  det: { name: 'det-page', version: 1 },
  cls: { name: 'cls-line', version: 1 },
  rec: { name: 'rec-line', version: 1 },
};
/** The event of a run's first detection job that records one page's outcome. */
const PAGE_EVENT = 'ocr_page';
/** The event of a run's first detection job that records a later stage job of the run. */
const STAGE_EVENT = 'ocr_stage';
/** How often a hub that does not own a run reads it again from the store while a client waits. */
const STORE_POLL_MS = 500;

/**
 * Several hubs: how often a hub looks for runs whose owner's lease is gone without having heard
 * that a hub was reaped (the news comes through the hub-to-hub channel, which may drop it).
 */
const TAKEOVER_POLL_MS = 10_000;
/** The event of a stage job the run cancelled because nothing of it ran (not an operator's cancel). */
const UNUSED_EVENT = 'ocr_unused';

/** What a stage job's options say of its run; the run's first job also holds its pages. */
interface StageOptions {
  run: string;
  stage: Stage;
  pages?: string[];
  opts?: OcrOptions;
  createdAt?: number;
}

interface PageState {
  name: string;
  /** The pipeline version and the image bytes' sha256: a page of the run with the same is its twin. */
  key?: string;
  /** Pages of the same run with the same bytes, answered when this one is. */
  twins?: number[];
  /** Its lines' boxes on the page, in reading order, once detection answered. */
  boxes?: PageBox[];
  paths?: (CtcPath | undefined)[];
  waiting: number;
  /** An item of the page ran on the grid (was not answered from the result cache). */
  computed?: boolean;
  result?: OcrPageResult;
}

interface StageJobs {
  /** Its jobs, oldest first. */
  ids: string[];
  /** The job new items go to: its id once sealed, undefined if it was refused. */
  current?: Promise<string | undefined>;
  /** Why the stage's job was refused (its pages fail with this). */
  refused?: string;
  /** Jobs that ended (completed or cancelled). */
  ended: Set<string>;
  /** Names of items given to the stage: an item is given once, also across restarts. */
  fed: Set<string>;
  /** Nothing more comes to this stage: its jobs complete once their items are done. */
  closed: boolean;
}

type NewItem = { name: string; inputs: Uint8Array };

function pendingPage(name: string): OcrPageResult {
  return { name, outcome: 'pending', width: 0, height: 0, lines: [], text: '' };
}

/** Lineage in an item's name: `p12` is page 12, `p12/b3` its fourth box. */
function lineage(name: string): { page: number; box: number } {
  const m = /^p(\d+)(?:\/b(\d+))?$/.exec(name);
  if (!m) throw new Error(`item name "${clean(name, 80)}" carries no lineage`);
  return { page: Number(m[1]), box: m[2] === undefined ? -1 : Number(m[2]) };
}

function stageOptions(job: JobRecord): StageOptions | undefined {
  const p = job.options.pipeline as Partial<StageOptions> | undefined;
  if (!p || typeof p.run !== 'string' || !STAGES.includes(p.stage as Stage)) return undefined;
  return p as StageOptions;
}

/** One OCR run: its pages and its stage jobs. */
class OcrRun extends EventEmitter<{ done: []; page: []; dropped: [] }> {
  finishedAt: number | null = null;
  /** Another hub owns the run now (this one lost its lease): it does nothing more. */
  dropped = false;
  /** The run's first detection job: its options and events are the run's record. */
  anchor = '';
  private readonly pages: PageState[];
  private chain: Promise<void> = Promise.resolve();
  private readonly stages: Record<Stage, StageJobs>;
  /** Pages sent to detection whose boxes have not come back. */
  private readonly inDetection = new Set<number>();
  /** Their decoded pixels (after a restart, read from their stored items instead). */
  private readonly pixels = new Map<number, Rgba>();
  /** The anchor job, before its first item sealed it. */
  private unsealedAnchor: string | undefined;
  /** Replaying a stored run: outcomes read from the record are not recorded again. */
  private replaying = false;

  constructor(
    private readonly svc: OcrService,
    readonly id: string,
    names: readonly string[],
    private readonly opts: OcrOptions,
    readonly createdAt: number,
  ) {
    super();
    this.pages = names.map((name) => ({ name, waiting: 0 }));
    const stage = (): StageJobs => ({ ids: [], ended: new Set(), fed: new Set(), closed: false });
    this.stages = { det: stage(), cls: stage(), rec: stage() };
  }

  private get hub(): Hub {
    return this.svc.hub;
  }

  /** Starts a new run: records it in its first detection job, then reads its pages. */
  async start(inputs: readonly { name: string; bytes: Uint8Array }[]): Promise<void> {
    const pipeline: StageOptions = {
      run: this.id,
      stage: 'det',
      pages: this.pages.map((p) => p.name),
      opts: this.opts,
      createdAt: this.createdAt,
    };
    const job = await this.hub.createJob(this.jobSpec('det', pipeline));
    try {
      await this.hub.createRun({ id: this.id, anchor: job.id, createdAt: this.createdAt });
    } catch (err) {
      this.cancelQuietly(job.id);
      throw err;
    }
    this.anchor = job.id;
    this.unsealedAnchor = job.id;
    this.hub.holdOpen(job.id);
    // Not on the chain: detection results are handled while later pages are still being read.
    this.read(inputs).catch((err: unknown) => {
      this.hub.log.error({ err, run: this.id }, 'OCR run: reading pages failed');
      this.failRest('det', `internal error: ${clean((err as Error).message)}`);
    });
  }

  private jobSpec(stage: Stage, pipeline: StageOptions) {
    return {
      model: MODELS[stage],
      // Later stages a step ahead: a worker's top-up serves the lines of pages already detected
      // before more pages, so a page's lines are read while later pages are still in detection.
      priority: Math.min(100, (this.opts.priority ?? 0) + STAGES.indexOf(stage)),
      redundancy: this.opts.redundancy ?? 1,
      deadline: null,
      requirements: null,
      options: { step: STEPS[stage], pipeline },
      cache: this.opts.cache !== false,
      state: 'open' as const,
    };
  }

  /** Runs `fn` after everything queued before it: results are handled one message at a time, in order. */
  then(fn: () => void | Promise<void>): void {
    this.chain = this.chain
      .then(() => (this.dropped ? undefined : fn()))
      .catch((err: unknown) => {
        this.hub.log.error({ err, run: this.id }, 'OCR run: handling results failed');
        this.failRest('det', `internal error: ${clean((err as Error).message)}`);
      });
  }

  /** Stops carrying the run on: its owner is another hub now, which rebuilds it from the store. */
  drop(): void {
    if (this.dropped) return;
    this.dropped = true;
    for (const st of STAGES) for (const jobId of this.stages[st].ids) this.svc.unwatch(jobId);
    this.emit('dropped');
  }

  view(withResults: boolean): OcrRunView {
    const jobs: Partial<Record<Stage, string>> = {};
    for (const st of STAGES) {
      const last = this.stages[st].ids.at(-1);
      if (last) jobs[st] = last;
    }
    return {
      id: this.id,
      state: this.finishedAt === null ? 'running' : 'completed',
      pages: this.pages.length,
      pagesDone: this.pages.filter((p) => p.result).length,
      jobs,
      ...(this.hub.shared ? { owner: this.hub.hubId } : {}),
      createdAt: this.createdAt,
      finishedAt: this.finishedAt,
      ...(withResults ? { results: this.pages.map((p) => p.result ?? pendingPage(p.name)) } : {}),
    };
  }

  private finish(i: number, result: OcrPageResult, at = Date.now()): void {
    const p = this.pages[i];
    if (!p || p.result || this.dropped) return;
    // Read (not failed) with every item of it answered from the store's result cache.
    if (!p.computed && this.opts.cache !== false && (result.outcome === 'ok' || result.outcome === 'no_text'))
      result = { ...result, cached: true };
    p.result = result;
    if (!this.replaying) this.hub.addJobEvent(this.anchor, PAGE_EVENT, { page: i, result });
    for (const t of p.twins ?? []) {
      const twin = this.pages[t] as PageState;
      this.finish(t, { ...result, name: twin.name, cached: true });
    }
    delete p.boxes;
    delete p.paths;
    this.pixels.delete(i);
    this.sizes.delete(i);
    if (this.inDetection.delete(i)) this.emit('page');
    if (this.finishedAt === null && this.pages.every((x) => x.result)) {
      this.finishedAt = at;
      if (!this.replaying) this.hub.completeRun(this.id);
      for (const st of STAGES) this.close(st);
      // A run whose pages never reached detection leaves its record unsealed: it ends there.
      if (this.unsealedAnchor) this.cancelQuietly(this.unsealedAnchor);
      this.emit('done');
    }
  }

  /** Cancels a job of the run that has nothing to run (already ended: nothing to do). */
  private cancelQuietly(jobId: string): void {
    this.svc.unwatch(jobId);
    // Marked, so that a restart tells it from a stage job an operator cancelled.
    this.hub.addJobEvent(jobId, UNUSED_EVENT, {});
    (async () => this.hub.cancelJob(jobId))().catch((err: unknown) => {
      if (!(err instanceof HubError))
        this.hub.log.error({ err, run: this.id, jobId }, 'OCR run: cancelling failed');
    });
  }

  private fail(
    i: number,
    stage: OcrStage,
    reason: string,
    box?: number,
    size?: { width: number; height: number },
  ): void {
    const p = this.pages[i];
    if (!p) return;
    this.finish(i, {
      name: p.name,
      outcome: stage === 'decode' ? 'invalid_image' : 'failed',
      width: size?.width ?? 0,
      height: size?.height ?? 0,
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

  /**
   * Gives items to a stage: to its current job, or to a new one (the first, or after the hub
   * restarted and completed the one before). Items given before are skipped.
   */
  private async feed(stage: Stage, all: NewItem[]): Promise<void> {
    const s = this.stages[stage];
    const items = all.filter((it) => !s.fed.has(it.name));
    if (items.length === 0 || this.dropped) return;
    for (const it of items) s.fed.add(it.name);
    if (s.current) {
      const jobId = await s.current;
      if (!jobId) {
        for (const it of items) this.fail(lineage(it.name).page, stage, s.refused ?? 'stage job refused');
        return;
      }
      try {
        await this.hub.appendToJob(jobId, items);
        return;
      } catch (err) {
        if (!(err instanceof HubError)) throw err;
        const job = await this.hub.jobs.get(jobId);
        if (job?.state !== 'completed') {
          // The stage's job was cancelled (by an operator): these pages end with it.
          for (const it of items) this.fail(lineage(it.name).page, stage, `job ${jobId}: ${err.message}`);
          return;
        }
        // Completed without waiting for these (a restarted hub): a new job takes them.
      }
    }
    const sealed = this.startJob(stage, items);
    s.current = sealed;
    await sealed;
  }

  /** Creates (or, for the run's first detection, takes the record's) job, adds items, seals it. */
  private async startJob(stage: Stage, items: NewItem[]): Promise<string | undefined> {
    const s = this.stages[stage];
    let jobId = stage === 'det' ? this.unsealedAnchor : undefined;
    this.unsealedAnchor = undefined;
    if (!jobId) {
      jobId = (await this.hub.createJob(this.jobSpec(stage, { run: this.id, stage }))).id;
      this.hub.holdOpen(jobId);
      // For hubs that read the run from its record (several hubs): the stage's latest job.
      this.hub.addJobEvent(this.anchor, STAGE_EVENT, { stage, job: jobId });
    }
    s.ids.push(jobId);
    this.svc.watch(jobId, this, stage);
    await this.hub.appendItems(jobId, items);
    try {
      await this.hub.sealJob(jobId);
    } catch (err) {
      const reason = err instanceof HubError ? err.message : String(err);
      this.hub.log.warn({ run: this.id, stage, reason: clean(reason) }, 'OCR stage job refused');
      s.refused = reason;
      s.ended.add(jobId);
      for (const it of items) this.fail(lineage(it.name).page, stage, reason);
      return undefined;
    }
    if (s.closed) this.hub.endStream(jobId);
    return jobId;
  }

  /** Decodes each page and sends it to detection, a page at a time (the event loop breathes between). */
  private async read(inputs: readonly { name: string; bytes: Uint8Array }[]): Promise<void> {
    const leaders = new Map<string, number>();
    for (const [i, input] of inputs.entries()) {
      const p = this.pages[i] as PageState;
      if (this.opts.cache !== false) {
        // A page the run already has: answered with it (across runs, the stages' items are
        // answered by the hub's result cache).
        p.key = `${OCR_PIPELINE_VERSION}:${createHash('sha256').update(input.bytes).digest('hex')}`;
        const leader = leaders.get(p.key);
        if (leader !== undefined) {
          const l = this.pages[leader] as PageState;
          if (l.result) this.finish(i, { ...l.result, name: p.name, cached: true });
          else (l.twins ??= []).push(i);
          continue;
        }
        leaders.set(p.key, i);
      }
      while (this.inDetection.size >= OCR_PAGES_IN_FLIGHT) {
        await new Promise<void>((ok) => this.once('page', ok));
      }
      let pack: Uint8Array;
      try {
        const page = decodeImage(input.bytes, clean(input.name, 80));
        pack = packTensors([pageTensor(page)]);
        // Kept while in detection (at most OCR_PAGES_IN_FLIGHT), so its lines are cut without
        // reading the page back from the store.
        this.pixels.set(i, readPage(unpackTensors(pack)));
      } catch (err) {
        if (!(err instanceof ImageError)) throw err;
        this.fail(i, 'decode', err.message);
        continue;
      }
      this.inDetection.add(i);
      await this.feed('det', [{ name: `p${i}`, inputs: pack }]);
      await new Promise((ok) => setImmediate(ok));
    }
    this.close('det');
  }

  /** Nothing more comes to a stage: its jobs may complete; the next stage may close after them. */
  private close(stage: Stage): void {
    const s = this.stages[stage];
    if (s.closed) return;
    s.closed = true;
    for (const jobId of s.ids) this.hub.endStream(jobId);
    this.settle();
  }

  /**
   * Closes each stage whose stage before is closed with all its jobs ended; once every stage is,
   * a page still without an outcome has lost its items (it cannot get one): it fails, so that the
   * run always ends.
   */
  private settle(): void {
    const over = (st: Stage) =>
      this.stages[st].closed && this.stages[st].ids.every((id) => this.stages[st].ended.has(id));
    for (const st of STAGES) {
      const before = BEFORE[st];
      if (before && !this.stages[st].closed && over(before)) this.close(st);
    }
    if (this.finishedAt === null && STAGES.every(over)) {
      this.pages.forEach((p, i) => {
        if (!p.result)
          this.fail(i, p.boxes ? 'rec' : 'det', 'the pipeline ended without a result for this page');
      });
    }
  }

  /** A stage's results were stored. */
  async committed(stage: Stage, itemIds: number[]): Promise<void> {
    const next: NewItem[] = [];
    for (const id of itemIds) {
      const item = await this.hub.jobs.item(id);
      const result = await this.hub.jobs.result(id);
      if (!item || !result) continue;
      const { page, box } = lineage(item.name);
      const p = this.pages[page];
      if (!this.svc.answered(id) && p) p.computed = true;
      if (!p || p.result) continue;
      // A result that cannot be used (a degenerate box, a class outside the key list) fails its
      // page, never the run.
      try {
        const outputs = unpackTensors(result.outputs);
        if (stage === 'det') next.push(...(await this.afterDet(page, p, id, outputs)));
        else if (stage === 'cls') next.push(...(await this.afterCls(p, page, box, id, outputs)));
        else this.afterRec(p, page, box, outputs);
      } catch (err) {
        this.fail(page, stage, clean((err as Error).message), box);
      }
    }
    if (stage === 'det') await this.feed('cls', next);
    if (stage === 'cls') await this.feed('rec', next);
  }

  /** A job's items with their stored inputs. */
  private async storedItems(jobId: string): Promise<NewItem[]> {
    const out: NewItem[] = [];
    for (let offset = 0; ; offset += 100) {
      const items = await this.hub.jobs.items(jobId, { offset, limit: 100 });
      const packs = await this.hub.jobs.inputs(items.map((it) => it.id));
      for (const it of items) {
        const pack = packs.get(it.id);
        if (pack) out.push({ name: it.name, inputs: pack });
      }
      if (items.length < 100) return out;
    }
  }

  /** The item's own inputs, as stored. */
  private async inputsOf(itemId: number): Promise<WireTensor[]> {
    const pack = (await this.hub.jobs.inputs([itemId])).get(itemId);
    if (!pack) throw new Error(`item ${itemId}'s inputs are gone`);
    return unpackTensors(pack);
  }

  /** Boxes of a page: each line's region of the page goes to the classifier. */
  private async afterDet(i: number, p: PageState, itemId: number, outputs: WireTensor[]): Promise<NewItem[]> {
    if (p.boxes) return []; // handled already (a result seen again after a restart)
    const t = outputs.find((o) => o.name === 'boxes');
    if (!t) throw new Error('detection result has no boxes');
    if ((t.dims[0] ?? 0) > DB_MAX_CANDIDATES)
      throw new Error(`${t.dims[0]} boxes: the step gives at most ${DB_MAX_CANDIDATES}`);
    const page = this.pixels.get(i) ?? readPage(await this.inputsOf(itemId));
    const v = asTypedArray(t) as Float32Array;
    const found: MapBox[] = [];
    for (let k = 0; k < (t.dims[0] ?? 0); k++) {
      const o = k * 9;
      const q = [0, 1, 2, 3].map((c) => [v[o + 2 * c] as number, v[o + 2 * c + 1] as number]) as Quad;
      found.push({ quad: q, score: v[o + 8] as number });
    }
    const boxes = pageLines(found, detInputSize(page.width, page.height), page);
    this.pixels.delete(i);
    if (this.inDetection.delete(i)) this.emit('page');
    if (boxes.length === 0) {
      this.finish(i, { name: p.name, ...assemblePage(page, [], [], this.svc.chars) });
      return [];
    }
    p.boxes = boxes;
    p.paths = boxes.map(() => undefined);
    p.waiting = boxes.length;
    this.sizes.set(i, { width: page.width, height: page.height });
    return boxes.map((b, k) => ({
      name: `p${i}/b${k}`,
      inputs: packTensors(lineTensors(lineRegion(page, b.quad))),
    }));
  }

  /** Page sizes of pages past detection, for their outcome. */
  private readonly sizes = new Map<number, { width: number; height: number }>();

  /** A line's direction: it goes to the recognizer with its region and whether to turn it. */
  private async afterCls(
    p: PageState,
    i: number,
    box: number,
    itemId: number,
    outputs: WireTensor[],
  ): Promise<NewItem[]> {
    const t = outputs[0];
    if (!p.boxes) return [];
    if (!t || t.dtype !== 'float32') throw new Error('direction result has no probabilities');
    const line = readLine(await this.inputsOf(itemId));
    return [
      {
        name: `p${i}/b${box}`,
        inputs: packTensors(lineTensors(line, turned(asTypedArray(t) as Float32Array))),
      },
    ];
  }

  private afterRec(p: PageState, i: number, box: number, outputs: WireTensor[]): void {
    const t = outputs.find((o) => o.name === 'path');
    if (!t || !p.paths || !p.boxes || p.paths[box]) return;
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
    if (--p.waiting > 0) return;
    const size = this.sizes.get(i) ?? { width: 0, height: 0 };
    this.sizes.delete(i);
    try {
      this.finish(i, { name: p.name, ...assemblePage(size, p.boxes, p.paths as CtcPath[], this.svc.chars) });
    } catch (err) {
      this.fail(i, 'rec', (err as Error).message, box, size);
    }
  }

  /** A stage job ended: its failed items fail their pages; the next stage may close. */
  async stageEnded(stage: Stage, jobId: string, state: string): Promise<void> {
    const s = this.stages[stage];
    if (s.ended.has(jobId)) return;
    s.ended.add(jobId);
    for (const f of await this.hub.jobs.failures(jobId)) {
      const item = await this.hub.jobs.item(f.itemId);
      if (!item || item.state !== 'failed') continue;
      const { page, box } = lineage(item.name);
      this.fail(page, stage, `${f.category}: ${f.message}`, box, this.sizes.get(page));
    }
    if (state === 'cancelled') this.failRest(stage, `the ${stage} stage's job ${jobId} was cancelled`);
    this.settle();
  }

  /**
   * Rebuilds a run from its record and its stage jobs (after a hub restart): outcomes from the
   * record's events, the rest by handling the stored results again in stage order, which gives
   * each stage the items it lacks. Jobs still running are held open for what is to come.
   */
  async restore(anchor: JobRecord, jobs: readonly JobRecord[]): Promise<void> {
    this.anchor = anchor.id;
    this.replaying = true;
    let last = 0;
    // Newest first: the oldest event of a page wins, as `finish` takes the first.
    for (const ev of (await this.hub.jobs.events(anchor.id, { type: PAGE_EVENT })).reverse()) {
      const { page, result } = ev.data as { page: number; result: OcrPageResult };
      this.finish(page, result, ev.at);
      last = Math.max(last, ev.at);
    }
    this.replaying = false;
    if (this.finishedAt !== null) {
      this.finishedAt = last;
      return;
    }
    const done: Record<Stage, number[]> = { det: [], cls: [], rec: [] };
    const ended: [Stage, string, string][] = [];
    const refeed: NewItem[] = [];
    for (const job of jobs) {
      const stage = (stageOptions(job) as StageOptions).stage;
      const s = this.stages[stage];
      const unused =
        job.state === 'cancelled' &&
        (await this.hub.jobs.events(job.id, { type: UNUSED_EVENT, limit: 1 })).length > 0;
      if (job.state === 'open' || unused) {
        // Never sealed: its items never ran, and it ends. Its pages go to detection again below;
        // later stages' items are made again from the stage before.
        if (stage === 'det') refeed.push(...(await this.storedItems(job.id)));
        if (!unused) this.cancelQuietly(job.id);
        continue;
      }
      s.ids.push(job.id);
      this.svc.watch(job.id, this, stage);
      for (let offset = 0; ; offset += 1000) {
        const items = await this.hub.jobs.items(job.id, { offset, limit: 1000 });
        for (const it of items) {
          s.fed.add(it.name);
          if (it.state === 'done') done[stage].push(it.id);
          if (stage === 'det' && it.state === 'pending') this.inDetection.add(lineage(it.name).page);
        }
        if (items.length < 1000) break;
      }
      if (job.state === 'completed' || job.state === 'cancelled') ended.push([stage, job.id, job.state]);
      else {
        this.hub.holdOpen(job.id);
        s.current = Promise.resolve(job.id);
      }
    }
    this.hub.log.info({ run: this.id, jobs: jobs.length }, 'OCR run resumed');
    this.then(async () => {
      for (const st of STAGES) if (done[st].length) await this.committed(st, done[st]);
      for (const it of refeed) this.inDetection.add(lineage(it.name).page);
      await this.feed('det', refeed);
      // The hub stopped before these pages were stored for detection: their bytes are gone.
      const lost = 'the hub carrying the run stopped before this page was stored; submit it again';
      this.pages.forEach((p, i) => {
        if (!p.result && !this.stages.det.fed.has(`p${i}`)) this.fail(i, 'det', lost);
      });
      for (const [st, jobId, state] of ended) await this.stageEnded(st, jobId, state);
      this.close('det');
    });
  }
}

const services = new WeakMap<Hub, Promise<OcrService>>();

/** A hub's OCR runs. One per hub: {@link OcrService.of}. */
export class OcrService {
  private readonly runs = new Map<string, OcrRun>();
  private readonly byJob = new Map<string, { run: OcrRun; stage: Stage }>();
  private constructor(
    readonly hub: Hub,
    readonly chars: string[],
  ) {
    hub.on('items:cached', (jobId, ids) => {
      if (this.byJob.has(jobId)) for (const id of ids) this.fromCache.add(id);
    });
    hub.on('items:committed', (jobId, ids) => this.committed(jobId, ids));
    hub.on('job:updated', (jobId) => this.updated(jobId));
    hub.on('lease:lost', () => this.leaseLost());
    // Several hubs: other hubs' workers run this hub's stage jobs too. Their commits come through
    // the hub-to-hub channel (`app.ts`); a stage job another hub completed is found here. Runs
    // whose owner died are taken over here (one hub wins each) as soon as a hub reaps it (here, or
    // another hub as the channel says), and every `TAKEOVER_POLL_MS` in case that news was lost.
    if (hub.shared) {
      hub.on('hubs:gone', () => void this.takeOver());
      let polled = Date.now();
      const timer = setInterval(() => {
        if (hub.isClosed) return clearInterval(timer);
        for (const jobId of this.byJob.keys()) this.updated(jobId);
        if (Date.now() - polled < TAKEOVER_POLL_MS) return;
        polled = Date.now();
        void this.takeOver();
      }, 1000);
      timer.unref();
    }
  }

  /**
   * This hub lost its lease: another hub may own its running runs by now (it takes them over from
   * the store), so this one stops feeding them and answers their reads from the store.
   */
  private leaseLost(): void {
    for (const [id, run] of this.runs) {
      if (run.finishedAt !== null) continue;
      run.drop();
      this.runs.delete(id);
      this.hub.log.warn({ run: id }, 'OCR run dropped: this hub lost its lease, another hub takes it over');
    }
  }

  /** The takeover in progress (one at a time). */
  private taking: Promise<void> | undefined;
  /** A takeover was asked for while one was in progress: another follows it. */
  private takeAgain = false;

  /**
   * Takes over the runs whose owner's lease is gone (several hubs: the store gives each to one
   * hub) and carries them on, rebuilt from their record as after a restart. Asked for while one is
   * in progress (which may have looked before a reap), another follows it.
   */
  takeOver(): Promise<void> {
    if (this.taking) {
      this.takeAgain = true;
      return this.taking;
    }
    this.taking = (async () => {
      const { hub } = this;
      let taken: PipelineRun[];
      try {
        taken = await hub.takeOverRuns();
      } catch (err) {
        // Fenced (this hub is registering again) or the store is unreachable: the next tick tries.
        hub.log.warn({ err: (err as Error).message }, 'OCR runs: looking for runs to take over failed');
        return;
      }
      if (taken.length === 0) return;
      const byRun = await this.stageJobs();
      for (const rec of taken) {
        const jobs = byRun.get(rec.id) ?? [];
        const anchor = jobs.find((j) => j.id === rec.anchor);
        const p = anchor && stageOptions(anchor);
        if (!anchor || !p?.pages) {
          hub.log.error({ run: clean(rec.id, 80) }, 'OCR run to take over has no record: left as it is');
          continue;
        }
        const rebuilt = await this.rebuild(anchor, jobs, p);
        if (!rebuilt) continue;
        hub.log.warn(
          { run: rec.id, takeovers: rec.takeovers },
          'OCR run taken over from a hub whose lease is gone',
        );
        // Every page's outcome was recorded before the owner died: only the completed mark was not.
        if (rebuilt.finished) hub.completeRun(rec.id);
      }
    })().finally(() => {
      this.taking = undefined;
      if (!this.takeAgain) return;
      this.takeAgain = false;
      void this.takeOver();
    });
    return this.taking;
  }

  /** Every run's jobs in the store, by run, oldest first. */
  private async stageJobs(): Promise<Map<string, JobRecord[]>> {
    const byRun = new Map<string, JobRecord[]>();
    for (const job of await this.hub.jobs.list()) {
      const p = stageOptions(job);
      if (p) byRun.set(p.run, [...(byRun.get(p.run) ?? []), job]);
    }
    for (const jobs of byRun.values())
      jobs.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
    return byRun;
  }

  /**
   * Rebuilds a run from its record and carries it on; undefined (logged) if the record cannot be
   * read. (Not the run itself: it has a `then`, so a promise of it would resolve through that.)
   */
  private async rebuild(
    anchor: JobRecord,
    jobs: JobRecord[],
    p: StageOptions,
  ): Promise<{ finished: boolean } | undefined> {
    const run = new OcrRun(this, p.run, p.pages ?? [], p.opts ?? {}, p.createdAt ?? anchor.createdAt);
    try {
      await run.restore(anchor, jobs);
    } catch (err) {
      // One run's record that cannot be read costs that run, not the service.
      this.hub.log.error({ err, run: clean(p.run, 80) }, 'OCR run could not be rebuilt');
      return undefined;
    }
    this.runs.set(p.run, run);
    if (run.finishedAt === null)
      run.once('done', () => this.hub.log.info({ run: p.run }, 'OCR run completed'));
    return { finished: run.finishedAt !== null };
  }

  /** Results of a stage job's items were stored, on this hub or (several hubs) another. */
  committed(jobId: string, ids: number[]): void {
    const w = this.byJob.get(jobId);
    if (w) w.run.then(() => w.run.committed(w.stage, ids));
  }

  /** Ends a stage job's part of its run once the job has completed or was cancelled. */
  private updated(jobId: string): void {
    const { hub } = this;
    const w = this.byJob.get(jobId);
    if (!w) return;
    hub.jobs.get(jobId).then(
      (job) => {
        if (!job || (job.state !== 'completed' && job.state !== 'cancelled')) return;
        if (this.byJob.get(jobId) !== w) return; // another update ended it first
        this.byJob.delete(jobId);
        const state = job.state;
        w.run.then(async () => {
          // Several hubs: a result stored on another hub may not have been passed on yet when
          // the job's end is seen here. Handling a result again changes nothing.
          if (hub.shared) await w.run.committed(w.stage, await this.doneItems(jobId));
          await w.run.stageEnded(w.stage, jobId, state);
        });
      },
      (err: unknown) => hub.log.error({ err, jobId }, 'OCR run: reading a stage job failed'),
    );
  }

  /** The ids of a job's done items. */
  private async doneItems(jobId: string): Promise<number[]> {
    const ids: number[] = [];
    for (let offset = 0; ; offset += 1000) {
      const page = await this.hub.jobs.items(jobId, { offset, limit: 1000, state: 'done' });
      for (const it of page) ids.push(it.id);
      if (page.length < 1000) return ids;
    }
  }

  /**
   * The hub's OCR service, made on first use (it reads the recognizer's key list) and rebuilding
   * the runs the hub's store holds; the API makes it when the hub starts.
   */
  static of(hub: Hub): Promise<OcrService> {
    let s = services.get(hub);
    if (!s) {
      s = (async () => {
        const keys = await readFile(join(await ocrAssetsDir(), OCR_FILES.keys), 'utf8');
        const svc = new OcrService(hub, characterList(keys));
        await svc.restore();
        return svc;
      })();
      services.set(hub, s);
      s.catch(() => services.delete(hub));
    }
    return s;
  }

  /**
   * Rebuilds the runs recorded in the store (the newest {@link OCR_RUNS_KEPT}). On a store shared
   * by several hubs, only the runs whose owner's lease is gone, taken over by this hub: the others
   * are carried on by their owners.
   */
  private async restore(): Promise<void> {
    if (this.hub.shared) return this.takeOver();
    const anchors: { anchor: JobRecord; jobs: JobRecord[]; p: StageOptions }[] = [];
    for (const jobs of (await this.stageJobs()).values()) {
      const anchor = jobs.find((j) => Array.isArray(stageOptions(j)?.pages));
      if (anchor) anchors.push({ anchor, jobs, p: stageOptions(anchor) as StageOptions });
    }
    anchors.sort((a, b) => a.anchor.createdAt - b.anchor.createdAt);
    for (const { anchor, jobs, p } of anchors.slice(-OCR_RUNS_KEPT)) await this.rebuild(anchor, jobs, p);
  }

  /** Items of the runs' stage jobs the result cache answered, until their commit is handled. */
  private readonly fromCache = new Set<number>();

  /** Whether the result cache answered this item (asked once, when its result is handled). */
  answered(itemId: number): boolean {
    return this.fromCache.delete(itemId);
  }

  watch(jobId: string, run: OcrRun, stage: Stage): void {
    this.byJob.set(jobId, { run, stage });
  }

  unwatch(jobId: string): void {
    this.byJob.delete(jobId);
  }

  /** Starts an OCR run on these pages (PNG or JPEG bytes). */
  async submit(
    pages: readonly { name: string; bytes: Uint8Array }[],
    opts: OcrOptions = {},
  ): Promise<OcrRunView> {
    if (pages.length === 0) throw new HubError('invalid_request', 'an OCR run needs at least one image', 400);
    for (const m of Object.values(MODELS)) {
      if (!this.hub.models.byName(m))
        throw new HubError('unknown_model', `the hub has no model "${m}" (npm install)`, 409);
    }
    const id = `ocr_${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
    const run = new OcrRun(
      this,
      id,
      pages.map((p) => p.name),
      opts,
      Date.now(),
    );
    await run.start(pages);
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

  /**
   * A run's view, with its pages' results when `withResults`: from memory on the run's owner,
   * from the store's record on any other hub (several hubs), or for a run no longer kept here.
   */
  async view(id: string, withResults = false): Promise<OcrRunView> {
    const run = this.runs.get(id);
    if (run) return run.view(withResults);
    const stored = await this.storedView(id, withResults);
    if (!stored) throw new HubError('unknown_run', `no OCR run "${clean(id, 80)}"`, 404);
    return stored;
  }

  /**
   * Resolves with the run's results once every page has its outcome; rejects (an `AbortError`)
   * once `signal` aborts (the client went away). A run owned elsewhere is read again from the
   * store every {@link STORE_POLL_MS}; one this hub takes over or drops meanwhile is followed.
   */
  async wait(id: string, signal?: AbortSignal): Promise<OcrRunView> {
    for (;;) {
      const run = this.runs.get(id);
      if (run) {
        if (run.finishedAt !== null) return run.view(true);
        // Whichever comes first; the other listener is removed with `settled`.
        const settled = new AbortController();
        const both = signal ? AbortSignal.any([signal, settled.signal]) : settled.signal;
        try {
          await Promise.race([once(run, 'done', { signal: both }), once(run, 'dropped', { signal: both })]);
        } finally {
          settled.abort();
        }
        continue;
      }
      const stored = await this.storedView(id, true);
      if (!stored) throw new HubError('unknown_run', `no OCR run "${clean(id, 80)}"`, 404);
      if (stored.state === 'completed') return stored;
      await sleep(STORE_POLL_MS, undefined, { signal });
    }
  }

  /**
   * A run as its record in the store says at this moment: the owner record, the anchor job's
   * pages, the `ocr_page` events (the first of each page wins, as in `OcrRun.restore`) and the
   * `ocr_stage` events. What a hub that does not own the run answers; read afresh at every call,
   * so it shows the owner's progress as its outcomes are written.
   */
  private async storedView(id: string, withResults: boolean): Promise<OcrRunView | undefined> {
    const { hub } = this;
    const rec = await hub.pipelineRun(id);
    const anchor = rec && (await hub.jobs.get(rec.anchor));
    const p = anchor && stageOptions(anchor);
    if (!rec || !anchor || !p || !Array.isArray(p.pages)) return undefined;
    const results: (OcrPageResult | undefined)[] = p.pages.map(() => undefined);
    let last = 0;
    for (const ev of (await hub.jobs.events(anchor.id, { type: PAGE_EVENT })).reverse()) {
      const { page, result } = ev.data as { page: number; result: OcrPageResult };
      if (!Number.isInteger(page) || page < 0 || page >= results.length || results[page]) continue;
      results[page] = result;
      last = Math.max(last, ev.at);
    }
    const jobs: Partial<Record<Stage, string>> = { det: anchor.id };
    for (const ev of (await hub.jobs.events(anchor.id, { type: STAGE_EVENT })).reverse()) {
      const { stage, job } = ev.data as { stage: Stage; job: string };
      if (STAGES.includes(stage) && typeof job === 'string') jobs[stage] = job;
    }
    const pagesDone = results.filter(Boolean).length;
    const done = pagesDone === results.length;
    return {
      id: rec.id,
      state: done ? 'completed' : 'running',
      pages: results.length,
      pagesDone,
      jobs,
      ...(hub.shared ? { owner: rec.ownerHub } : {}),
      createdAt: p.createdAt ?? anchor.createdAt,
      finishedAt: done ? last : null,
      ...(withResults
        ? { results: results.map((r, i) => r ?? pendingPage((p.pages as string[])[i] as string)) }
        : {}),
    };
  }
}
