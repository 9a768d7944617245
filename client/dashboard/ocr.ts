/**
 * OCR from the dashboard: the bounds of `POST /api/ocr` checked before sending (so an operator
 * hears "too large" before uploading 60 MB rather than after), the request built from files, and
 * a finished run's text as one `.txt` or `.json` file. The wire types are the hub's own
 * (`server/pipeline.ts`), imported as types only.
 */
import type { OcrPageResult, OcrRunView } from '../../server/pipeline.ts';
import { bytes } from './format.ts';

export type { OcrPageResult, OcrRunView };

/** Images in one run (`OCR_MAX_IMAGES` in `server/pipeline-api.ts`). */
export const OCR_MAX_IMAGES = 1000;
/** Largest request body the hub parses for `/api/ocr` (`LIMITS.jsonBodyBytes × 64`). */
export const OCR_MAX_BODY_BYTES = 64 * 1024 * 1024;
/** Longest page name the hub takes (`LIMITS.nameChars`). */
export const OCR_NAME_CHARS = 128;

/** What `POST /api/ocr` takes. */
export interface OcrRequest {
  images: { name: string; data: string }[];
  priority: number;
  cache: boolean;
}

/** A page name the hub takes: the file's name, shortened (keeping its extension) past the bound. */
export function pageName(fileName: string): string {
  if (fileName.length <= OCR_NAME_CHARS) return fileName;
  const ext = /\.[A-Za-z0-9]{1,5}$/.exec(fileName)?.[0] ?? '';
  return fileName.slice(0, OCR_NAME_CHARS - ext.length) + ext;
}

/** Whether a file looks like a PNG or JPEG by its type or name (the hub decides by its bytes). */
export function looksLikeImage(file: { name: string; type: string }): boolean {
  return /^image\/(png|jpeg)$/.test(file.type) || /\.(png|jpe?g)$/i.test(file.name);
}

const utf8 = new TextEncoder();

/** The size of the JSON request these files make: `JSON.stringify`'s bytes, or at most 10 over. */
export function requestBytes(files: readonly { name: string; size: number }[]): number {
  // {"images":[...],"priority":-100,"cache":false}
  let n = 48;
  for (const f of files) {
    // {"name":…,"data":"…"},
    n += 20 + utf8.encode(JSON.stringify(pageName(f.name))).length + 4 * Math.ceil(f.size / 3);
  }
  return n;
}

/** Why these files cannot go in one run, or null when they can. */
export function ocrFilesProblem(files: readonly { name: string; size: number }[]): string | null {
  if (files.length === 0) return 'Choose or drop at least one image.';
  if (files.length > OCR_MAX_IMAGES)
    return `${files.length} files: the hub takes at most ${OCR_MAX_IMAGES} images per run; submit them in parts.`;
  const body = requestBytes(files);
  if (body > OCR_MAX_BODY_BYTES)
    return (
      `These images make a ${bytes(body)} request (base64 adds a third); the hub takes at most ` +
      `${bytes(OCR_MAX_BODY_BYTES)} per run: submit fewer or smaller images at a time.`
    );
  return null;
}

/** A file's bytes as base64 (what the hub's `data` field takes). */
export function readBase64(file: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(url.slice(url.indexOf(',') + 1));
    };
    reader.onerror = () => reject(reader.error ?? new Error('cannot read the file'));
    reader.readAsDataURL(file);
  });
}

/** The request for these files. */
export async function ocrRequest(
  files: readonly File[],
  opts: { priority: number; cache: boolean },
): Promise<OcrRequest> {
  const images: OcrRequest['images'] = [];
  for (const f of files) {
    try {
      images.push({ name: pageName(f.name), data: await readBase64(f) });
    } catch (err) {
      throw new Error(`${f.name}: ${(err as Error).message}`);
    }
  }
  return { images, priority: opts.priority, cache: opts.cache };
}

/** One line saying what happened to a page without text (empty for `ok`). */
export function pageOutcomeText(p: OcrPageResult): string {
  switch (p.outcome) {
    case 'ok':
      return '';
    case 'no_text':
      return 'no text found on this page';
    case 'pending':
      return 'still being read';
    case 'invalid_image':
    case 'failed': {
      const e = p.error;
      if (!e) return p.outcome;
      return `${e.stage}${e.box !== undefined ? ` (line box ${e.box})` : ''}: ${e.reason}`;
    }
  }
}

/**
 * The run's text as one plain-text file: per page a header line with its name (and outcome when
 * not `ok`), then its lines in reading order, pages apart by a blank line.
 */
export function runText(view: OcrRunView): string {
  return (view.results ?? [])
    .map((p) => {
      const head = p.outcome === 'ok' ? `== ${p.name} ==` : `== ${p.name} (${p.outcome}) ==`;
      const body = p.outcome === 'ok' ? p.text : pageOutcomeText(p);
      return `${head}\n${body}\n`;
    })
    .join('\n');
}

/** The run as one JSON file: its id and, per page, outcome, text and lines (text, confidence, box). */
export function runJson(view: OcrRunView): string {
  return JSON.stringify({ id: view.id, createdAt: view.createdAt, pages: view.results ?? [] }, null, 2);
}

/** Hands a file made in the page to the browser as a download. */
export function saveFile(content: string, filename: string, type: string): void {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.style.display = 'none';
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
