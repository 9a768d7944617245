/**
 * V8's collections in a benchmark's child process, as `perf_hooks` reports them: when each started
 * (a wall-clock time, comparable across the processes of one machine), how long it held the main
 * thread, and its kind. The connections bench prints the long ones with `SHARDHUB_BENCH_DEBUG`.
 */
import { PerformanceObserver, constants } from 'node:perf_hooks';

/** One collection: start (ms, wall clock), pause (ms), kind. */
export interface GcPause {
  at: number;
  ms: number;
  kind: string;
}

const KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'scavenge',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'mark-compact',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental marking',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weak callbacks',
};

/** Records this process's collections from now on; `take()` returns those since the last call. */
export function recordGc(): { take: () => GcPause[] } {
  let pauses: GcPause[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind ?? -1;
      pauses.push({
        at: performance.timeOrigin + e.startTime,
        ms: e.duration,
        kind: KINDS[kind] ?? String(kind),
      });
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  return {
    take: () => {
      const out = pauses;
      pauses = [];
      return out;
    },
  };
}
