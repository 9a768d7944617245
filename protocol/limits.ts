/** Size bounds shared by the hub and workers. Every input the hub takes is bounded by one of these. */
export const LIMITS = {
  /** Largest Socket.IO message the hub accepts (bytes). */
  socketMessageBytes: 64 * 1024 * 1024,
  /** Largest JSON REST body. */
  jsonBodyBytes: 1024 * 1024,
  /** Largest binary REST body (a batch of item inputs). */
  binaryBodyBytes: 256 * 1024 * 1024,
  /** Largest uploaded model. */
  modelBytes: 512 * 1024 * 1024,
  /** Largest single tensor. */
  tensorBytes: 64 * 1024 * 1024,
  /** Most tensors per item. */
  tensorsPerItem: 32,
  /** Most dims per tensor. */
  dimsPerTensor: 8,
  /** Most items in one results message. */
  itemsPerMessage: 4096,
  /** Longest free-text string (names, error messages). */
  textChars: 2000,
  /** Longest name (model, item, worker, pool). */
  nameChars: 128,
  /** Most keys of a map a client sends (a GPU's limits, a job's options). */
  mapKeys: 256,
  /** Deepest nesting of free-form JSON a client sends (a job's options). */
  jsonDepth: 16,
  /** Largest free-form JSON a client sends, serialised (a job's options). */
  jsonBytes: 64 * 1024,
} as const;
