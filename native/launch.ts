/**
 * A native node's process runs with V8 flags that Node takes only on its command line: not in
 * NODE_OPTIONS, and not at run time (`v8.setFlagsFromString('--single-threaded-gc')` aborts the
 * process in its next collection). So `shardhub node` started without them (the `shardhub` command,
 * `npm run shardhub -- node`, `node --import tsx native/main.ts`) runs itself once more, as a child
 * that has them, and waits for it.
 *
 * - `--single-threaded-gc`: V8 collects in the node's own threads instead of helper threads that
 *   take cores from onnxruntime, whose session threads already fill every core. A node's heap is
 *   small (about 10 MB), but the megabyte tensor buffers its sockets allocate bring a full
 *   collection every 100-300 ms. Overhead bench, hub on a core of its own: the node's CPU per
 *   PaddleOCR item above standalone's went from 2.3-2.8 ms to 1.2-1.8 ms.
 * - `--no-incremental-marking`: each of those collections marks the heap in one go (a pause of a
 *   few milliseconds, nothing to a node) instead of in a hundred and more steps between tasks. The
 *   main thread's CPU per item went from 2.6 to 1.6 ms (same bench, two runs of each).
 *
 * The child is in a process group of its own, so a terminal's Ctrl-C reaches only this parent,
 * which passes it on once (the node drains on the first, quits on the second). SIGTERM and SIGHUP
 * are passed on the same way. If the parent dies without passing anything on (SIGKILL), the child
 * sees its IPC channel close and drains.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';

/** The V8 flags a native node runs with; see the file comment. */
export const NODE_V8_FLAGS: readonly string[] = ['--single-threaded-gc', '--no-incremental-marking'];

/** Set in the child's environment: it was started by {@link relaunchWithFlags}. */
const CHILD_ENV = 'SHARDHUB_NODE_RELAUNCHED';

/** Whether this process was started with every flag of {@link NODE_V8_FLAGS}. */
export function hasNodeFlags(execArgv: readonly string[] = process.execArgv): boolean {
  return NODE_V8_FLAGS.every((f) => execArgv.includes(f));
}

/**
 * Runs this process's command line again in a child with {@link NODE_V8_FLAGS}, passing signals on;
 * resolves with the child's exit code (128 + the signal's number if a signal ended it).
 */
export function relaunchWithFlags(): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, ...NODE_V8_FLAGS, ...process.argv.slice(1)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    detached: true,
    env: { ...process.env, [CHILD_ENV]: '1' },
  });
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  for (const s of signals) process.on(s, forward);
  return new Promise((resolve) => {
    const done = (code: number) => {
      for (const s of signals) process.off(s, forward);
      resolve(code);
    };
    child.once('error', (err) => {
      process.stderr.write(`shardhub node: cannot start the node process: ${err.message}\n`);
      done(1);
    });
    child.once('exit', (code, signal) => done(code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0)));
  });
}

/**
 * In a child started by {@link relaunchWithFlags}: calls `orphaned` once the parent is gone (its IPC
 * channel closed), and keeps the channel from holding the process open.
 */
export function watchParent(orphaned: () => void): void {
  if (process.env[CHILD_ENV] !== '1' || !process.connected) return;
  process.once('disconnect', orphaned);
  process.channel?.unref();
}
