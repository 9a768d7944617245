/**
 * A command that needs Node flags it can only get on its command line (`shardhub node`'s V8
 * flags, `native/launch.ts`; `shardhub serve`'s, `server/node-flags.ts`) runs itself once more, as a
 * child that has them, and waits for it.
 *
 * The child is in a process group of its own, so a terminal's Ctrl-C reaches only this parent,
 * which passes it on once (the node drains on the first, quits on a second one a second later; the
 * copies npm makes of one Ctrl-C are not passed on). SIGTERM and SIGHUP are passed on the same way. If the parent dies without passing anything on (SIGKILL), the child
 * sees its IPC channel close and drains.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { HOLDING_MESSAGE, RELAUNCHED_ENV } from './early-signals.mjs';

/** Whether `env` has every variable of `vars` (to any value). */
export function hasVars(env: NodeJS.ProcessEnv, vars: Readonly<Record<string, string>>): boolean {
  return Object.keys(vars).every((k) => env[k] !== undefined);
}

/** Signals within this long of the one before are echoes of it (see {@link relaunchWithFlags}). */
export const ECHO_MS = 1000;

/** Set in the child's environment: it was started by {@link relaunchWithFlags}. */
const CHILD_ENV = RELAUNCHED_ENV;

/** What a command runs itself again with: Node flags, and environment variables it lacks. */
export interface Relaunch {
  /** The command, for messages (`node`, `serve`). */
  command: string;
  flags: readonly string[];
  env: Readonly<Record<string, string>>;
  /**
   * The child holds signals from its start (`early-signals.ts`) and says so: until it does, the
   * parent keeps the first signal and passes it on then, instead of ending a child that has no
   * handlers yet.
   */
  holdsSignals?: boolean;
}

/**
 * Whether this process was started as `how` runs: with every one of its flags, and every variable
 * of its environment set (to any value).
 */
export function startedAs(
  how: Relaunch,
  execArgv: readonly string[] = process.execArgv,
  env: NodeJS.ProcessEnv = process.env,
): boolean {
  return how.flags.every((f) => execArgv.includes(f)) && hasVars(env, how.env);
}

/**
 * Runs this process's command line again in a child with the flags and environment of `how`,
 * passing signals on; resolves with the child's exit code (128 + the
 * signal's number if a signal ended it). `shardhub serve` runs itself again the same way, with the
 * hub's flags (`server/node-flags.ts`).
 */
export function relaunchWithFlags(how: Relaunch): Promise<number> {
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
  let ready = !how.holdsSignals;
  let kept: NodeJS.Signals | undefined;
  const forward = (signal: NodeJS.Signals) => {
    const now = Date.now();
    if (now - last.at < ECHO_MS) return;
    last = { signal, at: now };
    if (ready) child.kill(signal);
    else kept ??= signal;
  };
  if (!ready)
    child.on('message', (m) => {
      if (m !== HOLDING_MESSAGE || ready) return;
      ready = true;
      if (kept) child.kill(kept);
    });
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
