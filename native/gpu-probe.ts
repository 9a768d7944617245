/**
 * What WebGPU (onnxruntime-node's bundled Dawn, on Vulkan under Linux) would run on here: is there a
 * Vulkan loader, does Dawn find an adapter, and which device it is (vendor, architecture, device,
 * driver, memory where known), software or a real GPU.
 *
 * onnxruntime-node does not say which adapter its Dawn picked, so the answer is put together from
 * what the machine tells: a child process loads the Vulkan loader and starts the WebGPU provider
 * on a one-node model (a child, so that a driver that aborts takes only the probe down, and so that
 * tests can give it their own environment); then the adapter is named by `vulkaninfo --summary`
 * where installed, else by the Vulkan drivers the loader would use (`VK_ICD_FILENAMES`,
 * `VK_DRIVER_FILES`, the `icd.d` directories) matched with the display devices on the PCI bus
 * (`/sys/bus/pci/devices`), `nvidia-smi` (name, memory) and amdgpu's `mem_info_vram_total`.
 * SwiftShader and lavapipe/llvmpipe are software: Dawn runs on them, many times slower than the CPU
 * provider, so the node takes them only when told to (`backend-select.ts`).
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, delimiter, join } from 'node:path';
import type { Capabilities } from '../protocol/events.ts';
import { detectNvidiaGpu, type GpuInfo } from './nvidia-smi.ts';

const require = createRequire(import.meta.url);

/** A WebGPU adapter as the node reports it (the browser page reports the same fields). */
export interface AdapterInfo {
  /** e.g. "NVIDIA GeForce RTX 3090", "SwiftShader Device (Subzero)". */
  name: string;
  vendor: string;
  /** e.g. "swiftshader", "llvmpipe"; empty where not known. */
  architecture: string;
  /** PCI device id (hex) where known. */
  device: string;
  /** The Vulkan driver (and its version where known). */
  driver: string;
  memoryBytes?: number;
  /** No GPU behind it: SwiftShader, lavapipe/llvmpipe, a CPU-type Vulkan device. */
  software: boolean;
  /** Where the identity came from. */
  source: 'vulkaninfo' | 'drivers';
}

/** A Vulkan driver (ICD) the loader would use. */
export interface VulkanDriver {
  /** Its manifest file. */
  file: string;
  /** The library it names. */
  library: string;
  software: boolean;
  /** PCI vendor id (lower-case hex, e.g. "10de") of the GPUs it drives, where its name tells. */
  vendorId?: string;
}

/** A display controller on the PCI bus. */
export interface PciGpu {
  vendorId: string;
  deviceId: string;
  /** The kernel driver bound to it (e.g. "nvidia", "amdgpu", "i915"). */
  kernelDriver?: string;
  memoryBytes?: number;
}

/** What the probe found. */
export interface WebGpuProbe {
  /** The Vulkan loader: `found` false with the loader's error (Linux only; elsewhere Dawn uses D3D12/Metal). */
  loader: { found: boolean; error?: string };
  /** Whether this onnxruntime-node build has the WebGPU provider. */
  provider: boolean;
  /** The WebGPU provider started on an adapter and ran the probe model; else why not. */
  adapter: { ok: true } | { ok: false; error: string };
  /** Dawn's own warnings (e.g. why it refused a driver), at most a few hundred characters. */
  dawnWarnings?: string;
  drivers: VulkanDriver[];
  /** The adapter Dawn most likely runs on (see the file comment); absent when there is none. */
  info?: AdapterInfo;
  /** How long the probe took. */
  ms: number;
}

/** PCI vendor ids by name. */
const VENDORS: Record<string, string> = {
  '10de': 'NVIDIA',
  '1002': 'AMD',
  '1022': 'AMD',
  '8086': 'Intel',
  '13b5': 'ARM',
  '5143': 'Qualcomm',
  '106b': 'Apple',
  '1af4': 'virtio',
  '15ad': 'VMware',
};

