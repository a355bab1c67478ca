/** The audit trail: who did what, when, under which request and workflow, and how it ended. Admin only. */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { AUDIT_OUTCOMES, listAudit } from '../../store/audit-log';
import { requestIdSchema, workflowIdSchema } from '../schemas';

export const auditRowSchema = z.object({
  id: z.number(),
  at: z.string(),
  actor: z.string(),
  action: z.string(),
  target: z.string().optional(),
  requestId: z.string().optional(),
  workflowId: z.string().optional(),
  outcome: z.enum(AUDIT_OUTCOMES),
  details: z.record(z.string(), z.unknown()).optional(),
});

export const auditListSchema = z.object({ entries: z.array(auditRowSchema) });

export const auditRoutes: FastifyPluginAsyncZod = async (app) => {
  const { pool } = app;
  app.get(
    '/v1/audit',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Audit rows, newest first; page with before=<id of the last row>',
        tags: ['audit'],
        querystring: z.strictObject({
          actor: z.string().min(1).max(200).optional(),
          action: z.string().min(1).max(200).optional(),
          workflowId: workflowIdSchema.optional(),
          requestId: requestIdSchema.optional(),
          outcome: z.enum(AUDIT_OUTCOMES).optional(),
          since: z.iso.datetime({ offset: true }).optional(),
          until: z.iso.datetime({ offset: true }).optional(),
          before: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(100),
        }),
        response: { 200: auditListSchema },
      },
    },
    async (request) => {
      const { since, until, before, ...rest } = request.query;
      const entries = await listAudit(pool, {
        ...rest,
        ...(since ? { since: new Date(since) } : {}),
        ...(until ? { until: new Date(until) } : {}),
        ...(before ? { beforeId: before } : {}),
      });
      return { entries };
    },
  );
};
