// Models through the packed npm package in Node (the wasm CPU path): the packaged MiniLM's
// embeddings against sentence-transformers, and SmolLM2 (GGUF) streaming transformers' greedy answer.
// The models come from scripts/fetch-models.sh; without them the tests skip, unless
// TASKLOOM_REQUIRE_MODELS=1 (CI), where a missing model fails.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { pathToFileURL } from "node:url";
import { cosine, filesOf, modelDir, packedPackage, repo } from "./harness.mjs";

let tl;
before(async () => {
  tl = await import(pathToFileURL(join(packedPackage(), "index.js")).href);
});

const fixture = (name) => JSON.parse(readFileSync(join(repo, "tests/fixtures", name), "utf8"));

test("node: MiniLM embeddings match sentence-transformers", async (t) => {
  const dir = modelDir("minilm", t);
  if (!dir) return;
  const want = fixture("minilm_expected.json");
  const model = await tl.Model.load(filesOf(dir), { device: "cpu" });
  assert.equal(model.kind, "encoder");
  assert.deepEqual(model.encode(want.texts[0]), want.ids[0]);
  const got = await model.embed(want.texts);
  got.forEach((e, i) => assert.ok(cosine(e, want.embeddings[i]) >= 0.9999, `cosine for ${want.texts[i]}`));
  model.dispose();
});

test("node: SmolLM2 GGUF streams transformers' greedy answer", async (t) => {
  const dir = modelDir("smollm2", t);
  if (!dir) return;
  const want = fixture("smollm2_expected.json");
  const name = "SmolLM2-135M-Instruct.Q4_1.gguf";
  const model = await tl.Model.load({ [name]: new Uint8Array(readFileSync(join(dir, name))) }, { device: "cpu" });
  assert.equal(model.kind, "decoder");
  const ids = [];
  let text = "";
  for await (const tok of model.generate(want.user, { chat: true, maxTokens: want.greedy_ids.length })) {
    ids.push(tok.id);
    text += tok.text;
  }
  assert.deepEqual(ids, want.greedy_ids);
  assert.equal(text, want.greedy_text);
  // A model source of the wrong kind is a typed error, not a crash.
  await assert.rejects(tl.Model.load({ "config.json": new TextEncoder().encode("{}") }, { device: "cpu" }), { code: "BAD_INPUT" });
  model.dispose();
});
