/**
 * A native node's process runs with V8 flags that Node takes only on its command line: not in
 * NODE_OPTIONS, and not at run time (`v8.setFlagsFromString('--single-threaded-gc')` aborts the
 * process in its next collection). So `shardhub node` started without them (the `shardhub` command,
 * `npm run shardhub -- node`, `node --import tsx native/main.ts`) runs itself once more, as a child
 * that has them (and the malloc settings below), and waits for it (`common/relaunch.ts`).
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
 */
import { hasVars, type Relaunch } from '../common/relaunch.ts';

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

/** A native node's: {@link NODE_V8_FLAGS} and {@link NODE_MALLOC_ENV}. */
export const NODE_RELAUNCH: Relaunch = {
  command: 'node',
  flags: NODE_V8_FLAGS,
  env: NODE_MALLOC_ENV,
  holdsSignals: true,
};
