/**
 * Judging a result before it is accepted: against the canary answer when the item is a canary,
 * else, when the result needs a second opinion (job redundancy, an unproven worker, a spot check),
 * by collecting replicas from distinct workers until a quorum agrees within the model's tolerance.
 */
import type { ModelInfo } from '../protocol/model.ts';
import { unpackTensors } from '../protocol/pack.ts';
import { compareTensors, type Tolerance, type WireTensor } from '../protocol/tensor.ts';
import { UNPROVEN_QUORUM } from './store/async-store.ts';
import type { Replica, TrustStore } from './store/trust-store.ts';

/**
 * What the verifier reads and writes (the hub's `TrustCache`, or a `TrustStore`). `addReplica`
 * keeps one replica per item and worker: a worker's later replica replaces its earlier one.
 */
export type VerifierStore = Pick<
  TrustStore,
  | 'replicaItemIds'
  | 'replicasOf'
  | 'canaryIds'
  | 'addCanaries'
  | 'canaryAnswer'
  | 'addReplica'
  | 'dropReplicas'
>;
import type { TrustBook } from './trust.ts';

/** What to do with a result. */
export type Verdict =
  /** Store `outputs` as the item's result; `confirm` earned trust, `refute` lost it. */
  | {
      kind: 'accept';
      workerId: string;
      outputs: Uint8Array;
      /**
       * How: `canary`, or `quorum-K` / `spot-K` (K workers agreed; `spot` when the item was
       * replicated as a proven worker's spot check; `-unproven` after it when none of them was
       * proven), or null (accepted on its worker's record).
       */
      verified: string | null;
      confirm: string[];
      refute: string[];
    }
  /** Kept as a replica; the item must run again on a worker not in `avoid`. */
  | { kind: 'replicate'; avoid: string[] }
  /** Refused (a wrong canary): the worker is refuted; the item runs again elsewhere. */
  | { kind: 'refuse'; reason: string }
  /** No worker can confirm it soon: the hub's reference backend decides, as for `fail`. */
  | { kind: 'reference'; reason: string; replicas: Replica[] }
  /**
   * No quorum can be reached among the workers: the hub's reference backend decides, and the
   * replicas are judged against its answer.
   */
  | { kind: 'fail'; reason: string; replicas: Replica[] };

/** Says why two output sets differ, or undefined when they agree within the tolerance. */
export function outputsDiffer(
  a: readonly WireTensor[],
  b: readonly WireTensor[],
  tol: Tolerance,
): string | undefined {
  if (a.length !== b.length) return `${a.length} outputs vs ${b.length}`;
  for (const x of a) {
    const y = b.find((t) => t.name === x.name);
    if (!y) return `output "${x.name}" missing`;
    const d = compareTensors(x, y, tol);
    if (d) return `output "${x.name}": ${d}`;
  }
  return undefined;
}

/** Groups replicas whose outputs agree (each group compared with its first member), largest first. */
export function agreeingGroups(replicas: readonly Replica[], tol: Tolerance): Replica[][] {
  const groups: { head: WireTensor[]; members: Replica[] }[] = [];
  for (const r of replicas) {
    const outs = unpackTensors(r.outputs);
    const g = groups.find((x) => outputsDiffer(outs, x.head, tol) === undefined);
    if (g) g.members.push(r);
    else groups.push({ head: outs, members: [r] });
  }
  return groups.map((g) => g.members).sort((a, b) => b.length - a.length);
}

export class Verifier {
  /** Canary item ids (the answers stay in the store) and items with replicas waiting. */
  private readonly canaries = new Set<number>();
  /**
   * Items with replicas waiting, oldest first, with when the first was stored and the job (unknown
   * for those found in the store after a restart).
   */
  private readonly waiting = new Map<number, { at: number; jobId: string }>();
  /** Per worker: its results stored as replicas and not decided yet. */
  private readonly pending = new Map<string, number>();
  /** Items replicated as a proven worker's spot check (not its probation). */
  private readonly spots = new Set<number>();

