/** API tokens: create (the secret is shown once, in this response), list and revoke. Admin only. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { API_ROLES, TOKEN_NAME_PATTERN, createApiToken, listApiTokens, revokeApiToken } from '../../store/api-tokens';
import { NotFoundError } from '../errors';
import { errorBodySchema } from '../schemas';

const MAX_TOKEN_LIFETIME_SECONDS = 10 * 365 * 24 * 3600;

const tokenNameSchema = z
  .string()
  .regex(TOKEN_NAME_PATTERN, 'must be letters, digits and . _ - (at most 64), starting with a letter or digit');

export const tokenSchema = z.object({
  id: z.string(),
  name: z.string(),
  roles: z.array(z.enum(API_ROLES)),
  createdBy: z.string(),
  createdAt: z.string(),
  expiresAt: z.string().optional(),
  revokedAt: z.string().optional(),
});

/** The one answer that carries a token's secret. */
export const createdTokenSchema = tokenSchema.extend({ token: z.string() });
export const tokenListSchema = z.object({ tokens: z.array(tokenSchema) });

export const tokenRoutes: FastifyPluginAsyncZod = async (app) => {
  const { pool } = app;
  app.post(
    '/v1/tokens',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Create an API token; the response carries its secret, which is never shown again',
        tags: ['tokens'],
        body: z.strictObject({
          name: tokenNameSchema,
          roles: z.array(z.enum(API_ROLES)).min(1).max(API_ROLES.length),
          expiresInSeconds: z.number().int().min(60).max(MAX_TOKEN_LIFETIME_SECONDS).optional(),
        }),
        response: { 201: createdTokenSchema, 409: errorBodySchema },
      },
    },
    async (request, reply) => {
      const { name, roles, expiresInSeconds } = request.body;
      request.auditTarget = name;
      const { token, record } = await createApiToken(pool, {
        name,
        roles,
        createdBy: request.principal!.actor,
        ...(expiresInSeconds ? { expiresAt: new Date(Date.now() + expiresInSeconds * 1000) } : {}),
      });
      return reply.status(201).send({ ...record, token });
    },
  );

  app.get(
    '/v1/tokens',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'List API tokens (never their secrets)',
        tags: ['tokens'],
        querystring: z.strictObject({ includeRevoked: z.enum(['true', 'false']).default('false') }),
        response: { 200: tokenListSchema },
      },
    },
    async (request) => ({
      tokens: await listApiTokens(pool, { includeRevoked: request.query.includeRevoked === 'true' }),
    }),
  );

  app.delete(
    '/v1/tokens/:ref',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Revoke a live token by id or name; it is refused from the next request on',
        tags: ['tokens'],
        params: z.strictObject({ ref: tokenNameSchema }),
        response: { 200: tokenSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      request.auditTarget = request.params.ref;
      const revoked = await revokeApiToken(pool, { ref: request.params.ref });
      if (!revoked) throw new NotFoundError(`no live token with id or name ${request.params.ref}`);
      return revoked;
    },
  );
};
