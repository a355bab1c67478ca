/** A small HTTP client for the CLI that turns API error bodies into one-line CliErrors, and its argument parsing. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { z } from 'zod';
import type { errorBodySchema } from '../api/schemas';

type ParseArgsOptionsConfig = NonNullable<ParseArgsConfig['options']>;

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export class ApiClient {
  constructor(
    private readonly baseUrl: string,
    private readonly token = process.env.NOVACRON_API_TOKEN,
  ) {}

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  /** `headers`: an Idempotency-Key, for instance. */
  post<T>(path: string, body: unknown, headers: Record<string, string> = {}): Promise<T> {
    return this.request<T>('POST', path, body, headers);
  }

  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }

  private async request<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<T> {
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: {
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...headers,
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      throw new CliError(`cannot reach the API at ${this.baseUrl} (${cause}); is it running? (npm start)`, 1);
    }
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (!response.ok) {
      // Every error the API answers has this body (its OpenAPI document says so); a proxy in between may not.
      const message =
        (parsed as Partial<z.infer<typeof errorBodySchema>> | undefined)?.message ??
        (text.trim() || response.statusText);
      throw new CliError(`${response.status}: ${message}`, 1);
    }
    return parsed as T;
  }
}

type CommandLine<O extends ParseArgsOptionsConfig> = ReturnType<
  typeof parseArgs<{ args: string[]; allowPositionals: true; strict: true; options: O }>
>;

/** parseArgs with positionals and no unknown options; a bad option is one readable line and exit 2. */
export function parseCommandLine<O extends ParseArgsOptionsConfig>(argv: string[], options: O): CommandLine<O> {
  try {
    return parseArgs({ args: argv, allowPositionals: true, strict: true, options });
  } catch (err) {
    throw new CliError(`${(err as Error).message}; run novacron --help`);
  }
}

/** The API named by --api, else $NOVACRON_API_URL, else the local default. */
export function apiClientFor(apiFlag: string | undefined): ApiClient {
  return new ApiClient(apiFlag ?? process.env.NOVACRON_API_URL ?? 'http://127.0.0.1:8080');
}
