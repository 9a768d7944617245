/** Errors of a native node that end its process. */

/** The node cannot go on (bad join token, identity refused, unreadable state): exit non-zero. */
export class NodeFatalError extends Error {
  override name = 'NodeFatalError';
  readonly exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}