/** Which vendor a Vulkan driver library is for, by its name. */
const DRIVER_VENDORS: [RegExp, string][] = [
  [/nvidia/i, '10de'],
  [/radeon|amdvlk|amdgpu/i, '1002'],
  [/intel/i, '8086'],
];

/** Software Vulkan drivers: no GPU behind them. */
const SOFTWARE_DRIVER = /swiftshader|lvp|lavapipe|llvmpipe/i;

/**
 * A one-node model (Relu, x[1,4] float32 → y), encoded with onnx-proto as in `models/build.ts`; a
 * unit test checks these bytes against a fresh encoding. Kept as bytes so the probe does not load
 * the ONNX schema into the node's heap.
 */
export const PROBE_MODEL_BASE64 =
  'CAgSEnNoYXJkaHViLWdwdS1wcm9iZTpDCgwKAXgSAXkiBFJlbHUSCWdwdS1wcm9iZVoTCgF4Eg4KDAgBEggKAggBCgIIBGITCgF5Eg4KDAgBEggKAggBCgIIBEIECgAQEQ==';

/**
 * The child's script (CommonJS, run with `node -e`): loads the Vulkan loader by the name Dawn uses
 * and starts the WebGPU provider on the probe model; prints one JSON line.
 */
const CHILD = `
const out = { loader: { found: true }, provider: false, adapter: { ok: false, error: 'not tried' } };
const loaderName = process.env.SHARDHUB_PROBE_LOADER;
if (loaderName) {
  try { process.dlopen({ exports: {} }, loaderName); }
  catch (e) {
    // A library that loads but is not a Node addon is what we want: the loader is there.
    if (!/did not self-register|napi_register_module/i.test(e.message))
      out.loader = { found: false, error: e.message };
  }
}
const finish = () => { process.stdout.write(JSON.stringify(out) + '\\n'); process.exit(0); };
const ort = require(process.env.SHARDHUB_PROBE_ORT);
out.provider = ort.listSupportedBackends().some((b) => b.name === 'webgpu');
if (!out.provider || !out.loader.found) finish();
else {
  const bytes = Buffer.from(process.env.SHARDHUB_PROBE_MODEL, 'base64');
  ort.InferenceSession.create(bytes, { executionProviders: ['webgpu'], logSeverityLevel: 3 })
    .then(async (s) => {
      const r = await s.run({ x: new ort.Tensor('float32', Float32Array.from([-1, 0, 2, -3]), [1, 4]) });
      const y = Array.from(r.y.data);
      out.adapter = y.join(',') === '0,0,2,0' ? { ok: true } : { ok: false, error: 'the probe model gave wrong outputs: ' + y.join(',') };
      await s.release();
    })
    .catch((e) => { out.adapter = { ok: false, error: String(e && e.message || e) }; })
    .finally(finish);
}
`;

/** The Vulkan loader's file name where Dawn uses Vulkan (Linux); undefined elsewhere. */
export function vulkanLoaderName(platform = process.platform): string | undefined {
  if (platform === 'linux' || platform === 'android' || platform === 'freebsd') return 'libvulkan.so.1';
  return undefined;
}

/** Options of {@link probeWebGpu}. */
export interface ProbeOptions {
  /** Environment of the probe and the tools it runs (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Give up on the child after this long (default 60 s: Dawn compiles shaders on a busy CPU). */
  timeoutMs?: number;
  /** The NVIDIA GPU when the caller already asked `nvidia-smi` (null: none). */
  nvidia?: GpuInfo | null;
  /** Where the PCI devices are listed (tests point it elsewhere). */
  pciRoot?: string;
}

