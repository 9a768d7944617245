/**
 * The onnxruntime-node backend: `cuda` where the CUDA execution provider is installed and starts,
 * else `cpu`, with the reason recorded either way (it is registered with the hub and shown to
 * operators). The CPU provider ships with the npm package; CUDA is added on a GPU server with
 * `ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node`.
 *
 * Each runner gets its own session, in its own worker thread (see `ort-threaded.ts`);
 * `intraOpNumThreads = max(1, floor(cores / concurrency))` so N sessions share the machine's cores
 * instead of each claiming all of them.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { errorMessage, type Backend, type LoadedModel } from '../worker/backend.ts';
import { OrtSession, sessionOptions } from './ort-session.ts';
import { ThreadedSession } from './ort-threaded.ts';
import { Stager } from './staging.ts';

const require = createRequire(import.meta.url);

/** Which provider to use: `auto` tries CUDA and falls back to CPU. */
export type OrtPreference = 'auto' | 'cpu' | 'cuda';

/** Options of {@link OrtBackend.create}. */
export interface OrtBackendOptions {
  prefer?: OrtPreference;
  /** Sessions that will run at once (one per runner); divides the cores between them. */
  concurrency?: number;
  /** Cores to divide (default: `os.availableParallelism()`). */
  cores?: number;
  /** GPU already detected by the caller; detected here when omitted. */
  gpu?: GpuInfo | null;
  /**
   * Run each session in its own worker thread (default true): onnxruntime-node computes on the
   * calling thread, so in-thread sessions block the event loop and take turns. See `ort-threaded.ts`.
   */
  threads?: boolean;
}

/** An NVIDIA GPU as `nvidia-smi` reports it. */
export interface GpuInfo {
  name: string;
  memoryTotalBytes: number;
  memoryUsedBytes: number;
}

const MIB = 1024 * 1024;

/**
 * Asks `nvidia-smi` for the first GPU's name and memory. Resolves undefined (silently) when there
 * is no `nvidia-smi`, no GPU, or the output cannot be read.
 */
export function detectNvidiaGpu(timeoutMs = 3000): Promise<GpuInfo | undefined> {
  return new Promise((resolve) => {
    execFile(
      'nvidia-smi',
      ['--query-gpu=name,memory.total,memory.used', '--format=csv,noheader,nounits'],
      { timeout: timeoutMs, windowsHide: true },
      (err, stdout) => {
        if (err) return resolve(undefined);
        resolve(parseNvidiaSmi(stdout)[0]);
      },
    );
  });
}

/** Parses `nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader,nounits` (MiB). */
export function parseNvidiaSmi(stdout: string): GpuInfo[] {
  const gpus: GpuInfo[] = [];
  for (const line of stdout.split(/\r?\n/)) {
    const parts = line.split(',').map((s) => s.trim());
    if (parts.length < 3) continue;
    const used = Number(parts.pop());
    const total = Number(parts.pop());
    const name = parts.join(',');
    if (!name || !Number.isFinite(total) || !Number.isFinite(used)) continue;
    gpus.push({ name, memoryTotalBytes: total * MIB, memoryUsedBytes: used * MIB });
  }
  return gpus;
}

/** The onnxruntime-node version in use (from its package.json, else `ort.env.versions`). */
export function ortVersion(): string | undefined {
  try {
    return (require('onnxruntime-node/package.json') as { version: string }).version;
  } catch {
    return ort.env.versions.node ?? ort.env.versions.common;
  }
}

/** The directory holding onnxruntime-node's native binding and provider libraries. */
function bindingDir(): string {
  const root = dirname(dirname(require.resolve('onnxruntime-node')));
  return join(root, 'bin', 'napi-v6', process.platform, process.arch);
}

function cudaLibraryName(): string {
  if (process.platform === 'win32') return 'onnxruntime_providers_cuda.dll';
  if (process.platform === 'darwin') return 'libonnxruntime_providers_cuda.dylib';
  return 'libonnxruntime_providers_cuda.so';
}

/**
 * A one-node Identity model: enough to see whether an execution provider starts. onnx-proto is
 * loaded only here, on a machine with the CUDA provider installed: the ONNX schema it brings is
 * about a tenth of a CPU node's heap, which every garbage collection would walk.
 */
