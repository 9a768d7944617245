/**
 * Runtime schema for `ModelManifest` (protocol/model.ts): every manifest — in `models/` or
 * uploaded — passes it before the hub uses it. Beyond field types it checks that the parts agree
 * with each other (calibration dims vs. declared shapes, preprocessing vs. its input), so a bad
 * manifest fails at load time with a message naming the field, not later inside a worker.
 */
import { z } from 'zod';
import type { ModelManifest, TensorSpec } from '../protocol/model.ts';
import { LIMITS } from '../protocol/limits.ts';
import { DTYPES, elementCount } from '../protocol/tensor.ts';

/** What a model name may look like: lower-case, URL- and file-name-safe, at most 64 characters. */
export const MODEL_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

const tensorName = z.string().min(1).max(LIMITS.nameChars);
const dim = z.union([
  z
    .number()
    .int()
    .min(0)
    .max(2 ** 31),
  z.string().min(1).max(64),
]);

/** Schema of one declared input or output. */
export const TensorSpecSchema = z.strictObject({
  name: tensorName,
  dtype: z.enum(DTYPES),
  shape: z.array(dim).max(LIMITS.dimsPerTensor),
});

const unit = z.number().finite();

/** Schema of image preprocessing. */
export const ImagePreprocessingSchema = z.strictObject({
  kind: z.literal('image'),
  input: tensorName,
  width: z.number().int().min(1).max(8192),
  height: z.number().int().min(1).max(8192),
  channels: z.enum(['RGB', 'BGR']),
  scale: unit,
  mean: z.tuple([unit, unit, unit]),
  std: z.tuple([unit, unit, unit]).refine((s) => s.every((v) => v !== 0), 'std must not contain 0'),
});

/** Schema of calibration settings. */
export const CalibrationSchema = z.strictObject({
  dims: z.record(
    tensorName,
    z
      .array(
        z
          .number()
          .int()
          .min(0)
          .max(1 << 16),
      )
      .max(LIMITS.dimsPerTensor),
  ),
  seed: z.number().int().min(0).max(0xffffffff),
  values: z.record(tensorName, z.array(z.number().finite()).max(1 << 16)).optional(),
});

const ManifestFields = z.strictObject({
  name: z.string().regex(MODEL_NAME_RE, 'name must match /^[a-z0-9][a-z0-9._-]{0,63}$/'),
  description: z.string().max(LIMITS.textChars),
  file: z.string().min(1).max(1024),
  license: z.string().max(LIMITS.textChars).optional(),
  inputs: z.array(TensorSpecSchema).min(1).max(LIMITS.tensorsPerItem),
  outputs: z.array(TensorSpecSchema).min(1).max(LIMITS.tensorsPerItem),
  batchable: z.boolean(),
  batchSize: z.number().int().min(1).max(4096),
  preprocessing: ImagePreprocessingSchema.optional(),
  tolerance: z.strictObject({ atol: z.number().finite().min(0), rtol: z.number().finite().min(0) }),
  allowNonFinite: z.boolean().optional(),
  calibration: CalibrationSchema,
});

function refine(m: Omit<ModelManifest, 'file'>, ctx: z.RefinementCtx): void {
  for (const problem of consistencyProblems(m))
    ctx.addIssue({ code: 'custom', message: problem.message, path: problem.path });
}

/** Schema of a model manifest, including cross-field consistency. */
export const ModelManifestSchema = ManifestFields.superRefine(refine);

/** The manifest minus its file: what an upload supplies. */
export const UploadManifestSchema = ManifestFields.omit({ file: true }).superRefine(refine);

// Compile-time check that the schema and the protocol type describe the same thing.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaMatchesType: Same<z.infer<typeof ModelManifestSchema>, ModelManifest> = true;
void schemaMatchesType;

interface Problem {
  message: string;
  path: (string | number)[];
}

