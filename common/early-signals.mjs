// Signals that come while a command is still loading its modules and starting, before it has
// handlers of its own. Node's default for SIGINT, SIGTERM and SIGHUP ends the process at once; a
// supervisor that stops a node right after starting it would see it die of the signal instead of
// exiting with its documented code. So a node's process holds these signals first thing, and the
// node takes them over once it can act on them (`native/cli.ts`: no node started yet, exit 0;
// `native/node.ts`: a node started, drain it).
//
// Plain JavaScript, importing nothing: `hold-node-signals.mjs` loads it with `--import` before tsx,
// whose loading of the TypeScript modules takes the first second or more of a node's life. The
// state lives on `globalThis`, so that this file loaded once more through tsx holds the same
// signals. Types: `early-signals.d.mts`.
//
// A child relaunched with flags (`relaunch.ts`) also holds the loss of its parent (its IPC channel
// closing) as a SIGTERM, and tells the parent it holds signals, so that the parent passes signals
// on only from then on: sooner, they would find the child without handlers and end it.

/** The signals held: those that end a process by default and that a node drains on. */
const HELD = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Set in a relaunched child's environment (`relaunch.ts`). */
export const RELAUNCHED_ENV = 'SHARDHUB_RELAUNCHED';
/** What a relaunched child sends its parent once it holds signals. */
export const HOLDING_MESSAGE = 'shardhub:holding-signals';

const KEY = Symbol.for('shardhub.early-signals');
const state = (globalThis[KEY] ??= {
  pending: [],
  holding: false,
  record: (signal) => state.pending.push(signal),
  parentGone: () => state.pending.push('SIGTERM'),
});

/** Starts holding the signals (a no-op while holding): they are recorded, not acted on. */
export function holdSignals() {
  if (state.holding) return;
  state.holding = true;
  for (const s of HELD) process.on(s, state.record);
  if (process.env[RELAUNCHED_ENV] === '1' && process.connected && process.send) {
    process.once('disconnect', state.parentGone);
    process.send(HOLDING_MESSAGE);
  }
}

/** The signals that came since holding began, in order (none when not holding). */
export function heldSignals() {
  return state.pending;
}

/** Stops holding; returns the signals that came meanwhile. Later signals go to other handlers. */
export function releaseSignals() {
  if (state.holding) {
    for (const s of HELD) process.off(s, state.record);
    process.off('disconnect', state.parentGone);
  }
  state.holding = false;
  return state.pending.splice(0);
}
