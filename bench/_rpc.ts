/**
 * Request/reply between a benchmark and the child processes it runs (the hub in its own process,
 * processes hosting many workers), over Node's IPC channel with the `advanced` serialization (typed
 * arrays and Maps cross intact). Benchmarks keep the hub in a process of its own so that
 * `process.cpuUsage()` there is the hub's CPU and nothing else.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';

interface Request {
  rpc: number;
  method: string;
  args: unknown;
}

type Reply = { rpc: number; ok: true; value: unknown } | { rpc: number; ok: false; error: string };

/** A child process answering calls; see {@link serve} for the child's side. */
export class RpcChild {
  private nextId = 0;
  private readonly pending = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
  /** Resolves with the exit code (or signal) once the child has exited. */
  readonly exited: Promise<number | string | null>;

  private constructor(readonly child: ChildProcess) {
    child.on('message', (msg: Reply) => {
      const p = this.pending.get(msg.rpc);
      if (!p) return;
      this.pending.delete(msg.rpc);
      if (msg.ok) p.ok(msg.value);
      else p.fail(new Error(msg.error));
    });
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        for (const p of this.pending.values()) p.fail(new Error(`child exited (${code ?? signal})`));
        this.pending.clear();
        resolve(code ?? signal);
      }),
    );
  }

  /** Forks `entry` (a .ts file run through tsx) with extra node flags (e.g. `--cpu-prof`). */
  static start(entry: string, opts: { nodeArgs?: string[]; env?: NodeJS.ProcessEnv } = {}): RpcChild {
    const child = fork(entry, [], {
      execArgv: ['--import', 'tsx', ...(opts.nodeArgs ?? [])],
      serialization: 'advanced',
      // Hub and worker logs (pino, on stdout) are shown with SHARDHUB_BENCH_DEBUG set.
      stdio: ['ignore', process.env.SHARDHUB_BENCH_DEBUG ? 'inherit' : 'ignore', 'inherit', 'ipc'],
      env: { ...process.env, SHARDHUB_LOG_LEVEL: process.env.SHARDHUB_LOG_LEVEL ?? 'error', ...opts.env },
    });
    return new RpcChild(child);
  }

  /** The child's pid. */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Calls `method` in the child and waits for its reply. */
  call<T>(method: string, args: unknown = {}): Promise<T> {
    const rpc = ++this.nextId;
    return new Promise<T>((ok, fail) => {
      this.pending.set(rpc, { ok: ok as (v: unknown) => void, fail });
      this.child.send({ rpc, method, args } satisfies Request);
    });
  }

  /** Asks the child to exit (its `exit` handler), else kills it after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      await this.call('exit').catch(() => undefined);
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Handlers a child serves; `exit` is added: it runs `onExit` and ends the process. */
export type Handlers = Record<string, (args: never) => unknown>;

/** Sends a command to an inspector session and waits for its answer. */
function inspect(session: Session, method: string, params: object = {}): Promise<unknown> {
  return new Promise((ok, fail) => session.post(method, params, (err, res) => (err ? fail(err) : ok(res))));
}

/**
 * Profiling any child on demand: V8's sampling profiler on the main thread through the inspector,
 * so only the window a benchmark measures is recorded (`--cpu-prof` records the whole life).
 */
function profilerHandlers(): Handlers {
  let session: Session | undefined;
  return {
    async profStart() {
      session = new Session();
      session.connect();
      await inspect(session, 'Profiler.enable');
      await inspect(session, 'Profiler.setSamplingInterval', { interval: 100 });
      await inspect(session, 'Profiler.start');
    },
    /** Samples allocations (what the garbage collector will have to clean up) until `heapStop`. */
    async heapStart() {
      session = new Session();
      session.connect();
      await inspect(session, 'HeapProfiler.enable');
      await inspect(session, 'HeapProfiler.startSampling', {
        samplingInterval: 4096,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
    },
    /** Writes a `.heapprofile` (Chrome DevTools' memory panel). */
    async heapStop(args: { file: string }) {
      if (!session) return null;
      const res = (await inspect(session, 'HeapProfiler.stopSampling')) as { profile: unknown };
      session.disconnect();
      session = undefined;
      writeFileSync(args.file, JSON.stringify(res.profile));
      return args.file;
    },
    /** Writes a `.cpuprofile` (Chrome DevTools, speedscope). */
    async profStop(args: { file: string }) {
      if (!session) return null;
      const res = (await inspect(session, 'Profiler.stop')) as { profile: unknown };
      session.disconnect();
      session = undefined;
      writeFileSync(args.file, JSON.stringify(res.profile));
      return args.file;
    },
  };
}

/**
 * The child's side: answers calls with `handlers` (plus `profStart`/`profStop`) until asked to exit
 * or the parent goes away.
 */
export function serve(own: Handlers, onExit: () => Promise<void> | void = () => undefined): void {
  const handlers: Handlers = { ...profilerHandlers(), ...own };
  const send = (r: Reply) => process.send?.(r);
  const exit = async () => {
    await onExit();
    // Let the reply to `exit` leave before the process ends.
    setTimeout(() => process.exit(0), 20);
  };
  process.on('message', (msg: Request) => {
    if (msg.method === 'exit') {
      send({ rpc: msg.rpc, ok: true, value: null });
      void exit();
      return;
    }
    const fn = handlers[msg.method];
    if (!fn) {
      send({ rpc: msg.rpc, ok: false, error: `no method ${msg.method}` });
      return;
    }
    Promise.resolve()
      .then(() => fn(msg.args as never))
      .then(
        (value) => send({ rpc: msg.rpc, ok: true, value }),
        (err: unknown) => send({ rpc: msg.rpc, ok: false, error: (err as Error)?.stack ?? String(err) }),
      );
  });
  // The benchmark died: don't linger.
  process.on('disconnect', () => void exit());
}
