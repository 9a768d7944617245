/**
 * The node's status line (`native/status.ts`) in a real terminal: `shardhub node` runs under a
 * pseudo-terminal (`script` from util-linux), busy with a job, and is stopped with a Ctrl-C typed
 * into that terminal. What the terminal received shows the line drawn, redrawn in place (carriage
 * return and erase-line), and cleared before each log line and drawn again after it. With its
 * output piped instead, the node writes log lines and no status line.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { killProcessesWith, ROOT, Rest, startHub, tempDir, waitFor } from '../helpers/grid.ts';

/** Erase the line the cursor is on, from its start: what the status line is redrawn with. */
const ERASE = '\r\x1b[2K';
/** The status line's text (`statusText`): `[state] · N items done · ...`. */
const STATUS = /\[(connecting|idle|working|draining|paused)\] · (\d+) items done/;
// eslint-disable-next-line no-control-regex
const plain = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '');

/** `shardhub node` with the sim backend, as a user starts it (it runs itself again with its flags). */
function nodeArgs(hub: HubServer, dir: string, name: string): string[] {
  return [
    ...['--import', 'tsx', join(ROOT, 'server/cli.ts'), 'node'],
    ...['--hub', hub.url, '--token', hub.tokens.joinToken, '--backend', 'sim', '--item-ms', '20'],
    ...['--state', join(dir, name), '--cache', join(dir, name, 'cache'), '--name', name],
  ];
}

/** The environment of a user's shell: human logs at info, no format forced. */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, SHARDHUB_LOG_LEVEL: 'info' };
  delete env.SHARDHUB_LOG_FORMAT;
  delete env.SHARDHUB_STATUS_LINE;
  return env;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe("the node's status line in a terminal", { timeout: 180_000 }, () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;
  const children: number[] = [];

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
  });
  after(async () => {
    for (const pid of children) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    killProcessesWith(tmp.dir); // the node under script, in a session of its own
    await hub.close();
    tmp.cleanup();
  });

  /** A job of noop items (the sim backend's answers are right for it): some seconds of work at 20 ms each. */
  async function job(n: number): Promise<string> {
    const model = hub.hub.models.byName('noop');
    assert.ok(model, 'noop is built');
    return rest.submit(
      'noop',
      Array.from({ length: n }, (_, i) => ({ name: `t${i}`, tensors: calibrationInputs(model, i + 1) })),
    );
  }

  const workerOf = (name: string) => [...hub.hub.workers.values()].find((w) => w.name === name);

  test('under a terminal: drawn, redrawn in place, cleared around log lines; Ctrl-C drains', async () => {
    await job(600);
    const cmd = [process.execPath, ...nodeArgs(hub, tmp.dir, 'tty-node')].map(quote).join(' ');
    // script gives the command a pseudo-terminal; what is typed on its stdin goes to that terminal.
    const term = spawn('script', ['-qfec', cmd, '/dev/null'], {
      cwd: ROOT,
      env: { ...userEnv(), COLUMNS: '200', LINES: '40' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.push(term.pid as number);
    let screen = '';
    term.stdout.on('data', (d: Buffer) => (screen += d.toString()));
    term.stderr.on('data', (d: Buffer) => (screen += d.toString()));
    const exited = new Promise<number | null>((ok) => term.once('exit', (code) => ok(code)));

    // Busy for a few redraws (one a second), then Ctrl-C typed into the terminal.
    await waitFor('the node working', () => (workerOf('tty-node')?.itemsDone ?? 0) > 0, 90_000);
    await waitFor(
      'three redraws while working',
      () =>
        plain(screen)
          .split(ERASE)
          .filter((s) => /^\[working\]/.test(s)).length >= 3,
      30_000,
    );
    term.stdin.write('\x03');
    const code = await Promise.race([
      exited,
      new Promise<'hung'>((ok) => setTimeout(() => ok('hung'), 60_000)),
    ]);
    assert.notEqual(code, 'hung', `the node did not exit after Ctrl-C:\n${plain(screen).slice(-2000)}`);
    const out = plain(screen);

    // Drawn: the line's text is on the terminal.
    assert.match(out, STATUS, out.slice(-2000));
    // Redrawn in place: each new text follows an erase of the line, on the same row (no newline
    // between two states of the line), and the count goes up.
    const draws = out
      .split(ERASE)
      .map((s) => STATUS.exec(s))
      .filter((m): m is RegExpExecArray => m !== null && m.index === 0);
    assert.ok(draws.length >= 3, `redrawn at least three times:\n${JSON.stringify(out.slice(-1500))}`);
    const counts = draws.map((m) => Number(m[2]));
    assert.ok(counts.at(-1)! > counts[0]!, `the count goes up in place: ${counts.join(', ')}`);
    for (const m of draws) assert.doesNotMatch(m.input.slice(0, m[0].length), /\n/);

    // Cleared around log lines: once the line is up, every log line starts with an erase of it (on
    // its row, so the log line takes that row), and the line is drawn again below the log line.
    const firstDraw = out.indexOf(draws[0]![0]);
    const logLine = /\[\d\d:\d\d:\d\d\.\d{3}\] (INFO|WARN|ERROR)/g;
    logLine.lastIndex = firstDraw;
    let logged = 0;
    for (let m = logLine.exec(out); m; m = logLine.exec(out)) {
      logged++;
      assert.equal(
        out.slice(m.index - ERASE.length, m.index),
        ERASE,
        `the status line is erased before a log line: ${JSON.stringify(out.slice(m.index - 200, m.index + 80))}`,
      );
    }
    assert.ok(logged >= 1, `log lines while the status line is up:\n${out.slice(-2000)}`);
    const at = out.indexOf('draining: unstarted items go back');
    assert.ok(at > firstDraw, `the drain is logged below the status line:\n${out.slice(-2000)}`);
    assert.match(out.slice(at), /^[^\n]*\n\r?\[\w+\] · \d+ items done/, 'drawn again below the log line');
    // The node's last act on the terminal is to erase the line: the shell's prompt gets a clean row.
    assert.ok(
      out.trimEnd().endsWith(ERASE),
      `the line is erased at exit: ${JSON.stringify(out.slice(-200))}`,
    );
    assert.ok(code === 0 || code === 130, `script exits with the node: ${code}`);
  });

  test('with stdout piped: log lines only, no status line and no terminal sequences', async () => {
    await job(200);
    const node = spawn(process.execPath, nodeArgs(hub, tmp.dir, 'piped-node'), {
      cwd: ROOT,
      env: userEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    children.push(node.pid as number);
    let out = '';
    node.stdout.on('data', (d: Buffer) => (out += d.toString()));
    node.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((ok) => node.once('exit', (code) => ok(code)));
    await waitFor('the node working', () => (workerOf('piped-node')?.itemsDone ?? 0) > 0, 90_000);
    // Longer than a redraw would take.
    await new Promise((ok) => setTimeout(ok, 2500));
    process.kill(-(node.pid as number), 'SIGINT');
    assert.equal(await exited, 0, out.slice(-2000));
    assert.match(out, /"msg":"registered"/, 'log lines are written (JSON when piped)');
    assert.doesNotMatch(out, STATUS);
    assert.ok(!out.includes('\x1b['), 'no terminal sequences');
  });
});
