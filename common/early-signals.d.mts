/** Types of `early-signals.mjs`: signals held while a node's process loads and starts. */

/** Set in a relaunched child's environment (`relaunch.ts`). */
export declare const RELAUNCHED_ENV: string;
/** What a relaunched child sends its parent once it holds signals. */
export declare const HOLDING_MESSAGE: string;
/** Starts holding SIGINT, SIGTERM and SIGHUP (a no-op while holding): recorded, not acted on. */
export declare function holdSignals(): void;
/** The signals that came since holding began, in order (none when not holding). */
export declare function heldSignals(): readonly NodeJS.Signals[];
/** Stops holding; returns the signals that came meanwhile. Later signals go to other handlers. */
export declare function releaseSignals(): NodeJS.Signals[];
