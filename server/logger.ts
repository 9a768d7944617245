/**
 * The hub's modules take the logger from here; it lives in `common/logger.ts`, shared with the
 * native node (which must not import the hub's layer).
 */
export * from '../common/logger.ts';
