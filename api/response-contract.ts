/**
 * Checks each answer against /openapi.json itself, not against the zod schemas it was generated from: the document
 * is what clients are built from, so it is what an answer must match. Ajv compiles the document's own JSON Schemas
 * (OpenAPI 3.1 schemas are JSON Schema 2020-12), refs to its components included.
 *
 * On in tests (NOVACRON_CHECK_RESPONSES=1 or `checkResponses: true`), where an answer that breaks the document is
 * turned into a 500 naming the broken promise, so the test that provoked it fails with the reason.
 */
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import type { FastifyInstance } from 'fastify';
import { ERROR_BODY_ID } from './schemas';

/** What an answer to a URL that matches no operation may be: refused before or at routing, in the error shape. */
export const UNMATCHED_STATUSES: ReadonlySet<number> = new Set([400, 401, 403, 404, 429, 500, 503]);

const DOCUMENT_ID = 'novacron-openapi.json';

interface Operation {
  responses?: Record<string, { content?: Record<string, { schema?: unknown }> }>;
}

export interface OpenApiDocument {
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown> };
}

export interface Answer {
  method: string;
  /** Fastify's route template (`/v1/vms/:id`), or undefined when no route matched. */
  route: string | undefined;
  status: number;
  contentType: string | undefined;
  body: string;
}

/** `/v1/vms/:id` → `/v1/vms/{id}`, the path as the document names it. */
export function openApiPath(route: string): string {
  return route.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

function pointer(...segments: string[]): string {
  return segments.map((s) => encodeURIComponent(s.replace(/~/g, '~0').replace(/\//g, '~1'))).join('/');
}

export class ResponseContract {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: true });
  private readonly validators = new Map<string, ValidateFunction>();

  constructor(private readonly document: OpenApiDocument) {
    addFormats(this.ajv);
    this.ajv.addSchema(document, DOCUMENT_ID);
  }

  /** Why the answer breaks the document, or undefined when it keeps to it. */
  violation(answer: Answer): string | undefined {
    const where = `${answer.method} ${answer.route ?? '(no route)'} answered ${answer.status}`;
    if (answer.route === undefined) {
      if (!UNMATCHED_STATUSES.has(answer.status)) return `${where}, which no unmatched URL may answer`;
      return this.bodyViolation(where, pointer('components', 'schemas', ERROR_BODY_ID), answer, true);
    }
    const path = openApiPath(answer.route);
    // Fastify answers HEAD for every GET route with the GET route's status and headers, and no body.
    const method = answer.method === 'HEAD' ? 'get' : answer.method.toLowerCase();
    const operation = this.document.paths[path]?.[method];
    if (!operation) return `${where}, but the document has no operation ${method.toUpperCase()} ${path}`;
    const responses = operation.responses ?? {};
    const key = String(answer.status) in responses ? String(answer.status) : 'default';
    const response = responses[key];
    if (!response) {
      return `${where}, which the document does not declare (it declares ${Object.keys(responses).join(', ')})`;
    }
    if (answer.method === 'HEAD') return undefined;
    const mediaType = answer.contentType?.split(';')[0]?.trim().toLowerCase() ?? '';
    const content = response.content ?? {};
    const declared = mediaType in content ? mediaType : '*/*' in content ? '*/*' : undefined;
    if (declared === undefined) {
      if (Object.keys(content).length === 0 && answer.body === '') return undefined;
      return `${where} with Content-Type ${mediaType || 'none'}; the document declares ${Object.keys(content).join(', ') || 'no body'}`;
    }
    const schemaPointer = pointer('paths', path, method, 'responses', key, 'content', declared, 'schema');
    return this.bodyViolation(where, schemaPointer, answer, declared.endsWith('json'));
  }

  private bodyViolation(where: string, schemaPointer: string, answer: Answer, json: boolean): string | undefined {
    let value: unknown = answer.body;
    if (json) {
      try {
        value = JSON.parse(answer.body);
      } catch {
        return `${where} with a body that is not JSON: ${answer.body.slice(0, 120)}`;
      }
    }
    let validate = this.validators.get(schemaPointer);
    if (!validate) {
      validate = this.ajv.getSchema(`${DOCUMENT_ID}#/${schemaPointer}`);
      if (!validate) return `${where}, but the document has no schema at #/${decodeURIComponent(schemaPointer)}`;
      this.validators.set(schemaPointer, validate);
    }
    if (validate(value)) return undefined;
    const issues = (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? 'is invalid'}`);
    return `${where} with a body the document's schema refuses: ${issues.slice(0, 3).join('; ')}`;
  }
}

/**
 * Adds the check as the last onSend hook. The document is read on the first answer, once every route is registered.
 * A broken promise becomes a 500 whose message says which, logged as an error.
 */
export function checkResponsesAgainstDocument(app: FastifyInstance): void {
  let contract: ResponseContract | undefined;
  app.addHook('onSend', async (request, reply, payload) => {
    if (typeof payload !== 'string' && !Buffer.isBuffer(payload) && payload !== null && payload !== undefined) {
      return payload;
    }
    contract ??= new ResponseContract(app.swagger() as unknown as OpenApiDocument);
    const contentType = reply.getHeader('content-type');
    const problem = contract.violation({
      method: request.method,
      route: request.routeOptions.url,
      status: reply.statusCode,
      contentType: typeof contentType === 'string' ? contentType : undefined,
      body: payload === null || payload === undefined ? '' : payload.toString(),
    });
    if (!problem) return payload;
    request.log.error({ problem }, 'answer breaks the OpenAPI document');
    reply.code(500).header('content-type', 'application/json; charset=utf-8');
    return JSON.stringify({ error: 'ResponseContractViolation', message: problem, requestId: String(request.id) });
  });
}
