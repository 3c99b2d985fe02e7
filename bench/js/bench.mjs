// The JavaScript reference: same mapping, same records, JSON text in and out, best of N passes.
import { readFileSync } from "node:fs";
import jsonata from "jsonata";

const [mappingPath, dataPath, passesArg] = process.argv.slice(2);
const expr = jsonata(readFileSync(mappingPath, "utf8"));
const lines = readFileSync(dataPath, "utf8").split("\n").filter((l) => l.length > 0);
const passes = Number(passesArg ?? 3);
let best = Infinity;
let bytes = 0;
for (let p = 0; p < passes; p++) {
  const start = process.hrtime.bigint();
  bytes = 0;
  for (const line of lines) {
    const out = await expr.evaluate(JSON.parse(line));
    bytes += JSON.stringify(out).length;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  best = Math.min(best, seconds);
}
console.log(JSON.stringify({ records: lines.length, seconds: best, bytes }));
