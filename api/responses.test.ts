import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RouteOptions } from 'fastify';
import { z } from 'zod';
import { declareStandardResponses } from './responses';
import { errorBodySchema } from './schemas';

const route = (response: Record<string, unknown>): RouteOptions =>
  ({ method: 'POST', url: '/x', config: { role: 'operator' }, schema: { body: z.object({}), response } }) as never;

test('every error status a route can declare has a description of its own, not a placeholder', () => {
  const declared = route({ 200: z.object({}), 404: errorBodySchema, 409: errorBodySchema, 422: errorBodySchema });
  declareStandardResponses(declared);
  const response = declared.schema!.response as Record<string, { description?: string }>;
  const errors = Object.keys(response).filter((status) => Number(status) >= 400);
  assert.deepEqual(errors, ['400', '401', '403', '404', '409', '413', '415', '422', '429', '500', '503']);
  for (const status of errors) assert.doesNotMatch(response[status]!.description ?? '', /^Error \d+$/, status);
  assert.match(response['422']!.description!, /cannot be done as asked/);
});
