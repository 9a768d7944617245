/**
 * Where the operator token is kept: `sessionStorage`, so it lives as long as the tab and is never
 * written to disk by the page or sent anywhere but this hub. A browser without storage (or with
 * it blocked) still works; the token then lasts until the page is reloaded.
 */

const KEY = 'shardhub.operatorToken';
let memory: string | undefined;

function storage(): Storage | undefined {
  try {
    return window.sessionStorage;
  } catch {
    return undefined;
  }
}

/** The token this tab signed in with, if any. */
export function loadToken(): string | undefined {
  try {
    return storage()?.getItem(KEY) ?? memory;
  } catch {
    return memory;
  }
}

/** Keeps the token for this tab. */
export function saveToken(token: string): void {
  memory = token;
  try {
    storage()?.setItem(KEY, token);
  } catch {
    // storage full or blocked: the in-memory copy serves
  }
}

/** Forgets the token. */
export function clearToken(): void {
  memory = undefined;
  try {
    storage()?.removeItem(KEY);
  } catch {
    // nothing to forget
  }
}