/** Cross-field checks of a manifest whose fields already have the right types. */
export function consistencyProblems(m: Omit<ModelManifest, 'file'>): Problem[] {
  const out: Problem[] = [];
  const dupes = (specs: TensorSpec[], where: 'inputs' | 'outputs') => {
    const seen = new Set<string>();
    specs.forEach((s, i) => {
      if (seen.has(s.name))
        out.push({ message: `duplicate ${where.slice(0, -1)} name "${s.name}"`, path: [where, i, 'name'] });
      seen.add(s.name);
    });
  };
  dupes(m.inputs, 'inputs');
  dupes(m.outputs, 'outputs');
  if (!m.batchable && m.batchSize !== 1)
    out.push({ message: 'batchSize must be 1 when batchable is false', path: ['batchSize'] });

  const inputNames = new Set(m.inputs.map((s) => s.name));
  for (const key of Object.keys(m.calibration.dims)) {
    if (!inputNames.has(key))
      out.push({
        message: `calibration dims name unknown input "${key}"`,
        path: ['calibration', 'dims', key],
      });
  }
  for (const spec of m.inputs) {
    const dims = m.calibration.dims[spec.name];
    const path = ['calibration', 'dims', spec.name];
    if (!dims) {
      out.push({ message: `calibration has no dims for input "${spec.name}"`, path });
      continue;
    }
    if (dims.length !== spec.shape.length) {
      out.push({
        message: `calibration dims for "${spec.name}" have rank ${dims.length}, the input has rank ${spec.shape.length}`,
        path,
      });
      continue;
    }
    spec.shape.forEach((d, i) => {
      if (typeof d === 'number' && dims[i] !== d) {
        out.push({
          message: `calibration dim ${i} of "${spec.name}" is ${dims[i]}, the input fixes it at ${d}`,
          path,
        });
      }
    });
    // Calibration describes ONE item: with batching, items are stacked along dim 0.
    if (m.batchable && dims[0] !== 1) {
      out.push({
        message: `calibration dims of "${spec.name}" must have 1 in dim 0 (one item) for a batchable model`,
        path,
      });
    }
    if (m.batchable && typeof spec.shape[0] !== 'string') {
      out.push({
        message: `input "${spec.name}" needs a dynamic dim 0 for a batchable model`,
        path: ['inputs'],
      });
    }
    if (elementCount(dims) * 8 > LIMITS.tensorBytes) {
      out.push({ message: `calibration dims of "${spec.name}" are too large`, path });
    }
  }
  for (const [key, values] of Object.entries(m.calibration.values ?? {})) {
    const dims = m.calibration.dims[key];
    const path = ['calibration', 'values', key];
    if (!inputNames.has(key)) out.push({ message: `calibration values name unknown input "${key}"`, path });
    else if (dims && values.length !== elementCount(dims)) {
      out.push({
        message: `calibration values for "${key}" have ${values.length} elements, dims [${dims.join(',')}] need ${elementCount(dims)}`,
        path,
      });
    }
  }
  const pre = m.preprocessing;
  if (pre) {
    const spec = m.inputs.find((s) => s.name === pre.input);
    const path = ['preprocessing', 'input'];
    if (!spec) out.push({ message: `preprocessing input "${pre.input}" is not a declared input`, path });
    else if (spec.dtype !== 'float32' || spec.shape.length !== 4) {
      out.push({ message: `preprocessing input "${pre.input}" must be float32 with rank 4 (NCHW)`, path });
    } else {
      const [, c, h, w] = spec.shape;
      const fits = (d: number | string | undefined, v: number) => typeof d === 'string' || d === v;
      if (!fits(c, 3) || !fits(h, pre.height) || !fits(w, pre.width)) {
        out.push({
          message: `preprocessing ${pre.width}x${pre.height}x3 does not fit input shape [${spec.shape.join(',')}]`,
          path,
        });
      }
      if (m.inputs.length !== 1)
        out.push({ message: 'preprocessing needs a model with exactly one input', path });
    }
  }
  return out;
}
