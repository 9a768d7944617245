/**
 * A tab's worker identity: a worker id and a secret, kept in `sessionStorage`, so reloading the tab
 * (or reconnecting after a hub restart) is the same worker to the hub, and closing it ends that
 * worker. Browsers copy `sessionStorage` into a duplicated tab; two tabs presenting one id would
 * fight over it, so a tab asks the others on a `BroadcastChannel` whether its id is taken and
 * takes a fresh one if it is.
 */

/** A worker id and its secret, as sent in the Socket.IO handshake. */
export interface TabIdentity {
  workerId: string;
  workerSecret: string;
}

/** An identity claimed by this tab; `close()` stops answering other tabs. */
export interface ClaimedIdentity {
  readonly identity: TabIdentity;
  /** Replaces the identity (the hub refused the old one) and stores the new one. */
  renew(): TabIdentity;
  close(): void;
}

const KEY = 'shardhub.worker';
const CHANNEL = 'shardhub-identity';
const WORKER_ID = /^[A-Za-z0-9_-]{8,64}$/;

type ChannelMessage = { type: 'who-has'; workerId: string } | { type: 'mine'; workerId: string };

function randomId(bytes: number): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  let s = '';
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** A new random identity (`b-` marks browser workers in the hub's lists). */
export function newIdentity(): TabIdentity {
  return { workerId: `b-${randomId(12)}`, workerSecret: randomId(24) };
}

function read(storage: Storage | undefined): TabIdentity | undefined {
  try {
    const raw = storage?.getItem(KEY);
    if (!raw) return undefined;
    const v = JSON.parse(raw) as Partial<TabIdentity>;
    if (
      typeof v.workerId === 'string' &&
      WORKER_ID.test(v.workerId) &&
      typeof v.workerSecret === 'string' &&
      v.workerSecret.length >= 16
    )
      return { workerId: v.workerId, workerSecret: v.workerSecret };
  } catch {
    // unreadable: replaced below
  }
  return undefined;
}

function write(storage: Storage | undefined, id: TabIdentity): void {
  try {
    storage?.setItem(KEY, JSON.stringify(id));
  } catch {
    // storage full or disabled: the identity then lasts as long as the page
  }
}

/**
 * Claims this tab's identity: the stored one unless another open tab already uses it, else a new
 * one. `waitMs` is how long other tabs get to answer (default 150 ms).
 */
export async function claimIdentity(storage: Storage | undefined, waitMs = 150): Promise<ClaimedIdentity> {
  let identity = read(storage);
  const channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL) : undefined;
  if (identity && channel) {
    const asked = identity.workerId;
    const taken = await new Promise<boolean>((resolve) => {
      const onMessage = (e: MessageEvent<ChannelMessage>) => {
        if (e.data?.type === 'mine' && e.data.workerId === asked) finish(true);
      };
      const timer = setTimeout(() => finish(false), waitMs);
      const finish = (v: boolean) => {
        clearTimeout(timer);
        channel.removeEventListener('message', onMessage);
        resolve(v);
      };
      channel.addEventListener('message', onMessage);
      channel.postMessage({ type: 'who-has', workerId: asked } satisfies ChannelMessage);
    });
    if (taken) identity = undefined;
  }
  if (!identity) {
    identity = newIdentity();
    write(storage, identity);
  }
  let current = identity;
  channel?.addEventListener('message', (e: MessageEvent<ChannelMessage>) => {
    if (e.data?.type === 'who-has' && e.data.workerId === current.workerId)
      channel.postMessage({ type: 'mine', workerId: current.workerId } satisfies ChannelMessage);
  });
  return {
    get identity() {
      return current;
    },
    renew() {
      current = newIdentity();
      write(storage, current);
      return current;
    },
    close() {
      channel?.close();
    },
  };
}
