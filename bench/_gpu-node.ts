/**
 * The gpu bench's process for one native backend (`bench/gpu.ts`, driven over `_rpc.ts`): it loads
 * the models on that backend and warms them up (`load`), measures them standalone (`measure`), then
 * becomes the grid's native node (`node`, the real `runNode`), all in one process.
 *
 * Why one process: onnxruntime-node's WebGPU provider keeps its device, and the pipelines it compiled
 * for a model, for as long as one session in the process is alive. On a software adapter the first
 * run of a PaddleOCR session compiles for 15 to 20 s of CPU; the standalone sessions are kept open,
 * so the node's sessions for the same models reuse what they compiled instead of paying again. The
 * standalone measurement runs before the node connects, with nothing else in the process.
 */
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { createLogger } from '../common/logger.ts';
import type { LoadedModel } from '../worker/backend.ts';
import { OrtBackend } from '../native/ort-backend.ts';
import { runNode, type NodeHandle } from '../native/node.ts';
import { readFileSync } from 'node:fs';
import { serve } from './_rpc.ts';

/** What `load` gets: the backend, and each model with its file and the items of one run. */
export interface GpuLoad {
  backend: 'cpu' | 'webgpu' | 'cuda';
  models: { model: ModelInfo; path: string; items: WireTensor[][] }[];
}

/** What `load` answers: the provider that runs, why, and each model's warm-up. */
export interface GpuLoaded {
  backend: string;
  reason: string;
  /** Per model: the outputs of the warm-up run and how long loading and that run took. */
  warm: { model: string; outputs: WireTensor[][]; ms: number }[];
}

/** A standalone measurement: `items` run in `ms`. */
export interface GpuMeasured {
  items: number;
  runs: number;
  ms: number;
}

const sessions = new Map<string, { session: LoadedModel; items: WireTensor[][] }>();
let node: NodeHandle | undefined;

serve(
  {
    /**
     * Loads every model and warms each up (one run of its items), one model after the other: two
     * first runs at once on the WebGPU provider, in two session threads, crashed the process.
     */
    async load(args: GpuLoad): Promise<GpuLoaded> {
      const backend = await OrtBackend.create({ prefer: args.backend });
      const warm: GpuLoaded['warm'] = [];
      for (const { model, path, items } of args.models) {
        const t0 = performance.now();
        const session = await backend.load(model, new Uint8Array(readFileSync(path)));
        const outputs = await session.run(items);
        sessions.set(model.name, { session, items });
        warm.push({ model: model.name, outputs, ms: performance.now() - t0 });
      }
      return { backend: backend.name, reason: backend.reason, warm };
    },

    /**
     * Runs a model's items again and again for `ms` (at least `minRuns` runs, however long they
     * take): a slow backend is measured on the few runs that fit, a fast one on many.
     */
    async measure(args: { model: string; ms: number; minRuns: number }): Promise<GpuMeasured> {
      const s = sessions.get(args.model);
      if (!s) throw new Error(`${args.model} is not loaded`);
      let runs = 0;
      const t0 = performance.now();
      while (runs < args.minRuns || performance.now() - t0 < args.ms) {
        await s.session.run(s.items);
        runs++;
      }
      return { items: runs * s.items.length, runs, ms: performance.now() - t0 };
    },

    /** Starts the native node (its own backend and sessions, as `shardhub node` has). */
    async node(args: {
      hub: string;
      token: string;
      backend: GpuLoad['backend'];
      stateDir: string;
      name: string;
    }): Promise<string> {
      node = await runNode({
        hub: args.hub,
        token: args.token,
        backend: args.backend,
        stateDir: args.stateDir,
        cacheDir: `${args.stateDir}/cache`,
        name: args.name,
        logger: createLogger('node', process.env.SHARDHUB_LOG_LEVEL ?? 'error'),
      });
      return node.workerId;
    },
  },
  async () => {
    await node?.close().catch(() => undefined);
    for (const { session } of sessions.values()) await session.dispose().catch(() => undefined);
  },
);
