/**
 * The hub's commands take their option tables and exit codes from here; they live in
 * `common/options.ts`, shared with `shardhub node` (which must not import the hub's layer).
 */
export * from '../common/options.ts';
