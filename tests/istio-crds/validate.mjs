// Validates Istio resources against Istio's own CRD schemas, as published on
// npm in @kubernetes-models/istio (pinned in package.json; generated from
// Istio 1.29.2's manifests/charts/base/files/crd-all.gen.yaml).
//
// Two checks per resource:
// 1. the package's compiled JSON Schema validator for the resource's group,
//    version and kind (types, enums, patterns, required fields, ranges); a
//    group/version/kind the package has no schema for is an error;
// 2. strictness, as `kubectl apply`'s default strict field validation: an
//    unknown field is an error. The compiled validators accept unknown fields,
//    so the TypeScript compiler checks each resource, as an object literal,
//    against the package's typings for it (excess-property checks).
//
// stdin: JSON [{"file": "...", "doc": {...}}, ...]
// stdout: JSON {"problems": ["<file>: ...", ...]}
// Exit 0 when the check ran (whatever it found), 2 when it could not run.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import ts from "typescript";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, "node_modules", "@kubernetes-models", "istio");

const pascal = (text) =>
  text
    .split(/[.-]/)
    .filter((part) => part.length > 0)
    .map((part) => part[0].toUpperCase() + part.slice(1))
    .join("");

/** Where the package keeps a group/version/kind, or null if it has none. */
function locate(apiVersion, kind) {
  const slash = typeof apiVersion === "string" ? apiVersion.indexOf("/") : -1;
  if (slash < 0 || typeof kind !== "string" || !/^[A-Za-z]+$/.test(kind)) return null;
  const group = apiVersion.slice(0, slash);
  const version = apiVersion.slice(slash + 1);
  if (!/^[a-z0-9.-]+$/.test(group) || !/^v[0-9a-z]+$/.test(version)) return null;
  const schema = join(pkg, "_schemas", `${pascal(group)}${pascal(version)}${kind}.js`);
  const typings = join(pkg, group, version, `${kind}.d.ts`);
  if (!existsSync(schema) || !existsSync(typings)) return null;
  return { schema, module: `@kubernetes-models/istio/${group}/${version}/${kind}`, kind };
}

function describe(error) {
  const where = error.instancePath || "/";
  const params = error.params ? ` ${JSON.stringify(error.params)}` : "";
  return `at '${where}': ${error.message ?? error.keyword}${params}`;
}

async function schemaProblems(manifests) {
  const problems = [];
  for (const m of manifests) {
    const found = locate(m.doc?.apiVersion, m.doc?.kind);
    if (!found) {
      problems.push(`${m.file}: Istio has no CRD for ${m.doc?.kind} ${m.doc?.apiVersion}`);
      continue;
    }
    m.found = found;
    const { validate } = await import(pathToFileURL(found.schema).href);
    if (!validate(m.doc)) {
      for (const error of validate.errors ?? []) problems.push(`${m.file}: ${describe(error)}`);
    }
  }
  return problems;
}

function strictProblems(manifests) {
  const checked = manifests.filter((m) => m.found);
  if (checked.length === 0) return [];
  const lines = [];
  const starts = [];
  checked.forEach((m, i) => {
    const type = `I${m.found.kind}`;
    lines.push(`import type { ${type} as T${i} } from "${m.found.module}";`);
  });
  checked.forEach((m, i) => {
    starts.push({ line: lines.length, file: m.file });
    const literal = JSON.stringify(m.doc, null, 2).split("\n");
    lines.push(`export const r${i}: T${i} = ${literal[0]}`, ...literal.slice(1));
    lines[lines.length - 1] += ";";
  });
  const fileName = join(here, "__manifests__.ts");
  const text = lines.join("\n");
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, language, ...rest) =>
    name === fileName ? ts.createSourceFile(name, text, language) : getSourceFile(name, language, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === fileName || fileExists(name);
  const readFile = host.readFile.bind(host);
  host.readFile = (name) => (name === fileName ? text : readFile(name));
  const program = ts.createProgram([fileName], options, host);
  const problems = [];
  for (const d of ts.getPreEmitDiagnostics(program)) {
    let message = ts.flattenDiagnosticMessageText(d.messageText, " ");
    if (message.length > 300) message = `${message.slice(0, 300)}…`;
    if (!d.file || d.file.fileName !== fileName || d.start === undefined) {
      problems.push(`typescript: ${message}`);
      continue;
    }
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    const owner = [...starts].reverse().find((s) => s.line <= line);
    const snippet = text.split("\n")[line].trim();
    problems.push(`${owner ? owner.file : "?"}: near '${snippet}': ${message}`);
  }
  return problems;
}

try {
  const manifests = JSON.parse(readFileSync(0, "utf8"));
  if (!Array.isArray(manifests)) throw new Error("stdin must be a JSON array of {file, doc}");
  const problems = [...(await schemaProblems(manifests)), ...strictProblems(manifests)];
  process.stdout.write(JSON.stringify({ problems }) + "\n");
} catch (error) {
  process.stderr.write(`istio-crds/validate.mjs: ${error?.stack ?? error}\n`);
  process.exit(2);
}
