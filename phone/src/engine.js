// The one-pass model in the browser: LiteRT.js (WebAssembly, XNNPACK on the CPU).
//
// One call per picture gives the three outputs of helpers/screening.py OnePassEngine:
// P(PNEUMONIA), the 7x7 logit map and the pooled features. LiteRT.js manages tensors by
// hand: every input and output tensor is deleted after the call, or each frame of the
// camera would leak its buffers in the wasm heap.

import {loadLiteRt, loadAndCompile, Tensor} from "@litertjs/core";

let runtime = null;

// Load the wasm runtime once. The folder holds the builds; LiteRT.js picks the one the browser runs
// (relaxed SIMD or not), so only one is downloaded.
export function loadRuntime(wasmFolder) {
  if (runtime === null) runtime = loadLiteRt(wasmFolder);
  return runtime;
}

function sameShape(a, b) {
  return a.length === b.length && a.every((value, index) => Number(value) === Number(b[index]));
}

export class OnePassModel {
  // variant: the bundle.json entry; bytes: the .tflite file.
  static async create(variant, bytes) {
    const started = performance.now();
    const compiled = await loadAndCompile(bytes, {accelerator: "wasm"});
    const model = new OnePassModel(variant, compiled);
    model.compileMs = performance.now() - started;
    return model;
  }

  constructor(variant, compiled) {
    this.variant = variant;
    this.compiled = compiled;
    const inputs = compiled.getInputDetails();
    if (inputs.length !== 1) throw new Error(`${variant.file} has ${inputs.length} inputs; a screening model has one.`);
    this.inputShape = Array.from(inputs[0].shape);
    this.inputDtype = inputs[0].dtype;
    if (this.inputDtype !== variant.input.dtype) {
      throw new Error(`${variant.file} takes ${this.inputDtype}, its bundle entry says ${variant.input.dtype}: export it again.`);
    }
    // Outputs by role, matched by shape as helpers/screening.py _output_roles does.
    const outputs = compiled.getOutputDetails();
    this.roleIndex = {};
    for (const [role, declared] of Object.entries(variant.outputs)) {
      const index = outputs.findIndex(detail => sameShape(Array.from(detail.shape), declared.shape));
      if (index < 0) throw new Error(`${variant.file} has no output of shape [${declared.shape}] (${role}): export it again.`);
      this.roleIndex[role] = index;
    }
    this.outputCount = outputs.length;
  }

  // data: Uint8Array or Float32Array (1 * 224 * 224 * 3) -> {probability, logitMap, features}.
  async run(data) {
    const input = new Tensor(data, this.inputShape);
    let outputs = [];
    try {
      outputs = await this.compiled.run(input);
      const read = role => Float32Array.from(outputs[this.roleIndex[role]].toTypedArray());  // a copy, out of the wasm heap
      return {probability: read("probability")[0], logitMap: read("logit_map"), features: read("pooled_features")};
    } finally {
      input.delete();
      for (const tensor of outputs) tensor.delete();
    }
  }

  delete() { this.compiled.delete(); }
}
