/**
 * The REST API's OpenAPI 3.1 document, served by the hub at `GET /api/openapi.json`. Request
 * bodies and query parameters are generated from the zod schemas the routes validate with
 * (`z.toJSONSchema`), so the document cannot drift from what the hub accepts; the list of routes
 * is checked against the Express router by `test/unit/openapi.test.ts`.
 */
import { z } from 'zod';
import { CreateJobSchema, PageSchema, PatchJobSchema, WorkersQuerySchema } from './api.ts';
import { FileQuerySchema } from './api-files.ts';
import { OcrRequestSchema } from './pipeline-api.ts';

type Json = Record<string, unknown>;

/** A zod schema as the JSON Schema of what a client sends. */
function schema(s: z.ZodType): Json {
  const { $schema: _drop, ...rest } = z.toJSONSchema(s, { io: 'input', unrepresentable: 'any' }) as Json;
  return rest;
}

/** Query parameters from a zod object schema. */
function query(s: z.ZodObject): Json[] {
  const js = schema(s) as { properties?: Record<string, Json>; required?: string[] };
  return Object.entries(js.properties ?? {}).map(([name, p]) => ({
    name,
    in: 'query',
    required: js.required?.includes(name) ?? false,
    schema: p,
  }));
}

const path = (name: string, description: string): Json => ({
  name,
  in: 'path',
  required: true,
  description,
  schema: { type: 'string', maxLength: 128 },
});
const jobId = path('id', 'the job id');

/** Every reply is `{data}` or `{error: {code, message}}`. */
const ok = (description: string, type = 'application/json'): Json => ({
  200: {
    description,
    content: { [type]: { schema: type === 'application/json' ? { $ref: '#/components/schemas/Data' } : {} } },
  },
  default: { $ref: '#/components/responses/Error' },
});
const created = (description: string): Json => ({
  201: { description, content: { 'application/json': { schema: { $ref: '#/components/schemas/Data' } } } },
  default: { $ref: '#/components/responses/Error' },
});
const json = (s: z.ZodType): Json => ({
  required: true,
  content: { 'application/json': { schema: schema(s) } },
});
const binary = (description: string): Json => ({
  required: true,
  description,
  content: {
    'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } },
  },
});
const open = { security: [] as unknown[] };

