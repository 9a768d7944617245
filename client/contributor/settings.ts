/**
 * The contributor page's settings: what the URL asks for (`?autostart=1`, `?backend=wasm`...) and
 * what the contributor chose last time (auto-pause, throttle), kept in `localStorage`.
 */
import type { BackendChoice } from '../browser/gpu.ts';

/** What the page's URL asks for. */
export interface PageParams {
  /** Start without waiting for the button (kiosks, tests). */
  autostart: boolean;
  backend: BackendChoice;
  /** WASM threads, when given. */
  threads?: number;
  /** Contributor token for hubs that need one. */
  token?: string;
  /** Worker name shown to operators. */
  name?: string;
  /** Mirror the page's log to the console. */
  log: boolean;
  /** Expose `window.shardhub` for tests (device loss, figures). */
  debug: boolean;
}

/** Reads the page's URL parameters; unknown or malformed values fall back to defaults. */
export function readParams(search: string): PageParams {
  const q = new URLSearchParams(search);
  const flag = (k: string) => ['1', 'true', 'yes'].includes((q.get(k) ?? '').toLowerCase());
  const b = q.get('backend');
  const threads = Number(q.get('threads'));
  const token = q.get('token') ?? undefined;
  const name = q.get('name') ?? undefined;
  return {
    autostart: flag('autostart'),
    backend: b === 'webgpu' || b === 'wasm' ? b : 'auto',
    ...(Number.isInteger(threads) && threads >= 1 && threads <= 64 ? { threads } : {}),
    ...(token ? { token: token.slice(0, 256) } : {}),
    ...(name ? { name: name.slice(0, 128) } : {}),
    log: flag('log'),
    debug: flag('debug'),
  };
}

/** The contributor's own choices, remembered across visits. */
export interface Preferences {
  /** Pause while the tab is hidden (default true). */
  autoPause: boolean;
  /** Share of time the worker may compute, 0.05..1 (default 1). */
  throttle: number;
}

const KEY = 'shardhub.preferences';
const DEFAULTS: Preferences = { autoPause: true, throttle: 1 };

/** Loads preferences (defaults where missing or unreadable). */
export function loadPreferences(storage: Storage | undefined): Preferences {
  try {
    const v = JSON.parse(storage?.getItem(KEY) ?? '{}') as Partial<Preferences>;
    return {
      autoPause: typeof v.autoPause === 'boolean' ? v.autoPause : DEFAULTS.autoPause,
      throttle:
        typeof v.throttle === 'number' && v.throttle >= 0.05 && v.throttle <= 1
          ? v.throttle
          : DEFAULTS.throttle,
    };
  } catch {
    return { ...DEFAULTS };
  }
}

/** Saves preferences (silently skipped where storage is unavailable). */
export function savePreferences(storage: Storage | undefined, p: Preferences): void {
  try {
    storage?.setItem(KEY, JSON.stringify(p));
  } catch {
    // private mode or full: the choice lasts for this page only
  }
}