/** Runs the probe; see the file comment. Never rejects: what failed is in the result. */
export async function probeWebGpu(opts: ProbeOptions = {}): Promise<WebGpuProbe> {
  const started = Date.now();
  const env = opts.env ?? process.env;
  const loader = vulkanLoaderName();
  const child = await runChild(env, loader, opts.timeoutMs ?? 60_000);
  const drivers = vulkanDrivers(env);
  const probe: WebGpuProbe = { ...child, drivers, ms: 0 };
  if (probe.adapter.ok) {
    const nvidia = opts.nvidia === undefined ? await detectNvidiaGpu(3000, env) : (opts.nvidia ?? undefined);
    const summary = await vulkaninfoSummary(env);
    probe.info =
      (summary && adapterFromVulkaninfo(summary, pciGpus(opts.pciRoot), nvidia)) ??
      adapterFromDrivers(drivers, pciGpus(opts.pciRoot), nvidia);
  }
  probe.ms = Date.now() - started;
  return probe;
}

function runChild(
  env: NodeJS.ProcessEnv,
  loader: string | undefined,
  timeoutMs: number,
): Promise<Pick<WebGpuProbe, 'loader' | 'provider' | 'adapter' | 'dawnWarnings'>> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['-e', CHILD],
      {
        env: {
          ...env,
          SHARDHUB_PROBE_LOADER: loader ?? '',
          SHARDHUB_PROBE_ORT: require.resolve('onnxruntime-node'),
          SHARDHUB_PROBE_MODEL: PROBE_MODEL_BASE64,
          NODE_OPTIONS: '',
        },
        timeout: timeoutMs,
        maxBuffer: 1 << 20,
        windowsHide: true,
      },
      (err, stdout, stderr) => {
        const warnings = dawnWarnings(stderr);
        const line = stdout.trim().split('\n').pop() ?? '';
        try {
          const parsed = JSON.parse(line) as Pick<WebGpuProbe, 'loader' | 'provider' | 'adapter'>;
          resolve({ ...parsed, ...(warnings ? { dawnWarnings: warnings } : {}) });
        } catch {
          const why = err?.killed
            ? `the WebGPU probe did not finish in ${timeoutMs} ms`
            : `the WebGPU probe crashed (${err ? (err.signal ?? `exit ${String(err.code)}`) : 'no answer'})${warnings ? `: ${warnings}` : ''}`;
          resolve({ loader: { found: true }, provider: true, adapter: { ok: false, error: why } });
        }
      },
    );
  });
}

/** Dawn's and the Vulkan loader's complaints on stderr, minus noise, cut short. */
export function dawnWarnings(stderr: string): string | undefined {
  const lines = stderr
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !/XDG_RUNTIME_DIR/.test(l) && !l.startsWith('at '));
  const text = lines.join(' ').replace(/\s+/g, ' ').slice(0, 400);
  return text || undefined;
}

/** The Vulkan drivers (ICD manifests) the loader would use with this environment. */
export function vulkanDrivers(env: NodeJS.ProcessEnv = process.env): VulkanDriver[] {
  const listed = env.VK_DRIVER_FILES || env.VK_ICD_FILENAMES;
  let files: string[];
  if (listed) {
    files = listed.split(delimiter).flatMap((p) => manifestsIn(p, true));
  } else {
    const dataDirs = (env.XDG_DATA_DIRS || '/usr/local/share:/usr/share').split(':');
    const dirs = ['/etc/vulkan/icd.d', ...dataDirs.map((d) => join(d, 'vulkan', 'icd.d'))];
    files = [...new Set(dirs)].flatMap((d) => manifestsIn(d, false));
  }
  const drivers: VulkanDriver[] = [];
  for (const file of files) {
    let library: string;
    try {
      const manifest = JSON.parse(readFileSync(file, 'utf8')) as { ICD?: { library_path?: unknown } };
      if (typeof manifest.ICD?.library_path !== 'string') continue;
      library = manifest.ICD.library_path;
    } catch {
      continue;
    }
    const name = `${basename(file)} ${basename(library)}`;
    const software = SOFTWARE_DRIVER.test(name);
    const vendorId = software ? undefined : DRIVER_VENDORS.find(([re]) => re.test(name))?.[1];
    drivers.push({ file, library, software, ...(vendorId ? { vendorId } : {}) });
  }
  return drivers;
}

