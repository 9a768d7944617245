/**
 * A folder of inputs → a job's items. Three layouts, which may be mixed:
 * - `<item>.npy`: one tensor, for a model with exactly one input;
 * - `<item>/<inputName>.npy`: one file per input, for any model;
 * - `<item>.png|.jpg|.jpeg`: an image, for a model whose manifest declares preprocessing.
 * Items come out sorted by name and are read one at a time, so a large folder is never all in memory.
 * Each item is checked against the model's declared inputs; a mismatch throws an error naming the
 * file and the problem.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { LIMITS } from '../../protocol/limits.ts';
import type { ModelInfo } from '../../protocol/model.ts';
import type { WireTensor } from '../../protocol/tensor.ts';
import { imageToTensor, MAX_IMAGE_PIXELS } from './images.ts';
import { NPY_MAX_HEADER_BYTES, readNpy } from './npy.ts';

/** One item read from a folder. */
export interface FolderItem {
  name: string;
  inputs: WireTensor[];
}

type Source =
  | { kind: 'npy'; name: string; path: string }
  | { kind: 'image'; name: string; path: string }
  | { kind: 'dir'; name: string; path: string };

const IMAGE_EXTS = new Set(['.png', '.jpg', '.jpeg']);
/** Largest image file read: a compressed image of the largest accepted size fits easily. */
const MAX_IMAGE_FILE_BYTES = MAX_IMAGE_PIXELS * 4;

/** A folder's items, listed and checked for layout before any is read (see {@link listInputs}). */
export interface InputsListing {
  dir: string;
  model: ModelInfo;
  items: readonly { name: string; path: string; bytes: number }[];
  /** The size of all the files the items are read from. */
  bytes: number;
}

/**
 * Lists a folder's items for `model` without reading them: an unsupported file, a layout the model
 * cannot take (one `.npy` per item for a multi-input model, images for a model without image
 * preprocessing), a clash of names or an empty folder is an error naming the file, before anything
 * is sent to a hub.
 */
export async function listInputs(dir: string, model: ModelInfo): Promise<InputsListing> {
  const sources = await listSources(dir, model);
  if (sources.length === 0)
    throw new Error(`${dir}: no items (expected <item>.npy, <item>.png/.jpg or <item>/ folders)`);
  const items: InputsListing['items'][number][] = [];
  let total = 0;
  for (const src of sources) {
    let bytes = 0;
    if (src.kind === 'dir') {
      for (const f of await readdir(src.path))
        if (!f.startsWith('.')) bytes += (await stat(join(src.path, f))).size;
    } else bytes = (await stat(src.path)).size;
    total += bytes;
    items.push({ name: src.name, path: src.path, bytes });
  }
  return { dir, model, items, bytes: total };
}

/** Reads a folder as items for `model`, sorted by item name (code-unit order, so stable everywhere). */
export async function* readInputsFolder(
  dir: string | InputsListing,
  model: ModelInfo,
): AsyncIterable<{ name: string; inputs: WireTensor[]; bytes?: number }> {
  const listing = typeof dir === 'string' ? undefined : dir;
  const sources = await listSources(listing ? listing.dir : (dir as string), model);
  for (const [i, src] of sources.entries()) {
    yield { name: src.name, inputs: await readItem(src, model), bytes: listing?.items[i]?.bytes };
  }
}

