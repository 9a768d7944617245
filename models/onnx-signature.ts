/**
 * Reads an ONNX file's graph inputs and outputs (names, dtypes, shapes) without running it, and
 * compares them with a manifest. The registry uses it so an uploaded model whose manifest does not
 * describe it is refused at upload time, not discovered later as a failure on every worker.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
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
  return walkSignature({ size: bytes.byteLength, read: (pos, len) => bytes.subarray(pos, pos + len) });
}

/** Bytes at positions of a file or buffer, read as the walk needs them. */
interface ByteSource {
  size: number;
  read(pos: number, len: number): Uint8Array;
}

/** Largest graph input/output description read (they are names and dims, never weights). */
const MAX_VALUE_INFO_BYTES = 1024 * 1024;

/**
 * Reads the signature of the ONNX file at `path` without reading the file whole: it walks the
 * protobuf fields of the model and its graph and reads only the graph's inputs, outputs and the
 * names of its initializers, skipping weights and nodes by their lengths. An uploaded model of
 * hundreds of megabytes is checked in a few kilobytes of memory. Throws as `readOnnxSignature`.
 */
export function readOnnxSignatureFile(path: string): OnnxSignature {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    return walkSignature({
      size,
      read(pos, len) {
        const buf = Buffer.alloc(len);
        const got = readSync(fd, buf, 0, len, pos);
        return buf.subarray(0, got);
      },
    });
  } finally {
    closeSync(fd);
  }
}

/** Protobuf wire types. */
const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

/** The model's graph fields: `GraphProto` 5 initializer, 11 input, 12 output; `TensorProto` 8 name. */
function walkSignature(src: ByteSource): OnnxSignature {
  let graph: [number, number] | undefined;
  eachField(src, 0, src.size, (field, wire, start, end) => {
    if (field === 7 && wire === LEN) graph = [start, end]; // ModelProto.graph
  });
  if (!graph) throw new Error('not an ONNX model (no graph)');
  const inputs: OnnxValue[] = [];
  const outputs: OnnxValue[] = [];
  const initialized = new Set<string>();
  const valueInfo = (start: number, end: number) => {
    if (end - start > MAX_VALUE_INFO_BYTES)
      throw new Error(`not an ONNX model (a graph input or output of ${end - start} bytes)`);
    try {
      return toValue(onnx.ValueInfoProto.decode(src.read(start, end - start)));
    } catch (err) {
      throw new Error(`not an ONNX model (${(err as Error).message})`);
    }
  };
  eachField(src, graph[0], graph[1], (field, wire, start, end) => {
    if (wire !== LEN) return;
    if (field === 11) inputs.push(valueInfo(start, end));
    else if (field === 12) outputs.push(valueInfo(start, end));
    else if (field === 5) {
      eachField(src, start, end, (f, w, s, e) => {
        if (f === 8 && w === LEN && e - s <= MAX_VALUE_INFO_BYTES)
          initialized.add(Buffer.from(src.read(s, e - s)).toString('utf8'));
      });
    }
  });
  if (outputs.length === 0) throw new Error('not an ONNX model (no graph outputs)');
  // Before IR 4, initializers were also listed as graph inputs; they need no feed.
  return { inputs: inputs.filter((v) => !initialized.has(v.name)), outputs };
}

/**
 * Calls `visit` for each field in `[start, end)`: its number, wire type and where its value lies
 * (a length-delimited field's bytes; other values are skipped). Throws on what protobuf cannot hold.
 */
function eachField(
  src: ByteSource,
  start: number,
  end: number,
  visit: (field: number, wire: number, start: number, end: number) => void,
): void {
  let pos = start;
  const varint = (): number => {
    const bytes = src.read(pos, Math.min(10, end - pos));
    let value = 0;
    for (let i = 0; i < bytes.length; i++) {
      value += (bytes[i] & 0x7f) * 2 ** (7 * i);
      if ((bytes[i] & 0x80) === 0) {
        pos += i + 1;
        return value;
      }
    }
    throw new Error(`not an ONNX model (a truncated number at byte ${pos})`);
  };
  while (pos < end) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    let valueStart = pos;
    if (wire === VARINT) varint();
    else if (wire === I64) pos += 8;
    else if (wire === I32) pos += 4;
    else if (wire === LEN) {
      const len = varint();
      valueStart = pos;
      pos += len;
    } else throw new Error(`not an ONNX model (wire type ${wire} at byte ${valueStart})`);
    if (field === 0 || pos > end)
      throw new Error(`not an ONNX model (a field past its end at byte ${valueStart})`);
    visit(field, wire, valueStart, pos);
  }
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