/** Manifest files at a path: the file itself, or the `.json` files of a directory. */
function manifestsIn(path: string, fileOk: boolean): string[] {
  try {
    if (statSync(path).isDirectory())
      return readdirSync(path)
        .filter((f) => f.endsWith('.json'))
        .sort()
        .map((f) => join(path, f));
    return fileOk ? [path] : [];
  } catch {
    return [];
  }
}

/** Display controllers (PCI class 0x03xxxx) with their kernel driver and, for amdgpu, VRAM size. */
export function pciGpus(root = '/sys/bus/pci/devices'): PciGpu[] {
  let entries: string[];
  try {
    entries = readdirSync(root);
  } catch {
    return [];
  }
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  const gpus: PciGpu[] = [];
  for (const e of entries.sort()) {
    const dir = join(root, e);
    if (!read(join(dir, 'class'))?.startsWith('0x03')) continue;
    const vendorId = read(join(dir, 'vendor'))?.replace(/^0x/, '').toLowerCase();
    const deviceId = read(join(dir, 'device'))?.replace(/^0x/, '').toLowerCase();
    if (!vendorId || !deviceId) continue;
    let kernelDriver: string | undefined;
    try {
      kernelDriver = basename(readlinkSync(join(dir, 'driver')));
    } catch {
      kernelDriver = undefined;
    }
    const vram = Number(read(join(dir, 'mem_info_vram_total')));
    gpus.push({
      vendorId,
      deviceId,
      ...(kernelDriver ? { kernelDriver } : {}),
      ...(Number.isFinite(vram) && vram > 0 ? { memoryBytes: vram } : {}),
    });
  }
  return gpus;
}

/** One device of `vulkaninfo --summary`. */
export interface VulkanDevice {
  deviceName: string;
  deviceType: string;
  vendorID: string;
  deviceID: string;
  driverName: string;
  driverInfo: string;
  apiVersion: string;
}

/** Parses the "Devices:" part of `vulkaninfo --summary`. */
export function parseVulkaninfoSummary(text: string): VulkanDevice[] {
  const devices: VulkanDevice[] = [];
  let current: Record<string, string> | undefined;
  const push = () => {
    if (current?.deviceName)
      devices.push({
        deviceName: current.deviceName,
        deviceType: current.deviceType ?? '',
        vendorID: (current.vendorID ?? '').replace(/^0x/, '').toLowerCase(),
        deviceID: (current.deviceID ?? '').replace(/^0x/, '').toLowerCase(),
        driverName: current.driverName ?? '',
        driverInfo: current.driverInfo ?? '',
        apiVersion: current.apiVersion ?? '',
      });
  };
  for (const line of text.split(/\r?\n/)) {
    if (/^GPU\d+:/.test(line.trim())) {
      push();
      current = {};
      continue;
    }
    const m = /^\s+(\w+)\s*=\s*(.*?)\s*$/.exec(line);
    if (current && m) current[m[1] as string] = m[2] as string;
  }
  push();
  return devices;
}

/** Dawn's preference with `powerPreference: 'high-performance'`: discrete first, the CPU last. */
const TYPE_RANK = ['DISCRETE_GPU', 'INTEGRATED_GPU', 'VIRTUAL_GPU', 'OTHER', 'CPU'];
const rank = (type: string) => {
  const i = TYPE_RANK.findIndex((t) => type.endsWith(t));
  return i < 0 ? TYPE_RANK.length : i;
};

/** The adapter from `vulkaninfo --summary`'s devices (the one Dawn would pick). */
export function adapterFromVulkaninfo(
  devices: VulkanDevice[],
  pci: PciGpu[] = [],
  nvidia?: GpuInfo,
): AdapterInfo | undefined {
  const best = [...devices].sort((a, b) => rank(a.deviceType) - rank(b.deviceType))[0];
  if (!best) return undefined;
  const software = best.deviceType.endsWith('CPU') || SOFTWARE_DRIVER.test(best.deviceName);
  const memoryBytes =
    best.vendorID === '10de'
      ? nvidia?.memoryTotalBytes
      : pci.find((g) => g.vendorId === best.vendorID && g.deviceId === best.deviceID)?.memoryBytes;
  return {
    name: best.deviceName,
    vendor: VENDORS[best.vendorID] ?? (best.vendorID ? `0x${best.vendorID}` : ''),
    architecture: softwareArchitecture(best.deviceName) ?? '',
    device: best.deviceID ? `0x${best.deviceID}` : '',
    driver: [best.driverName, best.driverInfo].filter(Boolean).join(' '),
    ...(memoryBytes ? { memoryBytes } : {}),
    software,
    source: 'vulkaninfo',
  };
}