async function probeModel(): Promise<Uint8Array> {
  const { onnx } = (await import('onnx-proto')).default;
  const vi = (name: string) => ({
    name,
    type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: { dim: [{ dimValue: 1 }] } } },
  });
  return onnx.ModelProto.encode({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'shardhub-probe',
    graph: {
      name: 'probe',
      node: [{ opType: 'Identity', input: ['x'], output: ['y'] }],
      input: [vi('x')],
      output: [vi('y')],
    },
  }).finish();
}

/**
 * Decides between cuda and cpu. Returns the choice and why, checking cheap facts first (is the
 * provider in this build, is its library installed) so a CPU machine never loads CUDA libraries.
 */
async function chooseProvider(
  prefer: OrtPreference,
  gpu: GpuInfo | undefined,
): Promise<{ name: 'cuda' | 'cpu'; reason: string }> {
  if (prefer === 'cpu') return { name: 'cpu', reason: 'cpu requested' };
  const supported = ort.listSupportedBackends?.() ?? [];
  if (!supported.some((b) => b.name === 'cuda')) {
    return { name: 'cpu', reason: 'this onnxruntime-node build has no CUDA provider; using cpu' };
  }
  if (!existsSync(join(bindingDir(), cudaLibraryName()))) {
    return {
      name: 'cpu',
      reason:
        'CUDA provider not installed (install it with `ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node`); using cpu',
    };
  }
  try {
    const session = await ort.InferenceSession.create(await probeModel(), {
      executionProviders: ['cuda'],
      logSeverityLevel: 3,
    });
    await session.release();
  } catch (err) {
    return {
      name: 'cpu',
      reason: `CUDA provider failed to start (${errorMessage(err).slice(0, 300)}); using cpu`,
    };
  }
  return { name: 'cuda', reason: gpu ? `CUDA provider on ${gpu.name}` : 'CUDA provider started' };
}

/** The onnxruntime-node backend; see the file comment. */
export class OrtBackend implements Backend {
  /** Stages arriving items into batch buffers for the session threads (`staging.ts`). */
  private readonly stager: Stager | undefined;

  private constructor(
    readonly name: 'cuda' | 'cpu',
    readonly reason: string,
    /** Threads each session uses for one operator. */
    readonly intraOpNumThreads: number,
    /** The GPU found by nvidia-smi, if any. */
    readonly gpu: GpuInfo | undefined,
    /** Whether each session runs in its own worker thread. */
    readonly threads: boolean,
  ) {
    this.stager = threads ? new Stager() : undefined;
  }

  /** Chooses the provider (see {@link chooseProvider}) and sizes the thread pools. */
  static async create(opts: OrtBackendOptions = {}): Promise<OrtBackend> {
    const concurrency = opts.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1)
      throw new RangeError('concurrency must be an integer >= 1');
    const cores = opts.cores ?? availableParallelism();
    const prefer = opts.prefer ?? 'auto';
    const gpu = opts.gpu === undefined ? await detectNvidiaGpu() : (opts.gpu ?? undefined);
    const choice =
      prefer === 'cpu'
        ? { name: 'cpu' as const, reason: 'cpu requested' }
        : await chooseProvider(prefer, gpu);
    const intraOp = Math.max(1, Math.floor(cores / concurrency));
    return new OrtBackend(choice.name, choice.reason, intraOp, gpu, opts.threads ?? true);
  }

  /** The session options every session of this backend gets. */
  get sessionOptions(): ort.InferenceSession.SessionOptions {
    return sessionOptions(this.name, this.intraOpNumThreads);
  }

  load(model: ModelInfo, bytes: Uint8Array): Promise<LoadedModel> {
    return this.threads
      ? ThreadedSession.create(model, bytes, this.sessionOptions, this.stager)
      : OrtSession.create(model, bytes, this.sessionOptions);
  }

  stage(model: ModelInfo, inputs: WireTensor[]): WireTensor[] {
    return this.stager ? this.stager.stage(model, inputs) : inputs;
  }

  reserve(model: ModelInfo, inputs: readonly Omit<WireTensor, 'data'>[]): WireTensor[] | undefined {
    return this.stager?.reserve(model, inputs);
  }
}
