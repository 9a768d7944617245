/**
 * The OpenAPI document lists exactly the routes the hub's Express router has (every method and
 * path, both ways), its request schemas are the ones the routes validate with, and the hub serves
 * it without a token, with helmet's security headers and cross-origin isolation.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Router } from 'express';
import { apiRouter } from '../../server/api.ts';
import type { Hub } from '../../server/hub.ts';
import { openApiDocument } from '../../server/openapi.ts';
import { startHub, tempDir } from '../helpers/grid.ts';

interface Layer {
  route?: { path: string | string[]; methods: Record<string, boolean> };
  handle?: { stack?: Layer[] };
}

/** `METHOD /path/{param}` for every route of an Express router, nested routers included. */
function routesOf(router: Router): Set<string> {
  const out = new Set<string>();
  const walk = (stack: Layer[]) => {
    for (const layer of stack) {
      if (layer.route) {
        const paths = Array.isArray(layer.route.path) ? layer.route.path : [layer.route.path];
        for (const p of paths)
          for (const [m, on] of Object.entries(layer.route.methods))
            if (on && m !== '_all') out.add(`${m.toUpperCase()} ${p.replace(/:(\w+)/g, '{$1}')}`);
      } else if (layer.handle?.stack) walk(layer.handle.stack);
    }
  };
  walk((router as unknown as { stack: Layer[] }).stack);
  return out;
}

test('the OpenAPI document has every route of the API router, and no other', () => {
  // Building the router registers its routes; no request reaches the hub here.
  const routes = routesOf(apiRouter({} as Hub, 'token'));
  routes.add('GET /openapi.json'); // served by server/app.ts before the router
  const doc = openApiDocument('0.0.0') as { paths: Record<string, Record<string, unknown>> };
  const documented = new Set(
    Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`)),
  );
  const missing = [...routes].filter((r) => !documented.has(r));
  const stale = [...documented].filter((r) => !routes.has(r));
  assert.deepEqual(missing, [], 'routes missing from server/openapi.ts');
  assert.deepEqual(stale, [], 'documented routes the router does not have');
  assert.ok(routes.size >= 18, `found ${routes.size} routes`);
});

test("request schemas come from the routes' zod schemas", () => {
  const doc = openApiDocument('1.2.3') as {
    openapi: string;
    info: { version: string };
    paths: Record<
      string,
      Record<
        string,
        {
          requestBody?: { content: Record<string, { schema: Record<string, unknown> }> };
          parameters?: { name: string; in: string; schema: Record<string, unknown> }[];
        }
      >
    >;
  };
  assert.equal(doc.openapi, '3.1.0');
  assert.equal(doc.info.version, '1.2.3');
  const create = doc.paths['/jobs']?.post?.requestBody?.content['application/json']?.schema as {
    properties: Record<string, { minimum?: number; maximum?: number }>;
    required: string[];
    additionalProperties: boolean;
  };
  assert.deepEqual(create.required, ['model']);
  assert.equal(create.properties.priority?.minimum, -100);
  assert.equal(create.properties.redundancy?.maximum, 5);
  assert.ok('requirements' in create.properties && 'deadline' in create.properties);
  assert.equal(create.additionalProperties, false, 'strict: unknown fields are refused');
  const page = doc.paths['/jobs/{id}/items']?.get?.parameters?.find((p) => p.name === 'limit');
  assert.equal(page?.in, 'query');
  assert.equal(page?.schema.maximum, 1000);
});

test('the hub serves the document without a token, with security headers and cross-origin isolation', async () => {
  const tmp = tempDir();
  const server = await startHub(join(tmp.dir, 'hub'));
  try {
    const res = await fetch(`${server.url}/api/openapi.json`);
    assert.equal(res.status, 200);
    const doc = (await res.json()) as { openapi: string; paths: Record<string, unknown> };
    assert.equal(doc.openapi, '3.1.0');
    assert.ok(doc.paths['/jobs/{id}/results.tar']);
    assert.equal(res.headers.get('cross-origin-opener-policy'), 'same-origin');
    assert.equal(res.headers.get('cross-origin-embedder-policy'), 'require-corp');
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(res.headers.get('x-frame-options'), 'DENY');
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
    assert.match(res.headers.get('content-security-policy') ?? '', /script-src 'self' 'wasm-unsafe-eval'/);
    assert.equal(res.headers.get('x-powered-by'), null);
    const refused = await fetch(`${server.url}/api/jobs`);
    assert.equal(refused.status, 401, 'the rest of the API still needs the token');
  } finally {
    await server.close();
    tmp.cleanup();
  }
});
