/**
 * The `/worker` Socket.IO namespace: authenticates workers, validates every payload against its
 * schema, and hands clean requests to the Hub. A bad payload gets an error ack (or is dropped with
 * a logged reason when it has no ack); it never reaches the hub's logic and never throws.
 */
import { DATA_CHANNEL_PATH } from '../protocol/data-channel.ts';
import type { Namespace } from 'socket.io';
import type { z } from 'zod';
import type {
  Ack,
  ErrorBody,
  HubToWorkerEvents,
  InterHubEvents,
  ItemResult,
  WorkerToHubEvents,
} from '../protocol/events.ts';
import { PROTOCOL_VERSION } from '../protocol/events.ts';
import { ErrorCode, refusal } from '../protocol/errors.ts';
import { unpackResults } from '../protocol/results-pack.ts';
import {
  HeartbeatSchema,
  ItemsDoneSchema,
  ItemsFailedSchema,
  ItemsReleaseSchema,
  RegisterRequestSchema,
  WorkerAuthSchema,
  describeZodError,
} from '../protocol/schemas.ts';
import { hashSecret, tokenMatches } from './auth.ts';
import { type Hub, StoredResultsError } from './hub.ts';
import { clean } from './logger.ts';
import { RateLimiter } from './rate-limit.ts';

/** Per-socket data kept by Socket.IO. */
export interface WorkerSocketData {
  workerId: string;
  registered: boolean;
}

/**
 * The `/worker` namespace, typed with the protocol's event maps. The handlers below take each
 * payload as `unknown` all the same (a listener of `unknown` fits any event's type): the types say
 * what a worker should send, the schemas check what it did.
 */
export type WorkerNamespace = Namespace<
  WorkerToHubEvents,
  HubToWorkerEvents,
  InterHubEvents,
  WorkerSocketData
>;

export interface GatewayOptions {
  joinToken: string;
  /** When set, browsers must present it too; otherwise they are anonymous. */
  contributorToken?: string;
  /** Connections per minute per address without the join token (anonymous browsers). Default 60. */
  anonymousConnectsPerMinute?: number;
  /** Messages per second per socket (burst 4x). Default 500. */
  messagesPerSecond?: number;
}