async function listSources(dir: string, model: ModelInfo): Promise<Source[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const byName = new Map<string, Source>();
  for (const e of entries) {
    if (e.name.startsWith('.')) continue; // .DS_Store and friends
    const path = join(dir, e.name);
    const ext = extname(e.name).toLowerCase();
    // Follow symlinks (a folder of links into a dataset is common); anything else is an error.
    const st = e.isSymbolicLink() ? await stat(path) : e;
    let src: Source;
    if (st.isDirectory()) src = { kind: 'dir', name: e.name, path };
    else if (!st.isFile()) throw new Error(`${path}: not a regular file or folder`);
    else if (ext === '.npy') src = { kind: 'npy', name: e.name.slice(0, -ext.length), path };
    else if (IMAGE_EXTS.has(ext)) src = { kind: 'image', name: e.name.slice(0, -ext.length), path };
    else
      throw new Error(
        `${path}: unsupported file; expected <item>.npy, <item>.png/.jpg/.jpeg or an <item>/ folder`,
      );

    if (src.name === '' || src.name.length > LIMITS.nameChars) {
      throw new Error(`${path}: item name must be 1-${LIMITS.nameChars} characters`);
    }
    const clash = byName.get(src.name);
    if (clash) throw new Error(`${path}: item "${src.name}" is also given by ${clash.path}`);
    if (src.kind === 'npy' && model.inputs.length !== 1) {
      throw new Error(
        `${path}: model "${model.name}" has ${model.inputs.length} inputs (${inputList(model)}); ` +
          `give each item as a folder <item>/<input>.npy`,
      );
    }
    if (src.kind === 'image' && !model.preprocessing) {
      throw new Error(
        `${path}: model "${model.name}" declares no image preprocessing; give .npy files instead`,
      );
    }
    byName.set(src.name, src);
  }
  return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

async function readItem(src: Source, model: ModelInfo): Promise<WireTensor[]> {
  switch (src.kind) {
    case 'npy': {
      const spec = model.inputs[0] as ModelInfo['inputs'][number];
      const t = addBatchDim(await readNpyFile(src.path, spec.name), model);
      checkItemInputs([t], model, src.path);
      return [t];
    }
    case 'image': {
      const pre = model.preprocessing as NonNullable<ModelInfo['preprocessing']>;
      const t = imageToTensor(await readBounded(src.path, MAX_IMAGE_FILE_BYTES), pre, src.path);
      checkItemInputs([t], model, src.path);
      return [t];
    }
    case 'dir': {
      const files = (await readdir(src.path)).filter((f) => !f.startsWith('.')).sort();
      const declared = new Set(model.inputs.map((s) => s.name));
      for (const f of files) {
        const stem = f.endsWith('.npy') ? f.slice(0, -4) : undefined;
        if (stem === undefined || !declared.has(stem)) {
          throw new Error(
            `${join(src.path, f)}: not an input of model "${model.name}" (expected ${inputList(model, '.npy')})`,
          );
        }
      }
      const missing = model.inputs.filter((s) => !files.includes(`${s.name}.npy`));
      if (missing.length) {
        throw new Error(
          `${src.path}: missing ${missing.map((s) => `${s.name}.npy`).join(', ')} for model "${model.name}"`,
        );
      }
      const tensors: WireTensor[] = [];
      for (const spec of model.inputs) {
        const path = join(src.path, `${spec.name}.npy`);
        tensors.push(addBatchDim(await readNpyFile(path, spec.name), model));
      }
      checkItemInputs(tensors, model, src.path);
      return tensors;
    }
  }
}

async function readNpyFile(path: string, name: string): Promise<WireTensor> {
  const bytes = await readBounded(path, LIMITS.tensorBytes + NPY_MAX_HEADER_BYTES + 12);
  try {
    return readNpy(bytes, name);
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
}

async function readBounded(path: string, max: number): Promise<Uint8Array> {
  const s = await stat(path);
  if (s.size > max) throw new Error(`${path}: file is ${s.size} bytes, more than the ${max} allowed`);
  return new Uint8Array(await readFile(path));
}

/** An array saved without its batch dim gets a leading 1, when the input's dim 0 is dynamic. */
function addBatchDim(t: WireTensor, model: ModelInfo): WireTensor {
  const spec = model.inputs.find((s) => s.name === t.name);
  if (spec && typeof spec.shape[0] === 'string' && t.dims.length === spec.shape.length - 1) {
    return { ...t, dims: [1, ...t.dims] };
  }
  return t;
}

function inputList(model: ModelInfo, suffix = ''): string {
  return model.inputs.map((s) => `${s.name}${suffix}`).join(', ');
}

/**
 * Checks one item's tensors against a model's declared inputs: every input present once, with its
 * dtype, rank and fixed dims; a named dim (e.g. "N") has one value across the item's inputs; items
 * of a batchable model hold one row (dim 0 = 1). Throws an Error starting with `where`.
 */
export function checkItemInputs(
  tensors: readonly WireTensor[],
  model: Pick<ModelInfo, 'name' | 'inputs' | 'batchable'>,
  where: string,
): void {
  const fail = (why: string): never => {
    throw new Error(`${where}: ${why}`);
  };
  if (tensors.length > LIMITS.tensorsPerItem)
    fail(`${tensors.length} tensors, at most ${LIMITS.tensorsPerItem} per item`);
  const byName = new Map<string, WireTensor>();
  for (const t of tensors) {
    if (byName.has(t.name)) fail(`input "${t.name}" given twice`);
    byName.set(t.name, t);
  }
  const named = new Map<string, { value: number; input: string }>();
  for (const spec of model.inputs) {
    const t = byName.get(spec.name) ?? fail(`missing input "${spec.name}"`);
    byName.delete(spec.name);
    if (t.dtype !== spec.dtype)
      fail(`input "${spec.name}" is ${t.dtype}, model "${model.name}" needs ${spec.dtype}`);
    const shape = `[${spec.shape.join(',')}]`;
    if (t.dims.length !== spec.shape.length) {
      fail(
        `input "${spec.name}" has dims [${t.dims.join(',')}] (rank ${t.dims.length}), model "${model.name}" needs ${shape}`,
      );
    }
    if (t.data.byteLength > LIMITS.tensorBytes)
      fail(`input "${spec.name}" is larger than ${LIMITS.tensorBytes} bytes`);
    spec.shape.forEach((d, i) => {
      const got = t.dims[i] as number;
      if (typeof d === 'number') {
        if (got !== d)
          fail(
            `input "${spec.name}" has dims [${t.dims.join(',')}], model "${model.name}" needs ${shape} (dim ${i} must be ${d})`,
          );
        return;
      }
      const seen = named.get(d);
      if (seen && seen.value !== got) {
        fail(`dim "${d}" is ${seen.value} in input "${seen.input}" but ${got} in input "${spec.name}"`);
      }
      named.set(d, { value: got, input: spec.name });
    });
    if (model.batchable && t.dims[0] !== 1) {
      fail(
        `input "${spec.name}" has ${t.dims[0]} rows in dim 0; items of batchable model "${model.name}" hold one row`,
      );
    }
  }
  const extra = [...byName.keys()];
  if (extra.length)
    fail(`unknown input${extra.length > 1 ? 's' : ''} ${extra.map((n) => `"${n}"`).join(', ')}`);
}
