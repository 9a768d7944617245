/**
 * The dashboard's custom events: `Event` subclasses that bubble and cross shadow roots, fired by
 * the views and handled by `<sh-dashboard>`, which carries them out against the hub.
 */

/** A worker action an operator can take. */
export type WorkerAction = 'pause' | 'resume' | 'drain' | 'evict' | 'remove';

/** The operator submitted the sign-in form. */
export class SignInEvent extends Event {
  static readonly eventName = 'sign-in';
  constructor(readonly token: string) {
    super(SignInEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The operator asked for a worker action. */
export class WorkerActionEvent extends Event {
  static readonly eventName = 'worker-action';
  constructor(
    readonly workerId: string,
    readonly action: WorkerAction,
  ) {
    super(WorkerActionEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The operator asked to cancel a job. */
export class JobCancelEvent extends Event {
  static readonly eventName = 'job-cancel';
  constructor(readonly jobId: string) {
    super(JobCancelEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The operator set a job's priority. */
export class JobPriorityEvent extends Event {
  static readonly eventName = 'job-priority';
  constructor(
    readonly jobId: string,
    readonly priority: number,
  ) {
    super(JobPriorityEvent.eventName, { bubbles: true, composed: true });
  }
}

/** The operator asked for a job's results archive. */
export class ResultsDownloadEvent extends Event {
  static readonly eventName = 'results-download';
  constructor(readonly jobId: string) {
    super(ResultsDownloadEvent.eventName, { bubbles: true, composed: true });
  }
}

/** A job was submitted from the form (it is already on the hub). */
export class JobSubmittedEvent extends Event {
  static readonly eventName = 'job-submitted';
  constructor(readonly jobId: string) {
    super(JobSubmittedEvent.eventName, { bubbles: true, composed: true });
  }
}

declare global {
  interface HTMLElementEventMap {
    'sign-in': SignInEvent;
    'worker-action': WorkerActionEvent;
    'job-cancel': JobCancelEvent;
    'job-priority': JobPriorityEvent;
    'results-download': ResultsDownloadEvent;
    'job-submitted': JobSubmittedEvent;
  }
}

/** An OCR run was submitted from the form (it is already running on the hub). */
export class OcrSubmittedEvent extends Event {
  static readonly eventName = 'ocr-submitted';
  constructor(readonly runId: string) {
    super(OcrSubmittedEvent.eventName, { bubbles: true, composed: true });
  }
}

declare global {
  interface HTMLElementEventMap {
    'ocr-submitted': OcrSubmittedEvent;
  }
}
