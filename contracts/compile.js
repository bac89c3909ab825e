// Compile contracts/*.sol with the pinned solc-js into abis/<Name>.json.
//
// Each artifact records the ABI, creation and runtime bytecode, the exact compiler version and
// settings, and the sha256 of every source file that went into the build (the project's own
// and the OpenZeppelin files they import), so a test can tell when an artifact is stale.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

const ROOT = path.resolve(__dirname, "..");
const CONTRACTS = ["TestToken", "StreamManager", "EscrowVault"];
const SETTINGS = {
  optimizer: { enabled: true, runs: 10000 },
  viaIR: true,
  // Not the compiler default (Cancun): the newest fork every supported chain runs (README,
  // "EVM version: Shanghai"); tests/contracts/test_evm_version.py holds the bytecode to it.
  evmVersion: "shanghai",
  metadata: { bytecodeHash: "none", appendCBOR: false },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function sha256(text) {
  return crypto.createHash("sha256").update(text).digest("hex");
}

function findImport(importPath) {
  const candidates = [path.join(ROOT, "node_modules", importPath), path.join(ROOT, importPath)];
  for (const file of candidates) {
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

// `node contracts/compile.js [--out DIR]`: DIR defaults to abis/ (the test suite compiles into a
// temporary directory and compares).
function outDir() {
  const i = process.argv.indexOf("--out");
  return i >= 0 ? path.resolve(process.argv[i + 1]) : path.join(ROOT, "abis");
}

function main() {
  const sources = {};
  for (const name of CONTRACTS) {
    const rel = `contracts/${name}.sol`;
    sources[rel] = { content: fs.readFileSync(path.join(ROOT, rel), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) console.error(e.formattedMessage);
  if (errors.length) process.exit(1);

  // Every source the compiler saw, own and imported, with its hash.
  const used = {};
  for (const src of Object.keys(output.sources).sort()) {
    const file = fs.existsSync(path.join(ROOT, src))
      ? path.join(ROOT, src)
      : path.join(ROOT, "node_modules", src);
    used[src] = sha256(fs.readFileSync(file, "utf8"));
  }
  const combined = sha256(
    Object.entries(used)
      .map(([p, h]) => `${p}:${h}\n`)
      .join("")
  );

  const out_dir = outDir();
  fs.mkdirSync(out_dir, { recursive: true });
  for (const name of CONTRACTS) {
    const out = output.contracts[`contracts/${name}.sol`][name];
    const artifact = {
      contractName: name,
      sourceName: `contracts/${name}.sol`,
      abi: out.abi,
      bytecode: "0x" + out.evm.bytecode.object,
      deployedBytecode: "0x" + out.evm.deployedBytecode.object,
      compiler: { name: "solc-js", version: solc.version(), settings: SETTINGS },
      sources: used,
      sourcesSha256: combined,
    };
    const dest = path.join(out_dir, `${name}.json`);
    fs.writeFileSync(dest, JSON.stringify(artifact, null, 2) + "\n");
    const size = out.evm.deployedBytecode.object.length / 2;
    console.log(`${name}: ${size} bytes runtime -> ${path.relative(ROOT, dest)}`);
  }
}

main();
