// Validates custom resources (Gateway API, Envoy Gateway, Prometheus Operator) with the
// @kubernetes-models packages (npm; JSON-schema validators generated from each project's Go API
// types), run by scripts/check-manifests.sh from .cache/node.
//
//   node check-crs.mjs RESOURCES.json      a JSON array of rendered resources
//
// Two checks per resource: the package's validator (types, enums, required fields), and a strict
// one the validators do not do: every field present must be declared by the API type (read from
// the package's TypeScript declarations), so a misspelt or misplaced field fails as
// `kubectl apply --validate=strict` would. Resources of other API groups are skipped here (the
// caller validates them). Exits 1 on any error.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, "node_modules");

/** API version → package sub-path holding one module per kind. */
const MODELS = {
  "gateway.networking.k8s.io/v1": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1",
  "gateway.envoyproxy.io/v1alpha1": "@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

/** The interfaces of one .d.ts file: name → {props: name → type text, extends, imports}. */
const parsed = new Map();
function parseDts(file) {
  if (parsed.has(file)) return parsed.get(file);
  const text = fs.readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{ ([^}]+) \} from "([^"]+)";$/gm)) {
    for (const name of m[1].split(",").map((s) => s.trim())) imports.set(name, m[2]);
  }
  const interfaces = new Map();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const head = lines[i].match(/^export interface (I\w+)(?: extends ([\w, ]+))? \{$/);
    if (!head) continue;
    const props = new Map();
    for (i++; i < lines.length && lines[i] !== "}"; i++) {
      const p = lines[i].match(/^ {4}"([^"]+)"\??: (.*)$/);
      if (!p) continue;
      let type = p[2];
      if (type.endsWith("{")) {
        // An inline object type (a map such as `{ [key: string]: string }`): free-form here.
        while (i < lines.length && !/^ {4}\}/.test(lines[i])) i++;
        type = "";
      }
      props.set(p[1], type.replace(/;$/, ""));
    }
    const ext = (head[2] || "").split(",").map((s) => s.trim()).filter((s) => s && s !== "TypeMeta");
    interfaces.set(head[1], { props, ext });
  }
  const out = { imports, interfaces, dir: path.dirname(file) };
  parsed.set(file, out);
  return out;
}

/** Where type `name`, seen in `file`, is declared: [file, interface name] or null (a leaf). */
function resolve(name, file) {
  const dts = parseDts(file);
  if (dts.interfaces.has(name)) return [file, name];
  const from = dts.imports.get(name);
  if (!from) return null;
  const target = from.startsWith(".")
    ? path.join(dts.dir, from.replace(/\.js$/, ".d.ts"))
    : path.join(modules, from + ".d.ts");
  if (!fs.existsSync(target)) return null;
  const there = parseDts(target);
  // Files export their interface under a short name and re-export the long one.
  const short = [...there.interfaces.keys()];
  return short.length === 1 ? [target, short[0]] : null;
}

/** All props of an interface, inherited ones included. */
function propsOf(file, name) {
  const { props, ext } = parseDts(file).interfaces.get(name);
  const all = new Map(props);
  for (const base of ext) {
    const r = resolve(base, file);
    if (r) for (const [k, v] of propsOf(...r)) all.set(k, v);
  }
  return all;
}

/** Element type of `Array<X>` (nested), or the type itself. */
function element(type) {
  let t = type.trim();
  while (t.startsWith("Array<") && t.endsWith(">")) t = t.slice(6, -1).trim();
  return t;
}

function strict(value, file, name, at, errors) {
  if (Array.isArray(value)) {
    value.forEach((v, i) => strict(v, file, name, `${at}[${i}]`, errors));
    return;
  }
  if (value === null || typeof value !== "object") return;
  const props = propsOf(file, name);
  for (const [key, child] of Object.entries(value)) {
    if (!props.has(key)) {
      errors.push(`${at}.${key}: unknown field (not in ${name.replace(/^I/, "")})`);
      continue;
    }
    const type = element(props.get(key));
    if (!/^I\w+$/.test(type)) continue;
    const r = resolve(type, file);
    if (r) strict(child, r[0], r[1], `${at}.${key}`, errors);
  }
}

const resources = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
let failed = 0;
let checked = 0;
for (const r of resources) {
  const base = MODELS[r.apiVersion];
  if (!base) continue;
  const what = `${r.kind}/${r.metadata?.name} (${r.apiVersion})`;
  const errors = [];
  try {
    const mod = await import(`${base}/${r.kind}`);
    new mod[r.kind](r).validate();
  } catch (e) {
    errors.push(e.message);
  }
  const dts = path.join(modules, `${base}/${r.kind}.d.ts`);
  if (fs.existsSync(dts)) {
    strict(r, dts, `I${r.kind}`, r.kind, errors);
  } else {
    errors.push(`no type declarations for ${r.kind} in ${base}`);
  }
  checked++;
  if (errors.length) {
    failed++;
    console.log(`ERROR ${what}:\n  ${errors.join("\n  ")}`);
  } else {
    console.log(`INFO ${what} valid (schema and strict fields)`);
  }
}
console.log(`${checked} custom resources checked, ${failed} invalid`);
process.exit(failed ? 1 : 0);
