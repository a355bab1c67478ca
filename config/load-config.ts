/**
 * Builds the effective configuration: schema defaults, config/novacron.yaml, the profile, an optional user file,
 * then NOVACRON_* environment variables. Any problem becomes one ConfigError whose message names the key.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { configSchema, DWCP_MODES, type NovacronConfig } from './schema';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

type PlainObject = Record<string, unknown>;

const CONFIG_DIR = __dirname;

/** Env vars that share the NOVACRON_ prefix but configure a client or tool rather than the stack. */
const NON_CONFIG_ENV = new Set([
  'NOVACRON_CONFIG',
  'NOVACRON_PROFILE',
  'NOVACRON_API_URL',
  'NOVACRON_API_TOKEN',
  'NOVACRON_TEMPORAL_BIN',
  'NOVACRON_CACHE_DIR',
]);

const SHORTCUT_ENV: Record<string, string[]> = {
  NOVACRON_NODE_ID: ['system', 'nodeId'],
  NOVACRON_DATA_DIR: ['system', 'dataDir'],
  NOVACRON_LOG_LEVEL: ['system', 'logLevel'],
  NOVACRON_DWCP_MODE: ['dwcp', 'mode'],
};

export interface LoadConfigInput {
  /** A YAML file merged over the base file and the profile. */
  file?: string;
  /** Overrides the profile named in the files. */
  profile?: string;
  env?: NodeJS.ProcessEnv;
  /** Applied last, for tests and embedding. */
  overrides?: PlainObject;
  /** Where relative paths (dataDir) are resolved from. */
  cwd?: string;
}

function isPlainObject(value: unknown): value is PlainObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function deepMerge(base: PlainObject, over: PlainObject): PlainObject {
  const out: PlainObject = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const current = out[key];
    out[key] = isPlainObject(current) && isPlainObject(value) ? deepMerge(current, value) : value;
  }
  return out;
}

