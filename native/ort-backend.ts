/**
 * The onnxruntime-node backend: `cuda` where the CUDA execution provider is installed and starts,
 * `webgpu` (the bundled Dawn, on Vulkan under Linux) where a real GPU adapter is found, else `cpu`,
 * with the reason recorded either way (it is registered with the hub and shown to operators); see
 * `backend-select.ts`. The CPU and WebGPU providers ship with the npm package; CUDA is added on a
 * GPU server with `npm run install-cuda`.
 *
 * A GPU that keeps failing (its device lost again and again, or no new session on it) is given up
 * when the provider was chosen automatically: the backend falls back to `cpu` for good, every
 * session follows on its next run, and `onChange` tells the node to register again (its speed, and
 * so its weight, changed), as the browser falls back from WebGPU to WASM. A provider the owner forced
 * with `--backend` is kept: its sessions fail instead, and say why.
 *
 * Each runner gets its own session, in its own worker thread (see `ort-threaded.ts`);
 * `intraOpNumThreads = max(1, floor(cores / concurrency))` so N sessions share the machine's cores
 * instead of each claiming all of them.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { type Backend, type LoadedModel } from '../worker/backend.ts';
import {
  checkCuda,
  decideBackend,
  webGpuCheck,
  type BackendPreference,
  type OrtProvider,
  type WebGpuCheck,
} from './backend-select.ts';
import type { AdapterInfo } from './gpu-probe.ts';
import { detectNvidiaGpu, type GpuInfo } from './nvidia-smi.ts';
import { OrtSession, sessionOptions } from './ort-session.ts';
import { ThreadedSession, type SessionHost } from './ort-threaded.ts';
import { Stager } from './staging.ts';

export { detectNvidiaGpu, parseNvidiaSmi, type GpuInfo } from './nvidia-smi.ts';

const require = createRequire(import.meta.url);

/** Which provider to use: `auto` tries CUDA, then a real GPU through WebGPU, then CPU. */
export type OrtPreference = BackendPreference;

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
  /** What WebGPU offers here (tests give their own); probed (`gpu-probe.ts`) when omitted and needed. */
  webgpu?: () => Promise<WebGpuCheck>;
  /** The provider changed for good (a failing GPU given up for `cpu`): register again. */
  onChange?: (backend: OrtBackend) => void;
}

