/**
 * Domain errors and the one error handler that maps them (and Temporal's and Fastify's) to status codes.
 * 5xx bodies never carry internals: the request id points to the log line instead.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from '@temporalio/client';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, isResponseSerializationError } from 'fastify-type-provider-zod';
import { TokenNameTakenError } from '../store/api-tokens';
import { HostStoreError } from '../store/hosts';
import { isTemporalUnavailable } from '../workers/temporal-clients';

export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = code;
  }
}

/** No credentials, or credentials that do not authenticate (unknown, malformed, expired, revoked). */
export class UnauthorizedError extends ApiError {
  constructor(message: string) {
    super(401, 'Unauthorized', message, { 'www-authenticate': 'Bearer realm="novacron"' });
  }
}

/** Authenticated, but the route needs a higher role. */
export class ForbiddenError extends ApiError {
  constructor(message: string) {
    super(403, 'Forbidden', message);
  }
}

export class TooManyRequestsError extends ApiError {
  constructor(retryAfterSeconds: number) {
    super(429, 'TooManyRequests', `rate limit exceeded; retry in ${retryAfterSeconds} s`, {
      'retry-after': String(retryAfterSeconds),
    });
  }
}

export class NotFoundError extends ApiError {
  constructor(message: string) {
    super(404, 'NotFound', message);
  }
}

export class ConflictError extends ApiError {
  constructor(message: string) {
    super(409, 'Conflict', message);
  }
}

/** Well-formed, but asks for what cannot be done at all (not merely now): a migration to the VM's own host. */
export class UnprocessableError extends ApiError {
  constructor(message: string, code = 'UnprocessableEntity') {
    super(422, code, message);
  }
}

export class ServiceUnavailableError extends ApiError {
  constructor(message: string) {
    super(503, 'ServiceUnavailable', message);
  }
}

/**
 * The status of each typed failure by which migrateVm ends before anything moved, as POST /v1/vms/:id/migrate
 * answers it: 422 for what no retry changes (the request or the VM's set-up), 409 for what the fleet's state refuses
 * now, 404 for a VM that went away. `target`: the failure is about the target host, so a request that named one
 * gets its field named. The failure type becomes the body's `error`, so clients can tell them apart.
 */
const MIGRATION_FAILURES: Readonly<Record<string, { status: 404 | 409 | 422; target?: true }>> = {
  MigrationRefused: { status: 422 },
  InvalidMigrationTarget: { status: 422, target: true },
  LocalStorageNotMigratable: { status: 422 },
  TargetLacksStoragePool: { status: 422, target: true },
  VmNotFound: { status: 404 },
  VmNotRunning: { status: 409 },
  VmBusy: { status: 409 },
  TargetHostUnavailable: { status: 409, target: true },
  TargetLacksCapacity: { status: 409, target: true },
  NoMigrationTarget: { status: 409 },
};

/** The failure that ended a migration before it moved anything, as an API error; undefined for any other failure. */
export function migrationFailureError(
  failure: { type?: string; message: string },
  request: { targetNamed: boolean },
): ApiError | undefined {
  const { type } = failure;
  if (type === undefined || !Object.hasOwn(MIGRATION_FAILURES, type)) return undefined;
  const known = MIGRATION_FAILURES[type]!;
  const field = known.target && request.targetNamed ? 'body.targetHostId: ' : '';
  return new ApiError(known.status, type, `${field}${failure.message}`);
}

/**
 * The status of each refusal of the host store: 404 for a host that does not exist, 409 for a state change the
 * host's lease or inventory refuses now. The code becomes the body's `error`, the store's message its `message`.
 */
const HOST_STORE_STATUSES: Readonly<Record<HostStoreError['code'], 404 | 409>> = {
  HostNotFound: 404,
  HostLeaseHeld: 409,
  FenceRefused: 409,
  ReadmitRefused: 409,
};

export interface ErrorBody {
  error: string;
  message: string;
  requestId: string;
  issues?: Array<{ field: string; message: string }>;
}

/** The shape fastify-type-provider-zod gives each zod issue: the zod code as keyword, the path as a pointer. */
interface ValidationIssue {
  keyword?: string;
  instancePath?: string;
  message?: string;
  params?: { keys?: string[] };
}

function describeValidation(error: FastifyError): Array<{ field: string; message: string }> {
  const context = error.validationContext ?? 'body';
  return ((error.validation ?? []) as unknown as ValidationIssue[]).map((issue) => {
    const parts = (issue.instancePath ?? '').split('/').filter(Boolean);
    if (issue.keyword === 'unrecognized_keys') {
      return { field: [context, ...parts, issue.params?.keys?.[0] ?? ''].join('.'), message: 'unknown field' };
    }
    return { field: [context, ...parts].join('.'), message: issue.message ?? 'invalid' };
  });
}

export function registerErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const send = (status: number, body: Omit<ErrorBody, 'requestId'>) =>
      reply.status(status).send({ ...body, requestId: String(request.id) } satisfies ErrorBody);

    if (hasZodFastifySchemaValidationErrors(error)) {
      const issues = describeValidation(error);
      const first = issues[0]!;
      return send(400, { error: 'BadRequest', message: `${first.field}: ${first.message}`, issues });
    }
    if (error instanceof ApiError) {
      reply.headers(error.headers);
      return send(error.statusCode, { error: error.code, message: error.message });
    }
    if (error instanceof TokenNameTakenError) return send(409, { error: 'Conflict', message: error.message });
    if (error instanceof HostStoreError)
      return send(HOST_STORE_STATUSES[error.code], { error: error.code, message: error.message });
    if (error instanceof WorkflowNotFoundError) return send(404, { error: 'NotFound', message: error.message });
    if (error instanceof WorkflowExecutionAlreadyStartedError)
      return send(409, { error: 'Conflict', message: error.message });
    if (isTemporalUnavailable(error)) {
      request.log.warn({ err: error }, 'Temporal unavailable');
      return send(503, { error: 'ServiceUnavailable', message: 'the Temporal server is unreachable; retry shortly' });
    }
    if (
      !isResponseSerializationError(error) &&
      typeof error.statusCode === 'number' &&
      error.statusCode >= 400 &&
      error.statusCode < 500
    ) {
      // Fastify's own client errors: malformed JSON, body too large, unsupported media type.
      return send(error.statusCode, { error: error.code ?? 'BadRequest', message: error.message });
    }
    request.log.error({ err: error }, 'request failed');
    return send(500, {
      error: 'InternalServerError',
      message: `internal error; see the server log for request ${String(request.id)}`,
    });
  });

  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send({
      error: 'NotFound',
      message: `no route ${request.method} ${request.url.split('?')[0]}`,
      requestId: String(request.id),
    } satisfies ErrorBody),
  );
}