/** Builds the document (`version`: the hub's package version). */
export function openApiDocument(version: string): Json {
  return {
    openapi: '3.1.0',
    info: {
      title: 'shardhub hub REST API',
      version,
      description:
        'Jobs, items, results and workers of a shardhub hub. Every route but /health, /openapi.json and ' +
        '/models/{sha} needs the operator token: `Authorization: Bearer <token>`.',
    },
    servers: [{ url: '/api' }],
    security: [{ operatorToken: [] }],
    components: {
      securitySchemes: { operatorToken: { type: 'http', scheme: 'bearer' } },
      schemas: {
        Data: { type: 'object', properties: { data: {} }, required: ['data'] },
        Error: {
          type: 'object',
          properties: {
            error: {
              type: 'object',
              properties: { code: { type: 'string' }, message: { type: 'string' } },
              required: ['code', 'message'],
            },
          },
          required: ['error'],
        },
      },
      responses: {
        Error: {
          description: 'the request was refused: `{error: {code, message}}`',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        },
      },
    },
    paths: {
      '/openapi.json': { get: { summary: 'this document', ...open, responses: ok('the OpenAPI document') } },
      '/health': {
        get: { summary: 'liveness and the number of workers online', ...open, responses: ok('ok') },
      },
      '/models/{sha}': {
        get: {
          summary: 'model bytes by sha256 (public: anonymous workers fetch them)',
          ...open,
          parameters: [path('sha', 'lower-case sha256 hex of the model file')],
          responses: ok('the ONNX file', 'application/octet-stream'),
        },
      },
      '/models': {
        get: { summary: 'the registry: models and the problems of those skipped', responses: ok('models') },
        post: {
          summary: 'upload an ONNX model; its signature is read from the file',
          parameters: [
            { name: 'name', in: 'query', required: true, schema: { type: 'string' } },
            { name: 'description', in: 'query', schema: { type: 'string', maxLength: 500 } },
            { name: 'batchable', in: 'query', schema: { type: 'string', enum: ['true', 'false'] } },
            { name: 'batchSize', in: 'query', schema: { type: 'integer' } },
            { name: 'atol', in: 'query', schema: { type: 'number' } },
            { name: 'rtol', in: 'query', schema: { type: 'number' } },
          ],
          requestBody: binary('the ONNX file'),
          responses: created('the registered model'),
        },
      },
      '/jobs': {
        get: {
          summary: 'the latest jobs',
          parameters: query(z.object({ limit: z.coerce.number().int().min(1).max(1000).default(100) })),
          responses: ok('jobs'),
        },
        post: {
          summary: 'create a job; with inline items it is sealed at once, else it stays open for uploads',
          requestBody: json(CreateJobSchema),
          responses: created('the job'),
        },
      },
      '/jobs/{id}': {
        get: {
          summary: 'a job in full: progress, rate, ETA, failed items',
          parameters: [jobId],
          responses: ok('the job'),
        },
        patch: {
          summary: "change a job's priority",
          parameters: [jobId],
          requestBody: json(PatchJobSchema),
          responses: ok('the job'),
        },
      },
      '/jobs/{id}/items': {
        get: {
          summary: "a page of a job's items",
          parameters: [jobId, ...query(PageSchema)],
          responses: ok('items'),
        },
        post: {
          summary: 'add items to an open job (protocol/pack.ts packItems)',
          parameters: [jobId],
          requestBody: binary('packed items'),
          responses: created('how many were added'),
        },
      },
      '/jobs/{id}/files': {
        post: {
          summary: 'add one item from one input file (.npy, PNG or JPEG) to an open job',
          parameters: [jobId, ...query(FileQuerySchema)],
          requestBody: binary('the file'),
          responses: created('the item'),
        },
      },
      '/jobs/{id}/seal': {
        post: {
          summary: 'seal an open job: no more items; it is queued',
          parameters: [jobId],
          responses: ok('the job'),
        },
      },
      '/jobs/{id}/cancel': {
        post: { summary: 'cancel a job', parameters: [jobId], responses: ok('the job') },
      },
      '/jobs/{id}/fairness': {
        get: {
          summary: "each worker's share of a job against its fair share",
          parameters: [jobId],
          responses: ok('the report'),
        },
      },
      '/jobs/{id}/events': {
        get: {
          summary: "a job's events (steals, requeues, quarantines...)",
          parameters: [jobId],
          responses: ok('events'),
        },
      },
      '/jobs/{id}/items/{itemId}/result': {
        get: {
          summary: "one item's outputs: the tensor pack, or one output as .npy with ?output=NAME",
          parameters: [
            jobId,
            { name: 'itemId', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } },
            { name: 'output', in: 'query', schema: { type: 'string' } },
          ],
          responses: ok('the outputs', 'application/octet-stream'),
        },
      },
      '/jobs/{id}/results.tar': {
        get: {
          summary: 'all results as one tar of results/<item>/<output>.npy, streamed',
          parameters: [jobId],
          responses: ok('the archive', 'application/x-tar'),
        },
      },
      '/hubs': {
        get: {
          summary: "the hubs sharing this hub's store, their epochs and leases (the hub health view)",
          responses: ok('hubs'),
        },
      },
      '/workers': {
        get: {
          summary: "workers, with filters (with several hubs: every hub's, each with its hub)",
          parameters: query(WorkersQuerySchema),
          responses: ok('workers'),
        },
      },
      '/workers/{id}': {
        delete: {
          summary: 'remove an offline worker from the list (409 while it is connected)',
          parameters: [path('id', 'the worker id')],
          responses: ok('the removed id'),
        },
      },
      '/ocr': {
        post: {
          summary:
            'read the text of scanned pages: a run of three stage jobs (detection, direction, recognition)',
          requestBody: json(OcrRequestSchema),
          responses: created('the run'),
        },
      },
      '/ocr/{id}': {
        get: {
          summary:
            "an OCR run's progress; ?results=1 with each page's lines, ?wait=1 once every page is done; any hub answers (several hubs: from the store on a hub that does not own the run)",
          parameters: [
            path('id', 'the run id'),
            { name: 'results', in: 'query', schema: { type: 'string', enum: ['1'] } },
            { name: 'wait', in: 'query', schema: { type: 'string', enum: ['1'] } },
          ],
          responses: ok('the run'),
        },
      },
      '/workers/{id}/{action}': {
        post: {
          summary: 'pause, resume, drain or evict a worker',
          parameters: [
            path('id', 'the worker id'),
            {
              name: 'action',
              in: 'path',
              required: true,
              schema: { type: 'string', enum: ['pause', 'resume', 'drain', 'evict'] },
            },
          ],
          responses: ok('the worker'),
        },
      },
    },
  };
}