/** The onnxruntime-node version in use (from its package.json, else `ort.env.versions`). */
export function ortVersion(): string | undefined {
  try {
    return (require('onnxruntime-node/package.json') as { version: string }).version;
  } catch {
    return ort.env.versions.node ?? ort.env.versions.common;
  }
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

/** Starts a CUDA session on the probe model (throws when the provider does not start). */
async function startCuda(): Promise<void> {
  const session = await ort.InferenceSession.create(await probeModel(), {
    executionProviders: ['cuda'],
    logSeverityLevel: 3,
  });
  await session.release();
}

/**
 * Probes WebGPU in a child process (`gpu-probe.ts`). With `realOnly` (auto: a software adapter would
 * not be taken anyway), a machine whose PCI bus shows no display controller is answered without
 * starting Dawn, which costs a CPU node's start a second or more.
 */
export async function probeWebGpuCheck(gpu?: GpuInfo, realOnly = false): Promise<WebGpuCheck> {
  const { pciGpus, probeWebGpu } = await import('./gpu-probe.ts');
  if (
    realOnly &&
    !gpu &&
    process.platform === 'linux' &&
    existsSync(PCI_DEVICES) &&
    pciGpus(PCI_DEVICES).length === 0
  )
    return { ok: false, reason: `no GPU on the PCI bus (${PCI_DEVICES} lists no display controller)` };
  return webGpuCheck(await probeWebGpu({ nvidia: gpu ?? null }));
}

const PCI_DEVICES = '/sys/bus/pci/devices';

/** The onnxruntime-node backend; see the file comment. */
export class OrtBackend implements Backend, SessionHost {
  /** Stages arriving items into batch buffers for the session threads (`staging.ts`). */
  private readonly stager: Stager | undefined;
  private provider: OrtProvider;
  private why: string;
  private options: ort.InferenceSession.SessionOptions;
  private failing = false;

  private constructor(
    provider: OrtProvider,
    reason: string,
    /** Threads each session uses for one operator. */
    readonly intraOpNumThreads: number,
    /** The GPU found by nvidia-smi, if any. */
    readonly gpu: GpuInfo | undefined,
    /** Whether each session runs in its own worker thread. */
    readonly threads: boolean,
    /** The WebGPU adapter (with `webgpu`; gone once the GPU is given up). */
    public adapter: AdapterInfo | undefined,
    /** Whether the provider was chosen automatically (so a failing GPU may be given up). */
    private readonly automatic: boolean,
    private readonly onChange: ((backend: OrtBackend) => void) | undefined,
  ) {
    this.stager = threads ? new Stager() : undefined;
    this.provider = provider;
    this.why = reason;
    this.options = sessionOptions(provider, intraOpNumThreads);
  }

  /** The provider in use. */
  get name(): OrtProvider {
    return this.provider;
  }

  /** Why this provider, for people and the hub. */
  get reason(): string {
    return this.why;
  }

  /** Chooses the provider (`backend-select.ts`) and sizes the thread pools. */
  static async create(opts: OrtBackendOptions = {}): Promise<OrtBackend> {
    const concurrency = opts.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1)
      throw new RangeError('concurrency must be an integer >= 1');
    const cores = opts.cores ?? availableParallelism();
    const prefer = opts.prefer ?? 'auto';
    const gpu =
      prefer === 'cpu'
        ? (opts.gpu ?? undefined)
        : opts.gpu === undefined
          ? await detectNvidiaGpu()
          : (opts.gpu ?? undefined);
    const choice = await decideBackend(
      prefer,
      () => checkCuda(ort.listSupportedBackends?.() ?? [], startCuda, gpu?.name),
      opts.webgpu ?? (() => probeWebGpuCheck(gpu, prefer === 'auto')),
    );
    const intraOp = Math.max(1, Math.floor(cores / concurrency));
    return new OrtBackend(
      choice.name,
      choice.reason,
      intraOp,
      gpu,
      opts.threads ?? true,
      choice.adapter,
      prefer === 'auto',
      opts.onChange,
    );
  }

  /** The session options every session of this backend gets now (one object until the provider changes). */
  get sessionOptions(): ort.InferenceSession.SessionOptions {
    return this.options;
  }

  /** A session's GPU failed for good (`why`): falls back to `cpu` if the GPU was chosen automatically. */
  giveUpGpu(why: string): boolean {
    if (this.provider === 'cpu') return true;
    if (!this.automatic) return false;
    this.why = `${this.provider} given up: ${why}; fell back to CPU (was: ${this.why})`;
    this.provider = 'cpu';
    this.adapter = undefined;
    this.options = sessionOptions('cpu', this.intraOpNumThreads);
    queueMicrotask(() => this.onChange?.(this));
    return true;
  }

  /**
   * Fault injection (the GPU fault rig, `gpu-fault.ts`): every run on the GPU from now on fails as a
   * lost device, in every session of this backend (threaded sessions only).
   */
  failGpuRuns(): void {
    this.failing = true;
  }

  /** Whether runs on the GPU fail on purpose ({@link failGpuRuns}). */
  get gpuRunsFail(): boolean {
    return this.failing;
  }

  load(model: ModelInfo, bytes: Uint8Array): Promise<LoadedModel> {
    return this.threads
      ? ThreadedSession.create(model, bytes, this.options, this.stager, this)
      : OrtSession.create(model, bytes, this.options);
  }

  stage(model: ModelInfo, inputs: WireTensor[]): WireTensor[] {
    return this.stager ? this.stager.stage(model, inputs) : inputs;
  }

  reserve(model: ModelInfo, inputs: readonly Omit<WireTensor, 'data'>[]): WireTensor[] | undefined {
    return this.stager?.reserve(model, inputs);
  }
}