  constructor(
    private readonly store: VerifierStore,
    private readonly trust: TrustBook,
  ) {
    const now = Date.now();
    for (const id of store.replicaItemIds()) {
      this.waiting.set(id, { at: now, jobId: '' });
      for (const r of store.replicasOf(id)) this.bump(r.workerId, 1);
    }
  }

  private bump(workerId: string, d: number): void {
    const n = (this.pending.get(workerId) ?? 0) + d;
    if (n > 0) this.pending.set(workerId, n);
    else this.pending.delete(workerId);
  }

  /** A worker's results waiting for a second opinion. */
  pendingChecks(workerId: string): number {
    return this.pending.get(workerId) ?? 0;
  }

  /** Loads a job's canary ids (at activation; after a restart too). */
  watchJob(jobId: string): void {
    for (const id of this.store.canaryIds(jobId)) this.canaries.add(id);
  }

  /** Stores a job's canary answers. */
  addCanaries(jobId: string, rows: { itemId: number; outputs: Uint8Array }[]): void {
    this.store.addCanaries(jobId, rows);
    for (const r of rows) this.canaries.add(r.itemId);
  }

  isCanary(itemId: number): boolean {
    return this.canaries.has(itemId);
  }

  /**
   * Judges one result. `canAsk(avoid)` says whether an eligible worker outside `avoid` that has
   * benchmarked the model is online; `canAsk(avoid, true)` also counts one benchmarking it now, so
   * a replica can be asked for and waits for it; when none is, a lone result of a job without
   * explicit redundancy is accepted unverified rather than left waiting.
   */
  judge(args: {
    workerId: string;
    kind: 'browser' | 'native';
    backend: string;
    /** The item's job (for the stale-replica watchdog, `stale`). */
    jobId?: string;
    itemId: number;
    redundancy: number;
    model: ModelInfo;
    outputs: WireTensor[];
    packed: Uint8Array;
    ms: number;
    canAsk: (avoid: string[], soon?: boolean) => boolean;
    /** Ids of online workers on a backend other than this one (for like-with-like tie-breakers). */
    otherBackends?: (backend: string) => string[];
  }): Verdict {
    const { workerId, itemId, model } = args;
    const canary = this.canaries.has(itemId) ? this.store.canaryAnswer(itemId) : undefined;
    if (canary) {
      const diff = outputsDiffer(args.outputs, unpackTensors(canary), model.tolerance);
      if (diff) return { kind: 'refuse', reason: `wrong answer to a check item (${diff})` };
      return {
        kind: 'accept',
        workerId,
        outputs: args.packed,
        verified: 'canary',
        confirm: [workerId],
        refute: [],
      };
    }
    const stored = this.waiting.has(itemId) ? this.store.replicasOf(itemId) : [];
    // A worker given the item again (a re-run) answers once: its new replica replaces its old one.
    // A worker quarantined since it answered has no vote: its answer waits on, counted for nothing.
    const earlier = stored.filter((r) => r.workerId !== workerId && !this.trust.isQuarantined(r.workerId));
    const again = stored.some((r) => r.workerId === workerId);
    // (A worker whose earlier answer waits for a check answers again into that check.)
    if (stored.length === 0 && !this.trust.needsReplica(workerId, args.kind, args.redundancy)) {
      return { kind: 'accept', workerId, outputs: args.packed, verified: null, confirm: [], refute: [] };
    }
    const mine: Replica = {
      itemId,
      workerId,
      backend: args.backend,
      outputs: args.packed,
      ms: args.ms,
      at: Date.now(),
    };
    this.store.addReplica(mine);
    if (earlier.length === 0 && this.trust.isProven(workerId, args.kind)) this.spots.add(itemId);
    if (!this.waiting.has(itemId)) this.waiting.set(itemId, { at: mine.at, jobId: args.jobId ?? '' });
    if (!again) this.bump(workerId, 1);
    const all = [...earlier, mine];
    const required = Math.max(2, args.redundancy);
    const quorum = Math.floor(required / 2) + 1;
    const groups = agreeingGroups(all, model.tolerance);
    const best = groups[0] ?? [];
    const avoid = all.map((r) => r.workerId);
    // Colluding or identically broken workers agree with each other: a group of workers none of
    // whom is proven needs one member more than the quorum, when another worker can be asked (a
    // small grid of new workers must still be able to agree, or nothing would ever be accepted).
    const avoidAll = all.map((r) => r.workerId);
    const provenMember = best.some((r) => this.trust.isProven(r.workerId, 'browser'));
    const needed = provenMember || !args.canAsk(avoidAll) ? quorum : quorum + 1;
    if (best.length >= needed) {
      const spot = this.spots.has(itemId);
      this.drop(itemId);
      const winner = best[0] as Replica;
      return {
        kind: 'accept',
        workerId: winner.workerId,
        outputs: winner.outputs,
        verified: `${spot ? 'spot' : 'quorum'}-${best.length}${provenMember ? '' : UNPROVEN_QUORUM}`,
        confirm: best.map((r) => r.workerId),
        // The model's tolerance is what separates backends' honest answers (see `ModelManifest`):
        // a dissenter beyond it has erred, whatever its backend. Blaming only dissenters on the
        // majority's backend let a liar on a minority backend go unjudged.
        refute: groups
          .slice(1)
          .flat()
          .map((r) => r.workerId),
      };
    }
    // Up to two tie-breakers beyond the replicas asked for: when the disagreeing results come from
    // different backends, from the first result's backend if such a worker is there (like with like).
    if (all.length < required + 3) {
      const backends = new Set(all.map((r) => r.backend));
      if (backends.size > 1 && args.otherBackends) {
        const like = [...avoid, ...args.otherBackends((all[0] as Replica).backend)];
        if (args.canAsk(like, true)) return { kind: 'replicate', avoid: like };
      }
      if (args.canAsk(avoid, true)) return { kind: 'replicate', avoid };
    }
    if (all.length === 1 && args.redundancy <= 1) {
      // No other worker can confirm it: rather than accept it unverified, or leave it waiting.
      this.drop(itemId);
      return { kind: 'reference', reason: 'no other worker can confirm it', replicas: all };
    }
    this.drop(itemId);
    return {
      kind: 'fail',
      reason: `no ${quorum} of ${all.length} results agree within the model's tolerance`,
      replicas: all,
    };
  }

