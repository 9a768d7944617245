/**
 * A native node's process runs with V8 flags that Node takes only on its command line: not in
 * NODE_OPTIONS, and not at run time (`v8.setFlagsFromString('--single-threaded-gc')` aborts the
 * process in its next collection). So `shardhub node` started without them (the `shardhub` command,
 * `npm run shardhub -- node`, `node --import tsx native/main.ts`) runs itself once more, as a child
 * that has them (and the malloc settings below), and waits for it.
 *
 * - `--single-threaded-gc`: V8 collects in the node's own threads instead of helper threads that
 *   take cores from onnxruntime, whose session threads already fill every core. A node's heap is
 *   small (about 10 MB), but the megabyte tensor buffers its sockets allocate bring a full
 *   collection every 100-300 ms, and those helper threads' work comes out of every item's time.
 * - `--no-incremental-marking`: each of those collections marks the heap in one go (a pause of a
 *   few milliseconds, nothing to a node) instead of in a hundred and more steps between tasks,
 *   each of which costs the main thread its own bookkeeping.
 *
 * The child also gets two glibc malloc settings (environment variables, read when the process
 * starts; values already set are kept):
 *
 * - `MALLOC_MMAP_THRESHOLD_=32 MB`: a buffer of up to 32 MB (an item's tensors, a shard message)
 *   comes from malloc's heap, not a fresh `mmap` whose pages fault in one by one on first touch and
 *   are unmapped again when it is freed. Setting it also stops glibc from moving it by itself.
 * - `MALLOC_TRIM_THRESHOLD_=128 MB`: malloc keeps up to 128 MB of freed heap instead of handing it
 *   back to the kernel at once; the next megabyte buffers reuse it. Each collection frees tens of
 *   megabytes of socket buffers together, which would otherwise go back to the kernel and fault in
 *   again, page by page, in the main thread that packs results and reads sockets.
 *
 * The child is in a process group of its own, so a terminal's Ctrl-C reaches only this parent,
 * which passes it on once (the node drains on the first, quits on a second one a second later; the
 * copies npm makes of one Ctrl-C are not passed on). SIGTERM and SIGHUP are passed on the same way. If the parent dies without passing anything on (SIGKILL), the child
 * sees its IPC channel close and drains.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';

/** The V8 flags a native node runs with; see the file comment. */
export const NODE_V8_FLAGS: readonly string[] = ['--single-threaded-gc', '--no-incremental-marking'];

/** The malloc settings a native node runs with; see the file comment. */
export const NODE_MALLOC_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: String(32 * 1024 * 1024),
  MALLOC_TRIM_THRESHOLD_: String(128 * 1024 * 1024),
};

/** `env` with {@link NODE_MALLOC_ENV} added (values `env` already has are kept). */
export function nodeEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...NODE_MALLOC_ENV, ...env };
}

/** Whether `env` has every variable of {@link NODE_MALLOC_ENV} (to any value). */
export function hasMallocEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return hasVars(env, NODE_MALLOC_ENV);
}

/** Whether `env` has every variable of `vars` (to any value). */
function hasVars(env: NodeJS.ProcessEnv, vars: Readonly<Record<string, string>>): boolean {
  return Object.keys(vars).every((k) => env[k] !== undefined);
}

/** Signals within this long of the one before are echoes of it (see {@link relaunchWithFlags}). */
export const ECHO_MS = 1000;

/** Set in the child's environment: it was started by {@link relaunchWithFlags}. */
const CHILD_ENV = 'SHARDHUB_RELAUNCHED';

/** What a command runs itself again with: Node flags, and environment variables it lacks. */
export interface Relaunch {
  /** The command, for messages (`node`, `serve`). */
  command: string;
  flags: readonly string[];
  env: Readonly<Record<string, string>>;
}

/** A native node's: {@link NODE_V8_FLAGS} and {@link NODE_MALLOC_ENV}. */
export const NODE_RELAUNCH: Relaunch = { command: 'node', flags: NODE_V8_FLAGS, env: NODE_MALLOC_ENV };

/**
 * Whether this process was started as `how` runs: with every one of its flags, and every variable
 * of its environment set (to any value). A native node's ({@link NODE_RELAUNCH}) by default.
 */
export function startedAs(
  how: Relaunch = NODE_RELAUNCH,
  execArgv: readonly string[] = process.execArgv,
  env: NodeJS.ProcessEnv = process.env,
): boolean {
  return how.flags.every((f) => execArgv.includes(f)) && hasVars(env, how.env);
}

/**
 * Runs this process's command line again in a child with the flags and environment of `how` (by
 * default a native node's), passing signals on; resolves with the child's exit code (128 + the
 * signal's number if a signal ended it). `shardhub serve` runs itself again the same way, with the
 * hub's flags (`server/node-flags.ts`).
 */
export function relaunchWithFlags(how: Relaunch = NODE_RELAUNCH): Promise<number> {
  const flags = how.flags.filter((f) => !process.execArgv.includes(f));
  const child = spawn(process.execPath, [...process.execArgv, ...flags, ...process.argv.slice(1)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    detached: true,
    env: { ...how.env, ...process.env, [CHILD_ENV]: '1' },
  });
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  // One Ctrl-C can arrive more than once: from the terminal to the whole foreground process group
  // (npm, its shell, this process) and again from npm, which passes it on to its script. A signal
  // that follows the one before within a second is such an echo and is not passed on: the child
  // would take it for a second Ctrl-C and quit instead of draining.
  let last = { signal: '', at: 0 };
  const forward = (signal: NodeJS.Signals) => {
    const now = Date.now();
    if (now - last.at < ECHO_MS) return;
    last = { signal, at: now };
    child.kill(signal);
  };
  for (const s of signals) process.on(s, forward);
  // Under `npm run`, a parent that died without passing anything on (a shell that npm sent SIGTERM
  // to does not pass it to its own child) leaves this process with another parent: that is a
  // SIGTERM too. Not otherwise: `nohup shardhub node &` outlives the shell that started it.
  const ppid = process.ppid;
  const underNpm = process.env.npm_lifecycle_event !== undefined;
  const orphaned = setInterval(() => {
    if (!underNpm || process.ppid === ppid) return;
    clearInterval(orphaned);
    forward('SIGTERM');
  }, 500);
  orphaned.unref();
  return new Promise((resolve) => {
    const done = (code: number) => {
      clearInterval(orphaned);
      for (const s of signals) process.off(s, forward);
      resolve(code);
    };
    child.once('error', (err) => {
      process.stderr.write(`shardhub ${how.command}: cannot start its process: ${err.message}\n`);
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
