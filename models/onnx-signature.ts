/**
 * Reads an ONNX file's graph inputs and outputs (names, dtypes, shapes) without running it, and
 * compares them with a manifest. The registry uses it so an uploaded model whose manifest does not
 * describe it is refused at upload time, not discovered later as a failure on every worker.
 */
import onnxProto from 'onnx-proto';
import type { ModelManifest, TensorSpec } from '../protocol/model.ts';
import type { DType } from '../protocol/tensor.ts';

const { onnx } = onnxProto;

/** ONNX TensorProto.DataType codes of the dtypes shardhub carries. */
const ONNX_DTYPES: Record<number, DType> = {
  1: 'float32',
  2: 'uint8',
  3: 'int8',
  6: 'int32',
  7: 'int64',
  9: 'bool',
  10: 'float16',
  11: 'float64',
};

/** A graph input or output as the file declares it; `null` dims are unnamed dynamic dims. */
export interface OnnxValue {
  name: string;
  /** undefined when the element type is not one shardhub supports (or not a tensor). */
  dtype: DType | undefined;
  /** undefined when the file declares no shape at all. */
  shape: (number | string | null)[] | undefined;
}

/** A model's declared signature. */
export interface OnnxSignature {
  inputs: OnnxValue[];
  outputs: OnnxValue[];
}

/** Decodes an ONNX file's graph signature. Throws when the bytes are not an ONNX model. */
export function readOnnxSignature(bytes: Uint8Array): OnnxSignature {
  let model: InstanceType<typeof onnx.ModelProto>;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (err) {
    throw new Error(`not an ONNX model (${(err as Error).message})`);
  }
  const graph = model.graph;
  if (!graph || (graph.output ?? []).length === 0) throw new Error('not an ONNX model (no graph outputs)');
  // Before IR 4, initializers were also listed as graph inputs; they need no feed.
  const initialized = new Set((graph.initializer ?? []).map((t) => t.name ?? ''));
  return {
    inputs: (graph.input ?? []).filter((v) => !initialized.has(v.name ?? '')).map(toValue),
    outputs: (graph.output ?? []).map(toValue),
  };
}

function toValue(v: onnxProto.onnx.IValueInfoProto): OnnxValue {
  const t = v.type?.tensorType;
  const shape = t?.shape
    ? (t.shape.dim ?? []).map((d) => {
        if (d.dimParam) return d.dimParam;
        // dimValue is a oneof member: an own property only when the file set it.
        if (Object.hasOwn(d, 'dimValue') && d.dimValue !== null && d.dimValue !== undefined) {
          return Number(d.dimValue);
        }
        return null;
      })
    : undefined;
  return { name: v.name ?? '', dtype: t ? ONNX_DTYPES[t.elemType ?? 0] : undefined, shape };
}

/**
 * Lists the ways a manifest disagrees with a model's signature (empty when it describes the model).
 * A manifest may fix a dim the file leaves dynamic, but not the reverse, and it must feed every input.
 */
export function signatureProblems(
  sig: OnnxSignature,
  m: Pick<ModelManifest, 'inputs' | 'outputs'>,
): string[] {
  const out: string[] = [];
  const compare = (kind: 'input' | 'output', specs: TensorSpec[], values: OnnxValue[]) => {
    const byName = new Map(values.map((v) => [v.name, v]));
    for (const spec of specs) {
      const v = byName.get(spec.name);
      if (!v) {
        out.push(
          `${kind} "${spec.name}" is not in the model (it has ${values.map((x) => `"${x.name}"`).join(', ')})`,
        );
        continue;
      }
      if (v.dtype !== spec.dtype)
        out.push(
          `${kind} "${spec.name}" is ${v.dtype ?? 'an unsupported type'} in the model, not ${spec.dtype}`,
        );
      if (!v.shape) continue;
      if (v.shape.length !== spec.shape.length) {
        out.push(`${kind} "${spec.name}" has rank ${v.shape.length} in the model, not ${spec.shape.length}`);
        continue;
      }
      v.shape.forEach((d, i) => {
        if (typeof d === 'number' && spec.shape[i] !== d) {
          out.push(
            `${kind} "${spec.name}" dim ${i} is fixed at ${d} in the model, the manifest says ${JSON.stringify(spec.shape[i])}`,
          );
        }
      });
    }
  };
  compare('input', m.inputs, sig.inputs);
  compare('output', m.outputs, sig.outputs);
  const declared = new Set(m.inputs.map((s) => s.name));
  for (const v of sig.inputs) {
    if (!declared.has(v.name)) out.push(`model input "${v.name}" is missing from the manifest`);
  }
  return out;
}