function readYamlFile(file: string): PlainObject {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read config file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (err) {
    const line = (err as { linePos?: Array<{ line: number }> }).linePos?.[0]?.line;
    throw new ConfigError(`${file}${line ? `:${line}` : ''}: invalid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  if (parsed === null || parsed === undefined) return {};
  if (!isPlainObject(parsed)) throw new ConfigError(`${file}: the top level must be a mapping of sections`);
  return parsed;
}

function toUpperSnake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

/** Strips wrappers (default, optional, prefault) so env overrides can see the shape and leaf type of a key. */
function unwrap(schema: z.ZodType): z.ZodType {
  let current: z.ZodType = schema;
  for (;;) {
    if (current instanceof z.ZodDefault || current instanceof z.ZodOptional || current instanceof z.ZodPrefault) {
      current = current.unwrap() as z.ZodType;
    } else {
      return current;
    }
  }
}

interface EnvTarget {
  path: string[];
  leaf: z.ZodType;
}

/** Finds the config key an env var names by matching UPPER_SNAKE segments against the schema's own keys. */
function resolveEnvKey(schema: z.ZodType, rest: string, prefix: string[]): EnvTarget | undefined {
  const node = unwrap(schema);
  if (!(node instanceof z.ZodObject)) return rest === '' ? { path: prefix, leaf: node } : undefined;
  const shape = (node as z.ZodObject<Record<string, z.ZodType>>).shape;
  for (const [key, child] of Object.entries(shape)) {
    const snake = toUpperSnake(key);
    if (rest === snake) return { path: [...prefix, key], leaf: unwrap(child) };
    if (rest.startsWith(`${snake}_`)) {
      const found = resolveEnvKey(child, rest.slice(snake.length + 1), [...prefix, key]);
      if (found) return found;
    }
  }
  return undefined;
}

function coerceEnvValue(name: string, raw: string, leaf: z.ZodType): unknown {
  if (leaf instanceof z.ZodNumber) {
    const n = Number(raw);
    if (raw.trim() === '' || Number.isNaN(n)) throw new ConfigError(`${name}: expected a number, got "${raw}"`);
    return n;
  }
  if (leaf instanceof z.ZodBoolean) {
    if (raw === 'true' || raw === '1') return true;
    if (raw === 'false' || raw === '0') return false;
    throw new ConfigError(`${name}: expected true or false, got "${raw}"`);
  }
  if (leaf instanceof z.ZodArray) return raw === '' ? [] : raw.split(',').map((s) => s.trim());
  if (leaf instanceof z.ZodRecord) return parseEnvRecord(name, raw);
  if (leaf instanceof z.ZodUnion && /^-?\d+$/.test(raw)) return Number(raw);
  return raw;
}

/**
 * A map in one variable, as `agent.storagePools` needs: a JSON object, or `name=value` pairs separated by commas
 * (`shared=/srv/pools/shared,nfs1=/mnt/nfs1`), which reads better in a shell. The schema then checks the entries.
 */
function parseEnvRecord(name: string, raw: string): Record<string, string> {
  const text = raw.trim();
  if (text.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(`${name}: invalid JSON object (${(err as Error).message})`);
    }
    if (!isPlainObject(parsed) || Object.values(parsed).some((value) => typeof value !== 'string')) {
      throw new ConfigError(`${name}: expected a JSON object of strings, got ${text}`);
    }
    return parsed as Record<string, string>;
  }
  const entries: Record<string, string> = {};
  for (const pair of text === '' ? [] : text.split(',')) {
    const separator = pair.indexOf('=');
    const key = pair.slice(0, separator).trim();
    if (separator <= 0 || key === '') throw new ConfigError(`${name}: expected name=value pairs, got "${pair.trim()}"`);
    if (key in entries) throw new ConfigError(`${name}: ${key} is given twice`);
    entries[key] = pair.slice(separator + 1).trim();
  }
  return entries;
}

function setPath(target: PlainObject, keys: string[], value: unknown): void {
  let node = target;
  keys.slice(0, -1).forEach((key) => {
    if (!isPlainObject(node[key])) node[key] = {};
    node = node[key] as PlainObject;
  });
  node[keys[keys.length - 1]!] = value;
}

export function envOverrides(env: NodeJS.ProcessEnv): { values: PlainObject; sources: Map<string, string> } {
  const values: PlainObject = {};
  const sources = new Map<string, string>();
  const sections = Object.keys(configSchema.shape);
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('NOVACRON_') || raw === undefined || NON_CONFIG_ENV.has(name)) continue;
    let target: EnvTarget | undefined;
    const shortcut = SHORTCUT_ENV[name];
    if (shortcut) {
      target = resolveEnvKey(configSchema, shortcut.map(toUpperSnake).join('_'), []);
    } else {
      const rest = name.slice('NOVACRON_'.length);
      const section = sections.find((s) => rest.startsWith(`${toUpperSnake(s)}_`));
      if (!section) continue;
      target = resolveEnvKey(configSchema, rest, []);
      if (!target) throw new ConfigError(`${name}: no config key ${section}.* matches this variable`);
    }
    if (!target) continue;
    setPath(values, target.path, coerceEnvValue(name, raw, target.leaf));
    sources.set(target.path.join('.'), name);
  }
  // Well-known variables of the ecosystem select external services.
  if (env.DATABASE_URL) {
    setPath(values, ['storage', 'databaseUrl'], env.DATABASE_URL);
    sources.set('storage.databaseUrl', 'DATABASE_URL');
  }
  if (env.TEMPORAL_ADDRESS) {
    setPath(values, ['temporal', 'address'], env.TEMPORAL_ADDRESS);
    sources.set('temporal.address', 'TEMPORAL_ADDRESS');
  }
  if (env.TEMPORAL_NAMESPACE) {
    setPath(values, ['temporal', 'namespace'], env.TEMPORAL_NAMESPACE);
    sources.set('temporal.namespace', 'TEMPORAL_NAMESPACE');
  }
  return { values, sources };
}

/** Formats the first schema issue as `where: key.path: problem`, the one line an operator needs. */
export function describeIssue(error: z.ZodError, sources: Map<string, string>, fallbackSource: string): string {
  const issue = error.issues[0]!;
  const keyPath = issue.path.map(String).join('.');
  const unknownKeys = issue.code === 'unrecognized_keys' ? issue.keys : [];
  const fullKey = unknownKeys.length > 0 ? [keyPath, unknownKeys[0]].filter(Boolean).join('.') : keyPath;
  // A map set by one variable (agent.storagePools) reports its entries' issues under that variable too.
  const segments = fullKey.split('.');
  const source =
    segments.map((_, i) => sources.get(segments.slice(0, segments.length - i).join('.'))).find(Boolean) ??
    fallbackSource;
  const message = unknownKeys.length > 0 ? 'unknown key' : issue.message;
  return `invalid config (${source}): ${fullKey || '(root)'}: ${message}`;
}

export function loadConfig(input: LoadConfigInput = {}): NovacronConfig {
  const env = input.env ?? process.env;
  const cwd = input.cwd ?? process.cwd();
  const base = readYamlFile(path.join(CONFIG_DIR, 'novacron.yaml'));
  const userFile = input.file ?? env.NOVACRON_CONFIG;
  const user = userFile ? readYamlFile(path.resolve(cwd, userFile)) : {};
  const { values: fromEnv, sources } = envOverrides(env);

  const requested =
    input.profile ??
    env.NOVACRON_PROFILE ??
    (fromEnv.system as PlainObject | undefined)?.profile ??
    (user.system as PlainObject | undefined)?.profile ??
    (base.system as PlainObject | undefined)?.profile ??
    'datacenter';
  if (typeof requested !== 'string' || !(DWCP_MODES as readonly string[]).includes(requested)) {
    throw new ConfigError(`invalid config: system.profile: must be one of ${DWCP_MODES.join(', ')}`);
  }
  const profile = readYamlFile(path.join(CONFIG_DIR, 'profiles', `${requested}.yaml`));

  let merged = deepMerge(deepMerge(base, profile), user);
  merged = deepMerge(merged, fromEnv);
  merged = deepMerge(merged, { system: { profile: requested } });
  if (input.overrides) merged = deepMerge(merged, input.overrides);

  const result = configSchema.safeParse(merged);
  if (!result.success) {
    throw new ConfigError(describeIssue(result.error, sources, userFile ?? 'config/novacron.yaml'));
  }
  const config = result.data;
  config.system.dataDir = path.resolve(cwd, config.system.dataDir);
  return config;
}

/** Validates a file on its own, as `novacron config check FILE` does; returns the effective config. */
export function checkConfigFile(file: string, env: NodeJS.ProcessEnv = {}): NovacronConfig {
  if (!existsSync(file)) throw new ConfigError(`${file}: no such file`);
  return loadConfig({ file, env });
}
