/**
 * The scheduler's decisions as small pure functions: shard sizes, when a load is imbalanced enough
 * to steal, how much to steal, and when a straggling item is worth running twice.
 */

/** Tunables of the policies below. */
export interface PolicyOptions {
  /** Steal only when the victim's predicted finish exceeds the thief's by this many seconds... */
  stealMinS: number;
  /** ...and by this fraction of the victim's predicted finish. */
  stealRatio: number;
  /** Speculate when the holder is predicted to finish more than this many times later than the idle worker could. */
  speculationFactor: number;
  /** At most this fraction of workers (at least one) run speculative copies at once. */
  speculationFraction: number;
}

export const DEFAULT_POLICY: PolicyOptions = {
  stealMinS: 0.05,
  stealRatio: 0.15,
  speculationFactor: 2,
  speculationFraction: 0.1,
};

/**
 * Weighted factoring: a worker's next shard is its weight's share of half the remaining items,
 * never less than `min` (what keeps its runners busy) nor more than what is left.
 */
export function factoringChunk(remaining: number, mine: number, total: number, min: number): number {
  const share = total > 0 ? mine / total : 1;
  const size = Math.ceil((remaining * share) / 2);
  return Math.min(remaining, Math.max(size, min, 1));
}

/** Seconds until a worker holding `held` items at `rate` items/s is done. */
export function predictedFinish(held: number, rate: number): number {
  return rate > 0 ? held / rate : Infinity;
}

/** Whether the gap between a victim's and a thief's predicted finish is worth a steal. */
export function isImbalanced(
  victimFinishS: number,
  thiefFinishS: number,
  o: PolicyOptions = DEFAULT_POLICY,
): boolean {
  const gap = victimFinishS - thiefFinishS;
  return gap > o.stealMinS && gap > o.stealRatio * victimFinishS;
}

/**
 * How many items to move from victim to thief so both are predicted to finish together:
 * (hv - k)/rv = (ht + k)/rt  =>  k = (hv*rt - ht*rv) / (rv + rt), rounded down, at least 0.
 */
export function stealSize(
  victimHeld: number,
  victimRate: number,
  thiefHeld: number,
  thiefRate: number,
): number {
  if (!(victimRate > 0) || !(thiefRate > 0)) return victimRate > 0 ? 0 : victimHeld;
  const k = Math.floor((victimHeld * thiefRate - thiefHeld * victimRate) / (victimRate + thiefRate));
  return Math.max(0, Math.min(victimHeld, k));
}

/** Whether an idle worker should run a copy of an item whose holder is predicted to finish late. */
export function shouldSpeculate(
  holderFinishS: number,
  idleRate: number,
  o: PolicyOptions = DEFAULT_POLICY,
): boolean {
  if (!(idleRate > 0)) return false;
  return holderFinishS > o.speculationFactor * (1 / idleRate);
}

/** Most speculative copies allowed at once among `workers` workers. */
export function speculationCap(workers: number, o: PolicyOptions = DEFAULT_POLICY): number {
  return Math.max(1, Math.ceil(workers * o.speculationFraction));
}