/** Wires the worker namespace to the hub. */
export function attachWorkerGateway(nsp: WorkerNamespace, hub: Hub, opts: GatewayOptions): void {
  const perMinute = opts.anonymousConnectsPerMinute ?? 60;
  const connects = new RateLimiter(perMinute / 60, perMinute);
  const mps = opts.messagesPerSecond ?? 500;
  const messages = new RateLimiter(mps, mps * 4);
  let lastFloodLog = 0;
  let floodDropped = 0;
  const logs = new RateLimiter(20, 100);
  nsp.use((socket, next) => {
    const token = (socket.handshake.auth as { token?: unknown } | undefined)?.token;
    if (!tokenMatches(token, opts.joinToken) && !connects.take(socket.handshake.address)) {
      return next(refusal(ErrorCode.RateLimited, 'too many connections from this address; retry later'));
    }
    const auth = WorkerAuthSchema.safeParse(socket.handshake.auth);
    if (!auth.success) return next(refusal(ErrorCode.BadHandshake, describeZodError(auth.error)));
    const version = auth.data.protocol ?? PROTOCOL_VERSION;
    if (version !== PROTOCOL_VERSION)
      return next(
        refusal(
          ErrorCode.Version,
          `this hub speaks protocol ${PROTOCOL_VERSION}, the worker ${version}: run the same shardhub version on both`,
        ),
      );
    const { workerId, workerSecret } = auth.data;
    hub.storedWorker(workerId).then(
      (known) => {
        if (known && known.secretHash !== hashSecret(workerSecret)) {
          hub.log.warn(
            { workerId, address: socket.handshake.address },
            'worker id presented with the wrong secret',
          );
          return next(refusal(ErrorCode.IdentityTaken, 'this worker id belongs to another worker'));
        }
        socket.data = { workerId, registered: false };
        next();
      },
      (err: unknown) => {
        hub.log.error({ err, workerId }, 'reading a worker from the store failed');
        next(refusal(ErrorCode.Internal, 'the hub could not check this worker; retry later'));
      },
    );
  });

  nsp.on('connection', (socket) => {
    const auth = WorkerAuthSchema.parse(socket.handshake.auth);
    const workerId = auth.workerId;
    const address = socket.handshake.address;
    const fail = (ack: unknown, code: ErrorCode, message: string): void => {
      // Every refusal is logged, up to a rate: a hostile client must not flood the log either.
      if (logs.take('refused'))
        hub.log.warn({ workerId, code, message: clean(message) }, 'worker request refused');
      if (typeof ack === 'function') (ack as Ack<never>)({ error: { code, message } satisfies ErrorBody });
    };
    const parse = <T>(schema: z.ZodType<T>, payload: unknown, ack: unknown): T | undefined => {
      const r = schema.safeParse(payload);
      if (r.success) return r.data;
      fail(ack, ErrorCode.InvalidPayload, describeZodError(r.error));
      return undefined;
    };
    const guard = (event: string, ack: unknown): boolean => {
      if (!socket.data.registered) {
        fail(ack, ErrorCode.NotRegistered, `${event} before worker:register`);
        return false;
      }
      hub.touch(workerId);
      return true;
    };
    const safely = (event: string, ack: unknown, fn: () => void | Promise<void>): void => {
      if (!messages.take(socket.id)) {
        // A flood: drop, answer if asked, and log at most once a second for the whole namespace.
        if (typeof ack === 'function')
          (ack as Ack<never>)({
            error: { code: ErrorCode.RateLimited, message: 'too many messages; slow down' },
          });
        floodDropped++;
        if (Date.now() - lastFloodLog > 1000) {
          lastFloodLog = Date.now();
          hub.log.warn(
            { workerId, event: clean(event, 60), dropped: floodDropped },
            'messages dropped: rate limit',
          );
          floodDropped = 0;
        }
        return;
      }
      const failed = (err: unknown) => {
        hub.log.error({ workerId, event, err }, 'handler failed');
        fail(ack, ErrorCode.Internal, `the hub could not handle ${event}`);
      };
      try {
        fn()?.catch(failed);
      } catch (err) {
        failed(err);
      }
    };

    socket.on('worker:register', (payload: unknown, ack) =>
      safely('worker:register', ack, async () => {
        if (typeof ack !== 'function') return fail(ack, ErrorCode.NoAck, 'worker:register needs an ack');
        const req = parse(RegisterRequestSchema, payload, ack);
        if (!req) return;
        const needsJoin = req.kind === 'native';
        if (needsJoin && !tokenMatches(auth.token, opts.joinToken)) {
          fail(ack, ErrorCode.Unauthorized, 'native nodes need the hub join token (--token)');
          socket.disconnect(true);
          return;
        }
        if (!needsJoin && opts.contributorToken && !tokenMatches(auth.token, opts.contributorToken)) {
          fail(ack, ErrorCode.Unauthorized, 'this hub needs a contributor link token');
          socket.disconnect(true);
          return;
        }
        const now = Date.now();
        const known = await hub.storedWorker(workerId);
        await hub.rememberWorker({
          id: workerId,
          secretHash: hashSecret(auth.workerSecret),
          kind: req.kind,
          backend: req.backend,
          name: req.name,
          pool: req.pool ?? null,
          concurrency: req.concurrency,
          capabilities: req.capabilities as unknown as Record<string, unknown>,
          firstSeen: known?.firstSeen ?? now,
          lastSeen: now,
          itemsDone: known?.itemsDone ?? 0,
        });
        if (socket.disconnected) return; // gone while the store was written
        socket.data.registered = true;
        hub.registerWorker(socket, workerId, req, address);
        ack({
          data: {
            workerId,
            heartbeatMs: hub.opts.heartbeatMs,
            offlineAfterMs: hub.opts.offlineAfterMs,
            packed: true,
            ...(req.dataChannel && req.kind === 'native'
              ? { dataChannel: { path: DATA_CHANNEL_PATH, ticket: hub.data.issue(workerId, socket.id) } }
              : {}),
          },
        });
      }),
    );

    socket.on('worker:heartbeat', (payload: unknown) =>
      safely('worker:heartbeat', undefined, () => {
        if (!guard('worker:heartbeat', undefined)) return;
        const hb = parse(HeartbeatSchema, payload, undefined);
        if (hb) hub.touch(workerId, hb);
      }),
    );

    socket.on('items:done', (payload: unknown, ack) =>
      safely('items:done', ack, () => {
        if (!guard('items:done', ack)) return;
        const msg = parse(ItemsDoneSchema, payload, ack);
        if (!msg) return;
        let results: ItemResult[] = msg.results;
        if (msg.packed?.length) {
          const unpacked = unpackResults(msg.packed);
          if (typeof unpacked === 'string') return fail(ack, ErrorCode.InvalidPayload, unpacked);
          results = results.length ? [...results, ...unpacked] : unpacked;
        }
        hub.acceptResults(workerId, results).then(
          (reply) => typeof ack === 'function' && ack({ data: reply }),
          (err: unknown) => {
            if (err instanceof StoredResultsError) {
              // Logged by the hub already.
              fail(
                ack,
                ErrorCode.Internal,
                'the hub stored these results but failed after; send them again to have them acknowledged',
              );
              return;
            }
            hub.log.error({ workerId, event: 'items:done', err }, 'handler failed');
            fail(ack, ErrorCode.Internal, 'the hub could not store these results; send them again');
          },
        );
      }),
    );

    socket.on('items:failed', (payload: unknown, ack) =>
      safely('items:failed', ack, async () => {
        if (!guard('items:failed', ack)) return;
        const msg = parse(ItemsFailedSchema, payload, ack);
        if (!msg) return;
        const reply = await hub.recordFailures(workerId, msg.failures);
        if (typeof ack === 'function') ack({ data: reply });
      }),
    );

    socket.on('items:release', (payload: unknown, ack) =>
      safely('items:release', ack, () => {
        if (!guard('items:release', ack)) return;
        const msg = parse(ItemsReleaseSchema, payload, ack);
        if (!msg) return;
        const released = hub.releaseItems(workerId, msg.itemIds);
        if (typeof ack === 'function') ack({ data: { released } });
      }),
    );

    const handled = new Set([
      'worker:register',
      'worker:heartbeat',
      'items:done',
      'items:failed',
      'items:release',
    ]);
    socket.onAny((event: unknown, ...args: unknown[]) => {
      if (!handled.has(String(event)) && messages.take(socket.id))
        fail(args.at(-1), ErrorCode.UnknownEvent, `unknown event "${clean(event, 60)}"`);
    });

    hub.writes.adopt(socket.conn);

    // Socket.IO's own ping/pong counts as a sign of life too: a hidden browser tab's timers (and
    // so its heartbeats) are throttled to about once a minute, but it still answers pings.
    socket.conn.on('heartbeat', () => {
      if (socket.data.registered) hub.touch(workerId);
    });

    socket.on('disconnect', (reason) => {
      messages.forget(socket.id);
      if (socket.data.registered) hub.workerGone(workerId, `disconnected: ${reason}`, socket.id);
    });
  });
}
