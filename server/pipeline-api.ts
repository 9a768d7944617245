/**
 * OCR over REST (`server/pipeline.ts` does the work):
 * - `POST /api/ocr` `{images: [{name, data: base64}], priority?, redundancy?, cache?}` starts a run;
 * - `GET /api/ocr/:id` its progress, `?wait=1` once every page has its outcome, with the results.
 * Any hub answers for any run (several hubs): the run's owner from memory, the others from the
 * run's record in the store. Mounted behind the operator token by `server/api.ts`.
 */
import express from 'express';
import { z } from 'zod';
import { LIMITS } from '../protocol/limits.ts';
import { describeZodError } from '../protocol/schemas.ts';
import { type Hub, HubError } from './hub.ts';
import { OcrService } from './pipeline.ts';

/** Images per run over REST: a run's encoded pages are kept in memory until each is stored for detection. */
export const OCR_MAX_IMAGES = 1000;

/** What `POST /api/ocr` takes (also the OpenAPI document's request body). */
export const OcrRequestSchema = z.strictObject({
  images: z
    .array(
      z.strictObject({
        name: z.string().min(1).max(LIMITS.nameChars),
        /** base64 of a PNG or JPEG file */
        data: z.string().max(LIMITS.jsonBodyBytes * 64),
      }),
    )
    .min(1)
    .max(OCR_MAX_IMAGES),
  priority: z.number().int().min(-100).max(100).default(0),
  redundancy: z.number().int().min(1).max(5).default(1),
  /** Answer pages read before from the result cache. */
  cache: z.boolean().default(true),
});

/** The `/ocr` routes. */
export function ocrRouter(hub: Hub): express.Router {
  const r = express.Router();
  const json = express.json({ limit: LIMITS.jsonBodyBytes * 64 });
  r.post('/ocr', json, async (req, res) => {
    const parsed = OcrRequestSchema.safeParse(req.body);
    if (!parsed.success) throw new HubError('invalid_request', describeZodError(parsed.error), 400);
    const { images, priority, redundancy, cache } = parsed.data;
    const svc = await OcrService.of(hub);
    const pages = images.map((im) => ({
      name: im.name,
      bytes: new Uint8Array(Buffer.from(im.data, 'base64')),
    }));
    res.status(201).json({ data: await svc.submit(pages, { priority, redundancy, cache }) });
  });
  r.get('/ocr/:id', async (req, res) => {
    const svc = await OcrService.of(hub);
    const id = String(req.params.id).slice(0, LIMITS.nameChars);
    if (req.query.wait === '1') {
      // A client that goes away stops the wait (a hub not owning the run polls the store for it).
      const gone = new AbortController();
      res.on('close', () => gone.abort(new Error('the client closed the request')));
      let view;
      try {
        view = await svc.wait(id, gone.signal);
      } catch (err) {
        if (gone.signal.aborted) return;
        throw err;
      }
      return void res.json({ data: view });
    }
    res.json({ data: await svc.view(id, req.query.results === '1') });
  });
  return r;
}
