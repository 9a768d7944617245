/**
 * Results packed for `items:done` and unpacked again: the worker packs (`worker/outbox.ts`), the
 * hub unpacks (`server/gateway.ts`). One file owns the layout, so the two sides cannot drift apart.
 *
 * A group is a run of results of one job and model: `data` holds each result's outputs as a tensor
 * pack (`pack.ts`: a length-prefixed JSON header, then the tensors' bytes) back to back, `ends[i]`
 * the offset after result `i`'s pack.
 */
import type { ItemResult, PackedResults } from './events.ts';
import { LIMITS } from './limits.ts';
import { type HeaderCache, PackError, tensorBytes, unpackTensors } from './pack.ts';
import type { WireTensor } from './tensor.ts';

const encoder = new TextEncoder();

/**
 * Results as `ItemsDone.packed`: one group per run of results of the same job and model, each
 * result's outputs as a tensor pack (protocol/pack.ts), all packs of a group in one buffer, written
 * once (no intermediate pack per result).
 */
export function packResults(results: readonly ItemResult[]): PackedResults[] {
  const groups: PackedResults[] = [];
  for (let i = 0; i < results.length;) {
    const first = results[i] as ItemResult;
    let j = i;
    const headers: Uint8Array[] = [];
    let size = 0;
    for (; j < results.length; j++) {
      const r = results[j] as ItemResult;
      if (r.jobId !== first.jobId || r.modelSha256 !== first.modelSha256) break;
      // Results of one model nearly always have the outputs of the one before: the same header.
      const prev = j > i ? results[j - 1] : undefined;
      const h =
        prev && sameLayout(prev.outputs, r.outputs)
          ? (headers[headers.length - 1] as Uint8Array)
          : encoder.encode(JSON.stringify(r.outputs.map((t) => ({ n: t.name, t: t.dtype, d: t.dims }))));
      headers.push(h);
      size += 4 + h.byteLength + tensorBytes(r.outputs);
    }
    const data = new Uint8Array(size);
    const view = new DataView(data.buffer);
    const ids: number[] = [];
    const ms: number[] = [];
    const ends: number[] = [];
    let off = 0;
    for (let k = i; k < j; k++) {
      const r = results[k] as ItemResult;
      const h = headers[k - i] as Uint8Array;
      view.setUint32(off, h.byteLength, true);
      data.set(h, off + 4);
      off += 4 + h.byteLength;
      for (const t of r.outputs) {
        data.set(t.data, off);
        off += t.data.byteLength;
      }
      ids.push(r.itemId);
      ms.push(r.ms);
      ends.push(off);
    }
    groups.push({ jobId: first.jobId, modelSha256: first.modelSha256, ids, ms, ends, data });
    i = j;
  }
  return groups;
}

/** Whether two lists of tensors have the same names, dtypes and dims, in order (a pack's header). */
function sameLayout(a: readonly WireTensor[], b: readonly WireTensor[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as WireTensor;
    const y = b[i] as WireTensor;
    if (x.name !== y.name || x.dtype !== y.dtype || x.dims.length !== y.dims.length) return false;
    for (let d = 0; d < x.dims.length; d++) if (x.dims[d] !== y.dims[d]) return false;
  }
  return true;
}

/**
 * Packed results as the hub's `ItemResult`s: each item's outputs unpacked as views into the message's
 * bytes, its pack kept to be stored as is. Says what is wrong (a string) instead when a pack is
 * malformed or breaks the limits `WireTensorSchema` enforces on unpacked outputs.
 */
export function unpackResults(groups: readonly PackedResults[]): ItemResult[] | string {
  const out: ItemResult[] = [];
  const headers: HeaderCache = {}; // the message's packs nearly always share one header
  for (const g of groups) {
    let start = 0;
    for (let i = 0; i < g.ids.length; i++) {
      const end = g.ends[i] as number;
      const pack = g.data.subarray(start, end);
      start = end;
      let outputs;
      try {
        outputs = unpackTensors(pack, headers);
      } catch (err) {
        return `packed.ids.${i}: ${err instanceof PackError ? err.message : 'malformed outputs'}`;
      }
      if (outputs.length > LIMITS.tensorsPerItem) return `packed.ids.${i}: too many outputs`;
      for (const t of outputs) {
        if (t.name.length === 0 || t.name.length > LIMITS.nameChars || t.dims.length > LIMITS.dimsPerTensor)
          return `packed.ids.${i}: output name or dims out of bounds`;
      }
      const itemId = g.ids[i] as number;
      out.push({ itemId, jobId: g.jobId, modelSha256: g.modelSha256, ms: g.ms[i] as number, outputs, pack });
    }
  }
  return out;
}
