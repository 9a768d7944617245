/**
 * `POST /api/jobs/:id/files?name=ITEM`: adds one item to an open job from one input file, as a
 * browser form can send it (the dashboard's submit form posts its files one at a time). The body
 * is the raw file: an `.npy` array, or a PNG or JPEG for a model that declares image
 * preprocessing. Only single-input models take files this way; a multi-input model's items go
 * through `POST /api/jobs/:id/items` (or `shardhub submit` with `<item>/<input>.npy` folders).
 *
 * The body is received to a temp file (`server/uploads.ts`) only after the job and model checks
 * pass, so a refused request costs no upload. The file is recognized by its bytes, never by a name
 * or content type; an array saved without its batch dim gets a leading 1 when the model's dim 0 is
 * dynamic (as `shardhub submit` does).
 * Mounted by `server/api.ts` after its token check, so it needs the operator token.
 */
import express from 'express';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { LIMITS } from '../protocol/limits.ts';
import { packTensors } from '../protocol/pack.ts';
import { describeZodError } from '../protocol/schemas.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { inputProblem } from './check.ts';
import { type Hub, HubError } from './hub.ts';
import { checkItemInputs } from './io/inputs.ts';
import { imageToTensor, ImageError } from './io/images.ts';
import { NPY_MAX_HEADER_BYTES, NpyError, readNpy } from './io/npy.ts';
import { clean } from './logger.ts';
import { discard, receiveToFile } from './uploads.ts';

/** Largest file one request may carry: one tensor plus its .npy header (images are smaller). */
export const MAX_FILE_BYTES = LIMITS.tensorBytes + NPY_MAX_HEADER_BYTES + 16;

export const FileQuerySchema = z.object({
  name: z
    .string()
    .min(1, 'name (the item name) is required')
    .max(LIMITS.nameChars)
    // eslint-disable-next-line no-control-regex
    .regex(/^[^\u0000-\u001f\u007f/\\]+$/, 'name must not contain control characters or slashes'),
});

const NPY_MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
const isNpy = (b: Uint8Array) => NPY_MAGIC.every((x, i) => b[i] === x);
const isImage = (b: Uint8Array) =>
  (b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) ||
  (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff);

/** Builds the router; see the file comment. */
export function filesRouter(hub: Hub): express.Router {
  const r = express.Router();

  r.post('/jobs/:id/files', async (req, res) => {
    const id = req.params.id;
    if (typeof id !== 'string' || id.length > LIMITS.nameChars)
      throw new HubError('invalid_request', 'bad id', 400);
    const q = FileQuerySchema.safeParse(req.query);
    if (!q.success) throw new HubError('invalid_request', describeZodError(q.error), 400);
    const { job, model } = await hub.requireOpenJob(id);
    const spec = model.inputs[0];
    if (model.inputs.length !== 1 || !spec) {
      throw new HubError(
        'multi_input_model',
        `model "${model.name}" has ${model.inputs.length} inputs; send its items with POST /api/jobs/${job.id}/items (or shardhub submit)`,
        400,
      );
    }
    // Received to disk (server/uploads.ts) once the job may take it, then read back to parse.
    const upload = await receiveToFile(req, res, {
      dir: hub.models.incomingDir,
      limit: MAX_FILE_BYTES,
      what: 'file',
    });
    const body = await readFile(upload.path).finally(() => discard(upload));
    const what = `file "${clean(q.data.name, 80)}"`;
    let tensor: WireTensor;
    try {
      if (isNpy(body)) {
        tensor = readNpy(body, spec.name);
        if (typeof spec.shape[0] === 'string' && tensor.dims.length === spec.shape.length - 1)
          tensor = { ...tensor, dims: [1, ...tensor.dims] };
      } else if (isImage(body)) {
        if (!model.preprocessing)
          throw new HubError(
            'invalid_item',
            `${what} is an image, but model "${model.name}" takes arrays: send an .npy file`,
            400,
          );
        tensor = imageToTensor(body, model.preprocessing, what);
      } else {
        throw new HubError(
          'unsupported_file',
          `${what} is neither an .npy array nor a PNG or JPEG image`,
          415,
        );
      }
      checkItemInputs([tensor], model, what);
    } catch (err) {
      if (err instanceof HubError) throw err;
      if (err instanceof NpyError) throw new HubError('invalid_item', `${what}: ${err.message}`, 400);
      if (err instanceof ImageError) throw new HubError('invalid_item', err.message, 400);
      throw new HubError('invalid_item', (err as Error).message, 400);
    }
    const problem = inputProblem(model, [tensor]);
    if (problem) throw new HubError('invalid_item', `${what}: ${problem}`, 400);
    const [itemId] = await hub.appendItems(job.id, [{ name: q.data.name, inputs: packTensors([tensor]) }]);
    res.status(201).json({ data: { itemId, name: q.data.name, itemCount: job.itemCount + 1 } });
  });
  return r;
}