function softwareArchitecture(name: string): string | undefined {
  if (/swiftshader/i.test(name)) return 'swiftshader';
  if (/llvmpipe|lvp|lavapipe/i.test(name)) return 'llvmpipe';
  return undefined;
}

/**
 * The adapter from the drivers the loader uses and the GPUs on the PCI bus, when `vulkaninfo` is
 * not installed: a hardware driver with a GPU of its vendor present wins (as Dawn prefers GPUs);
 * else a software driver. Undefined when neither fits.
 */
export function adapterFromDrivers(
  drivers: VulkanDriver[],
  pci: PciGpu[],
  nvidia?: GpuInfo,
): AdapterInfo | undefined {
  for (const d of drivers) {
    if (d.software) continue;
    const gpu = d.vendorId ? pci.find((g) => g.vendorId === d.vendorId) : pci[0];
    if (!gpu) continue;
    const isNvidia = gpu.vendorId === '10de';
    const vendor = VENDORS[gpu.vendorId] ?? `0x${gpu.vendorId}`;
    const memoryBytes = isNvidia ? nvidia?.memoryTotalBytes : gpu.memoryBytes;
    return {
      name: isNvidia && nvidia ? nvidia.name : `${vendor} GPU 0x${gpu.deviceId}`,
      vendor,
      architecture: '',
      device: `0x${gpu.deviceId}`,
      driver: [gpu.kernelDriver, basename(d.library)].filter(Boolean).join(', '),
      ...(memoryBytes ? { memoryBytes } : {}),
      software: false,
      source: 'drivers',
    };
  }
  const soft = drivers.find((d) => d.software);
  if (!soft) return undefined;
  const swift = /swiftshader/i.test(`${soft.file} ${soft.library}`);
  return {
    name: swift ? 'SwiftShader Device (Subzero)' : 'llvmpipe (lavapipe)',
    vendor: swift ? 'google' : 'mesa',
    architecture: swift ? 'swiftshader' : 'llvmpipe',
    device: '',
    driver: basename(soft.library),
    software: true,
    source: 'drivers',
  };
}

/** `vulkaninfo --summary`'s devices, or undefined when it is not installed or fails. */
function vulkaninfoSummary(env: NodeJS.ProcessEnv): Promise<VulkanDevice[] | undefined> {
  return new Promise((resolve) => {
    execFile('vulkaninfo', ['--summary'], { env, timeout: 10_000, windowsHide: true }, (err, stdout) => {
      if (err) return resolve(undefined);
      const devices = parseVulkaninfoSummary(stdout);
      resolve(devices.length > 0 ? devices : undefined);
    });
  });
}

/** An adapter as registered with the hub (`capabilities.gpu`), bounded as the hub's schema wants. */
export function adapterCapabilities(a: AdapterInfo): NonNullable<Capabilities['gpu']> {
  const cut = (v: string) => v.slice(0, 128) || undefined;
  const gpu: NonNullable<Capabilities['gpu']> = { name: a.name.slice(0, 128) || 'WebGPU adapter' };
  const vendor = cut(a.vendor);
  const architecture = cut(a.architecture);
  const driver = cut(a.driver);
  if (vendor) gpu.vendor = vendor;
  if (architecture) gpu.architecture = architecture;
  if (driver) gpu.driver = driver;
  if (a.memoryBytes !== undefined) gpu.memoryBytes = a.memoryBytes;
  if (a.software) gpu.software = true;
  return gpu;
}
