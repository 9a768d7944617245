/**
 * The `/operator` Socket.IO namespace: live updates for the dashboard and the CLI. Operators
 * authenticate with the operator token in the handshake; updates are coalesced per job and worker
 * and sent at most a few times a second.
 */
import type { Namespace } from 'socket.io';
import type { FairnessReport } from '../protocol/fairness.ts';
import { tokenMatches } from './auth.ts';
import type { Hub } from './hub.ts';
import { jobJson } from './job-view.ts';
import { workerJson } from './workers.ts';

/** Events the hub sends to operators. */
export interface OperatorEvents {
  'job:updated': (job: Record<string, unknown>) => void;
  'worker:updated': (worker: Record<string, unknown>) => void;
  'job:fairness': (report: FairnessReport) => void;
}

/** Wires the operator namespace; returns a function that stops its timer. */
export function attachOperatorNamespace(
  nsp: Namespace,
  hub: Hub,
  operatorToken: string,
  everyMs = 250,
): () => void {
  nsp.use((socket, next) => {
    const token = (socket.handshake.auth as { token?: unknown } | undefined)?.token;
    if (!tokenMatches(token, operatorToken)) return next(new Error('unauthorized: operator token required'));
    next();
  });
  const jobs = new Set<string>();
  const workers = new Set<string>();
  hub.on('job:updated', (id) => jobs.add(id));
  hub.on('worker:updated', (id) => workers.add(id));
  const timer = setInterval(() => {
    for (const id of jobs) {
      const job = hub.store.getJob(id);
      if (!job) continue;
      nsp.emit('job:updated', jobJson(hub, job));
      const fairness = hub.fairnessOf(id, job.state === 'completed' || job.state === 'cancelled');
      if (fairness) nsp.emit('job:fairness', fairness);
    }
    for (const id of workers) {
      const w = hub.workers.get(id);
      if (w) nsp.emit('worker:updated', workerJson(w));
    }
    jobs.clear();
    workers.clear();
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
