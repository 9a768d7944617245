/**
 * What the hub's parts share: its options, the events it emits, its errors and the id of its own
 * reference backend. Kept apart from `hub.ts` so the parts import it without importing the front.
 */
import type { EventEmitter } from 'node:events';
import type { ItemFailure, ItemResult, ItemsDoneReply } from '../../protocol/events.ts';
import type { ModelInfo } from '../../protocol/model.ts';
import type { FairnessTracker } from '../scheduler/fairness.ts';
import { DEFAULT_SCHEDULER_OPTIONS, type SchedulerOptions } from '../scheduler/scheduler.ts';
import type { JobRecord, NewResult } from '../store/store.ts';
import { DEFAULT_TRUST_OPTIONS, type TrustOptions } from '../trust.ts';

/** The worker id results computed by the hub's own reference backend are stored under. */
export const REFERENCE_WORKER = 'hub-reference';

/** Hub timing and policy knobs. */
export interface HubOptions {
  /** Check the model and compute canaries on the hub before a job starts. */
  preflight: boolean;
  trust: TrustOptions;
  heartbeatMs: number;
  offlineAfterMs: number;
  benchmarkTimeoutMs: number;
  maxAttempts: number;
  scheduler: Partial<SchedulerOptions>;
  /**
   * Offline workers kept in memory (for `GET /api/workers` and a quick reconnect); the oldest are
   * forgotten past this. Anonymous identities cost nothing to make: what they leave must be bounded.
   */
  maxOfflineWorkers: number;
  /**
   * The hub's lease on the store (ms): renewed every third of it; with several hubs, one that has
   * not renewed for this long is reaped by the others and fenced.
   */
  leaseMs: number;
  /**
   * Entries the result cache keeps (items of jobs with `cache` on are answered from results stored
   * for the same model and input bytes); the least recently used go past this. 0 turns it off.
   */
  resultCacheEntries: number;
}

export const DEFAULT_HUB_OPTIONS: HubOptions = {
  preflight: true,
  trust: DEFAULT_TRUST_OPTIONS,
  heartbeatMs: 2000,
  offlineAfterMs: 6000,
  benchmarkTimeoutMs: 120_000,
  maxAttempts: DEFAULT_SCHEDULER_OPTIONS.maxAttempts,
  scheduler: {},
  maxOfflineWorkers: 1000,
  leaseMs: 10_000,
  resultCacheEntries: 1_000_000,
};

/** Events the hub emits for observers (operator namespace, CLI progress, tests). */
export interface HubEvents {
  'job:updated': [jobId: string];
  'job:completed': [jobId: string];
  'worker:updated': [workerId: string];
  'items:requeued': [info: { workerId: string; jobId: string; items: number; reason: string; at: number }];
  /** Results of these items were stored (pipelines build the next stage's items from them). */
  'items:committed': [jobId: string, itemIds: number[]];
  /** These items were answered from the result cache (emitted before their `items:committed`). */
  'items:cached': [jobId: string, itemIds: number[]];
  /** This hub lost its lease: what it owned (chunks, pipeline runs) may be another hub's now. */
  'lease:lost': [];
  /**
   * Several hubs: this hub made work claimable (a job sealed, items appended to a running job,
   * chunks given back, results taken back from a quarantined worker); the other hubs are told
   * (`app.ts`), so that hubs whose claim passes wait (`hub/claims.ts`) claim it at once.
   */
  'chunks:claimable': [];
  /**
   * Several hubs: a hub's lease ended, its chunks are free and its pipeline runs are to be taken
   * over. `local`: this hub reaped it (or registered again, leaving its old lease's runs), and the
   * other hubs are told; otherwise another hub said so.
   */
  'hubs:gone': [local: boolean];
}

/** The hub's emitter, as its parts see it: they emit, observers subscribe on the hub. */
export type HubEmitter = EventEmitter<HubEvents>;

/** Error with a stable code for API replies. */
export class HubError extends Error {
  override name = 'HubError';
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/**
 * A results message whose results were stored, but whose handling after the commit (freeing its
 * items, refilling, cancelling copies) failed. Its worker is told to send them again: the resend is
 * dropped as done, and its handling frees what the failed one did not.
 */
export class StoredResultsError extends Error {
  override name = 'StoredResultsError';
  constructor(override readonly cause: unknown) {
    super('results stored, but handling them after the commit failed', { cause });
  }
}

/** A sealed job the hub is running: its row as last read, its model and its fairness figures. */
export interface ActiveJob {
  record: JobRecord;
  model: ModelInfo;
  fairness: FairnessTracker;
}

/** A results message checked and judged, waiting for its commit (see `ResultsCommit`). */
export interface JudgedResults {
  workerId: string;
  results: ItemResult[];
  /** Accepted results to store. */
  rows: NewResult[];
  /** How each stored result was verified, if it was. */
  how: Map<number, string>;
  refused: ItemsDoneReply['refused'];
  /** Results that break the model's contract: recorded as failed attempts. */
  invalid: ItemFailure[];
  /** After the commit: the items whose results were stored. */
  accepted: number[];
  /** After the commit: the items another result was stored for first (dropped as done). */
  alreadyDone: number[];
  /** Items this worker does not hold. */
  notMine: number[];
  /** Items whose result waits for replicas elsewhere. */
  replicated: number[];
  /** Results checked, per job (the fairness report's work done). */
  worked: Map<string, number>;
  resolve: (reply: ItemsDoneReply) => void;
  reject: (err: unknown) => void;
}
