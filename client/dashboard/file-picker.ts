/**
 * The files an operator picks or drops for one of the dashboard's forms (`<sh-submit-form>`,
 * `<sh-ocr-form>`), as a Lit {@link ReactiveController}: it keeps the list, takes an
 * `<input type=file>`'s changes and a drop zone's drags, and updates its host when they change.
 * With `add`, picks and drops add to the list (a file seen twice, same name, size and time, is kept
 * once), as for the pages of an OCR run; with `replace`, each pick is the whole list, as the file
 * input itself shows it.
 */
import type { ReactiveController, ReactiveControllerHost } from 'lit';
import { bytes as formatBytes, count } from './format.ts';

/** Options of a {@link FilePicker}. */
export interface FilePickerOptions {
  /** `add`: picks and drops add to the list; `replace`: each pick replaces it. */
  mode: 'add' | 'replace';
  /** Told after the list changed (a form clears its last status, say). */
  onChange?: () => void;
}

/** Picked and dropped files of a form; see the file comment. */
export class FilePicker implements ReactiveController {
  private list: readonly File[] = [];
  private dragOver = false;

  constructor(
    private readonly host: ReactiveControllerHost,
    private readonly opts: FilePickerOptions,
  ) {
    host.addController(this);
  }

  hostConnected(): void {}

  /** The files, in the order they came. */
  get files(): readonly File[] {
    return this.list;
  }

  /** Whether a drag is over the drop zone (for its highlight). */
  get over(): boolean {
    return this.dragOver;
  }

  /** The files' total size in bytes. */
  get bytes(): number {
    return this.list.reduce((s, f) => s + f.size, 0);
  }

  /** "N <noun>(s), X MB": what the list holds, for a form's summary line. */
  summary(noun = 'file'): string {
    return `${count(this.list.length)} ${noun}(s), ${formatBytes(this.bytes)}`;
  }

  /** Empties the list (after a submit, or the form's Clear). */
  clear(): void {
    this.set([]);
  }

  /** `@change` of the form's `<input type=file>`. */
  readonly onPick = (e: Event): void => {
    const input = e.target as HTMLInputElement;
    this.take([...(input.files ?? [])]);
    // Added to a list of its own: picking the same file again must still fire change.
    if (this.opts.mode === 'add') input.value = '';
  };

  /** `@dragover` of the drop zone: accepts the drag as a copy. */
  readonly onDragOver = (e: DragEvent): void => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
    this.setOver(true);
  };

  /** `@dragleave` of the drop zone. */
  readonly onDragLeave = (): void => this.setOver(false);

  /** `@drop` of the drop zone. */
  readonly onDrop = (e: DragEvent): void => {
    e.preventDefault();
    this.setOver(false);
    this.take([...(e.dataTransfer?.files ?? [])]);
  };

  private take(files: File[]): void {
    if (this.opts.mode === 'replace') return this.set(files);
    const key = (f: File) => `${f.name}\u0000${f.size}\u0000${f.lastModified}`;
    const have = new Set(this.list.map(key));
    this.set([...this.list, ...files.filter((f) => !have.has(key(f)))]);
  }

  private set(files: readonly File[]): void {
    this.list = files;
    this.opts.onChange?.();
    this.host.requestUpdate();
  }

  private setOver(over: boolean): void {
    if (this.dragOver === over) return;
    this.dragOver = over;
    this.host.requestUpdate();
  }
}
