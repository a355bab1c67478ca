/**
 * Domain errors and the one error handler that maps them (and Temporal's and Fastify's) to status codes.
 * 5xx bodies never carry internals: the request id points to the log line instead.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from '@temporalio/client';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, isResponseSerializationError } from 'fastify-type-provider-zod';
import { TokenNameTakenError } from '../store/api-tokens';
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

export class ServiceUnavailableError extends ApiError {
  constructor(message: string) {
    super(503, 'ServiceUnavailable', message);
  }
}

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
