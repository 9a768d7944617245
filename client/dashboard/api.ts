/**
 * The dashboard's REST client: every call carries the operator token as a bearer token, and every
 * error becomes an {@link ApiError} with the hub's code and message (the hub answers
 * `{error: {code, message}}`), so the page can say what went wrong.
 */

/** A refused or failed REST call. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }

  /** Whether the hub refused the token. */
  get unauthorized(): boolean {
    return this.status === 401;
  }
}

/** Calls the hub's `/api` with the operator token. */
export class OperatorApi {
  constructor(
    private readonly token: string,
    private readonly base = '',
  ) {}

  /** GET a JSON route; returns its `data`. */
  get<T>(path: string, signal?: AbortSignal): Promise<T> {
    return this.call<T>('GET', path, undefined, signal);
  }

  /** POST JSON (or nothing); returns the reply's `data`. */
  post<T>(path: string, body?: unknown): Promise<T> {
    return this.call<T>('POST', path, body);
  }

  /** DELETE; returns the reply's `data`. */
  delete<T>(path: string): Promise<T> {
    return this.call<T>('DELETE', path);
  }

  /** PATCH JSON; returns the reply's `data`. */
  patch<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>('PATCH', path, body);
  }

  /** POST raw bytes (a file) as `application/octet-stream`; returns the reply's `data`. */
  upload<T>(path: string, body: Blob, signal?: AbortSignal): Promise<T> {
    return this.call<T>('POST', path, body, signal);
  }

  /**
   * Fetches a file that needs the token (a plain link cannot send it) and hands it to the browser
   * as a download.
   */
  async download(path: string, filename: string): Promise<number> {
    const res = await fetch(this.base + path, { headers: this.headers() });
    if (!res.ok) throw await errorOf(res);
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = document.createElement('a');
    a.href = url;
    a.download = filename;
    a.style.display = 'none';
    document.body.append(a);
    a.click();
    a.remove();
    // The download has started once click() returns; the URL can go a little later.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    return blob.size;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  private async call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const isBlob = body instanceof Blob;
    let res: Response;
    try {
      res = await fetch(this.base + path, {
        method,
        signal,
        headers: this.headers(
          isBlob
            ? { 'Content-Type': 'application/octet-stream' }
            : body !== undefined
              ? { 'Content-Type': 'application/json' }
              : {},
        ),
        body: isBlob ? body : body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err;
      throw new ApiError(0, 'network', `cannot reach the hub (${(err as Error).message})`);
    }
    if (!res.ok) throw await errorOf(res);
    const json = (await res.json()) as { data: T };
    return json.data;
  }
}

async function errorOf(res: Response): Promise<ApiError> {
  try {
    const json = (await res.json()) as { error?: { code?: string; message?: string } };
    if (json.error?.message) return new ApiError(res.status, json.error.code ?? 'error', json.error.message);
  } catch {
    // not JSON: fall through to the status line
  }
  return new ApiError(res.status, 'http_error', `${res.status} ${res.statusText}`);
}