  /**
   * Items whose replicas have waited `ms` or more for a confirmer (oldest first, at most `max`),
   * with their job. Their replicas stay until `take`.
   */
  stale(now: number, ms: number, max = 1024): { itemId: number; jobId: string }[] {
    const out: { itemId: number; jobId: string }[] = [];
    for (const [itemId, w] of this.waiting) {
      if (now - w.at < ms || out.length >= max) break;
      if (w.jobId) out.push({ itemId, jobId: w.jobId });
    }
    return out;
  }

  /**
   * Replicas another hub stored for items this hub now runs, left waiting for a confirmer (it died,
   * or gave their chunk back): they wait here as if judged here, so the next answer is checked
   * against them. Replicas known here already are skipped.
   */
  adopt(jobId: string, replicas: readonly Replica[]): void {
    const now = Date.now();
    for (const r of replicas) {
      if (this.store.replicasOf(r.itemId).some((x) => x.workerId === r.workerId)) continue;
      this.store.addReplica(r);
      this.bump(r.workerId, 1);
      if (!this.waiting.has(r.itemId)) this.waiting.set(r.itemId, { at: now, jobId });
    }
  }

  /** Whether an item has replicas waiting for a confirmer. */
  isWaiting(itemId: number): boolean {
    return this.waiting.has(itemId);
  }

  /** Takes an item's waiting replicas out of the verifier (the reference backend decides it). */
  take(itemId: number): Replica[] {
    const replicas = this.store.replicasOf(itemId);
    this.drop(itemId);
    return replicas;
  }

  private drop(itemId: number): void {
    this.waiting.delete(itemId);
    this.spots.delete(itemId);
    for (const r of this.store.replicasOf(itemId)) this.bump(r.workerId, -1);
    this.store.dropReplicas(itemId);
  }
}
