/**
 * Live workers: who is connected, in what state, with what load. The durable part (identity,
 * capabilities, lifetime counters) lives in the store; this is the in-memory view the scheduler,
 * the REST API and the dashboard read.
 */
import type { Capabilities, Heartbeat, RegisterRequest } from '../protocol/events.ts';
import type { FilterableWorker } from './scheduler/filter.ts';

export const WORKER_STATES = ['online', 'offline', 'paused', 'draining', 'quarantined'] as const;
export type WorkerState = (typeof WORKER_STATES)[number];

/** A worker the hub knows in this process's life. */
export interface LiveWorker extends FilterableWorker {
  id: string;
  name: string;
  kind: 'browser' | 'native';
  backend: RegisterRequest['backend'];
  concurrency: number;
  capabilities: Capabilities;
  state: WorkerState;
  /** Socket.IO socket id while connected. */
  socketId: string | null;
  address: string;
  connectedAt: number;
  lastSeen: number;
  load: Heartbeat['load'] | null;
  queued: number;
  running: number;
  itemsDone: number;
  itemsFailed: number;
  reconnects: number;
}

/** Builds the filterable view of a register request. */
export function workerFacts(req: RegisterRequest): FilterableWorker {
  return {
    kind: req.kind,
    backend: req.backend,
    pool: req.pool ?? null,
    cores: req.capabilities.cores,
    gpuMemoryBytes: req.capabilities.gpu?.memoryBytes ?? null,
  };
}

/** The public JSON of a worker (no socket ids, no secrets). */
export function workerJson(w: LiveWorker, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: w.id,
    name: w.name,
    kind: w.kind,
    backend: w.backend,
    pool: w.pool,
    concurrency: w.concurrency,
    cores: w.cores,
    gpuMemoryBytes: w.gpuMemoryBytes,
    capabilities: w.capabilities,
    state: w.state,
    online: w.state !== 'offline',
    connectedAt: w.connectedAt,
    lastSeen: w.lastSeen,
    load: w.load,
    queued: w.queued,
    running: w.running,
    itemsDone: w.itemsDone,
    itemsFailed: w.itemsFailed,
    reconnects: w.reconnects,
    ...extra,
  };
}
