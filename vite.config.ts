/**
 * Vite builds the browser pages from `client/` into `dist/client`, which the hub serves
 * (`server/app.ts`): `index.html` (the contributor page) at `/`, and every other page by its file
 * name. To add a page, add its HTML file to `pages` below (the dashboard goes in as `dashboard`).
 *
 * onnxruntime-web's `.wasm` and glue `.mjs` are emitted as ordinary same-origin assets (see
 * `client/inference/ort-setup.ts`); the hub serves everything with COOP/COEP, so the pages are
 * cross-origin isolated and WASM can use threads. The dev server sends the same headers.
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), 'client');

/** The pages, by output name. */
const pages: Record<string, string> = {
  index: resolve(root, 'index.html'),
  // onnxruntime-web without shardhub, for `npm run bench -- browser`.
  standalone: resolve(root, 'standalone.html'),
  // The operator dashboard (`client/dashboard/`), served by the hub at /dashboard.
  dashboard: resolve(root, 'dashboard.html'),
};

const isolation = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
};

export default defineConfig({
  root,
  base: '/',
  publicDir: false,
  build: {
    outDir: resolve(root, '../dist/client'),
    emptyOutDir: true,
    target: 'es2022',
    // onnxruntime-web's bundle is large by nature; don't warn about it.
    chunkSizeWarningLimit: 2048,
    rollupOptions: { input: pages },
  },
  worker: { format: 'es' },
  server: { headers: isolation },
  preview: { headers: isolation },
});
