/** How the dashboard writes numbers, durations and times. */

/** A rate or weight in items/s: three significant digits, "–" when unknown. */
export function rate(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  if (v === 0) return '0';
  const r = Number(v.toPrecision(3)); // 99.97 → 100, so it reads "100" like its neighbours
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  return r.toPrecision(2);
}

/** A share (0..1) as a percentage; "–" when unknown. */
export function percent(v: number | null | undefined, digits = 0): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return `${(v * 100).toFixed(digits)}%`;
}

/** A count with thousands separators. */
export function count(v: number): string {
  return v.toLocaleString('en-US');
}

/**
 * A duration in seconds, as "850 ms", "12.4 s", "3 min 5 s", "42 min" or "2 h 4 min"; "–" when
 * unknown.
 */
export function duration(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s) || s < 0) return '–';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** How long ago `ms` was, by the hub's clock `now`: "just now", "4 s ago", "3 min ago". */
export function ago(ms: number, now: number): string {
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 1) return 'just now';
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

/** A plain number to `digits` decimals; "–" when unknown. */
export function fixed(v: number | null | undefined, digits = 2): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return v.toFixed(digits);
}

/** Bytes as "1.2 GB". */
export function bytes(n: number | null | undefined): string {
  if (!n) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}
