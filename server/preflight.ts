/**
 * Pre-flight before a job starts, on the hub's trusted backend (onnxruntime-node, CPU, in a worker
 * thread so the hub's event loop keeps serving): the model must load, a sample of the job's items
 * must run and give outputs that fit the model, and those items' answers become the job's canaries.
 * A failed check is a clear error for the submitter, never a stuck job.
 */
import { IdRuns } from './scheduler/id-runs.ts';
import { readFile } from 'node:fs/promises';
import type { ModelInfo } from '../protocol/model.ts';
import { packTensors, unpackTensors } from '../protocol/pack.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { outputProblem } from './check.ts';
import { prepareInputs, runStep, type StageModel } from '../pipeline/stages.ts';

/** Why a job cannot start. */
export class PreflightError extends Error {
  override name = 'PreflightError';
}

/** How many canaries a job of `items` items gets. */
export function canaryCount(items: number, opts: { fraction: number; min: number; max: number }): number {
  if (items < 10) return 0; // a tiny job's canaries would be most of it
  return Math.max(opts.min, Math.min(opts.max, Math.round(items * opts.fraction)));
}

/** Picks `n` distinct item ids at random. */
export function pickCanaries(
  itemIds: readonly number[] | IdRuns,
  n: number,
  random: () => number = Math.random,
): number[] {
  const size = itemIds instanceof IdRuns ? itemIds.size : itemIds.length;
  const nth = (k: number) => (itemIds instanceof IdRuns ? itemIds.at(k) : (itemIds[k] as number));
  // A partial Fisher-Yates shuffle over positions, with only the swapped ones remembered: the same
  // picks as shuffling a copy, without copying a million-item job's ids to pick twenty.
  const swapped = new Map<number, number>();
  const at = (k: number) => swapped.get(k) ?? nth(k);
  const out: number[] = [];
  for (let len = size; out.length < n && len > 0; len--) {
    const i = Math.floor(random() * len);
    out.push(at(i));
    swapped.set(i, at(len - 1));
  }
  return out;
}

interface Runner {
  run(items: WireTensor[][]): Promise<WireTensor[][]>;
  dispose(): Promise<void>;
}

/** Loads models on the hub's trusted backend, a few kept warm. */
export class ReferenceRunner {
  private readonly sessions = new Map<string, Promise<Runner>>();
  private queue: Promise<unknown> = Promise.resolve();
  private waiting = 0;

  // 3: a pipeline's stages (OCR: detection, direction, recognition) stay warm together.
  constructor(private readonly keep = 3) {}

  private session(model: ModelInfo, path: string): Promise<Runner> {
    let s = this.sessions.get(model.sha256);
    if (!s) {
      s = (async () => {
        const { ThreadedSession } = await import('../native/ort-threaded.ts');
        const { sessionOptions } = await import('../native/ort-session.ts');
        const bytes = new Uint8Array(await readFile(path));
        return ThreadedSession.create(model, bytes, sessionOptions('cpu', 1));
      })();
      this.sessions.set(model.sha256, s);
      s.catch(() => this.sessions.delete(model.sha256));
      while (this.sessions.size > this.keep) {
        const [oldest, p] = this.sessions.entries().next().value as [string, Promise<Runner>];
        this.sessions.delete(oldest);
        void p.then((r) => r.dispose()).catch(() => undefined);
      }
    }
    return s;
  }

  /**
   * Checks a job: the model loads, and each sample item runs and fits the model's outputs.
   * Returns the sample's answers as tensor packs (the canaries).
   */
  async check(
    model: ModelInfo,
    path: string,
    samples: Map<number, Uint8Array>,
  ): Promise<{ itemId: number; outputs: Uint8Array }[]> {
    let runner: Runner;
    try {
      runner = await this.session(model, path);
    } catch (err) {
      throw new PreflightError(
        `model "${model.name}" does not load on the hub's reference backend: ${(err as Error).message}`,
      );
    }
    const out: { itemId: number; outputs: Uint8Array }[] = [];
    for (const [itemId, pack] of samples) {
      let outputs: WireTensor[];
      try {
        // A pipeline stage's step, before and after its model, as workers run it.
        const inputs = unpackTensors(pack);
        [outputs = []] = await runner.run([prepareInputs(model as StageModel, inputs)]);
        outputs = runStep(model as StageModel, outputs, inputs);
      } catch (err) {
        throw new PreflightError(
          `item ${itemId} does not run on model "${model.name}": ${(err as Error).message}`,
        );
      }
      const problem = outputProblem(model, outputs);
      if (problem)
        throw new PreflightError(
          `model "${model.name}" gives outputs its manifest does not describe: ${problem}`,
        );
      out.push({ itemId, outputs: packTensors(outputs) });
    }
    return out;
  }

  /**
   * Runs one item on the hub's reference backend (an item that workers failed without enough
   * evidence, or whose replicas could not agree; a probation result no worker can confirm soon).
   * Returns its outputs as a tensor pack; throws with the reason when it does not run or its outputs
   * break the manifest. Runs go one at a time: the hub's own CPU is the scarcest there is.
   */
  run(model: ModelInfo, path: string, pack: Uint8Array): Promise<Uint8Array> {
    const next = this.queue.then(async () => {
      const runner = await this.session(model, path);
      // A pipeline stage's step, before and after its model, as workers run it.
      const inputs = unpackTensors(pack);
      const [raw = []] = await runner.run([prepareInputs(model as StageModel, inputs)]);
      const outputs = runStep(model as StageModel, raw, inputs);
      const problem = outputProblem(model, outputs);
      if (problem) throw new Error(`outputs break the manifest: ${problem}`);
      return packTensors(outputs);
    });
    this.queue = next.catch(() => undefined);
    this.waiting++;
    void next.finally(() => this.waiting--).catch(() => undefined);
    return next;
  }

  /** Reference runs asked for and not finished. */
  get pending(): number {
    return this.waiting;
  }

  async close(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map((p) => p.then((r) => r.dispose()).catch(() => undefined)));
  }
}
