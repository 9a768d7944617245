/**
 * Ambient types for the client: Vite's asset imports (`?url`, `?worker`) and WebGPU
 * (`navigator.gpu`, `GPUAdapter`...), which TypeScript's DOM library does not carry yet.
 */
/// <reference types="vite/client" />
/// <reference types="@webgpu/types" />
